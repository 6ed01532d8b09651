// Requantization encoders (encode.h), byte-identical to src/kernels/requantize.ts. Every test the TypeScript
// encoder makes in f64 is made here in double too, on the same exact quantities, so the two agree on every input
// (NaN, ±inf, ±0, f32 subnormals included): products of an f32 value by a power of two, and of a BF16 scale by an
// integer in [-8, 8], are exact in double; an f32 amax / 6 or / k is rounded once, as in JavaScript.
// Speed: each group first goes through a branch-free pass over the f32 bits (vectorised; compiled twice, plain and
// AVX2, picked by the kernels' ISA switch) that can only accept a group the exact rule accepts, with the same
// bytes; any group it does not accept is redone by the exact, TypeScript-shaped path (bad groups included).
#include "encode.h"

#include <string.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "ckpt_convert.h"
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#define ENC_AVX2 __attribute__((target("avx2")))
#define ENC_HAVE_AVX2 1
#endif
#define ENC_INLINE inline __attribute__((always_inline))

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

// The same bytes as mxfp4_group for a group every value of which is exact; false (nothing written) when any is not
// or cannot be told from the bits alone. A normal |x| = (1 + M/2^23) · 2^(E − 127) at scale byte B is
// (1 + M/2^23) · 2^(t + 1) halves of the scale, t = E − B: an E2M1 value exactly when M = 0 and t ∈ [−1, 2] (0.5,
// 1, 2, 4: codes 1, 2, 4, 6) or M = 2^22 and t ∈ [0, 2] (1.5, 3, 6: codes 3, 5, 7). ±0 is code 0; subnormals,
// NaN and inf are left to the exact path.
ENC_INLINE bool mxfp4_group_fast(const float* v, int byte, uint8_t* blk) {
  uint32_t u[32], nib[32], bad = 0;
  memcpy(u, v, sizeof u);
  for (int i = 0; i < 32; i++) {
    const uint32_t a = u[i] & 0x7fffffffu, m = a & 0x7fffffu;
    const int32_t t = (int32_t)(a >> 23) - byte;
    const uint32_t h = m == 0x400000u, lowest = t == -1;
    const uint32_t ok = (a == 0) | ((m == 0 || h) & (t >= -1) & (t <= 2) & !(lowest & h));
    nib[i] = (a == 0 ? 0u : (uint32_t)(2 * t + 2) + h + lowest) | ((u[i] >> 31) << 3);
    bad |= ok ^ 1u;
  }
  if (bad) return false;
  for (int i = 0; i < 16; i++) blk[i] = (uint8_t)(nib[2 * i] | (nib[2 * i + 1] << 4));
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

// int4_group for most groups, branch-free over the values in f32 lanes: the same (q, s) when it returns s (nibbles
// q + 8 in nib), -2 when the exact path must decide. NaN and −0 refuse the group first, so amax is the largest |x|
// bits. The exact path starts at k = 8 when its first largest |x| is negative; starting there whenever some largest
// |x| is negative decides the same, since with a positive one too k = 8 gives q = 8 and fails. Each k whose s is a
// BF16 is decided here when 1/s is a finite f32: x = q · s exactly (q · s is exact in f32: at most 11 significant
// bits, a multiple of s's last bit) puts x · f32(1/s) within 8 · 2^-23 of q, so rounding it finds that q; any
// other x fails the exact check r · s == x. A k the exact path would take is therefore never skipped.
// N: the group size when fixed at compile time (32, the common one: loops fully unrolled), 0 for n.
template <size_t N>
ENC_INLINE int int4_group_fast(const float* __restrict v, size_t n_, uint8_t* __restrict nib) {
  const size_t n = N ? N : n_;
  uint32_t mpos = 0, mneg = 0, refused = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, v + i, 4);
    const uint32_t a = u & 0x7fffffffu, neg = 0u - (u >> 31);
    const uint32_t ap = a & ~neg, an = a & neg;
    mpos = ap > mpos ? ap : mpos;
    mneg = an > mneg ? an : mneg;
    refused |= (uint32_t)(u == 0x80000000u) | (uint32_t)(a > 0x7f800000u);
  }
  const uint32_t m = mpos > mneg ? mpos : mneg;
  if (refused || m == 0 || m == 0x7f800000u) return -2;
  const double amax = f32_of(m);
  for (int k = mneg == m ? 8 : 7; k >= 1; k--) {
    const double s = amax / k;
    const float sf = (float)s;
    if ((double)sf != s || (bits_of(sf) & 0xffffu) != 0) continue;
    const float rcp = (float)(1.0 / s), round_c = 12582912.0f;  // 1.5 · 2^23: (y + c) − c rounds y (|y| < 2^22)
    if (!std::isfinite(rcp)) return -2;
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
      const float x = v[i];
      const float r = (x * rcp + round_c) - round_c;  // |x · rcp| <= 8 (1 + 2^-22): x <= amax = k · s
      bad |= (uint32_t)(r < -8.0f) | (uint32_t)(r > 7.0f) | (uint32_t)(r * sf != x);
      const float rc = r < -8.0f ? -8.0f : r > 7.0f ? 7.0f : r;
      nib[i] = (uint8_t)((int32_t)rc + 8);
    }
    if (!bad) return (int)(bits_of(sf) >> 16);
    // this k's s fails, as it does on the exact path: try the next
  }
  return -2;
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

// The encode passes, inlined twice: plain x86-64 (or the host's baseline) and AVX2.
ENC_INLINE int64_t mxfp4_pass(const float* values, size_t groups, uint8_t* blocks, uint8_t* scales, uint8_t* bad_mask) {
  int64_t bad = 0;
  for (size_t g = 0; g < groups; g++) {
    const float* v = values + g * 32;
    const int byte = mxfp4_scale_byte(v);
    if (byte >= 0) scales[g] = (uint8_t)byte;
    if (byte >= 0 && mxfp4_group_fast(v, byte, blocks + g * 16)) continue;
    if (byte < 0 || !mxfp4_group(v, byte, blocks + g * 16)) {
      bad_mask[g] = 1;
      bad++;
    }
  }
  return bad;
}

ENC_INLINE int64_t int4_pass(const float* values, size_t rows, size_t cols, size_t group, uint32_t* packed, uint16_t* scales,
                             uint8_t* bad_mask, int8_t* q, uint8_t* __restrict nib, uint8_t* __restrict pairs) {
  const size_t words = (cols + 7) / 8, S = (cols + group - 1) / group;
  int64_t bad = 0;
  for (size_t r = 0; r < rows; r++) {
    uint32_t* row = packed + r * words;
    for (size_t g = 0; g < S; g++) {
      const size_t c0 = g * group, cnt = std::min(group, cols - c0);
      const float* v = values + r * cols + c0;
      int sbits = cnt == 32 ? int4_group_fast<32>(v, cnt, nib) : int4_group_fast<0>(v, cnt, nib);
      if (sbits == -2) {
        sbits = int4_group(v, cnt, q);
        if (sbits >= 0)
          for (size_t i = 0; i < cnt; i++) nib[i] = (uint8_t)((q[i] + 8) & 15);
      }
      if (sbits < 0) {
        bad_mask[r * S + g] = 1;
        bad++;
        continue;
      }
      scales[r * S + g] = (uint16_t)sbits;
      size_t i = 0;
      if ((c0 & 7) == 0) {
        // whole words: nibbles least significant first are the little-endian bytes nib[2j] | nib[2j + 1] << 4
        const size_t whole = cnt / 8;
        for (size_t j = 0; j < whole * 4; j++) pairs[j] = (uint8_t)(nib[2 * j] | (nib[2 * j + 1] << 4));
        for (size_t w = 0; w < whole; w++) row[(c0 >> 3) + w] |= load_u32(pairs + 4 * w);
        i = whole * 8;
      }
      for (; i < cnt; i++) {
        const size_t c = c0 + i;
        row[c >> 3] |= (uint32_t)nib[i] << (4 * (c & 7));
      }
    }
  }
  return bad;
}

int64_t mxfp4_pass_plain(const float* v, size_t groups, uint8_t* b, uint8_t* s, uint8_t* m) { return mxfp4_pass(v, groups, b, s, m); }
int64_t int4_pass_plain(const float* v, size_t rows, size_t cols, size_t group, uint32_t* p, uint16_t* s, uint8_t* m, int8_t* q, uint8_t* nib, uint8_t* pairs) {
  return int4_pass(v, rows, cols, group, p, s, m, q, nib, pairs);
}
#ifdef ENC_HAVE_AVX2
ENC_AVX2 int64_t mxfp4_pass_avx2(const float* v, size_t groups, uint8_t* b, uint8_t* s, uint8_t* m) { return mxfp4_pass(v, groups, b, s, m); }
ENC_AVX2 int64_t int4_pass_avx2(const float* v, size_t rows, size_t cols, size_t group, uint32_t* p, uint16_t* s, uint8_t* m, int8_t* q, uint8_t* nib, uint8_t* pairs) {
  return int4_pass(v, rows, cols, group, p, s, m, q, nib, pairs);
}
#endif

}  // namespace

EncodeCounts mxfp4_encode(const float* values, size_t rows, size_t cols, int values_dtype, const uint8_t* ref_blocks,
                          const uint8_t* ref_scales, uint8_t* blocks, uint8_t* scales, uint8_t* bad_mask) {
  const size_t groups = rows * (cols / 32);
  memset(blocks, 0, groups * 16);
  memset(scales, 0, groups);
  memset(bad_mask, 0, groups);
  EncodeCounts n = {0, -1, 0};
#ifdef ENC_HAVE_AVX2
  n.bad = current_isa() >= ISA_AVX2 ? mxfp4_pass_avx2(values, groups, blocks, scales, bad_mask) : mxfp4_pass_plain(values, groups, blocks, scales, bad_mask);
#else
  n.bad = mxfp4_pass_plain(values, groups, blocks, scales, bad_mask);
#endif
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
  std::vector<uint8_t> nib(group), pairs(group / 2 + 4);
  EncodeCounts n = {0, -1, 0};
#ifdef ENC_HAVE_AVX2
  n.bad = current_isa() >= ISA_AVX2 ? int4_pass_avx2(values, rows, cols, group, packed, scales, bad_mask, q.data(), nib.data(), pairs.data())
                     : int4_pass_plain(values, rows, cols, group, packed, scales, bad_mask, q.data(), nib.data(), pairs.data());
#else
  n.bad = int4_pass_plain(values, rows, cols, group, packed, scales, bad_mask, q.data(), nib.data(), pairs.data());
#endif
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
