// What differs between the TorchTitan versions ckpt writes for, beyond names (which the mappings give per target):
// mappings/targets/<target>.json, one file a target, validated here.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { CkptError } from "../errors.js";
import { mappingsDir } from "./load.js";
import { TARGETS, type Target } from "./schema.js";

export interface TargetSpec {
  target: Target;
  description: string;
  /**
   * Without EP, which mesh TorchTitan compares with the expert count to shard stacked routed experts on dim 1 (FSDP
   * Shard(1)): "dp_shard" (the FSDP degree) or "dp_shard_tp" (the whole dense storage mesh, dp_shard · tp).
   */
  experts_shard1_mesh: "dp_shard" | "dp_shard_tp";
  /**
   * The target has TorchTitan's LoRAConverter (components/lora.py): `--lora` / `--lora-rank` build its LoRA model.
   * Exactly one target has it; the mappings' `linears` are that target's Linear modules.
   */
  lora_converter: boolean;
}

const KEYS = ["$schema", "target", "description", "experts_shard1_mesh", "lora_converter"];
const cache = new Map<string, TargetSpec>();

export function targetSpec(target: Target): TargetSpec {
  const file = join(mappingsDir(), "targets", `${target}.json`);
  const hit = cache.get(file);
  if (hit) return hit;
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  } catch (e) {
    throw new CkptError("MAPPING", `cannot read the target's data: ${(e as Error).message}`, { file, hint: "every target needs mappings/targets/<target>.json" });
  }
  const bad = (path: string, what: string): never => { throw new CkptError("MAPPING", `${path}: ${what}`, { file }); };
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) bad("$", "must be an object");
  for (const k of Object.keys(raw)) if (!KEYS.includes(k)) bad(`$.${k}`, "unknown field");
  if (raw.target !== target) bad("$.target", `must be ${target} (the file's name)`);
  if (typeof raw.description !== "string" || !raw.description) bad("$.description", "must be a non-empty string");
  if (raw.experts_shard1_mesh !== "dp_shard" && raw.experts_shard1_mesh !== "dp_shard_tp") bad("$.experts_shard1_mesh", "must be dp_shard or dp_shard_tp");
  if (typeof raw.lora_converter !== "boolean") bad("$.lora_converter", "must be true or false");
  const spec = raw as unknown as TargetSpec;
  cache.set(file, spec);
  return spec;
}

/** The one target whose TorchTitan has the LoRAConverter (target data `lora_converter`). */
export function loraTarget(): Target {
  const with_ = TARGETS.filter((t) => targetSpec(t).lora_converter);
  if (with_.length !== 1) throw new CkptError("MAPPING", `exactly one target may set lora_converter; ${with_.length} do (${with_.join(", ") || "none"})`, { file: join(mappingsDir(), "targets") });
  return with_[0]!;
}
