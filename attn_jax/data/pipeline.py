"""grain pipelines yielding host-local image batches for training and evaluation.

The batching is `attn_jax.data.batcher`'s: every host builds the same global batch of example
indices (train: order 'epochs', shuffled with the seed, reshuffled each epoch, remainder
dropped) and draws the same augmentation parameters for all of it, then materialises only its
own rows [p * b : (p + 1) * b], where b = global_batch_size / process_count. Host batches
concatenated over processes are therefore exactly the single-process global batch: a run does
not depend on how many hosts feed it. This module adds the image reading, resizing,
augmentation and normalisation (the collate step).

Every element is {'image': float32 [b, h, w, c], 'label': int32 [b], 'mask': float32 [b]}; the
mask is 1 for real examples and 0 for the padding that fills the last eval batch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import grain
import numpy as np

from attn_jax.data import batcher, sources, transforms

_RRC_ATTEMPTS = 10  # proposals per example for the Inception crop, as in torchvision


def _derived_seeds(seed: int) -> tuple[int, int]:
    """(shuffle seed, augmentation seed), hashed from the user's seed (any int)."""
    shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
    return int(shuffle_seed), int(augment_seed)


@dataclasses.dataclass(frozen=True)
class _Normalize:
    """x * scale + shift per channel: (x - mean) / std, or [0, pixel_max] -> [-1, 1], or identity."""

    scale: np.ndarray
    shift: np.ndarray

    @classmethod
    def create(cls, mode: bool | str, info: sources.ImageDatasetInfo) -> _Normalize:
        mode = {True: "mean_std", False: "none"}.get(mode, mode)
        if mode == "mean_std":
            std = np.asarray(info.std, np.float32)
            return cls(1.0 / std, -np.asarray(info.mean, np.float32) / std)
        if mode == "minus_one_one":
            return cls(np.float32(2.0 / info.pixel_max), np.float32(-1.0))
        if mode == "none":
            return cls(np.float32(1.0), np.float32(0.0))
        raise ValueError(f"normalize must be True/'mean_std', 'minus_one_one' or False/'none', got {mode!r}")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return images.astype(np.float32) * self.scale + self.shift


@dataclasses.dataclass(frozen=True)
class _FixedSizeCollate:
    """Host batch of same-size images: one gather, then resize, pad-crop and flip.

    images is the whole split in memory (uint8 [n, h, w, c], already at image_size) or, for a
    split too large for memory, a tfds data source whose batches are read and resized per step.
    Filler rows of the last eval batch hold example 0 (mask 0).
    """

    images: np.ndarray | Sequence[dict] = dataclasses.field(repr=False)
    labels: np.ndarray | None = dataclasses.field(repr=False)
    normalize: _Normalize
    crop_padding: int = 0
    flip: bool = False
    image_size: int | None = None
    resize: str = "bilinear"
    keys: tuple[str, str] = ("image", "label")

    @property
    def augments(self) -> bool:
        """Whether training batches are pad-cropped or flipped (then `draw` is needed)."""
        return self.crop_padding > 0 or self.flip

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(offsets int64 [n, 2] in [0, 2 * crop_padding], flips bool [n]) of a global batch."""
        offsets = rng.integers(0, 2 * self.crop_padding + 1, (n, 2))
        flips = rng.random(n) < 0.5 if self.flip else np.zeros(n, bool)
        return offsets, flips

    def __call__(self, batch: batcher.IndexBatch, drawn: tuple[np.ndarray, ...] | None = None
                 ) -> batcher.Batch:
        indices = batch.indices
        if isinstance(self.images, np.ndarray):
            images, labels = self.images[indices], self.labels[indices]
        else:
            examples = self.images.__getitems__(indices.tolist())
            images = np.stack([e[self.keys[0]] for e in examples])
            labels = np.asarray([e[self.keys[1]] for e in examples], np.int32)
            if self.image_size is not None:
                images = transforms.resize_images(images, self.image_size, self.resize)
        if drawn is not None:
            images = transforms.random_crop_flip(images, *drawn, self.crop_padding)
        return {"image": self.normalize(images), "label": labels}


@dataclasses.dataclass(frozen=True)
class _VariableSizeCollate:
    """Host batch of images of varying size (ImageNet): decode, crop to image_size, flip.

    train (drawn given): Inception crop + random flip; eval: centre crop of 0.875 of the shorter
    side. Filler rows of the last eval batch are not read; they are zeros before normalisation.
    """

    source: Sequence[dict]
    normalize: _Normalize
    image_size: int
    channels: int
    flip: bool = True
    keys: tuple[str, str] = ("image", "label")

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(crop uniforms [n, attempts, 4] in [0, 1), flips bool [n]) of a global batch."""
        uniforms = rng.random((n, _RRC_ATTEMPTS, 4))
        return uniforms, (rng.random(n) < 0.5) & self.flip

    def __call__(self, batch: batcher.IndexBatch, drawn: tuple[np.ndarray, ...] | None = None
                 ) -> batcher.Batch:
        indices, mask = batch
        images = np.zeros((len(indices), self.image_size, self.image_size, self.channels), np.uint8)
        labels = np.zeros(len(indices), np.int32)
        real = np.flatnonzero(mask)
        for j, example in zip(real, self.source.__getitems__(indices[real].tolist())):
            image = example[self.keys[0]]
            h, w = image.shape[:2]
            if drawn is None:
                box = transforms.center_crop_box(h, w)
            else:
                box = transforms.random_resized_crop_box(h, w, drawn[0][j])
            images[j] = transforms.crop_resize(image, box, self.image_size)
            labels[j] = example[self.keys[1]]
        if drawn is not None:
            images = np.where(drawn[1][:, None, None, None], images[:, :, ::-1], images)
        return {"image": self.normalize(images), "label": labels}


@functools.lru_cache(maxsize=4)
def _resized_arrays(name: str, split: str, data_dir: str, image_size: int | None, resize: str):
    images, labels = sources.load_arrays(name, split, data_dir)
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        images = transforms.resize_images(images, image_size, resize)
    return images, labels


def make_dataset(name: str, split: str, *, global_batch_size: int, train: bool, seed: int = 0,
                 process_index: int = 0, process_count: int = 1,
                 data_dir: str | os.PathLike | None = None, image_size: int | None = None,
                 resize: str = "bilinear", crop_padding: int | None = None, flip: bool | None = None,
                 normalize: bool | str = True) -> grain.MapDataset:
    """Random-access dataset of this host's batches: element s is the host batch of step s.

    Args:
      name: an offline source ('fashion_mnist_idx', 'digits_sklearn'; built on first use) or a
        prepared stock tfds dataset ('cifar10', 'imagenet2012', ...).
      split: 'train', 'test', ... or tfds slicing such as 'train[:90%]'.
      global_batch_size: examples per step over all processes; each host gets
        global_batch_size // process_count of them.
      train: True: shuffled with `seed` (a new order each epoch), remainder dropped, endless,
        augmented. False: one pass in order, last batch padded (mask 0), not augmented.
      process_index, process_count: this host and the number of hosts (jax.process_index/count).
      image_size: output height = width. Fixed-size images are resized (or zero-padded with
        resize='pad') once when loaded; variable-size images need it (train: Inception crop,
        eval: centre crop).
      crop_padding, flip: train-time pad-and-crop and horizontal flip of fixed-size images; None
        means on (4, True) for 32x32 RGB images, off otherwise. Variable-size images are always
        Inception-cropped and flipped unless flip=False.
      normalize: True/'mean_std' ((x - mean) / std with the train split's per-channel stats),
        'minus_one_one' ([0, pixel_max] -> [-1, 1]) or False/'none' (float pixel values).
    """
    rows = batcher.host_rows(global_batch_size, process_index, process_count)
    info = sources.dataset_info(name, data_dir)
    norm = _Normalize.create(normalize, info)
    keys = (info.image_key, info.label_key)
    if info.fixed_size:
        h, w = (image_size, image_size) if image_size else info.image_shape[:2]
        cifar_like = (h, w, info.image_shape[2]) == (32, 32, 3)
        crop_padding = (4 if cifar_like else 0) if crop_padding is None else crop_padding
        flip = cifar_like if flip is None else flip
        if sources.fits_in_memory(info, split):
            images, labels = _resized_arrays(name, split, str(sources.resolve_data_dir(data_dir)),
                                             image_size, resize)
            collate = _FixedSizeCollate(images, labels, norm, crop_padding, flip)
        else:
            images = sources.data_source(name, split, data_dir)
            collate = _FixedSizeCollate(images, None, norm, crop_padding, flip, image_size, resize,
                                        keys)
        augment = train and collate.augments
    else:
        if image_size is None:
            raise ValueError(f"{name} images vary in size {info.image_shape}: pass image_size")
        if crop_padding:
            raise ValueError(f"crop_padding={crop_padding} needs fixed-size images; {name} images "
                             f"vary in size {info.image_shape} and get the Inception crop instead")
        images = sources.data_source(name, split, data_dir)
        collate = _VariableSizeCollate(images, norm, image_size, info.image_shape[2],
                                       True if flip is None else flip, keys)
        augment = train
    if train and len(images) < global_batch_size:
        raise ValueError(f"{name} {split} has {len(images)} examples, fewer than one global batch "
                         f"of {global_batch_size}")
    shuffle_seed, augment_seed = _derived_seeds(seed)
    steps = batcher.index_batches(len(images), global_batch_size, train=train, seed=shuffle_seed,
                                  order="epochs")
    if augment:
        return batcher.host_batches(steps, collate, rows, draw=collate.draw, seed=augment_seed)
    return batcher.host_batches(steps, collate, rows)


def make_iterator(name: str, split: str, *, global_batch_size: int, train: bool, seed: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  data_dir: str | os.PathLike | None = None, image_size: int | None = None,
                  resize: str = "bilinear", crop_padding: int | None = None, flip: bool | None = None,
                  normalize: bool | str = True, num_threads: int | None = None) -> grain.DatasetIterator:
    """Iterator over make_dataset(...) (same arguments) with `num_threads` threads preparing
    as many batches ahead (default: 2 for a split held in memory, else one per CPU core).

    Checkpointable: get_state() / set_state(state) (a small JSON-able dict), or with orbax via
    `grain.checkpoint.CheckpointSave(iterator)` / `grain.checkpoint.CheckpointRestore(iterator)`.
    """
    ds = make_dataset(name, split, global_batch_size=global_batch_size, train=train, seed=seed,
                      process_index=process_index, process_count=process_count, data_dir=data_dir,
                      image_size=image_size, resize=resize, crop_padding=crop_padding, flip=flip,
                      normalize=normalize)
    if num_threads is None:
        in_memory = sources.fits_in_memory(sources.dataset_info(name, data_dir), split)
        num_threads = 2 if in_memory else os.cpu_count() or 8
    # Each thread prepares one whole batch; the buffer bounds host memory to that many batches.
    return batcher.batch_iterator(ds, prefetch=max(num_threads, 2), num_threads=num_threads)
