// Unit tests for TorchTitan's LoRA model from `convert|shard --lora / --lora-rank` (src/lora/tt-model.ts): the fused
// wqkv adapter reassembled here independently from the PEFT tensors (per KV group: q heads, k head, v head; q/k rows
// RoPE-permuted by the formula of docs/torchtitan-layout.md §3.2; A's stacked, ranks zero-padded), the LoRAConverter settings,
// byte-identical outputs, every mesh holding the same values, fresh adapters as LoRALinear initialises them, export
// back to PEFT, health on the result, and the refusals (one line, nothing written).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildCatalog } from "../src/catalog.js";
import { buildSafetensors } from "../src/formats/safetensors/writer.js";
import { writeTinyLlama, type GeneratedTensor } from "../src/fixtures/tiny-llama.js";
import { writeTinyQwen3 } from "../src/fixtures/tiny-qwen3.js";
import { writeTinyQwen35 } from "../src/fixtures/tiny-qwen3-5.js";
import { tinyPeftAdapter, writePeftAdapter } from "../src/fixtures/tiny-lora.js";
import { runHealth } from "../src/health/index.js";
import { loraConvert, loraExport } from "../src/commands/lora-convert.js";
import { loraMerge } from "../src/commands/lora-merge.js";
import { readTensorBytes, toF32 } from "../src/lora/tensors.js";
import { runConvert } from "../src/commands/convert.js";
import { runVerify } from "../src/commands/verify.js";
import { openSource } from "../src/sources/resolve.js";
import type { DType } from "../src/dtypes.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");
const H = 4, HKV = 2, HD = 16, HIDDEN = 48;

function tmp(): { dir: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-lora-tt-"));
  return { dir, done: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Every tensor of a checkpoint (any format, any sharding) as f32 values. */
async function tensorsOf(path: string): Promise<Map<string, { shape: number[]; dtype: DType; v: Float32Array }>> {
  const s = await openSource(path);
  try {
    const c = await buildCatalog(s);
    const out = new Map<string, { shape: number[]; dtype: DType; v: Float32Array }>();
    for (const t of c.tensors.values()) {
      const n = t.shape.reduce((a, b) => a * b, 1);
      out.set(t.name, { shape: t.shape, dtype: t.dtype, v: t.dtype.startsWith("F") || t.dtype === "BF16" ? toF32(await readTensorBytes(s, t), t.dtype, n) : new Float32Array(0) });
    }
    return out;
  } finally {
    await s.close();
  }
}

function f32(t: GeneratedTensor): Float32Array {
  return toF32(t.data, t.dtype as DType, t.shape.reduce((a, b) => a * b, 1));
}

/** TorchTitan row h·hd + 2j + c takes HF row h·hd + c·hd/2 + j (docs/torchtitan-layout.md §3.2). */
function ttRow(r: number, hd: number): number {
  const h = Math.floor(r / hd), i = r % hd, j = Math.floor(i / 2), c = i % 2;
  return h * hd + c * (hd / 2) + j;
}

function fixture(dir: string, peft: Parameters<typeof tinyPeftAdapter>[1] = {}): { base: string; adapter: string; lora: ReturnType<typeof tinyPeftAdapter> } {
  const base = join(dir, "llama"), adapter = join(dir, "peft");
  const { tensors } = writeTinyLlama(base, { hidden: HIDDEN, heads: H, kvHeads: HKV, headDim: HD, ffn: 96, vocab: 128, layers: 2 });
  const lora = tinyPeftAdapter(tensors, { r: 8, alpha: 16, ...peft });
  writePeftAdapter(adapter, lora);
  return { base, adapter, lora };
}

test("convert --lora: fused wqkv adapter = PEFT's q/k/v stacked, rows per KV group, q/k RoPE-permuted; wo zero-padded", async () => {
  const t = tmp();
  try {
    const { base, adapter, lora } = fixture(t.dir);
    const r = await runConvert({ source: base, out: join(t.dir, "out"), lora: adapter, threads: 0 });
    assert.deepEqual(r.lora?.torchtitan, { rank: 24, alpha: 48, target_modules: ["wo", "wqkv"] });
    assert.equal(r.lora?.scale, 2);
    assert.match(r.torchtitanConfig!, /LoRAConverter\.Config\(rank=24, alpha=48\.0, target_modules=\["wo", "wqkv"\]\)/);
    assert.match(r.torchtitanConfig!, /--module llama3 .*--checkpoint\.initial_load_path /);
    const out = await tensorsOf(join(t.dir, "out"));
    const peft = new Map(lora.tensors.map((x) => [x.name.replace("base_model.model.", ""), f32(x)]));
    const R = 24, hpk = H / HKV;
    for (const L of [0, 1]) {
      const p = (m: string, part: "A" | "B") => peft.get(`model.layers.${L}.self_attn.${m}.lora_${part}.weight`)!;
      const A = out.get(`layers.${L}.attention.qkv_linear.wqkv.lora_a.weight`)!, B = out.get(`layers.${L}.attention.qkv_linear.wqkv.lora_b.weight`)!;
      assert.deepEqual(A.shape, [R, HIDDEN]);
      assert.deepEqual(B.shape, [(H + 2 * HKV) * HD, R]);
      assert.deepEqual([...A.v], [...p("q_proj", "A"), ...p("k_proj", "A"), ...p("v_proj", "A")]);
      // expected fused B, built row by row
      const want: number[] = [];
      const row = (Bp: Float32Array, r: number, col0: number) => { for (let c = 0; c < R; c++) want.push(c >= col0 && c < col0 + 8 ? Bp[r * 8 + c - col0]! : 0); };
      for (let g = 0; g < HKV; g++) {
        for (let q = 0; q < hpk * HD; q++) row(p("q_proj", "B"), ttRow(g * hpk * HD + q, HD), 0);
        for (let k = 0; k < HD; k++) row(p("k_proj", "B"), ttRow(g * HD + k, HD), 8);
        for (let v = 0; v < HD; v++) row(p("v_proj", "B"), g * HD + v, 16);
      }
      assert.deepEqual([...B.v], want, `layer ${L} fused lora_b`);
      const Ao = out.get(`layers.${L}.attention.wo.lora_a.weight`)!, Bo = out.get(`layers.${L}.attention.wo.lora_b.weight`)!;
      assert.deepEqual([...Ao.v], [...p("o_proj", "A"), ...new Array<number>(16 * 64).fill(0)]);
      const wantO: number[] = [];
      for (let i = 0; i < HIDDEN; i++) for (let c = 0; c < R; c++) wantO.push(c < 8 ? p("o_proj", "B")[i * 8 + c]! : 0);
      assert.deepEqual([...Bo.v], wantO);
      assert.ok(!out.has(`layers.${L}.feed_forward.w1.lora_a.weight`), "w1 is not a target");
    }
    // base weights unchanged by --lora: the same as a plain convert
    await runConvert({ source: base, out: join(t.dir, "plain"), threads: 0 });
    const plain = await tensorsOf(join(t.dir, "plain"));
    for (const [k, v] of plain) assert.deepEqual([...out.get(k)!.v], [...v.v], k);
    assert.equal(out.size, plain.size + 8);
    const v = await runVerify(base, join(t.dir, "out"));
    assert.ok(v.ok, JSON.stringify(v));
    assert.ok(v.notes.some((n) => /^8 LoRA adapter tensor\(s\) of b .* not compared/.test(n)), v.notes.join("; "));

    // health reads TorchTitan's adapters: four trained pairs
    const health = await runHealth(join(t.dir, "out"));
    assert.deepEqual(health.lora.map((x) => x.module).sort(), ["layers.0.attention.qkv_linear.wqkv", "layers.0.attention.wo", "layers.1.attention.qkv_linear.wqkv", "layers.1.attention.wo"]);
    assert.equal(health.findings.filter((f) => f.severity === "error").length, 0, JSON.stringify(health.findings));

    // back to PEFT: q/k/v share the fused A, each with its rows of B (un-permuted): B·A equals PEFT's product
    const exp = await loraExport({ input: join(t.dir, "out"), out: join(t.dir, "exported"), config: base, alpha: 48 });
    assert.equal(exp.adapterConfig.r, 24);
    assert.equal(exp.adapterConfig.lora_alpha, 48);
    const back = await tensorsOf(join(t.dir, "exported"));
    for (const m of ["q_proj", "k_proj", "v_proj", "o_proj"]) {
      const key = `base_model.model.model.layers.1.self_attn.${m}`;
      const [A0, B0] = [peft.get(`model.layers.1.self_attn.${m}.lora_A.weight`)!, peft.get(`model.layers.1.self_attn.${m}.lora_B.weight`)!];
      const [A1, B1] = [back.get(`${key}.lora_A.weight`)!, back.get(`${key}.lora_B.weight`)!];
      const rows = B1.shape[0]!, cols = A1.shape[1]!;
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < cols; j++) {
          let x = 0, y = 0;
          for (let k = 0; k < 8; k++) x += B0[i * 8 + k]! * A0[k * cols + j]!;
          for (let k = 0; k < 24; k++) y += B1.v[i * 24 + k]! * A1.v[k * cols + j]!;
          assert.ok(Math.abs(x - y) <= 1e-12, `${m} (B·A)[${i},${j}]: ${x} vs ${y}`);
        }
      }
    }
  } finally {
    t.done();
  }
});

test("convert --lora is byte-identical run to run, and every mesh (--world-size, --tp, --ep) holds the same values", async () => {
  const t = tmp();
  try {
    const { base, adapter } = fixture(t.dir, { targets: ["q_proj", "v_proj", "gate_proj", "down_proj"] });
    const files = (d: string) => readdirSync(d).filter((f) => f.endsWith(".distcp") || f === ".metadata").sort().map((f) => readFileSync(join(d, f)));
    await runConvert({ source: base, out: join(t.dir, "a"), lora: adapter, threads: 0 });
    await runConvert({ source: base, out: join(t.dir, "b"), lora: adapter, threads: 2 });
    assert.deepEqual(files(join(t.dir, "a")), files(join(t.dir, "b")));
    const ref = await tensorsOf(join(t.dir, "a"));
    for (const [ws, tp] of [[4, 1], [4, 2], [3, 1]] as const) {
      const o = join(t.dir, `ws${ws}tp${tp}`);
      const r = await runConvert({ source: base, out: o, lora: adapter, worldSize: ws, tp, threads: 0 });
      assert.deepEqual(r.lora?.torchtitan, { rank: 16, alpha: 32, target_modules: ["w1", "w2", "wqkv"] });
      const got = await tensorsOf(o);
      assert.equal(got.size, ref.size);
      for (const [k, v] of ref) assert.deepEqual([...got.get(k)!.v], [...v.v], `${k} at world ${ws} tp ${tp}`);
    }
    // qwen3 MoE with expert parallelism: experts are not Linears; attention adapters as everywhere
    const moe = join(t.dir, "moe");
    const { tensors } = writeTinyQwen3(moe, { experts: 4, layers: 2 });
    writePeftAdapter(join(t.dir, "peft-moe"), tinyPeftAdapter(tensors, { r: 4, alpha: 8 }));
    const r1 = await runConvert({ source: moe, out: join(t.dir, "moe1"), lora: join(t.dir, "peft-moe"), threads: 0 });
    const r2 = await runConvert({ source: moe, out: join(t.dir, "moe-ep"), lora: join(t.dir, "peft-moe"), worldSize: 4, ep: 2, threads: 0 });
    assert.deepEqual(r1.lora?.torchtitan, { rank: 12, alpha: 24, target_modules: ["wo", "wqkv"] });
    assert.deepEqual(r2.lora?.torchtitan, r1.lora?.torchtitan);
    const [m1, m2] = [await tensorsOf(join(t.dir, "moe1")), await tensorsOf(join(t.dir, "moe-ep"))];
    for (const [k, v] of m1) assert.deepEqual([...m2.get(k)!.v], [...v.v], k);
  } finally {
    t.done();
  }
});

test("--lora-rank: fresh adapters on every Linear (lora_a kaiming-uniform, lora_b 0), seeded, --lora-targets", async () => {
  const t = tmp();
  try {
    const { base } = fixture(t.dir);
    const r = await runConvert({ source: base, out: join(t.dir, "f"), loraRank: 8, loraAlpha: 16, threads: 0 });
    assert.deepEqual(r.lora?.torchtitan, { rank: 8, alpha: 16, target_modules: null });
    const out = await tensorsOf(join(t.dir, "f"));
    const adapted = [...out.keys()].filter((k) => k.endsWith(".lora_a.weight")).map((k) => k.slice(0, -".lora_a.weight".length)).sort();
    assert.deepEqual(adapted, ["layers.0.attention.qkv_linear.wqkv", "layers.0.attention.wo", "layers.0.feed_forward.w1", "layers.0.feed_forward.w2", "layers.0.feed_forward.w3",
      "layers.1.attention.qkv_linear.wqkv", "layers.1.attention.wo", "layers.1.feed_forward.w1", "layers.1.feed_forward.w2", "layers.1.feed_forward.w3", "lm_head"]);
    for (const m of adapted) {
      const A = out.get(`${m}.lora_a.weight`)!, B = out.get(`${m}.lora_b.weight`)!;
      const inF = A.shape[1]!, bound = 1 / Math.sqrt(inF);
      assert.equal(A.shape[0], 8);
      assert.equal(A.dtype, "F32");
      assert.ok(A.v.every((x) => Math.abs(x) < bound), `${m}: |A| within 1/√in`);
      const std = Math.sqrt(A.v.reduce((s, x) => s + x * x, 0) / A.v.length);
      assert.ok(Math.abs(std / (bound / Math.sqrt(3)) - 1) < 0.15, `${m}: std ${std} vs U(±${bound})'s ${bound / Math.sqrt(3)}`);
      assert.ok(B.v.every((x) => x === 0), `${m}: B = 0`);
      assert.equal(B.shape[1], 8);
    }
    // same seed → same bytes; another seed → other values
    await runConvert({ source: base, out: join(t.dir, "f2"), loraRank: 8, loraAlpha: 16, threads: 0 });
    await runConvert({ source: base, out: join(t.dir, "f3"), loraRank: 8, loraAlpha: 16, seed: 1, threads: 0 });
    const [b2, b3] = [await tensorsOf(join(t.dir, "f2")), await tensorsOf(join(t.dir, "f3"))];
    assert.deepEqual([...b2.get("lm_head.lora_a.weight")!.v], [...out.get("lm_head.lora_a.weight")!.v]);
    assert.notDeepEqual([...b3.get("lm_head.lora_a.weight")!.v], [...out.get("lm_head.lora_a.weight")!.v]);
    // sharded reads start inside a module's values: the same values at any mesh
    await runConvert({ source: base, out: join(t.dir, "f-ws3"), loraRank: 8, loraAlpha: 16, worldSize: 3, threads: 0 });
    const ws3 = await tensorsOf(join(t.dir, "f-ws3"));
    for (const [k, v] of out) assert.deepEqual([...ws3.get(k)!.v], [...v.v], k);
    const s = await runConvert({ source: base, out: join(t.dir, "f4"), loraRank: 4, loraTargets: ["wqkv", "wo"], threads: 0 });
    assert.deepEqual(s.lora?.torchtitan, { rank: 4, alpha: 16, target_modules: ["wo", "wqkv"] });
    assert.equal([...(await tensorsOf(join(t.dir, "f4"))).keys()].filter((k) => k.includes(".lora_")).length, 8);
    // health: untrained adapters reported
    const h = await runHealth(join(t.dir, "f"));
    assert.equal(h.findings.filter((f) => f.code === "LORA_ZERO_B").length, 11);
    assert.equal(h.findings.filter((f) => f.severity === "error").length, 0);
  } finally {
    t.done();
  }
});

test("refused with one line, nothing written: DoRA, lora bias, modules_to_save, embeddings, per-module scales, bad options", () => {
  const t = tmp();
  try {
    const { base } = fixture(t.dir);
    const cases: [string, (Parameters<typeof tinyPeftAdapter>[1] & { rename?: boolean }) | undefined, string[], RegExp][] = [
      ["dora", { dora: true }, [], /DoRA.*ckpt lora merge/],
      ["bias", { extraConfig: { lora_bias: true } }, [], /lora_bias.*ckpt lora merge/],
      ["save", { extraConfig: { modules_to_save: ["lm_head"] } }, [], /modules_to_save.*ckpt lora merge/],
      ["pattern", { extraConfig: { rank_pattern: { q_proj: 4 } } }, [], /different scales.*ckpt lora merge/],
      ["embedding", { targets: ["embed_tokens"] }, [], /tok_embeddings, which is not a Linear.*ckpt lora merge/],
      ["embedding-peft", { targets: ["embed_tokens"], rename: true }, [], /embeddings \(lora_embedding_A\/B\).*ckpt lora merge/],
      ["targets", undefined, ["--lora-rank", "8", "--lora-targets", "wq,wo"], /--lora-targets wq: no Linear .*wqkv/],
      ["old-target", undefined, ["--lora-rank", "8", "--target", "torchtitan@0.2"], /LoRAConverter is in torchtitan@main/],
      ["both", { }, ["--lora-rank", "8"], /drop --lora-rank/],
      ["alpha-alone", undefined, ["--lora-alpha", "8"], /go with --lora-rank/],
    ];
    for (const [name, peft, extra, re] of cases) {
      const args = ["convert", base, join(t.dir, `out-${name}`), ...extra];
      if (peft) {
        const dir = join(t.dir, `peft-${name}`);
        const a = tinyPeftAdapter(readBase(base), { r: 8, alpha: 16, ...peft });
        // PEFT's own names for an embedding's adapter
        if ((peft as { rename?: boolean }).rename) for (const x of a.tensors) x.name = x.name.replace(".lora_A.", ".lora_embedding_A.").replace(".lora_B.", ".lora_embedding_B.");
        writePeftAdapter(dir, a);
        args.push("--lora", dir);
      }
      const r = spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8" });
      assert.equal(r.status, 1, `${name}: ${r.stderr}`);
      const lines = r.stderr.trim().split("\n").filter((l) => !l.startsWith("ckpt: run `ckpt --help`"));
      assert.equal(lines.length, 1, `${name}: ${r.stderr}`);
      assert.match(lines[0]!, re, name);
      assert.ok(!existsSync(join(t.dir, `out-${name}`)) && !existsSync(join(t.dir, `out-${name}.partial`)), `${name}: nothing written`);
    }
  } finally {
    t.done();
  }
});

/** The tiny Llama's HF tensors again (the adapter fixture needs their names and shapes). */
function readBase(dir: string): GeneratedTensor[] {
  const buf = readFileSync(join(dir, readdirSync(dir).find((f) => f.endsWith(".safetensors"))!));
  const n = Number(buf.readBigUInt64LE(0));
  const h = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  return Object.entries(h).filter(([k]) => k !== "__metadata__").map(([name, v]) => ({ name, dtype: v.dtype as DType, shape: v.shape, data: new Uint8Array(buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1])) }) as GeneratedTensor);
}

test("export: untrained adapters on Linears PEFT cannot adapt (MoE routers) are left out; trained ones refused", async () => {
  const t = tmp();
  try {
    const moe = join(t.dir, "moe");
    writeTinyQwen3(moe, { experts: 4, layers: 2 });
    await runConvert({ source: moe, out: join(t.dir, "fresh"), loraRank: 4, threads: 0 });
    const warnings: string[] = [];
    const r = await loraExport({ input: join(t.dir, "fresh"), out: join(t.dir, "peft"), config: moe, alpha: 16, onWarning: (w) => warnings.push(w) });
    assert.ok(!r.tensors.some((x) => x.name.includes(".mlp.gate.")), "router adapters left out");
    assert.ok(r.tensors.some((x) => x.name.includes(".self_attn.q_proj.lora_B")));
    assert.ok(warnings.some((w) => /untrained adapter\(s\) .* PEFT cannot adapt .*moe\.router\.gate/.test(w)), warnings.join("\n"));
    // a trained router adapter: refused, nothing written
    const f32 = (n: number, v: number) => new Uint8Array(new Float32Array(n).fill(v).buffer);
    writeFileSync(join(t.dir, "trained.safetensors"), buildSafetensors([
      { name: "layers.1.moe.router.gate.lora_a.weight", dtype: "F32", shape: [4, 64], data: f32(256, 0.1) },
      { name: "layers.1.moe.router.gate.lora_b.weight", dtype: "F32", shape: [4, 4], data: f32(16, 0.5) },
    ], { format: "pt" }));
    await assert.rejects(loraExport({ input: join(t.dir, "trained.safetensors"), out: join(t.dir, "peft2"), config: moe, alpha: 16 }), /trained adapter, but PEFT cannot adapt model\.layers\.1\.mlp\.gate/);
    assert.ok(!existsSync(join(t.dir, "peft2")));
  } finally {
    t.done();
  }
});

test("Qwen3.5 in_proj_qkv: the same A and B's [key, key, value] row blocks on in_proj_q/k/v; export joins them back, refuses different lora_a", async () => {
  const t = tmp();
  try {
    // tiny Qwen3.5: DeltaNet layers 0 and 2; key_dim = 2 heads × 8, value_dim = 4 heads × 12, hidden 48
    const KD = 16, VD = 48, IN = 48, R = 8;
    const q35 = join(t.dir, "q35"), adapter = join(t.dir, "peft");
    const { tensors } = writeTinyQwen35(q35, { seed: 41 });
    // in_proj_qkv at rank 4 (alpha 8), out_proj at rank 8 (alpha 16): one scale 2, in_proj_* zero-padded to rank 8
    const lora = tinyPeftAdapter(tensors, { r: R, alpha: 16, targets: ["in_proj_qkv", "out_proj"], extraConfig: { rank_pattern: { in_proj_qkv: 4 }, alpha_pattern: { in_proj_qkv: 8 } } });
    writePeftAdapter(adapter, lora);
    const r = await runConvert({ source: q35, out: join(t.dir, "out"), lora: adapter, threads: 0 });
    assert.deepEqual(r.lora?.torchtitan, { rank: R, alpha: 16, target_modules: ["in_proj_k", "in_proj_q", "in_proj_v", "out_proj"] });
    const out = await tensorsOf(join(t.dir, "out"));
    const peft = new Map(lora.tensors.map((x) => [x.name.replace("base_model.model.", ""), f32(x)]));
    const blocks = { q: [0, KD], k: [KD, KD], v: [2 * KD, VD] } as const;
    for (const L of [0, 2]) {
      const A = peft.get(`model.layers.${L}.linear_attn.in_proj_qkv.lora_A.weight`)!, B = peft.get(`model.layers.${L}.linear_attn.in_proj_qkv.lora_B.weight`)!;
      for (const [part, [start, rows]] of Object.entries(blocks)) {
        const a = out.get(`layers.${L}.attn.in_proj_${part}.lora_a.weight`)!, b = out.get(`layers.${L}.attn.in_proj_${part}.lora_b.weight`)!;
        assert.deepEqual(a.shape, [R, IN]);
        assert.deepEqual([...a.v], [...A, ...new Array<number>(4 * IN).fill(0)], `layer ${L} in_proj_${part} lora_a`);
        assert.deepEqual(b.shape, [rows, R]);
        const want: number[] = [];
        for (let i = 0; i < rows; i++) for (let c = 0; c < R; c++) want.push(c < 4 ? B[(start + i) * 4 + c]! : 0);
        assert.deepEqual([...b.v], want, `layer ${L} in_proj_${part} lora_b = rows ${start}…${start + rows} of B`);
      }
      assert.ok(!out.has(`layers.${L}.attn.in_proj_z.lora_a.weight`), "in_proj_z is not a target");
    }
    // shard --tp 2 (in_proj_*: colwise, lora_b Shard(0) of a row slice): the same values
    await runConvert({ source: q35, out: join(t.dir, "tp2"), lora: adapter, worldSize: 4, tp: 2, threads: 0 });
    const tp2 = await tensorsOf(join(t.dir, "tp2"));
    for (const [k, v] of out) if (k.includes(".lora_")) assert.deepEqual([...tp2.get(k)!.v], [...v.v], `${k} at world 4 tp 2`);

    // back to PEFT: one in_proj_qkv adapter, lora_B = the three blocks stacked
    const exp = await loraExport({ input: join(t.dir, "out"), out: join(t.dir, "exported"), config: q35, alpha: 16 });
    assert.ok((exp.adapterConfig.target_modules as string[]).includes("in_proj_qkv"));
    const back = await tensorsOf(join(t.dir, "exported"));
    const key = "base_model.model.model.layers.2.linear_attn.in_proj_qkv";
    assert.deepEqual(back.get(`${key}.lora_A.weight`)!.shape, [R, IN]);
    assert.deepEqual(back.get(`${key}.lora_B.weight`)!.shape, [2 * KD + VD, R]);
    const B2 = peft.get("model.layers.2.linear_attn.in_proj_qkv.lora_B.weight")!;
    const wantB: number[] = [];
    for (let i = 0; i < 2 * KD + VD; i++) for (let c = 0; c < R; c++) wantB.push(c < 4 ? B2[i * 4 + c]! : 0);
    assert.deepEqual([...back.get(`${key}.lora_B.weight`)!.v], wantB);
    assert.ok(![...back.keys()].some((k) => /in_proj_[qkv]\./.test(k)));

    // TorchTitan-layout adapters written by hand: k without adapter → zero rows; different lora_a → refused
    const bytes = (n: number, f: (i: number) => number) => new Uint8Array(Float32Array.from({ length: n }, (_, i) => f(i)).buffer);
    const A0 = bytes(2 * IN, (i) => (i % 7) / 10), A1 = bytes(2 * IN, (i) => (i % 5) / 10);
    const tt = (a: Record<string, Uint8Array>) => Object.entries(a).flatMap(([p, aBytes]) => {
      const rows = p === "v" ? VD : KD;
      return [
        { name: `layers.0.attn.in_proj_${p}.lora_a.weight`, dtype: "F32" as const, shape: [2, IN], data: aBytes },
        { name: `layers.0.attn.in_proj_${p}.lora_b.weight`, dtype: "F32" as const, shape: [rows, 2], data: bytes(rows * 2, (i) => (p === "q" ? 1 : 3) + i) },
      ];
    });
    writeFileSync(join(t.dir, "qv.safetensors"), buildSafetensors(tt({ q: A0, v: A0 }), { format: "pt" }));
    await loraExport({ input: join(t.dir, "qv.safetensors"), out: join(t.dir, "peft-qv"), config: q35, alpha: 4 });
    const qv = await tensorsOf(join(t.dir, "peft-qv"));
    const k0 = "base_model.model.model.layers.0.linear_attn.in_proj_qkv";
    assert.deepEqual([...qv.get(`${k0}.lora_A.weight`)!.v], [...new Float32Array(A0.buffer)]);
    const wantQv = [...Array.from({ length: KD * 2 }, (_, i) => 1 + i), ...new Array<number>(KD * 2).fill(0), ...Array.from({ length: VD * 2 }, (_, i) => 3 + i)];
    assert.deepEqual([...qv.get(`${k0}.lora_B.weight`)!.v], wantQv);
    writeFileSync(join(t.dir, "qkv-diff.safetensors"), buildSafetensors(tt({ q: A0, k: A1, v: A0 }), { format: "pt" }));
    const cli = spawnSync(process.execPath, [CLI, "lora", "export", join(t.dir, "qkv-diff.safetensors"), join(t.dir, "peft-diff"), "--config", q35, "--alpha", "4"], { encoding: "utf8" });
    assert.equal(cli.status, 1, cli.stderr);
    const lines = cli.stderr.trim().split("\n").filter((l) => !l.startsWith("ckpt: run `ckpt --help`"));
    assert.equal(lines.length, 1, cli.stderr);
    assert.match(lines[0]!, /layers\.0\.attn\.in_proj_q, layers\.0\.attn\.in_proj_k, layers\.0\.attn\.in_proj_v .*model\.layers\.0\.linear_attn\.in_proj_qkv .*different lora_a.*ckpt lora merge/);
    assert.ok(!existsSync(join(t.dir, "peft-diff")) && !existsSync(join(t.dir, "peft-diff.partial")));

    // what the refusal points at: merged per Linear into TorchTitan's names, W_p + s·B_p·A_p (s = 4 / 2)
    await runConvert({ source: q35, out: join(t.dir, "plain"), threads: 0 });
    await loraMerge({ base: join(t.dir, "plain"), adapter: join(t.dir, "qkv-diff.safetensors"), out: join(t.dir, "merged"), config: q35, alpha: 4, dtype: "f32", threads: 0 });
    const [plain, merged] = [await tensorsOf(join(t.dir, "plain")), await tensorsOf(join(t.dir, "merged"))];
    for (const [p, A] of [["q", A0], ["k", A1], ["v", A0]] as const) {
      const rows = p === "v" ? VD : KD, a = new Float32Array(A.buffer);
      const W = plain.get(`layers.0.attn.in_proj_${p}.weight`)!.v, M = merged.get(`layers.0.attn.in_proj_${p}.weight`)!.v;
      for (let i = 0; i < rows; i++) {
        for (let j = 0; j < IN; j++) {
          const b0 = (p === "q" ? 1 : 3) + i * 2, want = W[i * IN + j]! + 2 * (b0 * a[j]! + (b0 + 1) * a[IN + j]!);
          assert.ok(Math.abs(M[i * IN + j]! - want) <= 1e-5 * Math.max(1, Math.abs(want)), `in_proj_${p}[${i},${j}]: ${M[i * IN + j]} vs ${want}`);
        }
      }
    }

    // `ckpt lora convert` (PEFT → TorchTitan-layout adapter): the same split, rank 4 as PEFT has it
    const lc = await loraConvert({ adapter, out: join(t.dir, "tt-adapter"), base: q35 });
    for (const m of ["in_proj_q", "in_proj_k", "in_proj_v"]) assert.ok(lc.metadata.torchtitan === null || lc.metadata.torchtitan.target_modules.includes(m), m);
    assert.deepEqual(lc.metadata.modules["layers.2.attn.in_proj_v"], lc.metadata.modules["layers.2.attn.in_proj_q"]);
    assert.ok(lc.metadata.modules["layers.2.attn.in_proj_k"] && !("layers.2.attn.in_proj_qkv" in lc.metadata.modules));
    const conv = await tensorsOf(join(t.dir, "tt-adapter"));
    const B0 = peft.get("model.layers.0.linear_attn.in_proj_qkv.lora_B.weight")!;
    assert.deepEqual([...conv.get("layers.0.attn.in_proj_k.lora_b.weight")!.v], [...B0.subarray(KD * 4, 2 * KD * 4)]);
    assert.deepEqual([...conv.get("layers.0.attn.in_proj_v.lora_a.weight")!.v], [...peft.get("model.layers.0.linear_attn.in_proj_qkv.lora_A.weight")!]);
    assert.ok(!conv.has("layers.0.attn.in_proj_qkv.lora_b.weight"));
  } finally {
    t.done();
  }
});
