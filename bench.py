"""
Throughput benchmark. Times train.py's own training loop (train.train: data, schedule, forward, backward,
clipping, optimizer, bookkeeping) for --steps optimizer steps after --warmup steps, and prints ms/step,
tokens/s, achieved FLOP/s and MFU (= tokens/s x flops_per_token / peak). Evaluation is excluded, as in
metrics.csv's elapsed_s.

    python bench.py                                    # train.py's default model, fp32 and dtype=auto
    python bench.py configs/modern.py --n_embd=256 --n_layer=6 --n_head=4
    python bench.py --suite                            # the README's table: train.py vs a nanoGPT-class loop
    python bench.py --profile configs/modern.py        # torch profiler: where a step's time goes

--suite times, side by side and interleaved (so a busy machine slows both alike), train.py against a reference
loop written the way nanoGPT-class trainers are (GPT-2 block, learned positions, GELU, LayerNorm with biases,
AdamW as torch picks it by default, the memmap re-opened for every batch, a loss.item() per step), at 2L x 64,
4L x 128 and 6L x 256 (block 128, batch 16), fp32, and train.py with dtype='auto'; then the LSTM at 2L x 256
beside a plain nn.LSTM loop and the Transformer of similar parameter count. Ratios are what to read: the
machine's load changes absolute numbers.
"""
import argparse
import contextlib
import io
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

import results
import train
from configurator import UserError


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
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def reference_batch(path, block, batch):
    data = np.memmap(path, dtype=np.uint16, mode="r")  # re-opened every batch, as nanoGPT does
    ix = torch.randint(len(data) - block, (batch,))
    x = torch.stack([torch.from_numpy(data[i:i + block].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block].astype(np.int64)) for i in ix])
    return x, y


def time_reference(model, path, block, batch, steps, warmup, lr=1e-3, clip=1.0):
    """A nanoGPT-class loop: AdamW with torch's default implementation choice, clipping, loss.item() per step."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = reference_batch(path, block, batch)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
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
def report(name, r, peak, ref_tokens_per_s=None):
    mfu = f"{100 * r['flops_per_s'] / peak:5.1f}%" if peak else "    -"
    ratio = f"{r['tokens_per_s'] / ref_tokens_per_s:5.2f}x" if ref_tokens_per_s else "      "
    print(f"  {name:<34} {r.get('ms_per_step', float('nan')):8.1f} {r['tokens_per_s'] / 1e3:9.1f}k "
          f"{r['flops_per_token'] / 1e6:8.2f} {r['flops_per_s'] / 1e9:8.1f} {mfu} {ratio}", flush=True)


def header(peak):
    print(f"peak (measured matmul, fp32): {peak / 1e9:.0f} GFLOP/s, {torch.get_num_threads()} threads")
    print(f"  {'':<34} {'ms/step':>8} {'tokens/s':>10} {'MFLOP/tok':>8} {'GFLOP/s':>8} {'MFU':>6} {'vs ref':>6}")


def suite(opts, data_dir):
    path = os.path.join(data_dir, "stdlib", "train.bin")
    peak32 = train.measure_cpu_peak("float32")
    peak16 = train.measure_cpu_peak("bfloat16") if train.cpu_has_native_bf16() else None
    header(peak32)
    if peak16:
        print(f"(bf16 matmul peak: {peak16 / 1e9:.0f} GFLOP/s; MFU of bf16 runs is against the fp32 peak, to compare"
              f" like with like)")
    for n_layer, d, n_head in ((2, 64, 2), (4, 128, 4), (6, 256, 4)):
        base = [f"--n_layer={n_layer}", f"--n_embd={d}", f"--n_head={n_head}", "--block_size=128",
                "--batch_size=16", "--bias=True", "--dropout=0.0"]
        steps = {64: 100, 128: 40, 256: 15}[d] * opts.scale
        warm = {64: 20, 128: 10, 256: 5}[d]
        steps = math.ceil(steps / warm) * warm
        fpt = train.build_model(train.resolve_config(base), 257).flops_per_token()
        ref, ours, auto = [], [], []
        for _ in range(opts.repeats):  # interleaved, so load changes hit all three alike
            torch.manual_seed(0)
            ref.append(time_reference(RefGPT(257, 128, n_layer, d, n_head), path, 128, 16, steps, warm))
            ours.append(time_trainer(base + ["--dtype=float32"], steps, warm, data_dir))
            auto.append(time_trainer(base + ["--dtype=auto"], steps, warm, data_dir))
        ref_tps = sorted(ref)[len(ref) // 2]
        ours_r, auto_r = (sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2] for runs in (ours, auto))
        report(f"{n_layer}L x {d} reference fp32", {"tokens_per_s": ref_tps, "flops_per_token": fpt,
                                                    "flops_per_s": ref_tps * fpt,
                                                    "ms_per_step": 2048e3 / ref_tps}, peak32)
        report(f"{n_layer}L x {d} train.py fp32", ours_r, peak32, ref_tps)
        report(f"{n_layer}L x {d} train.py auto ({auto_r['dtype']})", auto_r, peak32, ref_tps)
    # the LSTM beside a plain nn.LSTM loop and a Transformer of similar parameter count
    lstm = ["--arch=lstm", "--n_layer=2", "--n_embd=256", "--block_size=128", "--batch_size=16"]
    steps, warm = 20 * opts.scale, 5
    plain = PlainLSTM(257, 256, 2)
    fpt = train.build_model(train.resolve_config(lstm), 257).flops_per_token()
    plain_tps = time_reference(plain, path, 128, 16, steps, warm)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="store_true", help="train.py vs the nanoGPT-class reference, + LSTM")
    parser.add_argument("--profile", action="store_true", help="torch profiler table for a few steps")
    parser.add_argument("--steps", type=int, default=50, help="timed optimizer steps (a multiple of --warmup)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="--suite: runs per entry (the median is shown)")
    parser.add_argument("--scale", type=int, default=1, help="--suite: multiply the timed steps")
    parser.add_argument("--data_dir", default="data", help="where the embedded corpus is (prepared if missing)")
    opts, config_args = parser.parse_known_args()
    try:
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
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
