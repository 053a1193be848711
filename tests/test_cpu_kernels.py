"""attn_jax/train/cpu_kernels.py: train.py's --cpu_kernels puts the choice into XLA_FLAGS before
the CPU backend starts, and the compiled program shows it (YNNPACK fusions or none)."""

import os
import subprocess
import sys

import jax
import pytest

from attn_jax.train import cpu_kernels

# A fresh interpreter: configure, then compile a matmul and report whether XLA gave it to YNNPACK.
_PROBE = """
import sys
from attn_jax.train import cpu_kernels
used = cpu_kernels.configure(sys.argv[1] if len(sys.argv) > 1 else None)
import jax, jax.numpy as jnp
x = jnp.ones((64, 64), jnp.float32)
text = jax.jit(lambda a, b: a @ b).lower(x, x).compile().as_text()
print(used, "ynn" if "__ynn_fusion" in text else "no-ynn")
"""


def _probe(*args: str, xla_flags: str = "", env_choice: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu_kernels.ENV)}
    env["XLA_FLAGS"] = xla_flags
    if env_choice:
        env[cpu_kernels.ENV] = env_choice
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_choices_reach_the_compiled_program():
    """The default (eigen) compiles the dot without YNNPACK; ynnpack (XLA's default) with it; the
    environment variable picks the default; a user's XLA_FLAGS naming the flag wins."""
    assert _probe() == "eigen no-ynn"
    assert _probe("ynnpack") == "ynnpack ynn"
    assert _probe(env_choice="ynnpack") == "ynnpack ynn"
    assert _probe("eigen", xla_flags="--xla_cpu_experimental_ynn_fusion_type=dot") == \
        "XLA_FLAGS ynn"


def test_the_test_processes_run_train_pys_default():
    """tests/xla_env.py gives every test process train.py's default kernels, so in-process runs
    and train.py subprocesses agree bit for bit."""
    from xla_env import CPU_KERNELS

    assert CPU_KERNELS == cpu_kernels.CHOICES[cpu_kernels.DEFAULT]
    assert CPU_KERNELS in os.environ["XLA_FLAGS"]


def test_bad_choice_and_late_call(monkeypatch):
    with pytest.raises(ValueError, match="cpu_kernels='onednn' is unknown"):
        cpu_kernels.configure("onednn")
    jax.devices()  # this process's backend has started: too late to change XLA_FLAGS
    before = "--xla_force_host_platform_device_count=8"  # as if the user had chosen nothing
    monkeypatch.setenv("XLA_FLAGS", before)
    assert cpu_kernels.configure("eigen") == "unchanged"
    assert os.environ.get("XLA_FLAGS") == before
    with pytest.raises(RuntimeError, match="already started"):
        cpu_kernels.configure("eigen", strict=True)
    assert cpu_kernels.configure("ynnpack") == "ynnpack"  # nothing to change
