"""
Analyze a folder of training runs: learning-rate sweeps, compute-equivalent gains (CEG) from annealed points
with t-intervals over seeds, their dependence on the LR and on scale, steps to 99% accuracy on task datasets,
and loss against any config key.

    python analyze.py results/                          # every study under results/
    python analyze.py results/ablations --baseline modern
    python analyze.py results/ablations --target 3.2 --width 64 --json ceg.json --csv tables/
    python analyze.py results/study --select_seeds 1 --measure_seeds 2,3,4   # LR chosen on seed 1 only
    python analyze.py results/lr_sweep --detailed       # every LR of every sweep, and every run
    python analyze.py results/ --vs learning_rate --by label   # loss vs LR per label, with the seed spread
    python analyze.py results/ --plots figs/ --verbose  # plots elsewhere; list skipped runs and warnings
    python analyze.py --coverage                        # simulated coverage of the t and bootstrap intervals

It reads the run folders under the folder (via results.py; damaged ones are counted and skipped, never a crash)
and, study by study, prints the runs read and skipped, the LR sweeps, one CEG table per (study, width, dataset):
the gain of the baseline over each variant, G = FLOPs the variant needs / FLOPs the baseline needs to reach the
target loss (> 1: the baseline is better; --invert: each variant over the baseline), the gain per LR and its LR
sensitivity, its scale dependence, steps to accuracy and --vs. --json FILE holds every number, --csv DIR the
tables, PNGs go to results/<study>/plots/ (or --plots DIR). Bad input: one line on stderr, exit status 2.
README.md, "Analysis", has every decision, plot and JSON field. The plot helpers (section "plots") serve
fit_scaling.py and progress.py too.
"""
import argparse
import csv
import dataclasses
import difflib
import json
import math
import os
import re
import sys

import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import scipy.stats

import results
from configurator import ArgumentParser, UserError, cli_main

CI_LEVEL = 0.95
N_BOOTSTRAP = 10000
ACC_TARGET = 0.99

# ----------------------------------------------------------------------------- reading runs


def as_float(v):
    """A float from a JSON or CSV value (NaN and infinities included), or None for anything else."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:  # a huge JSON integer
        return math.inf if v > 0 else -math.inf


def number_or_nan(v):
    v = as_float(v)
    return math.nan if v is None else v


def as_positive(v):
    v = as_float(v)
    return v if v is not None and math.isfinite(v) and v > 0 else None


def as_width(v):
    v = as_positive(v)
    return int(v) if v is not None and v.is_integer() else None


def as_step(v):
    """A step count: an int when it is a whole number, else a float; None when not finite."""
    v = as_float(v)
    if v is None or not math.isfinite(v):
        return None
    return int(v) if v.is_integer() else v


def as_key(v):
    """A hashable, printable grouping value from any JSON value."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)
    return json.dumps(v, sort_keys=True)


def order(v):
    """Sort key that puts numbers (ascending) before strings and None last, so mixed keys never fail."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v, "")
    return (1 if v is not None else 2, 0, str(v))


def config_value(config, derived, key):
    """A config key, or a "derived" one (n_params, flops_per_token ...) when the config has no such key."""
    if key in config:
        return config[key]
    return derived.get(key)


def run_label(config):
    """The run's label as a string (a hand-written number counts), or None."""
    label = config.get("label")
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = str(label)
    return label if isinstance(label, str) and label.strip() else None


def skip_reason(run):
    """Why a run folder is skipped before its metrics are read (None: it is not)."""
    config, final, status, problems = run["config"], run["final"], run["status"], run["problems"]
    if config is None:  # results.read_run names a missing or unparsable file; else it held no object
        return next((p for p in problems if "config.json" in p), "config.json is not a JSON object")
    if run_label(config) is None:
        return "config.json has no label (not a train.py run?)"
    if final is None:
        if os.path.exists(os.path.join(run["path"], "final.json")):
            return next((p for p in problems if "final.json" in p), "final.json is not a JSON object")
        return "running or killed (no final.json)"
    if status not in results.STATUSES:
        return "unknown status in final.json"
    if status == "interrupted":
        return "interrupted (run the same command again to resume it)"
    damaged = [p for p in problems if "metrics.csv" in p]
    if damaged and status != "diverged":
        return "damaged lines in metrics.csv" if "damaged line" in damaged[0] else damaged[0]
    return None


def column(rows, name):
    """One metrics column as floats (NaN where a row lacks it)."""
    return np.array([number_or_nan(r.get(name)) for r in rows], dtype=float)


def loss_curve(run):
    """(fields, None): a run's losses (final, best; inf when diverged), its curve (the rows with FLOPs > 0 and a
    finite loss), its annealed points and warnings; or (None, reason) when metrics.csv cannot give them."""
    step, flops, val = (column(run["metrics"], name) for name in ("step", "flops", "val_loss"))
    warnings = list(run["problems"])
    diverged = run["status"] == "diverged"
    if not diverged:
        if not np.isfinite(val).any():
            return None, "no finite val_loss in metrics.csv"
        if not math.isfinite(val[-1]):
            diverged = True
            warnings.append("last val_loss is not finite: counted as diverged")
        final_steps = as_float(run["final"].get("steps"))
        if final_steps is not None and math.isfinite(step[-1]) and step[-1] < final_steps:
            return None, "metrics.csv ends before final.json's last step (truncated?)"
    on_curve = np.isfinite(flops) & (flops > 0) & np.isfinite(val)
    if not diverged and not on_curve.any():
        return None, "no rows with positive flops in metrics.csv"
    if not diverged and not np.isfinite(val).all():
        warnings.append(f"{int((~np.isfinite(val)).sum())} row(s) with non-finite val_loss ignored")
    # annealed points (anneal.csv: the final loss of a standalone run of each cooldown budget)
    anneal = [(as_positive(a.get("flops")), number_or_nan(a.get("val_loss"))) for a in run["anneal"]]
    anneal_points = sorted((f, loss) for f, loss in anneal if f is not None and math.isfinite(loss))
    if len(anneal_points) < len(anneal):
        warnings.append(f"{len(anneal) - len(anneal_points)} anneal.csv row(s) without positive flops and a finite "
                        f"val_loss ignored")
    return {"diverged": diverged, "final_loss": math.inf if diverged else float(val[-1]),
            "best_loss": math.inf if diverged else float(val[np.isfinite(val)].min()),
            "last_step": as_step(np.nanmax(step)) if np.isfinite(step).any() else None,
            "flops": flops[on_curve], "loss": val[on_curve], "anneal": anneal_points,
            "final_flops": as_positive(flops[-1]) if len(flops) else None, "warnings": warnings}, None


def task_accuracy(run):
    """A run's accuracy fields: the first step at 99% validation accuracy and, when metrics.csv has accuracy
    columns, the final accuracies and the curves."""
    rows, final = run["metrics"], run["final"]
    step = column(rows, "step")
    if "step_val_acc_99" in final:
        step99 = as_float(final["step_val_acc_99"])
    else:  # a final.json from another writer: find the step in the metrics
        hit = np.nonzero(column(rows, "val_acc") >= ACC_TARGET)[0]
        step99 = float(step[hit[0]]) if len(hit) else None
    step99 = as_step(step99)
    has_acc = any("val_acc" in r for r in rows)
    curves = {"step": step, "train_acc": column(rows, "train_acc"), "val_acc": column(rows, "val_acc")}
    final_acc = {name: float(curves[name][-1]) if len(rows) and math.isfinite(curves[name][-1]) else None
                 for name in ("train_acc", "val_acc")}
    return {"final_acc": final_acc if has_acc else None, "acc": curves if has_acc else None,
            "task": has_acc or step99 is not None, "step_val_acc_99": step99}


def summarize_run(run):
    """(record, None) for a run the analysis can use, or (None, reason) for one it skips.
    A record holds the grouping keys, the loss curve (FLOPs > 0, finite loss) and the accuracy rows."""
    reason = skip_reason(run)
    if reason:
        return None, reason
    losses, reason = loss_curve(run)
    if reason:
        return None, reason
    config, derived = run["config"], run["derived"]
    folder_study = os.path.basename(os.path.dirname(os.path.normpath(run["path"])))  # results/<study>/<run>
    return {
        "path": run["path"], "name": run["name"], "config": config, "derived": derived,
        "study": as_key(config["study"]) if config.get("study") is not None else folder_study,
        "label": run_label(config), "arch": config["arch"] if isinstance(config.get("arch"), str) else "?",
        "width": as_width(config.get("n_embd")), "lr": as_positive(config.get("learning_rate")),
        "seed": as_key(config.get("seed")),
        "dataset": config["dataset"] if isinstance(config.get("dataset"), str) else "?",
        "status": run["status"], **losses,
        # the planned steps, which tell runs at several budgets apart
        "budget": as_step(derived.get("total_steps")) or losses["last_step"],
        **task_accuracy(run),
    }, None


def load_runs(root):
    """(records, skipped) for every run folder under root; skipped is a list of (path, reason)."""
    if not os.path.isdir(root):
        raise UserError(f"results folder not found: {root}")
    paths = results.find_runs(root)
    if not paths:
        raise UserError(f"no run folders under {root}: expected <study>/<run_name>/ folders holding "
                        f"config.json, metrics.csv and final.json (train.py writes them under results_dir)")
    records, skipped = [], []
    for path in paths:
        record, reason = summarize_run(results.read_run(path))
        if record is None:
            skipped.append((path, reason))
        else:
            record["rel"] = os.path.relpath(path, root) if os.path.normpath(path) != os.path.normpath(root) else path
            records.append(record)
    if not records:
        raise UserError(f"none of the {len(paths)} run folder(s) under {root} can be analysed: "
                        f"{skip_summary(skipped)}")
    return records, skipped


def skip_summary(skipped):
    counts = {}
    for _, reason in skipped:
        counts[reason] = counts.get(reason, 0) + 1
    return "; ".join(f"{n} {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def group(records, key):
    out = {}
    for r in records:
        out.setdefault(key(r), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: tuple(order(k) for k in kv[0])))


# config keys that may differ between runs of one variant without making them different experiments: how a run
# is executed, and what is per run by design (its seed and name, the LR being swept, where it ran)
PER_RUN_KEYS = set(results.EXECUTION_KEYS) | {"seed", "run_name", "learning_rate", "min_lr", "derived", "device",
                                              "time_limit_s"}


def differing_keys(runs):
    """Config keys (other than per-run ones) whose values differ between runs that are grouped together:
    a sign of mixed experiments under one label, e.g. use_mup on for some runs only."""
    keys = set().union(*(r["config"] for r in runs)) - PER_RUN_KEYS
    return sorted(k for k in keys if len({json.dumps(r["config"].get(k), sort_keys=True, default=str)
                                          for r in runs}) > 1)


def run_loss(record, metric):
    """The loss a run is ranked by: inf for a diverged run, so it ranks below every finite loss."""
    return record["best_loss"] if metric == "best" else record["final_loss"]


# ----------------------------------------------------------------------------- learning-rate sweeps


def lr_points(runs, metric):
    """Per learning rate: mean loss over its runs (inf when any run diverged), sorted by LR."""
    points = []
    for (lr,), rs in group(runs, lambda r: (r["lr"],)).items():
        losses = [run_loss(r, metric) for r in rs]
        finite = [v for v in losses if math.isfinite(v)]
        points.append({"lr": lr, "loss": float(np.mean(losses)) if all(map(math.isfinite, losses)) else math.inf,
                       "low": min(finite, default=math.inf), "high": max(finite, default=math.inf),  # seed range
                       "n_runs": len(rs), "n_diverged": sum(r["diverged"] for r in rs),
                       "seeds": sorted({r["seed"] for r in rs}, key=order), "runs": rs})
    return points


# config keys that set a run's length: runs of one variant that differ only in these are one experiment at
# several budgets (their final losses are annealed points)
BUDGET_KEYS = {"max_iters", "max_tokens", "max_flops", "tokens_per_param", "lr_decay_iters", "cooldowns"}


def selection_runs(runs):
    """The runs LRs are ranked on: when a variant was run at several budgets (total steps), those at the largest
    budget that every LR has, so that every LR is judged at one budget (all runs when they share none)."""
    budgets = {}
    for r in runs:
        budgets.setdefault(r["lr"], set()).add(r["budget"])
    common = set.intersection(*budgets.values()) if budgets else set()
    if len(set().union(*budgets.values())) <= 1 or not common:
        return runs
    largest = max((b for b in common if b is not None), default=None)
    return [r for r in runs if r["budget"] == largest] if largest is not None else runs


def parabola_vertex(xs, ys):
    """Vertex (x, y) of the parabola through three points, or None when it opens downward."""
    a, b, c = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 2)
    if not (np.isfinite([a, b, c]).all() and a > 0):
        return None
    x = -b / (2 * a)
    return float(x), float(c - b * b / (4 * a))


def best_lr(points):
    """Best LR of one sweep (points from lr_points, LRs not None), runner-up, parabola-refined optimum in
    log10(LR) through the best point and its two neighbours, and the edge flag."""
    lrs = [p["lr"] for p in points]
    losses = np.array([p["loss"] for p in points])
    row = {"n_lrs": len(points), "lrs": lrs, "losses": losses.tolist(), "best_lr": None, "best_val_loss": None,
           "runner_up_lr": None, "runner_up_loss": None, "refined_lr": None, "refined_loss": None,
           "at_edge": None, "widen_toward": None, "note": ""}
    if not np.isfinite(losses).any():
        row["note"] = "all diverged"
        return row
    ranked = np.argsort(losses, kind="stable")
    i = int(ranked[0])
    row["best_lr"], row["best_val_loss"] = lrs[i], float(losses[i])
    if len(points) >= 2:
        j = int(ranked[1])
        row["runner_up_lr"], row["runner_up_loss"] = lrs[j], float(losses[j])
        row["at_edge"] = i in (0, len(points) - 1)
        if row["at_edge"]:
            row["widen_toward"] = "larger" if i == len(points) - 1 else "smaller"
    notes = []
    if len(points) < 3:
        notes.append(f"too few points ({len(points)} LR{'s' if len(points) != 1 else ''})")
    if row["at_edge"]:
        notes.append(f"at edge: widen the sweep toward {row['widen_toward']} LR")
    elif len(points) >= 3:
        if np.isfinite(losses[i - 1:i + 2]).all():
            vertex = parabola_vertex(np.log10(lrs[i - 1:i + 2]), losses[i - 1:i + 2])
            if vertex:
                row["refined_lr"], row["refined_loss"] = 10 ** vertex[0], vertex[1]
        else:
            notes.append("a neighbour diverged: no refinement")
    row["note"] = "; ".join(notes)
    return row


def best_lr_table(records, metric):
    """One row per (study, label, arch, width) with learning rates."""
    table = []
    swept = [r for r in records if r["lr"] is not None and r["width"] is not None]
    for (study, label, arch, width), runs in group(swept, lambda r: (r["study"], r["label"], r["arch"],
                                                                     r["width"])).items():
        ranked = selection_runs(runs)
        points = lr_points(ranked, metric)
        row = {"study": study, "label": label, "arch": arch, "width": width, **best_lr(points),
               "loss_low": [p["low"] for p in points], "loss_high": [p["high"] for p in points],
               "n_runs": len(runs), "n_diverged": sum(r["diverged"] for r in runs),
               "seeds": sorted({r["seed"] for r in runs}, key=order)}
        unusual = sorted({r["status"] for r in runs} - {"completed", "diverged"})
        mixed = differing_keys(ranked)
        budget = f"ranked at the largest budget ({ranked[0]['budget']} steps)" if len(ranked) < len(runs) else ""
        row["note"] = "; ".join(filter(None, [row["note"], unusual and "includes " + ", ".join(unusual) + " runs",
                                              mixed and "runs differ in " + ", ".join(mixed[:5]), budget]))
        table.append(row)
    return table


def lr_trend(table):
    """Per (study, label, arch) with >= 2 widths: least-squares fit log10(best LR) = a + b * log10(width),
    on the grid best LRs, plus the slope from the refined LRs when every width has one."""
    trends = []
    swept = [r for r in table if r["best_lr"] is not None and r["n_lrs"] >= 2]  # one LR is not a sweep
    for (study, label, arch), rows in group(swept,
                                            lambda r: (r["study"], r["label"], r["arch"])).items():
        if len(rows) < 2:
            continue
        x = np.log10([r["width"] for r in rows])
        fit = scipy.stats.linregress(x, np.log10([r["best_lr"] for r in rows]))
        refined = [r["refined_lr"] for r in rows]
        b_refined = scipy.stats.linregress(x, np.log10(refined)).slope if all(refined) else None
        trends.append({"study": study, "label": label, "arch": arch, "widths": [r["width"] for r in rows],
                       "best_lrs": [r["best_lr"] for r in rows], "a": fit.intercept, "b": fit.slope,
                       "b_stderr": fit.stderr if len(rows) > 2 else None,  # two points: a line, no error
                       "b_refined": b_refined, "n_at_edge": sum(bool(r["at_edge"]) for r in rows)})
    return trends


# ----------------------------------------------------------------------------- compute-equivalent gain


def flops_to_target(flops, losses, target):
    """FLOPs at which a loss curve first reaches target: the loss is interpolated linearly in log(FLOPs)
    between the last point above target and the first at or below it. Returns (flops, bound):
    bound None for a found crossing; 'above' when the curve never reaches target (the true value is above the
    returned largest FLOPs); 'below' when the first point is already below target."""
    hit = np.nonzero(losses <= target)[0]
    if len(hit) == 0:
        return float(np.max(flops)), "above"
    i = hit[0]
    if i == 0:
        return float(flops[0]), None if losses[0] == target else "below"
    frac = (losses[i - 1] - target) / (losses[i - 1] - losses[i])
    log_f = math.log(flops[i - 1]) + frac * (math.log(flops[i]) - math.log(flops[i - 1]))
    return math.exp(log_f), None


def ratio_bound(bound_baseline, bound_variant):
    """Where the true FLOPs_B / FLOPs_A lies relative to the computed one: None (exact), 'lower' (the
    computed value is a lower bound), 'upper', or 'unknown'."""
    sides = set()
    if bound_baseline == "above" or bound_variant == "below":
        sides.add("lower")
    if bound_baseline == "below" or bound_variant == "above":
        sides.add("upper")
    return None if not sides else sides.pop() if len(sides) == 1 else "unknown"


def combine_bounds(bounds):
    sides = {b for b in bounds if b is not None}
    return None if not sides else sides.pop() if len(sides) == 1 else "unknown"


def bootstrap_ci(samples_b, samples_a=None, n_boot=N_BOOTSTRAP, level=CI_LEVEL, seed=0):
    """Percentile-bootstrap CI of mean(samples_b) - mean(samples_a). Paired data: pass the differences as
    samples_b and no samples_a (seeds resampled together); unpaired: each side resampled on its own."""
    rng = np.random.default_rng(seed)
    resample = lambda v: np.asarray(v, float)[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    means = resample(samples_b) - (resample(samples_a) if samples_a is not None else 0.0)
    q = (1 - level) / 2
    return float(np.quantile(means, q)), float(np.quantile(means, 1 - q))


def t_interval(values, level=CI_LEVEL):
    """Student-t interval (df = n - 1) on the mean of values; None below 2 values."""
    v = np.asarray(values, float)
    if len(v) < 2:
        return None
    half = scipy.stats.t.ppf((1 + level) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def welch_interval(b, a, level=CI_LEVEL):
    """t-interval on mean(b) - mean(a) for independent samples: Welch's df when both sides have 2 or more
    values, the pooled variance (df = n_b + n_a - 2) when one side has a single value. (interval, name)."""
    b, a = np.asarray(b, float), np.asarray(a, float)
    diff = b.mean() - a.mean()
    if len(b) >= 2 and len(a) >= 2:
        vb, va = b.var(ddof=1) / len(b), a.var(ddof=1) / len(a)
        se = math.sqrt(vb + va)
        df = (vb + va) ** 2 / (vb ** 2 / (len(b) - 1) + va ** 2 / (len(a) - 1)) if se > 0 else len(b) + len(a) - 2
        name = "Welch t-interval"
    elif len(b) + len(a) >= 3:
        pooled = (((b - b.mean()) ** 2).sum() + ((a - a.mean()) ** 2).sum()) / (len(b) + len(a) - 2)
        se, df, name = math.sqrt(pooled * (1 / len(b) + 1 / len(a))), len(b) + len(a) - 2, "pooled t-interval"
    else:
        return None, None
    half = scipy.stats.t.ppf((1 + level) / 2, df) * se
    return (float(diff - half), float(diff + half)), name


INTERVALS = ("t", "bootstrap")


def by_seed(runs):
    """{seed: run}, or None when a seed is missing or repeated (then runs cannot be paired)."""
    seeds = [r["seed"] for r in runs]
    return dict(zip(seeds, runs)) if None not in seeds and len(set(seeds)) == len(seeds) else None


def compare(baseline_runs, variant_runs, target, n_boot=N_BOOTSTRAP, interval="t"):
    """CEG = FLOPs_baseline / FLOPs_variant to reach a target loss (the variant over the baseline). Curves (dicts
    with seed, flops, loss) are paired by seed when both sides have distinct seeds in common; otherwise the sides
    are compared as independent samples (geometric-mean FLOPs of each). interval: 't' (default: a t-interval on
    the mean paired log CEG, df = n - 1) or 'bootstrap' (percentile bootstrap over seeds)."""
    seeded_b, seeded_a = by_seed(baseline_runs), by_seed(variant_runs)
    common = sorted(set(seeded_b) & set(seeded_a), key=order) if seeded_b and seeded_a else []
    cross = lambda runs: {i: flops_to_target(r["flops"], r["loss"], target) for i, r in runs.items()}
    fb = cross(seeded_b if common else dict(enumerate(baseline_runs)))
    fa = cross(seeded_a if common else dict(enumerate(variant_runs)))
    out = {"n_pairs": len(common), "ci_low": None, "ci_high": None, "interval": None, "per_seed": {}, "note": []}
    ci = None
    if common:
        log_ratio = [math.log(fb[s][0]) - math.log(fa[s][0]) for s in common]
        out["bound"] = combine_bounds([ratio_bound(fb[s][1], fa[s][1]) for s in common])
        out["per_seed"] = {str(s): math.exp(v) for s, v in zip(common, log_ratio)}
        center = float(np.mean(log_ratio))
        if len(common) >= 2:
            ci = t_interval(log_ratio) if interval == "t" else bootstrap_ci(log_ratio, n_boot=n_boot)
            name = "t-interval" if interval == "t" else "percentile bootstrap"
            out["interval_label"] = f"{CI_LEVEL:.0%} {name} over {len(common)} seeds"
        dropped = len(set(fb) | set(fa)) - len(common)
        if dropped:
            out["note"].append(f"{dropped} unpaired seed run(s) left out")
    else:  # no seed in common: compare the geometric means of the two sides
        lb, la = [math.log(f) for f, _ in fb.values()], [math.log(f) for f, _ in fa.values()]
        out["bound"] = combine_bounds([ratio_bound(b, a) for _, b in fb.values() for _, a in fa.values()])
        center = float(np.mean(lb) - np.mean(la))
        if interval == "t":
            ci, name = welch_interval(lb, la)
        elif len(lb) >= 2 or len(la) >= 2:
            ci, name = bootstrap_ci(lb, la, n_boot=n_boot), "percentile bootstrap"
        if ci:
            out["interval_label"] = f"{CI_LEVEL:.0%} {name}, unpaired ({len(lb)} vs {len(la)} runs)"
        paired = seeded_b and seeded_a
        out["note"].append("no common seeds: unpaired" if paired else "seeds missing or repeated: unpaired")
    out["ceg"] = math.exp(center)
    if ci and out["bound"] is None:
        out["ci_low"], out["ci_high"] = math.exp(ci[0]), math.exp(ci[1])
        out["interval"] = interval
    else:
        out["interval_label"] = ("no interval: a bound" if ci else
                                 "no interval: 1 seed (an interval needs 2 or more)")
    if max(len(fa), len(fb)) == 1 or len(common) == 1:
        out["note"].append("1 seed: no interval")
    never = sum(b == "above" for _, b in fa.values())
    if never:
        out["note"].append(f"{never} of {len(fa)} run(s) never reach the target")
    out["flops_to_target"] = math.exp(np.mean([math.log(f) for f, _ in fa.values()]))
    out["flops_bound"] = combine_bounds([{"above": "lower", "below": "upper"}.get(b) for _, b in fa.values()])
    return out


FLIP = {None: None, "lower": "upper", "upper": "lower", "unknown": "unknown"}


def gain_fields(result, label, baseline, invert):
    """The gain in the toolkit's convention: G of X over Y = FLOPs Y needs / FLOPs X needs (> 1: X is better).
    Default X = the baseline, Y = the variant (so an ablation's row is the innovation's gain); invert: the
    variant over the baseline. result holds compare()'s ceg (the variant over the baseline)."""
    ceg, low, high = result["ceg"], result["ci_low"], result["ci_high"]
    if invert:
        return {"gain": ceg, "gain_low": low, "gain_high": high, "gain_bound": result["bound"],
                "gain_of": label, "gain_over": baseline}
    return {"gain": 1 / ceg, "gain_low": 1 / high if high else None, "gain_high": 1 / low if low else None,
            "gain_bound": FLIP[result["bound"]], "gain_of": baseline, "gain_over": label}


def default_baseline(labels):
    for name in ("baseline", "modern"):
        if name in labels:
            return name
    return sorted(labels)[0]


def choose_lr(runs, metric, select_seeds=None):
    """(LR, number of LRs, seeds it was chosen on, note) for one variant: the LR with the best mean loss over
    seeds (over the runs of select_seeds only, when given; at the largest budget every LR has). When every LR
    has a diverged seed: the LR with the fewest diverged runs, then the lowest mean finite loss. LR None: no
    choice possible (note says why)."""
    lrs = sorted({r["lr"] for r in runs}, key=order)
    if len(lrs) == 1:  # nothing to choose
        return lrs[0], 1, set(), ""
    pool = runs if select_seeds is None else [r for r in runs if r["seed"] in select_seeds]
    if not pool:
        return None, len(lrs), set(), "no runs of the --select_seeds to choose its LR on, left out"
    points = lr_points(selection_runs(pool), metric)
    finite = [p for p in points if math.isfinite(p["loss"])]
    if finite:
        best = min(finite, key=lambda p: p["loss"])
    else:
        mean_finite = lambda p: np.mean([v for v in (run_loss(r, metric) for r in p["runs"]) if math.isfinite(v)]
                                        or [math.inf])
        best = min(points, key=lambda p: (p["n_diverged"] / p["n_runs"], mean_finite(p)))
        if best["n_diverged"] == best["n_runs"]:
            return None, len(lrs), set(), "every run diverged, left out"
    return best["lr"], len(lrs), {r["seed"] for r in pool}, ""


def annealed_points(run):
    """A run's annealed (flops, loss) points: its anneal.csv rows, and its own final point when it completed its
    schedule (a run stopped early or by a time limit ended mid-schedule)."""
    points = list(run["anneal"])
    if run["status"] == "completed" and run["final_flops"] is not None and math.isfinite(run["final_loss"]):
        points.append((run["final_flops"], run["final_loss"]))
    return points


def seed_curves(runs, method):
    """One loss curve per seed, as dicts {seed, flops, loss, runs}. annealed: every annealed point of the seed's
    runs (cooldown branches, and the final points of runs at several budgets), sorted by FLOPs, a budget seen
    twice averaged; curve: the evaluations of the seed's longest run. Runs without a seed are their own curve."""
    curves = []
    for _, rs in group(runs, lambda r: (r["seed"] if r["seed"] is not None else r["path"],)).items():
        if method == "annealed":
            points = {}
            for r in rs:
                for f, loss in annealed_points(r):
                    points.setdefault(f, []).append(loss)
            flops = sorted(points)
            curves.append({"seed": rs[0]["seed"], "flops": np.array(flops, float),
                           "loss": np.array([np.mean(points[f]) for f in flops], float), "runs": rs})
        else:
            longest = max(r["flops"].max() for r in rs)
            curves += [{"seed": r["seed"], "flops": r["flops"], "loss": r["loss"], "runs": [r]}
                       for r in rs if r["flops"].max() == longest]
    return curves


def seed_key(r):
    return r["seed"] if r["seed"] is not None else r["path"]


def measure_side(runs, method):
    """(curves, notes, diverged seeds, seeds) for one side of a comparison: seeds with a diverged run are left
    out (and counted), annealed curves with fewer than 2 points too."""
    seeds = {seed_key(r) for r in runs}
    diverged = {seed_key(r) for r in runs if r["diverged"]}
    notes = [f"{len(diverged)} of {len(seeds)} seeds diverged (the gain uses the finite ones)"] if diverged else []
    curves = seed_curves([r for r in runs if seed_key(r) not in diverged], method)
    if method == "annealed":
        short = [c for c in curves if len(c["flops"]) < 2]
        curves = [c for c in curves if len(c["flops"]) >= 2]
        if short and curves:
            notes.append(f"{plural(len(short), 'seed')} with fewer than 2 annealed points left out")
    return curves, notes, len(diverged), len(seeds)


def has_annealed(runs):
    """Whether a variant's runs give annealed curves (2 or more annealed points for some finite seed)."""
    return any(len(c["flops"]) >= 2 for c in seed_curves([r for r in runs if not r["diverged"]], "annealed"))


def default_target(curves):
    """The lowest loss every compared curve reaches (the largest of the curves' minimum losses)."""
    return max(float(c["loss"].min()) for c in curves)


def at_lr(runs, lr, measure_seeds):
    return [r for r in runs if r["lr"] == lr and (measure_seeds is None or r["seed"] in measure_seeds)]


@dataclasses.dataclass
class CegSettings:
    """How the CEG tables are measured: ceg_tables' arguments (the command line's flags of the same names)."""
    metric: str          # 'final' or 'best': the loss a run is ranked by
    target: float        # the target loss; None: each table's default
    n_boot: int          # bootstrap resamples
    method: str          # 'annealed' or 'curve'
    interval: str        # 't' or 'bootstrap'
    invert: bool         # print each variant over the baseline
    select_seeds: list   # choose each variant's LR on these seeds only (None: all)
    measure_seeds: set   # measure the gains on these seeds only (None: all)
    per_lr: bool         # the gain at every shared LR even when the sides share fewer than 2


def ceg_tables(records, metric="final", baseline=None, target=None, width=None, n_boot=N_BOOTSTRAP,
               method="annealed", interval="t", invert=False, select_seeds=None, measure_seeds=None, per_lr=False):
    """One table per (study, width, dataset) with at least two variants: every variant against the baseline.
    Runs on different datasets are never compared (a grokking study has one table per task).
    select_seeds / measure_seeds: choose each variant's LR on the runs of some seeds and measure the gain on
    others (measure_seeds defaults to the seeds not selected on)."""
    if baseline is not None and not any(r["label"] == baseline for r in records):
        raise UserError(f"--baseline {baseline}: no run has that label; labels: "
                        f"{', '.join(sorted({r['label'] for r in records}))}")
    if width is not None and not any(r["width"] == width for r in records):
        raise UserError(f"--width {width}: no run has n_embd={width}; widths: "
                        f"{', '.join(map(str, sorted({r['width'] for r in records if r['width']})))}")
    if select_seeds is not None and measure_seeds is None:
        measure_seeds = {r["seed"] for r in records} - set(select_seeds)
    how = CegSettings(metric, target, n_boot, method, interval, invert, select_seeds, measure_seeds, per_lr)
    tables = []
    for (study,), study_runs in group(records, lambda r: (r["study"],)).items():
        base_label = baseline or default_baseline({r["label"] for r in study_runs})
        if not any(r["label"] == base_label for r in study_runs):
            tables.append({"study": study, "width": None, "baseline": base_label, "baseline_default": False,
                           "rows": [], "variants": {}, "notes": [f"no runs of baseline '{base_label}': no CEG"]})
            continue
        several_datasets = len({r["dataset"] for r in study_runs}) > 1
        for (w, ds), runs in group(study_runs, lambda r: (r["width"], r["dataset"])).items():
            variants = group(runs, lambda r: (r["label"], r["arch"]))
            if w is not None and width in (None, w) and len(variants) >= 2:
                table = {"study": study, "width": w, "dataset": ds if several_datasets else None,
                         "baseline": base_label, "baseline_default": baseline is None}
                tables.append(ceg_table(table, variants, how))
    return tables


def ceg_table(table, variants, how):
    """Fill one CEG table (study, width, dataset, baseline given): each variant at its chosen LR against the
    baseline at the table's target, then the per-LR gains and the LR sensitivity. Its notes say what was left out."""
    table.update(invert=how.invert, rows=[], notes=[], variants={}, per_lr=[], sensitivity=[], winners_curse=[])
    base_label = table["baseline"]
    if not any(label == base_label for label, _ in variants):
        table["notes"].append(f"no runs of baseline '{base_label}' at this width: no CEG")
        return table
    chosen = choose_variants(table, variants, how)
    base_keys = [k for k in chosen if k[0] == base_label]
    if not base_keys:
        table["notes"].append(f"baseline '{base_label}': every run diverged: no CEG")
        return table
    if len(base_keys) > 1:
        table["notes"].append(f"baseline '{base_label}' has several archs; using {base_keys[0][1]}")
    base_key = base_keys[0]
    table.update(table_method(chosen, how.method))
    for key, v in list(chosen.items()):
        v["curves"], v["notes"], v["n_diverged"], v["n_seeds_run"] = measure_side(v["runs"], table["method"])
        if not v["curves"]:
            table["notes"].append(f"{key[0]}: no seed without a diverged run, left out")
            del chosen[key]
    if base_key not in chosen:
        table["notes"].append(f"baseline '{base_label}': no usable seed: no CEG")
        return table
    base = chosen[base_key]
    table["target"] = how.target if how.target is not None else default_target([c for v in chosen.values()
                                                                             for c in v["curves"]])
    table["target_default"] = how.target is None
    table["variants"] = chosen
    # the width's compute scale for the scale-dependence fit: the training FLOPs of the baseline's longest runs
    table["compute"] = math.exp(np.mean([math.log(max(r["flops"].max() for r in c["runs"])) for c in base["curves"]]))
    table["winners_curse"] = [label for (label, _), v in chosen.items() if v["winners_curse"]]
    labels = [label for label, _ in chosen]
    name = lambda label, arch: f"{label}/{arch}" if labels.count(label) > 1 else label
    rows = [gain_row(table, key, base_key, how, name) for key in chosen]
    table["rows"] = sorted(rows, key=lambda r: (r["bound"] == "unknown", -r["gain"]))
    shared = lambda v: {r["lr"] for r in v["all_runs"]} & {r["lr"] for r in base["all_runs"]}
    if how.per_lr or any(len(shared(v)) >= 2 for k, v in chosen.items() if k != base_key):
        table["per_lr"] = per_lr_rows(table, base_key, how, name)
    table["sensitivity"] = sensitivity_rows(table, base_key, how, name)
    return table


def choose_variants(table, variants, how):
    """Each variant (label, arch) at its chosen LR: {key: {lr, n_lrs, runs (those that measure the gain),
    all_runs, winners_curse}}. A variant that cannot be measured is left out, with a note in the table."""
    chosen = {}
    for (label, arch), rs in variants.items():
        lr, n_lrs, chosen_on, why = choose_lr(rs, how.metric, how.select_seeds)
        measured = at_lr(rs, lr, how.measure_seeds) if lr is not None else []
        if lr is not None and not measured:
            why = f"no runs of the --measure_seeds at its chosen LR {fmt(lr, '.2e')}, left out"
        if why:
            table["notes"].append(f"{label}: {why}")
            continue
        if all(r["diverged"] for r in measured):
            every = all(r["diverged"] for r in rs)
            table["notes"].append(f"{label}: every run{'' if every else ' at its LR'} diverged, left out")
            continue
        chosen[(label, arch)] = {"lr": lr, "n_lrs": n_lrs, "runs": measured, "all_runs": rs,
                                 "winners_curse": n_lrs > 1 and bool(chosen_on & {r["seed"] for r in measured})}
        mixed = [k for k in differing_keys(measured) if k not in BUDGET_KEYS]
        if mixed:
            table["notes"].append(f"{label}: its runs differ in {', '.join(mixed[:5])}")
    return chosen


def table_method(chosen, method):
    """A table's method: 'annealed' when every variant has annealed points, else the mid-schedule 'curve' (a
    fallback, with the reason, when annealed was asked for)."""
    lacking = [label for (label, _), v in chosen.items() if not has_annealed(v["runs"])]
    out = {"method": "annealed" if method == "annealed" and not lacking else "curve",
           "method_fallback": method == "annealed" and bool(lacking)}
    if out["method_fallback"]:
        out["method_why"] = (", ".join(lacking[:4]) + (" ..." if len(lacking) > 4 else "") +
                             f" {'has' if len(lacking) == 1 else 'have'} one budget per seed and no anneal.csv")
    return out


def gain_row(table, key, base_key, how, name):
    """One row of a CEG table: the variant `key` against the baseline, each at its chosen LR, in both conventions
    (compare()'s ceg of the variant over the baseline, and gain_fields' printed direction)."""
    (label, arch), v, base = key, table["variants"][key], table["variants"][base_key]
    result = compare(base["curves"], v["curves"], table["target"], n_boot=how.n_boot, interval=how.interval)
    if key == base_key:  # itself: exactly 1, nothing to estimate
        result.update(ci_low=None, ci_high=None, bound=None, interval=None, interval_label="the baseline itself",
                      note=[n for n in result["note"] if "never" in n])
    result["note"] = "; ".join(v["notes"] + result["note"])
    return {"study": table["study"], "width": table["width"], "dataset": table.get("dataset"),
            "label": name(label, arch), "arch": arch, "baseline": table["baseline"], "is_baseline": key == base_key,
            "learning_rate": v["lr"], "n_lrs": v["n_lrs"], "target_loss": table["target"],
            "n_seeds": len(v["curves"]), "n_diverged": v["n_diverged"], "method": table["method"],
            "winners_curse": v["winners_curse"], **result,
            **gain_fields(result, name(label, arch), table["baseline"], table["invert"])}


def one_gain(base_curves, curves, target, how, label, base_label):
    result = compare(base_curves, curves, target, n_boot=how.n_boot, interval=how.interval)
    return {**result, "note": "; ".join(result["note"]), **gain_fields(result, label, base_label, how.invert)}


def per_lr_rows(table, base_key, how, name):
    """Does the gain depend on the LR? Per variant and per LR both it and the baseline were run at: the two
    paired by seed at that LR (every seed: nothing is chosen here; target: --target, else the lowest loss both
    reach at that LR), then the tuned pair (each at its chosen LR, as measured in the main table)."""
    rows, chosen = [], table["variants"]
    base = chosen[base_key]
    for (label, arch), v in chosen.items():
        if (label, arch) == base_key:
            continue
        for lr in sorted({r["lr"] for r in v["all_runs"]} & {r["lr"] for r in base["all_runs"]}, key=order):
            b, nb, _, _ = measure_side(at_lr(base["all_runs"], lr, None), table["method"])
            c, nc, _, _ = measure_side(at_lr(v["all_runs"], lr, None), table["method"])
            row = {"label": name(label, arch), "baseline": table["baseline"], "learning_rate": lr, "tuned": False}
            if not b or not c:
                rows.append({**row, "gain": None, "note": "diverged" if not (b or c) else
                             f"{'baseline' if not b else 'variant'} diverged"})
                continue
            t = how.target if how.target is not None else default_target(b + c)
            rows.append({**row, "target_loss": t, **one_gain(b, c, t, how, row["label"], table["baseline"])})
            rows[-1]["note"] = "; ".join(filter(None, nb + nc + [rows[-1]["note"]]))
        tuned = next(r for r in table["rows"] if r["label"] == name(label, arch))
        rows.append({**tuned, "learning_rate": v["lr"], "baseline_lr": base["lr"], "tuned": True})
    return rows


def sensitivity_rows(table, base_key, how, name):
    """LR sensitivity: per variant with an LR grid, the gain (at the table's target, against the baseline at its
    chosen LR) when the variant runs at the neighbouring grid LRs instead of its chosen one. For the baseline
    row: the baseline at its chosen LR over itself at its neighbours (how much worse it gets there). Every seed
    that ran both is paired (with --measure_seeds the neighbouring LRs may have run on the other seeds only)."""
    rows, chosen = [], table["variants"]
    base = chosen[base_key]
    base_curves, _, _, _ = measure_side(at_lr(base["all_runs"], base["lr"], None), table["method"])
    for (label, arch), v in chosen.items():
        lrs = sorted({r["lr"] for r in v["all_runs"]}, key=order)
        if len(lrs) < 2:
            continue
        i = lrs.index(v["lr"])
        main = next(r for r in table["rows"] if r["label"] == name(label, arch))
        row = {"label": name(label, arch), "is_baseline": (label, arch) == base_key, "learning_rate": v["lr"],
               "gain": main["gain"], "gain_bound": main["gain_bound"], "neighbours": []}
        for lr in [lrs[j] for j in (i - 1, i + 1) if 0 <= j < len(lrs)]:
            curves, _, n_div, n_seeds = measure_side(at_lr(v["all_runs"], lr, None), table["method"])
            if not curves:
                row["neighbours"].append({"learning_rate": lr, "gain": None, "note": "diverged"})
                continue
            g = one_gain(base_curves, curves, table["target"], how, row["label"], table["baseline"])
            row["neighbours"].append({"learning_rate": lr, **{k: g[k] for k in (
                "gain", "gain_low", "gain_high", "gain_bound", "n_pairs")},
                "note": f"{n_div} of {n_seeds} seeds diverged" if n_div else ""})
        rows.append(row)
    return rows


BOUND_PREFIX = {None: "", "lower": ">", "upper": "<", "unknown": "?"}


def where_dataset(table):
    return f", {table['dataset']}" if table.get("dataset") else ""


def file_dataset(table):
    return f"_{table['dataset']}" if table.get("dataset") else ""


def format_ceg(row):
    """The gain of a row as printed: '1.23x', '>1.80x' (a lower bound), '?' bounds both ways."""
    if row.get("gain") is None:
        return "-"
    return f"{BOUND_PREFIX[row['gain_bound']]}{row['gain']:.2f}x"


def format_interval(row):
    return f"[{row['gain_low']:.2f}, {row['gain_high']:.2f}]" if row.get("gain_low") is not None else "-"


def gain_header(table):
    """What the table's gains mean, naming both sides (the toolkit's one convention)."""
    b = table["baseline"]
    if table["invert"]:
        return (f"gain of each variant over '{b}' = FLOPs '{b}' needs / FLOPs the variant needs to reach the "
                f"target; > 1 means the variant is better (needs less compute)")
    return (f"gain of '{b}' over each variant = FLOPs the variant needs / FLOPs '{b}' needs to reach the target; "
            f"> 1 means '{b}' is better (needs less compute): for an ablation, the ablated innovation's gain; "
            f"--invert for each variant over '{b}'")


def method_header(table):
    if table["method"] == "annealed":
        return ("method: annealed points (final losses of cooldown branches and of whole runs at each budget); "
                "FLOPs to the target interpolated in log-FLOPs between the bracketing points")
    why = (f"a fallback: no annealed points, {table['method_why']}" if table.get("method_fallback")
           else "--method curve")
    return (f"method: MID-SCHEDULE ESTIMATE ({why}): FLOPs where one run's evaluation curve first crosses the "
            f"target, with the LR still high there; cooldowns (or runs at several budgets) give annealed points")


def interval_header(rows, interval):
    """The interval line of a table: which interval, over how many seeds ("95% t-interval over 3 seeds")."""
    ns = sorted({r["n_pairs"] for r in rows if r.get("interval") and r["n_pairs"]})
    unpaired = sorted({r["interval_label"] for r in rows if r.get("interval") and not r["n_pairs"]})
    if not ns and not unpaired:
        return "interval: none (fewer than 2 seeds, or bounds)"
    if not ns:
        return "interval: " + "; ".join(unpaired)
    name = "t-interval" if interval == "t" else "percentile bootstrap"
    over = f"over {plural(ns[0], 'seed')}" if len(ns) == 1 else "over each row's paired seeds"
    how = ("t with n-1 df on the mean paired log gain" if interval == "t" else
           "resampled seeds; covers less than 95% with few seeds: README Analysis")
    return f"interval: {CI_LEVEL:.0%} {name} {over} ({how})" + ("; " + ", ".join(unpaired) if unpaired else "")


# ----------------------------------------------------------------------------- scale dependence


def scale_table(tables):
    """Per comparison (study, dataset, variant) measured at 2 or more widths: the gain against compute and the
    fitted slope b = d log(gain) / d log(C), C = the training FLOPs of the baseline's longest runs at that width
    (a design variable: the seed noise is all in the gains, none in C). Ordinary least squares over the per-seed
    log gains (each seed's runs at each width are independent runs: the unit of replication), with a t-interval
    on b (df = N - 2). Widths whose gain is a bound are left out."""
    out = []
    rows = [(t, r) for t in tables for r in t["rows"] if not r["is_baseline"] and t["width"] is not None]
    for (study, ds, label), group_rows in group(rows, lambda tr: (tr[0]["study"], tr[0].get("dataset"),
                                                                  tr[1]["label"])).items():
        widths, x, y, notes = [], [], [], []
        for t, r in sorted(group_rows, key=lambda tr: tr[0]["width"]):
            if r["bound"] is not None:
                notes.append(f"width {t['width']}: a bound, left out")
                continue
            per_seed = [v if r["gain_of"] == label else 1 / v for v in r["per_seed"].values()] or [r["gain"]]
            widths.append({"width": t["width"], "compute": t["compute"], "gain": r["gain"],
                           "gain_low": r["gain_low"], "gain_high": r["gain_high"], "n_seeds": len(per_seed),
                           "per_seed": per_seed})
            x += [math.log10(t["compute"])] * len(per_seed)
            y += [math.log10(g) for g in per_seed]
        row = {"study": study, "dataset": ds, "label": label, "baseline": group_rows[0][1]["baseline"],
               "gain_of": group_rows[0][1]["gain_of"], "gain_over": group_rows[0][1]["gain_over"],
               "widths": widths, "n_points": len(y), "slope": None, "slope_low": None, "slope_high": None,
               "verdict": None, "note": "; ".join(notes)}
        if len(widths) >= 2:
            if len(y) >= 3 and len(set(x)) >= 2:
                fit = scipy.stats.linregress(x, y)
                half = scipy.stats.t.ppf((1 + CI_LEVEL) / 2, len(y) - 2) * fit.stderr
                row.update(slope=fit.slope, intercept=fit.intercept, slope_low=fit.slope - half,
                           slope_high=fit.slope + half)
                row["verdict"] = ("scale-invariant within its interval" if row["slope_low"] <= 0 <= row["slope_high"]
                                  else "grows with compute" if fit.slope > 0 else "shrinks with compute")
            else:
                why = "every width has the same compute" if len(set(x)) < 2 else "too few seed points (3 needed)"
                row["note"] = "; ".join(filter(None, [row["note"], f"no slope: {why}"]))
            out.append(row)
    return out


def print_scale(rows):
    for (study,), rs in group(rows, lambda r: (r["study"],)).items():
        print(f"\n== {study}: scale dependence: each gain against compute ==")
        print("slope b = d log(gain) / d log(C), C = training FLOPs of the baseline's longest runs at each width; "
              "least squares over per-seed log gains (each seed's runs at each width are the independent unit), "
              f"{CI_LEVEL:.0%} t-interval on b with N-2 df; b = 0: the same gain at every compute")
        print_table(["comparison", "dataset", "gain at each width", "seed points", "slope b", "interval", "verdict",
                     "note"],
                    [[f"{r['gain_of']} over {r['gain_over']}", r["dataset"] or "-",
                      ", ".join(f"{w['width']}: {w['gain']:.2f}x" for w in r["widths"]), r["n_points"],
                      fmt(r["slope"], "+.3f"),
                      f"[{r['slope_low']:+.3f}, {r['slope_high']:+.3f}]" if r["slope_low"] is not None else "-",
                      r["verdict"] or "-", r["note"]] for r in rs])


def plot_scale(study, rows, folder, written):
    rows = [r for r in rows if r["widths"]]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7.5, 5))
    computes = []
    for c, r in zip(colors(len(rows)), rows):
        cs = np.array([w["compute"] for w in r["widths"]])
        computes += list(cs)
        for w in r["widths"]:
            ax.plot([w["compute"]] * len(w["per_seed"]), w["per_seed"], ".", color=c, alpha=0.5, ms=5)
            if w["gain_low"] is not None:
                ax.errorbar(w["compute"], w["gain"], yerr=[[w["gain"] - w["gain_low"]], [w["gain_high"] - w["gain"]]],
                            fmt="none", ecolor=c, capsize=3, lw=1)
        verdict = (f"b = {r['slope']:+.2f} [{r['slope_low']:+.2f}, {r['slope_high']:+.2f}]: {r['verdict']}"
                   if r["slope_low"] is not None else "no interval")
        ax.plot(cs, [w["gain"] for w in r["widths"]], "o", color=c, ms=6,
                label=plot_label(f"{r['gain_of']} over {r['gain_over']}: {verdict}"))
        if r["slope"] is not None:
            xs = np.geomspace(cs.min(), cs.max(), 20)
            ax.plot(xs, 10 ** (r["intercept"] + r["slope"] * np.log10(xs)), "-", color=c, lw=1)
        for w in r["widths"]:
            ax.annotate(f"w{w['width']}", (w["compute"], w["gain"]), xytext=(4, -10), textcoords="offset points",
                        fontsize=7, color=c)
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    log_ticks(ax, "x", min(computes), max(computes))
    lo, hi = ax.get_ylim()
    gain_ticks(ax, lo, hi, "y")
    ax.set_ylim(lo, hi)
    ax.set_xlabel("compute C: training FLOPs of the baseline's longest runs at that width (log scale)")
    ax.set_ylabel("gain (log scale; > 1: the first-named side needs less compute)")
    ax.set_title(plot_label(f"{study}: scale dependence of each gain\ndots: seeds; whiskers: {CI_LEVEL:.0%} "
                            f"t-interval over seeds; line: least-squares fit over seeds"), fontsize=10)
    style(ax, legend=7)
    save(fig, os.path.join(folder, "scale_dependence.png"), written)


# ----------------------------------------------------------------------------- coverage of the intervals


def interval_coverage(n_seeds, interval="t", gain=1.5, sigma=0.2, replications=2000, seed=0, n_boot=N_BOOTSTRAP):
    """Fraction of simulated studies whose interval covers the true gain. Each study has n_seeds seeds; per seed
    the baseline's annealed curve has its own lognormal scatter and the variant reaches every loss with
    gain x lognormal(0, sigma) times less compute (the seed scatter of the paired gain). Each study goes through
    compare() as a real one does."""
    rng = np.random.default_rng(seed)
    flops = 1e12 * 2.0 ** np.arange(8)
    loss = 4.0 - 0.2 * np.arange(8)  # linear in log FLOPs: the crossings are exact, only the seeds scatter
    covered = 0
    for _ in range(replications):
        base_scale = np.exp(rng.normal(0, sigma, n_seeds))
        shift = gain * np.exp(rng.normal(0, sigma, n_seeds))
        base = [{"seed": s, "flops": flops * base_scale[s], "loss": loss} for s in range(n_seeds)]
        variant = [{"seed": s, "flops": flops * base_scale[s] / shift[s], "loss": loss} for s in range(n_seeds)]
        out = compare(base, variant, target=3.3, n_boot=n_boot, interval=interval)
        covered += out["ci_low"] is not None and out["ci_low"] <= gain <= out["ci_high"]
    return covered / replications


def coverage_table(seeds=(2, 3, 5), replications=2000, gain=1.5, sigma=0.2):
    return [{"n_seeds": n, "interval": kind, "coverage": interval_coverage(n, kind, gain, sigma, replications)}
            for n in seeds for kind in INTERVALS]


def print_coverage(rows, replications, gain, sigma):
    print(f"coverage of the nominal {CI_LEVEL:.0%} intervals: {replications} simulated studies per cell, true gain "
          f"{gain}, per-seed log gain ~ N(log {gain}, {sigma}) (lognormal seed scatter); binomial s.e. about "
          f"{math.sqrt(0.95 * 0.05 / replications):.3f} near 95%")
    cells = {(r["n_seeds"], r["interval"]): r["coverage"] for r in rows}
    print_table(["seeds", "t-interval (default)", "percentile bootstrap"],
                [[n, f"{cells[(n, 't')]:.3f}", f"{cells[(n, 'bootstrap')]:.3f}"]
                 for n in sorted({r["n_seeds"] for r in rows})])


# ----------------------------------------------------------------------------- steps to accuracy


def censored_median(values, budgets):
    """Median of a censored sample: values[i] None means 'not reached within budgets[i]' (the true value is
    above budgets[i]). Returns (median, kind): kind 'exact'; 'above' (the median is more than the returned
    value: half or more never got there); 'between' (returned (low, high): a censored budget falls inside)."""
    low = np.median([v if v is not None else b for v, b in zip(values, budgets)])
    high = np.median([v if v is not None else math.inf for v in values])
    if low == high:
        return float(low), "exact"
    if math.isinf(high):
        return float(low), "above"
    return (float(low), float(high)), "between"


def spread(values):
    """(mean, min, max) of the finite values, Nones when there are none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return (float(np.mean(v)), min(v), max(v)) if v else (None, None, None)


def steps_to_accuracy(records):
    """Per (study, dataset, label, arch, width, LR) of task runs: steps to 99% val accuracy as a censored
    statistic (median with never-reached runs counted as '> the steps they ran'), how many got there, the
    mean and standard error over those that did, and the final train and val accuracy (mean, min, max)."""
    table = []
    tasks = [r for r in records if r["task"]]
    for (study, dataset, label, arch, width, lr), runs in group(
            tasks, lambda r: (r["study"], r["dataset"], r["label"], r["arch"], r["width"], r["lr"])).items():
        steps = np.array([r["step_val_acc_99"] for r in runs if r["step_val_acc_99"] is not None], float)
        never = [r for r in runs if r["step_val_acc_99"] is None]
        n = len(steps)
        std = float(steps.std(ddof=1)) if n >= 2 else None
        values, budgets = [r["step_val_acc_99"] for r in runs], [r["last_step"] or 0 for r in runs]
        median, kind = censored_median(values, budgets)
        final = {name: spread([(r["final_acc"] or {}).get(name) for r in runs]) for name in ("train_acc", "val_acc")}
        table.append({"study": study, "dataset": dataset, "label": label, "arch": arch, "width": width,
                      "learning_rate": lr, "n_runs": len(runs), "n_reached": n,
                      "median_steps": median, "median_kind": kind,
                      "mean_steps": float(steps.mean()) if n else None, "std": std,
                      "mean_steps_never_as_run": float(np.mean([b if v is None else v
                                                                for v, b in zip(values, budgets)])),
                      "sem": std / math.sqrt(n) if std is not None else None,
                      "never": len(never), "never_max_steps": max((r["last_step"] or 0 for r in never), default=None),
                      "never_steps": [r["last_step"] for r in never], "steps": steps.tolist(),
                      **{f"final_{name}_{stat}": v for name, (m, lo, hi) in final.items()
                         for stat, v in (("mean", m), ("min", lo), ("max", hi))}})
    sort_key = lambda r: (math.inf if r["median_kind"] == "above" else
                          r["median_steps"][0] if r["median_kind"] == "between" else r["median_steps"])
    table.sort(key=lambda r: (order(r["study"]), order(r["dataset"]), sort_key(r), -r["n_reached"]))
    return table


def load_published(path):
    """Published steps to 99% and final val accuracy to print beside ours: a CSV with columns dataset, label,
    steps (a mean over seeds, never-reached runs counted at their budget), final_val_acc; a blank cell is a
    number the paper does not give. Returns {(dataset, label): {"steps": float | None, "val_acc": ...}}."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"cannot read --published {path}: {e.strerror or e}")
    need = {"dataset", "label", "steps", "final_val_acc"}
    if not rows or not need <= set(rows[0]):
        raise UserError(f"--published {path}: needs a header with columns {', '.join(sorted(need))} and one row "
                        f"per (dataset, label); see configs/grokking/published.csv")
    number = lambda text: float(text) if text.strip() else None
    out = {}
    for i, row in enumerate(rows, start=2):
        try:
            out[(row["dataset"], row["label"])] = {"steps": number(row["steps"]),
                                                   "val_acc": number(row["final_val_acc"])}
        except ValueError:
            raise UserError(f"--published {path}, line {i}: steps and final_val_acc must be numbers or blank, "
                            f"got {row['steps']!r}, {row['final_val_acc']!r}")
    return out


def add_published(table, published):
    """Each steps-to-accuracy row gets the published numbers for its (dataset, label), None where there are none."""
    for r in table:
        p = published.get((r["dataset"], r["label"]), {})
        r["published_steps"], r["published_final_val_acc"] = p.get("steps"), p.get("val_acc")
    return table


def format_median(row):
    m, kind = row["median_steps"], row["median_kind"]
    return f"{m:.0f}" if kind == "exact" else f"> {m:.0f}" if kind == "above" else f"{m[0]:.0f}-{m[1]:.0f}"


# ----------------------------------------------------------------------------- loss against a config key


def vs_table(records, key, by, metric):
    """Loss against config key `key` (one series per value of `by`), per study. A cell holding several
    learning rates takes the best one (mean over seeds per LR), as a tuned nuisance hyperparameter."""
    has = lambda r, k: k is None or config_value(r["config"], r["derived"], k) is not None
    for k in filter(None, (key, by)):
        if not any(has(r, k) for r in records):
            known = sorted({k2 for r in records for k2 in list(r["config"]) + list(r["derived"])})
            match = difflib.get_close_matches(k, known, n=1)
            raise UserError(f"no run has config key '{k}'" + (f" (did you mean '{match[0]}'?)" if match else ""))
    value = lambda r, k: as_key(config_value(r["config"], r["derived"], k)) if k else None
    tune_lr = "learning_rate" not in (key, by)
    table = []
    usable = [r for r in records if has(r, key) and has(r, by)]
    for (study, by_value, x), runs in group(usable, lambda r: (r["study"], value(r, by), value(r, key))).items():
        points = lr_points(runs, metric) if tune_lr else [
            {"lr": None, "loss": float(np.mean([run_loss(r, metric) for r in runs])), "runs": runs}]
        best = min(points, key=lambda p: p["loss"])
        seeds = [run_loss(r, metric) for r in best["runs"]]
        finite = [v for v in seeds if math.isfinite(v)]
        ci = t_interval(finite) if len(finite) == len(seeds) else None
        table.append({"study": study, "key": key, "value": x, "by": by, "by_value": by_value,
                      "loss": best["loss"] if math.isfinite(best["loss"]) else None,
                      "best_lr": best["lr"] if tune_lr and len(points) > 1 else None,
                      "n_runs": len(runs), "n_diverged": sum(r["diverged"] for r in runs),
                      # the seed spread of the cell (at its best LR): every run's loss, range, t-interval
                      "seed_losses": seeds, "n_seeds": len(seeds),
                      "loss_low": min(finite, default=None), "loss_high": max(finite, default=None),
                      "loss_ci_low": ci and ci[0], "loss_ci_high": ci and ci[1]})
    return table


# ----------------------------------------------------------------------------- printing


def plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def fmt(v, spec=".3g"):
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isinf(v):
            return "diverged"
        return format(v, spec)
    return str(v)


def print_table(headers, rows):
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    print(line(headers))
    for r in rows:
        print(line(r))


def print_runs(records, skipped, root, verbose, detailed):
    n_div = sum(r["diverged"] for r in records)
    line = f"read {len(records)} run(s) from {root}" + (f" ({n_div} diverged)" if n_div else "")
    line += f", skipped {len(skipped)}" + (f": {skip_summary(skipped)}" if skipped else "")
    print(line)
    if verbose:
        for path, reason in skipped:
            print(f"  skipped {path}: {reason}")
        for r in records:
            if r["diverged"]:
                print(f"  diverged {r['path']}")
            for w in r["warnings"]:
                print(f"  warning {r['path']}: {w}")
    if detailed:
        for (study,), runs in group(records, lambda r: (r["study"],)).items():
            print(f"\n== {study}: runs ==")
            print_table(["run folder", "label", "arch", "width", "LR", "seed", "status", "steps",
                         "final val", "best val"],
                        [[r["rel"], r["label"], r["arch"], fmt(r["width"]), fmt(r["lr"], ".2e"), fmt(r["seed"]),
                          r["status"], fmt(r["last_step"], ".0f"), fmt(r["final_loss"], ".4f"),
                          fmt(r["best_loss"], ".4f")]
                         for r in sorted(runs, key=lambda r: tuple(order(r[k]) for k in
                                                                  ("label", "arch", "width", "lr", "seed")))])


def print_lr(table, trends, metric, detailed):
    for (study,), rows in group(table, lambda r: (r["study"],)).items():
        if max(r["n_lrs"] for r in rows) < 2:
            continue  # no sweep in this study (one LR per variant)
        print(f"\n== {study}: best learning rate per (label, arch, width), by {metric} val loss "
              f"(mean over seeds; diverged ranks last) ==")
        print_table(["label", "arch", "width", "LRs", "best LR", "val loss", "runner-up (loss)", "refined LR",
                     "note"],
                    [[r["label"], r["arch"], r["width"], r["n_lrs"], fmt(r["best_lr"], ".2e"),
                      fmt(r["best_val_loss"], ".4f"),
                      f"{fmt(r['runner_up_lr'], '.2e')} ({fmt(r['runner_up_loss'], '.4f')})"
                      if r["runner_up_lr"] else "-", fmt(r["refined_lr"], ".2e"), r["note"]] for r in rows])
        if detailed:
            for r in rows:
                grid = ", ".join(f"{lr:.2e}: {fmt(loss, '.4f')}" for lr, loss in zip(r["lrs"], r["losses"]))
                print(f"  {r['label']} {r['arch']} {r['width']}: {grid}")
        study_trends = [t for t in trends if t["study"] == study]
        if study_trends:
            print(f"\nbest-LR trend across widths: log10(best LR) = a + b * log10(width) "
                  f"(least squares on the grid best LRs; muP should give b near 0)")
            print_table(["label", "arch", "widths", "a", "b", "b s.e.", "b (refined LRs)", "note"],
                        [[t["label"], t["arch"], ",".join(map(str, t["widths"])), f"{t['a']:.3f}",
                          f"{t['b']:+.3f}", fmt(t["b_stderr"], ".3f"), fmt(t["b_refined"], "+.3f"),
                          f"{t['n_at_edge']} width(s) at the grid edge" if t["n_at_edge"] else ""]
                         for t in study_trends])


def comparison(row):
    return f"{row['label']} (baseline)" if row.get("is_baseline") else f"{row['gain_of']} over {row['gain_over']}"


def ceg_heading(t):
    """The lines that open a CEG table: the comparison, how the baseline was chosen, the table's notes."""
    where = (f", width {t['width']}" if t["width"] is not None else "") + where_dataset(t)
    sides = f"each variant over '{t['baseline']}'" if t.get("invert") else f"'{t['baseline']}' over each variant"
    lines = [f"\n== {t['study']}{where}: compute-equivalent gain, {sides} =="]
    if t["baseline_default"]:
        lines.append(f"baseline '{t['baseline']}' by default ('baseline', else 'modern', else the first label "
                     f"alphabetically); --baseline LABEL to choose")
    return lines + [f"note: {note}" for note in t["notes"]]


def print_ceg(tables, metric, verbose, interval="t"):
    for t in tables:
        print("\n".join(ceg_heading(t)))
        if not t["rows"]:
            continue
        print(gain_header(t))
        print(method_header(t))
        how = ("the lowest loss every compared curve reaches; --target L to change" if t["target_default"]
               else "--target")
        print(f"target val loss {t['target']:.4f} ({how})")
        if any(r["n_lrs"] > 1 for r in t["rows"]):
            print(f"each label at its best learning rate at this width by {metric} val loss (mean over seeds)")
        print(interval_header(t["rows"], interval) + "; geometric mean over seeds")
        print_table(["comparison", "arch", "LR", "seeds", "its FLOPs to target", "gain", "interval", "note"],
                    [[comparison(r), r["arch"], fmt(r["learning_rate"], ".2e"), seeds_cell(r),
                      BOUND_PREFIX[r["flops_bound"]] + f"{r['flops_to_target']:.3e}", format_ceg(r),
                      format_interval(r), r["note"]] for r in t["rows"]])
        if t["winners_curse"]:
            print(f"warning: winner's curse: {', '.join(t['winners_curse'])} chose the LR on the same runs that "
                  f"measure the gain (its seeds' luck at the chosen LR biases the gain): choose on other seeds with "
                  f"--select_seeds S --measure_seeds M, or in a separate LR sweep (README Analysis)")
        if verbose:
            for r in t["rows"]:
                per = ", ".join(f"seed {s}: {c:.3f}x" for s, c in r["per_seed"].items())
                print(f"  {r['label']} (per seed, the variant over the baseline): {per}")
        print_per_lr(t)
        print_sensitivity(t)


def seeds_cell(row):
    """The seeds of a row, and how many of them are paired with the baseline's when that differs."""
    paired = row["n_pairs"] != row["n_seeds"] and row["n_pairs"] and not row["is_baseline"]
    return f"{row['n_seeds']} ({row['n_pairs']} paired)" if paired else str(row["n_seeds"])


def print_per_lr(t):
    if not t["per_lr"]:
        return
    print(f"\ndoes the gain depend on the LR? {gain_header(t).split(' = ')[0]} at each LR both were run at (paired "
          f"by seed; target per LR: the lowest loss both reach there, unless --target), then tuned vs tuned")
    rows = []
    for r in t["per_lr"]:
        lr = (f"tuned: {fmt(r['learning_rate'], '.2e')} vs {fmt(r['baseline_lr'], '.2e')}" if r["tuned"]
              else fmt(r["learning_rate"], ".2e"))
        name = comparison(r) if r.get("gain") is not None else r["label"]
        rows.append([name, lr, fmt(r.get("target_loss"), ".4f"), format_ceg(r), format_interval(r),
                     r.get("n_pairs", "-"), r.get("note", "")])
    print_table(["comparison", "LR", "target", "gain", "interval", "pairs", "note"], rows)


def print_sensitivity(t):
    if not t["sensitivity"]:
        return
    print(f"\nLR sensitivity: the gain if the variant ran at its neighbouring grid LRs instead of its chosen one "
          f"(the baseline at its chosen LR, target {t['target']:.4f}); baseline row: the baseline over itself at "
          f"its neighbours (every gain above would divide by it)")
    show = lambda n: (f"{fmt(n['learning_rate'], '.2e')}: " +
                      (n["note"] if n["gain"] is None else f"{format_ceg(n)} {format_interval(n)}".rstrip(" -")))
    print_table(["label", "chosen LR", "gain", "neighbouring LRs: gain"],
                [[r["label"] + (" (baseline)" if r["is_baseline"] else ""), fmt(r["learning_rate"], ".2e"),
                  format_ceg(r), "; ".join(show(n) for n in r["neighbours"])] for r in t["sensitivity"]])


def print_acc(table):
    for (study,), rows in group(table, lambda r: (r["study"],)).items():
        published = "published_steps" in rows[0]  # add_published ran
        print(f"\n== {study}: steps to {ACC_TARGET:.0%} validation accuracy: median over runs with the ones that "
              f"never got there counted as '> the steps they ran' (censored); final accuracies mean [min, max] ==")
        if published:
            print("with --published: 'mean, never = ran' is the papers' statistic (a run that never got there counts "
                  "at the steps it ran, so it is a lower bound when any did not), beside the published mean")
        acc = lambda r, name: (f"{r[f'final_{name}_mean']:.3f} [{r[f'final_{name}_min']:.3f}, "
                               f"{r[f'final_{name}_max']:.3f}]" if r[f"final_{name}_mean"] is not None else "-")
        extra = lambda r: ([f"{r['mean_steps_never_as_run']:.0f}", fmt(r["published_steps"], ".0f"),
                            fmt(r["published_final_val_acc"], ".2f")] if published else [])
        print_table(["dataset", "label", "arch", "width", "LR", "reached", "median steps", "never reached",
                     "final train acc", "final val acc"] +
                    (["mean, never = ran", "published mean", "published val acc"] if published else []),
                    [[r["dataset"], r["label"], r["arch"], fmt(r["width"]), fmt(r["learning_rate"], ".2e"),
                      f"{r['n_reached']}/{r['n_runs']}", format_median(r),
                      f"{r['never']} (ran {r['never_max_steps']:.0f} steps)" if r["never"] else "0",
                      acc(r, "train_acc"), acc(r, "val_acc")] + extra(r) for r in rows])


def print_vs(table, key, by, metric):
    for (study,), rows in group(table, lambda r: (r["study"],)).items():
        print(f"\n== {study}: {metric} val loss against {key}" + (f", by {by}" if by else "") +
              ": mean over seeds [seed range] (a cell with several LRs: its best LR) ==")
        by_values = sorted({r["by_value"] for r in rows}, key=order)
        xs = sorted({r["value"] for r in rows}, key=order)
        cell = {(r["value"], r["by_value"]): r for r in rows}

        def show(r):
            if r is None:
                return "-"
            if r["loss"] is None:
                return f"diverged ({r['n_diverged']} of {r['n_runs']})"
            if r["n_seeds"] < 2:
                return f"{r['loss']:.4f}"
            return f"{r['loss']:.4f} [{r['loss_low']:.3f}, {r['loss_high']:.3f}]"
        print_table([key] + ([f"{by}={b}" for b in by_values] if by else ["val loss"]),
                    [[str(x)] + [show(cell.get((x, b))) for b in by_values] for x in xs])


# ----------------------------------------------------------------------------- plots
# The toolkit's plot helpers first (fit_scaling.py's and progress.py's too): saving, log-axis ticks, colours and
# the panel style; then analyze's figures, one function each.


def save_figure(fig, path):
    """Write fig to path as a PNG (its folder made when missing) and close it; returns path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def save(fig, path, written):
    written.append(save_figure(fig, path))


def short_number(v, digits=3):
    """Tick labels: 0.002, 1.5, 300, 1e12, 2.5e-5."""
    if v == 0:
        return "0"
    if 1e-3 <= abs(v) < 1e4:
        return f"{v:.{digits + 1}g}"
    mantissa, exponent = f"{v:.{digits - 1}e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def log_ticks(ax, axis, lo=None, hi=None):
    """Few labelled ticks on a log axis ('x' or 'y' of ax) spanning [lo, hi] (default: what it shows), in short
    plain numbers with the fewest digits that tell them apart: matplotlib labels the minor ticks of an axis
    spanning about a decade or less, and their "2x10^-3 3x10^-3 4x10^-3" labels overlap."""
    ticker = matplotlib.ticker
    which = ax.xaxis if axis == "x" else ax.yaxis
    if lo is None or not hi > lo:  # no range given, or a single value: the range shown
        lo, hi = sorted(which.get_view_interval())
    if not (lo > 0 and hi > lo and math.isfinite(hi)):
        return
    span = math.log10(hi / lo)
    if span < 1:  # less than a decade: round numbers, thinned where the log scale crowds them (the top)
        ticks = []
        for t in ticker.MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi):
            if lo <= t <= hi and t > 0 and (not ticks or math.log10(t / ticks[-1]) >= 0.12 * span):
                ticks.append(t)
        major = ticker.FixedLocator(ticks)
    elif span <= 2.5:
        major = ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0))
    else:  # decades, thinned to at most 8 labels
        major = ticker.LogLocator(base=10, subs=(1.0,), numticks=8)
    which.set_major_locator(major)
    locs = [t for t in major.tick_values(lo, hi) if lo <= t <= hi]
    digits = next((d for d in range(3, 9) if len({short_number(t, d) for t in locs}) == len(locs)), 9)
    which.set_major_formatter(ticker.FuncFormatter(lambda v, pos: short_number(v, digits)))
    which.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10), numticks=100))
    which.set_minor_formatter(ticker.NullFormatter())


def legible(ax):
    """log_ticks on every log axis of ax (a plot's axes or a colorbar's)."""
    for axis in ("x", "y"):
        if (ax.get_xscale() if axis == "x" else ax.get_yscale()) == "log":
            log_ticks(ax, axis)


def colors(n):
    """n distinct colours (tab10, tab20 beyond 10)."""
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def style(ax, legend=8, grid="both", title_size=None):
    """The panel style of the plots: a light grid (of 'both' or the 'major' ticks), a legend in a small font
    (legend: its size; None: no legend), and title_size for a long title."""
    ax.grid(alpha=0.3, which=grid)
    if legend:
        ax.legend(fontsize=legend)
    if title_size:
        ax.title.set_fontsize(title_size)


def plot_label(text):
    return str(text).replace("$", r"\$")  # '$' would start matplotlib mathtext


def safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._")[:80] or "x"


def finite_range(values):
    v = np.array([x for x in values if x is not None], float)
    v = v[np.isfinite(v)]
    return (float(v.min()), float(v.max())) if len(v) else (None, None)


def plot_lr_sweeps(rows, study, folder, written):
    """One panel per width, every variant's sweep in it (so the comparison is read off one pair of axes), the
    same y-range in every panel; the band is the seeds' range at each LR."""
    rows = [r for r in rows if r["n_lrs"] >= 2]
    if not rows:
        return
    panels = group(rows, lambda r: (r["width"],))
    keys = sorted({(r["label"], r["arch"]) for r in rows}, key=lambda k: tuple(map(order, k)))
    color = dict(zip(keys, colors(len(keys))))
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, 4.2 * nrow), squeeze=False, sharey=True)
    low, _ = finite_range([x for r in rows for x in r["loss_low"]])
    worst_best = max(r["best_val_loss"] for r in rows if r["best_val_loss"] is not None) if any(
        r["best_val_loss"] is not None for r in rows) else None
    _, high = finite_range([x for r in rows for x in r["loss_high"]])
    if low is not None and worst_best is not None:  # show the optima, not the far edges of the grid
        high = min(high, worst_best + max(3 * (worst_best - low), 0.3))
    all_lrs = [lr for r in rows for lr in r["lrs"] if lr]
    for ax, ((w,), sweeps) in zip(axes.flat, panels.items()):
        diverged = []
        for r in sweeps:
            c = color[(r["label"], r["arch"])]
            lrs, losses = np.array(r["lrs"], float), np.array(r["losses"], float)
            ok = np.isfinite(losses)
            ax.plot(lrs[ok], losses[ok], "o-", color=c, ms=4,
                    label=plot_label(f"{r['label']} ({r['arch']}): best {fmt(r['best_lr'], '.2g')}"))
            lo, hi = np.array(r["loss_low"], float), np.array(r["loss_high"], float)
            band = np.isfinite(lo) & np.isfinite(hi) & ok
            if band.any() and (hi[band] > lo[band]).any():
                ax.fill_between(lrs[band], lo[band], hi[band], color=c, alpha=0.18, lw=0)
            if r["best_lr"] is not None:
                ax.plot([r["best_lr"]], [r["best_val_loss"]], "*", color=c, ms=13, mec="k")
            diverged += [(lr, c) for lr in lrs[~ok]]
        ax.set_xscale("log")
        log_ticks(ax, "x", min(all_lrs), max(all_lrs))
        if diverged:  # at the top of the panel, one row per variant so they do not hide each other
            top = ax.get_xaxis_transform()  # x in data, y in axes fraction
            for j, (lr, c) in enumerate(diverged):
                ax.plot([lr], [0.97 - 0.04 * (j % 5)], "x", color=c, ms=8, mew=2, transform=top)
            ax.plot([], [], "kx", label="diverged")
        ax.set_title(f"width {w}")
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("validation loss (nats/token)")
        style(ax)
    if low is not None and high is not None and high > low:
        axes.flat[0].set_ylim(low - 0.04 * (high - low), high)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(plot_label(f"{study}: loss vs learning rate, mean over seeds (band: seed range; star: best LR; "
                            f"same y-range in every panel)"), fontsize=10)
    fig.tight_layout()
    save(fig, os.path.join(folder, "lr_sweep.png"), written)


def plot_lr_trend(trends, rows, study, folder, written):
    if not trends:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for color, t in zip(colors(len(trends)), trends):
        widths = np.array(t["widths"], float)
        edge = [bool(r["at_edge"]) for w in t["widths"] for r in rows
                if r["label"] == t["label"] and r["arch"] == t["arch"] and r["width"] == w]
        for w, lr, e in zip(widths, t["best_lrs"], edge):
            ax.plot([w], [lr], "o", color=color, mfc="none" if e else color, ms=7)
        xs = np.geomspace(widths.min(), widths.max(), 20)
        ax.plot(xs, 10 ** (t["a"] + t["b"] * np.log10(xs)), "-", color=color,
                label=plot_label(f"{t['label']} ({t['arch']}): slope b = {t['b']:+.2f}"))
    ax.plot([], [], "ko", mfc="none", label="hollow: best LR at the grid edge")
    ax.set_xscale("log")
    widths = sorted({w for t in trends for w in t["widths"]})
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    log_ticks(ax, "y", low, high)
    ax.set_xlabel("width n_embd (log scale)")
    ax.set_ylabel("best learning rate (log scale)")
    ax.set_title(plot_label(f"{study}: best LR vs width, log10(LR) = a + b log10(width)"))
    style(ax)
    save(fig, os.path.join(folder, "lr_trend.png"), written)


def gain_ticks(ax, lo, hi, axis="x"):
    """Ticks on a log gain axis: 0.5x, 0.7x, 1x, 1.5x, 2x ... within [lo, hi] (every other one on wide ranges)."""
    ticks = [m * 10.0 ** e for e in range(-3, 4) for m in (1, 1.5, 2, 3, 5, 7)]
    ticks = [x for x in ticks if lo <= x <= hi]
    if len(ticks) < 3:  # a narrow range: mark its ends too
        ticks = sorted(set(ticks) | {float(f"{lo * 1.03:.2g}"), float(f"{hi / 1.03:.2g}")})
    if len(ticks) > 9:
        ticks = [x for x in ticks if f"{x:g}"[0] in "125"]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(ticks, [f"{x:g}x" for x in ticks])
    (ax.xaxis if axis == "x" else ax.yaxis).set_minor_locator(matplotlib.ticker.NullLocator())


def interval_words(rows):
    labels = sorted({r["interval_label"] for r in rows if r.get("interval")})
    return labels[0] if len(labels) == 1 else "95% intervals over seeds (see the table)" if labels else \
        "no intervals (fewer than 2 seeds)"


def plot_ceg(t, folder, written):
    rows = [r for r in t["rows"] if r["gain_bound"] != "unknown"][::-1]  # best at the top
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.9))
    y = np.arange(len(rows))
    gains = np.array([r["gain"] for r in rows])
    bar_colors = ["0.6" if r["is_baseline"] else "tab:green" if r["gain"] >= 1 else "tab:red" for r in rows]
    # bars grow from 1 (no gain) on a log axis
    ax.barh(y, gains - 1, left=1, color=bar_colors, alpha=0.8, height=0.6,
            hatch=["//" if r["gain_bound"] else None for r in rows])  # hatched: a bound, not a value
    for yi, r in zip(y, rows):
        if r["gain_low"] is not None:
            ax.errorbar(r["gain"], yi, xerr=[[r["gain"] - r["gain_low"]], [r["gain_high"] - r["gain"]]],
                        fmt="none", ecolor="k", capsize=4, lw=1.2)
        ax.annotate(format_ceg(r) + (f" {format_interval(r)}" if r["gain_low"] is not None else ""),
                    (max(r["gain"], r["gain_high"] or 0), yi), xytext=(5, 0), textcoords="offset points",
                    va="center", fontsize=8)
    lo = min(gains.min(), *(r["gain_low"] for r in rows if r["gain_low"]), 1.0)
    hi = max(gains.max(), *(r["gain_high"] for r in rows if r["gain_high"]), 1.0)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.15, hi * 1.6)
    gain_ticks(ax, lo / 1.15, hi * 1.6)
    ax.axvline(1, color="k", lw=0.8)
    ax.set_yticks(y, [plot_label(comparison(r)) for r in rows])
    b = t["baseline"]
    xlabel = (f"gain (log scale): > 1 means the variant needs less compute than '{b}'" if t["invert"] else
              f"gain (log scale): > 1 means '{b}' needs less compute than the variant (the innovation helps)")
    if any(r["gain_bound"] for r in rows):
        xlabel += "\nhatched: a bound (some run never reached the target)"
    unknown = [r["label"] for r in t["rows"] if r["gain_bound"] == "unknown"]
    if unknown:
        xlabel += "\nnot shown (neither side reaches the target): " + ", ".join(unknown)
    ax.set_xlabel(plot_label(xlabel))
    method = "annealed points" if t["method"] == "annealed" else "MID-SCHEDULE estimate"
    ax.set_title(plot_label(f"{t['study']}, width {t['width']}{where_dataset(t)}: compute-equivalent gain "
                            f"({method})\ntarget val loss {t['target']:.3f}; whiskers: {interval_words(t['rows'])}"),
                 fontsize=10)
    ax.grid(alpha=0.3, axis="x", which="both")
    save(fig, os.path.join(folder, f"ceg_w{t['width']}{file_dataset(t)}.png"), written)


def plot_per_lr(t, folder, written):
    """The gain at each shared LR (whiskers: its interval), and tuned vs tuned as a dashed line."""
    rows = [r for r in t["per_lr"] if r.get("gain") is not None and r["gain_bound"] != "unknown"]
    if not any(not r["tuned"] for r in rows):
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = sorted({r["label"] for r in rows}, key=order)
    for c, label in zip(colors(len(labels)), labels):
        pts = [r for r in rows if r["label"] == label and not r["tuned"]]
        lrs = np.array([r["learning_rate"] for r in pts])
        g = np.array([r["gain"] for r in pts])
        ax.plot(lrs, g, "o-", color=c, label=plot_label(comparison(pts[0]) + " at the same LR") if pts else None)
        for r in pts:
            if r["gain_low"] is not None:
                ax.errorbar(r["learning_rate"], r["gain"], yerr=[[r["gain"] - r["gain_low"]],
                                                                 [r["gain_high"] - r["gain"]]],
                            fmt="none", ecolor=c, capsize=3, lw=1)
            if r["gain_bound"]:
                ax.annotate(BOUND_PREFIX[r["gain_bound"]], (r["learning_rate"], r["gain"]), xytext=(4, 4),
                            textcoords="offset points", color=c)
        tuned = next((r for r in rows if r["label"] == label and r["tuned"]), None)
        if tuned:
            ax.axhline(tuned["gain"], color=c, ls="--", lw=1,
                       label=plot_label(f"tuned vs tuned: {format_ceg(tuned)} {format_interval(tuned)}"))
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    all_lrs = [r["learning_rate"] for r in rows]
    log_ticks(ax, "x", min(all_lrs), max(all_lrs))
    lo, hi = ax.get_ylim()
    gain_ticks(ax, lo, hi, "y")
    ax.set_ylim(lo, hi)
    ax.set_xlabel("learning rate (both sides at this LR; log scale)")
    b = t["baseline"]
    ax.set_ylabel(plot_label(f"gain (> 1: {'the variant' if t['invert'] else repr(b)} needs less compute)"))
    ax.set_title(plot_label(f"{t['study']}, width {t['width']}{where_dataset(t)}: does the gain depend on the LR?\n"
                            f"paired by seed at each LR; whiskers: {interval_words(rows)}"), fontsize=10)
    style(ax)
    save(fig, os.path.join(folder, f"ceg_lr_w{t['width']}{file_dataset(t)}.png"), written)


def plot_curves(t, folder, written):
    """Loss vs compute of every compared seed: the evaluation curves thin, the annealed points (the ones the
    gain is read from, with the annealed method) as markers joined by lines."""
    if not t["variants"]:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    all_losses, all_flops = [], []
    annealed = t["method"] == "annealed"
    for color, ((label, _), v) in zip(colors(len(t["variants"])), t["variants"].items()):
        name = plot_label(f"{label} (lr {fmt(v['lr'], '.2g')}, {plural(len(v['curves']), 'seed')})")
        for c in v["curves"]:
            for r in c["runs"]:
                ax.plot(r["flops"], r["loss"], "-", color=color, lw=0.8 if annealed else 1.2,
                        alpha=0.35 if annealed else 0.8, label=None if annealed else name)
                name = None if not annealed else name  # one legend entry per label
                all_flops.append(r["flops"])
                all_losses.append(r["loss"])
            if annealed:
                ax.plot(c["flops"], c["loss"], "o-", color=color, ms=4, lw=1.4, label=name)
                name = None
            f, bound = flops_to_target(c["flops"], c["loss"], t["target"])
            if bound is None:
                ax.plot([f], [t["target"]], "D", color=color, ms=5, mec="k")
            all_losses.append(c["loss"])
            all_flops.append(c["flops"])
    ax.axhline(t["target"], color="k", ls="--", lw=1, label=f"target {t['target']:.3f}")
    losses = np.concatenate(all_losses)
    low = min(losses.min(), t["target"])
    # the first evaluations are far above the interesting part: show up to well above the target
    high = max(min(losses.max(), t["target"] + 4 * (t["target"] - low)), low + 0.1)
    ax.set_ylim(low - 0.05 * (high - low), high)
    ax.set_xscale("log")
    flops = np.concatenate(all_flops)
    log_ticks(ax, "x", flops.min(), flops.max())
    ax.set_xlabel("training FLOPs (log scale)")
    ax.set_ylabel("validation loss (nats/token)")
    what = ("annealed points (markers; thin: evaluation curves, mid-schedule)" if annealed else
            "MID-SCHEDULE evaluation curves (no annealed points)")
    ax.set_title(plot_label(f"{t['study']}, width {t['width']}{where_dataset(t)}: validation loss vs compute, each "
                            f"label at its chosen LR\n{what}; diamonds: where the gain reads the target"), fontsize=10)
    style(ax)
    save(fig, os.path.join(folder, f"curves_w{t['width']}{file_dataset(t)}.png"), written)


def plot_accuracy(records, study, folder, written):
    for (dataset,), runs in group([r for r in records if r["acc"] is not None], lambda r: (r["dataset"],)).items():
        panels = group(runs, lambda r: (r["label"],))
        ncol = min(3, len(panels))
        nrow = math.ceil(len(panels) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
        steps = [s for r in runs for s in r["acc"]["step"] if math.isfinite(s) and s > 0]
        for ax, ((label,), rs) in zip(axes.flat, panels.items()):
            for color, r in zip(colors(len(rs)), rs):
                step = r["acc"]["step"]
                for name, line in (("train_acc", "--"), ("val_acc", "-")):
                    acc = r["acc"][name]
                    ok = np.isfinite(step) & np.isfinite(acc) & (step > 0)
                    ax.plot(step[ok], acc[ok], line, color=color, lw=1.2,
                            label=plot_label(f"seed {r['seed']} {name.split('_')[0]}"))
            ax.axhline(ACC_TARGET, color="k", lw=0.6, ls=":")
            ax.set_xscale("log")
            if steps:
                log_ticks(ax, "x", min(steps), max(steps))
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(plot_label(label))
            ax.set_xlabel("optimizer steps (log scale)")
            ax.set_ylabel("accuracy (fraction)")
            style(ax, legend=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.suptitle(plot_label(f"{study}, {dataset}: train (dashed) and validation (solid) accuracy; "
                                f"dotted: {ACC_TARGET:.0%}"))
        fig.tight_layout()
        save(fig, os.path.join(folder, f"acc_{safe_name(dataset)}.png"), written)


def plot_steps_to_accuracy(rows, study, folder, written):
    """One panel per dataset: each label's steps to 99% per run (dots; a run that never got there is a triangle
    at the steps it ran), its censored median (bar) and, with --published, the published mean (black x)."""
    panels = group(rows, lambda r: (r["dataset"],))
    if not panels:
        return
    labels = sorted({r["label"] for r in rows}, key=order)
    xs = [x for r in rows for x in r["steps"] + r["never_steps"] + [r.get("published_steps")] if x]
    lo, hi = min(xs), max(xs)
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 0.45 * len(labels) + 1.6),
                             squeeze=False, sharey=True)
    for ax, ((dataset,), rs) in zip(axes.flat, panels.items()):
        for r in rs:
            y = labels.index(r["label"])
            ax.plot(r["steps"], [y] * len(r["steps"]), "o", color="C0", ms=5, alpha=0.7)
            ax.plot(r["never_steps"], [y] * len(r["never_steps"]), ">", color="C3", ms=9, mfc="none", mew=1.5,
                    zorder=4)
            m = r["median_steps"]
            for x in (m if isinstance(m, tuple) else (m,)) if r["median_kind"] != "above" else ():
                ax.plot([x, x], [y - 0.3, y + 0.3], "-", color="C0", lw=2)
            if r.get("published_steps") is not None:
                ax.plot(r["published_steps"], y, "x", color="k", ms=8, mew=2)
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.25, hi * 1.25)
        log_ticks(ax, "x", lo, hi)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        ax.set_yticks(range(len(labels)), [plot_label(x) for x in labels])
        ax.set_title(plot_label(dataset))
        ax.set_xlabel(f"steps to {ACC_TARGET:.0%} val acc (log)")
        style(ax, legend=None)
    fig.suptitle(plot_label(f"{study}: steps to {ACC_TARGET:.0%} validation accuracy per run (dots; triangles: "
                            f"never, at the steps run), median (bar), published mean (x)"), fontsize=9)
    fig.tight_layout()
    save(fig, os.path.join(folder, "steps_to_acc.png"), written)


def plot_vs(rows, key, by, metric, study, folder, written):
    """Loss against a config key, a line per value of --by: the mean over seeds, every seed as a dot and the seed
    range as a bar, so the spread is seen next to the differences."""
    xs = sorted({r["value"] for r in rows}, key=order)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(as_float(x)) for x in xs)
    position = (lambda x: x) if numeric else (lambda x: xs.index(x))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = group(rows, lambda r: (r["by_value"],))
    for color, ((b,), rs) in zip(colors(len(series)), series.items()):
        rs = sorted([r for r in rs if r["loss"] is not None], key=lambda r: order(r["value"]))
        ax.plot([position(r["value"]) for r in rs], [r["loss"] for r in rs], "o-" if numeric else "o", color=color,
                label=plot_label(f"{by} = {b}") if by else None)
        for r in rs:
            seeds = [v for v in r["seed_losses"] if math.isfinite(v)]
            if len(seeds) > 1:
                x = position(r["value"])
                ax.plot([x] * len(seeds), seeds, ".", color=color, alpha=0.6, ms=5)
                ax.errorbar(x, r["loss"], yerr=[[r["loss"] - r["loss_low"]], [r["loss_high"] - r["loss"]]],
                            fmt="none", ecolor=color, capsize=3, lw=1, alpha=0.8)
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log")
        log_ticks(ax, "x", min(xs), max(xs))
    if not numeric:
        ax.set_xticks(range(len(xs)), [plot_label(x) for x in xs], rotation=30, ha="right")
    ax.set_xlabel(plot_label(key + (" (log scale)" if ax.get_xscale() == "log" else "")))
    ax.set_ylabel(f"{metric} validation loss (nats/token)")
    ax.set_title(plot_label(f"{study}: {metric} val loss vs {key}" + (f" by {by}" if by else "") +
                            "\nmean over seeds; dots: seeds, bars: seed range (a cell with several LRs: its best LR)"),
                 fontsize=10)
    style(ax, legend=8 if by else None)
    save(fig, os.path.join(folder, f"vs_{safe_name(key)}" + (f"_by_{safe_name(by)}" if by else "") + ".png"),
         written)


def plot_folders(records, plots_dir):
    """Where each study's plots go: <folder holding its run folders>/plots, or --plots DIR (DIR/<study>
    when there are several studies)."""
    studies = group(records, lambda r: (r["study"],))
    folders = {}
    for (study,), runs in studies.items():
        if plots_dir:
            folders[study] = plots_dir if len(studies) == 1 else os.path.join(plots_dir, safe_name(study))
        else:
            parents = [os.path.dirname(os.path.abspath(r["path"])) for r in runs]
            folders[study] = os.path.join(os.path.commonpath(parents), "plots")
    return folders


def make_plots(records, lr_table, trends, tables, vs, scale, acc, args):
    written = []
    for study, folder in plot_folders(records, args.plots).items():
        plot_lr_sweeps([r for r in lr_table if r["study"] == study], study, folder, written)
        plot_lr_trend([t for t in trends if t["study"] == study], [r for r in lr_table if r["study"] == study],
                      study, folder, written)
        for t in tables:
            if t["study"] == study and t["rows"]:
                plot_ceg(t, folder, written)
                plot_curves(t, folder, written)
                plot_per_lr(t, folder, written)
        plot_scale(study, [r for r in scale if r["study"] == study], folder, written)
        plot_accuracy([r for r in records if r["study"] == study], study, folder, written)
        plot_steps_to_accuracy([r for r in acc if r["study"] == study], study, folder, written)
        if args.vs:
            rows = [r for r in vs if r["study"] == study]
            if rows:
                plot_vs(rows, args.vs, args.by, args.metric, study, folder, written)
    return written


# ----------------------------------------------------------------------------- JSON and CSV output


def clean(v):
    """JSON-safe: non-finite floats become null, numpy scalars plain numbers."""
    if isinstance(v, dict):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def report(records, skipped, lr_table, trends, tables, acc, vs, scale, plots, interval="t"):
    lr_keys = ["study", "label", "arch", "width", "best_lr", "best_val_loss", "refined_lr", "refined_loss",
               "at_edge", "widen_toward", "runner_up_lr", "runner_up_loss", "n_lrs", "lrs", "losses", "loss_low",
               "loss_high", "n_runs", "n_diverged", "seeds", "note"]
    ceg_keys = ["study", "width", "dataset", "label", "arch", "baseline", "is_baseline", "target_loss", "ceg", "bound",
                "ci_low", "ci_high", "n_pairs", "n_seeds", "learning_rate", "n_lrs", "flops_to_target", "flops_bound",
                "per_seed", "note",
                # the toolkit's gain convention (README Analysis): gain of gain_of over gain_over, > 1: gain_of better
                "gain", "gain_low", "gain_high", "gain_bound", "gain_of", "gain_over", "method", "interval",
                "interval_label", "n_diverged", "winners_curse"]
    per_lr_keys = ["label", "baseline", "learning_rate", "baseline_lr", "tuned", "target_loss", "gain", "gain_low",
                   "gain_high", "gain_bound", "gain_of", "gain_over", "ceg", "ci_low", "ci_high", "n_pairs", "interval",
                   "interval_label", "note"]
    where = lambda t: {"study": t["study"], "width": t["width"], "dataset": t.get("dataset")}
    return clean({
        "runs": {"read": len(records), "skipped": len(skipped),
                 "diverged": sum(r["diverged"] for r in records),
                 "skipped_runs": [{"path": p, "reason": why} for p, why in skipped]},
        "run_table": [{"path": r["path"], "study": r["study"], "label": r["label"], "arch": r["arch"],
                       "width": r["width"], "learning_rate": r["lr"], "seed": r["seed"], "dataset": r["dataset"],
                       "status": r["status"], "diverged": r["diverged"], "final_val_loss": r["final_loss"],
                       "best_val_loss": r["best_loss"], "steps": r["last_step"], "n_annealed": len(r["anneal"]),
                       "step_val_acc_99": r["step_val_acc_99"], "warnings": r["warnings"]} for r in records],
        "best_lr": [{k: r[k] for k in lr_keys} for r in lr_table],
        "lr_trend": trends,
        "ceg": [{k: r.get(k) for k in ceg_keys} for t in tables for r in t["rows"]],
        "ceg_tables": [{**where(t), "baseline": t["baseline"], "target_loss": t.get("target"),
                        "target_default": t.get("target_default"), "method": t.get("method"),
                        "method_fallback": t.get("method_fallback"), "method_why": t.get("method_why"),
                        "gain_meaning": gain_header(t) if t["rows"] else None,
                        "interval": interval_header(t["rows"], interval).split(": ", 1)[1] if t["rows"] else None,
                        "winners_curse": t.get("winners_curse", []), "notes": t["notes"]} for t in tables],
        "ceg_per_lr": [{**where(t), **{k: r.get(k) for k in per_lr_keys}} for t in tables for r in t.get("per_lr", [])],
        "lr_sensitivity": [{**where(t), **r} for t in tables for r in t.get("sensitivity", [])],
        "scale_dependence": scale,
        "steps_to_acc": acc,
        "vs": vs,
        "plots": plots,
        "ci": {"level": CI_LEVEL, "resamples": N_BOOTSTRAP if interval == "bootstrap" else None,
               "method": "t-interval over seeds (df = n-1) on the mean paired log gain" if interval == "t"
               else "percentile bootstrap over seeds"},
    })


def write_csv(path, rows):
    columns = []
    for r in rows:
        columns += [k for k in r if k not in columns]

    def write(f):
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([json.dumps(v) if isinstance(v, (list, dict)) else "" if v is None else v
                        for v in (r.get(c) for c in columns)])
    results.atomic_write(path, write)


# ----------------------------------------------------------------------------- main


def seed_list(text, flag):
    seeds = [t.strip() for t in text.split(",")]
    if not all(seeds):
        raise UserError(f"{flag} takes seeds separated by commas, e.g. {flag} 1,2; got {text!r}")
    return [int(t) if re.fullmatch(r"-?\d+", t) else t for t in seeds]


def parse_args(argv):
    p = ArgumentParser(prog="analyze.py", description=__doc__.split("\n\n")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="README.md, section Analysis, says what is computed and how.")
    p.add_argument("results_dir", nargs="?", help="results folder, a study folder under it, or one run folder")
    p.add_argument("--baseline", help="label every variant is compared to (default per study: 'baseline', "
                                      "else 'modern', else the first label alphabetically)")
    p.add_argument("--target", type=float, help="target validation loss for CEG (default: the lowest loss "
                                                 "every compared run reaches)")
    p.add_argument("--width", type=int, help="CEG at this width (n_embd) only")
    p.add_argument("--metric", choices=("final", "best"), default="final",
                   help="rank runs by their final (default) or best validation loss")
    p.add_argument("--method", choices=("annealed", "curve"), default="annealed",
                   help="CEG from annealed points (default; falls back to curve when a table has none) or from "
                        "where one run's evaluation curve crosses the target (the mid-schedule estimate)")
    p.add_argument("--interval", choices=INTERVALS, default="t",
                   help="95%% interval on the gain: t-interval over seeds (default) or percentile bootstrap")
    p.add_argument("--invert", action="store_true",
                   help="print each variant over the baseline (default: the baseline over each variant)")
    p.add_argument("--per_lr", action="store_true", help="the gain at every LR both sides ran at (automatic when "
                                                         "they share 2 or more LRs)")
    p.add_argument("--select_seeds", metavar="S1,S2", help="choose each variant's LR on these seeds only")
    p.add_argument("--measure_seeds", metavar="S3,S4", help="measure the gains on these seeds only (default with "
                                                            "--select_seeds: every other seed)")
    p.add_argument("--coverage", action="store_true", help="simulate the coverage of both intervals (2, 3, 5 "
                                                           "seeds) and print it; needs no results folder")
    p.add_argument("--vs", metavar="KEY", help="validation loss against config key KEY (e.g. n_layer, dropout)")
    p.add_argument("--by", metavar="KEY2", help="with --vs: one line per value of KEY2")
    p.add_argument("--published", metavar="CSV", help="published steps to 99%% and final val accuracy to print "
                   "beside ours (columns dataset, label, steps, final_val_acc; configs/grokking/published.csv)")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE as JSON")
    p.add_argument("--csv", metavar="DIR", help="write the tables as CSV files to DIR")
    p.add_argument("--plots", metavar="DIR", help="write plots to DIR (default: results/<study>/plots)")
    p.add_argument("--no-plots", action="store_true", help="write no plots")
    p.add_argument("--detailed", action="store_true", help="per-run table and every LR of every sweep")
    p.add_argument("--verbose", action="store_true", help="list skipped runs, warnings and per-seed CEGs")
    args = p.parse_args(argv)
    if args.results_dir is None and not args.coverage:
        raise UserError("the results folder is missing: python analyze.py results/ (or --coverage alone)")
    if args.by and not args.vs:
        raise UserError("--by needs --vs KEY")
    if args.target is not None and not math.isfinite(args.target):
        raise UserError(f"--target must be a finite loss, got {args.target}")
    args.select_seeds = seed_list(args.select_seeds, "--select_seeds") if args.select_seeds else None
    args.measure_seeds = seed_list(args.measure_seeds, "--measure_seeds") if args.measure_seeds else None
    return args


def check_seeds(records, args):
    known = {r["seed"] for r in records}
    for flag, seeds in (("--select_seeds", args.select_seeds), ("--measure_seeds", args.measure_seeds)):
        missing = [s for s in seeds or [] if s not in known]
        if missing:
            raise UserError(f"{flag}: no run has seed {', '.join(map(str, missing))}; seeds: "
                            f"{', '.join(map(str, sorted(known, key=order)))}")


def run(argv):
    args = parse_args(argv)
    coverage = None
    if args.coverage:
        coverage = coverage_table()
        print_coverage(coverage, 2000, 1.5, 0.2)
        if not args.results_dir:
            if args.json:
                results.write_json(args.json, clean({"coverage": coverage}))
            return 0
    records, skipped = load_runs(args.results_dir)
    check_seeds(records, args)
    lr_table = best_lr_table(records, args.metric)
    trends = lr_trend(lr_table)
    tables = ceg_tables(records, args.metric, args.baseline, args.target, args.width, method=args.method,
                        interval=args.interval, invert=args.invert, select_seeds=args.select_seeds,
                        measure_seeds=args.measure_seeds, per_lr=args.per_lr)
    scale = scale_table(tables)
    acc = steps_to_accuracy(records)
    if args.published:
        add_published(acc, load_published(args.published))
    vs = vs_table(records, args.vs, args.by, args.metric) if args.vs else []

    print_runs(records, skipped, args.results_dir, args.verbose, args.detailed)
    print_lr(lr_table, trends, args.metric, args.detailed)
    print_ceg(tables, args.metric, args.verbose, args.interval)
    if scale:
        print_scale(scale)
    if acc:
        print_acc(acc)
    if args.vs:
        print_vs(vs, args.vs, args.by, args.metric)
    plots = [] if args.no_plots else write_plots(records, lr_table, trends, tables, vs, scale, acc, args)
    print()
    for folder, names in group(plots, lambda p: (os.path.dirname(p),)).items():
        print(f"plots: {folder[0]}/ ({', '.join(os.path.basename(n) for n in names)})")
    if not plots and not args.no_plots:
        print("plots: none (no LR sweep, CEG table, accuracy curves or --vs to plot)")
    out = report(records, skipped, lr_table, trends, tables, acc, vs, scale, plots, args.interval)
    if coverage:
        out["coverage"] = clean(coverage)
    write_json_and_csv(out, args)
    return 0


def write_plots(records, lr_table, trends, tables, vs, scale, acc, args):
    try:
        return make_plots(records, lr_table, trends, tables, vs, scale, acc, args)
    except OSError as e:  # a read-only results folder, say
        raise UserError(f"cannot write plots to {e.filename}: {e.strerror or e}; choose a folder with --plots DIR "
                        f"or use --no-plots")


def write_json_and_csv(out, args):
    if args.json:
        try:
            results.write_json(args.json, out)
        except OSError as e:
            raise UserError(f"cannot write --json {args.json}: {e.strerror or e}")
        print(f"json: {args.json}")
    if args.csv:
        try:
            os.makedirs(args.csv, exist_ok=True)
            for name in ("run_table", "best_lr", "lr_trend", "ceg", "ceg_per_lr", "scale_dependence", "steps_to_acc",
                         "vs"):
                if out[name]:
                    write_csv(os.path.join(args.csv, f"{name}.csv"), out[name])
        except OSError as e:
            raise UserError(f"cannot write --csv {args.csv}: {e.strerror or e}")
        print(f"csv: {args.csv}/")


def main(argv=None):
    """The exit status, returned (sweep.py's tests and ours call it in-process): 0, or 2 for bad input after one
    line on stderr."""
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
