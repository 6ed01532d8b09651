// Restricted pickle parser (docs/dcp-format.md §6, plus BINPERSID for torch.save's data.pkl). It never
// executes anything: GLOBAL/REDUCE/NEWOBJ/BUILD only build tagged plain-data nodes, and only an allowlist of
// globals is accepted. Stack, memo and nesting sizes are bounded; truncated input is an error.
import { CkptError } from "../../errors.js";

export type PyValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | Uint8Array
  | PyValue[]
  | PyTuple
  | PyDict
  | PySet
  | PyGlobal
  | PyCall
  | PyObj
  | PyPersId;

export interface PyTuple { $tuple: PyValue[] }
export interface PySet { $set: PyValue[]; frozen?: boolean }
export interface PyGlobal { $global: string }
/** REDUCE of an allowlisted callable: `$call` is its qualified name ("torch.Size"). */
export interface PyCall { $call: string; args: PyValue[]; state?: PyValue }
/** NEWOBJ / NEWOBJ_EX of an allowlisted class, `state` set by BUILD. */
export interface PyObj { $obj: string; args: PyValue[]; kwargs?: PyDict; state?: PyValue }
/** BINPERSID result when no persistentLoad hook is given. */
export interface PyPersId { $persid: PyValue }

export const isTuple = (v: unknown): v is PyTuple =>
  typeof v === "object" && v !== null && !Array.isArray(v) && "$tuple" in v;
export const isGlobal = (v: unknown): v is PyGlobal =>
  typeof v === "object" && v !== null && !Array.isArray(v) && "$global" in v;
export const isCall = (v: unknown, name?: string): v is PyCall =>
  typeof v === "object" && v !== null && !Array.isArray(v) && "$call" in v && (name === undefined || (v as PyCall).$call === name);
export const isObj = (v: unknown, name?: string): v is PyObj =>
  typeof v === "object" && v !== null && !Array.isArray(v) && "$obj" in v && (name === undefined || (v as PyObj).$obj === name);
export const isPersId = (v: unknown): v is PyPersId =>
  typeof v === "object" && v !== null && !Array.isArray(v) && "$persid" in v;

/** Canonical string of a hashable value ("hashed by value"): equal Python values give equal strings. */
export function hashKey(v: PyValue, depth = 0): string {
  if (depth > 64) throw new Error("value nested too deeply to hash");
  if (v === null) return "N";
  if (v === true) return "n:1"; // True == 1 in Python
  if (v === false) return "n:0";
  if (typeof v === "number") {
    if (Number.isInteger(v) && !Number.isSafeInteger(v)) return "n:" + BigInt(v).toString();
    return "n:" + (Object.is(v, -0) ? "0" : String(v));
  }
  if (typeof v === "bigint") return "n:" + v.toString();
  if (typeof v === "string") return "s:" + JSON.stringify(v);
  if (v instanceof Uint8Array) return "b:" + Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("hex");
  if (Array.isArray(v) || v instanceof Map) throw new Error("unhashable type (list or dict) used as a key");
  if ("$tuple" in v) return "t(" + v.$tuple.map((x) => hashKey(x, depth + 1)).join(",") + ")";
  if ("$global" in v) return "g:" + v.$global;
  if ("$set" in v) {
    if (!v.frozen) throw new Error("unhashable type (set) used as a key");
    return "fs(" + v.$set.map((x) => hashKey(x, depth + 1)).sort().join(",") + ")";
  }
  if ("$persid" in v) return "p(" + hashKey(v.$persid, depth + 1) + ")";
  const name = "$call" in v ? "c:" + v.$call : "o:" + v.$obj;
  const args = v.args.map((x) => hashKey(x, depth + 1)).join(",");
  let state = "";
  if (v.state !== undefined) {
    if (v.state instanceof Map) {
      state = "{" + [...v.state].map(([k, x]) => hashKey(k, depth + 1) + ":" + hashStateValue(x, depth + 1)).sort().join(",") + "}";
    } else state = hashStateValue(v.state, depth + 1);
  }
  return `${name}(${args})[${state}]`;
}

function hashStateValue(v: PyValue, depth: number): string {
  // State values (object attributes) may be unhashable in Python; objects still hash by identity there, but a
  // value-based string is what lets us look `MetadataIndex` keys up. Lists/dicts inside state are serialised.
  if (Array.isArray(v)) return "[" + v.map((x) => hashStateValue(x, depth + 1)).join(",") + "]";
  if (v instanceof Map) return "{" + [...v].map(([k, x]) => hashKey(k, depth + 1) + ":" + hashStateValue(x, depth + 1)).join(",") + "}";
  return hashKey(v, depth);
}

/** A Python dict: a Map whose keys compare by value (like Python's hash/eq), insertion-ordered. */
export class PyDict extends Map<PyValue, PyValue> {
  private index = new Map<string, PyValue>();
  override set(k: PyValue, v: PyValue): this {
    const h = hashKey(k);
    const existing = this.index.get(h);
    if (existing !== undefined || this.index.has(h)) return super.set(existing as PyValue, v);
    this.index.set(h, k);
    return super.set(k, v);
  }
  override get(k: PyValue): PyValue | undefined {
    const h = safeHash(k);
    if (h === undefined || !this.index.has(h)) return undefined;
    return super.get(this.index.get(h) as PyValue);
  }
  override has(k: PyValue): boolean {
    const h = safeHash(k);
    return h !== undefined && this.index.has(h);
  }
  override delete(k: PyValue): boolean {
    const h = safeHash(k);
    if (h === undefined || !this.index.has(h)) return false;
    const key = this.index.get(h) as PyValue;
    this.index.delete(h);
    return super.delete(key);
  }
  override clear(): void {
    this.index.clear();
    super.clear();
  }
  /** Value for a string key (convenience for attribute dicts). */
  str(k: string): PyValue | undefined {
    return this.get(k);
  }
}

function safeHash(k: PyValue): string | undefined {
  try {
    return hashKey(k);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Allowlist

export const TORCH_DTYPE_NAMES = new Set([
  "float64", "double", "float32", "float", "float16", "half", "bfloat16", "int64", "long", "int32", "int", "int16",
  "short", "int8", "uint8", "bool", "complex128", "cdouble", "complex64", "cfloat", "complex32", "chalf",
  "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2",
  "uint16", "uint32", "uint64", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "bits1x8", "bits2x4", "bits4x2",
  "bits8", "bits16", "uint1", "uint2", "uint3", "uint4", "uint5", "uint6", "uint7", "int1", "int2", "int3", "int4",
  "int5", "int6", "int7",
]);

export const TORCH_STORAGE_CLASSES = new Set([
  "DoubleStorage", "FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage", "ShortStorage",
  "CharStorage", "ByteStorage", "BoolStorage", "ComplexDoubleStorage", "ComplexFloatStorage", "QInt8Storage",
  "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage", "UntypedStorage",
]);

const MD = "torch.distributed.checkpoint.metadata";
const FS = "torch.distributed.checkpoint.filesystem";
const STATIC_ALLOWED = new Set([
  `${MD}.Metadata`, `${MD}.TensorStorageMetadata`, `${MD}.ChunkStorageMetadata`, `${MD}.TensorProperties`,
  `${MD}.BytesStorageMetadata`, `${MD}.StorageMeta`, `${MD}.MetadataIndex`, `${MD}._MEM_FORMAT_ENCODING`,
  `${FS}._StorageInfo`, "torch.distributed._shard.sharded_tensor.metadata.TensorProperties",
  "torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING",
  "torch.Size", "torch.serialization._get_layout", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
  "collections.OrderedDict", "builtins.getattr", "__builtin__.getattr", "pathlib.PosixPath", "pathlib._local.PosixPath",
  "pathlib.PurePosixPath", "pathlib._local.PurePosixPath", "pathlib.Path", "torch.UntypedStorage",
  "torch.storage.UntypedStorage", "torch.device",
]);

export function defaultAllowGlobal(module: string, name: string): boolean {
  const q = `${module}.${name}`;
  if (STATIC_ALLOWED.has(q)) return true;
  if (module === "torch" && (TORCH_DTYPE_NAMES.has(name) || TORCH_STORAGE_CLASSES.has(name))) return true;
  return false;
}

// ---------------------------------------------------------------------------------------------------------------
// Parser

export interface PickleOptions {
  /** File name for error messages. */
  file?: string;
  /** Extra/other allowlist; default `defaultAllowGlobal`. */
  allowGlobal?: (module: string, name: string) => boolean;
  /** BINPERSID hook; default wraps the id as `{ $persid }`. */
  persistentLoad?: (pid: PyValue) => PyValue;
  maxStack?: number;
  maxMemo?: number;
  /** Largest str/bytes/long operand accepted, bytes. */
  maxItemBytes?: number;
}

type Slot = PyValue;

export function parsePickle(buf: Uint8Array, opts: PickleOptions = {}): PyValue {
  const file = opts.file;
  const allow = opts.allowGlobal ?? defaultAllowGlobal;
  const maxStack = opts.maxStack ?? 1_000_000;
  const maxMemo = opts.maxMemo ?? 1_000_000;
  const maxItem = opts.maxItemBytes ?? 256 * 1024 * 1024;
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = b.length;
  let pos = 0;
  let opPos = 0;
  const stack: Slot[] = [];
  const marks: number[] = [];
  const memo = new Map<number, PyValue>();

  const fail = (msg: string): never => {
    throw new CkptError("PICKLE", msg, { file });
  };
  const need = (k: number): void => {
    if (k < 0 || pos + k > n) fail(`truncated pickle: opcode at byte ${opPos} needs ${k} more bytes, ${n - pos} left`);
  };
  const u8 = (): number => {
    need(1);
    return b[pos++]!;
  };
  const u16 = (): number => {
    need(2);
    const v = b.readUInt16LE(pos);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    need(4);
    const v = b.readUInt32LE(pos);
    pos += 4;
    return v;
  };
  const i32 = (): number => {
    need(4);
    const v = b.readInt32LE(pos);
    pos += 4;
    return v;
  };
  const u64 = (): number => {
    need(8);
    const v = b.readBigUInt64LE(pos);
    pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`length ${v} too large at byte ${opPos}`);
    return Number(v);
  };
  const take = (k: number): Buffer => {
    if (k > maxItem) fail(`item of ${k} bytes at byte ${opPos} exceeds the ${maxItem}-byte limit`);
    need(k);
    const s = b.subarray(pos, pos + k);
    pos += k;
    return s;
  };
  const line = (): string => {
    const end = b.indexOf(0x0a, pos);
    if (end < 0 || end - pos > 4096) fail(`truncated pickle: unterminated GLOBAL name at byte ${opPos}`);
    const s = b.subarray(pos, end).toString("utf8");
    pos = end + 1;
    return s;
  };
  const push = (v: Slot): void => {
    if (stack.length >= maxStack) fail(`pickle stack exceeds ${maxStack} items at byte ${opPos}`);
    stack.push(v);
  };
  const pop = (): PyValue => {
    if (stack.length === 0 || (marks.length && stack.length <= marks[marks.length - 1]!)) {
      fail(`pickle stack underflow at byte ${opPos}`);
    }
    return stack.pop()!;
  };
  const top = (): PyValue => {
    if (stack.length === 0 || (marks.length && stack.length <= marks[marks.length - 1]!)) {
      fail(`pickle stack underflow at byte ${opPos}`);
    }
    return stack[stack.length - 1] as PyValue;
  };
  const popMark = (): PyValue[] => {
    const m = marks.pop();
    if (m === undefined) fail(`no MARK for opcode at byte ${opPos}`);
    const items = stack.splice(m!) as PyValue[];
    return items;
  };
  const memoPut = (i: number, v: PyValue): void => {
    if (!memo.has(i) && memo.size >= maxMemo) fail(`pickle memo exceeds ${maxMemo} entries at byte ${opPos}`);
    memo.set(i, v);
  };
  const memoGet = (i: number): PyValue => {
    if (!memo.has(i)) fail(`memo key ${i} not found at byte ${opPos}`);
    return memo.get(i)!;
  };
  const mkGlobal = (module: string, name: string): PyGlobal => {
    if (!allow(module, name)) fail(`unexpected global '${module}.${name}' at byte ${opPos}`);
    return { $global: `${module}.${name}` };
  };
  const toInt = (bytes: Buffer): number | bigint => {
    if (bytes.length === 0) return 0;
    let v = 0n;
    for (let i = bytes.length - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[i]!);
    if (bytes[bytes.length - 1]! & 0x80) v -= 1n << BigInt(bytes.length * 8);
    return v >= -BigInt(Number.MAX_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  };
  const setItems = (d: PyValue, kv: PyValue[]): void => {
    if (!(d instanceof PyDict)) fail(`SETITEM(S) on a non-dict at byte ${opPos}`);
    if (kv.length % 2) fail(`odd number of items for SETITEMS at byte ${opPos}`);
    for (let i = 0; i < kv.length; i += 2) {
      try {
        (d as PyDict).set(kv[i]!, kv[i + 1]!);
      } catch (e) {
        fail(`${(e as Error).message} at byte ${opPos}`);
      }
    }
  };
  const callable = (f: PyValue, what: string): string => {
    if (!isGlobal(f)) fail(`${what} of a non-global callable at byte ${opPos}`);
    return (f as PyGlobal).$global;
  };

  for (;;) {
    if (pos >= n) fail(`truncated pickle: no STOP opcode (${n} bytes)`);
    opPos = pos;
    const op = b[pos++]!;
    switch (op) {
      case 0x80: // PROTO
        if (u8() > 5) fail(`unsupported pickle protocol at byte ${opPos}`);
        break;
      case 0x95: // FRAME
        u64();
        break;
      case 0x2e: {
        // STOP
        if (stack.length !== 1 || marks.length) fail(`malformed pickle: ${stack.length} items on the stack at STOP (byte ${opPos})`);
        return stack[0] as PyValue;
      }
      case 0x28:
        if (marks.length >= maxStack) fail(`too many MARKs at byte ${opPos}`);
        marks.push(stack.length); // marks are tracked by stack position, not stored
        break;
      case 0x31:
        popMark();
        break;
      case 0x30:
        pop();
        break;
      case 0x32:
        push(top());
        break;
      case 0x94:
        memoPut(memo.size, top());
        break;
      case 0x71:
        memoPut(u8(), top());
        break;
      case 0x72:
        memoPut(u32(), top());
        break;
      case 0x68:
        push(memoGet(u8()));
        break;
      case 0x6a:
        push(memoGet(u32()));
        break;
      case 0x8c:
        push(take(u8()).toString("utf8"));
        break;
      case 0x58:
        push(take(u32()).toString("utf8"));
        break;
      case 0x8d:
        push(take(u64()).toString("utf8"));
        break;
      case 0x43:
        push(new Uint8Array(take(u8())));
        break;
      case 0x42:
        push(new Uint8Array(take(u32())));
        break;
      case 0x8e:
        push(new Uint8Array(take(u64())));
        break;
      case 0x55:
        push(take(u8()).toString("latin1"));
        break;
      case 0x54:
        push(take(u32()).toString("latin1"));
        break;
      case 0x4b:
        push(u8());
        break;
      case 0x4d:
        push(u16());
        break;
      case 0x4a:
        push(i32());
        break;
      case 0x8a:
        push(toInt(take(Math.min(u8(), maxItem))));
        break;
      case 0x8b: {
        const len = u32();
        if (len > 65536) fail(`LONG4 of ${len} bytes at byte ${opPos} is too large`);
        push(toInt(take(len)));
        break;
      }
      case 0x47: {
        need(8);
        push(b.readDoubleBE(pos));
        pos += 8;
        break;
      }
      case 0x4e:
        push(null);
        break;
      case 0x88:
        push(true);
        break;
      case 0x89:
        push(false);
        break;
      case 0x29:
        push({ $tuple: [] });
        break;
      case 0x5d:
        push([]);
        break;
      case 0x7d:
        push(new PyDict());
        break;
      case 0x8f:
        push({ $set: [] });
        break;
      case 0x85:
      case 0x86:
      case 0x87: {
        const k = op - 0x84;
        const items: PyValue[] = [];
        for (let i = 0; i < k; i++) items.unshift(pop());
        push({ $tuple: items });
        break;
      }
      case 0x74:
        push({ $tuple: popMark() });
        break;
      case 0x61: {
        const v = pop();
        const l = top();
        if (!Array.isArray(l)) fail(`APPEND to a non-list at byte ${opPos}`);
        (l as PyValue[]).push(v);
        break;
      }
      case 0x65: {
        const items = popMark();
        const l = top();
        if (!Array.isArray(l)) fail(`APPENDS to a non-list at byte ${opPos}`);
        for (const v of items) (l as PyValue[]).push(v);
        break;
      }
      case 0x73: {
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: {
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x90: {
        const items = popMark();
        const s = top();
        if (typeof s !== "object" || s === null || !("$set" in s) || (s as PySet).frozen) fail(`ADDITEMS to a non-set at byte ${opPos}`);
        (s as PySet).$set.push(...items);
        break;
      }
      case 0x91:
        push({ $set: popMark(), frozen: true });
        break;
      case 0x63: {
        const module = line();
        const name = line();
        push(mkGlobal(module, name));
        break;
      }
      case 0x93: {
        const name = pop();
        const module = pop();
        if (typeof name !== "string" || typeof module !== "string") fail(`STACK_GLOBAL needs two strings at byte ${opPos}`);
        push(mkGlobal(module as string, name as string));
        break;
      }
      case 0x81: {
        const args = pop();
        const cls = callable(pop(), "NEWOBJ");
        if (!isTuple(args)) fail(`NEWOBJ arguments are not a tuple at byte ${opPos}`);
        push({ $obj: cls, args: (args as PyTuple).$tuple });
        break;
      }
      case 0x92: {
        const kwargs = pop();
        const args = pop();
        const cls = callable(pop(), "NEWOBJ_EX");
        if (!isTuple(args) || !(kwargs instanceof PyDict)) fail(`malformed NEWOBJ_EX arguments at byte ${opPos}`);
        push({ $obj: cls, args: (args as PyTuple).$tuple, kwargs: kwargs as PyDict });
        break;
      }
      case 0x52: {
        const args = pop();
        const fn = callable(pop(), "REDUCE");
        if (!isTuple(args)) fail(`REDUCE arguments are not a tuple at byte ${opPos}`);
        const a = (args as PyTuple).$tuple;
        if (fn === "collections.OrderedDict" && a.length === 0) push(new PyDict());
        else push({ $call: fn, args: a });
        break;
      }
      case 0x62: {
        const state = pop();
        const o = top();
        if (!isObj(o) && !isCall(o)) fail(`BUILD on a value that is not an object at byte ${opPos}`);
        const t = o as PyObj | PyCall;
        if (t.state instanceof PyDict && state instanceof PyDict) for (const [k, v] of state) t.state.set(k, v);
        else t.state = state;
        break;
      }
      case 0x51: {
        const pid = pop();
        push(opts.persistentLoad ? opts.persistentLoad(pid) : { $persid: pid });
        break;
      }
      default:
        fail(`unsupported pickle opcode 0x${op.toString(16).padStart(2, "0")} at byte ${opPos}`);
    }
  }
}
