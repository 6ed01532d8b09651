// Two mapping ops that join or reorder whole rows, each with its exact inverse:
// - `concat`: several HF tensors are one TorchTitan tensor (FLUX to_q/to_k/to_v → img_attn.qkv; a single block's
//   [q, k, v, proj_mlp] → linear1). HF → TorchTitan is a `concat` recipe over the parts; --to hf is one `slice` of the
//   TorchTitan tensor per part, sized by the parts' `shape` in the mapping (so a checkpoint from another config is
//   refused, never cut at the wrong row).
// - `swap_halves`: the halves of one dim exchanged (diffusers' norm_out.linear keeps [scale, shift], TorchTitan and
//   BFL [shift, scale]); a concat of the two slices of one tensor, and its own inverse.
// Sharding: both are recipes of `concat` and `slice`, which plan/runs.ts resolves row by row, so an FSDP Shard(0) or
// TP box of the output reads only the source rows inside it (a rank holding rows of `k` reads `to_k` alone).
import { CkptError } from "../errors.js";
import { evalDimExpr } from "../mapping/load.js";
import type { DType } from "../dtypes.js";
import { concatStep, ttOf, type Mapping, type Target, type TensorRule, type Transform } from "../mapping/schema.js";
import type { Recipe } from "./recipe.js";

export { concatStep, type ConcatStep } from "../mapping/schema.js";

/** The dim whose halves a rule's swap_halves step exchanges, if it has one. */
export function swapHalvesDim(rule: { transform?: Transform | Transform[] }): number | undefined {
  const t = rule.transform;
  return t && !Array.isArray(t) && t.op === "swap_halves" ? t.dim : undefined;
}

/** The parts of the concat group `rule` belongs to (same TorchTitan pattern and layout), in `index` order. */
export function concatGroup(mapping: Mapping, rule: TensorRule, target: Target): TensorRule[] {
  const tt = ttOf(rule, target);
  const parts = mapping.tensors.filter((r) => concatStep(r) && ttOf(r, target) === tt && r.layout === rule.layout);
  return parts.sort((a, b) => concatStep(a)!.index - concatStep(b)!.index);
}

/** Evaluated `shape` of a part rule, or a MAPPING/CONFIG error naming what is missing. */
function partShape(rule: TensorRule, dims: Record<string, number>, tensor: string): number[] {
  const shape = (rule.shape ?? []).map((e) => evalDimExpr(e, dims));
  if (!rule.shape || shape.some((v) => v === undefined)) {
    throw new CkptError("CONFIG", `cannot size part ${tensor} of a concatenation: config.json lacks a dim of [${(rule.shape ?? []).join(", ")}]`, { tensor });
  }
  return shape as number[];
}

export interface ConcatMember {
  /** HF name of the part (as the rules spell it). */
  name: string;
  recipe: Recipe;
  shape: number[];
  dtype: DType;
}

/**
 * HF → TorchTitan: the TorchTitan tensor `ttName` joined from its parts (all present, in index order). Parts must
 * agree on every dim but the joined one and on dtype.
 */
export function joinParts(ttName: string, parts: TensorRule[], members: Map<number, ConcatMember>): { recipe: Recipe; shape: number[] } {
  const dim = concatStep(parts[0]!)!.dim;
  const inputs: Recipe[] = [];
  const sizes: number[] = [];
  let first: ConcatMember | undefined;
  parts.forEach((rule, i) => {
    const m = members.get(i);
    if (!m) throw new CkptError("MISSING_TENSOR", `${ttName} is the concatenation of ${parts.length} HF tensors; part ${i} (${rule.hf}) is missing from the source`, { tensor: ttName });
    if (m.shape.length <= dim) throw new CkptError("SHAPE", `concatenation along dim ${dim} of a ${m.shape.length}-D tensor [${m.shape}]`, { tensor: m.name });
    if (first) {
      if (m.dtype !== first.dtype) throw new CkptError("DTYPE", `parts of ${ttName} differ in dtype: ${m.name} is ${m.dtype}, ${first.name} is ${first.dtype}`, { tensor: m.name });
      if (m.shape.length !== first.shape.length || m.shape.some((v, d) => d !== dim && v !== first!.shape[d])) {
        throw new CkptError("SHAPE", `parts of ${ttName} do not line up along dim ${dim}: ${m.name} is [${m.shape}], ${first.name} is [${first.shape}]`, { tensor: m.name });
      }
    }
    first ??= m;
    inputs.push(m.recipe);
    sizes.push(m.shape[dim]!);
  });
  const shape = [...first!.shape];
  shape[dim] = sizes.reduce((a, b) => a + b, 0);
  return { recipe: { op: "concat", dim, sizes, inputs }, shape };
}

/**
 * TorchTitan → HF: each part of the stored tensor `stored` (of `shape`) as a slice, sized by the parts' HF shapes;
 * the sizes must add up to the stored size, else the config is not this checkpoint's.
 */
export function splitParts(stored: string, shape: readonly number[], parts: TensorRule[], dims: Record<string, number>, hfNames: string[]): { name: string; shape: number[]; recipe: Recipe }[] {
  const dim = concatStep(parts[0]!)!.dim;
  const shapes = parts.map((r, i) => partShape(r, dims, hfNames[i]!));
  const total = shapes.reduce((s, p) => s + (p[dim] ?? 0), 0);
  if (shape.length <= dim || total !== shape[dim] || shapes.some((p) => p.length !== shape.length || p.some((v, d) => d !== dim && v !== shape[d]))) {
    throw new CkptError("CONFIG", `config.json is inconsistent with the tensor: ${stored} is [${shape}], its parts ${hfNames.join(", ")} are [${shapes.map((s) => `[${s}]`).join(", ")}] joined along dim ${dim}`, { tensor: stored });
  }
  let start = 0;
  return parts.map((_, i) => {
    const size = shapes[i]![dim]!;
    const out = { name: hfNames[i]!, shape: shapes[i]!, recipe: { op: "slice", dim, start, size, input: { op: "source", tensor: stored } } as Recipe };
    start += size;
    return out;
  });
}

/** `input` (of `shape`) with the halves of `dim` exchanged: [b, a] for [a, b]. Applied twice it is the identity. */
export function swapHalves(input: Recipe, shape: readonly number[], dim: number, tensor: string): Recipe {
  const n = shape[dim];
  if (n === undefined || n % 2 !== 0) throw new CkptError("SHAPE", `swap_halves along dim ${dim} needs an even size, got [${shape}]`, { tensor });
  const h = n / 2;
  return { op: "concat", dim, sizes: [h, h], inputs: [{ op: "slice", dim, start: h, size: h, input }, { op: "slice", dim, start: 0, size: h, input }] };
}
