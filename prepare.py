"""
Prepare a dataset: text (or a task) to memmapped token bins that train.py reads.

    python prepare.py SOURCE [options]      ->  data/<name>/{train.bin, val.bin, meta.json}

    python prepare.py stdlib                              # the embedded offline default (byte tokens)
    python prepare.py text --path notes/ --path 'books/**/*.txt' [--val_path held_out/]
    python prepare.py tinystories --max_docs 100000       # Hugging Face sources: the network, or its cache
    python prepare.py hf_local --path saved/ [--text_column text]  # save_to_disk folder, parquet/jsonl/csv files
    python prepare.py modular --op div --p 97             # -> data/modular_div_p97 (also permutation, mnist)

Text sources become documents, each followed by the end-of-document token, in byte or GPT-2 tokens; task
sources become rows of fixed length whose supervised positions meta.json names. Re-running the same command
reuses a finished, intact dataset; one built with other options or inputs is never replaced silently (--force
rebuilds it, --name builds beside it), and a killed build never leaves a folder that looks finished. The
sources, tokenizers, val split and meta.json's fields: README "Data (prepare.py)".

Python API (train.py):
    load_dataset(data_dir, name, checksum=True) -> {"meta": dict, "train": np.memmap, "val": np.memmap}
        ((n_rows, row_len) memmaps for rows datasets), checked against meta.json first: sizes always, sha256 for
        bins up to 2 GiB unless checksum=False; problems are one-line UserErrors saying which command fixes them.
    prepare(source, name=None, data_dir="data", force=False, num_threads=None, **options) -> folder
    decode(meta, ids) -> str: text, <|endoftext|> for the end-of-document token; task rows as token names.
"""
import argparse
import codecs
import collections
import errno
import glob
import hashlib
import importlib.util
import itertools
import json
import math
import os
import re
import shlex
import shutil
import socket
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from urllib.parse import urlparse

import numpy as np

from configurator import ArgumentParser, UserError, available_cores, cli_main, closest_key, difference_text
from results import read_json, write_json

FORMAT_VERSION = 1
SPLITS = ("train", "val")
EOT_TEXT = "<|endoftext|>"  # how decode() shows the end-of-document token, for every tokenizer
BYTE_EOT = 256
PIECE_BYTES = 1 << 20  # files are read, and text is handed to tokenizer threads, in pieces of about this
CHECKSUM_LIMIT = 2 << 30  # load_dataset hashes bins up to this size; bigger ones are checked by size only
STDLIB_EXCLUDED = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
HOST = socket.gethostname()

# Every source, with its options and their defaults: the CLI and prepare() accept exactly these.
TEXT_OPTIONS = {"tokenizer": "gpt2", "val_frac": 0.05, "max_docs": None}
SOURCES = {
    "stdlib": {"tokenizer": "byte", "val_frac": 0.05},
    "text": {"path": [], "val_path": [], "tokenizer": "byte", "val_frac": 0.05, "errors": "strict"},
    "hf_local": {"path": [], "val_path": [], "text_column": "text", "tokenizer": "gpt2", "val_frac": 0.05,
                 "max_docs": None},
    "wikitext103": TEXT_OPTIONS, "wikitext2": TEXT_OPTIONS, "tinystories": TEXT_OPTIONS,
    "openwebtext": TEXT_OPTIONS, "c4": TEXT_OPTIONS, "pile": TEXT_OPTIONS,
    "modular": {"op": "add", "p": 97, "train_frac": 0.5, "seed": 0},
    "permutation": {"n": 5, "train_frac": 0.5, "seed": 0},
    "mnist": {"size": 28, "max_docs": None},
}
# Hugging Face sources: (repository, config, its validation split or None, stream it?)
HF_SOURCES = {
    "wikitext103": ("Salesforce/wikitext", "wikitext-103-raw-v1", "validation", False),
    "wikitext2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "validation", False),
    "tinystories": ("roneneldan/TinyStories", None, "validation", True),
    "openwebtext": ("Skylion007/openwebtext", None, None, True),
    "c4": ("allenai/c4", "en", "validation", True),
    "pile": ("monology/pile-uncopyrighted", None, "validation", True),
    "mnist": ("ylecun/mnist", None, "test", False),
}
# Packages a Hugging Face source needs beyond datasets: (module, pip package). The Pile mirror is .jsonl.zst.
HF_NEEDS = {"pile": ("zstandard", "zstandard"), "mnist": ("PIL", "pillow")}
HF_VAL_SPLITS = ("validation", "valid", "val", "dev")  # hf_local: the split that becomes val (a test split is not)
DATA_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}
TASK_SOURCES = ("modular", "permutation", "mnist")
# Task dataset names: source_<always-named options>_<other options that differ from the default>
NAME_ALWAYS = {"modular": ("op", "p"), "permutation": ("n",), "mnist": ()}
NAME_TAGS = {"op": "", "p": "p", "n": "n", "train_frac": "frac", "seed": "seed", "size": "size",
             "max_docs": "docs"}
MODULAR_OPS = {"add": "+", "sub": "-", "div": "/"}
MNIST_SIZES = (28, 14, 7, 4)


# ----------------------------------------------------------------------------- options and names

def resolve_options(source, given):
    """Check the source and its options; return the full options dict (defaults filled in)."""
    if source not in SOURCES:
        raise UserError(f"unknown source '{source}'{closest_key(source, SOURCES)}; "
                        f"sources: {', '.join(SOURCES)}")
    defaults = SOURCES[source]
    for key in given:
        if key not in defaults:
            known = ", ".join(f"--{k}" for k in defaults)
            raise UserError(f"option --{key} does not apply to source '{source}'"
                            f"{closest_key(key, defaults)}; its options: {known}")
    options = {k: (list(v) if isinstance(v, list) else v) for k, v in defaults.items()}
    options.update({k: v for k, v in given.items() if v is not None})
    for key, value in options.items():
        options[key] = check_option(source, key, value)
    if source in ("text", "hf_local") and not options["path"]:
        raise UserError(f"source '{source}' needs --path FILE_FOLDER_OR_GLOB (repeatable)")
    if source == "modular" and options["op"] == "div" and not is_prime(options["p"]):
        raise UserError(f"--p {options['p']} is not prime: division needs an inverse of every b != 0 mod p")
    return options


def check_option(source, key, value):
    if key in ("path", "val_path"):
        paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        return [os.path.abspath(os.fspath(p)) for p in paths]
    if key == "tokenizer":
        return choice(key, value, ("byte", "gpt2"))
    if key == "errors":
        return choice(key, value, ("strict", "replace"))
    if key == "text_column":
        if not isinstance(value, str) or not value:
            raise UserError(f"--text_column must be a column name, got {value!r}")
        return value
    if key == "op":
        return choice(key, value, tuple(MODULAR_OPS))
    if key in ("val_frac", "train_frac"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise UserError(f"--{key} must be a number between 0 and 1 (exclusive), got {value!r}")
        return float(value)
    limits = {"max_docs": (1, None), "p": (2, 4000), "n": (2, 7), "seed": (0, None), "size": (1, 28)}
    if value is None:
        return None
    lo, hi = limits[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise UserError(f"--{key} must be an integer {span}, got {value!r}")
    if key == "size" and value not in MNIST_SIZES:
        raise UserError(f"--size must divide 28: one of {', '.join(map(str, MNIST_SIZES))}; got {value}")
    return value


def choice(key, value, allowed):
    if value not in allowed:
        raise UserError(f"--{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def is_prime(p):
    return p >= 2 and all(p % d for d in range(2, math.isqrt(p) + 1))


def default_name(source, options):
    """The source name; task sources add their settings (modular_div_p97, permutation_n5, mnist_size14,
    modular_add_p97_frac0.3_seed2): different tasks never share a folder."""
    if source not in TASK_SOURCES:
        return source
    keys = [k for k in options if k in NAME_ALWAYS[source] or options[k] != SOURCES[source][k]]
    keys.sort(key=lambda k: k not in NAME_ALWAYS[source])  # the always-named ones first, in table order
    words = [source]
    for key in keys:
        value = options[key]
        words.append(NAME_TAGS[key] + (f"{value:g}" if isinstance(value, float) else str(value)))
    return "_".join(words)


def prepare_command(source, options, name, data_dir):
    """The command line that builds this dataset (shown in messages, stored in meta.json)."""
    words = ["python", "prepare.py", source]
    for key, value in options.items():
        if value != SOURCES[source][key]:
            for item in value if isinstance(value, list) else [value]:
                words += [f"--{key}", str(item)]
    if name != default_name(source, options):
        words += ["--name", name]
    if os.path.normpath(data_dir) != "data":
        words += ["--data_dir", data_dir]
    return shlex.join(words)


def guess_command(name, data_dir):
    """The prepare command for a dataset that has not been built (for error messages): read back from
    a default name such as stdlib or modular_div_p97, else a template."""
    source, _, rest = name.partition("_")
    if source in SOURCES and source != "text":
        options = dict(SOURCES[source])
        keys_by_tag = {NAME_TAGS[k]: k for k in options if k in NAME_TAGS}
        try:
            for word in rest.split("_") if rest else []:
                if word in MODULAR_OPS:
                    options["op"] = check_option(source, "op", word)
                    continue
                tag, number = re.fullmatch(r"([a-z]*)(.*)", word).groups()
                options[keys_by_tag[tag]] = check_option(source, keys_by_tag[tag], json.loads(number))
        except (KeyError, ValueError, UserError):
            pass  # not a name prepare.py would have made
        else:
            if default_name(source, options) == name:
                return prepare_command(source, options, name, data_dir)
    words = ["python", "prepare.py", "text" if source == "text" else "SOURCE"]
    words += ["--path", "FILES"] if source == "text" else []
    words += ["--name", name] if name != "text" else []
    words += ["--data_dir", data_dir] if os.path.normpath(data_dir) != "data" else []
    return " ".join(words)


# ----------------------------------------------------------------------------- tokenizers

ENCODERS = {}  # tiktoken encodings by name, loaded once per process
# The files tiktoken.get_encoding(name) reads; its cache names each by the sha1 of its URL
TIKTOKEN_FILES = {
    "gpt2": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
             "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"),
    "r50k_base": ("https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",),
}
TIKTOKEN_MAKE_CACHE = "TIKTOKEN_CACHE_DIR=DIR python -c \"import tiktoken; tiktoken.get_encoding('r50k_base')\""


def tiktoken_cache():
    """(folder, the encodings whose files are all in it), where tiktoken looks: TIKTOKEN_CACHE_DIR, else
    DATA_GYM_CACHE_DIR, else <tmp>/data-gym-cache ('' turns its cache off)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        folder = os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        folder = os.environ.get("DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache"))
    cached = [name for name, urls in TIKTOKEN_FILES.items() if folder and all(
        os.path.isfile(os.path.join(folder, hashlib.sha1(url.encode()).hexdigest())) for url in urls)]
    return folder, cached


def get_encoder(name):
    if name not in ENCODERS:
        import tiktoken
        ENCODERS[name] = tiktoken.get_encoding(name)
    return ENCODERS[name]


def load_tokenizer(name):
    """(resolved name, vocab_size, eot_id). 'gpt2' resolves to r50k_base (same ranks) when offline."""
    if name == "byte":
        return "byte", 257, BYTE_EOT
    folder, cached = tiktoken_cache()
    if not cached:  # tiktoken would download them, with no timeout: find out first whether it can
        reason = unreachable("https://openaipublic.blob.core.windows.net")
        if reason:
            raise UserError(f"the GPT-2 tokenizer is not in the tiktoken cache ({folder or 'caching off'}) and "
                            f"cannot be downloaded ({reason}); make the cache where there is internet (a login node):"
                            f" `{TIKTOKEN_MAKE_CACHE}`, then set TIKTOKEN_CACHE_DIR=DIR here (in this project: "
                            f"../shared/tiktoken), or use --tokenizer byte")
    errors = []
    for candidate in cached or ("gpt2", "r50k_base"):  # a cached one first: no download
        try:
            enc = ENCODERS["gpt2"] = get_encoder(candidate)  # remember the fallback: one download try
            return enc.name, enc.n_vocab, enc.eot_token
        except Exception as e:  # tiktoken raises whatever its download raised
            errors.append(f"{candidate}: {short_reason(e)}")
    raise UserError(f"the GPT-2 tokenizer is unavailable ({'; '.join(errors)}); offline, set TIKTOKEN_CACHE_DIR "
                    f"to a tiktoken cache holding r50k_base (in this project: ../shared/tiktoken), "
                    f"or use --tokenizer byte")


def short_reason(e):
    """An exception as a short phrase: the OS error inside a network error, else its first line."""
    text = str(e)
    errno_text = re.search(r"\[Errno [^\]]*\] [^)\"'\\]+", text)
    if errno_text:
        return errno_text.group(0).strip()
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def dtype_for(vocab_size):
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def encode_chunk(pieces, tokenizer, eot_id, dtype):
    """Token ids of a list of (text, ends_document) pieces, eot after each document's last piece."""
    out = []
    for text, ends_document in pieces:
        if tokenizer == "byte":  # bytes as they are (--errors replace), else the text's UTF-8 bytes
            data = text if isinstance(text, bytes) else text.encode("utf-8")
            out.append(np.frombuffer(data, np.uint8).astype(dtype))
        else:  # = encode_ordinary (special-token text stays text), straight into numpy
            out.append(get_encoder(tokenizer).encode_to_numpy(text, disallowed_special=()).astype(dtype))
        if ends_document:
            out.append(np.array([eot_id], dtype=dtype))
    return np.concatenate(out) if out else np.empty(0, dtype=dtype)


# ----------------------------------------------------------------------------- local documents (stdlib, text)

def hash_fraction(key):
    """A stable number in [0, 1) for a document's identity (str or bytes): it decides the split."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2.0 ** 64


def assign_splits(keys, val_frac):
    """'val' where the key's hash is below val_frac; each split gets at least one document (needs two)."""
    fractions = [hash_fraction(k) for k in keys]
    splits = ["val" if f < val_frac else "train" for f in fractions]
    if "val" not in splits:
        splits[fractions.index(min(fractions))] = "val"
    if "train" not in splits:
        splits[fractions.index(max(fractions))] = "train"
    return splits


def walk(folder, excluded=(), suffix=""):
    """Files under folder, sorted, skipping hidden entries and folders named in excluded."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in excluded)
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and f.endswith(suffix)]
    return found


def sniff(path):
    """What the first 8 KB of a file say: 'binary' (NUL bytes, as git decides), (offset, byte) of the first
    byte that is not UTF-8, or None (text)."""
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\0" in head:
        return "binary"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError as e:
        return e.start, head[e.start]
    return None


def list_files(patterns, what, errors="strict"):
    """(files, skipped) for --path/--val_path values. files: (key, path) with key the path relative to
    the folder (or the glob's fixed leading folder, or the file's own folder) it was named through.
    Empty and binary files are skipped; files that are not UTF-8 are an error unless errors='replace'."""
    files, skipped, seen, not_utf8 = [], [], set(), []
    for pattern in patterns:
        if os.path.isdir(pattern):
            base, found = pattern, walk(pattern)
        elif os.path.isfile(pattern):
            base, found = os.path.dirname(pattern), [pattern]
        else:
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise UserError(f"{what} {pattern} matches no file or folder")
            base = pattern
            while glob.has_magic(base):
                base = os.path.dirname(base)
            found = [f for m in matches for f in (walk(m) if os.path.isdir(m) else [m])]
        for path in sorted(found, key=lambda p: os.path.relpath(p, base)):
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            try:
                found_here = None if os.path.getsize(path) == 0 else sniff(path)
                if os.path.getsize(path) == 0 or found_here == "binary":
                    skipped.append(path)
                    continue
            except OSError as e:
                raise UserError(f"cannot read {path}: {e.strerror}")
            if found_here and errors == "strict":
                not_utf8.append((path, *found_here))
            files.append((os.path.relpath(path, base).replace(os.sep, "/"), path))
    if not_utf8:
        path, offset, byte = not_utf8[0]
        raise UserError(f"{len(not_utf8)} file(s) in {what} are not UTF-8 text, e.g. {path} (byte 0x{byte:02x} at "
                        f"offset {offset}): convert them (iconv -f latin1 -t utf-8), leave them out, or pass "
                        f"--errors replace to take them as they are")
    return files, skipped


def stdlib_files():
    root = sysconfig.get_paths()["stdlib"]
    return root, [(os.path.relpath(p, root).replace(os.sep, "/"), p)
                  for p in walk(root, excluded=STDLIB_EXCLUDED, suffix=".py") if os.path.getsize(p) > 0]


def local_plan(source, options):
    """What a stdlib/text build reads: (docs, inputs). docs: (key, path, start, end, split) byte ranges;
    inputs: a fingerprint of the files (sizes and modification times) that meta.json keeps."""
    if source == "stdlib":
        root, files = stdlib_files()
        if len(files) < 2:
            raise UserError(f"found {len(files)} .py files under {root}: "
                            f"this Python has no usable stdlib source")
        inputs = {"python": sys.version.split()[0], "root": root}
        val_files = []
    else:
        files, skipped = list_files(options["path"], "--path", options["errors"])
        val_files, skipped_val = list_files(options["val_path"], "--val_path", options["errors"])
        skipped += skipped_val
        if skipped:
            print(f"warning: skipped {len(skipped)} empty or binary file(s), e.g. {skipped[0]}", file=sys.stderr)
        if not files:
            raise UserError(f"no text files found in --path {' '.join(options['path'])}")
        if options["val_path"] and not val_files:
            raise UserError(f"no text files found in --val_path {' '.join(options['val_path'])}")
        both = {os.path.realpath(p) for _, p in files} & {os.path.realpath(p) for _, p in val_files}
        if both:
            raise UserError(f"{sorted(both)[0]} is in both --path and --val_path: "
                            f"a document must be in one split")
        inputs = {}
    sizes = [os.path.getsize(p) for _, p in files + val_files]
    if val_files:
        splits = ["train"] * len(files) + ["val"] * len(val_files)
    elif len(files) == 1:
        key, path = files[0]
        cut = line_cut(path, sizes[0], options["val_frac"])
        docs = [(key, path, 0, cut, "train"), (key, path, cut, sizes[0], "val")]
        return docs, inputs | fingerprint(files, sizes)
    else:
        splits = assign_splits([k for k, _ in files], options["val_frac"])
    docs = [(key, path, 0, size, split) for (key, path), size, split in zip(files + val_files, sizes, splits)]
    return docs, inputs | fingerprint(files + val_files, sizes)


def fingerprint(files, sizes):
    h = hashlib.sha256()
    for (key, path), size in zip(files, sizes):
        h.update(f"{key}\0{size}\0{os.stat(path).st_mtime_ns}\n".encode())
    return {"files": len(files), "bytes": sum(sizes), "fingerprint": h.hexdigest()[:16]}


def line_cut(path, size, val_frac):
    """Byte offset just after the newline nearest (1 - val_frac) of a single-file corpus: train | val."""
    target = int(size * (1 - val_frac))
    with open(path, "rb") as f:
        f.seek(target)
        after = f.read(PIECE_BYTES)
        f.seek(max(0, target - PIECE_BYTES))
        before = f.read(target - max(0, target - PIECE_BYTES))
    candidates = []
    if b"\n" in after:
        candidates.append(target + after.index(b"\n") + 1)
    if b"\n" in before:
        candidates.append(target - len(before) + before.rindex(b"\n") + 1)
    candidates = [c for c in candidates if 0 < c < size]
    if not candidates:
        raise UserError(f"{path} is the only document and has no line break near the {1 - val_frac:.0%} mark "
                        f"to split it at: pass --val_path, more files, or a different --val_frac")
    return min(candidates, key=lambda c: abs(c - target))


def safe_cut(buf, start=0):
    """Offset after the last newline (at or after start) that has a printable, non-space ASCII character
    on both sides, or 0. GPT-2's pre-tokenizer makes such a newline a pre-token of its own, so pieces cut
    there tokenize exactly like the whole. (Not after spaces: ending a piece, '  \n' is one pre-token.)"""
    end = len(buf) - 1
    while True:
        i = buf.rfind(b"\n", max(start, 1), end)
        if i < 0:
            return 0
        if 0x21 <= buf[i - 1] <= 0x7E and 0x21 <= buf[i + 1] <= 0x7E:
            return i + 1
        end = i


def read_pieces(path, start, end, errors="strict", raw=False):
    """Text of path[start:end] in pieces of about PIECE_BYTES: yields (text, n_bytes, is_last). errors: how
    bytes that are not UTF-8 are decoded ('strict': an error); raw: the bytes themselves, undecoded."""
    with open(path, "rb") as f:
        f.seek(start)
        buf, remaining, offset = bytearray(), end - start, start
        while True:
            data = f.read(min(PIECE_BYTES, remaining))
            remaining -= len(data)
            scanned = max(len(buf) - 1, 0)  # a cut needs the byte after the newline: rescan one byte
            buf += data
            at_end = remaining == 0 or not data
            cut = len(buf) if at_end else safe_cut(buf, scanned)
            if cut == 0:
                continue  # no safe cut yet (a very long line): read on
            try:
                text = bytes(buf[:cut]) if raw else buf[:cut].decode("utf-8", errors)
            except UnicodeDecodeError as e:
                raise UserError(f"{path} is not UTF-8 text (bad byte at offset {offset + e.start}): "
                                f"convert it, leave it out, or pass --errors replace to take it as it is")
            yield text, cut, at_end
            if at_end:
                return
            del buf[:cut]
            offset += cut


def local_documents(docs, errors="strict", raw=False):
    """(split, text, n_bytes, ends_document) for each piece of each document, in plan order."""
    for key, path, start, end, split in docs:
        for text, n_bytes, last in read_pieces(path, start, end, errors, raw):
            yield split, text, n_bytes, last


# ----------------------------------------------------------------------------- Hugging Face documents

def unreachable(url, timeout=5):
    """Why url's server (or HTTPS_PROXY) cannot be reached, by a quick TCP probe, or None. A name lookup
    that hangs counts as unreachable after timeout + 1 s."""
    url = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or url
    parsed = urlparse(url if "://" in url else "http://" + url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    answer = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(None)
        except OSError as e:
            answer.append(f"cannot reach {host}:{port} ({e.strerror or type(e).__name__})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return answer[0] if answer else f"cannot reach {host}:{port} (no answer in {timeout} s)"


def hf_unreachable():
    """Why the Hugging Face Hub cannot be reached, or None. Without this the download would retry for
    ~25 s and print a warning per retry before failing."""
    return unreachable(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")


def hf_offline():
    return any(os.environ.get(k, "0").lower() not in ("0", "", "false", "no", "off")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


HF_OFFLINE_HINT = ("offline: HF_DATASETS_OFFLINE=1 reads a copy already in the datasets cache, `python prepare.py "
                   "hf_local --path DIR` a save_to_disk folder or data files; or use `python prepare.py stdlib` or "
                   "`python prepare.py text --path FILES`")


def hf_where(source, split="train"):
    repo, config, _, _ = HF_SOURCES[source]
    return f"'{source}' ({repo}{', ' + config if config else ''}, split {split})"


def hf_preflight(source):
    """Before a Hugging Face build: the Hub must be reachable (unless offline: HF_HUB_OFFLINE or
    HF_DATASETS_OFFLINE, or hf_local) and the packages there."""
    if source != "hf_local" and not hf_offline():
        reason = hf_unreachable()
        if reason:
            raise UserError(f"could not download {hf_where(source)} from Hugging Face: {reason}; "
                            f"{HF_OFFLINE_HINT}")
    for module, package in [("datasets", "datasets")] + ([HF_NEEDS[source]] if source in HF_NEEDS else []):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"source '{source}' needs the '{package}' package: pip install {package}")


def hf_rows(source, split):
    """Rows of a Hugging Face dataset split; any failure is one UserError line saying what works offline."""
    import datasets
    repo, config, _, streaming = HF_SOURCES[source]
    try:
        for row in datasets.load_dataset(repo, config, split=split, streaming=streaming):
            yield row
    except Exception as e:  # network, missing repository, damaged cache: all reported as one line
        raise UserError(f"could not download {hf_where(source, split)} from Hugging Face: {short_reason(e)}; "
                        f"{HF_OFFLINE_HINT}")


def wikitext_articles(rows):
    """WikiText rows are lines; an article starts at a top-level heading line ' = Title = '."""
    article = []
    for row in rows:
        line = row["text"]
        if re.fullmatch(r" = [^=].* = \n", line) and any(s.strip() for s in article):
            yield "".join(article)
            article = []
        article.append(line)
    if any(s.strip() for s in article):
        yield "".join(article)


def hf_texts(source, split):
    rows = hf_rows(source, split)
    texts = wikitext_articles(rows) if source.startswith("wikitext") else (row["text"] for row in rows)
    return (t for t in texts if t)


def data_files(patterns, what):
    """Every file a --path/--val_path value of hf_local names (folders recursively, hidden entries skipped;
    globs), as (key, path) for the fingerprint."""
    found = []
    for pattern in patterns:
        matches = [pattern] if os.path.exists(pattern) else sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise UserError(f"{what} {pattern} matches no file or folder")
        found += [p for m in matches for p in (walk(m) if os.path.isdir(m) else [m])]
    return [(p, p) for p in dict.fromkeys(found)]


def saved_dataset(path):
    """A folder written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json",
                                                                                        "state.json"))


def data_file_builder(path):
    """The datasets builder for a data file (.parquet, .jsonl, .json, .csv, .arrow; compressed json/csv too)."""
    name = re.sub(r"\.(gz|bz2|xz|zst)$", "", os.path.basename(path).lower())
    return DATA_FILE_BUILDERS.get(os.path.splitext(name)[1])


def open_local_dataset(values, what):
    """(train rows, val rows or None) of an hf_local --path/--val_path value list: a save_to_disk folder (a
    DatasetDict's train and validation splits), a folder of data files (splits as datasets infers them for
    a Hub repository: its README's configs, else file names like train-*.parquet, validation-*.parquet),
    or data files and globs (all of them one split)."""
    import datasets
    if len(values) == 1 and os.path.isdir(values[0]):
        folder = values[0]
        ds = datasets.load_from_disk(folder) if saved_dataset(folder) else datasets.load_dataset(
            folder, streaming=True)
        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            if "train" not in ds:
                raise UserError(f"{what} {folder} has the splits {', '.join(ds)} but no 'train' split")
            return ds["train"], next((ds[s] for s in HF_VAL_SPLITS if s in ds), None)
        return ds, None
    files = [p for _, p in data_files(values, what)]
    unknown = [p for p in files if not data_file_builder(p)]
    if unknown:
        raise UserError(f"{what}: cannot tell the format of {unknown[0]}; hf_local reads .parquet, .jsonl, .json, "
                        f".csv and .arrow files, a folder of them, or a save_to_disk folder")
    builders = sorted({data_file_builder(p) for p in files})
    if len(builders) > 1:
        raise UserError(f"{what} mixes formats ({', '.join(builders)}); give files of one format")
    return datasets.load_dataset(builders[0], data_files=files, split="train", streaming=True), None


def column_texts(rows, column, where):
    """The non-empty strings of one column of a datasets Dataset or IterableDataset, in order."""
    names = rows.column_names
    if names is not None and column not in names:
        raise UserError(f"{where} has no column '{column}'{closest_key(column, names)}; its columns: "
                        f"{', '.join(names)} (choose with --text_column)")
    for batch in rows.iter(batch_size=1024):
        if column not in batch:
            raise UserError(f"{where} has no column '{column}'{closest_key(column, batch)}; its columns: "
                            f"{', '.join(batch)} (choose with --text_column)")
        for text in batch[column]:
            if text is not None and not isinstance(text, str):
                raise UserError(f"column '{column}' of {where} holds {type(text).__name__} values, not text; "
                                f"choose a text column with --text_column")
            if text:
                yield text


def hf_local_texts(options):
    """(train texts, val texts or None) of hf_local: --val_path's rows, else the dataset's own validation
    split, else None (a hash split). Errors while reading are one line."""
    try:
        train, val = open_local_dataset(options["path"], "--path")
        if options["val_path"]:
            val_train, val_val = open_local_dataset(options["val_path"], "--val_path")
            val = val_val if val_val is not None else val_train
    except UserError:
        raise
    except Exception as e:  # whatever datasets raises for a folder or file it cannot read
        raise UserError(f"datasets cannot read {' '.join(options['path'] + options['val_path'])}: "
                        f"{short_reason(e)}")

    def texts(rows, where):
        try:
            yield from column_texts(rows, options["text_column"], where)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"datasets cannot read {where}: {short_reason(e)}")

    where = " ".join(options["path"])
    return texts(train, where), None if val is None else texts(val, " ".join(options["val_path"]) or where)


def hf_documents(source, options):
    """(split, text, n_bytes, ends_document) for each document of a Hugging Face text source (the Hub's,
    or hf_local's on disk): the dataset's own validation split where it has one, else a hash split."""
    if source == "hf_local":
        train, val = hf_local_texts(options)
    else:
        _, _, val_split, _ = HF_SOURCES[source]
        train, val = hf_texts(source, "train"), hf_texts(source, val_split) if val_split else None
    max_docs, val_frac = options["max_docs"], options["val_frac"]
    if val is not None:
        caps = {"train": max_docs, "val": math.ceil(max_docs * val_frac) if max_docs else None}
        for split, texts in (("train", train), ("val", val)):
            for text in itertools.islice(texts, caps[split]):
                yield split, text, len(text.encode("utf-8")), True
            texts.close()
    else:
        n_train = 0
        for text in train:
            data = text.encode("utf-8")
            split = "val" if hash_fraction(data) < val_frac else "train"
            yield split, text, len(data), True
            n_train += split == "train"
            if max_docs and n_train >= max_docs:
                break


# ----------------------------------------------------------------------------- task rows

def modular_rows(op, p):
    """Every equation [a, op, b, =, c] mod p (a-major order) and the token names."""
    ids = np.arange(p, dtype=np.int32)
    a, b = (x.ravel() for x in np.meshgrid(ids, ids, indexing="ij"))
    if op == "div":
        a, b = a[b != 0], b[b != 0]
        inverse = np.array([0] + [pow(x, -1, p) for x in range(1, p)], dtype=np.int32)
        c = a * inverse[b] % p
    else:
        c = (a + b) % p if op == "add" else (a - b) % p
    rows = np.stack([a, np.full_like(a, p), b, np.full_like(a, p + 1), c], axis=1)
    return rows, [str(i) for i in range(p)] + [MODULAR_OPS[op], "="]


def permutation_rows(n):
    """Every composition [a, *, b, =, a*b] in S_n ((a*b)(i) = a(b(i))) and the token names."""
    perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)  # lexicographic: id = index
    m = len(perms)
    powers = n ** np.arange(n - 1, -1, -1)
    keys = perms @ powers  # increasing, so searchsorted maps a permutation back to its id
    c = np.empty((m, m), dtype=np.int32)
    for start in range(0, m, 256):  # blocks keep S_7 (25M equations) within memory
        composed = perms[start:start + 256][:, perms]  # composed[a, b, i] = perms[a][perms[b][i]]
        c[start:start + 256] = np.searchsorted(keys, composed @ powers)
    ids = np.arange(m, dtype=np.int32)
    a, b = (x.ravel() for x in np.meshgrid(ids, ids, indexing="ij"))
    rows = np.stack([a, np.full_like(a, m), b, np.full_like(a, m + 1), c.ravel()], axis=1)
    return rows, ["".join(map(str, p)) for p in perms] + ["*", "="]


def split_rows(n_rows, train_frac, seed):
    """Seeded random split of row indices: (train, val), each sorted."""
    order = np.random.default_rng(seed).permutation(n_rows)
    n_train = round(n_rows * train_frac)
    if not 0 < n_train < n_rows:
        raise UserError(f"--train_frac {train_frac} of {n_rows} rows leaves a split empty")
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def mnist_rows(images, labels, size=28):
    """Rows [pixels..., 256 + label] from uint8 images (N, H, W), downsampled to size x size by
    averaging blocks (rounding half up). The label token is the last, supervised, position."""
    images, labels = np.asarray(images), np.asarray(labels)
    n, height, width = images.shape
    if height % size or width % size or height != width:
        raise UserError(f"cannot downsample {height}x{width} images to {size}x{size}: size must divide the side")
    if labels.shape != (n,) or labels.min(initial=0) < 0 or labels.max(initial=0) > 9:
        raise UserError("mnist labels must be one digit 0..9 per image")
    f = height // size
    blocks = images.astype(np.uint32).reshape(n, size, f, size, f).sum(axis=(2, 4))
    rows = np.empty((n, size * size + 1), dtype=np.uint16)
    rows[:, :-1] = ((blocks + f * f // 2) // (f * f)).reshape(n, -1)
    rows[:, -1] = 256 + labels
    return rows


MNIST_TOKEN_NAMES = [str(i) for i in range(256)] + [f"label{d}" for d in range(10)]


# ----------------------------------------------------------------------------- writing

class SplitWriter:
    """One split's bin: appends ids, hashes and counts them as they go."""

    def __init__(self, path, dtype):
        self.path, self.dtype = path, dtype
        self.file = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.tokens = self.documents = self.text_bytes = 0

    def write(self, ids, documents, text_bytes=0):
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self.file.write(data)
        self.sha256.update(data)
        self.tokens += len(data) // np.dtype(self.dtype).itemsize
        self.documents += documents
        self.text_bytes += text_bytes

    def close(self):
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return {"file": os.path.basename(self.path), "tokens": self.tokens, "bytes": os.path.getsize(self.path),
                "sha256": self.sha256.hexdigest(), "documents": self.documents}


class Progress:
    """Tokens, MB of text and MB/s on stderr: a line rewritten in place on a terminal, else every 10 s."""

    def __init__(self):
        self.start = self.shown = time.time()
        self.tty = sys.stderr.isatty()

    def show(self, writers, final=False):
        now = time.time()
        if not final and now - self.shown < (0.5 if self.tty else 10):
            return
        self.shown = now
        mb = sum(w.text_bytes for w in writers.values()) / 1e6
        documents, tokens = (sum(getattr(w, key) for w in writers.values()) for key in ("documents", "tokens"))
        line = (f"tokenized {documents:,} documents, {mb:.1f} MB of text, {tokens:,} tokens, "
                f"{mb / max(now - self.start, 1e-9):.1f} MB/s")
        if self.tty:
            print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
        elif final or now - self.start > 1:
            print(line, file=sys.stderr, flush=True)


def chunks(documents):
    """Group (split, text, n_bytes, last) pieces into (split, pieces, n_documents, n_bytes) of ~PIECE_BYTES."""
    pending = {s: ([], [0, 0]) for s in SPLITS}
    for split, text, n_bytes, last in documents:
        pieces, counts = pending[split]
        pieces.append((text, last))
        counts[0] += last
        counts[1] += n_bytes
        if counts[1] >= PIECE_BYTES:
            yield split, pieces, counts[0], counts[1]
            pending[split] = ([], [0, 0])
    for split, (pieces, (n_documents, n_bytes)) in pending.items():
        if pieces:
            yield split, pieces, n_documents, n_bytes


def tokenize(documents, tokenizer, eot_id, writers, num_threads):
    """Tokenize documents into the writers, chunk by chunk in document order. GPT-2 chunks are encoded by
    num_threads threads (tiktoken releases the GIL while it encodes), with at most 2 * num_threads chunks
    in flight (bounded memory); byte tokens are a memory copy, done in the main thread."""
    progress = Progress()
    dtype = next(iter(writers.values())).dtype

    def write(split, ids, n_documents, n_bytes):
        writers[split].write(ids, n_documents, n_bytes)
        progress.show(writers)

    if tokenizer == "byte" or num_threads <= 1:
        for split, pieces, n_documents, n_bytes in chunks(documents):
            write(split, encode_chunk(pieces, tokenizer, eot_id, dtype), n_documents, n_bytes)
    else:
        with ThreadPoolExecutor(num_threads) as pool:
            in_flight = collections.deque()  # (split, future, n_documents, n_bytes), in document order
            for split, pieces, n_documents, n_bytes in chunks(documents):
                future = pool.submit(encode_chunk, pieces, tokenizer, eot_id, dtype)
                in_flight.append((split, future, n_documents, n_bytes))
                while in_flight and (len(in_flight) > 2 * num_threads or in_flight[0][1].done()):
                    split, future, n_documents, n_bytes = in_flight.popleft()
                    write(split, future.result(), n_documents, n_bytes)
            for split, future, n_documents, n_bytes in in_flight:
                write(split, future.result(), n_documents, n_bytes)
    progress.show(writers, final=True)


def build_tokens(folder, source, options, plan, num_threads):
    """Tokenize a text source into folder; return the meta.json fields it determines."""
    tokenizer, vocab_size, eot_id = load_tokenizer(options["tokenizer"])
    dtype = dtype_for(vocab_size)
    writers = {s: SplitWriter(os.path.join(folder, f"{s}.bin"), dtype) for s in SPLITS}
    start = time.time()
    errors = options.get("errors", "strict")  # text: --errors replace takes the bytes as they are (byte tokens)
    documents = local_documents(plan, errors, raw=errors == "replace" and tokenizer == "byte") \
        if plan is not None else hf_documents(source, options)
    tokenize(documents, tokenizer, eot_id, writers, num_threads)
    seconds = time.time() - start
    text_bytes = {s: w.text_bytes for s, w in writers.items()}
    splits = {s: w.close() | {"text_bytes": text_bytes[s]} for s, w in writers.items()}
    return {"kind": "tokens", "tokenizer": tokenizer, "vocab_size": vocab_size, "eot_id": eot_id, "dtype": dtype,
            "splits": splits, "text_mb_per_s": round(sum(text_bytes.values()) / 1e6 / max(seconds, 1e-9), 2)}


def build_rows(folder, source, options):
    """Write a task dataset's rows into folder; return the meta.json fields it determines."""
    if source == "mnist":
        return write_rows(folder, mnist_batches(options), 266, MNIST_TOKEN_NAMES, options["size"] ** 2 + 1)
    if source == "modular":
        rows, names = modular_rows(options["op"], options["p"])
    else:
        rows, names = permutation_rows(options["n"])
    train, val = split_rows(len(rows), options["train_frac"], options["seed"])
    return write_rows(folder, [("train", rows[train]), ("val", rows[val])], len(names), names, rows.shape[1])


def mnist_batches(options):
    """(split, rows) batches of MNIST: train (capped at --max_docs) and the test set as val."""
    for split, hf_split, cap in (("train", "train", options["max_docs"]), ("val", HF_SOURCES["mnist"][2], None)):
        examples = itertools.islice(hf_rows("mnist", hf_split), cap)
        while batch := list(itertools.islice(examples, 4096)):
            images = np.stack([np.asarray(ex["image"], dtype=np.uint8) for ex in batch])
            yield split, mnist_rows(images, [ex["label"] for ex in batch], options["size"])


def write_rows(folder, batches, vocab_size, token_names, row_len):
    """Rows datasets: whole rows back to back. The answer (the supervised position) is the last token."""
    dtype = dtype_for(vocab_size)
    writers = {s: SplitWriter(os.path.join(folder, f"{s}.bin"), dtype) for s in SPLITS}
    for split, rows in batches:
        if rows.shape[1] != row_len or rows.min(initial=0) < 0 or rows.max(initial=0) >= vocab_size:
            raise ValueError(f"rows must be {row_len} ids in 0..{vocab_size - 1}")
        writers[split].write(rows, len(rows))
    splits = {s: w.close() for s, w in writers.items()}
    return {"kind": "rows", "tokenizer": "task", "vocab_size": vocab_size, "eot_id": None, "dtype": dtype,
            "splits": splits, "row_len": row_len, "supervised_positions": [row_len - 1],
            "rows": {s: splits[s]["documents"] for s in SPLITS}, "token_names": token_names}


# ----------------------------------------------------------------------------- building, reuse, install

def prepare(source, name=None, data_dir="data", force=False, num_threads=None, **options):
    """Build data_dir/name from source (sources and options: README "Data") unless an identical one exists.
    Returns the dataset's folder. Raises UserError for bad input."""
    options = resolve_options(source, options)
    name = name or default_name(source, options)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise UserError(f"--name {name!r} must be a plain folder name (letters, digits, _ . + -)")
    if num_threads is not None and num_threads < 1:
        raise UserError(f"--num_threads must be at least 1, got {num_threads}")
    num_threads = num_threads or available_cores()
    folder = os.path.join(data_dir, name)
    command = prepare_command(source, options, name, data_dir)
    remove_leftovers(data_dir, name)
    plan, inputs = local_plan(source, options) if source in ("stdlib", "text") else (None, {})
    if source in HF_SOURCES:
        inputs = dict(zip(("hf_dataset", "hf_config", "hf_val_split"), HF_SOURCES[source][:3]))
    if source == "hf_local":  # what is read: the files (sizes and times), as for text
        files = data_files(options["path"] + options["val_path"], "--path")
        inputs = fingerprint(files, [os.path.getsize(p) for _, p in files])
    identity = {"format_version": FORMAT_VERSION, "source": source, "options": options, "inputs": inputs}
    replace = os.path.lexists(folder)  # then it is rebuilt only with --force, or if damaged
    if replace and reusable(folder, identity, command, force):
        print(f"{folder} is up to date: reusing it (--force rebuilds it)")
        return folder
    if source in HF_SOURCES or source == "hf_local":
        hf_preflight(source)
    tmp = os.path.join(data_dir, f".{name}.tmp-{HOST}-{os.getpid()}")
    start = time.time()
    try:
        os.makedirs(tmp)
        if source in TASK_SOURCES:
            meta = build_rows(tmp, source, options)
        else:
            meta = build_tokens(tmp, source, options, plan, num_threads)
        empty = [s for s in SPLITS if meta["splits"][s]["tokens"] == 0]
        if empty:
            raise UserError(f"the {empty[0]} split of {source} came out empty; raise --max_docs or --val_frac")
        meta = {"format_version": FORMAT_VERSION, "name": name} | identity | meta | {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "command": command, "seconds": round(time.time() - start, 2)}
        write_json(os.path.join(tmp, "meta.json"), meta)
        installed = install(tmp, folder, data_dir, name, replace)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):  # the user can fix these
            raise UserError(f"{e.strerror}: {e.filename or tmp}; nothing was changed in {folder}")
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(summary(folder, meta) if installed else f"another prepare finished {folder} first: using that one")
    return folder


def reusable(folder, identity, command, force):
    """True if folder holds this very dataset, intact. A folder holding a different dataset, or a damaged
    meta.json, is an error unless --force; one that is not a dataset at all is never touched."""
    if not os.path.isdir(folder) or set(os.listdir(folder)) - {"train.bin", "val.bin", "meta.json"}:
        raise UserError(f"{folder} exists and is not a prepare.py dataset; move it away or choose another --name")
    if force:
        return False
    meta, problem = read_json(os.path.join(folder, "meta.json"))
    if not isinstance(meta, dict):
        raise UserError(f"{folder} is damaged ({problem or 'meta.json is not an object'}); "
                        f"rebuild it with `{command} --force`")
    differences = identity_differences(meta, identity)
    if differences:
        raise UserError(f"{folder} was built with different settings ({'; '.join(differences)}): "
                        f"add --force to rebuild it, or --name NEW to build this one beside it")
    problem = dataset_problem(folder, meta)
    if problem:
        print(f"{folder} is damaged ({problem}): rebuilding it")
    return problem is None


def identity_differences(meta, identity):
    """What differs between an existing dataset and the one asked for, as 'key: old -> new' phrases."""
    def short(value):
        return str(value)[:60]

    differences = []
    for key, new in json.loads(json.dumps(identity)).items():  # as meta.json holds it: tuples as lists
        old = meta.get(key)
        if isinstance(new, dict) and isinstance(old, dict):
            for k in sorted(set(new) | set(old)):
                if key == "options" and k not in old and new[k] == SOURCES[identity["source"]].get(k):
                    continue  # an option added since, at its default: what the older build did
                if new.get(k) != old.get(k):
                    differences.append("input files changed (size or time)" if k == "fingerprint" else
                                       difference_text(old, new, [k], show=short, absent=None))
        elif new != old:
            differences.append(difference_text(meta, {key: new}, [key], show=short, absent=None))
    return differences


def install(tmp, folder, data_dir, name, replace):
    """Rename the finished build into place; False if a concurrent prepare (another DDP rank, say) got
    there first. A dataset that was there before (--force, or damaged) is moved aside first."""
    old = os.path.join(data_dir, f".{name}.old-{HOST}-{os.getpid()}")
    if replace and os.path.exists(folder):
        os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not os.path.isdir(folder):
            raise
        return False
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return True


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(data_dir, name):
    """Temporary folders of builds of this dataset: (path, host, pid)."""
    if not os.path.isdir(data_dir):
        return []
    found = []
    for entry in sorted(os.listdir(data_dir)):
        m = re.fullmatch(rf"\.{re.escape(name)}\.(?:tmp|old)-(.+)-(\d+)", entry)
        if m:
            found.append((os.path.join(data_dir, entry), m.group(1), int(m.group(2))))
    return found


def remove_leftovers(data_dir, name):
    """Remove what killed builds left behind; leave builds that may still be running alone."""
    for path, host, pid in leftovers(data_dir, name):
        if host == HOST and (pid == os.getpid() or not pid_alive(pid)):
            shutil.rmtree(path, ignore_errors=True)
            print(f"removed {path}, left behind by a prepare that was killed")


def summary(folder, meta):
    parts = []
    for split in SPLITS:
        s = meta["splits"][split]
        count = f"{meta['rows'][split]:,} rows" if meta["kind"] == "rows" else f"{s['documents']:,} documents"
        parts.append(f"{split} {s['tokens']:,} tokens ({count})")
    rate = f", {meta['text_mb_per_s']} MB/s of text" if "text_mb_per_s" in meta else ""
    return (f"wrote {folder}: {', '.join(parts)}; {meta['tokenizer']} tokens, vocab {meta['vocab_size']}, "
            f"{meta['dtype']}; {meta['seconds']} s{rate}")


# ----------------------------------------------------------------------------- loading and checking

def dataset_problem(folder, meta, checksum=True):
    """What is wrong with a built dataset (a short phrase), or None if meta.json and the bins agree."""
    try:
        if meta.get("format_version") != FORMAT_VERSION:
            return f"format_version {meta.get('format_version')!r}, this prepare.py reads {FORMAT_VERSION}"
        itemsize = np.dtype(meta["dtype"]).itemsize if meta["dtype"] in ("uint16", "uint32") else None
        if itemsize is None or meta["kind"] not in ("tokens", "rows") or not isinstance(meta["vocab_size"], int):
            return "meta.json has an unknown kind, dtype or vocab_size"
        if meta["kind"] == "rows":
            row_len, positions = meta["row_len"], meta["supervised_positions"]
            if not (isinstance(row_len, int) and row_len >= 2 and positions
                    and all(isinstance(p, int) and 1 <= p < row_len for p in positions)):
                return "meta.json has a bad row_len or supervised_positions"
        for split in SPLITS:
            s = meta["splits"][split]
            path = os.path.join(folder, s["file"])
            if os.path.basename(s["file"]) != s["file"] or not os.path.isfile(path):
                return f"{split} bin {s['file']} is missing"
            if s["tokens"] <= 0:
                return f"the {split} split is empty"
            whole_rows = meta["kind"] != "rows" or s["tokens"] % meta["row_len"] == 0
            if s["bytes"] != s["tokens"] * itemsize or not whole_rows:
                return f"meta.json is inconsistent about the {split} split's size"
            size = os.path.getsize(path)
            if size != s["bytes"]:
                return f"{path} is {size:,} bytes but meta.json says {s['bytes']:,} (truncated or modified)"
            if checksum and size <= CHECKSUM_LIMIT and file_sha256(path) != s["sha256"]:
                return f"{path} does not match its sha256 in meta.json (modified or corrupt)"
    except (KeyError, TypeError, AttributeError):
        return "meta.json lacks fields or has wrong types"
    return None


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def load_dataset(data_dir, name, checksum=True):
    """{"meta": dict, "train": np.memmap, "val": np.memmap}, rows datasets as (n_rows, row_len) memmaps.
    Checks meta.json against the bins first (sizes, and sha256 up to CHECKSUM_LIMIT bytes unless
    checksum=False); anything wrong is a UserError of one line saying how to fix it."""
    folder = os.path.join(data_dir, name)
    if not os.path.isdir(folder):
        command = guess_command(name, data_dir)
        unfinished = leftovers(data_dir, name)
        if unfinished:
            raise UserError(f"dataset '{name}' in {folder} is unfinished (a prepare was killed or is still "
                            f"running: {unfinished[0][0]}); run `{command}`")
        raise UserError(f"dataset '{name}' not found in {folder}: run `{command}`")
    meta, problem = read_json(os.path.join(folder, "meta.json"))
    if not isinstance(meta, dict):
        problem = problem or "meta.json is not an object"
        if problem.startswith("no "):
            problem = "no meta.json: not a finished dataset"
        raise UserError(f"dataset '{name}' in {folder} is damaged ({problem}); "
                        f"rebuild it with `{guess_command(name, data_dir)} --force`")
    problem = dataset_problem(folder, meta, checksum)
    if problem:
        command = meta.get("command") if isinstance(meta.get("command"), str) else guess_command(name, data_dir)
        raise UserError(f"dataset '{name}' in {folder} is damaged ({problem}); "
                        f"rebuild it with `{command} --force`")
    out = {"meta": meta}
    for split in SPLITS:
        s = meta["splits"][split]
        shape = (s["tokens"] // meta["row_len"], meta["row_len"]) if meta["kind"] == "rows" else (s["tokens"],)
        out[split] = np.memmap(os.path.join(folder, s["file"]), dtype=meta["dtype"], mode="r", shape=shape)
    return out


def decode(meta, ids):
    """Text of token ids (the end-of-document token shows as <|endoftext|>); rows datasets: token names
    separated by spaces, one line per row."""
    ids = np.asarray(ids)
    if meta["kind"] == "rows":
        names = meta.get("token_names") or [str(i) for i in range(meta["vocab_size"])]
        rows = ids.reshape(-1, ids.shape[-1]) if ids.ndim else ids.reshape(1, 1)
        return "\n".join(" ".join(names[int(i)] for i in row) for row in rows)
    if meta["tokenizer"] != "byte":
        load_tokenizer("gpt2")  # gpt2 and r50k_base have the same ranks: decode with whichever is here
        return ENCODERS["gpt2"].decode(ids.astype(np.int64).tolist())
    if ids.size and (ids.min() < 0 or ids.max() > BYTE_EOT):
        raise ValueError(f"byte token ids are 0..{BYTE_EOT}")
    parts, start = [], 0
    for end in list(np.flatnonzero(ids == BYTE_EOT)) + [len(ids)]:
        parts.append(ids[start:end].astype(np.uint8).tobytes().decode("utf-8", errors="replace"))
        start = end + 1
    return EOT_TEXT.join(parts)


# ----------------------------------------------------------------------------- command line

def run(argv):
    parser = ArgumentParser(prog="prepare.py", description=__doc__, allow_abbrev=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help=", ".join(SOURCES))
    parser.add_argument("--name", help="dataset folder name (default: from the source)")
    parser.add_argument("--data_dir", default="data", help="where datasets live (default: data)")
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical dataset exists")
    parser.add_argument("--num_threads", type=int, help="tokenizer threads (default: all cores)")
    parser.add_argument("--path", action="append", help="text, hf_local: file, folder or glob (repeatable)")
    parser.add_argument("--val_path", action="append", help="text, hf_local: validation files (repeatable)")
    parser.add_argument("--text_column", help="hf_local: the column holding the text (default: text)")
    parser.add_argument("--errors", help="text: strict (default: a file that is not UTF-8 is an error) or "
                                         "replace (take it: its bytes as they are, U+FFFD for gpt2)")
    parser.add_argument("--tokenizer", help="byte or gpt2")
    parser.add_argument("--val_frac", type=float, help="fraction of documents for val (default 0.05)")
    parser.add_argument("--max_docs", type=int, help="at most this many training documents (images)")
    parser.add_argument("--op", help="modular: add, sub or div")
    parser.add_argument("--p", type=int, help="modular: the modulus (default 97)")
    parser.add_argument("--n", type=int, help="permutation: S_n (default 5)")
    parser.add_argument("--train_frac", type=float, help="tasks: fraction of rows for train (default 0.5)")
    parser.add_argument("--seed", type=int, help="task datasets: seed of the split (default 0)")
    parser.add_argument("--size", type=int, help="mnist: image side, 28 14 7 or 4 (default 28)")
    args = vars(parser.parse_args(argv))
    common = {k: args.pop(k) for k in ("source", "name", "data_dir", "force", "num_threads")}
    try:
        prepare(**common, **{k: v for k, v in args.items() if v is not None})
    except KeyboardInterrupt:
        print("\ninterrupted: no dataset was installed", file=sys.stderr)
        return 130
    return 0


def main(argv=None):
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
