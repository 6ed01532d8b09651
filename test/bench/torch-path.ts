// The conversion path PyTorch users have today, as a script run inside the PyTorch root: load the safetensors
// with safetensors.torch, rename to TorchTitan names and apply the Llama 3 q/k permutation (TorchTitan's
// state-dict adapter `_reverse_permute`), optionally `.float()` first (TorchTitan's convert_from_hf loads into an
// f32 model), then `dcp.save`. The tensor list (output name ← source name, heads to permute) comes from ckpt's own
// plan, so both sides write the same tensors.

export const TORCH_CONVERT_PY = String.raw`
import json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from safetensors.torch import load_file
import torch.distributed.checkpoint as dcp

spec = json.load(open(sys.argv[1]))
src = {}
for f in spec["files"]:
    src.update(load_file(f))

def reverse_permute(w, n_heads):
    # torchtitan/models/llama3/model/state_dict_adapter.py: HF (rotate-half) rows -> Meta (interleaved) rows
    dim1, dim2 = w.shape
    return w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)

with torch.inference_mode():
    sd = {}
    for name, source, heads in spec["tensors"]:
        w = src[source]
        if spec["f32"]:
            w = w.float()
        if heads:
            w = reverse_permute(w, heads)
        sd[name] = w
    del src
    dcp.save(sd, checkpoint_id=spec["out"])
print(json.dumps({"tensors": len(sd)}))
`;

/** From a `--dry-run --json` plan: [output name, source name, heads to permute or null]. */
export function torchTensorList(plan: { tensors: { name: string; recipe: string }[] }): [string, string, number | null][] {
  return plan.tensors.map((t) => {
    const rope = /^rope_hf_to_tt\(([\w.]+), heads=(\d+), hd=\d+\)$/.exec(t.recipe);
    if (rope) return [t.name, rope[1]!, Number(rope[2])];
    if (!/^[\w.]+$/.test(t.recipe)) throw new Error(`bench: unexpected recipe for ${t.name}: ${t.recipe}`);
    return [t.name, t.recipe, null];
  });
}
