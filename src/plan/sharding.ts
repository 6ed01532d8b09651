// Which box of each tensor every rank owns under FSDP2 (± TP), per docs/sharding.md. Pure arithmetic.
import { CkptError } from "../errors.js";
import type { TpPlacement } from "../mapping/schema.js";
import type { Box } from "./runs.js";

/** torch.chunk / FSDP2 split of a dim of size n over k ranks (sharding.md §1): empty shards sit at offset n. */
export function split(n: number, k: number, i: number): { start: number; size: number } {
  const c = Math.ceil(n / k);
  const start = Math.min(n, i * c);
  const size = Math.max(0, Math.min(n, (i + 1) * c) - i * c);
  return { start, size };
}

export interface Mesh {
  /** FSDP degree (dp_shard · cp). */
  fsdp: number;
  /** Tensor-parallel degree (innermost). */
  tp: number;
  /**
   * Expert-parallel degree (default 1). Routed experts then live on TorchTitan's sparse mesh (efsdp, ep) over the
   * same ranks, `efsdp = fsdp · tp / ep`, EP innermost: `global_rank = f_e · ep + e` (docs/expert-parallel.md).
   */
  ep?: number;
}

export function worldSize(m: Mesh): number {
  return m.fsdp * m.tp;
}

/** The sparse (routed-expert) mesh of TorchTitan's ParallelDims.build_mesh: (efsdp, ep), EP innermost. */
export function sparseMesh(m: Mesh): { efsdp: number; ep: number } {
  const ep = m.ep ?? 1;
  return { efsdp: worldSize(m) / ep, ep };
}

function checkEpDegree(ep: number, world: number): void {
  if (!Number.isInteger(ep) || ep < 1) throw new CkptError("USAGE", `--ep ${ep}: expected a positive integer`);
  if (world % ep !== 0) throw new CkptError("USAGE", `--ep ${ep} must divide dp_shard · tp = ${world} (TorchTitan: expert_parallel_degree must divide dp_shard * cp * tp)`);
}

/** The mesh of --world-size, --tp and --ep: positive integers, tp and ep dividing the world size (USAGE otherwise). */
export function meshOf(world: number, tp = 1, ep = 1): Mesh {
  if (!Number.isInteger(world) || world < 1) throw new CkptError("USAGE", `--world-size ${world}: expected a positive integer`);
  if (!Number.isInteger(tp) || tp < 1 || world % tp !== 0) throw new CkptError("USAGE", `--tp ${tp} must divide --world-size ${world}`);
  checkEpDegree(ep, world);
  return ep > 1 ? { fsdp: world / tp, tp, ep } : { fsdp: world / tp, tp };
}

/**
 * Refuses what TorchTitan main refuses for this mesh (ParallelDims._validate, Decoder.Config.update_from_config,
 * FSDP2's uneven-dim rule), before anything is written. `experts` are the stacked routed-expert tensors.
 */
export function checkExpertMesh(mesh: Mesh, experts: { name: string; shape: readonly number[] }[]): void {
  const ep = mesh.ep ?? 1;
  const world = worldSize(mesh);
  checkEpDegree(ep, world);
  if (ep === 1) return;
  if (experts.length === 0) throw new CkptError("USAGE", `--ep ${ep}: this checkpoint has no routed-expert tensors (expert parallelism needs an MoE architecture)`);
  const { efsdp } = sparseMesh(mesh);
  for (const t of experts) {
    const E = t.shape[0]!;
    if (E % ep !== 0) throw new CkptError("USAGE", `num_experts ${E} is not divisible by --ep ${ep} (TorchTitan refuses: num_experts must be divisible by expert_parallel_degree)`, { tensor: t.name });
    if (efsdp * ep > E && (t.shape.length < 2 || t.shape[1]! % efsdp !== 0)) {
      throw new CkptError("USAGE", `efsdp ${efsdp} × ep ${ep} > ${E} experts puts FSDP on dim 1, and dim 1 (${t.shape[1]}) is not divisible by efsdp ${efsdp}; FSDP2 forbids uneven shards on dims > 0`, { tensor: t.name, hint: "choose --ep so that (world / ep) · ep ≤ experts or dim 1 divides evenly" });
    }
  }
}

export interface ShardPolicy {
  tp: TpPlacement;
  /** Stored as a single full chunk whatever the mesh (fused QKV at torchtitan@main). */
  fullChunk?: boolean;
  /** Expert-stacked tensor: FSDP shards dim 1 instead of dim 0 when there are fewer experts than FSDP ranks (sharding.md §5). */
  experts?: boolean;
  /**
   * Without EP, which mesh TorchTitan compares with num_experts to choose FSDP Shard(1) for experts: "dp_shard"
   * (the FSDP degree; default) or "dp_shard_tp" (torchtitan@main's apply_fsdp_to_decoder takes the size of the
   * whole dense storage mesh, dp_shard · tp, when ep = 1).
   */
  expertsShard1Mesh?: "dp_shard" | "dp_shard_tp";
}

/**
 * A chunk of a tensor and the global ranks whose box it is. `owner` is the rank whose file holds it: the lowest of
 * `ranks` here; the output layout spreads chunks held by several ranks over them (output-layout.ts balanceOwners).
 */
export interface RankChunk extends Box {
  owner: number;
  ranks: number[];
}

/**
 * Chunks for a tensor of `shape` on `mesh`. Duplicates (replicated boxes, several empty boxes) become one chunk,
 * written once, matching what PyTorch's DCP planner dedups (sharding.md §4, §7).
 */
export function shardTensor(shape: readonly number[], policy: ShardPolicy, mesh: Mesh): RankChunk[] {
  const world = worldSize(mesh);
  const full: RankChunk = { offsets: shape.map(() => 0), sizes: [...shape], owner: 0, ranks: [...Array(world).keys()] };
  if (world === 1 || shape.length === 0 || policy.fullChunk) return [full];
  const boxes = policy.experts && (mesh.ep ?? 1) > 1 ? expertBoxes(shape, mesh) : denseBoxes(shape, policy, mesh);
  return dedupChunks(boxes);
}

/**
 * Routed experts under EP (TorchTitan main, fsdp.py apply_fsdp_to_decoder + moe_sharding.py
 * expert_param_placement_sparse): on the sparse mesh (efsdp, ep), EP takes Shard(0) of the experts, then FSDP
 * shards each EP-local block over efsdp: (StridedShard(0, ep), Shard(0)), or (Shard(1), Shard(0)) when
 * efsdp · ep > num_experts. Rank (f, e) is global rank f · ep + e. TP does not apply to routed experts under EP.
 */
function expertBoxes(shape: readonly number[], mesh: Mesh): { rank: number; box: Box }[] {
  const { efsdp, ep } = sparseMesh(mesh);
  const E = shape[0]!;
  const onDim1 = efsdp * ep > E;
  if (E % ep !== 0) throw new CkptError("USAGE", `num_experts ${E} is not divisible by --ep ${ep}`);
  if (onDim1 && (shape.length < 2 || shape[1]! % efsdp !== 0)) throw new CkptError("USAGE", `expert dim 1 (${shape[1]}) is not divisible by efsdp ${efsdp}; FSDP2 forbids uneven shards on dims > 0`);
  const boxes: { rank: number; box: Box }[] = [];
  for (let f = 0; f < efsdp; f++) {
    for (let e = 0; e < ep; e++) {
      const offsets = shape.map(() => 0);
      const sizes = [...shape];
      const a = split(E, ep, e);
      if (onDim1) {
        offsets[0] = a.start;
        sizes[0] = a.size;
        const c = split(shape[1]!, efsdp, f);
        offsets[1] = c.start;
        sizes[1] = c.size;
      } else {
        const b = split(a.size, efsdp, f);
        offsets[0] = a.start + b.start;
        sizes[0] = b.size;
      }
      boxes.push({ rank: f * ep + e, box: { offsets, sizes } });
    }
  }
  return boxes;
}

/** The tensor dim a TP placement shards (`shardN` → N), or undefined for Replicate. */
export function tpDim(tp: TpPlacement): number | undefined {
  return tp === "replicate" ? undefined : Number(tp.slice(5));
}

/**
 * Dense parameters (and experts without EP) on the dense mesh (fsdp, tp), TP innermost (sharding.md §4).
 * TP shards dim `tpDim(policy.tp)` of the full tensor; FSDP then shards dim 0 — or dim 1 for experts when there
 * are more FSDP (torchtitan@main without EP: dp_shard · tp) ranks than experts — of the TP-local tensor. On one
 * dim that is (StridedShard(d, T), Shard(d)): rank (f, t) takes FSDP chunk f of TP chunk t (§4a); on different
 * dims each split is independent (§4b). Routed experts under TP at EP 1 (moe_sharding.py
 * expert_param_placement_dense): w1/w3 [E, F, D] TP Shard(1), w2 [E, D, F] Shard(2).
 */
function denseBoxes(shape: readonly number[], policy: ShardPolicy, mesh: Mesh): { rank: number; box: Box }[] {
  const F = mesh.fsdp;
  const T = mesh.tp;
  const td = T > 1 ? tpDim(policy.tp) : undefined;
  if (td !== undefined && td >= shape.length) throw new CkptError("MAPPING", `TP Shard(${td}) on a ${shape.length}-D tensor [${shape}]`);
  let fd = 0;
  if (policy.experts && shape.length >= 2) {
    const storage = policy.expertsShard1Mesh === "dp_shard_tp" ? F * T : F;
    if (storage > shape[0]!) fd = 1;
  }
  const boxes: { rank: number; box: Box }[] = [];
  for (let f = 0; f < F; f++) {
    for (let t = 0; t < T; t++) {
      const offsets = shape.map(() => 0);
      const sizes = [...shape];
      if (td !== undefined) {
        const a = split(shape[td]!, T, t);
        offsets[td] = a.start;
        sizes[td] = a.size;
      }
      // FSDP2 splits the TP-local tensor; only dim 0 may be uneven
      if (fd > 0 && sizes[fd]! % F !== 0) {
        const local = td === fd ? `TP-local dim ${fd} (${sizes[fd]} of ${shape[fd]} over tp ${T})` : `expert dim ${fd} (${sizes[fd]})`;
        throw new CkptError("SHAPE", `${local} is not divisible by FSDP degree ${F}; FSDP2 forbids uneven shards on dims > 0`);
      }
      const b = split(sizes[fd]!, F, f);
      offsets[fd] = offsets[fd]! + b.start;
      sizes[fd] = b.size;
      boxes.push({ rank: f * T + t, box: { offsets, sizes } });
    }
  }
  return boxes;
}

function dedupChunks(boxes: { rank: number; box: Box }[]): RankChunk[] {
  // DCP keys chunks by (fqn, offsets), so boxes with equal offsets must become one chunk. Non-empty boxes with
  // equal offsets are replicas; empty boxes past the end share offsets whatever their sizes, and an empty box
  // can even sit at the offset where a non-empty one starts (uneven FSDP×TP): the non-empty box wins.
  const byOffsets = new Map<string, RankChunk>();
  for (const { rank, box } of boxes.sort((x, y) => x.rank - y.rank)) {
    const key = box.offsets.join(",");
    const hit = byOffsets.get(key);
    if (!hit) byOffsets.set(key, { ...box, owner: rank, ranks: [rank] });
    else if (isEmpty(hit) && !isEmpty(box)) byOffsets.set(key, { ...box, owner: rank, ranks: [rank] });
    else if (isEmpty(hit) === isEmpty(box)) hit.ranks.push(rank);
  }
  return [...byOffsets.values()];
}

/** Splits a chunk along dim 0 so that no piece exceeds maxBytes (torch.save blobs stay below 4 GiB). */
export function splitLargeChunk(chunk: RankChunk, elementBytes: number, maxBytes: number): RankChunk[] {
  const rowBytes = chunk.sizes.slice(1).reduce((a, b) => a * b, 1) * elementBytes;
  const total = rowBytes * (chunk.sizes[0] ?? 1);
  if (chunk.sizes.length === 0 || total <= maxBytes || rowBytes === 0) return [chunk];
  const rowsPer = Math.max(1, Math.floor(maxBytes / rowBytes));
  const out: RankChunk[] = [];
  for (let r = 0; r < chunk.sizes[0]!; r += rowsPer) {
    const n = Math.min(rowsPer, chunk.sizes[0]! - r);
    out.push({ ...chunk, offsets: [chunk.offsets[0]! + r, ...chunk.offsets.slice(1)], sizes: [n, ...chunk.sizes.slice(1)], ranks: [...chunk.ranks] });
  }
  return out;
}

/** `a-b`, `a,b,c` or `a` → sorted rank list within the world. */
export function parseRanks(spec: string, world: number): number[] {
  const out = new Set<number>();
  for (const part of spec.split(",").map((s) => s.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new CkptError("USAGE", `--ranks '${spec}': expected a-b or a,b,c`);
    const a = Number(m[1]);
    const b = m[2] !== undefined ? Number(m[2]) : a;
    if (a > b || b >= world) throw new CkptError("USAGE", `--ranks '${spec}': ranks must lie in 0-${world - 1}`);
    for (let r = a; r <= b; r++) out.add(r);
  }
  return [...out].sort((x, y) => x - y);
}

function isEmpty(b: Box): boolean {
  return b.sizes.some((s) => s === 0);
}
