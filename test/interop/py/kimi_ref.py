# Kimi K2.x reference side, run in the sid root (PyTorch 2.14, compressed-tensors 0.17.1, transformers 5.12).
#   kimi_ref.py decompress SRC DST       compressed-tensors' own decompression (ModelCompressor.decompress_model over
#                                        the source's Linear modules, after apply_quantization_config matched them with
#                                        the config's targets and ignore list) of a pack-quantized checkpoint, written
#                                        as the flat bf16 HF DeepseekV3ForCausalLM folder transformers loads
#                                        (model.safetensors, config.json without quantization_config; K2.5's nested
#                                        text_config and language_model.[model.] names flattened, vision tower dropped),
#                                        plus exact.safetensors: the packed weights' exact products (nibble - 8) * scale
#                                        worked in float64 from compressed-tensors' unpack_from_int32 and stored as f32
#                                        after checking f32 holds them exactly
#   kimi_ref.py table OUT_DIR            every nibble x all 65536 BF16 scales (one scale per row of 16 values, value c of
#                                        row s is nibble c) through compressed-tensors' unpack_from_int32 + dequantize
#                                        (its BF16 result: ct_bf16.bin) and the exact float64 product stored as f32
#                                        (exact_f32.bin, after checking f32 holds it): raw little-endian bits
#   kimi_ref.py experts REF CKPT bf16|f32  every routed-expert tensor of a ckpt DCP output equals REF's (bf16:
#                                        compressed-tensors' decompression; f32: the exact products) bit for bit
#   kimi_ref.py swap-nibbles SRC DST     a copy of SRC whose weight_packed words hold their 8 nibbles in reverse order
#                                        (a converter reading the high nibble first): negative control
#   kimi_ref.py mtp-load DEEPSEEK_HF CKPT  TorchTitan's DeepSeek-V3 built with num_nextn_predict_layers MTP layers
#                                        loads CKPT strictly (keys equal both ways, no NaN after a NaN-filled load)
import glob
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file


def load_sd(folder):
    sd = {}
    for f in sorted(glob.glob(os.path.join(folder, "*.safetensors"))):
        sd.update(load_file(f))
    return sd


def flat_name(k):
    """K2.5's language_model.[model.] spellings as KimiK25StateDictAdapter reads them; None for the vision tower."""
    if k.startswith(("vision_tower.", "mm_projector.", "multi_modal_projector.")):
        return None
    for a, b in (("language_model.model.", "model."), ("language_model.layers.", "model.layers."),
                 ("language_model.embed_tokens.", "model.embed_tokens."), ("language_model.norm.", "model.norm."), ("language_model.", "")):
        if k.startswith(a):
            return b + k[len(a):]
    return k


def flat_config(cfg):
    """(text config, quantization_config): K2.5 nests both in text_config; K2 Thinking keeps them at the top."""
    text = dict(cfg.get("text_config") or cfg)
    q = text.pop("quantization_config", None) or cfg.get("quantization_config")
    text.pop("quantization_config", None)
    return text, q


def _set_module(root, name, mod):
    parts = name.split(".")
    cur = root
    for p in parts[:-1]:
        if not hasattr(cur, p):
            cur.add_module(p, torch.nn.Module())
        cur = getattr(cur, p)
    cur.add_module(parts[-1], mod)


def ct_decompress(sd, qcfg):
    """compressed-tensors decompression of every packed module: {module: bf16 weight}, {module: f32 exact product}."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.compressors.pack_quantized import unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    qc = QuantizationConfig.model_validate(qcfg)
    root = torch.nn.Module()
    packed = sorted(k[: -len(".weight_packed")] for k in sd if k.endswith(".weight_packed"))
    # Every module that is an nn.Linear in HF's DeepseekV3 (2-D weights except the embedding and the MoE router,
    # which are Embedding / DeepseekV3TopkRouter there): apply_quantization_config decides which are quantized.
    linears = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and not k.endswith(("embed_tokens.weight", "mlp.gate.weight")):
            linears[k[: -len(".weight")]] = (v.shape[0], v.shape[1])
    for m in packed:
        o, i = (int(x) for x in sd[m + ".weight_shape"].tolist())
        linears[m] = (o, i)
    for name, (o, i) in linears.items():
        _set_module(root, name, torch.nn.Linear(i, o, bias=False, device="meta"))
    apply_quantization_config(root, qc)
    schemed = sorted(n for n, mod in root.named_modules() if getattr(mod, "quantization_scheme", None) is not None)
    if schemed != packed:
        raise SystemExit(f"kimi_ref: compressed-tensors would quantize {sorted(set(schemed) - set(packed))[:4]} and not "
                         f"{sorted(set(packed) - set(schemed))[:4]}: the checkpoint disagrees with its own config")
    for m in packed:
        mod = root.get_submodule(m)
        for n in list(mod._parameters):
            del mod._parameters[n]
        for n in ("weight_packed", "weight_scale", "weight_shape"):
            mod.register_parameter(n, torch.nn.Parameter(sd[f"{m}.{n}"].clone(), requires_grad=False))
    ModelCompressor(quantization_config=qc).decompress_model(root)
    dec, exact = {}, {}
    for m in packed:
        w = root.get_submodule(m).weight.detach()
        shape = [int(x) for x in sd[m + ".weight_shape"].tolist()]
        if w.dtype != torch.bfloat16 or list(w.shape) != shape:
            raise SystemExit(f"kimi_ref: {m} decompressed to {w.dtype} {list(w.shape)}")
        dec[m] = w.contiguous()
        q = unpack_from_int32(sd[m + ".weight_packed"], 4, torch.Size(shape))  # compressed-tensors' own unpacking
        s = sd[m + ".weight_scale"]
        group = shape[1] // s.shape[1] if shape[1] % s.shape[1] == 0 else None
        if group is None:
            raise SystemExit(f"kimi_ref: {m}: {shape[1]} inputs, {s.shape[1]} scales")
        e64 = q.double() * s.double().repeat_interleave(group, 1)
        e32 = e64.float()
        fin = torch.isfinite(e32)
        if not torch.equal(e32.double()[fin], e64[fin]):
            raise SystemExit(f"kimi_ref: {m}: an exact product does not fit f32")
        exact[m] = e32.contiguous()
    return dec, exact


def table(out):
    from compressed_tensors.compressors.pack_quantized import pack_to_int32, unpack_from_int32
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    q = (torch.arange(16, dtype=torch.int8) - 8).reshape(1, 16).expand(65536, 16).contiguous()
    packed = pack_to_int32(q, 4)  # [65536, 2] I32, low nibble first
    scale = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).reshape(65536, 1)
    unpacked = unpack_from_int32(packed, 4, torch.Size([65536, 16]))
    assert torch.equal(unpacked, q)
    ct = dequantize(x_q=unpacked, scale=scale)
    assert ct.dtype == torch.bfloat16
    e64 = unpacked.double() * scale.double()
    e32 = e64.float()
    fin = torch.isfinite(e32)  # elsewhere the scale is inf/NaN or |q * s| >= 2^128 (f32 overflow)
    assert torch.equal(e32.double()[fin], e64[fin]), "an exact product does not fit f32"
    packed.contiguous().numpy().tofile(os.path.join(out, "packed.bin"))
    ct.contiguous().view(torch.int16).numpy().tofile(os.path.join(out, "ct_bf16.bin"))
    e32.contiguous().view(torch.int32).numpy().tofile(os.path.join(out, "exact_f32.bin"))
    return {"rows": 65536, "nonfinite_rows": int((~torch.isfinite(ct.float())).any(-1).sum())}


def flat_copy(src, dst):
    """K2.5's nested layout (text_config, language_model.[model.] names) as the flat DeepSeek-V3 one, still packed."""
    cfg = json.load(open(os.path.join(src, "config.json")))
    text, q = flat_config(cfg)
    out = {}
    for k, v in load_sd(src).items():
        n = flat_name(k)
        if n is not None:
            out[n] = v.contiguous()
    os.makedirs(dst, exist_ok=True)
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    text["quantization_config"] = q
    json.dump(text, open(os.path.join(dst, "config.json"), "w"), indent=2)


def decompress(src, dst):
    cfg = json.load(open(os.path.join(src, "config.json")))
    text, q = flat_config(cfg)
    sd = load_sd(src)
    dec, exact = ct_decompress(sd, q)
    out = {}
    for k, v in sd.items():
        if k.endswith((".weight_packed", ".weight_scale", ".weight_shape")):
            continue
        n = flat_name(k)
        if n is not None:
            out[n] = v.contiguous()
    for m, w in dec.items():
        out[flat_name(m) + ".weight"] = w
    os.makedirs(dst, exist_ok=True)
    save_file(out, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    save_file({flat_name(m) + ".weight": w for m, w in exact.items()}, os.path.join(dst, "exact.safetensors.ref"), metadata={"format": "pt"})
    text.update(model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"])
    json.dump(text, open(os.path.join(dst, "config.json"), "w"), indent=2)
    nonfinite = sum(int((~torch.isfinite(w.float())).sum()) for w in dec.values())
    rounded = sum(int((w.float() != exact[m]).sum()) for m, w in dec.items())
    return {"modules": len(dec), "elements": sum(int(w.numel()) for w in dec.values()), "nonfinite": nonfinite, "bf16_rounded": rounded}


def experts(ref, ckpt, mode):
    import torch.distributed.checkpoint as dcp
    sd = load_file(os.path.join(ref, "exact.safetensors.ref")) if mode == "f32" else load_file(os.path.join(ref, "model.safetensors"))
    md = dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata
    names = {"gate_proj": "w1_EFD", "up_proj": "w3_EFD", "down_proj": "w2_EDF"}
    per = {}
    for k, v in sd.items():
        p = k.split(".")
        if len(p) == 8 and p[:2] == ["model", "layers"] and p[3:5] == ["mlp", "experts"] and p[7] == "weight":
            L, E, proj = p[2], int(p[5]), p[6]
            per.setdefault(f"layers.{L}.moe.routed_experts.inner_experts.{names[proj]}", {})[E] = v
    want = {k: torch.stack([d[e] for e in sorted(d)]) for k, d in per.items()}
    missing = sorted(k for k in want if k not in md)
    got = {k: torch.empty(md[k].size, dtype=want[k].dtype) for k in want if k in md}
    dtypes = {k: str(md[k].properties.dtype) for k in got}
    dcp.load(got, checkpoint_id=ckpt)
    iv = torch.int16 if mode == "bf16" else torch.int32
    bad = []
    for k in got:
        if dtypes[k] != str(want[k].dtype) or not torch.equal(got[k].view(iv), want[k].view(iv)):
            bad.append(k)
    return {"compared": len(got), "elements": sum(int(v.numel()) for v in got.values()), "missing": missing, "differ": bad, "dtypes": sorted(set(dtypes.values()))}


def swap_nibbles(src, dst):
    os.makedirs(dst, exist_ok=True)
    for f in sorted(glob.glob(os.path.join(src, "*.safetensors"))):
        sd = load_file(f)
        for k in list(sd):
            if k.endswith(".weight_packed"):
                w = sd[k].view(torch.int32).to(torch.int64) & 0xFFFFFFFF
                r = torch.zeros_like(w)
                for j in range(8):
                    r |= ((w >> (4 * j)) & 15) << (4 * (7 - j))
                sd[k] = r.to(torch.uint32).view(torch.int32) if hasattr(torch, "uint32") else r.to(torch.int32)
        save_file(sd, os.path.join(dst, os.path.basename(f)), metadata={"format": "pt"})
    for f in os.listdir(src):
        if not f.endswith(".safetensors"):
            p = os.path.join(src, f)
            if os.path.isfile(p):
                shutil.copy(p, os.path.join(dst, f))
    return {"ok": True}


def mtp_load(hf, ckpt):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import judge
    cfg = json.load(open(os.path.join(hf, "config.json")))
    n = int(cfg.get("num_nextn_predict_layers") or 0)
    mc = judge.deepseek_v3_config(cfg)
    mc.mtp_layers = judge.tt_dsv3._build_mtp_layers(mc.layers[-1], dim=cfg["hidden_size"], num_mtp_layers=n)
    for _, norm, _, _ in mc.traverse(judge.RMSNorm.Config):
        norm.eps = float(cfg["rms_norm_eps"])
    with torch.device("meta"):
        model = mc.build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    model = judge.to_dtype(model)
    keys = sorted(judge.persistent_tensors(model))
    err = judge.load_like_torchtitan(model, ckpt)
    mtp_keys = [k for k in keys if k.startswith("mtp_layers.")]
    differ = []
    if err is None and n:
        # the MTP-only tensors equal the HF source's (FP8 dequantized by judge.dequantized_copy, as the forward judge does)
        import tempfile
        src = hf
        with tempfile.TemporaryDirectory(dir=os.path.dirname(hf.rstrip("/"))) as tmp:
            if cfg.get("quantization_config"):
                judge.dequantized_copy(hf, cfg, tmp)
                src = tmp
            sd = load_sd(src)
        tt = judge.persistent_tensors(model)
        L = cfg["num_hidden_layers"]
        for i in range(n):
            for a, b in (("enorm.weight", "enorm.weight"), ("hnorm.weight", "hnorm.weight"), ("eh_proj.weight", "eh_proj.weight"),
                         ("shared_head.norm.weight", "mtp_norm.weight"), ("input_layernorm.weight", "attention_norm.weight")):
                ref = sd[f"model.layers.{L + i}.{a}"].to(tt[f"mtp_layers.{i}.{b}"].dtype)
                if not torch.equal(ref, tt[f"mtp_layers.{i}.{b}"].detach()):
                    differ.append(f"mtp_layers.{i}.{b}")
    return {"mtp_layers": n, "keys": len(keys), "mtp_keys": len(mtp_keys), "mtp_sample": mtp_keys[:3], "error": err, "differ": differ}


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    res = {"table": lambda: table(*args), "decompress": lambda: decompress(*args), "experts": lambda: experts(*args), "swap-nibbles": lambda: swap_nibbles(*args),
           "mtp-load": lambda: mtp_load(*args)}[cmd]()
    print(json.dumps(res))
    sys.exit(0 if not (res.get("differ") or res.get("missing") or res.get("error")) else 1)
