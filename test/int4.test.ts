// INT4 pack-quantized decode (compressed-tensors `pack-quantized`, num_bits 4, symmetric; docs/numerics.md §11): every nibble
// under every BF16 scale against the spec's formula worked independently in f64 (w = (nibble − 8) · scale, the
// nibble order of compressed-tensors' pack_to_int32: value j of an I32 word at bits 4j), not against our own code;
// the exactness argument (f32 exact, bf16 not) checked on all of them; then the native kernel (every ISA tier)
// against the TypeScript reference on random boxes with partial groups, odd skips and strides.
import test from "node:test";
import assert from "node:assert/strict";
import { nativeKernelsFrom, referenceKernels, type Kernels } from "../src/kernels/index.js";
import { loadNative } from "../src/kernels/native.js";
import type { CastableDType } from "../src/dtypes.js";

const addon = loadNative();

function impls(): { label: string; k: Kernels; select(): void }[] {
  const out = [{ label: "typescript", k: referenceKernels, select: () => {} }];
  if (!addon?.int4Decode) return out;
  const tiers = ["scalar", "avx2", "avx512"];
  const k = nativeKernelsFrom(addon);
  for (const isa of tiers.slice(0, tiers.indexOf(addon.bestIsa()) + 1)) out.push({ label: `native(${isa})`, k, select: () => void assert.equal(addon.setIsa(isa), isa) });
  return out;
}
test.after(() => { addon?.setIsa("auto"); });

const dv = new DataView(new ArrayBuffer(8));
/** The value of BF16 bits, through the platform's own f32 decoding (bf16 = the top half of an f32). */
function bf16Value(h: number): number { dv.setUint32(0, h << 16 >>> 0); return dv.getFloat32(0); }
function f32Bits(x: number): number { dv.setFloat32(0, x); return dv.getUint32(0); }
function f32Value(u: number): number { dv.setUint32(0, u >>> 0); return dv.getFloat32(0); }

/**
 * BF16 round-to-nearest-even of a real value x (finite, |x| < 2^128), by comparing the two neighbouring BF16 values
 * in f64 (exact: both neighbours and x have ≤ 24 significant bits), not by the bit trick the kernels use.
 */
function bf16Nearest(x: number): number {
  if (x === 0) return Object.is(x, -0) ? 0x8000 : 0;
  const sign = x < 0 ? 0x8000 : 0;
  const a = Math.abs(x);
  // largest BF16 magnitude ≤ a: truncation of a's f32 bits (a is an exact f32 value here)
  const lo = f32Bits(a) >>> 16;
  // above the largest BF16 the next step is 2^128 (IEEE rounds as if the exponent range went on): that side is inf
  const vlo = bf16Value(lo), vhi = lo + 1 === 0x7f80 ? 2 ** 128 : bf16Value(lo + 1);
  if (vlo === a) return sign | lo;
  const dlo = a - vlo, dhi = vhi - a;
  const pick = dlo < dhi ? lo : dhi < dlo ? lo + 1 : (lo & 1 ? lo + 1 : lo);
  return sign | pick;
}

/** One row of 16 values holding nibbles 0..15 in order, packed as compressed-tensors does (LE I32, value j at bits 4j). */
function allNibbles(): Uint8Array {
  const words = new Uint32Array(2);
  for (let j = 0; j < 16; j++) words[j >> 3]! |= j << (4 * (j & 7));
  return new Uint8Array(words.buffer);
}

test("INT4: every nibble under every BF16 scale equals (nibble − 8) · scale; F32 exact, BF16 = one RNE rounding", () => {
  const packed = allNibbles();
  const N = 65536;
  // one row per scale, 16 values, group 16
  const rowsPacked = new Uint8Array(N * 8);
  const scales = new Uint8Array(N * 2);
  for (let s = 0; s < N; s++) { rowsPacked.set(packed, s * 8); scales[2 * s] = s & 255; scales[2 * s + 1] = s >>> 8; }
  const want32 = new Uint32Array(N * 16);
  const want16 = new Uint16Array(N * 16);
  const finite = new Uint8Array(N * 16);
  let inexactBf16 = 0;
  for (let s = 0; s < N; s++) {
    const sv = bf16Value(s);
    for (let n = 0; n < 16; n++) {
      const x = (n - 8) * sv; // f64: exact (≤ 11 significant bits)
      const i = s * 16 + n;
      if (!Number.isFinite(x) || Math.abs(x) >= 2 ** 128) continue;
      finite[i] = 1;
      assert.ok(Object.is(Math.fround(x), x), `f32 not exact for nibble ${n} scale 0x${s.toString(16)}`);
      want32[i] = f32Bits(x);
      want16[i] = bf16Nearest(x);
      if (bf16Value(want16[i]!) !== x) inexactBf16++;
    }
  }
  // the counter-example of the comment in reference.ts: q = 7, s = 0x3F81 (1 + 2^-7) is not a BF16 value
  assert.equal(7 * bf16Value(0x3f81), 7.0546875);
  assert.equal(bf16Value(want16[0x3f81 * 16 + 15]!), 7.0625);
  assert.ok(inexactBf16 > 0, "some products must be inexact in bf16");
  for (const impl of impls()) {
    impl.select();
    const o32 = new Uint8Array(N * 16 * 4), o16 = new Uint8Array(N * 16 * 2);
    const b32 = impl.k.int4Decode(rowsPacked, scales, N, 16, 0, 16, 8, 2, o32, "F32");
    const b16 = impl.k.int4Decode(rowsPacked, scales, N, 16, 0, 16, 8, 2, o16, "BF16");
    const firstBad = finite.indexOf(0);
    assert.equal(b32, firstBad, `${impl.label}: first non-finite index (F32)`);
    assert.equal(b16, firstBad, `${impl.label}: first non-finite index (BF16)`);
    const g32 = new Uint32Array(o32.buffer), g16 = new Uint16Array(o16.buffer);
    let mism = 0;
    for (let i = 0; i < N * 16; i++) {
      if (!finite[i]) continue;
      if (g32[i] !== want32[i] || g16[i] !== want16[i]) {
        if (mism++ < 3) assert.fail(`${impl.label}: nibble ${i % 16} scale 0x${(i >> 4).toString(16)}: f32 0x${g32[i]!.toString(16)} want 0x${want32[i]!.toString(16)}, bf16 0x${g16[i]!.toString(16)} want 0x${want16[i]!.toString(16)}`);
      }
    }
    assert.equal(mism, 0);
  }
  // signed zeros: q = 0 under a negative scale is −0, as the f32 multiply gives
  assert.equal(want32[0xbf80 * 16 + 8], 0x80000000);
  assert.equal(f32Value(want32[0x3f80 * 16]!), -8);
});

test("INT4: non-finite results are reported by index (NaN / inf scales, |q·s| ≥ 2^128), finite neighbours decoded", () => {
  const packed = allNibbles();
  const cases: [number, number][] = [[0x7fc0, 0], [0x7f80, 0], [0xff80, 0], [0x7f7f, 0], [0x7e00, 0]];
  for (const impl of impls()) {
    impl.select();
    for (const [s, firstBad] of cases) {
      const scales = new Uint8Array([s & 255, s >>> 8]);
      const out = new Uint8Array(16 * 4);
      const bad = impl.k.int4Decode(packed, scales, 1, 16, 0, 16, 8, 2, out, "F32");
      // 0x7E00 = 2^125: q = −8 gives −2^128 (overflow), every other q is finite
      assert.equal(bad, firstBad, `${impl.label} scale 0x${s.toString(16)}`);
    }
    // 0x7DFF · 8 < 2^128: all finite
    const out = new Uint8Array(16 * 4);
    assert.equal(impl.k.int4Decode(packed, new Uint8Array([0xff, 0x7d]), 1, 16, 0, 16, 8, 2, out, "F32"), -1);
    assert.equal(new DataView(out.buffer).getFloat32(0, true), -8 * bf16Value(0x7dff));
  }
});

/** Deterministic xorshift32. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x; };
}

test("INT4: native tiers equal the TypeScript reference on random boxes (skips, partial groups, strides, dtypes)", { skip: !addon?.int4Decode && "native addon without int4Decode" }, () => {
  const r = rng(1616);
  const k = nativeKernelsFrom(addon!);
  const tiers = ["scalar", "avx2", "avx512"].slice(0, ["scalar", "avx2", "avx512"].indexOf(addon!.bestIsa()) + 1);
  for (let t = 0; t < 300; t++) {
    const group = [32, 32, 16, 64, 8, 24, 128][r() % 7]!;
    const skip = r() % group;
    const rows = 1 + (r() % 5), cols = 1 + (r() % 200);
    const groups = Math.ceil((skip + cols) / group);
    const packedStride = Math.ceil((groups * group) / 8) * 4 + (r() % 3) * 4;
    const scaleStride = groups * 2 + (r() % 3) * 2;
    const packed = new Uint8Array((rows - 1) * packedStride + Math.ceil((skip + cols) / 2) + 8);
    for (let i = 0; i < packed.length; i++) packed[i] = r() & 255;
    const scales = new Uint8Array((rows - 1) * scaleStride + groups * 2);
    for (let i = 0; i < scales.length; i += 2) {
      // mostly ordinary scales, some edge ones (subnormal, tiny, huge, zero, negative, NaN)
      const pick = r() % 10;
      const s = pick < 6 ? 0x3800 + (r() % 0x0c00) : [0x0001, 0x007f, 0x0080, 0x7dff, 0x8000, 0xbc01, 0x7fc1][r() % 7]!;
      scales[i] = s & 255; scales[i + 1] = s >>> 8;
    }
    for (const dtype of ["F32", "BF16", "F16"] as CastableDType[]) {
      const es = dtype === "F32" ? 4 : 2;
      const want = new Uint8Array(rows * cols * es);
      const wantBad = referenceKernels.int4Decode(packed, scales, rows, cols, skip, group, packedStride, scaleStride, want, dtype);
      for (const isa of tiers) {
        assert.equal(addon!.setIsa(isa), isa);
        const got = new Uint8Array(rows * cols * es);
        const bad = k.int4Decode(packed, scales, rows, cols, skip, group, packedStride, scaleStride, got, dtype);
        assert.equal(bad, wantBad, `case ${t} ${isa} ${dtype}: bad index`);
        // values after a non-finite one are still written by both, but compare only where the reference is finite
        assert.deepEqual(Buffer.from(got), Buffer.from(want), `case ${t} ${isa} ${dtype} (group ${group}, skip ${skip}, ${rows}x${cols})`);
      }
    }
  }
});
