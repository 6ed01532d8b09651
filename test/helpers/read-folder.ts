// Every tensor of a checkpoint folder (safetensors, one piece each) with its bytes, read through our catalog.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { DType } from "../../src/dtypes.js";
import { buildCatalog } from "../../src/catalog.js";
import { openLocal } from "../../src/sources/local.js";

export interface FullTensor { dtype: DType; shape: number[]; data: Buffer }

export async function readFolder(dir: string): Promise<Map<string, FullTensor>> {
  const src = await openLocal(dir);
  try {
    const cat = await buildCatalog(src);
    const out = new Map<string, FullTensor>();
    for (const [name, t] of cat.tensors) {
      const p = t.pieces[0]!;
      out.set(name, { dtype: t.dtype, shape: t.shape, data: readFileSync(join(dir, p.file)).subarray(p.byteOffset, p.byteOffset + p.byteLength) });
    }
    return out;
  } finally {
    await src.close();
  }
}
