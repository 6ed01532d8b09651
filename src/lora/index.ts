// LoRA / DoRA adapters between PEFT and TorchTitan layouts: reading them, their names and configs, TorchTitan's
// Linears, and the merge arithmetic. The commands built on them (lora convert / export / merge) are in
// src/commands/lora-convert.ts and src/commands/lora-merge.ts.
export { mergeWeight } from "../kernels/lora-merge.js";
export { openAdapter, loadBaseConfig, readEntry, bRowIndex, type OpenedAdapter, type AdapterEntry, type BaseConfig, type Layout } from "./adapter.js";
export {
  loraScale, parsePeftConfig, peftAdapterConfigJson, parseTtLoraMetadata, isTargetModule, moduleRankAlpha, patternKey,
  LORA_CONFIG_FILE, LORA_FORMAT, type PeftLoraConfig, type TtLoraMetadata, type ModuleScale,
} from "./config.js";
export { ModuleResolver, parsePeftName, parseTtName, peftName, ttName, type LoraModule, type LoraPart } from "./names.js";
export { torchtitanLoraConfig, type LoraModelSummary, type LoraSettings } from "./tt-model.js";
export { ttLinears, type TtLinear, type LinearPart } from "./tt-linears.js";
export { validateAdapterAgainstBase, baseTensors, type AdapterBase } from "./validate.js";
