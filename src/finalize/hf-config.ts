// config.json of --to hf output: the copied source config rewritten as the mapping says (mapping/hf-config.ts), so
// that transformers loads exactly the tensors written. Written only when a rewrite changed it: otherwise the file
// keeps the source's own bytes.
import { readFileSync, writeFileSync } from "node:fs";
import type { Mapping } from "../mapping/schema.js";
import { rewriteHfConfig, withoutDecodedQuantization } from "../mapping/hf-config.js";
import type { ConversionPlan } from "../plan/convert-plan.js";

export function finalizeHfConfig(configPath: string, mapping: Mapping, plan: Pick<ConversionPlan, "tensors" | "hfConfig">, opts: { requantized: boolean }): void {
  const cfg = JSON.parse(readFileSync(configPath, "utf8")) as Record<string, unknown>;
  let out = rewriteHfConfig(cfg, mapping, { requantized: opts.requantized, textOnly: plan.hfConfig === "text-only" });
  // --requantize wrote the quantized tensors packed again: the config's quantization_config describes them
  if (!opts.requantized) out = withoutDecodedQuantization(out, mapping, plan.tensors.map((t) => t.name));
  if (out !== cfg) writeFileSync(configPath, JSON.stringify(out, null, 2) + "\n");
}
