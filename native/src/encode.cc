// Requantization encoders (encode.h), byte-identical to src/kernels/requantize.ts. Every test the TypeScript
// encoder makes in f64 is made here in double too, on the same exact quantities, so the two agree on every input
// (NaN, ±inf, ±0, f32 subnormals included): products of an f32 value by a power of two, and of a BF16 scale by an
// integer in [-8, 8], are exact in double; an f32 amax / 6 or / k is rounded once, as in JavaScript.
#include "encode.h"

#include <string.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ckpt_convert.h"

namespace ckpt {
namespace {

inline uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

inline float f32_of(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t u;
  memcpy(&u, p, 4);
  return u;
}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t u;
  memcpy(&u, p, 2);
  return u;
}

// roundTo: a double (an exact product) as the output dtype writes it, as f32 bits: F32 one RNE rounding (overflow
// to ±inf), BF16 then RNE to BF16 of a finite f32.
inline uint32_t round_to(double x, int dtype) {
  const uint32_t u = bits_of((float)x);
  if (dtype == CKPT_F32 || (u & 0x7f800000u) == 0x7f800000u) return u;
  return ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) << 16;
}

// `same` of requantize.ts (=== that tells -0 from +0): equal bits, and not NaN.
inline bool same_value(uint32_t decoded, float value) {
  return decoded == bits_of(value) && (decoded & 0x7fffffffu) <= 0x7f800000u;
}

// ---- MXFP4 ----

const double kE2M1[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
// E2M1 code by twice the magnitude (0, 1, 2, 3, 4, 6, 8, 12 -> 0 … 7), -1 for the others.
const int8_t kCodeOfDouble[13] = {0, 1, 2, 3, 4, -1, 5, -1, 6, -1, -1, -1, 7};

// mxfp4ScaleByte: amax/6 (f64) rounded up to a power of two, as a biased exponent >= 1; 0 for a group of ±0 only
// or one holding a NaN (Math.max gives NaN; its nibbles refuse it); -1 for an infinite amax or a byte past 254.
inline int mxfp4_scale_byte(const float* v) {
  uint32_t m = 0;  // |x| bits order like |x| for non-NaN x; any NaN is above +inf
  for (int i = 0; i < 32; i++) {
    const uint32_t a = bits_of(v[i]) & 0x7fffffffu;
    m = a > m ? a : m;
  }
  if (m == 0 || m > 0x7f800000u) return 0;
  if (m == 0x7f800000u) return -1;
  const double x = (double)f32_of(m) / 6.0;  // a normal double: amax >= 2^-149
  uint64_t b;
  memcpy(&b, &x, 8);
  const int e = (int)((b >> 52) & 0x7ff) - 1023 + ((b & 0xfffffffffffffull) != 0 ? 1 : 0);
  const int byte = e + 127 < 1 ? 1 : e + 127;
  return byte > 254 ? -1 : byte;
}

// e2m1Nibble of v · 2^(127 − byte), given inv2 = 2^(128 − byte) (twice the factor): -1 when not an E2M1 value.
inline int e2m1_nibble(float v, double inv2) {
  const double d = std::fabs((double)v) * inv2;
  if (!(d <= 12.0)) return -1;
  const int i = (int)d;
  if ((double)i != d) return -1;
  const int c = kCodeOfDouble[i];
  if (c < 0) return -1;
  return std::signbit(v) ? c | 8 : c;
}

// The 16 bytes of a group at scale `byte`, pair by pair; false at the first pair that is not exact (the pairs
// before it are written, as the TypeScript encoder writes them).
inline bool mxfp4_group(const float* v, int byte, uint8_t* blk) {
  const double inv2 = std::ldexp(1.0, 128 - byte);
  for (int i = 0; i < 32; i += 2) {
    const int lo = e2m1_nibble(v[i], inv2), hi = e2m1_nibble(v[i + 1], inv2);
    if (lo < 0 || hi < 0) return false;
    blk[i >> 1] = (uint8_t)(lo | (hi << 4));
  }
  return true;
}

// mxfp4GroupDecodesTo: whether 16 bytes at scale s decode to the 32 values in `dtype`.
bool mxfp4_decodes_to(const uint8_t* blk, uint8_t s, const float* v, int dtype) {
  if (s == 255) return false;
  const double sc = std::ldexp(1.0, (int)s - 127);
  for (int i = 0; i < 32; i++) {
    const int nib = (blk[i >> 1] >> (4 * (i & 1))) & 15;
    double x = kE2M1[nib & 7] * sc;
    if (nib & 8) x = -x;
    if (!same_value(round_to(x, dtype), v[i])) return false;
  }
  return true;
}

int64_t first_set(const uint8_t* mask, size_t n) {
  const void* p = memchr(mask, 1, n);
  return p ? (int64_t)((const uint8_t*)p - mask) : -1;
}

// ---- INT4 ----

const uint16_t kBf16Eps = 0x3c00;

// The exact (q, s) of one group of n values, TypeScript's search order: BF16 bits of s, or -1 (q then undefined).
int int4_group(const float* v, size_t n, int8_t* q) {
  float amax = 0;
  size_t at = 0;
  bool refused = false;
  for (size_t i = 0; i < n; i++) {
    const float a = std::fabs(v[i]);
    if (a > amax) amax = a, at = i;  // first index of the largest |x|; NaN never compares greater
    const uint32_t u = bits_of(v[i]);
    // q · s > 0 never makes -0; a NaN has no q (and must not pass as an all-zero group)
    if (u == 0x80000000u || (u & 0x7fffffffu) > 0x7f800000u) refused = true;
  }
  if (refused) return -1;
  if (amax == 0) {
    memset(q, 0, n);
    return kBf16Eps;
  }
  if (!std::isfinite(amax)) return -1;
  const bool neg = v[at] < 0;
  for (int k = neg ? 8 : 7; k >= 1; k--) {
    const double s = (double)amax / k;
    const float sf = (float)s;
    if ((double)sf != s) continue;  // not an f32
    const uint32_t u = bits_of(sf);
    if ((u & 0xffffu) != 0 || !(s > 0)) continue;  // not a BF16
    // x / s an integer in [-8, 7] with x = fround(q · s) is x == q · s exactly (both sides exact in double), and
    // then round(x · (1/s)) is that q (relative error 2^-53 of q, |q| <= 8).
    const double rs = 1.0 / s;
    const double round_c = 6755399441055744.0;  // 1.5 · 2^52: (y + c) − c rounds y to an integer (|y| < 2^51)
    bool ok = true;
    for (size_t i = 0; i < n; i++) {
      const double x = v[i];
      const double qd = (x * rs + round_c) - round_c;
      if (!(qd >= -8 && qd <= 7) || qd * s != x) {
        ok = false;
        break;
      }
      q[i] = (int8_t)qd;
    }
    if (ok) return (int)(u >> 16);
  }
  return -1;
}

// int4GroupDecodesTo: whether group g of row r of the reference decodes to the values in `dtype`.
bool int4_decodes_to(const uint8_t* ref_packed, uint16_t sbits, size_t r, size_t g, size_t cols, size_t group,
                     size_t words, const float* values, int dtype) {
  const double sc = f32_of((uint32_t)sbits << 16);
  const size_t c1 = std::min(cols, (g + 1) * group);
  for (size_t c = g * group; c < c1; c++) {
    const uint32_t w = load_u32(ref_packed + 4 * (r * words + (c >> 3)));
    const int q = (int)((w >> (4 * (c & 7))) & 15u) - 8;
    if (!same_value(round_to(q * sc, dtype), values[r * cols + c])) return false;
  }
  return true;
}

}  // namespace

EncodeCounts mxfp4_encode(const float* values, size_t rows, size_t cols, int values_dtype, const uint8_t* ref_blocks,
                          const uint8_t* ref_scales, uint8_t* blocks, uint8_t* scales, uint8_t* bad_mask) {
  const size_t groups = rows * (cols / 32);
  memset(blocks, 0, groups * 16);
  memset(scales, 0, groups);
  memset(bad_mask, 0, groups);
  EncodeCounts n = {0, -1, 0};
  for (size_t g = 0; g < groups; g++) {
    const float* v = values + g * 32;
    const int byte = mxfp4_scale_byte(v);
    if (byte >= 0) scales[g] = (uint8_t)byte;
    if (byte < 0 || !mxfp4_group(v, byte, blocks + g * 16)) {
      bad_mask[g] = 1;
      n.bad++;
    }
  }
  if (ref_blocks && ref_scales) {
    for (size_t g = 0; g < groups; g++) {
      const bool differs = bad_mask[g] || ref_scales[g] != scales[g] || memcmp(ref_blocks + g * 16, blocks + g * 16, 16) != 0;
      if (differs && mxfp4_decodes_to(ref_blocks + g * 16, ref_scales[g], values + g * 32, values_dtype)) {
        memcpy(blocks + g * 16, ref_blocks + g * 16, 16);
        scales[g] = ref_scales[g];
        if (bad_mask[g]) bad_mask[g] = 0, n.bad--;
        n.adopted++;
      }
    }
  }
  n.firstBad = first_set(bad_mask, groups);
  return n;
}

void mxfp4_scales(const float* values, size_t rows, size_t cols, int values_dtype, const uint8_t* ref_blocks,
                  const uint8_t* ref_scales, uint8_t* scales) {
  const size_t groups = rows * (cols / 32);
  const bool ref = ref_blocks && ref_scales;
  for (size_t g = 0; g < groups; g++) {
    const int byte = mxfp4_scale_byte(values + g * 32);
    if (ref && ref_scales[g] != byte && mxfp4_decodes_to(ref_blocks + g * 16, ref_scales[g], values + g * 32, values_dtype))
      scales[g] = ref_scales[g];
    else
      scales[g] = (uint8_t)(byte < 0 ? 0 : byte);
  }
}

EncodeCounts int4_encode(const float* values, size_t rows, size_t cols, size_t group, int values_dtype,
                         const uint8_t* ref_packed, const uint8_t* ref_scales, uint32_t* packed, uint16_t* scales,
                         uint8_t* bad_mask) {
  const size_t words = (cols + 7) / 8, S = (cols + group - 1) / group;
  memset(packed, 0, rows * words * 4);
  memset(scales, 0, rows * S * 2);
  memset(bad_mask, 0, rows * S);
  std::vector<int8_t> q(group);
  EncodeCounts n = {0, -1, 0};
  for (size_t r = 0; r < rows; r++) {
    for (size_t g = 0; g < S; g++) {
      const size_t c0 = g * group, cnt = std::min(group, cols - c0);
      const int sbits = int4_group(values + r * cols + c0, cnt, q.data());
      if (sbits < 0) {
        bad_mask[r * S + g] = 1;
        n.bad++;
        continue;
      }
      scales[r * S + g] = (uint16_t)sbits;
      for (size_t i = 0; i < cnt; i++) {
        const size_t c = c0 + i;
        packed[r * words + (c >> 3)] |= (uint32_t)((q[i] + 8) & 15) << (4 * (c & 7));
      }
    }
  }
  if (ref_packed && ref_scales && group % 8 == 0) {
    for (size_t r = 0; r < rows; r++) {
      for (size_t g = 0; g < S; g++) {
        const size_t w0 = r * words + g * group / 8, w1 = r * words + std::min(words, (g + 1) * group / 8);
        const uint16_t sbits = load_u16(ref_scales + 2 * (r * S + g));
        bool differs = bad_mask[r * S + g] || sbits != scales[r * S + g];
        for (size_t w = w0; w < w1 && !differs; w++) differs = load_u32(ref_packed + 4 * w) != packed[w];
        if (differs && int4_decodes_to(ref_packed, sbits, r, g, cols, group, words, values, values_dtype)) {
          for (size_t w = w0; w < w1; w++) packed[w] = load_u32(ref_packed + 4 * w);
          scales[r * S + g] = sbits;
          if (bad_mask[r * S + g]) bad_mask[r * S + g] = 0, n.bad--;
          n.adopted++;
        }
      }
    }
  }
  n.firstBad = first_set(bad_mask, rows * S);
  return n;
}

}  // namespace ckpt
