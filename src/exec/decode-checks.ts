// Decoding quantized sources (FP8 × block scale, MXFP4, INT4) must give finite values in the output dtype. A NaN or
// inf there is never in the source as a value: it comes from a corrupt scale or a product the output dtype cannot
// hold, so it is refused with where it came from (tensor, block, file offset) unless --allow-nonfinite. These run in
// worker threads, after whichever kernel tier (native, TypeScript, CUDA) decoded the values, so every tier refuses.
import type { CastableDType } from "../dtypes.js";
import type { Kernels } from "../kernels/index.js";

// where the first one is and the error naming it: ops/nonfinite.ts (the ops raise it)
export { firstNonfinite } from "../ops/nonfinite.js";

/** How many of the n values in `dst` (output dtype) are NaN or ±inf. */
export function decodedNonfinite(k: Kernels, dst: Uint8Array, dtype: CastableDType, n: number): number {
  const s = k.stats(dst, dtype, n);
  return s.nan + s.inf;
}
