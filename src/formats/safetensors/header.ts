// safetensors header parsing and validation: docs/safetensors.md §1–3, strict.
import { DTYPE_BITS, DTYPES, isDType, type DType } from "../../dtypes.js";
import { CkptError } from "../../errors.js";
import { isJsonObject, jsonKind, JsonSyntaxError, parseStrictJson, safeUint, type JsonValue } from "./json-strict.js";

export interface SafetensorsEntry {
  name: string;
  dtype: DType;
  shape: number[];
  /** Relative to the data start (byte 8 + N). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Label used in errors (path or `repo@rev:file`). */
  file: string;
  /** N: byte length of the JSON header (padding included). */
  headerLength: number;
  /** 8 + N: absolute offset of the data buffer. */
  dataStart: number;
  fileSize: number;
  metadata: Record<string, string>;
  /** In file offset order (ties, i.e. zero-length entries, in header order). */
  entries: SafetensorsEntry[];
  warnings: string[];
}

/** Rule 2: the reference rejects larger headers (`HeaderTooLarge`). */
export const MAX_HEADER_LENGTH = 100_000_000;

const U64_MAX = (1n << 64n) - 1n;

function headerError(file: string, message: string, tensor?: string, hint?: string): CkptError {
  const where = tensor !== undefined ? `tensor ${quote(tensor)}: ` : "";
  return new CkptError("SAFETENSORS_HEADER", `safetensors header: ${where}${message}`, { file, tensor, hint });
}

function dataError(file: string, message: string, tensor?: string, hint?: string): CkptError {
  const where = tensor !== undefined ? `tensor ${quote(tensor)}: ` : "";
  return new CkptError("SAFETENSORS_DATA", `safetensors data: ${where}${message}`, { file, tensor, hint });
}

/** Quotes a name for messages; escapes anything unprintable. */
export function quote(name: string): string {
  // eslint-disable-next-line no-control-regex
  return /^[^\x00-\x1f\x7f'\\]*$/.test(name) ? `'${name}'` : JSON.stringify(name);
}

export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(",")}]`;
}

/** A name problem (empty, control characters, lone surrogates), or undefined when the name is acceptable. */
export function tensorNameProblem(name: string): string | undefined {
  if (name.length === 0) return "tensor name is empty (rule: tensor names are non-empty)";
  // eslint-disable-next-line no-control-regex
  const m = /[\x00-\x1f\x7f]/.exec(name);
  if (m) {
    return `tensor name contains control character U+${m[0].charCodeAt(0).toString(16).padStart(4, "0")} (rule: tensor names have no control characters)`;
  }
  if (!isWellFormedString(name)) return "tensor name contains a lone UTF-16 surrogate (rule: names are valid Unicode)";
  return undefined;
}

export function isWellFormedString(s: string): boolean {
  return !/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(s);
}

/**
 * Data byte length of a tensor: numel × bits / 8, with the reference's overflow (rule 8) and whole-byte (rule 9)
 * checks. Returns a BigInt so callers can compare without rounding; throws a message string on failure.
 */
export function tensorByteSize(dtype: DType, shape: readonly number[]): { bytes: bigint } | { error: string; rule: 8 | 9 } {
  let numel = 1n;
  for (const d of shape) {
    numel *= BigInt(d);
    if (numel > U64_MAX) {
      return { error: `shape ${formatShape(shape)}: element count overflows 64 bits (rule: numel and numel × bits must not overflow)`, rule: 8 };
    }
  }
  const bits = numel * BigInt(DTYPE_BITS[dtype]);
  if (bits > U64_MAX) {
    return { error: `shape ${formatShape(shape)} × ${dtype}: numel × ${DTYPE_BITS[dtype]} bits overflows 64 bits (rule: numel and numel × bits must not overflow)`, rule: 8 };
  }
  if (bits % 8n !== 0n) {
    return {
      error: `shape ${formatShape(shape)} × ${dtype} is ${numel} elements × ${DTYPE_BITS[dtype]} bits = ${bits} bits, not a whole number of bytes (rule: numel × bits divisible by 8)`,
      rule: 9,
    };
  }
  return { bytes: bits / 8n };
}

/** Rules 1–3 on the 8-byte prefix; returns N as a number. */
export function checkPrelude(prefix: Buffer | undefined, fileSize: number, file: string): number {
  if (fileSize < 8 || prefix === undefined || prefix.length < 8) {
    throw headerError(file, `file is ${fileSize} bytes, shorter than the 8-byte header length (rule: file length ≥ 8)`);
  }
  const n = prefix.readBigUInt64LE(0);
  if (n > BigInt(MAX_HEADER_LENGTH)) {
    throw headerError(file, `header length N = ${n} exceeds 100,000,000 bytes (rule: N ≤ 100,000,000)`, undefined, "not a safetensors file, or a corrupted one");
  }
  const len = Number(n);
  if (8 + len > fileSize) {
    throw headerError(file, `header length N = ${len} but the file has only ${fileSize} bytes (rule: 8 + N ≤ file length)`, undefined, "file truncated?");
  }
  return len;
}

/**
 * Parses and validates the header JSON (the N bytes after the length prefix), all rules of spec §3.
 * `fileSize` is the whole file's length (rule 11: no trailing bytes, no truncated data).
 */
export function parseSafetensorsHeader(json: Buffer, headerLength: number, fileSize: number, file: string): SafetensorsHeader {
  if (json.length !== headerLength) {
    throw headerError(file, `expected ${headerLength} header bytes, got ${json.length} (rule: 8 + N ≤ file length)`);
  }
  if (headerLength > MAX_HEADER_LENGTH) {
    throw headerError(file, `header length N = ${headerLength} exceeds 100,000,000 bytes (rule: N ≤ 100,000,000)`);
  }
  if (8 + headerLength > fileSize) {
    throw headerError(file, `header length N = ${headerLength} but the file has only ${fileSize} bytes (rule: 8 + N ≤ file length)`);
  }

  // Rule 4: UTF-8.
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(json);
  } catch {
    throw headerError(file, "header bytes are not valid UTF-8 (rule: header is valid UTF-8)");
  }

  // Rule 5: JSON of the expected shape.
  let root: JsonValue;
  try {
    root = parseStrictJson(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError && e.duplicateKey !== undefined) {
      throw headerError(file, `duplicate key ${quote(e.duplicateKey)} (rule: header keys are unique)`, undefined);
    }
    const why = e instanceof Error ? e.message : String(e);
    throw headerError(file, `header is not valid JSON: ${why} (rule: header is valid JSON)`);
  }
  if (!isJsonObject(root)) {
    throw headerError(file, `header is ${jsonKind(root)}, not a JSON object (rule: header is a JSON object)`);
  }

  const warnings: string[] = [];
  const metadata: Record<string, string> = {};
  const entries: SafetensorsEntry[] = [];
  const shapeRule = "(rule: shape is a list of unsigned integers ≤ 2^53 - 1)";
  const offsetsRule = "(rule: data_offsets is [BEGIN, END], unsigned integers ≤ 2^53 - 1)";

  for (const [key, value] of root) {
    if (key === "__metadata__") {
      if (value === null) {
        warnings.push(`${file}: __metadata__ is null; treated as absent`);
        continue;
      }
      if (!isJsonObject(value)) {
        throw headerError(file, `__metadata__ is ${jsonKind(value)}, not an object (rule: __metadata__ maps strings to strings)`);
      }
      for (const [mk, mv] of value) {
        if (typeof mv !== "string") {
          throw headerError(file, `__metadata__[${quote(mk)}] is ${jsonKind(mv)}, not a string (rule: __metadata__ values are strings)`);
        }
        // defineProperty: a key named "__proto__" stays an ordinary own property.
        Object.defineProperty(metadata, mk, { value: mv, enumerable: true, writable: true, configurable: true });
      }
      continue;
    }
    const nameProblem = tensorNameProblem(key);
    if (nameProblem) throw headerError(file, nameProblem, key);
    if (!isJsonObject(value)) {
      throw headerError(file, `entry is ${jsonKind(value)}, not an object with dtype, shape, data_offsets (rule: every key other than __metadata__ is a tensor entry)`, key);
    }
    const dt = value.get("dtype");
    if (typeof dt !== "string") {
      throw headerError(file, `dtype is ${jsonKind(dt)}, not a string (rule: dtype is a known code)`, key);
    }
    if (!isDType(dt)) {
      throw headerError(file, `unknown dtype ${JSON.stringify(dt)} (rule: dtype is a known code: ${DTYPES.join(", ")})`, key);
    }
    const sh = value.get("shape");
    if (!Array.isArray(sh)) throw headerError(file, `shape is ${jsonKind(sh)}, not a list ${shapeRule}`, key);
    const shape: number[] = [];
    for (let i = 0; i < sh.length; i++) {
      const d = safeUint(sh[i]);
      if (typeof d === "string") throw headerError(file, `shape[${i}]: ${d} ${shapeRule}`, key);
      shape.push(d);
    }
    const off = value.get("data_offsets");
    if (!Array.isArray(off) || off.length !== 2) {
      const what = Array.isArray(off) ? `a list of ${off.length}` : jsonKind(off);
      throw headerError(file, `data_offsets is ${what}, not [BEGIN, END] ${offsetsRule}`, key);
    }
    const begin = safeUint(off[0]);
    if (typeof begin === "string") throw headerError(file, `data_offsets[0]: ${begin} ${offsetsRule}`, key);
    const end = safeUint(off[1]);
    if (typeof end === "string") throw headerError(file, `data_offsets[1]: ${end} ${offsetsRule}`, key);
    for (const k of value.keys()) {
      if (k !== "dtype" && k !== "shape" && k !== "data_offsets") {
        warnings.push(`${file}: tensor ${quote(key)}: unknown key ${quote(k)} in the header entry ignored`);
      }
    }
    entries.push({ name: key, dtype: dt, shape, begin, end });
  }

  // Rules 6–10 in the reference's order: sort by (BEGIN, END), then walk.
  const order = entries.map((e, i) => ({ e, i }));
  order.sort((a, b) => a.e.begin - b.e.begin || a.e.end - b.e.end || a.i - b.i);
  const sorted = order.map((o) => o.e);
  let expected = 0;
  let prev: SafetensorsEntry | undefined;
  for (const e of sorted) {
    const offs = `data_offsets [${e.begin}, ${e.end}]`;
    if (e.end < e.begin) {
      throw headerError(file, `${offs}: END < BEGIN (rule: END ≥ BEGIN)`, e.name);
    }
    if (e.begin !== expected) {
      if (prev === undefined) {
        throw headerError(file, `${offs}: the first tensor in the data buffer begins at ${e.begin}, not 0 (rule: offsets start at 0 and are contiguous)`, e.name);
      }
      const kind = e.begin > expected ? `a gap of ${e.begin - expected} bytes` : `an overlap of ${expected - e.begin} bytes`;
      throw headerError(
        file,
        `${offs}: begins at ${e.begin} but the previous tensor ${quote(prev.name)} ends at ${expected}: ${kind} (rule: offsets are contiguous, no gaps or overlaps)`,
        e.name,
      );
    }
    const size = tensorByteSize(e.dtype, e.shape);
    if ("error" in size) throw headerError(file, size.error, e.name);
    const span = e.end - e.begin;
    if (BigInt(span) !== size.bytes) {
      throw headerError(
        file,
        `${offs} span ${span} bytes but shape ${formatShape(e.shape)} × ${e.dtype} needs ${size.bytes} (rule: byte size = numel × dtype size)`,
        e.name,
      );
    }
    expected = e.end;
    prev = e;
  }

  // Rule 11.
  const dataStart = 8 + headerLength;
  const want = dataStart + expected;
  if (want !== fileSize) {
    if (want < fileSize) {
      throw dataError(
        file,
        `file is ${fileSize} bytes but header (8 + ${headerLength}) plus data (${expected}) is ${want}: ${fileSize - want} trailing bytes (rule: 8 + N + last END = file length)`,
      );
    }
    throw dataError(
      file,
      `file is ${fileSize} bytes but header (8 + ${headerLength}) plus data (${expected}) needs ${want}: data truncated by ${want - fileSize} bytes (rule: 8 + N + last END = file length)`,
      prev?.name,
      "incomplete download?",
    );
  }

  return { file, headerLength, dataStart, fileSize, metadata, entries: sorted, warnings };
}

const entryMaps = new WeakMap<SafetensorsHeader, Map<string, SafetensorsEntry>>();

/** The entry named `name`, or undefined. O(1) after the first call per header. */
export function findEntry(header: SafetensorsHeader, name: string): SafetensorsEntry | undefined {
  let m = entryMaps.get(header);
  if (!m) {
    m = new Map(header.entries.map((e) => [e.name, e]));
    entryMaps.set(header, m);
  }
  return m.get(name);
}
