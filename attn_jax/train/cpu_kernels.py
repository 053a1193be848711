"""Which kernels run the matrix multiplications of XLA's CPU backend: train.py's `--cpu_kernels`.

jax 0.10's XLA:CPU hands its dots (and some reductions) to YNNPACK by default. With YNNPACK off,
XLA runs them itself (its dot thunks, on Eigen's contraction kernels). On the 2-core AMD EPYC
this repo is measured on, that makes every train step measured faster (BENCHMARKS.md, "Where the
CPU step's time goes", 2026-12-07): the bench_peers ViT step by 8%, its LM step by 4%,
vit_fashion_mnist 9%, mixer_fashion_mnist 6%, cnn_fashion_mnist 31%, lm_stdlib 8%; KV-cached
decoding of lm_stdlib is 14% slower (0.41 against 0.36 ms a step). So `eigen` is train.py's
default; `ynnpack` keeps XLA's own choice.

    eigen    --xla_cpu_experimental_ynn_fusion_type=   (no YNNPACK fusions)
    ynnpack  XLA's defaults

(oneDNN, `--xla_cpu_use_onednn=true`, was slower on the same steps and failed to compile some
partitions; `--xla_cpu_experimental_onednn_fusion_type` alone changes nothing.)

The choice goes into `XLA_FLAGS`, which XLA reads once, when the first backend starts: call
`configure` before anything runs on a device. GPU and TPU runs are unaffected (only the CPU
backend reads the flag). A user's own `XLA_FLAGS` that already names the flag wins, and
`configure` leaves the environment as it is.
"""

from __future__ import annotations

import os

CHOICES: dict[str, str] = {
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynnpack": "",
}
DEFAULT = "eigen"
ENV = "ATTN_JAX_CPU_KERNELS"  # the default of train.py's --cpu_kernels and of benchmarks/
_OWN_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type",)


def default_choice() -> str:
    return os.environ.get(ENV) or DEFAULT


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # jax not importable: nothing can have started
        return False
    return bool(getattr(xla_bridge, "_backends", None))


def configure(choice: str | None = None, *, strict: bool = False) -> str:
    """Sets `XLA_FLAGS` for `choice` (default `default_choice()`) and returns what is in effect:
    the choice, 'XLA_FLAGS' when the user's environment already decides, or 'unchanged' when a
    backend has already started (too late to change; RuntimeError instead with `strict`).
    ValueError for an unknown choice."""
    choice = choice or default_choice()
    if choice not in CHOICES:
        raise ValueError(f"cpu_kernels={choice!r} is unknown; choose one of {sorted(CHOICES)} "
                         f"(attn_jax/train/cpu_kernels.py)")
    current = os.environ.get("XLA_FLAGS", "")
    if any(flag in current for flag in _OWN_FLAGS):
        return "XLA_FLAGS"
    if _backends_started():
        if not CHOICES[choice]:
            return choice
        if not strict:
            return "unchanged"
        raise RuntimeError(f"cpu_kernels={choice!r}: a JAX backend has already started, and XLA "
                           "reads XLA_FLAGS only once; configure before anything runs")
    if CHOICES[choice]:
        os.environ["XLA_FLAGS"] = f"{current} {CHOICES[choice]}".strip()
    return choice
