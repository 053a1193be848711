"""Shared pieces of the benchmark scripts: config loading, device peaks, timing, table rows."""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from attn_jax.train import cpu_kernels
from attn_jax.train.loop import TrainState, make_train_step
from attn_jax.train.optim import make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The benchmarks time what train.py runs: its CPU kernel library ($ATTN_JAX_CPU_KERNELS to change).
CPU_KERNELS = cpu_kernels.configure()

# Dense peak TFLOP/s by device kind and compute dtype (vendor figures, no sparsity).
PEAKS = {("NVIDIA H100 80GB HBM3", "bfloat16"): 989.0, ("NVIDIA H100 80GB HBM3", "float32"): 67.0,
         ("NVIDIA H200", "bfloat16"): 989.0, ("NVIDIA H200", "float32"): 67.0,
         ("TPU v4", "bfloat16"): 275.0, ("TPU v5 lite", "bfloat16"): 197.0}


def load_config(name: str):
    """`configs/<name>.py`'s get_config()."""
    path = os.path.join(ROOT, "configs", f"{name}.py")
    if not os.path.exists(path):
        raise SystemExit(f"no config file {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def compiled_flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled jitted function, from XLA's cost analysis (nan if absent)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", math.nan))


def timed_call(fn, *args, repeats: int) -> tuple[float, float]:
    """(compile seconds, best-of-`repeats` seconds per call) of a jitted fn, after a warm-up."""
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return compile_s, best


def trainer_step(task: Any, params: Any, optim: Any, data: Any) -> tuple[Any, TrainState, float]:
    """(compiled step, initial state, XLA FLOPs of one step) of the trainer's own train step
    (`make_train_step`: forward, backward, the config's optax update; the state donated) with
    `task.loss` on batches shaped like `data`, starting from `params`."""
    tx, schedule = make_optimizer(optim, 10_000_000)  # any horizon past warmup
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       ema_params=None, rng=jax.random.PRNGKey(3))
    step = jax.jit(make_train_step(task, tx, schedule, 1, 0.0), donate_argnums=0)
    compiled = step.lower(state, data).compile()
    return compiled, state, compiled_flops(compiled)


def time_train_step(task: Any, params: Any, optim: Any, data: Any, iters: int,
                    warmup: int = 2) -> tuple[float, float, Any]:
    """(median seconds, XLA FLOPs, final params) of one step of the trainer's own jitted train
    step (`make_train_step`: forward, backward, the config's optax update; state donated) with
    `task.loss` on the fixed batch `data`, starting from `params` (consumed by the donation)."""
    step, state, flops = trainer_step(task, params, optim, data)
    for _ in range(warmup):
        state, _ = step(state, data)
    jax.block_until_ready(state)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        state, metrics = step(state, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times), flops, state.params


def mfu(achieved_tflops: float, dtype: str, peak: float | None) -> str:
    """Achieved over the device's peak as a percentage; 'n/a' where the peak is unknown."""
    peak = peak or PEAKS.get((jax.devices()[0].device_kind, dtype))
    return f"{100 * achieved_tflops / peak:.1f}%" if peak else "n/a"


def header(columns: list[str]) -> str:
    return "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)


def param_count(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))
