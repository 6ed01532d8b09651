// Expert parallelism (issue 18): routed-expert boxes on TorchTitan main's sparse mesh (efsdp, ep), checked against
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
import { checkExpertMesh, shardTensor, type Mesh } from "../src/plan/sharding.js";
import { CkptError } from "../src/errors.js";
import { tinyQwen3Tensors, writeTinyQwen3 } from "../src/fixtures/tiny-qwen3.js";
import { writeHfFolder } from "../src/fixtures/tiny-llama.js";
import { runConvert } from "../src/ops/convert.js";
import { assertSameTree } from "./helpers/tree.js";
import { startMockHub } from "./helpers/mock-hub.js";

const EXPERTS = { tp: "replicate" as const, experts: true };
/** rank → [offsets, sizes] of its box. */
function boxes(shape: number[], mesh: Mesh, policy: { tp: "replicate" | "shard0" | "shard1"; experts?: boolean } = EXPERTS): Map<number, [number[], number[]]> {
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
