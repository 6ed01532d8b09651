// Reads test/vectors/casts.safetensors (expected casts computed by PyTorch 2.6, committed in the repo) with a minimal safetensors parser:
// 8-byte little-endian header length N, N bytes of JSON, then the data. Independent of src/formats on purpose.

import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface VectorTensor {
  name: string;
  dtype: string;
  shape: number[];
  /** Tensor bytes in a fresh, 8-byte aligned buffer. */
  bytes: Uint8Array;
}

/** CKPT_VECTORS, else test/vectors/casts.safetensors in the package root. */
export function vectorsPath(): string | undefined {
  if (process.env.CKPT_VECTORS) return process.env.CKPT_VECTORS;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json"))) break;
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
  const p = join(dir, "test", "vectors", "casts.safetensors");
  return existsSync(p) ? p : undefined;
}

let cache: Map<string, VectorTensor> | undefined;

export function loadVectors(path = vectorsPath()): Map<string, VectorTensor> | undefined {
  if (!path) return undefined;
  if (cache) return cache;
  const file = readFileSync(path);
  const n = Number(file.readBigUInt64LE(0));
  const header = JSON.parse(file.subarray(8, 8 + n).toString("utf8")) as Record<string, unknown>;
  const base = 8 + n;
  const out = new Map<string, VectorTensor>();
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const { dtype, shape, data_offsets } = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const bytes = new Uint8Array(data_offsets[1] - data_offsets[0]);
    bytes.set(file.subarray(base + data_offsets[0], base + data_offsets[1]));
    out.set(name, { name, dtype, shape, bytes });
  }
  return (cache = out);
}
