// An adapter is only meaningful on the model it was trained on: every module it adapts must be a weight of that base
// model, with the [out, in] shape its lora_B rows and lora_A columns imply. A name that merely matches a mapping
// pattern (layers.40 of a 2-layer model, a q_proj in a linear-attention layer, a dense MLP in a MoE layer) is refused
// with the module named, and so is a LoRA weight that is not a float (an int8 / F4 "adapter" would be copied as bytes). Used by `ckpt lora convert|export` and by anything that loads an adapter onto a base.
import { CkptError } from "../errors.js";
import type { CatalogTensor } from "../catalog-types.js";
import type { DType } from "../dtypes.js";
import { buildCatalog } from "../catalog.js";
import { resolveDims } from "../mapping/load.js";
import { compilePattern, matchPattern } from "../mapping/patterns.js";
import type { Mapping } from "../mapping/schema.js";
import { effectiveConfig, sourceView } from "../plan/source-names.js";
import type { Source } from "../sources/types.js";
import type { AdapterEntry } from "./adapter.js";

export interface AdapterBase {
  mapping: Mapping;
  /** The base model's config.json (as loaded; nested text configs are read through the mapping). */
  config: Record<string, unknown>;
  file: string;
  /** The base model's tensors (headers only) under the mapping's names, when its weights are at hand. */
  tensors?: Map<string, Pick<CatalogTensor, "dtype" | "shape">>;
}

/** Dtypes PEFT stores LoRA / DoRA weights in. */
const ADAPTER_DTYPES: readonly DType[] = ["F64", "F32", "BF16", "F16"];

/** The tensors of a base model folder / repo (headers only), or undefined when it holds no weights (a bare config). */
export async function baseTensors(source: Source | undefined, mapping: Mapping): Promise<Map<string, CatalogTensor> | undefined> {
  if (!source || !source.files().some((f) => f.endsWith(".safetensors") || f === ".metadata")) return undefined;
  return sourceView(mapping, await buildCatalog(source)).tensors;
}

/**
 * Refuses an adapter module the base model does not have: a layer index beyond num_hidden_layers, a layer of another
 * type (config layer_types), or — with the base weights at hand — a weight missing from the checkpoint or of another
 * shape than lora_B × lora_A implies.
 */
export function validateAdapterAgainstBase(entries: readonly (Pick<AdapterEntry, "module" | "a" | "b"> & { m?: Pick<CatalogTensor, "name" | "dtype"> })[], base: AdapterBase, opts: { file?: string; fanInFanOut?: boolean } = {}): void {
  const config = effectiveConfig(base.mapping, base.config);
  const dims = resolveDims(base.mapping, config, base.file);
  const layers = dims.layers;
  const layerTypes = Array.isArray(config.layer_types) ? (config.layer_types as unknown[]) : undefined;
  const typed = base.mapping.tensors.filter((r) => r.hf && r.layer_type).map((r) => ({ re: compilePattern(r.hf!), type: r.layer_type! }));
  for (const e of entries) {
    const weight = e.module.hf + ".weight";
    const where = { file: opts.file ?? base.file, tensor: e.a.name };
    for (const t of [e.a, e.b, ...(e.m ? [e.m] : [])]) {
      if (!ADAPTER_DTYPES.includes(t.dtype)) throw new CkptError("DTYPE", `LoRA weights are floats (F32, BF16, F16, F64), not ${t.dtype}: this adapter is quantized or corrupt`, { file: where.file, tensor: t.name });
    }
    const L = /(?:^|\.)layers\.(\d+)\./.exec(e.module.hf)?.[1];
    if (L !== undefined && layers !== undefined && Number(L) >= layers) {
      throw new CkptError("MISSING_TENSOR", `LoRA module ${e.module.hf} adapts layer ${L}, but the base model has ${layers} layers (0…${layers - 1})`, { ...where, hint: `is ${base.file} the model this adapter was trained on?` });
    }
    if (L !== undefined && layerTypes) {
      const t = typed.find((x) => matchPattern(x.re, weight));
      if (t && layerTypes[Number(L)] !== t.type) {
        throw new CkptError("MISSING_TENSOR", `LoRA module ${e.module.hf} adapts a ${t.type} layer, but layer_types[${L}] of the base model is ${JSON.stringify(layerTypes[Number(L)] ?? null)}`, { ...where, hint: `is ${base.file} the model this adapter was trained on?` });
      }
    }
    if (!base.tensors) continue;
    const w = base.tensors.get(weight);
    // quantized bases keep the module under its packed names; their decoded shape is checked by convert
    const packed = [".weight_packed", "_blocks"].some((s) => base.tensors!.has(e.module.hf + s));
    if (!w && !packed) {
      throw new CkptError("MISSING_TENSOR", `LoRA module ${e.module.hf} adapts ${weight}, which the base checkpoint does not have`, { ...where, hint: `is ${base.file} the model this adapter was trained on?` });
    }
    if (!w) continue;
    const out = e.b.shape[0]!, inn = e.a.shape[1]!;
    // a TorchTitan Linear that holds a row block of the HF weight updates those rows only
    const rows = e.module.rowsOf && out === e.module.rowsOf.size ? e.module.rowsOf.total : out;
    const want = opts.fanInFanOut ? [inn, rows] : [rows, inn];
    if (w.shape.length !== 2 || w.shape[0] !== want[0] || w.shape[1] !== want[1]) {
      throw new CkptError("SHAPE", `LoRA module ${e.module.hf}: lora_B × lora_A is [${out}, ${inn}], but the base weight ${weight} is [${w.shape}]`, { ...where, hint: `is ${base.file} the model this adapter was trained on?` });
    }
  }
}
