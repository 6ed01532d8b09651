// Native CRC-32 and XXH3-128 (native/src/checksum.cc) against independent implementations: node's zlib.crc32 and
// hash-wasm's XXH3 (WebAssembly), on every native tier, over lengths around each folding boundary, unaligned starts,
// arbitrary initial CRCs and streaming updates split at random points; plus the published check values.
import assert from "node:assert/strict";
import { test } from "node:test";
import { crc32 as zlibCrc32 } from "node:zlib";
import { createXXHash128 } from "hash-wasm";
import { loadNative, nativeLoadError } from "../src/kernels/native.js";
import { checksumImpl, crc32, createXxh128 } from "../src/kernels/checksum.js";

const addon = loadNative();
const skip = !addon?.crc32 ? `native addon without checksums: ${nativeLoadError() ?? "rebuild it (npm run build:native)"}` : false;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

const r = rng(42);
const big = new Uint8Array((1 << 20) + 4096);
for (let i = 0; i < big.length; i++) big[i] = Math.floor(r() * 256);
// Lengths around the 16 / 64 / 256 / 512-byte folding boundaries, then large ones.
const LENGTHS = [0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 47, 48, 63, 64, 65, 79, 80, 127, 128, 129, 255, 256, 257, 319, 320,
  383, 511, 512, 513, 767, 768, 1023, 1024, 1025, 4095, 4096, 65537, 1 << 20];

test("published check values: CRC-32('123456789') = cbf43926, XXH3-128('') = 99aa06d3014798d86001c324468d497f", async () => {
  assert.equal(crc32(Buffer.from("123456789")).toString(16), "cbf43926");
  const h = await createXxh128();
  assert.equal(h.hex(), "99aa06d3014798d86001c324468d497f");
});

test("native CRC-32 = zlib.crc32 on every tier (lengths, offsets, initial values)", { skip }, () => {
  const tiers = ["table", "pclmul", "vpclmul"];
  try {
    for (const tier of tiers) {
      const got = addon!.setCrcTier!(tier);
      if (got !== tier) continue; // not supported on this CPU
      let n = 0;
      for (const len of LENGTHS) {
        for (const off of [0, 1, 5, 13]) {
          const b = big.subarray(off, off + len);
          for (const init of [0, 0xffffffff, 0x12345678]) {
            assert.equal(addon!.crc32!(b, init) >>> 0, zlibCrc32(b, init) >>> 0, `${tier}: len ${len} offset ${off} init ${init}`);
            n++;
          }
        }
      }
      for (let i = 0; i < 300; i++) {
        const off = Math.floor(r() * 4096);
        const len = Math.floor(r() * (big.length - off));
        const b = big.subarray(off, off + len);
        const init = Math.floor(r() * 2 ** 32);
        assert.equal(addon!.crc32!(b, init) >>> 0, zlibCrc32(b, init) >>> 0, `${tier}: random len ${len}`);
      }
      assert.ok(n > 400);
    }
  } finally {
    addon!.setCrcTier!("auto");
  }
});

test("native XXH3-128 = hash-wasm's on every tier, streamed in random pieces", { skip }, async () => {
  try {
    for (const tier of ["sse2", "avx2"]) {
      if (addon!.setXxh3Tier!(tier) !== tier) continue;
      for (const len of [...LENGTHS, 240, 241, 1 << 19]) {
        const b = big.subarray(3, 3 + len);
        const ref = await createXXHash128();
        ref.init();
        ref.update(b);
        const want = ref.digest("hex");
        const s = addon!.xxh3New!();
        // split into random pieces (XXH3's internal stripe/block buffering must not care)
        for (let o = 0; o < len;) {
          const n = Math.min(len - o, 1 + Math.floor(r() * 3000));
          addon!.xxh3Update!(s, b.subarray(o, o + n));
          o += n;
        }
        assert.equal(addon!.xxh3Digest!(s), want, `${tier}: len ${len}`);
      }
    }
  } finally {
    addon!.setXxh3Tier!("auto");
  }
});

test("a digested native XXH3 state refuses reuse", { skip }, () => {
  const s = addon!.xxh3New!();
  addon!.xxh3Digest!(s);
  assert.throws(() => addon!.xxh3Update!(s, big.subarray(0, 8)), /after its digest/);
});

test("the checksum module uses the native implementation when the addon has it", { skip }, () => {
  assert.equal(checksumImpl(), "native");
});
