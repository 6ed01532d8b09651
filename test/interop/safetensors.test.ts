// Interop with the real safetensors + PyTorch: our files load in safetensors.torch with the exact bytes and are
// byte-identical to save_file's; files save_file wrote are read by our reader bit for bit.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DTYPE_BITS, isDType, numelOf, type DType } from "../../src/dtypes.js";
import {
  checkIndex,
  planSafetensorsFile,
  readIndex,
  readSafetensorsHeader,
  readTensorBytes,
  serializeIndex,
  writeSafetensors,
  type SafetensorsHeader,
} from "../../src/formats/safetensors/index.js";
import { availableSuites } from "./torch.js";

const PY_TYPES = `
import json
from safetensors.torch import _TYPES, _SIZE
print(json.dumps(sorted(k for k, v in _TYPES.items() if v is not None and v in _SIZE)))
`;

// argv: spec.json ours.safetensors out.safetensors
const PY_CHECK = `
import sys, json, torch
from safetensors.torch import load_file, save_file, _TYPES
spec = json.load(open(sys.argv[1]))

def raw(t):
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()

loaded = load_file(sys.argv[2])
assert sorted(loaded) == sorted(spec), (sorted(loaded), sorted(spec))
built = {}
for name, s in spec.items():
    dt = _TYPES[s["dtype"]]
    want = bytes.fromhex(s["hex"])
    t = loaded[name]
    assert t.dtype == dt, (name, t.dtype, dt)
    assert list(t.shape) == s["shape"], (name, list(t.shape), s["shape"])
    got = raw(t)
    assert got == want, (name, s["dtype"], got[:16].hex(), want[:16].hex())
    if len(want) == 0:
        built[name] = torch.empty(s["shape"], dtype=dt)
    else:
        built[name] = torch.frombuffer(bytearray(want), dtype=torch.uint8).view(dt).reshape(s["shape"])
save_file(built, sys.argv[3], metadata={"format": "pt"})
print("ok", len(spec))
`;

// argv: out folder. Writes single.safetensors and a two-shard checkpoint with its index the way transformers does.
const PY_WRITE = `
import sys, json, os, torch
from safetensors.torch import save_file, _TYPES
out = sys.argv[1]
code = {v: k for k, v in _TYPES.items() if v is not None}
torch.manual_seed(0)
def raw(t):
    t = t.contiguous().reshape(-1)
    return b"" if t.numel() == 0 else t.view(torch.uint8).numpy().tobytes()
single = {
    "model.embed_tokens.weight": torch.randn(16, 8).to(torch.bfloat16),
    "model.norm.weight": torch.randn(8),
    "lm_head.weight": torch.randn(16, 8).to(torch.float16),
    "pos": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
    "mask": torch.tensor([[True, False, True], [False, False, True]]),
    "bytes": torch.arange(0, 250, 7, dtype=torch.uint8),
    "fp8": (torch.randn(4, 8) * 50).to(torch.float8_e4m3fn),
    "fp8b": (torch.randn(2, 8) * 1000).to(torch.float8_e5m2),
    "f64": torch.randn(3, dtype=torch.float64),
    "i32": torch.tensor([2**31 - 1, -2**31, 0], dtype=torch.int32),
    "i16": torch.tensor([-1, 7], dtype=torch.int16),
    "i8": torch.tensor([-128, 127], dtype=torch.int8),
    "scalar": torch.tensor(3.5),
    "empty": torch.empty(0, 4, dtype=torch.bfloat16),
    "nan_inf": torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]).to(torch.bfloat16),
}
shard1 = {"model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8).to(torch.bfloat16),
          "model.layers.0.mlp.up_proj.weight": torch.randn(4, 8)}
shard2 = {"model.layers.1.self_attn.q_proj.weight": torch.randn(8, 8).to(torch.bfloat16),
          "model.layers.1.input_layernorm.weight": torch.ones(8)}
files = {"single.safetensors": single,
         "model-00001-of-00002.safetensors": shard1,
         "model-00002-of-00002.safetensors": shard2}
report = {}
for fname, ts in files.items():
    save_file(ts, os.path.join(out, fname), metadata={"format": "pt"})
    report[fname] = {k: {"dtype": code[t.dtype], "shape": list(t.shape), "hex": raw(t).hex()} for k, t in ts.items()}
weight_map = {}
total = 0
for fname in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
    for k, t in files[fname].items():
        weight_map[k] = fname
        total += t.numel() * t.element_size()
index = {"metadata": {"total_size": total}, "weight_map": weight_map}
with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
    f.write(json.dumps(index, indent=2, sort_keys=True) + "\\n")
print(json.dumps(report))
`;

type Spec = Record<string, { dtype: DType; shape: number[]; hex: string }>;

/** Deterministic test tensors for every dtype in `codes`; BOOL gets 0/1 bytes. */
function makeTensors(codes: DType[]): { name: string; dtype: DType; shape: number[]; data: Uint8Array }[] {
  const out: { name: string; dtype: DType; shape: number[]; data: Uint8Array }[] = [];
  let seed = 12345;
  const rnd = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) >>> 16) & 0xff;
  codes.forEach((dtype, i) => {
    for (const [suffix, shape] of [["a", [3, 4]], ["b", [5]]] as [string, number[]][]) {
      const bytes = (numelOf(shape) * DTYPE_BITS[dtype]) / 8;
      const data = new Uint8Array(bytes);
      for (let j = 0; j < bytes; j++) data[j] = dtype === "BOOL" ? rnd() & 1 : rnd();
      out.push({ name: `t${i}.${dtype}.${suffix}`, dtype, shape, data });
    }
  });
  out.push({ name: "scalar", dtype: "F32", shape: [], data: new Uint8Array([0, 0, 0xc0, 0x3f]) });
  out.push({ name: "empty", dtype: "BF16", shape: [2, 0], data: new Uint8Array(0) });
  out.push({ name: "z.last", dtype: "U8", shape: [1], data: new Uint8Array([9]) });
  return out;
}

const suites = availableSuites();
if (suites.length === 0) {
  test("safetensors interop with PyTorch", { skip: "no PyTorch root built (test/interop/setup-torch-root.sh)" }, () => {});
}

for (const env of suites) {
  test(`safetensors interop (${env.suite}): our files load in safetensors.torch and match save_file byte for byte`, async () => {
    const codes = (JSON.parse((await env.python(PY_TYPES)).trim().split("\n").pop()!) as string[]).filter(isDType);
    for (const must of ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"]) {
      assert.ok(codes.includes(must as DType), `${env.suite}: safetensors.torch lacks ${must}`);
    }
    const tensors = makeTensors(codes);
    const spec: Spec = {};
    for (const t of tensors) spec[t.name] = { dtype: t.dtype, shape: t.shape, hex: Buffer.from(t.data).toString("hex") };
    const d = env.tmpdir();
    try {
      writeFileSync(join(d.host, "spec.json"), JSON.stringify(spec));
      await writeSafetensors(join(d.host, "ours.safetensors"), tensors, { format: "pt" });
      const out = await env.python(PY_CHECK, [`${d.guest}/spec.json`, `${d.guest}/ours.safetensors`, `${d.guest}/theirs.safetensors`]);
      assert.match(out, new RegExp(`ok ${tensors.length}`));
      const ours = readFileSync(join(d.host, "ours.safetensors"));
      const theirs = readFileSync(join(d.host, "theirs.safetensors"));
      if (!ours.equals(theirs)) {
        const hOurs = ours.subarray(8, 8 + Number(ours.readBigUInt64LE(0))).toString();
        const hTheirs = theirs.subarray(8, 8 + Number(theirs.readBigUInt64LE(0))).toString();
        assert.equal(hOurs, hTheirs, "headers differ");
        assert.fail("file bytes differ (headers equal)");
      }
      console.log(`${env.suite}: ${codes.length} dtypes: ${codes.join(" ")}`);
    } finally {
      d.cleanup();
    }
  });

  test(`safetensors interop (${env.suite}): files written by save_file (single and sharded + index) read bit for bit`, async () => {
    const d = env.tmpdir();
    try {
      const report = JSON.parse((await env.python(PY_WRITE, [d.guest])).trim().split("\n").pop()!) as Record<string, Spec>;
      const headers = new Map<string, SafetensorsHeader>();
      for (const [fname, spec] of Object.entries(report)) {
        const path = join(d.host, fname);
        const h = await readSafetensorsHeader(path, fname);
        assert.deepEqual(h.warnings, []);
        assert.deepEqual(h.metadata, { format: "pt" });
        assert.deepEqual(h.entries.map((e) => e.name).sort(), Object.keys(spec).sort());
        for (const e of h.entries) {
          const s = spec[e.name]!;
          assert.equal(e.dtype, s.dtype, e.name);
          assert.deepEqual(e.shape, s.shape, e.name);
          assert.equal((await readTensorBytes(path, h, e.name)).toString("hex"), s.hex, e.name);
        }
        // Our planner reproduces their header bytes exactly.
        const plan = planSafetensorsFile(fname, h.entries.map((e) => ({ name: e.name, dtype: e.dtype, shape: e.shape })), { format: "pt" });
        const bytes = readFileSync(path);
        assert.ok(plan.header.equals(bytes.subarray(0, h.dataStart)), `${fname}: planned header differs from save_file's`);
        assert.equal(plan.totalSize, bytes.length);
        headers.set(fname, h);
      }
      headers.delete("single.safetensors");
      const indexText = readFileSync(join(d.host, "model.safetensors.index.json"), "utf8");
      const index = await readIndex(indexText, "model.safetensors.index.json");
      assert.equal(index.weightMap.size, 4);
      const check = checkIndex(index, headers, "model.safetensors.index.json");
      assert.deepEqual(check.errors, []);
      assert.deepEqual(check.unmapped, []);
      assert.deepEqual(check.warnings, []);
      assert.equal(check.totalSize, index.totalSize);
      // serializeIndex reproduces transformers' json.dumps(indent=2, sort_keys=True) + "\n".
      const wm: Record<string, string> = {};
      for (const [k, v] of index.weightMap) wm[k] = v;
      assert.equal(serializeIndex({ metadata: { total_size: index.totalSize! }, weight_map: wm }), indexText);
    } finally {
      d.cleanup();
    }
  });
}
