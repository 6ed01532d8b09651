// The quantized ops, one module each (quant-op.ts says what a module holds). Adding a format: write its module and
// list it here; the planner, the runs resolver, the worker, verify and --requantize find it through these lookups.
import { valueOp, type TensorRule } from "../mapping/schema.js";
import type { EncodeOp, QuantOp } from "./quant-op.js";
import { mxfp4, type Mxfp4EncodeRecipe, type Mxfp4Recipe, type Mxfp4Run } from "./mxfp4.js";
import { int4, type Int4EncodeRecipe, type Int4Recipe, type Int4Run } from "./int4.js";
import { fp8Block, type Fp8BlockRecipe, type Fp8BlockRun } from "./fp8-block.js";

/** The decode recipes of the quantized ops (members of `Recipe`). */
export type DecodeRecipe = Fp8BlockRecipe | Mxfp4Recipe | Int4Recipe;
/** A run's decode side-info (`Run.decode`). */
export type RunDecode = Fp8BlockRun | Mxfp4Run | Int4Run;
/** The encode recipes (the decodes' inverses). */
export type OpEncodeRecipes<In = unknown> = Mxfp4EncodeRecipe<In> | Int4EncodeRecipe<In>;

/**
 * Every quantized op (source checks run in this order). Each op receives only its own recipes and runs (looked up
 * by `op`), which is what makes the wider element type sound.
 */
export const QUANT_OPS: readonly QuantOp<DecodeRecipe, RunDecode>[] = [fp8Block, mxfp4, int4];

const byOp = new Map<string, QuantOp<DecodeRecipe, RunDecode>>(QUANT_OPS.map((o) => [o.op, o]));
const byEncode = new Map<string, EncodeOp<OpEncodeRecipes>>(QUANT_OPS.flatMap((o) => (o.encode ? [[o.encode.op, o.encode as EncodeOp<OpEncodeRecipes>] as const] : [])));

/** The quantized op of a recipe or run decode, or undefined for the layout ops. */
export function quantOp(op: string): QuantOp<DecodeRecipe, RunDecode> | undefined {
  return byOp.get(op);
}

/** The encode op of an encode recipe op, or undefined. */
export function encodeOp(op: string): EncodeOp<OpEncodeRecipes> | undefined {
  return byEncode.get(op);
}

/** The encode op `--requantize <kind>` runs. */
export function requantizeOp(kind: string): EncodeOp<OpEncodeRecipes> | undefined {
  return [...byEncode.values()].find((e) => e.kind === kind);
}

/** The quantized op a rule's mapping transform plans, if any. */
export function transformOf(rule: TensorRule): QuantOp<DecodeRecipe, RunDecode> | undefined {
  return QUANT_OPS.find((o) => o.transform && valueOp(rule, o.transform));
}
