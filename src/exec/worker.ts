// Worker thread body: computes output pieces. Each piece reads only its source byte ranges (pread), converts
// them with the kernels straight into the output buffer, and pwrites it at its planned offset. The bytes never
// cross threads; only small results (CRC, hash, counters) go back.
import { closeSync, openSync, readSync, writeSync } from "node:fs";
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { elementSize, isCastable, type CastableDType, type DType } from "../dtypes.js";
import { getKernels, type Kernels } from "../kernels/index.js";
import type { Run } from "../plan/runs.js";

export interface PieceTask {
  outPath: string;
  outOffset: number;
  outDtype: DType;
  /** Output elements of the piece. */
  elems: number;
  runs: Run[];
  /** Count source values beyond the f16 range (only when casting into F16). */
  countF16Overflow: boolean;
  hash: boolean;
}

export interface WorkerTask {
  pieces: PieceTask[];
  /** Source file name (as in runs) → absolute path. */
  paths: Record<string, string>;
  /** Scale tensors for FP8 dequantization: name → where its F32 bytes are. */
  scales: Record<string, { file: string; byteOffset: number; byteLength: number; cols: number }>;
  device?: "cpu" | "cuda";
}

export interface PieceResult {
  crc: number;
  bytes: number;
  f16Overflow: number;
  sha256?: string;
}

let kernels: Kernels | undefined;

// Per-thread scratch buffers, reused by every piece: a fresh 16 MiB Buffer per piece costs an mmap and page
// faults on every byte (several times slower than the pread into it). Nothing here escapes runTask: only CRCs
// and hashes go back, so reuse cannot change what is written.
const scratch: { staging?: Buffer; out?: Buffer } = {};
function scratchBuffer(kind: "staging" | "out", bytes: number): Buffer {
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
    if (n === 0) throw new Error(`short read: ${path} ends before byte ${position + buf.length} (file truncated or changed during the run?)`);
    done += n;
  }
}

function writeExact(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) done += writeSync(fd, buf, done, buf.length - done, position + done);
}

interface Span { file: string; start: number; end: number; at: number }

/** Merges the byte ranges runs need into few large reads; returns where each run's bytes land in the staging buffer. */
function stageSources(task: WorkerTask, runs: Run[], fds: (path: string) => number): { staging: Buffer; where: number[] } {
  const ranges = runs.map((r, i) => {
    if (!r.src) return undefined;
    const es = elementSize(r.src.dtype);
    const len = ((r.rows - 1) * r.src.stride + r.cols) * es;
    return { i, file: r.src.file, start: r.src.byteOffset, end: r.src.byteOffset + len };
  }).filter((x): x is { i: number; file: string; start: number; end: number } => x !== undefined);
  const sorted = [...ranges].sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.start - b.start));
  const spans: Span[] = [];
  const spanOf = new Map<number, Span>();
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
    spanOf.set(r.i, spans[spans.length - 1]!);
  }
  const staging = scratchBuffer("staging", total);
  for (const s of spans) {
    const path = task.paths[s.file]!;
    readExact(fds(path), staging.subarray(s.at, s.at + (s.end - s.start)), s.start, path);
  }
  const where = runs.map((r, i) => {
    const s = spanOf.get(i);
    return s ? s.at + (r.src!.byteOffset - s.start) : -1;
  });
  return { staging, where };
}

function copyRows(src: Uint8Array, stride: number, rows: number, cols: number, es: number, dst: Uint8Array): void {
  for (let r = 0; r < rows; r++) dst.set(src.subarray(r * stride * es, (r * stride + cols) * es), r * cols * es);
}

function runPiece(task: WorkerTask, p: PieceTask, fds: (path: string) => number, scaleCache: Map<string, Uint8Array>): PieceResult {
  const k = (kernels ??= getKernels());
  const oes = elementSize(p.outDtype);
  const out = scratchBuffer("out", p.elems * oes);
  let overflow = 0;
  if (directReads(p)) {
    // Plain copies of large dense runs: pread straight into the output buffer (no staging copy).
    for (const r of p.runs) {
      const dst = out.subarray(r.dst * oes, (r.dst + r.rows * r.cols) * oes);
      if (!r.src) dst.fill(0);
      else readExact(fds(task.paths[r.src.file]!), dst, r.src.byteOffset, task.paths[r.src.file]!);
    }
    return finishPiece(p, out, fds, 0);
  }
  const { staging, where } = stageSources(task, p.runs, fds);
  p.runs.forEach((r, i) => {
    const dst = out.subarray(r.dst * oes, (r.dst + r.rows * r.cols) * oes);
    if (!r.src) { dst.fill(0); return; }
    const ses = elementSize(r.src.dtype);
    const src = staging.subarray(where[i]!, where[i]! + ((r.rows - 1) * r.src.stride + r.cols) * ses);
    if (r.dequant) {
      let scale = scaleCache.get(r.dequant.scale);
      const s = task.scales[r.dequant.scale]!;
      if (!scale) {
        scale = Buffer.allocUnsafe(s.byteLength);
        readExact(fds(task.paths[s.file]!), scale, s.byteOffset, task.paths[s.file]!);
        scaleCache.set(r.dequant.scale, scale);
      }
      for (let row = 0; row < r.rows; row++) {
        const wrow = src.subarray(row * r.src.stride * ses, (row * r.src.stride + r.cols) * ses);
        const drow = dst.subarray(row * r.cols * oes, (row + 1) * r.cols * oes);
        k.dequantBlock(wrow, r.src.dtype as "F8_E4M3" | "F8_E5M2", 1, r.cols, r.dequant.rowStart + row, r.dequant.colStart, scale, s.cols, r.dequant.block, drow, p.outDtype as CastableDType);
      }
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
      const idx = new Int32Array(r.rows);
      for (let j = 0; j < r.rows; j++) idx[j] = j;
      k.gatherRows(src, r.src.dtype, r.src.stride, idx, 0, r.cols, dst, p.outDtype);
    }
  });
  return finishPiece(p, out, fds, overflow);
}

/** True when every run is a same-dtype dense copy (or zeros) of at least 64 KiB: one pread each beats staging. */
function directReads(p: PieceTask): boolean {
  for (const r of p.runs) {
    if (!r.src) continue;
    if (r.dequant || r.src.dtype !== p.outDtype || r.src.stride !== r.cols) return false;
    if (r.rows * r.cols * elementSize(r.src.dtype) < 64 * 1024) return false;
  }
  return true;
}

function finishPiece(p: PieceTask, out: Buffer, fds: (path: string) => number, overflow: number): PieceResult {
  writeExact(fds(p.outPath), out, p.outOffset);
  return {
    crc: crc32(out),
    bytes: out.length,
    f16Overflow: overflow,
    sha256: p.hash ? createHash("sha256").update(out).digest("hex") : undefined,
  };
}

export default function runTask(task: WorkerTask): PieceResult[] {
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
  const scaleCache = new Map<string, Uint8Array>();
  try {
    return task.pieces.map((p) => runPiece(task, p, fds, scaleCache));
  } finally {
    for (const fd of open.values()) closeSync(fd);
  }
}
