// Every tensor-writing command at real size, in bounded memory: gpt-oss (MXFP4 experts) and Kimi K2 (INT4 experts)
// checkpoints whose single safetensors file is > 4 GiB (embedding and lm_head of > 2 GiB each in BF16; sparse, so
// they cost no disk), converted with --dtype f32 so one output tensor is > 4 GiB. Each command runs as the CLI in
// its own process; its peak RSS (getrusage maxrss, from a --require hook) must stay ≤ 512 MiB, which also fails any
// command that reads a checkpoint file whole (Node cannot even read a file over 2 GiB whole). Correctness: the
// round trips HF → TorchTitan (f32) → HF --requantize give every source tensor back byte for byte (headers parsed
// and bytes compared here, by ranged reads, independently of ckpt's readers); the merge's adapted weight equals
// RNE_bf16(f32(W + B·A)) computed here from the stored bytes (the adapter's values are small dyadic numbers, so
// B·A is exact and PyTorch's f32 merge rounds only in the final add), every other tensor byte-identical to the base.
// Non-zero marker rows sit past the 2 GiB and 4 GiB file offsets, where a 32-bit offset would wrap.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { writeTinyGptOss } from "../src/fixtures/tiny-gpt-oss.js";
import { writeTinyKimi } from "../src/fixtures/tiny-kimi.js";
import { tinyPeftAdapter, writePeftAdapter } from "../src/fixtures/tiny-lora.js";
import { firstTensorDifference, readRange, sameBytes, tensorRanges } from "./helpers/st-ranges.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");
const MiB = 1 << 20;
const RSS_LIMIT_MIB = 512;
const tmp = mkdtempSync(join(process.env.CKPT_LARGE_TMP ?? tmpdir(), "ckpt-large-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

// getrusage's peak RSS of the CLI process (worker threads included), written when it exits
const HOOK = join(tmp, "rss-hook.cjs");
writeFileSync(HOOK, `process.on("exit", () => require("node:fs").writeFileSync(process.env.CKPT_RSS_OUT, String(process.resourceUsage().maxRSS)));\n`);

const table: { command: string; wall: number; rss: number }[] = [];
after(() => {
  const w = Math.max(...table.map((r) => r.command.length), 7);
  process.stdout.write(`\n${"command".padEnd(w)}  wall s  peak RSS MiB\n`);
  for (const r of table) process.stdout.write(`${r.command.padEnd(w)}  ${r.wall.toFixed(1).padStart(6)}  ${r.rss.toFixed(0).padStart(12)}\n`);
});

/** Runs `ckpt <args>`, asserts exit 0 and peak RSS ≤ 512 MiB, records the row. */
function ckpt(label: string, args: string[]): string {
  const rssOut = join(tmp, "rss");
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ["--require", HOOK, CLI, ...args], { encoding: "utf8", env: { ...process.env, CKPT_RSS_OUT: rssOut }, maxBuffer: 64 * MiB });
  const wall = (performance.now() - t0) / 1000;
  assert.equal(r.status, 0, `ckpt ${args.join(" ")} failed:\n${r.stderr}`);
  const rss = Number(readFileSync(rssOut, "utf8")) / 1024;
  table.push({ command: `ckpt ${label}`, wall, rss });
  assert.ok(rss <= RSS_LIMIT_MIB, `ckpt ${label}: peak RSS ${rss.toFixed(0)} MiB > ${RSS_LIMIT_MIB} MiB`);
  return r.stdout;
}

/** Every tensor of `want` is in `got` with the same dtype, shape and bytes (except those `except` names). */
function assertSameTensors(want: string, got: string, except?: (name: string) => boolean): void {
  const r = firstTensorDifference(want, got, except);
  assert.equal(r.difference, undefined, r.difference);
}

/**
 * Rewrites the tiny checkpoint in `dir` as one safetensors file with `embed` and `head` of shape [vocab, hidden] BF16:
 * small tensors first, then the two large ones (the head ends past 4 GiB), sparse except marker rows at the start, at
 * the rows straddling the 2 GiB and 4 GiB file offsets, and at the end. config.json's vocab_size follows.
 */
function enlarge(dir: string, embed: string, head: string, vocab: number): void {
  const small = tensorRanges(dir);
  const hidden = small.get(embed)!.shape[1]!;
  const big = vocab * hidden * 2;
  const names = [...small.keys()].filter((n) => n !== embed && n !== head).sort();
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let off = 0;
  for (const n of names) { const t = small.get(n)!; header[n] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.end - t.start] }; off += t.end - t.start; }
  off += (8 - (off % 8)) % 8;
  header[embed] = { dtype: "BF16", shape: [vocab, hidden], data_offsets: [off, off + big] };
  header[head] = { dtype: "BF16", shape: [vocab, hidden], data_offsets: [off + big, off + 2 * big] };
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const data = names.map((n) => readRange(small.get(n)!.file, small.get(n)!.start, small.get(n)!.end - small.get(n)!.start));
  for (const f of readdirSync(dir).filter((x) => x.endsWith(".safetensors") || x.endsWith(".index.json"))) rmSync(join(dir, f));
  const file = join(dir, "model.safetensors");
  const fd = openSync(file, "w");
  try {
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    writeSync(fd, len, 0, 8, 0);
    writeSync(fd, Buffer.from(json), 0, json.length, 8);
    let p = 8 + json.length;
    for (const d of data) { writeSync(fd, d, 0, d.length, p); p += d.length; }
    const base = 8 + json.length + off;
    ftruncateSync(fd, base + 2 * big);
    const rowBytes = hidden * 2;
    const markRow = (tensorStart: number, row: number) => {
      const b = Buffer.alloc(rowBytes);
      for (let j = 0; j < hidden; j++) b.writeUInt16LE(0x3f80 + ((row * 7 + j) % 97), 2 * j); // BF16 1.0 … ~1.8, varied
      writeSync(fd, b, 0, rowBytes, tensorStart + row * rowBytes);
    };
    for (const [start, fileOffset] of [[base, 2 ** 31], [base + big, 2 ** 32]] as const) {
      const straddle = Math.floor((fileOffset - start) / rowBytes);
      for (const row of [0, 1, straddle - 1, straddle, straddle + 1, vocab - 1]) if (row >= 0 && row < vocab) markRow(start, row);
    }
  } finally { closeSync(fd); }
  const cfgPath = join(dir, "config.json");
  const cfg = JSON.parse(readFileSync(cfgPath, "utf8")) as Record<string, unknown>;
  cfg.vocab_size = vocab;
  writeFileSync(cfgPath, JSON.stringify(cfg, null, 2) + "\n");
  if (!SMALL) assert.ok(statSync(file).size > 2 ** 32, "the checkpoint file is > 4 GiB");
}

/** BF16 bits of f32 x, rounded to nearest even (x finite). */
function bf16Rne(x: number): number {
  const u = new Uint32Array(new Float32Array([x]).buffer)[0]!;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
const bf16ToF32 = (bits: number): number => new Float32Array(new Uint32Array([bits << 16]).buffer)[0]!;

const rmOut = (...dirs: string[]) => { for (const d of dirs) rmSync(d, { recursive: true, force: true }); };

// the smallest vocab whose BF16 [vocab, hidden] tensor is > 2 GiB (so its F32 output is > 4 GiB); CKPT_LARGE_SMALL=1
// runs the same steps on a small vocab (a quick check of the test itself)
const SMALL = process.env.CKPT_LARGE_SMALL === "1";
const vocabFor = (hidden: number) => (SMALL ? 3000 : Math.floor(2 ** 31 / (hidden * 2)) + 1024);

test("gpt-oss MXFP4, one 4.3 GB file, a 4.3 GB f32 output tensor: inspect, convert, verify both ways, shard --ep, --to hf, --requantize mxfp4 round trip, lora merge; ≤ 512 MiB each", { timeout: 30 * 60_000 }, () => {
  const hf = join(tmp, "gpt-oss");
  writeTinyGptOss(hf, { quantizerScales: true, seed: 7 });
  enlarge(hf, "model.embed_tokens.weight", "lm_head.weight", vocabFor(64));
  ckpt("inspect --stats (gpt-oss)", ["inspect", hf, "--stats", "--quiet"]);
  ckpt("inspect --health (gpt-oss)", ["inspect", hf, "--health", "--quiet"]);

  const tt32 = join(tmp, "gpt-oss-tt32");
  ckpt("convert --dtype f32 (gpt-oss)", ["convert", hf, tt32, "--dtype", "f32", "--quiet"]);
  ckpt("verify hf tt (gpt-oss)", ["verify", hf, tt32, "--quiet"]);
  ckpt("verify tt hf (gpt-oss)", ["verify", tt32, hf, "--quiet"]);
  ckpt("verify tt (manifest)", ["verify", tt32, "--quiet"]);

  const rq = join(tmp, "gpt-oss-rq");
  ckpt("convert --to hf --requantize mxfp4 (gpt-oss)", ["convert", tt32, rq, "--to", "hf", "--config", hf, "--requantize", "mxfp4", "--dtype", "bf16", "--quiet"]);
  assertSameTensors(hf, rq);
  rmOut(rq);

  const back = join(tmp, "gpt-oss-back");
  ckpt("convert --to hf (gpt-oss)", ["convert", tt32, back, "--to", "hf", "--config", hf, "--dtype", "bf16", "--quiet"]);
  // the experts come back as values under other names; every other tensor is the source's, byte for byte
  const src = tensorRanges(hf), got = tensorRanges(back);
  const common = [...src.keys()].filter((n) => got.has(n));
  assert.ok(common.includes("model.embed_tokens.weight") && common.length > src.size / 2, `${common.length} common tensors`);
  for (const n of common) assert.ok(sameBytes(src.get(n)!, got.get(n)!), `${n}: --to hf bytes differ from the source's`);
  rmOut(back, tt32);

  const sh = join(tmp, "gpt-oss-ep");
  ckpt("shard --world-size 2 --ep 2 (gpt-oss)", ["shard", hf, sh, "--world-size", "2", "--ep", "2", "--quiet"]);
  ckpt("verify hf shard (gpt-oss)", ["verify", hf, sh, "--quiet"]);
  rmOut(sh);

  // LoRA on layer 0's q_proj: A, B in {−2 … 2}/16, r = 2, alpha = 2 (scale 1): B·A is exact in f32
  const base = tensorRanges(hf);
  const q = "model.layers.0.self_attn.q_proj.weight";
  const [out, inn] = base.get(q)!.shape as [number, number];
  const ad = tinyPeftAdapter([{ name: q, dtype: "BF16", shape: [out, inn], data: new Uint8Array(0) }], { r: 2, alpha: 2, targets: ["q_proj"], baseModel: "tiny/gpt-oss" });
  const A = new Float32Array(2 * inn).map((_, i) => ((i % 5) - 2) / 16);
  const B = new Float32Array(out * 2).map((_, i) => ((i % 3) - 1) / 16);
  ad.tensors = ad.tensors.map((t) => ({ ...t, data: new Uint8Array((t.name.includes("lora_A") ? A : B).buffer.slice(0)) }));
  writePeftAdapter(join(tmp, "adapter"), ad);
  const merged = join(tmp, "gpt-oss-merged");
  ckpt("lora merge (gpt-oss)", ["lora", "merge", hf, join(tmp, "adapter"), merged, "--quiet"]);
  assertSameTensors(hf, merged, (n) => n === q);
  const m = tensorRanges(merged).get(q)!;
  const W = readRange(hf + "/model.safetensors", base.get(q)!.start, out * inn * 2), G = readRange(m.file, m.start, out * inn * 2);
  for (let i = 0; i < out; i++) for (let j = 0; j < inn; j++) {
    const ba = B[i * 2]! * A[j]! + B[i * 2 + 1]! * A[inn + j]!; // exact: dyadic values
    const want = bf16Rne(Math.fround(bf16ToF32(W.readUInt16LE(2 * (i * inn + j))) + ba));
    assert.equal(G.readUInt16LE(2 * (i * inn + j)), want, `${q}[${i}, ${j}]`);
  }
  ckpt("verify merged (manifest)", ["verify", merged, "--quiet"]);
  rmOut(merged);
});

test("Kimi K2 INT4, one 4.3 GB file: convert, verify both ways, --requantize int4 round trip; ≤ 512 MiB each", { timeout: 30 * 60_000 }, () => {
  const hf = join(tmp, "kimi");
  writeTinyKimi(hf, { layout: "k2", quantizerScales: true });
  enlarge(hf, "model.embed_tokens.weight", "lm_head.weight", vocabFor(224));
  const tt = join(tmp, "kimi-tt");
  ckpt("convert (kimi)", ["convert", hf, tt, "--quiet"]);
  ckpt("verify hf tt (kimi)", ["verify", hf, tt, "--quiet"]);
  ckpt("verify tt hf (kimi)", ["verify", tt, hf, "--quiet"]);
  const rq = join(tmp, "kimi-rq");
  ckpt("convert --to hf --requantize int4 (kimi)", ["convert", tt, rq, "--to", "hf", "--config", hf, "--requantize", "int4", "--quiet"]);
  assertSameTensors(hf, rq);
  assert.ok(!existsSync(rq + ".partial"));
  rmOut(rq, tt);
});
