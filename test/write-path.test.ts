// `ckpt lora merge` and `--to hf --requantize` write through the executor like convert: an interrupted --resume run
// continues from its journal (pieces re-hashed and kept) and ends byte-identical to an uninterrupted one, with a
// manifest verify accepts.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, readdirSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { writeSyntheticLlama } from "./bench/gen.js";
import { tinyPeftAdapter, writePeftAdapter } from "../src/fixtures/tiny-lora.js";
import { loraMerge } from "../src/commands/lora-merge.js";
import { runVerify } from "../src/commands/verify.js";
import { runConvert } from "../src/commands/convert.js";
import { writeTinyGptOss } from "../src/fixtures/tiny-gpt-oss.js";
import { CkptError } from "../src/errors.js";
import { tensorRanges } from "./helpers/st-ranges.js";

const tmp = mkdtempSync(join(tmpdir(), "ckpt-write-path-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Same files with the same bytes in both folders. */
function assertSameFolder(a: string, b: string): string[] {
  const files = readdirSync(a).sort();
  assert.deepEqual(readdirSync(b).sort(), files);
  for (const f of files) assert.ok(readFileSync(join(b, f)).equals(readFileSync(join(a, f))), `${f} differs after resuming`);
  return files;
}

test("lora merge: interrupted with --resume, resumed from the journal, byte-identical to one run; manifest verifies", async () => {
  // ≈ 24 MB of bf16: several executor batches
  const base = writeSyntheticLlama(join(tmp, "hf"), { name: "merge", hidden: 512, layers: 2, heads: 8, kvHeads: 4, ffn: 1024, vocab: 16000, tied: false, dtype: "BF16" }).dir;
  const shapes = [...tensorRanges(base)].map(([name, t]) => ({ name, dtype: "BF16" as const, shape: t.shape, data: new Uint8Array(0) }));
  writePeftAdapter(join(tmp, "peft"), tinyPeftAdapter(shapes, { r: 4, targets: ["q_proj", "v_proj", "down_proj"] }));
  const opts = { base, adapter: join(tmp, "peft"), threads: 0 };
  const one = await loraMerge({ ...opts, out: join(tmp, "one") });
  assert.equal(one.merged.length, 6);

  const out = join(tmp, "resumed");
  const controller = new AbortController();
  await assert.rejects(loraMerge({ ...opts, out, resume: true, signal: controller.signal, onProgress: (e) => { if (e.bytesDone > 0 && e.bytesDone < e.bytesTotal) controller.abort(); } }),
    (e: unknown) => e instanceof CkptError && e.code === "INTERRUPTED");
  assert.ok(existsSync(out + ".partial"), "a --resume run keeps its partial output");
  const warnings: string[] = [];
  await loraMerge({ ...opts, out, resume: true, onWarning: (w) => warnings.push(w) });
  assert.ok(warnings.some((w) => /^resumed: [1-9]\d* piece\(s\)/.test(w)), warnings.join("\n"));
  assert.ok(!existsSync(out + ".partial"));
  const files = assertSameFolder(join(tmp, "one"), out);
  assert.ok(files.includes("ckpt-manifest.json") && files.includes("config.json"));
  const v = await runVerify(out);
  assert.equal(v.ok, true);
});

test("--to hf --requantize mxfp4: interrupted with --resume, resumed from the journal, byte-identical to one run", async () => {
  const hf = join(tmp, "gpt-oss");
  // ≈ 20 MB: embedding and lm_head span several executor batches, the experts are encode ops
  writeTinyGptOss(hf, { quantizerScales: true, vocab: 20000, hidden: 256, ffn: 128, heads: 4, kvHeads: 2, headDim: 64 });
  await runConvert({ source: hf, out: join(tmp, "gpt-oss-tt"), threads: 0 });
  const opts = { source: join(tmp, "gpt-oss-tt"), to: "hf" as const, config: hf, requantize: "mxfp4" as const, threads: 0 };
  await runConvert({ ...opts, out: join(tmp, "rq-one") });
  const out = join(tmp, "rq-resumed");
  const controller = new AbortController();
  await assert.rejects(runConvert({ ...opts, out, resume: true, signal: controller.signal, onProgress: (e) => { if (e.bytesDone > 0 && e.bytesDone < e.bytesTotal) controller.abort(); } }),
    (e: unknown) => e instanceof CkptError && e.code === "INTERRUPTED");
  const warnings: string[] = [];
  await runConvert({ ...opts, out, resume: true, onWarning: (w) => warnings.push(w) });
  assert.ok(warnings.some((w) => /^resumed: [1-9]\d* piece\(s\)/.test(w)), warnings.join("\n"));
  assertSameFolder(join(tmp, "rq-one"), out);
  assert.equal((await runVerify(out)).ok, true);
});
