// Output files written in parallel. The executor takes output files in turn (interleaveByFile): page-cache writes of one file serialise on its inode
// lock, so two lanes must not spend a 0.5 GB tensor queued on the same file. The order may change only *when* bytes
// are written: every piece exactly once, each file's pieces in their own order.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { interleaveByFile } from "../src/exec/executor.js";
import { writeTinyLlama } from "../src/fixtures/tiny-llama.js";
import { runConvert } from "../src/commands/convert.js";
import { decodeDcpMetadata } from "../src/formats/dcp/metadata.js";

interface P { file: string; seq: number }

test("interleaveByFile: every piece once, each file's order kept, files taken in turn while several have pieces left", () => {
  fc.assert(fc.property(fc.array(fc.constantFrom("a", "b", "c", "d"), { maxLength: 60 }), (files) => {
    const pieces: P[] = files.map((file, seq) => ({ file, seq }));
    const out = interleaveByFile(pieces, (p) => p.file);
    assert.equal(out.length, pieces.length);
    assert.deepEqual([...out].sort((x, y) => x.seq - y.seq), pieces);
    for (const f of new Set(files)) {
      const mine = out.filter((p) => p.file === f).map((p) => p.seq);
      assert.deepEqual(mine, [...mine].sort((x, y) => x - y), `file ${f} out of order`);
    }
    // Round-robin: a file repeats back to back only once every other file has run out.
    for (let i = 1; i < out.length; i++) {
      if (out[i]!.file !== out[i - 1]!.file) continue;
      const rest = out.slice(i);
      assert.ok(rest.every((p) => p.file === out[i]!.file), `file ${out[i]!.file} twice in a row at ${i} while others wait`);
    }
  }));
});

test("interleaveByFile: a single file keeps plan order; the plan's 32 pieces of one tensor no longer queue on one file", () => {
  const one = [0, 1, 2, 3].map((seq) => ({ file: "__0_0.distcp", seq }));
  assert.deepEqual(interleaveByFile(one, (p) => p.file), one);
  // shard w2 of an embedding split into pieces: plan order is rank 0's 16 pieces, then rank 1's
  const plan = [...Array(32).keys()].map((seq) => ({ file: `__${seq < 16 ? 0 : 1}_0.distcp`, seq }));
  const files = interleaveByFile(plan, (p) => p.file).map((p) => p.file);
  assert.deepEqual(files.slice(0, 4), ["__0_0.distcp", "__1_0.distcp", "__0_0.distcp", "__1_0.distcp"]);
});

test("--files-per-rank: unsharded DCP defaults to two files, blobs tile each file, bad values are refused", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-fpr-"));
  try {
    const hf = join(dir, "hf");
    writeTinyLlama(hf, { seed: 3 });
    for (const [opts, files] of [[{}, ["__0_0.distcp", "__0_1.distcp"]], [{ filesPerRank: 3 }, ["__0_0.distcp", "__0_1.distcp", "__0_2.distcp"]], [{ worldSize: 2 }, ["__0_0.distcp", "__1_0.distcp"]]] as const) {
      const out = join(dir, `out-${files.length}-${"worldSize" in opts ? "w2" : "w1"}`);
      await runConvert({ source: hf, out, ...opts });
      assert.deepEqual(readdirSync(out).filter((f) => f.endsWith(".distcp")).sort(), [...files]);
      // Every file is exactly the concatenation of the blobs .metadata places in it (no gap, no overlap).
      const md = decodeDcpMetadata(readFileSync(join(out, ".metadata")), join(out, ".metadata"));
      for (const f of files) {
        const blobs = md.storage.filter((s) => s.file === f).sort((a, b) => a.offset - b.offset);
        assert.ok(blobs.length > 0, `${f} holds no blob`);
        let end = 0;
        for (const b of blobs) { assert.equal(b.offset, end, `${f}: gap or overlap at ${b.offset}`); end += b.length; }
        assert.equal(statSync(join(out, f)).size, end);
      }
    }
    await assert.rejects(runConvert({ source: hf, out: join(dir, "bad0"), filesPerRank: 0 }), /files-per-rank 0/);
    await assert.rejects(runConvert({ source: hf, out: join(dir, "bad-st"), filesPerRank: 2, format: "safetensors" }), /applies to DCP/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
