// The header corpus (test/corpus-headers/<model>.json: a published checkpoint's config.json, file count, and where
// each fact came from) expanded into the checkpoint's tensor list — names, dtypes and shapes as its publisher writes
// them, derived from the config by the rules each entry's `derived` states — and written as sparse header-only
// safetensors files with an index (planning reads headers only). The file split follows the tensor order over the
// published file count: the real split assigns whole layers the same way, and planning does not depend on it.
import { mkdirSync, readdirSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { planSafetensorsFile } from "../../src/formats/safetensors/writer.js";

export interface CorpusEntry {
  model: string;
  family: "llama" | "qwen3_moe" | "deepseek_v3" | "kimi_k2" | "kimi_k25" | "gpt_oss" | "qwen3_5_moe";
  files: number;
  sources: { what: string; where: string }[];
  derived: string;
  not_established?: string;
  config: Record<string, unknown>;
}

type DT = "BF16" | "F32" | "F8_E4M3" | "U8" | "I32" | "I64";
export interface HeaderTensor { name: string; dtype: DT; shape: number[] }

const CORPUS_DIR = join(process.cwd(), "test", "corpus-headers");

export function corpusEntries(): { id: string; entry: CorpusEntry }[] {
  return readdirSync(CORPUS_DIR).filter((f) => f.endsWith(".json")).sort()
    .map((f) => ({ id: f.slice(0, -5), entry: JSON.parse(readFileSync(join(CORPUS_DIR, f), "utf8")) as CorpusEntry }));
}

type Cfg = Record<string, unknown>;
const num = (c: Record<string, unknown>, k: string) => c[k] as number;

function llama(c: Cfg, t: HeaderTensor[]): void {
  const D = num(c, "hidden_size"), F = num(c, "intermediate_size"), H = num(c, "num_attention_heads"), KV = num(c, "num_key_value_heads");
  const hd = (c.head_dim as number | undefined) ?? D / H, V = num(c, "vocab_size");
  const add = (name: string, ...shape: number[]) => t.push({ name, dtype: "BF16", shape });
  add("model.embed_tokens.weight", V, D);
  for (let L = 0; L < num(c, "num_hidden_layers"); L++) {
    const p = `model.layers.${L}.`;
    add(p + "input_layernorm.weight", D); add(p + "post_attention_layernorm.weight", D);
    add(p + "self_attn.q_proj.weight", H * hd, D); add(p + "self_attn.k_proj.weight", KV * hd, D); add(p + "self_attn.v_proj.weight", KV * hd, D); add(p + "self_attn.o_proj.weight", D, H * hd);
    if (c.model_type === "qwen3_moe") {
      add(p + "self_attn.q_norm.weight", hd); add(p + "self_attn.k_norm.weight", hd);
      const E = num(c, "num_experts"), Fm = num(c, "moe_intermediate_size");
      add(p + "mlp.gate.weight", E, D);
      for (let e = 0; e < E; e++) { add(`${p}mlp.experts.${e}.gate_proj.weight`, Fm, D); add(`${p}mlp.experts.${e}.up_proj.weight`, Fm, D); add(`${p}mlp.experts.${e}.down_proj.weight`, D, Fm); }
    } else {
      add(p + "mlp.gate_proj.weight", F, D); add(p + "mlp.up_proj.weight", F, D); add(p + "mlp.down_proj.weight", D, F);
    }
  }
  add("model.norm.weight", D);
  if (c.tie_word_embeddings !== true) add("lm_head.weight", V, D);
}

/** DeepSeek-V3 (FP8 block-scaled, MTP layer) and Kimi K2 (BF16 with INT4 compressed-tensors routed experts). */
function deepseek(c: Cfg, t: HeaderTensor[], prefix = ""): void {
  const fp8 = (c.quantization_config as { quant_method?: string } | undefined)?.quant_method === "fp8";
  const int4 = (c.quantization_config as { quant_method?: string } | undefined)?.quant_method === "compressed-tensors";
  const D = num(c, "hidden_size"), H = num(c, "num_attention_heads"), V = num(c, "vocab_size"), E = num(c, "n_routed_experts"), Fm = num(c, "moe_intermediate_size");
  const nope = num(c, "qk_nope_head_dim"), rope = num(c, "qk_rope_head_dim"), vh = num(c, "v_head_dim"), ql = num(c, "q_lora_rank"), kvl = num(c, "kv_lora_rank");
  const n = num(c, "num_hidden_layers"), mtp = (c.num_nextn_predict_layers as number | undefined) ?? 0;
  const add = (name: string, dtype: DT, ...shape: number[]) => t.push({ name: prefix + name, dtype, shape });
  const lin = (name: string, out: number, inp: number, expert = false) => {
    if (int4 && expert) {
      const mod = name.slice(0, -".weight".length);
      add(mod + ".weight_packed", "I32", out, Math.ceil(inp / 8)); add(mod + ".weight_scale", "BF16", out, Math.ceil(inp / 32)); add(mod + ".weight_shape", "I64", 2);
      return;
    }
    add(name, fp8 ? "F8_E4M3" : "BF16", out, inp);
    if (fp8) add(name + "_scale_inv", "F32", Math.ceil(out / 128), Math.ceil(inp / 128));
  };
  add("model.embed_tokens.weight", "BF16", V, D);
  for (let L = 0; L < n + mtp; L++) {
    const p = `model.layers.${L}.`;
    if (L >= n) {
      add(p + "embed_tokens.weight", "BF16", V, D); add(p + "enorm.weight", "BF16", D); add(p + "hnorm.weight", "BF16", D);
      lin(p + "eh_proj.weight", D, 2 * D); add(p + "shared_head.norm.weight", "BF16", D); add(p + "shared_head.head.weight", "BF16", V, D);
    }
    add(p + "input_layernorm.weight", "BF16", D); add(p + "post_attention_layernorm.weight", "BF16", D);
    lin(p + "self_attn.q_a_proj.weight", ql, D); add(p + "self_attn.q_a_layernorm.weight", "BF16", ql); lin(p + "self_attn.q_b_proj.weight", H * (nope + rope), ql);
    lin(p + "self_attn.kv_a_proj_with_mqa.weight", kvl + rope, D); add(p + "self_attn.kv_a_layernorm.weight", "BF16", kvl);
    lin(p + "self_attn.kv_b_proj.weight", H * (nope + vh), kvl); lin(p + "self_attn.o_proj.weight", D, H * vh);
    if (L < num(c, "first_k_dense_replace")) {
      const F = num(c, "intermediate_size");
      lin(p + "mlp.gate_proj.weight", F, D); lin(p + "mlp.up_proj.weight", F, D); lin(p + "mlp.down_proj.weight", D, F);
      continue;
    }
    add(p + "mlp.gate.weight", "BF16", E, D); add(p + "mlp.gate.e_score_correction_bias", "F32", E);
    for (let e = 0; e < E; e++) { lin(`${p}mlp.experts.${e}.gate_proj.weight`, Fm, D, true); lin(`${p}mlp.experts.${e}.up_proj.weight`, Fm, D, true); lin(`${p}mlp.experts.${e}.down_proj.weight`, D, Fm, true); }
    const S = Fm * num(c, "n_shared_experts");
    lin(p + "mlp.shared_experts.gate_proj.weight", S, D); lin(p + "mlp.shared_experts.up_proj.weight", S, D); lin(p + "mlp.shared_experts.down_proj.weight", D, S);
  }
  add("model.norm.weight", "BF16", D);
  add("lm_head.weight", "BF16", V, D);
}

function gptOss(c: Cfg, t: HeaderTensor[]): void {
  const D = num(c, "hidden_size"), F = num(c, "intermediate_size"), H = num(c, "num_attention_heads"), KV = num(c, "num_key_value_heads"), hd = num(c, "head_dim");
  const E = num(c, "num_local_experts"), V = num(c, "vocab_size"), G = Math.ceil(D / 32), GF = Math.ceil(F / 32);
  const add = (name: string, dtype: DT, ...shape: number[]) => t.push({ name, dtype, shape });
  add("model.embed_tokens.weight", "BF16", V, D);
  for (let L = 0; L < num(c, "num_hidden_layers"); L++) {
    const p = `model.layers.${L}.`;
    add(p + "input_layernorm.weight", "BF16", D); add(p + "post_attention_layernorm.weight", "BF16", D);
    for (const [n, rows] of [["q_proj", H * hd], ["k_proj", KV * hd], ["v_proj", KV * hd]] as const) { add(`${p}self_attn.${n}.weight`, "BF16", rows, D); add(`${p}self_attn.${n}.bias`, "BF16", rows); }
    add(p + "self_attn.o_proj.weight", "BF16", D, H * hd); add(p + "self_attn.o_proj.bias", "BF16", D); add(p + "self_attn.sinks", "BF16", H);
    add(p + "mlp.router.weight", "BF16", E, D); add(p + "mlp.router.bias", "BF16", E);
    add(p + "mlp.experts.gate_up_proj_blocks", "U8", E, 2 * F, G, 16); add(p + "mlp.experts.gate_up_proj_scales", "U8", E, 2 * F, G); add(p + "mlp.experts.gate_up_proj_bias", "BF16", E, 2 * F);
    add(p + "mlp.experts.down_proj_blocks", "U8", E, D, GF, 16); add(p + "mlp.experts.down_proj_scales", "U8", E, D, GF); add(p + "mlp.experts.down_proj_bias", "BF16", E, D);
  }
  add("model.norm.weight", "BF16", D);
  add("lm_head.weight", "BF16", V, D);
}

/** Qwen3.5/3.6 MoE VLM as published: fused routed experts [E, 2F, D] / [E, D, F], vision tower, MTP head per expert. */
function qwen35(c: Cfg, t: HeaderTensor[]): void {
  const x = c.text_config as Record<string, unknown>, v = c.vision_config as Record<string, unknown>;
  const D = num(x, "hidden_size"), F = num(x, "moe_intermediate_size"), SF = num(x, "shared_expert_intermediate_size"), E = num(x, "num_experts"), V = num(x, "vocab_size");
  const H = num(x, "num_attention_heads"), KV = num(x, "num_key_value_heads"), hd = num(x, "head_dim");
  const kd = num(x, "linear_num_key_heads") * num(x, "linear_key_head_dim"), vh = num(x, "linear_num_value_heads"), vd = vh * num(x, "linear_value_head_dim");
  const add = (name: string, ...shape: number[]) => t.push({ name, dtype: "BF16", shape });
  const layer = (p: string, type: string, fused: boolean) => {
    if (type === "full_attention") {
      add(p + "self_attn.q_proj.weight", 2 * H * hd, D); add(p + "self_attn.k_proj.weight", KV * hd, D); add(p + "self_attn.v_proj.weight", KV * hd, D);
      add(p + "self_attn.o_proj.weight", D, H * hd); add(p + "self_attn.q_norm.weight", hd); add(p + "self_attn.k_norm.weight", hd);
    } else {
      add(p + "linear_attn.in_proj_qkv.weight", 2 * kd + vd, D); add(p + "linear_attn.in_proj_z.weight", vd, D); add(p + "linear_attn.in_proj_a.weight", vh, D);
      add(p + "linear_attn.in_proj_b.weight", vh, D); add(p + "linear_attn.conv1d.weight", 2 * kd + vd, 1, num(x, "linear_conv_kernel_dim")); add(p + "linear_attn.A_log", vh);
      add(p + "linear_attn.dt_bias", vh); add(p + "linear_attn.norm.weight", num(x, "linear_value_head_dim")); add(p + "linear_attn.out_proj.weight", D, vd);
    }
    add(p + "mlp.gate.weight", E, D); add(p + "mlp.shared_expert_gate.weight", 1, D);
    add(p + "mlp.shared_expert.gate_proj.weight", SF, D); add(p + "mlp.shared_expert.up_proj.weight", SF, D); add(p + "mlp.shared_expert.down_proj.weight", D, SF);
    if (fused) { add(p + "mlp.experts.gate_up_proj", E, 2 * F, D); add(p + "mlp.experts.down_proj", E, D, F); }
    else for (let e = 0; e < E; e++) { add(`${p}mlp.experts.${e}.gate_proj.weight`, F, D); add(`${p}mlp.experts.${e}.up_proj.weight`, F, D); add(`${p}mlp.experts.${e}.down_proj.weight`, D, F); }
    add(p + "input_layernorm.weight", D); add(p + "post_attention_layernorm.weight", D);
  };
  const lm = "model.language_model.", types = x.layer_types as string[];
  add(lm + "embed_tokens.weight", V, D); add(lm + "norm.weight", D); add("lm_head.weight", V, D);
  for (let L = 0; L < num(x, "num_hidden_layers"); L++) layer(`${lm}layers.${L}.`, types[L]!, true);
  const W = num(v, "hidden_size"), VF = num(v, "intermediate_size"), P = num(v, "patch_size"), M = W * num(v, "spatial_merge_size") ** 2, vis = "model.visual.";
  add(vis + "patch_embed.proj.weight", W, num(v, "in_channels"), num(v, "temporal_patch_size"), P, P); add(vis + "patch_embed.proj.bias", W); add(vis + "pos_embed.weight", num(v, "num_position_embeddings"), W);
  for (let b = 0; b < num(v, "depth"); b++) {
    const p = `${vis}blocks.${b}.`;
    for (const n of ["norm1", "norm2"]) { add(p + n + ".weight", W); add(p + n + ".bias", W); }
    add(p + "attn.qkv.weight", 3 * W, W); add(p + "attn.qkv.bias", 3 * W); add(p + "attn.proj.weight", W, W); add(p + "attn.proj.bias", W);
    add(p + "mlp.linear_fc1.weight", VF, W); add(p + "mlp.linear_fc1.bias", VF); add(p + "mlp.linear_fc2.weight", W, VF); add(p + "mlp.linear_fc2.bias", W);
  }
  add(vis + "merger.norm.weight", W); add(vis + "merger.norm.bias", W); add(vis + "merger.linear_fc1.weight", M, M); add(vis + "merger.linear_fc1.bias", M);
  add(vis + "merger.linear_fc2.weight", num(v, "out_hidden_size"), M); add(vis + "merger.linear_fc2.bias", num(v, "out_hidden_size"));
  add("mtp.fc.weight", D, 2 * D); add("mtp.pre_fc_norm_embedding.weight", D); add("mtp.pre_fc_norm_hidden.weight", D); add("mtp.norm.weight", D);
  layer("mtp.layers.0.", "full_attention", false);
}

/** The entry's tensor list, as its publisher names, types and shapes them. */
export function corpusTensors(entry: CorpusEntry): HeaderTensor[] {
  const t: HeaderTensor[] = [];
  const c = entry.config;
  switch (entry.family) {
    case "llama": case "qwen3_moe": llama(c, t); break;
    case "deepseek_v3": case "kimi_k2": deepseek(c, t); break;
    case "kimi_k25": {
      deepseek(c.text_config as Cfg, t, "language_model.");
      // a representative part of the MoonViT tower and projector (skipped by prefix with --text-only)
      t.push({ name: "vision_tower.patch_embed.proj.weight", dtype: "BF16", shape: [1152, 3, 14, 14] }, { name: "vision_tower.encoder.blocks.0.wqkv.weight", dtype: "BF16", shape: [3456, 1152] },
        { name: "mm_projector.proj.0.weight", dtype: "BF16", shape: [4608, 4608] }, { name: "mm_projector.proj.2.weight", dtype: "BF16", shape: [7168, 4608] });
      break;
    }
    case "gpt_oss": gptOss(c, t); break;
    case "qwen3_5_moe": qwen35(c, t); break;
  }
  return t;
}

/** Writes the entry as sparse header-only safetensors files (the published file count) with an index and config.json. */
export function writeCorpusHeaders(dir: string, entry: CorpusEntry): { count: number; params: number } {
  const t = corpusTensors(entry);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "config.json"), JSON.stringify(entry.config));
  writeSparseShards(dir, t, Math.min(entry.files, t.length), "model", "model.safetensors.index.json");
  return { count: t.length, params: t.reduce((a, x) => a + x.shape.reduce((p, q) => p * q, 1), 0) };
}

/** `tensors` as `files` sparse shards `{stem}-0000i-of-0000n.safetensors` (headers only: all planning reads) + index. */
export function writeSparseShards(dir: string, tensors: HeaderTensor[], files: number, stem: string, index: string): void {
  const per = Math.ceil(tensors.length / files), weightMap: Record<string, string> = {};
  for (let i = 0; i < files; i++) {
    const part = tensors.slice(i * per, (i + 1) * per);
    if (!part.length) break;
    const name = `${stem}-${String(i + 1).padStart(5, "0")}-of-${String(files).padStart(5, "0")}.safetensors`;
    const f = planSafetensorsFile(name, part, { format: "pt" });
    writeFileSync(join(dir, name), f.header);
    truncateSync(join(dir, name), f.totalSize);
    for (const x of part) weightMap[x.name] = name;
  }
  writeFileSync(join(dir, index), JSON.stringify({ metadata: {}, weight_map: weightMap }));
}
