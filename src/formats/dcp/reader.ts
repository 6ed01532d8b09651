// Opens a DCP checkpoint folder: `.metadata` (or the merged `__{rank}.metadata` files PT-main writes with
// use_collectives=False), then each tensor blob's zip directory and data.pkl — small reads only, never the data.
import { open, readFile, readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { type DType, elementSize, numelOf } from "../../dtypes.js";
import { CkptError } from "../../errors.js";
import { parseTensorBlob } from "../torchsave/reader.js";
import { contiguousStrides } from "../torchsave/writer.js";
import { type DcpMetadata, type DcpStorageEntry, decodeDcpMetadata, isPlainFileName } from "./metadata.js";

export interface DcpStoredChunk {
  fqn: string;
  dtype: DType;
  offsets: number[];
  sizes: number[];
  file: string;
  /** Absolute byte offset in `file` of the chunk's first element. */
  dataOffset: number;
  /** Bytes from `dataOffset` spanned by the chunk (numel × element size when contiguous). */
  dataLength: number;
  /** Row-major with no gaps: the chunk is exactly `dataLength` bytes at `dataOffset`. */
  contiguous: boolean;
  /** Element strides of the stored view (honour them when not contiguous). */
  strides: number[];
  /** Blob position in `file` (for diagnostics and verification). */
  blobOffset: number;
  blobLength: number;
}

export interface OpenedDcp {
  metadata: DcpMetadata;
  chunks: DcpStoredChunk[];
}

function isContiguous(shape: number[], strides: number[]): boolean {
  const c = contiguousStrides(shape);
  return shape.every((d, i) => d <= 1 || strides[i] === c[i]);
}

function mergeMetadata(parts: DcpMetadata[]): DcpMetadata {
  const out: DcpMetadata = { tensors: new Map(), bytes: new Set(), plannerData: new Map(), storage: [] };
  for (const p of parts) {
    for (const [k, t] of p.tensors) {
      const cur = out.tensors.get(k);
      if (!cur) out.tensors.set(k, { dtype: t.dtype, size: [...t.size], chunks: [...t.chunks] });
      else {
        const seen = new Set(cur.chunks.map((c) => c.offsets.join(",") + "/" + c.sizes.join(",")));
        for (const c of t.chunks) if (!seen.has(c.offsets.join(",") + "/" + c.sizes.join(","))) cur.chunks.push(c);
      }
    }
    for (const b of p.bytes) out.bytes.add(b);
    for (const [k, v] of p.plannerData) if (!out.plannerData.has(k)) out.plannerData.set(k, v);
    out.storage.push(...p.storage);
  }
  return out;
}

async function readMetadata(dir: string): Promise<DcpMetadata> {
  const main = join(dir, ".metadata");
  try {
    return decodeDcpMetadata(await readFile(main), main);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (e) {
    throw new CkptError("NOT_FOUND", `cannot read DCP folder: ${(e as Error).message}`, { file: dir });
  }
  const ranks = names.filter((n) => /^__\d+\.metadata$/.test(n)).sort((a, b) => parseInt(a.slice(2)) - parseInt(b.slice(2)));
  if (!ranks.length) throw new CkptError("NOT_FOUND", "no .metadata file: not a DCP checkpoint", { file: dir });
  const parts: DcpMetadata[] = [];
  for (const r of ranks) parts.push(decodeDcpMetadata(await readFile(join(dir, r)), join(dir, r)));
  return mergeMetadata(parts);
}

const key = (fqn: string, offsets: readonly number[]): string => JSON.stringify([fqn, offsets]);

/**
 * Reads one stored chunk as contiguous row-major bytes, honouring its strides (simple helper for tests and small
 * tensors; streaming converters read `dataOffset`/`dataLength` directly for contiguous chunks).
 */
export async function readStoredChunk(dir: string, c: DcpStoredChunk): Promise<Buffer> {
  const fh = await open(join(dir, c.file), "r");
  try {
    const raw = Buffer.alloc(c.dataLength);
    const { bytesRead } = await fh.read(raw, 0, c.dataLength, c.dataOffset);
    if (bytesRead !== c.dataLength) throw new CkptError("DCP", "short read of chunk data", { file: join(dir, c.file), tensor: c.fqn });
    if (c.contiguous) return raw;
    const esz = elementSize(c.dtype);
    const n = numelOf(c.sizes);
    const out = Buffer.alloc(n * esz);
    const idx = new Array<number>(c.sizes.length).fill(0);
    for (let i = 0; i < n; i++) {
      let src = 0;
      for (let d = 0; d < idx.length; d++) src += idx[d]! * c.strides[d]!;
      raw.copy(out, i * esz, src * esz, src * esz + esz);
      for (let d = idx.length - 1; d >= 0; d--) {
        if (++idx[d]! < c.sizes[d]!) break;
        idx[d] = 0;
      }
    }
    return out;
  } finally {
    await fh.close();
  }
}

export async function openDcp(dir: string, opts: { concurrency?: number } = {}): Promise<OpenedDcp> {
  const metadata = await readMetadata(dir);
  const storageByKey = new Map<string, DcpStorageEntry>();
  for (const s of metadata.storage) {
    if (!isPlainFileName(s.file)) throw new CkptError("DCP", `storage path '${s.file}' is not a plain file name`, { file: dir, tensor: s.fqn });
    if (s.offsets) storageByKey.set(key(s.fqn, s.offsets), s);
  }
  // file sizes
  const sizes = new Map<string, number>();
  for (const s of metadata.storage) {
    if (sizes.has(s.file)) continue;
    try {
      sizes.set(s.file, (await stat(join(dir, s.file))).size);
    } catch {
      sizes.set(s.file, -1);
    }
  }
  const checkRange = (s: DcpStorageEntry): void => {
    const fsz = sizes.get(s.file)!;
    const path = join(dir, s.file);
    if (fsz < 0) throw new CkptError("NOT_FOUND", `storage file is missing`, { file: path, tensor: s.fqn });
    if (s.offset + s.length > fsz) {
      throw new CkptError("DCP", `blob [${s.offset}, +${s.length}) lies outside the ${fsz}-byte file`, { file: path, tensor: s.fqn });
    }
  };
  for (const s of metadata.storage) if (!s.offsets) checkRange(s); // BYTE_IO
  // blobs in one file must not overlap (PyTorch writes them back to back)
  const byFile = new Map<string, DcpStorageEntry[]>();
  for (const s of metadata.storage) {
    if (s.length === 0) continue;
    if (!byFile.has(s.file)) byFile.set(s.file, []);
    byFile.get(s.file)!.push(s);
  }
  for (const [f, list] of byFile) {
    list.sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < list.length; i++) {
      const a = list[i - 1]!;
      const b = list[i]!;
      if (a.offset + a.length > b.offset) {
        throw new CkptError("DCP", `blobs of '${a.fqn}' and '${b.fqn}' overlap`, { file: join(dir, f) });
      }
    }
  }

  interface Job { fqn: string; dtype: DType; offsets: number[]; sizes: number[]; s: DcpStorageEntry }
  const jobs: Job[] = [];
  for (const [fqn, t] of metadata.tensors) {
    for (const c of t.chunks) {
      if (numelOf(c.sizes) === 0) continue;
      const s = storageByKey.get(key(fqn, c.offsets));
      if (!s) throw new CkptError("DCP", `no storage entry for chunk at offsets [${c.offsets.join(", ")}]`, { file: dir, tensor: fqn });
      checkRange(s);
      jobs.push({ fqn, dtype: t.dtype, offsets: c.offsets, sizes: c.sizes, s });
    }
  }

  const handles = new Map<string, Awaited<ReturnType<typeof open>>>();
  const chunks: DcpStoredChunk[] = new Array(jobs.length);
  try {
    for (const f of new Set(jobs.map((j) => j.s.file))) handles.set(f, await open(join(dir, f), "r"));
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < jobs.length) {
        const i = next++;
        const { fqn, dtype, offsets, sizes: csz, s } = jobs[i]!;
        const fh = handles.get(s.file)!;
        const path = join(dir, s.file);
        const label = `${path}@${s.offset}`;
        const read = async (off: number, len: number): Promise<Buffer> => {
          const b = Buffer.alloc(len);
          const { bytesRead } = await fh.read(b, 0, len, s.offset + off);
          return bytesRead === len ? b : b.subarray(0, bytesRead);
        };
        let info;
        try {
          info = await parseTensorBlob(read, s.length, label);
        } catch (e) {
          if (e instanceof CkptError && !e.tensor) throw new CkptError(e.code, e.message, { file: e.file ?? label, tensor: fqn, hint: e.hint, cause: e });
          throw e;
        }
        if (info.dtype !== dtype) {
          throw new CkptError("DCP", `blob holds ${info.dtype}, .metadata says ${dtype}`, { file: label, tensor: fqn });
        }
        if (info.shape.length !== csz.length || info.shape.some((d, k) => d !== csz[k])) {
          throw new CkptError("DCP", `blob holds shape [${info.shape}], chunk is [${csz}]`, { file: label, tensor: fqn });
        }
        const esz = elementSize(dtype);
        const contiguous = isContiguous(info.shape, info.strides);
        const start = info.dataOffset + info.storageOffset * esz;
        const dataLength = contiguous ? numelOf(csz) * esz : info.dataLength - info.storageOffset * esz;
        chunks[i] = {
          fqn, dtype, offsets, sizes: csz, file: s.file, dataOffset: s.offset + start, dataLength, contiguous,
          strides: info.strides, blobOffset: s.offset, blobLength: s.length,
        };
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.concurrency ?? 16, jobs.length)) }, worker));
  } finally {
    for (const h of handles.values()) await h.close();
  }
  return { metadata, chunks };
}
