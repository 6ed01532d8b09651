// Every mapping file, one loop: its `fixture` entry generated into a tiny HF checkpoint (src/fixtures/generate.ts),
// converted HF → TorchTitan → HF and compared with the source tensor by tensor (read here from the safetensors
// bytes, not through ckpt's readers: byte-identical, or for FP8 sources the block dequantization computed from the
// format), sharded over 4 ranks and reassembled to the single-rank conversion, and dry-run on real-sized headers of
// the published checkpoint. A mapping file without a fixture entry fails here, saying what to add.
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { runConvert } from "../src/commands/convert.js";
import type { DType } from "../src/dtypes.js";
import { generateFixture, writeFixture } from "../src/fixtures/generate.js";
import { mappingByName, mappingsDir } from "../src/mapping/load.js";
import { DEFAULT_TARGET, type FixtureSpec, type TensorRule } from "../src/mapping/schema.js";
import { corpusEntries, corpusTensors, writeCorpusHeaders } from "./helpers/corpus-headers.js";
import { readDcpFull } from "./helpers/dcp-full.js";
import { dequantBf16 } from "./helpers/fp8.js";
import type { FullTensor } from "./helpers/read-folder.js";
import { readRange, tensorRanges } from "./helpers/st-ranges.js";

/** The raw file's own `fixture` (never one inherited from another file), or an error saying what to add. */
function fixtureOf(file: string): FixtureSpec {
  const raw = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
  if (raw.fixture === undefined) {
    throw new Error(`${file} has no "fixture" entry: add one as its last key (the tiny config.json, the optional rules present per layer, ` +
      `shapes of rules without one, packed/FP8/prefix layout data, and "real": the published checkpoint for a dry run); see docs/adding-a-model.md §2`);
  }
  const keys = Object.keys(raw);
  if (keys[keys.length - 1] !== "fixture") throw new Error(`${file}: "fixture" must be the last key (it follows the rules it describes)`);
  return raw.fixture as FixtureSpec;
}

/** Every tensor of the safetensors files in `dir`, read from the bytes (header parsed here). */
function readSafetensors(dir: string): Map<string, FullTensor> {
  const out = new Map<string, FullTensor>();
  for (const [name, e] of tensorRanges(dir)) out.set(name, { dtype: e.dtype as DType, shape: e.shape, data: readRange(e.file, e.start, e.end - e.start) });
  return out;
}

const ttName = (rule: TensorRule | undefined) => (rule?.tt === undefined ? undefined : typeof rule.tt === "string" ? rule.tt : rule.tt[DEFAULT_TARGET]);

const files = readdirSync(mappingsDir()).filter((f) => f.endsWith(".json") && !f.endsWith(".schema.json")).sort(); // the *.schema.json are JSON Schemas, not mappings

test("every mapping file has a fixture; a file without one is refused with what to add", () => {
  assert.ok(files.length > 0, `no mapping files in ${mappingsDir()}`);
  for (const f of files) assert.doesNotThrow(() => fixtureOf(join(mappingsDir(), f)), `mappings/${f}`);
  // control: the same check on a mapping file without the entry
  const dir = mkdtempSync(join(tmpdir(), "ckpt-mappings-"));
  try {
    const raw = JSON.parse(readFileSync(join(mappingsDir(), files[0]!), "utf8")) as Record<string, unknown>;
    delete raw.fixture;
    const file = join(dir, "newmodel.json");
    writeFileSync(file, JSON.stringify(raw, null, 2) + "\n");
    assert.throws(() => fixtureOf(file), /newmodel\.json has no "fixture" entry: add one as its last key/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

for (const f of files) {
  test(`mappings/${f}: fixture → HF → TorchTitan → HF identical, shard --world-size 4 reassembles, dry run at the published size`, async () => {
    const fixture = fixtureOf(join(mappingsDir(), f));
    const arch = (JSON.parse(readFileSync(join(mappingsDir(), f), "utf8")) as { architecture: string }).architecture;
    const mapping = mappingByName(arch);
    const dir = mkdtempSync(join(tmpdir(), `ckpt-mapping-${arch}-`));
    try {
      const g = generateFixture(mapping, fixture);
      const hf = join(dir, "hf");
      const model = writeFixture(hf, mapping, fixture, g);
      const features = fixture.extra_layers !== undefined && mapping.extra_layers?.option ? [mapping.extra_layers.option] : [];
      const requantize = [...g.packed][0];
      assert.ok(g.packed.size <= 1, "one packed format per fixture");

      // HF → TorchTitan → HF
      const tt = join(dir, "tt"), back = join(dir, "back");
      await runConvert({ source: hf, out: tt, threads: 0, fsync: false, features });
      await runConvert({ source: tt, out: back, to: "hf", config: hf, requantize, threads: 0, fsync: false, features });
      const src = readSafetensors(model);
      const got = readSafetensors(back);
      const scaleSuffix = mapping.dequant?.scale_suffix;
      const expected = new Map<string, FullTensor>();
      for (const [name, t] of src) {
        const rule = g.ruleOf.get(name);
        if (ttName(rule) === undefined) continue; // no tensor at the target (e.g. MTP copies of shared weights)
        if (scaleSuffix && name.endsWith(scaleSuffix) && src.has(name.slice(0, -scaleSuffix.length))) continue;
        const scale = scaleSuffix ? src.get(name + scaleSuffix) : undefined;
        expected.set(name, scale ? { dtype: "BF16", shape: t.shape, data: dequantBf16(t, scale, mapping.dequant!.block) } : t);
      }
      // --to hf writes the language model's own names when the mapping has no wrapper output (hf_output)
      const unprefix = (n: string) => (fixture.prefix !== undefined && !mapping.hf_output && n.startsWith(fixture.prefix) ? mapping.prefixes!.find((p) => p.from === fixture.prefix)!.to + n.slice(fixture.prefix.length) : n);
      const want = new Map([...expected].map(([n, t]) => [unprefix(n), t]));
      assert.deepEqual([...got.keys()].sort(), [...want.keys()].sort(), "tensor names after HF → TorchTitan → HF");
      for (const [name, w] of want) {
        const x = got.get(name)!;
        assert.equal(x.dtype, w.dtype, `${name} dtype`);
        assert.deepEqual(x.shape, w.shape, `${name} shape`);
        assert.ok(x.data.equals(w.data), `${name}: bytes differ after the round trip`);
      }

      // shard --world-size 4, reassembled from its chunks, equals the single-rank conversion
      const sharded = join(dir, "w4");
      await runConvert({ source: hf, out: sharded, worldSize: 4, threads: 0, fsync: false, features });
      const one = (await readDcpFull(tt)).tensors, four = (await readDcpFull(sharded)).tensors;
      assert.deepEqual([...four.keys()].sort(), [...one.keys()].sort(), "sharded tensor names");
      for (const [name, t] of one) {
        const s = four.get(name)!;
        assert.equal(s.dtype, t.dtype, `${name} dtype`);
        assert.deepEqual(s.shape, t.shape, `${name} shape`);
        assert.ok(s.data.equals(t.data), `${name}: the 4 ranks' chunks reassemble to other bytes`);
      }

      // a dry run on the published checkpoint's headers (sparse files: planning reads headers only)
      const real = join(dir, "real");
      let count: number;
      if ("corpus" in fixture.real) {
        const id = fixture.real.corpus;
        const entry = corpusEntries().find((x) => x.id === id);
        assert.ok(entry, `fixture.real.corpus '${id}' is no test/corpus-headers entry`);
        count = writeCorpusHeaders(real, entry.entry).count;
        // the generator at the published config writes the published tensor list (names, dtypes, shapes, derived
        // independently in test/helpers/corpus-headers.ts), less the towers the target never converts
        const skipped = (mapping.towers ?? []).filter((t) => !t.convert).flatMap((t) => t.prefixes);
        const key = (t: { name: string; dtype: string; shape: number[] }) => `${t.name} ${t.dtype} [${t.shape.join(", ")}]`;
        const published = corpusTensors(entry.entry).filter((t) => !skipped.some((p) => t.name.startsWith(p))).map(key).sort();
        const generated = generateFixture(mapping, fixture, { config: entry.entry.config, headersOnly: true }).tensors.map(key).sort();
        const only = (a: string[], b: string[]) => { const s = new Set(b); return a.filter((x) => !s.has(x)).slice(0, 5); };
        assert.deepEqual({ generatedOnly: only(generated, published), publishedOnly: only(published, generated), count: generated.length }, { generatedOnly: [], publishedOnly: [], count: published.length });
      } else {
        const big = generateFixture(mapping, fixture, { config: fixture.real.config, headersOnly: true });
        writeFixture(real, mapping, fixture, big, fixture.real.files ?? 1);
        count = big.tensors.length;
      }
      // the published files carry the towers the target has no module for: the user opts out of them as they would
      const towerOptions = (mapping.towers ?? []).filter((t) => t.option && !t.convert).map((t) => t.option!);
      const r = await runConvert({ source: real, out: join(dir, "real-tt"), dryRun: true, threads: 0, features: [...features, ...towerOptions] });
      assert.ok(r.plan.tensors.length > 0 && count > 0, `planned ${r.plan.tensors.length} tensors from ${count} published ones`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
