// The shape of mappings/*.json, and a validator with errors that name the file and the field. Every field is
// described on the interfaces below and checked by validateMapping, which the loader runs on each mapping (after
// `extends` is resolved, mapping/extends.ts). mappings/mapping.schema.json publishes the same structure as a JSON
// Schema for editors; it cannot express the cross-field checks here (dims names inside expressions, rules named by
// requires / linears, concat groups), and test/mapping-schema.test.ts keeps the two in agreement.
import { CkptError } from "../errors.js";
import { isCastable, isDType, type CastableDType, type DType } from "../dtypes.js";
import { parseCheck, type Requirement } from "./requirements.js";

export const TARGETS = ["torchtitan@main", "torchtitan@0.2"] as const;
export type Target = (typeof TARGETS)[number];
export const DEFAULT_TARGET: Target = "torchtitan@main";

/**
 * TP placement of the parameter: `shardN` = Shard(N) of the TorchTitan tensor (stacked experts included), e.g.
 * colwise/embedding Shard(0), rowwise Shard(1), norms Replicate (sharding.md §3); routed experts [E, …] under TP
 * without EP: w1/w3 [E, F, D] colwise `shard1`, w2 [E, D, F] rowwise `shard2` (TorchTitan main moe_sharding.py
 * expert_param_placement_dense). Routed experts under EP ignore it (they are on the sparse mesh, no TP).
 */
export const TP_PLACEMENTS = ["shard0", "shard1", "shard2", "replicate"] as const;
export type TpPlacement = (typeof TP_PLACEMENTS)[number];

/**
 * How an HF tensor's values become the TorchTitan tensor, beyond renaming: one op of a closed vocabulary, each
 * validated by its entry in TRANSFORMS. `shape` of a rule is always the HF tensor's logical (decoded) shape.
 * - `mxfp4`: the rule's `hf` names packed `*_blocks` (U8 [..., G, 16], two E2M1 values per byte, low nibble first)
 *   and `scales` the HF pattern of their E8M0 scales (U8 [..., G]); the value tensor is [..., G·32]: value = E2M1[nibble] · 2^(scale − 127) (docs/numerics.md §10).
 * - `transpose`: the last two dims swap (HF's bf16 gpt-oss experts [E, D, 2F] → TorchTitan [E, 2F, D]).
 * - `int4`: the rule's `hf` names compressed-tensors `pack-quantized` `*.weight_packed` (I32 [out, ceil(in/8)], 8
 *   values per word, least significant nibble first, q = nibble − 8), `scale` the pattern of its BF16
 *   `weight_scale` [out, ceil(in/group)] and `shape` of its `weight_shape` (consumed); w = (nibble − 8) · scale (docs/numerics.md §11). The
 *   group size and symmetry come from config.json's `quantization_config`, which must say so.
 *
 * Structural ops compose: `transform` may be a list of them, applied in order HF → TorchTitan, with at most
 * one `split`/`chunk` (value ops — mxfp4, int4 — stand alone). Each has an exact inverse for `--to hf` and moves
 * whole elements, so a rank's box reads only the source byte runs it needs (plan/runs.ts):
 * - `split`: one HF tensor into several TorchTitan tensors along `dim` (0-based) with `sizes` (dims expressions that
 *   must add up to the HF size); this rule's tensor is part `index`. Several rules share the `hf` name, one per part
 *   (`in_proj_qkv` → `in_proj_q/k/v` by `[kd, kd, vd]`). Inverse: the parts concatenated along `dim`.
 * - `chunk`: `split` into `chunks` equal parts (torch.chunk; the size must divide). Inverse: concatenation.
 * - `transpose` after a split part: e.g. `gate_up_proj [E, D, 2F]` → chunk(dim 2, 2)[0] → transpose → `w1_EFD`.
 * - `reshape`: the HF tensor viewed as `shape` (dims expressions; the element count must match): a row-major
 *   contiguous view, so it moves no element and is metadata only (Conv3d patch embedding [out, C, T, P, P] →
 *   Linear [out, C·T·P·P]). It keeps dim 0 (what FSDP Shard(0) and TP Shard(0) cut), so any box of the output reads
 *   whole consecutive runs of the source. It stands alone. Inverse: the reshape back to the HF shape.
 * - `concat`: several HF tensors are one TorchTitan tensor, joined along `dim` (FLUX `to_q/to_k/to_v` →
 *   `img_attn.qkv`): every rule naming the same `tt` pattern with a `concat` step is one part, `index` its place.
 *   The parts' `shape`s (dims expressions) size the exact split back for --to hf. It stands alone (plan/concat.ts).
 * - `swap_halves`: the two halves of `dim` exchanged (diffusers' AdaLayerNormContinuous keeps [scale, shift] where
 *   BFL and TorchTitan keep [shift, scale]). Its own inverse. It stands alone (plan/concat.ts).
 */
export type Transform =
  | { op: "mxfp4"; scales: string }
  | { op: "transpose" }
  | { op: "int4"; scale: string; shape: string }
  | { op: "split"; dim: number; sizes: string[]; index: number }
  | { op: "chunk"; dim: number; chunks: number; index: number }
  | { op: "reshape"; shape: string[] }
  | { op: "concat"; dim: number; index: number }
  | { op: "swap_halves"; dim: number };

/** The rule's transform as a list of steps (HF → TorchTitan order); empty without one. */
export function transformSteps(rule: { transform?: Transform | Transform[] }): Transform[] {
  const t = rule.transform;
  return t === undefined ? [] : Array.isArray(t) ? t : [t];
}

/** The rule's value-decoding op (mxfp4 / int4), which never composes with others, if it has one. */
export function valueOp<T extends Transform["op"]>(rule: { transform?: Transform | Transform[] }, op: T): Extract<Transform, { op: T }> | undefined {
  const t = rule.transform;
  return t && !Array.isArray(t) && t.op === op ? (t as Extract<Transform, { op: T }>) : undefined;
}

/** The split/chunk step of a rule, if any: this rule's tensor is one part of its HF tensor. */
export function splitStep(rule: { transform?: Transform | Transform[] }): Extract<Transform, { op: "split" | "chunk" }> | undefined {
  return transformSteps(rule).find((s): s is Extract<Transform, { op: "split" | "chunk" }> => s.op === "split" || s.op === "chunk");
}

const TRANSFORMS: Record<Transform["op"], (t: Record<string, unknown>) => string | undefined> = {
  mxfp4: (t) => (isStr(t.scales) && Object.keys(t).every((k) => k === "op" || k === "scales") ? undefined : "mxfp4 needs exactly `scales` (the HF pattern of the E8M0 scales)"),
  transpose: (t) => (Object.keys(t).every((k) => k === "op") ? undefined : "transpose takes no fields"),
  int4: (t) => (isStr(t.scale) && isStr(t.shape) && Object.keys(t).every((k) => k === "op" || k === "scale" || k === "shape") ? undefined : "int4 needs exactly `scale` and `shape` (the HF patterns of weight_scale and weight_shape)"),
  split: (t) => (isDim(t.dim) && isStrArr(t.sizes) && t.sizes.length >= 2 && isIndex(t.index, t.sizes.length) && opKeys(t, ["dim", "sizes", "index"]) ? undefined
    : "split needs exactly `dim` (an integer ≥ 0), `sizes` (two or more dims expressions) and `index` (this rule's part, < sizes.length)"),
  chunk: (t) => (isDim(t.dim) && Number.isInteger(t.chunks) && (t.chunks as number) >= 2 && isIndex(t.index, t.chunks as number) && opKeys(t, ["dim", "chunks", "index"]) ? undefined
    : "chunk needs exactly `dim` (an integer ≥ 0), `chunks` (an integer ≥ 2) and `index` (this rule's part, < chunks)"),
  reshape: (t) => (isStrArr(t.shape) && t.shape.length >= 1 && opKeys(t, ["shape"]) ? undefined : "reshape needs exactly `shape` (the TorchTitan shape, a list of dims expressions)"),
  concat: (t) => (isDim(t.dim) && isDim(t.index) && opKeys(t, ["dim", "index"]) ? undefined : "concat needs exactly `dim` (an integer ≥ 0) and `index` (this HF tensor's place among the parts, ≥ 0)"),
  swap_halves: (t) => (isDim(t.dim) && opKeys(t, ["dim"]) ? undefined : "swap_halves needs exactly `dim` (an integer ≥ 0)"),
};
const isDim = (v: unknown) => Number.isInteger(v) && (v as number) >= 0;
const isIndex = (v: unknown, n: number) => Number.isInteger(v) && (v as number) >= 0 && (v as number) < n;
const onlyKeys = (t: Record<string, unknown>, keys: string[]) => Object.keys(t).every((k) => keys.includes(k));
const opKeys = (t: Record<string, unknown>, keys: string[]) => onlyKeys(t, ["op", ...keys]);
const STRUCTURAL = new Set(["transpose", "split", "chunk"]);

/**
 * What a synth rule's `omit_option` may name: a group of synthesised tensors the user may choose to leave out
 * (`expert_bias`: the zero expert-bias buffers TorchTitan's MoE keeps but these HF checkpoints lack). The CLI offers
 * each as a negatable flag (`--no-expert-bias`).
 */
export const OMITTABLE = ["expert_bias"] as const;
export type Omittable = (typeof OMITTABLE)[number];

/**
 * A tower's opt-in: `text-only` (convert the language model alone, skipping the towers with this option), or
 * `drop:<name>` (tensors the target has no module for, left out only when the user names them, and recorded in the
 * manifest).
 */
export type TowerOption = "text-only" | `drop:${string}`;
export const isTowerOption = (v: unknown): v is TowerOption => v === "text-only" || (typeof v === "string" && /^drop:[a-z0-9_]+$/.test(v));

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
  synth?: { zeros: string[]; dtype: DType; with: string; omit_option?: Omittable };
  /** Stacked expert tensors: which dims name holds the expert count. */
  experts?: string;
  /** Output dtype whatever --dtype asks (e.g. float32 buffers such as the MoE expert bias). */
  dtype?: CastableDType;
  /** Value transform on the way HF → TorchTitan (and back): one op, or a list of structural ops applied in order. */
  transform?: Transform | Transform[];
  /**
   * The rule holds exactly in the layers whose config `layer_types[L]` is this value (Qwen3.5 `full_attention` vs
   * `linear_attention`): expected there, refused elsewhere. Without `layer_types` in config.json it is optional.
   */
  layer_type?: string;
  /** Alternative HF layouts of one tensor share a group name: per layer exactly one of them must be present. */
  one_of?: string;
  /** The dims entry counting the layers `{L}` ranges over (default `layers`): FLUX's double and single blocks differ. */
  layers?: string;
  /**
   * The source layout (of the mapping's `layouts`) this rule belongs to; rules without one hold in every layout. A
   * source is read in the layout whose rules match its names; --to hf writes the one `--hf-layout` names.
   */
  layout?: string;
  /**
   * Who writes this HF layout (e.g. "transformers Qwen3_5MoeExperts, as published"). Rules sharing one `hf` name
   * with different `shape`s are alternative layouts of that tensor, picked by the stored shape; a shape matching none
   * is refused with every layout listed by this label. --to hf writes the first listed.
   */
  written_by?: string;
}

/**
 * One rewrite of `hf_config`. Conditions (all must hold): `when` (config fields, dotted paths, each holding one of the
 * listed values), `tensors` ("decoded": quantized tensors written as values; "requantized": --requantize wrote them
 * packed again) and `text_only` (a wrapper's checkpoint written without its tower, as `hf_output` decides). Actions, in
 * this order: `map` (a field's values renamed, each value or list element through the table), `flatten` (the nested
 * config `field` becomes the config; `inherit`: top-level fields copied when the nested config lacks them; `carry`:
 * top-level fields copied over it), `delete`, `set`. The rules apply in order, each reading the config as the
 * earlier ones left it.
 */
export interface HfConfigRewrite {
  why: string;
  when?: Record<string, unknown[]>;
  tensors?: "decoded" | "requantized";
  text_only?: true;
  map?: Record<string, Record<string, string>>;
  flatten?: { field: string; inherit?: string[]; carry?: string[] };
  delete?: string[];
  set?: Record<string, unknown>;
}

export interface Mapping {
  architecture: string;
  description?: string;
  /** `class_name`: diffusers' `_class_name` (a diffusers model config has no `architectures`). */
  match: { architectures?: string[]; model_type?: string[]; class_name?: string[] };
  /** Named source layouts (the first is --to hf's default), e.g. FLUX's `diffusers` folder and BFL's single file. */
  layouts?: string[];
  /** --to hf file name prefix per layout (default `model`): diffusers loads `diffusion_pytorch_model*.safetensors`. */
  hf_file_prefix?: Record<string, string>;
  /** Named dimensions: each is a list of alternatives, each a config field or `a / b` of two fields. */
  dims: Record<string, string[]>;
  tied?: { flag: string; hf: string; from: string };
  /** FP8 block quantization: a weight `X` is dequantized when `X` + suffix exists (torchtitan-layout.md §7.1). */
  dequant?: { scale_suffix: string; block: number };
  targets: Target[];
  tensors: TensorRule[];
  /**
   * HF layer indices at or above this dims value have no target at some versions (e.g. MTP layers). With `tt_prefix`
   * and the user's opt-in `option` (`mtp`), such a layer L maps at that target to `{tt_prefix}.{L − from}.` in place of
   * `layers.{L}.` (TorchTitan's `mtp_layers`); rules without a target name there are reported as shared.
   */
  extra_layers?: { from: string; skip_for?: Target[]; note?: string; tt_prefix?: Partial<Record<Target, string>>; option?: "mtp"; shared_note?: string };
  /** HF name prefixes read as others before matching (first match wins): `language_model.model.` → `model.`. */
  prefixes?: { from: string; to: string }[];
  /** A nested config (e.g. `text_config` of a multimodal wrapper) whose fields override the top level for dims and checks. */
  nested_config?: string;
  /**
   * HF tensors (by prefix) the target cannot take: refused with `why`, or skipped and reported with the user's
   * `option`; a tower without `option` is always skipped and reported (e.g. MTP heads the target has no module for).
   * With `convert: true` the tower's tensors go through the rules (the target has the module), and its `option`
   * skips and reports them instead (Qwen3.5's vision tower in a text-only conversion). `config_flag`: the config field that
   * says the HF model has the tower (FLUX `guidance_embeds`); --to hf warns when it is set, since the output cannot
   * hold the tower the target never had.
   */
  towers?: { prefixes: string[]; why: string; option?: TowerOption; convert?: boolean; config_flag?: string }[];
  /** What config.json must satisfy for a target's model to express it (mapping/requirements.ts). */
  requires?: Requirement<Target>[];
  /** TorchTitan main's Linear modules (what its LoRAConverter adapts), see LinearsSpec. */
  linears?: LinearsSpec;
  /**
   * --to hf of a checkpoint whose config.json nests the language model's config (`nested_config`: a multimodal
   * wrapper). With the tower converted (TorchTitan names under `tower`) the output is the wrapper again: names under
   * `prefix.to` (not a tower's) written back under `prefix.from`, config as is. Without it (a text-only conversion)
   * the output is the text-only model: names as the rules spell them, config.json as the `hf_config` rules marked
   * `text_only` rewrite it (their `map.architectures` lists the wrappers whose text-only model is known).
   */
  hf_output?: { prefix: { from: string; to: string }; tower: string };
  /** How --to hf output's config.json is rewritten so that transformers loads what was written (mapping/hf-config.ts). */
  hf_config?: HfConfigRewrite[];
  /**
   * The tiny checkpoint src/fixtures/generate.ts writes for this architecture and test/mappings.test.ts converts
   * (HF → TorchTitan → HF, sharded, and a dry run at the published size). Every mapping file has its own: it is never
   * inherited through `extends`, since a derived architecture's published layout is what its fixture must show.
   */
  fixture?: FixtureSpec;
}

/**
 * What the tensor rules cannot say about a tiny checkpoint: the names, shapes and value ops come from the rules;
 * this says which config, which optional rules hold in which layers, and how the publisher lays the files out.
 */
export interface FixtureSpec {
  /** config.json of the tiny checkpoint (dims and every field the conversion reads, e.g. quantization_config). */
  config: Record<string, unknown>;
  /** Seed of the deterministic values (default 1). */
  seed?: number;
  /** Magnitude of plain tensors' uniform values by regex on the rule's `hf` (first match; default 0.5). */
  scales?: Record<string, number>;
  /** `string`: a layer's experts written in the string order of their ids (0, 1, 10, 11, 2, …), as some exporters do. */
  expert_order?: "string";
  /** dtype of plain tensors (default BF16); a rule's `dtype` wins. */
  dtype?: CastableDType;
  /** safetensors files to split the tensors over (default 1; an index beside several). */
  files?: number;
  /** The source layout to write (one of `layouts`; default the first). */
  layout?: string;
  /** The folder of a pipeline repo holding the model (diffusers' `transformer`), and JSON files at the repo root. */
  folder?: string;
  root_files?: Record<string, unknown>;
  /** Extra named sizes for `shapes` and `optional`: expressions over dims and numeric config fields. */
  dims?: Record<string, string>;
  /** Shapes of rules that have none (by the rule's `hf`), as dims expressions. */
  shapes?: Record<string, string[]>;
  /**
   * Which optional rules the checkpoint holds: those whose `hf` matches the regex `hf`, in layers [from, to) when
   * `layers` gives them (dims expressions: `["0", "first_k_dense_replace"]`), else in every layer; `in` / `not_in`
   * narrow that to the layers a config list names or does not (Qwen3-MoE's dense `mlp_only_layers`). Others are absent.
   */
  optional?: { hf: string; layers?: [string | number, string | number]; in?: string; not_in?: string }[];
  /** `one_of` group → the `hf` pattern written (default the group's first rule). */
  pick?: Record<string, string>;
  /** Layers after the main stack (MTP), a dims expression: {L} of `layers` rules also runs over them. */
  extra_layers?: string | number;
  /** Names written under this `from` of the mapping's `prefixes` (a multimodal wrapper's language model). */
  prefix?: string;
  /** Rules (regex on `hf`) whose 2-D weights are FP8 E4M3 with `dequant` block scales, as the publisher ships them. */
  fp8?: string;
  /**
   * The published checkpoint, for a dry run on real-sized headers: a header-corpus entry (test/corpus-headers/<id>.json)
   * or a published config.json (then this generator writes its headers, over `files` files).
   */
  real: { corpus: string } | { config: Record<string, unknown>; files?: number; source?: string };
}

/**
 * TorchTitan main's Linear modules by TorchTitan name without `.weight`; each names a tensors[] rule's torchtitan@main
 * weight, whose HF name is the PEFT module. A fused Linear's output rows are, per group (`groups`, a dims name), the
 * rows of each part in order: FusedQKVLinear's wqkv is [n_heads / n_kv_heads q heads, 1 k head, 1 v head] per KV group.
 */
export interface LinearsSpec {
  description?: string;
  /** TorchTitan's model module (`--module`), when it is not the architecture's name. */
  torchtitan_module?: string;
  modules: string[];
  fused?: { module: string; groups: string; parts: string[] }[];
  /** Linears whose HF module PEFT cannot adapt (transformers implements it as another module type, e.g. a router). */
  peft_unsupported?: string[];
}

function fail(file: string, path: string, what: string): never {
  throw new CkptError("MAPPING", `${path}: ${what}`, { file });
}

const isStr = (v: unknown): v is string => typeof v === "string" && v.length > 0;
const isStrArr = (v: unknown): v is string[] => Array.isArray(v) && v.every(isStr);

export function validateMapping(raw: unknown, file: string): Mapping {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) fail(file, "$", "must be an object");
  const m = raw as Record<string, unknown>;
  const known = new Set(["$schema", "hf_config", "architecture", "description", "match", "dims", "tied", "dequant", "targets", "tensors", "extra_layers", "requires", "prefixes", "nested_config", "towers", "linears", "layouts", "hf_file_prefix", "hf_output", "fixture"]);
  for (const k of Object.keys(m)) if (!known.has(k)) fail(file, `$.${k}`, "unknown field");
  if (!isStr(m.architecture)) fail(file, "$.architecture", "must be a non-empty string");
  const match = m.match as Record<string, unknown> | undefined;
  if (!match || typeof match !== "object" || Array.isArray(match)) fail(file, "$.match", "must be an object");
  for (const k of Object.keys(match)) if (!["architectures", "model_type", "class_name"].includes(k)) fail(file, `$.match.${k}`, "unknown field (match has architectures, model_type, class_name)");
  for (const k of ["architectures", "model_type", "class_name"]) if (match[k] !== undefined && !isStrArr(match[k])) fail(file, `$.match.${k}`, "must be a list of strings");
  const dims = m.dims as Record<string, unknown> | undefined;
  if (!dims || typeof dims !== "object") fail(file, "$.dims", "must be an object");
  for (const [k, v] of Object.entries(dims)) if (!isStrArr(v) || v.length === 0) fail(file, `$.dims.${k}`, "must be a non-empty list of strings");
  if (!Array.isArray(m.targets) || !m.targets.every((t) => (TARGETS as readonly string[]).includes(t))) fail(file, "$.targets", `must list targets among ${TARGETS.join(", ")}`);
  if (m.tied !== undefined) {
    const t = m.tied as Record<string, unknown>;
    if (!isStr(t.flag) || !isStr(t.hf) || !isStr(t.from) || !onlyKeys(t, ["flag", "hf", "from"])) fail(file, "$.tied", "needs exactly flag, hf and from strings");
  }
  if (m.dequant !== undefined) {
    const d = m.dequant as Record<string, unknown>;
    if (!isStr(d.scale_suffix) || !Number.isInteger(d.block) || (d.block as number) <= 0 || !onlyKeys(d, ["scale_suffix", "block"])) fail(file, "$.dequant", "needs exactly scale_suffix and a positive integer block");
  }
  if (!Array.isArray(m.tensors) || m.tensors.length === 0) fail(file, "$.tensors", "must be a non-empty list");
  if (m.layouts !== undefined && !(isStrArr(m.layouts) && m.layouts.length >= 2)) fail(file, "$.layouts", "must list two or more layout names (the first is --to hf's default)");
  if (m.hf_file_prefix !== undefined && !(m.hf_file_prefix && typeof m.hf_file_prefix === "object" && Object.entries(m.hf_file_prefix).every(([k, v]) => Array.isArray(m.layouts) && m.layouts.includes(k) && isStr(v) && /^[A-Za-z0-9_.-]+$/.test(v)))) {
    fail(file, "$.hf_file_prefix", "must map layouts of $.layouts to file name prefixes");
  }
  const ruleKeys = new Set(["hf", "tt", "shape", "rope", "tp", "full_chunk", "drop", "optional", "synth", "experts", "dtype", "transform", "one_of", "layer_type", "layers", "layout", "written_by"]);
  m.tensors.forEach((r: unknown, i: number) => {
    const p = `$.tensors[${i}]`;
    if (!r || typeof r !== "object") fail(file, p, "must be an object");
    const rule = r as Record<string, unknown>;
    for (const k of Object.keys(rule)) if (!ruleKeys.has(k)) fail(file, `${p}.${k}`, "unknown field");
    if (rule.hf !== undefined && !isStr(rule.hf)) fail(file, `${p}.hf`, "must be a string");
    if (rule.layers !== undefined && (!isStr(rule.layers) || !(rule.layers in dims))) fail(file, `${p}.layers`, "must name a dims entry");
    if (rule.layout !== undefined && !(Array.isArray(m.layouts) && m.layouts.includes(rule.layout))) fail(file, `${p}.layout`, "must name one of $.layouts");
    for (const f of ["drop", "optional"]) if (rule[f] !== undefined && typeof rule[f] !== "boolean") fail(file, `${p}.${f}`, "must be true or false");
    if (rule.full_chunk !== undefined && !(Array.isArray(rule.full_chunk) && rule.full_chunk.every((t) => (TARGETS as readonly unknown[]).includes(t)))) fail(file, `${p}.full_chunk`, `must list targets among ${TARGETS.join(", ")}`);
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
    if (rule.tp !== undefined && !(TP_PLACEMENTS as readonly unknown[]).includes(rule.tp)) fail(file, `${p}.tp`, `must be one of ${TP_PLACEMENTS.join(", ")}`);
    if (rule.rope !== undefined && !(isStr((rule.rope as Record<string, unknown>).heads) && onlyKeys(rule.rope as Record<string, unknown>, ["heads", "head_dim"]))) fail(file, `${p}.rope`, "needs heads (and optionally head_dim), dims names");
    if (rule.dtype !== undefined && (!isStr(rule.dtype) || !isDType(rule.dtype) || !isCastable(rule.dtype))) fail(file, `${p}.dtype`, "must be a float dtype code (F32, BF16, F16, F8_E4M3, F8_E5M2)");
    if (rule.experts !== undefined && (!isStr(rule.experts) || !(rule.experts in dims))) fail(file, `${p}.experts`, "must name a dims entry");
    if (rule.transform !== undefined) {
      const list = Array.isArray(rule.transform) ? (rule.transform as unknown[]) : [rule.transform];
      if (list.length === 0) fail(file, `${p}.transform`, "an empty list: leave transform out");
      list.forEach((x, j) => {
        const at = Array.isArray(rule.transform) ? `${p}.transform[${j}]` : `${p}.transform`;
        const t = x as Record<string, unknown>;
        const check = t && typeof t === "object" ? TRANSFORMS[t.op as Transform["op"]] : undefined;
        if (!check) fail(file, at, `op must be one of ${Object.keys(TRANSFORMS).join(", ")}`);
        const bad = check(t);
        if (bad) fail(file, at, bad);
        if (list.length > 1 && !STRUCTURAL.has(t.op as string)) fail(file, at, `${t.op as string} does not compose: only ${[...STRUCTURAL].join(", ")} may form a list`);
        if (t.op === "reshape") checkDimExprs(t.shape as string[], dims, file, `${at}.shape`);
        if (t.op === "split") checkDimExprs(t.sizes as string[], dims, file, `${at}.sizes`);
      });
      if (list.filter((x) => ["split", "chunk"].includes((x as { op?: string }).op ?? "")).length > 1) fail(file, `${p}.transform`, "at most one split or chunk per rule");
      if (list.filter((x) => (x as { op?: string }).op === "transpose").length > 1) fail(file, `${p}.transform`, "at most one transpose per rule");
    }
    if (rule.layer_type !== undefined && !isStr(rule.layer_type)) fail(file, `${p}.layer_type`, "must be a layer_types value (e.g. full_attention)");
    if (rule.one_of !== undefined && !isStr(rule.one_of)) fail(file, `${p}.one_of`, "must be a group name");
    if (rule.written_by !== undefined && !isStr(rule.written_by)) fail(file, `${p}.written_by`, "must say who writes this layout");
    if (rule.synth !== undefined) {
      const s = rule.synth as Record<string, unknown>;
      if (!isStrArr(s.zeros) || !isStr(s.dtype) || !isDType(s.dtype) || !isStr(s.with) || !onlyKeys(s, ["zeros", "dtype", "with", "omit_option"])) fail(file, `${p}.synth`, "needs zeros (shape), dtype and with (and optionally omit_option)");
      if (s.omit_option !== undefined && !(OMITTABLE as readonly unknown[]).includes(s.omit_option)) fail(file, `${p}.synth.omit_option`, `must be one of the groups a user may leave out: ${OMITTABLE.join(", ")}`);
    }
    if (rule.shape !== undefined) checkDimExprs(rule.shape as string[], dims, file, `${p}.shape`);
    if (rule.synth !== undefined) checkDimExprs((rule.synth as { zeros: string[] }).zeros, dims, file, `${p}.synth.zeros`);
    const rope = rule.rope as { heads?: string; head_dim?: string } | undefined;
    for (const f of ["heads", "head_dim"] as const) if (rope?.[f] !== undefined && !(rope[f] in dims)) fail(file, `${p}.rope.${f}`, `unknown dims name '${rope[f]}'`);
  });
  validateConcatGroups(m.tensors as TensorRule[], m.targets as Target[], (path, what) => fail(file, path, what));
  if (m.prefixes !== undefined && !(Array.isArray(m.prefixes) && m.prefixes.every((x) => x && typeof x === "object" && isStr(x.from) && typeof x.to === "string" && onlyKeys(x, ["from", "to"])))) fail(file, "$.prefixes", "must be a list of { from, to } strings");
  if (m.nested_config !== undefined && !isStr(m.nested_config)) fail(file, "$.nested_config", "must be a config field name");
  if (m.hf_output !== undefined) {
    const o = m.hf_output as Record<string, unknown>;
    const pre = o.prefix as Record<string, unknown> | undefined;
    if (!isStr(m.nested_config) || !pre || !isStr(pre.from) || typeof pre.to !== "string" || !isStr(o.tower) || !onlyKeys(o, ["prefix", "tower"])) {
      fail(file, "$.hf_output", "needs nested_config, prefix { from, to } and tower (a TorchTitan name prefix)");
    }
    if (!(Array.isArray(m.hf_config) && m.hf_config.some((r) => r && r.text_only === true && r.map && typeof r.map.architectures === "object"))) {
      fail(file, "$.hf_output", "needs an hf_config rule with text_only and map.architectures (the wrapper's architecture → its text-only model's)");
    }
  }
  if (m.hf_config !== undefined) validateHfConfig(m.hf_config, file);
  if (m.towers !== undefined && !(Array.isArray(m.towers) && m.towers.every((x) => x && typeof x === "object" && isStrArr(x.prefixes) && isStr(x.why) && (x.option === undefined || isTowerOption(x.option)) && onlyKeys(x, ["prefixes", "why", "option", "convert", "config_flag"]) && (x.convert === undefined || (x.convert === true && x.option !== undefined)) && (x.config_flag === undefined || isStr(x.config_flag))))) {
    fail(file, "$.towers", "must be a list of { prefixes, why, option?: text-only | drop:<name>, convert?: true (with an option), config_flag?: field }");
  }
  if (m.extra_layers !== undefined) {
    const x = m.extra_layers as Record<string, unknown>;
    for (const k of Object.keys(x)) if (!["from", "skip_for", "note", "tt_prefix", "option", "shared_note"].includes(k)) fail(file, `$.extra_layers.${k}`, "unknown field");
    if (!isStr(x.from) || !(x.from in dims)) fail(file, "$.extra_layers.from", "must name a dims entry");
    if (x.skip_for !== undefined && !(Array.isArray(x.skip_for) && x.skip_for.every((t) => (TARGETS as readonly unknown[]).includes(t)))) fail(file, "$.extra_layers.skip_for", `must list targets among ${TARGETS.join(", ")}`);
    for (const k of ["note", "shared_note"]) if (x[k] !== undefined && typeof x[k] !== "string") fail(file, `$.extra_layers.${k}`, "must be a string");
    if (x.tt_prefix !== undefined && (typeof x.tt_prefix !== "object" || !Object.entries(x.tt_prefix as object).every(([t, v]) => (TARGETS as readonly string[]).includes(t) && isStr(v)))) fail(file, "$.extra_layers.tt_prefix", "must map targets to prefixes");
    if (x.option !== undefined && x.option !== "mtp") fail(file, "$.extra_layers.option", "must be mtp (the opt-in that converts these layers)");
  }
  if (m.fixture !== undefined) validateFixture(m.fixture, file);
  if (m.linears !== undefined) validateLinears(m.linears, m.tensors as Record<string, unknown>[], dims, file);
  if (m.requires !== undefined) validateRequires(m.requires, m.tensors as Record<string, unknown>[], dims, m.targets as string[], file);
  return m as unknown as Mapping;
}

function validateFixture(raw: unknown, file: string): void {
  const f = raw as Record<string, unknown>;
  const at = "$.fixture";
  if (!f || typeof f !== "object" || Array.isArray(f)) fail(file, at, "must be an object");
  const keys = ["config", "seed", "scales", "expert_order", "dtype", "files", "layout", "folder", "root_files", "dims", "shapes", "optional", "pick", "extra_layers", "prefix", "fp8", "real"];
  for (const k of Object.keys(f)) if (!keys.includes(k)) fail(file, `${at}.${k}`, `unknown field (known: ${keys.join(", ")})`);
  const isObj = (v: unknown) => !!v && typeof v === "object" && !Array.isArray(v);
  if (!isObj(f.config)) fail(file, `${at}.config`, "must be the tiny checkpoint's config.json object");
  if (f.seed !== undefined && !Number.isInteger(f.seed)) fail(file, `${at}.seed`, "must be an integer");
  if (f.dtype !== undefined && !(isStr(f.dtype) && isDType(f.dtype) && isCastable(f.dtype))) fail(file, `${at}.dtype`, "must be a float dtype code");
  if (f.files !== undefined && !(Number.isInteger(f.files) && (f.files as number) >= 1)) fail(file, `${at}.files`, "must be an integer ≥ 1");
  for (const k of ["layout", "folder", "prefix", "fp8"]) if (f[k] !== undefined && typeof f[k] !== "string") fail(file, `${at}.${k}`, "must be a string");
  if (f.fp8 !== undefined) try { new RegExp(f.fp8 as string); } catch (e) { fail(file, `${at}.fp8`, (e as Error).message); }
  if (f.scales !== undefined && !(isObj(f.scales) && Object.entries(f.scales as object).every(([k, v]) => { try { new RegExp(k); } catch { return false; } return typeof v === "number" && v > 0; }))) fail(file, `${at}.scales`, "must map hf regexes to positive magnitudes");
  if (f.expert_order !== undefined && f.expert_order !== "string") fail(file, `${at}.expert_order`, "must be string (or left out: numeric order)");
  if (f.root_files !== undefined && !isObj(f.root_files)) fail(file, `${at}.root_files`, "must map file names to JSON bodies");
  if (f.dims !== undefined && !(isObj(f.dims) && Object.values(f.dims as object).every(isStr))) fail(file, `${at}.dims`, "must map names to expressions");
  if (f.shapes !== undefined && !(isObj(f.shapes) && Object.values(f.shapes as object).every(isStrArr))) fail(file, `${at}.shapes`, "must map rule hf patterns to lists of expressions");
  if (f.pick !== undefined && !(isObj(f.pick) && Object.values(f.pick as object).every(isStr))) fail(file, `${at}.pick`, "must map one_of groups to hf patterns");
  const expr = (v: unknown) => isStr(v) || Number.isInteger(v);
  if (f.extra_layers !== undefined && !expr(f.extra_layers)) fail(file, `${at}.extra_layers`, "must be a dims expression or an integer");
  if (f.optional !== undefined) {
    if (!Array.isArray(f.optional)) fail(file, `${at}.optional`, "must be a list of { hf, layers? }");
    f.optional.forEach((o: Record<string, unknown>, i: number) => {
      if (!isObj(o) || !isStr(o.hf) || !Object.keys(o).every((k) => ["hf", "layers", "in", "not_in"].includes(k))) fail(file, `${at}.optional[${i}]`, "must be { hf: regex, layers?: [from, to], in?: field, not_in?: field }");
      for (const k of ["in", "not_in"]) if (o[k] !== undefined && !isStr(o[k])) fail(file, `${at}.optional[${i}].${k}`, "must name a config field holding a list of layer indices");
      try { new RegExp(o.hf as string); } catch (e) { fail(file, `${at}.optional[${i}].hf`, (e as Error).message); }
      if (o.layers !== undefined && !(Array.isArray(o.layers) && o.layers.length === 2 && o.layers.every(expr))) fail(file, `${at}.optional[${i}].layers`, "must be [from, to], dims expressions or integers");
    });
  }
  const real = f.real as Record<string, unknown> | undefined;
  if (!isObj(real) || !(isStr(real!.corpus) || isObj(real!.config))) fail(file, `${at}.real`, "must be { corpus: <test/corpus-headers id> } or { config: <published config.json>, files? }");
}

/**
 * A dims expression as evalDimExpr reads it: a sum (`+`) of products (`*`) of integers and dims names. Refused with
 * the file and the rule's path when it names something `dims` lacks or is not of that form.
 */
function checkDimExprs(exprs: string[], dims: Record<string, unknown>, file: string, path: string): void {
  exprs.forEach((e, i) => {
    for (const term of e.split("+")) {
      for (const n of term.split("*").map((z) => z.trim())) {
        if (/^\d+$/.test(n)) continue;
        if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(n)) fail(file, `${path}[${i}]`, `'${e}' is not a dims expression (a sum of products of integers and dims names, e.g. "2 * kd + vd")`);
        if (!(n in dims)) fail(file, `${path}[${i}]`, `'${e}' names '${n}', which is not in $.dims (${Object.keys(dims).join(", ")})`);
      }
    }
  });
}

function validateHfConfig(raw: unknown, file: string): void {
  if (!Array.isArray(raw)) fail(file, "$.hf_config", "must be a list of rewrites");
  const keys = ["why", "when", "tensors", "text_only", "map", "flatten", "delete", "set"];
  const isObj = (v: unknown): v is Record<string, unknown> => !!v && typeof v === "object" && !Array.isArray(v);
  raw.forEach((r: unknown, i: number) => {
    const p = `$.hf_config[${i}]`;
    if (!isObj(r)) fail(file, p, "must be an object");
    for (const k of Object.keys(r)) if (!keys.includes(k)) fail(file, `${p}.${k}`, `unknown field (a rewrite has ${keys.join(", ")})`);
    if (!isStr(r.why)) fail(file, `${p}.why`, "must say why transformers needs this rewrite");
    if (r.when !== undefined && !(isObj(r.when) && Object.values(r.when).every((v) => Array.isArray(v) && v.length > 0))) fail(file, `${p}.when`, "must map config fields (dotted paths) to non-empty lists of values");
    if (r.tensors !== undefined && r.tensors !== "decoded" && r.tensors !== "requantized") fail(file, `${p}.tensors`, "must be decoded or requantized");
    if (r.text_only !== undefined && r.text_only !== true) fail(file, `${p}.text_only`, "must be true (or left out)");
    if (r.map !== undefined && !(isObj(r.map) && Object.values(r.map).every((t) => isObj(t) && Object.values(t).every(isStr)))) fail(file, `${p}.map`, "must map fields to { old value: new value } tables of strings");
    const f = r.flatten as Record<string, unknown> | undefined;
    if (f !== undefined && !(isObj(f) && isStr(f.field) && onlyKeys(f, ["field", "inherit", "carry"]) && (f.inherit === undefined || isStrArr(f.inherit)) && (f.carry === undefined || isStrArr(f.carry)))) {
      fail(file, `${p}.flatten`, "needs field (the nested config) and optionally inherit / carry (lists of top-level fields)");
    }
    if (r.delete !== undefined && !isStrArr(r.delete)) fail(file, `${p}.delete`, "must be a list of field names");
    if (r.set !== undefined && !isObj(r.set)) fail(file, `${p}.set`, "must be an object of fields");
    if (r.map === undefined && f === undefined && r.delete === undefined && r.set === undefined) fail(file, p, "rewrites nothing: give map, flatten, delete or set");
  });
}

function validateLinears(raw: unknown, tensors: Record<string, unknown>[], dims: Record<string, unknown>, file: string): void {
  const l = raw as Record<string, unknown>;
  if (!l || typeof l !== "object" || Array.isArray(l)) fail(file, "$.linears", "must be an object");
  for (const k of Object.keys(l)) if (!["description", "torchtitan_module", "modules", "fused", "peft_unsupported"].includes(k)) fail(file, `$.linears.${k}`, "unknown field");
  if (!isStrArr(l.modules)) fail(file, "$.linears.modules", "must be a list of TorchTitan module names");
  // every module is the torchtitan@main weight of a rule, so its HF name (the PEFT module) and shape are known
  const weights = new Set(tensors.map((t) => (typeof t.tt === "string" ? t.tt : (t.tt as Record<string, string> | undefined)?.["torchtitan@main"])).filter(isStr));
  const known = (m: string, at: string) => { if (!weights.has(m + ".weight")) fail(file, at, `'${m}.weight' is no rule's torchtitan@main name`); };
  l.modules.forEach((m, i) => known(m, `$.linears.modules[${i}]`));
  if (l.peft_unsupported !== undefined && !(isStrArr(l.peft_unsupported) && l.peft_unsupported.every((m) => (l.modules as string[]).includes(m)))) fail(file, "$.linears.peft_unsupported", "must list modules of $.linears.modules");
  if (l.fused === undefined) return;
  if (!Array.isArray(l.fused)) fail(file, "$.linears.fused", "must be a list");
  l.fused.forEach((f: Record<string, unknown>, i: number) => {
    const p = `$.linears.fused[${i}]`;
    if (!f || typeof f !== "object" || !isStr(f.module) || !isStr(f.groups) || !isStrArr(f.parts) || f.parts.length < 2 || !onlyKeys(f, ["module", "groups", "parts"])) fail(file, p, "needs exactly module, groups (a dims name) and two or more parts");
    if (!(f.groups in dims)) fail(file, `${p}.groups`, `unknown dims name '${f.groups}'`);
    f.parts.forEach((m, j) => known(m, `${p}.parts[${j}]`));
  });
}

function validateRequires(raw: unknown, tensors: Record<string, unknown>[], dims: Record<string, unknown>, targets: string[], file: string): void {
  if (!Array.isArray(raw)) fail(file, "$.requires", "must be a list");
  const keys = new Set(["targets", "check", "field", "tensor", "why", "hint", "severity"]);
  const hfNames = new Set(tensors.map((t) => t.hf).filter(isStr));
  raw.forEach((r: unknown, i: number) => {
    const p = `$.requires[${i}]`;
    if (!r || typeof r !== "object" || Array.isArray(r)) fail(file, p, "must be an object");
    const req = r as Record<string, unknown>;
    for (const k of Object.keys(req)) if (!keys.has(k)) fail(file, `${p}.${k}`, "unknown field");
    for (const k of ["check", "field", "tensor", "why"]) if (!isStr(req[k])) fail(file, `${p}.${k}`, "must be a non-empty string");
    if (req.hint !== undefined && !isStr(req.hint)) fail(file, `${p}.hint`, "must be a string");
    if (req.severity !== undefined && req.severity !== "refuse" && req.severity !== "warn") fail(file, `${p}.severity`, "must be refuse or warn");
    if (req.targets !== undefined && (!isStrArr(req.targets) || !req.targets.every((t) => targets.includes(t)))) fail(file, `${p}.targets`, `must list targets of this mapping (${targets.join(", ")})`);
    // the error names the tensor by its target name, found through the rule with this HF name
    if (!hfNames.has(req.tensor as string)) fail(file, `${p}.tensor`, "must be the hf name of a tensors[] rule");
    let parsed;
    try {
      parsed = parseCheck(req.check as string);
    } catch (e) {
      fail(file, `${p}.check`, (e as Error).message);
    }
    if (parsed.kind === "compare") for (const n of parsed.names) if (!(n in dims)) fail(file, `${p}.check`, `unknown dims name '${n}'`);
  });
}

// The `concat` op as rules state it: which rules are parts of one joined TorchTitan tensor, and the checks a
// mapping file's concat groups pass when it is loaded. Planning the join and the split back is plan/concat.ts.

export type ConcatStep = Extract<Transform, { op: "concat" }>;

/** The rule's concat step: this HF tensor is part `index` of a TorchTitan tensor joined along `dim`. */
export function concatStep(rule: { transform?: Transform | Transform[] }): ConcatStep | undefined {
  const t = rule.transform;
  return t && !Array.isArray(t) && t.op === "concat" ? t : undefined;
}

/** The TorchTitan pattern a concat rule names for `target` (the group key: parts share it). */
export function ttOf(rule: TensorRule, target: Target): string | undefined {
  return typeof rule.tt === "string" ? rule.tt : rule.tt?.[target];
}

/**
 * Mapping validation of every concat group: indices 0..n-1 once each, n ≥ 2, one dim, each part with its HF `shape`
 * (the split back needs it) and no other transform or RoPE (which would apply per part, not to the joined tensor).
 */
export function validateConcatGroups(tensors: TensorRule[], targets: readonly Target[], fail: (path: string, what: string) => never): void {
  for (const target of targets) {
    const groups = new Map<string, { rule: TensorRule; i: number }[]>();
    tensors.forEach((rule, i) => {
      if (!concatStep(rule)) return;
      const tt = ttOf(rule, target);
      if (!tt) return;
      const key = `${rule.layout ?? ""}|${tt}`;
      groups.set(key, [...(groups.get(key) ?? []), { rule, i }]);
    });
    for (const [key, members] of groups) {
      const at = (i: number) => `$.tensors[${i}]`;
      const idx = members.map((m) => concatStep(m.rule)!.index).sort((a, b) => a - b);
      if (members.length < 2 || idx.some((v, k) => v !== k)) fail(at(members[0]!.i), `concat parts of ${key.split("|")[1]} must have indices 0..n-1 once each (n ≥ 2), found [${idx.join(", ")}]`);
      const dim = concatStep(members[0]!.rule)!.dim;
      for (const m of members) {
        if (concatStep(m.rule)!.dim !== dim) fail(`${at(m.i)}.transform.dim`, `every part of ${key.split("|")[1]} must join along dim ${dim}`);
        if (!m.rule.shape) fail(`${at(m.i)}.shape`, "a concat part needs its HF shape (dims expressions): --to hf splits by it");
        if (m.rule.rope) fail(`${at(m.i)}.rope`, "a concat part cannot carry its own RoPE permutation");
        if (m.rule.experts) fail(`${at(m.i)}.experts`, "a concat part cannot be a stacked expert");
      }
    }
  }
}
