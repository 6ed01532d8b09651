// `--to hf` writes what transformers loads: for every architecture fixture (Llama 3, Qwen3 dense and MoE, DeepSeek-V3
// FP8 with its MTP layer, Kimi K2 and the nested K2.5 (INT4), Qwen3.5 dense and MoE as text models, and the
// Qwen3.5 dense and MoE VLMs as published — made by transformers + torch — converted with and without --text-only),
// the TorchTitan checkpoint ckpt wrote (sharded w4, or w4 tp2) converted back with `--to hf` loads into transformers'
// from_pretrained(..., output_loading_info=True) with nothing missing, unexpected or mismatched, and computes the
// source's logits bit for bit. gpt-oss's round trip is judged the same way in gpt-oss.test.ts. Controls: a VLM
// written back under the text model's names (what --to hf did before), and a --text-only conversion written back
// with the VLM's config, must each fail the strict load.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { writeTinyLlama } from "../../src/fixtures/tiny-llama.js";
import { writeTinyQwen3 } from "../../src/fixtures/tiny-qwen3.js";
import { writeTinyDeepSeek } from "../../src/fixtures/tiny-deepseek.js";
import { writeTinyKimi } from "../../src/fixtures/tiny-kimi.js";
import { writeTinyQwen35 } from "../../src/fixtures/tiny-qwen3-5.js";
import { ckpt, inJudgeWorkspace } from "./judge-harness.js";
import { availableSuites, hasJudgeKit, JUDGE_ENV, torchRequired } from "./torch.js";

const suites = availableSuites(["sid"]).filter((e) => hasJudgeKit(e) || torchRequired());
if (suites.length === 0) {
  test("--to hf loads strictly in transformers", { skip: "no sid root with the judge kit (test/interop/setup-torch-root.sh sid)" }, () => {});
}

interface Loaded { missing: string[]; unexpected: string[]; mismatched: string[]; class?: string; mtp_layer_keys?: number }
interface Result { name: string; back: Loaded; source: unknown; identical: boolean; max_abs: number | null; config_architectures: string[] }

for (const env of suites) {
  test(`[${env.suite}] --to hf of every architecture fixture loads strictly in transformers with the source's logits bit for bit`, { timeout: 900_000 }, async () => {
    await inJudgeWorkspace(env, async ({ h, g, py }) => {
      const cases: { name: string; src: string; back: string; skip?: string[]; control?: boolean }[] = [];
      const roundTrip = (name: string, src: string, shardArgs: string[], backArgs: string[] = [], skip?: string[]) => {
        ckpt(["shard", h(src), h(`${name}.tt`), "--world-size", "4", ...shardArgs]);
        ckpt(["convert", h(`${name}.tt`), h(`${name}.back`), "--to", "hf", ...backArgs]);
        cases.push({ name, src: g(src), back: g(`${name}.back`), ...(skip ? { skip } : {}) });
      };
      writeTinyLlama(h("llama"), { layers: 2, seed: 61 });
      roundTrip("llama w4 tp2", "llama", ["--tp", "2"]);
      writeTinyQwen3(h("qwen3"), { experts: 0, layers: 2, tied: true, seed: 62 });
      roundTrip("qwen3 dense (tied) w4", "qwen3", []);
      writeTinyQwen3(h("qwen3-moe"), { experts: 4, layers: 3, mlpOnlyLayers: [0], seed: 63 });
      roundTrip("qwen3 moe w4 ep2", "qwen3-moe", ["--ep", "2"]);
      writeTinyDeepSeek(h("deepseek"), { layers: 2, mtp: 1, experts: 4, files: 2, seed: 64 });
      roundTrip("deepseek-v3 fp8 + mtp w4", "deepseek", ["--mtp"]);
      writeTinyKimi(h("k2"), { layout: "k2", layers: 3, experts: 4, files: 2, seed: 65 });
      roundTrip("kimi k2 int4 w4", "k2", [], ["--dtype", "bf16"]);
      writeTinyKimi(h("k25"), { layout: "k25", layers: 3, experts: 4, files: 2, seed: 66 });
      roundTrip("kimi k2.5 int4 (nested) w4", "k25", [], ["--dtype", "bf16"]);
      for (const [kind, o] of [["dense", { seed: 67 }], ["moe", { experts: 6, seed: 68 }]] as const) {
        writeTinyQwen35(h(`q35-${kind}`), o);
        roundTrip(`qwen3.5 ${kind} text w4 tp2`, `q35-${kind}`, ["--tp", "2"]);
        // the published VLM, made by transformers: with its vision tower, and --text-only
        const made = JSON.parse((await env.pythonFile(`${py}/qwen35_published.py`, [g(`vlm-${kind}`), kind, kind === "moe" ? "71" : "72"], { timeoutMs: 300_000, env: JUDGE_ENV })).trim().split("\n").pop()!) as { load: Loaded };
        assert.deepEqual(made.load, { missing: [], unexpected: [], mismatched: [] }, `the ${kind} VLM fixture loads strictly into transformers`);
        roundTrip(`qwen3.5 ${kind} VLM w4`, `vlm-${kind}`, [], [], ["mtp."]);
        roundTrip(`qwen3.5 ${kind} VLM --text-only w4 tp2`, `vlm-${kind}`, ["--tp", "2", "--text-only"], [], ["mtp.", "model.visual."]);
      }
      // controls: the VLM under the text model's names with the VLM config; the text-only model with the VLM config
      const vlmNames = (dir: string, from: string, to: string) => {
        for (const f of ["model.safetensors"]) {
          const p = join(h(dir), f);
          const buf = readFileSync(p);
          const n = Number(buf.readBigUInt64LE(0));
          const header = buf.subarray(8, 8 + n).toString("utf8").split(from).join(to);
          const nb = Buffer.from(header.padEnd(n, " "));
          assert.equal(nb.length, n, "renaming must keep the header size");
          writeFileSync(p, Buffer.concat([buf.subarray(0, 8), nb, buf.subarray(8 + n)]));
        }
      };
      ckpt(["convert", h("qwen3.5 moe VLM w4.tt"), h("ctl-flat-names"), "--to", "hf"]);
      vlmNames("ctl-flat-names", "\"model.language_model.", "\"model.");
      cases.push({ name: "CONTROL VLM written under model.* with the VLM config", src: g("vlm-moe"), back: g("ctl-flat-names"), skip: ["mtp."], control: true });
      ckpt(["convert", h("qwen3.5 moe VLM --text-only w4 tp2.tt"), h("ctl-vlm-config"), "--to", "hf"]);
      writeFileSync(h("ctl-vlm-config/config.json"), readFileSync(h("vlm-moe/config.json")));
      cases.push({ name: "CONTROL --text-only tensors with the VLM config", src: g("vlm-moe"), back: g("ctl-vlm-config"), skip: ["mtp."], control: true });

      writeFileSync(h("reload.json"), JSON.stringify(cases));
      const out = await env.pythonFile(`${py}/hf_reload.py`, [g("reload.json")], { timeoutMs: 600_000, env: JUDGE_ENV });
      const res = JSON.parse(out.trim().split("\n").pop()!) as { torch: string; transformers: string; results: Result[] };
      console.log(`# transformers ${res.transformers}, torch ${res.torch}`);
      for (const [i, c] of cases.entries()) {
        const r = res.results[i]!;
        const clean = r.back.missing.length === 0 && r.back.unexpected.length === 0 && r.back.mismatched.length === 0;
        console.log(`# ${clean && r.identical ? "ok  " : c.control ? "ctl " : "FAIL"} ${c.name}: ${r.back.class} ${JSON.stringify(r.config_architectures)} missing ${r.back.missing.length} unexpected ${r.back.unexpected.length}${r.back.mtp_layer_keys ? ` (+${r.back.mtp_layer_keys} of the MTP layer, as in the source)` : ""} mismatched ${r.back.mismatched.length}; logits ${r.identical ? "bit-identical" : `differ (max |Δ| ${r.max_abs})`}; source ${JSON.stringify(r.source)}`);
        if (c.control) {
          assert.ok(!clean, `${c.name}: the strict load must report missing or unexpected keys`);
          continue;
        }
        assert.deepEqual([r.back.missing, r.back.unexpected, r.back.mismatched], [[], [], []], `${c.name}: transformers' load report`);
        assert.ok(r.identical, `${c.name}: logits differ from the source's (max |Δ| ${r.max_abs})`);
      }
    });
  });
}
