// Real-sized checkpoints as headers only (sparse safetensors files: planning reads nothing else), for dry-run tests
// and the planning benchmark (npm run bench -- --plan).
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fluxShapes, tinyFluxConfig } from "../../src/fixtures/tiny-flux.js";
import { MUSE_GLIMMER_30B, museGlimmerConfig, museGlimmerShapes } from "../../src/fixtures/tiny-muse-glimmer.js";
import { corpusEntries, writeCorpusHeaders, writeSparseShards } from "./corpus-headers.js";

/**
 * Qwen3.5-35B-A3B's tensor headers as published (fused routed experts, vision tower, MTP layer), as sparse
 * safetensors files: the header corpus entry test/corpus-headers/qwen3.5-35b-a3b.json.
 */
export function write35bA3bHeaders(dir: string): { config: Record<string, unknown>; count: number } {
  const { entry } = corpusEntries().find((x) => x.id === "qwen3.5-35b-a3b")!;
  return { config: entry.config, count: writeCorpusHeaders(dir, entry).count };
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
