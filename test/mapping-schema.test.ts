// The published JSON Schema of mapping files (mappings/mapping.schema.json, what editors validate against through
// each file's "$schema") and the loader's validateMapping describe the same files: every mapping and target file in
// the repository passes both, and each broken variant below is refused by both. The schema is run by ajv (an
// independent JSON Schema 2020-12 implementation). What only code can check (names of dims entries inside
// expressions, rules named elsewhere) is refused by validateMapping alone, with the file and the rule's path.
// Also: `extends` resolution (kimi_k2.json = deepseek_v3.json + its differences) and the loader's handling of the
// schema files.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import Ajv2020 from "ajv/dist/2020.js";
import { CASTABLE, DTYPES } from "../src/dtypes.js";
import { CkptError } from "../src/errors.js";
import { loadMappings, mappingByName } from "../src/mapping/load.js";
import { mergeMapping, resolveExtends } from "../src/mapping/extends.js";
import { OMITTABLE, TARGETS, TP_PLACEMENTS, validateMapping } from "../src/mapping/schema.js";
import { targetSpec } from "../src/mapping/targets.js";
import { writeTinyQwen3 } from "../src/fixtures/tiny-qwen3.js";

const DIR = join(process.cwd(), "mappings");
const read = (f: string) => JSON.parse(readFileSync(join(DIR, f), "utf8")) as Record<string, unknown>;
const mappingFiles = readdirSync(DIR).filter((f) => f.endsWith(".json") && !f.endsWith(".schema.json")).sort();
const ajv = new Ajv2020.default({ allErrors: true, strict: true, strictRequired: false, strictTypes: false });
const schemaValid = ajv.compile(read("mapping.schema.json"));
const targetValid = ajv.compile(read("target.schema.json"));

/** Both validators' verdicts on one file's JSON (`extends` resolved against the repository's mappings first). */
function verdicts(raw: Record<string, unknown>): { schema: boolean; code: string | undefined } {
  const schema = schemaValid(raw) as boolean;
  let code: string | undefined;
  try {
    const resolved = raw.extends === undefined ? raw : mergeMapping(resolveExtends(mappingFiles.map((f) => ({ path: f, raw: read(f) }))).find((x) => (x.raw as { architecture: string }).architecture === raw.extends)!.raw as Record<string, unknown>, raw, "x.json");
    validateMapping(resolved, "x.json");
  } catch (e) {
    if (!(e instanceof CkptError)) throw e;
    code = e.message;
  }
  return { schema, code };
}

test("every mapping file passes the JSON Schema and the loader; every file names the schema", () => {
  assert.ok(mappingFiles.length >= 8, mappingFiles.join(", "));
  for (const f of mappingFiles) {
    const raw = read(f);
    assert.equal(raw.$schema, "./mapping.schema.json", f);
    assert.ok(schemaValid(raw), `${f}: ${ajv.errorsText(schemaValid.errors)}`);
  }
  // the loader reads exactly the mapping files: the schema files are not mappings
  assert.deepEqual(loadMappings().map((m) => m.architecture).sort(), mappingFiles.map((f) => read(f).architecture as string).sort());
});

test("every target has its data file, valid for target.schema.json and for the loader", () => {
  const files = readdirSync(join(DIR, "targets")).sort();
  assert.deepEqual(files, [...TARGETS].map((t) => `${t}.json`).sort());
  for (const t of TARGETS) {
    const raw = JSON.parse(readFileSync(join(DIR, "targets", `${t}.json`), "utf8")) as Record<string, unknown>;
    assert.ok(targetValid(raw), `${t}: ${ajv.errorsText(targetValid.errors)}`);
    assert.equal(targetSpec(t).target, t);
    for (const bad of [{ ...raw, extra: 1 }, { ...raw, experts_shard1_mesh: "tp" }, { ...raw, description: "" }, { ...raw, lora_converter: "yes" }]) assert.ok(!targetValid(bad), JSON.stringify(bad));
  }
  // TorchTitan main compares the whole dense mesh (dp_shard · tp) with the expert count, 0.2 the FSDP degree
  assert.equal(targetSpec("torchtitan@main").experts_shard1_mesh, "dp_shard_tp");
  assert.equal(targetSpec("torchtitan@0.2").experts_shard1_mesh, "dp_shard");
  // components/lora.py (LoRAConverter) exists on TorchTitan main (b5bcd76), not in 0.2
  assert.equal(targetSpec("torchtitan@main").lora_converter, true);
  assert.equal(targetSpec("torchtitan@0.2").lora_converter, false);
});

test("the schema's closed vocabularies are the code's", () => {
  const s = read("mapping.schema.json") as { $defs: Record<string, { enum?: string[]; properties?: Record<string, { enum?: string[]; const?: string }> }> };
  const rule = s.$defs.rule!.properties!;
  assert.deepEqual(s.$defs.target!.enum, [...TARGETS]);
  assert.deepEqual(rule.tp!.enum, [...TP_PLACEMENTS]);
  assert.deepEqual(rule.dtype!.enum, [...CASTABLE]);
  assert.deepEqual((s.$defs.rule!.properties!.synth as { properties: Record<string, { enum: string[] }> }).properties.dtype!.enum, [...DTYPES]);
  assert.deepEqual((s.$defs.rule!.properties!.synth as { properties: Record<string, { enum: string[] }> }).properties.omit_option!.enum, [...OMITTABLE]);
  const ops = Object.keys(s.$defs).filter((k) => k.startsWith("op_")).map((k) => s.$defs[k]!.properties!.op!.const);
  assert.deepEqual(ops.sort(), ["chunk", "concat", "int4", "mxfp4", "reshape", "split", "swap_halves", "transpose"]);
});

// Broken variants of real mappings: each must be refused by the JSON Schema and by validateMapping.
type Edit = (m: Record<string, unknown> & { tensors: Record<string, unknown>[] }) => void;
const BROKEN: [string, string, Edit][] = [
  ["llama3.json", "unknown top-level field", (m) => { m.tensor = []; }],
  ["llama3.json", "no tensors", (m) => { delete (m as Record<string, unknown>).tensors; }],
  ["llama3.json", "empty tensors", (m) => { m.tensors = []; }],
  ["llama3.json", "no dims", (m) => { delete m.dims; }],
  ["llama3.json", "a dims entry with no alternatives", (m) => { (m.dims as Record<string, unknown>).hidden = []; }],
  ["llama3.json", "an unknown target", (m) => { m.targets = ["torchtitan@0.1"]; }],
  ["llama3.json", "architecture empty", (m) => { m.architecture = ""; }],
  ["llama3.json", "match not an object", (m) => { m.match = ["LlamaForCausalLM"]; }],
  ["llama3.json", "unknown rule field", (m) => { m.tensors[0]!.hff = "x"; }],
  ["llama3.json", "rule without tt", (m) => { delete m.tensors[0]!.tt; }],
  ["llama3.json", "rule without hf or synth", (m) => { delete m.tensors[0]!.hf; }],
  ["llama3.json", "tt keyed by an unknown target", (m) => { m.tensors[0]!.tt = { "torchtitan@0.1": "x" }; }],
  ["llama3.json", "bad tp placement", (m) => { m.tensors[0]!.tp = "colwise"; }],
  ["llama3.json", "bad output dtype", (m) => { m.tensors[0]!.dtype = "I32"; }],
  ["llama3.json", "full_chunk naming an unknown target", (m) => { m.tensors[0]!.full_chunk = ["main"]; }],
  ["llama3.json", "optional not a boolean", (m) => { m.tensors[0]!.optional = "yes"; }],
  ["llama3.json", "shape not a list", (m) => { m.tensors[0]!.shape = "vocab"; }],
  ["llama3.json", "shape expression of the wrong form", (m) => { m.tensors[0]!.shape = ["vocab - 1", "hidden"]; }],
  ["llama3.json", "rope without heads", (m) => { m.tensors.find((r) => r.rope)!.rope = {}; }],
  ["llama3.json", "unknown transform op", (m) => { m.tensors[0]!.transform = { op: "permute" }; }],
  ["llama3.json", "transform with extra fields", (m) => { m.tensors[0]!.transform = { op: "transpose", dim: 1 }; }],
  ["llama3.json", "a value op inside a list", (m) => { m.tensors[0]!.transform = [{ op: "transpose" }, { op: "mxfp4", scales: "x" }]; }],
  ["llama3.json", "two splits in one list", (m) => { m.tensors[0]!.transform = [{ op: "chunk", dim: 0, chunks: 2, index: 0 }, { op: "chunk", dim: 1, chunks: 2, index: 0 }]; }],
  ["llama3.json", "two transposes in one list", (m) => { m.tensors[0]!.transform = [{ op: "transpose" }, { op: "transpose" }]; }],
  ["llama3.json", "an empty transform list", (m) => { m.tensors[0]!.transform = []; }],
  ["llama3.json", "split with one size", (m) => { m.tensors[0]!.transform = { op: "split", dim: 0, sizes: ["vocab"], index: 0 }; }],
  ["llama3.json", "chunk into one part", (m) => { m.tensors[0]!.transform = { op: "chunk", dim: 0, chunks: 1, index: 0 }; }],
  ["llama3.json", "a dropped rule without hf", (m) => { m.tensors.push({ drop: true }); }],
  ["llama3.json", "synth without zeros", (m) => { m.tensors.push({ tt: "x", synth: { dtype: "F32", with: "norm.weight" } }); }],
  ["llama3.json", "synth omitting an unknown group", (m) => { m.tensors.push({ tt: "x", synth: { zeros: ["hidden"], dtype: "F32", with: "norm.weight", omit_option: "no-expert-bias" } }); }],
  ["llama3.json", "tied without from", (m) => { m.tied = { flag: "tie_word_embeddings", hf: "lm_head.weight" }; }],
  ["llama3.json", "tied with an extra field", (m) => { m.tied = { ...(m.tied as object), to: "x" }; }],
  ["llama3.json", "dequant with a zero block", (m) => { m.dequant = { scale_suffix: "_scale_inv", block: 0 }; }],
  ["llama3.json", "one layout only", (m) => { m.layouts = ["hf"]; }],
  ["llama3.json", "requires with an unknown field", (m) => { (m.requires as Record<string, unknown>[])[0]!.level = "warn"; }],
  ["llama3.json", "requires with a bad severity", (m) => { (m.requires as Record<string, unknown>[])[0]!.severity = "error"; }],
  ["llama3.json", "linears without modules", (m) => { m.linears = { description: "x" }; }],
  ["llama3.json", "linears with an unknown field", (m) => { m.linears = { ...(m.linears as object), module: "x" }; }],
  ["llama3.json", "a fused Linear of one part", (m) => { m.linears = { modules: [], fused: [{ module: "x", groups: "n_kv_heads", parts: ["a"] }] }; }],
  ["llama3.json", "prefixes without to", (m) => { m.prefixes = [{ from: "a." }]; }],
  ["qwen3_5.json", "a tower option that is no opt-in", (m) => { (m.towers as Record<string, unknown>[])[0]!.option = "--text-only"; }],
  ["qwen3_5.json", "a converted tower without an option", (m) => { delete (m.towers as Record<string, unknown>[])[0]!.option; }],
  ["qwen3_5.json", "a tower with an unknown field", (m) => { (m.towers as Record<string, unknown>[])[1]!.skip = true; }],
  ["qwen3_5.json", "hf_output without tower", (m) => { delete (m.hf_output as Record<string, unknown>).tower; }],
  ["qwen3_5.json", "hf_output with the old text_only table", (m) => { (m.hf_output as Record<string, unknown>).text_only = {}; }],
  ["qwen3_5.json", "hf_output without nested_config", (m) => { delete m.nested_config; }],
  ["qwen3_5.json", "an hf_config rewrite without why", (m) => { delete (m.hf_config as Record<string, unknown>[])[0]!.why; }],
  ["qwen3_5.json", "an hf_config rewrite that rewrites nothing", (m) => { m.hf_config = [...(m.hf_config as object[]), { why: "x", text_only: true }]; }],
  ["qwen3_5.json", "an hf_config rewrite with an unknown field", (m) => { (m.hf_config as Record<string, unknown>[])[0]!.rename = {}; }],
  ["qwen3_5.json", "an hf_config flatten without field", (m) => { (m.hf_config as Record<string, unknown>[])[0]!.flatten = { inherit: ["dtype"] }; }],
  ["qwen3_5.json", "an hf_config tensors condition that is neither", (m) => { (m.hf_config as Record<string, unknown>[])[0]!.tensors = "packed"; }],
  ["deepseek_v3.json", "extra_layers option other than mtp", (m) => { (m.extra_layers as Record<string, unknown>).option = "--mtp"; }],
  ["deepseek_v3.json", "extra_layers with an unknown field", (m) => { (m.extra_layers as Record<string, unknown>).prefix = "mtp"; }],
  ["kimi_k2.json", "an extending file without match", (m) => { delete m.match; }],
  ["kimi_k2.json", "an extending file's rule edit without hf", (m) => { m.tensors = [{ tt: { "torchtitan@main": "x" } }]; }],
  ["kimi_k2.json", "a removal with other fields", (m) => { m.tensors = [{ hf: "lm_head.weight", remove: true, tp: "shard0" }]; }],
];

test("broken mappings are refused by both the JSON Schema and validateMapping", () => {
  const wrong: string[] = [];
  for (const [file, what, edit] of BROKEN) {
    const m = structuredClone(read(file)) as Parameters<Edit>[0];
    edit(m);
    const v = verdicts(m);
    if (v.schema) wrong.push(`${file}: ${what}: the JSON Schema accepts it`);
    if (v.code === undefined) wrong.push(`${file}: ${what}: validateMapping accepts it`);
  }
  assert.deepEqual(wrong, []);
  // and the unbroken files pass both (the edits above are what breaks them)
  for (const f of mappingFiles) assert.deepEqual(verdicts(read(f)), { schema: true, code: undefined }, f);
});

test("what only code can check is refused by validateMapping with the file and the rule's path", () => {
  const cases: [Edit, RegExp][] = [
    [(m) => { m.tensors[0]!.shape = ["vocab", "hiden"]; }, /^\$\.tensors\[0\]\.shape\[1\]: 'hiden' names 'hiden', which is not in \$\.dims/],
    [(m) => { m.tensors[0]!.shape = ["vocab * 2 + extra", "hidden"]; }, /\$\.tensors\[0\]\.shape\[0\]: 'vocab \* 2 \+ extra' names 'extra'/],
    [(m) => { m.tensors.push({ tt: "x", synth: { zeros: ["hiddn"], dtype: "F32", with: "norm.weight" } }); }, /synth\.zeros\[0\]: 'hiddn' names 'hiddn'/],
    [(m) => { m.tensors.find((r) => r.rope)!.rope = { heads: "heads" }; }, /rope\.heads: unknown dims name 'heads'/],
    [(m) => { m.tensors[0]!.experts = "n_experts"; }, /experts: must name a dims entry/],
  ];
  for (const [edit, want] of cases) {
    const m = structuredClone(read("llama3.json")) as Parameters<Edit>[0];
    edit(m);
    assert.ok(schemaValid(m), ajv.errorsText(schemaValid.errors));
    assert.throws(() => validateMapping(m, "x.json"), (e: unknown) => e instanceof CkptError && e.code === "MAPPING" && e.file === "x.json" && want.test(e.message), String(want));
  }
});

test("the loader runs the shape check: a bad expression stops a conversion with one line naming the file and rule", () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-maps-"));
  try {
    cpSync(DIR, dir, { recursive: true });
    writeTinyQwen3(join(dir, "hf"));
    const m = read("qwen3.json") as { tensors: { shape?: string[] }[] };
    m.tensors[0]!.shape = ["vocab", "hidden_size"];
    writeFileSync(join(dir, "qwen3.json"), JSON.stringify(m));
    const r = spawnSync(process.execPath, ["bin/ckpt.js", "convert", join(dir, "hf"), join(dir, "out"), "--dry-run"], { encoding: "utf8", env: { ...process.env, CKPT_MAPPINGS_DIR: dir } });
    assert.notEqual(r.status, 0);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, /^ckpt: MAPPING: .*qwen3\.json: \$\.tensors\[0\]\.shape\[1\]: 'hidden_size' names 'hidden_size', which is not in \$\.dims/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("extends: kimi_k2.json is deepseek_v3.json plus its differences, at every rule", () => {
  const kimi = mappingByName("kimi_k2"), ds = mappingByName("deepseek_v3");
  const own = read("kimi_k2.json");
  assert.equal(own.extends, "deepseek_v3");
  assert.equal(own.tensors, undefined, "kimi_k2 edits no rule of deepseek_v3");
  assert.deepEqual(kimi.tensors, ds.tensors);
  assert.deepEqual([kimi.dims, kimi.tied, kimi.dequant, kimi.requires], [ds.dims, ds.tied, ds.dequant, ds.requires]);
  // its own: match, the wrapper's prefixes / towers / nested config, MTP at main only, its Linears, its config rewrites
  assert.deepEqual(kimi.targets, ["torchtitan@main"]);
  assert.equal(kimi.nested_config, "text_config");
  assert.notDeepEqual(kimi.match, ds.match);
  // its config rewrites unwrap K2.5's nested config, then deepseek_v3's (model_type kimi_k2 → deepseek_v3) apply
  assert.deepEqual(kimi.hf_config?.slice(2), ds.hf_config);
  assert.equal(kimi.hf_config?.length, (own.hf_config as unknown[]).length + ds.hf_config!.length);
  assert.equal(kimi.linears?.torchtitan_module, "kimi_k2_7");
});

test("extends: rules are replaced in place by hf, removed, or appended; what is never inherited; cycles and unknown bases refused", () => {
  const base = {
    architecture: "base", description: "the base", match: { model_type: ["b"] }, dims: { hidden: ["hidden_size"], vocab: ["vocab_size"] }, targets: ["torchtitan@main"], fixture: { name: "base" },
    tensors: [
      { hf: "a.weight", tt: "a", shape: ["hidden"] },
      { hf: "fused.weight", tt: "q", transform: { op: "chunk", dim: 0, chunks: 2, index: 0 } },
      { hf: "fused.weight", tt: "k", transform: { op: "chunk", dim: 0, chunks: 2, index: 1 } },
      { hf: "b.weight", tt: "b" },
      { tt: "bias", synth: { zeros: ["hidden"], dtype: "F32", with: "a" } },
    ],
  };
  const child = {
    architecture: "child", extends: "base", match: { model_type: ["c"] }, dims: { vocab: ["text_config.vocab_size"], experts: ["n_experts"] }, targets: null,
    tensors: [{ hf: "fused.weight", tt: "qk" }, { hf: "b.weight", remove: true }, { hf: "c.weight", tt: "c" }, { tt: "bias", synth: { zeros: ["vocab"], dtype: "F32", with: "a" } }],
  };
  const [, c] = resolveExtends([{ path: "base.json", raw: base }, { path: "child.json", raw: child }]).map((x) => x.raw as Record<string, unknown>);
  assert.deepEqual(c!.tensors, [
    { hf: "a.weight", tt: "a", shape: ["hidden"] }, { hf: "fused.weight", tt: "qk" }, { tt: "bias", synth: { zeros: ["vocab"], dtype: "F32", with: "a" } }, { hf: "c.weight", tt: "c" },
  ]);
  assert.deepEqual(c!.dims, { hidden: ["hidden_size"], vocab: ["text_config.vocab_size"], experts: ["n_experts"] });
  assert.equal(c!.targets, undefined, "null removes an inherited field");
  assert.equal(c!.fixture, undefined, "fixture is never inherited");
  const own = resolveExtends([{ path: "base.json", raw: base }, { path: "child.json", raw: { ...child, fixture: { name: "child" } } }])[1]!.raw as Record<string, unknown>;
  assert.deepEqual(own.fixture, { name: "child" }, "a file's own fixture is its own");
  assert.equal(c!.description, undefined, "description is never inherited");
  assert.deepEqual(c!.match, { model_type: ["c"] });
  assert.equal(c!.extends, undefined);
  const refused = (raws: { path: string; raw: unknown }[], re: RegExp) => assert.throws(() => resolveExtends(raws), (e: unknown) => e instanceof CkptError && e.code === "MAPPING" && re.test(e.message), String(re));
  refused([{ path: "c.json", raw: { ...child, extends: "nothing" } }], /\$\.extends: no mapping named 'nothing'/);
  refused([{ path: "a.json", raw: { architecture: "a", extends: "b" } }, { path: "b.json", raw: { architecture: "b", extends: "a" } }], /\$\.extends: cycle a → b → a/);
  refused([{ path: "base.json", raw: base }, { path: "c.json", raw: { ...child, tensors: [{ hf: "zz.weight", remove: true }] } }], /removes zz\.weight, which the base mapping has no rule for/);
});
