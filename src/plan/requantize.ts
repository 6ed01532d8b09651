// `--to hf --requantize mxfp4|int4` as a plan: the --to hf plan writes each quantized expert in its decoded HF layout
// (the rule its op's `plainSibling` names: mxfp4's `transpose` alternative, int4's plain `.weight`); here each such
// output tensor is replaced by the packed tensors of the rule it inverts (the op's `plan`: mxfp4 `hf` blocks +
// `scales`; int4 `hf` weight_packed + `scale` + `shape`), each computed by an encode op from the same values. The
// names and the encoding both come from the rule being inverted; the executor writes them like any other output
// (streamed, journaled, in the manifest).
import { naturalCompare } from "../util/natural-compare.js";
import { CkptError } from "../errors.js";
import type { CatalogTensor } from "../catalog-types.js";
import type { DType } from "../dtypes.js";
import type { Mapping, TensorRule } from "../mapping/schema.js";
import { valueOp } from "../mapping/schema.js";
import { compilePattern, matchPattern } from "../mapping/patterns.js";
import { type ConversionPlan, type TensorPlan } from "./convert-plan.js";
import { encodedShape } from "./encode.js";
import { requantizeOp } from "../ops/index.js";
import type { EncodedPart, ValueTransform } from "../ops/quant-op.js";
import type { EncodeRecipe, Recipe } from "./recipe.js";

/** The --requantize names: the value transforms whose op has an encode (ops/). */
export type RequantizeKind = ValueTransform;

/** The recipe with its last two dims swapped (a transpose undone rather than stacked). */
function transposed(r: Recipe): Recipe {
  return r.op === "transpose" ? r.input : { op: "transpose", input: r };
}

/** Leaf names of reference tensors (apart from the source's own leaves, which may share names). */
const REFERENCE = "reference:";

/** For each decoded tensor of the output: the rule it inverts (`packed`) and the rule it was written by (`plain`). */
function pairs(mapping: Mapping, kind: RequantizeKind): { plain: TensorRule; packed: TensorRule }[] {
  const out: { plain: TensorRule; packed: TensorRule }[] = [];
  for (const r of mapping.tensors) {
    if (!r.hf || !valueOp(r, kind)) continue;
    const sib = requantizeOp(kind)!.plainSibling(mapping, r);
    if (sib) out.push({ plain: sib, packed: r });
  }
  return out;
}

/** Refuses --requantize up front when the mapping has no rule of that kind to invert (before anything is written). */
export function checkRequantizable(mapping: Mapping, kind: RequantizeKind): void {
  if (pairs(mapping, kind).length === 0) throw new CkptError("USAGE", `--requantize ${kind}: the ${mapping.architecture} mapping has no ${kind} tensors to re-encode`);
}

export interface RequantizeOptions {
  /** The (text) config: the INT4 group size. */
  config: Record<string, unknown>;
  /** dtype of INT4 weight_shape tensors (compressed-tensors writes I64; some releases I32). */
  shapeDtype: "I32" | "I64";
  /**
   * Tensors of the source checkpoint (the --config folder) by mapping-normalised name: packed tensors of the same
   * name, dtype and shape as an output are its reference (their encoding is kept where it decodes exactly).
   */
  reference?: Map<string, CatalogTensor>;
}

/**
 * Replaces the decoded expert tensors of a --to hf plan by encode ops writing the packed tensors (in place).
 * Returns the number of tensors re-encoded.
 */
export function planRequantize(plan: ConversionPlan, mapping: Mapping, kind: RequantizeKind, opts: RequantizeOptions): number {
  const rules = pairs(mapping, kind).map((p) => ({ ...p, pat: compilePattern(p.plain.hf!) }));
  if (rules.length === 0) throw new CkptError("USAGE", `--requantize ${kind}: the ${mapping.architecture} mapping has no ${kind} tensors`);
  const out: TensorPlan[] = [];
  let replaced = 0;
  const refOf = (name: string, dtype: DType, shape: number[]): string | undefined => {
    const t = opts.reference?.get(name);
    return t && t.dtype === dtype && t.shape.join() === shape.join() ? REFERENCE + name : undefined;
  };
  const refLeaves = new Set<string>();
  for (const t of plan.tensors) {
    const hit = rules.map((r) => ({ r, vals: matchPattern(r.pat, t.name) })).find((x) => x.vals);
    if (!hit) { out.push(t); continue; }
    const { plain, packed } = hit.r, vals = hit.vals!;
    if (t.dtype !== "BF16" && t.dtype !== "F32") throw new CkptError("DTYPE", `--requantize needs BF16 or F32 expert values, ${t.name} is ${t.dtype}`, { tensor: t.name });
    const valuesDtype = t.dtype;
    const parts = requantizeOp(kind)!.plan({
      tensor: { name: t.name, dtype: valuesDtype, shape: t.shape, recipe: t.recipe }, transposed: (r) => transposed(r as Recipe),
      plain, packed, vals, config: opts.config, shapeDtype: opts.shapeDtype, reference: refOf,
    }) as EncodedPart<EncodeRecipe>[]; // each part's input is the recipe given (or its transpose): a Recipe
    for (const x of parts) {
      out.push({ name: x.name, dtype: x.dtype, shape: encodedShape(x.recipe), recipe: x.recipe, policy: t.policy });
      for (const n of Object.values(x.recipe.reference ?? {})) refLeaves.add(n);
    }
    replaced++;
  }
  if (replaced === 0) throw new CkptError("REQUANTIZE", `--requantize ${kind}: the output holds no decoded ${kind} expert tensors to re-encode`);
  plan.tensors = out.sort((a, b) => naturalCompare(a.name, b.name));
  for (const n of refLeaves) {
    const t = opts.reference!.get(n.slice(REFERENCE.length))!;
    plan.leaves[n] = { dtype: t.dtype, shape: t.shape, pieces: t.pieces };
  }
  return replaced;
}

/**
 * After the encoded tensors are written: refuses the output when any group had no exact encoding (with the count;
 * the caller discards the partial output), and says how many groups kept the reference's encoding.
 */
export function checkRequantized(kind: RequantizeKind, q: { bad: number; badTensors: number; adopted: number; first?: string } | undefined, referenceId: string | undefined, onWarning?: (msg: string) => void): void {
  if (!q) return;
  if (q.bad) {
    const what = requantizeOp(kind)!.exactWhen;
    throw new CkptError("REQUANTIZE", `--requantize ${kind}: ${q.bad} ${what}, in ${q.badTensors} tensor(s), first ${q.first}; nothing written`, { hint: "drop --requantize to write the bf16/f32 layout" });
  }
  if (q.adopted) onWarning?.(`--requantize ${kind}: ${q.adopted} group(s) have several exact encodings (e.g. an all-zero group takes any scale) and keep the source's (${referenceId}), which decodes to the same values`);
}
