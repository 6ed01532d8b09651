// `ckpt convert --to hf --requantize mxfp4|int4` (docs/numerics.md §12), through the CLI on the tiny
// fixtures: HF (packed) → TorchTitan → HF (packed) is byte-identical tensor for tensor (names, dtype, shape, bytes)
// with the source's config.json; values that are not exactly representable are refused with one line and a count,
// nothing written; groups whose scale the values cannot tell (all-zero groups, scale 0 over sub-1 values) are
// taken from the source's encoding when the --config folder holds the source checkpoint, refused otherwise. Also:
// Kimi `--to hf` without requantizing writes a config DeepseekV3ForCausalLM loads (flat K2, and K2.5 flattened).
import assert from "node:assert/strict";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { writeTinyGptOss } from "../src/fixtures/tiny-gpt-oss.js";
import { writeTinyKimi } from "../src/fixtures/tiny-kimi.js";
import { mxfp4Encode, int4Encode } from "../src/kernels/requantize.js";
import { runConvert } from "../src/commands/convert.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");

function ckpt(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8" });
  return { status: r.status, stderr: r.stderr };
}
function ok(args: string[]): string {
  const r = ckpt(args);
  assert.equal(r.status, 0, `ckpt ${args.join(" ")} failed:\n${r.stderr}`);
  return r.stderr;
}

function tmp(): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-requant-"));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Every tensor of a safetensors folder: normalised name → dtype, shape and bytes. */
function tensorsOf(dir: string, rename: (n: string) => string = (n) => n): Map<string, { dtype: string; shape: number[]; bytes: Buffer }> {
  const out = new Map<string, { dtype: string; shape: number[]; bytes: Buffer }>();
  for (const f of readdirSync(dir).filter((x) => x.endsWith(".safetensors"))) {
    const b = readFileSync(join(dir, f));
    const n = Number(b.readBigUInt64LE(0));
    const h = JSON.parse(b.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    for (const [k, v] of Object.entries(h)) if (k !== "__metadata__") out.set(rename(k), { dtype: v.dtype, shape: v.shape, bytes: b.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]) });
  }
  return out;
}

function assertSameTensors(src: string, out: string, rename?: (n: string) => string): number {
  const a = tensorsOf(src, rename), b = tensorsOf(out);
  assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort(), "tensor names");
  for (const [k, t] of a) {
    const u = b.get(k)!;
    assert.equal(u.dtype, t.dtype, `${k} dtype`);
    assert.deepEqual(u.shape, t.shape, `${k} shape`);
    assert.ok(u.bytes.equals(t.bytes), `${k}: bytes differ`);
  }
  return a.size;
}

/** A folder holding only the source's config.json (no weights: the scales must come from the values alone). */
function configOnly(src: string, dir: string): string {
  mkdirSync(dir, { recursive: true });
  copyFileSync(join(src, "config.json"), join(dir, "config.json"));
  return dir;
}
const json = (p: string) => JSON.parse(readFileSync(p, "utf8")) as Record<string, unknown>;

test("requantize kernels: MXFP4 scale = OpenAI quantizer's (amax/6 up to a power of two; 0 for ±0 groups); INT4 scale positive, largest |q|, eps for zero groups", () => {
  const v = new Float64Array(64);
  v[0] = 3 * 2 ** -3; v[1] = -0.5 * 2 ** -3; // amax 3·2^-3: the quantizer picks 2^-4 (3 → 6)
  v[33] = -0;
  const m = mxfp4Encode(v, 2, 32);
  assert.equal(m.bad, 0);
  assert.deepEqual([...m.scales], [127 - 4, 0]);
  assert.equal(m.blocks[0], 0x07 | (0x0a << 4)); // 6, −1
  assert.equal(m.blocks[16], 0x80); // +0, −0
  v[2] = 0.3; // not E2M1 at that scale
  assert.equal(mxfp4Encode(v, 2, 32).bad, 1);

  const s = 0.015625; // BF16 0x3C80
  const w = new Float64Array(40);
  w[0] = 7 * s; w[1] = -8 * s; w[2] = -3 * s; w[39] = 0;
  const q = int4Encode(w, 1, 40, 32);
  assert.equal(q.bad, 0);
  assert.deepEqual([...q.scales], [0x3c80, 0x3c00]);
  const words = new Uint32Array(q.packed.buffer);
  assert.equal(words[0]! & 0xfff, (7 + 8) | (0 << 4) | ((-3 + 8) << 8));
  w[3] = 0.5 * s;
  assert.equal(int4Encode(w, 1, 40, 32).bad, 1);
});

test("gpt-oss --requantize mxfp4: quantizer-scaled fixture round trips byte-identical from values alone, config kept", () => {
  const t = tmp();
  try {
    const src = join(t.dir, "hf");
    writeTinyGptOss(src, { quantizerScales: true, seed: 5 });
    ok(["convert", src, join(t.dir, "tt")]);
    ok(["convert", join(t.dir, "tt"), join(t.dir, "back"), "--to", "hf", "--config", configOnly(src, join(t.dir, "cfg")), "--requantize", "mxfp4"]);
    const n = assertSameTensors(src, join(t.dir, "back"));
    assert.ok(n > 30);
    assert.deepEqual(json(join(t.dir, "back", "config.json")), json(join(src, "config.json")));
    assert.equal((json(join(t.dir, "back", "config.json")).quantization_config as { quant_method: string }).quant_method, "mxfp4");
    ok(["verify", join(t.dir, "back")]); // the manifest describes the packed tensors

  } finally { t.cleanup(); }
});

test("gpt-oss --requantize mxfp4: edge scales the values cannot tell are refused with a count (values alone), kept from the source checkpoint (--config <source>)", () => {
  const t = tmp();
  try {
    const src = join(t.dir, "hf");
    writeTinyGptOss(src);
    ok(["convert", src, join(t.dir, "tt")]);
    const r = ckpt(["convert", join(t.dir, "tt"), join(t.dir, "back"), "--to", "hf", "--config", configOnly(src, join(t.dir, "cfg")), "--requantize", "mxfp4"]);
    assert.notEqual(r.status, 0);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /REQUANTIZE: --requantize mxfp4: 2 32-value group\(s\) are not MXFP4-representable/);
    assert.ok(!existsSync(join(t.dir, "back")));
    // with the source checkpoint at hand, the groups with several exact encodings keep the source's
    const warn = ok(["convert", join(t.dir, "tt"), join(t.dir, "back2"), "--to", "hf", "--config", src, "--requantize", "mxfp4"]);
    assert.match(warn, /8 group\(s\) have several exact encodings/);
    assertSameTensors(src, join(t.dir, "back2"));
    assert.deepEqual(json(join(t.dir, "back2", "config.json")), json(join(src, "config.json")));
  } finally { t.cleanup(); }
});

test("gpt-oss --requantize mxfp4: bf16 expert values (not MXFP4) are refused with a count, nothing written", () => {
  const t = tmp();
  try {
    const src = join(t.dir, "hf");
    writeTinyGptOss(src, { layout: "bf16" });
    ok(["convert", src, join(t.dir, "tt")]);
    const r = ckpt(["convert", join(t.dir, "tt"), join(t.dir, "back"), "--to", "hf", "--config", src, "--requantize", "mxfp4"]);
    assert.notEqual(r.status, 0);
    // 2 layers × (gate_up 4·128·2 + down 4·64·2 groups) = 3072 groups, every one random bf16
    assert.match(r.stderr.trim(), /^ckpt: REQUANTIZE: --requantize mxfp4: 3072 32-value group\(s\) are not MXFP4-representable .* in 4 tensor\(s\)/);
    assert.ok(!existsSync(join(t.dir, "back")));
  } finally { t.cleanup(); }
});

for (const layout of ["k2", "k25"] as const) {
  test(`Kimi ${layout} --requantize int4: quantizer-scaled fixture with edge scales round trips byte-identical from values alone`, () => {
    const t = tmp();
    try {
      const src = join(t.dir, "hf");
      writeTinyKimi(src, { layout, edgeScales: true, quantizerScales: true });
      ok(["convert", src, join(t.dir, "tt")]);
      ok(["convert", join(t.dir, "tt"), join(t.dir, "back"), "--to", "hf", "--config", configOnly(src, join(t.dir, "cfg")), "--requantize", "int4"]);
      // K2.5's language_model.model.* / language_model.lm_head.* are written as the decoder's model.* / lm_head.*
      const rename = (n: string) => n.replace(/^language_model\.(model\.)?/, (_m, p: string | undefined) => (p || !n.startsWith("language_model.lm_head") ? "model." : ""));
      assertSameTensors(src, join(t.dir, "back"), layout === "k25" ? rename : undefined);
      const cfg = json(join(t.dir, "back", "config.json")), orig = json(join(src, "config.json"));
      const qfmt = (cfg.quantization_config as { format: string }).format;
      if (layout === "k2") assert.deepEqual(cfg, orig);
      else assert.deepEqual(cfg, { ...(orig.text_config as object), architectures: ["DeepseekV3ForCausalLM"] });
      assert.equal(qfmt, "pack-quantized");
      ok(["verify", join(t.dir, "back")]);
    } finally { t.cleanup(); }
  });
}

test("Kimi --requantize int4: negative / zero source scales refused with a count from values alone, kept from the source checkpoint; BF16-rounded values refused", () => {
  const t = tmp();
  try {
    const src = join(t.dir, "hf");
    writeTinyKimi(src, { layout: "k2", edgeScales: true });
    ok(["convert", src, join(t.dir, "tt")]);
    const cfgOnly = configOnly(src, join(t.dir, "cfg"));
    const r = ckpt(["convert", join(t.dir, "tt"), join(t.dir, "back"), "--to", "hf", "--config", cfgOnly, "--requantize", "int4"]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr.trim(), /^ckpt: REQUANTIZE: --requantize int4: \d+ group\(s\) are not INT4-representable/);
    assert.equal(r.stderr.trim().split("\n").length, 1);
    assert.ok(!existsSync(join(t.dir, "back")));
    ok(["convert", join(t.dir, "tt"), join(t.dir, "back2"), "--to", "hf", "--config", src, "--requantize", "int4"]);
    assertSameTensors(src, join(t.dir, "back2"));

    // --dtype bf16 decoding rounds q·s: not exactly INT4 any more, counted
    ok(["convert", src, join(t.dir, "tt16"), "--dtype", "bf16"]);
    const b = ckpt(["convert", join(t.dir, "tt16"), join(t.dir, "back16"), "--to", "hf", "--config", cfgOnly, "--requantize", "int4"]);
    assert.notEqual(b.status, 0);
    assert.match(b.stderr, /REQUANTIZE: --requantize int4: \d+ group\(s\) are not INT4-representable/);
  } finally { t.cleanup(); }
});

test("Kimi --to hf without --requantize: config.json for DeepseekV3ForCausalLM (K2 flat: model_type deepseek_v3; K2.5: the text config flattened), no quantization_config", () => {
  const t = tmp();
  try {
    for (const layout of ["k2", "k25"] as const) {
      const src = join(t.dir, `hf-${layout}`);
      writeTinyKimi(src, { layout });
      ok(["convert", src, join(t.dir, `tt-${layout}`)]);
      ok(["convert", join(t.dir, `tt-${layout}`), join(t.dir, `back-${layout}`), "--to", "hf", "--config", src]);
      const cfg = json(join(t.dir, `back-${layout}`, "config.json"));
      const orig = json(join(src, "config.json"));
      const text = (layout === "k25" ? orig.text_config : orig) as Record<string, unknown>;
      assert.equal(cfg.model_type, "deepseek_v3");
      assert.deepEqual(cfg.architectures, ["DeepseekV3ForCausalLM"]);
      assert.equal(cfg.text_config, undefined);
      assert.equal(cfg.quantization_config, undefined);
      for (const k of ["hidden_size", "num_hidden_layers", "n_routed_experts", "kv_lora_rank", "moe_intermediate_size"]) assert.equal(cfg[k], text[k], k);
    }
  } finally { t.cleanup(); }
});

test("--requantize needs --to hf and a mapping with that op", () => {
  const t = tmp();
  try {
    const src = join(t.dir, "hf");
    writeTinyGptOss(src);
    const r = ckpt(["convert", src, join(t.dir, "tt"), "--requantize", "mxfp4"]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /USAGE: --requantize re-encodes --to hf output/);
    ok(["convert", src, join(t.dir, "tt")]);
    const k = ckpt(["convert", join(t.dir, "tt"), join(t.dir, "back"), "--to", "hf", "--config", src, "--requantize", "int4"]);
    assert.notEqual(k.status, 0);
    assert.match(k.stderr, /USAGE: --requantize int4: the gpt_oss mapping has no int4 tensors/);
    assert.ok(!existsSync(join(t.dir, "back")));
  } finally { t.cleanup(); }
});

test("Kimi --requantize int4 over several output files: index weight_map and total_size rewritten, verify passes, tensors byte-identical", async () => {
  const t = tmp();
  try {
    const src = join(t.dir, "hf");
    writeTinyKimi(src, { layout: "k2", quantizerScales: true, files: 3 });
    ok(["convert", src, join(t.dir, "tt")]);
    await runConvert({ source: join(t.dir, "tt"), out: join(t.dir, "back"), to: "hf", config: configOnly(src, join(t.dir, "cfg")), requantize: "int4", maxShardBytes: 1 << 20 });
    assert.ok(readdirSync(join(t.dir, "back")).filter((f) => f.endsWith(".safetensors")).length > 1);
    assertSameTensors(src, join(t.dir, "back"));
    const idx = json(join(t.dir, "back", "model.safetensors.index.json")) as { weight_map: Record<string, string>; metadata: { total_size: number } };
    const all = tensorsOf(join(t.dir, "back"));
    assert.deepEqual(Object.keys(idx.weight_map).sort(), [...all.keys()].sort());
    assert.equal(idx.metadata.total_size, [...all.values()].reduce((a, x) => a + x.bytes.length, 0));
    ok(["verify", join(t.dir, "back")]);
  } finally { t.cleanup(); }
});

test("MXFP4 scales alone (the scales part's path) equal the full encode's scales, with and without a reference", async () => {
  const { mxfp4EncodeKeeping, mxfp4ScalesKeeping } = await import("../src/kernels/requantize.js");
  const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6];
  const rows = 6, cols = 64, n = rows * cols;
  let seed = 11;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const v = new Float32Array(n).map(() => (rnd() < 0.5 ? -1 : 1) * E2M1[Math.floor(rnd() * 8)]! * 2 ** (Math.floor(rnd() * 6) - 3));
  v.fill(0, 64, 96); // an all-zero group: any scale encodes it
  v[130] = 0.3; // a group no scale encodes
  const blocks = new Uint8Array(n / 2).map(() => Math.floor(rnd() * 256)), scales = new Uint8Array(n / 32).map(() => 120 + Math.floor(rnd() * 8));
  blocks.fill(0, 32, 48); scales[2] = 125; // the zero group under another scale: kept from the reference
  for (const ref of [undefined, { blocks, scales }, mxfp4EncodeKeeping(v, rows, cols, "BF16")]) {
    const full = mxfp4EncodeKeeping(v, rows, cols, "BF16", ref && { blocks: ref.blocks, scales: ref.scales });
    const alone = mxfp4ScalesKeeping(v, rows, cols, "BF16", ref && { blocks: ref.blocks, scales: ref.scales });
    for (let g = 0; g < n / 32; g++) if (!full.badMask[g]) assert.equal(alone[g], full.scales[g], `group ${g}`);
    if (ref?.scales === scales) assert.equal(full.adopted > 0 && alone[2], 125);
  }
});

test("encode slabs tile a piece: rows in order, each slab's runs the input's runs of those rows", async () => {
  const { encodeSlabs, rowSlabs } = await import("../src/plan/encode.js");
  const { runsForBox } = await import("../src/plan/runs.js");
  const box = { offsets: [1, 0, 0], sizes: [3, 5, 64] };
  const slabs = rowSlabs(box, 4);
  assert.deepEqual(slabs.map((b) => [b.offsets.join(), b.sizes.join()]), [
    ["1,0,0", "1,4,64"], ["1,4,0", "1,1,64"], ["2,0,0", "1,4,64"], ["2,4,0", "1,1,64"], ["3,0,0", "1,4,64"], ["3,4,0", "1,1,64"]]);
  const leaves = { w: { dtype: "BF16" as const, shape: [4, 5, 64], pieces: [{ offsets: [0, 0, 0], sizes: [4, 5, 64], file: "f", byteOffset: 100, byteLength: 4 * 5 * 64 * 2 }] } };
  const r = { op: "mxfp4_encode" as const, part: "blocks" as const, values: [4, 5, 64], valuesDtype: "BF16" as const, input: { op: "source" as const, tensor: "w" } };
  const s = encodeSlabs(r, [4, 5, 2, 16], { offsets: [1, 0, 0, 0], sizes: [3, 5, 2, 16] }, leaves, 4 * 64);
  assert.deepEqual(s.map((x) => [x.firstRow, x.rows]), [[5, 4], [9, 1], [10, 4], [14, 1], [15, 4], [19, 1]]);
  assert.deepEqual(s[1]!.runs, runsForBox(r.input, r.values, { offsets: [1, 4, 0], sizes: [1, 1, 64] }, leaves));
  assert.throws(() => encodeSlabs(r, [4, 5, 2, 16], { offsets: [0, 0, 1, 0], sizes: [1, 5, 1, 16] }, leaves), /must span dim 2/);
});
