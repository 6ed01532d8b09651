// Turns "this box of a target tensor" into "these byte ranges of stored source tensors", through the recipe.
// Every tensor is viewed as rows × columns (columns = last dim; 0-D and 1-D tensors become [n, 1]), so
// all ops act on whole rows. A box is dense and row-major in the output buffer; consecutive rows whose
// sources are adjacent in the same file collapse into one run, so the common case is a single large read.
import { elementSize } from "../dtypes.js";
import { CkptError } from "../errors.js";
import { isDecode, type Recipe, type LeafInfo } from "./recipe.js";
import { quantOp, type DecodeRecipe, type RunDecode } from "../ops/index.js";
import { soleWholePiece, type BaseRun, type DecodingRun } from "../ops/quant-op.js";

export interface Box {
  offsets: number[];
  sizes: number[];
}

/** rows × cols elements landing at element offset `dst` of the output box buffer (dst rows are packed). */
export interface Run extends BaseRun {
  /** A quantized op's decode of the run (ops/<op>.ts): which op, and what it reads besides `src`. */
  decode?: RunDecode;
}

/** Byte ranges of source files a run reads (its values, and a quantized op's scales). */
export function runSourceRanges(r: Run): { file: string; start: number; end: number }[] {
  if (!r.src) return [];
  const ranges = r.decode && quantOp(r.decode.op)!.ranges;
  if (ranges) return ranges(r as DecodingRun<RunDecode>);
  const es = elementSize(r.src.dtype);
  const elems = r.transpose ? (r.cols - 1) * r.src.stride + r.rows : (r.rows - 1) * r.src.stride + r.cols;
  return [{ file: r.src.file, start: r.src.byteOffset, end: r.src.byteOffset + elems * es }];
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
  decode?: DecodeRecipe;
  transpose?: boolean;
}

function ropeSourceRow(r: number, heads: number, hd: number, direction: "hf_to_tt" | "tt_to_hf"): number {
  const h = Math.floor(r / hd);
  const i = r - h * hd;
  const half = hd / 2;
  // torchtitan-layout.md §3.2: HF→TT: tt[h·hd + 2j + c] = hf[h·hd + c·hd/2 + j]
  if (direction === "hf_to_tt") return h * hd + (i % 2) * half + Math.floor(i / 2);
  return h * hd + 2 * (i % half) + Math.floor(i / half);
}

/** A column window of one output row, resolved to a leaf: `dstOff` elements into the row's window. */
interface Segment {
  res: Resolved;
  colStart: number;
  cols: number;
  dstOff: number;
}

/**
 * Where `dim` of a tensor whose row coordinates are `coords` lies: an index into `coords`, or "col" (the column
 * window). Below a transpose the coordinates are the input's with its second-to-last dim moved to the columns.
 */
function axisOf(dim: number, coords: number[], transposed: boolean): number | "col" {
  const n = coords.length + 1;
  if (dim >= n) throw new CkptError("INTERNAL", `dim ${dim} of a ${n}-D view`);
  if (!transposed) return dim === n - 1 ? "col" : dim;
  if (dim === n - 1) return n - 2;
  return dim === n - 2 ? "col" : dim;
}

/**
 * Follows the recipe from output row coordinates (all dims but the last, in the view) and a column window to the
 * leaves: one segment per leaf the window reaches (a concat along the columns splits it).
 */
function resolve(r: Recipe, coords: number[], colStart: number, cols: number, transposed = false): Segment[] {
  const one = (res: Resolved): Segment[] => [{ res, colStart, cols, dstOff: 0 }];
  const plainOnly = (what: string) => {
    if (transposed) throw new CkptError("INTERNAL", `${what} below a transpose`);
  };
  if (isDecode(r)) {
    plainOnly(r.op);
    return one({ coords, decode: r });
  }
  switch (r.op) {
    case "source": return one(transposed ? { leaf: r.tensor, coords, transpose: true } : { leaf: r.tensor, coords });
    case "transpose":
      plainOnly("a second transpose");
      return resolve(r.input, coords, colStart, cols, true);
    case "zeros": return one({ coords });
    case "rope": {
      plainOnly("rope");
      const c = coords.slice();
      c[0] = ropeSourceRow(c[0]!, r.heads, r.headDim, r.direction);
      return resolve(r.input, c, colStart, cols);
    }
    case "stack": {
      plainOnly("stack");
      const input = r.inputs[coords[0]!];
      if (!input) throw new CkptError("INTERNAL", `stack index ${coords[0]} out of range`);
      const rest = coords.slice(1);
      // A stacked 2-D input viewed without its leading dim: when the rest is empty the input was 1-D.
      return resolve(input, rest.length ? rest : [0], colStart, cols);
    }
    case "select": plainOnly("select"); return resolve(r.input, [r.index, ...coords], colStart, cols);
    // the merged values are computed from the input's values by the worker: the runs are the input's
    case "lora_merge": plainOnly("lora_merge"); return resolve(r.input, coords, colStart, cols);
    case "mxfp4_encode": case "int4_encode": throw new CkptError("INTERNAL", `${r.op} is computed from value runs (plan/encode.ts), not resolved to source rows`);
    case "slice": {
      const axis = axisOf(r.dim, coords, transposed);
      if (axis === "col") return resolve(r.input, coords, colStart + r.start, cols, transposed);
      const c = coords.slice();
      c[axis] = c[axis]! + r.start;
      return resolve(r.input, c, colStart, cols, transposed);
    }
    case "reshape": {
      // a contiguous view: the window's elements are consecutive in the input, cut at the input's row ends
      plainOnly("reshape");
      const ov = viewShape(r.shape), iv = viewShape(r.from);
      let lin = 0;
      for (let d = 0; d < coords.length; d++) lin = lin * ov[d]! + coords[d]!;
      lin = lin * ov[ov.length - 1]! + colStart;
      const icols = iv[iv.length - 1]!;
      const out: Segment[] = [];
      for (let done = 0; done < cols;) {
        let rest = Math.floor((lin + done) / icols);
        const c0 = (lin + done) % icols;
        const ic: number[] = Array<number>(iv.length - 1).fill(0);
        for (let d = iv.length - 2; d >= 0; d--) { ic[d] = rest % iv[d]!; rest = Math.floor(rest / iv[d]!); }
        const n = Math.min(cols - done, icols - c0);
        for (const s of resolve(r.input, ic, c0, n)) out.push({ ...s, dstOff: s.dstOff + done });
        done += n;
      }
      return out;
    }
    case "concat": {
      const axis = axisOf(r.dim, coords, transposed);
      const out: Segment[] = [];
      let off = 0;
      for (const [i, input] of r.inputs.entries()) {
        const size = r.sizes[i]!;
        if (axis !== "col") {
          if (coords[axis]! < off + size) {
            const c = coords.slice();
            c[axis] = c[axis]! - off;
            return resolve(input, c, colStart, cols, transposed);
          }
        } else {
          const a = Math.max(colStart, off), b = Math.min(colStart + cols, off + size);
          if (a < b) for (const s of resolve(input, coords, a - off, b - a, transposed)) out.push({ ...s, dstOff: s.dstOff + (a - colStart) });
        }
        off += size;
      }
      if (axis !== "col") throw new CkptError("INTERNAL", `concat index ${coords[axis]} out of range`);
      return out;
    }
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
  const whole = wholeLeafRun(recipe, vshape, vbox, leaves);
  if (whole) return [whole];
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
    if (last && continues(last, run)) last.rows += run.rows;
    else runs.push(run);
  };
  // a run narrower than the window (a column piece of the source) is never merged: the next row's is not adjacent
  const pushAll = (out: Run[], cols: number) => {
    for (const run of out) {
      if (run.cols === cols) push(run);
      else runs.push(run);
    }
  };

  /** Plain runs of columns [colStart, colStart + cols) of row `coords` of a stored tensor: one per stored piece it crosses. */
  const storedRuns = (name: string, coords: number[], colStart: number, cols: number, dst: number): Run[] => {
    const lv = viewOf(name);
    const leaf = leaves[name]!;
    if (coords.length !== lv.shape.length - 1) throw new CkptError("INTERNAL", `rank mismatch resolving ${name}: ${coords.length + 1}-D view vs ${lv.shape.length}-D`);
    // the leaf's own row dims: a stack input has one fewer than the output, a select source one more
    const lp = coords.length;
    const out: Run[] = [];
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
      out.push({ dst: dst + (a - colStart), rows: 1, cols: b - a, src: { file: p.file, byteOffset: p.byteOffset + lin * es, stride: p.sizes[lp]!, dtype: leaf.dtype } });
      covered += b - a;
    }
    if (covered !== cols) {
      throw new CkptError("DCP", `stored pieces of '${name}' do not cover row ${JSON.stringify(coords)} columns [${colStart}, ${colStart + cols})`, { tensor: name });
    }
    return out;
  };

  const emit = (res: Resolved, colStart: number, cols: number, dst: number) => {
    if (res.decode) {
      // an op's runs carry its own side-info (RunDecode)
      pushAll(quantOp(res.decode.op)!.runs(res.decode, res.coords, colStart, cols, dst, leaves, (name) => storedRuns(name, res.coords, colStart, cols, dst)) as Run[], cols);
    } else if (!res.leaf) {
      push({ dst, rows: 1, cols });
    } else if (res.transpose) {
      pushAll(transposedRuns(res.leaf, res.coords, colStart, cols, dst, leaves), cols);
    } else {
      pushAll(storedRuns(res.leaf, res.coords, colStart, cols, dst), cols);
    }
  };

  for (;;) {
    for (const seg of resolve(recipe, idx.slice(), colStart, cols)) emit(seg.res, seg.colStart, seg.cols, dst + seg.dstOff);
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

/**
 * Whether run b (the next output rows of a box) continues run a, so that one run reads both: the same columns, the
 * next rows of the output and of the source (the next element of a transposed source), and a decode's side-info
 * continuing too.
 */
function continues(a: Run, b: Run): boolean {
  if (a.cols !== b.cols || a.dst + a.rows * a.cols !== b.dst) return false;
  if (!a.src || !b.src) return !a.src && !b.src;
  if (!a.transpose !== !b.transpose || a.decode?.op !== b.decode?.op) return false;
  if (a.src.file !== b.src.file || a.src.stride !== b.src.stride || a.src.dtype !== b.src.dtype) return false;
  if (a.src.byteOffset + a.rows * (a.transpose ? 1 : a.src.stride) * elementSize(a.src.dtype) !== b.src.byteOffset) return false;
  return !a.decode || quantOp(a.decode.op)!.continues(a.decode, b.decode!, a.rows);
}

/**
 * The run a 2-D box of a tensor copied from one whole stored piece (safetensors) reads: rows × cols from the
 * piece's row `offsets[0]`, `stride` = the piece's columns. This is what the row-by-row walk below merges to; taking
 * it directly skips a resolve per row (130 k rows for an embedding). Undefined when the walk is needed.
 */
function wholeLeafRun(recipe: Recipe, vshape: number[], vbox: Box, leaves: Record<string, LeafInfo>): Run | undefined {
  if (recipe.op !== "source" || vshape.length !== 2) return undefined;
  const leaf = leaves[recipe.tensor];
  const p = leaf && soleWholePiece(leaf);
  if (!leaf || !p) return undefined;
  const lshape = viewShape(leaf.shape);
  if (lshape.length !== 2 || lshape[0] !== vshape[0] || lshape[1] !== vshape[1]) return undefined;
  const C = lshape[1]!;
  const es = elementSize(leaf.dtype);
  return {
    dst: 0,
    rows: vbox.sizes[0]!,
    cols: vbox.sizes[1]!,
    src: { file: p.file, byteOffset: p.byteOffset + (vbox.offsets[0]! * C + vbox.offsets[1]!) * es, stride: C, dtype: leaf.dtype },
  };
}

/**
 * Output row `coords` (= source coords with the second-to-last index moved to the end) of a source whose last two
 * dims are swapped: columns [colStart, colStart + cols) are source elements (…, c, g), one run per stored piece.
 */
function transposedRuns(name: string, coords: number[], colStart: number, cols: number, dst: number, leaves: Record<string, LeafInfo>): Run[] {
  const leaf = leaves[name];
  if (!leaf) throw new CkptError("INTERNAL", `recipe names unknown tensor ${name}`);
  const nd = leaf.shape.length;
  if (nd < 2 || coords.length !== nd - 1) throw new CkptError("INTERNAL", `transpose of ${name}: ${nd}-D source, ${coords.length + 1}-D output`);
  const lead = coords.slice(0, -1);
  const g = coords[coords.length - 1]!;
  const es = elementSize(leaf.dtype);
  const out: Run[] = [];
  let covered = 0;
  for (const p of leaf.pieces) {
    if (lead.some((c, d) => c < p.offsets[d]! || c >= p.offsets[d]! + p.sizes[d]!)) continue;
    if (g < p.offsets[nd - 1]! || g >= p.offsets[nd - 1]! + p.sizes[nd - 1]!) continue;
    const a = Math.max(colStart, p.offsets[nd - 2]!);
    const b = Math.min(colStart + cols, p.offsets[nd - 2]! + p.sizes[nd - 2]!);
    if (a >= b) continue;
    let lin = 0;
    lead.forEach((c, d) => (lin = lin * p.sizes[d]! + (c - p.offsets[d]!)));
    lin = (lin * p.sizes[nd - 2]! + (a - p.offsets[nd - 2]!)) * p.sizes[nd - 1]! + (g - p.offsets[nd - 1]!);
    out.push({ dst: dst + (a - colStart), rows: 1, cols: b - a, src: { file: p.file, byteOffset: p.byteOffset + lin * es, stride: p.sizes[nd - 1]!, dtype: leaf.dtype }, transpose: true });
    covered += b - a;
  }
  if (covered !== cols) throw new CkptError("DCP", `stored pieces of '${name}' do not cover (transposed) row ${JSON.stringify(coords)} columns [${colStart}, ${colStart + cols})`, { tensor: name });
  return out;
}
