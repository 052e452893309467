"""
Tests for fit_scaling.py: known answers (published Chinchilla constants, synthetic laws, closed-form CEG,
hand-derived allocation), invariances (reordering, units), run folders end to end, and bad input.

The heavy fits run the CLI in a subprocess (as a user would, and so that fit_scaling.py can set one BLAS
thread before numpy loads: see its top). Whole file: about 30-40 s on 2 busy cores.
"""
import json
import math
import os
import subprocess
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy, as in fit_scaling.py

import numpy as np
import pytest
from scipy.optimize import brentq, check_grad, minimize_scalar

import fit_scaling as fs
import results
from configurator import UserError
from conftest import ROOT

SCRIPT = os.path.join(ROOT, "fit_scaling.py")
# Epoch AI's extraction of the Chinchilla points (Besiroglu et al. 2024): provenance in tests/data/README.md
EPOCH_CSV = os.path.join(ROOT, "tests", "data", "chinchilla_epoch.csv")
EPOCH = dict(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)  # their reported fit


# ----------------------------------------------------------------------------- helpers

def cli(*args, check=True):
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    return proc


def fit_json(tmp_path, *args, name="fit.json"):
    path = tmp_path / name
    proc = cli(*args, "--json", path, "--no_plots")
    with open(path) as f:
        return json.load(f), proc.stdout


def law(N, D, p):
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def write_csv(path, header, rows):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")
    return path


def chinchilla_design(p, noise, seed, n_widths=40):
    """Chinchilla-like isoFLOP design: widths 7e7..1.6e10 at nine budgets 6e18..3e21 (C = 6ND), keeping
    token counts between 1e9 and 3e11; multiplicative log-normal noise."""
    rng = np.random.default_rng(seed)
    N, D = [], []
    for c in (6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21):
        for n in np.geomspace(7e7, 1.6e10, n_widths):
            if 1e9 <= c / (6 * n) <= 3e11:
                N.append(n)
                D.append(c / (6 * n))
    N, D = np.array(N), np.array(D)
    return N, D, law(N, D, p) * np.exp(noise * rng.standard_normal(len(N)))


def frontier_points(E, a, b, C, rng, noise=0.0, n_dominated=60):
    """Points on L = E + a C^-b plus points above it that no frontier point can lose to."""
    on = (E + a * C ** -b) * np.exp(noise * rng.standard_normal(len(C)))
    c_extra = np.exp(rng.uniform(np.log(C.min()), np.log(C.max()), n_dominated))
    above = (E + a * c_extra ** -b) * (1 + rng.uniform(0.02, 0.3, n_dominated))
    return np.concatenate([C, c_extra]), np.concatenate([on, above])


def make_run(root, name, label, arch, n_embd, p, seed, n_layer=4, status="completed", rows=25,
             noise=0.003, tokens_per_param=40, nan_row=False, anneal_fracs=(), mid_bias=0.0, lr=1e-3,
             run_offset=0.0):
    """A run folder as train.py writes it, with val_loss from the law p(N = all parameters, D = tokens).
    anneal_fracs: cooldown budgets (fractions of the run) written to anneal.csv, on the law; mid_bias: the
    evaluations before the end lie above the law by mid_bias x (1 - step/steps), as a cosine run's do
    (the final evaluation is on it); run_offset: the whole run (every point) shifted by exp(run_offset)."""
    path = os.path.join(root, name)
    os.makedirs(path)
    n_nonemb = 12 * n_layer * n_embd ** 2
    n_total = n_nonemb + 256 * n_embd + 64 * n_embd  # + token and position embeddings
    block_size, tokens_per_step = 64, 4096
    flops_per_token = 6 * n_nonemb + 12 * n_layer * n_embd * block_size
    config = {"label": label, "arch": arch, "n_embd": n_embd, "n_layer": n_layer, "learning_rate": lr,
              "seed": seed, "study": "synthetic", "run_name": name,
              "derived": {"n_params": n_total, "n_params_non_embedding": n_nonemb,
                          "flops_per_token": flops_per_token, "tokens_per_step": tokens_per_step}}
    results.write_json(os.path.join(path, "config.json"), config)
    rng = np.random.default_rng(seed)
    max_steps = int(tokens_per_param * n_nonemb / tokens_per_step)
    steps = [0] + sorted(set(int(s) for s in np.geomspace(16, max_steps, rows)))  # Python ints: see results.py

    def loss_at(step, bias):
        return float(law(n_total, step * tokens_per_step, p) * (1 + bias) *
                     math.exp(run_offset + noise * rng.standard_normal()))

    f = results.open_metrics(os.path.join(path, "metrics.csv"), results.METRICS_COLUMNS)
    for i, step in enumerate(steps):
        tokens = step * tokens_per_step
        loss = loss_at(step, mid_bias * (1 - step / steps[-1])) if tokens else 5.5
        if nan_row and i == 3:
            loss = float("nan")
        results.append_metrics(f, results.METRICS_COLUMNS, {
            "step": step, "tokens": tokens, "flops": float(tokens * flops_per_token), "train_loss": loss,
            "val_loss": loss, "lr": lr, "elapsed_s": 0.1 * step})
    # the final row repeats the last evaluation, as train.py does
    results.append_metrics(f, results.METRICS_COLUMNS, {
        "step": steps[-1], "tokens": steps[-1] * tokens_per_step,
        "flops": float(steps[-1] * tokens_per_step * flops_per_token), "train_loss": loss,
        "val_loss": loss, "lr": lr, "elapsed_s": 0.1 * steps[-1]})
    f.close()
    anneal = []
    for frac in anneal_fracs:
        step = int(frac * max_steps)
        anneal.append({"step": step, "tokens": step * tokens_per_step,
                       "flops": float(step * tokens_per_step * flops_per_token), "val_loss": loss_at(step, 0.0)})
    if anneal:
        results.write_anneal(os.path.join(path, "anneal.csv"), anneal)
    if status is not None:
        results.write_json(os.path.join(path, "final.json"), {
            "status": status, "steps": steps[-1], "tokens": steps[-1] * tokens_per_step, "flops": 0.0,
            "elapsed_s": 1.0, "final_val_loss": loss, "best_val_loss": loss, "step_val_acc_99": None})
    return n_nonemb, n_total


MODERN = dict(E=1.6, A=30.0, B=60.0, alpha=0.30, beta=0.30)   # a law that beats LSTM at every N, D
LSTM = dict(E=1.7, A=40.0, B=90.0, alpha=0.28, beta=0.28)
WIDTHS = (32, 64, 128, 256, 512)
ANNEAL_FRACS = (0.125, 0.25, 0.5)
MID_BIAS = 0.06


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two families at five widths each, with cooldown points (anneal.csv) and mid-schedule evaluations
    above the law, plus a diverged run, a run still going, and a NaN row."""
    root = str(tmp_path_factory.mktemp("results") / "study")
    os.makedirs(root)
    sizes = {}
    for label, arch, p in (("modern", "transformer", MODERN), ("lstm", "lstm", LSTM)):
        for i, n_embd in enumerate(WIDTHS):
            sizes[(label, n_embd)] = make_run(root, f"{label}_{n_embd}d_s1", label, arch, n_embd, p, seed=i,
                                              nan_row=(label == "lstm" and n_embd == 64),
                                              anneal_fracs=ANNEAL_FRACS, mid_bias=MID_BIAS)
    make_run(root, "modern_768d_s1", "modern", "transformer", 768, MODERN, seed=9, status="diverged")
    make_run(root, "lstm_768d_s1", "lstm", "lstm", 768, LSTM, seed=9, status=None)  # no final.json
    return root, sizes


# ----------------------------------------------------------------------------- published check

@pytest.mark.skipif(not os.path.exists(EPOCH_CSV), reason="tests/data/chinchilla_epoch.csv is absent")
def test_published_chinchilla_points_recover_epoch_constants(tmp_path):
    # As Besiroglu et al.: D = C / 6N, the 5 highest losses (outliers of the extraction) dropped.
    out, stdout = fit_json(tmp_path, EPOCH_CSV, "--drop_highest", 5, "--bootstrap", 20)
    assert abs(out["alpha"] - EPOCH["alpha"]) < 0.01 and abs(out["beta"] - EPOCH["beta"]) < 0.01
    assert abs(out["E"] - EPOCH["E"]) < 0.02
    assert out["A"] == pytest.approx(EPOCH["A"], rel=0.05) and out["B"] == pytest.approx(EPOCH["B"], rel=0.05)
    assert out["families"]["all"]["n_points"] == 240
    assert "5 dropped by --drop_highest" in stdout
    # their conclusion: about 20 tokens per parameter around 1e21-1e22 FLOPs
    budgets = {row["C"]: row for row in out["families"]["all"]["approach3"]["allocation"]["budgets"]}
    assert 15 < budgets[1e22]["tokens_per_param"] < 25


def test_synthetic_chinchilla_design_recovers_constants(tmp_path):
    N, D, L = chinchilla_design(EPOCH, noise=0.005, seed=0)
    path = write_csv(tmp_path / "synthetic.csv", ["params", "tokens", "loss"], zip(N, D, L))
    out, stdout = fit_json(tmp_path, path, "--bootstrap", 60)
    assert out["families"]["all"]["approach3"]["identified"] and "param    estimate" in stdout
    for k, tol in (("alpha", 0.02), ("beta", 0.02), ("E", 0.03)):
        assert abs(out[k] - EPOCH[k]) < tol, (k, out[k])
    for k in ("A", "B"):  # A and B trade off against the exponents: loose
        assert out[k] == pytest.approx(EPOCH[k], rel=0.3)
    for k in ("E", "alpha", "beta"):
        lo, hi = out["ci"][k]
        assert lo <= EPOCH[k] <= hi, (k, lo, hi)


def test_noise_free_points_recover_constants_exactly(tmp_path):
    N, D, L = chinchilla_design(EPOCH, noise=0.0, seed=0, n_widths=12)
    path = write_csv(tmp_path / "exact.csv", ["params", "tokens", "loss"], zip(N, D, L))
    out, _ = fit_json(tmp_path, path, "--bootstrap", 0)
    for k in ("E", "A", "B", "alpha", "beta"):
        assert out[k] == pytest.approx(EPOCH[k], rel=2e-3), k


# ----------------------------------------------------------------------------- invariances

def test_fit_stable_under_reordering_and_units(tmp_path):
    N, D, L = chinchilla_design(EPOCH, noise=0.007, seed=3, n_widths=16)
    base, _ = fit_json(tmp_path, write_csv(tmp_path / "a.csv", ["params", "tokens", "loss"], zip(N, D, L)),
                       "--bootstrap", 0, name="a.json")
    order = np.random.default_rng(1).permutation(len(L))
    shuffled, _ = fit_json(tmp_path, write_csv(tmp_path / "b.csv", ["params", "tokens", "loss"],
                                               zip(N[order], D[order], L[order])), "--bootstrap", 0, name="b.json")
    # N in millions, D in billions: A and B change by the unit factor to the power of the exponent
    units, _ = fit_json(tmp_path, write_csv(tmp_path / "c.csv", ["params", "tokens", "loss"],
                                            zip(N / 1e6, D / 1e9, L)), "--bootstrap", 0, name="c.json")
    for k in ("E", "alpha", "beta"):
        assert shuffled[k] == pytest.approx(base[k], abs=1e-4), k
        assert units[k] == pytest.approx(base[k], abs=1e-4), k
    assert shuffled["A"] == pytest.approx(base["A"], rel=1e-3)
    assert units["A"] == pytest.approx(base["A"] / 1e6 ** base["alpha"], rel=1e-3)
    assert units["B"] == pytest.approx(base["B"] / 1e9 ** base["beta"], rel=1e-3)
    # the frontier law sees C = 6ND, now 1e15 times smaller: a scales by 1e15^b, b and E unchanged
    fb, fu = base["families"]["all"]["frontier"], units["families"]["all"]["frontier"]
    assert fu["b"] == pytest.approx(fb["b"], abs=1e-4) and fu["E"] == pytest.approx(fb["E"], rel=1e-4)
    assert fu["a"] == pytest.approx(fb["a"] * 1e15 ** -fb["b"], rel=1e-3)


# ----------------------------------------------------------------------------- pieces against hand computations

def test_lse_law_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    log_x = np.log(np.vstack([rng.uniform(1e7, 1e10, 50), rng.uniform(1e9, 1e11, 50)]))
    log_l = np.log(rng.uniform(2, 3, 50))
    theta = np.array([6.0, 7.5, 0.5, 0.34, 0.37])
    for e_fixed, th in ((None, theta), (0.5, theta[[0, 1, 3, 4]])):
        err = check_grad(lambda t: fs.huber_objective(t, log_x, log_l, e_fixed, 1e-3)[0],
                         lambda t: fs.huber_objective(t, log_x, log_l, e_fixed, 1e-3)[1], th)
        assert err < 1e-4 * np.linalg.norm(fs.huber_objective(th, log_x, log_l, e_fixed, 1e-3)[1])
    pred, _ = fs.lse_law(theta, log_x)
    N, D = np.exp(log_x)
    expected = np.exp(0.5) + np.exp(6.0) / N ** 0.34 + np.exp(7.5) / D ** 0.37
    np.testing.assert_allclose(np.exp(pred), expected, rtol=1e-12)


def test_allocation_minimises_loss_at_fixed_compute():
    alloc, n_opt, d_opt = fs.allocation(EPOCH, [1e20, 1e23])
    for c, n, d in zip((1e20, 1e23), n_opt, d_opt):
        best = minimize_scalar(lambda x: law(math.exp(x), c / (6 * math.exp(x)), EPOCH),
                               bounds=(10, 35), method="bounded", options={"xatol": 1e-10})
        assert n == pytest.approx(math.exp(best.x), rel=1e-4)
        assert 6 * n * d == pytest.approx(c)
    assert alloc["a"] == pytest.approx(0.3658 / (0.3478 + 0.3658))
    assert alloc["a"] + alloc["b"] == pytest.approx(1)


def test_pareto_frontier_is_the_lower_envelope():
    C = np.array([1, 2, 2, 3, 4, 5, 5, 6.0])
    L = np.array([5, 4, 3, 3.5, 2.5, 2.5, 2.0, 2.1])
    assert sorted(fs.pareto_frontier(C, L).tolist()) == [0, 2, 4, 6]  # (2,4) loses to (2,3) at equal C


def test_ceg_matches_closed_form():
    A = {"E": 2.0, "a": 40.0, "b": 0.12}
    B = {"E": 2.0, "a": 90.0, "b": 0.09}
    C = np.geomspace(1e12, 1e20, 9)
    # equal E: C_B = (a_B / (a_A C^-b_A))^(1/b_B), so CEG = (a_B/a_A)^(1/b_B) C^(b_A/b_B - 1)
    expected = (B["a"] / A["a"]) ** (1 / B["b"]) * C ** (A["b"] / B["b"] - 1)
    np.testing.assert_allclose(fs.ceg(A, B, C), expected, rtol=1e-9)
    # different E: solve L_B(C') = L_A(C) numerically; at large C, L_A(C) < E_B: unreachable
    B2 = {"E": 2.2, "a": 90.0, "b": 0.09}
    values = fs.ceg(A, B2, C)
    for c, v in zip(C, values):
        target = A["E"] + A["a"] * c ** -A["b"]
        if target <= B2["E"]:
            assert v == math.inf
        else:
            root = math.exp(brentq(lambda x: B2["E"] + B2["a"] * math.exp(-B2["b"] * x) - target, 0, 700))
            assert v == pytest.approx(root / c, rel=1e-8)
    assert np.isinf(values[-1]) and np.isfinite(values[0])


def test_frontier_law_recovered_from_points_and_dominated_runs(tmp_path):
    rng = np.random.default_rng(0)
    C, L = frontier_points(1.9, 60.0, 0.08, np.geomspace(1e13, 1e18, 30), rng, noise=0.001)
    fam = {"C": C, "L": L, "run": np.arange(len(C)).astype(str)}
    args = fs.parse_args(["x.csv", "--bootstrap", "30"])
    fit = fs.fit_frontier("f", fam, args, np.random.default_rng(0))
    assert fit["n_points"] <= 30 and fit["n_points"] >= 20  # the dominated points are never on it
    assert fit["b"] == pytest.approx(0.08, abs=0.01) and fit["E"] == pytest.approx(1.9, abs=0.05)
    assert fit["ci"]["b"][0] <= 0.08 <= fit["ci"]["b"][1]
    # E fixed: only a and b are fitted
    args = fs.parse_args(["x.csv", "--bootstrap", "0", "--irreducible", "1.9"])
    fixed = fs.fit_frontier("f", fam, args, np.random.default_rng(0))
    assert fixed["E"] == 1.9 and fixed["E_fixed"]
    assert fixed["b"] == pytest.approx(0.08, abs=0.003) and fixed["a"] == pytest.approx(60, rel=0.05)


def test_frontier_of_many_runs_is_the_compute_optimal_law():
    # noise-free runs at 40 widths: their envelope is L_opt(C) = E + K C^-(alpha beta/(alpha+beta))
    N = np.repeat(np.geomspace(7e7, 1.6e10, 40), 60)
    D = np.tile(np.geomspace(1e9, 3e11, 60), 40)
    fam = {"C": 6 * N * D, "L": law(N, D, EPOCH), "run": N.astype(str)}
    fit = fs.fit_frontier("f", fam, fs.parse_args(["x.csv", "--bootstrap", "0"]), np.random.default_rng(0))
    al, be = EPOCH["alpha"], EPOCH["beta"]
    alloc, _, _ = fs.allocation(EPOCH, [6.0])
    K = (EPOCH["A"] * alloc["G"] ** -al + EPOCH["B"] * alloc["G"] ** be) * 6 ** (al * be / (al + be))
    assert fit["b"] == pytest.approx(al * be / (al + be), abs=0.002)
    assert fit["E"] == pytest.approx(EPOCH["E"], abs=0.01)
    assert fit["a"] == pytest.approx(K, rel=0.05)


def test_isoflop_profiles_find_the_compute_optimal_width():
    N, D, L = chinchilla_design(EPOCH, noise=0.0, seed=0, n_widths=40)
    fam = {"N": N, "D": D, "C": 6 * N * D, "L": L, "run": np.arange(len(N)).astype(str)}
    profiles = [p for p in fs.isoflop_profiles(fam) if p["interior"]]
    assert len(profiles) >= 5
    _, n_opt, _ = fs.allocation(EPOCH, [p["C"] for p in profiles])
    for p, n in zip(profiles, n_opt):
        assert p["N_opt"] == pytest.approx(n, rel=0.15)
    assert fs.isoflop_exponent(profiles) == pytest.approx(0.3658 / (0.3478 + 0.3658), abs=0.03)


# ----------------------------------------------------------------------------- compare: CEG end to end

def test_compare_two_families_from_csv(tmp_path):
    rng = np.random.default_rng(2)
    true = {"fast": {"E": 1.9, "a": 40.0, "b": 0.1}, "slow": {"E": 2.2, "a": 45.0, "b": 0.1}}
    c_range = {"fast": (1e13, 1e17), "slow": (1e13, 1e19)}
    rows = []
    for label, p in true.items():
        C, L = frontier_points(p["E"], p["a"], p["b"], np.geomspace(*c_range[label], 25), rng, noise=0.0005)
        rows += [(label, 1e6 * (1 + i % 3), c, l) for i, (c, l) in enumerate(zip(C, L))]
    path = write_csv(tmp_path / "two.csv", ["label", "params", "flops", "loss"], rows)
    out, stdout = fit_json(tmp_path, path, "--no_approach3", "--compare", "fast", "slow",
                           "--extrapolate", 1e24, "--bootstrap", 40)
    cmp = out["compare"]
    assert cmp["A"] == "fast" and cmp["B"] == "slow"
    measured = [r for r in cmp["rows"] if not r["extrapolated"]]
    assert measured and all(1e13 <= r["C"] <= 1e17 and 1e13 <= r["C_B"] <= 1e19 for r in measured)
    for r in cmp["rows"]:
        if r["C"] > 1e21:  # L_fast(C) < E_slow = 2.2: no compute gets 'slow' there
            assert not r["reachable"] and r["ceg"] is None and r["extrapolated"]
            continue
        expected = float(fs.ceg(true["fast"], true["slow"], r["C"]))
        assert r["ceg"] == pytest.approx(expected, rel=0.15 if not r["extrapolated"] else 0.6), r
        assert r["ceg"] > 1
    for r in measured:
        assert r["ci"][0] <= float(fs.ceg(true["fast"], true["slow"], r["C"])) <= r["ci"][1], r
    assert "the compute 'slow' needs to reach the loss 'fast' reaches with compute C" in stdout
    assert "unreachable" in stdout and "extrapolated" in stdout and "measured" in stdout


# ----------------------------------------------------------------------------- run folders end to end

def checked_plots(monkeypatch):
    """Each figure fit_scaling writes, checked just before it is saved: (name, overlapping tick labels)."""
    checked, save = [], fs.save

    def checking_save(fig, plot_dir, name):
        fig.tight_layout()
        checked.append((name, overlapping_tick_labels(fig)))
        return save(fig, plot_dir, name)

    monkeypatch.setattr(fs, "save", checking_save)
    return checked


def test_run_folders_end_to_end(study, tmp_path, capsys, monkeypatch):
    root, sizes = study
    plots = tmp_path / "plots"
    checked = checked_plots(monkeypatch)
    fs.run([root, "--compare", "modern", "lstm", "--extrapolate", "1e18", "--bootstrap", "20",
            "--json", str(tmp_path / "fits.json"), "--plots", str(plots)])
    stdout = capsys.readouterr().out
    with open(tmp_path / "fits.json") as f:
        out = json.load(f)
    assert set(out["families"]) == {"modern", "lstm"}
    for name, p in (("modern", MODERN), ("lstm", LSTM)):
        fam = out["families"][name]
        assert fam["widths"] == sorted(float(sizes[(name, e)][1]) for e in WIDTHS)  # N = all parameters
        a3 = fam["approach3"]
        assert a3["identified"] and a3["not_identified"] is None
        assert a3["n_points"] == len(WIDTHS) * (len(ANNEAL_FRACS) + 1)  # annealed + final points only
        assert a3["alpha"] == pytest.approx(p["alpha"], abs=0.03)
        assert a3["beta"] == pytest.approx(p["beta"], abs=0.03)
        assert a3["E"] == pytest.approx(p["E"], abs=0.05)
        assert len(a3["bootstrap_samples"]) == a3["n_bootstrap"] > 0
        assert set(a3["bootstrap_samples"][0]) == {"E", "A", "B", "alpha", "beta"}
        front = fam["frontier"]
        assert front["n_points"] >= 4 and front["b"] > 0 and front["point_kinds"]["eval"] == 0
        assert len(front["bootstrap_samples"]) == front["n_bootstrap"] > 0
    assert out["families"]["modern"]["point_kinds"] == {"anneal": 15, "final": 5, "eval": 5 * 24}
    assert out["families"]["lstm"]["n_points"] == 5 * 28 - 1  # its NaN row skipped
    assert "1 run not completed (diverged)" in stdout and "1 run not completed (running_or_killed)" in stdout
    assert "1 non-finite value" in stdout and "tokens = 0 (initial evaluation)" in stdout
    assert stdout.count("points: annealed (15 from anneal.csv) and each run's final point (5 runs)") == 4
    cmp = out["compare"]
    assert all(r["ceg"] > 1 for r in cmp["rows"] if r["reachable"])  # modern's law is better everywhere
    assert any(r["extrapolated"] for r in cmp["rows"]) and any(not r["extrapolated"] for r in cmp["rows"])
    assert cmp["convention"] == ("'modern' over 'lstm': 'lstm' needs CEG times the compute of 'modern' to reach "
                                 "the same loss; > 1 means 'modern' is better (needs less compute)")
    assert f"== compute-equivalent gain, {cmp['convention']}" in stdout
    assert "'modern' over 'lstm' (measured): to reach the loss 'modern' reaches with C = " in stdout
    assert "'lstm' needs" in stdout and "(> 1: 'modern' is better)" in stdout
    for name in ("frontier.png", "approach3.png", "residuals.png", "ceg.png"):
        with open(plots / name, "rb") as f:
            data = f.read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000, name
    assert [name for name, _ in checked] == ["frontier.png", "approach3.png", "residuals.png", "ceg.png"]
    assert all(bad == [] for _, bad in checked), checked  # legible ticks: no two labels overlap


def test_approach3_fits_annealed_points_not_mid_schedule_ones(study, tmp_path):
    """The runs' evaluations before the end lie 6% x (1 - step/steps) above the law, as a cosine run's do;
    the annealed and final points lie on it. The default fit recovers the law, --all_points is biased."""
    root, _ = study
    default, _ = fit_json(tmp_path, root, "--only", "modern", "--bootstrap", 0, name="a.json")
    every, stdout = fit_json(tmp_path, root, "--only", "modern", "--bootstrap", 0, "--all_points", name="b.json")
    assert every["families"]["modern"]["approach3"]["n_points"] == 5 * 28
    assert "points: every evaluation (--all_points: mid-schedule losses included" in stdout
    for k in ("alpha", "beta"):
        error, biased = abs(default[k] - MODERN[k]), abs(every[k] - MODERN[k])
        assert error < 0.01 and biased > 2 * error + 0.005, (k, default[k], every[k])
    # called on select_points' whole family (as progress.py does), the fits choose their own points
    args = fs.parse_args([root, "--only", "modern", "--bootstrap", "0"])
    skipped = {}
    fam = fs.select_points(fs.read_run_points(root, args, skipped), args, skipped)["modern"]
    fit = fs.fit_approach3("modern", fam, args, np.random.default_rng(0))
    assert fit["n_points"] == 20 and fit["alpha"] == pytest.approx(default["alpha"], abs=1e-6)
    assert fs.fit_frontier("modern", fam, args, np.random.default_rng(0))["point_kinds"]["eval"] == 0


def test_run_rows_kinds(tmp_path):
    """A run's points: the last evaluation is its final point; anneal.csv rows are annealed points, except
    one at the whole run's budget (that is the final point); an evaluation at a cooldown's step stays."""
    make_run(str(tmp_path), "r", "x", "transformer", 32, MODERN, seed=0, rows=5)
    run = results.read_run(str(tmp_path / "r"))
    steps = [row["step"] for row in run["metrics"]]
    results.write_anneal(str(tmp_path / "r" / "anneal.csv"), [
        {"step": s, "tokens": s * 4096, "flops": 1.0 * s, "val_loss": 2.0 + i} for i, s in
        enumerate((steps[2], steps[-1] // 2, steps[-1]))])
    rows = fs.run_rows(results.read_run(str(tmp_path / "r")))
    kinds = [(kind, row["step"]) for kind, row in rows]
    assert kinds.count(("final", steps[-1])) == 1 and ("anneal", steps[-1]) not in kinds
    assert ("anneal", steps[2]) in kinds and ("eval", steps[2]) in kinds and ("anneal", steps[-1] // 2) in kinds
    assert sum(kind == "eval" for kind, _ in kinds) == len(set(steps)) - 1  # step 0 included, skipped later


def test_run_folder_point_selection(study):
    root, sizes = study

    def points(*extra):
        args = fs.parse_args([root, *map(str, extra)])
        skipped = {}
        return fs.select_points(fs.read_run_points(root, args, skipped), args, skipped), skipped

    fams, _ = points()
    modern = fams["modern"]
    flops_per_token = {total: 6 * ne + 12 * 4 * e * 64 for e in WIDTHS for ne, total in [sizes[("modern", e)]]}
    assert modern["C"] == pytest.approx(modern["D"] * np.array([flops_per_token[n] for n in modern["N"]]))
    fams, _ = points("--flops", "6nd")
    assert fams["modern"]["C"] == pytest.approx(6 * fams["modern"]["N"] * fams["modern"]["D"])
    assert sorted(set(modern["N"])) == sorted(sizes[("modern", e)][1] for e in WIDTHS)  # default: total
    fams, _ = points("--params", "non_embedding")
    assert sorted(set(fams["modern"]["N"])) == sorted(sizes[("modern", e)][0] for e in WIDTHS)
    fams, skipped = points("--final_only", "--only", "lstm")
    assert set(fams) == {"lstm"} and len(fams["lstm"]["L"]) == 5 and set(fams["lstm"]["kind"]) == {"final"}
    fams, _ = points("--min_frac", 0.5)
    for run in np.unique(fams["modern"]["run"]):
        d = fams["modern"]["D"][fams["modern"]["run"] == run]
        assert d.min() >= 0.5 * d.max()
    fams, _ = points("--group", "arch")
    assert set(fams) == {"transformer", "lstm"}
    # the frontier's candidates: annealed and final points of runs with anneal.csv, every evaluation otherwise
    fam = points()[0]["modern"]
    args = fs.parse_args([root])
    assert set(fam["kind"][fs.frontier_mask(fam, args)]) == {"anneal", "final"}
    no_anneal = {k: v.copy() for k, v in fam.items()}
    no_anneal["kind"][no_anneal["kind"] == "anneal"] = "eval"  # as if the runs had no anneal.csv
    assert fs.frontier_mask(no_anneal, args).all()
    assert "(fallback: no anneal.csv; mid-schedule losses" in fs.points_label(no_anneal, args, "frontier")


def test_bootstrap_over_runs_and_irreducible(study, tmp_path):
    root, _ = study
    out, stdout = fit_json(tmp_path, root, "--only", "modern", "--no_approach3", "--bootstrap", 20,
                           "--bootstrap_over", "runs", "--irreducible", 1.6)
    f = out["families"]["modern"]["frontier"]
    assert f["E"] == 1.6 and f["E_fixed"] and f["ci"]["E"] == [1.6, 1.6]
    assert "(E fixed by --irreducible)" in stdout and "over runs" in stdout


def test_compare_without_bootstrap(study, tmp_path, capsys):
    root, _ = study  # no resamples: no CI band, and no crash on the empty bootstrap arrays
    fits = fs.run([root, "--no_approach3", "--compare", "modern", "lstm", "--bootstrap", "0",
                   "--plots", str(tmp_path)])
    assert fits["lstm"]["frontier"]["n_bootstrap"] == 0
    assert "[-, -]" in capsys.readouterr().out and (tmp_path / "ceg.png").exists()


def test_non_finite_csv_values_are_skipped_and_counted(tmp_path, capsys):
    N, D, L = chinchilla_design(EPOCH, noise=0.005, seed=4, n_widths=10)
    rows = [list(r) for r in zip(N, D, L)]
    rows[0][2], rows[1][1], rows[2][2] = "nan", "inf", ""
    path = write_csv(tmp_path / "gaps.csv", ["params", "tokens", "loss"], rows)
    fits = fs.run([str(path), "--no_approach3", "--bootstrap", "0", "--no_plots"])
    assert "skipped: 3 non-finite value" in capsys.readouterr().out
    assert fits["all"]["frontier"]["n_points"] >= 4


def test_flops_csv_rows_with_zero_or_negative_params_are_skipped(tmp_path, capsys):
    """Without a tokens column D = C / 6N; a row with N = 0 used to raise ZeroDivisionError (found by the
    fuzzer). Such rows are skipped and counted like any other value <= 0."""
    N, D, L = chinchilla_design(EPOCH, noise=0.005, seed=4, n_widths=10)
    rows = [[n, 6 * n * d, loss] for n, d, loss in zip(N, D, L)]
    rows[0][0], rows[1][0] = 0, -5
    path = write_csv(tmp_path / "flops.csv", ["params", "flops", "loss"], rows)
    fits = fs.run([str(path), "--no_approach3", "--bootstrap", "0", "--no_plots"])
    out = capsys.readouterr().out
    assert f"{len(rows) - 2} points in 1 family" in out
    assert "skipped: 2 value <= 0" in out and "initial evaluation" not in out
    assert fits["all"]["frontier"]["n_points"] >= 4


# ----------------------------------------------------------------------------- identification

def test_approach3_refusal_rule():
    grid_n, grid_d = np.meshgrid([1e6, 3e6, 1e7], [1e8, 3e8, 1e9])
    assert fs.approach3_refusal(grid_n.ravel(), grid_d.ravel()) is None  # 3 x 3: identified
    cases = {  # (N, D) -> the reason's telltale
        "2 distinct N": (np.repeat([1e6, 3e6], 5), np.tile(np.geomspace(1e8, 1e10, 5), 2)),
        "1 distinct D": (np.geomspace(1e6, 1e8, 9), np.full(9, 1e9)),
        "7 distinct (N, D) points": (grid_n.ravel()[:7], grid_d.ravel()[:7]),
        "log D is a linear function of log N": (np.geomspace(1e6, 1e8, 9), 20 * np.geomspace(1e6, 1e8, 9)),
    }
    for telltale, (N, D) in cases.items():
        reason = fs.approach3_refusal(N, D)
        assert reason and telltale in reason and "\n" not in reason, (telltale, reason)
    # a fixed tokens per parameter with seeds repeating the points is still one line in (log N, log D)
    N = np.repeat(np.geomspace(1e6, 1e8, 9), 3)
    assert "linear function" in fs.approach3_refusal(N, 20 * N ** 1.1)


def test_refused_approach3_says_why_and_fits_the_frontier(tmp_path):
    """Runs of a fixed tokens per parameter without cooldowns (one final point each): approach 3 cannot
    tell N from D; it says so in one line per family, and the frontier is still fitted."""
    root = tmp_path / "fixed_tpp"
    for label, p in (("a", MODERN), ("b", LSTM)):
        for i, n_embd in enumerate(WIDTHS):
            make_run(str(root), f"{label}_{n_embd}", label, "transformer", n_embd, p, seed=i)
    out, stdout = fit_json(tmp_path, root, "--bootstrap", 5)
    assert stdout.count("refused: 5 distinct N, 5 distinct D, 5 distinct (N, D) points: approach 3 needs") == 2
    assert "param    estimate" not in stdout  # no approach-3 table
    assert "points: each run's final point (5 runs, none with anneal.csv)" in stdout
    for name in ("a", "b"):
        a3 = out["families"][name]["approach3"]
        assert a3["identified"] is False and "5 distinct (N, D)" in a3["refused"] and "E" not in a3
        assert out["families"][name]["frontier"]["n_points"] >= 4
    assert "E" not in out  # no identified constants at the top level


def test_unidentified_fit_prints_why_instead_of_tables(tmp_path):
    """3 x 3 widths and budgets within a factor 1.45, 1% noise: the optimum exists but the bootstrap
    spreads over orders of magnitude. (Issue 25: 'E = 1.4e-52 with a zero-width interval'.)"""
    rng = np.random.default_rng(0)
    N, D = np.repeat([1e6, 1.2e6, 1.45e6], 3), np.tile([1e9, 1.2e9, 1.45e9], 3)
    L = law(N, D, EPOCH) * np.exp(0.01 * rng.standard_normal(9))
    path = write_csv(tmp_path / "narrow.csv", ["params", "tokens", "loss"], zip(N, D, L))
    out, stdout = fit_json(tmp_path, path, "--bootstrap", 30)
    a3 = out["families"]["all"]["approach3"]
    assert a3["identified"] is False and "spans more than a factor" in a3["not_identified"]
    assert "  not identified: " in stdout and "param    estimate" not in stdout
    assert "Compute-optimal allocation" not in stdout
    assert "E" not in out
    # E pinned at zero: a law without an irreducible term is flagged even without a bootstrap
    problems = fs.identification_problems({"E": 1.4e-52, "alpha": 0.3, "beta": 0.3, "n_bootstrap": 0},
                                          np.array([2.0, 3.0]), "95% interval")
    assert problems and "E = 1.4e-52 is at zero" in problems[0]


# ----------------------------------------------------------------------------- bootstrap over runs

def test_bootstrap_resamples_whole_runs():
    units = np.repeat(["r0", "r1", "r2", "r3"], [3, 1, 4, 2])
    seen = []

    def select(idx):
        seen.append(idx)
        return None  # skipped: counted, nothing fitted

    samples, skipped = fs.bootstrap(np.zeros(3), np.zeros((1, 10)), np.zeros(10), units, 25,
                                    np.random.default_rng(0), select=select)
    assert len(samples) == 0 and skipped == 25 and len(seen) == 25
    for idx in seen:  # every resample: whole runs, as many as there are runs
        picked = units[idx]
        for run in set(picked):
            assert (picked == run).sum() % (units == run).sum() == 0
        assert sum((picked == run).sum() // (units == run).sum() for run in set(picked)) == 4


def test_frontier_is_reselected_inside_each_resample():
    C = np.array([1, 2, 3, 4, 5.0])
    L = np.array([5, 4.5, 3, 3.2, 2.0])  # (4, 3.2) is never on the frontier
    select = fs.reselect_frontier(C, L, need=2)
    assert select(np.array([0, 1, 1, 2, 3, 4])).tolist() == [0, 1, 1, 2, 4]  # drawn twice, counted twice
    assert select(np.array([3, 3, 4])).tolist() == [3, 3, 4]  # without point 2, point 3 is on it
    assert select(np.array([4, 4])) is None  # one distinct point: too few to fit


def per_run_offset_family(rng, n_runs=8, per_run=20, sd_run=0.02, sd_point=0.0003, E=1.8, a=60.0, b=0.1):
    """Runs on consecutive half-decades of compute, each on the law L = E + a C^-b with its whole curve
    shifted by its own random offset (seed, data order), and a little independent noise per point."""
    C, L, run = [], [], []
    for r in range(n_runs):
        c = np.geomspace(10 ** (11 + 0.5 * r), 10 ** (11.5 + 0.5 * r), per_run)
        shift = sd_run * rng.standard_normal()
        L.append((E + a * c ** -b) * np.exp(shift + sd_point * rng.standard_normal(per_run)))
        C.append(c)
        run += [f"r{r}"] * per_run
    return {"C": np.concatenate(C), "L": np.concatenate(L), "run": np.array(run)}


def test_run_bootstrap_covers_the_exponent_under_per_run_noise():
    """10 simulated families (E fixed, so b is what the interval is about): the bootstrap over runs covers
    the true b in nearly all of them, the bootstrap over points (which treats a run's 20 correlated points
    as 20 independent ones) in about half, with intervals a third as wide."""
    rng = np.random.default_rng(0)
    covered, widths = {"runs": 0, "points": 0}, {"runs": [], "points": []}
    for k in range(10):
        fam = per_run_offset_family(rng)
        for over in covered:
            args = fs.parse_args(["x.csv", "--bootstrap", "25", "--bootstrap_over", over, "--irreducible", "1.8"])
            lo, hi = fs.fit_frontier("f", fam, args, np.random.default_rng(k))["ci"]["b"]
            covered[over] += lo <= 0.1 <= hi
            widths[over].append(hi - lo)
    assert covered["runs"] >= 8 and covered["points"] <= 6, covered  # measured: 9 and 4
    assert np.median(widths["runs"]) > 2 * np.median(widths["points"])


# ----------------------------------------------------------------------------- one definition of compute

def test_allocation_in_the_flops_columns_units():
    # FLOPs per parameter constant at 6: the numerical allocation is the closed form
    knots = (np.log([1e6, 1e9]), np.log([6.0, 6.0]))
    budgets = [1e19, 1e21, 1e23]
    n_opt, d_opt = fs.optimal_allocation(EPOCH, budgets, knots)
    _, n_closed, d_closed = fs.allocation(EPOCH, budgets)
    np.testing.assert_allclose(n_opt, n_closed, rtol=1e-6)
    np.testing.assert_allclose(d_opt, d_closed, rtol=1e-6)
    # FLOPs per parameter falling from 14 to 7 over the widths (attention and head weigh more when small):
    # the optimum of L at C = r(N) N D, found by brute force over N
    knots = (np.log([1e4, 1e5, 1e6]), np.log([14.0, 9.0, 7.0]))
    p = dict(E=1.0, A=30.0, B=60.0, alpha=0.3, beta=0.3)
    for c in (1e11, 1e13, 1e16):
        (n,), (d,) = fs.optimal_allocation(p, [c], knots)
        assert fs.compute_of(knots, n, d) == pytest.approx(c)
        grid = np.geomspace(1e2, 1e9, 200001)
        best = grid[np.argmin(law(grid, c / fs.compute_of(knots, grid, 1.0), p))]
        assert n == pytest.approx(best, rel=1e-3)
    # 6ND would count the same budget as 1.5-2x more tokens
    d_6nd = fs.allocation(p, [1e11])[2][0]
    assert 1.5 < d_6nd / fs.optimal_allocation(p, [1e11], knots)[1][0] < 2.5


def test_run_folder_allocation_uses_flops_per_token(study, tmp_path):
    root, sizes = study
    out, stdout = fit_json(tmp_path, root, "--only", "modern", "--bootstrap", 0, "--extrapolate", 1e18)
    al = out["families"]["modern"]["approach3"]["allocation"]
    ratio = {total: (6 * ne + 12 * 4 * e * 64) / total for e in WIDTHS for ne, total in [sizes[("modern", e)]]}
    assert al["flops_per_param"]["N"] == pytest.approx(sorted(ratio))
    assert al["flops_per_param"]["ratio"] == pytest.approx([ratio[n] for n in sorted(ratio)])
    knots = (np.log(al["flops_per_param"]["N"]), np.log(al["flops_per_param"]["ratio"]))
    c_lo, c_hi = out["families"]["modern"]["C_range"]
    for row in al["budgets"]:  # every budget in the flops column's units, up to --extrapolate
        assert fs.compute_of(knots, row["N_opt"], row["D_opt"]) == pytest.approx(row["C"], rel=1e-6)
        assert row["extrapolated"] == (not c_lo <= row["C"] <= c_hi)
    assert al["budgets"][-1]["C"] == 1e18
    assert "C in FLOPs: the flops column (tokens x derived.flops_per_token" in stdout
    assert "N = all parameters (--params total, the default: Chinchilla's count" in stdout


def test_every_table_using_n_says_which_n(tmp_path, capsys, monkeypatch):
    """(And the isoFLOP plot of this design has legible ticks.)"""
    N, D, L = chinchilla_design(EPOCH, noise=0.005, seed=0, n_widths=12)
    path = write_csv(tmp_path / "c.csv", ["params", "tokens", "loss"], zip(N, D, L))
    checked = checked_plots(monkeypatch)
    fs.run([str(path), "--bootstrap", "0", "--plots", str(tmp_path)])
    outputs = {"total": capsys.readouterr().out,
               "non_embedding": cli(path, "--params", "non_embedding", "--bootstrap", 0, "--no_plots").stdout}
    for flag, text in (("total", "N = all parameters (--params total, the default"),
                       ("non_embedding", "N = non-embedding parameters (--params non_embedding")):
        for table in ("Approach 3:", "Compute-optimal allocation:", "isoFLOP view"):
            line = next(line for line in outputs[flag].splitlines() if line.startswith(table))
            assert text in line, (table, line)
    assert "isoflop.png" in [name for name, _ in checked] and all(bad == [] for _, bad in checked), checked


# ----------------------------------------------------------------------------- the gain convention

def test_invert_reads_the_same_pairs_from_the_other_side(tmp_path):
    rng = np.random.default_rng(2)
    rows = []
    for label, p in (("fast", (1.9, 40.0, 0.1)), ("slow", (1.9, 45.0, 0.09))):
        C, L = frontier_points(*p, np.geomspace(1e13, 1e18, 25), rng, noise=0.0005)
        rows += [(label, 1e6 * (1 + i % 3), c, l) for i, (c, l) in enumerate(zip(C, L))]
    path = write_csv(tmp_path / "two.csv", ["label", "params", "flops", "loss"], rows)
    common = ("--no_approach3", "--compare", "fast", "slow", "--bootstrap", 20)
    out, stdout = fit_json(tmp_path, path, *common, name="a.json")
    inv, inv_stdout = fit_json(tmp_path, path, *common, "--invert", name="b.json")
    assert "'fast' over 'slow': 'slow' needs CEG times the compute of 'fast' to reach the same loss; > 1 means " \
           "'fast' is better" in stdout
    assert "'slow' over 'fast': 'fast' needs CEG times the compute of 'slow'" in inv_stdout
    assert inv["compare"]["A"] == "slow" and inv["compare"]["inverted"] is True
    fast, slow = out["families"]["fast"]["frontier"], out["families"]["slow"]["frontier"]
    for r in out["compare"]["rows"]:
        assert r["ceg"] > 1
        # at slow's compute C_B the inverse is C_A / C_B: the reciprocal at the same loss
        assert float(fs.ceg(slow, fast, r["C_B"])) == pytest.approx(1 / r["ceg"], rel=1e-9)
    assert all(r["ceg"] < 1 for r in inv["compare"]["rows"] if not r["extrapolated"])


def test_frontier_over_learning_rates_of_one_size_warns(tmp_path):
    """An LR sweep at one width: its 'frontier' is an envelope over learning rates, not sizes."""
    root = tmp_path / "lr_sweep"
    for label, p in (("gelu", LSTM), ("swiglu", MODERN)):
        for i, lr in enumerate((1e-3, 2e-3, 4e-3)):
            make_run(str(root), f"{label}_lr{lr}", label, "transformer", 64, p, seed=i, lr=lr,
                     run_offset=0.02 * i)
    proc = cli(root, "--no_approach3", "--compare", "swiglu", "gelu", "--bootstrap", 5, "--no_plots")
    warning = "frontier over learning rates of one size (N = 2.171e+05, 3 learning rates), not a scaling frontier"
    assert proc.stdout.count(f"warning: {warning}") == 2  # each family
    assert f"warning: 'swiglu': {warning}" in proc.stdout  # and under the CEG table


# ----------------------------------------------------------------------------- plots

def visible_tick_labels(axis):
    lo, hi = sorted(axis.get_view_interval())
    pairs = list(zip(axis.get_majorticklocs(), axis.get_majorticklabels())) + \
        list(zip(axis.get_minorticklocs(), axis.get_minorticklabels()))
    return [label for loc, label in pairs if lo <= loc <= hi and label.get_visible() and label.get_text()]


def overlapping_tick_labels(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = visible_tick_labels(axis)
            boxes = [label.get_window_extent(renderer) for label in labels]
            bad += [(labels[i].get_text(), labels[j].get_text()) for i in range(len(boxes))
                    for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    return bad


def test_log_axis_ticks_are_legible():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for lo, hi in ((2e-3, 8e-3), (1.2, 3.0), (0.9, 1.1), (1e10, 3e12), (1e10, 1e18), (1e3, 1e30)):
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.plot([lo, hi], [lo, hi])
        ax.set(xscale="log", yscale="log")
        fs.legible(ax)
        assert overlapping_tick_labels(fig) == [], (lo, hi)
        for axis in (ax.xaxis, ax.yaxis):
            texts = [label.get_text() for label in visible_tick_labels(axis)]
            assert 2 <= len(texts) <= 9 and all(len(t) <= 6 and "times" not in t for t in texts), (lo, hi, texts)
        plt.close(fig)


# ----------------------------------------------------------------------------- bad input: one line, exit 2

def bad_inputs(tmp):
    """(name, argv) pairs that must each fail with one clear line."""
    os.makedirs(tmp / "empty")
    os.makedirs(tmp / "unrelated" / "notes")
    (tmp / "unrelated" / "README.txt").write_text("hello\n")
    os.makedirs(tmp / "unfinished")
    make_run(str(tmp / "unfinished"), "run_a", "x", "transformer", 32, MODERN, seed=0, status=None)
    N, D, L = chinchilla_design(EPOCH, noise=0.005, seed=0, n_widths=6)
    good = [list(r) for r in zip(N, D, L)]
    header = ["params", "tokens", "loss"]
    cases = {
        "empty folder": [tmp / "empty"],
        "unrelated folder": [tmp / "unrelated"],
        "no such path": [tmp / "nope"],
        "no completed runs": [tmp / "unfinished"],
        "empty csv": [write_csv(tmp / "empty.csv", [], [])],
        "missing columns": [write_csv(tmp / "cols.csv", ["params", "tokens"], good)],
        "non-numeric value": [write_csv(tmp / "text.csv", header, good[:3] + [[1e8, 1e9, "abc"]] + good[3:])],
        "too few points": [write_csv(tmp / "few.csv", header, good[:3])],
        "all losses equal": [write_csv(tmp / "flat.csv", header, [[r[0], r[1], 2.5] for r in good])],
        "all non-finite": [write_csv(tmp / "nan.csv", header, [[r[0], r[1], "nan"] for r in good])],
        "unknown family": [tmp / "ok.csv", "--compare", "all", "other"],
        "irreducible too high": [tmp / "ok.csv", "--no_approach3", "--irreducible", 10],
        "bad ci": [tmp / "ok.csv", "--ci", 1.5],
        "unknown option": [tmp / "ok.csv", "--frobnicate"],
        "all and final points": [tmp / "ok.csv", "--all_points", "--final_only"],
        "invert without compare": [tmp / "ok.csv", "--invert"],
    }
    write_csv(tmp / "ok.csv", header, good)
    return cases


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    for name, argv in bad_inputs(tmp_path).items():
        with pytest.raises(SystemExit) as exit_info:
            fs.main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, name
        lines = [line for line in err.splitlines() if not line.startswith("  bootstrap") and
                 not line.startswith("approach 3, family")]
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)


@pytest.mark.parametrize("case", ["unrelated folder", "non-numeric value", "too few points", "missing columns"])
def test_bad_input_cli_exits_2_without_traceback(tmp_path, case):
    argv = bad_inputs(tmp_path)[case]
    proc = cli(*argv, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_one_width_refuses_approach3_in_one_line_and_fits_the_frontier(tmp_path):
    N, D, L = chinchilla_design(EPOCH, noise=0.005, seed=0, n_widths=6)
    path = write_csv(tmp_path / "one.csv", ["params", "tokens", "loss"], [[1e8, d, loss] for d, loss in zip(D, L)])
    proc = cli(path, "--bootstrap", 0, "--no_plots")
    refusals = [line for line in proc.stdout.splitlines() if "refused:" in line]
    assert len(refusals) == 1 and "1 distinct N" in refusals[0] and "Frontier law:" in proc.stdout
