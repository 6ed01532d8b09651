// Kimi K2.x through mappings/kimi_k2.json and DeepSeek MTP through mappings/deepseek_v3.json, on tiny
// generated checkpoints: names (language_model. prefixes, nested text_config), INT4 experts decoded to the value
// (nibble − 8) · scale worked here from the packed words independently of the kernels, the vision tower refused
// without --text-only, MTP layers skipped or converted to mtp_layers with --mtp, and a Kimi-K2-sized dry run.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { buildCatalog } from "../src/catalog.js";
import type { DType } from "../src/dtypes.js";
import { mappingByName, selectMapping } from "../src/mapping/load.js";
import { runConvert } from "../src/commands/convert.js";
import { planConversion } from "../src/plan/convert-plan.js";
import { openLocal } from "../src/sources/local.js";
import { tinyKimiTensors, writeTinyKimi } from "../src/fixtures/tiny-kimi.js";
import { writeTinyDeepSeek } from "../src/fixtures/tiny-deepseek.js";
import type { CatalogTensor } from "../src/catalog-types.js";
import { readFolder, type FullTensor } from "./helpers/read-folder.js";

type Full = FullTensor;

function tmp(): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-kimi-"));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}


/** Catalog of generated tensors without writing them (headers only: what planning needs). */
function fakeCatalog(tensors: { name: string; dtype: DType; shape: number[] }[]): { tensors: Map<string, CatalogTensor> } {
  const m = new Map<string, CatalogTensor>();
  for (const t of tensors) m.set(t.name, { name: t.name, dtype: t.dtype, shape: t.shape, pieces: [{ file: "x.safetensors", byteOffset: 0, byteLength: 0, offsets: t.shape.map(() => 0), sizes: t.shape }] } as unknown as CatalogTensor);
  return { tensors: m };
}

const dv = new DataView(new ArrayBuffer(4));
const bf16 = (h: number) => { dv.setUint32(0, (h << 16) >>> 0); return dv.getFloat32(0); };

/** (nibble − 8) · scale from the packed I32 words and BF16 scales, the formula of docs/numerics.md §11, as f64. */
function decodeExpected(packed: Buffer, scales: Buffer, rows: number, cols: number, group: number): Float64Array {
  const words = Math.ceil(cols / 8), groups = Math.ceil(cols / group);
  const out = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const w = packed.readUInt32LE((r * words + Math.floor(c / 8)) * 4);
      const q = ((w >>> (4 * (c % 8))) & 15) - 8;
      out[r * cols + c] = q * bf16(scales.readUInt16LE((r * groups + Math.floor(c / group)) * 2));
    }
  }
  return out;
}

test("kimi_k2 mapping: selected for K2.5 configs; language_model. prefixes, text_config dims, INT4 experts planned as int4 recipes in F32", () => {
  const g = tinyKimiTensors({ layers: 3, experts: 4 });
  const mapping = selectMapping(g.config);
  assert.equal(mapping.architecture, "kimi_k2");
  const plan = planConversion(fakeCatalog(g.tensors), { mapping, config: g.config, direction: "hf_to_tt" });
  const names = new Set(plan.tensors.map((t) => t.name));
  for (const n of ["tok_embeddings.weight", "layers.0.feed_forward.w1.weight", "layers.1.attention.wq_a.weight", "layers.2.moe.expert_bias_E", "norm.weight", "lm_head.weight"]) assert.ok(names.has(n), n);
  const w1 = plan.tensors.find((t) => t.name === "layers.1.moe.routed_experts.inner_experts.w1_EFD")!;
  assert.deepEqual(w1.shape, [4, 96, 224]);
  assert.equal(w1.dtype, "F32");
  assert.equal(w1.recipe.op, "stack");
  const first = (w1.recipe as { inputs: { op: string; group?: number }[] }).inputs[0]!;
  assert.equal(first.op, "int4");
  assert.equal(first.group, 32);
  const w2 = plan.tensors.find((t) => t.name === "layers.1.moe.routed_experts.inner_experts.w2_EDF")!;
  assert.deepEqual(w2.shape, [4, 224, 96]);
  assert.ok(plan.warnings.some((w) => /INT4 .* decoded to F32/.test(w)), plan.warnings.join("\n"));
  assert.equal(plan.unmapped.length, 0);
  // scales and shapes consumed, not converted or unmapped
  assert.ok(!plan.tensors.some((t) => /weight_(scale|shape|packed)/.test(t.name)));
  const bf = planConversion(fakeCatalog(g.tensors), { mapping, config: g.config, direction: "hf_to_tt", dtype: "BF16" });
  assert.equal(bf.tensors.find((t) => t.name === w1.name)!.dtype, "BF16");
  // the short spelling language_model.layers.* reads the same
  const s = tinyKimiTensors({ layers: 3, experts: 4, shortPrefix: true });
  assert.ok(s.tensors.some((t) => t.name.startsWith("language_model.layers.")));
  const sp = planConversion(fakeCatalog(s.tensors), { mapping, config: s.config, direction: "hf_to_tt" });
  assert.deepEqual(sp.tensors.map((t) => t.name), plan.tensors.map((t) => t.name));
});

test("kimi_k2 mapping: the vision tower is refused with a --text-only hint, and skipped and reported with it", () => {
  const g = tinyKimiTensors({ layers: 2, experts: 2, vision: true });
  const mapping = mappingByName("kimi_k2");
  assert.throws(() => planConversion(fakeCatalog(g.tensors), { mapping, config: g.config, direction: "hf_to_tt" }),
    (e: Error & { hint?: string }) => /vision tower/.test(e.message) && /--text-only/.test(e.hint ?? ""));
  const plan = planConversion(fakeCatalog(g.tensors), { mapping, config: g.config, direction: "hf_to_tt", features: ["text-only"] });
  const sk = plan.skipped.filter((x) => /--text-only/.test(x.why)).map((x) => x.name).sort();
  assert.deepEqual(sk, ["mm_projector.proj.0.weight", "vision_tower.encoder.blocks.0.wqkv.weight", "vision_tower.patch_embed.proj.weight"]);
});

test("kimi_k2 mapping: a module in quantization_config.ignore stored packed is refused; a non-symmetric config is refused", () => {
  const g = tinyKimiTensors({ layers: 2, experts: 2 });
  const mapping = mappingByName("kimi_k2");
  const cfg = structuredClone(g.config) as { text_config: { quantization_config: { ignore: string[]; config_groups: { group_0: { weights: { symmetric: boolean } } } } } };
  cfg.text_config.quantization_config.ignore.push("re:.*experts.*");
  assert.throws(() => planConversion(fakeCatalog(g.tensors), { mapping, config: cfg, direction: "hf_to_tt" }), /in quantization_config.ignore but stored packed/);
  const asym = structuredClone(g.config) as typeof cfg;
  asym.text_config.quantization_config.config_groups.group_0.weights.symmetric = false;
  assert.throws(() => planConversion(fakeCatalog(g.tensors), { mapping, config: asym, direction: "hf_to_tt" }), /symmetric/);
});

test("kimi_k2 convert: INT4 experts equal (nibble − 8) · scale (F32 exact; BF16 = its RNE rounding), bf16 tensors byte-identical", async () => {
  const t = tmp();
  try {
    const hf = join(t.dir, "hf");
    const g = writeTinyKimi(hf, { layers: 3, experts: 4, edgeScales: true, files: 3 });
    for (const dtype of ["keep", "bf16"]) {
      const out = join(t.dir, `tt-${dtype}`);
      await runConvert({ source: hf, out, format: "safetensors", dtype, threads: 0 });
      const got = await readFolder(out);
      const src = new Map(g.tensors.map((x) => [x.name, x]));
      for (const [which, tt, rows, cols] of [["gate", "w1_EFD", 96, 224], ["up", "w3_EFD", 96, 224], ["down", "w2_EDF", 224, 96]] as const) {
        for (const L of [1, 2]) {
          const o = got.get(`layers.${L}.moe.routed_experts.inner_experts.${tt}`)!;
          assert.equal(o.dtype, dtype === "keep" ? "F32" : "BF16");
          assert.deepEqual(o.shape, [4, rows, cols]);
          for (let e = 0; e < 4; e++) {
            const p = `language_model.model.layers.${L}.mlp.experts.${e}.${which}_proj.`;
            const want = decodeExpected(Buffer.from(src.get(p + "weight_packed")!.data), Buffer.from(src.get(p + "weight_scale")!.data), rows, cols, 32);
            for (let i = 0; i < want.length; i++) {
              const at = e * rows * cols + i;
              if (dtype === "keep") {
                const v = o.data.readFloatLE(at * 4);
                assert.ok(Object.is(v, want[i]), `${p} [${i}]: ${v} vs ${want[i]}`);
              } else {
                // BF16: the nearest BF16 (ties to even) of the exact value, checked by its two neighbours
                const h = o.data.readUInt16LE(at * 2);
                const v = bf16(h), x = want[i]!;
                if (x === 0) { assert.equal(h, Object.is(x, -0) ? 0x8000 : 0, `${p}[${i}]: signed zero`); continue; }
                const up = bf16(h + 1), down = bf16(h - 1);
                assert.ok(Math.abs(v - x) <= Math.abs(up - x) && Math.abs(v - x) <= Math.abs(down - x), `${p}[${i}]: bf16 0x${h.toString(16)} is not nearest to ${x}`);
                if (Math.abs(v - x) === Math.abs(up - x) && v !== up) assert.equal(h & 1, 0, "tie to even");
              }
            }
          }
        }
      }
      const emb = got.get("tok_embeddings.weight")!;
      assert.deepEqual(emb.data, Buffer.from(src.get("language_model.model.embed_tokens.weight")!.data));
      const wq = got.get("layers.1.attention.wq_a.weight")!;
      assert.deepEqual(wq.data, Buffer.from(src.get("language_model.model.layers.1.self_attn.q_a_proj.weight")!.data));
    }
  } finally {
    t.cleanup();
  }
});

test("DeepSeek MTP: without --mtp the MTP layer is skipped with a hint; with --mtp it maps to mtp_layers.0 (enorm, hnorm, eh_proj, mtp_norm; embed_tokens / shared_head.head shared)", () => {
  const mapping = mappingByName("deepseek_v3");
  const t = tmp();
  return (async () => {
    try {
      const hf = join(t.dir, "hf");
      const g = writeTinyDeepSeek(hf, { layers: 2, mtp: 1, experts: 4, fp8: false });
      const src = await openLocal(hf);
      const cat = await buildCatalog(src);
      await src.close();
      const plain = planConversion(cat, { mapping, config: g.config, direction: "hf_to_tt" });
      assert.ok(!plain.tensors.some((x) => x.name.startsWith("mtp_layers.")));
      const sk = plain.skipped.filter((x) => x.name.startsWith("model.layers.2."));
      assert.ok(sk.length > 10 && sk.every((x) => /--mtp/.test(x.why)), JSON.stringify(sk.slice(0, 3)));
      const mtp = planConversion(cat, { mapping, config: g.config, direction: "hf_to_tt", features: ["mtp"] });
      const names = mtp.tensors.map((x) => x.name).filter((n) => n.startsWith("mtp_layers."));
      for (const n of ["mtp_layers.0.enorm.weight", "mtp_layers.0.hnorm.weight", "mtp_layers.0.eh_proj.weight", "mtp_layers.0.mtp_norm.weight",
        "mtp_layers.0.attention.wq_a.weight", "mtp_layers.0.attention_norm.weight", "mtp_layers.0.moe.router.gate.weight", "mtp_layers.0.moe.expert_bias_E",
        "mtp_layers.0.moe.routed_experts.inner_experts.w1_EFD", "mtp_layers.0.moe.shared_experts.w2.weight"]) assert.ok(names.includes(n), n);
      assert.ok(!mtp.tensors.some((x) => x.name.startsWith("layers.2.")));
      const shared = mtp.skipped.filter((x) => /shared with the main model/.test(x.why)).map((x) => x.name).sort();
      assert.deepEqual(shared, ["model.layers.2.embed_tokens.weight", "model.layers.2.shared_head.head.weight"]);
      // at torchtitan@0.2 there are no MTP keys: skipped even with --mtp
      const old = planConversion(cat, { mapping, config: g.config, direction: "hf_to_tt", target: "torchtitan@0.2", features: ["mtp"] });
      assert.ok(!old.tensors.some((x) => x.name.startsWith("mtp_layers.")));
    } finally {
      t.cleanup();
    }
  })();
});

test("Kimi-K2-sized dry run (61 layers, 384 experts, INT4, synthetic headers) plans in seconds", () => {
  // Kimi K2 Thinking / K2.5 text dims: hidden 7168, 61 layers (first dense), 384 routed experts of 2048, 1 shared
  const cfg = {
    architectures: ["KimiK25ForConditionalGeneration"], model_type: "kimi_k25",
    text_config: {
      hidden_size: 7168, intermediate_size: 18432, moe_intermediate_size: 2048, num_hidden_layers: 61, num_attention_heads: 64,
      n_shared_experts: 1, n_routed_experts: 384, first_k_dense_replace: 1, q_lora_rank: 1536, kv_lora_rank: 512,
      qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, vocab_size: 163840, tie_word_embeddings: false, hidden_act: "silu",
      rope_scaling: { type: "yarn", factor: 64 },
    },
  } as Record<string, unknown>;
  (cfg.text_config as Record<string, unknown>).quantization_config = ((tinyKimiTensors({ layers: 1, experts: 1 }).config.text_config as Record<string, unknown>).quantization_config);
  const t0 = performance.now();
  const tensors: { name: string; dtype: DType; shape: number[] }[] = [];
  const D = 7168, F = 2048, p = "language_model.model.";
  tensors.push({ name: p + "embed_tokens.weight", dtype: "BF16", shape: [163840, D] }, { name: p + "norm.weight", dtype: "BF16", shape: [D] }, { name: "language_model.lm_head.weight", dtype: "BF16", shape: [163840, D] });
  for (let L = 0; L < 61; L++) {
    const l = `${p}layers.${L}.`;
    tensors.push(
      { name: l + "self_attn.q_a_proj.weight", dtype: "BF16", shape: [1536, D] }, { name: l + "self_attn.q_a_layernorm.weight", dtype: "BF16", shape: [1536] },
      { name: l + "self_attn.q_b_proj.weight", dtype: "BF16", shape: [64 * 192, 1536] }, { name: l + "self_attn.kv_a_proj_with_mqa.weight", dtype: "BF16", shape: [576, D] },
      { name: l + "self_attn.kv_a_layernorm.weight", dtype: "BF16", shape: [512] }, { name: l + "self_attn.kv_b_proj.weight", dtype: "BF16", shape: [64 * 256, 512] },
      { name: l + "self_attn.o_proj.weight", dtype: "BF16", shape: [D, 64 * 128] },
      { name: l + "input_layernorm.weight", dtype: "BF16", shape: [D] }, { name: l + "post_attention_layernorm.weight", dtype: "BF16", shape: [D] });
    if (L === 0) {
      for (const [n, s] of [["gate_proj", [18432, D]], ["up_proj", [18432, D]], ["down_proj", [D, 18432]]] as const) tensors.push({ name: `${l}mlp.${n}.weight`, dtype: "BF16", shape: [...s] });
      continue;
    }
    tensors.push({ name: l + "mlp.gate.weight", dtype: "BF16", shape: [384, D] }, { name: l + "mlp.gate.e_score_correction_bias", dtype: "F32", shape: [384] });
    for (const [n, s] of [["gate_proj", [F, D]], ["up_proj", [F, D]], ["down_proj", [D, F]]] as const) tensors.push({ name: `${l}mlp.shared_experts.${n}.weight`, dtype: "BF16", shape: [...s] });
    for (let e = 0; e < 384; e++) {
      for (const [n, [o, i]] of [["gate_proj", [F, D]], ["up_proj", [F, D]], ["down_proj", [D, F]]] as const) {
        const m = `${l}mlp.experts.${e}.${n}.`;
        tensors.push({ name: m + "weight_packed", dtype: "I32", shape: [o, i / 8] }, { name: m + "weight_scale", dtype: "BF16", shape: [o, i / 32] }, { name: m + "weight_shape", dtype: "I64", shape: [2] });
      }
    }
  }
  const cat = fakeCatalog(tensors);
  const t1 = performance.now();
  const plan = planConversion(cat, { mapping: selectMapping(cfg), config: cfg, direction: "hf_to_tt", dtype: "BF16" });
  const t2 = performance.now();
  const params = plan.tensors.reduce((s, x) => s + x.shape.reduce((a, b) => a * b, 1), 0);
  console.log(`# kimi-k2 plan: ${tensors.length} source tensors, ${plan.tensors.length} outputs, ${(params / 1e9).toFixed(1)}B params; headers ${(t1 - t0).toFixed(0)} ms, plan ${(t2 - t1).toFixed(0)} ms, rss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB`);
  assert.ok(params > 1.0e12 && params < 1.1e12, `${params}`);
  assert.ok(t2 - t1 < 120_000, `planning took ${t2 - t1} ms`); // a hang guard, not a speed test (npm run bench -- --plan measures speed)
});

test("Kimi K2 Thinking (architectures DeepseekV3ForCausalLM, model_type kimi_k2, INT4 experts): deepseek_v3.json decodes its packed experts, none unmapped; the output equals K2.5's through kimi_k2.json", async () => {
  const g = tinyKimiTensors({ layout: "k2", layers: 3, experts: 4, mtp: 1 });
  assert.deepEqual(g.config.architectures, ["DeepseekV3ForCausalLM"]);
  assert.equal(g.config.model_type, "kimi_k2");
  const mapping = selectMapping(g.config);
  assert.equal(mapping.architecture, "deepseek_v3");
  for (const features of [[], ["mtp"]] as "mtp"[][]) {
    const plan = planConversion(fakeCatalog(g.tensors), { mapping, config: g.config, direction: "hf_to_tt", features });
    assert.deepEqual(plan.unmapped, [], "packed tensors must be mapped");
    assert.ok(!plan.tensors.some((t) => /weight_(scale|shape|packed)/.test(t.name)));
    const pre = features.length ? "mtp_layers.0" : "layers.1";
    for (const [tt, shape] of [["w1_EFD", [4, 96, 224]], ["w3_EFD", [4, 96, 224]], ["w2_EDF", [4, 224, 96]]] as const) {
      const t = plan.tensors.find((x) => x.name === `${pre}.moe.routed_experts.inner_experts.${tt}`)!;
      assert.ok(t, `${pre} ${tt}`);
      assert.deepEqual(t.shape, shape);
      assert.equal(t.dtype, "F32");
      const inputs = (t.recipe as { inputs: { op: string; group?: number }[] }).inputs;
      assert.ok(inputs.length === 4 && inputs.every((i) => i.op === "int4" && i.group === 32), JSON.stringify(inputs[0]));
    }
  }
  // at torchtitan@0.2 the same rules name moe.experts.w1/w2/w3
  const old = planConversion(fakeCatalog(g.tensors), { mapping, config: g.config, direction: "hf_to_tt", target: "torchtitan@0.2" });
  assert.deepEqual(old.unmapped, []);
  assert.ok(old.tensors.some((t) => t.name === "layers.1.moe.experts.w1"));

  // end to end: the flat K2 layout and the nested K2.5 one of the same weights write the same tensors
  const t = tmp();
  try {
    writeTinyKimi(join(t.dir, "k2"), { layout: "k2", layers: 3, experts: 4, edgeScales: true, files: 2, seed: 9 });
    writeTinyKimi(join(t.dir, "k25"), { layout: "k25", layers: 3, experts: 4, edgeScales: true, files: 3, seed: 9 });
    for (const f of ["k2", "k25"]) await runConvert({ source: join(t.dir, f), out: join(t.dir, `${f}.out`), format: "safetensors", dtype: "keep", threads: 0 });
    const [a, b] = [await readFolder(join(t.dir, "k2.out")), await readFolder(join(t.dir, "k25.out"))];
    assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
    for (const [k, v] of a) assert.ok(v.data.equals(b.get(k)!.data), k);
    assert.equal(a.get("layers.1.moe.routed_experts.inner_experts.w1_EFD")!.dtype, "F32");
  } finally {
    t.cleanup();
  }
});
