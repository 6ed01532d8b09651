// The header corpus (test/corpus-headers/*.json): each supported family's main published checkpoints as their
// publishers lay them out (config.json, tensor names, dtypes, shapes, file count; sources recorded in each entry),
// written as sparse header-only files, must plan completely: `convert --dry-run` and `shard --dry-run --world-size
// 64` exit 0 with no tensor unmapped and nothing refused that the target can hold, in seconds and bounded memory.
// What is skipped is only what TorchTitan has no place for: Qwen3.5/3.6's MTP head, DeepSeek-V3's MTP copies of the
// shared embedding and head (its MTP layer converts with --mtp), Kimi K2.5's vision tower (--text-only).
import test from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { corpusEntries, writeCorpusHeaders, type CorpusEntry } from "./helpers/corpus-headers.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");
const WALL_S = 180; // a hang guard on a loaded 2-core CI machine, not a speed test (npm run bench -- --plan)
const RSS_MIB = 1536;

/** Flags a user passes for this family, and which skipped source names are expected (everything else must convert). */
function expectations(e: CorpusEntry): { flags: string[]; skippable: (name: string) => boolean } {
  switch (e.family) {
    case "qwen3_5_moe": return { flags: [], skippable: (n) => n.startsWith("mtp.") };
    case "deepseek_v3": return { flags: ["--mtp"], skippable: (n) => /^model\.layers\.61\.(embed_tokens|shared_head\.head)\.weight$/.test(n) };
    case "kimi_k25": return { flags: ["--text-only"], skippable: (n) => n.startsWith("vision_tower.") || n.startsWith("mm_projector.") };
    default: return { flags: [], skippable: () => false };
  }
}

test("header corpus: every entry records its sources and states what was derived or not established", () => {
  const entries = corpusEntries();
  assert.ok(entries.length >= 12, `${entries.length} entries`);
  for (const { id, entry } of entries) {
    assert.ok(entry.sources.length > 0 && entry.sources.every((s) => s.what && s.where), `${id}: sources`);
    assert.ok(entry.derived, `${id}: derivation`);
    assert.ok(entry.files > 0, `${id}: file count`);
  }
});

for (const { id, entry } of corpusEntries()) {
  test(`header corpus ${entry.model}: convert --dry-run and shard --dry-run --world-size 64 plan every tensor`, () => {
    const dir = mkdtempSync(join(tmpdir(), "ckpt-corpus-"));
    try {
      const { count, params } = writeCorpusHeaders(join(dir, "hf"), entry);
      const { flags, skippable } = expectations(entry);
      for (const args of [["convert", join(dir, "hf"), join(dir, "tt"), "--dry-run", "--json", ...flags],
        ["shard", join(dir, "hf"), join(dir, "w64"), "--world-size", "64", "--dry-run", "--json", ...flags]]) {
        const t0 = performance.now();
        const r = spawnSync("/usr/bin/time", ["-f", "%M", process.execPath, CLI, ...args], { encoding: "utf8", maxBuffer: 1 << 30 });
        const wall = (performance.now() - t0) / 1000;
        assert.equal(r.status, 0, `${id} ${args[0]}: ${r.stderr}`);
        const rss = Number(r.stderr.trim().split("\n").pop()) / 1024;
        const { plan } = JSON.parse(r.stdout) as { plan: { tensors: { name: string; shape: number[] }[]; skipped: { name: string; why: string }[]; files: unknown[] } };
        console.log(`# ${id} ${args[0]} --dry-run${flags.length ? " " + flags.join(" ") : ""}: ${count} source tensors (${(params / 1e9).toFixed(1)}B stored elements) -> ${plan.tensors.length} outputs in ${plan.files.length} file(s), ${plan.skipped.length} skipped; wall ${wall.toFixed(1)} s, peak RSS ${rss.toFixed(0)} MiB`);
        const bad = plan.skipped.filter((s) => !skippable(s.name));
        assert.deepEqual(bad, [], `${id}: skipped tensors the target can hold`);
        assert.ok(wall < WALL_S, `${id} ${args[0]}: ${wall.toFixed(1)} s`);
        assert.ok(rss < RSS_MIB, `${id} ${args[0]}: peak RSS ${rss.toFixed(0)} MiB`);
        if (entry.family === "qwen3_5_moe") {
          // the published fused experts read as such: w1 [E, F, D]
          const x = entry.config.text_config as Record<string, number>;
          const w1 = plan.tensors.find((t) => t.name === "layers.0.moe.routed_experts.inner_experts.w1_EFD")!;
          assert.deepEqual(w1.shape, [x.num_experts, x.moe_intermediate_size, x.hidden_size]);
          assert.ok(plan.tensors.some((t) => t.name.startsWith("vision_encoder.")), "the vision tower converts");
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
