// The source byte ranges a set of runs reads, merged into spans the way the worker merges its reads (small gaps read
// through), so that reads of a remote source can be fetched in as few requests as the worker would issue reads.
import type { LeafInfo } from "./recipe.js";
import { runSourceRanges, type Run } from "./runs.js";
import { quantOp } from "../ops/index.js";

/** Gaps up to this many bytes between two needed ranges of one file are read through (one read beats two). */
export const READ_THROUGH_GAP = 4096;

export interface ByteSpan {
  file: string;
  start: number;
  end: number;
}

/** Whole scale tensors that FP8 dequantizing runs read, by scale name. */
export type ScaleRanges = Record<string, { file: string; byteOffset: number; byteLength: number }>;

/** Every byte range `runs` read: their values (and MXFP4/INT4 scales), and the whole scale tensor of a dequantizing run. */
export function rangesOfRuns(runs: readonly Run[], scales: ScaleRanges): ByteSpan[] {
  const out: ByteSpan[] = [];
  for (const r of runs) {
    out.push(...runSourceRanges(r));
    for (const name of (r.decode && quantOp(r.decode.op)!.wholeTensors?.(r.decode)) || []) {
      const sc = scales[name];
      if (sc) out.push({ file: sc.file, start: sc.byteOffset, end: sc.byteOffset + sc.byteLength });
    }
  }
  return out;
}

/** Sorted, merged spans covering `ranges` (gaps ≤ READ_THROUGH_GAP read through). */
export function mergeSpans(ranges: ByteSpan[]): ByteSpan[] {
  const sorted = [...ranges].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.start - b.start));
  const merged: ByteSpan[] = [];
  for (const r of sorted) {
    const last = merged[merged.length - 1];
    if (last && last.file === r.file && r.start <= last.end + READ_THROUGH_GAP) last.end = Math.max(last.end, r.end);
    else merged.push({ ...r });
  }
  return merged;
}

/** The FP8 scale tensors a dequantizing run reads whole (single-piece F32 leaves), with their column count. */
export function scaleLeaves(leaves: Record<string, LeafInfo>): Record<string, { file: string; byteOffset: number; byteLength: number; cols: number }> {
  const out: Record<string, { file: string; byteOffset: number; byteLength: number; cols: number }> = {};
  for (const [name, leaf] of Object.entries(leaves)) {
    if (leaf.pieces.length !== 1 || leaf.dtype !== "F32") continue;
    const p = leaf.pieces[0]!;
    out[name] = { file: p.file, byteOffset: p.byteOffset, byteLength: p.byteLength, cols: leaf.shape[1] ?? 1 };
  }
  return out;
}
