"""Optimizers and learning-rate schedules from the config (optax)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from attn_jax.train.init import path_str, regex_pairs

OPTIMIZERS = ("adamw", "adam", "sgd", "lamb")
SCHEDULES = ("cosine", "linear", "constant", "rsqrt", "step")


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to `cfg.learning_rate`, then `cfg.schedule` decay to `end_fraction` of it;
    'step' instead multiplies the rate by `decay_factor` at each fraction of `total_steps` in
    `decay_at` (DETR's recipe: 0.1 after 200 of 300 epochs, decay_at=(2/3,))."""
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
    elif kind == "step":
        decay = optax.piecewise_constant_schedule(peak, _drops(cfg, total_steps, warmup))
    elif kind == "rsqrt":
        decay = lambda step: peak * jax.lax.rsqrt(1.0 + step / max(warmup, 1))  # noqa: E731
    else:
        decay = optax.constant_schedule(peak)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _drops(cfg: ml_collections.ConfigDict, total_steps: int, warmup: int) -> dict[int, float]:
    """{steps after the warmup: decay_factor} of the 'step' schedule's drops."""
    at = tuple(float(f) for f in cfg.get("decay_at", ()))
    factor = float(cfg.get("decay_factor", 0.1))
    if not at:
        raise ValueError("optim.schedule='step' needs optim.decay_at: the fractions of total_steps "
                         "where the rate drops, e.g. (0.667,)")
    if not all(0 < f < 1 for f in at) or list(at) != sorted(set(at)):
        raise ValueError(f"optim.decay_at={at} must be increasing fractions of total_steps "
                         "in (0, 1)")
    if not factor > 0:
        raise ValueError(f"optim.decay_factor={factor} must be > 0")
    steps = [round(f * total_steps) for f in at]
    if steps[0] <= warmup or len(set(steps)) < len(steps):
        raise ValueError(f"optim.decay_at={at} puts the drops at steps {steps} of {total_steps}: "
                         f"each must be a different step after warmup_steps={warmup}")
    return {s - warmup: factor for s in steps}


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
    return with_lr_mults(tx, cfg.get("lr_mults", ())), schedule


class ParamGroups:
    """`config.optim.lr_mults`: (regex, multiplier) pairs; a parameter whose path
    ('decoder/layer_0/mlp/Dense_0/kernel') fully matches a regex takes the first match's
    multiplier, the others 1. 0 freezes."""

    def __init__(self, lr_mults: Sequence[Sequence[Any]] = ()):
        self.rules = [(p, float(m)) for p, m in regex_pairs(lr_mults, "config.optim.lr_mults")]
        bad = [(p.pattern, m) for p, m in self.rules if m < 0]
        if bad:
            raise ValueError(f"config.optim.lr_mults multipliers must be >= 0, got {bad}")

    def __bool__(self) -> bool:
        return bool(self.rules)

    def mult(self, path: str) -> float:
        return next((m for p, m in self.rules if p.fullmatch(path)), 1.0)

    def mults(self, params: Any) -> Any:
        """A tree like `params` of Python float multipliers (static under jit)."""
        return jax.tree_util.tree_map_with_path(lambda p, _: self.mult(path_str(p)), params)

    def check(self, params: Any) -> None:
        """ValueError if a regex matches no parameter (a typo would silently change nothing)."""
        paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        idle = [p.pattern for p, _ in self.rules if not any(p.fullmatch(q) for q in paths)]
        if idle:
            raise ValueError(f"config.optim.lr_mults patterns {idle} match no parameter; the "
                             f"parameters are {paths}")

    def stop_frozen(self, params: Any) -> Any:
        """`params` with `stop_gradient` on the multiplier-0 leaves (inside the loss), so the
        backward pass skips them and grad_norm / clipping see only trained parameters."""
        if not any(m == 0 for _, m in self.rules):
            return params
        return jax.tree_util.tree_map_with_path(
            lambda p, x: jax.lax.stop_gradient(x) if self.mult(path_str(p)) == 0 else x, params)


def with_lr_mults(tx: optax.GradientTransformation, lr_mults: Sequence[Sequence[Any]]
                  ) -> optax.GradientTransformation:
    """`tx` whose final updates are scaled per parameter group (big_vision's `lr_mults`):
    multiplier m scales the update by m, weight decay included, so under SGD a group moves by
    exactly m times what it would; m = 0 also zeroes the group's gradients before `tx`, so
    clipping and the moments never see them, and the parameters stay bit-identical. The state
    keeps the parameters' tree structure (unlike `optax.multi_transform`), so the sharding rules
    place it like the parameters."""
    groups = ParamGroups(lr_mults)
    if not groups:
        return tx

    def scale(zero_only: bool):
        def update(updates, state, params=None):
            del params

            def one(path, u):
                m = groups.mult(path_str(path))
                if m == 0:
                    return jnp.zeros_like(u)
                return u if zero_only or m == 1 else u * jnp.asarray(m, u.dtype)

            return jax.tree_util.tree_map_with_path(one, updates), state
        return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

    return optax.chain(scale(zero_only=True), tx, scale(zero_only=False))
