"""`ckpt convert --to hf` output, loaded the way users load it: transformers' from_pretrained(..., output_loading_info=True)
with the class config.json names (AutoModelForCausalLM, or the multimodal class for a VLM config), every missing,
unexpected and mismatched key reported in full; then the logits of the source and of the round trip on the same
tokens, compared bit for bit. A quantized source (FP8 DeepSeek, compressed-tensors INT4 Kimi) is dequantized the
way judge.py does (DeepSeek's fp8_cast_bf16 recipe, compressed-tensors' own decompression); a nested Kimi K2.5 source
is read through its flat copy (kimi_ref.flat_copy). A source's keys that ckpt reports as skipped (`skip`: name
prefixes, e.g. mtp.) may be unexpected on the SOURCE side only.

argv: cases.json ([{name, src, back, skip?: [prefix]}]). Prints one JSON line."""
import json, os, sys, tempfile
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import transformers
import judge


def strict(folder):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    arch = (cfg.get("architectures") or [""])[0]
    cls = getattr(transformers, arch, None) if "ConditionalGeneration" in arch else None
    cls = cls or transformers.AutoModelForCausalLM
    # the judge's own settings (dtype, eager attention and experts), so a source judge.py dequantizes and a round trip
    # loaded here run the same kernels
    model, info = cls.from_pretrained(folder, dtype=judge.DTYPE, attn_implementation="eager", experts_implementation="eager", output_loading_info=True)
    # DeepSeek-V3's MTP layer (index num_hidden_layers) is in the published files and transformers does not model
    # it: it ignores model.layers.61.* (the real model's index) and reports a tiny model's as unexpected. Listed
    # apart, so every other unexpected key still fails.
    n = (cfg.get("text_config") or cfg).get("num_hidden_layers")
    is_mtp = lambda k: cfg.get("model_type") in ("deepseek_v3", "kimi_k2") and k.startswith("model.layers.") and int(k.split(".")[2]) >= n
    unexpected = sorted(info["unexpected_keys"])
    return model, cfg, {"class": type(model).__name__, "missing": sorted(info["missing_keys"]), "unexpected": [k for k in unexpected if not is_mtp(k)],
                        "mtp_layer_keys": len([k for k in unexpected if is_mtp(k)]), "mismatched": [str(x) for x in info.get("mismatched_keys", [])]}


def source(folder, skip):
    cfg = json.load(open(os.path.join(folder, "config.json")))
    if isinstance(cfg.get("text_config"), dict) and cfg.get("model_type") in ("kimi_k25", "kimi_vl"):
        import kimi_ref
        flat = tempfile.mkdtemp(dir=os.path.dirname(folder.rstrip("/")), prefix="kimi-flat-")
        kimi_ref.flat_copy(folder, flat)
        return source(flat, skip)
    if cfg.get("quantization_config"):
        return judge.hf_model(folder, cfg), {"dequantized": cfg["quantization_config"].get("quant_method")}
    model, _, info = strict(folder)
    info["unexpected"] = [k for k in info["unexpected"] if not any(k.startswith(p) for p in skip)]
    return judge.to_dtype(model).eval(), info


def logits(model, vocab):
    tokens = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        return model(tokens).logits


def main():
    torch.set_num_threads(1)
    results = []
    for c in json.load(open(sys.argv[1])):
        back, cfg, info = strict(c["back"])
        back = judge.to_dtype(back).eval()
        src, src_info = source(c["src"], c.get("skip", []))
        vocab = (cfg.get("text_config") or cfg).get("vocab_size") or cfg["vocab_size"]
        a, b = logits(src, vocab), logits(back, vocab)
        results.append({"name": c["name"], "back": info, "source": src_info, "config_architectures": cfg.get("architectures"),
                        "identical": bool(a.shape == b.shape and torch.equal(a, b)), "max_abs": float((a - b).abs().max()) if a.shape == b.shape else None})
    print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "results": results}))


if __name__ == "__main__":
    main()
