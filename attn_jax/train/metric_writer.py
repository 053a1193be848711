"""Metrics to the console, a JSON-lines file and TensorBoard (tensorboardX: no TensorFlow)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from attn_jax.progress import Progress, hms


class MetricWriter:
    """Writes scalars and images on process 0 only; other processes get a silent writer.

    Files in `workdir`: `metrics.jsonl` (one JSON object per write: {"step", "split", ...}) and
    TensorBoard event files under `tensorboard/`.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter  # local: only process 0 pays the import
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """`image`: [H, W, C] uint8 or float in [0, 1]."""
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

    def text(self, step: int, tag: str, text: str) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": int(step), "split": "text", tag: text}) + "\n")
        if self._tb is not None:
            self._tb.add_text(tag, text, int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


class TrainProgress(Progress):
    """The trainer's progress (`attn_jax.progress.Progress`, 'train', in steps): a line at the
    steady rhythm between log steps (or the live bar on a terminal), and at each log step the
    metrics line

        step 200/3000  loss 1.234  learning_rate 0.001  4.12 steps/s  ETA 0:11:23

    The steps/s are those since the previous metrics line; the ETA is from the rate since the
    first step, so the compilation of the first step is in neither."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
        super().__init__("train", total_steps, unit="steps", done=start_step, enabled=enabled)

    def report(self, step: int, metrics: Mapping[str, float]) -> float | None:
        """Prints the metrics line of `step`; returns the steps/s since the previous one (None
        at the first step, whose time is mostly compilation)."""
        self.update_to(step, quiet=True)
        rate = self.window_rate()
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        speed = f"{rate:.2f}" if rate is not None else "?"
        self.write(f"step {step}/{self.total}  {shown}  {speed} steps/s  ETA {hms(self.eta())}")
        return rate
