// Pure-TypeScript reference kernels: the executable form of docs/numerics.md, bit-exact with PyTorch 2.6
// CPU Tensor.to() and with native/include/ckpt_convert.h (same integer algorithms, function for function).
// Also the fallback when the native addon is not built, so the loops avoid per-element allocation.

import type { CastableDType } from "../dtypes.js";

export const CAST_SIZE: Record<CastableDType, number> = { F32: 4, BF16: 2, F16: 2, F8_E4M3: 1, F8_E5M2: 1 };

// ---- scalar conversions on bit patterns (all results are unsigned integers) ----------------------------

export function bf16ToF32Bits(h: number): number {
  return (h << 16) >>> 0;
}

/** f16 -> f32 exact; NaN: sign | 0x7FC00000 | (mantissa10 << 13). */
export function f16ToF32Bits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const e = (h >>> 10) & 0x1f;
  let m = h & 0x3ff;
  if (e === 0x1f) return (m ? sign | 0x7fc00000 | (m << 13) : sign | 0x7f800000) >>> 0;
  if (e !== 0) return (sign | ((e + 112) << 23) | (m << 13)) >>> 0;
  if (m === 0) return sign >>> 0;
  let shift = 0;
  while (!(m & 0x400)) { m <<= 1; shift++; }
  return (sign | ((113 - shift) << 23) | ((m & 0x3ff) << 13)) >>> 0;
}

/** e4m3fn -> f32 exact; 0x7F / 0xFF -> 0x7FF00000 / 0xFFF00000. */
export function e4m3ToF32Bits(b: number): number {
  const sign = (b & 0x80) << 24;
  const e = (b >>> 3) & 0xf;
  let m = b & 7;
  if (e === 0xf && m === 7) return (sign | 0x7ff00000) >>> 0;
  if (e !== 0) return (sign | ((e + 120) << 23) | (m << 20)) >>> 0;
  if (m === 0) return sign >>> 0;
  let shift = 0;
  while (!(m & 8)) { m <<= 1; shift++; }
  return (sign | ((121 - shift) << 23) | ((m & 7) << 20)) >>> 0;
}

/** e5m2 -> f32: the high byte of an f16. */
export function e5m2ToF32Bits(b: number): number {
  return f16ToF32Bits((b << 8) & 0xffff);
}

/** RNE of m / 2^s for m < 2^24, s >= 1. */
function rneShift(m: number, s: number): number {
  if (s >= 25) return 0;
  let q = m >>> s;
  const rem = m & ((1 << s) - 1);
  const half = 1 << (s - 1);
  if (rem > half || (rem === half && q & 1)) q++;
  return q;
}

function bf16Rne(u: number): number {
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** f32 -> bf16 as PyTorch's vectorized kernel does: every NaN becomes 0xFFFF. */
export function f32ToBf16Bits(u: number): number {
  return (u & 0x7fffffff) > 0x7f800000 ? 0xffff : bf16Rne(u >>> 0);
}

/** (f16 | f8) -> bf16 through an exact f32: every NaN becomes 0x7FC0. */
export function f32ToBf16BitsScalarNan(u: number): number {
  return (u & 0x7fffffff) > 0x7f800000 ? 0x7fc0 : bf16Rne(u >>> 0);
}

/** f32 -> f16, IEEE RNE with gradual underflow; NaN -> sign | 0x7E00 | (mantissa23 >> 13). */
export function f32ToF16Bits(u: number): number {
  const sign = (u >>> 16) & 0x8000;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00 | ((a & 0x7fffff) >>> 13);
  if (a >= 0x477ff000) return sign | 0x7c00;
  if (a >= 0x38800000) return sign | ((a - 0x38000000 + 0xfff + ((a >>> 13) & 1)) >>> 13);
  const e = a >>> 23;
  if (e === 0) return sign;
  return sign | rneShift((a & 0x7fffff) | 0x800000, 126 - e);
}

/** f32 -> e4m3fn, RNE, no saturation: |x| > 464, inf and NaN -> 0x7F | sign. */
export function f32ToE4m3Bits(u: number): number {
  const sign = (u >>> 24) & 0x80;
  const a = u & 0x7fffffff;
  if (a > 0x43e80000) return sign | 0x7f;
  if (a >= 0x3c800000) return sign | ((a - 0x3c000000 + 0x7ffff + ((a >>> 20) & 1)) >>> 20);
  const e = a >>> 23;
  if (e === 0) return sign;
  return sign | rneShift((a & 0x7fffff) | 0x800000, 141 - e);
}

/** f32 -> e5m2, RNE: |x| >= 61440 and inf -> ±inf; NaN -> 0x7F | sign. */
export function f32ToE5m2Bits(u: number): number {
  const sign = (u >>> 24) & 0x80;
  const a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7f;
  if (a >= 0x47700000) return sign | 0x7c;
  if (a >= 0x38800000) return sign | ((a - 0x38000000 + 0xfffff + ((a >>> 21) & 1)) >>> 21);
  const e = a >>> 23;
  if (e === 0) return sign;
  return sign | rneShift((a & 0x7fffff) | 0x800000, 134 - e);
}

// ---- lookup tables for the narrow source dtypes (built on first use) ------------------------------------

let f16Lut: Uint32Array | undefined;
let e4m3Lut: Uint32Array | undefined;
let e5m2Lut: Uint32Array | undefined;

function widenLut(d: "F16" | "F8_E4M3" | "F8_E5M2"): Uint32Array {
  if (d === "F16") {
    if (!f16Lut) { f16Lut = new Uint32Array(65536); for (let i = 0; i < 65536; i++) f16Lut[i] = f16ToF32Bits(i); }
    return f16Lut;
  }
  if (d === "F8_E4M3") {
    if (!e4m3Lut) { e4m3Lut = new Uint32Array(256); for (let i = 0; i < 256; i++) e4m3Lut[i] = e4m3ToF32Bits(i); }
    return e4m3Lut;
  }
  if (!e5m2Lut) { e5m2Lut = new Uint32Array(256); for (let i = 0; i < 256; i++) e5m2Lut[i] = e5m2ToF32Bits(i); }
  return e5m2Lut;
}

// ---- typed views over caller buffers (copy only when misaligned) ----------------------------------------

function elemsView(buf: Uint8Array, d: CastableDType, n: number): Uint8Array | Uint16Array | Uint32Array {
  const size = CAST_SIZE[d];
  const bytes = n * size;
  if (buf.byteLength < bytes) throw new RangeError(`buffer of ${buf.byteLength} bytes is too small for ${n} ${d} elements`);
  if (size === 1) return buf.subarray(0, n);
  if (buf.byteOffset % size === 0) return size === 2 ? new Uint16Array(buf.buffer, buf.byteOffset, n) : new Uint32Array(buf.buffer, buf.byteOffset, n);
  const copy = new Uint8Array(bytes);
  copy.set(buf.subarray(0, bytes));
  return size === 2 ? new Uint16Array(copy.buffer, 0, n) : new Uint32Array(copy.buffer, 0, n);
}

/** Writable view; when dst is misaligned the caller must call flush() after filling it. */
function outView(buf: Uint8Array, d: CastableDType, n: number): { v: Uint8Array | Uint16Array | Uint32Array; flush(): void } {
  const size = CAST_SIZE[d];
  const bytes = n * size;
  if (buf.byteLength < bytes) throw new RangeError(`buffer of ${buf.byteLength} bytes is too small for ${n} ${d} elements`);
  if (size === 1) return { v: buf.subarray(0, n), flush() {} };
  if (buf.byteOffset % size === 0) {
    const v = size === 2 ? new Uint16Array(buf.buffer, buf.byteOffset, n) : new Uint32Array(buf.buffer, buf.byteOffset, n);
    return { v, flush() {} };
  }
  const tmp = new Uint8Array(bytes);
  const v = size === 2 ? new Uint16Array(tmp.buffer, 0, n) : new Uint32Array(tmp.buffer, 0, n);
  return { v, flush: () => buf.set(tmp) };
}

function narrowFn(src: CastableDType, dst: CastableDType): (u: number) => number {
  switch (dst) {
    case "BF16": return src === "F32" ? f32ToBf16Bits : f32ToBf16BitsScalarNan;
    case "F16": return f32ToF16Bits;
    case "F8_E4M3": return f32ToE4m3Bits;
    case "F8_E5M2": return f32ToE5m2Bits;
    case "F32": return (u) => u >>> 0;
  }
}

/** Cast n elements; src and dst are caller views (byteOffset respected). */
export function castRef(src: Uint8Array, srcDtype: CastableDType, dst: Uint8Array, dstDtype: CastableDType, n: number): void {
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`invalid element count ${n}`);
  if (srcDtype === dstDtype) {
    const bytes = n * CAST_SIZE[srcDtype];
    if (src.byteLength < bytes || dst.byteLength < bytes) throw new RangeError(`buffers too small for ${n} ${srcDtype} elements`);
    dst.set(src.subarray(0, bytes));
    return;
  }
  const s = elemsView(src, srcDtype, n);
  const o = outView(dst, dstDtype, n);
  const d = o.v;
  if (srcDtype === "BF16" && dstDtype === "F32") {
    for (let i = 0; i < n; i++) d[i] = (s[i]! << 16) >>> 0;
  } else if (srcDtype === "F32" && dstDtype === "BF16") {
    for (let i = 0; i < n; i++) {
      const u = s[i]!;
      d[i] = (u & 0x7fffffff) > 0x7f800000 ? 0xffff : ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
    }
  } else {
    const narrow = narrowFn(srcDtype, dstDtype);
    if (srcDtype === "F32") {
      for (let i = 0; i < n; i++) d[i] = narrow(s[i]!);
    } else if (srcDtype === "BF16") {
      for (let i = 0; i < n; i++) d[i] = narrow((s[i]! << 16) >>> 0);
    } else {
      const lut = widenLut(srcDtype);
      for (let i = 0; i < n; i++) d[i] = narrow(lut[s[i]!]!);
    }
  }
  o.flush();
}

export function gatherRowsRef(
  src: Uint8Array, srcDtype: CastableDType, srcRowElems: number, rowIndex: Int32Array, colStart: number, cols: number,
  dst: Uint8Array, dstDtype: CastableDType,
): void {
  const ss = CAST_SIZE[srcDtype], ds = CAST_SIZE[dstDtype];
  if (colStart < 0 || cols < 0 || colStart + cols > srcRowElems) {
    throw new RangeError(`column window [${colStart}, ${colStart + cols}) outside rows of ${srcRowElems} elements`);
  }
  if (dst.byteLength < rowIndex.length * cols * ds) throw new RangeError(`destination too small for ${rowIndex.length}x${cols} ${dstDtype}`);
  const srcRows = Math.floor(src.byteLength / (srcRowElems * ss));
  for (let i = 0; i < rowIndex.length; i++) {
    const r = rowIndex[i]!;
    if (r < 0 || r >= srcRows) throw new RangeError(`row index ${r} outside source of ${srcRows} rows`);
    const off = (r * srcRowElems + colStart) * ss;
    castRef(src.subarray(off, off + cols * ss), srcDtype, dst.subarray(i * cols * ds, (i + 1) * cols * ds), dstDtype, cols);
  }
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);
export function bitsToF32(u: number): number { u32Scratch[0] = u; return f32Scratch[0]!; }
export function f32ToBits(x: number): number { f32Scratch[0] = x; return u32Scratch[0]!; }

/**
 * f32(a) * f32(s) rounded once to f32, on bit patterns. NaN results follow x86 MULPS (PyTorch's CPU multiply):
 * a NaN operand comes back quieted (a first), 0 x inf gives the default NaN 0xFFC00000. Same as ckpt_mul_f32.
 */
export function mulF32Bits(a: number, s: number): number {
  const aa = a & 0x7fffffff, as = s & 0x7fffffff;
  if (aa > 0x7f800000) return (a | 0x00400000) >>> 0;
  if (as > 0x7f800000) return (s | 0x00400000) >>> 0;
  if ((aa === 0 && as === 0x7f800000) || (aa === 0x7f800000 && as === 0)) return 0xffc00000;
  return f32ToBits(Math.fround(bitsToF32(a) * bitsToF32(s)));
}

export function dequantBlockRef(
  w: Uint8Array, wDtype: "F8_E4M3" | "F8_E5M2", rows: number, cols: number, rowStart: number, colStart: number,
  scaleInv: Uint8Array, scaleCols: number, block: number, dst: Uint8Array, dstDtype: CastableDType,
): void {
  if (w.byteLength < rows * cols) throw new RangeError(`fp8 buffer too small for ${rows}x${cols}`);
  if (!(block > 0)) throw new RangeError(`invalid block size ${block}`);
  const lastScale = (Math.floor((rowStart + rows - 1) / block) * scaleCols + Math.floor((colStart + cols - 1) / block) + 1) * 4;
  if (rows > 0 && cols > 0 && (scaleInv.byteLength < lastScale || Math.floor((colStart + cols - 1) / block) >= scaleCols)) {
    throw new RangeError(`scale_inv too small for block (${rowStart}+${rows}, ${colStart}+${cols}) with block ${block}`);
  }
  const scales = elemsView(scaleInv, "F32", scaleInv.byteLength >>> 2) as Uint32Array;
  const lut = widenLut(wDtype);
  const row = new Uint32Array(cols);
  const rowBytes = new Uint8Array(row.buffer);
  const ds = CAST_SIZE[dstDtype];
  for (let r = 0; r < rows; r++) {
    const sr = Math.floor((rowStart + r) / block) * scaleCols;
    for (let c = 0; c < cols; c++) {
      row[c] = mulF32Bits(lut[w[r * cols + c]!]!, scales[sr + Math.floor((colStart + c) / block)]!);
    }
    castRef(rowBytes, "F32", dst.subarray(r * cols * ds, (r + 1) * cols * ds), dstDtype, cols);
  }
}

export interface RefStats {
  count: number; min: number; max: number; sum: number; sumSq: number; nan: number; inf: number;
  f16Overflow: number; f16Underflow: number; zeros: number;
}

/** Statistics over finite values (min/max NaN when none); NaN and inf are counted, never summed. */
export function statsRef(src: Uint8Array, dtype: CastableDType, n: number): RefStats {
  const s = elemsView(src, dtype, n);
  const widen: (x: number) => number = dtype === "F32" ? (x) => x : dtype === "BF16" ? bf16ToF32Bits : ((l) => (x: number) => l[x]!)(widenLut(dtype));
  let min = Infinity, max = -Infinity, sum = 0, sumSq = 0, nan = 0, inf = 0, ovf = 0, unf = 0, zeros = 0, finite = 0;
  for (let i = 0; i < n; i++) {
    const u = widen(s[i]!);
    const a = u & 0x7fffffff;
    if (a >= 0x7f800000) { if (a === 0x7f800000) inf++; else nan++; continue; }
    finite++;
    if (a === 0) { zeros++; } else {
      if (a >= 0x477ff000) ovf++;
      else if (a <= 0x33000000) unf++;
    }
    const x = bitsToF32(u);
    if (x < min) min = x;
    if (x > max) max = x;
    sum += x;
    sumSq += x * x;
  }
  if (finite === 0) { min = NaN; max = NaN; }
  return { count: n, min, max, sum, sumSq, nan, inf, f16Overflow: ovf, f16Underflow: unf, zeros };
}

// ---- MXFP4 (OCP microscaling FP4: E2M1 values, one E8M0 scale per 32) ------------------------------------

/** E2M1 magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6 as (unbiased exponent, has-half-mantissa-bit); index 0 is zero. */
const E2M1_EXP = [0, -1, 0, 0, 1, 1, 2, 2];
const E2M1_HALF = [0, 0, 0, 1, 0, 1, 0, 1];

/**
 * f32 bits of E2M1[nibble] · 2^(scale − 127), the value transformers' and PyTorch's MXFP4 dequantization compute
 * (LUT value, then ldexp): exact for every finite result, subnormals included (integer arithmetic only). Results
 * that do not fit are what ldexp gives: ±inf on overflow, NaN for scale 0xFF (E8M0 NaN; 2^128 = inf, 0 · inf =
 * NaN for a zero nibble). Callers treat every non-finite result as an error.
 */
export function mxfp4ToF32Bits(nibble: number, scale: number): number {
  const sign = (nibble & 8) << 28;
  const m = nibble & 7;
  if (scale === 0xff) return m === 0 ? 0x7fc00000 : (sign | 0x7f800000) >>> 0;
  if (m === 0) return sign >>> 0;
  const biased = E2M1_EXP[m]! + scale; // f32 biased exponent of the result
  if (biased >= 255) return (sign | 0x7f800000) >>> 0;
  if (biased >= 1) return (sign | (biased << 23) | (E2M1_HALF[m]! << 22)) >>> 0;
  // subnormal (biased 0 or −1): value = (2 + half)/2 · 2^(biased − 127) = (2 + half) · 2^(biased + 21) ulps of 2^−149
  return (sign | ((2 + E2M1_HALF[m]!) << (biased + 21))) >>> 0;
}

let mxfp4Lut: Uint32Array | undefined;
/** [scale · 16 + nibble] → f32 bits, all 4096 pairs. */
export function mxfp4Table(): Uint32Array {
  if (!mxfp4Lut) {
    mxfp4Lut = new Uint32Array(256 * 16);
    for (let s = 0; s < 256; s++) for (let n = 0; n < 16; n++) mxfp4Lut[s * 16 + n] = mxfp4ToF32Bits(n, s);
  }
  return mxfp4Lut;
}

/**
 * MXFP4 decode of a rows × cols box: row r's packed bytes start at blocks[r·blockStride] (two values per byte, low
 * nibble first, aligned to a 32-value group), its E8M0 scales at scales[r·scaleStride] (one per group); the box
 * starts `skip` values (0–31) into the first group. Writes rows × cols values of dstDtype (f32 bits, then the
 * project's f32 narrowing; bf16 is exact). Returns −1, or the index (r·cols + c) of the first value that is not
 * finite (NaN scale or overflow), which the caller must report.
 */
export function mxfp4DecodeRef(
  blocks: Uint8Array, scales: Uint8Array, rows: number, cols: number, skip: number, blockStride: number, scaleStride: number,
  dst: Uint8Array, dstDtype: CastableDType,
): number {
  if (!(skip >= 0 && skip < 32)) throw new RangeError(`skip ${skip} outside [0, 32)`);
  const groups = Math.ceil((skip + cols) / 32);
  if (rows > 0 && cols > 0) {
    if (blocks.byteLength < (rows - 1) * blockStride + groups * 16) throw new RangeError(`blocks too small for ${rows}x${cols} (skip ${skip})`);
    if (scales.byteLength < (rows - 1) * scaleStride + groups) throw new RangeError(`scales too small for ${rows}x${cols} (skip ${skip})`);
  }
  const ds = CAST_SIZE[dstDtype];
  if (dst.byteLength < rows * cols * ds) throw new RangeError(`destination too small for ${rows}x${cols} ${dstDtype}`);
  const lut = mxfp4Table();
  const row = new Uint32Array(cols);
  const rowBytes = new Uint8Array(row.buffer);
  let bad = -1;
  for (let r = 0; r < rows; r++) {
    const b0 = r * blockStride, s0 = r * scaleStride;
    for (let c = 0; c < cols; c++) {
      const v = skip + c;
      const byte = blocks[b0 + (v >>> 1)]!;
      const u = lut[scales[s0 + (v >>> 5)]! * 16 + ((v & 1) ? byte >>> 4 : byte & 15)]!;
      if (bad < 0 && (u & 0x7f800000) === 0x7f800000) bad = r * cols + c;
      row[c] = u;
    }
    castRef(rowBytes, "F32", dst.subarray(r * cols * ds, (r + 1) * cols * ds), dstDtype, cols);
  }
  return bad;
}

// ---- INT4 pack-quantized (compressed-tensors `pack-quantized`, num_bits 4, symmetric, group strategy) ---------

/**
 * Exactness: the decoded value is q · s with q = nibble − 8 ∈ [−8, 7] and s a BF16 scale. |q| has at most
 * 3 significant bits and s at most 8, so q · s has at most 11 significant bits and is a multiple of s's ulp ≥ 2⁻¹³³:
 * f32 (24 bits, spacing ≥ 2⁻¹⁴⁹) holds it exactly whenever |q · s| < 2¹²⁸, i.e. the f32 product is the exact value
 * and F32 output is exact. BF16 (8 bits) is NOT exact in general: q = 7, s = 0x3F81 (1 + 2⁻⁷) gives
 * 7.0546875 = 111.0000111₂ (10 significant bits), which BF16 rounds to 7.0625. It is exact for q ∈ {0, ±1, ±2, ±4,
 * ±8} and whenever s's low mantissa bits leave room. A BF16 output is therefore one RNE rounding of the exact
 * product, which is what compressed-tensors' decompression computes (`x_q.to(scale.dtype) * scale` in BF16:
 * PyTorch multiplies in f32, exact here, then rounds to BF16 once). So F32 is the exact value, BF16 is bit-identical
 * to compressed-tensors. Non-finite results (inf/NaN scales, |q · s| ≥ 2¹²⁸) are reported, never written.
 */
export function int4ToF32Bits(nibble: number, scaleBf16: number): number {
  const p = Math.fround(((nibble & 15) - 8) * bitsToF32(bf16ToF32Bits(scaleBf16)));
  return p !== p ? 0x7fc00000 : f32ToBits(p); // one NaN encoding (NaN scale, 0 · inf): an error either way
}

/**
 * INT4 decode of a rows × cols box: row r's packed values start at packed[r·packedStride] (the little-endian bytes of
 * the I32 words: value v in byte v >> 1, low nibble first, i.e. word v >> 3 bits 4·(v & 7)), on a group boundary;
 * its BF16 scales start at scales[r·scaleStride] (bytes, one scale per `group` values); the box starts `skip`
 * (< group) values into that first group. Writes rows × cols values of dstDtype (exact f32, then the project's f32
 * narrowing). Returns −1, or the index r·cols + c of the first value that is not finite.
 */
export function int4DecodeRef(
  packed: Uint8Array, scales: Uint8Array, rows: number, cols: number, skip: number, group: number, packedStride: number,
  scaleStride: number, dst: Uint8Array, dstDtype: CastableDType,
): number {
  if (!(Number.isInteger(group) && group > 0 && group % 2 === 0)) throw new RangeError(`group size ${group} must be a positive even integer`);
  if (!(skip >= 0 && skip < group)) throw new RangeError(`skip ${skip} outside [0, ${group})`);
  const groups = Math.ceil((skip + cols) / group);
  if (rows > 0 && cols > 0) {
    if (packed.byteLength < (rows - 1) * packedStride + Math.ceil((skip + cols) / 2)) throw new RangeError(`packed too small for ${rows}x${cols} (skip ${skip})`);
    if (scales.byteLength < (rows - 1) * scaleStride + groups * 2) throw new RangeError(`scales too small for ${rows}x${cols} (skip ${skip})`);
  }
  const ds = CAST_SIZE[dstDtype];
  if (dst.byteLength < rows * cols * ds) throw new RangeError(`destination too small for ${rows}x${cols} ${dstDtype}`);
  const row = new Uint32Array(cols);
  const rowBytes = new Uint8Array(row.buffer);
  let bad = -1;
  for (let r = 0; r < rows; r++) {
    const p0 = r * packedStride, s0 = r * scaleStride;
    for (let c = 0; c < cols; c++) {
      const v = skip + c;
      const byte = packed[p0 + (v >>> 1)]!;
      const g = s0 + 2 * Math.floor(v / group);
      const u = int4ToF32Bits(v & 1 ? byte >>> 4 : byte & 15, scales[g]! | (scales[g + 1]! << 8));
      if (bad < 0 && (u & 0x7f800000) === 0x7f800000) bad = r * cols + c;
      row[c] = u;
    }
    castRef(rowBytes, "F32", dst.subarray(r * cols * ds, (r + 1) * cols * ds), dstDtype, cols);
  }
  return bad;
}
