// What one rank of a sharded output costs the machine that writes it alone (`--ranks r`): the bytes of its files,
// and the source bytes its chunks read, which is what a `--ranged` Hub run downloads (plus the headers every run
// reads). For sizing a multi-machine job before it runs (`shard --dry-run`).
import type { CatalogTensor } from "../catalog-types.js";
import type { ConversionPlan } from "./convert-plan.js";
import type { OutputLayout } from "./output-layout.js";
import { mergeSpans, rangesOfRuns, scaleLeaves, type ByteSpan } from "./read-spans.js";
import { runsForBox } from "./runs.js";

export interface RankIo {
  rank: number;
  /** Bytes of the rank's output files. */
  write: number;
  /** Source bytes the rank reads (a `--ranged` run downloads them): its chunks' ranges merged as the executor reads them, plus every file's header. Absent unless asked for. */
  download?: number;
}

/** Bytes before the first tensor of each source file (8-byte length + JSON header for safetensors): read by every run. */
export function headerBytes(tensors: Iterable<CatalogTensor>): number {
  const first = new Map<string, number>();
  for (const t of tensors) for (const p of t.pieces) first.set(p.file, Math.min(first.get(p.file) ?? Infinity, p.byteOffset));
  return [...first.values()].reduce((s, n) => s + n, 0);
}

/**
 * Per-rank bytes written, and with `headers` (a number) the bytes a `--ranged` run downloads. The download needs every
 * chunk's source runs resolved, as the executor resolves them: cheap for plain tensors, but for a 200k-tensor INT4
 * model at world 64 it is most of a dry run's time, so it is computed only when asked for.
 */
export function rankIo(layout: OutputLayout, plan: ConversionPlan, headers?: number): RankIo[] {
  const rankOf = new Map<string, number>();
  const out = new Map<number, RankIo>();
  for (const f of layout.files) {
    if (f.rank === undefined) continue;
    rankOf.set(f.name, f.rank);
    const e = out.get(f.rank) ?? { rank: f.rank, write: 0 };
    e.write += f.size;
    out.set(f.rank, e);
  }
  if (headers === undefined) return [...out.values()].sort((a, b) => a.rank - b.rank);
  const tensors = new Map(plan.tensors.map((t) => [t.name, t]));
  const scales = scaleLeaves(plan.leaves);
  const ranges = new Map<number, ByteSpan[]>();
  for (const c of layout.chunks) {
    const rank = rankOf.get(c.file);
    const t = tensors.get(c.tensor);
    if (rank === undefined || !t || c.byteLength === 0) continue;
    let list = ranges.get(rank);
    if (!list) ranges.set(rank, (list = []));
    // merged per chunk first: a permuted or fused chunk has a run per row group, all of them adjacent in the source
    for (const r of mergeSpans(rangesOfRuns(runsForBox(t.recipe, t.shape, c.box, plan.leaves), scales))) list.push(r);
  }
  for (const [rank, e] of out) e.download = headers + mergeSpans(ranges.get(rank) ?? []).reduce((s, r) => s + (r.end - r.start), 0);
  return [...out.values()].sort((a, b) => a.rank - b.rank);
}
