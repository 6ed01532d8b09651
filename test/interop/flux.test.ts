// FLUX.1 (diffusers FluxTransformer2DModel → TorchTitan FluxModel): diffusers makes the fixture (a pipeline repo,
// save_pretrained into transformer/) and is the reference; TorchTitan's FluxModel built from its Config with the
// fixture's dims, NaN-filled and loaded from ckpt's DCP output as its checkpointer loads, must compute diffusers'
// output on the same latents / text embeddings / pooled vector / timesteps / positions (relative max |Δ| ≤ 1e-5, f32).
// The same for BFL's single-file layout (assembled with torch, checked against diffusers' own converter), from the
// repo root and from transformer/ (byte-identical outputs), sharded for 4 ranks, and back with --to hf in both
// layouts byte for byte. Controls that must fail: q and k swapped inside img_attn.qkv, norm_out's shift/scale not
// swapped, proj_mlp rows first in linear1. FLUX.1-dev's guidance embedder: refused (nothing written), and with
// --drop guidance_embedder converted, recorded in the manifest, equal to diffusers with that embedder's output zeroed
// and not to the full model.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { ckpt, inJudgeWorkspace, safetensorsOf, wrongMappings } from "./judge-harness.js";
import { availableSuites, hasJudgeKit, JUDGE_ENV, torchRequired, type TorchEnv } from "./torch.js";

const suites = availableSuites(["sid"]).filter((e) => hasJudgeKit(e) || torchRequired());
if (suites.length === 0) {
  test("FLUX.1: TorchTitan FluxModel from ckpt's output computes diffusers' output", { skip: "no sid root with the judge kit (test/interop/setup-torch-root.sh sid)" }, () => {});
}

interface FluxResult { name: string; ok: boolean; rel_max_abs?: number; rel_vs_full_guidance?: number; load?: unknown }

const CLI = join(process.cwd(), "bin", "ckpt.js");

/** Runs flux_judge.py commands in one process (torch and diffusers import once): one parsed JSON line each. */
async function judge(env: TorchEnv, py: string, ...cmds: string[][]): Promise<unknown[]> {
  const out = await env.pythonFile(`${py}/flux_judge.py`, cmds.flatMap((c, i) => (i ? ["--", ...c] : c)), { timeoutMs: 300_000, env: JUDGE_ENV });
  const lines = out.trim().split("\n").filter((l) => /^[[{]/.test(l));
  assert.equal(lines.length, cmds.length, out);
  return lines.map((l) => JSON.parse(l) as unknown);
}

/** Every file of a DCP folder but the manifest (which names its source), as bytes. */
function dcpBytes(dir: string): Map<string, Buffer> {
  return new Map(readdirSync(dir).filter((f) => f.endsWith(".distcp") || f === ".metadata").map((f) => [f, readFileSync(join(dir, f))]));
}

/** A wrong copy of flux.json: the diffusers-layout rule `hf` gets transform `t` (or none). */
function retransform(dir: string, edits: Record<string, Record<string, unknown> | undefined>): string {
  return wrongMappings(dir, "flux", (r) => {
    if (r.layout !== "diffusers" || typeof r.hf !== "string" || !(r.hf in edits)) return;
    const t = edits[r.hf];
    if (t) r.transform = t; else delete r.transform;
  });
}

for (const env of suites) {
  test(`[${env.suite}] FLUX.1: TorchTitan FluxModel loaded from ckpt's output = diffusers FluxTransformer2DModel; controls fail; --to hf byte-identical; guidance embedder refused / --drop`, { timeout: 900_000 }, async () => {
    await inJudgeWorkspace(env, async ({ h, g, py }) => {
      // schnell-like (no guidance embedder), FLUX.1-dev-like (with it), and the schnell weights in BFL's layout
      mkdirSync(h("bflsrc"));
      const [schnell, dev0, made] = (await judge(env, py, ["make", g("repo"), "0"], ["make", g("dev"), "1"], ["bfl", g("repo"), g("bflsrc/flux1-dev.safetensors")])) as [unknown, unknown, { diffusers_converter_roundtrip: boolean }];
      console.log(`# make: ${JSON.stringify(schnell)} ${JSON.stringify(dev0)}`);
      console.log(`# bfl: ${JSON.stringify(made)}`);
      assert.ok(made.diffusers_converter_roundtrip, "diffusers' own converter maps the BFL file back to the fixture");
      ckpt(["convert", h("repo"), h("root")]);
      ckpt(["convert", h("repo/transformer"), h("sub")]);
      const a = dcpBytes(h("root")), b = dcpBytes(h("sub"));
      assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort());
      for (const [f, v] of a) assert.ok(v.equals(b.get(f)!), `repo root vs transformer/: ${f} differs`);
      ckpt(["shard", h("repo"), h("w4"), "--world-size", "4"]);
      ckpt(["convert", h("bflsrc/flux1-dev.safetensors"), h("bfl"), "--config", h("repo")]);
      const P = "single_transformer_blocks.{L}.";
      const D = "transformer_blocks.{L}.attn.";
      const controls: [string, Record<string, Record<string, unknown> | undefined>][] = [
        ["q-k-swapped-in-img-qkv", { [`${D}to_q.weight`]: { op: "concat", dim: 0, index: 1 }, [`${D}to_q.bias`]: { op: "concat", dim: 0, index: 1 }, [`${D}to_k.weight`]: { op: "concat", dim: 0, index: 0 }, [`${D}to_k.bias`]: { op: "concat", dim: 0, index: 0 } }],
        ["norm-out-not-swapped", { "norm_out.linear.weight": undefined, "norm_out.linear.bias": undefined }],
        ["proj-mlp-first-in-linear1", Object.fromEntries(["weight", "bias"].flatMap((wb) => [[`${P}proj_mlp.${wb}`, 0], [`${P}attn.to_q.${wb}`, 1], [`${P}attn.to_k.${wb}`, 2], [`${P}attn.to_v.${wb}`, 3]].map(([n, i]) => [n as string, { op: "concat", dim: 0, index: i }])))],
      ];
      for (const [name, edits] of controls) ckpt(["convert", h("repo"), h(name)], { CKPT_MAPPINGS_DIR: retransform(h(`maps-${name}`), edits) });

      // FLUX.1-dev-like: the guidance embedder is refused, nothing written; converted with --drop and recorded
      const refused = spawnSync(process.execPath, [CLI, "convert", h("dev"), h("dev.tt")], { encoding: "utf8" });
      assert.notEqual(refused.status, 0);
      const line = refused.stderr.trim();
      console.log(`# refused: ${line}`);
      assert.equal(line.split("\n").length, 1, "one line");
      assert.match(line, /time_text_embed\.guidance_embedder\.linear_1\.weight/);
      assert.match(line, /guidance_embed field/);
      assert.match(line, /--drop guidance_embedder/);
      assert.ok(!existsSync(h("dev.tt")) && !existsSync(h("dev.tt.partial")), "nothing written");
      ckpt(["convert", h("dev"), h("dev.tt"), "--drop", "guidance_embedder"]);
      const manifest = JSON.parse(readFileSync(h("dev.tt/ckpt-manifest.json"), "utf8")) as { options: { drop?: string[] }; dropped?: { name: string }[] };
      assert.deepEqual(manifest.options.drop, ["guidance_embedder"]);
      assert.deepEqual(manifest.dropped?.map((d) => d.name).sort(), ["linear_1.bias", "linear_1.weight", "linear_2.bias", "linear_2.weight"].map((n) => `time_text_embed.guidance_embedder.${n}`));

      const cases = [
        { name: "convert", ckpt: g("root") }, { name: "shard-w4", ckpt: g("w4") }, { name: "bfl-single-file", ckpt: g("bfl") },
        ...controls.map(([name]) => ({ name, ckpt: g(name), control: true })),
      ];
      writeFileSync(h("cases.json"), JSON.stringify(cases));
      writeFileSync(h("dev-cases.json"), JSON.stringify([{ name: "dev --drop guidance_embedder", ckpt: g("dev.tt"), zero_guidance: true }]));
      // back to both HF layouts (checked byte for byte below), then every forward and the diffusers load in one run
      ckpt(["convert", h("w4"), h("back"), "--to", "hf", "--config", h("repo")]);
      ckpt(["convert", h("w4"), h("back-bfl"), "--to", "hf", "--hf-layout", "bfl", "--config", h("repo")]);
      const [main, devRes, loaded] = (await judge(env, py, ["check", g("repo"), g("cases.json")], ["check", g("dev"), g("dev-cases.json")], ["load", g("repo"), g("back")])) as [FluxResult[], FluxResult[], { ok: boolean }];
      const res = [...main, ...devRes];
      for (const r of res) console.log(`# ${r.name}: ${JSON.stringify(r)}`);
      for (const c of cases) {
        const r = res.find((x) => x.name === c.name)!;
        if ("control" in c) assert.ok(!r.ok && r.rel_max_abs! > 1e-4, `control ${c.name} must fail: ${JSON.stringify(r)}`);
        else assert.ok(r.ok, `${c.name}: ${JSON.stringify(r)}`);
      }
      const dev = res.find((x) => x.name.startsWith("dev"))!;
      assert.ok(dev.ok, JSON.stringify(dev));
      assert.ok(dev.rel_vs_full_guidance! > 1e-3, `the dropped guidance embedder must matter: ${JSON.stringify(dev)}`);

      const src = safetensorsOf(h("repo/transformer")), back = safetensorsOf(h("back"));
      assert.deepEqual([...back.keys()].sort(), [...src.keys()].sort());
      for (const [k, v] of src) assert.ok(v.equals(back.get(k)!), `--to hf (diffusers): ${k} differs`);
      console.log(`# --to hf loads in diffusers: ${JSON.stringify(loaded)}`);
      assert.ok(loaded.ok, "FluxTransformer2DModel.from_pretrained(--to hf output) holds the fixture's tensors, nothing missing or unexpected");
      const bsrc = safetensorsOf(h("bflsrc")), bback = safetensorsOf(h("back-bfl"));
      assert.deepEqual([...bback.keys()].sort(), [...bsrc.keys()].sort());
      for (const [k, v] of bsrc) assert.ok(v.equals(bback.get(k)!), `--to hf (bfl): ${k} differs`);
      console.log(`# --to hf: ${back.size} diffusers tensors, ${bback.size} BFL tensors byte-identical`);
    });
  });
}
