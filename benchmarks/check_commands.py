"""Checks benchmark command lines without running them: each against its script's own argparse
parser (`build_parser()`), and the names it passes (configs, presets, attention implementations)
against what the script knows. `gpu_suite.sh --dry-run` feeds it its commands, one per line:

    echo "python benchmarks/bench_vit.py --configs vit_b16_imagenet --batch 256" |
        python benchmarks/check_commands.py

Prints each command with 'ok' or the reason it would fail; exits 1 if any would.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys

from _common import ROOT, load_config


def _config_exists(name: str) -> str | None:
    return None if os.path.exists(os.path.join(ROOT, "configs", f"{name}.py")) else (
        f"no config file configs/{name}.py")


def check_names(script: str, args) -> list[str]:
    """The problems with the names in `args` that argparse cannot see."""
    problems = []
    configs = [c for c in (getattr(args, "configs", None) or "").split(",") if c]
    if script == "bench_attention":
        from attn_jax.attention import IMPLEMENTATIONS

        problems += [f"unknown implementation {i!r} (known: {list(IMPLEMENTATIONS)})"
                     for i in args.impls.split(",") if i not in IMPLEMENTATIONS]
    elif script == "bench_vit":
        problems += [p for p in map(_config_exists, configs) if p]
    elif script == "bench_lm":
        from attn_jax.models.transformer_presets import PRESETS

        for name in configs:
            if name in PRESETS:
                continue
            problem = _config_exists(name)
            if problem is None and load_config(name).task != "lm":
                problem = f"configs/{name}.py is not an 'lm' config"
            problems += [problem] if problem else []
    elif script == "bench_unet":
        known = importlib.import_module("bench_unet").CONFIGS
        problems += [f"unknown U-Net config {c!r} (known: {sorted(known)})"
                     for c in configs if c not in known]
    return problems


def check(line: str) -> str | None:
    """None if the command line would start, else why not."""
    argv = shlex.split(line)
    scripts = [a for a in argv if a.endswith(".py")]
    if not scripts:
        return "no benchmarks/*.py script in the command"
    script = os.path.basename(scripts[0])[:-3]
    flags = argv[argv.index(scripts[0]) + 1:]
    if not os.path.exists(os.path.join(ROOT, "benchmarks", f"{script}.py")):
        return f"no script benchmarks/{script}.py"
    parser = importlib.import_module(script).build_parser()
    parser.exit_on_error = False
    try:
        args, extra = parser.parse_known_args(flags)
    except (Exception, SystemExit) as e:  # a bad value for a known flag (argparse has printed it)
        return f"{script}: {e}"
    if extra:
        return f"{script}: unrecognized arguments {extra}"
    problems = check_names(script, args)
    return f"{script}: " + "; ".join(problems) if problems else None


def main() -> int:
    failed = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        problem = check(line.strip())
        failed += problem is not None
        print(f"{'ok' if problem is None else 'FAIL: ' + problem}: {line.strip()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
