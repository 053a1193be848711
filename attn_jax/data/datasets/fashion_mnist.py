"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747) from the original IDX files.

The tfds builder `fashion_mnist_idx` (60000 train / 10000 test, 28x28x1 uint8, 10 classes) reads
the four `*-ubyte.gz` files, e.g. those of the Debian package `dataset-fashion-mnist`, offline.
"""

from __future__ import annotations

import gzip
import math
import os
import pathlib
import zlib

import numpy as np
import tensorflow_datasets as tfds

from attn_jax.data.datasets.image_records import (OfflineBuilder, channel_stats, chunks,
                                                  image_features, indexed_examples)

FASHION_MNIST_DIR_ENV = "FASHION_MNIST_DIR"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HINT = (
    "install the Debian package (`apt-get install dataset-fashion-mnist`, files under "
    f"{DEFAULT_FASHION_MNIST_DIR}) or download the four *-ubyte.gz files from "
    "https://github.com/zalandoresearch/fashion-mnist and pass their directory as source_dir "
    f"(train.py: --config.data.source_dir=DIR) or in ${FASHION_MNIST_DIR_ENV}"
)
FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle_boot")
# split -> (images file, labels file, number of examples)
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
# IDX type codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"); data are big-endian.
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzip-compressed if the name ends in `.gz`) into an array of its shape.

    The header is two zero bytes, a type code, the number of dimensions n, then n big-endian
    uint32 sizes. Raises FileNotFoundError for a missing file and ValueError for a corrupt one.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {FASHION_MNIST_HINT}")
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise ValueError(f"{path} cannot be read or decompressed ({e}); {FASHION_MNIST_HINT}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: magic bytes {raw[:4].hex()!r}, expected "
                         f"0000 + a type code + ndim; {FASHION_MNIST_HINT}")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:offset].ljust(4 * ndim, b"\0"), ">u4"))
    expected = offset + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path} is truncated or corrupt: its header says shape {shape} "
                         f"({expected} bytes) but it has {len(raw)} bytes; {FASHION_MNIST_HINT}")
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def read_fashion_mnist(source_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [n, 28, 28, 1], labels uint8 [n]) of one split from the IDX files."""
    images_stem, labels_stem, count = _FASHION_MNIST_FILES[split]
    source_dir = pathlib.Path(source_dir)

    def find(stem: str) -> pathlib.Path:  # the .gz file, else a gunzipped copy
        gz, plain = source_dir / f"{stem}.gz", source_dir / stem
        return plain if plain.is_file() and not gz.is_file() else gz

    images, labels = read_idx(find(images_stem)), read_idx(find(labels_stem))
    if images.shape != (count, 28, 28) or images.dtype != np.uint8:
        raise ValueError(f"{find(images_stem)}: expected uint8 images of shape {(count, 28, 28)}, "
                         f"got {images.dtype} {images.shape}; {FASHION_MNIST_HINT}")
    if labels.shape != (count,) or labels.dtype != np.uint8 or labels.max() > 9:
        raise ValueError(f"{find(labels_stem)}: expected {count} uint8 labels in 0..9, got "
                         f"{labels.dtype} {labels.shape} with max {labels.max()}; {FASHION_MNIST_HINT}")
    return images[..., None], labels


class FashionMnistIdx(OfflineBuilder, skip_registration=True):
    """Fashion-MNIST (60000 train / 10000 test, 28x28x1 uint8, 10 classes) from IDX files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Images and labels of the original IDX files, in file order."}

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
        self.source_dir = pathlib.Path(
            source_dir or os.environ.get(FASHION_MNIST_DIR_ENV) or DEFAULT_FASHION_MNIST_DIR)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description="Fashion-MNIST read from the original IDX files.",
            features=image_features((28, 28, 1), FASHION_MNIST_CLASSES),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist", disable_shuffling=True,
            citation="Xiao, Rasul, Vollgraf. Fashion-MNIST. arXiv:1708.07747, 2017.",
            metadata=tfds.core.MetadataDict(pixel_max=255))

    def _split_generators(self, dl_manager):
        del dl_manager  # offline: everything comes from source_dir
        splits = {split: read_fashion_mnist(self.source_dir, split) for split in _FASHION_MNIST_FILES}
        self.info.metadata.update(channel_stats(chunks(splits["train"][0])))
        return {split: self._generate_examples(*arrays, split) for split, arrays in splits.items()}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, split: str):
        return indexed_examples(images, labels, f"building {self.name} {split}")

