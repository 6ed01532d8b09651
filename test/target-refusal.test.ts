// A checkpoint is only useful if the target can build a model for it. Config fields a TorchTitan version has no way
// to honour are refused at plan time, as data (mappings/*.json `requires`): through the built CLI, each refusal
// exits non-zero with exactly one stderr line naming the target tensor and the config field, and leaves neither
// <out> nor <out>.partial behind. Controls show the same fixtures convert where the target can express them.
import { after, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { tinyLlamaTensors, writeTinyLlama, type TinyLlamaOptions } from "../src/fixtures/tiny-llama.js";
import { writeTinyQwen3, type TinyQwen3Options } from "../src/fixtures/tiny-qwen3.js";
import { writeTinyDeepSeek } from "../src/fixtures/tiny-deepseek.js";
import { CkptError } from "../src/errors.js";
import { loadMappings, mappingByName } from "../src/mapping/load.js";
import { planConversion, type CatalogLike } from "../src/plan/convert-plan.js";
import { validateMapping } from "../src/mapping/schema.js";
import { failedCheck, parseCheck } from "../src/mapping/requirements.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(ROOT, "bin", "ckpt.js");
const tmp = mkdtempSync(join(tmpdir(), "ckpt-refusal-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8", env: { ...process.env, CKPT_NATIVE: process.env.CKPT_NATIVE ?? "" } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

let n = 0;
/** A fixture folder with config.json fields overridden (`undefined` deletes one). */
function fixture(kind: "llama" | "qwen3" | "deepseek", config: Record<string, unknown> = {}, opts: TinyLlamaOptions & TinyQwen3Options = {}): string {
  const dir = join(tmp, `${kind}-${n++}`);
  if (kind === "llama") writeTinyLlama(dir, opts);
  else if (kind === "qwen3") writeTinyQwen3(dir, opts);
  else writeTinyDeepSeek(dir, { layers: 2, experts: 4, mtp: 0, fp8: false });
  const path = join(dir, "config.json");
  const cfg = { ...(JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>), ...config };
  for (const [k, v] of Object.entries(config)) if (v === undefined) delete cfg[k];
  writeFileSync(path, JSON.stringify(cfg, null, 2) + "\n");
  return dir;
}

/** Runs a refused conversion: non-zero exit, one stderr line naming tensor and field, nothing left on disk. */
function assertRefused(src: string, args: string[], tensor: string, field: string): string {
  const out = join(tmp, `out-${n++}`);
  const r = cli([args[0]!, src, out, ...args.slice(1)]);
  assert.equal(r.status, 1, `expected a refusal: ${r.stdout}${r.stderr}`);
  const lines = r.stderr.split("\n").filter((l) => l.length > 0);
  assert.equal(lines.length, 1, `exactly one stderr line, got:\n${r.stderr}`);
  const line = lines[0]!;
  assert.match(line, /^ckpt: UNSUPPORTED: /);
  assert.ok(line.includes(`tensor '${tensor}'`), `names tensor ${tensor}: ${line}`);
  assert.ok(line.includes(`config field ${field}`), `names config field ${field}: ${line}`);
  assert.equal(existsSync(out), false, "no output folder");
  assert.equal(existsSync(out + ".partial"), false, "no .partial folder");
  assert.equal(r.stdout, "");
  return line;
}

function assertConverts(src: string, args: string[]): { stderr: string } {
  const out = join(tmp, `out-${n++}`);
  const r = cli([args[0]!, src, out, ...args.slice(1), "--threads", "0"]);
  assert.equal(r.status, 0, r.stderr);
  if (!args.includes("--dry-run")) assert.ok(existsSync(join(out, ".metadata")) || existsSync(join(out, "model.safetensors")), "wrote the output");
  return { stderr: r.stderr.split("\n").filter((l) => l && !/native kernels unavailable/.test(l)).join("\n") };
}

describe("llama3", () => {
  // default tiny Llama: hidden 48, 4 heads, head_dim 16 (≠ 48 / 4 = 12)
  test("head_dim ≠ hidden / n_heads at torchtitan@0.2: refused for convert, shard, --dry-run and the short target name", () => {
    const src = fixture("llama");
    const line = assertRefused(src, ["convert", "--target", "torchtitan@0.2"], "layers.0.attention.wq.weight", "head_dim");
    assert.match(line, /config field head_dim: head_dim = 16 \(it needs head_dim == hidden \/\/ n_heads = 12\); TorchTitan 0\.2's llama3/);
    assert.match(line, /--target torchtitan@main/, "says what to do");
    assertRefused(src, ["convert", "--target", "0.2", "--dry-run"], "layers.0.attention.wq.weight", "head_dim");
    assertRefused(src, ["shard", "--world-size", "2", "--target", "torchtitan@0.2"], "layers.0.attention.wq.weight", "head_dim");
    assertRefused(src, ["convert", "--target", "torchtitan@0.2", "--format", "safetensors", "--allow-unmapped"], "layers.0.attention.wq.weight", "head_dim");
  });

  test("controls: the same model converts at torchtitan@main; an explicit head_dim = hidden / n_heads converts at 0.2", () => {
    assertConverts(fixture("llama"), ["convert"]);
    const even = fixture("llama", {}, { hidden: 64, headDim: 16, explicitHeadDim: true });
    assert.equal((JSON.parse(readFileSync(join(even, "config.json"), "utf8")) as { head_dim?: number }).head_dim, 16);
    assert.equal(assertConverts(even, ["convert", "--target", "torchtitan@0.2"]).stderr, "");
  });

  test("attention_bias / mlp_bias: refused at both targets (TorchTitan's llama3 linears have no bias)", () => {
    const att = fixture("llama", { attention_bias: true }, { hidden: 64 });
    assertRefused(att, ["convert"], "layers.0.attention.qkv_linear.wq.weight", "attention_bias");
    assertRefused(att, ["convert", "--target", "torchtitan@0.2"], "layers.0.attention.wq.weight", "attention_bias");
    const mlp = fixture("llama", { mlp_bias: true }, { hidden: 64 });
    assertRefused(mlp, ["convert"], "layers.0.feed_forward.w1.weight", "mlp_bias");
    assertConverts(fixture("llama", { attention_bias: false, mlp_bias: false }, { hidden: 64 }), ["convert", "--target", "torchtitan@0.2", "--dry-run"]);
  });

  test("hidden_act other than silu: refused", () => {
    assertRefused(fixture("llama", { hidden_act: "gelu" }), ["convert"], "layers.0.feed_forward.w1.weight", "hidden_act");
    assertConverts(fixture("llama", { hidden_act: "silu" }), ["convert", "--dry-run"]);
  });

  test("RoPE scalings TorchTitan does not implement: refused under every spelling of the config key", () => {
    const wq = "layers.0.attention.qkv_linear.wq.weight";
    assert.match(assertRefused(fixture("llama", { rope_scaling: { rope_type: "linear", factor: 2 } }), ["convert"], wq, "rope_scaling"), /rope_scaling\.rope_type = "linear"/);
    assert.match(assertRefused(fixture("llama", { rope_scaling: { type: "dynamic", factor: 2 } }), ["convert"], wq, "rope_scaling"), /rope_scaling\.type = "dynamic"/);
    assert.match(assertRefused(fixture("llama", { rope_parameters: { rope_type: "longrope", rope_theta: 500000 } }), ["convert"], wq, "rope_scaling"), /rope_parameters\.rope_type = "longrope"/);
    // Llama 3.1's own scaling, and transformers 5's explicit default, are what TorchTitan implements
    const llama31 = { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };
    assert.equal(assertConverts(fixture("llama", { rope_scaling: llama31 }), ["convert", "--dry-run"]).stderr, "");
    assert.equal(assertConverts(fixture("llama", { rope_parameters: { rope_type: "default", rope_theta: 500000 } }), ["convert", "--dry-run"]).stderr, "");
  });

  test("warnings, not refusals: YaRN (no attention factor in TorchTitan's GQA) and tied embeddings at 0.2", () => {
    const yarn = assertConverts(fixture("llama", { rope_scaling: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 8192 } }), ["convert", "--dry-run"]);
    assert.match(yarn.stderr, /^ckpt: warning: torchtitan@main llama3: config rope_scaling\.rope_type = "yarn".*attention factor/);
    const tied = assertConverts(fixture("llama", {}, { hidden: 64, tied: true }), ["convert", "--target", "torchtitan@0.2"]);
    assert.match(tied.stderr, /^ckpt: warning: torchtitan@0\.2 llama3: config tie_word_embeddings = true: .*cannot tie.*\(output\.weight\)$/);
    assert.equal(tied.stderr.split("\n").length, 1);
    assert.equal(assertConverts(fixture("llama", {}, { hidden: 64, tied: true }), ["convert"]).stderr, "", "main ties (enable_weight_tying): no warning");
  });
});

describe("qwen3 and deepseek_v3", () => {
  test("qwen3: attention_bias, sliding window, Llama 3 RoPE scaling and a non-SiLU MLP are refused at both targets", () => {
    for (const [target, wq] of [["torchtitan@main", "layers.0.attention.qkv_linear.wq.weight"], ["torchtitan@0.2", "layers.0.attention.wq.weight"]] as const) {
      assertRefused(fixture("qwen3", { attention_bias: true }, { experts: 0 }), ["convert", "--target", target], wq, "attention_bias");
      assertRefused(fixture("qwen3", { use_sliding_window: true, sliding_window: 4096 }, { experts: 0 }), ["convert", "--target", target], wq, "use_sliding_window");
      assertRefused(fixture("qwen3", { rope_scaling: { rope_type: "llama3", factor: 8 } }, { experts: 4 }), ["shard", "--world-size", "2", "--target", target], wq, "rope_scaling");
      assertRefused(fixture("qwen3", { hidden_act: "gelu" }, { experts: 0 }), ["convert", "--target", target], "layers.0.feed_forward.w1.weight", "hidden_act");
    }
  });

  test("qwen3 controls: the fixture's own config (attention_bias false, no sliding window) converts, MoE too", () => {
    assert.equal(assertConverts(fixture("qwen3", { use_sliding_window: false }, { experts: 0 }), ["convert", "--target", "torchtitan@0.2"]).stderr, "");
    assert.equal(assertConverts(fixture("qwen3", {}, { experts: 4 }), ["convert"]).stderr, "");
    const yarn = assertConverts(fixture("qwen3", { rope_scaling: { rope_type: "yarn", factor: 4, original_max_position_embeddings: 32768 } }, { experts: 0 }), ["convert", "--dry-run"]);
    assert.match(yarn.stderr, /warning: torchtitan@main qwen3: config rope_scaling\.rope_type = "yarn"/);
  });

  test("deepseek_v3: attention_bias refused naming wkv_a; its YaRN RoPE (type key) converts without a warning", () => {
    assertRefused(fixture("deepseek", { attention_bias: true }), ["convert"], "layers.0.attention.wkv_a.weight", "attention_bias");
    assertRefused(fixture("deepseek", { rope_scaling: { type: "linear", factor: 2 } }), ["convert", "--target", "torchtitan@0.2"], "layers.0.attention.wkv_a.weight", "rope_scaling");
    const v3 = { type: "yarn", factor: 40, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1, original_max_position_embeddings: 4096 };
    assert.equal(assertConverts(fixture("deepseek", { rope_scaling: v3, attention_bias: false }), ["convert", "--dry-run"]).stderr, "");
  });
});

describe("the requires data", () => {
  test("planConversion refuses by default; targetChecks \"warn\" (verify, comparing existing checkpoints) only warns", () => {
    const g = tinyLlamaTensors();
    const catalog = { tensors: new Map(g.tensors.map((t) => [t.name, { name: t.name, dtype: t.dtype, shape: t.shape, pieces: [{ file: "model.safetensors", byteOffset: 0, byteLength: t.data.length, offsets: t.shape.map(() => 0), sizes: t.shape }] }])) } as unknown as CatalogLike;
    const opts = { mapping: mappingByName("llama3"), config: g.config, direction: "hf_to_tt" as const, target: "torchtitan@0.2" as const };
    assert.throws(() => planConversion(catalog, opts), (e: unknown) => e instanceof CkptError && e.code === "UNSUPPORTED" && e.tensor === "layers.0.attention.wq.weight" && /config field head_dim/.test(e.message));
    const plan = planConversion(catalog, { ...opts, targetChecks: "warn" });
    assert.equal(plan.tensors.length, g.tensors.length);
    assert.deepEqual(plan.warnings.filter((w) => /head_dim/.test(w)).length, 1);
    assert.match(plan.warnings[0]!, /^torchtitan@0\.2 llama3: config head_dim = 16: TorchTitan 0\.2's llama3 has no head_dim setting.*\(layers\.0\.attention\.wq\.weight\)/);
  });

  test("parseCheck / failedCheck: comparisons over dims, falsy fields, allowed values with alternative paths", () => {
    const eq = parseCheck("head_dim == hidden // n_heads");
    assert.equal(failedCheck(eq, {}, { head_dim: 12, hidden: 48, n_heads: 4 }), undefined);
    assert.deepEqual(failedCheck(eq, {}, { head_dim: 16, hidden: 48, n_heads: 4 }), { found: "head_dim = 16", needs: "head_dim == hidden // n_heads = 12" });
    assert.equal(failedCheck(eq, {}, { head_dim: 16, n_heads: 4 }), undefined, "a dim the config lacks: nothing to check");
    assert.equal(failedCheck(parseCheck("a * 2 == b / 3"), {}, { a: 3, b: 18 }), undefined);
    assert.ok(failedCheck(parseCheck("a != b"), {}, { a: 3, b: 3 }));
    const bias = parseCheck("!attention_bias");
    for (const ok of [{}, { attention_bias: false }, { attention_bias: null }]) assert.equal(failedCheck(bias, ok, {}), undefined);
    assert.deepEqual(failedCheck(bias, { attention_bias: true }, {}), { found: "attention_bias = true", needs: "it absent or false" });
    const rope = parseCheck("rope_scaling.rope_type|rope_scaling.type in [default, llama3]");
    assert.equal(failedCheck(rope, { rope_scaling: null }, {}), undefined);
    assert.equal(failedCheck(rope, { rope_scaling: { rope_type: "llama3" } }, {}), undefined);
    assert.deepEqual(failedCheck(rope, { rope_scaling: { type: "linear" } }, {}), { found: 'rope_scaling.type = "linear"', needs: "one of default, llama3" });
    for (const bad of ["", "head_dim ==", "a in []", "a.b..c in [x]", "x + 1 == 2", "what"]) assert.throws(() => parseCheck(bad), bad);
  });

  test("every shipped mapping's requires validate; the schema rejects malformed entries naming the field", () => {
    for (const arch of ["llama3", "qwen3", "deepseek_v3"]) assert.ok((loadMappings().find((m) => m.architecture === arch)?.requires ?? []).length > 0, `${arch} states what its targets require`);
    const base = { architecture: "x", match: {}, dims: { hidden: ["hidden_size"], n_heads: ["num_attention_heads"] }, targets: ["torchtitan@main", "torchtitan@0.2"], tensors: [{ hf: "a.weight", tt: "b.weight" }] };
    const ok = { check: "!attention_bias", field: "attention_bias", tensor: "a.weight", why: "no bias" };
    validateMapping({ ...base, requires: [ok, { ...ok, targets: ["torchtitan@0.2"], severity: "warn", check: "hidden // n_heads == 2" }] }, "x.json");
    const bad: [unknown, RegExp][] = [
      [{}, /requires: must be a list/],
      [[{ ...ok, check: "hidden ~ 2" }], /requires\[0\]\.check: expected/],
      [[{ ...ok, check: "head_dim == hidden // n_heads" }], /requires\[0\]\.check: unknown dims name 'head_dim'/],
      [[{ ...ok, tensor: "nope.weight" }], /requires\[0\]\.tensor: must be the hf name of a tensors\[\] rule/],
      [[{ ...ok, targets: ["torchtitan@0.1"] }], /requires\[0\]\.targets/],
      [[{ ...ok, severity: "maybe" }], /requires\[0\]\.severity/],
      [[{ ...ok, why: "" }], /requires\[0\]\.why/],
      [[{ ...ok, extra: 1 }], /requires\[0\]\.extra: unknown field/],
    ];
    for (const [requires, re] of bad) {
      assert.throws(() => validateMapping({ ...base, requires }, "x.json"), (e: unknown) => e instanceof CkptError && e.code === "MAPPING" && re.test(e.message), String(re));
    }
    // omit_option must be a group the user can leave out
    assert.throws(() => validateMapping({ ...base, tensors: [{ hf: "a.weight", tt: "b.weight" }, { tt: "c", synth: { zeros: ["hidden"], dtype: "F32", with: "b.weight", omit_option: "no-such-thing" } }] }, "x.json"),
      (e: unknown) => e instanceof CkptError && /omit_option: must be one of the groups a user may leave out: expert_bias/.test(e.message));
  });
});
