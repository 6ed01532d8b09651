// Small tensor helpers of the LoRA tools: whole-tensor reads (assembling DCP chunks),
// byte-level row gathers (dtype-agnostic, bit-exact), and widening to f32 through the kernels.
import type { CatalogTensor } from "../catalog-types.js";
import { elementSize, isCastable, numelOf, type DType } from "../dtypes.js";
import { CkptError } from "../errors.js";
import { getKernels } from "../kernels/index.js";
import type { Source } from "../sources/types.js";
import { aligned } from "../util/aligned.js";

/**
 * The whole tensor as row-major little-endian bytes. Safetensors tensors are one piece; DCP tensors may be several
 * chunks (boxes), which are copied into place. Holds one tensor in memory.
 */
export async function readTensorBytes(source: Source, t: CatalogTensor): Promise<Uint8Array> {
  const es = elementSize(t.dtype);
  const total = numelOf(t.shape) * es;
  const full = t.pieces.length === 1 && t.pieces[0]!.sizes.every((s, i) => s === t.shape[i]);
  if (full) {
    const p = t.pieces[0]!;
    if (p.byteLength !== total) throw new CkptError("INTERNAL", `tensor piece is ${p.byteLength} bytes, expected ${total}`, { tensor: t.name });
    return aligned(await source.read(p.file, p.byteOffset, p.byteLength));
  }
  const out = new Uint8Array(new ArrayBuffer(total));
  let covered = 0;
  const rank = t.shape.length;
  const strides = new Array<number>(rank).fill(1);
  for (let d = rank - 2; d >= 0; d--) strides[d] = strides[d + 1]! * t.shape[d + 1]!;
  for (const p of t.pieces) {
    const data = await source.read(p.file, p.byteOffset, p.byteLength);
    covered += numelOf(p.sizes);
    if (rank === 0) { out.set(data.subarray(0, es), 0); continue; }
    const run = p.sizes[rank - 1]! * es;
    const outer = numelOf(p.sizes.slice(0, rank - 1));
    const idx = new Array<number>(Math.max(0, rank - 1)).fill(0);
    for (let r = 0; r < outer; r++) {
      let dst = p.offsets[rank - 1]!;
      for (let d = 0; d < rank - 1; d++) dst += (p.offsets[d]! + idx[d]!) * strides[d]!;
      out.set(data.subarray(r * run, (r + 1) * run), dst * es);
      for (let d = rank - 2; d >= 0; d--) {
        if (++idx[d]! < p.sizes[d]!) break;
        idx[d] = 0;
      }
    }
  }
  if (covered !== numelOf(t.shape)) throw new CkptError("DCP", `chunks cover ${covered} of ${numelOf(t.shape)} elements`, { tensor: t.name });
  return out;
}

/** dst row i = src row index[i] (whole rows of `rowBytes` bytes): a permutation or selection, no arithmetic. */
export function gatherRowBytes(src: Uint8Array, rowBytes: number, index: Int32Array): Uint8Array {
  const rows = src.byteLength / rowBytes;
  if (!Number.isInteger(rows) || index.some((i) => i < 0 || i >= rows)) throw new CkptError("INTERNAL", `row gather: ${src.byteLength} bytes in rows of ${rowBytes}, index out of range`);
  const out = new Uint8Array(new ArrayBuffer(rowBytes * index.length));
  for (let i = 0; i < index.length; i++) out.set(src.subarray(index[i]! * rowBytes, (index[i]! + 1) * rowBytes), i * rowBytes);
  return out;
}

/** Float bytes → Float32Array (exact widening for f32/bf16/f16/fp8; f64 is rounded). */
export function toF32(bytes: Uint8Array, dtype: DType, n: number): Float32Array {
  const b = aligned(bytes);
  if (dtype === "F32") return new Float32Array(b.buffer, b.byteOffset, n).slice();
  if (dtype === "F64") return Float32Array.from(new Float64Array(b.buffer, b.byteOffset, n));
  if (!isCastable(dtype)) throw new CkptError("DTYPE", `cannot do arithmetic on ${dtype} tensors`);
  const out = new Float32Array(n);
  getKernels().cast(b, dtype, new Uint8Array(out.buffer), "F32", n);
  return out;
}
