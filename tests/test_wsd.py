"""The wsd schedule and its cooldown branches (train.py, issue 17), and how budgets combine (issue 25): the
schedule by hand; each anneal.csv point equals the final loss of a standalone run of its budget (same seed, bit
for bit on CPU) and the branches leave the main run untouched; SIGKILL inside a branch keeps the finished points
and redoes the killed one; bad combinations are one line and exit status 2; a budget the user sets is not cut by
the max_iters default, and the first and last lines say which budget ends the run."""
import math
import os
import re
import signal

import pytest

import results
import train
from configurator import UserError
from test_reliability import comparable_rows, train_process
from test_train import run_in_process, tiny

WSD = ["--lr_schedule=wsd", "--warmup_iters=4", "--learning_rate=3e-3", "--dropout=0.1",
       "--gradient_accumulation_steps=2"]
BUDGETS = [15, 36]  # decay starts round(0.8 x S) = 12 and 29: neither on an evaluation step


def config_of(*args):
    return train.resolve_config(["--max_iters=10", *args])


# ----------------------------------------------------------------------------- the schedule by hand
@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_wsd_schedule_by_hand(shape):
    c = {**train.DEFAULTS, "lr_schedule": "wsd", "learning_rate": 1.0, "min_lr": 0.1, "warmup_iters": 2,
         "decay_frac": 0.3, "decay_shape": shape}
    assert train.wsd_decay_start(10, c) == 7  # the last round(0.3 x 10) = 3 steps decay
    decay = [1 / 3, 2 / 3, 1.0] if shape == "linear" else [math.sqrt(1 / 3), math.sqrt(2 / 3), 1.0]
    want = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0] + [0.1 + 0.9 * (1 - d) for d in decay]
    assert [train.lr_at(step, c, 10) for step in range(10)] == pytest.approx(want, abs=1e-12)
    # what the branches rely on: before a budget's decay start, its schedule is the longer run's
    for total in (40, 100):
        for budget in range(3, total):
            start = train.wsd_decay_start(budget, c)
            assert all(train.lr_at(s, c, budget) == train.lr_at(s, c, total) for s in range(start))


def test_min_lr_default_is_a_tenth_for_wsd_too():
    c = config_of("--lr_schedule=wsd", "--warmup_frac=0", "--learning_rate=2e-3")
    assert train.lr_at(9, c, 10) == pytest.approx(2e-4) and train.lr_at(7, c, 10) == 2e-3


# ----------------------------------------------------------------------------- cooldown point == standalone run
@pytest.fixture(scope="module")
def wsd_runs(stdlib_data, tmp_path_factory):
    """The main run with cooldowns, the same run without them, and a standalone run of each budget."""
    root = tmp_path_factory.mktemp("wsd")
    cooldowns = f"--cooldowns={BUDGETS}".replace(" ", "")
    main = run_in_process(tiny(stdlib_data, root, *WSD, "--decay_shape=1-sqrt", "--max_iters=60", cooldowns,
                               "--run_name=main"))
    plain = run_in_process(tiny(stdlib_data, root, *WSD, "--decay_shape=1-sqrt", "--max_iters=60",
                                "--run_name=plain"))
    alone = {s: run_in_process(tiny(stdlib_data, root, *WSD, "--decay_shape=1-sqrt", f"--max_iters={s}",
                                    f"--run_name=alone{s}"))[2] for s in BUDGETS}
    return main, plain, alone


def test_each_cooldown_point_is_the_standalone_runs_final_loss(wsd_runs):
    (_, status, run), _, alone = wsd_runs
    assert status == "completed" and not run["problems"]
    assert [r["step"] for r in run["anneal"]] == BUDGETS
    for point in run["anneal"]:
        standalone = alone[point["step"]]["final"]
        assert standalone["steps"] == point["step"]
        assert point["val_loss"] == standalone["final_val_loss"]  # exact: same weights, same validation batches
        assert (point["tokens"], point["flops"]) == (standalone["tokens"], standalone["flops"])
        assert point["branch_from"] == train.wsd_decay_start(point["step"], run["config"])
    with open(os.path.join(run["path"], "anneal.csv")) as f:
        assert f.readline().strip().split(",")[:4] == results.ANNEAL_COLUMNS


def test_branches_leave_the_main_run_untouched_and_their_time_apart(wsd_runs):
    (_, _, run), (_, _, plain), _ = wsd_runs
    assert comparable_rows(run["path"]) == comparable_rows(plain["path"])
    drop = ("elapsed_s", "cooldown_s")
    assert {k: v for k, v in run["final"].items() if k not in drop} == \
        {k: v for k, v in plain["final"].items() if k not in drop}
    assert "cooldown_s" not in plain["final"]
    assert run["final"]["cooldown_s"] == pytest.approx(sum(r["branch_s"] for r in run["anneal"]), abs=2e-3)
    assert run["final"]["cooldown_s"] > 0


# ----------------------------------------------------------------------------- SIGKILL inside a branch
def test_sigkill_inside_a_branch_keeps_the_points_and_redoes_the_killed_branch(stdlib_data, tmp_path):
    """Evaluations read 150 batches (about half a second): the kill lands in the second branch, after its
    'branching' line and before its point is written."""
    args = tiny(stdlib_data, tmp_path, *WSD, "--max_iters=60", f"--cooldowns={BUDGETS}".replace(" ", ""),
                "--eval_interval=60", "--eval_iters=150", "--peak_flops=1e12", "--run_name=k")
    _, _, reference = run_in_process(args + [f"--results_dir={tmp_path / 'ref'}"])  # uninterrupted
    folder = os.path.join(tmp_path, "default", "k")
    run = train_process(args, tmp_path)
    run.wait_until(lambda: run.saw("cooldown 36: branching at step 29"), "the second branch starting")
    run.signal(signal.SIGKILL)
    run.finish()
    killed = results.read_run(folder)
    assert killed["status"] == "running_or_killed" and [r["step"] for r in killed["anneal"]] == [15]
    again = train_process(args, tmp_path)
    assert again.finish() == 0, again.stderr
    assert again.saw("resuming") and again.saw("cooldown 36: branching at step 29")
    assert not again.saw("cooldown 15: branching")  # its point was kept, not redone
    finished = results.read_run(folder)

    def points(r):
        return [{k: v for k, v in p.items() if k != "branch_s"} for p in r["anneal"]]
    assert points(finished) == points(reference) and [p["step"] for p in points(finished)] == BUDGETS
    assert comparable_rows(folder) == comparable_rows(reference["path"])
    drop = ("elapsed_s", "cooldown_s")
    assert {k: v for k, v in finished["final"].items() if k not in drop} == \
        {k: v for k, v in reference["final"].items() if k not in drop}


# ----------------------------------------------------------------------------- bad combinations
@pytest.mark.parametrize("args, message", [
    (["--cooldowns=[5]", "--warmup_iters=2"], "cooldowns needs lr_schedule=wsd"),
    (["--lr_schedule=wsd"], "needs its warmup fixed in steps"),
    (["--lr_schedule=wsd", "--warmup_iters=2", "--lr_decay_iters=8"], "lr_decay_iters is for linear/cosine"),
    (["--lr_schedule=wsd", "--warmup_frac=0", "--cooldowns=[5,5]"], "distinct positive step counts"),
    (["--lr_schedule=wsd", "--warmup_frac=0", "--cooldowns=[0]"], "distinct positive step counts"),
    (["--lr_schedule=wsd", "--warmup_frac=0", "--cooldowns=5"], "distinct positive step counts"),
    (["--lr_schedule=wsd", "--warmup_frac=0", "--cooldowns=[2]"], "has no decay steps"),
    (["--lr_schedule=wsd", "--warmup_iters=5", "--cooldowns=[5]"], "inside the warmup"),
    (["--lr_schedule=wsd", "--warmup_frac=0", "--cooldowns=[5]", "--early_stopping_patience=2"],
     "cannot be combined with early_stopping_patience"),
    (["--lr_schedule=wsd", "--warmup_frac=0", "--decay_frac=0"], "decay_frac must be in (0, 1]"),
    (["--lr_schedule=wsd", "--warmup_frac=0", "--decay_shape=cosine"], "decay_shape='cosine' is not one of"),
])
def test_bad_combinations_are_refused_up_front(args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config_of(*args)


@pytest.mark.parametrize("args, message", [
    (["--max_iters=20", "--cooldowns=[10,20]"], "cooldowns [20] are not shorter than the run"),
    (["--max_iters=0", "--time_limit_s=5", "--cooldowns=[10]"], "lr_schedule=wsd needs to know the run's length"),
    (["--max_iters=10", "--warmup_iters=9"], "warmup_iters=9 is longer than the stable phase"),
])
def test_bad_combinations_known_at_start_are_one_line_exit_2_nothing_written(stdlib_data, tmp_path, capsys,
                                                                             args, message):
    argv = tiny(stdlib_data, tmp_path, "--lr_schedule=wsd", "--warmup_frac=0", *args, "--run_name=bad")
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not os.path.exists(os.path.join(tmp_path, "default", "bad"))


# ----------------------------------------------------------------------------- budgets (issue 25)
def test_the_max_iters_default_applies_only_without_another_budget():
    assert train.resolve_config([])["max_iters"] == train.DEFAULT_MAX_ITERS
    assert train.resolve_config(["--time_limit_s=60"])["max_iters"] == train.DEFAULT_MAX_ITERS  # a cap only
    for budget in ("--max_tokens=1e7", "--max_flops=1e15", "--tokens_per_param=20"):
        c = train.resolve_config([budget])
        assert c["max_iters"] == 0
        assert train.budget_steps(c, 128, 1e5, 10 ** 6) > train.DEFAULT_MAX_ITERS  # not cut at 2000
    c = train.resolve_config(["--max_iters=100", "--max_tokens=1e7"])  # both set: the first reached ends it
    limits = train.budget_limits(c, 128, 1e5, 10 ** 6)
    assert limits == {"max_iters": 100, "max_tokens": 78125} and train.binding_budget(limits) == "max_iters"


def test_first_and_last_lines_and_final_json_name_the_budget(stdlib_data, tmp_path, capsys):
    _, status, run = run_in_process(tiny(stdlib_data, tmp_path, "--max_tokens=2560", "--run_name=b"))
    out = capsys.readouterr().out
    assert status == "completed" and run["final"]["steps"] == 20 and run["final"]["budget"] == "max_tokens"
    assert "20 steps (budget: max_tokens=2560 -> 20 steps)" in out
    assert re.search(r"completed: 20 steps \(ended by max_tokens=2560\), 2,560 tokens, final val loss \d+\.\d{4};",
                     out)
    size = re.search(r"([\d.]+)M params \(([\d.]+)M non-embedding\)", out)
    d = run["derived"]
    assert float(size[1]) == float(f"{d['n_params'] / 1e6:.3g}") and \
        float(size[2]) == float(f"{d['n_params_non_embedding'] / 1e6:.3g}")  # 3 significant digits


def test_the_interrupt_line_says_whose_loss_it_prints(stdlib_data, tmp_path, capsys, monkeypatch):
    """A SIGTERM arriving during step 13 (train.py captures the RNG state after every step: the 14th capture)."""
    captures, real = [], train.capture_rng

    def capture_and_signal(batches):
        captures.append(1)
        if len(captures) == 14:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(batches)
    monkeypatch.setattr(train, "capture_rng", capture_and_signal)
    _, status, run = run_in_process(tiny(stdlib_data, tmp_path, "--max_iters=50", "--run_name=i"))
    out = capsys.readouterr().out
    assert status == "interrupted" and run["final"]["steps"] == 13 and run["final"]["budget"] == "max_iters"
    loss = run["metrics"][-1]["val_loss"]
    assert f"interrupted: 13 steps (budget: max_iters=50 -> 50 steps), 1,664 tokens, val loss {loss:.4f} at " \
           f"step 10 (the last evaluation); results in" in out
