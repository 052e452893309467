"""
Throughput benchmark. Times train.py's own training loop (train.train: data, schedule, forward, backward,
clipping, optimizer, bookkeeping) for --steps optimizer steps after --warmup steps, and prints ms/step,
tokens/s, achieved FLOP/s and MFU (= tokens/s x flops_per_token / peak). Evaluation is excluded, as in
metrics.csv's elapsed_s.

    python bench.py                                    # train.py's default model, fp32 and dtype=auto
    python bench.py configs/modern.py --n_embd=256 --n_layer=6 --n_head=4
    python bench.py --suite                            # the README's table: train.py vs a nanoGPT-class loop
    python bench.py --profile configs/modern.py        # torch profiler: where a step's time goes
    python bench.py --gpu_check                        # the CUDA paths' acceptance check on one GPU (README "CUDA")

--suite times, side by side and interleaved (so a busy machine slows both alike), train.py against a reference
loop written the way nanoGPT-class trainers are (GPT-2 block, learned positions, GELU, LayerNorm with biases,
AdamW as torch picks it by default, the memmap re-opened for every batch, a loss.item() per step), at 2L x 64,
4L x 128 and 6L x 256 (block 128, batch 16), fp32, and train.py with dtype='auto', fused and unfused
(fused_loss=False); the same at 2L x 64 and 4L x 128 with GPT-2's vocabulary (the corpus tokenized with
--tokenizer gpt2, prepared once: offline it needs TIKTOKEN_CACHE_DIR), with the peak memory of a step; then the
LSTM at 2L x 256 beside a plain nn.LSTM loop and the Transformer of similar parameter count. Ratios are what to
read: the machine's load changes absolute numbers.
"""
import argparse
import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

import results
import train
from configurator import ArgumentParser, UserError, cli_main


# ------------------------------------------------------------------------------------------- train.py
def time_trainer(args, steps, warmup, data_dir):
    """Run train.train for warmup + steps steps; time the last `steps` from metrics.csv's elapsed_s."""
    folder = tempfile.mkdtemp(prefix="bench-")
    try:
        config = train.resolve_config(list(args) + [
            f"--max_iters={warmup + steps}", f"--eval_interval={warmup}", "--eval_iters=1", "--eval_batch_size=1",
            f"--log_interval={10 ** 9}", f"--results_dir={folder}", "--run_name=bench", "--overwrite=True",
            "--keep_ckpt=False", f"--data_dir={data_dir}", "--lr_schedule=constant", "--warmup_iters=0"])
        if (warmup + steps) % warmup:
            raise UserError("--steps must be a multiple of --warmup")
        with contextlib.redirect_stdout(io.StringIO()):
            train.train(config)
        run = results.read_run(train.run_folder(config))
        by_step = {r["step"]: r for r in run["metrics"]}
        seconds = by_step[warmup + steps]["elapsed_s"] - by_step[warmup]["elapsed_s"]
        d = run["derived"]
        tokens_per_s = steps * d["tokens_per_step"] / seconds
        return {"ms_per_step": 1000 * seconds / steps, "tokens_per_s": tokens_per_s,
                "flops_per_token": d["flops_per_token"], "n_params": d["n_params"], "dtype": d["dtype"],
                "flops_per_s": tokens_per_s * d["flops_per_token"]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# ------------------------------------------------------------------------------------------- references
class RefBlock(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.attn(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))


class RefGPT(nn.Module):
    """A GPT-2-style model as nanoGPT-class trainers write it (biases on, learned positions, tied head)."""

    def __init__(self, vocab, block, n_layer, d, n_head):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(RefBlock(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def reference_batch(path, block, batch, device="cpu"):
    data = np.memmap(path, dtype=np.uint16, mode="r")  # re-opened every batch, as nanoGPT does
    ix = torch.randint(len(data) - block, (batch,))
    x = torch.stack([torch.from_numpy(data[i:i + block].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in ix])
    if str(device).startswith("cuda"):  # as nanoGPT: pinned, asynchronous
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


def reference_optimizer(model, lr):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def time_reference(model, path, block, batch, steps, warmup, lr=1e-3, clip=1.0, device="cpu"):
    """A nanoGPT-class loop: AdamW with torch's default implementation choice, clipping, loss.item() per step.
    On `device`, the one train.py trains on, with the clock read after the device's queue is done."""
    model = model.to(device)
    opt = reference_optimizer(model, lr)
    for i in range(warmup + steps):
        if i == warmup:
            train.device_sync(device)
            t0 = time.perf_counter()
        x, y = reference_batch(path, block, batch, device)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    train.device_sync(device)
    return steps * block * batch / (time.perf_counter() - t0)


class PlainLSTM(nn.Module):
    def __init__(self, vocab, d, n_layer):
        super().__init__()
        self.emb, self.lstm = nn.Embedding(vocab, d), nn.LSTM(d, d, n_layer, batch_first=True)

    def forward(self, idx, targets):
        y, _ = self.lstm(self.emb(idx))
        logits = F.linear(y, self.emb.weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


# ------------------------------------------------------------------------------------------- reporting
def report(name, r, peak, ref_tokens_per_s=None, step_mib=None):
    mfu = f"{100 * r['flops_per_s'] / peak:5.1f}%" if peak else "    -"
    ratio = f"{r['tokens_per_s'] / ref_tokens_per_s:5.2f}x" if ref_tokens_per_s else "      "
    memory = f" {step_mib:8.0f}" if step_mib is not None else ""
    print(f"  {name:<34} {r.get('ms_per_step', float('nan')):8.1f} {r['tokens_per_s'] / 1e3:9.1f}k "
          f"{r['flops_per_token'] / 1e6:8.2f} {r['flops_per_s'] / 1e9:8.1f} {mfu} {ratio}{memory}", flush=True)


def header(peak, source="measured matmul"):
    shown = f"{peak / 1e9:.0f} GFLOP/s" if peak else "unknown (no MFU; --peak_flops sets it)"
    print(f"peak ({source}, fp32): {shown}, {torch.get_num_threads()} threads")
    print(f"  {'':<34} {'ms/step':>8} {'tokens/s':>10} {'MFLOP/tok':>8} {'GFLOP/s':>8} {'MFU':>6} {'vs ref':>6}")


def suite_device():
    """(device, fp32 peak, bf16 peak, where the peaks come from) for --suite. The reference loops run on the device
    train.py picks by default, and MFU is against that device's peak: on CUDA the datasheet table, fp32 meaning
    TF32 (train.py turns it on, so it is turned on for the reference too); on CPU measured matmuls."""
    device = train.setup_device(train.resolve_config([]))
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
        return device, train.gpu_peak_flops(name, "float32"), train.gpu_peak_flops(name, "bfloat16"), \
            f"{name}, datasheet"
    peak16 = train.measure_cpu_peak("bfloat16") if train.cpu_has_native_bf16() else None
    return device, train.measure_cpu_peak("float32"), peak16, "measured matmul"


def suite_rows(opts, data_dir, device, peak32, dataset, sizes, memory=False):
    """Rows of the suite on `dataset`, per (n_layer, n_embd, n_head, timed steps, warm-up steps): the reference,
    train.py fp32, train.py dtype=auto, and dtype=auto unfused (fused_loss=False: the full logits), interleaved
    opts.repeats times (medians shown; then the per-repeat ratios, to show the noise); memory: the peak memory of
    a step of each too (step_memory)."""
    path = os.path.join(data_dir, dataset, "train.bin")
    import prepare
    vocab = prepare.load_dataset(data_dir, dataset)["meta"]["vocab_size"]
    variants = {"fp32": ["--dtype=float32"], "auto": ["--dtype=auto"],
                "auto, unfused": ["--dtype=auto", "--fused_loss=False"]}
    for n_layer, d, n_head, steps, warm in sizes:
        base = [f"--n_layer={n_layer}", f"--n_embd={d}", f"--n_head={n_head}", "--block_size=128",
                "--batch_size=16", "--bias=True", "--dropout=0.0", f"--dataset={dataset}"]
        steps = math.ceil(steps * opts.scale / warm) * warm
        fpt = train.build_model(train.resolve_config(base), vocab).flops_per_token()
        ref, runs = [], {name: [] for name in variants}
        for _ in range(opts.repeats):  # interleaved, so load changes hit all alike
            torch.manual_seed(0)
            ref.append(time_reference(RefGPT(vocab, 128, n_layer, d, n_head), path, 128, 16, steps, warm,
                                      device=device))
            for name, extra in variants.items():
                runs[name].append(time_trainer(base + extra, steps, warm, data_dir))
        mib = {name: step_memory("train", base + extra, data_dir) for name, extra in variants.items()} \
            if memory else {}
        ref_mib = step_memory("reference", base, data_dir) if memory else None
        ref_tps = sorted(ref)[len(ref) // 2]
        report(f"{n_layer}L x {d} reference fp32", {"tokens_per_s": ref_tps, "flops_per_token": fpt,
                                                    "flops_per_s": ref_tps * fpt,
                                                    "ms_per_step": 2048e3 / ref_tps}, peak32, step_mib=ref_mib)
        for name, r in runs.items():
            median = sorted(r, key=lambda x: x["tokens_per_s"])[len(r) // 2]
            label = f"auto ({median['dtype']})" if name == "auto" else name
            report(f"{n_layer}L x {d} train.py {label}", median, peak32, ref_tps, step_mib=mib.get(name))
        per_repeat = [(a["tokens_per_s"] / t, a["tokens_per_s"] / u["tokens_per_s"])
                      for a, t, u in zip(runs["auto"], ref, runs["auto, unfused"])]
        print(f"    per repeat: auto over reference {' '.join(f'{x:.2f}x' for x, _ in per_repeat)}; auto over "
              f"auto unfused {' '.join(f'{y:.2f}x' for _, y in per_repeat)}", flush=True)


def step_memory(kind, args, data_dir):
    """Peak memory of one training step in MiB, above what the process holds between steps (model, optimizer
    state): measured in a fresh process, after two warm-up steps, as the high-water mark of its resident set
    (Linux /proc/self/status VmHWM, reset through /proc/self/clear_refs) minus the resident set before the
    step, with glibc told to return every block of 64 KiB or more to the system when it is freed (so that memory
    a previous step freed is not counted as held); on CUDA, torch.cuda.max_memory_allocated. kind: 'train'
    (train.py's model, optimizer and dtype, from train.py arguments) or 'reference' (RefGPT and its loop).
    None where it cannot be measured."""
    code = "import json, sys; sys.path.insert(0, sys.argv[1]); import bench; " \
        "bench.print_step_memory(*json.loads(sys.argv[2]))"
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)),
                          json.dumps([kind, list(args), data_dir])], capture_output=True, text=True,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 << 10)})
    return int(out.stdout.split()[-1]) / 2 ** 20 if out.returncode == 0 and out.stdout.strip() else None


def print_step_memory(kind, args, data_dir):
    """step_memory's measurement, in the fresh process: prints the bytes."""
    import prepare
    config = train.resolve_config(list(args) + [f"--data_dir={data_dir}"])
    device = train.setup_device(config)
    device_type = device.split(":")[0]
    vocab = prepare.load_dataset(data_dir, config["dataset"])["meta"]["vocab_size"]
    path = os.path.join(data_dir, config["dataset"], "train.bin")
    torch.manual_seed(0)
    if kind == "reference":
        model = RefGPT(vocab, config["block_size"], config["n_layer"], config["n_embd"], config["n_head"]).to(device)
        optimizer, autocast, loss_of = reference_optimizer(model, 1e-3), contextlib.nullcontext(), model
    else:
        model = train.build_model(config, vocab).to(device)
        optimizer = train.make_optimizer(model, config, device_type)
        dtype = train.pick_dtype(config, device_type)
        autocast = contextlib.nullcontext() if dtype == "float32" else \
            torch.autocast(device_type, getattr(torch, dtype))
        loss_of = lambda x, y: model(x, y)[1]  # noqa: E731

    def step():
        x, y = reference_batch(path, config["block_size"], config["batch_size"], device)
        with autocast:
            loss = loss_of(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(), step()
    if device_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        print(torch.cuda.max_memory_allocated() - before)
        return

    def status(key):  # kB
        return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = status("VmRSS")
    step()
    print(1024 * (status("VmHWM") - before))


def suite(opts, data_dir):
    path = os.path.join(data_dir, "stdlib", "train.bin")
    device, peak32, peak16, source = suite_device()
    header(peak32, source)
    if peak16:
        print(f"(bf16 matmul peak: {peak16 / 1e9:.0f} GFLOP/s; MFU of bf16 runs is against the fp32 peak, to compare"
              f" like with like)")
    suite_rows(opts, data_dir, device, peak32, "stdlib", ((2, 64, 2, 100, 20), (4, 128, 4, 40, 10),
                                                         (6, 256, 4, 15, 5)))
    import prepare
    if not os.path.exists(os.path.join(data_dir, "stdlib_gpt2", "meta.json")):
        prepare.prepare("stdlib", name="stdlib_gpt2", tokenizer="gpt2", data_dir=data_dir)
    print("GPT-2 vocabulary (the corpus tokenized with --tokenizer gpt2); last column: MiB of memory one training "
          "step takes above what the process holds between steps (its peak resident set, in a fresh process)")
    suite_rows(opts, data_dir, device, peak32, "stdlib_gpt2", ((2, 64, 2, 20, 5), (4, 128, 4, 10, 5)), memory=True)
    # the LSTM beside a plain nn.LSTM loop and a Transformer of similar parameter count
    lstm = ["--arch=lstm", "--n_layer=2", "--n_embd=256", "--block_size=128", "--batch_size=16"]
    steps, warm = 20 * opts.scale, 5
    plain = PlainLSTM(257, 256, 2)
    fpt = train.build_model(train.resolve_config(lstm), 257).flops_per_token()
    plain_tps = time_reference(plain, path, 128, 16, steps, warm, device=device)
    report("LSTM 2L x 256 plain nn.LSTM loop", {"tokens_per_s": plain_tps, "flops_per_token": fpt,
                                                "flops_per_s": plain_tps * fpt, "ms_per_step": 2048e3 / plain_tps},
           peak32)
    report("LSTM 2L x 256 train.py fp32", time_trainer(lstm + ["--dtype=float32"], steps, warm, data_dir), peak32,
           plain_tps)
    report("LSTM 2L x 256 train.py auto", time_trainer(lstm + ["--dtype=auto"], steps, warm, data_dir), peak32,
           plain_tps)
    similar = ["--n_layer=4", "--n_embd=256", "--n_head=4", "--block_size=128", "--batch_size=16"]
    report("Transformer 4L x 256 train.py fp32", time_trainer(similar + ["--dtype=float32"], steps, warm,
                                                              data_dir), peak32)
    overhead(data_dir)


def overhead(data_dir, steps=500):
    """What evaluation, logging, checkpointing and start-up add to training time at the default intervals:
    train.py's default model for `steps` steps, wall time of the whole train() call against metrics.csv's
    elapsed_s (training only)."""
    folder = tempfile.mkdtemp(prefix="bench-")
    try:
        config = train.resolve_config([f"--max_iters={steps}", f"--results_dir={folder}", "--run_name=overhead",
                                       f"--data_dir={data_dir}"])
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            train.train(config)
        total = time.perf_counter() - start
        run = results.read_run(train.run_folder(config))
        trained = run["final"]["elapsed_s"]
        print(f"default intervals (eval every {config['eval_interval']} steps x {config['eval_iters']} batches, "
              f"log every {config['log_interval']}, checkpoint at each eval), {steps} steps of the default model: "
              f"training {trained:.1f} s, everything else {total - trained:.1f} s "
              f"({100 * (total - trained) / trained:.1f}% of training time)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def profile(args, data_dir):
    from torch.profiler import ProfilerActivity, profile as torch_profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch_profile(activities=activities) as prof:
        time_trainer(args, 10, 5, data_dir)
    print(prof.key_averages().table(sort_by="self_cuda_time_total" if torch.cuda.is_available()
                                    else "self_cpu_time_total", row_limit=25))


# ------------------------------------------------------------------------------------------- GPU acceptance check
def synthetic_tokens(data_dir, name, vocab_size, n_tokens, seed=0):
    """A token dataset of uniform random ids in prepare.py's format, for throughput checks that need a vocabulary no
    dataset here has without a tokenizer download (GPT-2's 50257)."""
    import prepare
    folder = os.path.join(data_dir, name)
    os.makedirs(folder, exist_ok=True)
    dtype, rng, splits = prepare.dtype_for(vocab_size), np.random.default_rng(seed), {}
    for split, n in (("train", n_tokens), ("val", max(n_tokens // 10, 1 << 14))):
        path = os.path.join(folder, f"{split}.bin")
        rng.integers(0, vocab_size, n).astype(dtype).tofile(path)
        splits[split] = {"file": f"{split}.bin", "tokens": n, "bytes": n * np.dtype(dtype).itemsize,
                         "sha256": prepare.file_sha256(path)}
    results.write_json(os.path.join(folder, "meta.json"), {
        "format_version": prepare.FORMAT_VERSION, "name": name, "kind": "tokens", "source": "synthetic",
        "tokenizer": "none", "vocab_size": vocab_size, "dtype": dtype, "splits": splits})
    return folder


def run_quietly(args, data_dir, folder):
    """train.train in this process with its output captured: (config, run folder's contents, printed text)."""
    config = train.resolve_config(list(args) + [f"--results_dir={folder}", f"--data_dir={data_dir}",
                                                "--overwrite=True", "--keep_ckpt=False"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train.train(config)
    return config, results.read_run(train.run_folder(config)), out.getvalue()


def gpu_sizes(cuda):
    """Model sizes of the check: GPT-2 124M and small models on a GPU; tiny ones for the CPU dry run."""
    if cuda:
        return {"gpt2": ["--n_layer=12", "--n_embd=768", "--n_head=12", "--block_size=1024", "--batch_size=16",
                         "--bias=True"], "gpt2_steps": (10, 30), "gpt2_tokens": 4_000_000,
                "small": ["--n_layer=4", "--n_embd=256", "--n_head=4", "--block_size=256", "--batch_size=16"],
                "small_steps": 200, "compiled_steps": (30, 10), "width": 256, "log_every": 20}
    return {"gpt2": ["--n_layer=2", "--n_embd=64", "--n_head=2", "--block_size=32", "--batch_size=2"],
            "gpt2_steps": (2, 2), "gpt2_tokens": 100_000,
            "small": ["--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=32", "--batch_size=4"],
            "small_steps": 10, "compiled_steps": (6, 2), "width": 64, "log_every": 10}


def check_choice(ctx):
    """dtype, device and compile as train.py chooses them under auto, for the Transformer and the LSTM."""
    config = train.resolve_config([f"--device={ctx['device_arg']}"])
    device = train.setup_device(config)
    kind = device.split(":")[0]
    lstm = train.resolve_config([f"--device={ctx['device_arg']}", "--arch=lstm"])
    got = (kind, train.pick_dtype(config, kind, device), train.pick_compile(config, kind),
           train.pick_dtype(lstm, kind, device), train.pick_compile(lstm, kind))
    if kind == "cuda":
        want = ("cuda", "bfloat16" if train.cuda_has_native_bf16(device) else "float16", True, "float32", False)
    else:
        want = ("cpu", "bfloat16" if train.cpu_has_native_bf16() else "float32", False, "float32", False)
    return show_choice(got), show_choice(want), got == want


def show_choice(c):
    return f"{c[0]} {c[1]} {'compiled' if c[2] else 'eager'}; LSTM {c[3]} {'compiled' if c[4] else 'eager'}"


def check_recompiles(ctx):
    """A short compiled run compiles the graphs of one training step once: no recompiles (evaluation runs the eager
    model). One step's graphs and graph breaks as torch._dynamo.explain counts them on the same model; the fused
    head + loss is eager by design (torch.compiler.disable in model.py), one break."""
    from torch._dynamo.utils import counters
    args = ctx["sizes"]["small"] + [f"--device={ctx['device_arg']}", "--compile=True"]
    config = train.resolve_config(args)
    model = train.build_model(config, 257).to(ctx["device"])
    x, y = (torch.zeros(4, config["block_size"], dtype=torch.long, device=ctx["device"]) for _ in range(2))
    explained = torch._dynamo.explain(model)(x, y)
    torch._dynamo.reset()
    before = (counters["stats"]["unique_graphs"], sum(counters["graph_break"].values()))
    steps, every = ctx["sizes"]["compiled_steps"]
    run_quietly(args + [f"--max_iters={steps}", f"--eval_interval={every}", f"--log_interval={every}",
                        "--eval_iters=2", "--eval_batch_size=8", "--peak_flops=1e12", "--run_name=recompiles"],
                ctx["data_dir"], ctx["tmp"])
    graphs = counters["stats"]["unique_graphs"] - before[0]
    breaks = sum(counters["graph_break"].values()) - before[1]
    return f"{graphs} graph(s), {breaks} graph break(s) over {steps} steps + {steps // every} evaluations", \
        f"one step's {explained.graph_count} graph(s) ({explained.graph_break_count} break(s)): no more", \
        graphs == explained.graph_count


def check_flash(ctx):
    """The Transformer's causal attention with only the flash kernel allowed (it raises if flash cannot run it),
    forward and backward, against the math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    device = ctx["device"]
    if device.startswith("cuda") and torch.cuda.get_device_capability(device)[0] < 8:
        return "GPU capability < 8.0", "flash needs 8.0 (Ampere) or later", None
    width = ctx["sizes"]["width"]
    config = train.resolve_config(["--n_layer=2", f"--n_embd={width}", "--n_head=4", f"--block_size={width}",
                                   "--pos_encoding=rotary", "--dropout=0.0"])
    torch.manual_seed(0)
    model = train.build_model(config, 257).to(device)
    idx = torch.randint(257, (4, width), device=device)
    # bf16 on CUDA, as training runs; fp32 on CPU (model.py's CPU bf16 path does not use SDPA)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()
    losses = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel([backend]), autocast:
            _, loss = model(idx, idx)
        loss.backward()
        losses[backend] = loss.item()
    diff = abs(losses[SDPBackend.FLASH_ATTENTION] - losses[SDPBackend.MATH])
    tolerance = 0.02 if device.startswith("cuda") else 1e-4
    return f"flash forward + backward ran; loss difference from the math kernel {diff:.2g}", \
        f"runs; diff < {tolerance:g}", diff < tolerance


def check_lstm(ctx):
    """The LSTM under dtype=auto trains in fp32 (cuDNN's autocast would run it in fp16, unscaled)."""
    device = ctx["device"]
    kind = device.split(":")[0]
    config = train.resolve_config([f"--device={ctx['device_arg']}", "--arch=lstm", f"--n_embd={ctx['sizes']['width']}"])
    dtype = train.pick_dtype(config, kind, device)
    model = train.build_model(config, 257).to(device)
    idx = torch.randint(257, (4, 64), device=device)
    autocast = contextlib.nullcontext() if dtype == "float32" else torch.autocast(kind, getattr(torch, dtype))
    with autocast:
        logits, _ = model(idx)
        _, loss = model(idx, idx)
    loss.backward()
    got = f"auto -> {dtype}, logits {str(logits.dtype).split('.')[-1]}"
    refused = False
    if kind == "cuda":
        with torch.autocast("cuda", torch.bfloat16):
            out, _ = model.lstm(model.wte(idx))
        got += f"; under bf16 autocast cuDNN gives {str(out.dtype).split('.')[-1]}"
        try:
            train.pick_dtype({**config, "dtype": "bfloat16"}, "cuda", device)
        except UserError:
            refused = True
        got += ", --dtype=bfloat16 refused" if refused else ", --dtype=bfloat16 NOT refused"
    ok = dtype == "float32" and logits.dtype == torch.float32 and (refused or kind != "cuda")
    return got, "float32, logits float32" + ("; bf16 refused" if kind == "cuda" else ""), ok


def check_gpt2(ctx):
    """GPT-2 124M's shape (GPT-2 vocabulary, block 1024) through train.py's loop: tokens/s and MFU, dtype and
    compile as auto picks them."""
    data_dir = os.path.join(ctx["tmp"], "data")
    synthetic_tokens(data_dir, "gpt2_random", 50257, ctx["sizes"]["gpt2_tokens"])
    warm, steps = ctx["sizes"]["gpt2_steps"]
    args = ctx["sizes"]["gpt2"] + [f"--device={ctx['device_arg']}", "--dataset=gpt2_random", "--dropout=0.0"]
    r = time_trainer(args, steps, warm, data_dir)
    config = train.resolve_config(args)
    device = ctx["device"]
    peak = train.device_peak_flops(config, device.split(":")[0], r["dtype"], device)
    mfu = 100 * r["flops_per_s"] / peak if peak else None
    got = f"{r['n_params'] / 1e6:.0f}M params, {r['dtype']}: {r['tokens_per_s'] / 1e3:.1f}k tok/s" + \
        (f", MFU {mfu:.1f}% of {peak / 1e12:.3g} TFLOP/s" if mfu is not None else ", MFU unknown (peak not known)")
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else ""
    if re.search(r"\bH[12]00\b", name):
        return got, "MFU about 40-55% on an H100/H200 (an estimate, not yet measured)", \
            mfu is not None and 35 <= mfu <= 60
    return got, "MFU <= 100%", r["tokens_per_s"] > 0 and (mfu is None or mfu <= 100 or not ctx["cuda"])


def check_oom_probe(ctx):
    """The batch finder on GPT-2 124M: the largest micro-batch that fits, the same when asked twice (nothing of
    a probe outlives it), GPU memory back where it was."""
    if not ctx["cuda"]:
        return "CUDA only (tests/test_cuda_paths.py checks its logic with a fake GPU)", "", None
    device = ctx["device"]
    config = train.resolve_config(ctx["sizes"]["gpt2"] + ["--target_effective_batch_size=512"])
    model = train.build_model(config, 50257).to(device)
    autocast = torch.autocast("cuda", torch.bfloat16)
    before = torch.cuda.memory_allocated(device)
    with contextlib.redirect_stdout(io.StringIO()):
        first = train.plan_batches(config, 1, model, "cuda", autocast, 50257)
        second = train.plan_batches(config, 1, model, "cuda", autocast, 50257)
    left = (torch.cuda.memory_allocated(device) - before) / 2 ** 20
    total = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
    got = f"micro-batch {first[0]} x {first[1]} of 512 ({total:.0f} GiB GPU); again: {second[0]}; " \
          f"{left:+.0f} MiB left allocated"
    return got, "the same twice, > 1, nothing left", first == second and first[0] > 1 and abs(left) < 64


def check_fp16(ctx):
    """fp16 + GradScaler against bf16, same seed and steps: finite and close."""
    steps = ctx["sizes"]["small_steps"]
    finals = {}
    for dtype in ("float16", "bfloat16"):
        _, run, _ = run_quietly(ctx["sizes"]["small"] + [f"--device={ctx['device_arg']}", f"--dtype={dtype}",
                                                         "--compile=False", f"--max_iters={steps}",
                                                         f"--eval_interval={steps}", "--eval_iters=4",
                                                         "--eval_batch_size=8",
                                                         "--peak_flops=1e12", f"--run_name={dtype}"],
                                ctx["data_dir"], ctx["tmp"])
        finals[dtype] = run["final"]["final_val_loss"]
    a, b = finals["float16"], finals["bfloat16"]
    if a is None or b is None:  # results.finite_or_none: a non-finite loss is stored as None
        return f"val loss after {steps} steps: fp16 {a}, bf16 {b}", "both finite", False
    return f"val loss after {steps} steps: fp16 {a:.4f}, bf16 {b:.4f}", "both finite, difference <= 0.05", \
        abs(a - b) <= 0.05


def memcpy_counts(fn):
    """(pinned, pageable) host-to-device copies the profiler saw while fn ran."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if "HtoD" in e.name]
    return sum("Pinned" in n for n in names), sum("Pageable" in n for n in names)


def check_pinned(ctx):
    """Batches as the loop copies them (strided views of the drawn windows): contiguous; on CUDA pinned copies only
    (profiler), where the plain pin_memory() of a view goes through pageable memory."""
    data = np.memmap(os.path.join(ctx["data_dir"], "stdlib", "train.bin"), dtype=np.uint16, mode="r")
    x, y = train.TokenBatches(data, 256, seed=0).next(16)
    device = ctx["device"]
    if not ctx["cuda"]:
        copy = train.batch_to_device(x, device)
        ok = not x.is_contiguous() and copy.is_contiguous() and not copy.is_pinned() and torch.equal(copy, x)
        return "strided view -> contiguous copy, not pinned", "contiguous, no pinning on CPU", ok
    n = 8
    ours = memcpy_counts(lambda: [train.batch_to_device(t, device) for _ in range(n) for t in (x, y)])
    plain = memcpy_counts(lambda: [t.pin_memory().to(device, non_blocking=True) for _ in range(n) for t in (x, y)])
    got = f"batch_to_device: {ours[0]} pinned, {ours[1]} pageable; view.pin_memory(): {plain[0]} pinned, " \
          f"{plain[1]} pageable"
    if ours == (0, 0):
        got += " (no HtoD memcpy events named in the profile)"
    return got, f"{2 * n} pinned, 0 pageable", ours[0] >= 2 * n and ours[1] == 0


def check_timing(ctx):
    """bench.py's timing (metrics.csv's elapsed_s) against the log line's tokens/s over the same steps."""
    every = ctx["sizes"]["log_every"]
    a, b = 2 * every, 3 * every
    config, run, out = run_quietly(ctx["sizes"]["small"] + [
        f"--device={ctx['device_arg']}", "--compile=False", f"--max_iters={b}", f"--eval_interval={every}",
        f"--log_interval={every}", "--eval_iters=2", "--eval_batch_size=8", "--peak_flops=1e12", "--run_name=timing"],
        ctx["data_dir"], ctx["tmp"])
    by_step = {r["step"]: r for r in run["metrics"]}
    bench_tps = (by_step[b]["tokens"] - by_step[a]["tokens"]) / (by_step[b]["elapsed_s"] - by_step[a]["elapsed_s"])
    logged = [float(m.group(2)) * 1e3 for m in re.finditer(r"step (\d+)/\S+ \| .*? \| ([\d.]+)k tok/s", out)
              if int(m.group(1)) == b]
    if not logged:
        return f"no log line at step {b}", "", False
    ratio = bench_tps / logged[0]
    return f"steps {a}-{b}: metrics {bench_tps / 1e3:.1f}k tok/s, log line {logged[0] / 1e3:.1f}k " \
        f"(ratio {ratio:.3f})", \
        "ratio within 0.9-1.1", 0.9 <= ratio <= 1.1


GPU_CHECKS = [("device, dtype, compile (auto)", check_choice), ("no recompiles (compiled run)", check_recompiles),
              ("flash attention, causal (forced)", check_flash), ("LSTM step dtype (auto)", check_lstm),
              ("GPT-2 124M bf16 + compile", check_gpt2), ("OOM probe's micro-batch", check_oom_probe),
              ("fp16 + GradScaler vs bf16", check_fp16), ("pinned batch copies (profiler)", check_pinned),
              ("bench timing vs log line", check_timing)]


def gpu_check(opts, config_args):
    """python bench.py --gpu_check: the CUDA paths on one GPU, in a few minutes; one table, exit 1 if a check
    fails. --device=cpu runs the same checks with CPU fallbacks and tiny models (a dry run of the code)."""
    device_arg = next((a.split("=", 1)[1] for a in config_args if a.startswith("--device=")), "cuda")
    unknown = [a for a in config_args if not a.startswith("--device=")]
    if unknown or device_arg not in ("cuda", "cpu") and not device_arg.startswith("cuda:"):
        raise UserError(f"--gpu_check takes only --device=cuda[:N] or --device=cpu (a dry run), got "
                        f"{' '.join(config_args)}")
    cuda = device_arg != "cpu"
    if cuda and not torch.cuda.is_available():
        raise UserError("--gpu_check needs a CUDA GPU and torch sees none here (torch.cuda.is_available() is False); "
                        "--gpu_check --device=cpu is a dry run of the same checks on the CPU")
    import prepare
    if not os.path.exists(os.path.join(opts.data_dir, "stdlib", "meta.json")):
        with contextlib.redirect_stdout(io.StringIO()):
            prepare.prepare("stdlib", data_dir=opts.data_dir)
    device = train.setup_device(train.resolve_config([f"--device={device_arg}"]))  # --device=cuda:3 may not exist
    tmp = tempfile.mkdtemp(prefix="gpu-check-")
    try:
        ctx = {"cuda": cuda, "device": device, "device_arg": device_arg, "data_dir": opts.data_dir, "tmp": tmp,
               "sizes": gpu_sizes(cuda)}
        if cuda:
            p = torch.cuda.get_device_properties(device)
            what = f"{p.name} (capability {p.major}.{p.minor}, {p.total_memory / 2 ** 30:.0f} GiB), CUDA " \
                   f"{torch.version.cuda}"
        else:
            what = f"CPU dry run ({torch.get_num_threads()} threads): tiny models, CUDA-only checks skipped"
        print(f"GPU check: {what}, torch {torch.__version__}", flush=True)
        print("| check | measured | expected | result |\n|---|---|---|---|", flush=True)
        failed = 0
        for name, fn in GPU_CHECKS:
            t0 = time.perf_counter()
            try:
                got, want, ok = fn(ctx)
            except Exception as e:  # one check's crash is its failure, not the end of the others
                first = str(e).splitlines()[0][:160] if str(e) else ""
                got, want, ok = f"error: {type(e).__name__}: {first}", "", False
            verdict = "skip" if ok is None else "ok" if ok else "FAIL"
            failed += verdict == "FAIL"
            cells = (str(c).replace("|", "/") for c in (got, want))  # a cell must not split the table
            print(f"| {name} | {' | '.join(cells)} | {verdict} ({time.perf_counter() - t0:.0f} s) |", flush=True)
        print(f"{failed} check(s) failed" if failed else "all checks passed")
        return 1 if failed else 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(argv):
    parser = ArgumentParser(prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="store_true", help="train.py vs the nanoGPT-class reference, + LSTM")
    parser.add_argument("--profile", action="store_true", help="torch profiler table for a few steps")
    parser.add_argument("--steps", type=int, default=50, help="timed optimizer steps (a multiple of --warmup)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="--suite: runs per entry (the median is shown)")
    parser.add_argument("--scale", type=int, default=1, help="--suite: multiply the timed steps")
    parser.add_argument("--data_dir", default="data", help="where the embedded corpus is (prepared if missing)")
    parser.add_argument("--gpu_check", action="store_true", help="the GPU acceptance check: one table, exit 1 on a "
                        "failed check, 2 without CUDA (--device=cpu: a dry run on the CPU)")
    opts, config_args = parser.parse_known_args(argv)
    if opts.gpu_check:
        return gpu_check(opts, config_args)
    import prepare
    if not os.path.exists(os.path.join(opts.data_dir, "stdlib", "meta.json")):
        prepare.prepare("stdlib", data_dir=opts.data_dir)
    if opts.suite:
        return suite(opts, opts.data_dir)
    if opts.profile:
        return profile(config_args, opts.data_dir)
    config = train.resolve_config(config_args)
    device_type = train.pick_device(config).split(":")[0]
    dtypes = ["float32", "auto"] if config["dtype"] == "auto" else [config["dtype"]]
    for dtype in dtypes:
        r = time_trainer(config_args + [f"--dtype={dtype}"], opts.steps, opts.warmup, opts.data_dir)
        peak = train.device_peak_flops(config, device_type, r["dtype"])
        print(f"{config['arch']} {config['n_layer']}L x {config['n_embd']}, {r['n_params'] / 1e6:.2f}M params, "
              f"dtype {dtype} -> {r['dtype']}: {r['ms_per_step']:.1f} ms/step, {r['tokens_per_s'] / 1e3:.1f}k "
              f"tokens/s, {r['flops_per_s'] / 1e9:.1f} GFLOP/s"
              + (f", MFU {100 * r['flops_per_s'] / peak:.1f}% of {peak / 1e9:.0f} GFLOP/s" if peak else ""))
    return 0


def main(argv=None):
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
