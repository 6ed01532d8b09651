// `dequant`: FP8 block quantization (DeepSeek-V3 / Kimi K2 releases). An FP8 (E4M3 / E5M2) weight [R, C] stored with
// an F32 companion `<weight><scale_suffix>` [ceil(R/block), ceil(C/block)] (the mapping's `dequant`) holds
// value × the scale of its block × block tile. Any stored tensor with that companion is decoded; the mapping rule
// is the plain one. Inverse: none (FP8 is not re-encoded; `--to hf` writes the decoded values). Sharding: any box;
// each row reads its own scale row, the scale tensor is read whole once per worker (a few KiB per weight).
import { CkptError, workerInputError } from "../errors.js";
import { elementSize, type DType } from "../dtypes.js";
import { firstNonfinite } from "./nonfinite.js";
import { notConverted, quantMethod, unconfiguredError, type DecodingRun, type QuantOp, type WholeTensor } from "./quant-op.js";

/** FP8 values of stored `tensor` × its F32 `scale` per `block` × `block` tile. */
export type Fp8BlockRecipe = { op: "dequant"; tensor: string; scale: string; block: number };

/** A run's FP8 side: the scale tensor, the global row / column of the run's first element, the block size. */
export type Fp8BlockRun = { op: "dequant"; scale: string; rowStart: number; colStart: number; block: number };

const FP8: readonly DType[] = ["F8_E4M3", "F8_E5M2"];
const more = (xs: unknown[]) => (xs.length > 1 ? ` (and ${xs.length - 1} more)` : "");
const f32 = (b: Uint8Array, i: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getFloat32(i * 4, true);

/**
 * An FP8 block-scale tensor (F32 [ceil(R/block), cols]) read for dequantization: every scale must be finite, since
 * each one multiplies a block × block tile of the weight (a NaN scale makes the whole tile NaN).
 */
function checkScaleFinite(scale: Uint8Array, name: string, where: WholeTensor, block: number, p: { tensor?: string; outPath: string }): void {
  const n = scale.byteLength >>> 2;
  for (let i = 0; i < n; i++) {
    const v = f32(scale, i);
    if (Number.isFinite(v)) continue;
    const bi = Math.floor(i / where.cols), bj = i % where.cols;
    const offset = where.byteOffset + i * 4;
    throw workerInputError("VALUE", `FP8 block scale [${bi}, ${bj}] of ${name} is ${v} (weight rows ${bi * block}…${(bi + 1) * block - 1}, columns ${bj * block}…${(bj + 1) * block - 1}; at byte ${offset} of ${where.file}; writing ${p.tensor ?? "?"} into ${p.outPath}); the checkpoint's scales are corrupt (--allow-nonfinite writes them)`, { file: where.file, offset });
  }
}

/** A non-finite dequantized value: the weight element, its block, its byte and its scale. */
function fp8Error(p: { tensor?: string; outPath: string; outDtype: string }, r: DecodingRun<Fp8BlockRun>, i: number, src: Uint8Array, scale: Uint8Array, scaleCols: number): Error {
  const row = Math.floor(i / r.cols), col = i % r.cols;
  const gr = r.decode.rowStart + row, gc = r.decode.colStart + col;
  const b = r.decode.block;
  const byte = src[row * r.src.stride + col]!;
  const sv = scaleCols ? f32(scale, Math.floor(gr / b) * scaleCols + Math.floor(gc / b)) : NaN;
  const offset = r.src.byteOffset + row * r.src.stride + col;
  return workerInputError("VALUE", `FP8 dequantization gives a non-finite ${p.outDtype} value at weight element [${gr}, ${gc}] (block [${Math.floor(gr / b)}, ${Math.floor(gc / b)}], ` +
    `fp8 byte 0x${byte.toString(16).padStart(2, "0")} at offset ${offset} of ${r.src.file}, scale ${sv} in ${r.decode.scale}): the stored value is NaN or value × scale overflows ${p.outDtype} (writing ${p.tensor ?? "?"} into ${p.outPath}; --allow-nonfinite writes it)`, { file: r.src.file, offset });
}

export const fp8Block: QuantOp<Fp8BlockRecipe, Fp8BlockRun> = {
  op: "dequant",
  label: "FP8",
  compared: "decoded from FP8 with block scales",

  checkSources({ tensors, mapping, config, file }) {
    const { q, configured } = quantMethod(config, "fp8");
    const suffix = mapping.dequant?.scale_suffix;
    const f8 = [...tensors.values()].filter((t) => FP8.includes(t.dtype));
    const scales = suffix ? [...tensors.keys()].filter((n) => n.endsWith(suffix)) : [];
    if (!suffix) {
      // an architecture without block dequantization: its FP8 checkpoints cannot be decoded, only refused
      if (configured && f8.length) throw new CkptError("UNSUPPORTED", `config.json says quant_method fp8, but the ${mapping.architecture} mapping has no FP8 block dequantization; converting would cast the FP8 values without their scales`, { file, tensor: f8[0]!.name, hint: "convert a BF16 release of this model" });
      return;
    }
    for (const s of scales) {
      const w = s.slice(0, -suffix.length);
      if (!tensors.has(w)) throw new CkptError("MISSING_TENSOR", `FP8 block scale without its weight ${w}`, { tensor: s, hint: "the checkpoint lost the weight this scale belongs to" });
    }
    const unscaled = f8.filter((t) => !tensors.has(t.name + suffix)).map((t) => t.name);
    if (unscaled.length) {
      throw new CkptError("MISSING_TENSOR", `FP8 weight without its block scale ${unscaled[0]}${suffix}${more(unscaled)}: its values would be written without the scale, wrong by that factor`, { tensor: unscaled[0], hint: "the checkpoint is incomplete; re-download the shard holding the scale" });
    }
    if (!f8.length) return;
    const w0 = f8[0]!.name;
    if (!configured) {
      throw unconfiguredError(f8.length, "FP8 block-quantized weight(s)", q, "fp8", file, w0);
    }
    const bs = q!.weight_block_size;
    const block = mapping.dequant!.block;
    if (bs !== undefined && !(Array.isArray(bs) && bs.length === 2 && bs[0] === block && bs[1] === block)) {
      throw new CkptError("CONFIG", `quantization_config.weight_block_size is ${JSON.stringify(bs)}, but the ${mapping.architecture} FP8 scales are per ${block}×${block} block`, { file, tensor: w0 });
    }
    const fmt = q!.fmt;
    const wrongFmt = f8.find((t) => (fmt === "e4m3" && t.dtype !== "F8_E4M3") || (fmt === "e5m2" && t.dtype !== "F8_E5M2"));
    if (wrongFmt) throw new CkptError("DTYPE", `quantization_config.fmt is ${fmt}, but the weight is ${wrongFmt.dtype}`, { file, tensor: wrongFmt.name });
    for (const t of f8) {
      const m = notConverted(q, t.name);
      if (m) throw new CkptError("CONFIG", `quantization_config.modules_to_not_convert lists ${m}, but the weight is stored FP8`, { file, tensor: t.name, hint: "the checkpoint and its config.json disagree" });
    }
  },

  // the block scales of weights in the source: read with their weight
  companions({ tensors, mapping }) {
    const suffix = mapping.dequant?.scale_suffix;
    return new Set(suffix ? [...tensors.keys()].filter((n) => n.endsWith(suffix) && tensors.has(n.slice(0, -suffix.length))) : []);
  },

  planStored(name, catalog, mapping) {
    const suffix = mapping.dequant?.scale_suffix;
    if (!suffix || !catalog.tensors.has(name + suffix)) return undefined;
    const w = catalog.tensors.get(name)!;
    if (w.dtype !== "F8_E4M3" && w.dtype !== "F8_E5M2") throw new CkptError("DTYPE", `has a ${suffix} companion but dtype ${w.dtype}, not FP8`, { tensor: name });
    if (w.shape.length !== 2) throw new CkptError("SHAPE", `FP8 block dequantization needs a 2-D weight, got [${w.shape}]`, { tensor: name });
    const s = catalog.tensors.get(name + suffix)!;
    const block = mapping.dequant!.block;
    const want = [Math.ceil(w.shape[0]! / block), Math.ceil(w.shape[1]! / block)];
    if (s.dtype !== "F32" || s.shape.length !== 2 || s.shape[0] !== want[0] || s.shape[1] !== want[1]) {
      throw new CkptError("SHAPE", `scale must be F32 [${want}] for a [${w.shape}] weight with ${block}×${block} blocks, got ${s.dtype} [${s.shape}]`, { tensor: name + suffix });
    }
    return { recipe: { op: "dequant", tensor: name, scale: name + suffix, block }, dequantized: true };
  },

  leaves: (r) => [r.tensor, r.scale],
  describe: (r) => `dequant(${r.tensor} × ${r.scale}, block ${r.block})`,

  // the weight's own rows (any stored pieces), each knowing where it lies among the scale's blocks
  runs(r, coords, colStart, _cols, dst, _leaves, stored) {
    const out = stored(r.tensor);
    if (out.length && coords.length !== 1) throw new CkptError("INTERNAL", `dequant needs a 2-D weight (${r.tensor})`);
    for (const run of out) {
      const d: Fp8BlockRun = { op: "dequant", scale: r.scale, rowStart: coords[0]!, colStart: colStart + (run.dst - dst), block: r.block };
      run.decode = d;
    }
    return out;
  },
  continues: (a, b, rows) => a.scale === b.scale && a.colStart === b.colStart && a.rowStart + rows === b.rowStart,
  wholeTensors: (d) => [d.scale],
  decode(r, c) {
    const src = c.src[0]!;
    const { bytes: scale, at } = c.whole(r.decode.scale, (bytes, where) => checkScaleFinite(bytes, r.decode.scale, where, r.decode.block, c.piece));
    const oes = elementSize(c.outDtype);
    for (let row = 0; row < r.rows; row++) {
      const wrow = src.subarray(row * r.src.stride, row * r.src.stride + r.cols);
      const drow = c.dst.subarray(row * r.cols * oes, (row + 1) * r.cols * oes);
      c.k.dequantBlock(wrow, r.src.dtype as "F8_E4M3" | "F8_E5M2", 1, r.cols, r.decode.rowStart + row, r.decode.colStart, scale, at.cols, r.decode.block, drow, c.outDtype);
    }
    c.finite(() => fp8Error(c.piece, r, Math.max(0, firstNonfinite(c.dst, c.outDtype, r.rows * r.cols)), src, scale, at.cols));
  },
};
