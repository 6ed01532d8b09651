// The config.json an HF output carries: the mapping's `hf_config` rewrites (data: a Kimi config becomes one
// transformers' DeepseekV3ForCausalLM loads, a multimodal wrapper's becomes its text-only CausalLM's), and the
// quantization_config of a source whose quantized tensors were written as values, dropped. Pure functions of the
// parsed config; finalize/ reads and writes the file.
import { compilePattern, matchPattern } from "./patterns.js";
import { valueOp, type HfConfigRewrite, type Mapping } from "./schema.js";

export interface HfConfigContext {
  /** --requantize wrote the quantized tensors packed. */
  requantized: boolean;
  /** The plan writes a wrapper's checkpoint as its text-only model (plan.hfConfig). */
  textOnly: boolean;
}

type Json = Record<string, unknown>;

function fieldAt(cfg: Json, path: string): unknown {
  let v: unknown = cfg;
  for (const k of path.split(".")) v = v && typeof v === "object" && !Array.isArray(v) ? (v as Json)[k] : undefined;
  return v;
}

function applies(r: HfConfigRewrite, cfg: Json, ctx: HfConfigContext): boolean {
  if (r.tensors !== undefined && (r.tensors === "requantized") !== ctx.requantized) return false;
  if (r.text_only && !ctx.textOnly) return false;
  return Object.entries(r.when ?? {}).every(([path, values]) => values.some((v) => JSON.stringify(v) === JSON.stringify(fieldAt(cfg, path))));
}

/** `cfg` through the mapping's `hf_config` rewrites (a new object; `cfg` is not modified). */
export function rewriteHfConfig(cfg: Json, mapping: Mapping, ctx: HfConfigContext): Json {
  let out = cfg;
  for (const r of mapping.hf_config ?? []) {
    if (!applies(r, out, ctx)) continue;
    out = { ...out };
    for (const [field, table] of Object.entries(r.map ?? {})) {
      const v = out[field];
      if (typeof v === "string") out[field] = table[v] ?? v;
      else if (Array.isArray(v)) out[field] = v.map((x) => (typeof x === "string" ? table[x] ?? x : x));
    }
    if (r.flatten) {
      const nested = out[r.flatten.field];
      if (nested && typeof nested === "object" && !Array.isArray(nested)) {
        const flat: Json = { ...(nested as Json) };
        for (const k of r.flatten.inherit ?? []) if (flat[k] === undefined && out[k] !== undefined) flat[k] = out[k];
        for (const k of r.flatten.carry ?? []) if (out[k] !== undefined) flat[k] = out[k];
        out = flat;
      }
    }
    for (const k of r.delete ?? []) delete out[k];
    for (const [k, v] of Object.entries(r.set ?? {})) out[k] = v;
  }
  return out;
}

/**
 * The wrapper architectures whose text-only model `hf_config` knows (its `text_only` rules' `map.architectures`): a
 * --text-only conversion of any other wrapper has no config.json ckpt could write.
 */
export function textOnlyArchitectures(mapping: Mapping): Record<string, string> {
  return Object.assign({}, ...(mapping.hf_config ?? []).filter((r) => r.text_only).map((r) => r.map?.architectures ?? {}));
}

/**
 * Whether an HF tensor name holds quantized data by the mapping's own rules: the packed tensors a value op decodes
 * (its `hf` pattern) with their companions (scales, shapes), and the block scales of `dequant`.
 */
export function quantizedTensorTest(mapping: Mapping): ((name: string) => boolean) | undefined {
  const patterns: string[] = [];
  for (const r of mapping.tensors) {
    const m = valueOp(r, "mxfp4"), q = valueOp(r, "int4");
    if (!r.hf || (!m && !q)) continue;
    patterns.push(r.hf, ...(m ? [m.scales] : []), ...(q ? [q.scale, q.shape] : []));
  }
  const suffix = mapping.dequant?.scale_suffix;
  if (!patterns.length && !suffix) return undefined;
  const compiled = patterns.map(compilePattern);
  return (n) => (suffix !== undefined && n.endsWith(suffix)) || compiled.some((p) => matchPattern(p, n) !== undefined);
}

/**
 * The config of an HF output whose quantized tensors were all written as values (FP8 weights dequantized, MXFP4 or
 * INT4 experts decoded): its `quantization_config` is dropped, or transformers would look for packed tensors that
 * are not there, or quantize the values again. Kept when the output still holds quantized tensors, and for a mapping
 * that decodes nothing (the config then describes no tensor layout ckpt changed).
 */
export function withoutDecodedQuantization(cfg: Json, mapping: Mapping, written: string[]): Json {
  const quantized = quantizedTensorTest(mapping);
  if (cfg.quantization_config === undefined || !quantized || written.some(quantized)) return cfg;
  const out = { ...cfg };
  delete out.quantization_config;
  return out;
}
