// Shared by the forward-equivalence interop tests: the CLI runner, deliberately wrong mapping copies, and running
// test/interop/py/judge.py over a case list with the one rule every judge test asserts (real cases match
// transformers; controls fail the comparison itself, or — where a case says so — a strict load).
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { installPy } from "./py-files.js";
import { hasJudgeKit, JUDGE_ENV, type TorchEnv } from "./torch.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");
const REPO_MAPPINGS = join(process.cwd(), "mappings");

/**
 * Runs a judge test's body in a fresh folder of the root (`h(name)`: its host path, `g(name)`: the same file seen
 * from inside the root) with the judge's Python files installed (`py`, a guest path), after checking that the
 * root has the judge kit; the folder is removed afterwards, pass or fail.
 */
export async function inJudgeWorkspace(env: TorchEnv, body: (w: { h: (n: string) => string; g: (n: string) => string; py: string }) => Promise<void>): Promise<void> {
  assert.ok(hasJudgeKit(env), `judge kit missing in ${env.root}: rerun test/interop/setup-torch-root.sh sid`);
  const tmp = env.tmpdir();
  try {
    await body({ h: (n) => join(tmp.host, n), g: (n) => `${tmp.guest}/${n}`, py: installPy(tmp.host, tmp.guest) });
  } finally {
    tmp.cleanup();
  }
}

/** Runs the built CLI (quiet) and fails the test, with its stderr, unless it exits 0. */
export function ckpt(args: string[], env: Record<string, string> = {}): void {
  const r = spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8", env: { ...process.env, ...env } });
  assert.equal(r.status, 0, `ckpt ${args.join(" ")} failed:\n${r.stderr}`);
}

/** Every tensor of a safetensors folder as `dtype[shape]` + its bytes: compare two folders for byte identity. */
export function safetensorsOf(dir: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const f of readdirSync(dir).filter((x) => x.endsWith(".safetensors"))) {
    const buf = readFileSync(join(dir, f));
    const n = Number(buf.readBigUInt64LE(0));
    const h = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    for (const [k, v] of Object.entries(h)) if (k !== "__metadata__") out.set(k, Buffer.concat([Buffer.from(`${v.dtype}[${v.shape}]`), buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1])]));
  }
  return out;
}

/** A copy of mappings/ with one architecture's rules edited: a deliberately wrong converter (CKPT_MAPPINGS_DIR). */
export function wrongMappings(dir: string, arch: string, edit: (rule: Record<string, unknown>) => void): string {
  mkdirSync(dir, { recursive: true });
  cpSync(REPO_MAPPINGS, dir, { recursive: true });
  const p = join(dir, `${arch}.json`);
  const m = JSON.parse(readFileSync(p, "utf8")) as { tensors: Record<string, unknown>[] };
  m.tensors.forEach(edit);
  writeFileSync(p, JSON.stringify(m));
  return dir;
}

export interface JudgeCase {
  name: string;
  hf: string;
  ckpt: string;
  arch?: string;
  perturb?: string;
  /** Must fail: by the comparison, or by a strict load when `expectLoadError`. */
  control?: boolean;
  expectLoadError?: boolean;
}
export interface JudgePass { max_abs: number; logit_scale: number; kl: number; loss_hf: number; loss_tt: number; norm_scale: number; route_flips: unknown; ok: boolean }
export interface JudgeResult { name: string; ok: boolean; load?: { missing?: string[]; unexpected?: string[] }; passes?: JudgePass[] }

/**
 * Runs judge.py on `cases` (written to `casesHost`, read by the root at `casesGuest`), prints one line per case, and
 * asserts real cases pass and controls fail as they must. Returns the results for further checks.
 */
export async function runJudge(env: TorchEnv, pyGuest: string, cases: JudgeCase[], casesHost: string, casesGuest: string, timeoutMs = 900_000): Promise<JudgeResult[]> {
  writeFileSync(casesHost, JSON.stringify(cases));
  const out = await env.pythonFile(`${pyGuest}/judge.py`, [casesGuest], { timeoutMs, env: JUDGE_ENV });
  const res = JSON.parse(out.trim().split("\n").pop()!) as { torch: string; transformers: string; results: JudgeResult[] };
  const table = res.results.map((r) => `${r.ok ? "ok  " : "FAIL"} ${r.name}: ` + (r.passes
    ? r.passes.map((p) => `×${p.norm_scale} |Δ|=${p.max_abs.toExponential(2)} (scale ${p.logit_scale.toFixed(1)}) KL=${p.kl.toExponential(2)} loss ${p.loss_hf.toFixed(6)}/${p.loss_tt.toFixed(6)} flips=${JSON.stringify(p.route_flips)}`).join("; ")
    : JSON.stringify(r.load)));
  console.log(`# judge: torch ${res.torch}, transformers ${res.transformers}\n# ` + table.join("\n# "));
  assert.equal(res.results.length, cases.length);
  for (const [i, c] of cases.entries()) {
    const r = res.results[i]!;
    assert.equal(r.name, c.name);
    if (!c.control) assert.ok(r.ok, `${c.name} must match transformers:\n${table[i]}`);
    else if (c.expectLoadError) assert.ok(!r.ok && r.load, `${c.name} must fail a strict load:\n${table[i]}`);
    else {
      // A control must be caught by the forward comparison itself, not by a load error.
      assert.equal(r.load, undefined, `${c.name} failed to load instead of failing the comparison: ${JSON.stringify(r.load)}`);
      assert.ok(!r.ok, `${c.name} passed the judge: the judge cannot tell right from wrong:\n${table[i]}`);
    }
  }
  return res.results;
}
