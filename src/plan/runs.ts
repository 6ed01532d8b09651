// Turns "this box of a target tensor" into "these byte ranges of stored source tensors", through the recipe.
// Every tensor is viewed as rows × columns (columns = last dim; 0-D and 1-D tensors become [n, 1]), so
// all ops act on whole rows. A box is dense and row-major in the output buffer; consecutive rows whose
// sources are adjacent in the same file collapse into one run, so the common case is a single large read.
import { elementSize, type DType } from "../dtypes.js";
import { CkptError } from "../errors.js";
import type { Recipe, LeafInfo } from "./recipe.js";

export interface Box {
  offsets: number[];
  sizes: number[];
}

/** rows × cols elements landing at element offset `dst` of the output box buffer (dst rows are packed). */
export interface Run {
  dst: number;
  rows: number;
  cols: number;
  /** Absent for zero-filled runs. */
  src?: {
    file: string;
    byteOffset: number;
    /** Elements between the starts of consecutive source rows. */
    stride: number;
    dtype: DType;
  };
  /** FP8 block dequantization of this run: global row/col of its first element and the scale tensor. */
  dequant?: { scale: string; rowStart: number; colStart: number; block: number };
}

/** shape → [rows-dims…, cols] view: 0-D → [1,1]; 1-D [n] → [n,1]. */
export function viewShape(shape: readonly number[]): number[] {
  if (shape.length === 0) return [1, 1];
  if (shape.length === 1) return [shape[0]!, 1];
  return [...shape];
}

export function viewBox(box: Box, ndim: number): Box {
  if (ndim === 0) return { offsets: [0, 0], sizes: [1, 1] };
  if (ndim === 1) return { offsets: [box.offsets[0]!, 0], sizes: [box.sizes[0]!, 1] };
  return box;
}

interface Resolved {
  leaf?: string;
  coords: number[];
  dequant?: { scale: string; block: number };
}

function ropeSourceRow(r: number, heads: number, hd: number, direction: "hf_to_tt" | "tt_to_hf"): number {
  const h = Math.floor(r / hd);
  const i = r - h * hd;
  const half = hd / 2;
  // torchtitan-layout.md §3.2: HF→TT: tt[h·hd + 2j + c] = hf[h·hd + c·hd/2 + j]
  if (direction === "hf_to_tt") return h * hd + (i % 2) * half + Math.floor(i / 2);
  return h * hd + 2 * (i % half) + Math.floor(i / half);
}

/** Follows the recipe from output row coordinates (all dims but the last, in the view) to a leaf. */
function resolve(r: Recipe, coords: number[]): Resolved {
  switch (r.op) {
    case "source": return { leaf: r.tensor, coords };
    case "dequant": return { leaf: r.tensor, coords, dequant: { scale: r.scale, block: r.block } };
    case "zeros": return { coords };
    case "rope": {
      const c = coords.slice();
      c[0] = ropeSourceRow(c[0]!, r.heads, r.headDim, r.direction);
      return resolve(r.input, c);
    }
    case "stack": {
      const input = r.inputs[coords[0]!];
      if (!input) throw new CkptError("INTERNAL", `stack index ${coords[0]} out of range`);
      const rest = coords.slice(1);
      // A stacked 2-D input viewed without its leading dim: when the rest is empty the input was 1-D.
      return resolve(input, rest.length ? rest : [0]);
    }
    case "select": return resolve(r.input, [r.index, ...coords]);
  }
}

function leafView(leaf: LeafInfo): { shape: number[]; pieces: { offsets: number[]; sizes: number[]; file: string; byteOffset: number }[] } {
  const nd = leaf.shape.length;
  return {
    shape: viewShape(leaf.shape),
    pieces: leaf.pieces.map((p) => ({ ...viewBox(p, nd), file: p.file, byteOffset: p.byteOffset })),
  };
}

/**
 * Runs for one output box of a tensor of `shape` built by `recipe` from `leaves`.
 * Source column windows come from the box's last dim; a leaf split into column pieces (DCP Shard(1)) yields
 * one run per overlapping piece.
 */
export function runsForBox(recipe: Recipe, shape: readonly number[], box: Box, leaves: Record<string, LeafInfo>): Run[] {
  const vshape = viewShape(shape);
  const vbox = viewBox(box, shape.length);
  const nd = vshape.length;
  const colStart = vbox.offsets[nd - 1]!;
  const cols = vbox.sizes[nd - 1]!;
  const runs: Run[] = [];
  if (cols === 0 || vbox.sizes.some((s) => s === 0)) return runs;
  const views = new Map<string, ReturnType<typeof leafView>>();
  const viewOf = (name: string) => {
    let v = views.get(name);
    if (!v) {
      const leaf = leaves[name];
      if (!leaf) throw new CkptError("INTERNAL", `recipe names unknown tensor ${name}`);
      v = leafView(leaf);
      views.set(name, v);
    }
    return v;
  };

  const prefixDims = nd - 1;
  const idx = vbox.offsets.slice(0, prefixDims);
  let dst = 0;
  const push = (run: Run) => {
    const last = runs[runs.length - 1];
    if (last && last.cols === run.cols && last.dst + last.rows * last.cols === run.dst) {
      if (!last.src && !run.src) { last.rows += run.rows; return; }
      if (last.src && run.src && last.src.file === run.src.file && last.src.stride === run.src.stride && last.src.dtype === run.src.dtype
        && !last.dequant === !run.dequant
        && last.src.byteOffset + last.rows * last.src.stride * elementSize(last.src.dtype) === run.src.byteOffset
        && (!last.dequant || (last.dequant.scale === run.dequant!.scale && last.dequant.colStart === run.dequant!.colStart && last.dequant.rowStart + last.rows === run.dequant!.rowStart))) {
        last.rows += run.rows;
        return;
      }
    }
    runs.push(run);
  };

  for (;;) {
    const res = resolve(recipe, idx.slice());
    if (!res.leaf) {
      push({ dst, rows: 1, cols });
    } else {
      const lv = viewOf(res.leaf);
      const leaf = leaves[res.leaf]!;
      const coords = res.coords;
      if (coords.length !== lv.shape.length - 1) throw new CkptError("INTERNAL", `rank mismatch resolving ${res.leaf}: ${coords.length + 1}-D view vs ${lv.shape.length}-D`);
      // the leaf's own row dims: a stack input has one fewer than the output, a select source one more
      const lp = coords.length;
      let covered = 0;
      for (const p of lv.pieces) {
        let inside = true;
        for (let d = 0; d < lp; d++) {
          if (coords[d]! < p.offsets[d]! || coords[d]! >= p.offsets[d]! + p.sizes[d]!) { inside = false; break; }
        }
        if (!inside) continue;
        const pc0 = p.offsets[lp]!;
        const pc1 = pc0 + p.sizes[lp]!;
        const a = Math.max(colStart, pc0);
        const b = Math.min(colStart + cols, pc1);
        if (a >= b) continue;
        // linear element index inside the piece (row-major over the piece's own sizes)
        let lin = 0;
        for (let d = 0; d < lp; d++) lin = lin * p.sizes[d]! + (coords[d]! - p.offsets[d]!);
        lin = lin * p.sizes[lp]! + (a - pc0);
        const es = elementSize(leaf.dtype);
        const run: Run = {
          dst: dst + (a - colStart),
          rows: 1,
          cols: b - a,
          src: { file: p.file, byteOffset: p.byteOffset + lin * es, stride: p.sizes[lp]!, dtype: leaf.dtype },
        };
        if (res.dequant) {
          if (coords.length !== 1) throw new CkptError("INTERNAL", `dequant needs a 2-D weight (${res.leaf})`);
          run.dequant = { scale: res.dequant.scale, rowStart: coords[0]!, colStart: a, block: res.dequant.block };
        }
        if (b - a === cols) push(run);
        else runs.push(run);
        covered += b - a;
      }
      if (covered !== cols) {
        throw new CkptError("DCP", `stored pieces of '${res.leaf}' do not cover row ${JSON.stringify(coords)} columns [${colStart}, ${colStart + cols})`, { tensor: res.leaf });
      }
    }
    dst += cols;
    // advance the row-major index over the box's prefix dims
    let d = prefixDims - 1;
    for (; d >= 0; d--) {
      idx[d]!++;
      if (idx[d]! < vbox.offsets[d]! + vbox.sizes[d]!) break;
      idx[d] = vbox.offsets[d]!;
    }
    if (d < 0) break;
  }
  return runs;
}
