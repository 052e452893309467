"""
The one config mechanism of the toolkit (nanoGPT's configurator, with the sharp edges filed off).

train.py's module-level globals are the defaults. Plain Python config files and --key=value arguments
override them, left to right:

    python train.py configs/modern.py configs/widths/128d.py --learning_rate=3e-3 --seed=2

A config file is executed with the current values in scope, so it can read them (`n_head = n_embd // 64`)
and can pull in another file with include('other.py') (relative to the including file). Every name it
sets must be a known key. sweep.py and bench.py use the same functions, so a sweep is validated exactly
as the run it will launch.

Also the scripts' shared plumbing: UserError (bad input: one line, exit 2), cli_main (a script's main),
ArgumentParser, exec_user_file (config, sweep and ledger files are user code) and message helpers.
"""
import argparse
import ast
import difflib
import os
import sys
import traceback
import types


class UserError(Exception):
    """Bad input: printed as one line (no traceback) and the script exits with status 2."""


def closest_key(key, known):
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def unknown_key_error(key, known, where):
    return UserError(f"unknown config key '{key}' {where}{closest_key(key, known)}; "
                     f"`python train.py --help` lists the keys")


def difference_text(old, new, keys, show=repr, absent="<absent>"):
    """'key: old -> new' for each key, comma-separated: what differs between two configs, for messages.
    A key missing on one side shows as `absent` (through show)."""
    return ", ".join(f"{k}: {show(old.get(k, absent))} -> {show(new.get(k, absent))}" for k in keys)


def coerce(key, value, default, raw=None):
    """Convert value to the type of the key's default. raw is the command-line text, if any."""
    if default is None:
        return value  # keys defaulting to None take any literal (None included: 'off/auto')
    if value is None:
        if isinstance(default, str) and raw is not None:
            return raw  # --label=None is the text 'None', as --run_name=123 is '123'
        raise UserError(f"config key '{key}' cannot be None; its default is {default!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise UserError(f"config key '{key}' expects True or False, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # --max_tokens=1e6
        raise UserError(f"config key '{key}' expects an integer, got {value!r}")
    if isinstance(default, float):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and abs(value) < 2 ** 1024:  # not nan or inf: no key means anything by them
            return float(value)  # --learning_rate=1
        raise UserError(f"config key '{key}' expects a number, got {value!r}" + (" (it must be finite)" if number
                                                                                  else ""))
    if isinstance(default, str):
        if isinstance(value, str) or (isinstance(value, bool) and default == "auto"):
            return value  # bools pass through for 'auto' keys such as compile; validation decides
        if isinstance(value, (int, float)):  # bools included: --run_name=True is the text 'True'
            return raw if raw is not None else str(value)  # --run_name=123 stays '123'
        raise UserError(f"config key '{key}' expects a string, got {value!r}")
    if isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
        raise UserError(f"config key '{key}' expects a list, got {value!r}")
    return value


def parse_literal(raw):
    """Command-line text as the Python literal it spells (1e-3, [1, 2], True, 'x'), else the text itself (a bare
    word: --device=cpu)."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def parse_value(key, raw, default):
    return coerce(key, parse_literal(raw), default, raw)


def exec_user_file(path, namespace, kind):
    """Execute a config or sweep file (kind: 'config file', 'sweep file') in namespace. It is user code: a file
    that cannot be read or parsed, or whose code raises, is a one-line UserError naming the file (and the line);
    so is a helper's UserError (include, best_lr, ...), unless it names the file already."""
    try:
        with open(path) as f:
            code = compile(f.read(), path, "exec")
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: syntax error in {kind}: {e.msg}")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"cannot read {kind} {path}: {e}")
    except (MemoryError, RecursionError):  # CPython's parser gives up on brackets nested a few hundred deep
        raise UserError(f"{path}: too deeply nested for Python to parse; a {kind} sets plain values")
    namespace["__file__"] = path
    try:
        exec(code, namespace)
    except UserError as e:
        raise e if str(e).startswith(path) else UserError(f"{path}: {e}")
    except Exception as e:
        lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path]
        raise UserError(f"{path}{f':{lines[-1]}' if lines else ''}: {type(e).__name__}: {e}")


def apply_config_file(path, config, defaults):
    """Execute one config file with config's values in scope; fold its assignments into config."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    namespace = dict(config)

    def include(other):  # another config file, relative to this one, applied at this point
        namespace.update(apply_config_file(os.path.join(os.path.dirname(path), other),
                                           namespace_config(namespace, defaults, path), defaults))

    namespace["include"] = include
    exec_user_file(path, namespace, "config file")
    return namespace_config(namespace, defaults, path)


def namespace_config(namespace, defaults, path):
    out = {}
    for key, value in namespace.items():
        if key.startswith("_") or key == "include":
            continue
        if isinstance(value, (types.ModuleType, types.FunctionType, type)):
            continue  # `import math` or a helper function in a config file is fine
        if key not in defaults:
            raise unknown_key_error(key, defaults, f"in {path}")
        out[key] = coerce(key, value, defaults[key])
    return out


def parse_args(args, defaults):
    """Apply config files and --key=value overrides (in order) to a copy of defaults.
    Returns (config, config_files)."""
    config = dict(defaults)
    config_files = []
    for arg in args:
        if not arg.startswith("--"):
            config.update(apply_config_file(arg, config, defaults))
            config_files.append(arg)
            continue
        key, raw = split_override(arg, defaults)
        config[key] = parse_value(key, raw, defaults[key])
    return config, config_files


def split_override(arg, defaults):
    """(key, raw text) of a --key=value argument; the key must be one of defaults."""
    if "=" not in arg:
        raise UserError(f"argument '{arg}' needs a value: write --key=value")
    key, raw = arg[2:].split("=", 1)
    if key not in defaults:
        raise unknown_key_error(key, defaults, "on the command line")
    return key, raw


def describe_keys(source_path, defaults):
    """The --help text: every key, its default and the comment beside it in the source."""
    comments = {}
    with open(source_path) as f:
        for line in f:
            if "=" in line and "#" in line and not line.startswith((" ", "\t", "#")):
                key = line.split("=", 1)[0].strip()
                comments[key] = line.split("#", 1)[1].strip()
    width = max(len(k) for k in defaults)
    return "\n".join(f"  {k:<{width}}  {defaults[k]!r:<14} {comments.get(k, '')}" for k in defaults)


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the scripts: a bad option is one line and exit 2, like every other bad input."""
    def error(self, message):
        raise UserError(f"{message} (python {self.prog} --help lists the options)")


def available_cores():
    """The CPU cores this process may run on (its affinity mask: a SLURM allocation, taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cli_main(run, argv=None):
    """A script's main: returns the exit status of run(argv) (0 unless run returns an int). Bad input (a UserError)
    is one line on stderr and status 2; a reader that leaves early (`python sweep.py --list | head`) is no error."""
    try:
        status = run(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    return status if isinstance(status, int) else 0
