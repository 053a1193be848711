"""Image classification: softmax cross-entropy, label smoothing, mixup, top-1 accuracy."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from attn_jax import data
from attn_jax.models import build_model
from attn_jax.tasks.base import Task

DATA_KEYS = {"name", "data_dir", "train_split", "eval_splits", "crop_padding", "flip", "image_size",
             "mixup_alpha"}


class ClassificationTask(Task):
    """`config.data.name` picks the dataset (offline: fashion_mnist_idx, digits_sklearn; online:
    any tfds image dataset); `config.model` the classifier (`model.name` + its fields)."""

    def __init__(self, config):
        super().__init__(config)
        unknown = set(config.data) - DATA_KEYS
        if unknown:
            raise ValueError(f"config.data has unknown keys {sorted(unknown)}; "
                             f"classification knows {sorted(DATA_KEYS)}")
        if "name" not in config.data:
            raise ValueError("config.data.name is required (e.g. 'fashion_mnist_idx')")
        # Fails here, before any compile, when the dataset is missing (the error says how to get it).
        self.info = data.dataset_info(config.data.name,
                                      data_dir=config.data.get("data_dir") or None)
        self.dtype = jnp.dtype(config.get("dtype", "float32"))
        self.model = self.build_model()

    def train_size(self) -> int:
        return self.info.num_examples[self.config.data.get("train_split", "train")]

    def eval_splits(self) -> tuple[str, ...]:
        return tuple(self.config.data.get("eval_splits", ("test",)))

    def build_model(self) -> nn.Module:
        kwargs = dict(self.config.model)
        name = kwargs.pop("name", None)
        if name is None:
            raise ValueError("config.model.name is required (e.g. 'vit')")
        return build_model(name, num_classes=self.info.num_classes, dtype=self.dtype, **kwargs)

    def init_params(self, rng: jax.Array) -> Any:
        size = self.config.data.get("image_size")
        h, w, c = self.info.image_shape
        dummy = jnp.zeros((1, size or h, size or w, c), jnp.float32)
        return self.model.init({"params": rng}, dummy, train=False)["params"]

    # -- data --
    def _iterator(self, split: str, train: bool, seed: int, process_index: int, process_count: int):
        cfg = self.config.data
        return data.make_iterator(
            cfg.name, split, global_batch_size=int(self.config.batch_size), train=train, seed=seed,
            process_index=process_index, process_count=process_count,
            data_dir=cfg.get("data_dir") or None, image_size=cfg.get("image_size"),
            # augmentation defaults (None) are the pipeline's: crop + flip for 32x32 RGB only
            crop_padding=cfg.get("crop_padding") if train else 0,
            flip=cfg.get("flip") if train else False)

    def train_iterator(self, *, seed, process_index, process_count):
        return self._iterator(self.config.data.get("train_split", "train"), True, seed,
                              process_index, process_count)

    def eval_iterator(self, split, *, process_index, process_count):
        return self._iterator(split, False, 0, process_index, process_count)

    # -- losses --
    def loss(self, params, batch, rng, step):
        images, labels = batch["image"], batch["label"]
        targets = jax.nn.one_hot(labels, self.info.num_classes)
        alpha = float(self.config.data.get("mixup_alpha", 0.0))
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
