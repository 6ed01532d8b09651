// Safetensors tensors as absolute byte ranges, read here independently of ckpt's readers (header by ranged reads,
// bytes 16 MiB at a time): for tests and benches comparing multi-GB checkpoints without holding a file in memory.
import { closeSync, openSync, readSync, readdirSync } from "node:fs";
import { join } from "node:path";

export interface StEntry { dtype: string; shape: number[]; start: number; end: number; file: string }

/** Every tensor of a safetensors folder: name → dtype, shape, absolute byte range, file. */
export function tensorRanges(dir: string): Map<string, StEntry> {
  const out = new Map<string, StEntry>();
  for (const f of readdirSync(dir).filter((x) => x.endsWith(".safetensors"))) {
    const fd = openSync(join(dir, f), "r");
    try {
      const len = Buffer.alloc(8);
      readSync(fd, len, 0, 8, 0);
      const n = Number(len.readBigUInt64LE(0));
      const h = Buffer.alloc(n);
      readSync(fd, h, 0, n, 8);
      for (const [k, v] of Object.entries(JSON.parse(h.toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>)) {
        if (k !== "__metadata__") out.set(k, { dtype: v.dtype, shape: v.shape, start: 8 + n + v.data_offsets[0], end: 8 + n + v.data_offsets[1], file: join(dir, f) });
      }
    } finally { closeSync(fd); }
  }
  return out;
}

/** `length` bytes of `file` at `start`. */
export function readRange(file: string, start: number, length: number): Buffer {
  const fd = openSync(file, "r");
  try {
    const b = Buffer.alloc(length);
    let got = 0;
    while (got < length) { const k = readSync(fd, b, got, length - got, start + got); if (k === 0) throw new Error(`short read ${file}`); got += k; }
    return b;
  } finally { closeSync(fd); }
}

/** Whether two tensors' bytes are equal, compared 16 MiB at a time. */
export function sameBytes(a: StEntry, b: StEntry): boolean {
  const n = a.end - a.start;
  if (b.end - b.start !== n) return false;
  for (let o = 0; o < n; o += 16 << 20) {
    const k = Math.min(16 << 20, n - o);
    if (!readRange(a.file, a.start + o, k).equals(readRange(b.file, b.start + o, k))) return false;
  }
  return true;
}

/**
 * The first difference between the tensors of two safetensors folders (names, dtypes, shapes, bytes), ignoring the
 * tensors `except` names; undefined when they are the same. Counts what it compared.
 */
export function firstTensorDifference(want: string, got: string, except: (name: string) => boolean = () => false): { difference?: string; tensors: number; bytes: number } {
  const a = tensorRanges(want), b = tensorRanges(got);
  const names = [...a.keys()].sort();
  if (names.join("\n") !== [...b.keys()].sort().join("\n")) return { difference: `tensor names differ between ${want} and ${got}`, tensors: 0, bytes: 0 };
  let bytes = 0;
  for (const k of names) {
    if (except(k)) continue;
    const t = a.get(k)!, u = b.get(k)!;
    if (u.dtype !== t.dtype || u.shape.join() !== t.shape.join()) return { difference: `${k}: ${t.dtype} [${t.shape}] vs ${u.dtype} [${u.shape}]`, tensors: 0, bytes };
    if (!sameBytes(t, u)) return { difference: `${k}: bytes differ`, tensors: 0, bytes };
    bytes += t.end - t.start;
  }
  return { tensors: names.length, bytes };
}
