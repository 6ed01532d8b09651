// CRC-32 and XXH3-128 for the write path (see checksum.h). Every output byte is CRC'd (DCP's zip records carry a
// CRC-32) and digested (the manifest): with zlib's crc32 (~5 GB/s here) and XXH3 in WebAssembly (~6 GB/s) those two
// alone cost 0.37 CPU s per GB written. Folding with carry-less multiplies reaches tens of GB/s.
#include "checksum.h"

#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define CKPT_X86 1
#endif

#define XXH_INLINE_ALL
#define XXH_NAMESPACE ckpt_sse2_
#include "../third_party/xxhash/xxhash.h"

namespace ckpt {
namespace {

// ---------------------------------------------------------------- CRC-32, byte tables (the reference tier)

uint32_t g_table[8][256];

void init_tables() {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    g_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++) g_table[t][i] = (g_table[t - 1][i] >> 8) ^ g_table[0][g_table[t - 1][i] & 0xff];
}

/** Raw (uninverted) reflected CRC state update, slicing by 8. */
uint32_t crc_raw_table(uint32_t s, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
    lo ^= s;
    s = g_table[7][lo & 0xff] ^ g_table[6][(lo >> 8) & 0xff] ^ g_table[5][(lo >> 16) & 0xff] ^ g_table[4][lo >> 24] ^
        g_table[3][hi & 0xff] ^ g_table[2][(hi >> 8) & 0xff] ^ g_table[1][(hi >> 16) & 0xff] ^ g_table[0][hi >> 24];
    p += 8;
    n -= 8;
  }
  while (n--) s = (s >> 8) ^ g_table[0][(s ^ *p++) & 0xff];
  return s;
}

// ---------------------------------------------------------------- folding constants
// A 128-bit lane holding message bits that sit D bits before the lane they fold into is multiplied, low qword by
// x^(D+32) mod P and high qword by x^(D-32) mod P (bit-reflected, shifted left by one: the reflected-domain form of
// Intel's "Fast CRC Computation Using PCLMULQDQ"). Computed here rather than copied; for D = 512 and 128 they are
// the kernel's crc32-pclmul R1/R2 (0x154442bd4, 0x1c6e41596) and R3/R4 (0x1751997d0, 0xccaa009e), which
// test/checksum.test.ts also checks through the results.

uint32_t reflect32(uint32_t v) {
  uint32_t r = 0;
  for (int i = 0; i < 32; i++) r |= ((v >> i) & 1u) << (31 - i);
  return r;
}

uint64_t fold_const(unsigned n) {
  uint32_t r = 1;  // x^0, normal bit order, P = 0x104C11DB7
  for (unsigned i = 0; i < n; i++) r = (r & 0x80000000u) ? (r << 1) ^ 0x04C11DB7u : r << 1;
  return static_cast<uint64_t>(reflect32(r)) << 1;
}

uint64_t K128[2], K512[2], K2048[2];

void init_consts() {
  K128[0] = fold_const(128 + 32); K128[1] = fold_const(128 - 32);
  K512[0] = fold_const(512 + 32); K512[1] = fold_const(512 - 32);
  K2048[0] = fold_const(2048 + 32); K2048[1] = fold_const(2048 - 32);
}

#ifdef CKPT_X86
// The folded 128-bit remainder V is congruent (mod P, at the same position) to the message prefix it replaced, so
// the raw CRC of V's 16 bytes followed by the rest equals the raw CRC of the message: no Barrett reduction needed.

__attribute__((target("pclmul,sse4.1"))) inline __m128i fold128(__m128i x, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11));
}

/** Folds the remaining 16-byte blocks into the 128-bit remainder `x`, then CRCs it and the tail bytes by table. */
__attribute__((target("pclmul,sse4.1"))) uint32_t finish128(__m128i x, __m128i k128, const uint8_t* p, size_t n) {
  while (n >= 16) {
    x = _mm_xor_si128(fold128(x, k128), _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    p += 16;
    n -= 16;
  }
  alignas(16) uint8_t v[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(v), x);
  return crc_raw_table(crc_raw_table(0, v, 16), p, n);
}

/** Raw CRC state update, 4 lanes of 128 bits (64 bytes per step). */
__attribute__((target("pclmul,sse4.1"))) uint32_t crc_raw_pclmul(uint32_t s, const uint8_t* p, size_t n) {
  if (n < 64) return crc_raw_table(s, p, n);
  const __m128i* q = reinterpret_cast<const __m128i*>(p);
  __m128i x0 = _mm_xor_si128(_mm_loadu_si128(q), _mm_cvtsi32_si128(static_cast<int>(s)));
  __m128i x1 = _mm_loadu_si128(q + 1), x2 = _mm_loadu_si128(q + 2), x3 = _mm_loadu_si128(q + 3);
  p += 64;
  n -= 64;
  const __m128i k512 = _mm_set_epi64x(static_cast<long long>(K512[1]), static_cast<long long>(K512[0]));
  while (n >= 64) {
    q = reinterpret_cast<const __m128i*>(p);
    x0 = _mm_xor_si128(fold128(x0, k512), _mm_loadu_si128(q));
    x1 = _mm_xor_si128(fold128(x1, k512), _mm_loadu_si128(q + 1));
    x2 = _mm_xor_si128(fold128(x2, k512), _mm_loadu_si128(q + 2));
    x3 = _mm_xor_si128(fold128(x3, k512), _mm_loadu_si128(q + 3));
    p += 64;
    n -= 64;
  }
  const __m128i k128 = _mm_set_epi64x(static_cast<long long>(K128[1]), static_cast<long long>(K128[0]));
  __m128i x = _mm_xor_si128(fold128(x0, k128), x1);
  x = _mm_xor_si128(fold128(x, k128), x2);
  x = _mm_xor_si128(fold128(x, k128), x3);
  return finish128(x, k128, p, n);
}

__attribute__((target("avx512f,avx512vl,avx512bw,vpclmulqdq,pclmul,sse4.1"))) inline __m512i fold512(__m512i x, __m512i k) {
  return _mm512_xor_si512(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11));
}

/** Raw CRC state update, 4 zmm accumulators of 4 lanes each (256 bytes per step). */
__attribute__((target("avx512f,avx512vl,avx512bw,vpclmulqdq,pclmul,sse4.1"))) uint32_t crc_raw_vpclmul(uint32_t s, const uint8_t* p, size_t n) {
  if (n < 512) return crc_raw_pclmul(s, p, n);
  __m512i x0 = _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_castsi128_si512(_mm_cvtsi32_si128(static_cast<int>(s))));
  __m512i x1 = _mm512_loadu_si512(p + 64), x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
  p += 256;
  n -= 256;
  const __m512i k2048 = _mm512_broadcast_i32x4(_mm_set_epi64x(static_cast<long long>(K2048[1]), static_cast<long long>(K2048[0])));
  while (n >= 256) {
    x0 = _mm512_xor_si512(fold512(x0, k2048), _mm512_loadu_si512(p));
    x1 = _mm512_xor_si512(fold512(x1, k2048), _mm512_loadu_si512(p + 64));
    x2 = _mm512_xor_si512(fold512(x2, k2048), _mm512_loadu_si512(p + 128));
    x3 = _mm512_xor_si512(fold512(x3, k2048), _mm512_loadu_si512(p + 192));
    p += 256;
    n -= 256;
  }
  // 4 accumulators 64 bytes apart → one, then its 4 lanes 16 bytes apart → one.
  const __m512i k512 = _mm512_broadcast_i32x4(_mm_set_epi64x(static_cast<long long>(K512[1]), static_cast<long long>(K512[0])));
  __m512i z = _mm512_xor_si512(fold512(x0, k512), x1);
  z = _mm512_xor_si512(fold512(z, k512), x2);
  z = _mm512_xor_si512(fold512(z, k512), x3);
  const __m128i k128 = _mm_set_epi64x(static_cast<long long>(K128[1]), static_cast<long long>(K128[0]));
  __m128i x = _mm512_extracti32x4_epi32(z, 0);
  x = _mm_xor_si128(fold128(x, k128), _mm512_extracti32x4_epi32(z, 1));
  x = _mm_xor_si128(fold128(x, k128), _mm512_extracti32x4_epi32(z, 2));
  x = _mm_xor_si128(fold128(x, k128), _mm512_extracti32x4_epi32(z, 3));
  return finish128(x, k128, p, n);
}
#endif

using CrcFn = uint32_t (*)(uint32_t, const uint8_t*, size_t);
struct CrcTier { const char* name; CrcFn fn; bool (*supported)(); };

bool always() { return true; }
#ifdef CKPT_X86
bool has_pclmul() { __builtin_cpu_init(); return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1"); }
bool has_vpclmul() {
  __builtin_cpu_init();
  return has_pclmul() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("vpclmulqdq");
}
const CrcTier kTiers[] = {{"vpclmul", crc_raw_vpclmul, has_vpclmul}, {"pclmul", crc_raw_pclmul, has_pclmul}, {"table", crc_raw_table, always}};
#else
const CrcTier kTiers[] = {{"table", crc_raw_table, always}};
#endif

const CrcTier* g_crc = nullptr;
const Xxh3Ops* g_xxh3 = nullptr;

void init_math() {
  static bool done = false;
  if (done) return;
  done = true;
  init_tables();
  init_consts();
}

/** Tables, constants and the best tiers, unless a tier was already chosen explicitly. */
void init_once() {
  init_math();
  if (!g_crc) set_crc_tier("auto");
  if (!g_xxh3) set_xxh3_tier("auto");
}

void* x_create() { XXH3_state_t* s = XXH3_createState(); if (s) XXH3_128bits_reset(s); return s; }
void x_update(void* s, const void* d, size_t n) { XXH3_128bits_update(static_cast<XXH3_state_t*>(s), d, n); }
void x_digest(void* s, uint8_t out[16]) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(static_cast<XXH3_state_t*>(s)));
  memcpy(out, c.digest, 16);
}
void x_destroy(void* s) { XXH3_freeState(static_cast<XXH3_state_t*>(s)); }

}  // namespace

uint32_t crc32(uint32_t crc, const uint8_t* buf, size_t len) {
  init_once();
  return ~g_crc->fn(~crc, buf, len);
}

const char* crc_tier() { init_once(); return g_crc->name; }

const char* set_crc_tier(const char* name) {
  init_math();
  g_crc = nullptr;
  for (const CrcTier& t : kTiers) {
    if ((strcmp(name, "auto") == 0 || strcmp(name, t.name) == 0) && t.supported()) { g_crc = &t; break; }
  }
  if (!g_crc) g_crc = &kTiers[sizeof(kTiers) / sizeof(kTiers[0]) - 1];
  return g_crc->name;
}

const Xxh3Ops& xxh3_sse2_ops() {
  static const Xxh3Ops ops{x_create, x_update, x_digest, x_destroy, "sse2"};
  return ops;
}

const Xxh3Ops& xxh3() { init_once(); return *g_xxh3; }

const char* set_xxh3_tier(const char* name) {
  bool avx2 = false;
#ifdef CKPT_X86
  __builtin_cpu_init();
  avx2 = __builtin_cpu_supports("avx2") && strcmp(xxh3_avx2_ops().name, "avx2") == 0;
#endif
  bool want_avx2 = strcmp(name, "avx2") == 0 || strcmp(name, "auto") == 0;
  g_xxh3 = (want_avx2 && avx2) ? &xxh3_avx2_ops() : &xxh3_sse2_ops();
  return g_xxh3->name;
}

}  // namespace ckpt
