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
  | { op: "select"; index: number; input: Recipe };

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
    case "rope": case "select": case "transpose": case "slice": case "reshape": recipeLeaves(r.input, out); break;
    case "stack": case "concat": for (const i of r.inputs) recipeLeaves(i, out); break;
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
  }
}
