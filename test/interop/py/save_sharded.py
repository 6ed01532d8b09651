# PyTorch writes an N-rank FSDP-style DCP (Shard(0) DTensors, gloo) of the reference model, for resharding tests.
import json, os, sys, socket
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import distribute_tensor as _distribute, Shard
sys.path.insert(0, os.path.dirname(__file__))
import inspect as _inspect


def distribute_tensor(t, mesh, placements):
    # Every rank holds the same full reference: slice locally (2.14's gloo scatter rejects bf16).
    if "src_data_rank" in _inspect.signature(_distribute).parameters:
        return _distribute(t, mesh, placements, src_data_rank=None)
    return _distribute(t, mesh, placements)
from ref import load_hf, hf_to_tt


def worker(rank, args, port):
    import faulthandler
    faulthandler.dump_traceback_later(240, exit=True)  # a hung collective fails the test instead of CI
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args["world"])
    mesh = init_device_mesh("cpu", (args["world"],))
    sd, cfg = load_hf(args["hf"])
    ref = hf_to_tt(sd, cfg, args["target"])
    dcp.save({k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in ref.items()}, storage_writer=FileSystemWriter(args["out"]))
    dist.barrier()
    os._exit(0)  # destroy_process_group can hang on PyTorch 2.6 (gloo)


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    mp.spawn(worker, args=(args, port), nprocs=args["world"], join=True)
    print(json.dumps({"ok": True}))
