// Manifest digests: published test vectors, and hashers taken from the pool in any order stay independent.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHasher, digestOf, parseDigest } from "../src/exec/digest.js";
import { CkptError } from "../src/errors.js";

test("published vectors: XXH3-128 of the empty input (seed 0) and SHA-256 of 'abc' (FIPS 180-2)", async () => {
  assert.equal(await digestOf("xxh128", new Uint8Array(0)), "99aa06d3014798d86001c324468d497f");
  assert.equal(await digestOf("sha256", Buffer.from("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
});

test("interleaved hashers (pool reuse) give the same digests as one-shot hashing; windows equal the whole", async () => {
  const data = Buffer.from(Array.from({ length: 3 << 20 }, (_, i) => (i * 2654435761) >>> 24));
  for (const alg of ["xxh128", "sha256"] as const) {
    const whole = await digestOf(alg, data);
    const a = await createHasher(alg);
    const b = await createHasher(alg);
    for (let o = 0; o < data.length; o += 1 << 20) {
      a.update(data.subarray(o, o + (1 << 20)));
      b.update(data.subarray(0, 10));
    }
    assert.equal(a.hex(), whole, alg);
    assert.equal(b.hex(), await digestOf(alg, Buffer.concat([data.subarray(0, 10), data.subarray(0, 10), data.subarray(0, 10)])), alg);
    assert.equal(await digestOf(alg, data), whole, `${alg} after reuse`);
  }
});

test("--digest: xxh128 by default, sha256 on request, anything else is a usage error", () => {
  assert.equal(parseDigest(undefined), "xxh128");
  assert.equal(parseDigest("sha256"), "sha256");
  assert.throws(() => parseDigest("md5"), (e: unknown) => e instanceof CkptError && e.code === "USAGE");
});

test("a hasher is finished by hex(): using it again is an error, not a corrupted pool", async () => {
  const h = await createHasher("xxh128");
  h.update(Buffer.from("abc"));
  const first = h.hex();
  assert.throws(() => h.hex(), /used after hex/);
  assert.throws(() => h.update(Buffer.from("x")), /used after hex/);
  const a = await createHasher("xxh128");
  const b = await createHasher("xxh128");
  assert.equal(a.update(Buffer.from("abc")).hex(), first);
  assert.equal(b.update(Buffer.from("abc")).hex(), first);
});
