// Every tensor of a DCP folder reassembled from its stored chunks, which must tile it exactly: the unsharded
// tensors a sharded checkpoint stands for, to compare with another conversion's.
import assert from "node:assert/strict";
import { elementSize, numelOf } from "../../src/dtypes.js";
import { openDcp, readStoredChunk } from "../../src/formats/dcp/index.js";
import type { FullTensor as Full } from "./read-folder.js";

/** Every tensor of a DCP folder assembled from its chunks (which must tile it exactly). */
export async function readDcpFull(dir: string): Promise<{ tensors: Map<string, Full>; chunks: Map<string, { offsets: number[]; sizes: number[]; file: string }[]> }> {
  const { metadata, chunks } = await openDcp(dir);
  const tensors = new Map<string, Full>();
  const boxes = new Map<string, { offsets: number[]; sizes: number[]; file: string }[]>();
  for (const [fqn, t] of metadata.tensors) {
    tensors.set(fqn, { dtype: t.dtype, shape: t.size, data: Buffer.alloc(numelOf(t.size) * elementSize(t.dtype)) });
    boxes.set(fqn, []);
  }
  const filled = new Map<string, number>();
  for (const c of chunks) {
    const t = tensors.get(c.fqn)!;
    boxes.get(c.fqn)!.push({ offsets: c.offsets, sizes: c.sizes, file: c.file });
    const n = numelOf(c.sizes);
    if (n === 0) continue;
    const data = await readStoredChunk(dir, c);
    const es = elementSize(t.dtype);
    const strides = t.shape.map((_, i) => t.shape.slice(i + 1).reduce((a, b) => a * b, 1));
    const idx = new Array<number>(c.sizes.length).fill(0);
    const rowLen = c.sizes[c.sizes.length - 1] ?? 1;
    for (let i = 0; i < n; i += rowLen) {
      let dst = 0;
      for (let d = 0; d < idx.length; d++) dst += (c.offsets[d]! + idx[d]!) * strides[d]!;
      data.copy(t.data, dst * es, i * es, (i + rowLen) * es);
      for (let d = idx.length - 2; d >= 0; d--) {
        if (++idx[d]! < c.sizes[d]!) break;
        idx[d] = 0;
      }
    }
    filled.set(c.fqn, (filled.get(c.fqn) ?? 0) + n);
  }
  for (const [fqn, t] of tensors) assert.equal(filled.get(fqn) ?? 0, numelOf(t.shape), `chunks of ${fqn} cover it exactly`);
  return { tensors, chunks: boxes };
}
