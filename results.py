"""
Run folders (the contract in ../shared/docs/results-format.md and the README): the one writer used by
train.py and the one reader used by sweep.py, analyze.py and fit_scaling.py.

    results/<study>/<run_name>/config.json   all config keys + "derived"
                              metrics.csv   one row per evaluation, plus a final row
                              final.json    written when the run ends, for any reason
                              anneal.csv    optional: annealed points of cooldown branches
                              ckpt.pt       latest checkpoint (ckpt.prev.pt: the one before)

Readers never raise on a damaged folder: what is wrong goes into run["problems"].
"""
import csv
import json
import math
import os

METRICS_COLUMNS = ["step", "tokens", "flops", "train_loss", "val_loss", "lr", "elapsed_s"]
TASK_COLUMNS = ["train_acc", "val_acc"]  # rows (task) datasets add these
ANNEAL_COLUMNS = ["step", "tokens", "flops", "val_loss"]  # anneal.csv; extra columns may follow
STATUSES = ("completed", "diverged", "early_stopped", "time_limit", "interrupted")
FINISHED = ("completed", "diverged", "early_stopped", "time_limit")  # a re-run does not retrain these


# ----------------------------------------------------------------------------- writing

def atomic_write(path, write, binary=False):
    """Write through a temporary file and os.replace, so a killed process never leaves half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def finite_or_none(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, default=str) + "\n"))


def format_value(v):
    if isinstance(v, float):  # numpy floats too
        return repr(float(v)) if math.isfinite(v) else "nan"  # repr round-trips exactly
    return str(v)


def open_metrics(path, columns, keep_through_step=None):
    """Open metrics.csv for appending. A fresh run (keep_through_step None) starts a new file; a resumed
    run keeps the rows up to its checkpoint's step and drops the rest, so the finished file equals an
    uninterrupted run's."""
    kept = []
    if keep_through_step is not None and os.path.exists(path):
        rows, _ = read_metrics(path)
        kept = [r for r in rows if r["step"] <= keep_through_step]
    lines = [",".join(columns)] + [",".join(format_value(r.get(c, float("nan"))) for c in columns) for r in kept]
    atomic_write(path, lambda f: f.write("\n".join(lines) + "\n"))
    return open(path, "a")


def append_metrics(f, columns, row):
    f.write(",".join(format_value(row[c]) for c in columns) + "\n")
    f.flush()


def write_anneal(path, rows, columns=ANNEAL_COLUMNS):
    """Rewrite anneal.csv whole (atomically) with rows sorted by step: one row per finished cooldown branch."""
    rows = sorted(rows, key=lambda r: r["step"])
    lines = [",".join(columns)] + [",".join(format_value(r.get(c, float("nan"))) for c in columns) for r in rows]
    atomic_write(path, lambda f: f.write("\n".join(lines) + "\n"))


# ----------------------------------------------------------------------------- reading

def read_json(path):
    """(object, problem): problem is None when the file parsed."""
    try:
        with open(path) as f:
            return json.load(f), None
    except FileNotFoundError:
        return None, f"no {os.path.basename(path)}"
    except RecursionError:  # absurdly nested garbage
        return None, f"unreadable {os.path.basename(path)} (nested too deeply)"
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return None, f"unreadable {os.path.basename(path)} ({type(e).__name__})"


def parse_number(text):
    v = float(text)  # accepts 'nan', 'inf'; raises ValueError on garbage; too many digits give inf
    return int(v) if text.strip().lstrip("-").isdigit() and math.isfinite(v) else v


def read_metrics(path):
    """(rows, problems). Rows are dicts of numbers keyed by column; damaged lines are skipped and named.
    Reads anneal.csv too (same required columns)."""
    problems, name = [], os.path.basename(path)
    try:
        with open(path, newline="") as f:
            lines = list(csv.reader(f))
    except FileNotFoundError:
        return [], [f"no {name}"]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return [], [f"unreadable {name} ({type(e).__name__})"]
    if not lines:
        return [], [f"empty {name}"]
    header = [h.strip() for h in lines[0]]
    missing = [c for c in ("step", "tokens", "flops", "val_loss") if c not in header]
    if missing:
        return [], [f"{name} header lacks {', '.join(missing)}"]
    rows, bad = [], 0
    for line in lines[1:]:
        if not line:
            continue
        if len(line) != len(header):
            bad += 1
            continue
        try:
            rows.append({k: parse_number(v) for k, v in zip(header, line)})
        except ValueError:
            bad += 1
    if bad:
        problems.append(f"{bad} damaged line(s) in {name} skipped")
    return rows, problems


def read_run(path):
    """Everything in one run folder, never raising. Keys: path, name, config, derived, final, status,
    metrics (list of row dicts), anneal (annealed points from anneal.csv, sorted by step; [] without one),
    problems (list of strings)."""
    config, problem_c = read_json(os.path.join(path, "config.json"))
    final, problem_f = read_json(os.path.join(path, "final.json"))
    metrics, problems = read_metrics(os.path.join(path, "metrics.csv"))
    anneal = []
    if os.path.exists(os.path.join(path, "anneal.csv")):
        anneal, problems_a = read_metrics(os.path.join(path, "anneal.csv"))
        anneal = sorted(anneal, key=lambda r: r["step"])
        problems += problems_a
    if problem_c:
        problems.insert(0, problem_c)
    if problem_f and not problem_f.startswith("no "):
        problems.append(problem_f)
    if not isinstance(config, dict):
        config = None
    if not isinstance(final, dict):
        final = None
    if final is None:
        status = "running_or_killed" if config is not None else "not_started"
    else:
        status = final.get("status")
        status = status if isinstance(status, str) else "unknown"  # a hand-edited file: never a list or a number
    derived = (config or {}).get("derived") or {}
    return {"path": path, "name": os.path.basename(os.path.normpath(path)), "config": config,
            "derived": derived if isinstance(derived, dict) else {}, "final": final, "status": status,
            "metrics": metrics, "anneal": anneal, "problems": problems}


def is_run_folder(path):
    return any(os.path.exists(os.path.join(path, f)) for f in ("config.json", "metrics.csv", "final.json"))


def find_runs(root):
    """Run folders under root (root itself may be one), sorted; does not descend into run folders."""
    if is_run_folder(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        for d in list(dirnames):
            if is_run_folder(os.path.join(dirpath, d)):
                found.append(os.path.join(dirpath, d))
                dirnames.remove(d)
    return found
