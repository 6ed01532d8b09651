// The manifest's digests, judged by an independent XXH3-128 (python3-xxhash) and SHA-256 (hashlib): for DCP and
// safetensors outputs, unsharded and sharded over 3 ranks, every chunk is cut out of the tensors PyTorch loads
// (full tensor[box], contiguous), split into pieces as the manifest says, and hashed in Python. The embedding is
// larger than one piece (16 MiB), so multi-piece chunks are covered.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { writeTinyLlama } from "../../src/fixtures/tiny-llama.js";
import { runConvert } from "../../src/commands/convert.js";
import { availableSuites } from "./torch.js";

const PY_DIGESTS = String.raw`
import sys, os, json, glob, hashlib, tempfile
import torch, xxhash
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

out, tmp = sys.argv[1], sys.argv[2]
m = json.load(open(os.path.join(out, "ckpt-manifest.json")))
H = {"xxh128": xxhash.xxh3_128_hexdigest, "sha256": lambda b: hashlib.sha256(b).hexdigest()}[m["digest"]]
if os.path.exists(os.path.join(out, ".metadata")):
    fd, p = tempfile.mkstemp(suffix=".pt", dir=tmp); os.close(fd)
    dcp_to_torch_save(out, p)
    sd = torch.load(p, weights_only=True)
    os.remove(p)
else:
    # per-rank safetensors hold pieces of tensors: reassemble each from the manifest's boxes
    parts = {}
    for f in glob.glob(os.path.join(out, "*.safetensors")):
        parts[os.path.basename(f)] = load_file(f)
    sd = {}
    for name, t in m["tensors"].items():
        full = torch.empty(t["shape"], dtype=getattr(torch, {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}[t["dtype"]]))
        for c in t["chunks"]:
            idx = tuple(slice(o, o + s) for o, s in zip(c["offsets"], c["sizes"]))
            full[idx] = parts[c["file"]][name]
        sd[name] = full
problems, pieces, multi = [], 0, 0
for name, t in m["tensors"].items():
    x = sd[name]
    for c in t["chunks"]:
        box = x[tuple(slice(o, o + s) for o, s in zip(c["offsets"], c["sizes"]))].contiguous()
        b = box.view(torch.uint8).numpy().tobytes() if box.numel() else b""
        if len(b) != c["bytes"]:
            problems.append(f"{name} {c['offsets']}: {len(b)} bytes, manifest {c['bytes']}")
            continue
        row = len(b) // c["sizes"][0] if c["sizes"] and c["sizes"][0] else len(b)
        per = max(1, m["piece_bytes"] // row) * row if c["sizes"] and row else len(b)
        want = [H(b[o:o + per]) for o in range(0, len(b), per)] if b else []
        pieces += len(want)
        multi += len(want) > 1
        if want != c["piece_hashes"]:
            problems.append(f"{name} {c['offsets']}: piece digests differ")
        if H("".join(want).encode()) != c["hash"]:
            problems.append(f"{name} {c['offsets']}: chunk digest differs")
for f, e in m["files"].items():
    if "hash" in e and H(open(os.path.join(out, f), "rb").read()) != e["hash"]:
        problems.append(f"file {f}: digest differs")
print(json.dumps({"digest": m["digest"], "tensors": len(m["tensors"]), "pieces": pieces, "multi_piece_chunks": multi, "problems": problems}))
`;

const suites = availableSuites();
if (suites.length === 0) test("manifest digests vs Python", { skip: "no PyTorch root (test/interop/setup-torch-root.sh)" }, () => {});

for (const env of suites) {
  test(`[${env.suite}] manifest digests equal python3-xxhash / hashlib over the tensors PyTorch loads (DCP, safetensors, 3 ranks)`, { timeout: 300_000 }, async (ctx) => {
    const t = env.tmpdir();
    try {
      const h = (p: string) => join(t.host, p);
      // vocab 66000 × dim 64 in f32 = 16.9 MB: the embedding and output take two 16 MiB pieces each
      writeTinyLlama(h("hf"), { vocab: 66000, hidden: 64, heads: 4, kvHeads: 2, headDim: 16, ffn: 128, layers: 2, dtype: "F32", tied: false });
      const cases: [string, Parameters<typeof runConvert>[0]][] = [
        ["dcp", { source: h("hf"), out: h("dcp") }],
        ["dcp-sha256", { source: h("hf"), out: h("dcp-sha256"), digest: "sha256" }],
        ["st", { source: h("hf"), out: h("st"), format: "safetensors" }],
        ["dcp-3", { source: h("hf"), out: h("dcp-3"), worldSize: 3 }],
        ["st-3-sha256", { source: h("hf"), out: h("st-3-sha256"), worldSize: 3, format: "safetensors", digest: "sha256" }],
      ];
      for (const [name, opts] of cases) {
        await runConvert(opts);
        const r = JSON.parse((await env.python(PY_DIGESTS, [`${t.guest}/${name}`, t.guest])).trim().split("\n").pop()!) as { digest: string; tensors: number; pieces: number; multi_piece_chunks: number; problems: string[] };
        ctx.diagnostic(`[${env.suite}] ${name}: ${r.digest}, ${r.tensors} tensors, ${r.pieces} pieces (${r.multi_piece_chunks} multi-piece chunks), ${r.problems.length} problems`);
        assert.deepEqual(r.problems, [], name);
        assert.equal(r.digest, opts.digest ?? "xxh128");
        assert.ok(r.tensors > 10);
        if (!opts.worldSize) assert.ok(r.multi_piece_chunks >= 2, `${name}: multi-piece chunks covered`);
      }
    } finally {
      t.cleanup();
    }
  });
}
