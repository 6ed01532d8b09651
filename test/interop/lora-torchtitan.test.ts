// TorchTitan's own LoRA judges ckpt's LoRA checkpoints (sid root: TorchTitan b5bcd76, transformers 5.12, PEFT 5d602fd),
// on llama3, qwen3 dense and MoE, deepseek_v3, gpt_oss, kimi_k2_7 and qwen3_5 MoE (the Linears PEFT can target on each).
//  - PEFT adapters made by PEFT itself (get_peft_model + save_pretrained) → `ckpt convert --lora` and `ckpt shard
//    --world-size 4 --lora` → TorchTitan's model rewritten by its LoRAConverter with the settings ckpt printed, loaded
//    strictly (every tensor NaN first), computes the logits transformers + PeftModel compute on the HF base + adapter,
//    as stored and with RMSNorms ×16. Controls that must fail: lora_b zeroed, q/k rows of lora_b in HF order, Qwen3.5's
//    in_proj_qkv adapter with the row blocks of B given to in_proj_q and in_proj_k exchanged.
//  - Fresh adapters (--lora-rank 8 --lora-alpha 16): strict load, B = 0, A within kaiming-uniform's bound, base logits.
//  - Export: adapters moved and saved by TorchTitan's own CheckpointManager (optimizer, lr_scheduler, dataloader,
//    train_state beside the model keys) → `ckpt lora export` → PEFT reproduces TorchTitan's logits; `ckpt lora merge`
//    of the same checkpoint, loaded into TorchTitan's plain model, too.
//  - DoRA refused with one line, nothing written.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { writeTinyLlama } from "../../src/fixtures/tiny-llama.js";
import { writeTinyQwen3 } from "../../src/fixtures/tiny-qwen3.js";
import { writeTinyDeepSeek } from "../../src/fixtures/tiny-deepseek.js";
import { writeTinyGptOss } from "../../src/fixtures/tiny-gpt-oss.js";
import { writeTinyKimi } from "../../src/fixtures/tiny-kimi.js";
import { writeTinyQwen35 } from "../../src/fixtures/tiny-qwen3-5.js";
import { availableSuites, hasJudgeKit, JUDGE_ENV, torchRequired, type TorchEnv } from "./torch.js";
import { inJudgeWorkspace } from "./judge-harness.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");
const ENV = { ...JUDGE_ENV, USE_LIBUV: "0" };

interface Settings { rank: number; alpha: number; target_modules: string[] | null }

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8" });
}

/** Runs ckpt with --json and returns the LoRAConverter settings it printed. */
function convertLora(args: string[]): Settings {
  const r = run([...args, "--json"]);
  assert.equal(r.status, 0, `ckpt ${args.join(" ")} failed:\n${r.stderr}`);
  const res = JSON.parse(r.stdout.trim().split("\n").pop()!) as { lora: { torchtitan: Settings } };
  return res.lora.torchtitan;
}

interface Pass { norm_scale: number; max_abs: number; logit_scale: number; rel: number; tol: number; ok: boolean }
interface Result { name: string; ok: boolean; load?: unknown; passes?: Pass[]; [k: string]: unknown }

async function judge(env: TorchEnv, py: string, h: (n: string) => string, g: (n: string) => string, file: string, cases: Record<string, unknown>[]): Promise<Result[]> {
  writeFileSync(h(file), JSON.stringify(cases));
  let out: string;
  try {
    out = await env.pythonFile(`${py}/lora_judge.py`, ["cases", g(file)], { timeoutMs: 600_000, env: ENV });
  } catch (e) {
    // exit 1 = some case did not come out as it must: the JSON line is still printed (in the error text)
    out = String((e as Error).message);
  }
  const line = out.split("\n").reverse().find((l) => l.startsWith("{\"torch\""));
  assert.ok(line, `lora_judge.py printed no result:\n${out.slice(-3000)}`);
  const res = JSON.parse(line) as { torch: string; transformers: string; peft: string; results: Result[] };
  console.log(`# lora judge: torch ${res.torch}, transformers ${res.transformers}, peft ${res.peft}`);
  for (const r of res.results) {
    console.log(`# ${r.ok ? "ok  " : "FAIL"} ${r.name}: ${r.passes ? r.passes.map((p) => `×${p.norm_scale} rel |Δlogit| ${p.rel.toExponential(2)} (max ${p.max_abs.toExponential(2)}, scale ${p.logit_scale.toFixed(1)}, bound ${p.tol})`).join("; ") : JSON.stringify(r.load ?? r)}${r.a_max_over_bound !== undefined ? `; B nonzero ${r.b_nonzero}, max|A|/bound ${Number(r.a_max_over_bound).toFixed(5)}, std(A)/(bound/√3) ${Number(r.a_std_ratio).toFixed(3)} (min over Linears)` : ""}`);
  }
  for (const [i, c] of cases.entries()) {
    const r = res.results[i]!;
    if (c.control) {
      assert.equal(r.load, undefined, `${r.name}: a control must fail the comparison, not the load`);
      assert.equal(r.ok, false, `${r.name}: the control passed — the judge cannot tell right from wrong`);
    } else assert.equal(r.ok, true, `${r.name} failed: ${JSON.stringify(r)}`);
  }
  return res.results;
}

const suites = availableSuites(["sid"]);
for (const env of suites) {
  test(`TorchTitan's LoRA model from ckpt --lora output = transformers + PEFT (${env.suite})`, { skip: !hasJudgeKit(env) && !torchRequired() ? "judge kit not installed" : false, timeout: 900_000 }, async () => {
    await inJudgeWorkspace(env, async ({ h, g, py }) => {
      writeTinyLlama(h("llama"), { hidden: 64, heads: 4, kvHeads: 2, headDim: 16, ffn: 96, vocab: 256, seed: 21 });
      writeTinyQwen3(h("qwen3"), { experts: 0, layers: 2, seed: 22 });
      writeTinyQwen3(h("qwen3moe"), { experts: 4, layers: 3, mlpOnlyLayers: [0], seed: 23 });
      writeTinyDeepSeek(h("dsv3"), { qLoraRank: 0, layers: 2, mtp: 0, experts: 4, fp8: false, files: 1, seed: 24 });
      writeTinyGptOss(h("gptoss"), { layout: "bf16", seed: 25 });
      writeTinyKimi(h("kimi"), { layout: "k2", layers: 3, experts: 4, files: 1, seed: 26 });
      writeTinyQwen35(h("qwen35"), { experts: 4, seed: 27 });
      // PEFT adapters, made by PEFT: every attention and MLP Linear (llama); q and v only, rsLoRA (qwen3: k's rows
      // of the fused adapter stay zero); attention of layer 1 only (qwen3 MoE: TorchTitan's target_modules adapt every
      // layer's wqkv / wo, the others start fresh); MLA's Linears (deepseek: PEFT on transformers 5 turns MLP targets of an MoE model into
      // routed-expert parameters, refused below); DoRA (refused)
      const adapters = [
        { hf: g("llama"), out: g("peft-llama"), spec: { targets: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], r: 8, alpha: 16 } },
        { hf: g("qwen3"), out: g("peft-qwen3"), spec: { targets: ["q_proj", "v_proj"], r: 4, alpha: 8, rslora: true } },
        { hf: g("qwen3moe"), out: g("peft-qwen3moe"), spec: { targets: ["q_proj", "k_proj", "v_proj", "o_proj"], r: 4, alpha: 16, layers: [1] } },
        { hf: g("dsv3"), out: g("peft-dsv3"), spec: { targets: ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"], r: 4, alpha: 8 } },
        { hf: g("gptoss"), out: g("peft-gptoss"), spec: { targets: ["q_proj", "k_proj", "v_proj", "o_proj"], r: 4, alpha: 8 } },
        { hf: g("kimi"), out: g("peft-kimi"), spec: { targets: ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"], r: 4, alpha: 8 } },
        // (in_proj_a / in_proj_b adapted too move the DeltaNet's decay and beta: the two recurrences then differ by
        // 4.7e-5 relative as stored, 9.5e-7 with norms ×16 — f32 conditioning of the recurrence, not layout)
        // (in_proj_qkv: TorchTitan's in_proj_q / _k / _v each get PEFT's A and their rows of B)
        { hf: g("qwen35"), out: g("peft-qwen35"), spec: { targets: ["q_proj", "k_proj", "v_proj", "o_proj", "in_proj_qkv", "in_proj_z", "out_proj"], r: 4, alpha: 8 } },
        { hf: g("llama"), out: g("peft-dora"), spec: { targets: ["q_proj", "v_proj"], r: 4, alpha: 8, dora: true } },
        { hf: g("qwen3moe"), out: g("peft-experts"), spec: { targets: ["gate_proj", "up_proj", "down_proj"], r: 4, alpha: 8 } },
      ];
      writeFileSync(h("adapters.json"), JSON.stringify(adapters));
      await env.pythonFile(`${py}/lora_judge.py`, ["make-peft", g("adapters.json")], { timeoutMs: 300_000, env: ENV });

      const cases: Record<string, unknown>[] = [];
      const add = (name: string, mode: string, hf: string, peft: string | undefined, ckpt: string, lora: Settings, extra: Record<string, unknown> = {}) =>
        cases.push({ name, mode, hf: g(hf), ...(peft ? { peft: g(peft) } : {}), ckpt: g(ckpt), lora, ...extra });
      const s: Record<string, Settings> = {};
      for (const m of ["llama", "qwen3", "qwen3moe", "dsv3", "gptoss", "kimi", "qwen35"]) {
        // Kimi's INT4 experts: transformers decompresses them to bf16, which --dtype bf16 writes bit for bit
        s[m] = convertLora(["convert", h(m), h(`${m}.lora`), "--lora", h(`peft-${m}`), ...(m === "kimi" ? ["--dtype", "bf16"] : [])]);
        add(`${m} convert --lora ${JSON.stringify(s[m])}`, "peft", m, `peft-${m}`, `${m}.lora`, s[m]!, m === "qwen35" ? { tt_logits: g("tt-qwen35.pt") } : {});
      }
      assert.deepEqual(s.qwen35, { rank: 4, alpha: 8, target_modules: ["in_proj_k", "in_proj_q", "in_proj_v", "in_proj_z", "out_proj", "wk", "wo", "wq", "wv"] });
      assert.deepEqual(s.llama, { rank: 24, alpha: 48, target_modules: ["w1", "w2", "w3", "wo", "wqkv"] });
      assert.deepEqual(s.qwen3, { rank: 8, alpha: 8 / Math.sqrt(4) * 8, target_modules: ["wqkv"] });
      for (const m of ["llama", "qwen3"]) {
        const w4 = convertLora(["shard", h(m), h(`${m}.lora.ws4`), "--world-size", "4", "--lora", h(`peft-${m}`)]);
        assert.deepEqual(w4, s[m]);
        add(`${m} shard --world-size 4 --lora`, "peft", m, `peft-${m}`, `${m}.lora.ws4`, w4);
      }
      // TP-sharded adapters (colwise: lora_b Shard(0); rowwise: lora_a Shard(1)) and an expert-parallel MoE mesh
      const tp = convertLora(["shard", h("llama"), h("llama.lora.tp2"), "--world-size", "4", "--tp", "2", "--lora", h("peft-llama")]);
      add("llama shard --world-size 4 --tp 2 --lora", "peft", "llama", "peft-llama", "llama.lora.tp2", tp);
      const ep = convertLora(["shard", h("qwen3moe"), h("qwen3moe.lora.ep2"), "--world-size", "4", "--ep", "2", "--lora", h("peft-qwen3moe")]);
      add("qwen3moe shard --world-size 4 --ep 2 --lora", "peft", "qwen3moe", "peft-qwen3moe", "qwen3moe.lora.ep2", ep);
      add("CONTROL llama lora_b zeroed", "peft", "llama", "peft-llama", "llama.lora", s.llama!, { perturb: "zero_lora_b", control: true });
      add("CONTROL llama q/k rows of lora_b in HF order", "peft", "llama", "peft-llama", "llama.lora", s.llama!, { perturb: "qk_hf_order", control: true });
      add("CONTROL qwen3 lora_b zeroed", "peft", "qwen3", "peft-qwen3", "qwen3.lora", s.qwen3!, { perturb: "zero_lora_b", control: true });
      add("CONTROL qwen35 in_proj_q / in_proj_k rows of lora_b swapped", "peft", "qwen35", "peft-qwen35", "qwen35.lora", s.qwen35!, { perturb: "split_qk_swapped", control: true });
      for (const m of ["llama", "qwen3moe"]) {
        const f = convertLora(["convert", h(m), h(`${m}.fresh`), "--lora-rank", "8", "--lora-alpha", "16"]);
        assert.deepEqual(f, { rank: 8, alpha: 16, target_modules: null });
        add(`${m} fresh --lora-rank 8 --lora-alpha 16`, "fresh", m, undefined, `${m}.fresh`, f);
      }
      // adapters moved and saved by TorchTitan's CheckpointManager
      add("llama: move adapters, save with TorchTitan's CheckpointManager", "export-save", "llama", undefined, "llama.lora", s.llama!, { save_dir: g("run"), tt_logits: g("tt-moved.pt") });
      await judge(env, py, h, g, "cases.json", cases);

      // DoRA: refused, one line naming it and pointing at merge, nothing written
      const dora = run(["convert", h("llama"), h("llama.dora"), "--lora", h("peft-dora")]);
      assert.equal(dora.status, 1);
      assert.match(dora.stderr.trim(), /^ckpt: UNMAPPED: .*DoRA.*merge it .*ckpt lora merge/);
      assert.equal(dora.stderr.trim().split("\n").length, 1, dora.stderr);
      assert.ok(!existsSync(h("llama.dora")) && !existsSync(h("llama.dora.partial")));
      // PEFT's adapter on routed experts (its ParamWrapper): TorchTitan's GroupedExperts are not Linears
      const experts = run(["convert", h("qwen3moe"), h("moe.experts"), "--lora", h("peft-experts")]);
      assert.equal(experts.status, 1);
      assert.match(experts.stderr.trim(), /^ckpt: UNMAPPED: .*experts.*ckpt lora merge/);
      assert.ok(!existsSync(h("moe.experts")) && !existsSync(h("moe.experts.partial")));

      // back to PEFT, and merged, from TorchTitan's own step checkpoint
      const step = h("run/checkpoint/step-1");
      for (const args of [["lora", "export", step, h("peft-exported"), "--config", h("llama"), "--alpha", String(s.llama!.alpha)],
        ["lora", "merge", step, "-", h("merged"), "--config", h("llama"), "--alpha", String(s.llama!.alpha)]]) {
        const r = run(args);
        assert.equal(r.status, 0, `ckpt ${args.join(" ")}: ${r.stderr}`);
        // training state (optimizer, lr_scheduler, dataloader, train_state) is ignored with one line, not one per tensor
        assert.ok(r.stderr.trim().split("\n").length <= 2, r.stderr);
      }
      // Qwen3.5's in_proj_q / _k / _v (one lora_a) back to PEFT's one in_proj_qkv adapter
      const q35 = run(["lora", "export", h("qwen35.lora"), h("peft-qwen35-exported"), "--config", h("qwen35"), "--alpha", String(s.qwen35!.alpha)]);
      assert.equal(q35.status, 0, q35.stderr);
      await judge(env, py, h, g, "cases2.json", [
        { name: "TorchTitan checkpoint → ckpt lora export → PEFT", mode: "export-check", hf: g("llama"), peft: g("peft-exported"), tt_logits: g("tt-moved.pt") },
        { name: "qwen35 ckpt --lora (in_proj_q/k/v from in_proj_qkv) → ckpt lora export → PEFT", mode: "export-check", hf: g("qwen35"), peft: g("peft-qwen35-exported"), tt_logits: g("tt-qwen35.pt") },
        { name: "TorchTitan checkpoint → ckpt lora merge → TorchTitan's plain model", mode: "merged-check", hf: g("llama"), ckpt: g("merged"), tt_logits: g("tt-moved.pt") },
      ]);
    });
  });
}
if (suites.length === 0) test("LoRA vs TorchTitan (no PyTorch root)", { skip: "no sid root" }, () => {});
