"""
Train one Transformer (model.py) or LSTM (lstm.py) language model and write its run folder
(results/<study>/<run_name>/: config.json, metrics.csv, final.json, ckpt.pt; see README "Results format").

    python train.py                                      # the main job: small model on the embedded corpus
    python train.py configs/modern.py --learning_rate=3e-3 --seed=2
    torchrun --nproc_per_node=2 train.py configs/lstm.py  # DDP (nccl on CUDA, gloo on CPU)
    python train.py --help                               # every key with its default

Every global below is a config key. Config files (plain Python) and --key=value arguments override them in
order. Re-running the same command resumes an interrupted run from its checkpoint and leaves a finished one
alone (--overwrite=True trains it again). SIGTERM, SIGINT and SIGUSR1 checkpoint and exit with status 75.
Exit status: 0 finished (completed, diverged, early_stopped, time_limit), 75 interrupted, 2 bad input, 1 crash.
"""
import errno
import math
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch

import results
from configurator import UserError, describe_keys, parse_args

# ------------------------------------------------------------------------------------------- config
# run identity and output
study = "default"  # results go to results_dir/study/run_name
label = ""  # the variant's name in analyses; '' = the first config file's name, or 'baseline'
run_name = ""  # '' = {label}_{n_embd}d_lr{learning_rate:.1e}_s{seed}
results_dir = "results"  # root of all run folders
overwrite = False  # start over even if the run folder holds a finished or resumable run
keep_ckpt = True  # keep ckpt.pt after the run finishes (False saves disk in large sweeps)
# data
dataset = "stdlib"  # a folder under data_dir written by prepare.py ('stdlib' is prepared on first use)
data_dir = "data"  # where prepare.py wrote the datasets
# model
arch = "transformer"  # transformer (model.py) | lstm (lstm.py)
n_layer = 4  # blocks (transformer) or stacked LSTM layers
n_head = 4  # attention heads; n_embd must be divisible by it
n_embd = 128  # model width (the token embedding width for the LSTM)
block_size = 128  # context length in tokens (task datasets: set from the row length)
dropout = 0.0  # dropout probability (attention, residual, embedding; LSTM: between layers too)
bias = False  # biases in Linear layers and LayerNorms
tie_embeddings = True  # output head shares the token-embedding matrix
activation = "gelu"  # relu | gelu | silu | glu | swiglu | geglu
mlp_ratio = 4.0  # ungated MLP hidden width / n_embd
glu_match_params = True  # gated MLPs get 2/3 of the hidden width so parameters match the ungated MLP
pos_encoding = "learned"  # none | sinusoidal | learned | rotary
rope_base = 10000.0  # rotary base frequency
norm = "layernorm"  # layernorm | rmsnorm
norm_position = "pre"  # pre | post (the 2017 post-LN)
qk_norm = False  # RMSNorm on queries and keys per head
scale_embeddings = False  # multiply token embeddings by sqrt(n_embd) (Vaswani et al. 2017)
init = "transformer"  # transformer (GPT-2) | xavier_normal | kaiming_normal | pytorch (module defaults)
init_std = 0.02  # std of the transformer init
lstm_hidden = 0  # LSTM width; 0 = n_embd
lstm_proj = 0  # LSTMP projection width; 0 = none
lstm_forget_bias = 1.0  # initial forget-gate bias
lstm_init = "xavier"  # xavier | uniform | pytorch
lstm_init_range = 0.1  # r of U(-r, r) for lstm_init='uniform'
# muP (Transformer)
use_mup = False  # Maximal Update Parametrization: LR of the base width transfers to other widths
mup_base_width = 128  # the width at which muP equals the standard parametrization
mup_input_mult = 1.0  # muP multiplier on the embedding output
mup_output_mult = 1.0  # muP multiplier on the logits (on top of 1/width_mult)
# optimizer
optimizer = "adamw"  # adamw (decoupled decay) | adam (L2 decay in the gradient) | sgd (heavy-ball momentum)
learning_rate = 1e-3  # peak learning rate of the base parameter group
weight_decay = 0.1  # on matrices only (no decay on biases, norms, embeddings)
decay_embeddings = False  # also decay the embedding tables (grokking setups decay every matrix)
beta1 = 0.9  # Adam beta1
beta2 = 0.95  # Adam beta2
eps = 1e-8  # Adam epsilon
momentum = 0.9  # SGD momentum
nesterov = False  # SGD Nesterov momentum
grad_clip = 1.0  # clip the global gradient norm to this; 0 = off
layer_lr_mults = None  # per-layer LR multipliers: [embed, lower blocks, upper blocks + head] or one per layer
layer_lr_ramp = 1.0  # geometric ramp: layer i (0 = embeddings) gets ramp**i; composes with the above
# learning-rate schedule
lr_schedule = "cosine"  # constant | linear | cosine | inverse_sqrt, each after a linear warmup
warmup_iters = 0  # warmup steps; 0 = warmup_frac of the run's steps
warmup_frac = 0.05  # warmup as a fraction of the run's total steps
lr_decay_iters = 0  # steps over which linear/cosine decay; 0 = the run's total steps
min_lr = None  # floor of linear/cosine decay; None = learning_rate / 10
# batch and budget (the first budget reached ends training; 0 = not set)
batch_size = 16  # sequences per micro-batch per process
gradient_accumulation_steps = 1  # micro-batches per optimizer step, all processes together (as nanoGPT)
target_effective_batch_size = 0  # sequences per optimizer step; set: CUDA fits the micro-batch to memory
max_iters = 2000  # optimizer steps
max_tokens = 0  # training tokens
max_flops = 0.0  # training FLOPs (flops_per_token x tokens)
tokens_per_param = 0.0  # tokens = this x non-embedding parameters (Chinchilla: 20)
time_limit_s = 0.0  # wall-clock seconds of training (ends with status time_limit)
# evaluation, logging, checkpoints
eval_interval = 250  # steps between evaluations (each writes a metrics.csv row)
eval_iters = 20  # fixed validation batches per evaluation (task datasets: the whole validation set)
eval_batch_size = 32  # sequences per validation batch; fixed, so the validation set ignores batch_size
log_interval = 50  # steps between progress lines
ckpt_interval = 0  # steps between checkpoints; 0 = at every evaluation
early_stopping_patience = 0  # evaluations without improvement before stopping; 0 = off
early_stopping_min_delta = 0.0  # improvement of val loss that counts
target_val_acc = 0.0  # task datasets: stop (status early_stopped) once val accuracy reaches this; 0 = off
# system
device = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps
dtype = "auto"  # auto | float32 | bfloat16 | float16 (autocast; float16 uses a GradScaler)
compile = "auto"  # torch.compile: auto (on for CUDA, off for CPU) | True | False
num_threads = 0  # torch CPU threads; 0 = torch's default
seed = 1337  # seeds model init, data order and dropout
peak_flops = 0.0  # device peak FLOP/s for MFU; 0 = measured (CPU) or looked up (GPU)
ddp_timeout_s = 300.0  # a collective waiting longer than this (a dead rank) aborts the run
wandb_log = False  # log to Weights & Biases (works offline with WANDB_MODE=offline)
wandb_project = "algoprog"  # wandb project
DEFAULTS = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(
    v, (int, float, str, bool, list, type(None))) and k not in ("math", "os", "random", "signal")}

CHOICES = {
    "arch": ("transformer", "lstm"),
    "activation": ("relu", "gelu", "silu", "glu", "swiglu", "geglu"),
    "pos_encoding": ("none", "sinusoidal", "learned", "rotary"),
    "norm": ("layernorm", "rmsnorm"),
    "norm_position": ("pre", "post"),
    "init": ("transformer", "xavier_normal", "kaiming_normal", "pytorch"),
    "lstm_init": ("xavier", "uniform", "pytorch"),
    "optimizer": ("adamw", "adam", "sgd"),
    "lr_schedule": ("constant", "linear", "cosine", "inverse_sqrt"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "compile": ("auto", True, False),
}
# keys that change how a run is executed or reported, not its results: a resumed run may differ in these
EXECUTION_KEYS = ("overwrite", "keep_ckpt", "log_interval", "ckpt_interval", "num_threads", "compile",
                  "peak_flops", "ddp_timeout_s", "wandb_log", "wandb_project", "results_dir", "data_dir")
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: run the same command again to resume


# ------------------------------------------------------------------------------------------- config checks
def resolve_config(args):
    """Config files and --key=value overrides applied to DEFAULTS, label and run_name filled in, every value
    checked. Raises UserError (one line) on anything wrong. Needs no data and no device."""
    config, config_files = parse_args(args, DEFAULTS)
    c = config
    for key, choices in CHOICES.items():
        if c[key] not in choices:
            raise UserError(f"{key}={c[key]!r} is not one of {', '.join(map(str, choices))}")
    positive = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                "eval_interval", "eval_iters", "eval_batch_size", "log_interval", "mlp_ratio")
    for key in positive:
        if c[key] <= 0:
            raise UserError(f"{key} must be positive, got {c[key]}")
    nonnegative = ("max_iters", "max_tokens", "max_flops", "tokens_per_param", "time_limit_s", "warmup_iters",
                   "lr_decay_iters", "ckpt_interval", "early_stopping_patience", "grad_clip", "weight_decay",
                   "num_threads", "peak_flops", "lstm_hidden", "lstm_proj", "target_effective_batch_size", "eps",
                   "momentum", "init_std", "lstm_init_range")
    for key in nonnegative:
        if c[key] < 0:
            raise UserError(f"{key} must be >= 0, got {c[key]}")
    if c["device"] != "auto":
        try:
            torch.device(c["device"])
        except (RuntimeError, ValueError):
            raise UserError(f"device={c['device']!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
    if not c["learning_rate"] > 0 or not math.isfinite(c["learning_rate"]):
        raise UserError(f"learning_rate must be a positive number, got {c['learning_rate']}")
    if c["min_lr"] is not None and (not isinstance(c["min_lr"], (int, float)) or not 0 <= c["min_lr"] < math.inf):
        raise UserError(f"min_lr must be a number >= 0 or None, got {c['min_lr']!r}")
    if not 0 <= c["dropout"] < 1:
        raise UserError(f"dropout must be in [0, 1), got {c['dropout']}")
    for key in ("warmup_frac", "beta1", "beta2"):
        if not 0 <= c[key] < 1:
            raise UserError(f"{key} must be in [0, 1), got {c[key]}")
    if c["optimizer"] == "sgd" and c["nesterov"] and not c["momentum"]:
        raise UserError("nesterov=True needs momentum > 0")
    if c["arch"] == "transformer":
        if c["n_embd"] % c["n_head"]:
            raise UserError(f"n_embd={c['n_embd']} is not divisible by n_head={c['n_head']}")
        if c["pos_encoding"] == "rotary" and (c["n_embd"] // c["n_head"]) % 2:
            raise UserError(f"rotary needs an even head size; n_embd/n_head = {c['n_embd'] // c['n_head']}")
        if c["use_mup"] and c["mup_base_width"] % c["n_head"]:
            raise UserError(f"mup_base_width={c['mup_base_width']} is not divisible by n_head={c['n_head']}")
    else:
        if c["use_mup"]:
            raise UserError("use_mup is implemented for arch='transformer' only (see README, muP)")
        out_dim = c["lstm_proj"] or c["lstm_hidden"] or c["n_embd"]
        if c["tie_embeddings"] and out_dim != c["n_embd"]:
            raise UserError(f"tie_embeddings needs the LSTM output width ({out_dim}) to equal n_embd "
                            f"({c['n_embd']}): set tie_embeddings=False or matching widths")
        if c["lstm_proj"] and c["lstm_proj"] >= (c["lstm_hidden"] or c["n_embd"]):
            raise UserError("lstm_proj must be smaller than the LSTM width (lstm_hidden or n_embd)")
    if c["use_mup"] and c["mup_base_width"] <= 0:
        raise UserError("mup_base_width must be positive")
    if c["layer_lr_mults"] is not None:
        mults = c["layer_lr_mults"]
        if not isinstance(mults, (list, tuple)) or len(mults) not in (3, c["n_layer"] + 2) or not all(
                isinstance(m, (int, float)) and 0 <= m < math.inf for m in mults):
            raise UserError(f"layer_lr_mults must be a list of 3 numbers [embeddings, lower blocks, upper blocks"
                            f" + head] or n_layer + 2 = {c['n_layer'] + 2} numbers, got {mults!r}")
    if not c["layer_lr_ramp"] > 0:
        raise UserError("layer_lr_ramp must be positive")
    if not (c["max_iters"] or c["max_tokens"] or c["max_flops"] or c["tokens_per_param"] or c["time_limit_s"]):
        raise UserError("no training budget: set one of max_iters, max_tokens, max_flops, tokens_per_param, "
                        "time_limit_s")
    if not c["label"]:
        c["label"] = os.path.splitext(os.path.basename(config_files[0]))[0] if config_files else "baseline"
    if not c["run_name"]:
        c["run_name"] = f"{c['label']}_{c['n_embd']}d_lr{c['learning_rate']:.1e}_s{c['seed']}"
    for key in ("study", "run_name"):
        if not c[key] or "/" in c[key] or "\0" in c[key] or c[key] in (".", "..") or \
                len(c[key].encode(errors="surrogatepass")) > 255:
            raise UserError(f"{key}={c[key]!r} must be a plain folder name (at most 255 bytes)")
    c["config_files"] = config_files  # recorded in config.json for provenance
    return c


def run_folder(config):
    return os.path.join(config["results_dir"], config["study"], config["run_name"])


# ------------------------------------------------------------------------------------------- model
def build_model(config, vocab_size):
    if config["arch"] == "lstm":
        from lstm import LSTMConfig, LSTMLM
        keys = LSTMConfig.__dataclass_fields__
        return LSTMLM(LSTMConfig(vocab_size=vocab_size, **{k: config[k] for k in keys if k in config}))
    from model import GPT, GPTConfig
    keys = GPTConfig.__dataclass_fields__
    return GPT(GPTConfig(vocab_size=vocab_size, **{k: config[k] for k in keys if k in config}))


def layer_lr_mult(config, layer, n_layer):
    """Layer-wise LR multiplier of layer (0 embeddings, 1..n_layer blocks, n_layer + 1 head)."""
    mult = config["layer_lr_ramp"] ** layer
    mults = config["layer_lr_mults"]
    if mults is not None:
        if len(mults) == 3:  # the seed's three groups: embeddings, lower half, upper half + head
            mult *= mults[0] if layer == 0 else mults[1] if layer <= n_layer // 2 else mults[2]
        else:
            mult *= mults[layer]
    return mult


def optimizer_groups(model, config):
    """Parameter groups with an 'lr_mult' each (muP x layer-wise); the schedule sets lr = lr_t * lr_mult.
    Weight decay only on matrices (not on embeddings, biases or norm gains)."""
    from model import mup_lr_mult
    width_mult = config["n_embd"] / config["mup_base_width"] if config["use_mup"] else 1.0
    groups = {}
    for _, p, kind, layer in model.param_info():
        decayed = ("hidden", "readout", "embedding") if config["decay_embeddings"] else ("hidden", "readout")
        decay = config["weight_decay"] if kind in decayed else 0.0
        mult = mup_lr_mult(kind, config["optimizer"], width_mult) * layer_lr_mult(config, layer, config["n_layer"])
        groups.setdefault((decay, mult), []).append(p)
    return [{"params": ps, "weight_decay": d, "lr_mult": m} for (d, m), ps in groups.items()]


def make_optimizer(model, config, device_type):
    groups = optimizer_groups(model, config)
    lr = config["learning_rate"]
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=config["momentum"], nesterov=config["nesterov"],
                               foreach=True)
    cls = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
    # fused kernels exist for CPU and CUDA; they cut the per-step Python overhead that dominates small models
    fused = device_type in ("cpu", "cuda")
    return cls(groups, lr=lr, betas=(config["beta1"], config["beta2"]), eps=config["eps"], fused=fused)


# ------------------------------------------------------------------------------------------- schedule
def lr_at(step, config, total_steps):
    """Learning rate of the base group for optimizer step `step` (0-based)."""
    lr = config["learning_rate"]
    warmup = config["warmup_iters"] or round(config["warmup_frac"] * total_steps)
    n = step + 1
    if n <= warmup:
        return lr * n / warmup
    schedule = config["lr_schedule"]
    if schedule == "constant":
        return lr
    if schedule == "inverse_sqrt":  # Vaswani et al.: peak at the end of warmup, then ~ 1/sqrt(step)
        return lr * math.sqrt(warmup / n) if warmup else lr / math.sqrt(n)
    min_lr = lr / 10 if config["min_lr"] is None else config["min_lr"]
    decay_steps = (config["lr_decay_iters"] or total_steps) - warmup
    progress = min(1.0, (n - warmup) / decay_steps) if decay_steps > 0 else 1.0
    if schedule == "linear":
        return min_lr + (1 - progress) * (lr - min_lr)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


# ------------------------------------------------------------------------------------------- data
class TokenBatches:
    """Random windows of block_size + 1 tokens. All processes draw the same global batch from one seeded
    generator and each takes its share, so the data order does not depend on the number of processes."""

    def __init__(self, data, block_size, seed):
        self.data, self.block_size = data, block_size
        self.rng = np.random.default_rng(seed)
        self.offsets = np.arange(block_size + 1)

    def windows(self, starts):
        return torch.from_numpy(self.data[starts[:, None] + self.offsets].astype(np.int64))

    def next(self, n_sequences):
        starts = self.rng.integers(0, len(self.data) - self.block_size, size=n_sequences)
        rows = self.windows(starts)
        return rows[:, :-1], rows[:, 1:]

    def state(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state):
        self.rng.bit_generator.state = state["rng"]


class RowBatches:
    """Whole rows of a task dataset, drawn without replacement within an epoch (reshuffled every epoch).
    Targets are -1 except at the supervised positions."""

    def __init__(self, rows, supervised_positions, seed):
        self.rows = rows
        self.rng = np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(len(rows)), 0
        self.mask = np.ones(rows.shape[1] - 1, dtype=bool)
        self.mask[[p - 1 for p in supervised_positions]] = False  # y[j] = row[j + 1]

    def batch(self, index):
        rows = self.rows[np.sort(index)].astype(np.int64)
        x, y = rows[:, :-1], rows[:, 1:].copy()
        y[:, self.mask] = -1
        return torch.from_numpy(x), torch.from_numpy(y)

    def next(self, n_sequences):
        picked = []
        while n_sequences > 0:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.rows)), 0
            take = self.order[self.pos:self.pos + n_sequences]
            picked.append(take)
            self.pos += len(take)
            n_sequences -= len(take)
        index = np.concatenate(picked)
        rows = self.rows[index].astype(np.int64)
        x, y = rows[:, :-1], rows[:, 1:].copy()
        y[:, self.mask] = -1
        return torch.from_numpy(x), torch.from_numpy(y)

    def state(self):
        return {"rng": self.rng.bit_generator.state, "order": self.order, "pos": self.pos}

    def load_state(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.order, self.pos = state["order"], state["pos"]


def validation_batches(meta, val, config):
    """The fixed validation set, identical for every run, seed, batch size and variant with this dataset and
    block_size: eval_iters batches of eval_batch_size windows from a constant generator (token datasets), or
    every row (task datasets)."""
    if meta["kind"] == "rows":
        rows = RowBatches(val, meta["supervised_positions"], 0)
        size = max(config["eval_batch_size"], 256)
        return [rows.batch(np.arange(i, min(i + size, len(val)))) for i in range(0, len(val), size)]
    windows = TokenBatches(val, config["block_size"], seed=20240101)
    return [windows.next(config["eval_batch_size"]) for _ in range(config["eval_iters"])]


# ------------------------------------------------------------------------------------------- device
def pick_device(config):
    if config["device"] != "auto":
        device = torch.device(config["device"])  # a valid name: resolve_config checked it
        mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        if (device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count()) or \
                (device.type == "mps" and not mps):
            raise UserError(f"device={config['device']!r} is not available on this machine "
                            f"({torch.cuda.device_count()} CUDA device(s), mps {'yes' if mps else 'no'}); "
                            f"use --device=auto")
        return config["device"]
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_native_bf16():
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_dtype(config, device_type):
    """autocast dtype. CUDA: bf16 where supported, else fp16 (with a GradScaler). CPU: bf16 autocast for
    Transformers of width >= 64 where the CPU has native bf16 matmul (measured on this project's CPU, bf16 over
    fp32 steps: 1.1x at width 32, 1.4-1.7x at 64, 1.9x at 128 and 256; the same validation loss at 64, 128 and 256:
    README "Performance"), fp32 elsewhere. The LSTM stays fp32: bf16 runs it 1.3-1.6x faster here, but reached
    the target loss with 2% more compute [0.0, 4%] over 3 seeds, a bias this toolkit's comparisons must not carry
    (--dtype=bfloat16 opts in)."""
    if config["dtype"] != "auto":
        return config["dtype"]
    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device_type == "cpu" and config["arch"] == "transformer" and config["n_embd"] >= 64 \
            and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


GPU_PEAK_FLOPS = {  # dense bf16/fp16 tensor-core peaks, FLOP/s
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "A10": 125e12, "L40S": 362e12,
    "L4": 121e12, "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "A6000": 155e12,
}


def measure_cpu_peak(dtype_name, size=1024, seconds=0.3):
    """Matmul throughput of this CPU in the training dtype, with the current thread count."""
    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype_name, torch.float32)
    gen = torch.Generator().manual_seed(0)  # its own generator: the training RNG streams stay untouched
    a, b = torch.randn(size, size, generator=gen).to(dt), torch.randn(size, size, generator=gen).to(dt)
    a @ b  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * size ** 3 * n / (time.perf_counter() - t0)


def device_peak_flops(config, device_type, dtype_name):
    if config["peak_flops"]:
        return config["peak_flops"]
    if device_type == "cuda":
        name = torch.cuda.get_device_name()
        for key, peak in GPU_PEAK_FLOPS.items():
            if key in name:
                return peak if dtype_name != "float32" else peak / 2  # tf32 is about half the bf16 peak
        return None
    if device_type == "cpu":
        return measure_cpu_peak(dtype_name)
    return None


def plan_batches(config, world_size, model, device_type, autocast, vocab_size):
    """(micro-batch size, micro-steps per process). Without target_effective_batch_size: batch_size and
    gradient_accumulation_steps / processes, as nanoGPT. With it: on CUDA the largest micro-batch that divides
    the per-process share and fits in memory (probed: forward + backward, halving on out-of-memory, room left for
    the optimizer state); elsewhere batch_size. Either way the sequences per optimizer step, and so every token
    count, are what the config says."""
    if not config["target_effective_batch_size"]:
        if config["gradient_accumulation_steps"] % world_size:
            raise UserError(f"gradient_accumulation_steps={config['gradient_accumulation_steps']} is not "
                            f"divisible by the {world_size} processes; use a multiple of {world_size}")
        return config["batch_size"], config["gradient_accumulation_steps"] // world_size
    target = config["target_effective_batch_size"]
    if target % world_size:
        raise UserError(f"target_effective_batch_size={target} is not divisible by the {world_size} processes")
    per_process = target // world_size
    if device_type != "cuda":
        if per_process % config["batch_size"]:
            raise UserError(f"target_effective_batch_size={target} is not a multiple of batch_size="
                            f"{config['batch_size']} x {world_size} process(es)")
        return config["batch_size"], per_process // config["batch_size"]
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    budget = 0.9 * torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    for micro in sorted((m for m in range(1, per_process + 1) if per_process % m == 0), reverse=True):
        try:
            torch.cuda.reset_peak_memory_stats()
            idx = torch.randint(vocab_size, (micro, config["block_size"]), device="cuda")
            with autocast:
                _, loss = model(idx, idx)
            loss.backward()
            fits = torch.cuda.max_memory_allocated() + 2 * param_bytes <= budget  # + Adam's two moments
        except torch.cuda.OutOfMemoryError:
            fits = False
        model.zero_grad(set_to_none=True)
        loss = idx = None
        torch.cuda.empty_cache()
        if fits:
            print(f"target_effective_batch_size={target}: micro-batch {micro} x {per_process // micro} "
                  f"accumulation steps x {world_size} process(es)")
            return micro, per_process // micro
    raise UserError(f"not even a micro-batch of 1 sequence of block_size={config['block_size']} fits in GPU memory")


# ------------------------------------------------------------------------------------------- small helpers
def git_sha():
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def budget_steps(config, tokens_per_step, flops_per_token, n_params_non_embedding):
    """Optimizer steps allowed by the step/token/FLOP budgets (the smallest wins); None if only a time limit."""
    limits = []
    if config["max_iters"]:
        limits.append(config["max_iters"])
    if config["max_tokens"]:
        limits.append(math.ceil(config["max_tokens"] / tokens_per_step))
    if config["max_flops"]:
        limits.append(math.ceil(config["max_flops"] / (flops_per_token * tokens_per_step)))
    if config["tokens_per_param"]:
        limits.append(math.ceil(config["tokens_per_param"] * n_params_non_embedding / tokens_per_step))
    return max(1, min(limits)) if limits else None


def config_differences(saved, config):
    keys = sorted((set(saved) | set(config)) - set(EXECUTION_KEYS) - {"derived", "config_files"})
    return [k for k in keys if saved.get(k, "<absent>") != config.get(k, "<absent>")]


class StopSignal:
    """Remembers SIGTERM/SIGINT/SIGUSR1 (SLURM's warnings before preemption or the time limit); the training
    loop checks it between micro-steps and checkpoints."""

    def __init__(self):
        self.received = None
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGTERM, signal.SIGINT,
                                                                          signal.SIGUSR1)}

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def handle(self, signum, frame):
        if self.received is None:
            print(f"\nreceived {signal.Signals(signum).name}: checkpointing and exiting", file=sys.stderr,
                  flush=True)
        self.received = signum


def capture_rng(batches):
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "data": batches.state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state, batches):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    batches.load_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(folder):
    """The newest readable checkpoint (ckpt.pt, else ckpt.prev.pt), or None. A damaged file is reported, not
    fatal: that is what a disk that filled up or a kill on a filesystem without atomic rename leaves."""
    for name in ("ckpt.pt", "ckpt.prev.pt"):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(ckpt, dict) or "model" not in ckpt or "state" not in ckpt:
                raise ValueError("not a train.py checkpoint")
            return ckpt
        except Exception as e:  # torch raises many types for a truncated zip
            print(f"warning: {path} is unreadable ({type(e).__name__}: {str(e)[:80]}); "
                  f"trying an older checkpoint", file=sys.stderr)
    return None


def save_checkpoint(folder, ckpt):
    """Atomic, keeping the previous checkpoint as ckpt.prev.pt until the new one is complete."""
    path = os.path.join(folder, "ckpt.pt")
    tmp = os.path.join(folder, f"ckpt.pt.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:  # a Python file, so a failed write (disk full) is an OSError underneath
            try:
                torch.save(ckpt, f)
            except RuntimeError as e:  # torch reports the failed write as a RuntimeError; raise the OSError
                if isinstance(e.__context__, OSError):
                    raise e.__context__ from None
                raise
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if os.path.exists(path):
        prev = os.path.join(folder, "ckpt.prev.pt")
        try:  # a hard link, so that ckpt.pt exists at every moment (a kill between two renames would leave none)
            if os.path.lexists(prev):
                os.remove(prev)
            os.link(path, prev)
        except OSError:  # filesystems without hard links: rename (resume then falls back to ckpt.prev.pt)
            os.replace(path, prev)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------- training
def train(config):
    """Run (or resume) one training run. Returns the final status."""
    stop = StopSignal()  # first, so a signal during start-up also ends in a checkpoint, not a dead process
    try:
        return run_training(config, stop)
    finally:
        stop.restore()


def under_torchrun():
    return int(os.environ.get("RANK", -1)) != -1


def run_training(config, stop):
    # ---- processes and device
    ddp = under_torchrun()
    import torch.distributed as dist
    if ddp:
        from datetime import timedelta
        rank, local_rank, world_size = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), \
            int(os.environ["WORLD_SIZE"])
        device = pick_device(config)
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=config["ddp_timeout_s"]))
        # small bookkeeping collectives (stop votes, loss sums, RNG states) use CPU tensors: a gloo group
        cpu_group = dist.new_group(backend="gloo") if backend == "nccl" else None
    else:
        rank, local_rank, world_size, device, cpu_group = 0, 0, 1, pick_device(config), None
    master = rank == 0
    device_type = device.split(":")[0]
    if config["num_threads"]:
        torch.set_num_threads(config["num_threads"])
    dtype_name = pick_dtype(config, device_type)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = nullcontext() if dtype_name == "float32" else torch.autocast(
        device_type, dtype={"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name])
    use_compile = config["compile"] if config["compile"] != "auto" else device_type == "cuda"

    # ---- data
    from prepare import load_dataset, prepare
    data_path = os.path.join(config["data_dir"], config["dataset"])
    if config["dataset"] == "stdlib" and not os.path.exists(os.path.join(data_path, "meta.json")):
        if master:
            print(f"preparing the embedded corpus in {data_path} (once)")
            prepare("stdlib", data_dir=config["data_dir"])
        if ddp:
            dist.barrier()
    data = load_dataset(config["data_dir"], config["dataset"])
    meta = data["meta"]
    rows = meta["kind"] == "rows"
    if rows:
        config["block_size"] = meta["row_len"] - 1  # a row is the whole context
    elif min(len(data["train"]), len(data["val"])) <= config["block_size"] + 1:
        raise UserError(f"block_size={config['block_size']} is larger than the data: dataset "
                        f"'{config['dataset']}' has {len(data['train'])} train and {len(data['val'])} val tokens")
    batches = RowBatches(data["train"], meta["supervised_positions"], config["seed"]) if rows else \
        TokenBatches(data["train"], config["block_size"], config["seed"])
    val_batches = validation_batches(meta, data["val"], config)

    # ---- model and accounting
    torch.manual_seed(config["seed"])  # identical init on every process
    random.seed(config["seed"])
    np.random.seed(config["seed"] % 2 ** 32)
    model = build_model(config, meta["vocab_size"]).to(device)
    micro_batch, accum = plan_batches(config, world_size, model, device_type, autocast, meta["vocab_size"])
    n_params, n_params_ne = model.num_params(), model.num_params(non_embedding=True)
    flops_per_token = model.flops_per_token()
    tokens_per_step = micro_batch * config["block_size"] * accum * world_size
    total_steps = budget_steps(config, tokens_per_step, flops_per_token, n_params_ne)
    if total_steps is None and config["lr_schedule"] in ("linear", "cosine") and not config["lr_decay_iters"]:
        raise UserError(f"lr_schedule={config['lr_schedule']} needs to know the run's length: set max_iters, "
                        f"max_tokens, max_flops, tokens_per_param or lr_decay_iters (time_limit_s alone is not "
                        f"enough)")
    schedule_steps = total_steps or config["lr_decay_iters"]
    torch.manual_seed(config["seed"] + rank)  # dropout differs between processes
    optimizer = make_optimizer(model, config, device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype_name == "float16")
    derived = {"n_params": n_params, "n_params_non_embedding": n_params_ne, "flops_per_token": flops_per_token,
               "tokens_per_step": tokens_per_step, "total_steps": total_steps, "world_size": world_size,
               "micro_batch_size": micro_batch, "gradient_accumulation_steps_per_process": accum,
               "device": device, "dtype": dtype_name,
               "compile": use_compile, "vocab_size": meta["vocab_size"], "torch": torch.__version__,
               "git_sha": git_sha()}
    columns = results.METRICS_COLUMNS + (results.TASK_COLUMNS if rows else [])

    # ---- run folder: fresh, resumed, or already finished
    folder = run_folder(config)
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "best_val_loss": None, "evals_since_best": 0,
             "step_val_acc_99": None, "last_row_step": None, "train_loss_sum": 0.0, "train_loss_steps": 0,
             "train_acc_sum": 0.0}
    decision = None  # 'finished', 'resume', 'fresh', or an error message
    if master:
        try:
            decision = prepare_run_folder(folder, config)
        except UserError as e:
            decision = f"error: {e}"
    if ddp:  # every process follows rank 0's decision (and its error, instead of waiting for it forever)
        shared = [decision]
        dist.broadcast_object_list(shared, src=0, group=cpu_group)
        decision = shared[0]
    if decision.startswith("error: "):
        raise UserError(decision[len("error: "):])
    if decision == "finished":
        return "finished_before"
    ckpt = load_checkpoint(folder) if decision == "resume" else None
    if decision == "resume" and ckpt is None:
        raise UserError(f"the checkpoint in {folder} disappeared while starting; run the command again")
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["state"])
        rng = ckpt["rng"][rank] if rank < len(ckpt["rng"]) else ckpt["rng"][0]
        restore_rng(rng, batches)
        pending = ckpt.get("pending")  # absent from older checkpoints: their "state" holds rank 0's sums
        if pending:  # this process's sums; their mean on every process if the number of processes changed
            state.update(pending[rank] if len(pending) == world_size else
                         {k: sum(p[k] for p in pending) / len(pending) for k in pending[0]})
        if master:
            print(f"resuming {folder} from step {state['step']}")
    if master:
        results.write_json(os.path.join(folder, "config.json"), {**config, "derived": derived})
        metrics_file = results.open_metrics(os.path.join(folder, "metrics.csv"), columns,
                                            keep_through_step=state["last_row_step"] if ckpt else None)
    wandb_run = start_wandb(config, derived, folder) if master and config["wandb_log"] else None

    # ---- wrap for speed and for DDP (the raw model is what gets saved and evaluated)
    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[local_rank] if device_type == "cuda" else None)
    peak = device_peak_flops(config, device_type, dtype_name) if master else None

    def vote(*flags):
        """True where any process raised the flag (a collective under DDP, so all agree on when to stop)."""
        if not ddp:
            return flags
        t = torch.tensor([float(f) for f in flags])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=cpu_group)
        return tuple(bool(v) for v in t.tolist())

    def to_device(t):
        if device_type == "cuda":
            return t.pin_memory().to(device, non_blocking=True)
        return t.to(device)

    @torch.no_grad()
    def evaluate():
        """Mean loss (and accuracy on task rows) over the fixed validation batches, shared out between
        processes and summed, so it does not depend on the number of processes."""
        raw_model.eval()
        sums = torch.zeros(3, dtype=torch.float64)  # loss x targets, correct, targets
        for i, (x, y) in enumerate(val_batches):
            if i % world_size != rank:
                continue
            x, y = x.to(device), y.to(device)
            with autocast:
                logits, loss = raw_model(x, y)
            n = (y != -1).sum()
            sums[0] += float(loss) * float(n)
            sums[2] += float(n)
            if rows:
                sums[1] += float(((logits.argmax(-1) == y) & (y != -1)).sum())
        if ddp:
            dist.all_reduce(sums, group=cpu_group)
        raw_model.train()
        return sums[0].item() / sums[2].item(), (sums[1].item() / sums[2].item() if rows else None)

    def checkpoint(rng_state):
        # every process's RNG states, and its loss sums since the last progress line (they live on its device
        # and differ between processes until the next all-reduce)
        mine = (rng_state, {"pending_loss": loss_acc.item(), "pending_acc": acc_acc.item()})
        per_process = [mine]
        if ddp:
            per_process = [None] * world_size
            dist.all_gather_object(per_process, mine, group=cpu_group)
        if master:
            save_checkpoint(folder, {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scaler": scaler.state_dict(),
                                     "state": {**state, "steps_since_log": steps_since_log},
                                     "rng": [r for r, _ in per_process], "pending": [p for _, p in per_process],
                                     "config": config})

    def write_row(val_loss, val_acc, lr):
        train_loss = state["train_loss_sum"] / state["train_loss_steps"] if state["train_loss_steps"] else \
            float("nan")
        row = {"step": state["step"], "tokens": state["tokens"], "flops": float(state["tokens"] * flops_per_token),
               "train_loss": train_loss, "val_loss": val_loss, "lr": lr, "elapsed_s": round(state["elapsed_s"], 3)}
        if rows:
            row["train_acc"] = state["train_acc_sum"] / state["train_loss_steps"] if state["train_loss_steps"] \
                else float("nan")
            row["val_acc"] = val_acc
        state["train_loss_sum"], state["train_loss_steps"], state["train_acc_sum"] = 0.0, 0, 0.0
        state["last_row_step"] = state["step"]
        if master:
            results.append_metrics(metrics_file, columns, row)
            if wandb_run is not None:
                wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        return row

    def evaluation_row(lr):
        """Evaluate, write the row, update early-stopping state; returns a status if the run should end."""
        val_loss, val_acc = evaluate()
        write_row(val_loss, val_acc, lr)
        if not math.isfinite(val_loss):
            return "diverged"
        if val_acc is not None and val_acc >= 0.99 and state["step_val_acc_99"] is None:
            state["step_val_acc_99"] = state["step"]
        best = state["best_val_loss"]
        if best is None or val_loss < best - config["early_stopping_min_delta"]:
            state["evals_since_best"] = 0
        else:
            state["evals_since_best"] += 1
        state["best_val_loss"] = val_loss if best is None else min(best, val_loss)
        if master:
            acc = f" | val acc {val_acc:.4f}" if val_acc is not None else ""
            print(f"step {state['step']}: val loss {val_loss:.4f}{acc}", flush=True)
        if config["early_stopping_patience"] and state["evals_since_best"] >= config["early_stopping_patience"]:
            return "early_stopped"
        if config["target_val_acc"] and val_acc is not None and val_acc >= config["target_val_acc"]:
            return "early_stopped"
        return None

    # ---- the loop
    if master:
        size = f"{n_params / 1e6:.2f}M params ({n_params_ne / 1e6:.2f}M non-embedding)"
        print(f"{config['run_name']}: {config['arch']} {size}, {flops_per_token / 1e6:.2f} MFLOPs/token, "
              f"{tokens_per_step} tokens/step, {total_steps or '?'} steps; {device} {dtype_name}"
              f"{' compiled' if use_compile else ''}, {world_size} process(es), {torch.get_num_threads()} "
              f"threads; results in {folder}", flush=True)
    status = None
    # training loss summed on the device, read only at log steps (no host-device syncs in between)
    loss_acc = torch.tensor(state.pop("pending_loss", 0.0), device=device)
    acc_acc = torch.tensor(state.pop("pending_acc", 0.0), device=device)
    steps_since_log = state.pop("steps_since_log", 0)
    t_log, tokens_log = time.perf_counter(), state["tokens"]
    t_last = time.perf_counter()
    boundary_rng = capture_rng(batches)
    lr = lr_at(state["step"], config, schedule_steps) if schedule_steps else config["learning_rate"]
    while status is None:
        # budget checks happen between optimizer steps
        if total_steps is not None and state["step"] >= total_steps:
            status = "completed"
            break
        interrupted, out_of_time = vote(stop.received is not None,
                                        config["time_limit_s"] and state["elapsed_s"] >= config["time_limit_s"])
        if out_of_time:
            status = "time_limit"
            break
        if interrupted:
            status = "interrupted"
            break
        lr = lr_at(state["step"], config, schedule_steps) if schedule_steps else config["learning_rate"]
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        x_all, y_all = batches.next(micro_batch * accum * world_size)
        mine = slice(rank * micro_batch * accum, (rank + 1) * micro_batch * accum)
        x_all, y_all = x_all[mine], y_all[mine]
        step_loss, step_acc = 0.0, 0.0  # join the running sums only when the step completes
        for micro in range(accum):
            if micro and vote(stop.received is not None)[0]:
                break  # the partial step is dropped; the checkpoint holds the state before it
            b = slice(micro * micro_batch, (micro + 1) * micro_batch)
            x, y = to_device(x_all[b]), to_device(y_all[b])
            sync = ddp and micro < accum - 1
            with (model.no_sync() if sync else nullcontext()):
                with autocast:
                    logits, loss = model(x, y)
                step_loss = step_loss + loss.detach()
                if rows:
                    step_acc = step_acc + ((logits.detach().argmax(-1) == y) & (y != -1)).sum() / (y != -1).sum()
                scaler.scale(loss / accum).backward()
        else:
            if config["grad_clip"]:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config["grad_clip"], foreach=True)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            loss_acc += step_loss
            acc_acc += step_acc
            state["step"] += 1
            state["tokens"] += tokens_per_step
            steps_since_log += 1
            now = time.perf_counter()
            state["elapsed_s"] += now - t_last
            t_last = now
            boundary_rng = capture_rng(batches)
            is_eval = state["step"] % config["eval_interval"] == 0 or state["step"] == total_steps
            if state["step"] % config["log_interval"] == 0 or is_eval:
                # the only host-device sync of the hot loop: once per log interval
                sums = torch.stack([loss_acc, acc_acc]).double().cpu() / accum
                if ddp:
                    dist.all_reduce(sums, group=cpu_group)
                    sums /= world_size
                loss_acc.zero_()
                acc_acc.zero_()
                state["train_loss_sum"] += sums[0].item()
                state["train_acc_sum"] += sums[1].item()
                state["train_loss_steps"] += steps_since_log
                mean_loss = sums[0].item() / steps_since_log
                steps_since_log = 0
                if not math.isfinite(mean_loss):
                    write_row(float("nan"), float("nan") if rows else None, lr)
                    status = "diverged"
                    break
                if master and state["step"] % config["log_interval"] == 0:
                    dt = time.perf_counter() - t_log
                    tok_s = (state["tokens"] - tokens_log) / dt
                    mfu = f" | MFU {100 * tok_s * flops_per_token / (peak * world_size):.1f}%" if peak else ""
                    seconds_per_step = dt * tokens_per_step / (state["tokens"] - tokens_log)
                    eta = f" | ETA {format_duration((total_steps - state['step']) * seconds_per_step)}" \
                        if total_steps else ""
                    print(f"step {state['step']}/{total_steps or '?'} | loss {mean_loss:.4f} | lr {lr:.2e} | "
                          f"{tok_s / 1e3:.1f}k tok/s{mfu}{eta}", flush=True)
                t_log, tokens_log = time.perf_counter(), state["tokens"]
            ckpt_due = status is None and (state["step"] % config["ckpt_interval"] == 0 if config["ckpt_interval"]
                                           else is_eval)
            if is_eval:
                status = evaluation_row(lr)
            if ckpt_due and status is None:
                checkpoint(boundary_rng)
            if is_eval or ckpt_due:  # evaluation and checkpoints are not training time
                t_last = t_log = time.perf_counter()
            continue
        # reached only when the micro-step loop broke: a signal arrived in the middle of a step
        status = "interrupted"

    # ---- the end: a last row, final.json, and the exit status
    if status in ("completed", "time_limit") and state["last_row_step"] != state["step"]:
        end_status = evaluation_row(lr)
        status = "diverged" if end_status == "diverged" else status
    if status == "interrupted" or (config["keep_ckpt"] and status != "diverged"):
        checkpoint(boundary_rng)  # collective under DDP: every process gets here with the same status
    if master:
        metrics_file.close()
        final = {"status": status, "steps": state["step"], "tokens": state["tokens"],
                 "flops": float(state["tokens"] * flops_per_token), "elapsed_s": round(state["elapsed_s"], 3),
                 "final_val_loss": None, "best_val_loss": results.finite_or_none(state["best_val_loss"]),
                 "step_val_acc_99": state["step_val_acc_99"]}
        last = results.read_metrics(os.path.join(folder, "metrics.csv"))[0]
        if last:
            final["final_val_loss"] = results.finite_or_none(last[-1]["val_loss"])
        results.write_json(os.path.join(folder, "final.json"), final)
        if status in results.FINISHED and not config["keep_ckpt"]:
            for name in ("ckpt.pt", "ckpt.prev.pt"):
                if os.path.exists(os.path.join(folder, name)):
                    os.remove(os.path.join(folder, name))
        if wandb_run is not None:
            wandb_run.summary.update(final)
            wandb_run.finish()
        print(f"{status}: {state['step']} steps, {state['tokens']:,} tokens, final val loss "
              f"{final['final_val_loss']}; results in {folder}", flush=True)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return status


def prepare_run_folder(folder, config):
    """'fresh', 'resume' (a readable checkpoint is there) or 'finished'. Refuses to resume under a different
    config."""
    final, _ = results.read_json(os.path.join(folder, "final.json"))
    if config["overwrite"] and os.path.isdir(folder):
        for name in ("final.json", "metrics.csv", "config.json", "ckpt.pt", "ckpt.prev.pt"):
            if os.path.exists(os.path.join(folder, name)):
                os.remove(os.path.join(folder, name))
        final = None
    saved, _ = results.read_json(os.path.join(folder, "config.json"))
    if isinstance(saved, dict):
        differing = config_differences(saved, config)
        if differing:
            shown = ", ".join(f"{k}: {saved.get(k, '<absent>')!r} -> {config.get(k, '<absent>')!r}"
                              for k in differing[:6])
            raise UserError(f"{folder} holds a run with a different config ({shown}); use another run_name or "
                            f"--overwrite=True to start over")
    if isinstance(final, dict) and final.get("status") in results.FINISHED:
        print(f"already {final['status']}: {folder} (final val loss {final.get('final_val_loss')}); "
              f"--overwrite=True trains it again")
        return "finished"
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # left by a run killed in an atomic write (ckpt.pt.tmp<pid>, ...): never read
        if ".tmp" in name and name.rsplit(".tmp", 1)[1].isdigit():
            os.remove(os.path.join(folder, name))
    ckpt = load_checkpoint(folder)
    if ckpt is None and os.path.exists(os.path.join(folder, "metrics.csv")):
        print(f"warning: {folder} has no usable checkpoint; starting the run from scratch", file=sys.stderr)
    if os.path.exists(os.path.join(folder, "final.json")):
        os.remove(os.path.join(folder, "final.json"))  # a run in progress has no final.json
    return "resume" if ckpt is not None else "fresh"


def start_wandb(config, derived, folder):
    import wandb
    return wandb.init(project=config["wandb_project"], name=f"{config['study']}/{config['run_name']}",
                      config={**config, "derived": derived}, dir=folder, resume="allow",
                      id=f"{config['study']}-{config['run_name']}"[:128])


def main(argv):
    if "--help" in argv or "-h" in argv:
        print(__doc__.strip() + "\n\nkeys (default, meaning):\n" + describe_keys(__file__, DEFAULTS))
        return 0
    try:
        config = resolve_config(argv)
        status = train(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # disk full, over quota, or over the file-size limit: earlier files are intact (every write is atomic or
        # append-only) and the last checkpoint is kept, so the same command resumes once there is room
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            print(f"error: {e.strerror} while writing {e.filename or run_folder(config)}; make room (free disk "
                  f"space, raise the quota or file-size limit) and run the same command again to resume",
                  file=sys.stderr)
            return 2
        raise
    return EXIT_INTERRUPTED if status == "interrupted" else 0


if __name__ == "__main__":
    exit_code = main(sys.argv[1:])
    if under_torchrun():
        # leave without the interpreter's teardown: DDP keeps the gloo process group and its threads alive past
        # destroy_process_group, and destroying them at exit aborted 2 of 81 finished runs ("terminate called
        # without an active exception"), which torchrun reports as failed runs
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)
