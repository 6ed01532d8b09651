// Kimi K2.x INT4 and DeepSeek MTP, judged by the real consumers in the sid root (PyTorch 2.14,
// compressed-tensors 0.17.1, transformers 5.12, TorchTitan main):
// - INT4 decode: every nibble × all 65536 BF16 scales through compressed-tensors' unpack_from_int32 + dequantize equal
//   our kernels (every tier) bit for bit in BF16, and the exact float64 product in F32; the values compressed-tensors
//   makes non-finite are the ones our kernels report;
// - on tiny Kimi fixtures with every nibble, odd group counts (224 = 7 × 32, 96 = 3 × 32) and edge scales (subnormal,
//   zero, ±huge, negative), K2 Thinking's flat layout and K2.5's nested one: the routed experts ckpt writes (convert,
//   and shard --world-size 4) equal compressed-tensors' own decompression (ModelCompressor.decompress_model after
//   apply_quantization_config) bit for bit with --dtype bf16, and the exact products with --dtype keep (F32);
// - forward equivalence: TorchTitan's kimi_k2_7 text model (KimiK25Model, vision_encoder = None) loaded from ckpt
//   output computes the logits of transformers' DeepseekV3ForCausalLM on compressed-tensors' decompressed weights;
//   controls: nibbles read in reverse order, experts rolled by one;
// - DeepSeek MTP: `convert --mtp` / `shard --mtp` output loads strictly (keys both ways, no NaN after a NaN-filled
//   load) into TorchTitan's DeepSeek-V3 built with num_nextn_predict_layers MTP layers, its MTP-only tensors equal the
//   source's; without --mtp the same model reports the mtp_layers keys missing.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { test } from "node:test";
import { writeTinyKimi } from "../../src/fixtures/tiny-kimi.js";
import { writeTinyDeepSeek } from "../../src/fixtures/tiny-deepseek.js";
import { loadNative } from "../../src/kernels/native.js";
import { kernelImpls } from "../helpers/kernel-tiers.js";
import { ckpt, runJudge, type JudgeCase, inJudgeWorkspace } from "./judge-harness.js";
import { availableSuites, hasJudgeKit, JUDGE_ENV, torchRequired } from "./torch.js";




const lastJson = <T>(out: string): T => JSON.parse(out.trim().split("\n").pop()!) as T;

const suites = availableSuites(["sid"]).filter((e) => hasJudgeKit(e) || torchRequired());
if (suites.length === 0) {
  test("Kimi INT4 / DeepSeek MTP interop", { skip: "no sid root with the judge kit (test/interop/setup-torch-root.sh sid)" }, () => {});
}

for (const env of suites) {
  test(`[${env.suite}] Kimi K2.x: INT4 decode = compressed-tensors bit for bit; kimi_k2_7 from ckpt output = DeepseekV3ForCausalLM; MTP loads strictly`, { timeout: 900_000 }, async () => {
    await inJudgeWorkspace(env, async ({ h, g, py }) => {
      const ref = (args: string[], opts = {}) => env.pythonFile(`${py}/kimi_ref.py`, args, { timeoutMs: 300_000, env: JUDGE_ENV, ...opts });

      // 1. every nibble × every BF16 scale
      await ref(["table", g("")]);
      const packed = readFileSync(h("packed.bin")), ctBf16 = readFileSync(h("ct_bf16.bin")), exact = readFileSync(h("exact_f32.bin"));
      assert.equal(packed.length, 65536 * 8);
      for (const impl of kernelImpls()) {
        impl.select();
        for (const [dtype, theirs, es] of [["BF16", ctBf16, 2], ["F32", exact, 4]] as const) {
          const out = new Uint8Array(65536 * 16 * es);
          let same = 0, reported = 0;
          for (let s = 0; s < 65536; s++) {
            const row = out.subarray(s * 16 * es, (s + 1) * 16 * es);
            const bad = impl.k.int4Decode(packed.subarray(s * 8, s * 8 + 8), scaleBytes(s), 1, 16, 0, 16, 8, 2, row, dtype);
            if (bad >= 0) reported++;
            for (let c = 0; c < 16; c++) {
              const i = s * 16 + c;
              const their = es === 2 ? theirs.readUInt16LE(i * 2) : theirs.readUInt32LE(i * 4);
              const expBits = es === 2 ? (their >> 7) & 0xff : (their >>> 23) & 0xff;
              if (expBits === 0xff) {
                assert.ok(bad >= 0 && bad <= c, `${impl.label} ${dtype}: scale 0x${s.toString(16)} nibble ${c} is not finite in compressed-tensors; we must report it (got ${bad})`);
                continue;
              }
              if (bad >= 0 && c >= bad) continue; // past our first report
              const mine = es === 2 ? Buffer.from(row.buffer, row.byteOffset, row.byteLength).readUInt16LE(c * 2) : Buffer.from(row.buffer, row.byteOffset, row.byteLength).readUInt32LE(c * 4);
              assert.equal(mine, their, `${impl.label} ${dtype}: nibble ${c} scale 0x${s.toString(16)}: ours 0x${mine.toString(16)}, compressed-tensors 0x${their.toString(16)}`);
              same++;
            }
          }
          // inf/NaN scales (exponent 0xFF) and scales whose ×8 (nibble 0) overflows: exponents 0xFC..0xFF, both signs
          assert.equal(reported, 1024, `${impl.label} ${dtype}: rows reported`);
          assert.ok(same >= 64512 * 16, `${impl.label} ${dtype}: ${same} values compared`);
        }
      }
      loadNative()?.setIsa("auto");

      // 2. tiny fixtures with edge scales: ckpt's experts = compressed-tensors' decompression (bf16) / exact product (f32)
      writeTinyKimi(h("k2e"), { layout: "k2", layers: 3, experts: 4, edgeScales: true, files: 2, seed: 3 });
      writeTinyKimi(h("k25e"), { layout: "k25", layers: 3, experts: 4, edgeScales: true, files: 3, seed: 4 });
      for (const f of ["k2e", "k25e"]) {
        ckpt(["convert", h(f), h(`${f}.bf16`), "--dtype", "bf16"]);
        ckpt(["convert", h(f), h(`${f}.f32`)]);
        ckpt(["shard", h(f), h(`${f}.w4`), "--world-size", "4", "--dtype", "bf16"]);
        ckpt(["shard", h(f), h(`${f}.w4f32`), "--world-size", "4"]);
      }
      // K2.5's nested names: compressed-tensors decompresses the flat copy (its ignore entry "lm_head" names the flat module)
      await env.python(`import sys; sys.path.insert(0, "${py}"); import kimi_ref; kimi_ref.flat_copy("${g("k25e")}", "${g("k25e.flat")}")`, [], { timeoutMs: 120_000 });
      for (const [f, src] of [["k2e", "k2e"], ["k25e", "k25e.flat"]] as const) {
        const d = lastJson<{ modules: number; elements: number; nonfinite: number; bf16_rounded: number }>(await ref(["decompress", g(src), g(`${f}.ref`)]));
        assert.equal(d.modules, 2 * 4 * 3, `${f}: packed modules decompressed by compressed-tensors`);
        assert.equal(d.nonfinite, 0, `${f}: edge scales stay finite`);
        assert.ok(d.bf16_rounded > 1000, `${f}: BF16 must round some products (F32 and BF16 outputs are then distinguishable)`);
        for (const [out, mode] of [[`${f}.bf16`, "bf16"], [`${f}.w4`, "bf16"], [`${f}.f32`, "f32"], [`${f}.w4f32`, "f32"]] as const) {
          const r = lastJson<{ compared: number; elements: number; missing: string[]; differ: string[]; dtypes: string[] }>(await ref(["experts", g(`${f}.ref`), g(out), mode]));
          assert.equal(r.compared, 6, `${out}: expert tensors compared`);
          assert.deepEqual([r.missing, r.differ], [[], []], `${out}: routed experts differ from compressed-tensors (${mode})`);
          assert.deepEqual(r.dtypes, [mode === "bf16" ? "torch.bfloat16" : "torch.float32"], `${out}: dtype`);
        }
      }
      // the f32 reference is not the bf16 one: a bf16 output compared as f32 must differ
      await assert.rejects(ref(["experts", g("k2e.ref"), g("k2e.bf16"), "f32"]), /differ/);

      // 3. forward equivalence (ordinary scales; edge scales would make the logits non-finite on both sides)
      writeTinyKimi(h("k2"), { layout: "k2", layers: 3, experts: 4, files: 2, seed: 5 });
      writeTinyKimi(h("k25"), { layout: "k25", layers: 3, experts: 4, files: 2, seed: 6 });
      for (const f of ["k2", "k25"]) {
        ckpt(["convert", h(f), h(`${f}.convert`), "--dtype", "bf16"]);
        ckpt(["shard", h(f), h(`${f}.w4`), "--world-size", "4", "--dtype", "bf16"]);
      }
      await ref(["swap-nibbles", g("k2"), g("k2.swapped")]);
      ckpt(["convert", h("k2.swapped"), h("ctl-swapped"), "--dtype", "bf16"]);
      const cases = [
        { name: "Kimi K2 (flat, DeepseekV3ForCausalLM) convert", hf: g("k2"), ckpt: g("k2.convert") },
        { name: "Kimi K2 (flat) shard w4", hf: g("k2"), ckpt: g("k2.w4") },
        { name: "Kimi K2.5 (nested text_config) convert", hf: g("k25"), ckpt: g("k25.convert") },
        { name: "Kimi K2.5 (nested) shard w4", hf: g("k25"), ckpt: g("k25.w4") },
        { name: "CONTROL Kimi nibbles read high first", hf: g("k2"), ckpt: g("ctl-swapped"), control: true },
        { name: "CONTROL Kimi experts rolled by one", hf: g("k2"), ckpt: g("k2.convert"), perturb: "roll_experts", control: true },
      ];
      await runJudge(env, py, cases, h("cases.json"), g("cases.json"), 600_000);

      // 4. DeepSeek MTP into TorchTitan's DeepSeek-V3 with MTP layers
      writeTinyDeepSeek(h("ds"), { layers: 2, mtp: 1, experts: 4, files: 2 });
      ckpt(["convert", h("ds"), h("ds.mtp"), "--mtp"]);
      ckpt(["shard", h("ds"), h("ds.mtp.w4"), "--mtp", "--world-size", "4"]);
      ckpt(["convert", h("ds"), h("ds.plain")]);
      type Mtp = { mtp_layers: number; keys: number; mtp_keys: number; error: null | { missing?: string[]; unexpected?: string[]; nan_after_load?: string[] }; differ: string[] };
      for (const c of ["ds.mtp", "ds.mtp.w4"]) {
        const r = lastJson<Mtp>(await ref(["mtp-load", g("ds"), g(c)]));
        assert.equal(r.mtp_layers, 1);
        assert.ok(r.mtp_keys > 15, `${c}: ${r.mtp_keys} mtp_layers keys`);
        assert.equal(r.error, null, `${c}: strict load into DeepSeek-V3 with MTP: ${JSON.stringify(r.error)}`);
        assert.deepEqual(r.differ, [], `${c}: MTP tensors differ from the source`);
      }
      const plain = await ref(["mtp-load", g("ds"), g("ds.plain")]).then(() => null, (e: Error) => e.message);
      assert.ok(plain && /"missing": \["mtp_layers\.0\./.test(plain), `without --mtp the MTP model must miss mtp_layers keys: ${plain?.slice(-600)}`);
    });
  });
}

/** The BF16 scale s as its two little-endian bytes. */
function scaleBytes(s: number): Uint8Array {
  return new Uint8Array([s & 0xff, s >> 8]);
}
