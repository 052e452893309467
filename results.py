"""
Run folders (the contract in ../shared/docs/results-format.md and the README): the one writer used by
train.py and the one reader used by sweep.py, analyze.py and fit_scaling.py.

    results/<study>/<run_name>/config.json   all config keys + "derived"
                              metrics.csv   one row per evaluation, plus a final row
                              final.json    written when the run ends, for any reason
                              anneal.csv    optional: annealed points of cooldown branches
                              ckpt.pt       latest checkpoint (ckpt.prev.pt: the one before)
                              run.lock      the owner's lock: one process trains a run folder at a time

Readers never raise on a damaged folder: what is wrong goes into run["problems"].
"""
import csv
import errno
import fcntl
import json
import math
import os
import socket
import sys
import time
from datetime import datetime, timezone

from configurator import UserError

# keys that change how a run is executed or reported, not its results: a resumed run may differ in these
EXECUTION_KEYS = ("overwrite", "keep_ckpt", "log_interval", "ckpt_interval", "num_threads", "compile", "fused_loss",
                  "peak_flops", "ddp_timeout_s", "lock_wait_s", "wandb_log", "wandb_project", "results_dir",
                  "data_dir")

METRICS_COLUMNS = ["step", "tokens", "flops", "train_loss", "val_loss", "lr", "elapsed_s"]
TASK_COLUMNS = ["train_acc", "val_acc"]  # rows (task) datasets add these
ANNEAL_COLUMNS = ["step", "tokens", "flops", "val_loss"]  # anneal.csv; extra columns may follow
STATUSES = ("completed", "diverged", "early_stopped", "time_limit", "interrupted")
FINISHED = ("completed", "diverged", "early_stopped", "time_limit")  # a re-run does not retrain these


# ----------------------------------------------------------------------------- writing

def atomic_write(path, write, binary=False, keep_previous=None):
    """Write through a temporary file and os.replace, so a killed process never leaves half a file.
    keep_previous: a path that keeps the file being replaced once the new one is complete (ckpt.prev.pt)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and os.path.exists(path):
            try:  # a hard link, so that path exists at every moment (a kill between two renames would leave none)
                if os.path.lexists(keep_previous):
                    os.remove(keep_previous)
                os.link(path, keep_previous)
            except OSError:  # filesystems without hard links: rename (a reader then falls back to keep_previous)
                os.replace(path, keep_previous)
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


# ----------------------------------------------------------------------------- ownership

LOCK_FILE = "run.lock"
REQUEUE_LOCK_WAIT_S = 180.0  # lock_wait_s=-1 for a requeued SLURM task: see lock_run_folder
_held = {}  # run folder (absolute path) -> its open lock file, while this process owns the run


class RunFolderBusy(UserError):
    """Another live process owns the run folder. train.py exits 75 on it (EX_TEMPFAIL, as for an interrupted
    run): the same command run later resumes the run, or reports it finished."""


def lock_run_folder(folder, wait_s=0.0):
    """Make this process the owner of a run folder (created if missing): an exclusive flock on folder/run.lock,
    held until release_run_folder or the end of the process, however it ends (the kernel drops a killed
    process's locks: no stale lock is ever left). The file records pid, host and time for others' messages.
    Waits up to wait_s seconds for another owner, then raises RunFolderBusy naming it. wait_s < 0: 180 s for a
    requeued SLURM task (SLURM_RESTART_COUNT > 0: an NFSv4 server frees a dead node's locks one lease, 90 s by
    default, after its last contact, and its clean-up may take one lease more), else 0. Returns the lock file,
    or None where the filesystem cannot lock (a warning says so; the run goes on unguarded)."""
    if wait_s < 0:
        wait_s = REQUEUE_LOCK_WAIT_S if int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0 else 0.0
    path = os.path.join(folder, LOCK_FILE)
    if os.path.abspath(folder) in _held:
        raise RunFolderBusy(f"{folder} is already owned by this process (pid {os.getpid()})")
    try:
        os.makedirs(folder, exist_ok=True)
        f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+")  # not truncated: the owner's record stays
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise UserError(f"cannot create {path}: {e.strerror}; the run folder must be writable by you")
    # a prober (sweep.py --list) holds a shared lock for an instant: retry for half a second at least
    start, told = time.monotonic(), False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            waited = time.monotonic() - start
            if waited >= max(wait_s, 0.5):
                f.seek(0)
                owner = describe_owner(f.read())
                f.close()
                raise RunFolderBusy(f"{folder} is in use by {owner}" + (f" (waited {waited:.0f} s)" if wait_s else "")
                                    + ": that process trains this run; wait for it or stop it, then run the same "
                                      "command again (it resumes the run, or reports it finished)")
            if wait_s >= 1 and not told:
                f.seek(0)
                print(f"waiting up to {wait_s:.0f} s for {folder}: in use by {describe_owner(f.read())}",
                      file=sys.stderr, flush=True)
                told = True
            time.sleep(0.05 if waited < 1 else 1.0)
        except OSError as e:  # ENOLCK: NFS without its lock service; EOPNOTSUPP/ENOSYS: Lustre without -o flock
            f.close()
            print(f"warning: cannot lock {path} ({e.strerror}): nothing stops a second process from training "
                  f"this run at the same time", file=sys.stderr, flush=True)
            return None
    f.seek(0)
    f.truncate()
    f.write(json.dumps(owner_record()) + "\n")
    f.flush()
    _held[os.path.abspath(folder)] = f
    return f


def owner_record():
    """This process as the lock file records it: pid, host, SLURM job (array job_task) and since when."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": job,
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}


def release_run_folder(folder):
    """Give up this process's ownership of folder (nothing happens if it does not own it)."""
    f = _held.pop(os.path.abspath(folder), None)
    if f is not None:
        f.close()  # closing the file drops the lock


def describe_owner(text):
    """'pid 123@node7 (SLURM job 99_3) since 2026-01-01 12:00:00 UTC' from a lock file's record."""
    try:
        r = json.loads(text)
        job = f" (SLURM job {r['slurm_job']})" if r.get("slurm_job") else ""
        return f"pid {r['pid']}@{r['host']}{job} since {r['since']}"
    except (ValueError, TypeError, KeyError, AttributeError):
        return "another process (not recorded yet)"


def read_lock_owner(folder):
    """Who owns a run folder now, as describe_owner says it; None if no live process holds its lock (or the
    filesystem cannot lock). Probed with a shared flock tried without waiting and dropped at once."""
    try:
        f = open(os.path.join(folder, LOCK_FILE))
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return describe_owner(f.read())
        except OSError:
            return None
    return None
