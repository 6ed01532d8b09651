// Qwen3.5 / 3.6, judged by the models: TorchTitan main's qwen3_5 (gated attention + Gated DeltaNet, MoE with a
// shared expert), loaded from what `ckpt convert` / `ckpt shard` wrote the way its checkpointer loads it, computes the
// logits transformers 5.12 computes on the HF source. Sources: VLM checkpoints laid out as published, made by
// transformers + torch (qwen35_published.py: Qwen3_5(Moe)ForConditionalGeneration's own state_dict, routed experts
// fused [E, 2F, D] / [E, D, F], vision tower, MTP head), converted with their vision tower and with --text-only,
// sharded w4 and w4 tp2, judged against transformers' ConditionalGeneration class; and the TS fixtures as text models
// (Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM) in the published layout, per expert, and fused the way TorchTitan's
// adapter writes them ([E, D, 2F], which no transformers class loads: judged against the published fixture with the
// same values). TorchTitan's DeltaNet kernels come from fla (GPU only): judge.py shims them with transformers' own torch
// reference, so both sides run the same recurrence and the comparison judges the weights. `--to hf` round trips are
// byte-identical. Wrong conversions (q/k parts of in_proj_qkv swapped, gate and up halves of gate_up_proj swapped in
// either fused layout, the query and gate halves of wq swapped, experts rolled) must fail the same comparison.
import assert from "node:assert/strict";
import { test } from "node:test";
import { writeTinyQwen35, type TinyQwen35Options } from "../../src/fixtures/tiny-qwen3-5.js";
import { ckpt, runJudge, safetensorsOf, wrongMappings, type JudgeCase, inJudgeWorkspace } from "./judge-harness.js";
import { availableSuites, hasJudgeKit, JUDGE_ENV, torchRequired } from "./torch.js";

const DENSE: TinyQwen35Options = { seed: 31 };
const MOE: TinyQwen35Options = { experts: 6, seed: 32 };

const wrongMappings_q = (dir: string, edit: (rule: Record<string, unknown>) => void) => wrongMappings(dir, "qwen3_5", edit);

const suites = availableSuites(["sid"]).filter((e) => hasJudgeKit(e) || torchRequired());

if (suites.length === 0) {
  test("Qwen3.5 forward equivalence: TorchTitan's qwen3_5 vs transformers", { skip: "no sid root with the judge kit (test/interop/setup-torch-root.sh sid)" }, () => {});
}

for (const env of suites) {
  test(`[${env.suite}] Qwen3.5 dense and MoE, published VLMs (fused experts, vision, MTP) and text models: TorchTitan's qwen3_5 from ckpt output = transformers' logits; --to hf byte-identical; wrong conversions fail`, { timeout: 900_000 }, async () => {
    await inJudgeWorkspace(env, async ({ h, g, py }) => {
      writeTinyQwen35(h("dense"), DENSE);
      writeTinyQwen35(h("moe"), MOE);
      writeTinyQwen35(h("moe-per"), { ...MOE, expertLayout: "per-expert" });
      writeTinyQwen35(h("moe-ttf"), { ...MOE, expertLayout: "tt-fused" });
      const cases: JudgeCase[] = [];
      for (const [src, judgeHf] of [["dense", "dense"], ["moe", "moe"], ["moe-per", "moe"], ["moe-ttf", "moe"]] as const) {
        ckpt(["convert", h(src), h(`${src}.convert`)]);
        ckpt(["shard", h(src), h(`${src}.w4`), "--world-size", "4"]);
        cases.push({ name: `${src} convert`, hf: g(judgeHf), ckpt: g(`${src}.convert`) });
        cases.push({ name: `${src} shard w4`, hf: g(judgeHf), ckpt: g(`${src}.w4`) });
      }
      ckpt(["shard", h("dense"), h("dense.w4tp2"), "--world-size", "4", "--tp", "2"]);
      cases.push({ name: "dense shard w4 tp2", hf: g("dense"), ckpt: g("dense.w4tp2") });

      // the published VLMs, made by transformers: with the vision tower (TorchTitan's vision encoder filled) and --text-only
      for (const [kind, seed] of [["dense", "81"], ["moe", "82"]] as const) {
        const vlm = `vlm-${kind}`;
        const made = JSON.parse((await env.pythonFile(`${py}/qwen35_published.py`, [g(vlm), kind, seed], { timeoutMs: 300_000, env: JUDGE_ENV })).trim().split("\n").pop()!) as { load: unknown; tensors: Record<string, number[]> };
        assert.deepEqual(made.load, { missing: [], unexpected: [], mismatched: [] }, `${vlm}: transformers loads the fixture strictly`);
        if (kind === "moe") {
          assert.deepEqual(made.tensors["model.language_model.layers.0.mlp.experts.gate_up_proj"], [6, 40, 48], "published [E, 2F, D]");
          assert.deepEqual(made.tensors["model.language_model.layers.0.mlp.experts.down_proj"], [6, 48, 20], "published [E, D, F]");
          assert.deepEqual(made.tensors["mtp.layers.0.mlp.experts.5.gate_proj.weight"], [20, 48], "MTP experts per expert");
        }
        ckpt(["convert", h(vlm), h(`${vlm}.convert`)]);
        ckpt(["convert", h(vlm), h(`${vlm}.txt.convert`), "--text-only"]);
        ckpt(["shard", h(vlm), h(`${vlm}.w4`), "--world-size", "4"]);
        ckpt(["shard", h(vlm), h(`${vlm}.txt.w4tp2`), "--world-size", "4", "--tp", "2", "--text-only"]);
        const outs = [`${vlm}.convert`, `${vlm}.txt.convert`, `${vlm}.w4`, `${vlm}.txt.w4tp2`];
        if (kind === "moe") {
          ckpt(["shard", h(vlm), h(`${vlm}.w4ep2`), "--world-size", "4", "--ep", "2"]);
          outs.push(`${vlm}.w4ep2`);
        }
        for (const out of outs) cases.push({ name: `published ${out}`, hf: g(vlm), ckpt: g(out) });
      }

      // --to hf: byte-identical to the source (the published layout), and transformers loads it (the judge builds its HF side from it)
      for (const [src, from] of [["dense", "dense.w4tp2"], ["moe", "moe.w4"]] as const) {
        ckpt(["convert", h(from), h(`${src}.back`), "--to", "hf", "--config", h(src)]);
        const a = safetensorsOf(h(src)), b = safetensorsOf(h(`${src}.back`));
        assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort(), `${src} --to hf names`);
        for (const [k, v] of a) assert.ok(v.equals(b.get(k)!), `${src} --to hf: ${k} differs from the source`);
        cases.push({ name: `${src} --to hf loaded by transformers`, hf: g(`${src}.back`), ckpt: g(`${src}.convert`) });
      }

      // Negative controls: wrong converters (our pipeline with a broken mapping) and wrong weights in the loaded model.
      const qkSwapped = wrongMappings_q(h("maps-qk-swapped"), (r) => {
        const t = r.transform as { op?: string; index?: number } | undefined;
        if (r.hf === "model.layers.{L}.linear_attn.in_proj_qkv.weight" && t?.op === "split" && t.index! < 2) t.index = 1 - t.index!;
      });
      ckpt(["convert", h("dense"), h("ctl-qk-swapped")], { CKPT_MAPPINGS_DIR: qkSwapped });
      cases.push({ name: "CONTROL in_proj_qkv split with q and k swapped", hf: g("dense"), ckpt: g("ctl-qk-swapped"), control: true });
      // both fused layouts: the chunk of gate_up_proj taken from the other half (w1 from the up rows)
      const gateUpSwapped = wrongMappings_q(h("maps-gate-up-swapped"), (r) => {
        if (r.hf !== "model.layers.{L}.mlp.experts.gate_up_proj") return;
        const c = (Array.isArray(r.transform) ? r.transform : [r.transform]).find((x: { op: string }) => x.op === "chunk") as { index: number };
        c.index = 1 - c.index;
      });
      ckpt(["shard", h("vlm-moe"), h("ctl-gate-up-swapped"), "--world-size", "4"], { CKPT_MAPPINGS_DIR: gateUpSwapped });
      cases.push({ name: "CONTROL published gate_up_proj [E, 2F, D] chunks swapped", hf: g("vlm-moe"), ckpt: g("ctl-gate-up-swapped"), control: true });
      ckpt(["shard", h("moe-ttf"), h("ctl-gate-up-swapped-ttf"), "--world-size", "4"], { CKPT_MAPPINGS_DIR: gateUpSwapped });
      cases.push({ name: "CONTROL TorchTitan-fused gate_up_proj [E, D, 2F] chunks swapped", hf: g("moe"), ckpt: g("ctl-gate-up-swapped-ttf"), control: true });
      cases.push({ name: "CONTROL wq query and gate halves swapped", hf: g("dense"), ckpt: g("dense.convert"), perturb: "qwen35_q_gate_swapped", control: true });
      cases.push({ name: "CONTROL moe experts rolled by one", hf: g("moe"), ckpt: g("moe.convert"), perturb: "roll_experts", control: true });
      cases.push({ name: "CONTROL published VLM experts rolled by one", hf: g("vlm-moe"), ckpt: g("vlm-moe.txt.w4tp2"), perturb: "roll_experts", control: true });

      await runJudge(env, py, cases, h("cases.json"), g("cases.json"), 600_000);
    });
  });
}
