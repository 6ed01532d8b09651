// `int4`: compressed-tensors `pack-quantized` INT4 (Kimi K2 Thinking / K2.5 / K2.6 / K2.7 routed experts; decode in
// docs/numerics.md §11). `weight_packed` I32 [out, ceil(in/8)] holds eight 4-bit values per word (low nibble first,
// stored q + 8), `weight_scale` BF16 [out, ceil(in/group)] one scale per group, `weight_shape` [out, in]; the values
// are (nibble − 8) × scale. Numerics (why F32 is exact and BF16 is compressed-tensors' own single rounding):
// src/kernels/reference.ts. Inverse: `int4_encode`, exact when each group is q ∈ [−8, 7] × one positive BF16 scale
// (F32 outputs; BF16 rounding of q·s breaks it). Sharding: any box of the values; a run starts at the group holding
// the box's first column and skips into it. Encoded parts are computed from whole rows of groups, so a box of a
// packed part spans its trailing dims.
import { CkptError, workerInputError } from "../errors.js";
import type { CatalogTensor } from "../catalog-types.js";
import { evalDimExpr } from "../mapping/load.js";
import { compilePattern, fillPattern, matchPattern } from "../mapping/patterns.js";
import { transformSteps, valueOp, type TensorRule } from "../mapping/schema.js";
import { nonfiniteDecodeError } from "./nonfinite.js";
import { quantMethod, rowIndex, unconfiguredError, wholePiece, type DecodingRun, type EncodeOp, type PlanContext, type PlannedLeaf, type QuantOp } from "./quant-op.js";

/** INT4 values [out, in] of compressed-tensors `weight_packed` I32 [out, ceil(in/8)] with BF16 `scale` [out, ceil(in/group)]. */
export type Int4Recipe = { op: "int4"; packed: string; scale: string; group: number };

/**
 * A run's INT4 side: `src` is the packed bytes (little-endian I32 words) of the run's first row from the start of its
 * first `group`-value group (`stride` bytes between rows), these its BF16 scales (`stride` bytes between rows); the
 * run starts `skip` values into the group.
 */
export type Int4Run = { op: "int4"; file: string; byteOffset: number; stride: number; skip: number; group: number };

/** One part (`packed` I32, `scale` BF16, `shape` I32/I64) of the INT4 encoding of the input's values. */
export interface Int4EncodeRecipe<In = unknown> {
  op: "int4_encode"; part: "packed" | "scale" | "shape"; values: number[]; valuesDtype: "BF16" | "F32"; group: number; input: In;
  reference?: { packed: string; scale: string };
}

interface WeightArgs {
  num_bits?: unknown; symmetric?: unknown; strategy?: unknown; group_size?: unknown; type?: unknown; actorder?: unknown;
}

/**
 * The group size of config.json's compressed-tensors quantization, refusing anything the INT4 decoder does not
 * implement (asymmetric zero points, activation ordering, other bit widths or strategies, other formats).
 */
const groupSizes = new WeakMap<object, number>();
export function int4GroupSize(config: Record<string, unknown>, file: string, tensor: string): number {
  const known = groupSizes.get(config);
  if (known !== undefined) return known;
  const q = config.quantization_config as Record<string, unknown> | undefined;
  const why: (what: string) => never = (what) => {
    throw new CkptError("CONFIG", `INT4 weight_packed needs quantization_config with quant_method compressed-tensors, format pack-quantized, 4-bit symmetric group weights: ${what}`, { file, tensor });
  };
  if (!q || typeof q !== "object") why("config.json has no quantization_config");
  if (q.quant_method !== "compressed-tensors") why(`quant_method is ${JSON.stringify(q.quant_method)}`);
  const groups = q.config_groups as Record<string, { weights?: WeightArgs; format?: unknown; input_activations?: unknown }> | undefined;
  if (!groups || typeof groups !== "object" || Object.keys(groups).length === 0) why("no config_groups");
  let size: number | undefined;
  for (const [name, g] of Object.entries(groups)) {
    const format = g.format ?? q.format;
    if (format !== "pack-quantized") why(`config_groups.${name} format is ${JSON.stringify(format)}`);
    const w = g.weights;
    if (!w) why(`config_groups.${name} has no weights`);
    if (w.num_bits !== 4) why(`config_groups.${name}.weights.num_bits is ${JSON.stringify(w.num_bits)}`);
    if (w.type !== undefined && w.type !== "int") why(`config_groups.${name}.weights.type is ${JSON.stringify(w.type)}`);
    if (w.symmetric !== true) why(`config_groups.${name}.weights.symmetric is ${JSON.stringify(w.symmetric)} (zero points are not implemented)`);
    if (w.strategy !== "group") why(`config_groups.${name}.weights.strategy is ${JSON.stringify(w.strategy)}`);
    if (w.actorder !== undefined && w.actorder !== null) why(`config_groups.${name}.weights.actorder is ${JSON.stringify(w.actorder)} (g_idx is not implemented)`);
    if (!Number.isInteger(w.group_size) || (w.group_size as number) <= 0 || (w.group_size as number) % 2 !== 0) why(`config_groups.${name}.weights.group_size is ${JSON.stringify(w.group_size)}`);
    if (size !== undefined && size !== w.group_size) why("config groups with different group sizes");
    size = w.group_size as number;
  }
  groupSizes.set(config, size!);
  return size!;
}

/** compressed-tensors' name matching: `re:` entries are regexes matched at the start (Python re.match), others exact. */
const ignoreLists = new WeakMap<object, ((name: string) => boolean)[]>();
export function isIgnored(config: Record<string, unknown>, moduleName: string): boolean {
  let tests = ignoreLists.get(config);
  if (!tests) {
    const q = config.quantization_config as { ignore?: unknown } | undefined;
    const ignore = Array.isArray(q?.ignore) ? (q!.ignore as unknown[]).filter((x): x is string => typeof x === "string") : [];
    tests = ignore.map((t) => {
      if (!t.startsWith("re:")) return (n: string) => n === t;
      const re = new RegExp(`^(?:${t.slice(3)})`);
      return (n: string) => re.test(n);
    });
    ignoreLists.set(config, tests);
  }
  return tests.some((f) => f(moduleName));
}

/**
 * Recipe and shapes of a packed weight: I32 [out, P] + BF16 scale [out, ceil(in / group)] decode to [out, in].
 * `in` is the mapping's shape for the rule (config dims) when it has one, else P · 8 (compressed-tensors pads a
 * row to whole words); both must agree with P and the scale's columns. `storedName` is the module's name as stored
 * (before prefix normalisation), for the config's `ignore` list.
 */
function int4Leaf(rule: TensorRule, name: string, vals: Record<string, number>, catalog: { tensors: Map<string, CatalogTensor> }, ctx: PlanContext): PlannedLeaf<Int4Recipe> {
  const { dims, config, file } = ctx;
  const storedName = ctx.stored.get(name) ?? name;
  const t = valueOp(rule, "int4")!;
  const src = catalog.tensors.get(name)!;
  const scaleName = fillPattern(t.scale, vals);
  const s = catalog.tensors.get(scaleName);
  if (src.dtype !== "I32" || src.shape.length !== 2) throw new CkptError("SHAPE", `INT4 weight_packed must be I32 [out, in/8], got ${src.dtype} [${src.shape}]`, { tensor: name });
  if (!s) throw new CkptError("MISSING_TENSOR", `INT4 weight_packed without its scale ${scaleName}`, { tensor: name });
  const module = storedName.replace(/\.weight_packed$/, "");
  if (isIgnored(config, module)) {
    throw new CkptError("CONFIG", `module ${module} is in quantization_config.ignore but stored packed`, { tensor: name, file, hint: "the checkpoint and its config.json disagree" });
  }
  const group = int4GroupSize(config, file, name);
  const [out, P] = src.shape as [number, number];
  const inExpr = rule.shape?.[rule.shape.length - 1];
  const fromDims = inExpr !== undefined ? evalDimExpr(inExpr, dims) : undefined;
  const inn = fromDims ?? P * 8;
  if (Math.ceil(inn / 8) !== P) throw new CkptError("SHAPE", `INT4 weight_packed has ${P} words per row, but ${inn} inputs need ${Math.ceil(inn / 8)}`, { tensor: name, file });
  const wantScale = [out, Math.ceil(inn / group)];
  if (s.dtype !== "BF16" || s.shape.join() !== wantScale.join()) {
    throw new CkptError("SHAPE", `INT4 weight_scale must be BF16 [${wantScale}] (one scale per ${group} inputs of a [${out}, ${inn}] weight), got ${s.dtype} [${s.shape}]`, { tensor: scaleName });
  }
  // weight_shape's presence, dtype and dims are checked by quant-checks.ts; its values once the plan exists
  const shape = [out, inn];
  const ws = catalog.tensors.get(fillPattern(t.shape, vals))!;
  return { recipe: { op: "int4", packed: name, scale: scaleName, group }, dequantized: true, hfShape: shape, shape, keepDtype: "F32", shapeCheck: { tensor: fillPattern(t.shape, vals), of: name, expect: shape, dtype: ws.dtype, pieces: ws.pieces } };
}

/** An INT4 value that is not finite: name the BF16 scale and where it is (never write it as inf). */
function int4Error(r: DecodingRun<Int4Run>, bad: number, scales: Uint8Array, outPath: string, tensor = "?"): Error {
  const row = Math.floor(bad / r.cols), col = bad % r.cols;
  const at = row * r.decode.stride + 2 * Math.floor((r.decode.skip + col) / r.decode.group);
  const s = scales[at]! | (scales[at + 1]! << 8);
  return workerInputError("VALUE", `INT4 value is not finite: BF16 scale 0x${s.toString(16).padStart(4, "0")} (at byte ${r.decode.byteOffset + at} of ${r.decode.file}: row ${row}, group ${Math.floor((r.decode.skip + col) / r.decode.group)} of the run; writing ${tensor} into ${outPath}) is not finite or overflows float32 when multiplied by the int4 value; the checkpoint's scales are corrupt (--allow-nonfinite writes them)`, { file: r.decode.file, offset: r.decode.byteOffset + at });
}

const bytesOf = (a: Uint8Array | Uint16Array | Uint32Array): Uint8Array => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

const encode: EncodeOp<Int4EncodeRecipe> = {
  op: "int4_encode",
  kind: "int4",
  exactWhen: "group(s) are not INT4-representable (integer q in [-8, 7] times one positive BF16 scale per group, as compressed-tensors writes; BF16 rounding of q·s breaks this: convert with --dtype keep for exact F32 products)",
  // the decoded layout is the module's plain `.weight` rule
  plainSibling: (mapping, packed) => mapping.tensors.find((x) => x !== packed && x.hf === packed.hf!.replace(/_packed$/, "") && transformSteps(x).length === 0),
  plan(t) {
    const { name, shape, recipe } = t.tensor;
    if (shape.length !== 2) throw new CkptError("SHAPE", `--requantize int4: ${name} is not 2-D`, { tensor: name });
    const group = int4GroupSize(t.config, "config.json", name);
    const op = valueOp(t.packed, "int4")!;
    const packedName = fillPattern(t.packed.hf!, t.vals);
    const base = { op: "int4_encode" as const, values: [...shape], valuesDtype: t.tensor.dtype, group, input: recipe };
    const scaleName = fillPattern(op.scale, t.vals);
    const p = t.reference(packedName, "I32", encode.shape({ ...base, part: "packed" })), s = t.reference(scaleName, "BF16", encode.shape({ ...base, part: "scale" }));
    const reference = p && s ? { packed: p, scale: s } : undefined;
    return [
      { name: packedName, dtype: "I32", recipe: { ...base, part: "packed", reference } },
      { name: scaleName, dtype: "BF16", recipe: { ...base, part: "scale", reference } },
      { name: fillPattern(op.shape, t.vals), dtype: t.shapeDtype, recipe: { ...base, part: "shape" } },
    ];
  },
  describe: (r, input) => `int4_encode.${r.part}(${input} as ${r.valuesDtype}, group ${r.group})`,
  shape(r) {
    const lead = r.values.slice(0, -1), cols = r.values[r.values.length - 1]!;
    if (r.part === "shape") return [r.values.length];
    return [...lead, r.part === "packed" ? Math.ceil(cols / 8) : Math.ceil(cols / r.group)];
  },
  group: (r) => r.group,
  references: (r) => (r.reference ? [r.reference.packed, r.reference.scale] : undefined),
  readsValues: (r) => r.part !== "shape",
  counts: (r) => r.part === "packed",
  encodeSlab(k, e, values, rows, cols, ref) {
    const enc = k.int4Encode(values, rows, cols, e.group, e.valuesDtype, ref && { packed: ref[0], scale: ref[1] });
    return { bytes: e.part === "packed" ? enc.packed : bytesOf(enc.scales), count: { badMask: enc.badMask, adopted: enc.adopted, firstBad: enc.firstBad, groupsPerRow: Math.ceil(cols / e.group) } };
  },
  // weight_shape: the values' [rows, cols] in the source's integer dtype
  constant(e, outDtype, elems) {
    const b = Buffer.alloc(elems * (outDtype === "I64" ? 8 : 4));
    e.values.forEach((v, i) => (outDtype === "I64" ? b.writeBigInt64LE(BigInt(v), 8 * i) : b.writeInt32LE(v, 4 * i)));
    return b;
  },
};

export const int4: QuantOp<Int4Recipe, Int4Run> = {
  op: "int4",
  label: "INT4",
  compared: "decoded from INT4 (compressed-tensors pack-quantized, × BF16 group scales)",
  transform: "int4",

  checkSources({ tensors, config, rules, file, stored }) {
    const { q, configured } = quantMethod(config, "compressed-tensors");
    let packed = 0;
    for (const r of rules) {
      const t = valueOp(r.rule, "int4");
      if (!t || !r.hf) continue;
      const scalePat = compilePattern(t.scale), shapePat = compilePattern(t.shape);
      for (const name of tensors.keys()) {
        const vals = matchPattern(r.hf, name);
        if (vals) {
          packed++;
          const shapeName = fillPattern(t.shape, vals);
          const ws = tensors.get(shapeName);
          if (!ws) throw new CkptError("MISSING_TENSOR", `INT4 weight_packed without its weight_shape ${shapeName}`, { tensor: name, hint: "compressed-tensors stores [out, in] beside every packed weight" });
          if (ws.dtype !== "I32" && ws.dtype !== "I64") throw new CkptError("DTYPE", `weight_shape must be I32 or I64, got ${ws.dtype}`, { tensor: shapeName });
          if (ws.shape.length !== 1 || ws.shape[0] !== 2) throw new CkptError("SHAPE", `weight_shape must hold 2 dims, got [${ws.shape}]`, { tensor: shapeName });
          continue;
        }
        const orphan = matchPattern(scalePat, name) ?? matchPattern(shapePat, name);
        if (orphan && !tensors.has(fillPattern(r.hf.source, orphan))) {
          throw new CkptError("MISSING_TENSOR", `INT4 ${name.slice(name.lastIndexOf(".") + 1)} without its weight_packed ${fillPattern(r.hf.source, orphan)}`, { tensor: name, hint: "the checkpoint lost the packed weight this belongs to" });
        }
      }
      // the unquantized module beside it: compressed-tensors quantizes every Linear its config does not ignore
      if (!configured) continue;
      const plainPat = compilePattern(r.hf.source.replace(/\.weight_packed$/, ".weight"));
      for (const name of tensors.keys()) {
        if (!matchPattern(plainPat, name)) continue;
        const module = (stored.get(name) ?? name).replace(/\.weight$/, "");
        if (!isIgnored(config, module)) {
          throw new CkptError("CONFIG", `quantization_config (compressed-tensors) quantizes module ${module}, which is not in its ignore list, but it is stored unquantized (${tensors.get(name)!.dtype})`, { file, tensor: name, hint: "the checkpoint and its config.json disagree" });
        }
      }
    }
    // int4GroupSize refuses this too; said here with the count, before any recipe is built
    if (packed && !configured) throw unconfiguredError(packed, "INT4 weight_packed tensor(s)", q, "compressed-tensors", file);
  },

  // the scale and shape companions of packed weights in the source: read with them, not converted alone
  companions({ tensors, rules }) {
    const out = new Set<string>();
    const int4Rules = rules.filter((r) => valueOp(r.rule, "int4") && r.hf);
    for (const name of tensors.keys()) {
      for (const r of int4Rules) {
        const vals = matchPattern(r.hf!, name);
        if (!vals) continue;
        const t = valueOp(r.rule, "int4")!;
        out.add(fillPattern(t.scale, vals));
        out.add(fillPattern(t.shape, vals));
      }
    }
    return new Set([...out].filter((n) => tensors.has(n)));
  },

  planRule: int4Leaf,
  keepNote: (n) => `${n} INT4 (compressed-tensors) tensor(s) decoded to F32, the exact value q · scale (BF16 cannot hold every product); --dtype bf16 writes compressed-tensors' own BF16 decompression bit for bit at half the size`,

  leaves: (r) => [r.packed, r.scale],
  describe: (r) => `int4(${r.packed} × ${r.scale}, group ${r.group})`,

  // one output row: columns [colStart, colStart + cols) of row `coords` of packed I32 [..., P] with BF16 scales
  // [..., ceil(in / group)]; reads start at the group holding colStart
  runs(r, coords, colStart, cols, dst, leaves) {
    const p = wholePiece(r.packed, leaves, "INT4 decoding");
    const s = wholePiece(r.scale, leaves, "INT4 decoding");
    const prefix = p.shape.slice(0, -1);
    if (coords.length !== prefix.length) throw new CkptError("INTERNAL", `rank mismatch resolving INT4 ${r.packed}`);
    const P = p.shape[p.shape.length - 1]!;
    const S = s.shape[s.shape.length - 1]!;
    const lin = rowIndex(coords, prefix);
    const g0 = Math.floor(colStart / r.group);
    return [{
      dst, rows: 1, cols,
      src: { file: p.file, byteOffset: p.byteOffset + lin * P * 4 + (g0 * r.group) / 2, stride: P * 4, dtype: "U8" },
      decode: { op: "int4", file: s.file, byteOffset: s.byteOffset + (lin * S + g0) * 2, stride: S * 2, skip: colStart - g0 * r.group, group: r.group },
    }];
  },
  // rows merge when their scales continue too
  continues: (a, b, rows) => a.file === b.file && a.skip === b.skip && a.group === b.group && a.stride === b.stride && a.byteOffset + rows * a.stride === b.byteOffset,
  ranges(r) {
    const groups = Math.ceil((r.decode.skip + r.cols) / r.decode.group);
    return [
      { file: r.src.file, start: r.src.byteOffset, end: r.src.byteOffset + (r.rows - 1) * r.src.stride + Math.ceil((r.decode.skip + r.cols) / 2) },
      { file: r.decode.file, start: r.decode.byteOffset, end: r.decode.byteOffset + (r.rows - 1) * r.decode.stride + groups * 2 },
    ];
  },
  decode(r, c) {
    const [packed, scales] = c.src as [Uint8Array, Uint8Array];
    const bad = c.k.int4Decode(packed, scales, r.rows, r.cols, r.decode.skip, r.decode.group, r.src.stride, r.decode.stride, c.dst, c.outDtype);
    c.finite(() => (bad >= 0 ? int4Error(r, bad, scales, c.piece.outPath, c.piece.tensor) : nonfiniteDecodeError(c.piece, r, c.dst, "INT4")));
  },

  encode,
};
