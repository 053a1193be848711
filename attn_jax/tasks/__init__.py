"""Tasks by name: the one place the trainer looks a task up."""

from __future__ import annotations

import importlib

TASKS = {
    "classification": "attn_jax.tasks.classification:ClassificationTask",
    "detection": "attn_jax.tasks.detection:DetectionTask",
    "diffusion": "attn_jax.tasks.diffusion:DiffusionTask",
    "seq2seq": "attn_jax.tasks.seq2seq:Seq2SeqTask",
    "lm": "attn_jax.tasks.lm:LanguageModelTask",
}


def get_task(name: str):
    """The task class registered under `name`."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown; choose one of {sorted(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)
