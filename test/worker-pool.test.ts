// Worker pools torn down while their threads are still loading the task module: on Node ≥ 20.19 piscina's
// require() of an ES module aborted the whole process in V8 when a thread was terminated mid-load (a tiny job with
// --threads, or Ctrl-C at start-up). The pool loads src/exec/worker-entry.cjs, which uses import() instead. Each
// cycle below creates 2 workers, runs one empty task and destroys the pool at once; the old entry aborted in about
// a quarter of 30-cycle runs. The cycles run in a child process so that an abort is an exit code, not a dead runner.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

const ENTRY = new URL("../src/exec/worker-entry.cjs", import.meta.url).href;
const PISCINA = import.meta.resolve("piscina");

test("a pool destroyed while its workers still load the task module does not abort the process (80 cycles)", () => {
  const script = `
    const { Piscina } = await import(${JSON.stringify(PISCINA)});
    for (let i = 0; i < 80; i++) {
      const pool = new Piscina({ filename: ${JSON.stringify(ENTRY)}, minThreads: 2, maxThreads: 2 });
      const r = await pool.run({ pieces: [], paths: {}, scales: {} });
      if (!Array.isArray(r) || r.length !== 0) throw new Error("unexpected result " + JSON.stringify(r));
      await pool.destroy();
    }
  `;
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script], { encoding: "utf8", cwd: fileURLToPath(new URL("../..", import.meta.url)) });
  assert.equal(r.signal, null, `killed by ${r.signal}: ${r.stderr.slice(0, 2000)}`);
  assert.equal(r.status, 0, r.stderr.slice(0, 2000));
});
