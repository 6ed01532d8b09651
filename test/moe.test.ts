// MoE architectures as data: mappings/qwen3.json and mappings/deepseek_v3.json on tiny generated
// checkpoints. Plan assertions (names, shapes, numeric expert order, missing experts, FP8 scales consumed, MTP layers
// reported), and conversions HF → TorchTitan → HF checked byte for byte in TypeScript (torchtitan-layout.md §6–8).
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { DType } from "../src/dtypes.js";
import { elementSize, numelOf } from "../src/dtypes.js";
import { CkptError } from "../src/errors.js";
import { openDcp, readStoredChunk } from "../src/formats/dcp/index.js";
import { mappingByName } from "../src/mapping/load.js";
import { validateMapping } from "../src/mapping/schema.js";
import { runConvert } from "../src/commands/convert.js";
import { planConversion } from "../src/plan/convert-plan.js";
import type { Recipe } from "../src/plan/recipe.js";
import { writeHfFolder, type GeneratedTensor } from "../src/fixtures/tiny-llama.js";
import { tinyQwen3Tensors, writeTinyQwen3 } from "../src/fixtures/tiny-qwen3.js";
import { tinyDeepSeekTensors, writeTinyDeepSeek } from "../src/fixtures/tiny-deepseek.js";
import { readFolder as readHf, type FullTensor } from "./helpers/read-folder.js";
import { readDcpFull } from "./helpers/dcp-full.js";
import { dequantBf16 } from "./helpers/fp8.js";

type Full = FullTensor;

function tmp(): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-moe-"));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}


function catalogOf(tensors: GeneratedTensor[]) {
  let off = 0;
  return {
    tensors: new Map(tensors.map((t) => {
      const piece = { offsets: t.shape.map(() => 0), sizes: t.shape, file: "model.safetensors", byteOffset: off, byteLength: t.data.length };
      off += t.data.length;
      return [t.name, { name: t.name, dtype: t.dtype, shape: t.shape, pieces: [piece] }];
    })),
  };
}

function expectCode(code: string, re?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof CkptError, `expected CkptError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (re) assert.match(e.message, re);
    return true;
  };
}

const leafNames = (r: Recipe): string[] => r.op === "stack" ? r.inputs.flatMap(leafNames) : r.op === "source" || r.op === "dequant" ? [r.tensor] : "input" in r ? leafNames(r.input) : [];

test("mappings/qwen3.json and deepseek_v3.json validate, and the schema rejects bad experts/dtype fields", () => {
  assert.equal(mappingByName("qwen3").architecture, "qwen3");
  assert.equal(mappingByName("deepseek_v3").dequant?.block, 128);
  const base = { architecture: "x", match: {}, dims: { n: ["a"] }, targets: ["torchtitan@main"] };
  assert.throws(() => validateMapping({ ...base, tensors: [{ hf: "a", tt: "b", experts: "nope" }] }, "x.json"), expectCode("MAPPING", /experts/));
  assert.throws(() => validateMapping({ ...base, tensors: [{ hf: "a", tt: "b", dtype: "I64" }] }, "x.json"), expectCode("MAPPING", /dtype/));
  validateMapping({ ...base, tensors: [{ hf: "a.{E}", tt: "b", experts: "n", dtype: "F32" }] }, "x.json");
});

test("qwen3-moe plan: names per target, shapes, dense + MoE layers, expert bias synthesised, no rope", () => {
  const g = tinyQwen3Tensors({ experts: 4, layers: 3, mlpOnlyLayers: [0] });
  const mapping = mappingByName("qwen3");
  const cat = catalogOf(g.tensors);
  const main = planConversion(cat, { mapping, config: g.config, direction: "hf_to_tt", target: "torchtitan@main" });
  const byName = new Map(main.tensors.map((t) => [t.name, t]));
  assert.deepEqual(main.unmapped, []);
  assert.ok(main.tensors.every((t) => t.recipe.op !== "rope"), "qwen3 has no q/k permutation");
  assert.deepEqual(byName.get("layers.1.attention.qkv_linear.wq.weight")?.shape, [128, 64]);
  assert.deepEqual(byName.get("layers.1.attention.q_norm.weight")?.shape, [32]);
  assert.deepEqual(byName.get("layers.2.attention.k_norm.weight")?.shape, [32]);
  assert.ok(byName.has("layers.0.feed_forward.w1.weight") && !byName.has("layers.0.moe.router.gate.weight"), "layer 0 is dense");
  assert.ok(!byName.has("layers.1.feed_forward.w1.weight"));
  for (const L of [1, 2]) {
    const w1 = byName.get(`layers.${L}.moe.routed_experts.inner_experts.w1_EFD`)!;
    const w2 = byName.get(`layers.${L}.moe.routed_experts.inner_experts.w2_EDF`)!;
    const w3 = byName.get(`layers.${L}.moe.routed_experts.inner_experts.w3_EFD`)!;
    assert.deepEqual([w1.shape, w2.shape, w3.shape], [[4, 32, 64], [4, 64, 32], [4, 32, 64]]);
    assert.equal(w1.policy.experts, true);
    assert.deepEqual(leafNames(w3.recipe), [0, 1, 2, 3].map((e) => `model.layers.${L}.mlp.experts.${e}.up_proj.weight`));
    assert.deepEqual(byName.get(`layers.${L}.moe.router.gate.weight`)?.shape, [4, 64]);
    const bias = byName.get(`layers.${L}.moe.expert_bias_E`)!;
    assert.deepEqual([bias.dtype, bias.shape, bias.recipe.op, bias.policy.fullChunk], ["F32", [4], "zeros", true]);
  }
  assert.equal(main.tensors.length, 1 + 3 * 8 + 3 + 2 * 5 + 2);
  assert.deepEqual(main.warnings, [], "the f32 expert bias does not trigger the mixed-dtype warning");

  const old = planConversion(cat, { mapping, config: g.config, direction: "hf_to_tt", target: "torchtitan@0.2" });
  const oldNames = new Set(old.tensors.map((t) => t.name));
  for (const n of ["layers.1.attention.wq.weight", "layers.1.moe.experts.w1", "layers.1.moe.experts.w2", "layers.1.moe.experts.w3", "layers.1.moe.expert_bias", "output.weight"]) assert.ok(oldNames.has(n), n);
  assert.ok(![...oldNames].some((n) => n.includes("qkv_linear") || n.includes("routed_experts") || n.endsWith("_E")));

  const omitted = planConversion(cat, { mapping, config: g.config, direction: "hf_to_tt", omit: ["expert_bias"] });
  assert.ok(!omitted.tensors.some((t) => t.name.includes("expert_bias")));
  // --dtype f32 leaves the bias f32 and casts the rest
  const f32 = planConversion(cat, { mapping, config: g.config, direction: "hf_to_tt", dtype: "F32" });
  assert.ok(f32.tensors.every((t) => t.dtype === "F32"));
});

test("experts stack in numeric id order with E = 12 (not '0','1','10','11','2', …)", async () => {
  const t = tmp();
  try {
    const hf = join(t.dir, "hf");
    const g = writeTinyQwen3(hf, { experts: 12, layers: 2, mlpOnlyLayers: [] });
    const plan = planConversion(catalogOf(g.tensors), { mapping: mappingByName("qwen3"), config: g.config, direction: "hf_to_tt" });
    const w1 = plan.tensors.find((x) => x.name === "layers.1.moe.routed_experts.inner_experts.w1_EFD")!;
    assert.deepEqual(w1.shape, [12, 32, 64]);
    assert.deepEqual(leafNames(w1.recipe), [...Array(12).keys()].map((e) => `model.layers.1.mlp.experts.${e}.gate_proj.weight`));
    const out = join(t.dir, "tt");
    await runConvert({ source: hf, out, threads: 0 });
    const { tensors } = await readDcpFull(out);
    const src = new Map(g.tensors.map((x) => [x.name, x]));
    for (const [tt, proj] of [["w1_EFD", "gate_proj"], ["w2_EDF", "down_proj"], ["w3_EFD", "up_proj"]] as const) {
      const want = Buffer.concat([...Array(12).keys()].map((e) => Buffer.from(src.get(`model.layers.1.mlp.experts.${e}.${proj}.weight`)!.data)));
      assert.ok(tensors.get(`layers.1.moe.routed_experts.inner_experts.${tt}`)!.data.equals(want), tt);
    }
  } finally {
    t.cleanup();
  }
});

test("a missing expert is an error naming its id; a layer whose router lacks experts gets no stack", () => {
  const g = tinyQwen3Tensors({ experts: 12, layers: 2, mlpOnlyLayers: [] });
  const mapping = mappingByName("qwen3");
  const without7 = g.tensors.filter((x) => !x.name.startsWith("model.layers.1.mlp.experts.7.up_proj"));
  assert.throws(() => planConversion(catalogOf(without7), { mapping, config: g.config, direction: "hf_to_tt" }), expectCode("MISSING_TENSOR", /w3_EFD is incomplete: missing expert ids 7\b/));
  const without10and2 = g.tensors.filter((x) => !/^model\.layers\.0\.mlp\.experts\.(10|2)\.down_proj/.test(x.name));
  assert.throws(() => planConversion(catalogOf(without10and2), { mapping, config: g.config, direction: "hf_to_tt" }), expectCode("MISSING_TENSOR", /missing expert ids 2, 10/));
  // an expert id past num_experts
  const extra = [...g.tensors, { ...g.tensors.find((x) => x.name === "model.layers.0.mlp.experts.0.gate_proj.weight")!, name: "model.layers.0.mlp.experts.12.gate_proj.weight" }];
  assert.throws(() => planConversion(catalogOf(extra), { mapping, config: g.config, direction: "hf_to_tt" }), expectCode("MISSING_TENSOR", /extra ids/));
  // a non-optional tensor missing is still caught
  const noQNorm = g.tensors.filter((x) => x.name !== "model.layers.1.self_attn.q_norm.weight");
  assert.throws(() => planConversion(catalogOf(noQNorm), { mapping, config: g.config, direction: "hf_to_tt" }), expectCode("MISSING_TENSOR", /q_norm/));
});

test("deepseek-v3 plan: MLA names, dense first layer, shared experts, FP8 dequant with scales consumed, MTP reported", () => {
  const g = tinyDeepSeekTensors();
  const mapping = mappingByName("deepseek_v3");
  const cat = catalogOf(g.tensors);
  for (const target of ["torchtitan@main", "torchtitan@0.2"] as const) {
    const plan = planConversion(cat, { mapping, config: g.config, direction: "hf_to_tt", target, dtype: "BF16" });
    const byName = new Map(plan.tensors.map((t) => [t.name, t]));
    const w = (n: string) => byName.get(n)!;
    assert.deepEqual(plan.unmapped, []);
    assert.ok(![...byName.keys()].some((n) => n.includes("scale_inv") || n.includes("mtp")));
    const used = new Set(plan.tensors.flatMap((t) => [...leafNames(t.recipe), ...(t.recipe.op === "dequant" ? [t.recipe.scale] : []), ...(t.recipe.op === "stack" ? t.recipe.inputs.flatMap((i) => i.op === "dequant" ? [i.scale] : []) : [])]));
    for (const s of g.tensors.filter((x) => x.name.endsWith("_scale_inv") && !x.name.startsWith("model.layers.3."))) assert.ok(used.has(s.name), `scale ${s.name} is consumed`);
    assert.deepEqual(w("layers.0.attention.wq_a.weight").recipe, { op: "dequant", tensor: "model.layers.0.self_attn.q_a_proj.weight", scale: "model.layers.0.self_attn.q_a_proj.weight_scale_inv", block: 128 });
    assert.deepEqual(w("layers.0.attention.wq_a.weight").shape, [300, 200]);
    assert.deepEqual(w("layers.0.attention.q_norm.weight").shape, [300]);
    assert.deepEqual(w("layers.1.attention.wq_b.weight").shape, [96, 300]);
    assert.deepEqual(w("layers.1.attention.wkv_a.weight").shape, [144, 200]);
    assert.deepEqual(w("layers.1.attention.kv_norm.weight").shape, [136]);
    assert.deepEqual(w("layers.1.attention.wkv_b.weight").shape, [128, 136]);
    assert.deepEqual(w("layers.2.attention.wo.weight").shape, [200, 64]);
    assert.ok(byName.has("layers.0.feed_forward.w2.weight") && !byName.has("layers.1.feed_forward.w2.weight") && !byName.has("layers.0.moe.router.gate.weight"));
    assert.deepEqual(w("layers.1.moe.shared_experts.w2.weight").shape, [200, 64]);
    assert.deepEqual(w("layers.2.moe.router.gate.weight").recipe, { op: "source", tensor: "model.layers.2.mlp.gate.weight" });
    const bias = w(target === "torchtitan@main" ? "layers.1.moe.expert_bias_E" : "layers.1.moe.expert_bias");
    assert.deepEqual([bias.dtype, bias.shape, bias.recipe.op], ["F32", [8], "source"], "e_score_correction_bias stays f32 under --dtype bf16");
    const experts = w(target === "torchtitan@main" ? "layers.2.moe.routed_experts.inner_experts.w2_EDF" : "layers.2.moe.experts.w2");
    assert.deepEqual([experts.dtype, experts.shape], ["BF16", [8, 200, 64]]);
    assert.ok(experts.recipe.op === "stack" && experts.recipe.inputs.every((i, e) => i.op === "dequant" && i.tensor === `model.layers.2.mlp.experts.${e}.down_proj.weight`));
    assert.ok(plan.tensors.filter((t) => t.recipe.op === "dequant").every((t) => t.dtype === "BF16"));
    // MTP layer 3: every tensor reported, none converted
    const mtp = g.tensors.filter((x) => x.name.startsWith("model.layers.3.") && !x.name.endsWith("_scale_inv")).map((x) => x.name).sort();
    assert.deepEqual(plan.skipped.filter((s) => /MTP/.test(s.why)).map((s) => s.name).sort(), mtp);
    assert.ok(mtp.includes("model.layers.3.enorm.weight") && mtp.includes("model.layers.3.mlp.experts.5.up_proj.weight"));
    assert.equal(plan.tensors.length, 1 + 2 + (5 + 2 + 2) * 3 + 3 + 2 * (2 + 3 + 3));
  }
  // dequantized outputs follow config torch_dtype under --dtype keep
  const keep = planConversion(cat, { mapping, config: g.config, direction: "hf_to_tt" });
  assert.equal(keep.tensors.find((t) => t.name === "layers.0.attention.wo.weight")!.dtype, "BF16");

  // q_lora_rank = 0: a plain wq, no wq_a / q_norm / wq_b
  const lite = tinyDeepSeekTensors({ qLoraRank: 0, mtp: 0, layers: 2 });
  const lp = planConversion(catalogOf(lite.tensors), { mapping, config: lite.config, direction: "hf_to_tt" });
  const ln = new Set(lp.tensors.map((t) => t.name));
  assert.ok(ln.has("layers.0.attention.wq.weight") && ln.has("layers.1.attention.wq.weight"));
  assert.ok(![...ln].some((n) => /wq_a|wq_b|q_norm/.test(n)));
  assert.deepEqual(lp.skipped, []);

  // a scale of the wrong shape is rejected
  const bad = g.tensors.map((x) => x.name === "model.layers.0.self_attn.q_a_proj.weight_scale_inv" ? { ...x, shape: [2, 2] } : x);
  assert.throws(() => planConversion(catalogOf(bad), { mapping, config: g.config, direction: "hf_to_tt" }), expectCode("SHAPE", /\[3,2\]/));
});

test("qwen3-moe HF → TorchTitan → HF is byte-identical for both targets; sharded output reverses too", async () => {
  const t = tmp();
  try {
    const hf = join(t.dir, "hf");
    const g = writeTinyQwen3(hf, { experts: 4, files: 2 });
    for (const target of ["torchtitan@main", "torchtitan@0.2"]) {
      for (const world of [1, 4]) {
        const tt = join(t.dir, `tt-${target}-${world}`);
        const back = join(t.dir, `back-${target}-${world}`);
        await runConvert({ source: hf, out: tt, target, worldSize: world, threads: 0 });
        const { tensors } = await readDcpFull(tt);
        const bias = tensors.get(target === "torchtitan@main" ? "layers.1.moe.expert_bias_E" : "layers.1.moe.expert_bias")!;
        assert.deepEqual([bias.dtype, bias.shape], ["F32", [4]]);
        assert.ok(bias.data.every((b) => b === 0));
        const r = await runConvert({ source: tt, out: back, to: "hf", threads: 0 });
        assert.ok(r.plan.skipped.some((s) => /expert_bias/.test(s.name)), "the synthesised bias has no HF counterpart");
        const got = await readHf(back);
        assert.deepEqual([...got.keys()].sort(), g.tensors.map((x) => x.name).sort());
        for (const x of g.tensors) {
          const y = got.get(x.name)!;
          assert.deepEqual([y.dtype, y.shape], [x.dtype, x.shape], x.name);
          assert.ok(y.data.equals(x.data), `${x.name} (${target}, world ${world})`);
        }
      }
    }
  } finally {
    t.cleanup();
  }
});

test("qwen3 dense, tied: both embedding keys in the DCP, lm_head left out on the way back", async () => {
  const t = tmp();
  try {
    const hf = join(t.dir, "hf");
    const g = writeTinyQwen3(hf, { experts: 0, tied: true, layers: 2 });
    assert.equal((g.config.architectures as string[])[0], "Qwen3ForCausalLM");
    const tt = join(t.dir, "tt");
    const r = await runConvert({ source: hf, out: tt, threads: 0 });
    assert.ok(!r.plan.tensors.some((x) => x.name.includes("moe")));
    const { tensors } = await readDcpFull(tt);
    assert.ok(tensors.get("lm_head.weight")!.data.equals(tensors.get("tok_embeddings.weight")!.data));
    const back = join(t.dir, "back");
    await runConvert({ source: tt, out: back, to: "hf", threads: 0 });
    const got = await readHf(back);
    assert.deepEqual([...got.keys()].sort(), g.tensors.map((x) => x.name).sort());
    for (const x of g.tensors) assert.ok(got.get(x.name)!.data.equals(x.data), x.name);
  } finally {
    t.cleanup();
  }
});

test("deepseek-v3 FP8: DCP equals the independent dequant; HF → TT → HF gives the dequantized tensors", async () => {
  const t = tmp();
  try {
    const hf = join(t.dir, "hf");
    const g = writeTinyDeepSeek(hf, { files: 3 });
    const src = new Map(g.tensors.map((x) => [x.name, { dtype: x.dtype, shape: x.shape, data: Buffer.from(x.data) } as Full]));
    // the expected HF view after a round trip: FP8 weights dequantized to bf16, scales and MTP layers gone
    const expected = new Map<string, Full>();
    for (const [name, x] of src) {
      if (name.endsWith("_scale_inv") || name.startsWith("model.layers.3.")) continue;
      const s = src.get(name + "_scale_inv");
      expected.set(name, s ? { dtype: "BF16", shape: x.shape, data: dequantBf16(x, s) } : x);
    }
    assert.ok([...src.keys()].some((n) => n.endsWith("q_a_proj.weight_scale_inv")));
    const tt = join(t.dir, "tt");
    const sharded = join(t.dir, "tt4");
    await runConvert({ source: hf, out: tt, threads: 0 });
    await runConvert({ source: hf, out: sharded, worldSize: 4, threads: 0 });
    const one = await readDcpFull(tt);
    const four = await readDcpFull(sharded);
    // spot-check the TorchTitan side directly
    assert.ok(one.tensors.get("layers.0.attention.wq_a.weight")!.data.equals(expected.get("model.layers.0.self_attn.q_a_proj.weight")!.data));
    const w1 = one.tensors.get("layers.1.moe.routed_experts.inner_experts.w1_EFD")!;
    assert.ok(w1.data.equals(Buffer.concat([...Array(8).keys()].map((e) => expected.get(`model.layers.1.mlp.experts.${e}.gate_proj.weight`)!.data))));
    assert.ok(one.tensors.get("layers.2.moe.expert_bias_E")!.data.equals(src.get("model.layers.2.mlp.gate.e_score_correction_bias")!.data));
    for (const [k, v] of one.tensors) assert.ok(four.tensors.get(k)!.data.equals(v.data), `sharded ${k} assembles to the same tensor`);
    // world 4, 8 experts: Shard(0) on the expert dim, 2 experts per rank; the f32 bias buffer is one full chunk
    const boxes = four.chunks.get("layers.1.moe.routed_experts.inner_experts.w2_EDF")!;
    assert.deepEqual(boxes.map((b) => [b.offsets, b.sizes, b.file]).sort(), [0, 1, 2, 3].map((r) => [[2 * r, 0, 0], [2, 200, 64], `__${r}_0.distcp`]));
    assert.deepEqual(four.chunks.get("layers.1.moe.expert_bias_E")!.map((b) => b.sizes), [[8]]);
    for (const [name, dir] of [["one", tt], ["four", sharded]] as const) {
      const back = join(t.dir, `back-${name}`);
      await runConvert({ source: dir, out: back, to: "hf", threads: 0 });
      const got = await readHf(back);
      assert.deepEqual([...got.keys()].sort(), [...expected.keys()].sort());
      for (const [n, x] of expected) {
        const y = got.get(n)!;
        assert.deepEqual([y.dtype, y.shape], [x.dtype, x.shape], n);
        assert.ok(y.data.equals(x.data), `${n} after the round trip (${name})`);
      }
    }
  } finally {
    t.cleanup();
  }
});

test("sharding experts: Shard(1) when there are fewer experts than FSDP ranks (sharding.md §5)", async () => {
  const t = tmp();
  try {
    const hf = join(t.dir, "hf");
    writeTinyQwen3(hf, { experts: 2, layers: 2, mlpOnlyLayers: [] });
    const out = join(t.dir, "tt");
    await runConvert({ source: hf, out, worldSize: 4, threads: 0 });
    const { chunks } = await readDcpFull(out);
    const sorted = (n: string) => chunks.get(n)!.map((b) => [b.offsets, b.sizes, b.file]).sort((a, b) => String(a[2]).localeCompare(String(b[2])));
    assert.deepEqual(sorted("layers.0.moe.routed_experts.inner_experts.w1_EFD"), [0, 1, 2, 3].map((r) => [[0, 8 * r, 0], [2, 8, 64], `__${r}_0.distcp`]));
    assert.deepEqual(sorted("layers.1.moe.routed_experts.inner_experts.w2_EDF"), [0, 1, 2, 3].map((r) => [[0, 16 * r, 0], [2, 16, 32], `__${r}_0.distcp`]));
    // router [2, 64] is an ordinary parameter: Shard(0), uneven (1, 1, 0, 0)
    assert.deepEqual(chunks.get("layers.0.moe.router.gate.weight")!.filter((b) => b.sizes[0]! > 0).map((b) => b.offsets[0]).sort(), [0, 1]);
    // fewer experts than ranks and a dim 1 FSDP cannot split evenly: refused
    const hf2 = join(t.dir, "hf2");
    const g2 = tinyQwen3Tensors({ experts: 2, layers: 1, mlpOnlyLayers: [], moeFfn: 30 });
    writeHfFolder(hf2, g2.config, g2.tensors);
    await assert.rejects(runConvert({ source: hf2, out: join(t.dir, "tt2"), worldSize: 4, threads: 0 }), expectCode("SHAPE", /not divisible/));
  } finally {
    t.cleanup();
  }
});
