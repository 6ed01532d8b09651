# Multi-process (gloo, CPU) check of a ckpt-sharded DCP: every rank builds the DTensors FSDP2 (x TP) would
# hold, with PyTorch's own distribute_tensor, and dcp.load fills them; each local shard must equal PyTorch's
# own local shard of the independent reference bit for bit ("reader": "hf" loads per-rank safetensors through
# HuggingFaceStorageReader instead of a DCP folder). Optionally PyTorch saves the same DTensors so
# the .metadata chunk lists can be compared, and read bytes per rank are measured from /proc/self/io.
import json, os, sys, socket
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import distribute_tensor as _distribute, Shard, Replicate
try:
    from torch.distributed.tensor.placement_types import _StridedShard
except ImportError:
    _StridedShard = None
sys.path.insert(0, os.path.dirname(__file__))
import inspect as _inspect


def distribute_tensor(t, mesh, placements):
    # Every rank holds the same full reference: slice locally (2.14's gloo scatter rejects bf16).
    if "src_data_rank" in _inspect.signature(_distribute).parameters:
        return _distribute(t, mesh, placements, src_data_rank=None)
    return _distribute(t, mesh, placements)
from ref import load_hf, hf_to_tt, raw

# TorchTitan's llama3 TP plan (sharding.md §3), written here independently of mappings/llama3.json
COLWISE = ("tok_embeddings.weight", ".wq.weight", ".wk.weight", ".wv.weight", "w1.weight", "w3.weight", "lm_head.weight", "output.weight")
ROWWISE = ("wo.weight", "w2.weight")


def placements(name, tp):
    if tp == 1:
        return [Shard(0)]
    if name.endswith(COLWISE):
        return [_StridedShard(0, split_factor=tp), Shard(0)]
    if name.endswith(ROWWISE):
        return [Shard(0), Shard(1)]
    return [Shard(0), Replicate()]


def rchar():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def worker(rank, args, port):
    import faulthandler
    faulthandler.dump_traceback_later(240, exit=True)  # a hung collective fails the test instead of CI
    world = args["world"]
    tp = args.get("tp", 1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world // tp, tp), mesh_dim_names=("dp_shard", "tp")) if tp > 1 else init_device_mesh("cpu", (world,))
    sd, cfg = load_hf(args["hf"])
    ref = hf_to_tt(sd, cfg, args["target"])
    problems = []
    want = {k: distribute_tensor(v, mesh, placements(k, tp)) for k, v in ref.items()}
    dest = {k: distribute_tensor(torch.zeros_like(v), mesh, placements(k, tp)) for k, v in ref.items()}
    dist.barrier()
    before = rchar()
    if args.get("reader") == "hf":
        # per-rank safetensors with DCP_SHARDING_INFO (dcp-format.md section 10), PyTorch 2.8+
        from torch.distributed.checkpoint import HuggingFaceStorageReader
        reader = HuggingFaceStorageReader(args["dcp"])
    else:
        reader = FileSystemReader(args["dcp"])
    dcp.load(dest, storage_reader=reader)
    read = rchar() - before
    for k in sorted(ref):
        a, b = want[k].to_local(), dest[k].to_local()
        if tuple(a.shape) != tuple(b.shape) or raw(a) != raw(b):
            problems.append(f"rank {rank}: {k}: local shard {tuple(b.shape)} differs from PyTorch's {tuple(a.shape)}")
    if args.get("save_ref"):
        dcp.save(want, storage_writer=FileSystemWriter(args["save_ref"]))
    gathered = [None] * world
    dist.all_gather_object(gathered, {"problems": problems, "read": read})
    if rank == 0:
        out = {"problems": sum((g["problems"] for g in gathered), []), "read_per_rank": [g["read"] for g in gathered], "torch": torch.__version__}
        if args.get("save_ref"):
            ours = FileSystemReader(args["dcp"]).read_metadata().state_dict_metadata
            theirs = FileSystemReader(args["save_ref"]).read_metadata().state_dict_metadata
            diffs = []
            for k in sorted(theirs):
                a = sorted((tuple(c.offsets), tuple(c.sizes)) for c in theirs[k].chunks)
                b = sorted((tuple(c.offsets), tuple(c.sizes)) for c in ours[k].chunks) if k in ours else None
                if a != b:
                    diffs.append(f"{k}: pytorch {a} vs ckpt {b}")
            out["chunk_diffs"] = diffs
        with open(args["result"], "w") as f:
            json.dump(out, f)
    dist.barrier()
    os._exit(0)  # destroy_process_group can hang on PyTorch 2.6 (gloo)


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    torch.set_num_threads(1)
    mp.spawn(worker, args=(args, port), nprocs=args["world"], join=True)
    with open(args["result"]) as f:
        print(f.read())
