// Fuzzing (fast-check): the safetensors header parser, the index parser, the restricted pickle parser (and the DCP
// `.metadata` decoder above it) and the zip / torch.save reader only ever throw CkptError on hostile bytes: never
// TypeError, RangeError or a hang. Each property runs FUZZ_RUNS inputs (default small, for CI); set
// CKPT_FUZZ_RUNS=100000 for a long run. Inputs are random bytes and mutations (bit flips, byte overwrites,
// insertions, deletions, truncations) of valid seeds.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { CkptError } from "../src/errors.js";
import { readSafetensorsHeaderFrom, buildSafetensors, parseIndex } from "../src/formats/safetensors/index.js";
import { parsePickle } from "../src/formats/pickle/reader.js";
import { decodeDcpMetadata, encodeDcpMetadata, type DcpMetadata } from "../src/formats/dcp/metadata.js";
import { encodeTensorBlob, encodeByteIoBlob, parseTensorBlob, parseByteIoBlob, readZipDirectory, WindowedReader } from "../src/formats/torchsave/index.js";

const RUNS = Math.max(1, Number(process.env.CKPT_FUZZ_RUNS ?? 1000));
const SEED = process.env.CKPT_FUZZ_SEED !== undefined ? Number(process.env.CKPT_FUZZ_SEED) : undefined;
const LONG = RUNS > 5000;
const params = { numRuns: RUNS, ...(SEED !== undefined ? { seed: SEED } : {}) };
const timeout = LONG ? 24 * 3600_000 : 60_000;

/** Slowest single input (a hang shows up as a test timeout; slowness as a failed bound). */
const MAX_MS_PER_INPUT = 2000;

async function onlyCkptErrors(what: string, f: () => unknown | Promise<unknown>): Promise<void> {
  const t0 = performance.now();
  try {
    await f();
  } catch (e) {
    if (!(e instanceof CkptError)) {
      throw new Error(`${what} threw ${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)} instead of a CkptError`, { cause: e });
    }
    assert.ok(e.oneLine().length > 0);
  }
  const ms = performance.now() - t0;
  if (ms > MAX_MS_PER_INPUT) throw new Error(`${what} took ${ms.toFixed(0)} ms on one input`);
}

// ---------------------------------------------------------------------------------------------------------------
// mutations of valid seeds

type Mutation =
  | { kind: "flip"; at: number; bit: number }
  | { kind: "set"; at: number; value: number }
  | { kind: "insert"; at: number; bytes: Uint8Array }
  | { kind: "delete"; at: number; len: number }
  | { kind: "truncate"; at: number }
  | { kind: "u32"; at: number; value: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant("set" as const), at: fc.nat(), value: fc.constantFrom(0, 0xff, 0x7f, 0x80, 0x2e, 0x28, 0x0a) }),
  fc.record({ kind: fc.constant("insert" as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
  fc.record({ kind: fc.constant("delete" as const), at: fc.nat(), len: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
  fc.record({ kind: fc.constant("u32" as const), at: fc.nat(), value: fc.constantFrom(0, 0xffffffff, 0x7fffffff, 0x80000000, 1, 0x10000) }),
);

function mutate(seed: Buffer, ms: Mutation[]): Buffer {
  let b = Buffer.from(seed);
  for (const m of ms) {
    if (b.length === 0) break;
    const at = m.at % b.length;
    switch (m.kind) {
      case "flip": b[at]! ^= 1 << m.bit; break;
      case "set": b[at] = m.value; break;
      case "insert": b = Buffer.concat([b.subarray(0, at), m.bytes, b.subarray(at)]); break;
      case "delete": b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.len)]); break;
      case "truncate": b = b.subarray(0, at); break;
      case "u32": if (at + 4 <= b.length) b.writeUInt32LE(m.value, at); break;
    }
  }
  return b;
}

const mutated = (seeds: Buffer[]) => fc.tuple(fc.nat({ max: seeds.length - 1 }), fc.array(mutationArb, { minLength: 1, maxLength: 6 })).map(([i, ms]) => mutate(seeds[i]!, ms));

// ---------------------------------------------------------------------------------------------------------------
// seeds

function stSeed(): Buffer[] {
  const f32 = (n: number) => new Uint8Array(new Float32Array(n).map((_, i) => i * 0.5).buffer);
  return [
    buildSafetensors([
      { name: "a.weight", dtype: "F32", shape: [2, 3], data: f32(6) },
      { name: "b", dtype: "BF16", shape: [4], data: new Uint8Array(8) },
      { name: "scalar", dtype: "I64", shape: [], data: new Uint8Array(8) },
      { name: "empty", dtype: "F16", shape: [0, 5], data: new Uint8Array(0) },
    ], { format: "pt", note: "x" }),
    buildSafetensors([{ name: "x", dtype: "F8_E4M3", shape: [3, 3], data: new Uint8Array(9) }]),
  ].map((u) => Buffer.from(u));
}

function mdSeed(): Buffer[] {
  const md: DcpMetadata = {
    tensors: new Map([
      ["layers.0.w", { dtype: "BF16", size: [8, 4], chunks: [{ offsets: [0, 0], sizes: [4, 4] }, { offsets: [4, 0], sizes: [4, 4] }] }],
      ["norm", { dtype: "F32", size: [4], chunks: [{ offsets: [0], sizes: [4] }] }],
    ]),
    bytes: new Set(["extra"]),
    plannerData: new Map([["layers.0.w", ["layers", "0", "w"]], ["norm", ["norm"]], ["extra", ["extra"]]]),
    storage: [
      { fqn: "layers.0.w", offsets: [0, 0], index: 0, file: "__0_0.distcp", offset: 0, length: 1000 },
      { fqn: "layers.0.w", offsets: [4, 0], index: 1, file: "__1_0.distcp", offset: 0, length: 1000 },
      { fqn: "norm", offsets: [0], index: 0, file: "__0_0.distcp", offset: 1000, length: 900 },
      { fqn: "extra", file: "__0_0.distcp", offset: 1900, length: 300 },
    ],
  };
  return [encodeDcpMetadata(md)];
}

function blobSeeds(): Buffer[] {
  return [
    encodeTensorBlob("BF16", [3, 4], new Uint8Array(24).fill(7)),
    encodeTensorBlob("F32", [], new Uint8Array(4)),
    encodeByteIoBlob({ step: 3, name: "x", vals: [1, 2.5, "s"] } as never),
  ].map((u) => Buffer.from(u));
}

const reader = (b: Buffer) => async (o: number, l: number) => b.subarray(o, o + l);

// ---------------------------------------------------------------------------------------------------------------

describe(`fuzz (${RUNS} runs per property${SEED !== undefined ? `, seed ${SEED}` : ""})`, () => {
  test("seeds are valid", async () => {
    for (const s of stSeed()) await readSafetensorsHeaderFrom(reader(s), s.length, "seed.safetensors");
    for (const s of mdSeed()) decodeDcpMetadata(s, "seed.metadata");
    const [t1, t2, b] = blobSeeds();
    await parseTensorBlob(reader(t1!), t1!.length, "t1");
    await parseTensorBlob(reader(t2!), t2!.length, "t2");
    await parseByteIoBlob(reader(b!), b!.length, "b");
  });

  test("safetensors header: random bytes", { timeout }, async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 256 }), fc.boolean(), async (u, plausibleN) => {
      const b = Buffer.from(u);
      // half the time the length prefix is made plausible so the JSON parser sees the bytes
      if (plausibleN && b.length >= 8) b.writeBigUInt64LE(BigInt(Math.max(0, b.length - 8 - ((b[8] ?? 0) % 4))));
      await onlyCkptErrors("readSafetensorsHeaderFrom", () => readSafetensorsHeaderFrom(reader(b), b.length, "fuzz.safetensors"));
    }), params);
  });

  test("safetensors header: mutated valid files", { timeout }, async () => {
    await fc.assert(fc.asyncProperty(mutated(stSeed()), async (b) => {
      await onlyCkptErrors("readSafetensorsHeaderFrom", () => readSafetensorsHeaderFrom(reader(b), b.length, "fuzz.safetensors"));
    }), params);
  });

  test("safetensors header: structured hostile JSON (dtypes, shapes, offsets, metadata, nesting)", { timeout }, async () => {
    const num = fc.oneof(fc.integer(), fc.double(), fc.constantFrom("1e400", "-0", "9007199254740993", "18446744073709551616", "1.5", "-1", "0x10", "1e2"));
    const jsonNum = num.map((v) => (typeof v === "string" ? v : JSON.stringify(v) ?? "null"));
    const dtype = fc.oneof(fc.constantFrom('"F32"', '"BF16"', '"F4"', '"F6_E2M3"', '"BOOL"', '"X"', "1", "null", '""'), fc.string().map((s) => JSON.stringify(s)));
    const list = (a: fc.Arbitrary<string>) => fc.array(a, { maxLength: 5 }).map((xs) => `[${xs.join(",")}]`);
    const entry = fc.record({ dtype, shape: fc.oneof(list(jsonNum), fc.constantFrom("null", "{}", '"3"')), off: fc.oneof(list(jsonNum), fc.constantFrom("null", "[0]", "[0,0,0]")), extra: fc.boolean() })
      .map((e) => `{"dtype":${e.dtype},"shape":${e.shape},"data_offsets":${e.off}${e.extra ? ',"x":{"y":[[[]]]}' : ""}}`);
    const key = fc.oneof(fc.string(), fc.constantFrom("__metadata__", "__proto__", "constructor", "a", "a"));
    const header = fc.array(fc.tuple(key, fc.oneof(entry, fc.constantFrom('{"format":"pt"}', '{"a":1}', "null", "[]", '"s"', "1".repeat(400)))), { maxLength: 6 })
      .map((kvs) => `{${kvs.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",")}}`);
    const deep = fc.integer({ min: 1, max: 200_000 }).map((d) => `{"a":${"[".repeat(d)}${"]".repeat(d)}}`);
    await fc.assert(fc.asyncProperty(fc.oneof({ weight: 9, arbitrary: header }, { weight: 1, arbitrary: deep }), fc.nat({ max: 64 }), async (json, dataLen) => {
      const h = Buffer.from(json, "utf8");
      const pre = Buffer.alloc(8);
      pre.writeBigUInt64LE(BigInt(h.length));
      const b = Buffer.concat([pre, h, Buffer.alloc(dataLen)]);
      await onlyCkptErrors("readSafetensorsHeaderFrom", () => readSafetensorsHeaderFrom(reader(b), b.length, "fuzz.safetensors"));
    }), params);
  });

  test("safetensors index: hostile JSON", { timeout }, async () => {
    const valid = JSON.stringify({ metadata: { total_size: 10 }, weight_map: { a: "model-00001-of-00002.safetensors", b: "sub/model.safetensors" } });
    const text = fc.oneof(fc.string(), fc.tuple(fc.nat(), fc.string({ maxLength: 4 })).map(([at, s]) => valid.slice(0, at % valid.length) + s + valid.slice(at % valid.length + 1)));
    await fc.assert(fc.asyncProperty(text, async (t) => {
      await onlyCkptErrors("parseIndex", () => parseIndex(t, "fuzz.index.json"));
    }), params);
  });

  test("pickle parser: random bytes (with and without a protocol header)", { timeout }, async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 200 }), fc.boolean(), async (u, proto) => {
      const b = proto ? Buffer.concat([Buffer.from([0x80, 0x02]), u]) : Buffer.from(u);
      await onlyCkptErrors("parsePickle", () => parsePickle(b, { file: "fuzz.pkl" }));
    }), params);
  });

  test("pickle parser: opcode soup (valid opcodes, random operands)", { timeout }, async () => {
    const ops = [0x28, 0x29, 0x5d, 0x7d, 0x8f, 0x85, 0x86, 0x87, 0x74, 0x61, 0x65, 0x73, 0x75, 0x90, 0x91, 0x30, 0x31, 0x32, 0x94, 0x4e, 0x88, 0x89, 0x81, 0x92, 0x52, 0x62, 0x51, 0x93];
    const withArg = fc.oneof(
      fc.tuple(fc.constantFrom(0x4b, 0x71, 0x68, 0x43, 0x55, 0x8c), fc.uint8Array({ minLength: 1, maxLength: 4 })).map(([o, a]) => [o, ...a]),
      fc.tuple(fc.constantFrom(0x4a, 0x72, 0x6a, 0x58, 0x42, 0x54, 0x8b), fc.uint8Array({ minLength: 4, maxLength: 8 })).map(([o, a]) => [o, ...a]),
      fc.constantFrom([0x8c, 5, ...Buffer.from("torch")], [0x8c, 4, ...Buffer.from("Size")], [0x63, ...Buffer.from("torch\nSize\n")], [0x63, ...Buffer.from("collections\nOrderedDict\n")], [0x63, ...Buffer.from("os\nsystem\n")], [0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 0x80]),
    );
    const op = fc.oneof(fc.constantFrom(...ops).map((o) => [o]), withArg);
    await fc.assert(fc.asyncProperty(fc.array(op, { maxLength: 60 }), fc.boolean(), async (xs, stop) => {
      const b = Buffer.from([0x80, 0x02, ...xs.flat(), ...(stop ? [0x2e] : [])]);
      await onlyCkptErrors("parsePickle", () => parsePickle(b, { file: "fuzz.pkl" }));
    }), params);
  });

  test("DCP .metadata decoder: mutated valid metadata", { timeout }, async () => {
    await fc.assert(fc.asyncProperty(mutated(mdSeed()), async (b) => {
      await onlyCkptErrors("decodeDcpMetadata", () => decodeDcpMetadata(b, "fuzz.metadata"));
    }), params);
  });

  test("zip reader: random bytes", { timeout }, async () => {
    await fc.assert(fc.asyncProperty(fc.uint8Array({ maxLength: 300 }), fc.boolean(), async (u, magic) => {
      const b = Buffer.from(u);
      if (magic && b.length >= 4) b.writeUInt32LE(0x04034b50, 0);
      await onlyCkptErrors("readZipDirectory", () => readZipDirectory(new WindowedReader(reader(b), b.length, "fuzz.zip"), "fuzz.zip"));
    }), params);
  });

  test("zip / torch.save reader: mutated valid tensor and BYTE_IO blobs", { timeout }, async () => {
    const seeds = blobSeeds();
    await fc.assert(fc.asyncProperty(mutated(seeds), fc.boolean(), async (b, asTensor) => {
      await onlyCkptErrors("parseTensorBlob", () => (asTensor ? parseTensorBlob(reader(b), b.length, "fuzz.distcp") : parseByteIoBlob(reader(b), b.length, "fuzz.distcp")));
    }), params);
  });

  test("zip reader: reads shorter than asked (a file shrinking under the reader)", { timeout }, async () => {
    const seeds = blobSeeds();
    await fc.assert(fc.asyncProperty(fc.nat({ max: seeds.length - 1 }), fc.nat(), async (i, cut) => {
      const b = seeds[i]!;
      const limit = cut % b.length;
      const short = async (o: number, l: number) => b.subarray(Math.min(o, limit), Math.min(o + l, limit));
      await onlyCkptErrors("parseTensorBlob", () => parseTensorBlob(short, b.length, "fuzz.distcp"));
    }), params);
  });
});
