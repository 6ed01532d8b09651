// Planning and writing safetensors files byte-identical to safetensors.torch.save_file (docs/safetensors.md §4),
// and sharded checkpoints with a model.safetensors.index.json (§5).
import { writeFile } from "node:fs/promises";
import { DTYPE_ORDER, isDType, type DType } from "../../dtypes.js";
import { CkptError } from "../../errors.js";
import { formatShape, isWellFormedString, quote, tensorByteSize, tensorNameProblem } from "./header.js";

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

export interface PlannedTensor {
  name: string;
  dtype: DType;
  shape: number[];
  /** Absolute offset in the file. */
  offset: number;
  byteLength: number;
}

export interface PlannedSafetensorsFile {
  fileName: string;
  /** 8-byte N + padded JSON: bytes [0, dataStart). */
  header: Buffer;
  dataStart: number;
  totalSize: number;
  /** In file offset order. */
  tensors: PlannedTensor[];
}

export interface SafetensorsIndex {
  metadata: { total_size: number; [k: string]: unknown };
  weight_map: Record<string, string>;
}

function planError(file: string, message: string, tensor?: string): CkptError {
  const where = tensor !== undefined ? `tensor ${quote(tensor)}: ` : "";
  return new CkptError("INTERNAL", `safetensors writer: ${where}${message}`, { file, tensor });
}

/** Byte length of one tensor, validated for the writer (whole bytes, ≤ 2^53 − 1). */
export function plannedByteLength(t: TensorSpec, file = "<plan>"): number {
  if (!isDType(t.dtype)) throw planError(file, `unknown dtype ${JSON.stringify(t.dtype)}`, t.name);
  for (const d of t.shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw planError(file, `shape ${formatShape(t.shape)}: dimensions must be non-negative integers`, t.name);
  }
  const r = tensorByteSize(t.dtype, t.shape);
  if ("error" in r) throw planError(file, r.error, t.name);
  if (r.bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw planError(file, `byte size ${r.bytes} exceeds 2^53 - 1`, t.name);
  return Number(r.bytes);
}

/** Byte-wise (UTF-8) comparison, as Rust's String ordering. */
export function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

/** Order of the reference `prepare`: descending dtype enum index, then ascending name (byte-wise). */
export function safetensorsOrder<T extends TensorSpec>(tensors: readonly T[]): T[] {
  const keyed = tensors.map((t) => ({ t, k: Buffer.from(t.name, "utf8") }));
  keyed.sort((a, b) => DTYPE_ORDER[b.t.dtype] - DTYPE_ORDER[a.t.dtype] || Buffer.compare(a.k, b.k));
  return keyed.map((x) => x.t);
}

/** Plans one file: header bytes and every tensor's absolute offset. */
export function planSafetensorsFile(fileName: string, tensors: TensorSpec[], metadata?: Record<string, string>): PlannedSafetensorsFile {
  const seen = new Set<string>();
  for (const t of tensors) {
    const p = tensorNameProblem(t.name);
    if (p) throw planError(fileName, p, t.name);
    if (t.name === "__metadata__") throw planError(fileName, "the name __metadata__ is reserved", t.name);
    if (seen.has(t.name)) throw planError(fileName, "duplicate tensor name", t.name);
    seen.add(t.name);
  }
  const ordered = safetensorsOrder(tensors);

  // Compact JSON in the reference's key order. JSON.stringify's string escaping equals serde_json's for
  // well-formed strings (", \, \b \f \n \r \t, other C0 as \u00xx lowercase; non-ASCII raw).
  const parts: string[] = [];
  if (metadata !== undefined) {
    const keys = Object.keys(metadata).sort(compareUtf8);
    const kv: string[] = [];
    for (const k of keys) {
      const v = metadata[k];
      if (typeof v !== "string") throw planError(fileName, `__metadata__[${quote(k)}] is not a string`);
      if (!isWellFormedString(k) || !isWellFormedString(v)) throw planError(fileName, `__metadata__[${quote(k)}] is not valid Unicode`);
      kv.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
    }
    parts.push(`"__metadata__":{${kv.join(",")}}`);
  }
  const planned: PlannedTensor[] = [];
  let rel = 0;
  const rels: number[] = [];
  for (const t of ordered) {
    const len = plannedByteLength(t, fileName);
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(",")}],"data_offsets":[${rel},${rel + len}]}`);
    rels.push(rel);
    planned.push({ name: t.name, dtype: t.dtype, shape: [...t.shape], offset: 0, byteLength: len });
    rel += len;
    if (!Number.isSafeInteger(rel)) throw planError(fileName, "file size exceeds 2^53 - 1 bytes");
  }
  const json = Buffer.from(`{${parts.join(",")}}`, "utf8");
  const padded = Math.ceil(json.length / 8) * 8;
  const header = Buffer.alloc(8 + padded, 0x20);
  header.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(header, 8);
  const dataStart = 8 + padded;
  planned.forEach((p, i) => (p.offset = dataStart + rels[i]!));
  return { fileName, header, dataStart, totalSize: dataStart + rel, tensors: planned };
}

/**
 * Splits tensors greedily, in the given order, into shards of at most `maxShardBytes` data bytes (a tensor larger
 * than the limit gets a shard of its own), like transformers' shard_checkpoint. One shard: `<prefix>.safetensors`
 * and no index; else `<prefix>-0000i-of-0000n.safetensors` plus the index (write it as
 * `<prefix>.safetensors.index.json` with serializeIndex).
 */
export function planShardedSafetensors(
  tensors: TensorSpec[],
  opts: { maxShardBytes: number; prefix?: string; metadata?: Record<string, string> },
): { files: PlannedSafetensorsFile[]; index?: SafetensorsIndex } {
  const prefix = opts.prefix ?? "model";
  if (!(opts.maxShardBytes > 0)) throw planError(prefix, `maxShardBytes must be positive, got ${opts.maxShardBytes}`);
  const seen = new Set<string>();
  const groups: TensorSpec[][] = [[]];
  let current = 0;
  let total = 0;
  for (const t of tensors) {
    if (seen.has(t.name)) throw planError(prefix, "duplicate tensor name", t.name);
    seen.add(t.name);
    const size = plannedByteLength(t, prefix);
    if (current + size > opts.maxShardBytes && groups[groups.length - 1]!.length > 0) {
      groups.push([]);
      current = 0;
    }
    groups[groups.length - 1]!.push(t);
    current += size;
    total += size;
  }
  const n = groups.length;
  if (n === 1) {
    return { files: [planSafetensorsFile(`${prefix}.safetensors`, groups[0]!, opts.metadata)] };
  }
  const pad = (i: number): string => String(i).padStart(5, "0");
  const files = groups.map((g, i) => planSafetensorsFile(`${prefix}-${pad(i + 1)}-of-${pad(n)}.safetensors`, g, opts.metadata));
  const weight_map: Record<string, string> = {};
  for (const f of files) for (const t of f.tensors) setOwn(weight_map, t.name, f.fileName);
  return { files, index: { metadata: { total_size: total }, weight_map } };
}

function setOwn(o: Record<string, unknown>, k: string, v: unknown): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, writable: true, configurable: true });
}

/** Writes a whole file from in-memory tensors (tests, fixtures, small outputs). */
export async function writeSafetensors(
  path: string,
  tensors: { name: string; dtype: DType; shape: number[]; data: Uint8Array }[],
  metadata?: Record<string, string>,
): Promise<void> {
  await writeFile(path, buildSafetensors(tensors, metadata, path));
}

/** The bytes of a whole safetensors file built in memory. */
export function buildSafetensors(
  tensors: { name: string; dtype: DType; shape: number[]; data: Uint8Array }[],
  metadata?: Record<string, string>,
  fileName = "<memory>",
): Buffer {
  const plan = planSafetensorsFile(fileName, tensors, metadata);
  const byName = new Map(tensors.map((t) => [t.name, t]));
  const out = Buffer.alloc(plan.totalSize);
  plan.header.copy(out, 0);
  for (const p of plan.tensors) {
    const data = byName.get(p.name)!.data;
    if (data.byteLength !== p.byteLength) {
      throw planError(fileName, `data is ${data.byteLength} bytes but shape ${formatShape(p.shape)} × ${p.dtype} needs ${p.byteLength}`, p.name);
    }
    out.set(data, p.offset);
  }
  return out;
}

/** Python's sort order for str keys (code points), as json.dumps(sort_keys=True). */
function compareCodePoints(a: string, b: string): number {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  while (true) {
    const x = ia.next();
    const y = ib.next();
    if (x.done || y.done) return x.done ? (y.done ? 0 : -1) : 1;
    const d = x.value.codePointAt(0)! - y.value.codePointAt(0)!;
    if (d !== 0) return d;
  }
}

function sortKeysDeep(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeysDeep);
  if (v !== null && typeof v === "object") {
    const out: Record<string, unknown> = {};
    for (const k of Object.keys(v).sort(compareCodePoints)) setOwn(out, k, sortKeysDeep((v as Record<string, unknown>)[k]));
    return out;
  }
  return v;
}

/**
 * The index as transformers writes it: json.dumps(index, indent=2, sort_keys=True) + "\n" (all keys sorted,
 * weight_map included; non-ASCII escaped as \uXXXX like Python's ensure_ascii).
 */
export function serializeIndex(index: SafetensorsIndex | { metadata: Record<string, unknown>; weight_map: Record<string, string> }): string {
  const s = JSON.stringify(sortKeysDeep(index), null, 2);
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`) + "\n";
}
