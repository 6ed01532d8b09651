// Expert parallelism: routed-expert boxes on TorchTitan main's sparse mesh (efsdp, ep), checked against
// values worked by hand from TorchTitan's rules (docs/expert-parallel.md), not computed by our own code:
//   ParallelDims.build_mesh unflattens the world into (pp, dp_replicate, efsdp, ep), EP innermost, efsdp = dp_shard·cp·tp/ep;
//   moe_sharding.expert_param_placement_sparse puts Shard(0) on ep; fsdp.apply_fsdp_to_decoder then shards each
//   EP-local block over efsdp with Shard(0), or Shard(1) when efsdp·ep > num_experts.
// Also the refusals (one line, nothing written), and --ranks/--finalize, --resume, --ranged with --ep.
import test, { after, describe } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkExpertMesh, shardTensor, type Mesh, type ShardPolicy } from "../src/plan/sharding.js";
import { CkptError } from "../src/errors.js";
import { mappingByName } from "../src/mapping/load.js";
import { validateMapping, type TpPlacement } from "../src/mapping/schema.js";
import { decodeDcpMetadata } from "../src/formats/dcp/index.js";
import { tinyQwen3Tensors, writeTinyQwen3 } from "../src/fixtures/tiny-qwen3.js";
import { writeHfFolder } from "../src/fixtures/tiny-llama.js";
import { runConvert } from "../src/commands/convert.js";
import { assertSameTree } from "./helpers/tree.js";
import { startMockHub } from "./helpers/mock-hub.js";

const EXPERTS = { tp: "replicate" as const, experts: true };
/** rank → [offsets, sizes] of its box. */
function boxes(shape: number[], mesh: Mesh, policy: ShardPolicy = EXPERTS): Map<number, [number[], number[]]> {
  const out = new Map<number, [number[], number[]]>();
  for (const c of shardTensor(shape, policy, mesh)) for (const r of c.ranks) out.set(r, [c.offsets, c.sizes]);
  return out;
}

describe("routed-expert boxes on the (efsdp, ep) mesh", () => {
  test("E=8, world 4, ep 2 (efsdp 2, 4 ≤ 8: Shard(0)): rank 2f+e holds experts 4e+2f … 4e+2f+1", () => {
    // EP block e = experts [4e, 4e+4); FSDP rank f takes rows [2f, 2f+2) of it.
    const b = boxes([8, 32, 64], { fsdp: 4, tp: 1, ep: 2 });
    const want: Record<number, number> = { 0: 0, 1: 4, 2: 2, 3: 6 };
    for (const [rank, start] of Object.entries(want)) assert.deepEqual(b.get(Number(rank)), [[start, 0, 0], [2, 32, 64]], `rank ${rank}`);
  });

  test("E=8, world 8, ep 4 (efsdp 2): rank 4f+e holds expert 2e+f", () => {
    const b = boxes([8, 64, 200], { fsdp: 8, tp: 1, ep: 4 });
    const want = [0, 2, 4, 6, 1, 3, 5, 7]; // ranks 0..7
    want.forEach((expert, rank) => assert.deepEqual(b.get(rank), [[expert, 0, 0], [1, 64, 200]], `rank ${rank}`));
  });

  test("E=4, world 8, ep 2 (efsdp 4, 8 > 4: Shard(1)): rank 2f+e holds experts 2e, 2e+1, dim-1 rows 8f … 8f+7", () => {
    const b = boxes([4, 32, 64], { fsdp: 8, tp: 1, ep: 2 });
    assert.deepEqual(b.get(5), [[2, 16, 0], [2, 8, 64]]); // (f, e) = (2, 1)
    assert.deepEqual(b.get(6), [[0, 24, 0], [2, 8, 64]]); // (3, 0)
    assert.deepEqual(b.get(1), [[2, 0, 0], [2, 8, 64]]); // (0, 1)
  });

  test("uneven dim 0 is allowed: E=6, world 4, ep 2: EP-local 3 experts split 2 + 1", () => {
    const b = boxes([6, 8, 4], { fsdp: 4, tp: 1, ep: 2 });
    assert.deepEqual(b.get(0), [[0, 0, 0], [2, 8, 4]]);
    assert.deepEqual(b.get(2), [[2, 0, 0], [1, 8, 4]]);
    assert.deepEqual(b.get(1), [[3, 0, 0], [2, 8, 4]]);
    assert.deepEqual(b.get(3), [[5, 0, 0], [1, 8, 4]]);
  });

  test("EP borrows TP ranks: world 8, tp 2, ep 4 → dense (fsdp 4, tp 2) rank 2f+t, experts (efsdp 2, ep 4) rank 4f+e", () => {
    const mesh: Mesh = { fsdp: 4, tp: 2, ep: 4 };
    const e = boxes([8, 16, 8], mesh);
    assert.deepEqual(e.get(5), [[3, 0, 0], [1, 16, 8]]); // (f, e) = (1, 1): expert 2·1 + 1
    assert.deepEqual(e.get(2), [[4, 0, 0], [1, 16, 8]]); // (0, 2): expert 4
    // a colwise dense weight is untouched by --ep: rank 5 = (f, t) = (2, 1) holds rows 16 + 8 … of [32, 8]
    const d = boxes([32, 8], mesh, { tp: "shard0" });
    assert.deepEqual(d.get(5), [[24, 0], [4, 8]]);
    assert.deepEqual(boxes([32, 8], { fsdp: 4, tp: 2 }, { tp: "shard0" }).get(5), d.get(5));
  });

  test("dense and replicated tensors are identical with and without --ep", () => {
    for (const policy of [{ tp: "replicate" as const }, { tp: "shard0" as const }]) {
      assert.deepEqual(shardTensor([10, 3], policy, { fsdp: 4, tp: 1, ep: 2 }), shardTensor([10, 3], policy, { fsdp: 4, tp: 1 }));
    }
  });

  test("refused like TorchTitan refuses, with one clear line", () => {
    const refuse = (mesh: Mesh, shape: number[], re: RegExp) => assert.throws(() => checkExpertMesh(mesh, [{ name: "w1_EFD", shape }]), (e: unknown) => e instanceof CkptError && re.test(e.oneLine()) && !e.oneLine().includes("\n"));
    refuse({ fsdp: 4, tp: 1, ep: 4 }, [6, 8, 4], /num_experts 6 is not divisible by --ep 4/);
    refuse({ fsdp: 6, tp: 1, ep: 4 }, [8, 8, 4], /--ep 4 must divide dp_shard · tp = 6/);
    refuse({ fsdp: 8, tp: 1, ep: 2 }, [4, 30, 4], /dim 1 \(30\) is not divisible by efsdp 4/);
    assert.throws(() => checkExpertMesh({ fsdp: 4, tp: 1, ep: 2 }, []), /no routed-expert tensors/);
    assert.doesNotThrow(() => checkExpertMesh({ fsdp: 8, tp: 1, ep: 2 }, [{ name: "w", shape: [4, 32, 4] }]));
  });
});

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(ROOT, "bin", "ckpt.js");
const tmp = mkdtempSync(join(tmpdir(), "ckpt-ep-"));
after(() => rmSync(tmp, { recursive: true, force: true }));
/** Error lines (the CLI adds a `run ckpt --help` pointer after usage errors). */
const errorLines = (stderr: string) => stderr.trim().split("\n").filter((l) => !/ckpt --help/.test(l)).length;
const cli = (args: string[]) => spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8" });

// Routed experts under TP without EP (TorchTitan main): Module.parallelize puts them on the dense mesh with
// moe_sharding.expert_param_placement_dense (w1/w3 [E, F, D] Shard(1), w2 [E, D, F] Shard(2) on tp; gpt_oss
// mlp1_weight_EGD / mlp1_bias_EG Shard(1), mlp2_weight_EDF Shard(2), mlp2_bias_ED Replicate), then
// apply_fsdp_to_decoder shards the TP-local tensor on dp_shard with Shard(0), or Shard(1) when the dense storage
// mesh (dp_shard · tp) is larger than num_experts. Boxes below are worked by hand from those placements.
describe("routed experts under TP at EP 1 (dense mesh, rank 2f + t)", () => {
  const W1 = { tp: "shard1" as const, experts: true, expertsShard1Mesh: "dp_shard_tp" as const };
  const W2 = { tp: "shard2" as const, experts: true, expertsShard1Mesh: "dp_shard_tp" as const };
  const F2T2: Mesh = { fsdp: 2, tp: 2 };

  test("E=8, FSDP 2 × TP 2 (4 ≤ 8: Shard(0)): w1 (Shard(0), Shard(1)) experts 4f…, rows 16t…; w2 (Shard(0), Shard(2))", () => {
    const w1 = boxes([8, 32, 64], F2T2, W1);
    assert.deepEqual(w1.get(0), [[0, 0, 0], [4, 16, 64]]);
    assert.deepEqual(w1.get(1), [[0, 16, 0], [4, 16, 64]]); // (f, t) = (0, 1)
    assert.deepEqual(w1.get(2), [[4, 0, 0], [4, 16, 64]]); // (1, 0)
    assert.deepEqual(w1.get(3), [[4, 16, 0], [4, 16, 64]]);
    const w2 = boxes([8, 64, 32], F2T2, W2);
    assert.deepEqual(w2.get(1), [[0, 0, 16], [4, 64, 16]]);
    assert.deepEqual(w2.get(2), [[4, 0, 0], [4, 64, 16]]);
    // every rank's box is its own chunk: nothing is replicated across TP any more
    assert.equal(shardTensor([8, 32, 64], W1, F2T2).length, 4);
  });

  test("E=2, FSDP 2 × TP 2: dp_shard · tp = 4 > 2 puts FSDP on dim 1 although dp_shard = 2 ≤ 2", () => {
    // w1: (StridedShard(1, 2), Shard(1)): TP block t = rows [16t, 16t + 16), FSDP f takes 8 rows of it
    const w1 = boxes([2, 32, 64], F2T2, W1);
    assert.deepEqual(w1.get(0), [[0, 0, 0], [2, 8, 64]]);
    assert.deepEqual(w1.get(1), [[0, 16, 0], [2, 8, 64]]); // (0, 1)
    assert.deepEqual(w1.get(2), [[0, 8, 0], [2, 8, 64]]); // (1, 0)
    assert.deepEqual(w1.get(3), [[0, 24, 0], [2, 8, 64]]); // (1, 1)
    // w2: (Shard(1), Shard(2)): rows [32f, 32f + 32), columns [16t, 16t + 16)
    const w2 = boxes([2, 64, 32], F2T2, W2);
    assert.deepEqual(w2.get(1), [[0, 0, 16], [2, 32, 16]]);
    assert.deepEqual(w2.get(2), [[0, 32, 0], [2, 32, 16]]);
    // torchtitan@0.2's rule (no expertsShard1Mesh) compares dp_shard alone: 2 ≤ 2, Shard(0)
    assert.deepEqual(boxes([2, 32, 64], F2T2, { tp: "shard1", experts: true }).get(2), [[1, 0, 0], [1, 16, 64]]);
  });

  test("gpt_oss E=4, FSDP 4 × TP 2 (8 > 4: Shard(1)): biases too; mlp2_bias_ED is TP-replicated", () => {
    const mesh: Mesh = { fsdp: 4, tp: 2 };
    // mlp1_bias_EG [4, 128] Shard(1) on tp, FSDP Shard(1): rows 64t + 16f; rank 5 = (2, 1) → 96
    assert.deepEqual(boxes([4, 128], mesh, W1).get(5), [[0, 96], [4, 16]]);
    assert.deepEqual(boxes([4, 128], mesh, W1).get(4), [[0, 32], [4, 16]]); // (2, 0)
    // mlp1_weight_EGD [4, 128, 64]: the same rows, all columns
    assert.deepEqual(boxes([4, 128, 64], mesh, W1).get(5), [[0, 96, 0], [4, 16, 64]]);
    // mlp2_weight_EDF [4, 64, 64] (Shard(1), Shard(2)): rows 16f, columns 32t
    assert.deepEqual(boxes([4, 64, 64], mesh, W2).get(5), [[0, 32, 32], [4, 16, 32]]);
    // mlp2_bias_ED [4, 64] (Shard(1), Replicate): rows 16f, one chunk for ranks 2f and 2f + 1
    const bias = shardTensor([4, 64], { tp: "replicate", experts: true, expertsShard1Mesh: "dp_shard_tp" }, mesh);
    assert.equal(bias.length, 4);
    assert.deepEqual(bias.find((c) => c.owner === 4), { offsets: [0, 32], sizes: [4, 16], owner: 4, ranks: [4, 5] });
  });

  test("without --tp, and under --ep, the expert TP placement changes nothing", () => {
    for (const [shape, p] of [[[8, 32, 64], W1], [[8, 64, 32], W2], [[2, 32, 64], W1]] as const) {
      const old = { tp: "replicate" as const, experts: true };
      for (const mesh of [{ fsdp: 4, tp: 1 }, { fsdp: 16, tp: 1 }, { fsdp: 2, tp: 1 }]) assert.deepEqual(shardTensor(shape, p, mesh), shardTensor(shape, old, mesh), `${shape} ${JSON.stringify(mesh)}`);
      for (const mesh of [{ fsdp: 4, tp: 2, ep: shape[0] === 8 ? 4 : 2 }, { fsdp: 2, tp: 2, ep: 2 }]) assert.deepEqual(shardTensor(shape, p, mesh), shardTensor(shape, old, mesh), `${shape} ${JSON.stringify(mesh)}`);
    }
  });

  test("FSDP Shard(1) of a TP-local dim that does not divide is refused (FSDP2: no uneven dims > 0)", () => {
    assert.throws(() => shardTensor([2, 6, 8], W1, F2T2), (e: unknown) => e instanceof CkptError && /TP-local dim 1 \(3 of 6 over tp 2\) is not divisible by FSDP degree 2/.test(e.oneLine()));
    // w2 [2, 5, 8]: FSDP's dim 1 is not the TP dim (2), and 5 rows do not split over dp_shard 2
    assert.throws(() => shardTensor([2, 5, 8], W2, F2T2), /expert dim 1 \(5\) is not divisible by FSDP degree 2/);
    assert.throws(() => shardTensor([8, 4], W2, F2T2), /TP Shard\(2\) on a 2-D tensor/);
  });

  test("the mappings carry the placement: w1/w3 shard1, w2 shard2 (qwen3, deepseek_v3, kimi_k2), gpt_oss mlp1 shard1, mlp2 shard2, mlp2_bias replicate", () => {
    const want: Record<string, TpPlacement> = { w1_EFD: "shard1", w3_EFD: "shard1", w2_EDF: "shard2", mlp1_weight_EGD: "shard1", mlp1_bias_EG: "shard1", mlp2_weight_EDF: "shard2", mlp2_bias_ED: "replicate" };
    for (const arch of ["qwen3", "deepseek_v3", "kimi_k2", "gpt_oss"]) {
      const rules = mappingByName(arch).tensors.filter((r) => r.experts !== undefined);
      assert.ok(rules.length >= 3, arch);
      for (const r of rules) {
        const tt = typeof r.tt === "string" ? r.tt : r.tt!["torchtitan@main"]!;
        assert.equal(r.tp, want[tt.split(".").pop()!], `${arch} ${r.hf}`);
      }
    }
    assert.throws(() => validateMapping({ ...mappingByName("qwen3"), tensors: [{ hf: "x", tt: "y", tp: "shard3" }] }, "m.json"), /tp: must be one of shard0, shard1, shard2, replicate/);
  });

  test("ckpt shard --world-size 4 --tp 2 of a 2-expert Qwen3-MoE: .metadata holds the hand-worked chunks, values verify", () => {
    const src = join(tmp, "qwen3-e2");
    writeTinyQwen3(src, { experts: 2, layers: 2, mlpOnlyLayers: [0], hidden: 64, moeFfn: 32 });
    const out = join(tmp, "qwen3-e2-tp2");
    const r = cli(["shard", src, out, "--world-size", "4", "--tp", "2"]);
    assert.equal(r.status, 0, r.stderr);
    const md = decodeDcpMetadata(readFileSync(join(out, ".metadata")), ".metadata");
    const chunks = (k: string) => md.tensors.get(`layers.1.moe.routed_experts.inner_experts.${k}`)!.chunks.map((c) => [c.offsets, c.sizes]);
    const sorted = (x: number[][][]) => x.map((c) => JSON.stringify(c)).sort();
    assert.deepEqual(sorted(chunks("w1_EFD")), sorted([[[0, 0, 0], [2, 8, 64]], [[0, 16, 0], [2, 8, 64]], [[0, 8, 0], [2, 8, 64]], [[0, 24, 0], [2, 8, 64]]]));
    assert.deepEqual(sorted(chunks("w3_EFD")), sorted(chunks("w1_EFD")));
    assert.deepEqual(sorted(chunks("w2_EDF")), sorted([[[0, 0, 0], [2, 32, 16]], [[0, 0, 16], [2, 32, 16]], [[0, 32, 0], [2, 32, 16]], [[0, 32, 16], [2, 32, 16]]]));
    const v = cli(["verify", out, src]);
    assert.equal(v.status, 0, v.stderr + v.stdout);
    // moe_ffn 30: TP-local 15 rows over dp_shard 2 → refused before anything is written
    const odd = join(tmp, "qwen3-e2-f30");
    writeTinyQwen3(odd, { experts: 2, layers: 1, mlpOnlyLayers: [], hidden: 64, moeFfn: 30 });
    const bad = join(tmp, "refused-f30");
    const rb = cli(["shard", odd, bad, "--world-size", "4", "--tp", "2"]);
    assert.notEqual(rb.status, 0);
    assert.match(rb.stderr, /TP-local dim 1 \(15 of 30 over tp 2\) is not divisible by FSDP degree 2/);
    assert.equal(errorLines(rb.stderr), 1, rb.stderr);
    assert.ok(!existsSync(bad) && !existsSync(bad + ".partial"), "nothing written");
  });
});

describe("ckpt shard --ep", () => {
  const src = join(tmp, "qwen3-moe");
  writeTinyQwen3(src, { experts: 8, layers: 2, mlpOnlyLayers: [0], moeFfn: 32, files: 2 });

  test("refusals print one line and write nothing", () => {
    const out3 = join(tmp, "refused-ep3");
    const r3 = cli(["shard", src, out3, "--world-size", "4", "--ep", "3"]);
    assert.notEqual(r3.status, 0);
    assert.match(r3.stderr, /--ep 3 must divide dp_shard · tp = 4/);
    assert.equal(errorLines(r3.stderr), 1, r3.stderr);
    assert.ok(!existsSync(out3) && !existsSync(out3 + ".partial"), "nothing written");
    const e6 = join(tmp, "qwen3-e6");
    writeTinyQwen3(e6, { experts: 6, layers: 1, mlpOnlyLayers: [] });
    const out = join(tmp, "refused-e6");
    const r = cli(["shard", e6, out, "--world-size", "8", "--ep", "4"]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /num_experts 6 is not divisible by --ep 4/);
    assert.equal(errorLines(r.stderr), 1, r.stderr);
    assert.ok(!existsSync(out) && !existsSync(out + ".partial"));
  });

  test("--ranks + --finalize (SLURM-style, 2 ranks per run) is byte-identical to one run", () => {
    const single = join(tmp, "ep-single");
    assert.equal(cli(["shard", src, single, "--world-size", "8", "--ep", "4"]).status, 0);
    const split = join(tmp, "ep-split");
    for (const ranks of ["0-1", "2-3", "4-5", "6-7"]) {
      const r = cli(["shard", src, split, "--world-size", "8", "--ep", "4", "--ranks", ranks]);
      assert.equal(r.status, 0, r.stderr);
    }
    const fin = cli(["shard", src, split, "--world-size", "8", "--ep", "4", "--finalize"]);
    assert.equal(fin.status, 0, fin.stderr);
    assertSameTree(split, single);
    // and the EP layout really differs from the FSDP-only one (experts moved between rank files)
    const fsdp = join(tmp, "fsdp-only");
    assert.equal(cli(["shard", src, fsdp, "--world-size", "8"]).status, 0);
    assert.ok(!readFileSync(join(fsdp, "__1_0.distcp")).equals(readFileSync(join(single, "__1_0.distcp"))));
    // a --finalize with another --ep than the rank runs is refused
    const bad = cli(["shard", src, split + "-x", "--world-size", "8", "--ep", "2", "--finalize"]);
    assert.notEqual(bad.status, 0);
  });

  test("--resume: an interrupted --ep run continues to the same bytes; a partial made with another --ep is not resumed", async () => {
    const big = join(tmp, "qwen3-big");
    writeTinyQwen3(big, { experts: 8, layers: 4, mlpOnlyLayers: [0], hidden: 256, moeFfn: 512, vocab: 4000, dtype: "F32" });
    const ref = join(tmp, "big-ref");
    await runConvert({ source: big, out: ref, worldSize: 4, ep: 2, threads: 0 });
    const out = join(tmp, "big-resumed");
    const ac = new AbortController();
    let events = 0;
    await assert.rejects(runConvert({ source: big, out, worldSize: 4, ep: 2, threads: 0, resume: true, maxMemory: 4 << 20, signal: ac.signal, onProgress: () => { if (++events === 3) ac.abort(); } }), (e: unknown) => e instanceof CkptError && e.code === "INTERRUPTED");
    assert.ok(existsSync(out + ".partial"), "partial kept for --resume");
    const warnings: string[] = [];
    await runConvert({ source: big, out, worldSize: 4, ep: 2, threads: 0, resume: true, onWarning: (w) => warnings.push(w) });
    assert.ok(warnings.some((w) => /resumed: [1-9]\d* piece/.test(w)), warnings.join("; "));
    assertSameTree(out, ref);

    const other = join(tmp, "big-other");
    const ac2 = new AbortController();
    let n2 = 0;
    await assert.rejects(runConvert({ source: big, out: other, worldSize: 4, ep: 4, threads: 0, resume: true, maxMemory: 4 << 20, signal: ac2.signal, onProgress: () => { if (++n2 === 3) ac2.abort(); } }));
    const w2: string[] = [];
    await runConvert({ source: big, out: other, worldSize: 4, ep: 2, threads: 0, resume: true, onWarning: (w) => w2.push(w) });
    assert.ok(!w2.some((w) => /resumed: [1-9]/.test(w)), "a partial of --ep 4 is not taken over by --ep 2");
    assertSameTree(other, ref);
  });

  test("--ranged from a Hub repo: --ranks of an --ep run download about their share and match the local files", async () => {
    const g = tinyQwen3Tensors({ experts: 8, layers: 2, mlpOnlyLayers: [], hidden: 128, moeFfn: 256, vocab: 512 });
    const hubSrc = join(tmp, "hub-src");
    writeHfFolder(hubSrc, g.config, g.tensors, 2);
    const files: Record<string, Buffer> = {};
    for (const f of readdirSync(hubSrc)) files[f] = readFileSync(join(hubSrc, f));
    const hub = await startMockHub({ "org/qwen3-moe": { sha: "2".repeat(40), files } });
    try {
      const local = join(tmp, "hub-local");
      await runConvert({ source: hubSrc, out: local, worldSize: 4, ep: 4, threads: 0 });
      const out = join(tmp, "hub-ranks");
      hub.bytesServed.clear();
      await runConvert({ source: "org/qwen3-moe", ranged: true, endpoint: hub.url, env: {}, out, worldSize: 4, ep: 4, ranks: "1", threads: 0 });
      assert.ok(readFileSync(join(out, "__1_0.distcp")).equals(readFileSync(join(local, "__1_0.distcp"))), "rank 1 byte-identical");
      const served = [...hub.bytesServed].filter(([f]) => f.endsWith(".safetensors")).reduce((s, [, n]) => s + n, 0);
      const total = Object.entries(files).filter(([f]) => f.endsWith(".safetensors")).reduce((s, [, b]) => s + b.length, 0);
      assert.ok(served < 0.4 * total, `rank 1 of 4 downloaded ${served} of ${total} bytes`);
    } finally {
      await hub.close();
    }
  });
});
