// Loader for the native addon (native/build/Release/ckpt_native.node, built by scripts/build-native.js).
// The addon is optional: when it is missing or fails to load, callers fall back to the TypeScript kernels.

import { packageRoot } from "../util/package-root.js";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { CastableDType } from "../dtypes.js";
import type { Kernels, Stats } from "./index.js";
import { int4DecodeRef, mxfp4DecodeRef } from "./reference.js";

/** Dtype codes of native/include/ckpt_convert.h (enum ckpt_dtype). */
export const DTYPE_CODE: Record<CastableDType, number> = { F32: 0, BF16: 1, F16: 2, F8_E4M3: 3, F8_E5M2: 4 };

export interface NativeStats {
  count: number; min: number; max: number; sum: number; sumSq: number; nan: number; inf: number;
  f16Overflow: number; f16Underflow: number; zeros: number;
}

/** The raw addon surface (dtype arguments are DTYPE_CODE numbers). */
export interface NativeAddon {
  cast(src: Uint8Array, srcDtype: number, dst: Uint8Array, dstDtype: number, n: number): void;
  gatherRows(src: Uint8Array, srcDtype: number, srcRowElems: number, rowIndex: Int32Array, colStart: number, cols: number,
    dst: Uint8Array, dstDtype: number): void;
  dequantBlock(w: Uint8Array, wDtype: number, rows: number, cols: number, rowStart: number, colStart: number,
    scaleInv: Uint8Array, scaleCols: number, block: number, dst: Uint8Array, dstDtype: number): void;
  stats(src: Uint8Array, dtype: number, n: number): NativeStats;
  /** Absent from addons built before it existed. */
  mxfp4Decode?(blocks: Uint8Array, scales: Uint8Array, rows: number, cols: number, skip: number, blockStride: number,
    scaleStride: number, dst: Uint8Array, dstDtype: number): number;
  /** Absent from addons built before it existed. */
  int4Decode?(packed: Uint8Array, scales: Uint8Array, rows: number, cols: number, skip: number, group: number, packedStride: number,
    scaleStride: number, dst: Uint8Array, dstDtype: number): number;
  /** Absent from addons built before it existed. */
  loraMerge?(W: Float32Array, out: number, inn: number, A: Float32Array, B: Float32Array, r: number, s: number,
    m: Float32Array | undefined, transposed: boolean, res: Float32Array): void;
  /** zlib-compatible CRC-32 (PCLMULQDQ / VPCLMULQDQ folding). Absent from addons built before it existed. */
  crc32?(buf: Uint8Array, crc: number): number;
  crcTier?(): string;
  setCrcTier?(name: string): string;
  /** Streaming XXH3-128 (xxHash 0.8.1): a state, updates, then the canonical hex digest (which frees the state). */
  xxh3New?(): unknown;
  xxh3Update?(state: unknown, buf: Uint8Array): void;
  xxh3Digest?(state: unknown): string;
  xxh3Tier?(): string;
  setXxh3Tier?(name: string): string;
  /** A 2 MiB-aligned buffer of `bytes` backed by transparent huge pages where allowed (O_DIRECT I/O). Absent from older addons. */
  alignedBuffer?(bytes: number): Buffer;
  /** ISA in use: "scalar" | "avx2" | "avx512". */
  isa(): string;
  /** Best ISA this CPU supports. */
  bestIsa(): string;
  /** Switch ISA (tests/benchmarks); "auto" = best. Returns the ISA now in use. */
  setIsa(name: string): string;
  /** Load the nvcc-built CUDA library; "" on success, else the reason. */
  cudaLoad(path: string): string;
  cudaDeviceCount(): number;
  cudaLastError(): string;
  cudaCast(src: Uint8Array, srcDtype: number, dst: Uint8Array, dstDtype: number, n: number): void;
  cudaDequant(w: Uint8Array, wDtype: number, rows: number, cols: number, rowStart: number, colStart: number,
    scaleInv: Uint8Array, scaleCols: number, block: number, dst: Uint8Array, dstDtype: number): void;
}

export function nativeAddonPath(): string {
  return join(packageRoot(), "native", "build", "Release", "ckpt_native.node");
}

let loaded: { addon?: NativeAddon; error?: string } | undefined;

/** The addon, or undefined (see nativeLoadError()). Loaded once per thread. Ignores CKPT_NATIVE. */
export function loadNative(): NativeAddon | undefined {
  if (!loaded) {
    const path = nativeAddonPath();
    if (!existsSync(path)) {
      loaded = { error: `${path} not built` };
    } else {
      try {
        const require = createRequire(import.meta.url);
        loaded = { addon: require(path) as NativeAddon };
      } catch (e) {
        loaded = { error: `failed to load ${path}: ${(e as Error).message}` };
      }
    }
  }
  return loaded.addon;
}

export function nativeLoadError(): string | undefined {
  loadNative();
  return loaded?.error;
}

/** Kernels over a loaded addon (exported for tests and benchmarks; normal code calls getKernels()). */
export function nativeKernelsFrom(addon: NativeAddon): Kernels {
  const C = DTYPE_CODE;
  return Object.freeze({
    name: "native" as const,
    cast: (src: Uint8Array, s: CastableDType, dst: Uint8Array, d: CastableDType, n: number) => addon.cast(src, C[s], dst, C[d], n),
    gatherRows: (src: Uint8Array, s: CastableDType, srcRowElems: number, rowIndex: Int32Array, colStart: number, cols: number, dst: Uint8Array, d: CastableDType) =>
      addon.gatherRows(src, C[s], srcRowElems, rowIndex, colStart, cols, dst, C[d]),
    dequantBlock: (w: Uint8Array, wd: "F8_E4M3" | "F8_E5M2", rows: number, cols: number, rowStart: number, colStart: number, scaleInv: Uint8Array, scaleCols: number, block: number, dst: Uint8Array, d: CastableDType) =>
      addon.dequantBlock(w, C[wd], rows, cols, rowStart, colStart, scaleInv, scaleCols, block, dst, C[d]),
    stats: (src: Uint8Array, d: CastableDType, n: number): Stats => addon.stats(src, C[d], n),
    // An addon built before the MXFP4 kernel existed falls back to the (bit-identical) TypeScript one.
    mxfp4Decode: addon.mxfp4Decode
      ? (b: Uint8Array, s: Uint8Array, rows: number, cols: number, skip: number, bs: number, ss: number, dst: Uint8Array, d: CastableDType) =>
        addon.mxfp4Decode!(b, s, rows, cols, skip, bs, ss, dst, C[d])
      : mxfp4DecodeRef,
    int4Decode: addon.int4Decode
      ? (p: Uint8Array, s: Uint8Array, rows: number, cols: number, skip: number, g: number, ps: number, ss: number, dst: Uint8Array, d: CastableDType) =>
        addon.int4Decode!(p, s, rows, cols, skip, g, ps, ss, dst, C[d])
      : int4DecodeRef,
    ...(addon.loraMerge ? { loraMerge: addon.loraMerge.bind(addon) } : {}),
  });
}

