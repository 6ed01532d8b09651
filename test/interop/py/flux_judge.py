"""FLUX.1 judge: diffusers' FluxTransformer2DModel makes the fixture and is the reference; TorchTitan's FluxModel,
built from its Config with the fixture's dims and loaded from ckpt's output as its checkpointer loads (NaN-filled,
ModelWrapper + dcp.load), must compute the same output on the same inputs.

Commands (several in one run, separated by --; each prints one JSON line):
  make <repo> <guidance 0|1>      diffusers model (seeded, f32) saved as a FLUX.1 pipeline repo: model_index.json at
                                  <repo>, the transformer in <repo>/transformer (save_pretrained, 2 shards + index)
  bfl <repo> <file>               the same weights in Black Forest Labs' single-file layout, assembled here with torch
                                  (cat of q/k/v and [q, k, v, proj_mlp], `.scale` norms, norm_out halves swapped back);
                                  diffusers' own convert_flux_transformer_checkpoint_to_diffusers must map it back to
                                  the diffusers state dict exactly
  load <repo> <dir>               ckpt's --to hf output loads in diffusers (FluxTransformer2DModel.from_pretrained,
                                  nothing missing or unexpected) and holds exactly the fixture's tensors
  check <repo> <case.json>        case: {"ckpt": dcp dir, "name": ..., "zero_guidance": bool}; prints one JSON line
                                  with the relative max |Δ| against diffusers (guidance embedder's output zeroed when
                                  the checkpoint was converted with --drop guidance_embedder) and against the full model
"""
import json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch

TOL = 1e-5
DIMS = dict(patch_size=1, in_channels=12, num_layers=2, num_single_layers=3, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=20, pooled_projection_dim=10, axes_dims_rope=(4, 6, 6))


def make(repo, guidance):
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(1234 + guidance)
    m = FluxTransformer2DModel(**DIMS, guidance_embeds=bool(guidance))
    with torch.no_grad():
        # every parameter random and O(0.1): a swapped row block changes the output well above the tolerance
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    tr = os.path.join(repo, "transformer")
    m.save_pretrained(tr, safe_serialization=True, max_shard_size="300KB")
    json.dump({"_class_name": "FluxPipeline", "_diffusers_version": "0.36.0.dev0", "transformer": ["diffusers", "FluxTransformer2DModel"]},
              open(os.path.join(repo, "model_index.json"), "w"))
    files = sorted(f for f in os.listdir(tr) if f.endswith(".safetensors"))
    print(json.dumps({"files": files, "index": os.path.exists(os.path.join(tr, "diffusion_pytorch_model.safetensors.index.json")),
                      "tensors": len(m.state_dict())}))


def diffusers_sd(repo):
    import glob
    from safetensors.torch import load_file
    sd = {}
    for f in sorted(glob.glob(os.path.join(repo, "transformer", "*.safetensors"))):
        sd.update(load_file(f))
    return sd


def make_bfl(repo, path):
    from safetensors.torch import save_file
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
    sd = diffusers_sd(repo)
    out = {}
    lin = lambda a, b: out.update({f"{b}.weight": sd[f"{a}.weight"], f"{b}.bias": sd[f"{a}.bias"]})
    lin("x_embedder", "img_in"); lin("context_embedder", "txt_in")
    lin("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer"); lin("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")
    lin("time_text_embed.text_embedder.linear_1", "vector_in.in_layer"); lin("time_text_embed.text_embedder.linear_2", "vector_in.out_layer")
    if "time_text_embed.guidance_embedder.linear_1.weight" in sd:
        lin("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer"); lin("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")
    for i in range(DIMS["num_layers"]):
        p, q = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        lin(p + "norm1.linear", q + "img_mod.lin"); lin(p + "norm1_context.linear", q + "txt_mod.lin")
        for wb in ("weight", "bias"):
            out[f"{q}img_attn.qkv.{wb}"] = torch.cat([sd[f"{p}attn.{n}.{wb}"] for n in ("to_q", "to_k", "to_v")])
            out[f"{q}txt_attn.qkv.{wb}"] = torch.cat([sd[f"{p}attn.{n}.{wb}"] for n in ("add_q_proj", "add_k_proj", "add_v_proj")])
        for a, b in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"), ("norm_added_q", "txt_attn.norm.query_norm"), ("norm_added_k", "txt_attn.norm.key_norm")):
            out[f"{q}{b}.scale"] = sd[f"{p}attn.{a}.weight"]
        lin(p + "attn.to_out.0", q + "img_attn.proj"); lin(p + "attn.to_add_out", q + "txt_attn.proj")
        lin(p + "ff.net.0.proj", q + "img_mlp.0"); lin(p + "ff.net.2", q + "img_mlp.2")
        lin(p + "ff_context.net.0.proj", q + "txt_mlp.0"); lin(p + "ff_context.net.2", q + "txt_mlp.2")
    for i in range(DIMS["num_single_layers"]):
        p, q = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for wb in ("weight", "bias"):
            out[f"{q}linear1.{wb}"] = torch.cat([sd[f"{p}{n}.{wb}"] for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")])
        lin(p + "proj_out", q + "linear2"); lin(p + "norm.linear", q + "modulation.lin")
        out[f"{q}norm.query_norm.scale"] = sd[f"{p}attn.norm_q.weight"]
        out[f"{q}norm.key_norm.scale"] = sd[f"{p}attn.norm_k.weight"]
    for wb in ("weight", "bias"):
        scale, shift = sd[f"norm_out.linear.{wb}"].chunk(2, 0)
        out[f"final_layer.adaLN_modulation.1.{wb}"] = torch.cat([shift, scale])
    lin("proj_out", "final_layer.linear")
    out = {k: v.contiguous() for k, v in out.items()}
    save_file(out, path, metadata={"format": "pt"})
    # diffusers' converter hard-codes FLUX.1's inner_dim 3072; the same code with the tiny model's
    import inspect, diffusers.loaders.single_file_utils as sfu
    H = DIMS["num_attention_heads"] * DIMS["attention_head_dim"]
    src = inspect.getsource(convert_flux_transformer_checkpoint_to_diffusers).replace("inner_dim = 3072", f"inner_dim = {H}")
    scope = dict(vars(sfu))
    exec(src, scope)
    back = scope["convert_flux_transformer_checkpoint_to_diffusers"](dict(out))
    same = set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    print(json.dumps({"tensors": len(out), "diffusers_converter_roundtrip": same}))


def tt_config():
    from torchtitan.models import flux as F
    from torchtitan.models.common.linear import Linear
    from torchtitan.models.flux.model.layers import EmbedND, LastLayer, MLPEmbedder
    from copy import deepcopy
    heads, hd = DIMS["num_attention_heads"], DIMS["attention_head_dim"]
    hs, cin, ctx, vec = heads * hd, DIMS["in_channels"], DIMS["joint_attention_dim"], DIMS["pooled_projection_dim"]
    lin = lambda i, o, init=F._XAVIER_LINEAR: Linear.Config(in_features=i, out_features=o, bias=True, param_init=init)
    mlp = lambda i: MLPEmbedder.Config(in_dim=i, hidden_dim=hs, in_layer=lin(i, hs, F._NORMAL_02), out_layer=lin(hs, hs, F._NORMAL_02))
    dbl = F._make_double_block_config(hidden_size=hs, num_heads=heads, mlp_ratio=4.0, qkv_bias=True)
    sgl = F._make_single_block_config(hidden_size=hs, num_heads=heads, mlp_ratio=4.0)
    return F.FluxModel.Config(
        in_channels=cin, out_channels=cin, vec_in_dim=vec, context_in_dim=ctx, hidden_size=hs, mlp_ratio=4.0, num_heads=heads,
        depth=DIMS["num_layers"], depth_single_blocks=DIMS["num_single_layers"], axes_dim=DIMS["axes_dims_rope"], theta=10_000, qkv_bias=True,
        img_in=lin(cin, hs), txt_in=lin(ctx, hs),
        clip_encoder=F.FluxEmbedder.Config(version=F._CLIP_ENCODER_VERSION), t5_encoder=F.FluxEmbedder.Config(version=F._T5_ENCODER_VERSION),
        pe_config=EmbedND.Config(dim=hd, theta=10_000, axes_dim=DIMS["axes_dims_rope"]),
        time_in_config=mlp(256), vector_in_config=mlp(vec),
        double_blocks=[deepcopy(dbl) for _ in range(DIMS["num_layers"])],
        single_blocks=[deepcopy(sgl) for _ in range(DIMS["num_single_layers"])],
        final_layer_config=LastLayer.Config(hidden_size=hs, patch_size=1, out_channels=cin, linear=lin(hs, cin, F._ZERO_LINEAR), adaln_linear=lin(hs, 2 * hs, F._ZERO_LINEAR)),
    )


def inputs():
    g = torch.Generator().manual_seed(7)
    B, S_img, S_txt = 2, 12, 5
    img = torch.randn(B, S_img, DIMS["in_channels"], generator=g)
    txt = torch.randn(B, S_txt, DIMS["joint_attention_dim"], generator=g)
    y = torch.randn(B, DIMS["pooled_projection_dim"], generator=g)
    t = torch.tensor([0.25, 0.8])
    # positions: text at 0, image on a 3 × 4 grid (axis 0 = 0), as FLUX's pipeline builds them
    img_ids = torch.zeros(S_img, 3)
    img_ids[:, 1] = torch.arange(S_img) // 4
    img_ids[:, 2] = torch.arange(S_img) % 4
    txt_ids = torch.zeros(S_txt, 3)
    return dict(img=img, txt=txt, y=y, t=t, img_ids=img_ids, txt_ids=txt_ids, guidance=torch.tensor([3.5, 2.0]))


def diffusers_out(repo, x, zero_guidance):
    from diffusers import FluxTransformer2DModel
    m = FluxTransformer2DModel.from_pretrained(os.path.join(repo, "transformer"), torch_dtype=torch.float32).eval()
    has_g = m.config.guidance_embeds
    if zero_guidance:
        # the model TorchTitan can express: no guidance embedding added to the conditioning vector
        with torch.no_grad():
            ge = m.time_text_embed.guidance_embedder.linear_2
            ge.weight.zero_(); ge.bias.zero_()
    with torch.no_grad():
        return m(hidden_states=x["img"], encoder_hidden_states=x["txt"], pooled_projections=x["y"], timestep=x["t"],
                 img_ids=x["img_ids"], txt_ids=x["txt_ids"], guidance=x["guidance"] if has_g else None, return_dict=False)[0]


def tt_out(ckpt, x):
    import judge
    with torch.device("meta"):
        model = tt_config().build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    load = judge.load_like_torchtitan(model, ckpt)
    if load is not None:
        return None, load
    B = x["img"].shape[0]
    with torch.no_grad():
        out = model.eval()(img=x["img"], img_ids=x["img_ids"].expand(B, -1, -1), txt=x["txt"], txt_ids=x["txt_ids"].expand(B, -1, -1), timesteps=x["t"], y=x["y"])
    return out, None


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def check(repo, case):
    x = inputs()
    out, load = tt_out(case["ckpt"], x)
    if out is None:
        return {"name": case["name"], "ok": False, "load": load}
    ref = diffusers_out(repo, x, case.get("zero_guidance", False))
    res = {"name": case["name"], "rel_max_abs": rel(out, ref), "ref_scale": float(ref.abs().max())}
    if case.get("zero_guidance"):
        # the dropped embedder matters: the full FLUX.1-dev output is not what TorchTitan computes
        res["rel_vs_full_guidance"] = rel(out, diffusers_out(repo, x, False))
    res["ok"] = res["rel_max_abs"] <= TOL
    return res


def load(repo, folder):
    from diffusers import FluxTransformer2DModel
    m, info = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32, output_loading_info=True)
    ref = diffusers_sd(repo)
    got = m.state_dict()
    same = set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    bad = {k: v for k, v in info.items() if v}
    print(json.dumps({"loading_info": bad, "tensors": len(got), "equal": same, "ok": same and not bad}))


if __name__ == "__main__":
    # several commands in one process (torch and diffusers load once), separated by "--"; one JSON line each
    args, cmds = sys.argv[1:], []
    while args:
        cut = args.index("--") if "--" in args else len(args)
        cmds.append(args[:cut])
        args = args[cut + 1:]
    for c in cmds:
        if c[0] == "make":
            make(c[1], int(c[2]))
        elif c[0] == "load":
            load(c[1], c[2])
        elif c[0] == "bfl":
            make_bfl(c[1], c[2])
        else:
            print(json.dumps([check(c[1], x) for x in json.load(open(c[2]))]))
