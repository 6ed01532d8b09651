// PyTorch judges `ckpt convert`: torch.distributed.checkpoint loads our DCP and every byte equals the
// reference computed in PyTorch from the spec (test/interop/py/ref.py, independent of our code).
import test from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { availableSuites } from "./torch.js";
import { installPy } from "./py-files.js";
import { writeTinyLlama, type TinyLlamaOptions } from "../../src/fixtures/tiny-llama.js";
import { runConvert } from "../../src/commands/convert.js";
import { buildCatalog } from "../../src/catalog.js";
import { openLocal } from "../../src/sources/local.js";

const envs = availableSuites();

async function hfTensorBytes(dir: string): Promise<Map<string, Buffer>> {
  const src = await openLocal(dir);
  const cat = await buildCatalog(src);
  const out = new Map<string, Buffer>();
  for (const [name, t] of cat.tensors) {
    const p = t.pieces[0]!;
    out.set(name, readFileSync(join(dir, p.file)).subarray(p.byteOffset, p.byteOffset + p.byteLength));
  }
  await src.close();
  return out;
}

const cases: { name: string; model: TinyLlamaOptions; targets: ("torchtitan@main" | "torchtitan@0.2")[] }[] = [
  { name: "GQA, head_dim 16 ≠ hidden/heads, untied, 1 file", model: { hidden: 48, heads: 4, kvHeads: 2, headDim: 16, files: 1 }, targets: ["torchtitan@main"] },
  { name: "GQA, tied, 3 files", model: { hidden: 64, heads: 4, kvHeads: 2, headDim: 16, tied: true, files: 3, seed: 7 }, targets: ["torchtitan@main", "torchtitan@0.2"] },
  { name: "MHA hd=8, untied, 3 files", model: { hidden: 32, heads: 4, kvHeads: 4, headDim: 8, files: 3, seed: 9 }, targets: ["torchtitan@main", "torchtitan@0.2"] },
];

for (const env of envs) {
  test(`interop ${env.suite}: ckpt convert → dcp.load equals the PyTorch reference`, { timeout: 600_000 }, async (t) => {
    const tmp = env.tmpdir();
    try {
      const py = installPy(tmp.host, tmp.guest);
      for (const [i, c] of cases.entries()) {
        const hf = join(tmp.host, `hf${i}`);
        writeTinyLlama(hf, c.model);
        for (const target of c.targets) {
          await t.test(`${c.name} → ${target}`, async () => {
            const out = join(tmp.host, `tt${i}-${target.replace("@", "_")}`);
            await runConvert({ source: hf, out, target });
            const res = JSON.parse(await env.python(`import runpy,sys; sys.argv=['x', sys.argv[1]]; runpy.run_path('${py}/convert_check.py', run_name='__main__')`, [JSON.stringify({ hf: `${tmp.guest}/hf${i}`, dcp: `${tmp.guest}/tt${i}-${target.replace("@", "_")}`, target })]));
            assert.deepEqual(res.problems, [], `PyTorch ${res.torch} found differences`);
            assert.ok(res.tensors > 10);
          });
        }
      }
      await t.test("--files-per-rank 1 and 5 (default 2): PyTorch loads every layout the same", async () => {
        const hf = join(tmp.host, "hf-fpr");
        writeTinyLlama(hf, { seed: 5 });
        for (const filesPerRank of [1, 5]) {
          const out = join(tmp.host, `fpr${filesPerRank}`);
          await runConvert({ source: hf, out, filesPerRank });
          const distcp = readdirSync(out).filter((f) => f.endsWith(".distcp")).sort();
          assert.deepEqual(distcp, [...Array(filesPerRank).keys()].map((k) => `__0_${k}.distcp`));
          const res = JSON.parse(await env.python(`import runpy,sys; sys.argv=['x', sys.argv[1]]; runpy.run_path('${py}/convert_check.py', run_name='__main__')`, [JSON.stringify({ hf: `${tmp.guest}/hf-fpr`, dcp: `${tmp.guest}/fpr${filesPerRank}`, target: "torchtitan@main" })]));
          assert.deepEqual(res.problems, [], `PyTorch ${res.torch}, ${filesPerRank} file(s): differences`);
        }
      });
      await t.test("--dtype f32 equals .float(); --dtype bf16 from f32 equals .to(bfloat16)", async () => {
        const hf = join(tmp.host, "hf-bf16");
        writeTinyLlama(hf, { seed: 11 });
        await runConvert({ source: hf, out: join(tmp.host, "f32"), dtype: "f32" });
        let res = JSON.parse(await env.python(`import runpy,sys; sys.argv=['x', sys.argv[1]]; runpy.run_path('${py}/convert_check.py', run_name='__main__')`, [JSON.stringify({ hf: `${tmp.guest}/hf-bf16`, dcp: `${tmp.guest}/f32`, target: "torchtitan@main", cast: "float32" })]));
        assert.deepEqual(res.problems, []);
        const hf32 = join(tmp.host, "hf-f32");
        writeTinyLlama(hf32, { seed: 12, dtype: "F32" });
        await runConvert({ source: hf32, out: join(tmp.host, "bf16"), dtype: "bf16" });
        res = JSON.parse(await env.python(`import runpy,sys; sys.argv=['x', sys.argv[1]]; runpy.run_path('${py}/convert_check.py', run_name='__main__')`, [JSON.stringify({ hf: `${tmp.guest}/hf-f32`, dcp: `${tmp.guest}/bf16`, target: "torchtitan@main", cast: "bfloat16" })]));
        assert.deepEqual(res.problems, []);
      });
      await t.test("a DCP written by PyTorch's dcp.save (full training checkpoint, model. prefix) exports to HF exactly", async () => {
        const hf = join(tmp.host, "hf-pt");
        writeTinyLlama(hf, { seed: 21, files: 2 });
        for (const [prefix, target] of [[false, "torchtitan@main"], [true, "torchtitan@0.2"]] as const) {
          const dir = `pt-${prefix}-${target.replace("@", "_")}`;
          await env.python(`import runpy,sys; sys.argv=['x', sys.argv[1]]; runpy.run_path('${py}/save_dcp.py', run_name='__main__')`, [JSON.stringify({ hf: `${tmp.guest}/hf-pt`, out: `${tmp.guest}/${dir}`, target, prefix })]);
          const back = join(tmp.host, `${dir}-hf`);
          await runConvert({ source: join(tmp.host, dir), out: back, to: "hf", config: hf });
          const a = await hfTensorBytes(hf);
          const b = await hfTensorBytes(back);
          assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
          for (const [k, v] of a) assert.ok(v.equals(b.get(k)!), `${k} differs after PyTorch DCP → HF`);
        }
      });
    } finally {
      tmp.cleanup();
    }
  });
}

test("HF → TorchTitan → HF round trip is byte-identical per tensor (tied and untied, DCP and safetensors)", async () => {
  const { mkdtempSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const base = mkdtempSync(join(tmpdir(), "ckpt-rt-"));
  try {
    for (const [i, model] of [{ tied: false, files: 3 }, { tied: true, files: 1, headDim: 8, hidden: 32 }].entries()) {
      const hf = join(base, `hf${i}`);
      writeTinyLlama(hf, { ...model, seed: 30 + i });
      for (const format of ["dcp", "safetensors"] as const) {
        const tt = join(base, `tt${i}-${format}`);
        await runConvert({ source: hf, out: tt, format });
        const back = join(base, `back${i}-${format}`);
        await runConvert({ source: tt, out: back, to: "hf", config: hf });
        const a = await hfTensorBytes(hf);
        const b = await hfTensorBytes(back);
        assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
        for (const [k, v] of a) assert.ok(v.equals(b.get(k)!), `${k} (${format}) differs after the round trip`);
      }
    }
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
});
