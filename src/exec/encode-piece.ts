// Worker side of the encode ops (plan/encode.ts): a piece of a packed tensor computed slab by slab. Each slab's
// values come from its runs (read and converted exactly as a plain output of that dtype would be), are encoded by
// the op's `encodeSlab` (ops/<op>.ts) through the kernels' encoders (native, or kernels/requantize.ts:
// byte-identical), and the part this piece writes is appended to the piece's output. Groups with no exact encoding
// are counted, not rounded: the caller refuses the whole output with the count.
import type { DType } from "../dtypes.js";
import type { Run } from "../plan/runs.js";
import { encodeSlabs, groupOf, referenceNames, type EncodeSlab } from "../plan/encode.js";
import { encodeOp } from "../ops/index.js";
import type { Box } from "../plan/runs.js";
import type { EncodeRecipe, LeafInfo } from "../plan/recipe.js";
import { getKernels, type Kernels } from "../kernels/index.js";

export interface EncodeTask {
  op: EncodeRecipe["op"];
  part: "blocks" | "scales" | "packed" | "scale" | "shape";
  valuesDtype: "BF16" | "F32";
  /** Shape of the encoded values (the decode's output shape). */
  values: number[];
  group: number;
  /** The output tensor, for the first bad group's name. */
  tensor: string;
  slabs: EncodeSlab[];
  /** Reference part dtypes (mxfp4: U8, U8; int4: I32, BF16). */
  referenceDtypes?: [DType, DType];
  /** Count bad / adopted groups on this part (one part per encoded tensor counts, so nothing is counted twice). */
  counts: boolean;
}

export interface RequantizeCount {
  bad: number;
  adopted: number;
  /** The first bad group: `<tensor> group <n>`. */
  first?: string;
}

/** The task of one piece (`box`) of encoded tensor `tensor` (built on the main thread, run by encodePiece). */
export function encodeTask(tensor: string, r: EncodeRecipe, shape: number[], box: Box, leaves: Record<string, LeafInfo>): EncodeTask {
  const ref = referenceNames(r);
  return {
    op: r.op, part: r.part, valuesDtype: r.valuesDtype, values: r.values, group: groupOf(r), tensor,
    slabs: encodeSlabs(r, shape, box, leaves),
    ...(ref ? { referenceDtypes: [leaves[ref[0]!]!.dtype, leaves[ref[1]!]!.dtype] as [DType, DType] } : {}),
    counts: encodeOp(r.op)!.counts(r),
  };
}

type ValuesOf = (runs: Run[], elems: number, dtype: DType) => Buffer;

/**
 * Values of a BF16 / F32 buffer as f32 (exact). F32 values are a view of the (scratch) buffer when it is aligned:
 * they are encoded before the next valuesOf call reuses it.
 */
function toF32(k: Kernels, b: Buffer, dtype: "BF16" | "F32", n: number): Float32Array {
  if (dtype === "F32") return b.byteOffset % 4 === 0 ? new Float32Array(b.buffer, b.byteOffset, n) : new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + 4 * n));
  const out = new Float32Array(n);
  k.cast(b, "BF16", new Uint8Array(out.buffer), "F32", n); // widening: exact
  return out;
}

export function encodePiece(p: { elems: number; outDtype: DType }, e: EncodeTask, valuesOf: ValuesOf, k: Kernels = getKernels()): { bytes: Buffer; result: RequantizeCount } {
  const count: RequantizeCount = { bad: 0, adopted: 0 };
  const op = encodeOp(e.op)!;
  // a part with no values to read (INT4 weight_shape) is a constant of the values' shape
  if (!op.readsValues(e)) return { bytes: Buffer.from(op.constant!(e, p.outDtype, p.elems)), result: count };
  const cols = e.values[e.values.length - 1]!;
  const parts: Uint8Array[] = [];
  for (const s of e.slabs) {
    const n = s.rows * cols;
    let ref: [Uint8Array, Uint8Array] | undefined;
    if (s.reference && e.referenceDtypes) {
      // copies, read first: valuesOf reuses one buffer, and the values' view below must be the last use of it
      const elems = (runs: Run[]) => runs.reduce((a, r) => a + r.rows * r.cols, 0);
      const a = Uint8Array.from(valuesOf(s.reference.a, elems(s.reference.a), e.referenceDtypes[0]));
      ref = [a, Uint8Array.from(valuesOf(s.reference.b, elems(s.reference.b), e.referenceDtypes[1]))];
    }
    const v = toF32(k, valuesOf(s.runs, n, e.valuesDtype), e.valuesDtype, n);
    const enc = op.encodeSlab(k, e, v, s.rows, cols, ref);
    parts.push(enc.bytes);
    if (!enc.count || !e.counts) continue;
    const { badMask, adopted, firstBad, groupsPerRow } = enc.count;
    count.adopted += adopted;
    if (firstBad >= 0) {
      for (const x of badMask) count.bad += x;
      count.first ??= `${e.tensor} group ${s.firstRow * groupsPerRow + firstBad}`;
    }
  }
  return { bytes: Buffer.concat(parts), result: count };
}
