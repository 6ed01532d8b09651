// Scalar dtype conversions, bit-exact with PyTorch 2.6 CPU Tensor.to(); the § numbers below are docs/numerics.md's.
// This header is the single C/C++/CUDA definition of the cast contract: every SIMD loop (native/src) and
// every CUDA kernel (native/cuda) must reproduce these functions bit for bit. Integer arithmetic only, so the
// result never depends on the FPU mode (FTZ/DAZ) or on compiler flags.
#ifndef CKPT_CONVERT_H
#define CKPT_CONVERT_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define CKPT_HD __host__ __device__ __forceinline__
#else
#define CKPT_HD static inline
#endif

// Dtype codes shared with src/kernels/native.ts (keep in sync).
enum ckpt_dtype { CKPT_F32 = 0, CKPT_BF16 = 1, CKPT_F16 = 2, CKPT_F8_E4M3 = 3, CKPT_F8_E5M2 = 4 };

CKPT_HD int ckpt_dtype_size(int d) { return d == CKPT_F32 ? 4 : (d == CKPT_BF16 || d == CKPT_F16) ? 2 : 1; }

// ---- widening to f32 bits (§3) --------------------------------------------------------------------------

CKPT_HD uint32_t ckpt_bf16_to_f32(uint16_t h) { return (uint32_t)h << 16; }

// f16 -> f32: exact; NaN keeps its payload with the quiet bit forced (what F16C VCVTPH2PS does).
CKPT_HD uint32_t ckpt_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0x1Fu) return m ? (sign | 0x7FC00000u | (m << 13)) : (sign | 0x7F800000u);
  if (e != 0) return sign | ((e + 112u) << 23) | (m << 13);
  if (m == 0) return sign;
  // subnormal: value = m * 2^-24; normalise
  uint32_t shift = 0;
  while (!(m & 0x400u)) { m <<= 1; shift++; }
  return sign | ((113u - shift) << 23) | ((m & 0x3FFu) << 13);
}

// e4m3fn -> f32: exact; 0x7F/0xFF (the only NaNs) -> 0x7FF00000/0xFFF00000. No infinities.
CKPT_HD uint32_t ckpt_e4m3_to_f32(uint8_t b) {
  uint32_t sign = (uint32_t)(b & 0x80u) << 24;
  uint32_t e = (b >> 3) & 0xFu, m = b & 0x7u;
  if (e == 0xFu && m == 0x7u) return sign | 0x7FF00000u;
  if (e != 0) return sign | ((e + 120u) << 23) | (m << 20);
  if (m == 0) return sign;
  uint32_t shift = 0;
  while (!(m & 0x8u)) { m <<= 1; shift++; }
  return sign | ((121u - shift) << 23) | ((m & 0x7u) << 20);
}

// e5m2 -> f32: e5m2 is the high byte of an f16.
CKPT_HD uint32_t ckpt_e5m2_to_f32(uint8_t b) { return ckpt_f16_to_f32((uint16_t)((uint16_t)b << 8)); }

// ---- narrowing from f32 bits (§4, §5, §6) ----------------------------------------------------------------

// RNE of m / 2^s for m < 2^24, 1 <= s; any s >= 25 gives 0 (m is below half an ulp).
CKPT_HD uint32_t ckpt_rne_shift(uint32_t m, uint32_t s) {
  if (s >= 25u) return 0u;
  uint32_t q = m >> s, rem = m & ((1u << s) - 1u), half = 1u << (s - 1u);
  if (rem > half || (rem == half && (q & 1u))) q++;
  return q;
}

// Round-to-nearest-even bf16 of a non-NaN f32 (c10 round_to_nearest_even).
CKPT_HD uint16_t ckpt_f32_to_bf16_rne(uint32_t u) { return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16); }

// f32 -> bf16 as PyTorch's vectorized kernel: every NaN -> 0xFFFF.
CKPT_HD uint16_t ckpt_f32_to_bf16(uint32_t u) {
  return ((u & 0x7FFFFFFFu) > 0x7F800000u) ? (uint16_t)0xFFFFu : ckpt_f32_to_bf16_rne(u);
}

// (f16 | e4m3 | e5m2) -> bf16 through an exact f32: every NaN -> 0x7FC0 (c10 scalar conversion).
CKPT_HD uint16_t ckpt_f32_to_bf16_scalar_nan(uint32_t u) {
  return ((u & 0x7FFFFFFFu) > 0x7F800000u) ? (uint16_t)0x7FC0u : ckpt_f32_to_bf16_rne(u);
}

// f32 -> f16, IEEE RNE with gradual underflow; NaN -> sign | 0x7E00 | (mantissa23 >> 13) (F16C VCVTPS2PH).
CKPT_HD uint16_t ckpt_f32_to_f16(uint32_t u) {
  uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((a & 0x7FFFFFu) >> 13));
  if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);  // >= 65520 (tie goes to the even inf) or inf
  if (a >= 0x38800000u)                                       // >= 2^-14: normal
    return (uint16_t)(sign | ((a - 0x38000000u + 0xFFFu + ((a >> 13) & 1u)) >> 13));
  uint32_t e = a >> 23;
  if (e == 0) return (uint16_t)sign;  // f32 zero or subnormal (< 2^-126) -> 0
  return (uint16_t)(sign | ckpt_rne_shift((a & 0x7FFFFFu) | 0x800000u, 126u - e));
}

// f32 -> e4m3fn, RNE, no saturation: |x| > 464, inf and NaN -> 0x7F | sign.
CKPT_HD uint8_t ckpt_f32_to_e4m3(uint32_t u) {
  uint32_t sign = (u >> 24) & 0x80u, a = u & 0x7FFFFFFFu;
  if (a > 0x43E80000u) return (uint8_t)(sign | 0x7Fu);
  if (a >= 0x3C800000u)  // >= 2^-6: normal
    return (uint8_t)(sign | ((a - 0x3C000000u + 0x7FFFFu + ((a >> 20) & 1u)) >> 20));
  uint32_t e = a >> 23;
  if (e == 0) return (uint8_t)sign;
  return (uint8_t)(sign | ckpt_rne_shift((a & 0x7FFFFFu) | 0x800000u, 141u - e));
}

// f32 -> e5m2, RNE: |x| >= 61440 and inf -> inf (0x7C | sign); NaN -> 0x7F | sign.
CKPT_HD uint8_t ckpt_f32_to_e5m2(uint32_t u) {
  uint32_t sign = (u >> 24) & 0x80u, a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return (uint8_t)(sign | 0x7Fu);
  if (a >= 0x47700000u) return (uint8_t)(sign | 0x7Cu);
  if (a >= 0x38800000u)  // >= 2^-14: normal
    return (uint8_t)(sign | ((a - 0x38000000u + 0xFFFFFu + ((a >> 21) & 1u)) >> 21));
  uint32_t e = a >> 23;
  if (e == 0) return (uint8_t)sign;
  return (uint8_t)(sign | ckpt_rne_shift((a & 0x7FFFFFu) | 0x800000u, 134u - e));
}

// ---- FP8 dequant product (§7) -------------------------------------------------------------------------------

// f32(a) * f32(s) rounded once to f32 (bit patterns in and out). NaN results follow x86 MULPS, which is what
// PyTorch's CPU multiply produces: a NaN operand comes back quieted (a first), and 0 x inf gives the default NaN
// 0xFFC00000. Spelled out so that no compiler operand swap and no other FPU can change the bits.
CKPT_HD uint32_t ckpt_mul_f32(uint32_t a, uint32_t s) {
  uint32_t aa = a & 0x7FFFFFFFu, as = s & 0x7FFFFFFFu;
  if (aa > 0x7F800000u) return a | 0x00400000u;
  if (as > 0x7F800000u) return s | 0x00400000u;
  if ((aa == 0 && as == 0x7F800000u) || (aa == 0x7F800000u && as == 0)) return 0xFFC00000u;
#if defined(__CUDA_ARCH__)
  return __float_as_uint(__fmul_rn(__uint_as_float(a), __uint_as_float(s)));
#else
  float fa, fs, p;
  uint32_t r;
  memcpy(&fa, &a, 4);
  memcpy(&fs, &s, 4);
  p = fa * fs;
  memcpy(&r, &p, 4);
  return r;
#endif
}

// ---- MXFP4 decode ----------------------------------------------------------------------------------------

// f32 bits of E2M1[nibble] * 2^(scale - 127) (nibble: sign bit 3, magnitude 0, .5, 1, 1.5, 2, 3, 4, 6), exactly
// what transformers'/PyTorch's MXFP4 dequantization (LUT, then ldexp) computes, subnormal results included:
// ±inf on overflow, NaN for scale 0xFF with a zero nibble (2^128 = inf, 0 * inf), ±inf for other nibbles.
// Same function as mxfp4ToF32Bits in src/kernels/reference.ts.
CKPT_HD uint32_t ckpt_mxfp4_to_f32(uint32_t nibble, uint32_t scale) {
  uint32_t sign = (nibble & 8u) << 28, m = nibble & 7u;
  if (scale == 0xFFu) return m == 0 ? 0x7FC00000u : (sign | 0x7F800000u);
  if (m == 0) return sign;
  // magnitude m: unbiased exponent {-1, 0, 0, 1, 1, 2, 2} for m = 1..7, half mantissa bit for m = 3, 5, 7
  int32_t e = m == 1 ? -1 : (int32_t)((m - 2u) >> 1);
  uint32_t half = (m >= 3u && (m & 1u)) ? 1u : 0u;
  int32_t biased = e + (int32_t)scale;
  if (biased >= 255) return sign | 0x7F800000u;
  if (biased >= 1) return sign | ((uint32_t)biased << 23) | (half << 22);
  return sign | ((2u + half) << (uint32_t)(biased + 21));  // subnormal: biased is 0 or -1
}

// ---- INT4 pack-quantized decode ----------------------------------------------------------------------------

// f32 bits of (nibble - 8) * bf16 scale. Exact: |q| <= 8 has at most 3 significant bits and a bf16 scale 8, so the
// product has at most 11 and is a multiple of 2^-133, which f32 holds unless |q * s| >= 2^128 (then +-inf, as the
// multiply gives; every NaN is 0x7FC00000). Same function as int4ToF32Bits in src/kernels/reference.ts (whose comment has the proof).
CKPT_HD uint32_t ckpt_int4_to_f32(uint32_t nibble, uint16_t scale) {
  uint32_t su = (uint32_t)scale << 16, r;
  float s, q = (float)((int32_t)(nibble & 15u) - 8), p;
  memcpy(&s, &su, 4);
  p = q * s;
  memcpy(&r, &p, 4);
  return (r & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC00000u : r;  // one NaN (NaN scale, 0 * inf): an error either way
}

// ---- generic element conversion ------------------------------------------------------------------------

CKPT_HD uint32_t ckpt_load_f32(int d, const uint8_t* p) {
  switch (d) {
    case CKPT_F32: return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    case CKPT_BF16: return ckpt_bf16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
    case CKPT_F16: return ckpt_f16_to_f32((uint16_t)(p[0] | (p[1] << 8)));
    case CKPT_F8_E4M3: return ckpt_e4m3_to_f32(p[0]);
    default: return ckpt_e5m2_to_f32(p[0]);
  }
}

// Narrow f32 bits u (widened from srcDtype) into dstDtype at p (little endian). The source dtype only matters
// for the bf16 NaN encoding (§6).
CKPT_HD void ckpt_store_from_f32(int srcDtype, int dstDtype, uint32_t u, uint8_t* p) {
  switch (dstDtype) {
    case CKPT_F32: p[0] = (uint8_t)u; p[1] = (uint8_t)(u >> 8); p[2] = (uint8_t)(u >> 16); p[3] = (uint8_t)(u >> 24); return;
    case CKPT_BF16: {
      uint16_t h = srcDtype == CKPT_F32 ? ckpt_f32_to_bf16(u) : ckpt_f32_to_bf16_scalar_nan(u);
      p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); return;
    }
    case CKPT_F16: { uint16_t h = ckpt_f32_to_f16(u); p[0] = (uint8_t)h; p[1] = (uint8_t)(h >> 8); return; }
    case CKPT_F8_E4M3: p[0] = ckpt_f32_to_e4m3(u); return;
    default: p[0] = ckpt_f32_to_e5m2(u); return;
  }
}

// One element srcDtype -> dstDtype. Identity is a byte copy (NaN payloads kept).
CKPT_HD void ckpt_convert_one(int srcDtype, const uint8_t* s, int dstDtype, uint8_t* d) {
  if (srcDtype == dstDtype) {
    int n = ckpt_dtype_size(srcDtype);
    for (int i = 0; i < n; i++) d[i] = s[i];
    return;
  }
  ckpt_store_from_f32(srcDtype, dstDtype, ckpt_load_f32(srcDtype, s), d);
}

#endif  // CKPT_CONVERT_H
