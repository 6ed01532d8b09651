// `npm run bench`: wall time and peak RSS of `cp`, `ckpt convert` (keep dtype, and to f32), `ckpt shard
// --world-size 8` and, when the PyTorch root exists, the PyTorch path (safetensors.torch + permutation +
// dcp.save, bf16 and f32) on synthetic checkpoints with real Llama shapes, in one run with a warm page cache.
//
//   node dist/test/bench/run.js [--8b] [--json] [--rounds N] [--dir /var/tmp/ckpt-bench] [--no-torch] [--only a,b]
//   node dist/test/bench/run.js --tmpfs [--rounds N]   source and outputs in /dev/shm: cp, convert, shard w8 (CPU-bound)
//   node dist/test/bench/run.js --load …   load time into TorchTitan per output kind (test/bench/load.ts)
//   node dist/test/bench/run.js --plan [--rounds N]   planning time and RSS of real-sized models (test/bench/plan.ts)
//
// Every case runs as its own child process (peak RSS from /usr/bin/time, else the child's VmHWM), rounds are
// interleaved (cp, ckpt…, torch…, cp, ckpt…) and the median of the rounds is reported. Source and outputs live
// on the same file system (the PyTorch root sees the bench folder through a bind mount); outputs are deleted and
// `sync`ed between runs so one run's writeback does not land on the next.
import { spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, mkdirSync, openSync, readSync, readdirSync, rmSync, statSync, statfsSync, writeFileSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { availableParallelism, cpus, totalmem } from "node:os";
import { LLAMA_3_1_8B, LLAMA_3_2_1B, modelBytes, writeSyntheticLlama, type GeneratedModel, type LlamaShape } from "./gen.js";
import { TORCH_CONVERT_PY, torchTensorList } from "./torch-path.js";
import { torchEnv } from "../interop/torch.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "../../..");
const CKPT = join(REPO, "bin/ckpt.js");
const GUEST_DIR = "/tmp/ckpt-bench";
const CHROOT = ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"].find((p) => existsSync(p)) ?? "chroot";

interface Args {
  eightB: boolean;
  json: boolean;
  rounds: number;
  dir: string;
  torch: boolean;
  only?: Set<string>;
  /** Source and outputs on tmpfs (/dev/shm): a CPU-bound race against cp with no disk in it. */
  tmpfs: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { eightB: false, json: false, rounds: 3, dir: process.env.CKPT_BENCH_DIR ?? "/var/tmp/ckpt-bench", torch: true, tmpfs: false };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i]!;
    if (x === "--8b") a.eightB = true;
    else if (x === "--json") a.json = true;
    else if (x === "--no-torch") a.torch = false;
    else if (x === "--tmpfs") a.tmpfs = true;
    else if (x === "--rounds") a.rounds = Math.max(1, Number(argv[++i]));
    else if (x === "--dir") a.dir = resolve(argv[++i]!);
    else if (x === "--only") a.only = new Set(argv[++i]!.split(","));
    else if (x === "--help" || x === "-h") {
      process.stdout.write("usage: node dist/test/bench/run.js [--8b] [--json] [--rounds N] [--dir DIR] [--no-torch] [--tmpfs] [--only cp,cp-fsync,keep,keep-nofsync,f32,f32-nofsync,shard8,torch-bf16,torch-f32]\n");
      process.exit(0);
    } else throw new Error(`bench: unknown argument ${x}`);
  }
  if (a.tmpfs) {
    // tmpfs has no O_DIRECT and fsync is a no-op: the race is CPU against CPU (cp's copy_file_range vs ours).
    if (!process.argv.includes("--dir")) a.dir = "/dev/shm/ckpt-bench";
    a.only ??= new Set(["cp", "keep", "shard8"]);
    a.torch = false;
  }
  return a;
}

/** tmpfs (statfs f_type TMPFS_MAGIC): no disk under the run. */
function onTmpfs(dir: string): boolean {
  return Number(statfsSync(dir).type) === 0x01021994;
}

interface Sample { wall: number; rssKiB?: number; cpu?: number }

interface CaseResult {
  model: string;
  id: string;
  label: string;
  bytesWritten: number;
  samples: Sample[];
  wall: number;
  wallMin: number;
  wallMax: number;
  rssMiB?: number;
  cpu?: number;
  error?: string;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

const HAVE_TIME = existsSync("/usr/bin/time");

/** Runs a command as a child, returning its wall time, peak RSS and CPU seconds. */
async function measure(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; tmp: string }): Promise<Sample & { code: number; stderr: string; stdout: string }> {
  const timeFile = join(opts.tmp, `.time-${process.pid}`);
  const [file, argv] = HAVE_TIME ? ["/usr/bin/time", ["-f", "%e %M %U %S", "-o", timeFile, cmd, ...args]] : [cmd, args];
  const t0 = performance.now();
  const child = spawn(file, argv as string[], { env: opts.env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  let hwm = 0;
  const poll = HAVE_TIME ? undefined : setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, "utf8"));
      if (m) hwm = Math.max(hwm, Number(m[1]));
    } catch { /* exited */ }
  }, 20);
  const code = await new Promise<number>((res) => child.on("close", (c) => res(c ?? 1)));
  const wall = (performance.now() - t0) / 1000;
  if (poll) clearInterval(poll);
  let rssKiB: number | undefined = hwm || undefined;
  let cpu: number | undefined;
  if (HAVE_TIME && existsSync(timeFile)) {
    const line = readFileSync(timeFile, "utf8").trim().split("\n").pop()!.split(" ").map(Number);
    rssKiB = line[1];
    cpu = line[2]! + line[3]!;
    rmSync(timeFile, { force: true });
  }
  return { wall, rssKiB, cpu, code, stderr, stdout };
}

function du(path: string): number {
  if (!existsSync(path)) return 0;
  const st = statSync(path);
  if (!st.isDirectory()) return st.size;
  return readdirSync(path).reduce((s, n) => s + du(join(path, n)), 0);
}

/** Reads the files once so the page cache holds them (the "warm cache" condition). */
/**
 * Touches `bytes` of fresh anonymous memory in a child process, which frees it on exit. This VM reports free memory
 * to its host (virtio-balloon free page reporting, DAMON pageout): the first touch of a reported page faults in the
 * host and shows up as several times the guest's own kernel time, at random. A tmpfs run allocates all the pages it
 * writes, and a page-cache write on disk (cp, --no-fsync) as many, so without this their time depends on which pages
 * the allocator hands out (cp + sync of the same file took 1.6 s or 4.1 s); with it every case (cp and ours) starts
 * from pages the host backs.
 */
function warmMemory(bytes: number): void {
  const script = `const b = []; for (let i = 0; i < ${Math.ceil(bytes / (256 << 20))}; i++) { const x = Buffer.allocUnsafeSlow(256 << 20); x.fill(1); b.push(x); }`;
  spawnSync(process.execPath, ["-e", script], { stdio: "ignore" });
}

function warm(files: string[]): void {
  const buf = Buffer.allocUnsafe(16 << 20);
  for (const f of files) {
    const fd = openSync(f, "r");
    try {
      let pos = 0;
      for (;;) {
        const n = readSync(fd, buf, 0, buf.length, pos);
        if (n === 0) break;
        pos += n;
      }
    } finally {
      closeSync(fd);
    }
  }
}

function sync(): void {
  spawnSync("sync", { stdio: "ignore" });
}

function freeBytes(dir: string): number {
  const s = statfsSync(dir);
  return Number(s.bavail) * Number(s.bsize);
}

interface Case {
  id: string;
  label: string;
  out: string;
  run(): Promise<Sample & { code: number; stderr: string; stdout: string }>;
}

const GB = 1e9;
const MiB = 1024 * 1024;

async function benchModel(shape: LlamaShape, a: Args, log: (s: string) => void, torchRoot: string | undefined, rounds: number): Promise<CaseResult[]> {
  const model: GeneratedModel = writeSyntheticLlama(join(a.dir, shape.name), shape, { log });
  log(`${model.reused ? "reusing" : "generated"} ${model.dir} (${(model.bytes / GB).toFixed(2)} GB in ${model.files.length} file(s))`);
  const srcFiles = model.files.map((f) => join(model.dir, f));
  const outDir = (id: string) => join(a.dir, `out-${shape.name}-${id}`);
  const ckpt = (id: string, label: string, args: string[]): Case => ({
    id, label, out: outDir(id),
    run: () => measure(process.execPath, [CKPT, ...args.slice(0, 1), model.dir, outDir(id), "--quiet", ...args.slice(1)], { tmp: a.dir }),
  });
  const cases: Case[] = [
    {
      id: "cp", label: "cp (source bytes)", out: outDir("cp"),
      run: () => { mkdirSync(outDir("cp"), { recursive: true }); return measure("cp", ["--reflink=never", ...srcFiles, outDir("cp") + "/"], { tmp: a.dir }); },
    },
    {
      id: "cp-fsync", label: "cp + fsync", out: outDir("cp-fsync"),
      run: () => {
        mkdirSync(outDir("cp-fsync"), { recursive: true });
        const dsts = model.files.map((f) => join(outDir("cp-fsync"), f));
        const q = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;
        return measure("sh", ["-c", `cp --reflink=never ${srcFiles.map(q).join(" ")} ${q(outDir("cp-fsync") + "/")} && sync ${dsts.map(q).join(" ")}`], { tmp: a.dir });
      },
    },
    ckpt("keep", "ckpt convert (bf16 kept)", ["convert"]),
    ckpt("keep-nofsync", "ckpt convert --no-fsync (bf16 kept)", ["convert", "--no-fsync"]),
    ckpt("f32", "ckpt convert --dtype f32", ["convert", "--dtype", "f32"]),
    ckpt("f32-nofsync", "ckpt convert --dtype f32 --no-fsync", ["convert", "--dtype", "f32", "--no-fsync"]),
    ckpt("shard8", "ckpt shard --world-size 8", ["shard", "--world-size", "8"]),
  ];
  if (torchRoot) {
    const dry = spawnSync(process.execPath, [CKPT, "convert", model.dir, join(a.dir, "dry"), "--dry-run", "--json"], { encoding: "utf8" });
    if (dry.status !== 0) throw new Error(`bench: dry run failed: ${dry.stderr}`);
    const plan = (JSON.parse(dry.stdout) as { plan: { tensors: { name: string; recipe: string }[] } }).plan;
    const tensors = torchTensorList(plan);
    const guest = (p: string) => GUEST_DIR + p.slice(a.dir.length);
    for (const f32 of [false, true]) {
      const id = f32 ? "torch-f32" : "torch-bf16";
      const specFile = join(a.dir, `${shape.name}-${id}.json`);
      writeFileSync(specFile, JSON.stringify({ files: srcFiles.map(guest), out: guest(outDir(id)), f32, tensors }));
      cases.push({
        id, label: f32 ? "PyTorch → f32 (TorchTitan's)" : "PyTorch (bf16 kept)", out: outDir(id),
        run: () => measure(CHROOT, [torchRoot, "/usr/bin/python3", "-c", TORCH_CONVERT_PY, guest(specFile)], {
          tmp: a.dir,
          env: { PATH: "/usr/bin:/bin", HOME: "/tmp", LANG: "C.UTF-8", PYTHONDONTWRITEBYTECODE: "1" },
        }),
      });
    }
  }
  const selected = cases.filter((c) => !a.only || a.only.has(c.id));

  // Each case needs room for its output next to the source.
  const need = model.bytes * (selected.some((c) => c.id.includes("f32")) ? 2.3 : 1.3);
  if (freeBytes(a.dir) < need) throw new Error(`bench: ${((need) / GB).toFixed(1)} GB free needed in ${a.dir}, ${(freeBytes(a.dir) / GB).toFixed(1)} GB there`);

  // One unmeasured copy first: the first large write after a pause is often several times slower here (memory
  // the VM has not touched for a while), and it would otherwise land on round 1's cp.
  warm(srcFiles);
  await cases[0]!.run();
  rmSync(cases[0]!.out, { recursive: true, force: true });
  sync();

  const results = new Map<string, CaseResult>(selected.map((c) => [c.id, { model: shape.name, id: c.id, label: c.label, bytesWritten: 0, samples: [], wall: 0, wallMin: 0, wallMax: 0 }]));
  for (let r = 0; r < rounds; r++) {
    for (const c of selected) {
      const res = results.get(c.id)!;
      if (res.error) continue;
      rmSync(c.out, { recursive: true, force: true });
      rmSync(c.out + ".partial", { recursive: true, force: true });
      sync();
      warm(srcFiles);
      warmMemory(model.bytes * 1.5);
      const s = await c.run();
      if (s.code !== 0) {
        res.error = `exit ${s.code}: ${(s.stderr || s.stdout).trim().split("\n").slice(-3).join(" | ")}`;
        log(`  ${c.id}: FAILED ${res.error}`);
      } else {
        res.bytesWritten = du(c.out);
        res.samples.push({ wall: s.wall, rssKiB: s.rssKiB, cpu: s.cpu });
        log(`  round ${r + 1}/${rounds} ${c.id.padEnd(10)} ${s.wall.toFixed(2)} s  ${s.rssKiB !== undefined ? (s.rssKiB / 1024).toFixed(0) + " MiB" : "?"}  ${(res.bytesWritten / s.wall / GB).toFixed(2)} GB/s written`);
      }
      rmSync(c.out, { recursive: true, force: true });
      sync();
    }
  }
  for (const res of results.values()) {
    if (!res.samples.length) continue;
    res.wall = median(res.samples.map((s) => s.wall));
    res.wallMin = Math.min(...res.samples.map((s) => s.wall));
    res.wallMax = Math.max(...res.samples.map((s) => s.wall));
    const rss = res.samples.map((s) => s.rssKiB).filter((x): x is number => x !== undefined);
    if (rss.length) res.rssMiB = Math.max(...rss) / 1024;
    const cpu = res.samples.map((s) => s.cpu).filter((x): x is number => x !== undefined);
    if (cpu.length) res.cpu = median(cpu);
  }
  return [...results.values()];
}

interface Target { what: string; value: string; goal: string; ok: boolean }

function targets(rows: CaseResult[], model: string, tmpfs: boolean): Target[] {
  const get = (id: string) => rows.find((r) => r.model === model && r.id === id && r.samples.length);
  const tput = (r: CaseResult) => r.bytesWritten / r.wall;
  const out: Target[] = [];
  const keep = get("keep");
  const f32 = get("f32");
  const shard = get("shard8");
  // #17's goals. On tmpfs the race is CPU-bound: ours ≥ cp's throughput. On disk, like against like: ckpt's
  // default (and dcp.save) waits for the disk, so it races cp + fsync (median of the interleaved rounds ≥ 95%).
  // `--no-fsync` and f32 rows are shown for information against plain cp (both page cache).
  const pairs = (tmpfs
    ? [[keep, get("cp"), "tmpfs → tmpfs: convert bf16 vs cp", 1.0], [shard, get("cp"), "tmpfs → tmpfs: shard w8 bf16 vs cp", 1.0]]
    : [
      [keep, get("cp-fsync"), "disk: convert bf16 vs cp + fsync (both durable)", 0.95],
      [shard, get("cp-fsync"), "disk: shard w8 bf16 vs cp + fsync (both durable)", 0.95],
      [f32, get("cp-fsync"), "disk: convert f32 vs cp + fsync (both durable)", 0.6],
      [get("keep-nofsync"), get("cp"), "convert --no-fsync bf16 vs cp (both page cache)", 0.75],
    ]) as [CaseResult | undefined, CaseResult | undefined, string, number][];
  for (const [mine, ref, what, goal] of pairs) {
    if (!mine || !ref) continue;
    const x = tput(mine) / tput(ref);
    out.push({ what: `${what}: write throughput (median)`, value: `${(x * 100).toFixed(0)}%`, goal: `≥ ${goal * 100}%`, ok: x >= goal });
  }
  for (const r of [keep, shard]) {
    if (r?.cpu === undefined || !r.bytesWritten) continue;
    const perGB = r.cpu / (r.bytesWritten / GB);
    out.push({ what: `CPU s per GB written, ${r.id} (bf16 kept)`, value: perGB.toFixed(2), goal: "≤ 0.5", ok: perGB <= 0.5 });
  }
  for (const r of [keep, get("keep-nofsync"), shard]) {
    if (r?.rssMiB !== undefined) out.push({ what: `peak RSS ${r.id}`, value: `${r.rssMiB.toFixed(0)} MiB`, goal: "≤ 256 MiB", ok: r.rssMiB <= 256 });
  }
  for (const [mine, theirs, speed] of [[keep, get("torch-bf16"), 2], [f32, get("torch-f32"), 4]] as const) {
    if (!mine || !theirs) continue;
    const x = theirs.wall / mine.wall;
    out.push({ what: `${mine.id} speed vs PyTorch`, value: `${x.toFixed(1)}×`, goal: `≥ ${speed}×`, ok: x >= speed });
    if (mine.rssMiB !== undefined && theirs.rssMiB !== undefined) {
      const m = mine.rssMiB / theirs.rssMiB;
      out.push({ what: `${mine.id} peak RSS vs PyTorch`, value: `${(m * 100).toFixed(0)}%`, goal: "< 25%", ok: m < 0.25 });
    }
  }
  return out;
}

function table(head: string[], rows: string[][]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join("  ");
  return [line(head), w.map((n) => "-".repeat(n)).join("  "), ...rows.map(line)].join("\n");
}

function report(rows: CaseResult[], models: string[], tmpfs: boolean): string {
  const parts: string[] = [];
  for (const m of models) {
    const mine = rows.filter((r) => r.model === m);
    const cp = mine.find((r) => r.id === "cp" && r.samples.length);
    const cpSync = mine.find((r) => r.id === "cp-fsync" && r.samples.length);
    const torchOf = (id: string) => mine.find((r) => r.id === (id === "f32" ? "torch-f32" : id === "keep" ? "torch-bf16" : "") && r.samples.length);
    parts.push(`\n${m}`);
    parts.push(table(
      ["case", "wall s (median)", "min–max", "written GB", "GB/s", "vs cp", "vs cp+fsync", "CPU s", "CPU s/GB", "peak RSS MiB", "PyTorch time ÷ this", "RSS ÷ PyTorch"],
      mine.map((r) => {
        if (!r.samples.length) return [r.label, r.error ? "failed" : "-", "", "", "", "", "", "", "", "", "", ""];
        const t = torchOf(r.id);
        const gbs = r.bytesWritten / r.wall / GB;
        return [
          r.label, r.wall.toFixed(2), `${r.wallMin.toFixed(2)}–${r.wallMax.toFixed(2)}`, (r.bytesWritten / GB).toFixed(2), gbs.toFixed(2),
          cp ? `${((gbs / (cp.bytesWritten / cp.wall / GB)) * 100).toFixed(0)}%` : "-",
          cpSync ? `${((gbs / (cpSync.bytesWritten / cpSync.wall / GB)) * 100).toFixed(0)}%` : "-",
          r.cpu !== undefined ? r.cpu.toFixed(2) : "-",
          r.cpu !== undefined && r.bytesWritten ? (r.cpu / (r.bytesWritten / GB)).toFixed(2) : "-",
          r.rssMiB !== undefined ? r.rssMiB.toFixed(0) : "-",
          t ? `${(t.wall / r.wall).toFixed(1)}×` : "",
          t && t.rssMiB && r.rssMiB ? `${((r.rssMiB / t.rssMiB) * 100).toFixed(1)}%` : "",
        ];
      }),
    ));
    const ts = targets(rows, m, tmpfs);
    if (ts.length) {
      parts.push("");
      parts.push(table(["target", "measured", "goal", ""], ts.map((t) => [t.what, t.value, t.goal, t.ok ? "ok" : "MISSED"])));
    }
  }
  return parts.join("\n");
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const log = (s: string) => process.stderr.write(s + "\n");
  mkdirSync(a.dir, { recursive: true });
  const tmpfs = onTmpfs(a.dir);
  if (!existsSync(join(REPO, "dist/src/cli/main.js"))) throw new Error("bench: build first (npm run build)");
  const env = {
    cpus: availableParallelism(), cpu: cpus()[0]?.model ?? "?", memGiB: +(totalmem() / 1024 ** 3).toFixed(1), node: process.version,
    fs: a.dir, tmpfs, freeGB: +(freeBytes(a.dir) / GB).toFixed(1), rss_source: HAVE_TIME ? "/usr/bin/time %M" : "/proc/<pid>/status VmHWM",
    kernels: (await import("../../src/kernels/index.js")).kernelsInfo(),
  };
  log(`bench: ${env.cpus} CPUs (${env.cpu}), ${env.memGiB} GiB RAM, node ${env.node}, kernels ${env.kernels.name}${env.kernels.isa ? ` (${env.kernels.isa})` : ""}, data in ${a.dir} (${env.freeGB} GB free)`);

  let torchRoot: string | undefined;
  let mounted: string | undefined;
  let torchNote = "not requested (--no-torch)";
  if (a.torch) {
    const t = torchEnv("trixie");
    if (!t) torchNote = "PyTorch root not built (test/interop/setup-torch-root.sh trixie)";
    else {
      const target = join(t.root, GUEST_DIR.slice(1));
      mkdirSync(target, { recursive: true });
      const already = spawnSync("mountpoint", ["-q", target]).status === 0;
      const m = already ? { status: 0 } : spawnSync("mount", ["--bind", a.dir, target], { stdio: "ignore" });
      if (m.status === 0) {
        if (!already) mounted = target;
        torchRoot = t.root;
        torchNote = `PyTorch root ${t.root} (bind mount ${a.dir} → ${GUEST_DIR})`;
      } else torchNote = `cannot bind-mount ${a.dir} into ${t.root}`;
    }
  }
  log(`bench: PyTorch path: ${torchNote}`);

  const rows: CaseResult[] = [];
  const models: string[] = [];
  try {
    rows.push(...await benchModel(LLAMA_3_2_1B, a, log, torchRoot, a.rounds));
    models.push(LLAMA_3_2_1B.name);
    if (a.eightB) {
      // PyTorch on the 8B shape holds the whole model (×2 for f32) in memory: not run by default on small machines.
      const torch8 = torchRoot && totalmem() > modelBytes(LLAMA_3_1_8B) * 3.5 ? torchRoot : undefined;
      if (torchRoot && !torch8) log("bench: skipping PyTorch on the 8B shape (needs ~3.5× the model in RAM)");
      rows.push(...await benchModel(LLAMA_3_1_8B, a, log, torch8, 1));
      models.push(LLAMA_3_1_8B.name);
    }
  } finally {
    if (mounted) spawnSync("umount", [mounted], { stdio: "ignore" });
    // tmpfs data is RAM: a source left in /dev/shm starves whatever runs next (an 8-rank load bench was OOM-killed so)
    if (tmpfs) rmSync(a.dir, { recursive: true, force: true });
  }
  if (a.json) {
    const out = { env, torch: torchNote, rounds: a.rounds, statistic: "median wall of the rounds; peak RSS is the max over rounds", rows, targets: Object.fromEntries(models.map((m) => [m, targets(rows, m, tmpfs)])) };
    process.stdout.write(JSON.stringify(out, null, 1) + "\n");
  } else {
    process.stdout.write(`ckpt bench — ${env.cpus} CPUs, ${env.memGiB} GiB RAM, ${tmpfs ? "source and outputs on tmpfs" : "disk, warm page cache"}, ${a.rounds} round(s) interleaved, median wall and min–max (8B: 1 round)\n`);
    process.stdout.write(`PyTorch: ${torchNote}\n`);
    process.stdout.write(report(rows, models, tmpfs) + "\n");
  }
}

// `node --test dist/test/` loads every file under a test/ folder: only run when started directly.
if (process.env.NODE_TEST_CONTEXT === undefined) {
  // --load: time to load each output into TorchTitan (test/bench/load.ts)
  // --plan: planning time and memory of real-sized models (test/bench/plan.ts)
  const job = process.argv.includes("--load") ? import("./load.js").then((m) => m.mainLoad(process.argv.slice(2)))
    : process.argv.includes("--plan") ? import("./plan.js").then((m) => m.mainPlan(process.argv.slice(2))) : main();
  job.catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
