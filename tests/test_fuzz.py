"""Property-based fuzzing (hypothesis) of what users and killed runs hand the toolkit: any --key=value argument,
any config file, any truncation of or garbage in a run folder's files, any CSV. The configurator may only raise
UserError (printed as one line); the run-folder readers of results.py never raise; the readers of analyze.py,
fit_scaling.py and sweep.py raise nothing but UserError. All in-process calls, about 10-20 s."""
import math
import os
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import analyze
import fit_scaling
import results
import sweep
import train
from configurator import UserError

# FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py: a longer hunt, with new examples (see conftest.py)
FUZZ = settings(deadline=None, max_examples=int(os.environ.get("FUZZ_EXAMPLES", 150)),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KEYS = sorted(train.DEFAULTS)


@pytest.fixture(scope="module", autouse=True)
def empty_cwd(tmp_path_factory):
    """Bare arguments are config file paths: run where no file can be found by accident."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


def one_line_user_error(call, *args, inputs=""):
    """call(*args); a UserError is fine if it is one line (when the input itself has no newline)."""
    try:
        return call(*args)
    except UserError as e:
        message = str(e)
        assert message.strip(), "empty error message"
        if "\n" not in inputs and "\r" not in inputs:
            assert "\n" not in message, message
        return None


# ----------------------------------------------------------------------------- configurator and train.py

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-10 ** 30, 10 ** 30) | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=4),
                                                                                            inner, max_size=3),
    max_leaves=8)
value_text = st.one_of(
    st.text(max_size=30),
    json_like.map(repr),
    st.sampled_from(["", "1e999", "-1e999", "nan", "inf", "None", "True", "false", "0", "-1", "1e6", "1.5", "0x10",
                     "1_000", "[1, 2, 3]", "[0.5, 1, 2]", "[1, 2", "{'a': 1}", "(1,)", "1j", "'x'", "''", "()" * 300,
                     "[" * 200 + "]" * 200, "9" * 5000, "-" * 500 + "1", "2**10", "__import__('os')", "\x00",
                     "a\x00b", "é" * 300, "lstm", "rotary", "sgd", "auto", "cpu", "x/y", ".", ".."]),
)
key_text = st.one_of(st.sampled_from(KEYS), st.sampled_from(KEYS).map(lambda k: k[:-1] + "x"), st.text(max_size=12))
argument = st.one_of(
    st.builds(lambda k, v: f"--{k}={v}", key_text, value_text),
    st.builds(lambda k, v: f"--{k}={v}", st.sampled_from(KEYS), value_text),
    st.sampled_from(KEYS).map(lambda k: f"--{k}"),
    st.text(max_size=20),  # a bare word: a config file path that does not exist
    st.just("--"), st.just("--=1"), st.just("-x=1"),
)


@FUZZ
@given(args=st.lists(argument, max_size=6))
def test_any_arguments_give_a_config_or_one_line_error(args):
    config = one_line_user_error(train.resolve_config, args, inputs="".join(args))
    if config is not None:  # what was accepted must be usable: a folder name, finite numbers, a budget
        folder = train.run_folder(config)
        assert "\0" not in folder and os.path.basename(folder) == config["run_name"]
        for key, default in train.DEFAULTS.items():
            if isinstance(default, float):
                assert isinstance(config[key], float) and math.isfinite(config[key]), key
            elif isinstance(default, int) and not isinstance(default, bool):
                assert type(config[key]) is int, key
        assert config["n_embd"] % config["n_head"] == 0 or config["arch"] == "lstm"


config_line = st.one_of(
    st.builds(lambda k, v: f"{k} = {v!r}", st.sampled_from(KEYS), json_like),
    st.builds(lambda k, v: f"{k} = {v}", key_text.filter(str.isidentifier), value_text),
    st.sampled_from(["import math", "n_head = n_embd // 16", "include('missing.py')", "include(__file__)",
                     "x = 1 / 0", "raise ValueError('no')", "def f(): pass", "class C: pass", "_private = 1",
                     "n_layer = 2 if True else", "n_embd = float('nan')", "max_flops = float('inf')",
                     "label = None", "learning_rate = 10 ** 400", "   indented = 1", "# comment", "'''", "\t",
                     "n_layer = [1] * 3", "dropout = True", "compile = 1", "seed = -1"]),
    st.text(max_size=40),
)


@pytest.mark.filterwarnings("ignore::SyntaxWarning")  # compile() remarks on odd but valid fuzzed code
@FUZZ
@given(lines=st.lists(config_line, max_size=6), extra=st.lists(argument, max_size=2))
def test_any_config_file_gives_a_config_or_one_line_error(tmp_path_factory, lines, extra):
    folder = tmp_path_factory.mktemp("cfg")
    path = folder / "fuzzed.py"
    text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    # a file including itself recurses; Python stops that with RecursionError, which must become one line
    one_line_user_error(train.resolve_config, [str(path)] + extra, inputs="".join(lines + extra))


# ----------------------------------------------------------------------------- run-folder readers

def write_run_folder(root, name, status="completed", n_rows=4):
    """A run folder as train.py writes it, through the writer train.py uses."""
    folder = os.path.join(root, "study", name)
    os.makedirs(folder, exist_ok=True)
    config = train.resolve_config(["--n_layer=1", "--n_embd=32", "--n_head=2", "--max_iters=40",
                                   f"--run_name={name}", f"--results_dir={root}", "--study=study"])
    config["derived"] = {"n_params": 20000, "n_params_non_embedding": 10000, "flops_per_token": 1.4e5,
                         "tokens_per_step": 128, "world_size": 1, "device": "cpu", "torch": "x", "git_sha": None}
    results.write_json(os.path.join(folder, "config.json"), config)
    f = results.open_metrics(os.path.join(folder, "metrics.csv"), results.METRICS_COLUMNS)
    for i in range(1, n_rows + 1):
        results.append_metrics(f, results.METRICS_COLUMNS, {
            "step": 10 * i, "tokens": 1280 * i, "flops": 1280 * i * 1.4e5, "train_loss": 5.0 - 0.3 * i,
            "val_loss": 5.1 - 0.3 * i, "lr": 1e-3, "elapsed_s": 0.1 * i})
    f.close()
    if status:
        results.write_json(os.path.join(folder, "final.json"), {
            "status": status, "steps": 10 * n_rows, "tokens": 1280 * n_rows, "flops": 1280 * n_rows * 1.4e5,
            "elapsed_s": 1.0, "final_val_loss": 5.1 - 0.3 * n_rows, "best_val_loss": 5.1 - 0.3 * n_rows,
            "step_val_acc_99": None})
    return folder, config


def read_everything(root, folder, config):
    """Every reader of run folders in the toolkit, as analyze.py, fit_scaling.py and sweep.py --list call them."""
    run = results.read_run(folder)
    assert set(run) == {"path", "name", "config", "derived", "final", "status", "metrics", "anneal", "problems"}
    assert run["config"] is None or isinstance(run["config"], dict)
    assert run["final"] is None or isinstance(run["final"], dict)
    assert isinstance(run["derived"], dict) and all(isinstance(p, str) for p in run["problems"])
    for row in run["metrics"]:
        assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values())
    assert folder in results.find_runs(root)
    analyze.summarize_run(run)
    one_line_user_error(analyze.load_runs, root)
    one_line_user_error(fit_scaling.read_run_points, root, fit_scaling.parse_args([root]), {})
    status, detail = sweep.run_status({"folder": folder, "config": config})
    assert status in ("done", "diverged", "interrupted", "running_or_killed", "pending", "config_changed",
                      "damaged") and isinstance(detail, str)
    return run


garbage = st.one_of(st.text(max_size=60), st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
                    st.sampled_from(["nan", "inf", "-inf", "1e999", "9" * 400, "9" * 5000, ",,,,", "\n\n", "\x00",
                                     '"', "-", "1e-320", "\r", "²", "١٢", "1_0", "[" * 3000, "{", "null", "true",
                                     '"status": "completed"', "\ufeff", "step,tokens,flops,val_loss\n"]))


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    folders = [write_run_folder(root, "good"), write_run_folder(root, "victim"),
               write_run_folder(root, "killed", status=None, n_rows=2)]
    originals = {name: open(os.path.join(folders[1][0], name), "rb").read()
                 for name in ("config.json", "metrics.csv", "final.json")}
    return root, folders, originals


@FUZZ
@given(which=st.sampled_from(["config.json", "metrics.csv", "final.json"]), cut=st.floats(0, 1),
       insert=garbage, where=st.floats(0, 1), also_remove=st.sampled_from([None, "config.json", "metrics.csv",
                                                                          "final.json"]))
def test_truncated_or_garbled_run_files_never_break_the_readers(fuzz_root, which, cut, insert, where, also_remove):
    root, folders, originals = fuzz_root
    folder, config = folders[1]
    for name, data in originals.items():  # start from the intact folder every time
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    data = originals[which]
    data = data[:int(cut * len(data))] if cut < 0.95 else data  # a kill or a full disk cuts a file short
    at = int(where * len(data))
    data = data[:at] + insert.encode("utf-8", "surrogateescape") + data[at:]
    with open(os.path.join(folder, which), "wb") as f:
        f.write(data)
    if also_remove and also_remove != which:
        os.remove(os.path.join(folder, also_remove))
    read_everything(root, folder, config)
    for other, other_config in (folders[0], folders[2]):  # the neighbours are read as before
        assert read_everything(root, other, other_config)["problems"] == []


@FUZZ
@given(config_values=st.dictionaries(st.sampled_from(["label", "arch", "n_embd", "learning_rate", "seed", "study",
                                                       "dataset", "run_name", "data_dir", "derived"]),
                                     json_like, max_size=4),
       derived=st.dictionaries(st.sampled_from(["n_params", "n_params_non_embedding", "flops_per_token"]),
                               st.one_of(json_like, st.integers(10 ** 300, 10 ** 400)), max_size=3),
       final_values=st.dictionaries(st.sampled_from(["status", "steps", "final_val_loss", "step_val_acc_99"]),
                                    json_like, max_size=3))
def test_wrong_types_in_json_files_never_break_the_readers(fuzz_root, config_values, derived, final_values):
    """Valid JSON holding the wrong types: lists for widths, huge integers for parameter counts, NaN steps."""
    root, folders, originals = fuzz_root
    folder, config = folders[1]
    import json
    saved = json.loads(originals["config.json"])
    saved.update(config_values)
    if isinstance(saved.get("derived"), dict):
        saved["derived"].update(derived)
    results.write_json(os.path.join(folder, "config.json"), saved)
    final = json.loads(originals["final.json"])
    final.update(final_values)
    results.write_json(os.path.join(folder, "final.json"), final)
    with open(os.path.join(folder, "metrics.csv"), "wb") as f:
        f.write(originals["metrics.csv"])
    read_everything(root, folder, config)


# ----------------------------------------------------------------------------- CSV input of fit_scaling.py

cell = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-5, 10 ** 12).map(str),
                 st.sampled_from(["", " ", "nan", "abc", "0", "-0", "1e999", "1,2", '"', "\x00", "9" * 400]),
                 st.text(alphabet=string.printable, max_size=8))
headers = st.lists(st.sampled_from(["params", "tokens", "flops", "loss", "label", "run", "Model Size",
                                    "Training Tokens", "Training FLOP", "val_loss", "N", "D", "C", "other", ""]),
                   max_size=6)


@FUZZ
@given(header=headers, rows=st.lists(st.lists(cell, max_size=7), max_size=8), flops=st.sampled_from(["column",
                                                                                                       "6nd"]))
def test_any_csv_gives_points_or_one_line_error(tmp_path_factory, header, rows, flops):
    path = tmp_path_factory.mktemp("csv") / "points.csv"
    text = "\n".join(",".join(r) for r in [header] + rows) + "\n"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    args = fit_scaling.parse_args([str(path), "--flops", flops])
    skipped = {}
    points = one_line_user_error(fit_scaling.read_csv_points, str(path), args, skipped, inputs=text)
    if points is not None:
        assert len(set(len(v) for v in points.values())) == 1  # one entry per point in every column
        for key in ("N", "D", "C", "L"):
            assert all(math.isfinite(v) and v > 0 for v in points[key])
        if points["L"]:
            one_line_user_error(fit_scaling.select_points, points, args, skipped)


def test_the_fuzzers_reach_their_targets(fuzz_root):
    """Guard against fuzzing nothing: the fixture folder reads clean, and a known-bad argument is refused."""
    root, folders, _ = fuzz_root
    runs = {os.path.basename(r["path"]): r for r in map(results.read_run, results.find_runs(root))}
    assert runs["good"]["status"] == "completed" and not runs["good"]["problems"]
    assert runs["killed"]["status"] == "running_or_killed"
    with pytest.raises(UserError):
        train.resolve_config(["--n_head=0"])
