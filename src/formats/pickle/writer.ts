// Protocol-2 pickle emitter (docs/dcp-format.md §5). No memo opcodes, so the output is a pure function of
// the calls made. Only what DCP `.metadata`, tensor `data.pkl` records and simple BYTE_IO values need.

export const OP = {
  MARK: 0x28, STOP: 0x2e, POP: 0x30, POP_MARK: 0x31, DUP: 0x32, BINFLOAT: 0x47, BININT: 0x4a, BININT1: 0x4b,
  BININT2: 0x4d, NONE: 0x4e, BINPERSID: 0x51, REDUCE: 0x52, BINSTRING: 0x54, SHORT_BINSTRING: 0x55, BINUNICODE: 0x58,
  EMPTY_LIST: 0x5d, APPEND: 0x61, BUILD: 0x62, GLOBAL: 0x63, APPENDS: 0x65, BINGET: 0x68, LONG_BINGET: 0x6a,
  BINPUT: 0x71, LONG_BINPUT: 0x72, SETITEM: 0x73, TUPLE: 0x74, SETITEMS: 0x75, EMPTY_DICT: 0x7d, EMPTY_TUPLE: 0x29,
  PROTO: 0x80, NEWOBJ: 0x81, TUPLE1: 0x85, TUPLE2: 0x86, TUPLE3: 0x87, NEWTRUE: 0x88, NEWFALSE: 0x89, LONG1: 0x8a,
  LONG4: 0x8b, SHORT_BINUNICODE: 0x8c, BINUNICODE8: 0x8d, BINBYTES8: 0x8e, EMPTY_SET: 0x8f, ADDITEMS: 0x90,
  FROZENSET: 0x91, NEWOBJ_EX: 0x92, STACK_GLOBAL: 0x93, MEMOIZE: 0x94, FRAME: 0x95, BINBYTES: 0x42,
  SHORT_BINBYTES: 0x43,
} as const;

/** Plain values `PickleWriter.value` knows how to emit (protocol-2 forms that `torch.load` accepts). */
export type PlainValue =
  | null
  | boolean
  | number
  | bigint
  | string
  | PlainValue[]
  | { $tuple: PlainValue[] }
  | Map<PlainValue, PlainValue>
  | { [key: string]: PlainValue };

/** A small append-only builder; every method returns `this` so calls chain. */
export class PickleWriter {
  private chunks: Buffer[] = [];
  private cur: number[] = [];

  private flushCur(): void {
    if (this.cur.length) {
      this.chunks.push(Buffer.from(this.cur));
      this.cur = [];
    }
  }

  op(...bytes: number[]): this {
    for (const b of bytes) this.cur.push(b & 0xff);
    return this;
  }

  raw(b: Uint8Array): this {
    this.flushCur();
    this.chunks.push(Buffer.from(b));
    return this;
  }

  proto(v = 2): this {
    return this.op(OP.PROTO, v);
  }

  stop(): this {
    return this.op(OP.STOP);
  }

  /** `c module\n name\n` */
  global(module: string, name: string): this {
    if (/[\n]/.test(module) || /[\n]/.test(name)) throw new Error("pickle GLOBAL names cannot contain newlines");
    this.op(OP.GLOBAL);
    return this.raw(Buffer.from(`${module}\n${name}\n`, "utf8"));
  }

  /** BINUNICODE: `X u32le(len) utf8`. */
  str(s: string): this {
    const b = Buffer.from(s, "utf8");
    const h = Buffer.alloc(5);
    h[0] = OP.BINUNICODE;
    h.writeUInt32LE(b.length, 1);
    return this.raw(h).raw(b);
  }

  /** BININT1 / BININT2 / BININT / LONG1, smallest form that fits. */
  int(v: number | bigint): this {
    if (typeof v === "number") {
      if (!Number.isInteger(v)) throw new Error(`pickle int: ${v} is not an integer`);
      if (v >= 0 && v < 256) return this.op(OP.BININT1, v);
      if (v >= 0 && v < 65536) return this.op(OP.BININT2, v & 0xff, v >>> 8);
      if (v >= -0x80000000 && v <= 0x7fffffff) {
        const b = Buffer.alloc(5);
        b[0] = OP.BININT;
        b.writeInt32LE(v, 1);
        return this.raw(b);
      }
      if (!Number.isSafeInteger(v)) throw new Error(`pickle int: ${v} is not a safe integer (pass a bigint)`);
      v = BigInt(v);
    }
    if (v >= -0x80000000n && v <= 0x7fffffffn) return this.int(Number(v));
    // LONG1: minimal two's-complement little-endian.
    const bytes: number[] = [];
    let x = v;
    for (;;) {
      const byte = Number(x & 0xffn);
      bytes.push(byte);
      x >>= 8n; // arithmetic shift for negatives
      if ((x === 0n && (byte & 0x80) === 0) || (x === -1n && (byte & 0x80) !== 0)) break;
    }
    if (bytes.length > 255) throw new Error("pickle int too large for LONG1");
    return this.op(OP.LONG1, bytes.length, ...bytes);
  }

  float(v: number): this {
    const b = Buffer.alloc(9);
    b[0] = OP.BINFLOAT;
    b.writeDoubleBE(v, 1);
    return this.raw(b);
  }

  none(): this {
    return this.op(OP.NONE);
  }

  bool(b: boolean): this {
    return this.op(b ? OP.NEWTRUE : OP.NEWFALSE);
  }

  mark(): this {
    return this.op(OP.MARK);
  }

  /** A tuple of `n` items emitted by `items()`: EMPTY_TUPLE, TUPLE1–3, or MARK … TUPLE. */
  tuple(n: number, items: () => void): this {
    if (n === 0) {
      items();
      return this.op(OP.EMPTY_TUPLE);
    }
    if (n <= 3) {
      items();
      return this.op(OP.TUPLE1 + n - 1);
    }
    this.mark();
    items();
    return this.op(OP.TUPLE);
  }

  /** `]( x… e` (EMPTY_LIST MARK … APPENDS). */
  list(items: () => void): this {
    this.op(OP.EMPTY_LIST, OP.MARK);
    items();
    return this.op(OP.APPENDS);
  }

  /** `}( (k v)… u` (EMPTY_DICT MARK … SETITEMS). */
  dict(items: () => void): this {
    this.op(OP.EMPTY_DICT, OP.MARK);
    items();
    return this.op(OP.SETITEMS);
  }

  /** GLOBAL(m,c) EMPTY_TUPLE NEWOBJ — an instance without `__init__`; follow with `build` to set state. */
  newobj(module: string, name: string): this {
    return this.global(module, name).op(OP.EMPTY_TUPLE, OP.NEWOBJ);
  }

  /** OBJ(m,c,kv…) of the spec: NEWOBJ, dict state, BUILD. */
  obj(module: string, name: string, state: () => void): this {
    this.newobj(module, name).dict(state);
    return this.op(OP.BUILD);
  }

  build(): this {
    return this.op(OP.BUILD);
  }

  /** GLOBAL(m,n) TUPLE(args) REDUCE. */
  reduce(module: string, name: string, nargs: number, args: () => void): this {
    this.global(module, name).tuple(nargs, args);
    return this.op(OP.REDUCE);
  }

  binpersid(): this {
    return this.op(OP.BINPERSID);
  }

  /** Emits a plain value: ints (numbers that are integers) / floats / str / bool / None / list / tuple / dict. */
  value(v: PlainValue): this {
    if (v === null) return this.none();
    if (typeof v === "boolean") return this.bool(v);
    if (typeof v === "bigint") return this.int(v);
    if (typeof v === "number") return Number.isInteger(v) ? this.int(v) : this.float(v);
    if (typeof v === "string") return this.str(v);
    if (Array.isArray(v)) return this.list(() => v.forEach((x) => this.value(x)));
    if (v instanceof Map) {
      return this.dict(() => {
        for (const [k, x] of v) this.value(k).value(x);
      });
    }
    if ("$tuple" in v && Array.isArray(v.$tuple)) {
      const items = v.$tuple as PlainValue[];
      return this.tuple(items.length, () => items.forEach((x) => this.value(x)));
    }
    const obj = v as { [key: string]: PlainValue };
    return this.dict(() => {
      for (const k of Object.keys(obj)) this.str(k).value(obj[k]!);
    });
  }

  bytes(): Buffer {
    this.flushCur();
    return Buffer.concat(this.chunks);
  }
}
