"""Tests for analyze.py on run folders written here with known curves (results.py writes them, exactly as
train.py does), so every number analyze prints can be checked against a hand computation."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import analyze  # noqa: E402
import results  # noqa: E402

FLOPS_PER_TOKEN = 6.0e5
TOKENS_PER_STEP = 4096


# ----------------------------------------------------------------------------- writing run folders


def write_run(root, label, lr=1e-3, seed=1, width=64, study="study", curve=None, status="completed",
              arch="transformer", dataset="shakespeare_char", acc=None, steps=None, run_name=None, **config):
    """One run folder as train.py writes it. curve: list of (flops, val_loss) or a function of FLOPs
    evaluated every 100 steps (plus a step-0 row); acc: list of (train_acc, val_acc) per row."""
    run_name = run_name or f"{label}_{width}d_lr{lr:.1e}_s{seed}"
    path = os.path.join(str(root), study, run_name)
    os.makedirs(path, exist_ok=True)
    cfg = {"study": study, "label": label, "run_name": run_name, "arch": arch, "n_embd": width, "n_layer": 2,
           "n_head": 4, "learning_rate": lr, "seed": seed, "dataset": dataset, "block_size": 64,
           "batch_size": 64, "max_iters": 1000, **config,
           "derived": {"n_params": 100 * width * width, "n_params_non_embedding": 90 * width * width,
                       "flops_per_token": FLOPS_PER_TOKEN, "tokens_per_step": TOKENS_PER_STEP, "world_size": 1,
                       "device": "cpu", "torch": "2.13.0", "git_sha": None}}
    results.write_json(os.path.join(path, "config.json"), cfg)
    if curve is None:
        curve = lambda f: 2.0 + 3.0 * (f / 1e12) ** -0.3
    if callable(curve):
        step_grid = np.arange(0, (steps or 1000) + 1, 100)
        points = [(s * TOKENS_PER_STEP * FLOPS_PER_TOKEN, 10.8 if s == 0 else curve(s * TOKENS_PER_STEP
                                                                                      * FLOPS_PER_TOKEN))
                  for s in step_grid]
    else:
        points = curve
    columns = results.METRICS_COLUMNS + (results.TASK_COLUMNS if acc is not None else [])
    rows = []
    for i, (flops, loss) in enumerate(points):
        step = int(round(flops / FLOPS_PER_TOKEN / TOKENS_PER_STEP)) if flops else i
        row = {"step": step, "tokens": step * TOKENS_PER_STEP, "flops": float(flops),
               "train_loss": float(loss) + 0.01, "val_loss": float(loss), "lr": lr, "elapsed_s": 0.1 * i}
        if acc is not None:
            row["train_acc"], row["val_acc"] = acc[i]
        rows.append(row)
    f = results.open_metrics(os.path.join(path, "metrics.csv"), columns)
    for row in rows:
        results.append_metrics(f, columns, row)
    f.close()
    if status is not None:
        finite = [r["val_loss"] for r in rows if math.isfinite(r["val_loss"])]
        step99 = next((r["step"] for r in rows if acc is not None and r["val_acc"] >= 0.99), None)
        last = rows[-1] if rows else {"step": 0, "tokens": 0, "flops": 0.0, "val_loss": None}
        results.write_json(os.path.join(path, "final.json"), {
            "status": status, "steps": last["step"], "tokens": last["tokens"], "flops": last["flops"],
            "elapsed_s": 1.0, "final_val_loss": last["val_loss"], "best_val_loss": min(finite, default=None),
            "step_val_acc_99": step99})
    return path


def power_curve(k=1.0, lr=1e-3, best_lr=1e-3, floor=2.0):
    """Loss vs FLOPs: a power law whose compute is worth k times the reference's, worse away from best_lr."""
    penalty = 1 + 0.3 * math.log10(lr / best_lr) ** 2
    return lambda f: floor + 3.0 * penalty * (f * k / 1e12) ** -0.3


def load(root):
    records, skipped = analyze.load_runs(str(root))
    return records, dict((os.path.basename(p), why) for p, why in skipped)


def run_main(args):
    """analyze.main in this process: (exit status, stdout+stderr)."""
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = analyze.main([str(a) for a in args])
    return rc, out.getvalue()


# ----------------------------------------------------------------------------- crossing and CEG


def test_crossing_is_exact_on_piecewise_log_linear_curves():
    rng = np.random.default_rng(0)
    for _ in range(200):
        # breakpoints in log10(FLOPs), a decreasing loss linear in log10(FLOPs) between them
        log_f = np.sort(rng.uniform(10, 16, size=rng.integers(2, 8)))
        loss = np.sort(rng.uniform(1, 6, size=len(log_f)))[::-1]
        target = rng.uniform(loss.min(), loss.max())
        # analyze sees the breakpoints plus points inside segments (on the same lines)
        extra = rng.uniform(log_f[0], log_f[-1], size=5)
        xs = np.sort(np.concatenate([log_f, extra]))
        ys = np.interp(xs, log_f, loss)
        flops, bound = analyze.flops_to_target(10 ** xs, ys, target)
        # the truth: the segment where the curve crosses, solved by hand
        j = np.nonzero(loss <= target)[0][0]
        truth = log_f[j - 1] + (loss[j - 1] - target) / (loss[j - 1] - loss[j]) * (log_f[j] - log_f[j - 1]) \
            if j else log_f[0]
        assert bound is None
        assert math.log10(flops) == pytest.approx(truth, abs=1e-9)


def test_crossing_bounds():
    flops, loss = np.array([1e10, 1e11, 1e12]), np.array([4.0, 3.0, 2.5])
    assert analyze.flops_to_target(flops, loss, 2.0) == (1e12, "above")  # never reached: more than 1e12
    assert analyze.flops_to_target(flops, loss, 5.0) == (1e10, "below")  # reached before the first eval
    assert analyze.flops_to_target(flops, loss, 4.0) == (1e10, None)
    # first reach: a curve that dips below target, rises and falls again crosses at the first dip
    f, b = analyze.flops_to_target(np.array([1e10, 1e11, 1e12, 1e13]), np.array([4.0, 2.0, 4.0, 1.0]), 3.0)
    assert b is None and math.log10(f) == pytest.approx(10.5)


def test_hand_computed_ceg(tmp_path):
    """Independent check: a CEG worked out on paper.
    baseline: (1e9, 4.0) (1e10, 3.0) (1e11, 2.5); variant: (1e9, 3.8) (1e10, 2.8) (1e11, 2.4).
    Default target = the largest of the runs' minimum losses = max(2.5, 2.4) = 2.5.
    Baseline reaches 2.5 at 1e11. Variant: between 1e10 (2.8) and 1e11 (2.4), fraction (2.8-2.5)/(2.8-2.4) =
    0.75 of the way in log10, so log10 F = 10.75, and CEG = 1e11 / 10**10.75 = 10**0.25 = 1.7783.
    Second seed: variant (1e9, 3.9) (1e10, 2.9) (1e11, 2.45) with its own baseline (1e9, 4.0) (1e10, 3.0)
    (1e11, 2.45): target is now max(2.5, 2.4, 2.45, 2.45) = 2.5 for both seeds; seed-2 baseline reaches 2.5
    between 1e10 (3.0) and 1e11 (2.45): fraction 0.5/0.55 -> log10 F = 10.909091; variant 2.9 -> 2.45:
    0.4/0.45 -> 10.888889; CEG_2 = 10**(10.909091 - 10.888889) = 10**0.020202 = 1.047616.
    Geometric mean = 10**((0.25 + 0.020202)/2) = 10**0.135101 = 1.36490."""
    write_run(tmp_path, "baseline", seed=1, curve=[(1e9, 4.0), (1e10, 3.0), (1e11, 2.5)])
    write_run(tmp_path, "rope", seed=1, curve=[(1e9, 3.8), (1e10, 2.8), (1e11, 2.4)])
    write_run(tmp_path, "baseline", seed=2, curve=[(1e9, 4.0), (1e10, 3.0), (1e11, 2.45)])
    write_run(tmp_path, "rope", seed=2, curve=[(1e9, 3.9), (1e10, 2.9), (1e11, 2.45)])
    records, _ = load(tmp_path)
    (table,) = analyze.ceg_tables(records)
    assert table["target"] == 2.5 and table["baseline"] == "baseline"
    rope = next(r for r in table["rows"] if r["label"] == "rope")
    assert rope["per_seed"]["1"] == pytest.approx(1.778279, rel=1e-6)
    assert rope["per_seed"]["2"] == pytest.approx(1.047616, rel=1e-6)
    assert rope["ceg"] == pytest.approx(1.364901, rel=1e-6)
    assert rope["n_pairs"] == 2 and rope["bound"] is None
    # two seeds: the bootstrap resamples are the two values or their mean, so the CI spans them
    assert rope["ci_low"] == pytest.approx(1.047616, rel=1e-6) and rope["ci_high"] == pytest.approx(1.778279, rel=1e-6)


@pytest.mark.parametrize("k", [0.5, 1.0, 1.37, 3.0])
def test_curve_shifted_by_k_in_flops_gets_ceg_k(tmp_path, k):
    """The variant is evaluated at the baseline's FLOPs divided by k with the baseline's losses: its curve
    is the baseline's shifted by k, so it reaches any loss with k times less compute."""
    for seed, noise in ((1, 0.0), (2, 0.05), (3, -0.03)):
        base = [(1e12 * 2 ** i, 2.0 + 3.0 * 2 ** (-0.3 * i) + noise * math.sin(i)) for i in range(12)]
        write_run(tmp_path, "modern", seed=seed, curve=base)
        write_run(tmp_path, "variant", seed=seed, curve=[(f / k, loss) for f, loss in base])
    records, _ = load(tmp_path)
    (table,) = analyze.ceg_tables(records, target=2.9)
    variant = next(r for r in table["rows"] if r["label"] == "variant")
    assert variant["ceg"] == pytest.approx(k, rel=1e-12)
    assert variant["ci_low"] == pytest.approx(k, rel=1e-12) and variant["ci_high"] == pytest.approx(k, rel=1e-12)
    assert table["baseline"] == "modern" and variant["n_pairs"] == 3


def test_ceg_never_compares_runs_on_different_datasets(tmp_path):
    """A study over several tasks (the grokking sweep) gets one CEG table per dataset: on task A the variant is
    worth 2x, on task B 0.5x; pooled they would be meaningless."""
    for seed in (1, 2):
        base = [(1e12 * 2 ** i, 2.0 + 3.0 * 2 ** (-0.3 * i)) for i in range(10)]
        for dataset, k in (("task_a", 2.0), ("task_b", 0.5)):
            write_run(tmp_path, "baseline", seed=seed, dataset=dataset, curve=base,
                      run_name=f"baseline_s{seed}_{dataset}")
            write_run(tmp_path, "variant", seed=seed, dataset=dataset, curve=[(f / k, loss) for f, loss in base],
                      run_name=f"variant_s{seed}_{dataset}")
    records, _ = load(tmp_path)
    tables = analyze.ceg_tables(records, target=2.9)
    assert [t["dataset"] for t in tables] == ["task_a", "task_b"]
    for t, k in zip(tables, (2.0, 0.5)):
        variant = next(r for r in t["rows"] if r["label"] == "variant")
        assert variant["ceg"] == pytest.approx(k, rel=1e-12) and variant["n_pairs"] == 2 and not t["notes"]
    rc, out = run_main([tmp_path, "--target", "2.9"])
    assert rc == 0 and "== study, width 64, task_a: compute-equivalent gain" in out
    assert os.path.exists(tmp_path / "study" / "plots" / "ceg_w64_task_b.png")


def test_ceg_uses_each_labels_best_lr_at_its_width(tmp_path):
    for seed in (1, 2):
        for lr in (3e-4, 1e-3, 3e-3):
            write_run(tmp_path, "baseline", lr=lr, seed=seed, curve=power_curve(1.0, lr, best_lr=1e-3))
            write_run(tmp_path, "swiglu", lr=lr, seed=seed, curve=power_curve(2.0, lr, best_lr=3e-3))
        write_run(tmp_path, "swiglu", lr=1e-2, seed=seed, status="diverged",
                  curve=[(1e12, 5.0), (2e12, float("nan"))])
        # another width: a separate table
        write_run(tmp_path, "baseline", lr=1e-3, seed=seed, width=128, curve=power_curve(1.0))
        write_run(tmp_path, "swiglu", lr=1e-3, seed=seed, width=128, curve=power_curve(1.5))
    records, _ = load(tmp_path)
    t64, t128 = analyze.ceg_tables(records)
    assert (t64["width"], t128["width"]) == (64, 128)
    swiglu = next(r for r in t64["rows"] if r["label"] == "swiglu")
    assert swiglu["learning_rate"] == 3e-3 and swiglu["n_lrs"] == 4
    # both at their best LR the curves are the same power law with compute worth 2x: CEG 2 up to the
    # interpolation error of a power law between evaluations (small)
    assert swiglu["ceg"] == pytest.approx(2.0, rel=0.02)
    assert next(r for r in t128["rows"] if r["label"] == "swiglu")["ceg"] == pytest.approx(1.5, rel=0.02)
    assert analyze.ceg_tables(records, width=128)[0]["width"] == 128
    with pytest.raises(analyze.UserError, match="no run has n_embd=96"):
        analyze.ceg_tables(records, width=96)


def test_ceg_bounds_when_a_run_never_reaches_the_target(tmp_path):
    curve = [(1e10, 4.0), (1e11, 3.0), (1e12, 2.5)]
    write_run(tmp_path, "baseline", curve=curve)
    write_run(tmp_path, "worse", curve=[(f, loss + 0.2) for f, loss in curve])   # never reaches 2.6
    write_run(tmp_path, "better", curve=[(f, loss - 0.2) for f, loss in curve])
    records, _ = load(tmp_path)
    (table,) = analyze.ceg_tables(records, target=2.6)
    rows = {r["label"]: r for r in table["rows"]}
    # worse: baseline reaches 2.6 at 10**11.8; worse never does, so it needs more than 1e12: CEG < 10**-0.2
    assert rows["worse"]["bound"] == "upper" and analyze.format_ceg(rows["worse"]) == "<0.63x"
    assert rows["worse"]["ceg"] == pytest.approx(10 ** -0.2)
    assert rows["worse"]["ci_low"] is None
    # baseline never reaches 2.2 but 'better' does: a lower bound
    (table,) = analyze.ceg_tables(records, target=2.4)
    rows = {r["label"]: r for r in table["rows"]}
    assert rows["better"]["bound"] == "lower" and analyze.format_ceg(rows["better"]).startswith(">")
    assert rows["worse"]["bound"] == "unknown"


@pytest.mark.parametrize("n_seeds, low, high", [(20, 0.90, 0.99), (3, 0.68, 0.85)])
def test_bootstrap_ci_covers_the_truth_at_about_the_stated_rate(n_seeds, low, high):
    """Noisy synthetic seeds: per-seed log CEG ~ N(log k, 0.2). With 20 seeds the 95% percentile bootstrap
    covers the true CEG about 95% of the time. With 3 seeds it is [min, max] of the per-seed CEGs, which
    covers 1 - 2 / 2**3 = 75% of the time: the rate analyze prints in its note."""
    rng = np.random.default_rng(1234)
    k, trials = 1.4, 300
    flops = 1e12 * 2.0 ** np.arange(10)
    loss = 5.0 - 0.2 * np.arange(10)  # linear in log FLOPs, so crossings are exact
    base = [{"seed": s, "flops": flops, "loss": loss} for s in range(n_seeds)]
    covered = 0
    for _ in range(trials):
        shifts = np.exp(rng.normal(math.log(k), 0.2, size=n_seeds))
        variant = [{"seed": s, "flops": flops / shifts[s], "loss": loss} for s in range(n_seeds)]
        out = analyze.compare(base, variant, target=4.1, n_boot=2000)
        assert out["ceg"] == pytest.approx(math.exp(np.mean(np.log(shifts))))
        covered += out["ci_low"] <= k <= out["ci_high"]
    assert low <= covered / trials <= high, covered / trials


def test_unpaired_seeds_compare_geometric_means():
    flops, loss = 1e12 * 2.0 ** np.arange(6), 5.0 - 0.5 * np.arange(6)
    base = [{"seed": 1, "flops": flops, "loss": loss}, {"seed": 2, "flops": flops * 2, "loss": loss}]
    variant = [{"seed": 3, "flops": flops / 4, "loss": loss}]
    out = analyze.compare(base, variant, target=4.0)
    # baseline geometric mean FLOPs = 1e12 * 4 * sqrt(2), variant 1e12: CEG = 4 sqrt(2)
    assert out["ceg"] == pytest.approx(4 * math.sqrt(2)) and out["n_pairs"] == 0
    assert "no common seeds: unpaired" in out["note"]
    # runs without seeds (or with a repeated seed) cannot be paired either: none is dropped
    variant = [{"seed": None, "flops": flops / 4, "loss": loss}, {"seed": None, "flops": flops / 2, "loss": loss}]
    out = analyze.compare(base, variant, target=4.0)
    assert out["ceg"] == pytest.approx(4 * math.sqrt(2) / math.sqrt(2)) and out["n_pairs"] == 0
    assert "seeds missing or repeated: unpaired" in out["note"]


def test_default_baseline_and_unknown_baseline(tmp_path):
    write_run(tmp_path, "zeta", curve=power_curve(1.0))
    write_run(tmp_path, "alpha", curve=power_curve(1.2))
    records, _ = load(tmp_path)
    assert analyze.ceg_tables(records)[0]["baseline"] == "alpha"  # no 'baseline' or 'modern': alphabetical
    assert analyze.ceg_tables(records, baseline="zeta")[0]["baseline"] == "zeta"
    with pytest.raises(analyze.UserError, match="no run has that label; labels: alpha, zeta"):
        analyze.ceg_tables(records, baseline="nope")


# ----------------------------------------------------------------------------- learning-rate sweeps


def parabola_losses(lrs, optimum, curvature=0.4, floor=3.0):
    return [floor + curvature * (math.log10(lr) - math.log10(optimum)) ** 2 for lr in lrs]


def lr_points(lrs, losses):
    return [{"lr": lr, "loss": loss} for lr, loss in zip(lrs, losses)]


def test_best_lr_refined_by_an_exact_parabola():
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    row = analyze.best_lr(lr_points(lrs, parabola_losses(lrs, optimum=7e-4)))
    assert row["best_lr"] == 1e-3 and row["runner_up_lr"] == 3e-4
    assert row["refined_lr"] == pytest.approx(7e-4, rel=1e-9)
    assert row["refined_loss"] == pytest.approx(3.0, abs=1e-9)
    assert row["at_edge"] is False and row["note"] == ""


def test_best_lr_at_the_edge_and_too_few_points():
    lrs = [1e-4, 3e-4, 1e-3]
    row = analyze.best_lr(lr_points(lrs, parabola_losses(lrs, optimum=5e-3)))
    assert row["best_lr"] == 1e-3 and row["at_edge"] and row["widen_toward"] == "larger"
    assert row["refined_lr"] is None and "widen the sweep toward larger LR" in row["note"]
    row = analyze.best_lr(lr_points(lrs, parabola_losses(lrs, optimum=1e-5)))
    assert row["best_lr"] == 1e-4 and row["widen_toward"] == "smaller"
    row = analyze.best_lr(lr_points(lrs[:2], [3.2, 3.1]))
    assert "too few points (2 LRs)" in row["note"] and row["at_edge"]
    row = analyze.best_lr(lr_points(lrs[:1], [3.2]))
    assert row["best_lr"] == 1e-4 and row["at_edge"] is None and "too few points (1 LR)" in row["note"]


def test_diverged_lr_ranks_below_every_finite_loss():
    lrs = [1e-4, 3e-4, 1e-3, 3e-3]
    row = analyze.best_lr(lr_points(lrs, [3.5, 3.2, 3.1, math.inf]))
    assert row["best_lr"] == 1e-3 and row["runner_up_lr"] == 3e-4
    assert not row["at_edge"]  # the larger LR was tried and diverged: no point widening
    assert row["refined_lr"] is None and "a neighbour diverged" in row["note"]
    row = analyze.best_lr(lr_points(lrs[:2], [math.inf, math.inf]))
    assert row["best_lr"] is None and row["note"] == "all diverged"


def test_lr_table_and_width_trend_from_run_folders(tmp_path):
    """SP-like: the best LR drops half a decade per doubling of width; muP-like: it stays put. Losses are a
    parabola in log10(LR) around an optimum between grid points; a diverged seed makes its LR diverged."""
    grid = [10 ** (-4 + i / 2) for i in range(6)]  # 1e-4 ... 3.2e-2, half-decade steps
    for label, best_index in (("sp", {64: 3, 128: 2, 256: 1}), ("mup", {64: 2, 128: 2, 256: 2})):
        for width, i in best_index.items():
            optimum = grid[i] * 10 ** 0.1  # near, not on, a grid point
            for lr in grid:
                for seed in (1, 2):
                    final = parabola_losses([lr], optimum)[0] + 0.01 * seed
                    write_run(tmp_path, label, lr=lr, seed=seed, width=width, study="lr",
                              curve=[(1e12, 6.0), (2e12, final)])
    write_run(tmp_path, "sp", lr=grid[-1], seed=3, width=64, study="lr", status="diverged",
              curve=[(1e12, 6.0), (2e12, float("nan"))])
    records, skipped = load(tmp_path)
    assert not skipped
    table = [r for r in analyze.best_lr_table(records, "final") if r["label"] == "sp"]
    assert [r["width"] for r in table] == [64, 128, 256]
    for r, i in zip(table, (3, 2, 1)):
        assert r["best_lr"] == grid[i] and r["n_lrs"] == 6 and not r["at_edge"]
        # losses are a parabola in log10(LR) plus the same seed offset at every LR: refinement is exact
        assert r["refined_lr"] == pytest.approx(grid[i] * 10 ** 0.1, rel=1e-9)
        assert r["best_val_loss"] == pytest.approx(parabola_losses([grid[i]], grid[i] * 10 ** 0.1)[0] + 0.015)
    assert table[0]["losses"][-1] == math.inf and table[0]["n_diverged"] == 1
    mup, sp = analyze.lr_trend(analyze.best_lr_table(records, "final"))
    # SP: half a decade per doubling, b = -0.5 / log10(2) = -1.66; muP: b = 0
    assert sp["label"] == "sp" and sp["b"] == pytest.approx(-0.5 / math.log10(2), rel=1e-9)
    assert sp["b_refined"] == pytest.approx(sp["b"], rel=1e-9)
    assert sp["b_stderr"] == pytest.approx(0.0, abs=1e-6)
    assert mup["b"] == pytest.approx(0.0, abs=1e-12) and mup["a"] == pytest.approx(-3.0)


def test_metric_best_ranks_by_the_lowest_loss(tmp_path):
    # lr 1e-3 ends best; lr 3e-3 reaches a lower loss mid-run and then overfits
    write_run(tmp_path, "modern", lr=1e-3, curve=[(1e12, 5.0), (2e12, 3.2), (4e12, 3.1)])
    write_run(tmp_path, "modern", lr=3e-3, curve=[(1e12, 5.0), (2e12, 3.0), (4e12, 3.3)])
    records, _ = load(tmp_path)
    (final,) = analyze.best_lr_table(records, "final")
    (best,) = analyze.best_lr_table(records, "best")
    assert (final["best_lr"], final["best_val_loss"]) == (1e-3, 3.1)
    assert (best["best_lr"], best["best_val_loss"]) == (3e-3, 3.0)


def test_runs_that_differ_in_more_than_seed_and_lr_are_flagged(tmp_path):
    for lr in (1e-3, 3e-3, 1e-2):
        write_run(tmp_path, "sp", lr=lr, seed=1, use_mup=False, curve=[(1e12, 5.0), (2e12, 3.0 + lr)])
        write_run(tmp_path, "sp", lr=lr, seed=2, use_mup=lr > 2e-3, curve=[(1e12, 5.0), (2e12, 3.0 + lr)])
    records, _ = load(tmp_path)
    (row,) = analyze.best_lr_table(records, "final")
    assert row["note"].endswith("runs differ in use_mup")


# ----------------------------------------------------------------------------- damaged folders


def test_broken_folders_are_skipped_with_the_right_reason(tmp_path):
    good = write_run(tmp_path, "baseline", seed=1)
    write_run(tmp_path, "baseline", seed=2, status=None)  # no final.json: running or killed
    p = write_run(tmp_path, "baseline", seed=3)
    open(os.path.join(p, "metrics.csv"), "w").close()  # empty metrics.csv
    p = write_run(tmp_path, "baseline", seed=4)
    text = open(os.path.join(p, "metrics.csv")).read()
    open(os.path.join(p, "metrics.csv"), "w").write(text[:-12])  # truncated in the middle of the last line
    p = write_run(tmp_path, "baseline", seed=5, curve=[(1e12, float("nan")), (2e12, float("nan"))])
    p = write_run(tmp_path, "baseline", seed=6)
    open(os.path.join(p, "config.json"), "w").write('{"label": "baseline", "n_em')  # garbage json
    p = write_run(tmp_path, "baseline", seed=7)
    open(os.path.join(p, "final.json"), "w").write("\x00\x01garbage")
    write_run(tmp_path, "baseline", seed=8, status="interrupted")
    p = write_run(tmp_path, "baseline", seed=9)
    lines = open(os.path.join(p, "metrics.csv")).read().splitlines(keepends=True)
    open(os.path.join(p, "metrics.csv"), "w").write("".join(lines[:-1]))  # last row lost whole
    p = write_run(tmp_path, "baseline", seed=10)
    results.write_json(os.path.join(p, "config.json"), {"something": "else"})  # another tool's folder
    p = write_run(tmp_path, "baseline", seed=11)
    open(os.path.join(p, "metrics.csv"), "w").write("a,b,c\n1,2,3\n")
    p = write_run(tmp_path, "baseline", seed=12)
    results.write_json(os.path.join(p, "final.json"), {"status": ["what"]})
    p = write_run(tmp_path, "baseline", seed=13)
    results.write_json(os.path.join(p, "final.json"), [1, 2])
    p = write_run(tmp_path, "baseline", seed=14)
    results.write_json(os.path.join(p, "config.json"), "baseline")
    records, skipped = load(tmp_path)
    assert [r["path"] for r in records] == [good]
    assert skipped == {
        "baseline_64d_lr1.0e-03_s2": "running or killed (no final.json)",
        "baseline_64d_lr1.0e-03_s3": "empty metrics.csv",
        "baseline_64d_lr1.0e-03_s4": "damaged lines in metrics.csv",
        "baseline_64d_lr1.0e-03_s5": "no finite val_loss in metrics.csv",
        "baseline_64d_lr1.0e-03_s6": "unreadable config.json (JSONDecodeError)",
        "baseline_64d_lr1.0e-03_s7": "unreadable final.json (JSONDecodeError)",
        "baseline_64d_lr1.0e-03_s8": "interrupted (run the same command again to resume it)",
        "baseline_64d_lr1.0e-03_s9": "metrics.csv ends before final.json's last step (truncated?)",
        "baseline_64d_lr1.0e-03_s10": "config.json has no label (not a train.py run?)",
        "baseline_64d_lr1.0e-03_s11": "metrics.csv header lacks step, tokens, flops, val_loss",
        "baseline_64d_lr1.0e-03_s12": "unknown status in final.json",
        "baseline_64d_lr1.0e-03_s13": "final.json is not a JSON object",
        "baseline_64d_lr1.0e-03_s14": "config.json is not a JSON object",
    }
    rc, out = run_main([tmp_path, "--no-plots"])
    assert rc == 0
    summary = out.splitlines()[0]
    assert summary.startswith(f"read 1 run(s) from {tmp_path}, skipped 13: ")
    assert "1 running or killed (no final.json)" in summary and "1 empty metrics.csv" in summary


def test_nan_final_loss_counts_as_diverged(tmp_path):
    write_run(tmp_path, "baseline", curve=[(1e12, 4.0), (2e12, 3.0), (4e12, float("nan"))])
    write_run(tmp_path, "diverged", status="diverged", curve=[])  # diverged before the first evaluation
    records, skipped = load(tmp_path)
    assert not skipped and all(r["diverged"] for r in records)
    assert records[0]["final_loss"] == math.inf
    assert "counted as diverged" in records[0]["warnings"][0]


def test_empty_and_unrelated_folders_are_one_line_errors(tmp_path):
    rc, out = run_main([tmp_path])
    assert rc == 2 and out.startswith("error: no run folders under") and out.count("\n") == 1
    os.makedirs(tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text('{"model": "resnet"}')
    rc, out = run_main([tmp_path])
    assert rc == 2 and out == (f"error: none of the 1 run folder(s) under {tmp_path} can be analysed: "
                               f"1 config.json has no label (not a train.py run?)\n")
    rc, out = run_main([tmp_path / "missing"])
    assert rc == 2 and out == f"error: results folder not found: {tmp_path / 'missing'}\n"
    rc, out = run_main([tmp_path, "--metric", "median"])
    assert rc == 2 and out.count("\n") == 1 and "invalid choice: 'median'" in out


def test_unwritable_outputs_are_one_line_errors(tmp_path):
    write_run(tmp_path / "results", "modern", curve=power_curve(1.0))
    write_run(tmp_path / "results", "retro", curve=power_curve(0.5))
    (tmp_path / "a_file").write_text("")
    rc, out = run_main([tmp_path / "results", "--plots", tmp_path / "a_file"])
    assert rc == 2 and out.splitlines()[-1] == (f"error: cannot write plots to {tmp_path / 'a_file'}: File exists; "
                                                f"choose a folder with --plots DIR or use --no-plots")
    rc, out = run_main([tmp_path / "results", "--no-plots", "--json", tmp_path / "missing" / "out.json"])
    assert rc == 2 and out.splitlines()[-1].startswith(f"error: cannot write --json {tmp_path / 'missing'}")


# ----------------------------------------------------------------------------- fuzz: never a traceback



def fuzz_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    write_run(root, "baseline", seed=1, curve=power_curve(1.0))
    write_run(root, "variant", seed=1, curve=power_curve(1.3))
    victim = write_run(root, "variant", seed=2, curve=power_curve(1.3))
    return root, victim


garbage = st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", ",,,,", "\n\n", "\x00", '"', "-", "1e-320"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1), insert=garbage, where=st.floats(0, 1), which=st.sampled_from(
    ["metrics.csv", "config.json", "final.json"]))
def test_fuzz_truncation_and_garbage_never_crash(tmp_path_factory, cut, insert, where, which):
    root, victim = fuzz_folder(tmp_path_factory)
    path = os.path.join(victim, which)
    text = open(path).read()
    text = text[:int(cut * len(text))] if cut < 0.98 else text
    at = int(where * len(text))
    open(path, "w", encoding="latin-1", errors="replace").write(text[:at] + insert + text[at:])
    rc, out = run_main([root, "--no-plots", "--json", root / "out.json", "--verbose", "--detailed",
                        "--vs", "n_layer", "--by", "n_embd"])
    assert rc == 0, out  # the two good runs are always there
    assert json.load(open(root / "out.json"))["runs"]["read"] in (2, 3)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=6)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(["label", "arch", "n_embd", "learning_rate", "seed", "study",
                                                "dataset", "n_layer", "derived"]), json_values, max_size=5),
       final=st.dictionaries(st.sampled_from(["status", "steps", "step_val_acc_99"]), json_values, max_size=3))
def test_fuzz_config_and_final_values_never_crash_with_plots(tmp_path_factory, values, final):
    """Wrong types in config.json and final.json (lists for widths, NaN learning rates, '$' in labels for
    matplotlib...) with plots on."""
    root, victim = fuzz_folder(tmp_path_factory)
    config = json.load(open(os.path.join(victim, "config.json")))
    results.write_json(os.path.join(victim, "config.json"), {**config, **values})
    old = json.load(open(os.path.join(victim, "final.json")))
    results.write_json(os.path.join(victim, "final.json"), {**old, **final})
    rc, out = run_main([root, "--json", root / "out.json", "--vs", "learning_rate", "--by", "label"])
    assert rc == 0, out


def test_deeply_nested_json_is_skipped(tmp_path):
    write_run(tmp_path, "baseline")
    p = write_run(tmp_path, "baseline", seed=2)
    open(os.path.join(p, "config.json"), "w").write("[" * 100000)
    records, skipped = load(tmp_path)
    assert len(records) == 1 and "nested too deeply" in list(skipped.values())[0]


# ----------------------------------------------------------------------------- steps to accuracy


def test_steps_to_99_percent_mean_and_standard_error(tmp_path):
    def acc_curve(step99, n_rows=11):
        # val_acc rises to 1.0 at step99 (a multiple of 100); train_acc saturates early
        return [(min(1.0, 0.05 * i), 1.0 if 100 * i >= step99 else 0.5) for i in range(n_rows)]
    for seed, s99 in ((1, 300), (2, 500), (3, 1000)):
        write_run(tmp_path, "baseline", seed=seed, dataset="mod97_div", acc=acc_curve(s99), study="grok")
    write_run(tmp_path, "baseline", seed=4, dataset="mod97_div", acc=acc_curve(99999), study="grok")  # never
    # a final.json without the key (another writer): the step is read from the metrics
    p = write_run(tmp_path, "layerwise", seed=1, dataset="mod97_div", acc=acc_curve(200), study="grok")
    final = json.load(open(os.path.join(p, "final.json")))
    del final["step_val_acc_99"]
    results.write_json(os.path.join(p, "final.json"), final)
    write_run(tmp_path, "layerwise", seed=2, dataset="mod97_div", acc=acc_curve(400), study="grok")
    records, _ = load(tmp_path)
    table = analyze.steps_to_accuracy(records)
    rows = {r["label"]: r for r in table}
    base = rows["baseline"]
    assert base["n_runs"] == 4 and base["n_reached"] == 3 and base["never"] == 1 and base["never_max_steps"] == 1000
    assert base["mean_steps"] == pytest.approx(600.0)
    std = math.sqrt(((300 - 600) ** 2 + (500 - 600) ** 2 + (1000 - 600) ** 2) / 2)  # 360.555
    assert base["std"] == pytest.approx(std) and base["sem"] == pytest.approx(std / math.sqrt(3))
    assert rows["layerwise"]["steps"] == [200, 400]
    assert rows["layerwise"]["sem"] == pytest.approx(100.0)  # std 141.42 / sqrt 2
    assert [r["label"] for r in table] == ["layerwise", "baseline"]  # fastest first
    rc, out = run_main([tmp_path, "--no-plots"])
    assert rc == 0 and "mod97_div  baseline   transformer  64     1.00e-03  4     3        600         208" in out


# ----------------------------------------------------------------------------- loss against a config key


def test_vs_table_tunes_lr_within_each_cell(tmp_path):
    for n_layer in (2, 4):
        for width in (64, 128):
            for lr, penalty in ((1e-3, 0.0), (3e-3, 0.2)):
                loss = 4.0 - 0.1 * n_layer - 0.001 * width + penalty
                write_run(tmp_path, "modern", lr=lr, width=width, n_layer=n_layer,
                          run_name=f"L{n_layer}_{width}d_lr{lr}", curve=[(1e12, 6.0), (2e12, loss)])
    records, _ = load(tmp_path)
    table = analyze.vs_table(records, "n_layer", "n_embd", "final")
    cells = {(r["value"], r["by_value"]): r for r in table}
    assert cells[(4, 128)]["loss"] == pytest.approx(4.0 - 0.4 - 0.128)
    assert cells[(2, 64)]["best_lr"] == 1e-3 and cells[(2, 64)]["n_runs"] == 2
    with pytest.raises(analyze.UserError, match="no run has config key 'n_layers' \\(did you mean 'n_layer'\\?\\)"):
        analyze.vs_table(records, "n_layers", None, "final")
    # derived keys work too
    assert {r["value"] for r in analyze.vs_table(records, "n_params", None, "final")} == {409600, 1638400}


# ----------------------------------------------------------------------------- the command line, end to end


def make_mixed_results(root):
    """A small study folder like a real one: an LR sweep at three widths, an ablation with three seeds and
    a broken run, a grokking study with accuracies. Returns each ablation run's compute multiplier."""
    for width, best in ((64, 3e-3), (128, 2e-3), (256, 1.2e-3)):
        for lr in (1e-3, 3e-3, 1e-2, 3e-2):
            if lr == 3e-2:
                write_run(root, "modern", lr=lr, width=width, study="lr_sweep", status="diverged",
                          curve=[(1e11, 7.0), (2e11, float("nan"))])
                continue
            write_run(root, "modern", lr=lr, width=width, study="lr_sweep",
                      curve=power_curve(width / 64, lr, best_lr=best))
            write_run(root, "lstm", lr=lr, width=width, study="lr_sweep", arch="lstm",
                      curve=power_curve(width / 128, lr, best_lr=best * 2, floor=2.3))
    multiplier = {}
    for seed in (1, 2, 3):
        rng = np.random.default_rng(seed)
        for label, k in (("modern", 1.0), ("no_rope", 0.8), ("no_swiglu", 0.87), ("retro", 0.55),
                         ("post_norm", 0.6)):
            multiplier[(label, seed)] = k * math.exp(rng.normal(0, 0.05))
            write_run(root, label, lr=3e-3, seed=seed, study="ablations", curve=power_curve(multiplier[(label, seed)]))
    write_run(root, "modern", lr=3e-3, seed=4, study="ablations", status=None)  # killed
    for seed, s99 in ((1, 3000), (2, 3400), (3, 4200)):
        acc = [(min(1.0, 0.2 * i), min(1.0, 0.1 + 0.9 * (100 * i / s99) ** 3)) for i in range(51)]
        write_run(root, "baseline", lr=1e-3, seed=seed, study="grok", dataset="mod97_div", acc=acc, steps=5000,
                  curve=lambda f: 1.0)
        acc = [(min(1.0, 0.2 * i), min(1.0, 0.1 + 0.9 * (100 * i / (s99 / 2)) ** 3)) for i in range(51)]
        write_run(root, "layerwise", lr=1e-3, seed=seed, study="grok", dataset="mod97_div", acc=acc,
                  steps=5000, curve=lambda f: 1.0)
    return multiplier


def test_cli_end_to_end_writes_tables_json_csv_and_plots(tmp_path):
    multiplier = make_mixed_results(tmp_path / "results")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "analyze.py"), str(tmp_path / "results"),
                           "--json", str(tmp_path / "out.json"), "--csv", str(tmp_path / "csv"),
                           "--vs", "n_embd", "--by", "label"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert out.splitlines()[0] == (f"read 42 run(s) from {tmp_path / 'results'} (3 diverged), skipped 1: "
                                   f"1 running or killed (no final.json)")
    assert "== lr_sweep: best learning rate per (label, arch, width)" in out
    assert "== ablations, width 64: compute-equivalent gain vs 'modern' ==" in out
    report = json.load(open(tmp_path / "out.json"))
    assert report["runs"] == {"read": 42, "skipped": 1, "diverged": 3, "skipped_runs": [
        {"path": str(tmp_path / "results" / "ablations" / "modern_64d_lr3.0e-03_s4"),
         "reason": "running or killed (no final.json)"}]}
    best = {(r["label"], r["width"]): r for r in report["best_lr"]}
    assert best[("modern", 64)]["best_lr"] == 3e-3 and best[("modern", 256)]["best_lr"] == 1e-3
    assert best[("lstm", 256)]["at_edge"] is False
    assert set(best[("modern", 64)]) >= {"label", "arch", "width", "best_lr", "best_val_loss", "refined_lr",
                                         "at_edge"}
    ceg = {r["label"]: r for r in report["ceg"] if r["study"] == "ablations"}
    assert set(ceg["retro"]) >= {"label", "baseline", "target_loss", "ceg", "ci_low", "ci_high", "n_pairs"}
    assert ceg["retro"]["n_pairs"] == 3 and ceg["retro"]["baseline"] == "modern"
    assert ceg["retro"]["ci_low"] < ceg["retro"]["ceg"] < ceg["retro"]["ci_high"]
    assert ceg["modern"]["ceg"] == 1.0
    # the curves are power laws L = 2 + 3 (k C / 1e12)^-0.3: the exact CEG of a pair is k_variant / k_modern;
    # analyze interpolates between evaluations 10% apart in FLOPs, so it agrees to well within 0.5%
    for label in ("no_rope", "no_swiglu", "post_norm", "retro"):
        exact = math.exp(np.mean([math.log(multiplier[(label, s)] / multiplier[("modern", s)]) for s in (1, 2, 3)]))
        assert ceg[label]["ceg"] == pytest.approx(exact, rel=0.005)
    assert [r["label"] for r in report["steps_to_acc"]] == ["layerwise", "baseline"]
    plots = {os.path.relpath(p, tmp_path / "results") for p in report["plots"]}
    assert plots >= {"lr_sweep/plots/lr_sweep.png", "lr_sweep/plots/lr_trend.png", "ablations/plots/ceg_w64.png",
                     "ablations/plots/curves_w64.png", "grok/plots/acc_mod97_div.png",
                     "lr_sweep/plots/vs_n_embd_by_label.png"}
    for p in report["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"plots: {tmp_path / 'results' / 'ablations' / 'plots'}/ (ceg_w64.png, curves_w64.png, vs_n_embd" in out
    assert sorted(os.listdir(tmp_path / "csv")) == ["best_lr.csv", "ceg.csv", "lr_trend.csv", "run_table.csv",
                                                     "steps_to_acc.csv", "vs.csv"]


def test_cli_plots_option_and_study_folder(tmp_path):
    make_mixed_results(tmp_path / "results")
    rc, out = run_main([tmp_path / "results" / "ablations", "--plots", tmp_path / "figs", "--width", "64",
                        "--target", "4.6", "--baseline", "retro", "--verbose"])
    assert rc == 0, out
    assert sorted(os.listdir(tmp_path / "figs")) == ["ceg_w64.png", "curves_w64.png"]
    assert "target val loss 4.6000 (--target)" in out and "  skipped " in out
    assert "baseline 'retro' by default" not in out
