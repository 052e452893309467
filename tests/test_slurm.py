"""
sweep.py on a real one-node SLURM cluster (tests/slurm_cluster.py starts it in a temp folder and stops every
daemon it started): `python sweep.py configs/sweeps/smoke.py ... | sbatch` completes every run, a second
submission finds nothing to do, and a task that is preempted (`scontrol requeue`) and then warned of its time
limit (USR1 to the batch shell, as `#SBATCH --signal=B:USR1@120` sends) finishes with the same metrics as an
uninterrupted run.

The packages are installed with apt-get when missing (root); without root or apt the tests are skipped with
the reason, except under CI (CI=true), where that is a failure.
"""
import csv
import json
import os
import shlex
import subprocess
import sys
import time

import pytest

import slurm_cluster
from conftest import ROOT

SMOKE = os.path.join("configs", "sweeps", "smoke.py")


@pytest.fixture(scope="module")
def cluster():
    reason = slurm_cluster.install()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    c = slurm_cluster.start()
    try:
        yield c
    finally:
        c.stop(remove=True)  # failures above already carry the daemons' log tails


def sweep(cluster, *args, check=True):
    out = subprocess.run([sys.executable, "sweep.py", *args], cwd=ROOT, env=cluster.env, capture_output=True,
                         text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def read_rows(folder, drop=("elapsed_s",)):
    with open(os.path.join(folder, "metrics.csv")) as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def read_final(folder):
    with open(os.path.join(folder, "final.json")) as f:
        return json.load(f)


def wait_for(predicate, timeout, what, cluster):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{cluster.logs()}")


def last_step(folder):
    try:
        rows = read_rows(folder)
    except OSError:
        return -1
    return int(rows[-1]["step"]) if rows else -1


def test_smoke_sweep_completes_on_slurm(cluster, data_dir, tmp_path):
    results_dir = str(tmp_path / "results")
    args = [SMOKE, "--gpus", "0", f"--results_dir={results_dir}", f"--data_dir={data_dir}"]
    script = sweep(cluster, *args, "--no_check").stdout  # what the pipe below submits (same task file)
    assert "--gres" not in script and "#SBATCH --array=1-4%" in script and "#SBATCH --cpus-per-task=1" in script
    # the user's command, as written
    pipe = subprocess.run(["bash", "-o", "pipefail", "-c", f"{shlex.quote(sys.executable)} sweep.py "
                           f"{shlex.join(args)} | sbatch --parsable"], cwd=ROOT, env=cluster.env,
                          capture_output=True, text=True, timeout=120)
    assert pipe.returncode == 0, pipe.stderr
    job = pipe.stdout.strip()

    # while its tasks are queued, submitting the same sweep again is refused (it would run them twice)
    again = sweep(cluster, *args, check=False)
    if cluster.queued():
        assert again.returncode == 2 and "still queued or running" in again.stderr, again.stderr

    assert cluster.wait_idle(180), f"array {job} did not finish\n{cluster.logs()}"
    study = os.path.join(results_dir, "smoke")
    runs = sorted(d for d in os.listdir(study) if not d.startswith("_"))
    assert runs == ["smoke_32d_lr1.0e-03_s1", "smoke_32d_lr1.0e-03_s2", "smoke_32d_lr3.0e-03_s1",
                    "smoke_32d_lr3.0e-03_s2"]
    for name in runs:
        folder = os.path.join(study, name)
        assert read_final(folder)["status"] == "completed", name
        assert [int(r["step"]) for r in read_rows(folder)] == [10, 20, 30], name
        with open(os.path.join(folder, "config.json")) as f:
            assert json.load(f)["run_name"] == name
    logs = os.listdir(os.path.join(study, "_sweep", "logs"))
    assert sorted(logs) == [f"{job}_{i}.out" for i in range(1, 5)]

    listing = sweep(cluster, *args, "--list").stdout
    assert "4 runs" in listing and "(4 done)" in listing
    # submitting a finished sweep again submits nothing
    again = sweep(cluster, *args)
    assert again.stdout == "" and "nothing to submit" in again.stderr


def test_preempted_and_time_limited_task_resumes_with_identical_metrics(cluster, data_dir, tmp_path):
    """One long-enough smoke run: `scontrol requeue` while it trains (preemption: SLURM sends SIGTERM to every
    process and requeues the job), later USR1 to the batch shell (the time-limit warning: requeue.sh stops the
    run and requeues the task itself). It must end with the metrics of the same run left alone."""
    results_dir = str(tmp_path / "results")
    overrides = ["--study=preempt", "--max_iters=1500", "--eval_interval=100", "--learning_rate=0.003",
                 "--seed=1", f"--results_dir={results_dir}", f"--data_dir={data_dir}"]
    script = sweep(cluster, SMOKE, *overrides).stdout
    assert "#SBATCH --array=1-1%" in script
    job = cluster.sbatch(script, cwd=ROOT)
    task = f"{job}_1"
    folder = os.path.join(results_dir, "preempt", "smoke_32d_lr3.0e-03_s1")

    # the uninterrupted reference: the same train.py command, another results folder, one thread as the task has
    command = sweep(cluster, SMOKE, *overrides, "--commands").stdout.split()
    assert command[:2] == ["python", "train.py"]
    ref_dir = str(tmp_path / "reference")
    reference = subprocess.Popen(
        [sys.executable, "train.py"] + [a for a in command[2:] if not a.startswith("--results_dir=")]
        + [f"--results_dir={ref_dir}", "--num_threads=1"], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=dict(cluster.env, OMP_NUM_THREADS="1"))

    wait_for(lambda: last_step(folder) >= 200, 120, "the run to reach step 200", cluster)
    cluster.run("scontrol", "requeue", task)
    wait_for(lambda: cluster.state(task)[1] >= 1 and cluster.state(task)[0] == "PENDING", 60,
             "the requeue", cluster)
    assert read_final(folder)["status"] == "interrupted"  # it checkpointed on SLURM's SIGTERM
    stopped_at = read_final(folder)["steps"]
    assert 200 <= stopped_at < 1500
    cluster.release(task)

    wait_for(lambda: last_step(folder) >= stopped_at + 300, 120, "the resumed run to train on", cluster)
    cluster.run("scancel", "--batch", "--signal=USR1", task)
    wait_for(lambda: cluster.state(task)[1] >= 2 and cluster.state(task)[0] == "PENDING", 60,
             "the self-requeue after the time-limit warning", cluster)
    assert read_final(folder)["status"] == "interrupted"
    stopped_again = read_final(folder)["steps"]
    assert stopped_at + 300 <= stopped_again < 1500
    cluster.release(task)

    assert cluster.wait_idle(180), f"task {task} did not finish\n{cluster.logs()}"
    assert cluster.state(task)[0] == "COMPLETED"
    assert reference.wait(timeout=180) == 0, reference.stderr.read()
    ref_folder = os.path.join(ref_dir, "preempt", "smoke_32d_lr3.0e-03_s1")
    rows = read_rows(folder)
    assert [int(r["step"]) for r in rows] == list(range(100, 1501, 100))
    assert rows == read_rows(ref_folder)
    final, ref_final = read_final(folder), read_final(ref_folder)
    assert final["status"] == "completed"
    assert {k: v for k, v in final.items() if k != "elapsed_s"} == \
        {k: v for k, v in ref_final.items() if k != "elapsed_s"}

    with open(os.path.join(results_dir, "preempt", "_sweep", "logs", f"{job}_1.out")) as f:
        log = f.read()
    # three starts in the task's log (it is appended to): the first, after the requeue, after the warning
    assert "restart 0:" in log and "restart 1:" in log and "restart 2:" in log, log
    assert "time-limit warning" in log and f"requeueing job" in log, log
    # and each restart resumed from the checkpoint written when it was stopped
    assert f"from step {stopped_at}\n" in log and f"from step {stopped_again}\n" in log, log
