// gpt-oss conversion without PyTorch (the interop suite judges it with transformers and TorchTitan): MXFP4 experts
// decoded to the spec's formula worked independently (E2M1[n] · 2^(s − 127) in f64, from the fixture's own bytes),
// HF bf16 experts transposed, a rank's box reading only its own experts' blocks and scales, and a NaN scale refused
// with a clear error and no output.
import test from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeTinyGptOss } from "../src/fixtures/tiny-gpt-oss.js";
import { runsForBox, runSourceRanges } from "../src/plan/runs.js";

const CLI = join(process.cwd(), "bin", "ckpt.js");
const E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

function readSafetensors(path: string): Map<string, { dtype: string; shape: number[]; data: Buffer }> {
  const buf = readFileSync(path);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, { dtype: string; shape: number[]; data: Buffer }>();
  for (const [k, v] of Object.entries(header)) if (k !== "__metadata__") out.set(k, { dtype: v.dtype, shape: v.shape, data: buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]) });
  return out;
}

function ckpt(args: string[]): { status: number | null; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args, "--quiet"], { encoding: "utf8", env: process.env });
}

const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
function bf16OfExact(v: number): number {
  f32[0] = v;
  assert.ok(Object.is(f32[0], v), `${v} not exact in f32`);
  assert.equal(u32[0]! & 0xffff, 0, `${v} not exact in bf16`);
  return u32[0]! >>> 16;
}

test("gpt-oss MXFP4 → TorchTitan: experts decoded as E2M1[n] · 2^(s − 127), gate/up rows kept interleaved, no transpose", () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-gptoss-"));
  try {
    writeTinyGptOss(join(dir, "hf"), { layout: "mxfp4", seed: 5 });
    const r = ckpt(["convert", join(dir, "hf"), join(dir, "tt"), "--format", "safetensors"]);
    assert.equal(r.status, 0, r.stderr);
    const hf = readSafetensors(join(dir, "hf", "model.safetensors"));
    const tt = readSafetensors(join(dir, "tt", "model.safetensors"));
    for (const [src, dst] of [["gate_up_proj", "mlp1_weight_EGD"], ["down_proj", "mlp2_weight_EDF"]] as const) {
      for (const L of [0, 1]) {
        const b = hf.get(`model.layers.${L}.mlp.experts.${src}_blocks`)!, s = hf.get(`model.layers.${L}.mlp.experts.${src}_scales`)!;
        const out = tt.get(`layers.${L}.moe.routed_experts.inner_experts.${dst}`)!;
        const [E, R, G] = b.shape as [number, number, number];
        assert.deepEqual(out.shape, [E, R, G * 32]);
        assert.equal(out.dtype, "BF16");
        for (let row = 0; row < E * R; row++) {
          for (let c = 0; c < G * 32; c++) {
            const byte = b.data[row * G * 16 + (c >> 1)]!;
            const want = bf16OfExact(E2M1[c & 1 ? byte >> 4 : byte & 15]! * 2 ** (s.data[row * G + (c >> 5)]! - 127));
            const got = out.data.readUInt16LE((row * G * 32 + c) * 2);
            if (got !== want) assert.fail(`${dst} layer ${L} row ${row} col ${c}: 0x${got.toString(16)} != 0x${want.toString(16)}`);
          }
        }
      }
    }
    assert.ok(!tt.has("layers.0.moe.routed_experts.inner_experts.mlp1_weight"), "no stale adapter names");
    assert.deepEqual(tt.get("layers.0.moe.expert_bias_E")!.data, Buffer.alloc(16));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("gpt-oss bf16 HF layout → TorchTitan: gate_up_proj [E, D, 2F] and down_proj [E, F, D] transposed; detected per checkpoint", () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-gptoss-"));
  try {
    writeTinyGptOss(join(dir, "hf"), { layout: "bf16", seed: 6 });
    const r = ckpt(["convert", join(dir, "hf"), join(dir, "tt"), "--format", "safetensors"]);
    assert.equal(r.status, 0, r.stderr);
    const hf = readSafetensors(join(dir, "hf", "model.safetensors"));
    const tt = readSafetensors(join(dir, "tt", "model.safetensors"));
    for (const [src, dst] of [["gate_up_proj", "mlp1_weight_EGD"], ["down_proj", "mlp2_weight_EDF"]] as const) {
      const a = hf.get(`model.layers.1.mlp.experts.${src}`)!, o = tt.get(`layers.1.moe.routed_experts.inner_experts.${dst}`)!;
      const [E, X, Y] = a.shape as [number, number, number];
      assert.deepEqual(o.shape, [E, Y, X]);
      for (let e = 0; e < E; e++) for (let y = 0; y < Y; y++) for (let x = 0; x < X; x++) {
        assert.equal(o.data.readUInt16LE(((e * Y + y) * X + x) * 2), a.data.readUInt16LE(((e * X + x) * Y + y) * 2));
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("MXFP4 runs: a rank's expert box reads only its own experts' blocks and scales; column windows start mid-group", () => {
  const leaves = {
    b: { dtype: "U8" as const, shape: [4, 128, 2, 16], pieces: [{ offsets: [0, 0, 0, 0], sizes: [4, 128, 2, 16], file: "m", byteOffset: 1000, byteLength: 4 * 128 * 32 }] },
    s: { dtype: "U8" as const, shape: [4, 128, 2], pieces: [{ offsets: [0, 0, 0], sizes: [4, 128, 2], file: "m", byteOffset: 50000, byteLength: 4 * 128 * 2 }] },
  };
  const recipe = { op: "mxfp4" as const, blocks: "b", scales: "s" };
  const runs = runsForBox(recipe, [4, 128, 64], { offsets: [1, 0, 0], sizes: [1, 128, 64] }, leaves);
  assert.equal(runs.length, 1, "one merged run for the expert");
  assert.deepEqual(runSourceRanges(runs[0]!), [
    { file: "m", start: 1000 + 1 * 128 * 32, end: 1000 + 2 * 128 * 32 },
    { file: "m", start: 50000 + 1 * 128 * 2, end: 50000 + 2 * 128 * 2 },
  ]);
  const win = runsForBox(recipe, [4, 128, 64], { offsets: [2, 5, 40], sizes: [1, 1, 10] }, leaves);
  assert.equal(win.length, 1);
  const dec = win[0]!.decode!;
  assert.ok(dec.op === "mxfp4");
  assert.equal(dec.skip, 8);
  assert.equal(win[0]!.src!.byteOffset, 1000 + (2 * 128 + 5) * 32 + 16);
  assert.equal(dec.byteOffset, 50000 + (2 * 128 + 5) * 2 + 1);
});

test("MXFP4 scale 0xFF (E8M0 NaN) is refused with a clear error and leaves no output", () => {
  const dir = mkdtempSync(join(tmpdir(), "ckpt-gptoss-"));
  try {
    writeTinyGptOss(join(dir, "hf"), { layout: "mxfp4", seed: 5 });
    const p = join(dir, "hf", "model.safetensors");
    const buf = readFileSync(p);
    const n = Number(buf.readBigUInt64LE(0));
    const h = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<string, { data_offsets: [number, number] }>;
    buf[8 + n + h["model.layers.1.mlp.experts.down_proj_scales"]!.data_offsets[0] + 3] = 0xff;
    writeFileSync(p, buf);
    const r = ckpt(["convert", join(dir, "hf"), join(dir, "tt")]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /MXFP4 value is not finite: scale 0xFF is the E8M0 NaN/);
    assert.ok(!existsSync(join(dir, "tt")));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
