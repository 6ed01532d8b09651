// Crash safety and resume: SIGKILL at several points then --resume gives a byte-identical output; journaled
// pieces are re-hashed (a corrupted one is redone); a different plan starts over; source files changing mid-run,
// disk full and read-only outputs give one clear error; the partial folder is kept only when it can be resumed.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, readdirSync, rmSync, statSync, statfsSync, truncateSync, utimesSync, writeSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { writeTinyLlama } from "../src/fixtures/tiny-llama.js";
import { runConvert } from "../src/commands/convert.js";
import { runVerify } from "../src/commands/verify.js";
import { CkptError } from "../src/errors.js";
import { describeFsError } from "../src/exec/output-dir.js";
import { fingerprint, parseJournal, JOURNAL_FILE } from "../src/exec/journal.js";
import { readSafetensorsHeader, findEntry } from "../src/formats/safetensors/index.js";
import { assertSameTree } from "./helpers/tree.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(ROOT, "bin", "ckpt.js");
const tmp = mkdtempSync(join(tmpdir(), "ckpt-rel-"));
const mounts: string[] = [];
after(() => {
  for (const m of mounts.reverse()) spawnSync("umount", [m]);
  rmSync(tmp, { recursive: true, force: true });
});

function cli(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", env: { ...process.env, ...env } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A CLI run that must succeed; its stderr is the failure message. */
function assertOk(r: { status: number | null; stderr: string }): void {
  assert.equal(r.status, 0, r.stderr);
}

function journalRecords(out: string): number {
  try {
    const text = readFileSync(join(out + ".partial", JOURNAL_FILE), "latin1");
    return Math.max(0, text.split("\n").length - 2);
  } catch {
    return 0;
  }
}

/**
 * Runs the CLI and kills it with `signal`: after `ms` milliseconds, or once the journal holds `records` entries.
 * Returns how the process ended (it may also have finished first).
 */
async function runAndKill(args: string[], out: string, when: { ms?: number; records?: number }, signal: NodeJS.Signals = "SIGKILL"): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string; killed: boolean }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => child.on("exit", (code, sig) => res({ code, signal: sig })));
  let done = false;
  void exited.then(() => { done = true; });
  const t0 = Date.now();
  let killed = false;
  while (!done) {
    const due = when.ms !== undefined ? Date.now() - t0 >= when.ms : journalRecords(out) >= when.records!;
    if (due) {
      killed = child.kill(signal);
      break;
    }
    if (Date.now() - t0 > 60_000) { child.kill("SIGKILL"); throw new Error("child did not reach the kill point in 60 s"); }
    await new Promise((r) => setTimeout(r, when.ms !== undefined ? 5 : 2));
  }
  const e = await exited;
  await new Promise((r) => setImmediate(r));
  return { ...e, stderr, killed: killed && e.signal === signal };
}

// A model big enough to take a moment with one thread (≈ 174 MB of f32).
const BIG = { vocab: 32000, hidden: 512, heads: 8, kvHeads: 4, headDim: 64, ffn: 1536, layers: 4, dtype: "F32" as const };
let big: string;
let refDcp: string;
let refShard: string;

before(() => {
  big = join(tmp, "big-hf");
  writeTinyLlama(big, BIG);
  refDcp = join(tmp, "ref-dcp");
  refShard = join(tmp, "ref-shard3");
  assertOk(cli(["convert", big, refDcp, "--threads", "1", "--quiet"]));
  assertOk(cli(["shard", big, refShard, "--world-size", "3", "--threads", "1", "--quiet"]));
});

describe("kill -9 and --resume", () => {
  test("SIGKILL at several points during convert, then --resume: byte-identical to an uninterrupted run", async () => {
    const out = join(tmp, "killed-dcp");
    const args = (resume: boolean) => ["convert", big, out, "--threads", "1", "--quiet", ...(resume ? ["--resume"] : [])];
    const kills: string[] = [];
    let first = true;
    // time-based kills (wherever they land), then journal-based ones (certainly mid-write)
    for (const when of [{ records: 1 }, { ms: 150 }, { records: 2 }, { records: 4 }, { records: 6 }]) {
      if (existsSync(out)) break;
      const r = await runAndKill(args(!first), out, when);
      first = false;
      if (r.killed) kills.push(JSON.stringify(when) + ` → ${journalRecords(out)} piece(s) journaled`);
      assert.ok(!existsSync(out) || !r.killed, "a killed run never leaves a final output");
      assert.doesNotMatch(r.stderr, /INTERNAL/);
    }
    assert.ok(kills.length >= 3, `at least 3 kills landed: ${kills.join("; ")}`);
    assert.ok(existsSync(out + ".partial"), "the partial folder survives kill -9");
    const fin = cli(args(true));
    assert.equal(fin.status, 0, fin.stderr);
    assert.match(fin.stderr, /resumed: [1-9]\d* piece\(s\)/, "the last run took over journaled pieces");
    assert.ok(!existsSync(out + ".partial"), "partial folder renamed away");
    assertSameTree(out, refDcp);
    assert.ok(!existsSync(join(out, JOURNAL_FILE)), "no journal in the output");
    assert.equal((await runVerify(out)).ok, true);
  });

  test("shard --world-size 3 killed after 1, 8 and 30 pieces, then --resume: byte-identical", async () => {
    const out = join(tmp, "killed-shard3");
    const args = (resume: boolean) => ["shard", big, out, "--world-size", "3", "--threads", "1", "--quiet", ...(resume ? ["--resume"] : [])];
    let first = true;
    let kills = 0;
    for (const records of [1, 8, 30]) {
      if (existsSync(out)) break;
      const r = await runAndKill(args(!first), out, { records });
      first = false;
      if (r.killed) kills++;
    }
    assert.ok(kills >= 2, `${kills} kills landed`);
    const fin = cli(args(true));
    assert.equal(fin.status, 0, fin.stderr);
    assert.match(fin.stderr, /resumed: [1-9]\d* piece\(s\)/);
    assertSameTree(out, refShard);
  });

  test("shard --ranks 1-2 of 3 killed twice, then --resume; --ranks 0 and --finalize: byte-identical to one run", async () => {
    const out = join(tmp, "killed-ranks");
    const journal = join(out, ".ckpt-ranks-1-2.partial", JOURNAL_FILE);
    const records = () => { try { return Math.max(0, readFileSync(journal, "latin1").split("\n").length - 2); } catch { return 0; } };
    const args = (resume: boolean) => ["shard", big, out, "--world-size", "3", "--ranks", "1-2", "--threads", "1", "--quiet", ...(resume ? ["--resume"] : [])];
    let kills = 0;
    for (const [i, want] of [4, 12].entries()) {
      const child = spawn(process.execPath, [CLI, ...args(i > 0)], { stdio: "ignore" });
      const exited = new Promise<NodeJS.Signals | null>((res) => child.on("exit", (_c, sig) => res(sig)));
      const t0 = Date.now();
      while (records() < want && child.exitCode === null && Date.now() - t0 < 60_000) await new Promise((r) => setTimeout(r, 2));
      child.kill("SIGKILL");
      if ((await exited) === "SIGKILL") kills++;
    }
    assert.ok(kills >= 1, "a kill landed mid-run");
    assert.ok(existsSync(join(out, ".ckpt-ranks-1-2.partial")), "the rank range's partial folder survives kill -9");
    const fin = cli(args(true));
    assert.equal(fin.status, 0, fin.stderr);
    assert.match(fin.stderr, /resumed: [1-9]\d* piece\(s\)/);
    assert.ok(!existsSync(join(out, ".ckpt-ranks-1-2.partial")));
    assertOk(cli(["shard", big, out, "--world-size", "3", "--ranks", "0", "--threads", "1", "--quiet"]));
    const f = cli(["shard", big, out, "--world-size", "3", "--finalize", "--quiet"]);
    assert.equal(f.status, 0, f.stderr);
    assertSameTree(out, refShard);
  });

  test("journaled pieces are re-hashed from disk: bytes damaged after the kill are rewritten", async () => {
    const out = join(tmp, "damaged");
    const r = await runAndKill(["convert", big, out, "--threads", "1", "--quiet"], out, { records: 10 });
    assert.ok(r.killed);
    const journaled = journalRecords(out);
    // damage 4 MiB of already-written tensor data, and tear the journal's last line
    const data = join(out + ".partial", "__0_0.distcp");
    const fd = openSync(data, "r+");
    writeSync(fd, Buffer.alloc(4 << 20, 0xa5), 0, 4 << 20, 1 << 20);
    closeSync(fd);
    appendFileSync(join(out + ".partial", JOURNAL_FILE), "7 0000");
    const fin = cli(["convert", big, out, "--threads", "1", "--quiet", "--resume"]);
    assert.equal(fin.status, 0, fin.stderr);
    const m = /resumed: (\d+) piece\(s\)/.exec(fin.stderr);
    assert.ok(m, fin.stderr);
    assert.ok(Number(m[1]) < journaled, `damaged pieces were redone (${m[1]} of ${journaled} kept)`);
    assertSameTree(out, refDcp);
  });

  test("a partial output made with other options is not resumed (the plan hash differs)", async () => {
    const out = join(tmp, "otherplan");
    const r = await runAndKill(["convert", big, out, "--threads", "1", "--quiet", "--dtype", "bf16"], out, { records: 1 });
    assert.ok(r.killed);
    const fin = cli(["convert", big, out, "--threads", "1", "--quiet", "--resume"]);
    assert.equal(fin.status, 0, fin.stderr);
    assert.match(fin.stderr, /different plan/);
    assert.doesNotMatch(fin.stderr, /resumed:/);
    assertSameTree(out, refDcp);
  });

  test("without --resume an earlier partial output is removed, with a warning", async () => {
    const out = join(tmp, "noresume");
    const r = await runAndKill(["convert", big, out, "--threads", "1", "--quiet"], out, { records: 2 });
    assert.ok(r.killed);
    const fin = cli(["convert", big, out, "--threads", "1", "--quiet"]);
    assert.equal(fin.status, 0, fin.stderr);
    assert.match(fin.stderr, /removing the partial output of an earlier run .*--resume/);
    assertSameTree(out, refDcp);
  });

  test("SIGINT of a run started with --resume keeps the partial folder and says how to resume", async () => {
    const out = join(tmp, "sigint");
    const r = await runAndKill(["convert", big, out, "--threads", "1", "--quiet", "--resume"], out, { records: 2 }, "SIGINT");
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /INTERRUPTED: .*interrupted.*partial output kept in .*sigint\.partial: rerun with --resume/);
    assert.ok(existsSync(out + ".partial") && !existsSync(out));
    const fin = cli(["convert", big, out, "--threads", "1", "--quiet", "--resume"]);
    assert.equal(fin.status, 0, fin.stderr);
    assertSameTree(out, refDcp);
  });

  test("journal format: header binds the plan, torn and foreign lines are ignored", () => {
    const plan = fingerprint({ a: 1 });
    assert.equal(plan, fingerprint({ a: 1 }));
    assert.notEqual(plan, fingerprint({ a: 2 }));
    const sha = "ab".repeat(32);
    const text = `ckpt-journal v1 plan=${plan} pieces=4\n0 0000000a 16 0 ${sha}\ngarbage\n9 0000000b 16 0 -\n2 0000000c 16 1 -\n3 0000`;
    const j = parseJournal(text, plan, 4)!;
    assert.deepEqual([...j.records.keys()], [0, 2]);
    assert.equal(j.records.get(2)!.f16Overflow, 1);
    assert.equal(j.validLength, text.length - "3 0000".length);
    assert.equal(parseJournal(text, fingerprint({ a: 2 }), 4), undefined);
    assert.equal(parseJournal(text, plan, 5), undefined);
  });
});

describe("errors during the run", () => {
  const small = () => {
    const dir = mkdtempSync(join(tmp, "small-"));
    writeTinyLlama(dir, { vocab: 4096, hidden: 256, heads: 4, kvHeads: 2, headDim: 64, ffn: 512, layers: 2, dtype: "F32" });
    return dir;
  };

  test("a source file modified during the run: SOURCE_CHANGED naming it, nothing written", async () => {
    const src = small();
    const out = join(tmp, "changed-out");
    let touched = false;
    await assert.rejects(
      runConvert({
        source: src, out, threads: 0,
        onProgress: () => {
          if (touched) return;
          touched = true;
          const f = join(src, "model.safetensors");
          const t = new Date(statSync(f).mtimeMs + 5000);
          utimesSync(f, t, t);
        },
      }),
      (e: unknown) => e instanceof CkptError && e.code === "SOURCE_CHANGED" && /model\.safetensors/.test(e.oneLine()) && /modified during the run/.test(e.message),
    );
    assert.ok(touched);
    assert.ok(!existsSync(out) && !existsSync(out + ".partial"));
  });

  test("a source file truncated during the run: SOURCE_CHANGED (not a short-read crash), nothing written", async () => {
    const src = small();
    const out = join(tmp, "truncated-out");
    let cut = false;
    await assert.rejects(
      runConvert({
        source: src, out, threads: 0, resume: true,
        onProgress: () => {
          if (cut) return;
          cut = true;
          const f = join(src, "model.safetensors");
          truncateSync(f, statSync(f).size - (8 << 20));
        },
      }),
      (e: unknown) => e instanceof CkptError && e.code === "SOURCE_CHANGED" && /changed size during the run/.test(e.message) && /model\.safetensors/.test(e.oneLine()),
    );
    assert.ok(!existsSync(out) && !existsSync(out + ".partial"), "a changed source cannot be resumed: the partial folder is removed even with --resume");
  });

  test("a clean error removes the partial folder; with --resume it is kept", async () => {
    const src = small();
    // one value beyond the fp16 range → OVERFLOW after the data is written
    const st = join(src, "model.safetensors");
    const h = await readSafetensorsHeader(st);
    const e = findEntry(h, "model.embed_tokens.weight")!;
    const fd = openSync(st, "r+");
    const v = Buffer.alloc(4);
    v.writeFloatLE(1e6);
    writeSync(fd, v, 0, 4, h.dataStart + e.begin);
    closeSync(fd);
    const out = join(tmp, "overflow-out");
    await assert.rejects(runConvert({ source: src, out, dtype: "f16", threads: 0 }), (err: unknown) => err instanceof CkptError && err.code === "OVERFLOW");
    assert.ok(!existsSync(out) && !existsSync(out + ".partial"));
    await assert.rejects(runConvert({ source: src, out, dtype: "f16", threads: 0, resume: true }), (err: unknown) => err instanceof CkptError && err.code === "OVERFLOW" && /--resume/.test(err.hint ?? ""));
    assert.ok(!existsSync(out) && existsSync(out + ".partial"));
  });

  test("worker-thread file errors (errno code lost in transit) become one clear IO error naming the path", () => {
    const full = describeFsError(new Error("ENOSPC: no space left on device, write"), "/x/out.partial");
    assert.ok(full instanceof CkptError);
    assert.equal(full.code, "IO");
    assert.match(full.oneLine(), /^ckpt: IO: \/x\/out\.partial: disk full \(no space left on device\) while writing \/x\/out\.partial \(free some space, then rerun with --resume/);
    const denied = describeFsError(Object.assign(new Error("EACCES: permission denied, open '/x/out.partial/__0_0.distcp'"), { code: "EACCES" }), "/x/out.partial");
    assert.ok(denied instanceof CkptError);
    assert.equal(denied.file, "/x/out.partial/__0_0.distcp");
    assert.match(denied.message, /permission denied/);
    const other = new Error("something else");
    assert.equal(describeFsError(other, "/x"), other);
  });

  const isRoot = process.getuid?.() === 0;
  const mountTmpfs = (name: string, opts: string): string | undefined => {
    const dir = join(tmp, name);
    mkdirSync(dir, { recursive: true });
    const r = spawnSync("mount", ["-t", "tmpfs", "-o", opts, "tmpfs", dir]);
    if (r.status !== 0) return undefined;
    mounts.push(dir);
    return dir;
  };

  test("disk full before writing (free-space check): one IO error naming the folder, nothing left", async (t) => {
    const fs = isRoot ? mountTmpfs("tiny-fs", "size=1m") : undefined;
    if (!fs) { t.skip("needs root to mount a small tmpfs"); return; }
    const src = small();
    const out = join(fs, "out");
    await assert.rejects(runConvert({ source: src, out, threads: 0 }), (e: unknown) => e instanceof CkptError && e.code === "IO" && /^disk full: the output needs \d+ more bytes but only \d+ are free/.test(e.message) && e.oneLine().includes(out + ".partial"));
    assert.deepEqual(readdirSync(fs), []);
  });

  test("disk full in the middle of writing: IO error naming the path, partial kept, --resume finishes byte-identical", async (t) => {
    const src = small();
    const ref = join(tmp, "small-ref");
    await runConvert({ source: src, out: ref, threads: 0 });
    const need = readdirSync(ref).filter((f) => f.endsWith(".distcp")).reduce((s, f) => s + statSync(join(ref, f)).size, 0);
    const fs = isRoot ? mountTmpfs("mid-fs", `size=${Math.ceil((need + (2 << 20)) / 4096) * 4096}`) : undefined;
    if (!fs) { t.skip("needs root to mount a small tmpfs"); return; }
    const out = join(fs, "out");
    const filler = join(fs, "filler");
    let filled = false;
    let err: unknown;
    try {
      await runConvert({
        source: src, out, threads: 0,
        onProgress: () => {
          if (filled) return;
          filled = true;
          // eat every free block
          const s = statfsSync(fs);
          const fd = openSync(filler, "w");
          try { writeSync(fd, Buffer.alloc(Number(s.bavail) * Number(s.bsize))); } catch { /* ENOSPC at the end */ } finally { closeSync(fd); }
        },
      });
    } catch (e) {
      err = e;
    }
    assert.ok(filled);
    assert.ok(err instanceof CkptError, String(err));
    assert.equal(err.code, "IO");
    assert.match(err.message, /^disk full \(no space left on device\) while writing /);
    assert.ok(err.oneLine().includes(out + ".partial"), err.oneLine());
    assert.match(err.hint ?? "", /--resume/);
    assert.ok(existsSync(out + ".partial") && !existsSync(out));
    rmSync(filler);
    const r = await runConvert({ source: src, out, threads: 0, resume: true });
    assert.equal(r.out, out);
    assertSameTree(out, ref);
  });

  test("read-only or permission-denied output: one IO error naming the path, nothing written", async (t) => {
    const src = small();
    let parent: string | undefined;
    if (isRoot) parent = mountTmpfs("ro-fs", "size=1m,ro");
    else {
      parent = join(tmp, "locked");
      mkdirSync(parent);
      chmodSync(parent, 0o555);
    }
    if (!parent) { t.skip("cannot make a read-only folder here"); return; }
    const out = join(parent, "out");
    await assert.rejects(runConvert({ source: src, out, threads: 0 }), (e: unknown) => e instanceof CkptError && e.code === "IO" && /(read-only file system|permission denied|operation not permitted) while writing/.test(e.message) && e.oneLine().includes(out + ".partial"));
    assert.deepEqual(readdirSync(parent), []);
  });
});

