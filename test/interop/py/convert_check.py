# Loads a ckpt-written DCP with torch.distributed.checkpoint and compares it with the independent reference.
import json, sys, os, tempfile
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
sys.path.insert(0, os.path.dirname(__file__))
from ref import load_hf, hf_to_tt, compare

args = json.loads(sys.argv[1])
sd, cfg = load_hf(args["hf"])
ref = hf_to_tt(sd, cfg, args["target"])
cast = args.get("cast")
if cast:
    ref = {k: v.to(getattr(torch, cast)) for k, v in ref.items()}
md = FileSystemReader(args["dcp"]).read_metadata()
keys = set(md.state_dict_metadata)
problems = []
if keys != set(ref):
    problems.append(f"metadata keys differ: missing {sorted(set(ref) - keys)[:5]} extra {sorted(keys - set(ref))[:5]}")
got = {k: torch.zeros(tuple(m.size), dtype=m.properties.dtype) for k, m in md.state_dict_metadata.items()}
dcp.load(got, storage_reader=FileSystemReader(args["dcp"]))
problems += compare(ref, got)
with tempfile.TemporaryDirectory() as td:
    p = os.path.join(td, "full.pt")
    dcp_to_torch_save(args["dcp"], p)
    full = torch.load(p, weights_only=True)
    problems += ["dcp_to_torch_save: " + x for x in compare(ref, full)]
print(json.dumps({"problems": problems, "tensors": len(got), "torch": torch.__version__}))
