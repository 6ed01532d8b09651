// Differential tests of the requantization encoders: the native ones (native/src/encode.cc) against the TypeScript
// ones (src/kernels/requantize.ts, the reference), byte for byte on every output (blocks / packed words, scales, the
// bad-group mask, the bad / first-bad / adopted counts), on deterministic random inputs and on the edge cases of
// the rules: ±0 groups, −0 nibbles, f32-subnormal amax, values one ulp off the grid, NaN / ±inf, amax near the
// f32 maximum, negative INT4 amax, zero groups, with and without a reference encoding to keep. A few expected
// values come from the formats' definitions (OCP MX E2M1 / E8M0; compressed-tensors' nibble = q + 8, BF16 eps),
// computed here by hand, so a change both tiers share cannot pass unnoticed. End to end, `--to hf --requantize`
// writes the same files on both tiers (and refuses with the same line).

import test from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeTinyGptOss } from "../src/fixtures/tiny-gpt-oss.js";
import { writeTinyKimi } from "../src/fixtures/tiny-kimi.js";
import { nativeKernelsFrom, referenceKernels, type Int4Encoded, type Kernels, type Mxfp4Encoded } from "../src/kernels/index.js";
import { loadNative, nativeLoadError, type NativeAddon } from "../src/kernels/native.js";
import { int4EncodeKeeping, mxfp4EncodeKeeping, mxfp4ScalesKeeping } from "../src/kernels/requantize.js";

const addon = loadNative();
const SKIP = addon?.mxfp4Encode ? false : `native encoders not built (${nativeLoadError() ?? "addon predates them"}); run npm run build:native`;
const native = (): Kernels => nativeKernelsFrom(addon!);
const ts = referenceKernels;
/** The addon's ISA tiers on this CPU (the encoders have a plain and an AVX2 pass; both must agree). */
const TIERS = addon ? ["scalar", "avx2", "avx512"].slice(0, ["scalar", "avx2", "avx512"].indexOf(addon.bestIsa()) + 1) : [];
/** fn under every ISA tier. */
function eachTier(fn: (isa: string) => void): void {
  try { for (const isa of TIERS) { assert.equal(addon!.setIsa(isa), isa); fn(isa); } } finally { addon?.setIsa("auto"); }
}

const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
type Dtype = "F32" | "BF16";

/** Deterministic uniform [0, 1) (LCG: reproducible across runs and tiers). */
function rng(seed: number): () => number {
  let x = seed >>> 0;
  return () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32);
}

const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
const fromBits = (u: number) => ((u32[0] = u), f32[0]!);
const bitsOf = (x: number) => ((f32[0] = x), u32[0]!);
/** The next f32 away from zero (one ulp off). */
const nextUp = (x: number) => fromBits(bitsOf(x) + 1);
/** BF16 RNE of an f32 value (what a BF16 output of q · s holds). */
const bf16 = (x: number) => { const u = bitsOf(x); return fromBits((((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) << 16) >>> 0); };

function sameEncoding(what: string, a: Mxfp4Encoded | Int4Encoded, b: Mxfp4Encoded | Int4Encoded): void {
  assert.deepEqual({ bad: b.bad, firstBad: b.firstBad, adopted: b.adopted }, { bad: a.bad, firstBad: a.firstBad, adopted: a.adopted }, `${what}: counts`);
  assert.deepEqual(b.badMask, a.badMask, `${what}: bad mask`);
  const [pa, pb] = "blocks" in a ? [a.blocks, (b as Mxfp4Encoded).blocks] : [a.packed, (b as Int4Encoded).packed];
  assert.ok(Buffer.from(pa).equals(Buffer.from(pb)), `${what}: ${"blocks" in a ? "blocks" : "packed"} differ at byte ${pa.findIndex((x, i) => x !== pb[i])}`);
  assert.ok(Buffer.from(a.scales.buffer, a.scales.byteOffset, a.scales.byteLength).equals(Buffer.from(b.scales.buffer, b.scales.byteOffset, b.scales.byteLength)), `${what}: scales`);
}

/** Native == TypeScript for an MXFP4 encode (full and scales-only), returning the TypeScript result. */
function mx(what: string, v: Float32Array, rows: number, cols: number, d: Dtype, ref?: { blocks: Uint8Array; scales: Uint8Array }): Mxfp4Encoded {
  const a = ts.mxfp4Encode(v, rows, cols, d, ref), scales = ts.mxfp4Scales(v, rows, cols, d, ref);
  eachTier((isa) => {
    sameEncoding(`mxfp4 ${what} ${d}${ref ? " ref" : ""} (${isa})`, a, native().mxfp4Encode(v, rows, cols, d, ref));
    assert.deepEqual(native().mxfp4Scales(v, rows, cols, d, ref), scales, `mxfp4 scales ${what} (${isa})`);
  });
  return a;
}

function i4(what: string, v: Float32Array, rows: number, cols: number, group: number, d: Dtype, ref?: { packed: Uint8Array; scale: Uint8Array }): Int4Encoded {
  const a = ts.int4Encode(v, rows, cols, group, d, ref);
  eachTier((isa) => sameEncoding(`int4 ${what} g${group} ${d}${ref ? " ref" : ""} (${isa})`, a, native().int4Encode(v, rows, cols, group, d, ref)));
  return a;
}

/** Values of random MXFP4 blocks and scales (a decode, by the definition: sign · E2M1 · 2^(scale − 127)). */
function mxfp4Values(rows: number, cols: number, r: () => number, scale = () => 100 + Math.floor(r() * 50)): { v: Float32Array; blocks: Uint8Array; scales: Uint8Array } {
  const G = rows * (cols / 32);
  const blocks = new Uint8Array(G * 16).map(() => Math.floor(r() * 256)), scales = new Uint8Array(G).map(scale);
  const v = new Float32Array(rows * cols);
  for (let i = 0; i < v.length; i++) {
    const nib = (blocks[i >> 1]! >> (4 * (i & 1))) & 15;
    v[i] = (nib & 8 ? -1 : 1) * E2M1[nib & 7]! * 2 ** (scales[i >> 5]! - 127);
  }
  return { v, blocks, scales };
}

/** Values of random INT4 groups q · s (s a positive BF16, q in [−8, 7]): compressed-tensors' dequantization. */
function int4Values(rows: number, cols: number, group: number, r: () => number, expRange = [110, 140]): { v: Float32Array; packed: Uint8Array; scale: Uint8Array } {
  const W = Math.ceil(cols / 8), S = Math.ceil(cols / group);
  const words = new Uint32Array(rows * W), sc = new Uint16Array(rows * S);
  for (let i = 0; i < sc.length; i++) sc[i] = ((expRange[0]! + Math.floor(r() * (expRange[1]! - expRange[0]!))) << 7) | Math.floor(r() * 128);
  const v = new Float32Array(rows * cols);
  for (let row = 0; row < rows; row++) for (let c = 0; c < cols; c++) {
    const nib = Math.floor(r() * 16);
    words[row * W + (c >> 3)]! |= nib << (4 * (c & 7));
    v[row * cols + c] = (nib - 8) * fromBits(sc[row * S + Math.floor(c / group)]! << 16);
  }
  return { v, packed: new Uint8Array(words.buffer), scale: new Uint8Array(sc.buffer) };
}

test("encoders: values from the formats' definitions (OCP MX E2M1/E8M0, compressed-tensors INT4), both tiers", { skip: SKIP }, () => {
  for (const k of [ts, native()]) {
    const v = new Float32Array(128);
    v[0] = 6 * 2 ** -4; v[1] = -0.5 * 2 ** -4; // amax 6·2^-4: amax/6 = 2^-4 → E8M0 byte 127 − 4; E2M1 6 = 0b0111, −0.5 = 0b1001
    v[33] = -0; // a ±0 group: byte 0, −0 is nibble 0b1000
    v[64] = 2 ** -127; // f32-subnormal amax: amax/6 rounds up to 2^-129, clamped to byte 1 (2^-126): 2^-127 = 0.5 · 2^-126
    v[96] = 2 ** -149; // the smallest subnormal: byte 1, 2^-149 / 2^-126 = 2^-23 is no E2M1 value
    const m = k.mxfp4Encode(v, 4, 32, "F32");
    assert.deepEqual([...m.scales], [123, 0, 1, 1], k.name);
    assert.deepEqual([m.blocks[0], m.blocks[16], m.blocks[32]], [0x07 | (0x09 << 4), 0x80, 0x01], k.name);
    assert.deepEqual([m.bad, m.firstBad, [...m.badMask]], [1, 3, [0, 0, 0, 1]], k.name);

    // INT4: w = q · s with s = 2^-6 (BF16 0x3C80), amax 8s negative → q = −8 (nibble 0); a zero group gets BF16 eps
    // 2^-7 (0x3C00) and nibbles 8 (q = 0) in every place
    const s = 2 ** -6, w = new Float32Array(40);
    w[0] = 7 * s; w[1] = -8 * s; w[2] = -3 * s;
    const q = k.int4Encode(w, 1, 40, 32, "F32");
    const words = new Uint32Array(q.packed.buffer, q.packed.byteOffset, 5);
    assert.deepEqual([...q.scales], [0x3c80, 0x3c00], k.name);
    assert.equal(words[0], (15 | (0 << 4) | (5 << 8) | 0x88888000) >>> 0, k.name);
    assert.equal(words[4], 0x88888888, k.name);
    assert.equal(q.bad, 0);
  }
});

test("mxfp4 encode: native == TypeScript on random quantized values, noise, values one ulp off, both dtypes", { skip: SKIP }, () => {
  const r = rng(1);
  for (const [rows, cols] of [[1, 32], [7, 96], [64, 256]] as const) {
    const { v } = mxfp4Values(rows, cols, r);
    for (const d of ["F32", "BF16"] as const) assert.equal(mx(`quantized ${rows}x${cols}`, v, rows, cols, d).bad, 0);
    // one value per few groups nudged one ulp off the grid: those groups (only) are bad, in order
    const off = v.slice();
    for (let g = 1; g < off.length / 32; g += 3) { const i = g * 32 + Math.floor(r() * 32); off[i] = off[i] === 0 ? 2 ** -149 : nextUp(off[i]!); }
    const e = mx(`off-grid ${rows}x${cols}`, off, rows, cols, "F32");
    assert.equal(e.bad, Math.floor((off.length / 32 + 1) / 3));
    if (e.bad) assert.equal(e.firstBad, 1);
    // random finite f32 bit patterns: almost every group is bad, and the bytes written before the bad pair agree
    const noise = new Float32Array(rows * cols).map(() => { let x; do x = fromBits(Math.floor(r() * 2 ** 32)); while (!Number.isFinite(x)); return x; });
    mx(`noise ${rows}x${cols}`, noise, rows, cols, "F32");
    // small integers: some groups exact, some not
    const ints = new Float32Array(rows * cols).map(() => Math.floor(r() * 13) - 6);
    mx(`integers ${rows}x${cols}`, ints, rows, cols, "BF16");
  }
});

test("mxfp4 encode: edge groups (±0, −0 nibbles, subnormal amax, NaN, ±inf, amax near the f32 maximum) agree", { skip: SKIP }, () => {
  const groups: number[][] = [
    Array(32).fill(0), Array(32).fill(-0), Array.from({ length: 32 }, (_, i) => (i % 3 ? 0 : -0)),
    [6, -0, 0, -6, ...Array(28).fill(-0)],
    [2 ** -149, ...Array(31).fill(0)], [2 ** -127, -(2 ** -128), 3 * 2 ** -128, ...Array(29).fill(0)],
    [1.5 * 2 ** -126, 2 ** -126, ...Array(30).fill(-0)], [fromBits(0x007fffff), ...Array(31).fill(0)],
    [NaN, ...Array(31).fill(0)], [NaN, 6, ...Array(30).fill(1)], [Infinity, ...Array(31).fill(0)], [-Infinity, 6, ...Array(30).fill(0)],
    [3.4028234663852886e38, ...Array(31).fill(0)], [1.5 * 2 ** 127, -(2 ** 127), 2 ** 126, ...Array(29).fill(0)],
    [4 * 2 ** 125, 6 * 2 ** 125, ...Array(30).fill(0)], [2 ** 127 * 1.75, ...Array(31).fill(0)],
    [6, 4, 3, 2, 1.5, 1, 0.5, 0, -6, -4, -3, -2, -1.5, -1, -0.5, -0, ...Array(16).fill(0.5)],
    // one binade below the grid, between its points, past its largest point (6 sets the scale 2^0)
    ...[0.25, 0.125, 0.375, 0.75, 1.25, 2.5, 5, 1.75].map((x) => [6, x, -x, ...Array(29).fill(0)]),
    [6.000000476837158, ...Array(31).fill(0)], [5.999999523162842, ...Array(31).fill(0)], [3.0000002384185791, ...Array(31).fill(1)],
  ];
  const v = new Float32Array(groups.flat());
  assert.equal(v.length, groups.length * 32);
  for (const d of ["F32", "BF16"] as const) {
    const e = mx("edges", v, groups.length, 32, d);
    assert.deepEqual([...e.scales.subarray(0, 4)], [0, 0, 0, 127], "±0 groups get byte 0; amax 6 gets 2^0");
    assert.equal(e.blocks[3 * 16], 0x87, "6 then −0");
    for (const g of [8, 9, 10, 11]) assert.equal(e.badMask[g], 1, `NaN / inf group ${g} is bad`);
  }
});

test("mxfp4 encode: references kept where they decode exactly (zero groups under any scale, inf), else the quantizer's", { skip: SKIP }, () => {
  const r = rng(2);
  const rows = 16, cols = 128, G = rows * 4;
  const { v, blocks, scales } = mxfp4Values(rows, cols, r);
  v.fill(0, 0, 32); blocks.fill(0, 0, 16); scales[0] = 125; // a zero group the source wrote under another scale
  v.fill(-0, 32, 64); blocks.fill(0x88, 16, 32); scales[1] = 3; // −0 everywhere, nibbles 8, a tiny scale
  v[64] = Infinity; blocks[32] = (blocks[32]! & 0xf0) | 7; scales[2] = 254; // 6 · 2^127 overflows f32 to inf
  v[96] = NaN; // never kept
  v[128] = 0.3; // a group no encoding has
  for (const d of ["F32", "BF16"] as const) {
    for (let i = 1; i < 32; i++) { const nib = (blocks[32 + (i >> 1)]! >> (4 * (i & 1))) & 15; v[64 + i] = (nib & 8 ? -1 : 1) * E2M1[nib & 7]! * 2 ** 127; }
    const kept = mx("source", v, rows, cols, d, { blocks, scales });
    assert.deepEqual([kept.scales[0], kept.scales[1], kept.scales[2]], [125, 3, 254]);
    assert.deepEqual([kept.badMask[2], kept.badMask[3], kept.badMask[4]], [0, 1, 1]);
    assert.ok(kept.adopted >= 3);
    // random references (rarely decoding), a reference with scale 255 (never kept), the encoder's own output
    mx("random", v, rows, cols, d, { blocks: new Uint8Array(G * 16).map(() => Math.floor(r() * 256)), scales: new Uint8Array(G).map(() => Math.floor(r() * 256)) });
    mx("nan scales", v, rows, cols, d, { blocks, scales: new Uint8Array(G).fill(255) });
    const own = mxfp4EncodeKeeping(v, rows, cols, d);
    assert.equal(mx("own", v, rows, cols, d, own).adopted, 0);
  }
});

test("int4 encode: native == TypeScript on random groups, off-grid values, BF16-rounded values, group shapes", { skip: SKIP }, () => {
  const r = rng(3);
  for (const [rows, cols, group] of [[1, 40, 32], [4, 256, 32], [3, 300, 128], [5, 36, 12], [2, 7, 7], [8, 64, 64]] as const) {
    const { v } = int4Values(rows, cols, group, r);
    assert.equal(i4("quantized", v, rows, cols, group, "F32").bad, 0);
    i4("quantized", v, rows, cols, group, "BF16");
    const off = v.slice();
    for (let i = 0; i < off.length; i += 29) off[i] = off[i] === 0 ? 2 ** -140 : nextUp(off[i]!);
    assert.ok(i4("off-grid", off, rows, cols, group, "F32").bad > 0);
    i4("bf16-rounded", v.map(bf16), rows, cols, group, "BF16");
    const noise = new Float32Array(rows * cols).map(() => (r() - 0.5) * 2 ** Math.floor(r() * 20 - 10));
    i4("noise", noise, rows, cols, group, "F32");
    // subnormal and huge scales
    i4("subnormal scales", int4Values(rows, cols, group, r, [0, 4]).v, rows, cols, group, "F32");
    i4("huge scales", int4Values(rows, cols, group, r, [240, 252]).v, rows, cols, group, "F32");
  }
});

test("int4 encode: edge groups (zero → BF16 eps, −0, NaN, ±inf, negative amax, ties) agree", { skip: SKIP }, () => {
  const s = 2 ** -5, z = (n: number) => Array(n).fill(0);
  const groups: number[][] = [
    z(8), [-0, ...z(7)], [NaN, ...z(7)], [NaN, s, ...z(6)], [Infinity, ...z(7)], [-Infinity, s, ...z(6)],
    [-8 * s, 7 * s, ...z(6)], [8 * s, ...z(7)], [-7 * s, 7 * s, ...z(6)], [7 * s, -7 * s, ...z(6)], [-3 * s, 5 * s, -6 * s, ...z(5)],
    [2 ** -149, ...z(7)], [2 ** -133 * 7, 2 ** -133, ...z(6)], [7 * fromBits(0x7f7f0000), ...z(7)], [fromBits(0x7f7fffff), ...z(7)],
    // s = 2^-130: 1/s is no f32, a smaller k's s (7 · 2^-130, q = 1) would also fit; the quantizer's is q = 7
    [7 * 2 ** -130, ...z(7)], [7 * 2 ** -130, -(2 ** -130), ...z(6)],
    [0.1, ...z(7)], [7 * s, nextUp(3 * s), ...z(6)], [1, 2, 3, 4, 5, 6, 7, -8],
  ];
  const v = new Float32Array(groups.flat());
  for (const d of ["F32", "BF16"] as const) {
    const e = i4("edges", v, groups.length, 8, 8, d);
    assert.equal(e.scales[0], 0x3c00, "zero group: BF16 eps");
    assert.deepEqual([...e.badMask.subarray(1, 6)], [1, 1, 1, 1, 1], "−0, NaN (also alone among zeros), ±inf groups are bad");
    assert.deepEqual([e.badMask[6], e.scales[6]], [0, bitsOf(s) >>> 16], "amax −8s: s");
  }
});

test("int4 encode: references kept where they decode exactly (negative or other scales, BF16-rounded values)", { skip: SKIP }, () => {
  const r = rng(4);
  for (const [rows, cols, group] of [[6, 128, 32], [3, 40, 8], [4, 36, 12]] as const) {
    const { v, packed, scale } = int4Values(rows, cols, group, r);
    const S = Math.ceil(cols / group), W = Math.ceil(cols / 8);
    const sc = new Uint16Array(scale.buffer), words = new Uint32Array(packed.buffer);
    // group 0: a negative source scale with the nibbles negated (q → −q) decodes to the same values
    sc[0] = sc[0]! | 0x8000;
    for (let c = 0; c < Math.min(group, cols); c++) {
      const sh = 4 * (c & 7), q = ((words[c >> 3]! >>> sh) & 15) - 8;
      const nq = q === -8 ? -8 : -q; // −(−8) is not a nibble: leave it (the group then stays the encoder's)
      words[c >> 3] = ((words[c >> 3]! & ~(15 << sh)) | ((nq + 8) << sh)) >>> 0;
      v[c] = nq * fromBits(sc[0] << 16);
    }
    // the last group of row 1: zeros under the source's scale
    for (let c = (S - 1) * group; c < cols; c++) { v[cols + c] = 0; words[W + (c >> 3)] = (words[W + (c >> 3)]! & ~(15 << (4 * (c & 7)))) | (8 << (4 * (c & 7))); }
    for (const d of ["F32", "BF16"] as const) {
      const vd = d === "BF16" ? v.map(bf16) : v;
      i4("source", vd, rows, cols, group, d, { packed, scale });
      i4("random", vd, rows, cols, group, d, { packed: new Uint8Array(rows * W * 4).map(() => Math.floor(r() * 256)), scale: new Uint8Array(rows * S * 2).map(() => Math.floor(r() * 256)) });
      const own = int4EncodeKeeping(vd, rows, cols, group, d);
      i4("own", vd, rows, cols, group, d, { packed: own.packed, scale: new Uint8Array(own.scales.buffer) });
    }
  }
});

test("native kernels fall back to the TypeScript encoders with an addon that predates them", { skip: SKIP }, () => {
  const { mxfp4Encode: _a, mxfp4Scales: _b, int4Encode: _c, ...older } = addon!;
  const k = nativeKernelsFrom(older as NativeAddon);
  assert.equal(k.mxfp4Encode, mxfp4EncodeKeeping);
  assert.equal(k.mxfp4Scales, mxfp4ScalesKeeping);
  assert.equal(k.int4Encode, int4EncodeKeeping);
  assert.notEqual(native().mxfp4Encode, mxfp4EncodeKeeping);
  assert.throws(() => native().mxfp4Encode(new Float32Array(48), 1, 48, "F32"), /48 columns is not a multiple of 32/);
  assert.throws(() => native().int4Encode(new Float32Array(8), 2, 8, 8, "F32"), /values too small/);
});

// ---- end to end: `--to hf --requantize` writes the same bytes (and refuses with the same line) on both tiers ----

const CLI = join(process.cwd(), "bin", "ckpt.js");
function ckpt(args: string[], tsTier: boolean): { status: number | null; stderr: string } {
  const env = { ...process.env, CKPT_NATIVE: tsTier ? "0" : "1" };
  const r = spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8", env });
  return { status: r.status, stderr: r.stderr };
}

/** `ckpt convert <tt> <out> --to hf --requantize <kind> --config <cfg>` on each tier: same exit, stderr and tensor files. */
function sameOnBothTiers(dir: string, tt: string, cfg: string, kind: "mxfp4" | "int4"): { status: number | null; stderr: string } {
  const runs = [false, true].map((tsTier) => {
    const out = join(dir, `out-${kind}-${tsTier ? "ts" : "native"}-${Math.random().toString(36).slice(2, 8)}`);
    const r = ckpt(["convert", tt, out, "--to", "hf", "--config", cfg, "--requantize", kind], tsTier);
    const files = existsSync(out) ? readdirSync(out).filter((f) => f.endsWith(".safetensors")).sort() : [];
    return { ...r, out, files };
  });
  const [n, t] = runs as [typeof runs[0], typeof runs[0]];
  assert.equal(n.status, t.status, `exit: native ${n.stderr} / typescript ${t.stderr}`);
  assert.equal(n.stderr, t.stderr);
  assert.deepEqual(n.files, t.files);
  for (const f of n.files) assert.ok(readFileSync(join(n.out, f)).equals(readFileSync(join(t.out, f))), `${f} differs between tiers`);
  return n;
}

test("--to hf --requantize: native and TypeScript tiers write the same files and refuse with the same line (gpt-oss, Kimi)", { skip: SKIP }, () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-enc-tiers-"));
  try {
    const gpt = join(dir, "gpt-oss"), kimi = join(dir, "kimi");
    writeTinyGptOss(gpt); // edge scales: refused from values alone, kept from the source checkpoint
    writeTinyKimi(kimi, { layout: "k2", edgeScales: true });
    const cfgOnly = (src: string, to: string) => { mkdirSync(to); copyFileSync(join(src, "config.json"), join(to, "config.json")); return to; };
    for (const [src, kind] of [[gpt, "mxfp4"], [kimi, "int4"]] as const) {
      for (const dtype of ["f32", "bf16"]) {
        const tt = join(dir, `${kind}-tt-${dtype}`);
        assert.equal(ckpt(["convert", src, tt, "--dtype", dtype], false).status, 0);
        const refused = sameOnBothTiers(dir, tt, cfgOnly(src, join(dir, `${kind}-cfg-${dtype}`)), kind);
        assert.notEqual(refused.status, 0);
        assert.match(refused.stderr, /REQUANTIZE: --requantize (mxfp4|int4): \d+ /);
        const kept = sameOnBothTiers(dir, tt, src, kind);
        if (dtype === "f32") assert.equal(kept.status, 0, kept.stderr);
      }
    }
  } finally { rmSync(dir, { recursive: true, force: true }); }
});
