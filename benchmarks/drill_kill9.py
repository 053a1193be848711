"""kill -9 drills: a run killed at a random moment resumes to exactly what a straight run gives.

    python benchmarks/drill_kill9.py --n 20          # quickstart, 40 steps, a checkpoint every 4
    python benchmarks/drill_kill9.py --n 2 --config tests/tiny_configs.py --steps 8 --every 2 \
        --warmup 2

Two straight runs first (the first fills a persistent compilation cache that every later run
shares, the second is the timed reference; they must agree). Each drill starts the same command
in a fresh workdir, sends SIGKILL at a moment drawn uniformly from the reference's training time
(from its "from scratch" line to its exit), reruns the command, and compares with the reference:
the final parameters bit for bit, every kept checkpoint (the state's checksums, the data position
and the eval metrics saved with it) and the final line. Prints one markdown row per drill and a
summary line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(args, workdir: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "train.py"), f"--config={args.config}",
            f"--workdir={workdir}", f"--config.total_steps={args.steps}",
            f"--config.checkpoint.every_steps={args.every}", "--config.log_every_steps=1",
            f"--config.optim.warmup_steps={args.warmup}",
            *args.overrides]


class Run:
    """One train.py process; stdout to a file, so it can be read while the process runs."""

    def __init__(self, args, workdir: str, env: dict):
        self.log = workdir + ".log"
        self.started = time.monotonic()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(command(args, workdir), stdout=out,
                                         stderr=subprocess.STDOUT, env=env)

    def wait_for(self, text: str, timeout: float = 600) -> float:
        """Seconds from the start until `text` is in the output (or the process ended)."""
        while text not in self.output() and self.proc.poll() is None:
            if time.monotonic() - self.started > timeout:
                raise TimeoutError(f"no {text!r} in {self.log} after {timeout} s")
            time.sleep(0.02)
        return time.monotonic() - self.started

    def output(self) -> str:
        with open(self.log) as f:
            return f.read()

    def final_line(self) -> str | None:
        lines = [line for line in self.output().splitlines() if line.startswith("final: ")]
        return lines[-1] if lines else None


def finish(args, workdir: str, env: dict) -> Run:
    run = Run(args, workdir, env)
    if run.proc.wait() != 0:
        raise RuntimeError(f"{' '.join(command(args, workdir))} failed:\n{run.output()[-3000:]}")
    return run


def fingerprint(workdir: str) -> dict:
    """What must come out the same: every kept checkpoint's state checksums, data position and
    eval metrics (the items train.py saves as JSON), and the final parameters."""
    from attn_jax.train.restore import checkpoint_steps, load_params

    ckpts = {}
    for step in checkpoint_steps(workdir):
        items = {}
        for item in ("digest", "data", "eval"):
            path = os.path.join(workdir, "checkpoints", str(step), item, "metadata")
            with open(path) as f:
                items[item] = json.load(f)
        ckpts[step] = items
    import jax
    params = {jax.tree_util.keystr(k): np.asarray(v)
              for k, v in jax.tree_util.tree_leaves_with_path(load_params(workdir)[1])}
    return {"checkpoints": ckpts, "params": params}


def same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def drill(args) -> tuple[list[str], int]:
    """Runs the drills; returns the table's rows and how many resumed bit-identical."""
    rng = random.Random(args.seed)
    scratch = tempfile.mkdtemp(prefix="drill_kill9_")
    cache = args.cache_dir or os.path.join(scratch, "jax_cache")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this process only reads checkpoints
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only managers
    try:
        finish(args, os.path.join(scratch, "warmup"), env)
        reference = Run(args, os.path.join(scratch, "reference"), env)
        begin = reference.wait_for("from scratch")
        if reference.proc.wait() != 0:
            raise RuntimeError(reference.output()[-3000:])
        end = time.monotonic() - reference.started
        expected = fingerprint(os.path.join(scratch, "reference"))
        warmup = fingerprint(os.path.join(scratch, "warmup"))
        if not same_params(expected["params"], warmup["params"]):
            raise RuntimeError("two straight runs disagree: the drill has no reference")
        rows, identical = [], 0
        for i in range(args.n):
            workdir = os.path.join(scratch, f"drill{i}")
            delay = rng.uniform(0.0, end - begin)
            victim = Run(args, workdir, env)
            victim.wait_for("from scratch")
            time.sleep(delay)
            killed = victim.proc.poll() is None
            if killed:
                victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            steps = re.findall(r"^step (\d+)/", victim.output(), re.M)
            resumed = finish(args, workdir, env)
            start = re.search(r"resuming at step (\d+)|from scratch", resumed.output())
            resumed_at = (start.group(1) or "0") if start else "?"
            got = fingerprint(workdir)
            ok = (same_params(got["params"], expected["params"]),
                  got["checkpoints"] == expected["checkpoints"],
                  resumed.final_line() == reference.final_line())
            identical += all(ok)
            rows.append(f"| {i + 1} | {delay:.2f} | {steps[-1] if steps else '-'} | "
                        f"{'SIGKILL' if killed else 'finished first'} | "
                        f"{resumed_at} | "
                        + " | ".join("yes" if x else "**no**" for x in ok) + " |")
            print(rows[-1], flush=True)
            shutil.rmtree(workdir)
        return rows, identical
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


HEADER = ("| drill | kill after (s, from the header line) | last step printed | outcome | "
          "resumed at step | same parameters | same checkpoints | same final line |\n"
          "|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="number of drills")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.py"))
    parser.add_argument("--steps", type=int, default=40, help="config.total_steps")
    parser.add_argument("--every", type=int, default=4, help="config.checkpoint.every_steps")
    parser.add_argument("--warmup", type=int, default=4, help="config.optim.warmup_steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--cache-dir", default="", help="persistent compilation cache the runs "
                        "share (default: a fresh one, removed at the end)")
    args, args.overrides = parser.parse_known_args(argv)  # the rest: --config.key=value
    print(HEADER, flush=True)
    rows, identical = drill(args)
    print(f"\n{identical} of {len(rows)} drills resumed bit-identical (parameters, checkpoints, "
          f"final line)", flush=True)
    return 0 if identical == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
