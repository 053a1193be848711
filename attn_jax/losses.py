"""Token-level losses: cross-entropy with label smoothing (Szegedy et al. 2016, sec. 7).

Label smoothing replaces the one-hot target by q' = (1 - eps) * one_hot + eps / vocab (the
uniform prior includes the true class, as in the paper and `optax.smooth_labels`); Vaswani et al.
(2017, sec. 5.4) train with eps = 0.1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def smoothed_cross_entropy(
    logits: Array,
    targets: Array,
    label_smoothing: float = 0.0,
    *,
    subtract_entropy: bool = False,
) -> Array:
    """Per-token H(q', softmax(logits)) = -sum_k q'_k log p_k.

    Args:
      logits: `[..., vocab]` (computed in float32).
      targets: `[...]` int class ids.
      label_smoothing: eps in [0, 1).
      subtract_entropy: subtract the entropy of q' (a constant), so that predicting q' exactly
        costs 0 and the loss reads as KL(q' || p), as in the Flax wmt example.
    Returns:
      `[...]` float32 losses.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {logits.shape} must be [..., vocab] over targets {targets.shape}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    vocab = logits.shape[-1]
    soft = optax.smooth_labels(jax.nn.one_hot(targets, vocab, dtype=jnp.float32), label_smoothing)
    loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), soft)
    if subtract_entropy and label_smoothing > 0.0:
        low = label_smoothing / vocab
        high = 1.0 - label_smoothing + low
        entropy = -(high * jnp.log(high) + (vocab - 1) * low * jnp.log(low))
        loss = loss - entropy
    return loss


def cross_entropy_with_label_smoothing(
    logits: Array,
    targets: Array,
    weights: Array | None = None,
    label_smoothing: float = 0.0,
    *,
    subtract_entropy: bool = False,
) -> tuple[Array, Array]:
    """Weighted mean of `smoothed_cross_entropy` over tokens.

    Args:
      logits: `[batch, length, vocab]` (any leading shape).
      targets: `[batch, length]` int.
      weights: `[batch, length]`, e.g. `targets != pad_id`; None = all ones.
      label_smoothing, subtract_entropy: as in `smoothed_cross_entropy`.
    Returns:
      (mean loss sum(w * loss) / sum(w) (0 when sum(w) == 0), sum(w)) as float32 scalars; the
      second is the token count for accumulating means across batches.
    """
    loss = smoothed_cross_entropy(
        logits, targets, label_smoothing, subtract_entropy=subtract_entropy
    )
    if weights is None:
        weights = jnp.ones_like(loss)
    elif weights.shape != targets.shape:
        raise ValueError(f"weights {weights.shape} must have the shape of targets {targets.shape}")
    weights = weights.astype(jnp.float32)
    total = jnp.sum(weights)
    return jnp.sum(loss * weights) / jnp.maximum(total, 1e-8), total
