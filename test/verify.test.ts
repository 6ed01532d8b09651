// ckpt verify: against the manifest (one argument) and between two checkpoints of any format/layout (two).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeTinyLlama } from "../src/fixtures/tiny-llama.js";
import { runConvert } from "../src/commands/convert.js";
import { runVerify, formatVerify } from "../src/commands/verify.js";
import { openDcp } from "../src/formats/dcp/reader.js";
import { readSafetensorsHeader } from "../src/formats/safetensors/index.js";
import { CkptError } from "../src/errors.js";
import { createHash } from "node:crypto";
import { xxhash128 } from "hash-wasm";
import { assertSameTree } from "./helpers/tree.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(ROOT, "bin", "ckpt.js");
const tmp = mkdtempSync(join(tmpdir(), "ckpt-verify-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8" });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function flipBit(path: string, offset: number, bit = 3): void {
  const fd = openSync(path, "r+");
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, offset);
  b[0]! ^= 1 << bit;
  writeSync(fd, b, 0, 1, offset);
  closeSync(fd);
}

/**
 * Cuts every manifest chunk into pieces the way the manifest says (whole first-dim rows, ≤ piece_bytes) from the
 * DCP reader's view of the stored bytes, and checks each piece's digest and the chunk digest with `digest`.
 */
async function assertPieceDigests(out: string, m: { piece_bytes: number; tensors: Record<string, { dtype: string; chunks: { file: string; offsets: number[]; sizes: number[]; bytes: number; hash: string; piece_hashes: string[] }[] }> }, digest: (b: Uint8Array) => Promise<string>): Promise<void> {
  const { chunks } = await openDcp(out);
  let checked = 0;
  for (const [name, t] of Object.entries(m.tensors)) {
    for (const c of t.chunks) {
      const stored = chunks.find((x) => x.fqn === name && x.file === c.file && x.offsets.join() === c.offsets.join())!;
      const data = readFileSync(join(out, c.file)).subarray(stored.dataOffset, stored.dataOffset + c.bytes);
      const rowBytes = c.sizes.length ? c.bytes / c.sizes[0]! : c.bytes;
      const per = c.sizes.length ? Math.max(1, Math.floor(m.piece_bytes / rowBytes)) * rowBytes : c.bytes;
      const want: string[] = [];
      for (let o = 0; o < c.bytes; o += per) want.push(await digest(data.subarray(o, Math.min(c.bytes, o + per))));
      assert.deepEqual(c.piece_hashes, want, name);
      assert.equal(c.hash, await digest(Buffer.from(want.join(""))), name);
      checked++;
    }
  }
  assert.ok(checked > 10);
}

const MODEL = { vocab: 512, hidden: 64, heads: 4, kvHeads: 2, headDim: 16, ffn: 128, layers: 2, dtype: "F32" as const };
let hf: string;
before(() => {
  hf = join(tmp, "hf");
  writeTinyLlama(hf, { ...MODEL, files: 2 });
});

describe("verify against the manifest", () => {
  test("a clean output verifies; the manifest carries per-piece XXH3-128 digests (default) that equal the digests of the stored bytes", async () => {
    const out = join(tmp, "clean-dcp");
    await runConvert({ source: hf, out, threads: 0 });
    const r = await runVerify(out);
    assert.equal(r.ok, true, formatVerify(r));
    assert.equal(r.mode, "manifest");
    assert.ok(r.tensors > 10 && r.bytes > 0);
    const m = JSON.parse(readFileSync(join(out, "ckpt-manifest.json"), "utf8"));
    assert.equal(m.digest, "xxh128");
    assert.match(m.files[".metadata"].hash, /^[0-9a-f]{32}$/);
    assert.equal(m.files[".metadata"].hash, await xxhash128(readFileSync(join(out, ".metadata"))));
    // every piece digest is XXH3-128 (hash-wasm, not our code) of the bytes PyTorch's reader would take for it
    await assertPieceDigests(out, m, (b) => xxhash128(b));
  });

  test("--digest sha256: SHA-256 piece digests; verify re-hashes with the manifest's algorithm and finds a flipped bit", async () => {
    const out = join(tmp, "clean-dcp-sha");
    await runConvert({ source: hf, out, threads: 0, digest: "sha256" });
    const m = JSON.parse(readFileSync(join(out, "ckpt-manifest.json"), "utf8"));
    assert.equal(m.digest, "sha256");
    assert.match(m.files[".metadata"].hash, /^[0-9a-f]{64}$/);
    await assertPieceDigests(out, m, async (b) => createHash("sha256").update(b).digest("hex"));
    assert.equal((await runVerify(out)).ok, true);
    const { chunks } = await openDcp(out);
    const c = chunks.find((x) => x.fqn === "layers.0.feed_forward.w1.weight")!;
    flipBit(join(out, c.file), c.dataOffset + 5);
    const r = await runVerify(out);
    assert.equal(r.ok, false);
    assert.equal(r.difference!.tensor, "layers.0.feed_forward.w1.weight");
  });

  test("a manifest of ckpt 0.1.0 (SHA-256 under sha256 / piece_sha256, no digest field) still verifies", async () => {
    const out = join(tmp, "legacy-manifest");
    await runConvert({ source: hf, out, threads: 0, digest: "sha256" });
    const path = join(out, "ckpt-manifest.json");
    const m = JSON.parse(readFileSync(path, "utf8"));
    delete m.digest;
    for (const f of Object.values(m.files as Record<string, { hash?: string; sha256?: string }>)) if (f.hash) { f.sha256 = f.hash; delete f.hash; }
    for (const t of Object.values(m.tensors as Record<string, { chunks: Record<string, unknown>[] }>)) {
      for (const c of t.chunks) { c.sha256 = c.hash; c.piece_sha256 = c.piece_hashes; delete c.hash; delete c.piece_hashes; }
    }
    writeFileSync(path, JSON.stringify(m));
    assert.equal((await runVerify(out)).ok, true);
  });

  test("--no-fsync output is byte-identical to the default (fsynced, O_DIRECT) output", async () => {
    const a = join(tmp, "sync-a");
    const b = join(tmp, "sync-b");
    await runConvert({ source: hf, out: a, threads: 2 });
    await runConvert({ source: hf, out: b, threads: 2, fsync: false });
    assertSameTree(b, a);
    assert.equal((await runVerify(b)).ok, true);
  });

  test("a flipped bit in a 3-rank sharded DCP output: verify names the tensor, chunk, piece and byte range", async () => {
    const out = join(tmp, "shard3-manifest");
    const s = cli(["shard", hf, out, "--world-size", "3", "--quiet"]);
    assert.equal(s.status, 0, s.stderr);
    assert.deepEqual(readdirSync(out).filter((f) => f.endsWith(".distcp")).sort(), ["__0_0.distcp", "__1_0.distcp", "__2_0.distcp"]);
    const { chunks } = await openDcp(out);
    const target = chunks.find((c) => c.fqn === "layers.1.feed_forward.w1.weight" && c.file === "__1_0.distcp")!;
    assert.ok(target, "rank 1 holds a chunk of w1");
    const elem = 37;
    flipBit(join(out, target.file), target.dataOffset + elem * 4 + 1);
    const r = await runVerify(out);
    assert.equal(r.ok, false);
    const d = r.difference!;
    assert.equal(d.tensor, "layers.1.feed_forward.w1.weight");
    assert.ok(d.file!.endsWith("__1_0.distcp"));
    assert.deepEqual(d.chunk!.offsets, target.offsets);
    assert.equal(d.piece, 0);
    assert.ok(d.byteRange![0] <= target.dataOffset + elem * 4 && target.dataOffset + elem * 4 < d.byteRange![1]);
    // the CLI: exit 1, one VERIFY line naming the file, the report naming the tensor
    const c = cli(["verify", out]);
    assert.equal(c.status, 1);
    assert.match(c.stdout, /DIFFERENT: .* against its ckpt-manifest\.json/);
    assert.match(c.stdout, /tensor: layers\.1\.feed_forward\.w1\.weight/);
    assert.match(c.stderr, /^ckpt: VERIFY: .*__1_0\.distcp: tensor 'layers\.1\.feed_forward\.w1\.weight': bytes differ from the manifest in __1_0\.distcp bytes \[\d+, \d+\)/m);
  });

  test("a truncated data file or damaged .metadata is reported", async () => {
    const out = join(tmp, "damaged-extras");
    await runConvert({ source: hf, out, threads: 0, worldSize: 2 });
    const md = join(out, ".metadata");
    const bytes = readFileSync(md);
    writeFileSync(md, Buffer.concat([bytes, Buffer.from(" ")]));
    let r = await runVerify(out);
    assert.equal(r.ok, false);
    assert.match(r.difference!.message, /\.metadata is \d+ bytes, the manifest says \d+/);
    writeFileSync(md, bytes);
    assert.equal((await runVerify(out)).ok, true);
    bytes[bytes.length - 3]! ^= 1;
    writeFileSync(md, bytes);
    r = await runVerify(out);
    assert.match(r.difference!.message, /\.metadata does not match its xxh128 digest/);
  });

  test("no manifest: a clear NOT_FOUND with a hint", async () => {
    await assert.rejects(runVerify(hf), (e: unknown) => e instanceof CkptError && e.code === "NOT_FOUND" && /ckpt-manifest\.json/.test(e.message) && /ckpt verify <a> <b>/.test(e.hint ?? ""));
  });
});

describe("verify two checkpoints through the mapping", () => {
  test("HF vs TorchTitan DCP (unsharded and 3 ranks), DCP vs DCP, HF vs HF round trip, f32 vs bf16 output: all identical", async () => {
    const dcp = join(tmp, "cmp-dcp");
    const dcp3 = join(tmp, "cmp-dcp3");
    const back = join(tmp, "cmp-back");
    const bf16 = join(tmp, "cmp-bf16");
    await runConvert({ source: hf, out: dcp, threads: 0 });
    await runConvert({ source: hf, out: dcp3, threads: 0, worldSize: 3 });
    await runConvert({ source: dcp3, out: back, to: "hf", threads: 0 });
    await runConvert({ source: hf, out: bf16, threads: 0, dtype: "bf16" });
    for (const [a, b] of [[hf, dcp], [hf, dcp3], [dcp3, hf], [dcp, dcp3], [hf, back], [back, hf]] as const) {
      const r = await runVerify(a, b);
      assert.equal(r.ok, true, `${a} vs ${b}: ${formatVerify(r)}`);
      assert.ok(r.tensors >= 20, `${r.tensors} tensors compared`);
    }
    const r = await runVerify(hf, bf16);
    assert.equal(r.ok, true, formatVerify(r));
    assert.ok(r.notes.some((n) => /cast to b's dtype/.test(n)));
  });

  test("a flipped bit in a 3-file sharded safetensors output: verify names the tensor, index and both values", async () => {
    const out = join(tmp, "st3");
    await runConvert({ source: hf, out, threads: 0, format: "safetensors", maxShardBytes: 240 * 1024 });
    const files = readdirSync(out).filter((f) => f.endsWith(".safetensors")).sort();
    assert.equal(files.length, 3, files.join(", "));
    const file = files[1]!;
    const h = await readSafetensorsHeader(join(out, file));
    const e = h.entries.find((x) => x.shape.length === 2 && x.shape[0]! > 4)!;
    const cols = e.shape[1]!;
    const elem = 3 * cols + 5; // index [3, 5]
    flipBit(join(out, file), h.dataStart + e.begin + elem * 4 + 2, 6);
    const r = await runVerify(hf, out);
    assert.equal(r.ok, false);
    const d = r.difference!;
    assert.equal(d.tensor, e.name);
    assert.deepEqual(d.index, [3, 5]);
    assert.equal(d.file, `${out}/${file}`);
    assert.notEqual(d.a, d.b);
    const m = await runVerify(out);
    assert.equal(m.ok, false);
    assert.equal(m.difference!.tensor, e.name);
    // CLI
    const c = cli(["verify", hf, out]);
    assert.equal(c.status, 1);
    assert.match(c.stdout, new RegExp(`tensor '${e.name.replace(/\./g, "\\.")}' differs at index \\[3, 5\\]: a = -?[\\d.e-]+ \\(0x[0-9a-f]{8}\\), b = -?[\\d.e+-]+ \\(0x[0-9a-f]{8}\\)`));
    assert.match(c.stdout, /index: {2}\[3, 5\]/);
    const j = cli(["verify", hf, out, "--json"]);
    const parsed = JSON.parse(j.stdout);
    assert.equal(parsed.ok, false);
    assert.deepEqual(parsed.difference.index, [3, 5]);
  });

  test("a flipped bit in a 3-rank DCP: the HF source vs the output names the TorchTitan tensor and global index (through the RoPE permutation)", async () => {
    const out = join(tmp, "dcp3-flip");
    await runConvert({ source: hf, out, threads: 0, worldSize: 3 });
    const { chunks } = await openDcp(out);
    // wq goes through the RoPE row permutation: the index is in the output's (TorchTitan) coordinates
    const c = chunks.find((x) => /^layers\.0\.attention\.(qkv_linear\.)?wq\.weight$/.test(x.fqn))!;
    assert.ok(c);
    const cols = c.sizes[1]!;
    const elem = 2 * cols + 7;
    flipBit(join(out, c.file), c.dataOffset + elem * 4 + 3, 0);
    const r = await runVerify(hf, out);
    assert.equal(r.ok, false);
    assert.equal(r.difference!.tensor, c.fqn);
    assert.deepEqual(r.difference!.index, [c.offsets[0]! + 2, c.offsets[1]! + 7]);
    assert.equal(r.difference!.file, `${out}/${c.file}`);
  });

  test("per-rank safetensors (FSDP × TP) compare against HF and DCP, and a flipped bit in one rank file is found", async () => {
    const rs = join(tmp, "rank-st");
    const dcp = join(tmp, "rank-st-dcp");
    await runConvert({ source: hf, out: rs, threads: 0, worldSize: 4, tp: 2, format: "safetensors" });
    await runConvert({ source: hf, out: dcp, threads: 0 });
    for (const [a, b] of [[hf, rs], [rs, dcp], [dcp, rs]] as const) {
      const r = await runVerify(a, b);
      assert.equal(r.ok, true, `${a} vs ${b}: ${formatVerify(r)}`);
    }
    const file = "rank-00003-of-00004.safetensors";
    const h = await readSafetensorsHeader(join(rs, file));
    const e = h.entries.find((x) => x.shape.length === 2)!;
    const info = JSON.parse(h.metadata.DCP_SHARDING_INFO!)[e.name].saved_offsets as number[];
    flipBit(join(rs, file), h.dataStart + e.begin + (e.shape[1]! + 1) * 4 + 1);
    const r = await runVerify(dcp, rs);
    assert.equal(r.ok, false);
    assert.equal(r.difference!.tensor, e.name);
    assert.deepEqual(r.difference!.index, [info[0]! + 1, info[1]! + 1]);
    assert.equal((await runVerify(rs)).difference!.tensor, e.name);
  });

  test("missing tensors and shape differences are named", async () => {
    const other = join(tmp, "hf-other");
    writeTinyLlama(other, { ...MODEL, layers: 1 });
    let r = await runVerify(other, hf);
    assert.equal(r.ok, false);
    assert.match(r.difference!.message, /model\.layers\.1\..* of b has no counterpart in a/);
    const wide = join(tmp, "hf-wide");
    writeTinyLlama(wide, { ...MODEL, vocab: 520 });
    r = await runVerify(wide, hf);
    assert.equal(r.ok, false);
    assert.match(r.difference!.message, /shape \[520,64\] in a, \[512,64\] in b/);
  });
});


// ---- quantized HF sources: decoded as convert decodes them, both ways, and a flipped scale is found ---------------

/** Absolute byte offset of the first byte of tensor `name` in a safetensors file (header parsed here, independently). */
function tensorOffset(file: string, name: string): number {
  const b = readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString("utf8")) as Record<string, { data_offsets: [number, number] }>;
  return 8 + n + h[name]!.data_offsets[0];
}

describe("verify: quantized HF sources (FP8 block scales, MXFP4, INT4) against their TorchTitan conversion", () => {
  const cases: { kind: string; write: (d: string) => Promise<unknown>; scale: string; how: RegExp; byte?: number; bit?: number }[] = [
    { kind: "MXFP4", write: async (d: string) => (await import("../src/fixtures/tiny-gpt-oss.js")).writeTinyGptOss(d, { quantizerScales: true }), scale: "model.layers.0.mlp.experts.down_proj_scales", how: /decoded from MXFP4 .*: 4 tensor/ },
    { kind: "INT4", write: async (d: string) => (await import("../src/fixtures/tiny-kimi.js")).writeTinyKimi(d, { layout: "k2" }), scale: "model.layers.1.mlp.experts.0.down_proj.weight_scale", how: /decoded from INT4 .*: 6 tensor/ },
    { kind: "FP8", write: async (d: string) => (await import("../src/fixtures/tiny-deepseek.js")).writeTinyDeepSeek(d, {}), scale: "model.layers.0.self_attn.o_proj.weight_scale_inv", byte: 3, bit: 0, how: /decoded from FP8 with block scales: \d+ tensor/ },
  ];
  for (const c of cases) {
    test(`${c.kind}: verify hf tt and tt hf pass and say how each tensor was compared; one flipped scale bit fails both ways`, async () => {
      const d = mkdtempSync(join(tmp, `q-${c.kind}-`));
      await c.write(join(d, "hf"));
      await runConvert({ source: join(d, "hf"), out: join(d, "tt") });
      for (const [a, b] of [["hf", "tt"], ["tt", "hf"]] as const) {
        const r = await runVerify(join(d, a), join(d, b));
        assert.equal(r.ok, true, formatVerify(r));
        assert.ok(r.notes.some((n) => c.how.test(n)), r.notes.join("\n"));
        assert.ok(r.notes.some((n) => /compared byte for byte: \d+ tensor/.test(n)), r.notes.join("\n"));
      }
      const file = readdirSync(join(d, "hf")).filter((f) => f.endsWith(".safetensors")).map((f) => join(d, "hf", f))
        .find((f) => { try { tensorOffset(f, c.scale); return true; } catch { return false; } })!;
      // a scale's exponent bit (U8 E8M0: bit 4; BF16: bit 12; F32: bit 23): the decoded values change by a power of two
      flipBit(file, tensorOffset(file, c.scale) + (c.byte ?? 1), c.bit ?? 4);
      for (const [a, b] of [["hf", "tt"], ["tt", "hf"]] as const) {
        const r = await runVerify(join(d, a), join(d, b));
        assert.equal(r.ok, false, `${a} vs ${b}: a flipped ${c.scale} bit must be found`);
        assert.match(r.difference!.message, /differs at index/);
      }
    });
  }
});
