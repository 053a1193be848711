"""Metrics to the console, a JSON-lines file and TensorBoard (tensorboardX: no TensorFlow)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np


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


class Progress:
    """One console line per report: step, loss, learning rate, steps/s and ETA."""

    def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
        self.total = total_steps
        self.enabled = enabled
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def report(self, step: int, metrics: Mapping[str, float]) -> float:
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        if self.enabled:
            eta = (self.total - step) / rate if rate > 0 else float("inf")
            shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print(f"step {step}/{self.total}  {shown}  {rate:.2f} steps/s  ETA {_hms(eta)}",
                  file=sys.stdout, flush=True)
        return rate


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
