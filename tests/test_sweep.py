"""
Tests for sweep.py: the sweep-file format (grid crossing, runs lists, seeds, precedence, run names, helpers),
command-line overrides, one-line errors, the sbatch script and its task file, --list statuses, the cluster
checks (against stand-in sinfo/squeue), and real tiny runs: an array task run by bash outside SLURM, --local with
two workers (a failing run does not stop the rest; a re-run redoes nothing finished), a --local sweep stopped by
SIGTERM and resumed, and both slurm/*.sbatch scripts run outside SLURM (the LSTM one with torchrun, 2 processes).
tests/test_slurm.py submits to a real SLURM cluster.
"""
import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

import analyze
import results
import sweep
from configurator import UserError
from conftest import ROOT

TINY = dict(dataset="stdlib", n_layer=1, n_head=2, n_embd=32, block_size=64, batch_size=8, max_iters=30,
            eval_interval=10, eval_iters=2, log_interval=10, device="cpu", dtype="float32")


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths in sweeps are relative to the repository root, as for train.py


def write_sweep(tmp_path, text, name="study.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def tiny_sweep(tmp_path, body, data_dir="data", name="study.py"):
    """A sweep file of tiny runs whose results go under tmp_path."""
    fixed = dict(TINY, results_dir=str(tmp_path / "results"), data_dir=data_dir)
    return write_sweep(tmp_path, f"fixed = {fixed!r}\n{body}", name)


def expand(path, *argv):
    """(sweep, runs) as sweep.main would build them from the command line argv."""
    args = sweep.parse_args([path, *argv])
    s = sweep.load_sweep(path, args.params)
    return s, sweep.resolve_runs(s, args.cli_fixed, args.cli_grid)


def main(capsys, *argv):
    code = sweep.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----------------------------------------------------------------------------- the sweep-file format

def test_lr_grid_steps_around_the_centre():
    assert sweep.lr_grid(1e-3) == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]  # half-decade steps, one decade each side
    quarter = sweep.lr_grid(2e-3, per_decade=4, decades=0.5)
    assert quarter == [6.32e-4, 1.12e-3, 2e-3, 3.56e-3, 6.32e-3]
    assert all(abs(b / a / 10 ** 0.25 - 1) < 0.01 for a, b in zip(quarter, quarter[1:]))
    with pytest.raises(UserError, match="centre must be a positive number"):
        sweep.lr_grid(0)


def test_grid_runs_and_seeds_cross_in_order_with_precedence(tmp_path):
    path = tiny_sweep(tmp_path, """
study = "cross"
runs = [dict(label="a"), dict(label="b", max_iters=20)]
grid = dict(learning_rate=[1e-3, 2e-3], n_layer=[1, 2])
seeds = [1, 2]
""")
    s, runs = expand(path)
    assert len(runs) == 2 * 2 * 2 * 2
    got = [(r["config"]["label"], r["config"]["learning_rate"], r["config"]["n_layer"], r["config"]["seed"])
           for r in runs]
    assert got[:4] == [("a", 1e-3, 1, 1), ("a", 1e-3, 1, 2), ("a", 1e-3, 2, 1), ("a", 1e-3, 2, 2)]
    assert got[8] == ("b", 1e-3, 1, 1)
    # fixed < runs entry: b's runs are shorter; everything else comes from fixed
    assert {r["config"]["max_iters"] for r in runs[:8]} == {30} and {r["config"]["max_iters"] for r in runs[8:]} == {20}
    assert all(r["config"]["study"] == "cross" and r["config"]["n_embd"] == 32 for r in runs)
    names = [r["name"] for r in runs]
    assert len(set(names)) == len(names)
    assert names[0] == "a_32d_lr1.0e-03_s1_n_layer1" and names[2] == "a_32d_lr1.0e-03_s1_n_layer2"
    assert runs[0]["folder"] == os.path.join(str(tmp_path / "results"), "cross", names[0])
    # each run is a train.py command line that resolves to the same config
    import train
    assert train.resolve_config(runs[5]["args"]) == runs[5]["config"]


def test_run_names_add_only_what_tells_runs_apart(tmp_path):
    path = tiny_sweep(tmp_path, 'grid = dict(max_iters=[10, 20], activation=["relu", "gelu"], seed=[3])\n')
    _, runs = expand(path)
    assert [r["name"][len("baseline_32d_lr1.0e-03_s3"):] for r in runs] == [
        "_max_iters10_activation-relu", "_max_iters10_activation-gelu", "_max_iters20_activation-relu",
        "_max_iters20_activation-gelu"]
    assert all(r["name"].startswith("baseline_32d_lr1.0e-03_s3_") for r in runs)
    # the default name alone when it is already unique
    _, runs = expand(tiny_sweep(tmp_path, "grid = dict(learning_rate=[1e-3, 3e-3])\n", name="b.py"))
    assert [r["name"] for r in runs] == ["baseline_32d_lr1.0e-03_s1337", "baseline_32d_lr3.0e-03_s1337"]
    # two runs that are the same run: an error, not two folders
    dup = tiny_sweep(tmp_path, "runs = [dict(learning_rate=1e-3), dict(learning_rate=2e-3)]\n"
                               "grid = dict(learning_rate=[5e-4])\n", name="dup.py")
    with pytest.raises(UserError, match=r"runs 1 and 2 are the same run"):
        expand(dup)


def test_bundle_axes_width_presets_and_variants(tmp_path):
    path = tiny_sweep(tmp_path, """
base = []
runs = variants("configs/ablations/modern_minus_rope.py", "configs/ablations/modern_minus_swiglu.py")
grid = dict(width=[width(64), width(128)])
""")
    _, runs = expand(path)
    assert [(r["config"]["label"], r["config"]["n_embd"]) for r in runs] == [
        ("modern_minus_rope", 64), ("modern_minus_rope", 128),
        ("modern_minus_swiglu", 64), ("modern_minus_swiglu", 128)]
    assert runs[1]["files"] == ["configs/ablations/modern_minus_rope.py", "configs/widths/128d.py"]
    # the preset's depth and heads come with the width (fixed sets n_layer=1, but the width file comes later)
    import train
    preset = train.resolve_config(["configs/widths/128d.py"])
    assert (runs[1]["config"]["n_layer"], runs[1]["config"]["n_head"]) == (preset["n_layer"], preset["n_head"])
    with pytest.raises(UserError, match=r"no width preset configs/widths/99d.py \(presets: .*64d"):
        sweep.width(99)
    with pytest.raises(UserError, match="no config file matches"):
        sweep.variants("configs/nothing/*.py")


def test_command_line_overrides_and_parameters(tmp_path):
    path = tiny_sweep(tmp_path, """
WIDTHS = param("widths", [32])
grid = dict(learning_rate=[1e-3, 2e-3], n_embd=WIDTHS)
seeds = [1, 2]
""")
    _, runs = expand(path)
    assert len(runs) == 4
    # a value replaces the sweep's axis of that key; a list makes (or replaces) an axis; --set feeds param()
    _, runs = expand(path, "--learning_rate=5e-4", "--seed=[7,8,9]", "--set", "widths=[32,64]", "--max_iters=12",
                     "--dropout=[0.0,0.1]")
    configs = [r["config"] for r in runs]
    assert len(runs) == 2 * 3 * 2
    assert {c["learning_rate"] for c in configs} == {5e-4} and {c["max_iters"] for c in configs} == {12}
    assert sorted({c["seed"] for c in configs}) == [7, 8, 9] and sorted({c["n_embd"] for c in configs}) == [32, 64]
    assert sorted({c["dropout"] for c in configs}) == [0.0, 0.1]
    assert runs[1]["name"] == "baseline_32d_lr5.0e-04_s7_dropout0.1"
    with pytest.raises(UserError, match=r"--set width: .* has no parameter 'width' \(did you mean 'widths'\?\); "
                                        r"its parameters: widths"):
        expand(path, "--set", "width=[64]")
    with pytest.raises(UserError, match=r"unknown config key 'lr' on the command line"):
        expand(path, "--lr=1e-3")
    with pytest.raises(UserError, match="overwrite cannot be used in a sweep"):
        expand(path, "--overwrite=True")


# ----------------------------------------------------------------------------- bad input: one line, exit 2

@pytest.mark.parametrize("text,message", [
    ("grid = dict(learning_rate=[1e-3]\nseeds = [1]\n",
     r"study\.py:2: syntax error in sweep file: '\(' was never closed"),
    ("gird = dict(learning_rate=[1e-3])\n", r"unknown sweep key 'gird' \(did you mean 'grid'\?\)"),
    ("grid = dict(lerning_rate=[1e-3])\n", r"grid axis 'lerning_rate' is not a config key \(did you mean "
                                           r"'learning_rate'\?\)"),
    ("runs = [dict(n_embed=64)]\n", r"unknown config key 'n_embed' in runs\[0\] of .*study\.py \(did you mean "
                                    r"'n_embd'\?\)"),
    ("grid = dict(n_embd=[32, 33])\n", r"study\.py: run 2 of 2 \(n_embd=33\): n_embd=33 is not divisible by n_head=2"),
    ("runs = [dict(max_iters='many')]\n", r"study\.py: run 1 of 1 .*'max_iters' expects an integer"),
    ("base = ['configs/no_such.py']\n", r"study\.py: config file not found: configs/no_such\.py"),
    ("X = 1\nY = X / 0\n", r"study\.py:3: ZeroDivisionError: division by zero"),
    ("seeds = [1, 'two']\n", r"seeds must be a non-empty list of integers"),
    ("slurm = dict(gpu=1)\n", r"unknown slurm option 'gpu' \(did you mean 'gpus'\?\)"),
    ("grid = dict(study=['a', 'b'])\n", r"'study' cannot be set in grid axis 'study'"),
])
def test_bad_sweep_files_give_one_line(tmp_path, capsys, text, message):
    path = tiny_sweep(tmp_path, text)  # line 1 is `fixed = ...`
    line = one_line_error(*main(capsys, path, "--list")[::2])
    assert path in line
    assert re.search(message, line), line


def test_bad_command_line_gives_one_line(capsys):
    line = one_line_error(*main(capsys, "configs/sweeps/nope.py")[::2])
    assert "sweep file not found: configs/sweeps/nope.py (sweeps: " in line and "smoke.py" in line
    line = one_line_error(*main(capsys, "configs/sweeps/smoke.py", "--max_iters", "50")[::2])
    assert "--max_iters needs its value after '=': write --max_iters=VALUE" in line
    line = one_line_error(*main(capsys, "configs/sweeps/smoke.py", "--gpu", "1")[::2])
    assert "unexpected argument '--gpu' (did you mean 'gpus'?)" in line
    line = one_line_error(*main(capsys, "configs/sweeps/smoke.py", "--gpus", "two")[::2])
    assert "invalid int value" in line


def test_syntax_error_exits_2_without_traceback(tmp_path):
    path = write_sweep(tmp_path, "study = 'x'\ngrid = {\n")
    out = subprocess.run([sys.executable, "sweep.py", path], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"error: {path}:2: syntax error in sweep file: '{{' was never closed"]


# ----------------------------------------------------------------------------- the sbatch script

def sbatch_lines(script):
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_sbatch_script_for_a_transformer_sweep(tmp_path, capsys):
    # a data folder without the embedded corpus: it is prepared once, before the tasks would race to do it
    fresh = str(tmp_path / "data")
    path = tiny_sweep(tmp_path, "grid = dict(learning_rate=[1e-3, 2e-3])\nseeds = [1, 2]\nstudy = 'tx'\n", fresh)
    code, script, err = main(capsys, path, "--no_check")
    assert code == 0, err
    assert script.startswith("#!/bin/bash\n") and os.path.exists(os.path.join(fresh, "stdlib", "meta.json"))
    lines = sbatch_lines(script)
    logs = os.path.join(str(tmp_path / "results"), "tx", "_sweep", "logs")
    for expected in ["#SBATCH --job-name=tx", "#SBATCH --array=1-4%16", "#SBATCH --gres=gpu:1",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --time=04:00:00", "#SBATCH --requeue",
                     "#SBATCH --signal=B:USR1@120", "#SBATCH --open-mode=append", f"#SBATCH --output={logs}/%A_%a.out"]:
        assert expected in lines, (expected, lines)
    assert "CUDA_VISIBLE_DEVICES" not in script and "run_train \"$@\"" in script
    # the task file: line i holds the train.py arguments of task i, exactly the runs' commands
    tasks = script.split("TASKS=")[1].split("\n")[0]
    with open(tasks) as f:
        task_lines = f.read().splitlines()
    _, commands, _ = main(capsys, path, "--commands")
    assert ["python train.py " + line for line in task_lines] == commands.splitlines()
    assert len(task_lines) == 4 and shlex.split(task_lines[0])[-1] == "--run_name=baseline_32d_lr1.0e-03_s1"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0

    # options override the template; --gpus 0 leaves no GPU request at all
    code, script, err = main(capsys, path, "--no_check", "-j", "3", "--partition", "gpu", "--account=lab",
                             "--cpus", "4", "--mem", "8G", "--time", "00:02:00", "--sbatch=--qos=high",
                             "--sbatch", "#SBATCH --constraint=a100", "--gpus", "0")
    lines = sbatch_lines(script)
    for expected in ["#SBATCH --array=1-4%3", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
                     "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8G", "#SBATCH --time=00:02:00",
                     "#SBATCH --qos=high", "#SBATCH --constraint=a100", "#SBATCH --signal=B:USR1@30"]:
        assert expected in lines, (expected, lines)
    assert "gres" not in script and "--gpus" not in "\n".join(lines)
    assert "export CUDA_VISIBLE_DEVICES=" in script
    # more GPUs: torchrun with a process each, so gradient accumulation must split evenly between them
    line = one_line_error(*main(capsys, path, "--no_check", "--gpus", "4")[::2])
    assert "gradient_accumulation_steps=1 is not divisible by the 4 DDP processes" in line
    code, script, _ = main(capsys, path, "--no_check", "--gpus", "4", "--gradient_accumulation_steps=8")
    assert "#SBATCH --gres=gpu:4" in sbatch_lines(script)


def test_sbatch_script_for_an_lstm_sweep_gets_one_gpu_unless_asked(tmp_path, capsys, data_dir):
    path = tiny_sweep(tmp_path, "base = ['configs/lstm.py']\ngrid = dict(gradient_accumulation_steps=[2, 4])\n",
                      data_dir)
    code, script, err = main(capsys, path, "--no_check")
    assert code == 0, err
    assert "#SBATCH --gres=gpu:1" in sbatch_lines(script) and "from slurm/train.sbatch" in script
    assert main(capsys, path, "--no_check", "--gradient_accumulation_steps=3")[0] == 0
    # DDP when asked: it splits gradient accumulation across the GPUs, caught before submission
    code, script, err = main(capsys, path, "--no_check", "--gpus", "2")
    assert code == 0 and "#SBATCH --gres=gpu:2" in sbatch_lines(script), err
    line = one_line_error(*main(capsys, path, "--no_check", "--gpus", "2", "--gradient_accumulation_steps=3")[::2])
    assert "gradient_accumulation_steps=3 is not divisible by the 2 DDP processes" in line


def fake_slurm_tools(tmp_path, monkeypatch, nodes, queued=""):
    """sinfo and squeue stand-ins on PATH that print the given lines."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("sinfo", nodes), ("squeue", queued)):
        (bin_dir / name).write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}EOF\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def test_requests_beyond_the_nodes_and_duplicate_submissions_are_caught(tmp_path, capsys, monkeypatch, data_dir):
    path = tiny_sweep(tmp_path, "grid = dict(learning_rate=[1e-3, 2e-3])\nstudy = 'chk'\n", data_dir)
    fake_slurm_tools(tmp_path, monkeypatch, "gpu1|gpu|64|512000|gpu:a100:4(S:0-1)\n"
                                            "cpu1|cpu*|2|24000|(null)\n")
    assert main(capsys, path, "--partition", "gpu")[0] == 0  # 1 GPU, 8 CPUs: fits gpu1
    line = one_line_error(*main(capsys, path)[::2])  # the default partition has no GPU
    assert "each task asks for 8 CPUs, 0 MB memory and 1 GPUs, but no node of the default partition has that " \
           "(largest: 2 CPUs, 24000 MB, 0 GPUs)" in line and "--gpus 0" in line
    assert main(capsys, path, "--gpus", "0", "--cpus", "2")[0] == 0
    line = one_line_error(*main(capsys, path, "--partition", "gpu", "--gpus", "8",
                                "--gradient_accumulation_steps=8")[::2])
    assert "largest: 64 CPUs, 512000 MB, 4 GPUs" in line
    line = one_line_error(*main(capsys, path, "--partition", "gpu", "--mem", "1T")[::2])
    assert "1048576 MB memory" in line
    line = one_line_error(*main(capsys, path, "--partition", "a100")[::2])
    assert "partition a100 not found on this cluster (partitions: cpu, gpu)" in line
    assert main(capsys, path, "--partition", "a100", "--no_check")[0] == 0

    fake_slurm_tools(tmp_path, monkeypatch, "gpu1|gpu*|64|512000|gpu:4\n", queued="101_1\n101_2\n")
    line = one_line_error(*main(capsys, path)[::2])
    assert "jobs of sweep 'chk' are still queued or running (101_1, 101_2)" in line
    assert main(capsys, path, "--no_check")[0] == 0


def test_array_task_runs_its_line_outside_slurm(tmp_path, capsys, data_dir):
    """The generated script is plain bash: task 2 of the array, run by hand, trains run 2 and only it."""
    path = tiny_sweep(tmp_path, "grid = dict(learning_rate=[1e-3, 2e-3])\nstudy = 'arr'\n", data_dir=data_dir)
    code, script, err = main(capsys, path, "--no_check", "--gpus", "0")
    assert code == 0, err
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="2")
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    study = tmp_path / "results" / "arr"
    assert sorted(p.name for p in study.iterdir()) == ["_sweep", "baseline_32d_lr2.0e-03_s1337"]
    final = json.loads((study / "baseline_32d_lr2.0e-03_s1337" / "final.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 30


# ----------------------------------------------------------------------------- --list and idempotence

def write_folder(run, final=None, **changed):
    os.makedirs(run["folder"], exist_ok=True)
    results.write_json(os.path.join(run["folder"], "config.json"),
                       {**run["config"], **changed, "derived": {"n_params": 1}})
    if final:
        results.write_json(os.path.join(run["folder"], "final.json"),
                           {"status": final, "steps": 30, "tokens": 15360, "final_val_loss": 2.5})


def test_list_shows_each_status_and_submission_skips_finished_runs(tmp_path, capsys, data_dir):
    path = tiny_sweep(tmp_path, "grid = dict(learning_rate=[1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3, 7e-3])\n"
                                "study = 'st'\n", data_dir)
    _, runs = expand(path)
    write_folder(runs[0], "completed")
    write_folder(runs[1], "diverged")
    write_folder(runs[2], "interrupted")
    write_folder(runs[3])  # config.json only: running, or killed
    write_folder(runs[5], "early_stopped")
    write_folder(runs[6], "completed", max_iters=99)  # finished under another config
    code, out, _ = main(capsys, path, "--list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"st: 7 runs in {tmp_path / 'results' / 'st'} (2 done, 1 diverged, 1 interrupted, " \
                       f"1 running_or_killed, 1 pending, 1 config_changed)"
    status = {line.split()[1]: line.split()[0] for line in lines[1:]}
    assert [status[r["name"]] for r in runs] == ["done", "diverged", "interrupted", "running_or_killed", "pending",
                                                 "done", "config_changed"]
    assert "max_iters: 99 -> 30" in lines[7] and "early_stopped, 30 steps, val_loss 2.5" in lines[6]
    # train.py would refuse that folder: so does the submission, in one line, before anything is written
    line = one_line_error(*main(capsys, path, "--no_check")[::2])
    assert "1 run folder(s) in" in line and runs[6]["name"] in line and "max_iters: 99 -> 30" in line
    # without it, the array holds exactly the unfinished runs: interrupted, killed, pending
    import shutil
    shutil.rmtree(runs[6]["folder"])
    code, script, err = main(capsys, path, "--no_check")
    assert code == 0 and "#SBATCH --array=1-4%16" in script and "4 runs (3 already finished)" in err
    with open(script.split("TASKS=")[1].split("\n")[0]) as f:
        names = [shlex.split(line)[-1].split("=", 1)[1] for line in f]
    assert names == [runs[i]["name"] for i in (2, 3, 4, 6)]


# ----------------------------------------------------------------------------- best LR for the two-stage recipe

def write_lr_run(root, width, lr, loss):
    name = f"m_{width}d_lr{lr:.1e}_s1"
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    results.write_json(os.path.join(folder, "config.json"), {
        "study": "lrs", "label": "m", "run_name": name, "arch": "transformer", "n_embd": width,
        "learning_rate": lr, "seed": 1, "dataset": "stdlib", "derived": {"flops_per_token": 1e6}})
    with open(os.path.join(folder, "metrics.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(results.METRICS_COLUMNS)
        w.writerow([100, 1000, 1e9, loss + 1, loss + 0.5, lr, 1.0])
        w.writerow([200, 2000, 2e9, loss + 0.5, loss, lr, 2.0])
    results.write_json(os.path.join(folder, "final.json"), {"status": "completed", "steps": 200, "tokens": 2000,
                                                            "final_val_loss": loss, "best_val_loss": loss})


def test_best_lr_from_a_results_folder_and_from_analyze_json(tmp_path):
    """Losses exactly parabolic in log10(LR): width 32 has its optimum at 2e-3 (between grid points), width 64 at
    1e-3 (on the grid). The grid best, the parabola-refined optimum and the lr(width) trend follow."""
    root = str(tmp_path / "lrs")
    optimum = {32: 2e-3, 64: 1e-3}
    for w, best in optimum.items():
        for lr in sweep.lr_grid(1e-3):
            write_lr_run(root, w, lr, 3.0 + (sweep.math.log10(lr) - sweep.math.log10(best)) ** 2)
    assert sweep.best_lr(root, 32) == 3.16e-3  # the grid point nearest 2e-3 in log space
    assert sweep.best_lr(root, 32, use="refined") == 2e-3
    assert sweep.best_lr(root, 64, label="m", arch="transformer") == 1e-3
    # trend through the grid bests (3.16e-3 at 32, 1e-3 at 64): slope -0.5 / log10(2) per decade of width
    assert sweep.best_lr(root, 128, use="trend") == pytest.approx(3.16e-4, rel=0.01)
    with pytest.raises(UserError, match=r"no LR sweep at width 128 .* \(widths swept: 32, 64\); use='trend'"):
        sweep.best_lr(root, 128)
    with pytest.raises(UserError, match="no results at"):
        sweep.best_lr(str(tmp_path / "nothing"), 32)
    json_path = str(tmp_path / "lr.json")
    assert analyze.main([root, "--json", json_path, "--no-plots"]) == 0
    assert sweep.best_lr(json_path, 32, use="refined") == 2e-3 and sweep.best_lr(json_path, 64) == 1e-3
    assert sweep.best_lr(json_path, 128, use="trend") == pytest.approx(3.16e-4, rel=0.01)
    # used from a sweep file (stage 2)
    path = tiny_sweep(tmp_path, f"runs = [dict(n_embd=w, learning_rate=best_lr({root!r}, w, use='refined')) "
                                f"for w in (32, 64)]\n")
    _, runs = expand(path)
    assert [r["config"]["learning_rate"] for r in runs] == [2e-3, 1e-3]


# ----------------------------------------------------------------------------- real runs

def read_rows(folder):
    with open(os.path.join(folder, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def test_local_two_workers_failures_reported_and_rerun_skips_finished(tmp_path, data_dir):
    path = tiny_sweep(tmp_path, "study = 'loc'\nruns = [dict(learning_rate=lr, seed=s) for lr in (1e-3, 2e-3) "
                                "for s in (1, 2)] + [dict(label='bad', dataset='no_such_data')]\n", data_dir=data_dir)
    cmd = [sys.executable, "sweep.py", path, "--local", "-j", "2"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    cores = len(os.sched_getaffinity(0))
    assert f"5 of 5 runs to do, 2 at a time x {max(1, cores // 2)} thread" in out.stdout
    assert "loc: 4 finished, 1 failed" in out.stdout
    summary = out.stdout.split("loc: 4 finished, 1 failed")[1]
    assert "FAILED bad_32d_lr1.0e-03_s1337: exit 2: error: " in summary and "no_such_data" in summary
    study = tmp_path / "results" / "loc"
    done = sorted(p.name for p in study.iterdir() if (p / "final.json").exists())
    assert done == ["baseline_32d_lr1.0e-03_s1", "baseline_32d_lr1.0e-03_s2", "baseline_32d_lr2.0e-03_s1",
                    "baseline_32d_lr2.0e-03_s2"]
    for name in done:
        assert json.loads((study / name / "final.json").read_text())["status"] == "completed"
        assert [r["step"] for r in read_rows(str(study / name))] == ["10", "20", "30"]
    # again: the finished runs are skipped, only the failing ones are tried
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "1 of 5 runs to do" in again.stdout
    assert "start   baseline_32d_lr1.0e-03_s1\n" not in again.stdout


def test_local_sweep_stopped_by_sigterm_resumes(tmp_path, data_dir):
    path = tiny_sweep(tmp_path, "study = 'stop'\nfixed.update(max_iters=300, eval_interval=100)\n",
                      data_dir=data_dir)
    cmd = [sys.executable, "sweep.py", path, "--local", "-j", "2"]  # one thread: tiny models run best on one
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = str(tmp_path / "results" / "stop" / "baseline_32d_lr1.0e-03_s1337")
    end = time.time() + 120
    while time.time() < end and not (os.path.exists(os.path.join(folder, "metrics.csv"))
                                     and len(read_rows(folder)) >= 1):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert "SIGTERM: stopping 1 run(s)" in out and "1 not finished (run the same command to resume)" in out
    final = json.loads(open(os.path.join(folder, "final.json")).read())
    assert final["status"] == "interrupted" and 100 <= final["steps"] < 300
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout
    assert json.loads(open(os.path.join(folder, "final.json")).read())["status"] == "completed"
    assert [int(r["step"]) for r in read_rows(folder)] == [100, 200, 300]
    with open(os.path.join(tmp_path, "results", "stop", "_sweep", "logs", "baseline_32d_lr1.0e-03_s1337.log")) as f:
        assert f"resuming {folder} from step {final['steps']}" in f.read()  # not started over


def test_sbatch_templates_run_outside_slurm(tmp_path, data_dir):
    """The bodies of slurm/train.sbatch and slurm/lstm_ddp.sbatch, run by bash as a job would run them; with two
    GPUs' worth of SLURM_GPUS_ON_NODE the LSTM script starts torchrun with 2 processes (gloo on this CPU)."""
    common = [f"--results_dir={tmp_path}", f"--data_dir={data_dir}", "--study=tpl", "--dataset=stdlib",
              "--n_embd=32", "--block_size=32", "--batch_size=4", "--max_iters=20", "--eval_interval=10",
              "--eval_iters=2", "--device=cpu", "--dtype=float32"]
    env = dict(os.environ, TRAIN_PYTHON=sys.executable, SLURM_CPUS_PER_TASK="1")
    out = subprocess.run(["bash", "slurm/train.sbatch", "--n_layer=1", "--n_head=2", *common], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "train.py --n_layer=1" in out.stdout
    out = subprocess.run(["bash", "slurm/lstm_ddp.sbatch", "configs/lstm.py", "--gradient_accumulation_steps=2",
                          *common], cwd=ROOT, env=dict(env, SLURM_GPUS_ON_NODE="2"), capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "torch.distributed.run --standalone --nproc_per_node=2 train.py configs/lstm.py" in out.stdout
    config = json.loads((tmp_path / "tpl" / "lstm_32d_lr1.0e-03_s1337" / "config.json").read_text())
    assert config["arch"] == "lstm" and config["derived"]["world_size"] == 2
