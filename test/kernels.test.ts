// Differential tests of the kernels: vectors (PyTorch 2.6) == TS reference == native (every ISA tier), byte for
// byte, NaNs included; gather/permutation against the spec's index formula and worked tables; dequant against
// the vectors and the torchtitan-layout.md §7.1 example; stats against a plain f64 computation.

import test from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { CASTABLE, type CastableDType } from "../src/dtypes.js";
import {
  getKernels, nativeKernelsFrom, permuteRows, referenceKernels, resetKernelsForTests, ropeRowIndex, slice2d, type Kernels,
} from "../src/kernels/index.js";
import { loadNative, nativeLoadError } from "../src/kernels/native.js";
import { cudaAvailable, cudaUnavailableReason } from "../src/kernels/cuda.js";
import {
  bf16ToF32Bits, bitsToF32, CAST_SIZE, e4m3ToF32Bits, e5m2ToF32Bits, f16ToF32Bits, f32ToBf16Bits, f32ToE4m3Bits,
  f32ToE5m2Bits, f32ToF16Bits,
} from "../src/kernels/reference.js";
import { benchKernels, formatBenchTable } from "../src/kernels/bench.js";
import { loadVectors, vectorsPath } from "./helpers/vectors.js";

const addon = loadNative();
const NATIVE_SKIP = addon ? false : `native addon not built (${nativeLoadError()}); run npm run build:native`;
const vectors = loadVectors();
const VECTORS_SKIP = vectors ? false : `vectors file not found (${vectorsPath() ?? "set CKPT_VECTORS"})`;

/** Every native ISA tier this CPU supports, each with a function that selects it. */
function nativeTiers(): { label: string; k: Kernels; select(): void }[] {
  if (!addon) return [];
  const best = addon.bestIsa();
  const tiers = ["scalar", "avx2", "avx512"].slice(0, ["scalar", "avx2", "avx512"].indexOf(best) + 1);
  const k = nativeKernelsFrom(addon);
  return tiers.map((isa) => ({ label: `native(${isa})`, k, select: () => assert.equal(addon.setIsa(isa), isa) }));
}

function allImpls(): { label: string; k: Kernels; select(): void }[] {
  return [{ label: "typescript", k: referenceKernels, select: () => {} }, ...nativeTiers()];
}

test.after(() => { addon?.setIsa("auto"); });

// ---- helpers ---------------------------------------------------------------------------------------------

const hex = (v: number, bytes: number) => "0x" + v.toString(16).toUpperCase().padStart(bytes * 2, "0");

function elem(buf: Uint8Array, size: number, i: number): number {
  let v = 0;
  for (let b = size - 1; b >= 0; b--) v = v * 256 + buf[i * size + b]!;
  return v;
}

/** Byte comparison per element with the report numerics.md §8 asks for. */
function assertSameElements(what: string, input: Uint8Array, inSize: number, expected: Uint8Array, actual: Uint8Array, outSize: number): void {
  assert.equal(actual.byteLength, expected.byteLength, `${what}: length`);
  const n = expected.byteLength / outSize;
  let first = -1, count = 0;
  for (let i = 0; i < n; i++) {
    let same = true;
    for (let b = 0; b < outSize; b++) if (expected[i * outSize + b] !== actual[i * outSize + b]) { same = false; break; }
    if (!same) { if (first < 0) first = i; count++; }
  }
  if (count > 0) {
    assert.fail(`${what}: first differing index ${first}, input ${hex(elem(input, inSize, first), inSize)}, ` +
      `expected ${hex(elem(expected, outSize, first), outSize)}, actual ${hex(elem(actual, outSize, first), outSize)}, ` +
      `${count} of ${n} elements differ`);
  }
}

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return x >>> 0; };
}

function randomBytes(n: number, seed: number): Uint8Array {
  const r = rng(seed), out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = r() & 0xff;
  return out;
}

function u32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(Uint32Array.from(values.map((v) => v >>> 0)).buffer);
}

const VECTOR_DTYPE: Record<string, CastableDType> = { F32: "F32", BF16: "BF16", F16: "F16", F8_E4M3: "F8_E4M3", F8_E5M2: "F8_E5M2" };

/** [input tensor, expected output tensor] for every cast the vectors file records. */
const VECTOR_CASTS: [string, string][] = [
  ["f32", "f32_to_bf16"], ["f32", "f32_to_f16"], ["f32", "f32_to_f8_e4m3"], ["f32", "f32_to_f8_e5m2"],
  ["f32_to_bf16", "bf16_to_f32"], ["f32_to_f16", "f16_to_f32"], ["f32_to_f8_e4m3", "f8_e4m3_to_f32"],
  ["f32_to_f8_e5m2", "f8_e5m2_to_f32"],
  ["all_bf16", "all_bf16_to_f32"], ["all_bf16", "all_bf16_to_f16"], ["all_f16", "all_f16_to_f32"],
  ["all_f16", "all_f16_to_bf16"], ["all_f8_e4m3", "all_f8_e4m3_to_f32"], ["all_f8_e4m3", "all_f8_e4m3_to_bf16"],
  ["all_f8_e5m2", "all_f8_e5m2_to_f32"],
];
const VECTOR_INPUTS_ONLY = new Set(["f32", "all_bf16", "all_f16", "all_f8_e4m3", "all_f8_e5m2", "dequant_w_f8_e4m3", "dequant_scale_inv_f32"]);
const VECTOR_DEQUANT = ["dequant_out_f32", "dequant_out_bf16"];

// ---- vectors -----------------------------------------------------------------------------------------------

test("the vectors file: every tensor is covered by a test", { skip: VECTORS_SKIP }, () => {
  const covered = new Set([...VECTOR_CASTS.flat(), ...VECTOR_INPUTS_ONLY, ...VECTOR_DEQUANT]);
  for (const name of vectors!.keys()) assert.ok(covered.has(name), `vectors tensor ${name} is not exercised`);
});

for (const impl of allImpls()) {
  test(`casts == vectors (${impl.label})`, { skip: VECTORS_SKIP || (impl.k.name === "native" && NATIVE_SKIP) }, () => {
    impl.select();
    for (const [inName, outName] of VECTOR_CASTS) {
      const input = vectors!.get(inName)!, expected = vectors!.get(outName)!;
      const s = VECTOR_DTYPE[input.dtype]!, d = VECTOR_DTYPE[expected.dtype]!;
      const n = input.bytes.byteLength / CAST_SIZE[s];
      const out = new Uint8Array(n * CAST_SIZE[d]);
      impl.k.cast(input.bytes, s, out, d, n);
      assertSameElements(`${outName} (${impl.label})`, input.bytes, CAST_SIZE[s], expected.bytes, out, CAST_SIZE[d]);
      // Misaligned views of both buffers (byteOffset 1) must give the same bytes.
      const src2 = new Uint8Array(input.bytes.byteLength + 1); src2.set(input.bytes, 1);
      const dst2 = new Uint8Array(out.byteLength + 3);
      impl.k.cast(src2.subarray(1), s, dst2.subarray(3), d, n);
      assertSameElements(`${outName} misaligned (${impl.label})`, input.bytes, CAST_SIZE[s], expected.bytes, dst2.subarray(3), CAST_SIZE[d]);
    }
  });

  test(`dequant == vectors (${impl.label})`, { skip: VECTORS_SKIP || (impl.k.name === "native" && NATIVE_SKIP) }, () => {
    impl.select();
    const w = vectors!.get("dequant_w_f8_e4m3")!, scale = vectors!.get("dequant_scale_inv_f32")!;
    const [R, C] = w.shape as [number, number];
    const scaleCols = scale.shape[1]!;
    for (const [name, d] of [["dequant_out_f32", "F32"], ["dequant_out_bf16", "BF16"]] as const) {
      const expected = vectors!.get(name)!;
      const ds = CAST_SIZE[d];
      const out = new Uint8Array(R * C * ds);
      impl.k.dequantBlock(w.bytes, "F8_E4M3", R, C, 0, 0, scale.bytes, scaleCols, 128, out, d);
      assertSameElements(`${name} (${impl.label})`, w.bytes, 1, expected.bytes, out, ds);
      // Boxes that straddle block edges, as a sharded read would pass them.
      for (const [r0, rn, c0, cn] of [[100, 190, 50, 120], [256, 44, 128, 72], [0, 300, 127, 2], [299, 1, 0, 200]] as const) {
        const box = new Uint8Array(rn * cn);
        const want = new Uint8Array(rn * cn * ds);
        for (let r = 0; r < rn; r++) {
          box.set(w.bytes.subarray((r0 + r) * C + c0, (r0 + r) * C + c0 + cn), r * cn);
          want.set(expected.bytes.subarray(((r0 + r) * C + c0) * ds, ((r0 + r) * C + c0 + cn) * ds), r * cn * ds);
        }
        const got = new Uint8Array(rn * cn * ds);
        impl.k.dequantBlock(box, "F8_E4M3", rn, cn, r0, c0, scale.bytes, scaleCols, 128, got, d);
        assertSameElements(`${name} box (${r0},${c0}) ${rn}x${cn} (${impl.label})`, box, 1, want, got, ds);
      }
    }
  });
}

// ---- spec-given values (numerics.md §2, §4, §6; torchtitan-layout.md §7.1) ---------------------------------

test("reference: numerics.md worked values", () => {
  const bf16Table: [number, number][] = [
    [0x3f808000, 0x3f80], [0x3f818000, 0x3f82], [0x3f808001, 0x3f81], [0x7f7f7fff, 0x7f7f], [0x7f7f8000, 0x7f80],
    [0x00008000, 0x0000], [0x00018000, 0x0002], [0x80000000, 0x8000],
    [0x7fc00000, 0xffff], [0xffc00000, 0xffff], [0x7f800001, 0xffff], [0x7fffffff, 0xffff],
  ];
  for (const [u, want] of bf16Table) assert.equal(f32ToBf16Bits(u), want, `f32->bf16 ${hex(u, 4)}`);
  const f16Table: [number, number][] = [[0x7fffffff, 0x7fff], [0x7f800001, 0x7e00], [0xffc00000, 0xfe00]];
  for (const [u, want] of f16Table) assert.equal(f32ToF16Bits(u), want, `f32->f16 NaN ${hex(u, 4)}`);
  const f = (x: number) => new Uint32Array(new Float32Array([x]).buffer)[0]!;
  assert.equal(f32ToF16Bits(f(65520)), 0x7c00);
  assert.equal(f32ToF16Bits(f(65519.99)), 0x7bff);
  assert.equal(f32ToF16Bits(f(2 ** -25)), 0x0000);
  assert.equal(f32ToF16Bits(0x33000001), 0x0001);
  assert.equal(f32ToE4m3Bits(f(464)), 0x7e);
  assert.equal(f32ToE4m3Bits(0x43e80001), 0x7f);
  assert.equal(f32ToE4m3Bits(f(-Infinity)), 0xff);
  assert.equal(f32ToE4m3Bits(f(2 ** -10)), 0x00);
  assert.equal(f32ToE5m2Bits(f(61440)), 0x7c);
  assert.equal(f32ToE5m2Bits(0x476fffff), 0x7b);
  assert.equal(f32ToE5m2Bits(f(2 ** -17)), 0x00);
  assert.equal(f32ToE5m2Bits(0xffc00000), 0xff);
  // bf16 -> f16 NaN rule on the widened value.
  assert.equal(f32ToF16Bits(bf16ToF32Bits(0x7f81)), 0x7e08);
  assert.equal(f32ToF16Bits(bf16ToF32Bits(0xffff)), 0xfff8);
  // decoding examples
  const v = (u: number) => bitsToF32(u);
  assert.equal(v(e4m3ToF32Bits(0x38)), 1); assert.equal(v(e4m3ToF32Bits(0x40)), 2); assert.equal(v(e4m3ToF32Bits(0x4c)), 6);
  assert.equal(v(e4m3ToF32Bits(0x01)), 2 ** -9); assert.equal(v(e4m3ToF32Bits(0x08)), 2 ** -6);
  assert.equal(e4m3ToF32Bits(0x7f), 0x7ff00000); assert.equal(e4m3ToF32Bits(0xff), 0xfff00000);
  assert.equal(v(e5m2ToF32Bits(0x3c)), 1); assert.equal(v(e5m2ToF32Bits(0x01)), 2 ** -16);
  assert.equal(f16ToF32Bits(0x7c01), 0x7fc02000);
});

test("NaN encodings depend on the source dtype (numerics.md §6)", () => {
  for (const impl of allImpls()) {
    if (impl.k.name === "native" && NATIVE_SKIP) continue;
    impl.select();
    const cases: [CastableDType, number[], CastableDType, number][] = [
      ["F32", [0x7fc00000], "BF16", 0xffff],
      ["F32", [0x7f800001], "BF16", 0xffff],
      ["F16", [0x7e00], "BF16", 0x7fc0],
      ["F16", [0xfc01], "BF16", 0x7fc0],
      ["F8_E4M3", [0xff], "BF16", 0x7fc0],
      ["F8_E5M2", [0xfd], "BF16", 0x7fc0],
      ["F32", [0xffc00000], "F8_E4M3", 0xff],
      ["F32", [0x7fc00000], "F8_E5M2", 0x7f],
      ["BF16", [0x7f81], "F16", 0x7e08],
      ["BF16", [0xffff], "F16", 0xfff8],
    ];
    for (const [s, [x], d, want] of cases) {
      const src = new Uint8Array(CAST_SIZE[s]);
      for (let b = 0; b < CAST_SIZE[s]; b++) src[b] = (x! >>> (8 * b)) & 0xff;
      const out = new Uint8Array(CAST_SIZE[d]);
      impl.k.cast(src, s, out, d, 1);
      assert.equal(elem(out, CAST_SIZE[d], 0), want, `${impl.label}: ${s} ${hex(x!, CAST_SIZE[s])} -> ${d}`);
    }
  }
});

test("dequant worked example (torchtitan-layout.md §7.1): 0x4C * 0x3DCCCCCD -> 0x3F19999A", () => {
  // R = 300, C = 200, scale_inv [3, 2]; element (260, 150) uses scale_inv[2][1].
  const scale = new Uint32Array(6).fill(0x3f800000);
  scale[2 * 2 + 1] = 0x3dcccccd;
  const w = new Uint8Array([0x4c]);
  for (const impl of allImpls()) {
    if (impl.k.name === "native" && NATIVE_SKIP) continue;
    impl.select();
    const out = new Uint8Array(4);
    impl.k.dequantBlock(w, "F8_E4M3", 1, 1, 260, 150, new Uint8Array(scale.buffer), 2, 128, out, "F32");
    assert.equal(elem(out, 4, 0), 0x3f19999a, impl.label);
    const bf = new Uint8Array(2);
    impl.k.dequantBlock(w, "F8_E4M3", 1, 1, 260, 150, new Uint8Array(scale.buffer), 2, 128, bf, "BF16");
    assert.equal(elem(bf, 2, 0), f32ToBf16Bits(0x3f19999a), impl.label);
  }
});

// ---- every dtype pair: native tiers vs reference on random data and edge cases ---------------------------------

const EDGE_F32 = [
  0, 0x80000000, 0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0x7fa00000,
  0x00000001, 0x807fffff, 0x00800000, 0x7f7fffff, 0xff7fffff, 0x3f808000, 0x3f818000, 0x7f7f8000, 0x00008000,
  0x00018000, 0x477ff000, 0x477fefff, 0x33000000, 0x33000001, 0x387fc000, 0x38800000, 0x43e80000, 0x43e80001,
  0x43f00000, 0x3a800000, 0x3a800001, 0x3b000000, 0x3c7fffff, 0x3c800000, 0x47700000, 0x476fffff, 0x37800000,
  0x37800001, 0x37000000, 0x3f800000, 0xbf800000, 0x44000000, 0x47800000,
];

/** Random bit patterns (all encodings, NaNs included) followed by the edge cases narrowed to the dtype. */
function testInput(d: CastableDType, n: number, seed: number): Uint8Array {
  const size = CAST_SIZE[d];
  const buf = randomBytes((n + EDGE_F32.length) * size, seed);
  for (let i = 0; i < EDGE_F32.length; i++) {
    const u = EDGE_F32[i]!;
    const v = d === "F32" ? u : d === "BF16" ? (u >>> 16) : d === "F16" ? f32ToF16Bits(u) : d === "F8_E4M3" ? f32ToE4m3Bits(u) : f32ToE5m2Bits(u);
    for (let b = 0; b < size; b++) buf[(n + i) * size + b] = (v >>> (8 * b)) & 0xff;
  }
  return buf;
}

test("every dtype pair: native == reference on random bits and edge cases", { skip: NATIVE_SKIP }, () => {
  for (const s of CASTABLE) {
    for (const d of CASTABLE) {
      for (const n of [0, 1, 7, 31, 33, 1000, 20011]) {
        const input = testInput(s, n, 1 + n * 31 + s.length * 7 + d.length);
        const total = n + EDGE_F32.length;
        const want = new Uint8Array(total * CAST_SIZE[d]);
        referenceKernels.cast(input, s, want, d, total);
        for (const t of nativeTiers()) {
          t.select();
          const got = new Uint8Array(total * CAST_SIZE[d]);
          t.k.cast(input, s, got, d, total);
          assertSameElements(`${s}->${d} n=${total} (${t.label})`, input, CAST_SIZE[s], want, got, CAST_SIZE[d]);
        }
      }
    }
  }
});

test("reference: bf16/f16 -> f8 equal the f32 rule on the exact widening; exhaustive 16-bit sources", () => {
  for (const s of ["BF16", "F16"] as const) {
    const n = 65536;
    const src = new Uint8Array(new Uint16Array(n).map((_, i) => i).buffer);
    const wide = new Uint8Array(n * 4);
    referenceKernels.cast(src, s, wide, "F32", n);
    for (const d of ["F8_E4M3", "F8_E5M2", "F16", "BF16"] as const) {
      if (d === s) continue;
      const direct = new Uint8Array(n * CAST_SIZE[d]);
      referenceKernels.cast(src, s, direct, d, n);
      const w32 = new Uint32Array(wide.buffer);
      const via = new Uint8Array(n * CAST_SIZE[d]);
      for (let i = 0; i < n; i++) {
        const u = w32[i]!;
        const isNan = (u & 0x7fffffff) > 0x7f800000;
        const v = d === "F8_E4M3" ? f32ToE4m3Bits(u) : d === "F8_E5M2" ? f32ToE5m2Bits(u) : d === "F16" ? f32ToF16Bits(u) : isNan ? 0x7fc0 : f32ToBf16Bits(u);
        for (let b = 0; b < CAST_SIZE[d]; b++) via[i * CAST_SIZE[d] + b] = (v >>> (8 * b)) & 0xff;
      }
      assertSameElements(`${s}->${d} via f32`, src, 2, via, direct, CAST_SIZE[d]);
      if (addon) {
        for (const t of nativeTiers()) {
          t.select();
          const got = new Uint8Array(n * CAST_SIZE[d]);
          t.k.cast(src, s, got, d, n);
          assertSameElements(`${s}->${d} exhaustive (${t.label})`, src, 2, direct, got, CAST_SIZE[d]);
        }
      }
    }
  }
});

// ---- gather / permutation ----------------------------------------------------------------------------------

/** Naive HF->TT index straight from torchtitan-layout.md §3.2: tt[h*hd + 2j + c] = hf[h*hd + c*hd/2 + j]. */
function naiveRope(heads: number, hd: number, dir: "hf_to_tt" | "tt_to_hf"): number[] {
  const rows = heads * hd;
  const idx = new Array<number>(rows).fill(-1);
  for (let r = 0; r < rows; r++) {
    const h = Math.floor(r / hd), within = r % hd;
    if (dir === "hf_to_tt") idx[r] = h * hd + (within % 2) * (hd / 2) + Math.floor(within / 2);   // TT row r takes HF row
    else idx[r] = h * hd + 2 * (within % (hd / 2)) + Math.floor(within / (hd / 2));             // HF row r takes TT row
  }
  return idx;
}

test("ropeRowIndex: worked tables of torchtitan-layout.md §3.3", () => {
  assert.deepEqual([...ropeRowIndex(2, 4, "hf_to_tt")], [0, 2, 1, 3, 4, 6, 5, 7]);
  assert.deepEqual([...ropeRowIndex(2, 4, "tt_to_hf")], [0, 2, 1, 3, 4, 6, 5, 7]);
  assert.deepEqual([...ropeRowIndex(1, 8, "hf_to_tt")], [0, 4, 1, 5, 2, 6, 3, 7]);
  assert.deepEqual([...ropeRowIndex(1, 8, "tt_to_hf")], [0, 2, 4, 6, 1, 3, 5, 7]);
  for (const [h, hd] of [[3, 8], [4, 8], [2, 8], [5, 128], [1, 2]] as const) {
    for (const dir of ["hf_to_tt", "tt_to_hf"] as const) assert.deepEqual([...ropeRowIndex(h, hd, dir)], naiveRope(h, hd, dir), `${h}x${hd} ${dir}`);
  }
  assert.throws(() => ropeRowIndex(2, 7, "hf_to_tt"), RangeError);
});

for (const impl of allImpls()) {
  test(`gatherRows: q/k permutation, GQA, column windows, casts (${impl.label})`, { skip: impl.k.name === "native" && NATIVE_SKIP }, () => {
    impl.select();
    const k = impl.k;
    // GQA (§3.3): n_heads 4, n_kv_heads 2, hd 8: wq 32 rows as 4 heads, wk 16 rows as 2 heads. Each row holds its
    // own index in every column, so the output spells the permutation.
    for (const [heads, cols] of [[4, 5], [2, 3]] as const) {
      const hd = 8, rows = heads * hd;
      const src = new Float32Array(rows * cols).map((_, i) => Math.floor(i / cols));
      for (const dir of ["hf_to_tt", "tt_to_hf"] as const) {
        const dst = new Float32Array(rows * cols);
        permuteRows(k, new Uint8Array(src.buffer), "F32", cols, ropeRowIndex(heads, hd, dir), new Uint8Array(dst.buffer));
        const expect = naiveRope(heads, hd, dir);
        for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) assert.equal(dst[r * cols + c], expect[r], `${dir} row ${r}`);
      }
      // Round trip HF -> TT -> HF is the identity, bit for bit (bf16 with NaN payloads).
      const raw = randomBytes(rows * cols * 2, 77 + heads);
      const tt = new Uint8Array(raw.byteLength), back = new Uint8Array(raw.byteLength);
      permuteRows(k, raw, "BF16", cols, ropeRowIndex(heads, hd, "hf_to_tt"), tt);
      permuteRows(k, tt, "BF16", cols, ropeRowIndex(heads, hd, "tt_to_hf"), back);
      assert.deepEqual(back, raw);
    }
    // Worked table (hd = 8) as literal expected rows.
    {
      const src = new Uint16Array(8).map((_, i) => 0x3f80 + i);
      const dst = new Uint16Array(8);
      permuteRows(k, new Uint8Array(src.buffer), "BF16", 1, ropeRowIndex(1, 8, "hf_to_tt"), new Uint8Array(dst.buffer));
      assert.deepEqual([...dst].map((v) => v - 0x3f80), [0, 4, 1, 5, 2, 6, 3, 7]);
      permuteRows(k, new Uint8Array(src.buffer), "BF16", 1, ropeRowIndex(1, 8, "tt_to_hf"), new Uint8Array(dst.buffer));
      assert.deepEqual([...dst].map((v) => v - 0x3f80), [0, 2, 4, 6, 1, 3, 5, 7]);
    }
    // Column window + cast against a per-element naive computation with the reference scalar functions.
    for (const [s, d] of [["BF16", "F32"], ["F32", "BF16"], ["F16", "F8_E4M3"], ["BF16", "BF16"], ["F8_E5M2", "F16"], ["F32", "F16"]] as const) {
      const rows = 24, rowElems = 70, c0 = 13, cw = 41;
      const src = randomBytes(rows * rowElems * CAST_SIZE[s], 5 + rows);
      const idx = Int32Array.from(naiveRope(3, 8, "tt_to_hf"));
      const got = new Uint8Array(rows * cw * CAST_SIZE[d]);
      k.gatherRows(src, s, rowElems, idx, c0, cw, got, d);
      const want = new Uint8Array(got.byteLength);
      for (let i = 0; i < rows; i++) {
        for (let c = 0; c < cw; c++) {
          const off = (idx[i]! * rowElems + c0 + c) * CAST_SIZE[s];
          referenceKernels.cast(src.subarray(off, off + CAST_SIZE[s]), s, want.subarray((i * cw + c) * CAST_SIZE[d]), d, 1);
        }
      }
      assertSameElements(`gather ${s}->${d} (${impl.label})`, got, CAST_SIZE[d], want, got, CAST_SIZE[d]);
    }
    // slice2d: a Shard(1) column slice and a row range.
    {
      const R = 6, C = 10;
      const src = new Float32Array(R * C).map((_, i) => i);
      const dst = new Float32Array(3 * 4);
      slice2d(k, new Uint8Array(src.buffer), "F32", C, 2, 3, 5, 4, new Uint8Array(dst.buffer));
      assert.deepEqual([...dst], [25, 26, 27, 28, 35, 36, 37, 38, 45, 46, 47, 48]);
    }
    // Bounds are checked, not trusted.
    const src = new Uint8Array(4 * 8 * 2);
    assert.throws(() => k.gatherRows(src, "BF16", 8, Int32Array.from([0, 4]), 0, 8, new Uint8Array(64), "BF16"), RangeError);
    assert.throws(() => k.gatherRows(src, "BF16", 8, Int32Array.from([0]), 4, 5, new Uint8Array(64), "BF16"), RangeError);
    assert.throws(() => k.gatherRows(src, "BF16", 8, Int32Array.from([0, 1]), 0, 8, new Uint8Array(16), "BF16"), RangeError);
    assert.throws(() => k.cast(new Uint8Array(3), "F32", new Uint8Array(8), "BF16", 1), RangeError);
  });
}

test("dequant: native == reference on random e4m3/e5m2 boxes, every output dtype", { skip: NATIVE_SKIP }, () => {
  const R = 333, C = 270, block = 128;
  const sr = Math.ceil(R / block), sc = Math.ceil(C / block);
  const scale = new Float32Array(sr * sc).map((_, i) => [0.1, 3.5e-5, 1e4, 2 ** -130, 7.25, 1e-3, 0.5, 448, 1 / 3][i % 9]!);
  const scaleBytes = new Uint8Array(scale.byteLength + 1);
  scaleBytes.set(new Uint8Array(scale.buffer), 1); // misaligned on purpose
  for (const wd of ["F8_E4M3", "F8_E5M2"] as const) {
    const w = randomBytes(R * C, wd.length * 13);
    for (const d of CASTABLE) {
      for (const [r0, rn, c0, cn] of [[0, R, 0, C], [5, 200, 100, 170], [128, 1, 127, 3]] as const) {
        const box = new Uint8Array(rn * cn);
        for (let r = 0; r < rn; r++) box.set(w.subarray((r0 + r) * C + c0, (r0 + r) * C + c0 + cn), r * cn);
        const want = new Uint8Array(rn * cn * CAST_SIZE[d]);
        referenceKernels.dequantBlock(box, wd, rn, cn, r0, c0, scaleBytes.subarray(1), sc, block, want, d);
        for (const t of nativeTiers()) {
          t.select();
          const got = new Uint8Array(want.byteLength);
          t.k.dequantBlock(box, wd, rn, cn, r0, c0, scaleBytes.subarray(1), sc, block, got, d);
          assertSameElements(`dequant ${wd}->${d} box (${r0},${c0}) (${t.label})`, box, 1, want, got, CAST_SIZE[d]);
        }
      }
    }
  }
});

test("dequant: NaN/inf/zero scales and NaN/inf weights give the specified bits (every impl)", () => {
  // 256 x 256, block 128: scales [NaN payload, -inf, 0, -0]; weights cover every fp8 code in each block.
  const N = 256, block = 128;
  const scale = Uint32Array.from([0x7f800123, 0xff800000, 0x00000000, 0x80000000]);
  const scaleBytes = new Uint8Array(scale.buffer);
  for (const wd of ["F8_E4M3", "F8_E5M2"] as const) {
    const w = new Uint8Array(N * N).map((_, i) => (i * 7 + (i >> 8)) & 0xff);
    const want = new Uint8Array(N * N * 4);
    referenceKernels.dequantBlock(w, wd, N, N, 0, 0, scaleBytes, 2, block, want, "F32");
    const wantU = new Uint32Array(want.buffer);
    const widen = wd === "F8_E4M3" ? e4m3ToF32Bits : e5m2ToF32Bits;
    for (let i = 0; i < N * N; i++) {
      const a = widen(w[i]!), s = scale[Math.floor(Math.floor(i / N) / block) * 2 + Math.floor((i % N) / block)]!;
      const aNan = (a & 0x7fffffff) > 0x7f800000, sNan = (s & 0x7fffffff) > 0x7f800000;
      if (aNan) assert.equal(wantU[i], (a | 0x400000) >>> 0);
      else if (sNan) assert.equal(wantU[i], 0x7fc00123);
      else if ((a & 0x7fffffff) === 0x7f800000 && (s & 0x7fffffff) === 0) assert.equal(wantU[i], 0xffc00000);
    }
    for (const d of CASTABLE) {
      const ref = new Uint8Array(N * N * CAST_SIZE[d]);
      referenceKernels.dequantBlock(w, wd, N, N, 0, 0, scaleBytes, 2, block, ref, d);
      for (const t of nativeTiers()) {
        t.select();
        const got = new Uint8Array(ref.byteLength);
        t.k.dequantBlock(w, wd, N, N, 0, 0, scaleBytes, 2, block, got, d);
        assertSameElements(`dequant special ${wd}->${d} (${t.label})`, w, 1, ref, got, CAST_SIZE[d]);
      }
    }
  }
});

// ---- stats ---------------------------------------------------------------------------------------------------

function naiveStats(src: Uint8Array, d: CastableDType, n: number) {
  const widen = { F32: (x: number) => x, BF16: bf16ToF32Bits, F16: f16ToF32Bits, F8_E4M3: e4m3ToF32Bits, F8_E5M2: e5m2ToF32Bits }[d];
  const size = CAST_SIZE[d];
  let min = Infinity, max = -Infinity, sum = 0, sumSq = 0, absSum = 0, nan = 0, inf = 0, ovf = 0, unf = 0, zeros = 0, finite = 0;
  for (let i = 0; i < n; i++) {
    const x = bitsToF32(widen(elem(src, size, i)));
    if (Number.isNaN(x)) { nan++; continue; }
    if (!Number.isFinite(x)) { inf++; continue; }
    finite++;
    if (x === 0) zeros++;
    else if (Math.abs(x) >= 65520) ovf++;
    else if (Math.abs(x) <= 2 ** -25) unf++;
    min = Math.min(min, x); max = Math.max(max, x);
    sum += x; sumSq += x * x; absSum += Math.abs(x);
  }
  return { count: n, min: finite ? min : NaN, max: finite ? max : NaN, sum, sumSq, absSum, nan, inf, f16Overflow: ovf, f16Underflow: unf, zeros };
}

test("stats == straightforward f64 computation (every impl, every dtype)", () => {
  for (const d of CASTABLE) {
    for (const n of [0, 5, 4099, 10000]) {
      const src = testInput(d, n, 99 + n);
      const total = n + EDGE_F32.length;
      const want = naiveStats(src, d, total);
      for (const impl of allImpls()) {
        if (impl.k.name === "native" && NATIVE_SKIP) continue;
        impl.select();
        const got = impl.k.stats(src, d, total);
        const what = `${d} n=${total} (${impl.label})`;
        for (const key of ["count", "nan", "inf", "f16Overflow", "f16Underflow", "zeros"] as const) assert.equal(got[key], want[key], `${what}: ${key}`);
        for (const key of ["min", "max"] as const) {
          assert.ok(Number.isNaN(want[key]) ? Number.isNaN(got[key]) : got[key] == want[key], `${what}: ${key} ${got[key]} != ${want[key]}`);
        }
        const tol = 1e-12 * Math.max(want.absSum, 1e-300) * Math.max(1, total / 1000);
        assert.ok(Math.abs(got.sum - want.sum) <= tol, `${what}: sum ${got.sum} vs ${want.sum}`);
        assert.ok(Math.abs(got.sumSq - want.sumSq) <= 1e-12 * Math.max(want.sumSq, 1e-300) * Math.max(1, total / 1000), `${what}: sumSq ${got.sumSq} vs ${want.sumSq}`);
      }
    }
  }
  // Misaligned f32 view and an all-NaN input.
  const f = new Float32Array([1, -2, 3.5, NaN, Infinity, 1e-9, 70000]);
  const mis = new Uint8Array(f.byteLength + 1); mis.set(new Uint8Array(f.buffer), 1);
  for (const impl of allImpls()) {
    if (impl.k.name === "native" && NATIVE_SKIP) continue;
    impl.select();
    const st = impl.k.stats(mis.subarray(1), "F32", 7);
    assert.deepEqual([st.min, st.max, st.sum, st.nan, st.inf, st.f16Overflow, st.f16Underflow], [-2, 70000, 70002.5 + Math.fround(1e-9), 1, 1, 1, 1], impl.label);
    const allNan = impl.k.stats(new Uint8Array(new Uint16Array([0x7fc1, 0xffff]).buffer), "BF16", 2);
    assert.ok(Number.isNaN(allNan.min) && Number.isNaN(allNan.max) && allNan.nan === 2 && allNan.sum === 0, impl.label);
  }
});

// ---- selection -----------------------------------------------------------------------------------------------

test("getKernels: native when built; CKPT_NATIVE=0 selects the TypeScript kernels silently", () => {
  const saved = process.env.CKPT_NATIVE;
  try {
    process.env.CKPT_NATIVE = "0";
    resetKernelsForTests();
    assert.equal(getKernels().name, "typescript");
    delete process.env.CKPT_NATIVE;
    resetKernelsForTests();
    if (addon) assert.equal(getKernels().name, "native");
  } finally {
    if (saved === undefined) delete process.env.CKPT_NATIVE; else process.env.CKPT_NATIVE = saved;
    resetKernelsForTests();
  }
  const url = new URL("../src/kernels/index.js", import.meta.url).href;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", `import { getKernels } from ${JSON.stringify(url)}; console.log(getKernels().name);`], {
    env: { ...process.env, CKPT_NATIVE: "0" }, encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), "typescript");
  assert.equal(r.stderr, "", "CKPT_NATIVE=0 must not warn");
});

test("--device cuda: GPU kernels match the reference, or a clear error without a device", () => {
  if (!cudaAvailable()) {
    assert.ok(cudaUnavailableReason());
    assert.throws(() => getKernels({ device: "cuda" }), (e: Error & { code?: string }) => e.code === "NATIVE" && /no usable CUDA device/.test(e.message));
    return;
  }
  const k = getKernels({ device: "cuda" });
  for (const s of CASTABLE) for (const d of CASTABLE) {
    const input = testInput(s, 5000, 3);
    const total = 5000 + EDGE_F32.length;
    const want = new Uint8Array(total * CAST_SIZE[d]), got = new Uint8Array(total * CAST_SIZE[d]);
    referenceKernels.cast(input, s, want, d, total);
    k.cast(input, s, got, d, total);
    assertSameElements(`cuda ${s}->${d}`, input, CAST_SIZE[s], want, got, CAST_SIZE[d]);
  }
  if (vectors) {
    const w = vectors.get("dequant_w_f8_e4m3")!, scale = vectors.get("dequant_scale_inv_f32")!;
    for (const [name, d] of [["dequant_out_f32", "F32"], ["dequant_out_bf16", "BF16"]] as const) {
      const out = new Uint8Array(300 * 200 * CAST_SIZE[d]);
      k.dequantBlock(w.bytes, "F8_E4M3", 300, 200, 0, 0, scale.bytes, 2, 128, out, d);
      assertSameElements(`cuda ${name}`, w.bytes, 1, vectors.get(name)!.bytes, out, CAST_SIZE[d]);
    }
  }
});

test("benchKernels: smoke run", async () => {
  const rows = await benchKernels({ bytes: 1 << 16, seconds: 0.001, impls: ["native", "typescript"] });
  assert.ok(rows.length > 0);
  for (const r of rows) assert.ok(r.gbps > 0 && r.memcpyGbps > 0 && r.ratio > 0, JSON.stringify(r));
  assert.match(formatBenchTable(rows), /cast bf16->f32/);
});
