"""Tasks by name: the one place the trainer looks a task up."""

from __future__ import annotations

import importlib

TASKS = {
    "classification": "attn_jax.tasks.classification:ClassificationTask",
}


def get_task(name: str):
    """The task class registered under `name`."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown; choose one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
