// LoRA / DoRA adapters between PEFT and TorchTitan layouts, and merging them into base weights.
export { loraConvert, loraExport, buildTtMetadata, type LoraConvertOptions, type LoraConvertResult, type LoraExportOptions, type LoraExportResult } from "./convert.js";
export { loraMerge, mergeWeight, type LoraMergeOptions, type LoraMergeResult } from "./merge.js";
export { openAdapter, loadBaseConfig, readEntry, bRowIndex, type OpenedAdapter, type AdapterEntry, type BaseConfig, type Layout } from "./adapter.js";
export {
  loraScale, parsePeftConfig, peftAdapterConfigJson, parseTtLoraMetadata, isTargetModule, moduleRankAlpha, patternKey,
  LORA_CONFIG_FILE, LORA_FORMAT, type PeftLoraConfig, type TtLoraMetadata, type ModuleScale,
} from "./config.js";
export { ModuleResolver, parsePeftName, parseTtName, peftName, ttName, type LoraModule, type LoraPart } from "./names.js";
export { torchtitanLoraConfig, type LoraModelSummary, type LoraSettings } from "./tt-model.js";
export { ttLinears, type TtLinear, type LinearPart } from "./tt-linears.js";
export { validateAdapterAgainstBase, baseTensors, type AdapterBase } from "./validate.js";
