// A target tensor's recipe: how its elements derive from stored source tensors. Recipes are plain data (JSON),
// so a plan can be printed, tested and shipped to worker threads. The layout ops here move whole rows or elements
// without arithmetic; the quantized ops (decodes and their encodes) are defined one module each in src/ops/ and
// dispatched through ops/index.ts. Casting happens once, where elements land in the output buffer.
import { encodeOp, quantOp, type DecodeRecipe, type OpEncodeRecipes } from "../ops/index.js";

export type { LeafInfo, StoredShapeCheck } from "../ops/quant-op.js";

export type Recipe =
  | { op: "source"; tensor: string }
  /** The input with its last two dims swapped. */
  | { op: "transpose"; input: Recipe }
  /** The input narrowed along `dim`: elements [start, start + size) (a split/chunk part). */
  | { op: "slice"; dim: number; start: number; size: number; input: Recipe }
  /** The inputs joined along `dim`, `sizes[i]` elements of input i (the inverse of split/chunk). */
  | { op: "concat"; dim: number; sizes: number[]; inputs: Recipe[] }
  /** The input (of shape `from`, contiguous) viewed as `shape`: same elements in the same order, metadata only. */
  | { op: "reshape"; shape: number[]; from: number[]; input: Recipe }
  | { op: "zeros" }
  | { op: "rope"; heads: number; headDim: number; direction: "hf_to_tt" | "tt_to_hf"; input: Recipe }
  | { op: "stack"; inputs: Recipe[] }
  | { op: "select"; index: number; input: Recipe }
  /**
   * The input (a base weight) with a LoRA / DoRA update merged in (kernels/lora-merge.ts): same shape, elements of
   * each stored row from that row alone. `update` names the adapter module whose A / B (/ m) the writer supplies.
   */
  | { op: "lora_merge"; update: string; input: Recipe }
  /** A quantized op's decode: `dequant` (ops/fp8-block.ts), `mxfp4` (ops/mxfp4.ts), `int4` (ops/int4.ts). */
  | DecodeRecipe
  | EncodeRecipe;

/**
 * An encoded (quantized) output computed from a value recipe: the inverse of a decode (`mxfp4_encode`, `int4_encode`),
 * for `--to hf --requantize`. One op yields one of the packed tensors (`part`); `values` is the shape of the values it
 * encodes (the decode's output shape), `valuesDtype` the dtype they are rounded to first (the plain output's).
 * `reference` names the source checkpoint's packed tensors of the same name and shape, whose encoding is kept for
 * groups that several encodings decode exactly. Each is defined with its decode (ops/<op>.ts); plan/encode.ts cuts
 * its boxes into slabs, exec/encode-piece.ts runs them.
 */
export type EncodeRecipe = OpEncodeRecipes & { input: Recipe };

/** Whether `r` is a quantized op's decode. */
export function isDecode(r: Recipe): r is DecodeRecipe {
  return quantOp(r.op) !== undefined;
}

export function isEncode(r: Recipe): r is EncodeRecipe {
  return encodeOp(r.op) !== undefined;
}

export function recipeLeaves(r: Recipe, out: Set<string> = new Set()): Set<string> {
  if (isDecode(r)) {
    for (const n of quantOp(r.op)!.leaves(r)) out.add(n);
    return out;
  }
  if (isEncode(r)) {
    recipeLeaves(r.input, out);
    for (const n of Object.values(r.reference ?? {})) out.add(n);
    return out;
  }
  switch (r.op) {
    case "source": out.add(r.tensor); break;
    case "zeros": break;
    case "rope": case "select": case "transpose": case "slice": case "reshape": case "lora_merge": recipeLeaves(r.input, out); break;
    case "stack": case "concat": for (const i of r.inputs) recipeLeaves(i, out); break;
  }
  return out;
}

/** Short human description for --dry-run tables. */
export function describeRecipe(r: Recipe): string {
  if (isDecode(r)) return quantOp(r.op)!.describe(r);
  if (isEncode(r)) return encodeOp(r.op)!.describe(r, describeRecipe(r.input));
  switch (r.op) {
    case "source": return r.tensor;
    case "transpose": return `transpose(${describeRecipe(r.input)})`;
    case "zeros": return "zeros";
    case "rope": return `rope_${r.direction}(${describeRecipe(r.input)}, heads=${r.heads}, hd=${r.headDim})`;
    case "stack": return r.inputs.length > 2 ? `stack[${r.inputs.length}](${describeRecipe(r.inputs[0]!)} … ${describeRecipe(r.inputs[r.inputs.length - 1]!)})` : `stack(${r.inputs.map(describeRecipe).join(", ")})`;
    case "select": return `${describeRecipe(r.input)}[${r.index}]`;
    case "slice": return `${describeRecipe(r.input)}.narrow(${r.dim}, ${r.start}, ${r.size})`;
    case "concat": return `cat[${r.dim}](${r.inputs.map(describeRecipe).join(", ")})`;
    case "reshape": return `${describeRecipe(r.input)}.reshape(${r.shape.join(", ")})`;
    case "lora_merge": return `merge(${describeRecipe(r.input)}, ${r.update})`;
  }
}
