"""Time jitted forward + backward of each dot_product_attention implementation.

Measures `jax.grad` of sum(attention(q, k, v)) w.r.t. q, k and v for every implementation the
backend has ("reference", "xla", "cudnn", "pallas"; the others are listed as skipped with the
reason) and prints a markdown table. Times are medians over `--iters` runs after `--warmup`
runs, each ended by `block_until_ready`.

FLOPs counted: the forward's two matmuls (Q K^T and P V) are 4 * B * N * T * S * H; the backward
is 2.5x the forward (five matmuls, the FlashAttention-2 convention), so fwd + bwd is 3.5x; causal
attention counts half.

    pip install -e .   # or PYTHONPATH=.
    python benchmarks/bench_attention.py                       # per-backend defaults
    python benchmarks/bench_attention.py --lengths 512,2048 --dtype bfloat16 --causal

MFU is the achieved TFLOP/s over the device's peak (`_common.PEAKS`, or --peak-tflops); n/a where
neither knows it (a CPU).

Defaults: on an accelerator batch 8, heads 8, head_dim 64, lengths 128/512/1024, bfloat16;
on CPU batch 2, heads 4, head_dim 32, lengths 64/128/256, float32 (well under 2 minutes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.attention import IMPLEMENTATIONS, dot_product_attention
from _common import mfu


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    parser.add_argument("--head-dim", type=int, default=None)
    parser.add_argument("--lengths", type=str, default=None, help="comma list, q_len = kv_len")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--impls", type=str, default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for the MFU column (default: _common.PEAKS)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    on_cpu = jax.default_backend() == "cpu"
    defaults = dict(batch=2, heads=4, head_dim=32, lengths="64,128,256", dtype="float32", iters=10)
    if not on_cpu:
        defaults = dict(batch=8, heads=8, head_dim=64, lengths="128,512,1024", dtype="bfloat16",
                        iters=20)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.kv_heads = args.kv_heads or args.heads
    return args


def skip_reason(impl: str) -> str | None:
    """Why `impl` is not timed on this backend, or None."""
    backend = jax.default_backend()
    if impl == "cudnn" and backend != "gpu":
        return f"cudnn: needs an NVIDIA GPU (backend is {backend})"
    if impl == "pallas" and backend == "cpu":
        return "pallas: on CPU the kernel only runs in interpret mode (a correctness tool)"
    return None


def time_fwd_bwd(impl: str, q, k, v, causal: bool, warmup: int, iters: int) -> float:
    """Median milliseconds of one jitted forward + backward."""

    def loss(q, k, v):
        out = dot_product_attention(q, k, v, is_causal=causal, implementation=impl)
        return jnp.sum(out.astype(jnp.float32))

    step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    for _ in range(warmup):
        jax.block_until_ready(step(q, k, v))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(step(q, k, v))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    args = parse_args()
    dtype = jnp.dtype(args.dtype)
    device = jax.devices()[0].device_kind
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    notes = {r for r in map(skip_reason, impls) if r}
    rows = []
    rng = np.random.default_rng(0)
    for length in (int(s) for s in args.lengths.split(",")):
        q_shape = (args.batch, length, args.heads, args.head_dim)
        kv_shape = (args.batch, length, args.kv_heads, args.head_dim)
        q, k, v = (
            jnp.asarray(rng.standard_normal(s), dtype) for s in (q_shape, kv_shape, kv_shape)
        )
        flops = 3.5 * 4 * args.batch * args.heads * length * length * args.head_dim
        flops *= 0.5 if args.causal else 1.0
        for impl in impls:
            if skip_reason(impl):
                continue
            try:
                ms = time_fwd_bwd(impl, q, k, v, args.causal, args.warmup, args.iters)
            except Exception as e:  # an unsupported shape/dtype for this kernel: note it, go on
                notes.add(f"{impl} at length {length}: {type(e).__name__}: {str(e)[:160]}")
                continue
            shape = f"[{args.batch}, {length}, {args.heads}, {args.head_dim}]"
            if args.kv_heads != args.heads:
                shape += f" kv_heads={args.kv_heads}"
            tflops = flops / ms / 1e9
            rows.append((device, shape, args.dtype, impl, f"{ms:.3f}", f"{tflops:.3f}",
                         mfu(tflops, args.dtype, args.peak_tflops)))

    causal = ", causal" if args.causal else ""
    print(f"\njitted grad of sum(attention) w.r.t. q, k, v{causal}; median of {args.iters} runs "
          f"after {args.warmup} warmup; jax {jax.__version__}\n")
    print("| device | shape [B, T, N, H] | dtype | implementation | ms fwd+bwd | TFLOP/s | MFU |")
    print("|---|---|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for note in sorted(notes):
        print(f"\nskipped {note}")


if __name__ == "__main__":
    main()
