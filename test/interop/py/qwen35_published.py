"""Tiny Qwen3.5 / 3.6 VLM checkpoints laid out as their publishers ship them, made by transformers and torch.

transformers builds Qwen3_5ForConditionalGeneration / Qwen3_5MoeForConditionalGeneration from a tiny config (seeded
init, bf16), and its state_dict is written as is with safetensors: the published names and shapes are exactly the
model's parameter names (model.language_model.*, model.visual.*, lm_head.weight), routed experts fused as
Qwen3_5MoeExperts holds them (gate_up_proj [E, 2F, D], gate rows then up rows; down_proj [E, D, F]). The published
files also carry the MTP head transformers does not model (mtp.fc, mtp.pre_fc_norm_{embedding,hidden}, mtp.norm,
mtp.layers.0.* as a full-attention decoder layer whose experts are stored per expert): added with seeded values.
The folder must then load STRICTLY into transformers (nothing missing or mismatched; only mtp.* unexpected).

argv: out_dir dense|moe seed [files]. Prints one JSON line: tensor names with shapes, and the loading info."""
import json, os, sys
import torch
import transformers
from safetensors.torch import save_file

out, kind, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = int(sys.argv[4]) if len(sys.argv) > 4 else 2
moe = kind == "moe"
torch.manual_seed(seed)

D, F, E, L = 48, 20, 6, 4
text = dict(
    hidden_size=D, num_hidden_layers=L, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=12, linear_conv_kernel_dim=4,
    layer_types=["linear_attention", "full_attention"] * (L // 2), full_attention_interval=2, vocab_size=150,
    max_position_embeddings=256, rms_norm_eps=1e-6, hidden_act="silu", attention_bias=False, tie_word_embeddings=False,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25, "mrope_section": [2, 1, 1], "mrope_interleaved": True},
    mtp_num_hidden_layers=1,
)
if moe:
    text.update(moe_intermediate_size=F, shared_expert_intermediate_size=28, num_experts=E, num_experts_per_tok=2, router_aux_loss_coef=0.001)
else:
    text.update(intermediate_size=80)
vision = dict(depth=3, hidden_size=16, intermediate_size=24, num_heads=2, in_channels=3, patch_size=2, temporal_patch_size=2,
              spatial_merge_size=2, out_hidden_size=D, num_position_embeddings=16, hidden_act="gelu_pytorch_tanh")
if moe:
    from transformers import Qwen3_5MoeConfig as Cfg, Qwen3_5MoeForConditionalGeneration as Model
else:
    from transformers import Qwen3_5Config as Cfg, Qwen3_5ForConditionalGeneration as Model
cfg = Cfg(text_config=text, vision_config=vision, tie_word_embeddings=False)
cfg.architectures = [Model.__name__]
model = Model(cfg).to(torch.bfloat16)
with torch.no_grad():
    # init_weights leaves norms at 0 / 1 and biases at 0: seeded values everywhere, so no tensor is a constant a
    # wrong conversion could copy right by accident
    for n, p in model.named_parameters():
        p.copy_((torch.randn(p.shape) * (0.5 if p.dim() > 1 else 0.2)).to(p.dtype))
sd = {k: v.contiguous() for k, v in model.state_dict().items()}


def t(*shape, scale=0.5):
    return (torch.randn(*shape) * scale).to(torch.bfloat16)


hd, H, KV = text["head_dim"], text["num_attention_heads"], text["num_key_value_heads"]
mtp = {"mtp.fc.weight": t(D, 2 * D), "mtp.pre_fc_norm_embedding.weight": t(D, scale=0.2), "mtp.pre_fc_norm_hidden.weight": t(D, scale=0.2), "mtp.norm.weight": t(D, scale=0.2)}
p = "mtp.layers.0."
mtp.update({p + "self_attn.q_proj.weight": t(2 * H * hd, D), p + "self_attn.k_proj.weight": t(KV * hd, D), p + "self_attn.v_proj.weight": t(KV * hd, D),
            p + "self_attn.o_proj.weight": t(D, H * hd), p + "self_attn.q_norm.weight": t(hd, scale=0.2), p + "self_attn.k_norm.weight": t(hd, scale=0.2),
            p + "input_layernorm.weight": t(D, scale=0.2), p + "post_attention_layernorm.weight": t(D, scale=0.2)})
if moe:
    mtp.update({p + "mlp.gate.weight": t(E, D), p + "mlp.shared_expert_gate.weight": t(1, D), p + "mlp.shared_expert.gate_proj.weight": t(28, D),
                p + "mlp.shared_expert.up_proj.weight": t(28, D), p + "mlp.shared_expert.down_proj.weight": t(D, 28)})
    for e in range(E):
        mtp.update({f"{p}mlp.experts.{e}.gate_proj.weight": t(F, D), f"{p}mlp.experts.{e}.up_proj.weight": t(F, D), f"{p}mlp.experts.{e}.down_proj.weight": t(D, F)})
else:
    mtp.update({p + "mlp.gate_proj.weight": t(80, D), p + "mlp.up_proj.weight": t(80, D), p + "mlp.down_proj.weight": t(D, 80)})
sd.update(mtp)

os.makedirs(out, exist_ok=True)
names = sorted(sd)
per = -(-len(names) // files)
weight_map = {}
for i in range(files):
    fn = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
    part = names[i * per:(i + 1) * per]
    save_file({k: sd[k] for k in part}, os.path.join(out, fn), metadata={"format": "pt"})
    weight_map.update({k: fn for k in part})
json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=2)
c = cfg.to_dict()
c["architectures"] = [Model.__name__]
json.dump(c, open(os.path.join(out, "config.json"), "w"), indent=2)

_, info = Model.from_pretrained(out, dtype=torch.bfloat16, output_loading_info=True)
bad = {"missing": sorted(info["missing_keys"]), "unexpected": sorted(k for k in info["unexpected_keys"] if not k.startswith("mtp.")),
       "mismatched": [str(x) for x in info.get("mismatched_keys", [])]}
print(json.dumps({"tensors": {k: list(sd[k].shape) for k in names}, "load": bad, "transformers": transformers.__version__}))
