// The programmatic API: the same operations as the CLI, typed, reporting progress through callbacks.
//   import { convert, shard, inspect, verify } from "ckpt";
import { runConvert, type ConvertOptions, type ConvertResult } from "./commands/convert.js";
import { runInspect, type InspectOptions, type InspectResult } from "./commands/inspect.js";

export { CkptError, ERROR_CODES, type ErrorCode } from "./errors.js";
export type { ConvertOptions, ConvertResult, PlanSummary } from "./commands/convert.js";
export type { InspectOptions, InspectResult, InspectTensor, TensorStats } from "./commands/inspect.js";
export type { ProgressEvent } from "./exec/executor.js";
export { runVerify as verify } from "./commands/verify.js";
export { runHealth as health, formatHealth, type HealthReport } from "./health/index.js";
export { loraConvert, loraExport } from "./commands/lora-convert.js";
export { loraMerge } from "./commands/lora-merge.js";
export type { LoraModelSummary, LoraSettings } from "./lora/index.js";
export { openSource } from "./sources/resolve.js";
export { buildCatalog } from "./catalog.js";
export { getKernels, referenceKernels } from "./kernels/index.js";
export { benchKernels } from "./kernels/bench.js";

/** HF → TorchTitan (default) or TorchTitan → HF (`to: "hf"`); `dryRun` returns the plan only. */
export function convert(opts: ConvertOptions): Promise<ConvertResult> {
  return runConvert(opts);
}

/** Per-rank FSDP2 (× TP) shards: `worldSize`, optional `tp`, `ranks` ("0-3") and `finalize`. */
export function shard(opts: ConvertOptions & { worldSize: number }): Promise<ConvertResult> {
  return runConvert(opts);
}

export function inspect(source: string, opts?: InspectOptions): Promise<InspectResult> {
  return runInspect(source, opts);
}
