// Interop for the MoE mappings with real PyTorch: tiny Qwen3 (dense, MoE) and DeepSeek-V3 (FP8)
// checkpoints converted by runConvert load through dcp.load and equal a reference built in Python, straight from the
// HF safetensors, by the rules of docs/torchtitan-layout.md §6–8 (written independently below: torch.stack
// in numeric expert order, FP8 dequant as f32 multiply then bf16); `shard --world-size 4` output loads into DTensors
// on a 4-process gloo group with FSDP2's placements (Shard(1) for experts when E < world, sharding.md §5) and every
// rank's box is a stored chunk; HF → TorchTitan → HF gives the HF tensors back (dequantized for FP8 sources).
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { runConvert } from "../../src/commands/convert.js";
import { writeTinyQwen3 } from "../../src/fixtures/tiny-qwen3.js";
import { writeTinyDeepSeek } from "../../src/fixtures/tiny-deepseek.js";
import { availableSuites } from "./torch.js";

const suites = availableSuites();

const PY_REFERENCE = String.raw`
import json, glob, os, sys, torch
from safetensors.torch import load_file

BLOCK = 128

def load_hf(d):
    sd = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        sd.update(load_file(f))
    return sd

def dequant(w, s):
    R, C = w.shape
    return (w.float() * s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:R, :C]).to(torch.bfloat16)

def hf_value(hf, name):
    s = hf.get(name + "_scale_inv")
    return dequant(hf[name], s) if s is not None else hf[name]

def reference(kind, hf, cfg, target, expert_bias=True):
    main = target == "torchtitan@main"
    v = lambda n: hf_value(hf, n)
    out = {"tok_embeddings.weight": v("model.embed_tokens.weight"), "norm.weight": v("model.norm.weight")}
    head = hf.get("lm_head.weight")
    if head is None and cfg.get("tie_word_embeddings"):
        head = hf["model.embed_tokens.weight"]
    out["lm_head.weight" if main else "output.weight"] = head
    for L in range(cfg["num_hidden_layers"]):
        p, q = f"model.layers.{L}.", f"layers.{L}."
        a = q + "attention."
        if kind == "qwen3":
            for x in "qkv":
                out[a + ("qkv_linear." if main else "") + f"w{x}.weight"] = v(p + f"self_attn.{x}_proj.weight")
            out[a + "q_norm.weight"] = v(p + "self_attn.q_norm.weight")
            out[a + "k_norm.weight"] = v(p + "self_attn.k_norm.weight")
        else:
            if p + "self_attn.q_a_proj.weight" in hf:
                out[a + "wq_a.weight"] = v(p + "self_attn.q_a_proj.weight")
                out[a + "q_norm.weight"] = v(p + "self_attn.q_a_layernorm.weight")
                out[a + "wq_b.weight"] = v(p + "self_attn.q_b_proj.weight")
            else:
                out[a + "wq.weight"] = v(p + "self_attn.q_proj.weight")
            out[a + "wkv_a.weight"] = v(p + "self_attn.kv_a_proj_with_mqa.weight")
            out[a + "kv_norm.weight"] = v(p + "self_attn.kv_a_layernorm.weight")
            out[a + "wkv_b.weight"] = v(p + "self_attn.kv_b_proj.weight")
        out[a + "wo.weight"] = v(p + "self_attn.o_proj.weight")
        out[q + "attention_norm.weight"] = v(p + "input_layernorm.weight")
        out[q + "ffn_norm.weight"] = v(p + "post_attention_layernorm.weight")
        if p + "mlp.gate.weight" in hf:
            m = q + "moe."
            out[m + "router.gate.weight"] = v(p + "mlp.gate.weight")
            E = cfg["num_experts"] if kind == "qwen3" else cfg["n_routed_experts"]
            for hfn, new, old in (("gate_proj", "w1_EFD", "w1"), ("up_proj", "w3_EFD", "w3"), ("down_proj", "w2_EDF", "w2")):
                name = m + ("routed_experts.inner_experts." + new if main else "experts." + old)
                out[name] = torch.stack([v(p + f"mlp.experts.{e}.{hfn}.weight") for e in range(E)])
            bias = m + ("expert_bias_E" if main else "expert_bias")
            if kind == "qwen3":
                if expert_bias:
                    out[bias] = torch.zeros(E, dtype=torch.float32)
            else:
                out[bias] = hf[p + "mlp.gate.e_score_correction_bias"].float()
                for hfn, tn in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                    out[m + f"shared_experts.{tn}.weight"] = v(p + f"mlp.shared_experts.{hfn}.weight")
        else:
            for hfn, tn in (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")):
                out[q + f"feed_forward.{tn}.weight"] = v(p + f"mlp.{hfn}.weight")
    return out

def hf_back_reference(hf, cfg):
    out = {}
    for k in hf:
        if k.endswith("_scale_inv"):
            continue
        if k.startswith("model.layers.") and int(k.split(".")[2]) >= cfg["num_hidden_layers"]:
            continue  # MTP layers are not converted
        out[k] = hf_value(hf, k)
    return out

def raw(t):
    t = t.contiguous().reshape(-1)
    return t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)

def same(a, b):
    return a.dtype == b.dtype and list(a.shape) == list(b.shape) and torch.equal(raw(a), raw(b))

def case_inputs(c):
    hf = load_hf(c["hf"])
    cfg = json.load(open(os.path.join(c["hf"], "config.json")))
    return hf, cfg, reference(c["kind"], hf, cfg, c["target"], c.get("expert_bias", True))
`;

// argv: cases.json
const PY_SINGLE = PY_REFERENCE + String.raw`
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
cases = json.load(open(sys.argv[1]))
bad, counts = [], {}
for c in cases:
    hf, cfg, ref = case_inputs(c)
    md = FileSystemReader(c["dcp"]).read_metadata().state_dict_metadata
    if set(md) != set(ref):
        bad.append([c["name"], "keys", sorted(set(md) - set(ref)), sorted(set(ref) - set(md))])
        continue
    for k, t in ref.items():
        if md[k].properties.dtype != t.dtype or list(md[k].size) != list(t.shape):
            bad.append([c["name"], "meta", k, str(md[k].properties.dtype), list(md[k].size)])
    sd = {k: torch.zeros(t.shape, dtype=t.dtype) for k, t in ref.items()}
    dcp.load(sd, storage_reader=FileSystemReader(c["dcp"]))
    for k, t in ref.items():
        if not same(sd[k], t):
            bad.append([c["name"], "value", k])
    counts[c["name"]] = len(ref)
    if c.get("back"):
        want, got = hf_back_reference(hf, cfg), load_hf(c["back"])
        if set(got) != set(want):
            bad.append([c["name"], "back-keys", sorted(set(got) - set(want)), sorted(set(want) - set(got))])
        else:
            for k in want:
                if not same(got[k], want[k]):
                    bad.append([c["name"], "back-value", k, str(got[k].dtype), str(want[k].dtype)])
        counts[c["name"] + "/back"] = len(want)
print(json.dumps({"bad": bad, "counts": counts, "torch": torch.__version__}))
`;

// One rank of the gloo group. argv: rank world port cases.json
const PY_RANK = PY_REFERENCE + String.raw`
import datetime
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cases = json.load(open(sys.argv[4]))
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
mesh = init_device_mesh("cpu", (world,))

import inspect
# every rank holds the full reference: shard it locally (no scatter; gloo in some builds rejects bf16 collectives)
_local = {"src_data_rank": None} if "src_data_rank" in inspect.signature(distribute_tensor).parameters else {}
dtensor = lambda t, pl: distribute_tensor(t, mesh, pl, **_local)

is_buffer = lambda k: k.endswith(".expert_bias") or k.endswith(".expert_bias_E")   # plain buffer: FSDP leaves it whole
is_experts = lambda k: ".moe.experts.w" in k or ".inner_experts." in k
full_chunk_ok = lambda k: ".qkv_linear." in k   # @main stores wq/wk/wv whole (sharding.md §3)

bad, counts = [], {}
for c in cases:
    hf, cfg, ref = case_inputs(c)
    md = FileSystemReader(c["dcp"]).read_metadata().state_dict_metadata
    if set(md) != set(ref):
        bad.append([c["name"], "keys"])
        continue
    sd, want, placements = {}, {}, {}
    for k, t in ref.items():
        if is_buffer(k):
            sd[k], want[k] = torch.zeros_like(t), t
            if len(md[k].chunks) != 1:
                bad.append([c["name"], "buffer-chunks", k, len(md[k].chunks)])
            continue
        pl = [Shard(1)] if is_experts(k) and t.shape[0] < world else [Shard(0)]
        placements[k] = str(pl[0])
        want[k] = dtensor(t, pl)
        sd[k] = dtensor(torch.zeros_like(t), pl)
        shape, offset = compute_local_shape_and_global_offset(t.shape, mesh, pl)
        chunks = [(list(ch.offsets), list(ch.sizes)) for ch in md[k].chunks]
        if full_chunk_ok(k) and len(chunks) == 1:
            continue
        if len(chunks) < 2:
            bad.append([c["name"], "not-sharded", k])
        elif torch.Size(shape).numel() > 0 and (list(offset), list(shape)) not in chunks:
            bad.append([c["name"], "box-not-stored", k, list(offset), list(shape)])
    dcp.load(sd, storage_reader=FileSystemReader(c["dcp"]))
    for k in ref:
        got, exp = sd[k], want[k]
        if isinstance(exp, DTensor):
            if not isinstance(got, DTensor) or got.placements != exp.placements or not same(got.to_local(), exp.to_local()):
                bad.append([c["name"], "local-shard", k, rank])
        elif not same(got, exp):
            bad.append([c["name"], "buffer", k])
    counts[c["name"]] = {"tensors": len(ref), "shard1": sorted(k for k, p in placements.items() if "1" in p)}
dist.barrier()
print(json.dumps({"rank": rank, "bad": bad, "counts": counts, "torch": torch.__version__}), flush=True)
sys.stderr.flush()
os._exit(0)  # PyTorch 2.6 can hang in destroy_process_group (gloo); every rank is past the barrier
`;

// argv: rank_script cases.json world
const PY_LAUNCH = String.raw`
import json, os, socket, subprocess, sys
script, cases, world = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", USE_LIBUV="0")
procs = [subprocess.Popen([sys.executable, script, str(r), str(world), str(port), cases], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for r in range(world)]
res = []
try:
    for p in procs:
        out, err = p.communicate(timeout=240)
        res.append({"code": p.returncode, "out": out.decode()[-4000:], "err": err.decode()[-4000:]})
finally:
    for p in procs:
        if p.poll() is None:
            p.kill()
print(json.dumps(res))
`;

interface Case { name: string; kind: "qwen3" | "deepseek_v3"; hf: string; dcp: string; target: string; back?: string; expert_bias?: boolean }

if (suites.length === 0) {
  test("MoE interop with PyTorch", { skip: "no PyTorch root built (test/interop/setup-torch-root.sh)" }, () => {});
}

for (const env of suites) {
  test(`[${env.suite}] Qwen3 and DeepSeek-V3: dcp.load equals the Python reference; HF round trip; gloo world 4 DTensors`, { timeout: 600_000 }, async () => {
    const tmp = env.tmpdir();
    const guest = (p: string) => tmp.guest + p.slice(tmp.host.length);
    try {
      const h = (n: string) => join(tmp.host, n);
      writeTinyQwen3(h("qwen3-moe"), { experts: 4, layers: 3, mlpOnlyLayers: [0], files: 2 });
      writeTinyQwen3(h("qwen3-moe-e2"), { experts: 2, layers: 2, mlpOnlyLayers: [] });
      writeTinyQwen3(h("qwen3-dense"), { experts: 0, layers: 2, tied: true });
      writeTinyDeepSeek(h("deepseek"), { files: 3 });
      writeTinyDeepSeek(h("deepseek-lite"), { qLoraRank: 0, layers: 2, mtp: 0, experts: 4, files: 1 });

      const single: Case[] = [];
      const sharded: Case[] = [];
      const convert = async (c: Case, world: number, omit?: string[]) => {
        const r = await runConvert({ source: c.hf, out: c.dcp, target: c.target, worldSize: world, omit, threads: 0 });
        if (c.back) await runConvert({ source: c.dcp, out: c.back, to: "hf", threads: 0 });
        (world === 1 ? single : sharded).push({ ...c, hf: guest(c.hf), dcp: guest(c.dcp), back: c.back && guest(c.back) });
        return r;
      };
      const main = "torchtitan@main";
      const v02 = "torchtitan@0.2";
      await convert({ name: "qwen3-moe@main", kind: "qwen3", hf: h("qwen3-moe"), dcp: h("o/qm-main"), target: main, back: h("o/qm-main-back") }, 1);
      await convert({ name: "qwen3-moe@0.2", kind: "qwen3", hf: h("qwen3-moe"), dcp: h("o/qm-02"), target: v02, back: h("o/qm-02-back") }, 1);
      await convert({ name: "qwen3-moe@main no-expert-bias", kind: "qwen3", hf: h("qwen3-moe"), dcp: h("o/qm-nobias"), target: main, expert_bias: false }, 1, ["expert_bias"]);
      await convert({ name: "qwen3-dense-tied@main", kind: "qwen3", hf: h("qwen3-dense"), dcp: h("o/qd-main"), target: main, back: h("o/qd-back") }, 1);
      await convert({ name: "qwen3-dense-tied@0.2", kind: "qwen3", hf: h("qwen3-dense"), dcp: h("o/qd-02"), target: v02 }, 1);
      const ds = await convert({ name: "deepseek@main", kind: "deepseek_v3", hf: h("deepseek"), dcp: h("o/ds-main"), target: main, back: h("o/ds-main-back") }, 1);
      await convert({ name: "deepseek@0.2", kind: "deepseek_v3", hf: h("deepseek"), dcp: h("o/ds-02"), target: v02, back: h("o/ds-02-back") }, 1);
      await convert({ name: "deepseek-lite@main", kind: "deepseek_v3", hf: h("deepseek-lite"), dcp: h("o/dsl-main"), target: main, back: h("o/dsl-back") }, 1);
      assert.ok(ds.plan.skipped.some((s) => s.name === "model.layers.3.enorm.weight"), "MTP layer reported");

      await convert({ name: "qwen3-moe@main w4", kind: "qwen3", hf: h("qwen3-moe"), dcp: h("o/qm-main-w4"), target: main }, 4);
      await convert({ name: "qwen3-moe-e2@0.2 w4", kind: "qwen3", hf: h("qwen3-moe-e2"), dcp: h("o/qm2-02-w4"), target: v02 }, 4);
      await convert({ name: "qwen3-moe-e2@main w4", kind: "qwen3", hf: h("qwen3-moe-e2"), dcp: h("o/qm2-main-w4"), target: main }, 4);
      await convert({ name: "deepseek@main w4", kind: "deepseek_v3", hf: h("deepseek"), dcp: h("o/ds-main-w4"), target: main }, 4);
      await convert({ name: "deepseek@0.2 w4", kind: "deepseek_v3", hf: h("deepseek"), dcp: h("o/ds-02-w4"), target: v02 }, 4);

      writeFileSync(h("single.json"), JSON.stringify(single));
      const out = await env.python(PY_SINGLE, [guest(h("single.json"))]);
      const res = JSON.parse(out.trim().split("\n").pop()!) as { bad: unknown[]; counts: Record<string, number>; torch: string };
      assert.deepEqual(res.bad, [], `mismatches under torch ${res.torch}`);
      assert.deepEqual(Object.keys(res.counts).sort(), [...single.map((c) => c.name), ...single.filter((c) => c.back).map((c) => c.name + "/back")].sort());
      assert.equal(res.counts["qwen3-moe@main"], 40);
      assert.equal(res.counts["qwen3-moe@main no-expert-bias"], 38);
      assert.equal(res.counts["deepseek@main"], 49);

      writeFileSync(h("rank.py"), PY_RANK);
      writeFileSync(h("sharded.json"), JSON.stringify(sharded));
      const lout = await env.python(PY_LAUNCH, [guest(h("rank.py")), guest(h("sharded.json")), "4"], { timeoutMs: 300_000 });
      const ranks = JSON.parse(lout.trim().split("\n").pop()!) as { code: number; out: string; err: string }[];
      assert.equal(ranks.length, 4);
      for (const [r, x] of ranks.entries()) {
        assert.equal(x.code, 0, `rank ${r} exited ${x.code}:\n${x.err}\n${x.out}`);
        const rr = JSON.parse(x.out.trim().split("\n").pop()!) as { rank: number; bad: unknown[]; counts: Record<string, { tensors: number; shard1: string[] }> };
        assert.deepEqual(rr.bad, [], `rank ${r} mismatches`);
        assert.deepEqual(Object.keys(rr.counts).sort(), sharded.map((c) => c.name).sort());
        // E = 2 < 4 ranks: the three expert stacks of each layer load as Shard(1); E = 4 and 8 stay Shard(0)
        assert.equal(rr.counts["qwen3-moe-e2@0.2 w4"]!.shard1.length, 6);
        assert.equal(rr.counts["qwen3-moe-e2@main w4"]!.shard1.length, 6);
        assert.equal(rr.counts["qwen3-moe@main w4"]!.shard1.length, 0);
        assert.equal(rr.counts["deepseek@main w4"]!.shard1.length, 0);
      }
    } finally {
      tmp.cleanup();
    }
  });
}
