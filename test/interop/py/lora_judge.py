# TorchTitan's own LoRA model judges ckpt's LoRA checkpoints against real PEFT on transformers.
#
# usage (sid root, PYTHONPATH=/opt/stubs:/opt/spmd:/opt/tt:/opt/peft, TORCHDYNAMO_DISABLE=1):
#   lora_judge.py make-peft LIST_JSON             PEFT adapters made by PEFT itself (get_peft_model + save_pretrained), [{hf, out, spec}]
#   lora_judge.py cases CASES_JSON                each case {name, mode, hf, ckpt, lora:{rank,alpha,target_modules}, ...}
# Prints one JSON line with every case's figures (the caller judges them: real cases ok, controls not ok).
#
# The TorchTitan model: the judge's Config for the architecture (judge.py, fuse_qkv=True as every flavor builds it),
# rewritten by TorchTitan's own LoRAConverter(LoRAConverter.Config(rank, alpha, target_modules)).convert(config),
# built, every parameter NaN, then loaded as TorchTitan's checkpointer loads (ModelWrapper + strict key set + dcp.load +
# ModelWrapper.load_state_dict, judge.load_like_torchtitan). The reference: transformers' model of the HF base with
# PeftModel.from_pretrained(adapter). Both in f32; max |Δlogit| relative to the logit scale, as stored and with every
# RMSNorm weight ×16 on both sides (judge.py's norm-boosted pass).
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import json
import math
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import judge  # noqa: E402  (its module-level setup: f32 experts, gpt_oss seams)

from torchtitan.components.lora import LoRAConverter  # noqa: E402

TOL = {1.0: 2e-5, 16.0: 1e-3}  # relative max |Δlogit|: the 2e-5 as stored; judge.py's bound for the ill-conditioned ×16 pass
ARCH = judge.ARCH_OF_MODEL_TYPE


def cfg_of(hf):
    return json.load(open(os.path.join(hf, "config.json")))


def tt_lora_model(arch, cfg, lora):
    """judge.tt_model (build on meta, to_empty, init_weights, f32) with its Config rewritten by TorchTitan's LoRAConverter."""
    conv = LoRAConverter(LoRAConverter.Config(rank=lora["rank"], alpha=float(lora["alpha"]), target_modules=lora["target_modules"]))
    saved = judge.qwen3_config, dict(judge.BUILDERS)
    judge.qwen3_config = lambda c, expert_bias=True: conv.convert(saved[0](c, expert_bias))
    judge.BUILDERS[arch] = lambda c: conv.convert(saved[1][arch](c))
    try:
        return judge.tt_model(arch, cfg, True)
    finally:
        judge.qwen3_config = saved[0]
        judge.BUILDERS.clear()
        judge.BUILDERS.update(saved[1])


def hf_logits(hf_dir, cfg, adapter, tokens, factor):
    model = judge.hf_model(hf_dir, cfg)
    if adapter:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, adapter).eval()
    judge.scale_norms(model, factor)
    with torch.no_grad():
        return model(tokens).logits.to(judge.DTYPE)


def compare(a, b, factor):
    scale = float(a.abs().max())
    d = float((a - b).abs().max()) if torch.isfinite(b).all() else float("inf")
    rel = d / max(1.0, scale)
    return {"norm_scale": factor, "max_abs": d, "logit_scale": scale, "rel": rel, "tol": TOL[factor], "ok": rel <= TOL[factor]}


def lora_tensors(model):
    return {k: v for k, v in judge.persistent_tensors(model).items() if ".lora_a." in k or ".lora_b." in k}


def perturb(model, what, cfg):
    """Controls: what a wrong converter would have loaded."""
    with torch.no_grad():
        for k, t in lora_tensors(model).items():
            if what == "zero_lora_b" and ".lora_b." in k:
                t.zero_()
            elif what == "qk_hf_order" and k.endswith("wqkv.lora_b.weight"):
                # the q and k rows of each KV group back in HF's rotate-half order (ckpt's permutation undone)
                H, Hkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], judge.head_dim_of(cfg)
                v = t.view(Hkv, H // Hkv + 2, hd, -1)
                qk = v[:, : H // Hkv + 1]
                qk.copy_(qk.reshape(Hkv, H // Hkv + 1, hd // 2, 2, -1).transpose(2, 3).reshape(qk.shape).clone())
            elif what == "split_qk_swapped" and k.endswith("in_proj_q.lora_b.weight"):
                # the key_dim row blocks of B that went to in_proj_q and in_proj_k exchanged (same shapes)
                other = lora_tensors(model)[k.replace("in_proj_q.", "in_proj_k.")]
                q = t.clone()
                t.copy_(other)
                other.copy_(q)


def run_case(c):
    cfg = cfg_of(c["hf"])
    arch = c.get("arch") or ARCH[cfg["model_type"]]
    gen = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, cfg["vocab_size"], (2, 16), generator=gen)
    tt = tt_lora_model(arch, cfg, c["lora"])
    err = judge.load_like_torchtitan(tt, c["ckpt"])
    if err:
        return {"name": c["name"], "ok": False, "load": err}
    res = {"name": c["name"], "passes": [], "lora_tensors": len(lora_tensors(tt))}
    if c["mode"] == "fresh":
        # LoRALinear's init: lora_b zeros, lora_a within kaiming_uniform(a=√5)'s bound 1/√in
        worst = 0.0
        for k, t in lora_tensors(tt).items():
            if ".lora_b." in k:
                res.setdefault("b_nonzero", 0)
                res["b_nonzero"] += int((t != 0).sum())
            else:
                worst = max(worst, float(t.abs().max()) * math.sqrt(t.shape[1]))
                res["a_std_ratio"] = min(res.get("a_std_ratio", 9.0), float(t.std()) * math.sqrt(3 * t.shape[1]))
        res["a_max_over_bound"] = worst
    if c.get("perturb"):
        perturb(tt, c["perturb"], cfg)
    if c["mode"] == "export-save":
        return save_moved(c, tt, cfg)
    saved = {}
    for factor in (1.0, 16.0):
        ref = hf_logits(c["hf"], cfg, c.get("peft"), tokens, factor)
        judge.scale_norms(tt, factor)
        with torch.no_grad():
            got = judge.forward_tt(tt, tokens).to(judge.DTYPE)
        judge.scale_norms(tt, 1 / factor)
        res["passes"].append(compare(ref, got, factor))
        saved[factor] = got
    if c.get("tt_logits"):
        # what an export of this checkpoint must make PEFT compute (run_export_check)
        torch.save(saved, c["tt_logits"])
    ok = all(p["ok"] for p in res["passes"])
    if c["mode"] == "fresh":
        ok = ok and res.get("b_nonzero", 0) == 0 and res["a_max_over_bound"] <= 1.0 and res["a_std_ratio"] > 0.8
    res["ok"] = ok
    return res


def save_moved(c, tt, cfg):
    """Moves the adapters (seeded noise, as training would), then saves with TorchTitan's own CheckpointManager: model
    keys flattened at the top level beside optimizer (AdamW after a step), lr_scheduler, dataloader and train_state."""
    import torch.distributed as dist
    from torchtitan.components.checkpointer.dcp import CheckpointManager
    from torchtitan.components.checkpointer.base import ModelWrapper
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29517", rank=0, world_size=1)
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for k, t in lora_tensors(tt).items():
            t.add_(torch.randn(t.shape, generator=g) * (0.05 if ".lora_b." in k else 0.0))
    params = [p for p in tt.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    # flex attention has no backward on CPU: random gradients stand in for one step's, so AdamW has state to save
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    opt.zero_grad()

    class Optimizers(torch.distributed.checkpoint.stateful.Stateful):
        def state_dict(self):
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, StateDictOptions
            return get_optimizer_state_dict(tt, opt, options=StateDictOptions(flatten_optimizer_state_dict=True))

        def load_state_dict(self, sd):
            pass

    class Plain(torch.distributed.checkpoint.stateful.Stateful):
        def __init__(self, d):
            self.d = d

        def state_dict(self):
            return self.d

        def load_state_dict(self, sd):
            self.d = sd

    conf = CheckpointManager.Config(enable=True, folder="checkpoint", interval=1, keep_latest_k=0)
    mgr = CheckpointManager(conf, dataloader=Plain({"position": torch.tensor([3])}), model_parts=[tt], optimizers=Optimizers(),
                            lr_schedulers=Plain({"last_epoch": torch.tensor(1)}), states={"train_state": Plain({"step": torch.tensor(1), "ntokens_seen": torch.tensor(8)})},
                            sd_adapter=None, base_folder=c["save_dir"])
    mgr.save(curr_step=1)
    mgr.close()
    tokens = torch.randint(0, cfg["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1234))
    out = {}
    for factor in (1.0, 16.0):
        judge.scale_norms(tt, factor)
        with torch.no_grad():
            out[factor] = judge.forward_tt(tt, tokens).to(judge.DTYPE)
        judge.scale_norms(tt, 1 / factor)
    torch.save(out, c["tt_logits"])
    b_norm = sum(float(t.norm()) for k, t in lora_tensors(tt).items() if ".lora_b." in k)
    return {"name": c["name"], "ok": True, "saved": os.path.join(c["save_dir"], "checkpoint", "step-1"), "b_norm": b_norm}


def run_export_check(c):
    """PEFT (transformers + PeftModel on ckpt's exported folder) must compute the logits TorchTitan computed."""
    cfg = cfg_of(c["hf"])
    want = torch.load(c["tt_logits"])
    tokens = torch.randint(0, cfg["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1234))
    res = {"name": c["name"], "passes": []}
    for factor in (1.0, 16.0):
        res["passes"].append(compare(hf_logits(c["hf"], cfg, c["peft"], tokens, factor), want[factor], factor))
    res["ok"] = all(p["ok"] for p in res["passes"])
    return res


def run_merged_check(c):
    """`ckpt lora merge` of TorchTitan's checkpoint, loaded into TorchTitan's plain model, computes the LoRA model's logits."""
    cfg = cfg_of(c["hf"])
    want = torch.load(c["tt_logits"])
    arch = c.get("arch") or ARCH[cfg["model_type"]]
    tt = judge.tt_model(arch, cfg, True)
    err = judge.load_like_torchtitan(tt, c["ckpt"])
    if err:
        return {"name": c["name"], "ok": False, "load": err}
    tokens = torch.randint(0, cfg["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1234))
    res = {"name": c["name"], "passes": []}
    for factor in (1.0, 16.0):
        judge.scale_norms(tt, factor)
        with torch.no_grad():
            got = judge.forward_tt(tt, tokens).to(judge.DTYPE)
        judge.scale_norms(tt, 1 / factor)
        res["passes"].append(compare(want[factor], got, factor))
    res["ok"] = all(p["ok"] for p in res["passes"])
    return res


def make_peft(hf, out, spec):
    """A PEFT adapter made by PEFT: get_peft_model on transformers' model, random (trained-looking) A and B, save_pretrained."""
    from peft import LoraConfig, get_peft_model
    cfg = cfg_of(hf)
    model = judge.hf_model(hf, cfg)
    lc = LoraConfig(r=spec.get("r", 8), lora_alpha=spec.get("alpha", 16), target_modules=spec["targets"], lora_dropout=0.0,
                    use_rslora=spec.get("rslora", False), use_dora=spec.get("dora", False), rank_pattern=spec.get("rank_pattern", {}),
                    alpha_pattern=spec.get("alpha_pattern", {}), layers_to_transform=spec.get("layers"))
    pm = get_peft_model(model, lc)
    g = torch.Generator().manual_seed(spec.get("seed", 7))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * spec.get("b_scale", 0.05))
    pm.save_pretrained(out)
    return {"saved": out, "modules": sorted({n.split(".lora_")[0] for n, _ in pm.named_parameters() if "lora_A" in n})[:4]}


def main():
    torch.set_num_threads(1)
    if sys.argv[1] == "make-peft":
        print(json.dumps([make_peft(x["hf"], x["out"], x["spec"]) for x in json.load(open(sys.argv[2]))]))
        return
    cases = json.load(open(sys.argv[2]))
    results = []
    for c in cases:
        results.append(run_export_check(c) if c["mode"] == "export-check" else run_merged_check(c) if c["mode"] == "merged-check" else run_case(c))
    import transformers
    import peft
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__, "results": results}))
    # the caller (test/interop/lora-torchtitan.test.ts) asserts per case, with controls that must fail


if __name__ == "__main__":
    main()
