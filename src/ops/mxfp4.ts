// `mxfp4`: gpt-oss MXFP4 experts. `*_blocks` U8 [..., G, 16] hold two E2M1 values per byte (low nibble first),
// `*_scales` U8 [..., G] one E8M0 exponent per 32 values; the values are [..., G·32] (docs/numerics.md).
// Inverse: `mxfp4_encode`, exact when each 32-value group is E2M1 × the scale OpenAI's quantizer picks (amax/6
// rounded up to a power of two; 0 for an all-zero group, which decodes exactly under any scale: those keep the
// source checkpoint's scale when it is given). Sharding: any box of the values; a run starts at the group holding
// the box's first column (reading whole groups) and skips into it. Encoded parts are computed from whole groups,
// so a box of a packed part spans its trailing dims.
import { CkptError, workerInputError } from "../errors.js";
import { compilePattern, fillPattern, matchPattern } from "../mapping/patterns.js";
import { transformSteps, valueOp } from "../mapping/schema.js";
import { nonfiniteDecodeError } from "./nonfinite.js";
import { notConverted, quantMethod, rowIndex, unconfiguredError, wholePiece, type DecodingRun, type EncodeOp, type QuantOp } from "./quant-op.js";

/** MXFP4 values [..., G·32] of packed `blocks` U8 [..., G, 16] with E8M0 `scales` U8 [..., G]. */
export type Mxfp4Recipe = { op: "mxfp4"; blocks: string; scales: string };

/**
 * A run's MXFP4 side: `src` is the packed bytes of the run's first row from the start of its first 32-value group
 * (`stride` bytes between rows), these its E8M0 scales (`stride` bytes between rows); the run starts `skip` values
 * into the group.
 */
export type Mxfp4Run = { op: "mxfp4"; file: string; byteOffset: number; stride: number; skip: number };

/** One part (`blocks` U8 [..., G, 16] or `scales` U8 [..., G]) of the MXFP4 encoding of the input's values. */
export interface Mxfp4EncodeRecipe<In = unknown> {
  op: "mxfp4_encode"; part: "blocks" | "scales"; values: number[]; valuesDtype: "BF16" | "F32"; input: In;
  reference?: { blocks: string; scales: string };
}


/** A value MXFP4 cannot give as a finite number: name the scale byte and where it is (never write it as inf). */
function mxfp4Error(r: DecodingRun<Mxfp4Run>, bad: number, blocks: Uint8Array, scales: Uint8Array, outPath: string, tensor = "?"): Error {
  const row = Math.floor(bad / r.cols), col = bad % r.cols;
  const v = r.decode.skip + col;
  const at = { file: r.decode.file, offset: r.decode.byteOffset + row * r.decode.stride + (v >>> 5) };
  const scale = scales[row * r.decode.stride + (v >>> 5)]!;
  const byte = blocks[row * r.src.stride + (v >>> 1)]!;
  const nibble = v & 1 ? byte >>> 4 : byte & 15;
  const what = scale === 0xff ? "scale 0xFF is the E8M0 NaN" : `E2M1 nibble 0x${nibble.toString(16)} x 2^(${scale} - 127) overflows float32`;
  return workerInputError("VALUE", `MXFP4 value is not finite: ${what} (scale byte at offset ${at.offset} of ${at.file}: row ${row}, 32-value block ${v >>> 5} of the run; writing ${tensor} into ${outPath}); the checkpoint's scales are corrupt (--allow-nonfinite writes them)`, at);
}

const encode: EncodeOp<Mxfp4EncodeRecipe> = {
  op: "mxfp4_encode",
  kind: "mxfp4",
  exactWhen: "32-value group(s) are not MXFP4-representable (E2M1 × the E8M0 scale OpenAI's quantizer picks: amax/6 rounded up to a power of two, 0 for all-zero groups)",
  // the decoded layout is the packed rule's unquantized alternative (`one_of`)
  plainSibling: (mapping, packed) => mapping.tensors.find((x) => x !== packed && x.one_of !== undefined && x.one_of === packed.one_of && x.hf && !valueOp(x, "mxfp4")),
  plan(t) {
    const flip = transformSteps(t.plain).some((s) => s.op === "transpose");
    const input = flip ? t.transposed(t.tensor.recipe) : t.tensor.recipe;
    const values = [...t.tensor.shape];
    if (flip) [values[values.length - 2], values[values.length - 1]] = [values[values.length - 1]!, values[values.length - 2]!];
    const cols = values[values.length - 1]!;
    if (values.length < 2 || cols % 32 !== 0) throw new CkptError("SHAPE", `--requantize mxfp4: ${t.tensor.name} has ${cols} input columns, not a multiple of 32`, { tensor: t.tensor.name });
    const packedName = fillPattern(t.packed.hf!, t.vals);
    const scalesName = fillPattern(valueOp(t.packed, "mxfp4")!.scales, t.vals);
    const base = { op: "mxfp4_encode" as const, values, valuesDtype: t.tensor.dtype, input };
    const blocks = t.reference(packedName, "U8", encode.shape({ ...base, part: "blocks" })), scales = t.reference(scalesName, "U8", encode.shape({ ...base, part: "scales" }));
    const reference = blocks && scales ? { blocks, scales } : undefined;
    return [
      { name: packedName, dtype: "U8", recipe: { ...base, part: "blocks", reference } },
      { name: scalesName, dtype: "U8", recipe: { ...base, part: "scales", reference } },
    ];
  },
  describe: (r, input) => `mxfp4_encode.${r.part}(${input} as ${r.valuesDtype})`,
  shape(r) {
    const lead = r.values.slice(0, -1), cols = r.values[r.values.length - 1]!;
    return r.part === "blocks" ? [...lead, cols / 32, 16] : [...lead, cols / 32];
  },
  group: () => 32,
  references: (r) => (r.reference ? [r.reference.blocks, r.reference.scales] : undefined),
  readsValues: () => true,
  counts: (r) => r.part === "blocks",
  encodeSlab(k, e, values, rows, cols, ref) {
    const keep = ref && { blocks: ref[0], scales: ref[1] };
    // the scales alone skip the nibbles; the blocks' encode counts the groups with no exact encoding
    if (e.part === "scales") return { bytes: k.mxfp4Scales(values, rows, cols, e.valuesDtype, keep) };
    const enc = k.mxfp4Encode(values, rows, cols, e.valuesDtype, keep);
    return { bytes: enc.blocks, count: { badMask: enc.badMask, adopted: enc.adopted, firstBad: enc.firstBad, groupsPerRow: cols / 32 } };
  },
};

export const mxfp4: QuantOp<Mxfp4Recipe, Mxfp4Run> = {
  op: "mxfp4",
  label: "MXFP4",
  compared: "decoded from MXFP4 (E2M1 blocks × E8M0 scales)",
  transform: "mxfp4",

  checkSources({ tensors, config, rules, file }) {
    const { q, configured } = quantMethod(config, "mxfp4");
    const packed: string[] = [];
    for (const r of rules) {
      const t = valueOp(r.rule, "mxfp4");
      if (!t || !r.hf) continue;
      const scalePat = compilePattern(t.scales);
      for (const name of tensors.keys()) {
        if (matchPattern(r.hf, name)) packed.push(name);
        const vals = matchPattern(scalePat, name);
        if (vals && !tensors.has(fillPattern(r.hf.source, vals))) {
          throw new CkptError("MISSING_TENSOR", `MXFP4 scales without their blocks ${fillPattern(r.hf.source, vals)}`, { tensor: name, hint: "the checkpoint lost the packed values these scales belong to" });
        }
      }
      // the unquantized alternative of the same tensor (one_of): the config says it is quantized unless excluded
      if (!configured || !r.rule.one_of) continue;
      for (const alt of rules) {
        if (alt === r || alt.rule.one_of !== r.rule.one_of || !alt.hf || valueOp(alt.rule, "mxfp4")) continue;
        const plain = [...tensors.keys()].find((n) => matchPattern(alt.hf!, n) && !notConverted(q, n));
        if (plain) throw new CkptError("CONFIG", `quantization_config (mxfp4) quantizes this tensor, but it is stored unquantized (${tensors.get(plain)!.dtype})`, { file, tensor: plain, hint: "add its module to modules_to_not_convert, or fix the config" });
      }
    }
    const p0 = packed[0];
    if (!p0) return;
    if (!configured) throw unconfiguredError(packed.length, "MXFP4 packed tensor(s)", q, "mxfp4", file, p0);
    for (const n of packed) {
      const m = notConverted(q, n);
      if (m) throw new CkptError("CONFIG", `quantization_config.modules_to_not_convert lists ${m}, but the tensor is stored MXFP4`, { file, tensor: n });
    }
  },

  // the scales of blocks in the source: read through the blocks' rule, not converted alone
  companions({ tensors, rules }) {
    const out = new Set<string>();
    for (const r of rules) {
      const t = valueOp(r.rule, "mxfp4");
      if (!t || !r.hf) continue;
      for (const name of tensors.keys()) {
        const vals = matchPattern(r.hf, name);
        if (vals) out.add(fillPattern(t.scales, vals));
      }
    }
    return out;
  },

  planRule(rule, name, vals, catalog) {
    const t = valueOp(rule, "mxfp4")!;
    const src = catalog.tensors.get(name)!;
    const scales = fillPattern(t.scales, vals);
    const s = catalog.tensors.get(scales);
    if (src.dtype !== "U8" || src.shape.length < 3 || src.shape[src.shape.length - 1] !== 16) {
      throw new CkptError("SHAPE", `MXFP4 blocks must be U8 [..., G, 16], got ${src.dtype} [${src.shape}]`, { tensor: name });
    }
    if (!s) throw new CkptError("MISSING_TENSOR", `MXFP4 blocks without their scales ${scales}`, { tensor: name });
    const want = src.shape.slice(0, -1);
    if (s.dtype !== "U8" || s.shape.join() !== want.join()) throw new CkptError("SHAPE", `MXFP4 scales must be U8 [${want}] (one E8M0 byte per 32 values of ${name}), got ${s.dtype} [${s.shape}]`, { tensor: scales });
    const shape = [...src.shape.slice(0, -2), src.shape[src.shape.length - 2]! * 32];
    return { recipe: { op: "mxfp4", blocks: name, scales }, dequantized: true, hfShape: shape, shape };
  },

  leaves: (r) => [r.blocks, r.scales],
  describe: (r) => `mxfp4(${r.blocks} × ${r.scales})`,

  // one output row: columns [colStart, colStart + cols) of the row at `coords` (the blocks' prefix dims)
  runs(r, coords, colStart, cols, dst, leaves) {
    const b = wholePiece(r.blocks, leaves, "MXFP4 decoding");
    const s = wholePiece(r.scales, leaves, "MXFP4 decoding");
    const prefix = b.shape.slice(0, -2);
    const G = b.shape[b.shape.length - 2]!;
    if (coords.length !== prefix.length) throw new CkptError("INTERNAL", `rank mismatch resolving MXFP4 ${r.blocks}`);
    const lin = rowIndex(coords, prefix);
    const g0 = Math.floor(colStart / 32);
    return [{
      dst, rows: 1, cols,
      src: { file: b.file, byteOffset: b.byteOffset + (lin * G + g0) * 16, stride: G * 16, dtype: "U8" },
      decode: { op: "mxfp4", file: s.file, byteOffset: s.byteOffset + lin * G + g0, stride: G, skip: colStart - g0 * 32 },
    }];
  },
  // rows merge when their scales continue too
  continues: (a, b, rows) => a.file === b.file && a.skip === b.skip && a.stride === b.stride && a.byteOffset + rows * a.stride === b.byteOffset,
  ranges(r) {
    const groups = Math.ceil((r.decode.skip + r.cols) / 32);
    return [
      { file: r.src.file, start: r.src.byteOffset, end: r.src.byteOffset + (r.rows - 1) * r.src.stride + groups * 16 },
      { file: r.decode.file, start: r.decode.byteOffset, end: r.decode.byteOffset + (r.rows - 1) * r.decode.stride + groups },
    ];
  },
  decode(r, c) {
    const [blocks, scales] = c.src as [Uint8Array, Uint8Array];
    const bad = c.k.mxfp4Decode(blocks, scales, r.rows, r.cols, r.decode.skip, r.src.stride, r.decode.stride, c.dst, c.outDtype);
    c.finite(() => (bad >= 0 ? mxfp4Error(r, bad, blocks, scales, c.piece.outPath, c.piece.tensor) : nonfiniteDecodeError(c.piece, r, c.dst, "MXFP4")));
  },

  encode,
};
