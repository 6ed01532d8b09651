// The encode ops (the inverses of the decodes, each defined with its decode in ops/<op>.ts) as the executor runs
// them. An encoded tensor is a function of whole groups of values along the last dim, so a box of it maps to a box
// of values covering whole rows of groups: boxes of encoded tensors must span their trailing dims (the layouts
// cut pieces along dim 0 only, and --to hf output is never sharded). A piece's values are computed and encoded in
// row slabs of bounded size (`SLAB_VALUES`), each slab's values through the ordinary runs of the input recipe, so
// an encode reads exactly the source bytes a decode-free write of the same values would.
import { CkptError } from "../errors.js";
import type { EncodeRecipe, LeafInfo } from "./recipe.js";
import { runsForBox, type Box, type Run } from "./runs.js";
import { encodeOp } from "../ops/index.js";

/** Values per slab: 256 Ki values are 1 MiB as f32 (and the encoded parts far less). */
export const SLAB_VALUES = 1 << 18;

/** The shape of the tensor an encode op writes, from the shape of the values it encodes. */
export function encodedShape(r: EncodeRecipe): number[] {
  return encodeOp(r.op)!.shape(r);
}

/** The reference's two packed tensors (leaf names), in the order the encoder takes them, when the recipe has one. */
export function referenceNames(r: EncodeRecipe): [string, string] | undefined {
  return encodeOp(r.op)!.references(r);
}

/** Values per group: the unit an encode computes (and the reference is adopted) in. */
export function groupOf(r: EncodeRecipe): number {
  return encodeOp(r.op)!.group(r);
}

/** One slab of an encoded piece: `rows` rows of values, their runs, and the reference's runs over the same rows. */
export interface EncodeSlab {
  rows: number;
  /** Global index of the slab's first values row (row-major over the values' leading dims): for error messages. */
  firstRow: number;
  runs: Run[];
  reference?: { a: Run[]; b: Run[] };
}

/** Rows of a box whose last dim is whole, cut into row-major sub-boxes of at most `maxRows` rows each. */
export function rowSlabs(box: Box, maxRows: number): Box[] {
  const nd = box.sizes.length;
  const rows = box.sizes.slice(0, -1).reduce((a, b) => a * b, 1);
  if (rows <= maxRows || nd < 2) return [box];
  // the first leading dim with more than one index: cut it into runs of indices whose inner rows fit
  const d = box.sizes.findIndex((s, i) => i < nd - 1 && s > 1);
  const inner = box.sizes.slice(d + 1, -1).reduce((a, b) => a * b, 1);
  const out: Box[] = [];
  if (inner <= maxRows) {
    const step = Math.max(1, Math.floor(maxRows / inner));
    for (let i = 0; i < box.sizes[d]!; i += step) {
      const offsets = box.offsets.slice(), sizes = box.sizes.slice();
      offsets[d] = box.offsets[d]! + i; sizes[d] = Math.min(step, box.sizes[d]! - i);
      out.push({ offsets, sizes });
    }
    return out;
  }
  for (let i = 0; i < box.sizes[d]!; i++) {
    const offsets = box.offsets.slice(), sizes = box.sizes.slice();
    offsets[d] = box.offsets[d]! + i; sizes[d] = 1;
    out.push(...rowSlabs({ offsets, sizes }, maxRows));
  }
  return out;
}

/**
 * The slabs of one output box of an encoded tensor of `shape`. The box must span every dim but the leading ones
 * of the values (all of an encoded tensor's trailing dims); the `shape` part of int4 has no values to read.
 */
export function encodeSlabs(r: EncodeRecipe, shape: readonly number[], box: Box, leaves: Record<string, LeafInfo>, maxValues = SLAB_VALUES): EncodeSlab[] {
  if (!encodeOp(r.op)!.readsValues(r)) return [];
  const lead = r.values.length - 1, cols = r.values[lead]!;
  for (let d = lead; d < shape.length; d++) {
    if (box.offsets[d] !== 0 || box.sizes[d] !== shape[d]) throw new CkptError("INTERNAL", `${r.op} ${r.part}: an output box must span dim ${d} (whole groups), got [${box.offsets}] + [${box.sizes}]`);
  }
  const valuesBox: Box = { offsets: [...box.offsets.slice(0, lead), 0], sizes: [...box.sizes.slice(0, lead), cols] };
  const strides = r.values.slice(0, lead).map((_, d) => r.values.slice(d + 1, lead).reduce((a, b) => a * b, 1));
  const ref = referenceNames(r);
  return rowSlabs(valuesBox, Math.max(1, Math.floor(maxValues / Math.max(1, cols)))).map((vb) => {
    const rows = vb.sizes.slice(0, -1).reduce((a, b) => a * b, 1);
    const firstRow = vb.offsets.slice(0, -1).reduce((s, o, d) => s + o * strides[d]!, 0);
    const slab: EncodeSlab = { rows, firstRow, runs: runsForBox(r.input, r.values, vb, leaves) };
    if (ref) {
      // the reference tensors have the encoded parts' shapes: the same leading dims, whole trailing dims
      const refRuns = (name: string) => {
        const l = leaves[name]!;
        return runsForBox({ op: "source", tensor: name }, l.shape, { offsets: [...vb.offsets.slice(0, -1), ...l.shape.slice(lead).map(() => 0)], sizes: [...vb.sizes.slice(0, -1), ...l.shape.slice(lead)] }, leaves);
      };
      slab.reference = { a: refRuns(ref[0]!), b: refRuns(ref[1]!) };
    }
    return slab;
  });
}
