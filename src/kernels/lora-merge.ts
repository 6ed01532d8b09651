// The LoRA / DoRA merge arithmetic (numerics.md §9), f32 in the order of PEFT's merge on PyTorch's CPU, and the
// piece form the executor runs for a `lora_merge` output: a slab of the base weight's stored rows merged with the
// adapter rows (or columns, for a transposed base) it needs. Rows merge independently, except DoRA's row norm over a
// transposed (fan_in_fan_out) base, which needs every stored row and is refused before planning.
import { getKernels } from "./index.js";

/** Lanes of PyTorch's CPU f32 `linalg.norm(x, dim=-1)` fast path (`Vectorized<float>` accumulators). */
const NORM_LANES = 8;

/**
 * ‖v[off … off+n)‖₂ in PyTorch's CPU order for a contiguous f32 row: eight lane accumulators over whole blocks of
 * eight (lane l += x² for x at l mod 8, product and sum each rounded to f32), the lanes summed in order, then the
 * tail, then an f32 sqrt. Measured bit-identical to `torch.linalg.norm` on PyTorch 2.6 and 2.14 (test/interop/lora).
 */
function rowNormF32(v: Float32Array, off: number, n: number, lanes: Float32Array): number {
  const f = Math.fround;
  lanes.fill(0);
  const full = n - (n % NORM_LANES);
  for (let d = 0; d < full; d += NORM_LANES) {
    for (let l = 0; l < NORM_LANES; l++) {
      const x = v[off + d + l]!;
      lanes[l] = lanes[l]! + f(x * x);
    }
  }
  let acc = lanes[0]!;
  for (let l = 1; l < NORM_LANES; l++) acc = f(acc + lanes[l]!);
  for (let d = full; d < n; d++) {
    const x = v[off + d]!;
    acc = f(acc + f(x * x));
  }
  return f(Math.sqrt(acc));
}

/**
 * The merged weight, in W's storage orientation. W: [out, in] (or [in, out] when `transposed`), A: [r, in],
 * B: [out, r], m: [out]; all f32 (bf16/f16/fp8 adapters widen exactly).
 *
 * The arithmetic is f32 in the order PEFT's merge runs on PyTorch's CPU, so merged weights equal what users get from
 * `merge_and_unload()`: (B @ A)[i, j] summed over k = 0 … r−1 in order with each product and sum rounded to f32 (no
 * FMA, like the reference BLAS sgemm), × f32(s), + W; DoRA: n_i by `rowNormF32`, f32(m_i / n_i) × V[i, :]. Every f64
 * operation on f32 operands followed by `Math.fround` is the correctly rounded f32 operation (53 ≥ 2·24 + 2).
 * Other BLAS libraries or GPUs may order the r-term sum differently: differences of about 1 ulp (numerics.md §9).
 * Storage orientation does not change the order (PEFT's fan_in_fan_out norm runs on a strided view; within 1–2 ulp).
 *
 * Runs the native kernel (`Kernels.loraMerge`, bit-identical, test/lora.test.ts) when getKernels() has it; the
 * TypeScript below is the reference and the fallback (CKPT_NATIVE=0, addon not built).
 */
export function mergeWeight(W: Float32Array, out: number, inn: number, A: Float32Array, B: Float32Array, r: number, s: number, m?: Float32Array, transposed = false): Float32Array {
  const res = new Float32Array(out * inn);
  const kernels = getKernels();
  if (kernels.loraMerge) {
    kernels.loraMerge(W, out, inn, A, B, r, s, m, transposed, res);
    return res;
  }
  const f = Math.fround;
  const sf = f(s);
  // A transposed to [in, r]: each (B @ A)[i, j] is a contiguous run of r products
  const At = new Float32Array(inn * r);
  for (let k = 0; k < r; k++) for (let j = 0; j < inn; j++) At[j * r + k] = A[k * inn + j]!;
  const v = new Float32Array(inn);
  const b = new Float32Array(r);
  const lanes = new Float32Array(NORM_LANES);
  for (let i = 0; i < out; i++) {
    for (let k = 0; k < r; k++) b[k] = B[i * r + k]!;
    for (let j = 0; j < inn; j++) {
      const o = j * r;
      let acc = 0;
      for (let k = 0; k < r; k++) acc = f(acc + f(b[k]! * At[o + k]!));
      v[j] = (transposed ? W[j * out + i]! : W[i * inn + j]!) + f(acc * sf);
    }
    if (m) {
      const factor = f(m[i]! / rowNormF32(v, 0, inn, lanes));
      for (let j = 0; j < inn; j++) v[j] = factor * v[j]!;
    }
    if (transposed) for (let j = 0; j < inn; j++) res[j * out + i] = v[j]!;
    else res.set(v, i * inn);
  }
  return res;
}

/**
 * What a `lora_merge` piece needs of its adapter: A [r, inn] (for a transposed base: the columns of its stored rows),
 * B [out, r] (the piece's rows unless transposed), m [out] (the piece's rows), the scale. `rows` stored rows.
 */
export interface LoraPieceUpdate {
  a: Float32Array;
  b: Float32Array;
  m?: Float32Array;
  r: number;
  scale: number;
  transposed: boolean;
  /** Columns of the stored weight (inn, or out when transposed). */
  cols: number;
}

/** A slab of stored rows of the base weight (f32), merged. */
export function mergePiece(W: Float32Array, rows: number, u: LoraPieceUpdate): Float32Array {
  return u.transposed ? mergeWeight(W, u.cols, rows, u.a, u.b, u.r, u.scale, undefined, true) : mergeWeight(W, rows, u.cols, u.a, u.b, u.r, u.scale, u.m, false);
}
