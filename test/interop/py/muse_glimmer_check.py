"""Muse Glimmer: TorchTitan main's muse_glimmer model (the *_mm build: text decoder + vision encoder + adapter +
projection) built from its Config with the fixture's dims, NaN-filled and loaded from ckpt's DCP output as its
checkpointer loads (ModelWrapper + dcp.load: nothing missing or unexpected, no NaN left), against TorchTitan's own
MuseGlimmerStateDictAdapter.from_hf applied to the HF safetensors (the witness: the adapter TorchTitan validated
against the released checkpoint and transformers' modeling_muse_glimmer.py). Every tensor must be bitwise equal; the
text logits and the vision tower's output on a tiny image batch of the model loaded from ckpt's output must equal
those of the model loaded from the witness's state dict (relative max |Δ| reported).
argv: hf_dir case.json (a list of {"name", "ckpt"}). Prints one JSON line (a list of results)."""
import glob, json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from safetensors.torch import load_file
import judge

TOL = 1e-5


def tt_config(cfg, text_only=False):
    """TorchTitan's muse_glimmer Config with the fixture's dims: the *_mm build, or the text flavour's (no vision)."""
    import torchtitan.models.muse_glimmer as M
    t, v = cfg["text_config"], cfg["vision_config"]
    enc = M.muse_glimmer_vision_encoder_config(
        latent_dim=v["hidden_size"], num_layers=v["num_hidden_layers"], num_heads=v["num_attention_heads"],
        mlp_ratio=v["intermediate_size"] / v["hidden_size"], patch_size=v["patch_size"], patch_temporal=v["patch_temporal"],
        downsample_factor=v["merge_size"], pos_emb_grid_h=v["pos_emb_height"], pos_emb_grid_w=v["pos_emb_width"],
        rope_theta=v["rope_parameters"]["rope_theta"])
    ad = M.muse_glimmer_vision_adapter_config(input_dim=enc.output_dim, output_dim=cfg["projector_hidden_size"])
    w = t["sliding_window"]
    return M._muse_glimmer_config(
        dim=t["hidden_size"], n_layers=t["num_hidden_layers"], n_heads=t["num_attention_heads"], n_kv_heads=t["num_key_value_heads"],
        head_dim=t["head_dim"], vocab_size=t["vocab_size"], max_context_length=t["max_position_embeddings"], window_pattern=[w, w, w, 0],
        output_multiplier=t["output_multiplier"], attn_backend="flex",
        **({} if text_only else dict(vision_adapter_dim=cfg["projector_hidden_size"], vision_encoder=enc, vision_adapter=ad)))


def build(mc):
    with torch.device("meta"):
        model = mc.build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    return model


def witness(hf, mc):
    from torchtitan.models.muse_glimmer.state_dict_adapter import MuseGlimmerStateDictAdapter
    sd = {}
    for f in sorted(glob.glob(os.path.join(hf, "*.safetensors"))):
        sd.update(load_file(f))
    return MuseGlimmerStateDictAdapter(mc, None).from_hf(sd)


def outputs(model, cfg):
    """Text logits on a token batch, and the vision encoder's output on a tiny image batch (f32)."""
    model = model.float().eval()
    g = torch.Generator().manual_seed(5)
    res = {}
    t, v = cfg["text_config"], cfg["vision_config"]
    # one packed sequence, as judge.py runs TorchTitan's decoders: tokens [T], positions, the model's own masks
    tokens = torch.randint(0, t["vocab_size"] - 20, (12,), generator=g)
    positions = torch.arange(tokens.shape[0])
    with torch.no_grad():
        try:
            res["logits"] = model(tokens, positions, model.get_attention_masks(positions))
        except Exception as e:  # noqa: BLE001 - report why the forward could not run here
            res["logits_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        try:
            enc = model.vision_encoder
            if enc is None:
                return res
            P, T = v["patch_size"], v["patch_temporal"]
            grid = torch.tensor([[1, 4, 4]])
            pixels = torch.randn(int(grid.prod()), 3 * T * P * P, generator=g)
            res["vision"] = enc(pixels, grid_thw=grid)
        except Exception as e:  # noqa: BLE001
            res["vision_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return res


def hf_text_logits(hf, t, tokens):
    """The text model's logits as transformers' modeling_muse_glimmer.py (≥ 5.15) computes them, written out here
    from its published definition (transformers 5.12 predates it): HF names, split-half rotate_half RoPE, scaleless
    embed / qk norms, gain-centred (1 + w) layer norms, sigmoid output gate from self_attn.gate_proj, NoPE every 4th
    layer counted from the last, plain-weight final norm, output_multiplier then tanh soft-cap. f32."""
    sd = {}
    for f in sorted(glob.glob(os.path.join(hf, "*.safetensors"))):
        sd.update(load_file(f))
    W = lambda k: sd[k].float()
    P = "model.language_model."
    nh, nkv, hd, n = t["num_attention_heads"], t["num_key_value_heads"], t["head_dim"], t["num_hidden_layers"]
    eps, peps = t["rms_norm_eps"], t["post_norm_eps"]
    rms = lambda x, e: x * torch.pow(x.pow(2).mean(-1, keepdim=True) + e, -0.5)
    T = tokens.shape[0]
    x = rms(W(P + "embed_tokens.weight")[tokens], eps)
    inv = 1.0 / (t["rope_parameters"]["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
    fr = torch.arange(T, dtype=torch.float)[:, None] * inv[None]
    emb = torch.cat([fr, fr], -1)
    cos, sin = emb.cos()[:, None], emb.sin()[:, None]
    rot = lambda z: torch.cat([-z[..., hd // 2:], z[..., : hd // 2]], -1)
    i_, j_ = torch.arange(T)[:, None], torch.arange(T)[None]
    for i in range(n):
        L = f"{P}layers.{i}."
        full = (n - 1 - i) % 4 == 0
        allowed = (j_ <= i_) & (full | (i_ - j_ < t["sliding_window"]))
        h = rms(x, eps) * (1 + W(L + "input_layernorm.weight"))
        q = (h @ W(L + "self_attn.q_proj.weight").T).view(T, nh, hd)
        k = (h @ W(L + "self_attn.k_proj.weight").T).view(T, nkv, hd)
        v = (h @ W(L + "self_attn.v_proj.weight").T).view(T, nkv, hd)
        q, k = rms(q, eps) * t["qk_scale_factor"], rms(k, eps)
        if not full:  # layer_rope_theta 0 on the full-attention (NoPE) layers
            q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        a = torch.einsum("qhd,khd->hqk", q, k) * hd ** -0.5
        a = a.masked_fill(~allowed, float("-inf")).softmax(-1)
        o = torch.einsum("hqk,khd->qhd", a, v).reshape(T, nh * hd)
        o = (o * torch.sigmoid(h @ W(L + "self_attn.gate_proj.weight").T)) @ W(L + "self_attn.o_proj.weight").T
        x = x + rms(o, peps) * (1 + W(L + "post_attention_layernorm.weight"))
        h = rms(x, eps) * (1 + W(L + "pre_feedforward_layernorm.weight"))
        m = (torch.nn.functional.silu(h @ W(L + "mlp.gate_proj.weight").T) * (h @ W(L + "mlp.up_proj.weight").T)) @ W(L + "mlp.down_proj.weight").T
        x = x + rms(m, peps) * (1 + W(L + "post_feedforward_layernorm.weight"))
    x = rms(x, eps) * W(P + "norm.weight")
    logits = x @ W("lm_head.weight").T
    cap = t["final_logit_softcapping"]
    return torch.tanh(logits * t["output_multiplier"] / cap) * cap


def rel(a, b):
    if isinstance(a, (tuple, list)):
        a, b = a[0], b[0]
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def main():
    # a single-process CPU forward has no device mesh: TorchTitan's other SPMD backend skips the mesh-typed asserts
    from torchtitan.distributed.utils import set_spmd_backend
    set_spmd_backend("partial_dtensor")
    hf, cases = sys.argv[1], json.load(open(sys.argv[2]))
    cfg = json.load(open(os.path.join(hf, "config.json")))
    mc = tt_config(cfg)
    ref_sd = witness(hf, mc)
    ref_model = build(mc)
    missing, unexpected = ref_model.load_state_dict(ref_sd, strict=False)
    ref_out = outputs(ref_model, cfg)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, cfg["text_config"]["vocab_size"] - 20, (12,), generator=g)
    hf_logits = hf_text_logits(hf, cfg["text_config"], tokens)
    results = []
    for c in cases:
        text_only = c.get("text_only", False)
        model = build(tt_config(cfg, text_only) if text_only else mc)
        for p in model.parameters():
            p.data = p.data.to(torch.bfloat16)
        load = judge.load_like_torchtitan(model, c["ckpt"])
        r = {"name": c["name"], "load": load, "witness_missing": sorted(missing)[:4], "witness_unexpected": sorted(unexpected)[:4]}
        if load is None:
            got = model.state_dict()
            r["tensors"] = len(ref_sd)
            want = {k: t for k, t in ref_sd.items() if not (text_only and k.startswith("vision"))}
            r["mismatch"] = sorted(k for k, t in want.items() if k not in got or got[k].shape != t.shape or not torch.equal(got[k], t))[:8]
            out = outputs(model, cfg)
            if "logits" in out:
                r["rel_logits_vs_hf"] = rel(out["logits"].reshape(hf_logits.shape), hf_logits)
            for k in ("logits", "vision"):
                if k in out and k in ref_out:
                    r[f"rel_{k}"] = rel(out[k], ref_out[k])
                elif out.get(f"{k}_error") or ref_out.get(f"{k}_error"):
                    r[f"{k}_error"] = out.get(f"{k}_error") or ref_out.get(f"{k}_error")
        # every comparison must have run: a forward that raised is a failure, not a pass
        required = ["rel_logits", "rel_logits_vs_hf"] + ([] if text_only else ["rel_vision"])
        r["ok"] = load is None and not r.get("mismatch") and not missing and not unexpected and all(k in r and r[k] <= TOL for k in required)
        results.append(r)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
