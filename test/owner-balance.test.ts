// Chunks every rank holds (whole q/k/v at torchtitan@main, TP-replicated norms) are spread over the ranks, so that
// each rank writes — and a --ranged machine downloads — about 1/N of the model; .metadata still points every chunk
// at the file that holds it. And the dry run's per-rank table for a Llama-3.1-405B-shaped checkpoint at world 64.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TensorPlan } from "../src/plan/convert-plan.js";
import { layoutDcp, layoutRankSafetensors } from "../src/plan/output-layout.js";
import { decodeDcpMetadata } from "../src/formats/dcp/metadata.js";
import { runConvert } from "../src/commands/convert.js";
import { writeLlama405bHeaders } from "./helpers/big-headers.js";

/** A Llama-like layer stack: per layer wq/wk/wv kept whole (fullChunk), wo and the MLP sharded, norms replicated under TP. */
function tensors(layers: number, d = 64, ffn = 172): TensorPlan[] {
  const t = (name: string, shape: number[], policy: TensorPlan["policy"]): TensorPlan => ({ name, dtype: "BF16", shape, recipe: { op: "zeros" } as TensorPlan["recipe"], policy });
  const out = [t("tok_embeddings.weight", [1000, d], { tp: "shard0" })];
  for (let l = 0; l < layers; l++) {
    const p = `layers.${l}.`;
    out.push(t(p + "attention.wq.weight", [d, d], { tp: "shard0", fullChunk: true }), t(p + "attention.wk.weight", [d / 2, d], { tp: "shard0", fullChunk: true }), t(p + "attention.wv.weight", [d / 2, d], { tp: "shard0", fullChunk: true }));
    out.push(t(p + "attention.wo.weight", [d, d], { tp: "shard1" }), t(p + "attention_norm.weight", [d], { tp: "replicate" }), t(p + "ffn_norm.weight", [d], { tp: "replicate" }));
    out.push(t(p + "feed_forward.w1.weight", [ffn, d], { tp: "shard0" }), t(p + "feed_forward.w2.weight", [d, ffn], { tp: "shard1" }), t(p + "feed_forward.w3.weight", [ffn, d], { tp: "shard0" }));
  }
  out.push(t("norm.weight", [d], { tp: "replicate" }), t("output.weight", [1000, d], { tp: "shard0" }));
  return out;
}

const ratio = (xs: number[]) => Math.max(...xs) / (xs.reduce((a, b) => a + b, 0) / xs.length);

test("DCP: chunks held by several ranks go to the least-loaded of them; each rank writes ≈ 1/N; .metadata names the holding file", () => {
  for (const mesh of [{ fsdp: 8, tp: 1 }, { fsdp: 4, tp: 2 }]) {
    const plan = tensors(16);
    const layout = layoutDcp(plan, mesh);
    const sizes = layout.files.map((f) => f.size);
    assert.ok(ratio(sizes) < 1.05, `max/mean bytes per rank ${ratio(sizes).toFixed(3)} (${JSON.stringify(mesh)})`);
    const rankOfFile = new Map(layout.files.map((f) => [f.name, f.rank!]));
    const shared = layout.chunks.filter((c) => c.ranks.length > 1);
    assert.ok(shared.length > 0);
    for (const c of layout.chunks) assert.ok(c.ranks.includes(rankOfFile.get(c.file)!), `${c.tensor} is in the file of one of its ranks`);
    assert.ok(new Set(shared.map((c) => rankOfFile.get(c.file))).size === mesh.fsdp * mesh.tp, "every rank holds some shared chunks");
    // .metadata: every chunk's storage entry names the file and offset the layout put it at
    const md = decodeDcpMetadata(layout.extras.get(".metadata")!, ".metadata");
    const where = new Map(md.storage.map((s) => [`${s.fqn}|${(s.offsets ?? []).join(",")}`, s]));
    for (const c of layout.chunks) {
      const s = where.get(`${c.tensor}|${c.box.offsets.join(",")}`)!;
      assert.equal(s.file, c.file);
      assert.equal(s.offset, c.blob!.offset);
    }
    // deterministic: the same tensors give the same layout, byte for byte
    assert.deepEqual(layoutDcp(tensors(16), mesh).extras.get(".metadata"), layout.extras.get(".metadata"));
  }
});

test("per-rank safetensors: each shared chunk is written once, by one of its ranks; files even", () => {
  const layout = layoutRankSafetensors(tensors(16), { fsdp: 4, tp: 2 });
  const seen = new Map<string, number>();
  for (const c of layout.chunks) seen.set(`${c.tensor}|${c.box.offsets.join(",")}`, (seen.get(`${c.tensor}|${c.box.offsets.join(",")}`) ?? 0) + 1);
  assert.ok([...seen.values()].every((n) => n === 1), "no chunk twice");
  assert.ok(ratio(layout.files.map((f) => f.size)) < 1.05);
});

test("shard --dry-run of a Llama-3.1-405B-shaped checkpoint at world 64: bytes to write and to download per rank", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-405b-"));
  try {
    const { bytes } = writeLlama405bHeaders(join(dir, "hf"));
    const r = await runConvert({ source: join(dir, "hf"), out: join(dir, "out"), worldSize: 64, dryRun: true, ranged: true });
    const ranks = r.plan.perRank!;
    assert.equal(ranks.length, 64);
    const w = ranks.map((x) => x.write!), d = ranks.map((x) => x.download!);
    const GiB = 1024 ** 3;
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    t.diagnostic(`model ${(bytes / GiB).toFixed(1)} GiB, 1/64 = ${(bytes / 64 / GiB).toFixed(2)} GiB; writes max ${(Math.max(...w) / GiB).toFixed(2)} / mean ${(mean(w) / GiB).toFixed(2)} GiB (${ratio(w).toFixed(4)}); downloads max ${(Math.max(...d) / GiB).toFixed(2)} / mean ${(mean(d) / GiB).toFixed(2)} GiB (${ratio(d).toFixed(4)})`);
    assert.ok(ratio(w) < 1.01 && ratio(d) < 1.01, "every machine within 1% of the mean");
    // together: one model's weights (plus each machine's read of the 191 headers)
    assert.ok(Math.abs(d.reduce((a, b) => a + b, 0) - bytes) < 0.001 * bytes);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
