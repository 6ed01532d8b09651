// The native lane: output pieces made only of dense source runs and zeros (every piece of a dtype-kept or plain-cast
// conversion, every FSDP Shard(0) slice) are computed by the addon's copyPiece on libuv pool threads — pread, cast,
// CRC-32, XXH3-128 and pwrite (O_DIRECT for the block-aligned middle) without a V8 isolate or JS per window. It
// writes exactly the bytes the worker's streamPiece writes (test/native-copy.test.ts compares the two on every
// shape of piece); anything else (transposes, dequantization, column windows, remote sources, SHA-256) stays on the
// piscina workers. CKPT_NATIVE_COPY=0 (or CKPT_NATIVE=0) turns the lane off.
import { closeSync, constants as fsc, openSync, statfsSync } from "node:fs";
import { dirname } from "node:path";
import { elementSize, isCastable, type DType } from "../dtypes.js";
import { DTYPE_CODE, loadNative } from "../kernels/native.js";
import type { PieceResult, PieceTask } from "./worker.js";

interface NativeCopyResult extends PieceResult {
  /** O_DIRECT writes were refused (EINVAL) and the piece went through the page cache. */
  directRefused: boolean;
}

type CopyPieceFn = (spec: Float64Array) => Promise<NativeCopyResult>;

/** The addon's copyPiece, or undefined when the lane is off or the addon predates it. */
export function nativeCopier(): CopyPieceFn | undefined {
  if (process.env.CKPT_NATIVE === "0" || process.env.CKPT_NATIVE_COPY === "0") return undefined;
  const addon = loadNative() as { copyPiece?: CopyPieceFn } | undefined;
  return addon?.copyPiece?.bind(addon);
}

/** statfs f_type of tmpfs (linux/magic.h). */
const TMPFS_MAGIC = 0x01021994;

const codeOf = (d: DType): number => (isCastable(d) ? DTYPE_CODE[d] : -1);

/** Whether the native lane computes this piece exactly as the worker would. */
export function nativeEligible(p: PieceTask, paths: Record<string, string>): boolean {
  if (p.digest !== undefined && p.digest !== "xxh128") return false;
  if (elementSize(p.outDtype) > 16) return false;
  if (p.encode || p.lora) return false;
  for (const r of p.runs) {
    if (!r.src) continue;
    if (r.decode || r.transpose || r.src.stride !== r.cols) return false;
    if (paths[r.src.file] === undefined) return false;
    if (r.src.dtype !== p.outDtype && !(isCastable(r.src.dtype) && isCastable(p.outDtype))) return false;
  }
  return true;
}

/**
 * File descriptors of one execution, opened once and shared by every native piece: sources read-only, outputs
 * read-write plus an O_DIRECT descriptor where the file system takes one.
 */
export class NativeFiles {
  /** Pieces running at once (each holds one libuv pool thread); the rest wait here, not in libuv's queue. */
  private running = 0;
  private readonly waiting: (() => void)[] = [];
  private readonly fds = new Map<string, number>();
  private readonly direct = new Map<string, { fd: number; align: number } | undefined>();
  private readonly refused: number[] = [];
  constructor(private readonly directIo: boolean, private readonly lanes = 2) {}

  async slot<T>(body: () => Promise<T>): Promise<T> {
    // A finishing piece hands its slot straight to the next waiter, so `running` never exceeds `lanes`.
    if (this.running >= this.lanes) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.running++;
    try {
      return await body();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running--;
    }
  }

  fd(path: string, write: boolean): number {
    const key = (write ? "w:" : "r:") + path;
    let fd = this.fds.get(key);
    if (fd === undefined) this.fds.set(key, (fd = openSync(path, write ? "r+" : "r")));
    return fd;
  }

  /** The O_DIRECT descriptor and block alignment for an output, or undefined (off, refused, unsupported). */
  directFor(path: string): { fd: number; align: number } | undefined {
    if (!this.directIo || process.env.CKPT_DIRECT_IO === "0" || typeof fsc.O_DIRECT !== "number") return undefined;
    if (!this.direct.has(path)) {
      let d: { fd: number; align: number } | undefined;
      try {
        const st = statfsSync(dirname(path));
        const align = Math.max(4096, Number(st.bsize));
        // tmpfs takes O_DIRECT (Linux ≥ 6.6) and copies anyway, bypassing the per-file write lock; the addon's window
        // is 4 MiB, and an alignment that does not divide it is not worth the special case.
        if (Number(st.type) !== TMPFS_MAGIC && (4 << 20) % align === 0) d = { fd: openSync(path, fsc.O_RDWR | fsc.O_DIRECT), align };
      } catch {
        d = undefined; // no O_DIRECT here (some network file systems, …)
      }
      this.direct.set(path, d);
    }
    return this.direct.get(path);
  }

  /** After a refused direct write: later pieces of that file go through the page cache (the descriptor stays open
   * until close(): pieces in flight may still hold it). */
  refuseDirect(path: string): void {
    const d = this.direct.get(path);
    if (d) this.refused.push(d.fd);
    this.direct.set(path, undefined);
  }

  /** The path behind a descriptor this table opened (for error messages). */
  pathOf(fd: number): string | undefined {
    for (const [key, f] of this.fds) if (f === fd) return key.slice(2);
    for (const [path, d] of this.direct) if (d?.fd === fd) return path;
    return undefined;
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    for (const d of this.direct.values()) if (d) closeSync(d.fd);
    for (const fd of this.refused) closeSync(fd);
    this.fds.clear();
    this.direct.clear();
    this.refused.length = 0;
  }
}

/** The spec copyPiece reads (layout documented in native/src/copy_piece.cc). */
export function copySpec(p: PieceTask, paths: Record<string, string>, files: NativeFiles): Float64Array {
  const oes = elementSize(p.outDtype);
  const runs = [...p.runs].sort((a, b) => a.dst - b.dst);
  const spec: number[] = [];
  let expect = 0;
  for (const r of runs) {
    if (r.dst !== expect) throw new Error(`internal: runs of a piece do not tile it (gap at element ${expect})`);
    const n = r.rows * r.cols;
    expect += n;
    if (n === 0) continue;
    if (!r.src) spec.push(-1, 0, n * oes, -1, oes);
    else {
      const same = r.src.dtype === p.outDtype;
      spec.push(files.fd(paths[r.src.file]!, false), r.src.byteOffset, n * oes, same ? -1 : codeOf(r.src.dtype), elementSize(r.src.dtype));
    }
  }
  if (expect !== p.elems) throw new Error(`internal: runs cover ${expect} of ${p.elems} elements`);
  const d = files.directFor(p.outPath);
  const flags = (p.digest === "xxh128" ? 1 : 0) | (p.countF16Overflow ? 2 : 0);
  return Float64Array.from([files.fd(p.outPath, true), d?.fd ?? -1, d?.align ?? 0, p.outOffset, codeOf(p.outDtype), oes, flags, spec.length / 5, ...spec]);
}

/**
 * Runs pieces on the native lane, concurrently (the libuv pool bounds how many run at once). Settles only when every
 * piece has stopped writing, so a failure never leaves a write in flight behind it.
 */
export async function copyPiecesNative(copy: CopyPieceFn, pieces: PieceTask[], paths: Record<string, string>, files: NativeFiles): Promise<PieceResult[]> {
  const settled = await Promise.allSettled(pieces.map(async (p) => {
    const r = await files.slot(() => copy(copySpec(p, paths, files))).catch((e: Error) => { throw namedError(e, p, files); });
    if (r.directRefused) files.refuseDirect(p.outPath);
    return { crc: r.crc, bytes: r.bytes, f16Overflow: r.f16Overflow, digest: r.digest };
  }));
  const failed = settled.find((x) => x.status === "rejected");
  if (failed) throw failed.reason;
  return settled.map((x) => (x as PromiseFulfilledResult<PieceResult>).value);
}

/** The addon's error with its descriptor replaced by the file's path, and the errno name as `code` (like fs errors). */
function namedError(e: Error, p: PieceTask, files: NativeFiles): Error {
  const fd = /\bfd (\d+)/.exec(e.message);
  const path = (fd && files.pathOf(Number(fd[1]))) ?? p.outPath;
  const msg = fd ? e.message.replace(fd[0], path) : e.message;
  const err = new Error(`${msg} (output piece at byte ${p.outOffset} of ${p.outPath})`) as NodeJS.ErrnoException;
  const code = /^(E[A-Z0-9]+):/.exec(e.message)?.[1];
  if (code) { err.code = code; err.path = path; }
  return err;
}
