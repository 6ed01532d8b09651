// Optional CUDA path (getKernels({ device: "cuda" }); no command selects it): cast and FP8 dequant run on the GPU through native/cuda (an nvcc-built
// shared library the addon dlopens); gather and stats stay on the CPU kernels. Same header, same bits.

import { existsSync } from "node:fs";
import { join } from "node:path";
import type { CastableDType } from "../dtypes.js";
import type { Kernels } from "./types.js";
import { DTYPE_CODE, loadNative, nativeKernelsFrom, nativeLoadError } from "./native.js";
import { packageRoot } from "../util/package-root.js";

export function cudaLibraryPath(): string {
  return join(packageRoot(), "native", "build", "Release", process.platform === "win32" ? "ckpt_cuda.dll" : "libckpt_cuda.so");
}

let probe: { ok: boolean; reason?: string } | undefined;

function probeCuda(): { ok: boolean; reason?: string } {
  if (probe) return probe;
  if (process.env.CKPT_CUDA === "0") return (probe = { ok: false, reason: "CKPT_CUDA=0" });
  const addon = loadNative();
  if (!addon) return (probe = { ok: false, reason: `native addon unavailable: ${nativeLoadError()}` });
  const lib = cudaLibraryPath();
  if (!existsSync(lib)) return (probe = { ok: false, reason: `${lib} not built (needs nvcc at install time)` });
  const err = addon.cudaLoad(lib);
  if (err) return (probe = { ok: false, reason: err });
  const count = addon.cudaDeviceCount();
  if (count <= 0) return (probe = { ok: false, reason: `no CUDA device (${addon.cudaLastError() || "device count 0"})` });
  return (probe = { ok: true });
}

/** True when the CUDA library is built and loads, and at least one GPU is visible. */
export function cudaAvailable(): boolean {
  return probeCuda().ok;
}

export function cudaUnavailableReason(): string | undefined {
  return probeCuda().reason;
}

/** GPU kernels (cast, dequant) with CPU gather/stats. Throws when cudaAvailable() is false. */
export function cudaKernels(): Kernels {
  const p = probeCuda();
  if (!p.ok) throw new Error(`ckpt: CUDA kernels unavailable: ${p.reason}`);
  const addon = loadNative()!;
  const cpu = nativeKernelsFrom(addon);
  const C = DTYPE_CODE;
  return Object.freeze({
    name: "native" as const,
    cast: (src: Uint8Array, s: CastableDType, dst: Uint8Array, d: CastableDType, n: number) => addon.cudaCast(src, C[s], dst, C[d], n),
    gatherRows: cpu.gatherRows,
    dequantBlock: (w: Uint8Array, wd: "F8_E4M3" | "F8_E5M2", rows: number, cols: number, rowStart: number, colStart: number,
      scaleInv: Uint8Array, scaleCols: number, block: number, dst: Uint8Array, d: CastableDType) =>
      addon.cudaDequant(w, C[wd], rows, cols, rowStart, colStart, scaleInv, scaleCols, block, dst, C[d]),
    stats: cpu.stats,
    mxfp4Decode: cpu.mxfp4Decode,
    int4Decode: cpu.int4Decode,
    mxfp4Encode: cpu.mxfp4Encode,
    mxfp4Scales: cpu.mxfp4Scales,
    int4Encode: cpu.int4Encode,
  });
}
