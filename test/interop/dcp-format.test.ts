// Interop with real PyTorch DCP (docs/dcp-format.md §14): checkpoints our writer produces load in
// torch.distributed.checkpoint.load and format_utils.dcp_to_torch_save bit for bit; checkpoints dcp.save wrote are
// read by openDcp + byte reads and equal what PyTorch saved.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import { test } from "node:test";
import { type DType, TORCH_DTYPE, dtypeFromTorch, elementSize, numelOf } from "../../src/dtypes.js";
import { type DcpWriteTensor, openDcp, readStoredChunk, writeDcp } from "../../src/formats/dcp/index.js";
import { parseByteIoBlob } from "../../src/formats/torchsave/index.js";
import { availableSuites } from "./torch.js";

const suites = availableSuites();

function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s & 0xff;
  };
}

function randomBytes(n: number, seed: number, dtype: DType): Buffer {
  const r = prng(seed);
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = r();
  if (dtype === "BOOL") for (let i = 0; i < n; i++) b[i]! &= 1;
  return b;
}

/** Copies the box [offsets, offsets+sizes) out of a row-major tensor. */
function sliceBox(full: Buffer, shape: number[], esz: number, offsets: number[], sizes: number[]): Buffer {
  const n = numelOf(sizes);
  const out = Buffer.alloc(n * esz);
  if (n === 0) return out;
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
  const idx = new Array<number>(sizes.length).fill(0);
  for (let i = 0; i < n; i++) {
    let src = 0;
    for (let d = 0; d < idx.length; d++) src += (offsets[d]! + idx[d]!) * strides[d]!;
    full.copy(out, i * esz, src * esz, src * esz + esz);
    for (let d = idx.length - 1; d >= 0; d--) {
      if (++idx[d]! < sizes[d]!) break;
      idx[d] = 0;
    }
  }
  return out;
}

interface Spec { fqn: string; dtype: DType; shape: number[]; tiles: { offsets: number[]; sizes: number[]; file: string }[] }

const OUR_SPECS: Spec[] = [
  { fqn: "bf", dtype: "BF16", shape: [5, 7], tiles: [{ offsets: [0, 0], sizes: [5, 7], file: "__0_0.distcp" }] },
  { fqn: "f32", dtype: "F32", shape: [6, 4], tiles: [
    { offsets: [0, 0], sizes: [3, 4], file: "__0_0.distcp" },
    { offsets: [3, 0], sizes: [3, 4], file: "__1_0.distcp" },
  ] },
  { fqn: "f16", dtype: "F16", shape: [4, 6], tiles: [
    { offsets: [0, 0], sizes: [4, 2], file: "__0_0.distcp" },
    { offsets: [0, 2], sizes: [4, 3], file: "__1_0.distcp" },
    { offsets: [0, 5], sizes: [4, 1], file: "__0_0.distcp" },
  ] },
  { fqn: "i64", dtype: "I64", shape: [9], tiles: [{ offsets: [0], sizes: [9], file: "__1_0.distcp" }] },
  { fqn: "scalar", dtype: "F32", shape: [], tiles: [{ offsets: [], sizes: [], file: "__0_0.distcp" }] },
  { fqn: "f8", dtype: "F8_E4M3", shape: [4, 4], tiles: [
    { offsets: [0, 0], sizes: [2, 4], file: "__0_0.distcp" },
    { offsets: [2, 0], sizes: [2, 4], file: "__1_0.distcp" },
  ] },
  { fqn: "u8_uneven", dtype: "U8", shape: [2, 3], tiles: [
    { offsets: [0, 0], sizes: [1, 3], file: "__0_0.distcp" },
    { offsets: [1, 0], sizes: [1, 3], file: "__1_0.distcp" },
    { offsets: [2, 0], sizes: [0, 3], file: "__2_0.distcp" }, // empty shard past the end (sharding.md §7)
  ] },
  { fqn: "model.layers.0.w", dtype: "BOOL", shape: [3, 5], tiles: [{ offsets: [0, 0], sizes: [3, 5], file: "__1_0.distcp" }] },
];

// argv: ckpt_dir spec.json raw_dir torch_save_out
const PY_LOAD_OURS = `
import sys, json, io, torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
ckpt, spec, raw, out = sys.argv[1:5]
spec = json.load(open(spec))

def rawbytes(t):
    t = t.contiguous().reshape(-1)
    return b"" if t.numel() == 0 else t.view(torch.uint8).numpy().tobytes()

def expected(s):
    return open(f"{raw}/{s['fqn']}.bin", "rb").read()

bad = []
sd = {s["fqn"]: torch.full(s["shape"], 0, dtype=getattr(torch, s["dtype"])) for s in spec}
sd["step"] = 0
sd["sched"] = None
dcp.load(sd, storage_reader=FileSystemReader(ckpt))
for s in spec:
    t = sd[s["fqn"]]
    if list(t.shape) != s["shape"] or rawbytes(t) != expected(s):
        bad.append(("load", s["fqn"]))
if sd["step"] != 42: bad.append(("step", repr(sd["step"])))
if sd["sched"] != {"lr": [0.5, 0.25], "name": "cos", "n": None}: bad.append(("sched", repr(sd["sched"])))

# each blob loads with weights_only=True on its own
md = FileSystemReader(ckpt).read_metadata()
nblobs = 0
for idx, info in md.storage_data.items():
    with open(f"{ckpt}/{info.relative_path}", "rb") as f:
        f.seek(info.offset)
        blob = f.read(info.length)
    torch.load(io.BytesIO(blob), weights_only=idx.offset is not None)
    nblobs += 1

# dtype cast on load: bf16 saved, float32 destination
cast = {"bf": torch.zeros(5, 7, dtype=torch.float32)}
dcp.load(cast, storage_reader=FileSystemReader(ckpt))
ref = torch.frombuffer(bytearray(expected(spec[0])), dtype=torch.bfloat16).reshape(5, 7).float()
if not torch.equal(cast["bf"], ref): bad.append(("cast", "bf"))

dcp_to_torch_save(ckpt, out)
full = torch.load(out, weights_only=True)
for s in spec:
    t = full.get(s["fqn"])
    if t is None or t.dtype != getattr(torch, s["dtype"]) or list(t.shape) != s["shape"] or rawbytes(t) != expected(s):
        bad.append(("dcp_to_torch_save", s["fqn"]))
if full.get("step") != 42: bad.append(("dcp_to_torch_save", "step"))
print(json.dumps({"bad": bad, "blobs": nblobs, "keys": len(full), "torch": torch.__version__}))
`;

// argv: ckpt_dir raw_dir mode
const PY_SAVE = `
import sys, json, os, torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
ckpt, raw, mode = sys.argv[1:4]
torch.manual_seed(0)
g = torch.Generator().manual_seed(1)
big = torch.randn(1000, 1000, generator=g)
tensors = {
    "bf16": torch.randn(64, 33, generator=g).to(torch.bfloat16),
    "f32_big": big,
    "f16": torch.randn(17, generator=g).half(),
    "f64_scalar": torch.tensor(3.25, dtype=torch.float64),
    "i64": torch.randint(-2**62, 2**62, (5, 3), generator=g, dtype=torch.int64),
    "i32": torch.randint(-2**31, 2**31 - 1, (7,), generator=g, dtype=torch.int32),
    "i8": torch.randint(-128, 127, (4, 4), generator=g, dtype=torch.int8),
    "u8": torch.randint(0, 255, (3, 2, 2), generator=g, dtype=torch.uint8),
    "bool": torch.randint(0, 2, (9,), generator=g).bool(),
    "f8": torch.randn(6, 5, generator=g).to(torch.float8_e4m3fn),
    "transposed": torch.randn(4, 6, generator=g).t(),
    "narrowed": torch.randn(10, 4, generator=g)[2:5],
}
sd = dict(tensors)
sd["model"] = {"inner.w": torch.randn(3, 3, generator=g)}
sd["step"] = 5
if mode == "threads":
    dcp.save(sd, storage_writer=FileSystemWriter(ckpt, thread_count=2, single_file_per_rank=False))
elif mode == "nocollectives":
    import inspect
    if "use_collectives" not in inspect.signature(dcp.save).parameters:
        print(json.dumps({"unsupported": True}))
        sys.exit(0)
    dcp.save(sd, checkpoint_id=ckpt, no_dist=True, use_collectives=False)
else:
    dcp.save(sd, checkpoint_id=ckpt)
flat = dict(tensors)
flat["model.inner.w"] = sd["model"]["inner.w"]
man = {}
for k, t in flat.items():
    c = t.contiguous().reshape(-1)
    open(f"{raw}/{k}.bin", "wb").write(b"" if c.numel() == 0 else c.view(torch.uint8).numpy().tobytes())
    man[k] = {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape), "contiguous": t.is_contiguous()}
print(json.dumps(man))
`;

if (suites.length === 0) {
  test("DCP interop with PyTorch", { skip: "no PyTorch root built (test/interop/setup-torch-root.sh)" }, () => {});
}

for (const env of suites) {
  test(`[${env.suite}] our DCP loads in dcp.load and dcp_to_torch_save bit-exactly`, async () => {
    const tmp = env.tmpdir();
    try {
      const ckpt = join(tmp.host, "ckpt");
      const raw = join(tmp.host, "raw");
      mkdirSync(raw, { recursive: true });
      const tensors: DcpWriteTensor[] = OUR_SPECS.map((s, i) => {
        const esz = elementSize(s.dtype);
        const full = randomBytes(numelOf(s.shape) * esz, 1000 + i, s.dtype);
        writeFileSync(join(raw, `${s.fqn}.bin`), full);
        return {
          fqn: s.fqn, dtype: s.dtype, size: s.shape,
          chunks: s.tiles.map((t) => ({ ...t, data: sliceBox(full, s.shape, esz, t.offsets, t.sizes) })),
        };
      });
      await writeDcp(ckpt, {
        tensors,
        bytes: [{ fqn: "step", value: 42 }, { fqn: "sched", value: { lr: [0.5, 0.25], name: "cos", n: null }, file: "__1_0.distcp" }],
      });
      const spec = OUR_SPECS.map((s) => ({ fqn: s.fqn, dtype: TORCH_DTYPE[s.dtype], shape: s.shape }));
      writeFileSync(join(tmp.host, "spec.json"), JSON.stringify(spec));
      const out = await env.python(PY_LOAD_OURS, [`${tmp.guest}/ckpt`, `${tmp.guest}/spec.json`, `${tmp.guest}/raw`, `${tmp.guest}/full.pt`]);
      const res = JSON.parse(out.trim().split("\n").pop()!) as { bad: unknown[]; blobs: number; keys: number; torch: string };
      assert.deepEqual(res.bad, [], `mismatches under torch ${res.torch}`);
      assert.equal(res.keys, OUR_SPECS.length + 2);
      // one blob per non-empty-key chunk + 2 BYTE_IO
      assert.equal(res.blobs, OUR_SPECS.reduce((n, s) => n + s.tiles.length, 0) + 2);
      // and our own reader agrees with what we wrote
      const { chunks } = await openDcp(ckpt);
      for (const c of chunks) {
        const s = OUR_SPECS.find((x) => x.fqn === c.fqn)!;
        const full = readFileSync(join(raw, `${s.fqn}.bin`));
        assert.deepEqual(await readStoredChunk(ckpt, c), sliceBox(full, s.shape, elementSize(s.dtype), c.offsets, c.sizes));
      }
    } finally {
      tmp.cleanup();
    }
  });

  for (const mode of ["default", "threads", "nocollectives"] as const) {
    test(`[${env.suite}] DCP written by dcp.save (${mode}) reads back through openDcp`, async (t) => {
      const tmp = env.tmpdir();
      try {
        const ckpt = join(tmp.host, "ckpt");
        const raw = join(tmp.host, "raw");
        mkdirSync(raw, { recursive: true });
        const out = await env.python(PY_SAVE, [`${tmp.guest}/ckpt`, `${tmp.guest}/raw`, mode]);
        const last = JSON.parse(out.trim().split("\n").pop()!) as Record<string, unknown>;
        if (last.unsupported) {
          t.skip(`this PyTorch has no use_collectives=False`);
          return;
        }
        const man = last as Record<string, { dtype: string; shape: number[]; contiguous: boolean }>;
        if (mode === "nocollectives") {
          assert.ok(!existsSync(join(ckpt, ".metadata")), "per-rank metadata only");
          assert.ok(readdirSync(ckpt).some((n) => /^__\d+\.metadata$/.test(n)), readdirSync(ckpt).join(","));
        }
        const { metadata, chunks } = await openDcp(ckpt);
        assert.deepEqual([...metadata.bytes], ["step"]);
        assert.deepEqual(metadata.plannerData.get("model.inner.w"), ["model", "inner.w"]);
        assert.deepEqual(new Set(metadata.tensors.keys()), new Set(Object.keys(man)));
        let nonContiguous = 0;
        for (const [fqn, m] of Object.entries(man)) {
          const t = metadata.tensors.get(fqn)!;
          assert.equal(t.dtype, dtypeFromTorch(m.dtype), fqn);
          assert.deepEqual(t.size, m.shape, fqn);
          const cs = chunks.filter((c) => c.fqn === fqn);
          assert.equal(cs.length, 1, fqn);
          const c = cs[0]!;
          if (!c.contiguous) nonContiguous++;
          const want = readFileSync(join(raw, `${fqn}.bin`));
          assert.ok((await readStoredChunk(ckpt, c)).equals(want), `bytes of ${fqn}`);
          if (c.contiguous) {
            const fh = await open(join(ckpt, c.file), "r");
            const b = Buffer.alloc(c.dataLength);
            await fh.read(b, 0, c.dataLength, c.dataOffset);
            await fh.close();
            assert.ok(b.equals(want), `direct bytes of ${fqn}`);
          }
        }
        assert.equal(nonContiguous, 1, "the transposed tensor is stored with its strides");
        // BYTE_IO value
        const st = metadata.storage.find((s) => s.fqn === "step")!;
        const fh = await open(join(ckpt, st.file), "r");
        try {
          const v = await parseByteIoBlob(async (o, l) => {
            const b = Buffer.alloc(l);
            await fh.read(b, 0, l, st.offset + o);
            return b;
          }, st.length, "step");
          assert.equal(v, 5);
        } finally {
          await fh.close();
        }
        if (mode === "threads") assert.ok(new Set(chunks.map((c) => c.file)).size > 1);
      } finally {
        tmp.cleanup();
      }
    });
  }
}
