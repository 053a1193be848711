"""The trainer's config keys, with defaults, and the one helper every config section is read with.

Config files start from `base_config()`. The returned config is locked: assigning a key the
trainer does not know (a typo) raises at once. `model`, `data` and `evals` are open sections that
belong to the task and the evaluators; each declares its keys, defaults and docs in one frozen
dataclass and reads its section with `parse_section`, which rejects unknown keys (naming the
closest known one) before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import ml_collections

T = TypeVar("T")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "classification"
    c.seed = 0
    c.model = ml_collections.ConfigDict()   # model.name + the model's fields
    c.data = ml_collections.ConfigDict()    # the task's data section (its DataConfig)
    c.batch_size = 128                      # global, over all devices and processes
    c.total_steps = 0                       # or num_epochs (total_steps wins when > 0)
    c.num_epochs = 0.0
    c.grad_accum_steps = 1
    c.dtype = "float32"                     # compute dtype; parameters stay float32
    c.ema_decay = 0.0                       # 0 = no EMA of parameters
    c.ema_warmup = True                     # decay min(ema_decay, (1+t)/(10+t)) at update t
    c.label_smoothing = 0.0

    # lr_mults: (regex, multiplier) pairs over parameter paths ('Transformer/encoderblock_0/...');
    # the first full match scales that parameter's updates (0 freezes it), unmatched ones get 1.
    # schedule: warmup, then 'cosine' or 'linear' to end_fraction, 'constant', 'rsqrt', or 'step'
    # (times decay_factor at each fraction of total_steps in decay_at).
    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=0, end_fraction=0.0,
        decay_at=(), decay_factor=0.1, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8,
        momentum=0.9, nesterov=False, grad_clip_norm=1.0, lr_mults=()))

    # Start from another run's parameters (attn_jax.train.init): `path` is a workdir of this repo,
    # or a pretrained .npz (vision_transformer / big_vision) or Hugging Face checkpoint (`format`
    # 'auto' tells them apart; attn_jax.pretrained reads them); rename holds (regex,
    # replacement) pairs for its parameter paths; parameters whose shapes differ are adapted
    # where a rule exists (position embeddings resampled to the new grid, `posemb_resize`
    # 'linear' or 'bicubic'; a Mixer's token-mixing MLP refuses) and otherwise freshly
    # initialised (a new head), unless `strict`; `dont_load` regexes keep those parameters fresh
    # (a new head for the same classes); the run prints what it did.
    c.init = ml_collections.ConfigDict(dict(path="", step=-1, rename=(), ema=False, format="auto",
                                            posemb_resize="linear", strict=False, dont_load=()))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=0, max_to_keep=3, best_metric="", best_mode="max", keep_best=1,
        async_save=True))

    c.log_every_steps = 50
    c.eval_every_steps = 0                  # 0 = only at the end; evaluators' default cadence
    # NAME -> dict(type=..., every_steps=..., ...) (attn_jax.eval.evaluators); empty = the task's
    # default evaluators.
    c.evals = ml_collections.ConfigDict()

    # Resuming with a config that differs from the saved one (WORKDIR/config.json) in a key that
    # changes the schedule, the model or the data is refused; these comma-separated keys or
    # sections (e.g. "total_steps,optim") may differ (attn_jax.train.safety.check_resume).
    c.allow_changes = ""

    # Test hooks: simulate crashes, record the batches seen.
    c.debug = ml_collections.ConfigDict(dict(log_batches=False, kill_after_step=-1,
                                             kill_after_save_step=-1))
    c.lock()
    return c


def _plain(value: Any) -> Any:
    """ConfigDicts and lists as dicts and tuples (hashable, frozen-dataclass friendly)."""
    if isinstance(value, (ml_collections.ConfigDict, Mapping)):
        return {k: _plain(v) for k, v in dict(value).items()}
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value


def unknown_key_error(where: str, unknown: Any, known: Any) -> ValueError:
    """'config.data has unknown key 'lenght' (did you mean 'length'?); known keys: [...]'."""
    known = sorted(known)
    parts = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, known, n=1)
        if where == "config.data" and key in LEGACY_DATA_KEYS:
            section, new = LEGACY_DATA_KEYS[key]
            parts.append(f"{key!r} (moved to config.{section}.{new})")
        else:
            parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ValueError(f"{where} has unknown key{'s' if len(parts) > 1 else ''} "
                      f"{', '.join(parts)}; known keys: {known}")


def parse_section(cls: type[T], given: Mapping[str, Any] | None, where: str,
                  ignore: tuple[str, ...] = ()) -> T:
    """`cls(**given)` for a frozen dataclass of declared keys with defaults.

    Unknown keys raise `unknown_key_error`; keys without a default must be given; lists become
    tuples, sub-sections plain dicts. `ignore` names keys read elsewhere (e.g. an evaluator's
    'type').
    """
    given = {k: v for k, v in _plain(given or {}).items() if k not in ignore}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = set(given) - set(fields)
    if unknown:
        raise unknown_key_error(where, unknown, set(fields) | set(ignore))
    missing = [n for n, f in fields.items() if n not in given
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where} needs {missing} (no default)")
    for name, value in given.items():
        hint = hints.get(name)
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            given[name] = float(value)
        elif dataclasses.is_dataclass(hint) and not isinstance(value, hint):  # a sub-section
            given[name] = parse_section(hint, value, f"{where}.{name}")
    return cls(**given)


# ------------------------------------------------------------------ declared keys, filled in
def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _scalar_type(hint: Any) -> type | None:
    """int for `int | None` (the type a command-line value of an unset key is parsed as)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and args[0] in (int, float, bool, str):
        return args[0]
    return hint if hint in (int, float, bool, str) else None


def filled_section(cls: type, given: Any, ignore: tuple[str, ...] = ()
                   ) -> ml_collections.ConfigDict:
    """The section `given` with every key `cls` declares: given values kept (lists as tuples,
    ints of float keys as floats), the others at their defaults. Unset keys of type `T | None`
    become typed references, so `--config.data.image_size=32` parses as an int. Unknown keys
    are kept (`parse_section` names them); keys without a default stay absent."""
    given = dict(given or {})
    out = ml_collections.ConfigDict()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, default = hints.get(f.name), _default(f)
        if f.name in given:
            value = _plain(given.pop(f.name))
            if dataclasses.is_dataclass(hint) and isinstance(value, dict):
                value = filled_section(hint, value)
            elif hint is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
        elif default is dataclasses.MISSING:
            continue
        elif dataclasses.is_dataclass(default):
            value = filled_section(type(default), {})
        elif default is None and _scalar_type(hint) is not None:
            value = ml_collections.FieldReference(None, field_type=_scalar_type(hint))
        else:
            value = default
        out[f.name] = value
    for key, value in given.items():  # ignored (e.g. an evaluator's 'type') or unknown
        out[key] = _plain(value) if key not in ignore else value
    return out


def fill_declared_keys(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` (in place) with every key that its task's `DataConfig` declares in
    `config.data`, and every key of each `config.evals.NAME` evaluator type, present with its
    default, so that the command line can set any of them. An empty `config.evals` stays empty
    (the task's default evaluators)."""
    from attn_jax.eval.evaluators import EVALUATORS  # heavy imports: only when filling
    from attn_jax.tasks import get_task

    data_config = getattr(get_task(config.get("task")), "DataConfig", None)
    with config.unlocked():
        if data_config is not None:
            config.data = filled_section(data_config, config.get("data"))
        evals = config.get("evals") or {}
        for name in list(evals):
            section = dict(evals[name] or {})
            kind = section.get("type", name)
            if kind in EVALUATORS:
                config.evals[name] = filled_section(EVALUATORS[kind].Config, section,
                                                    ignore=("type",))
    return config


def section_doc(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(key, type, default) of a declared section and its sub-sections, for README tables."""
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        hint, default = hints.get(f.name), _default(f)
        if dataclasses.is_dataclass(default):
            out += section_doc(type(default), f"{prefix}{f.name}.")
            continue
        name = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
        kind = name or str(hint).replace("typing.", "").replace(" | ", " or ")  # no table pipes
        out.append((prefix + f.name, kind,
                    "(required)" if default is dataclasses.MISSING else default))
    return out


def keys_reference() -> str:
    """Markdown listing of every config key: the trainer's (from `base_config()`), each task's
    `config.data` and each evaluator type's `config.evals.NAME` (from their declarations).
    README.md holds its output between the `config-keys` markers (tests/test_cli.py checks)."""
    from attn_jax.eval.evaluators import EVALUATORS
    from attn_jax.tasks import TASKS, get_task

    def table(rows) -> list[str]:
        return ["| key | type | default |", "|---|---|---|"] + [
            f"| `{k}` | {t} | `{d!r}` |" if d != "(required)" else f"| `{k}` | {t} | required |"
            for k, t, d in rows]

    def flat(node: Any, prefix: str = "") -> list[tuple[str, str, Any]]:
        rows = []
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                rows += flat(value, f"{prefix}{key}.") if value else [
                    (prefix + key, "section", {})]
            else:
                rows.append((prefix + key, type(value).__name__, value))
        return rows

    lines = ["#### The trainer's keys (`attn_jax.train.config.base_config`)", "",
             "`model` holds `name` and the model's own fields (`attn_jax/models/`); `data` and "
             "`evals` are declared by the task and the evaluators, below.", "",
             *table(flat(base_config())), ""]
    for task in TASKS:
        cls = get_task(task).DataConfig
        lines += [f"#### `config.data` of `task={task!r}` ({cls.__module__}.{cls.__qualname__})",
                  "", *table(section_doc(cls)), ""]
    for kind, evaluator in EVALUATORS.items():
        lines += [f"#### `config.evals.NAME` of `type={kind!r}` ({evaluator.__name__})", "",
                  *table(section_doc(evaluator.Config)), ""]
    return "\n".join(lines).rstrip() + "\n"


# config.data keys of runs written before the evaluators and config.init existed:
# old key -> (new section path, new key).
LEGACY_DATA_KEYS = {
    "decode_splits": ("evals.decode", "splits"),
    "decode_max_examples": ("evals.decode", "max_examples"),
    "beam_size": ("evals.decode", "beam_size"),
    "length_penalty": ("evals.decode", "length_penalty"),
    "max_decode_len": ("evals.decode", "max_decode_len"),
    "num_examples_shown": ("evals.decode", "num_examples_shown"),
    "sample_prompt": ("evals.sample", "prompt"),
    "sample_len": ("evals.sample", "length"),
    "num_samples": ("evals.sample", "num_samples"),
    "temperature": ("evals.sample", "temperature"),
    "top_k": ("evals.sample", "top_k"),
    "top_p": ("evals.sample", "top_p"),
    "sample_seed": ("evals.sample", "seed"),
    "init_from": ("init", "path"),
    "init_step": ("init", "step"),
    "init_rename": ("init", "rename"),
    "freeze": ("optim", "lr_mults"),
    "fid": ("evals.fid", "(the section)"),
}


def upgrade_config(config: dict) -> dict:
    """A config dict of a run written before the evaluators and `config.init` (its
    config.json) in today's layout: decoding, sampling and FID keys of config.data move to
    `evals`, transfer keys to `init` and `optim.lr_mults`. Configs already new pass unchanged."""
    data = dict(config.get("data") or {})
    old = {k: data.pop(k) for k in list(data) if k in LEGACY_DATA_KEYS}
    if not old:
        return config
    config = {**config, "data": data, "evals": dict(config.get("evals") or {}),
              "init": dict(config.get("init") or {}), "optim": dict(config.get("optim") or {})}
    evals = config["evals"]
    task = config.get("task")
    if not evals:  # the evaluators the run had, implicitly
        evals["loss"] = {"type": "loss"}
        if task == "seq2seq":
            evals["decode"] = {"type": "decode"}
        if task == "lm":
            evals["sample"] = {"type": "sample_text"}
    for key, value in old.items():
        section, new = LEGACY_DATA_KEYS[key]
        if key == "fid":
            if value and value.get("classifier_workdir"):
                evals["fid"] = {"type": "fid", **value}
        elif key == "freeze":
            config["optim"]["lr_mults"] = [(p, 0.0) for p in ([value] if isinstance(value, str)
                                                              else value or [])]
        elif section == "init":
            config["init"][new] = "" if value is None and new == "path" else value
        else:
            name = section.split(".")[1]
            kind = {"decode": "decode", "sample": "sample_text"}[name]
            evals.setdefault(name, {"type": kind})[new] = value
    if config["init"].get("step") is None:
        config["init"]["step"] = -1
    return config
