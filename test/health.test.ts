// Unit tests for `inspect --health` (src/health): each planted defect is flagged, a clean checkpoint passes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tinyLlamaTensors, writeHfFolder, type GeneratedTensor } from "../src/fixtures/tiny-llama.js";
import { tinyPeftAdapter, writePeftAdapter } from "../src/fixtures/tiny-lora.js";
import { formatHealth, layerKind, median, runHealth, type HealthReport } from "../src/health/index.js";
import { referenceKernels } from "../src/kernels/index.js";
import { loraConvert } from "../src/commands/lora-convert.js";
import { runConvert } from "../src/commands/convert.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");

function tmp(): { dir: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-health-"));
  return { dir, done: () => rmSync(dir, { recursive: true, force: true }) };
}

function mutateF32(t: GeneratedTensor, f: (v: Float32Array) => void): void {
  const v = new Float32Array(t.data.byteLength / 4);
  new Uint8Array(v.buffer).set(t.data);
  f(v);
  t.data = new Uint8Array(v.buffer);
}

function toBf16(t: GeneratedTensor): void {
  const n = t.data.byteLength / 4;
  const out = new Uint8Array(n * 2);
  referenceKernels.cast(t.data, "F32", out, "BF16", n);
  t.data = out;
  t.dtype = "BF16";
}

const codes = (r: HealthReport, sev?: string) => r.findings.filter((f) => (sev ? f.severity === sev : f.severity !== "info")).map((f) => `${f.code}${f.tensor ? ":" + f.tensor : ""}`);

async function healthOf(tensors: GeneratedTensor[], config: Record<string, unknown>, opts: { f16?: boolean } = {}): Promise<HealthReport> {
  const t = tmp();
  try {
    writeHfFolder(join(t.dir, "m"), config, tensors);
    return await runHealth(join(t.dir, "m"), opts);
  } finally {
    t.done();
  }
}

test("layerKind / median helpers", () => {
  assert.deepEqual(layerKind("model.layers.12.self_attn.q_proj.weight"), { kind: "model.layers.{L}.self_attn.q_proj.weight", layer: 12 });
  assert.deepEqual(layerKind("layers.3.attention.wq.lora_a.weight"), { kind: "layers.{L}.attention.wq.lora_a.weight", layer: 3 });
  assert.equal(layerKind("model.norm.weight"), undefined);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 2, 3]), 2.5);
});

test("a clean checkpoint (bf16, with an f32 inv_freq buffer) passes, also with --f16", async () => {
  const g = tinyLlamaTensors({ layers: 4, withInvFreq: true });
  for (const f16 of [false, true]) {
    const r = await healthOf(g.tensors, g.config, { f16 });
    assert.equal(r.ok, true, JSON.stringify(r.findings));
    assert.deepEqual(codes(r), []);
    assert.equal(r.tensors.length, g.tensors.length);
    assert.match(formatHealth(r), /OK: no problems found/);
  }
});

test("NaN and Inf are errors naming the tensor", async () => {
  const g = tinyLlamaTensors({ dtype: "F32" });
  mutateF32(g.tensors.find((t) => t.name === "model.layers.1.mlp.up_proj.weight")!, (v) => { v[3] = NaN; v[9] = NaN; });
  mutateF32(g.tensors.find((t) => t.name === "model.norm.weight")!, (v) => { v[0] = -Infinity; });
  const r = await healthOf(g.tensors, g.config);
  assert.equal(r.ok, false);
  assert.deepEqual(codes(r).sort(), ["INF:model.norm.weight", "NAN:model.layers.1.mlp.up_proj.weight"]);
  assert.equal(r.findings.find((f) => f.code === "NAN")!.value, 2);
});

test("fp16 overflow: an error with --f16 (counted), a note without; underflow counted", async () => {
  const g = tinyLlamaTensors({ dtype: "F32" });
  mutateF32(g.tensors.find((t) => t.name === "model.layers.0.input_layernorm.weight")!, (v) => { v[0] = 70000; v[1] = -1e6; v[2] = 65519; });
  mutateF32(g.tensors.find((t) => t.name === "model.layers.0.self_attn.o_proj.weight")!, (v) => { v[3] = 1e-9; v[4] = 2 ** -26; });
  const plain = await healthOf(g.tensors, g.config);
  assert.equal(plain.ok, true);
  assert.deepEqual(codes(plain, "info"), ["F16_OVERFLOW"]);
  const r = await healthOf(g.tensors, g.config, { f16: true });
  assert.equal(r.ok, false);
  const f = r.findings.find((x) => x.code === "F16_OVERFLOW")!;
  assert.equal(f.severity, "error");
  assert.equal(f.tensor, "model.layers.0.input_layernorm.weight");
  assert.equal(f.value, 2); // 65519 rounds to 65504, not inf
  const u = r.findings.find((x) => x.code === "F16_UNDERFLOW")!;
  assert.equal(u.value, 2);
  assert.equal(u.severity, "info"); // 2 of 3072 values
  assert.equal(u.tensor, "model.layers.0.self_attn.o_proj.weight");
  // a large share underflowing is a warning
  mutateF32(g.tensors.find((t) => t.name === "model.layers.1.input_layernorm.weight")!, (v) => { v[0] = 1e-9; v[1] = -1e-8; });
  const w = await healthOf(g.tensors, g.config, { f16: true });
  assert.equal(w.findings.find((x) => x.code === "F16_UNDERFLOW" && x.tensor === "model.layers.1.input_layernorm.weight")!.severity, "warning");
});

test("mixed parameter dtypes are flagged (FSDP2 needs one); buffers and one dtype are not", async () => {
  const g = tinyLlamaTensors({ dtype: "F32", withInvFreq: true });
  for (const t of g.tensors) if (!t.name.endsWith("inv_freq")) toBf16(t);
  assert.equal((await healthOf(g.tensors, g.config)).ok, true);
  const odd = g.tensors.find((t) => t.name === "model.layers.1.self_attn.k_proj.weight")!;
  const n = odd.data.byteLength / 2;
  const wide = new Uint8Array(n * 4);
  referenceKernels.cast(odd.data, "BF16", wide, "F32", n);
  odd.data = wide; odd.dtype = "F32";
  const r = await healthOf(g.tensors, g.config);
  assert.equal(r.ok, false);
  const f = r.findings.find((x) => x.code === "MIXED_DTYPES")!;
  assert.equal(f.severity, "error");
  assert.match(f.message, /BF16/);
  assert.match(f.message, /F32: model\.layers\.1\.self_attn\.k_proj\.weight/);
});

test("LoRA: zero B (untrained), zero A (dead), exploding A (norm spike + A/B ratio) — PEFT and TorchTitan names", async () => {
  const t = tmp();
  try {
    const base = tinyLlamaTensors({ dtype: "F32", layers: 3 });
    writeHfFolder(join(t.dir, "base"), base.config, base.tensors);
    // healthy adapter
    const good = tinyPeftAdapter(base.tensors);
    writePeftAdapter(join(t.dir, "good"), good);
    const ok = await runHealth(join(t.dir, "good"));
    assert.equal(ok.ok, true, JSON.stringify(ok.findings));
    assert.equal(ok.lora.length, 12);
    assert.ok(ok.lora.every((p) => p.ratio !== null && p.ratio > 0 && !p.zeroA && !p.zeroB));
    // untrained: every B zero
    writePeftAdapter(join(t.dir, "zero"), tinyPeftAdapter(base.tensors, { bScale: 0 }));
    const z = await runHealth(join(t.dir, "zero"));
    assert.equal(z.ok, false);
    assert.equal(z.findings.filter((f) => f.code === "LORA_ZERO_B").length, 12);
    assert.ok(z.lora.every((p) => p.zeroB && p.ratio === null));
    // dead A and exploding A in single layers
    const bad = tinyPeftAdapter(base.tensors);
    mutateF32(bad.tensors.find((x) => x.name === "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight")!, (v) => v.fill(0));
    mutateF32(bad.tensors.find((x) => x.name === "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight")!, (v) => { for (let i = 0; i < v.length; i++) v[i]! *= 1000; });
    writePeftAdapter(join(t.dir, "bad"), bad);
    const b = await runHealth(join(t.dir, "bad"));
    assert.equal(b.ok, false);
    assert.deepEqual(codes(b).sort(), [
      "LORA_RATIO:base_model.model.model.layers.2.self_attn.q_proj",
      "LORA_ZERO_A:base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
      "NORM_SPIKE:base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight",
    ]);
    const spike = b.findings.find((f) => f.code === "NORM_SPIKE")!;
    assert.ok(spike.value! > 500 && spike.value! < 2000, String(spike.value));
    // the same defects, seen through TorchTitan names in a DCP adapter
    await loraConvert({ adapter: join(t.dir, "bad"), out: join(t.dir, "bad-tt"), base: join(t.dir, "base") });
    const bt = await runHealth(join(t.dir, "bad-tt"));
    assert.deepEqual(codes(bt).sort(), [
      "LORA_RATIO:layers.2.attention.qkv_linear.wq",
      "LORA_ZERO_A:layers.0.attention.qkv_linear.wv.lora_a.weight",
      "NORM_SPIKE:layers.2.attention.qkv_linear.wq.lora_a.weight",
    ]);
  } finally {
    t.done();
  }
});

test("weight explosion in a base layer, and steady growth across layers", async () => {
  const g = tinyLlamaTensors({ dtype: "F32", layers: 6 });
  mutateF32(g.tensors.find((t) => t.name === "model.layers.4.mlp.down_proj.weight")!, (v) => { for (let i = 0; i < v.length; i++) v[i]! *= 40; });
  const r = await healthOf(g.tensors, g.config);
  assert.deepEqual(codes(r), ["NORM_SPIKE:model.layers.4.mlp.down_proj.weight"]);
  const h = tinyLlamaTensors({ dtype: "F32", layers: 6 });
  for (const t of h.tensors) {
    const k = layerKind(t.name);
    if (k && t.name.endsWith("gate_proj.weight")) mutateF32(t, (v) => { for (let i = 0; i < v.length; i++) v[i]! *= 3 ** k.layer; });
  }
  const g2 = await healthOf(h.tensors, h.config);
  assert.ok(codes(g2).includes("NORM_GROWTH:model.layers.{L}.mlp.gate_proj.weight"), JSON.stringify(codes(g2)));
  // 1-D norm weights vary legitimately across depth and are not checked for growth
  const n = tinyLlamaTensors({ dtype: "F32", layers: 4 });
  mutateF32(n.tensors.find((t) => t.name === "model.layers.3.input_layernorm.weight")!, (v) => { for (let i = 0; i < v.length; i++) v[i]! *= 50; });
  assert.equal((await healthOf(n.tensors, n.config)).ok, true);
});

test("DCP checkpoints are checked too (chunks streamed)", async () => {
  const t = tmp();
  try {
    const g = tinyLlamaTensors({ dtype: "F32" });
    mutateF32(g.tensors.find((x) => x.name === "model.layers.0.self_attn.q_proj.weight")!, (v) => { v[7] = NaN; });
    writeHfFolder(join(t.dir, "hf"), g.config, g.tensors);
    await runConvert({ source: join(t.dir, "hf"), out: join(t.dir, "tt"), worldSize: 4, threads: 0 });
    const r = await runHealth(join(t.dir, "tt"));
    assert.equal(r.format, "dcp");
    assert.deepEqual(codes(r), ["NAN:layers.0.attention.qkv_linear.wq.weight"]);
  } finally {
    t.done();
  }
});

test("non-float tensors are skipped; F64 tensors are checked", async () => {
  const g = tinyLlamaTensors({ dtype: "F32" });
  const f64 = new Float64Array([1, NaN, 1e300, -2]);
  const extra: GeneratedTensor[] = [
    { name: "position_ids", dtype: "I64", shape: [2], data: new Uint8Array(16) },
    { name: "model.extra_f64", dtype: "F64", shape: [4], data: new Uint8Array(f64.buffer) },
  ];
  const r = await healthOf([...g.tensors, ...extra], g.config, { f16: true });
  assert.equal(r.tensors.find((t) => t.name === "position_ids")!.checked, false);
  const t = r.tensors.find((x) => x.name === "model.extra_f64")!;
  assert.equal(t.nan, 1);
  assert.equal(t.f16Overflow, 1);
  assert.deepEqual(codes(r).sort(), ["F16_OVERFLOW:model.extra_f64", "MIXED_DTYPES", "NAN:model.extra_f64"]);
});

test("CLI: inspect --health exits 1 with HEALTH on problems, 0 when clean; --json", () => {
  const t = tmp();
  try {
    const g = tinyLlamaTensors({ dtype: "F32" });
    writeHfFolder(join(t.dir, "clean"), g.config, g.tensors);
    mutateF32(g.tensors.find((x) => x.name === "model.layers.1.self_attn.v_proj.weight")!, (v) => { v[0] = NaN; });
    writeHfFolder(join(t.dir, "nan"), g.config, g.tensors);
    const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8" });
    let r = run("inspect", join(t.dir, "clean"), "--health");
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /OK: no problems found/);
    r = run("inspect", join(t.dir, "nan"), "--health");
    assert.equal(r.status, 1);
    assert.match(r.stdout, /ERROR NAN: model\.layers\.1\.self_attn\.v_proj\.weight: 1 NaN value/);
    assert.match(r.stderr, /ckpt: HEALTH: .*1 error\(s\), 0 warning\(s\): NAN/);
    r = run("inspect", join(t.dir, "nan"), "--health", "--json");
    assert.equal(r.status, 1);
    const j = JSON.parse(r.stdout) as HealthReport;
    assert.equal(j.ok, false);
    assert.equal(j.findings[0]!.code, "NAN");
  } finally {
    t.done();
  }
});
