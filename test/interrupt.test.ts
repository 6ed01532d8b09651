// Ctrl-C: `ckpt convert` / `ckpt shard` interrupted mid-run (workers busy) exits with 130 promptly, its worker
// threads stopped (the process only exits once the pool is destroyed), and leaves no output folder behind.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeSyntheticLlama, type LlamaShape } from "./bench/gen.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(ROOT, "bin", "ckpt.js");
const tmp = mkdtempSync(join(tmpdir(), "ckpt-int-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

// ≈ 560 MB of bf16 with real Llama widths: converting it to f32 writes ≈ 1.2 GB, a few seconds on 2 cores.
const SHAPE: LlamaShape = { name: "interrupt", hidden: 2048, layers: 4, heads: 32, kvHeads: 8, ffn: 8192, vocab: 16000, tied: false, dtype: "BF16" };
let src: string;
before(() => {
  src = writeSyntheticLlama(join(tmp, "hf"), SHAPE).dir;
});

interface Interrupted {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  /** ms from the signal to the exit. */
  exitMs: number;
  /** bytes done / total in the last progress event before the signal. */
  progress: { done: number; total: number };
}

/** Starts ckpt with --json progress, sends `sig` once workers have written something and ~0.5 s have passed. */
async function interrupt(args: string[], sig: NodeJS.Signals = "SIGINT"): Promise<Interrupted> {
  const child = spawn(process.execPath, [CLI, ...args, "--json"], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  let progress = { done: 0, total: 0 };
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
    for (const line of stderr.split("\n")) {
      if (!line.startsWith("{")) continue;
      try {
        const e = JSON.parse(line) as { event?: string; bytesDone?: number; bytesTotal?: number };
        if (e.event === "progress") progress = { done: e.bytesDone!, total: e.bytesTotal! };
      } catch { /* partial line */ }
    }
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on("exit", (code, s) => res({ code, signal: s })));
  let done = false;
  void exited.then(() => (done = true));
  const t0 = Date.now();
  while (!done && !(progress.done > 0 && Date.now() - t0 >= 500)) {
    if (Date.now() - t0 > 60_000) { child.kill("SIGKILL"); throw new Error("no progress within 60 s"); }
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.ok(!done, `the run finished before it could be interrupted (${stderr.slice(-500)}); use a bigger model`);
  const before = { ...progress };
  const sent = Date.now();
  child.kill(sig);
  const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
  const e = await exited;
  clearTimeout(killer);
  return { ...e, stderr, exitMs: Date.now() - sent, progress: before };
}


describe("Ctrl-C", () => {
  for (const [name, args] of [
    ["convert --dtype f32", ["convert", "--dtype", "f32"]],
    ["shard --world-size 8", ["shard", "--world-size", "8", "--dtype", "f32"]],
  ] as const) {
    test(`SIGINT during ${name}: exit 130 within 2 s, workers stopped, no output`, async (t) => {
      const out = join(tmp, `out-${name.replace(/\W+/g, "_")}`);
      const r = await interrupt([args[0], src, out, ...args.slice(1)]);
      t.diagnostic(`interrupted at ${r.progress.done} of ${r.progress.total} bytes; exited ${r.exitMs} ms after SIGINT`);
      assert.ok(r.progress.done > 0 && r.progress.done < r.progress.total, "interrupted mid-run");
      assert.equal(r.signal, null, "exited by itself, not killed by the signal");
      assert.equal(r.code, 130, r.stderr.slice(-1000));
      assert.ok(r.exitMs < 2000, `exited ${r.exitMs} ms after SIGINT`);
      assert.match(r.stderr, /INTERRUPTED/);
      assert.doesNotMatch(r.stderr, /INTERNAL|MaxListenersExceeded/);
      assert.ok(!existsSync(out), "no output folder");
      assert.ok(!existsSync(out + ".partial"), `${out}.partial holds ${existsSync(out + ".partial") ? readdirSync(out + ".partial").join(", ") : ""}`);
      rmSync(out + ".partial", { recursive: true, force: true });
    });
  }

  test("SIGTERM behaves like SIGINT", async () => {
    const out = join(tmp, "out-term");
    const r = await interrupt(["convert", src, out, "--dtype", "f32"], "SIGTERM");
    assert.equal(r.code, 130, r.stderr.slice(-1000));
    assert.ok(r.exitMs < 2000, `exited ${r.exitMs} ms after SIGTERM`);
    assert.ok(!existsSync(out));
    rmSync(out + ".partial", { recursive: true, force: true });
  });

  test("an interrupted --ranks run leaves neither its rank files nor its temp folder", async () => {
    const out = join(tmp, "out-ranks");
    const r = await interrupt(["shard", src, out, "--world-size", "2", "--ranks", "0", "--dtype", "f32"]);
    assert.equal(r.code, 130, r.stderr.slice(-1000));
    assert.ok(r.exitMs < 2000, `exited ${r.exitMs} ms after SIGINT`);
    const left = existsSync(out) ? readdirSync(out) : [];
    assert.deepEqual(left, [], `left in ${out}: ${left.join(", ")}`);
  });
});
