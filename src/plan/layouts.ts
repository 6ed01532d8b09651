// The HF layouts a mapping knows for one tensor name, and the choice between them by the stored shape. Rules that
// share an `hf` name but not a `shape` are alternative layouts of that tensor (Qwen3.5 MoE's fused experts: the
// published [E, 2F, D] gate_up_proj and TorchTitan's own [E, D, 2F] export); a shape no layout fits is refused with
// every layout, its expected shape and the config.json fields the shape is computed from.
import { CkptError } from "../errors.js";
import { evalDimExpr } from "../mapping/load.js";
import type { TensorRule } from "../mapping/schema.js";

export interface ShapeCtx {
  dims: Record<string, number>;
  /** dims name → the config.json field (or `a / b`) it was read from. */
  fields: Record<string, string>;
  file: string;
}

/** The rule's HF shape under these dims, or undefined when a dim is not defined by the config. */
function expectedShape(rule: TensorRule, dims: Record<string, number>): number[] | undefined {
  if (!rule.shape) return undefined;
  const v = rule.shape.map((e) => evalDimExpr(e, dims));
  return v.some((x) => x === undefined) ? undefined : (v as number[]);
}

const layoutKey = (rule: TensorRule) => JSON.stringify(rule.shape ?? null);

/** `[experts, 2 * moe_ffn, hidden] = [8, 48, 64]` with where each name comes from (`experts = num_experts`). */
function describeLayout(rule: TensorRule, ctx: ShapeCtx): string {
  const want = expectedShape(rule, ctx.dims);
  const names = [...new Set((rule.shape ?? []).flatMap((e) => e.split(/[*+]/).map((x) => x.trim())).filter((x) => !/^\d+$/.test(x)))];
  const from = names.map((n) => `${n} = ${ctx.fields[n] ?? "?"}${ctx.dims[n] !== undefined ? ` = ${ctx.dims[n]}` : ""}`).join(", ");
  return `${rule.written_by ? `${rule.written_by}: ` : ""}[${(rule.shape ?? []).join(", ")}] = [${want ?? "?"}] (${from})`;
}

function shapeError(name: string, shape: readonly number[], layouts: TensorRule[], ctx: ShapeCtx): CkptError {
  const list = layouts.map((r) => describeLayout(r, ctx));
  const known = list.length === 1 ? `the layout ckpt knows for it is ${list[0]}` : `the layouts ckpt knows for it are ${list.map((x, i) => `(${i + 1}) ${x}`).join("; ")}`;
  return new CkptError("SHAPE", `shape [${shape}] fits no known layout: ${known}`, {
    tensor: name, file: ctx.file, hint: "is config.json this checkpoint's own? If it is, the tensor is in a layout ckpt does not know",
  });
}

/** Refuses a tensor whose shape is not the rule's expected shape; a dim the config does not define checks nothing. */
export function checkShape(rule: TensorRule, name: string, shape: readonly number[], ctx: ShapeCtx): void {
  const want = expectedShape(rule, ctx.dims);
  if (!want) return;
  if (want.length !== shape.length || want.some((v, i) => v !== shape[i])) throw shapeError(name, shape, [rule], ctx);
}

/**
 * Of the rules naming this HF tensor (`candidates`, all matching its name), those of the layout its shape fits.
 * One layout: all of them (their shape is checked where they are used). Several: the first layout whose shape is
 * the stored one, so where two coincide (D = 2F) the one listed first — the published layout — is read, and
 * `onAmbiguous` is told which layouts the shape cannot tell apart.
 */
export function rulesForShape<R extends { rule: TensorRule }>(candidates: R[], name: string, shape: readonly number[], ctx: ShapeCtx, onAmbiguous?: (layouts: string[]) => void): R[] {
  const keys = [...new Set(candidates.map((c) => layoutKey(c.rule)))];
  if (keys.length <= 1) return candidates;
  const first = (k: string) => candidates.find((c) => layoutKey(c.rule) === k)!.rule;
  const fits = keys.filter((k) => {
    const want = expectedShape(first(k), ctx.dims);
    return want !== undefined && want.length === shape.length && want.every((v, i) => v === shape[i]);
  });
  if (fits.length === 0) throw shapeError(name, shape, keys.map(first), ctx);
  if (fits.length > 1) onAmbiguous?.(fits.map((k) => first(k).written_by ?? `[${first(k).shape!.join(", ")}]`));
  return candidates.filter((c) => layoutKey(c.rule) === fits[0]);
}
