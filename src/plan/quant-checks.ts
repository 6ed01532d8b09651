// Quantized sources whose files are valid but whose contents contradict each other are refused before a byte is
// written: every packed tensor has its scale (and INT4 its weight_shape), scales have no orphan weights and weights
// no orphan scales, and config.json's quantization_config describes exactly the tensors that carry a quantization.
// Shapes and dtypes of each pair are checked where the recipe is built (convert-plan.ts, int4.ts); the stored values
// of weight_shape are checked by checkStoredShapes once the plan exists (they are tensor bytes, not headers).
// The formats' rules are in docs/quantized-sources.md.
import { CkptError } from "../errors.js";
import { DTYPE_BITS, type DType } from "../dtypes.js";
import type { CatalogTensor } from "../catalog-types.js";
import type { Source } from "../sources/types.js";
import { compilePattern, fillPattern, matchPattern, type CompiledPattern } from "../mapping/patterns.js";
import { valueOp, type Mapping, type TensorRule } from "../mapping/schema.js";
import { isIgnored } from "./int4.js";
import type { Recipe, StoredShapeCheck } from "./recipe.js";

interface Rule { rule: TensorRule; hf?: CompiledPattern }
type Tensors = Map<string, CatalogTensor>;

const FP8: readonly DType[] = ["F8_E4M3", "F8_E5M2"];

function quantConfig(config: Record<string, unknown>): Record<string, unknown> | undefined {
  const q = config.quantization_config;
  return q && typeof q === "object" && !Array.isArray(q) ? (q as Record<string, unknown>) : undefined;
}

/** `modules_to_not_convert` of transformers' FP8 / MXFP4 configs: module names, `*` matching one or more characters. */
function notConverted(q: Record<string, unknown> | undefined, name: string): string | undefined {
  const list = Array.isArray(q?.modules_to_not_convert) ? (q!.modules_to_not_convert as unknown[]).filter((x): x is string => typeof x === "string") : [];
  return list.find((m) => {
    const re = new RegExp(`^${m.split("*").map((p) => p.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".+")}(\\.|$)`);
    return re.test(name);
  });
}

const first = <T>(xs: T[]): T | undefined => xs[0];
const more = (xs: unknown[]) => (xs.length > 1 ? ` (and ${xs.length - 1} more)` : "");

/**
 * Refuses a quantized source whose tensors and config contradict each other (see the file comment). `tensors` are the
 * source's tensors under the names the mapping's rules use; `stored` maps such a name back to the stored one.
 */
export function checkQuantizedSources(tensors: Tensors, mapping: Mapping, config: Record<string, unknown>, rules: Rule[], file: string, stored: Map<string, string> = new Map()): void {
  checkFp8(tensors, mapping, config, file);
  checkMxfp4(tensors, config, rules, file);
  checkInt4(tensors, config, rules, file, stored);
}

function checkFp8(tensors: Tensors, mapping: Mapping, config: Record<string, unknown>, file: string): void {
  const q = quantConfig(config);
  const configured = q?.quant_method === "fp8";
  const suffix = mapping.dequant?.scale_suffix;
  const f8 = [...tensors.values()].filter((t) => FP8.includes(t.dtype));
  const scales = suffix ? [...tensors.keys()].filter((n) => n.endsWith(suffix)) : [];
  if (!suffix) {
    // an architecture without block dequantization: its FP8 checkpoints cannot be decoded, only refused
    if (configured && f8.length) throw new CkptError("UNSUPPORTED", `config.json says quant_method fp8, but the ${mapping.architecture} mapping has no FP8 block dequantization; converting would cast the FP8 values without their scales`, { file, tensor: f8[0]!.name, hint: "convert a BF16 release of this model" });
    return;
  }
  for (const s of scales) {
    const w = s.slice(0, -suffix.length);
    if (!tensors.has(w)) throw new CkptError("MISSING_TENSOR", `FP8 block scale without its weight ${w}`, { tensor: s, hint: "the checkpoint lost the weight this scale belongs to" });
  }
  const unscaled = f8.filter((t) => !tensors.has(t.name + suffix)).map((t) => t.name);
  if (unscaled.length) {
    throw new CkptError("MISSING_TENSOR", `FP8 weight without its block scale ${unscaled[0]}${suffix}${more(unscaled)}: its values would be written without the scale, wrong by that factor`, { tensor: unscaled[0], hint: "the checkpoint is incomplete; re-download the shard holding the scale" });
  }
  if (!f8.length) return;
  const w0 = f8[0]!.name;
  if (!configured) {
    throw new CkptError("CONFIG", `the checkpoint holds ${f8.length} FP8 block-quantized weight(s), but config.json's quantization_config ${q ? `has quant_method ${JSON.stringify(q.quant_method)}` : "is absent"}, not fp8`, { file, tensor: w0, hint: "the checkpoint and its config.json disagree" });
  }
  const bs = q!.weight_block_size;
  const block = mapping.dequant!.block;
  if (bs !== undefined && !(Array.isArray(bs) && bs.length === 2 && bs[0] === block && bs[1] === block)) {
    throw new CkptError("CONFIG", `quantization_config.weight_block_size is ${JSON.stringify(bs)}, but the ${mapping.architecture} FP8 scales are per ${block}×${block} block`, { file, tensor: w0 });
  }
  const fmt = q!.fmt;
  const wrongFmt = f8.find((t) => (fmt === "e4m3" && t.dtype !== "F8_E4M3") || (fmt === "e5m2" && t.dtype !== "F8_E5M2"));
  if (wrongFmt) throw new CkptError("DTYPE", `quantization_config.fmt is ${fmt}, but the weight is ${wrongFmt.dtype}`, { file, tensor: wrongFmt.name });
  for (const t of f8) {
    const m = notConverted(q, t.name);
    if (m) throw new CkptError("CONFIG", `quantization_config.modules_to_not_convert lists ${m}, but the weight is stored FP8`, { file, tensor: t.name, hint: "the checkpoint and its config.json disagree" });
  }
}

function checkMxfp4(tensors: Tensors, config: Record<string, unknown>, rules: Rule[], file: string): void {
  const q = quantConfig(config);
  const configured = q?.quant_method === "mxfp4";
  const packed: string[] = [];
  for (const r of rules) {
    const t = valueOp(r.rule, "mxfp4");
    if (!t || !r.hf) continue;
    const scalePat = compilePattern(t.scales);
    for (const name of tensors.keys()) {
      if (matchPattern(r.hf, name)) packed.push(name);
      const vals = matchPattern(scalePat, name);
      if (vals && !tensors.has(fillPattern(r.hf.source, vals))) {
        throw new CkptError("MISSING_TENSOR", `MXFP4 scales without their blocks ${fillPattern(r.hf.source, vals)}`, { tensor: name, hint: "the checkpoint lost the packed values these scales belong to" });
      }
    }
    // the unquantized alternative of the same tensor (one_of): the config says it is quantized unless excluded
    if (!configured || !r.rule.one_of) continue;
    for (const alt of rules) {
      if (alt === r || alt.rule.one_of !== r.rule.one_of || !alt.hf || valueOp(alt.rule, "mxfp4")) continue;
      const plain = [...tensors.keys()].find((n) => matchPattern(alt.hf!, n) && !notConverted(q, n));
      if (plain) throw new CkptError("CONFIG", `quantization_config (mxfp4) quantizes this tensor, but it is stored unquantized (${tensors.get(plain)!.dtype})`, { file, tensor: plain, hint: "add its module to modules_to_not_convert, or fix the config" });
    }
  }
  const p0 = first(packed);
  if (!p0) return;
  if (!configured) throw new CkptError("CONFIG", `the checkpoint holds ${packed.length} MXFP4 packed tensor(s), but config.json's quantization_config ${q ? `has quant_method ${JSON.stringify(q.quant_method)}` : "is absent"}, not mxfp4`, { file, tensor: p0, hint: "the checkpoint and its config.json disagree" });
  for (const n of packed) {
    const m = notConverted(q, n);
    if (m) throw new CkptError("CONFIG", `quantization_config.modules_to_not_convert lists ${m}, but the tensor is stored MXFP4`, { file, tensor: n });
  }
}

function checkInt4(tensors: Tensors, config: Record<string, unknown>, rules: Rule[], file: string, stored: Map<string, string>): void {
  const q = quantConfig(config);
  const configured = q?.quant_method === "compressed-tensors";
  let packed = 0;
  for (const r of rules) {
    const t = valueOp(r.rule, "int4");
    if (!t || !r.hf) continue;
    const scalePat = compilePattern(t.scale), shapePat = compilePattern(t.shape);
    for (const name of tensors.keys()) {
      const vals = matchPattern(r.hf, name);
      if (vals) {
        packed++;
        const shapeName = fillPattern(t.shape, vals);
        const ws = tensors.get(shapeName);
        if (!ws) throw new CkptError("MISSING_TENSOR", `INT4 weight_packed without its weight_shape ${shapeName}`, { tensor: name, hint: "compressed-tensors stores [out, in] beside every packed weight" });
        if (ws.dtype !== "I32" && ws.dtype !== "I64") throw new CkptError("DTYPE", `weight_shape must be I32 or I64, got ${ws.dtype}`, { tensor: shapeName });
        if (ws.shape.length !== 1 || ws.shape[0] !== 2) throw new CkptError("SHAPE", `weight_shape must hold 2 dims, got [${ws.shape}]`, { tensor: shapeName });
        continue;
      }
      const orphan = matchPattern(scalePat, name) ?? matchPattern(shapePat, name);
      if (orphan && !tensors.has(fillPattern(r.hf.source, orphan))) {
        throw new CkptError("MISSING_TENSOR", `INT4 ${name.slice(name.lastIndexOf(".") + 1)} without its weight_packed ${fillPattern(r.hf.source, orphan)}`, { tensor: name, hint: "the checkpoint lost the packed weight this belongs to" });
      }
    }
    // the unquantized module beside it: compressed-tensors quantizes every Linear its config does not ignore
    if (!configured) continue;
    const plainPat = compilePattern(r.hf.source.replace(/\.weight_packed$/, ".weight"));
    for (const name of tensors.keys()) {
      if (!matchPattern(plainPat, name)) continue;
      const module = (stored.get(name) ?? name).replace(/\.weight$/, "");
      if (!isIgnored(config, module)) {
        throw new CkptError("CONFIG", `quantization_config (compressed-tensors) quantizes module ${module}, which is not in its ignore list, but it is stored unquantized (${tensors.get(name)!.dtype})`, { file, tensor: name, hint: "the checkpoint and its config.json disagree" });
      }
    }
  }
  if (packed && !configured) {
    // int4GroupSize refuses this too; said here with the count, before any recipe is built
    throw new CkptError("CONFIG", `the checkpoint holds ${packed} INT4 weight_packed tensor(s), but config.json's quantization_config ${q ? `has quant_method ${JSON.stringify(q.quant_method)}` : "is absent"}, not compressed-tensors`, { file, hint: "the checkpoint and its config.json disagree" });
  }
}

/**
 * Leaves a plan reads as plain values (a `source` recipe, not a decode): model weights are floats, so an integer,
 * bool, sub-byte or E8M0 tensor there is a quantized weight whose scale or format ckpt does not know (bitsandbytes,
 * GPTQ, AWQ, raw MXFP4 …); writing its stored integers as the weight would be garbage.
 */
export function checkValueLeaves(plan: { tensors: { name: string; recipe: Recipe }[] }, tensors: Tensors, file: string): void {
  const visit = (r: Recipe, out: string): void => {
    if (r.op === "source") {
      const t = tensors.get(r.tensor);
      if (t && !VALUE_DTYPES.includes(t.dtype)) {
        throw new CkptError("DTYPE", `stored as ${t.dtype}, which is not a float dtype a model weight can hold: a quantized weight whose scale or format ckpt does not decode (only FP8 block, MXFP4 and compressed-tensors INT4 are)`, { file, tensor: r.tensor, hint: `it would become ${out} holding the stored integers` });
      }
      return;
    }
    if ("input" in r) visit(r.input, out);
    if ("inputs" in r) for (const i of r.inputs) visit(i, out);
  };
  for (const t of plan.tensors) visit(t.recipe, t.name);
}

/** Sub-byte leaves (F4, F6) in any direction: ckpt slices and casts whole elements only, so they cannot be read. */
export function checkWholeByteLeaves(leaves: Record<string, { dtype: DType }>): void {
  for (const [name, l] of Object.entries(leaves)) {
    if (DTYPE_BITS[l.dtype] % 8 !== 0) throw new CkptError("DTYPE", `stored as ${l.dtype} (${DTYPE_BITS[l.dtype]} bits per value): sub-byte tensors cannot be sliced or converted`, { tensor: name, hint: "packed microscaling weights need their own decoder (MXFP4 is read from U8 _blocks + _scales)" });
  }
}

/** Dtypes a weight's values may be stored in (FP8 only with a scale: checkFp8). */
const VALUE_DTYPES: readonly DType[] = ["F64", "F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"];

/**
 * Reads each weight_shape (a few bytes each, never a whole file) and refuses one whose values contradict the packed
 * weight and its scales: a shape wider or narrower than the packed words hold would be decoded as another matrix.
 */
export async function checkStoredShapes(checks: StoredShapeCheck[], source: Source): Promise<void> {
  const CONCURRENCY = 16;
  for (let i = 0; i < checks.length; i += CONCURRENCY) {
    await Promise.all(checks.slice(i, i + CONCURRENCY).map(async (c) => {
      if (c.pieces.length !== 1) return;
      const p = c.pieces[0]!;
      const b = await source.read(p.file, p.byteOffset, p.byteLength);
      const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
      const size = c.dtype === "I64" ? 8 : 4;
      const vals = [...Array(p.byteLength / size).keys()].map((k) => (size === 8 ? Number(dv.getBigInt64(k * 8, true)) : dv.getInt32(k * 4, true)));
      if (vals.length !== c.expect.length || vals.some((v, k) => v !== c.expect[k])) {
        throw new CkptError("VALUE", `weight_shape is [${vals}], but ${c.of} and its scales hold a [${c.expect}] weight${vals[1]! > c.expect[1]! ? ` (${vals[1]! - c.expect[1]!} columns wider than the packed data)` : ""}`, {
          file: p.file, tensor: c.tensor, hint: "the checkpoint's weight_shape and weight_packed disagree",
        });
      }
    }));
  }
}
