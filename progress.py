"""
The progress ledger: how much have training algorithms improved, and where did the gains come from?

    python progress.py configs/ledger/gundlach2025.py                  # the published accounting, 2012 -> 2023
    python progress.py configs/ledger/gundlach2025.py --from 2017 --to 2020 --json ledger.json
    python progress.py configs/ledger/this_study.py --plots figs/      # ours, from the study's JSON files

Gundlach et al. 2025 ("On the Origin of Algorithmic Progress in AI") found that small-scale, scale-invariant
innovations explain less than 10x, and two scale-dependent changes (LSTM -> Transformer, Kaplan -> Chinchilla
rebalancing) most of the rest, because their gain grows with compute: the total depends on the compute scale
one asks about. This script does that accounting for any ledger; analyze.py measures CEGs and fit_scaling.py
fits laws and CEG(C), and their functions are used here, not re-derived.

A ledger is plain Python executed like a config file (configurator.py): the frontier compute by year, and the
innovations with a year and a gain each (a constant, an analyze.py CEG row, the CEG(C) of two fit_scaling laws,
the Kaplan -> compute-optimal rebalancing, products and ratios of these). An innovation counts when FROM < year
<= TO, every gain is evaluated at the frontier compute of TO, the total is their product and a share its part of
log(total), with Monte Carlo intervals over the components. Output: the table; --json FILE; PNGs (cumulative,
vs_compute, sensitivity) in --plots DIR (default results/progress/<ledger name>/; --no_plots). Bad input: one
line on stderr, exit status 2. README.md, "Progress ledger", has the ledger's keys and helpers and the JSON.
"""
import fit_scaling  # first: it limits BLAS threads before numpy loads (see its top)

import argparse
import glob
import math
import os
import sys

import numpy as np
from scipy.stats import norm

import configurator
import results
from analyze import colors, legible, plt, style  # the toolkit's plot helpers
from configurator import ArgumentParser, UserError, cli_main
from fit_scaling import fmt

LEDGER_KEYS = ("title", "source", "compute", "compute_growth", "period", "innovations", "normalize",
               "sensitivity")
FRONTIER_KEYS = ("E", "a", "b")
CHINCHILLA_KEYS = ("E", "A", "B", "alpha", "beta")
CONVENTION = ("gain = compute needed without the innovation / compute needed with it, to reach the same loss "
              "(> 1: the innovation helps)")
INVERTED = ("shown inverted (--invert): compute needed with the innovation / compute needed without it "
            "(< 1: the innovation helps)")


# ----------------------------------------------------------------------------- ledger helpers: gains and laws

def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive(v, what):
    if not (is_number(v) and v > 0):
        raise UserError(f"{what}: {v!r} must be a positive number")
    return float(v)


def constant(value, interval=None, source="given", level=0.95):
    """A fixed gain; with interval (low, high) its level (95%) interval, sampled as a lognormal."""
    value = positive(value, "constant(value)")
    if interval is not None:
        if not (isinstance(interval, (list, tuple)) and len(interval) == 2):
            raise UserError(f"constant({value:g}, interval={interval!r}): give the interval as (low, high)")
        lo, hi = (positive(v, f"constant({value:g}, interval)") for v in interval)
        if not lo <= value <= hi:
            raise UserError(f"constant({value:g}, interval=({lo:g}, {hi:g})): the interval must hold the value")
        interval = (lo, hi)
    return {"kind": "constant", "value": value, "interval": interval, "level": level, "source": source}


def read_tool_json(path, writer):
    """A JSON object written by analyze.py or fit_scaling.py; one line naming the command when it is missing."""
    if not isinstance(path, str):
        raise UserError(f"{path!r}: give the path of a {writer.split()[1]} --json file")
    data, problem = results.read_json(path)
    if data is None and not os.path.exists(path):
        raise UserError(f"{path}: no such file; `{writer} --json {path}` writes it")
    if not isinstance(data, dict):
        raise UserError(f"{path}: {problem or 'not a JSON object'}; `{writer} --json {path}` writes it")
    return data


def analyze_gain(row):
    """(gain, interval, bound) of baseline over label from one analyze.py --json CEG row: the one place that
    knows its fields. Rows in the toolkit's convention name the sides (gain of gain_of over gain_over, with
    gain_low, gain_high, gain_bound); older rows hold only ceg = FLOPs_baseline / FLOPs_label (label over
    baseline) with ci_low, ci_high, bound, which are turned around here."""
    flip = {"lower": "upper", "upper": "lower"}
    if is_number(row.get("gain")) and "gain_of" in row:
        gain, lo, hi, bound = row["gain"], row.get("gain_low"), row.get("gain_high"), row.get("gain_bound")
        if row["gain_of"] == row.get("baseline"):
            return gain, [lo, hi] if is_number(lo) and is_number(hi) else None, bound
    else:
        gain, lo, hi, bound = row.get("ceg"), row.get("ci_low"), row.get("ci_high"), row.get("bound")
    # the label over the baseline: turn it around
    interval = [1 / hi, 1 / lo] if all(is_number(v) and v > 0 for v in (lo, hi)) else None
    return (1 / gain if is_number(gain) and gain > 0 else gain), interval, flip.get(bound, bound)


READ = {}  # the components read from files in this ledger, by what was asked: the same ask, the same draws


def once(make):
    """make(*args) at most once per ledger for the same arguments: a CEG row or a fitted law used twice
    (rotary in two gains, say) is one component, drawn once per Monte Carlo draw."""
    def helper(*args, **kwargs):
        key = (make.__name__, repr(args), repr(sorted(kwargs.items())))
        if key not in READ:
            READ[key] = make(*args, **kwargs)
        return READ[key]
    helper.__name__ = make.__name__
    return helper


@once
def measured(path, label, baseline=None, invert=False, study=None, width=None):
    """A CEG from analyze.py --json: baseline over label (invert=True: label over baseline)."""
    data = read_tool_json(path, "python analyze.py results/<study> --baseline <label>")
    want = {"label": label, "baseline": baseline, "study": study, "width": width}
    rows = [r for r in data.get("ceg") or [] if isinstance(r, dict) and not r.get("is_baseline")
            and all(v is None or r.get(k) == v for k, v in want.items())]
    asked = ", ".join(f"{k} {v!r}" for k, v in want.items() if v is not None)
    if len(rows) != 1:
        have = sorted({f"{r.get('label')} vs {r.get('baseline')} ({r.get('study')}, width {r.get('width')})"
                       for r in data.get("ceg") or [] if isinstance(r, dict) and not r.get("is_baseline")})
        why = "no CEG row" if not rows else f"{len(rows)} CEG rows (give study= or width= to pick one)"
        raise UserError(f"{path}: {why} with {asked}; rows: {'; '.join(have) or 'none'}")
    row = rows[0]
    gain, interval, bound = analyze_gain(row)
    if bound:
        raise UserError(f"{path}: {asked}: analyze reports only a bound ({bound}): some run never reached the "
                        f"target loss; rerun analyze.py with a higher --target")
    if not (is_number(gain) and gain > 0):
        raise UserError(f"{path}: {asked}: the CEG is {gain!r}, not a positive number")
    sides = [row.get("baseline"), label]
    if invert:
        gain, interval, sides = 1 / gain, interval and [1 / interval[1], 1 / interval[0]], sides[::-1]
    ci = data.get("ci")  # analyze's interval level; 95% when it does not say
    level = ci["level"] if isinstance(ci, dict) and is_number(ci.get("level")) and 0 < ci["level"] < 1 else 0.95
    source = f"{path}: {sides[0]} over {sides[1]}" + ("" if interval else " (no interval in the JSON)")
    return constant(gain, interval, source=source, level=level)


def frontier(a, b, E=0.0):
    """The frontier law L(C) = E + a C^-b (C in FLOPs), as fit_scaling represents it."""
    E = float(E) if is_number(E) and E >= 0 else positive(E, "frontier(E)")
    return {"kind": "frontier", "E": E, "a": positive(a, "frontier(a)"), "b": positive(b, "frontier(b)"),
            "samples": None, "source": f"L(C) = {fmt(E)} + {fmt(a)} C^-{fmt(b)}", "warnings": []}


def chinchilla(E, A, B, alpha, beta):
    """L(N, D) = E + A/N^alpha + B/D^beta (N parameters, D tokens)."""
    p = {k: positive(v, f"chinchilla({k})") for k, v in zip(CHINCHILLA_KEYS, (E, A, B, alpha, beta))}
    return {"kind": "chinchilla", **p, "samples": None, "warnings": [],
            "source": "L(N, D) = " + " + ".join([fmt(E), f"{fmt(A)}/N^{fmt(alpha)}", f"{fmt(B)}/D^{fmt(beta)}"])}


def fitted_law(kind, keys, fit, source):
    """A law leaf from a fit_scaling fit (a dict with keys, optionally bootstrap 'samples' of them)."""
    if fit.get("refused"):
        raise UserError(f"{source}: not fitted: {fit['refused']}")
    # what the law functions need: a, b > 0 and E >= 0 for a frontier law (L = E + a C^-b); E, A, B > 0 for
    # approach 3 (its exponents may be anything: R(C) is undefined without positive ones)
    usable = {"frontier": lambda p: p["a"] > 0 and p["b"] > 0 and p["E"] >= 0,
              "chinchilla": lambda p: p["E"] > 0 and p["A"] > 0 and p["B"] > 0}[kind]
    ok = lambda p: isinstance(p, dict) and all(is_number(p.get(k)) for k in keys) and usable(p)
    if not ok(fit):
        raise UserError(f"{source}: no usable law ({', '.join(f'{k} = {fit.get(k)!r}' for k in keys)})")
    law = {k: fit[k] for k in keys}
    raw = fit.get("bootstrap_samples") or fit.get("samples") or []
    samples = [s for s in raw if ok(s)]
    warnings = [f"{source}: {w}" for w in fit.get("warnings") or []]
    if fit.get("identified") is False:
        warnings.append(f"{source}: not identified ({fit.get('not_identified')}): gains built from it are not to "
                        f"be trusted")
    if not samples:
        warnings.append(f"{source}: no bootstrap samples in the fit, so the gains built from it carry no "
                        f"interval")
    return {"kind": kind, **{k: float(v) for k, v in law.items()}, "samples": samples or None,
            "source": source, "warnings": warnings}


def fit_family(data, family, path, part):
    families = data.get("families")
    if not isinstance(families, dict):
        raise UserError(f"{path}: no 'families'; is it `fit_scaling.py --json` output?")
    if family is None and len(families) == 1:
        family = next(iter(families))
    if family not in families:
        raise UserError(f"{path}: no family {family!r}; families: {', '.join(map(str, families)) or 'none'}")
    fit = (families[family] or {}).get(part)
    if not isinstance(fit, dict):
        raise UserError(f"{path}: family '{family}' has no {part} fit" +
                        (" (fit_scaling.py ran with --no_approach3?)" if part == "approach3" else ""))
    return fit, f"{path}: family '{family}' {part}"


@once
def frontier_fitted(path, family):
    """The frontier law of one family in fit_scaling.py --json output."""
    data = read_tool_json(path, "python fit_scaling.py results/<study>")
    return fitted_law("frontier", FRONTIER_KEYS, *fit_family(data, family, path, "frontier"))


@once
def chinchilla_fitted(source, family=None, options=()):
    """Approach 3 (fit_scaling's): read from a fit_scaling JSON, or fitted now to a CSV or results folder."""
    if isinstance(source, str) and source.endswith(".json"):
        data = read_tool_json(source, "python fit_scaling.py results/<study>")
        return fitted_law("chinchilla", CHINCHILLA_KEYS, *fit_family(data, family, source, "approach3"))
    if not (isinstance(source, str) and os.path.exists(source)):
        raise UserError(f"chinchilla_fitted({source!r}): no such file or folder")
    args = fit_scaling.parse_args([source, "--no_plots", *map(str, options)])
    skipped = {}
    read = fit_scaling.read_run_points if os.path.isdir(source) else fit_scaling.read_csv_points
    families = fit_scaling.select_points(read(source, args, skipped), args, skipped)
    if family is None and len(families) == 1:
        family = next(iter(families))
    if family not in families:
        raise UserError(f"chinchilla_fitted({source!r}): no family {family!r}; families: {', '.join(families)}")
    fit = fit_scaling.fit_approach3(family, families[family], args, np.random.default_rng(args.seed))
    return fitted_law("chinchilla", CHINCHILLA_KEYS, fit, f"{source}: approach 3 of '{family}'")


def law_gain(new, old):
    """CEG(C) of the law new over the law old: C_old(L_new(C)) / C."""
    for name, law in (("new", new), ("old", old)):
        if not (isinstance(law, dict) and law.get("kind") == "frontier"):
            raise UserError(f"law_gain({name}): {law!r:.60} is not a frontier law; use frontier(a, b, E) "
                            f"or frontier_fitted(json, family)")
    return {"kind": "law_gain", "new": new, "old": old}


def rebalancing(law, k, exponent=0.73):
    """R(C): compute-optimal over Kaplan-allocated (N = k C^exponent) training of the Chinchilla law."""
    if not (isinstance(law, dict) and law.get("kind") == "chinchilla"):
        raise UserError(f"rebalancing(law): {law!r:.60} is not a Chinchilla law; use chinchilla(E, A, B, "
                        f"alpha, beta) or chinchilla_fitted(...)")
    exponent = positive(exponent, "rebalancing(exponent)")
    if exponent >= 1:
        raise UserError(f"rebalancing(exponent={exponent:g}): N = k C^exponent needs an exponent below 1")
    return {"kind": "rebalancing", "law": law, "k": positive(k, "rebalancing(k)"), "exponent": exponent}


GAIN_KINDS = ("constant", "law_gain", "rebalancing", "product")


def as_gain(g, where):
    if is_number(g):
        return constant(g)
    if isinstance(g, dict) and g.get("kind") in GAIN_KINDS:
        return g
    raise UserError(f"{where}: {g!r:.60} is not a gain; give a number, constant(...), measured(...), "
                    f"law_gain(...), rebalancing(...), product(...) or ratio(...)")


def product(*gains):
    return {"kind": "product", "factors": [(as_gain(g, "product()"), 1) for g in gains]}


def ratio(gain, other):
    return {"kind": "product", "factors": [(as_gain(gain, "ratio()"), 1), (as_gain(other, "ratio()"), -1)]}


def leaves(gain):
    """The constants and laws a gain is built from."""
    if gain["kind"] == "constant":
        return [gain]
    if gain["kind"] == "law_gain":
        return [gain["new"], gain["old"]]
    if gain["kind"] == "rebalancing":
        return [gain["law"]]
    return [leaf for g, _ in gain["factors"] for leaf in leaves(g)]


def law_gains(gain):
    if gain["kind"] == "law_gain":
        return [gain]
    return [lg for g, _ in gain.get("factors", []) for lg in law_gains(g)]


def innovation(name, year, gain, scale_dependent=None):
    if not (isinstance(name, str) and name):
        raise UserError(f"innovation({name!r}, ...): the first argument is its name")
    if year is not None and not (isinstance(year, int) and not isinstance(year, bool)):
        raise UserError(f"innovation({name!r}, {year!r}): the year is a whole number (or None: not counted)")
    gain = as_gain(gain, f"innovation({name!r})")
    if scale_dependent is None:
        scale_dependent = any(leaf["kind"] != "constant" for leaf in leaves(gain))
    return {"kind": "innovation", "name": name, "year": year, "gain": gain, "scale_dependent": bool(scale_dependent)}


def normalized(names, joint):
    if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names)):
        raise UserError(f"normalized({names!r}, ...): give the list of innovation names it scales")
    return {"kind": "normalized", "names": list(names), "joint": as_gain(joint, "normalized(joint)")}


HELPERS = {f.__name__: f for f in (constant, measured, frontier, frontier_fitted, chinchilla, chinchilla_fitted,
                                    law_gain, rebalancing, product, ratio, innovation, normalized)}


# ----------------------------------------------------------------------------- reading a ledger

def load_ledger(path):
    if not os.path.isfile(path):
        presets = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "ledger",
                                                "*.py")))
        raise UserError(f"ledger file not found: {path} (presets: "
                        f"{', '.join(os.path.relpath(p) for p in presets) or 'none'})")
    defaults = dict.fromkeys(LEDGER_KEYS)
    READ.clear()
    try:  # executed as a config file is; the helpers are in scope and functions are not keys
        ledger = configurator.apply_config_file(path, {**defaults, **HELPERS}, defaults)
    except UserError as e:
        text = str(e).replace("; `python train.py --help` lists the keys",
                              f"; a ledger sets {', '.join(LEDGER_KEYS)} (its own names start with _)")
        raise UserError(text if text.startswith(path) else f"{path}: {text}")
    check_ledger(ledger, path)
    return ledger


def check_ledger(ledger, path):
    items = ledger["innovations"]
    if not (isinstance(items, (list, tuple)) and items and all(isinstance(i, dict) and i.get("kind") == "innovation"
                                                               for i in items)):
        raise UserError(f"{path}: innovations must be a list of innovation(name, year, gain)")
    names = [i["name"] for i in items]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{path}: innovation names must differ; repeated: {', '.join(twice)}")
    table = ledger["compute"]
    if not (isinstance(table, dict) and table and all(isinstance(y, int) and is_number(c) and c > 0
                                                      for y, c in table.items())):
        raise UserError(f"{path}: compute must be {{year: frontier training FLOPs}}, e.g. {{2013: 1e16}}")
    growth = ledger["compute_growth"]
    if growth is not None and not (is_number(growth) and growth > 0):
        raise UserError(f"{path}: compute_growth must be a positive factor per year, e.g. 4.1")
    period = ledger["period"]
    if period is not None and not (isinstance(period, (list, tuple)) and len(period) == 2
                                   and all(isinstance(y, int) for y in period)):
        raise UserError(f"{path}: period must be (from year, to year), e.g. (2012, 2023)")
    if ledger["normalize"] is not None:
        if not (isinstance(ledger["normalize"], dict) and ledger["normalize"].get("kind") == "normalized"):
            raise UserError(f"{path}: normalize must be normalized([names], joint_gain)")
        unknown = [n for n in ledger["normalize"]["names"] if n not in names]
        if unknown:
            raise UserError(f"{path}: normalize names {', '.join(map(repr, unknown))}, not innovations; "
                            f"innovations: {', '.join(names)}")
    if ledger["sensitivity"] is not None:
        match = [i for i in items if i["name"] == ledger["sensitivity"]]
        if not match or not law_gains(match[0]["gain"]):
            raise UserError(f"{path}: sensitivity {ledger['sensitivity']!r} is not an innovation with a law_gain")
    for key in ("title", "source"):
        if ledger[key] is not None and not isinstance(ledger[key], str):
            raise UserError(f"{path}: {key} must be a string")


def compute_at(ledger, years, path):
    """Frontier compute at (fractional) years: geometric between the years given, compute_growth beyond."""
    table = sorted(ledger["compute"].items())
    ys, logs = np.array([y for y, _ in table], float), np.log([c for _, c in table])
    years = np.asarray(years, float)
    growth = ledger["compute_growth"]
    outside = (years < ys[0]) | (years > ys[-1])
    if outside.any() and growth is None:
        raise UserError(f"{path}: compute has no value for {years[outside][0]:g} (it covers {ys[0]:g}-{ys[-1]:g}); "
                        f"add that year or set compute_growth")
    beyond = np.where(years < ys[0], years - ys[0], np.where(years > ys[-1], years - ys[-1], 0.0))
    return np.exp(np.interp(years, ys, logs) + beyond * math.log(growth or 1.0))


# ----------------------------------------------------------------------------- evaluating gains

def all_leaves(ledger):
    gains = [i["gain"] for i in ledger["innovations"]]
    if ledger["normalize"]:
        gains.append(ledger["normalize"]["joint"])
    seen, out = set(), []
    for leaf in (leaf for g in gains for leaf in leaves(g)):
        if id(leaf) not in seen:  # a component used twice is drawn once: its draws agree everywhere
            seen.add(id(leaf))
            out.append(leaf)
    return out


def draw(leaf, n, rng):
    """n draws of one component: its point value (rng None) or Monte Carlo draws."""
    if leaf["kind"] == "constant":
        if rng is None or leaf["interval"] is None:
            return np.full((n, 1), leaf["value"])
        lo, hi = leaf["interval"]
        sigma = (math.log(hi) - math.log(lo)) / (2 * norm.ppf((1 + leaf["level"]) / 2))
        return np.exp(math.log(leaf["value"]) + sigma * rng.standard_normal((n, 1)))
    keys = FRONTIER_KEYS if leaf["kind"] == "frontier" else CHINCHILLA_KEYS
    rows = leaf["samples"] if rng is not None and leaf["samples"] else [leaf]
    index = rng.integers(0, len(rows), n) if rng is not None and leaf["samples"] else np.zeros(n, int)
    if leaf["kind"] == "frontier":  # arrays (n, 1): fit_scaling's law functions broadcast them against C
        return {k: np.array([r[k] for r in rows], float)[index][:, None] for k in keys}
    return {"rows": [{k: float(r[k]) for k in keys} for r in rows], "index": index}


def draw_all(ledger, n, rng):
    return {id(leaf): draw(leaf, n, rng) for leaf in all_leaves(ledger)}


def chinchilla_loss(p, N, D):
    theta = np.array([math.log(p["A"]), math.log(p["B"]), math.log(p["E"]), p["alpha"], p["beta"]])
    return np.exp(fit_scaling.lse_law(theta, np.log(np.vstack([N, D])))[0])


def optimal_loss(p, C):
    _, n_opt, d_opt = fit_scaling.allocation(p, C)
    return chinchilla_loss(p, n_opt, d_opt)


def rebalancing_gain(p, C, k, exponent):
    """R(C) = C / C*: bisection in log C* for optimal_loss(C*) = the Kaplan-allocated loss at C."""
    C = np.asarray(C, float)
    if not (p["alpha"] > 0 and p["beta"] > 0):
        return np.full(C.shape, math.nan)
    n = k * C ** exponent
    target = chinchilla_loss(p, n, C / (6 * n))
    lo, hi = np.log(C) - 100, np.log(C)  # C* <= C: at C the optimum is at least as good as Kaplan's
    for _ in range(80):
        mid = (lo + hi) / 2
        short = optimal_loss(p, np.exp(mid)) > target  # C* = exp(mid) is not enough compute
        lo, hi = np.where(short, mid, lo), np.where(short, hi, mid)
    return C / np.exp((lo + hi) / 2)


def log_gain(gain, C, draws):
    """log G of a gain at each compute C (m,) for every draw: an array broadcastable to (draws, m)."""
    kind = gain["kind"]
    if kind == "constant":
        return np.log(draws[id(gain)])
    if kind == "law_gain":
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            return np.log(fit_scaling.ceg(draws[id(gain["new"])], draws[id(gain["old"])], C))
    if kind == "rebalancing":
        d = draws[id(gain["law"])]
        per_row = np.array([np.log(rebalancing_gain(row, C, gain["k"], gain["exponent"])) for row in d["rows"]])
        return per_row[d["index"]]
    return sum(power * log_gain(g, C, draws) for g, power in gain["factors"])


def innovation_logs(ledger, draws, C, n):
    """log G of every innovation (I, n, m) at each compute C, the normalization applied, and its exponent."""
    C = np.atleast_1d(np.asarray(C, float))
    logs = np.array([np.broadcast_to(log_gain(i["gain"], C, draws), (n, len(C))) for i in ledger["innovations"]])
    spec = ledger["normalize"]
    if not spec:
        return logs, None
    names = [i["name"] for i in ledger["innovations"]]
    idx = [names.index(name) for name in spec["names"]]
    with np.errstate(divide="ignore", invalid="ignore"):
        exponent = np.broadcast_to(log_gain(spec["joint"], C, draws), (n, len(C))) / logs[idx].sum(axis=0)
    logs[idx] *= exponent
    return logs, exponent


def counted_mask(ledger, start, end):
    return np.array([i["year"] is not None and start < i["year"] <= end for i in ledger["innovations"]])


# ----------------------------------------------------------------------------- the accounting

def summarize(ledger, args, c_to, point, mc, draws_point, draws_mc):
    """Gains, totals and shares at the end year's compute: point values and percentile intervals."""
    counted = counted_mask(ledger, args.start, args.end)
    dep = np.array([i["scale_dependent"] for i in ledger["innovations"]])
    ci = lambda v: fit_scaling.interval(np.ravel(v), args.ci)

    def parts(logs):  # (I, n) -> log totals (n,)
        return {"total": logs[counted].sum(axis=0), "scale_dependent": logs[counted & dep].sum(axis=0),
                "scale_invariant": logs[counted & ~dep].sum(axis=0)}

    (p_logs, p_exp), (m_logs, m_exp) = [(logs[:, :, 0], e if e is None else e[:, 0]) for logs, e in (point, mc)]
    p_parts, m_parts = parts(p_logs), parts(m_logs)
    years = args.end - args.start
    out = {"ledger": args.ledger, "title": ledger["title"], "source": ledger["source"], "from": args.start,
           "to": args.end, "compute_from": float(compute_at(ledger, args.start, args.ledger)), "compute_to": c_to,
           "convention": CONVENTION}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for key in ("total", "scale_dependent", "scale_invariant"):
            out[key], out[f"{key}_interval"] = float(np.exp(p_parts[key][0])), ci(np.exp(m_parts[key]))
        for key in ("scale_dependent", "scale_invariant"):
            out[f"share_{key}"] = float(p_parts[key][0] / p_parts["total"][0])
            out[f"share_{key}_interval"] = ci(m_parts[key] / m_parts["total"])
        out["yearly_rate"] = float(np.exp(p_parts["total"][0] / years))
        out["yearly_rate_interval"] = ci(np.exp(m_parts["total"] / years))
        out["innovations"] = []
        for i, inv in enumerate(ledger["innovations"]):
            row = {"name": inv["name"], "year": inv["year"], "counted": bool(counted[i]),
                   "scale_dependent": inv["scale_dependent"], "gain": float(np.exp(p_logs[i, 0])),
                   "interval": ci(np.exp(m_logs[i])),
                   "normalized": bool(ledger["normalize"] and inv["name"] in ledger["normalize"]["names"]),
                   "source": describe(inv["gain"])}
            if counted[i]:
                row["share"] = float(p_logs[i, 0] / p_parts["total"][0])
                row["share_interval"] = ci(m_logs[i] / m_parts["total"])
            out["innovations"].append(row)
    if ledger["normalize"]:
        spec = ledger["normalize"]
        joint = [np.exp(log_gain(spec["joint"], [c_to], d)).ravel() for d in (draws_point, draws_mc)]
        gains = {i["name"]: i["gain"] for i in ledger["innovations"]}
        product = math.exp(sum(float(np.ravel(log_gain(gains[name], [c_to], draws_point))[0])
                               for name in spec["names"]))  # before the normalization
        out["normalization"] = {"names": spec["names"], "joint": float(joint[0][0]), "joint_interval": ci(joint[1]),
                                "product": product, "exponent": float(p_exp[0]), "exponent_interval": ci(m_exp)}
    return out


def describe(gain):
    kind = gain["kind"]
    if kind == "constant":
        return gain["source"] if gain["source"] != "given" else f"{fmt(gain['value'], 4)}" + (
            f" [{fmt(gain['interval'][0], 4)}, {fmt(gain['interval'][1], 4)}]" if gain["interval"] else "")
    if kind == "law_gain":
        return f"CEG(C) of {gain['new']['source']} over {gain['old']['source']}"
    if kind == "rebalancing":
        return f"R(C), Kaplan N = {fmt(gain['k'], 5)} C^{fmt(gain['exponent'], 3)} -> compute-optimal, " \
               f"{gain['law']['source']}"
    return " x ".join(f"({describe(g)})" + ("^-1" if p < 0 else "") for g, p in gain["factors"])


def spread_components(ledger):
    """The components that have spread: constants with an interval, laws with bootstrap samples."""
    return [leaf["source"] for leaf in all_leaves(ledger)
            if (leaf.get("interval") and leaf["interval"][1] > leaf["interval"][0])
            or len({tuple(sorted(s.items())) for s in leaf.get("samples") or []}) > 1]


def curves(ledger, args, draws_point, draws_mc):
    """The total by (fractional) year, each year's gains at that year's compute; and the end year's
    innovations evaluated at other computes."""
    t = np.round(np.arange(args.start, args.end + 1e-9, 0.05), 6)
    c_t = compute_at(ledger, t, args.ledger)
    counted_t = np.array([[i["year"] is not None and args.start < i["year"] <= y for y in t]
                          for i in ledger["innovations"]])
    by_year = {}
    for name, draws, n in (("point", draws_point, 1), ("mc", draws_mc, args.draws)):
        logs, _ = innovation_logs(ledger, draws, c_t, n)
        by_year[name] = np.where(counted_t[:, None, :], logs, 0.0)
    c_from, c_to = compute_at(ledger, [args.start, args.end], args.ledger)
    decades = np.arange(math.floor(math.log10(c_from)) - 4, math.ceil(math.log10(c_to)) + 2 + 1e-9, 0.1)
    grid = 10.0 ** np.round(decades, 6)  # tenth-decade steps from 4 decades below the start to 2 above the end
    counted = counted_mask(ledger, args.start, args.end)
    by_compute = {}
    for name, draws, n in (("point", draws_point, 1), ("mc", draws_mc, args.draws)):
        logs, _ = innovation_logs(ledger, draws, grid, n)
        by_compute[name] = np.where(counted[:, None, None], logs, 0.0)
    return t, c_t, by_year, grid, by_compute


def sensitivity(ledger, args, c_from, c_to):
    """The scale-dependent share and the total as the exponent gap b_new - b_old of one law gain is scaled
    by 0.5 .. 1.5: b_old moves, a_old follows so that the old law keeps its loss at the start compute."""
    items = ledger["innovations"]
    name = ledger["sensitivity"] or next((i["name"] for i in items if law_gains(i["gain"])), None)
    if name is None:
        return None
    inv = next(i for i in items if i["name"] == name)
    lg = law_gains(inv["gain"])[0]
    new, old = lg["new"], lg["old"]
    gap = new["b"] - old["b"]
    counted = counted_mask(ledger, args.start, args.end)
    dep = np.array([i["scale_dependent"] for i in items])
    rows = []
    for factor in np.linspace(0.5, 1.5, 41):
        draws = draw_all(ledger, 1, None)
        b = new["b"] - factor * gap
        draws[id(old)] = {"E": np.array([[old["E"]]]), "a": np.array([[old["a"] * c_from ** (b - old["b"])]]),
                          "b": np.array([[b]])}
        logs = innovation_logs(ledger, draws, [c_to], 1)[0][:, 0, 0]
        total = logs[counted].sum()
        rows.append({"factor": float(factor), "gap": float(factor * gap), "total": float(np.exp(total)),
                     "share_scale_dependent": float(logs[counted & dep].sum() / total)})
    return {"innovation": name, "law_new": new["source"], "law_old": old["source"], "gap": float(gap),
            "pivot_compute": float(c_from), "rows": rows}


# ----------------------------------------------------------------------------- printing

def fmt_gain(g, ci, show, invert, mark=""):
    """A gain and, when some component has spread, its interval (both inverted with --invert)."""
    lo, hi = ci
    if invert:
        g, lo, hi = 1 / g, 1 / hi, 1 / lo
    return f"{fmt(g, 4)}{mark}" + (f" [{fmt(lo, 4)}, {fmt(hi, 4)}]" if show else "")


def fmt_share(s, ci, show):
    pct = lambda v: "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"
    return pct(s) + (f" [{pct(ci[0])}, {pct(ci[1])}]" if show else "")


def print_report(out, spread, n_components, args):
    inv, show = args.invert, bool(spread)
    print(f"progress: {args.ledger}" + (f": {out['title']}" if out["title"] else ""))
    if out["source"]:
        print(f"source: {out['source']}")
    print(f"{out['from']} -> {out['to']}: frontier compute {fmt(out['compute_from'], 3)} -> "
          f"{fmt(out['compute_to'], 3)} FLOPs; the innovations after {out['from']} up to {out['to']} count, each "
          f"at {fmt(out['compute_to'], 3)} FLOPs (the compute of {out['to']})")
    print(INVERTED if inv else CONVENTION)
    level = f" [{args.ci * 100:g}%]" if show else ""
    width = max(len(r["name"]) for r in out["innovations"])
    cells = [(r, fmt_gain(r["gain"], r["interval"], show, inv, "*" if r["normalized"] else " "))
             for r in out["innovations"]]
    gain_width = max(len("gain" + level), *(len(c) for _, c in cells))
    print(f"  {'innovation':<{width}}  {'year':>4}  {'class':<15}  {'gain' + level:<{gain_width}}  "
          f"share of log total{level}")
    for r, cell in cells:
        year = str(r["year"]) if r["year"] is not None else "-"
        kind = "scale-dependent" if r["scale_dependent"] else "scale-invariant"
        share = fmt_share(r["share"], r["share_interval"], show) if r["counted"] else "not counted: " + (
            "no year (in the normalization only)" if r["year"] is None else f"outside {out['from']}-{out['to']}")
        print(f"  {r['name']:<{width}}  {year:>4}  {kind:<15}  {cell:<{gain_width}}  {share}")
    if out.get("normalization"):
        nz = out["normalization"]
        print(f"  * normalized: the {len(nz['names'])} gains raised to one exponent s = "
              f"{fmt_gain(nz['exponent'], nz['exponent_interval'], show, False)} so that their product is the joint "
              f"gain {fmt_gain(nz['joint'], nz['joint_interval'], show, inv)}")
    for key, what in (("scale_invariant", "scale-invariant"), ("scale_dependent", "scale-dependent")):
        print(f"{what + ':':<17}{fmt_gain(out[key], out[key + '_interval'], show, inv, 'x')}, share of log total "
              f"{fmt_share(out['share_' + key], out['share_' + key + '_interval'], show)}")
    print(f"{'total:':<17}{fmt_gain(out['total'], out['total_interval'], show, inv, 'x')} = "
          f"{fmt_gain(out['yearly_rate'], out['yearly_rate_interval'], show, inv, 'x')} per year over "
          f"{out['to'] - out['from']} years")
    if show:
        rest = n_components - len(spread)
        print(f"intervals: {args.draws} Monte Carlo draws (seed {args.seed}) over the {len(spread)} of "
              f"{n_components} components with an interval or bootstrap samples (--json lists them)" +
              (f"; the other {rest} {'is a point value' if rest == 1 else 'are point values'}" if rest else ""))
    else:
        print(f"intervals: none of the {n_components} components has an interval or bootstrap samples: these are "
              f"point values")
    for w in out["warnings"]:
        print(f"warning: {w}")


# ----------------------------------------------------------------------------- plots

def make_plots(ledger, out, curves_data, sens, plot_dir):
    """cumulative.png, vs_compute.png and (with a law gain to vary) sensitivity.png in plot_dir; their paths."""
    title = out["title"] or os.path.basename(out["ledger"])
    written = [plot_cumulative(ledger, out, curves_data, title, plot_dir),
               plot_vs_compute(ledger, out, curves_data, title, plot_dir)]
    if sens:
        written.append(plot_sensitivity(sens, out, title, plot_dir))
    return written


def plot_cumulative(ledger, out, curves_data, title, plot_dir):
    """The multiplier by year, stacked by counted innovation (hatched: scale-dependent), with the total's
    Monte Carlo interval."""
    t, _, by_year, _, _ = curves_data
    items = ledger["innovations"]
    order = sorted((i for i in range(len(items)) if out["innovations"][i]["counted"]),
                   key=lambda i: (items[i]["year"], i))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    cum = np.zeros(len(t))
    for i, color in zip(order, colors(len(order))):
        top = cum + by_year["point"][i, 0]
        r = out["innovations"][i]
        ax.fill_between(t, np.exp(cum), np.exp(top), color=color, alpha=0.75, lw=0,
                        hatch="//" if r["scale_dependent"] else None,
                        label=f"{r['name']} ({r['year']}): {fmt(r['gain'], 3)}x at {out['to']}")
        cum = top
    total_mc = by_year["mc"].sum(axis=0)
    band = np.array([fit_scaling.interval(np.exp(total_mc[:, j]), 0.95) for j in range(len(t))])
    ax.plot(t, np.exp(cum), color="k", lw=1.5, label=f"total: {fmt(out['total'], 4)}x in {out['to']}")
    bottom, top = min(0.8, np.exp(cum).min()), np.exp(cum).max() * 3
    if np.any(band[:, 1] > band[:, 0] * 1.0001):  # lines, not a fill: the stack stays readable beneath
        top = max(top, min(np.nanmax(band[:, 1]), top * 30) * 1.5)  # a wide band may leave the axes
        for k, edge in enumerate(band.T):
            ax.plot(t, np.clip(edge, bottom, top * 10), color="k", lw=0.8, ls="--",
                    label="total: 95% Monte Carlo interval" if k == 0 else None)
    ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    ax.set_xlim(t[0], t[-1])
    legible(ax)
    ax.set(xlabel="year (each year's gains evaluated at that year's frontier compute)",
           ylabel="cumulative compute-equivalent gain (log scale)",
           title=f"{title}: gains since {out['from']}, stacked by innovation (hatched: scale-dependent)")
    style(ax, legend=None, grid="major", title_size=9)
    ax.legend(fontsize=7.5, loc="upper left")
    return fit_scaling.save(fig, plot_dir, "cumulative.png")


def plot_vs_compute(ledger, out, curves_data, title, plot_dir):
    """The total, and its scale-dependent and scale-invariant parts, were the counted innovations evaluated at
    another compute, with Monte Carlo bands."""
    _, _, _, grid, by_compute = curves_data
    fig, ax = plt.subplots(figsize=(8, 5.2))
    dep = np.array([inv["scale_dependent"] for inv in ledger["innovations"]])
    lines = []
    for what, mask, color in (("total", np.ones(len(dep), bool), "k"), ("scale-dependent", dep, "C3"),
                              ("scale-invariant", ~dep, "C0")):
        point = np.exp(by_compute["point"][mask].sum(axis=0)[0])
        mc = np.exp(by_compute["mc"][mask].sum(axis=0))
        lines.append((what, color, point, np.array([fit_scaling.interval(mc[:, j], 0.95) for j in range(len(grid))])))
    finite = np.concatenate([p[np.isfinite(p)] for _, _, p, _ in lines] + [[1.0]])
    bottom, top = finite.min() / 3, finite.max() * 3  # the point curves set the range; bands may leave it
    for what, color, point, band in lines:
        ax.plot(grid, point, color=color, lw=2 if what == "total" else 1.3, label=what)
        if np.any(band[:, 1] > band[:, 0] * 1.0001):
            ax.fill_between(grid, np.clip(band[:, 0], bottom, top), np.clip(band[:, 1], bottom, top), color=color,
                            alpha=0.15, lw=0, label=f"{what}: 95% Monte Carlo interval")
    ax.set_ylim(bottom, top)
    for c, name in ((out["compute_from"], out["from"]), (out["compute_to"], out["to"])):
        ax.axvline(c, color="0.4", ls=":", lw=1)
        ax.text(c, 0.98, f" frontier {name}", transform=ax.get_xaxis_transform(), fontsize=8, va="top",
                color="0.3")
    ax.axhline(1, color="0.6", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="compute the gains are evaluated at (FLOPs)",
           ylabel="compute-equivalent gain (log scale)",
           title=f"{title}: the {out['from']}-{out['to']} innovations' gain depends on the compute asked about")
    legible(ax)
    style(ax, grid="major", title_size=9)
    return fit_scaling.save(fig, plot_dir, "vs_compute.png")


def plot_sensitivity(sens, out, title, plot_dir):
    """The scale-dependent share (left axis) and the total (right) as the law gain's exponent gap varies."""
    rows = sens["rows"]
    gaps = [r["gap"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(gaps, [100 * r["share_scale_dependent"] for r in rows], color="C3", lw=2,
            label="scale-dependent share of log total")
    ax.axvline(sens["gap"], color="0.4", ls=":", lw=1)
    ax.text(sens["gap"], 0.02, " the ledger's gap", transform=ax.get_xaxis_transform(), fontsize=8)
    ax.set(xlabel=f"exponent gap b_new - b_old of {sens['innovation']} (x0.5 .. x1.5)",
           ylabel="scale-dependent share (%)",
           title=f"{title}: sensitivity to the exponent gap ({out['to']}; old law pivoted at its "
                 f"{out['from']} loss)")
    style(ax, legend=None, grid="major", title_size=9)
    twin = ax.twinx()
    twin.plot(gaps, [r["total"] for r in rows], color="k", lw=1.2, ls="--", label="total (right axis)")
    twin.set_yscale("log")
    twin.set_ylabel("total gain (log scale)")
    legible(twin)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    return fit_scaling.save(fig, plot_dir, "sensitivity.png")


# ----------------------------------------------------------------------------- main

def parse_args(argv):
    p = ArgumentParser(prog="progress.py", description=__doc__.split("\n\n")[0].strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ledger", help="a ledger file (configs/ledger/*.py)")
    p.add_argument("--from", dest="start", type=int, metavar="YEAR",
                   help="start year: innovations after it count (default: the ledger's period)")
    p.add_argument("--to", dest="end", type=int, metavar="YEAR",
                   help="end year; every gain is evaluated at its frontier compute (default: the ledger's period)")
    p.add_argument("--draws", type=int, default=4000, metavar="N",
                   help="Monte Carlo draws for the intervals (default 4000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ci", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--invert", action="store_true", help="print each gain as compute with / without it")
    p.add_argument("--json", metavar="FILE", help="write the accounting as JSON")
    p.add_argument("--plots", metavar="DIR", help="where PNGs go (default results/progress/<ledger name>)")
    p.add_argument("--no_plots", action="store_true")
    args = p.parse_args(argv)
    fit_scaling.check_level(args.ci)
    if args.draws < 1:
        raise UserError("--draws must be 1 or more")
    return args


def choose_period(ledger, args):
    """args.start and args.end: --from and --to, else the ledger's period."""
    period = ledger["period"] or (None, None)
    args.start = args.start if args.start is not None else period[0]
    args.end = args.end if args.end is not None else period[1]
    if args.start is None or args.end is None:
        raise UserError(f"{args.ledger} sets no period: give --from YEAR and --to YEAR")
    if args.end <= args.start:
        raise UserError(f"--from {args.start} --to {args.end}: the end year must come after the start year")


def account(ledger, args):
    """The accounting of the period (summarize's gains, totals and shares at the end year's compute, with their
    intervals), its warnings, the totals by year and by compute, and the sensitivity; and the curves to plot."""
    c_from, c_to = (float(c) for c in compute_at(ledger, [args.start, args.end], args.ledger))
    draws_point = draw_all(ledger, 1, None)
    draws_mc = draw_all(ledger, args.draws, np.random.default_rng(args.seed))
    point = innovation_logs(ledger, draws_point, [c_to], 1)
    mc = innovation_logs(ledger, draws_mc, [c_to], args.draws)
    out = summarize(ledger, args, c_to, point, mc, draws_point, draws_mc)
    out["warnings"] = [w for leaf in all_leaves(ledger) for w in leaf.get("warnings", [])]
    nz = out.get("normalization")
    if nz and abs(math.log(nz["product"])) < 0.1:
        out["warnings"].append(f"the normalized gains multiply to {nz['product']:.3g}, close to 1: their common "
                               f"exponent log(joint) / log(product) is ill-determined")
    if not math.isfinite(out["total"]):
        out["warnings"].append(f"a gain is unreachable at {fmt(c_to, 3)} FLOPs (the new law's loss is below the "
                               f"old law's floor E): the total is infinite")
    out["monte_carlo"] = {"draws": args.draws, "seed": args.seed, "level": args.ci,
                          "components_with_spread": spread_components(ledger)}
    curves_data = curves(ledger, args, draws_point, draws_mc)
    out["by_year"], out["by_compute"] = curve_totals(curves_data, args.ci)
    out["sensitivity"] = sensitivity(ledger, args, c_from, c_to)
    return out, curves_data


def curve_totals(curves_data, level):
    """The total with its interval at each whole year (at that year's compute) and at each whole decade of
    compute (the end year's innovations)."""
    t, c_t, by_year, grid, by_compute = curves_data
    whole = (t == np.round(t))
    total_year_mc = np.exp(by_year["mc"].sum(axis=0))
    years = [{"year": int(y), "compute": float(c), "total": float(np.exp(by_year["point"][:, 0, j].sum())),
              "interval": fit_scaling.interval(total_year_mc[:, j], level)}
             for j, (y, c) in enumerate(zip(t, c_t)) if whole[j]]
    total_c_mc = np.exp(by_compute["mc"].sum(axis=0))
    computes = [{"compute": float(c), "total": float(np.exp(by_compute["point"][:, 0, j].sum())),
                 "interval": fit_scaling.interval(total_c_mc[:, j], level)}
                for j, c in enumerate(grid) if j % 10 == 0]  # whole decades
    return years, computes


def write_plots(ledger, out, curves_data, args):
    plot_dir = args.plots or os.path.join("results", "progress", os.path.splitext(os.path.basename(args.ledger))[0])
    try:
        paths = make_plots(ledger, out, curves_data, out["sensitivity"], plot_dir)
    except OSError as e:
        raise UserError(f"cannot write plots to {plot_dir}: {e.strerror or e}; use --plots DIR or --no_plots")
    for path in paths:
        print(f"wrote {path}")
    return paths


def write_json(out, args):
    try:
        results.write_json(args.json, fit_scaling.to_json(out))
    except OSError as e:
        raise UserError(f"cannot write --json {args.json}: {e.strerror or e}")
    print(f"wrote {args.json}")


def run(argv):
    args = parse_args(argv)
    ledger = load_ledger(args.ledger)
    choose_period(ledger, args)
    out, curves_data = account(ledger, args)
    print_report(out, out["monte_carlo"]["components_with_spread"], len(all_leaves(ledger)), args)
    if not args.no_plots:
        out["plots"] = write_plots(ledger, out, curves_data, args)
    if args.json:
        write_json(out, args)
    return out


def main(argv=None):
    sys.exit(cli_main(run, argv))


if __name__ == "__main__":
    main()
