// The safetensors dtype table (docs/safetensors.md §2) and its torch counterparts.
import { CkptError } from "./errors.js";

export const DTYPES = [
  "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ",
  "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64",
] as const;
export type DType = (typeof DTYPES)[number];

/** Position in the Rust enum; the safetensors writer sorts by descending order of this index. */
export const DTYPE_ORDER: Record<DType, number> = Object.fromEntries(DTYPES.map((d, i) => [d, i])) as Record<DType, number>;

export const DTYPE_BITS: Record<DType, number> = {
  BOOL: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6, U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8, F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8, I16: 16, U16: 16, F16: 16, BF16: 16, I32: 32, U32: 32, F32: 32, C64: 64, F64: 64, I64: 64, U64: 64,
};

export function isDType(s: string): s is DType {
  return (DTYPES as readonly string[]).includes(s);
}

/** Bytes per element for whole-byte dtypes; throws for sub-byte ones (callers that slice need whole bytes). */
export function elementSize(d: DType): number {
  const bits = DTYPE_BITS[d];
  if (bits % 8 !== 0) throw new Error(`dtype ${d} is sub-byte (${bits} bits); it can be copied but not sliced`);
  return bits / 8;
}

/** torch dtype attribute name (torch.<name>) for each safetensors code that torch knows. */
export const TORCH_DTYPE: Partial<Record<DType, string>> = {
  BOOL: "bool", U8: "uint8", I8: "int8", F8_E5M2: "float8_e5m2", F8_E4M3: "float8_e4m3fn", F8_E8M0: "float8_e8m0fnu",
  F8_E4M3FNUZ: "float8_e4m3fnuz", F8_E5M2FNUZ: "float8_e5m2fnuz", I16: "int16", U16: "uint16", F16: "float16",
  BF16: "bfloat16", I32: "int32", U32: "uint32", F32: "float32", C64: "complex64", F64: "float64", I64: "int64", U64: "uint64",
};

export function dtypeFromTorch(name: string): DType | undefined {
  const n = name.replace(/^torch\./, "");
  for (const [k, v] of Object.entries(TORCH_DTYPE)) if (v === n) return k as DType;
  return undefined;
}

/** Floating dtypes the converter can cast between (--dtype and internal dequant). */
export const CASTABLE = ["F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"] as const;
export type CastableDType = (typeof CASTABLE)[number];
export function isCastable(d: DType): d is CastableDType {
  return (CASTABLE as readonly string[]).includes(d);
}

/** CLI spelling (--dtype bf16) → safetensors code. */
export const DTYPE_ALIASES: Record<string, CastableDType> = {
  f32: "F32", fp32: "F32", float32: "F32", bf16: "BF16", bfloat16: "BF16", f16: "F16", fp16: "F16", float16: "F16",
  f8_e4m3: "F8_E4M3", fp8: "F8_E4M3", f8_e5m2: "F8_E5M2",
};

/** Floating-point dtypes: values that can be NaN, infinite or out of another float's range (the health checks). */
export const FLOAT_DTYPES: readonly DType[] = ["F64", "F32", "BF16", "F16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F4", "F6_E2M3", "F6_E3M2"];
export function isFloatDType(d: DType): boolean {
  return FLOAT_DTYPES.includes(d);
}

/** An output dtype option: "keep" each tensor's own, or cast to one castable dtype. */
export type DTypeChoice = "keep" | CastableDType;

/** `--dtype` as typed (keep, bf16, fp16, F32, …) → the choice; USAGE error for anything else. */
export function parseDTypeChoice(s: string | undefined): DTypeChoice {
  if (s === undefined || s === "keep") return "keep";
  const d = DTYPE_ALIASES[s.toLowerCase()] ?? (isCastable(s as DType) ? (s as CastableDType) : undefined);
  if (!d) throw new CkptError("USAGE", `--dtype ${s}: expected keep, bf16, f16 or f32`);
  return d;
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}
