"""Shared test fixtures: the repo on sys.path, the offline GPT-2 tokenizer cache, one prepared embedded corpus."""
import os
import subprocess
import sys

import hypothesis
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TIKTOKEN_CACHE = os.path.join(os.path.dirname(ROOT), "shared", "tiktoken")
if os.path.isdir(TIKTOKEN_CACHE):  # the GPT-2 BPE file, offline (see README)
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", TIKTOKEN_CACHE)
os.environ.setdefault("WANDB_MODE", "offline")

# Property-based tests (hypothesis) draw the same examples on every run, so a pass or a failure in CI is
# repeatable; FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz.py is a hunt that draws new ones
hypothesis.settings.register_profile("repeatable", derandomize=True)
hypothesis.settings.register_profile("hunt", derandomize=False)
hypothesis.settings.load_profile("hunt" if "FUZZ_EXAMPLES" in os.environ else "repeatable")


@pytest.fixture(scope="session")
def stdlib_data(tmp_path_factory):
    """data_dir holding the prepared embedded corpus ('stdlib', byte tokens), built once per session."""
    import prepare
    data_dir = str(tmp_path_factory.mktemp("data"))
    prepare.prepare("stdlib", data_dir=data_dir)
    return data_dir


@pytest.fixture(scope="session")
def data_dir(stdlib_data):
    """stdlib_data by the name the sweep tests (test_sweep.py, test_slurm.py) give it."""
    return stdlib_data


def run_script(script, args, cwd, timeout=300, env=None, **kwargs):
    """Run one of the toolkit's scripts in a subprocess (as a user would) and return CompletedProcess."""
    full_env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, **kwargs)
