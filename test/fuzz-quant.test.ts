// Fuzzing (fast-check) of what sits above the file parsers: quantized, MoE and adapter inputs whose files are valid but
// whose contents lie. Each property runs CKPT_FUZZ_RUNS inputs (default small, for CI; see fuzz.test.ts).
// - plan: mutated FP8 (DeepSeek-V3), MXFP4 (gpt-oss) and INT4 (Kimi K2) catalogs and configs (tensors dropped,
//   renamed to other layers/experts, dtypes and dims changed, weight_shape values changed, quantization_config and
//   expert counts edited) with random EP/TP meshes: only CkptErrors of an input code, and every plan that is accepted
//   decodes every quantized tensor with its own scale (no FP8 / packed tensor is ever cast as if it were values).
// - decode: random FP8 / MXFP4 / INT4 bytes and scales on both kernel tiers: identical output bytes, identical
//   first-bad index, and the worker's non-finite check fires exactly when the output holds a NaN/inf.
// - adapters: random PEFT modules (layer indices, A/B shapes) against a base: refused exactly when the base lacks the
//   module or its shape differs or a LoRA weight is not a float, always with an input code.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { CkptError } from "../src/errors.js";
import type { CatalogTensor } from "../src/catalog-types.js";
import type { CastableDType, DType } from "../src/dtypes.js";
import { selectMapping } from "../src/mapping/load.js";
import { planConversion } from "../src/plan/convert-plan.js";
import type { Recipe } from "../src/plan/recipe.js";
import { checkStoredShapes } from "../src/plan/quant-checks.js";
import { sourceView } from "../src/plan/source-names.js";
import { checkExpertMesh } from "../src/plan/sharding.js";
import type { Source } from "../src/sources/types.js";
import { referenceKernels, type Kernels } from "../src/kernels/index.js";
import { loadNative, nativeKernelsFrom } from "../src/kernels/native.js";
import { decodedNonfinite, firstNonfinite } from "../src/exec/decode-checks.js";
import { ModuleResolver } from "../src/lora/names.js";
import { validateAdapterAgainstBase } from "../src/lora/validate.js";
import { tinyDeepSeekTensors } from "../src/fixtures/tiny-deepseek.js";
import { tinyGptOssTensors } from "../src/fixtures/tiny-gpt-oss.js";
import { tinyKimiTensors } from "../src/fixtures/tiny-kimi.js";
import { tinyLlamaTensors, type GeneratedTensor } from "../src/fixtures/tiny-llama.js";

const RUNS = Math.max(1, Number(process.env.CKPT_FUZZ_RUNS ?? 1000));
const SEED = process.env.CKPT_FUZZ_SEED !== undefined ? Number(process.env.CKPT_FUZZ_SEED) : undefined;
const params = { numRuns: RUNS, includeErrorInReport: true, ...(SEED !== undefined ? { seed: SEED } : {}) };
const timeout = RUNS > 5000 ? 24 * 3600_000 : 120_000;

/** Only a CkptError of an input code (the caller's fault, never INTERNAL) may come out. */
async function inputErrorOrResult<T>(what: string, f: () => T | Promise<T>): Promise<T | CkptError> {
  try {
    return await f();
  } catch (e) {
    if (!(e instanceof CkptError)) throw new Error(`${what} threw ${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)} instead of a CkptError`, { cause: e });
    if (e.code === "INTERNAL") throw new Error(`${what}: bad input reported as INTERNAL: ${e.oneLine()}`, { cause: e });
    assert.doesNotMatch(e.oneLine(), /\n/);
    return e;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// plan: mutated quantized / MoE checkpoints

interface Seed { config: Record<string, unknown>; tensors: GeneratedTensor[] }
const SEEDS: Seed[] = [
  tinyDeepSeekTensors({ layers: 3, mtp: 0 }),
  tinyGptOssTensors({ layout: "mxfp4" }),
  tinyKimiTensors({ layout: "k2" }),
  tinyKimiTensors({ layout: "k25" }),
];

type PlanMutation =
  | { kind: "drop"; at: number }
  | { kind: "dtype"; at: number; dtype: DType }
  | { kind: "dim"; at: number; dim: number; value: number }
  | { kind: "rename"; at: number; value: number }
  | { kind: "byte"; at: number; offset: number; value: number }
  | { kind: "config"; key: string; value: unknown }
  | { kind: "quant"; key: string; value: unknown };

const DTYPES: DType[] = ["F8_E4M3", "F8_E5M2", "BF16", "F32", "F16", "U8", "I8", "I32", "I64", "F8_E8M0", "F4", "F6_E2M3", "BOOL", "U16", "F64"];
const CONFIG_KEYS = ["n_routed_experts", "num_local_experts", "num_hidden_layers", "first_k_dense_replace", "moe_intermediate_size", "intermediate_size", "hidden_size", "num_experts_per_tok", "n_shared_experts"];
const QUANT_KEYS = ["quant_method", "weight_block_size", "fmt", "modules_to_not_convert", "ignore", "format", "config_groups"];
const anyValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.integer({ min: -2, max: 300 }), fc.constantFrom(0, 1, 2, 4, 8, 16, 32, 64, 128, 256),
  fc.constantFrom("fp8", "mxfp4", "compressed-tensors", "e4m3", "e5m2", "pack-quantized", "", null, undefined),
  fc.constantFrom([128, 128], [64, 64], [128], ["model.layers.*.mlp.experts"], ["re:.*experts.*"], ["lm_head"], [], {}),
  fc.constantFrom({ group_0: { format: "pack-quantized", weights: { num_bits: 4, symmetric: true, strategy: "group", group_size: 64 } } }, { g: { weights: { num_bits: 8 } } }),
);

const planMutation: fc.Arbitrary<PlanMutation> = fc.oneof(
  fc.record({ kind: fc.constant("drop" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("dtype" as const), at: fc.nat(), dtype: fc.constantFrom(...DTYPES) }),
  fc.record({ kind: fc.constant("dim" as const), at: fc.nat(), dim: fc.nat({ max: 3 }), value: fc.constantFrom(0, 1, 2, 3, 7, 16, 31, 32, 33, 64, 96, 128, 129, 200, 224, 256) }),
  fc.record({ kind: fc.constant("rename" as const), at: fc.nat(), value: fc.constantFrom(0, 1, 2, 3, 4, 7, 8, 9, 63) }),
  fc.record({ kind: fc.constant("byte" as const), at: fc.nat(), offset: fc.nat(), value: fc.constantFrom(0, 1, 0x20, 0x7f, 0x80, 0xff) }),
  fc.record({ kind: fc.constant("config" as const), key: fc.constantFrom(...CONFIG_KEYS), value: anyValue }),
  fc.record({ kind: fc.constant("quant" as const), key: fc.constantFrom(...QUANT_KEYS), value: anyValue }),
);

/** The mutated checkpoint as a catalog (fake single-file pieces) plus its data, readable through a fake Source. */
function mutateSeed(seed: Seed, ms: PlanMutation[]): { config: Record<string, unknown>; tensors: Map<string, CatalogTensor>; source: Source } {
  const config = structuredClone(seed.config);
  const list = seed.tensors.map((t) => ({ ...t, shape: [...t.shape] }));
  for (const m of ms) {
    const t = "at" in m && list.length ? list[m.at % list.length]! : undefined;
    switch (m.kind) {
      case "drop": if (t) list.splice(list.indexOf(t), 1); break;
      case "dtype": if (t) t.dtype = m.dtype; break;
      case "dim": if (t && t.shape.length) t.shape[m.dim % t.shape.length] = m.value; break;
      case "rename": if (t) { const nums = [...t.name.matchAll(/\.(\d+)\./g)]; const n = nums[m.at % Math.max(1, nums.length)]; if (n) t.name = t.name.slice(0, n.index) + `.${m.value}.` + t.name.slice(n.index! + n[0].length); } break;
      case "byte": if (t && t.data.length) { t.data = new Uint8Array(t.data); t.data[m.offset % t.data.length] = m.value; } break;
      case "config": { const c = (config.text_config as Record<string, unknown> | undefined) ?? config; if (m.value === undefined) delete c[m.key]; else c[m.key] = m.value; break; }
      case "quant": { const c = (config.text_config as Record<string, unknown> | undefined) ?? config; const q = (c.quantization_config ??= {}) as Record<string, unknown>; if (m.value === undefined) delete q[m.key]; else q[m.key] = m.value; break; }
    }
  }
  const tensors = new Map<string, CatalogTensor>();
  const at = new Map<number, Uint8Array>();
  let offset = 0;
  for (const t of list) {
    tensors.set(t.name, { name: t.name, dtype: t.dtype, shape: t.shape, pieces: [{ offsets: t.shape.map(() => 0), sizes: t.shape, file: "model.safetensors", byteOffset: offset, byteLength: t.data.length }] });
    at.set(offset, t.data);
    offset += t.data.length + 1;
  }
  // reads are whole tensors (weight_shape values): found by their offset, never copied
  const source = { id: "fuzz", read: async (_f: string, o: number, l: number) => Buffer.from(at.get(o)!.buffer, at.get(o)!.byteOffset, l) } as unknown as Source;
  return { config, tensors, source };
}

function leavesOf(r: Recipe, visit: (leaf: string, role: "values" | "fp8" | "fp8-scale" | "mxfp4" | "mxfp4-scale" | "int4" | "int4-scale") => void): void {
  switch (r.op) {
    case "source": visit(r.tensor, "values"); break;
    case "dequant": visit(r.tensor, "fp8"); visit(r.scale, "fp8-scale"); break;
    case "mxfp4": visit(r.blocks, "mxfp4"); visit(r.scales, "mxfp4-scale"); break;
    case "int4": visit(r.packed, "int4"); visit(r.scale, "int4-scale"); break;
    case "zeros": break;
    case "rope": case "select": case "transpose": case "slice": case "reshape": leavesOf(r.input, visit); break;
    case "stack": case "concat": for (const i of r.inputs) leavesOf(i, visit); break;
  }
}

/** An accepted plan decodes every quantized tensor with a scale of the format's dtype and shape. */
function checkAcceptedPlan(plan: ReturnType<typeof planConversion>, tensors: Map<string, CatalogTensor>, data: (t: CatalogTensor) => Promise<Buffer>): Promise<void> {
  const checks: Promise<void>[] = [];
  for (const t of plan.tensors) {
    leavesOf(t.recipe, (leaf, role) => {
      const l = tensors.get(leaf) ?? assert.fail(`${t.name}: leaf ${leaf} not in the catalog`);
      if (role === "values") assert.ok(!l.dtype.startsWith("F8_") || !tensors.has(leaf + "_scale_inv"), `${leaf}: an FP8 tensor with a scale is cast without it`);
      if (role === "fp8") assert.ok(l.dtype === "F8_E4M3" || l.dtype === "F8_E5M2", `${leaf}: dequant of ${l.dtype}`);
      if (role === "fp8-scale") {
        const w = tensors.get(leaf.replace(/_scale_inv$/, ""))!;
        assert.deepEqual([l.dtype, ...l.shape], ["F32", Math.ceil(w.shape[0]! / 128), Math.ceil(w.shape[1]! / 128)], `${leaf}: FP8 scale shape`);
      }
      if (role === "mxfp4") assert.ok(l.dtype === "U8" && l.shape[l.shape.length - 1] === 16, `${leaf}: MXFP4 blocks ${l.dtype} [${l.shape}]`);
      if (role === "mxfp4-scale") {
        const b = tensors.get(leaf.replace(/_scales$/, "_blocks"))!;
        assert.deepEqual([l.dtype, ...l.shape], ["U8", ...b.shape.slice(0, -1)], `${leaf}: MXFP4 scales shape`);
      }
      if (role === "int4") {
        assert.ok(l.dtype === "I32" && l.shape.length === 2, `${leaf}: INT4 packed ${l.dtype} [${l.shape}]`);
        // the stored weight_shape (read independently) is the [out, in] the packed words and scales hold
        const ws = tensors.get(leaf.replace(/weight_packed$/, "weight_shape")) ?? assert.fail(`${leaf}: no weight_shape`);
        checks.push(data(ws).then((b) => {
          const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
          const vals = ws.dtype === "I64" ? [Number(dv.getBigInt64(0, true)), Number(dv.getBigInt64(8, true))] : [dv.getInt32(0, true), dv.getInt32(4, true)];
          assert.equal(vals[0], l.shape[0], `${leaf}: weight_shape rows`);
          assert.equal(Math.ceil(vals[1]! / 8), l.shape[1], `${leaf}: weight_shape columns vs packed words`);
        }));
      }
      if (role === "int4-scale") assert.equal(l.dtype, "BF16", `${leaf}: INT4 scale dtype`);
    });
  }
  return Promise.all(checks).then(() => undefined);
}

// ---------------------------------------------------------------------------------------------------------------
// decode: both kernel tiers

const native = loadNative();
const tiers: Kernels[] = [referenceKernels, ...(native ? [nativeKernelsFrom(native)] : [])];
const OUT: CastableDType[] = ["F32", "BF16", "F16"];
const SIZE: Record<CastableDType, number> = { F32: 4, BF16: 2, F16: 2, F8_E4M3: 1, F8_E5M2: 1 };

// ---------------------------------------------------------------------------------------------------------------
// adapters

const LLAMA = { vocab: 64, hidden: 32, heads: 4, kvHeads: 2, headDim: 8, ffn: 48, layers: 2, dtype: "F32" as const };
const llama = tinyLlamaTensors(LLAMA);
const llamaMapping = selectMapping(llama.config);
const baseTensors = new Map(llama.tensors.map((t) => [t.name, { dtype: t.dtype, shape: t.shape }]));

describe(`fuzz: quantized, MoE and adapter inputs (${RUNS} runs per property${SEED !== undefined ? `, seed ${SEED}` : ""})`, () => {
  test("seeds plan cleanly", async () => {
    for (const s of SEEDS) {
      const { config, tensors, source } = mutateSeed(s, []);
      const plan = planConversion({ tensors }, { mapping: selectMapping(config), config, direction: "hf_to_tt" });
      if (plan.storedShapes) await checkStoredShapes(plan.storedShapes, source);
    }
  });

  test("plan: mutated FP8 / MXFP4 / INT4 / MoE checkpoints and EP/TP meshes", { timeout }, async (t) => {
    const tally: Record<string, number> = {};
    const mesh = fc.record({ world: fc.constantFrom(1, 2, 3, 4, 8, 16), tp: fc.constantFrom(1, 2, 3, 4), ep: fc.constantFrom(1, 2, 3, 4, 8, 16) });
    await fc.assert(fc.asyncProperty(fc.nat({ max: SEEDS.length - 1 }), fc.array(planMutation, { minLength: 1, maxLength: 4 }), mesh, async (i, ms, m) => {
      const { config, tensors, source } = mutateSeed(SEEDS[i]!, ms);
      const plan = await inputErrorOrResult("planConversion", async () => {
        const p = planConversion({ tensors }, { mapping: selectMapping(config), config, direction: "hf_to_tt" });
        if (p.storedShapes) await checkStoredShapes(p.storedShapes, source);
        return p;
      });
      const outcome = plan instanceof CkptError ? plan.code : "accepted";
      tally[outcome] = (tally[outcome] ?? 0) + 1;
      if (plan instanceof CkptError) return;
      await checkAcceptedPlan(plan, sourceView(selectMapping(config), { tensors }).tensors, (t) => source.read(t.pieces[0]!.file, t.pieces[0]!.byteOffset, t.pieces[0]!.byteLength));
      if (m.world % m.tp === 0) {
        const r = await inputErrorOrResult("checkExpertMesh", () => checkExpertMesh(m.ep > 1 ? { fsdp: m.world / m.tp, tp: m.tp, ep: m.ep } : { fsdp: m.world / m.tp, tp: m.tp }, plan.tensors.filter((x) => x.policy.experts)));
        const mo = r instanceof CkptError ? `mesh ${r.code}` : "mesh accepted";
        tally[mo] = (tally[mo] ?? 0) + 1;
      }
    }), params);
    t.diagnostic(`outcomes (shrinking included): ${JSON.stringify(tally)}`);
  });

  test("decode: FP8 blocks, MXFP4 and INT4 on every kernel tier agree, and non-finite output is always caught", { timeout }, async () => {
    const f32 = fc.oneof(fc.float({ noDefaultInfinity: false, noNaN: false }), fc.constantFrom(NaN, Infinity, -Infinity, 3e38, 1e30, 65504, 1e-40, 0));
    await fc.assert(fc.property(fc.constantFrom("fp8", "mxfp4", "int4"), fc.constantFrom(...OUT), fc.integer({ min: 1, max: 3 }), fc.integer({ min: 1, max: 70 }), fc.uint8Array({ minLength: 512, maxLength: 512 }), fc.array(f32, { minLength: 4, maxLength: 4 }), fc.constantFrom(2, 4, 32),
      (kind, od, rows, cols, bytes, fscales, group) => {
        const outs = tiers.map((k) => {
          const dst = new Uint8Array(rows * cols * SIZE[od]);
          let bad = -1;
          if (kind === "fp8") {
            const sc = new Uint8Array(new Float32Array(fscales).buffer); // 2 × 2 scales of 64 × 64 blocks
            k.dequantBlock(bytes.subarray(0, rows * cols), "F8_E4M3", rows, cols, 0, 0, sc, 2, 64, dst, od);
          } else if (kind === "mxfp4") {
            const groups = Math.ceil(cols / 32);
            bad = k.mxfp4Decode(bytes, bytes.subarray(256), rows, cols, 0, groups * 16, groups, dst, od);
          } else {
            const groups = Math.ceil(cols / group);
            bad = k.int4Decode(bytes, bytes.subarray(256), rows, cols, 0, group, Math.ceil(cols / 2), groups * 2, dst, od);
          }
          return { dst, bad, count: decodedNonfinite(k, dst, od, rows * cols) };
        });
        for (const o of outs.slice(1)) {
          assert.deepEqual(o.dst, outs[0]!.dst, `${kind} → ${od}: tiers differ`);
          assert.equal(o.bad, outs[0]!.bad);
          assert.equal(o.count, outs[0]!.count);
        }
        const o = outs[0]!;
        assert.equal(o.count > 0, firstNonfinite(o.dst, od, rows * cols) >= 0, "the worker's check fires exactly when the output holds a NaN/inf");
        if (o.bad >= 0) assert.ok(o.count > 0, "a value the kernel flags is non-finite in the output");
      }), params);
  });

  test("adapters: refused exactly when the base lacks the module, its shape differs or a weight is not a float", { timeout }, async () => {
    const resolver = new ModuleResolver(llamaMapping, llama.config, "torchtitan@main");
    const proj = fc.constantFrom("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj");
    const mod = fc.record({ layer: fc.nat({ max: 5 }), proj, dOut: fc.constantFrom(0, 0, 0, 1, -8), dIn: fc.constantFrom(0, 0, 0, 1, 16), rank: fc.constantFrom(1, 4, 8), dtype: fc.constantFrom<DType>("F32", "F32", "BF16", "F16", "I8", "F8_E8M0") });
    await fc.assert(fc.asyncProperty(fc.array(mod, { minLength: 1, maxLength: 4 }), fc.boolean(), async (mods, withWeights) => {
      const entries = mods.map((m) => {
        const hf = `model.layers.${m.layer}.${m.proj.endsWith("_proj") && ["gate_proj", "up_proj", "down_proj"].includes(m.proj) ? "mlp" : "self_attn"}.${m.proj}`;
        const module = resolver.fromHf(hf)!;
        const base = llama.tensors.find((t) => t.name === `model.layers.0.${hf.split(".").slice(3).join(".")}.weight`)!;
        const out = base.shape[0]! + m.dOut, inn = base.shape[1]! + m.dIn;
        return { module, a: { name: hf + ".lora_A.weight", dtype: "F32" as DType, shape: [m.rank, inn], pieces: [] }, b: { name: hf + ".lora_B.weight", dtype: m.dtype, shape: [out, m.rank], pieces: [] } };
      });
      const r = await inputErrorOrResult("validateAdapterAgainstBase", () => validateAdapterAgainstBase(entries, { mapping: llamaMapping, config: llama.config, file: "base/config.json", tensors: withWeights ? baseTensors : undefined }));
      const shouldRefuse = mods.some((m) => m.layer >= LLAMA.layers || (withWeights && (m.dOut !== 0 || m.dIn !== 0)) || !["F32", "BF16", "F16"].includes(m.dtype));
      assert.equal(r instanceof CkptError, shouldRefuse, `${JSON.stringify(mods)} (weights: ${withWeights}): ${r instanceof CkptError ? r.oneLine() : "accepted"}`);
    }), params);
  });
});
