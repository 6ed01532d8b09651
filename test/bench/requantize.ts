// Real-size `--to hf --requantize`: a gpt-oss checkpoint with MXFP4 experts and a Kimi K2 checkpoint with INT4
// experts (several GB each, quantizer-consistent scales), converted to TorchTitan and back with --requantize and the
// source as --config; every tensor of the result must equal the source's byte for byte (compared here by ranged
// reads of both files). Prints wall s, CPU s, peak RSS per command (/usr/bin/time).
//
//   node dist/test/bench/requantize.js [--dir /var/tmp/ckpt-requant] [--only gpt-oss,kimi] [--layers N] [--keep]
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { writeTinyGptOss } from "../../src/fixtures/tiny-gpt-oss.js";
import { writeTinyKimi } from "../../src/fixtures/tiny-kimi.js";
import { firstTensorDifference } from "../helpers/st-ranges.js";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const CKPT = join(REPO, "bin/ckpt.js");
const GB = 1e9;

const argv = process.argv.slice(2);
const opt = (k: string) => { const i = argv.indexOf(k); return i >= 0 ? argv[i + 1] : undefined; };
const dir = resolve(opt("--dir") ?? "/var/tmp/ckpt-requant");
const only = new Set((opt("--only") ?? "gpt-oss,kimi").split(","));
const keep = argv.includes("--keep");

const sizeOf = (d: string) => readdirSync(d).filter((f) => f.endsWith(".safetensors") || f.endsWith(".distcp")).reduce((s, f) => s + statSync(join(d, f)).size, 0);

const rows: string[][] = [];
function run(label: string, args: string[], out: string): void {
  const r = spawnSync("/usr/bin/time", ["-f", "%e %U %S %M", process.execPath, CKPT, ...args, "--quiet"], { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${label} failed:\n${r.stderr}`);
  const [wall, user, sys, rss] = r.stderr.trim().split("\n").pop()!.split(" ").map(Number) as [number, number, number, number];
  const gb = sizeOf(out) / GB;
  rows.push([label, wall.toFixed(1), (user + sys).toFixed(1), gb.toFixed(2), ((user + sys) / gb).toFixed(2), (rss / 1024).toFixed(0)]);
  process.stderr.write(`${label}: ${wall.toFixed(1)} s, ${(rss / 1024).toFixed(0)} MiB\n`);
}

mkdirSync(dir, { recursive: true });
const cases: { id: string; kind: "mxfp4" | "int4"; write: (d: string) => void }[] = [
  // ~3.7 GB: gpt-oss-20b widths (hidden = ffn = 2880, 32 experts), 6 layers, vocab 32000
  { id: "gpt-oss", kind: "mxfp4", write: (d) => writeTinyGptOss(d, { hidden: 2880, ffn: 2880, experts: 32, topK: 4, heads: 64, kvHeads: 8, headDim: 64, vocab: 32000, layers: Number(opt("--layers") ?? 6), quantizerScales: true, files: 2 }) },
  // Kimi K2 routed-expert widths (hidden 7168, moe ffn 2048), fewer experts and layers
  { id: "kimi", kind: "int4", write: (d) => writeTinyKimi(d, { layout: "k2", quantizerScales: true, hidden: 7168, moeFfn: 2048, experts: 48, layers: Number(opt("--layers") ?? 4), files: 2 } as Parameters<typeof writeTinyKimi>[1]) },
];
for (const c of cases.filter((x) => only.has(x.id))) {
  const src = join(dir, c.id);
  if (!existsSync(join(src, "config.json"))) {
    process.stderr.write(`generating ${src}…\n`);
    c.write(src);
  }
  process.stderr.write(`${c.id}: ${(sizeOf(src) / GB).toFixed(2)} GB source\n`);
  const tt = join(dir, `${c.id}-tt`), rq = join(dir, `${c.id}-rq`);
  rmSync(tt, { recursive: true, force: true });
  rmSync(rq, { recursive: true, force: true });
  run(`convert ${c.id} → tt`, ["convert", src, tt], tt);
  run(`convert tt → hf --requantize ${c.kind} --config <source>`, ["convert", tt, rq, "--to", "hf", "--config", src, "--requantize", c.kind], rq);
  const r = firstTensorDifference(src, rq);
  if (r.difference) throw new Error(`${c.id}: --requantize output differs from the source: ${r.difference}`);
  const [n, bytes] = [r.tensors, r.bytes];
  rows.push([`${c.id}: ${n} tensors, ${(bytes / GB).toFixed(2)} GB byte-identical to the source`, "", "", "", "", ""]);
  if (!keep) { rmSync(tt, { recursive: true, force: true }); rmSync(rq, { recursive: true, force: true }); }
}
const head = ["command", "wall s", "CPU s", "written GB", "CPU s/GB", "peak RSS MiB"];
const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
for (const r of [head, ...rows]) process.stdout.write(r.map((x, i) => (i === 0 ? x.padEnd(w[i]!) : x.padStart(w[i]!))).join("  ") + "\n");
