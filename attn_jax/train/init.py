"""Initialise a run from another run's parameters (`config.init`), for every task.

    config.init.path = "runs/vit_fmnist_28px"    # a workdir of this repo
    config.init.step = -1                        # its latest checkpoint
    config.init.rename = (("^embedding", "shared_embedding"),)   # (regex, replacement) pairs
    config.init.ema = False                      # take its EMA parameters instead
    config.init.format = "auto"      # 'workdir', or a pretrained file: 'npz' (vision_transformer /
                                     # big_vision) or 'hf' (a Hugging Face ViT / GPT-2 directory
                                     # or model.safetensors); 'auto' tells them apart by the path
    config.init.posemb_resize = "linear"         # or 'bicubic' (timm / HF), see `resize_posemb`
    config.init.strict = False       # True: every model parameter must load (or adapt), else a
                                     # ValueError names the first that does not and both shapes

Pretrained files are read by `attn_jax.pretrained` into this repo's parameter names first.
Every parameter of the new model whose path (after `rename`) exists in the checkpoint is copied
in. A shape mismatch is adapted where a rule knows how (`ADAPTERS`: a ViT's learned position
embedding is resampled to the new patch grid with linear interpolation, `scipy.ndimage.zoom`
order 1 on the grid with the class token kept aside, as vision_transformer does, or bicubic as
timm and Hugging Face do, by `posemb_resize`); otherwise the
parameter keeps its fresh initialisation (a head for a new number of classes) and the report says
so. The trainer prints the report once. Freezing and slower groups are the optimizer's
(`config.optim.lr_mults`, `attn_jax.train.optim`).
"""

from __future__ import annotations

import dataclasses
import difflib
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


POSEMB_RESIZE = ("linear", "bicubic")


def _cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """`[n_out, n_in]` weights of 1-D cubic convolution (Keys 1981, a = -0.75) with half-pixel
    centres and edge clamping: `torch.nn.functional.interpolate(mode='bicubic',
    align_corners=False)` along one axis, in float64."""

    def kernel(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return np.where(x <= 1, near, np.where(x < 2, far, 0.0))

    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src).astype(int)
    weights = np.zeros((n_out, n_in))
    for tap in range(-1, 3):
        np.add.at(weights, (np.arange(n_out), np.clip(base + tap, 0, n_in - 1)),
                  kernel(src - (base + tap)))
    return weights


def resize_posemb(old: np.ndarray, new_shape: tuple[int, ...], method: str = "linear"
                  ) -> np.ndarray:
    """A learned position table `[1, tokens + g*g, d]` resampled to `new_shape`
    `[1, tokens + G*G, d]`, the class token's row kept as it is.

    method: 'linear' (the default; `scipy.ndimage.zoom` order 1 on the grid, as
    vision_transformer and big_vision do) or 'bicubic' (as timm and Hugging Face's
    `interpolate_pos_encoding`: torch's bicubic, a = -0.75, half-pixel centres, no antialiasing).
    """
    if method not in POSEMB_RESIZE:
        raise ValueError(f"posemb_resize must be one of {POSEMB_RESIZE}, got {method!r}")
    if len(old.shape) != 3 or len(new_shape) != 3 or old.shape[2] != new_shape[2]:
        raise ValueError(f"cannot resize a position embedding {old.shape} to {new_shape}")
    g_old, t_old = _grid_and_token(old.shape[1])
    g_new, t_new = _grid_and_token(new_shape[1])
    if t_old != t_new:
        raise ValueError(f"position embedding {old.shape} -> {new_shape}: the class token "
                         "differs (pool_type changed)")
    token, grid = old[:, :t_old], old[0, t_old:].reshape(g_old, g_old, -1)
    if method == "linear":
        zoomed = scipy.ndimage.zoom(grid, (g_new / g_old, g_new / g_old, 1), order=1)
    else:
        m = _cubic_matrix(g_old, g_new)
        zoomed = np.einsum("Hh,Ww,hwd->HWd", m, m, grid.astype(np.float64)).astype(grid.dtype)
    return np.concatenate([token, zoomed.reshape(1, g_new * g_new, -1)], axis=1)


# (regex over the parameter path, fn(old array, new shape, initializer) -> array of the new
# shape); the initializer carries the options (`posemb_resize`).
ADAPTERS: list[tuple[re.Pattern, Callable[[np.ndarray, tuple[int, ...], Any], np.ndarray]]] = [
    (re.compile(r"(.*/)?posembed_input/pos_embedding"),
     lambda old, shape, init: resize_posemb(old, shape, init.posemb_resize)),
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
    """The `config.init` section of one run (path, step, rename, ema, format, posemb_resize,
    strict; see the module docstring)."""

    def __init__(self, path: str = "", step: int | None = None,
                 rename: Sequence[Sequence[str]] = (), ema: bool = False,
                 format: str = "auto", posemb_resize: str = "linear",  # noqa: A002
                 strict: bool = False):
        from attn_jax.pretrained import FORMATS

        self.path = path or None
        self.step = None if step in (None, -1) else int(step)
        self.rename = regex_pairs(rename, "config.init.rename")
        self.ema = bool(ema)
        if format not in FORMATS:
            raise ValueError(f"config.init.format must be one of {FORMATS}, got {format!r}")
        if posemb_resize not in POSEMB_RESIZE:
            raise ValueError(f"config.init.posemb_resize must be one of {POSEMB_RESIZE}, got "
                             f"{posemb_resize!r}")
        self.format = format
        self.posemb_resize = posemb_resize
        self.strict = bool(strict)
        self.resolved_format: str | None = None  # 'workdir' | 'npz' | 'hf', once read
        self.report: InitReport | None = None
        self._checkpoint: tuple[Any, dict[str, np.ndarray]] | None = None

    @classmethod
    def from_config(cls, config: Any) -> Initializer:
        init = config.get("init") or {}
        return cls(init.get("path", ""), init.get("step", -1), init.get("rename", ()),
                   init.get("ema", False), init.get("format", "auto"),
                   init.get("posemb_resize", "linear"), init.get("strict", False))

    def checkpoint(self) -> tuple[Any, dict[str, np.ndarray]]:
        """(config, {renamed path: array}) of `path`, read once. The config is the run's for a
        workdir, a Hugging Face config.json as a dict, or None for an .npz."""
        if self._checkpoint is None:
            from attn_jax.pretrained import detect_format, load_pretrained
            from attn_jax.train.restore import load_params

            fmt = detect_format(self.path) if self.format == "auto" else self.format
            if fmt != "workdir" and (self.ema or self.step is not None):
                raise ValueError(f"config.init.path={self.path!r} is a pretrained {fmt!r} file: "
                                 "it has no steps or EMA parameters (config.init.step / ema)")
            with jax.ensure_compile_time_eval():  # read eagerly even when init is being traced
                if fmt == "workdir":
                    config, params = load_params(self.path, self.step, ema=self.ema)
                    params = flatten(params)
                else:
                    _, config, params = load_pretrained(self.path, fmt)
            flat = {}
            for path, value in params.items():
                for pattern, replacement in self.rename:
                    path = pattern.sub(replacement, path)
                flat[path] = np.asarray(value)
            self.resolved_format = fmt
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
                old = rule(old, tuple(value.shape), self)
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
        where = f"config.init.path={self.path!r} (format {self.resolved_format!r})"
        if not loaded:
            raise ValueError(f"{where}: no parameter of the checkpoint matches the model in "
                             f"path\n{report.summary()}")
        if self.strict and mismatched:
            name, new, old = mismatched[0]
            raise ValueError(f"{where}: parameter {name} has shape {new} in the model but {old} "
                             f"in the checkpoint (config.init.strict; {len(mismatched)} "
                             f"mismatched)\n{report.summary()}")
        if self.strict and initialised:
            near = difflib.get_close_matches(initialised[0], list(pretrained), n=1)
            raise ValueError(f"{where}: parameter {initialised[0]} of the model is not in the "
                             f"checkpoint{f' (nearest: {near[0]})' if near else ''} "
                             f"(config.init.strict; {len(initialised)} missing)\n"
                             f"{report.summary()}")
        return merged
