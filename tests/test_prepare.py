"""Tests of prepare.py: real builds of small corpora and task datasets, checked against independent
computations (hashes, tokenizers, arithmetic), plus every load_dataset failure and the offline error."""
import collections
import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import time

import hypothesis
import hypothesis.strategies
import numpy as np
import pytest

import prepare  # conftest.py puts the repo on sys.path and points TIKTOKEN_CACHE_DIR at ../shared/tiktoken
from configurator import UserError
from conftest import ROOT, TIKTOKEN_CACHE


def gpt2_unavailable():
    try:
        prepare.load_tokenizer("gpt2")
        return None
    except UserError as e:
        return str(e)


GPT2_PROBLEM = gpt2_unavailable()
needs_gpt2 = pytest.mark.skipif(GPT2_PROBLEM is not None, reason=f"GPT-2 tokenizer unavailable offline (set "
                                f"TIKTOKEN_CACHE_DIR, or provide {TIKTOKEN_CACHE}): {GPT2_PROBLEM}")
TOKENIZERS = ["byte", pytest.param("gpt2", marks=needs_gpt2)]

# Documents with the awkward cases: non-ASCII, CRLF, tabs, indentation after newlines, blank lines with
# spaces, no final newline, a nested folder, a 15 KB line followed by indented lines.
DOCS = {f"doc{i:02d}.txt": f"Document {i}.\n  indented line {i}\n\tx = {i} * 2\n" for i in range(40)}
DOCS.update({
    "unicode.txt": "Grüße, 日本語, emoji 🙂 and math ∑ x² \n",
    "crlf.txt": "line one\r\nline two\r\n\r\n",
    "no_newline.txt": "ends without a newline",
    "sub/nested.py": "def f(x):\n    return x  # nested folder\n\n\n    \nclass A:\n    pass\n",
    "sub/deeper/long.txt": "word " * 3000 + "\n" + "  spaces after newline\n" * 50,
})


def write_tree(folder, docs):
    for rel, text in docs.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(text.encode("utf-8"))


def documents(meta, ids):
    """Split a tokens bin back into documents (each ends with the end-of-document token)."""
    text = prepare.decode(meta, ids)
    parts = text.split(prepare.EOT_TEXT)
    assert parts[-1] == "", "the bin must end with the end-of-document token"
    return parts[:-1]


def in_val(key, val_frac=0.05):  # the documented rule, computed independently of prepare.py
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2 ** 64 < val_frac


def build(source, data_dir, **options):
    """prepare() then load_dataset() of what it built."""
    folder = prepare.prepare(source, data_dir=str(data_dir), **options)
    return prepare.load_dataset(str(data_dir), os.path.basename(folder))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    write_tree(folder, DOCS)
    (folder / ".hidden.txt").write_text("hidden files are skipped")
    (folder / "empty.txt").write_text("")
    (folder / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
    return folder


# ----------------------------------------------------------------------------- text sources

@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_text_folder_round_trip_split_and_meta(tmp_path, corpus, tokenizer, capsys):
    data = str(tmp_path / "data")
    folder = prepare.prepare("text", data_dir=data, path=[str(corpus)], tokenizer=tokenizer, num_threads=1)
    assert folder == os.path.join(data, "text")
    assert "skipped 2 empty or binary file(s)" in capsys.readouterr().err
    ds = prepare.load_dataset(data, "text")
    meta = ds["meta"]
    train, val = documents(meta, ds["train"]), documents(meta, ds["val"])

    # round trip, and the split is the documented hash rule, so no document is in both
    assert sorted(train + val) == sorted(DOCS.values())
    assert sorted(val) == sorted(t for k, t in DOCS.items() if in_val(k))
    assert sorted(train) == sorted(t for k, t in DOCS.items() if not in_val(k))
    assert val and train and not set(train) & set(val)

    for split, docs in (("train", train), ("val", val)):
        s = meta["splits"][split]
        path = os.path.join(folder, s["file"])
        assert s["tokens"] == len(ds[split]) and s["bytes"] == os.path.getsize(path) == 2 * s["tokens"]
        assert s["sha256"] == sha256(path) and s["documents"] == len(docs)
        assert s["text_bytes"] == sum(len(d.encode()) for d in docs)
        if tokenizer == "byte":
            assert s["tokens"] == s["text_bytes"] + len(docs)
        else:
            enc = prepare.get_encoder("r50k_base")
            assert s["tokens"] == sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
    assert meta["format_version"] == 1 and meta["kind"] == "tokens" and meta["dtype"] == "uint16"
    assert ds["train"].dtype == np.uint16 and ds["train"][-1] == meta["eot_id"]
    assert meta["source"] == "text" and meta["options"]["path"] == [str(corpus)]
    assert meta["options"]["tokenizer"] == tokenizer and meta["inputs"]["files"] == len(DOCS)
    if tokenizer == "byte":
        assert (meta["tokenizer"], meta["vocab_size"], meta["eot_id"]) == ("byte", 257, 256)
    else:
        assert meta["tokenizer"] in ("gpt2", "r50k_base")
        assert (meta["vocab_size"], meta["eot_id"]) == (50257, 50256)


@needs_gpt2
def test_gpt2_threads_match_single_thread(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", " ", "\n", "42", "ü", "\tx"]
    write_tree(tmp_path / "many", {f"{i:03d}.txt": "".join(rng.choice(words, 200)) for i in range(300)})
    monkeypatch.setattr(prepare, "PIECE_BYTES", 1024)  # ~60 chunks in flight: their order matters
    one = prepare.prepare("text", name="one", data_dir=str(tmp_path), path=[str(tmp_path / "many")],
                          tokenizer="gpt2", num_threads=1)
    two = prepare.prepare("text", name="two", data_dir=str(tmp_path), path=[str(tmp_path / "many")],
                          tokenizer="gpt2", num_threads=2)
    for split in ("train", "val"):
        assert sha256(os.path.join(one, f"{split}.bin")) == sha256(os.path.join(two, f"{split}.bin"))


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_big_document_read_in_pieces_tokenizes_as_a_whole(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setattr(prepare, "PIECE_BYTES", 64)  # forces many pieces, cut only at safe boundaries
    lines = [f"{'    ' * (i % 3)}line {i}: naïve café ✓ {'x' * (i % 7)}\n" for i in range(300)]
    alphabet = ["\n", "\n\n", " ", "  ", "\t", "\r\n", "word", "é", "'s", "x1"]
    words = np.random.default_rng(0).choice(alphabet, 4000)
    big = "".join(lines) + "".join(words) + "y" * 500 + "\n\n  \n" + "\tlast line, not the end: <|endoftext|>"
    (tmp_path / "big.txt").write_text(big, encoding="utf-8")
    (tmp_path / "val.txt").write_text("held out\n", encoding="utf-8")
    folder = prepare.prepare("text", data_dir=str(tmp_path / "data"), path=[str(tmp_path / "big.txt")],
                             val_path=[str(tmp_path / "val.txt")], tokenizer=tokenizer, num_threads=1)
    ds = prepare.load_dataset(os.path.dirname(folder), "text")
    if tokenizer == "byte":
        expected = list(big.encode()) + [256]
    else:
        expected = prepare.get_encoder("r50k_base").encode_ordinary(big) + [50256]
    assert ds["train"].tolist() == expected and expected.count(ds["meta"]["eot_id"]) == 1
    assert documents(ds["meta"], ds["val"]) == ["held out\n"]


@needs_gpt2
@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(hypothesis.strategies.lists(hypothesis.strategies.sampled_from(
    ["\n", "\n\n", " ", "  ", "\t", "\r", "\xa0", "\u3000", "a", "Word", "é", "日本", "'s", "'", "12", ".",
     "#", "🙂"]), max_size=60))
def test_gpt2_tokenizes_pieces_cut_at_safe_newlines_like_the_whole(parts):
    data = "".join(parts).encode()
    pieces = []
    while (cut := prepare.safe_cut(data)) > 0:  # every safe cut, from the end
        pieces.insert(0, data[cut:])
        data = data[:cut]
    pieces.insert(0, data)
    enc = prepare.get_encoder("r50k_base")
    whole = enc.encode_ordinary(b"".join(pieces).decode())
    assert [t for p in pieces for t in enc.encode_ordinary(p.decode())] == whole


def test_single_file_is_cut_at_a_line_boundary(tmp_path):
    text = "".join(f"line {i} of the only file\n" for i in range(200))
    (tmp_path / "one.txt").write_text(text)
    ds = build("text", tmp_path / "data", path=str(tmp_path / "one.txt"))
    train, val = documents(ds["meta"], ds["train"]), documents(ds["meta"], ds["val"])
    assert len(train) == len(val) == 1 and train[0] + val[0] == text
    assert train[0].endswith("\n") and abs(len(val[0]) / len(text) - 0.05) < 0.01

    (tmp_path / "oneline.txt").write_text("no line break at all")
    with pytest.raises(UserError, match="--val_path"):
        prepare.prepare("text", name="x", data_dir=str(tmp_path / "data"), path=str(tmp_path / "oneline.txt"))


def test_val_path_globs_and_small_corpora(tmp_path, corpus):
    data = str(tmp_path / "data")
    held = tmp_path / "held"
    write_tree(held, {"a.md": "val doc a\n", "b.md": "val doc b\n"})
    ds = build("text", data, name="vp", path=[str(corpus / "doc0*.txt")], val_path=[str(held)])
    assert sorted(documents(ds["meta"], ds["val"])) == ["val doc a\n", "val doc b\n"]
    assert sorted(documents(ds["meta"], ds["train"])) == sorted(DOCS[f"doc0{i}.txt"] for i in range(10))

    # a recursive glob: keys are relative to the glob's fixed folder, so the split is the hash rule
    ds = build("text", data, name="glob", path=[str(corpus / "**" / "*.txt")])
    keys = [k for k in DOCS if k.endswith(".txt")]
    assert sorted(documents(ds["meta"], ds["val"])) == sorted(DOCS[k] for k in keys if in_val(k))

    # two files: the hash may put both in one split; each split still gets one
    ds = build("text", data, name="two", path=[str(corpus / "doc00.txt"), str(corpus / "doc01.txt")])
    assert ds["meta"]["splits"]["train"]["documents"] == ds["meta"]["splits"]["val"]["documents"] == 1

    with pytest.raises(UserError, match="in both --path and --val_path"):
        prepare.prepare("text", name="both", data_dir=data, path=[str(corpus)],
                        val_path=[str(corpus / "doc00.txt")])
    with pytest.raises(UserError, match="matches no file"):
        prepare.prepare("text", name="none", data_dir=data, path=[str(tmp_path / "nothing*.txt")])
    with pytest.raises(UserError, match="needs --path"):
        prepare.prepare("text", data_dir=data)


def test_not_utf8_beyond_the_first_8kb_is_one_clear_error(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"fine\n" * 3000 + b"\xff\xfe broken\n")
    (tmp_path / "b.txt").write_text("other\n")
    with pytest.raises(UserError, match=r"a.txt is not UTF-8 text \(bad byte at offset 15000\)"):
        prepare.prepare("text", data_dir=str(tmp_path / "data"),
                        path=[str(tmp_path / "a.txt"), str(tmp_path / "b.txt")])
    assert os.listdir(tmp_path / "data") == []  # the temporary build was removed


def doc_bytes(ids):
    """Byte-token bins back into documents, as raw bytes (no decoding)."""
    ids = np.asarray(ids)
    ends = np.flatnonzero(ids == prepare.BYTE_EOT)
    return [ids[a + 1 if i else 0:b].astype(np.uint8).tobytes() for i, (a, b) in enumerate(zip([0, *ends], ends))]


def test_a_file_that_is_not_utf8_is_named_and_errors_replace_takes_it(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = {"good.txt": "hello world\n".encode(), "latin1.txt": "café au lait\n".encode("latin-1"),
             "more.txt": "Grüße\n".encode()}
    for name, data in files.items():
        (corpus / name).write_bytes(data)
    (corpus / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")  # NUL: binary, skipped
    data = str(tmp_path / "data")
    assert prepare.main(["text", "--path", str(corpus), "--data_dir", data]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: 1 file(s) in --path are not UTF-8 text, e.g. ") and \
        "latin1.txt (byte 0xe9 at offset 3)" in err and "--errors replace" in err
    assert not os.path.exists(data) or os.listdir(data) == []

    ds = build("text", data, path=[str(corpus)], errors="replace")  # byte tokens: the bytes as they are
    assert sorted(doc_bytes(ds["train"]) + doc_bytes(ds["val"])) == sorted(files.values())
    assert ds["meta"]["options"]["errors"] == "replace"
    if GPT2_PROBLEM is None:  # gpt2 needs text: each bad byte becomes U+FFFD
        ds = build("text", data, path=[str(corpus)], errors="replace", tokenizer="gpt2", name="gpt2")
        docs = documents(ds["meta"], ds["train"]) + documents(ds["meta"], ds["val"])
        assert "caf\ufffd au lait\n" in docs and "Grüße\n" in docs

    # a dataset built before --errors existed (no 'errors' in its options) is what strict builds: reused
    del files["latin1.txt"]
    os.remove(corpus / "latin1.txt")
    build("text", data, path=[str(corpus)], name="old")
    meta_path = os.path.join(data, "old", "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    del meta["options"]["errors"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    capsys.readouterr()
    prepare.prepare("text", data_dir=data, path=[str(corpus)], name="old")
    assert "up to date" in capsys.readouterr().out


def test_dtype_choice_and_uint32_bins(tmp_path, monkeypatch):
    assert prepare.dtype_for(257) == prepare.dtype_for(65536) == "uint16"
    assert prepare.dtype_for(65537) == "uint32"
    rows = np.array([[1, 69_999, 2, 70_000, 65_536], [0, 69_999, 3, 70_000, 65_537]] * 4)
    names = [str(i) for i in range(70_001)]
    monkeypatch.setattr(prepare, "modular_rows", lambda op, p: (rows, names))
    ds = build("modular", tmp_path)
    assert ds["meta"]["dtype"] == "uint32" and ds["train"].dtype == np.uint32
    assert ds["meta"]["splits"]["train"]["bytes"] == 4 * 4 * 5
    both = np.concatenate([ds["train"], ds["val"]])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, rows.tolist()))


# ----------------------------------------------------------------------------- reuse, force, kills, damage

def test_reuse_refuse_and_force(tmp_path, corpus, capsys):
    data = str(tmp_path / "data")
    folder = prepare.prepare("text", data_dir=data, path=[str(corpus)])
    stat = os.stat(os.path.join(folder, "train.bin"))
    capsys.readouterr()
    assert prepare.prepare("text", data_dir=data, path=[str(corpus)]) == folder
    assert "up to date: reusing it" in capsys.readouterr().out
    assert os.stat(os.path.join(folder, "train.bin")).st_ino == stat.st_ino  # not rewritten

    with pytest.raises(UserError, match=r"different settings \(val_frac: 0.05 -> 0.2\).*--force.*--name"):
        prepare.prepare("text", data_dir=data, path=[str(corpus)], val_frac=0.2)
    (corpus / "doc00.txt").write_text("edited\n")
    with pytest.raises(UserError, match="input files changed"):
        prepare.prepare("text", data_dir=data, path=[str(corpus)])

    prepare.prepare("text", data_dir=data, path=[str(corpus)], val_frac=0.2, force=True)
    meta = prepare.load_dataset(data, "text")["meta"]
    assert meta["options"]["val_frac"] == 0.2 and meta["splits"]["val"]["documents"] > 4
    assert os.listdir(data) == ["text"]  # no temporary or old folders left

    os.makedirs(os.path.join(data, "mine"))
    open(os.path.join(data, "mine", "notes.txt"), "w").close()
    with pytest.raises(UserError, match="not a prepare.py dataset"):
        prepare.prepare("text", name="mine", data_dir=data, path=[str(corpus)], force=True)


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_killed_build_is_detected_and_cleaned(tmp_path, corpus, capsys):
    data = tmp_path / "data"
    leftover = data / f".text.tmp-{prepare.HOST}-{dead_pid()}"
    os.makedirs(leftover)
    (leftover / "train.bin").write_bytes(b"\0" * 100)  # what a build killed half-way leaves
    running = data / f".text.tmp-{prepare.HOST}-{os.getppid()}"  # a live process: maybe still building
    os.makedirs(running)
    with pytest.raises(UserError, match=r"dataset 'text' in .* is unfinished \(a prepare was killed or is still "
                                        r"running: .*\.text\.tmp-.*\); run `python prepare.py text --path FILES"):
        prepare.load_dataset(str(data), "text")
    prepare.prepare("text", data_dir=str(data), path=[str(corpus)])
    assert f"removed {leftover}" in capsys.readouterr().out
    assert not leftover.exists() and running.exists()
    assert prepare.load_dataset(str(data), "text")["meta"]["splits"]["train"]["documents"] > 0


def test_concurrent_builds_install_one_dataset(tmp_path):
    """DDP ranks may all call prepare('stdlib'): one build wins, the others use it; nothing is left over."""
    command = [sys.executable, os.path.join(ROOT, "prepare.py"), "stdlib", "--data_dir", str(tmp_path)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0]
    assert sum("wrote" in out for out in outputs) == 1, outputs
    assert os.listdir(tmp_path) == ["stdlib"] and prepare.load_dataset(str(tmp_path), "stdlib")["train"].size


def test_damaged_bins_are_detected_and_rebuilt(tmp_path, corpus, capsys):
    data = str(tmp_path / "data")
    folder = prepare.prepare("text", data_dir=data, path=[str(corpus)])
    train = os.path.join(folder, "train.bin")
    size = os.path.getsize(train)
    os.truncate(train, size - 2)
    with pytest.raises(UserError, match=rf"{size - 2:,} bytes but meta.json says {size:,} \(truncated.*--force`"):
        prepare.load_dataset(data, "text")
    prepare.prepare("text", data_dir=data, path=[str(corpus)])  # same options: rebuilds the damaged one
    assert "is damaged" in capsys.readouterr().out and os.path.getsize(train) == size

    with open(train, "r+b") as f:  # same size, one byte changed
        f.seek(10)
        f.write(b"\xff")
    with pytest.raises(UserError, match="does not match its sha256"):
        prepare.load_dataset(data, "text")
    assert prepare.load_dataset(data, "text", checksum=False)["train"].shape == (size // 2,)


def test_load_dataset_errors_are_single_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    errors = []

    def expect(match, *args):
        with pytest.raises(UserError, match=match) as e:
            prepare.load_dataset(*args)
        assert "\n" not in str(e.value)
        errors.append(str(e.value))

    expect(r"^dataset 'stdlib' not found in data/stdlib: run `python prepare.py stdlib`$", "data", "stdlib")
    expect(r"^dataset 'modular_div_p97' not found in d/modular_div_p97: run `python prepare.py modular --op div "
           r"--data_dir d`$", "d", "modular_div_p97")
    expect(r"run `python prepare.py SOURCE --name mine`", "data", "mine")

    prepare.prepare("modular", p=5, data_dir="data")  # a small dataset to damage in turn
    folder = os.path.join("data", "modular_add_p5")
    meta_path = os.path.join(folder, "meta.json")
    good = open(meta_path).read()

    def damage(text):
        with open(meta_path, "w") as f:
            f.write(text)

    damage("{not json")
    expect(r"unreadable meta.json.*rebuild it with `python prepare.py modular --p 5 --force`",
           "data", "modular_add_p5")
    meta = json.loads(good)
    del meta["dtype"]
    damage(json.dumps(meta))
    expect("lacks fields", "data", "modular_add_p5")
    meta = json.loads(good)
    meta["format_version"] = 99
    damage(json.dumps(meta))
    expect("format_version 99", "data", "modular_add_p5")
    meta = json.loads(good)
    meta["splits"]["val"].update(tokens=0, bytes=0)
    damage(json.dumps(meta))
    open(os.path.join(folder, "val.bin"), "wb").close()
    expect("the val split is empty", "data", "modular_add_p5")
    os.remove(meta_path)
    expect(r"no meta.json: not a finished dataset", "data", "modular_add_p5")
    assert len(set(errors)) == len(errors)


def test_guessed_commands_match_the_names_they_come_from():
    for source, options in [("stdlib", {}), ("modular", {"op": "div"}), ("modular", {"p": 113, "seed": 3}),
                            ("modular", {"op": "sub", "train_frac": 0.3}), ("permutation", {"n": 4}),
                            ("mnist", {"size": 14, "max_docs": 1000}), ("tinystories", {})]:
        full = prepare.resolve_options(source, options)
        name = prepare.default_name(source, full)
        assert prepare.guess_command(name, "data") == prepare.prepare_command(source, full, name, "data")
    div = prepare.resolve_options("modular", {"op": "div"})
    assert prepare.default_name("modular", div) == "modular_div_p97"
    assert prepare.default_name("permutation", prepare.resolve_options("permutation", {})) == "permutation_n5"


# ----------------------------------------------------------------------------- command line and network

def run_cli(args, env_changes, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "http"))}
    env.update(env_changes, HF_HOME=str(tmp_path / "hf_home"))  # an empty cache: nothing to fall back on
    return subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *args, "--data_dir",
                           str(tmp_path / "data")], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("args,env", [
    (["wikitext2"], {"HF_ENDPOINT": "http://127.0.0.1:9", "TIKTOKEN_CACHE_DIR": "/nonexistent"}),  # refused
    (["tinystories", "--tokenizer", "byte"], {"HF_HUB_OFFLINE": "1"}),  # the datasets library's own failure
    (["mnist"], {"HF_HUB_OFFLINE": "1"}),
])
def test_hugging_face_without_network_is_one_line(tmp_path, args, env):
    source = args[0]
    result = run_cli(args, env, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"error: could not download '{source}'")
    assert "python prepare.py stdlib" in lines[0] and "python prepare.py text --path FILES" in lines[0]
    assert not (tmp_path / "data").exists() or os.listdir(tmp_path / "data") == []  # nothing left behind


def test_missing_extra_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(prepare.HF_NEEDS, "pile", ("no_such_module_here", "no-such-package"))
    monkeypatch.setattr(prepare, "hf_unreachable", lambda: None)  # as if online: the package is checked next
    with pytest.raises(UserError, match="^source 'pile' needs the 'no-such-package' package: pip install"):
        prepare.prepare("pile", data_dir=str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("argv,match", [
    (["stdlib", "--op", "div"], "option --op does not apply to source 'stdlib'"),
    (["modular", "--p", "x"], "argument --p: invalid int value: 'x'"),
    (["modular", "--op", "div", "--p", "96"], "--p 96 is not prime"),
    (["modular", "--op", "mul"], "--op must be one of add, sub, div"),
    (["stdlb"], "unknown source 'stdlb' (did you mean 'stdlib'?)"),
    (["mnist", "--size", "10"], "--size must divide 28"),
    (["stdlib", "--val_frac", "1.5"], "--val_frac must be a number between 0 and 1"),
    (["stdlib", "--tokenizer", "gpt3"], "--tokenizer must be one of byte, gpt2"),
    (["permutation", "--n", "9"], "--n must be an integer 2..7"),
    (["stdlib", "--name", "../x"], "must be a plain folder name"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, match):
    assert prepare.main(argv + ["--data_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err


def test_cli_builds_and_reuses(tmp_path, capsys):
    args = ["permutation", "--n", "3", "--data_dir", str(tmp_path)]
    assert prepare.main(args) == 0 and "wrote" in capsys.readouterr().out
    assert prepare.main(args) == 0 and "up to date" in capsys.readouterr().out


# ----------------------------------------------------------------------------- task datasets

@pytest.mark.parametrize("op,p", [("add", 97), ("sub", 97), ("div", 97), ("div", 7)])
def test_modular_every_equation_once_with_right_answers(tmp_path, op, p):
    ds = build("modular", tmp_path, op=op, p=p, seed=1)
    meta, train, val = ds["meta"], ds["train"], ds["val"]
    rows = np.concatenate([train, val]).astype(np.int64)
    a, b, c = rows[:, 0], rows[:, 2], rows[:, 4]
    expected_pairs = {(x, y) for x in range(p) for y in range(p) if op != "div" or y != 0}
    assert len(rows) == len(expected_pairs) == (p * (p - 1) if op == "div" else p * p)
    assert set(zip(a.tolist(), b.tolist())) == expected_pairs  # each equation exactly once across splits
    assert (rows[:, 1] == p).all() and (rows[:, 3] == p + 1).all()
    if op == "add":
        assert ((a + b) % p == c).all()
    elif op == "sub":
        assert ((a - b) % p == c).all()
    else:
        assert (b != 0).all() and ((c * b) % p == a).all()  # c = a / b  <=>  c * b = a (mod p)
    assert len(train) == round(len(rows) * 0.5) and meta["rows"] == {"train": len(train), "val": len(val)}
    assert (meta["row_len"], meta["supervised_positions"], meta["vocab_size"]) == (5, [4], p + 2)
    assert (meta["tokenizer"], meta["eot_id"], meta["kind"]) == ("task", None, "rows")
    assert meta["name"] == f"modular_{op}_p{p}_seed1"
    assert prepare.decode(meta, np.array([3, p, 5, p + 1, 1])) == f"3 {prepare.MODULAR_OPS[op]} 5 = 1"
    if op == "div" and p == 7:
        assert (6 * pow(3, -1, 7)) % 7 == 2 and [6, p, 3, p + 1, 2] in rows.tolist()  # 6 / 3 = 2 mod 7


def test_modular_split_is_seeded_and_reproducible(tmp_path):
    def train_sha256(name, seed):
        meta = build("modular", tmp_path, name=name, op="div", p=31, seed=seed)["meta"]
        return meta["splits"]["train"]["sha256"]
    assert train_sha256("a", 5) == train_sha256("b", 5) != train_sha256("c", 6)
    meta = build("modular", tmp_path, op="div", p=31, train_frac=0.3)["meta"]
    assert meta["name"] == "modular_div_p31_frac0.3" and meta["rows"]["train"] == round(31 * 30 * 0.3)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_permutation_composition(tmp_path, n):
    ds = build("permutation", tmp_path, n=n)
    meta = ds["meta"]
    perms = list(itertools.permutations(range(n)))
    m = math.factorial(n)
    assert meta["name"] == f"permutation_n{n}" and meta["vocab_size"] == m + 2
    assert [tuple(map(int, name)) for name in meta["token_names"][:m]] == perms
    rows = np.concatenate([ds["train"], ds["val"]]).tolist()
    assert len(rows) == m * m and len({(r[0], r[2]) for r in rows}) == m * m
    index = {p: i for i, p in enumerate(perms)}
    for a, op, b, eq, c in rows:
        assert (op, eq) == (m, m + 1)
        assert c == index[tuple(perms[a][perms[b][i]] for i in range(n))]  # (a*b)(i) = a(b(i))
    assert meta["supervised_positions"] == [4]


def test_mnist_rows_from_arrays():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 7, 8, 9])
    rows = prepare.mnist_rows(images, labels, 28)
    assert rows.shape == (6, 785) and (rows[:, :784] == images.reshape(6, -1)).all()
    assert rows[:, 784].tolist() == [256, 257, 258, 263, 264, 265]
    for size in (14, 7, 4):
        f = 28 // size
        small = prepare.mnist_rows(images, labels, size)
        assert small.shape == (6, size * size + 1)
        for k in range(6):
            for i in range(size):
                for j in range(size):
                    block = images[k, i * f:(i + 1) * f, j * f:(j + 1) * f].astype(float)
                    assert small[k, i * size + j] == math.floor(block.mean() + 0.5)
    halves = np.array([[[0, 1], [2, 3]], [[255, 255], [255, 254]]], dtype=np.uint8)
    assert prepare.mnist_rows(halves, [3, 4], 1).tolist() == [[2, 259], [255, 260]]  # 1.5 -> 2, 254.75 -> 255
    with pytest.raises(UserError, match="labels"):
        prepare.mnist_rows(images, labels + 5, 28)


def test_mnist_build_with_synthetic_source(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    fake = {s: [{"image": rng.integers(0, 256, (28, 28), dtype=np.uint8), "label": int(rng.integers(10))}
                for _ in range(n)] for s, n in (("train", 50), ("test", 20))}
    monkeypatch.setattr(prepare, "hf_rows", lambda source, split: iter(fake[split]))
    monkeypatch.setattr(prepare, "hf_preflight", lambda source: None)
    folder = prepare.prepare("mnist", data_dir=str(tmp_path), size=14, max_docs=30)
    assert os.path.basename(folder) == "mnist_size14_docs30"
    ds = prepare.load_dataset(str(tmp_path), "mnist_size14_docs30")
    assert ds["train"].shape == (30, 197) and ds["val"].shape == (20, 197)  # the whole test split is val
    assert ds["meta"]["supervised_positions"] == [196] and ds["meta"]["vocab_size"] == 266
    test = fake["test"]
    expected = prepare.mnist_rows(np.stack([e["image"] for e in test]), [e["label"] for e in test], 14)
    assert (ds["val"] == expected).all()


# ----------------------------------------------------------------------------- Hugging Face logic, offline

def test_hugging_face_document_caps_and_hash_split(tmp_path, monkeypatch, capsys):
    texts = [f"story number {i}\n" for i in range(400)]
    monkeypatch.setattr(prepare, "hf_rows", lambda source, split: iter(
        [{"text": t} for t in (texts if split == "train" else ["val " + t for t in texts])]))
    monkeypatch.setattr(prepare, "hf_preflight", lambda source: None)
    ds = build("tinystories", tmp_path, tokenizer="byte", max_docs=100)
    assert documents(ds["meta"], ds["train"]) == texts[:100]
    assert documents(ds["meta"], ds["val"]) == ["val " + t for t in texts[:5]]  # ceil(100 * 0.05)
    with monkeypatch.context() as offline:  # the real Hub access again, unreachable: a built dataset is reused
        offline.setattr(prepare, "hf_rows", None)
        offline.setattr(prepare, "hf_preflight", None)
        offline.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
        assert prepare.prepare("tinystories", data_dir=str(tmp_path), tokenizer="byte", max_docs=100)
    assert "up to date" in capsys.readouterr().out

    ds = build("openwebtext", tmp_path, tokenizer="byte", max_docs=200)
    train, val = documents(ds["meta"], ds["train"]), documents(ds["meta"], ds["val"])
    assert len(train) == 200 and val == [t for t in texts[:len(train) + len(val)] if in_val(t)]
    assert train == [t for t in texts[:len(train) + len(val)] if not in_val(t)]


def test_wikitext_rows_become_articles():
    rows = ["", " = First = \n", "", " text one \n", " = = Section = = \n", " more \n", "",
            " = Second = \n", " text two \n"]
    articles = list(prepare.wikitext_articles({"text": r} for r in rows))
    assert articles == [" = First = \n text one \n = = Section = = \n more \n", " = Second = \n text two \n"]


# ----------------------------------------------------------------------------- the embedded default

def test_stdlib_builds_and_splits_by_file(tmp_path):
    ds = build("stdlib", tmp_path)
    meta = ds["meta"]
    root = sysconfig.get_paths()["stdlib"]
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):  # the documented selection, listed independently
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in
                       ("test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__")]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.endswith(".py") and not name.startswith(".") and os.path.getsize(path):
                with open(path, "rb") as f:
                    files[os.path.relpath(path, root).replace(os.sep, "/")] = f.read().decode()
    assert not any(k.split("/")[0] in ("test", "site-packages") or "/tests/" in k for k in files)
    train = collections.Counter(documents(meta, ds["train"]))
    val = collections.Counter(documents(meta, ds["val"]))
    assert val == collections.Counter(t for k, t in files.items() if in_val(k))
    assert train == collections.Counter(t for k, t in files.items() if not in_val(k))
    assert meta["inputs"]["files"] == len(files) and meta["python"] == sys.version.split()[0]
    assert meta["tokenizer"] == "byte" and 0.02 < sum(val.values()) / len(files) < 0.1



# ----------------------------------------------------------------------------- offline compute nodes

def offline_env(tmp_path, **changes):
    """No network (a refusing proxy and Hub endpoint), an empty Hugging Face home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "http"))}
    env.update(HTTPS_PROXY="http://127.0.0.1:9", HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf_home"),
               **changes)
    return env


def prepare_cli(args, env, timeout=120):
    return subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_gpt2_tokenizer_missing_offline_is_one_line_at_once(tmp_path):
    (tmp_path / "a.txt").write_text("some text\n" * 50)
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    t0 = time.time()
    out = prepare_cli(["text", "--path", str(tmp_path / "a.txt"), "--tokenizer", "gpt2", "--data_dir",
                       str(tmp_path / "data")], offline_env(tmp_path, TIKTOKEN_CACHE_DIR=str(empty)))
    seconds = time.time() - t0
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"error: the GPT-2 tokenizer is not in the tiktoken cache ({empty}) and cannot be "
                                 f"downloaded (cannot reach 127.0.0.1:9")
    assert f"`{prepare.TIKTOKEN_MAKE_CACHE}`" in out.stderr and "--tokenizer byte" in out.stderr
    assert seconds < 30 and not os.listdir(tmp_path / "data")  # no download attempt, nothing left

    # the cache as documented: r50k_base's one file, named by the sha1 of its URL, is all an offline node needs
    shared = os.path.join(TIKTOKEN_CACHE, hashlib.sha1(prepare.TIKTOKEN_FILES["r50k_base"][0].encode()).hexdigest())
    if not os.path.isfile(shared):
        pytest.skip(f"no r50k_base file in {TIKTOKEN_CACHE} to build an offline cache from")
    cache = tmp_path / "cache"
    cache.mkdir()
    os.symlink(shared, cache / os.path.basename(shared))
    out = prepare_cli(["text", "--path", str(tmp_path / "a.txt"), "--tokenizer", "gpt2", "--data_dir",
                       str(tmp_path / "data")], offline_env(tmp_path, TIKTOKEN_CACHE_DIR=str(cache)))
    assert out.returncode == 0, out.stderr
    assert prepare.load_dataset(str(tmp_path / "data"), "text")["meta"]["tokenizer"] == "r50k_base"


def texts_of(ds):
    return documents(ds["meta"], ds["train"]), documents(ds["meta"], ds["val"])


def in_val_text(text, val_frac=0.05):  # the documented rule for sources without a validation split
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2 ** 64 < val_frac


def test_hf_local_save_to_disk_parquet_jsonl_csv_folders(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    stories = [f"story {i}: once upon a time\n" for i in range(80)]
    held_out = [f"held out {i}\n" for i in range(6)]
    d = tmp_path / "src"
    data = str(tmp_path / "data")
    split = lambda texts: datasets.Dataset.from_dict({"text": texts, "n": list(range(len(texts)))})

    # a DatasetDict saved to disk: train, its own validation split (a test split is left alone); empty text skipped
    datasets.DatasetDict({"train": split(stories + [""]), "validation": split(held_out),
                          "test": split(["test only\n"])}).save_to_disk(str(d / "saved"))
    ds = build("hf_local", data, path=[str(d / "saved")], tokenizer="byte", name="saved")
    assert texts_of(ds) == (stories, held_out)
    assert ds["meta"]["inputs"]["files"] > 0 and ds["meta"]["options"]["text_column"] == "text"
    capsys.readouterr()
    prepare.prepare("hf_local", data_dir=data, path=[str(d / "saved")], tokenizer="byte", name="saved")
    assert "up to date" in capsys.readouterr().out  # offline re-runs reuse it

    # a Dataset saved to disk, no validation split: split by a hash of each text
    split(stories).save_to_disk(str(d / "train_only"))
    ds = build("hf_local", data, path=[str(d / "train_only")], tokenizer="byte", name="hashed")
    assert texts_of(ds) == ([t for t in stories if not in_val_text(t)], [t for t in stories if in_val_text(t)])

    # parquet files (another column) with --val_path jsonl; --max_docs caps the training documents
    for i in range(2):
        datasets.Dataset.from_dict({"story": stories[40 * i:40 * (i + 1)]}).to_parquet(str(d / f"part{i}.parquet"))
    datasets.Dataset.from_dict({"story": held_out}).to_json(str(d / "held_out.jsonl"))
    ds = build("hf_local", data, path=[str(d / "part*.parquet")], val_path=[str(d / "held_out.jsonl")],
               text_column="story", tokenizer="byte", max_docs=50, name="files")
    assert texts_of(ds) == (stories[:50], held_out[:3])  # val capped at ceil(50 * 0.05)

    # a folder as `hf download --repo-type dataset` leaves it: splits from its README's configs (names that file
    # names alone would not give), a hidden .cache folder; and a folder whose file names give the splits
    (d / "repo" / "data").mkdir(parents=True)
    (d / "repo" / ".cache" / "huggingface").mkdir(parents=True)
    (d / "repo" / ".cache" / "huggingface" / "x.lock").write_text("")
    (d / "repo" / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/stories-*\n"
        "  - split: validation\n    path: data/kept-*\n---\n")
    split(stories).to_parquet(str(d / "repo" / "data" / "stories-00000-of-00001.parquet"))
    split(held_out).to_parquet(str(d / "repo" / "data" / "kept-00000-of-00001.parquet"))
    assert texts_of(build("hf_local", data, path=[str(d / "repo")], tokenizer="byte", name="repo")) == \
        (stories, held_out)
    (d / "named").mkdir()
    split(stories).to_csv(str(d / "named" / "train.csv"))
    split(held_out).to_csv(str(d / "named" / "validation.csv"))
    assert texts_of(build("hf_local", data, path=[str(d / "named")], tokenizer="byte", name="named")) == \
        (stories, held_out)

    for options, message in [
        (dict(path=[str(d / "saved")], text_column="txt"), r"has no column 'txt' \(did you mean 'text'\?\); its col"),
        (dict(path=[str(d / "saved")], text_column="n"), r"column 'n' of .* holds int values, not text"),
        (dict(path=[str(d / "named" / "train.csv"), str(d / "part0.parquet")]), r"mixes formats \(csv, parquet\)"),
        (dict(path=[str(d / "notes.txt")]), r"--path .*notes.txt matches no file or folder"),
    ]:
        with pytest.raises(UserError, match=message):
            prepare.prepare("hf_local", data_dir=data, name="bad", tokenizer="byte", **options)
    datasets.DatasetDict({"test": split(held_out)}).save_to_disk(str(d / "no_train"))
    capsys.readouterr()  # the progress bars of save_to_disk
    assert prepare.main(["hf_local", "--path", str(d / "no_train"), "--data_dir", data, "--tokenizer", "byte"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has the splits test but no 'train' split" in err
    assert sorted(os.listdir(data)) == ["files", "hashed", "named", "repo", "saved"]  # nothing left by failures


def test_hub_source_from_the_datasets_cache_offline(tmp_path):
    """HF_DATASETS_OFFLINE=1 and no network: tinystories (a streamed source) from what
    `datasets.load_dataset('roneneldan/TinyStories')` leaves in the datasets cache, made here from local files."""
    datasets = pytest.importorskip("datasets")
    from datasets.packaged_modules.json.json import Json
    train = [f"tiny story {i}\n" for i in range(30)]
    val = [f"validation story {i}\n" for i in range(4)]
    files = {}
    for split, texts in (("train", train), ("validation", val)):
        files[split] = str(tmp_path / f"{split}.jsonl")
        datasets.Dataset.from_dict({"text": texts}).to_json(files[split])
    built = tmp_path / "built"
    builder = Json(cache_dir=str(built), dataset_name="tiny_stories", config_name="default", data_files=files,
                   hash="0123abcd")
    builder.download_and_prepare()
    cache = tmp_path / "cache"  # the layout of the Hub's copy: <namespace>___<name>/<config>/<version>/<hash>
    shutil.copytree(builder.cache_dir, cache / "roneneldan___tiny_stories" / "default" / "0.0.0" / "0123abcd")
    out = prepare_cli(["tinystories", "--tokenizer", "byte", "--data_dir", str(tmp_path / "data")],
                      offline_env(tmp_path, HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(cache)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert texts_of(prepare.load_dataset(str(tmp_path / "data"), "tinystories")) == (train, val)
