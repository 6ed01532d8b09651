// Unit tests for the pickle reader/writer, torch.save blobs and DCP metadata (docs/dcp-format.md).
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { crc32 as zcrc32 } from "node:zlib";
import { CkptError } from "../src/errors.js";
import {
  type DcpMetadata, decodeDcpMetadata, encodeDcpMetadata, openDcp, writeDcp, writeSingleFileDcp,
} from "../src/formats/dcp/index.js";
import { PyDict, isCall, isObj, parsePickle } from "../src/formats/pickle/reader.js";
import { PickleWriter } from "../src/formats/pickle/writer.js";
import {
  crc32Combine, encodeArchive, encodeByteIoBlob, encodeTensorBlob, layoutTensorBlob, parseByteIoBlob, parseTensorBlob,
} from "../src/formats/torchsave/index.js";

const readerOf = (buf: Buffer) => async (off: number, len: number) => buf.subarray(off, off + len);

// bf16 LE 1..6: 80 3F 00 40 40 40 80 40 A0 40 C0 40
const W_DATA = Buffer.from([0x80, 0x3f, 0x00, 0x40, 0x40, 0x40, 0x80, 0x40, 0xa0, 0x40, 0xc0, 0x40]);

function expectCode(code: string, re?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof CkptError, `expected CkptError, got ${String(e)}`);
    assert.equal(e.code, code);
    if (re) assert.match(e.message, re);
    return true;
  };
}

test("§13 blob: 938 bytes, offsets and CRCs as in the spec", () => {
  const l = layoutTensorBlob("BF16", [2, 3]);
  assert.equal(l.totalLength, 938);
  assert.equal(l.dataOffset, 448);
  assert.equal(l.dataLength, 12);
  assert.equal(l.tailOffset, 460);
  assert.equal(l.head.length, 448);
  const blob = encodeTensorBlob("BF16", [2, 3], W_DATA);
  assert.equal(blob.length, 938);
  const u32 = (o: number) => blob.readUInt32LE(o);
  // local header of data.pkl
  assert.deepEqual([...blob.subarray(0, 10)], [0x50, 0x4b, 0x03, 0x04, 0, 0, 0x08, 0x08, 0, 0]);
  assert.equal(blob.readUInt16LE(26), 16);
  assert.equal(blob.readUInt16LE(28), 18);
  assert.equal(blob.subarray(30, 46).toString(), "archive/data.pkl");
  assert.deepEqual([...blob.subarray(46, 50)], [0x46, 0x42, 0x0e, 0x00]);
  assert.ok(blob.subarray(50, 64).every((b) => b === 0x5a));
  // data.pkl 133 bytes at 64
  const pkl = blob.subarray(64, 197);
  assert.equal(pkl.subarray(0, 2).toString("hex"), "8002");
  assert.equal(pkl.subarray(2, 35).toString("latin1"), "ctorch._utils\n_rebuild_tensor_v2\n");
  assert.equal(pkl.subarray(49, 72).toString("latin1"), "ctorch\nBFloat16Storage\n");
  assert.equal(pkl.subarray(86, 92).toString("hex"), "4b0674514b00");
  assert.equal(pkl.subarray(92, 103).toString("hex"), "4b024b03864b034b018689");
  assert.equal(pkl.subarray(130).toString("hex"), "74522e");
  // descriptors and CRCs
  const dd = (o: number, crc: number, size: number) => {
    assert.equal(u32(o), 0x08074b50, `descriptor at ${o}`);
    assert.equal(u32(o + 4), crc, `crc at ${o}`);
    assert.equal(u32(o + 8), size);
    assert.equal(u32(o + 12), size);
  };
  dd(197, 0x5d057702, 133);
  assert.equal(u32(213), 0x04034b50);
  assert.equal(blob.readUInt16LE(213 + 28), 60);
  assert.equal(blob.subarray(320, 326).toString(), "little");
  dd(326, 0x19e33d85, 6);
  assert.equal(u32(342), 0x04034b50);
  assert.equal(blob.readUInt16LE(342 + 28), 62);
  assert.deepEqual(blob.subarray(448, 460), W_DATA);
  dd(460, 0xd510ec4c, 12);
  assert.equal(u32(476), 0x04034b50);
  assert.equal(blob.readUInt16LE(476 + 28), 55);
  assert.equal(blob.subarray(576, 578).toString("hex"), "330a");
  dd(578, 0x55679ed1, 2);
  // central directory
  const cds = [594, 656, 719, 779];
  const lhos = [0, 213, 342, 476];
  cds.forEach((o, i) => {
    assert.equal(u32(o), 0x02014b50);
    assert.equal(u32(o + 42), lhos[i]);
  });
  assert.equal(u32(840), 0x06064b50);
  assert.equal(Number(blob.readBigUInt64LE(840 + 32)), 4);
  assert.equal(Number(blob.readBigUInt64LE(840 + 40)), 246);
  assert.equal(Number(blob.readBigUInt64LE(840 + 48)), 594);
  assert.equal(u32(896), 0x07064b50);
  assert.equal(Number(blob.readBigUInt64LE(896 + 8)), 840);
  assert.equal(u32(916), 0x06054b50);
  assert.equal(blob.subarray(916 + 12, 916 + 20).toString("hex"), "f600000052020000");
  // head + data + tail == whole blob
  assert.deepEqual(Buffer.concat([l.head, W_DATA, l.tail(zcrc32(W_DATA))]), blob);
});

function exampleMetadata(): DcpMetadata {
  return {
    tensors: new Map([["w", { dtype: "BF16", size: [2, 3], chunks: [{ offsets: [0, 0], sizes: [2, 3] }] }]]),
    bytes: new Set(),
    plannerData: new Map([["w", ["w"]]]),
    storage: [{ fqn: "w", offsets: [0, 0], index: 0, file: "__0_0.distcp", offset: 0, length: 938 }],
  };
}

test("§13 .metadata: 866 bytes with the spec's section offsets", () => {
  const b = encodeDcpMetadata(exampleMetadata());
  assert.equal(b.length, 866);
  const at = (o: number, s: string) => assert.equal(b.subarray(o, o + s.length).toString("latin1"), s, `at ${o}`);
  assert.equal(b.subarray(0, 2).toString("hex"), "8002");
  at(54, "X\x13\x00\x00\x00state_dict_metadata");
  at(166, "ctorch.distributed.checkpoint.metadata\nTensorProperties\n");
  assert.equal(b[361], 0x62);
  at(362, "X\x04\x00\x00\x00size");
  at(390, "X\x06\x00\x00\x00chunks");
  at(533, "X\x0c\x00\x00\x00planner_data");
  at(566, "X\x0c\x00\x00\x00storage_data");
  assert.notEqual(b.indexOf(Buffer.from("4daa03", "hex")), -1);
  at(823, "X\x0c\x00\x00\x00storage_meta");
  assert.equal(b[823 + 17], 0x4e);
  at(841, "X\x07\x00\x00\x00version");
  assert.equal(b.subarray(863).toString("hex"), "75622e");
  // decodes back
  const md = decodeDcpMetadata(b, ".metadata");
  assert.deepEqual(md, exampleMetadata());
});

test("metadata round trip: several tensors, 0-dim, multi-chunk, BYTE_IO, nested planner path, big ints", () => {
  const md: DcpMetadata = {
    tensors: new Map([
      ["model.a", { dtype: "F32", size: [4, 3], chunks: [{ offsets: [0, 0], sizes: [2, 3] }, { offsets: [2, 0], sizes: [2, 3] }] }],
      ["scalar", { dtype: "I64", size: [], chunks: [{ offsets: [], sizes: [] }] }],
      ["f8", { dtype: "F8_E4M3", size: [70000], chunks: [{ offsets: [0], sizes: [70000] }] }],
    ]),
    bytes: new Set(["step"]),
    plannerData: new Map([["model.a", ["model", "a"]], ["scalar", ["scalar"]], ["f8", ["f8"]], ["step", ["step"]]]),
    storage: [
      { fqn: "model.a", offsets: [0, 0], index: 0, file: "__0_0.distcp", offset: 0, length: 1000 },
      { fqn: "model.a", offsets: [2, 0], index: 1, file: "__1_0.distcp", offset: 5_000_000_000, length: 1000 },
      { fqn: "scalar", offsets: [], index: 0, file: "__0_0.distcp", offset: 1000, length: 900 },
      { fqn: "f8", offsets: [0], index: 0, file: "__0_0.distcp", offset: 1900, length: 70900 },
      { fqn: "step", file: "__0_0.distcp", offset: 72800, length: 500 },
    ],
  };
  const back = decodeDcpMetadata(encodeDcpMetadata(md), "x");
  assert.deepEqual(back, md);
});

test("encode rejects storage paths that are not plain file names", () => {
  for (const bad of ["../x.distcp", "a/b.distcp", "..", ""]) {
    const md = exampleMetadata();
    md.storage[0]!.file = bad;
    assert.throws(() => encodeDcpMetadata(md), expectCode("DCP"));
  }
});

test("decode rejects '..' paths written by someone else", () => {
  const b = encodeDcpMetadata(exampleMetadata());
  const i = b.indexOf("__0_0.distcp");
  const evil = Buffer.from(b);
  evil.write("../0_0.distc", i, "latin1");
  assert.throws(() => decodeDcpMetadata(evil, "m"), expectCode("DCP", /plain file name/));
});

test("pickle reader: protocol 4 style opcodes (FRAME, MEMOIZE, SHORT_BINUNICODE, STACK_GLOBAL, BINGET)", () => {
  // {'a': [1, 2**70, -1, 1.5, b'xy', ('t',)], 'a2': <memo of the list>} in hand-assembled protocol-4 form
  const parts: number[] = [0x80, 4, 0x95, ...Buffer.alloc(8)];
  const sbu = (s: string) => [0x8c, s.length, ...Buffer.from(s)];
  parts.push(0x7d, 0x94); // EMPTY_DICT MEMOIZE(0)
  parts.push(0x28, ...sbu("a"), 0x94, 0x5d, 0x94, 0x28); // MARK 'a' [ (
  parts.push(0x4b, 1);
  parts.push(0x8a, 9, ...Buffer.from("000000000000000040", "hex")); // 2**70
  parts.push(0x4a, 0xff, 0xff, 0xff, 0xff);
  parts.push(0x47, ...Buffer.from("3ff8000000000000", "hex"));
  parts.push(0x43, 2, 0x78, 0x79);
  parts.push(...sbu("t"), 0x85);
  parts.push(0x65); // APPENDS
  parts.push(...sbu("a2"), 0x68, 2); // BINGET 2 = the list
  parts.push(0x75, 0x2e);
  const v = parsePickle(Buffer.from(parts));
  assert.ok(v instanceof PyDict);
  const a = v.get("a") as unknown[];
  assert.deepEqual(a.slice(0, 4), [1, 2n ** 70n, -1, 1.5]);
  assert.deepEqual(a[4], new Uint8Array([0x78, 0x79]));
  assert.deepEqual(a[5], { $tuple: ["t"] });
  assert.equal(v.get("a2"), a);
  // STACK_GLOBAL of an allowed name
  const sg = Buffer.from([0x80, 4, ...sbu("torch"), ...sbu("Size"), 0x93, 0x29, 0x85, 0x52, 0x2e]);
  const size = parsePickle(sg);
  assert.ok(isCall(size, "torch.Size"));
});

test("pickle reader: dict keys are hashed by value, including object keys", () => {
  const midx = (w: PickleWriter, fqn: string, off: number) =>
    w.obj("torch.distributed.checkpoint.metadata", "MetadataIndex", () => {
      w.str("fqn").str(fqn);
      w.str("offset").reduce("torch", "Size", 1, () => w.tuple(2, () => w.int(0).int(off)));
    });
  const w = new PickleWriter().proto(2);
  w.dict(() => {
    midx(w, "w", 4).int(7);
    midx(w, "w", 8).int(8);
    w.tuple(2, () => w.str("x").int(1)).int(9);
  });
  const d = parsePickle(w.stop().bytes()) as PyDict;
  assert.equal(d.size, 3);
  const k = (fqn: string, off: number) => {
    const kw = new PickleWriter().proto(2);
    return parsePickle(midx(kw, fqn, off).stop().bytes());
  };
  assert.ok(isObj(k("w", 4)));
  assert.equal(d.get(k("w", 4)), 7);
  assert.equal(d.get(k("w", 8)), 8);
  assert.equal(d.get(k("v", 4)), undefined);
  assert.equal(d.get({ $tuple: ["x", 1] }), 9);
  assert.equal(d.get({ $tuple: ["x", true] }), 9); // True == 1
  // a list as a key is unhashable
  assert.throws(() => parsePickle(Buffer.from([0x80, 2, 0x7d, 0x5d, 0x4b, 1, 0x73, 0x2e])), expectCode("PICKLE", /unhashable/));
});

test("hostile pickles: unexpected global, unknown opcode, truncation, bad memo, stack abuse", () => {
  const g = Buffer.from("\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", "latin1");
  assert.throws(() => parsePickle(g, { file: "evil.pkl" }), (e: unknown) => {
    assert.ok(e instanceof CkptError);
    assert.equal(e.code, "PICKLE");
    assert.match(e.message, /unexpected global 'os\.system' at byte 2/);
    assert.equal(e.file, "evil.pkl");
    return true;
  });
  const sg = Buffer.from("\x80\x04\x8c\x08builtins\x8c\x04eval\x93.", "latin1");
  assert.throws(() => parsePickle(sg), expectCode("PICKLE", /unexpected global 'builtins\.eval'/));
  assert.throws(() => parsePickle(Buffer.from([0x80, 2, 0x4b, 1, 0x49, 0x2e])), expectCode("PICKLE", /opcode 0x49 at byte 4/));
  assert.throws(() => parsePickle(Buffer.from([0x80, 2, 0x58, 10, 0, 0, 0, 0x61])), expectCode("PICKLE", /truncated/));
  assert.throws(() => parsePickle(Buffer.from([0x80, 2, 0x4b, 1])), expectCode("PICKLE", /truncated/));
  assert.throws(() => parsePickle(Buffer.from([0x80, 2, 0x68, 3, 0x2e])), expectCode("PICKLE", /memo/));
  assert.throws(() => parsePickle(Buffer.from([0x80, 2, 0x30, 0x2e])), expectCode("PICKLE", /underflow/));
  assert.throws(() => parsePickle(Buffer.from([0x80, 2, 0x4b, 1, 0x4b, 2, 0x2e])), expectCode("PICKLE", /2 items/));
  const deep = Buffer.concat([Buffer.from([0x80, 2]), Buffer.alloc(100, 0x5d)]);
  assert.throws(() => parsePickle(deep, { maxStack: 50 }), expectCode("PICKLE", /stack exceeds/));
  const memo = Buffer.concat([Buffer.from([0x80, 2, 0x4e]), Buffer.from(Array.from({ length: 20 }, (_, i) => [0x71, i]).flat())]);
  assert.throws(() => parsePickle(memo, { maxMemo: 10 }), expectCode("PICKLE", /memo exceeds/));
  // REDUCE with a non-global callable is refused
  assert.throws(() => parsePickle(Buffer.from([0x80, 2, 0x4b, 1, 0x29, 0x52, 0x2e])), expectCode("PICKLE", /non-global/));
});

test("tensor blob round trip for several dtypes/shapes, and v3 dtypes", async () => {
  const cases: [Parameters<typeof encodeTensorBlob>[0], number[]][] = [
    ["BF16", [2, 3]], ["F32", [5]], ["I64", []], ["F8_E4M3", [3, 4]], ["U16", [2]], ["BOOL", [0, 4]], ["F64", [1, 1, 2]],
  ];
  for (const [dtype, shape] of cases) {
    const l = layoutTensorBlob(dtype, shape);
    const data = Buffer.alloc(l.dataLength, 0x3c);
    const blob = encodeTensorBlob(dtype, shape, data);
    assert.equal(blob.length, l.totalLength);
    assert.equal(l.dataOffset % 64, 0);
    const info = await parseTensorBlob(readerOf(blob), blob.length, "t");
    assert.equal(info.dtype, dtype);
    assert.deepEqual(info.shape, shape);
    assert.equal(info.storageOffset, 0);
    assert.equal(info.dataOffset, l.dataOffset);
    assert.equal(info.dataLength, l.dataLength);
  }
  const v3 = encodeTensorBlob("F8_E4M3", [3], Buffer.alloc(3));
  assert.ok(v3.includes("_rebuild_tensor_v3"));
  assert.ok(v3.includes("ctorch.storage\nUntypedStorage\n"));
  assert.ok(v3.includes("ctorch\nfloat8_e4m3fn\n"));
});

test("crc32Combine matches zlib over random splits", () => {
  const data = Buffer.from(Array.from({ length: 10000 }, (_, i) => (i * 7919 + 13) & 0xff));
  const whole = zcrc32(data) >>> 0;
  for (const cut of [0, 1, 63, 4096, 9999, 10000]) {
    const a = data.subarray(0, cut);
    const b = data.subarray(cut);
    assert.equal(crc32Combine(zcrc32(a), zcrc32(b), b.length), whole, `cut ${cut}`);
  }
  // three pieces
  const p = [data.subarray(0, 100), data.subarray(100, 5000), data.subarray(5000)];
  let c = zcrc32(p[0]!);
  for (const x of p.slice(1)) c = crc32Combine(c, zcrc32(x), x.length);
  assert.equal(c, whole);
});

test("BYTE_IO blob: int 7 is 80 02 4B 07 2E; round trips plain values", async () => {
  const b = encodeByteIoBlob(7);
  assert.ok(b.includes(Buffer.from("80024b072e", "hex")));
  assert.equal(await parseByteIoBlob(readerOf(b), b.length, "x"), 7);
  const v = await parseByteIoBlob(readerOf(encodeByteIoBlob({ step: 10, lr: [0.5, null, true, "s"] })), encodeByteIoBlob({ step: 10, lr: [0.5, null, true, "s"] }).length, "y");
  assert.ok(v instanceof PyDict);
  assert.equal(v.get("step"), 10);
  assert.deepEqual(v.get("lr"), [0.5, null, true, "s"]);
  await assert.rejects(parseTensorBlob(readerOf(b), b.length, "x"), expectCode("PICKLE", /single tensor/));
});

test("bad zips are rejected", async () => {
  const good = encodeTensorBlob("F32", [4], Buffer.alloc(16));
  const parse = (b: Buffer) => parseTensorBlob(readerOf(b), b.length, "blob");
  await parse(good);
  const cd = good.readUInt32LE(good.length - 6);
  const mutate = (f: (b: Buffer) => void) => {
    const b = Buffer.from(good);
    f(b);
    return b;
  };
  // local header offset out of range
  await assert.rejects(parse(mutate((b) => b.writeUInt32LE(0x7fffffff, cd + 42))), expectCode("ZIP", /out of range/));
  // overlapping entries: data/0 entry points at data.pkl's header
  const cd3 = cd + 62 + 63; // third entry (data/0)
  await assert.rejects(parse(mutate((b) => b.writeUInt32LE(0, cd3 + 42))), expectCode("ZIP"));
  // compressed
  await assert.rejects(parse(mutate((b) => b.writeUInt16LE(8, cd + 10))), expectCode("ZIP", /compressed/));
  // central directory offset out of range (in zip64 EOCD)
  const z64 = good.length - 22 - 20 - 56;
  await assert.rejects(parse(mutate((b) => b.writeBigUInt64LE(1n << 40n, z64 + 48))), expectCode("ZIP", /out of range/));
  // truncated blob
  await assert.rejects(parse(good.subarray(0, good.length - 10)), expectCode("ZIP"));
  // not a zip
  await assert.rejects(parse(Buffer.alloc(100)), expectCode("ZIP", /not a zip/));
  // name not in a subfolder: rename first entry in CD and local header
  await assert.rejects(
    parse(mutate((b) => { b.write("archive_data.pkl", cd + 46, "latin1"); b.write("archive_data.pkl", 30, "latin1"); })),
    expectCode("ZIP", /not in a subdirectory/),
  );
  // missing version: rename the version record
  const cd4 = cd + 62 + 63 + 60;
  const lh4 = good.readUInt32LE(cd4 + 42);
  await assert.rejects(
    parse(mutate((b) => { b.write("archive/versioX", cd4 + 46, "latin1"); b.write("archive/versioX", lh4 + 30, "latin1"); })),
    expectCode("ZIP", /no 'version'/),
  );
  // TorchScript
  const ts = encodeArchive([
    { name: "data.pkl", data: Buffer.from([0x80, 2, 0x4e, 0x2e]) },
    { name: "constants.pkl", data: Buffer.from([0x80, 2, 0x4e, 0x2e]) },
    { name: "version", data: Buffer.from("3\n") },
  ]);
  await assert.rejects(parse(ts), expectCode("ZIP", /TorchScript/));
});

test("writeDcp + openDcp: chunks, files, offsets; bad ranges detected", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-dcp-"));
  try {
    const a = Buffer.from(Array.from({ length: 24 }, (_, i) => i));
    await writeDcp(dir, {
      tensors: [
        { fqn: "a", dtype: "U8", size: [4, 6], chunks: [
          { offsets: [0, 0], sizes: [3, 6], data: a.subarray(0, 18), file: "__0_0.distcp" },
          { offsets: [3, 0], sizes: [1, 6], data: a.subarray(18), file: "__1_0.distcp" },
          { offsets: [4, 0], sizes: [0, 6], data: Buffer.alloc(0), file: "__2_0.distcp" },
        ] },
        { fqn: "s", dtype: "F32", size: [], chunks: [{ offsets: [], sizes: [], data: Buffer.from([0, 0, 0x80, 0x3f]) }] },
      ],
      bytes: [{ fqn: "step", value: 3 }],
    });
    const { metadata, chunks } = await openDcp(dir);
    assert.deepEqual([...metadata.bytes], ["step"]);
    assert.equal(chunks.length, 3);
    for (const c of chunks) {
      const f = readFileSync(join(dir, c.file));
      assert.ok(c.contiguous);
      const got = f.subarray(c.dataOffset, c.dataOffset + c.dataLength);
      if (c.fqn === "a") assert.deepEqual(got, a.subarray(c.offsets[0]! * 6, c.offsets[0]! * 6 + c.sizes[0]! * 6));
      else assert.deepEqual(got, Buffer.from([0, 0, 0x80, 0x3f]));
    }
    // truncate a file: offsets now outside
    const f1 = readFileSync(join(dir, "__1_0.distcp"));
    writeFileSync(join(dir, "__1_0.distcp"), f1.subarray(0, f1.length - 1));
    await assert.rejects(openDcp(dir), expectCode("DCP", /outside/));
    writeFileSync(join(dir, "__1_0.distcp"), f1);
    // single-file helper
    const d2 = join(dir, "single");
    await writeSingleFileDcp(d2, [{ fqn: "w", dtype: "BF16", shape: [2, 3], data: W_DATA }]);
    assert.equal(readFileSync(join(d2, "__0_0.distcp")).length, 938);
    assert.deepEqual(readFileSync(join(d2, ".metadata")), encodeDcpMetadata(exampleMetadata()));
    const o = await openDcp(d2);
    assert.equal(o.chunks[0]!.dataOffset, 448);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Fixtures produced by real PyTorch (see the test names): torch.save of a transposed bf16 tensor, and the .metadata
// of dcp.save({w: bf16[2,3], m: {"x.y": float8_e4m3fn[0,2]}, step: 3}) under 2.6 (protocol 4) and 2.14 (protocol 5).

const TRIXIE_BLOB = Buffer.from([
  "504b03040000080800000000000000000000000000000000000010001200617263686976652f646174612e706b6c46420e005a5a5a5a5a5a",
  "5a5a5a5a5a5a5a5a800263746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71002828580700000073746f72",
  "616765710163746f7263680a42466c6f6174313653746f726167650a71025801000000307103580300000063707571044b06747105514b00",
  "4b034b028671064b014b038671078963636f6c6c656374696f6e730a4f726465726564446963740a71082952710974710a52710b2e504b07",
  "082e4a2fe99d0000009d000000504b03040000080800000000000000000000000000000000000011002400617263686976652f627974656f",
  "72646572464220005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a6c6974746c65504b0708853de3190600",
  "000006000000504b0304000008080000000000000000000000000000000000000e003e00617263686976652f646174612f3046423a005a5a",
  "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
  "803f004040408040a040c040504b07084cec10d50c0000000c000000504b0304000008080000000000000000000000000000000000000f00",
  "3700617263686976652f76657273696f6e464233005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
  "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a330a504b0708d19e67550200000002000000504b0304000008080000000000000000000000000000",
  "000000001e003200617263686976652f2e646174612f73657269616c697a6174696f6e5f696446422e005a5a5a5a5a5a5a5a5a5a5a5a5a5a",
  "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a303537363835383835373338353939363237383230303030",
  "31373435393837363232323531313133504b07089e9bff132800000028000000504b01020000000008080000000000002e4a2fe99d000000",
  "9d000000100000000000000000000000000000000000617263686976652f646174612e706b6c504b0102000000000808000000000000853d",
  "e31906000000060000001100000000000000000000000000ed000000617263686976652f627974656f72646572504b010200000000080800",
  "00000000004cec10d50c0000000c0000000e0000000000000000000000000056010000617263686976652f646174612f30504b0102000000",
  "000808000000000000d19e675502000000020000000f00000000000000000000000000dc010000617263686976652f76657273696f6e504b",
  "01020000000008080000000000009e9bff1328000000280000001e0000000000000000000000000052020000617263686976652f2e646174",
  "612f73657269616c697a6174696f6e5f6964504b06062c000000000000001e032d0000000000000000000500000000000000050000000000",
  "00004201000000000000f802000000000000504b0607000000003a0400000000000001000000504b0506000000000500050042010000f802",
  "00000000",
].join(""), "hex");
const TRIXIE_METADATA = Buffer.from([
  "8004952e040000000000008c25746f7263682e64697374726962757465642e636865636b706f696e742e6d65746164617461948c084d6574",
  "61646174619493942981947d94288c1373746174655f646963745f6d65746164617461947d94288c01779468008c1554656e736f7253746f",
  "726167654d657461646174619493942981947d94288c0a70726f706572746965739468008c1054656e736f7250726f706572746965739493",
  "94298194288c05746f726368948c0862666c6f617431369493948c13746f7263682e73657269616c697a6174696f6e948c0b5f6765745f6c",
  "61796f75749493948c0d746f7263682e7374726964656494859452948968008c145f4d454d5f464f524d41545f454e434f44494e47949394",
  "4b0085945294897494628c0473697a65948c05746f726368948c0453697a659493944b024b038694859452948c066368756e6b73945d9468",
  "008c144368756e6b53746f726167654d657461646174619493942981947d94288c076f6666736574739468214b004b008694859452948c05",
  "73697a65739468214b024b0386948594529475626175628c056d2e782e799468092981947d9428680c680e2981942868108c0d666c6f6174",
  "385f65346d33666e949394681889681c89749462681e68214b004b0286948594529468255d9468282981947d9428682b68214b004b008694",
  "85945294682f68214b004b0286948594529475626175628c04737465709468008c14427974657353746f726167654d657461646174619493",
  "94298194758c0c706c616e6e65725f64617461947d942868076807859468338c016d948c03782e79948694684668468594758c0c73746f72",
  "6167655f64617461947d942868008c0d4d65746164617461496e6465789493942981947d94288c0366716e9468468c05696e646578944e75",
  "628c27746f7263682e64697374726962757465642e636865636b706f696e742e66696c6573797374656d948c0c5f53746f72616765496e66",
  "6f9493942981947d94288c0d72656c61746976655f70617468948c0c5f5f305f302e646973746370948c066f6666736574944b008c066c65",
  "6e677468944d6003756268542981947d94286857680768584b00686068214b004b008694859452947562685b2981947d9428685e685f6860",
  "4d600368614d9c04756268542981947d94286857683368584b00686068214b004b008694859452947562685b2981947d9428685e685f6860",
  "4dfc0768614d5c047562758c0c73746f726167655f6d6574619468008c0b53746f726167654d6574619493942981947d94288c0d63686563",
  "6b706f696e745f6964948c0e706174686c69622e5f6c6f63616c948c09506f736978506174689493948c102f746d702f746d70766a727674",
  "62383194859452948c07736176655f6964948c2435343865623730632d356133662d343565622d386239322d383537393961343632373963",
  "948c076c6f61645f6964944e756275622e",
].join(""), "hex");
const SID_BLOB = Buffer.from([
  "504b03040000080800000000000000000000000000000000000010001200617263686976652f646174612e706b6c46420e005a5a5a5a5a5a",
  "5a5a5a5a5a5a5a5a800263746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71002828580700000073746f72",
  "616765710163746f7263680a42466c6f6174313653746f726167650a71025801000000307103580300000063707571044b06747105514b00",
  "4b034b028671064b014b038671078963636f6c6c656374696f6e730a4f726465726564446963740a71082952710974710a52710b2e504b07",
  "082e4a2fe99d0000009d000000504b03040000080800000000000000000000000000000000000017001e00617263686976652f2e666f726d",
  "61745f76657273696f6e46421a005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a31504b0708b7efdc8301000000010000",
  "00504b0304000008080000000000000000000000000000000000001a003700617263686976652f2e73746f726167655f616c69676e6d656e",
  "74464233005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
  "3634504b07083f7771e90200000002000000504b03040000080800000000000000000000000000000000000011003f00617263686976652f",
  "627974656f7264657246423b005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
  "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a6c6974746c65504b0708853de3190600000006000000504b03040000080800000000000000000000",
  "00000000000000000e003e00617263686976652f646174612f3046423a005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
  "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a803f004040408040a040c040504b07084cec10d50c000000",
  "0c000000504b0304000008080000000000000000000000000000000000000f003700617263686976652f76657273696f6e464233005a5a5a",
  "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a330a504b0708d19e",
  "67550200000002000000504b0304000008080000000000000000000000000000000000001e003200617263686976652f2e646174612f7365",
  "7269616c697a6174696f6e5f696446422e005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
  "5a5a5a5a5a5a5a5a31353732383139393531313835343634333032363037313630393539383530313633393137353736504b07085b62749d",
  "2800000028000000504b01020000000008080000000000002e4a2fe99d0000009d0000001000000000000000000000000000000000006172",
  "63686976652f646174612e706b6c504b0102000000000808000000000000b7efdc8301000000010000001700000000000000000000000000",
  "ed000000617263686976652f2e666f726d61745f76657273696f6e504b01020000000008080000000000003f7771e902000000020000001a",
  "0000000000000000000000000051010000617263686976652f2e73746f726167655f616c69676e6d656e74504b0102000000000808000000",
  "000000853de31906000000060000001100000000000000000000000000d2010000617263686976652f627974656f72646572504b01020000",
  "000008080000000000004cec10d50c0000000c0000000e0000000000000000000000000056020000617263686976652f646174612f30504b",
  "0102000000000808000000000000d19e675502000000020000000f00000000000000000000000000dc020000617263686976652f76657273",
  "696f6e504b01020000000008080000000000005b62749d28000000280000001e000000000000000000000000005203000061726368697665",
  "2f2e646174612f73657269616c697a6174696f6e5f6964504b06062c000000000000001e032d000000000000000000070000000000000007",
  "00000000000000cf01000000000000f803000000000000504b060700000000c70500000000000001000000504b05060000000007000700cf",
  "010000f80300000000",
].join(""), "hex");
const SID_METADATA = Buffer.from([
  "80059545040000000000008c25746f7263682e64697374726962757465642e636865636b706f696e742e6d65746164617461948c084d6574",
  "61646174619493942981947d94288c1373746174655f646963745f6d65746164617461947d94288c01779468008c1554656e736f7253746f",
  "726167654d657461646174619493942981947d94288c0a70726f706572746965739468008c1054656e736f7250726f706572746965739493",
  "94298194288c05746f726368948c0862666c6f617431369493948c13746f7263682e73657269616c697a6174696f6e948c0b5f6765745f6c",
  "61796f75749493948c0d746f7263682e7374726964656494859452948968008c145f4d454d5f464f524d41545f454e434f44494e47949394",
  "4b0085945294897494628c0473697a65948c05746f726368948c0453697a659493944b024b038694859452948c066368756e6b73945d9468",
  "008c144368756e6b53746f726167654d657461646174619493942981947d94288c076f6666736574739468214b004b008694859452948c05",
  "73697a65739468214b024b0386948594529475626175628c056d2e782e799468092981947d9428680c680e2981942868108c0d666c6f6174",
  "385f65346d33666e949394681889681c89749462681e68214b004b0286948594529468255d9468282981947d9428682b68214b004b008694",
  "85945294682f68214b004b0286948594529475626175628c04737465709468008c14427974657353746f726167654d657461646174619493",
  "94298194758c0c706c616e6e65725f64617461947d942868076807859468338c016d948c03782e79948694684668468594758c0c73746f72",
  "6167655f64617461947d942868008c0d4d65746164617461496e6465789493942981947d94288c0366716e9468468c05696e646578944e75",
  "628c27746f7263682e64697374726962757465642e636865636b706f696e742e66696c6573797374656d948c0c5f53746f72616765496e66",
  "6f9493942981947d94288c0d72656c61746976655f70617468948c0c5f5f305f302e646973746370948c066f6666736574944b008c066c65",
  "6e677468944ded04756268542981947d94286857680768584b00686068214b004b008694859452947562685b2981947d9428685e685f6860",
  "4ded0468614d2906756268542981947d94286857683368584b00686068214b004b008694859452947562685b2981947d9428685e685f6860",
  "4d160b68614d29067562758c0c73746f726167655f6d6574619468008c0b53746f726167654d6574619493942981947d94288c0d63686563",
  "6b706f696e745f6964948c07706174686c6962948c09506f736978506174689493948c102f746d702f746d7032743270756c6f6f94859452",
  "948c07736176655f6964948c2433333030663737662d313436312d343762362d383834662d643066633437323761373766948c076c6f6164",
  "5f6964944e8c076d6f64756c6573945d9475628c0776657273696f6e948c05312e302e309475622e",
].join(""), "hex");

for (const [name, blob] of [["2.6", TRIXIE_BLOB], ["2.14", SID_BLOB]] as const) {
  test(`PyTorch ${name} torch.save blob (memo opcodes, extra records, strides) parses`, async () => {
    const info = await parseTensorBlob(readerOf(blob), blob.length, "fixture");
    assert.equal(info.dtype, "BF16");
    assert.deepEqual(info.shape, [3, 2]);
    assert.deepEqual(info.strides, [1, 3]);
    assert.equal(info.storageOffset, 0);
    assert.equal(info.dataOffset % 64, 0);
    assert.deepEqual(blob.subarray(info.dataOffset, info.dataOffset + info.dataLength), W_DATA);
  });
}

for (const [name, md] of [["2.6 (protocol 4)", TRIXIE_METADATA], ["2.14 (protocol 5)", SID_METADATA]] as const) {
  test(`PyTorch ${name} .metadata decodes`, () => {
    const m = decodeDcpMetadata(md, ".metadata");
    assert.deepEqual(m.tensors.get("w"), { dtype: "BF16", size: [2, 3], chunks: [{ offsets: [0, 0], sizes: [2, 3] }] });
    assert.deepEqual(m.tensors.get("m.x.y"), { dtype: "F8_E4M3", size: [0, 2], chunks: [{ offsets: [0, 0], sizes: [0, 2] }] });
    assert.deepEqual([...m.bytes], ["step"]);
    assert.deepEqual(m.plannerData.get("m.x.y"), ["m", "x.y"]);
    assert.deepEqual(m.plannerData.get("w"), ["w"]);
    const w = m.storage.find((s) => s.fqn === "w")!;
    assert.deepEqual(w.offsets, [0, 0]);
    assert.equal(w.file, "__0_0.distcp");
    const step = m.storage.find((s) => s.fqn === "step")!;
    assert.equal(step.offsets, undefined);
    assert.equal(m.storage.length, 3);
  });
}

test("openDcp falls back to merged __{rank}.metadata files", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-dcp-"));
  try {
    await writeSingleFileDcp(dir, [{ fqn: "w", dtype: "BF16", shape: [2, 3], data: W_DATA }]);
    renameSync(join(dir, ".metadata"), join(dir, "__0.metadata"));
    const o = await openDcp(dir);
    assert.deepEqual(o.metadata, exampleMetadata());
    assert.equal(o.chunks.length, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("openDcp rejects overlapping blobs and missing storage entries", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-dcp-"));
  try {
    await writeSingleFileDcp(dir, [
      { fqn: "a", dtype: "U8", shape: [2], data: Buffer.from([1, 2]) },
      { fqn: "b", dtype: "U8", shape: [2], data: Buffer.from([3, 4]) },
    ]);
    const md = decodeDcpMetadata(readFileSync(join(dir, ".metadata")), "m");
    const overl = { ...md, storage: md.storage.map((s) => (s.fqn === "b" ? { ...s, offset: s.offset - 10 } : s)) };
    writeFileSync(join(dir, ".metadata"), encodeDcpMetadata(overl));
    await assert.rejects(openDcp(dir), expectCode("DCP", /overlap/));
    const missing = { ...md, storage: md.storage.filter((s) => s.fqn !== "b") };
    writeFileSync(join(dir, ".metadata"), encodeDcpMetadata(missing));
    await assert.rejects(openDcp(dir), expectCode("DCP", /no storage entry/));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
