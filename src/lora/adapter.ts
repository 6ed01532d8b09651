// Opening a LoRA adapter on either side: a PEFT folder (adapter_config.json + adapter_model.safetensors) or a
// TorchTitan-layout adapter (DCP folder or safetensors, with ckpt's lora_config.json / `__metadata__`, or a
// TorchTitan checkpoint that holds `*.lora_a.weight` / `*.lora_b.weight` beside the base weights).
import { naturalCompare } from "../util/natural-compare.js";
import { readFile, stat } from "node:fs/promises";
import { buildCatalog } from "../catalog.js";
import type { Catalog, CatalogTensor } from "../catalog-types.js";
import { CkptError } from "../errors.js";
import { ropeRowIndex } from "../kernels/index.js";
import { selectMapping } from "../mapping/load.js";
import { DEFAULT_TARGET, TARGETS, type Mapping, type Target } from "../mapping/schema.js";
import { normalizeTtName } from "../plan/source-names.js";
import { openSource, type OpenSourceOptions } from "../sources/resolve.js";
import type { Source } from "../sources/types.js";
import { elementSize } from "../dtypes.js";
import {
  LORA_CONFIG_FILE, isTargetModule, loraScale, moduleRankAlpha, parsePeftConfig, parseTtLoraMetadata,
  type PeftLoraConfig, type TtLoraMetadata,
} from "./config.js";
import { ModuleResolver, lastSegment, parsePeftName, parseTtName, type LoraModule, type LoraPart } from "./names.js";
import { gatherRowBytes, readTensorBytes } from "./tensors.js";
import { FusedLinears } from "./tt-linears.js";

export type Layout = "hf" | "tt";

export interface AdapterEntry {
  module: LoraModule;
  a: CatalogTensor;
  /** lora_B as this module sees it (a fused Linear's part: its rows' shape, the stored tensor in `fused`). */
  b: CatalogTensor;
  /** One part of a fused Linear's adapter (TorchTitan's wqkv): the stored lora_b and the rows that are this part's. */
  fused?: { b: CatalogTensor; rows: Int32Array };
  m?: CatalogTensor;
  /**
   * lora_B joined from the row blocks of TorchTitan Linears that split one HF weight (export of Qwen3.5's in_proj_q /
   * _k / _v as PEFT's in_proj_qkv): each block's stored lora_b, or null for a part without adapter (zero rows).
   */
  rowBlocks?: { b: CatalogTensor | null; rows: number }[];
  rank: number;
  alpha: number;
  scale: number;
}

export interface OpenedAdapter {
  kind: "peft" | "tt";
  /** Name space and lora_B / magnitude row order of the stored tensors. */
  layout: Layout;
  source: Source;
  catalog: Catalog;
  peft: PeftLoraConfig;
  /** ckpt metadata found with a TorchTitan-layout adapter. */
  metadata?: TtLoraMetadata;
  /** TorchTitan layout the module names resolve in. */
  target: Target;
  mapping: Mapping;
  resolver: ModuleResolver;
  entries: AdapterEntry[];
  /** Source tensors that are not adapter weights (a TorchTitan checkpoint holding base + LoRA). */
  others: string[];
  /** PEFT's fan_in_fan_out as configured: the update is transposed for base weights stored [in, out]. */
  fanInFanOut: boolean;
  warnings: string[];
}

export interface BaseConfig {
  config: Record<string, unknown>;
  file: string;
  /** The HF folder it came from, when it is one (for copying config/tokenizer files). */
  source?: Source;
}

/** `--base` / `--config`: a config.json file, an HF folder (or its hf_assets/), or a Hub repo id. */
export async function loadBaseConfig(spec: string, opts: OpenSourceOptions = {}): Promise<BaseConfig> {
  let isJsonFile = false;
  try { isJsonFile = spec.endsWith(".json") && (await stat(spec)).isFile(); } catch { /* not a local file */ }
  if (isJsonFile) {
    try {
      return { config: JSON.parse(await readFile(spec, "utf8")) as Record<string, unknown>, file: spec };
    } catch (e) {
      throw new CkptError("CONFIG", `invalid config.json: ${(e as Error).message}`, { file: spec });
    }
  }
  const s = await openSource(spec, opts);
  for (const f of ["config.json", "hf_assets/config.json"]) {
    const text = await s.readText(f);
    if (text === undefined) continue;
    try {
      return { config: JSON.parse(text) as Record<string, unknown>, file: `${s.id}/${f}`, source: s };
    } catch (e) {
      throw new CkptError("CONFIG", `invalid config.json: ${(e as Error).message}`, { file: `${s.id}/${f}` });
    }
  }
  await s.close();
  throw new CkptError("CONFIG", "no config.json there", { file: spec, hint: "give the base model's HF folder, its config.json, or a repo id" });
}

export interface OpenAdapterOptions extends OpenSourceOptions {
  base: BaseConfig;
  /** Preferred TorchTitan layout (PEFT → TorchTitan); TorchTitan adapters are detected from their names. */
  target?: Target;
  /** TorchTitan adapters without ckpt metadata: LoRA alpha (TorchTitan scale alpha / rank). */
  alpha?: number;
  /** …and whether that alpha is an rsLoRA alpha (scale alpha / √r). */
  rslora?: boolean;
  baseModel?: string;
}

function group<T extends { module: string; part: LoraPart; name: string }>(items: T[]): Map<string, Partial<Record<LoraPart, string>>> {
  const g = new Map<string, Partial<Record<LoraPart, string>>>();
  for (const it of items) {
    const e = g.get(it.module) ?? {};
    if (e[it.part]) throw new CkptError("MAPPING", `two tensors for the same LoRA weight: ${e[it.part]} and ${it.name}`, { tensor: it.name });
    e[it.part] = it.name;
    g.set(it.module, e);
  }
  return g;
}

function checkShapes(e: AdapterEntry, file: string): void {
  const [r, inA] = e.a.shape;
  const [out, rB] = e.b.shape;
  const where = { file, tensor: e.b.name };
  if (e.a.shape.length !== 2 || e.b.shape.length !== 2) throw new CkptError("SHAPE", `lora_A ${JSON.stringify(e.a.shape)} / lora_B ${JSON.stringify(e.b.shape)} must be matrices`, where);
  if (r !== rB) throw new CkptError("SHAPE", `lora_A has ${r} rows but lora_B has ${rB} columns`, where);
  if (r !== e.rank) throw new CkptError("CONFIG", `the configured rank of ${e.module.hf} is ${e.rank}, but lora_A has ${r} rows`, where);
  if (e.module.shape && (e.module.shape[0] !== out || e.module.shape[1] !== inA)) {
    throw new CkptError("SHAPE", `adapter implies a [${out}, ${inA}] base weight, but config.json gives [${e.module.shape.join(", ")}]`, { ...where, hint: "is --base the model this adapter was trained on?" });
  }
  if (e.module.rope && out !== e.module.rope.heads * e.module.rope.headDim) {
    throw new CkptError("CONFIG", `lora_B has ${out} rows, but heads × head_dim = ${e.module.rope.heads} × ${e.module.rope.headDim}`, where);
  }
  if (e.m && (e.m.shape.length !== 1 || e.m.shape[0] !== out)) throw new CkptError("SHAPE", `DoRA magnitude has shape [${e.m.shape}], expected [${out}]`, { file, tensor: e.m.name });
}

export async function openAdapter(spec: string | Source, opts: OpenAdapterOptions): Promise<OpenedAdapter> {
  const source = typeof spec === "string" ? await openSource(spec, opts) : spec;
  try {
    return await openAdapterFrom(source, opts);
  } catch (e) {
    if (typeof spec === "string") await source.close();
    throw e;
  }
}

async function openAdapterFrom(source: Source, opts: OpenAdapterOptions): Promise<OpenedAdapter> {
  const catalog = await buildCatalog(source);
  const mapping = selectMapping(opts.base.config, opts.base.file);
  const names = [...catalog.tensors.keys()].sort(naturalCompare);
  const warnings: string[] = [];
  const configText = await source.readText("adapter_config.json");
  const peftNames = names.map((n) => ({ n, p: parsePeftName(n) }));
  const looksPeft = configText !== undefined || peftNames.some((x) => x.p && "part" in x.p && /\.lora_[AB](\.|$)|lora_magnitude_vector/.test(x.n));

  if (looksPeft) {
    const file = `${source.id}/adapter_config.json`;
    if (configText === undefined) throw new CkptError("CONFIG", "PEFT adapter without adapter_config.json: r and lora_alpha are unknown", { file: source.id });
    let raw: unknown;
    try { raw = JSON.parse(configText); } catch (e) { throw new CkptError("CONFIG", `invalid JSON: ${(e as Error).message}`, { file }); }
    const { config: peft, warnings: w, fanInFanOut } = parsePeftConfig(raw, file);
    warnings.push(...w);
    if (opts.alpha !== undefined || opts.rslora !== undefined) warnings.push(`--alpha / --rslora ignored: ${file} gives this PEFT adapter's lora_alpha and use_rslora`);
    const items: { module: string; part: LoraPart; name: string }[] = [];
    for (const { n, p } of peftNames) {
      if (!p) throw new CkptError("UNMAPPED", "not a LoRA tensor; only lora_A / lora_B / lora_magnitude_vector are supported", { file: source.id, tensor: n });
      if ("unsupported" in p) throw new CkptError("UNMAPPED", `${p.unsupported} is not supported`, { file: source.id, tensor: n });
      items.push({ module: p.module, part: p.part, name: n });
    }
    const target = opts.target ?? DEFAULT_TARGET;
    const resolver = new ModuleResolver(mapping, opts.base.config, target, opts.base.file);
    const entries: AdapterEntry[] = [];
    for (const [mod, parts] of group(items)) {
      let module = resolver.fromHf(mod);
      // adapters trained on the bare decoder (AutoModel) lack the `model.` of the causal-LM wrapper
      if (!module && !mod.startsWith("model.")) module = resolver.fromHf("model." + mod);
      if (!module) throw new CkptError("UNMAPPED", `LoRA module '${mod}' adapts no ${mapping.architecture} weight ckpt knows`, { file: source.id, tensor: parts.A ?? parts.B ?? parts.M });
      if (!isTargetModule(peft, mod) && !isTargetModule(peft, module.hf)) {
        warnings.push(`${mod}: not in target_modules ${JSON.stringify(peft.target_modules)}; PEFT would not load it, so it is skipped`);
        continue;
      }
      if (!parts.A || !parts.B) throw new CkptError("MISSING_TENSOR", `LoRA module '${mod}' has lora_${parts.A ? "B" : "A"} missing`, { file: source.id });
      if (parts.M && !peft.use_dora) throw new CkptError("CONFIG", `'${mod}' has a DoRA magnitude vector but use_dora is false`, { file: `${source.id}/adapter_config.json`, tensor: parts.M });
      if (!parts.M && peft.use_dora) throw new CkptError("MISSING_TENSOR", `use_dora is true but '${mod}' has no lora_magnitude_vector`, { file: source.id });
      const { rank, alpha } = moduleRankAlpha(peft, module.hf);
      const e: AdapterEntry = {
        module, a: catalog.tensors.get(parts.A)!, b: catalog.tensors.get(parts.B)!, m: parts.M ? catalog.tensors.get(parts.M) : undefined,
        rank, alpha, scale: loraScale(alpha, rank, peft.use_rslora),
      };
      checkShapes(e, source.id);
      entries.push(e);
    }
    if (entries.length === 0) throw new CkptError("MISSING_TENSOR", "the adapter holds no LoRA weights for target_modules", { file: source.id });
    entries.sort((x, y) => naturalCompare(x.module.hf, y.module.hf));
    return { kind: "peft", layout: "hf", source, catalog, peft, target, mapping, resolver, entries, others: [], fanInFanOut, warnings };
  }

  // TorchTitan layout
  let metadata: TtLoraMetadata | undefined;
  const metaText = await source.readText(LORA_CONFIG_FILE);
  if (metaText !== undefined) metadata = parseTtLoraMetadata(metaText, `${source.id}/${LORA_CONFIG_FILE}`);
  else {
    for (const [f, md] of catalog.fileMetadata) if (md.lora_config) { metadata = parseTtLoraMetadata(md.lora_config, `${source.id}/${f}`); break; }
  }
  const items: { module: string; part: LoraPart; name: string }[] = [];
  const others: string[] = [];
  for (const n of names) {
    // a TorchTitan step checkpoint: optimizer / lr_scheduler / dataloader / train_state beside the model keys
    if (normalizeTtName(n).name === undefined) continue;
    const p = parseTtName(n);
    if (p) items.push({ ...p, name: n });
    else others.push(n);
  }
  if (items.length === 0) throw new CkptError("MISSING_TENSOR", "no LoRA tensors (*.lora_a.weight / *.lora_b.weight) found", { file: source.id });
  const grouped = group(items);
  const candidates = metadata ? [metadata.target] : TARGETS.filter((t) => mapping.targets.includes(t));
  let best: { target: Target; resolver: ModuleResolver; hits: number } | undefined;
  for (const t of candidates) {
    const r = new ModuleResolver(mapping, opts.base.config, t, opts.base.file);
    const hits = [...grouped.keys()].filter((m) => r.fromTt(m)).length;
    if (!best || hits > best.hits) best = { target: t, resolver: r, hits };
  }
  const { target, resolver } = best!;
  let peft: PeftLoraConfig;
  const entries: AdapterEntry[] = [];
  const ranks = new Map<number, number>();
  const linears = new FusedLinears(mapping, resolver);
  for (const [mod, parts] of grouped) {
    const fused = linears.split(mod);
    if (fused) {
      if (!parts.A || !parts.B) throw new CkptError("MISSING_TENSOR", `LoRA module '${mod}' has lora_${parts.A ? "b" : "a"} missing`, { file: source.id });
      if (parts.M) throw new CkptError("UNMAPPED", `'${mod}' has a magnitude vector: TorchTitan's fused Linear has no DoRA`, { file: source.id, tensor: parts.M });
      const a = catalog.tensors.get(parts.A)!, b = catalog.tensors.get(parts.B)!;
      if (b.shape[0] !== fused.rows) throw new CkptError("SHAPE", `lora_b has ${b.shape[0]} rows, the fused Linear ${fused.rows}`, { file: source.id, tensor: b.name });
      ranks.set(a.shape[0]!, (ranks.get(a.shape[0]!) ?? 0) + fused.parts.length);
      for (const p of fused.parts) {
        entries.push({ module: p.module, a, b: { ...b, shape: [p.rows.length, b.shape[1]!] }, fused: { b, rows: p.rows }, rank: a.shape[0]!, alpha: NaN, scale: NaN });
      }
      continue;
    }
    const module = resolver.fromTt(mod);
    if (!module) throw new CkptError("UNMAPPED", `LoRA module '${mod}' adapts no ${mapping.architecture} ${target} weight`, { file: source.id, tensor: parts.A ?? parts.B ?? parts.M });
    if (!parts.A || !parts.B) throw new CkptError("MISSING_TENSOR", `LoRA module '${mod}' has lora_${parts.A ? "b" : "a"} missing`, { file: source.id });
    const a = catalog.tensors.get(parts.A)!;
    ranks.set(a.shape[0]!, (ranks.get(a.shape[0]!) ?? 0) + 1);
    entries.push({ module, a, b: catalog.tensors.get(parts.B)!, m: parts.M ? catalog.tensors.get(parts.M) : undefined, rank: a.shape[0]!, alpha: NaN, scale: NaN });
  }
  const hasDora = entries.some((e) => e.m);
  if (metadata) {
    peft = metadata.peft;
    if (opts.alpha !== undefined || opts.rslora !== undefined) warnings.push("--alpha / --rslora ignored: this adapter's ckpt LoRA metadata gives its alpha and scale");
    for (const e of entries) {
      const ms = metadata.modules[e.module.tt];
      const ra = ms ?? moduleRankAlpha(peft, e.module.hf);
      e.rank = ra.rank; e.alpha = ra.alpha; e.scale = loraScale(ra.alpha, ra.rank, peft.use_rslora);
    }
  } else {
    if (opts.alpha === undefined) {
      throw new CkptError("CONFIG", "this TorchTitan adapter carries no ckpt lora metadata, so its alpha (hence the scale) is unknown", {
        file: source.id, hint: "pass --alpha (TorchTitan's LoRAConverter alpha; default there 16.0)",
      });
    }
    const rank = [...ranks.entries()].sort((x, y) => y[1] - x[1])[0]![0];
    const rslora = opts.rslora ?? false;
    peft = {
      r: rank, lora_alpha: opts.alpha, use_rslora: rslora, use_dora: hasDora,
      target_modules: [...new Set(entries.map((e) => lastSegment(e.module.hf)))].sort(),
      rank_pattern: {}, alpha_pattern: {}, layers_to_transform: null, layers_pattern: null, lora_dropout: 0, fan_in_fan_out: false,
      base_model_name_or_path: opts.baseModel ?? null, task_type: "CAUSAL_LM",
    };
    for (const e of entries) {
      if (e.rank !== rank) peft.rank_pattern[e.module.hf.replace(/\./g, "\\.")] = e.rank;
      e.alpha = opts.alpha; e.scale = loraScale(opts.alpha, e.rank, rslora);
    }
  }
  if (hasDora && !peft.use_dora) throw new CkptError("CONFIG", "the adapter has DoRA magnitudes but its metadata says use_dora = false", { file: source.id });
  for (const e of entries) {
    if (peft.use_dora && !e.m) throw new CkptError("MISSING_TENSOR", `use_dora is true but '${e.module.tt}' has no magnitude`, { file: source.id });
    checkShapes(e, source.id);
  }
  entries.sort((x, y) => naturalCompare(x.module.tt, y.module.tt));
  return { kind: "tt", layout: "tt", source, catalog, peft, metadata, target, mapping, resolver, entries, others, fanInFanOut: false, warnings };
}

/** Row order that moves lora_B / magnitude rows of `e` from `from` to `to` layout (undefined: unchanged). */
export function bRowIndex(e: AdapterEntry, from: Layout, to: Layout): Int32Array | undefined {
  if (from === to || !e.module.rope) return undefined;
  return ropeRowIndex(e.module.rope.heads, e.module.rope.headDim, from === "hf" ? "hf_to_tt" : "tt_to_hf");
}

/** The stored bytes of A, B and M, with B's rows and M permuted into `layout`. A is never moved (numerics.md §9). */
export async function readEntry(ad: OpenedAdapter, e: AdapterEntry, layout: Layout): Promise<{ a: Uint8Array; b: Uint8Array; m?: Uint8Array }> {
  const idx = bRowIndex(e, ad.layout, layout);
  const a = await readTensorBytes(ad.source, e.a);
  let b = e.fused
    ? gatherRowBytes(await readTensorBytes(ad.source, e.fused.b), e.b.shape[1]! * elementSize(e.b.dtype), e.fused.rows)
    : e.rowBlocks ? await joinRows(ad.source, e.rowBlocks, e.b.shape[1]! * elementSize(e.b.dtype))
    : await readTensorBytes(ad.source, e.b);
  let m = e.m ? await readTensorBytes(ad.source, e.m) : undefined;
  if (idx) {
    b = gatherRowBytes(b, e.b.shape[1]! * elementSize(e.b.dtype), idx);
    if (m) m = gatherRowBytes(m, elementSize(e.m!.dtype), idx);
  }
  return { a, b, m };
}

/** Row blocks one under another; a null block is `rows` zero rows. */
async function joinRows(source: Source, blocks: NonNullable<AdapterEntry["rowBlocks"]>, rowBytes: number): Promise<Uint8Array> {
  const out = new Uint8Array(blocks.reduce((n, x) => n + x.rows, 0) * rowBytes);
  let off = 0;
  for (const blk of blocks) {
    if (blk.b) out.set(await readTensorBytes(source, blk.b), off);
    off += blk.rows * rowBytes;
  }
  return out;
}

export async function closeAdapter(ad: OpenedAdapter): Promise<void> {
  await ad.source.close();
}
