import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { DTYPES, DTYPE_BITS, numelOf, type DType } from "../src/dtypes.js";
import { CkptError } from "../src/errors.js";
import {
  parseSafetensorsHeader,
  readSafetensorsHeader,
  readSafetensorsHeaderFrom,
  readTensorBytes,
  planSafetensorsFile,
  planShardedSafetensors,
  writeSafetensors,
  buildSafetensors,
  serializeIndex,
  readIndex,
  checkIndex,
  parseStrictJson,
  type SafetensorsHeader,
} from "../src/formats/safetensors/index.js";

const dir = mkdtempSync(join(tmpdir(), "ckpt-st-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
function tmp(name = "f.safetensors"): string {
  return join(dir, `${counter++}-${name}`);
}

/** A file from a header JSON string (padded to 8 with spaces unless `raw`) and `dataLen` data bytes. */
function fileFrom(json: string | Buffer, dataLen: number, opts: { pad?: boolean; n?: bigint } = {}): Buffer {
  let h = typeof json === "string" ? Buffer.from(json, "utf8") : json;
  if (opts.pad !== false) {
    const p = Math.ceil(h.length / 8) * 8;
    h = Buffer.concat([h, Buffer.alloc(p - h.length, 0x20)]);
  }
  const pre = Buffer.alloc(8);
  pre.writeBigUInt64LE(opts.n ?? BigInt(h.length));
  const data = Buffer.alloc(dataLen);
  for (let i = 0; i < dataLen; i++) data[i] = i & 0xff;
  return Buffer.concat([pre, h, data]);
}

async function parseBytes(bytes: Buffer, label = "x.safetensors"): Promise<SafetensorsHeader> {
  return readSafetensorsHeaderFrom(async (o, l) => bytes.subarray(o, o + l), bytes.length, label);
}

async function rejects(bytes: Buffer, rule: RegExp, opts: { code?: string; tensor?: string } = {}): Promise<CkptError> {
  let err: unknown;
  try {
    await parseBytes(bytes);
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof CkptError, `expected a CkptError, got ${String(err)}`);
  assert.match(err.message, rule);
  assert.equal(err.file, "x.safetensors");
  assert.match(err.oneLine(), /x\.safetensors/);
  assert.equal(err.code, opts.code ?? "SAFETENSORS_HEADER");
  if (opts.tensor !== undefined) {
    assert.equal(err.tensor, opts.tensor);
    assert.ok(err.message.includes(`'${opts.tensor}'`), err.message);
  }
  // Also through the local-file path.
  const p = tmp();
  writeFileSync(p, bytes);
  await assert.rejects(readSafetensorsHeader(p, "x.safetensors"), (e: unknown) => e instanceof CkptError && rule.test(e.message));
  return err;
}

const entry = (dtype: string, shape: unknown[], b: unknown, e: unknown): string =>
  `{"dtype":"${dtype}","shape":${JSON.stringify(shape)},"data_offsets":[${b},${e}]}`;

// ---------------------------------------------------------------------------------------------------------------
// Worked examples (spec §4)

test("worked example: empty file is 16 bytes", async () => {
  const plan = planSafetensorsFile("e.safetensors", []);
  const expected = Buffer.from([8, 0, 0, 0, 0, 0, 0, 0, 0x7b, 0x7d, 0x20, 0x20, 0x20, 0x20, 0x20, 0x20]);
  assert.deepEqual(plan.header, expected);
  assert.equal(plan.dataStart, 16);
  assert.equal(plan.totalSize, 16);
  const p = tmp();
  await writeSafetensors(p, []);
  assert.deepEqual(readFileSync(p), expected);
  const h = await readSafetensorsHeader(p);
  assert.equal(h.headerLength, 8);
  assert.equal(h.dataStart, 16);
  assert.deepEqual(h.entries, []);
  assert.deepEqual(h.metadata, {});
});

test("worked example: attn0 F32 [1,1,2,3] is 104 bytes", async () => {
  const json = `{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}`;
  assert.equal(json.length, 65);
  const data = Buffer.alloc(24);
  for (let i = 0; i < 6; i++) data.writeFloatLE(i, i * 4);
  const expected = Buffer.concat([Buffer.from([72, 0, 0, 0, 0, 0, 0, 0]), Buffer.from(json + " ".repeat(7)), data]);
  assert.equal(expected.length, 104);

  const plan = planSafetensorsFile("a.safetensors", [{ name: "attn0", dtype: "F32", shape: [1, 1, 2, 3] }]);
  assert.equal(plan.dataStart, 80);
  assert.equal(plan.totalSize, 104);
  assert.deepEqual(plan.header, expected.subarray(0, 80));
  assert.deepEqual(plan.tensors, [{ name: "attn0", dtype: "F32", shape: [1, 1, 2, 3], offset: 80, byteLength: 24 }]);

  const p = tmp();
  await writeSafetensors(p, [{ name: "attn0", dtype: "F32", shape: [1, 1, 2, 3], data }]);
  assert.deepEqual(readFileSync(p), expected);

  const h = await readSafetensorsHeader(p, "attn.safetensors");
  assert.equal(h.file, "attn.safetensors");
  assert.equal(h.headerLength, 72);
  assert.equal(h.dataStart, 80);
  assert.equal(h.fileSize, 104);
  assert.deepEqual(h.entries, [{ name: "attn0", dtype: "F32", shape: [1, 1, 2, 3], begin: 0, end: 24 }]);
  assert.deepEqual(h.warnings, []);
  assert.deepEqual(await readTensorBytes(p, h, "attn0"), data);
  assert.deepEqual(await readTensorBytes(p, h, "attn0", 8, 8), data.subarray(8, 16));
  assert.deepEqual(await readTensorBytes(p, h, "attn0", 20), data.subarray(20));
  await assert.rejects(readTensorBytes(p, h, "attn0", 20, 8), /outside tensor/);
  await assert.rejects(readTensorBytes(p, h, "nope"), (e: unknown) => e instanceof CkptError && e.code === "MISSING_TENSOR");
});

// ---------------------------------------------------------------------------------------------------------------
// Round trips

/** A shape with `numel` elements whose last dim is even (so sub-byte dtypes make whole bytes). */
function sampleTensors(): { name: string; dtype: DType; shape: number[]; data: Uint8Array }[] {
  const out: { name: string; dtype: DType; shape: number[]; data: Uint8Array }[] = [];
  DTYPES.forEach((dtype, i) => {
    // F6 needs numel × 6 divisible by 8 → numel multiple of 4.
    const shape = dtype.startsWith("F6") ? [3, 4] : [2 + (i % 3), 4];
    const bytes = (numelOf(shape) * DTYPE_BITS[dtype]) / 8;
    const data = new Uint8Array(bytes);
    for (let j = 0; j < bytes; j++) data[j] = (j * 131 + i * 17 + 7) & 0xff;
    out.push({ name: `layers.${i}.${dtype.toLowerCase()}`, dtype, shape, data });
  });
  out.push({ name: "scalar", dtype: "F32", shape: [], data: new Uint8Array([0, 0, 0x80, 0x3f]) });
  out.push({ name: "empty", dtype: "BF16", shape: [0, 5], data: new Uint8Array(0) });
  out.push({ name: "empty2", dtype: "I8", shape: [3, 0], data: new Uint8Array(0) });
  out.push({ name: "ünïcode.名前", dtype: "U8", shape: [2], data: new Uint8Array([1, 2]) });
  return out;
}

test("round trip of every dtype (incl. BF16, F16, F8, F4, F6, scalars, empty tensors)", async () => {
  const tensors = sampleTensors();
  const p = tmp();
  await writeSafetensors(p, tensors, { format: "pt", another: "x\"y\n" });
  const h = await readSafetensorsHeader(p);
  assert.deepEqual(h.metadata, { another: "x\"y\n", format: "pt" });
  assert.equal(h.entries.length, tensors.length);
  assert.equal(h.dataStart % 8, 0);
  for (const t of tensors) {
    const e = h.entries.find((x) => x.name === t.name);
    assert.ok(e, t.name);
    assert.equal(e.dtype, t.dtype);
    assert.deepEqual(e.shape, t.shape);
    assert.deepEqual(new Uint8Array(await readTensorBytes(p, h, t.name)), t.data);
    // Alignment: every whole-byte tensor starts at a multiple of its element size.
    if (DTYPE_BITS[t.dtype] >= 8) assert.equal((h.dataStart + e.begin) % (DTYPE_BITS[t.dtype] / 8), 0, t.name);
  }
  // File order: descending dtype enum index, then name.
  const order = h.entries.map((e) => e.dtype);
  const idx = order.map((d) => DTYPES.indexOf(d));
  for (let i = 1; i < idx.length; i++) assert.ok(idx[i - 1]! >= idx[i]!, `order ${order.join(",")}`);
  // Planned bytes equal written bytes; header keys in the reference order.
  const bytes = readFileSync(p);
  assert.deepEqual(buildSafetensors(tensors, { format: "pt", another: "x\"y\n" }), bytes);
  const jsonText = bytes.subarray(8, h.dataStart).toString("utf8");
  assert.ok(jsonText.startsWith(`{"__metadata__":{"another":"x\\"y\\n","format":"pt"},"layers.21.u64":{"dtype":"U64","shape":[`), jsonText);
  assert.match(jsonText, /\}\s*$/);
});

test("writer sorts equal dtypes by byte-wise name and rejects bad input", () => {
  const plan = planSafetensorsFile("s.safetensors", [
    { name: "b", dtype: "F32", shape: [1] },
    { name: "a", dtype: "F32", shape: [1] },
    { name: "Z", dtype: "F32", shape: [1] },
    { name: "c", dtype: "BF16", shape: [1] },
    { name: "d", dtype: "F64", shape: [1] },
  ]);
  assert.deepEqual(plan.tensors.map((t) => t.name), ["d", "Z", "a", "b", "c"]);
  assert.throws(() => planSafetensorsFile("s", [{ name: "x", dtype: "F4", shape: [3] }]), /divisible by 8/);
  assert.throws(() => planSafetensorsFile("s", [{ name: "", dtype: "F32", shape: [3] }]), /empty/);
  assert.throws(() => planSafetensorsFile("s", [{ name: "a\nb", dtype: "F32", shape: [3] }]), /control character/);
  assert.throws(() => planSafetensorsFile("s", [{ name: "a", dtype: "F32", shape: [1] }, { name: "a", dtype: "F32", shape: [1] }]), /duplicate/);
  assert.throws(() => planSafetensorsFile("s", [{ name: "a", dtype: "F32", shape: [-1] }]), /non-negative/);
  assert.throws(() => planSafetensorsFile("s", [{ name: "a", dtype: "F32", shape: [2 ** 40, 2 ** 40] }]), /overflow|2\^53/);
});

// ---------------------------------------------------------------------------------------------------------------
// Sharding and the index

test("planShardedSafetensors: greedy split in given order, names, index, total_size", async () => {
  const ts = [
    { name: "embed", dtype: "BF16" as DType, shape: [10, 4] }, // 80
    { name: "l0.w", dtype: "F32" as DType, shape: [5] }, // 20
    { name: "l0.b", dtype: "F32" as DType, shape: [10] }, // 40 -> 140 > 100: new shard
    { name: "big", dtype: "U8" as DType, shape: [500] }, // 500 alone
    { name: "tail", dtype: "I64" as DType, shape: [2] }, // 16
  ];
  const r = planShardedSafetensors(ts, { maxShardBytes: 100, metadata: { format: "pt" } });
  assert.deepEqual(
    r.files.map((f) => [f.fileName, f.tensors.map((t) => t.name)]),
    [
      ["model-00001-of-00004.safetensors", ["l0.w", "embed"]],
      ["model-00002-of-00004.safetensors", ["l0.b"]],
      ["model-00003-of-00004.safetensors", ["big"]],
      ["model-00004-of-00004.safetensors", ["tail"]],
    ],
  );
  assert.ok(r.index);
  assert.equal(r.index.metadata.total_size, 80 + 20 + 40 + 500 + 16);
  assert.deepEqual(r.index.weight_map, {
    embed: "model-00001-of-00004.safetensors",
    "l0.w": "model-00001-of-00004.safetensors",
    "l0.b": "model-00002-of-00004.safetensors",
    big: "model-00003-of-00004.safetensors",
    tail: "model-00004-of-00004.safetensors",
  });
  const text = serializeIndex(r.index);
  assert.equal(
    text,
    `{
  "metadata": {
    "total_size": 656
  },
  "weight_map": {
    "big": "model-00003-of-00004.safetensors",
    "embed": "model-00001-of-00004.safetensors",
    "l0.b": "model-00002-of-00004.safetensors",
    "l0.w": "model-00001-of-00004.safetensors",
    "tail": "model-00004-of-00004.safetensors"
  }
}
`,
  );
  const parsed = await readIndex(text, "model.safetensors.index.json");
  assert.equal(parsed.totalSize, 656);
  assert.equal(parsed.weightMap.get("big"), "model-00003-of-00004.safetensors");
  assert.equal(parsed.weightMap.size, 5);

  // Write the shards and cross-check them against the index.
  const headers = new Map<string, SafetensorsHeader>();
  for (const f of r.files) {
    const p = tmp(f.fileName);
    const spec = ts.filter((t) => f.tensors.some((x) => x.name === t.name));
    await writeSafetensors(p, spec.map((t) => ({ ...t, data: new Uint8Array(f.tensors.find((x) => x.name === t.name)!.byteLength) })), { format: "pt" });
    assert.equal(readFileSync(p).length, f.totalSize);
    assert.deepEqual(readFileSync(p).subarray(0, f.dataStart), f.header);
    headers.set(f.fileName, await readSafetensorsHeader(p, f.fileName));
  }
  const ok = checkIndex(parsed, headers, "idx");
  assert.deepEqual(ok.errors, []);
  assert.deepEqual(ok.unmapped, []);
  assert.deepEqual(ok.warnings, []);
  assert.equal(ok.totalSize, 656);

  // Broken index: wrong file for one tensor, one tensor unmapped, one missing file.
  const bad = { totalSize: 656, weightMap: new Map(parsed.weightMap) };
  bad.weightMap.set("big", "model-00001-of-00004.safetensors");
  bad.weightMap.delete("tail");
  bad.weightMap.set("ghost", "model-00009-of-00004.safetensors");
  const res = checkIndex(bad, headers, "idx");
  assert.ok(res.errors.some((e) => e.tensor === "big" && /not in that file's header/.test(e.message)));
  assert.ok(res.errors.some((e) => /does not exist/.test(e.message)));
  assert.deepEqual(res.unmapped, [{ tensor: "tail", file: "model-00004-of-00004.safetensors" }]);
});

test("planShardedSafetensors: everything fits -> model.safetensors, no index; prefix option", () => {
  const r = planShardedSafetensors([{ name: "a", dtype: "F32", shape: [4] }, { name: "b", dtype: "F16", shape: [4] }], { maxShardBytes: 24 });
  assert.equal(r.files.length, 1);
  assert.equal(r.files[0]!.fileName, "model.safetensors");
  assert.equal(r.index, undefined);
  const r2 = planShardedSafetensors([{ name: "a", dtype: "F32", shape: [4] }, { name: "b", dtype: "F16", shape: [4] }], { maxShardBytes: 16, prefix: "consolidated" });
  assert.deepEqual(r2.files.map((f) => f.fileName), ["consolidated-00001-of-00002.safetensors", "consolidated-00002-of-00002.safetensors"]);
});

test("serializeIndex escapes non-ASCII like Python's json.dumps", () => {
  const s = serializeIndex({ metadata: { total_size: 1 }, weight_map: { "é😀": "model-00001-of-00001.safetensors" } });
  assert.ok(s.includes(`"\\u00e9\\ud83d\\ude00": "model-00001-of-00001.safetensors"`), s);
});

test("readIndex rejects unsafe or malformed weight_map entries and duplicate keys", async () => {
  const idx = (wm: string) => `{"metadata":{"total_size":1},"weight_map":${wm}}`;
  const bad: [string, RegExp][] = [
    [idx(`{"a":"/etc/model.safetensors"}`), /absolute/],
    [idx(`{"a":"C:/model.safetensors"}`), /absolute/],
    [idx(`{"a":"../model.safetensors"}`), /'\.\.'/],
    [idx(`{"a":"sub/../../model.safetensors"}`), /'\.\.'/],
    [idx(`{"a":"sub\\\\model.safetensors"}`), /backslash/],
    [idx(`{"a":"model.bin"}`), /\.safetensors/],
    [idx(`{"a":"model-1.safetensors","a":"model-2.safetensors"}`), /duplicate key 'a'/],
    [idx(`{"a":1}`), /not a file name/],
    [idx(`[]`), /weight_map is an array/],
    [`{"metadata":{"total_size":-1},"weight_map":{}}`, /non-negative/],
    [`{"metadata":{"total_size":1.5},"weight_map":{}}`, /non-integer/],
    [`{"weight_map":{}`, /not valid JSON/],
    [`[]`, /not a JSON object/],
  ];
  for (const [text, re] of bad) {
    await assert.rejects(readIndex(text, "i.json"), (e: unknown) => e instanceof CkptError && e.code === "INDEX" && e.file === "i.json" && re.test(e.message), text);
  }
  const ok = await readIndex(`{"metadata":{"total_size":3,"other":"x"},"weight_map":{"a":"sub/m.safetensors"}}`, "i.json");
  assert.equal(ok.weightMap.get("a"), "sub/m.safetensors");
  const noMeta = await readIndex(`{"weight_map":{}}`, "i.json");
  assert.equal(noMeta.totalSize, undefined);
});

// ---------------------------------------------------------------------------------------------------------------
// Malformed headers: one test per rule

test("reject: file shorter than 8 bytes", async () => {
  await rejects(Buffer.from([1, 0, 0]), /rule: file length ≥ 8/);
  await rejects(Buffer.alloc(0), /rule: file length ≥ 8/);
});

test("reject: N > 100,000,000", async () => {
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(100_000_001n);
  await rejects(b, /rule: N ≤ 100,000,000/);
  b.writeBigUInt64LE(0xffffffffffffffffn);
  await rejects(b, /rule: N ≤ 100,000,000/);
});

test("reject: 8 + N > file size", async () => {
  await rejects(fileFrom("{}", 0, { n: 64n }), /rule: 8 \+ N ≤ file length/);
});

test("reject: invalid UTF-8", async () => {
  const j = Buffer.concat([Buffer.from('{"a'), Buffer.from([0xff, 0xfe]), Buffer.from(`":${entry("U8", [0], 0, 0)}}`)]);
  await rejects(fileFrom(j, 0), /rule: header is valid UTF-8/);
});

test("reject: invalid JSON", async () => {
  await rejects(fileFrom(`{"a":${entry("U8", [1], 0, 1)},}`, 1), /rule: header is valid JSON/);
  await rejects(fileFrom(`{"a":${entry("U8", [1], 0, 1)}} x`, 1), /rule: header is valid JSON/);
  await rejects(fileFrom(Buffer.from("{}\0\0\0\0\0\0"), 0, { pad: false }), /rule: header is valid JSON/);
});

test("accept: leading/trailing JSON whitespace, unpadded header; unknown entry keys warn", async () => {
  const h = await parseBytes(fileFrom(` \r\n\t{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"extra":[1]}}\n`, 2, { pad: false }));
  assert.deepEqual(h.entries, [{ name: "a", dtype: "U8", shape: [2], begin: 0, end: 2 }]);
  assert.equal(h.warnings.length, 1);
  assert.match(h.warnings[0]!, /unknown key 'extra'/);
});

test("reject: header not an object", async () => {
  await rejects(fileFrom(`[]`, 0), /not a JSON object \(rule: header is a JSON object\)/);
  await rejects(fileFrom(`"str"`, 0), /not a JSON object/);
  await rejects(fileFrom(`{"a":[1,2]}`, 0), /rule: every key other than __metadata__ is a tensor entry/, { tensor: "a" });
});

test("reject: duplicate key", async () => {
  await rejects(fileFrom(`{"a":${entry("U8", [1], 0, 1)},"a":${entry("U8", [1], 0, 1)}}`, 1), /duplicate key 'a' \(rule: header keys are unique\)/);
  await rejects(fileFrom(`{"__metadata__":{"k":"1","k":"2"},"a":${entry("U8", [1], 0, 1)}}`, 1), /duplicate key 'k'/);
});

test("reject: unknown dtype", async () => {
  await rejects(fileFrom(`{"w":${entry("F128", [1], 0, 16)}}`, 16), /unknown dtype "F128" \(rule: dtype is a known code/, { tensor: "w" });
});

test("reject: negative shape dimension", async () => {
  await rejects(fileFrom(`{"w":${entry("U8", [-1], 0, 0)}}`, 0), /negative -1 \(rule: shape is a list of unsigned integers/, { tensor: "w" });
});

test("reject: fractional shape dimension", async () => {
  await rejects(fileFrom(`{"w":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}`, 1), /non-integer 1\.5 \(rule: shape/, { tensor: "w" });
  await rejects(fileFrom(`{"w":{"dtype":"U8","shape":[1e0],"data_offsets":[0,1]}}`, 1), /non-integer 1e0/, { tensor: "w" });
});

test("reject: shape dimension beyond 2^53", async () => {
  await rejects(fileFrom(`{"w":{"dtype":"U8","shape":[9007199254740993],"data_offsets":[0,1]}}`, 1), /beyond 2\^53/, { tensor: "w" });
  await rejects(fileFrom(`{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}}`, 1), /beyond 2\^53 .*rule: data_offsets/, { tensor: "w" });
});

test("reject: huge shape overflows numel × bits", async () => {
  await rejects(fileFrom(`{"w":${entry("F32", [2 ** 40, 2 ** 40], 0, 8)}}`, 8), /overflows 64 bits \(rule: numel and numel × bits must not overflow\)/, { tensor: "w" });
  // numel fits in u64 but numel × 64 bits does not.
  await rejects(fileFrom(`{"w":${entry("F64", [2 ** 30, 2 ** 30, 2 ** 3], 0, 8)}}`, 8), /numel × 64 bits overflows/, { tensor: "w" });
});

test("reject: offsets with a gap", async () => {
  await rejects(fileFrom(`{"a":${entry("U8", [4], 0, 4)},"b":${entry("U8", [4], 6, 10)}}`, 10), /a gap of 2 bytes \(rule: offsets are contiguous/, { tensor: "b" });
});

test("reject: overlapping offsets", async () => {
  await rejects(fileFrom(`{"a":${entry("U8", [4], 0, 4)},"b":${entry("U8", [4], 2, 6)}}`, 6), /an overlap of 2 bytes/, { tensor: "b" });
});

test("reject: first offset not 0", async () => {
  await rejects(fileFrom(`{"a":${entry("U8", [4], 4, 8)}}`, 8), /begins at 4, not 0 \(rule: offsets start at 0/, { tensor: "a" });
});

test("reject: END < BEGIN", async () => {
  await rejects(fileFrom(`{"a":${entry("U8", [0], 0, 0)},"b":${entry("U8", [0], 4, 0)}}`, 0), /END < BEGIN \(rule: END ≥ BEGIN\)/, { tensor: "b" });
});

test("reject: byte size ≠ numel × dtype size", async () => {
  const e = await rejects(fileFrom(`{"w":${entry("F32", [2, 3], 0, 10)}}`, 10), /data_offsets \[0, 10\] span 10 bytes but shape \[2,3\] × F32 needs 24 \(rule: byte size = numel × dtype size\)/, { tensor: "w" });
  assert.match(e.message, /^safetensors header: tensor 'w': /);
});

test("reject: trailing bytes after the data", async () => {
  await rejects(fileFrom(`{"w":${entry("U8", [4], 0, 4)}}`, 7), /3 trailing bytes \(rule: 8 \+ N \+ last END = file length\)/, { code: "SAFETENSORS_DATA" });
});

test("reject: truncated data", async () => {
  await rejects(fileFrom(`{"w":${entry("U8", [4], 0, 4)}}`, 1), /truncated by 3 bytes \(rule: 8 \+ N \+ last END = file length\)/, { code: "SAFETENSORS_DATA", tensor: "w" });
});

test("reject: __metadata__ with a non-string value", async () => {
  await rejects(fileFrom(`{"__metadata__":{"format":"pt","n":1},"w":${entry("U8", [1], 0, 1)}}`, 1), /__metadata__\['n'\] is the number 1, not a string \(rule: __metadata__ values are strings\)/);
  await rejects(fileFrom(`{"__metadata__":["x"]}`, 0), /rule: __metadata__ maps strings to strings/);
});

test("reject: empty tensor name and control characters in names", async () => {
  await rejects(fileFrom(`{"":${entry("U8", [1], 0, 1)}}`, 1), /rule: tensor names are non-empty/);
  await rejects(fileFrom(`{"a\\u0001b":${entry("U8", [1], 0, 1)}}`, 1), /rule: tensor names have no control characters/);
});

test("reject: sub-byte dtype with a misaligned size (F4 with odd numel)", async () => {
  await rejects(fileFrom(`{"q":${entry("F4", [3], 0, 2)}}`, 2), /not a whole number of bytes \(rule: numel × bits divisible by 8\)/, { tensor: "q" });
  // Even numel is fine.
  const h = await parseBytes(fileFrom(`{"q":${entry("F4", [2, 4], 0, 4)}}`, 4));
  assert.equal(h.entries[0]!.end, 4);
});

test("reject: bad data_offsets and missing fields", async () => {
  await rejects(fileFrom(`{"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}}`, 1), /not \[BEGIN, END\]/, { tensor: "w" });
  await rejects(fileFrom(`{"w":{"dtype":"U8","shape":[1]}}`, 1), /data_offsets is missing/, { tensor: "w" });
  await rejects(fileFrom(`{"w":{"shape":[1],"data_offsets":[0,1]}}`, 1), /dtype is missing/, { tensor: "w" });
  await rejects(fileFrom(`{"w":{"dtype":"U8","shape":"1","data_offsets":[0,1]}}`, 1), /shape is a string/, { tensor: "w" });
});

test("zero-length tensors may share an offset; entries come back in offset order", async () => {
  const json = `{"z":${entry("F32", [0], 4, 4)},"b":${entry("U8", [4], 4, 8)},"a":${entry("U8", [4], 0, 4)},"y":${entry("F32", [0], 4, 4)}}`;
  const h = await parseBytes(fileFrom(json, 8));
  assert.deepEqual(h.entries.map((e) => e.name), ["a", "z", "y", "b"]);
});

test("strict JSON scanner keeps big integers exact and rejects lone surrogates", () => {
  const v = parseStrictJson(`{"n":[18446744073709551615, -0.5e3], "s":"\\ud83d\\ude00"}`) as Map<string, unknown>;
  assert.equal(String((v.get("n") as unknown[])[0]), "18446744073709551615");
  assert.equal(v.get("s"), "😀");
  assert.throws(() => parseStrictJson(`"\\ud83d"`), /surrogate/);
  assert.throws(() => parseStrictJson(`"a\nb"`), /control character/);
  assert.throws(() => parseStrictJson(`01`), /invalid number|trailing/);
  assert.throws(() => parseStrictJson("[".repeat(200) + "]".repeat(200)), /too deep/);
  const proto = parseStrictJson(`{"__proto__":{"x":"1"}}`) as Map<string, unknown>;
  assert.ok(proto.has("__proto__"));
});

test("header reads use only the 8-byte prefix and the N header bytes", async () => {
  const big = buildSafetensors([{ name: "w", dtype: "U8", shape: [1 << 20], data: new Uint8Array(1 << 20) }]);
  const reads: [number, number][] = [];
  const h = await readSafetensorsHeaderFrom(async (o, l) => (reads.push([o, l]), big.subarray(o, o + l)), big.length, "m");
  assert.deepEqual(reads, [[0, 8], [8, h.headerLength]]);
  // parseSafetensorsHeader directly
  const h2 = parseSafetensorsHeader(big.subarray(8, h.dataStart), h.headerLength, big.length, "m");
  assert.deepEqual(h2.entries, h.entries);
});
