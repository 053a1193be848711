"""The 8x8 digits shipped with scikit-learn (the UCI optdigits test set, 1797 images, pixel
values 0..16) as the tfds builder `digits_sklearn`, with a fixed stratified 80/20 split."""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from attn_jax.data.datasets.image_records import (OfflineBuilder, channel_stats, chunks,
                                                  image_features, indexed_examples)


def digits_test_mask(labels: np.ndarray) -> np.ndarray:
    """Deterministic stratified split of the sklearn digits: within each class, in file order,
    every 5th example (ranks 4, 9, ...) is a test example. labels [n] -> bool [n]."""
    mask = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        mask[np.flatnonzero(labels == c)[4::5]] = True
    return mask


class DigitsSklearn(OfflineBuilder, skip_registration=True):
    """scikit-learn digits (8x8x1, values 0..16, 10 classes): 1442 train / 355 test, stratified."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn.datasets.load_digits; test = every 5th example of each class."}

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
        del source_dir  # the data ship inside scikit-learn
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description="The 8x8 digits of scikit-learn (UCI optdigits test set).",
            features=image_features((8, 8, 1), tuple(str(d) for d in range(10))),
            supervised_keys=("image", "label"), disable_shuffling=True,
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation="Alpaydin, Kaynak. Optical Recognition of Handwritten Digits. UCI, 1998.",
            metadata=tfds.core.MetadataDict(pixel_max=16))

    def _split_generators(self, dl_manager):
        del dl_manager
        from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]
        labels = digits.target.astype(np.int64)
        test = digits_test_mask(labels)
        self.info.metadata.update(channel_stats(chunks(images[~test])))
        return {"train": self._generate_examples(images[~test], labels[~test], "train"),
                "test": self._generate_examples(images[test], labels[test], "test")}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, split: str):
        return indexed_examples(images, labels, f"building {self.name} {split}")



DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digits_words(seed: int = 0) -> dict[str, list[tuple[np.ndarray, str]]]:
    """The sklearn digits as (image float32 [8, 8, 1] in [0, 1], English word) pairs, an
    offline image -> text task: `digits_test_mask`'s test split, and a seeded tenth of the rest
    as validation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target
    test = digits_test_mask(labels)
    rest = np.flatnonzero(~test)
    validation = np.zeros(len(labels), bool)
    validation[np.random.default_rng(seed).permutation(rest)[: len(rest) // 10]] = True
    split_of = {"test": test, "validation": validation, "train": ~test & ~validation}
    return {name: [(images[i], DIGIT_WORDS[labels[i]]) for i in np.flatnonzero(mask)]
            for name, mask in split_of.items()}
