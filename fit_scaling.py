"""
Scaling laws from many runs: Chinchilla approach 3, compute frontiers, and the compute-equivalent gain of
one model family over another as a function of compute.

    python fit_scaling.py results/<study>                      # every completed run under the folder
    python fit_scaling.py results/<study> --compare modern lstm --extrapolate 1e22 --json fits.json
    python fit_scaling.py points.csv                           # columns params,tokens,loss or params,flops,loss

A results folder gives (N, D, C, loss) points from every completed run: its annealed points (anneal.csv), its
final point and its mid-schedule evaluations; families are config labels (--group arch: archs). A CSV gives one
final point per row. Per family it fits approach 3, L(N, D) = E + A/N^alpha + B/D^beta (Besiroglu et al.'s
Huber fit from a grid of L-BFGS starts; refused in one line unless the points identify it), with the
compute-optimal allocation; the frontier law L(C) = E + a C^-b on the Pareto frontier of (C, loss); the isoFLOP
view where a budget has 3+ widths; bootstrap intervals over runs. --compare A B prints CEG(C) = C_B(L_A(C)) / C,
"A over B" (> 1: A is better), each row measured or extrapolated.
Output: tables on stdout; --json FILE (per family approach3 and frontier, and compare); PNGs (frontier,
approach3, residuals, ceg, isoflop) in <input>/plots, or --plots DIR, or --no_plots. Bad input exits with
status 2 and one line on stderr. README.md, "Scaling fits", has the inputs, the fits, their intervals and
refusals, and the JSON fields.
"""
import os

# Thousands of tiny L-BFGS problems: BLAS threads only add overhead (measured 6x slower on a busy 2-core
# machine). Must be set before numpy and scipy load their BLAS.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import csv
import itertools
import math
import sys
import textwrap
import time

import matplotlib
import numpy as np
from scipy.optimize import minimize, minimize_scalar

import results
from analyze import colors, legible, plt, save_figure, style  # the toolkit's plot helpers (and its pyplot: Agg)
from configurator import ArgumentParser, UserError, cli_main

HUBER_DELTA = 1e-3
# Besiroglu et al.'s grid of initialisations (np.arange, so the upper ends are excluded): 4500 starts.
EPOCH_GRID = dict(alpha=np.arange(0, 2.5, 0.5), beta=np.arange(0, 2.5, 0.5), e=np.arange(-1, 1.5, 0.5),
                  a=np.arange(0, 30, 5), b=np.arange(0, 30, 5))
# A subset of it (108 starts): on Besiroglu et al.'s data (with and without their 5 outliers) and on four
# synthetic sets it reached the same optimum as the full grid (objective equal to 8 digits), 25x faster.
FAST_GRID = dict(alpha=np.array([0.0, 0.5, 1.0]), beta=np.array([0.0, 0.5, 1.0]), e=np.array([-1.0, 0.0, 1.0]),
                 a=np.array([0.0, 20.0]), b=np.array([0.0, 20.0]))
MIN_POINTS_APPROACH3 = 8   # distinct (N, D) points; 5 parameters
MIN_VALUES_PER_AXIS = 3    # a power law plus a constant along N (or D) takes 3 distinct values to pin down
MIN_POINTS_FRONTIER = 4    # 3 parameters (2 with --irreducible, then 3 points suffice)
# "not identified" thresholds on the bootstrap intervals: an exponent or E whose interval spans more than
# a factor 10, or a tokens-per-parameter ratio inside the data spanning more than a factor 100
MAX_SPAN_EXPONENT, MAX_SPAN_E, MAX_SPAN_RATIO = 10.0, 10.0, 100.0
KINDS = ("anneal", "final", "eval")  # a point's kind: annealed (anneal.csv), a run's final point, mid-schedule
ANNEALED = ("anneal", "final")  # the losses of a run trained for that budget


def params_note(args, short=True):
    """What N is, said on every table that uses it."""
    if args.params == "total":
        why = ", so the law compares with theirs; --params non_embedding for Kaplan's" if not short else ""
        return f"N = all parameters (--params total, the default: Chinchilla's count{why})"
    return "N = non-embedding parameters (--params non_embedding: Kaplan's count; the default is total)"


# ----------------------------------------------------------------------------- reading points

CSV_ALIASES = {  # normalised header (lower case, spaces and dashes as underscores) -> our name
    "params": "params", "n_params": "params", "parameters": "params", "model_size": "params", "n": "params",
    "tokens": "tokens", "training_tokens": "tokens", "d": "tokens", "n_tokens": "tokens",
    "flops": "flops", "training_flop": "flops", "training_flops": "flops", "compute": "flops", "c": "flops",
    "loss": "loss", "val_loss": "loss", "final_loss": "loss",
    "label": "label", "family": "label", "run": "run", "run_name": "run",
}


def new_points():
    # kind: 'anneal' (anneal.csv), 'final' (a run's last evaluation, or a CSV row), 'eval' (mid-schedule);
    # lr: the run's learning_rate (nan when unknown)
    return {"family": [], "run": [], "N": [], "D": [], "C": [], "L": [], "kind": [], "lr": []}


def read_csv_points(path, args, skipped):
    """Points from a CSV file; rows with a missing or non-finite value are skipped and counted."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}")
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise UserError(f"{path} is empty; a CSV needs a header with params,tokens,loss or params,flops,loss")
    header = [h.strip() for h in rows[0]]
    columns = {}
    for i, h in enumerate(header):
        name = CSV_ALIASES.get(h.lower().replace(" ", "_").replace("-", "_"))
        if name and name not in columns:
            columns[name] = i
    missing = [c for c in ("params", "loss") if c not in columns]
    if "tokens" not in columns and "flops" not in columns:
        missing.append("tokens or flops")
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(header)}); "
                        f"a CSV needs params,tokens,loss or params,flops,loss")
    points = new_points()
    for line_no, row in enumerate(rows[1:], start=2):
        values = {}
        for name in ("params", "tokens", "flops", "loss"):
            if name not in columns:
                continue
            text = row[columns[name]].strip() if columns[name] < len(row) else ""
            if text == "":
                values[name] = math.nan  # an empty cell is a missing value: skipped and counted
                continue
            try:
                values[name] = float(text)
            except ValueError:
                raise UserError(f"{path} line {line_no}: column '{header[columns[name]]}' holds {text!r}, "
                                f"not a number")
        n = values["params"]
        if "tokens" in values:
            d = values["tokens"]
        else:  # D = C / 6N; a row with N <= 0 keeps D = N and is skipped below as a value <= 0
            d = values["flops"] / (6 * n) if n > 0 else n
        c = values["flops"] if "flops" in values and args.flops != "6nd" else 6 * n * d
        label = row[columns["label"]].strip() if "label" in columns and columns["label"] < len(row) else ""
        run = row[columns["run"]].strip() if "run" in columns and columns["run"] < len(row) else ""
        add_point(points, skipped, label or "all", run or f"row{line_no}", n, d, c, values["loss"])
    return points


def add_point(points, skipped, family, run, n, d, c, loss, kind="final", lr=math.nan):
    values = (n, d, c, loss)
    # abs(v) < 2**1024: an integer too large for a float (a garbled config.json) counts as non-finite
    if not all(isinstance(v, (int, float)) and abs(v) < 2 ** 1024 and math.isfinite(v) for v in values):
        skipped["non-finite value(s)"] = skipped.get("non-finite value(s)", 0) + 1
        return
    if min(values) <= 0:
        why = "tokens = 0 (initial evaluation)" if d == 0 and n > 0 else "value <= 0"
        skipped[why] = skipped.get(why, 0) + 1
        return
    for key, v in zip(("family", "run", "N", "D", "C", "L", "kind", "lr"), (family, run, n, d, c, loss, kind, lr)):
        points[key].append(v)


def run_rows(run):
    """(kind, row) for a run's points: anneal.csv rows, the final point (the last evaluation) and the
    other evaluations, one evaluation per token count (the final row may repeat the last evaluation). An
    annealed budget equal to the whole run is its final point; an evaluation at an annealed budget's step
    stays, as the mid-schedule loss there."""
    by_tokens = {}
    for row in run["metrics"]:
        by_tokens[row.get("tokens")] = row
    evals = [row for tokens, row in by_tokens.items() if isinstance(tokens, (int, float))]
    last = max(evals, key=lambda r: r["tokens"]) if evals else None
    out = [("eval", row) for row in evals if row is not last]
    if last is not None:
        out.append(("final", last))
    final_tokens = last["tokens"] if last is not None else None
    out += [("anneal", row) for row in run["anneal"] if row.get("tokens") != final_tokens]
    return out


def read_run_points(root, args, skipped):
    """Points from every completed run folder under root."""
    runs = results.find_runs(root)
    if not runs:
        raise UserError(f"no run folders under {root} (a run folder holds config.json, metrics.csv and "
                        f"final.json); give a results/<study> folder or a CSV with params,tokens,loss columns")
    points, statuses = new_points(), {}
    n_key = "n_params" if args.params == "total" else "n_params_non_embedding"
    for path in runs:
        run = results.read_run(path)
        if run["status"] != "completed":
            statuses[run["status"]] = statuses.get(run["status"], 0) + 1
            continue
        n = run["derived"].get(n_key)
        if not isinstance(n, (int, float)) or not n > 0:
            skipped[f"run without derived.{n_key}"] = skipped.get(f"run without derived.{n_key}", 0) + 1
            continue
        config = run["config"] or {}
        family = str(config.get(args.group, "") or "unlabelled")
        lr = config.get("learning_rate")
        lr = float(lr) if isinstance(lr, (int, float)) and abs(lr) < 2 ** 1024 else math.nan
        for kind, row in run_rows(run):
            d, loss = row.get("tokens"), row.get("val_loss")
            c = 6 * n * d if args.flops == "6nd" and isinstance(d, (int, float)) else row.get("flops")
            add_point(points, skipped, family, run["name"], n, d, c, loss, kind, lr)
    if not points["L"]:
        found = ", ".join(f"{k} {s}" for s, k in sorted(statuses.items())) or "none with usable rows"
        raise UserError(f"no completed runs with usable points under {root} ({len(runs)} run folder(s): "
                        f"{found}); wait for the runs to finish or point at another folder")
    for status, count in statuses.items():
        skipped[f"run not completed ({status})"] = count
    return points


def subset(fam, keep):
    return {k: v[keep] for k, v in fam.items()}


def select_points(points, args, skipped):
    """Arrays per family after --only, --min_tokens, --min_frac, --final_only and --drop_highest (which
    drops the highest losses among the points approach 3 uses)."""
    arrays = {k: np.array(v) for k, v in points.items()}
    families = {}
    names = sorted(set(points["family"]))
    if args.only:
        unknown = [f for f in args.only if f not in names]
        if unknown:
            raise UserError(f"--only {' '.join(unknown)}: no such family; families: {', '.join(names)}")
        names = [f for f in names if f in args.only]
    for name in names:
        fam = {k: v[arrays["family"] == name] for k, v in arrays.items() if k != "family"}
        keep = np.ones(len(fam["L"]), bool)
        if args.min_tokens > 0:
            keep &= fam["D"] >= args.min_tokens
        if args.min_frac > 0:
            for run in np.unique(fam["run"]):
                in_run = fam["run"] == run
                keep &= ~in_run | (fam["D"] >= args.min_frac * fam["D"][in_run].max())
        if args.final_only:
            keep &= fam["kind"] == "final"
        dropped = int((~keep).sum())
        if dropped:
            skipped["dropped by --min_tokens/--min_frac/--final_only"] = \
                skipped.get("dropped by --min_tokens/--min_frac/--final_only", 0) + dropped
        fam = subset(fam, keep)
        used = approach3_mask(fam, args)
        if args.drop_highest > 0 and used.sum() > args.drop_highest:
            # as Besiroglu et al.: keep losses strictly below the k-th highest (ties with it go too)
            threshold = np.sort(fam["L"][used])[-args.drop_highest]
            keep = fam["L"] < threshold
            skipped["dropped by --drop_highest"] = skipped.get("dropped by --drop_highest", 0) + int((~keep).sum())
            fam = subset(fam, keep)
        if len(fam["L"]) == 0:
            raise UserError(f"family '{name}': no points left after the filters; relax --min_tokens, "
                            f"--min_frac or --final_only")
        if np.ptp(fam["L"]) == 0:
            raise UserError(f"family '{name}': all {len(fam['L'])} losses are equal ({fam['L'][0]:g}); "
                            f"nothing to fit")
        families[name] = fam
    return families


def approach3_mask(fam, args):
    """Approach 3 and the isoFLOP view: annealed and final points (--all_points: every point)."""
    return np.ones(len(fam["L"]), bool) if args.all_points else np.isin(fam["kind"], ANNEALED)


def frontier_mask(fam, args):
    """The frontier's candidates: a run's annealed and final points where it has anneal.csv, its every
    evaluation where it has not (the fallback); --all_points: every point."""
    if args.all_points:
        return np.ones(len(fam["L"]), bool)
    with_anneal = np.unique(fam["run"][fam["kind"] == "anneal"])
    return np.isin(fam["kind"], ANNEALED) | ~np.isin(fam["run"], with_anneal)


def points_label(fam, args, purpose):
    """One line saying which points a fit used."""
    runs = np.unique(fam["run"])
    with_anneal = np.unique(fam["run"][fam["kind"] == "anneal"])
    n_anneal = int((fam["kind"] == "anneal").sum())
    if args.all_points:
        return (f"points: every evaluation (--all_points: mid-schedule losses included, the Kaplan-style "
                f"design) and {n_anneal} annealed, from {len(runs)} runs")
    if (fam["kind"] == "eval").any():  # the frontier's fallback
        why = ("mid-schedule losses lie above what a run trained for that compute reaches, so the frontier "
               "there is an upper bound")
        if not len(with_anneal):
            return f"points: every evaluation of the {len(runs)} runs (fallback: no anneal.csv; {why})"
        return (f"points: annealed (anneal.csv) and final for {len(with_anneal)} run(s); every evaluation for "
                f"{len(runs) - len(with_anneal)} run(s) without anneal.csv (fallback: {why})")
    if args.input_kind == "csv":
        return f"points: the CSV's rows, each a run's final loss ({len(runs)} runs)"
    if n_anneal:
        return f"points: annealed ({n_anneal} from anneal.csv) and each run's final point ({len(runs)} runs)"
    return f"points: each run's final point ({len(runs)} runs, none with anneal.csv)"


# ----------------------------------------------------------------------------- the log-sum-exp law

def lse_law(theta, log_x, e_fixed=None):
    """log L = log(sum_k exp(c_k - s_k log x_k) + exp(e)) and its Jacobian. log_x is (K, n);
    theta = (c_1..c_K, e, s_1..s_K), or (c_1..c_K, s_1..s_K) when e is fixed. For approach 3 this is
    (a, b, e, alpha, beta) with x = (N, D); for a frontier law (log a, e, b) with x = C."""
    k = log_x.shape[0]
    c = theta[:k]
    e = theta[k] if e_fixed is None else e_fixed
    s = theta[-k:]
    terms = np.vstack([c[:, None] - s[:, None] * log_x, np.full((1, log_x.shape[1]), e)])
    top = terms.max(axis=0)
    w = np.exp(terms - top)
    total = w.sum(axis=0)
    w /= total  # softmax weights: d pred / d term
    jac = [w[i] for i in range(k)]
    if e_fixed is None:
        jac.append(w[k])
    jac += [-w[i] * log_x[i] for i in range(k)]
    return top + np.log(total), np.array(jac)


def huber_objective(theta, log_x, log_l, e_fixed, scale):
    """Sum over points of Huber(delta) of (predicted - observed) log loss, divided by scale."""
    pred, jac = lse_law(theta, log_x, e_fixed)
    r = pred - log_l
    a = np.abs(r)
    loss = np.where(a <= HUBER_DELTA, 0.5 * r * r, HUBER_DELTA * (a - 0.5 * HUBER_DELTA)).sum()
    return loss / scale, jac @ np.clip(r, -HUBER_DELTA, HUBER_DELTA) / scale


def minimize_huber(theta0, log_x, log_l, e_fixed=None, polish=False):
    """L-BFGS from theta0. The search uses scipy's default tolerances on the raw Huber sum (as Besiroglu
    et al.); polish=True rescales the objective by 1/delta and tightens the tolerances, for final fits."""
    if polish:
        scale, options = HUBER_DELTA, {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 5000}
    else:
        scale, options = 1.0, {}
    with np.errstate(over="ignore", invalid="ignore"):
        res = minimize(huber_objective, np.asarray(theta0, float), args=(log_x, log_l, e_fixed, scale),
                       jac=True, method="L-BFGS-B", options=options)
    return res.x, res.fun * scale


def best_of_starts(starts, log_x, log_l, e_fixed=None, n_polish=5):
    """L-BFGS from every start, then the n_polish best results polished; the lowest is kept. (The search
    can stop early in a flat valley of the Huber objective, so its best is not always the best polished.)"""
    found = []
    for theta0 in starts:
        theta, loss = minimize_huber(theta0, log_x, log_l, e_fixed)
        if np.all(np.isfinite(theta)) and math.isfinite(loss):
            found.append((loss, theta))
    if not found:
        raise UserError("the fit failed from every starting point (non-finite values); check the data")
    found.sort(key=lambda pair: pair[0])
    best_loss, best_theta = found[0]
    for _, theta0 in found[:n_polish]:
        theta, loss = minimize_huber(theta0, log_x, log_l, e_fixed, polish=True)
        if np.all(np.isfinite(theta)) and loss < best_loss:
            best_theta, best_loss = theta, loss
    return best_theta, best_loss


def bootstrap(theta_hat, log_x, log_l, units, n_boot, rng, e_fixed=None, label="", select=None):
    """Refit on resamples (with replacement) of the units (runs or points: all points of a unit go
    together), starting from theta_hat. select(idx) turns a resample's point indices (repeats included)
    into the indices to fit, or None when the resample cannot be fitted (it is skipped and counted): the
    frontier re-selects its points there. Returns (samples, number skipped)."""
    unique_units, inverse = np.unique(units, return_inverse=True)
    members = [np.flatnonzero(inverse == u) for u in range(len(unique_units))]
    samples, skipped, started, shown = [], 0, time.time(), time.time()
    for i in range(n_boot):
        picked = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[u] for u in picked])
        idx = select(idx) if select else idx
        if idx is None:
            skipped += 1
            continue
        theta, _ = minimize_huber(theta_hat, log_x[:, idx], log_l[idx], e_fixed, polish=True)
        if np.all(np.isfinite(theta)):
            samples.append(theta)
        else:
            skipped += 1
        if time.time() - shown > 5:  # progress, when it takes a while
            shown = time.time()
            print(f"  bootstrap {label}: {i + 1}/{n_boot} ({shown - started:.0f}s)", file=sys.stderr)
    return np.array(samples).reshape(-1, len(theta_hat)), skipped


def bootstrap_units(fam, args):
    return fam["run"] if args.bootstrap_over == "runs" else np.arange(len(fam["L"]))


def interval(values, level):
    """Percentile interval of bootstrap values; infinite values (unreachable) sort last."""
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return [math.nan, math.nan]
    q = [(1 - level) / 2, (1 + level) / 2]
    return [float(v) for v in np.quantile(values, q, method="inverted_cdf")]


def degenerate_warnings(params, exponents, losses):
    """Fits that the data cannot pin down: an exponent near zero turns its term into a constant that
    trades off against E; E near zero means the irreducible loss is not identified."""
    out = [f"{k} = {params[k]:.3g} is near zero or negative: its power law is not identified (too narrow a "
           f"range, or too much noise)" for k in exponents if params[k] < 0.01]
    if losses is not None and params["E"] < 0.01 * losses.min():
        out.append(f"E = {params['E']:.3g} is near zero: the irreducible loss is not identified by these "
                   f"points (--irreducible fixes it for the frontier law)")
    return out


# ----------------------------------------------------------------------------- approach 3

def grid_starts(grid):
    g = EPOCH_GRID if grid == "epoch" else FAST_GRID
    return [np.array([a, b, e, alpha, beta]) for alpha, beta, e, a, b in
            itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])]


def approach3_params(theta):
    a, b, e, alpha, beta = theta
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def allocation(p, budgets):
    """Compute-optimal N and D under C = 6ND for the law p (a dict), at the given budgets (closed form)."""
    alpha, beta = p["alpha"], p["beta"]
    if not (alpha > 0 and beta > 0):
        nan = np.full(len(budgets), math.nan)
        return {"a": math.nan, "b": math.nan, "G": math.nan}, nan, nan
    G = (alpha * p["A"] / (beta * p["B"])) ** (1 / (alpha + beta))
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    n_opt = G * (np.asarray(budgets) / 6) ** a
    return {"a": a, "b": b, "G": G}, n_opt, np.asarray(budgets) / (6 * n_opt)


def flops_per_param(fam):
    """(log N, log r) knots of r = C / (N D), the training FLOPs per token per parameter, one per distinct N
    (the median over its points): 6 under C = 6ND; from flops_per_token it falls with width (attention and
    the head weigh more in small models)."""
    widths = np.unique(fam["N"])
    ratio = [np.median(fam["C"][fam["N"] == n] / (n * fam["D"][fam["N"] == n])) for n in widths]
    return np.log(widths), np.log(ratio)


def compute_of(knots, N, D):
    """C(N, D) = r(N) N D with r interpolated in log N between the knots and held beyond them."""
    return np.exp(np.interp(np.log(N), *knots)) * np.asarray(N, float) * np.asarray(D, float)


def optimal_allocation(p, budgets, knots):
    """N_opt, D_opt minimising L(N, D) subject to C(N, D) = r(N) N D = C, for each budget C (a 1-D
    minimisation over log N: L falls with N and rises as D = C / (r(N) N) shrinks, so it is unimodal)."""
    alpha, beta, A, B = p["alpha"], p["beta"], p["A"], p["B"]
    n_opt = np.full(len(budgets), math.nan)
    if not (alpha > 0 and beta > 0):
        return n_opt, n_opt.copy()
    for i, c in enumerate(budgets):
        def loss(x):  # x = log N; E left out (a constant)
            log_d = math.log(c) - x - float(np.interp(x, *knots))
            return A * math.exp(-alpha * x) + B * math.exp(-beta * log_d)
        with np.errstate(over="ignore"):
            res = minimize_scalar(loss, bounds=(0.0, math.log(c)), method="bounded", options={"xatol": 1e-9})
        n_opt[i] = math.exp(res.x)
    return n_opt, np.asarray(budgets, float) / compute_of(knots, n_opt, 1.0)


def approach3_refusal(N, D, min_points=MIN_POINTS_APPROACH3):
    """Why these points cannot identify L = E + A/N^alpha + B/D^beta, or None."""
    pairs = np.unique(np.column_stack([N, D]), axis=0)
    n_widths, n_budgets = len(np.unique(N)), len(np.unique(D))
    rule = (f"approach 3 needs {MIN_VALUES_PER_AXIS}+ distinct N and {MIN_VALUES_PER_AXIS}+ distinct D (a power "
            f"law plus a constant along each takes 3 values) and {min_points}+ distinct (N, D) points")
    if n_widths < MIN_VALUES_PER_AXIS or n_budgets < MIN_VALUES_PER_AXIS or len(pairs) < min_points:
        return (f"{n_widths} distinct N, {n_budgets} distinct D, {len(pairs)} distinct (N, D) points: {rule}; "
                f"add widths or token budgets (cooldowns give budgets cheaply)")
    log_n, log_d = np.log(pairs[:, 0]), np.log(pairs[:, 1])
    slope, intercept = np.polyfit(log_n, log_d, 1)
    if np.abs(log_d - (slope * log_n + intercept)).max() < 1e-3:
        return (f"log D is a linear function of log N at every point (D = {math.exp(intercept):.3g} "
                f"N^{slope:.3g}, e.g. a fixed tokens per parameter): the N and D terms cannot be told apart; "
                f"add runs of the same widths at other token budgets")
    return None


def approach3_design_ok(fam):
    """select() for the bootstrap: a resample that drops below the identification rule is skipped (a
    resample holds about 63% of the distinct points, so it needs only more than the 5 parameters)."""
    def select(idx):
        return idx if approach3_refusal(fam["N"][idx], fam["D"][idx], min_points=6) is None else None
    return select


def identification_problems(out, losses, level):
    """Why a fitted approach 3 is not identified (empty list when it is): E or an exponent at zero, an
    interval of zero width or spanning orders of magnitude, most resamples unfittable."""
    problems = []
    if out["E"] < 0.01 * losses.min():
        problems.append(f"E = {out['E']:.3g} is at zero (the irreducible loss trades off against the power laws)")
    for k in ("alpha", "beta"):
        if out[k] < 0.01:
            problems.append(f"{k} = {out[k]:.3g} is at zero (its term is a constant)")
    if out["n_bootstrap"] < 2:
        return problems
    ci = out["ci"]
    flat = [k for k in ("E", "A", "B", "alpha", "beta") if math.isfinite(ci[k][0]) and math.isfinite(ci[k][1])
            and ci[k][1] - ci[k][0] <= 1e-9 * abs(ci[k][1])]
    if flat:
        problems.append(f"the {level} of {', '.join(flat)} has zero width (every resample lands on the same value)")
    for k, limit in (("alpha", MAX_SPAN_EXPONENT), ("beta", MAX_SPAN_EXPONENT), ("E", MAX_SPAN_E)):
        lo, hi = ci[k]
        if not (lo > 0 and hi / lo <= limit):
            problems.append(f"the {level} of {k}, [{lo:.3g}, {hi:.3g}], spans more than a factor {limit:g}")
    for row in out["allocation"]["budgets"]:
        lo, hi = row["ci"]["tokens_per_param"]
        if not row["extrapolated"] and not (lo > 0 and hi / lo <= MAX_SPAN_RATIO):
            problems.append(f"the {level} of the compute-optimal D/N at C = {row['C']:.2g}, [{lo:.3g}, {hi:.3g}], "
                            f"spans more than a factor {MAX_SPAN_RATIO:g}")
            break
    n_tried = out["n_bootstrap"] + out["bootstrap_skipped"]
    if out["bootstrap_skipped"] > 0.5 * n_tried:
        problems.append(f"{out['bootstrap_skipped']} of {n_tried} resamples over {out['bootstrap_over']} have too "
                        f"few widths or budgets to fit ({out['n_runs']} runs)")
    return problems


def fit_approach3(name, fam, args, rng):
    """Approach 3 on a family's points (select_points' arrays; those approach 3 does not use are left out
    here) with bootstrap intervals, the allocation and the identification check; or its refusal."""
    if "kind" in fam:
        fam = subset(fam, approach3_mask(fam, args))
    refusal = approach3_refusal(fam["N"], fam["D"])
    if refusal:
        return {"identified": False, "refused": refusal}
    n_widths = len(np.unique(fam["N"]))
    log_x, log_l = np.log(np.vstack([fam["N"], fam["D"]])), np.log(fam["L"])
    started = time.time()
    starts = grid_starts(args.grid)
    print(f"approach 3, family '{name}': L-BFGS from {len(starts)} starts on {len(log_l)} points...",
          file=sys.stderr)
    theta, loss = best_of_starts(starts, log_x, log_l)
    fit_seconds = time.time() - started
    started = time.time()
    samples, n_skipped = bootstrap(theta, log_x, log_l, bootstrap_units(fam, args), args.bootstrap, rng,
                                   label=f"approach 3 '{name}'", select=approach3_design_ok(fam))
    out = approach3_params(theta)
    out["warnings"] = degenerate_warnings(out, ("alpha", "beta"), fam["L"])
    boot = [approach3_params(s) for s in samples]
    out["ci"] = {k: interval([b[k] for b in boot], args.ci) for k in ("E", "A", "B", "alpha", "beta")}
    out.update(huber_loss=loss, n_points=len(log_l), n_widths=n_widths, n_runs=len(np.unique(fam["run"])),
               n_starts=len(starts), fit_seconds=fit_seconds, bootstrap_seconds=time.time() - started,
               n_bootstrap=len(samples), bootstrap_skipped=n_skipped, bootstrap_over=args.bootstrap_over)
    out["allocation"] = allocation_table(out, boot, fam, args)
    problems = identification_problems(out, fam["L"], f"{args.ci * 100:g}% interval")
    out.update(identified=not problems, not_identified="; ".join(problems) or None)
    out["bootstrap_samples"] = boot
    out["theta"] = theta
    out["residuals"] = log_l - lse_law(theta, log_x)[0]
    return out


def allocation_table(p, boot, fam, args):
    """The compute-optimal allocation at round budgets (decades over the points' compute and up to
    --extrapolate) in the flops column's units, with bootstrap intervals; a, b, G of the closed form."""
    knots = flops_per_param(fam)
    budgets = decade_budgets(fam["C"].min(), max(fam["C"].max(), args.extrapolate or 0), thirds=False)
    alloc, _, _ = allocation(p, budgets)
    boot_closed = [allocation(b, budgets)[0] for b in boot]
    alloc["ci"] = {k: interval([b[k] for b in boot_closed], args.ci) for k in ("a", "b", "G")}
    n_opt, d_opt = optimal_allocation(p, budgets, knots)
    boot_opt = [optimal_allocation(b, budgets, knots) for b in boot]
    ratio = np.exp(knots[1])
    alloc["flops_per_param"] = {"N": np.exp(knots[0]).tolist(), "ratio": ratio.tolist()}
    alloc["budgets"] = []
    for i, c in enumerate(budgets):
        row = {"C": c, "N_opt": n_opt[i], "D_opt": d_opt[i], "tokens_per_param": d_opt[i] / n_opt[i],
               "extrapolated": bool(c > fam["C"].max() * 1.0001 or c < fam["C"].min() / 1.0001)}
        row["ci"] = {"N_opt": interval([b[0][i] for b in boot_opt], args.ci),
                     "D_opt": interval([b[1][i] for b in boot_opt], args.ci),
                     "tokens_per_param": interval([b[1][i] / b[0][i] for b in boot_opt], args.ci)}
        alloc["budgets"].append(row)
    return alloc


# ----------------------------------------------------------------------------- frontier law

def pareto_frontier(C, L, rtol=1e-9):
    """Indices of the lower envelope: points that no point with lower or equal compute beats on loss.
    Computes within rtol of each other count as equal (C = 6ND of an isoFLOP design differs in the last
    bits between widths; without this the frontier would depend on rounding): of those, the lowest loss."""
    order = np.argsort(C, kind="stable")
    keep, best, i = [], math.inf, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and C[order[j + 1]] <= C[order[i]] * (1 + rtol):
            j += 1
        group = order[i:j + 1]
        k = group[np.argmin(L[group])]
        if L[k] < best:
            keep.append(k)
            best = L[k]
        i = j + 1
    return np.array(keep, int)


def frontier_params(theta, e_fixed):
    if e_fixed is None:
        return {"E": math.exp(theta[1]), "a": math.exp(theta[0]), "b": theta[2]}
    return {"E": math.exp(e_fixed), "a": math.exp(theta[0]), "b": theta[1]}


def frontier_starts(log_c, L, e_fixed):
    """Starts for E + a C^-b: a few exponents and irreducible losses, log a placed through the data."""
    starts = []
    e_values = [e_fixed] if e_fixed is not None else [math.log(f * L.min()) for f in (1e-3, 0.5, 0.8, 0.95)]
    for b, e in itertools.product((0.02, 0.05, 0.1, 0.2, 0.5, 1.0), e_values):
        log_a = float(np.median(np.log(np.maximum(L - math.exp(e), 1e-12 * L)) + b * log_c))
        starts.append(np.array([log_a, b] if e_fixed is not None else [log_a, e, b]))
    return starts


def frontier_of(name, fam, args):
    """The frontier points' indices and the fixed log E (or None), checked to be fittable."""
    idx = pareto_frontier(fam["C"], fam["L"])
    L = fam["L"][idx]
    e_fixed = None
    if args.irreducible is not None:
        if args.irreducible >= L.min():
            raise UserError(f"--irreducible {args.irreducible:g} is not below the lowest loss of family "
                            f"'{name}' ({L.min():.4g}); E must be smaller than every loss")
        e_fixed = math.log(args.irreducible)
    need = MIN_POINTS_FRONTIER - (e_fixed is not None)
    if len(idx) < need or np.ptp(L) == 0:
        raise UserError(f"family '{name}': {len(idx)} point(s) on the compute frontier; the law "
                        f"L = E + a C^-b needs at least {need} with different losses")
    return idx, e_fixed


def reselect_frontier(C, L, need):
    """select() for the bootstrap: the Pareto frontier of the resampled points, each kept as often as it
    was drawn (a run drawn twice counts twice); None when it has too few points to fit."""
    def select(idx):
        unique, counts = np.unique(idx, return_counts=True)
        on = pareto_frontier(C[unique], L[unique])
        if len(on) < need or np.ptp(L[unique[on]]) == 0:
            return None
        return np.repeat(unique[on], counts[on])
    return select


def one_size_warning(fam, idx):
    """A frontier whose points all come from runs of one N is an envelope over other choices (learning
    rates, seeds), not over sizes: say so."""
    if "N" not in fam or len(np.unique(fam["N"][idx])) > 1:
        return None
    n = fam["N"][idx][0]
    lrs = np.unique(fam["lr"][(fam["N"] == n) & np.isfinite(fam["lr"])]) if "lr" in fam else []
    if len(lrs) > 1:
        return (f"frontier over learning rates of one size (N = {n:.4g}, {len(lrs)} learning rates), not a "
                f"scaling frontier: its law and CEG(C) say nothing about larger models")
    return f"frontier of one size (N = {n:.4g}), not a scaling frontier: add runs at other widths"


def fit_frontier(name, fam, args, rng):
    """The frontier law on a family's points (the frontier's candidates are chosen here when fam has point
    kinds), bootstrapped with the frontier re-selected in each resample."""
    if "kind" in fam:
        fam = subset(fam, frontier_mask(fam, args))
    idx, e_fixed = frontier_of(name, fam, args)
    C, L = fam["C"][idx], fam["L"][idx]
    log_x, log_l = np.log(C)[None, :], np.log(L)
    theta, loss = best_of_starts(frontier_starts(log_x[0], L, e_fixed), log_x, log_l, e_fixed)
    need = MIN_POINTS_FRONTIER - (e_fixed is not None)
    samples, n_skipped = bootstrap(theta, np.log(fam["C"])[None, :], np.log(fam["L"]), bootstrap_units(fam, args),
                                   args.bootstrap, rng, e_fixed, label=f"frontier '{name}'",
                                   select=reselect_frontier(fam["C"], fam["L"], need))
    out = frontier_params(theta, e_fixed)
    out["warnings"] = degenerate_warnings(out, ("b",), L if e_fixed is None else None)
    one_size = one_size_warning(fam, idx)
    if one_size:
        out["warnings"].insert(0, one_size)
    out["one_size"] = one_size is not None
    boot = [frontier_params(s, e_fixed) for s in samples]
    out["ci"] = {k: interval([b[k] for b in boot], args.ci) for k in ("E", "a", "b")}
    lo, hi = out["ci"]["b"]
    if len(boot) >= 2 and not (lo > 0 and hi / lo <= MAX_SPAN_EXPONENT):
        out["warnings"].append(f"the {args.ci * 100:g}% interval of b, [{lo:.3g}, {hi:.3g}], spans more than a "
                               f"factor {MAX_SPAN_EXPONENT:g}: the frontier law is poorly determined (CEG(C)'s "
                               f"interval carries it)")
    out.update(E_fixed=e_fixed is not None, huber_loss=loss, n_points=len(idx),
               C_range=[float(C.min()), float(C.max())], points=[[float(c), float(l)] for c, l in zip(C, L)],
               n_bootstrap=len(samples), bootstrap_skipped=n_skipped, bootstrap_over=args.bootstrap_over)
    if "kind" in fam:
        kinds = fam["kind"][idx]
        out["point_kinds"] = {k: int((kinds == k).sum()) for k in KINDS}
    out["samples"] = boot
    out["bootstrap_samples"] = boot
    out["residuals"] = log_l - lse_law(theta, log_x, e_fixed)[0]
    return out


def frontier_loss(law, C):
    return law["E"] + law["a"] * np.asarray(C, float) ** (-law["b"])


def compute_to_reach(law, loss):
    """C at which the frontier law reaches loss; inf where loss <= E (unreachable)."""
    gap = np.asarray(loss, float) - law["E"]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > 0, (law["a"] / np.where(gap > 0, gap, 1.0)) ** (1 / law["b"]), math.inf)


# ----------------------------------------------------------------------------- compute-equivalent gain

def decade_budgets(lo, hi, thirds=True):
    """Round budgets (1e k, and 3e k when thirds) from the first at or above lo to the last at or below
    hi; if none lie inside, the two decades around the range."""
    out = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in ((1, 3) if thirds else (1,)):
            c = m * 10.0 ** k
            if lo / 1.0001 <= c <= hi * 1.0001:
                out.append(c)
    return out or [10.0 ** math.floor(math.log10(lo)), 10.0 ** math.ceil(math.log10(hi))]


def ceg(law_a, law_b, C):
    """CEG(C) = C_B(L_A(C)) / C: how many times C family B needs to reach the loss A reaches with C
    ('A over B': > 1 means A is better)."""
    return compute_to_reach(law_b, frontier_loss(law_a, C)) / np.asarray(C, float)


def measured_mask(fa, fb, C):
    """Where a CEG value is interpolation: C inside A's frontier data and C_B(L_A(C)) inside B's."""
    C = np.asarray(C, float)
    c_b = compute_to_reach(fb, frontier_loss(fa, C))
    (lo_a, hi_a), (lo_b, hi_b) = fa["C_range"], fb["C_range"]
    return (C >= lo_a / 1.0001) & (C <= hi_a * 1.0001) & (c_b >= lo_b / 1.0001) & (c_b <= hi_b * 1.0001)


def convention(name_a, name_b):
    return (f"'{name_a}' over '{name_b}': '{name_b}' needs CEG times the compute of '{name_a}' to reach the same "
            f"loss; > 1 means '{name_a}' is better (needs less compute)")


def compare(fits, name_a, name_b, args):
    for name in (name_a, name_b):
        if name not in fits:
            raise UserError(f"--compare: no family '{name}'; families: {', '.join(sorted(fits))}")
    fa, fb = fits[name_a]["frontier"], fits[name_b]["frontier"]
    lo, hi = fa["C_range"]
    top = max(hi, args.extrapolate or 0)
    budgets = np.array(decade_budgets(lo, top))
    if len(budgets) > 14:
        budgets = np.array(decade_budgets(lo, top, thirds=False))
    values = ceg(fa, fb, budgets)
    n = min(len(fa["samples"]), len(fb["samples"]))  # independent resamples of A and B, paired by index
    boot = np.array([ceg(fa["samples"][i], fb["samples"][i], budgets) for i in range(n)]).reshape(n, len(budgets))
    measured = measured_mask(fa, fb, budgets)
    rows = []
    for i, c in enumerate(budgets):
        loss_a = float(frontier_loss(fa, c))
        c_b = float(compute_to_reach(fb, loss_a))
        rows.append({"C": float(c), "L_A": loss_a, "C_B": c_b, "ceg": float(values[i]),
                     "ci": interval(boot[:, i], args.ci) if n else [math.nan, math.nan],
                     "unreachable_in_bootstrap": float(np.isinf(boot[:, i]).mean()) if n else math.nan,
                     "reachable": bool(math.isfinite(c_b)), "extrapolated": not bool(measured[i])})
    definition = (f"CEG(C) = C_B(L_A(C)) / C with A = '{name_a}', B = '{name_b}': the compute '{name_b}' "
                  f"needs to reach the loss '{name_a}' reaches with compute C, divided by C")
    one_size = [name for name in (name_a, name_b) if fits[name]["frontier"]["one_size"]]
    warnings = [f"'{name}': {fits[name]['frontier']['warnings'][0]}" for name in one_size]
    return {"A": name_a, "B": name_b, "definition": definition, "convention": convention(name_a, name_b),
            "inverted": bool(args.invert), "warnings": warnings, "one_size": one_size, "rows": rows,
            "budgets": budgets, "boot": boot}


# ----------------------------------------------------------------------------- isoFLOP view (approach 2)

def isoflop_profiles(fam):
    """Per compute budget with 3+ widths: (C, logN, L) points and the parabola L = p0 + p1 x + p2 x^2
    in x = log N. Runs with several points are interpolated (in log C) at quarter-decade budgets; runs
    with one point (CSV rows, --final_only) are grouped by compute in windows 0.08 decade (20%) wide."""
    budget_points = {}  # budget -> list of (logN, L)
    single = []
    for run in np.unique(fam["run"]):
        in_run = fam["run"] == run
        C, L, N = fam["C"][in_run], fam["L"][in_run], fam["N"][in_run][0]
        if len(C) == 1:
            single.append((math.log10(C[0]), math.log(N), L[0]))
            continue
        order = np.argsort(C)
        lc, L = np.log10(C[order]), L[order]
        for k in np.arange(math.ceil(lc[0] * 4), math.floor(lc[-1] * 4) + 1) / 4:
            budget_points.setdefault(10.0 ** k, []).append((math.log(N), float(np.interp(k, lc, L))))
    single.sort()
    while single:
        group = [p for p in single if p[0] <= single[0][0] + 0.08]
        single = single[len(group):]
        c = 10.0 ** float(np.mean([g[0] for g in group]))
        budget_points.setdefault(c, []).extend((g[1], g[2]) for g in group)
    profiles = []
    for c in sorted(budget_points):
        pts = np.array(budget_points[c])
        if len(np.unique(pts[:, 0])) < 3:
            continue
        p2, p1, p0 = np.polyfit(pts[:, 0], pts[:, 1], 2)
        x_opt = -p1 / (2 * p2) if p2 > 0 else math.nan
        inside = bool(p2 > 0 and pts[:, 0].min() <= x_opt <= pts[:, 0].max())
        profiles.append({"C": c, "logN": pts[:, 0], "L": pts[:, 1], "coef": (p2, p1, p0),
                         "N_opt": math.exp(x_opt) if inside else math.nan, "interior": inside})
    return profiles


def isoflop_exponent(profiles):
    """a in N_opt = k C^a, least squares in log-log over the budgets with an interior minimum."""
    inside = [p for p in profiles if p["interior"]]
    if len(inside) < 2:
        return None
    slope, _ = np.polyfit(np.log([p["C"] for p in inside]), np.log([p["N_opt"] for p in inside]), 1)
    return float(slope)


# ----------------------------------------------------------------------------- printing

def fmt(x, digits=4):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    return f"{x:.{digits}g}"


def fmt_ci(ci, inf="inf"):
    return f"[{fmt(ci[0]).replace('inf', inf)}, {fmt(ci[1]).replace('inf', inf)}]"


def compute_note(families, args):
    """What C is, said on every table that uses it: one definition for the frontier, CEG(C), the
    allocation and --extrapolate."""
    if args.flops == "6nd":
        return "C = 6ND FLOPs (--flops 6nd)"
    six = all(np.allclose(f["C"], 6 * f["N"] * f["D"], rtol=1e-9) for f in families.values())
    if six:
        return "C = 6ND FLOPs (the input gives tokens, not FLOPs)"
    if args.input_kind == "csv":
        return "C in FLOPs: the CSV's flops column"
    return "C in FLOPs: the flops column (tokens x derived.flops_per_token, attention and head included)"


def bootstrap_note(args):
    if args.bootstrap_over == "runs":
        return (f"{args.bootstrap} bootstrap resamples over runs (all points of a run together; the frontier "
                f"re-selected in each)")
    return (f"{args.bootstrap} bootstrap resamples over points (--bootstrap_over points: too narrow when a run's "
            f"points share its noise)")


def print_family(name, fam, fit, args):
    widths = np.unique(fam["N"])
    kinds = ", ".join(f"{int((fam['kind'] == k).sum())} {k}" for k in KINDS if (fam["kind"] == k).any())
    print(f"\n== family '{name}': {len(fam['L'])} points ({kinds}) from {len(np.unique(fam['run']))} run(s), "
          f"{len(widths)} width(s) N = {fmt(widths.min())} .. {fmt(widths.max())}, "
          f"C = {fmt(fam['C'].min())} .. {fmt(fam['C'].max())}")
    level = f"{args.ci * 100:g}% CI"
    p = fit.get("approach3")
    if p is not None:
        print(f"Approach 3: L(N, D) = E + A/N^alpha + B/D^beta; {params_note(args)}, D = tokens")
        print(f"  {fit['approach3_points']}")
        if p.get("refused"):
            print(f"  refused: {p['refused']}")
        elif not p["identified"]:
            print(f"  not identified: {p['not_identified']} (estimates and intervals only in --json)")
        else:
            print_approach3(p, args, level, compute_note({name: fam}, args))
    f = fit["frontier"]
    e_note = " (E fixed by --irreducible)" if f["E_fixed"] else ""
    print(f"Frontier law: L(C) - E = a C^-b on the {f['n_points']} Pareto-frontier points, "
          f"C = {fmt(f['C_range'][0])} .. {fmt(f['C_range'][1])}{e_note}; {compute_note({name: fam}, args)}")
    print(f"  {fit['frontier_points']}")
    for k in ("E", "a", "b"):
        ci = "(fixed)" if k == "E" and f["E_fixed"] else fmt_ci(f["ci"][k])
        print(f"  {k:<6} {fmt(f[k]):>10}  {ci}")
    if f["bootstrap_skipped"]:
        print(f"  {f['bootstrap_skipped']} of {args.bootstrap} resamples had too few frontier points to fit "
              f"and were left out")
    for w in f["warnings"]:
        print(f"  warning: {w}")
    iso = fit.get("isoflop") or []
    if iso:
        print(f"isoFLOP view (approach 2): loss vs log N parabola per budget; {params_note(args)}; "
              f"{compute_note({name: fam}, args)}; {fit['approach3_points']}")
        print(f"  {'C':>8} {'widths':>6} {'N_opt':>10}")
        for prof in iso:
            n_opt = fmt(prof["N_opt"], 3) if prof["interior"] else "no minimum inside the widths"
            print(f"  {fmt(prof['C'], 2):>8} {len(np.unique(prof['logN'])):>6} {n_opt:>10}")
        slope = isoflop_exponent(iso)
        if slope is not None:
            print(f"  N_opt ~ C^{slope:.3f} over {sum(p['interior'] for p in iso)} budgets with a minimum "
                  f"inside the widths")


def print_approach3(p, args, level, units):
    print(f"  Huber {HUBER_DELTA:g} on log L, L-BFGS from {p['n_starts']} starts: {p['fit_seconds']:.1f}s; "
          f"{p['n_bootstrap']} bootstrap resamples over {p['bootstrap_over']}"
          + (f" ({p['bootstrap_skipped']} left out: below the rule)" if p["bootstrap_skipped"] else ""))
    print(f"  {'param':<6} {'estimate':>10}  {level}")
    for k in ("E", "A", "B", "alpha", "beta"):
        print(f"  {k:<6} {fmt(p[k]):>10}  {fmt_ci(p['ci'][k])}")
    for w in p["warnings"]:
        print(f"  warning: {w}")
    al = p["allocation"]
    fpp = al["flops_per_param"]
    ratio = fmt(fpp["ratio"][0], 3)
    if np.ptp(fpp["ratio"]) > 1e-9 * fpp["ratio"][0]:
        ratio += f" at N = {fmt(fpp['N'][0], 3)} .. {fmt(fpp['ratio'][-1], 3)} at N = {fmt(fpp['N'][-1], 3)}"
    print(f"Compute-optimal allocation: N_opt, D_opt minimise L(N, D) at C = r(N) N D, r = FLOPs per token per "
          f"parameter {ratio} (interpolated in log N, held beyond); {params_note(args)}; {units}")
    print(f"  law's exponents (N_opt ~ C^a where r is constant): a = {fmt(al['a'], 3)} {fmt_ci(al['ci']['a'])}, "
          f"b = {fmt(al['b'], 3)} {fmt_ci(al['ci']['b'])}")
    print(f"  {'C':>8} {'N_opt':>10} {'D_opt':>10} {'D/N':>8}  {'D/N ' + level:<22}")
    for row in al["budgets"]:
        note = "  (extrapolated)" if row["extrapolated"] else ""
        print(f"  {fmt(row['C'], 2):>8} {fmt(row['N_opt'], 3):>10} {fmt(row['D_opt'], 3):>10} "
              f"{fmt(row['tokens_per_param'], 3):>8}  {fmt_ci(row['ci']['tokens_per_param']):<22}{note}")


def print_compare(cmp, args, units):
    a, b = cmp["A"], cmp["B"]
    print(f"\n== compute-equivalent gain, {cmp['convention']}"
          + (" (--invert: the pair given to --compare, read from its second family's side)" if cmp["inverted"]
             else "; --invert prints the inverse"))
    print(cmp["definition"])
    print(f"  {units}")
    for w in cmp["warnings"]:
        print(f"  warning: {w}")
    level = f"{args.ci * 100:g}% CI"
    print(f"  {'C':>8} {'L_A(C)':>8} {'C_B':>10} {'CEG':>8}  {level:<22} note")
    for r in cmp["rows"]:
        if not r["reachable"]:
            ceg_text, cb, ci = "unreachable", "inf", ""
            note = f"L_A(C) <= E of '{b}'"
        else:
            ceg_text, cb, ci = fmt(r["ceg"], 3), fmt(r["C_B"], 3), fmt_ci(r["ci"], inf="unreachable")
            note = ""
        note = ("extrapolated" + (", " if note else "") + note) if r["extrapolated"] else (note or "measured")
        print(f"  {fmt(r['C'], 2):>8} {fmt(r['L_A'], 4):>8} {cb:>10} {ceg_text:>8}  {ci:<22} {note}")
    measured = [r for r in cmp["rows"] if not r["extrapolated"]]
    beyond = measured[-1]["C"] if measured else -math.inf
    extrapolated = [r for r in cmp["rows"] if r["extrapolated"] and r["reachable"] and r["C"] > beyond]
    for r, when in ((measured[-1] if measured else None, "measured"),
                    (extrapolated[-1] if extrapolated else None, "extrapolated")):
        if r:
            print(f"'{a}' over '{b}' ({when}): to reach the loss '{a}' reaches with C = {fmt(r['C'], 2)}, "
                  f"'{b}' needs {fmt(r['ceg'], 3)} times the compute {fmt_ci(r['ci'], inf='unreachable')} "
                  f"(> 1: '{a}' is better)")
    if not measured:
        print(f"no budget is measured for both families: '{b}' never reached the losses '{a}' reaches in its "
              f"runs, so every CEG value above is an extrapolation")


# ----------------------------------------------------------------------------- JSON

def to_json(value):
    """Plain JSON: numpy to Python, non-finite numbers to null; internal arrays dropped."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items() if k not in ("theta", "residuals", "samples", "boot")}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def json_report(source, families, fits, skipped, comparison, args):
    out = {"input": source, "settings": {k: v for k, v in vars(args).items() if k not in ("input", "json")},
           "huber_delta": HUBER_DELTA, "skipped": skipped, "params": params_note(args),
           "compute": compute_note(families, args), "families": {}}
    for name, fam in families.items():
        iso = fits[name].get("isoflop") or []
        out["families"][name] = {"n_points": len(fam["L"]), "n_runs": len(np.unique(fam["run"])),
                                 "point_kinds": {k: int((fam["kind"] == k).sum()) for k in KINDS},
                                 "widths": sorted(float(n) for n in np.unique(fam["N"])),
                                 "C_range": [float(fam["C"].min()), float(fam["C"].max())], **fits[name],
                                 "isoflop": {"N_opt_exponent": isoflop_exponent(iso),
                                             "budgets": [{k: p[k] for k in ("C", "N_opt", "interior")}
                                                         for p in iso]}}
    identified = [name for name in fits if (fits[name].get("approach3") or {}).get("identified")]
    if len(fits) == 1 and identified:  # one family: its approach-3 constants at the top level too
        p = fits[identified[0]]["approach3"]
        out.update({k: p[k] for k in ("E", "A", "B", "alpha", "beta")}, ci=p["ci"], family=identified[0])
    if comparison:
        out["compare"] = comparison
    return to_json(out)


# ----------------------------------------------------------------------------- plots

def colorbar(fig, mappable, ax, label):
    """A colorbar beside ax, with legible log ticks."""
    legible(fig.colorbar(mappable, ax=ax, label=label).ax)


def save(fig, plot_dir, name):
    """fit_scaling's and progress.py's figures (colorbars, several panels) are laid out tight before saving."""
    fig.tight_layout()
    return save_figure(fig, os.path.join(plot_dir, name))


def make_plots(families, used, fits, comparison, plot_dir, args):
    """The PNGs in plot_dir: frontier, approach3 (of identified families), residuals, ceg (with --compare) and
    isoflop (when some budget has 3+ widths). Returns their paths."""
    units = "FLOPs, 6ND" if args.flops == "6nd" else "FLOPs"
    which = "every evaluation" if args.all_points else "the CSV's" if args.input_kind == "csv" else \
        "annealed and final"
    a3 = [name for name in families if (fits[name].get("approach3") or {}).get("identified")]
    iso = [(name, fits[name]["isoflop"]) for name in families if fits[name].get("isoflop")]
    written = [plot_frontier(families, fits, plot_dir, args, units)]
    if a3:
        written.append(plot_approach3(a3, used, fits, plot_dir, args, which))
    written.append(plot_residuals(families, used, fits, a3, plot_dir, units))
    if comparison:
        written.append(plot_ceg(comparison, fits, plot_dir, args, units))
    if iso:
        written.append(plot_isoflop(iso, plot_dir, args, units, which))
    return written


def plot_frontier(families, fits, plot_dir, args, units):
    """Loss vs compute per family: mid-schedule points faint, annealed and final points hollow, the frontier
    filled, the fitted frontier law (dashed beyond the data)."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (name, fam), col in zip(families.items(), colors(len(families))):
        f = fits[name]["frontier"]
        mid = fam["kind"] == "eval"
        ax.scatter(fam["C"][mid], fam["L"][mid], s=5, color=col, alpha=0.2, lw=0)
        ax.scatter(fam["C"][~mid], fam["L"][~mid], s=16, facecolor="none", edgecolor=col, lw=0.8)
        pts = np.array(f["points"])
        ax.scatter(pts[:, 0], pts[:, 1], s=18, color=col, edgecolor="k", lw=0.4, zorder=3)
        lo, hi = f["C_range"]
        grid = np.logspace(math.log10(lo), math.log10(hi), 200)
        label = f"{name}: L = {fmt(f['E'], 3)} + {fmt(f['a'], 3)} C^-{fmt(f['b'], 3)}"
        ax.plot(grid, frontier_loss(f, grid), color=col, lw=2, label=label)
        if args.extrapolate and args.extrapolate > hi:
            ext = np.logspace(math.log10(hi), math.log10(args.extrapolate), 100)
            ax.plot(ext, frontier_loss(f, ext), color=col, lw=1.5, ls="--")
        ax.axhline(f["E"], color=col, lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", xlabel=f"training compute C ({units})", ylabel="loss",
           title="Loss vs compute: mid-schedule evaluations (faint), annealed and final points (hollow),\n"
                 "Pareto frontier (filled), frontier law (dashed: extrapolated, dotted: E)")
    style(ax, title_size=9)
    legible(ax)
    return save(fig, plot_dir, "frontier.png")


def plot_approach3(names, used, fits, plot_dir, args, which):
    """Loss vs tokens per identified family, coloured by N, with the law's curve at up to 8 of its widths."""
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names):
        fam, p = used[name]["approach3"], fits[name]["approach3"]
        lognorm = matplotlib.colors.LogNorm(fam["N"].min(), fam["N"].max())
        sc = ax.scatter(fam["D"], fam["L"], c=fam["N"], norm=lognorm, cmap="viridis", s=10)
        widths = np.unique(fam["N"])
        show = widths if len(widths) <= 8 else widths[np.linspace(0, len(widths) - 1, 8).astype(int)]
        grid = np.logspace(math.log10(fam["D"].min()), math.log10(fam["D"].max()), 60)
        for n in show:  # the law at this width over the family's whole token range
            model = np.exp(lse_law(p["theta"], np.log(np.vstack([np.full_like(grid, n), grid])))[0])
            ax.plot(grid, model, color=plt.cm.viridis(lognorm(n)), lw=1.2)
        colorbar(fig, sc, ax, f"N ({args.params} parameters)")
        ax.set(xscale="log", yscale="log", xlabel="tokens D",
               ylabel=f"loss (lines: the law at {len(show)} of the {len(widths)} widths)",
               title=f"{name}: approach 3 on {which} points\nE={fmt(p['E'], 3)} A={fmt(p['A'], 3)} "
                     f"B={fmt(p['B'], 3)} alpha={fmt(p['alpha'], 3)} beta={fmt(p['beta'], 3)}")
        style(ax, legend=None, title_size=9)
        legible(ax)
    return save(fig, plot_dir, "approach3.png")


def plot_residuals(families, used, fits, a3, plot_dir, units):
    """Observed - fitted log loss against compute, per family: approach 3 (coloured by N) and the frontier law."""
    fig, axes = plt.subplots(len(families), 2, figsize=(12, 3.6 * len(families)), squeeze=False)
    for row, name, col in zip(axes, families, colors(len(families))):
        fit = fits[name]
        if name in a3:
            fam = used[name]["approach3"]
            sc = row[0].scatter(fam["C"], fit["approach3"]["residuals"], c=fam["N"], cmap="viridis", s=8,
                                norm=matplotlib.colors.LogNorm(fam["N"].min(), fam["N"].max()))
            colorbar(fig, sc, row[0], "N")
        else:
            row[0].text(0.5, 0.5, "approach 3 not fitted or not identified", ha="center",
                        transform=row[0].transAxes)
        pts = np.array(fit["frontier"]["points"])
        row[1].scatter(pts[:, 0], fit["frontier"]["residuals"], color=col, s=14)
        for ax, what in zip(row, ("approach 3", "frontier law")):
            ax.axhline(0, color="k", lw=0.8)
            ax.set(xscale="log", xlabel=f"compute C ({units})", ylabel="log L observed - fitted",
                   title=f"{name}: {what} residuals")
            style(ax, legend=None, grid="major")
            legible(ax)
    return save(fig, plot_dir, "residuals.png")


def plot_ceg(cmp, fits, plot_dir, args, units):
    """CEG(C) of --compare A B from the two frontier laws, measured (solid) and extrapolated (dashed), with the
    bootstrap band."""
    fa, fb = fits[cmp["A"]]["frontier"], fits[cmp["B"]]["frontier"]
    lo, hi = fa["C_range"]
    top = max(hi, args.extrapolate or 0)
    grid = np.logspace(math.log10(lo), math.log10(top), 200)
    n = min(len(fa["samples"]), len(fb["samples"]))
    boot = np.array([ceg(fa["samples"][i], fb["samples"][i], grid) for i in range(n)]).reshape(n, len(grid))
    band = np.array([interval(boot[:, j], args.ci) for j in range(len(grid))]) if n else None
    central = ceg(fa, fb, grid)
    measured = measured_mask(fa, fb, grid)
    # y range: what the measured part needs, with room for extrapolation; beyond it, curves leave the axes
    finite = central[np.isfinite(central)]
    shown = central[measured] if measured.any() else finite[:1]
    top = min(finite.max() * 2, max(shown.max(), 1) * 1e3) if len(finite) else 10
    bottom = min(1, finite.min() if len(finite) else 1) / 2
    fig, ax = plt.subplots(figsize=(8, 5))
    if band is not None:  # an infinite upper bound (unreachable in some resamples) fills to the top
        ax.fill_between(grid, band[:, 0], np.where(np.isfinite(band[:, 1]), band[:, 1], top * 10),
                        color="C0", alpha=0.25, lw=0, label=f"{args.ci * 100:g}% bootstrap band (over "
                                                             f"{args.bootstrap_over})")
    ax.plot(np.where(measured, grid, np.nan), central, color="C0", lw=2,
            label="CEG(C), measured (both families' data)")
    if (~measured).any():
        ax.plot(np.where(~measured, grid, np.nan), central, color="C0", lw=2, ls="--", label="extrapolated")
    if not np.all(np.isfinite(central)):
        ax.axvspan(grid[~np.isfinite(central)].min(), grid.max(), color="0.85", zorder=0,
                   label=f"unreachable for '{cmp['B']}' (L_A < E_B)")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_ylim(bottom, top)
    ax.set(xscale="log", yscale="log", xlabel=f"compute C of '{cmp['A']}' ({units})",
           ylabel=f"CEG = C_{cmp['B']}(L_{cmp['A']}(C)) / C",
           title="\n".join(textwrap.wrap(cmp["convention"], 100) + (
               [f"warning: the frontier of {' and '.join(repr(n) for n in cmp['one_size'])} spans one size, "
                f"not a scaling frontier"] if cmp["one_size"] else [])))
    style(ax, title_size=8)
    legible(ax)
    return save(fig, plot_dir, "ceg.png")


def plot_isoflop(iso, plot_dir, args, units, which):
    """Loss vs N at each budget with its parabola and minimum (approach 2), per family with such budgets."""
    fig, axes = plt.subplots(1, len(iso), figsize=(6.5 * len(iso), 5), squeeze=False)
    cmap = matplotlib.colors.ListedColormap(plt.cm.plasma(np.linspace(0, 0.85, 256)))  # no pale yellow
    for ax, (name, profiles) in zip(axes[0], iso):
        budgets = [prof["C"] for prof in profiles]
        spread = 1.0001 if len(budgets) > 1 else 2.0  # one budget: a colour scale around it
        norm = matplotlib.colors.LogNorm(min(budgets) / spread, max(budgets) * spread)
        for prof in profiles:
            col = cmap(norm(prof["C"]))
            ax.scatter(np.exp(prof["logN"]), prof["L"], color=col, s=10)
            x = np.linspace(prof["logN"].min(), prof["logN"].max(), 50)
            if prof["interior"]:
                ax.plot(np.exp(x), np.polyval(prof["coef"], x), color=col, lw=1)
                ax.plot(prof["N_opt"], np.polyval(prof["coef"], math.log(prof["N_opt"])), "k*", ms=8)
            else:  # no minimum inside the widths: the parabola says little
                ax.plot(np.exp(x), np.polyval(prof["coef"], x), color=col, lw=0.6, ls="--", alpha=0.5)
        colorbar(fig, plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax, f"budget C ({units})")
        ax.set(xscale="log", xlabel=f"N ({args.params} parameters)", ylabel="loss",
               title=f"{name}: isoFLOP profiles of {which} points\n(star: parabola minimum; dashed: none "
                     f"inside the widths)")
        style(ax, legend=None, title_size=9)
        legible(ax)
    return save(fig, plot_dir, "isoflop.png")


# ----------------------------------------------------------------------------- main

def check_level(ci):
    """--ci, here and in progress.py: a confidence level."""
    if not 0 < ci < 1:
        raise UserError(f"--ci {ci:g}: give a level between 0 and 1, e.g. 0.95")


def parse_args(argv):
    p = ArgumentParser(prog="fit_scaling.py", description=__doc__.split("\n\n")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a results folder (run folders under it) or a CSV file")
    p.add_argument("--params", choices=["total", "non_embedding"], default="total",
                   help="N: derived.n_params (default: Chinchilla's count) or derived.n_params_non_embedding "
                        "(Kaplan's)")
    p.add_argument("--flops", choices=["column", "6nd"], default="column",
                   help="C: the flops column / CSV column (default) or 6*N*D, for every fit and table")
    p.add_argument("--group", choices=["label", "arch"], default="label", help="config key naming a family")
    p.add_argument("--only", nargs="+", metavar="FAMILY", help="fit only these families")
    p.add_argument("--all_points", action="store_true", help="fit every evaluation (mid-schedule losses "
                   "included), not only annealed and final points")
    p.add_argument("--min_tokens", type=float, default=0, help="drop points with fewer tokens")
    p.add_argument("--min_frac", type=float, default=0, help="drop each run's points before this fraction "
                   "of its final tokens (warmup transients)")
    p.add_argument("--final_only", action="store_true", help="only the final point of each run")
    p.add_argument("--drop_highest", type=int, default=0, metavar="K", help="drop the K highest losses of "
                   "each family (Besiroglu et al. drop 5 outliers from the extracted Chinchilla data)")
    p.add_argument("--grid", choices=["fast", "epoch"], default="fast", help="approach-3 starting grid: a "
                   "108-start subset (default) or Besiroglu et al.'s full 4500 starts (25x slower)")
    p.add_argument("--no_approach3", action="store_true", help="fit only the frontier laws")
    p.add_argument("--irreducible", type=float, help="fix E of every frontier law to this loss")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for CIs (default 200)")
    p.add_argument("--bootstrap_over", choices=["runs", "points"], default="runs",
                   help="resample runs (default: a run's points share its noise) or points")
    p.add_argument("--ci", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="CEG(C) = C_B(L_A(C)) / C, 'A over B' "
                   "(> 1: A is better)")
    p.add_argument("--invert", action="store_true", help="with --compare A B: print 'B over A'")
    p.add_argument("--extrapolate", type=float, help="extend the CEG and allocation tables to this compute "
                   "(in the units of C)")
    p.add_argument("--json", metavar="FILE", help="write the fits as JSON")
    p.add_argument("--plots", metavar="DIR", help="where PNGs go (default <input>/plots)")
    p.add_argument("--no_plots", action="store_true")
    args = p.parse_args(argv)
    args.input_kind = "runs" if os.path.isdir(args.input) else "csv"  # the tables say which
    check_level(args.ci)
    if args.bootstrap < 0 or args.drop_highest < 0:
        raise UserError("--bootstrap and --drop_highest must be 0 or more")
    if not 0 <= args.min_frac < 1:
        raise UserError(f"--min_frac {args.min_frac:g}: give a fraction in [0, 1)")
    if args.all_points and args.final_only:
        raise UserError("--all_points and --final_only contradict each other; give one")
    for key in ("extrapolate", "irreducible"):
        value = getattr(args, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"--{key} {value:g}: give a positive number")
    if args.compare and args.compare[0] == args.compare[1]:
        raise UserError("--compare needs two different families")
    if args.invert and not args.compare:
        raise UserError("--invert flips --compare A B; give --compare too")
    return args


def run(argv):
    args = parse_args(argv)
    skipped = {}
    if os.path.isdir(args.input):
        points = read_run_points(args.input, args, skipped)
        default_plots = os.path.join(args.input, "plots")
    elif os.path.isfile(args.input):
        points = read_csv_points(args.input, args, skipped)
        default_plots = os.path.join(os.path.dirname(os.path.abspath(args.input)), "plots")
    else:
        raise UserError(f"{args.input}: no such file or folder")
    if not points["L"]:
        raise UserError(f"{args.input}: no usable points ({', '.join(f'{v} {k}' for k, v in skipped.items())})")
    families = select_points(points, args, skipped)
    if args.compare:
        for name in args.compare:
            if name not in families:
                raise UserError(f"--compare: no family '{name}'; families: {', '.join(sorted(families))}")
        families = {name: families[name] for name in families if name in args.compare}

    n_points = sum(len(f["L"]) for f in families.values())
    plural = "family" if len(families) == 1 else "families"
    print(f"fit_scaling: {args.input}: {n_points} points in {len(families)} {plural} ({', '.join(families)})")
    if skipped:
        print("skipped: " + "; ".join(f"{v} {k}" for k, v in skipped.items()))
    print(f"{params_note(args, short=False)}; D = tokens; {compute_note(families, args)}")
    print(f"{args.ci * 100:g}% CIs from {bootstrap_note(args)}, seed {args.seed}")

    used = {name: {"approach3": subset(fam, approach3_mask(fam, args)),
                   "frontier": subset(fam, frontier_mask(fam, args))} for name, fam in families.items()}
    for name in families:  # every frontier fittable before any fitting starts
        frontier_of(name, used[name]["frontier"], args)

    rng = np.random.default_rng(args.seed)
    fits = {}
    for name, fam in families.items():
        fits[name] = {"approach3_points": points_label(used[name]["approach3"], args, "approach3"),
                      "frontier_points": points_label(used[name]["frontier"], args, "frontier")}
        if not args.no_approach3:
            fits[name]["approach3"] = fit_approach3(name, used[name]["approach3"], args, rng)
        fits[name]["frontier"] = fit_frontier(name, used[name]["frontier"], args, rng)
        fits[name]["isoflop"] = isoflop_profiles(used[name]["approach3"])
        print_family(name, fam, fits[name], args)
    comparison = None
    if args.compare:
        name_a, name_b = args.compare[::-1] if args.invert else args.compare
        comparison = compare(fits, name_a, name_b, args)
        print_compare(comparison, args, compute_note(families, args))
    if args.json:
        results.write_json(args.json, json_report(args.input, families, fits, skipped, comparison, args))
        print(f"\nwrote {args.json}")
    if not args.no_plots:
        for path in make_plots(families, used, fits, comparison, args.plots or default_plots, args):
            print(f"wrote {path}")
    return fits


def main(argv=None):
    sys.exit(cli_main(run, argv))


if __name__ == "__main__":
    main()
