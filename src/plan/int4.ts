// compressed-tensors `pack-quantized` INT4 sources (Kimi K2 Thinking / K2.5 / K2.6 / K2.7 routed experts; decode in docs/numerics.md §11):
// which config says so, which tensors belong to a packed module, and the recipe and shapes of its decoded weight.
// Numerics (why F32 is exact and BF16 is compressed-tensors' own single rounding): src/kernels/reference.ts.
import { CkptError } from "../errors.js";
import type { DType } from "../dtypes.js";
import type { CatalogTensor } from "../catalog-types.js";
import { evalDimExpr } from "../mapping/load.js";
import { fillPattern, matchPattern, type CompiledPattern } from "../mapping/patterns.js";
import { valueOp, type TensorRule } from "../mapping/schema.js";
import type { Recipe, StoredShapeCheck } from "./recipe.js";

interface WeightArgs {
  num_bits?: unknown; symmetric?: unknown; strategy?: unknown; group_size?: unknown; type?: unknown; actorder?: unknown;
}

/**
 * The group size of config.json's compressed-tensors quantization, refusing anything the INT4 decoder does not
 * implement (asymmetric zero points, activation ordering, other bit widths or strategies, other formats).
 */
const groupSizes = new WeakMap<object, number>();
export function int4GroupSize(config: Record<string, unknown>, file: string, tensor: string): number {
  const known = groupSizes.get(config);
  if (known !== undefined) return known;
  const q = config.quantization_config as Record<string, unknown> | undefined;
  const why: (what: string) => never = (what) => {
    throw new CkptError("CONFIG", `INT4 weight_packed needs quantization_config with quant_method compressed-tensors, format pack-quantized, 4-bit symmetric group weights: ${what}`, { file, tensor });
  };
  if (!q || typeof q !== "object") why("config.json has no quantization_config");
  if (q.quant_method !== "compressed-tensors") why(`quant_method is ${JSON.stringify(q.quant_method)}`);
  const groups = q.config_groups as Record<string, { weights?: WeightArgs; format?: unknown; input_activations?: unknown }> | undefined;
  if (!groups || typeof groups !== "object" || Object.keys(groups).length === 0) why("no config_groups");
  let size: number | undefined;
  for (const [name, g] of Object.entries(groups)) {
    const format = g.format ?? q.format;
    if (format !== "pack-quantized") why(`config_groups.${name} format is ${JSON.stringify(format)}`);
    const w = g.weights;
    if (!w) why(`config_groups.${name} has no weights`);
    if (w.num_bits !== 4) why(`config_groups.${name}.weights.num_bits is ${JSON.stringify(w.num_bits)}`);
    if (w.type !== undefined && w.type !== "int") why(`config_groups.${name}.weights.type is ${JSON.stringify(w.type)}`);
    if (w.symmetric !== true) why(`config_groups.${name}.weights.symmetric is ${JSON.stringify(w.symmetric)} (zero points are not implemented)`);
    if (w.strategy !== "group") why(`config_groups.${name}.weights.strategy is ${JSON.stringify(w.strategy)}`);
    if (w.actorder !== undefined && w.actorder !== null) why(`config_groups.${name}.weights.actorder is ${JSON.stringify(w.actorder)} (g_idx is not implemented)`);
    if (!Number.isInteger(w.group_size) || (w.group_size as number) <= 0 || (w.group_size as number) % 2 !== 0) why(`config_groups.${name}.weights.group_size is ${JSON.stringify(w.group_size)}`);
    if (size !== undefined && size !== w.group_size) why("config groups with different group sizes");
    size = w.group_size as number;
  }
  groupSizes.set(config, size!);
  return size!;
}

/** compressed-tensors' name matching: `re:` entries are regexes matched at the start (Python re.match), others exact. */
const ignoreLists = new WeakMap<object, ((name: string) => boolean)[]>();
export function isIgnored(config: Record<string, unknown>, moduleName: string): boolean {
  let tests = ignoreLists.get(config);
  if (!tests) {
    const q = config.quantization_config as { ignore?: unknown } | undefined;
    const ignore = Array.isArray(q?.ignore) ? (q!.ignore as unknown[]).filter((x): x is string => typeof x === "string") : [];
    tests = ignore.map((t) => {
      if (!t.startsWith("re:")) return (n: string) => n === t;
      const re = new RegExp(`^(?:${t.slice(3)})`);
      return (n: string) => re.test(n);
    });
    ignoreLists.set(config, tests);
  }
  return tests.some((f) => f(moduleName));
}

/** HF names of the scale and shape companions of packed weights present in the catalog (read with them, not converted alone). */
export function int4CompanionNames(rules: { rule: TensorRule; hf?: CompiledPattern }[], names: Iterable<string>): Set<string> {
  const out = new Set<string>();
  const int4 = rules.filter((r) => valueOp(r.rule, "int4") && r.hf);
  for (const name of names) {
    for (const r of int4) {
      const vals = matchPattern(r.hf!, name);
      if (!vals) continue;
      const t = valueOp(r.rule, "int4")!;
      out.add(fillPattern(t.scale, vals));
      out.add(fillPattern(t.shape, vals));
    }
  }
  return out;
}

/**
 * Recipe and shapes of a packed weight: I32 [out, P] + BF16 scale [out, ceil(in / group)] decode to [out, in].
 * `in` is the mapping's shape for the rule (config dims) when it has one, else P · 8 (compressed-tensors pads a
 * row to whole words); both must agree with P and the scale's columns. `storedName` is the module's name as stored
 * (before prefix normalisation), for the config's `ignore` list.
 */
export function int4Leaf(rule: TensorRule, name: string, vals: Record<string, number>, catalog: { tensors: Map<string, CatalogTensor> },
  dims: Record<string, number>, config: Record<string, unknown>, file: string, storedName = name):
  { recipe: Recipe; dequantized: boolean; hfShape: number[]; shape: number[]; keepDtype: DType; shapeCheck: StoredShapeCheck } {
  const t = valueOp(rule, "int4")!;
  const src = catalog.tensors.get(name)!;
  const scaleName = fillPattern(t.scale, vals);
  const s = catalog.tensors.get(scaleName);
  if (src.dtype !== "I32" || src.shape.length !== 2) throw new CkptError("SHAPE", `INT4 weight_packed must be I32 [out, in/8], got ${src.dtype} [${src.shape}]`, { tensor: name });
  if (!s) throw new CkptError("MISSING_TENSOR", `INT4 weight_packed without its scale ${scaleName}`, { tensor: name });
  const module = storedName.replace(/\.weight_packed$/, "");
  if (isIgnored(config, module)) {
    throw new CkptError("CONFIG", `module ${module} is in quantization_config.ignore but stored packed`, { tensor: name, file, hint: "the checkpoint and its config.json disagree" });
  }
  const group = int4GroupSize(config, file, name);
  const [out, P] = src.shape as [number, number];
  const inExpr = rule.shape?.[rule.shape.length - 1];
  const fromDims = inExpr !== undefined ? evalDimExpr(inExpr, dims) : undefined;
  const inn = fromDims ?? P * 8;
  if (Math.ceil(inn / 8) !== P) throw new CkptError("SHAPE", `INT4 weight_packed has ${P} words per row, but ${inn} inputs need ${Math.ceil(inn / 8)}`, { tensor: name, file });
  const wantScale = [out, Math.ceil(inn / group)];
  if (s.dtype !== "BF16" || s.shape.join() !== wantScale.join()) {
    throw new CkptError("SHAPE", `INT4 weight_scale must be BF16 [${wantScale}] (one scale per ${group} inputs of a [${out}, ${inn}] weight), got ${s.dtype} [${s.shape}]`, { tensor: scaleName });
  }
  // weight_shape's presence, dtype and dims are checked by quant-checks.ts; its values once the plan exists
  const shape = [out, inn];
  const ws = catalog.tensors.get(fillPattern(t.shape, vals))!;
  return { recipe: { op: "int4", packed: name, scale: scaleName, group }, dequantized: true, hfShape: shape, shape, keepDtype: "F32", shapeCheck: { tensor: fillPattern(t.shape, vals), of: name, expect: shape, dtype: ws.dtype, pieces: ws.pieces } };
}
