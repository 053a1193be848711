"""train.py's persistent compilation cache (attn_jax/train/jit_cache.py): on by default, in the
directory asked for, reused by a second run of the same programs, off with --nojit_cache."""

from __future__ import annotations

import os
import subprocess
import sys

from attn_jax.train import jit_cache
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_py(workdir, data_dir, *flags, env=None):
    args = [sys.executable, os.path.join(ROOT, "train.py"),
            f"--config={os.path.join(ROOT, 'tests', 'tiny_configs.py')}:process",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *flags]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env={
        **os.environ, "XLA_FLAGS": xla_flags(2),
        "JAX_PLATFORMS": "cpu", **(env or {})})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def _entries(path) -> set[str]:
    return set(os.listdir(path)) if os.path.isdir(path) else set()


def test_the_cache_is_written_reused_and_can_be_turned_off(tmp_path):
    data_dir, cache = str(tmp_path / "tfds"), tmp_path / "jit"
    # Every program is written (threshold 0): with JAX's 1 s threshold, a program that compiled
    # in 0.9 s in one run and 1.1 s in the next (a loaded machine) would be written by the second.
    every = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    _train_py(tmp_path / "a", data_dir, f"--jit_cache_dir={cache}", env=every)
    first = _entries(cache)
    assert first, "the first run wrote no compiled program into --jit_cache_dir"
    # Same programs in a new workdir: every one is found, none is written again.
    _train_py(tmp_path / "b", data_dir, f"--jit_cache_dir={cache}", env=every)
    assert _entries(cache) == first
    # Off: neither the flag's directory nor the environment's is touched.
    off = tmp_path / "off"
    _train_py(tmp_path / "c", data_dir, "--nojit_cache", f"--jit_cache_dir={off}",
              env={"JAX_COMPILATION_CACHE_DIR": str(off)})
    assert not _entries(off)


def test_the_default_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jit_cache.default_dir() == os.path.join(str(tmp_path), "attn_jax", "jit")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere")
    assert jit_cache.default_dir() == "/somewhere"
