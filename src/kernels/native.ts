// Loader for the native addon (native/build/Release/ckpt_native.node, built by scripts/build-native.js).
// The addon is optional: when it is missing or fails to load, callers fall back to the TypeScript kernels.

import { packageRoot } from "../util/package-root.js";
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import type { CastableDType } from "../dtypes.js";
import type { Int4Encoded, Kernels, Mxfp4Encoded, Stats } from "./types.js";
import { int4DecodeRef, mxfp4DecodeRef } from "./reference.js";
import { int4EncodeKeeping, mxfp4EncodeKeeping, mxfp4ScalesKeeping } from "./requantize.js";

/** Dtype codes of native/include/ckpt_convert.h (enum ckpt_dtype). */
export const DTYPE_CODE: Record<CastableDType, number> = { F32: 0, BF16: 1, F16: 2, F8_E4M3: 3, F8_E5M2: 4 };

export interface NativeStats {
  count: number; min: number; max: number; sum: number; sumSq: number; nan: number; inf: number;
  f16Overflow: number; f16Underflow: number; zeros: number;
}

export interface EncodeCounts { bad: number; firstBad: number; adopted: number }

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
  /**
   * Requantization encoders (native/src/encode.h); valuesDtype is F32 or BF16's code; the reference pair is both
   * given or both undefined; outputs are overwritten whole. Absent from addons built before they existed.
   */
  mxfp4Encode?(values: Float32Array, rows: number, cols: number, valuesDtype: number, refBlocks: Uint8Array | undefined,
    refScales: Uint8Array | undefined, blocks: Uint8Array, scales: Uint8Array, badMask: Uint8Array): EncodeCounts;
  mxfp4Scales?(values: Float32Array, rows: number, cols: number, valuesDtype: number, refBlocks: Uint8Array | undefined,
    refScales: Uint8Array | undefined, scales: Uint8Array): void;
  int4Encode?(values: Float32Array, rows: number, cols: number, valuesDtype: number, group: number, refPacked: Uint8Array | undefined,
    refScales: Uint8Array | undefined, packed: Uint32Array, scales: Uint16Array, badMask: Uint8Array): EncodeCounts;
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
    // Addons built before the encoders existed fall back to the (byte-identical) TypeScript ones.
    mxfp4Encode: addon.mxfp4Encode ? mxfp4EncodeNative(addon) : mxfp4EncodeKeeping,
    mxfp4Scales: addon.mxfp4Scales
      ? (v: Float32Array, rows: number, cols: number, d: "F32" | "BF16", ref?: { blocks: Uint8Array; scales: Uint8Array }) => {
        mxfp4Columns(cols);
        const scales = new Uint8Array(rows * (cols / 32));
        addon.mxfp4Scales!(v, rows, cols, C[d], ref?.blocks, ref?.scales, scales);
        return scales;
      }
      : mxfp4ScalesKeeping,
    int4Encode: addon.int4Encode ? int4EncodeNative(addon) : int4EncodeKeeping,
    ...(addon.loraMerge ? { loraMerge: addon.loraMerge.bind(addon) } : {}),
  });
}


/** The TypeScript encoder's error for columns that are not whole groups. */
function mxfp4Columns(cols: number): void {
  if (cols % 32 !== 0) throw new Error(`mxfp4 encode: ${cols} columns is not a multiple of 32`);
}

function mxfp4EncodeNative(addon: NativeAddon) {
  return (v: Float32Array, rows: number, cols: number, d: "F32" | "BF16", ref?: { blocks: Uint8Array; scales: Uint8Array }): Mxfp4Encoded => {
    mxfp4Columns(cols);
    const G = rows * (cols / 32);
    const blocks = new Uint8Array(G * 16), scales = new Uint8Array(G), badMask = new Uint8Array(G);
    const n = addon.mxfp4Encode!(v, rows, cols, DTYPE_CODE[d], ref?.blocks, ref?.scales, blocks, scales, badMask);
    return { blocks, scales, badMask, ...n };
  };
}

function int4EncodeNative(addon: NativeAddon) {
  return (v: Float32Array, rows: number, cols: number, group: number, d: "F32" | "BF16", ref?: { packed: Uint8Array; scale: Uint8Array }): Int4Encoded => {
    const words = new Uint32Array(rows * Math.ceil(cols / 8)), S = rows * Math.ceil(cols / group);
    const scales = new Uint16Array(S), badMask = new Uint8Array(S);
    const n = addon.int4Encode!(v, rows, cols, DTYPE_CODE[d], group, ref?.packed, ref?.scale, words, scales, badMask);
    return { packed: new Uint8Array(words.buffer), scales, badMask, ...n };
  };
}
