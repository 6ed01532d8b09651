// LoRA configuration: PEFT's adapter_config.json (read leniently, normalised), the scale rule
// (numerics.md §9: s = alpha / r, rsLoRA s = alpha / √r), PEFT's per-module rank/alpha patterns and target_modules
// matching, and the metadata ckpt writes beside TorchTitan-layout adapters (lora_config.json / `__metadata__`).
import { CkptError } from "../errors.js";
import type { Target } from "../mapping/schema.js";

/** The PEFT fields that matter for the weights, normalised (defaults filled, fan_in_fan_out resolved). */
export interface PeftLoraConfig {
  r: number;
  lora_alpha: number;
  use_rslora: boolean;
  use_dora: boolean;
  /** A list of module-name suffixes, or one regex string (PEFT fullmatch), or "all-linear". */
  target_modules: string[] | string | null;
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  layers_to_transform: number[] | null;
  layers_pattern: string[] | string | null;
  lora_dropout: number;
  /** Always false once converted: the TorchTitan side stores nn.Linear weights [out, in]. */
  fan_in_fan_out: boolean;
  base_model_name_or_path: string | null;
  task_type: string;
}

export const LORA_CONFIG_FILE = "lora_config.json";
export const LORA_FORMAT = "ckpt-lora";

/** Per-module numbers after rank_pattern / alpha_pattern. */
export interface ModuleScale { rank: number; alpha: number; scale: number }

/** What ckpt records with a TorchTitan-layout adapter (lora_config.json beside a DCP, or safetensors `__metadata__`). */
export interface TtLoraMetadata {
  format: typeof LORA_FORMAT;
  version: 1;
  target: Target;
  rank: number;
  alpha: number;
  use_rslora: boolean;
  use_dora: boolean;
  /** Scale of the default rank/alpha; per-module values are in `modules`. */
  scale: number;
  scale_formula: "alpha / r" | "alpha / sqrt(r)";
  /** The equivalent TorchTitan LoRAConverter settings (scale alpha / rank), or null when one global pair cannot express it. */
  torchtitan: { rank: number; alpha: number; target_modules: string[]; note?: string } | null;
  /** TorchTitan module name (no `.weight`) → its rank, alpha, scale. */
  modules: Record<string, ModuleScale>;
  peft: PeftLoraConfig;
}

function bad(file: string, what: string): never {
  throw new CkptError("CONFIG", what, { file });
}

function posNumber(v: unknown, field: string, file: string, integer: boolean): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0 || (integer && !Number.isInteger(v))) {
    bad(file, `${field} must be a positive ${integer ? "integer" : "number"}, found ${JSON.stringify(v)}`);
  }
  return v;
}

function numberRecord(v: unknown, field: string, file: string, integer: boolean): Record<string, number> {
  if (v === undefined || v === null) return {};
  if (typeof v !== "object" || Array.isArray(v)) bad(file, `${field} must be an object`);
  const out: Record<string, number> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) out[k] = posNumber(x, `${field}.${k}`, file, integer);
  return out;
}

/**
 * Parses PEFT's adapter_config.json. Only LoRA is accepted; fields that change how weights are combined and that
 * ckpt cannot honour (lora bias, modules_to_save, other PEFT methods) are refused here or when tensors are read.
 */
export function parsePeftConfig(raw: unknown, file: string): { config: PeftLoraConfig; warnings: string[]; fanInFanOut: boolean } {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) bad(file, "adapter_config.json must be a JSON object");
  const c = raw as Record<string, unknown>;
  const warnings: string[] = [];
  const peftType = c.peft_type ?? "LORA";
  if (peftType !== "LORA") bad(file, `peft_type ${JSON.stringify(peftType)} is not supported (only LORA, with optional DoRA / rsLoRA)`);
  const r = posNumber(c.r ?? 8, "r", file, true);
  const alpha = posNumber(c.lora_alpha ?? 8, "lora_alpha", file, false);
  if (c.bias !== undefined && c.bias !== null && c.bias !== "none") bad(file, `bias ${JSON.stringify(c.bias)} is not supported (only "none")`);
  if (c.lora_bias === true) bad(file, "lora_bias = true (a bias on lora_B) is not supported");
  if (Array.isArray(c.modules_to_save) && c.modules_to_save.length > 0) {
    bad(file, `modules_to_save ${JSON.stringify(c.modules_to_save)}: full copies of modules are not LoRA weights and are not supported`);
  }
  let target: PeftLoraConfig["target_modules"] = null;
  if (typeof c.target_modules === "string") target = c.target_modules;
  else if (Array.isArray(c.target_modules)) target = [...new Set(c.target_modules.map(String))].sort();
  else if (c.target_modules !== undefined && c.target_modules !== null) bad(file, "target_modules must be a list or a string");
  let layers: number[] | null = null;
  if (typeof c.layers_to_transform === "number") layers = [c.layers_to_transform];
  else if (Array.isArray(c.layers_to_transform)) layers = c.layers_to_transform.map((x) => posIntOrZero(x, file));
  const fifo = c.fan_in_fan_out === true;
  if (fifo) {
    warnings.push("fan_in_fan_out = true: lora_A / lora_B are stored as [r, in] / [out, r] either way; only a base weight stored [in, out] (Conv1D) gets the transposed update, and PEFT resets the flag for nn.Linear bases");
  }
  const dropout = typeof c.lora_dropout === "number" ? c.lora_dropout : 0;
  return {
    warnings,
    fanInFanOut: fifo,
    config: {
      r,
      lora_alpha: alpha,
      use_rslora: c.use_rslora === true,
      use_dora: c.use_dora === true,
      target_modules: target,
      rank_pattern: numberRecord(c.rank_pattern, "rank_pattern", file, true),
      alpha_pattern: numberRecord(c.alpha_pattern, "alpha_pattern", file, false),
      layers_to_transform: layers,
      layers_pattern: typeof c.layers_pattern === "string" || Array.isArray(c.layers_pattern) ? (c.layers_pattern as string | string[]) : null,
      lora_dropout: dropout,
      fan_in_fan_out: false,
      base_model_name_or_path: typeof c.base_model_name_or_path === "string" ? c.base_model_name_or_path : null,
      task_type: typeof c.task_type === "string" ? c.task_type : "CAUSAL_LM",
    },
  };
}

function posIntOrZero(x: unknown, file: string): number {
  if (typeof x !== "number" || !Number.isInteger(x) || x < 0) bad(file, `layers_to_transform entries must be non-negative integers, found ${JSON.stringify(x)}`);
  return x;
}

/** numerics.md §9: s = alpha / r, or alpha / √r with rsLoRA. */
export function loraScale(alpha: number, rank: number, rslora: boolean): number {
  return rslora ? alpha / Math.sqrt(rank) : alpha / rank;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** PEFT's get_pattern_key: the first pattern key `k` with re.match(rf"(.*\.)?({k})$", module). */
export function patternKey(keys: string[], module: string): string | undefined {
  for (const k of keys) {
    let re: RegExp;
    try { re = new RegExp(`^(.*\\.)?(${k})$`); } catch { re = new RegExp(`^(.*\\.)?(${escapeRe(k)})$`); }
    if (re.test(module)) return k;
  }
  return undefined;
}

/** Rank and alpha of one module (`module` is the HF module path, e.g. model.layers.0.self_attn.q_proj). */
export function moduleRankAlpha(c: PeftLoraConfig, module: string): { rank: number; alpha: number } {
  const rk = patternKey(Object.keys(c.rank_pattern), module);
  const ak = patternKey(Object.keys(c.alpha_pattern), module);
  return { rank: rk !== undefined ? c.rank_pattern[rk]! : c.r, alpha: ak !== undefined ? c.alpha_pattern[ak]! : c.lora_alpha };
}

/** PEFT's check_target_module_exists for a HF module path (target_modules + layers_to_transform). */
export function isTargetModule(c: PeftLoraConfig, module: string): boolean {
  const t = c.target_modules;
  let hit: boolean;
  if (t === null) hit = true; // unknown: accept whatever the adapter holds
  else if (t === "all-linear") hit = !/(^|\.)lm_head$/.test(module);
  else if (typeof t === "string") {
    try { hit = new RegExp(`^(?:${t})$`).test(module); } catch { hit = module === t; }
  } else hit = t.some((x) => module === x || module.endsWith(`.${x}`));
  if (!hit || !c.layers_to_transform) return hit;
  const patterns = c.layers_pattern === null ? ["layers", "h", "blocks", "layer"] : typeof c.layers_pattern === "string" ? [c.layers_pattern] : c.layers_pattern;
  for (const p of patterns) {
    const m = new RegExp(`.*\\.${escapeRe(p)}\\.(\\d+)\\.`).exec(module);
    if (m) return c.layers_to_transform.includes(Number(m[1]));
  }
  return false;
}

/** Keys sorted recursively (stable JSON for files that must round-trip byte for byte). */
export function sortedJson(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortedJson);
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort()) out[k] = sortedJson((v as Record<string, unknown>)[k]);
    return out;
  }
  return v;
}

export function stableStringify(v: unknown, indent = 2): string {
  return JSON.stringify(sortedJson(v), null, indent) + "\n";
}

/** Parses ckpt's TorchTitan-side LoRA metadata; undefined when `text` is not ckpt's format. */
export function parseTtLoraMetadata(text: string, file: string): TtLoraMetadata {
  let v: unknown;
  try { v = JSON.parse(text); } catch (e) { bad(file, `invalid JSON: ${(e as Error).message}`); }
  const m = v as Partial<TtLoraMetadata>;
  if (!m || typeof m !== "object" || m.format !== LORA_FORMAT) bad(file, `not a ${LORA_FORMAT} metadata file`);
  if (!m.peft || typeof m.modules !== "object") bad(file, "lora metadata lacks peft / modules");
  return m as TtLoraMetadata;
}

/** adapter_config.json as PEFT writes it (sorted keys, indent 2) for a normalised config. */
export function peftAdapterConfigJson(c: PeftLoraConfig): string {
  const cfg: Record<string, unknown> = {
    alpha_pattern: c.alpha_pattern,
    auto_mapping: null,
    base_model_name_or_path: c.base_model_name_or_path,
    bias: "none",
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: c.layers_pattern,
    layers_to_transform: c.layers_to_transform,
    lora_alpha: c.lora_alpha,
    lora_dropout: c.lora_dropout,
    modules_to_save: null,
    peft_type: "LORA",
    r: c.r,
    rank_pattern: c.rank_pattern,
    revision: null,
    target_modules: c.target_modules,
    task_type: c.task_type,
    use_dora: c.use_dora,
    use_rslora: c.use_rslora,
  };
  return stableStringify(cfg);
}
