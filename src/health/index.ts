// `ckpt inspect --health`: one streaming pass over every tensor (the stats kernel), then checks for the failures
// users hit: NaN/Inf, values an fp16 target cannot hold, LoRA pairs that never trained (B = 0) or are dead (A = 0),
// A/B norm ratios, norms that explode or grow across layers, and mixed parameter dtypes (FSDP2 flat parameters need
// one dtype). Findings have a severity; any error or warning makes the report fail (CLI: exit code 1, HEALTH).
import { naturalCompare } from "../util/natural-compare.js";
import { buildCatalog } from "../catalog.js";
import type { CatalogTensor } from "../catalog-types.js";
import { isCastable, isFloatDType, numelOf, type DType } from "../dtypes.js";
import { getKernels } from "../kernels/index.js";
import { normalizeTtName } from "../plan/source-names.js";
import { openSource, type OpenSourceOptions } from "../sources/resolve.js";
import type { Source } from "../sources/types.js";
import { aligned } from "../util/aligned.js";
import type { HealthCode, HealthFinding, HealthLayerKind, HealthLoraPair, HealthReport, HealthTensor, Severity } from "./report.js";

export type { HealthCode, HealthFinding, HealthLayerKind, HealthLoraPair, HealthReport, HealthTensor, Severity } from "./report.js";

export interface HealthOptions extends OpenSourceOptions {
  /** Consider an fp16 target: values beyond the fp16 range are errors, heavy underflow a warning. */
  f16?: boolean;
  /** A tensor whose RMS exceeds this multiple of its kind's median over the other layers is exploding (default 10). */
  growthFactor?: number;
  onProgress?: (e: { bytesDone: number; bytesTotal: number; tensor: string }) => void;
}

const READ = 16 * 1024 * 1024;

/** Buffers and quantisation scales: not FSDP parameters, so their dtype may differ. */
export function isNonParameter(name: string): boolean {
  if (!normalizeTtName(name).name) return true;
  return /(^|\.)(inv_freq|freqs_cis|expert_bias(_E)?|e_score_correction_bias)$/.test(name) || /(_scale_inv|\.weight_scale|\.input_scale)$/.test(name);
}

interface Acc { count: number; nan: number; inf: number; zeros: number; ovf: number; unf: number; sumSq: number; maxAbs: number; finite: number }

async function scanTensor(source: Source, t: CatalogTensor): Promise<HealthTensor> {
  const base = { name: t.name, dtype: t.dtype, shape: t.shape };
  const n = numelOf(t.shape);
  const f64 = t.dtype === "F64";
  if (!isCastable(t.dtype) && !f64) {
    return { ...base, checked: false, count: n, nan: 0, inf: 0, zeros: 0, f16Overflow: 0, f16Underflow: 0, norm: null, rms: null, maxAbs: null };
  }
  const es = f64 ? 8 : t.dtype === "F32" ? 4 : t.dtype === "BF16" || t.dtype === "F16" ? 2 : 1;
  const acc: Acc = { count: 0, nan: 0, inf: 0, zeros: 0, ovf: 0, unf: 0, sumSq: 0, maxAbs: 0, finite: 0 };
  const k = getKernels();
  for (const p of t.pieces) {
    const step = READ - (READ % es);
    for (let off = 0; off < p.byteLength; off += step) {
      const len = Math.min(step, p.byteLength - off);
      const buf = aligned(await source.read(p.file, p.byteOffset + off, len));
      const cnt = len / es;
      if (f64) {
        const v = new Float64Array(buf.buffer, buf.byteOffset, cnt);
        for (const x of v) {
          acc.count++;
          if (Number.isNaN(x)) { acc.nan++; continue; }
          if (!Number.isFinite(x)) { acc.inf++; continue; }
          acc.finite++;
          const a = Math.abs(x);
          if (a === 0) acc.zeros++;
          else if (a >= 65520) acc.ovf++;
          else if (a <= 2 ** -25) acc.unf++;
          acc.sumSq += x * x;
          if (a > acc.maxAbs) acc.maxAbs = a;
        }
        continue;
      }
      const s = k.stats(buf, t.dtype as "F32", cnt);
      acc.count += s.count; acc.nan += s.nan; acc.inf += s.inf; acc.zeros += s.zeros;
      acc.ovf += s.f16Overflow; acc.unf += s.f16Underflow; acc.sumSq += s.sumSq;
      acc.finite += s.count - s.nan - s.inf;
      if (!Number.isNaN(s.min)) acc.maxAbs = Math.max(acc.maxAbs, Math.abs(s.min), Math.abs(s.max));
    }
  }
  const fin = acc.finite > 0;
  return {
    ...base, checked: true, count: acc.count, nan: acc.nan, inf: acc.inf, zeros: acc.zeros, f16Overflow: acc.ovf, f16Underflow: acc.unf,
    norm: fin ? Math.sqrt(acc.sumSq) : null, rms: fin ? Math.sqrt(acc.sumSq / acc.finite) : null, maxAbs: fin ? acc.maxAbs : null,
  };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** What value i is compared with: the median of all values (robust for ≥ 3), or the other one when there are 2. */
function reference(xs: number[], i: number): number {
  if (xs.length < 2) return NaN;
  return xs.length === 2 ? xs[1 - i]! : median(xs);
}

/** `model.layers.3.self_attn.q_proj.weight` → kind `model.layers.{L}.self_attn.q_proj.weight`, layer 3 (first number). */
export function layerKind(name: string): { kind: string; layer: number } | undefined {
  const m = /(^|\.)(\d+)\./.exec(name);
  if (!m) return undefined;
  const start = m.index + m[1]!.length;
  return { kind: name.slice(0, start) + "{L}" + name.slice(start + m[2]!.length), layer: Number(m[2]) };
}

/** LoRA tensor name → module and part, for PEFT (lora_A/lora_B/lora_magnitude_vector) and TorchTitan (lora_a/lora_b/magnitude) names. */
function loraPart(name: string): { module: string; part: "A" | "B" | "M" } | undefined {
  let m = /^(.+)\.lora_([ABab])(?:\.default)?\.weight$/.exec(name);
  if (m) return { module: m[1]!, part: m[2]!.toUpperCase() as "A" | "B" };
  m = /^(.+)\.(?:lora_magnitude_vector(?:\.default)?(?:\.weight)?|magnitude)$/.exec(name);
  if (m) return { module: m[1]!, part: "M" };
  return undefined;
}

const fmt = (x: number): string => (x === 0 ? "0" : Math.abs(x) >= 1e4 || Math.abs(x) < 1e-3 ? x.toExponential(3) : x.toPrecision(4));

export function analyzeHealth(source: string, format: "safetensors" | "dcp", tensors: HealthTensor[], opts: { f16?: boolean; growthFactor?: number } = {}): HealthReport {
  const factor = opts.growthFactor ?? 10;
  const findings: HealthFinding[] = [];
  const add = (severity: Severity, code: HealthCode, message: string, tensor?: string, value?: number) => findings.push({ severity, code, message, tensor, value });

  // 1. per-tensor values
  const overflowInfo: string[] = [];
  for (const t of tensors) {
    if (!t.checked) {
      if (isFloatDType(t.dtype)) add("info", "NOT_CHECKED", `${t.dtype} values are not checked`, t.name);
      continue;
    }
    if (t.nan > 0) add("error", "NAN", `${t.nan} NaN value(s) of ${t.count}`, t.name, t.nan);
    if (t.inf > 0) add("error", "INF", `${t.inf} ±Inf value(s) of ${t.count}`, t.name, t.inf);
    if (t.dtype !== "F16" && t.f16Overflow > 0) {
      if (opts.f16) add("error", "F16_OVERFLOW", `${t.f16Overflow} value(s) beyond the fp16 range (max |x| ${fmt(t.maxAbs ?? 0)} ≥ 65520) would become ±inf in f16`, t.name, t.f16Overflow);
      else overflowInfo.push(t.name);
    }
    if (opts.f16 && t.dtype !== "F16" && t.f16Underflow > 0) {
      const nonzero = t.count - t.nan - t.inf - t.zeros;
      const frac = t.f16Underflow / Math.max(1, nonzero);
      add(frac > 0.01 ? "warning" : "info", "F16_UNDERFLOW", `${t.f16Underflow} nonzero value(s) (${(frac * 100).toFixed(frac < 0.001 ? 4 : 2)}%) would underflow to 0 in f16`, t.name, t.f16Underflow);
    }
  }
  if (overflowInfo.length > 0) {
    add("info", "F16_OVERFLOW", `${overflowInfo.length} tensor(s) hold values beyond the fp16 range (e.g. ${overflowInfo[0]}); this matters only for an fp16 target (--f16)`, undefined, overflowInfo.length);
  }

  // 2. LoRA pairs
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const modules = new Map<string, Partial<Record<"A" | "B" | "M", string>>>();
  for (const t of tensors) {
    const p = loraPart(t.name);
    if (!p) continue;
    const e = modules.get(p.module) ?? {};
    e[p.part] = t.name;
    modules.set(p.module, e);
  }
  const lora: HealthLoraPair[] = [];
  for (const [module, parts] of [...modules.entries()].sort((x, y) => naturalCompare(x[0], y[0]))) {
    if (!parts.A || !parts.B) continue;
    const a = byName.get(parts.A)!, b = byName.get(parts.B)!;
    const zeroA = a.checked && a.zeros === a.count;
    const zeroB = b.checked && b.zeros === b.count;
    const pair: HealthLoraPair = {
      module, a: a.name, b: b.name, magnitude: parts.M, normA: a.norm, normB: b.norm,
      ratio: a.norm !== null && b.norm ? a.norm / b.norm : null, zeroA, zeroB,
    };
    lora.push(pair);
    if (zeroA) add("error", "LORA_ZERO_A", "lora A is all zero: the adapter is dead (its B never gets a gradient)", a.name);
    if (zeroB) add("warning", "LORA_ZERO_B", "lora B is all zero: this adapter is untrained (a no-op)", b.name);
  }
  // ratio outliers among trained pairs of the same kind (an exploding A raises ‖A‖/‖B‖)
  const ratioKinds = new Map<string, { pair: HealthLoraPair; r: number }[]>();
  for (const p of lora) {
    const k = layerKind(p.module);
    if (!k || p.zeroA || p.zeroB || p.ratio === null || !Number.isFinite(p.ratio)) continue;
    const list = ratioKinds.get(k.kind) ?? [];
    list.push({ pair: p, r: p.ratio });
    ratioKinds.set(k.kind, list);
  }
  for (const list of ratioKinds.values()) {
    for (const x of list) {
      const med = reference(list.map((y) => y.r), list.indexOf(x));
      if (med > 0 && x.r > factor * med) {
        add("warning", "LORA_RATIO", `‖A‖/‖B‖ = ${fmt(x.r)} is ${fmt(x.r / med)}× the typical value of the same adapter across layers (${fmt(med)})`, x.pair.module, x.r / med);
      }
    }
  }

  // 3. norms across layers
  const kinds = new Map<string, HealthLayerKind["values"]>();
  for (const t of tensors) {
    if (t.rms === null || !t.checked) continue;
    const lp = loraPart(t.name);
    if (t.shape.length < 2 && lp?.part !== "M") continue; // 1-D norm weights legitimately vary across depth
    const k = layerKind(t.name);
    if (!k) continue;
    const list = kinds.get(k.kind) ?? [];
    list.push({ layer: k.layer, tensor: t.name, rms: t.rms });
    kinds.set(k.kind, list);
  }
  const layers: HealthLayerKind[] = [];
  for (const [kind, values] of [...kinds.entries()].sort((x, y) => naturalCompare(x[0], y[0]))) {
    if (values.length < 2) continue;
    values.sort((x, y) => x.layer - y.layer);
    layers.push({ kind, values, median: median(values.map((v) => v.rms)) });
    for (const [i, v] of values.entries()) {
      const med = reference(values.map((w) => w.rms), i);
      if (med > 0 && v.rms > factor * med) {
        add("error", "NORM_SPIKE", `RMS ${fmt(v.rms)} is ${fmt(v.rms / med)}× the typical value across layers (${fmt(med)}): exploding weights`, v.tensor, v.rms / med);
      }
    }
    if (values.length >= 4) {
      const third = Math.max(1, Math.floor(values.length / 3));
      // every late layer above every early one: a trend, not one spike
      const first = Math.max(...values.slice(0, third).map((v) => v.rms));
      const last = Math.min(...values.slice(-third).map((v) => v.rms));
      if (first > 0 && last > factor * first) {
        add("warning", "NORM_GROWTH", `RMS grows across layers: the last ${third} layer(s) are all ≥ ${fmt(last / first)}× the first ${third} (${fmt(first)} → ${fmt(last)})`, kind, last / first);
      }
    }
  }

  // 4. parameter dtypes
  const dtypes = new Map<DType, { dtype: DType; tensors: number; params: number }>();
  for (const t of tensors) {
    const e = dtypes.get(t.dtype) ?? { dtype: t.dtype, tensors: 0, params: 0 };
    e.tensors++; e.params += numelOf(t.shape);
    dtypes.set(t.dtype, e);
  }
  const paramDtypes = new Map<DType, string[]>();
  for (const t of tensors) {
    // LoRA adapters are their own (trainable) parameters: f32 adapters beside a bf16 base are the usual layout
    if (!isFloatDType(t.dtype) || isNonParameter(t.name) || loraPart(t.name)) continue;
    const l = paramDtypes.get(t.dtype) ?? [];
    l.push(t.name);
    paramDtypes.set(t.dtype, l);
  }
  if (paramDtypes.size > 1) {
    const parts = [...paramDtypes.entries()].sort((x, y) => y[1].length - x[1].length);
    const minority = parts.slice(1).map(([d, names]) => `${d}: ${names.slice(0, 3).join(", ")}${names.length > 3 ? ", …" : ""}`).join("; ");
    add("error", "MIXED_DTYPES", `parameters mix ${parts.map(([d, n]) => `${n.length} ${d}`).join(" / ")}; FSDP2 flat parameters need one dtype (${minority}); convert with --dtype`, undefined, paramDtypes.size);
  }

  const counts: Record<Severity, number> = { error: 0, warning: 0, info: 0 };
  for (const f of findings) counts[f.severity]++;
  const rank: Record<Severity, number> = { error: 0, warning: 1, info: 2 };
  findings.sort((x, y) => rank[x.severity] - rank[y.severity] || naturalCompare(x.tensor ?? "", y.tensor ?? ""));
  return {
    source, format, ok: counts.error + counts.warning === 0, f16: !!opts.f16, growthFactor: factor,
    tensors, dtypes: [...dtypes.values()], lora, layers, findings, counts,
  };
}

export async function runHealth(spec: string | Source, opts: HealthOptions = {}): Promise<HealthReport> {
  const source = typeof spec === "string" ? await openSource(spec, opts) : spec;
  try {
    const catalog = await buildCatalog(source);
    const list = [...catalog.tensors.values()].sort((a, b) => naturalCompare(a.name, b.name));
    const bytesTotal = list.reduce((s, t) => s + t.pieces.reduce((x, p) => x + p.byteLength, 0), 0);
    let bytesDone = 0;
    const tensors: HealthTensor[] = [];
    for (const t of list) {
      tensors.push(await scanTensor(source, t));
      bytesDone += t.pieces.reduce((x, p) => x + p.byteLength, 0);
      opts.onProgress?.({ bytesDone, bytesTotal, tensor: t.name });
    }
    return analyzeHealth(source.id, catalog.format, tensors, opts);
  } finally {
    if (typeof spec === "string") await source.close();
  }
}

export { formatHealth } from "./report.js";
