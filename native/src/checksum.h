// Checksums for the write path: CRC-32 (zip's, as zlib computes it) with PCLMULQDQ / VPCLMULQDQ folding, and
// XXH3-128 (xxHash 0.8.1, vendored in third_party/xxhash) with runtime AVX2 dispatch. Bit-exact with zlib.crc32 and
// with hash-wasm's xxh128 (the TypeScript fallbacks); test/checksum.test.ts checks both on every tier.
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace ckpt {

/** zlib-compatible crc32(crc, buf, len). */
uint32_t crc32(uint32_t crc, const uint8_t* buf, size_t len);
/** CRC tier in use: "table", "pclmul", "vpclmul"; set_crc_tier("auto") picks the best. Returns the tier now in use. */
const char* crc_tier();
const char* set_crc_tier(const char* name);

struct Xxh3Ops {
  void* (*create)();
  void (*update)(void* state, const void* data, size_t len);
  /** Canonical (big-endian) 16-byte digest, as xxhsum and hash-wasm print it. */
  void (*digest)(void* state, uint8_t out[16]);
  void (*destroy)(void* state);
  const char* name;
};
/** The XXH3 implementation in use ("avx2" or "sse2"); set_xxh3_tier("auto") picks the best. */
const Xxh3Ops& xxh3();
const char* set_xxh3_tier(const char* name);

// Per-tier entry points (checksum_xxh3_avx2.cc is compiled for AVX2 by a target pragma).
const Xxh3Ops& xxh3_sse2_ops();
const Xxh3Ops& xxh3_avx2_ops();

}  // namespace ckpt
