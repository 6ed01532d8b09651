# Independent reference for the interop suite: HF Llama 3 -> TorchTitan state dict written from the spec
# (docs/torchtitan-layout.md §2-§5), in PyTorch, sharing no code with ckpt.
import glob, json, os
import torch
from safetensors.torch import load_file


def load_hf(d):
    sd = {}
    for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        sd.update(load_file(f))
    with open(os.path.join(d, "config.json")) as fh:
        cfg = json.load(fh)
    return sd, cfg


def permute_hf_to_tt(w, n_heads, hd):
    # TorchTitan's _reverse_permute: view as (heads, 2, hd/2, cols) -> swap -> (heads, hd/2, 2, cols)
    rows, cols = w.shape[0], w.shape[1:]
    assert rows == n_heads * hd, (rows, n_heads, hd)
    return w.view(n_heads, 2, hd // 2, *cols).transpose(1, 2).reshape(rows, *cols)


def hf_to_tt(sd, cfg, target="torchtitan@main"):
    hq = cfg["num_attention_heads"]
    hkv = cfg.get("num_key_value_heads", hq)
    hd = cfg.get("head_dim") or cfg["hidden_size"] // hq
    main = target == "torchtitan@main"
    attn = "attention.qkv_linear." if main else "attention."
    out = {}
    for k, v in sd.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue
        if k == "model.embed_tokens.weight":
            out["tok_embeddings.weight"] = v
        elif k == "model.norm.weight":
            out["norm.weight"] = v
        elif k == "lm_head.weight":
            out["lm_head.weight" if main else "output.weight"] = v
        else:
            parts = k.split(".")
            L = parts[2]
            rest = ".".join(parts[3:])
            pre = f"layers.{L}."
            table = {
                "self_attn.q_proj.weight": (attn + "wq.weight", ("perm", hq)),
                "self_attn.k_proj.weight": (attn + "wk.weight", ("perm", hkv)),
                "self_attn.v_proj.weight": (attn + "wv.weight", None),
                "self_attn.o_proj.weight": ("attention.wo.weight", None),
                "mlp.gate_proj.weight": ("feed_forward.w1.weight", None),
                "mlp.up_proj.weight": ("feed_forward.w3.weight", None),
                "mlp.down_proj.weight": ("feed_forward.w2.weight", None),
                "input_layernorm.weight": ("attention_norm.weight", None),
                "post_attention_layernorm.weight": ("ffn_norm.weight", None),
            }
            name, op = table[rest]
            if op is not None:
                v = permute_hf_to_tt(v, op[1], hd)
            out[pre + name] = v
    if "lm_head.weight" not in sd and cfg.get("tie_word_embeddings"):
        out["lm_head.weight" if main else "output.weight"] = sd["model.embed_tokens.weight"]
    return out


def raw(t):
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def compare(ref, got):
    """Returns a list of problems (keys, dtypes, shapes, bytes)."""
    problems = []
    if set(ref) != set(got):
        problems.append(f"keys differ: missing {sorted(set(ref) - set(got))[:5]} extra {sorted(set(got) - set(ref))[:5]}")
    for k in sorted(set(ref) & set(got)):
        a, b = ref[k], got[k]
        if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
            problems.append(f"{k}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
        elif raw(a) != raw(b):
            diff = (a.view(torch.uint8) != b.view(torch.uint8)).nonzero()
            problems.append(f"{k}: bytes differ, first at {diff[0].tolist() if len(diff) else '?'}")
    return problems
