// Sharding arithmetic against the worked examples of docs/sharding.md (§1, §4), values copied from the spec.
import test from "node:test";
import assert from "node:assert/strict";
import { split, shardTensor } from "../src/plan/sharding.js";

test("§1 split table: torch.chunk sizes and offsets, empty shards at offset n", () => {
  const rows: [number, number, number[], number[]][] = [
    [10, 4, [3, 3, 3, 1], [0, 3, 6, 9]],
    [6, 4, [2, 2, 2, 0], [0, 2, 4, 6]],
    [5, 4, [2, 2, 1, 0], [0, 2, 4, 5]],
  ];
  for (const [n, k, sizes, offsets] of rows) {
    assert.deepEqual([...Array(k).keys()].map((i) => split(n, k, i).size), sizes, `${n}/${k} sizes`);
    assert.deepEqual([...Array(k).keys()].map((i) => split(n, k, i).start), offsets, `${n}/${k} offsets`);
  }
});

test("§4a Llama-3-8B wq [4096, 4096], F=4 × T=2: rank rows from the spec table", () => {
  const chunks = shardTensor([4096, 4096], { tp: "shard0" }, { fsdp: 4, tp: 2 });
  const starts = [0, 2048, 512, 2560, 1024, 3072, 1536, 3584];
  for (let rank = 0; rank < 8; rank++) {
    const c = chunks.find((x) => x.ranks.includes(rank))!;
    assert.deepEqual([c.offsets[0], c.sizes[0]], [starts[rank], 512], `rank ${rank}`);
  }
});

test("§4a uneven N=10, T=2, F=2: (0,0) 0–2, (1,0) 3–4, (0,1) 5–7, (1,1) 8–9", () => {
  const chunks = shardTensor([10, 4], { tp: "shard0" }, { fsdp: 2, tp: 2 });
  const rowsOf = (rank: number) => { const c = chunks.find((x) => x.ranks.includes(rank))!; return [c.offsets[0], c.offsets[0]! + c.sizes[0]! - 1]; };
  assert.deepEqual([rowsOf(0), rowsOf(2), rowsOf(1), rowsOf(3)], [[0, 2], [3, 4], [5, 7], [8, 9]]);
});

test("§4b/§4c: rowwise (Shard(0), Shard(1)) and replicated norms written once per FSDP rank", () => {
  const wo = shardTensor([4096, 4096], { tp: "shard1" }, { fsdp: 4, tp: 2 });
  const c = wo.find((x) => x.ranks.includes(5))!; // (f, t) = (2, 1)
  assert.deepEqual([c.offsets, c.sizes], [[2048, 2048], [1024, 2048]]);
  const norm = shardTensor([4096], { tp: "replicate" }, { fsdp: 4, tp: 2 });
  assert.equal(norm.length, 4);
  assert.deepEqual(norm.map((x) => [x.owner, x.ranks]), [[0, [0, 1]], [2, [2, 3]], [4, [4, 5]], [6, [6, 7]]]);
});

test("§7: several empty boxes of one tensor are one chunk, in the first empty rank's file", () => {
  const chunks = shardTensor([2, 2], { tp: "replicate" }, { fsdp: 4, tp: 1 });
  assert.deepEqual(chunks.map((x) => [x.offsets[0], x.sizes[0], x.owner]), [[0, 1, 0], [1, 1, 1], [2, 0, 2]]);
});

test("uneven FSDP×TP: an empty box at the offset where the next TP block starts never shadows that block", () => {
  // N=10, T=2, F=4: t=0 holds rows 0–4 split 2,2,1,0 → (3,0) is empty at offset 5, where t=1's first box starts
  const chunks = shardTensor([10, 4], { tp: "shard0" }, { fsdp: 4, tp: 2 });
  const at5 = chunks.filter((x) => x.offsets[0] === 5);
  assert.equal(at5.length, 1);
  assert.deepEqual([at5[0]!.sizes[0], at5[0]!.owner], [2, 1]);
  const covered = chunks.reduce((s, x) => s + x.sizes[0]!, 0);
  assert.equal(covered, 10, "the chunks tile the rows");
});
