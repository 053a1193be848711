"""Optimizers and learning-rate schedules from the config (optax)."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

OPTIMIZERS = ("adamw", "adam", "sgd", "lamb")
SCHEDULES = ("cosine", "linear", "constant", "rsqrt")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to `cfg.learning_rate`, then `cfg.schedule` decay to `end_fraction` of it."""
    peak = float(cfg.learning_rate)
    warmup = int(cfg.get("warmup_steps", 0))
    end = peak * float(cfg.get("end_fraction", 0.0))
    kind = cfg.get("schedule", "cosine")
    if kind not in SCHEDULES:
        raise ValueError(f"optim.schedule={kind!r} is unknown; choose one of {SCHEDULES}")
    if warmup >= total_steps and kind != "constant":
        raise ValueError(f"optim.warmup_steps={warmup} must be smaller than total_steps={total_steps}")
    decay_steps = max(total_steps - warmup, 1)
    if kind == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    elif kind == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif kind == "rsqrt":
        decay = lambda step: peak * jax.lax.rsqrt(1.0 + step / max(warmup, 1))  # noqa: E731
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
    """Weight decay applies to matrices and kernels, not to biases, norm scales or embeddings of
    shape [d] (rank < 2)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of `config.optim`: clipping, then the update rule with its schedule."""
    name = cfg.get("name", "adamw")
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r} is unknown; choose one of {OPTIMIZERS}")
    schedule = learning_rate_schedule(cfg, total_steps)
    wd = float(cfg.get("weight_decay", 0.0))
    if name == "adamw":
        rule = optax.adamw(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                           eps=cfg.get("eps", 1e-8), weight_decay=wd, mask=decay_mask)
    elif name == "adam":
        rule = optax.adam(schedule, b1=cfg.get("b1", 0.9), b2=cfg.get("b2", 0.999),
                          eps=cfg.get("eps", 1e-8))
    elif name == "lamb":
        rule = optax.lamb(schedule, weight_decay=wd, mask=decay_mask)
    else:
        rule = optax.chain(
            optax.add_decayed_weights(wd, mask=decay_mask) if wd else optax.identity(),
            optax.sgd(schedule, momentum=cfg.get("momentum", 0.9),
                      nesterov=cfg.get("nesterov", False)))
    clip = cfg.get("grad_clip_norm", None)
    tx = optax.chain(optax.clip_by_global_norm(clip), rule) if clip else rule
    return tx, schedule
