// Decoding quantized sources (FP8 × block scale, MXFP4, INT4) must give finite values in the output dtype. A NaN or
// inf there is never in the source as a value: it comes from a corrupt scale or a product the output dtype cannot
// hold, so it is refused with where it came from (tensor, block, file offset) unless --allow-nonfinite. These run in
// worker threads, after whichever kernel tier (native, TypeScript, CUDA) decoded the values, so every tier refuses.
import type { CastableDType } from "../dtypes.js";
import { workerInputError } from "../errors.js";
import type { Kernels } from "../kernels/index.js";
import type { Run } from "../plan/runs.js";

/** How many of the n values in `dst` (output dtype) are NaN or ±inf. */
export function decodedNonfinite(k: Kernels, dst: Uint8Array, dtype: CastableDType, n: number): number {
  const s = k.stats(dst, dtype, n);
  return s.nan + s.inf;
}

/** Index of the first NaN/inf among n values of `dtype` in `buf`, or -1. */
export function firstNonfinite(buf: Uint8Array, dtype: CastableDType, n: number): number {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let i = 0; i < n; i++) {
    let bad: boolean;
    switch (dtype) {
      case "F32": bad = (dv.getUint32(i * 4, true) & 0x7f800000) === 0x7f800000; break;
      case "BF16": bad = (dv.getUint16(i * 2, true) & 0x7f80) === 0x7f80; break;
      case "F16": bad = (dv.getUint16(i * 2, true) & 0x7c00) === 0x7c00; break;
      case "F8_E4M3": bad = (buf[i]! & 0x7f) === 0x7f; break;
      case "F8_E5M2": bad = (buf[i]! & 0x7c) === 0x7c; break;
    }
    if (bad) return i;
  }
  return -1;
}

const f32 = (b: Uint8Array, i: number) => new DataView(b.buffer, b.byteOffset, b.byteLength).getFloat32(i * 4, true);

/**
 * An FP8 block-scale tensor (F32 [ceil(R/block), cols]) read for dequantization: every scale must be finite, since
 * each one multiplies a block × block tile of the weight (a NaN scale makes the whole tile NaN).
 */
export function checkScaleFinite(scale: Uint8Array, name: string, where: { file: string; byteOffset: number; cols: number }, block: number, p: { tensor?: string; outPath: string }): void {
  const n = scale.byteLength >>> 2;
  for (let i = 0; i < n; i++) {
    const v = f32(scale, i);
    if (Number.isFinite(v)) continue;
    const bi = Math.floor(i / where.cols), bj = i % where.cols;
    const offset = where.byteOffset + i * 4;
    throw workerInputError("VALUE", `FP8 block scale [${bi}, ${bj}] of ${name} is ${v} (weight rows ${bi * block}…${(bi + 1) * block - 1}, columns ${bj * block}…${(bj + 1) * block - 1}; at byte ${offset} of ${where.file}; writing ${p.tensor ?? "?"} into ${p.outPath}); the checkpoint's scales are corrupt (--allow-nonfinite writes them)`, { file: where.file, offset });
  }
}

/**
 * The error for a run whose decoded output holds a NaN/inf the kernel did not flag itself: for FP8, the weight
 * element, its block, its byte and scale; for MXFP4/INT4, a finite value the output dtype cannot hold.
 */
export function nonfiniteDecodeError(p: { tensor?: string; outPath: string; outDtype: string }, r: Run, dst: Uint8Array, kind: "FP8" | "MXFP4" | "INT4", src?: Uint8Array, scale?: Uint8Array, scaleCols = 0): Error {
  const i = Math.max(0, firstNonfinite(dst, p.outDtype as CastableDType, r.rows * r.cols));
  const row = Math.floor(i / r.cols), col = i % r.cols;
  const tensor = p.tensor ?? "?";
  if (kind === "FP8" && r.dequant && r.src && src) {
    const gr = r.dequant.rowStart + row, gc = r.dequant.colStart + col;
    const b = r.dequant.block;
    const byte = src[row * r.src.stride + col]!;
    const sv = scale && scaleCols ? f32(scale, Math.floor(gr / b) * scaleCols + Math.floor(gc / b)) : NaN;
    const offset = r.src.byteOffset + row * r.src.stride + col;
    return workerInputError("VALUE", `FP8 dequantization gives a non-finite ${p.outDtype} value at weight element [${gr}, ${gc}] (block [${Math.floor(gr / b)}, ${Math.floor(gc / b)}], ` +
      `fp8 byte 0x${byte.toString(16).padStart(2, "0")} at offset ${offset} of ${r.src.file}, scale ${sv} in ${r.dequant.scale}): the stored value is NaN or value × scale overflows ${p.outDtype} (writing ${tensor} into ${p.outPath}; --allow-nonfinite writes it)`, { file: r.src.file, offset });
  }
  return workerInputError("VALUE", `${kind} decoding gives a value ${p.outDtype} cannot hold at element ${i} of the run (row ${row}, column ${col}; source ${r.src?.file ?? "?"} from byte ${r.src?.byteOffset ?? "?"}; writing ${tensor} into ${p.outPath}); use --dtype f32 or bf16 (--allow-nonfinite writes ±inf)`, r.src ? { file: r.src.file, offset: r.src.byteOffset } : undefined);
}
