"""
Scaling laws from many runs: Chinchilla approach 3, compute frontiers, and the compute-equivalent gain of
one model family over another as a function of compute.

    python fit_scaling.py results/<study>                      # every completed run under the folder
    python fit_scaling.py results/<study> --compare modern lstm --extrapolate 1e22 --json fits.json
    python fit_scaling.py points.csv                           # columns params,tokens,loss or params,flops,loss

Inputs
  A results folder: every evaluation row of every completed run is one (N, D, C, loss) point: N is
  derived.n_params_non_embedding from config.json (--params total: derived.n_params), D the tokens column,
  C the flops column of metrics.csv (--flops 6nd: 6*N*D), loss the val_loss column. Runs are grouped into
  families by their config 'label' (--group arch: by 'arch'); --only picks families. --min_tokens,
  --min_frac (drop the first fraction of each run's tokens: warmup transients) and --final_only (the last
  row of each run) select points.
  A CSV file: columns params and loss, plus tokens or flops (D = C / 6N when only flops is given; C = 6ND
  when only tokens is). Epoch AI's names ("Model Size", "Training Tokens", "Training FLOP", "loss") work,
  and an optional 'label' column splits the rows into families. Each row counts as its own run.

Fits, per family
  Approach 3 (Hoffmann et al. 2022, fitted as in Besiroglu et al. 2024, "Chinchilla Scaling: A
  replication attempt"): L(N, D) = E + A/N^alpha + B/D^beta, fitted in log space as
  LSE(a - alpha log N, b - beta log D, e) with a = log A, b = log B, e = log E, minimising the Huber loss
  (delta 1e-3) of LSE - log L summed over points, with L-BFGS from a grid of starts (--grid epoch: their
  4500 starts; --grid fast, the default: 108 of them, which reached the same optimum on their data and
  on synthetic laws, 25x faster); the best few are polished with tight tolerances. --drop_highest 5
  drops the 5 highest losses first, as they did. Bootstrap over points (or runs) for CIs. From
  it, the compute-optimal allocation under C = 6ND: N_opt = G (C/6)^a, D_opt = (C/6)^b / G with
  a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A / (beta B))^(1/(alpha+beta)).
  Frontier law: the Pareto lower envelope of (C, loss) over all of a family's points (a point is on it
  when no point with lower or equal compute has a lower loss), fitted as L(C) = E + a C^-b the same way
  (E free, or fixed for every family with --irreducible), bootstrapped over frontier points (or runs).
  isoFLOP view (approach 2), when some budget has 3+ widths: loss vs log N parabola per budget.

Compute-equivalent gain, --compare A B
  CEG(C) = C_B(L_A(C)) / C: family B needs CEG(C) times the compute C that family A spends to reach the
  loss L_A(C) that A reaches with C (> 1: A is the more compute-efficient). From the two frontier laws,
  C_B(L) = (a_B / (L - E_B))^(1/b_B); a loss at or below E_B is unreachable for B. Printed at round
  budgets over A's measured range (and up to --extrapolate), with a bootstrap band; a row is 'measured'
  only when C lies in A's frontier data and C_B in B's, every other row is marked extrapolated.

Output: tables on stdout; --json FILE (per family: approach3 {E, A, B, alpha, beta, ci, allocation},
frontier {E, a, b, ci}; with one family its E, A, B, alpha, beta, ci also at the top level; compare rows);
PNG plots (frontier, approach3, residuals, ceg, isoflop) in <input>/plots, or --plots DIR, or --no_plots.
Bad input exits with status 2 and one line on stderr.
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
import time

import numpy as np
from scipy.optimize import minimize

import results
from configurator import UserError

HUBER_DELTA = 1e-3
# Besiroglu et al.'s grid of initialisations (np.arange, so the upper ends are excluded): 4500 starts.
EPOCH_GRID = dict(alpha=np.arange(0, 2.5, 0.5), beta=np.arange(0, 2.5, 0.5), e=np.arange(-1, 1.5, 0.5),
                  a=np.arange(0, 30, 5), b=np.arange(0, 30, 5))
# A subset of it (108 starts): on Besiroglu et al.'s data (with and without their 5 outliers) and on four
# synthetic sets it reached the same optimum as the full grid (objective equal to 8 digits), 25x faster.
FAST_GRID = dict(alpha=np.array([0.0, 0.5, 1.0]), beta=np.array([0.0, 0.5, 1.0]), e=np.array([-1.0, 0.0, 1.0]),
                 a=np.array([0.0, 20.0]), b=np.array([0.0, 20.0]))
MIN_POINTS_APPROACH3 = 8   # 5 parameters: fewer points than this is not a fit
MIN_POINTS_FRONTIER = 4    # 3 parameters (2 with --irreducible, then 3 points suffice)


# ----------------------------------------------------------------------------- reading points

CSV_ALIASES = {  # normalised header (lower case, spaces and dashes as underscores) -> our name
    "params": "params", "n_params": "params", "parameters": "params", "model_size": "params", "n": "params",
    "tokens": "tokens", "training_tokens": "tokens", "d": "tokens", "n_tokens": "tokens",
    "flops": "flops", "training_flop": "flops", "training_flops": "flops", "compute": "flops", "c": "flops",
    "loss": "loss", "val_loss": "loss", "final_loss": "loss",
    "label": "label", "family": "label", "run": "run", "run_name": "run",
}


def new_points():
    return {"family": [], "run": [], "N": [], "D": [], "C": [], "L": []}


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


def add_point(points, skipped, family, run, n, d, c, loss):
    values = (n, d, c, loss)
    # abs(v) < 2**1024: an integer too large for a float (a garbled config.json) counts as non-finite
    if not all(isinstance(v, (int, float)) and abs(v) < 2 ** 1024 and math.isfinite(v) for v in values):
        skipped["non-finite value(s)"] = skipped.get("non-finite value(s)", 0) + 1
        return
    if min(values) <= 0:
        why = "tokens = 0 (initial evaluation)" if d == 0 and n > 0 else "value <= 0"
        skipped[why] = skipped.get(why, 0) + 1
        return
    for key, v in zip(("family", "run", "N", "D", "C", "L"), (family, run, n, d, c, loss)):
        points[key].append(v)


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
        family = str((run["config"] or {}).get(args.group, "") or "unlabelled")
        by_tokens = {}
        for row in run["metrics"]:  # the final row may repeat the last evaluation: keep one per token count
            by_tokens[row.get("tokens")] = row
        for row in by_tokens.values():
            d, loss = row.get("tokens"), row.get("val_loss")
            c = 6 * n * d if args.flops == "6nd" and isinstance(d, (int, float)) else row.get("flops")
            add_point(points, skipped, family, run["name"], n, d, c, loss)
    if not points["L"]:
        found = ", ".join(f"{k} {s}" for s, k in sorted(statuses.items())) or "none with usable rows"
        raise UserError(f"no completed runs with usable points under {root} ({len(runs)} run folder(s): "
                        f"{found}); wait for the runs to finish or point at another folder")
    for status, count in statuses.items():
        skipped[f"run not completed ({status})"] = count
    return points


def select_points(points, args, skipped):
    """Arrays per family after --only, --min_tokens, --min_frac, --final_only and --drop_highest."""
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
        if args.min_frac > 0 or args.final_only:
            for run in np.unique(fam["run"]):
                in_run = fam["run"] == run
                last = fam["D"][in_run].max()
                if args.min_frac > 0:
                    keep &= ~in_run | (fam["D"] >= args.min_frac * last)
                if args.final_only:
                    keep &= ~in_run | (fam["D"] == last)
        dropped = int((~keep).sum())
        if dropped:
            skipped["dropped by --min_tokens/--min_frac/--final_only"] = \
                skipped.get("dropped by --min_tokens/--min_frac/--final_only", 0) + dropped
        fam = {k: v[keep] for k, v in fam.items()}
        if args.drop_highest > 0 and len(fam["L"]) > args.drop_highest:
            # as Besiroglu et al.: keep losses strictly below the k-th highest (ties with it go too)
            threshold = np.sort(fam["L"])[-args.drop_highest]
            keep = fam["L"] < threshold
            skipped["dropped by --drop_highest"] = skipped.get("dropped by --drop_highest", 0) + int((~keep).sum())
            fam = {k: v[keep] for k, v in fam.items()}
        if len(fam["L"]) == 0:
            raise UserError(f"family '{name}': no points left after the filters; relax --min_tokens, "
                            f"--min_frac or --final_only")
        if np.ptp(fam["L"]) == 0:
            raise UserError(f"family '{name}': all {len(fam['L'])} losses are equal ({fam['L'][0]:g}); "
                            f"nothing to fit")
        families[name] = fam
    return families


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


def bootstrap(theta_hat, log_x, log_l, units, n_boot, rng, e_fixed=None, label=""):
    """Refit on resamples (with replacement) of the units (points or runs), starting from theta_hat."""
    unique_units, inverse = np.unique(units, return_inverse=True)
    members = [np.flatnonzero(inverse == u) for u in range(len(unique_units))]
    samples, started, shown = [], time.time(), time.time()
    for i in range(n_boot):
        picked = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[u] for u in picked])
        theta, _ = minimize_huber(theta_hat, log_x[:, idx], log_l[idx], e_fixed, polish=True)
        if np.all(np.isfinite(theta)):
            samples.append(theta)
        if time.time() - shown > 5:  # progress, when it takes a while
            shown = time.time()
            print(f"  bootstrap {label}: {i + 1}/{n_boot} ({shown - started:.0f}s)", file=sys.stderr)
    return np.array(samples).reshape(-1, len(theta_hat))


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
    """Compute-optimal N and D under C = 6ND for the law p (a dict), at the given budgets."""
    alpha, beta = p["alpha"], p["beta"]
    if not (alpha > 0 and beta > 0):
        nan = np.full(len(budgets), math.nan)
        return {"a": math.nan, "b": math.nan, "G": math.nan}, nan, nan
    G = (alpha * p["A"] / (beta * p["B"])) ** (1 / (alpha + beta))
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    n_opt = G * (np.asarray(budgets) / 6) ** a
    return {"a": a, "b": b, "G": G}, n_opt, np.asarray(budgets) / (6 * n_opt)


def check_approach3(name, fam):
    hint = "; --no_approach3 fits the frontier law only"
    if len(np.unique(fam["N"])) < 2:
        raise UserError(f"family '{name}': every point has the same N ({fam['N'][0]:.4g}): approach 3 needs "
                        f"runs at 2 or more widths{hint}")
    if len(np.unique(fam["D"])) < 2:
        raise UserError(f"family '{name}': every point has the same D: approach 3 needs 2 or more token "
                        f"counts{hint}")
    if len(fam["L"]) < MIN_POINTS_APPROACH3:
        raise UserError(f"family '{name}': {len(fam['L'])} points; approach 3 (5 parameters) needs at least "
                        f"{MIN_POINTS_APPROACH3}{hint}")


def fit_approach3(name, fam, args, rng):
    check_approach3(name, fam)
    n_widths = len(np.unique(fam["N"]))
    log_x, log_l = np.log(np.vstack([fam["N"], fam["D"]])), np.log(fam["L"])
    started = time.time()
    starts = grid_starts(args.grid)
    print(f"approach 3, family '{name}': L-BFGS from {len(starts)} starts on {len(log_l)} points...",
          file=sys.stderr)
    theta, loss = best_of_starts(starts, log_x, log_l)
    fit_seconds = time.time() - started
    started = time.time()
    units = fam["run"] if args.bootstrap_over == "runs" else np.arange(len(log_l))
    samples = bootstrap(theta, log_x, log_l, units, args.bootstrap, rng, label=f"approach 3 '{name}'")
    out = approach3_params(theta)
    out["warnings"] = degenerate_warnings(out, ("alpha", "beta"), fam["L"])
    boot = [approach3_params(s) for s in samples]
    out["ci"] = {k: interval([b[k] for b in boot], args.ci) for k in ("E", "A", "B", "alpha", "beta")}
    out.update(huber_loss=loss, n_points=len(log_l), n_widths=n_widths, n_starts=len(starts),
               fit_seconds=fit_seconds, bootstrap_seconds=time.time() - started, n_bootstrap=len(samples))
    # allocation at round budgets: decades over the data's 6ND range, and up to --extrapolate
    c6 = 6 * fam["N"] * fam["D"]
    budgets = decade_budgets(c6.min(), max(c6.max(), args.extrapolate or 0), thirds=False)
    alloc, n_opt, d_opt = allocation(out, budgets)
    boot_alloc = [allocation(b, budgets) for b in boot]
    alloc["ci"] = {k: interval([b[0][k] for b in boot_alloc], args.ci) for k in ("a", "b", "G")}
    alloc["budgets"] = []
    for i, c in enumerate(budgets):
        row = {"C": c, "N_opt": n_opt[i], "D_opt": d_opt[i], "tokens_per_param": d_opt[i] / n_opt[i],
               "extrapolated": bool(c > c6.max() * 1.0001 or c < c6.min() / 1.0001)}
        row["ci"] = {"N_opt": interval([b[1][i] for b in boot_alloc], args.ci),
                     "D_opt": interval([b[2][i] for b in boot_alloc], args.ci),
                     "tokens_per_param": interval([b[2][i] / b[1][i] for b in boot_alloc], args.ci)}
        alloc["budgets"].append(row)
    out["allocation"] = alloc
    out["theta"] = theta
    out["residuals"] = log_l - lse_law(theta, log_x)[0]
    return out


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


def fit_frontier(name, fam, args, rng):
    idx, e_fixed = frontier_of(name, fam, args)
    C, L = fam["C"][idx], fam["L"][idx]
    log_x, log_l = np.log(C)[None, :], np.log(L)
    theta, loss = best_of_starts(frontier_starts(log_x[0], L, e_fixed), log_x, log_l, e_fixed)
    units = fam["run"][idx] if args.bootstrap_over == "runs" else np.arange(len(idx))
    samples = bootstrap(theta, log_x, log_l, units, args.bootstrap, rng, e_fixed, label=f"frontier '{name}'")
    out = frontier_params(theta, e_fixed)
    out["warnings"] = degenerate_warnings(out, ("b",), L if e_fixed is None else None)
    boot = [frontier_params(s, e_fixed) for s in samples]
    out["ci"] = {k: interval([b[k] for b in boot], args.ci) for k in ("E", "a", "b")}
    out.update(E_fixed=e_fixed is not None, huber_loss=loss, n_points=len(idx),
               C_range=[float(C.min()), float(C.max())], points=[[float(c), float(l)] for c, l in zip(C, L)],
               n_bootstrap=len(samples))
    out["samples"] = boot
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
    """CEG(C) = C_B(L_A(C)) / C: how many times C family B needs to reach the loss A reaches with C."""
    return compute_to_reach(law_b, frontier_loss(law_a, C)) / np.asarray(C, float)


def measured_mask(fa, fb, C):
    """Where a CEG value is interpolation: C inside A's frontier data and C_B(L_A(C)) inside B's."""
    C = np.asarray(C, float)
    c_b = compute_to_reach(fb, frontier_loss(fa, C))
    (lo_a, hi_a), (lo_b, hi_b) = fa["C_range"], fb["C_range"]
    return (C >= lo_a / 1.0001) & (C <= hi_a * 1.0001) & (c_b >= lo_b / 1.0001) & (c_b <= hi_b * 1.0001)


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
                  f"needs to reach the loss '{name_a}' reaches with compute C, divided by C "
                  f"(> 1: '{name_a}' is the more compute-efficient)")
    return {"A": name_a, "B": name_b, "definition": definition, "rows": rows, "budgets": budgets,
            "boot": boot}


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


def print_family(name, fam, fit, args):
    widths = np.unique(fam["N"])
    print(f"\n== family '{name}': {len(fam['L'])} points from {len(np.unique(fam['run']))} run(s), "
          f"{len(widths)} width(s) N = {fmt(widths.min())} .. {fmt(widths.max())}, "
          f"C = {fmt(fam['C'].min())} .. {fmt(fam['C'].max())}")
    level = f"{args.ci * 100:g}% CI"
    p = fit.get("approach3")
    if p:
        print(f"Approach 3: L(N, D) = E + A/N^alpha + B/D^beta  (Huber {HUBER_DELTA:g} on log L, L-BFGS from "
              f"{p['n_starts']} starts: {p['fit_seconds']:.1f}s; {p['n_bootstrap']} bootstrap resamples "
              f"over {args.bootstrap_over})")
        print(f"  {'param':<6} {'estimate':>10}  {level}")
        for k in ("E", "A", "B", "alpha", "beta"):
            print(f"  {k:<6} {fmt(p[k]):>10}  {fmt_ci(p['ci'][k])}")
        for w in p["warnings"]:
            print(f"  warning: {w}")
        al = p["allocation"]
        print(f"Compute-optimal allocation (C = 6ND): N_opt = G (C/6)^a, D_opt = (C/6)^b / G;  "
              f"a = {fmt(al['a'], 3)} {fmt_ci(al['ci']['a'])}, b = {fmt(al['b'], 3)} {fmt_ci(al['ci']['b'])}, "
              f"G = {fmt(al['G'], 3)}")
        print(f"  {'C':>8} {'N_opt':>10} {'D_opt':>10} {'D/N':>8}  {'D/N ' + level:<22}")
        for row in al["budgets"]:
            note = "  (extrapolated)" if row["extrapolated"] else ""
            print(f"  {fmt(row['C'], 2):>8} {fmt(row['N_opt'], 3):>10} {fmt(row['D_opt'], 3):>10} "
                  f"{fmt(row['tokens_per_param'], 3):>8}  {fmt_ci(row['ci']['tokens_per_param']):<22}{note}")
    f = fit["frontier"]
    e_note = " (E fixed by --irreducible)" if f["E_fixed"] else ""
    print(f"Frontier law: L(C) - E = a C^-b on the {f['n_points']} Pareto-frontier points, "
          f"C = {fmt(f['C_range'][0])} .. {fmt(f['C_range'][1])}{e_note}")
    for k in ("E", "a", "b"):
        ci = "(fixed)" if k == "E" and f["E_fixed"] else fmt_ci(f["ci"][k])
        print(f"  {k:<6} {fmt(f[k]):>10}  {ci}")
    for w in f["warnings"]:
        print(f"  warning: {w}")
    iso = fit.get("isoflop") or []
    if iso:
        print("isoFLOP view (approach 2): loss vs log N parabola per budget")
        print(f"  {'C':>8} {'widths':>6} {'N_opt':>10}")
        for prof in iso:
            n_opt = fmt(prof["N_opt"], 3) if prof["interior"] else "no minimum inside the widths"
            print(f"  {fmt(prof['C'], 2):>8} {len(np.unique(prof['logN'])):>6} {n_opt:>10}")
        slope = isoflop_exponent(iso)
        if slope is not None:
            print(f"  N_opt ~ C^{slope:.3f} over {sum(p['interior'] for p in iso)} budgets with a minimum "
                  f"inside the widths")


def print_compare(cmp, args):
    print(f"\n== compute-equivalent gain, '{cmp['A']}' vs '{cmp['B']}'")
    print(cmp["definition"])
    level = f"{args.ci * 100:g}% CI"
    print(f"  {'C':>8} {'L_A(C)':>8} {'C_B':>10} {'CEG':>8}  {level:<22} note")
    for r in cmp["rows"]:
        if not r["reachable"]:
            ceg_text, cb, ci = "unreachable", "inf", ""
            note = f"L_A(C) <= E of '{cmp['B']}'"
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
            print(f"'{cmp['A']}' vs '{cmp['B']}' ({when}): to reach the loss '{cmp['A']}' reaches with "
                  f"C = {fmt(r['C'], 2)}, '{cmp['B']}' needs {fmt(r['ceg'], 3)} times the compute "
                  f"{fmt_ci(r['ci'], inf='unreachable')}")
    if not measured:
        print(f"no budget is measured for both families: '{cmp['B']}' never reached the losses '{cmp['A']}' "
              f"reaches in its runs, so every CEG value above is an extrapolation")


# ----------------------------------------------------------------------------- JSON and plots

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
           "huber_delta": HUBER_DELTA, "skipped": skipped, "families": {}}
    for name, fam in families.items():
        iso = fits[name].get("isoflop") or []
        out["families"][name] = {"n_points": len(fam["L"]), "n_runs": len(np.unique(fam["run"])),
                                 "widths": sorted(float(n) for n in np.unique(fam["N"])),
                                 "C_range": [float(fam["C"].min()), float(fam["C"].max())], **fits[name],
                                 "isoflop": {"N_opt_exponent": isoflop_exponent(iso),
                                             "budgets": [{k: p[k] for k in ("C", "N_opt", "interior")}
                                                         for p in iso]}}
    with_a3 = [name for name in fits if fits[name].get("approach3")]
    if len(fits) == 1 and with_a3:  # one family: its approach-3 constants at the top level too
        p = fits[with_a3[0]]["approach3"]
        out.update({k: p[k] for k in ("E", "A", "B", "alpha", "beta")}, ci=p["ci"], family=with_a3[0])
    if comparison:
        out["compare"] = comparison
    return to_json(out)


def make_plots(families, fits, comparison, plot_dir, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(plot_dir, exist_ok=True)
    written = []
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(families)}

    # loss vs compute per family: all points, the frontier, the fitted frontier law (dashed beyond data)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, fam in families.items():
        f, col = fits[name]["frontier"], colors[name]
        ax.scatter(fam["C"], fam["L"], s=6, color=col, alpha=0.25, lw=0)
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
    ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="loss",
           title="Loss vs compute: points, Pareto frontier (outlined), frontier law (dashed: extrapolated,"
                 " dotted: E)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    written.append(save(fig, plot_dir, "frontier.png"))

    # approach 3: loss vs tokens, coloured by N, with the law's curve for up to 8 representative widths
    a3 = [name for name in families if fits[name].get("approach3")]
    if a3:
        fig, axes = plt.subplots(1, len(a3), figsize=(6.5 * len(a3), 5), squeeze=False)
        for ax, name in zip(axes[0], a3):
            fam, p = families[name], fits[name]["approach3"]
            lognorm = matplotlib.colors.LogNorm(fam["N"].min(), fam["N"].max())
            sc = ax.scatter(fam["D"], fam["L"], c=fam["N"], norm=lognorm, cmap="viridis", s=10)
            widths = np.unique(fam["N"])
            show = widths if len(widths) <= 8 else widths[np.linspace(0, len(widths) - 1, 8).astype(int)]
            grid = np.logspace(math.log10(fam["D"].min()), math.log10(fam["D"].max()), 60)
            for n in show:  # the law at this width over the family's whole token range
                model = np.exp(lse_law(p["theta"], np.log(np.vstack([np.full_like(grid, n), grid])))[0])
                ax.plot(grid, model, color=plt.cm.viridis(lognorm(n)), lw=1.2)
            fig.colorbar(sc, ax=ax, label="N (parameters)")
            ax.set(xscale="log", yscale="log", xlabel="tokens D",
                   ylabel=f"loss (lines: the law at {len(show)} of the {len(widths)} widths)",
                   title=f"{name}: approach 3, E={fmt(p['E'], 3)} A={fmt(p['A'], 3)} B={fmt(p['B'], 3)} "
                         f"alpha={fmt(p['alpha'], 3)} beta={fmt(p['beta'], 3)}")
            ax.title.set_fontsize(9)
            ax.grid(True, which="both", alpha=0.3)
        written.append(save(fig, plot_dir, "approach3.png"))

    # residuals (observed - fitted log loss) vs compute: approach 3 (coloured by N) and frontier law
    fig, axes = plt.subplots(len(families), 2, figsize=(12, 3.6 * len(families)), squeeze=False)
    for row, name in zip(axes, families):
        fam, fit = families[name], fits[name]
        if fit.get("approach3"):
            sc = row[0].scatter(fam["C"], fit["approach3"]["residuals"], c=fam["N"], cmap="viridis", s=8,
                                norm=matplotlib.colors.LogNorm(fam["N"].min(), fam["N"].max()))
            fig.colorbar(sc, ax=row[0], label="N")
        else:
            row[0].text(0.5, 0.5, "approach 3 not fitted", ha="center", transform=row[0].transAxes)
        pts = np.array(fit["frontier"]["points"])
        row[1].scatter(pts[:, 0], fit["frontier"]["residuals"], color=colors[name], s=14)
        for ax, what in zip(row, ("approach 3", "frontier law")):
            ax.axhline(0, color="k", lw=0.8)
            ax.set(xscale="log", xlabel="compute C (FLOPs)", ylabel="log L observed - fitted",
                   title=f"{name}: {what} residuals")
            ax.grid(True, alpha=0.3)
    written.append(save(fig, plot_dir, "residuals.png"))

    if comparison:
        cmp, fa = comparison, fits[comparison["A"]]["frontier"]
        lo, hi = fa["C_range"]
        top = max(hi, args.extrapolate or 0)
        grid = np.logspace(math.log10(lo), math.log10(top), 200)
        fb = fits[cmp["B"]]["frontier"]
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
                            color="C0", alpha=0.25, lw=0, label=f"{args.ci * 100:g}% bootstrap band")
        ax.plot(np.where(measured, grid, np.nan), central, color="C0", lw=2,
                label="CEG(C), measured (both families' data)")
        if (~measured).any():
            ax.plot(np.where(~measured, grid, np.nan), central, color="C0", lw=2, ls="--", label="extrapolated")
        if not np.all(np.isfinite(central)):
            ax.axvspan(grid[~np.isfinite(central)].min(), grid.max(), color="0.85", zorder=0,
                       label=f"unreachable for '{cmp['B']}' (L_A < E_B)")
        ax.axhline(1, color="k", lw=0.8)
        ax.set_ylim(bottom, top)
        ax.set(xscale="log", yscale="log", xlabel=f"compute C of '{cmp['A']}' (FLOPs)",
               ylabel=f"CEG = C_{cmp['B']}(L_{cmp['A']}(C)) / C",
               title=f"'{cmp['B']}' needs CEG(C) x the compute of '{cmp['A']}' to match its loss")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        written.append(save(fig, plot_dir, "ceg.png"))

    iso = [(name, fits[name]["isoflop"]) for name in families if fits[name].get("isoflop")]
    if iso:
        fig, axes = plt.subplots(1, len(iso), figsize=(6.5 * len(iso), 5), squeeze=False)
        for ax, (name, profiles) in zip(axes[0], iso):
            budgets = [prof["C"] for prof in profiles]
            norm = matplotlib.colors.LogNorm(min(budgets), max(budgets) * 1.0001)
            cmap = matplotlib.colors.ListedColormap(plt.cm.plasma(np.linspace(0, 0.85, 256)))  # no pale yellow
            for prof in profiles:
                col = cmap(norm(prof["C"]))
                ax.scatter(np.exp(prof["logN"]), prof["L"], color=col, s=10)
                x = np.linspace(prof["logN"].min(), prof["logN"].max(), 50)
                if prof["interior"]:
                    ax.plot(np.exp(x), np.polyval(prof["coef"], x), color=col, lw=1)
                    ax.plot(prof["N_opt"], np.polyval(prof["coef"], math.log(prof["N_opt"])), "k*", ms=8)
                else:  # no minimum inside the widths: the parabola says little
                    ax.plot(np.exp(x), np.polyval(prof["coef"], x), color=col, lw=0.6, ls="--", alpha=0.5)
            fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="budget C (FLOPs)")
            ax.set(xscale="log", xlabel="N (parameters)", ylabel="loss",
                   title=f"{name}: isoFLOP profiles (star: parabola minimum; dashed: none inside the widths)")
            ax.title.set_fontsize(9)
            ax.grid(True, which="both", alpha=0.3)
        written.append(save(fig, plot_dir, "isoflop.png"))
    return written


def save(fig, plot_dir, name):
    path = os.path.join(plot_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main

class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other bad input
        raise UserError(f"{message} (python fit_scaling.py --help)")


def parse_args(argv):
    p = ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a results folder (run folders under it) or a CSV file")
    p.add_argument("--params", choices=["non_embedding", "total"], default="non_embedding",
                   help="N: derived.n_params_non_embedding (default) or derived.n_params")
    p.add_argument("--flops", choices=["column", "6nd"], default="column",
                   help="C: the flops column / CSV column (default) or 6*N*D")
    p.add_argument("--group", choices=["label", "arch"], default="label", help="config key naming a family")
    p.add_argument("--only", nargs="+", metavar="FAMILY", help="fit only these families")
    p.add_argument("--min_tokens", type=float, default=0, help="drop points with fewer tokens")
    p.add_argument("--min_frac", type=float, default=0, help="drop each run's points before this fraction "
                   "of its final tokens (warmup transients)")
    p.add_argument("--final_only", action="store_true", help="only the last point of each run")
    p.add_argument("--drop_highest", type=int, default=0, metavar="K", help="drop the K highest losses of "
                   "each family (Besiroglu et al. drop 5 outliers from the extracted Chinchilla data)")
    p.add_argument("--grid", choices=["fast", "epoch"], default="fast", help="approach-3 starting grid: a "
                   "108-start subset (default) or Besiroglu et al.'s full 4500 starts (25x slower)")
    p.add_argument("--no_approach3", action="store_true", help="fit only the frontier laws")
    p.add_argument("--irreducible", type=float, help="fix E of every frontier law to this loss")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for CIs (default 200)")
    p.add_argument("--bootstrap_over", choices=["points", "runs"], default="points")
    p.add_argument("--ci", type=float, default=0.95, help="confidence level (default 0.95)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="CEG(C) = C_B(L_A(C)) / C between families")
    p.add_argument("--extrapolate", type=float, help="extend the CEG and allocation tables to this compute")
    p.add_argument("--json", metavar="FILE", help="write the fits as JSON")
    p.add_argument("--plots", metavar="DIR", help="where PNGs go (default <input>/plots)")
    p.add_argument("--no_plots", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.ci < 1:
        raise UserError(f"--ci {args.ci:g}: give a level between 0 and 1, e.g. 0.95")
    if args.bootstrap < 0 or args.drop_highest < 0:
        raise UserError("--bootstrap and --drop_highest must be 0 or more")
    if not 0 <= args.min_frac < 1:
        raise UserError(f"--min_frac {args.min_frac:g}: give a fraction in [0, 1)")
    for key in ("extrapolate", "irreducible"):
        value = getattr(args, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"--{key} {value:g}: give a positive number")
    if args.compare and args.compare[0] == args.compare[1]:
        raise UserError("--compare needs two different families")
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
    print(f"N = {'all' if args.params == 'total' else 'non-embedding'} parameters, D = tokens, "
          f"C = {'6ND' if args.flops == '6nd' else 'FLOPs as recorded'}; {args.ci * 100:g}% CIs from "
          f"{args.bootstrap} bootstrap resamples over {args.bootstrap_over}, seed {args.seed}")

    for name, fam in families.items():  # every family fittable before any fitting starts
        if not args.no_approach3:
            check_approach3(name, fam)
        frontier_of(name, fam, args)

    rng = np.random.default_rng(args.seed)
    fits = {}
    for name, fam in families.items():
        fits[name] = {}
        if not args.no_approach3:
            fits[name]["approach3"] = fit_approach3(name, fam, args, rng)
        fits[name]["frontier"] = fit_frontier(name, fam, args, rng)
        fits[name]["isoflop"] = isoflop_profiles(fam)
        print_family(name, fam, fits[name], args)
    comparison = compare(fits, *args.compare, args) if args.compare else None
    if comparison:
        print_compare(comparison, args)
    if args.json:
        results.write_json(args.json, json_report(args.input, families, fits, skipped, comparison, args))
        print(f"\nwrote {args.json}")
    if not args.no_plots:
        for path in make_plots(families, fits, comparison, args.plots or default_plots, args):
            print(f"wrote {path}")
    return fits


def main(argv=None):
    try:
        run(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
