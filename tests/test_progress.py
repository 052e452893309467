"""
Tests for progress.py: each gain kind against a hand computation (R(C) by root finding vs its closed form, the
law gain of two power laws, the normalization), the published ledger's headline, the counting conventions,
Monte Carlo intervals (known answers, and the point value when nothing has spread), the JSON readers of
analyze.py and fit_scaling.py output, this study's ledger, and bad ledgers (one line, exit status 2).
Whole file: about 25 s on 2 busy cores (7 s of CPU).
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy, as in fit_scaling.py

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import progress
from configurator import UserError
from conftest import ROOT

PUBLISHED = os.path.join(ROOT, "configs", "ledger", "gundlach2025.py")
THIS_STUDY = os.path.join(ROOT, "configs", "ledger", "this_study.py")
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022
KAPLAN_K = 3.6332e-6


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def ledger_file(tmp_path, innovations, extra="", name="ledger.py"):
    return write(tmp_path / name, f"compute = {{2013: 1e16}}\ncompute_growth = 4.1\nperiod = (2012, 2023)\n"
                                  f"{extra}\ninnovations = [\n{innovations}\n]\n")


def run(argv):
    return progress.run([*map(str, argv), "--no_plots"] if "--plots" not in argv else list(map(str, argv)))


def by_name(out):
    return {r["name"]: r for r in out["innovations"]}


# ----------------------------------------------------------------------------- gains by hand

def closed_form_rebalancing(p, C, k, exponent):
    """R(C) by hand. The compute-optimal allocation under C = 6ND (minimise E + A/N^a + B/D^b over N with
    D = C/6N) is N = G (C/6)^(b/(a+b)), D = (C/6)^(a/(a+b)) / G with G = (a A / (b B))^(1/(a+b)); both terms
    then scale as (C/6)^-g with g = a b / (a + b), so L*(C) = E + K (C/6)^-g, K = A G^-a + B G^b. The
    Kaplan-allocated loss L_K(C) is reached by the optimum at C* = 6 (K / (L_K - E))^(1/g); R = C / C*."""
    a, b = p["alpha"], p["beta"]
    G = (a * p["A"] / (b * p["B"])) ** (1 / (a + b))
    g = a * b / (a + b)
    K = p["A"] * G ** -a + p["B"] * G ** b
    n = k * C ** exponent
    loss_kaplan = p["E"] + p["A"] / n ** a + p["B"] / (C / (6 * n)) ** b
    return C / (6 * (K / (loss_kaplan - p["E"])) ** (1 / g)), loss_kaplan


def test_rebalancing_root_finding_matches_closed_form():
    budgets = np.array([1e18, 1e20, 1.3422659e22, 1e25])
    numeric = progress.rebalancing_gain(CHINCHILLA, budgets, KAPLAN_K, 0.73)
    for C, r in zip(budgets, numeric):
        expected, loss_kaplan = closed_form_rebalancing(CHINCHILLA, C, KAPLAN_K, 0.73)
        assert r == pytest.approx(expected, rel=1e-9)
        # and directly: at C* = C / R no allocation beats the Kaplan loss, and the best one matches it
        c_star = C / r
        best = minimize_scalar(lambda x: CHINCHILLA["E"] + CHINCHILLA["A"] / math.exp(x) ** CHINCHILLA["alpha"]
                               + CHINCHILLA["B"] / (c_star / 6 / math.exp(x)) ** CHINCHILLA["beta"],
                               bounds=(0, math.log(c_star / 6)), method="bounded", options={"xatol": 1e-10})
        assert best.fun == pytest.approx(loss_kaplan, rel=1e-9)
    assert numeric[2] == pytest.approx(3.713, abs=0.001)  # the published 2023 frontier: about 3.7x
    assert np.all(np.diff(numeric) > 0)  # the misallocation costs more the more compute is spent


def test_rebalancing_is_one_when_kaplan_allocates_optimally():
    p = CHINCHILLA
    a = p["beta"] / (p["alpha"] + p["beta"])
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    r = progress.rebalancing_gain(p, np.array([1e15, 1e21, 1e26]), G * 6 ** -a, a)  # N = G (C/6)^a exactly
    assert r == pytest.approx(1.0, rel=1e-9)


def test_law_gain_of_two_power_laws_matches_closed_form(tmp_path):
    # L = a C^-b on both sides: C_old(L_new(C)) / C = (a_old / a_new)^(1/b_old) C^(b_new / b_old - 1)
    path = ledger_file(tmp_path, 'innovation("T", 2017, law_gain(frontier(81.7, 0.091), frontier(36.3, 0.065)))')
    for end in (2017, 2020, 2023):
        out = run([path, "--to", end])
        C = 1e16 * 4.1 ** (end - 2013)
        assert out["compute_to"] == pytest.approx(C, rel=1e-12)
        expected = (36.3 / 81.7) ** (1 / 0.065) * C ** (0.091 / 0.065 - 1)
        assert by_name(out)["T"]["gain"] == pytest.approx(expected, rel=1e-9)
    assert by_name(out)["T"]["gain"] == pytest.approx(2697, abs=1)  # the published LSTM -> 2017 law gain in 2023


def test_product_ratio_and_normalization(tmp_path):
    path = ledger_file(tmp_path, 'innovation("x", 2015, 1.5), innovation("y", 2016, 3.0), '
                                 'innovation("z", None, 2.0), innovation("w", 2020, ratio(product(2.0, 3.0), 4.0))',
                       extra="")
    with open(path, "a") as f:
        f.write('normalize = normalized(["x", "y", "z"], 1.8)\n')
    out = run([path])
    rows = by_name(out)
    s = math.log(1.8) / math.log(1.5 * 3.0 * 2.0)  # one exponent for the three
    assert out["normalization"]["exponent"] == pytest.approx(s, rel=1e-12)
    assert rows["x"]["gain"] * rows["y"]["gain"] * rows["z"]["gain"] == pytest.approx(1.8, rel=1e-12)
    assert rows["y"]["gain"] == pytest.approx(3.0 ** s, rel=1e-12)
    assert rows["w"]["gain"] == pytest.approx(1.5, rel=1e-12) and not rows["w"]["normalized"]
    assert not rows["z"]["counted"]  # no year: in the normalization only
    assert out["total"] == pytest.approx(1.5 ** s * 3.0 ** s * 1.5, rel=1e-12)


# ----------------------------------------------------------------------------- the published ledger

def test_published_ledger_reproduces_the_headline(tmp_path, capsys):
    out = run([PUBLISHED, "--json", tmp_path / "ledger.json", "--plots", tmp_path / "plots"])
    rows = by_name(out)
    # Gundlach et al. 2025: 6,930x in 2012 -> 2023, the Transformer ~700x, Chinchilla ~3.7x, ~89% scale-dependent
    assert out["total"] == pytest.approx(6930, rel=0.005)
    assert rows["LSTM -> Transformer"]["gain"] == pytest.approx(726, abs=1)
    assert rows["Kaplan -> Chinchilla rebalancing"]["gain"] == pytest.approx(3.71, abs=0.01)
    assert out["share_scale_dependent"] == pytest.approx(0.893, abs=0.002)
    assert out["scale_invariant"] == pytest.approx(2.568, abs=0.002)  # 1.284 (five normalized) x 2.0 (MoE)
    assert out["compute_from"] == pytest.approx(1e16 / 4.1) and out["compute_to"] == pytest.approx(1e16 * 4.1 ** 10)
    saved = json.load(open(tmp_path / "ledger.json"))
    for key in ("from", "to", "compute_from", "compute_to", "total", "scale_dependent", "scale_invariant",
                "share_scale_dependent", "innovations", "total_interval"):
        assert key in saved
    assert {"name", "year", "gain", "scale_dependent"} <= set(saved["innovations"][0])
    assert saved["by_year"][-1]["total"] == pytest.approx(out["total"], rel=1e-9)
    assert saved["by_year"][0]["total"] == 1.0  # nothing yet in 2012
    # the same gains at a small model's compute are worth far less
    by_compute = saved["by_compute"]
    assert by_compute[0]["compute"] < out["compute_from"] and by_compute[0]["total"] < 1
    sens = {round(r["factor"], 3): r for r in saved["sensitivity"]["rows"]}
    assert sens[1.0]["share_scale_dependent"] == pytest.approx(out["share_scale_dependent"], rel=1e-9)
    assert sens[0.5]["share_scale_dependent"] < sens[1.0]["share_scale_dependent"] < sens[1.5]["share_scale_dependent"]
    assert sorted(os.listdir(tmp_path / "plots")) == ["cumulative.png", "sensitivity.png", "vs_compute.png"]
    text = capsys.readouterr().out
    assert "> 1: the innovation helps" in text and "6926x" in text


def test_counting_from_to(tmp_path):
    out = run([PUBLISHED, "--from", 2018, "--to", 2020])
    rows = by_name(out)
    counted = [r["name"] for r in out["innovations"] if r["counted"]]
    assert counted == ["post -> pre-norm", "LayerNorm -> RMSNorm"]  # 2018 < year <= 2020
    assert out["total"] == pytest.approx(rows["post -> pre-norm"]["gain"] * rows["LayerNorm -> RMSNorm"]["gain"])
    assert out["share_scale_dependent"] == 0
    assert out["yearly_rate"] == pytest.approx(out["total"] ** 0.5)


# ----------------------------------------------------------------------------- Monte Carlo

def test_intervals_are_the_point_values_without_spread(tmp_path, capsys):
    path = ledger_file(tmp_path, 'innovation("a", 2015, constant(1.5, interval=(1.5, 1.5))), '
                                 'innovation("b", 2018, law_gain(frontier(81.7, 0.091), frontier(36.3, 0.065)))')
    out = run([path, "--draws", 500])
    for key in ("total", "scale_dependent", "scale_invariant", "yearly_rate"):
        assert out[f"{key}_interval"] == pytest.approx([out[key]] * 2, rel=1e-12)
    assert out["share_scale_dependent_interval"] == pytest.approx([out["share_scale_dependent"]] * 2, rel=1e-9)
    assert "none of the 3 components has an interval" in capsys.readouterr().out
    narrow = path.replace("ledger.py", "narrow.py")
    shutil.copy(path, narrow)
    with open(narrow) as f:
        text = f.read().replace("interval=(1.5, 1.5)", "interval=(1.5 * (1 - 1e-9), 1.5 * (1 + 1e-9))")
    out_narrow = run([write(narrow, text), "--draws", 500])
    assert out_narrow["total_interval"] == pytest.approx([out["total"]] * 2, rel=1e-8)
    assert out_narrow["total_interval"][0] < out_narrow["total_interval"][1]


def test_intervals_from_a_lognormal_component(tmp_path, capsys):
    path = ledger_file(tmp_path, 'innovation("a", 2015, constant(2.0, interval=(1.0, 4.0))), '
                                 'innovation("b", 2016, 3.0)')
    out = run([path, "--draws", 4000])
    lo, hi = out["total_interval"]
    assert lo == pytest.approx(3.0, rel=0.05) and hi == pytest.approx(12.0, rel=0.05)  # 3x the component's
    assert out["total"] == pytest.approx(6.0)
    text = capsys.readouterr().out
    total_line = next(line for line in text.splitlines() if line.startswith("total:"))
    assert "[" in total_line  # never a total without its interval when a part has one
    assert run([path, "--draws", 4000])["total_interval"] == [lo, hi]  # same seed, same numbers
    capsys.readouterr()
    run([path, "--draws", 4000, "--invert"])  # the inverse on request, said in the header
    text = capsys.readouterr().out
    assert "(< 1: the innovation helps)" in text
    assert f"total:           0.1667x [{1 / hi:.4g}, {1 / lo:.4g}]" in text


def test_a_shared_component_is_drawn_once(tmp_path):
    analyze_json = write(tmp_path / "analyze.json", json.dumps({"ceg": [
        {"label": "m_minus_x", "baseline": "m", "ceg": 0.5, "ci_low": 0.25, "ci_high": 1.0, "bound": None}]}))
    path = ledger_file(tmp_path, f'innovation("x", 2015, measured({analyze_json!r}, "m_minus_x")), '
                                 f'innovation("undo x", 2016, ratio(1.0, measured({analyze_json!r}, "m_minus_x")))')
    out = run([path, "--draws", 300])
    assert out["total_interval"] == pytest.approx([1.0, 1.0], rel=1e-12)  # the same draws cancel exactly


# ----------------------------------------------------------------------------- reading the tools' JSON

def test_measured_reads_every_analyze_format(tmp_path):
    # rows before the toolkit-wide convention: ceg = FLOPs_baseline / FLOPs_variant (the variant over the baseline)
    old = {"study": "s", "width": 64, "label": "m_minus_x", "baseline": "m", "is_baseline": False,
           "ceg": 0.5, "ci_low": 0.4, "ci_high": 0.625, "bound": None}
    # today's rows: the same fields plus the gain of gain_of over gain_over, as printed (and with analyze --invert)
    new = {**old, "gain_of": "m", "gain_over": "m_minus_x", "gain": 2.0, "gain_low": 1.6, "gain_high": 2.5,
           "gain_bound": None, "interval": "t"}
    inverted = {**old, "gain_of": "m_minus_x", "gain_over": "m", "gain": 0.5, "gain_low": 0.4, "gain_high": 0.625,
                "gain_bound": None, "interval": "t"}
    baseline_row = {"study": "s", "width": 64, "label": "m", "baseline": "m", "is_baseline": True, "ceg": 1.0}
    for row in (old, new, inverted):
        path = write(tmp_path / "a.json", json.dumps({"ceg": [row, baseline_row]}))
        progress.READ.clear()
        g = progress.measured(path, "m_minus_x", baseline="m")
        assert g["value"] == pytest.approx(2.0) and g["interval"] == pytest.approx((1.6, 2.5))
        assert "m over m_minus_x" in g["source"]
        progress.READ.clear()
        g = progress.measured(path, "m_minus_x", invert=True)
        assert g["value"] == pytest.approx(0.5) and g["interval"] == pytest.approx((0.4, 0.625))
    with pytest.raises(UserError, match="no CEG row with label 'nope'.*m_minus_x vs m"):
        progress.measured(path, "nope")
    for row in ({**old, "bound": "lower"}, {**new, "gain_bound": "upper", "bound": "lower"}):
        path = write(tmp_path / "b.json", json.dumps({"ceg": [row]}))
        progress.READ.clear()
        with pytest.raises(UserError, match=r"only a bound \(upper\)"):  # the variant's lower bound, turned
            progress.measured(path, "m_minus_x")


def synthetic_fit_json(tmp_path):
    """fit_scaling.py --json output (run as a user would) for three synthetic families."""
    rng = np.random.default_rng(0)
    laws = {"modern": (1.7, 400, 410, 0.34, 0.28), "retro_2017": (1.75, 420, 410, 0.33, 0.28),
            "lstm": (1.9, 400, 410, 0.30, 0.26)}
    lines = ["params,tokens,loss,label"]
    for label, (E, A, B, alpha, beta) in laws.items():
        for n in (1e6, 3e6, 1e7, 3e7, 1e8):
            for d in (1e7, 3e7, 1e8, 3e8, 1e9):
                lines.append(f"{n},{d},{(E + A / n ** alpha + B / d ** beta) * math.exp(rng.normal(0, 0.003))},{label}")
    csv_path = write(tmp_path / "points.csv", "\n".join(lines) + "\n")
    out = tmp_path / "docs" / "study" / "fit_scaling.json"
    os.makedirs(out.parent, exist_ok=True)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "fit_scaling.py"), csv_path, "--bootstrap", "8",
                           "--no_plots", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return str(out)


def study_analyze_json(folder):
    """The study's analyze.json (ablations at widths 32, 64, 128: the ledger reads 128) and schedules.json."""
    gains = dict(modern_minus_rope_sinusoidal=3.0, modern_minus_rope=2.3, modern_minus_prenorm=1.14,
                 modern_minus_rmsnorm=0.92, modern_minus_swiglu=1.09, retro_2017=1.15)
    row = lambda study, width, label, baseline, g: dict(study=study, width=width, label=label, baseline=baseline,
                                                       is_baseline=False, ceg=1 / g, ci_low=0.93 / g,
                                                       ci_high=1.07 / g, bound=None)
    rows = [row("study_ablations", w, label, "modern", g * (1 if w == 128 else 5))
            for w in (32, 64, 128) for label, g in gains.items()]
    write(os.path.join(folder, "analyze.json"), json.dumps({"ceg": rows, "ci": {"level": 0.95}}))
    rows = [row("study_schedules", w, "modern_minus_cosine", "modern_cosine", 0.97 if w == 64 else 9.0)
            for w in (32, 64)]
    write(os.path.join(folder, "schedules.json"), json.dumps({"ceg": rows, "ci": {"level": 0.95}}))


def copy_this_study(tmp_path):
    os.makedirs(tmp_path / "configs" / "ledger")
    return shutil.copy(THIS_STUDY, tmp_path / "configs" / "ledger" / "this_study.py")


def test_this_study_fails_with_one_line_when_the_study_json_is_missing(tmp_path):
    ledger = copy_this_study(tmp_path)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "progress.py"), ledger, "--no_plots"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no such file" in lines[0] and "--json docs/study/" in lines[0], lines


def test_this_study_end_to_end_on_synthetic_study_json(tmp_path, monkeypatch):
    ledger = copy_this_study(tmp_path)
    fits = synthetic_fit_json(tmp_path)
    shutil.copy(fits, tmp_path / "docs" / "study" / "fit_scaling_e0.json")  # the frontier laws' file
    study_analyze_json(tmp_path / "docs" / "study")
    monkeypatch.chdir(tmp_path)
    out = run([ledger, "--draws", 1000])
    rows = by_name(out)
    s = math.log(1.15) / math.log(3.0 * 1.14 * 0.92 * 1.09)  # the normalization (the schedule is not in it)
    assert rows["learned -> rotary positions"]["gain"] == pytest.approx(2.3 ** s, rel=1e-9)
    assert rows["inverse-sqrt -> cosine schedule"]["gain"] == pytest.approx(0.97, rel=1e-9)  # width 64, as measured
    assert rows["sinusoidal -> learned positions"]["gain"] == pytest.approx((3.0 / 2.3) ** s, rel=1e-9)
    assert rows["mixture of experts"]["gain"] == 2.0
    lo, hi = rows["LSTM -> Transformer"]["interval"]  # from the bootstrap samples of the frontier laws
    assert lo < rows["LSTM -> Transformer"]["gain"] < hi
    assert out["total_interval"][0] < out["total"] < out["total_interval"][1]
    lo, hi = rows["Kaplan -> Chinchilla rebalancing"]["interval"]  # from approach 3's bootstrap samples
    assert lo < rows["Kaplan -> Chinchilla rebalancing"]["gain"] < hi


def test_chinchilla_fitted_by_approach3_gives_the_law_it_was_fitted_to(tmp_path):
    p = CHINCHILLA
    lines = ["params,tokens,loss"] + [f"{n},{d},{p['E'] + p['A'] / n ** p['alpha'] + p['B'] / d ** p['beta']}"
                                       for n in np.geomspace(1e7, 1e10, 6) for d in np.geomspace(1e8, 1e12, 6)]
    csv_path = write(tmp_path / "exact.csv", "\n".join(lines) + "\n")
    law = progress.chinchilla_fitted(csv_path, options=["--bootstrap", "0"])
    for k in ("E", "A", "B", "alpha", "beta"):
        assert law[k] == pytest.approx(p[k], rel=1e-3)
    C = np.array([1e20, 1e23])
    assert progress.rebalancing_gain(law, C, KAPLAN_K, 0.73) == pytest.approx(
        progress.rebalancing_gain(p, C, KAPLAN_K, 0.73), rel=1e-3)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("text, message", [
    ("innovations = [1.5]", "innovations must be a list of innovation"),
    ("innovations = [innovation('x', 2015, 'big')]", "'big' is not a gain"),
    ("innovations = [innovation('x', '2015', 1.2)]", "the year is a whole number"),
    ("innovations = [innovation('x', 2015, constant(1.2, interval=(1.3, 1.5)))]", "the interval must hold the value"),
    ("innovations = [innovation('x', 2015, -2)]", "must be a positive number"),
    ("innovations = [innovation('x', 2015, 1.2), innovation('x', 2016, 1.1)]", "repeated: x"),
    ("innovations = [innovation('x', 2015, 1.2)]\nnormalize = normalized(['y'], 1.1)", "'y', not innovations"),
    ("innovations = [innovation('x', 2015, law_gain(chinchilla(1, 2, 3, 0.3, 0.3), frontier(1, 0.1)))]",
     "not a frontier law"),
    ("innovations = [innovation('x', 2015, measured('nowhere.json', 'a'))]", "nowhere.json: no such file"),
    ("innovations = [innovation('x', 2015, 1.2)]\nwidht = 3", "unknown config key 'widht'.*a ledger sets"),
    ("innovations = [innovation('x', 2015, 1.2)]\nx = 1 / 0", "ZeroDivisionError"),
    ("innovations = [innovation('x', 2015, 1.2)", "syntax error"),
])
def test_bad_ledger_gives_one_line(tmp_path, capsys, text, message):
    path = write(tmp_path / "bad.py", "compute = {2013: 1e16}\ncompute_growth = 4.1\nperiod = (2012, 2023)\n" + text)
    with pytest.raises(SystemExit) as e:
        progress.main([path, "--no_plots"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert re.search(message, err), err


@pytest.mark.parametrize("args, message", [
    (["missing_ledger.py"], "ledger file not found: missing_ledger.py \\(presets: .*gundlach2025.py"),
    ([PUBLISHED, "--from", 2020, "--to", 2019], "the end year must come after the start year"),
    ([PUBLISHED, "--ci", 2], "--ci 2: give a level between 0 and 1"),
])
def test_bad_arguments_give_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        progress.main([*map(str, args), "--no_plots"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err


def test_compute_timeline_needs_growth_beyond_its_years(tmp_path, capsys):
    path = write(tmp_path / "l.py", "compute = {2013: 1e16, 2020: 1e20}\nperiod = (2013, 2023)\n"
                                    "innovations = [innovation('x', 2015, 1.2)]\n")
    with pytest.raises(UserError, match="compute has no value for 2023.*set compute_growth"):
        run([path])
    out = run([path, "--to", 2020])
    assert out["compute_to"] == pytest.approx(1e20)
    assert progress.compute_at(progress.load_ledger(path), [2016.5], path)[0] == pytest.approx(1e18)  # geometric
