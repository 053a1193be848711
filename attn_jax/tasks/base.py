"""What a task supplies to the shared trainer (attn_jax.train.loop) and its evaluators.

A task owns its model, data and losses, and the prediction functions its evaluators call
(`attn_jax.eval.evaluators`); the trainer owns the mesh, the jitted step, the checkpoints, the
logging and the eval loop. A task declares its `config.data` keys in one frozen dataclass
(`DataConfig`) read with `attn_jax.train.config.parse_section`.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from attn_jax.models import build_model

Batch = Mapping[str, Any]


class Task(abc.ABC):
    """Base class. Subclasses are built with the run's config: `Task(config)`.

    EVALUATOR_TYPES: the evaluator types (`config.evals.NAME.type`) this task can feed.
    """

    EVALUATOR_TYPES: frozenset[str] = frozenset({"loss"})
    DataConfig: type | None = None  # the frozen dataclass declaring config.data's keys

    @staticmethod
    def check_data_dirs(data_cfg: Any) -> None:
        """A `source_dir` that is set must be a directory; a `data_dir` too, or at least its
        parent (an offline dataset is built into a new one; a mistyped path fails here instead of
        growing a tree of new directories). A data_dir that lacks a prepared dataset is named
        by the dataset's own error, with the command that prepares it."""
        data_dir = os.path.expanduser(getattr(data_cfg, "data_dir", "") or "")
        if data_dir and "://" not in data_dir and not os.path.isdir(data_dir) and not (
                os.path.isdir(os.path.dirname(os.path.abspath(data_dir)))):
            raise ValueError(f"config.data.data_dir={data_dir!r}: neither it nor its parent is a "
                             "directory: point it at the directory that holds the prepared "
                             "datasets (offline datasets are built there on first use), or set "
                             "it to '' for $TFDS_DATA_DIR (default ~/tensorflow_datasets)")
        source_dir = getattr(data_cfg, "source_dir", "")
        if source_dir and not os.path.isdir(os.path.expanduser(source_dir)):
            raise ValueError(f"config.data.source_dir={source_dir!r} is not a directory: point "
                             "it at the directory of the dataset's source files, or set it to "
                             "'' for their default place")

    def image_dataset_info(self, data_cfg: Any) -> Any:
        """`attn_jax.data.dataset_info` of `data_cfg.name`, building an offline dataset from
        `data_cfg.source_dir` first when that is set."""
        from attn_jax import data

        self.check_data_dirs(data_cfg)
        data_dir = data_cfg.data_dir or None
        if data_cfg.source_dir:
            if data_cfg.name not in data.OFFLINE_BUILDERS:
                raise ValueError(f"config.data.source_dir applies to the offline datasets "
                                 f"{sorted(data.OFFLINE_BUILDERS)}, not {data_cfg.name!r}: set it "
                                 "to ''")
            data.prepare(data_cfg.name, data_dir, source_dir=data_cfg.source_dir)
        return data.dataset_info(data_cfg.name, data_dir=data_dir)

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        # Set by the trainer once the config checks have passed: where a task may keep files it
        # makes (a tokenizer trained on the task's own text).
        self.workdir: str | None = None

    # --- checks and model --------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError for config values this task cannot run (called before any compile)."""

    def build_registered_model(self, **fixed: Any) -> nn.Module:
        """`config.model` (name + fields) from the registry, with `fixed` fields the data
        decides (a field given in the config too must agree)."""
        model = self.config.model  # nested sections (a captioner's backbone) as plain dicts
        kwargs = model.to_dict() if hasattr(model, "to_dict") else dict(model)
        name = kwargs.pop("name", None)
        if name is None:
            raise ValueError("config.model.name is required (e.g. 'vit')")
        for key, value in fixed.items():
            if key in kwargs and kwargs[key] != value:
                raise ValueError(f"config.model.{key}={kwargs[key]!r}, but the data needs {value!r}")
        return build_model(name, **{**kwargs, **fixed})

    @abc.abstractmethod
    def init_params(self, rng: jax.Array) -> Any:
        """Parameters (possibly `nn.LogicallyPartitioned` boxes); traced under `jax.eval_shape`."""

    # --- data ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def train_iterator(self, *, seed: int, process_index: int, process_count: int
                       ) -> Iterator[dict[str, np.ndarray]]:
        """Host-local batches of the global batch, forever; with get_state()/set_state()."""

    @abc.abstractmethod
    def eval_iterator(self, split: str, *, process_index: int, process_count: int
                      ) -> Iterator[dict[str, np.ndarray]]:
        """One pass over `split`; padded batches carry a 'mask' (1 = real example)."""

    def eval_splits(self) -> tuple[str, ...]:
        """The splits the default evaluators read."""
        return ("test",)

    def splits(self) -> tuple[str, ...]:
        """Every split an evaluator may name."""
        return ("train", "validation", "test")

    def check_splits(self, splits: tuple[str, ...], where: str) -> None:
        bad = [s for s in splits if s not in self.splits()]
        if bad:
            raise ValueError(f"{where}: splits {bad} are not among {self.splits()}")

    # --- losses and metrics (all traced inside jit) --------------------------------------------
    def init_carry(self) -> Any:
        """The state this task carries from one train step to the next (a stateful LM's
        recurrent state), every array leaf leading with the global batch (it is sharded like
        a batch and checkpointed with the train state); None (the default): nothing. A task
        that returns one is called as `loss(..., carry=carry)` by the trainer and returns
        `(loss, (metrics, new_carry))` then (called without a carry: `(loss, metrics)`)."""
        return None

    @abc.abstractmethod
    def loss(self, params: Any, batch: Batch, rng: jax.Array, step: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss (mean over the global batch) and scalar metrics to log."""

    @abc.abstractmethod
    def eval_sums(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        """Per-batch sums over real examples; must include 'count'. Averages are sums / count."""

    def eval_metrics(self, split: str, means: dict[str, float]) -> dict[str, float]:
        """Metrics derived from the eval averages (e.g. perplexity = exp(loss))."""
        return means

    def default_evals(self) -> dict[str, dict[str, Any]]:
        """The evaluators of a config whose `config.evals` is empty."""
        return {"eval": {"type": "loss"}}
