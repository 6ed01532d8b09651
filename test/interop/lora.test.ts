// Interop with PyTorch for LoRA / DoRA (numerics.md §9, torchtitan-layout.md §3, §11): on a tiny f32 Llama 3 and
// random PEFT-style adapters (q, k, v, o; plain, rsLoRA, DoRA, DoRA + rsLoRA),
//  - (W_tt + s·B_tt·A_tt) from ckpt's TorchTitan-layout files equals the TorchTitan-layout permutation (written here
//    in Python from §3.2, independently of ckpt) of (W_hf + s·B_hf·A_hf), all computed by PyTorch in f32;
//  - ckpt's merge matches PyTorch's f32 merge (PEFT's formula) within 1 ulp of f32 (measured: bit-identical on the
//    CPU builds here), and both are equally close to the exact (f64) merge;
//  - after RNE to bf16, ckpt and PyTorch differ only where the two f32 values straddle a bf16 rounding boundary;
//  - the exported PEFT adapter has PEFT's names, shapes and config fields; export → convert is byte-identical;
//  - `inspect --health` flags defects planted by PyTorch (NaN, zero B, exploding A, mixed dtypes, fp16 overflow).
// PEFT itself is not installed in the roots; its merge formulas are re-implemented in the script.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeTinyLlama } from "../../src/fixtures/tiny-llama.js";
import { tinyPeftAdapter, writePeftAdapter } from "../../src/fixtures/tiny-lora.js";
import { runHealth } from "../../src/health/index.js";
import { loraConvert, loraExport } from "../../src/commands/lora-convert.js";
import { loraMerge } from "../../src/commands/lora-merge.js";
import { runConvert } from "../../src/commands/convert.js";
import { availableSuites } from "./torch.js";

const PY_LORA = String.raw`
import sys, json, math, os, tempfile
import numpy as np, torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

spec = json.load(open(sys.argv[1]))
H, HKV, HD, LAYERS = spec["n_heads"], spec["n_kv_heads"], spec["head_dim"], spec["layers"]
TT = {"q_proj": "attention.qkv_linear.wq", "k_proj": "attention.qkv_linear.wk", "v_proj": "attention.qkv_linear.wv", "o_proj": "attention.wo"}
HEADS = {"q_proj": H, "k_proj": HKV, "v_proj": None, "o_proj": None}
LORA_CONFIG_FIELDS = {"alpha_pattern", "auto_mapping", "base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode",
    "init_lora_weights", "layer_replication", "layers_pattern", "layers_to_transform", "loftq_config", "lora_alpha", "lora_dropout",
    "megatron_config", "megatron_core", "modules_to_save", "peft_type", "r", "rank_pattern", "revision", "target_modules",
    "task_type", "use_dora", "use_rslora"}

def load_dcp(d):
    fd, p = tempfile.mkstemp(suffix=".pt", dir=spec["tmp"]); os.close(fd)
    dcp_to_torch_save(d, p)
    sd = torch.load(p, weights_only=True)
    os.remove(p)
    return sd

def to_tt(x, heads):
    # torchtitan-layout.md 3.2: TT row h*hd + 2j + c takes HF row h*hd + c*hd/2 + j (TorchTitan's reverse_permute)
    if heads is None:
        return x
    return x.reshape(heads, 2, HD // 2, *x.shape[1:]).transpose(1, 2).reshape(x.shape).contiguous()

def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))

def merge(W, A, B, s, m, dt):
    # PEFT: delta = (B @ A) * scaling; DoRA: weight_norm = ||W + delta|| per output row; W' = (m / norm) * (W + delta)
    W, A, B = W.to(dt), A.to(dt), B.to(dt)
    V = W + (B @ A) * s
    if m is not None:
        n = torch.linalg.norm(V, dim=1)
        V = (m.to(dt) / n).view(-1, 1) * V
    return V

def spacing(x):
    return torch.from_numpy(np.spacing(x.abs().float().numpy()).astype(np.float64))

def ulps(x, ref):
    # |x - ref| in f32 ulps at |ref|
    return ((x.double() - ref.double()).abs() / spacing(ref.double()))

def stats(u):
    return {"max": float(u.max()), "gt1": int((u > 1).sum()), "gt0": int((u > 0).sum()), "n": u.numel()}

def combine(acc, s):
    if acc is None:
        return dict(s)
    return {"max": max(acc["max"], s["max"]), "gt1": acc["gt1"] + s["gt1"], "gt0": acc["gt0"] + s["gt0"], "n": acc["n"] + s["n"]}

hf = load_file(spec["hf_base"])
tt_base = load_dcp(spec["tt_base"])
results = []
for v in spec["variants"]:
    cfg = json.load(open(os.path.join(v["peft"], "adapter_config.json")))
    r, alpha = cfg["r"], cfg["lora_alpha"]
    s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    dora = bool(cfg.get("use_dora"))
    peft = load_file(os.path.join(v["peft"], "adapter_model.safetensors"))
    tt_ad = load_dcp(v["tt_adapter_dcp"])
    tt_ad_st = load_file(v["tt_adapter_st"])
    meta = json.load(open(os.path.join(v["tt_adapter_dcp"], "lora_config.json")))
    ours_hf32 = load_file(os.path.join(v["merged_hf_f32"], "model.safetensors"))
    ours_hf16 = load_file(os.path.join(v["merged_hf_bf16"], "model.safetensors"))
    ours_tt32 = load_dcp(v["merged_tt_f32"])
    res = {"name": v["name"], "scale": s, "meta_scale": meta["scale"], "conversion_exact": True, "names_ok": True, "problems": []}
    acc = {k: None for k in ["tt_equiv", "vs32_res", "vs64", "tt_vs32_res", "torch32_vs64"]}
    bf = {"n": 0, "mismatch": 0, "not_adjacent": 0, "not_straddling": 0, "ours_cast_diff": 0}
    expected_tt_keys = set()
    for L in range(LAYERS):
        for mod, ttm in TT.items():
            p = f"base_model.model.model.layers.{L}.self_attn.{mod}"
            q = f"layers.{L}.{ttm}"
            heads = HEADS[mod]
            A, B = peft[p + ".lora_A.weight"], peft[p + ".lora_B.weight"]
            M = peft.get(p + ".lora_magnitude_vector") if dora else None
            W = hf[f"model.layers.{L}.self_attn.{mod}.weight"]
            keys = [q + ".lora_a.weight", q + ".lora_b.weight"] + ([q + ".magnitude"] if dora else [])
            expected_tt_keys.update(keys)
            for store in (tt_ad, tt_ad_st):
                if any(k not in store for k in keys):
                    res["names_ok"] = False
                    continue
                exact = same_bits(store[q + ".lora_a.weight"], A) and same_bits(store[q + ".lora_b.weight"], to_tt(B, heads))
                if dora:
                    exact = exact and same_bits(store[q + ".magnitude"], to_tt(M, heads))
                if not exact:
                    res["conversion_exact"] = False
                    res["problems"].append(q)
            if not same_bits(tt_base[q + ".weight"], to_tt(W, heads)):
                res["conversion_exact"] = False
            s_tt = meta["modules"][q]["scale"]
            Wt, At, Bt = tt_base[q + ".weight"], tt_ad[q + ".lora_a.weight"], tt_ad[q + ".lora_b.weight"]
            Mt = tt_ad[q + ".magnitude"] if dora else None
            # (W_tt + s B_tt A_tt) vs TT-layout permutation of (W_hf + s B_hf A_hf), both by PyTorch in f32
            lhs = merge(Wt, At, Bt, s_tt, Mt, torch.float32)
            ref32 = merge(W, A, B, s, M, torch.float32)
            ref64 = merge(W, A, B, s, M, torch.float64)
            acc["tt_equiv"] = combine(acc["tt_equiv"], stats(ulps(lhs, to_tt(ref32, heads))))
            # ckpt's merge vs PyTorch's f32 merge and vs the exact (f64) merge rounded to f32, in f32 ulps of the result
            ours = ours_hf32[f"model.layers.{L}.self_attn.{mod}.weight"]
            acc["vs32_res"] = combine(acc["vs32_res"], stats(ulps(ours, ref32)))
            acc["vs64"] = combine(acc["vs64"], stats(ulps(ours, ref64.float())))
            # PyTorch's own f32 error
            acc["torch32_vs64"] = combine(acc["torch32_vs64"], stats(ulps(ref32, ref64.float())))
            ours_tt = ours_tt32[q + ".weight"]
            acc["tt_vs32_res"] = combine(acc["tt_vs32_res"], stats(ulps(ours_tt, to_tt(ref32, heads))))
            if not same_bits(ours_tt, to_tt(ours, heads)):
                res["problems"].append("tt merge != permuted hf merge: " + q)
            # bf16: ckpt's RNE cast equals PyTorch's; other differences only across a rounding boundary
            o16 = ours_hf16[f"model.layers.{L}.self_attn.{mod}.weight"]
            bf["ours_cast_diff"] += int((o16.view(torch.int16) != ours.to(torch.bfloat16).view(torch.int16)).sum())
            t16 = ref32.to(torch.bfloat16)
            diff = (o16.view(torch.int16) != t16.view(torch.int16)).reshape(-1)
            bf["n"] += diff.numel()
            idx = diff.nonzero().reshape(-1)
            bf["mismatch"] += idx.numel()
            for i in idx.tolist():
                x, y = float(ours.reshape(-1)[i]), float(ref32.reshape(-1)[i])
                a, b = float(o16.reshape(-1)[i]), float(t16.reshape(-1)[i])
                lo16, hi16 = min(a, b), max(a, b)
                # adjacent bf16 values: the next bf16 above lo16 is hi16
                nxt = torch.tensor([lo16], dtype=torch.bfloat16).view(torch.int16)
                nxt = (nxt + (1 if lo16 >= 0 else -1)).view(torch.bfloat16) if lo16 != 0 else None
                if nxt is None or float(nxt) != hi16:
                    bf["not_adjacent"] += 1
                mid = (lo16 + hi16) / 2  # the rounding boundary between them (exact in f64)
                if not (min(x, y) <= mid <= max(x, y)):
                    bf["not_straddling"] += 1
    res["names_ok"] = res["names_ok"] and set(tt_ad) == expected_tt_keys and set(tt_ad_st) == expected_tt_keys
    res.update(acc)
    res["bf16"] = bf
    # exported PEFT adapter: PEFT's key names and shapes, the original bytes, a config PEFT's LoraConfig accepts
    exp = load_file(os.path.join(v["exported"], "adapter_model.safetensors"))
    ecfg = json.load(open(os.path.join(v["exported"], "adapter_config.json")))
    res["export_same_keys"] = sorted(exp) == sorted(peft)
    res["export_same_bits"] = all(same_bits(exp[k], peft[k]) for k in peft if k in exp)
    shape_ok = True
    for k, t in exp.items():
        mod = k[len("base_model.model."):].rsplit(".lora_", 1)[0]
        Wk = hf.get(mod + ".weight")
        if Wk is None:
            shape_ok = False
        elif k.endswith(".lora_A.weight"):
            shape_ok &= list(t.shape) == [ecfg["r"], Wk.shape[1]]
        elif k.endswith(".lora_B.weight"):
            shape_ok &= list(t.shape) == [Wk.shape[0], ecfg["r"]]
        elif k.endswith(".lora_magnitude_vector"):
            shape_ok &= list(t.shape) == [Wk.shape[0]]
        else:
            shape_ok = False
    res["export_shapes_ok"] = bool(shape_ok)
    res["export_unknown_fields"] = sorted(set(ecfg) - LORA_CONFIG_FIELDS)
    res["export_config"] = {k: ecfg.get(k) for k in ["peft_type", "task_type", "r", "lora_alpha", "use_rslora", "use_dora", "fan_in_fan_out", "target_modules", "bias", "base_model_name_or_path"]}
    res["source_config"] = {k: cfg.get(k) for k in ["r", "lora_alpha", "use_rslora", "use_dora", "target_modules", "base_model_name_or_path"]}
    results.append(res)
print(json.dumps({"torch": torch.__version__, "results": results}))
`;

// argv: out folder, source HF folder (guest paths). Writes checkpoints with planted defects, saved by PyTorch.
const PY_HEALTH = String.raw`
import sys, os, json, shutil, torch
from safetensors.torch import load_file, save_file
out, src, peft_dir = sys.argv[1], sys.argv[2], sys.argv[3]
base = load_file(os.path.join(src, "model.safetensors"))
peft = load_file(os.path.join(peft_dir, "adapter_model.safetensors"))
def save(name, sd):
    d = os.path.join(out, name)
    os.makedirs(d)
    save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
save("clean", {k: v.to(torch.bfloat16) for k, v in base.items()})
save("clean_adapter", peft)
sd = {k: v.clone() for k, v in base.items()}
sd["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
save("nan", sd)
sd = {k: (torch.zeros_like(v) if ".lora_B." in k else v) for k, v in peft.items()}
save("zero_b", sd)
sd = {k: v.clone() for k, v in peft.items()}
sd["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"] *= 1000
save("exploding_a", sd)
sd = {k: v.to(torch.bfloat16) for k, v in base.items()}
sd["model.layers.0.self_attn.k_proj.weight"] = sd["model.layers.0.self_attn.k_proj.weight"].to(torch.float16)
save("mixed_dtypes", sd)
sd = {k: v.clone() for k, v in base.items()}
sd["model.norm.weight"][0] = 1e5
save("fp16_overflow", sd)
print("ok")
`;

const VARIANTS = [
  { name: "lora", dora: false, rslora: false, r: 8, alpha: 16 },
  { name: "rslora", dora: false, rslora: true, r: 8, alpha: 16 },
  { name: "dora", dora: true, rslora: false, r: 4, alpha: 8 },
  { name: "dora+rslora", dora: true, rslora: true, r: 16, alpha: 32 },
];

interface Acc { max: number; gt1: number; gt0: number; n: number }
interface PyResult {
  name: string; scale: number; meta_scale: number; conversion_exact: boolean; names_ok: boolean; problems: string[];
  tt_equiv: Acc; vs32_res: Acc; vs64: Acc; tt_vs32_res: Acc; torch32_vs64: Acc;
  bf16: { n: number; mismatch: number; not_adjacent: number; not_straddling: number; ours_cast_diff: number };
  export_same_keys: boolean; export_same_bits: boolean; export_shapes_ok: boolean; export_unknown_fields: string[];
  export_config: Record<string, unknown>; source_config: Record<string, unknown>;
}

const suites = availableSuites();
if (suites.length === 0) test("LoRA interop with PyTorch", { skip: "no PyTorch root (test/interop/setup-torch-root.sh)" }, () => {});

for (const env of suites) {
  test(`[${env.suite}] LoRA/DoRA/rsLoRA: TorchTitan-layout equivalence, merge vs PyTorch in f32 ulps and bf16, export`, { timeout: 600_000 }, async (ctx) => {
    const t = env.tmpdir();
    try {
      const h = (p: string) => join(t.host, p);
      const g = (p: string) => `${t.guest}/${p}`;
      const layers = 3;
      const base = writeTinyLlama(h("base"), { dtype: "F32", layers });
      await runConvert({ source: h("base"), out: h("base-tt"), threads: 0 });
      const variants = [];
      for (const v of VARIANTS) {
        const ad = tinyPeftAdapter(base.tensors, { dora: v.dora, rslora: v.rslora, r: v.r, alpha: v.alpha, seed: 99 + v.r, bScale: 0.2 });
        writePeftAdapter(h(`${v.name}/peft`), ad);
        await loraConvert({ adapter: h(`${v.name}/peft`), out: h(`${v.name}/tt`), base: h("base") });
        await loraConvert({ adapter: h(`${v.name}/peft`), out: h(`${v.name}/tt.safetensors`), base: h("base"), format: "safetensors" });
        await loraMerge({ base: h("base"), adapter: h(`${v.name}/peft`), out: h(`${v.name}/m32`) });
        await loraMerge({ base: h("base"), adapter: h(`${v.name}/peft`), out: h(`${v.name}/m16`), dtype: "bf16" });
        await loraMerge({ base: h("base-tt"), adapter: h(`${v.name}/tt`), out: h(`${v.name}/mtt`) });
        await loraExport({ input: h(`${v.name}/tt`), out: h(`${v.name}/exported`), config: h("base") });
        // export → convert: byte-identical
        await loraConvert({ adapter: h(`${v.name}/exported`), out: h(`${v.name}/tt2`), base: h("base") });
        for (const f of readdirSync(h(`${v.name}/tt`))) {
          assert.ok(readFileSync(h(`${v.name}/tt/${f}`)).equals(readFileSync(h(`${v.name}/tt2/${f}`))), `${v.name}: ${f} differs after export → convert`);
        }
        variants.push({
          name: v.name, peft: g(`${v.name}/peft`), tt_adapter_dcp: g(`${v.name}/tt`), tt_adapter_st: g(`${v.name}/tt.safetensors`),
          merged_hf_f32: g(`${v.name}/m32`), merged_hf_bf16: g(`${v.name}/m16`), merged_tt_f32: g(`${v.name}/mtt`), exported: g(`${v.name}/exported`),
        });
      }
      const spec = { n_heads: 4, n_kv_heads: 2, head_dim: 16, layers, tmp: t.guest, hf_base: g("base/model.safetensors"), tt_base: g("base-tt"), variants };
      writeFileSync(h("spec.json"), JSON.stringify(spec));
      const out = JSON.parse((await env.python(PY_LORA, [g("spec.json")])).trim().split("\n").pop()!) as { torch: string; results: PyResult[] };
      const summary: string[] = [];
      for (const r of out.results) summary.push(`${r.name}: W_tt+sB_ttA_tt vs P(W+sBA) max ${r.tt_equiv.max} ulp; ckpt vs torch f32: max ${r.vs32_res.max.toFixed(2)} ulp of result, identical ${r.vs32_res.n - r.vs32_res.gt0}/${r.vs32_res.n} (TT layout: max ${r.tt_vs32_res.max.toFixed(2)}, identical ${r.tt_vs32_res.n - r.tt_vs32_res.gt0}); ckpt vs f64-exact max ${r.vs64.max.toFixed(2)} ulp; torch f32 vs exact: max ${r.torch32_vs64.max.toFixed(2)} ulp of result (>1: ${r.torch32_vs64.gt1}); bf16 diffs ${r.bf16.mismatch}/${r.bf16.n}`);
      for (const line of summary) ctx.diagnostic(`[${env.suite} torch ${out.torch}] ${line}`);
      for (const r of out.results) {
        const v = VARIANTS.find((x) => x.name === r.name)!;
        const where = `[${env.suite} torch ${out.torch}] ${r.name}`;
        assert.ok(r.names_ok, `${where}: TorchTitan names`);
        assert.ok(r.conversion_exact, `${where}: conversion not bit-exact: ${r.problems.join(", ")}`);
        assert.deepEqual(r.problems, [], where);
        assert.equal(r.meta_scale, r.scale, `${where}: recorded scale`);
        // (W_tt + s·B_tt·A_tt) = P(W_hf + s·B_hf·A_hf) in f32 within 1 ulp (matmul order may differ)
        assert.ok(r.tt_equiv.max <= 1, `${where}: TorchTitan-layout equivalence ${JSON.stringify(r.tt_equiv)}`);
        // ckpt's merge vs PyTorch's f32 merge: within 1 ulp of the result, HF and TorchTitan layouts (the bar;
        // a different BLAS may order B·A's r-term sums differently)
        assert.ok(r.vs32_res.max <= 1, `${where}: vs PyTorch f32 merge ${JSON.stringify(r.vs32_res)}`);
        assert.ok(r.tt_vs32_res.max <= 1, `${where}: TorchTitan merge vs PyTorch f32 merge ${JSON.stringify(r.tt_vs32_res)}`);
        // computing in f32 like PEFT, ckpt is no further from the exact merge than PyTorch is
        assert.ok(r.vs64.max <= Math.max(1, r.torch32_vs64.max + 1), `${where}: vs exact ${JSON.stringify(r.vs64)}, PyTorch ${JSON.stringify(r.torch32_vs64)}`);
        // bf16: ckpt's cast is PyTorch's RNE; remaining differences straddle a rounding boundary, and are rare
        assert.equal(r.bf16.ours_cast_diff, 0, `${where}: RNE cast`);
        assert.equal(r.bf16.not_adjacent, 0, `${where}: bf16 differences must be one bf16 ulp`);
        assert.equal(r.bf16.not_straddling, 0, `${where}: bf16 differences must straddle a boundary`);
        assert.ok(r.bf16.mismatch <= Math.max(3, r.bf16.n / 10_000), `${where}: ${r.bf16.mismatch} bf16 differences of ${r.bf16.n}`);
        // export
        assert.ok(r.export_same_keys && r.export_same_bits && r.export_shapes_ok, `${where}: exported adapter`);
        assert.deepEqual(r.export_unknown_fields, [], `${where}: adapter_config fields PEFT's LoraConfig does not know`);
        const c = r.export_config;
        assert.equal(c.peft_type, "LORA");
        assert.equal(c.task_type, "CAUSAL_LM");
        assert.equal(c.bias, "none");
        assert.equal(c.fan_in_fan_out, false);
        for (const k of ["r", "lora_alpha", "use_rslora", "use_dora", "base_model_name_or_path"]) assert.deepEqual(c[k], r.source_config[k], `${where}: ${k}`);
        assert.deepEqual([...(c.target_modules as string[])].sort(), [...(r.source_config.target_modules as string[])].sort());
      }
    } finally {
      t.cleanup();
    }
  });

  test(`[${env.suite}] inspect --health flags defects planted by PyTorch and passes a clean checkpoint`, { timeout: 300_000 }, async () => {
    const t = env.tmpdir();
    try {
      const h = (p: string) => join(t.host, p);
      const g = (p: string) => `${t.guest}/${p}`;
      const base = writeTinyLlama(h("base"), { dtype: "F32" });
      writePeftAdapter(h("peft"), tinyPeftAdapter(base.tensors));
      await env.python(PY_HEALTH, [g("cases"), g("base"), g("peft")]);
      const expect: Record<string, string[]> = {
        clean: [], clean_adapter: [],
        nan: ["NAN:model.layers.1.mlp.down_proj.weight"],
        zero_b: ["LORA_ZERO_B"],
        exploding_a: ["NORM_SPIKE:base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight", "LORA_RATIO:base_model.model.model.layers.1.self_attn.q_proj"],
        mixed_dtypes: ["MIXED_DTYPES"],
        fp16_overflow: ["F16_OVERFLOW:model.norm.weight"],
      };
      for (const [name, codes] of Object.entries(expect)) {
        const r = await runHealth(h(`cases/${name}`), { f16: true });
        const got = r.findings.filter((f) => f.severity !== "info").map((f) => `${f.code}${f.tensor ? ":" + f.tensor : ""}`);
        if (codes.length === 0) {
          assert.equal(r.ok, true, `${name}: ${JSON.stringify(got)}`);
          continue;
        }
        assert.equal(r.ok, false, name);
        for (const c of codes) assert.ok(got.some((x) => x === c || x.startsWith(c + ":")), `${name}: expected ${c} in ${JSON.stringify(got)}`);
        if (name === "zero_b") assert.equal(got.length, 8);
      }
    } finally {
      t.cleanup();
    }
  });
}
