// In-memory DCP writer for tests and small outputs: every chunk becomes one torch.save blob, blobs are
// concatenated per `.distcp` file (BYTE_IO values first), then `.metadata` is written via `.metadata.tmp` + rename.
import { mkdir, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { type DType, elementSize, numelOf } from "../../dtypes.js";
import { CkptError } from "../../errors.js";
import type { PlainValue } from "../pickle/writer.js";
import { encodeByteIoBlob, encodeTensorBlob } from "../torchsave/writer.js";
import { type DcpMetadata, type DcpTensorMeta, encodeDcpMetadata, isPlainFileName } from "./metadata.js";

export interface DcpWriteChunk {
  offsets: number[];
  sizes: number[];
  /** Contiguous little-endian bytes of the chunk. */
  data: Uint8Array;
  /** Target file; default `__0_0.distcp`. */
  file?: string;
}
export interface DcpWriteTensor { fqn: string; dtype: DType; size: number[]; chunks: DcpWriteChunk[]; path?: string[] }
export interface DcpWriteBytes { fqn: string; value: PlainValue; file?: string; path?: string[] }

export const DEFAULT_DCP_FILE = "__0_0.distcp";

export async function writeDcp(
  dir: string,
  items: { tensors: DcpWriteTensor[]; bytes?: DcpWriteBytes[]; extraFiles?: string[] },
): Promise<DcpMetadata> {
  const md: DcpMetadata = { tensors: new Map(), bytes: new Set(), plannerData: new Map(), storage: [] };
  const files = new Map<string, Buffer[]>();
  const sizes = new Map<string, number>();
  const add = (file: string, blob: Buffer): number => {
    if (!isPlainFileName(file)) throw new CkptError("DCP", `storage path '${file}' is not a plain file name`);
    if (!files.has(file)) {
      files.set(file, []);
      sizes.set(file, 0);
    }
    const off = sizes.get(file)!;
    files.get(file)!.push(blob);
    sizes.set(file, off + blob.length);
    return off;
  };
  for (const f of items.extraFiles ?? []) if (!files.has(f)) add(f, Buffer.alloc(0));
  for (const b of items.bytes ?? []) {
    if (md.tensors.has(b.fqn) || md.bytes.has(b.fqn)) throw new CkptError("DCP", "duplicate key", { tensor: b.fqn });
    const blob = encodeByteIoBlob(b.value);
    const file = b.file ?? DEFAULT_DCP_FILE;
    const offset = add(file, blob);
    md.bytes.add(b.fqn);
    md.plannerData.set(b.fqn, b.path ?? [b.fqn]);
    md.storage.push({ fqn: b.fqn, file, offset, length: blob.length });
  }
  for (const t of items.tensors) {
    if (md.tensors.has(t.fqn) || md.bytes.has(t.fqn)) throw new CkptError("DCP", "duplicate key", { tensor: t.fqn });
    const meta: DcpTensorMeta = { dtype: t.dtype, size: [...t.size], chunks: [] };
    const seen = new Set<string>();
    t.chunks.forEach((c, index) => {
      const need = numelOf(c.sizes) * elementSize(t.dtype);
      if (c.data.length !== need) {
        throw new CkptError("INTERNAL", `chunk ${index} has ${c.data.length} bytes, needs ${need}`, { tensor: t.fqn });
      }
      meta.chunks.push({ offsets: [...c.offsets], sizes: [...c.sizes] });
      const k = c.offsets.join(",");
      if (seen.has(k)) return; // empty chunks sharing one MetadataIndex: one storage entry (docs/sharding.md §7)
      seen.add(k);
      const blob = encodeTensorBlob(t.dtype, c.sizes, c.data);
      const file = c.file ?? DEFAULT_DCP_FILE;
      const offset = add(file, blob);
      md.storage.push({ fqn: t.fqn, offsets: [...c.offsets], index, file, offset, length: blob.length });
    });
    md.tensors.set(t.fqn, meta);
    md.plannerData.set(t.fqn, t.path ?? [t.fqn]);
  }
  await mkdir(dir, { recursive: true });
  for (const [f, parts] of files) await writeFile(join(dir, f), Buffer.concat(parts));
  const tmp = join(dir, ".metadata.tmp");
  await writeFile(tmp, encodeDcpMetadata(md));
  await rm(join(dir, ".metadata"), { force: true });
  await rename(tmp, join(dir, ".metadata"));
  return md;
}

/** One chunk per tensor, all in `__0_0.distcp`. */
export async function writeSingleFileDcp(
  dir: string,
  tensors: { fqn: string; dtype: DType; shape: number[]; data: Uint8Array }[],
): Promise<void> {
  await writeDcp(dir, {
    tensors: tensors.map((t) => ({
      fqn: t.fqn, dtype: t.dtype, size: t.shape,
      chunks: [{ offsets: t.shape.map(() => 0), sizes: t.shape, data: t.data }],
    })),
    extraFiles: [DEFAULT_DCP_FILE],
  });
}
