// A target tensor's recipe: how its elements derive from stored source tensors. Recipes are plain data (JSON),
// so a plan can be printed, tested and shipped to worker threads. All ops except `dequant` move whole rows
// or elements without arithmetic; casting happens once, where elements land in the output buffer.
import type { DType } from "../dtypes.js";
import type { StoredPiece } from "../catalog-types.js";

export type Recipe =
  | { op: "source"; tensor: string }
  | { op: "dequant"; tensor: string; scale: string; block: number }
  /** MXFP4 values [..., G·32] of packed `blocks` U8 [..., G, 16] with E8M0 `scales` U8 [..., G]. */
  | { op: "mxfp4"; blocks: string; scales: string }
  /** INT4 values [out, in] of compressed-tensors `weight_packed` I32 [out, ceil(in/8)] with BF16 `scale` [out, ceil(in/group)]. */
  | { op: "int4"; packed: string; scale: string; group: number }
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
  | EncodeRecipe;

/**
 * An encoded (quantized) output computed from a value recipe: the inverse of the `mxfp4` / `int4` decodes, for
 * `--to hf --requantize`. One op yields one of the packed tensors (`part`); `values` is the shape of the values it
 * encodes (the decode's output shape), `valuesDtype` the dtype they are rounded to first (the plain output's).
 * `reference` names the source checkpoint's packed tensors of the same name and shape, whose encoding is kept for
 * groups that several encodings decode exactly. Defined in plan/encode.ts (shapes, boxes) and kernels/requantize.ts.
 */
export type EncodeRecipe =
  | { op: "mxfp4_encode"; part: "blocks" | "scales"; values: number[]; valuesDtype: "BF16" | "F32"; input: Recipe; reference?: { blocks: string; scales: string } }
  | { op: "int4_encode"; part: "packed" | "scale" | "shape"; values: number[]; valuesDtype: "BF16" | "F32"; group: number; input: Recipe; reference?: { packed: string; scale: string } };

export function isEncode(r: Recipe): r is EncodeRecipe {
  return r.op === "mxfp4_encode" || r.op === "int4_encode";
}

/** What a worker needs to know about each leaf tensor a recipe names. */
export interface LeafInfo {
  dtype: DType;
  shape: number[];
  pieces: StoredPiece[];
}

export function recipeLeaves(r: Recipe, out: Set<string> = new Set()): Set<string> {
  switch (r.op) {
    case "source": out.add(r.tensor); break;
    case "dequant": out.add(r.tensor); out.add(r.scale); break;
    case "mxfp4": out.add(r.blocks); out.add(r.scales); break;
    case "int4": out.add(r.packed); out.add(r.scale); break;
    case "zeros": break;
    case "rope": case "select": case "transpose": case "slice": case "reshape": case "lora_merge": recipeLeaves(r.input, out); break;
    case "stack": case "concat": for (const i of r.inputs) recipeLeaves(i, out); break;
    case "mxfp4_encode": case "int4_encode":
      recipeLeaves(r.input, out);
      for (const n of Object.values(r.reference ?? {})) out.add(n);
      break;
  }
  return out;
}

/** Short human description for --dry-run tables. */
export function describeRecipe(r: Recipe): string {
  switch (r.op) {
    case "source": return r.tensor;
    case "dequant": return `dequant(${r.tensor} × ${r.scale}, block ${r.block})`;
    case "mxfp4": return `mxfp4(${r.blocks} × ${r.scales})`;
    case "int4": return `int4(${r.packed} × ${r.scale}, group ${r.group})`;
    case "transpose": return `transpose(${describeRecipe(r.input)})`;
    case "zeros": return "zeros";
    case "rope": return `rope_${r.direction}(${describeRecipe(r.input)}, heads=${r.heads}, hd=${r.headDim})`;
    case "stack": return r.inputs.length > 2 ? `stack[${r.inputs.length}](${describeRecipe(r.inputs[0]!)} … ${describeRecipe(r.inputs[r.inputs.length - 1]!)})` : `stack(${r.inputs.map(describeRecipe).join(", ")})`;
    case "select": return `${describeRecipe(r.input)}[${r.index}]`;
    case "slice": return `${describeRecipe(r.input)}.narrow(${r.dim}, ${r.start}, ${r.size})`;
    case "concat": return `cat[${r.dim}](${r.inputs.map(describeRecipe).join(", ")})`;
    case "reshape": return `${describeRecipe(r.input)}.reshape(${r.shape.join(", ")})`;
    case "lora_merge": return `merge(${describeRecipe(r.input)}, ${r.update})`;
    case "mxfp4_encode": return `mxfp4_encode.${r.part}(${describeRecipe(r.input)} as ${r.valuesDtype})`;
    case "int4_encode": return `int4_encode.${r.part}(${describeRecipe(r.input)} as ${r.valuesDtype}, group ${r.group})`;
  }
}

/**
 * A stored integer tensor whose values a recipe relies on (INT4 weight_shape = [out, in] of the decoded weight): they
 * are tensor bytes, not headers, so checkStoredShapes (plan/quant-checks.ts) reads them once the plan exists.
 */
export interface StoredShapeCheck {
  tensor: string;
  /** The packed tensor the shape describes. */
  of: string;
  expect: number[];
  dtype: DType;
  pieces: StoredPiece[];
}
