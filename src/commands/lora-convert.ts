// `ckpt lora convert` (PEFT → TorchTitan layout) and `ckpt lora export` (TorchTitan layout → PEFT folder).
// Renaming and permuting only: no arithmetic, every tensor keeps its dtype and bytes (numerics.md §9).
import { naturalCompare } from "../util/natural-compare.js";
import { existsSync, mkdirSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { elementSize, type DType } from "../dtypes.js";
import { CkptError } from "../errors.js";
import { commitOutputDir, discardOutputDir, prepareOutputDir } from "../exec/output-dir.js";
import { writeSingleFileDcp } from "../formats/dcp/writer.js";
import { buildSafetensors } from "../formats/safetensors/writer.js";
import { DEFAULT_TARGET, type Mapping, type Target } from "../mapping/schema.js";
import { targetSpec } from "../mapping/targets.js";
import { openSource, type OpenSourceOptions } from "../sources/resolve.js";
import { parseTarget } from "./convert-options.js";
import { closeAdapter, loadBaseConfig, openAdapter, readEntry, type AdapterEntry, type BaseConfig, type OpenedAdapter } from "../lora/adapter.js";
import {
  LORA_CONFIG_FILE, LORA_FORMAT, loraScale, peftAdapterConfigJson, sortedJson, stableStringify,
  type PeftLoraConfig, type TtLoraMetadata,
} from "../lora/config.js";
import { lastSegment, peftName, ttName } from "../lora/names.js";
import { joinRowSplits, withoutPeftUnsupported } from "../lora/peft-export.js";
import { baseTensors, validateAdapterAgainstBase } from "../lora/validate.js";

export interface OutTensor { name: string; dtype: DType; shape: number[]; data: Uint8Array }

export interface LoraConvertOptions extends OpenSourceOptions {
  /** PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or Hub repo. */
  adapter: string;
  out: string;
  /** The base model: HF folder, its config.json, or a repo id (heads / head_dim for the q/k permutation). */
  base: string | BaseConfig;
  format?: "dcp" | "safetensors";
  target?: Target | string;
  force?: boolean;
  onWarning?: (msg: string) => void;
}

export interface LoraConvertResult {
  out: string;
  format: "dcp" | "safetensors";
  target: Target;
  tensors: { name: string; from: string; dtype: DType; shape: number[]; permuted: boolean }[];
  metadata: TtLoraMetadata;
  warnings: string[];
}

export interface LoraExportOptions extends OpenSourceOptions {
  /** TorchTitan-layout adapter: DCP folder, safetensors file/folder, or a TorchTitan checkpoint holding LoRA weights. */
  input: string;
  out: string;
  /** HF folder / config.json / repo id of the base model (default: the input's hf_assets/config.json). */
  config?: string | BaseConfig;
  /** For adapters without ckpt metadata (TorchTitan-trained): LoRAConverter alpha. */
  alpha?: number;
  rslora?: boolean;
  /** base_model_name_or_path to record. */
  baseModel?: string;
  force?: boolean;
  onWarning?: (msg: string) => void;
}

export interface LoraExportResult {
  out: string;
  adapterConfig: Record<string, unknown>;
  tensors: { name: string; from: string; dtype: DType; shape: number[]; permuted: boolean }[];
  warnings: string[];
}

/** ckpt's metadata for a TorchTitan-layout adapter: the PEFT settings plus every module's rank, alpha and scale. */
export function buildTtMetadata(peft: PeftLoraConfig, entries: AdapterEntry[], target: Target, mapping?: Mapping): TtLoraMetadata {
  const modules: TtLoraMetadata["modules"] = {};
  const ttModules = (e: AdapterEntry) => e.module.splitInto?.map((x) => x.tt) ?? [e.module.tt];
  for (const e of entries) for (const tt of ttModules(e)) modules[tt] = { rank: e.rank, alpha: e.alpha, scale: e.scale };
  const pairs = new Set(entries.map((e) => `${e.rank}/${e.alpha}`));
  let torchtitan: TtLoraMetadata["torchtitan"] = null;
  if (pairs.size === 1) {
    const e = entries[0]!;
    const notes: string[] = [];
    if (peft.use_rslora) notes.push(`rsLoRA: alpha ${e.alpha} / √${e.rank} becomes alpha' = alpha·√r for TorchTitan's alpha / rank`);
    if (peft.use_dora) notes.push("TorchTitan's LoRA has no DoRA: merge it (ckpt lora merge) to train on");
    const fusedParts = new Set((mapping?.linears?.fused ?? []).flatMap((f) => f.parts.map(lastSegment)));
    if (targetSpec(target).lora_converter && entries.some((x) => fusedParts.has(lastSegment(x.module.tt)))) {
      notes.push("TorchTitan main builds q/k/v as one fused Linear (qkv_linear.wqkv): these separate wq/wk/wv adapters do not reach its LoRA model; `ckpt convert <hf> <out> --lora <peft>` writes base + adapters as its LoRAConverter model holds them");
    }
    torchtitan = {
      rank: e.rank,
      alpha: peft.use_rslora ? e.alpha * Math.sqrt(e.rank) : e.alpha,
      target_modules: [...new Set(entries.flatMap((x) => ttModules(x).map(lastSegment)))].sort(),
      ...(notes.length ? { note: notes.join("; ") } : {}),
    };
  }
  return {
    format: LORA_FORMAT,
    version: 1,
    target,
    rank: peft.r,
    alpha: peft.lora_alpha,
    use_rslora: peft.use_rslora,
    use_dora: peft.use_dora,
    scale: loraScale(peft.lora_alpha, peft.r, peft.use_rslora),
    scale_formula: peft.use_rslora ? "alpha / sqrt(r)" : "alpha / r",
    torchtitan,
    modules,
    peft,
  };
}

/** Writes `tensors` as a folder (DCP, or model.safetensors) or as one `.safetensors` file; atomic, --force to replace. */
async function writeOutput(out: string, format: "dcp" | "safetensors", tensors: OutTensor[], extraFiles: Record<string, string>, stMetadata: Record<string, string> | undefined, force?: boolean): Promise<string> {
  const abs = resolve(out);
  if (format === "safetensors" && abs.endsWith(".safetensors")) {
    if (existsSync(abs) && !force) throw new CkptError("OUTPUT_EXISTS", "output already exists", { file: abs, hint: "pass --force to replace it" });
    mkdirSync(dirname(abs), { recursive: true });
    const tmp = abs + ".partial";
    writeFileSync(tmp, buildSafetensors(tensors, stMetadata, abs));
    renameSync(tmp, abs);
    return abs;
  }
  const dir = prepareOutputDir(abs, { force });
  try {
    if (format === "dcp") await writeSingleFileDcp(dir.partial, tensors.map((t) => ({ fqn: t.name, dtype: t.dtype, shape: t.shape, data: t.data })));
    else writeFileSync(join(dir.partial, "model.safetensors"), buildSafetensors(tensors, stMetadata, join(abs, "model.safetensors")));
    for (const [f, text] of Object.entries(extraFiles)) writeFileSync(join(dir.partial, f), text);
    commitOutputDir(dir, { force });
  } catch (e) {
    discardOutputDir(dir);
    throw e;
  }
  return abs;
}

async function adapterTensors(ad: OpenedAdapter, layout: "hf" | "tt"): Promise<{ tensors: OutTensor[]; rows: LoraConvertResult["tensors"] }> {
  const tensors: OutTensor[] = [];
  const rows: LoraConvertResult["tensors"] = [];
  for (const e of ad.entries) {
    const { a, b, m } = await readEntry(ad, e, layout);
    const permuted = ad.layout !== layout && !!e.module.rope;
    const name = (part: "A" | "B" | "M") => (layout === "tt" ? ttName(e.module.tt, part) : peftName(e.module.hf, part));
    const add = (part: "A" | "B" | "M", t: { name: string; dtype: DType; shape: number[] }, data: Uint8Array, perm: boolean) => {
      tensors.push({ name: name(part), dtype: t.dtype, shape: [...t.shape], data });
      rows.push({ name: name(part), from: t.name, dtype: t.dtype, shape: [...t.shape], permuted: perm });
    };
    if (layout === "tt" && e.module.splitInto) {
      // TorchTitan holds this HF weight as row blocks (Qwen3.5's in_proj_qkv → in_proj_q / _k / _v): each block's
      // adapter is the same A with its rows of B (and of the magnitude)
      const rowBytes = e.b.shape[1]! * elementSize(e.b.dtype);
      for (const blk of e.module.splitInto) {
        const nm = (part: "A" | "B" | "M") => ttName(blk.tt, part);
        const push = (part: "A" | "B" | "M", t: { name: string; dtype: DType; shape: number[] }, shape: number[], data: Uint8Array) => {
          tensors.push({ name: nm(part), dtype: t.dtype, shape, data });
          rows.push({ name: nm(part), from: t.name, dtype: t.dtype, shape, permuted: false });
        };
        push("A", e.a, [...e.a.shape], a);
        push("B", e.b, [blk.size, e.b.shape[1]!], b.subarray(blk.start * rowBytes, (blk.start + blk.size) * rowBytes));
        if (m && e.m) push("M", e.m, [blk.size], m.subarray(blk.start * elementSize(e.m.dtype), (blk.start + blk.size) * elementSize(e.m.dtype)));
      }
      continue;
    }
    add("A", e.a, a, false);
    add("B", e.b, b, permuted);
    if (m && e.m) add("M", e.m, m, permuted);
  }
  const order = (x: { name: string }, y: { name: string }) => naturalCompare(x.name, y.name);
  tensors.sort(order);
  rows.sort(order);
  return { tensors, rows };
}

/** PEFT adapter → TorchTitan names; lora_B rows and DoRA magnitudes of q/k permuted like their base rows. */
export async function loraConvert(opts: LoraConvertOptions): Promise<LoraConvertResult> {
  const base = typeof opts.base === "string" ? await loadBaseConfig(opts.base, opts) : opts.base;
  const format = opts.format ?? "dcp";
  if (format !== "dcp" && format !== "safetensors") throw new CkptError("USAGE", `--format ${String(format)}: expected dcp or safetensors`);
  const target = parseTarget(opts.target) ?? DEFAULT_TARGET;
  const ad = await openAdapter(opts.adapter, { ...opts, base, target });
  try {
    if (ad.kind !== "peft") throw new CkptError("USAGE", "this adapter is already in TorchTitan layout", { file: ad.source.id, hint: "use `ckpt lora export` to go to PEFT" });
    for (const w of ad.warnings) opts.onWarning?.(w);
    validateAdapterAgainstBase(ad.entries, { mapping: ad.mapping, config: base.config, file: base.file, tensors: await baseTensors(base.source, ad.mapping) }, { file: ad.source.id, fanInFanOut: ad.fanInFanOut });
    const { tensors, rows } = await adapterTensors(ad, "tt");
    const metadata = buildTtMetadata(ad.peft, ad.entries, target, ad.mapping);
    const metaJson = stableStringify(metadata);
    const out = format === "dcp"
      ? await writeOutput(opts.out, "dcp", tensors, { [LORA_CONFIG_FILE]: metaJson }, undefined, opts.force)
      : await writeOutput(opts.out, "safetensors", tensors, {}, {
        format: "pt",
        lora_config: JSON.stringify(sortedJson(metadata)),
        lora_scale: String(metadata.scale),
        lora_scale_formula: metadata.scale_formula,
      }, opts.force);
    return { out, format, target, tensors: rows, metadata, warnings: ad.warnings };
  } finally {
    await closeAdapter(ad);
    if (typeof opts.base === "string") await base.source?.close();
  }
}

/** TorchTitan-layout adapter → PEFT folder (adapter_config.json + adapter_model.safetensors). */
export async function loraExport(opts: LoraExportOptions): Promise<LoraExportResult> {
  let base: BaseConfig;
  if (opts.config === undefined) {
    const s = await openSource(opts.input, opts);
    try {
      const text = await s.readText("hf_assets/config.json");
      if (text === undefined) throw new CkptError("CONFIG", "no base config: the input has no hf_assets/config.json", { file: s.id, hint: "pass --config <hf-folder-or-config.json>" });
      base = { config: JSON.parse(text) as Record<string, unknown>, file: `${s.id}/hf_assets/config.json` };
    } finally {
      await s.close();
    }
  } else base = typeof opts.config === "string" ? await loadBaseConfig(opts.config, opts) : opts.config;
  const ad = await openAdapter(opts.input, { ...opts, base, alpha: opts.alpha, rslora: opts.rslora, baseModel: opts.baseModel });
  try {
    if (ad.kind !== "tt") throw new CkptError("USAGE", "this adapter is already a PEFT adapter", { file: ad.source.id, hint: "use `ckpt lora convert` to go to TorchTitan" });
    for (const w of ad.warnings) opts.onWarning?.(w);
    validateAdapterAgainstBase(ad.entries, { mapping: ad.mapping, config: base.config, file: base.file, tensors: await baseTensors(base.source, ad.mapping) }, { file: ad.source.id });
    if (ad.others.length > 0) opts.onWarning?.(`${ad.others.length} non-LoRA tensor(s) in the input are not part of the adapter and were left out (e.g. ${ad.others[0]})`);
    ad.entries = await joinRowSplits({ ...ad, entries: await withoutPeftUnsupported(ad, opts.onWarning) });
    const peft: PeftLoraConfig = { ...ad.peft };
    if (opts.baseModel !== undefined) peft.base_model_name_or_path = opts.baseModel;
    if (peft.target_modules === null) peft.target_modules = [...new Set(ad.entries.map((e) => lastSegment(e.module.hf)))].sort();
    const { tensors, rows } = await adapterTensors(ad, "hf");
    const configJson = peftAdapterConfigJson(peft);
    const abs = resolve(opts.out);
    const dir = prepareOutputDir(abs, { force: opts.force });
    try {
      writeFileSync(join(dir.partial, "adapter_config.json"), configJson);
      writeFileSync(join(dir.partial, "adapter_model.safetensors"), buildSafetensors(tensors, { format: "pt" }, join(abs, "adapter_model.safetensors")));
      commitOutputDir(dir, { force: opts.force });
    } catch (e) {
      discardOutputDir(dir);
      throw e;
    }
    return { out: abs, adapterConfig: JSON.parse(configJson) as Record<string, unknown>, tensors: rows, warnings: ad.warnings };
  } finally {
    await closeAdapter(ad);
    if (typeof opts.config === "string") await base.source?.close();
  }
}
