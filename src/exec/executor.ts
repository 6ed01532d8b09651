// Runs an output layout: preallocates files, writes known-up-front bytes, farms pieces out to a piscina pool
// with bounded bytes in flight, then writes what depends on the data (blob CRCs) and the small extras.
import { closeSync, existsSync, ftruncateSync, openSync, readSync, statSync, writeSync, writeFileSync } from "node:fs";
import { crc32 } from "../kernels/checksum.js";
import { join } from "node:path";
import { availableParallelism } from "node:os";
import { setMaxListeners } from "node:events";
import type { Piscina } from "piscina";
import { numelOf } from "../dtypes.js";
import { CkptError, fromWorkerError } from "../errors.js";
import { crc32Combine } from "../formats/torchsave/index.js";
import type { ConversionPlan, TensorPlan } from "../plan/convert-plan.js";
import type { OutputLayout } from "../plan/output-layout.js";
import { piecesOf } from "../plan/output-layout.js";
import { runsForBox, type Box, type Run } from "../plan/runs.js";
import { isEncode } from "../plan/recipe.js";
import { encodeTask } from "./encode-piece.js";
import { mergeSpans, rangesOfRuns, scaleLeaves } from "../plan/read-spans.js";
import type { Source } from "../sources/types.js";
import runTask, { type PieceResult, type PieceTask, type WorkerTask } from "./worker.js";
import { fingerprint, Journal } from "./journal.js";
import { createHasher, DEFAULT_DIGEST, type DigestAlgorithm } from "./digest.js";
import { copyPiecesNative, nativeCopier, nativeEligible, NativeFiles } from "./native-copy.js";

export interface ProgressEvent {
  phase: "write";
  bytesDone: number;
  bytesTotal: number;
  tensorsDone: number;
  tensorsTotal: number;
}

export interface ExecOptions {
  /** Folder the files go into (the `.partial` folder, or the final one for --ranks runs). */
  dir: string;
  /** Only these files are written (per-rank runs); default all. */
  onlyFiles?: Set<string>;
  threads?: number;
  /** Bound on bytes held by pieces in flight (default 512 MiB). */
  maxMemory?: number;
  /** Output bytes per piece (default 16 MiB). */
  pieceBytes?: number;
  /** Digest of every piece for the manifest and the journal (default xxh128); false: none. */
  digest?: DigestAlgorithm | false;
  /** Write block-aligned output with O_DIRECT where possible (default true). */
  directIo?: boolean;
  allowOverflow?: boolean;
  /** Write values that decoding made NaN/inf (FP8, MXFP4, INT4) instead of refusing them; they are counted. */
  allowNonfinite?: boolean;
  onProgress?: (e: ProgressEvent) => void;
  signal?: AbortSignal;
  /**
   * Keep a resume journal (`.ckpt-journal`) in `dir`. `plan` identifies everything outside the layout that the
   * bytes depend on (source file identities, tool version); with `resume`, pieces an earlier run journaled for
   * the same plan are re-hashed from disk and skipped when they match.
   */
  journal?: { plan: string; resume: boolean };
  onWarning?: (msg: string) => void;
  /**
   * Inputs of a piece that are not source byte ranges (the adapter rows a `lora_merge` piece merges in), supplied by
   * the command when the piece is dispatched, so only the pieces in flight hold them.
   */
  pieceInputs?: (t: TensorPlan, box: Box) => Promise<Partial<Pick<PieceTask, "lora">>>;
}

export interface ChunkDigest {
  tensor: string;
  file: string;
  offsets: number[];
  sizes: number[];
  bytes: number;
  crc32: number;
  /** Digest of each piece in order (pieces are fixed by the plan, so this is deterministic). */
  pieceDigests: string[];
}

export interface ExecResult {
  bytesWritten: number;
  files: { name: string; size: number }[];
  chunks: ChunkDigest[];
  f16Overflow: number;
  /** Non-finite values decoding produced and wrote (only with allowNonfinite; pieces of this run, not resumed ones). */
  nonfinite?: number;
  threads: number;
  /** --resume: pieces (and their bytes) taken over from an earlier run after re-hashing them from disk. */
  resumedPieces?: number;
  resumedBytes?: number;
  /** The resume journal in `dir` (closed); the caller deletes it once the output is final. */
  journalPath?: string;
  /** Encoded (requantized) tensors: groups with no exact encoding (and in how many tensors), groups kept from the reference. */
  requantize?: { bad: number; badTensors: number; adopted: number; first?: string };
}

const MiB = 1024 * 1024;

export async function executeLayout(layout: OutputLayout, plan: ConversionPlan, source: Source, opts: ExecOptions): Promise<ExecResult> {
  const holder: { journal?: Journal } = {};
  try {
    return await executeJournaled(layout, plan, source, opts, holder);
  } finally {
    holder.journal?.close();
  }
}

/**
 * The pieces in an order that takes the output files in turn (each file's own pieces keep their order). Page-cache
 * writes of one file serialise on its inode lock, and in plan order every piece of a large tensor — a 0.5 GB
 * embedding is 32 pieces — goes to the same file one after another, so the lanes would queue on one lock while the
 * other files wait. The order decides only when bytes are written, never where.
 */
export function interleaveByFile<T>(pieces: T[], fileOf: (p: T) => string): T[] {
  const queues = new Map<string, T[]>();
  for (const p of pieces) {
    const f = fileOf(p);
    let q = queues.get(f);
    if (!q) queues.set(f, (q = []));
    q.push(p);
  }
  if (queues.size < 2) return pieces;
  const lists = [...queues.values()];
  const out: T[] = [];
  for (let i = 0; out.length < pieces.length; i++) for (const q of lists) if (i < q.length) out.push(q[i]!);
  return out;
}

async function executeJournaled(layout: OutputLayout, plan: ConversionPlan, source: Source, opts: ExecOptions, holder: { journal?: Journal }): Promise<ExecResult> {
  const tensorByName = new Map<string, TensorPlan>(plan.tensors.map((t) => [t.name, t]));
  const files = layout.files.filter((f) => !opts.onlyFiles || opts.onlyFiles.has(f.name));
  const fileSet = new Set(files.map((f) => f.name));
  const chunkIdx = layout.chunks.map((c, i) => ({ c, i })).filter(({ c }) => fileSet.has(c.file));

  // 0. resume journal: fingerprint of the whole layout plus the caller's plan identity
  const pieceBytes = opts.pieceBytes ?? 16 * MiB;
  const chunks = chunkIdx.map(({ c }) => c);
  const pieces = piecesOf(chunks, pieceBytes);
  const digest = opts.digest === false ? undefined : opts.digest ?? DEFAULT_DIGEST;
  let journal: Journal | undefined;
  if (opts.journal) {
    const fp = fingerprint({
      v: 1, plan: opts.journal.plan, digest: digest ?? null, pieceBytes,
      files: files.map((f) => [f.name, f.size, f.prefix ?? null]),
      chunks: chunks.map((c) => [c.tensor, c.dtype, c.shape, c.box, c.file, c.dataOffset, c.byteLength, c.blob ? [c.blob.offset, c.blob.layout.head, c.blob.layout.tailOffset] : null]),
      tensors: plan.tensors, leaves: plan.leaves,
    });
    const j = Journal.open(opts.dir, fp, pieces.length, opts.journal.resume);
    journal = holder.journal = j.journal;
    if (j.note) opts.onWarning?.(j.note);
  }

  // 1. preallocate, and write bytes known before the data (a resumed run keeps files of the right size)
  for (const f of files) {
    const path = join(opts.dir, f.name);
    const keep = journal?.resumed === true && existsSync(path) && statSync(path).size === f.size;
    const fd = openSync(path, keep ? "r+" : "w");
    try {
      if (!keep) ftruncateSync(fd, f.size);
      if (f.prefix) writeSync(fd, f.prefix, 0, f.prefix.length, 0);
      for (const { c } of chunkIdx) if (c.file === f.name && c.blob) writeSync(fd, c.blob.layout.head, 0, c.blob.layout.head.length, c.blob.offset);
    } finally {
      closeSync(fd);
    }
  }

  // 2. pieces → worker tasks
  const { paths, remote, scales } = sourceAccess(plan.leaves, source);
  const bytesTotal = pieces.reduce((s, p) => s + p.byteLength, 0);
  const tensorsTotal = new Set(chunks.map((c) => c.tensor)).size;
  const piecesLeftByTensor = new Map<string, number>();
  for (const p of pieces) piecesLeftByTensor.set(chunks[p.chunk]!.tensor, (piecesLeftByTensor.get(chunks[p.chunk]!.tensor) ?? 0) + 1);
  let tensorsDone = tensorsTotal - piecesLeftByTensor.size;

  const taskFor = (batch: typeof pieces): WorkerTask => ({
    paths,
    scales,
    directIo: opts.directIo ?? true,
    ...(opts.allowNonfinite ? { allowNonfinite: true } : {}),
    pieces: batch.map((p): PieceTask => {
      const c = chunks[p.chunk]!;
      const t = tensorByName.get(c.tensor)!;
      const encoded = isEncode(t.recipe);
      return {
        outPath: join(opts.dir, c.file),
        tensor: c.tensor,
        outOffset: p.outOffset,
        outDtype: c.dtype,
        elems: numelOf(p.box.sizes),
        runs: encoded ? [] : runsForBox(t.recipe, t.shape, p.box, plan.leaves),
        countF16Overflow: c.dtype === "F16",
        digest,
        ...(isEncode(t.recipe) ? { encode: encodeTask(t.name, t.recipe, t.shape, p.box, plan.leaves) } : {}),
      };
    }),
  });

  // --resume: journaled pieces whose bytes on disk still hash the same are done
  const results = new Array<PieceResult | undefined>(pieces.length);
  let resumedPieces = 0;
  let resumedBytes = 0;
  if (journal?.resumed) {
    const fds = new Map<string, number>();
    try {
      for (const [i, rec] of journal.previous) {
        const p = pieces[i]!;
        const file = chunks[p.chunk]!.file;
        if (rec.bytes !== p.byteLength) continue;
        let fd = fds.get(file);
        if (fd === undefined) fds.set(file, (fd = openSync(join(opts.dir, file), "r")));
        const buf = Buffer.allocUnsafe(p.byteLength);
        let got = 0;
        while (got < buf.length) {
          const n = readSync(fd, buf, got, buf.length - got, p.outOffset + got);
          if (n === 0) break;
          got += n;
        }
        if (got !== buf.length) continue;
        const crc = crc32(buf) >>> 0;
        if (crc !== rec.crc) continue;
        const d = digest ? (await createHasher(digest)).update(buf).hex() : undefined;
        if (rec.digest !== d) continue;
        results[i] = { crc, bytes: buf.length, f16Overflow: rec.f16Overflow, digest: d };
        resumedPieces++;
        resumedBytes += p.byteLength;
      }
    } finally {
      for (const fd of fds.values()) closeSync(fd);
    }
  }
  const todo = interleaveByFile(pieces.filter((_, i) => results[i] === undefined), (p) => chunks[p.chunk]!.file);

  // small pieces are batched so each message carries at least ~4 MiB of work
  const batches: (typeof pieces)[] = [];
  let cur: typeof pieces = [];
  let curBytes = 0;
  for (const p of todo) {
    cur.push(p);
    curBytes += p.byteLength;
    if (curBytes >= 4 * MiB || cur.length >= 256) { batches.push(cur); cur = []; curBytes = 0; }
  }
  if (cur.length) batches.push(cur);

  const pieceIndex = new Map(pieces.map((p, i) => [p, i]));
  let bytesDone = 0;
  pieces.forEach((p, i) => {
    if (results[i] === undefined) return;
    bytesDone += p.byteLength;
    const t = chunks[p.chunk]!.tensor;
    const left = piecesLeftByTensor.get(t)! - 1;
    piecesLeftByTensor.set(t, left);
    if (left === 0) tensorsDone++;
  });
  const threads = opts.threads ?? (bytesTotal < 8 * MiB ? 0 : Math.max(1, availableParallelism()));
  const onBatchDone = (batch: typeof pieces, res: PieceResult[]) => {
    // Encoded pieces that counted groups are not journaled: a resumed run recomputes them, so its counts are whole.
    journal?.append(batch.map((p, j) => ({ p, j })).filter(({ j }) => !res[j]!.requantize?.bad && !res[j]!.requantize?.adopted).map(({ p, j }) => ({ piece: pieceIndex.get(p)!, crc: res[j]!.crc, bytes: res[j]!.bytes, f16Overflow: res[j]!.f16Overflow, digest: res[j]!.digest })));
    batch.forEach((p, j) => {
      results[pieceIndex.get(p)!] = res[j];
      bytesDone += p.byteLength;
      const t = chunks[p.chunk]!.tensor;
      const left = piecesLeftByTensor.get(t)! - 1;
      piecesLeftByTensor.set(t, left);
      if (left === 0) tensorsDone++;
    });
    opts.onProgress?.({ phase: "write", bytesDone, bytesTotal, tensorsDone, tensorsTotal });
  };

  const prepare = async (batch: typeof pieces): Promise<WorkerTask> => {
    const task = taskFor(batch);
    if (opts.pieceInputs) {
      for (const [i, p] of batch.entries()) {
        const t = tensorByName.get(chunks[p.chunk]!.tensor)!;
        Object.assign(task.pieces[i]!, await opts.pieceInputs(t, p.box));
      }
    }
    if (remote.size > 0) task.spans = await fetchSpans(task, remote, source);
    return task;
  };

  const aborted = () => {
    if (opts.signal?.aborted) throw new CkptError("INTERRUPTED", "interrupted");
  };
  // Batches of dense pieces go to the native lane (exec/native-copy.ts); the rest to runTask / the worker pool.
  const copy = nativeCopier();
  // One lane more than --threads: a lane waiting for a file's write lock or in a page fault would otherwise leave its
  // core idle (tmpfs convert, 2 cores: 1.36 s with 2 lanes, 1.15 s with 3, byte-identical). bin/ckpt.js sizes libuv's
  // pool (which runs the lanes) to the cores + 2.
  const nativeFiles = copy ? new NativeFiles(opts.directIo ?? true, Math.max(1, threads) + 1) : undefined;
  const onNativeLane = (task: WorkerTask): boolean => copy !== undefined && task.spans === undefined && task.pieces.every((p) => nativeEligible(p, paths));
  const runNative = (task: WorkerTask): Promise<PieceResult[]> => copyPiecesNative(copy!, task.pieces, paths, nativeFiles!);
  try {
    if (threads === 0) {
      for (const b of batches) {
        aborted();
        const task = await prepare(b);
        onBatchDone(b, await (onNativeLane(task) ? runNative(task) : runTask(task)));
      }
    } else {
      // one abort listener per queued task: not a leak
      if (opts.signal) setMaxListeners(0, opts.signal);
      // The main thread is one of the `threads` lanes: it only coordinates otherwise, and each worker thread costs a
      // V8 isolate of its own (start-up, its own JIT of the same code, message copies): ~0.3 CPU s, a tenth of a 1B
      // convert's CPU. The local lane runs one batch at a time between dispatches (its reads block the event loop
      // for at most one batch; the workers' queues hold enough work meanwhile). CKPT_LOCAL_LANE=0 turns it off.
      const localLane = threads >= 2 && process.env.CKPT_LOCAL_LANE !== "0";
      const workers = localLane ? threads - 1 : threads;
      // Started on the first batch the native lane cannot take: a dtype-kept run never pays for worker isolates.
      // (piscina itself is imported then too: a dtype-kept run does not load its 18 modules either)
      let pool: Promise<Piscina> | undefined;
      const workerPool = (): Promise<Piscina> => (pool ??= import("piscina").then(({ Piscina }) => new Piscina({ filename: new URL("./worker-entry.cjs", import.meta.url).href, minThreads: workers, maxThreads: workers, idleTimeout: 1000 })));
      let localBusy = false;
      const maxMemory = opts.maxMemory ?? 512 * MiB;
      let inFlight = 0;
      const running = new Set<Promise<void>>();
      let failure: unknown;
      try {
        for (const b of batches) {
          aborted();
          // Staging (source bytes, up to 2x for f32 sources) + output buffer per piece.
          const cost = b.reduce((s, p) => s + p.byteLength * 3, 0);
          while (running.size > 0 && inFlight + cost > maxMemory) await Promise.race(running);
          if (failure) throw failure;
          inFlight += cost;
          let local = false;
          const pr: Promise<void> = prepare(b)
            .then((task) => {
              if (onNativeLane(task)) return runNative(task);
              if (localLane && !localBusy) { localBusy = local = true; return runTask(task); }
              return workerPool().then((p) => p.run(task, { signal: opts.signal, transferList: task.spans?.map((x) => x.data.buffer as ArrayBuffer) }) as Promise<PieceResult[]>);
            })
            .then((res) => onBatchDone(b, res))
            .catch((e) => { failure ??= opts.signal?.aborted ? new CkptError("INTERRUPTED", "interrupted") : e; })
            .finally(() => { inFlight -= cost; running.delete(pr); if (local) localBusy = false; });
          running.add(pr);
        }
        await Promise.all(running);
        if (failure) throw failure;
        aborted();
      } finally {
        // Nothing may still be writing once the descriptors close and the caller discards or commits the output.
        await Promise.allSettled([...running]);
        await (await pool?.catch(() => undefined))?.destroy();
      }
    }
  } catch (e) {
    throw fromWorkerError(e, (file, offset) => {
      for (const [name, leaf] of Object.entries(plan.leaves)) {
        if (leaf.pieces.some((p) => p.file === file && offset >= p.byteOffset && offset < p.byteOffset + p.byteLength)) return name;
      }
      return undefined;
    });
  } finally {
    nativeFiles?.close();
  }

  // 3. per-chunk CRC (combined from pieces in order) → blob tails
  const digests: ChunkDigest[] = [];
  const perChunk = new Map<number, { crc: number; digests: string[]; bytes: number }>();
  let overflow = 0;
  let nonfinite = 0;
  let requantize: ExecResult["requantize"];
  const badTensors = new Set<string>();
  pieces.forEach((p, i) => {
    const r = results[i]!;
    overflow += r.f16Overflow;
    nonfinite += r.nonfinite ?? 0;
    if (r.requantize) {
      const q = (requantize ??= { bad: 0, badTensors: 0, adopted: 0 });
      q.bad += r.requantize.bad;
      q.adopted += r.requantize.adopted;
      q.first ??= r.requantize.first;
      if (r.requantize.bad) badTensors.add(chunks[p.chunk]!.tensor);
      q.badTensors = badTensors.size;
    }
    const acc = perChunk.get(p.chunk) ?? { crc: 0, digests: [], bytes: 0 };
    acc.crc = acc.bytes === 0 ? r.crc : crc32Combine(acc.crc, r.crc, r.bytes);
    acc.bytes += r.bytes;
    if (r.digest) acc.digests.push(r.digest);
    perChunk.set(p.chunk, acc);
  });
  const fds = new Map<string, number>();
  try {
    chunks.forEach((c, ci) => {
      const acc = perChunk.get(ci) ?? { crc: 0, digests: [], bytes: 0 };
      digests.push({ tensor: c.tensor, file: c.file, offsets: c.box.offsets, sizes: c.box.sizes, bytes: c.byteLength, crc32: acc.crc >>> 0, pieceDigests: acc.digests });
      if (c.blob) {
        let fd = fds.get(c.file);
        if (fd === undefined) fds.set(c.file, (fd = openSync(join(opts.dir, c.file), "r+")));
        const tail = c.blob.layout.tail(acc.crc >>> 0);
        writeSync(fd, tail, 0, tail.length, c.blob.offset + c.blob.layout.tailOffset);
      }
    });
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
  return {
    bytesWritten: files.reduce((s, f) => s + f.size, 0),
    files: files.map((f) => ({ name: f.name, size: f.size })),
    chunks: digests,
    f16Overflow: overflow,
    ...(nonfinite ? { nonfinite } : {}),
    threads,
    resumedPieces,
    resumedBytes,
    journalPath: journal?.path,
    ...(requantize ? { requantize } : {}),
  };
}

/**
 * Reads the source byte ranges a task needs from files in `remote`, merged like the worker merges its reads
 * (plan/read-spans.ts), so every worker read falls inside one span. Each span is its own
 * ArrayBuffer, transferred to the worker without a copy.
 */
async function fetchSpans(task: WorkerTask, remote: Set<string>, source: Source): Promise<NonNullable<WorkerTask["spans"]>> {
  return fetchRunSpans(task.pieces.flatMap(pieceRuns), task.scales, remote, source);
}

/**
 * How a worker reaches the source files of `leaves`: local paths (pread), files without one (`remote`: their bytes
 * are fetched by the main thread, fetchRunSpans), and the F32 tensors FP8 dequantization reads as scales.
 */
export function sourceAccess(leaves: ConversionPlan["leaves"], source: Source): { paths: Record<string, string>; remote: Set<string>; scales: WorkerTask["scales"] } {
  const paths: Record<string, string> = {};
  // Files without a local path (a Hub repo read in place): the main thread fetches each batch's byte ranges
  // with source.read() and hands them to the worker, so only the bytes the chosen files need are transferred.
  const remote = new Set<string>();
  for (const leaf of Object.values(leaves)) {
    for (const p of leaf.pieces) {
      const lp = source.localPath(p.file);
      if (lp) paths[p.file] = lp;
      else remote.add(p.file);
    }
  }
  return { paths, remote, scales: scaleLeaves(leaves) };
}

/** The byte ranges `runs` read from files in `remote` (values, MXFP4/INT4 scales, FP8 scale tensors), fetched merged as the worker merges its reads. */
export async function fetchRunSpans(runs: Run[], scales: WorkerTask["scales"], remote: Set<string>, source: Source): Promise<NonNullable<WorkerTask["spans"]>> {
  const merged = mergeSpans(rangesOfRuns(runs, scales).filter((r) => remote.has(r.file)));
  return Promise.all(merged.map(async (m) => {
    const b = await source.read(m.file, m.start, m.end - m.start);
    const own = b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer ? b : new Uint8Array(b);
    return { file: m.file, start: m.start, data: own };
  }));
}

/** Every run a piece reads: its own, or its encode slabs' (values and reference). */
function pieceRuns(p: PieceTask): Run[] {
  if (!p.encode) return p.runs;
  return p.encode.slabs.flatMap((s) => [...s.runs, ...(s.reference ? [...s.reference.a, ...s.reference.b] : [])]);
}

export function writeExtras(layout: OutputLayout, dir: string): void {
  for (const [name, bytes] of layout.extras) writeFileSync(join(dir, name), bytes);
}
