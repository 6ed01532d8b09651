// `ckpt shard --format safetensors --hf-names`: per-rank files for TorchTitan's initial_load_in_hf.
// Each rank's file holds its FSDP box of every HF tensor under the HF name, in HF row order (TorchTitan's from_hf
// reverse-permutes q/k after the load), with DCP_SHARDING_INFO offsets; the tied embedding is written once. The
// interop proof is `npm run bench -- --load` (TorchTitan's CheckpointManager loads it into the same model as from
// the HF original).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeTinyLlama } from "../src/fixtures/tiny-llama.js";
import { runConvert } from "../src/commands/convert.js";
import { elementSize } from "../src/dtypes.js";

const dir = mkdtempSync(join(tmpdir(), "ckpt-hfnames-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

function header(file: string): { h: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>; meta: Record<string, string>; base: number; buf: Buffer } {
  const buf = readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const h = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const meta = h.__metadata__;
  delete h.__metadata__;
  return { h, meta, base: 8 + n, buf };
}

for (const tied of [false, true]) {
  test(`--hf-names: per-rank HF names and rows, boxes tile every HF tensor (tied=${tied})`, async () => {
    const src = join(dir, `hf-${tied}`);
    const g = writeTinyLlama(src, { hidden: 64, heads: 4, kvHeads: 2, headDim: 16, ffn: 128, vocab: 256, layers: 2, tied, seed: 7 });
    const out = join(dir, `out-${tied}`);
    const r = await runConvert({ source: src, out, worldSize: 4, format: "safetensors", hfNames: true, threads: 0 });
    assert.match(r.torchtitanConfig!, /initial_load_in_hf = true/);
    const files = readdirSync(out).filter((f) => f.endsWith(".safetensors")).sort();
    assert.equal(files.length, 4);
    const covered = new Map<string, number>();
    for (const f of files) {
      const { h, meta, base, buf } = header(join(out, f));
      const info = JSON.parse(meta.DCP_SHARDING_INFO!) as Record<string, { saved_offsets: number[] }>;
      for (const [name, e] of Object.entries(h)) {
        const t = g.tensors.find((x) => x.name === name);
        assert.ok(t, `${f}: ${name} is not an HF tensor name`);
        const off = info[name]!.saved_offsets;
        const rowBytes = (t.shape.slice(1).reduce((a, b) => a * b, 1)) * elementSize(t.dtype);
        const start = off[0]! * rowBytes;
        const got = buf.subarray(base + e.data_offsets[0], base + e.data_offsets[1]);
        assert.ok(Buffer.from(t.data.subarray(start, start + got.length)).equals(got), `${f}: ${name} rows ${off[0]}… are not the HF rows`);
        covered.set(name, (covered.get(name) ?? 0) + got.length);
      }
    }
    for (const t of g.tensors) {
      // q/k/v are one full chunk at torchtitan@main (TorchTitan asks for them whole): stored once
      assert.equal(covered.get(t.name), t.data.length, `${t.name}: bytes over all ranks`);
    }
    assert.equal(covered.has("lm_head.weight"), !tied);
  });
}

test("--hf-names needs sharded safetensors", async () => {
  const src = join(dir, "hf-usage");
  writeTinyLlama(src, { layers: 1 });
  await assert.rejects(runConvert({ source: src, out: join(dir, "u1"), worldSize: 2, hfNames: true, threads: 0 }), /--hf-names/);
  await assert.rejects(runConvert({ source: src, out: join(dir, "u2"), format: "safetensors", hfNames: true, threads: 0 }), /--hf-names/);
});
