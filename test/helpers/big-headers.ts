// Real-sized checkpoints as headers only (sparse safetensors files: planning reads nothing else), for dry-run tests
// and the planning benchmark (npm run bench -- --plan).
import { mkdirSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { planSafetensorsFile } from "../../src/formats/safetensors/writer.js";
import { fluxShapes, tinyFluxConfig } from "../../src/fixtures/tiny-flux.js";
import { MUSE_GLIMMER_30B, museGlimmerConfig, museGlimmerShapes } from "../../src/fixtures/tiny-muse-glimmer.js";

/** Qwen3.5-35B-A3B's tensor headers (per-expert experts, vision tower, MTP layer), as sparse safetensors files. */
export function write35bA3bHeaders(dir: string): { config: Record<string, unknown>; count: number } {
  const D = 2048, F = 512, E = 256, V = 248320, hd = 256, kd = 16 * 128, vd = 32 * 128;
  const layerTypes = [...Array(40).keys()].map((L) => ((L + 1) % 4 === 0 ? "full_attention" : "linear_attention"));
  const text = {
    model_type: "qwen3_5_moe_text", vocab_size: V, hidden_size: D, num_hidden_layers: 40, num_attention_heads: 16, num_key_value_heads: 2,
    head_dim: hd, hidden_act: "silu", max_position_embeddings: 262144, rms_norm_eps: 1e-6, tie_word_embeddings: false, attention_bias: false,
    rope_parameters: { rope_type: "default", rope_theta: 10000000, partial_rotary_factor: 0.25, mrope_section: [11, 11, 10], mrope_interleaved: true },
    partial_rotary_factor: 0.25, linear_conv_kernel_dim: 4, linear_key_head_dim: 128, linear_value_head_dim: 128, linear_num_key_heads: 16,
    linear_num_value_heads: 32, moe_intermediate_size: F, shared_expert_intermediate_size: F, num_experts_per_tok: 8, num_experts: E,
    router_aux_loss_coef: 0.001, layer_types: layerTypes, full_attention_interval: 4, mtp_num_hidden_layers: 1, dtype: "bfloat16",
  };
  const config = {
    architectures: ["Qwen3_5MoeForConditionalGeneration"], model_type: "qwen3_5_moe", tie_word_embeddings: false, text_config: text,
    vision_config: { model_type: "qwen3_5_moe", depth: 27, hidden_size: 1152, intermediate_size: 4304, num_heads: 16, out_hidden_size: D, patch_size: 16, temporal_patch_size: 2, spatial_merge_size: 2 },
  };
  const t: { name: string; dtype: "BF16" | "F32"; shape: number[] }[] = [];
  const add = (name: string, ...shape: number[]) => t.push({ name, dtype: "BF16", shape });
  const layer = (p: string, type: string) => {
    if (type === "full_attention") {
      add(p + "self_attn.q_proj.weight", 2 * 16 * hd, D); add(p + "self_attn.k_proj.weight", 2 * hd, D); add(p + "self_attn.v_proj.weight", 2 * hd, D);
      add(p + "self_attn.o_proj.weight", D, 16 * hd); add(p + "self_attn.q_norm.weight", hd); add(p + "self_attn.k_norm.weight", hd);
    } else {
      add(p + "linear_attn.in_proj_qkv.weight", 2 * kd + vd, D); add(p + "linear_attn.in_proj_z.weight", vd, D); add(p + "linear_attn.in_proj_a.weight", 32, D);
      add(p + "linear_attn.in_proj_b.weight", 32, D); add(p + "linear_attn.conv1d.weight", 2 * kd + vd, 1, 4); add(p + "linear_attn.A_log", 32);
      add(p + "linear_attn.dt_bias", 32); add(p + "linear_attn.norm.weight", 128); add(p + "linear_attn.out_proj.weight", D, vd);
    }
    add(p + "mlp.gate.weight", E, D); add(p + "mlp.shared_expert_gate.weight", 1, D);
    for (const n of ["gate_proj", "up_proj"]) add(`${p}mlp.shared_expert.${n}.weight`, F, D);
    add(p + "mlp.shared_expert.down_proj.weight", D, F);
    for (let e = 0; e < E; e++) { add(`${p}mlp.experts.${e}.gate_proj.weight`, F, D); add(`${p}mlp.experts.${e}.up_proj.weight`, F, D); add(`${p}mlp.experts.${e}.down_proj.weight`, D, F); }
    add(p + "input_layernorm.weight", D); add(p + "post_attention_layernorm.weight", D);
  };
  const lm = "model.language_model.";
  add(lm + "embed_tokens.weight", V, D); add(lm + "norm.weight", D); add("lm_head.weight", V, D);
  for (let L = 0; L < 40; L++) layer(`${lm}layers.${L}.`, layerTypes[L]!);
  const vis = "model.visual.", W = 1152;
  add(vis + "patch_embed.proj.weight", W, 3, 2, 16, 16); add(vis + "patch_embed.proj.bias", W); add(vis + "pos_embed.weight", 2304, W);
  for (let b = 0; b < 27; b++) {
    const p = `${vis}blocks.${b}.`;
    for (const n of ["norm1", "norm2"]) { add(p + n + ".weight", W); add(p + n + ".bias", W); }
    add(p + "attn.qkv.weight", 3 * W, W); add(p + "attn.qkv.bias", 3 * W); add(p + "attn.proj.weight", W, W); add(p + "attn.proj.bias", W);
    add(p + "mlp.linear_fc1.weight", 4304, W); add(p + "mlp.linear_fc1.bias", 4304); add(p + "mlp.linear_fc2.weight", W, 4304); add(p + "mlp.linear_fc2.bias", W);
  }
  add(vis + "merger.norm.weight", W); add(vis + "merger.norm.bias", W); add(vis + "merger.linear_fc1.weight", 4 * W, 4 * W); add(vis + "merger.linear_fc1.bias", 4 * W);
  add(vis + "merger.linear_fc2.weight", D, 4 * W); add(vis + "merger.linear_fc2.bias", D);
  add("mtp.fc.weight", D, 2 * D); add("mtp.pre_fc_norm_embedding.weight", D); add("mtp.pre_fc_norm_hidden.weight", D); add("mtp.norm.weight", D);
  layer("mtp.layers.0.", "full_attention");
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  writeSparseShards(dir, t, 14, "model.safetensors", "model.safetensors.index.json");
  return { config, count: t.length };
}


/**
 * FLUX.1-dev's transformer as published (black-forest-labs/FLUX.1-dev: model_index.json at the root, transformer/
 * with config.json, three BF16 diffusion_pytorch_model shards and their index; 11.9 B parameters), headers only.
 */
export function writeFluxDevHeaders(dir: string): { config: Record<string, unknown>; count: number } {
  const o = { heads: 24, headDim: 128, layers: 19, singleLayers: 38, inChannels: 64, contextDim: 4096, pooledDim: 768, guidance: true };
  const config = { ...tinyFluxConfig(o), axes_dims_rope: [16, 56, 56], _diffusers_version: "0.30.0.dev0" };
  const t = fluxShapes(o).map((x) => ({ ...x, dtype: "BF16" as const }));
  const tr = join(dir, "transformer");
  mkdirSync(tr, { recursive: true });
  writeFileSync(join(dir, "model_index.json"), JSON.stringify({ _class_name: "FluxPipeline", transformer: ["diffusers", "FluxTransformer2DModel"] }));
  writeFileSync(join(tr, "config.json"), JSON.stringify(config));
  writeSparseShards(tr, t, 3, "diffusion_pytorch_model", "diffusion_pytorch_model.safetensors.index.json");
  return { config, count: t.length };
}

/** Muse-Glimmer-30B (text decoder + vision tower, BF16) as published names and shapes, headers only, 13 shards. */
export function writeMuseGlimmer30bHeaders(dir: string): { config: Record<string, unknown>; count: number } {
  const config = museGlimmerConfig(MUSE_GLIMMER_30B);
  const t = museGlimmerShapes(MUSE_GLIMMER_30B).map(({ name, shape }) => ({ name, shape, dtype: "BF16" as const }));
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  writeSparseShards(dir, t, 13, "model", "model.safetensors.index.json");
  return { config, count: t.length };
}

/** `tensors` as `files` sparse shards `{stem}-0000i-of-0000n.safetensors` (headers only: all planning reads) + index. */
function writeSparseShards(dir: string, tensors: { name: string; dtype: "BF16" | "F32"; shape: number[] }[], files: number, stem: string, index: string): void {
  const per = Math.ceil(tensors.length / files), weightMap: Record<string, string> = {};
  for (let i = 0; i < files; i++) {
    const part = tensors.slice(i * per, (i + 1) * per);
    const name = `${stem}-${String(i + 1).padStart(5, "0")}-of-${String(files).padStart(5, "0")}.safetensors`;
    const f = planSafetensorsFile(name, part, { format: "pt" });
    writeFileSync(join(dir, name), f.header);
    truncateSync(join(dir, name), f.totalSize);
    for (const x of part) weightMap[x.name] = name;
  }
  writeFileSync(join(dir, index), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}

/** Llama-3.1-405B's tensor headers (126 layers, hidden 16384, 128 heads / 8 KV heads, 191 files), as sparse safetensors files; `bytes`: its weights. */
export function writeLlama405bHeaders(dir: string): { config: Record<string, unknown>; count: number; bytes: number } {
  const D = 16384, F = 53248, V = 128256, L = 126, H = 128, KV = 8, hd = D / H;
  const config = {
    architectures: ["LlamaForCausalLM"], model_type: "llama", hidden_size: D, intermediate_size: F, num_hidden_layers: L,
    num_attention_heads: H, num_key_value_heads: KV, vocab_size: V, max_position_embeddings: 131072, rms_norm_eps: 1e-5,
    rope_theta: 500000, rope_scaling: { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192, rope_type: "llama3" },
    hidden_act: "silu", attention_bias: false, mlp_bias: false, tie_word_embeddings: false, torch_dtype: "bfloat16",
    bos_token_id: 128000, eos_token_id: 128001,
  };
  const t: { name: string; dtype: "BF16"; shape: number[] }[] = [];
  const add = (name: string, ...shape: number[]) => t.push({ name, dtype: "BF16", shape });
  add("model.embed_tokens.weight", V, D);
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}.`;
    add(p + "input_layernorm.weight", D);
    add(p + "self_attn.q_proj.weight", H * hd, D); add(p + "self_attn.k_proj.weight", KV * hd, D); add(p + "self_attn.v_proj.weight", KV * hd, D);
    add(p + "self_attn.o_proj.weight", D, H * hd);
    add(p + "post_attention_layernorm.weight", D);
    add(p + "mlp.gate_proj.weight", F, D); add(p + "mlp.up_proj.weight", F, D); add(p + "mlp.down_proj.weight", D, F);
  }
  add("model.norm.weight", D); add("lm_head.weight", V, D);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  writeSparseShards(dir, t, 191, "model", "model.safetensors.index.json");
  return { config, count: t.length, bytes: t.reduce((s, x) => s + 2 * x.shape.reduce((a, b) => a * b, 1), 0) };
}
