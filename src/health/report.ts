// The `inspect --health` report: its data (what --json prints) and its readable form.
import type { DType } from "../dtypes.js";
import { table } from "../util/format.js";

export type Severity = "error" | "warning" | "info";
export type HealthCode =
  | "NAN" | "INF" | "F16_OVERFLOW" | "F16_UNDERFLOW" | "LORA_ZERO_B" | "LORA_ZERO_A" | "LORA_RATIO"
  | "NORM_SPIKE" | "NORM_GROWTH" | "MIXED_DTYPES" | "NOT_CHECKED";

export interface HealthFinding {
  severity: Severity;
  code: HealthCode;
  message: string;
  tensor?: string;
  /** The number behind the finding (count, factor, ratio). */
  value?: number;
}

export interface HealthTensor {
  name: string;
  dtype: DType;
  shape: number[];
  checked: boolean;
  count: number;
  nan: number;
  inf: number;
  zeros: number;
  /** Finite values that become ±inf in f16 (|x| ≥ 65520). */
  f16Overflow: number;
  /** Nonzero finite values that become ±0 in f16 (|x| ≤ 2^-25). */
  f16Underflow: number;
  /** Frobenius norm and RMS of the finite values. */
  norm: number | null;
  rms: number | null;
  maxAbs: number | null;
}

export interface HealthLoraPair {
  module: string;
  a: string;
  b: string;
  magnitude?: string;
  normA: number | null;
  normB: number | null;
  /** ‖A‖_F / ‖B‖_F (null when B is zero). */
  ratio: number | null;
  zeroA: boolean;
  zeroB: boolean;
}

export interface HealthLayerKind {
  /** Tensor name with the layer index replaced by {L}. */
  kind: string;
  values: { layer: number; tensor: string; rms: number }[];
  median: number;
}

export interface HealthReport {
  source: string;
  format: "safetensors" | "dcp";
  ok: boolean;
  f16: boolean;
  growthFactor: number;
  tensors: HealthTensor[];
  dtypes: { dtype: DType; tensors: number; params: number }[];
  lora: HealthLoraPair[];
  layers: HealthLayerKind[];
  findings: HealthFinding[];
  counts: Record<Severity, number>;
}


const MAX_PER_CODE = 12;

function num(x: number | null | undefined): string {
  if (x === null || x === undefined) return "-";
  if (x === 0) return "0";
  return Math.abs(x) >= 1e4 || Math.abs(x) < 1e-3 ? x.toExponential(3) : x.toPrecision(4);
}

const LABEL: Record<Severity, string> = { error: "ERROR", warning: "WARN ", info: "info " };

export function formatHealth(r: HealthReport): string {
  const lines: string[] = [];
  const params = r.tensors.reduce((s, t) => s + t.count, 0);
  lines.push(`health: ${r.source}  (${r.format}, ${r.tensors.length} tensors, ${params.toLocaleString("en-US")} values${r.f16 ? ", fp16 target considered" : ""})`);
  lines.push(`dtypes: ${r.dtypes.map((d) => `${d.dtype} × ${d.tensors} (${d.params.toLocaleString("en-US")} values)`).join(", ")}`);
  const bad = r.tensors.filter((t) => t.nan || t.inf);
  lines.push(`values: ${bad.length === 0 ? "no NaN/Inf" : `${bad.length} tensor(s) with NaN/Inf`}; fp16 overflow in ${r.tensors.filter((t) => t.dtype !== "F16" && t.f16Overflow > 0).length} tensor(s), underflow in ${r.tensors.filter((t) => t.dtype !== "F16" && t.f16Underflow > 0).length}`);
  if (r.lora.length > 0) {
    lines.push("", `LoRA pairs: ${r.lora.length}`);
    const status = (module: string): string => {
      const codes = [...new Set(r.findings.filter((f) => f.severity !== "info" && f.tensor && (f.tensor === module || f.tensor.startsWith(module + "."))).map((f) => f.code))];
      return codes.length === 0 ? "ok" : codes.map((c) => ({ LORA_ZERO_A: "A = 0 (dead)", LORA_ZERO_B: "B = 0 (untrained)", NORM_SPIKE: "exploding", LORA_RATIO: "A/B outlier" } as Record<string, string>)[c] ?? c).join(", ");
    };
    lines.push(table(["module", "‖A‖", "‖B‖", "‖A‖/‖B‖", "status"], r.lora.map((p) => [p.module, num(p.normA), num(p.normB), num(p.ratio), status(p.module)]), [1, 2, 3]));
  }
  lines.push("");
  const problems = r.findings.filter((f) => f.severity !== "info");
  const notes = r.findings.filter((f) => f.severity === "info");
  const emit = (fs: HealthFinding[]) => {
    const byCode = new Map<string, HealthFinding[]>();
    for (const f of fs) byCode.set(f.code, [...(byCode.get(f.code) ?? []), f]);
    for (const [code, list] of byCode) {
      for (const f of list.slice(0, MAX_PER_CODE)) lines.push(`${LABEL[f.severity]} ${code}: ${f.tensor ? f.tensor + ": " : ""}${f.message}`);
      if (list.length > MAX_PER_CODE) lines.push(`      … and ${list.length - MAX_PER_CODE} more ${code}`);
    }
  };
  emit(problems);
  emit(notes);
  if (problems.length === 0) lines.push(`OK: no problems found${notes.length ? ` (${notes.length} note(s))` : ""}`);
  else lines.push(`FAILED: ${r.counts.error} error(s), ${r.counts.warning} warning(s)`);
  return lines.join("\n");
}
