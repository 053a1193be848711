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
    config.init.dont_load = ("head/.*",)   # regexes: these parameters keep their fresh
                                           # initialisation (big_vision's `dont_load`)

Pretrained files are read by `attn_jax.pretrained` into this repo's parameter names first.
Every parameter of the new model whose path (after `rename`) exists in the checkpoint is copied
in, except those `dont_load` names (a fresh head for the same classes, as big_vision's transfer
recipe). A shape mismatch is adapted where a rule knows how; the rules are the model families'
own (`INIT_ADAPTERS` in each model module, collected by `attn_jax.models.init_adapters`): a
ViT's learned position embedding is resampled to the new patch grid
(`attn_jax.positional.resize_posemb`: linear interpolation, `scipy.ndimage.zoom` order 1 on the
grid with the class token kept aside, as vision_transformer does, or bicubic as timm and Hugging
Face do, by `posemb_resize`), while an MLP-Mixer's token-mixing MLP refuses with a ValueError (it
fixes the number of patches, so a Mixer cannot change resolution; vision_transformer#274).
Otherwise the parameter keeps its fresh initialisation (a head for a new number of classes) and
the report says so. The trainer prints the report once. Freezing and slower groups are the
optimizer's (`config.optim.lr_mults`, `attn_jax.train.optim`).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.positional import POSEMB_RESIZE, resize_posemb  # noqa: F401 (re-exported)


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
Adapter = Callable[[np.ndarray, tuple[int, ...], Any], np.ndarray] | str


def adapters() -> list[tuple[re.Pattern, Adapter]]:
    """(compiled regex over the parameter path, rule) for a parameter whose shape differs from
    the checkpoint's, from every model family's `INIT_ADAPTERS` table
    (`attn_jax.models.init_adapters`): a rule is fn(old array, new shape, initializer) -> the
    array at the new shape (the initializer carries the options, `posemb_resize`), or a str,
    the reason that parameter cannot change shape (a ValueError)."""
    from attn_jax.models import init_adapters

    return [(compile_regex(pattern, "INIT_ADAPTERS"), rule) for pattern, rule in init_adapters()]


# ------------------------------------------------------------------------------------ report
@dataclasses.dataclass
class InitReport:
    """What `Initializer.apply` did, by parameter path of the new model."""

    loaded: list[str]
    adapted: list[tuple[str, tuple, tuple]]     # (path, new shape, checkpoint shape)
    initialised: list[str]                      # no parameter of that path in the checkpoint
    mismatched: list[tuple[str, tuple, tuple]]  # shapes differ, no adapter: kept fresh
    unused: list[str]                           # checkpoint paths the new model lacks
    skipped: list[str] = dataclasses.field(default_factory=list)  # `dont_load`: kept fresh

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} parameters ({len(self.adapted)} adapted to a new "
                 f"shape), initialised {len(self.initialised)} new ones, {len(self.mismatched)} "
                 f"kept fresh for a shape mismatch, {len(self.skipped)} kept fresh by dont_load, "
                 f"{len(self.unused)} checkpoint parameters unused"]
        lines += [f"  adapted {old} -> {new}: {p}" for p, new, old in self.adapted]
        lines += [f"  new: {p}" for p in self.initialised]
        lines += [f"  shape {new} != checkpoint {old}: {p}" for p, new, old in self.mismatched]
        lines += [f"  dont_load: {p}" for p in self.skipped]
        lines += [f"  unused: {p}" for p in self.unused]
        return "\n".join(lines)


class Initializer:
    """The `config.init` section of one run (path, step, rename, ema, format, posemb_resize,
    strict, dont_load; see the module docstring)."""

    def __init__(self, path: str = "", step: int | None = None,
                 rename: Sequence[Sequence[str]] = (), ema: bool = False,
                 format: str = "auto", posemb_resize: str = "linear",  # noqa: A002
                 strict: bool = False, dont_load: Sequence[str] = ()):
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
        if isinstance(dont_load, str):
            raise ValueError(f"config.init.dont_load must be a tuple of regexes, got the string "
                             f"{dont_load!r} (write ({dont_load!r},))")
        self.dont_load = [compile_regex(p, "config.init.dont_load") for p in dont_load]
        if self.path is None and (self.dont_load or self.rename):
            key = "dont_load" if self.dont_load else "rename"
            raise ValueError(f"config.init.{key} is set but config.init.path is empty: pass the "
                             "run or checkpoint to start from as --config.init.path=PATH (a "
                             "workdir of this repo, an .npz or a Hugging Face checkpoint)")
        self.resolved_format: str | None = None  # 'workdir' | 'npz' | 'hf', once read
        self.report: InitReport | None = None
        self._checkpoint: tuple[Any, dict[str, np.ndarray]] | None = None

    @classmethod
    def from_config(cls, config: Any) -> Initializer:
        init = config.get("init") or {}
        return cls(init.get("path", ""), init.get("step", -1), init.get("rename", ()),
                   init.get("ema", False), init.get("format", "auto"),
                   init.get("posemb_resize", "linear"), init.get("strict", False),
                   tuple(init.get("dont_load", ())))

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
        where = f"config.init.path={self.path!r} (format {self.resolved_format!r})"
        loaded, adapted, initialised, mismatched, skipped = [], [], [], [], []
        rules = None

        def take(path, leaf):
            name = path_str(path)
            value = leaf.value if _is_box(leaf) else leaf
            nonlocal rules
            if any(p.fullmatch(name) for p in self.dont_load):
                skipped.append(name)
                return leaf
            if name not in pretrained:
                initialised.append(name)
                return leaf
            old = pretrained[name]
            if tuple(old.shape) != tuple(value.shape):
                rules = adapters() if rules is None else rules
                rule = next((fn for p, fn in rules if p.fullmatch(name)), None)
                if rule is None:
                    mismatched.append((name, tuple(value.shape), tuple(old.shape)))
                    return leaf
                if isinstance(rule, str):  # this parameter cannot change shape: refuse
                    raise ValueError(f"{where}: " + rule.format(
                        path=name, new=tuple(value.shape), old=tuple(old.shape)))
                old = rule(old, tuple(value.shape), self)
                adapted.append((name, tuple(value.shape), tuple(pretrained[name].shape)))
            loaded.append(name)
            new = jnp.asarray(old, dtype=value.dtype)
            return leaf.replace_boxed(new) if _is_box(leaf) else new

        merged = jax.tree_util.tree_map_with_path(take, fresh, is_leaf=_is_box)
        unused = sorted(set(pretrained) - set(loaded) - {m[0] for m in mismatched} - set(skipped))
        report = InitReport(loaded, adapted, initialised, mismatched, unused, skipped)
        if self.report is None and jax.process_index() == 0:  # init is traced more than once
            print(f"init from {self.path}: {report.summary()}", flush=True)
        self.report = report
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
