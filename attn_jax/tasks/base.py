"""What a task supplies to the shared trainer (attn_jax.train.loop).

A task owns its model, data and losses; the trainer owns the mesh, the jitted steps, the
checkpoints and the logging. Adding a model family means a model file, a task and a config.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

Batch = Mapping[str, Any]


class Task(abc.ABC):
    """Base class. Subclasses are built with the run's config: `Task(config)`."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        # Set by the trainer once every check has passed: where a task may keep files it makes
        # (a tokenizer trained on the task's own text, sample grids).
        self.workdir: str | None = None

    # --- checks and model --------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError for config values this task cannot run (called before any compile)."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The flax module this task trains."""

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

    # --- losses and metrics (all traced inside jit) --------------------------------------------
    @abc.abstractmethod
    def loss(self, params: Any, batch: Batch, rng: jax.Array, step: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Scalar training loss (mean over the global batch) and scalar metrics to log."""

    @abc.abstractmethod
    def eval_sums(self, params: Any, batch: Batch) -> dict[str, jax.Array]:
        """Per-batch sums over real examples; must include 'count'. Averages are sums / count."""

    def wrap_optimizer(self, tx: Any) -> Any:
        """Hook around the config's optimizer, e.g. to freeze parameters when fine-tuning."""
        return tx

    # --- host-side extras ----------------------------------------------------------------------
    def eval_metrics(self, split: str, means: dict[str, float]) -> dict[str, float]:
        """Metrics derived from the eval averages (e.g. perplexity = exp(loss))."""
        return means

    def eval_splits(self) -> tuple[str, ...]:
        return ("test",)

    def artifacts(self, params: Any, ema_params: Any | None, step: int, workdir: str,
                  writer: Any, mesh: jax.sharding.Mesh) -> dict[str, float]:
        """Optional periodic outputs (sample grids, generated text); returns extra metrics."""
        return {}
