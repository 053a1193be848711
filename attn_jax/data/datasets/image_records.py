"""What the offline image builders share: tfds features, examples in file order, channel stats.

Images are stored as raw uint8 bytes (`Encoding.BYTES`: no TF encoder, 5x faster to build than
int64 lists) in file order (`disable_shuffling`), so record i is example i of the source. The
per-channel mean/std of the train split are measured at build time and stored in the dataset's
`metadata.json`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from attn_jax.progress import Progress


def channel_stats(batches: Iterable[np.ndarray]) -> dict[str, list[float]]:
    """Per-channel mean and standard deviation, in pixel units, of pixels given as arrays
    [..., channels] (image batches, or single images of varying size)."""
    total = total_sq = 0.0
    count = 0
    for x in batches:
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)
        total, total_sq, count = total + x.sum(0), total_sq + np.square(x).sum(0), count + len(x)
    mean = total / count
    return {"mean": mean.tolist(), "std": np.sqrt(np.maximum(total_sq / count - mean**2, 0.0)).tolist()}


def chunks(array: np.ndarray, size: int = 8192) -> Iterator[np.ndarray]:
    """array[0:size], array[size:2 size], ...: bounds the float64 temporaries of channel_stats."""
    return (array[start:start + size] for start in range(0, len(array), size))


def image_features(shape: tuple[int, int, int],
                   class_names: tuple[str, ...]) -> tfds.features.FeaturesDict:
    """{'image': uint8 [h, w, c] stored as raw bytes, 'label': ClassLabel(class_names)}."""
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
        "label": tfds.features.ClassLabel(names=class_names),
    })


def indexed_examples(images: np.ndarray, labels: np.ndarray, desc: str = "building"
                     ) -> Iterator[tuple[int, dict]]:
    """(i, {'image': images[i], 'label': int(labels[i])}): keys are file positions. Progress
    (`desc`) counts the examples written."""
    with Progress(desc, len(images), unit="examples") as p:
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}
            p.update()


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What the offline builders share: one line when a build starts and one when it ends, in
    place of tfds' "Downloading and preparing dataset Unknown size ..." (nothing is downloaded)."""

    def _log_download_bytes(self) -> None:  # tfds calls it right before generating
        self._build_started = time.perf_counter()
        print(f"building dataset {self.name} {self.version} into {self.data_dir} (once)",
              flush=True)

    def _log_download_done(self) -> None:
        took = time.perf_counter() - getattr(self, "_build_started", time.perf_counter())
        print(f"built dataset {self.name} in {took:.1f} s", flush=True)

