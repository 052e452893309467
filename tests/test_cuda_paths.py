"""The CUDA paths' logic, on the CPU (issue 20). Where a GPU would answer, torch.cuda's queries are mocked, and
each test says which: get_device_capability, is_bf16_supported, is_available, is_initialized, device_count,
current_device, set_device, get_device_name, get_rng_state, set_rng_state, synchronize, and the memory queries
(reset_peak_memory_stats, max_memory_allocated, empty_cache, get_device_properties) through a fake GPU whose
memory is the bytes its live tensors stand for. `python bench.py --gpu_check` checks the same on a real GPU; its
CPU dry run (--device=cpu) runs here."""
import contextlib
import functools
import multiprocessing
import os
import re
import subprocess
import sys
import types
import weakref

import numpy as np
import pytest
import torch

import bench
import train
from configurator import UserError
from conftest import ROOT
from test_train import run_in_process, tiny


def cuda_config(*args):
    return train.resolve_config(["--device=cpu", *args])  # resolve_config needs no GPU; device_type is passed


# ----------------------------------------------------------------------------- 1, 2: dtype auto
@pytest.mark.parametrize("capability, expected", [((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16"),
                                                  ((8, 6), "bfloat16"), ((9, 0), "bfloat16")])
def test_dtype_auto_is_the_hardware_answer(monkeypatch, capability, expected):
    """Mocked: get_device_capability; is_bf16_supported says yes everywhere, as 2.13's does with emulation."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert train.pick_dtype(cuda_config(), "cuda", "cuda:0") == expected
    assert train.pick_dtype(cuda_config("--arch=lstm"), "cuda", "cuda:0") == "float32"  # the LSTM stays fp32
    assert train.pick_dtype(cuda_config("--arch=lstm", "--dtype=float16"), "cuda", "cuda:0") == "float16"
    with pytest.raises(UserError, match="cuDNN's autocast runs RNNs in fp16"):
        train.pick_dtype(cuda_config("--arch=lstm", "--dtype=bfloat16"), "cuda", "cuda:0")
    assert train.pick_dtype(cuda_config("--arch=lstm", "--dtype=bfloat16"), "cpu") == "bfloat16"  # CPU: opt-in
    assert train.pick_compile(cuda_config(), "cuda") and not train.pick_compile(cuda_config("--arch=lstm"), "cuda")
    assert not train.pick_compile(cuda_config(), "cpu")


# ----------------------------------------------------------------------------- 4: --device=cuda:1
@pytest.fixture
def two_gpus(monkeypatch):
    """Mocked: is_available, device_count (2), current_device (0), set_device (recorded)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    return calls


def test_the_chosen_gpu_becomes_the_current_device(two_gpus):
    assert train.setup_device({"device": "cuda:1"}) == "cuda:1" and two_gpus == [1]
    assert train.setup_device({"device": "auto"}) == "cuda:0" and two_gpus == [1, 0]
    assert train.setup_device({"device": "cuda"}, local_rank=1) == "cuda:1"  # torchrun: the local rank's GPU
    with pytest.raises(UserError, match="local rank 2 has no GPU: this node shows 2 CUDA device"):
        train.setup_device({"device": "auto"}, local_rank=2)
    with pytest.raises(UserError, match="not available on this machine"):
        train.setup_device({"device": "cuda:2"})
    assert train.setup_device({"device": "cpu"}) == "cpu" and two_gpus == [1, 0, 1]


# ----------------------------------------------------------------------------- 3, 5: the batch finder
class FakeGPU:
    """Memory accounting for tensors that stand for `nbytes` each: live while the tensor is; out of memory when
    a new one would pass the capacity."""

    def __init__(self, capacity, total_memory):
        self.capacity, self.total_memory, self.live, self.peak, self.serial = capacity, total_memory, {}, 0, 0

    def hold(self, nbytes):
        if sum(self.live.values()) + nbytes > self.capacity:
            raise torch.cuda.OutOfMemoryError("fake: out of memory")
        t = torch.zeros(1)
        self.serial += 1
        self.live[self.serial] = nbytes
        weakref.finalize(t, self.live.pop, self.serial)
        self.peak = max(self.peak, sum(self.live.values()))
        return t

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                            lambda device=None: setattr(self, "peak", sum(self.live.values())))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device=None: types.SimpleNamespace(total_memory=self.total_memory))


class Activations(torch.autograd.Function):
    """Forward holds micro x per_sequence bytes (saved for backward); backward as much again for gradients."""

    @staticmethod
    def forward(ctx, w, gpu, nbytes):
        act = gpu.hold(nbytes)
        ctx.save_for_backward(act)
        ctx.gpu, ctx.nbytes = gpu, nbytes
        return act * w

    @staticmethod
    def backward(ctx, grad):
        ctx.gpu.hold(ctx.nbytes)  # out of memory here leaves the graph (and the forward's bytes) to whoever holds it
        return grad.sum().reshape(1), None, None


class FakeLM(torch.nn.Module):
    def __init__(self, gpu, per_sequence):
        super().__init__()
        self.w, self.gpu, self.per_sequence = torch.nn.Parameter(torch.ones(1)), gpu, per_sequence

    def forward(self, idx, targets=None):
        logits = Activations.apply(self.w, self.gpu, idx.shape[0] * self.per_sequence)
        return logits, logits.sum()


GIB = 1 << 30


@pytest.mark.parametrize("world_size", [1, 2])
def test_batch_finder_frees_each_probe_and_keeps_room(monkeypatch, world_size):
    """Mocked: the memory queries (FakeGPU). A probe's activations come back only if nothing outlives it: the old
    finder kept the logits and their graph after an out-of-memory backward, and every later probe failed."""
    gpu = FakeGPU(capacity=17 * GIB, total_memory=1000 * GIB)  # 8 sequences fit (2 x 8 GiB), 16 run out in backward
    gpu.install(monkeypatch)
    config = cuda_config(f"--target_effective_batch_size={32 * world_size}")
    model = FakeLM(gpu, per_sequence=GIB)
    assert train.plan_batches(config, world_size, model, "cuda", contextlib.nullcontext(), 257) == (8, 4)
    assert gpu.live == {} and model.w.grad is None  # nothing of the probes left
    # the memory budget (90% of the GPU) binds before out-of-memory does; DDP keeps 1 GiB more for NCCL/buckets
    gpu = FakeGPU(capacity=1000 * GIB, total_memory=9.5 * GIB)  # a budget of 8.55 GiB
    gpu.install(monkeypatch)
    model = FakeLM(gpu, per_sequence=GIB // 4)  # peak of m sequences: m / 2 GiB
    micro, _ = train.plan_batches(config, world_size, model, "cuda", contextlib.nullcontext(), 257)
    assert micro == (16 if world_size == 1 else 8)  # 16: 8 GiB <= 8.55; + 1 GiB under DDP does not fit
    if world_size > 1:
        return
    gpu = FakeGPU(capacity=GIB // 2, total_memory=1000 * GIB)
    gpu.install(monkeypatch)
    with pytest.raises(UserError, match="not even a micro-batch of 1 sequence"):
        train.plan_batches(config, world_size, FakeLM(gpu, GIB), "cuda", contextlib.nullcontext(), 257)


def ddp_worker(rank, init_file, queue):
    """One of two gloo processes: a different GPU memory per rank, then the batch finder and a run of votes."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        gpu = FakeGPU(capacity=(17 if rank == 0 else 5) * GIB, total_memory=1000 * GIB)  # rank 1 fits 2 sequences
        mp = pytest.MonkeyPatch()
        gpu.install(mp)
        config = cuda_config("--target_effective_batch_size=64")
        plan = train.plan_batches(config, 2, FakeLM(gpu, GIB), "cuda", contextlib.nullcontext(), 257)
        mp.undo()
        # votes: rank 1 is signalled at call 37; both must stop at the same call, with fewer all-reduces than calls
        reduces = []
        real = dist.all_reduce
        dist.all_reduce = lambda *a, **k: (reduces.append(1), real(*a, **k))[1]
        vote = train.make_vote(True, None, seconds=0.05, max_calls=8)
        stopped_at = next(i for i in range(10_000) if vote(rank == 1 and i >= 37, False)[0])
        dist.all_reduce = real
        queue.put((rank, plan, stopped_at, len(reduces)))
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_agree_on_the_micro_batch_and_on_when_to_stop(tmp_path):
    """Two real gloo processes (no GPU). Mocked in each: the memory queries (a FakeGPU of its own size)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=ddp_worker, args=(r, str(tmp_path / "init"), queue)) for r in range(2)]
    for p in procs:
        p.start()
    out = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [o[1] for o in out] == [(2, 16), (2, 16)]  # the smallest fit: rank 1's
    assert out[0][2] == out[1][2] >= 37  # the same call on both
    assert out[0][3] == out[1][3] < out[0][2]  # votes every few calls, not every call


def test_a_vote_is_local_without_ddp():
    vote = train.make_vote(False)
    assert vote(False, True) == (False, True) and vote(True) == (True, True)


# ----------------------------------------------------------------------------- 6, 7: copies and syncs
def test_batches_are_copied_contiguous_and_unpinned_on_cpu(stdlib_data, monkeypatch):
    """Mocked: synchronize (recorded)."""
    data = np.memmap(os.path.join(stdlib_data, "stdlib", "train.bin"), dtype=np.uint16, mode="r")
    x, y = train.TokenBatches(data, 32, seed=0).next(4)
    assert not x.is_contiguous() and not y.is_contiguous()  # views into the drawn windows
    for t in (x, y):
        copy = train.batch_to_device(t, "cpu")
        assert copy.is_contiguous() and not copy.is_pinned() and torch.equal(copy, t)
    synced = []
    monkeypatch.setattr(torch.cuda, "synchronize", synced.append)
    train.device_sync("cpu")
    assert synced == []  # nothing to wait for on the CPU
    train.device_sync("cuda:1")
    assert synced == ["cuda:1"]


# ----------------------------------------------------------------------------- 9: peaks
@pytest.mark.parametrize("name, dtype, peak", [
    ("NVIDIA L40S", "bfloat16", 362e12), ("NVIDIA L4", "bfloat16", 121e12), ("NVIDIA L40", "bfloat16", 181e12),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12), ("NVIDIA H100 SXM5 80GB", "bfloat16", 989e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12), ("NVIDIA H100 NVL", "bfloat16", 835e12),
    ("NVIDIA H200", "bfloat16", 989e12), ("NVIDIA H200 NVL", "bfloat16", 835e12),
    ("Tesla V100-SXM2-32GB", "float32", 15.7e12), ("Tesla V100-PCIE-16GB", "float16", 112e12),
    ("Tesla V100-SXM2-16GB", "bfloat16", 15.7e12),  # no bf16 units: emulated at about the fp32 rate
    ("Tesla T4", "float32", 8.1e12), ("Tesla T4", "float16", 65e12),
    ("NVIDIA A100-SXM4-80GB", "float32", 156e12),  # TF32, which train.py turns on
    ("NVIDIA A10", "bfloat16", 125e12), ("NVIDIA A10G", "float32", 62.5e12), ("NVIDIA A30", "bfloat16", 165e12),
    ("NVIDIA A40", "bfloat16", 149.7e12), ("NVIDIA B200", "bfloat16", 2250e12),
    ("NVIDIA GeForce RTX 4090", "bfloat16", 165e12), ("NVIDIA Some Future GPU", "bfloat16", None)])
def test_gpu_peak_by_exact_model_name(name, dtype, peak):
    assert train.gpu_peak_flops(name, dtype) == peak


def test_gpu_peak_follows_the_current_device_and_tf32(monkeypatch):
    """Mocked: get_device_name."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100 80GB PCIe")
    config, tf32 = {"peak_flops": 0.0}, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert train.device_peak_flops(config, "cuda", "float32", "cuda:0") == 19.5e12
        torch.backends.cuda.matmul.allow_tf32 = True
        assert train.device_peak_flops(config, "cuda", "float32", "cuda:0") == 156e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert train.device_peak_flops({"peak_flops": 5e12}, "cuda", "bfloat16") == 5e12


def test_a_cpu_peak_probed_under_load_is_probed_again(stdlib_data, tmp_path, monkeypatch, capsys):
    """The start-up probe reads absurdly low (as under another run's load, exaggerated); the first log line's
    throughput exceeds it, so it is probed again (here: a plausible 10 TFLOP/s) and no MFU printed is over 100%."""
    probes = []

    def probe(dtype_name, **kw):
        probes.append(dtype_name)
        return 1e6 if len(probes) == 1 else 1e13

    monkeypatch.setattr(train, "measure_cpu_peak", probe)
    run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=40", "--log_interval=10", "--eval_interval=40",
                        "--dtype=float32"))
    mfus = [float(m) for m in re.findall(r"MFU ([\d.]+)%", capsys.readouterr().out)]
    assert len(mfus) == 4 and max(mfus) <= 100 and len(probes) == 2


def test_best_of_windows_ignores_a_load_in_part_of_the_probe(monkeypatch):
    """A fake clock: the first windows of the probe run 10x slow (another process on the cores), the rest not."""
    now = [0.0]
    ticks = iter([10.0] * 10 + [1.0] * 10 ** 6)  # 100 ms of the 300 ms probe slowed down

    def clock():
        now[0] += next(ticks) * 1e-3
        return now[0]

    monkeypatch.setattr(train.time, "perf_counter", clock)
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: a)  # the clock, not the matmul, sets the rate
    slow_and_fast = train.measure_cpu_peak("float32", size=8, seconds=0.3, windows=6)
    assert slow_and_fast == pytest.approx(2 * 8 ** 3 / 1e-3, rel=0.1)  # the unloaded rate, not a mix


# ----------------------------------------------------------------------------- 10: resume
@pytest.fixture
def one_of_four_gpus(monkeypatch):
    """Mocked: is_available, is_initialized, current_device (1), get_rng_state, set_rng_state (recorded)."""
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append(int(state[0])))
    return restored


def test_cuda_rng_state_is_the_current_devices_and_restores_across_gpu_counts(one_of_four_gpus):
    batches = train.TokenBatches(np.arange(1000, dtype=np.uint16), 8, seed=0)
    state = train.capture_rng(batches)
    assert torch.equal(state["cuda"], torch.tensor([7], dtype=torch.uint8))  # one state, not every GPU's
    train.restore_rng(state, batches)
    old = [torch.tensor([i], dtype=torch.uint8) for i in range(4)]  # older checkpoints: every visible GPU's state
    train.restore_rng({**state, "cuda": old}, batches)
    train.restore_rng({**state, "cuda": old[:1]}, batches)  # saved where one GPU was visible: no IndexError
    assert one_of_four_gpus == [7, 1, 0]


def test_resume_under_another_resolved_dtype_is_one_line_and_a_fresh_scaler(capsys):
    """A bf16 checkpoint resumed where auto resolves fp16 (its scaler state is empty: loading it used to raise)."""
    scaler = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    with pytest.raises(RuntimeError):  # what the old code did
        scaler.load_state_dict(torch.amp.GradScaler("cpu", enabled=False).state_dict())
    bf16 = {"dtype": "bfloat16", "scaler": {}, "config": {"dtype": "auto"}}
    train.resume_scaler(scaler, bf16, "float16", "runs/x", master=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: runs/x trained in bfloat16 up to its checkpoint and continues in float16 here "
                   "(dtype=auto on this device); a fresh GradScaler starts"]
    assert scaler.get_scale() == 1024.0
    fp16 = {"scaler": torch.amp.GradScaler("cpu", init_scale=8.0).state_dict(), "config": {"dtype": "auto"}}
    train.resume_scaler(scaler, fp16, "float16", "runs/x", master=True)  # an older checkpoint: no "dtype" key
    assert scaler.get_scale() == 8.0 and capsys.readouterr().err == ""
    train.resume_scaler(torch.amp.GradScaler("cpu", enabled=False), fp16, "bfloat16", "runs/x", master=True)
    assert "trained in float16 up to its checkpoint and continues in bfloat16" in capsys.readouterr().err


def test_a_run_resumed_where_auto_resolves_another_dtype_goes_on(stdlib_data, tmp_path, monkeypatch, capsys):
    """End to end on the CPU: started where the CPU has native bf16 (auto: bf16), resumed where it has not (fp32).
    Mocked: train.cpu_has_native_bf16."""
    args = tiny(stdlib_data, tmp_path, "--n_embd=64", "--max_iters=20", "--eval_interval=10", "--dtype=auto")
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    config, status, run = run_in_process(args)
    assert status == "completed" and run["derived"]["dtype"] == "bfloat16"
    os.remove(os.path.join(train.run_folder(config), "final.json"))  # as if killed after its last checkpoint
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    config, status, run = run_in_process(args)
    assert status == "completed" and run["derived"]["dtype"] == "float32"
    assert "trained in bfloat16 up to its checkpoint and continues in float32" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 11, 12: SLURM scripts and sweeps
def sbatch_option(path, name):
    with open(os.path.join(ROOT, path)) as f:
        return next(line.split("=", 1)[1].strip() for line in f if line.startswith(f"#SBATCH {name}="))


def test_the_sbatch_scripts_defaults_are_valid_and_torchrun_waits_out_the_warning(tmp_path, monkeypatch):
    """The scripts' bodies run by bash with a stand-in for python that prints what it was asked to run (no SLURM);
    then train.py's own checks on the LSTM script's default command, with the GPUs its #SBATCH line asks for."""
    monkeypatch.chdir(ROOT)
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "args: $* | shutdown: ${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-unset}"\n')
    fake.chmod(0o755)
    gpus = int(sbatch_option("slurm/lstm_ddp.sbatch", "--gres").split(":")[-1])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCH_ELASTIC"))}
    out = subprocess.run(["bash", "slurm/lstm_ddp.sbatch"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(env, TRAIN_PYTHON=str(fake), SLURM_GPUS_ON_NODE=str(gpus)))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("args: "))
    command, shutdown = line[len("args: "):].split(" | shutdown: ")
    assert command.startswith(f"-m torch.distributed.run --standalone --nproc_per_node={gpus} train.py ")
    config = train.resolve_config(command.split(" train.py ")[1].split())
    assert train.plan_batches(config, gpus, None, "cuda", None, 257)[1] >= 1  # its accumulation splits evenly
    lead = int(sbatch_option("slurm/lstm_ddp.sbatch", "--signal").rsplit("@", 1)[1])
    assert int(shutdown) > lead  # torchrun waits longer than SLURM's warning before it kills the workers
    from torch.distributed.launcher.api import LaunchConfig  # and torchrun reads the variable
    os.environ["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = shutdown
    try:
        assert LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=2).shutdown_timeout == int(shutdown)
    finally:
        del os.environ["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]
    out = subprocess.run(["bash", "slurm/train.sbatch", "--n_embd=64"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env=dict(env, TRAIN_PYTHON=str(fake)))
    assert "args: train.py --n_embd=64 | shutdown: unset" in out.stdout  # one GPU: plain python, no torchrun


def test_a_mixed_sweep_gives_each_run_one_gpu_unless_asked(tmp_path, capsys, monkeypatch, stdlib_data):
    from test_sweep import TINY as SWEEP_TINY, main as sweep_main, sbatch_lines, write_sweep
    monkeypatch.chdir(ROOT)
    fixed = dict(SWEEP_TINY, results_dir=str(tmp_path / "results"), data_dir=stdlib_data)
    path = write_sweep(tmp_path, f"fixed = {fixed!r}\nruns = [dict(label='tx'), dict(label='lstm', arch='lstm')]\n")
    code, script, err = sweep_main(capsys, path, "--no_check")
    assert code == 0, err
    assert "#SBATCH --gres=gpu:1" in sbatch_lines(script) and "mixes architectures" not in err
    code, _, err = sweep_main(capsys, path, "--no_check", "--gpus", "2")  # asked: DDP, so accumulation must split
    assert code == 2 and "gradient_accumulation_steps=1 is not divisible by the 2 DDP processes" in err
    code, script, err = sweep_main(capsys, path, "--no_check", "--gpus", "2", "--gradient_accumulation_steps=2")
    assert code == 0 and "#SBATCH --gres=gpu:2" in sbatch_lines(script)


# ----------------------------------------------------------------------------- 13: the smaller ones
def test_compiled_rotary_rotates_in_fp32_like_eager(monkeypatch):
    """Mocked: torch.compiler.is_compiling, to run the compiled path's code eagerly."""
    from model import apply_rotary, rotary_tables
    cos, sin = rotary_tables(64, 32, 10000.0)
    x = torch.randn(2, 4, 64, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    a, b = x.double().reshape(2, 4, 64, 16, 2).unbind(-1)
    exact = torch.stack((a * cos.double() - b * sin.double(), a * sin.double() + b * cos.double()), -1).flatten(-2)
    eager = apply_rotary(x, cos, sin)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    compiled = apply_rotary(x, cos, sin)
    assert compiled.dtype == eager.dtype == torch.bfloat16
    for y in (eager, compiled):  # the exact rotation rounded once (tables in bf16: 28% of elements were not)
        assert (y != exact.to(torch.bfloat16)).float().mean() < 1e-3


def test_sgd_is_fused_on_cuda_and_buffers_are_constant_tables():
    """fused SGD: a GradScaler steps it without reading found_inf on the host (.item() each step). The models'
    buffers are non-persistent constant tables, so DDP need not broadcast them (broadcast_buffers=False)."""
    config = cuda_config("--optimizer=sgd", "--pos_encoding=rotary")
    model = train.build_model(config, 257)
    cuda_sgd, cpu_sgd = train.make_optimizer(model, config, "cuda"), train.make_optimizer(model, config, "cpu")
    assert cuda_sgd.defaults["fused"] and getattr(cuda_sgd, "_step_supports_amp_scaling", False)
    assert cpu_sgd.defaults["foreach"] and not cpu_sgd.defaults["fused"]
    for extra in (["--pos_encoding=rotary"], ["--pos_encoding=sinusoidal"], ["--arch=lstm"]):
        m = train.build_model(cuda_config(*extra), 257)
        assert {name for name, _ in m.named_buffers()} <= {"rotary_cos", "rotary_sin", "sinusoidal"}
        assert not any(name in m.state_dict() for name, _ in m.named_buffers())


def test_compiling_before_the_clock_leaves_the_run_unchanged(stdlib_data, tmp_path, monkeypatch, capsys):
    """With dropout, a compiled run (dynamo's eager backend: the same kernels, no inductor) equals the eager run:
    the warm-up compile drew no random numbers the run sees. Its time is reported, not counted."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    args = tiny(stdlib_data, tmp_path, "--max_iters=20", "--eval_interval=10", "--dropout=0.1")
    _, _, eager = run_in_process(args + ["--compile=False", "--run_name=eager"])
    _, _, compiled = run_in_process(args + ["--compile=True", "--run_name=compiled"])
    assert "compiled in" in capsys.readouterr().out and compiled["derived"]["compile"]
    for a, b in zip(eager["metrics"], compiled["metrics"]):
        assert (a["train_loss"], a["val_loss"]) == pytest.approx((b["train_loss"], b["val_loss"]), rel=1e-5)


# ----------------------------------------------------------------------------- the GPU check
def test_gpu_check_without_cuda_is_one_line_and_exit_2(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--gpu_check"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: --gpu_check needs a CUDA GPU")


def test_gpu_check_dry_run_on_the_cpu(stdlib_data, monkeypatch, capsys):
    """Every check's code on the CPU (dynamo's eager backend for the compiled run, to keep it quick): one table,
    the CUDA-only ones skipped, none failed."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    monkeypatch.setattr(sys, "argv", ["bench.py", "--gpu_check", "--device=cpu", f"--data_dir={stdlib_data}"])
    code = bench.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    assert code == 0, out
    assert len(rows) == len(bench.GPU_CHECKS) and all(re.search(r"\| (ok|skip) \(\d+ s\) \|$", r) for r in rows)
    assert "skip" in next(r for r in rows if r.startswith("| OOM probe"))
    assert out.rstrip().endswith("all checks passed")
