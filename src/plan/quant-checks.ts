// Quantized sources whose files are valid but whose contents contradict each other are refused before a byte is
// written: every packed tensor has its scale (and INT4 its weight_shape), scales have no orphan weights and weights
// no orphan scales, and config.json's quantization_config describes exactly the tensors that carry a quantization.
// Each op checks its own format (`checkSources` in ops/<op>.ts); shapes and dtypes of each pair are checked where its
// recipe is planned (`planRule` / `planStored`); the stored values of weight_shape are checked by checkStoredShapes
// once the plan exists (they are tensor bytes, not headers). The formats' rules are in docs/quantized-sources.md.
import { CkptError } from "../errors.js";
import { DTYPE_BITS, type DType } from "../dtypes.js";
import type { CatalogTensor } from "../catalog-types.js";
import type { Source } from "../sources/types.js";
import type { CompiledPattern } from "../mapping/patterns.js";
import type { Mapping, TensorRule } from "../mapping/schema.js";
import type { Recipe, StoredShapeCheck } from "./recipe.js";
import { QUANT_OPS } from "../ops/index.js";

interface Rule { rule: TensorRule; hf?: CompiledPattern }
type Tensors = Map<string, CatalogTensor>;

/**
 * Refuses a quantized source whose tensors and config contradict each other (see the file comment). `tensors` are the
 * source's tensors under the names the mapping's rules use; `stored` maps such a name back to the stored one.
 */
export function checkQuantizedSources(tensors: Tensors, mapping: Mapping, config: Record<string, unknown>, rules: Rule[], file: string, stored: Map<string, string> = new Map()): void {
  for (const op of QUANT_OPS) op.checkSources({ tensors, mapping, config, rules, file, stored });
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

/** Dtypes a weight's values may be stored in (FP8 only with a scale: ops/fp8-block.ts). */
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
