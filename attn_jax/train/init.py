"""Initialise a run from another run's parameters (`config.init`), for every task.

    config.init.path = "runs/vit_fmnist_28px"    # a workdir of this repo
    config.init.step = -1                        # its latest checkpoint
    config.init.rename = (("^embedding", "shared_embedding"),)   # (regex, replacement) pairs
    config.init.ema = False                      # take its EMA parameters instead

Every parameter of the new model whose path (after `rename`) exists in the checkpoint is copied
in. A shape mismatch is adapted where a rule knows how (`ADAPTERS`: a ViT's learned position
embedding is resampled to the new patch grid with linear interpolation, `scipy.ndimage.zoom`
order 1 on the grid with the class token kept aside, as vision_transformer does); otherwise the
parameter keeps its fresh initialisation (a head for a new number of classes) and the report says
so. The trainer prints the report once. Freezing and slower groups are the optimizer's
(`config.optim.lr_mults`, `attn_jax.train.optim`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def path_str(path: Sequence[Any]) -> str:
    """'a/b/c' for a pytree key path of dict keys (or attribute / sequence keys)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def flatten(tree: Any) -> dict[str, Any]:
    """{'a/b/c': leaf} with `nn.LogicallyPartitioned` boxes kept as leaves."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)[0]
    return {path_str(p): v for p, v in leaves}


def compile_regex(pattern: str, key: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{key}: {pattern!r} is not a regex: {e}") from None


def regex_pairs(pairs: Sequence[Sequence[Any]], key: str) -> list[tuple[re.Pattern, Any]]:
    """[(compiled regex, value)] from (regex, value) pairs; errors name `key`."""
    pairs = [tuple(p) for p in pairs]
    bad = [p for p in pairs if len(p) != 2 or not isinstance(p[0], str)]
    if bad:
        raise ValueError(f"{key} must hold (regex, value) pairs, got {bad}")
    return [(compile_regex(p, key), v) for p, v in pairs]


# ------------------------------------------------------------------------------------ adapters
def _grid_and_token(n: int) -> tuple[int, int]:
    """(side of the square patch grid, class tokens) for n position rows."""
    for tokens in (0, 1):
        side = math.isqrt(n - tokens)
        if side * side == n - tokens:
            return side, tokens
    raise ValueError(f"{n} position rows are neither a square grid nor a square grid + 1 token")


def resize_posemb(old: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    """A learned position table `[1, tokens + g*g, d]` resampled to `new_shape`
    `[1, tokens + G*G, d]`: the class token's row kept, the grid zoomed linearly (order 1)."""
    if len(old.shape) != 3 or len(new_shape) != 3 or old.shape[2] != new_shape[2]:
        raise ValueError(f"cannot resize a position embedding {old.shape} to {new_shape}")
    g_old, t_old = _grid_and_token(old.shape[1])
    g_new, t_new = _grid_and_token(new_shape[1])
    if t_old != t_new:
        raise ValueError(f"position embedding {old.shape} -> {new_shape}: the class token "
                         "differs (pool_type changed)")
    token, grid = old[:, :t_old], old[0, t_old:].reshape(g_old, g_old, -1)
    zoomed = scipy.ndimage.zoom(grid, (g_new / g_old, g_new / g_old, 1), order=1)
    return np.concatenate([token, zoomed.reshape(1, g_new * g_new, -1)], axis=1)


# (regex over the parameter path, fn(old array, new shape) -> array of the new shape)
ADAPTERS: list[tuple[re.Pattern, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]]] = [
    (re.compile(r"(.*/)?posembed_input/pos_embedding"), resize_posemb),
]


# ------------------------------------------------------------------------------------ report
@dataclasses.dataclass
class InitReport:
    """What `Initializer.apply` did, by parameter path of the new model."""

    loaded: list[str]
    adapted: list[tuple[str, tuple, tuple]]     # (path, new shape, checkpoint shape)
    initialised: list[str]                      # no parameter of that path in the checkpoint
    mismatched: list[tuple[str, tuple, tuple]]  # shapes differ, no adapter: kept fresh
    unused: list[str]                           # checkpoint paths the new model lacks

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} parameters ({len(self.adapted)} adapted to a new "
                 f"shape), initialised {len(self.initialised)} new ones, {len(self.mismatched)} "
                 f"kept fresh for a shape mismatch, {len(self.unused)} checkpoint parameters "
                 "unused"]
        lines += [f"  adapted {old} -> {new}: {p}" for p, new, old in self.adapted]
        lines += [f"  new: {p}" for p in self.initialised]
        lines += [f"  shape {new} != checkpoint {old}: {p}" for p, new, old in self.mismatched]
        lines += [f"  unused: {p}" for p in self.unused]
        return "\n".join(lines)


class Initializer:
    """The `config.init` section of one run (path, step, rename, ema)."""

    def __init__(self, path: str = "", step: int | None = None,
                 rename: Sequence[Sequence[str]] = (), ema: bool = False):
        self.path = path or None
        self.step = None if step in (None, -1) else int(step)
        self.rename = regex_pairs(rename, "config.init.rename")
        self.ema = bool(ema)
        self.report: InitReport | None = None
        self._checkpoint: tuple[Any, dict[str, np.ndarray]] | None = None

    @classmethod
    def from_config(cls, config: Any) -> Initializer:
        init = config.get("init") or {}
        return cls(init.get("path", ""), init.get("step", -1), init.get("rename", ()),
                   init.get("ema", False))

    def checkpoint(self) -> tuple[Any, dict[str, np.ndarray]]:
        """(config, {renamed path: array}) of `path`, read once."""
        if self._checkpoint is None:
            from attn_jax.train.restore import load_params

            with jax.ensure_compile_time_eval():  # read eagerly even when init is being traced
                config, params = load_params(self.path, self.step, ema=self.ema)
            flat = {}
            for path, value in flatten(params).items():
                for pattern, replacement in self.rename:
                    path = pattern.sub(replacement, path)
                flat[path] = np.asarray(value)
            self._checkpoint = config, flat
        return self._checkpoint

    def apply(self, fresh: Any) -> Any:
        """`fresh` (boxed or raw params) with the checkpoint's parameters copied in. Traceable:
        the copied values enter as constants (the arrays are read from disk once)."""
        if self.path is None:
            return fresh
        _, pretrained = self.checkpoint()
        loaded, adapted, initialised, mismatched = [], [], [], []

        def take(path, leaf):
            name = path_str(path)
            value = leaf.value if _is_box(leaf) else leaf
            if name not in pretrained:
                initialised.append(name)
                return leaf
            old = pretrained[name]
            if tuple(old.shape) != tuple(value.shape):
                rule = next((fn for p, fn in ADAPTERS if p.fullmatch(name)), None)
                if rule is None:
                    mismatched.append((name, tuple(value.shape), tuple(old.shape)))
                    return leaf
                old = rule(old, tuple(value.shape))
                adapted.append((name, tuple(value.shape), tuple(pretrained[name].shape)))
            loaded.append(name)
            new = jnp.asarray(old, dtype=value.dtype)
            return leaf.replace_boxed(new) if _is_box(leaf) else new

        merged = jax.tree_util.tree_map_with_path(take, fresh, is_leaf=_is_box)
        unused = sorted(set(pretrained) - set(loaded) - {m[0] for m in mismatched})
        report = InitReport(loaded, adapted, initialised, mismatched, unused)
        if self.report is None and jax.process_index() == 0:  # init is traced more than once
            print(f"init from {self.path}: {report.summary()}", flush=True)
        self.report = report
        if not loaded:
            raise ValueError(f"config.init.path={self.path!r}: no parameter of the checkpoint "
                             f"matches the model in path\n{report.summary()}")
        return merged
