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
