// Worker thread body: computes output pieces. Each piece reads only its source byte ranges (pread, or bytes the
// main thread fetched for sources without local files), converts them with the kernels, and writes the output at
// its planned offset window by window (O_DIRECT where possible). Only small results (CRC, hash, counters) go back.
import { closeSync, constants as fsc, openSync, readSync, statfsSync, write, writeSync } from "node:fs";
import { dirname } from "node:path";
import { createHasher, type DigestAlgorithm, type Hasher } from "./digest.js";
import { crc32 } from "../kernels/checksum.js";
import { elementSize, isCastable, type CastableDType, type DType } from "../dtypes.js";
import { getKernels, type Kernels } from "../kernels/index.js";
import { loadNative } from "../kernels/native.js";
import { workerInputError } from "../errors.js";
import { decodedNonfinite } from "./decode-checks.js";
import { runSourceRanges, type Run } from "../plan/runs.js";
import { quantOp, type RunDecode } from "../ops/index.js";
import type { DecodeContext, DecodingRun, WholeTensor } from "../ops/quant-op.js";
import { encodePiece, type EncodeTask, type RequantizeCount } from "./encode-piece.js";
import { mergePiece, type LoraPieceUpdate } from "../kernels/lora-merge.js";

export interface PieceTask {
  outPath: string;
  /** The output tensor the piece belongs to (named in errors). */
  tensor?: string;
  outOffset: number;
  outDtype: DType;
  /** Output elements of the piece. */
  elems: number;
  runs: Run[];
  /** Count source values beyond the f16 range (only when casting into F16). */
  countF16Overflow: boolean;
  /** Digest of the piece's output bytes for the manifest and the journal; none when undefined. */
  digest?: DigestAlgorithm;
  /** An encoded (requantized) piece: `runs` is empty, the values come slab by slab (exec/encode-piece.ts). */
  encode?: EncodeTask;
  /** A merged LoRA piece: `runs` give the base weight's rows, merged in f32 with this update, then cast. */
  lora?: LoraPieceUpdate;
}

export interface WorkerTask {
  pieces: PieceTask[];
  /** Source file name (as in runs) → absolute path (local files; workers pread them). */
  paths: Record<string, string>;
  /**
   * Source bytes the main thread already fetched (files without a local path, e.g. a Hub repo read with HTTP
   * Range requests): every read of such a file lies inside one of these spans.
   */
  spans?: { file: string; start: number; data: Uint8Array }[];
  /** Scale tensors for FP8 dequantization: name → where its F32 bytes are. */
  scales: Record<string, { file: string; byteOffset: number; byteLength: number; cols: number }>;
  device?: "cpu" | "cuda";
  /**
   * Write block-aligned output with O_DIRECT (default). Off for --no-fsync runs whose output fits under the kernel's
   * unthrottled dirty-page ceiling (exec/page-cache.ts): that output is meant to land in the page cache like `cp`'s.
   */
  directIo?: boolean;
  /** Write values decoding made NaN/inf (counted) instead of refusing them (--allow-nonfinite). */
  allowNonfinite?: boolean;
}

export interface PieceResult {
  crc: number;
  bytes: number;
  f16Overflow: number;
  /** Non-finite values decoding produced (written only with allowNonfinite). */
  nonfinite?: number;
  digest?: string;
  /** Encoded pieces: groups with no exact encoding, groups kept from the reference. */
  requantize?: RequantizeCount;
}

let kernels: Kernels | undefined;

// Per-thread scratch buffers, reused by every piece: a fresh 16 MiB Buffer per piece costs an mmap and page
// faults on every byte (several times slower than the pread into it). Nothing here escapes runTask: only CRCs
// and hashes go back, so reuse cannot change what is written.
const scratch: { staging?: Buffer; out?: Buffer; produce?: Buffer; values?: Buffer } = {};
function scratchBuffer(kind: "staging" | "out" | "produce" | "values", bytes: number): Buffer {
  let b = scratch[kind];
  if (!b || b.length < bytes) {
    b = scratch[kind] = Buffer.allocUnsafeSlow(Math.max(bytes, 1 << 20));
  }
  return b.subarray(0, bytes);
}

function readExact(fd: number, buf: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < buf.length) {
    const n = readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw workerInputError("IO", `short read: ${path} ends before byte ${position + buf.length} (file truncated or changed during the run?)`);
    done += n;
  }
}

function writeExact(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done, position + done);
}

/** `dst.length` bytes of source `file` at `pos`: from a prefetched span, else pread from its local path. */
function readSource(task: WorkerTask, fds: (path: string) => number, file: string, dst: Uint8Array, pos: number): void {
  if (task.spans) {
    for (const s of task.spans) {
      if (s.file === file && pos >= s.start && pos + dst.length <= s.start + s.data.length) {
        dst.set(s.data.subarray(pos - s.start, pos - s.start + dst.length));
        return;
      }
    }
  }
  const path = task.paths[file];
  if (path === undefined) throw new Error(`internal: no local path and no prefetched bytes for ${file} [${pos}, ${pos + dst.length})`);
  readExact(fds(path), dst, pos, path);
}

interface Span { file: string; start: number; end: number; at: number }

/**
 * Merges the byte ranges runs need into few large reads; returns where each run's ranges (runSourceRanges: its
 * values, and an MXFP4 run's scales) land in the staging buffer.
 */
function stageSources(task: WorkerTask, runs: Run[], fds: (path: string) => number): { staging: Buffer; where: number[][] } {
  const ranges = runs.flatMap((r, i) => runSourceRanges(r).map((x, k) => ({ i, k, ...x })));
  const sorted = [...ranges].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.start - b.start));
  const spans: Span[] = [];
  const spanOf = new Map<string, Span>();
  let total = 0;
  for (const r of sorted) {
    const last = spans[spans.length - 1];
    // Small gaps are read through: one syscall beats many for a few KiB of waste.
    if (last && last.file === r.file && r.start <= last.end + 4096) {
      if (r.end > last.end) { total += r.end - last.end; last.end = r.end; }
    } else {
      spans.push({ file: r.file, start: r.start, end: r.end, at: total });
      total += r.end - r.start;
    }
    spanOf.set(`${r.i}:${r.k}`, spans[spans.length - 1]!);
  }
  const staging = scratchBuffer("staging", total);
  for (const s of spans) readSource(task, fds, s.file, staging.subarray(s.at, s.at + (s.end - s.start)), s.start);
  const where = runs.map((r, i) => runSourceRanges(r).map((x, k) => {
    const s = spanOf.get(`${i}:${k}`)!;
    return s.at + (x.start - s.start);
  }));
  return { staging, where };
}

/** Dense rows × cols output from a transposed source window: out[i][j] = src[j·stride + i], then cast. */
function transposeCast(k: Kernels, src: Uint8Array, sd: DType, rows: number, cols: number, stride: number, dst: Uint8Array, od: DType): void {
  const es = elementSize(sd);
  const tmp = sd === od ? dst : scratchTranspose(rows * cols * es);
  for (let i = 0; i < rows; i++) {
    for (let j = 0; j < cols; j++) {
      const from = (j * stride + i) * es, to = (i * cols + j) * es;
      for (let b = 0; b < es; b++) tmp[to + b] = src[from + b]!;
    }
  }
  if (sd === od) return;
  if (!isCastable(sd) || !isCastable(od)) throw new Error(`cannot convert ${sd} to ${od}`);
  k.cast(tmp, sd, dst, od, rows * cols);
}

let transposeBuf: Buffer | undefined;
function scratchTranspose(bytes: number): Buffer {
  if (!transposeBuf || transposeBuf.length < bytes) transposeBuf = Buffer.allocUnsafeSlow(Math.max(bytes, 1 << 16));
  return transposeBuf.subarray(0, bytes);
}

function copyRows(src: Uint8Array, stride: number, rows: number, cols: number, es: number, dst: Uint8Array): void {
  for (let r = 0; r < rows; r++) dst.set(src.subarray(r * stride * es, (r * stride + cols) * es), r * cols * es);
}

function runPiece(task: WorkerTask, p: PieceTask, fds: (path: string) => number, dfds: (path: string) => number | undefined, scaleCache: Map<string, Uint8Array>): Promise<PieceResult> {
  const k = (kernels ??= getKernels());
  if (p.encode) {
    const enc = encodePiece(p, p.encode, (runs, elems, dtype) => computeRuns(task, { ...p, runs, elems, outDtype: dtype, countF16Overflow: false }, fds, scaleCache, "values").out);
    return finishPiece(p, enc.bytes, fds, dfds, 0).then((r) => ({ ...r, requantize: enc.result }));
  }
  if (p.lora) return loraPiece(task, p, p.lora, fds, dfds, scaleCache, k);
  if (streamable(p)) return streamPiece(task, p, fds, dfds, k);
  const { out, overflow, nonfinite } = computeRuns(task, p, fds, scaleCache, "out");
  return finishPiece(p, out, fds, dfds, overflow, nonfinite);
}

/** The base weight's rows in f32, merged with the update, cast (round to nearest even) into the output dtype. */
function loraPiece(task: WorkerTask, p: PieceTask, u: LoraPieceUpdate, fds: (path: string) => number, dfds: (path: string) => number | undefined, scaleCache: Map<string, Uint8Array>, k: Kernels): Promise<PieceResult> {
  const w = computeRuns(task, { ...p, outDtype: "F32", countF16Overflow: false }, fds, scaleCache, "values").out;
  const merged = mergePiece(new Float32Array(w.buffer.slice(w.byteOffset, w.byteOffset + w.byteLength)), p.elems / u.cols, u);
  const bytes = new Uint8Array(merged.buffer, merged.byteOffset, merged.byteLength);
  const overflow = p.outDtype === "F16" ? k.stats(bytes, "F32", p.elems).f16Overflow : 0;
  if (p.outDtype === "F32") return finishPiece(p, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), fds, dfds, overflow);
  const out = scratchBuffer("out", p.elems * elementSize(p.outDtype));
  k.cast(bytes, "F32", out, p.outDtype as CastableDType, p.elems);
  return finishPiece(p, out, fds, dfds, overflow);
}

/** The piece's output elements computed from its runs into a scratch buffer (`into` names which one). */
function computeRuns(task: WorkerTask, p: PieceTask, fds: (path: string) => number, scaleCache: Map<string, Uint8Array>, into: "out" | "values"): { out: Buffer; overflow: number; nonfinite: number } {
  const k = (kernels ??= getKernels());
  const oes = elementSize(p.outDtype);
  const out = scratchBuffer(into, p.elems * oes);
  let overflow = 0;
  let nonfinite = 0;
  // Decoding (FP8 × scale, MXFP4, INT4) must give finite values in the output dtype: checked on every tier's output.
  const decoded = (r: Run, dst: Uint8Array, why: () => Error): void => {
    const bad = decodedNonfinite(k, dst, p.outDtype as CastableDType, r.rows * r.cols);
    if (bad === 0) return;
    if (task.allowNonfinite) nonfinite += bad;
    else throw why();
  };
  const whole = (name: string, check: (bytes: Uint8Array, at: WholeTensor) => void) => {
    const at = task.scales[name]!;
    let bytes = scaleCache.get(name);
    if (!bytes) {
      bytes = Buffer.allocUnsafe(at.byteLength);
      readSource(task, fds, at.file, bytes, at.byteOffset);
      if (!task.allowNonfinite) check(bytes, at);
      scaleCache.set(name, bytes);
    }
    return { bytes, at };
  };
  const { staging, where } = stageSources(task, p.runs, fds);
  p.runs.forEach((r, i) => {
    const dst = out.subarray(r.dst * oes, (r.dst + r.rows * r.cols) * oes);
    if (!r.src) { dst.fill(0); return; }
    const ses = elementSize(r.src.dtype);
    const ranges = runSourceRanges(r);
    const staged = (j: number) => staging.subarray(where[i]![j]!, where[i]![j]! + (ranges[j]!.end - ranges[j]!.start));
    const src = staged(0);
    if (r.decode) {
      const ctx: DecodeContext = {
        k, src: ranges.map((_, j) => staged(j)), dst, outDtype: p.outDtype as CastableDType, piece: p, whole,
        finite: (why) => decoded(r, dst, why),
      };
      quantOp(r.decode.op)!.decode(r as DecodingRun<RunDecode>, ctx);
      return;
    }
    if (r.transpose) {
      transposeCast(k, src, r.src.dtype, r.rows, r.cols, r.src.stride, dst, p.outDtype);
      return;
    }
    if (r.src.dtype === p.outDtype || !isCastable(r.src.dtype) || !isCastable(p.outDtype)) {
      if (r.src.dtype !== p.outDtype) throw new Error(`cannot convert ${r.src.dtype} to ${p.outDtype}`);
      if (r.src.stride === r.cols) dst.set(src);
      else copyRows(src, r.src.stride, r.rows, r.cols, ses, dst);
      return;
    }
    if (p.countF16Overflow) {
      for (let row = 0; row < r.rows; row++) overflow += k.stats(src.subarray(row * r.src.stride * ses, (row * r.src.stride + r.cols) * ses), r.src.dtype, r.cols).f16Overflow;
    }
    if (r.src.stride === r.cols) k.cast(src, r.src.dtype, dst, p.outDtype, r.rows * r.cols);
    else {
      // Column window of each row (Shard(1) slices). Row by row: the staged bytes end with the last row's
      // window, not a whole row, so a gather over full source rows would read past them.
      for (let row = 0; row < r.rows; row++) {
        k.cast(src.subarray(row * r.src.stride * ses, (row * r.src.stride + r.cols) * ses), r.src.dtype, dst.subarray(row * r.cols * oes, (row + 1) * r.cols * oes), p.outDtype, r.cols);
      }
    }
  });
  return { out, overflow, nonfinite };
}

// Output leaves a worker in windows of WINDOW bytes: the CRC, the hash and the pwrite of a window all hit the
// CPU cache, and page-cache writes of ~1 MiB cost several times less kernel time than 16 MiB ones. The CRC and
// digest are computed incrementally over the same bytes in the same order, so they equal whole-piece values.
const WINDOW = 1 << 20;

// Output windows go to disk with O_DIRECT where the file system allows it: no copy into the page cache (which
// costs more kernel time than everything else together, and makes the final fsync wait for gigabytes of
// writeback), and writers of one file do not spin on its inode lock. O_DIRECT needs the file offset, the length and
// the buffer address aligned, so a piece's first and last partial blocks are written through the page cache and
// its block-aligned middle directly, from a page-aligned buffer. No block is ever written both ways, so the two
// paths never overlap. CKPT_DIRECT_IO=0 turns it off; where opening with O_DIRECT or an aligned write is refused
// (tmpfs, some network file systems), the file is written through the page cache as before.
const directIo = process.env.CKPT_DIRECT_IO !== "0" && typeof fsc.O_DIRECT === "number";
/** Bytes per direct write. Two buffers alternate: one is being written while the next window is computed. */
const DIRECT_WINDOW = Number(process.env.CKPT_DIRECT_WINDOW ?? 4 << 20);
/** Output path → direct-I/O block alignment, or 0 when direct I/O is not used for it. */
const directAlign = new Map<string, number>();
let directBufs: Buffer[] | undefined;

function directBuffers(): Buffer[] {
  return (directBufs ??= allocDirectBuffers());
}

function allocDirectBuffers(): Buffer[] {
  // The addon's buffers sit on huge pages (a direct write pins one page per 2 MiB instead of 512); without it,
  // WebAssembly memory is page-aligned, which is all O_DIRECT needs. Buffers from the JS heap are not aligned.
  const addon = process.env.CKPT_NATIVE === "0" ? undefined : loadNative();
  return [0, 1].map(() => addon?.alignedBuffer?.(DIRECT_WINDOW)
    ?? Buffer.from(new WebAssembly.Memory({ initial: DIRECT_WINDOW / 65536, maximum: DIRECT_WINDOW / 65536 }).buffer, 0, DIRECT_WINDOW));
}

interface PendingWrite { done: Promise<void>; buf: Buffer; len: number; pos: number }

function writeAsync(fd: number, buf: Buffer, len: number, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const next = (): void => write(fd, buf, done, len - done, pos + done, (err, n) => {
      if (err) return reject(err);
      done += n;
      if (done < len) next();
      else resolve();
    });
    next();
  });
}

function alignmentFor(path: string): number {
  let a = directAlign.get(path);
  if (a === undefined) {
    a = 0;
    if (directIo) {
      try {
        a = Math.max(4096, Number(statfsSync(dirname(path)).bsize));
        if (DIRECT_WINDOW % a !== 0) a = 0;
      } catch {
        a = 0;
      }
    }
    directAlign.set(path, a);
  }
  return a;
}

class PieceSink {
  private crc = 0;
  private readonly hasher?: Hasher;
  /** File offset of the next byte handed to write(). */
  private pos: number;
  private readonly fd: number;
  private dfd: number | undefined;
  private readonly align: number;
  private readonly path: string;
  /** The direct buffer being filled (index into directBuffers()) holds file offsets [dStart, dStart + dFill). */
  private cur = 0;
  private dStart = 0;
  private dFill = 0;
  private readonly pending: (PendingWrite | undefined)[] = [undefined, undefined];
  /** Partial blocks going through the page cache (queued, so a worker never waits behind a direct write's inode lock). */
  private readonly small: Promise<void>[] = [];
  bytes = 0;
  static async open(p: PieceTask, fds: (path: string) => number, dfds: (path: string) => number | undefined): Promise<PieceSink> {
    return new PieceSink(p, fds, dfds, p.digest ? await createHasher(p.digest) : undefined);
  }
  private constructor(p: PieceTask, fds: (path: string) => number, dfds: (path: string) => number | undefined, hasher: Hasher | undefined) {
    this.path = p.outPath;
    this.fd = fds(p.outPath);
    this.pos = p.outOffset;
    this.align = alignmentFor(p.outPath);
    // Pieces shorter than two blocks gain nothing from direct I/O.
    this.dfd = this.align > 0 && p.elems * elementSize(p.outDtype) >= 2 * this.align ? dfds(p.outPath) : undefined;
    this.hasher = hasher;
  }
  /**
   * The next `n` output bytes, computed by `fill(dst, offset)` straight into the buffer they leave from (the direct-I/O
   * buffer when the write is block-aligned: no copy between reading a source and writing it), `offset` counting
   * from the first of the `n` bytes. Each call gets whole elements of `unit` bytes, at most WINDOW bytes, CRC'd and
   * digested while still in cache.
   */
  async produce(n: number, unit: number, fill: (dst: Uint8Array, offset: number) => void): Promise<void> {
    for (let o = 0; o < n;) {
      let direct = this.dfd !== undefined && !(this.dFill === 0 && this.pos % this.align !== 0);
      if (direct && this.dFill === 0) {
        await this.settle(this.cur); // the buffer's previous write must be done before it is refilled
        if (this.dfd === undefined) direct = false;
        else this.dStart = this.pos;
      }
      if (direct) {
        const d = directBuffers()[this.cur]!;
        let m = Math.min(n - o, WINDOW, d.length - this.dFill);
        m -= m % unit;
        if (m > 0) {
          const dst = d.subarray(this.dFill, this.dFill + m);
          fill(dst, o);
          this.crc = crc32(dst, this.crc);
          this.hasher?.update(dst);
          this.bytes += m;
          this.dFill += m;
          this.pos += m;
          o += m;
          if (this.dFill === d.length) this.flush();
          continue;
        }
      }
      // Page-cache output, the piece's first partial block, or an element straddling the buffer's end: through a
      // scratch window and write(), which splits at any byte.
      const m = Math.min(n - o, WINDOW);
      const tmp = scratchBuffer("produce", m);
      fill(tmp, o);
      await this.write(tmp);
      o += m;
    }
  }
  /** Takes the next output bytes (copied before it returns: `b` may be reused once the promise resolves). */
  async write(b: Uint8Array): Promise<void> {
    this.crc = crc32(b, this.crc);
    this.hasher?.update(b);
    this.bytes += b.length;
    if (this.dfd === undefined) {
      writeExact(this.fd, b, this.pos);
      this.pos += b.length;
      return;
    }
    for (let o = 0; o < b.length;) {
      if (this.dfd === undefined) {
        // direct writes were refused for this file (see settle)
        writeExact(this.fd, b.subarray(o), this.pos);
        this.pos += b.length - o;
        return;
      }
      if (this.dFill === 0 && this.pos % this.align !== 0) {
        // the piece's first partial block
        const n = Math.min(b.length - o, this.align - (this.pos % this.align));
        this.writeSmall(b.subarray(o, o + n), this.pos);
        this.pos += n;
        o += n;
        continue;
      }
      if (this.dFill === 0) {
        await this.settle(this.cur); // the buffer's previous write must be done before it is refilled
        if (this.dfd === undefined) continue;
        this.dStart = this.pos;
      }
      const d = directBuffers()[this.cur]!;
      const n = Math.min(b.length - o, d.length - this.dFill);
      d.set(b.subarray(o, o + n), this.dFill);
      this.dFill += n;
      this.pos += n;
      o += n;
      if (this.dFill === d.length) this.flush();
    }
  }
  private writeSmall(b: Uint8Array, pos: number): void {
    const copy = Buffer.from(b); // b's memory is reused before the write runs
    const done = writeAsync(this.fd, copy, copy.length, pos);
    done.catch(() => {}); // observed in result()
    this.small.push(done);
  }
  /** Starts writing the current direct buffer (whole blocks directly, a trailing partial block through the page cache). */
  private flush(): void {
    const d = directBuffers()[this.cur]!;
    const whole = this.dFill - (this.dFill % this.align);
    if (whole < this.dFill) this.writeSmall(d.subarray(whole, this.dFill), this.dStart + whole);
    if (whole > 0) {
      if (this.dfd !== undefined) {
        const done = writeAsync(this.dfd, d, whole, this.dStart);
        done.catch(() => {}); // observed in settle()
        this.pending[this.cur] = { done, buf: d, len: whole, pos: this.dStart };
      } else writeExact(this.fd, d.subarray(0, whole), this.dStart);
    }
    this.dFill = 0;
    this.cur ^= 1;
  }
  /** Waits for buffer i's write; a refused direct write (alignment rules stricter than the block size) is redone through the page cache. */
  private async settle(i: number): Promise<void> {
    const w = this.pending[i];
    if (!w) return;
    this.pending[i] = undefined;
    try {
      await w.done;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EINVAL") throw e;
      directAlign.set(this.path, 0);
      this.dfd = undefined;
      writeExact(this.fd, w.buf.subarray(0, w.len), w.pos);
    }
  }
  /** Every byte is on its way to disk and every write has finished. */
  async result(overflow: number): Promise<PieceResult> {
    if (this.dFill > 0) this.flush();
    await this.settle(this.cur ^ 1);
    await this.settle(this.cur);
    await Promise.all(this.small);
    return { crc: this.crc, bytes: this.bytes, f16Overflow: overflow, digest: this.hasher?.hex() };
  }
  /** After an error: wait for writes in flight, ignoring their outcome, so no buffer is written while reused. */
  async abandon(): Promise<void> {
    for (const w of this.pending) if (w) await w.done.catch(() => {});
    this.pending[0] = this.pending[1] = undefined;
    await Promise.allSettled(this.small);
  }
}

/**
 * Pieces made only of dense runs (source rows back to back, no dequant) and zeros, in runs of at least 16 KiB on
 * average: these are computed window by window, reading just the source bytes of each window, so nothing larger
 * than a window ever leaves the CPU cache.
 */
function streamable(p: PieceTask): boolean {
  let srcRuns = 0;
  let srcElems = 0;
  for (const r of p.runs) {
    if (!r.src) continue;
    if (r.decode || r.transpose || r.src.stride !== r.cols) return false;
    if (r.src.dtype !== p.outDtype && !(isCastable(r.src.dtype) && isCastable(p.outDtype))) return false;
    srcRuns++;
    srcElems += r.rows * r.cols;
  }
  return srcRuns === 0 || (srcElems * elementSize(p.outDtype)) / srcRuns >= 16 * 1024;
}

async function streamPiece(task: WorkerTask, p: PieceTask, fds: (path: string) => number, dfds: (path: string) => number | undefined, k: Kernels): Promise<PieceResult> {
  const oes = elementSize(p.outDtype);
  const sink = await PieceSink.open(p, fds, dfds);
  try {
    let overflow = 0;
    const runs = [...p.runs].sort((a, b) => a.dst - b.dst);
    let expect = 0;
    for (const r of runs) {
      if (r.dst !== expect) throw new Error(`internal: runs of a piece do not tile it (gap at element ${expect})`);
      const n = r.rows * r.cols;
      expect += n;
      const src = r.src;
      if (!src) {
        await sink.produce(n * oes, oes, (dst) => dst.fill(0));
      } else if (src.dtype === p.outDtype) {
        // Same dtype: the source bytes are read straight into the outgoing buffer.
        await sink.produce(n * oes, oes, (dst, off) => readSource(task, fds, src.file, dst, src.byteOffset + off));
      } else {
        const ses = elementSize(src.dtype);
        const sd = src.dtype as CastableDType;
        await sink.produce(n * oes, oes, (dst, off) => {
          const m = dst.length / oes;
          const staged = scratchBuffer("staging", m * ses);
          readSource(task, fds, src.file, staged, src.byteOffset + (off / oes) * ses);
          if (p.countF16Overflow) overflow += k.stats(staged, sd, m).f16Overflow;
          k.cast(staged, sd, dst, p.outDtype as CastableDType, m);
        });
      }
    }
    if (expect !== p.elems) throw new Error(`internal: runs cover ${expect} of ${p.elems} elements`);
    return await sink.result(overflow);
  } catch (e) {
    await sink.abandon();
    throw e;
  }
}

async function finishPiece(p: PieceTask, out: Buffer, fds: (path: string) => number, dfds: (path: string) => number | undefined, overflow: number, nonfinite = 0): Promise<PieceResult> {
  const sink = await PieceSink.open(p, fds, dfds);
  try {
    for (let o = 0; o < out.length; o += WINDOW) await sink.write(out.subarray(o, Math.min(out.length, o + WINDOW)));
    const res = await sink.result(overflow);
    return nonfinite ? { ...res, nonfinite } : res;
  } catch (e) {
    await sink.abandon();
    throw e;
  }
}

/**
 * `elems` output elements of `outDtype` computed from `runs` exactly as a written piece's are (decodes, casts): for
 * `ckpt verify`, which compares a checkpoint with what a conversion of the other would write. A copy (not scratch).
 */
export function valuesOfRuns(task: Omit<WorkerTask, "pieces">, runs: Run[], elems: number, outDtype: DType): Buffer {
  const open = new Map<string, number>();
  const fds = (path: string): number => {
    let fd = open.get(path);
    if (fd === undefined) open.set(path, (fd = openSync(path, "r")));
    return fd;
  };
  try {
    const t: WorkerTask = { ...task, pieces: [] };
    return Buffer.from(computeRuns(t, { outPath: "", outOffset: 0, outDtype, elems, runs, countF16Overflow: false }, fds, new Map(), "out").out);
  } finally {
    for (const fd of open.values()) closeSync(fd);
  }
}

export default async function runTask(task: WorkerTask): Promise<PieceResult[]> {
  const open = new Map<string, number>();
  const fds = (path: string): number => {
    let fd = open.get(path);
    if (fd === undefined) {
      // Output files are opened read-write, sources read-only.
      const isOut = task.pieces.some((p) => p.outPath === path);
      fd = openSync(path, isOut ? "r+" : "r");
      open.set(path, fd);
    }
    return fd;
  };
  const direct = new Map<string, number | undefined>();
  const dfds = (path: string): number | undefined => {
    if (task.directIo === false) return undefined;
    if (!direct.has(path)) {
      let fd: number | undefined;
      try {
        fd = openSync(path, fsc.O_RDWR | fsc.O_DIRECT);
      } catch {
        directAlign.set(path, 0); // no O_DIRECT here (tmpfs, …)
      }
      direct.set(path, fd);
    }
    return direct.get(path);
  };
  const scaleCache = new Map<string, Uint8Array>();
  try {
    const results: PieceResult[] = [];
    for (const p of task.pieces) {
      results.push(await runPiece(task, p, fds, dfds, scaleCache));
      // A macrotask turn between pieces: on the executor's main-thread lane this lets the event loop hand the worker
      // threads their next tasks (page-cache writes are synchronous, so a batch would otherwise hold the loop).
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    return results;
  } finally {
    for (const fd of open.values()) closeSync(fd);
    for (const fd of direct.values()) if (fd !== undefined) closeSync(fd);
  }
}
