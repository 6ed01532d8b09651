// The five lying inputs, edited by PyTorch + safetensors the way a user would (load_file, change a tensor,
// save_file): an FP8 weight without its weight_scale_inv, an FP8 block scale set to NaN, a compressed-tensors INT4
// weight_shape 32 columns wider than weight_packed, an MXFP4 scale byte 0xFF, and a PEFT adapter with lora_A/lora_B
// for layers the base model lacks. Each is refused by the CLI with one line of an input code, a non-zero exit, and no
// <out> or <out>.partial. Control: the same files before the edit convert.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { writeTinyDeepSeek } from "../../src/fixtures/tiny-deepseek.js";
import { writeTinyGptOss } from "../../src/fixtures/tiny-gpt-oss.js";
import { writeTinyKimi } from "../../src/fixtures/tiny-kimi.js";
import { writeTinyLlama } from "../../src/fixtures/tiny-llama.js";
import { tinyPeftAdapter, writePeftAdapter } from "../../src/fixtures/tiny-lora.js";
import { availableSuites } from "./torch.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");

// argv: kind folder. Edits, with torch, the safetensors file of the folder holding the tensor the edit is about,
// keeping its __metadata__ (and the index, which still names every other tensor's file).
const PY_EDIT = `
import sys, os, glob, torch
from safetensors import safe_open
from safetensors.torch import save_file
kind, folder = sys.argv[1], sys.argv[2]
key = {"fp8-missing-scale": "model.layers.1.self_attn.q_a_proj.weight_scale_inv", "fp8-nan-scale": "model.layers.1.self_attn.q_a_proj.weight_scale_inv",
       "int4-wide-shape": "model.layers.1.mlp.experts.0.down_proj.weight_shape", "mxfp4-nan-scale": "model.layers.1.mlp.experts.down_proj_scales",
       "peft-extra-layers": "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"}[kind]
for path in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
    with safe_open(path, "pt") as f:
        if key in f.keys():
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}
            break
else:
    raise SystemExit("no file holds " + key)
if kind == "fp8-missing-scale":
    del t["model.layers.1.self_attn.q_a_proj.weight_scale_inv"]
elif kind == "fp8-nan-scale":
    s = t["model.layers.1.self_attn.q_a_proj.weight_scale_inv"].clone(); s[0, 1] = float("nan")
    t["model.layers.1.self_attn.q_a_proj.weight_scale_inv"] = s
elif kind == "int4-wide-shape":
    n = "model.layers.1.mlp.experts.0.down_proj.weight_shape"
    t[n] = t[n] + torch.tensor([0, 32], dtype=t[n].dtype)
elif kind == "mxfp4-nan-scale":
    n = "model.layers.1.mlp.experts.down_proj_scales"
    s = t[n].clone(); s.view(-1)[3] = 0xFF; t[n] = s
elif kind == "peft-extra-layers":
    g = torch.Generator().manual_seed(0)
    for L in (2, 3):
        for m in ("q_proj", "v_proj"):
            a = t[f"base_model.model.model.layers.0.self_attn.{m}.lora_A.weight"]
            b = t[f"base_model.model.model.layers.0.self_attn.{m}.lora_B.weight"]
            t[f"base_model.model.model.layers.{L}.self_attn.{m}.lora_A.weight"] = torch.randn(a.shape, generator=g).to(a.dtype)
            t[f"base_model.model.model.layers.{L}.self_attn.{m}.lora_B.weight"] = torch.randn(b.shape, generator=g).to(b.dtype)
else:
    raise SystemExit("unknown edit " + kind)
if kind == "fp8-missing-scale" and os.path.exists(os.path.join(folder, "model.safetensors.index.json")):
    import json
    ip = os.path.join(folder, "model.safetensors.index.json")
    idx = json.load(open(ip)); del idx["weight_map"][key]; json.dump(idx, open(ip, "w"))
save_file(t, path, metadata=meta)
print("ok")
`;

interface Input { kind: string; make: (dir: string) => { /** folder the edit applies to */ file: string; args: (out: string) => string[] }; code: string; message: RegExp }

const LLAMA = { vocab: 64, hidden: 32, heads: 4, kvHeads: 2, headDim: 8, ffn: 48, layers: 2, dtype: "F32" as const };

const INPUTS: Input[] = [
  { kind: "fp8-missing-scale", code: "MISSING_TENSOR", message: /FP8 weight without its block scale model\.layers\.1\.self_attn\.q_a_proj\.weight_scale_inv/,
    make: (d) => { writeTinyDeepSeek(join(d, "hf"), { mtp: 0 }); return { file: join(d, "hf"), args: (o) => ["convert", join(d, "hf"), o] }; } },
  { kind: "fp8-nan-scale", code: "VALUE", message: /tensor 'model\.layers\.1\.self_attn\.q_a_proj\.weight_scale_inv': FP8 block scale \[0, 1\] of .* is NaN/,
    make: (d) => { writeTinyDeepSeek(join(d, "hf"), { mtp: 0 }); return { file: join(d, "hf"), args: (o) => ["convert", join(d, "hf"), o] }; } },
  { kind: "int4-wide-shape", code: "VALUE", message: /weight_shape is \[224,128\], .* \(32 columns wider than the packed data\)/,
    make: (d) => { writeTinyKimi(join(d, "hf"), { layout: "k2" }); return { file: join(d, "hf"), args: (o) => ["convert", join(d, "hf"), o] }; } },
  { kind: "mxfp4-nan-scale", code: "VALUE", message: /tensor 'model\.layers\.1\.mlp\.experts\.down_proj_scales': MXFP4 value is not finite: scale 0xFF is the E8M0 NaN/,
    make: (d) => { writeTinyGptOss(join(d, "hf"), { layout: "mxfp4" }); return { file: join(d, "hf"), args: (o) => ["convert", join(d, "hf"), o] }; } },
  { kind: "peft-extra-layers", code: "MISSING_TENSOR", message: /LoRA module model\.layers\.2\.self_attn\.(q|v)_proj adapts layer 2, but the base model has 2 layers/,
    make: (d) => {
      const base = writeTinyLlama(join(d, "base"), LLAMA);
      writePeftAdapter(join(d, "peft"), tinyPeftAdapter(base.tensors, { targets: ["q_proj", "v_proj"] }));
      return { file: join(d, "peft"), args: (o) => ["lora", "convert", join(d, "peft"), o, "--base", join(d, "base")] };
    } },
];

const env = availableSuites()[0];
test("the issue's five inputs, edited by torch, are refused with one line and nothing written", { skip: env ? false : "no PyTorch root (test/interop/setup-torch-root.sh)", timeout: 600_000 }, async () => {
  const t = env!.tmpdir();
  try {
    for (const input of INPUTS) {
      const dir = join(t.host, input.kind);
      const made = input.make(dir);
      mkdirSync(join(dir, "out"));
      // control: the file before the edit converts
      const control = spawnSync(process.execPath, [CLI, ...made.args(join(dir, "control")), "--quiet"], { encoding: "utf8" });
      assert.equal(control.status, 0, `${input.kind} control: ${control.stderr}`);
      assert.equal(await env!.python(PY_EDIT, [input.kind, made.file.slice(env!.root.length)]), "ok\n");
      const out = join(dir, "out", "x");
      const r = spawnSync(process.execPath, [CLI, ...made.args(out), "--quiet"], { encoding: "utf8" });
      assert.notEqual(r.status, 0, `${input.kind}: converted (stderr: ${r.stderr})`);
      const lines = r.stderr.split("\n").filter((l) => l.length > 0);
      assert.equal(lines.length, 1, `${input.kind}: one line: ${r.stderr}`);
      assert.match(lines[0]!, new RegExp(`^ckpt: ${input.code}: `), input.kind);
      assert.match(lines[0]!, input.message, input.kind);
      assert.ok(!existsSync(out) && !existsSync(out + ".partial"), `${input.kind}: no <out>, no <out>.partial`);
      assert.deepEqual(readdirSync(join(dir, "out")), []);
    }
  } finally {
    t.cleanup();
  }
});
