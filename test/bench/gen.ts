// Synthetic HF Llama checkpoints with real shapes, written streaming (never more than one 64 MiB block in memory).
// Values are random bf16 with the top exponent bit cleared (|x| < 2, no inf/NaN), so every dtype path is exercised
// on realistic bit patterns. Used by the benchmarks and by tests that need a model big enough to take seconds.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { randomFillSync } from "node:crypto";
import { join } from "node:path";
import type { CastableDType } from "../../src/dtypes.js";
import { elementSize, numelOf } from "../../src/dtypes.js";
import { tinyLlamaConfig } from "../../src/fixtures/tiny-llama.js";
import { planShardedSafetensors, serializeIndex, type TensorSpec } from "../../src/formats/safetensors/writer.js";

export interface LlamaShape {
  name: string;
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  ffn: number;
  vocab: number;
  tied: boolean;
  dtype: CastableDType;
  /** safetensors shard limit (transformers' default 5 GB). */
  maxShardBytes?: number;
}

export const LLAMA_3_2_1B: LlamaShape = { name: "llama-3.2-1b", hidden: 2048, layers: 16, heads: 32, kvHeads: 8, ffn: 8192, vocab: 128256, tied: true, dtype: "BF16" };
export const LLAMA_3_1_8B: LlamaShape = { name: "llama-3.1-8b", hidden: 4096, layers: 32, heads: 32, kvHeads: 8, ffn: 14336, vocab: 128256, tied: false, dtype: "BF16" };

export function llamaSpecs(s: LlamaShape): TensorSpec[] {
  const hd = s.hidden / s.heads;
  const t = (name: string, shape: number[]): TensorSpec => ({ name, dtype: s.dtype, shape });
  const out: TensorSpec[] = [t("model.embed_tokens.weight", [s.vocab, s.hidden])];
  for (let L = 0; L < s.layers; L++) {
    const p = `model.layers.${L}.`;
    out.push(
      t(p + "self_attn.q_proj.weight", [s.heads * hd, s.hidden]),
      t(p + "self_attn.k_proj.weight", [s.kvHeads * hd, s.hidden]),
      t(p + "self_attn.v_proj.weight", [s.kvHeads * hd, s.hidden]),
      t(p + "self_attn.o_proj.weight", [s.hidden, s.heads * hd]),
      t(p + "mlp.gate_proj.weight", [s.ffn, s.hidden]),
      t(p + "mlp.up_proj.weight", [s.ffn, s.hidden]),
      t(p + "mlp.down_proj.weight", [s.hidden, s.ffn]),
      t(p + "input_layernorm.weight", [s.hidden]),
      t(p + "post_attention_layernorm.weight", [s.hidden]),
    );
  }
  out.push(t("model.norm.weight", [s.hidden]));
  if (!s.tied) out.push(t("lm_head.weight", [s.vocab, s.hidden]));
  return out;
}

export function modelBytes(s: LlamaShape): number {
  return llamaSpecs(s).reduce((a, t) => a + numelOf(t.shape) * elementSize(t.dtype), 0);
}

const BLOCK = 64 * 1024 * 1024;

/** Random finite values: bf16/f16 top exponent bit cleared; f32 likewise (bit 30). */
function fillRandom(buf: Buffer, dtype: CastableDType): void {
  randomFillSync(buf);
  if (dtype === "BF16" || dtype === "F16") {
    const u = new Uint16Array(buf.buffer, buf.byteOffset, buf.length >>> 1);
    for (let i = 0; i < u.length; i++) u[i] = u[i]! & 0xbfff;
  } else if (dtype === "F32") {
    const u = new Uint32Array(buf.buffer, buf.byteOffset, buf.length >>> 2);
    for (let i = 0; i < u.length; i++) u[i] = u[i]! & 0xbfffffff;
  }
}

export interface GeneratedModel {
  dir: string;
  files: string[];
  bytes: number;
  reused: boolean;
}

/** Writes (or reuses, when a complete one is there) an HF folder for `shape` under `dir`. */
export function writeSyntheticLlama(dir: string, shape: LlamaShape, opts: { log?: (s: string) => void } = {}): GeneratedModel {
  const marker = join(dir, ".ckpt-bench-complete");
  const specs = llamaSpecs(shape);
  const { files, index } = planShardedSafetensors(specs, { maxShardBytes: shape.maxShardBytes ?? 5e9, metadata: { format: "pt" } });
  const names = files.map((f) => f.fileName);
  const bytes = files.reduce((s, f) => s + f.totalSize, 0);
  const want = JSON.stringify(shape);
  if (existsSync(marker) && readFileSync(marker, "utf8") === want) return { dir, files: names, bytes, reused: true };
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const hd = shape.hidden / shape.heads;
  const config = tinyLlamaConfig({ hidden: shape.hidden, layers: shape.layers, heads: shape.heads, kvHeads: shape.kvHeads, headDim: hd, ffn: shape.ffn, vocab: shape.vocab, tied: shape.tied, dtype: shape.dtype, explicitHeadDim: false });
  config.max_position_embeddings = 131072;
  writeFileSync(join(dir, "config.json"), JSON.stringify(config, null, 2) + "\n");
  writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ bos_token_id: 128000, eos_token_id: 128001 }, null, 2) + "\n");
  const block = Buffer.allocUnsafe(BLOCK);
  for (const f of files) {
    opts.log?.(`generating ${join(dir, f.fileName)} (${(f.totalSize / 1e9).toFixed(2)} GB)`);
    const fd = openSync(join(dir, f.fileName), "w");
    try {
      writeSync(fd, f.header, 0, f.header.length, 0);
      let pos = f.dataStart;
      for (const t of f.tensors) {
        let left = t.byteLength;
        while (left > 0) {
          const n = Math.min(left, BLOCK);
          const b = block.subarray(0, n);
          fillRandom(b, shape.dtype);
          let done = 0;
          while (done < n) done += writeSync(fd, b, done, n - done, pos + done);
          pos += n;
          left -= n;
        }
      }
    } finally {
      closeSync(fd);
    }
  }
  if (index) writeFileSync(join(dir, "model.safetensors.index.json"), serializeIndex(index));
  writeFileSync(marker, want);
  return { dir, files: names, bytes, reused: false };
}
