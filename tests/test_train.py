"""train.py on real (tiny) runs: it learns, counts tokens and FLOPs right, writes the run folder of the results
format, resumes bit-for-bit after SIGKILL or a signal, refuses to mix configs, and survives damaged checkpoints."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

import results
import train
from conftest import ROOT, run_script

TINY = ["--n_layer=1", "--n_embd=32", "--n_head=2", "--block_size=32", "--batch_size=4", "--num_threads=1",
        "--log_interval=5", "--eval_interval=10", "--eval_iters=4"]


def tiny(data_dir, results_dir, *extra):
    return TINY + [f"--data_dir={data_dir}", f"--results_dir={results_dir}", *extra]


def run_in_process(args):
    config = train.resolve_config(args)
    status = train.train(config)
    return config, status, results.read_run(train.run_folder(config))


def comparable(folder):
    """metrics.csv rows and final.json without wall-clock fields."""
    rows, problems = results.read_metrics(os.path.join(folder, "metrics.csv"))
    assert not problems
    final, _ = results.read_json(os.path.join(folder, "final.json"))
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows], \
        {k: v for k, v in final.items() if k != "elapsed_s"}


def test_learns_and_writes_the_results_format(stdlib_data, tmp_path):
    config, status, run = run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=60", "--learning_rate=3e-3",
                                              "--gradient_accumulation_steps=2", "--study=s", "--label=tiny"))
    assert status == "completed" and run["status"] == "completed" and not run["problems"]
    with open(os.path.join(run["path"], "metrics.csv")) as f:
        assert f.readline().strip() == "step,tokens,flops,train_loss,val_loss,lr,elapsed_s"
    rows = run["metrics"]
    assert [r["step"] for r in rows] == [10, 20, 30, 40, 50, 60]
    d = run["derived"]
    # hand count for n_layer=1, n_embd=32, vocab 257, GELU MLP 4x, tied head, block 32
    n_matmul = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32 + 257 * 32
    assert d["flops_per_token"] == 6 * n_matmul + 12 * 1 * 32 * 32
    assert d["tokens_per_step"] == 4 * 32 * 2 * 1
    # embedding 257x32 + positions 32x32 + block (2 LayerNorm weights + 4 matrices) + final LayerNorm weight
    assert d["n_params"] == 257 * 32 + 32 * 32 + (2 * 32 + n_matmul - 257 * 32) + 32
    assert d["n_params_non_embedding"] == d["n_params"] - 257 * 32 - 32 * 32
    for r in rows:
        assert r["tokens"] == r["step"] * d["tokens_per_step"]
        assert r["flops"] == r["tokens"] * d["flops_per_token"]
        assert r["lr"] == pytest.approx(train.lr_at(r["step"] - 1, config, 60))
    assert rows[-1]["val_loss"] < math.log(257) - 2.0  # far below the uniform model's loss
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] - 0.5
    final = run["final"]
    assert final == {**final, "status": "completed", "steps": 60, "tokens": 60 * 256,
                     "flops": float(60 * 256 * d["flops_per_token"]), "final_val_loss": rows[-1]["val_loss"],
                     "best_val_loss": min(r["val_loss"] for r in rows), "step_val_acc_99": None}
    assert run["config"]["learning_rate"] == 3e-3 and run["config"]["label"] == "tiny"
    assert set(d) >= {"n_params", "n_params_non_embedding", "flops_per_token", "tokens_per_step", "world_size",
                      "device", "torch", "git_sha"}
    assert os.path.exists(os.path.join(run["path"], "ckpt.pt"))


def test_train_loss_is_the_mean_since_the_previous_row(stdlib_data, tmp_path):
    """With log_interval 5 and eval_interval 10, each row's train_loss averages 10 steps, whatever the log."""
    _, _, a = run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=20", "--run_name=a"))
    _, _, b = run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=20", "--run_name=b", "--log_interval=1"))
    for ra, rb in zip(a["metrics"], b["metrics"]):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)


def test_micro_batching_does_not_change_the_curve(stdlib_data, tmp_path):
    """8 sequences x 4 accumulation steps and 32 x 1 see the same data and give the same loss curve."""
    _, _, small = run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=20", "--run_name=m8",
                                      "--batch_size=8", "--target_effective_batch_size=32"))
    assert small["derived"]["micro_batch_size"] == 8 and small["derived"][
        "gradient_accumulation_steps_per_process"] == 4
    _, _, big = run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=20", "--run_name=m32",
                                    "--batch_size=32", "--gradient_accumulation_steps=1"))
    assert [r["tokens"] for r in small["metrics"]] == [r["tokens"] for r in big["metrics"]] == [10240, 20480]
    for rs, rb in zip(small["metrics"], big["metrics"]):
        assert rs["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-4)
        assert rs["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)


def test_budgets_take_the_first_limit_reached():
    c = train.resolve_config(["--max_iters=1000", "--max_tokens=10000"])
    assert train.budget_steps(c, 384, 1e6, 5000) == math.ceil(10000 / 384)
    c = train.resolve_config(["--max_iters=0", "--tokens_per_param=20"])
    assert train.budget_steps(c, 384, 1e6, 5000) == math.ceil(20 * 5000 / 384)
    c = train.resolve_config(["--max_iters=0", "--max_flops=1e10", "--tokens_per_param=20"])
    assert train.budget_steps(c, 384, 1e6, 5000) == math.ceil(1e10 / 1e6 / 384)  # 27 < 261
    c = train.resolve_config(["--max_iters=0", "--time_limit_s=10", "--lr_schedule=constant"])
    assert train.budget_steps(c, 384, 1e6, 5000) is None


def test_run_ends_at_token_budget_and_time_limit(stdlib_data, tmp_path):
    _, status, run = run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=0", "--max_tokens=3000",
                                         "--run_name=tok"))
    assert status == "completed" and run["final"]["steps"] == math.ceil(3000 / 128)
    assert run["metrics"][-1]["step"] == 24  # the final row
    _, status, run = run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=0", "--time_limit_s=1.5",
                                         "--lr_schedule=constant", "--run_name=time"))
    assert status == "time_limit" and run["final"]["elapsed_s"] >= 1.5
    assert run["metrics"][-1]["step"] == run["final"]["steps"]


def test_diverged_and_early_stopped_are_results(stdlib_data, tmp_path):
    out = run_script("train.py", tiny(stdlib_data, tmp_path, "--max_iters=200", "--optimizer=sgd",
                                      "--learning_rate=1e8", "--grad_clip=0", "--run_name=boom"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = results.read_run(os.path.join(tmp_path, "default", "boom"))
    assert run["status"] == "diverged" and math.isnan(run["metrics"][-1]["val_loss"])
    assert run["final"]["final_val_loss"] is None and run["final"]["steps"] < 200
    _, status, run = run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=200", "--run_name=patience",
                                         "--early_stopping_patience=2", "--early_stopping_min_delta=100"))
    assert status == "early_stopped" and [r["step"] for r in run["metrics"]] == [10, 20, 30]


def test_finished_run_is_not_retrained_and_changed_config_is_refused(stdlib_data, tmp_path):
    args = tiny(stdlib_data, tmp_path, "--max_iters=10", "--run_name=r")
    first = run_script("train.py", args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    mtime = os.path.getmtime(os.path.join(tmp_path, "default", "r", "metrics.csv"))
    again = run_script("train.py", args, cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stdout
    assert os.path.getmtime(os.path.join(tmp_path, "default", "r", "metrics.csv")) == mtime
    changed = run_script("train.py", args + ["--learning_rate=0.5"], cwd=tmp_path)
    assert changed.returncode == 2 and "learning_rate: 0.001 -> 0.5" in changed.stderr
    assert "Traceback" not in changed.stderr
    redo = run_script("train.py", args + ["--learning_rate=0.5", "--overwrite=True"], cwd=tmp_path)
    assert redo.returncode == 0 and results.read_run(os.path.join(tmp_path, "default", "r"))["config"][
        "learning_rate"] == 0.5


def start(args, cwd):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_rows(folder, n, proc, timeout=120):
    path = os.path.join(folder, "metrics.csv")
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if os.path.exists(path) and len(results.read_metrics(path)[0]) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {n} rows in {path} (process exited: {proc.poll()})")


@pytest.fixture(scope="module")
def reference(stdlib_data, tmp_path_factory):
    """An uninterrupted run that the interrupted ones must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    args = tiny(stdlib_data, root, "--max_iters=80", "--dropout=0.1", "--ckpt_interval=3", "--run_name=ref")
    out = run_script("train.py", args, cwd=root)
    assert out.returncode == 0, out.stderr
    return comparable(os.path.join(root, "default", "ref"))


@pytest.mark.parametrize("kill_after_rows, extra_delay", [(0, 0.0), (1, 0.13), (3, 0.37), (5, 0.05)])
def test_sigkill_then_same_command_equals_uninterrupted_run(stdlib_data, tmp_path, reference, kill_after_rows,
                                                            extra_delay):
    args = tiny(stdlib_data, tmp_path, "--max_iters=80", "--dropout=0.1", "--ckpt_interval=3", "--run_name=ref")
    folder = os.path.join(tmp_path, "default", "ref")
    proc = start(args, tmp_path)
    if kill_after_rows:
        wait_for_rows(folder, kill_after_rows, proc)
    else:
        time.sleep(2.0)  # during start-up or the first steps
    time.sleep(extra_delay)
    proc.kill()
    proc.wait()
    out = run_script("train.py", args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert comparable(folder) == reference


def test_sigterm_checkpoints_then_resume_equals_uninterrupted_run(stdlib_data, tmp_path, reference):
    args = tiny(stdlib_data, tmp_path, "--max_iters=80", "--dropout=0.1", "--ckpt_interval=3", "--run_name=ref")
    folder = os.path.join(tmp_path, "default", "ref")
    proc = start(args, tmp_path)
    wait_for_rows(folder, 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == train.EXIT_INTERRUPTED, err
    assert results.read_run(folder)["status"] == "interrupted"
    assert os.path.exists(os.path.join(folder, "ckpt.pt"))
    out = run_script("train.py", args, cwd=tmp_path)
    assert out.returncode == 0 and "resuming" in out.stdout, out.stderr
    assert comparable(folder) == reference


def test_signal_in_the_middle_of_gradient_accumulation_exits_promptly(stdlib_data, tmp_path):
    """One optimizer step here is 800 micro-batches (a second or more); the run must not finish the step."""
    args = tiny(stdlib_data, tmp_path, "--max_iters=2", "--gradient_accumulation_steps=800", "--eval_interval=1",
                "--run_name=accum")
    folder = os.path.join(tmp_path, "default", "accum")
    proc = start(args, tmp_path)
    wait_for_rows(folder, 1, proc)
    time.sleep(0.3)
    t0 = time.time()
    proc.send_signal(signal.SIGUSR1)
    proc.communicate(timeout=60)
    assert proc.returncode == train.EXIT_INTERRUPTED
    assert time.time() - t0 < 15.0  # bounded; steps == 1 below shows it did not finish the step
    assert results.read_run(folder)["final"]["steps"] == 1
    ref = run_script("train.py", args + ["--run_name=accum_ref"], cwd=tmp_path)
    out = run_script("train.py", args, cwd=tmp_path)
    assert ref.returncode == 0 and out.returncode == 0, out.stderr
    assert comparable(folder) == comparable(os.path.join(tmp_path, "default", "accum_ref"))


def test_damaged_checkpoint_falls_back_with_a_warning(stdlib_data, tmp_path, reference):
    args = tiny(stdlib_data, tmp_path, "--max_iters=80", "--dropout=0.1", "--ckpt_interval=3", "--run_name=ref")
    folder = os.path.join(tmp_path, "default", "ref")
    proc = start(args, tmp_path)
    wait_for_rows(folder, 3, proc)
    proc.kill()
    proc.wait()
    with open(os.path.join(folder, "ckpt.pt"), "r+b") as f:  # as a disk that filled up would leave it
        f.truncate(os.path.getsize(os.path.join(folder, "ckpt.pt")) // 2)
    out = run_script("train.py", args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ckpt.pt is unreadable" in out.stderr and "Traceback" not in out.stderr
    assert comparable(folder) == reference  # resumed from ckpt.prev.pt
    for name in ("ckpt.pt", "ckpt.prev.pt"):
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"garbage")
    os.remove(os.path.join(folder, "final.json"))
    out = run_script("train.py", args, cwd=tmp_path)
    assert out.returncode == 0 and "starting the run from scratch" in out.stderr
    assert comparable(folder) == reference


def run_ddp(args, cwd, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           os.path.join(ROOT, "train.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_ddp_two_processes_equal_one_process_with_twice_the_accumulation(stdlib_data, tmp_path, arch):
    args = tiny(stdlib_data, tmp_path, "--max_iters=20", f"--arch={arch}", "--n_layer=2")
    single = run_script("train.py", args + ["--gradient_accumulation_steps=4", "--run_name=single"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    ddp = run_ddp(args + ["--gradient_accumulation_steps=4", "--run_name=ddp"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a = results.read_run(os.path.join(tmp_path, "default", "single"))
    b = results.read_run(os.path.join(tmp_path, "default", "ddp"))
    assert b["derived"]["world_size"] == 2 and b["derived"]["tokens_per_step"] == a["derived"]["tokens_per_step"]
    assert [r["tokens"] for r in a["metrics"]] == [r["tokens"] for r in b["metrics"]] == [5120, 10240]
    for ra, rb in zip(a["metrics"], b["metrics"]):
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4)
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-4)
    bad = run_ddp(args + ["--gradient_accumulation_steps=3", "--run_name=odd"], tmp_path)
    assert bad.returncode != 0 and "not divisible by the 2 processes" in bad.stderr


def test_task_rows_dataset_reports_accuracy(tmp_path):
    import prepare
    prepare.prepare("modular", data_dir=str(tmp_path), op="add", p=11, train_frac=0.6, seed=0)
    name = os.listdir(tmp_path)[0]
    _, status, run = run_in_process(["--dataset=" + name, f"--data_dir={tmp_path}", f"--results_dir={tmp_path}",
                                     "--n_layer=1", "--n_embd=64", "--n_head=2", "--batch_size=32",
                                     "--max_iters=300", "--eval_interval=25", "--learning_rate=3e-3",
                                     "--weight_decay=0.5", "--num_threads=1", "--target_val_acc=1.0"])
    rows = run["metrics"]
    assert set(rows[0]) >= {"train_acc", "val_acc"}
    assert run["config"]["block_size"] == 4  # a, op, b, =, c: the answer is the only target
    assert 0 <= rows[-1]["val_acc"] <= 1 and rows[-1]["train_acc"] > rows[0]["train_acc"]
    assert "step_val_acc_99" in run["final"]


def test_wandb_offline(stdlib_data, tmp_path):
    pytest.importorskip("wandb")
    out = run_script("train.py", tiny(stdlib_data, tmp_path, "--max_iters=10", "--wandb_log=True"), cwd=tmp_path,
                     env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = os.path.join(tmp_path, "default", "baseline_32d_lr1.0e-03_s1337")
    assert any(name.startswith("offline-run") for name in os.listdir(os.path.join(run_dir, "wandb")))
