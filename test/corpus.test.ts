// Hostile-input corpus: every malformed checkpoint is refused by runConvert (and runInspect where the problem is
// in what inspect reads) with one clear CkptError — code, message naming the rule, oneLine naming the file and
// tensor — and nothing is written: no output folder, no `.partial`, the source folder untouched.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, truncateSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tinyLlamaTensors, writeHfFolder } from "../src/fixtures/tiny-llama.js";
import { runConvert } from "../src/commands/convert.js";
import { runInspect } from "../src/commands/inspect.js";
import { CkptError, type ErrorCode } from "../src/errors.js";
import { openDcp } from "../src/formats/dcp/reader.js";

const tmp = mkdtempSync(join(tmpdir(), "ckpt-corpus-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

const MODEL = { vocab: 64, hidden: 32, heads: 4, kvHeads: 2, headDim: 8, ffn: 48, layers: 1, dtype: "F32" as const };
const Q = "model.layers.0.self_attn.q_proj.weight";

/** Splits a safetensors file into its header object (as parsed JSON, key order kept) and data. */
function splitSt(buf: Buffer): { header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>; data: Buffer } {
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString("utf8")), data: buf.subarray(8 + n) };
}

/** A safetensors file from raw header text (space-padded to 8) and data; `n` overrides the length prefix. */
function stFile(json: string | Buffer, data: Buffer, n?: bigint): Buffer {
  let h = typeof json === "string" ? Buffer.from(json, "utf8") : json;
  h = Buffer.concat([h, Buffer.alloc((8 - (h.length % 8)) % 8, 0x20)]);
  const pre = Buffer.alloc(8);
  pre.writeBigUInt64LE(n ?? BigInt(h.length));
  return Buffer.concat([pre, h, data]);
}

type Entry = { dtype: string; shape: number[]; data_offsets: [number, number] };

interface Case {
  name: string;
  /** Builds the hostile checkpoint in `dir` (a copy of a valid one of `base` kind); returns the source path. */
  make: (dir: string) => string | void | Promise<string | void>;
  base: "hf" | "hf2" | "dcp" | "none";
  code: ErrorCode;
  message: RegExp;
  /** Must appear in err.oneLine(): the file, and the tensor when there is one. */
  where: RegExp[];
  /** runInspect refuses it too (the problem is in headers, not in the mapping/config). */
  inspect?: boolean;
}

let hfBase: string;
let hf2Base: string;
let dcpBase: string;
before(async () => {
  const g = tinyLlamaTensors(MODEL);
  hfBase = join(tmp, "base-hf");
  writeHfFolder(hfBase, g.config, g.tensors, 1);
  hf2Base = join(tmp, "base-hf2");
  writeHfFolder(hf2Base, g.config, g.tensors, 2);
  dcpBase = join(tmp, "base-dcp");
  await runConvert({ source: hfBase, out: dcpBase, threads: 0 });
});

/** Rewrites dir/model.safetensors through `f(header, data)` → new file bytes. */
function editSt(dir: string, f: (h: Record<string, Entry>, data: Buffer, meta: Record<string, string> | undefined) => Buffer, file = "model.safetensors"): void {
  const p = join(dir, file);
  const { header, data } = splitSt(readFileSync(p));
  const meta = header.__metadata__ as Record<string, string> | undefined;
  delete header.__metadata__;
  writeFileSync(p, f(header as Record<string, Entry>, data, meta));
}

const ST = /model\.safetensors/;
const IDX = /model\.safetensors\.index\.json/;
const S1 = "model-00001-of-00002.safetensors";
const S2 = "model-00002-of-00002.safetensors";
const tensorIs = (t: string) => new RegExp(`tensor '${t.replace(/\./g, "\\.")}'`);

/** Replaces bytes of a file equal-length (pickle strings keep their length prefixes valid). */
function replaceIn(path: string, from: string | Buffer, to: string | Buffer): void {
  const b = readFileSync(path);
  const f = typeof from === "string" ? Buffer.from(from, "latin1") : from;
  const t = typeof to === "string" ? Buffer.from(to, "latin1") : to;
  const i = b.indexOf(f);
  assert.ok(i >= 0, `pattern ${JSON.stringify(f.toString("latin1"))} in ${path}`);
  writeFileSync(path, Buffer.concat([b.subarray(0, i), t, b.subarray(i + f.length)]));
}

async function firstBlob(dir: string): Promise<{ fqn: string; file: string; blobOffset: number; blobLength: number }> {
  const { chunks } = await openDcp(dir);
  return [...chunks].filter((c) => c.file === "__0_0.distcp").sort((a, b) => a.blobOffset - b.blobOffset)[0]!;
}

/** Offset (in the file) of the first zip record with `sig` inside the blob. */
function findSig(path: string, blob: { blobOffset: number; blobLength: number }, sig: number): number {
  const b = readFileSync(path);
  const s = Buffer.alloc(4);
  s.writeUInt32LE(sig);
  const i = b.subarray(blob.blobOffset, blob.blobOffset + blob.blobLength).indexOf(s);
  assert.ok(i >= 0);
  return blob.blobOffset + i;
}

function patchU32(path: string, at: number, v: number): void {
  const b = readFileSync(path);
  b.writeUInt32LE(v >>> 0, at);
  writeFileSync(path, b);
}

const CASES: Case[] = [
  // ---- safetensors files
  { name: "truncated data", base: "hf", code: "SAFETENSORS_DATA", message: /data truncated by 100 bytes \(rule: 8 \+ N \+ last END = file length\)/, where: [ST], inspect: true,
    make: (d) => { const p = join(d, "model.safetensors"); truncateSync(p, statSync(p).size - 100); } },
  { name: "header length beyond the file", base: "hf", code: "SAFETENSORS_HEADER", message: /header length N = \d+ but the file has only \d+ bytes \(rule: 8 \+ N ≤ file length\)/, where: [ST], inspect: true,
    make: (d) => { const p = join(d, "model.safetensors"); const b = readFileSync(p); b.writeBigUInt64LE(BigInt(b.length)); writeFileSync(p, b); } },
  { name: "oversized header (N > 100 MB)", base: "hf", code: "SAFETENSORS_HEADER", message: /exceeds 100,000,000 bytes/, where: [ST], inspect: true,
    make: (d) => { const p = join(d, "model.safetensors"); const b = readFileSync(p); b.writeBigUInt64LE(200_000_000n); writeFileSync(p, b); } },
  { name: "file shorter than 8 bytes", base: "hf", code: "SAFETENSORS_HEADER", message: /shorter than the 8-byte header length/, where: [ST], inspect: true,
    make: (d) => writeFileSync(join(d, "model.safetensors"), Buffer.from([1, 2, 3])) },
  { name: "invalid JSON header", base: "hf", code: "SAFETENSORS_HEADER", message: /header is not valid JSON/, where: [ST], inspect: true,
    make: (d) => editSt(d, (_h, data) => stFile('{"a": {"dtype": "F32",', data)) },
  { name: "header not UTF-8", base: "hf", code: "SAFETENSORS_HEADER", message: /not valid UTF-8/, where: [ST], inspect: true,
    make: (d) => editSt(d, (_h, data) => stFile(Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]), data)) },
  { name: "header is a JSON array", base: "hf", code: "SAFETENSORS_HEADER", message: /header is an? (array|list)/, where: [ST], inspect: true,
    make: (d) => editSt(d, (_h, data) => stFile("[1, 2]", data)) },
  { name: "duplicate tensor keys", base: "hf", code: "SAFETENSORS_HEADER", message: /duplicate key 'model\.norm\.weight' \(rule: header keys are unique\)/, where: [ST], inspect: true,
    make: (d) => editSt(d, (h, data) => {
      const text = JSON.stringify(h);
      const norm = JSON.stringify(h["model.norm.weight"]);
      return stFile(text.slice(0, -1) + `,"model.norm.weight":${norm}}`, data);
    }) },
  { name: "overlapping offsets", base: "hf", code: "SAFETENSORS_HEADER", message: /an overlap of 4 bytes \(rule: offsets are contiguous/, where: [ST], inspect: true,
    make: (d) => editSt(d, (h, data) => {
      const sorted = Object.entries(h).sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
      for (const [, e] of sorted.slice(1)) { e.data_offsets[0] -= 4; e.data_offsets[1] -= 4; }
      return stFile(JSON.stringify(h), data.subarray(0, data.length - 4));
    }) },
  { name: "gap between tensors", base: "hf", code: "SAFETENSORS_HEADER", message: /a gap of 8 bytes/, where: [ST], inspect: true,
    make: (d) => editSt(d, (h, data) => {
      const sorted = Object.entries(h).sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
      for (const [, e] of sorted.slice(1)) { e.data_offsets[0] += 8; e.data_offsets[1] += 8; }
      return stFile(JSON.stringify(h), Buffer.concat([data, Buffer.alloc(8)]));
    }) },
  { name: "first tensor not at offset 0", base: "hf", code: "SAFETENSORS_HEADER", message: /the first tensor in the data buffer begins at 16, not 0/, where: [ST], inspect: true,
    make: (d) => editSt(d, (h, data) => {
      for (const e of Object.values(h)) { e.data_offsets[0] += 16; e.data_offsets[1] += 16; }
      return stFile(JSON.stringify(h), Buffer.concat([Buffer.alloc(16), data]));
    }) },
  { name: "offsets beyond 2^53", base: "hf", code: "SAFETENSORS_HEADER", message: /data_offsets\[1\]: .*\(rule: data_offsets is \[BEGIN, END\], unsigned integers ≤ 2\^53 - 1\)/, where: [ST, tensorIs(Q)], inspect: true,
    make: (d) => editSt(d, (h, data) => stFile(JSON.stringify(h).replace(new RegExp(`("${Q.replace(/\./g, "\\.")}":\\{[^}]*"data_offsets":\\[\\d+,)\\d+`), "$118446744073709551616"), data)) },
  { name: "END before BEGIN", base: "hf", code: "SAFETENSORS_HEADER", message: /END < BEGIN/, where: [ST], inspect: true,
    make: (d) => editSt(d, (h, data) => { const e = Object.values(h).find((x) => x.data_offsets[0] > 0)!; e.data_offsets[1] = e.data_offsets[0] - 4; return stFile(JSON.stringify(h), data); }) },
  { name: "byte size ≠ shape × dtype", base: "hf", code: "SAFETENSORS_HEADER", message: /span \d+ bytes but shape \[16,32\] × F32 needs 2048 \(rule: byte size = numel × dtype size\)/, where: [ST, tensorIs(Q)], inspect: true,
    make: (d) => editSt(d, (h, data) => { h[Q]!.shape = [16, 32]; return stFile(JSON.stringify(h), data); }) },
  { name: "unknown dtype", base: "hf", code: "SAFETENSORS_HEADER", message: /unknown dtype "F33"/, where: [ST, tensorIs(Q)], inspect: true,
    make: (d) => editSt(d, (h, data) => { h[Q]!.dtype = "F33"; return stFile(JSON.stringify(h), data); }) },
  { name: "negative shape", base: "hf", code: "SAFETENSORS_HEADER", message: /shape\[0\]: .*\(rule: shape is a list of unsigned integers/, where: [ST, tensorIs(Q)], inspect: true,
    make: (d) => editSt(d, (h, data) => { h[Q]!.shape = [-32, 32]; return stFile(JSON.stringify(h), data); }) },
  { name: "huge shape (numel overflows 64 bits)", base: "hf", code: "SAFETENSORS_HEADER", message: /overflows 64 bits/, where: [ST, tensorIs(Q)], inspect: true,
    make: (d) => editSt(d, (h, data) => { h[Q]!.shape = [9007199254740991, 9007199254740991, 4096]; return stFile(JSON.stringify(h), data); }) },
  { name: "trailing bytes after the data", base: "hf", code: "SAFETENSORS_DATA", message: /16 trailing bytes/, where: [ST], inspect: true,
    make: (d) => { const p = join(d, "model.safetensors"); writeFileSync(p, Buffer.concat([readFileSync(p), Buffer.alloc(16)])); } },
  { name: "control character in a tensor name", base: "hf", code: "SAFETENSORS_HEADER", message: /control character U\+0007/, where: [ST], inspect: true,
    make: (d) => editSt(d, (h, data) => { const e = h[Q]!; delete h[Q]; h["model.bad\u0007name"] = e; return stFile(JSON.stringify(h), data); }) },
  { name: "__metadata__ with a non-string value", base: "hf", code: "SAFETENSORS_HEADER", message: /__metadata__\['format'\] is the number 1, not a string \(rule: __metadata__ values are strings\)/, where: [ST], inspect: true,
    make: (d) => editSt(d, (h, data) => stFile(JSON.stringify({ __metadata__: { format: 1 }, ...h }), data)) },
  // ---- sharded index
  { name: "weight_map entry with '..'", base: "hf2", code: "INDEX", message: /file name contains '\.\.' \(rule: shards stay inside the checkpoint folder\)/, where: [IDX], inspect: true,
    make: (d) => replaceIn(join(d, "model.safetensors.index.json"), `"${S1}"`, `"../x/${S1}"`) },
  { name: "weight_map entry with an absolute path", base: "hf2", code: "INDEX", message: /is an absolute path/, where: [IDX], inspect: true,
    make: (d) => replaceIn(join(d, "model.safetensors.index.json"), `"${S2}"`, `"/etc/${S2}"`) },
  { name: "weight_map names a file that does not exist", base: "hf2", code: "INDEX", message: /weight_map names model-00003-of-00003\.safetensors, which is not in the checkpoint/, where: [IDX], inspect: true,
    make: (d) => replaceIn(join(d, "model.safetensors.index.json"), `"${S2}"`, `"model-00003-of-00003.safetensors"`) },
  { name: "index is not valid JSON", base: "hf2", code: "INDEX", message: /not valid JSON/, where: [IDX], inspect: true,
    make: (d) => writeFileSync(join(d, "model.safetensors.index.json"), '{"weight_map": {') },
  { name: "index with a duplicate key", base: "hf2", code: "INDEX", message: /duplicate key 'lm_head\.weight'/, where: [IDX], inspect: true,
    make: (d) => { const p = join(d, "model.safetensors.index.json"); const t = readFileSync(p, "utf8"); writeFileSync(p, t.replace('"weight_map": {', `"weight_map": {"lm_head.weight": "${S2}",`)); } },
  { name: "a tensor in two shards", base: "hf2", code: "INDEX", message: /index says model-00002-of-00002\.safetensors, but the tensor is in model-00001-of-00002\.safetensors|tensor appears in two files/, where: [/model-0000\d-of-00002\.safetensors/, tensorIs("model.norm.weight")], inspect: true,
    make: (d) => {
      // copy model.norm.weight into the other shard too
      const a = splitSt(readFileSync(join(d, S1)));
      const b = splitSt(readFileSync(join(d, S2)));
      const src = (a.header["model.norm.weight"] ? a : b) as { header: Record<string, Entry>; data: Buffer };
      const dst = src === (a as unknown) ? b : a;
      const target = src === (a as unknown) ? S2 : S1;
      const e = src.header["model.norm.weight"]!;
      const bytes = src.data.subarray(e.data_offsets[0], e.data_offsets[1]);
      const h = { ...(dst.header as Record<string, unknown>) } as Record<string, Entry>;
      delete (h as Record<string, unknown>).__metadata__;
      h["model.norm.weight"] = { dtype: e.dtype, shape: e.shape, data_offsets: [dst.data.length, dst.data.length + bytes.length] };
      writeFileSync(join(d, target), stFile(JSON.stringify(h), Buffer.concat([dst.data, bytes])));
    } },
  { name: "a shard tensor missing from weight_map", base: "hf2", code: "INDEX", message: /tensor is in a shard but missing from weight_map/, where: [IDX, tensorIs("model.norm.weight")], inspect: true,
    make: (d) => { const p = join(d, "model.safetensors.index.json"); const j = JSON.parse(readFileSync(p, "utf8")); delete j.weight_map["model.norm.weight"]; writeFileSync(p, JSON.stringify(j)); } },
  { name: "weight_map lists a tensor its shard lacks", base: "hf2", code: "INDEX", message: /weight_map lists the tensor in model-0000\d-of-00002\.safetensors, but its header lacks it/, where: [IDX, tensorIs("model.ghost.weight")], inspect: true,
    make: (d) => { const p = join(d, "model.safetensors.index.json"); const j = JSON.parse(readFileSync(p, "utf8")); j.weight_map["model.ghost.weight"] = S1; writeFileSync(p, JSON.stringify(j)); } },
  // ---- symlinks
  { name: "safetensors symlink escaping the folder", base: "hf", code: "IO", message: /refusing 'model\.safetensors': it is a symlink that leads outside/, where: [ST], inspect: true,
    make: (d) => { const outside = join(tmp, `outside-${Math.random().toString(36).slice(2)}.safetensors`); copyFileSync(join(d, "model.safetensors"), outside); unlinkSync(join(d, "model.safetensors")); symlinkSync(outside, join(d, "model.safetensors")); } },
  { name: "config.json symlink escaping the folder", base: "hf", code: "IO", message: /refusing 'config\.json': it is a symlink that leads outside/, where: [/config\.json/], inspect: true,
    make: (d) => { const outside = join(tmp, `outside-${Math.random().toString(36).slice(2)}.json`); copyFileSync(join(d, "config.json"), outside); unlinkSync(join(d, "config.json")); symlinkSync(outside, join(d, "config.json")); } },
  // ---- config.json
  { name: "config.json is not JSON", base: "hf", code: "CONFIG", message: /invalid config\.json/, where: [/config\.json/], inspect: true,
    make: (d) => writeFileSync(join(d, "config.json"), "{ hidden_size: 32 ") },
  { name: "config heads × head_dim ≠ attention rows", base: "hf", code: "SHAPE", message: /shape \[32,32\] fits no known layout: the layout ckpt knows for it is \[hidden, n_heads \* head_dim\] = \[32,24\] \(hidden = hidden_size = 32, n_heads = num_attention_heads = 3, head_dim = head_dim = 8\)/, where: [/config\.json/, tensorIs("model.layers.0.self_attn.o_proj.weight")],
    make: (d) => { const p = join(d, "config.json"); const c = JSON.parse(readFileSync(p, "utf8")); c.num_attention_heads = 3; c.head_dim = 8; writeFileSync(p, JSON.stringify(c)); } },
  { name: "config hidden_size ≠ tensor shapes", base: "hf", code: "SHAPE", message: /shape \[\d+(,\d+)?\] fits no known layout: the layout ckpt knows for it is \[[^\]]*\] = \[[\d,]+\] \([^)]*hidden_size = 40/, where: [/config\.json/, /tensor '/],
    make: (d) => { const p = join(d, "config.json"); const c = JSON.parse(readFileSync(p, "utf8")); c.hidden_size = 40; writeFileSync(p, JSON.stringify(c)); } },
  { name: "no config.json", base: "hf", code: "CONFIG", message: /no config\.json found/, where: [/case-\d+-hf/],
    make: (d) => unlinkSync(join(d, "config.json")) },
  // ---- DCP .metadata pickles and torch.save blobs
  { name: ".metadata pickle with an unexpected global (os.system)", base: "dcp", code: "PICKLE", message: /unexpected global 'os\.system' at byte \d+/, where: [/\.metadata/], inspect: true,
    make: (d) => replaceIn(join(d, ".metadata"), "ctorch\nSize\n", "cos\nsystem\n") },
  { name: ".metadata pickle with an unsupported opcode (EXT1)", base: "dcp", code: "PICKLE", message: /unsupported pickle opcode 0x82 at byte 2/, where: [/\.metadata/], inspect: true,
    make: (d) => { const p = join(d, ".metadata"); const b = readFileSync(p); writeFileSync(p, Buffer.concat([b.subarray(0, 2), Buffer.from([0x82, 0x01]), b.subarray(2)])); } },
  { name: ".metadata pickle truncated", base: "dcp", code: "PICKLE", message: /truncated pickle/, where: [/\.metadata/], inspect: true,
    make: (d) => { const p = join(d, ".metadata"); truncateSync(p, Math.floor(statSync(p).size / 2)); } },
  { name: ".metadata storage path escaping the folder", base: "dcp", code: "DCP", message: /storage path '\.\.\/0_0\.distc' is not a plain file name/, where: [/base-dcp|dcp/],
    inspect: true, make: (d) => replaceIn(join(d, ".metadata"), "__0_0.distcp", "../0_0.distc") },
  { name: "DCP data file missing", base: "dcp", code: "NOT_FOUND", message: /storage file is missing/, where: [/__0_0\.distcp/], inspect: true,
    make: (d) => unlinkSync(join(d, "__0_0.distcp")) },
  { name: "DCP blob beyond the end of its file", base: "dcp", code: "DCP", message: /blob \[\d+, \+\d+\) lies outside the \d+-byte file/, where: [/__0_0\.distcp/, /tensor '/], inspect: true,
    make: (d) => { const p = join(d, "__0_0.distcp"); truncateSync(p, statSync(p).size - 10); } },
  { name: "torch.save zip: local header offset out of range", base: "dcp", code: "ZIP", message: /local header offset \d+ out of range/, where: [/__0_0\.distcp@\d+/, /tensor '/], inspect: true,
    make: async (d) => { const p = join(d, "__0_0.distcp"); const blob = await firstBlob(d); patchU32(p, findSig(p, blob, 0x02014b50) + 42, 0x7fff0000); } },
  { name: "torch.save zip: central directory offset out of range", base: "dcp", code: "ZIP", message: /central directory \[\d+, \+\d+\) out of range/, where: [/__0_0\.distcp@\d+/, /tensor '/], inspect: true,
    make: async (d) => { const p = join(d, "__0_0.distcp"); const blob = await firstBlob(d); const b = readFileSync(p); b.writeBigUInt64LE(0x7fff0000n, findSig(p, blob, 0x06064b50) + 48); writeFileSync(p, b); } },
  { name: "torch.save zip: compressed entry", base: "dcp", code: "ZIP", message: /is compressed \(method 8\)/, where: [/__0_0\.distcp@\d+/, /tensor '/], inspect: true,
    make: async (d) => { const p = join(d, "__0_0.distcp"); const blob = await firstBlob(d); const at = findSig(p, blob, 0x02014b50) + 10; const b = readFileSync(p); b.writeUInt16LE(8, at); writeFileSync(p, b); } },
  { name: "torch.save zip: data.pkl with an unexpected global", base: "dcp", code: "PICKLE", message: /unexpected global 'subprocess\.Popen'/, where: [/__0_0\.distcp@\d+/, /tensor '/], inspect: true,
    make: async (d) => { const p = join(d, "__0_0.distcp"); const b = readFileSync(p); const i = b.indexOf(Buffer.from("torch._utils\n_rebuild_tensor_v2\n", "latin1")); assert.ok(i > 0); b.write("subprocess\nPopen\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n", i, "latin1"); writeFileSync(p, b); } },
];

function listTree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(join(d, e.name), r);
      else out.push(`${r}:${e.isSymbolicLink() ? "link" : statSync(join(d, e.name)).size}`);
    }
  };
  walk(dir, "");
  return out.sort();
}

function check(err: unknown, c: Case, how: string): CkptError {
  assert.ok(err instanceof CkptError, `${c.name} (${how}): expected a CkptError, got ${err instanceof Error ? err.stack : String(err)}`);
  assert.equal(err.code, c.code, `${c.name} (${how}): code; message: ${err.oneLine()}`);
  assert.match(err.message, c.message, `${c.name} (${how}): message`);
  const line = err.oneLine();
  assert.doesNotMatch(line, /\n/, "one line");
  for (const w of c.where) assert.match(line, w, `${c.name} (${how}): oneLine names ${w}: ${line}`);
  return err;
}

describe("hostile-input corpus", () => {
  test(`the corpus has at least 25 distinct cases (${CASES.length})`, () => {
    assert.ok(CASES.length >= 25);
    assert.equal(new Set(CASES.map((c) => c.name)).size, CASES.length);
  });

  let n = 0;
  for (const c of CASES) {
    test(`refused: ${c.name}`, async () => {
      const dir = join(tmp, `case-${n++}-${c.base === "dcp" ? "dcp" : "hf"}`);
      const base = c.base === "hf" ? hfBase : c.base === "hf2" ? hf2Base : dcpBase;
      cpSync(base, dir, { recursive: true });
      const made = await c.make(dir);
      const src = typeof made === "string" ? made : dir;
      const before = listTree(dir);
      const outRoot = join(tmp, `out-${n}`);
      mkdirSync(outRoot);
      const out = join(outRoot, "converted");
      let err: unknown;
      try {
        await runConvert({ source: src, out, threads: 0 });
      } catch (e) {
        err = e;
      }
      check(err, c, "convert");
      assert.deepEqual(readdirSync(outRoot), [], "nothing written: no output, no .partial");
      assert.ok(!existsSync(out) && !existsSync(out + ".partial"));
      if (c.inspect) {
        let ierr: unknown;
        try {
          await runInspect(src);
        } catch (e) {
          ierr = e;
        }
        check(ierr, c, "inspect");
      }
      assert.deepEqual(listTree(dir), before, "the source is left untouched");
    });
  }
});
