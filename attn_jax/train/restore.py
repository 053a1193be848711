"""Load a trained model back from a workdir: for sampling, evaluation, fine-tuning, export.

    config, params = load_params("runs/vit_fashion_mnist")          # latest checkpoint
    config, params = load_params(workdir, ema=True)                  # the EMA parameters

Reading opens no `CheckpointManager`: a manager is for a run that saves (even read-only, orbax's
manager warns "Given directory is read only" each time), and these tools only read, so they list
the finalized steps and restore one step's `state` item directly.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.path import step as step_lib

from attn_jax.train.checkpoint import interrupted_saves
from attn_jax.train.config import upgrade_config
from attn_jax.train.legacy import upgrade_params


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config of a run's newest checkpoint (`<workdir>/config.json`, written with each one),
    in today's layout (`upgrade_config`: runs from before the evaluators still load)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir!r} is not a train.py workdir")
    with open(path) as f:
        return ml_collections.ConfigDict(upgrade_config(json.load(f)))


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the completed checkpoints in a workdir, oldest first."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(step_lib.checkpoint_steps(directory))  # finalized: no interrupted saves


def load_params(workdir: str, step: int | None = None, *, ema: bool = False
                ) -> tuple[ml_collections.ConfigDict, Any]:
    """The run's config and its parameters (NumPy arrays on the host) at `step` (default latest).

    Raises FileNotFoundError naming the directory when there is no completed checkpoint.
    """
    config = load_config(workdir)
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = checkpoint_steps(workdir)
    if not steps:
        partial = interrupted_saves(directory)
        raise FileNotFoundError(f"no completed checkpoint in {directory}"
                                + (f" (interrupted saves: {partial})" if partial else ""))
    step = max(steps) if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {directory}; "
                                f"available: {steps}")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        state = checkpointer.restore(os.path.join(directory, str(step)), args=ocp.args.Composite(
            state=ocp.args.StandardRestore())).state
    if ema:
        if state.get("ema_params") is None:
            raise ValueError(f"the run in {workdir} kept no EMA parameters (ema_decay was 0)")
        return config, upgrade_params(state["ema_params"])
    return config, upgrade_params(state["params"])
