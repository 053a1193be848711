"""Transfer learning: start from a trained run's parameters, freeze some of them.

`config.data.init_from` names the workdir of an earlier run of this repo; its latest checkpoint
(`attn_jax.train.restore.load_params`) is copied into the new model wherever a parameter's path
(after the optional `init_rename` rules) and shape match; everything else keeps its fresh
initialisation (a new head, a longer position table, an added layer). `config.data.freeze` lists
regexes; a parameter whose path ('decoder/layer_0/mlp/Dense_0/kernel') fully matches one is frozen.

Freezing needs the optimizer, not only the loss: `jax.lax.stop_gradient` makes a frozen
parameter's gradient zero, but decoupled weight decay (AdamW) would still shrink it. So the
optimizer zeroes the frozen leaves' updates (`freeze_optimizer`), and the tasks also stop their
gradients, so that the backward pass skips them and the logged grad_norm and gradient clipping
see only the trainable parameters.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

log = logging.getLogger(__name__)

TRAINABLE, FROZEN = "trainable", "frozen"


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def path_str(path: Sequence[Any]) -> str:
    """'a/b/c' for a pytree key path of dict keys (or attribute / sequence keys)."""
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def flatten(tree: Any) -> dict[str, Any]:
    """{'a/b/c': leaf} with `nn.LogicallyPartitioned` boxes kept as leaves."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_box)[0]
    return {path_str(p): v for p, v in leaves}


@dataclasses.dataclass
class TransferReport:
    """What `Transfer.apply` did, by parameter path of the new model."""

    loaded: list[str]                                  # copied from the checkpoint
    initialised: list[str]                             # no parameter of that path in the checkpoint
    mismatched: list[tuple[str, tuple, tuple]]         # (path, new shape, checkpoint shape): fresh
    unused: list[str]                                  # checkpoint paths the new model lacks

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} parameters, initialised {len(self.initialised)} "
                 f"new ones, {len(self.mismatched)} kept fresh for a shape mismatch, "
                 f"{len(self.unused)} checkpoint parameters unused"]
        lines += [f"  new: {p}" for p in self.initialised]
        lines += [f"  shape {new} != checkpoint {old}: {p}" for p, new, old in self.mismatched]
        lines += [f"  unused: {p}" for p in self.unused]
        return "\n".join(lines)


class Transfer:
    """The `init_from` / `init_step` / `init_rename` / `freeze` settings of one run.

    Args:
      init_from: workdir of a trained run (None: no initialisation from a checkpoint).
      init_step: its checkpoint step (None: the latest).
      rename: (regex, replacement) pairs applied in order (`re.sub`) to the checkpoint's paths,
        e.g. [('^embedding', 'shared_embedding')] to start an encoder-decoder from an LM.
      freeze: regexes; a parameter whose path fully matches one is frozen.
    """

    def __init__(self, init_from: str | None = None, init_step: int | None = None,
                 rename: Sequence[Sequence[str]] = (), freeze: Sequence[str] = ()):
        self.init_from = init_from or None
        self.init_step = init_step
        self.rename = [(self._compile(p, "init_rename"), r) for p, r in self._pairs(rename)]
        self.freeze = [self._compile(p, "freeze") for p in freeze]
        self.report: TransferReport | None = None
        self.uses_optimizer = False  # set by freeze_optimizer: the optimizer skips frozen leaves
        self._checkpoint: tuple[Any, dict[str, np.ndarray]] | None = None

    @staticmethod
    def _compile(pattern: str, key: str) -> re.Pattern:
        try:
            return re.compile(pattern)
        except re.error as e:
            raise ValueError(f"config.data.{key}: {pattern!r} is not a regex: {e}") from None

    @staticmethod
    def _pairs(rename: Sequence[Sequence[str]]) -> list[tuple[str, str]]:
        pairs = [tuple(r) for r in rename]
        bad = [r for r in pairs if len(r) != 2]
        if bad:
            raise ValueError(f"config.data.init_rename must hold (regex, replacement) pairs, "
                             f"got {bad}")
        return pairs  # type: ignore[return-value]

    # -- the checkpoint -----------------------------------------------------------------------
    def checkpoint(self) -> tuple[Any, dict[str, np.ndarray]]:
        """(config, {renamed path: array}) of `init_from`, read once."""
        if self._checkpoint is None:
            from attn_jax.train.restore import load_params

            with jax.ensure_compile_time_eval():  # read eagerly even when init is being traced
                config, params = load_params(self.init_from, self.init_step)
            flat = {}
            for path, value in flatten(params).items():
                for pattern, replacement in self.rename:
                    path = pattern.sub(replacement, path)
                flat[path] = np.asarray(value)
            self._checkpoint = config, flat
        return self._checkpoint

    # -- initialisation -----------------------------------------------------------------------
    def apply(self, fresh: Any) -> Any:
        """`fresh` (boxed or raw params) with every checkpoint parameter of the same path and
        shape copied in. Traceable: the copied values enter as constants (fine for models that
        fit in host memory; the arrays are read from disk once)."""
        if self.init_from is None:
            return fresh
        _, pretrained = self.checkpoint()
        loaded, initialised, mismatched = [], [], []

        def take(path, leaf):
            name = path_str(path)
            value = leaf.value if _is_box(leaf) else leaf
            if name not in pretrained:
                initialised.append(name)
                return leaf
            old = pretrained[name]
            if tuple(old.shape) != tuple(value.shape):
                mismatched.append((name, tuple(value.shape), tuple(old.shape)))
                return leaf
            loaded.append(name)
            new = jnp.asarray(old, dtype=value.dtype)
            return leaf.replace_boxed(new) if _is_box(leaf) else new

        merged = jax.tree_util.tree_map_with_path(take, fresh, is_leaf=_is_box)
        unused = sorted(set(pretrained) - set(loaded) - {m[0] for m in mismatched})
        report = TransferReport(loaded, initialised, mismatched, unused)
        if self.report is None and jax.process_index() == 0:  # init is traced several times
            print(f"init_from {self.init_from}: {report.summary()}", flush=True)
        self.report = report
        if not loaded:
            raise ValueError(f"init_from={self.init_from!r}: no parameter of the checkpoint "
                             f"matches the model in path and shape\n{report.summary()}")
        return merged

    # -- freezing -----------------------------------------------------------------------------
    def is_frozen(self, path: str) -> bool:
        return any(p.fullmatch(path) for p in self.freeze)

    def labels(self, params: Any) -> Any:
        """A tree like `params` of 'frozen' / 'trainable' (what `freeze_optimizer` reads)."""
        return jax.tree_util.tree_map_with_path(
            lambda p, _: FROZEN if self.is_frozen(path_str(p)) else TRAINABLE, params,
            is_leaf=_is_box)

    def check_freeze(self, params: Any) -> None:
        """ValueError if a freeze regex matches no parameter (a typo would freeze nothing)."""
        paths = list(flatten(params))
        idle = [p.pattern for p in self.freeze if not any(p.fullmatch(q) for q in paths)]
        if idle:
            raise ValueError(f"config.data.freeze patterns {idle} match no parameter; "
                             f"the parameters are {paths}")

    def stop_gradients(self, params: Any) -> Any:
        """`params` with `stop_gradient` on the frozen leaves (inside the loss)."""
        if not self.freeze:
            return params
        return jax.tree_util.tree_map_with_path(
            lambda p, x: jax.lax.stop_gradient(x) if self.is_frozen(path_str(p)) else x, params)


def freeze_optimizer(tx: optax.GradientTransformation,
                     labels: Callable[[Any], Any]) -> optax.GradientTransformation:
    """`tx` with the 'frozen' leaves' gradients and final updates set to zero.

    Zeroing the gradients first keeps them out of clipping and the moments; zeroing the updates
    last removes what `tx` adds on its own (decoupled weight decay). Unlike
    `optax.multi_transform`, the state keeps the parameters' tree structure, so the trainer's
    sharding rules place it like the parameters (frozen leaves' moments stay zero).
    """
    def zero_frozen(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, label: jnp.zeros_like(u) if label == FROZEN else u,
                            updates, labels(updates)), state

    mask = optax.GradientTransformation(lambda params: optax.EmptyState(), zero_frozen)
    return optax.chain(mask, tx, mask)


def transfer_from_config(data: Mapping[str, Any]) -> Transfer:
    """The Transfer of `config.data` (keys init_from, init_step, init_rename, freeze)."""
    freeze = data.get("freeze") or ()
    if isinstance(freeze, str):
        freeze = (freeze,)
    step = data.get("init_step")
    return Transfer(data.get("init_from") or None, None if step in (None, -1) else int(step),
                    data.get("init_rename") or (), tuple(freeze))
