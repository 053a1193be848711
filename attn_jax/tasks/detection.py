"""Set-prediction object detection with DETR (Carion et al. 2020, arXiv:2005.12872).

`config.data.dataset`:
  * 'scenes' / 'scenes_digits' (offline): canvases of min_items..max_items Fashion-MNIST items
    (64x64 by default; IDX files in source_dir) or scikit-learn digits (32x32) with their boxes
    and classes (`attn_jax.data.datasets.scenes`: train_size / validation_size / test_size scenes
    from seed, canvas_size). Targets are padded to max_objects slots (0 = max_items).
  * 'coco' (tfds coco/2017, prepared as ArrayRecord in data_dir; `attn_jax.data.datasets.coco`):
    80 classes, images resized to a longer side of canvas_size (0 = 800) and padded to a
    square canvas with a 'pixel_mask' that the model takes; targets padded to max_objects
    (0 = 100) slots; splits 'train' and 'validation'.

Batches: {'image' [b, H, W, 1 or 3], 'boxes' [b, m, 4] normalised cxcywh, 'labels' [b, m] in
[0, num_classes), 'box_mask' bool [b, m], 'mask' [b]} (+ 'pixel_mask' [b, H, W] for COCO). Every batch is checked on the host
(`attn_jax.detection.validate_targets`: boxes inside the image with sizes >= 0, class ids in
range, m <= num_queries) when it is built, before it reaches a compiled step.

Training minimises the Hungarian set loss summed over the decoder layers (`set_loss_with_aux`
on [aux layers..., final] stacked: CE with no-object weight eos_coef, L1 and GIoU box losses,
the paper's weights 1 / 5 / 2); its components are logged. The 'loss' evaluator reports the same
loss on eval splits (per image); the 'coco_map' evaluator (`attn_jax.eval.evaluators`) runs `predict_fn` over
`detection_batches` for COCO predictions and asks `coco_gt` for the split's ground truth.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.data import batcher
from attn_jax.data.datasets import coco, scenes
from attn_jax.detection import set_loss_with_aux, validate_targets
from attn_jax.tasks.base import Task
from attn_jax.train.config import parse_section

SCENE_SOURCES = {"scenes": "fashion_mnist", "scenes_digits": "digits"}
DATASETS = (*SCENE_SOURCES, "coco")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """config.data of the detection task."""

    dataset: str = "scenes"              # 'scenes' | 'scenes_digits' | 'coco'
    train_size: int = 50_000             # scenes per split (COCO: its own sizes)
    validation_size: int = 1000
    test_size: int = 1000
    seed: int = 0
    canvas_size: int = 0                 # 0 = the default (64 Fashion-MNIST, 32 digits, 800 COCO)
    min_items: int = 1
    max_items: int = 4
    max_objects: int = 0                 # target slots per image; 0 = max_items (COCO: 100)
    min_scale: float = 1.0               # COCO training: longer side random in [min_scale, 1] * S
    flip: bool = False                   # COCO training: random horizontal flips
    crop: bool = False                   # COCO training: DETR's random size crop, p = 1/2
    source_dir: str = ""                 # Fashion-MNIST IDX files; "" = the default place
    data_dir: str = ""                   # tfds data dir (coco)
    eval_splits: tuple[str, ...] = ("validation",)
    # the set loss (Carion et al. 2020, sec. 3.1 and A.2): loss weights, matching costs
    eos_coef: float = 0.1
    weight_ce: float = 1.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    matcher: str = "optax"               # 'optax' (on device) or 'scipy' (host callback)


class DetectionTask(Task):
    """DETR (`config.model.name='detr'` + its fields; num_classes comes from the data)."""

    DataConfig = DataConfig
    EVALUATOR_TYPES = frozenset({"loss", "coco_map"})

    def __init__(self, config):
        super().__init__(config)
        self.data_cfg = cfg = parse_section(DataConfig, config.data, "config.data")
        if cfg.dataset not in DATASETS:
            raise ValueError(f"config.data.dataset={cfg.dataset!r}: choose one of {DATASETS}")
        self.check_data_dirs(cfg)
        self.is_coco = cfg.dataset == "coco"
        self.max_objects = int(cfg.max_objects) or (100 if self.is_coco else int(cfg.max_items))
        self._sources: dict[str, Any] = {}
        train = self.source("train")
        self.num_classes = train.num_classes
        self.image_shape = train.image_shape
        self.dtype = jnp.dtype(config.get("dtype", "float32"))
        self.model = self.build_registered_model(num_classes=self.num_classes, dtype=self.dtype)

    # -- checks -------------------------------------------------------------------------------
    def validate(self) -> None:
        cfg = self.data_cfg
        self.check_splits(tuple(cfg.eval_splits), "config.data.eval_splits")
        if not self.is_coco and (cfg.flip or cfg.crop or cfg.min_scale != 1.0):
            raise ValueError(f"config.data.flip={cfg.flip} / crop={cfg.crop} / min_scale="
                             f"{cfg.min_scale} augment COCO only; the scenes are not augmented "
                             "(set flip=False, crop=False, min_scale=1.0)")
        if not self.is_coco and self.max_objects < cfg.max_items:
            raise ValueError(f"config.data.max_objects={cfg.max_objects} is below max_items="
                             f"{cfg.max_items}: a scene could not be padded to it")
        queries = int(self.model.num_queries)
        if self.max_objects > queries:
            raise ValueError(f"config.data.max_objects={self.max_objects} (targets per image) is "
                             f"more than config.model.num_queries={queries}: DETR predicts one "
                             "object per query; raise num_queries or lower max_items/max_objects")
        if cfg.matcher not in ("optax", "scipy"):
            raise ValueError(f"config.data.matcher={cfg.matcher!r}: choose 'optax' or 'scipy'")
        self.model.grid_shape(self.image_shape)  # the backbone's grid of this canvas

    def check_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`validate_targets` on a host batch (ValueError naming image and slot), returned."""
        validate_targets(batch["boxes"], batch["labels"], batch["box_mask"], self.num_classes,
                         int(self.model.num_queries))
        return batch

    # -- data ---------------------------------------------------------------------------------
    def source(self, split: str) -> scenes.SceneDetection | coco.CocoDetection:
        """The split's detection source: `scenes.SceneDetection`, or `coco.CocoDetection` for
        'coco'; both serve `detection_batch(indices, drawn)`, `coco_dict(max_images)`, `draw`
        and `augments`, so the rest of the task does not ask which."""
        if split not in self._sources:
            cfg = self.data_cfg
            if self.is_coco:
                self._sources[split] = coco.CocoDetection(
                    split, cfg.data_dir or None, image_size=int(cfg.canvas_size) or 800,
                    max_objects=self.max_objects, min_scale=float(cfg.min_scale),
                    flip=bool(cfg.flip), crop=bool(cfg.crop))
            else:
                self._sources[split] = scenes.SceneDetection(scenes.Scenes(
                    split, source=SCENE_SOURCES[cfg.dataset],
                    num_examples=int(getattr(cfg, f"{split}_size")),
                    canvas_size=int(cfg.canvas_size) or None, min_items=int(cfg.min_items),
                    max_items=int(cfg.max_items), seed=int(cfg.seed),
                    source_dir=cfg.source_dir or None), self.max_objects)
        return self._sources[split]

    def splits(self) -> tuple[str, ...]:
        return tuple(self.source("train").SPLITS)

    def eval_splits(self) -> tuple[str, ...]:
        return tuple(self.data_cfg.eval_splits)

    def train_size(self) -> int:
        return len(self.source("train"))

    def _collate(self, split_source: Any, indices: Any, drawn: Any = None
                 ) -> dict[str, np.ndarray]:
        return self.check_batch(split_source.detection_batch(indices, drawn))

    def batch(self, split: str, indices: Any) -> dict[str, np.ndarray]:
        """The host batch of the examples `indices` (a list, or a `batcher.IndexBatch`) of
        `split`, checked (`check_batch`)."""
        return self._collate(self.source(split), indices)

    def _dataset(self, split: str, train: bool, seed: int, process_index: int,
                 process_count: int, num_examples: int | None = None):
        split_source = self.source(split)
        n = len(split_source) if num_examples is None else min(num_examples, len(split_source))
        draw = split_source.draw if split_source.augments else None
        return batcher.batched_dataset(
            n, int(self.config.batch_size), functools.partial(self._collate, split_source),
            train=train, seed=seed, order="epochs", process_index=process_index,
            process_count=process_count, draw=draw)

    def train_iterator(self, *, seed, process_index, process_count):
        return batcher.batch_iterator(self._dataset("train", True, seed, process_index,
                                                    process_count))

    def eval_iterator(self, split, *, process_index, process_count, num_examples=None):
        return batcher.batch_iterator(self._dataset(split, False, 0, process_index,
                                                    process_count, num_examples))

    # -- model and losses ---------------------------------------------------------------------
    def init_params(self, rng):
        dummy = jnp.zeros((1, *self.image_shape), jnp.float32)
        return self.model.init({"params": rng}, dummy, train=False)["params"]

    def _losses(self, outputs: dict[str, Any], batch) -> dict[str, jax.Array]:
        layers = [*outputs["aux"], outputs]
        logits = jnp.stack([o["logits"] for o in layers]).astype(jnp.float32)
        boxes = jnp.stack([o["boxes"] for o in layers]).astype(jnp.float32)
        box_mask = batch["box_mask"].astype(bool) & (batch["mask"][:, None] > 0)
        cfg = self.data_cfg
        return set_loss_with_aux(
            logits, boxes, batch["labels"], batch["boxes"], box_mask, eos_coef=cfg.eos_coef,
            weight_ce=cfg.weight_ce, weight_bbox=cfg.weight_bbox, weight_giou=cfg.weight_giou,
            cost_class=cfg.cost_class, cost_bbox=cfg.cost_bbox, cost_giou=cfg.cost_giou,
            backend=cfg.matcher, image_mask=batch["mask"])

    def loss(self, params, batch, rng, step):
        outputs = self.model.apply({"params": params}, batch["image"],
                                   pixel_mask=batch.get("pixel_mask"), train=True,
                                   rngs={"dropout": rng})
        out = self._losses(outputs, batch)
        loss = out.pop("loss")
        return loss, out

    def eval_sums(self, params, batch):
        """The set loss and its final-layer components, times the real images of the batch
        (the loss is a per-box mean over the batch, so the evaluator's mean is per-image
        weighted); 'count' = real images. The filler images of a split's last padded batch
        are masked out of the loss (`image_mask`), so every batch's loss is its real images'."""
        outputs = self.model.apply({"params": params}, batch["image"],
                                   pixel_mask=batch.get("pixel_mask"), train=False)
        out = self._losses(outputs, batch)
        count = batch["mask"].astype(jnp.float32).sum()
        keys = ("loss", "loss_ce", "loss_bbox", "loss_giou", "cardinality_error")
        return {**{k: out[k] * count for k in keys}, "count": count}

    def default_evals(self) -> dict[str, dict[str, Any]]:
        return {"loss": {"type": "loss"}, "coco_map": {"type": "coco_map"}}

    # -- predictions (the coco_map evaluator) -------------------------------------------------
    def coco_gt(self, split: str, max_images: int = 0) -> dict[str, Any]:
        """The COCO ground-truth dict of the first `max_images` (0 = all) images of `split`
        (scenes: image id = scene index, category id = label + 1; COCO: its own ids, in
        original pixels)."""
        return self.source(split).coco_dict(max_images or None)

    def predict_fn(self):
        """(params, images [b, H, W, C], pixel_mask [b, H, W] or None) -> {'logits' [b, N,
        C + 1], 'boxes' [b, N, 4]}: what `attn_jax.eval.evaluators.predict_detections` jits
        and runs over `detection_batches`."""
        def predict(params, images, pixel_mask=None):
            out = self.model.apply({"params": params}, images, pixel_mask=pixel_mask,
                                   train=False)
            return {"logits": out["logits"], "boxes": out["boxes"]}

        return predict

    def detection_batches(self, split: str, max_images: int = 0, *, process_index: int = 0,
                          process_count: int = 1):
        """One padded pass of host batches over the images of `coco_gt(split, max_images)`,
        in its order (image id = position)."""
        return self.eval_iterator(split, process_index=process_index,
                                  process_count=process_count, num_examples=max_images or None)

    @property
    def class_names(self) -> Sequence[str]:
        return self.source("train").class_names
