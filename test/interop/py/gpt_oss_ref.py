# gpt-oss reference side, run in the sid root with transformers 5.12 and PyTorch 2.14.
#   gpt_oss_ref.py table OUT_DIR           all 16 x 256 (nibble, scale) pairs through transformers' MXFP4 dequantization
#                                          (integrations/mxfp4.py convert_moe_packed_tensors) and PyTorch's
#                                          QuantizedHuggingFaceStorageReader._dequantize_tensor_mxfp4, bf16 and f32: raw
#                                          little-endian bits, one row per scale (value c of row s is nibble c >> 1)
#   gpt_oss_ref.py hf-bf16 MXFP4_DIR OUT   transformers loads the MXFP4 checkpoint (dequantizing, as it does on CPU) and
#                                          saves it: the bf16 HF layout GptOssForCausalLM itself writes
#   gpt_oss_ref.py experts HF_BF16_DIR CKPT  every TorchTitan expert weight of a ckpt DCP output equals transformers'
#                                          dequantized tensor (transposed [E, D, 2F] -> [E, 2F, D]) bit for bit
#   gpt_oss_ref.py load-hf DIR             transformers loads DIR as GptOssForCausalLM with no missing/unexpected keys and no
#                                          quantization_config; prints its logits on fixed tokens (JSON)
import json
import os
import sys
import types

import torch


def table(out):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors
    from torch.distributed.checkpoint.quantized_hf_storage import QuantizedHuggingFaceStorageReader
    scales = torch.arange(256, dtype=torch.uint8).reshape(1, 256, 1)
    byte = torch.tensor([(b << 4) | b for b in range(16)], dtype=torch.uint8)
    blocks = byte.reshape(1, 1, 1, 16).expand(1, 256, 1, 16).contiguous()
    res = {}
    for name, dt in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        tf = convert_moe_packed_tensors(blocks, scales, dtype=dt)  # [1, 32, 256]: transformers transposes to HF's layout
        tf = tf.transpose(1, 2).contiguous().reshape(256, 32)
        stub = types.SimpleNamespace(target_dtype=dt)
        req = types.SimpleNamespace(storage_offsets=[0, 0, 0], lengths=[1, 256, 32])
        pt = QuantizedHuggingFaceStorageReader._dequantize_tensor_mxfp4(stub, blocks, scales, req, 0, 0).reshape(256, 32)
        iv = torch.int16 if dt == torch.bfloat16 else torch.int32
        for who, t in (("transformers", tf), ("torch", pt)):
            t.contiguous().view(iv).numpy().tofile(os.path.join(out, f"{who}_{name}.bin"))
        res[name] = {"nonfinite_rows": sorted({int(r) for r in (~torch.isfinite(tf.float())).nonzero()[:, 0]})}
    print(json.dumps(res))


def hf_bf16(src, dst):
    # transformers' save_pretrained of a dequantized MXFP4 model leaves the expert weights out (transformers 5.12), so
    # the state dict it loaded is written with safetensors directly, next to config.json without quantization_config.
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Mxfp4Config
    model = AutoModelForCausalLM.from_pretrained(src, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.bfloat16)
    os.makedirs(dst, exist_ok=True)
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg.pop("quantization_config")
    json.dump(cfg, open(os.path.join(dst, "config.json"), "w"), indent=2)
    print(json.dumps({"tensors": len(sd), "experts": sorted(k for k in sd if k.endswith(("gate_up_proj", "down_proj")))[:2]}))


def experts(hf, ckpt):
    import glob
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    sd = {}
    for f in sorted(glob.glob(os.path.join(hf, "*.safetensors"))):
        sd.update(load_file(f))
    md = dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata
    want = {}
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj") or k.endswith("mlp.experts.down_proj"):
            L = k.split(".")[2]
            tt = f"layers.{L}.moe.routed_experts.inner_experts." + ("mlp1_weight_EGD" if "gate_up" in k else "mlp2_weight_EDF")
            want[tt] = v.transpose(1, 2).contiguous()
    got = {k: torch.empty(md[k].size, dtype=want[k].dtype) for k in want}
    dcp.load(got, checkpoint_id=ckpt)
    bad = [k for k in want if not torch.equal(got[k].view(torch.int16), want[k].view(torch.int16))]
    print(json.dumps({"compared": len(want), "elements": sum(int(v.numel()) for v in want.values()), "differ": bad}))
    sys.exit(1 if bad or not want else 0)


def load_hf(d):
    from transformers import AutoModelForCausalLM
    model, info = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, output_loading_info=True, attn_implementation="eager")
    cfg = json.load(open(os.path.join(d, "config.json")))
    tokens = torch.randint(0, cfg["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(tokens).logits
    print(json.dumps({"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]), "mismatched": [str(x) for x in info.get("mismatched_keys", [])],
                      "quantization_config": "quantization_config" in cfg, "logits": logits.flatten().tolist()}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    {"table": lambda: table(sys.argv[2]), "hf-bf16": lambda: hf_bf16(sys.argv[2], sys.argv[3]),
     "experts": lambda: experts(sys.argv[2], sys.argv[3]), "load-hf": lambda: load_hf(sys.argv[2])}[cmd]()
