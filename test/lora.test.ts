// Unit tests for src/lora: names, config/scale rules, PEFT → TorchTitan conversion (q/k lora_B and DoRA magnitude
// rows permuted, lora_A untouched), export, byte-identical round trips, and merge arithmetic (numerics.md §9).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildCatalog } from "../src/catalog.js";
import { CkptError } from "../src/errors.js";
import { writeSingleFileDcp } from "../src/formats/dcp/writer.js";
import { tinyLlamaTensors, writeHfFolder, type GeneratedTensor } from "../src/fixtures/tiny-llama.js";
import { tinyPeftAdapter, writePeftAdapter } from "../src/fixtures/tiny-lora.js";
import { writeTinyQwen3 } from "../src/fixtures/tiny-qwen3.js";
import { getKernels, nativeKernelsFrom, referenceKernels, resetKernelsForTests } from "../src/kernels/index.js";
import { loadNative, nativeLoadError } from "../src/kernels/native.js";
import {
  ModuleResolver, isTargetModule, loraScale, mergeWeight, parsePeftConfig, parsePeftName, parseTtName, patternKey,
  type PeftLoraConfig,
} from "../src/lora/index.js";
import { loraConvert, loraExport } from "../src/commands/lora-convert.js";
import { loraMerge } from "../src/commands/lora-merge.js";
import { readTensorBytes } from "../src/lora/tensors.js";
import { mappingByName } from "../src/mapping/load.js";
import { runConvert } from "../src/commands/convert.js";
import { openSource } from "../src/sources/resolve.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");

function tmp(): { dir: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-lora-"));
  return { dir, done: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Minimal independent safetensors reader: name → { dtype, shape, bytes }, plus __metadata__. */
function readSt(path: string): { tensors: Map<string, { dtype: string; shape: number[]; bytes: Buffer }>; metadata?: Record<string, string> } {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const tensors = new Map<string, { dtype: string; shape: number[]; bytes: Buffer }>();
  let metadata: Record<string, string> | undefined;
  for (const [k, v] of Object.entries(header)) {
    if (k === "__metadata__") { metadata = v as unknown as Record<string, string>; continue; }
    tensors.set(k, { dtype: v.dtype, shape: v.shape, bytes: Buffer.from(buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1])) });
  }
  return { tensors, metadata };
}

async function readDcp(dir: string): Promise<Map<string, { dtype: string; shape: number[]; bytes: Buffer }>> {
  const s = await openSource(dir);
  try {
    const c = await buildCatalog(s);
    const out = new Map<string, { dtype: string; shape: number[]; bytes: Buffer }>();
    for (const t of c.tensors.values()) out.set(t.name, { dtype: t.dtype, shape: t.shape, bytes: Buffer.from(await readTensorBytes(s, t)) });
    return out;
  } finally {
    await s.close();
  }
}

function f32(b: Uint8Array): Float32Array {
  const c = new Uint8Array(b.byteLength);
  c.set(b);
  return new Float32Array(c.buffer);
}

/** torchtitan-layout.md §3.2, written out independently: TT row h·hd + 2j + c takes HF row h·hd + c·hd/2 + j. */
function hfToTtRows(rows: Buffer, rowBytes: number, heads: number, hd: number): Buffer {
  const out = Buffer.alloc(rows.length);
  for (let h = 0; h < heads; h++) for (let j = 0; j < hd / 2; j++) for (let c = 0; c < 2; c++) {
    const tt = h * hd + 2 * j + c, hf = h * hd + c * (hd / 2) + j;
    rows.copy(out, tt * rowBytes, hf * rowBytes, (hf + 1) * rowBytes);
  }
  return out;
}

function setup(opts: { dtype?: "F32" | "BF16"; dora?: boolean; rslora?: boolean; adapterDtype?: "F32" | "BF16"; legacy?: boolean; layers?: number } = {}) {
  const t = tmp();
  const base = tinyLlamaTensors({ dtype: opts.dtype ?? "F32", layers: opts.layers ?? 2 });
  writeHfFolder(join(t.dir, "base"), base.config, base.tensors);
  const adapter = tinyPeftAdapter(base.tensors, { dora: opts.dora, rslora: opts.rslora, dtype: opts.adapterDtype, legacyDoraNames: opts.legacy });
  writePeftAdapter(join(t.dir, "peft"), adapter);
  return { ...t, base, adapter };
}

// ---- names and config --------------------------------------------------------------------------------------------

test("PEFT names: lora_A/B, adapter-name forms, DoRA magnitude (saved and legacy), unsupported kinds", () => {
  assert.deepEqual(parsePeftName("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), { module: "model.layers.0.self_attn.q_proj", part: "A" });
  assert.deepEqual(parsePeftName("base_model.model.model.layers.3.mlp.up_proj.lora_B.default.weight"), { module: "model.layers.3.mlp.up_proj", part: "B" });
  for (const s of [".lora_magnitude_vector", ".lora_magnitude_vector.default", ".lora_magnitude_vector.default.weight", ".lora_magnitude_vector.weight"]) {
    assert.deepEqual(parsePeftName(`base_model.model.model.layers.0.self_attn.k_proj${s}`), { module: "model.layers.0.self_attn.k_proj", part: "M" }, s);
  }
  assert.ok("unsupported" in (parsePeftName("base_model.model.model.embed_tokens.lora_embedding_A") as object));
  assert.ok("unsupported" in (parsePeftName("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias") as object));
  assert.equal(parsePeftName("model.norm.weight"), undefined);
  assert.deepEqual(parseTtName("layers.0.attention.qkv_linear.wq.lora_a.weight"), { module: "layers.0.attention.qkv_linear.wq", part: "A" });
  assert.deepEqual(parseTtName("model.layers.0.attention.wo.lora_b.weight"), { module: "layers.0.attention.wo", part: "B" });
  assert.deepEqual(parseTtName("layers.1.attention.wq.magnitude"), { module: "layers.1.attention.wq", part: "M" });
  assert.equal(parseTtName("layers.1.attention.wq.weight"), undefined);
});

test("scale: alpha / r, rsLoRA alpha / √r; PEFT rank/alpha patterns and target_modules matching", () => {
  assert.equal(loraScale(16, 8, false), 2);
  assert.equal(loraScale(16, 16, true), 4);
  assert.equal(loraScale(16, 8, true), 16 / Math.sqrt(8));
  assert.equal(patternKey(["q_proj", "v_proj"], "model.layers.0.self_attn.q_proj"), "q_proj");
  assert.equal(patternKey(["layers.1.self_attn.q_proj"], "model.layers.0.self_attn.q_proj"), undefined);
  assert.equal(patternKey(["layers.1.self_attn.q_proj"], "model.layers.1.self_attn.q_proj"), "layers.1.self_attn.q_proj");
  const { config } = parsePeftConfig({ peft_type: "LORA", r: 8, lora_alpha: 32, target_modules: ["v_proj", "q_proj"], rank_pattern: { q_proj: 4 }, alpha_pattern: { "layers.1.self_attn.v_proj": 8 } }, "x");
  assert.deepEqual(config.target_modules, ["q_proj", "v_proj"]);
  const base: PeftLoraConfig = config;
  assert.ok(isTargetModule(base, "model.layers.0.self_attn.q_proj"));
  assert.ok(!isTargetModule(base, "model.layers.0.self_attn.k_proj"));
  assert.ok(isTargetModule({ ...base, target_modules: ".*\\.(q|k)_proj" }, "model.layers.0.self_attn.k_proj"));
  assert.ok(!isTargetModule({ ...base, target_modules: ".*\\.(q|k)_proj" }, "model.layers.0.self_attn.v_proj"));
  assert.ok(isTargetModule({ ...base, target_modules: "all-linear" }, "model.layers.0.mlp.up_proj"));
  assert.ok(!isTargetModule({ ...base, target_modules: "all-linear" }, "lm_head"));
  assert.ok(!isTargetModule({ ...base, layers_to_transform: [1] }, "model.layers.0.self_attn.q_proj"));
  assert.ok(isTargetModule({ ...base, layers_to_transform: [1] }, "model.layers.1.self_attn.q_proj"));
  for (const bad of [{ peft_type: "IA3" }, { bias: "all" }, { modules_to_save: ["lm_head"] }, { r: 0 }, { lora_alpha: "x" }]) {
    assert.throws(() => parsePeftConfig({ r: 8, lora_alpha: 16, ...bad }, "f"), (e: unknown) => e instanceof CkptError && e.code === "CONFIG", JSON.stringify(bad));
  }
});

test("ModuleResolver: PEFT module ⇄ TorchTitan module at @main and @0.2, q with n_heads, k with n_kv_heads", () => {
  const { config } = tinyLlamaTensors();
  const m = mappingByName("llama3");
  const main = new ModuleResolver(m, config, "torchtitan@main");
  const v02 = new ModuleResolver(m, config, "torchtitan@0.2");
  assert.deepEqual(main.fromHf("model.layers.1.self_attn.q_proj"), { hf: "model.layers.1.self_attn.q_proj", tt: "layers.1.attention.qkv_linear.wq", rope: { heads: 4, headDim: 16 }, shape: [64, 48] });
  assert.deepEqual(main.fromHf("model.layers.1.self_attn.k_proj")?.rope, { heads: 2, headDim: 16 });
  assert.equal(main.fromHf("model.layers.1.self_attn.v_proj")?.rope, undefined);
  assert.equal(v02.fromHf("model.layers.0.self_attn.q_proj")?.tt, "layers.0.attention.wq");
  assert.equal(v02.fromHf("model.layers.0.mlp.gate_proj")?.tt, "layers.0.feed_forward.w1");
  assert.equal(main.fromTt("layers.0.attention.wo")?.hf, "model.layers.0.self_attn.o_proj");
  assert.equal(main.fromHf("lm_head")?.tt, "lm_head");
  assert.equal(v02.fromHf("lm_head")?.tt, "output");
  assert.equal(main.fromHf("model.layers.0.self_attn.rotary_emb"), undefined);
});

// ---- convert / export --------------------------------------------------------------------------------------------

for (const variant of [{ dora: false, rslora: false }, { dora: true, rslora: true }] as const) {
  test(`convert PEFT → TorchTitan DCP (dora=${variant.dora}, rslora=${variant.rslora}): names, q/k B + magnitude rows permuted, A untouched, scale recorded`, async () => {
    const s = setup(variant);
    try {
      const r = await loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "tt"), base: join(s.dir, "base") });
      assert.equal(r.format, "dcp");
      const got = await readDcp(join(s.dir, "tt"));
      const src = readSt(join(s.dir, "peft", "adapter_model.safetensors")).tensors;
      const names: Record<string, [string, number | undefined]> = { q_proj: ["qkv_linear.wq", 4], k_proj: ["qkv_linear.wk", 2], v_proj: ["qkv_linear.wv", undefined], o_proj: ["wo", undefined] };
      let count = 0;
      for (const L of [0, 1]) for (const [hf, [tt, heads]] of Object.entries(names)) {
        const p = `base_model.model.model.layers.${L}.self_attn.${hf}`;
        const q = `layers.${L}.attention.${tt}`;
        const A = got.get(`${q}.lora_a.weight`)!, B = got.get(`${q}.lora_b.weight`)!;
        assert.deepEqual(A.bytes, src.get(`${p}.lora_A.weight`)!.bytes, `${q} lora_a untouched`);
        const Bhf = src.get(`${p}.lora_B.weight`)!.bytes;
        assert.deepEqual(B.bytes, heads ? hfToTtRows(Bhf, 8 * 4, heads, 16) : Bhf, `${q} lora_b`);
        if (heads) assert.notDeepEqual(B.bytes, Bhf);
        count += 2;
        if (variant.dora) {
          const M = got.get(`${q}.magnitude`)!;
          const Mhf = src.get(`${p}.lora_magnitude_vector`)!.bytes;
          assert.deepEqual(M.bytes, heads ? hfToTtRows(Mhf, 4, heads, 16) : Mhf, `${q} magnitude`);
          count++;
        }
      }
      assert.equal(got.size, count);
      const md = JSON.parse(readFileSync(join(s.dir, "tt", "lora_config.json"), "utf8"));
      assert.equal(md.format, "ckpt-lora");
      assert.equal(md.scale, variant.rslora ? 16 / Math.sqrt(8) : 2);
      assert.equal(md.scale_formula, variant.rslora ? "alpha / sqrt(r)" : "alpha / r");
      assert.equal(md.use_dora, variant.dora);
      assert.deepEqual(md.torchtitan.target_modules, ["wk", "wo", "wq", "wv"]);
      assert.equal(md.torchtitan.alpha, variant.rslora ? 16 * Math.sqrt(8) : 16);
      assert.equal(md.modules["layers.1.attention.qkv_linear.wk"].scale, md.scale);
    } finally {
      s.done();
    }
  });
}

test("convert to safetensors and @0.2: __metadata__ carries the config; bf16 adapters keep their bytes; legacy DoRA names", async () => {
  const s = setup({ dora: true, adapterDtype: "BF16", legacy: true });
  try {
    const r = await loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "tt.safetensors"), base: join(s.dir, "base", "config.json"), format: "safetensors", target: "0.2" });
    assert.equal(r.target, "torchtitan@0.2");
    const { tensors, metadata } = readSt(join(s.dir, "tt.safetensors"));
    assert.equal(metadata!.format, "pt");
    const md = JSON.parse(metadata!.lora_config!);
    assert.equal(md.target, "torchtitan@0.2");
    assert.equal(md.scale, 2);
    assert.equal(tensors.get("layers.0.attention.wq.lora_a.weight")!.dtype, "BF16");
    assert.equal(tensors.get("layers.0.attention.wq.magnitude")!.dtype, "F32");
    const src = readSt(join(s.dir, "peft", "adapter_model.safetensors")).tensors;
    const Bhf = src.get("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight")!.bytes;
    assert.deepEqual(tensors.get("layers.1.attention.wk.lora_b.weight")!.bytes, hfToTtRows(Bhf, 8 * 2, 2, 16));
    const Mhf = src.get("base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector.default.weight")!.bytes;
    assert.deepEqual(tensors.get("layers.1.attention.wq.magnitude")!.bytes, hfToTtRows(Mhf, 4, 4, 16));
    // a folder output holds model.safetensors
    await loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "tt-folder"), base: join(s.dir, "base"), format: "safetensors" });
    assert.deepEqual(readdirSync(join(s.dir, "tt-folder")), ["model.safetensors"]);
    await assert.rejects(loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "tt-folder"), base: join(s.dir, "base"), format: "safetensors" }), (e: unknown) => e instanceof CkptError && e.code === "OUTPUT_EXISTS");
  } finally {
    s.done();
  }
});

for (const format of ["dcp", "safetensors"] as const) {
  test(`export → convert round trip is byte-identical (${format}); PEFT → convert → export gives PEFT's own bytes back`, async () => {
    const s = setup({ dora: true, rslora: true });
    try {
      const x = join(s.dir, "x");
      await loraConvert({ adapter: join(s.dir, "peft"), out: x, base: join(s.dir, "base"), format });
      const e = await loraExport({ input: x, out: join(s.dir, "exported"), config: join(s.dir, "base") });
      await loraConvert({ adapter: join(s.dir, "exported"), out: join(s.dir, "x2"), base: join(s.dir, "base"), format });
      const files = readdirSync(x).sort();
      assert.deepEqual(readdirSync(join(s.dir, "x2")).sort(), files);
      for (const f of files) assert.ok(readFileSync(join(x, f)).equals(readFileSync(join(s.dir, "x2", f))), `${f} differs`);
      // the exported safetensors is exactly what PEFT's save_file would hold for these tensors
      assert.ok(readFileSync(join(s.dir, "exported", "adapter_model.safetensors")).equals(readFileSync(join(s.dir, "peft", "adapter_model.safetensors"))));
      const cfg = e.adapterConfig;
      assert.equal(cfg.peft_type, "LORA");
      assert.equal(cfg.task_type, "CAUSAL_LM");
      assert.equal(cfg.r, 8);
      assert.equal(cfg.lora_alpha, 16);
      assert.equal(cfg.use_rslora, true);
      assert.equal(cfg.use_dora, true);
      assert.equal(cfg.fan_in_fan_out, false);
      assert.equal(cfg.base_model_name_or_path, "tiny/llama3");
      assert.deepEqual(cfg.target_modules, ["k_proj", "o_proj", "q_proj", "v_proj"]);
    } finally {
      s.done();
    }
  });
}

test("export of a TorchTitan-trained adapter without metadata needs --alpha; the TorchTitan scale alpha / rank is kept", async () => {
  const s = setup();
  try {
    await loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "tt"), base: join(s.dir, "base") });
    rmSync(join(s.dir, "tt", "lora_config.json"));
    await assert.rejects(loraExport({ input: join(s.dir, "tt"), out: join(s.dir, "e"), config: join(s.dir, "base") }), (e: unknown) => e instanceof CkptError && e.code === "CONFIG" && /alpha/.test(e.message));
    const r = await loraExport({ input: join(s.dir, "tt"), out: join(s.dir, "e"), config: join(s.dir, "base"), alpha: 32, baseModel: "meta-llama/Llama-3.2-1B" });
    assert.equal(r.adapterConfig.lora_alpha, 32);
    assert.equal(r.adapterConfig.r, 8);
    assert.equal(r.adapterConfig.use_rslora, false);
    assert.equal(r.adapterConfig.base_model_name_or_path, "meta-llama/Llama-3.2-1B");
    assert.ok(readFileSync(join(s.dir, "e", "adapter_model.safetensors")).equals(readFileSync(join(s.dir, "peft", "adapter_model.safetensors"))));
  } finally {
    s.done();
  }
});

test("convert respects target_modules (extra modules skipped with a warning) and rejects rank / shape mismatches", async () => {
  const s = setup();
  try {
    const cfg = { ...s.adapter.config, target_modules: ["q_proj", "v_proj"] };
    writeFileSync(join(s.dir, "peft", "adapter_config.json"), JSON.stringify(cfg));
    const warnings: string[] = [];
    const r = await loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "tt"), base: join(s.dir, "base"), onWarning: (w) => warnings.push(w) });
    assert.equal(r.tensors.length, 8);
    assert.ok(r.tensors.every((t) => /\.(wq|wv)\./.test(t.name)));
    assert.equal(warnings.filter((w) => /not in target_modules/.test(w)).length, 4);
    writeFileSync(join(s.dir, "peft", "adapter_config.json"), JSON.stringify({ ...s.adapter.config, r: 4 }));
    await assert.rejects(loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "tt2"), base: join(s.dir, "base") }), (e: unknown) => e instanceof CkptError && e.code === "CONFIG" && /rank/.test(e.message));
    writeFileSync(join(s.dir, "peft", "adapter_config.json"), JSON.stringify(s.adapter.config));
    const other = tinyLlamaTensors({ hidden: 64, headDim: 16 });
    writeHfFolder(join(s.dir, "other"), other.config, []);
    await assert.rejects(loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "tt3"), base: join(s.dir, "other") }), (e: unknown) => e instanceof CkptError && e.code === "SHAPE");
  } finally {
    s.done();
  }
});

test("other architectures through their mapping: Qwen3 (rotate-half RoPE) needs no permutation; routed-expert LoRA is refused", async () => {
  const t = tmp();
  try {
    const dense = writeTinyQwen3(join(t.dir, "dense"), { dtype: "F32", experts: 0 });
    writePeftAdapter(join(t.dir, "peft"), tinyPeftAdapter(dense.tensors, { targets: ["q_proj", "k_proj", "gate_proj"] }));
    const r = await loraConvert({ adapter: join(t.dir, "peft"), out: join(t.dir, "tt"), base: join(t.dir, "dense") });
    assert.ok(r.tensors.length > 0 && r.tensors.every((x) => !x.permuted));
    assert.ok(r.tensors.some((x) => x.name === "layers.0.feed_forward.w1.lora_a.weight"));
    const moe = writeTinyQwen3(join(t.dir, "moe"), { dtype: "F32" });
    writePeftAdapter(join(t.dir, "peft-moe"), tinyPeftAdapter(moe.tensors, { targets: ["q_proj", "down_proj"] }));
    await assert.rejects(loraConvert({ adapter: join(t.dir, "peft-moe"), out: join(t.dir, "tt2"), base: join(t.dir, "moe") }), (e: unknown) => e instanceof CkptError && e.code === "UNMAPPED" && /experts/.test(e.message));
  } finally {
    t.done();
  }
});

// ---- merge ---------------------------------------------------------------------------------------------------------

/**
 * Straightforward f64 reference of numerics.md §9 (exact up to f64 rounding), and for each element the size of the
 * terms it is made of, max(|W|, s·Σ|B||A|) (× m_i/n_i for DoRA), against which f32 rounding error is measured.
 */
function refMerge(W: Float32Array, A: Float32Array, B: Float32Array, out: number, inn: number, r: number, s: number, m?: Float32Array): { value: Float64Array; mag: Float64Array } {
  const V = new Float64Array(out * inn);
  const mag = new Float64Array(out * inn);
  for (let i = 0; i < out; i++) for (let j = 0; j < inn; j++) {
    let acc = 0;
    let abs = 0;
    for (let k = 0; k < r; k++) { acc += B[i * r + k]! * A[k * inn + j]!; abs += Math.abs(B[i * r + k]! * A[k * inn + j]!); }
    V[i * inn + j] = W[i * inn + j]! + s * acc;
    mag[i * inn + j] = Math.max(Math.abs(W[i * inn + j]!), s * abs);
  }
  for (let i = 0; i < out && m; i++) {
    let n = 0;
    for (let j = 0; j < inn; j++) n += V[i * inn + j]! ** 2;
    const factor = m[i]! / Math.sqrt(n);
    for (let j = 0; j < inn; j++) { V[i * inn + j]! *= factor; mag[i * inn + j]! *= Math.abs(factor); }
  }
  return { value: V, mag };
}

/**
 * f32 merge vs the exact reference: sequential f32 sums of r products, the scale, the sum with W and (DoRA) the
 * norm, quotient and product each add at most half an ulp of f32 (2^-24) of the magnitude of their terms.
 */
function assertNearExact(got: Float32Array, ref: { value: Float64Array; mag: Float64Array }, r: number, inn: number, dora: boolean, what: string): void {
  const u = 2 ** -24;
  const steps = r + 3 + (dora ? inn / 8 + 8 + 3 : 0);
  for (let x = 0; x < got.length; x++) {
    const err = Math.abs(got[x]! - ref.value[x]!);
    assert.ok(err <= steps * u * ref.mag[x]! * 1.01, `${what}[${x}]: ${got[x]} vs exact ${ref.value[x]} (error ${err}, bound ${steps * u * ref.mag[x]!})`);
  }
}

test("mergeWeight: f32 in PEFT/PyTorch CPU order, worked by hand", () => {
  const f = Math.fround;
  // (B @ A) = 1 + 2^-25 + 2^-25 + 2^-25 summed in f32 from the left: each 1 + 2^-25 rounds back to 1 (below half an
  // ulp of 1), so the f32 merge is 1, while the exact sum 1 + 0.75·2^-23 rounds to 1 + 2^-23.
  const A = Float32Array.from([1, 2 ** -25, 2 ** -25, 2 ** -25]); // [r=4, in=1]
  const B = Float32Array.from([1, 1, 1, 1]); // [out=1, r=4]
  assert.deepEqual(mergeWeight(new Float32Array(1), 1, 1, A, B, 4, 1), Float32Array.from([1]));
  assert.equal(f(1 + 0.75 * 2 ** -23), 1 + 2 ** -23, "the exact value would round up");
  // the scale is applied as f32(s) to the rounded product, then W is added: W = 3, B·A = 1/3 (f32), s = 3
  const third = f(1 / 3);
  const got = mergeWeight(Float32Array.from([3]), 1, 1, Float32Array.from([third]), Float32Array.from([1]), 1, 3);
  assert.equal(got[0], f(3 + f(third * 3)));
  // DoRA: a row of 9 = one block of 8 lanes + a 1-element tail; V = [3, 0 …, 0, 4] → ‖V‖ = 5, m = 10 → 2·V
  const W9 = Float32Array.from([3, 0, 0, 0, 0, 0, 0, 0, 4]);
  const dora = mergeWeight(W9, 1, 9, new Float32Array(9), new Float32Array(1), 1, 1, Float32Array.from([10]));
  assert.deepEqual(dora, Float32Array.from([6, 0, 0, 0, 0, 0, 0, 0, 8]));
});

test("mergeWeight: W + s·B·A and DoRA row renormalisation within f32 rounding of the exact values; transposed (fan_in_fan_out) storage", () => {
  const rnd = ((s) => () => ((s = (s * 1103515245 + 12345) >>> 0) / 2 ** 32) - 0.5)(7);
  const [out, inn, r] = [6, 21, 3];
  const W = Float32Array.from({ length: out * inn }, rnd);
  const A = Float32Array.from({ length: r * inn }, rnd);
  const B = Float32Array.from({ length: out * r }, rnd);
  const m = Float32Array.from({ length: out }, () => 1 + rnd());
  const plain = mergeWeight(W, out, inn, A, B, r, 1.5);
  assertNearExact(plain, refMerge(W, A, B, out, inn, r, 1.5), r, inn, false, "plain");
  const dora = mergeWeight(W, out, inn, A, B, r, 1.5, m);
  assertNearExact(dora, refMerge(W, A, B, out, inn, r, 1.5, m), r, inn, true, "dora");
  for (let i = 0; i < out; i++) {
    let n = 0;
    for (let j = 0; j < inn; j++) n += dora[i * inn + j]! ** 2;
    assert.ok(Math.abs(Math.sqrt(n) - m[i]!) < 1e-6, "DoRA rows have norm m_i");
  }
  const Wt = new Float32Array(out * inn);
  for (let i = 0; i < out; i++) for (let j = 0; j < inn; j++) Wt[j * out + i] = W[i * inn + j]!;
  const t = mergeWeight(Wt, out, inn, A, B, r, 1.5, undefined, true);
  for (let i = 0; i < out; i++) for (let j = 0; j < inn; j++) assert.equal(t[j * out + i], plain[i * inn + j]);
  // B = 0: exactly W
  assert.deepEqual(mergeWeight(W, out, inn, A, new Float32Array(out * r), r, 2), W);
});

// ---- native merge kernel == the TypeScript path --------------------------------------------------------------

const addon = loadNative();
const NATIVE_SKIP = addon ? false : `native addon not built (${nativeLoadError()}); run npm run build:native`;

/** mergeWeight on its TypeScript path (CKPT_NATIVE=0 selects the reference kernels, which have no loraMerge). */
function mergeWeightTs(...args: Parameters<typeof mergeWeight>): Float32Array {
  const saved = process.env.CKPT_NATIVE;
  process.env.CKPT_NATIVE = "0";
  resetKernelsForTests();
  try {
    assert.equal(getKernels().loraMerge, undefined);
    return mergeWeight(...args);
  } finally {
    if (saved === undefined) delete process.env.CKPT_NATIVE; else process.env.CKPT_NATIVE = saved;
    resetKernelsForTests();
  }
}

/**
 * f32 values over many binades, so that every rounding step matters: ±0, subnormals, tiny normals (whose squares
 * underflow), ordinary values and large ones (kept below 2^21 so DoRA's sums of squares stay finite).
 */
function spreadF32(n: number, next: () => number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = next(), v = next();
    const sign = u & 1 ? -1 : 1, frac = 1 + (v >>> 8) / 2 ** 24, e = (u >>> 5) % 24;
    switch ((u >>> 1) % 12) {
      case 0: a[i] = 0; break;
      case 1: a[i] = -0; break;
      case 2: a[i] = sign * ((v >>> 9) || 1) * 2 ** -149; break;
      case 3: a[i] = sign * frac * 2 ** (-126 + e); break;
      case 4: a[i] = sign * frac * 2 ** (10 + (e % 11)); break;
      default: a[i] = sign * frac * 2 ** (e - 12);
    }
  }
  return a;
}

/** Bit-for-bit equality of two f32 arrays (any NaN matches any NaN: JS does not pin NaN payloads). */
function assertSameBits(got: Float32Array, want: Float32Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length), w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  let first = -1, count = 0;
  for (let x = 0; x < g.length; x++) {
    if (g[x] === w[x] || (Number.isNaN(got[x]) && Number.isNaN(want[x]))) continue;
    if (first < 0) first = x;
    count++;
  }
  if (count > 0) {
    assert.fail(`${what}: ${count} of ${g.length} elements differ; first at ${first}: ` +
      `0x${g[first]!.toString(16)} (${got[first]}) vs TypeScript 0x${w[first]!.toString(16)} (${want[first]})`);
  }
}

test("mergeWeight: native kernel == TypeScript path bit for bit (every ISA tier; shapes, ranks, DoRA, transposed, ±0, subnormals)", { skip: NATIVE_SKIP }, () => {
  assert.equal(typeof addon!.loraMerge, "function", "the addon predates loraMerge: run npm run build:native");
  const native = nativeKernelsFrom(addon!);
  const tiersAll = ["scalar", "avx2", "avx512"];
  const tiers = tiersAll.slice(0, tiersAll.indexOf(addon!.bestIsa()) + 1);
  let x = 0x9e3779b9;
  const next = () => { x ^= x << 13; x ^= x >>> 17; x ^= x << 5; return x >>> 0; };
  const scales = [1.5, 0.1, 2 / 3, 1 / 16, 3000.7];
  const shapes: [number, number][] = [];
  const outs = [1, 4, 6, 9, 37];
  for (const inn of [5, 8, 13, 64, 100]) for (const r of [1, 3, 8, 16]) shapes.push([outs[shapes.length % outs.length]!, inn]);
  shapes.push([37, 259], [70, 45], [33, 1]);
  let cases = 0;
  try {
    shapes.forEach(([out, inn], idx) => {
      const r = [1, 3, 8, 16][idx % 4]!;
      for (const dora of [false, true]) for (const transposed of [false, true]) {
        const W = spreadF32(out * inn, next), A = spreadF32(r * inn, next), B = spreadF32(out * r, next);
        const m = dora ? spreadF32(out, next) : undefined;
        if (idx % 5 === 0) B.fill(0, 0, r); // row 0 of B @ A is exactly 0
        const s = scales[cases % scales.length]!;
        const what = `out=${out} in=${inn} r=${r} s=${s}${dora ? " dora" : ""}${transposed ? " transposed" : ""}`;
        const want = mergeWeightTs(W, out, inn, A, B, r, s, m, transposed);
        for (const isa of tiers) {
          assert.equal(addon!.setIsa(isa), isa);
          const got = new Float32Array(out * inn);
          native.loraMerge!(W, out, inn, A, B, r, s, m, transposed, got);
          assertSameBits(got, want, `${what} native(${isa})`);
        }
        addon!.setIsa("auto");
        assertSameBits(mergeWeight(W, out, inn, A, B, r, s, m, transposed), want, `${what} mergeWeight (${getKernels().name})`);
        cases++;
      }
    });
    // a DoRA row whose V is all zero: norm 0, m / 0 = ±inf, inf · 0 = NaN on both paths
    const [out, inn, r] = [3, 11, 2];
    const W = spreadF32(out * inn, next), A = spreadF32(r * inn, next), B = spreadF32(out * r, next), m = Float32Array.from([2, -1, 0.5]);
    W.fill(0, inn, 2 * inn); B.fill(0, r, 2 * r);
    const want = mergeWeightTs(W, out, inn, A, B, r, 1, m, false);
    assert.ok(want.subarray(inn, 2 * inn).every(Number.isNaN));
    for (const isa of tiers) {
      addon!.setIsa(isa);
      const got = new Float32Array(out * inn);
      native.loraMerge!(W, out, inn, A, B, r, 1, m, false, got);
      assertSameBits(got, want, `zero DoRA row native(${isa})`);
    }
  } finally {
    addon!.setIsa("auto");
  }
  assert.equal(cases, (shapes.length) * 4);
});

test("native loraMerge rejects wrong lengths, non-Float32Array buffers and an output overlapping an input", { skip: NATIVE_SKIP }, () => {
  const k = nativeKernelsFrom(addon!);
  const [out, inn, r] = [3, 5, 2];
  const W = new Float32Array(out * inn), A = new Float32Array(r * inn), B = new Float32Array(out * r), m = new Float32Array(out);
  const res = new Float32Array(out * inn);
  const lora = (...a: Parameters<NonNullable<typeof k.loraMerge>>) => k.loraMerge!(...a);
  lora(W, out, inn, A, B, r, 1, m, false, res);
  assert.throws(() => lora(W.subarray(1), out, inn, A, B, r, 1, m, false, res), /W must have out \* inn elements/);
  assert.throws(() => lora(W, out, inn, A.subarray(1), B, r, 1, m, false, res), /A must have r \* inn elements/);
  assert.throws(() => lora(W, out, inn, A, B.subarray(1), r, 1, m, false, res), /B must have out \* r elements/);
  assert.throws(() => lora(W, out, inn, A, B, r, 1, m.subarray(1), false, res), /m must have out elements/);
  assert.throws(() => lora(W, out, inn, A, B, r, 1, new Float32Array(0), false, res), /m must have out elements/);
  assert.throws(() => lora(W, out, inn, A, B, r, 1, m, false, new Float32Array(1)), /res must have out \* inn elements/);
  assert.throws(() => lora(W, out, inn, new Float64Array(r * inn) as unknown as Float32Array, B, r, 1, m, false, res), /A must be a Float32Array/);
  const shared = new Float32Array(2 * out * inn);
  assert.throws(() => lora(shared.subarray(0, out * inn), out, inn, A, B, r, 1, m, false, shared.subarray(3, 3 + out * inn)), /must not overlap/);
});

test("merge HF base + PEFT adapter: merged weights within f32 rounding of the exact values, other tensors byte-identical, bf16 = RNE(f32)", async () => {
  const s = setup({ dora: true, rslora: true });
  try {
    const r = await loraMerge({ base: join(s.dir, "base"), adapter: join(s.dir, "peft"), out: join(s.dir, "m32") });
    assert.equal(r.layout, "hf");
    assert.equal(r.merged.length, 8);
    const got = readSt(join(s.dir, "m32", "model.safetensors")).tensors;
    const ad = readSt(join(s.dir, "peft", "adapter_model.safetensors")).tensors;
    const sc = 16 / Math.sqrt(8);
    for (const t of s.base.tensors) {
      const g = got.get(t.name)!;
      const mm = /^(model\.layers\.\d+\.self_attn\.[qkvo]_proj)\.weight$/.exec(t.name);
      if (!mm) { assert.ok(g.bytes.equals(Buffer.from(t.data)), t.name); continue; }
      const p = `base_model.model.${mm[1]}`;
      const A = f32(ad.get(`${p}.lora_A.weight`)!.bytes), B = f32(ad.get(`${p}.lora_B.weight`)!.bytes), M = f32(ad.get(`${p}.lora_magnitude_vector`)!.bytes);
      const [out, inn] = t.shape as [number, number];
      assertNearExact(f32(g.bytes), refMerge(f32(t.data), A, B, out, inn, 8, sc, M), 8, inn, true, t.name);
    }
    assert.ok(existsSync(join(s.dir, "m32", "config.json")));
    await loraMerge({ base: join(s.dir, "base"), adapter: join(s.dir, "peft"), out: join(s.dir, "m16"), dtype: "bf16" });
    const g16 = readSt(join(s.dir, "m16", "model.safetensors")).tensors;
    for (const [name, t] of got) {
      const n = t.bytes.length / 4;
      const want = new Uint8Array(n * 2);
      referenceKernels.cast(new Uint8Array(f32(t.bytes).buffer), "F32", want, "BF16", n);
      assert.equal(g16.get(name)!.dtype, "BF16");
      assert.deepEqual(new Uint8Array(g16.get(name)!.bytes), want, name);
    }
    assert.equal(JSON.parse(readFileSync(join(s.dir, "m16", "config.json"), "utf8")).torch_dtype, "bfloat16");
  } finally {
    s.done();
  }
});

test("merge TorchTitan base + TorchTitan adapter equals the TorchTitan conversion of the HF merge, bit for bit", async () => {
  const s = setup({ dora: true });
  try {
    await runConvert({ source: join(s.dir, "base"), out: join(s.dir, "base-tt"), threads: 0 });
    await loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "ad-tt"), base: join(s.dir, "base") });
    const tt = await loraMerge({ base: join(s.dir, "base-tt"), adapter: join(s.dir, "ad-tt"), out: join(s.dir, "m-tt") });
    assert.equal(tt.layout, "tt");
    assert.equal(tt.format, "dcp");
    assert.equal(tt.target, "torchtitan@main");
    await loraMerge({ base: join(s.dir, "base"), adapter: join(s.dir, "peft"), out: join(s.dir, "m-hf") });
    await runConvert({ source: join(s.dir, "m-hf"), out: join(s.dir, "m-hf-tt"), threads: 0 });
    const a = await readDcp(join(s.dir, "m-tt")), b = await readDcp(join(s.dir, "m-hf-tt"));
    assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
    for (const [k, v] of a) assert.ok(v.bytes.equals(b.get(k)!.bytes), k);
    assert.ok(existsSync(join(s.dir, "m-tt", "hf_assets", "config.json")));
    // mixed layouts: TorchTitan base + PEFT adapter, HF base + TorchTitan adapter
    await loraMerge({ base: join(s.dir, "base-tt"), adapter: join(s.dir, "peft"), out: join(s.dir, "m-tt2"), format: "safetensors" });
    const c = readSt(join(s.dir, "m-tt2", "model.safetensors")).tensors;
    for (const [k, v] of a) assert.ok(v.bytes.equals(c.get(k)!.bytes), k);
    await loraMerge({ base: join(s.dir, "base"), adapter: join(s.dir, "ad-tt"), out: join(s.dir, "m-hf2") });
    assert.ok(readFileSync(join(s.dir, "m-hf2", "model.safetensors")).equals(readFileSync(join(s.dir, "m-hf", "model.safetensors"))));
  } finally {
    s.done();
  }
});

test("merge a TorchTitan checkpoint holding base + LoRA weights (TorchTitan's own layout, alpha given); LoRA tensors are dropped", async () => {
  const s = setup();
  try {
    await runConvert({ source: join(s.dir, "base"), out: join(s.dir, "base-tt"), format: "safetensors", threads: 0 });
    await loraConvert({ adapter: join(s.dir, "peft"), out: join(s.dir, "ad.safetensors"), base: join(s.dir, "base"), format: "safetensors" });
    const baseSt = readSt(join(s.dir, "base-tt", readdirSync(join(s.dir, "base-tt")).find((f) => f.endsWith(".safetensors"))!)).tensors;
    const adSt = readSt(join(s.dir, "ad.safetensors")).tensors;
    const all = [...baseSt, ...adSt].map(([fqn, t]) => ({ fqn, dtype: t.dtype as "F32", shape: t.shape, data: new Uint8Array(t.bytes) }));
    await writeSingleFileDcp(join(s.dir, "combined"), all);
    writeFileSync(join(s.dir, "cfg.json"), JSON.stringify(s.base.config));
    await assert.rejects(loraMerge({ base: join(s.dir, "combined"), out: join(s.dir, "m0"), config: join(s.dir, "cfg.json") }), (e: unknown) => e instanceof CkptError && /alpha/.test(e.message));
    const r = await loraMerge({ base: join(s.dir, "combined"), out: join(s.dir, "m"), config: join(s.dir, "cfg.json"), alpha: 16 });
    assert.equal(r.merged.length, 8);
    const got = await readDcp(join(s.dir, "m"));
    assert.equal(got.size, baseSt.size);
    await loraMerge({ base: join(s.dir, "base-tt"), adapter: join(s.dir, "ad.safetensors"), out: join(s.dir, "m2"), format: "dcp" });
    const ref = await readDcp(join(s.dir, "m2"));
    for (const [k, v] of ref) assert.ok(v.bytes.equals(got.get(k)!.bytes), k);
  } finally {
    s.done();
  }
});

test("merge: an untrained adapter (B = 0) leaves W bit-identical; DoRA at init (m = ‖W row‖) merges to W within an ulp", async () => {
  const t = tmp();
  try {
    const base = tinyLlamaTensors({ dtype: "F32" });
    writeHfFolder(join(t.dir, "base"), base.config, base.tensors);
    writePeftAdapter(join(t.dir, "zero"), tinyPeftAdapter(base.tensors, { bScale: 0 }));
    await loraMerge({ base: join(t.dir, "base"), adapter: join(t.dir, "zero"), out: join(t.dir, "m") });
    assert.ok(readFileSync(join(t.dir, "m", "model.safetensors")).equals(readFileSync(join(t.dir, "base", "model.safetensors"))));
    const init = tinyPeftAdapter(base.tensors, { bScale: 0, dora: true });
    for (const a of init.tensors.filter((x) => x.name.endsWith("lora_magnitude_vector"))) {
      const w = base.tensors.find((x) => `base_model.model.${x.name.replace(/\.weight$/, "")}.lora_magnitude_vector` === a.name)!;
      const W = f32(w.data), [out, inn] = w.shape as [number, number], m = new Float32Array(out);
      for (let i = 0; i < out; i++) { let n = 0; for (let j = 0; j < inn; j++) n += W[i * inn + j]! ** 2; m[i] = Math.sqrt(n); }
      a.data = new Uint8Array(m.buffer);
    }
    writePeftAdapter(join(t.dir, "dinit"), init);
    await loraMerge({ base: join(t.dir, "base"), adapter: join(t.dir, "dinit"), out: join(t.dir, "md") });
    const got = readSt(join(t.dir, "md", "model.safetensors")).tensors;
    for (const w of base.tensors) {
      const a = f32(w.data), b = f32(got.get(w.name)!.bytes);
      for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i]! - b[i]!) <= Math.abs(a[i]!) * 2 ** -22, `${w.name}[${i}]`);
    }
  } finally {
    t.done();
  }
});

test("merge with fan_in_fan_out: a base weight stored [in, out] (Conv1D-style) gets the transposed update", async () => {
  const t = tmp();
  try {
    const base = tinyLlamaTensors({ dtype: "F32" });
    writeHfFolder(join(t.dir, "base"), base.config, base.tensors);
    const ad = tinyPeftAdapter(base.tensors, { targets: ["q_proj"], extraConfig: { fan_in_fan_out: true } });
    writePeftAdapter(join(t.dir, "peft"), ad);
    const warnings: string[] = [];
    await loraMerge({ base: join(t.dir, "base"), adapter: join(t.dir, "peft"), out: join(t.dir, "m"), onWarning: (w) => warnings.push(w) });
    assert.ok(warnings.some((w) => /fan_in_fan_out/.test(w)));
    const normal = readSt(join(t.dir, "m", "model.safetensors")).tensors;
    // the same weights stored transposed
    const tr = base.tensors.map((x) => {
      if (!x.name.endsWith("q_proj.weight")) return x;
      const [o, i] = x.shape as [number, number], v = f32(x.data), w = new Float32Array(o * i);
      for (let a = 0; a < o; a++) for (let b = 0; b < i; b++) w[b * o + a] = v[a * i + b]!;
      return { ...x, shape: [i, o], data: new Uint8Array(w.buffer) };
    });
    writeHfFolder(join(t.dir, "base-t"), base.config, tr);
    const r = await loraMerge({ base: join(t.dir, "base-t"), adapter: join(t.dir, "peft"), out: join(t.dir, "mt") });
    assert.ok(r.merged.every((x) => x.transposed));
    const got = readSt(join(t.dir, "mt", "model.safetensors")).tensors;
    for (const [name, v] of normal) {
      if (!name.endsWith("q_proj.weight")) continue;
      const [o, i] = v.shape as [number, number], a = f32(v.bytes), b = f32(got.get(name)!.bytes);
      for (let x = 0; x < o; x++) for (let y = 0; y < i; y++) assert.equal(b[y * o + x], a[x * i + y]);
    }
  } finally {
    t.done();
  }
});

test("merge --dtype f16 refuses overflow unless allowed", async () => {
  const t = tmp();
  try {
    const base = tinyLlamaTensors({ dtype: "F32" });
    const q = base.tensors.find((x) => x.name === "model.layers.0.self_attn.q_proj.weight")! as GeneratedTensor;
    const v = f32(q.data); v[5] = 1e5; q.data = new Uint8Array(v.buffer);
    writeHfFolder(join(t.dir, "base"), base.config, base.tensors);
    writePeftAdapter(join(t.dir, "peft"), tinyPeftAdapter(base.tensors));
    await assert.rejects(loraMerge({ base: join(t.dir, "base"), adapter: join(t.dir, "peft"), out: join(t.dir, "m"), dtype: "f16" }), (e: unknown) => e instanceof CkptError && e.code === "OVERFLOW");
    assert.ok(!existsSync(join(t.dir, "m")));
    const r = await loraMerge({ base: join(t.dir, "base"), adapter: join(t.dir, "peft"), out: join(t.dir, "m"), dtype: "f16", allowOverflow: true });
    assert.equal(r.f16Overflow, 1);
  } finally {
    t.done();
  }
});

test("CLI: lora convert / export / merge", () => {
  const s = setup({ dora: true });
  try {
    const run = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", env: { ...process.env, CKPT_NATIVE: process.env.CKPT_NATIVE ?? "" } });
    let r = run("lora", "convert", join(s.dir, "peft"), join(s.dir, "tt"), "--base", join(s.dir, "base"));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /scale s = alpha \/ r = 16 \/ 8 = 2 {2}\(DoRA\)/);
    assert.match(r.stdout, /target_modules = \["wk","wo","wq","wv"\]/);
    r = run("lora", "export", join(s.dir, "tt"), join(s.dir, "pe"), "--config", join(s.dir, "base"), "--json");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).adapterConfig.use_dora, true);
    r = run("lora", "merge", join(s.dir, "base"), join(s.dir, "peft"), join(s.dir, "m"), "--dtype", "bf16", "--quiet");
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /model\.layers\.1\.self_attn\.v_proj\.weight\s+8\s+2\s+yes/);
    r = run("convert", join(s.dir, "base"), join(s.dir, "base-tt"), "--quiet");
    assert.equal(r.status, 0, r.stderr);
    r = run("lora", "merge", join(s.dir, "base-tt"), join(s.dir, "tt"), join(s.dir, "mtt"), "--json");
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.layout, "tt");
    assert.equal(j.format, "dcp");
    assert.equal(j.merged.length, 8);
    r = run("lora", "merge", join(s.dir, "base-tt"), "-", join(s.dir, "mtt2"));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /no LoRA tensors/);
    r = run("lora", "convert", join(s.dir, "peft"), join(s.dir, "tt2"));
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /base/);
    r = run("lora", "export", join(s.dir, "peft"), join(s.dir, "x"), "--config", join(s.dir, "base"));
    assert.equal(r.status, 1);
    assert.match(r.stderr, /ckpt: USAGE: .*already a PEFT adapter/);
  } finally {
    s.done();
  }
});
