// `ckpt lora merge`: W' = W + s·(B @ A); DoRA: V = W + s·(B @ A), W'[i,:] = m_i / ‖V[i,:]‖₂ · V[i,:]
// (numerics.md §9), in f32 in the order of PEFT's merge on PyTorch's CPU (kernels/lora-merge.ts), then cast to the
// output dtype with round-to-nearest-even by the kernels. Reading (the base's catalog, the adapter, which module
// adapts which weight) is separate from writing: the merge is a plan (`lora_merge` ops over the base's tensors)
// written by the executor like any conversion (streamed in pieces, resume journal, manifest, fsync). The output is
// HF safetensors for an HF base, and DCP or safetensors for a TorchTitan base.
import { naturalCompare } from "../util/natural-compare.js";
import { join, resolve } from "node:path";
import { buildCatalog } from "../catalog.js";
import type { Catalog, CatalogTensor } from "../catalog-types.js";
import { isCastable, parseDTypeChoice, type DType } from "../dtypes.js";
import { CkptError } from "../errors.js";
import { parseDigest } from "../exec/digest.js";
import type { ProgressEvent } from "../exec/executor.js";
import { stampFiles } from "../exec/journal.js";
import { selectMapping } from "../mapping/load.js";
import { DEFAULT_TARGET, type Target } from "../mapping/schema.js";
import { detectTarget, sideOf, type ConversionPlan, type TensorPlan } from "../plan/convert-plan.js";
import { normalizeTtName } from "../plan/source-names.js";
import { layoutDcp, layoutSafetensors } from "../plan/output-layout.js";
import type { Recipe } from "../plan/recipe.js";
import type { Box } from "../plan/runs.js";
import { copyAssets } from "../finalize/assets.js";
import { writeOutput } from "../finalize/write-output.js";
import { openSource, type OpenSourceOptions } from "../sources/resolve.js";
import type { Source } from "../sources/types.js";
import { VERSION } from "../version.js";
import { closeAdapter, loadBaseConfig, openAdapter, readEntry, type AdapterEntry, type BaseConfig, type Layout, type OpenedAdapter } from "../lora/adapter.js";
import type { LoraPieceUpdate } from "../kernels/lora-merge.js";
import { ModuleResolver } from "../lora/names.js";
import { toF32 } from "../lora/tensors.js";

export interface LoraMergeOptions extends OpenSourceOptions {
  /** HF checkpoint (folder / repo) or TorchTitan checkpoint (DCP folder or safetensors). */
  base: string;
  /** PEFT folder or TorchTitan-layout adapter; omitted: the LoRA weights stored inside a TorchTitan `base`. */
  adapter?: string;
  out: string;
  /** keep (default) | bf16 | f16 | f32. */
  dtype?: string;
  /** config.json source for a TorchTitan base without hf_assets/. */
  config?: string;
  /** TorchTitan output format (default: dcp for a DCP base, else safetensors). HF bases always give safetensors. */
  format?: "dcp" | "safetensors";
  /** TorchTitan adapters without ckpt metadata. */
  alpha?: number;
  rslora?: boolean;
  force?: boolean;
  allowOverflow?: boolean;
  maxShardBytes?: number;
  /** Worker lanes (default: the cores). */
  threads?: number;
  /** fsync every file and the folder before the atomic rename (default true). */
  fsync?: boolean;
  /** Continue an interrupted merge from `<out>.partial/` (its journal). */
  resume?: boolean;
  /** Digest of every output piece in the manifest (default xxh128; or sha256). */
  digest?: string;
  signal?: AbortSignal;
  onWarning?: (msg: string) => void;
  onProgress?: (e: ProgressEvent) => void;
}

export interface LoraMergeResult {
  out: string;
  layout: Layout;
  target?: Target;
  format: "dcp" | "safetensors";
  tensors: number;
  merged: { weight: string; scale: number; rank: number; dora: boolean; transposed: boolean }[];
  bytesWritten: number;
  seconds: number;
  f16Overflow: number;
}

const TORCH_DTYPE_NAME: Partial<Record<DType, string>> = { F32: "float32", BF16: "bfloat16", F16: "float16" };

// ---- merge -------------------------------------------------------------------------------------------------------

interface BaseInfo {
  source: Source;
  catalog: Catalog;
  config: BaseConfig;
  layout: Layout;
  target?: Target;
}

async function openBase(opts: LoraMergeOptions): Promise<BaseInfo> {
  const source = await openSource(opts.base, opts);
  try {
    const catalog = await buildCatalog(source);
    let config: BaseConfig | undefined;
    if (opts.config) config = await loadBaseConfig(opts.config, opts);
    else if (catalog.config) config = { config: catalog.config, file: `${source.id}/config.json`, source };
    else {
      const text = await source.readText("hf_assets/config.json");
      if (text !== undefined) config = { config: JSON.parse(text) as Record<string, unknown>, file: `${source.id}/hf_assets/config.json` };
    }
    if (!config) throw new CkptError("CONFIG", "no config.json for the base model", { file: source.id, hint: "pass --config <hf-folder-or-config.json>" });
    const mapping = selectMapping(config.config, config.file);
    const names = [...catalog.tensors.keys()];
    const layout: Layout = sideOf(mapping, names, DEFAULT_TARGET) === "tt" ? "tt" : "hf";
    const target = layout === "tt" ? detectTarget(mapping, names.map((n) => normalizeTtName(n).name ?? n)) : undefined;
    return { source, catalog, config, layout, target };
  } catch (e) {
    await source.close();
    throw e;
  }
}

interface Job { entry: AdapterEntry; transposed: boolean }

/** What a merge reads: the base, the adapter, the output tensors and which adapter module each merged weight takes. */
interface MergeInputs {
  base: BaseInfo;
  ad: OpenedAdapter;
  adapterInBase: boolean;
  format: "dcp" | "safetensors";
  outputs: { name: string; tensor: CatalogTensor; dtype: DType }[];
  jobs: Map<string, Job>;
}

async function openMergeInputs(opts: LoraMergeOptions, base: BaseInfo): Promise<MergeInputs> {
  const warn = (m: string) => opts.onWarning?.(m);
  const adapterInBase = opts.adapter === undefined;
  const ad = adapterInBase
    ? await openAdapter(base.source, { ...opts, base: base.config, alpha: opts.alpha, rslora: opts.rslora })
    : await openAdapter(opts.adapter!, { ...opts, base: base.config, target: base.target, alpha: opts.alpha, rslora: opts.rslora });
  try {
    for (const w of ad.warnings) warn(w);
    const dtypeChoice = parseDTypeChoice(opts.dtype);
    const format = base.layout === "hf" ? "safetensors" : opts.format ?? (base.catalog.format === "dcp" ? "dcp" : "safetensors");
    if (base.layout === "hf" && opts.format === "dcp") throw new CkptError("USAGE", "an HF base merges into HF safetensors; convert the result for DCP");

    // output tensors: base tensors (TorchTitan names normalised), LoRA tensors of a combined checkpoint left out
    const skip = new Set<string>(adapterInBase ? ad.entries.flatMap((e) => [e.a.name, e.b.name, ...(e.m ? [e.m.name] : [])]) : []);
    const outputs: MergeInputs["outputs"] = [];
    const leftOut: string[] = [];
    for (const t of base.catalog.tensors.values()) {
      if (skip.has(t.name)) continue;
      let name = t.name;
      if (base.layout === "tt") {
        const n = normalizeTtName(t.name);
        if (!n.name) { leftOut.push(`${t.name}: ${n.why}`); continue; }
        name = n.name;
      }
      const dtype = dtypeChoice !== "keep" && isCastable(t.dtype) ? dtypeChoice : t.dtype;
      outputs.push({ name, tensor: t, dtype });
    }
    // a TorchTitan step checkpoint holds optimizer / lr_scheduler / dataloader / train_state beside the model: one line
    if (leftOut.length) warn(`${leftOut.length} tensor(s) left out of the merged checkpoint (e.g. ${leftOut[0]})`);
    outputs.sort((x, y) => naturalCompare(x.name, y.name));
    const byName = new Map(outputs.map((o) => [o.name, o]));

    // adapter module → base weight
    const baseResolver = base.layout === "tt" ? new ModuleResolver(ad.mapping, base.config.config, base.target!, base.config.file) : undefined;
    const jobs = new Map<string, Job>();
    for (const e of ad.entries) {
      // a Linear that holds a row block of its HF weight (Qwen3.5's in_proj_q / _k / _v) is its own base weight
      const tt = e.module.rowsOf && ad.target === base.target ? e.module.tt : baseResolver?.fromHf(e.module.hf)?.tt;
      const weight = (base.layout === "hf" ? e.module.hf : tt) + ".weight";
      const o = byName.get(weight);
      if (!o) throw new CkptError("MISSING_TENSOR", `the adapter adapts ${weight}, which the base does not have`, { file: base.source.id, tensor: weight, hint: "is this the adapter's base model (and layout)?" });
      const [out, inn] = [e.b.shape[0]!, e.a.shape[1]!];
      const sh = o.tensor.shape;
      let transposed = false;
      if (sh.length === 2 && sh[0] === out && sh[1] === inn) transposed = false;
      else if (ad.fanInFanOut && sh.length === 2 && sh[0] === inn && sh[1] === out) transposed = true;
      else throw new CkptError("SHAPE", `base weight is [${sh.join(", ")}], the adapter's update is [${out}, ${inn}]`, { tensor: weight });
      if (!isCastable(o.tensor.dtype)) throw new CkptError("DTYPE", `cannot merge into a ${o.tensor.dtype} weight`, { tensor: weight, hint: "dequantize the base first" });
      if (transposed && e.m) throw new CkptError("UNSUPPORTED", "DoRA with fan_in_fan_out on a base weight stored [in, out] (Conv1D): its row norms span every stored row, which the streaming merge does not hold", { tensor: weight, hint: "merge an nn.Linear base, or drop fan_in_fan_out" });
      if (jobs.has(o.name)) throw new CkptError("MAPPING", "two adapter modules adapt the same weight", { tensor: o.name });
      jobs.set(o.name, { entry: e, transposed });
    }
    return { base, ad, adapterInBase, format, outputs, jobs };
  } catch (e) {
    if (!adapterInBase) await closeAdapter(ad);
    throw e;
  }
}

/** The merge as a plan: every base tensor as itself (cast to the output dtype), adapted weights through `lora_merge`. */
function planMerge(m: MergeInputs): ConversionPlan {
  const tensors: TensorPlan[] = m.outputs.map((o) => {
    const input: Recipe = { op: "source", tensor: o.tensor.name };
    return { name: o.name, dtype: o.dtype, shape: [...o.tensor.shape], recipe: m.jobs.has(o.name) ? { op: "lora_merge", update: o.name, input } : input, policy: { tp: "replicate" } };
  });
  const leaves: ConversionPlan["leaves"] = {};
  for (const o of m.outputs) leaves[o.tensor.name] = { dtype: o.tensor.dtype, shape: o.tensor.shape, pieces: o.tensor.pieces };
  return { direction: "tt_to_tt", mapping: m.ad.mapping.architecture, target: m.base.target ?? DEFAULT_TARGET, tensors, leaves, unmapped: [], skipped: [], warnings: [], dims: {} };
}

/**
 * The adapter rows each `lora_merge` piece needs, read when the piece is dispatched (a few modules' A / B / m in
 * f32 held at a time, never the whole adapter): B and m rows of the piece's stored rows, or A's columns of a
 * transposed base's stored rows.
 */
function updateReader(m: MergeInputs): (t: TensorPlan, box: Box) => Promise<{ lora?: LoraPieceUpdate }> {
  const cache = new Map<string, Promise<{ a: Float32Array; b: Float32Array; m?: Float32Array }>>();
  const load = (name: string) => {
    let p = cache.get(name);
    if (!p) {
      const e = m.jobs.get(name)!.entry;
      p = readEntry(m.ad, e, m.base.layout).then(({ a, b, m: mag }) => {
        const [out, r, inn] = [e.b.shape[0]!, e.a.shape[0]!, e.a.shape[1]!];
        return { a: toF32(a, e.a.dtype, r * inn), b: toF32(b, e.b.dtype, out * r), m: mag ? toF32(mag, e.m!.dtype, out) : undefined };
      });
      cache.set(name, p);
      if (cache.size > 4) cache.delete(cache.keys().next().value!);
    }
    return p;
  };
  return async (t, box) => {
    if (t.recipe.op !== "lora_merge") return {};
    const job = m.jobs.get(t.recipe.update)!;
    const e = job.entry;
    const { a, b, m: mag } = await load(t.recipe.update);
    const [r, inn] = [e.a.shape[0]!, e.a.shape[1]!];
    const [r0, n] = [box.offsets[0]!, box.sizes[0]!];
    if (box.offsets[1] !== 0 || box.sizes[1] !== t.shape[1]) throw new CkptError("INTERNAL", `lora_merge piece of ${t.name} does not span whole rows`);
    if (job.transposed) {
      const as = new Float32Array(r * n);
      for (let k = 0; k < r; k++) as.set(a.subarray(k * inn + r0, k * inn + r0 + n), k * n);
      return { lora: { a: as, b, r, scale: e.scale, transposed: true, cols: t.shape[1]! } };
    }
    return { lora: { a, b: b.slice(r0 * r, (r0 + n) * r), m: mag?.slice(r0, r0 + n), r, scale: e.scale, transposed: false, cols: inn } };
  };
}

export async function loraMerge(opts: LoraMergeOptions): Promise<LoraMergeResult> {
  const started = performance.now();
  // the options on their own, before the base and the adapter are opened
  const digest = parseDigest(opts.digest);
  const dtypeChoice = parseDTypeChoice(opts.dtype);
  const base = await openBase(opts);
  let inputs: MergeInputs | undefined;
  try {
    inputs = await openMergeInputs(opts, base);
    const { format, jobs } = inputs;
    const plan = planMerge(inputs);
    const layout = format === "dcp" ? layoutDcp(plan.tensors, { fsdp: 1, tp: 1 }, 2) : layoutSafetensors(plan.tensors, { maxShardBytes: opts.maxShardBytes ?? 5 * 1024 ** 3 });
    const outAbs = resolve(opts.out);
    const pieceBytes = 16 * 1024 * 1024;
    const stamps = stampFiles(base.source.files(), (f) => base.source.localPath(f));
    const adapterId = inputs.adapterInBase ? base.source.id : inputs.ad.source.id;
    const optionsRecord = { command: "lora merge", adapter: adapterId, format, dtype: opts.dtype ?? "keep", pieceBytes, digest };
    // the adapter's bytes are part of what the output depends on: its files' stamps join the resume identity
    const adapterStamps = stampFiles(inputs.ad.source.files(), (f) => inputs!.ad.source.localPath(f));
    const journalPlan = JSON.stringify({ version: VERSION, options: optionsRecord, scales: [...jobs.values()].map((j) => j.entry.scale), base: Object.fromEntries(stamps), adapter: Object.fromEntries(adapterStamps) });
    const exec = await writeOutput({
      out: outAbs, plan, layout, catalog: base.catalog, source: base.source, stamps, journalPlan, optionsRecord, digest,
      execOpts: { threads: opts.threads, pieceBytes, digest, directIo: opts.fsync !== false, onProgress: opts.onProgress, signal: opts.signal, pieceInputs: updateReader(inputs) },
      force: opts.force, resume: opts.resume, fsync: opts.fsync, allowOverflow: opts.allowOverflow, onWarning: opts.onWarning,
      addFiles: (partial) => copyMergeAssets(base, opts, partial, dtypeChoice === "keep" ? undefined : dtypeChoice),
    });
    const merged: LoraMergeResult["merged"] = [...jobs].map(([weight, j]) => ({ weight, scale: j.entry.scale, rank: j.entry.a.shape[0]!, dora: !!j.entry.m, transposed: j.transposed }));
    return {
      out: outAbs, layout: base.layout, target: base.target, format, tensors: plan.tensors.length, merged, bytesWritten: exec.bytesWritten,
      seconds: (performance.now() - started) / 1000, f16Overflow: exec.f16Overflow,
    };
  } finally {
    if (inputs && !inputs.adapterInBase) await closeAdapter(inputs.ad);
    if (base.config.source && base.config.source !== base.source) await base.config.source.close();
    await base.source.close();
  }
}

/** HF output: the base's config/tokenizer files (torch_dtype updated on a dtype change); TorchTitan: hf_assets/. */
function copyMergeAssets(base: BaseInfo, opts: LoraMergeOptions, dir: string, dtype: DType | undefined): void {
  const torchDtype = dtype && TORCH_DTYPE_NAME[dtype];
  if (base.layout === "hf") {
    copyAssets(base.config.source ?? base.source, dir, { torchDtype });
    return;
  }
  const inBase = base.source.files().filter((f) => f.startsWith("hf_assets/"));
  if (inBase.length > 0) copyAssets(base.source, dir, { files: inBase, torchDtype });
  else if (base.config.source && !opts.config?.endsWith(".json")) copyAssets(base.config.source, join(dir, "hf_assets"), { torchDtype });
}
