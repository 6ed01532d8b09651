// The benchmark's PyTorch path takes its tensor list (output ← source, heads to permute) from ckpt's dry-run
// plan: a change in how the plan describes recipes must not silently break `npm run bench`.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeTinyLlama } from "../src/fixtures/tiny-llama.js";
import { runConvert } from "../src/commands/convert.js";
import { torchTensorList } from "./bench/torch-path.js";

test("bench: the PyTorch path's tensor list parses from the dry-run plan (q/k permuted with their head counts)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-bench-plan-"));
  try {
    writeTinyLlama(join(dir, "hf"), { heads: 4, kvHeads: 2, layers: 2 });
    const r = await runConvert({ source: join(dir, "hf"), out: join(dir, "out"), dryRun: true });
    const list = torchTensorList(r.plan);
    assert.equal(list.length, r.plan.tensors.length);
    const byName = new Map(list.map(([name, src, heads]) => [name, { src, heads }]));
    const wq = [...byName.entries()].find(([n]) => /layers\.1\..*wq\.weight$/.test(n))!;
    const wk = [...byName.entries()].find(([n]) => /layers\.1\..*wk\.weight$/.test(n))!;
    const wv = [...byName.entries()].find(([n]) => /layers\.1\..*wv\.weight$/.test(n))!;
    assert.deepEqual(wq[1], { src: "model.layers.1.self_attn.q_proj.weight", heads: 4 });
    assert.deepEqual(wk[1], { src: "model.layers.1.self_attn.k_proj.weight", heads: 2 });
    assert.deepEqual(wv[1], { src: "model.layers.1.self_attn.v_proj.weight", heads: null });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
