// CPU kernels. Three tiers, chosen at run time:
//   scalar  the header functions of ckpt_convert.h, element by element (portable; the bit-exactness anchor)
//   avx2    AVX2 + F16C + FMA loops (x86-64), compiled with __attribute__((target)) so plain g++ flags suffice
//   avx512  AVX-512F/BW for bf16 -> f32, avx2 for the rest (an AVX-512 f32 -> bf16 narrowing measured slower
//           than AVX2 on Zen 4: the word permutes cost more than they save)
// Every tier is bit-exact with the header (test/kernels.test.ts runs the vectors and random data through each).
// The LoRA merge at the end has the same tiers and is bit-exact with mergeWeight in src/lora/merge.ts.
// AVX512-BF16 VCVTNEPS2BF16 is deliberately not used: it flushes subnormals (docs/numerics.md §1).

#include "kernels.h"

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own `__Y = __Y` idiom.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <string.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "ckpt_convert.h"

#if defined(__x86_64__) || defined(__i386__)
#define CKPT_X86 1
#include <immintrin.h>
#endif

namespace ckpt {

static inline size_t dsize(int d) { return (size_t)ckpt_dtype_size(d); }

// ---------------------------------------------------------------------------------------------------------
// scalar tier
// ---------------------------------------------------------------------------------------------------------

template <int S, int D>
static void cast_scalar(const uint8_t* src, uint8_t* dst, size_t n) {
  const size_t ss = (size_t)ckpt_dtype_size(S), ds = (size_t)ckpt_dtype_size(D);
  for (size_t i = 0; i < n; i++) ckpt_store_from_f32(S, D, ckpt_load_f32(S, src + i * ss), dst + i * ds);
}

static void copy_bytes(const uint8_t* src, uint8_t* dst, size_t n) { memcpy(dst, src, n); }
static void copy_2(const uint8_t* src, uint8_t* dst, size_t n) { memcpy(dst, src, n * 2); }
static void copy_4(const uint8_t* src, uint8_t* dst, size_t n) { memcpy(dst, src, n * 4); }

#define CKPT_ROW(S)                                                                                          \
  { (S) == CKPT_F32 ? copy_4 : cast_scalar<S, CKPT_F32>, (S) == CKPT_BF16 ? copy_2 : cast_scalar<S, CKPT_BF16>, \
    (S) == CKPT_F16 ? copy_2 : cast_scalar<S, CKPT_F16>, (S) == CKPT_F8_E4M3 ? copy_bytes : cast_scalar<S, CKPT_F8_E4M3>, \
    (S) == CKPT_F8_E5M2 ? copy_bytes : cast_scalar<S, CKPT_F8_E5M2> }

static const CastFn kScalar[5][5] = {CKPT_ROW(CKPT_F32), CKPT_ROW(CKPT_BF16), CKPT_ROW(CKPT_F16),
                                     CKPT_ROW(CKPT_F8_E4M3), CKPT_ROW(CKPT_F8_E5M2)};

// Lookup tables for fp8 sources: every destination encoding of each of the 256 inputs, computed by the header
// functions (so exact by construction). Built once, thread-safe (C++11 static init).
struct Fp8Tables {
  uint32_t t[2][5][256];  // [src e4m3/e5m2][dst dtype][byte]
  Fp8Tables() {
    for (int s = 0; s < 2; s++)
      for (int d = 0; d < 5; d++)
        for (int b = 0; b < 256; b++) {
          uint8_t in[4] = {(uint8_t)b, 0, 0, 0}, out[4] = {0, 0, 0, 0};
          ckpt_convert_one(CKPT_F8_E4M3 + s, in, d, out);
          t[s][d][b] = (uint32_t)out[0] | ((uint32_t)out[1] << 8) | ((uint32_t)out[2] << 16) | ((uint32_t)out[3] << 24);
        }
  }
};
static const Fp8Tables& fp8_tables() {
  static const Fp8Tables t;
  return t;
}

template <int S, int D>
static void cast_fp8_lut(const uint8_t* src, uint8_t* dst, size_t n) {
  const uint32_t* t = fp8_tables().t[S - CKPT_F8_E4M3][D];
  if (D == CKPT_F32) {
    for (size_t i = 0; i < n; i++) { uint32_t v = t[src[i]]; memcpy(dst + 4 * i, &v, 4); }
  } else if (D == CKPT_BF16 || D == CKPT_F16) {
    for (size_t i = 0; i < n; i++) { uint16_t v = (uint16_t)t[src[i]]; memcpy(dst + 2 * i, &v, 2); }
  } else {
    for (size_t i = 0; i < n; i++) dst[i] = (uint8_t)t[src[i]];
  }
}

static const CastFn kFp8Lut[2][5] = {
    {cast_fp8_lut<CKPT_F8_E4M3, CKPT_F32>, cast_fp8_lut<CKPT_F8_E4M3, CKPT_BF16>, cast_fp8_lut<CKPT_F8_E4M3, CKPT_F16>,
     copy_bytes, cast_fp8_lut<CKPT_F8_E4M3, CKPT_F8_E5M2>},
    {cast_fp8_lut<CKPT_F8_E5M2, CKPT_F32>, cast_fp8_lut<CKPT_F8_E5M2, CKPT_BF16>, cast_fp8_lut<CKPT_F8_E5M2, CKPT_F16>,
     cast_fp8_lut<CKPT_F8_E5M2, CKPT_F8_E4M3>, copy_bytes},
};

// ---------------------------------------------------------------------------------------------------------
// AVX2 tier
// ---------------------------------------------------------------------------------------------------------
#ifdef CKPT_X86
#define TGT2 __attribute__((target("avx2,f16c,fma")))
#define TGT512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c,fma")))

TGT2 static inline __m256i set1(uint32_t v) { return _mm256_set1_epi32((int)v); }

// Eight f32 bit patterns -> eight bf16 in the low 16 bits of each lane; NaN -> nanval.
TGT2 static inline __m256i bf16_narrow8(__m256i u, __m256i nanval) {
  __m256i a = _mm256_and_si256(u, set1(0x7FFFFFFFu));
  __m256i isnan = _mm256_cmpgt_epi32(a, set1(0x7F800000u));
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), set1(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, set1(0x7FFFu)), lsb), 16);
  return _mm256_blendv_epi8(r, nanval, isnan);
}

// Two vectors of eight values <= 0xFFFF -> sixteen u16 in order.
TGT2 static inline __m256i pack16(__m256i lo, __m256i hi) {
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(lo, hi), 0xD8);
}

// Four vectors of eight values <= 0xFF -> thirty-two bytes in order.
TGT2 static inline __m256i pack8(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
  __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(v0, v1), _mm256_packus_epi32(v2, v3));
  return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// f32 -> e4m3fn (c10 fp8e4m3fn_from_fp32_value, vectorised). The subnormal branch adds 2^14 in f32 so the
// hardware rounds to a multiple of 2^-9 (RNE); the result does not depend on DAZ/FTZ.
TGT2 static inline __m256i e4m3_narrow8(__m256i u) {
  __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), set1(0x80));
  __m256i a = _mm256_and_si256(u, set1(0x7FFFFFFFu));
  __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 20), set1(1));
  __m256i norm = _mm256_srli_epi32(_mm256_add_epi32(_mm256_sub_epi32(a, set1(0x3C000000u - 0x7FFFFu)), odd), 20);
  __m256i mask = set1(141u << 23);
  __m256i sub = _mm256_sub_epi32(
      _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(mask))), mask);
  __m256i r = _mm256_blendv_epi8(sub, norm, _mm256_cmpgt_epi32(a, set1(0x3C800000u - 1)));
  r = _mm256_blendv_epi8(r, set1(0x7F), _mm256_cmpgt_epi32(a, set1(0x43E80000u)));
  return _mm256_or_si256(r, sign);
}

TGT2 static inline __m256i e5m2_narrow8(__m256i u) {
  __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), set1(0x80));
  __m256i a = _mm256_and_si256(u, set1(0x7FFFFFFFu));
  __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 21), set1(1));
  __m256i norm = _mm256_srli_epi32(_mm256_add_epi32(_mm256_sub_epi32(a, set1(0x38000000u - 0xFFFFFu)), odd), 21);
  __m256i mask = set1(134u << 23);
  __m256i sub = _mm256_sub_epi32(
      _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(mask))), mask);
  __m256i r = _mm256_blendv_epi8(sub, norm, _mm256_cmpgt_epi32(a, set1(0x38800000u - 1)));
  r = _mm256_blendv_epi8(r, set1(0x7C), _mm256_cmpgt_epi32(a, set1(0x476FFFFFu)));
  r = _mm256_blendv_epi8(r, set1(0x7F), _mm256_cmpgt_epi32(a, set1(0x7F800000u)));
  return _mm256_or_si256(r, sign);
}

// Eight fp8 bytes widened to f32 bits. e5m2 is the high byte of an f16 (F16C keeps the §3 NaN rule). e4m3fn
// with its sign cleared, shifted left by 7, is an f16 whose value is 2^-8 times the e4m3 value (normals and
// subnormals alike), so F16C plus an exact multiply by 256 decodes it; 0x7F/0xFF become 0x7FF00000/0xFFF00000.
TGT2 static inline __m256i e5m2_widen8(__m128i b8) {
  return _mm256_castps_si256(_mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(b8), 8)));
}
TGT2 static inline __m256i e4m3_widen8(__m128i b8) {
  __m128i h = _mm_cvtepu8_epi16(b8);
  __m128i mag = _mm_and_si128(h, _mm_set1_epi16(0x7F));
  __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(_mm_slli_epi16(mag, 7)), _mm256_set1_ps(256.0f));
  __m256i mag32 = _mm256_cvtepu16_epi32(mag);
  __m256i sign = _mm256_slli_epi32(_mm256_and_si256(_mm256_cvtepu16_epi32(h), set1(0x80)), 24);
  __m256i r = _mm256_blendv_epi8(_mm256_castps_si256(v), set1(0x7FF00000u), _mm256_cmpeq_epi32(mag32, set1(0x7F)));
  return _mm256_or_si256(r, sign);
}

// Eight source elements widened to f32 bits.
template <int S>
TGT2 static inline __m256i widen8(const uint8_t* p) {
  if (S == CKPT_F32) return _mm256_loadu_si256((const __m256i*)p);
  if (S == CKPT_BF16) return _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16);
  if (S == CKPT_F16) return _mm256_castps_si256(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)));
  if (S == CKPT_F8_E4M3) return e4m3_widen8(_mm_loadl_epi64((const __m128i*)p));
  return e5m2_widen8(_mm_loadl_epi64((const __m128i*)p));
}

// Eight f32 bit patterns narrowed to D (lanes hold the result in their low bits), NaN rule by source dtype.
template <int S, int D>
TGT2 static inline __m256i narrow8(__m256i u) {
  if (D == CKPT_BF16) return bf16_narrow8(u, set1(S == CKPT_F32 ? 0xFFFFu : 0x7FC0u));
  if (D == CKPT_F8_E4M3) return e4m3_narrow8(u);
  return e5m2_narrow8(u);
}

// Generic AVX2 loop for sources F32/BF16/F16 (SIMD widening) into any other destination.
template <int S, int D>
TGT2 static void cast_avx2(const uint8_t* src, uint8_t* dst, size_t n) {
  const size_t ss = dsize(S), ds = dsize(D);
  size_t i = 0;
  if (D == CKPT_F32) {
    for (; i + 16 <= n; i += 16) {
      __m256i a = widen8<S>(src + i * ss), b = widen8<S>(src + (i + 8) * ss);
      _mm256_storeu_si256((__m256i*)(dst + i * 4), a);
      _mm256_storeu_si256((__m256i*)(dst + i * 4 + 32), b);
    }
  } else if (D == CKPT_F16) {
    for (; i + 16 <= n; i += 16) {
      __m256 a = _mm256_castsi256_ps(widen8<S>(src + i * ss)), b = _mm256_castsi256_ps(widen8<S>(src + (i + 8) * ss));
      _mm_storeu_si128((__m128i*)(dst + i * 2), _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      _mm_storeu_si128((__m128i*)(dst + i * 2 + 16), _mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  } else if (D == CKPT_BF16) {
    for (; i + 16 <= n; i += 16) {
      __m256i a = narrow8<S, D>(widen8<S>(src + i * ss)), b = narrow8<S, D>(widen8<S>(src + (i + 8) * ss));
      _mm256_storeu_si256((__m256i*)(dst + i * 2), pack16(a, b));
    }
  } else {
    for (; i + 32 <= n; i += 32) {
      __m256i v0 = narrow8<S, D>(widen8<S>(src + i * ss)), v1 = narrow8<S, D>(widen8<S>(src + (i + 8) * ss));
      __m256i v2 = narrow8<S, D>(widen8<S>(src + (i + 16) * ss)), v3 = narrow8<S, D>(widen8<S>(src + (i + 24) * ss));
      _mm256_storeu_si256((__m256i*)(dst + i), pack8(v0, v1, v2, v3));
    }
  }
  for (; i < n; i++) ckpt_store_from_f32(S, D, ckpt_load_f32(S, src + i * ss), dst + i * ds);
}

// ---- AVX-512 for the bf16 <-> f32 hot paths ----

TGT512 static void bf16_to_f32_avx512(const uint8_t* src, uint8_t* dst, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512i a = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + i * 2))), 16);
    __m512i b = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + i * 2 + 32))), 16);
    _mm512_storeu_si512((void*)(dst + i * 4), a);
    _mm512_storeu_si512((void*)(dst + i * 4 + 64), b);
  }
  for (; i < n; i++) ckpt_store_from_f32(CKPT_BF16, CKPT_F32, ckpt_load_f32(CKPT_BF16, src + i * 2), dst + i * 4);
}

static const CastFn kAvx2[5][5] = {
    {copy_4, cast_avx2<CKPT_F32, CKPT_BF16>, cast_avx2<CKPT_F32, CKPT_F16>, cast_avx2<CKPT_F32, CKPT_F8_E4M3>,
     cast_avx2<CKPT_F32, CKPT_F8_E5M2>},
    {cast_avx2<CKPT_BF16, CKPT_F32>, copy_2, cast_avx2<CKPT_BF16, CKPT_F16>, cast_avx2<CKPT_BF16, CKPT_F8_E4M3>,
     cast_avx2<CKPT_BF16, CKPT_F8_E5M2>},
    {cast_avx2<CKPT_F16, CKPT_F32>, cast_avx2<CKPT_F16, CKPT_BF16>, copy_2, cast_avx2<CKPT_F16, CKPT_F8_E4M3>,
     cast_avx2<CKPT_F16, CKPT_F8_E5M2>},
    {cast_avx2<CKPT_F8_E4M3, CKPT_F32>, cast_avx2<CKPT_F8_E4M3, CKPT_BF16>, cast_avx2<CKPT_F8_E4M3, CKPT_F16>,
     copy_bytes, cast_avx2<CKPT_F8_E4M3, CKPT_F8_E5M2>},
    {cast_avx2<CKPT_F8_E5M2, CKPT_F32>, cast_avx2<CKPT_F8_E5M2, CKPT_BF16>, cast_avx2<CKPT_F8_E5M2, CKPT_F16>,
     cast_avx2<CKPT_F8_E5M2, CKPT_F8_E4M3>, copy_bytes},
};
#endif  // CKPT_X86

// ---------------------------------------------------------------------------------------------------------
// dispatch
// ---------------------------------------------------------------------------------------------------------

int detect_isa() {
#ifdef CKPT_X86
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
  if (!avx2) return ISA_SCALAR;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return ISA_AVX512;
  return ISA_AVX2;
#else
  return ISA_SCALAR;
#endif
}

static std::atomic<int> g_isa{-1};

int current_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = detect_isa();
    g_isa.store(v, std::memory_order_relaxed);
  }
  return v;
}

int set_isa(int isa) {
  int best = detect_isa();
  if (isa < 0 || isa > best) isa = best;
  g_isa.store(isa, std::memory_order_relaxed);
  return isa;
}

const char* isa_name(int isa) { return isa == ISA_AVX512 ? "avx512" : isa == ISA_AVX2 ? "avx2" : "scalar"; }

CastFn cast_fn(int s, int d) {
#ifdef CKPT_X86
  int isa = current_isa();
  if (isa == ISA_AVX512) {
    if (s == CKPT_BF16 && d == CKPT_F32) return bf16_to_f32_avx512;
  }
  if (isa >= ISA_AVX2) return kAvx2[s][d];
#endif
  if (s >= CKPT_F8_E4M3) return kFp8Lut[s - CKPT_F8_E4M3][d];  // tables built from the header functions
  return kScalar[s][d];
}

void cast(const uint8_t* src, int s, uint8_t* dst, int d, size_t n) { cast_fn(s, d)(src, dst, n); }

void gather_rows(const uint8_t* src, int s, size_t srcRowElems, const int32_t* rowIndex, size_t nRows, size_t colStart,
                 size_t cols, uint8_t* dst, int d) {
  const size_t ss = dsize(s), ds = dsize(d);
  if (s == d) {
    const size_t rowBytes = cols * ss;
    for (size_t i = 0; i < nRows; i++)
      memcpy(dst + i * rowBytes, src + ((size_t)rowIndex[i] * srcRowElems + colStart) * ss, rowBytes);
    return;
  }
  CastFn f = cast_fn(s, d);
  for (size_t i = 0; i < nRows; i++) f(src + ((size_t)rowIndex[i] * srcRowElems + colStart) * ss, dst + i * cols * ds, cols);
}

// ---- dequant ----

static const size_t kChunk = 2048;

static void dequant_seg_scalar(int wd, int d, const uint8_t* w, size_t n, uint32_t s, uint8_t* out) {
  const size_t ds = dsize(d);
  for (size_t k = 0; k < n; k++) {
    uint32_t a = wd == CKPT_F8_E4M3 ? ckpt_e4m3_to_f32(w[k]) : ckpt_e5m2_to_f32(w[k]);
    ckpt_store_from_f32(CKPT_F32, d, ckpt_mul_f32(a, s), out + k * ds);
  }
}

#ifdef CKPT_X86
// One segment of a row under one scale s (finite, nonzero: the caller sends other scales to the scalar path, so
// the only NaN source here is a NaN weight, which is blended back explicitly as ckpt_mul_f32 specifies).
template <int W>
TGT2 static inline __m256i dequant_prod8(const uint8_t* w, __m256 vs) {
  __m256 a = _mm256_castsi256_ps(widen8<W>(w));
  __m256 p = _mm256_mul_ps(a, vs);
  __m256 nan = _mm256_cmp_ps(a, a, _CMP_UNORD_Q);
  return _mm256_castps_si256(_mm256_blendv_ps(p, a, nan));  // widened fp8 NaNs are already quiet
}

template <int W, int D>
TGT2 static void dequant_seg_avx2(const uint8_t* w, size_t n, uint32_t s, uint8_t* out) {
  float sf;
  memcpy(&sf, &s, 4);
  const __m256 vs = _mm256_set1_ps(sf);
  const size_t ds = dsize(D);
#define prod8(k) dequant_prod8<W>(w + (k), vs)
  size_t k = 0;
  if (D == CKPT_F32) {
    for (; k + 8 <= n; k += 8) _mm256_storeu_si256((__m256i*)(out + k * 4), prod8(k));
  } else if (D == CKPT_F16) {
    for (; k + 8 <= n; k += 8)
      _mm_storeu_si128((__m128i*)(out + k * 2),
                       _mm256_cvtps_ph(_mm256_castsi256_ps(prod8(k)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else if (D == CKPT_BF16) {
    for (; k + 16 <= n; k += 16)
      _mm256_storeu_si256((__m256i*)(out + k * 2), pack16(narrow8<CKPT_F32, D>(prod8(k)), narrow8<CKPT_F32, D>(prod8(k + 8))));
  } else {
    for (; k + 32 <= n; k += 32)
      _mm256_storeu_si256((__m256i*)(out + k), pack8(narrow8<CKPT_F32, D>(prod8(k)), narrow8<CKPT_F32, D>(prod8(k + 8)),
                                                     narrow8<CKPT_F32, D>(prod8(k + 16)), narrow8<CKPT_F32, D>(prod8(k + 24))));
  }
#undef prod8
  dequant_seg_scalar(W, D, w + k, n - k, s, out + k * ds);
}

typedef void (*DequantSegFn)(const uint8_t*, size_t, uint32_t, uint8_t*);
static const DequantSegFn kDequantAvx2[2][5] = {
    {dequant_seg_avx2<CKPT_F8_E4M3, CKPT_F32>, dequant_seg_avx2<CKPT_F8_E4M3, CKPT_BF16>,
     dequant_seg_avx2<CKPT_F8_E4M3, CKPT_F16>, dequant_seg_avx2<CKPT_F8_E4M3, CKPT_F8_E4M3>,
     dequant_seg_avx2<CKPT_F8_E4M3, CKPT_F8_E5M2>},
    {dequant_seg_avx2<CKPT_F8_E5M2, CKPT_F32>, dequant_seg_avx2<CKPT_F8_E5M2, CKPT_BF16>,
     dequant_seg_avx2<CKPT_F8_E5M2, CKPT_F16>, dequant_seg_avx2<CKPT_F8_E5M2, CKPT_F8_E4M3>,
     dequant_seg_avx2<CKPT_F8_E5M2, CKPT_F8_E5M2>},
};
#endif

void dequant_block(const uint8_t* w, int wd, size_t rows, size_t cols, size_t rowStart, size_t colStart,
                   const float* scaleInv, size_t scaleCols, size_t block, uint8_t* dst, int d) {
  const size_t ds = dsize(d);
#ifdef CKPT_X86
  const DequantSegFn simd = current_isa() >= ISA_AVX2 ? kDequantAvx2[wd - CKPT_F8_E4M3][d] : nullptr;
#endif
  for (size_t r = 0; r < rows; r++) {
    const float* srow = scaleInv + ((rowStart + r) / block) * scaleCols;
    const uint8_t* wrow = w + r * cols;
    uint8_t* orow = dst + r * cols * ds;
    size_t c = 0;
    while (c < cols) {
      size_t gc = colStart + c;
      size_t segEnd = (gc / block + 1) * block - colStart;
      if (segEnd > cols) segEnd = cols;
      uint32_t s;
      memcpy(&s, &srow[gc / block], 4);
      uint32_t as = s & 0x7FFFFFFFu;
#ifdef CKPT_X86
      if (simd && as != 0 && as < 0x7F800000u) simd(wrow + c, segEnd - c, s, orow + c * ds);
      else
#endif
        dequant_seg_scalar(wd, d, wrow + c, segEnd - c, s, orow + c * ds);
      c = segEnd;
    }
  }
}

// ---- MXFP4 decode ----

// Every (scale, nibble) pair decoded once by the header function, as f32 and bf16 bits (bf16 is exact: decoded
// values have at most two significant bits), plus which scales give a non-finite value for some nibble.
struct Mxfp4Tables {
  uint32_t f32[256][16];
  uint16_t bf16[256][16];                         // the f32 narrowing (exact; a NaN becomes 0xFFFF like every f32 NaN)
  alignas(16) uint8_t lo[256][16], hi[256][16];  // bf16 low / high bytes, the pshufb tables
  bool bad[256];
  Mxfp4Tables() {
    for (uint32_t s = 0; s < 256; s++) {
      bad[s] = false;
      for (uint32_t n = 0; n < 16; n++) {
        uint32_t u = ckpt_mxfp4_to_f32(n, s);
        f32[s][n] = u;
        bf16[s][n] = ckpt_f32_to_bf16(u);
        lo[s][n] = (uint8_t)bf16[s][n];
        hi[s][n] = (uint8_t)(bf16[s][n] >> 8);
        if ((u & 0x7F800000u) == 0x7F800000u) bad[s] = true;
      }
    }
  }
};
static const Mxfp4Tables& mxfp4_tables() {
  static const Mxfp4Tables t;
  return t;
}

// Values [v, v + n) of one row (v = index from the start of the row's first group); returns the offset in [0, n)
// of the first non-finite value, or -1.
static int64_t mxfp4_seg_scalar(const uint8_t* b, const uint8_t* sc, size_t v, size_t n, uint8_t* out, int d) {
  const Mxfp4Tables& t = mxfp4_tables();
  const size_t ds = dsize(d);
  int64_t bad = -1;
  for (size_t k = 0; k < n; k++, v++) {
    uint8_t byte = b[v >> 1];
    const uint32_t s = sc[v >> 5], n = (v & 1) ? byte >> 4 : byte & 15u;
    uint32_t u = t.f32[s][n];
    if (bad < 0 && (u & 0x7F800000u) == 0x7F800000u) bad = (int64_t)k;
    if (d == CKPT_F32) memcpy(out + k * 4, &u, 4);
    else if (d == CKPT_BF16) memcpy(out + k * 2, &t.bf16[s][n], 2);
    else ckpt_store_from_f32(CKPT_F32, d, u, out + k * ds);
  }
  return bad;
}

#ifdef CKPT_X86
// One whole group (16 bytes, 32 values) under a scale with only finite values: two pshufb lookups per nibble
// half give the bf16 bytes, interleaved into [lo0, hi0, lo1, hi1, ...]; f32 is bf16 << 16 (exact).
TGT2 static void mxfp4_group_avx2(const uint8_t* b, uint32_t s, uint8_t* out, int d) {
  const Mxfp4Tables& t = mxfp4_tables();
  const __m128i tl = _mm_load_si128((const __m128i*)t.lo[s]), th = _mm_load_si128((const __m128i*)t.hi[s]);
  const __m128i m = _mm_set1_epi8(0x0F);
  __m128i x = _mm_loadu_si128((const __m128i*)b);
  __m128i ln = _mm_and_si128(x, m), hn = _mm_and_si128(_mm_srli_epi16(x, 4), m);
  __m128i la = _mm_shuffle_epi8(tl, ln), lb = _mm_shuffle_epi8(th, ln);
  __m128i ha = _mm_shuffle_epi8(tl, hn), hb = _mm_shuffle_epi8(th, hn);
  __m128i L0 = _mm_unpacklo_epi8(la, lb), L1 = _mm_unpackhi_epi8(la, lb);  // bf16 of low nibbles, bytes 0-7 / 8-15
  __m128i H0 = _mm_unpacklo_epi8(ha, hb), H1 = _mm_unpackhi_epi8(ha, hb);
  __m128i w[4] = {_mm_unpacklo_epi16(L0, H0), _mm_unpackhi_epi16(L0, H0), _mm_unpacklo_epi16(L1, H1), _mm_unpackhi_epi16(L1, H1)};
  if (d == CKPT_BF16) {
    for (int i = 0; i < 4; i++) _mm_storeu_si128((__m128i*)(out + 16 * i), w[i]);
  } else {
    for (int i = 0; i < 4; i++) _mm256_storeu_si256((__m256i*)(out + 32 * i), _mm256_slli_epi32(_mm256_cvtepu16_epi32(w[i]), 16));
  }
}
#endif

int64_t mxfp4_decode(const uint8_t* blocks, const uint8_t* scales, size_t rows, size_t cols, size_t skip, size_t blockStride,
                     size_t scaleStride, uint8_t* dst, int d) {
  const Mxfp4Tables& t = mxfp4_tables();
  const size_t ds = dsize(d);
#ifdef CKPT_X86
  const bool simd = current_isa() >= ISA_AVX2 && (d == CKPT_BF16 || d == CKPT_F32);
#endif
  int64_t bad = -1;
  for (size_t r = 0; r < rows; r++) {
    const uint8_t* b = blocks + r * blockStride;
    const uint8_t* sc = scales + r * scaleStride;
    uint8_t* o = dst + r * cols * ds;
    size_t c = 0, v = skip;
    auto scalar = [&](size_t n) {
      int64_t k = mxfp4_seg_scalar(b, sc, v, n, o + c * ds, d);
      if (bad < 0 && k >= 0) bad = (int64_t)(r * cols + c) + k;
      c += n;
      v += n;
    };
    if (v & 31) scalar(std::min(cols, 32 - (v & 31)));
    while (c + 32 <= cols) {
      uint32_t s = sc[v >> 5];
#ifdef CKPT_X86
      if (simd && !t.bad[s]) {
        mxfp4_group_avx2(b + (v >> 1), s, o + c * ds, d);
        c += 32;
        v += 32;
        continue;
      }
#endif
      (void)s;
      scalar(32);
    }
    if (c < cols) scalar(cols - c);
  }
  (void)t;
  return bad;
}

// ---- INT4 pack-quantized decode ----

// Values [v, v + n) of one row (v from the start of the row's first group); returns the offset in [0, n) of the
// first non-finite value, or -1.
static int64_t int4_seg_scalar(const uint8_t* p, const uint8_t* sc, size_t group, size_t v, size_t n, uint8_t* out, int d) {
  const size_t ds = dsize(d);
  int64_t bad = -1;
  for (size_t k = 0; k < n; k++, v++) {
    const uint8_t byte = p[v >> 1];
    const size_t g = v / group;
    const uint16_t s = (uint16_t)(sc[2 * g] | (sc[2 * g + 1] << 8));
    uint32_t u = ckpt_int4_to_f32((v & 1) ? byte >> 4 : byte & 15u, s);
    if (bad < 0 && (u & 0x7F800000u) == 0x7F800000u) bad = (int64_t)k;
    if (d == CKPT_F32) memcpy(out + k * 4, &u, 4);
    else ckpt_store_from_f32(CKPT_F32, d, u, out + k * ds);
  }
  return bad;
}

#ifdef CKPT_X86
// Sixteen values (two I32 words) under one scale whose products are all finite (|s| < 2^125, so |q * s| < 2^128):
// nibbles by variable shifts, q = nibble - 8 converted exactly, one f32 multiply (exact, see ckpt_int4_to_f32).
TGT2 static inline __m256i int4_word8(const uint8_t* w, __m256 vs) {
  uint32_t word;
  memcpy(&word, w, 4);
  __m256i n = _mm256_and_si256(_mm256_srlv_epi32(set1(word), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)), set1(15));
  __m256 q = _mm256_cvtepi32_ps(_mm256_sub_epi32(n, set1(8)));
  return _mm256_castps_si256(_mm256_mul_ps(q, vs));
}

// `chunks` x 16 values from p (16-value aligned) under BF16 scale s into out (f32 or bf16).
TGT2 static void int4_chunks_avx2(const uint8_t* p, uint16_t s, size_t chunks, uint8_t* out, int d) {
  const uint32_t su = (uint32_t)s << 16;
  float sf;
  memcpy(&sf, &su, 4);
  const __m256 vs = _mm256_set1_ps(sf);
  const __m256i nanv = set1(0xFFFFu);
  for (size_t i = 0; i < chunks; i++, p += 8) {
    __m256i a = int4_word8(p, vs), b = int4_word8(p + 4, vs);
    if (d == CKPT_F32) {
      _mm256_storeu_si256((__m256i*)(out + i * 64), a);
      _mm256_storeu_si256((__m256i*)(out + i * 64 + 32), b);
    } else {
      _mm256_storeu_si256((__m256i*)(out + i * 32), pack16(bf16_narrow8(a, nanv), bf16_narrow8(b, nanv)));
    }
  }
}
#endif

int64_t int4_decode(const uint8_t* packed, const uint8_t* scales, size_t rows, size_t cols, size_t skip, size_t group,
                    size_t packedStride, size_t scaleStride, uint8_t* dst, int d) {
  const size_t ds = dsize(d);
#ifdef CKPT_X86
  const bool simd = current_isa() >= ISA_AVX2 && (d == CKPT_BF16 || d == CKPT_F32);
#endif
  int64_t bad = -1;
  for (size_t r = 0; r < rows; r++) {
    const uint8_t* p = packed + r * packedStride;
    const uint8_t* sc = scales + r * scaleStride;
    uint8_t* o = dst + r * cols * ds;
    size_t c = 0, v = skip;
    auto scalar = [&](size_t n) {
      int64_t k = int4_seg_scalar(p, sc, group, v, n, o + c * ds, d);
      if (bad < 0 && k >= 0) bad = (int64_t)(r * cols + c) + k;
      c += n;
      v += n;
    };
#ifdef CKPT_X86
    if (simd) {
      while (c < cols) {
        // to the next 16-value boundary (scalar), then whole 16-value chunks inside one group (SIMD)
        if (v & 15) { scalar(std::min(cols - c, 16 - (v & 15))); continue; }
        const size_t g = v / group, gEnd = (g + 1) * group;
        const uint16_t s = (uint16_t)(sc[2 * g] | (sc[2 * g + 1] << 8));
        const size_t chunks = std::min(gEnd - v, cols - c) / 16;
        if ((s & 0x7FFFu) >= 0x7E00u || chunks == 0) { scalar(std::min(cols - c, gEnd - v)); continue; }
        int4_chunks_avx2(p + (v >> 1), s, chunks, o + c * ds, d);
        c += chunks * 16;
        v += chunks * 16;
      }
      continue;
    }
#endif
    scalar(cols);
  }
  return bad;
}

// ---- stats ----

struct Acc {
  double sum = 0, sumSq = 0;
  float mn = std::numeric_limits<float>::infinity(), mx = -std::numeric_limits<float>::infinity();
  uint64_t nan = 0, inf = 0, ovf = 0, unf = 0, zeros = 0;
};

static void stats_f32_scalar(const uint32_t* u, size_t n, Acc& acc) {
  for (size_t i = 0; i < n; i++) {
    uint32_t a = u[i] & 0x7FFFFFFFu;
    if (a >= 0x7F800000u) {
      if (a == 0x7F800000u) acc.inf++; else acc.nan++;
      continue;
    }
    if (a == 0) acc.zeros++;
    else if (a >= 0x477FF000u) acc.ovf++;
    else if (a <= 0x33000000u) acc.unf++;
    float x;
    memcpy(&x, &u[i], 4);
    if (x < acc.mn) acc.mn = x;
    if (x > acc.mx) acc.mx = x;
    acc.sum += (double)x;
    acc.sumSq += (double)x * (double)x;
  }
}

#ifdef CKPT_X86
TGT2 static inline uint64_t hsum_epi32(__m256i v) {
  alignas(32) int32_t t[8];
  _mm256_store_si256((__m256i*)t, v);
  uint64_t s = 0;
  for (int k = 0; k < 8; k++) s += (uint32_t)(-t[k]);  // counters hold negated counts
  return s;
}

TGT2 static void stats_f32_avx2(const uint32_t* u, size_t n, Acc& acc) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), q0 = _mm256_setzero_pd(), q1 = _mm256_setzero_pd();
  __m256 mn = _mm256_set1_ps(acc.mn), mx = _mm256_set1_ps(acc.mx);
  const __m256 pinf = _mm256_set1_ps(std::numeric_limits<float>::infinity()), ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256i cNan = _mm256_setzero_si256(), cInf = cNan, cOvf = cNan, cUnf = cNan, cZero = cNan;
  const __m256i absm = set1(0x7FFFFFFFu), infb = set1(0x7F800000u), maxf = set1(0x7F7FFFFFu);
  const __m256i ovfb = set1(0x477FEFFFu), unfb = set1(0x33000001u), zero = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i x = _mm256_loadu_si256((const __m256i*)(u + i));
    __m256i a = _mm256_and_si256(x, absm);
    __m256i nonfinite = _mm256_cmpgt_epi32(a, maxf);
    cNan = _mm256_add_epi32(cNan, _mm256_cmpgt_epi32(a, infb));
    cInf = _mm256_add_epi32(cInf, _mm256_cmpeq_epi32(a, infb));
    cZero = _mm256_add_epi32(cZero, _mm256_cmpeq_epi32(a, zero));
    cOvf = _mm256_add_epi32(cOvf, _mm256_andnot_si256(nonfinite, _mm256_cmpgt_epi32(a, ovfb)));
    cUnf = _mm256_add_epi32(cUnf, _mm256_and_si256(_mm256_cmpgt_epi32(a, zero), _mm256_cmpgt_epi32(unfb, a)));
    __m256 xf = _mm256_castsi256_ps(_mm256_andnot_si256(nonfinite, x));
    __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(xf)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(xf, 1));
    s0 = _mm256_add_pd(s0, lo);
    s1 = _mm256_add_pd(s1, hi);
    q0 = _mm256_fmadd_pd(lo, lo, q0);
    q1 = _mm256_fmadd_pd(hi, hi, q1);
    __m256 nf = _mm256_castsi256_ps(nonfinite);
    mn = _mm256_min_ps(mn, _mm256_blendv_ps(xf, pinf, nf));
    mx = _mm256_max_ps(mx, _mm256_blendv_ps(xf, ninf, nf));
  }
  alignas(32) double t[4];
  _mm256_store_pd(t, _mm256_add_pd(s0, s1));
  acc.sum += (t[0] + t[1]) + (t[2] + t[3]);
  _mm256_store_pd(t, _mm256_add_pd(q0, q1));
  acc.sumSq += (t[0] + t[1]) + (t[2] + t[3]);
  alignas(32) float f[8];
  _mm256_store_ps(f, mn);
  for (int k = 0; k < 8; k++) if (f[k] < acc.mn) acc.mn = f[k];
  _mm256_store_ps(f, mx);
  for (int k = 0; k < 8; k++) if (f[k] > acc.mx) acc.mx = f[k];
  acc.nan += hsum_epi32(cNan);
  acc.inf += hsum_epi32(cInf);
  acc.zeros += hsum_epi32(cZero);
  acc.ovf += hsum_epi32(cOvf);
  acc.unf += hsum_epi32(cUnf);
  stats_f32_scalar(u + i, n - i, acc);
}
#endif

Stats stats(const uint8_t* src, int d, size_t n) {
  Acc acc;
  void (*run)(const uint32_t*, size_t, Acc&) = stats_f32_scalar;
#ifdef CKPT_X86
  if (current_isa() >= ISA_AVX2) run = stats_f32_avx2;
#endif
  const size_t ss = dsize(d);
  if (d == CKPT_F32 && ((uintptr_t)src & 3u) == 0) {
    // Counters are 32-bit lanes: feed at most 2^30 elements per call.
    for (size_t i = 0; i < n; i += ((size_t)1 << 30)) {
      size_t m = n - i < ((size_t)1 << 30) ? n - i : ((size_t)1 << 30);
      run((const uint32_t*)src + i, m, acc);
    }
  } else {
    CastFn widen = cast_fn(d, CKPT_F32);
    alignas(64) uint32_t tmp[kChunk];
    for (size_t i = 0; i < n; i += kChunk) {
      size_t m = n - i < kChunk ? n - i : kChunk;
      widen(src + i * ss, (uint8_t*)tmp, m);
      run(tmp, m, acc);
    }
  }
  Stats st;
  st.count = (double)n;
  uint64_t finite = (uint64_t)n - acc.nan - acc.inf;
  st.min = finite ? (double)acc.mn : std::nan("");
  st.max = finite ? (double)acc.mx : std::nan("");
  st.sum = acc.sum;
  st.sumSq = acc.sumSq;
  st.nan = (double)acc.nan;
  st.inf = (double)acc.inf;
  st.f16Overflow = (double)acc.ovf;
  st.f16Underflow = (double)acc.unf;
  st.zeros = (double)acc.zeros;
  return st;
}

// ---- LoRA / DoRA merge ----
// Bit-identical to mergeWeight in src/lora/merge.ts (PyTorch's CPU order): each (B @ A)[i, j] is the sequential f32
// sum over k of f32 products, so only the i and j loops are blocked or vectorized; a SIMD lane performs exactly the
// scalar's IEEE ops. Multiply and add must stay separate instructions: this file is built with -ffp-contract=off, and
// the AVX2 kernel's target leaves out "fma" so no FMA can be emitted there at all.

typedef void (*LoraRowsFn)(const float* A, size_t lda, size_t inn, const float* B, size_t r, float sf, const float* W,
                           float* P);

// Rows [0, mr), columns [j0, inn): P = W + f32(acc * sf). A rows have stride lda, B rows r, W and P rows inn.
// Products and sums are separate statements so that not even a compiler's default contraction could fuse them.
static inline void lora_cols_scalar(const float* A, size_t lda, size_t inn, const float* B, size_t r, size_t mr,
                                    float sf, const float* W, float* P, size_t j0) {
  for (size_t ii = 0; ii < mr; ii++)
    for (size_t j = j0; j < inn; j++) {
      float acc = 0.0f;
      for (size_t k = 0; k < r; k++) {
        const float p = B[ii * r + k] * A[k * lda + j];
        acc = acc + p;
      }
      const float q = acc * sf;
      P[ii * inn + j] = W[ii * inn + j] + q;
    }
}

// Portable tier: GCC/Clang 4-lane vectors (SSE2, NEON), MR rows x 8 columns per tile with the accumulators in
// registers across k.
typedef float v4f __attribute__((vector_size(16)));

static inline v4f load4(const float* p) { v4f v; memcpy(&v, p, 16); return v; }
static inline void store4(float* p, v4f v) { memcpy(p, &v, 16); }

template <int MR>
static void lora_rows_scalar(const float* A, size_t lda, size_t inn, const float* B, size_t r, float sf,
                             const float* W, float* P) {
  const v4f vs = {sf, sf, sf, sf};
  size_t j = 0;
  for (; j + 8 <= inn; j += 8) {
    v4f acc[MR][2];
    for (int ii = 0; ii < MR; ii++) acc[ii][0] = acc[ii][1] = v4f{0.0f, 0.0f, 0.0f, 0.0f};
    for (size_t k = 0; k < r; k++) {
      const v4f a0 = load4(A + k * lda + j), a1 = load4(A + k * lda + j + 4);
      for (int ii = 0; ii < MR; ii++) {
        const float bs = B[ii * r + k];
        const v4f b = {bs, bs, bs, bs};
        const v4f p0 = b * a0, p1 = b * a1;
        acc[ii][0] = acc[ii][0] + p0;
        acc[ii][1] = acc[ii][1] + p1;
      }
    }
    for (int ii = 0; ii < MR; ii++)
      for (int h = 0; h < 2; h++) {
        const v4f q = acc[ii][h] * vs;
        store4(P + ii * inn + j + 4 * h, load4(W + ii * inn + j + 4 * h) + q);
      }
  }
  lora_cols_scalar(A, lda, inn, B, r, MR, sf, W, P, j);
}

#ifdef CKPT_X86
#define TGTL2 __attribute__((target("avx2")))  // deliberately without "fma"
#define TGTL512 __attribute__((target("avx512f,avx2")))

template <int MR>
TGTL2 static void lora_rows_avx2(const float* A, size_t lda, size_t inn, const float* B, size_t r, float sf,
                                 const float* W, float* P) {
  const __m256 vs = _mm256_set1_ps(sf);
  size_t j = 0;
  for (; j + 16 <= inn; j += 16) {
    __m256 acc[MR][2];
    for (int ii = 0; ii < MR; ii++) acc[ii][0] = acc[ii][1] = _mm256_setzero_ps();
    for (size_t k = 0; k < r; k++) {
      const __m256 a0 = _mm256_loadu_ps(A + k * lda + j), a1 = _mm256_loadu_ps(A + k * lda + j + 8);
      for (int ii = 0; ii < MR; ii++) {
        const __m256 b = _mm256_broadcast_ss(B + ii * r + k);
        acc[ii][0] = _mm256_add_ps(acc[ii][0], _mm256_mul_ps(b, a0));
        acc[ii][1] = _mm256_add_ps(acc[ii][1], _mm256_mul_ps(b, a1));
      }
    }
    for (int ii = 0; ii < MR; ii++)
      for (int h = 0; h < 2; h++) {
        const __m256 q = _mm256_mul_ps(acc[ii][h], vs);
        _mm256_storeu_ps(P + ii * inn + j + 8 * h, _mm256_add_ps(_mm256_loadu_ps(W + ii * inn + j + 8 * h), q));
      }
  }
  lora_cols_scalar(A, lda, inn, B, r, MR, sf, W, P, j);
}

template <int MR>
TGTL512 static void lora_rows_avx512(const float* A, size_t lda, size_t inn, const float* B, size_t r, float sf,
                                     const float* W, float* P) {
  const __m512 vs = _mm512_set1_ps(sf);
  size_t j = 0;
  for (; j + 32 <= inn; j += 32) {
    __m512 acc[MR][2];
    for (int ii = 0; ii < MR; ii++) acc[ii][0] = acc[ii][1] = _mm512_setzero_ps();
    for (size_t k = 0; k < r; k++) {
      const __m512 a0 = _mm512_loadu_ps(A + k * lda + j), a1 = _mm512_loadu_ps(A + k * lda + j + 16);
      for (int ii = 0; ii < MR; ii++) {
        const __m512 b = _mm512_set1_ps(B[ii * r + k]);
        acc[ii][0] = _mm512_add_ps(acc[ii][0], _mm512_mul_ps(b, a0));
        acc[ii][1] = _mm512_add_ps(acc[ii][1], _mm512_mul_ps(b, a1));
      }
    }
    for (int ii = 0; ii < MR; ii++)
      for (int h = 0; h < 2; h++) {
        const __m512 q = _mm512_mul_ps(acc[ii][h], vs);
        _mm512_storeu_ps(P + ii * inn + j + 16 * h, _mm512_add_ps(_mm512_loadu_ps(W + ii * inn + j + 16 * h), q));
      }
  }
  lora_cols_scalar(A, lda, inn, B, r, MR, sf, W, P, j);
}
#endif

// PyTorch's CPU f32 row norm (rowNormF32 in merge.ts): 8 lane accumulators over whole blocks of 8, the lanes summed
// in order, then the tail, then an f32 sqrt (correctly rounded, as Math.fround(Math.sqrt(x)) is).
static inline float lora_row_norm(const float* v, size_t n) {
  float lanes[8] = {};
  const size_t full = n - n % 8;
  for (size_t d = 0; d < full; d += 8)
    for (int l = 0; l < 8; l++) {
      const float sq = v[d + l] * v[d + l];
      lanes[l] = lanes[l] + sq;
    }
  float acc = lanes[0];
  for (int l = 1; l < 8; l++) acc = acc + lanes[l];
  for (size_t d = full; d < n; d++) {
    const float sq = v[d] * v[d];
    acc = acc + sq;
  }
  return std::sqrt(acc);
}

// A [rows, cols] matrix in 64-byte aligned rows of ld = cols rounded up to 16 floats (unaligned vector loads of the
// caller's buffers split cache lines: measured 1.5-2x slower). From src [rows, cols], or from src [cols, rows] if t.
struct LoraAligned {
  std::vector<float> buf;
  float* p;
  size_t ld;
  LoraAligned(const float* src, size_t rows, size_t cols, bool t) : ld((cols + 15) & ~(size_t)15) {
    buf.resize(rows * ld + 16);
    p = buf.data() + ((64 - ((uintptr_t)buf.data() & 63)) & 63) / sizeof(float);
    for (size_t k = 0; k < rows; k++)
      for (size_t c = 0; c < cols; c++) p[k * ld + c] = t ? src[c * rows + k] : src[k * cols + c];
  }
};

void lora_merge(const float* W, size_t out, size_t inn, const float* A, const float* B, size_t r, float sf,
                const float* m, bool transposed, float* res) {
  LoraRowsFn rows4 = lora_rows_scalar<4>, rows1 = lora_rows_scalar<1>;
#ifdef CKPT_X86
  const int isa = current_isa();
  if (isa >= ISA_AVX2) rows4 = lora_rows_avx2<4>, rows1 = lora_rows_avx2<1>;
  if (isa >= ISA_AVX512) rows4 = lora_rows_avx512<4>, rows1 = lora_rows_avx512<1>;
#endif
  if (!transposed) {
    const LoraAligned Aa(A, r, inn, false);
    for (size_t i = 0; i < out;) {
      const size_t mr = out - i >= 4 ? 4 : 1;
      (mr == 4 ? rows4 : rows1)(Aa.p, Aa.ld, inn, B + i * r, r, sf, W + i * inn, res + i * inn);
      if (m)
        for (size_t ii = i; ii < i + mr; ii++) {
          float* v = res + ii * inn;
          const float factor = m[ii] / lora_row_norm(v, inn);
          for (size_t j = 0; j < inn; j++) v[j] = factor * v[j];
        }
      i += mr;
    }
    return;
  }
  // Transposed storage: res^T = W^T + s * (A^T @ B^T) row by row, so storage stays contiguous. Each element's sum
  // still runs over k in order; only the operands of each product swap, and f32 multiplication commutes.
  const LoraAligned Bt(B, r, out, true);
  std::vector<float> At(inn * r);
  for (size_t k = 0; k < r; k++)
    for (size_t j = 0; j < inn; j++) At[j * r + k] = A[k * inn + j];
  // DoRA norms of the columns, in lora_row_norm's order: lanes[l][i] over storage rows j < full with j mod 8 == l,
  // folded in lane order, then the tail rows.
  const size_t full = inn - inn % 8;
  std::vector<float> lanes(m ? 8 * out : 0), nrm(m ? out : 0);
  bool folded = false;
  auto fold = [&]() {
    for (size_t i = 0; i < out; i++) {
      float a = lanes[i];
      for (size_t l = 1; l < 8; l++) a = a + lanes[l * out + i];
      nrm[i] = a;
    }
    folded = true;
  };
  for (size_t j = 0; j < inn;) {
    const size_t mr = inn - j >= 4 ? 4 : 1;
    (mr == 4 ? rows4 : rows1)(Bt.p, Bt.ld, out, At.data() + j * r, r, sf, W + j * out, res + j * out);
    if (m)
      for (size_t jj = j; jj < j + mr; jj++) {
        const float* v = res + jj * out;
        if (jj >= full && !folded) fold();
        float* acc = jj < full ? lanes.data() + (jj % 8) * out : nrm.data();
        for (size_t i = 0; i < out; i++) {
          const float sq = v[i] * v[i];
          acc[i] = acc[i] + sq;
        }
      }
    j += mr;
  }
  if (!m) return;
  if (!folded) fold();
  for (size_t i = 0; i < out; i++) nrm[i] = m[i] / std::sqrt(nrm[i]);
  for (size_t j = 0; j < inn; j++)
    for (size_t i = 0; i < out; i++) res[j * out + i] = nrm[i] * res[j * out + i];
}

}  // namespace ckpt
