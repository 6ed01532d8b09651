// The kernel interface (what every implementation provides) and the records it returns. Its own module so that the
// implementations (native.ts, cuda.ts, requantize.ts) and the selector (index.ts) all depend on it and not on each
// other's types.
import type { CastableDType } from "../dtypes.js";

export interface Stats {
  count: number;
  /** Smallest / largest finite value (NaN when there is none). */
  min: number;
  max: number;
  /** Sum and sum of squares of the finite values, accumulated in f64 (summation order is implementation-defined). */
  sum: number;
  sumSq: number;
  nan: number;
  inf: number;
  /** Finite values that become ±inf in f16 (|x| >= 65520). */
  f16Overflow: number;
  /** Nonzero finite values that become ±0 in f16 (|x| <= 2^-25). */
  f16Underflow: number;
  /** ±0 elements. */
  zeros: number;
}

/** An MXFP4 encode (kernels/requantize.ts mxfp4EncodeKeeping): blocks [rows, G, 16], E8M0 scales [rows, G]. */
export interface Mxfp4Encoded {
  blocks: Uint8Array;
  scales: Uint8Array;
  /** Groups with no exact encoding (after the reference), the first of them (−1: none), one byte per group. */
  bad: number;
  firstBad: number;
  badMask: Uint8Array;
  /** Groups taken from the reference. */
  adopted: number;
}

/** An INT4 encode (kernels/requantize.ts int4EncodeKeeping): packed I32 words' bytes, BF16 scale bits. */
export interface Int4Encoded {
  packed: Uint8Array;
  scales: Uint16Array;
  bad: number;
  firstBad: number;
  badMask: Uint8Array;
  adopted: number;
}

export interface Kernels {
  readonly name: "native" | "typescript";
  /** n elements from src (srcDtype) into dst (dstDtype); buffers are caller-provided views (use byteOffset). */
  cast(src: Uint8Array, srcDtype: CastableDType, dst: Uint8Array, dstDtype: CastableDType, n: number): void;
  /** General row gather + column window + cast: for i in [0,rowIndex.length): dst row i = src row rowIndex[i], columns [colStart, colStart+cols), where src rows have srcRowElems elements. dst rows are dense (cols elements). Covers q/k permutation, Shard(1) column slicing and plain cast. */
  gatherRows(src: Uint8Array, srcDtype: CastableDType, srcRowElems: number, rowIndex: Int32Array, colStart: number, cols: number, dst: Uint8Array, dstDtype: CastableDType): void;
  /** FP8 block dequant: w is a dense box of rows x cols of an fp8 weight whose top-left global element is (rowStart, colStart); scaleInv is the full F32 scale matrix [ceil(R/block), scaleCols]; out = f32(f32(w)*scale[(rowStart+r)/block][(colStart+c)/block]) then cast to dstDtype (RNE). */
  dequantBlock(w: Uint8Array, wDtype: "F8_E4M3" | "F8_E5M2", rows: number, cols: number, rowStart: number, colStart: number, scaleInv: Uint8Array, scaleCols: number, block: number, dst: Uint8Array, dstDtype: CastableDType): void;
  stats(src: Uint8Array, dtype: CastableDType, n: number): Stats;
  /**
   * MXFP4 decode of a rows x cols box (numerics: E2M1[nibble] * 2^(scale - 127), low nibble first): row r's packed
   * bytes start at blocks[r * blockStride] on a 32-value group boundary, its E8M0 scales at scales[r * scaleStride];
   * the box starts `skip` (< 32) values into that first group. Returns -1, or the index r * cols + c of the first
   * value that is not finite (scale 0xFF, overflow), which callers report as an error.
   */
  mxfp4Decode(blocks: Uint8Array, scales: Uint8Array, rows: number, cols: number, skip: number, blockStride: number,
    scaleStride: number, dst: Uint8Array, dstDtype: CastableDType): number;
  /**
   * INT4 pack-quantized decode (compressed-tensors, symmetric): value = (nibble − 8) · scale, BF16 scales, one per
   * `group` values; packed bytes are the I32 words' little-endian bytes (low nibble first). Row r's values start at
   * packed[r * packedStride] on a group boundary, its scales at scales[r * scaleStride] (bytes); the box starts `skip`
   * (< group) values into the first group. F32 output is exact, BF16 one RNE rounding (reference.ts). Returns -1 or
   * the index r * cols + c of the first value that is not finite.
   */
  int4Decode(packed: Uint8Array, scales: Uint8Array, rows: number, cols: number, skip: number, group: number,
    packedStride: number, scaleStride: number, dst: Uint8Array, dstDtype: CastableDType): number;
  /**
   * MXFP4 encode of f32 values [rows, cols] (cols a multiple of 32) by OpenAI's quantizer's scale rule; groups
   * whose encoding differs from the reference's (the source checkpoint's blocks and scales of the same rows) keep
   * the reference's when it decodes to the values in `dtype`. Rules: kernels/requantize.ts.
   */
  mxfp4Encode(values: Float32Array, rows: number, cols: number, dtype: "F32" | "BF16", ref?: { blocks: Uint8Array; scales: Uint8Array }): Mxfp4Encoded;
  /** The scales alone of mxfp4Encode (the same byte for every group it encodes). */
  mxfp4Scales(values: Float32Array, rows: number, cols: number, dtype: "F32" | "BF16", ref?: { blocks: Uint8Array; scales: Uint8Array }): Uint8Array;
  /** INT4 (compressed-tensors pack-quantized, symmetric) encode with groups of `group` along cols; reference as mxfp4Encode. */
  int4Encode(values: Float32Array, rows: number, cols: number, group: number, dtype: "F32" | "BF16", ref?: { packed: Uint8Array; scale: Uint8Array }): Int4Encoded;
  /**
   * LoRA/DoRA merge into res (W's shape, not overlapping an input), bit-identical to mergeWeight's TypeScript path
   * in src/kernels/lora-merge.ts, which is the reference; only the native kernels have it. Throws on a length mismatch.
   */
  loraMerge?(W: Float32Array, out: number, inn: number, A: Float32Array, B: Float32Array, r: number, s: number,
    m: Float32Array | undefined, transposed: boolean, res: Float32Array): void;
}
