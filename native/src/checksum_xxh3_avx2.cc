// XXH3-128 compiled for AVX2 (selected at run time by checksum.cc when the CPU has it). System headers come first,
// before the target pragma, so nothing shared with other translation units is compiled for AVX2.
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>
#include "checksum.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC target("avx2")
#define XXH_VECTOR 2 /* XXH_AVX2 */
#define CKPT_XXH3_AVX2 1
#endif
#define XXH_INLINE_ALL
#define XXH_NAMESPACE ckpt_avx2_
#include "../third_party/xxhash/xxhash.h"

namespace {
void* create() { return XXH3_createState(); }
void update(void* s, const void* d, size_t n) { XXH3_128bits_update(static_cast<XXH3_state_t*>(s), d, n); }
void digest(void* s, uint8_t out[16]) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(static_cast<XXH3_state_t*>(s)));
  memcpy(out, c.digest, 16);
}
void destroy(void* s) { XXH3_freeState(static_cast<XXH3_state_t*>(s)); }
void* create_reset() { void* s = create(); if (s) XXH3_128bits_reset(static_cast<XXH3_state_t*>(s)); return s; }
}  // namespace

#ifdef CKPT_XXH3_AVX2
#pragma GCC pop_options
#endif

namespace ckpt {
const Xxh3Ops& xxh3_avx2_ops() {
#ifdef CKPT_XXH3_AVX2
  static const Xxh3Ops ops{create_reset, update, digest, destroy, "avx2"};
#else
  static const Xxh3Ops ops{create_reset, update, digest, destroy, "sse2"};
#endif
  return ops;
}
}  // namespace ckpt
