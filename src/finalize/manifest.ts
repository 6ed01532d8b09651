// The checkpoint-level record of an output: `ckpt-manifest.json` (tool, source identity, options, mapping, mesh, and
// every chunk's digests), written after the tensors and before the output folder is committed.
import { createHash } from "node:crypto";
import type { Catalog } from "../catalog-types.js";
import type { ConversionPlan } from "../plan/convert-plan.js";
import type { OutputLayout } from "../plan/output-layout.js";
import type { ExecResult } from "../exec/executor.js";
import { digestOf, type DigestAlgorithm } from "../exec/digest.js";
import { VERSION } from "../version.js";

export const MANIFEST = "ckpt-manifest.json";

/** Source header hashes identify exactly which checkpoint was converted (tensor bytes are hashed on output). */
export async function sourceIdentity(catalog: Catalog): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const files = [...new Set([...catalog.tensors.values()].flatMap((t) => t.pieces.map((p) => p.file)))].sort();
  for (const f of files) {
    const size = await catalog.source.size(f);
    const first = [...catalog.tensors.values()].flatMap((t) => t.pieces).filter((p) => p.file === f).reduce((m, p) => Math.min(m, p.byteOffset), size);
    const head = await catalog.source.read(f, 0, Math.min(first, 1 << 24));
    out[f] = `size=${size} header-sha256=${createHash("sha256").update(head).digest("hex")}`;
  }
  return out;
}

export async function manifestOf(catalog: Catalog, plan: ConversionPlan, layout: OutputLayout, exec: ExecResult, sourceIds: Record<string, string>, options: Record<string, unknown>, digest: DigestAlgorithm): Promise<Buffer> {
  const tensors: Record<string, unknown> = {};
  for (const t of plan.tensors) tensors[t.name] = { dtype: t.dtype, shape: t.shape, chunks: [] as unknown[] };
  for (const c of exec.chunks) {
    const hash = await digestOf(digest, Buffer.from(c.pieceDigests.join("")));
    (tensors[c.tensor] as { chunks: unknown[] }).chunks.push({ file: c.file, offsets: c.offsets, sizes: c.sizes, bytes: c.bytes, crc32: c.crc32, hash, piece_hashes: c.pieceDigests });
  }
  const extras: [string, { size: number; hash: string }][] = [];
  for (const [name, bytes] of layout.extras) extras.push([name, { size: bytes.length, hash: await digestOf(digest, bytes) }]);
  const manifest = {
    tool: "ckpt",
    version: VERSION,
    source: { id: catalog.source.id, revision: catalog.source.revision ?? null, format: catalog.format, files: sourceIds },
    options,
    mapping: plan.mapping,
    target: plan.target,
    direction: plan.direction,
    // tensors left out on the user's --drop: the output is not the whole source, and says so
    ...(Array.isArray(options.drop) ? { dropped: plan.skipped.filter((s) => /\(--drop /.test(s.why)).map((s) => ({ name: s.name, why: s.why })) } : {}),
    mesh: layout.mesh,
    digest,
    chunk_hash: `${digest} over the concatenated hex ${digest} of the chunk's pieces, each ≤ piece_bytes of output`,
    piece_bytes: options.pieceBytes,
    files: Object.fromEntries([
      ...layout.files.map((f) => [f.name, { size: f.size }] as const),
      ...extras,
    ]),
    tensors,
  };
  return Buffer.from(JSON.stringify(manifest, null, 1) + "\n");
}
