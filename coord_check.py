"""
muP coordinate check (Yang et al. 2022, Tensor Programs V; the check microsoft/mup ships): train a few steps at
several widths, in the standard parametrization (SP) and in muP, and record the mean absolute value of the
embedding output, the attention outputs, the MLP outputs and the logits at every step. Under muP every curve is
flat in width; under SP the ones that the updates drive (attention and MLP outputs, logits) grow with width.

    python coord_check.py                                        # widths 64..1024, 5 steps, random tokens
    python coord_check.py --widths 64,128,256 --steps 3 --out coord_check
    python coord_check.py --data stdlib                          # the embedded corpus (prepare.py's data/stdlib)
    python coord_check.py --optimizer sgd --lr 0.1 --activation=swiglu --num_threads=1   # any train.py key

Writes OUT/coord_check.png (one row per activation kind, SP left and muP right, x = width on a log scale, one
line per step) and OUT/coord_check.json, and prints the table with each curve's growth, widest / narrowest at
the last step. Models, parameter groups and learning rates come from train.py's own functions (resolve_config,
build_model, make_optimizer, and the training loop's lr = learning_rate * lr_mult), so this checks the
parametrization that training uses. n_head is fixed across widths (the muP convention: head size grows), the LR
is constant (no warmup, which would hide the first steps), and weight decay, dropout and clipping are off.
"""
import json
import os
import sys

import numpy as np
import torch

import train
from configurator import ArgumentParser, UserError, cli_main

KINDS = ("embedding", "attention", "mlp", "logits")
FIXED_KEYS = ("n_embd", "n_head", "n_layer", "use_mup", "mup_base_width", "optimizer", "learning_rate", "block_size",
              "batch_size", "lr_schedule", "warmup_iters", "warmup_frac", "weight_decay", "dropout", "grad_clip",
              "device", "dtype")
TITLES = {"embedding": "embedding output (block 0 input)", "attention": "attention output", "mlp": "MLP output",
          "logits": "logits"}


def run_config(width, use_mup, args, extra):
    """train.py's validated config for one model of the check (extra: --key=value train.py overrides)."""
    return train.resolve_config([
        f"--n_embd={width}", f"--n_head={args.n_head}", f"--n_layer={args.n_layer}", f"--use_mup={use_mup}",
        f"--mup_base_width={args.base_width}", f"--optimizer={args.optimizer}", f"--learning_rate={args.lr}",
        f"--block_size={args.block_size}", f"--batch_size={args.batch_size}", "--lr_schedule=constant",
        "--warmup_iters=0", "--warmup_frac=0", "--weight_decay=0", "--dropout=0", "--grad_clip=0",
        "--device=cpu", "--dtype=float32", *extra])


def record(model):
    """Forward hooks that store the mean |activation| of each kind in the returned dict at every forward."""
    seen = {}

    def hook(kind):
        def store(module, inputs, output):
            out = output[0] if kind == "logits" else output  # GPT.forward returns (logits, loss)
            seen.setdefault(kind, []).append(out.detach().abs().mean().item())
        return store

    # the embedding output is what enters the residual stream: token (x multipliers) + position embeddings
    model.blocks[0].register_forward_pre_hook(lambda module, args: hook("embedding")(module, None, args[0]))
    for block in model.blocks:
        block.attn.register_forward_hook(hook("attention"))
        block.mlp.register_forward_hook(hook("mlp"))
    model.register_forward_hook(hook("logits"))
    return seen


def batches(args, dataset, vocab_size, seed):
    """args.steps (x, y) batches, the same for every width and parametrization: uniform random tokens, or
    windows of the dataset's training split drawn as train.py draws them."""
    if dataset is None:
        gen = torch.Generator().manual_seed(seed)
        rows = [torch.randint(0, vocab_size, (args.batch_size, args.block_size + 1), generator=gen)
                for _ in range(args.steps)]
        return [(r[:, :-1], r[:, 1:]) for r in rows]
    source = train.TokenBatches(dataset["train"], args.block_size, seed)
    return [source.next(args.batch_size) for _ in range(args.steps)]


def check_model(config, vocab_size, data, seed):
    """Train config's model on data, one optimizer step per batch; {kind: [mean |activation| per step]}, the
    attention and MLP kinds averaged over layers. Step t is the forward pass after t - 1 updates."""
    torch.manual_seed(seed)
    model = train.build_model(config, vocab_size)
    optimizer = train.make_optimizer(model, config, "cpu")
    for group in optimizer.param_groups:
        group["lr"] = config["learning_rate"] * group["lr_mult"]  # what train.py's loop does at every step
    seen = record(model)
    for x, y in data:
        _, loss = model(x, y, return_logits=True)  # the logits are recorded
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    # (steps, calls per forward pass: one per layer for attention and MLP) -> mean per step
    return {kind: np.array(values).reshape(len(data), -1).mean(axis=1).tolist() for kind, values in seen.items()}


def collect(args, extra=(), progress=None):
    """{'sp'|'mup': {kind: array (steps, widths)}}, averaged over args.seeds seeds."""
    dataset, vocab_size = None, 257  # random tokens from the byte vocabulary of the embedded corpus
    if args.data != "random":
        from prepare import load_dataset
        dataset = load_dataset(args.data_dir, args.data)
        if dataset["meta"]["kind"] != "tokens":
            raise UserError(f"dataset '{args.data}' is a rows (task) dataset; the check needs a token stream")
        vocab_size = dataset["meta"]["vocab_size"]
    configs = {(use_mup, width): run_config(width, use_mup, args, extra)  # every config checked before training
               for use_mup in (False, True) for width in args.widths}
    if any(c["arch"] != "transformer" for c in configs.values()):
        raise UserError("the coordinate check is for arch='transformer' (muP is)")
    if configs[False, args.widths[0]]["num_threads"]:
        torch.set_num_threads(configs[False, args.widths[0]]["num_threads"])
    result = {"sp": {k: np.zeros((args.steps, len(args.widths))) for k in KINDS},
              "mup": {k: np.zeros((args.steps, len(args.widths))) for k in KINDS}}
    for seed in range(args.seed, args.seed + args.seeds):
        data = batches(args, dataset, vocab_size, seed)
        for param, use_mup in (("sp", False), ("mup", True)):
            for j, width in enumerate(args.widths):
                per_step = check_model(configs[use_mup, width], vocab_size, data, seed)
                for kind in KINDS:
                    result[param][kind][:, j] += np.array(per_step[kind]) / args.seeds
                if progress:
                    progress(f"seed {seed} {param} width {width}: logits {per_step['logits'][-1]:.3g}")
    return result


def growth(result):
    """{param: {kind: widest / narrowest at the last step}}."""
    return {param: {kind: float(v[-1, -1] / v[-1, 0]) for kind, v in kinds.items()}
            for param, kinds in result.items()}


def table(result, widths):
    lines = [f"{'kind':<10} {'param':<5} {'step':>4}  " + " ".join(f"{'w' + str(w):>9}" for w in widths) +
             f"  {'widest/narrowest':>16}"]
    for kind in KINDS:
        for param in ("sp", "mup"):
            v = result[param][kind]
            for t in range(v.shape[0]):
                lines.append(f"{kind:<10} {param:<5} {t + 1:>4}  " + " ".join(f"{x:9.3g}" for x in v[t]) +
                             f"  {v[t, -1] / v[t, 0]:16.2f}")
    return "\n".join(lines)


def plot(result, widths, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = result["sp"][KINDS[0]].shape[0]
    colors = plt.cm.viridis(np.linspace(0, 0.9, steps))
    fig, axes = plt.subplots(len(KINDS), 2, figsize=(10, 3.2 * len(KINDS)), sharex=True, squeeze=False)
    for i, kind in enumerate(KINDS):
        low = min(result[p][kind].min() for p in ("sp", "mup"))
        high = max(result[p][kind].max() for p in ("sp", "mup"))
        for col, (param, name) in enumerate((("sp", "SP"), ("mup", "muP"))):
            ax = axes[i, col]
            for t in range(steps):
                ax.plot(widths, result[param][kind][t], marker="o", color=colors[t], label=f"step {t + 1}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylim(low / 1.5, high * 1.5)  # SP and muP on the same scale, row by row
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.set_title(f"{name}: {TITLES[kind]}")
            ax.set_ylabel("mean |activation|")
            ax.grid(True, which="both", alpha=0.3)
            if i == len(KINDS) - 1:
                ax.set_xlabel("width (n_embd)")
            if i == 0 and col == 1:
                ax.legend(fontsize=8, loc="lower right", ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    p = ArgumentParser(prog="coord_check.py", description=__doc__.strip().splitlines()[0], allow_abbrev=False,
                       epilog="Other --key=value arguments are train.py config keys.")
    p.add_argument("--widths", default="64,128,256,512,1024", help="comma-separated n_embd values")
    p.add_argument("--steps", type=int, default=5, help="training steps (= recorded forward passes)")
    p.add_argument("--out", default="coord_check", help="folder for coord_check.png and coord_check.json")
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_head", type=int, default=4, help="fixed across widths")
    p.add_argument("--base_width", type=int, default=0, help="mup_base_width; 0 = the narrowest width")
    p.add_argument("--optimizer", default="adamw", help="adamw | adam | sgd")
    p.add_argument("--lr", type=float, default=1e-2, help="base learning rate (high, to make growth visible)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--block_size", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3, help="seeds averaged per point")
    p.add_argument("--seed", type=int, default=0, help="the first seed")
    p.add_argument("--data", default="random", help="random (uniform tokens, offline) or a dataset name")
    p.add_argument("--data_dir", default="data")
    args, extra = p.parse_known_args(argv)
    try:
        args.widths = sorted(int(w) for w in args.widths.split(","))
    except ValueError:
        raise UserError(f"--widths must be comma-separated integers, got {args.widths!r}")
    if len(args.widths) < 2 or args.steps < 1 or args.seeds < 1:
        raise UserError("need at least two widths, one step and one seed")
    args.base_width = args.base_width or args.widths[0]
    for e in extra:
        if not e.startswith("--") or "=" not in e:
            raise UserError(f"unrecognized argument {e!r}: train.py keys are given as --key=value")
        if e.split("=")[0][2:] in FIXED_KEYS:
            raise UserError(f"{e.split('=')[0]} is set by the check itself (see coord_check.py --help)")
    return args, extra


def run(argv):
    args, extra = parse_args(argv)
    result = collect(args, extra, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(table(result, args.widths))
    ratios = growth(result)
    print("growth widest/narrowest at the last step: " + "; ".join(
        f"{p.upper()} " + ", ".join(f"{k} {r:.2f}" for k, r in ratios[p].items()) for p in ("sp", "mup")))
    os.makedirs(args.out, exist_ok=True)
    title = (f"coordinate check: {args.optimizer} lr {args.lr:g}, {args.n_layer} layers, {args.n_head} heads, "
             f"muP base width {args.base_width}, {args.data} tokens, mean of {args.seeds} seeds")
    plot(result, args.widths, os.path.join(args.out, "coord_check.png"), title)
    with open(os.path.join(args.out, "coord_check.json"), "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items()}, "extra": list(extra), "growth": ratios,
                   **{p: {k: v.tolist() for k, v in kinds.items()} for p, kinds in result.items()}}, f, indent=1)
    print(f"wrote {os.path.join(args.out, 'coord_check.png')} and coord_check.json")
    return 0


def main(argv=None):
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
