// MXFP4 decode: every (nibble, scale) pair against the spec's formula worked in f64 (docs/numerics.md §10: value =
// E2M1[nibble] · 2^(scale − 127), E2M1 = [0, .5, 1, 1.5, 2, 3, 4, 6, −0, −.5, …, −6]), not against our own code;
// then the native kernel (every ISA tier) against the TypeScript reference on random boxes with partial groups,
// odd skips and strides, in bf16, f32 and f16. Values that are not finite must be reported, never written as inf.
import test from "node:test";
import assert from "node:assert/strict";
import { nativeKernelsFrom, referenceKernels, type Kernels } from "../src/kernels/index.js";
import { loadNative, nativeLoadError } from "../src/kernels/native.js";
import type { CastableDType } from "../src/dtypes.js";

const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];
const addon = loadNative();

function impls(): { label: string; k: Kernels; select(): void }[] {
  const out = [{ label: "typescript", k: referenceKernels, select: () => {} }];
  if (!addon) return out;
  const tiers = ["scalar", "avx2", "avx512"];
  const k = nativeKernelsFrom(addon);
  for (const isa of tiers.slice(0, tiers.indexOf(addon.bestIsa()) + 1)) out.push({ label: `native(${isa})`, k, select: () => void assert.equal(addon.setIsa(isa), isa) });
  return out;
}
test.after(() => { addon?.setIsa("auto"); });

const f64 = new Float64Array(1);
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** f32 bits of an f64 value that f32 represents exactly (asserted). */
function exactF32Bits(v: number): number {
  f32[0] = v;
  assert.ok(Object.is(f32[0], v), `${v} is not exactly representable in f32`);
  return u32[0]!;
}
void f64;

test("MXFP4: all 16 × 256 (nibble, scale) pairs equal E2M1[n] · 2^(s − 127); non-finite ones are reported", () => {
  // One row per scale: 32 values (one group) holding each nibble twice (bytes 0x10·n + n).
  const blocks = new Uint8Array(256 * 16);
  const scales = new Uint8Array(256);
  for (let s = 0; s < 256; s++) {
    scales[s] = s;
    for (let b = 0; b < 16; b++) blocks[s * 16 + b] = (b << 4) | b; // byte b: low nibble b, high nibble b
  }
  for (const impl of impls()) {
    impl.select();
    for (const dtype of ["F32", "BF16"] as const) {
      let checked = 0, reported = 0;
      for (let s = 0; s < 256; s++) {
        const out = new Uint8Array(32 * (dtype === "F32" ? 4 : 2));
        const bad = impl.k.mxfp4Decode(blocks.subarray(s * 16, s * 16 + 16), scales.subarray(s, s + 1), 1, 32, 0, 16, 1, out, dtype);
        // expected: the formula in f64 (exact); not finite in f32 when the scale is NaN (0xFF) or |v| ≥ 2^128
        let firstBad = -1;
        for (let c = 0; c < 32; c++) {
          const n = c >> 1; // value c sits in byte c >> 1 (low nibble first); both nibbles of byte b equal b
          const finite = s !== 255 && Math.abs(E2M1[n]! * 2 ** (s - 127)) < 2 ** 128;
          if (!finite) { if (firstBad < 0) firstBad = c; continue; }
          const want = E2M1[n]! * 2 ** (s - 127);
          const dv = new DataView(out.buffer);
          if (dtype === "F32") {
            assert.equal(dv.getUint32(c * 4, true), exactF32Bits(want), `${impl.label} F32 nibble ${n} scale ${s}`);
          } else {
            const got = dv.getUint16(c * 2, true);
            u32[0] = got << 16;
            assert.ok(Object.is(f32[0], want), `${impl.label} BF16 nibble ${n} scale ${s}: got 0x${got.toString(16)} = ${f32[0]}, want ${want}`);
          }
          checked++;
        }
        assert.equal(bad, firstBad, `${impl.label} ${dtype} scale ${s}: first non-finite value`);
        if (bad >= 0) reported++;
      }
      // scales 253, 254 overflow for the largest magnitudes; 255 is NaN
      assert.equal(reported, 3, `${impl.label} ${dtype}: scales reported`);
      assert.ok(checked > 16 * 250, `${impl.label}: ${checked} values checked`);
    }
  }
});

test("MXFP4: scale 253 overflows only for |E2M1| ≥ 4, scale 0 decodes to subnormals exactly", () => {
  // 4 · 2^126 = 2^128 overflows f32; 3 · 2^126 = 1.5 · 2^127 does not. 0.5 · 2^−127 = 2^−128 is an f32 subnormal.
  const blocks = new Uint8Array([0x65, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // values: 3 (0x5), 4 (0x6)
  for (const impl of impls()) {
    impl.select();
    const out = new Uint8Array(128);
    assert.equal(impl.k.mxfp4Decode(blocks, new Uint8Array([253]), 1, 1, 0, 16, 1, out, "F32"), -1);
    assert.equal(new DataView(out.buffer).getUint32(0, true), exactF32Bits(3 * 2 ** 126));
    assert.equal(impl.k.mxfp4Decode(blocks, new Uint8Array([253]), 1, 32, 0, 16, 1, out, "F32"), 1, impl.label);
    assert.equal(impl.k.mxfp4Decode(new Uint8Array(16).fill(0x91), new Uint8Array([0]), 1, 2, 0, 16, 1, out, "F32"), -1);
    assert.equal(new DataView(out.buffer).getUint32(0, true), exactF32Bits(0.5 * 2 ** -127), impl.label);
    assert.equal(new DataView(out.buffer).getUint32(4, true), exactF32Bits(-0.5 * 2 ** -127), impl.label);
  }
});

function lcg(seed: number): () => number {
  let x = seed >>> 0;
  return () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

test("MXFP4: native kernel = TypeScript reference on random boxes (skips, partial groups, strides, dtypes)", { skip: addon ? false : `native addon not built (${nativeLoadError()})` }, () => {
  const rnd = lcg(14);
  const ref = referenceKernels;
  for (let iter = 0; iter < 300; iter++) {
    const groupsPerRow = 1 + Math.floor(rnd() * 6);
    const rows = 1 + Math.floor(rnd() * 5);
    const skip = iter % 3 === 0 ? 0 : Math.floor(rnd() * 32);
    const cols = Math.max(0, Math.min(groupsPerRow * 32 - skip, Math.floor(rnd() * groupsPerRow * 32) + 1));
    const blockStride = groupsPerRow * 16 + Math.floor(rnd() * 3) * 16;
    const scaleStride = groupsPerRow + Math.floor(rnd() * 3);
    const blocks = new Uint8Array((rows - 1) * blockStride + groupsPerRow * 16);
    for (let i = 0; i < blocks.length; i++) blocks[i] = Math.floor(rnd() * 256);
    const scales = new Uint8Array((rows - 1) * scaleStride + groupsPerRow);
    // mostly ordinary scales, sometimes the edges (0, 1, 252, 253, 254, 255)
    const edges = [0, 1, 252, 253, 254, 255];
    for (let i = 0; i < scales.length; i++) scales[i] = rnd() < 0.1 ? edges[Math.floor(rnd() * edges.length)]! : 100 + Math.floor(rnd() * 50);
    for (const dtype of ["BF16", "F32", "F16"] as CastableDType[]) {
      const es = dtype === "F32" ? 4 : 2;
      const want = new Uint8Array(rows * cols * es);
      const wantBad = ref.mxfp4Decode(blocks, scales, rows, cols, skip, blockStride, scaleStride, want, dtype);
      for (const impl of impls().slice(1)) {
        impl.select();
        const got = new Uint8Array(rows * cols * es + 3).subarray(1, 1 + rows * cols * es); // misaligned on purpose
        const bad = impl.k.mxfp4Decode(blocks, scales, rows, cols, skip, blockStride, scaleStride, got, dtype);
        assert.equal(bad, wantBad, `${impl.label} ${dtype} iter ${iter}: first bad index`);
        assert.deepEqual(Buffer.from(got), Buffer.from(want), `${impl.label} ${dtype} iter ${iter} (rows ${rows} cols ${cols} skip ${skip})`);
      }
    }
  }
});
