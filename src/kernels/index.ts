// The kernels every tensor transform goes through (the interface is types.ts): cast, row gather (q/k permutation,
// Shard(1) column slices), FP8 block dequant, statistics, MXFP4 / INT4 decode and encode, and (native only) the LoRA
// merge. Two implementations, bit-identical on every output byte: the native addon (C++ SIMD) and the pure-TypeScript
// reference (the LoRA merge's reference is mergeWeight's own TypeScript path; the encoders' is kernels/requantize.ts).
// The addon's CUDA build also offers cast and dequant on a GPU (cuda.ts); no command uses it:
// getKernels({ device: "cuda" }) selects it from the API.

import { isMainThread } from "node:worker_threads";
import type { CastableDType } from "../dtypes.js";
import { CkptError } from "../errors.js";
import { cudaAvailable, cudaKernels, cudaUnavailableReason } from "./cuda.js";
import { loadNative, nativeKernelsFrom, nativeLoadError } from "./native.js";
import { int4EncodeKeeping, mxfp4EncodeKeeping, mxfp4ScalesKeeping } from "./requantize.js";
import { castRef, dequantBlockRef, gatherRowsRef, int4DecodeRef, mxfp4DecodeRef, statsRef } from "./reference.js";
import type { Kernels } from "./types.js";

export type { Int4Encoded, Kernels, Mxfp4Encoded, Stats } from "./types.js";

export const referenceKernels: Kernels = Object.freeze({
  name: "typescript" as const,
  cast: castRef,
  gatherRows: gatherRowsRef,
  dequantBlock: dequantBlockRef,
  stats: statsRef,
  mxfp4Decode: mxfp4DecodeRef,
  int4Decode: int4DecodeRef,
  mxfp4Encode: mxfp4EncodeKeeping,
  mxfp4Scales: mxfp4ScalesKeeping,
  int4Encode: int4EncodeKeeping,
});

let cpuKernels: Kernels | undefined;
let warned = false;

export interface KernelOptions {
  /** "cpu" (default): native SIMD or the TS fallback. "cuda": cast and dequant on the GPU; throws without one. */
  device?: "cpu" | "cuda";
}

/**
 * The kernels to use: native when the addon loaded, else the TypeScript reference with one warning on stderr
 * per process. CKPT_NATIVE=0 selects the TypeScript kernels silently.
 */
export function getKernels(opts: KernelOptions = {}): Kernels {
  if (opts.device === "cuda") {
    if (!cudaAvailable()) {
      throw new CkptError("NATIVE", `CUDA kernels requested, but there is no usable CUDA device (${cudaUnavailableReason() ?? "unknown reason"})`, {
        hint: "call getKernels() without `device: \"cuda\"` to use the CPU kernels",
      });
    }
    return cudaKernels();
  }
  if (cpuKernels) return cpuKernels;
  if (process.env.CKPT_NATIVE === "0") return (cpuKernels = referenceKernels);
  const addon = loadNative();
  if (addon) return (cpuKernels = nativeKernelsFrom(addon));
  // One warning per process: the main thread warns and marks the environment that later workers inherit.
  if (!warned && process.env.CKPT_KERNELS_WARNED !== "1") {
    console.warn(`ckpt: native kernels unavailable (${nativeLoadError()}); using the TypeScript kernels (slower). ` +
      "Build them with `npm run build:native`, or set CKPT_NATIVE=0 to silence this.");
    if (isMainThread) process.env.CKPT_KERNELS_WARNED = "1";
  }
  warned = true;
  return (cpuKernels = referenceKernels);
}

/** Which CPU implementation getKernels() picks and why (for `ckpt bench`, `--debug`). */
export function kernelsInfo(): { name: "native" | "typescript"; isa?: string; reason?: string } {
  if (process.env.CKPT_NATIVE === "0") return { name: "typescript", reason: "CKPT_NATIVE=0" };
  const addon = loadNative();
  return addon ? { name: "native", isa: addon.isa() } : { name: "typescript", reason: nativeLoadError() };
}

/** Forget the cached choice (tests toggle CKPT_NATIVE). */
export function resetKernelsForTests(): void {
  cpuKernels = undefined;
}

/**
 * Row order of the q/k RoPE permutation (docs/torchtitan-layout.md §3.2) as a gather index: dst row i takes src row
 * index[i]. HF -> TT: tt[h*hd + 2j + c] = hf[h*hd + c*hd/2 + j]; TT -> HF is the inverse.
 */
export function ropeRowIndex(heads: number, headDim: number, direction: "hf_to_tt" | "tt_to_hf"): Int32Array {
  if (!Number.isInteger(heads) || heads <= 0) throw new RangeError(`invalid head count ${heads}`);
  if (!Number.isInteger(headDim) || headDim <= 0 || headDim % 2 !== 0) throw new RangeError(`head_dim ${headDim} must be a positive even integer`);
  const half = headDim / 2;
  const idx = new Int32Array(heads * headDim);
  for (let h = 0; h < heads; h++) {
    const base = h * headDim;
    for (let j = 0; j < half; j++) {
      for (let c = 0; c < 2; c++) {
        const tt = base + 2 * j + c, hf = base + c * half + j;
        if (direction === "hf_to_tt") idx[tt] = hf;
        else idx[hf] = tt;
      }
    }
  }
  return idx;
}

/** Whole-row permutation (and optional cast) of a [rowIndex.length, rowElems] matrix. */
export function permuteRows(k: Kernels, src: Uint8Array, srcDtype: CastableDType, rowElems: number, rowIndex: Int32Array,
  dst: Uint8Array, dstDtype: CastableDType = srcDtype): void {
  k.gatherRows(src, srcDtype, rowElems, rowIndex, 0, rowElems, dst, dstDtype);
}

/** Dense box [rowStart, rowStart+rowCount) x [colStart, colStart+colCount) of a row-major matrix with `cols` columns. */
export function slice2d(k: Kernels, src: Uint8Array, srcDtype: CastableDType, cols: number, rowStart: number, rowCount: number,
  colStart: number, colCount: number, dst: Uint8Array, dstDtype: CastableDType = srcDtype): void {
  const idx = new Int32Array(rowCount);
  for (let i = 0; i < rowCount; i++) idx[i] = rowStart + i;
  k.gatherRows(src, srcDtype, cols, idx, colStart, colCount, dst, dstDtype);
}

export { cudaAvailable } from "./cuda.js";
export { nativeKernelsFrom } from "./native.js";
