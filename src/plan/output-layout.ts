// Where every output byte goes, decided before any byte is written: files, their sizes, each chunk's box and
// absolute data offset, and the work pieces the executor runs. Same plan → byte-identical output.
import { elementSize, numelOf, type DType } from "../dtypes.js";
import { layoutTensorBlob, type BlobLayout } from "../formats/torchsave/index.js";
import { planSafetensorsFile, planShardedSafetensors, serializeIndex } from "../formats/safetensors/writer.js";
import { encodeDcpMetadata, type DcpMetadata } from "../formats/dcp/metadata.js";
import type { TensorPlan } from "./convert-plan.js";
import { shardTensor, sparseMesh, splitLargeChunk, worldSize, type Mesh, type RankChunk } from "./sharding.js";
import type { Box } from "./runs.js";

export type OutputFormat = "dcp" | "safetensors";

export interface OutChunk {
  tensor: string;
  dtype: DType;
  /** Global shape of the tensor. */
  shape: number[];
  box: Box;
  /** Global ranks whose box this is (`file` is one of theirs: see balanceOwners). */
  ranks: number[];
  file: string;
  /** Absolute byte offset of the chunk's row-major data in `file`. */
  dataOffset: number;
  byteLength: number;
  /** DCP only: the torch.save blob wrapping the data. */
  blob?: { offset: number; layout: BlobLayout };
}

export interface OutFile {
  name: string;
  size: number;
  /** Bytes known up front, written before the data (safetensors headers). */
  prefix?: Buffer;
  /** The ranks whose file this is (sharded outputs), for --ranks filtering. */
  rank?: number;
}

export interface OutputLayout {
  format: OutputFormat;
  mesh: Mesh;
  files: OutFile[];
  chunks: OutChunk[];
  /** Small JSON/pickle files written at finalize: name → bytes (`.metadata`, index, sharding manifest). */
  extras: Map<string, Buffer>;
}

/** torch.save blobs stay below 4 GiB so no zip64 records are ever needed (dcp-format.md §7.2). */
const MAX_BLOB_DATA = 4 * 1024 ** 3 - 64 * 1024 ** 2;

/**
 * DCP: `__{rank}_{k}.distcp`, `filesPerRank` files per rank (every rank gets them, maybe empty), and one `.metadata`.
 * Each chunk goes to its rank's file with the fewest bytes so far (ties: the lower k), so the files fill evenly and
 * consecutive large tensors land in different files. More than one file per rank is for writing: writes to one file
 * serialise on its inode lock (page-cache writes, and O_DIRECT writes that allocate blocks), so a one-file output
 * cannot use a second core or queue for its writes. PyTorch's FileSystemWriter names its per-thread files the same
 * way; readers follow `.metadata`.
 */
export function layoutDcp(tensors: TensorPlan[], mesh: Mesh, filesPerRank = 1): OutputLayout {
  if (!Number.isInteger(filesPerRank) || filesPerRank < 1) throw new Error(`internal: filesPerRank ${filesPerRank}`);
  const world = worldSize(mesh);
  const cursors = Array.from({ length: world }, () => new Array<number>(filesPerRank).fill(0));
  const chunks: OutChunk[] = [];
  const md: DcpMetadata = { tensors: new Map(), bytes: new Set(), plannerData: new Map(), storage: [] };
  const perTensor = tensors.map((t) => shardTensor(t.shape, t.policy, mesh).flatMap((c) => splitLargeChunk(c, elementSize(t.dtype), MAX_BLOB_DATA)));
  balanceOwners(perTensor, (ti, c) => layoutTensorBlob(tensors[ti]!.dtype, c.sizes).totalLength, world);
  tensors.forEach((t, ti) => {
    const pieces = perTensor[ti]!;
    md.tensors.set(t.name, { dtype: t.dtype, size: [...t.shape], chunks: [] });
    md.plannerData.set(t.name, [t.name]);
    pieces.forEach((c, index) => {
      const layout = layoutTensorBlob(t.dtype, c.sizes);
      const owner = c.owner;
      const sizes = cursors[owner]!;
      const k = sizes.indexOf(Math.min(...sizes));
      const file = `__${owner}_${k}.distcp`;
      const offset = sizes[k]!;
      sizes[k] = offset + layout.totalLength;
      chunks.push({ tensor: t.name, dtype: t.dtype, shape: t.shape, box: { offsets: c.offsets, sizes: c.sizes }, ranks: c.ranks, file, dataOffset: offset + layout.dataOffset, byteLength: layout.dataLength, blob: { offset, layout } });
      md.tensors.get(t.name)!.chunks.push({ offsets: c.offsets, sizes: c.sizes });
      md.storage.push({ fqn: t.name, offsets: c.offsets, index, file, offset, length: layout.totalLength });
    });
  });
  const files: OutFile[] = cursors.flatMap((sizes, rank) => sizes.map((size, k) => ({ name: `__${rank}_${k}.distcp`, size, rank })));
  return { format: "dcp", mesh, files, chunks, extras: new Map([[".metadata", encodeDcpMetadata(md)]]) };
}

/**
 * Chooses which rank's file holds each chunk that several ranks hold (a whole fused q/k/v at torchtitan@main, norms
 * under TP, a scalar): chunks of one rank stay with it; the shared ones go, largest first, to whichever of their
 * ranks has the fewest bytes so far (ties: the lower rank). Left with the lowest rank, every replicated byte would be
 * written by rank 0 alone, and in a multi-machine run downloaded by its machine alone. PyTorch's own save planner
 * balances the same way (dedup_save_plans keeps a duplicate in the smallest plan); readers follow `.metadata`.
 * Deterministic: a function of the chunk list only. `cost(t, chunk)` is the bytes the chunk adds to its file.
 */
export function balanceOwners(perTensor: RankChunk[][], cost: (tensor: number, chunk: RankChunk) => number, world: number): void {
  const load = new Array<number>(world).fill(0);
  const shared: { t: number; c: RankChunk; bytes: number; order: number }[] = [];
  perTensor.forEach((chunks, t) => {
    for (const c of chunks) {
      if (c.ranks.length > 1) shared.push({ t, c, bytes: cost(t, c), order: shared.length });
      else load[c.owner]! += cost(t, c);
    }
  });
  shared.sort((a, b) => b.bytes - a.bytes || a.order - b.order);
  for (const s of shared) {
    let best = s.c.ranks[0]!;
    for (const r of s.c.ranks) if (load[r]! < load[best]! || (load[r] === load[best] && r < best)) best = r;
    s.c.owner = best;
    load[best]! += s.bytes;
  }
}

/**
 * Unsharded safetensors (TorchTitan or HF names), split into `{prefix}-0000i-of-0000n` files past maxShardBytes
 * (prefix `model`; diffusers names its files `diffusion_pytorch_model`).
 */
export function layoutSafetensors(tensors: TensorPlan[], opts: { maxShardBytes: number; metadata?: Record<string, string>; prefix?: string }): OutputLayout {
  const specs = tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape }));
  const prefix = opts.prefix ?? "model";
  const { files: planned, index } = planShardedSafetensors(specs, { maxShardBytes: opts.maxShardBytes, metadata: opts.metadata ?? { format: "pt" }, prefix });
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const chunks: OutChunk[] = [];
  const files: OutFile[] = [];
  for (const f of planned) {
    files.push({ name: f.fileName, size: f.totalSize, prefix: f.header });
    for (const pt of f.tensors) {
      const t = byName.get(pt.name)!;
      chunks.push({ tensor: t.name, dtype: t.dtype, shape: t.shape, box: { offsets: t.shape.map(() => 0), sizes: [...t.shape] }, ranks: [0], file: f.fileName, dataOffset: pt.offset, byteLength: pt.byteLength });
    }
  }
  const extras = new Map<string, Buffer>();
  if (index) extras.set(`${prefix}.safetensors.index.json`, Buffer.from(serializeIndex(index)));
  return { format: "safetensors", mesh: { fsdp: 1, tp: 1 }, files, chunks, extras };
}

/**
 * Per-rank safetensors (`rank-00000-of-00008.safetensors`) whose `__metadata__` carries DCP_SHARDING_INFO
 * (dcp-format.md §10), for PyTorch's HuggingFaceStorageReader. Empty boxes are left out of a rank's file.
 */
export function layoutRankSafetensors(tensors: TensorPlan[], mesh: Mesh): OutputLayout {
  const world = worldSize(mesh);
  const perRank: { name: string; dtype: DType; shape: number[]; box: Box; ranks: number[]; tensor: TensorPlan }[][] = Array.from({ length: world }, () => []);
  const perTensor = tensors.map((t) => shardTensor(t.shape, t.policy, mesh).filter((c) => numelOf(c.sizes) > 0));
  balanceOwners(perTensor, (ti, c) => numelOf(c.sizes) * elementSize(tensors[ti]!.dtype), world);
  tensors.forEach((t, ti) => {
    for (const c of perTensor[ti]!) perRank[c.owner]!.push({ name: t.name, dtype: t.dtype, shape: c.sizes, box: c, ranks: c.ranks, tensor: t });
  });
  const files: OutFile[] = [];
  const chunks: OutChunk[] = [];
  const pad = (n: number) => String(n).padStart(5, "0");
  perRank.forEach((items, rank) => {
    const name = `rank-${pad(rank)}-of-${pad(world)}.safetensors`;
    const info: Record<string, { saved_offsets: number[] }> = {};
    for (const it of items) info[it.name] = { saved_offsets: it.box.offsets };
    const planned = planSafetensorsFile(name, items.map((i) => ({ name: i.name, dtype: i.dtype, shape: i.shape })), {
      DCP_SHARDING_INFO: JSON.stringify(info),
      DCP_VERSION: "1.0",
      format: "pt",
    });
    files.push({ name, size: planned.totalSize, prefix: planned.header, rank });
    const byName = new Map(items.map((i) => [i.name, i]));
    for (const pt of planned.tensors) {
      const it = byName.get(pt.name)!;
      chunks.push({ tensor: it.name, dtype: it.dtype, shape: it.tensor.shape, box: { offsets: it.box.offsets, sizes: it.box.sizes }, ranks: it.ranks, file: name, dataOffset: pt.offset, byteLength: pt.byteLength });
    }
  });
  const manifest = {
    format: "ckpt-rank-safetensors",
    mesh: { dims: ["fsdp", "tp"], sizes: [mesh.fsdp, mesh.tp], global_rank: "f * tp + t", ...((mesh.ep ?? 1) > 1 ? { experts: { dims: ["efsdp", "ep"], sizes: [sparseMesh(mesh).efsdp, mesh.ep], global_rank: "f * ep + e" } } : {}) },
    world_size: world,
    files: files.map((f) => f.name),
    tensors: Object.fromEntries(tensors.map((t) => [t.name, { dtype: t.dtype, shape: t.shape, tp: effectiveTp(t, mesh) }])),
  };
  return { format: "safetensors", mesh, files, chunks, extras: new Map([["sharding.json", Buffer.from(JSON.stringify(manifest, null, 2) + "\n")]]) };
}

/** The TP placement a tensor's boxes use: routed experts take theirs only under TP without EP (moe_sharding.py). */
function effectiveTp(t: TensorPlan, mesh: Mesh): TensorPlan["policy"]["tp"] {
  return t.policy.experts && (mesh.tp === 1 || (mesh.ep ?? 1) > 1) ? "replicate" : t.policy.tp;
}

/** A unit of executor work: rows [rowStart, rowStart + rows) of a chunk's box (first view dim), ≤ maxBytes of output. */
export interface Piece {
  chunk: number;
  box: Box;
  /** Absolute output offset of this piece's first byte. */
  outOffset: number;
  byteLength: number;
}

export function piecesOf(chunks: OutChunk[], maxBytes: number): Piece[] {
  const out: Piece[] = [];
  chunks.forEach((c, ci) => {
    const es = elementSize(c.dtype);
    if (c.byteLength === 0) return;
    if (c.box.sizes.length === 0) {
      out.push({ chunk: ci, box: c.box, outOffset: c.dataOffset, byteLength: c.byteLength });
      return;
    }
    const rowElems = c.box.sizes.slice(1).reduce((a, b) => a * b, 1);
    const rowBytes = rowElems * es;
    const rowsPer = Math.max(1, Math.floor(maxBytes / rowBytes));
    for (let r = 0; r < c.box.sizes[0]!; r += rowsPer) {
      const n = Math.min(rowsPer, c.box.sizes[0]! - r);
      out.push({
        chunk: ci,
        box: { offsets: [c.box.offsets[0]! + r, ...c.box.offsets.slice(1)], sizes: [n, ...c.box.sizes.slice(1)] },
        outOffset: c.dataOffset + r * rowBytes,
        byteLength: n * rowBytes,
      });
    }
  });
  return out;
}
