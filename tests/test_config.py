"""The configurator and train.py's start-up checks: what nanoGPT users trip on gets a clear one-line error."""
import pytest

import train
from configurator import UserError, parse_args
from conftest import run_script

D = train.DEFAULTS


def parsed(*args):
    return parse_args(list(args), D)[0]


def test_types_are_coerced_to_the_defaults_type():
    c = parsed("--learning_rate=1", "--max_tokens=1e6", "--bias=true", "--tie_embeddings=0", "--run_name=123",
               "--device=cpu", "--compile=False", "--min_lr=3e-5", "--layer_lr_mults=[1, 0.5, 2]")
    assert c["learning_rate"] == 1.0 and isinstance(c["learning_rate"], float)
    assert c["max_tokens"] == 1_000_000 and isinstance(c["max_tokens"], int)
    assert c["bias"] is True and c["tie_embeddings"] is False
    assert c["run_name"] == "123" and c["device"] == "cpu" and c["compile"] is False
    assert c["min_lr"] == 3e-5  # a key whose default is None takes a number
    assert c["layer_lr_mults"] == [1, 0.5, 2]
    assert parsed("--min_lr=None")["min_lr"] is None
    # found by the fuzzer: a text key took the bool True and crashed later; 'auto' keys keep their bools
    c = parsed("--run_name=True", "--results_dir=False", "--compile=True")
    assert (c["run_name"], c["results_dir"], c["compile"]) == ("True", "False", True)


@pytest.mark.parametrize("arg, message", [
    ("--learnig_rate=1e-3", "did you mean 'learning_rate'"),
    ("--max_iters=1.5", "expects an integer"),
    ("--max_iters=abc", "expects an integer"),
    ("--learning_rate=fast", "expects a number"),
    ("--bias=maybe", "expects True or False"),
    ("--bias", "needs a value"),
])
def test_bad_arguments(arg, message):
    with pytest.raises(UserError, match=message):
        parsed(arg)


def test_config_files_include_and_errors(tmp_path):
    (tmp_path / "base.py").write_text("import math\nn_embd = 96\nlabel = 'base'\n")
    (tmp_path / "child.py").write_text("include('base.py')\nn_head = n_embd // 32  # reads values in scope\n")
    c, files = parse_args([str(tmp_path / "child.py"), "--n_embd=64"], D)
    assert (c["n_head"], c["n_embd"], c["label"]) == (3, 64, "base") and files == [str(tmp_path / "child.py")]
    (tmp_path / "typo.py").write_text("n_layers = 4\n")
    with pytest.raises(UserError, match=r"unknown config key 'n_layers' in .*typo.py \(did you mean 'n_layer'"):
        parse_args([str(tmp_path / "typo.py")], D)
    (tmp_path / "syntax.py").write_text("n_layer = 4\nn_embd = (\n")
    with pytest.raises(UserError, match=r"syntax.py:\d+: syntax error"):
        parse_args([str(tmp_path / "syntax.py")], D)
    with pytest.raises(UserError, match="config file not found"):
        parse_args([str(tmp_path / "missing.py")], D)
    # found by the fuzzer: CPython 3.11 raises MemoryError on this (its parser's stack), others a SyntaxError
    (tmp_path / "deep.py").write_text("activation = " + "[" * 199 + "]" * 199 + "\n:\n")
    with pytest.raises(UserError, match=r"deep.py.*(syntax error|too deeply nested)"):
        parse_args([str(tmp_path / "deep.py")], D)


@pytest.mark.parametrize("args, message", [
    (["--activation=swish"], "activation='swish' is not one of relu, gelu, silu, glu, swiglu, geglu"),
    (["--optimizer=lion"], "is not one of adamw, adam, sgd"),
    (["--n_embd=100", "--n_head=3"], "not divisible by n_head"),
    (["--max_iters=0"], "no training budget"),
    (["--arch=lstm", "--lstm_hidden=64", "--n_embd=32"], "tie_embeddings needs the LSTM output width"),
    (["--arch=lstm", "--use_mup=True"], "use_mup is implemented for arch='transformer' only"),
    (["--layer_lr_mults=[1, 2]"], "layer_lr_mults must be a list of 3 numbers"),
    (["--dropout=1.5"], "dropout must be in"),
    (["--run_name=a/b"], "plain folder name"),
])
def test_inconsistent_settings_fail_at_start(args, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train.resolve_config(args)


def test_default_label_and_run_name(tmp_path):
    (tmp_path / "swiglu.py").write_text("activation = 'swiglu'\n")
    c = train.resolve_config([str(tmp_path / "swiglu.py"), "--n_embd=64", "--learning_rate=3.2e-3", "--seed=1"])
    assert c["label"] == "swiglu" and c["run_name"] == "swiglu_64d_lr3.2e-03_s1"
    assert train.resolve_config([])["label"] == "baseline"
    assert train.run_folder(c).endswith("results/default/swiglu_64d_lr3.2e-03_s1")
    # the name gives the LR back exactly: 0.128 and 0.125 both rounded to 1.3e-01 once
    names = [train.resolve_config([f"--learning_rate={lr}"])["run_name"] for lr in (0.128, 0.125, 1e-3)]
    assert names == ["baseline_128d_lr1.28e-01_s1337", "baseline_128d_lr1.25e-01_s1337",
                     "baseline_128d_lr1.0e-03_s1337"]


def test_presets_resolve():
    import glob
    import os
    from conftest import ROOT
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)):
        if os.sep + "sweeps" + os.sep in path or os.sep + "ledger" + os.sep in path:
            continue  # sweep and ledger files are not train.py configs
        c = train.resolve_config([path])
        assert c["label"], path


def test_cli_errors_are_one_line(tmp_path):
    out = run_script("train.py", ["--lerning_rate=1"], cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "did you mean 'learning_rate'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "results").exists()  # nothing written
    missing = run_script("train.py", ["--dataset=nope", "--max_iters=1"], cwd=tmp_path, timeout=120)
    assert missing.returncode == 2 and "prepare.py" in missing.stderr and "Traceback" not in missing.stderr
    helped = run_script("train.py", ["--help"], cwd=tmp_path, timeout=120)
    assert helped.returncode == 0 and "learning_rate" in helped.stdout and "tokens_per_param" in helped.stdout


def test_auto_dtype_choice(monkeypatch):
    """dtype='auto' on CPU: bf16 autocast for Transformers of width >= 64 where the CPU has native bf16 (measured
    to pay there with the same validation loss), fp32 below that, for the LSTM and on CPUs without bf16; an
    explicit dtype is always kept."""
    def pick(native, **kw):
        monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: native)
        return train.pick_dtype(train.resolve_config([f"--{k}={v}" for k, v in kw.items()]), "cpu")

    assert pick(True, n_embd=64, n_head=4) == "bfloat16"
    assert pick(True, n_embd=256, n_head=4) == "bfloat16"
    assert pick(True, n_embd=32, n_head=4) == "float32"
    assert pick(True, n_embd=256, arch="lstm") == "float32"
    assert pick(False, n_embd=256, n_head=4) == "float32"
    assert pick(True, n_embd=256, n_head=4, dtype="float32") == "float32"
    assert pick(False, n_embd=32, n_head=4, dtype="bfloat16") == "bfloat16"
