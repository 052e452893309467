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

Reading order: the config and its checks, the model's optimizer, the LR schedule, the data, the device; then the
run, from train() down: setup_runtime, setup_training, open_run, train_loop (train_step, log_progress,
record_evaluation, the cooldown branches), save_run_checkpoint, finish_run.
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
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import results
from configurator import UserError, describe_keys, parse_args
from lstm import LSTM_INITS, LSTMConfig, LSTMLM, check_lstm_config
from model import GPT, MODEL_CHOICES, GPTConfig, check_model_config, mup_lr_mult, mup_wd_mult

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
    v, (int, float, str, bool, list, type(None)))}

CHOICES = {
    "arch": ("transformer", "lstm"),
    **MODEL_CHOICES,  # activation, pos_encoding, norm, norm_position, init, final_norm
    "lstm_init": LSTM_INITS,
    "optimizer": ("adamw", "adam", "sgd"),
    "lr_schedule": ("constant", "linear", "cosine", "inverse_sqrt", "wsd"),
    "decay_shape": ("linear", "1-sqrt"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "compile": ("auto", True, False),
}
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: run the same command again to resume
DEFAULT_MAX_ITERS = 2000  # max_iters=-1 (the default) means this when no other budget is set


# ------------------------------------------------------------------------------------------- config checks
def resolve_config(args):
    """Config files and --key=value overrides applied to DEFAULTS, label and run_name filled in, every value
    checked. Raises UserError (one line) on anything wrong. Needs no data and no device."""
    c, config_files = parse_args(args, DEFAULTS)
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
                   "momentum", "init_std", "lstm_init_range", "eval_rows", "mup_base_head_dim")
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
    if c["arch"] == "lstm":
        if c["use_mup"]:
            raise UserError("use_mup is implemented for arch='transformer' only (see README, muP)")
        for key in ("answer_head", "head_bias"):
            if c[key]:
                raise UserError(f"{key} is implemented for arch='transformer' only; leave it False for the LSTM")
    try:  # the model's own checks, as one-line errors now rather than tracebacks after the data is read
        (check_model_config if c["arch"] == "transformer" else check_lstm_config)(c)
    except ValueError as e:
        raise UserError(str(e)) from None
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
    """The wsd schedule and its cooldown budgets (the checks that need no data; check_run_length checks the
    budgets against the run's length)."""
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
        return LSTMLM(LSTMConfig(vocab_size=vocab_size, **{k: config[k] for k in LSTMConfig.__dataclass_fields__
                                                           if k in config}))
    return GPT(GPTConfig(vocab_size=vocab_size, head_vocab_size=head_vocab_size,
                         **{k: config[k] for k in GPTConfig.__dataclass_fields__ if k in config}))


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
        """(x, y) of the rows at index."""
        rows = self.rows[index].astype(np.int64)
        x, y = rows[:, :-1], rows[:, 1:].copy()
        y[:, self.mask] = -1
        return torch.from_numpy(x), torch.from_numpy(y)

    def next(self, n_sequences):
        return self.batch(self.rng.integers(0, len(self.rows), size=n_sequences) if self.replacement else
                          self.epoch_index(n_sequences))

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
    """autocast dtype for dtype=auto. CUDA: bf16 where the GPU has it in hardware, else fp16 with a GradScaler
    (V100, T4). CPU: bf16 for Transformers of width >= 64 where the CPU has native bf16 matmul (below that it does
    not pay), else fp32. The LSTM stays fp32 everywhere: on CPU bf16 cost it a little compute to the same loss, a
    bias the comparisons must not carry (--dtype=bfloat16 opts in); on CUDA cuDNN's autocast would run it in fp16
    without loss scaling, so bf16 is refused there. Measurements: README "Performance"."""
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
    """ckpt.pt, written atomically; the checkpoint before it stays as ckpt.prev.pt."""
    def write(f):  # to a Python file, so that a failed write (disk full) is an OSError underneath
        try:
            torch.save(ckpt, f)
        except RuntimeError as e:  # torch reports the failed write as a RuntimeError; raise the OSError
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise
    results.atomic_write(os.path.join(folder, "ckpt.pt"), write, binary=True,
                         keep_previous=os.path.join(folder, "ckpt.prev.pt"))


# ------------------------------------------------------------------------------------------- training
def train(config):
    """Run (or resume) one training run. Returns the final status."""
    stop = StopSignal()  # first, so a signal during start-up also ends in a checkpoint, not a dead process
    try:
        return run_training(config, stop)
    finally:
        stop.restore()
        results.release_run_folder(run_folder(config))  # the folder's lock, where open_run took it


def run_training(config, stop):
    runtime = setup_runtime(config)
    run = setup_training(config, runtime, stop)
    state = open_run(run)
    if state is None:
        return "finished_before"
    wrap_model(run)
    plan_cooldowns(run, state)
    print_header(run)
    status = train_loop(run, state)
    finish_run(run, state, status)
    return status


@dataclass
class Runtime:
    """This process: its rank among the DDP processes (rank 0 alone writes files and prints), its device and
    precision. The bookkeeping collectives (stop votes, loss sums, checkpoint parts) run on CPU tensors in `group`;
    without DDP they give back this process's own values."""
    rank: int
    world_size: int
    local_rank: int
    device: str  # 'cpu', 'cuda:1', 'mps'
    dtype_name: str  # float32, bfloat16 or float16 (autocast; float16 with a GradScaler)
    autocast: object  # the context the forward passes run in
    compile: bool
    ddp: bool
    group: object  # a gloo group when the training backend is nccl; None: the default (gloo) group
    vote: object  # make_vote's: stop (signal, time limit) at the same step on every process

    @property
    def master(self):
        return self.rank == 0

    @property
    def device_type(self):
        return self.device.split(":")[0]

    def sum(self, t):
        """t (a CPU tensor) summed over the processes, in place."""
        if self.ddp:
            dist.all_reduce(t, group=self.group)
        return t

    def broadcast(self, obj):
        """Rank 0's obj, on every process."""
        if not self.ddp:
            return obj
        shared = [obj]
        dist.broadcast_object_list(shared, src=0, group=self.group)
        return shared[0]

    def gather(self, obj):
        """Every process's obj, in rank order."""
        if not self.ddp:
            return [obj]
        everyone = [None] * self.world_size
        dist.all_gather_object(everyone, obj, group=self.group)
        return everyone


def setup_runtime(config):
    """The process group under torchrun, this process's device, threads, precision and whether it compiles."""
    ddp, group = under_torchrun(), None
    if ddp:
        rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        device = setup_device(config, local_rank)
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=config["ddp_timeout_s"]))
        group = dist.new_group(backend="gloo") if backend == "nccl" else None
    else:
        rank, local_rank, world_size, device = 0, 0, 1, setup_device(config)
    device_type = device.split(":")[0]
    if config["num_threads"]:
        torch.set_num_threads(config["num_threads"])
    dtype_name = pick_dtype(config, device_type, device)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = nullcontext() if dtype_name == "float32" else torch.autocast(
        device_type, dtype={"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name])
    return Runtime(rank, world_size, local_rank, device, dtype_name, autocast, pick_compile(config, device_type),
                   ddp, group, make_vote(ddp, group))


def under_torchrun():
    return int(os.environ.get("RANK", -1)) != -1


def load_data(config, runtime):
    """(meta, training batches, validation batches, head_vocab_size) of config's dataset, prepared first if it is
    the embedded corpus and missing. A task dataset sets config's block_size to its row length."""
    from prepare import load_dataset, prepare
    path = os.path.join(config["data_dir"], config["dataset"])
    if config["dataset"] == "stdlib" and not os.path.exists(os.path.join(path, "meta.json")):
        if runtime.master:
            print(f"preparing the embedded corpus in {path} (once)")
            prepare("stdlib", data_dir=config["data_dir"])
        if runtime.ddp:
            dist.barrier()
    data = load_dataset(config["data_dir"], config["dataset"])
    meta = data["meta"]
    if meta["kind"] == "rows":
        config["block_size"] = meta["row_len"] - 1  # a row is the whole context
        batches = RowBatches(data["train"], meta["supervised_positions"], config["seed"],
                             config["rows_with_replacement"])
    elif min(len(data["train"]), len(data["val"])) <= config["block_size"] + 1:
        raise UserError(f"block_size={config['block_size']} is larger than the data: dataset "
                        f"'{config['dataset']}' has {len(data['train'])} train and {len(data['val'])} val tokens")
    else:
        batches = TokenBatches(data["train"], config["block_size"], config["seed"])
    head_vocab_size = answer_vocab_size(data, config["dataset"]) if config["answer_head"] else 0
    return meta, batches, validation_batches(meta, data["val"], config), head_vocab_size


@dataclass
class Clocks:
    """This process's wall clocks. elapsed_s counts training steps only (not compiling, evaluations, checkpoints,
    peak probes or cooldown branches); a progress line's tokens/s counts from the line before (or from the last
    of those pauses)."""
    t_last: float = 0.0  # the end of the last step counted in elapsed_s
    t_log: float = 0.0  # where the next progress line's interval starts
    tokens_log: int = 0  # the tokens at t_log

    def restart(self, tokens):
        self.t_last = self.t_log = time.perf_counter()
        self.tokens_log = tokens


@dataclass
class Run:
    """What one run trains with, from its first step to its last: set up by setup_training, open_run and
    wrap_model. raw_model is what gets saved and evaluated; model is what trains (compiled, DDP-wrapped)."""
    config: dict
    runtime: Runtime
    stop: StopSignal
    batches: object  # TokenBatches or RowBatches
    val_batches: list
    rows: bool  # a task dataset: targets only at the supervised positions, and accuracy is measured
    raw_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    micro_batch: int  # sequences per forward pass
    accum: int  # micro-steps per optimizer step, on each process
    tokens_per_step: int  # all processes together
    flops_per_token: int
    budgets: dict  # {budget key: optimizer steps it allows}
    total_steps: int  # the smallest of those; None: a time limit only
    schedule_steps: int  # the LR schedule's length: total_steps, else lr_decay_iters
    derived: dict  # config.json's "derived" record
    folder: str
    model: torch.nn.Module = None
    resumed: bool = False
    metrics_file: object = None  # rank 0's
    wandb_run: object = None
    peak: float = None  # rank 0's device peak FLOP/s for MFU
    peak_probes_left: int = 3
    anneal_rows: list = field(default_factory=list)  # the cooldown points so far (anneal.csv)
    branch_points: list = field(default_factory=list)  # (step, budget) of the cooldown branches still to run
    clock: Clocks = field(default_factory=Clocks)

    @property
    def columns(self):
        return results.METRICS_COLUMNS + (results.TASK_COLUMNS if self.rows else [])

    @property
    def anneal_columns(self):
        return results.ANNEAL_COLUMNS + ["train_loss", "branch_from", "branch_s"] + (["val_acc"] if self.rows else [])


def setup_training(config, runtime, stop):
    """The data, the model and its batch plan, the budgets in steps, the optimizer and the GradScaler."""
    meta, batches, val_batches, head_vocab_size = load_data(config, runtime)
    torch.manual_seed(config["seed"])  # identical init on every process
    random.seed(config["seed"])
    np.random.seed(config["seed"] % 2 ** 32)
    model = build_model(config, meta["vocab_size"], head_vocab_size).to(runtime.device)
    micro_batch, accum = plan_batches(config, runtime.world_size, model, runtime.device_type, runtime.autocast,
                                      head_vocab_size or meta["vocab_size"],  # the probe's ids are valid targets
                                      runtime.group)
    n_params, n_params_ne = model.num_params(), model.num_params(non_embedding=True)
    flops_per_token = model.flops_per_token()
    tokens_per_step = micro_batch * config["block_size"] * accum * runtime.world_size
    budgets = budget_limits(config, tokens_per_step, flops_per_token, n_params_ne)
    total_steps = budget_steps(config, tokens_per_step, flops_per_token, n_params_ne)
    check_run_length(config, total_steps, budgets)
    torch.manual_seed(config["seed"] + runtime.rank)  # dropout differs between processes
    optimizer = make_optimizer(model, config, runtime.device_type)
    scaler = torch.amp.GradScaler(runtime.device_type, enabled=runtime.dtype_name == "float16")
    derived = {"n_params": n_params, "n_params_non_embedding": n_params_ne, "flops_per_token": flops_per_token,
               "tokens_per_step": tokens_per_step, "total_steps": total_steps, "world_size": runtime.world_size,
               "micro_batch_size": micro_batch, "gradient_accumulation_steps_per_process": accum,
               "device": runtime.device, "dtype": runtime.dtype_name, "compile": runtime.compile,
               "vocab_size": meta["vocab_size"], "head_vocab_size": head_vocab_size or meta["vocab_size"],
               "torch": torch.__version__, "git_sha": git_sha()}
    return Run(config, runtime, stop, batches, val_batches, meta["kind"] == "rows", model, optimizer, scaler,
               micro_batch, accum, tokens_per_step, flops_per_token, budgets, total_steps,
               total_steps or config["lr_decay_iters"], derived, run_folder(config))


@dataclass
class RunState:
    """Where the run stands: what a checkpoint saves and a resume restores, with the model, optimizer and scaler.
    The counters are the same on every process; the last three fields are this process's own."""
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # training tokens, all processes together
    elapsed_s: float = 0.0  # training time (see Clocks)
    best_val_loss: float = None
    evals_since_best: int = 0  # evaluations without an improvement (early stopping)
    step_val_acc_99: int = None  # task datasets: the first step at which val accuracy reached 0.99
    last_row_step: int = None  # the step of the last metrics.csv row
    train_loss_sum: float = 0.0  # training loss and accuracy summed since the last row, over train_loss_steps
    train_acc_sum: float = 0.0
    train_loss_steps: int = 0
    steps_since_log: int = 0  # steps whose losses are still in loss_sum and acc_sum
    rng: dict = None  # RNG streams and data position after the last step (capture_rng)
    loss_sum: torch.Tensor = None  # training loss and accuracy summed since the last progress line, on the
    acc_sum: torch.Tensor = None  # device: read only at progress lines, so steps need no host-device sync

    def counters(self):
        return {k: v for k, v in vars(self).items() if k not in ("rng", "loss_sum", "acc_sum")}

    def train_means(self):
        """Mean training loss and accuracy since the last row (nan if no progress line has counted a step)."""
        if not self.train_loss_steps:
            return float("nan"), float("nan")
        return self.train_loss_sum / self.train_loss_steps, self.train_acc_sum / self.train_loss_steps

    def start_row(self):
        self.train_loss_sum, self.train_loss_steps, self.train_acc_sum = 0.0, 0, 0.0


def open_run(run):
    """Rank 0 takes the run folder's lock and decides: fresh, resume or finished before; every process follows
    (or raises its error). Then config.json and metrics.csv. Returns the RunState, or None if finished before."""
    config, runtime = run.config, run.runtime
    decision = None  # 'finished', 'resume', 'fresh', or an error
    if runtime.master:
        try:  # decided only once this process owns the folder (train() releases it)
            results.lock_run_folder(run.folder, config["lock_wait_s"])
            decision = prepare_run_folder(run.folder, config)
        except results.RunFolderBusy as e:
            decision = f"busy: {e}"
        except UserError as e:
            decision = f"error: {e}"
    decision = runtime.broadcast(decision)  # rank 0's error too: other processes must not wait for it forever
    if decision.startswith("busy: "):
        raise results.RunFolderBusy(decision[len("busy: "):])
    if decision.startswith("error: "):
        raise UserError(decision[len("error: "):])
    if decision == "finished":
        return None
    state, sums = RunState(), {"loss_sum": 0.0, "acc_sum": 0.0}
    if decision == "resume":
        ckpt = load_checkpoint(run.folder)
        if ckpt is None:
            raise UserError(f"the checkpoint in {run.folder} disappeared while starting; run the command again")
        state, sums = resume_run(run, ckpt)
        run.resumed = True
    state.loss_sum, state.acc_sum = (torch.tensor(sums[k], device=runtime.device) for k in ("loss_sum", "acc_sum"))
    if runtime.master:
        results.write_json(os.path.join(run.folder, "config.json"), {**config, "derived": run.derived})
        run.metrics_file = results.open_metrics(os.path.join(run.folder, "metrics.csv"), run.columns,
                                                keep_through_step=state.last_row_step if run.resumed else None)
        if config["wandb_log"]:
            run.wandb_run = start_wandb(config, run.derived, run.folder)
    return state


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


def resume_run(run, ckpt):
    """The checkpoint's RunState and this process's loss sums; the model, optimizer, scaler and this process's
    RNG streams and data position are put back."""
    runtime = run.runtime
    run.raw_model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    resume_scaler(run.scaler, ckpt, runtime.dtype_name, run.folder, runtime.master)
    state, saved = RunState(**ckpt["state"]), ckpt["processes"]
    if runtime.rank < len(saved):
        restore_rng(saved[runtime.rank]["rng"], run.batches)
    else:  # more processes than the checkpoint's: rank 0's data stream (shared by all), fresh dropout streams
        run.batches.load_state(saved[0]["rng"]["data"])
        torch.manual_seed(run.config["seed"] + runtime.rank + 1_000_003 * state.step)
    # this process's loss sums, or their mean on every process if the number of processes changed
    sums = saved[runtime.rank] if len(saved) == runtime.world_size else \
        {k: sum(p[k] for p in saved) / len(saved) for k in ("loss_sum", "acc_sum")}
    if runtime.master:
        print(f"resuming {run.folder} from step {state.step}")
    return state, sums


def start_wandb(config, derived, folder):
    import wandb
    return wandb.init(project=config["wandb_project"], name=f"{config['study']}/{config['run_name']}",
                      config={**config, "derived": derived}, dir=folder, resume="allow",
                      id=f"{config['study']}-{config['run_name']}"[:128])


def wrap_model(run):
    """run.model: the raw model compiled (and compiled now, so that compiling is neither in elapsed_s nor in
    time_limit_s) and wrapped for DDP. Then rank 0's device peak for MFU."""
    runtime = run.runtime
    model = torch.compile(run.raw_model) if runtime.compile else run.raw_model
    if runtime.ddp:
        # broadcast_buffers=False: the models' only buffers are constant tables (rotary, sinusoidal) built the same
        # on every process; broadcasting them would add a collective to every forward
        model = DistributedDataParallel(model, device_ids=[runtime.local_rank] if runtime.device_type == "cuda"
                                        else None, broadcast_buffers=False)
    if runtime.compile:
        seconds = warm_up_compiled(model, run.micro_batch, run.config["block_size"], runtime.device,
                                   runtime.autocast, runtime.ddp, run.rows)
        if runtime.master:
            print(f"compiled in {seconds:.1f} s (not counted as training time)", flush=True)
    run.model = model
    if runtime.master:
        run.peak = device_peak_flops(run.config, runtime.device_type, runtime.dtype_name, runtime.device)


def plan_cooldowns(run, state):
    """wsd cooldowns: for each budget S, from the branch point wsd_decay_start(S) the run also trains the decay of
    a standalone S-step run, evaluates as that run's last row would, writes the point to anneal.csv and returns
    to the branch point. A budget with a row is done; a killed branch is redone from the checkpoint written at
    its branch point. Sets run.anneal_rows and run.branch_points."""
    config, runtime = run.config, run.runtime
    path, cooldowns, rows = os.path.join(run.folder, "anneal.csv"), config["cooldowns"] or [], []
    if runtime.master and not run.resumed and os.path.exists(path):
        os.remove(path)  # a fresh start: an earlier run's points are not this run's
    if runtime.master and run.resumed:
        rows = [r for r in results.read_metrics(path)[0] if r["step"] in cooldowns]
    run.anneal_rows = runtime.broadcast(rows)
    done = {r["step"] for r in run.anneal_rows}
    points = sorted((wsd_decay_start(s, config), s) for s in cooldowns if s not in done)
    missed = [s for b, s in points if b < state.step]
    if missed and runtime.master:
        print(f"warning: cooldowns {missed} have no row in {path} and their branch points have passed; "
              f"--overwrite=True runs them", file=sys.stderr)
    run.branch_points = [(b, s) for b, s in points if b >= state.step]


def print_header(run):
    """The first line: the model, its cost, the run's length and what sets it, the device."""
    config, runtime, derived = run.config, run.runtime, run.derived
    if not runtime.master:
        return
    size = f"{derived['n_params'] / 1e6:.3g}M params ({derived['n_params_non_embedding'] / 1e6:.3g}M non-embedding)"
    print(f"{config['run_name']}: {config['arch']} {size}, {run.flops_per_token / 1e6:.2f} MFLOPs/token, "
          f"{run.tokens_per_step} tokens/step, {run.total_steps or '?'} steps (budget: "
          f"{describe_budget(config, run.budgets)}); {runtime.device} {runtime.dtype_name}"
          f"{' compiled' if runtime.compile else ''}, {runtime.world_size} process(es), {torch.get_num_threads()} "
          f"threads; results in {run.folder}", flush=True)
    if run.branch_points:
        print("cooldowns (budget from branch point): " + ", ".join(f"{s} from {b}" for b, s in run.branch_points) +
              f" -> {os.path.join(run.folder, 'anneal.csv')}", flush=True)


# ------------------------------------------------------------------------------------------- the training loop
def train_loop(run, state):
    """Optimizer steps until the run ends; returns why: completed, time_limit, interrupted, diverged or
    early_stopped. Budgets and signals are checked between steps; a progress line, an evaluation and a checkpoint
    follow the steps they are due at. A cooldown branch trains from its branch point to its budget and back."""
    config = run.config
    state.rng = capture_rng(run.batches)
    run.clock.restart(state.tokens)
    lr, branch = learning_rate(run, state.step, None), None  # branch: the cooldown branch in progress
    while True:
        status = stop_status(run, state, branch)
        if status in ("completed", "time_limit") and state.last_row_step != state.step:
            status = "diverged" if record_evaluation(run, state, lr) == "diverged" else status  # the last row
        if status:
            break
        if branch is None and run.branch_points and run.branch_points[0][0] == state.step:
            branch = start_cooldown(run, state, run.branch_points.pop(0)[1], lr)
        lr = learning_rate(run, state.step, branch)
        if not train_step(run, state, lr, branch):
            status = "interrupted"  # a signal in the middle of the step
            break
        is_eval = evaluation_due(run, state, branch)
        if state.step % config["log_interval"] == 0 or is_eval:
            status = log_progress(run, state, lr, branch)
            if status:
                break
        if branch is not None:
            if is_eval or branch.diverged:  # the branch's end: its point in anneal.csv, then back to the main run
                lr, branch = finish_cooldown(run, state, branch), None
            continue
        checkpoint_due = state.step % config["ckpt_interval"] == 0 if config["ckpt_interval"] else is_eval
        if is_eval:
            status = record_evaluation(run, state, lr)
            if status:
                break
        if checkpoint_due:
            save_run_checkpoint(run, state)
        if is_eval or checkpoint_due:
            run.clock.restart(state.tokens)  # evaluations and checkpoints are not training time
    if branch is not None:  # stopped inside a cooldown branch: back to its branch point (the branch is redone)
        leave_cooldown(run, state, branch)
    return status


def stop_status(run, state, branch):
    """'completed' once the step budget is spent, 'time_limit' once the main run's training time is (cooldown
    branches do not count), 'interrupted' after a signal, as every process agrees; None: go on."""
    config = run.config
    if run.total_steps is not None and state.step >= run.total_steps:
        return "completed"
    out_of_time = config["time_limit_s"] and branch is None and state.elapsed_s >= config["time_limit_s"]
    interrupted, out_of_time = run.runtime.vote(run.stop.received is not None, out_of_time)
    if out_of_time:
        return "time_limit"
    return "interrupted" if interrupted else None


def learning_rate(run, step, branch):
    """The base group's LR at step; a cooldown branch follows its standalone run's schedule."""
    length = branch.budget if branch is not None else run.schedule_steps
    return lr_at(step, run.config, length) if length else run.config["learning_rate"]


def train_step(run, state, lr, branch):
    """One optimizer step: this process's share of the global batch in accum micro-batches (DDP all-reduces the
    gradients in the last backward), clipping, the step. Returns False if a signal arrived between micro-steps:
    the partial step is dropped, and the checkpoint holds the state before it."""
    config, runtime, model = run.config, run.runtime, run.model
    for group in run.optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
    share = run.micro_batch * run.accum
    x_all, y_all = run.batches.next(share * runtime.world_size)
    mine = slice(runtime.rank * share, (runtime.rank + 1) * share)
    x_all, y_all = x_all[mine], y_all[mine]
    step_loss, step_acc = 0.0, 0.0  # join the running sums only when the step completes
    for micro in range(run.accum):
        if micro and runtime.vote(run.stop.received is not None)[0]:
            return False
        b = slice(micro * run.micro_batch, (micro + 1) * run.micro_batch)
        x, y = batch_to_device(x_all[b], runtime.device), batch_to_device(y_all[b], runtime.device)
        with (model.no_sync() if runtime.ddp and micro < run.accum - 1 else nullcontext()):
            with runtime.autocast:
                logits, loss = model(x, y, return_logits=run.rows)  # logits for task accuracy only
            step_loss = step_loss + loss.detach()
            if run.rows:
                step_acc = step_acc + ((logits.detach().argmax(-1) == y) & (y != -1)).sum() / (y != -1).sum()
            run.scaler.scale(loss / run.accum).backward()
    if config["grad_clip"]:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), config["grad_clip"], foreach=True)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    state.loss_sum += step_loss
    state.acc_sum += step_acc
    state.step += 1
    state.tokens += run.tokens_per_step
    state.steps_since_log += 1
    now = end_of_step(run, state, branch)
    state.elapsed_s += now - run.clock.t_last
    run.clock.t_last = now
    state.rng = capture_rng(run.batches)
    return True


def end_of_step(run, state, branch):
    """perf_counter at the end of the step just taken. On CUDA the host runs ahead of the GPU; at the steps whose
    times are read (log lines, evaluations, checkpoints, the end) it first waits for the queued work, so that
    elapsed_s and tokens/s include it. In between no sync is needed: the step times add up."""
    config, step = run.config, state.step
    if step % config["log_interval"] == 0 or step % config["eval_interval"] == 0 or step == run.total_steps or \
            (config["ckpt_interval"] and step % config["ckpt_interval"] == 0) or \
            (branch is not None and step == branch.budget):
        device_sync(run.runtime.device)
    return time.perf_counter()


def evaluation_due(run, state, branch):
    if branch is not None:  # a branch evaluates once, at its end, as its standalone run's last row
        return state.step == branch.budget
    return state.step % run.config["eval_interval"] == 0 or state.step == run.total_steps


def log_progress(run, state, lr, branch):
    """At log and evaluation steps: this process's loss sums join the next row's, averaged over the processes
    (the only host-device sync of the hot loop), and at log steps rank 0 prints a progress line. A training loss
    that is not finite ends the run ('diverged', after a row of nans), or a cooldown branch, whose standalone run
    would end there (a nan point)."""
    runtime = run.runtime
    sums = runtime.sum(torch.stack([state.loss_sum, state.acc_sum]).double().cpu() / run.accum) / runtime.world_size
    state.loss_sum.zero_()
    state.acc_sum.zero_()
    state.train_loss_sum += sums[0].item()
    state.train_acc_sum += sums[1].item()
    state.train_loss_steps += state.steps_since_log
    mean_loss = sums[0].item() / state.steps_since_log
    state.steps_since_log = 0
    if not math.isfinite(mean_loss):
        if branch is None:
            write_row(run, state, float("nan"), float("nan"), lr)
            return "diverged"
        branch.diverged = True
    if runtime.master and state.step % run.config["log_interval"] == 0:
        print_progress(run, state, mean_loss, lr, branch)
    run.clock.t_log, run.clock.tokens_log = time.perf_counter(), state.tokens
    return None


def print_progress(run, state, mean_loss, lr, branch):
    clock, world_size = run.clock, run.runtime.world_size
    dt = time.perf_counter() - clock.t_log
    tok_s = (state.tokens - clock.tokens_log) / dt
    peak = checked_peak(run, tok_s * run.flops_per_token / world_size)
    mfu = f" | MFU {100 * tok_s * run.flops_per_token / (peak * world_size):.1f}%" if peak else ""
    seconds_per_step = dt * run.tokens_per_step / (state.tokens - clock.tokens_log)
    end, where = (branch.budget, f"cooldown {branch.budget}: ") if branch else (run.total_steps, "")
    eta = f" | ETA {format_duration((end - state.step) * seconds_per_step)}" if end else ""
    print(f"{where}step {state.step}/{end or '?'} | loss {mean_loss:.4f} | lr {lr:.2e} | {tok_s / 1e3:.1f}k tok/s"
          f"{mfu}{eta}", flush=True)


def checked_peak(run, flops_per_s):
    """The peak for a progress line's MFU. On CPU the start-up probe may have run while another process loaded the
    machine: it then reads low, and a throughput above it (MFU over 100%) proves that. Then probe again and keep
    the larger (at most 3 times a run), leaving the probe's time out of the training time."""
    if run.peak and run.runtime.device_type == "cpu" and not run.config["peak_flops"] and flops_per_s > run.peak \
            and run.peak_probes_left:
        t0 = time.perf_counter()
        run.peak = max(run.peak, measure_cpu_peak(run.runtime.dtype_name))
        run.peak_probes_left -= 1
        run.clock.t_last += time.perf_counter() - t0
    return run.peak


@torch.no_grad()
def evaluate(run):
    """Mean loss (and accuracy on task rows) over the fixed validation batches, shared out between processes and
    summed, so it does not depend on the number of processes."""
    runtime, model = run.runtime, run.raw_model
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss x targets, correct, targets
    for x, y in run.val_batches[runtime.rank::runtime.world_size]:
        x, y = x.to(runtime.device), y.to(runtime.device)
        with runtime.autocast:
            logits, loss = model(x, y, return_logits=run.rows)  # logits for task accuracy only
        n = (y != -1).sum()
        sums[0] += float(loss) * float(n)
        sums[2] += float(n)
        if run.rows:
            sums[1] += float(((logits.argmax(-1) == y) & (y != -1)).sum())
    runtime.sum(sums)
    model.train()
    return sums[0].item() / sums[2].item(), (sums[1].item() / sums[2].item() if run.rows else None)


def record_evaluation(run, state, lr):
    """Evaluate, write the row, update the early-stopping counters; returns a status if the run should end."""
    config = run.config
    val_loss, val_acc = evaluate(run)
    write_row(run, state, val_loss, val_acc, lr)
    if not math.isfinite(val_loss):
        return "diverged"
    if val_acc is not None and val_acc >= 0.99 and state.step_val_acc_99 is None:
        state.step_val_acc_99 = state.step
    best = state.best_val_loss
    if best is None or val_loss < best - config["early_stopping_min_delta"]:
        state.evals_since_best = 0
    else:
        state.evals_since_best += 1
    state.best_val_loss = val_loss if best is None else min(best, val_loss)
    if run.runtime.master:
        acc = f" | val acc {val_acc:.4f}" if val_acc is not None else ""
        print(f"step {state.step}: val loss {val_loss:.4f}{acc}", flush=True)
    if config["early_stopping_patience"] and state.evals_since_best >= config["early_stopping_patience"]:
        return "early_stopped"
    if config["target_val_acc"] and val_acc is not None and val_acc >= config["target_val_acc"]:
        return "early_stopped"
    return None


def write_row(run, state, val_loss, val_acc, lr):
    """A metrics.csv row at this step (train_loss: the mean since the last row)."""
    train_loss, train_acc = state.train_means()
    row = {"step": state.step, "tokens": state.tokens, "flops": float(state.tokens * run.flops_per_token),
           "train_loss": train_loss, "val_loss": val_loss, "lr": lr, "elapsed_s": round(state.elapsed_s, 3)}
    if run.rows:
        row["train_acc"], row["val_acc"] = train_acc, val_acc
    state.start_row()
    state.last_row_step = state.step
    if run.runtime.master:
        results.append_metrics(run.metrics_file, run.columns, row)
        if run.wandb_run is not None:
            run.wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])


# ------------------------------------------------------------------------------------------- cooldown branches
@dataclass
class Branch:
    """A cooldown branch in progress, and the main run as it was at the branch point (put back at the end)."""
    budget: int  # the standalone run it stands for: budget steps, that run's schedule, that run's last row
    t0: float
    lr: float  # the main run's
    main: RunState
    model: dict
    optimizer: dict
    scaler: dict
    diverged: bool = False


def start_cooldown(run, state, budget, lr):
    """Checkpoint the main run at the branch point, keep a copy of it in memory, and train on towards budget."""
    t0 = time.perf_counter()
    save_run_checkpoint(run, state)  # a kill inside the branch resumes here and redoes the branch
    branch = Branch(budget, t0, lr, copy.deepcopy(state), copy.deepcopy(run.raw_model.state_dict()),
                    copy.deepcopy(run.optimizer.state_dict()), copy.deepcopy(run.scaler.state_dict()))
    state.loss_sum.zero_()
    state.acc_sum.zero_()
    state.start_row()
    state.steps_since_log = 0
    if run.runtime.master:
        print(f"cooldown {budget}: branching at step {state.step}", flush=True)
    return branch


def finish_cooldown(run, state, branch):
    """The annealed point (the last row a standalone run of the branch's budget writes), then back to the branch
    point. Returns the main run's LR."""
    val_loss, val_acc = (float("nan"), float("nan")) if branch.diverged else evaluate(run)
    row = {"step": state.step, "tokens": state.tokens, "flops": float(state.tokens * run.flops_per_token),
           "val_loss": val_loss, "train_loss": state.train_means()[0], "branch_from": branch.main.step,
           "branch_s": round(time.perf_counter() - branch.t0, 3)}
    if run.rows:
        row["val_acc"] = val_acc
    if run.runtime.master:
        run.anneal_rows.append(row)
        results.write_anneal(os.path.join(run.folder, "anneal.csv"), run.anneal_rows, run.anneal_columns)
        print(f"cooldown {branch.budget}: val loss {val_loss:.4f} ({row['branch_s']:.1f}s, not counted in "
              f"elapsed_s)", flush=True)
    lr = leave_cooldown(run, state, branch)
    run.clock.restart(state.tokens)  # the branch's time is not the main run's elapsed_s
    return lr


def leave_cooldown(run, state, branch):
    """Back to the branch point: model, optimizer, scaler, counters, loss sums, RNG streams and data position.
    Returns the main run's LR."""
    run.raw_model.load_state_dict(branch.model)
    run.optimizer.load_state_dict(branch.optimizer)
    run.scaler.load_state_dict(branch.scaler)
    vars(state).update(vars(branch.main))
    restore_rng(state.rng, run.batches)
    return branch.lr


# ------------------------------------------------------------------------------------------- checkpoint and end
def save_run_checkpoint(run, state):
    """ckpt.pt: model, optimizer, scaler, the counters, and every process's RNG streams and loss sums (they
    differ between processes). A collective under DDP: every process calls it at the same step."""
    runtime = run.runtime
    processes = runtime.gather({"rng": state.rng, "loss_sum": state.loss_sum.item(), "acc_sum": state.acc_sum.item()})
    if runtime.master:
        save_checkpoint(run.folder, {"model": run.raw_model.state_dict(), "optimizer": run.optimizer.state_dict(),
                                     "scaler": run.scaler.state_dict(), "dtype": runtime.dtype_name,
                                     "state": state.counters(), "processes": processes, "config": run.config})


def finish_run(run, state, status):
    """The last checkpoint (an interrupted run's always, so that the same command resumes; a finished run's
    unless it diverged or keep_ckpt=False), final.json, and the last line: what ended the run."""
    if status == "interrupted" or (run.config["keep_ckpt"] and status != "diverged"):
        save_run_checkpoint(run, state)  # collective under DDP: every process gets here with the same status
    if run.runtime.master:
        run.metrics_file.close()
        final, rows = write_final(run, state, status)
        print(last_line(run, state, final, rows), flush=True)
    if run.runtime.ddp:
        # no destroy_process_group: the DDP reducer would then free gloo's group later, and its destructor can
        # deadlock on the GIL with gloo's own thread (1 in 4 runs under load); train.py leaves by os._exit
        dist.barrier()


def write_final(run, state, status):
    """final.json (and the end of the wandb run); returns it and metrics.csv's rows."""
    config = run.config
    final = {"status": status, "steps": state.step, "tokens": state.tokens,
             "flops": float(state.tokens * run.flops_per_token), "elapsed_s": round(state.elapsed_s, 3),
             "final_val_loss": None, "best_val_loss": results.finite_or_none(state.best_val_loss),
             "step_val_acc_99": state.step_val_acc_99,
             "budget": "time_limit_s" if status == "time_limit" else binding_budget(run.budgets)}
    if config["cooldowns"]:  # the branches' wall-clock time, outside elapsed_s
        final["cooldown_s"] = round(sum(r.get("branch_s", 0.0) for r in run.anneal_rows), 3)
    rows = results.read_metrics(os.path.join(run.folder, "metrics.csv"))[0]
    if rows:
        final["final_val_loss"] = results.finite_or_none(rows[-1]["val_loss"])
    results.write_json(os.path.join(run.folder, "final.json"), final)
    if status in results.FINISHED and not config["keep_ckpt"]:
        for name in ("ckpt.pt", "ckpt.prev.pt"):
            if os.path.exists(os.path.join(run.folder, name)):
                os.remove(os.path.join(run.folder, name))
    if run.wandb_run is not None:
        run.wandb_run.summary.update(final)
        run.wandb_run.finish()
    return final, rows


def last_line(run, state, final, rows):
    config, status, key = run.config, final["status"], final["budget"]
    ended = f"ended by {key}={config[key]:g}" if status in ("completed", "time_limit") and key else \
        f"budget: {describe_budget(config, run.budgets)}"
    if not rows:
        loss = "no evaluation yet"
    elif rows[-1]["step"] == state.step:
        loss = f"final val loss {rows[-1]['val_loss']:.4f}"
    else:  # interrupted (or stopped) between evaluations: say whose loss this is
        loss = f"val loss {rows[-1]['val_loss']:.4f} at step {rows[-1]['step']} (the last evaluation)"
    return f"{status}: {state.step} steps ({ended}), {state.tokens:,} tokens, {loss}; results in {run.folder}"


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
        # leave without the interpreter's teardown: destroying gloo's process group and its threads at exit can
        # abort a finished run ("terminate called without an active exception"), which torchrun reports as failed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)
    sys.exit(exit_code)
