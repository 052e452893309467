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
import copy
import errno
import math
import os
import random
import re
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
run_name = ""  # '' = {label}_{n_embd}d_lr{learning_rate}_s{seed}, the LR as 1.0e-03 (more digits when needed)
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
head_bias = False  # a bias on the untied output head (grokking templates have one)
answer_head = False  # task datasets: the head scores only the answer tokens, not the whole vocabulary
activation = "gelu"  # relu | gelu | silu | glu | swiglu | geglu
mlp_ratio = 4.0  # ungated MLP hidden width / n_embd
glu_match_params = True  # gated MLPs get 2/3 of the hidden width so parameters match the ungated MLP
pos_encoding = "learned"  # none | sinusoidal | learned | rotary
rope_base = 10000.0  # rotary base frequency
norm = "layernorm"  # layernorm | rmsnorm
norm_position = "pre"  # pre | post (the 2017 post-LN)
final_norm = "auto"  # a norm before the head: auto (pre-LN yes, post-LN no) | True | False
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
mup_base_head_dim = 0  # the base model's head size; 0 = mup_base_width // n_head (widths keep the heads; presets don't)
# optimizer
optimizer = "adamw"  # adamw (decoupled decay) | adam (L2 decay in the gradient) | sgd (heavy-ball momentum)
learning_rate = 1e-3  # peak learning rate of the base parameter group
weight_decay = 0.1  # on matrices only (no decay on biases, norms, embeddings)
decay_embeddings = False  # also decay the embedding tables (grokking setups decay every matrix)
decay_vectors = False  # also decay biases and norm gains (with decay_embeddings: every parameter, torch's default)
beta1 = 0.9  # Adam beta1
beta2 = 0.95  # Adam beta2
eps = 1e-8  # Adam epsilon
momentum = 0.9  # SGD momentum
nesterov = False  # SGD Nesterov momentum
grad_clip = 1.0  # clip the global gradient norm to this; 0 = off
layer_lr_mults = None  # per-layer LR multipliers: [embed, lower blocks, upper blocks + head] or one per layer
layer_lr_ramp = 1.0  # geometric ramp: layer i (0 = embeddings) gets ramp**i; composes with the above
# learning-rate schedule
lr_schedule = "cosine"  # constant | linear | cosine | inverse_sqrt | wsd, each after a linear warmup
warmup_iters = 0  # warmup steps; 0 = warmup_frac of the run's steps (wsd: 0 = none; warmup_frac is refused)
warmup_frac = 0.05  # warmup as a fraction of the run's total steps
lr_decay_iters = 0  # steps over which linear/cosine decay; 0 = the run's total steps
min_lr = None  # floor of linear/cosine decay and where wsd's decay ends; None = learning_rate / 10
decay_frac = 0.2  # wsd: the final decay is the last round(decay_frac x total steps) steps (warmup-stable-decay)
decay_shape = "linear"  # wsd's decay from learning_rate to min_lr: linear | 1-sqrt (Hagele et al. 2024)
cooldowns = None  # wsd: budgets [S1, S2, ...] (optimizer steps < the run's) annealed by branches -> anneal.csv
# batch and budget (the first budget reached ends training; 0 = not set)
batch_size = 16  # sequences per micro-batch per process
gradient_accumulation_steps = 1  # micro-batches per optimizer step, all processes together (as nanoGPT)
target_effective_batch_size = 0  # sequences per optimizer step; set: CUDA fits the micro-batch to memory
rows_with_replacement = False  # task datasets: batches draw rows uniformly with replacement, not epoch by epoch
max_iters = -1  # optimizer steps; -1 = 2000 unless max_tokens, max_flops or tokens_per_param is set; 0 = none
max_tokens = 0  # training tokens
max_flops = 0.0  # training FLOPs (flops_per_token x tokens)
tokens_per_param = 0.0  # tokens = this x non-embedding parameters (Chinchilla: 20)
time_limit_s = 0.0  # wall-clock seconds of training (ends with status time_limit)
# evaluation, logging, checkpoints
eval_interval = 250  # steps between evaluations (each writes a metrics.csv row)
eval_iters = 20  # fixed validation batches per evaluation (task datasets: the whole validation set)
eval_batch_size = 32  # sequences per validation batch; fixed, so the validation set ignores batch_size
eval_rows = 0  # task datasets: evaluate on a fixed random subset of this many validation rows; 0 = all rows
log_interval = 50  # steps between progress lines
ckpt_interval = 0  # steps between checkpoints; 0 = at every evaluation
early_stopping_patience = 0  # evaluations without improvement before stopping; 0 = off
early_stopping_min_delta = 0.0  # improvement of val loss that counts
target_val_acc = 0.0  # task datasets: stop (status early_stopped) once val accuracy reaches this; 0 = off
# system
device = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:1 | mps
dtype = "auto"  # auto | float32 | bfloat16 | float16 (autocast; float16 uses a GradScaler)
compile = "auto"  # torch.compile: auto (on for CUDA, off for CPU) | True | False
fused_loss = True  # head + cross-entropy a chunk of rows at a time, never the full logits (same results to rounding)
num_threads = 0  # torch CPU threads; 0 = torch's default
seed = 1337  # seeds model init, data order and dropout
peak_flops = 0.0  # device peak FLOP/s for MFU; 0 = measured (CPU) or looked up (GPU)
ddp_timeout_s = 300.0  # a collective waiting longer than this (a dead rank) aborts the run
lock_wait_s = -1.0  # seconds to wait for a run folder another process owns (then exit 75); -1: 180 if requeued, else 0
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
    "lr_schedule": ("constant", "linear", "cosine", "inverse_sqrt", "wsd"),
    "decay_shape": ("linear", "1-sqrt"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "compile": ("auto", True, False),
    "final_norm": ("auto", True, False),
}
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: run the same command again to resume
DEFAULT_MAX_ITERS = 2000  # max_iters=-1 (the default) means this when no other budget is set


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
    if c["max_iters"] == -1:  # the default step budget yields to any budget the user set (time_limit_s is a cap)
        c["max_iters"] = 0 if c["max_tokens"] or c["max_flops"] or c["tokens_per_param"] else DEFAULT_MAX_ITERS
    nonnegative = ("max_iters", "max_tokens", "max_flops", "tokens_per_param", "time_limit_s", "warmup_iters",
                   "lr_decay_iters", "ckpt_interval", "early_stopping_patience", "grad_clip", "weight_decay",
                   "num_threads", "peak_flops", "lstm_hidden", "lstm_proj", "target_effective_batch_size", "eps",
                   "momentum", "init_std", "lstm_init_range", "eval_rows")
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
        if c["head_bias"] and c["tie_embeddings"]:
            raise UserError("head_bias=True needs an untied head: set tie_embeddings=False")
        if c["use_mup"] and not c["mup_base_head_dim"] and c["mup_base_width"] % c["n_head"]:
            raise UserError(f"mup_base_width={c['mup_base_width']} is not divisible by n_head={c['n_head']}; set "
                            f"mup_base_head_dim to the base model's head size")
    else:
        if c["use_mup"]:
            raise UserError("use_mup is implemented for arch='transformer' only (see README, muP)")
        for key in ("answer_head", "head_bias"):
            if c[key]:
                raise UserError(f"{key} is implemented for arch='transformer' only; leave it False for the LSTM")
        out_dim = c["lstm_proj"] or c["lstm_hidden"] or c["n_embd"]
        if c["tie_embeddings"] and out_dim != c["n_embd"]:
            raise UserError(f"tie_embeddings needs the LSTM output width ({out_dim}) to equal n_embd "
                            f"({c['n_embd']}): set tie_embeddings=False or matching widths")
        if c["lstm_proj"] and c["lstm_proj"] >= (c["lstm_hidden"] or c["n_embd"]):
            raise UserError("lstm_proj must be smaller than the LSTM width (lstm_hidden or n_embd)")
    if c["use_mup"] and c["mup_base_width"] <= 0:
        raise UserError("mup_base_width must be positive")
    if c["mup_base_head_dim"] < 0:
        raise UserError(f"mup_base_head_dim must be >= 0, got {c['mup_base_head_dim']}")
    if c["layer_lr_mults"] is not None:
        mults = c["layer_lr_mults"]
        if not isinstance(mults, (list, tuple)) or len(mults) not in (3, c["n_layer"] + 2) or not all(
                isinstance(m, (int, float)) and 0 <= m < math.inf for m in mults):
            raise UserError(f"layer_lr_mults must be a list of 3 numbers [embeddings, lower blocks, upper blocks"
                            f" + head] or n_layer + 2 = {c['n_layer'] + 2} numbers, got {mults!r}")
    if not c["layer_lr_ramp"] > 0:
        raise UserError("layer_lr_ramp must be positive")
    check_schedule(c)
    if not (c["max_iters"] or c["max_tokens"] or c["max_flops"] or c["tokens_per_param"] or c["time_limit_s"]):
        raise UserError("no training budget: set one of max_iters, max_tokens, max_flops, tokens_per_param, "
                        "time_limit_s")
    if not c["label"]:
        c["label"] = os.path.splitext(os.path.basename(config_files[0]))[0] if config_files else "baseline"
    if not c["run_name"]:
        c["run_name"] = f"{c['label']}_{c['n_embd']}d_lr{lr_text(c['learning_rate'])}_s{c['seed']}"
    for key in ("study", "run_name"):
        if not c[key] or "/" in c[key] or "\0" in c[key] or c[key] in (".", "..") or \
                len(c[key].encode(errors="surrogatepass")) > 255:
            raise UserError(f"{key}={c[key]!r} must be a plain folder name (at most 255 bytes)")
    c["config_files"] = config_files  # recorded in config.json for provenance
    return c


def check_schedule(c):
    """The wsd schedule and its cooldown budgets (the checks that need no data; run_training checks the budgets
    against the run's length)."""
    wsd = c["lr_schedule"] == "wsd"
    if not 0 < c["decay_frac"] <= 1:
        raise UserError(f"decay_frac must be in (0, 1], got {c['decay_frac']}")
    if wsd and not c["warmup_iters"] and c["warmup_frac"]:
        raise UserError("lr_schedule=wsd needs its warmup fixed in steps, so that a cooldown branch equals a "
                        "standalone run: set warmup_iters=N (or warmup_frac=0 for no warmup)")
    if wsd and c["lr_decay_iters"]:
        raise UserError("lr_decay_iters is for linear/cosine; wsd decays over the last decay_frac of the run")
    if c["cooldowns"] is None:
        return
    budgets = c["cooldowns"]
    if not isinstance(budgets, (list, tuple)) or not budgets or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 1 and float(s).is_integer()
            for s in budgets) or len(set(budgets)) != len(budgets):
        raise UserError(f"cooldowns must be a list of distinct positive step counts, e.g. [500, 1000], got "
                        f"{budgets!r}")
    if not wsd:
        raise UserError(f"cooldowns needs lr_schedule=wsd (got {c['lr_schedule']}): only wsd has a stable phase "
                        f"to branch from")
    if c["early_stopping_patience"] or c["target_val_acc"]:
        raise UserError("cooldowns cannot be combined with early_stopping_patience or target_val_acc: a run that "
                        "stops early never reaches its branch points")
    c["cooldowns"] = sorted(int(s) for s in budgets)
    for budget in c["cooldowns"]:
        if wsd_decay_start(budget, c) == budget:
            raise UserError(f"cooldown {budget} has no decay steps (round(decay_frac x {budget}) = 0): use larger "
                            f"budgets or a larger decay_frac")
        if wsd_decay_start(budget, c) < c["warmup_iters"]:
            raise UserError(f"cooldown {budget} would start its decay at step {wsd_decay_start(budget, c)}, inside "
                            f"the warmup (warmup_iters={c['warmup_iters']}): use larger budgets or a shorter warmup")


def lr_text(lr):
    """The LR in a run name: 2 significant digits (1.0e-03) unless more are needed to give it back exactly
    (0.128 -> 1.28e-01, not 1.3e-01, which 0.125 would share)."""
    for digits in range(1, 7):
        if float(f"{lr:.{digits}e}") == lr:
            break
    return f"{lr:.{digits}e}"


def run_folder(config):
    return os.path.join(config["results_dir"], config["study"], config["run_name"])


# ------------------------------------------------------------------------------------------- model
def build_model(config, vocab_size, head_vocab_size=0):
    """The model of config; head_vocab_size (Transformer only): score token ids 0..head_vocab_size-1 only."""
    if config["arch"] == "lstm":
        from lstm import LSTMConfig, LSTMLM
        keys = LSTMConfig.__dataclass_fields__
        return LSTMLM(LSTMConfig(vocab_size=vocab_size, **{k: config[k] for k in keys if k in config}))
    from model import GPT, GPTConfig
    keys = GPTConfig.__dataclass_fields__
    return GPT(GPTConfig(vocab_size=vocab_size, head_vocab_size=head_vocab_size,
                         **{k: config[k] for k in keys if k in config}))


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
    Weight decay on matrices (embeddings with decay_embeddings, biases and norm gains with decay_vectors)."""
    from model import mup_lr_mult, mup_wd_mult
    width_mult = config["n_embd"] / config["mup_base_width"] if config["use_mup"] else 1.0
    groups = {}
    for _, p, kind, layer in model.param_info():
        decayed = ("hidden", "readout") + ("embedding",) * config["decay_embeddings"] + \
            ("vector",) * config["decay_vectors"]
        # muP: lr x weight_decay stays width-independent (AdamW's per-step decay of the hidden matrices)
        decay = config["weight_decay"] * mup_wd_mult(kind, config["optimizer"], width_mult) if kind in decayed \
            else 0.0
        mult = mup_lr_mult(kind, config["optimizer"], width_mult) * layer_lr_mult(config, layer, config["n_layer"])
        groups.setdefault((decay, mult), []).append(p)
    return [{"params": ps, "weight_decay": d, "lr_mult": m} for (d, m), ps in groups.items()]


def make_optimizer(model, config, device_type):
    groups = optimizer_groups(model, config)
    lr = config["learning_rate"]
    if config["optimizer"] == "sgd":
        # fused on CUDA: a GradScaler steps a fused optimizer without reading found_inf on the host (.item(), a
        # sync every step under fp16); the CPU keeps foreach, and with it the numbers of earlier runs
        fused = device_type == "cuda"
        return torch.optim.SGD(groups, lr=lr, momentum=config["momentum"], nesterov=config["nesterov"],
                               foreach=not fused, fused=fused or None)
    cls = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
    # fused kernels exist for CPU and CUDA; they cut the per-step Python overhead that dominates small models
    fused = device_type in ("cpu", "cuda")
    return cls(groups, lr=lr, betas=(config["beta1"], config["beta2"]), eps=config["eps"], fused=fused)


# ------------------------------------------------------------------------------------------- schedule
def wsd_decay_start(total_steps, config):
    """wsd: the first step of the decay (the last round(decay_frac x total_steps) steps decay). The cooldown
    branch for a budget S leaves the stable phase at wsd_decay_start(S), exactly where a standalone S-step run
    starts its decay."""
    return total_steps - round(config["decay_frac"] * total_steps)


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
    if schedule == "wsd":  # constant until the decay start, then down to min_lr at the last step
        start = wsd_decay_start(total_steps, config)
        progress = min(1.0, (n - start) / max(1, total_steps - start)) if n > start else 0.0
        shape = progress if config["decay_shape"] == "linear" else math.sqrt(progress)
        return min_lr + (1 - shape) * (lr - min_lr)
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
    """Whole rows of a task dataset, drawn without replacement within an epoch (reshuffled every epoch), or
    with replacement=True uniformly with replacement in every draw. Targets are -1 except at the supervised
    positions."""

    def __init__(self, rows, supervised_positions, seed, replacement=False):
        self.rows, self.replacement = rows, replacement
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
        index = self.rng.integers(0, len(self.rows), size=n_sequences) if self.replacement else \
            self.epoch_index(n_sequences)
        rows = self.rows[index].astype(np.int64)
        x, y = rows[:, :-1], rows[:, 1:].copy()
        y[:, self.mask] = -1
        return torch.from_numpy(x), torch.from_numpy(y)

    def epoch_index(self, n_sequences):
        """The next n_sequences rows in the epoch's order; an epoch that runs out reshuffles."""
        picked = []
        while n_sequences > 0:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.permutation(len(self.rows)), 0
            take = self.order[self.pos:self.pos + n_sequences]
            picked.append(take)
            self.pos += len(take)
            n_sequences -= len(take)
        return np.concatenate(picked)

    def state(self):
        return {"rng": self.rng.bit_generator.state, "order": self.order, "pos": self.pos}

    def load_state(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.order, self.pos = state["order"], state["pos"]


def validation_batches(meta, val, config):
    """The fixed validation set, identical for every run, seed, batch size and variant with this dataset and
    block_size: eval_iters batches of eval_batch_size windows from a constant generator (token datasets), or
    every row (task datasets; eval_rows of them, a random subset drawn by a constant generator)."""
    if meta["kind"] == "rows":
        rows = RowBatches(val, meta["supervised_positions"], 0)
        index = np.arange(len(val))
        if 0 < config["eval_rows"] < len(val):
            index = np.sort(np.random.default_rng(20240101).choice(len(val), config["eval_rows"], replace=False))
        size = max(config["eval_batch_size"], 256)
        return [rows.batch(index[i:i + size]) for i in range(0, len(index), size)]
    windows = TokenBatches(val, config["block_size"], seed=20240101)
    return [windows.next(config["eval_batch_size"]) for _ in range(config["eval_iters"])]


def answer_vocab_size(data, name):
    """K for answer_head=True: how many tokens occur at a task's supervised positions (its answers), which must
    be the token ids 0..K-1 (true of modular and permutation, whose answers come first in the vocabulary)."""
    meta = data["meta"]
    if meta["kind"] != "rows":
        raise UserError(f"answer_head=True needs a task dataset; '{name}' is a token dataset: set answer_head=False")
    columns = meta["supervised_positions"]
    answers = np.unique(np.concatenate([np.unique(data[split][:, columns]) for split in ("train", "val")]))
    if answers[-1] != len(answers) - 1:  # sorted and distinct: they are 0..K-1 exactly when the last is K-1
        raise UserError(f"answer_head=True needs the answers of '{name}' to be the first token ids 0..K-1, but "
                        f"they are {len(answers)} ids from {answers[0]} to {answers[-1]}: set answer_head=False")
    return len(answers)


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


def setup_device(config, local_rank=None):
    """The device this process trains on; a GPU is made the current CUDA device, so that the batch probe and the
    memory, name and capability queries (which default to the current device) ask about it and not GPU 0.
    Under torchrun (local_rank given) each process takes the GPU of its local rank."""
    device = pick_device(config)
    if not device.startswith("cuda"):
        return device
    index = local_rank if local_rank is not None else torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index >= torch.cuda.device_count():
        raise UserError(f"local rank {index} has no GPU: this node shows {torch.cuda.device_count()} CUDA "
                        f"device(s); start at most that many processes per node (--nproc_per_node)")
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def cpu_has_native_bf16():
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_native_bf16(device=None):
    """bf16 in hardware: compute capability 8.0 (Ampere) and later, and ROCm. Not torch.cuda.is_bf16_supported(),
    which by default (including_emulation=True) also says yes on V100 and T4, where bf16 is emulated: no tensor
    cores, SDPA's math kernel, and inductor skips the frame."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device)[0] >= 8


def pick_dtype(config, device_type, device=None):
    """autocast dtype. CUDA: bf16 where the GPU has it in hardware (capability >= 8.0), else fp16 with a
    GradScaler (V100, T4); the LSTM stays fp32 (TF32 matmuls on Ampere and later), as on CPU, and is refused bf16:
    cuDNN's autocast runs RNNs in fp16 whatever the autocast dtype, with no GradScaler. CPU: bf16 autocast for
    Transformers of width >= 64 where the CPU has native bf16 matmul (measured on this project's CPU, bf16 over
    fp32 steps: 1.1x at width 32, 1.4-1.7x at 64, 1.9x at 128 and 256; the same validation loss at 64, 128 and 256:
    README "Performance"), fp32 elsewhere. The LSTM stays fp32: bf16 runs it 1.3-1.6x faster here, but reached
    the target loss with 2% more compute [0.0, 4%] over 3 seeds, a bias this toolkit's comparisons must not carry
    (--dtype=bfloat16 opts in on CPU)."""
    if config["dtype"] != "auto":
        if device_type == "cuda" and config["arch"] == "lstm" and config["dtype"] == "bfloat16":
            raise UserError("dtype=bfloat16 with arch='lstm' on CUDA would run the LSTM in float16 without loss "
                            "scaling (cuDNN's autocast runs RNNs in fp16): use dtype=float16 (loss-scaled), "
                            "float32 or auto")
        return config["dtype"]
    if device_type == "cuda":
        if config["arch"] == "lstm":
            return "float32"
        return "bfloat16" if cuda_has_native_bf16(device) else "float16"
    if device_type == "cpu" and config["arch"] == "transformer" and config["n_embd"] >= 64 \
            and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def pick_compile(config, device_type):
    """torch.compile: auto is on for the Transformer on CUDA. Not on CPU (bf16 got slower there: README
    "Performance"), and not for the LSTM: dynamo graph-breaks on nn.LSTM, whose recurrence is one cuDNN kernel
    already, so it would compile only the embedding and the head, for a compile time longer than short runs."""
    if config["compile"] != "auto":
        return config["compile"]
    return device_type == "cuda" and config["arch"] == "transformer"


# Dense (no sparsity) peaks from NVIDIA's datasheets and architecture whitepapers, FLOP/s: (pattern matched against
# the device name, bf16/fp16 tensor cores, TF32 tensor cores (None: the GPU has none), plain fp32). Names as
# torch.cuda.get_device_name() gives them ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "Tesla V100-SXM2-16GB",
# "NVIDIA L40S"); first match wins, so the specific forms come first, and \b keeps "L4" from matching "L40S".
GPU_PEAKS = [
    (r"\bB200\b", 2250e12, 1100e12, 80e12),
    (r"\bH200\b.*\bNVL\b", 835e12, 418e12, 60e12),
    (r"\bH200\b", 989e12, 495e12, 67e12),  # SXM
    (r"\bH100\b.*\bNVL\b", 835e12, 418e12, 60e12),
    (r"\bH100\b.*\bPCIE\b", 756e12, 378e12, 51e12),
    (r"\b(H100|GH200)\b", 989e12, 495e12, 67e12),  # SXM ("H100 80GB HBM3"), GH200
    (r"\bA100\b", 312e12, 156e12, 19.5e12),
    (r"\bA40\b", 149.7e12, 74.8e12, 37.4e12),
    (r"\bA30\b", 165e12, 82e12, 10.3e12),
    (r"\bA10G\b", 125e12, 62.5e12, 31.2e12),  # as AWS lists it: the A10's figures
    (r"\bA10\b", 125e12, 62.5e12, 31.2e12),
    (r"\bL40S\b", 362e12, 183e12, 91.6e12),
    (r"\bL40\b", 181e12, 90.5e12, 90.5e12),
    (r"\bL4\b", 121e12, 60e12, 30.3e12),
    (r"\bV100S\b", 130e12, None, 16.4e12),
    (r"\bV100\b.*\bPCIE\b", 112e12, None, 14e12),
    (r"\bV100\b", 125e12, None, 15.7e12),  # SXM2
    (r"\bT4\b", 65e12, None, 8.1e12),
    (r"\bRTX 4090\b", 165e12, 82.6e12, 82.6e12),  # GeForce: fp16/bf16 with fp32 accumulation
    (r"\bRTX 3090\b", 71e12, 35.6e12, 35.6e12),
    (r"\bRTX A6000\b", 155e12, 77.4e12, 38.7e12),
]


def gpu_peak_flops(name, dtype_name, tf32=True):
    """Peak FLOP/s of the GPU called `name` in the training dtype, or None for a GPU not in GPU_PEAKS. float32
    runs use the TF32 tensor cores where the GPU has them and tf32 is on (train.py turns it on); bf16 on a GPU
    without bf16 tensor cores is emulated at about the fp32 rate."""
    for pattern, half, tf32_peak, fp32 in GPU_PEAKS:
        if re.search(pattern, name, re.IGNORECASE):
            if dtype_name == "float32":
                return tf32_peak if tf32 and tf32_peak else fp32
            if dtype_name == "bfloat16" and tf32_peak is None:  # Volta, Turing: no bf16 units
                return fp32
            return half
    return None


def measure_cpu_peak(dtype_name, size=1024, seconds=0.3, windows=6):
    """Matmul throughput of this CPU in the training dtype, with the current thread count: the best of `windows`
    short windows, so that a process that loads the machine for part of the probe (a run starting beside this
    one) lowers it less. A load through the whole probe still lowers it; train.py then probes again when a log
    line's throughput exceeds it (MFU over 100% is the proof), and peak_flops pins it."""
    dt = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype_name, torch.float32)
    gen = torch.Generator().manual_seed(0)  # its own generator: the training RNG streams stay untouched
    a, b = torch.randn(size, size, generator=gen).to(dt), torch.randn(size, size, generator=gen).to(dt)
    a @ b  # warm-up
    best, start = 0.0, time.perf_counter()
    while not best or time.perf_counter() - start < seconds:  # a slow dtype (fp16 on CPU) gets fewer windows
        n, t0 = 0, time.perf_counter()
        while True:
            a @ b
            n += 1
            dt_s = time.perf_counter() - t0
            if dt_s >= seconds / windows:
                break
        best = max(best, 2 * size ** 3 * n / dt_s)
    return best


def device_peak_flops(config, device_type, dtype_name, device=None):
    if config["peak_flops"]:
        return config["peak_flops"]
    if device_type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype_name,
                              tf32=torch.backends.cuda.matmul.allow_tf32)
    if device_type == "cpu":
        return measure_cpu_peak(dtype_name)
    return None


DDP_COMM_BYTES = 1 << 30  # room for NCCL's buffers and DDP's bookkeeping under DDP (NCCL takes a few 100 MB)


def probe_peak_memory(model, micro, block_size, vocab_size, autocast):
    """Peak CUDA memory of one forward + backward of `micro` random sequences, or None on out-of-memory.
    Nothing of the probe outlives the call: its tensors, the graph, and (on OOM) the traceback's frames are
    locals here, and the caller collects and empties the cache before the next probe."""
    device = next(model.parameters()).device
    try:
        torch.cuda.reset_peak_memory_stats(device)
        idx = torch.randint(vocab_size, (micro, block_size), device=device)
        with autocast:
            _, loss = model(idx, idx)
        loss.backward()
        return torch.cuda.max_memory_allocated(device)
    except torch.cuda.OutOfMemoryError:
        return None
    finally:
        model.zero_grad(set_to_none=True)


def agree_on_min(value, group=None):
    """The smallest of every process's value under DDP (a collective: every process calls it), else value."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=group)
    return int(t.item())


def plan_batches(config, world_size, model, device_type, autocast, vocab_size, group=None):
    """(micro-batch size, micro-steps per process). Without target_effective_batch_size: batch_size and
    gradient_accumulation_steps / processes, as nanoGPT. With it: on CUDA the largest micro-batch that divides
    the per-process share and fits in memory (probed: forward + backward from the largest size down, everything
    freed between probes, room left for Adam's moments and, under DDP, its gradient buckets and NCCL), the same on
    every process (the smallest any of them found; `group`: the CPU process group for that vote); elsewhere
    batch_size. Either way the sequences per optimizer step, and so every token count, are what the config says."""
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
    import gc
    device = next(model.parameters()).device
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    reserve = 2 * param_bytes  # Adam's two moments (the gradients are in the probe's peak)
    if world_size > 1:
        reserve += param_bytes + DDP_COMM_BYTES  # DDP's gradient buckets are a second copy of the gradients
    budget = 0.9 * torch.cuda.get_device_properties(device).total_memory
    micro = 0
    for size in sorted((m for m in range(1, per_process + 1) if per_process % m == 0), reverse=True):
        peak = probe_peak_memory(model, size, config["block_size"], vocab_size, autocast)
        if peak is not None and peak + reserve <= budget:
            micro = size
            break
        gc.collect()  # whatever a cycle still holds of the failed probe, then its cached blocks
        torch.cuda.empty_cache()
    micro = agree_on_min(micro, group)  # ranks that differ would desynchronize their collectives or hang
    if not micro:
        raise UserError(f"not even a micro-batch of 1 sequence of block_size={config['block_size']} fits in GPU "
                        f"memory (on at least one process)")
    print(f"target_effective_batch_size={target}: micro-batch {micro} x {per_process // micro} accumulation "
          f"steps x {world_size} process(es)")
    return micro, per_process // micro


def batch_to_device(t, device):
    """A batch (a strided view into the drawn windows) on the device. CUDA: one copy into a contiguous pinned
    buffer, then an asynchronous copy from it (a non-contiguous tensor's pin_memory() and non_blocking copy go
    through a pageable temporary: no pinning, maybe a stream sync). Elsewhere a contiguous copy, no pinning."""
    if str(device).startswith("cuda"):
        pinned = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        pinned.copy_(t)  # the caching host allocator keeps it until the copy below is done
        return pinned.to(device, non_blocking=True)
    return t.contiguous().to(device)


def device_sync(device):
    """Wait for the work queued on a GPU (before reading a clock); nothing to wait for elsewhere."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


VOTE_SECONDS = 0.5  # DDP: about how often the processes vote on stopping (a signal, the time limit)
VOTE_MAX_CALLS = 100  # ... and at least every this many micro-steps


def make_vote(ddp, group=None, seconds=VOTE_SECONDS, max_calls=VOTE_MAX_CALLS):
    """vote(interrupted, out_of_time=None) -> (interrupted, out of time), as every process agrees under DDP, so
    that all stop at the same step. The vote is a blocking all-reduce (on `group`, a CPU one), taken about every
    `seconds`: the number of calls until the next vote is agreed in the same all-reduce (the smallest proposal),
    so every process votes at the same call; in between the last agreement holds (both flags only ever turn on).
    Calls inside a step pass only `interrupted`: out of time stays as at the step's start."""
    import torch.distributed as dist
    votes = {"calls": 0, "due": 1, "since": time.perf_counter(), "agreed": (False, False), "out_of_time": False}

    def vote(interrupted, out_of_time=None):
        if out_of_time is not None:
            votes["out_of_time"] = bool(out_of_time)
        local = (bool(interrupted), votes["out_of_time"])
        if not ddp:
            return local
        votes["calls"] += 1
        if votes["calls"] < votes["due"]:
            return votes["agreed"]
        now = time.perf_counter()
        proposal = max(1, min(max_calls, int(seconds * votes["calls"] / max(1e-6, now - votes["since"]))))
        t = torch.tensor([float(local[0]), float(local[1]), -float(proposal)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)  # max of -proposal: the smallest proposal
        agreed = t.tolist()
        votes["agreed"] = (votes["agreed"][0] or agreed[0] > 0, votes["agreed"][1] or agreed[1] > 0)
        votes.update(calls=0, due=int(-agreed[2]), since=now)
        return votes["agreed"]

    return vote


def warm_up_compiled(model, micro_batch, block_size, device, autocast, ddp, return_logits=False):
    """Compile (one forward and backward of a batch of zeros, at the training shape) before the clock starts, so
    compile time is not training time. The gradients are dropped and the RNG streams dropout drew from are put
    back: the run is the one it would be without this. Returns the seconds it took."""
    t0 = time.perf_counter()
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state() if str(device).startswith("cuda") else None
    # two tensors, as in training (dynamo guards on inputs being aliases of each other)
    x, y = (torch.zeros(micro_batch, block_size, dtype=torch.long, device=device) for _ in range(2))
    with (model.no_sync() if ddp else nullcontext()):  # no gradient all-reduce
        with autocast:
            _, loss = model(x, y, return_logits=return_logits)  # the training call's signature: one graph
        loss.backward()
    model.zero_grad(set_to_none=True)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng)
    device_sync(device)
    return time.perf_counter() - t0


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


def budget_limits(config, tokens_per_step, flops_per_token, n_params_non_embedding):
    """{budget key: optimizer steps it allows} for each step/token/FLOP budget that is set."""
    limits = {}
    if config["max_iters"]:
        limits["max_iters"] = config["max_iters"]
    if config["max_tokens"]:
        limits["max_tokens"] = math.ceil(config["max_tokens"] / tokens_per_step)
    if config["max_flops"]:
        limits["max_flops"] = math.ceil(config["max_flops"] / (flops_per_token * tokens_per_step))
    if config["tokens_per_param"]:
        limits["tokens_per_param"] = math.ceil(config["tokens_per_param"] * n_params_non_embedding / tokens_per_step)
    return {key: max(1, steps) for key, steps in limits.items()}


def budget_steps(config, tokens_per_step, flops_per_token, n_params_non_embedding):
    """Optimizer steps allowed by the step/token/FLOP budgets (the smallest wins); None if only a time limit."""
    limits = budget_limits(config, tokens_per_step, flops_per_token, n_params_non_embedding)
    return min(limits.values()) if limits else None


def binding_budget(limits):
    """The budget key that sets the run's length (the smallest; the first set on a tie), or None."""
    return min(limits, key=limits.get) if limits else None


def describe_budget(config, limits):
    """What ends the run, for the first and last log lines: 'max_tokens=5000000 -> 3052 steps, time_limit_s=600 cap'."""
    key = binding_budget(limits)
    parts = [f"{key}={config[key]:g} -> {limits[key]} steps"] if key else []
    if config["time_limit_s"]:
        parts.append(f"time_limit_s={config['time_limit_s']:g}" + (" cap" if key else ""))
    return ", ".join(parts)


def check_run_length(config, total_steps, budgets):
    """The schedule checks that need the run's length in steps (known once the batch is planned)."""
    schedule = config["lr_schedule"]
    if total_steps is None and (schedule == "wsd" or schedule in ("linear", "cosine") and not config["lr_decay_iters"]):
        raise UserError(f"lr_schedule={schedule} needs to know the run's length: set max_iters, max_tokens, "
                        f"max_flops, tokens_per_param{'' if schedule == 'wsd' else ' or lr_decay_iters'} "
                        f"(time_limit_s alone is not enough)")
    if schedule == "wsd" and wsd_decay_start(total_steps, config) < config["warmup_iters"]:
        raise UserError(f"warmup_iters={config['warmup_iters']} is longer than the stable phase of this "
                        f"{total_steps}-step run (its decay starts at step {wsd_decay_start(total_steps, config)}): "
                        f"shorten the warmup or lengthen the run")
    too_long = [s for s in config["cooldowns"] or [] if s >= total_steps]
    if too_long:
        raise UserError(f"cooldowns {too_long} are not shorter than the run ({describe_budget(config, budgets)}): "
                        f"a cooldown budget must be fewer steps than the run's")


def config_differences(saved, config):
    # a key that a newer train.py added is absent from an older folder's config.json: it ran at the default
    keys = sorted((set(saved) | set(config)) - set(results.EXECUTION_KEYS) - {"derived", "config_files"})
    return [k for k in keys if saved.get(k, DEFAULTS.get(k, "<absent>")) != config.get(k, "<absent>")]


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
    """This process's RNG states. CUDA: the current device's generator only (the one this process draws from),
    so a checkpoint does not depend on how many GPUs the process could see."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "data": batches.state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state, batches):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    batches.load_state(state["data"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible GPU's state; ours is the current one
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda)


def resume_scaler(scaler, ckpt, dtype_name, folder, master):
    """Load the GradScaler's state when the run trained in float16 and still does. dtype=auto can resolve
    differently on the resuming machine (bf16 on an A100, fp16 on a V100): the run goes on in the new dtype,
    with a fresh GradScaler when that is float16, and says so."""
    saved = ckpt.get("dtype") or ("float16" if ckpt.get("scaler") else None)  # older checkpoints: no "dtype"
    if saved is not None and saved != dtype_name and master:
        print(f"warning: {folder} trained in {saved} up to its checkpoint and continues in {dtype_name} here "
              f"(dtype={ckpt.get('config', {}).get('dtype', '?')} on this device)"
              + ("; a fresh GradScaler starts" if dtype_name == "float16" else ""), file=sys.stderr)
    if scaler.is_enabled() and saved == "float16" and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])


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
        results.release_run_folder(run_folder(config))  # the folder's lock, where run_training took it


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
        device = setup_device(config, local_rank)
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=config["ddp_timeout_s"]))
        # small bookkeeping collectives (stop votes, loss sums, RNG states) use CPU tensors: a gloo group
        cpu_group = dist.new_group(backend="gloo") if backend == "nccl" else None
    else:
        rank, local_rank, world_size, device, cpu_group = 0, 0, 1, setup_device(config), None
    master = rank == 0
    device_type = device.split(":")[0]
    if config["num_threads"]:
        torch.set_num_threads(config["num_threads"])
    dtype_name = pick_dtype(config, device_type, device)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = nullcontext() if dtype_name == "float32" else torch.autocast(
        device_type, dtype={"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name])
    use_compile = pick_compile(config, device_type)

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
    batches = RowBatches(data["train"], meta["supervised_positions"], config["seed"],
                         config["rows_with_replacement"]) if rows else \
        TokenBatches(data["train"], config["block_size"], config["seed"])
    val_batches = validation_batches(meta, data["val"], config)
    head_vocab_size = answer_vocab_size(data, config["dataset"]) if config["answer_head"] else 0

    # ---- model and accounting
    torch.manual_seed(config["seed"])  # identical init on every process
    random.seed(config["seed"])
    np.random.seed(config["seed"] % 2 ** 32)
    model = build_model(config, meta["vocab_size"], head_vocab_size).to(device)
    micro_batch, accum = plan_batches(config, world_size, model, device_type, autocast,
                                     head_vocab_size or meta["vocab_size"],  # the probe's ids are valid targets
                                     cpu_group)
    n_params, n_params_ne = model.num_params(), model.num_params(non_embedding=True)
    flops_per_token = model.flops_per_token()
    tokens_per_step = micro_batch * config["block_size"] * accum * world_size
    budgets = budget_limits(config, tokens_per_step, flops_per_token, n_params_ne)
    total_steps = budget_steps(config, tokens_per_step, flops_per_token, n_params_ne)
    check_run_length(config, total_steps, budgets)
    schedule_steps = total_steps or config["lr_decay_iters"]
    torch.manual_seed(config["seed"] + rank)  # dropout differs between processes
    optimizer = make_optimizer(model, config, device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype_name == "float16")
    derived = {"n_params": n_params, "n_params_non_embedding": n_params_ne, "flops_per_token": flops_per_token,
               "tokens_per_step": tokens_per_step, "total_steps": total_steps, "world_size": world_size,
               "micro_batch_size": micro_batch, "gradient_accumulation_steps_per_process": accum,
               "device": device, "dtype": dtype_name,
               "compile": use_compile, "vocab_size": meta["vocab_size"],
               "head_vocab_size": head_vocab_size or meta["vocab_size"], "torch": torch.__version__,
               "git_sha": git_sha()}
    columns = results.METRICS_COLUMNS + (results.TASK_COLUMNS if rows else [])

    # ---- run folder: fresh, resumed, or already finished
    folder = run_folder(config)
    state = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "best_val_loss": None, "evals_since_best": 0,
             "step_val_acc_99": None, "last_row_step": None, "train_loss_sum": 0.0, "train_loss_steps": 0,
             "train_acc_sum": 0.0}
    decision = None  # 'finished', 'resume', 'fresh', or an error message
    if master:
        try:  # decided only once this process owns the folder (rank 0 for all: train() releases it)
            results.lock_run_folder(folder, config["lock_wait_s"])
            decision = prepare_run_folder(folder, config)
        except results.RunFolderBusy as e:
            decision = f"busy: {e}"
        except UserError as e:
            decision = f"error: {e}"
    if ddp:  # every process follows rank 0's decision (and its error, instead of waiting for it forever)
        shared = [decision]
        dist.broadcast_object_list(shared, src=0, group=cpu_group)
        decision = shared[0]
    if decision.startswith("busy: "):
        raise results.RunFolderBusy(decision[len("busy: "):])
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
        resume_scaler(scaler, ckpt, dtype_name, folder, master)
        state.update(ckpt["state"])
        if rank < len(ckpt["rng"]):
            restore_rng(ckpt["rng"][rank], batches)
        else:  # more processes than the checkpoint's: rank 0's data stream (shared by all), fresh dropout streams
            batches.load_state(ckpt["rng"][0]["data"])
            torch.manual_seed(config["seed"] + rank + 1_000_003 * state["step"])
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
        # broadcast_buffers=False: the models' only buffers are constant tables (rotary, sinusoidal) built the same
        # on every process; broadcasting them would add a collective to every forward
        model = DistributedDataParallel(model, device_ids=[local_rank] if device_type == "cuda" else None,
                                        broadcast_buffers=False)
    if use_compile:  # compile before the clock starts: not in elapsed_s, nor in time_limit_s
        seconds = warm_up_compiled(model, micro_batch, config["block_size"], device, autocast, ddp, rows)
        if master:
            print(f"compiled in {seconds:.1f} s (not counted as training time)", flush=True)
    peak = device_peak_flops(config, device_type, dtype_name, device) if master else None
    peak_probes_left = 3

    def checked_peak(flops_per_s):
        """The peak for a log line's MFU. On CPU the start-up probe may have run while another process loaded the
        machine: it then reads low, and a throughput above it (MFU over 100%) proves that. Then probe again and
        keep the larger (at most 3 times a run), leaving the probe's time out of the training time."""
        nonlocal peak, peak_probes_left, t_last
        if peak and device_type == "cpu" and not config["peak_flops"] and flops_per_s > peak and peak_probes_left:
            t0 = time.perf_counter()
            peak = max(peak, measure_cpu_peak(dtype_name))
            peak_probes_left -= 1
            t_last += time.perf_counter() - t0
        return peak

    vote = make_vote(ddp, cpu_group)

    def to_device(t):
        return batch_to_device(t, device)

    def clock():
        """perf_counter at the end of the step just taken. On CUDA the host runs ahead of the GPU; at the steps
        whose times are read (log lines, evaluations, checkpoints, the end) it first waits for the queued work, so
        that elapsed_s and tokens/s include it. In between no sync is needed: the step times add up."""
        step = state["step"]
        if step % config["log_interval"] == 0 or step % config["eval_interval"] == 0 or step == total_steps or \
                (config["ckpt_interval"] and step % config["ckpt_interval"] == 0) or \
                (branch is not None and step == branch["budget"]):
            device_sync(device)
        return time.perf_counter()

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
                logits, loss = raw_model(x, y, return_logits=rows)  # logits for task accuracy only
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
                                     "scaler": scaler.state_dict(), "dtype": dtype_name,
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

    # ---- cooldown branches (wsd): for each budget S, from the branch point wsd_decay_start(S) the run also trains
    # the decay of a standalone S-step run, evaluates as that run's last row would, writes the point to anneal.csv
    # and returns to the branch point. A budget with a row is done; a killed branch is redone from the checkpoint
    # written at its branch point.
    anneal_path = os.path.join(folder, "anneal.csv")
    anneal_columns = results.ANNEAL_COLUMNS + ["train_loss", "branch_from", "branch_s"] + (["val_acc"] if rows else [])
    anneal_rows = []
    if master and ckpt is None and os.path.exists(anneal_path):
        os.remove(anneal_path)  # a fresh start: an earlier run's points are not this run's
    if master and ckpt is not None:
        anneal_rows = [r for r in results.read_metrics(anneal_path)[0] if r["step"] in (config["cooldowns"] or [])]
    if ddp:
        shared = [anneal_rows]
        dist.broadcast_object_list(shared, src=0, group=cpu_group)
        anneal_rows = shared[0]
    done = {r["step"] for r in anneal_rows}
    branch_points = sorted((wsd_decay_start(s, config), s) for s in config["cooldowns"] or [] if s not in done)
    missed = [s for b, s in branch_points if b < state["step"]]
    if missed and master:
        print(f"warning: cooldowns {missed} have no row in {anneal_path} and their branch points have passed; "
              f"--overwrite=True runs them", file=sys.stderr)
    branch_points = [(b, s) for b, s in branch_points if b >= state["step"]]

    def start_cooldown(budget, lr):
        """Checkpoint the main run at the branch point, keep its state in memory, and train on towards budget."""
        t0 = time.perf_counter()
        checkpoint(boundary_rng)  # a kill inside the branch resumes here and redoes the branch
        branch = {"budget": budget, "t0": t0, "lr": lr, "steps_since_log": steps_since_log,
                  "model": copy.deepcopy(raw_model.state_dict()), "optimizer": copy.deepcopy(optimizer.state_dict()),
                  "scaler": copy.deepcopy(scaler.state_dict()), "state": copy.deepcopy(state),
                  "rng": copy.deepcopy(boundary_rng), "loss_acc": loss_acc.clone(), "acc_acc": acc_acc.clone()}
        loss_acc.zero_()
        acc_acc.zero_()
        state["train_loss_sum"], state["train_loss_steps"], state["train_acc_sum"] = 0.0, 0, 0.0
        if master:
            print(f"cooldown {budget}: branching at step {state['step']}", flush=True)
        return branch

    def leave_cooldown(branch):
        """Back to the branch point: model, optimizer, scaler, RNG streams, data position, counters and sums.
        Returns (steps_since_log, lr) of the main run."""
        raw_model.load_state_dict(branch["model"])
        optimizer.load_state_dict(branch["optimizer"])
        scaler.load_state_dict(branch["scaler"])
        state.clear()
        state.update(branch["state"])
        restore_rng(branch["rng"], batches)
        loss_acc.copy_(branch["loss_acc"])
        acc_acc.copy_(branch["acc_acc"])
        return branch["steps_since_log"], branch["lr"]

    def finish_cooldown(branch, val_loss, val_acc):
        """The annealed point (the final row a standalone run of the branch's budget writes), then back."""
        train_loss = state["train_loss_sum"] / state["train_loss_steps"] if state["train_loss_steps"] else \
            float("nan")
        row = {"step": state["step"], "tokens": state["tokens"], "flops": float(state["tokens"] * flops_per_token),
               "val_loss": val_loss, "train_loss": train_loss, "branch_from": branch["state"]["step"],
               "branch_s": round(time.perf_counter() - branch["t0"], 3)}
        if rows:
            row["val_acc"] = val_acc
        if master:
            anneal_rows.append(row)
            results.write_anneal(anneal_path, anneal_rows, anneal_columns)
            print(f"cooldown {branch['budget']}: val loss {val_loss:.4f} ({row['branch_s']:.1f}s, not counted in "
                  f"elapsed_s)", flush=True)
        return leave_cooldown(branch)

    # ---- the loop
    if master:
        size = f"{n_params / 1e6:.3g}M params ({n_params_ne / 1e6:.3g}M non-embedding)"
        print(f"{config['run_name']}: {config['arch']} {size}, {flops_per_token / 1e6:.2f} MFLOPs/token, "
              f"{tokens_per_step} tokens/step, {total_steps or '?'} steps (budget: "
              f"{describe_budget(config, budgets)}); {device} {dtype_name}"
              f"{' compiled' if use_compile else ''}, {world_size} process(es), {torch.get_num_threads()} "
              f"threads; results in {folder}", flush=True)
        if branch_points:
            print("cooldowns (budget from branch point): " + ", ".join(f"{s} from {b}" for b, s in branch_points) +
                  f" -> {anneal_path}", flush=True)
    status = None
    # training loss summed on the device, read only at log steps (no host-device syncs in between)
    loss_acc = torch.tensor(state.pop("pending_loss", 0.0), device=device)
    acc_acc = torch.tensor(state.pop("pending_acc", 0.0), device=device)
    steps_since_log = state.pop("steps_since_log", 0)
    t_log, tokens_log = time.perf_counter(), state["tokens"]
    t_last = time.perf_counter()
    boundary_rng = capture_rng(batches)
    lr = lr_at(state["step"], config, schedule_steps) if schedule_steps else config["learning_rate"]
    branch = None  # the cooldown branch in progress (start_cooldown), or None on the main run
    while status is None:
        # budget checks happen between optimizer steps (the time limit counts the main run's training only)
        if total_steps is not None and state["step"] >= total_steps:
            status = "completed"
            break
        interrupted, out_of_time = vote(stop.received is not None, config["time_limit_s"] and branch is None and
                                        state["elapsed_s"] >= config["time_limit_s"])
        if out_of_time:
            status = "time_limit"
            break
        if interrupted:
            status = "interrupted"
            break
        if branch is None and branch_points and branch_points[0][0] == state["step"]:
            branch = start_cooldown(branch_points.pop(0)[1], lr)
            steps_since_log = 0
        length = branch["budget"] if branch else schedule_steps  # a branch follows its standalone run's schedule
        lr = lr_at(state["step"], config, length) if length else config["learning_rate"]
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
                    logits, loss = model(x, y, return_logits=rows)  # logits for task accuracy only
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
            now = clock()
            state["elapsed_s"] += now - t_last
            t_last = now
            boundary_rng = capture_rng(batches)
            is_eval = state["step"] % config["eval_interval"] == 0 or state["step"] == total_steps
            if branch is not None:  # a branch evaluates once, at its end, as its standalone run's last row
                is_eval = state["step"] == branch["budget"]
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
                if not math.isfinite(mean_loss) and branch is not None:
                    branch["diverged"] = True  # its standalone run would end here, diverged: a nan point
                elif not math.isfinite(mean_loss):
                    write_row(float("nan"), float("nan") if rows else None, lr)
                    status = "diverged"
                    break
                if master and state["step"] % config["log_interval"] == 0:
                    dt = time.perf_counter() - t_log
                    tok_s = (state["tokens"] - tokens_log) / dt
                    checked_peak(tok_s * flops_per_token / world_size)
                    mfu = f" | MFU {100 * tok_s * flops_per_token / (peak * world_size):.1f}%" if peak else ""
                    seconds_per_step = dt * tokens_per_step / (state["tokens"] - tokens_log)
                    end, where = (branch["budget"], f"cooldown {branch['budget']}: ") if branch else (total_steps, "")
                    eta = f" | ETA {format_duration((end - state['step']) * seconds_per_step)}" if end else ""
                    print(f"{where}step {state['step']}/{end or '?'} | loss {mean_loss:.4f} | lr {lr:.2e} | "
                          f"{tok_s / 1e3:.1f}k tok/s{mfu}{eta}", flush=True)
                t_log, tokens_log = time.perf_counter(), state["tokens"]
            if branch is not None and (is_eval or branch.get("diverged")):
                nan = (float("nan"), float("nan") if rows else None)
                steps_since_log, lr = finish_cooldown(branch, *(nan if branch.get("diverged") else evaluate()))
                branch, boundary_rng = None, capture_rng(batches)
                t_last = t_log = time.perf_counter()  # the branch's time is not the main run's elapsed_s
                tokens_log = state["tokens"]
                continue
            ckpt_due = status is None and branch is None and \
                (state["step"] % config["ckpt_interval"] == 0 if config["ckpt_interval"] else is_eval)
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
    if branch is not None:  # stopped inside a cooldown branch: back to its branch point (the branch is redone)
        steps_since_log, lr = leave_cooldown(branch)
        branch, boundary_rng = None, capture_rng(batches)
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
                 "step_val_acc_99": state["step_val_acc_99"],
                 "budget": "time_limit_s" if status == "time_limit" else binding_budget(budgets)}
        if config["cooldowns"]:  # the branches' wall-clock time, outside elapsed_s
            final["cooldown_s"] = round(sum(r.get("branch_s", 0.0) for r in anneal_rows), 3)
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
        key = final["budget"]
        ended = f"ended by {key}={config[key]:g}" if status in ("completed", "time_limit") and key else \
            f"budget: {describe_budget(config, budgets)}"
        if not last:
            loss = "no evaluation yet"
        elif last[-1]["step"] == state["step"]:
            loss = f"final val loss {last[-1]['val_loss']:.4f}"
        else:  # interrupted (or stopped) between evaluations: say whose loss this is
            loss = f"val loss {last[-1]['val_loss']:.4f} at step {last[-1]['step']} (the last evaluation)"
        print(f"{status}: {state['step']} steps ({ended}), {state['tokens']:,} tokens, {loss}; results in "
              f"{folder}", flush=True)
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
    except results.RunFolderBusy as e:  # another process trains this run: nothing was written; try again later
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
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
