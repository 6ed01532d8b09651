// `npm run bench -- --load`: time to load each way into TorchTitan main at world N (gloo, CPU), in the sid
// root (PyTorch 2.14 + TorchTitan main), on the Llama-3.2-1B shape (--8b: Llama-3.1-8B).
//
//   node dist/test/bench/run.js --load [--8b] [--json] [--worlds 8,4] [--rounds 2] [--cold] [--only a,b] [--dir D]
//
// Ways in (ids): converter (TorchTitan's convert_from_hf.py layout: from_hf on full tensors + dcp.save from one
// process, one chunk per tensor), shard-dcp (`ckpt shard --world-size N`), shard-st (`--format safetensors`,
// TorchTitan names: plain dcp.load with HuggingFaceStorageReader, no TorchTitan config), shard-hfst (`--format
// safetensors --hf-names`: TorchTitan's initial_load_in_hf = true), hf (the HF original through
// initial_load_in_hf = true: HuggingFaceStorageReader, then TorchTitan's llama3 from_hf on the DTensors), floor
// (shard-dcp's CheckpointManager.load() with dcp.load a no-op: TorchTitan's own work, the ceiling of every ratio). The Python
// side (test/bench/load.py) builds TorchTitan's own llama3 flavor, parallelises it with parallelize_llama (FSDP2
// Shard(0) on dp_shard = N) and loads through CheckpointManager.load(), i.e. the trainer's dcp_load. Every way's
// loaded model must fingerprint like the hf row (TorchTitan's own conversion) on every rank.
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { availableParallelism, totalmem } from "node:os";
import { LLAMA_3_1_8B, LLAMA_3_2_1B, writeSyntheticLlama, type LlamaShape } from "./gen.js";
import { hasJudgeKit, JUDGE_ENV, torchEnv } from "../interop/torch.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "../../..");
const CKPT = join(REPO, "bin/ckpt.js");
const GUEST_DIR = "/tmp/ckpt-bench";
const GB = 1e9;
const MiB = 1024 * 1024;

interface Args { eightB: boolean; json: boolean; worlds: number[]; rounds: number; cold: boolean; only?: Set<string>; dir: string; regen: boolean }

export function parseLoadArgs(argv: string[]): Args {
  const a: Args = { eightB: false, json: false, worlds: [8, 4], rounds: 2, cold: false, dir: process.env.CKPT_BENCH_DIR ?? "/var/tmp/ckpt-bench", regen: false };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i]!;
    if (x === "--load") continue;
    else if (x === "--8b") a.eightB = true;
    else if (x === "--json") a.json = true;
    else if (x === "--cold") a.cold = true;
    else if (x === "--regen") a.regen = true;
    else if (x === "--worlds") a.worlds = argv[++i]!.split(",").map(Number);
    else if (x === "--rounds") a.rounds = Math.max(1, Number(argv[++i]));
    else if (x === "--only") a.only = new Set(argv[++i]!.split(","));
    else if (x === "--dir") a.dir = resolve(argv[++i]!);
    else if (x === "--help" || x === "-h") {
      process.stdout.write("usage: node dist/test/bench/run.js --load [--8b] [--json] [--worlds 8,4] [--rounds N] [--cold] [--regen] [--only converter,shard-dcp,floor,shard-st,shard-hfst,hf] [--dir DIR]\n");
      process.exit(0);
    } else throw new Error(`bench --load: unknown argument ${x}`);
  }
  return a;
}

interface Way { id: string; label: string; kind: "dcp" | "hf" | "st" | "floor"; dir: string; config: string; make?: () => void }

interface RankRound { rank_s: number; wall_s: number; rchar: number; read_bytes: number; requested: number; dcp_load_s?: number; rss_before: number; hwm: number }
interface RankCase { rounds: RankRound[]; fingerprint: Record<string, number>; nan: number }

export interface LoadRow {
  model: string; world: number; cache: "warm" | "cold"; id: string; label: string; config: string;
  wall: number; walls: number[];
  /** Seconds inside dcp.load (planning + reader) in the best round, max over ranks: the part the layout decides. */
  dcpLoad: number;
  requestedPerRank: number; rcharPerRank: number; readBytesPerRank: number; readBytesTotal: number;
  rssPeakMiB: number; rssBeforeMiB: number; sameModelAsHf: boolean | undefined; nan: number; error?: string;
}

function ways(shape: LlamaShape, hfDir: string, world: number, dir: string, log: (s: string) => void): Way[] {
  const out = (id: string) => join(dir, `load-${shape.name}-${id}`);
  const shard = (id: string, extra: string[]) => () => {
    const r = spawnSync(process.execPath, [CKPT, "shard", hfDir, out(id), "--world-size", String(world), "--no-fsync", "--quiet", "--force", ...extra], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`bench --load: ckpt shard ${extra.join(" ")} failed: ${r.stderr}`);
  };
  void log;
  const shardDcp = shard(`shard-dcp-w${world}`, []);
  return [
    { id: "converter", label: "converter-style DCP (1 chunk/tensor)", kind: "dcp", dir: out("converter"), config: "initial_load_in_hf = false" },
    { id: "shard-dcp", label: `ckpt shard --world-size ${world} (DCP)`, kind: "dcp", dir: out(`shard-dcp-w${world}`), config: "initial_load_in_hf = false", make: shardDcp },
    // CheckpointManager.load() of the shard-dcp output with dcp.load made a no-op: what TorchTitan spends whatever
    // the checkpoint (ModelWrapper.state_dict's wqkv split, load_state_dict's merge). No way in can load faster.
    { id: "floor", label: "TorchTitan's own work (dcp.load skipped)", kind: "floor", dir: out(`shard-dcp-w${world}`), config: "initial_load_in_hf = false", make: shardDcp },
    { id: "shard-st", label: `ckpt shard --format safetensors (TT names)`, kind: "st", dir: out(`shard-safetensors-w${world}`), config: "none (plain dcp.load + HF reader)", make: shard(`shard-safetensors-w${world}`, ["--format", "safetensors"]) },
    { id: "shard-hfst", label: `ckpt shard --format safetensors --hf-names`, kind: "hf", dir: out(`shard-hfst-w${world}`), config: "initial_load_in_hf = true", make: shard(`shard-hfst-w${world}`, ["--format", "safetensors", "--hf-names"]) },
    { id: "hf", label: "HF original + from_hf (initial_load_in_hf)", kind: "hf", dir: hfDir, config: "initial_load_in_hf = true" },
  ];
}

function runPython(root: string, args: string[], log: (s: string) => void): Promise<void> {
  const chroot = ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"].find((p) => existsSync(p)) ?? "chroot";
  return new Promise((res, rej) => {
    const child = spawn(chroot, [root, "/usr/bin/python3", ...args], {
      // a fixed mmap threshold: freed tensors go back to the kernel between ways in (glibc's dynamic threshold keeps
      // them in the heap, and eight ranks of a 1B model then run a small machine out of memory)
      env: { PATH: "/usr/bin:/bin", HOME: "/tmp", LANG: "C.UTF-8", OMP_NUM_THREADS: "1", PYTHONDONTWRITEBYTECODE: "1", USE_LIBUV: "0", MALLOC_MMAP_THRESHOLD_: "1048576", ...JUDGE_ENV },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stdout.on("data", (d) => (err += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("close", (code) => {
      if (code === 0) res();
      else { log(err.slice(-3000)); rej(new Error(`bench --load: python exited ${code}`)); }
    });
  });
}

const maxOf = (xs: number[]) => Math.max(...xs);

async function benchShape(shape: LlamaShape, a: Args, root: string, log: (s: string) => void): Promise<LoadRow[]> {
  const model = writeSyntheticLlama(join(a.dir, shape.name), shape, { log });
  const guest = (p: string) => GUEST_DIR + p.slice(a.dir.length);
  const py = join(a.dir, "py");
  mkdirSync(py, { recursive: true });
  copyFileSync(join(REPO, "test/bench/load.py"), join(py, "load.py"));
  const flavor = shape === LLAMA_3_1_8B ? "8B" : "1B";
  const rows: LoadRow[] = [];
  for (const world of a.worlds) {
    const list = ways(shape, model.dir, world, a.dir, log).filter((w) => !a.only || a.only.has(w.id) || w.id === "hf");
    for (const w of list) {
      const done = join(w.dir, ".ckpt-load-bench-complete");
      if (w.dir === model.dir || (existsSync(done) && !a.regen)) continue;
      log(`writing ${w.dir}`);
      rmSync(w.dir, { recursive: true, force: true });
      if (w.id === "converter") await runPython(root, [guest(join(py, "load.py")), "convert", JSON.stringify({ hf: guest(model.dir), out: guest(w.dir), flavor })], log);
      else w.make!();
      writeFileSync(done, "");
    }
    // hf first: it is the reference the others' fingerprints are compared with
    // (converter last: it needs the most memory, and a case that runs out of it ends the run)
    const rank = (id: string) => ["hf", "shard-hfst", "shard-dcp", "floor", "shard-st", "converter"].indexOf(id);
    const order = [...list].sort((x, y) => rank(x.id) - rank(y.id));
    for (const cold of a.cold ? [false, true] : [false]) {
      const result = join(a.dir, `load-result-${shape.name}-w${world}-${cold ? "cold" : "warm"}.json`);
      rmSync(result, { force: true });
      log(`loading at world ${world} (${cold ? "cold" : "warm"} cache, ${a.rounds} round(s)): ${order.map((w) => w.id).join(", ")}`);
      const t0 = performance.now();
      let failed: string | undefined;
      await runPython(root, [guest(join(py, "load.py")), "load", JSON.stringify({
        cases: order.map((w) => ({ id: w.id, kind: w.kind, path: guest(w.dir) })), hf_assets: guest(model.dir), world, rounds: a.rounds, cold, flavor, result: guest(result),
      })], log).catch((e: unknown) => { failed = e instanceof Error ? e.message : String(e); });
      if (!existsSync(result)) throw new Error(failed ?? "bench --load: no result");
      log(`  done in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
      const res = JSON.parse(readFileSync(result, "utf8")) as { ranks: Record<string, RankCase>[] };
      const ref = res.ranks.map((r) => r.hf?.fingerprint);
      for (const w of order) {
        if (!res.ranks[0]![w.id]) {
          rows.push({ model: shape.name, world, cache: cold ? "cold" : "warm", id: w.id, label: w.label, config: w.config, wall: NaN, walls: [], dcpLoad: NaN, requestedPerRank: 0, rcharPerRank: 0, readBytesPerRank: 0, readBytesTotal: 0, rssPeakMiB: 0, rssBeforeMiB: 0, sameModelAsHf: undefined, nan: 0, error: failed ?? "not run" });
          continue;
        }
        const per = res.ranks.map((r) => r[w.id]!);
        const nr = per[0]!.rounds.length;
        const walls = [...Array(nr).keys()].map((i) => maxOf(per.map((p) => p.rounds[i]!.wall_s)));
        const best = walls.indexOf(Math.min(...walls));
        const at = per.map((p) => p.rounds[best]!);
        const same = ref[0] ? per.every((p, r) => JSON.stringify(p.fingerprint) === JSON.stringify(ref[r])) : undefined;
        rows.push({
          model: shape.name, world, cache: cold ? "cold" : "warm", id: w.id, label: w.label, config: w.config,
          wall: walls[best]!, walls, dcpLoad: maxOf(at.map((x) => x.dcp_load_s ?? NaN)),
          requestedPerRank: maxOf(at.map((x) => x.requested)), rcharPerRank: maxOf(at.map((x) => x.rchar)),
          readBytesPerRank: maxOf(at.map((x) => x.read_bytes)), readBytesTotal: at.reduce((s, x) => s + x.read_bytes, 0),
          rssPeakMiB: maxOf(per.map((p) => maxOf(p.rounds.map((q) => q.hwm)))) / MiB, rssBeforeMiB: maxOf(at.map((x) => x.rss_before)) / MiB,
          sameModelAsHf: same, nan: per.reduce((s, p) => s + p.nan, 0),
        });
      }
    }
  }
  return rows;
}

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join("  ");
  return [line(head), w.map((n) => "-".repeat(n)).join("  "), ...rows.map(line)].join("\n");
}

/** ckpt outputs TorchTitan loads with a documented config (CheckpointManager), the candidates for "the fastest way in". */
const TORCHTITAN_WAYS = ["shard-dcp", "shard-hfst"];

/**
 * The load goals per world/cache group: the fastest ckpt output TorchTitan loads through its checkpointer takes no
 * longer than the HF original + from_hf and at most half the converter-style DCP's time.
 */
export function loadTargets(rows: LoadRow[]): { what: string; value: string; goal: string; ok: boolean }[] {
  const out: { what: string; value: string; goal: string; ok: boolean }[] = [];
  for (const g of [...new Set(rows.map((r) => `${r.model}|${r.world}|${r.cache}`))]) {
    const mine = rows.filter((r) => `${r.model}|${r.world}|${r.cache}` === g && !r.error);
    const [m, world, cache] = g.split("|");
    const best = mine.filter((r) => TORCHTITAN_WAYS.includes(r.id) && r.sameModelAsHf !== false && r.nan === 0).sort((x, y) => x.wall - y.wall)[0];
    const hf = mine.find((r) => r.id === "hf");
    const conv = mine.find((r) => r.id === "converter");
    const floor = mine.find((r) => r.id === "floor");
    if (!best) continue;
    const tag = `${m} w${world} ${cache}: ${best.id}`;
    if (hf) out.push({ what: `${tag} load time vs HF original + from_hf`, value: `${best.wall.toFixed(1)} s vs ${hf.wall.toFixed(1)} s`, goal: "≤ HF-direct", ok: best.wall <= hf.wall });
    if (conv) {
      out.push({ what: `${tag} speed vs converter-style DCP (whole CheckpointManager.load)`, value: `${(conv.wall / best.wall).toFixed(2)}×`, goal: "≥ 2×", ok: conv.wall / best.wall >= 2 });
      // A checkpoint that cost nothing to read would still take TorchTitan's own work: converter ÷ that is the
      // ceiling of the ratio above on this machine.
      if (floor) out.push({ what: `${m} w${world} ${cache}: converter-style ÷ TorchTitan's own work (the ceiling of any way in)`, value: `${(conv.wall / floor.wall).toFixed(2)}×`, goal: "(info)", ok: true });
      const dcpBest = mine.filter((r) => TORCHTITAN_WAYS.includes(r.id)).sort((x, y) => x.dcpLoad - y.dcpLoad)[0]!;
      out.push({ what: `${m} w${world} ${cache}: ${dcpBest.id} dcp.load part vs converter-style (the part the layout decides)`, value: `${(conv.dcpLoad / dcpBest.dcpLoad).toFixed(2)}×`, goal: "(info)", ok: true });
    }
    if (best.sameModelAsHf !== undefined) out.push({ what: `${tag} loads TorchTitan's own model (fingerprint on every rank)`, value: best.sameModelAsHf ? "same" : "differs", goal: "same", ok: best.sameModelAsHf });
  }
  return out;
}

export function loadReport(rows: LoadRow[], modelBytes: Record<string, number>): string {
  const parts: string[] = [];
  const groups = [...new Set(rows.map((r) => `${r.model}|${r.world}|${r.cache}`))];
  for (const g of groups) {
    const [m, world, cache] = g.split("|");
    const mine = rows.filter((r) => `${r.model}|${r.world}|${r.cache}` === g);
    const conv = mine.find((r) => r.id === "converter");
    const hf = mine.find((r) => r.id === "hf");
    const share = modelBytes[m!]! / Number(world);
    parts.push(`\n${m} — world ${world}, ${cache} cache (1/N of the HF model = ${(share / GB).toFixed(3)} GB)`);
    parts.push(table(
      ["way in", "TorchTitan config", "load s (best)", "rounds", "converter ÷ this", "HF+from_hf ÷ this", "in dcp.load s", "converter ÷ this", "asked GB/rank", "rchar GB/rank", "read_bytes GB/rank", "peak RSS MiB/rank", "= TorchTitan's model"],
      mine.map((r) => r.error ? [r.label, r.config, "failed", r.error.slice(0, 40), "", "", "", "", "", "", "", "", ""] : [
        r.label, r.config, r.wall.toFixed(2), r.walls.map((x) => x.toFixed(1)).join("/"),
        conv ? `${(conv.wall / r.wall).toFixed(2)}×` : "-", hf ? `${(hf.wall / r.wall).toFixed(2)}×` : "-",
        r.dcpLoad.toFixed(2), conv && r.id !== "floor" ? `${(conv.dcpLoad / r.dcpLoad).toFixed(2)}×` : "-",
        (r.requestedPerRank / GB).toFixed(3), (r.rcharPerRank / GB).toFixed(3), (r.readBytesPerRank / GB).toFixed(3),
        `${r.rssPeakMiB.toFixed(0)} (${r.rssBeforeMiB.toFixed(0)} before)`,
        r.id === "floor" ? "- (reads nothing)" : r.sameModelAsHf === undefined ? "?" : r.sameModelAsHf && r.nan === 0 ? "yes" : `NO${r.nan ? ` (${r.nan} NaN)` : ""}`,
      ]),
    ));
  }
  const targets = loadTargets(rows);
  if (targets.length) {
    parts.push("");
    parts.push(table(["target", "measured", "goal", ""], targets.map((t) => [t.what, t.value, t.goal, t.ok ? "ok" : "MISSED"])));
  }
  parts.push("\nin dcp.load = seconds inside dcp.load (planning collectives + the storage reader), max over ranks; the rest of the load is TorchTitan's own state_dict() / from_hf / load_state_dict, the same for every way in.");
  parts.push("asked = bytes the reader was asked for (FileSystemReader torch.loads whole blobs; HuggingFaceStorageReader copies slices out of an mmap, which rchar does not see). Max over ranks.");
  return parts.join("\n");
}

export async function mainLoad(argv: string[]): Promise<void> {
  const a = parseLoadArgs(argv);
  const log = (s: string) => process.stderr.write(s + "\n");
  mkdirSync(a.dir, { recursive: true });
  const env = torchEnv("sid");
  if (!env || !hasJudgeKit(env)) throw new Error("bench --load: needs the sid root with TorchTitan (test/interop/setup-torch-root.sh sid)");
  const target = join(env.root, GUEST_DIR.slice(1));
  mkdirSync(target, { recursive: true });
  const already = spawnSync("mountpoint", ["-q", target]).status === 0;
  if (!already && spawnSync("mount", ["--bind", a.dir, target], { stdio: "ignore" }).status !== 0) throw new Error(`bench --load: cannot bind-mount ${a.dir} into ${env.root}`);
  if (a.cold) {
    try { writeFileSync("/proc/sys/vm/drop_caches", "3\n"); } catch { log("bench --load: /proc/sys/vm/drop_caches is not writable here: no cold-cache rows"); a.cold = false; }
  }
  const rows: LoadRow[] = [];
  const sizes: Record<string, number> = {};
  try {
    for (const shape of a.eightB ? [LLAMA_3_2_1B, LLAMA_3_1_8B] : [LLAMA_3_2_1B]) {
      const { modelBytes } = await import("./gen.js");
      sizes[shape.name] = modelBytes(shape);
      rows.push(...await benchShape(shape, a, env.root, log));
    }
  } finally {
    if (!already) spawnSync("umount", [target], { stdio: "ignore" });
  }
  const info = { cpus: availableParallelism(), memGiB: +(totalmem() / 1024 ** 3).toFixed(1), rounds: a.rounds, statistic: "best of the rounds (max over ranks of barrier-to-barrier wall)" };
  if (a.json) process.stdout.write(JSON.stringify({ env: info, rows }, null, 1) + "\n");
  else {
    process.stdout.write(`ckpt bench --load — ${info.cpus} CPUs, ${info.memGiB} GiB RAM, TorchTitan main llama3 on gloo (FSDP2 Shard(0)), best of ${a.rounds}\n`);
    process.stdout.write(loadReport(rows, sizes) + "\n");
  }
}
