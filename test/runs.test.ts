// runsForBox takes whole-piece 2-D copies in one step instead of walking the box row by row. The walk is the
// reference: the same box read through `slice(dim 0, start 0, full size)` (a no-op view) goes the row-by-row way,
// and both must give the same runs, hence the same bytes, for any box, dtype and byte offset.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { runsForBox, runSourceRanges } from "../src/plan/runs.js";
import type { LeafInfo, Recipe } from "../src/plan/recipe.js";

const leafOf = (shape: number[], dtype: "BF16" | "F32" | "U8", byteOffset: number): LeafInfo => ({
  dtype, shape, pieces: [{ file: "model.safetensors", byteOffset, byteLength: 0, offsets: shape.map(() => 0), sizes: shape }],
});

test("whole-piece runs equal the row-by-row walk (2-D, 1-D and 0-D tensors)", () => {
  fc.assert(fc.property(
    fc.integer({ min: 0, max: 2 }), fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max: 40 }),
    fc.constantFrom("BF16", "F32", "U8"), fc.nat(1 << 20), fc.nat(), fc.nat(), fc.nat(), fc.nat(),
    (nd, R, C, dtype, off, a, b, c, d) => {
      const shape = nd === 2 ? [R, C] : nd === 1 ? [R] : [];
      const leaves = { w: leafOf(shape, dtype as "BF16", off) };
      const rows = nd === 0 ? 1 : R, cols = nd === 2 ? C : 1;
      const r0 = a % rows, rn = 1 + (b % (rows - r0)), c0 = c % cols, cn = 1 + (d % (cols - c0));
      const box = nd === 2 ? { offsets: [r0, c0], sizes: [rn, cn] } : nd === 1 ? { offsets: [r0], sizes: [rn] } : { offsets: [], sizes: [] };
      const fast = runsForBox({ op: "source", tensor: "w" }, shape, box, leaves);
      const walk = nd === 0 ? fast : runsForBox({ op: "slice", dim: 0, start: 0, size: rows, input: { op: "source", tensor: "w" } } as Recipe, shape, box, leaves);
      assert.deepEqual(fast, walk);
      assert.equal(fast.length, 1);
      // and the run reads exactly the box: first byte at (r0, c0), last at (r0 + rn - 1, c0 + cn - 1)
      const es = dtype === "F32" ? 4 : dtype === "BF16" ? 2 : 1;
      const [range] = runSourceRanges(fast[0]!);
      assert.equal(range!.start, off + (r0 * cols + c0) * es);
      assert.equal(range!.end, off + ((r0 + rn - 1) * cols + c0 + cn) * es);
    },
  ), { numRuns: 300 });
});

test("a tensor stored in several pieces (DCP shards) still takes the walk and covers every piece", () => {
  const leaves: Record<string, LeafInfo> = {
    w: {
      dtype: "BF16", shape: [4, 6], pieces: [
        { file: "a.distcp", byteOffset: 100, byteLength: 24, offsets: [0, 0], sizes: [2, 6] },
        { file: "b.distcp", byteOffset: 0, byteLength: 24, offsets: [2, 0], sizes: [2, 6] },
      ],
    },
  };
  const runs = runsForBox({ op: "source", tensor: "w" }, [4, 6], { offsets: [1, 2], sizes: [2, 3] }, leaves);
  assert.deepEqual(runs.map((r) => [r.src!.file, r.src!.byteOffset, r.rows, r.cols]), [["a.distcp", 100 + (6 + 2) * 2, 1, 3], ["b.distcp", 2 * 2, 1, 3]]);
});
