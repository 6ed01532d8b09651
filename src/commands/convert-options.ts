// The options of convert / shard checked on their own, before any source is opened: values (dtype, target, mesh,
// digest, ranks, sizes) and combinations (--to hf with a mesh, --requantize / --hf-layout without --to hf,
// --hf-names, --files-per-rank, --resume with --finalize, the LoRA flags). A bad flag fails with one USAGE line
// instead of after a download and a full plan. What depends on the checkpoint (an architecture's targets, experts
// divisible by --ep, requantizable tensors) is checked where the plan is built.
import { parseDigest, type DigestAlgorithm } from "../exec/digest.js";
import { CkptError } from "../errors.js";
import { loraRequested, type LoraOptionsLike } from "../lora/tt-model.js";
import { TARGETS, type Target } from "../mapping/schema.js";
import { parseDTypeChoice, type DTypeChoice } from "../dtypes.js";
import type { RequantizeKind } from "../plan/requantize.js";
import { meshOf, parseRanks, type Mesh } from "../plan/sharding.js";

/** The options this module checks: ConvertOptions (commands/convert.ts) extends them. */
export interface ConvertFlags extends LoraOptionsLike {
  to?: "torchtitan" | "hf";
  target?: Target | string;
  format?: "dcp" | "safetensors";
  /**
   * Sharded safetensors only: keep the HF names and row order (per-rank files for TorchTitan's
   * `initial_load_in_hf = true`, which applies from_hf after the load) instead of TorchTitan names.
   */
  hfNames?: boolean;
  dtype?: string;
  /** --to hf: which HF layout to write for a mapping with several (FLUX: diffusers, bfl). */
  hfLayout?: string;
  /** --to hf: write the experts in the source's packed layout, encoded from their values (plan/requantize.ts). */
  requantize?: RequantizeKind;
  /** Digest of every output piece in the manifest (default xxh128; or sha256). */
  digest?: string;
  threads?: number;
  maxMemory?: number;
  maxShardBytes?: number;
  /** DCP: data files per rank (default 2 unsharded, 1 sharded: see layoutDcp). */
  filesPerRank?: number;
  /** Continue an interrupted run from `<out>.partial/` (its journal); also keeps the partial folder on errors. */
  resume?: boolean;
  /** Sharding (shard command): FSDP × TP mesh. */
  worldSize?: number;
  tp?: number;
  /** Expert-parallel degree for routed experts (TorchTitan's sparse mesh (efsdp, ep)); must divide worldSize. */
  ep?: number;
  ranks?: string;
  /** Write the checkpoint-level files (`.metadata`, manifest) after per-rank runs. */
  finalize?: boolean;
  /** TorchTitan's LoRA model: base + adapters of this PEFT adapter (src/lora/tt-model.ts). */
  lora?: string;
  /** …or fresh adapters of this rank (`loraAlpha`, `loraTargets`, `seed`). */
  loraRank?: number;
}

export interface CheckedFlags {
  /** --to hf (the only direction fixed by the options: an HF → TorchTitan request may turn out a reshard). */
  toHf: boolean;
  target?: Target;
  dtype: DTypeChoice;
  world: number;
  tp: number;
  ep: number;
  mesh: Mesh;
  format: "dcp" | "safetensors";
  /** DCP data files per rank (default 2 unsharded, 1 sharded: two lanes can write one unsharded rank at once). */
  filesPerRank: number;
  ranks?: number[];
  digest: DigestAlgorithm;
}

/** `--target main` or `--target torchtitan@main` → the Target; undefined when not given. */
export function parseTarget(t: string | undefined): Target | undefined {
  if (t === undefined) return undefined;
  const full = t.startsWith("torchtitan@") ? t : `torchtitan@${t}`;
  if (!(TARGETS as readonly string[]).includes(full)) throw new CkptError("USAGE", `--target ${t}: expected one of ${TARGETS.join(", ")}`);
  return full as Target;
}

/** Refuses a given `--flag v` that is not an integer ≥ min. */
function atLeast(flag: string, v: number | undefined, min = 1): void {
  if (v !== undefined && (!Number.isInteger(v) || v < min)) throw new CkptError("USAGE", `--${flag} ${v}: expected ${min === 0 ? "a non-negative" : "a positive"} integer`);
}

const REQUANTIZE_KINDS: readonly RequantizeKind[] = ["mxfp4", "int4"];

const usage = (what: string): never => { throw new CkptError("USAGE", what); };

/** Every check that needs only the options; throws the first failure as a USAGE error. */
export function checkConvertFlags(o: ConvertFlags): CheckedFlags {
  if (o.to !== undefined && o.to !== "torchtitan" && o.to !== "hf") usage(`--to ${String(o.to)}: expected torchtitan or hf`);
  const toHf = o.to === "hf";
  const target = parseTarget(o.target);
  const dtype = parseDTypeChoice(o.dtype);
  const digest = parseDigest(o.digest);
  atLeast("threads", o.threads, 0);
  atLeast("max-memory", o.maxMemory);
  atLeast("max-shard-bytes", o.maxShardBytes);

  const world = o.worldSize ?? 1;
  const tp = o.tp ?? 1;
  const ep = o.ep ?? 1;
  const mesh = meshOf(world, tp, ep);

  if (o.format !== undefined && o.format !== "dcp" && o.format !== "safetensors") usage(`--format ${String(o.format)}: expected dcp or safetensors`);
  if (toHf && world > 1) usage("--to hf writes unsharded HF safetensors; drop --world-size");
  if (toHf && o.format === "dcp") usage("--to hf writes HF safetensors; drop --format dcp");
  if (o.requantize !== undefined && !REQUANTIZE_KINDS.includes(o.requantize)) usage(`--requantize ${String(o.requantize)}: expected one of ${REQUANTIZE_KINDS.join(", ")}`);
  if (o.requantize && !toHf) usage("--requantize re-encodes --to hf output; it needs --to hf");
  if (o.hfLayout !== undefined && !toHf) usage(`--hf-layout ${o.hfLayout} picks the HF layout --to hf writes (an HF source is read in the layout its names use); it needs --to hf`);
  const format = toHf ? "safetensors" : o.format ?? "dcp";
  if (o.hfNames && (format !== "safetensors" || world === 1)) usage("--hf-names writes per-rank safetensors: use it with --format safetensors and --world-size > 1");
  if (o.filesPerRank !== undefined && (!Number.isInteger(o.filesPerRank) || o.filesPerRank < 1 || o.filesPerRank > 64)) usage(`--files-per-rank ${o.filesPerRank}: expected an integer from 1 to 64`);
  if (o.filesPerRank !== undefined && format !== "dcp") usage("--files-per-rank applies to DCP output; drop it with --format safetensors");
  const ranks = o.ranks !== undefined ? parseRanks(o.ranks, world) : undefined;
  if (o.resume && o.finalize && !ranks) usage("--resume with --finalize: nothing to resume (finalize only checks the rank files and writes .metadata and the manifest)");
  // The LoRA flags' combinations; an HF → TorchTitan request that turns out a reshard is refused once the source is seen.
  loraRequested(o, toHf ? "tt_to_hf" : "hf_to_tt", target);
  return { toHf, target, dtype, world, tp, ep, mesh, format, filesPerRank: o.filesPerRank ?? (world === 1 ? 2 : 1), ranks, digest };
}
