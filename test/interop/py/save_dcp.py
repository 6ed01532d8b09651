# Writes the reference TorchTitan state dict with PyTorch's own dcp.save (single process), for our reader.
import json, sys, os
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
sys.path.insert(0, os.path.dirname(__file__))
from ref import load_hf, hf_to_tt

args = json.loads(sys.argv[1])
sd, cfg = load_hf(args["hf"])
ref = hf_to_tt(sd, cfg, args["target"])
if args.get("prefix"):
    ref = {"model": ref, "optimizer": {"step": torch.tensor(3)}}
dcp.save(ref, storage_writer=FileSystemWriter(args["out"]))
print(json.dumps({"ok": True}))
