"""train.py's command line: the config file, its `--config.KEY=VALUE` overrides, one-line errors.

`parse_flags` is the `flags_parser` of `absl.app.run`. It loads the `--config` file itself (a
wrong path or a config that fails to load is named at once, not when the config is first read),
fills in every key the task's `config.data` and each evaluator section declare
(`attn_jax.train.config.fill_declared_keys`, so `--config.data.data_dir=...` always exists), and
only then defines the overrides with ml_collections, against the filled config. Any mistake on the
command line exits with status 2 and one line on stderr naming the problem and the fix; the
traceback is printed only with `--verbose` or ATTN_JAX_VERBOSE=1.
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import re
import signal
import sys
import traceback
from typing import Any, NoReturn

import ml_collections
from absl import flags
from ml_collections import config_flags

from attn_jax.train.safety import ConfigError, TrainingError

VERBOSE_ENV = "ATTN_JAX_VERBOSE"
_CONFIG_ARG = re.compile(r"^--?config(=(.*))?$")
_state: dict[str, str] = {}


def verbose(argv: list[str] | None = None) -> bool:
    """`--verbose` on the command line (read before absl parses it) or ATTN_JAX_VERBOSE=1."""
    argv = sys.argv if argv is None else argv
    return (os.environ.get(VERBOSE_ENV, "") not in ("", "0")
            or any(a in ("--verbose", "-verbose", "--verbose=true", "--verbose=True")
                   for a in argv))


def fail(error: BaseException, exit_code: int | None = None) -> NoReturn:
    """Prints `error: <one line>` on stderr (its traceback first, when verbose) and exits with
    its status (a TrainingError's `exit_code`, else 2)."""
    if verbose():
        traceback.print_exception(error)
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    code = exit_code if exit_code is not None else getattr(error, "exit_code", 2)
    sys.stdout.flush()
    if code == 4:  # CheckpointError: orbax threads of a failed save would hold the exit 300 s
        os._exit(code)
    sys.exit(code)


def config_path() -> str:
    """The config file train.py loaded, without its `:arg` (after `parse_flags`)."""
    return _state["path"]


def split_config_arg(argv: list[str], default: str) -> tuple[str, list[str]]:
    """(the `--config` value, argv without it): `--config=PATH[:ARG]` or `--config PATH`."""
    spec, rest, i = default, [argv[0]], 1
    while i < len(argv):
        match = _CONFIG_ARG.match(argv[i])
        if match and match.group(1) is None:  # --config PATH
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a config file: --config=configs/NAME.py")
            spec, i = argv[i + 1], i + 2
            continue
        if match:
            spec = match.group(2)
        else:
            rest.append(argv[i])
        i += 1
    return spec, rest


def load_config_file(spec: str, configs_dir: str) -> ml_collections.ConfigDict:
    """`get_config(ARG)` of the file `PATH` of `PATH[:ARG]`, as a ConfigDict; ConfigError with
    the shipped configs named when the file is missing, and with the error when it fails."""
    path, _, arg = spec.partition(":")
    shipped = ", ".join(os.path.basename(p) for p in sorted(glob.glob(
        os.path.join(configs_dir, "*.py"))))
    if not path or not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist (relative paths start at "
                          f"{os.getcwd()}): pass --config=PATH, e.g. one of the configs in "
                          f"{configs_dir}: {shipped}")
    try:
        module_spec = importlib.util.spec_from_file_location("attn_jax_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config = module.get_config(*([arg] if arg else []))
    except Exception as e:
        raise ConfigError(f"config file {spec} failed to load: {type(e).__name__}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"config file {spec}: get_config() returned {type(config).__name__}, "
                          "not an ml_collections.ConfigDict (start from "
                          "attn_jax.train.config.base_config())")
    return config


def unknown_override(config: ml_collections.ConfigDict, key: str) -> str | None:
    """"--config.data.flipp: config.data has no key 'flipp' (did you mean --config.data.flip?);
    its keys: [...]" for an override path that does not exist in `config`; None when it does."""
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(["config", *parts[:depth]])
            if not isinstance(node, ml_collections.ConfigDict):
                return (f"--config.{key}: {where} is a {type(node).__name__}, not a section "
                        "with keys")
            known = sorted(node.keys())
            if where == "config.evals" and not known:
                return (f"--config.{key}: config.evals is empty, so the task's default "
                        "evaluators run and have no keys to set: name the evaluator in the "
                        "config file (config.evals.NAME = dict(type=...)) to set its keys")
            close = difflib.get_close_matches(part, known, n=1)
            return (f"--config.{key}: {where} has no key {part!r}"
                    + (f" (did you mean --config.{'.'.join([*parts[:depth], close[0]])}?)"
                       if close else "") + f"; its keys: {known}")
        node = node[part]
    return None


def stop_at_once_on_sigint() -> None:
    """SIGINT (Ctrl-C) exits at once, with one line and status 130, until the trainer's
    `safety.RunGuard` takes it over (from then on it saves the step reached). Nothing has been
    written before that. (A KeyboardInterrupt instead prints a traceback, and can land in a
    callback whose exceptions Python ignores, the garbage collector's, and the run goes on.
    SIGTERM's default action already exits quietly, status 143, and JAX's preemption service
    may own it.)"""
    def stop(signum: int, frame: Any) -> None:
        os.write(2, b"error: SIGINT before training started: nothing was written; rerun the "
                    b"command to start\n")
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, stop)


def parse_flags(argv: list[str], default_config: str, configs_dir: str) -> list[str]:
    """The `flags_parser` of absl.app.run: loads and fills the config, defines `--config` with
    its overrides, parses argv. Exits 2 with one line on any mistake; returns the arguments
    left over (argv[0] and positional arguments) for main."""
    try:
        spec, rest = split_config_arg(argv, default_config)
        config = load_config_file(spec, configs_dir)
        from attn_jax.train.config import fill_declared_keys  # imports the tasks (jax, tfds)

        try:
            fill_declared_keys(config)
        except ValueError as e:
            raise ConfigError(f"config file {spec}: {e}") from e
        config.lock()
        _state["path"] = spec.partition(":")[0]
        for arg in rest[1:]:  # unknown keys: named with the closest known one
            match = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
            problem = match and unknown_override(config, match.group(1))
            if problem:
                raise ConfigError(problem)
        try:
            config_flags.DEFINE_config_dict(
                "config", config, "The config file as --config=PATH or PATH:ARG, and any key "
                "of it as --config.KEY=VALUE (README.md, 'Config keys'; --list_keys).",
                sys_argv=rest)
            flag = flags.FLAGS["config"]
            flag.default_as_str = repr(os.path.relpath(default_config))  # not the whole config
            flags.FLAGS.register_key_flag_for_module(argv[0], flag)  # listed by --help
            return flags.FLAGS(rest)
        except flags.IllegalFlagValueError as e:
            match = re.search(r"--config\.([\w.]+)=", str(e))
            value = config
            for part in (match.group(1).split(".") if match else ()):
                value = value.get(part) if isinstance(value, ml_collections.ConfigDict) else None
            kind = f" (config.{match.group(1)}: {type(value).__name__}, now {value!r})" if (
                match and value is not None) else ""
            raise ConfigError(f"{e}{kind}") from e
        except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
            raise ConfigError(str(e)) from e
    except TrainingError as e:
        fail(e)
