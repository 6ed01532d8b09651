# The model is the judge: TorchTitan's own model, loaded from a ckpt output the way TorchTitan's
# checkpointer loads it, must compute the logits HF transformers computes on the HF source.
#
# usage (sid root, PYTHONPATH=/opt/stubs:/opt/spmd:/opt/tt, TORCHDYNAMO_DISABLE=1):
#   judge.py cases.json                  each case {name, hf, ckpt, arch?, perturb?, seq?, batch?}
#   judge.py --hf DIR --ckpt DIR         one case (test/interop/judge.sh wraps this for users)
# Prints one JSON line: a result per case and norm pass; exits 1 when a case fails.
#
# Both models are built in float32 from config.json alone (tt_config below reads every field that changes the
# computation), every TorchTitan parameter and persistent buffer is NaN before loading (so a tensor the checkpoint
# does not fill cannot pass), the checkpoint's keys must equal the model's state-dict keys exactly (TorchTitan loads
# with strict=False, so an unknown key would otherwise be silently ignored), and every MoE layer must route every
# token to the same experts on both sides. Each case runs twice: as stored, and with every RMSNorm weight ×16 on
# both sides (a power of two: exact), because tiny random models have near-uniform logits that hide wrong layouts.
import os

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import glob
import inspect
import json
import math
import sys
import tempfile
import textwrap

import torch
import torch.nn.functional as F
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM

from torchtitan.components.checkpointer import ModelWrapper
from torchtitan.models.common import ComplexRoPE, CosSinRoPE, Embedding, Linear, RMSNorm
from torchtitan.models.common import moe as tt_moe
from torchtitan.models.common.config_utils import (
    get_attention_config,
    make_ffn_config,
    make_gqa_config,
    make_moe_config,
    make_routed_experts_config,
    make_router_config,
)
import torchtitan.models.llama3 as tt_llama3
import torchtitan.models.qwen3 as tt_qwen3
import torchtitan.models.deepseek_v3 as tt_dsv3

torch.manual_seed(0)
BLOCK = 128  # DeepSeek FP8 weight_block_size
# Diagnosis only: JUDGE_DTYPE=float64 runs both models in f64, to tell f32 rounding from a real difference.
DTYPE = getattr(torch, os.environ.get("JUDGE_DTYPE", "float32"))

# TorchTitan runs routed experts in bf16 (GroupedExperts.forward casts to .bfloat16()). The judge compares in f32,
# so run TorchTitan's own forward with those casts turned into f32 ones; _grouped_mm is TorchTitan's documented
# seam for other precisions: a per-expert loop, since CPU grouped_mm may lack f32.
_src = textwrap.dedent(inspect.getsource(tt_moe.GroupedExperts.forward)).replace(".bfloat16()", ".to(DTYPE)")
_ns = dict(vars(tt_moe), DTYPE=DTYPE)
exec(_src, _ns)
tt_moe.GroupedExperts.forward = _ns["forward"]


def _grouped_mm_f32(self, *, A, B_t, offs):
    out = A.new_zeros(A.shape[0], B_t.shape[-1])
    A, B_t = A.to(DTYPE), B_t.to(DTYPE)
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            out[start:end] = A[start:end] @ B_t[e]
        start = end
    return out


tt_moe.GroupedExperts._grouped_mm = _grouped_mm_f32


# ---------------------------------------------------------------- TorchTitan config from config.json

def rope_scaling(cfg):
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    return rs if rs.get("rope_type", rs.get("type")) not in (None, "default") else {}


def rope_config(cls, cfg, dim):
    rs = rope_scaling(cfg)
    kind = rs.get("rope_type", rs.get("type"))
    theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    kw = dict(dim=dim, max_context_length=cfg["max_position_embeddings"], theta=float(theta))
    if kind == "llama3":
        kw.update(scaling="llama", scaling_factor=float(rs["factor"]), low_freq_factor=float(rs["low_freq_factor"]),
                  high_freq_factor=float(rs["high_freq_factor"]),
                  original_max_position_embeddings=int(rs["original_max_position_embeddings"]))
    elif kind == "yarn":
        kw.update(scaling="yarn", rope_factor=float(rs["factor"]), beta_fast=float(rs.get("beta_fast", 32)),
                  beta_slow=float(rs.get("beta_slow", 1)), original_seq_len=int(rs["original_max_position_embeddings"]))
    elif kind:
        raise SystemExit(f"judge: rope_scaling {kind} has no TorchTitan equivalent here")
    return cls.Config(**kw)


def head_dim_of(cfg):
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def decoder_config(model_cls, cfg, layers):
    dim, vocab = cfg["hidden_size"], cfg["vocab_size"]
    return model_cls.Config(
        dim=dim, vocab_size=vocab, enable_weight_tying=bool(cfg.get("tie_word_embeddings", False)),
        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim, param_init={"weight": torch.nn.init.zeros_}),
        norm=RMSNorm.Config(normalized_shape=dim, param_init={"weight": torch.nn.init.ones_}),
        lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init={"weight": torch.nn.init.zeros_}),
        layers=layers,
        **({"mtp_layers": []} if model_cls is tt_dsv3.DeepSeekV3Model else {}),
    )


def llama3_config(cfg):
    dim, hd = cfg["hidden_size"], head_dim_of(cfg)
    rope = rope_config(ComplexRoPE, cfg, hd)
    layers = []
    for i in range(cfg["num_hidden_layers"]):
        layers.append(tt_llama3.Llama3TransformerBlock.Config(
            attention_norm=RMSNorm.Config(normalized_shape=dim, param_init=tt_llama3._NORM_INIT),
            ffn_norm=RMSNorm.Config(normalized_shape=dim, param_init=tt_llama3._NORM_INIT),
            attention=make_gqa_config(dim=dim, n_heads=cfg["num_attention_heads"], n_kv_heads=cfg.get("num_key_value_heads"),
                                      head_dim=hd, wqkv_param_init=tt_llama3._LINEAR_INIT, wo_param_init=tt_llama3._depth_init(i),
                                      inner_attention=get_attention_config("flex"), fuse_qkv=True, rope=rope),
            feed_forward=make_ffn_config(dim=dim, hidden_dim=cfg["intermediate_size"], w1_param_init=tt_llama3._LINEAR_INIT,
                                         w2w3_param_init=tt_llama3._depth_init(i)),
        ))
    return decoder_config(tt_llama3.Llama3Model, cfg, layers)


def qwen3_is_moe_layer(cfg, i):
    return (cfg.get("num_experts") or 0) > 0 and i not in (cfg.get("mlp_only_layers") or []) \
        and (i + 1) % cfg.get("decoder_sparse_step", 1) == 0


def qwen3_config(cfg, expert_bias=True):
    dim, hd = cfg["hidden_size"], head_dim_of(cfg)
    rope = rope_config(CosSinRoPE, cfg, hd)
    lin = tt_qwen3._LINEAR_INIT
    layers = []
    for i in range(cfg["num_hidden_layers"]):
        moe = ffn = None
        if qwen3_is_moe_layer(cfg, i):
            E, K = cfg["num_experts"], cfg["num_experts_per_tok"]
            moe = make_moe_config(
                num_experts=E, load_balance_coeff=1e-3 if expert_bias else None,
                router=make_router_config(dim=dim, num_experts=E, gate_param_init=lin, top_k=K, score_func="softmax",
                                          route_norm=bool(cfg.get("norm_topk_prob", False))),
                routed_experts=make_routed_experts_config(dim=dim, hidden_dim=cfg["moe_intermediate_size"], num_experts=E, top_k=K,
                                                          param_init=tt_qwen3._EXPERTS_INIT, comm_backend="standard"))
        else:
            ffn = make_ffn_config(dim=dim, hidden_dim=cfg["intermediate_size"], w1_param_init=lin, w2w3_param_init=lin)
        layers.append(tt_qwen3.Qwen3TransformerBlock.Config(
            attention_norm=RMSNorm.Config(normalized_shape=dim), ffn_norm=RMSNorm.Config(normalized_shape=dim),
            attention=make_gqa_config(dim=dim, n_heads=cfg["num_attention_heads"], n_kv_heads=cfg["num_key_value_heads"], head_dim=hd,
                                      wqkv_param_init=lin, wo_param_init=lin, inner_attention=get_attention_config("flex"),
                                      fuse_qkv=True, rope=rope, qk_norm=RMSNorm.Config(normalized_shape=hd)),
            feed_forward=ffn, moe=moe))
    return decoder_config(tt_qwen3.Qwen3Model, cfg, layers)


def deepseek_v3_config(cfg):
    rs = rope_scaling(cfg)
    q_lora = cfg.get("q_lora_rank") or 0
    n_group = cfg.get("n_group") or 1
    layers = tt_dsv3._build_dsv3_layers(
        n_layers=cfg["num_hidden_layers"], n_dense_layers=cfg.get("first_k_dense_replace", 0), dim=cfg["hidden_size"],
        n_heads=cfg["num_attention_heads"], q_lora_rank=q_lora, kv_lora_rank=cfg["kv_lora_rank"],
        qk_nope_head_dim=cfg["qk_nope_head_dim"], qk_rope_head_dim=cfg["qk_rope_head_dim"], v_head_dim=cfg["v_head_dim"],
        mscale=float(rs.get("mscale_all_dim", 1.0) or 1.0), dense_hidden_dim=cfg["intermediate_size"],
        moe_hidden_dim=cfg["moe_intermediate_size"], num_experts=cfg["n_routed_experts"],
        num_shared_experts=cfg.get("n_shared_experts") or 0, router_top_k=cfg["num_experts_per_tok"],
        router_score_func=cfg.get("scoring_func", "sigmoid"),
        router_num_expert_groups=n_group if n_group > 1 else None,
        router_num_limited_groups=cfg.get("topk_group") if n_group > 1 else None,
        router_route_scale=float(cfg.get("routed_scaling_factor", 1.0)), router_route_norm=bool(cfg.get("norm_topk_prob", False)),
        attn_backend="flex", moe_comm_backend="standard", non_blocking_capacity_factor=None,
        rope=rope_config(ComplexRoPE, cfg, cfg["qk_rope_head_dim"]))
    return decoder_config(tt_dsv3.DeepSeekV3Model, cfg, layers)


BUILDERS = {"llama3": llama3_config, "qwen3": qwen3_config, "deepseek_v3": deepseek_v3_config}


# ---------------------------------------------------------------- gpt_oss (additive: builder + the seams it needs)
import torchtitan.models.gpt_oss as tt_gpt_oss
from torchtitan.models.gpt_oss import moe as tt_gpt_oss_moe
from torchtitan.models.common import token_dispatcher as tt_token_dispatcher

# GptOssGroupedExperts.forward has its own .bfloat16() casts (like GroupedExperts above): f32 for the comparison;
# its _grouped_mm is GroupedExperts' (the f32 loop above).
_src = textwrap.dedent(inspect.getsource(tt_gpt_oss_moe.GptOssGroupedExperts.forward)).replace(".bfloat16()", ".to(DTYPE)")
_ns = dict(vars(tt_gpt_oss_moe), DTYPE=DTYPE)
exec(_src, _ns)
tt_gpt_oss_moe.GptOssGroupedExperts.forward = _ns["forward"]

# Known obstacle (test/interop/judges/README.md): on CPU the gpt_oss MoE hands deterministic_scatter_add (torchtitan/
# ops/scatter_add.py) expert outputs whose dtype differs from the accumulator's, and scatter_add refuses mixed
# dtypes. Align src to out's dtype at the call site (the dispatcher's module-level name); values are unchanged
# when the dtypes already agree.
_scatter_add = tt_token_dispatcher.deterministic_scatter_add
tt_token_dispatcher.deterministic_scatter_add = lambda out, index, src: _scatter_add(out, index, src.to(out.dtype))


def gpt_oss_config(cfg):
    """GPT-OSS as torchtitan/models/gpt_oss/__init__.py builds it, with config.json's sizes, sliding window and layer_types."""
    dim, hd = cfg["hidden_size"], head_dim_of(cfg)
    rs = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_kw = dict(dim=hd, max_context_length=cfg["max_position_embeddings"], theta=float(rs.get("rope_theta", cfg.get("rope_theta", 150000.0))))
    if rs.get("rope_type", rs.get("type")) == "yarn":
        rope_kw.update(scaling="yarn", rope_factor=float(rs["factor"]), beta_fast=float(rs.get("beta_fast", 32)), beta_slow=float(rs.get("beta_slow", 1)),
                       truncate=bool(rs.get("truncate", True)), original_seq_len=int(rs["original_max_position_embeddings"]))
    rope = CosSinRoPE.Config(**rope_kw)
    n = cfg["num_hidden_layers"]
    kinds = cfg.get("layer_types") or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    E, K = cfg["num_local_experts"], cfg.get("num_experts_per_tok", cfg.get("experts_per_token"))
    layers = []
    for i in range(n):
        attn = tt_gpt_oss._make_gptoss_attn_config(
            dim=dim, layer_id=i, attn_backend="flex", n_heads=cfg["num_attention_heads"], n_kv_heads=cfg["num_key_value_heads"], head_dim=hd,
            sliding_window_size=cfg["sliding_window"] if kinds[i] == "sliding_attention" else None, fuse_qkv=True, rope=rope)
        experts = tt_gpt_oss._make_gptoss_experts_config(dim=dim, hidden_dim=cfg["intermediate_size"], num_experts=E, layer_id=i, top_k=K,
                                                         moe_comm_backend="standard")
        experts.inner_experts.swiglu_limit = float(cfg.get("swiglu_limit", 7.0))
        moe = tt_gpt_oss.GptOssMoE.Config(
            num_experts=E, load_balance_coeff=1e-3, routed_experts=experts,
            router=tt_moe.TokenChoiceTopKRouter.Config(num_experts=E, score_func="softmax", route_norm=True, top_k=K,
                                                       gate=Linear.Config(in_features=dim, out_features=E, bias=True, param_init=tt_gpt_oss._depth_init(i))))
        layers.append(tt_gpt_oss.GptOssTransformerBlock.Config(
            attention=attn, moe=moe,
            attention_norm=RMSNorm.Config(normalized_shape=dim, param_init=tt_gpt_oss._NORM_INIT),
            ffn_norm=RMSNorm.Config(normalized_shape=dim, param_init=tt_gpt_oss._NORM_INIT)))
    return decoder_config(tt_gpt_oss.GptOssModel, cfg, layers)


BUILDERS["gpt_oss"] = gpt_oss_config


def tt_model(arch, cfg, expert_bias):
    mc = qwen3_config(cfg, expert_bias) if arch == "qwen3" else BUILDERS[arch](cfg)
    for _, norm, _, _ in mc.traverse(RMSNorm.Config):
        norm.eps = float(cfg["rms_norm_eps"])
    with torch.device("meta"):
        model = mc.build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    return to_dtype(model).eval()


def to_dtype(model):
    # Module.to(dtype) would cast ComplexRoPE's complex cache to real (dropping the imaginary part): cast real
    # tensors only, and complex ones to the matching complex dtype.
    model = model.float() if DTYPE == torch.float32 else model.double()
    for mod in model.modules():
        for n, b in mod._buffers.items():
            if b is not None and b.is_complex():
                mod._buffers[n] = b.to(torch.complex64 if DTYPE == torch.float32 else torch.complex128)
    return model


def persistent_tensors(model):
    """Every parameter and persistent buffer, by state-dict name (tied parameters once)."""
    out, seen = {}, set()
    for mname, mod in model.named_modules():
        pre = mname + "." if mname else ""
        for n, p in mod._parameters.items():
            if p is not None and id(p) not in seen:
                seen.add(id(p)); out[pre + n] = p
        for n, b in mod._buffers.items():
            if b is not None and n not in mod._non_persistent_buffers_set and id(b) not in seen:
                seen.add(id(b)); out[pre + n] = b
    return out


def load_like_torchtitan(model, ckpt):
    """NaN everywhere, then dcp.load into ModelWrapper's state dict and ModelWrapper.load_state_dict (its checkpointer)."""
    with torch.no_grad():
        for t in persistent_tensors(model).values():
            if t.is_floating_point():
                t.fill_(float("nan"))
    wrapper = ModelWrapper(model)
    sd = wrapper.state_dict()
    stored = set(dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata)
    missing, unexpected = sorted(set(sd) - stored), sorted(stored - set(sd))
    if missing or unexpected:
        return {"missing": missing[:8], "unexpected": unexpected[:8]}
    dcp.load(sd, checkpoint_id=ckpt)
    wrapper.load_state_dict(sd)
    nan = sorted(n for n, t in persistent_tensors(model).items() if t.is_floating_point() and torch.isnan(t).any())
    return {"nan_after_load": nan[:8]} if nan else None


# ---------------------------------------------------------------- HF side

def dequantized_copy(src, cfg, dst):
    """FP8 DeepSeek: weight × weight_scale_inv per 128×128 block in f32, then bf16 (DeepSeek's fp8_cast_bf16 recipe)."""
    sd = {}
    for f in sorted(glob.glob(os.path.join(src, "*.safetensors"))):
        sd.update(load_file(f))
    out = {}
    for k, w in sd.items():
        if k.endswith("_scale_inv"):
            continue
        s = sd.get(k + "_scale_inv")
        if s is not None:
            R, C = w.shape
            w = (w.float() * s.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:R, :C]).to(torch.bfloat16)
        out[k] = w.contiguous()
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    c = dict(cfg)
    c.pop("quantization_config")
    json.dump(c, open(os.path.join(dst, "config.json"), "w"))


def hf_model(folder, cfg):
    tmp = None
    if (cfg.get("quantization_config") or {}).get("quant_method") == "compressed-tensors":
        # Kimi K2.x INT4: compressed-tensors' own decompression (kimi_ref.py), written as a bf16 copy
        with tempfile.TemporaryDirectory(dir=os.path.dirname(folder.rstrip("/"))) as tmp:
            import kimi_ref
            kimi_ref.decompress(folder, tmp)
            return hf_model(tmp, json.load(open(os.path.join(tmp, "config.json"))))
    if cfg.get("quantization_config"):
        with tempfile.TemporaryDirectory(dir=os.path.dirname(folder.rstrip("/"))) as tmp:
            dequantized_copy(folder, cfg, tmp)
            return hf_model(tmp, {k: v for k, v in cfg.items() if k != "quantization_config"})
    model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPE, attn_implementation="eager",
                                                       experts_implementation="eager", output_loading_info=True)
    n = cfg["num_hidden_layers"]
    mtp = lambda k: k.startswith("model.layers.") and int(k.split(".")[2]) >= n
    bad = {k: sorted(v)[:8] for k, v in (("missing", info["missing_keys"]),
                                          ("unexpected", [k for k in info["unexpected_keys"] if not mtp(k)]),
                                          ("mismatched", [str(x) for x in info.get("mismatched_keys", [])])) if v}
    if bad:
        raise SystemExit(f"judge: transformers did not load {folder} cleanly: {bad}")
    return to_dtype(model).eval()


# ---------------------------------------------------------------- routing capture

class Routes:
    """Expert ids each MoE layer picked per token, on both sides, as sorted tuples."""

    def __init__(self):
        self.tt, self.hf = {}, {}

    def hook_tt(self, model):
        for name, mod in model.named_modules():
            if isinstance(mod, tt_moe.TokenChoiceTopKRouter):
                layer = int(name.split(".")[1])
                mod.register_forward_hook(lambda m, a, out, L=layer: self.tt.setdefault(L, []).append(out[1].sort(-1).values))

    def hook_hf(self, model):
        # transformers 5: Qwen3-MoE's gate (Qwen3MoeTopKRouter) returns (logits, weights, indices); DeepSeek-V3's MoE
        # block picks experts in route_tokens_to_experts(router_logits) -> (indices, weights).
        for name, mod in model.named_modules():
            parts = name.split(".")
            # model.layers.N.mlp[.gate], or a VLM's model.language_model.layers.N.mlp[.gate]
            if len(parts) < 4 or parts[-1] not in ("gate", "mlp") or "layers" not in parts[:-2]:
                continue
            layer = int(parts[parts.index("layers") + 1])
            if parts[-1] == "mlp" and hasattr(mod, "route_tokens_to_experts"):
                orig = mod.route_tokens_to_experts
                def wrapped(*a, _o=orig, L=layer, **k):
                    r = _o(*a, **k)
                    self.hf.setdefault(L, []).append(r[0].reshape(-1, r[0].shape[-1]).sort(-1).values)
                    return r
                mod.route_tokens_to_experts = wrapped
            elif parts[-1] == "gate" and type(mod).__name__.endswith("TopKRouter"):
                mod.register_forward_hook(lambda m, a, out, L=layer: self.hf.setdefault(L, []).append(out[2].reshape(-1, out[2].shape[-1]).sort(-1).values))

    def compare(self):
        if set(self.tt) != set(self.hf):
            return {"layers_tt": sorted(self.tt), "layers_hf": sorted(self.hf)}
        flips = 0
        for L in self.tt:
            a, b = torch.cat(self.tt[L]), torch.cat(self.hf[L])
            if a.shape != b.shape:
                return {"layer": L, "shape_tt": list(a.shape), "shape_hf": list(b.shape)}
            flips += int((a != b).any(-1).sum())
        return flips


# ---------------------------------------------------------------- perturbations (negative controls on the loaded model)

def perturb(model, what, cfg):
    sd = persistent_tensors(model)
    with torch.no_grad():
        if what == "roll_experts":
            for k, t in sd.items():
                if ".inner_experts." in k:
                    t.copy_(torch.roll(t.clone(), 1, 0))
        elif what == "zero_expert_bias":
            for k, t in sd.items():
                if k.endswith("expert_bias_E"):
                    t.zero_()
        elif what == "deepseek_rope_halfsplit":
            # The rope rows of q (per head, after the nope rows) and of wkv_a (after kv_lora_rank) put in HF's
            # rotate-half order instead of the interleaved pairs TorchTitan's ComplexRoPE expects.
            r, nope = cfg["qk_rope_head_dim"], cfg["qk_nope_head_dim"]
            perm = torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2)])
            for k, t in sd.items():
                if k.endswith("attention.wq.weight") or k.endswith("attention.wq_b.weight"):
                    v = t.view(cfg["num_attention_heads"], nope + r, -1)
                    v[:, nope:] = v[:, nope:][:, perm].clone()
                elif k.endswith("attention.wkv_a.weight"):
                    t[cfg["kv_lora_rank"]:] = t[cfg["kv_lora_rank"]:][perm].clone()
        else:
            raise SystemExit(f"judge: unknown perturbation {what}")


def scale_norms(model, factor):
    with torch.no_grad():
        for mod in model.modules():
            if type(mod).__name__.endswith("RMSNorm") and getattr(mod, "weight", None) is not None:
                mod.weight.mul_(factor)


# ---------------------------------------------------------------- forward and metrics

def forward_tt(model, tokens):
    outs = []
    for seq in tokens:
        positions = torch.arange(seq.shape[0])
        outs.append(model(seq, positions, model.get_attention_masks(positions)))
    return torch.stack(outs)


def metrics(hf_logits, tt_logits, tokens):
    scale = float(hf_logits.abs().max())
    d = float((hf_logits - tt_logits).abs().max()) if torch.isfinite(tt_logits).all() else float("inf")
    lp, lq = F.log_softmax(hf_logits.double(), -1), F.log_softmax(tt_logits.double(), -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    V = hf_logits.shape[-1]
    loss = lambda lg: float(F.cross_entropy(lg[:, :-1].reshape(-1, V).double(), tokens[:, 1:].reshape(-1)))
    return {"max_abs": d, "logit_scale": scale, "rel": d / max(1.0, scale), "kl": kl, "loss_hf": loss(hf_logits), "loss_tt": loss(tt_logits)}


# Tolerances. As stored (×1): the issue's bar, max |Δlogit| ≤ 1e-5 × max(1, logit scale), mean KL ≤ 1e-9, next-token
# loss equal to 1e-5 relative. With norms ×16 the tiny models become ill-conditioned: attention scores grow ×256 and
# saturate, so the f32 rounding differences between the two implementations (TorchTitan's complex RoPE vs HF's
# cos/sin, op order in MLA) are amplified ~100× (measured on the DeepSeek fixture: every layer output agrees to
# ≤ 1e-5 relative, the logits to 1.4e-4, and running both models in f64 — with their f32 RoPE tables — still gives
# 5e-5: it is conditioning, not layout). A wrong layout scores ≈ 1 there, so ×16 is judged at 1e-3 / KL 1e-6.
TOLERANCE = {1.0: (1e-5, 1e-9), 16.0: (1e-3, 1e-6)}


def passes(m):
    rel, kl = TOLERANCE[m["norm_scale"]]
    return (m["max_abs"] <= rel * max(1.0, m["logit_scale"]) and m["kl"] <= kl
            and abs(m["loss_hf"] - m["loss_tt"]) <= 1e-5 * max(1.0, abs(m["loss_hf"])))


# config.json model_type -> the TorchTitan model family that judges it
ARCH_OF_MODEL_TYPE = {"llama": "llama3", "qwen3": "qwen3", "qwen3_moe": "qwen3", "deepseek_v3": "deepseek_v3"}
ARCH_OF_MODEL_TYPE["gpt_oss"] = "gpt_oss"

# transformers' GptOssTopKRouter (model.layers.L.mlp.router) returns (logits, scores, indices): capture its picks too.
_hook_hf_base = Routes.hook_hf


def _hook_hf_with_gpt_oss(self, model):
    _hook_hf_base(self, model)
    for name, mod in model.named_modules():
        if type(mod).__name__ == "GptOssTopKRouter":
            mod.register_forward_hook(lambda m, a, out, L=int(name.split(".")[2]): self.hf.setdefault(L, []).append(out[2].reshape(-1, out[2].shape[-1]).sort(-1).values))


Routes.hook_hf = _hook_hf_with_gpt_oss


# ---------------------------------------------------------------- kimi_k2_7 (additive: builder, forward, K2.5 flattening)
# test/interop/judges/README.md lists an isinstance on a stubbed type when building kimi_k2_7's debug model: at b5bcd76 in
# this root it does not occur on the model path the judge takes (Config build on meta, to_empty, init_weights,
# forward; model_registry("debugmodel") too). What fails is importing kimi_k2_7/config_registry.py (the Trainer
# config: components/metrics.py imports torch.utils.tensorboard, which rejects the stubbed tensorboard), never needed here.
import torchtitan.models.kimi_k2_7 as tt_kimi
from torchtitan.models.kimi_k2_7.model import KimiK25Model


def kimi_k2_7_config(cfg):
    """TorchTitan's kimi_k2_7 text model (KimiK25Model, vision_encoder = None) with config.json's sizes: the DeepSeek-V3
    decoder arguments of deepseek_v3_config, built with Kimi's own layer builder (_build_kimi_layers)."""
    dsv3_build = tt_dsv3._build_dsv3_layers
    tt_dsv3._build_dsv3_layers = tt_kimi._build_kimi_layers
    try:
        dc = deepseek_v3_config(cfg)
    finally:
        tt_dsv3._build_dsv3_layers = dsv3_build
    import dataclasses
    return KimiK25Model.Config(**{f.name: getattr(dc, f.name) for f in dataclasses.fields(dc) if f.init}, vision_encoder=None)


BUILDERS["kimi_k2_7"] = kimi_k2_7_config
ARCH_OF_MODEL_TYPE.update(kimi_k2="kimi_k2_7", kimi_k25="kimi_k2_7")

# KimiK25Model.forward takes (tokens, *, attention_masks, positions): keyword arguments.
_forward_tt_base = forward_tt


def forward_tt(model, tokens):
    if not isinstance(model, KimiK25Model):
        return _forward_tt_base(model, tokens)
    outs = []
    for seq in tokens:
        positions = torch.arange(seq.shape[0])
        outs.append(model(seq, attention_masks=model.get_attention_masks(positions), positions=positions))
    return torch.stack(outs)


def case_config(folder):
    """The config a case's models are built from (a multimodal wrapper's reads its text config: see qwen3_5 below)."""
    return json.load(open(os.path.join(folder, "config.json")))


def run_case(c, hf_cache):
    cfg = case_config(c["hf"])
    if "arch" not in c:
        if cfg.get("model_type") not in ARCH_OF_MODEL_TYPE:
            raise SystemExit(f"judge: no TorchTitan model for model_type {cfg.get('model_type')!r} (have {sorted(ARCH_OF_MODEL_TYPE)})")
        c = dict(c, arch=ARCH_OF_MODEL_TYPE[cfg["model_type"]])
    gen = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, cfg["vocab_size"], (c.get("batch", 2), c.get("seq", 24)), generator=gen)
    if c["hf"] not in hf_cache:
        hf_cache[c["hf"]] = hf_model(c["hf"], cfg)
    hf = hf_cache[c["hf"]]
    tt = tt_model(c["arch"], cfg, c.get("expert_bias", True))
    load_err = load_like_torchtitan(tt, c["ckpt"])
    if load_err:
        return {"name": c["name"], "load": load_err, "ok": False}
    if c.get("perturb"):
        perturb(tt, c["perturb"], cfg)
    res = {"name": c["name"], "passes": []}
    for factor in (1.0, 16.0):
        routes = Routes()
        routes.hook_tt(tt)
        handles = routes.hook_hf(hf)
        scale_norms(hf, factor); scale_norms(tt, factor)
        with torch.no_grad():
            a = hf(tokens).logits.to(DTYPE)
            b = forward_tt(tt, tokens).to(DTYPE)
        scale_norms(hf, 1 / factor); scale_norms(tt, 1 / factor)
        m = metrics(a, b, tokens)
        m["norm_scale"] = factor
        m["tolerance"] = TOLERANCE[factor]
        m["route_flips"] = routes.compare() if routes.tt or routes.hf else None
        m["ok"] = passes(m) and m["route_flips"] in (None, 0)
        res["passes"].append(m)
        for mod in list(tt.modules()) + list(hf.modules()):
            mod._forward_hooks.clear()
            if "route_tokens_to_experts" in mod.__dict__:
                del mod.route_tokens_to_experts
    res["ok"] = all(p["ok"] for p in res["passes"])
    return res


# Kimi K2.5 nests its text model (text_config, language_model.[model.] names): judge the flat copy of it
# (kimi_ref.flat_copy, still INT4), which hf_model decompresses and tt_config reads like K2 Thinking's flat layout.
_run_case_base = run_case
_flat_copies = {}


def run_case(c, hf_cache):
    cfg = json.load(open(os.path.join(c["hf"], "config.json")))
    if isinstance(cfg.get("text_config"), dict) and cfg.get("model_type") in ("kimi_k25", "kimi_vl"):
        import kimi_ref
        if c["hf"] not in _flat_copies:
            _flat_copies[c["hf"]] = tempfile.mkdtemp(dir=os.path.dirname(c["hf"].rstrip("/")), prefix="kimi-flat-")
            kimi_ref.flat_copy(c["hf"], _flat_copies[c["hf"]])
        c = dict(c, hf=_flat_copies[c["hf"]], arch=c.get("arch", "kimi_k2_7"))
    return _run_case_base(c, hf_cache)


# ---------------------------------------------------------------- qwen3_5 (additive: fla shim, builder, offset-norm pass)
# TorchTitan's Gated DeltaNet (models/qwen3_5/gdn.py) imports `fla` (Triton, GPU only). The shim below provides the
# names gdn.py imports, each calling the PyTorch reference transformers' modeling_qwen3_5 falls back to without fla
# (torch_chunk_gated_delta_rule), so both models compute the same recurrence and the comparison judges the weights.
# The conv path TorchTitan takes for one unpacked sequence is its own F.conv1d (the varlen fla conv is refused here).
# The shim is in sys.modules only while TorchTitan's qwen3_5 is imported: transformers must keep seeing no fla.
_tt_qwen35 = None


def _import_tt_qwen35():
    global _tt_qwen35
    if _tt_qwen35 is not None:
        return _tt_qwen35
    import types
    from transformers.models.qwen3_5 import modeling_qwen3_5 as hf_q35

    def chunk_gated_delta_rule(q, k, v, g, beta, *, use_qk_l2norm_in_kernel=False, cu_seqlens=None, cu_seqlens_cpu=None,
                               initial_state=None, output_final_state=False, **kw):
        if cu_seqlens is not None and cu_seqlens.numel() > 2:
            raise NotImplementedError("fla shim: packed (varlen) sequences are not judged")
        return hf_q35.torch_chunk_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=initial_state,
                                                   output_final_state=output_final_state,
                                                   use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)

    def fused_recurrent_gated_delta_rule(q, k, v, g, beta=None, *, use_qk_l2norm_in_kernel=False, cu_seqlens=None,
                                         initial_state=None, output_final_state=False, **kw):
        if cu_seqlens is not None and cu_seqlens.numel() > 2:
            raise NotImplementedError("fla shim: packed (varlen) sequences are not judged")
        return hf_q35.torch_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, initial_state=initial_state,
                                                       output_final_state=output_final_state,
                                                       use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)

    class _Unused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *a):
            raise NotImplementedError("fla shim: GPU kernel")

    mods = {n: types.ModuleType(n) for n in ("fla", "fla.modules", "fla.modules.conv", "fla.modules.conv.triton",
                                             "fla.modules.conv.triton.ops", "fla.ops", "fla.ops.gated_delta_rule",
                                             "fla.ops.gated_delta_rule.chunk", "fla.ops.gated_delta_rule.fused_recurrent")}
    mods["fla.modules.conv.triton.ops"].CausalConv1dFunction = type("CausalConv1dFunction", (_Unused,), {})
    mods["fla.ops.gated_delta_rule"].chunk_gated_delta_rule = chunk_gated_delta_rule
    mods["fla.ops.gated_delta_rule"].fused_recurrent_gated_delta_rule = fused_recurrent_gated_delta_rule
    mods["fla.ops.gated_delta_rule.chunk"].ChunkGatedDeltaRuleFunction = type("ChunkGatedDeltaRuleFunction", (_Unused,), {})
    mods["fla.ops.gated_delta_rule.fused_recurrent"].FusedRecurrentFunction = type("FusedRecurrentFunction", (_Unused,), {})
    saved = {n: sys.modules.get(n) for n in mods}
    sys.modules.update(mods)
    try:
        import torchtitan.models.qwen3_5 as m
        import torchtitan.models.qwen3_5.gdn  # noqa: F401
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old
    _tt_qwen35 = m
    return m


def qwen3_5_config(cfg):
    """TorchTitan's Qwen35Model with config.json's sizes, layer by layer as layer_types says (the package's builders
    derive it from full_attention_interval; the per-layer configs are theirs: _qwen35_attention_config,
    _qwen35_deltanet_config, _shared_experts_config). A minimal vision encoder is built and removed after build
    (qwen3_5_text_only): text-only checkpoints carry no vision weights."""
    q = _import_tt_qwen35()
    from torchtitan.models.qwen3_5.rope import MRoPE
    dim, hd, n = cfg["hidden_size"], head_dim_of(cfg), cfg["num_hidden_layers"]
    rp = cfg.get("rope_parameters") or {}
    rot = int(hd * float(rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25))))
    base = rope_config(CosSinRoPE, cfg, rot)
    half = rot // 2
    rope = MRoPE.Config(dim=rot, max_context_length=base.max_context_length, theta=base.theta,
                        mrope_section=[half - 2 * (half // 3), half // 3, half // 3])
    types_ = cfg.get("layer_types") or ["full_attention" if (i + 1) % cfg.get("full_attention_interval", 4) == 0 else "linear_attention" for i in range(n)]
    lin = q._LINEAR_INIT
    layers = []
    for i in range(n):
        attn = dn = ffn = moe = None
        if types_[i] == "full_attention":
            attn = q._qwen35_attention_config(dim=dim, n_heads=cfg["num_attention_heads"], n_kv_heads=cfg["num_key_value_heads"],
                                              head_dim=hd, rotary_dim=rot, rope=rope, attn_backend="flex", layer_id=i)
        else:
            dn = q._qwen35_deltanet_config(dim=dim, n_key_heads=cfg["linear_num_key_heads"], n_value_heads=cfg["linear_num_value_heads"],
                                           key_head_dim=cfg["linear_key_head_dim"], value_head_dim=cfg["linear_value_head_dim"],
                                           layer_id=i, conv_kernel_size=cfg.get("linear_conv_kernel_dim", 4))
        if (cfg.get("num_experts") or 0) > 0:
            E, K = cfg["num_experts"], cfg["num_experts_per_tok"]
            moe = make_moe_config(
                num_experts=E,
                router=make_router_config(dim=dim, num_experts=E, gate_param_init=lin, top_k=K, score_func="softmax", route_norm=True),
                routed_experts=make_routed_experts_config(dim=dim, hidden_dim=cfg["moe_intermediate_size"], num_experts=E, top_k=K,
                                                          param_init=q._depth_experts_init(i), comm_backend="standard"),
                shared_experts=q._shared_experts_config(dim=dim, hidden_dim=cfg["shared_expert_intermediate_size"], layer_id=i))
        else:
            ffn = make_ffn_config(dim=dim, hidden_dim=cfg["intermediate_size"], w1_param_init=lin, w2w3_param_init=lin)
        layers.append(q.Qwen35TransformerBlock.Config(attention=attn, delta_net=dn, feed_forward=ffn, moe=moe,
                                                      attention_norm=q._offset_norm(dim), ffn_norm=q._offset_norm(dim)))
    vocab = cfg["vocab_size"]
    mc = q.Qwen35Model.Config(
        dim=dim, vocab_size=vocab, enable_weight_tying=bool(cfg.get("tie_word_embeddings", False)), norm=q._offset_norm(dim),
        tok_embeddings=Embedding.Config(num_embeddings=vocab, embedding_dim=dim, param_init={"weight": torch.nn.init.zeros_}),
        lm_head=Linear.Config(in_features=dim, out_features=vocab, param_init={"weight": torch.nn.init.zeros_}),
        layers=layers,
        vision_encoder=q._qwen35_vision_encoder_config(dim=16, ffn_dim=16, num_layers=1, num_heads=1, patch_size=2, temporal_patch_size=1,
                                                        spatial_merge_size=1, out_hidden_size=dim, num_position_embeddings=4))
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    for _, c, _, _ in mc.traverse(q.OffsetRMSNorm.Config):
        c.eps = eps
    for _, c, _, _ in mc.traverse(q.RMSNormGated.Config):
        c.eps = eps
    return mc


BUILDERS["qwen3_5"] = qwen3_5_config
ARCH_OF_MODEL_TYPE.update(qwen3_5_text="qwen3_5", qwen3_5_moe_text="qwen3_5", qwen3_5="qwen3_5", qwen3_5_moe="qwen3_5")

_tt_model_base = tt_model


def tt_model(arch, cfg, expert_bias):
    model = _tt_model_base(arch, cfg, expert_bias)
    if arch == "qwen3_5":
        # qwen3_5_text_only: the text forward never reaches the vision encoder; its keys are not in a text checkpoint
        del model.vision_encoder
        model.vision_encoder = None
    return model


# Offset RMSNorms compute (1 + w) · x̂ (TorchTitan OffsetRMSNorm, HF Qwen3_5RMSNorm / Qwen3_5MoeRMSNorm), so w × 16
# would not scale them by 16. The second pass sets w' = fl(16 · (1 + w) − 1) on both sides instead (f32): not an
# exact ×16 of the scale, but the identical weight on both models (their w are bit-equal), which is all the comparison
# needs; originals are restored bit for bit afterwards. Plain RMSNorms keep the ×16 of the base pass. The DeltaNet's
# gated norm (w · x̂ · silu(z)) is left as stored on both sides.
OFFSET_NORMS = ("OffsetRMSNorm", "Qwen3_5RMSNorm", "Qwen3_5MoeRMSNorm")
_offset_stash = {}


def scale_norms(model, factor):
    with torch.no_grad():
        for mod in model.modules():
            w = getattr(mod, "weight", None)
            if w is None:
                continue
            name = type(mod).__name__
            if name in OFFSET_NORMS:
                if factor > 1:
                    _offset_stash[id(mod)] = w.detach().clone()
                    w.copy_((factor * (1.0 + w.float()) - 1.0).to(w.dtype))
                elif factor < 1:
                    w.copy_(_offset_stash.pop(id(mod)))
            elif name.endswith("RMSNorm"):
                w.mul_(factor)


# Control: the query and gate halves of each head of Qwen3.5's 2x-wide wq swapped (what a converter that split
# q_proj into [all queries; all gates], or chunked it the other way round, would load).
_perturb_base = perturb


def perturb(model, what, cfg):
    if what != "qwen35_q_gate_swapped":
        return _perturb_base(model, what, cfg)
    hd = head_dim_of(cfg)
    with torch.no_grad():
        for k, t in model.state_dict().items():
            if k.endswith("attn.wq.weight"):
                v = t.view(cfg["num_attention_heads"], 2, hd, -1)
                v.copy_(v.flip(1).clone())


# Qwen35Model.forward takes (tokens, *, attention_masks, positions, ...): keyword arguments, like KimiK25Model.
_forward_tt_kimi = forward_tt


def forward_tt(model, tokens):
    if type(model).__name__ != "Qwen35Model":
        return _forward_tt_kimi(model, tokens)
    outs = []
    for seq in tokens:
        positions = torch.arange(seq.shape[0])
        outs.append(model(seq, attention_masks=model.get_attention_masks(positions), positions=positions))
    return torch.stack(outs)


# Qwen3.5 / 3.6 VLM checkpoints as published (model.language_model.*, model.visual.*, mtp.*): transformers' own
# Qwen3_5(Moe)ForConditionalGeneration computes the reference logits on text tokens, loaded strictly (only the mtp.*
# head transformers does not model may be unexpected); TorchTitan's qwen3_5 is built from the text config, with the
# vision encoder of vision_config when the checkpoint holds one (a conversion without --text-only).
import transformers  # noqa: E402  (the VLM classes by name)


def _qwen35_vlm(cfg):
    return cfg.get("model_type") in ("qwen3_5", "qwen3_5_moe") and isinstance(cfg.get("text_config"), dict)


_case_config_base = case_config


def case_config(folder):
    cfg = _case_config_base(folder)
    if not _qwen35_vlm(cfg):
        return cfg
    flat = {**{k: v for k, v in cfg.items() if k not in ("text_config", "vision_config")}, **cfg["text_config"]}
    return dict(flat, _vlm_folder_config=cfg)


_hf_model_vlm_base = hf_model


def hf_model(folder, cfg):
    raw = cfg.get("_vlm_folder_config")
    if raw is None:
        return _hf_model_vlm_base(folder, cfg)
    cls = getattr(transformers, raw["architectures"][0])
    model, info = cls.from_pretrained(folder, dtype=DTYPE, attn_implementation="eager", experts_implementation="eager", output_loading_info=True)
    bad = {k: sorted(v)[:8] for k, v in (("missing", info["missing_keys"]), ("unexpected", [k for k in info["unexpected_keys"] if not k.startswith("mtp.")]),
                                          ("mismatched", [str(x) for x in info.get("mismatched_keys", [])])) if v}
    if bad:
        raise SystemExit(f"judge: transformers did not load {folder} cleanly: {bad}")
    return to_dtype(model).eval()


_tt_vision = {"config": None}
_qwen3_5_config_text = qwen3_5_config


def qwen3_5_config(cfg):
    mc = _qwen3_5_config_text(cfg)
    vc = _tt_vision["config"]
    if vc is not None:
        q = _import_tt_qwen35()
        mc.vision_encoder = q._qwen35_vision_encoder_config(
            dim=vc["hidden_size"], ffn_dim=vc["intermediate_size"], num_layers=vc["depth"], num_heads=vc["num_heads"],
            patch_size=vc["patch_size"], temporal_patch_size=vc["temporal_patch_size"], spatial_merge_size=vc["spatial_merge_size"],
            out_hidden_size=vc["out_hidden_size"], num_position_embeddings=vc["num_position_embeddings"], in_channels=vc["in_channels"])
    return mc


BUILDERS["qwen3_5"] = qwen3_5_config
_tt_model_vlm_base = tt_model


def tt_model(arch, cfg, expert_bias):
    if arch != "qwen3_5" or _tt_vision["config"] is None:
        return _tt_model_vlm_base(arch, cfg, expert_bias)
    return _tt_model_base(arch, cfg, expert_bias)  # keeps the vision encoder the checkpoint fills


_run_case_vlm_base = run_case


def run_case(c, hf_cache):
    cfg = case_config(c["hf"])
    keys = dcp.FileSystemReader(c["ckpt"]).read_metadata().state_dict_metadata
    vision = "_vlm_folder_config" in cfg and any(k.startswith("vision_encoder.") for k in keys)
    _tt_vision["config"] = cfg["_vlm_folder_config"]["vision_config"] if vision else None
    try:
        return _run_case_vlm_base(c, hf_cache)
    finally:
        _tt_vision["config"] = None


def main():
    if sys.argv[1] == "--hf":
        args = dict(zip([a for a in sys.argv[1:] if a != "--json"][0::2], [a for a in sys.argv[1:] if a != "--json"][1::2]))
        cases = [{"name": os.path.basename(args["--ckpt"].rstrip("/")), "hf": args["--hf"], "ckpt": args["--ckpt"],
                  "seq": int(args.get("--seq", 24)), "batch": int(args.get("--batch", 2))}]
    else:
        cases = json.load(open(sys.argv[1]))
    torch.set_num_threads(1)
    hf_cache, results = {}, []
    for c in cases:
        results.append(run_case(c, hf_cache))
    import transformers
    if sys.argv[1] == "--hf" and "--json" not in sys.argv:
        print(f"torch {torch.__version__}, transformers {transformers.__version__}")
        for r in results:
            if r.get("load"):
                print("FAIL load:", json.dumps(r["load"]))
            for p in r.get("passes", []):
                print(f"{'ok  ' if p['ok'] else 'FAIL'} RMSNorm x{p['norm_scale']:g}: max|dlogit| {p['max_abs']:.3e} "
                      f"(logit scale {p['logit_scale']:.2f}, bound {p['tolerance'][0]:g} x max(1, scale)), KL {p['kl']:.3e} "
                      f"(bound {p['tolerance'][1]:g}), loss hf {p['loss_hf']:.6f} tt {p['loss_tt']:.6f}, route flips {p['route_flips']}")
    else:
        print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "results": results}))
    sys.exit(0 if all(r["ok"] or c.get("control") for r, c in zip(results, cases)) else 1)


if __name__ == "__main__":
    main()
