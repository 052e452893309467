"""Faults a weekend-long sweep meets (issue 10), on real processes with real signals: SIGKILL while a checkpoint is
being written and during an evaluation, SIGUSR1 during start-up (after a killed prepare.py), SIGTERM during an
evaluation, a full disk and a file-size limit, a DDP rank that dies or hangs; each time the same command then
finishes the run with the metrics.csv and final.json of an uninterrupted run. Killed runs' folders are reported by
analyze.py and sweep.py --list. Last, values that used to crash after start-up, and the battery of bad inputs:
every script, one `error:` line, exit 2, nothing written. (test_train.py has SIGKILL at other points, SIGTERM
mid-run and mid-accumulation, damaged checkpoints and a changed config.) Tiny models (1 layer, width 32); about
2-3 minutes on 2 cores, most of it process start-up."""
import contextlib
import io
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import analyze
import prepare
import results
import sweep
import train
from configurator import UserError
from conftest import ROOT, run_script

# Every step checkpoints (ckpt_interval=1: many writes to interrupt); evaluations at steps 20 and 40 read 150
# validation batches (half a second or more each: long enough to be hit by a signal). peak_flops set: no CPU
# measurement at start-up. ckpt_interval, peak_flops, data_dir and results_dir are execution keys: runs that
# differ only in them must give the same results.
SLOW = dict(n_layer=1, n_embd=32, n_head=2, block_size=32, batch_size=4, num_threads=1, log_interval=5,
            eval_interval=20, max_iters=40, eval_iters=150, dropout=0.1, ckpt_interval=1, peak_flops=1e12,
            run_name="r")


def slow_args(data_dir, results_dir, **changed):
    return [f"--{k}={v}" for k, v in {**SLOW, "data_dir": data_dir, "results_dir": results_dir, **changed}.items()]


class Process:
    """A script in a subprocess whose stdout and stderr lines are collected as they come, so that a test can wait
    for a line (e.g. the progress line printed just before an evaluation starts)."""

    def __init__(self, argv, cwd, env=None, **popen):
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, **popen)
        self.out, self.err = [], []
        self.readers = [threading.Thread(target=self.read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.readers:
            t.start()

    @staticmethod
    def read(stream, lines):
        for line in stream:
            lines.append(line.rstrip("\n"))

    def saw(self, text):
        return any(text in line for line in list(self.out))

    def wait_until(self, condition, what, timeout=120):
        t0 = time.time()
        while not condition():
            if self.proc.poll() is not None or time.time() - t0 > timeout:
                raise AssertionError(f"never saw {what} (exit {self.proc.poll()}):\n" + "\n".join(self.err[-20:]))
            time.sleep(0.01)

    def signal(self, signum):
        self.proc.send_signal(signum)
        return time.time()

    def finish(self, timeout=120):
        rc = self.proc.wait(timeout=timeout)
        for t in self.readers:
            t.join(timeout=10)
        return rc

    @property
    def stderr(self):
        return "\n".join(self.err)


def train_process(args, cwd, **popen):
    return Process([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd, **popen)


def rows_of(folder):
    return results.read_metrics(os.path.join(folder, "metrics.csv"))[0]


def comparable_rows(folder):
    """metrics.csv rows without the wall-clock column."""
    rows, problems = results.read_metrics(os.path.join(folder, "metrics.csv"))
    assert not problems, problems
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def comparable(folder):
    """metrics.csv rows and final.json without wall-clock fields."""
    final, problem = results.read_json(os.path.join(folder, "final.json"))
    assert final is not None, problem
    return comparable_rows(folder), {k: v for k, v in final.items() if k != "elapsed_s"}


def leftovers(folder):
    return sorted(name for name in os.listdir(folder) if ".tmp" in name)


def same_command_finishes_like_the_reference(args, cwd, folder, reference):
    out = run_script("train.py", args, cwd=cwd)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "resuming" in out.stdout
    assert comparable(folder) == reference
    assert leftovers(folder) == []  # temporary files of the killed writes are gone


@pytest.fixture(scope="module")
def reference(stdlib_data, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce: (comparable rows and final, its folder)."""
    root = tmp_path_factory.mktemp("reference")
    out = run_script("train.py", slow_args(stdlib_data, root), cwd=root)
    assert out.returncode == 0, out.stderr
    folder = os.path.join(root, "default", "r")
    assert [r["step"] for r in rows_of(folder)] == [20, 40]
    return comparable(folder), folder


def stop_during_evaluation(run, folder):
    """Freeze the run (SIGSTOP) inside its evaluation at step 20: after the progress line printed just before it,
    before the row written just after it."""
    run.wait_until(lambda: run.saw("step 20/40 |"), "the progress line before the evaluation at step 20")
    time.sleep(0.1)
    run.signal(signal.SIGSTOP)
    assert not run.saw("step 20: val loss") and rows_of(folder) == []  # still evaluating


# ----------------------------------------------------------------------------- SIGKILL


def test_sigkill_while_a_checkpoint_is_written(stdlib_data, tmp_path, reference):
    """Caught in the act: the process is frozen (SIGSTOP) the moment its ckpt.pt.tmp<pid> exists, and killed only
    if the file is still there, i.e. inside save_checkpoint (perhaps between its two renames, when only
    ckpt.prev.pt is in place). The previous checkpoint must carry the resume."""
    args = slow_args(stdlib_data, tmp_path)
    folder = os.path.join(tmp_path, "default", "r")
    run = train_process(args, tmp_path)
    tmp = os.path.join(folder, f"ckpt.pt.tmp{run.proc.pid}")
    run.wait_until(lambda: os.path.exists(os.path.join(folder, "ckpt.pt")), "the first checkpoint")
    caught, t0 = False, time.time()
    while not caught and run.proc.poll() is None and time.time() - t0 < 60:
        if os.path.exists(tmp):
            run.signal(signal.SIGSTOP)
            caught = os.path.exists(tmp)
            run.signal(signal.SIGKILL if caught else signal.SIGCONT)
    run.finish()
    assert caught, "no checkpoint write was caught"
    assert os.path.exists(tmp) and not os.path.exists(os.path.join(folder, "final.json"))
    assert train.load_checkpoint(folder)["state"]["step"] >= 1  # an earlier, complete checkpoint
    same_command_finishes_like_the_reference(args, tmp_path, folder, reference[0])


def test_sigkill_during_evaluation_and_the_killed_folder_is_reported(stdlib_data, tmp_path, reference, capsys):
    args = slow_args(stdlib_data, tmp_path)
    folder = os.path.join(tmp_path, "default", "r")
    run = train_process(args, tmp_path)
    stop_during_evaluation(run, folder)
    run.signal(signal.SIGKILL)
    run.finish()
    assert rows_of(folder) == [] and not os.path.exists(os.path.join(folder, "final.json"))

    # Monday morning, before anyone re-runs it: analyze.py and sweep.py --list name the killed run
    shutil.copytree(reference[1], os.path.join(tmp_path, "default", "finished"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        assert analyze.main([os.path.join(tmp_path, "default"), "--no-plots", "--verbose"]) == 0
    assert "read 1 run(s)" in out.getvalue() and "1 running or killed (no final.json)" in out.getvalue()
    fixed = {k: v for k, v in SLOW.items() if k != "run_name"}
    sweep_file = tmp_path / "weekend.py"
    sweep_file.write_text(f"study = 'default'\nfixed = {dict(fixed, data_dir=stdlib_data, results_dir=str(tmp_path))!r}"
                          f"\nruns = [dict(run_name='r')]\n")
    capsys.readouterr()
    assert sweep.main([str(sweep_file), "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert "(1 running_or_killed)" in listing[0]
    assert listing[-1].split()[:2] == ["running_or_killed", "r"] and "last evaluation at step 0" in listing[-1]

    same_command_finishes_like_the_reference(args, tmp_path, folder, reference[0])


# ----------------------------------------------------------------------------- SIGTERM / SIGUSR1


def test_sigterm_during_evaluation_finishes_it_checkpoints_and_exits(stdlib_data, tmp_path, reference):
    args = slow_args(stdlib_data, tmp_path)
    folder = os.path.join(tmp_path, "default", "r")
    run = train_process(args, tmp_path)
    stop_during_evaluation(run, folder)
    t0 = run.signal(signal.SIGTERM)
    run.signal(signal.SIGCONT)
    assert run.finish(timeout=60) == train.EXIT_INTERRUPTED, run.stderr
    assert time.time() - t0 < 20  # the rest of one evaluation (under a second here) and a checkpoint
    final = results.read_run(folder)["final"]
    assert final["status"] == "interrupted" and final["steps"] == 20
    assert [r["step"] for r in rows_of(folder)] == [20]  # the evaluation under way was finished and kept
    same_command_finishes_like_the_reference(args, tmp_path, folder, reference[0])


def test_prepare_killed_then_sigusr1_during_start_up(tmp_path, reference):
    """prepare.py killed mid-build leaves only its temporary folder; train.py rebuilds the embedded corpus at
    start-up, and SIGUSR1 (SLURM's warning) meanwhile ends the run cleanly at step 0; the same command resumes."""
    data = tmp_path / "data"
    build = Process([sys.executable, os.path.join(ROOT, "prepare.py"), "stdlib", "--data_dir", str(data)], tmp_path)
    build.wait_until(lambda: data.is_dir() and any(".stdlib.tmp-" in n for n in os.listdir(data)),
                     "prepare.py's build folder")
    build.signal(signal.SIGKILL)
    build.finish()
    assert not (data / "stdlib" / "meta.json").exists()
    assert any(".stdlib.tmp-" in n for n in os.listdir(data))  # what the killed build left

    args = slow_args(data, tmp_path)
    folder = os.path.join(tmp_path, "default", "r")
    run = train_process(args, tmp_path)
    run.wait_until(lambda: run.saw("preparing the embedded corpus"), "the start of the corpus build")
    t0 = run.signal(signal.SIGUSR1)
    assert run.finish(timeout=60) == train.EXIT_INTERRUPTED, run.stderr
    assert time.time() - t0 < 30  # the corpus build (a second or so) and a checkpoint at step 0
    assert run.saw("left behind by a prepare that was killed")
    assert os.listdir(data) == ["stdlib"] and prepare.load_dataset(str(data), "stdlib")["train"].size
    run_state = results.read_run(folder)
    assert run_state["final"]["status"] == "interrupted" and run_state["final"]["steps"] == 0
    same_command_finishes_like_the_reference(args, tmp_path, folder, reference[0])


# ----------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a chosen size (root only): (mount point, resize function)."""
    point = tmp_path / "disk"
    point.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(point)], capture_output=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.decode().strip()}); the file-size-limit test "
                    f"covers the same path")

    def resize(size):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(point)], check=True)

    try:
        yield point, resize
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def assert_one_error_line(stderr, starts):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(starts), stderr[-3000:]


def test_disk_full_is_one_line_and_the_same_command_resumes_after(stdlib_data, tmp_path, reference, small_disk):
    """Room for two checkpoints and the small files, not three: the run fills the disk at its last checkpoint
    (the checkpoints at the evaluations at steps 20 and 40 fit; the one at the end needs a third copy)."""
    point, resize = small_disk
    ckpt_bytes = os.path.getsize(os.path.join(reference[1], "ckpt.pt"))
    resize(2 * ckpt_bytes + 48 * 1024)
    args = slow_args(stdlib_data, point, ckpt_interval=0)  # checkpoints at the evaluations
    folder = os.path.join(point, "default", "r")
    out = run_script("train.py", args, cwd=tmp_path)
    assert out.returncode == 2
    assert_one_error_line(out.stderr, f"error: No space left on device while writing {folder}")
    assert "run the same command again to resume" in out.stderr
    assert comparable_rows(folder) == reference[0][0]  # every row written before the disk filled is intact
    assert train.load_checkpoint(folder)["state"]["step"] == 40 and leftovers(folder) == []
    assert results.read_run(folder)["status"] == "running_or_killed"
    resize("16m")  # the user frees space
    same_command_finishes_like_the_reference(args, tmp_path, folder, reference[0])


def test_file_size_limit_is_one_line_and_earlier_results_are_intact(stdlib_data, tmp_path, reference):
    """RLIMIT_FSIZE (no root needed): the first checkpoint is larger than any file may be, so writing it fails
    with EFBIG, treated like a full disk (the quota-exceeded EDQUOT of a shared cluster is too)."""
    limit = os.path.getsize(os.path.join(reference[1], "ckpt.pt")) // 2

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails instead of killing

    args = slow_args(stdlib_data, tmp_path, ckpt_interval=0)
    folder = os.path.join(tmp_path, "default", "r")
    out = run_script("train.py", args, cwd=tmp_path, preexec_fn=limited)
    assert out.returncode == 2
    assert_one_error_line(out.stderr, f"error: File too large while writing {folder}")
    assert comparable_rows(folder) == reference[0][0][:1]  # the row of step 20, written before the checkpoint
    assert sorted(os.listdir(folder)) == ["config.json", "metrics.csv", "run.lock"]  # no half checkpoint left


# ----------------------------------------------------------------------------- DDP


def worker_pids(parent):
    """{rank: pid} of torchrun's worker processes."""
    ranks = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        except (OSError, ValueError, IndexError):
            continue
        if b"RANK" in env:
            ranks[int(env[b"RANK"])] = int(entry)
    return ranks


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # exited, not reaped yet
    except OSError:
        return True


DDP = ["--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=32", "--batch_size=4", "--num_threads=1",
       "--log_interval=40", "--eval_interval=40", "--eval_iters=4", "--max_iters=120",
       "--gradient_accumulation_steps=2", "--ckpt_interval=1", "--peak_flops=1e12", "--ddp_timeout_s=5"]


def torchrun(args, cwd):
    return Process([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    os.path.join(ROOT, "train.py"), *args], cwd)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds torchrun's workers through /proc")
def test_ddp_dead_or_hung_rank_ends_the_group_and_the_same_command_resumes(stdlib_data, tmp_path):
    """torchrun, 2 processes on gloo. Both interruptions land inside a logging interval, so the resumed run
    must also restore each process's own pending loss sums (rank 1's used to be replaced by rank 0's)."""
    args = DDP + [f"--data_dir={stdlib_data}", f"--results_dir={tmp_path}", "--run_name=ddp"]
    folder = os.path.join(tmp_path, "default", "ddp")

    # a node dies: kill -9 rank 1; rank 0 sees the connection drop and torchrun tears the group down
    run = torchrun(args, tmp_path)
    run.wait_until(lambda: len(rows_of(folder)) >= 1, "the first metrics row")
    time.sleep(0.1)  # a few steps on: the resume starts inside a logging interval, with loss sums pending
    ranks = worker_pids(run.proc.pid)
    assert sorted(ranks) == [0, 1]
    t0 = time.time()
    os.kill(ranks[1], signal.SIGKILL)
    assert run.finish(timeout=90) != 0
    assert time.time() - t0 < 60
    assert results.read_run(folder)["status"] == "running_or_killed"

    # a node hangs (SIGSTOP on rank 1): rank 0's collective times out after ddp_timeout_s and it exits
    run = torchrun(args, tmp_path)
    run.wait_until(lambda: run.saw("resuming") and len(rows_of(folder)) >= 2, "a new row after resuming")
    time.sleep(0.1)
    ranks = worker_pids(run.proc.pid)
    t0 = time.time()
    os.kill(ranks[1], signal.SIGSTOP)
    # the uninterrupted run to compare with, meanwhile (rank 0 mostly waits)
    # (a generous timeout for the runs that must finish: a 5 s one can trip on a loaded machine, where rank 0's
    # fsync'd checkpoint at every step keeps rank 1 waiting)
    patient = ["--ddp_timeout_s=120"]
    uninterrupted = torchrun(DDP + [f"--data_dir={stdlib_data}", f"--results_dir={tmp_path}",
                                    "--run_name=uninterrupted"] + patient, tmp_path)
    while not gone(ranks[0]) and time.time() - t0 < 90:
        time.sleep(0.05)
    waited = time.time() - t0
    os.kill(ranks[1], signal.SIGKILL)  # the hung node is then lost for good
    assert run.finish(timeout=90) != 0
    assert gone(ranks[0]) and waited < 5 + 30, waited  # ddp_timeout_s and some slack, not forever

    resumed = torchrun(args + patient, tmp_path)  # ddp_timeout_s is not part of the run's identity
    assert resumed.finish(timeout=300) == 0, resumed.stderr[-3000:]
    assert resumed.saw("resuming")
    assert int(next(line for line in run.out if "resuming" in line).split()[-1]) % 40  # inside an interval
    assert uninterrupted.finish(timeout=300) == 0, uninterrupted.stderr[-3000:]
    assert comparable(folder) == comparable(os.path.join(tmp_path, "default", "uninterrupted"))
    assert [r["step"] for r in rows_of(folder)] == [40, 80, 120]


# ----------------------------------------------------------------------------- values refused at start-up


@pytest.mark.parametrize("args, message", [
    (["--learning_rate=None"], "config key 'learning_rate' cannot be None; its default is 0.001"),
    (["--max_flops=1e999"], "config key 'max_flops' expects a number, got inf (it must be finite)"),
    (["--learning_rate=" + "9" * 400], "(it must be finite)"),
    (["--n_head=0"], "n_head must be positive, got 0"),
    (["--mlp_ratio=-1"], "mlp_ratio must be positive"),
    (["--beta2=1.5"], "beta2 must be in [0, 1), got 1.5"),
    (["--eps=-1"], "eps must be >= 0"),
    (["--init_std=-0.02"], "init_std must be >= 0"),
    (["--arch=lstm", "--lstm_init=uniform", "--lstm_init_range=-1"], "lstm_init_range must be >= 0"),
    (["--optimizer=sgd", "--momentum=0", "--nesterov=True"], "nesterov=True needs momentum > 0"),
    (["--min_lr=1e999"], "min_lr must be a number >= 0 or None"),
    (["--layer_lr_mults=[1, 1e999, 1]"], "layer_lr_mults must be a list of 3 numbers"),
    (["--device=gpu"], "device='gpu' is not a device: use auto, cpu, cuda, cuda:N or mps"),
    (["--run_name=a\0b"], "must be a plain folder name"),
    (["--label=" + "x" * 300], "run_name='xxx"),
])
def test_values_that_used_to_crash_later_are_refused_up_front(args, message):
    """Found by the fuzzer or by hand: each of these used to pass resolve_config and then raise a TypeError,
    ZeroDivisionError or a torch error (a traceback) at start-up, or train on NaN."""
    with pytest.raises(UserError) as e:
        train.resolve_config(args)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert train.resolve_config(["--label=None"])["label"] == "None"  # a string key keeps the text


def test_a_device_this_machine_lacks_is_one_line():
    import torch
    config = train.resolve_config([f"--device=cuda:{torch.cuda.device_count()}"])  # one past the last GPU
    with pytest.raises(UserError, match=r"is not available on this machine \(\d+ CUDA device\(s\), mps"):
        train.pick_device(config)



# ----------------------------------------------------------------------------- the bad-input battery


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs for the battery: small datasets (intact, truncated, modified, unfinished), broken sweep and config
    files, empty and unrelated folders, broken CSVs."""
    w = tmp_path_factory.mktemp("world")
    data = w / "data"
    text = w / "corpus.txt"
    text.write_text("".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(200)))
    with contextlib.redirect_stdout(io.StringIO()):
        for name in ("small", "trunc", "flipped"):
            prepare.prepare("text", name=name, data_dir=str(data), path=[str(text)])
    os.truncate(data / "trunc" / "train.bin", os.path.getsize(data / "trunc" / "train.bin") - 2)
    with open(data / "flipped" / "train.bin", "r+b") as f:  # same size, one byte changed
        f.seek(10)
        f.write(b"\xff")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    unfinished = data / f".unfinished.tmp-{prepare.HOST}-{dead.pid}"  # what a killed prepare.py leaves
    unfinished.mkdir()
    (unfinished / "train.bin").write_bytes(b"\0" * 100)
    (w / "empty.txt").write_text("")
    (w / "typo.py").write_text("n_layers = 4\n")
    (w / "sweep_syntax.py").write_text("study = 'x'\ngrid = dict(learning_rate=[1e-3]\n")
    (w / "sweep_key.py").write_text("study = 'x'\ngird = dict(learning_rate=[1e-3])\n")
    (w / "empty").mkdir()
    (w / "unrelated" / "notes").mkdir(parents=True)
    (w / "unrelated" / "README.txt").write_text("holiday photos\n")
    (w / "unrelated" / "notes" / "config.json").write_text('{"model": "resnet50"}\n')
    (w / "empty.csv").write_text("")
    (w / "columns.csv").write_text("params,tokens\n1e8,2e9\n2e8,4e9\n")
    (w / "text.csv").write_text("params,tokens,loss\n1e8,2e9,3.1\n2e8,4e9,about three\n")
    return w


def battery(w):
    """(name, script, arguments, what the error line must say); w is the world folder."""
    d = f"--data_dir={w}/data"
    return [
        ("unknown key", "train.py", ["--lerning_rate=1e-3"], "unknown config key 'lerning_rate' on the command "
                                                             "line (did you mean 'learning_rate'?)"),
        ("wrong type", "train.py", ["--max_iters=ten"], "config key 'max_iters' expects an integer, got 'ten'"),
        ("invalid choice", "train.py", ["--activation=swish"], "activation='swish' is not one of relu, gelu, "
                                                               "silu, glu, swiglu, geglu"),
        ("n_embd % n_head", "train.py", ["--n_embd=100", "--n_head=3"], "n_embd=100 is not divisible by n_head=3"),
        ("tied LSTM widths", "train.py", ["--arch=lstm", "--lstm_hidden=64", "--n_embd=32"],
         "tie_embeddings needs the LSTM output width (64) to equal n_embd (32)"),
        ("config file typo", "train.py", [f"{w}/typo.py"], "unknown config key 'n_layers' in"),
        ("block_size above the data", "train.py", [d, "--dataset=small", "--block_size=100000", "--max_iters=1"],
         "block_size=100000 is larger than the data"),
        ("missing dataset", "train.py", [d, "--dataset=nope", "--max_iters=1"],
         "dataset 'nope' not found in"),
        ("unfinished dataset", "train.py", [d, "--dataset=unfinished", "--max_iters=1"],
         "is unfinished (a prepare was killed or is still running"),
        ("truncated bin", "train.py", [d, "--dataset=trunc", "--max_iters=1"], "(truncated or modified)"),
        ("modified bin", "train.py", [d, "--dataset=flipped", "--max_iters=1"], "does not match its sha256"),
        ("empty dataset", "prepare.py", ["text", "--path", f"{w}/empty.txt", "--data_dir", "new"],
         "no text files found in --path"),
        ("unknown source", "prepare.py", ["stdlb"], "unknown source 'stdlb' (did you mean 'stdlib'?)"),
        ("sweep syntax error", "sweep.py", [f"{w}/sweep_syntax.py", "--list"], "syntax error in sweep file"),
        ("sweep unknown key", "sweep.py", [f"{w}/sweep_key.py", "--list"],
         "unknown sweep key 'gird' (did you mean 'grid'?)"),
        ("analyze empty folder", "analyze.py", [f"{w}/empty"], "no run folders under"),
        ("analyze unrelated folder", "analyze.py", [f"{w}/unrelated"], "1 config.json has no label"),
        ("fit empty folder", "fit_scaling.py", [f"{w}/empty"], "no run folders under"),
        ("fit unrelated folder", "fit_scaling.py", [f"{w}/unrelated"], "no completed runs with usable points"),
        ("fit empty csv", "fit_scaling.py", [f"{w}/empty.csv"], "is empty"),
        ("fit missing column", "fit_scaling.py", [f"{w}/columns.csv"], "missing column(s) loss"),
        ("fit non-numeric value", "fit_scaling.py", [f"{w}/text.csv"], "column 'loss' holds 'about three', not a "
                                                                      "number"),
    ]


def snapshot(root):
    return {os.path.join(dirpath, name): (os.path.getsize(os.path.join(dirpath, name)),
                                          os.path.getmtime(os.path.join(dirpath, name)))
            for dirpath, dirnames, names in os.walk(root) for name in names + dirnames}


def test_bad_input_battery(world):
    """Each case, run as a user would in a folder of its own: exit 2, exactly one `error:` line on stderr
    (warnings may precede it), no traceback, nothing written or changed anywhere under the world folder (the
    datasets, files and case folders). Four at a time: most of the cost is importing torch."""
    cases = battery(world)
    for i in range(len(cases)):
        (world / "cases" / str(i)).mkdir(parents=True)
    before = snapshot(world)

    def run_case(i, case):
        name, script, argv, message = case
        out = run_script(script, argv, cwd=world / "cases" / str(i), timeout=120, env={"OMP_NUM_THREADS": "1"})
        return name, out, message

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda ic: run_case(*ic), enumerate(cases)))
    failures = []
    for name, out, message in outcomes:
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error: ")]
        others = [line for line in lines if not line.startswith(("error: ", "warning: "))]
        if out.returncode != 2 or len(errors) != 1 or others or "Traceback" in out.stderr or \
                message not in errors[0]:
            failures.append(f"{name}: exit {out.returncode}, stderr:\n{out.stderr[-1500:]}")
    assert not failures, "\n\n".join(failures)
    after = snapshot(world)
    assert after == before, sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
