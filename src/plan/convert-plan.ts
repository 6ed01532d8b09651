// The conversion plan: a pure function of (catalog, mapping, target layout, direction, dtype) giving every
// output tensor with its name, dtype, shape, recipe and TP placement. Nothing here reads tensor bytes.
import { naturalCompare } from "../util/natural-compare.js";
import { CkptError } from "../errors.js";
import { DTYPE_ALIASES, isCastable, type CastableDType, type DType, type DTypeChoice } from "../dtypes.js";
import type { CatalogTensor } from "../catalog-types.js";
import { dimFields, evalDimExpr, resolveDims } from "../mapping/load.js";
import { compilePattern, fillPattern, matchPattern, type CompiledPattern } from "../mapping/patterns.js";
import { failedCheck, parseCheck } from "../mapping/requirements.js";
import { targetSpec } from "../mapping/targets.js";
import type { Mapping, Target, TensorRule, Transform } from "../mapping/schema.js";
import { DEFAULT_TARGET, splitStep, TARGETS, transformSteps, valueOp } from "../mapping/schema.js";
import type { LeafInfo, Recipe, StoredShapeCheck } from "./recipe.js";
import { recipeLeaves } from "./recipe.js";
import type { ShardPolicy } from "./sharding.js";
import { QUANT_OPS, transformOf } from "../ops/index.js";
import type { PlanContext, PlannedLeaf, QuantOp } from "../ops/quant-op.js";
import { checkQuantizedSources, checkValueLeaves, checkWholeByteLeaves } from "./quant-checks.js";
import { detectLayout, effectiveConfig, towerFlag, extraLayer, hfOutputLayout, inLayout, mainStackName, normalizedName, normalizeTtName, sourceView } from "./source-names.js";
import { concatGroup, concatStep, joinParts, splitParts, swapHalves, swapHalvesDim, type ConcatMember } from "./concat.js";
import { checkShape, rulesForShape, type ShapeCtx } from "./layouts.js";

export type Direction = "hf_to_tt" | "tt_to_hf" | "tt_to_tt";
export type PlanFeature = "mtp" | "text-only" | `drop:${string}`;

export interface TensorPlan {
  name: string;
  dtype: DType;
  shape: number[];
  recipe: Recipe;
  policy: ShardPolicy;
}

export interface ConversionPlan {
  direction: Direction;
  mapping: string;
  target: Target;
  tensors: TensorPlan[];
  leaves: Record<string, LeafInfo>;
  /** Source tensors no rule maps (only when allowUnmapped). */
  unmapped: string[];
  /** Source tensors deliberately not converted (dropped keys, non-model keys, consumed scales, synthesised targets). */
  skipped: { name: string; why: string }[];
  warnings: string[];
  dims: Record<string, number>;
  /** The source layout read (HF → TorchTitan) or written (--to hf), for mappings with several (FLUX diffusers / bfl). */
  layout?: string;
  /** Stored shape tensors (INT4 weight_shape) whose values must match what the plan decodes (checkStoredShapes). */
  storedShapes?: StoredShapeCheck[];
  /** --to hf of a multimodal wrapper's checkpoint without its tower: config.json becomes the text-only model's. */
  hfConfig?: "text-only";
}

export interface PlanOptions {
  mapping: Mapping;
  config: Record<string, unknown>;
  direction: Direction;
  target?: Target;
  dtype?: DTypeChoice;
  allowUnmapped?: boolean;
  /** Synth rules' omit_option groups the user leaves out (e.g. "expert_bias", the CLI's --no-expert-bias). */
  omit?: string[];
  configFile?: string;
  /**
   * Opt-in conversions: "mtp" (--mtp: DeepSeek MTP layers → mtp_layers), "text-only" (--text-only: skip towers the
   * target cannot take), "drop:<name>" (--drop <name>: leave out a tower the target has no module for).
   */
  features?: PlanFeature[];
  /** --to hf: which of the mapping's `layouts` to write (default its first). */
  hfLayout?: string;
  /**
   * What to do with a config the target cannot express (the mapping's `requires`): "refuse" (default) before
   * writing anything; "warn" for verify, which compares checkpoints that already exist.
   */
  targetChecks?: "refuse" | "warn";
}

export interface CatalogLike {
  tensors: Map<string, CatalogTensor>;
}

function ttPattern(rule: TensorRule, target: Target): string | undefined {
  if (typeof rule.tt === "string") return rule.tt;
  return rule.tt?.[target];
}

function policyOf(rule: TensorRule, target: Target): ShardPolicy {
  const experts = rule.experts !== undefined;
  // which mesh picks FSDP Shard(1) for experts without EP is the target's (mappings/targets/<target>.json)
  const mesh = experts ? targetSpec(target).experts_shard1_mesh : undefined;
  return { tp: rule.tp ?? "replicate", fullChunk: rule.full_chunk?.includes(target) ?? false, experts, ...(mesh === "dp_shard_tp" ? { expertsShard1Mesh: mesh } : {}) };
}

const FLOAT_KEEP_DEFAULT: CastableDType = "BF16";

function outputDType(choice: DTypeChoice, sourceDType: DType, dequantized: boolean, config: Record<string, unknown>): DType {
  if (!isCastable(sourceDType) && !dequantized) return sourceDType; // integers and bools are never cast
  if (choice !== "keep") return choice;
  if (dequantized) {
    const td = typeof config.torch_dtype === "string" ? DTYPE_ALIASES[config.torch_dtype] : undefined;
    return td ?? FLOAT_KEEP_DEFAULT;
  }
  return sourceDType;
}

/** The rule's pinned dtype (float buffers) wins over --dtype for float sources. */
function ruleDType(rule: TensorRule, choice: DTypeChoice, sourceDType: DType, dequantized: boolean, config: Record<string, unknown>): DType {
  if (rule.dtype && (isCastable(sourceDType) || dequantized)) return rule.dtype;
  return outputDType(choice, sourceDType, dequantized, config);
}

function checkRope(rule: TensorRule, name: string, shape: number[], dims: Record<string, number>, file: string): { heads: number; headDim: number } {
  const heads = dims[rule.rope!.heads];
  const hd = dims[rule.rope!.head_dim ?? "head_dim"];
  if (heads === undefined || hd === undefined) throw new CkptError("CONFIG", `cannot permute q/k rows of ${name}: config lacks ${rule.rope!.heads} or head_dim`, { file, tensor: name });
  if (hd % 2 !== 0) throw new CkptError("CONFIG", `head_dim ${hd} is odd; the RoPE row permutation needs an even head size`, { file, tensor: name });
  if (shape[0] !== heads * hd) {
    throw new CkptError("CONFIG", `config.json is inconsistent with the tensor: ${shape[0]} rows, but ${rule.rope!.heads}=${heads} × head_dim=${hd} = ${heads * hd}`, {
      file, tensor: name, hint: "check num_attention_heads / num_key_value_heads / head_dim",
    });
  }
  return { heads, headDim: hd };
}

/**
 * The mapping's `requires` for this target: refuses a config the target's model cannot express (before anything is
 * written, so no output folder appears), and returns the warnings of the `warn` ones.
 */
function checkTargetRequirements(mapping: Mapping, config: Record<string, unknown>, dims: Record<string, number>, target: Target, file: string, mode: PlanOptions["targetChecks"]): string[] {
  const warnings: string[] = [];
  for (const req of mapping.requires ?? []) {
    if (req.targets && !req.targets.includes(target)) continue;
    const failed = failedCheck(parseCheck(req.check), config, dims);
    if (!failed) continue;
    const rule = mapping.tensors.find((r) => r.hf === req.tensor);
    const tensor = fillPattern((rule && ttPattern(rule, target)) ?? req.tensor, { L: 0, E: 0 });
    if (req.severity === "warn" || mode === "warn") {
      warnings.push(`${target} ${mapping.architecture}: config ${failed.found}: ${req.why} (${tensor})${req.hint ? `; ${req.hint}` : ""}`);
      continue;
    }
    throw new CkptError("UNSUPPORTED", `${target} ${mapping.architecture} cannot express config field ${req.field}: ${failed.found} (it needs ${failed.needs}); ${req.why}`, { file, tensor, hint: req.hint });
  }
  return warnings;
}

interface CompiledRule {
  rule: TensorRule;
  hf?: CompiledPattern;
  tt?: CompiledPattern;
}

function compileRules(mapping: Mapping, target: Target): CompiledRule[] {
  return mapping.tensors.map((rule) => {
    const tt = ttPattern(rule, target);
    return { rule, hf: rule.hf ? compilePattern(rule.hf) : undefined, tt: tt ? compilePattern(tt) : undefined };
  });
}

function leafInfo(t: CatalogTensor): LeafInfo {
  return { dtype: t.dtype, shape: t.shape, pieces: t.pieces };
}

function finish(plan: Omit<ConversionPlan, "leaves">, catalog: CatalogLike): ConversionPlan {
  plan.tensors.sort((a, b) => naturalCompare(a.name, b.name));
  const leaves: Record<string, LeafInfo> = {};
  for (const t of plan.tensors) for (const l of recipeLeaves(t.recipe)) leaves[l] = leafInfo(catalog.tensors.get(l)!);
  checkWholeByteLeaves(leaves);
  const seen = new Set<string>();
  for (const t of plan.tensors) {
    if (seen.has(t.name)) throw new CkptError("MAPPING", `two source tensors map to the same output '${t.name}'`, { tensor: t.name });
    seen.add(t.name);
  }
  return { ...plan, leaves };
}

export function planConversion(catalog: CatalogLike, opts: PlanOptions): ConversionPlan {
  const target = opts.target ?? DEFAULT_TARGET;
  if (!opts.mapping.targets.includes(target)) throw new CkptError("USAGE", `--target ${target} is not supported for ${opts.mapping.architecture} (supported: ${opts.mapping.targets.join(", ")})`);
  const raw = opts.config;
  opts = { ...opts, config: effectiveConfig(opts.mapping, opts.config) };
  if (opts.direction === "tt_to_tt") return planReshard(catalog, { ...opts, mapping: inLayout(opts.mapping, opts.mapping.layouts?.[0]), target });
  if (opts.direction === "tt_to_hf") {
    const layout = opts.mapping.layouts ? opts.hfLayout ?? opts.mapping.layouts[0] : undefined;
    if (opts.hfLayout !== undefined && !opts.mapping.layouts) throw new CkptError("USAGE", `--hf-layout ${opts.hfLayout}: ${opts.mapping.architecture} has one HF layout`);
    return withLayout(planTtToHf(catalog, { ...opts, mapping: inLayout(opts.mapping, layout), target }, raw), layout);
  }
  // a source is read in the layout its names are spelled in
  const layout = hfLayoutOf(opts.mapping, catalog.tensors.keys());
  return withLayout(planHfToTt(catalog, { ...opts, mapping: inLayout(opts.mapping, layout), target }), layout);
}

/** Which of the mapping's HF layouts these HF names are spelled in (undefined for a mapping with one layout). */
export function hfLayoutOf(mapping: Mapping, names: Iterable<string>): string | undefined {
  if (!mapping.layouts) return undefined;
  const patterns = new Map(mapping.tensors.filter((r) => r.hf && r.layout).map((r) => [r, compilePattern(r.hf!)]));
  return detectLayout(mapping, [...names].map((n) => normalizedName(mapping, n)), (r, n) => matchPattern(patterns.get(r)!, n) !== undefined);
}

function withLayout(plan: ConversionPlan, layout: string | undefined): ConversionPlan {
  return layout === undefined ? plan : { ...plan, layout };
}

/** Counts source names matching the HF side vs the TorchTitan side of a mapping (which way to convert). */
export function sideOf(mapping: Mapping, names: string[], target: Target): "hf" | "tt" {
  const rules = compileRules(mapping, target);
  const hf = names.filter((n) => rules.some((r) => r.hf && matchPattern(r.hf, n))).length;
  const tt = names.filter((n) => { const m = normalizeTtName(n).name; return m !== undefined && rules.some((r) => r.tt && matchPattern(r.tt, m)); }).length;
  return tt > hf ? "tt" : "hf";
}

/** TorchTitan → TorchTitan (offline resharding): same names and bytes, new chunking; placements from the mapping. */
function planReshard(catalog: CatalogLike, opts: PlanOptions & { target: Target }): ConversionPlan {
  const rules = compileRules(opts.mapping, opts.target);
  const dims = resolveDims(opts.mapping, opts.config, opts.configFile ?? "config.json");
  const warnings = checkTargetRequirements(opts.mapping, opts.config, dims, opts.target, opts.configFile ?? "config.json", opts.targetChecks);
  const tensors: TensorPlan[] = [];
  const unmapped: string[] = [];
  const skipped: { name: string; why: string }[] = [];
  for (const stored of [...catalog.tensors.keys()].sort(naturalCompare)) {
    const norm = normalizeTtName(stored);
    if (!norm.name) { skipped.push({ name: stored, why: norm.why! }); continue; }
    const main = mainStackName(opts.mapping, opts.target, norm.name, dims);
    const r = rules.find((x) => x.tt && !x.rule.drop && matchPattern(x.tt, main));
    if (!r) { unmapped.push(stored); continue; }
    const src = catalog.tensors.get(stored)!;
    tensors.push({ name: norm.name, dtype: ruleDType(r.rule, opts.dtype ?? "keep", src.dtype, false, opts.config), shape: [...src.shape], recipe: { op: "source", tensor: stored }, policy: policyOf(r.rule, opts.target) });
  }
  if (unmapped.length && !opts.allowUnmapped) {
    throw new CkptError("UNMAPPED", `${unmapped.length} checkpoint tensor(s) match no ${opts.mapping.architecture} ${opts.target} name: ${unmapped.slice(0, 8).join(", ")}`, { hint: "check --target, or pass --allow-unmapped" });
  }
  return finish({ direction: "tt_to_tt", mapping: opts.mapping.architecture, target: opts.target, tensors, unmapped, skipped, warnings, dims }, catalog);
}

function planHfToTt(source: CatalogLike, opts: PlanOptions & { target: Target }): ConversionPlan {
  const { mapping, config, target } = opts;
  const file = opts.configFile ?? "config.json";
  // names as the rules spell them (language_model. prefixes), towers refused or skipped (--text-only)
  const view = sourceView(mapping, source, opts.features);
  const catalog: CatalogLike = { tensors: view.tensors };
  const dims = resolveDims(mapping, config, file);
  const shapes: ShapeCtx = { dims, fields: dimFields(mapping, config), file };
  const warnings = checkTargetRequirements(mapping, config, dims, target, file, opts.targetChecks);
  // skipped towers are said out loud, never silently: those the target has no module for, and those the user's
  // option (--text-only) leaves out
  for (const tw of mapping.towers ?? []) {
    const why = tw.option ? `${tw.why} (${towerFlag(tw.option)})` : tw.why;
    const names = view.skipped.filter((x) => x.why === why).map((x) => x.name);
    if (names.length) warnings.push(`skipping ${names.length} tensor(s) (${names.slice(0, 3).join(", ")}${names.length > 3 ? ", …" : ""}): ${why}`);
  }
  const rules = compileRules(mapping, target);
  checkQuantizedSources(catalog.tensors, mapping, config, rules, file, view.stored);
  const storedShapes: StoredShapeCheck[] = [];
  const dtypeChoice = opts.dtype ?? "keep";
  const tensors: TensorPlan[] = [];
  const unmapped: string[] = [];
  const skipped: { name: string; why: string }[] = [...view.skipped];
  const stacks = new Map<string, { rule: TensorRule; members: Map<number, string>; vals: Map<string, Record<string, number>> }>();
  const fused = new Map<string, { rule: TensorRule; members: Map<number, ConcatMember>; dequantized?: boolean }>();
  /** Outputs written in a decode's keepDtype under --dtype keep, by op (each op's note says why). */
  const kept = new Map<QuantOp, number>();
  const keep = (rule: TensorRule) => {
    const op = transformOf(rule);
    if (op) kept.set(op, (kept.get(op) ?? 0) + 1);
  };
  const produced = new Set<string>();
  /** Outputs whose dtype the mapping fixes (float32 buffers): not FSDP parameters, so left out of the mixed-dtype warning. */
  const pinned = new Set<string>();

  // a stored tensor, or a quantized op's decode of it when it carries that op's companion (FP8 block scales)
  const leafRecipe = (name: string): { recipe: Recipe; dequantized: boolean } => {
    for (const op of QUANT_OPS) {
      const leaf = op.planStored?.(name, catalog, mapping);
      if (leaf) return leaf;
    }
    return { recipe: { op: "source", tensor: name }, dequantized: false };
  };

  const transformCtx: PlanContext = { mapping, dims, config, file, stored: view.stored };
  const emit = (rule: TensorRule, ttName: string, hfName: string, vals: Record<string, number> = {}) => {
    const src = catalog.tensors.get(hfName)!;
    const t = rule.transform ? transformedLeaf(rule, hfName, vals, catalog, () => leafRecipe(hfName), transformCtx) : undefined;
    checkShape(rule, hfName, t?.hfShape ?? src.shape, shapes);
    let { recipe, dequantized } = t ?? leafRecipe(hfName);
    if (rule.rope) {
      const { heads, headDim } = checkRope(rule, hfName, src.shape, dims, file);
      recipe = { op: "rope", heads, headDim, direction: "hf_to_tt", input: recipe };
    }
    const dtype = t?.keepDtype && dtypeChoice === "keep" && !rule.dtype ? t.keepDtype : ruleDType(rule, dtypeChoice, src.dtype, dequantized, config);
    if (t?.keepDtype) keep(rule);
    if (t?.shapeCheck) storedShapes.push(t.shapeCheck);
    tensors.push({ name: ttName, dtype, shape: [...(t?.shape ?? src.shape)], recipe, policy: policyOf(rule, target) });
    if (rule.dtype) pinned.add(ttName);
    produced.add(ttName);
  };
  const consumed = new Set<string>();
  for (const op of QUANT_OPS) for (const n of op.companions({ tensors: catalog.tensors, mapping, rules })) consumed.add(n);

  /** Layouts a tensor's shape could not tell apart (they coincide for this config) → the tensors read as the first. */
  const ambiguous = new Map<string, string[]>();
  const rulesByHf = new Map<string, CompiledRule[]>();
  for (const r of rules) if (r.hf) rulesByHf.set(r.rule.hf!, [...(rulesByHf.get(r.rule.hf!) ?? []), r]);
  const names = [...catalog.tensors.keys()].sort(naturalCompare);
  for (const name of names) {
    if (consumed.has(name)) continue; // scales (and INT4 shapes), read with their weight
    let hit: { r: CompiledRule; vals: Record<string, number> } | undefined;
    for (const r of rules) {
      if (!r.hf) continue;
      const vals = matchPattern(r.hf, name);
      if (vals) { hit = { r, vals }; break; }
    }
    if (!hit) { unmapped.push(name); continue; }
    // alternative layouts of this HF tensor (rules sharing its name): the one its stored shape fits
    const layout = rulesForShape(rulesByHf.get(hit.r.rule.hf!)!, name, catalog.tensors.get(name)!.shape, shapes, (l) => ambiguous.set(l.join(" / "), [...(ambiguous.get(l.join(" / ")) ?? []), name]));
    hit.r = layout[0]!;
    const { rule } = hit.r;
    if (rule.drop) { skipped.push({ name, why: "dropped by the mapping" }); continue; }
    // layers beyond the main stack (MTP): skipped and reported, or renamed into mtp_layers with --mtp
    const extra = hit.vals.L !== undefined ? extraLayer(mapping, target, hit.vals.L, dims, opts.features ?? []) : undefined;
    if (extra && "skip" in extra) { skipped.push({ name, why: extra.skip }); continue; }
    if (!hit.r.tt) { skipped.push({ name, why: extra ? (mapping.extra_layers?.shared_note ?? `no ${target} counterpart`) : `no ${target} counterpart` }); continue; }
    checkLayerType(rule, name, hit.vals, config, file);
    const ttOf = (vals: Record<string, number>, r: CompiledRule = hit!.r) => (extra ? extra.rename(fillPattern(r.tt!.source, vals)) : fillPattern(r.tt!.source, vals));
    const cs = concatStep(rule);
    if (cs) {
      // one part of a TorchTitan tensor joined from several HF tensors: gathered, joined once all parts are known
      const key = ttOf(hit.vals);
      let g = fused.get(key);
      if (!g) fused.set(key, (g = { rule, members: new Map() }));
      const src = catalog.tensors.get(name)!;
      checkShape(rule, name, src.shape, shapes);
      const lr = leafRecipe(name);
      g.dequantized ||= lr.dequantized;
      g.members.set(cs.index, { name, recipe: lr.recipe, shape: [...src.shape], dtype: src.dtype });
      continue;
    }
    if (splitStep(rule)) {
      // every part of a split HF tensor is its own TorchTitan tensor: one rule per part, all naming this HF tensor
      for (const r of layout) if (r.tt && splitStep(r.rule)) emit(r.rule, ttOf(hit.vals, r), name, hit.vals);
      continue;
    }
    if (rule.experts && hit.r.hf!.keys.includes("E")) {
      const key = ttOf(hit.vals);
      let g = stacks.get(key);
      if (!g) stacks.set(key, (g = { rule, members: new Map(), vals: new Map() }));
      g.members.set(hit.vals.E!, name);
      g.vals.set(name, hit.vals);
      continue;
    }
    emit(rule, ttOf(hit.vals), name, hit.vals);
  }

  for (const [ttName, g] of fused) {
    const parts = concatGroup(mapping, g.rule, target);
    const { recipe, shape } = joinParts(ttName, parts, g.members);
    tensors.push({ name: ttName, dtype: ruleDType(g.rule, dtypeChoice, g.members.get(0)!.dtype, !!g.dequantized, config), shape, recipe, policy: policyOf(g.rule, target) });
    produced.add(ttName);
  }

  for (const [ttName, g] of stacks) {
    const expected = dims[g.rule.experts!];
    const ids = [...g.members.keys()].sort((a, b) => a - b);
    const count = expected ?? ids.length;
    const missing = [...Array(count).keys()].filter((e) => !g.members.has(e));
    if (missing.length || ids.length !== count) {
      throw new CkptError("MISSING_TENSOR", `expert stack ${ttName} is incomplete: missing expert ids ${missing.join(", ") || "(extra ids beyond " + count + ")"}`, { tensor: ttName });
    }
    const first = catalog.tensors.get(g.members.get(0)!)!;
    const inputs: Recipe[] = [];
    let dequantized = false;
    let memberShape = first.shape;
    let keepDtype: DType | undefined;
    for (let e = 0; e < count; e++) {
      const hfName = g.members.get(e)!;
      const t = catalog.tensors.get(hfName)!;
      if (t.dtype !== first.dtype || t.shape.join() !== first.shape.join()) throw new CkptError("SHAPE", `experts of ${ttName} differ: ${hfName} is ${t.dtype} [${t.shape}], expert 0 is ${first.dtype} [${first.shape}]`, { tensor: hfName });
      // a transformed member (INT4 weight_packed) has its decoded shape; plain members their stored one
      const tl = g.rule.transform ? transformedLeaf(g.rule, hfName, g.vals.get(hfName)!, catalog, () => leafRecipe(hfName), transformCtx) : undefined;
      checkShape(g.rule, hfName, tl?.hfShape ?? t.shape, shapes);
      const lr = tl ?? leafRecipe(hfName);
      if (tl) { memberShape = tl.shape; keepDtype = tl.keepDtype; }
      if (tl?.shapeCheck) storedShapes.push(tl.shapeCheck);
      dequantized ||= lr.dequantized;
      inputs.push(lr.recipe);
    }
    const stackDtype = keepDtype && dtypeChoice === "keep" && !g.rule.dtype ? keepDtype : ruleDType(g.rule, dtypeChoice, first.dtype, dequantized, config);
    if (keepDtype) keep(g.rule);
    tensors.push({ name: ttName, dtype: stackDtype, shape: [count, ...memberShape], recipe: { op: "stack", inputs }, policy: policyOf(g.rule, target) });
    produced.add(ttName);
    if (g.rule.dtype) pinned.add(ttName);
  }

  // Tied embeddings: the target expects the output projection; fill it from the embedding (layout §5).
  const tiedFlag = mapping.tied && config[mapping.tied.flag] === true;
  if (mapping.tied && !catalog.tensors.has(mapping.tied.hf) && catalog.tensors.has(mapping.tied.from)) {
    if (!tiedFlag) throw new CkptError("MISSING_TENSOR", `${mapping.tied.hf} is missing and ${mapping.tied.flag} is not true in config.json`, { tensor: mapping.tied.hf, file });
    const r = rules.find((x) => x.rule.hf === mapping.tied!.hf);
    if (r?.tt) emit(r.rule, r.tt.source, mapping.tied.from);
  }

  // Synthesised tensors (e.g. MoE expert bias): zeros wherever their companion exists.
  for (const r of rules) {
    const s = r.rule.synth;
    if (!s || !r.tt) continue;
    if (s.omit_option && opts.omit?.includes(s.omit_option)) continue;
    const withPat = compilePattern(ttPattern({ tt: s.with }, target) ?? s.with);
    for (const name of [...produced]) {
      const vals = matchPattern(withPat, name);
      if (!vals) continue;
      const out = fillPattern(r.tt.source, vals);
      if (produced.has(out)) continue;
      const shape = s.zeros.map((e) => {
        const v = evalDimExpr(e, dims);
        if (v === undefined) throw new CkptError("CONFIG", `cannot size synthesised ${out}: unknown dims '${e}'`, { file });
        return v;
      });
      tensors.push({ name: out, dtype: s.dtype, shape, recipe: { op: "zeros" }, policy: policyOf(r.rule, target) });
      produced.add(out);
      pinned.add(out);
    }
  }

  // Every expected HF tensor must be there.
  const missing: string[] = [];
  const layerTypes = Array.isArray(config.layer_types) ? (config.layer_types as unknown[]) : undefined;
  const inLayer = (r: TensorRule) => (name: string) => {
    if (!r.layer_type) return true;
    const L = /\.(\d+)\./.exec(name);
    return L !== null && layerTypes?.[Number(L[1])] === r.layer_type;
  };
  // a tower the user skipped (--text-only, --drop) is not expected either
  const skippedTowers = (mapping.towers ?? []).filter((tw) => tw.option && opts.features?.includes(tw.option)).flatMap((tw) => tw.prefixes);
  const inSkippedTower = (hf: string) => skippedTowers.some((p) => hf.startsWith(p));
  for (const r of rules) {
    if (!r.hf || r.rule.drop || r.rule.optional || r.rule.synth || r.rule.one_of || inSkippedTower(r.rule.hf!)) continue;
    if (r.rule.layer_type && !layerTypes) continue; // no layer_types in config.json: which layers hold it is unknown
    if (mapping.tied && r.rule.hf === mapping.tied.hf && tiedFlag) continue;
    for (const name of expandExpected(r.rule.hf!, dims, r.rule.experts, r.rule.layers).filter(inLayer(r.rule))) if (!catalog.tensors.has(name)) missing.push(name);
  }
  // Alternative layouts of one tensor (`one_of`), layer by layer: one of them complete (per-expert tensors or one
  // fused tensor). A group of optional rules may be absent from a layer altogether (a dense layer), never partial.
  for (const group of new Set(rules.map((r) => r.rule.one_of).filter((g): g is string => g !== undefined))) {
    const alts = rules.filter((r) => r.rule.one_of === group && r.hf && !(r.rule.layer_type && !layerTypes));
    const optional = alts.every((r) => r.rule.optional);
    const byLayer = (names: string[]) => {
      const m = new Map<string, string[]>();
      for (const n of names) { const k = /\.(\d+)\./.exec(n)?.[1] ?? ""; m.set(k, [...(m.get(k) ?? []), n]); }
      return m;
    };
    const lists = alts.map((r) => byLayer(expandExpected(r.rule.hf!, dims, r.rule.experts, r.rule.layers).filter(inLayer(r.rule))));
    const layerKeys = new Set(lists.flatMap((l) => [...l.keys()]));
    for (const k of layerKeys) {
      const per = lists.map((l) => l.get(k) ?? []);
      if (per.some((names) => names.length > 0 && names.every((n) => catalog.tensors.has(n)))) continue;
      if (optional && per.every((names) => names.every((n) => !catalog.tensors.has(n)))) continue;
      missing.push(per.map((names) => (names.length > 1 ? `${names[0]} … (${names.length})` : names[0])).join(" or "));
    }
  }
  if (missing.length) {
    throw new CkptError("MISSING_TENSOR", `${missing.length} expected tensor(s) missing from the source: ${missing.slice(0, 8).join(", ")}${missing.length > 8 ? ", …" : ""}`, {
      hint: "is config.json for this checkpoint (num_hidden_layers)?",
    });
  }
  if (unmapped.length && !opts.allowUnmapped) {
    throw new CkptError("UNMAPPED", `${unmapped.length} source tensor(s) have no ${mapping.architecture} mapping: ${unmapped.slice(0, 8).join(", ")}${unmapped.length > 8 ? ", …" : ""}`, {
      hint: "pass --allow-unmapped to skip them",
    });
  }
  if (unmapped.length) warnings.push(`skipping ${unmapped.length} unmapped tensor(s): ${unmapped.slice(0, 8).join(", ")}`);
  for (const [layouts, names] of ambiguous) {
    warnings.push(`${names.length} tensor(s) (${names.slice(0, 2).join(", ")}${names.length > 2 ? ", …" : ""}) fit several layouts with this config (${layouts}): read as the first; if the checkpoint was written in another, the conversion is wrong`);
  }
  if (dtypeChoice === "keep") for (const [op, n] of kept) warnings.push(op.keepNote!(n));
  checkValueLeaves({ tensors }, catalog.tensors, file);
  const kinds = new Set(tensors.filter((t) => isCastable(t.dtype) && !pinned.has(t.name)).map((t) => t.dtype));
  if (kinds.size > 1) warnings.push(`output mixes float dtypes (${[...kinds].join(", ")}); FSDP2 flat parameters need one dtype: consider --dtype`);
  return finish({ direction: "hf_to_tt", mapping: mapping.architecture, target, tensors, unmapped, skipped, warnings, dims, ...(storedShapes.length ? { storedShapes } : {}) }, catalog);
}

/**
 * The recipe, logical HF shape (what `shape` in the mapping describes) and output shape of a rule's transform: a
 * quantized op's decode (its module in ops/ plans it), a reshape view, or structural steps (transpose swaps the last
 * two dims, split/chunk slice).
 */
function transformedLeaf(rule: TensorRule, name: string, vals: Record<string, number>, catalog: CatalogLike, plain: () => { recipe: Recipe; dequantized: boolean },
  ctx?: PlanContext): PlannedLeaf<Recipe> {
  const src = catalog.tensors.get(name)!;
  const sw = swapHalvesDim(rule);
  if (sw !== undefined) {
    const inner = plain();
    return { recipe: swapHalves(inner.recipe, src.shape, sw, name), dequantized: inner.dequantized, hfShape: [...src.shape], shape: [...src.shape] };
  }
  // a quantized op's decode (ops/)
  const q = transformOf(rule);
  if (q) {
    if (!ctx) throw new CkptError("INTERNAL", `${q.op} transform of ${name} without a config`);
    return q.planRule!(rule, name, vals, catalog, ctx);
  }
  const rs = valueOp(rule, "reshape");
  if (rs) {
    // a view of the stored (contiguous) tensor: dim 0 kept, the rest regrouped; no element moves
    const inner = plain();
    if (inner.recipe.op !== "source") throw new CkptError("SHAPE", `reshape applies to a stored tensor, not to ${inner.recipe.op}`, { tensor: name });
    const shape = reshapeTo(rs.shape, src.shape, ctx?.dims ?? {}, name);
    return { recipe: { op: "reshape", shape, from: [...src.shape], input: inner.recipe }, dequantized: false, hfShape: [...src.shape], shape };
  }
  // structural steps (transpose, split, chunk), in order: whole elements move, nothing is computed
  const inner = plain();
  if (inner.recipe.op !== "source") throw new CkptError("SHAPE", `${transformSteps(rule).map((x) => x.op).join(" + ")} applies to a stored tensor, not to ${inner.recipe.op}`, { tensor: name });
  let recipe: Recipe = inner.recipe;
  const shape = [...src.shape];
  for (const step of transformSteps(rule)) {
    if (step.op === "transpose") {
      if (shape.length < 2) throw new CkptError("SHAPE", `transpose needs a stored tensor of 2 or more dims, got [${src.shape}]`, { tensor: name });
      [shape[shape.length - 2], shape[shape.length - 1]] = [shape[shape.length - 1]!, shape[shape.length - 2]!];
      recipe = { op: "transpose", input: recipe };
      continue;
    }
    if (step.op !== "split" && step.op !== "chunk") throw new CkptError("INTERNAL", `${step.op} in a transform list`);
    const part = splitPart(step, shape, ctx?.dims ?? {}, name);
    recipe = { op: "slice", dim: step.dim, start: part.start, size: part.size, input: recipe };
    shape[step.dim] = part.size;
  }
  return { recipe, dequantized: false, hfShape: [...src.shape], shape };
}

/** The shape a `reshape` step views `from` as: its dims expressions evaluated; element count and dim 0 must agree. */
function reshapeTo(exprs: string[], from: readonly number[], dims: Record<string, number>, tensor: string): number[] {
  const shape = exprs.map((e) => evalDimExpr(e, dims));
  if (shape.some((v) => v === undefined)) throw new CkptError("CONFIG", `reshape to [${exprs.join(", ")}]: a dims value is missing from config.json`, { tensor, hint: "a tower's dims come from its nested config (e.g. vision_config); --text-only skips a vision tower" });
  const n = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
  if (n(shape as number[]) !== n(from) || shape[0] !== from[0]) {
    throw new CkptError("SHAPE", `reshape [${from}] → [${shape}] (${exprs.join(", ")}): the element count and dim 0 must agree`, { tensor });
  }
  return shape as number[];
}

/** Sizes of the parts a split/chunk step cuts `shape[dim]` into (dims expressions evaluated; they must add up). */
function splitSizes(step: Extract<Transform, { op: "split" | "chunk" }>, shape: number[], dims: Record<string, number>, tensor: string): number[] {
  const total = shape[step.dim];
  if (total === undefined) throw new CkptError("SHAPE", `${step.op} along dim ${step.dim} of a ${shape.length}-D tensor [${shape}]`, { tensor });
  if (step.op === "chunk") {
    if (total % step.chunks !== 0) throw new CkptError("SHAPE", `chunk into ${step.chunks} along dim ${step.dim}: ${total} does not divide`, { tensor });
    return Array<number>(step.chunks).fill(total / step.chunks);
  }
  const sizes = step.sizes.map((e) => {
    const v = evalDimExpr(e, dims);
    if (v === undefined) throw new CkptError("CONFIG", `cannot size the split of ${tensor}: config lacks a dim of '${e}'`, { tensor });
    return v;
  });
  const sum = sizes.reduce((a, b) => a + b, 0);
  if (sum !== total) {
    throw new CkptError("CONFIG", `config.json is inconsistent with the tensor: dim ${step.dim} is ${total}, but the split [${step.sizes.join(", ")}] = [${sizes.join(", ")}] adds up to ${sum}`, { tensor });
  }
  return sizes;
}

function splitPart(step: Extract<Transform, { op: "split" | "chunk" }>, shape: number[], dims: Record<string, number>, tensor: string): { start: number; size: number } {
  const sizes = splitSizes(step, shape, dims, tensor);
  return { start: sizes.slice(0, step.index).reduce((a, b) => a + b, 0), size: sizes[step.index]! };
}

/** A tensor of a rule with `layer_type` found in a layer of another type (config `layer_types`): refused. */
function checkLayerType(rule: TensorRule, name: string, vals: Record<string, number>, config: Record<string, unknown>, file: string): void {
  if (!rule.layer_type || vals.L === undefined || !Array.isArray(config.layer_types)) return;
  const t = (config.layer_types as unknown[])[vals.L];
  if (t !== rule.layer_type) {
    throw new CkptError("CONFIG", `config.json is inconsistent with the tensor: it belongs to a ${rule.layer_type} layer, but layer_types[${vals.L}] is ${JSON.stringify(t ?? null)}`, { tensor: name, file });
  }
}

/** Concrete names a pattern implies: layers 0..layers-1 (and experts 0..E-1). */
function expandExpected(pattern: string, dims: Record<string, number>, expertsDim?: string, layersDim = "layers"): string[] {
  const hasL = pattern.includes("{L}");
  const hasE = pattern.includes("{E}");
  const Ls = hasL ? [...Array(dims[layersDim] ?? 0).keys()] : [0];
  const Es = hasE ? [...Array(dims[expertsDim ?? "experts"] ?? 0).keys()] : [0];
  const out: string[] = [];
  for (const L of Ls) for (const E of Es) out.push(fillPattern(pattern, { L, E }));
  return out;
}

/** Guesses which TorchTitan layout a key set was written for: the target whose patterns match most keys. */
export function detectTarget(mapping: Mapping, names: string[]): Target {
  let best: Target = mapping.targets[0]!;
  let bestHits = -1;
  for (const target of TARGETS.filter((t) => mapping.targets.includes(t))) {
    const pats = compileRules(mapping, target).filter((r) => r.tt).map((r) => r.tt!);
    const hits = names.filter((n) => pats.some((p) => matchPattern(p, n))).length;
    if (hits > bestHits) { best = target; bestHits = hits; }
  }
  return best;
}

function planTtToHf(catalog: CatalogLike, opts: PlanOptions & { target: Target }, rawConfig: Record<string, unknown>): ConversionPlan {
  const { mapping, config, target } = opts;
  const file = opts.configFile ?? "config.json";
  const dims = resolveDims(mapping, config, file);
  const shapes: ShapeCtx = { dims, fields: dimFields(mapping, config), file };
  // the wrapper's names, or the text-only model's (a --text-only conversion)
  const output = hfOutputLayout(mapping, rawConfig, [...catalog.tensors.keys()].map((n) => normalizeTtName(n).name ?? n), file);
  const rules = compileRules(mapping, target);
  const dtypeChoice = opts.dtype ?? "keep";
  const tensors: TensorPlan[] = [];
  const unmapped: string[] = [];
  const skipped: { name: string; why: string }[] = [];
  const warnings: string[] = [];
  const tiedFlag = mapping.tied && config[mapping.tied.flag] === true;
  const parts = new Map<string, SplitGroup>();
  // a tower the target never had cannot come back: a config that declares it describes a model this output is not
  for (const tw of mapping.towers ?? []) {
    if (!tw.config_flag || !config[tw.config_flag] || tw.convert) continue;
    warnings.push(`config.json has ${tw.config_flag} = ${JSON.stringify(config[tw.config_flag])}, but the output has no ${tw.prefixes.map((p) => p + "*").join(" / ")} (${tw.why}); loading it builds that part at random: restore those tensors from the source checkpoint, or set ${tw.config_flag} to false`);
  }

  for (const stored of [...catalog.tensors.keys()].sort(naturalCompare)) {
    const norm = normalizeTtName(stored);
    if (!norm.name) { skipped.push({ name: stored, why: norm.why! }); continue; }
    let hit: { r: CompiledRule; vals: Record<string, number> } | undefined;
    for (const r of rules) {
      // MXFP4 rules describe the packed HF layout; --to hf writes the decoded one (the rule's `transpose` sibling)
      if (!r.tt || r.rule.drop || transformOf(r.rule)) continue;
      const vals = matchPattern(r.tt, mainStackName(mapping, target, norm.name, dims));
      if (vals) { hit = { r, vals }; break; }
    }
    if (!hit) { unmapped.push(stored); continue; }
    const { rule } = hit.r;
    if (rule.synth || !rule.hf) { skipped.push({ name: stored, why: "no HF counterpart (synthesised on import)" }); continue; }
    const src = catalog.tensors.get(stored)!;
    if (tiedFlag && rule.hf === mapping.tied!.hf) { skipped.push({ name: stored, why: `tied to the embedding (${mapping.tied!.flag})` }); continue; }
    const dtype = ruleDType(rule, dtypeChoice, src.dtype, false, config);
    if (rule.experts && rule.hf.includes("{E}")) {
      for (let e = 0; e < src.shape[0]!; e++) {
        const hfName = fillPattern(rule.hf, { ...hit.vals, E: e });
        const shape = src.shape.slice(1);
        checkShape(rule, hfName, shape, shapes);
        tensors.push({ name: hfName, dtype, shape, recipe: { op: "select", index: e, input: { op: "source", tensor: stored } }, policy: { tp: "replicate" } });
      }
      continue;
    }
    const hfName = fillPattern(rule.hf, hit.vals);
    if (concatStep(rule)) {
      // the joined TorchTitan tensor back into its HF parts, each a slice sized by its rule's shape
      const partRules = concatGroup(mapping, rule, target);
      const names = partRules.map((r) => fillPattern(r.hf!, hit!.vals));
      for (const p of splitParts(stored, src.shape, partRules, dims, names)) tensors.push({ name: p.name, dtype, shape: p.shape, recipe: p.recipe, policy: { tp: "replicate" } });
      continue;
    }
    const split = splitStep(rule);
    if (split) {
      // one part of a split HF tensor: gathered, and concatenated once all parts are known
      let g = parts.get(hfName);
      if (!g) parts.set(hfName, (g = { rule, step: split, members: new Map() }));
      if (g.rule.hf !== rule.hf || g.step.dim !== split.dim) throw new CkptError("MAPPING", `${hfName}: split parts disagree on their HF tensor or dim`, { tensor: stored });
      g.members.set(split.index, { stored, rule, tt: fillPattern(hit.r.tt!.source, hit.vals) });
      continue;
    }
    if (transformSteps(rule).length === 1 && transformSteps(rule)[0]!.op === "transpose") {
      const shape = [...src.shape];
      if (shape.length < 2) throw new CkptError("SHAPE", `transpose needs 2 or more dims, got [${shape}]`, { tensor: stored });
      [shape[shape.length - 2], shape[shape.length - 1]] = [shape[shape.length - 1]!, shape[shape.length - 2]!];
      checkShape(rule, hfName, shape, shapes);
      tensors.push({ name: hfName, dtype, shape, recipe: { op: "transpose", input: { op: "source", tensor: stored } }, policy: { tp: "replicate" } });
      continue;
    }
    const rs = valueOp(rule, "reshape");
    if (rs) {
      // the inverse view: the TorchTitan tensor back to the HF shape the rule describes
      const shape = (rule.shape ?? []).map((e) => evalDimExpr(e, dims));
      if (!rule.shape || shape.some((v) => v === undefined)) throw new CkptError("MAPPING", `${hfName}: a reshape rule needs its HF shape in dims expressions`, { tensor: stored });
      if (reshapeTo(rs.shape, shape as number[], dims, stored).join() !== src.shape.join()) throw new CkptError("SHAPE", `${stored} is [${src.shape}], not the reshape of ${hfName} [${shape}]`, { tensor: stored });
      tensors.push({ name: hfName, dtype, shape: shape as number[], recipe: { op: "reshape", shape: shape as number[], from: [...src.shape], input: { op: "source", tensor: stored } }, policy: { tp: "replicate" } });
      continue;
    }
    checkShape(rule, hfName, src.shape, shapes);
    let recipe: Recipe = { op: "source", tensor: stored };
    const sw = swapHalvesDim(rule);
    if (sw !== undefined) recipe = swapHalves(recipe, src.shape, sw, stored);
    if (rule.rope) {
      const { heads, headDim } = checkRope(rule, stored, src.shape, dims, file);
      recipe = { op: "rope", heads, headDim, direction: "tt_to_hf", input: recipe };
    }
    tensors.push({ name: hfName, dtype, shape: [...src.shape], recipe, policy: { tp: "replicate" } });
  }
  for (const [hfName, g] of parts) tensors.push(concatParts(hfName, g, catalog, mapping, target, shapes, dtypeChoice, config));
  for (const t of tensors) t.name = output.rename(t.name);
  if (unmapped.length && !opts.allowUnmapped) {
    throw new CkptError("UNMAPPED", `${unmapped.length} checkpoint tensor(s) match no ${mapping.architecture} ${target} name: ${unmapped.slice(0, 8).join(", ")}${unmapped.length > 8 ? ", …" : ""}`, {
      hint: "check --target, or pass --allow-unmapped",
    });
  }
  if (unmapped.length) warnings.push(`skipping ${unmapped.length} unmapped tensor(s): ${unmapped.slice(0, 8).join(", ")}`);
  return finish({ direction: "tt_to_hf", mapping: mapping.architecture, target, tensors, unmapped, skipped, warnings, dims, ...(output.textOnly ? { hfConfig: "text-only" as const } : {}) }, catalog);
}

interface SplitGroup {
  rule: TensorRule;
  step: Extract<Transform, { op: "split" | "chunk" }>;
  members: Map<number, { stored: string; rule: TensorRule; tt: string }>;
}

/**
 * The inverse of a split/chunk (--to hf): each TorchTitan part with the steps after the split undone (a transpose
 * transposed back), concatenated along the split dim, then the steps before the split undone. Every part must be there.
 */
function concatParts(hfName: string, g: SplitGroup, catalog: CatalogLike, mapping: Mapping, target: Target, shapes: ShapeCtx,
  dtypeChoice: DTypeChoice, config: Record<string, unknown>): TensorPlan {
  const { dims, file } = shapes;
  const count = g.step.op === "chunk" ? g.step.chunks : g.step.sizes.length;
  const siblings = mapping.tensors.filter((r) => r.hf === g.rule.hf && splitStep(r) && JSON.stringify(r.shape) === JSON.stringify(g.rule.shape));
  const inputs: Recipe[] = [];
  const sizes: number[] = [];
  let shape: number[] | undefined;
  let dtype: DType | undefined;
  for (let i = 0; i < count; i++) {
    const m = g.members.get(i);
    if (!m) {
      const r = siblings.find((x) => splitStep(x)!.index === i);
      const want = r ? ttPattern(r, target) : undefined;
      throw new CkptError("MISSING_TENSOR", `${hfName} is the concatenation of ${count} parts; part ${i}${want ? ` (${want})` : ""} is missing from the checkpoint`, { tensor: hfName });
    }
    const steps = transformSteps(m.rule);
    const at = steps.findIndex((x) => x.op === "split" || x.op === "chunk");
    const src = catalog.tensors.get(m.stored)!;
    let recipe: Recipe = { op: "source", tensor: m.stored };
    const s = [...src.shape];
    const swap = () => ([s[s.length - 2], s[s.length - 1]] = [s[s.length - 1]!, s[s.length - 2]!]);
    for (const step of steps.slice(at + 1).reverse()) if (step.op === "transpose") { recipe = { op: "transpose", input: recipe }; swap(); }
    const d = ruleDType(m.rule, dtypeChoice, src.dtype, false, config);
    if (dtype !== undefined && d !== dtype) throw new CkptError("DTYPE", `parts of ${hfName} differ in dtype: ${m.stored} is ${d}, part 0 is ${dtype}`, { tensor: m.stored });
    dtype = d;
    if (shape && (s.length !== shape.length || s.some((v, j) => j !== g.step.dim && v !== shape![j]))) {
      throw new CkptError("SHAPE", `parts of ${hfName} do not line up along dim ${g.step.dim}: ${m.stored} is [${s}], part 0 [${shape}]`, { tensor: m.stored });
    }
    shape ??= [...s];
    inputs.push(recipe);
    sizes.push(s[g.step.dim]!);
  }
  const out = [...shape!];
  out[g.step.dim] = sizes.reduce((a, b) => a + b, 0);
  let recipe: Recipe = { op: "concat", dim: g.step.dim, sizes, inputs };
  // the sizes the mapping names must be the sizes found (a checkpoint from another config is refused, not glued)
  const expect = splitSizes(g.step, out, dims, hfName);
  if (expect.some((v, i) => v !== sizes[i])) throw new CkptError("CONFIG", `parts of ${hfName} have sizes [${sizes}] along dim ${g.step.dim}, config implies [${expect}]`, { tensor: hfName, file });
  const at = transformSteps(g.rule).findIndex((x) => x.op === "split" || x.op === "chunk");
  for (const step of transformSteps(g.rule).slice(0, at).reverse()) if (step.op === "transpose") {
    recipe = { op: "transpose", input: recipe };
    [out[out.length - 2], out[out.length - 1]] = [out[out.length - 1]!, out[out.length - 2]!];
  }
  checkShape(g.rule, hfName, out, shapes);
  return { name: hfName, dtype: dtype!, shape: out, recipe, policy: { tp: "replicate" } };
}
