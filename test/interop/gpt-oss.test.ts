// gpt-oss, judged by the real consumers in the sid root (PyTorch 2.14, transformers 5.12, TorchTitan main):
// - MXFP4 decode: all 16 × 256 (nibble, scale) pairs through transformers' own dequantization
//   (integrations/mxfp4.py) and PyTorch's QuantizedHuggingFaceStorageReader equal our kernels bit for bit, bf16 and
//   f32; the pairs they turn into inf/NaN are the ones our kernels report (never written);
// - the expert weights ckpt writes from an MXFP4 checkpoint (convert, and shard --world-size 4) equal, bit for bit,
//   what transformers' loader dequantizes from the same checkpoint;
// - `--to hf` from convert / shard output: transformers loads it with no key or quantization complaints and computes
//   exactly the logits of its own dequantized model (MXFP4 source) or of the bf16 source;
// - forward equivalence: TorchTitan's gpt_oss model loaded from ckpt output computes GptOssForCausalLM's logits, for
//   the HF MXFP4 layout (HF side: transformers' own dequantized model) and the HF bf16 layout; controls: experts
//   rolled by one fails the comparison, and a conversion to the stale state_dict_adapter names fails to load strictly.
import assert from "node:assert/strict";
import { cpSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { writeTinyGptOss } from "../../src/fixtures/tiny-gpt-oss.js";
import { loadNative } from "../../src/kernels/native.js";
import { kernelImpls } from "../helpers/kernel-tiers.js";
import { ckpt, runJudge, type JudgeCase, inJudgeWorkspace } from "./judge-harness.js";
import { availableSuites, hasJudgeKit, torchRequired } from "./torch.js";

const REPO_MAPPINGS = join(process.cwd(), "mappings");
// Seed 99: with RMSNorm ×16 the router logits of the tiny model span ~150, so some tokens' non-top experts get an
// f32 softmax weight of exactly 0 and TorchTitan (softmax, then top-k) may pick any of those tied zero-weight
// experts where transformers (top-k on logits) picks by logit: a "route flip" that changes no logit (seen with
// seeds 7 and 21, logits still within 4e-6 relative). This seed has no such tie, so the route check stays exact.
const SEED = 99;



const suites = availableSuites(["sid"]).filter((e) => hasJudgeKit(e) || torchRequired());
if (suites.length === 0) {
  test("gpt-oss interop (MXFP4 decode, forward equivalence)", { skip: "no sid root with the judge kit (test/interop/setup-torch-root.sh sid)" }, () => {});
}

for (const env of suites) {
  test(`[${env.suite}] gpt-oss: MXFP4 decode = transformers/PyTorch on all 16×256 pairs; TorchTitan's gpt_oss from ckpt output = GptOssForCausalLM`, { timeout: 900_000 }, async () => {
    await inJudgeWorkspace(env, async ({ h, g, py }) => {

      // 1. every (nibble, scale) pair
      await env.python(`import runpy, sys; sys.argv = ["x", "table", "${g("")}"]; runpy.run_path("${py}/gpt_oss_ref.py", run_name="__main__")`, [], { timeoutMs: 120_000 });
      const blocks = new Uint8Array(256 * 16), scales = new Uint8Array(256);
      for (let s = 0; s < 256; s++) { scales[s] = s; for (let b = 0; b < 16; b++) blocks[s * 16 + b] = (b << 4) | b; }
      for (const [dtype, es] of [["BF16", 2], ["F32", 4]] as const) {
        const name = dtype === "BF16" ? "bf16" : "f32";
        const theirs = { transformers: readFileSync(h(`transformers_${name}.bin`)), torch: readFileSync(h(`torch_${name}.bin`)) };
        for (const [who, ref] of Object.entries(theirs)) {
          assert.equal(ref.length, 256 * 32 * es, `${who} ${name} table size`);
          for (const impl of kernelImpls()) {
            impl.select();
            let same = 0, reported = 0;
            for (let s = 0; s < 256; s++) {
              const out = new Uint8Array(32 * es);
              const bad = impl.k.mxfp4Decode(blocks.subarray(s * 16, s * 16 + 16), scales.subarray(s, s + 1), 1, 32, 0, 16, 1, out, dtype);
              for (let c = 0; c < 32; c++) {
                const theirBits = es === 2 ? ref.readUInt16LE((s * 32 + c) * 2) : ref.readUInt32LE((s * 32 + c) * 4);
                const exp = es === 2 ? (theirBits >> 7) & 0xff : (theirBits >>> 23) & 0xff;
                if (exp === 0xff) {
                  // inf/NaN on their side: ours must report this row, at or before this value
                  assert.ok(bad >= 0 && bad <= c, `${impl.label} ${name}: scale ${s} value ${c} is not finite in ${who}; we must report it (got ${bad})`);
                  continue;
                }
                const mine = es === 2 ? Buffer.from(out).readUInt16LE(c * 2) : Buffer.from(out).readUInt32LE(c * 4);
                if (bad >= 0 && c >= bad) continue; // past our first report
                assert.equal(mine, theirBits, `${impl.label} ${name}: nibble ${c >> 1} scale ${s}: ours 0x${mine.toString(16)}, ${who} 0x${theirBits.toString(16)}`);
                same++;
              }
              if (bad >= 0) reported++;
            }
            assert.equal(reported, 3, `${impl.label} ${name} vs ${who}: scales 253, 254 (overflow) and 255 (NaN) reported`);
            assert.ok(same >= 253 * 32, `${impl.label} ${name} vs ${who}: ${same} values compared`);
          }
        }
      }
      loadNative()?.setIsa("auto");

      // 2. fixtures, conversions, transformers' own dequantization of the MXFP4 one
      writeTinyGptOss(h("mx"), { layout: "mxfp4", seed: SEED });
      writeTinyGptOss(h("bf"), { layout: "bf16", seed: SEED, files: 2 });
      for (const f of ["mx", "bf"]) {
        ckpt(["convert", h(f), h(`${f}.convert`)]);
        ckpt(["shard", h(f), h(`${f}.w4`), "--world-size", "4"]);
      }
      const run = (args: string[], opts = {}) => env.pythonFile(`${py}/gpt_oss_ref.py`, args, { timeoutMs: 300_000, ...opts });
      await run(["hf-bf16", g("mx"), g("mx.hf")]);
      for (const c of ["mx.convert", "mx.w4"]) {
        const r = JSON.parse((await run(["experts", g("mx.hf"), g(c)])).trim().split("\n").pop()!) as { compared: number; elements: number; differ: string[] };
        assert.equal(r.compared, 4, `${c}: expert tensors compared`);
        assert.deepEqual(r.differ, [], `${c}: expert weights differ from transformers' dequantization`);
      }

      // 3. --to hf: the bf16 HF layout, no quantization_config; transformers loads it cleanly and computes exactly the
      // logits of the model it dequantized itself (MXFP4) or of the bf16 source
      type Loaded = { missing: string[]; unexpected: string[]; mismatched: string[]; quantization_config: boolean; logits: number[] };
      const loadHf = async (dir: string) => JSON.parse((await run(["load-hf", g(dir)])).trim().split("\n").pop()!) as Loaded;
      for (const [from, config, ref] of [["mx.convert", "mx", "mx.hf"], ["mx.w4", "mx", "mx.hf"], ["bf.w4", "bf", "bf"]] as const) {
        ckpt(["convert", h(from), h(`${from}.hf`), "--to", "hf", "--config", h(config)]);
        const [mine, theirs] = [await loadHf(`${from}.hf`), await loadHf(ref)];
        assert.deepEqual([mine.missing, mine.unexpected, mine.mismatched, mine.quantization_config], [[], [], [], false], `${from} --to hf: transformers' load report`);
        assert.deepEqual(mine.logits, theirs.logits, `${from} --to hf: logits differ from ${ref}'s`);
      }

      // 4. the stale adapter names (torchtitan/models/gpt_oss/state_dict_adapter.py) as a mapping: must not load
      const stale = h("maps-stale");
      mkdirSync(stale, { recursive: true });
      cpSync(REPO_MAPPINGS, stale, { recursive: true });
      const m = JSON.parse(readFileSync(join(stale, "gpt_oss.json"), "utf8")) as { tensors: { tt?: unknown }[] };
      for (const r of m.tensors) if (typeof r.tt === "string") r.tt = r.tt.replace(/(mlp[12]_(weight|bias))_E[A-Z]+$/, "$1");
      writeFileSync(join(stale, "gpt_oss.json"), JSON.stringify(m));
      ckpt(["convert", h("mx"), h("ctl-stale")], { CKPT_MAPPINGS_DIR: stale });

      const cases = [
        { name: "gpt-oss MXFP4 convert", hf: g("mx.hf"), ckpt: g("mx.convert") },
        { name: "gpt-oss MXFP4 shard w4", hf: g("mx.hf"), ckpt: g("mx.w4") },
        { name: "gpt-oss bf16 convert", hf: g("bf"), ckpt: g("bf.convert") },
        { name: "gpt-oss bf16 shard w4", hf: g("bf"), ckpt: g("bf.w4") },
        { name: "CONTROL gpt-oss experts rolled by one", hf: g("mx.hf"), ckpt: g("mx.convert"), perturb: "roll_experts", control: true },
        { name: "CONTROL gpt-oss stale adapter names", hf: g("mx.hf"), ckpt: g("ctl-stale"), control: true, expectLoadError: true },
      ];
      const results = await runJudge(env, py, cases, h("cases.json"), g("cases.json"), 600_000);
      const staleRes = results.find((r) => r.name === "CONTROL gpt-oss stale adapter names")!;
      assert.ok(staleRes.load?.missing?.some((k) => k.endsWith("inner_experts.mlp1_weight_EGD")), "TorchTitan's mlp1_weight_EGD reported missing");
      assert.ok(staleRes.load?.unexpected?.some((k) => k.endsWith("inner_experts.mlp1_weight")), "the stale mlp1_weight reported unexpected");
    });
  });
}
