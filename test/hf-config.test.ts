// The config.json --to hf writes, as mapping data: `hf_config` rewrites (conditions, actions and their order) and the
// quantization_config of decoded outputs, whose packed tensors are known from the mapping's own rules. The packed
// names below are the published formats' (compressed-tensors pack-quantized: weight_packed / weight_scale /
// weight_shape; gpt-oss MXFP4: *_blocks / *_scales; DeepSeek-V3 block FP8: *_scale_inv), not read from src/.
import assert from "node:assert/strict";
import { test } from "node:test";
import { mappingByName } from "../src/mapping/load.js";
import { quantizedTensorTest, rewriteHfConfig, textOnlyArchitectures, withoutDecodedQuantization } from "../src/mapping/hf-config.js";
import type { Mapping } from "../src/mapping/schema.js";

test("the quantized tensors of a mapping are its rules' packed tensors, their companions and dequant scales", () => {
  const ds = quantizedTensorTest(mappingByName("deepseek_v3"))!;
  for (const n of ["model.layers.3.mlp.experts.17.gate_proj.weight_packed", "model.layers.3.mlp.experts.17.down_proj.weight_scale", "model.layers.3.mlp.experts.0.up_proj.weight_shape", "model.layers.0.self_attn.q_a_proj.weight_scale_inv"]) assert.ok(ds(n), n);
  for (const n of ["model.layers.3.mlp.experts.17.gate_proj.weight", "model.layers.0.self_attn.q_a_proj.weight", "lm_head.weight", "model.layers.3.mlp.gate.e_score_correction_bias"]) assert.ok(!ds(n), n);
  const oss = quantizedTensorTest(mappingByName("gpt_oss"))!;
  for (const n of ["model.layers.1.mlp.experts.gate_up_proj_blocks", "model.layers.1.mlp.experts.down_proj_scales"]) assert.ok(oss(n), n);
  for (const n of ["model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.gate_up_proj_bias", "model.layers.1.self_attn.sinks"]) assert.ok(!oss(n), n);
  for (const arch of ["llama3", "qwen3", "qwen3_5", "flux", "muse_glimmer"]) assert.equal(quantizedTensorTest(mappingByName(arch)), undefined, arch);
});

test("quantization_config is dropped only when the output holds none of the mapping's quantized tensors", () => {
  const ds = mappingByName("deepseek_v3");
  const cfg = { model_type: "deepseek_v3", quantization_config: { quant_method: "fp8" }, torch_dtype: "bfloat16" };
  assert.deepEqual(withoutDecodedQuantization(cfg, ds, ["model.layers.0.self_attn.q_a_proj.weight"]), { model_type: "deepseek_v3", torch_dtype: "bfloat16" });
  assert.equal(withoutDecodedQuantization(cfg, ds, ["model.layers.0.self_attn.q_a_proj.weight", "model.layers.0.self_attn.q_a_proj.weight_scale_inv"]), cfg);
  // a mapping that decodes nothing leaves the config as it is
  const llama = { model_type: "llama", quantization_config: { quant_method: "bitsandbytes" } };
  assert.equal(withoutDecodedQuantization(llama, mappingByName("llama3"), ["model.norm.weight"]), llama);
});

test("hf_config: conditions, actions in order map → flatten → delete → set, rules reading what earlier ones left", () => {
  const m = {
    hf_config: [
      { why: "1", text_only: true, map: { architectures: { WrapperLM: "TextLM" } }, flatten: { field: "text_config", inherit: ["torch_dtype", "tie_word_embeddings"], carry: ["architectures"] } },
      { why: "2", when: { model_type: ["old"] }, tensors: "decoded", delete: ["auto_map"], set: { model_type: "new" } },
      { why: "3", when: { model_type: ["old"] }, tensors: "requantized", set: { requantized: true } },
    ],
  } as unknown as Mapping;
  const cfg = { architectures: ["WrapperLM"], torch_dtype: "bfloat16", tie_word_embeddings: true, text_config: { model_type: "old", tie_word_embeddings: false, architectures: ["X"], auto_map: {} } };
  // rule 1 flattens (text_config's own tie_word_embeddings kept, torch_dtype inherited, architectures carried over
  // after the wrapper's were mapped); rule 2 then sees model_type "old"
  assert.deepEqual(rewriteHfConfig(cfg, m, { requantized: false, textOnly: true }), { model_type: "new", tie_word_embeddings: false, architectures: ["TextLM"], torch_dtype: "bfloat16" });
  assert.deepEqual(JSON.stringify(Object.keys(rewriteHfConfig(cfg, m, { requantized: false, textOnly: true }))), JSON.stringify(["model_type", "tie_word_embeddings", "architectures", "torch_dtype"]));
  // not a text-only output: rule 1 does not apply, and rules 2 and 3 read the top-level model_type (absent)
  assert.equal(rewriteHfConfig(cfg, m, { requantized: false, textOnly: false }), cfg);
  assert.deepEqual(rewriteHfConfig({ model_type: "old" }, m, { requantized: true, textOnly: false }), { model_type: "old", requantized: true });
  assert.deepEqual(textOnlyArchitectures(m), { WrapperLM: "TextLM" });
  assert.deepEqual(textOnlyArchitectures(mappingByName("qwen3_5")), { Qwen3_5ForConditionalGeneration: "Qwen3_5ForCausalLM", Qwen3_5MoeForConditionalGeneration: "Qwen3_5MoeForCausalLM" });
});

test("Kimi configs through the mappings' hf_config: K2 (flat, read by deepseek_v3.json) and K2.5 (nested) become DeepseekV3ForCausalLM's", () => {
  const flat = { architectures: ["DeepseekV3ForCausalLM"], model_type: "kimi_k2", auto_map: { AutoConfig: "x" }, hidden_size: 8 };
  const want = { architectures: ["DeepseekV3ForCausalLM"], model_type: "deepseek_v3", hidden_size: 8 };
  for (const arch of ["deepseek_v3", "kimi_k2"]) {
    assert.deepEqual(rewriteHfConfig(flat, mappingByName(arch), { requantized: false, textOnly: false }), want, arch);
    assert.equal(rewriteHfConfig(flat, mappingByName(arch), { requantized: true, textOnly: false }), flat, `${arch} --requantize keeps the source's config`);
  }
  const q = { quant_method: "compressed-tensors" };
  const nested = { architectures: ["KimiK25ForConditionalGeneration"], model_type: "kimi_k25", torch_dtype: "bfloat16", tie_word_embeddings: false, text_config: { model_type: "kimi_k2", hidden_size: 8, quantization_config: q, auto_map: {} } };
  assert.deepEqual(rewriteHfConfig(nested, mappingByName("kimi_k2"), { requantized: false, textOnly: false }), { model_type: "deepseek_v3", hidden_size: 8, quantization_config: q, torch_dtype: "bfloat16", tie_word_embeddings: false, architectures: ["DeepseekV3ForCausalLM"] });
  assert.deepEqual(rewriteHfConfig(nested, mappingByName("kimi_k2"), { requantized: true, textOnly: false }), { model_type: "kimi_k2", hidden_size: 8, quantization_config: q, auto_map: {}, architectures: ["DeepseekV3ForCausalLM"] });
});
