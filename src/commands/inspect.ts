// inspect: what a checkpoint holds, from headers; --stats streams every tensor once through the stats kernel.
import { naturalCompare } from "../util/natural-compare.js";
import { buildCatalog } from "../catalog.js";
import type { Catalog } from "../catalog-types.js";
import { elementSize, isCastable, numelOf, type DType } from "../dtypes.js";
import { getKernels, type Stats } from "../kernels/index.js";

import { openSource, type OpenSourceOptions } from "../sources/resolve.js";
import type { Source } from "../sources/types.js";

export interface InspectTensor {
  name: string;
  dtype: DType;
  shape: number[];
  bytes: number;
  file: string;
  stats?: TensorStats;
}

export interface TensorStats {
  min: number | null;
  max: number | null;
  mean: number | null;
  std: number | null;
  nan: number;
  inf: number;
  f16Overflow: number;
  f16Underflow: number;
  zeros: number;
  count: number;
}

export interface ConfigSummary {
  architecture?: string;
  modelType?: string;
  layers?: number;
  hidden?: number;
  heads?: number;
  kvHeads?: number;
  headDim?: number;
  vocab?: number;
  tiedEmbeddings?: boolean;
  torchDtype?: string;
}

export interface InspectResult {
  source: string;
  revision?: string;
  format: Catalog["format"];
  tensors: InspectTensor[];
  totals: { dtype: DType; tensors: number; bytes: number; params: number }[];
  totalBytes: number;
  totalParams: number;
  config?: ConfigSummary;
}

export interface InspectOptions extends OpenSourceOptions {
  stats?: boolean;
  onProgress?: (e: { bytesDone: number; bytesTotal: number; tensor: string }) => void;
}

function num(c: Record<string, unknown>, k: string): number | undefined {
  return typeof c[k] === "number" ? (c[k] as number) : undefined;
}

export function summarizeConfig(c: Record<string, unknown> | undefined): ConfigSummary | undefined {
  if (!c) return undefined;
  const heads = num(c, "num_attention_heads");
  // diffusers model configs (FluxTransformer2DModel): _class_name, num_layers, attention_head_dim, no hidden_size
  const diffusersHd = num(c, "attention_head_dim");
  const hidden = num(c, "hidden_size") ?? (diffusersHd && heads ? diffusersHd * heads : undefined);
  return {
    architecture: Array.isArray(c.architectures) ? String(c.architectures[0]) : typeof c._class_name === "string" ? c._class_name : undefined,
    modelType: typeof c.model_type === "string" ? c.model_type : undefined,
    layers: num(c, "num_hidden_layers") ?? num(c, "num_layers"),
    hidden,
    heads,
    kvHeads: num(c, "num_key_value_heads") ?? heads,
    headDim: num(c, "head_dim") ?? diffusersHd ?? (hidden && heads ? hidden / heads : undefined),
    vocab: num(c, "vocab_size"),
    tiedEmbeddings: c.tie_word_embeddings === true,
    torchDtype: typeof c.torch_dtype === "string" ? c.torch_dtype : undefined,
  };
}

const STATS_READ = 16 * 1024 * 1024;

/** Streams a tensor's stored bytes through the stats kernel, STATS_READ bytes at a time. */
export async function tensorStats(source: Source, t: Catalog["tensors"] extends Map<string, infer V> ? V : never): Promise<TensorStats | undefined> {
  if (!isCastable(t.dtype)) return undefined;
  const k = getKernels();
  const es = elementSize(t.dtype);
  const acc: Stats = { count: 0, min: Infinity, max: -Infinity, sum: 0, sumSq: 0, nan: 0, inf: 0, f16Overflow: 0, f16Underflow: 0, zeros: 0 };
  for (const p of t.pieces) {
    const step = Math.max(es, STATS_READ - (STATS_READ % es));
    for (let off = 0; off < p.byteLength; off += step) {
      const len = Math.min(step, p.byteLength - off);
      const buf = await source.read(p.file, p.byteOffset + off, len);
      const s = k.stats(buf, t.dtype, len / es);
      acc.count += s.count;
      if (!Number.isNaN(s.min)) acc.min = Math.min(acc.min, s.min);
      if (!Number.isNaN(s.max)) acc.max = Math.max(acc.max, s.max);
      acc.sum += s.sum; acc.sumSq += s.sumSq; acc.nan += s.nan; acc.inf += s.inf;
      acc.f16Overflow += s.f16Overflow; acc.f16Underflow += s.f16Underflow; acc.zeros += s.zeros;
    }
  }
  const finite = acc.count - acc.nan - acc.inf;
  const mean = finite > 0 ? acc.sum / finite : null;
  // population std, like torch.std(unbiased=False)
  const variance = finite > 0 ? Math.max(0, acc.sumSq / finite - (acc.sum / finite) ** 2) : null;
  return {
    min: finite > 0 ? acc.min : null, max: finite > 0 ? acc.max : null, mean, std: variance === null ? null : Math.sqrt(variance),
    nan: acc.nan, inf: acc.inf, f16Overflow: acc.f16Overflow, f16Underflow: acc.f16Underflow, zeros: acc.zeros, count: acc.count,
  };
}

export async function runInspect(spec: string | Source, opts: InspectOptions = {}): Promise<InspectResult> {
  const source = typeof spec === "string" ? await openSource(spec, opts) : spec;
  try {
    const catalog = await buildCatalog(source);
    const tensors: InspectTensor[] = [...catalog.tensors.values()].sort((a, b) => naturalCompare(a.name, b.name)).map((t) => ({
      name: t.name, dtype: t.dtype, shape: t.shape, bytes: numelOf(t.shape) * elementSize(t.dtype),
      file: [...new Set(t.pieces.map((p) => p.file))].join(",") || "-",
    }));
    const totals = new Map<DType, { dtype: DType; tensors: number; bytes: number; params: number }>();
    for (const t of tensors) {
      const e = totals.get(t.dtype) ?? { dtype: t.dtype, tensors: 0, bytes: 0, params: 0 };
      e.tensors++; e.bytes += t.bytes; e.params += numelOf(t.shape);
      totals.set(t.dtype, e);
    }
    if (opts.stats) {
      const bytesTotal = tensors.reduce((s, t) => s + t.bytes, 0);
      let bytesDone = 0;
      for (const t of tensors) {
        t.stats = await tensorStats(source, catalog.tensors.get(t.name)!);
        bytesDone += t.bytes;
        opts.onProgress?.({ bytesDone, bytesTotal, tensor: t.name });
      }
    }
    return {
      source: source.id, revision: source.revision, format: catalog.format, tensors,
      totals: [...totals.values()], totalBytes: tensors.reduce((s, t) => s + t.bytes, 0), totalParams: tensors.reduce((s, t) => s + numelOf(t.shape), 0),
      config: summarizeConfig(catalog.config),
    };
  } finally {
    if (typeof spec === "string") await source.close();
  }
}
