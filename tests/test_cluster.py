"""Real clusters (issue 21): one process owns a run folder (an OS lock on run.lock, held for the run's life) and
tools work offline on compute nodes. On real processes: a second train.py on a folder whose owner is alive exits 75
with one line naming it and writes nothing; the owner SIGKILLed, the same command resumes at once and ends like an
uninterrupted run; a bounded wait for an owner that lets go; torchrun's ranks all leave when the folder is taken;
sweep.py --list shows an owned run as running and --local skips it; two --local sweeps of one study started
together train every run exactly once; wandb offline keeps every metrics.csv row in its offline run. Tiny models;
most of the time is process start-up. (Offline data and the tokenizer cache: tests/test_prepare.py.)"""
import fcntl
import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import results
import sweep
import train
from conftest import ROOT, run_script

# ckpt_interval=1: a checkpoint after every step, so a run frozen at any moment has one to resume from
TINY = dict(n_layer=1, n_embd=32, n_head=2, block_size=32, batch_size=4, num_threads=1, log_interval=5,
            eval_interval=20, max_iters=40, eval_iters=20, ckpt_interval=1, peak_flops=1e12, run_name="r")


def tiny_args(data_dir, results_dir, **changed):
    return [f"--{k}={v}" for k, v in {**TINY, "data_dir": data_dir, "results_dir": results_dir, **changed}.items()]


def comparable(folder):
    """metrics.csv rows and final.json without wall-clock fields."""
    rows, problems = results.read_metrics(os.path.join(folder, "metrics.csv"))
    final, _ = results.read_json(os.path.join(folder, "final.json"))
    assert not problems and final, problems
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows], \
        {k: v for k, v in final.items() if k != "elapsed_s"}


def in_process(args):
    """Train here (the uninterrupted reference) and return the run's comparable results."""
    config = train.resolve_config(args)
    assert train.train(config) == "completed"
    return comparable(train.run_folder(config))


def snapshot(folder):
    return {name: (os.path.getsize(os.path.join(folder, name)), os.stat(os.path.join(folder, name)).st_mtime_ns)
            for name in sorted(os.listdir(folder))}


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def popen(script, args, cwd, env=None):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition, what, proc, timeout=120):
    t0 = time.time()
    while not condition():
        assert proc.poll() is None and time.time() - t0 < timeout, f"never saw {what} (exit {proc.poll()})"
        time.sleep(0.02)


def hold_lock(folder):
    """An owner that is not train.py (here: this test), by the same OS lock: (open file, its release)."""
    os.makedirs(folder, exist_ok=True)
    f = open(os.path.join(folder, results.LOCK_FILE), "a+")
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    f.seek(0)
    f.truncate()
    f.write(json.dumps(results.owner_record()))
    f.flush()
    return f


# ----------------------------------------------------------------------------- train.py owns its run folder

def test_second_process_exits_at_once_then_sigkilled_owner_is_resumed(stdlib_data, tmp_path):
    """The owner, a real train.py, frozen mid-run (SIGSTOP: alive, holding its lock): the same command exits 75 with
    one line naming the owner's pid@host and leaves every file as it was. The owner SIGKILLed, the kernel drops its
    lock: the same command resumes from the checkpoint and ends with the metrics of an uninterrupted run."""
    reference = in_process(tiny_args(stdlib_data, str(tmp_path / "reference")))
    args = tiny_args(stdlib_data, str(tmp_path))
    folder = os.path.join(tmp_path, "default", "r")
    owner = popen("train.py", args, tmp_path)
    try:
        lines = []
        threading.Thread(target=lambda: lines.extend(owner.stdout), daemon=True).start()
        wait_for(lambda: any("step 10/40 |" in line for line in lines), "training under way", owner)
        owner.send_signal(signal.SIGSTOP)
        assert f"pid {owner.pid}@{socket.gethostname()} since " in results.read_lock_owner(folder)
        before = snapshot(folder)
        assert {"config.json", "metrics.csv", "ckpt.pt", "run.lock"} <= set(before)

        t0 = time.time()
        second = run_script("train.py", args + ["--lock_wait_s=0"], cwd=tmp_path)
        assert second.returncode == train.EXIT_INTERRUPTED, second.stderr[-2000:]
        [line] = error_lines(second.stderr)
        assert f"is in use by pid {owner.pid}@{socket.gethostname()} since " in line and folder in line
        assert "Traceback" not in second.stderr and snapshot(folder) == before  # nothing written, nothing read away
        print(f"second process: exit 75 after {time.time() - t0:.1f} s (most of it importing torch)")

        owner.kill()  # SIGKILL (a stopped process dies too): no chance to clean up, and no stale lock either
        owner.wait(timeout=30)
        assert results.read_lock_owner(folder) is None
        resumed = run_script("train.py", args, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "resuming" in resumed.stdout and comparable(folder) == reference
    finally:
        if owner.poll() is None:
            owner.kill()


def test_bounded_wait_for_an_owner_that_lets_go(stdlib_data, tmp_path, monkeypatch):
    """lock_wait_s: the second process says it waits, and trains once the owner lets go within the bound. -1 (the
    default) waits only for a requeued SLURM task (SLURM_RESTART_COUNT > 0), shortened here from 180 s."""
    args = tiny_args(stdlib_data, str(tmp_path), max_iters=10, eval_interval=10)
    folder = os.path.join(tmp_path, "default", "r")
    held = hold_lock(folder)
    waiting = popen("train.py", args + ["--lock_wait_s=120"], tmp_path)
    err = []
    threading.Thread(target=lambda: err.extend(waiting.stderr), daemon=True).start()
    try:
        wait_for(lambda: any("waiting up to 120 s for" in line for line in err), "the waiting line", waiting)
        time.sleep(0.5)
        assert waiting.poll() is None and not os.path.exists(os.path.join(folder, "config.json"))
        held.close()  # the owner lets go
        assert waiting.wait(timeout=120) == 0, "".join(err)[-2000:]
        assert results.read_run(folder)["status"] == "completed"
    finally:
        if waiting.poll() is None:
            waiting.kill()

    other = str(tmp_path / "other")
    held = hold_lock(other)
    try:
        monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
        t0 = time.time()
        owned = r"is in use by pid \d+@\S+ since \d{4}-\d\d-\d\d [\d:]+ UTC"
        with pytest.raises(results.RunFolderBusy, match=owned + ": that process trains"):
            results.lock_run_folder(other, -1)  # not a requeued SLURM task: no wait
        assert time.time() - t0 < 2
        monkeypatch.setattr(results, "REQUEUE_LOCK_WAIT_S", 1.5)
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        t0 = time.time()
        with pytest.raises(results.RunFolderBusy, match=owned + r" \(waited \d s\): that process trains"):
            results.lock_run_folder(other, -1)
        assert 1.5 <= time.time() - t0 < 5
    finally:
        held.close()
    assert results.lock_run_folder(other) is not None and results.read_lock_owner(other).startswith(
        f"pid {os.getpid()}@")
    results.release_run_folder(other)
    assert results.read_lock_owner(other) is None


def test_torchrun_ranks_all_leave_when_the_folder_is_taken(stdlib_data, tmp_path):
    """Only rank 0 takes the lock; it tells the others (the decision it broadcasts), so no rank waits for it."""
    args = tiny_args(stdlib_data, str(tmp_path), max_iters=10, eval_interval=10, ddp_timeout_s=60,
                     gradient_accumulation_steps=2)
    folder = os.path.join(tmp_path, "default", "r")
    held = hold_lock(folder)
    try:
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              os.path.join(ROOT, "train.py"), *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode != 0 and time.time() - t0 < 55  # well before a collective would time out (60 s)
        assert sum("is in use by pid" in line for line in error_lines(out.stderr)) == 2, out.stderr[-3000:]
        assert sorted(os.listdir(folder)) == ["run.lock"]
    finally:
        held.close()


# ----------------------------------------------------------------------------- sweep.py and owned runs

def race_sweep(tmp_path, data_dir, n_runs):
    lrs = [1e-3, 2e-3, 3e-3][:n_runs]
    fixed = {**{k: v for k, v in TINY.items() if k not in ("run_name", "num_threads")}, "max_iters": 20,
             "eval_interval": 10, "log_interval": 10, "data_dir": data_dir, "results_dir": str(tmp_path / "results")}
    path = tmp_path / "race.py"
    path.write_text(f"study = 'race'\nfixed = {fixed!r}\ngrid = dict(learning_rate={lrs!r})\n")
    s = sweep.load_sweep(str(path))
    return str(path), sweep.resolve_runs(s, {}, {})


def test_list_shows_an_owned_run_as_running_and_local_skips_it(stdlib_data, tmp_path, capsys):
    path, runs = race_sweep(tmp_path, stdlib_data, 2)
    held = hold_lock(runs[0]["folder"])
    try:
        assert sweep.main([path, "--list"]) == 0
        listing = capsys.readouterr().out.splitlines()
        assert "(1 running, 1 pending)" in listing[0]
        assert listing[1].split()[:2] == ["running", runs[0]["name"]] and f"by pid {os.getpid()}@" in listing[1]
        assert sweep.main([path, "--local"]) == 0  # here: its train.py runs are processes of their own anyway
        out = capsys.readouterr().out
        assert f"skip {runs[0]['name']}: running by pid {os.getpid()}@" in out and "race: 1 finished, 0 failed" in out
        assert os.listdir(runs[0]["folder"]) == ["run.lock"]  # left alone
    finally:
        held.close()
    assert results.read_run(runs[1]["folder"])["status"] == "completed"
    assert sweep.main([path, "--list"]) == 0 and "(1 done, 1 pending)" in capsys.readouterr().out


def test_two_local_sweeps_started_together_train_every_run_once(stdlib_data, tmp_path, capsys):
    """Both start the first run together (same statuses at start): the lock lets one train it, the other's train.py
    exits 75 (or finds it finished) and that sweep leaves it to its owner and goes on to the next run, which the
    first sweep then finds owned or finished. Every log has one 'completed:' line and every run ends as a lone run
    with the same threads does."""
    path, runs = race_sweep(tmp_path, stdlib_data, 2)
    other = popen("sweep.py", [path, "--local", "-j", "1"], ROOT)  # one sweep in a process of its own,
    first = other.stdout.readline()  # ... has read the statuses ("race: 2 of 2 runs to do")
    assert sweep.main([path, "--local", "-j", "1"]) == 0  # and the other, here, reads the same ones
    out, err = other.communicate(timeout=300)
    outs = [(first + out, err), (capsys.readouterr().out, "")]
    assert other.returncode == 0 and "2 of 2 runs to do" in first, first + out + err
    for run in runs:
        with open(os.path.join(tmp_path, "results", "race", "_sweep", "logs", f"{run['name']}.log")) as f:
            log = f.read().splitlines()
        assert sum(line.startswith("completed: ") for line in log) == 1, "\n".join(log)
    print("\n".join(line for out, _ in outs for line in out.splitlines() if "skip" in line or "finished" in line))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = cores  # what sweep.py gives each run with -j 1
    import torch
    before = torch.get_num_threads()
    try:
        for run in runs:
            reference = in_process(run["args"] + [f"--results_dir={tmp_path / 'reference'}",
                                                  f"--num_threads={threads}"])
            assert comparable(run["folder"]) == reference
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- wandb offline

def wandb_records(path):
    """The records of a .wandb file (wandb's transaction log: a 7-byte header, then 32 KiB blocks of chunks, each
    with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last), as protobuf Records."""
    from wandb.proto import wandb_internal_pb2
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, record, out = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        record += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(wandb_internal_pb2.Record.FromString(record))
            record = b""
    return out


def test_wandb_offline_run_holds_every_metrics_row(stdlib_data, tmp_path):
    pytest.importorskip("wandb")
    args = tiny_args(stdlib_data, str(tmp_path), max_iters=20, eval_interval=10, wandb_log=True)
    out = run_script("train.py", args, cwd=tmp_path, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert out.returncode == 0, out.stderr[-2000:]
    folder = os.path.join(tmp_path, "default", "r")
    [log] = glob.glob(os.path.join(folder, "wandb", "offline-run-*", "run-*.wandb"))  # what `wandb sync` uploads
    logged = {}
    for r in wandb_records(log):
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            logged[items["_step"]] = items
    rows, _ = results.read_metrics(os.path.join(folder, "metrics.csv"))
    assert [r["step"] for r in rows] == [10, 20] and sorted(logged) == [10, 20]
    for row in rows:
        assert {k: logged[row["step"]][k] for k in ("val_loss", "train_loss", "tokens", "lr")} == \
            {k: row[k] for k in ("val_loss", "train_loss", "tokens", "lr")}
