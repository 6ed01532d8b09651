// `ckpt demo`: the whole pipeline on a bundled tiny Llama 3, offline. Each step checks its own result
// against an independent recomputation, so the demo doubles as a smoke test of an installation.
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { writeTinyLlama } from "../fixtures/tiny-llama.js";
import { writeTinyGptOss } from "../fixtures/tiny-gpt-oss.js";
import { runInspect } from "../commands/inspect.js";
import { runConvert } from "../commands/convert.js";
import { openDcp } from "../formats/dcp/reader.js";
import { closeSync, openSync, readSync } from "node:fs";
import { CkptError } from "../errors.js";
import { fmtBytes, table } from "../util/format.js";
import { elementSize, numelOf } from "../dtypes.js";
import { buildCatalog } from "../catalog.js";
import { openLocal } from "../sources/local.js";
import { selectMapping } from "../mapping/load.js";
import { compilePattern, fillPattern, matchPattern } from "../mapping/patterns.js";
import { valueOp, type Mapping, type Target } from "../mapping/schema.js";

/** `length` bytes of `path` at `offset` (a tensor's bytes, never the whole file). */
function readRange(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, "r");
  try {
    const b = Buffer.alloc(length);
    for (let got = 0; got < length;) {
      const n = readSync(fd, b, got, length - got, offset + got);
      if (n === 0) throw new CkptError("IO", `${path} ends before byte ${offset + length}`, { file: path });
      got += n;
    }
    return b;
  } finally {
    closeSync(fd);
  }
}

/** HF → TT row order of the q/k permutation written out longhand (torchtitan-layout.md §3.2). */
function ttRowSource(r: number, hd: number): number {
  const h = Math.floor(r / hd);
  const i = r % hd;
  return h * hd + (i % 2) * (hd / 2) + Math.floor(i / 2);
}

/** One step of the demo with the figures it checked (what `ckpt demo --json` prints). */
export interface DemoStep {
  step: number;
  title: string;
  figures: Record<string, unknown>;
}

export interface DemoResult {
  ok: true;
  /** Where the demo files are, when they are kept (--out or --keep). */
  dir?: string;
  steps: DemoStep[];
  /** TorchTitan config lines that load the converted tiny Llama 3 (when the files are kept). */
  torchtitanConfig?: string;
}

/** Runs the demo, logging each step as text through `log` (a no-op for --json); throws VERIFY on a mismatch. */
export async function runDemo(opts: { out?: string; keep?: boolean; log: (s: string) => void }): Promise<DemoResult> {
  const steps: DemoStep[] = [];
  const log = opts.log;
  /** Logs a step's title and records it; its figures are filled in as the step checks them. */
  const step = (title: string): Record<string, unknown> => {
    const figures: Record<string, unknown> = {};
    steps.push({ step: steps.length + 1, title, figures });
    log(`${steps.length}. ${title}`);
    return figures;
  };
  const base = opts.out ? resolve(opts.out) : mkdtempSync(join(tmpdir(), "ckpt-demo-"));
  mkdirSync(base, { recursive: true });
  const hf = join(base, "tiny-llama3-hf");
  const tt = join(base, "tiny-llama3-torchtitan");
  const sharded = join(base, "tiny-llama3-fsdp8");
  const back = join(base, "tiny-llama3-hf-roundtrip");
  const oss = join(base, "tiny-gpt-oss-mxfp4-hf");
  const ossTt = join(base, "tiny-gpt-oss-torchtitan");
  const ossW4 = join(base, "tiny-gpt-oss-fsdp4");
  for (const p of [hf, tt, sharded, back, oss, ossTt, ossW4]) rmSync(p, { recursive: true, force: true });
  try {
    const generated = step("generating a tiny Llama 3 (GQA 4/2 heads, head_dim 16 ≠ hidden/heads, 2 layers, 2 safetensors files)");
    const gen = writeTinyLlama(hf, { files: 2, layers: 2 });
    const ins = await runInspect(hf);
    Object.assign(generated, { tensors: ins.tensors.length, bytes: ins.totalBytes, params: ins.totalParams, dtypes: ins.totals.map((t) => t.dtype) });
    log(`   ${ins.tensors.length} tensors, ${fmtBytes(ins.totalBytes)}, ${ins.totalParams.toLocaleString("en-US")} params, ${ins.totals.map((t) => t.dtype).join("/")}`);

    const converted = step("ckpt convert → TorchTitan DCP (torchtitan@main names, q/k rows permuted for ComplexRoPE)");
    const conv = await runConvert({ source: hf, out: tt, threads: 0 });
    Object.assign(converted, { files: conv.plan.files.length, tensors: conv.plan.tensors.length, bytes: conv.bytesWritten });
    log(`   wrote ${conv.plan.files.length} data file(s) + .metadata, ${conv.plan.tensors.length} tensors, ${fmtBytes(conv.bytesWritten)}`);

    const readBack = step("reading the DCP back with our own reader and checking every tensor against the HF bytes");
    const { chunks } = await openDcp(tt);
    const hfByName = new Map(gen.tensors.map((t) => [t.name, t]));
    const cfg = gen.config as { num_attention_heads: number; num_key_value_heads: number; head_dim?: number; hidden_size: number };
    const hd = cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads;
    // which HF tensor each output comes from, and which are q/k-permuted, is the llama3 mapping's; the bytes are
    // recomputed here longhand
    const llama = selectMapping(gen.config);
    let checked = 0, permuted = 0;
    for (const c of chunks) {
      const data = readRange(join(tt, c.file), c.dataOffset, c.dataLength);
      const rule = hfRuleOf(llama, conv.plan.target, c.fqn);
      if (!rule) throw new CkptError("VERIFY", `demo: no ${llama.architecture} rule names ${c.fqn}`);
      const src = hfByName.get(rule.hf);
      if (!src) throw new CkptError("VERIFY", `demo: no HF tensor ${rule.hf} for ${c.fqn}`);
      let expect = src.data;
      if (rule.rope) {
        const rowBytes = (numelOf(src.shape) / src.shape[0]!) * elementSize(src.dtype);
        const perm = new Uint8Array(expect.length);
        for (let r = 0; r < src.shape[0]!; r++) perm.set(expect.subarray(ttRowSource(r, hd) * rowBytes, (ttRowSource(r, hd) + 1) * rowBytes), r * rowBytes);
        expect = perm;
      }
      if (Buffer.compare(Buffer.from(data), Buffer.from(expect)) !== 0) throw new CkptError("VERIFY", `demo: ${c.fqn} differs from the expected bytes`);
      checked++;
      if (rule.rope) permuted++;
    }
    Object.assign(readBack, { bitExact: checked, heads: cfg.num_attention_heads, kvHeads: cfg.num_key_value_heads, headDim: hd });
    log(`   ${checked} tensors bit-exact (${permuted} q/k permuted with ${cfg.num_attention_heads}/${cfg.num_key_value_heads} heads, head_dim ${hd})`);

    const shardStep = step("ckpt shard --world-size 8 → one __{rank}_0.distcp per rank (FSDP2 Shard(0), uneven rows split like torch.chunk)");
    // torchtitan@main: this model's head_dim (16) ≠ hidden / heads (12), which TorchTitan 0.2's llama3 cannot express
    const sh = await runConvert({ source: hf, out: sharded, worldSize: 8, threads: 0 });
    const ranks = sh.plan.perRank ?? [];
    Object.assign(shardStep, { worldSize: 8, perRank: ranks.map((r) => ({ rank: r.rank, chunks: r.chunks, bytes: r.bytes })) });
    log(table(["rank", "chunks", "bytes"], ranks.map((r) => [String(r.rank), String(r.chunks), fmtBytes(r.bytes)]), [0, 1, 2]).split("\n").map((l) => "   " + l).join("\n"));

    const roundTrip = step("ckpt convert --to hf → back to HF safetensors; checking the round trip is byte-identical");
    await runConvert({ source: tt, out: back, to: "hf", threads: 0 });
    const cat = await buildCatalog(await openLocal(back));
    let same = 0;
    for (const t of gen.tensors) {
      const c = cat.tensors.get(t.name);
      if (!c) throw new CkptError("VERIFY", `demo: round trip lost ${t.name}`);
      const p = c.pieces[0]!;
      const bytes = readRange(join(back, p.file), p.byteOffset, p.byteLength);
      if (Buffer.compare(Buffer.from(bytes), Buffer.from(t.data)) !== 0) throw new CkptError("VERIFY", `demo: round trip changed ${t.name}`);
      same++;
    }
    Object.assign(roundTrip, { identical: same, tensors: gen.tensors.length });
    log(`   ${same}/${gen.tensors.length} tensors identical after HF → TorchTitan → HF`);
    const mxfp4 = step("a tiny gpt-oss with MXFP4 experts (every nibble, edge scales) → TorchTitan's gpt_oss names, and shard for 4");
    Object.assign(mxfp4, await checkMxfp4Demo(oss, ossTt, ossW4, log));
    if (conv.torchtitanConfig) log(`\nTorchTitan config for the converted checkpoint:\n${conv.torchtitanConfig}`);
    const kept = opts.keep || opts.out;
    log(`\ndemo OK${kept ? `; files in ${base}` : ""}`);
    // the config names the converted folder: only worth returning when the folder is kept
    return { ok: true, ...(kept ? { dir: base, torchtitanConfig: conv.torchtitanConfig } : {}), steps };
  } finally {
    if (!opts.keep && !opts.out) rmSync(base, { recursive: true, force: true });
  }
}

/**
 * The HF tensor a TorchTitan output name comes from by the mapping's rules (with `op`, only rules decoding with it,
 * and the HF name of its scales).
 */
function hfRuleOf(mapping: Mapping, target: Target, tt: string, op?: "mxfp4"): { hf: string; rope: boolean; scales?: string } | undefined {
  for (const r of mapping.tensors) {
    const pat = typeof r.tt === "string" ? r.tt : r.tt?.[target];
    if (!pat || !r.hf || r.drop) continue;
    const decode = op ? valueOp(r, op) : undefined;
    if (op && !decode) continue;
    const vals = matchPattern(compilePattern(pat), tt);
    if (vals) return { hf: fillPattern(r.hf, vals), rope: r.rope !== undefined, ...(decode ? { scales: fillPattern(decode.scales, vals) } : {}) };
  }
  return undefined;
}

const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

/** bf16 bits of a value MXFP4 gives exactly (every E2M1 × 2^k with a normal scale is a bf16 value). */
function bf16Bits(v: number): number {
  const f = new Float32Array([v]);
  return new Uint32Array(f.buffer)[0]! >>> 16;
}

/** Converts the MXFP4 fixture and checks every expert value against E2M1[nibble] · 2^(scale − 127), worked longhand. */
async function checkMxfp4Demo(hf: string, tt: string, w4: string, log: (s: string) => void): Promise<{ values: number; perRankBytes: number[] }> {
  const gen = writeTinyGptOss(hf, { layout: "mxfp4" });
  const conv = await runConvert({ source: hf, out: tt, format: "safetensors", threads: 0 });
  const src = new Map(gen.tensors.map((t) => [t.name, t]));
  const cat = await buildCatalog(await openLocal(tt));
  let values = 0;
  const mapping = selectMapping(gen.config);
  const names = new Set<string>();
  for (const [name, t] of cat.tensors) {
    const rule = hfRuleOf(mapping, conv.plan.target, name, "mxfp4");
    if (!rule) continue;
    names.add(name.slice(name.lastIndexOf(".") + 1));
    const blocks = src.get(rule.hf)!, scales = src.get(rule.scales!)!;
    const p = t.pieces[0]!;
    const out = readRange(join(tt, p.file), p.byteOffset, p.byteLength);
    const cols = t.shape[t.shape.length - 1]!;
    for (let i = 0; i < out.length / 2; i++) {
      const row = Math.floor(i / cols), c = i % cols;
      const byte = blocks.data[row * (cols / 2) + (c >> 1)]!;
      const want = bf16Bits(E2M1[c & 1 ? byte >> 4 : byte & 15]! * 2 ** (scales.data[row * (cols / 32) + (c >> 5)]! - 127));
      if ((out[2 * i]! | (out[2 * i + 1]! << 8)) !== want) throw new CkptError("VERIFY", `demo: ${name} element ${i} is not E2M1 x 2^(scale - 127)`);
      values++;
    }
  }
  if (values === 0) throw new CkptError("VERIFY", "demo: no gpt-oss expert tensors were written");
  log(`   ${values.toLocaleString("en-US")} MXFP4 expert values decoded bit-exact to bf16 (${[...names].join(" / ")}, gate/up interleaved)`);
  const sh = await runConvert({ source: hf, out: w4, worldSize: 4, threads: 0 });
  const perRankBytes = (sh.plan.perRank ?? []).map((r) => r.bytes);
  log(`   sharded for 4 ranks: ${perRankBytes.map((b) => fmtBytes(b)).join(", ")}`);
  return { values, perRankBytes };
}
