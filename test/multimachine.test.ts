// One `ckpt shard` split across machines with --ranks, then --finalize: several local processes stand in for the
// machines (launched exactly as docs/multi-machine.md launches them from SLURM job arrays and Kubernetes indexed
// Jobs), all writing into one shared output folder. The result must be byte-identical, file for file, to a
// single-process run. With a Hub source read in place (HTTP Range requests), a machine downloads only the byte
// ranges of its own ranks: the mock Hub counts the bytes it served.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tinyLlamaTensors, writeHfFolder } from "../src/fixtures/tiny-llama.js";
import { runConvert } from "../src/commands/convert.js";
import { startMockHub, type MockHub } from "./helpers/mock-hub.js";
import { assertSameTree } from "./helpers/tree.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(ROOT, "bin", "ckpt.js");
const tmp = mkdtempSync(join(tmpdir(), "ckpt-mm-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8" });
  return { status: r.status, stderr: r.stderr };
}

/** Runs shell lines concurrently (one process per "machine"), each with its own environment; returns their stderr. */
async function machines(jobs: { script: string; env: Record<string, string> }[]): Promise<string[]> {
  const runs = jobs.map((j) => new Promise<{ code: number | null; err: string; script: string }>((res) => {
    const child = spawn("sh", ["-c", j.script], { env: { ...process.env, ...j.env, CKPT: `${process.execPath} ${CLI}` }, stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("close", (code) => res({ code, err, script: j.script }));
  }));
  const done = await Promise.all(runs);
  for (const r of done) assert.equal(r.code, 0, `${r.script}: ${r.err}`);
  return done.map((r) => r.err);
}

// Uneven shapes (vocab and ffn not divisible by 8) so ranks get different row counts; two safetensors files.
const MODEL = { hidden: 128, layers: 2, heads: 4, kvHeads: 2, headDim: 32, ffn: 344, vocab: 1003, files: 2 } as const;
let src: string;
let files: Record<string, Buffer | string>;

before(() => {
  src = join(tmp, "hf");
  const g = tinyLlamaTensors(MODEL);
  writeHfFolder(src, g.config, g.tensors, MODEL.files);
  files = {};
  for (const f of readdirSync(src)) files[f] = readFileSync(join(src, f));
});

describe("shard split across machines with --ranks, then --finalize", () => {
  for (const [name, extra] of [["fsdp 8", [] as string[]], ["fsdp 4 × tp 2", ["--tp", "2"]], ["per-rank safetensors", ["--format", "safetensors"]]] as const) {
    test(`${name}: SLURM array tasks and Kubernetes indexed pods give a folder byte-identical to one run`, async () => {
      const single = join(tmp, `single-${name.replace(/\W+/g, "_")}`);
      const r = cli(["shard", src, single, "--world-size", "8", ...extra]);
      assert.equal(r.status, 0, r.stderr);

      // SLURM job array of 4 tasks, 2 ranks each (docs/multi-machine.md); two of them force the worker pool.
      const slurm = join(tmp, `slurm-${name.replace(/\W+/g, "_")}`);
      const rest = extra.join(" ");
      await machines([0, 1, 2, 3].map((id) => ({
        env: { SLURM_ARRAY_TASK_ID: String(id), SRC: src, OUT: slurm },
        script: `$CKPT shard "$SRC" "$OUT" --world-size 8 ${rest} --ranks $((SLURM_ARRAY_TASK_ID*2))-$((SLURM_ARRAY_TASK_ID*2+1)) --quiet${id % 2 ? " --threads 2" : ""}`,
      })));
      for (const f of [".metadata", "sharding.json", "ckpt-manifest.json"]) assert.ok(!existsSync(join(slurm, f)), `no ${f} before --finalize`);
      const fin = cli(["shard", src, slurm, "--world-size", "8", ...extra, "--finalize"]);
      assert.equal(fin.status, 0, fin.stderr);
      assertSameTree(slurm, single);

      // Kubernetes indexed Job: 8 pods, one rank each (JOB_COMPLETION_INDEX), then the finalize Job.
      const k8s = join(tmp, `k8s-${name.replace(/\W+/g, "_")}`);
      await machines([0, 1, 2, 3, 4, 5, 6, 7].map((id) => ({
        env: { JOB_COMPLETION_INDEX: String(id), SRC: src, OUT: k8s },
        script: `$CKPT shard "$SRC" "$OUT" --world-size 8 ${rest} --ranks "$JOB_COMPLETION_INDEX" --quiet`,
      })));
      const fin2 = cli(["shard", src, k8s, "--world-size", "8", ...extra, "--finalize"]);
      assert.equal(fin2.status, 0, fin2.stderr);
      assertSameTree(k8s, single);
    });
  }

  test("machines that write with O_DIRECT and machines that write through the page cache produce the same bytes", async () => {
    // Tensors big enough for the direct-I/O path (pieces of many 4 KiB blocks at unaligned offsets), cast to f32.
    const big = join(tmp, "hf-big");
    const g = tinyLlamaTensors({ hidden: 512, layers: 2, heads: 8, kvHeads: 2, headDim: 64, ffn: 1376, vocab: 5003, seed: 7 });
    writeHfFolder(big, g.config, g.tensors, 1);
    const single = join(tmp, "big-single");
    const r = cli(["shard", big, single, "--world-size", "4", "--dtype", "f32"]);
    assert.equal(r.status, 0, r.stderr);
    const out = join(tmp, "big-mixed");
    await machines([0, 1, 2, 3].map((id) => ({
      env: { SRC: big, OUT: out, ...(id % 2 ? { CKPT_DIRECT_IO: "0" } : {}) },
      script: `$CKPT shard "$SRC" "$OUT" --world-size 4 --dtype f32 --ranks ${id} --threads 2 --quiet`,
    })));
    const fin = cli(["shard", big, out, "--world-size", "4", "--dtype", "f32", "--finalize"]);
    assert.equal(fin.status, 0, fin.stderr);
    assertSameTree(out, single);
    // and a whole conversion, one way and the other
    const a = join(tmp, "big-convert-direct");
    const b = join(tmp, "big-convert-buffered");
    const ra = cli(["convert", big, a, "--threads", "2"]);
    assert.equal(ra.status, 0, ra.stderr);
    const rb = spawnSync(process.execPath, [CLI, "convert", big, b, "--threads", "2", "--quiet"], { encoding: "utf8", env: { ...process.env, CKPT_DIRECT_IO: "0" } });
    assert.equal(rb.status, 0, rb.stderr);
    assertSameTree(a, b);
  });

  test("--finalize before every rank is written fails and names what is missing", () => {
    const out = join(tmp, "incomplete");
    const r = cli(["shard", src, out, "--world-size", "8", "--ranks", "0-5"]);
    assert.equal(r.status, 0, r.stderr);
    const fin = cli(["shard", src, out, "--world-size", "8", "--finalize"]);
    assert.notEqual(fin.status, 0);
    assert.match(fin.stderr, /__6_0\.distcp is missing/);
    assert.ok(!existsSync(join(out, ".metadata")));
  });
});

describe("--ranks from a Hub repo read in place (HTTP Range requests)", () => {
  let hub: MockHub;
  let single: string;
  before(async () => {
    hub = await startMockHub({ "org/llama": { sha: "1".repeat(40), files } });
    single = join(tmp, "hub-single");
    const r = cli(["shard", src, single, "--world-size", "8"]);
    assert.equal(r.status, 0, r.stderr);
  });
  after(() => hub.close());

  const modelBytes = () => Object.entries(files).filter(([f]) => f.endsWith(".safetensors")).reduce((s, [, b]) => s + b.length, 0);
  const served = () => [...hub.bytesServed].filter(([f]) => f.endsWith(".safetensors")).reduce((s, [, n]) => s + n, 0);

  for (const threads of [0, 2]) {
    test(`ranks 2-3 of 8 (threads ${threads}) download about a quarter of the model and match the local run`, async (t) => {
      hub.bytesServed.clear();
      const out = join(tmp, `hub-ranks-t${threads}`);
      const res = await runConvert({ source: "org/llama", ranged: true, endpoint: hub.url, env: {}, out, worldSize: 8, ranks: "2-3", threads });
      assert.equal(res.bytesWritten, statSync(join(out, "__2_0.distcp")).size + statSync(join(out, "__3_0.distcp")).size);
      for (const f of ["__2_0.distcp", "__3_0.distcp"]) assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(single, f))), `${f} is byte-identical`);
      const got = served();
      const total = modelBytes();
      t.diagnostic(`served ${got} of ${total} safetensors bytes (${((got / total) * 100).toFixed(1)}%)`);
      assert.ok(got > 0.2 * total && got < 0.35 * total, `served ${got} of ${total} bytes (${((got / total) * 100).toFixed(1)}%)`);
      assert.ok(hub.requests.some((r) => r.startsWith("GET") && r.includes("/resolve/")), "bytes came through resolve requests");
    });
  }

  test("the CLI's --ranged flag: `ckpt shard org/llama --ranged --ranks 2-3` reads only its share over HTTP", async () => {
    hub.bytesServed.clear();
    const out = join(tmp, "hub-cli");
    const cache = join(tmp, "hub-cli-cache");
    await machines([{ script: `$CKPT shard org/llama ${out} --world-size 8 --ranks 2-3 --ranged --quiet`, env: { HF_ENDPOINT: hub.url, HF_HUB_CACHE: cache, HF_TOKEN: "" } }]);
    for (const f of ["__2_0.distcp", "__3_0.distcp"]) assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(single, f))), `${f} is byte-identical`);
    assert.ok(served() < 0.35 * modelBytes(), `served ${served()} of ${modelBytes()} bytes`);
    const blobs = join(cache, "models--org--llama", "blobs");
    const cached = existsSync(blobs) ? readdirSync(blobs).reduce((n, b) => n + statSync(join(blobs, b)).size, 0) : 0;
    assert.ok(cached < 0.05 * modelBytes(), `no weights downloaded into the HF cache (${cached} bytes there)`);
  });

  test("all ranks from the Hub in four runs, then --finalize: rank files and .metadata match the local run; each run downloads its share only", async (t) => {
    const out = join(tmp, "hub-all");
    const shares: number[] = [];
    for (const ranks of ["0-1", "2-3", "4-5", "6-7"]) {
      hub.bytesServed.clear();
      await runConvert({ source: "org/llama", ranged: true, endpoint: hub.url, env: {}, out, worldSize: 8, ranks, threads: 2 });
      shares.push(served() / modelBytes());
    }
    await runConvert({ source: "org/llama", ranged: true, endpoint: hub.url, env: {}, out, worldSize: 8, finalize: true });
    for (const f of [".metadata", ...[0, 1, 2, 3, 4, 5, 6, 7].map((r) => `__${r}_0.distcp`)]) {
      assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(single, f))), `${f} is byte-identical`);
    }
    t.diagnostic(`per-run share of the model downloaded: ${shares.map((s) => `${(s * 100).toFixed(1)}%`).join(", ")}`);
    // ranks 0-1 read a little more: rows next to small tensors are read through gaps ≤ 4 KiB, and the q/k
    // permutation of a 2-head tensor spreads a quarter of its rows over half a head
    for (const s of shares) assert.ok(s < 0.4, `each machine downloaded ${(s * 100).toFixed(1)}% of the model`);
    const sum = shares.reduce((a, b) => a + b, 0);
    assert.ok(sum < 1.15, `all four machines together downloaded ${(sum * 100).toFixed(1)}% of one model`);
    assert.ok(!readdirSync(out).some((f) => f.startsWith(".ckpt-")), "no digests or temp folders left");
  });
});

describe("eight machines pulling their ranks from a Hub that drops, throttles and fails requests", () => {
  // 16 layers so that the q/k/v tensors every rank keeps whole (torchtitan@main: 48 of them, 4 MiB of 27 MiB) can
  // spread over the 8 ranks; four source files.
  const BIG = { hidden: 256, layers: 16, heads: 4, kvHeads: 2, headDim: 64, ffn: 688, vocab: 4000, files: 4, seed: 30 } as const;
  let hub: MockHub;
  let bigSrc: string;
  let bigFiles: Record<string, Buffer | string>;
  before(async () => {
    bigSrc = join(tmp, "hf-faults");
    const g = tinyLlamaTensors(BIG);
    writeHfFolder(bigSrc, g.config, g.tensors, BIG.files);
    bigFiles = {};
    for (const f of readdirSync(bigSrc)) bigFiles[f] = readFileSync(join(bigSrc, f));
    // About 1 in 25 file requests dropped mid-body, 1 in 40 answered 429 (Retry-After: 1), 1 in 40 answered 503,
    // 1 in 100 reset before an answer; API requests get the resets, 429s and 503s too.
    hub = await startMockHub({ "org/big": { sha: "3".repeat(40), files: bigFiles } }, { faults: { drop: 0.04, throttle: 0.025, unavailable: 0.025, reset: 0.01, retryAfter: 1, api: true, seed: 30 } });
  });
  after(() => hub.close());

  test("--ranks r-r --ranged ×8 and --finalize: byte-identical to a local shard; each machine downloads ≈ 1/8", async (t) => {
    const single = join(tmp, "faults-single");
    const r = cli(["shard", bigSrc, single, "--world-size", "8"]);
    assert.equal(r.status, 0, r.stderr);
    const out = join(tmp, "faults-hub");
    const fast = { CKPT_HUB_BACKOFF: "0.01", CKPT_HUB_BACKOFF_MAX: "0.2", CKPT_HUB_TIMEOUT: "10", HF_TOKEN: "", HF_HUB_CACHE: join(tmp, "faults-cache") };
    // each machine sees the Hub at its own /c/m<i> prefix, so the mock counts its requests and bytes apart
    const notes = await machines([0, 1, 2, 3, 4, 5, 6, 7].map((i) => ({
      env: { ...fast, HF_ENDPOINT: `${hub.url}/c/m${i}`, OUT: out },
      script: `$CKPT shard org/big "$OUT" --world-size 8 --ranks ${i}-${i} --ranged --threads 1 --quiet`,
    })));
    // (never spawnSync against the mock: it answers from this process's event loop)
    const [finErr] = await machines([{ env: { ...fast, HF_ENDPOINT: `${hub.url}/c/finalize`, OUT: out }, script: `$CKPT shard org/big "$OUT" --world-size 8 --ranged --finalize --quiet` }]);
    for (const f of [".metadata", ...[0, 1, 2, 3, 4, 5, 6, 7].map((k) => `__${k}_0.distcp`)]) {
      assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(single, f))), `${f} is byte-identical`);
    }

    // The faults happened, as often as asked, and every one cost exactly one retry (the machines' closing notes).
    const downloads = hub.log.filter((x) => x.method === "GET" && x.url.includes("/resolve/"));
    const ranged = downloads.filter((x) => x.range !== undefined && x.url.endsWith(".safetensors"));
    const drops = ranged.filter((x) => x.fault === "drop").length;
    const injected = Object.values(hub.faultCounts).reduce((a, b) => a + (b ?? 0), 0);
    const parsed = [...notes, finErr!].map((e) => /ckpt: hub: (\d+) request\(s\) \((\d+) retried(?:: ([^)]*))?\)/.exec(e));
    assert.ok(parsed.every(Boolean), `every run prints its closing note:\n${[...notes, finErr!].join("\n")}`);
    const made = parsed.reduce((s, m) => s + Number(m![1]), 0);
    const retried = parsed.reduce((s, m) => s + Number(m![2]), 0);
    const noted = (re: RegExp) => parsed.reduce((s, m) => s + Number(re.exec(m![3] ?? "")?.[1] ?? 0), 0);
    const seen = { drop: noted(/(\d+) dropped mid-body/), reset: noted(/(\d+) reset\/refused/), throttle: noted(/(\d+) × 429/), unavailable: noted(/(\d+) × 5xx/), stall: noted(/(\d+) timed out/) };
    t.diagnostic(`requests: ${hub.log.length} served (${ranged.length} ranged reads of weights), ${made} made by the 9 runs; faults injected: ${JSON.stringify(hub.faultCounts)}; the runs' closing notes: ${retried} retried ${JSON.stringify(seen)}`);
    assert.ok(drops * 40 >= ranged.length, `≥ 1 in 40 ranged requests dropped (${drops} of ${ranged.length})`);
    assert.ok((hub.faultCounts.throttle ?? 0) > 0 && (hub.faultCounts.unavailable ?? 0) > 0, "429 and 503 answers were given");
    assert.equal(made, hub.log.length, "every request the runs made reached the Hub");
    assert.deepEqual(seen, { drop: hub.faultCounts.drop ?? 0, reset: hub.faultCounts.reset ?? 0, throttle: hub.faultCounts.throttle ?? 0, unavailable: hub.faultCounts.unavailable ?? 0, stall: 0 }, "every fault noticed as what it was");
    assert.equal(retried, injected, "each injected fault was retried once, and nothing else");

    // Downloads: each machine within 1.15× of its 1/8 share plus the headers, all of them together ≤ 1.05 × the model.
    const weights = Object.entries(bigFiles).filter(([f]) => f.endsWith(".safetensors"));
    const model = weights.reduce((s, [, b]) => s + (b as Buffer).length, 0);
    const headers = weights.reduce((s, [, b]) => s + 8 + Number((b as Buffer).readBigUInt64LE(0)), 0);
    const small = Object.entries(bigFiles).filter(([f]) => !f.endsWith(".safetensors")).reduce((s, [, b]) => s + Buffer.byteLength(b), 0);
    const per = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => hub.clients.get(`m${i}`)!.bytes);
    const share = model / 8;
    t.diagnostic(`model ${model} bytes, share ${share.toFixed(0)}, headers ${headers} + config/index ${small}; per machine: ${per.map((b) => `${(b / 1e6).toFixed(2)} MB (${(b / share).toFixed(3)}×)`).join(", ")}; together ${(per.reduce((a, b) => a + b, 0) / model).toFixed(4)}× the model`);
    for (const [i, b] of per.entries()) assert.ok(b <= 1.15 * share + headers + small, `machine ${i} downloaded ${b} bytes, ${(b / share).toFixed(3)}× its share`);
    assert.ok(per.reduce((a, b) => a + b, 0) <= 1.05 * model, "all machines together ≤ 1.05 × the model");

    // The dry run predicted each machine's download and write
    const dry = spawnSync(process.execPath, [CLI, "shard", bigSrc, join(tmp, "faults-dry"), "--world-size", "8", "--dry-run", "--ranged", "--json"], { encoding: "utf8" });
    assert.equal(dry.status, 0, dry.stderr);
    const ranks = (JSON.parse(dry.stdout) as { plan: { perRank: { rank: number; write: number; download: number }[] } }).plan.perRank;
    for (const x of ranks) {
      assert.equal(x.write, statSync(join(out, `__${x.rank}_0.distcp`)).size, `rank ${x.rank}: bytes to write`);
      const got = per[x.rank]! - small;
      assert.ok(Math.abs(x.download - got) <= 0.02 * got, `rank ${x.rank}: predicted ${x.download} bytes to download, it downloaded ${got}`);
    }
  });
});
