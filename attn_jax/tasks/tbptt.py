"""Truncated backpropagation through time (Williams & Peng 1990; Sutskever 2013, sec. 2.5).

A sequence of `t` steps is cut into `t / chunk` consecutive chunks; the recurrent state flows
through all of them in the forward pass, but its gradient is stopped where each chunk begins
(`jax.lax.stop_gradient`), so the loss of chunk k reaches back at most to the start of chunk k.
The values are exactly those of one untruncated pass; only the gradients are cut. With
`chunk == t` the cut falls only where the sequence begins: a stateful LM then truncates at step
boundaries (the carry of the previous step enters as a constant).

    carry, outs = truncated_bptt(step, carry, {"ids": ids, "reset": reset}, chunk=32)
    # step(carry, xs_k, k) -> (carry, out_k); xs_k = every leaf of xs sliced [:, k*chunk:(k+1)*chunk]
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def check_chunk(chunk: int, length: int, where: str = "tbptt_chunk") -> int:
    """`chunk` (0 = `length`) if it is >= 1 and divides `length`; ValueError otherwise."""
    chunk = int(chunk) or int(length)
    if chunk < 1 or length % chunk:
        raise ValueError(f"{where}={chunk} must be >= 1 and divide the sequence length "
                         f"{length} (0 = the whole sequence)")
    return chunk


def truncated_bptt(step: Callable[[Any, Any, jax.Array], tuple[Any, Any]], carry: Any, xs: Any,
                   chunk: int) -> tuple[Any, Any]:
    """Runs `step(carry, xs_k, k) -> (carry, out_k)` over the chunks of `xs` in order.

    Args:
      step: one chunk; `xs_k` has the structure of `xs`, every leaf `[b, chunk, ...]`; `k` is
        the chunk's index (int32 scalar: fold it into a dropout key).
      carry: the state entering chunk 0 (its gradient is stopped too).
      xs: a pytree whose leaves are `[b, t, ...]`, t a multiple of `chunk`.
    Returns:
      (the carry after the last chunk, the outputs stacked `[t / chunk, ...]`), under one
      `lax.scan`, so the chunk is compiled once.
    """
    leaves = jax.tree.leaves(xs)
    length = leaves[0].shape[1]
    check_chunk(chunk, length)
    n = length // chunk

    def split(x):  # [b, n * chunk, ...] -> [n, b, chunk, ...]
        return x.reshape(x.shape[0], n, chunk, *x.shape[2:]).swapaxes(0, 1)

    def body(carry, inputs):
        k, xs_k = inputs
        return step(jax.lax.stop_gradient(carry), xs_k, k)

    return jax.lax.scan(body, carry, (jnp.arange(n, dtype=jnp.int32), jax.tree.map(split, xs)))
