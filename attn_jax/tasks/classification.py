"""Image classification: softmax cross-entropy, label smoothing, mixup, top-1 accuracy."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from attn_jax import data
from attn_jax.tasks.base import Task
from attn_jax.train.config import parse_section


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """config.data of the classification task."""

    name: str                            # offline: fashion_mnist_idx, digits_sklearn; or tfds
    data_dir: str = ""                   # tfds data dir ('' = $TFDS_DATA_DIR)
    source_dir: str = ""                 # offline builds: the source files ('' = their default)
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("test",)
    image_size: int | None = None        # resize to this square size (None = as stored)
    crop_padding: int | None = None      # None: the pipeline's default (crops for 32x32 RGB)
    flip: bool | None = None             # None: the pipeline's default (flips for 32x32 RGB)
    mixup_alpha: float = 0.0             # mixup (Zhang et al. 2018) Beta(alpha, alpha); 0 = off


class ClassificationTask(Task):
    """`config.data.name` picks the dataset (offline: fashion_mnist_idx, digits_sklearn; online:
    any tfds image dataset); `config.model` the classifier (`model.name` + its fields)."""

    DataConfig = DataConfig

    def __init__(self, config):
        super().__init__(config)
        self.data_cfg = parse_section(DataConfig, config.data, "config.data")
        # Fails here, before any compile, when the dataset is missing (the error says how to get it).
        self.info = self.image_dataset_info(self.data_cfg)
        self.dtype = jnp.dtype(config.get("dtype", "float32"))
        self.model = self.build_registered_model(num_classes=self.info.num_classes,
                                                 dtype=self.dtype)

    def train_size(self) -> int:
        return self.info.num_examples[self.data_cfg.train_split]

    def eval_splits(self) -> tuple[str, ...]:
        return self.data_cfg.eval_splits

    def splits(self) -> tuple[str, ...]:
        return tuple(self.info.num_examples)

    def init_params(self, rng: jax.Array) -> Any:
        size = self.data_cfg.image_size
        h, w, c = self.info.image_shape
        dummy = jnp.zeros((1, size or h, size or w, c), jnp.float32)
        return self.model.init({"params": rng}, dummy, train=False)["params"]

    # -- data --
    def _iterator(self, split: str, train: bool, seed: int, process_index: int, process_count: int):
        cfg = self.data_cfg
        return data.make_iterator(
            cfg.name, split, global_batch_size=int(self.config.batch_size), train=train, seed=seed,
            process_index=process_index, process_count=process_count,
            data_dir=cfg.data_dir or None, image_size=cfg.image_size,
            # augmentation defaults (None) are the pipeline's: crop + flip for 32x32 RGB only
            crop_padding=cfg.crop_padding if train else 0,
            flip=cfg.flip if train else False)

    def train_iterator(self, *, seed, process_index, process_count):
        return self._iterator(self.data_cfg.train_split, True, seed, process_index, process_count)

    def eval_iterator(self, split, *, process_index, process_count):
        return self._iterator(split, False, 0, process_index, process_count)

    # -- losses --
    def loss(self, params, batch, rng, step):
        images, labels = batch["image"], batch["label"]
        targets = jax.nn.one_hot(labels, self.info.num_classes)
        alpha = self.data_cfg.mixup_alpha
        dropout_rng, mix_rng = jax.random.split(rng)
        if alpha > 0:
            # mixup (Zhang et al. 2018): blend each example with its neighbour in the batch.
            lam = jax.random.beta(mix_rng, alpha, alpha)
            images = lam * images + (1 - lam) * jnp.roll(images, 1, axis=0)
            targets = lam * targets + (1 - lam) * jnp.roll(targets, 1, axis=0)
        smoothing = float(self.config.get("label_smoothing", 0.0))
        if smoothing:
            targets = optax.smooth_labels(targets, smoothing)
        logits = self.model.apply({"params": params}, images, train=True,
                                  rngs={"dropout": dropout_rng}).astype(jnp.float32)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = (logits.argmax(-1) == labels).mean()
        return loss, {"accuracy": accuracy}

    def eval_sums(self, params, batch):
        logits = self.model.apply({"params": params}, batch["image"], train=False)
        logits = logits.astype(jnp.float32)
        mask = batch["mask"].astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        correct = (logits.argmax(-1) == batch["label"]).astype(jnp.float32)
        return {"loss": (nll * mask).sum(), "accuracy": (correct * mask).sum(), "count": mask.sum()}
