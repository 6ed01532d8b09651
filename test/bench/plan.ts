// `npm run bench -- --plan`: planning time and memory of real-sized models (headers only, sparse files): the
// Qwen3.5-35B-A3B VLM as published (1.8k tensors: fused experts, vision tower, MTP), FLUX.1-dev (the diffusers
// pipeline repo, 12B) and Muse-Glimmer-30B as `convert --dry-run` and `shard --world-size 64 --tp 2 --dry-run`. Wall
// time, CPU seconds and peak RSS of each CLI run (median of --rounds, default 3).
import { spawnSync } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { write35bA3bHeaders, writeFluxDevHeaders, writeMuseGlimmer30bHeaders } from "../helpers/big-headers.js";

const CKPT = resolve(import.meta.dirname ?? ".", "../../../bin/ckpt.js");

interface PlanRow { model: string; command: string; wall: number; cpu: number; rssMiB: number; outputs: number }

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;

export async function mainPlan(argv: string[]): Promise<void> {
  const rounds = Number(argv[argv.indexOf("--rounds") + 1] ?? 3) || 3;
  const dir = argv.includes("--dir") ? resolve(argv[argv.indexOf("--dir") + 1]!) : (process.env.CKPT_BENCH_DIR ?? "/var/tmp/ckpt-bench");
  const models: { model: string; folder: string; write: (d: string) => unknown; args: string[] }[] = [
    { model: "qwen3.5-35b-a3b (VLM, --text-only)", folder: "qwen3.5-35b-a3b-headers", write: write35bA3bHeaders, args: ["--text-only"] },
    { model: "FLUX.1-dev (diffusers repo, --drop guidance_embedder)", folder: "flux.1-dev-headers", write: writeFluxDevHeaders, args: ["--drop", "guidance_embedder"] },
    { model: "Muse-Glimmer-30B (text + vision)", folder: "muse-glimmer-30b-headers", write: writeMuseGlimmer30bHeaders, args: [] },
  ];
  const cases: [string, string, string[]][] = [];
  for (const m of models) {
    const hf = join(dir, m.folder);
    if (!existsSync(join(hf, m.folder.startsWith("flux") ? "model_index.json" : "config.json"))) m.write(hf);
    cases.push([m.model, "convert --dry-run", ["convert", hf, join(dir, "plan-out"), ...m.args, "--dry-run", "--json"]]);
    cases.push([m.model, "shard --world-size 64 --tp 2 --dry-run", ["shard", hf, join(dir, "plan-out"), "--world-size", "64", "--tp", "2", ...m.args, "--dry-run", "--json"]]);
  }
  const rows: PlanRow[] = [];
  for (const [model, label, args] of cases) {
    const samples: { wall: number; cpu: number; rss: number; outputs: number }[] = [];
    for (let i = 0; i < rounds; i++) {
      const t0 = performance.now();
      const r = spawnSync("/usr/bin/time", ["-f", "%M %U %S", process.execPath, CKPT, ...args], { encoding: "utf8", maxBuffer: 1 << 30 });
      const wall = (performance.now() - t0) / 1000;
      if (r.status !== 0) throw new Error(`bench --plan: ckpt ${label} failed:\n${r.stderr}`);
      const [rss, u, s] = r.stderr.trim().split("\n").pop()!.split(" ").map(Number) as [number, number, number];
      const plan = (JSON.parse(r.stdout) as { plan: { tensors: unknown[] } }).plan;
      samples.push({ wall, cpu: u + s, rss: rss / 1024, outputs: plan.tensors.length });
    }
    rows.push({ model, command: label, wall: median(samples.map((x) => x.wall)), cpu: median(samples.map((x) => x.cpu)),
      rssMiB: Math.max(...samples.map((x) => x.rss)), outputs: samples[0]!.outputs });
  }
  rmSync(join(dir, "plan-out"), { recursive: true, force: true });
  if (argv.includes("--json")) { process.stdout.write(JSON.stringify(rows, null, 2) + "\n"); return; }
  process.stdout.write(`ckpt bench --plan — median of ${rounds} round(s)\n\n| model | command | outputs | wall s | CPU s | peak RSS MiB |\n|---|---|---|---|---|---|\n`);
  for (const r of rows) process.stdout.write(`| ${r.model} | ${r.command} | ${r.outputs} | ${r.wall.toFixed(2)} | ${r.cpu.toFixed(2)} | ${r.rssMiB.toFixed(0)} |\n`);
}
