// Non-finite decoded values (a decode's output must be finite in the output dtype; exec/decode-checks.ts counts
// them): where the first one is, and the error for one no op names itself (a finite product the dtype cannot hold).
import type { CastableDType } from "../dtypes.js";
import { workerInputError } from "../errors.js";
import type { BaseRun } from "./quant-op.js";

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

/**
 * The error for a run whose decoded output holds a NaN/inf the kernel did not flag itself: a finite value the output
 * dtype cannot hold (the ops name corrupt scales themselves: ops/<op>.ts).
 */
export function nonfiniteDecodeError(p: { tensor?: string; outPath: string; outDtype: string }, r: BaseRun, dst: Uint8Array, label: string): Error {
  const i = Math.max(0, firstNonfinite(dst, p.outDtype as CastableDType, r.rows * r.cols));
  const row = Math.floor(i / r.cols), col = i % r.cols;
  const tensor = p.tensor ?? "?";
  return workerInputError("VALUE", `${label} decoding gives a value ${p.outDtype} cannot hold at element ${i} of the run (row ${row}, column ${col}; source ${r.src?.file ?? "?"} from byte ${r.src?.byteOffset ?? "?"}; writing ${tensor} into ${p.outPath}); use --dtype f32 or bf16 (--allow-nonfinite writes ±inf)`, r.src ? { file: r.src.file, offset: r.src.byteOffset } : undefined);
}
