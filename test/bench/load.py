# `npm run bench -- --load`: how long TorchTitan main takes to load a checkpoint into its model at world N.
# Runs in the sid root (PyTorch 2.14 + TorchTitan main; env PYTHONPATH=/opt/stubs:/opt/spmd:/opt/tt
# TORCHDYNAMO_DISABLE=1), driven by test/bench/load.ts.
#
#   python3 load.py convert '{"hf": DIR, "out": DIR, "flavor": "1B"}'     converter-style DCP (as TorchTitan's
#       scripts/checkpoint_conversion/convert_from_hf.py writes it: from_hf on full tensors, dcp.save from one
#       process, one chunk per tensor; dtype kept, where the script would write float32)
#   python3 load.py load '{"cases": [{"id": ID, "kind": "dcp"|"hf"|"st", "path": DIR}, ...], "world": N, "rounds": R,
#       "cold": bool, "flavor": "1B", "hf_assets": DIR, "result": FILE}'    (one process group, model built once;
#       VmHWM is reset through /proc/self/clear_refs before each case)
#
# Every rank of a gloo group builds TorchTitan's own llama3 flavor (model_registry(flavor).model) on the meta
# device and parallelises it with TorchTitan's parallelize_llama on ParallelDims(dp_shard=N): FSDP2 Shard(0) on the
# dp mesh (wq/wk/wv appear Replicate in the state dict: FusedQKVLinear's hook gathers wqkv). Then, per round:
#   dcp / hf: TorchTitan's CheckpointManager(initial_load_path=DIR, initial_load_model_only=True,
#       initial_load_in_hf=(kind == "hf")).load(): dcp_load exactly as the trainer runs it (for hf: to_hf, dcp.load
#       through the adapter's HuggingFaceStorageReader, from_hf on the DTensors, ModelWrapper.load_state_dict);
#   st: the same, but dcp.load through HuggingFaceStorageReader on TorchTitan names (no TorchTitan config does this).
# Measured per rank between two barriers: wall, /proc/self/io rchar and read_bytes, the bytes the reader asked for
# (FileSystemReader: whole blobs, it torch.loads each one; HuggingFaceStorageReader: the slices), VmHWM. Afterwards a
# position-weighted fingerprint of every local shard of model.state_dict() (the live fused parameters), so every
# way in can be checked to give TorchTitan the same model as its own HF path.
import gc, json, os, sys, socket, time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def proc_io():
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k] = int(v)
    return out


def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


REQUESTED = [0]
DCP_LOAD_S = [0.0]
SKIP_DCP_LOAD = [False]


def count_reads():
    """Wraps both readers' read_data to add up the bytes each plan asks the files for."""
    from torch.distributed.checkpoint import FileSystemReader, HuggingFaceStorageReader
    fs_read, hf_read = FileSystemReader.read_data, HuggingFaceStorageReader.read_data

    def fs(self, plan, planner):
        REQUESTED[0] += sum(self.storage_data[i.storage_index].length for i in plan.items)
        return fs_read(self, plan, planner)

    def hf(self, plan, planner):
        for i in plan.items:
            n = 1
            for x in i.lengths:
                n *= x
            REQUESTED[0] += n * self.storage_data[i.storage_index].dtype.itemsize
        return hf_read(self, plan, planner)

    FileSystemReader.read_data = fs
    HuggingFaceStorageReader.read_data = hf

    # The part of a load the checkpoint's layout decides: dcp.load (planning collectives + the reader). The rest of
    # CheckpointManager.load() -- ModelWrapper.state_dict() gathering the fused wqkv into wq/wk/wv, from_hf for HF
    # inputs, ModelWrapper.load_state_dict() -- is TorchTitan's and the same for every way in.
    import torch.distributed.checkpoint as dcp_mod
    dcp_load = dcp_mod.load

    def timed_load(*args, **kw):
        t = time.perf_counter()
        try:
            if SKIP_DCP_LOAD[0]:
                return None  # the "floor" case: everything CheckpointManager.load() does but read the checkpoint
            return dcp_load(*args, **kw)
        finally:
            DCP_LOAD_S[0] += time.perf_counter() - t

    dcp_mod.load = timed_load


def model_spec(flavor):
    from torchtitan.models.llama3 import model_registry
    return model_registry(flavor)


def build_model(spec, world):
    from torchtitan.config import ParallelismConfig, TrainingConfig, CompileConfig
    import torchtitan.distributed.parallel_dims as pdm
    pdm.device_type = "cpu"  # ParallelDims would build a "cuda" mesh without an accelerator
    from torchtitan.distributed import ParallelDims
    from torchtitan.models.llama3.sharding import set_llama3_sharding_config
    mc = spec.model
    par = ParallelismConfig(data_parallel_shard_degree=world)
    set_llama3_sharding_config(mc, enable_sp=par.enable_sequence_parallel)
    pd = ParallelDims(dp_replicate=1, dp_shard=world, cp=1, tp=1, pp=1, ep=1, world_size=world)
    pd.build_mesh()
    with torch.device("meta"):
        model = mc.build()
    spec.parallelize_fn(model, parallel_dims=pd, training=TrainingConfig(), parallelism=par, compile_config=CompileConfig(), ac_config=None, dump_folder="/tmp")
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            (p.to_local() if hasattr(p, "to_local") else p).fill_(float("nan"))
    return model


def fingerprint(model):
    """sum(x · ((i mod 1009) + 1)) in float64 over every 7th element of each local shard: changes when values move."""
    out = {}
    with torch.no_grad():
        for k, t in model.state_dict().items():
            x = t.to_local() if hasattr(t, "to_local") else t
            x = x.reshape(-1)[::7]
            acc = 0.0
            step = 1 << 22
            w = (torch.arange(step, dtype=torch.float64) % 1009) + 1
            for a in range(0, x.numel(), step):
                c = x[a:a + step].double()
                acc += float((c * w[:c.numel()]).sum())
            out[k] = acc
    return out


def worker(rank, a, port):
    import faulthandler
    faulthandler.dump_traceback_later(7200, exit=True)
    world = a["world"]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torchtitan.components.checkpointer import CheckpointManager, ModelWrapper
    count_reads()
    spec = model_spec(a["flavor"])
    model = build_model(spec, world)
    adapter = spec.state_dict_adapter(spec.model, a.get("hf_assets"))
    results = {}
    for case in a["cases"]:
        results[case["id"]] = run_case(rank, a, case, model, adapter, dcp, HuggingFaceStorageReader, CheckpointManager, ModelWrapper)
        gc.collect()
        # written after every case, so a later case that runs out of memory leaves the earlier ones
        gathered = [None] * world
        dist.all_gather_object(gathered, results)
        if rank == 0:
            with open(a["result"] + ".tmp", "w") as f:
                json.dump({"torch": torch.__version__, "ranks": gathered}, f)
            os.replace(a["result"] + ".tmp", a["result"])
    dist.barrier()
    os._exit(0)


def run_case(rank, a, case, model, adapter, dcp, HuggingFaceStorageReader, CheckpointManager, ModelWrapper):
    rounds = []
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5\n")  # resets VmHWM to the current RSS
    except OSError:
        pass
    for r in range(a["rounds"]):
        with torch.no_grad():
            for p in model.parameters():
                (p.to_local() if hasattr(p, "to_local") else p).fill_(float("nan"))
        dist.barrier()
        if a["cold"] and rank == 0:
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        dist.barrier()
        rss0 = status("VmRSS")
        io0 = proc_io()
        REQUESTED[0] = 0
        DCP_LOAD_S[0] = 0.0
        SKIP_DCP_LOAD[0] = case["kind"] == "floor"
        t0 = time.perf_counter()
        if case["kind"] == "st":
            wrapper = ModelWrapper(model)
            sd = wrapper.state_dict()
            dcp.load(sd, storage_reader=HuggingFaceStorageReader(case["path"]))
            wrapper.load_state_dict(sd)
        else:
            cfg = CheckpointManager.Config(enable=True, folder=f"no-such-checkpoint-folder-{os.getpid()}", initial_load_path=case["path"],
                                           initial_load_model_only=True, initial_load_in_hf=case["kind"] == "hf", keep_latest_k=0)
            mgr = CheckpointManager(cfg, dataloader=None, model_parts=[model], optimizers=None, lr_schedulers=None, states={}, sd_adapter=adapter, base_folder="/tmp")
            if not mgr.load():
                raise RuntimeError("CheckpointManager.load() found nothing to load")
        t1 = time.perf_counter()
        io1 = proc_io()
        dist.barrier()
        t2 = time.perf_counter()
        rounds.append({"rank_s": t1 - t0, "wall_s": t2 - t0, "rchar": io1["rchar"] - io0["rchar"], "read_bytes": io1["read_bytes"] - io0["read_bytes"],
                       "requested": REQUESTED[0], "dcp_load_s": DCP_LOAD_S[0], "rss_before": rss0, "hwm": status("VmHWM")})
    # the floor case leaves the parameters NaN (nothing was read): no fingerprint, and no NaN in the JSON
    fp = {} if case["kind"] == "floor" else fingerprint(model)
    nan = sum(int(torch.isnan(p.to_local() if hasattr(p, "to_local") else p).sum()) for p in model.parameters())
    return {"rounds": rounds, "fingerprint": fp, "nan": nan}


def convert(a):
    """TorchTitan's convert_from_hf.py, minus the float32 model: HF tensors → from_hf → dcp.save, one process."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    spec = model_spec(a["flavor"])
    adapter = spec.state_dict_adapter(spec.model, a["hf"])
    hf = {}
    for f in sorted(os.listdir(a["hf"])):
        if f.endswith(".safetensors"):
            hf.update(load_file(os.path.join(a["hf"], f)))
    sd = adapter.from_hf(hf)
    dcp.save(sd, checkpoint_id=a["out"], no_dist=True)


if __name__ == "__main__":
    mode, a = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(1)
    if mode == "convert":
        convert(a)
        sys.exit(0)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(worker, args=(a, port), nprocs=a["world"], join=True)
