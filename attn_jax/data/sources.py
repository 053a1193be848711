"""The image dataset catalog: tfds builders by name, prepared ArrayRecord data, per-channel stats.

Names in `OFFLINE_BUILDERS` (`fashion_mnist_idx`, `digits_sklearn`) are built on first use into
`data_dir` under a file lock, so concurrent processes build once. Any other name is a stock tfds
dataset (`cifar10`, `imagenet2012`, ...) that must already be prepared in ArrayRecord format.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import math
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from attn_jax.data.datasets.digits import DigitsSklearn
from attn_jax.data.datasets.fashion_mnist import FashionMnistIdx
from attn_jax.data.datasets.image_records import channel_stats, chunks

# Datasets built from files on this machine (no download): name -> tfds builder.
OFFLINE_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "fashion_mnist_idx": FashionMnistIdx,
    "digits_sklearn": DigitsSklearn,
}

# A split whose decoded images exceed this is streamed from disk rather than held in memory.
MAX_IN_MEMORY_BYTES = 4 << 30
# Published statistics for datasets too large to measure on first use: torchvision's ImageNet values.
KNOWN_STATS = {
    "imagenet2012": ((0.485 * 255, 0.456 * 255, 0.406 * 255), (0.229 * 255, 0.224 * 255, 0.225 * 255)),
}
_STATS_SAMPLE = 2048  # images read to estimate the stats of a large dataset not in KNOWN_STATS


@dataclasses.dataclass(frozen=True)
class ImageDatasetInfo:
    """What a model and a training loop need to know about an image classification dataset.

    image_shape is the stored (height, width, channels), with None where image sizes vary;
    mean/std are per channel, in stored pixel units, of the train split; pixel_max is the largest
    pixel value (255, or 16 for the sklearn digits).
    """

    name: str
    num_classes: int
    image_shape: tuple[int | None, int | None, int]
    num_examples: dict[str, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_max: int
    class_names: tuple[str, ...]
    image_key: str = "image"
    label_key: str = "label"

    @property
    def fixed_size(self) -> bool:
        return None not in self.image_shape


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> epath.Path:
    """data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (tfds' own default).

    Stock datasets may live on GCS (gs://...); offline builds need a local directory (flock).
    """
    data_dir = os.fspath(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
    return epath.Path(os.path.expanduser(data_dir))


def prepare(name: str, data_dir: str | os.PathLike | None = None, *,
            source_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
    """Returns the builder of a prepared dataset, building an offline source if it is missing.

    Offline builds run under an exclusive lock on `data_dir/.NAME.lock` (a second process waits,
    then finds the data built); tfds itself writes into `incomplete.*` and renames on success, so
    an interrupted build leaves nothing that looks prepared, and a failed one leaves no folder
    behind either (`_build`).
    """
    data_dir = resolve_data_dir(data_dir)
    if name in OFFLINE_BUILDERS:
        cls = OFFLINE_BUILDERS[name]
        builder = cls(data_dir=str(data_dir), source_dir=source_dir)
        if not _is_prepared(builder):
            data_dir.mkdir(parents=True, exist_ok=True)
            with _exclusive_lock(data_dir / f".{name}.lock"):
                builder = cls(data_dir=str(data_dir), source_dir=source_dir, file_format="array_record")
                if not _is_prepared(builder):
                    _build(builder, data_dir)
                builder = cls(data_dir=str(data_dir), source_dir=source_dir)
        return builder
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"unknown dataset {name!r}: neither an offline source "
                         f"({', '.join(OFFLINE_BUILDERS)}) nor a registered tfds dataset") from None
    if not _is_prepared(builder):
        manual = (f" {name} also needs a manual download into {data_dir}/downloads/manual: "
                  f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
                  if getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) else "")
        raise FileNotFoundError(
            f"tfds dataset {name!r} is not prepared in data_dir={data_dir} (no {builder.data_path}). "
            f"Prepare it once on a machine with network access and TensorFlow: `pip install "
            f"tensorflow tensorflow-datasets && tfds build {name} --data_dir={data_dir} "
            f"--file_format=array_record`, then copy {data_dir / name} here, or point data_dir "
            f"(or $TFDS_DATA_DIR) at a directory that has it.{manual}")
    formats = [f.value for f in builder.info.available_file_formats()]
    if "array_record" not in formats:
        raise ValueError(f"{name} in {builder.data_path} is stored as {formats}; random access needs "
                         f"ArrayRecord: rebuild it with `tfds build {name} --file_format=array_record`")
    return builder


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    """builder.is_prepared(), without tfds' "Variant folder ... has no dataset_info.json"
    warning for a dataset that was simply never built."""
    return (epath.Path(builder.data_path) / "dataset_info.json").exists() and builder.is_prepared()


def _build(builder: tfds.core.DatasetBuilder, data_dir: epath.Path) -> None:
    """Builds an offline dataset (progress from its examples, see image_records.py). A build
    that fails removes the folders it created, so no half-made dataset folder is left for
    later runs to warn about."""
    folder = data_dir / builder.name
    made_folder = not folder.exists()
    downloads = [p for p in (data_dir / "downloads" / "extracted", data_dir / "downloads")
                 if not p.exists()]
    tfds.disable_progress_bar()  # our own progress replaces tfds' bars (carriage returns)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))  # stats would need TF
    except BaseException:
        if made_folder:
            folder.rmtree(missing_ok=True)
        elif folder.is_dir() and not any(folder.iterdir()):  # left empty by an older failure
            folder.rmdir()
        raise
    finally:
        for path in downloads:  # an offline build downloads nothing: its empty folders go
            with contextlib.suppress(OSError):
                path.rmdir()


@contextlib.contextmanager
def _exclusive_lock(path: epath.Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def data_source(name: str, split: str, data_dir: str | os.PathLike | None = None) -> Sequence[dict]:
    """Random-access source of decoded examples (dicts of numpy arrays) of a split.

    split takes tfds' slicing syntax, e.g. 'train[:90%]'.
    """
    return prepare(name, data_dir).as_data_source(split=split)


@functools.lru_cache(maxsize=8)
def _cached_arrays(name: str, split: str, data_dir: epath.Path, image_shape: tuple[int, int, int],
                   image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    source = data_source(name, split, data_dir)
    n = len(source)
    images = np.empty((n, *image_shape), np.uint8)
    labels = np.empty((n,), np.int32)
    chunk = 4096  # one __getitems__ call per chunk: much faster than per-example reads
    for start in range(0, n, chunk):
        examples = source.__getitems__(range(start, min(start + chunk, n)))
        images[start:start + len(examples)] = [e[image_key].reshape(image_shape) for e in examples]
        labels[start:start + len(examples)] = [e[label_key] for e in examples]
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller of the cache
    return images, labels


def load_arrays(name: str, split: str, data_dir: str | os.PathLike | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Whole split in memory, read once per process: (images uint8 [n, h, w, c], labels int32 [n])."""
    info = dataset_info(name, data_dir)
    if not info.fixed_size:
        raise ValueError(f"{name} images vary in size ({info.image_shape}); stream them instead")
    return _cached_arrays(name, split, resolve_data_dir(data_dir), info.image_shape,
                          info.image_key, info.label_key)


def fits_in_memory(info: ImageDatasetInfo, split: str) -> bool:
    n = info.num_examples.get(split.split("[")[0], 0)
    return info.fixed_size and n * math.prod(info.image_shape) <= MAX_IN_MEMORY_BYTES


@functools.lru_cache(maxsize=32)
def _cached_info(name: str, data_dir: epath.Path) -> ImageDatasetInfo:
    builder = prepare(name, data_dir)
    tinfo = builder.info
    image_key, label_key = tinfo.supervised_keys or ("image", "label")
    image_feature, label_feature = tinfo.features[image_key], tinfo.features[label_key]
    if len(image_feature.shape) != 3 or not isinstance(label_feature, tfds.features.ClassLabel):
        raise ValueError(f"{name} is not an image classification dataset: {image_key} has shape "
                         f"{image_feature.shape}, {label_key} is {type(label_feature).__name__}")
    info = ImageDatasetInfo(
        name=name, num_classes=label_feature.num_classes, image_shape=tuple(image_feature.shape),
        num_examples={s: v.num_examples for s, v in tinfo.splits.items()}, mean=(), std=(),
        pixel_max=int((tinfo.metadata or {}).get("pixel_max", 255)),
        class_names=tuple(label_feature.names), image_key=image_key, label_key=label_key)
    mean, std = _train_stats(builder, info, data_dir)
    return dataclasses.replace(info, mean=tuple(map(float, mean)), std=tuple(map(float, std)))


def _train_stats(builder: tfds.core.DatasetBuilder, info: ImageDatasetInfo, data_dir: epath.Path):
    """Per-channel (mean, std) of the train split: stored at build time, published, or measured."""
    metadata = builder.info.metadata or {}
    if "mean" in metadata:
        return metadata["mean"], metadata["std"]
    if info.name in KNOWN_STATS:
        return KNOWN_STATS[info.name]
    if "train" not in info.num_examples:
        raise ValueError(f"{info.name} has no train split to measure normalisation statistics from "
                         f"(splits: {list(info.num_examples)})")
    if fits_in_memory(info, "train"):  # exact, and the cached arrays serve training too
        images, _ = _cached_arrays(info.name, "train", data_dir, info.image_shape,
                                   info.image_key, info.label_key)
        stats = channel_stats(chunks(images))
        return stats["mean"], stats["std"]
    source = builder.as_data_source(split="train")
    sample = np.linspace(0, len(source) - 1, min(_STATS_SAMPLE, len(source))).astype(int)
    stats = channel_stats(e[info.image_key] for start in range(0, len(sample), 64)
                          for e in source.__getitems__(sample[start:start + 64].tolist()))
    return stats["mean"], stats["std"]


def dataset_info(name: str, data_dir: str | os.PathLike | None = None) -> ImageDatasetInfo:
    """Classes, image shape, split sizes and train-split channel stats of a dataset (cached)."""
    return _cached_info(name, resolve_data_dir(data_dir))
