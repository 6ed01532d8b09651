// The public API (package.json "exports": dist/src/api.js) is the product: its exports are exactly the operations,
// their error type and the building blocks documented in README.md § API, and no test fixture (tests import
// src/fixtures/ directly).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as api from "../src/api.js";
import { writeTinyLlama } from "../src/fixtures/tiny-llama.js";

test("the API exports the operations and nothing from the test fixtures", () => {
  assert.deepEqual(Object.keys(api).sort(), [
    "CkptError", "ERROR_CODES", "benchKernels", "buildCatalog", "convert", "formatHealth", "getKernels", "health", "inspect",
    "loraConvert", "loraExport", "loraMerge", "openSource", "referenceKernels", "shard", "verify",
  ]);
});

test("a dry run through the API plans the fixture; a bad option is a CkptError with code USAGE", async () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-api-"));
  try {
    writeTinyLlama(join(dir, "hf"), { layers: 2 });
    const r = await api.shard({ source: join(dir, "hf"), out: join(dir, "out"), worldSize: 4, dryRun: true });
    assert.equal(r.dryRun, true);
    assert.equal(r.plan.perRank?.length, 4);
    await assert.rejects(api.shard({ source: join(dir, "hf"), out: join(dir, "out"), worldSize: 4, tp: 3 }),
      (e: unknown) => e instanceof api.CkptError && e.code === "USAGE" && /--tp 3 must divide --world-size 4/.test(e.message));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
