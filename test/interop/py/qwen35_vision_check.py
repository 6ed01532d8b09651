"""Qwen3.5 VLM: a ckpt output (DCP) loads STRICTLY into TorchTitan main's qwen3_5 model WITH its vision
encoder built from config.json's vision_config (NaN-filled, then ModelWrapper + dcp.load as its checkpointer does: no
key missing or unexpected, no NaN left), and every vision_encoder tensor equals a reference computed here from the HF
safetensors with torch alone (Conv3d weight .reshape(out, -1), qkv .chunk(3, 0), blocks -> layers).
argv: hf_dir ckpt_dir. Prints one JSON line."""
import glob, json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from safetensors.torch import load_file
import judge

hf, ckpt = sys.argv[1], sys.argv[2]
cfg = json.load(open(os.path.join(hf, "config.json")))
text = {**{k: v for k, v in cfg.items() if k not in ("text_config", "vision_config")}, **cfg["text_config"]}
vc = cfg["vision_config"]
q = judge._import_tt_qwen35()
mc = judge.qwen3_5_config(text)
mc.vision_encoder = q._qwen35_vision_encoder_config(
    dim=vc["hidden_size"], ffn_dim=vc["intermediate_size"], num_layers=vc["depth"], num_heads=vc["num_heads"],
    patch_size=vc["patch_size"], temporal_patch_size=vc["temporal_patch_size"], spatial_merge_size=vc["spatial_merge_size"],
    out_hidden_size=vc["out_hidden_size"], num_position_embeddings=vc["num_position_embeddings"], in_channels=vc["in_channels"])
with torch.device("meta"):
    model = mc.build()
model.to_empty(device="cpu")
with torch.no_grad():
    model.init_weights(buffer_device=torch.device("cpu"))
# the stored dtype (bf16 fixture) on every float parameter, as TorchTitan trains it
for p in model.parameters():
    p.data = p.data.to(torch.bfloat16)
load = judge.load_like_torchtitan(model, ckpt)

sd = {}
for f in sorted(glob.glob(os.path.join(hf, "*.safetensors"))):
    sd.update(load_file(f))
V = "model.visual."
ref = {
    "patch_embed.weight": sd[V + "patch_embed.proj.weight"].reshape(vc["hidden_size"], -1),
    "patch_embed.bias": sd[V + "patch_embed.proj.bias"],
    "pos_embed": sd[V + "pos_embed.weight"],
}
for k, v in sd.items():
    if not k.startswith(V + "blocks."):
        if k.startswith(V + "merger."):
            ref[k[len(V):]] = v
        continue
    rest = "layers." + k[len(V + "blocks."):]
    if ".attn.qkv." in rest:
        for part, t in zip(("wq", "wk", "wv"), v.chunk(3, 0)):
            ref[rest.replace("attn.qkv.", f"attn.{part}.")] = t
    else:
        ref[rest] = v
got = {n: t for n, t in model.vision_encoder.state_dict().items()}
mismatch = [n for n in ref if n not in got or got[n].shape != ref[n].shape or not torch.equal(got[n], ref[n])]
print(json.dumps({"load": load, "vision_tensors": len(got), "ref_tensors": len(ref), "extra": sorted(set(got) - set(ref)),
                  "mismatch": mismatch[:8], "ok": load is None and not mismatch and set(got) == set(ref)}))
