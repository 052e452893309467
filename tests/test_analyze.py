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

import analyze
import results
from conftest import ROOT

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
    # the default interval: t with 1 df on the mean log CEG: mean 0.135101 decades, the two per-seed values
    # 0.25 and 0.020202 decades are 0.229798 apart, so s.e. = 0.229798 / 2 and t(0.975, 1) = 12.706205
    half = 12.706205 * 0.229798 / 2
    assert rope["ci_low"] == pytest.approx(10 ** (0.135101 - half), rel=1e-5)
    assert rope["ci_high"] == pytest.approx(10 ** (0.135101 + half), rel=1e-5)
    assert rope["interval_label"] == "95% t-interval over 2 seeds"
    # the printed gain is the baseline over the variant: the inverse, and so is its interval
    assert rope["gain"] == pytest.approx(1 / 1.364901, rel=1e-6) and rope["gain_of"] == "baseline"
    assert rope["gain_low"] == pytest.approx(1 / rope["ci_high"]) and rope["gain_over"] == "rope"
    # the bootstrap (--interval bootstrap) over two seeds: the resamples are the two values or their mean,
    # so its interval is the seeds' range
    (table,) = analyze.ceg_tables(records, interval="bootstrap")
    rope = next(r for r in table["rows"] if r["label"] == "rope")
    assert rope["ci_low"] == pytest.approx(1.047616, rel=1e-6) and rope["ci_high"] == pytest.approx(1.778279, rel=1e-6)
    assert rope["interval_label"] == "95% percentile bootstrap over 2 seeds"


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
    # worse: baseline reaches 2.6 at 10**11.8; worse never does, so it needs more than 1e12: CEG < 10**-0.2,
    # i.e. the baseline over 'worse' (the printed gain) is more than 10**0.2
    assert rows["worse"]["bound"] == "upper" and analyze.format_ceg(rows["worse"]) == ">1.58x"
    assert rows["worse"]["ceg"] == pytest.approx(10 ** -0.2) and rows["worse"]["gain_bound"] == "lower"
    assert rows["worse"]["ci_low"] is None
    # baseline never reaches 2.2 but 'better' does: a lower bound
    (table,) = analyze.ceg_tables(records, target=2.4)
    rows = {r["label"]: r for r in table["rows"]}
    assert rows["better"]["bound"] == "lower" and analyze.format_ceg(rows["better"]).startswith("<")
    assert rows["worse"]["bound"] == "unknown"


def test_interval_coverage_by_simulation():
    """The default t-interval covers a known gain at its nominal 95% with 3 seeds (binomial s.e. 0.5% over 2000
    simulated studies); the percentile bootstrap over 3 seeds is about [min, max] of the seeds and covers
    1 - 2 / 2**3 = 75% of the time. Each simulated study goes through compare() like a real one."""
    t3 = analyze.interval_coverage(3, "t", replications=2000)
    assert 0.93 <= t3 <= 0.97, t3
    boot3 = analyze.interval_coverage(3, "bootstrap", replications=1000, n_boot=2000)
    assert 0.70 <= boot3 <= 0.82, boot3
    assert analyze.interval_coverage(2, "t", replications=500) > analyze.interval_coverage(
        2, "bootstrap", replications=500, n_boot=500) + 0.3  # 2 seeds: the bootstrap covers about half the time


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


# ----------------------------------------------------------------------------- annealed points, gains, intervals


def log_linear(k, a=5.0):
    """Loss linear in log10(FLOPs), compute worth k times the reference's: a shift by k in FLOPs is exact under
    analyze's log-FLOPs interpolation, so gains come out exactly."""
    return lambda f: a - 0.5 * math.log10(k * f / 1e12)


ANNEAL_STEPS = (200, 400, 700)


def write_annealed_run(root, label, k, seed=1, lr=1e-3, penalty=0.0, steps=1000, study="study", cooldowns=True,
                       **config):
    """A WSD-style run: its annealed losses follow log_linear(k) (anneal.csv at ANNEAL_STEPS and the final row);
    its mid-schedule evaluations sit `penalty` above them (the LR is still high there)."""
    annealed = log_linear(k)
    flops = [s * TOKENS_PER_STEP * FLOPS_PER_TOKEN for s in range(100, steps + 1, 100)]
    curve = [(f, annealed(f) + (penalty if f < flops[-1] else 0.0)) for f in flops]
    path = write_run(root, label, lr=lr, seed=seed, study=study, curve=curve, max_iters=steps,
                     run_name=f"{label}_lr{lr}_s{seed}_{steps}", **config)
    if cooldowns:
        results.write_anneal(os.path.join(path, "anneal.csv"), [
            {"step": s, "tokens": s * TOKENS_PER_STEP, "flops": s * TOKENS_PER_STEP * FLOPS_PER_TOKEN,
             "val_loss": annealed(s * TOKENS_PER_STEP * FLOPS_PER_TOKEN)} for s in ANNEAL_STEPS])
    return path


T_975 = {2: 4.302652729911275, 4: 2.7764451051977987}  # Student t quantiles, from tables


def test_annealed_ceg_from_cooldown_points_and_the_mid_schedule_estimate(tmp_path):
    """modern_minus_rope needs 2x (times a known per-seed factor) the compute of modern at every annealed point;
    its mid-schedule evaluations are 0.3 above its annealed curve, modern's 0.1 above: reading gains off the
    evaluation curves gives a different, wrong answer."""
    jitter = {1: 1.0, 2: 1.1, 3: 0.95}
    for seed, j in jitter.items():
        write_annealed_run(tmp_path, "modern", 1.0, seed=seed, penalty=0.1)
        write_annealed_run(tmp_path, "modern_minus_rope", 0.5 / j, seed=seed, penalty=0.3)
    records, _ = load(tmp_path)
    (table,) = analyze.ceg_tables(records, baseline="modern")
    assert table["method"] == "annealed" and not table["method_fallback"]
    row = next(r for r in table["rows"] if r["label"] == "modern_minus_rope")
    # per seed, modern over modern_minus_rope = 2 j exactly; the mean of log(2 j) and its t-interval (2 df)
    logs = np.log([2 * j for j in jitter.values()])
    half = T_975[2] * logs.std(ddof=1) / math.sqrt(3)
    assert row["gain"] == pytest.approx(math.exp(logs.mean()), rel=1e-9)
    assert (row["gain_low"], row["gain_high"]) == pytest.approx((math.exp(logs.mean() - half),
                                                                 math.exp(logs.mean() + half)), rel=1e-9)
    assert row["method"] == "annealed" and row["n_pairs"] == 3 and row["gain_bound"] is None
    # the default target is the lowest loss every annealed curve reaches: modern_minus_rope's worst final loss
    final = 1000 * TOKENS_PER_STEP * FLOPS_PER_TOKEN
    assert table["target"] == pytest.approx(max(log_linear(0.5 / j)(final) for j in jitter.values()))
    # --method curve: the mid-schedule estimate, labelled so
    (curve,) = analyze.ceg_tables(records, baseline="modern", method="curve")
    mid = next(r for r in curve["rows"] if r["label"] == "modern_minus_rope")
    assert curve["method"] == "curve" and mid["method"] == "curve"
    assert mid["gain"] < 0.75 * row["gain"]  # read mid-schedule, the 0.2 difference in penalties moves it by a third
    rc, out = run_main([tmp_path, "--no-plots", "--method", "curve"])
    assert "method: MID-SCHEDULE ESTIMATE (--method curve)" in out
    rc, out = run_main([tmp_path, "--no-plots"])
    assert rc == 0 and "method: annealed points" in out
    assert "interval: 95% t-interval over 3 seeds (t with n-1 df on the mean paired log gain)" in out


def test_annealed_points_from_runs_at_several_budgets(tmp_path):
    """No anneal.csv: the final losses of runs of one variant, seed and LR at several budgets are its annealed
    points; --method curve reads the longest run's evaluations."""
    for seed in (1, 2):
        for steps in (300, 600, 1200):
            write_annealed_run(tmp_path, "baseline", 1.0, seed=seed, steps=steps, penalty=0.2, cooldowns=False)
            write_annealed_run(tmp_path, "variant", 1.6, seed=seed, steps=steps, penalty=0.2, cooldowns=False)
    records, _ = load(tmp_path)
    (table,) = analyze.ceg_tables(records)
    row = next(r for r in table["rows"] if r["label"] == "variant")
    assert table["method"] == "annealed" and row["n_pairs"] == 2 and not row["note"]
    assert row["gain"] == pytest.approx(1 / 1.6, rel=1e-9)  # baseline over variant: the variant is better
    assert all(len(c["flops"]) == 3 for v in table["variants"].values() for c in v["curves"])
    (curve,) = analyze.ceg_tables(records, method="curve")
    assert all(len(c["runs"]) == 1 and c["runs"][0]["last_step"] == 1200
               for v in curve["variants"].values() for c in v["curves"])


def test_without_annealed_points_the_header_says_mid_schedule(tmp_path):
    for seed in (1, 2):
        write_annealed_run(tmp_path, "baseline", 1.0, seed=seed, cooldowns=False)
        write_annealed_run(tmp_path, "variant", 1.5, seed=seed)  # only one side has cooldowns
    records, _ = load(tmp_path)
    (table,) = analyze.ceg_tables(records)
    assert table["method"] == "curve" and table["method_fallback"]
    rc, out = run_main([tmp_path, "--no-plots"])
    assert ("method: MID-SCHEDULE ESTIMATE (a fallback: no annealed points, baseline has one budget per seed and "
            "no anneal.csv)") in out


def test_gain_convention_names_both_sides_and_invert_flips_it(tmp_path):
    for seed in (1, 2, 3):
        write_annealed_run(tmp_path, "modern", 1.0, seed=seed)
        write_annealed_run(tmp_path, "modern_minus_rope", 0.5, seed=seed)
    rc, out = run_main([tmp_path, "--no-plots", "--baseline", "modern", "--json", tmp_path / "g.json"])
    assert rc == 0
    assert "== study, width 64: compute-equivalent gain, 'modern' over each variant ==" in out
    assert ("gain of 'modern' over each variant = FLOPs the variant needs / FLOPs 'modern' needs to reach the "
            "target; > 1 means 'modern' is better (needs less compute)") in out
    assert ("modern over modern_minus_rope  transformer  1.00e-03  3      2.458e+12            2.00x  [2.00, 2.00]"
            in out)
    row = next(r for r in json.load(open(tmp_path / "g.json"))["ceg"] if not r["is_baseline"])
    assert (row["gain_of"], row["gain_over"], row["gain"], row["ceg"]) == ("modern", "modern_minus_rope",
                                                                           pytest.approx(2.0), pytest.approx(0.5))
    rc, out = run_main([tmp_path, "--no-plots", "--invert", "--json", tmp_path / "i.json"])
    assert "== study, width 64: compute-equivalent gain, each variant over 'modern' ==" in out
    assert "> 1 means the variant is better" in out and "modern_minus_rope over modern" in out and "0.50x" in out
    row = next(r for r in json.load(open(tmp_path / "i.json"))["ceg"] if not r["is_baseline"])
    assert (row["gain_of"], row["gain"], row["ceg"]) == ("modern_minus_rope", pytest.approx(0.5), pytest.approx(0.5))


def test_one_seed_has_no_interval_and_says_so(tmp_path):
    write_annealed_run(tmp_path, "baseline", 1.0)
    write_annealed_run(tmp_path, "variant", 1.5)
    records, _ = load(tmp_path)
    row = next(r for r in analyze.ceg_tables(records)[0]["rows"] if r["label"] == "variant")
    assert row["gain_low"] is None and row["interval"] is None and "1 seed: no interval" in row["note"]
    rc, out = run_main([tmp_path, "--no-plots"])
    assert "interval: none (fewer than 2 seeds, or bounds)" in out


def test_partly_diverged_variant_keeps_its_finite_seeds(tmp_path):
    for seed in (1, 2, 3):
        write_annealed_run(tmp_path, "baseline", 1.0, seed=seed)
        if seed == 2:
            write_run(tmp_path, "post_norm", seed=seed, status="diverged", curve=[(1e12, 5.0), (2e12, float("nan"))])
        else:
            write_annealed_run(tmp_path, "post_norm", 0.8, seed=seed)
    records, _ = load(tmp_path)
    (table,) = analyze.ceg_tables(records)
    row = next(r for r in table["rows"] if r["label"] == "post_norm")
    assert row["n_pairs"] == 2 and row["n_diverged"] == 1 and row["gain"] == pytest.approx(1 / 0.8)
    assert "1 of 3 seeds diverged" in row["note"] and not table["notes"]


def test_winners_curse_and_choosing_the_lr_on_other_seeds(tmp_path):
    """The variant has two LRs: seed 1 is best at 1e-3, seeds 2 and 3 (and the mean) at 3e-3. Chosen and measured
    on the same seeds, the table warns; --select_seeds 1 chooses 1e-3 on seed 1 and measures on seeds 2 and 3."""
    k = {(1e-3, 1): 1.3, (3e-3, 1): 1.0, (1e-3, 2): 0.9, (3e-3, 2): 1.2, (1e-3, 3): 0.8, (3e-3, 3): 1.1}
    for seed in (1, 2, 3):
        write_annealed_run(tmp_path, "baseline", 1.0, seed=seed)
        for lr in (1e-3, 3e-3):
            write_annealed_run(tmp_path, "variant", k[(lr, seed)], seed=seed, lr=lr)
    records, _ = load(tmp_path)
    (table,) = analyze.ceg_tables(records)
    row = next(r for r in table["rows"] if r["label"] == "variant")
    assert row["learning_rate"] == 3e-3 and row["winners_curse"] and table["winners_curse"] == ["variant"]
    rc, out = run_main([tmp_path, "--no-plots"])
    assert "warning: winner's curse: variant chose the LR on the same runs that measure the gain" in out
    (table,) = analyze.ceg_tables(records, select_seeds=[1])
    row = next(r for r in table["rows"] if r["label"] == "variant")
    assert row["learning_rate"] == 1e-3 and row["n_pairs"] == 2 and not table["winners_curse"]
    assert row["gain"] == pytest.approx(1 / math.sqrt(0.9 * 0.8), rel=1e-9)
    rc, out = run_main([tmp_path, "--no-plots", "--select_seeds", "1", "--measure_seeds", "1,2"])
    assert rc == 0 and "winner's curse: variant" in out  # seed 1 both chose and measured
    rc, out = run_main([tmp_path, "--no-plots", "--measure_seeds", "9"])
    assert rc == 2 and out == "error: --measure_seeds: no run has seed 9; seeds: 1, 2, 3\n"
    rc, out = run_main([tmp_path, "--select_seeds", "1,,2"])
    assert rc == 2 and "--select_seeds takes seeds separated by commas" in out


def test_gain_per_lr_and_lr_sensitivity(tmp_path):
    """Both sides at three LRs with known compute multipliers: the gain at each LR is their ratio, tuned vs tuned
    pairs the best LRs, and the LR sensitivity is the gain with the variant at its neighbouring LRs."""
    base_k = {1e-3: 0.7, 3e-3: 1.0, 1e-2: 0.6}
    var_k = {1e-3: 0.4, 3e-3: 0.5, 1e-2: 0.45}
    for seed in (1, 2):
        for lr in base_k:
            write_annealed_run(tmp_path, "baseline", base_k[lr], seed=seed, lr=lr, steps=4000)
            write_annealed_run(tmp_path, "variant", var_k[lr], seed=seed, lr=lr, steps=4000)
    records, _ = load(tmp_path)
    (table,) = analyze.ceg_tables(records, target=5.1)
    per_lr = {(r["learning_rate"], r["tuned"]): r for r in table["per_lr"]}
    for lr in base_k:
        assert per_lr[(lr, False)]["gain"] == pytest.approx(base_k[lr] / var_k[lr], rel=1e-9)
        assert per_lr[(lr, False)]["n_pairs"] == 2 and per_lr[(lr, False)]["target_loss"] == 5.1
    assert per_lr[(3e-3, True)]["gain"] == pytest.approx(2.0) and per_lr[(3e-3, True)]["baseline_lr"] == 3e-3
    sens = {r["label"]: r for r in table["sensitivity"]}
    assert [(n["learning_rate"], round(n["gain"], 9)) for n in sens["variant"]["neighbours"]] == [
        (1e-3, round(1.0 / 0.4, 9)), (1e-2, round(1.0 / 0.45, 9))]
    assert [round(n["gain"], 9) for n in sens["baseline"]["neighbours"]] == [round(1 / 0.7, 9), round(1 / 0.6, 9)]
    rc, out = run_main([tmp_path, "--no-plots", "--target", "5.1"])
    assert "does the gain depend on the LR?" in out and "tuned: 3.00e-03 vs 3.00e-03" in out
    assert "LR sensitivity:" in out and "1.00e-03: 2.50x [2.50, 2.50]; 1.00e-02: 2.22x [2.22, 2.22]" in out
    # a variant with one LR and no shared grid: no per-LR table unless asked
    (table,) = analyze.ceg_tables([r for r in records if r["lr"] == 3e-3], target=5.1)
    assert table["per_lr"] == [] and table["sensitivity"] == []
    (table,) = analyze.ceg_tables([r for r in records if r["lr"] == 3e-3], target=5.1, per_lr=True)
    assert [r["tuned"] for r in table["per_lr"]] == [False, True]


def test_scale_dependence_slope_and_verdict(tmp_path):
    """Two ablations at widths 32, 64, 128 (compute doubling with width), 3 seeds: one whose gain grows as
    C**0.2, one whose gain is the same at every width. Per-seed scatter 2%."""
    rng = np.random.default_rng(7)
    for w in (32, 64, 128):
        compute = 1e13 * w / 32
        flops = compute * 2.0 ** np.arange(-10, 1)
        loss = 5.0 - 0.5 * np.log10(flops / compute)
        for seed in (1, 2, 3):
            write_run(tmp_path, "modern", seed=seed, width=w, curve=list(zip(flops, loss)))
            for label, gain in (("minus_grows", 1.5 * (w / 32) ** 0.2), ("minus_flat", 1.3)):
                g = gain * math.exp(rng.normal(0, 0.02))
                write_run(tmp_path, label, seed=seed, width=w, curve=list(zip(flops * g, loss)))
    records, _ = load(tmp_path)
    rows = {r["label"]: r for r in analyze.scale_table(analyze.ceg_tables(records, baseline="modern"))}
    grows, flat = rows["minus_grows"], rows["minus_flat"]
    assert [w["width"] for w in grows["widths"]] == [32, 64, 128] and grows["n_points"] == 9
    assert [w["compute"] for w in grows["widths"]] == pytest.approx([1e13, 2e13, 4e13])
    assert grows["slope"] == pytest.approx(0.2, abs=0.03) and grows["slope_low"] > 0
    assert grows["verdict"] == "grows with compute" and grows["gain_of"] == "modern"
    assert flat["slope_low"] <= 0 <= flat["slope_high"] and flat["verdict"] == "scale-invariant within its interval"
    rc, out = run_main([tmp_path, "--plots", tmp_path / "figs", "--baseline", "modern"])
    assert "== study: scale dependence: each gain against compute ==" in out
    assert os.path.exists(tmp_path / "figs" / "scale_dependence.png")


def test_vs_shows_the_seed_spread(tmp_path):
    for n_layer in (2, 4):
        for seed, offset in ((1, 0.0), (2, 0.1), (3, 0.3)):
            write_run(tmp_path, "modern", seed=seed, n_layer=n_layer, run_name=f"L{n_layer}_s{seed}",
                      curve=[(1e12, 6.0), (2e12, 3.0 - 0.1 * n_layer + offset)])
    records, _ = load(tmp_path)
    cell = next(r for r in analyze.vs_table(records, "n_layer", None, "final") if r["value"] == 2)
    assert cell["loss"] == pytest.approx(2.8 + 0.4 / 3)
    assert (cell["loss_low"], cell["loss_high"]) == pytest.approx((2.8, 3.1)) and cell["n_seeds"] == 3
    half = T_975[2] * np.std([0.0, 0.1, 0.3], ddof=1) / math.sqrt(3)
    assert cell["loss_ci_high"] - cell["loss"] == pytest.approx(half)
    rc, out = run_main([tmp_path, "--no-plots", "--vs", "n_layer"])
    assert "mean over seeds [seed range]" in out and "2        2.9333 [2.800, 3.100]" in out


# ----------------------------------------------------------------------------- plots


def test_log_axis_ticks_never_overlap():
    """The tick labels analyze puts on log axes, on the ranges its plots use (LR grids, FLOPs, steps, gains),
    drawn at the plots' sizes: no two visible labels overlap and none is matplotlib's 'a x 10^b'."""
    import matplotlib.pyplot as plt
    for lo, hi in ((1e-4, 3e-2), (1e-3, 3e-3), (2e-3, 4e-3), (3e-4, 1.2e-3), (2.4e11, 2.4e12), (1e10, 1e14),
                   (100, 5000), (1e-5, 1e3), (1e-3, 1.9e-2), (2e12, 3.9e13)):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        analyze.log_ticks(ax, "x", lo, hi)
        fig.canvas.draw()
        labels = [t for t in ax.get_xticklabels() if t.get_text() and lo * 0.999 <= t.get_position()[0] <= hi * 1.001]
        assert len(labels) >= 2, (lo, hi)
        assert not any("times" in t.get_text() or "^" in t.get_text() for t in labels)
        boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), (lo, hi, [t.get_text() for t in labels])
        plt.close(fig)


def test_lr_sweep_plot_puts_the_variants_of_a_width_on_one_axes(tmp_path, monkeypatch):
    for width in (32, 64):
        for lr in (1e-3, 3e-3, 1e-2):
            for seed in (1, 2):
                for label, k in (("swiglu", 1.2), ("gelu", 1.0)):
                    write_run(tmp_path, label, lr=lr, seed=seed, width=width,
                              curve=power_curve(k * width / 32 * (1 + 0.05 * seed), lr, best_lr=3e-3))
    figures = []

    def keep(fig, path, written):  # look at the figure instead of saving it
        legend = lambda ax: [t.get_text() for t in ax.get_legend().get_texts()]
        figures.append((os.path.basename(path), [(ax.get_title(), ax.get_ylim(), legend(ax))
                                                 for ax in fig.axes if ax.get_visible()]))
        analyze.plt.close(fig)
    monkeypatch.setattr(analyze, "save", keep)
    records, _ = load(tmp_path)
    analyze.plot_lr_sweeps(analyze.best_lr_table(records, "final"), "study", str(tmp_path), [])
    ((name, panels),) = figures
    assert name == "lr_sweep.png" and [p[0] for p in panels] == ["width 32", "width 64"]
    assert panels[0][1] == panels[1][1]  # one y-range
    for _, _, legend in panels:
        assert any(t.startswith("gelu") for t in legend) and any(t.startswith("swiglu") for t in legend)



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
    rc, out = run_main([])
    assert rc == 2 and out == "error: the results folder is missing: python analyze.py results/ (or --coverage alone)\n"


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
    results.write_anneal(os.path.join(victim, "anneal.csv"), [
        {"step": s, "tokens": s * TOKENS_PER_STEP, "flops": s * TOKENS_PER_STEP * FLOPS_PER_TOKEN,
         "val_loss": power_curve(1.3)(s * TOKENS_PER_STEP * FLOPS_PER_TOKEN) - 0.1} for s in (200, 500)])
    return root, victim


garbage = st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", ",,,,", "\n\n", "\x00", '"', "-", "1e-320"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1), insert=garbage, where=st.floats(0, 1), which=st.sampled_from(
    ["metrics.csv", "config.json", "final.json", "anneal.csv"]))
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
    # censored median: 300, 500, 1000 and one run that never got there in its 1000 steps: (500 + 1000) / 2
    assert base["median_steps"] == 750 and base["median_kind"] == "exact"
    assert base["final_val_acc_mean"] == pytest.approx(0.875) and base["final_val_acc_min"] == 0.5
    assert base["final_train_acc_mean"] == pytest.approx(0.5)
    rc, out = run_main([tmp_path, "--no-plots"])
    assert rc == 0 and ("mod97_div  baseline   transformer  64     1.00e-03  3/4      750           1 (ran 1000 steps)"
                        "  0.500 [0.500, 0.500]  0.875 [0.500, 1.000]") in out


def test_steps_to_99_percent_is_a_censored_median(tmp_path):
    """Never-reached runs count as '> the steps they ran': the median is exact when they all lie above it, a
    lower bound when half or more never got there, a range when a short run's budget falls inside."""
    def acc_curve(step99, n_rows):
        return [(1.0, 1.0 if 100 * i >= step99 else 0.5) for i in range(n_rows)]
    cases = {"a": [(300, 1000), (500, 1000), (None, 1000)],   # median of 300, 500, >1000: 500
             "b": [(300, 1000), (None, 1000), (None, 1000)],  # median of 300, >1000, >1000: > 1000
             "c": [(800, 1000), (900, 1000), (None, 200)]}    # 800, 900, >200: between 800 and 900
    for label, runs in cases.items():
        for seed, (s99, steps) in enumerate(runs):
            write_run(tmp_path, label, seed=seed, dataset="mod97_div", steps=steps, study="grok",
                      acc=acc_curve(s99 or 10 ** 6, steps // 100 + 1))
    records, _ = load(tmp_path)
    rows = {r["label"]: r for r in analyze.steps_to_accuracy(records)}
    assert (rows["a"]["median_steps"], rows["a"]["median_kind"]) == (500, "exact")
    assert (rows["b"]["median_steps"], rows["b"]["median_kind"]) == (1000, "above")
    assert (rows["c"]["median_steps"], rows["c"]["median_kind"]) == ((800, 900), "between")
    assert [r["label"] for r in analyze.steps_to_accuracy(records)] == ["a", "c", "b"]
    assert [analyze.format_median(rows[k]) for k in "abc"] == ["500", "> 1000", "800-900"]
    assert rows["b"]["n_reached"] == 1 and rows["b"]["never"] == 2



def test_published_means_print_beside_ours_in_the_papers_statistic(tmp_path):
    """--published joins a paper's numbers by (dataset, label); our 'mean, never = ran' counts a run that never
    got there at the steps it ran, as a paper's '7500 = never' mean does; a bad file is one clear error."""
    def acc_curve(step99, n_rows):
        return [(1.0, 1.0 if 100 * i >= step99 else 0.5) for i in range(n_rows)]
    for seed, s99 in enumerate([300, 500, None]):
        write_run(tmp_path, "template", seed=seed, dataset="mod97_div", steps=1000, study="grok",
                  acc=acc_curve(s99 or 10 ** 6, 11))
    write_run(tmp_path, "other", seed=1, dataset="mod97_div", steps=1000, study="grok", acc=acc_curve(200, 11))
    csv_path = tmp_path / "published.csv"
    csv_path.write_text("dataset,label,steps,final_val_acc,note\nmod97_div,template,4200,0.96,x\n"
                        "mod97_sub,template,,,\n")
    records, _ = load(tmp_path)
    table = analyze.add_published(analyze.steps_to_accuracy(records), analyze.load_published(str(csv_path)))
    rows = {r["label"]: r for r in table}
    assert rows["template"]["mean_steps_never_as_run"] == pytest.approx((300 + 500 + 1000) / 3)
    assert (rows["template"]["published_steps"], rows["template"]["published_final_val_acc"]) == (4200, 0.96)
    assert (rows["other"]["published_steps"], rows["other"]["published_final_val_acc"]) == (None, None)
    rc, out = run_main([tmp_path, "--published", csv_path, "--plots", tmp_path / "figs"])
    assert rc == 0 and "mean, never = ran  published mean  published val acc" in out
    assert "steps_to_acc.png" in os.listdir(tmp_path / "figs")
    assert "0.833 [0.500, 1.000]  600                4200            0.96" in out
    csv_path.write_text("dataset,label,steps,final_val_acc\nmod97_div,template,never,\n")
    rc, out = run_main([tmp_path, "--no-plots", "--published", csv_path])
    assert rc == 2 and "line 2: steps and final_val_acc must be numbers or blank, got 'never'" in out
    rc, out = run_main([tmp_path, "--no-plots", "--published", tmp_path / "missing.csv"])
    assert rc == 2 and "cannot read --published" in out and "Traceback" not in out

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
    assert "== ablations, width 64: compute-equivalent gain, 'modern' over each variant ==" in out
    # one budget per seed and no anneal.csv: the mid-schedule estimate, and the header says so
    assert "method: MID-SCHEDULE ESTIMATE (a fallback: no annealed points" in out
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
    assert ceg["modern"]["ceg"] == 1.0 and ceg["modern"]["gain"] == 1.0
    # the documented fields of a row (progress.py reads them)
    assert ceg["retro"]["gain_of"] == "modern" and ceg["retro"]["gain_over"] == "retro"
    assert ceg["retro"]["gain"] == pytest.approx(1 / ceg["retro"]["ceg"])
    assert ceg["retro"]["gain_low"] == pytest.approx(1 / ceg["retro"]["ci_high"])
    assert ceg["retro"]["method"] == "curve" and ceg["retro"]["interval"] == "t"
    assert ceg["retro"]["interval_label"] == "95% t-interval over 3 seeds" and ceg["retro"]["n_seeds"] == 3
    assert report["ci"]["method"].startswith("t-interval")
    tables = {(t["study"], t["width"]): t for t in report["ceg_tables"]}
    assert tables[("ablations", 64)]["method"] == "curve" and tables[("ablations", 64)]["method_fallback"]
    # the curves are power laws L = 2 + 3 (k C / 1e12)^-0.3: the exact CEG of a pair is k_variant / k_modern;
    # analyze interpolates between evaluations 10% apart in FLOPs, so it agrees to well within 0.5%
    for label in ("no_rope", "no_swiglu", "post_norm", "retro"):
        exact = math.exp(np.mean([math.log(multiplier[(label, s)] / multiplier[("modern", s)]) for s in (1, 2, 3)]))
        assert ceg[label]["ceg"] == pytest.approx(exact, rel=0.005)
    assert [r["label"] for r in report["steps_to_acc"]] == ["layerwise", "baseline"]
    plots = {os.path.relpath(p, tmp_path / "results") for p in report["plots"]}
    assert plots >= {"lr_sweep/plots/lr_sweep.png", "lr_sweep/plots/lr_trend.png", "ablations/plots/ceg_w64.png",
                     "ablations/plots/curves_w64.png", "grok/plots/acc_mod97_div.png",
                     "grok/plots/steps_to_acc.png", "lr_sweep/plots/vs_n_embd_by_label.png"}
    for p in report["plots"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"plots: {tmp_path / 'results' / 'ablations' / 'plots'}/ (ceg_w64.png, curves_w64.png, vs_n_embd" in out
    assert sorted(os.listdir(tmp_path / "csv")) == ["best_lr.csv", "ceg.csv", "ceg_per_lr.csv", "lr_trend.csv",
                                                     "run_table.csv", "scale_dependence.csv", "steps_to_acc.csv",
                                                     "vs.csv"]


def test_cli_plots_option_and_study_folder(tmp_path):
    make_mixed_results(tmp_path / "results")
    rc, out = run_main([tmp_path / "results" / "ablations", "--plots", tmp_path / "figs", "--width", "64",
                        "--target", "4.6", "--baseline", "retro", "--verbose"])
    assert rc == 0, out
    assert sorted(os.listdir(tmp_path / "figs")) == ["ceg_w64.png", "curves_w64.png"]
    assert "target val loss 4.6000 (--target)" in out and "  skipped " in out
    assert "baseline 'retro' by default" not in out
