// The TorchTitan config lines that load a written output (printed by convert / shard, and by --finalize).
import { join } from "node:path";
import type { Target } from "../mapping/schema.js";

/**
 * TorchTitan config that loads an output: `dcp` (initial_load_in_hf = false: dcp.load through FileSystemReader),
 * `hf-safetensors` (per-rank HF-named files, initial_load_in_hf = true: HuggingFaceStorageReader + from_hf), or
 * `tt-safetensors` (per-rank TorchTitan-named files: no TorchTitan config reads them, only a plain dcp.load with
 * HuggingFaceStorageReader; said as comments).
 */
export function torchtitanConfigLines(out: string, target: Target, hfAssets: boolean, kind: "dcp" | "hf-safetensors" | "tt-safetensors" = "dcp"): string {
  if (kind === "tt-safetensors") {
    return [
      "# TorchTitan has no config that reads per-rank safetensors with TorchTitan names (initial_load_in_hf expects HF",
      "# names and applies from_hf). Load it with dcp.load(state_dict, storage_reader=HuggingFaceStorageReader(path)),",
      "# or write it with --hf-names for TorchTitan's initial_load_in_hf = true, or as DCP (the default).",
    ].join("\n");
  }
  const hf = kind === "hf-safetensors";
  const lines = [
    "[checkpoint]",
    "enable = true",
    `initial_load_path = "${out}"`,
    "initial_load_model_only = true",
    `initial_load_in_hf = ${hf}`,
  ];
  if (hfAssets) lines.push("", "[model]", `hf_assets_path = "${join(out, "hf_assets")}"`);
  lines.push("", `# layout: ${target}${hf ? ", HF names per rank (TorchTitan's from_hf runs after the load)" : ""}; CLI: --checkpoint.enable --checkpoint.initial_load_path ${out}${hf ? " --checkpoint.initial_load_in_hf" : ""}`);
  return lines.join("\n");
}
