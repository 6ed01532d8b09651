// The shape of mappings/*.json, and a validator with errors that name the file and the field.
// mappings/mapping.schema.json documents the same structure for editors; this validator is what runs.
import { CkptError } from "../errors.js";
import { isCastable, isDType, type CastableDType, type DType } from "../dtypes.js";

export const TARGETS = ["torchtitan@main", "torchtitan@0.2"] as const;
export type Target = (typeof TARGETS)[number];
export const DEFAULT_TARGET: Target = "torchtitan@main";

/** TP placement of the parameter (sharding.md §3): colwise/embedding Shard(0), rowwise Shard(1), norms Replicate. */
export type TpPlacement = "shard0" | "shard1" | "replicate";

/**
 * How an HF tensor's values become the TorchTitan tensor, beyond renaming: one op of a closed vocabulary, each
 * validated by its entry in TRANSFORMS. `shape` of a rule is always the HF tensor's logical (decoded) shape.
 * - `mxfp4`: the rule's `hf` names packed `*_blocks` (U8 [..., G, 16], two E2M1 values per byte, low nibble first)
 *   and `scales` the HF pattern of their E8M0 scales (U8 [..., G]); the value tensor is [..., G·32] (issue 14).
 * - `transpose`: the last two dims swap (HF's bf16 gpt-oss experts [E, D, 2F] → TorchTitan [E, 2F, D]).
 * - `int4`: the rule's `hf` names compressed-tensors `pack-quantized` `*.weight_packed` (I32 [out, ceil(in/8)], 8
 *   values per word, least significant nibble first, q = nibble − 8), `scale` the pattern of its BF16
 *   `weight_scale` [out, ceil(in/group)] and `shape` of its `weight_shape` (consumed); w = q · scale (issue 16). The
 *   group size and symmetry come from config.json's `quantization_config`, which must say so.
 */
export type Transform = { op: "mxfp4"; scales: string } | { op: "transpose" } | { op: "int4"; scale: string; shape: string };

const TRANSFORMS: Record<Transform["op"], (t: Record<string, unknown>) => string | undefined> = {
  mxfp4: (t) => (isStr(t.scales) && Object.keys(t).every((k) => k === "op" || k === "scales") ? undefined : "mxfp4 needs exactly `scales` (the HF pattern of the E8M0 scales)"),
  transpose: (t) => (Object.keys(t).every((k) => k === "op") ? undefined : "transpose takes no fields"),
  int4: (t) => (isStr(t.scale) && isStr(t.shape) && Object.keys(t).every((k) => k === "op" || k === "scale" || k === "shape") ? undefined : "int4 needs exactly `scale` and `shape` (the HF patterns of weight_scale and weight_shape)"),
};

export interface TensorRule {
  /** HF name pattern; `{L}` = layer index, `{E}` = expert index (stacked into a new dim 0 on the TorchTitan side). */
  hf?: string;
  /** TorchTitan name pattern, the same for every target or one per target. A target absent from the object means the tensor does not exist there. */
  tt?: string | Partial<Record<Target, string>>;
  /** Expected shape as expressions over `dims` (the HF per-tensor shape; stacked outputs prepend the expert count). */
  shape?: string[];
  /** q/k RoPE row permutation with this many heads (a dims name); head size is dims.head_dim. */
  rope?: { heads: string; head_dim?: string };
  tp?: TpPlacement;
  /** Targets whose checkpoints store this tensor as one full chunk whatever the mesh (sharding.md §3 fused-QKV caveat). */
  full_chunk?: Target[];
  /** Source tensor to ignore (never read). */
  drop?: boolean;
  /** Present only in some layers (e.g. MoE vs dense): absence is not an error. */
  optional?: boolean;
  /** A TorchTitan tensor with no HF source, synthesised as zeros of this shape/dtype whenever `with` exists in the output. */
  synth?: { zeros: string[]; dtype: DType; with: string; omit_option?: string };
  /** Stacked expert tensors: which dims name holds the expert count. */
  experts?: string;
  /** Output dtype whatever --dtype asks (e.g. float32 buffers such as the MoE expert bias). */
  dtype?: CastableDType;
  /** Value transform on the way HF → TorchTitan (and back). */
  transform?: Transform;
  /** Alternative HF layouts of one tensor share a group name: per layer exactly one of them must be present. */
  one_of?: string;
}

export interface Mapping {
  architecture: string;
  description?: string;
  match: { architectures?: string[]; model_type?: string[] };
  /** Named dimensions: each is a list of alternatives, each a config field or `a / b` of two fields. */
  dims: Record<string, string[]>;
  tied?: { flag: string; hf: string; from: string };
  /** FP8 block quantization: a weight `X` is dequantized when `X` + suffix exists (torchtitan-layout.md §7.1). */
  dequant?: { scale_suffix: string; block: number };
  targets: Target[];
  tensors: TensorRule[];
  /**
   * HF layer indices at or above this dims value have no target at some versions (e.g. MTP layers). With `tt_prefix`
   * and the user's `option` (`--mtp`), such a layer L maps at that target to `{tt_prefix}.{L − from}.` in place of
   * `layers.{L}.` (TorchTitan deepseek_v3 `mtp_layers`); rules without a target name there are reported as shared.
   */
  extra_layers?: { from: string; skip_for?: Target[]; note?: string; tt_prefix?: Partial<Record<Target, string>>; option?: "mtp"; shared_note?: string };
  /** HF name prefixes read as others before matching (first match wins): `language_model.model.` → `model.`. */
  prefixes?: { from: string; to: string }[];
  /** A nested config (e.g. `text_config` of a multimodal wrapper) whose fields override the top level for dims and checks. */
  nested_config?: string;
  /** HF tensors (by prefix) the target cannot take: refused with `why`, or skipped and reported with the user's `option`. */
  towers?: { prefixes: string[]; why: string; option: "text-only" }[];
}

function fail(file: string, path: string, what: string): never {
  throw new CkptError("MAPPING", `${path}: ${what}`, { file });
}

const isStr = (v: unknown): v is string => typeof v === "string" && v.length > 0;
const isStrArr = (v: unknown): v is string[] => Array.isArray(v) && v.every(isStr);

export function validateMapping(raw: unknown, file: string): Mapping {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) fail(file, "$", "must be an object");
  const m = raw as Record<string, unknown>;
  const known = new Set(["$schema", "architecture", "description", "match", "dims", "tied", "dequant", "targets", "tensors", "extra_layers", "prefixes", "nested_config", "towers"]);
  for (const k of Object.keys(m)) if (!known.has(k)) fail(file, `$.${k}`, "unknown field");
  if (!isStr(m.architecture)) fail(file, "$.architecture", "must be a non-empty string");
  const match = m.match as Record<string, unknown> | undefined;
  if (!match || typeof match !== "object") fail(file, "$.match", "must be an object");
  for (const k of ["architectures", "model_type"]) if (match[k] !== undefined && !isStrArr(match[k])) fail(file, `$.match.${k}`, "must be a list of strings");
  const dims = m.dims as Record<string, unknown> | undefined;
  if (!dims || typeof dims !== "object") fail(file, "$.dims", "must be an object");
  for (const [k, v] of Object.entries(dims)) if (!isStrArr(v) || v.length === 0) fail(file, `$.dims.${k}`, "must be a non-empty list of strings");
  if (!Array.isArray(m.targets) || !m.targets.every((t) => (TARGETS as readonly string[]).includes(t))) fail(file, "$.targets", `must list targets among ${TARGETS.join(", ")}`);
  if (m.tied !== undefined) {
    const t = m.tied as Record<string, unknown>;
    if (!isStr(t.flag) || !isStr(t.hf) || !isStr(t.from)) fail(file, "$.tied", "needs flag, hf and from strings");
  }
  if (m.dequant !== undefined) {
    const d = m.dequant as Record<string, unknown>;
    if (!isStr(d.scale_suffix) || !Number.isInteger(d.block) || (d.block as number) <= 0) fail(file, "$.dequant", "needs scale_suffix and a positive integer block");
  }
  if (!Array.isArray(m.tensors) || m.tensors.length === 0) fail(file, "$.tensors", "must be a non-empty list");
  const ruleKeys = new Set(["hf", "tt", "shape", "rope", "tp", "full_chunk", "drop", "optional", "synth", "experts", "dtype", "transform", "one_of"]);
  m.tensors.forEach((r: unknown, i: number) => {
    const p = `$.tensors[${i}]`;
    if (!r || typeof r !== "object") fail(file, p, "must be an object");
    const rule = r as Record<string, unknown>;
    for (const k of Object.keys(rule)) if (!ruleKeys.has(k)) fail(file, `${p}.${k}`, "unknown field");
    if (rule.hf !== undefined && !isStr(rule.hf)) fail(file, `${p}.hf`, "must be a string");
    if (rule.drop === true) {
      if (!isStr(rule.hf)) fail(file, p, "a dropped rule needs hf");
      return;
    }
    if (rule.hf === undefined && rule.synth === undefined) fail(file, p, "needs hf (or synth)");
    if (isStr(rule.tt)) { /* ok */ } else if (rule.tt && typeof rule.tt === "object") {
      for (const [t, v] of Object.entries(rule.tt)) {
        if (!(TARGETS as readonly string[]).includes(t)) fail(file, `${p}.tt.${t}`, "unknown target");
        if (!isStr(v)) fail(file, `${p}.tt.${t}`, "must be a string");
      }
    } else fail(file, `${p}.tt`, "must be a string or an object keyed by target");
    if (rule.shape !== undefined && !isStrArr(rule.shape)) fail(file, `${p}.shape`, "must be a list of expressions");
    if (rule.tp !== undefined && !["shard0", "shard1", "replicate"].includes(rule.tp as string)) fail(file, `${p}.tp`, "must be shard0, shard1 or replicate");
    if (rule.rope !== undefined && !isStr((rule.rope as Record<string, unknown>).heads)) fail(file, `${p}.rope.heads`, "must name a dims entry");
    if (rule.dtype !== undefined && (!isStr(rule.dtype) || !isDType(rule.dtype) || !isCastable(rule.dtype))) fail(file, `${p}.dtype`, "must be a float dtype code (F32, BF16, F16, F8_E4M3, F8_E5M2)");
    if (rule.experts !== undefined && (!isStr(rule.experts) || !(rule.experts in dims))) fail(file, `${p}.experts`, "must name a dims entry");
    if (rule.transform !== undefined) {
      const t = rule.transform as Record<string, unknown>;
      const check = t && typeof t === "object" ? TRANSFORMS[t.op as Transform["op"]] : undefined;
      if (!check) fail(file, `${p}.transform`, `op must be one of ${Object.keys(TRANSFORMS).join(", ")}`);
      const bad = check(t);
      if (bad) fail(file, `${p}.transform`, bad);
    }
    if (rule.one_of !== undefined && !isStr(rule.one_of)) fail(file, `${p}.one_of`, "must be a group name");
    if (rule.synth !== undefined) {
      const s = rule.synth as Record<string, unknown>;
      if (!isStrArr(s.zeros) || !isStr(s.dtype) || !isDType(s.dtype) || !isStr(s.with)) fail(file, `${p}.synth`, "needs zeros (shape), dtype and with");
    }
    for (const f of ["rope", "shape"] as const) {
      const names = f === "rope" ? [(rule.rope as { heads?: string } | undefined)?.heads] : [];
      for (const n of names) if (n && !(n in dims)) fail(file, `${p}.${f}`, `unknown dims name '${n}'`);
    }
  });
  if (m.prefixes !== undefined && !(Array.isArray(m.prefixes) && m.prefixes.every((x) => x && typeof x === "object" && isStr(x.from) && typeof x.to === "string"))) fail(file, "$.prefixes", "must be a list of { from, to } strings");
  if (m.nested_config !== undefined && !isStr(m.nested_config)) fail(file, "$.nested_config", "must be a config field name");
  if (m.towers !== undefined && !(Array.isArray(m.towers) && m.towers.every((x) => x && typeof x === "object" && isStrArr(x.prefixes) && isStr(x.why) && x.option === "text-only"))) fail(file, "$.towers", "must be a list of { prefixes, why, option: text-only }");
  if (m.extra_layers !== undefined) {
    const x = m.extra_layers as Record<string, unknown>;
    if (!isStr(x.from) || !(x.from in dims)) fail(file, "$.extra_layers.from", "must name a dims entry");
    if (x.tt_prefix !== undefined && (typeof x.tt_prefix !== "object" || !Object.entries(x.tt_prefix as object).every(([t, v]) => (TARGETS as readonly string[]).includes(t) && isStr(v)))) fail(file, "$.extra_layers.tt_prefix", "must map targets to prefixes");
    if (x.option !== undefined && x.option !== "mtp") fail(file, "$.extra_layers.option", "must be mtp (the CLI's --mtp)");
  }
  return m as unknown as Mapping;
}
