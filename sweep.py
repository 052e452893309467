"""
Run a study: many train.py runs described by one short sweep file, as a SLURM job array or on this machine.

    python sweep.py | sbatch                                  # the default sweep, configs/sweeps/smoke.py
    python sweep.py configs/sweeps/lr_scaling.py | sbatch     # print a job array script, submit it
    python sweep.py configs/sweeps/lr_scaling.py --list       # every run with its status (--commands: its command)
    python sweep.py configs/sweeps/lr_scaling.py --local -j 2 # run here, 2 at a time, cores split between them
    python sweep.py configs/sweeps/lr_scaling.py --max_tokens=2e8 --set widths=[512,1024] --gpus 4 | sbatch

A sweep file is plain Python that sets some of these names (see configs/sweeps/ for examples):

    study = "lr_scaling"                    # results go to <results_dir>/<study>/<run_name>/ (default: file name)
    base = ["configs/modern.py"]            # config files every run starts from
    fixed = dict(max_tokens=2_000_000)      # overrides for every run
    grid = dict(learning_rate=lr_grid(3e-3), n_layer=[2, 4])   # crossed: every combination
    runs = [dict(label="a"), dict(label="b", activation="relu")]  # explicit runs, crossed with the grid
    seeds = [1, 2, 3]                       # each run once per seed (a grid axis over `seed`)
    slurm = dict(time="02:00:00", gpus=1)   # defaults for the job-array options (--gpus, --time, ...)

Helpers in scope: lr_grid, width, variants, best_lr (the two-stage recipe), param (--set NAME=VALUE). Each run
is one train.py command whose layers train.py applies left to right: base + fixed, the runs entry, each grid
axis, the command line (--key=value for every run, --key=[a,b] a grid axis), then --run_name: train.py's
default name plus `_<key><value>` where runs would collide. Every run is checked up front with
train.resolve_config, so a bad value is one line naming the sweep file and the run. Idempotent: finished runs
are skipped, interrupted ones resume from their checkpoints, and a run a live process trains is left to it.
README "Sweeps and SLURM" has the rest: the layers, the job array and its requeueing, --local.
"""
import argparse
import collections
import contextlib
import functools
import glob
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types

import results
import train
from configurator import (ArgumentParser, UserError, available_cores, cli_main, closest_key, difference_text,
                          exec_user_file, parse_literal, split_override, unknown_key_error)

REPO = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SWEEP = os.path.join("configs", "sweeps", "smoke.py")
SWEEP_KEYS = ("study", "base", "fixed", "grid", "runs", "seeds", "slurm")
SLURM_KEYS = ("partition", "account", "gpus", "cpus", "mem", "time", "jobs", "sbatch")
# per architecture; the LSTM's too is 1 GPU: DDP pays only where a step hides the all-reduce, and asking for it
# (--gpus 2) is the sweep's choice, checked against every run's gradient_accumulation_steps
TEMPLATES = {"transformer": "slurm/train.sbatch", "lstm": "slurm/train.sbatch"}
DEFAULT_JOBS = 16  # the array's % limit: how many of its tasks may run at once
DONE = ("completed", "early_stopped", "time_limit")  # with diverged: results.FINISHED, never retrained
NAME_IGNORED = set(results.EXECUTION_KEYS) | {"run_name", "config_files"}  # never what tells runs apart


# ----------------------------------------------------------------------------------------- sweep-file helpers
def lr_grid(center, per_decade=2, decades=1):
    """Learning rates center * 10**(k / per_decade) for k = -n..n, n = decades * per_decade: the grid around a
    centre in steps of 1/per_decade decade (2: half-decade steps), rounded to 3 significant digits."""
    if not (isinstance(center, (int, float)) and center > 0 and math.isfinite(center)):
        raise UserError(f"lr_grid: the centre must be a positive number, got {center!r}")
    if not (isinstance(per_decade, int) and per_decade >= 1):
        raise UserError(f"lr_grid: per_decade must be a positive integer, got {per_decade!r}")
    n = round(decades * per_decade)
    return [float(f"{center * 10 ** (k / per_decade):.3g}") for k in range(-n, n + 1)]


def width(n):
    """The project's width preset as a bundle: {"config": "configs/widths/<n>d.py"} (n_embd with the depth and
    heads that go with it, by the one scaling rule those files follow)."""
    path = os.path.join("configs", "widths", f"{n}d.py")
    if not os.path.isfile(path):
        have = sorted(glob.glob(os.path.join("configs", "widths", "*d.py")))
        raise UserError(f"width({n}): no width preset {path}" + (
            f" (presets: {', '.join(os.path.basename(p)[:-3] for p in have)})" if have else "") +
                        "; add one, or set n_embd, n_layer and n_head in a dict instead")
    return {"config": path}


def variants(*patterns):
    """One run per config file matching the glob patterns (in the order given, each pattern's matches sorted),
    labelled by the file's name: variants("configs/modern.py", "configs/ablations/*.py")."""
    out = []
    for pattern in patterns:
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise UserError(f"variants: no config file matches {pattern!r}")
        out += [{"config": p, "label": os.path.splitext(os.path.basename(p))[0]} for p in paths]
    return out


@functools.lru_cache(maxsize=None)
def lr_tables(source):
    """(best-LR rows, trend rows) as analyze.py computes them, from a results folder or its --json file."""
    import analyze  # its best-LR code is the one definition of "best LR"
    if os.path.isfile(source):
        data, problem = results.read_json(source)
        if problem or not isinstance(data, dict) or not isinstance(data.get("best_lr"), list):
            raise UserError(f"best_lr: {source} is not the JSON file `analyze.py --json` writes ({problem or ''})")
        table = data["best_lr"]
        trends = data.get("lr_trend") or analyze.lr_trend([dict(r, study=r.get("study")) for r in table])
    else:
        if not os.path.isdir(source):
            raise UserError(f"best_lr: no results at {source}: run the LR sweep first (stage 1)")
        records, _ = analyze.load_runs(source)
        table = analyze.best_lr_table(records, "final")
        trends = analyze.lr_trend(table)
    return table, trends


def best_lr(source, width, label=None, arch=None, use="grid"):
    """The best learning rate at `width` (n_embd) from a finished LR sweep, for the two-stage recipe.
    source: the LR sweep's results folder (read with analyze.py's best-LR code) or analyze.py's --json file.
    use: 'grid' (best point of the grid), 'refined' (analyze's parabola-refined optimum; the grid point when there
    is none) or 'trend' (10**(a + b*log10(width)) from the fit across widths: also for widths not swept)."""
    if use not in ("grid", "refined", "trend"):
        raise UserError(f"best_lr: use must be 'grid', 'refined' or 'trend', got {use!r}")
    table, trends = lr_tables(source)
    if use == "trend":
        rows = [t for t in trends if (label is None or t["label"] == label) and (arch is None or t["arch"] == arch)]
    else:
        rows = [r for r in table if r.get("best_lr") and (label is None or r["label"] == label)
                and (arch is None or r["arch"] == arch)]
    groups = sorted({(r.get("study"), r["label"], r["arch"]) for r in rows}, key=str)
    if len(groups) > 1:
        raise UserError(f"best_lr: {source} has LR sweeps of several variants ({', '.join(map(str, groups))}); "
                        f"pass label= (and arch=) to pick one")
    if use == "trend":
        if not rows:
            raise UserError(f"best_lr: no lr(width) trend in {source} (it needs LR sweeps at 2 or more widths)")
        return float(f"{10 ** (rows[0]['a'] + rows[0]['b'] * math.log10(width)):.3g}")
    match = [r for r in rows if r["width"] == width]
    if not match:
        swept = sorted({r["width"] for r in rows})
        raise UserError(f"best_lr: no LR sweep at width {width} in {source} (widths swept: "
                        f"{', '.join(map(str, swept)) or 'none'}); use='trend' extrapolates from the fitted trend")
    row = match[0]
    if row.get("at_edge"):
        print(f"warning: best_lr: the best LR at width {width} in {source} is at the edge of the grid "
              f"({row['best_lr']:.3g}); widen the sweep toward {row.get('widen_toward') or 'the edge'} LR",
              file=sys.stderr)
    lr = row.get("refined_lr") if use == "refined" and row.get("refined_lr") else row["best_lr"]
    return float(f"{lr:.3g}")


# ----------------------------------------------------------------------------------------- reading a sweep file
def as_list(value):
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_sweep(path, params=None):
    """Execute a sweep file; returns its normalized settings. params: values for param(NAME, default)."""
    params = dict(params or {})
    if not os.path.isfile(path):
        have = sorted(glob.glob(os.path.join("configs", "sweeps", "*.py")))
        raise UserError(f"sweep file not found: {path}" + (f" (sweeps: {', '.join(have)})" if have else ""))
    asked = {}

    def param(name, default):
        """A value the command line can change: --set NAME=VALUE."""
        asked[name] = default
        return params.get(name, default)

    helpers = {"lr_grid": lr_grid, "width": width, "variants": variants, "best_lr": best_lr, "param": param}
    namespace = {"__name__": "__sweep__", **helpers}
    exec_user_file(path, namespace, "sweep file")
    for name in params:
        if name not in asked:
            raise UserError(f"--set {name}: {path} has no parameter '{name}'{closest_key(name, asked)}; "
                            f"its parameters: {', '.join(asked) or 'none'}")
    sweep = {"path": path, "params": {k: params.get(k, v) for k, v in asked.items()}}
    for key, value in namespace.items():
        if key.startswith("_") or key.isupper() or helpers.get(key) is value or isinstance(
                value, (types.ModuleType, types.FunctionType, type)):
            continue
        if key not in SWEEP_KEYS:
            raise UserError(f"{path}: unknown sweep key '{key}'{closest_key(key, SWEEP_KEYS)}; a sweep file sets "
                            f"{', '.join(SWEEP_KEYS)} (its own names: CAPITALS or a leading _)")
        sweep[key] = value
    return normalize(sweep, path)


def check_overrides(d, where, path):
    if not isinstance(d, dict):
        raise UserError(f"{path}: {where} must be a dict of config overrides, got {type(d).__name__}")
    for key in d:
        if key == "config":
            for f in as_list(d[key]):
                if not isinstance(f, str):
                    raise UserError(f"{path}: 'config' in {where} must be a config file path or a list of them")
            continue
        if key not in train.DEFAULTS:
            raise unknown_key_error(key, train.DEFAULTS, f"in {where} of {path}")
        if key in ("study", "overwrite"):
            raise UserError(f"{path}: '{key}' cannot be set in {where}: " + (
                "the study is the sweep's (study = ...)" if key == "study" else
                "overwrite=True would make a requeued task start over; delete the run folders instead"))


def normalize(sweep, path):
    study = sweep.get("study", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(study, str) or not study:
        raise UserError(f"{path}: study must be a name, got {study!r}")
    base = as_list(sweep.get("base"))
    if not all(isinstance(f, str) for f in base):
        raise UserError(f"{path}: base must be a config file path or a list of them")
    fixed = sweep.get("fixed") or {}
    check_overrides(fixed, "fixed", path)
    if "config" in fixed:
        raise UserError(f"{path}: config files for every run go in base = [...], not in fixed")
    grid = sweep.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"{path}: grid must be a dict of lists, got {type(grid).__name__}")
    grid = dict(grid)
    for key, values in grid.items():
        check_axis(key, values, f"grid axis '{key}'", path)
    seeds = sweep.get("seeds")
    if seeds is not None:
        if "seed" in grid:
            raise UserError(f"{path}: seeds and a grid axis 'seed' both given; keep one")
        if not (isinstance(seeds, (list, tuple)) and seeds and all(isinstance(s, int) for s in seeds)):
            raise UserError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r}")
        grid["seed"] = list(seeds)
    runs = sweep.get("runs")
    if runs is not None:
        if not isinstance(runs, (list, tuple)) or not runs:
            raise UserError(f"{path}: runs must be a non-empty list of override dicts")
        for i, entry in enumerate(runs):
            check_overrides(entry, f"runs[{i}]", path)
    slurm = sweep.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise UserError(f"{path}: slurm must be a dict with keys from {', '.join(SLURM_KEYS)}")
    for key in slurm:
        if key not in SLURM_KEYS:
            raise UserError(f"{path}: unknown slurm option '{key}'{closest_key(key, SLURM_KEYS)}; "
                            f"options: {', '.join(SLURM_KEYS)}")
    return {"path": path, "params": sweep["params"], "study": study, "base": base, "fixed": dict(fixed),
            "grid": grid, "runs": [dict(e) for e in runs] if runs else [{}], "slurm": dict(slurm)}


def check_axis(key, values, where, path):
    if not isinstance(values, (list, tuple)) or not values:
        raise UserError(f"{path}: {where} must be a non-empty list of values, got {values!r}")
    if key in train.DEFAULTS:
        if key in ("study", "overwrite"):
            check_overrides({key: None}, where, path)
        return
    if key == "config":
        for v in values:
            check_overrides({"config": v}, where, path)
        return
    for i, v in enumerate(values):  # not a config key: a bundle axis, each value a dict of overrides
        if not isinstance(v, dict):
            raise UserError(f"{path}: {where} is not a config key{closest_key(key, train.DEFAULTS)}; the values "
                            f"of such an axis must be dicts of overrides (like width(64)), got {v!r}")
        check_overrides(v, f"{where}[{i}]", path)


# ----------------------------------------------------------------------------------------- from sweep to runs
def arg_text(value):
    """A value as train.py's --key=value parser reads it back (configurator.parse_value): a bare word as it is,
    anything else as a literal ('1e-3' or 'True' meant as text must stay text)."""
    if isinstance(value, str) and parse_literal(value) is value:  # parse_literal gives back text it cannot read
        return value  # a bare word: --device=cpu
    return repr(value)


def expand(sweep, cli_fixed, cli_grid):
    """Every run of the sweep, as a record of its train.py arguments, config files, overrides and what varies
    (for messages). The arguments are layered in train.py's left-to-right order, each layer's config files before
    its --key=value overrides: base and fixed, the runs entry, each grid axis, the command line. So a later layer
    wins whichever form it takes, and a config file sees the values set before it (a width preset reads `arch`)."""
    # a command-line value replaces the sweep's axis of that key: --seed=7 runs each point once, with seed 7
    grid = {k: v for k, v in sweep["grid"].items() if k not in cli_grid and k not in cli_fixed}
    grid.update(cli_grid)  # command-line axes come last: they win over everything in the file
    runs = []
    for entry in sweep["runs"]:
        for point in itertools.product(*grid.values()):
            layers = [({"config": sweep["base"], **sweep["fixed"]}, False), (entry, len(sweep["runs"]) > 1)]
            for (key, values), value in zip(grid.items(), point):
                bundle = isinstance(value, dict) and key not in train.DEFAULTS  # width(64): several overrides
                layers.append((value if bundle else {key: value}, len(values) > 1))
            layers.append((cli_fixed, False))
            runs.append(run_record(sweep["study"], layers))
    return runs


def run_record(study, layers):
    """One run from its layers: (overrides, whether they vary across the sweep), in train.py's order."""
    run = {"files": [], "overrides": {}, "varied": {}, "args": [f"--study={arg_text(study)}"]}
    for layer, varies in layers:
        overrides = dict(layer)
        files = as_list(overrides.pop("config", None))
        run["files"] += files
        run["args"] += files + [f"--{k}={arg_text(v)}" for k, v in overrides.items()]
        run["overrides"].update(overrides)
        if varies:
            run["varied"].update(overrides)
    return run


def describe(run):
    shown = ", ".join(f"{k}={v!r}" for k, v in run["varied"].items()) or ", ".join(run["files"])
    return shown if len(shown) < 100 else shown[:97] + "..."


def resolve_runs(sweep, cli_fixed, cli_grid):
    """Expand, validate every run with train.resolve_config, name the runs. Raises UserError (one line)."""
    runs = expand(sweep, cli_fixed, cli_grid)
    path = sweep["path"]
    for f in sorted({f for r in runs for f in r["files"]}):
        if not os.path.isfile(f):
            raise UserError(f"{path}: config file not found: {f} (paths are relative to the folder sweep.py "
                            f"runs in: {os.getcwd()})")
    for i, run in enumerate(runs):
        try:
            run["config"] = train.resolve_config(run["args"])
        except UserError as e:
            raise UserError(f"{path}: run {i + 1} of {len(runs)} ({describe(run)}): {e}")
    name_runs(runs, path)
    folders = {os.path.dirname(r["folder"]) for r in runs}
    if len(folders) > 1:
        raise UserError(f"{path}: the runs of one sweep must share one study folder, got {', '.join(sorted(folders))}")
    return runs


def name_runs(runs, path):
    """train.py's default run name, plus a suffix where runs share one (unique_suffixes); then each run's
    --run_name and folder."""
    groups = {}
    for i, run in enumerate(runs):
        groups.setdefault(run["config"]["run_name"], []).append(i)
    names = [r["config"]["run_name"] for r in runs]
    for name, group in groups.items():
        if len(group) > 1:
            for i, suffix in zip(group, unique_suffixes(runs, group, name, path)):
                names[i] = name + suffix
    if len(set(names)) < len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"{path}: two runs end up named '{dup}'; give them distinct run_name values")
    for run, name in zip(runs, names):
        run["name"] = run["config"]["run_name"] = name
        run["args"] = run["args"] + [f"--run_name={name}"]
        run["folder"] = train.run_folder(run["config"])


def unique_suffixes(runs, group, name, path):
    """Suffixes that tell apart the runs (indices in group) sharing the default name: `_<key><value>` for each key
    that helps, in the order the sweep varies them (then alphabetical), until the names differ; where keys
    cannot, the config files' names."""
    if any("run_name" in runs[i]["overrides"] for i in group):
        raise UserError(f"{path}: run_name '{name}' is given to {len(group)} runs (runs "
                        f"{', '.join(str(i + 1) for i in group)}); names must be unique within the study")
    configs = [runs[i]["config"] for i in group]
    varied = list(dict.fromkeys(k for i in group for k in runs[i]["varied"]))
    suffixes = [""] * len(group)
    for key in varied + sorted(set(configs[0]) - set(varied)):
        if len(set(suffixes)) == len(group):
            break
        values = [c.get(key) for c in configs]
        if key not in NAME_IGNORED and len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            suffixes = more_distinct(suffixes, [s + name_part(key, v) for s, v in zip(suffixes, values)])
    stems = ["_" + "-".join(os.path.splitext(os.path.basename(f))[0] for f in runs[i]["files"]) for i in group]
    suffixes = more_distinct(suffixes, [s + stem for s, stem in zip(suffixes, stems)])
    for j, i in enumerate(group):
        if suffixes[j] in suffixes[:j]:
            raise UserError(f"{path}: runs {group[suffixes.index(suffixes[j])] + 1} and {i + 1} are the same run "
                            f"({describe(runs[i])}); remove one (a runs entry and the grid may set the same key)")
    return suffixes


def more_distinct(old, new):
    return new if len(set(new)) > len(set(old)) else old


def name_part(key, value):
    text = f"{value:.6g}" if isinstance(value, float) else "-".join(map(str, value)) if isinstance(
        value, (list, tuple)) else str(value)
    text = re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "none"
    return f"_{key}{'-' if text[0].isalpha() else ''}{text}"


# ----------------------------------------------------------------------------------------- status of runs
def run_status(run):
    """(status, detail): done | diverged | running | interrupted | running_or_killed | pending | config_changed |
    damaged. running: a live process holds the folder's lock (train.py, here or on another node); running_or_killed: no
    final.json and nobody holds the lock (killed, or on a filesystem without locks)."""
    folder = run["folder"]
    if not os.path.isdir(folder):
        return "pending", ""
    owner = results.read_lock_owner(folder)
    r = results.read_run(folder)
    if r["status"] == "not_started":
        return ("running", f"by {owner}, starting") if owner else ("pending", "")
    if r["config"] is not None:
        differing = train.config_differences(r["config"], run["config"])
        if "block_size" in differing:  # task datasets: train.py sets block_size from the rows it reads
            meta, _ = results.read_json(os.path.join(run["config"]["data_dir"], run["config"]["dataset"],
                                                     "meta.json"))
            if isinstance(meta, dict) and meta.get("kind") == "rows":
                differing.remove("block_size")
        if differing:
            return "config_changed", difference_text(r["config"], run["config"], differing[:3])
    final = r["final"] or {}
    loss = final.get("final_val_loss")
    detail = f"{final.get('steps')} steps" + (f", val_loss {loss:.4g}" if isinstance(loss, (int, float)) else "")
    if r["status"] in DONE:
        return "done", f"{r['status']}, {detail}"
    if r["status"] == "diverged":
        return "diverged", detail
    if owner:
        step = r["metrics"][-1]["step"] if r["metrics"] else 0
        return "running", f"by {owner}, last evaluation at step {step}"
    if r["status"] == "interrupted":
        return "interrupted", f"at step {final.get('steps')}: resumes from its checkpoint"
    if r["status"] == "running_or_killed":
        step = r["metrics"][-1]["step"] if r["metrics"] else 0
        return "running_or_killed", f"last evaluation at step {step}"
    return "damaged", "; ".join(r["problems"]) or f"unknown status {r['status']!r}"


def statuses(runs):
    """Set each run's status and detail; returns the runs whose folder holds a run with another config."""
    for run in runs:
        run["status"], run["detail"] = run_status(run)
    return [r for r in runs if r["status"] == "config_changed"]


def config_changed_error(changed, study_dir):
    r = changed[0]
    return UserError(f"{len(changed)} run folder(s) in {study_dir} hold a run with a different config (e.g. "
                     f"{r['name']}: {r['detail']}); train.py will not resume them: set another study "
                     f"(--study=NAME) or delete those folders")


def print_list(sweep, runs):
    study_dir = os.path.dirname(runs[0]["folder"])
    counts = collections.Counter(r["status"] for r in runs)
    order = ("done", "diverged", "running", "interrupted", "running_or_killed", "pending", "config_changed",
             "damaged")
    print(f"{sweep['study']}: {len(runs)} runs in {study_dir} (" +
          ", ".join(f"{counts[s]} {s}" for s in order if s in counts) + ")")
    if sweep["params"]:
        print("parameters (--set NAME=VALUE): " + ", ".join(f"{k}={v!r}" for k, v in sweep["params"].items()))
    width = max(len(r["name"]) for r in runs)
    for r in runs:
        print(f"  {r['status']:<17} {r['name']:<{width}}  {r['detail']}".rstrip())


# ----------------------------------------------------------------------------------------- SLURM job array
def parse_sbatch_line(line):
    """('--name', value or None) of an '#SBATCH --name=value' / '#SBATCH --name value' line, else (None, None)."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[1].startswith("--"):
        return None, None
    if "=" in parts[1]:
        name, value = parts[1].split("=", 1)
        return name, value
    return parts[1], parts[2].strip() if len(parts) > 2 else None


def read_template(path):
    """(#SBATCH lines, body) of an sbatch script: sbatch reads #SBATCH lines up to the first command."""
    with open(path) as f:
        lines = f.read().splitlines()
    header, i = [], 0
    while i < len(lines) and (not lines[i].strip() or lines[i].startswith("#")):
        if lines[i].startswith("#SBATCH"):
            header.append(lines[i].strip())
        i += 1
    return header, "\n".join(lines[i:]) + "\n"


def set_option(header, name, value):
    """Replace every '#SBATCH name...' line by one with this value (value None: remove them)."""
    out, placed = [], False
    for line in header:
        if parse_sbatch_line(line)[0] == name:
            if value is not None and not placed:
                out.append(f"#SBATCH {name}={value}" if value != "" else f"#SBATCH {name}")
                placed = True
            continue
        out.append(line)
    if value is not None and not placed:
        out.append(f"#SBATCH {name}={value}" if value != "" else f"#SBATCH {name}")
    return out


def option(header, name):
    return next((v for n, v in map(parse_sbatch_line, header) if n == name), None)


def gres_gpus(gres):
    """GPUs in a gres string such as 'gpu:2', 'gpu:a100:4(S:0-1)', 'gpu:1,shard:2' (0 for none or '(null)')."""
    return sum(int(m.group(1)) for m in re.finditer(r"\bgpu(?::[^:,()]+)?:(\d+)", gres or ""))


def seconds(slurm_time):
    """Seconds of a SLURM time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(slurm_time).strip())
    if not m:
        raise UserError(f"--time {slurm_time!r} is not a SLURM time (MM, HH:MM:SS or D-HH:MM:SS)")
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:  # D-HH[:MM[:SS]]
        return d * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if c is not None:
        return a * 3600 + b * 60 + c
    return a * 60 + (b or 0)


def megabytes(mem):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", str(mem).strip().upper())
    if not m:
        raise UserError(f"--mem {mem!r} is not a SLURM memory size (e.g. 16G, 4000M)")
    return float(m.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[m.group(2)]


def job_options(runs, sweep, args):
    """The #SBATCH lines of the array: the architecture's template, then the sweep's slurm dict, then the
    command line. Returns (header, body, template, settings)."""
    s = {k: v for k, v in sweep["slurm"].items()}
    s.update({k: getattr(args, k) for k in SLURM_KEYS if getattr(args, k) not in (None, [])})
    archs = sorted({r["config"]["arch"] for r in runs})
    templates = [TEMPLATES[a] for a in archs]
    header_of = {t: read_template(os.path.join(REPO, t)) for t in templates}
    template = max(templates, key=lambda t: gres_gpus(option(header_of[t][0], "--gres")))
    if len(set(templates)) > 1:
        print(f"note: this sweep mixes architectures ({', '.join(archs)}); every task gets the resources of "
              f"{template}. Separate sweep files per architecture waste no GPUs.", file=sys.stderr)
    header, body = header_of[template]
    if s.get("gpus") is not None:
        n = int(s["gpus"])
        if n < 0:
            raise UserError(f"--gpus must be >= 0, got {n}")
        gres = option(header, "--gres")
        for name in ("--gres", "--gpus", "--gpus-per-node", "--gpus-per-task"):
            header = set_option(header, name, None)
        if n > 0:
            spec = re.sub(r"\bgpu((?::[^:,()]+)?):\d+", rf"gpu\g<1>:{n}", gres) if gres_gpus(gres) else f"gpu:{n}"
            header = set_option(header, "--gres", spec)
    gpus = gres_gpus(option(header, "--gres"))
    if s.get("cpus") is not None:
        header = set_option(header, "--cpus-per-task", int(s["cpus"]))
    for key, name in (("partition", "--partition"), ("account", "--account"), ("mem", "--mem"),
                      ("time", "--time")):
        if s.get(key) is not None:
            header = set_option(header, name, s[key])
    for line in as_list(s.get("sbatch")):
        line = line.strip()
        line = line[len("#SBATCH"):].strip() if line.startswith("#SBATCH") else line
        name, value = parse_sbatch_line("#SBATCH " + line)
        if name is None:
            raise UserError(f"--sbatch {line!r}: write a long option, e.g. --sbatch=--qos=high")
        header = set_option(header, name, value if value is not None else "")
    limit = option(header, "--time")
    if limit:  # the warning signal must come well before the limit, or the run never gets going
        sig = option(header, "--signal")
        lead = re.search(r"@(\d+)$", sig or "")
        if lead and int(lead.group(1)) * 2 > seconds(limit):
            header = set_option(header, "--signal", re.sub(r"@\d+$", f"@{max(10, seconds(limit) // 4)}", sig))
    for r in runs:  # DDP divides gradient accumulation across the processes (one per GPU)
        accum = r["config"]["gradient_accumulation_steps"]
        if gpus > 1 and accum % gpus:
            raise UserError(f"{sweep['path']}: run {r['name']}: gradient_accumulation_steps={accum} is not "
                            f"divisible by the {gpus} DDP processes of a {gpus}-GPU task; use a multiple of {gpus} "
                            f"or --gpus 1")
    jobs = int(s.get("jobs") or DEFAULT_JOBS)
    return header, body, template, {"gpus": gpus, "jobs": jobs, "cpus": option(header, "--cpus-per-task"),
                                    "mem": option(header, "--mem")}


def check_cluster(header, settings, job_name):
    """Catch what sbatch would reject or leave pending forever: a request no node of the partition can hold, and
    tasks of the same sweep still queued. Quietly skipped where there is no SLURM client."""
    if not shutil.which("sinfo"):
        return
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%P|%c|%m|%G"], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        out = None
    if out is None or out.returncode != 0:
        print("note: could not query the cluster (sinfo); resources not checked", file=sys.stderr)
        return
    partition = option(header, "--partition")
    nodes = []
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 5:
            continue
        name, part, cpus, mem, gres = parts
        nodes.append({"name": name, "partition": part.rstrip("*"), "default": part.endswith("*"),
                      "cpus": int(re.sub(r"\D", "", cpus) or 0), "mem": int(re.sub(r"\D", "", mem) or 0),
                      "gpus": gres_gpus(gres)})
    if partition:
        wanted = set(partition.split(","))
        pool = [n for n in nodes if n["partition"] in wanted]
        if not pool:
            known = ", ".join(sorted({n["partition"] for n in nodes}))
            raise UserError(f"partition {partition} not found on this cluster (partitions: {known}); fix --partition "
                            f"or pass --no_check")
    else:
        pool = [n for n in nodes if n["default"]] or nodes
    if not pool:
        return
    cpus = int(settings["cpus"] or 1)
    mem = megabytes(settings["mem"]) if settings["mem"] and settings["mem"] != "0" else 0
    gpus = settings["gpus"]
    if not any(n["cpus"] >= cpus and n["mem"] >= mem and n["gpus"] >= gpus for n in pool):
        big = lambda k: max(n[k] for n in pool)
        where = f"partition {partition}" if partition else "the default partition"
        raise UserError(f"each task asks for {cpus} CPUs, {mem:.0f} MB memory and {gpus} GPUs, but no node of {where}"
                        f" has that (largest: {big('cpus')} CPUs, {big('mem')} MB, {big('gpus')} GPUs); lower the "
                        f"request with --cpus, --mem, or --gpus 0 for a CPU-only cluster (--no_check skips this)")
    try:
        queued = subprocess.run(["squeue", "-h", "-n", job_name, "-u", str(os.getuid()), "-o", "%i"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return
    ids = queued.stdout.split() if queued.returncode == 0 else []
    if ids:
        raise UserError(f"jobs of sweep '{job_name}' are still queued or running ({', '.join(ids[:5])}"
                        f"{' ...' if len(ids) > 5 else ''}): submitting again would run their runs twice; wait "
                        f"(squeue -n {job_name}), cancel them (scancel -n {job_name}), or pass --no_check")


def sbatch_script(sweep, runs, todo, args, command):
    """Write the task file and return the job-array script for the runs in todo."""
    header, body, template, settings = job_options(runs, sweep, args)
    study_dir = os.path.abspath(os.path.dirname(runs[0]["folder"]))
    job_name = sweep["study"]
    if not args.no_check:
        check_cluster(header, settings, job_name)
    sweep_dir = os.path.join(study_dir, "_sweep")
    os.makedirs(os.path.join(sweep_dir, "logs"), exist_ok=True)
    text = "".join(shlex.join(r["args"]) + "\n" for r in todo)
    # named by content: a later submission never rewrites the file an earlier array still reads
    tasks = os.path.join(sweep_dir, f"tasks-{hashlib.sha1(text.encode()).hexdigest()[:10]}.txt")
    if not os.path.exists(tasks):
        results.atomic_write(tasks, lambda f: f.write(text))
    header = set_option(header, "--job-name", job_name)
    header = set_option(header, "--array", f"1-{len(todo)}%{settings['jobs']}")
    header = set_option(header, "--output", os.path.join(sweep_dir, "logs", "%A_%a.out"))
    header = [h for h in header if parse_sbatch_line(h)[0] != "--error"]
    no_gpu = "export CUDA_VISIBLE_DEVICES=  # --gpus 0: train on the CPU even where a GPU is visible\n" \
        if settings["gpus"] == 0 else ""
    return (f"#!/bin/bash\n"
            f"# Job array of sweep '{sweep['study']}' ({sweep['path']}): {len(todo)} of its {len(runs)} runs, one "
            f"train.py run per task.\n"
            f"# Made by: {command}\n"
            f"# Status:  python sweep.py {shlex.join(args.argv_sweep)} --list\n"
            f"# Resources and run-time behaviour from {template}.\n"
            + "\n".join(header) + "\n\n"
            f"# This task's train.py arguments: line $SLURM_ARRAY_TASK_ID of the task file.\n"
            f"TASKS={shlex.quote(tasks)}\n"
            f"task_args=$(sed -n \"${{SLURM_ARRAY_TASK_ID}}p\" \"$TASKS\")\n"
            f"[ -n \"$task_args\" ] || {{ echo \"no line $SLURM_ARRAY_TASK_ID in $TASKS\" >&2; exit 1; }}\n"
            f"eval \"set -- $task_args\"\n"
            f"export TRAIN_PYTHON={shlex.quote(sys.executable)}\n"
            f"{no_gpu}\n"
            f"# ---- the body of {template}\n" + body)


# ----------------------------------------------------------------------------------------- running here
def run_local(sweep, runs, todo, jobs):
    """Run the pending runs here, `jobs` at a time, each with cores // jobs threads. A run that another process
    trains or has finished meanwhile (a second sweep, a job on the cluster) is left to it: checked before each
    start, and by train.py's own lock (exit 75 without our SIGTERM). Returns the exit status: 0 all finished (here
    or elsewhere), 1 some failed, 75 stopped by SIGINT/SIGTERM (the same command resumes)."""
    cores = available_cores()
    threads = max(1, cores // jobs)
    log_dir = os.path.join(os.path.dirname(runs[0]["folder"]), "_sweep", "logs")
    os.makedirs(log_dir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"{sweep['study']}: {len(todo)} of {len(runs)} runs to do, {jobs} at a time x {threads} thread"
          f"{'s' if threads > 1 else ''} ({cores} cores); logs in {log_dir}/", flush=True)
    queue, running = list(todo), {}  # running: Popen -> (run, its log file, start time)
    outcome = {"finished": [], "failed": [], "stopped": [], "elsewhere": []}  # lists of (run, exit status)
    stop, stopping = [], False  # the signals received; whether the runs have been told to stop
    handlers = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    start = last_report = time.time()
    try:
        while running or (queue and not stop):
            while queue and len(running) < jobs and not stop:
                run = queue.pop(0)
                status, detail = run_status(run)
                if status in ("done", "diverged", "running"):  # since the sweep started: another process has it
                    outcome["elsewhere"].append((run, None))
                    say(start, f"skip    {run['name']}  {elsewhere(status, detail)}  {tally(outcome, todo)}")
                    continue
                proc, log = start_run(run, log_dir, threads, env)
                running[proc] = (run, log, time.time())
                say(start, f"start   {run['name']}")
            if stop and not stopping:
                stopping = True
                say(start, f"{signal.Signals(stop[0]).name}: stopping {len(running)} run(s) at their next step "
                           f"(they checkpoint); the same command resumes them")
                for proc in running:
                    proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            for proc in [p for p in running if p.poll() is not None]:
                run, log, t0 = running.pop(proc)
                log.close()
                kind, word, what = how_it_ended(run, proc.returncode, stopping)
                outcome[kind].append((run, proc.returncode))
                say(start, f"{word:<7} {run['name']}  {what}, {time.time() - t0:.0f}s  {tally(outcome, todo)}")
            if running and time.time() - last_report > 30:
                last_report = time.time()
                say(start, "running: " + ", ".join(f"{r['name']} (step {last_step(r['folder'])})"
                                                   for r, _, _ in running.values()))
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
    print_local_summary(sweep, todo, outcome, log_dir, start)
    if stop:
        return train.EXIT_INTERRUPTED
    return 1 if outcome["failed"] or outcome["stopped"] else 0


def start_run(run, log_dir, threads, env):
    """train.py for one run, its output appended to the run's log; (process, log file)."""
    log = open(os.path.join(log_dir, f"{run['name']}.log"), "a")
    cmd = [sys.executable, os.path.join(REPO, "train.py")] + run["args"] + [f"--num_threads={threads}"]
    # own session: a Ctrl-C reaches sweep.py alone, which then stops each run once, cleanly
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, log


def how_it_ended(run, returncode, stopping):
    """(outcome kind, word for the progress line, what to say) of a run whose train.py exited."""
    status, detail = run_status(run)
    kind = "finished" if returncode == 0 else "stopped" if returncode == train.EXIT_INTERRUPTED else "failed"
    if kind == "stopped" and not stopping and status in ("done", "diverged", "running"):
        kind = "elsewhere"  # train.py found the folder owned by another process (its lock)
    word = {"finished": "diverged" if status == "diverged" else "done", "stopped": "stopped", "failed": "FAILED",
            "elsewhere": "skip"}[kind]
    what = {"failed": f"exit {returncode}", "elsewhere": elsewhere(status, detail)}.get(kind, detail)
    return kind, word, what


def elsewhere(status, detail):
    return f"running {detail}" if status == "running" else f"finished by another process: {detail}"


def say(start, text):
    print(f"[{time.time() - start:5.0f}s] {text}", flush=True)


def tally(outcome, todo):
    return f"[{counted(outcome)}/{len(todo)}]"


def counted(outcome):
    return len(outcome["finished"]) + len(outcome["failed"]) + len(outcome["elsewhere"])


def last_step(folder):
    rows, _ = results.read_metrics(os.path.join(folder, "metrics.csv"))
    return rows[-1]["step"] if rows else 0


def print_local_summary(sweep, todo, outcome, log_dir, start):
    """The closing line, and for each failed run the last line of its log and its command."""
    not_done = len(todo) - counted(outcome)
    print(f"{sweep['study']}: {len(outcome['finished'])} finished, {len(outcome['failed'])} failed"
          + (f", {len(outcome['elsewhere'])} left to another process" if outcome["elsewhere"] else "")
          + (f", {not_done} not finished (run the same command to resume)" if not_done else "")
          + f" in {time.time() - start:.0f}s")
    for run, code in outcome["failed"]:
        log = os.path.join(log_dir, f"{run['name']}.log")
        try:
            with open(log) as f:
                lines = [line.strip() for line in f.read().splitlines() if line.strip()]
        except OSError:
            lines = []
        print(f"  FAILED {run['name']}: exit {code}: {lines[-1][:200] if lines else '(empty log)'}\n"
              f"    log: {log}\n    command: python train.py {shlex.join(run['args'])}")


def prepare_embedded(runs):
    """The embedded corpus, prepared once before parallel runs or tasks would each start preparing it."""
    for data_dir in sorted({r["config"]["data_dir"] for r in runs if r["config"]["dataset"] == "stdlib"}):
        if not os.path.exists(os.path.join(data_dir, "stdlib", "meta.json")):
            print(f"preparing the embedded corpus in {data_dir}/stdlib (once)", file=sys.stderr, flush=True)
            from prepare import prepare
            with contextlib.redirect_stdout(sys.stderr):  # stdout may be the script on its way to sbatch
                prepare("stdlib", data_dir=data_dir)


# ----------------------------------------------------------------------------------------- command line
def parse_args(argv):
    p = ArgumentParser(prog="sweep.py", description=__doc__.split("\n\n")[0].strip(), allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Any train.py key: --key=value (every run) or --key=[v1,v2] (a grid axis). "
                              "The sweep-file format is in the module docstring (top of sweep.py).")
    p.add_argument("sweep", nargs="?", default=None, help=f"sweep file (default {DEFAULT_SWEEP})")
    p.add_argument("--list", action="store_true", help="print every run with its status, submit nothing")
    p.add_argument("--commands", action="store_true", help="print every run's train.py command, submit nothing")
    p.add_argument("--local", action="store_true", help="run the sweep on this machine instead of printing a script")
    p.add_argument("-j", "--jobs", type=int, help="runs at a time: --local workers (default 1), or the job "
                                                  f"array's %% limit (default {DEFAULT_JOBS})")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="set a parameter the sweep file reads with param(NAME, default)")
    g = p.add_argument_group("SLURM (override slurm/*.sbatch and the sweep's slurm dict)")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--gpus", type=int, help="GPUs per task (0: CPU-only, no --gres; >1: torchrun, one process each)")
    g.add_argument("--cpus", type=int, help="CPUs per task (--cpus-per-task)")
    g.add_argument("--mem", help="memory per task, e.g. 16G")
    g.add_argument("--time", help="time limit per task, e.g. 04:00:00 (tasks requeue themselves at the limit)")
    g.add_argument("--sbatch", action="append", default=[], metavar="LINE",
                   help="an extra #SBATCH option, e.g. --sbatch=--qos=high (repeatable)")
    g.add_argument("--no_check", action="store_true", help="skip the checks against the cluster (sinfo, squeue)")
    args, rest = p.parse_known_args(argv)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"-j must be at least 1, got {args.jobs}")
    args.params = {}
    for item in args.set:
        if "=" not in item:
            raise UserError(f"--set {item}: write --set NAME=VALUE")
        name, raw = item.split("=", 1)
        args.params[name.strip()] = parse_literal(raw)
    # the rest must be train.py overrides: --key=value for every run, --key=[a,b] for a grid axis
    args.cli_fixed, args.cli_grid = {}, {}
    for arg in rest:
        key, value = train_override(arg, p)
        if isinstance(value, list):
            if not value:
                raise UserError(f"--{key}=[]: a grid axis needs at least one value")
            args.cli_grid[key] = value
        else:
            args.cli_fixed[key] = value
    args.argv_sweep = [a for a in argv if a not in ("--list", "--commands", "--local")]
    return args


def train_override(arg, parser):
    """(key, value) of a train.py --key=value argument given to sweep.py (the value as a literal where it is one)."""
    if not arg.startswith("--") or "=" not in arg:
        name = arg.lstrip("-")
        if arg.startswith("--") and name in train.DEFAULTS:
            raise UserError(f"{arg} needs its value after '=': write {arg}=VALUE")
        options = [o.lstrip("-") for o in parser._option_string_actions if o.startswith("--")]
        hint = closest_key(name, options + list(train.DEFAULTS)) if arg.startswith("-") else ""
        raise UserError(f"unexpected argument '{arg}'{hint}; sweep.py's options are in --help, train.py keys "
                        f"take --key=value")
    key, raw = split_override(arg, train.DEFAULTS)
    if key == "overwrite":
        raise UserError("--overwrite cannot be used in a sweep (a requeued task would start over); delete the "
                        "run folders instead")
    return key, parse_literal(raw)


def run(argv):
    args = parse_args(argv)
    sweep = load_sweep(args.sweep or os.path.relpath(os.path.join(REPO, DEFAULT_SWEEP)), args.params)
    runs = resolve_runs(sweep, args.cli_fixed, args.cli_grid)
    if "study" in args.cli_fixed:  # --study=NAME: the progress lines and the job name say so
        sweep["study"] = str(args.cli_fixed["study"])
    if args.commands:
        for r in runs:
            print(f"python train.py {shlex.join(r['args'])}")
        return 0
    changed = statuses(runs)
    if args.list:
        print_list(sweep, runs)
        return 0
    study_dir = os.path.dirname(runs[0]["folder"])
    if changed:
        raise config_changed_error(changed, study_dir)
    todo = [r for r in runs if r["status"] not in ("done", "diverged", "running")]
    busy = [r for r in runs if r["status"] == "running"]  # another live process owns these: leave them to it
    for r in busy:
        print(f"skip {r['name']}: running {r['detail']}", file=sys.stdout if args.local else sys.stderr)
    finished = f"all {len(runs)} runs are finished" if not busy else \
        f"{len(runs) - len(busy)} runs are finished, {len(busy)} running in another process"
    if args.local:
        if not todo:
            print(f"{sweep['study']}: {finished} ({study_dir})")
            return 0
        prepare_embedded(todo)
        return run_local(sweep, runs, todo, args.jobs or 1)
    if not todo:
        print(f"{sweep['study']}: {finished} ({study_dir}); nothing to submit", file=sys.stderr)
        return 0
    submit(sweep, runs, todo, busy, args, "python sweep.py " + shlex.join(argv))
    return 0


def submit(sweep, runs, todo, busy, args, command):
    """Print the job-array script for the runs in todo (sbatch reads it from the pipe)."""
    if not os.path.samefile(os.getcwd(), REPO):
        raise UserError(f"run sweep.py from the repository root ({REPO}) to submit: the job runs train.py and "
                        f"slurm/requeue.sh from the folder sbatch is called in")
    prepare_embedded(todo)
    script = sbatch_script(sweep, runs, todo, args, command)
    sys.stdout.write(script)
    sys.stdout.flush()
    print(f"{sweep['study']}: a job array of {len(todo)} runs ({len(runs) - len(todo) - len(busy)} already "
          f"finished{f', {len(busy)} running in another process' if busy else ''}); logs will be in "
          f"{os.path.dirname(runs[0]['folder'])}/_sweep/logs/", file=sys.stderr)


def main(argv=None):
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
