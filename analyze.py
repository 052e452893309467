"""
Analyze a folder of training runs: learning-rate sweeps, compute-equivalent gains (CEG) with bootstrap
confidence intervals, steps to 99% accuracy on task datasets, and loss against any config key.

    python analyze.py results/                          # every study under results/
    python analyze.py results/ablations --baseline modern
    python analyze.py results/ablations --target 3.2 --width 64 --json ceg.json --csv tables/
    python analyze.py results/lr_sweep --detailed       # every LR of every sweep, and every run
    python analyze.py results/ --vs n_layer --by n_embd --metric best
    python analyze.py results/ --plots figs/ --verbose  # plots elsewhere; list skipped runs and warnings

It reads the run folders described in ../shared/docs/results-format.md (via results.py), study by study
(the config key `study`), and prints:

1. One summary line: runs read, runs skipped and why (no final.json, interrupted, damaged metrics.csv ...).
   Damaged folders are skipped, never a crash; --verbose lists them.
2. Learning-rate sweeps, per (label, arch, width): the best LR by validation loss (mean over seeds), the
   runner-up, a refined optimum (the vertex of the parabola through the best point and its two neighbours,
   in log10(LR)), a flag when the best LR is at the edge of the grid (with the direction to widen) or the
   grid has fewer than 3 LRs. Across widths: the fit log10(best LR) = a + b * log10(width).
3. Compute-equivalent gain, per width: every variant (label) against the baseline, each at its best LR at
   that width. FLOPs to first reach a target validation loss, interpolated linearly in log(FLOPs) between
   evaluations; CEG = FLOPs_baseline / FLOPs_variant (> 1: the variant needs less compute), paired by seed,
   geometric mean over seeds, 95% percentile-bootstrap CI over seeds. A run that never reaches the target
   makes the CEG a bound ('>1.8x' or '<0.5x').
4. Steps to 99% validation accuracy for task datasets: mean, standard error std/sqrt(n), runs that never
   got there.
5. With --vs KEY [--by KEY2]: validation loss against any config key, one line per value of KEY2.

Decisions (also printed where they apply):
- Studies are analysed separately (an LR sweep at a short budget never mixes with an ablation study).
- Diverged runs (status 'diverged', or a non-finite final validation loss) rank below every finite loss;
  an LR at which any seed diverged counts as diverged. They are left out of the trend fit and of CEG.
- Skipped (counted, with the reason): runs without final.json (running or killed), 'interrupted' runs,
  and non-diverged runs whose metrics.csv is missing, empty, has damaged lines, has no finite val_loss,
  or ends before final.json's step count (a lost last row).
- The loss of a run is its final validation loss (last metrics row); --metric best uses its lowest one.
- CEG compares variants at the same width of the same study (one table per width; --width W for one).
  When a label has several LRs at that width, only its runs at its best LR (best mean loss) are used.
- Default baseline per study: the label 'baseline', else 'modern', else the first label alphabetically.
- Default target: the lowest loss every compared run reaches (the largest of the runs' minimum losses).
- Seeds: runs are paired by seed (seeds on one side only are left out, and said so). When seeds are
  missing or repeated, or no seed is common, the sides are compared as independent samples: CEG =
  geometric-mean FLOPs of the baseline / that of the variant, each side resampled on its own.
- The CI is the percentile bootstrap (10000 resamples, fixed RNG seed) of the mean log CEG. It never
  reaches past the per-seed values, so over few seeds it covers the truth less often than 95% (75%
  with 3 seeds, 86% with 5, 91% with 10, 95% with 20 in the tests' simulation); the table says so.
- A CEG built from a bound is shown as a bound and has no CI; '?' when the bounds point both ways.
- Plots: PNGs in <folder holding the study's run folders>/plots/, i.e. results/<study>/plots/; with
  --plots DIR they go to DIR (DIR/<study>/ when there are several studies). Where they went is printed.
  lr_sweep.png (loss vs LR, a line per width), lr_trend.png (best LR vs width), ceg_w<width>.png (CEG
  bars with CI whiskers), curves_w<width>.png (loss vs FLOPs with the target), acc_<dataset>.png
  (train/val accuracy per variant), vs_<key>[_by_<key2>].png.

--json FILE holds: runs {read, skipped, diverged, skipped_runs [{path, reason}]}, run_table (one entry per
run read), best_lr [{study, label, arch, width, best_lr, best_val_loss, refined_lr, refined_loss, at_edge,
widen_toward, runner_up_lr, runner_up_loss, n_lrs, lrs, losses, ...}], lr_trend [{study, label, arch,
widths, best_lrs, a, b, b_stderr, b_refined, n_at_edge}], ceg [{study, width, label, arch, baseline,
is_baseline, target_loss, ceg, bound (null | 'lower' | 'upper' | 'unknown'), ci_low, ci_high, n_pairs,
n_seeds, learning_rate, flops_to_target, per_seed, note}], ceg_tables, steps_to_acc [{study, dataset,
label, ..., n_runs, n_reached, mean_steps, std, sem, never}], vs, plots. Non-finite numbers are null.
--csv DIR writes the same tables as run_table.csv, best_lr.csv, lr_trend.csv, ceg.csv, steps_to_acc.csv
and vs.csv.
"""
import argparse
import csv
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
from configurator import UserError

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


def summarize_run(run):
    """(record, None) for a run the analysis can use, or (None, reason) for one it skips.
    A record holds the grouping keys, the loss curve (FLOPs > 0, finite loss) and the accuracy rows."""
    config, final, status, problems = run["config"], run["final"], run["status"], run["problems"]
    if config is None:  # results.read_run names a missing or unparsable file; else it held no object
        return None, next((p for p in problems if "config.json" in p), "config.json is not a JSON object")
    label = config.get("label")
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        label = str(label)
    if not isinstance(label, str) or not label.strip():
        return None, "config.json has no label (not a train.py run?)"
    if final is None:
        if os.path.exists(os.path.join(run["path"], "final.json")):
            return None, next((p for p in problems if "final.json" in p), "final.json is not a JSON object")
        return None, "running or killed (no final.json)"
    if not isinstance(status, str) or status not in results.STATUSES:
        return None, "unknown status in final.json"
    if status == "interrupted":
        return None, "interrupted (run the same command again to resume it)"
    metric_problems = [p for p in problems if "metrics.csv" in p]
    if metric_problems and status != "diverged":
        p = metric_problems[0]
        return None, ("damaged lines in metrics.csv" if "damaged line" in p else p)

    rows = run["metrics"]
    column = lambda name: np.array([number_or_nan(r.get(name)) for r in rows], dtype=float)
    step, flops, val = column("step"), column("flops"), column("val_loss")
    warnings = list(problems)
    diverged = status == "diverged"
    if not diverged:
        if not np.isfinite(val).any():
            return None, "no finite val_loss in metrics.csv"
        if not math.isfinite(val[-1]):
            diverged = True
            warnings.append("last val_loss is not finite: counted as diverged")
        final_steps = as_float(final.get("steps"))
        if final_steps is not None and math.isfinite(step[-1]) and step[-1] < final_steps:
            return None, "metrics.csv ends before final.json's last step (truncated?)"
    on_curve = np.isfinite(flops) & (flops > 0) & np.isfinite(val)
    if not diverged and not on_curve.any():
        return None, "no rows with positive flops in metrics.csv"
    if not diverged and not np.isfinite(val).all():
        warnings.append(f"{int((~np.isfinite(val)).sum())} row(s) with non-finite val_loss ignored")
    finite_val = val[np.isfinite(val)]

    has_acc = any("val_acc" in r for r in rows)
    if "step_val_acc_99" in final:
        step99 = as_float(final["step_val_acc_99"])
    else:  # a final.json from another writer: find the step in the metrics
        hit = np.nonzero(column("val_acc") >= ACC_TARGET)[0]
        step99 = float(step[hit[0]]) if len(hit) else None
    step99 = as_step(step99)

    derived = run["derived"]
    return {
        "path": run["path"], "name": run["name"], "config": config, "derived": derived,
        "study": as_key(config.get("study")) if config.get("study") is not None
        else os.path.basename(os.path.dirname(os.path.normpath(run["path"]))),
        "label": label, "arch": config["arch"] if isinstance(config.get("arch"), str) else "?",
        "width": as_width(config.get("n_embd")), "lr": as_positive(config.get("learning_rate")),
        "seed": as_key(config.get("seed")),
        "dataset": config["dataset"] if isinstance(config.get("dataset"), str) else "?",
        "status": status, "diverged": diverged,
        "final_loss": math.inf if diverged else float(val[-1]),
        "best_loss": math.inf if diverged else float(finite_val.min()),
        "last_step": as_step(np.nanmax(step)) if np.isfinite(step).any() else None,
        "flops": flops[on_curve], "loss": val[on_curve],
        "acc": {"step": step, "train_acc": column("train_acc"), "val_acc": column("val_acc")} if has_acc else None,
        "task": has_acc or step99 is not None, "step_val_acc_99": step99, "warnings": warnings,
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
        try:
            run = results.read_run(path)
        except RecursionError:  # json.load on absurdly nested garbage
            skipped.append((path, "unreadable json (nested too deeply)"))
            continue
        record, reason = summarize_run(run)
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


# config keys that may differ between runs of one variant without making them different experiments
PER_RUN_KEYS = {"seed", "run_name", "learning_rate", "min_lr", "derived", "results_dir", "data_dir", "overwrite",
                "resume", "device", "compile", "num_threads", "wandb_log", "wandb_project", "wandb_run_name",
                "log_interval", "ckpt_interval", "time_limit_s", "keep_ckpt", "peak_flops", "ddp_timeout_s"}


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
        points.append({"lr": lr, "loss": float(np.mean(losses)) if all(map(math.isfinite, losses)) else math.inf,
                       "n_runs": len(rs), "n_diverged": sum(r["diverged"] for r in rs),
                       "seeds": sorted({r["seed"] for r in rs}, key=order), "runs": rs})
    return points


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
        points = lr_points(runs, metric)
        row = {"study": study, "label": label, "arch": arch, "width": width, **best_lr(points),
               "n_runs": len(runs), "n_diverged": sum(r["diverged"] for r in runs),
               "seeds": sorted({r["seed"] for r in runs}, key=order)}
        unusual = sorted({r["status"] for r in runs} - {"completed", "diverged"})
        mixed = differing_keys(runs)
        row["note"] = "; ".join(filter(None, [row["note"], unusual and "includes " + ", ".join(unusual) + " runs",
                                              mixed and "runs differ in " + ", ".join(mixed[:5])]))
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
    between the last evaluation above target and the first at or below it. Returns (flops, bound):
    bound None for a found crossing; 'above' when the run never reaches target (the true value is above the
    returned largest FLOPs); 'below' when the first evaluation is already below target."""
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


def by_seed(runs):
    """{seed: run}, or None when a seed is missing or repeated (then runs cannot be paired)."""
    seeds = [r["seed"] for r in runs]
    return dict(zip(seeds, runs)) if None not in seeds and len(set(seeds)) == len(seeds) else None


def compare(baseline_runs, variant_runs, target, n_boot=N_BOOTSTRAP):
    """CEG of one variant against the baseline at a target loss. Runs (dicts with seed, flops, loss) are
    paired by seed when both sides have distinct seeds in common; otherwise the sides are compared as
    independent samples (geometric mean FLOPs of each)."""
    seeded_b, seeded_a = by_seed(baseline_runs), by_seed(variant_runs)
    common = sorted(set(seeded_b) & set(seeded_a), key=order) if seeded_b and seeded_a else []
    cross = lambda runs: {i: flops_to_target(r["flops"], r["loss"], target) for i, r in runs.items()}
    fb = cross(seeded_b if common else dict(enumerate(baseline_runs)))
    fa = cross(seeded_a if common else dict(enumerate(variant_runs)))
    out = {"n_pairs": len(common), "ci_low": None, "ci_high": None, "per_seed": {}, "note": []}
    if common:
        log_ratio = [math.log(fb[s][0]) - math.log(fa[s][0]) for s in common]
        out["bound"] = combine_bounds([ratio_bound(fb[s][1], fa[s][1]) for s in common])
        out["per_seed"] = {str(s): math.exp(v) for s, v in zip(common, log_ratio)}
        center = float(np.mean(log_ratio))
        ci = bootstrap_ci(log_ratio, n_boot=n_boot) if len(common) >= 2 else None
        dropped = len(set(fb) | set(fa)) - len(common)
        if dropped:
            out["note"].append(f"{dropped} unpaired seed run(s) left out")
    else:  # no seed in common: compare the geometric means of the two sides
        lb, la = [math.log(f) for f, _ in fb.values()], [math.log(f) for f, _ in fa.values()]
        out["bound"] = combine_bounds([ratio_bound(b, a) for _, b in fb.values() for _, a in fa.values()])
        center = float(np.mean(lb) - np.mean(la))
        ci = bootstrap_ci(lb, la, n_boot=n_boot) if len(lb) >= 2 or len(la) >= 2 else None
        paired = seeded_b and seeded_a
        out["note"].append("no common seeds: unpaired" if paired else "seeds missing or repeated: unpaired")
    out["ceg"] = math.exp(center)
    if ci and out["bound"] is None:
        out["ci_low"], out["ci_high"] = math.exp(ci[0]), math.exp(ci[1])
    if max(len(fa), len(fb)) == 1 or len(common) == 1:
        out["note"].append("1 seed: no CI")
    never = sum(b == "above" for _, b in fa.values())
    if never:
        out["note"].append(f"{never} of {len(fa)} run(s) never reach the target")
    out["flops_to_target"] = math.exp(np.mean([math.log(f) for f, _ in fa.values()]))
    out["flops_bound"] = combine_bounds([{"above": "lower", "below": "upper"}.get(b) for _, b in fa.values()])
    return out


def default_baseline(labels):
    for name in ("baseline", "modern"):
        if name in labels:
            return name
    return sorted(labels)[0]


def pick_best_lr_runs(runs, metric):
    """(LR, runs, number of LRs): a variant's runs at its best LR (best mean loss over seeds), diverged
    runs left out."""
    points = lr_points(runs, metric)
    finite = [p for p in points if math.isfinite(p["loss"])]
    if not finite:
        return None, [], len(points)
    best = min(finite, key=lambda p: p["loss"])
    return best["lr"], sorted([r for r in best["runs"] if not r["diverged"]], key=lambda r: r["path"]), len(points)


def ceg_tables(records, metric="final", baseline=None, target=None, width=None, n_boot=N_BOOTSTRAP):
    """One table per (study, width, dataset) with at least two variants: every variant against the baseline.
    Runs on different datasets are never compared (a grokking study has one table per task)."""
    tables = []
    studies = group(records, lambda r: (r["study"],))
    if baseline is not None and not any(r["label"] == baseline for r in records):
        raise UserError(f"--baseline {baseline}: no run has that label; labels: "
                        f"{', '.join(sorted({r['label'] for r in records}))}")
    if width is not None and not any(r["width"] == width for r in records):
        raise UserError(f"--width {width}: no run has n_embd={width}; widths: "
                        f"{', '.join(map(str, sorted({r['width'] for r in records if r['width']})))}")
    for (study,), study_runs in studies.items():
        base_label = baseline or default_baseline({r["label"] for r in study_runs})
        if not any(r["label"] == base_label for r in study_runs):
            tables.append({"study": study, "width": None, "baseline": base_label, "baseline_default": False,
                           "rows": [], "variants": {}, "notes": [f"no runs of baseline '{base_label}': no CEG"]})
            continue
        several_datasets = len({r["dataset"] for r in study_runs}) > 1
        for (w, ds), runs in group(study_runs, lambda r: (r["width"], r["dataset"])).items():
            if (width is not None and w != width) or w is None:
                continue
            variants = group(runs, lambda r: (r["label"], r["arch"]))
            if len(variants) < 2:
                continue
            table = {"study": study, "width": w, "dataset": ds if several_datasets else None,
                     "baseline": base_label, "baseline_default": baseline is None,
                     "rows": [], "notes": [], "variants": {}}
            tables.append(table)
            if not any(label == base_label for label, _ in variants):
                table["notes"].append(f"no runs of baseline '{base_label}' at this width: no CEG")
                continue
            chosen = {}
            for (label, arch), rs in variants.items():
                lr, best_runs, n_lrs = pick_best_lr_runs(rs, metric)
                if not best_runs:
                    table["notes"].append(f"{label}: every run diverged, left out")
                    continue
                chosen[(label, arch)] = {"lr": lr, "n_lrs": n_lrs, "runs": best_runs}
                mixed = differing_keys(best_runs)
                if mixed:
                    table["notes"].append(f"{label}: its runs differ in {', '.join(mixed[:5])}")
            base_keys = [k for k in chosen if k[0] == base_label]
            if not base_keys:
                table["notes"].append(f"baseline '{base_label}': every run diverged: no CEG")
                continue
            if len(base_keys) > 1:
                table["notes"].append(f"baseline '{base_label}' has several archs; using {base_keys[0][1]}")
            base = chosen[base_keys[0]]
            if target is None:
                table["target"] = max(float(r["loss"].min()) for v in chosen.values() for r in v["runs"])
            else:
                table["target"] = target
            table["target_default"] = target is None
            table["variants"] = chosen
            labels = [label for label, _ in chosen]
            for (label, arch), v in chosen.items():
                result = compare(base["runs"], v["runs"], table["target"], n_boot=n_boot)
                is_baseline = (label, arch) == base_keys[0]
                if is_baseline:  # itself: exactly 1, nothing to estimate
                    result.update(ci_low=None, ci_high=None, bound=None,
                                  note=[n for n in result["note"] if "never" in n])
                result["note"] = "; ".join(result["note"])
                name = f"{label}/{arch}" if labels.count(label) > 1 else label
                table["rows"].append({
                    "study": study, "width": w, "dataset": ds, "label": name, "arch": arch, "baseline": base_label,
                    "is_baseline": is_baseline, "learning_rate": v["lr"], "n_lrs": v["n_lrs"],
                    "target_loss": table["target"], "n_seeds": len(v["runs"]), **result})
            table["rows"].sort(key=lambda r: (r["bound"] == "unknown", -r["ceg"]))
    return tables


BOUND_PREFIX = {None: "", "lower": ">", "upper": "<", "unknown": "?"}


def where_dataset(table):
    return f", {table['dataset']}" if table.get("dataset") else ""


def file_dataset(table):
    return f"_{table['dataset']}" if table.get("dataset") else ""


def format_ceg(row):
    return f"{BOUND_PREFIX[row['bound']]}{row['ceg']:.2f}x"


# ----------------------------------------------------------------------------- steps to accuracy


def steps_to_accuracy(records):
    """Per (study, dataset, label, arch, width, LR) of task runs: steps to 99% val accuracy, mean and
    standard error std/sqrt(n) over the runs that got there, and how many never did."""
    table = []
    tasks = [r for r in records if r["task"]]
    for (study, dataset, label, arch, width, lr), runs in group(
            tasks, lambda r: (r["study"], r["dataset"], r["label"], r["arch"], r["width"], r["lr"])).items():
        steps = np.array([r["step_val_acc_99"] for r in runs if r["step_val_acc_99"] is not None], float)
        never = [r for r in runs if r["step_val_acc_99"] is None]
        n = len(steps)
        std = float(steps.std(ddof=1)) if n >= 2 else None
        table.append({"study": study, "dataset": dataset, "label": label, "arch": arch, "width": width,
                      "learning_rate": lr, "n_runs": len(runs), "n_reached": n,
                      "mean_steps": float(steps.mean()) if n else None, "std": std,
                      "sem": std / math.sqrt(n) if std is not None else None,
                      "never": len(never), "never_max_steps": max((r["last_step"] or 0 for r in never), default=None),
                      "steps": steps.tolist()})
    table.sort(key=lambda r: (order(r["study"]), order(r["dataset"]), r["mean_steps"] is None,
                              r["mean_steps"] or 0))
    return table


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
        table.append({"study": study, "key": key, "value": x, "by": by, "by_value": by_value,
                      "loss": best["loss"] if math.isfinite(best["loss"]) else None,
                      "best_lr": best["lr"] if tune_lr and len(points) > 1 else None,
                      "n_runs": len(runs), "n_diverged": sum(r["diverged"] for r in runs)})
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


def print_ceg(tables, metric, verbose):
    for t in tables:
        where = (f", width {t['width']}" if t["width"] is not None else "") + where_dataset(t)
        print(f"\n== {t['study']}{where}: compute-equivalent gain vs '{t['baseline']}' ==")
        if t["baseline_default"]:
            print(f"baseline '{t['baseline']}' by default ('baseline', else 'modern', else the first label "
                  f"alphabetically); --baseline LABEL to choose")
        for note in t["notes"]:
            print(f"note: {note}")
        if not t["rows"]:
            continue
        how = "the lowest loss every compared run reaches; --target L to change" if t["target_default"] else "--target"
        print(f"target val loss {t['target']:.4f} ({how})")
        if any(r["n_lrs"] > 1 for r in t["rows"]):
            print(f"each label at its best learning rate at this width by {metric} val loss (mean over seeds)")
        print("CEG = FLOPs_baseline / FLOPs_variant to first reach the target (> 1: the variant needs less "
              "compute); geometric mean over seeds, 95% bootstrap CI over seeds")
        print_table(["label", "arch", "LR", "seeds", "FLOPs to target", "CEG", "95% CI", "note"],
                    [[r["label"] + (" (baseline)" if r["is_baseline"] else ""), r["arch"],
                      fmt(r["learning_rate"], ".2e"), r["n_seeds"],
                      BOUND_PREFIX[r["flops_bound"]] + f"{r['flops_to_target']:.3e}", format_ceg(r),
                      f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]" if r["ci_low"] is not None else "-",
                      r["note"]] for r in t["rows"]])
        if any(r["ci_low"] is not None and max(r["n_pairs"], r["n_seeds"]) < 10 for r in t["rows"]):
            print("note: over few seeds a percentile bootstrap covers the truth less often than 95% (in tests: about "
                  "75% with 3 seeds, 86% with 5, 91% with 10): read it as the spread of the seeds")
        if verbose:
            for r in t["rows"]:
                per = ", ".join(f"seed {s}: {c:.3f}x" for s, c in r["per_seed"].items())
                print(f"  {r['label']}: {per}")


def print_acc(table):
    for (study,), rows in group(table, lambda r: (r["study"],)).items():
        print(f"\n== {study}: steps to {ACC_TARGET:.0%} validation accuracy (mean and standard error "
              f"std/sqrt(n) over the runs that got there) ==")
        print_table(["dataset", "label", "arch", "width", "LR", "runs", "reached", "mean steps", "s.e.",
                     "never reached"],
                    [[r["dataset"], r["label"], r["arch"], fmt(r["width"]), fmt(r["learning_rate"], ".2e"),
                      r["n_runs"], r["n_reached"], fmt(r["mean_steps"], ".0f"), fmt(r["sem"], ".0f"),
                      f"{r['never']} (ran {r['never_max_steps']:.0f} steps)" if r["never"] else "0"]
                     for r in rows])


def print_vs(table, key, by, metric):
    for (study,), rows in group(table, lambda r: (r["study"],)).items():
        print(f"\n== {study}: {metric} val loss against {key}" + (f", by {by}" if by else "") +
              " (a cell with several LRs: its best LR, mean over seeds) ==")
        by_values = sorted({r["by_value"] for r in rows}, key=order)
        xs = sorted({r["value"] for r in rows}, key=order)
        cell = {(r["value"], r["by_value"]): r for r in rows}
        show = lambda r: "-" if r is None else "diverged" if r["loss"] is None else f"{r['loss']:.4f}"
        print_table([key] + ([f"{by}={b}" for b in by_values] if by else ["val loss"]),
                    [[str(x)] + [show(cell.get((x, b))) for b in by_values] for x in xs])


# ----------------------------------------------------------------------------- plots


def short_e(v):
    mantissa, exponent = f"{v:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"  # 5e9, not 5e+09


def plot_label(text):
    return str(text).replace("$", r"\$")  # '$' would start matplotlib mathtext


def safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._")[:80] or "x"


def colors(n):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def save(fig, path, written):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    written.append(path)


def plot_lr_sweeps(rows, study, folder, written):
    panels = group([r for r in rows if r["n_lrs"] >= 2], lambda r: (r["label"], r["arch"]))
    if not panels:
        return
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.8 * nrow), squeeze=False)
    for ax, ((label, arch), sweeps) in zip(axes.flat, panels.items()):
        diverged = []
        for color, r in zip(colors(len(sweeps)), sweeps):
            lrs, losses = np.array(r["lrs"]), np.array(r["losses"])
            ok = np.isfinite(losses)
            refined = f", refined {r['refined_lr']:.1e}" if r["refined_lr"] else ""
            ax.plot(lrs[ok], losses[ok], "o-", color=color, ms=4,
                    label=f"width {r['width']}: best {fmt(r['best_lr'], '.1e')}{refined}")
            if r["best_lr"] is not None:
                ax.plot([r["best_lr"]], [r["best_val_loss"]], "*", color=color, ms=14, mec="k")
            if r["refined_lr"] is not None:
                i = r["lrs"].index(r["best_lr"])
                x3, y3 = np.log10(lrs[i - 1:i + 2]), losses[i - 1:i + 2]
                xs = np.linspace(x3[0], x3[-1], 50)
                ax.plot(10 ** xs, np.polyval(np.polyfit(x3, y3, 2), xs), ":", color=color, lw=1)
                ax.axvline(r["refined_lr"], color=color, ls=":", lw=0.8)
            diverged += [(lr, color) for lr in lrs[~ok]]
        ax.set_xscale("log")
        if diverged:  # at the top of the panel, one row per width so they do not hide each other
            top = ax.get_xaxis_transform()  # x in data, y in axes fraction
            for j, (lr, color) in enumerate(diverged):
                ax.plot([lr], [0.97 - 0.05 * j], "x", color=color, ms=8, mew=2, transform=top)
            ax.plot([], [], "kx", label="diverged")
        ax.set_title(plot_label(f"{label} ({arch})"))
        ax.set_xlabel("learning rate (log scale)")
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(plot_label(f"{study}: loss vs learning rate (star: best LR; dotted: parabola refinement)"))
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
    ax.set_xlabel("width n_embd (log scale)")
    ax.set_ylabel("best learning rate (log scale)")
    ax.set_title(plot_label(f"{study}: best LR vs width, log10(LR) = a + b log10(width)"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save(fig, os.path.join(folder, "lr_trend.png"), written)


def plot_ceg(t, folder, written):
    rows = [r for r in t["rows"] if r["bound"] != "unknown"][::-1]  # best at the top
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.6))
    y = np.arange(len(rows))
    cegs = np.array([r["ceg"] for r in rows])
    bar_colors = ["0.6" if r["is_baseline"] else "tab:green" if r["ceg"] >= 1 else "tab:red" for r in rows]
    # bars grow from 1 (no gain) on a log axis
    ax.barh(y, cegs - 1, left=1, color=bar_colors, alpha=0.8, height=0.6,
            hatch=["//" if r["bound"] else None for r in rows])  # hatched: a bound, not a value
    for yi, r in zip(y, rows):
        if r["ci_low"] is not None:
            ax.errorbar(r["ceg"], yi, xerr=[[r["ceg"] - r["ci_low"]], [r["ci_high"] - r["ceg"]]], fmt="none",
                        ecolor="k", capsize=4, lw=1.2)
        ax.annotate(format_ceg(r), (max(r["ceg"], r["ci_high"] or 0), yi), xytext=(5, 0),
                    textcoords="offset points", va="center", fontsize=8)
    lo = min(cegs.min(), *(r["ci_low"] for r in rows if r["ci_low"]), 1.0)
    hi = max(cegs.max(), *(r["ci_high"] for r in rows if r["ci_high"]), 1.0)
    ax.set_xscale("log")
    ax.set_xlim(lo / 1.15, hi * 1.3)
    ticks = [m * 10.0 ** e for e in range(-3, 4) for m in (1, 1.5, 2, 3, 5, 7)]
    ticks = [x for x in ticks if lo / 1.15 <= x <= hi * 1.3]
    if len(ticks) < 3:  # a narrow range: mark its ends too
        ticks = sorted(set(ticks) | {float(f"{lo / 1.1:.2g}"), float(f"{hi * 1.2:.2g}")})
    ax.set_xticks(ticks, [f"{x:g}x" for x in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.axvline(1, color="k", lw=0.8)
    ax.set_yticks(y, [plot_label(r["label"] + (" (baseline)" if r["is_baseline"] else "")) for r in rows])
    xlabel = "CEG = FLOPs_baseline / FLOPs_variant to reach the target (log scale)"
    if any(r["bound"] for r in rows):
        xlabel += "\nhatched: a bound (some run never reached the target)"
    unknown = [r["label"] for r in t["rows"] if r["bound"] == "unknown"]
    if unknown:
        xlabel += "\nnot shown (neither side reaches the target): " + ", ".join(unknown)
    ax.set_xlabel(plot_label(xlabel))
    ax.set_title(plot_label(f"{t['study']}, width {t['width']}{where_dataset(t)}: compute-equivalent gain vs '{t['baseline']}'\n"
                            f"target val loss {t['target']:.3f}; whiskers: 95% bootstrap CI over seeds"),
                 fontsize=10)
    ax.grid(alpha=0.3, axis="x", which="both")
    save(fig, os.path.join(folder, f"ceg_w{t['width']}{file_dataset(t)}.png"), written)


def plot_curves(t, folder, written):
    if not t["variants"]:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    all_losses = []
    for color, ((label, arch), v) in zip(colors(len(t["variants"])), t["variants"].items()):
        for i, r in enumerate(v["runs"]):
            ax.plot(r["flops"], r["loss"], "-", color=color, lw=1.2, alpha=0.8,
                    label=plot_label(f"{label} (lr {fmt(v['lr'], '.1e')}, {plural(len(v['runs']), 'seed')})")
                    if i == 0 else None)
            f, bound = flops_to_target(r["flops"], r["loss"], t["target"])
            if bound is None:
                ax.plot([f], [t["target"]], "o", color=color, ms=4)
            all_losses.append(r["loss"])
    ax.axhline(t["target"], color="k", ls="--", lw=1, label=f"target {t['target']:.3f}")
    losses = np.concatenate(all_losses)
    low = min(losses.min(), t["target"])
    # the first evaluations are far above the interesting part: show up to well above the target
    high = max(min(losses.max(), t["target"] + 4 * (t["target"] - low)), low + 0.1)
    ax.set_ylim(low - 0.05 * (high - low), high)
    ax.set_xscale("log")
    flops = np.concatenate([r["flops"] for v in t["variants"].values() for r in v["runs"]])
    # ticks at 1, 2, 5 x 10^k read better than matplotlib's 10^k with crowded minor labels
    subs = (1.0, 2.0, 5.0) if flops.max() / flops.min() < 1e3 else (1.0,)
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: short_e(v)))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training FLOPs (log scale)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(plot_label(f"{t['study']}, width {t['width']}{where_dataset(t)}: validation loss vs compute (each label at its "
                            f"best LR)\ndots: first crossing of the target"), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    save(fig, os.path.join(folder, f"curves_w{t['width']}{file_dataset(t)}.png"), written)


def plot_accuracy(records, study, folder, written):
    for (dataset,), runs in group([r for r in records if r["acc"] is not None], lambda r: (r["dataset"],)).items():
        panels = group(runs, lambda r: (r["label"],))
        ncol = min(3, len(panels))
        nrow = math.ceil(len(panels) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
        for ax, ((label,), rs) in zip(axes.flat, panels.items()):
            for color, r in zip(colors(len(rs)), rs):
                step = r["acc"]["step"]
                for name, style in (("train_acc", "--"), ("val_acc", "-")):
                    acc = r["acc"][name]
                    ok = np.isfinite(step) & np.isfinite(acc) & (step > 0)
                    ax.plot(step[ok], acc[ok], style, color=color, lw=1.2,
                            label=plot_label(f"seed {r['seed']} {name.split('_')[0]}"))
            ax.axhline(ACC_TARGET, color="k", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(plot_label(label))
            ax.set_xlabel("optimizer steps (log scale)")
            ax.set_ylabel("accuracy (fraction)")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.suptitle(plot_label(f"{study}, {dataset}: train (dashed) and validation (solid) accuracy; "
                                f"dotted: {ACC_TARGET:.0%}"))
        fig.tight_layout()
        save(fig, os.path.join(folder, f"acc_{safe_name(dataset)}.png"), written)


def plot_vs(rows, key, by, metric, study, folder, written):
    xs = sorted({r["value"] for r in rows}, key=order)
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(as_float(x)) for x in xs)
    position = (lambda x: x) if numeric else (lambda x: xs.index(x))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = group(rows, lambda r: (r["by_value"],))
    for color, ((b,), rs) in zip(colors(len(series)), series.items()):
        rs = sorted([r for r in rs if r["loss"] is not None], key=lambda r: order(r["value"]))
        ax.plot([position(r["value"]) for r in rs], [r["loss"] for r in rs], "o-" if numeric else "o", color=color,
                label=plot_label(f"{by} = {b}") if by else None)
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 8:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(xs)), [plot_label(x) for x in xs], rotation=30, ha="right")
    ax.set_xlabel(plot_label(key + (" (log scale)" if ax.get_xscale() == "log" else "")))
    ax.set_ylabel(f"{metric} validation loss (nats/token)")
    ax.set_title(plot_label(f"{study}: {metric} val loss vs {key}" + (f" by {by}" if by else "") +
                            "\n(a cell with several LRs: its best LR)"), fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if by:
        ax.legend(fontsize=8)
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


def make_plots(records, lr_table, trends, tables, vs, args):
    written = []
    for study, folder in plot_folders(records, args.plots).items():
        plot_lr_sweeps([r for r in lr_table if r["study"] == study], study, folder, written)
        plot_lr_trend([t for t in trends if t["study"] == study], [r for r in lr_table if r["study"] == study],
                      study, folder, written)
        for t in tables:
            if t["study"] == study and t["rows"]:
                plot_ceg(t, folder, written)
                plot_curves(t, folder, written)
        plot_accuracy([r for r in records if r["study"] == study], study, folder, written)
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


def report(records, skipped, lr_table, trends, tables, acc, vs, plots):
    lr_keys = ["study", "label", "arch", "width", "best_lr", "best_val_loss", "refined_lr", "refined_loss",
               "at_edge", "widen_toward", "runner_up_lr", "runner_up_loss", "n_lrs", "lrs", "losses", "n_runs",
               "n_diverged", "seeds", "note"]
    ceg_keys = ["study", "width", "dataset", "label", "arch", "baseline", "is_baseline", "target_loss", "ceg", "bound",
                "ci_low", "ci_high", "n_pairs", "n_seeds", "learning_rate", "n_lrs", "flops_to_target", "flops_bound",
                "per_seed", "note"]
    return clean({
        "runs": {"read": len(records), "skipped": len(skipped),
                 "diverged": sum(r["diverged"] for r in records),
                 "skipped_runs": [{"path": p, "reason": why} for p, why in skipped]},
        "run_table": [{"path": r["path"], "study": r["study"], "label": r["label"], "arch": r["arch"],
                       "width": r["width"], "learning_rate": r["lr"], "seed": r["seed"], "dataset": r["dataset"],
                       "status": r["status"], "diverged": r["diverged"], "final_val_loss": r["final_loss"],
                       "best_val_loss": r["best_loss"], "steps": r["last_step"],
                       "step_val_acc_99": r["step_val_acc_99"], "warnings": r["warnings"]} for r in records],
        "best_lr": [{k: r[k] for k in lr_keys} for r in lr_table],
        "lr_trend": trends,
        "ceg": [{k: r[k] for k in ceg_keys} for t in tables for r in t["rows"]],
        "ceg_tables": [{"study": t["study"], "width": t["width"], "dataset": t.get("dataset"), "baseline": t["baseline"],
                        "target_loss": t.get("target"), "target_default": t.get("target_default"),
                        "notes": t["notes"]} for t in tables],
        "steps_to_acc": acc,
        "vs": vs,
        "plots": plots,
        "ci": {"level": CI_LEVEL, "method": "percentile bootstrap over seeds", "resamples": N_BOOTSTRAP},
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


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other bad input
        raise UserError(f"{message} (python analyze.py --help lists the options)")


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="See the module docstring (top of analyze.py) for what is computed and how.")
    p.add_argument("results_dir", help="results folder, a study folder under it, or one run folder")
    p.add_argument("--baseline", help="label every variant is compared to (default per study: 'baseline', "
                                      "else 'modern', else the first label alphabetically)")
    p.add_argument("--target", type=float, help="target validation loss for CEG (default: the lowest loss "
                                                 "every compared run reaches)")
    p.add_argument("--width", type=int, help="CEG at this width (n_embd) only")
    p.add_argument("--metric", choices=("final", "best"), default="final",
                   help="rank runs by their final (default) or best validation loss")
    p.add_argument("--vs", metavar="KEY", help="validation loss against config key KEY (e.g. n_layer, dropout)")
    p.add_argument("--by", metavar="KEY2", help="with --vs: one line per value of KEY2")
    p.add_argument("--json", metavar="FILE", help="write every number to FILE as JSON")
    p.add_argument("--csv", metavar="DIR", help="write the tables as CSV files to DIR")
    p.add_argument("--plots", metavar="DIR", help="write plots to DIR (default: results/<study>/plots)")
    p.add_argument("--no-plots", action="store_true", help="write no plots")
    p.add_argument("--detailed", action="store_true", help="per-run table and every LR of every sweep")
    p.add_argument("--verbose", action="store_true", help="list skipped runs, warnings and per-seed CEGs")
    args = p.parse_args(argv)
    if args.by and not args.vs:
        raise UserError("--by needs --vs KEY")
    if args.target is not None and not math.isfinite(args.target):
        raise UserError(f"--target must be a finite loss, got {args.target}")
    return args


def analyze(args):
    records, skipped = load_runs(args.results_dir)
    lr_table = best_lr_table(records, args.metric)
    trends = lr_trend(lr_table)
    tables = ceg_tables(records, args.metric, args.baseline, args.target, args.width)
    acc = steps_to_accuracy(records)
    vs = vs_table(records, args.vs, args.by, args.metric) if args.vs else []

    print_runs(records, skipped, args.results_dir, args.verbose, args.detailed)
    print_lr(lr_table, trends, args.metric, args.detailed)
    print_ceg(tables, args.metric, args.verbose)
    if acc:
        print_acc(acc)
    if args.vs:
        print_vs(vs, args.vs, args.by, args.metric)

    try:
        plots = [] if args.no_plots else make_plots(records, lr_table, trends, tables, vs, args)
    except OSError as e:  # a read-only results folder, say
        raise UserError(f"cannot write plots to {e.filename}: {e.strerror or e}; choose a folder with --plots DIR "
                        f"or use --no-plots")
    print()
    for folder, names in group(plots, lambda p: (os.path.dirname(p),)).items():
        print(f"plots: {folder[0]}/ ({', '.join(os.path.basename(n) for n in names)})")
    if not plots and not args.no_plots:
        print("plots: none (no LR sweep, CEG table, accuracy curves or --vs to plot)")
    out = report(records, skipped, lr_table, trends, tables, acc, vs, plots)
    if args.json:
        try:
            results.write_json(args.json, out)
        except OSError as e:
            raise UserError(f"cannot write --json {args.json}: {e.strerror or e}")
        print(f"json: {args.json}")
    if args.csv:
        try:
            os.makedirs(args.csv, exist_ok=True)
            for name in ("run_table", "best_lr", "lr_trend", "ceg", "steps_to_acc", "vs"):
                if out[name]:
                    write_csv(os.path.join(args.csv, f"{name}.csv"), out[name])
        except OSError as e:
            raise UserError(f"cannot write --csv {args.csv}: {e.strerror or e}")
        print(f"csv: {args.csv}/")
    return 0


def main(argv=None):
    try:
        return analyze(parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `python analyze.py results/ | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
