"""COCO 2017 object detection (Lin et al. 2014) from tfds `coco/2017`, for DETR.

    coco = CocoDetection('validation', data_dir, image_size=800, max_objects=100)
    batch = coco.detection_batch([0, 1, 2])      # images padded to 800x800 with a pixel mask
    gt = coco.coco_dict(max_images=500)          # the COCO ground truth of the first 500 images

The dataset is read as ArrayRecord (no TensorFlow at run time), prepared once where TensorFlow
and the network are: `tfds build coco/2017 --file_format=array_record --data_dir=DIR`. It is
opened from its files (`tfds.builder_from_directory` on `DIR/coco/2017/<newest version>`), so
reading needs neither TensorFlow nor tfds' coco builder code.

Each image is resized (bilinear, PIL) so that its longer side is `image_size`, keeping its
aspect ratio, placed at the top left of an `image_size x image_size` canvas, and the rest padded
with zeros; `pixel_mask` marks the real pixels (DETR masks the padded feature cells out of its
attention, `attn_jax.models.detr`). Target boxes are normalised cxcywh relative to the real
(unpadded) image, as the official DETR's, so a prediction times the original (height, width)
is a box in the original pixels: the COCO ground truth (`coco_dict`) stays in original pixels
with COCO's own areas, and AP small / medium / large keep their meaning.

Training targets follow the official DETR's `ConvertCocoPolysToMask`: crowd annotations and
boxes that are empty after clipping to the image are dropped. Labels are tfds' contiguous
0..79; `COCO_CATEGORY_IDS[label]` is the COCO category id.

Training augmentation (`draw` + `detection_batch(indices, drawn)`, drawn per step by the
batcher, so a resumed run sees the same images):
- with `crop`, the official DETR's random size crop with probability 1/2: the image's shorter
  side is taken to 400, 500 or 600 px, a crop of 384-600 px on each side (at most the side) is
  placed uniformly, and the crop, in the original image's pixels, becomes the image; boxes are
  clipped to it and those left empty dropped (the official `crop`);
- with `flip`, a horizontal flip with probability 1/2;
- with min_scale < 1, a random scale: the longer side uniform in [min_scale * image_size,
  image_size] (the paper's multi-scale training in spirit; it resizes the shorter side to
  480-800 px).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from attn_jax.data import batcher

NAME = "coco/2017"
SPLITS = ("train", "validation")   # tfds coco/2017's 'test' split has no annotations

# COCO's 80 category ids in tfds' label order (sorted ids; 91 ids with 11 unused).
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
    28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
    54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
    81, 82, 84, 85, 86, 87, 88, 89, 90)


# The official DETR's RandomResize(CROP_SHORTER) + RandomSizeCrop(CROP_MIN, CROP_MAX).
CROP_SHORTER = (400, 500, 600)
CROP_MIN, CROP_MAX = 384, 600


def crop_window(height: int, width: int, u: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) in an image's original pixels of the official random size crop drawn
    from six uniform numbers u in [0, 1), or None (no crop) when u[0] >= 1/2."""
    if not u[0] < 0.5:
        return None
    shorter = CROP_SHORTER[min(int(u[1] * len(CROP_SHORTER)), len(CROP_SHORTER) - 1)]
    factor = shorter / min(height, width)
    # the resized size as the official get_size_with_aspect_ratio rounds it (int, not round)
    rh, rw = (shorter, int(shorter * width / height)) if height <= width else (
        int(shorter * height / width), shorter)

    def pick(v: float, count: int) -> int:  # randint(0, count - 1) from a uniform number
        return min(int(v * count), count - 1)

    ch = CROP_MIN + pick(u[2], min(rh, CROP_MAX) - CROP_MIN + 1)
    cw = CROP_MIN + pick(u[3], min(rw, CROP_MAX) - CROP_MIN + 1)
    i, j = pick(u[4], rh - ch + 1), pick(u[5], rw - cw + 1)
    y0, x0 = min(round(i / factor), height - 1), min(round(j / factor), width - 1)
    y1 = min(max(round((i + ch) / factor), y0 + 1), height)
    x1 = min(max(round((j + cw) / factor), x0 + 1), width)
    return y0, x0, y1, x1


def crop_boxes(boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int],
               window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (cxcywh relative to an image of `size` (h, w)) and labels after cropping it to
    `window` (y0, x0, y1, x1 px): clipped to the crop, relative to it; boxes left empty dropped."""
    h, w = size
    y0, x0, y1, x1 = window
    cx, cy, bw, bh = boxes.T
    left = np.clip((cx - bw / 2) * w - x0, 0, x1 - x0)
    right = np.clip((cx + bw / 2) * w - x0, 0, x1 - x0)
    top = np.clip((cy - bh / 2) * h - y0, 0, y1 - y0)
    bottom = np.clip((cy + bh / 2) * h - y0, 0, y1 - y0)
    keep = (right > left) & (bottom > top)
    cw, ch = x1 - x0, y1 - y0
    out = np.stack([(left + right) / 2 / cw, (top + bottom) / 2 / ch, (right - left) / cw,
                    (bottom - top) / ch], -1)[keep]
    return out.astype(np.float32).reshape(-1, 4), labels[keep]


class CocoNotPreparedError(FileNotFoundError):
    """tfds coco/2017 is not in data_dir as ArrayRecord."""


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split("."))


def dataset_dir(data_dir: str | os.PathLike | None) -> str:
    """`data_dir/coco/2017/<newest version>` (data_dir None: $TFDS_DATA_DIR, else
    ~/tensorflow_datasets): the prepared dataset's directory. Raises
    CocoNotPreparedError naming the place looked in and the command that prepares it."""
    root = os.path.expanduser(str(data_dir or os.environ.get("TFDS_DATA_DIR")
                                  or os.path.join("~", "tensorflow_datasets")))
    base = os.path.join(root, *NAME.split("/"))
    versions = []
    if os.path.isdir(base):
        for entry in os.listdir(base):
            try:
                key = _version_key(entry)
            except ValueError:
                continue
            if os.path.exists(os.path.join(base, entry, "dataset_info.json")):
                versions.append((key, entry))
    if not versions:
        raise CocoNotPreparedError(
            f"tfds {NAME} is not prepared in {root} (no {base}/<version>/dataset_info.json). "
            f"Prepare it once where TensorFlow and the network are: `tfds build {NAME} "
            f"--file_format=array_record --data_dir={root}`, then pass "
            f"config.data.data_dir={root}")
    return os.path.join(base, max(versions)[1])


def open_split(split: str, data_dir: str | os.PathLike | None) -> tuple[Sequence[Any], Any]:
    """(random-access records of `split`, the DatasetInfo) of the prepared coco/2017."""
    import tensorflow_datasets as tfds

    if split not in SPLITS:
        raise ValueError(f"{NAME} has annotated splits {SPLITS}, got {split!r}")
    builder = tfds.builder_from_directory(dataset_dir(data_dir))
    if split not in builder.info.splits:
        raise CocoNotPreparedError(f"{builder.data_dir} holds splits "
                                   f"{list(builder.info.splits)}, not {split!r}")
    if builder.info.file_format.value != "array_record":
        raise CocoNotPreparedError(
            f"{builder.data_dir} is stored as {builder.info.file_format.value}; random access "
            f"needs ArrayRecord: rebuild with `tfds build {NAME} --file_format=array_record`")
    return builder.as_data_source(split), builder.info


def _column(objects: dict[str, Any], key: str, dtype: Any, shape: tuple[int, ...] = ()
            ) -> np.ndarray:
    values = objects.get(key, [])
    return np.asarray(values, dtype).reshape((-1, *shape))


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


class CocoDetection:
    """One split of COCO 2017 for detection (the module docstring). Indexable like
    `attn_jax.data.datasets.scenes.Scenes` for the detection task."""

    def __init__(self, split: str, data_dir: str | os.PathLike | None, *, image_size: int = 800,
                 max_objects: int = 100, num_examples: int | None = None,
                 min_scale: float = 1.0, flip: bool = False, crop: bool = False,
                 source: Sequence[Any] | None = None, info: Any = None):
        if image_size < 32:
            raise ValueError(f"COCO image_size={image_size} must be >= 32 (the longer side of "
                             "the resized image and the canvas side)")
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"COCO min_scale={min_scale} must be in (0, 1]: the smallest "
                             "training size as a fraction of image_size")
        self.min_scale, self.flip, self.crop = float(min_scale), bool(flip), bool(crop)
        self.split = split
        self.image_size = int(image_size)
        self.max_objects = int(max_objects)
        if source is None:
            source, info = open_split(split, data_dir)
        self._source = source
        names = list(info.features["objects"]["label"].names) if info is not None else []
        self.class_names = tuple(names) if len(names) == len(COCO_CATEGORY_IDS) else tuple(
            str(c) for c in COCO_CATEGORY_IDS)
        n = len(source)
        self._len = n if num_examples is None else min(int(num_examples), n)

    num_classes = len(COCO_CATEGORY_IDS)
    SPLITS = SPLITS

    def __len__(self) -> int:
        return self._len

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, 3)

    def record(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self._len:
            raise IndexError(f"COCO {self.split} index {index} out of range [0, {self._len})")
        return self._source[index]

    # -- one image --------------------------------------------------------------------------
    def resized(self, image: np.ndarray, scale: float = 1.0, flip: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
        """(canvas float32 [S, S, 3] in [0, 1], pixel_mask bool [S, S]) of a uint8 image whose
        longer side becomes scale * S, mirrored left-right when flip."""
        from PIL import Image

        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim == 2:  # a greyscale JPEG
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"COCO image of shape {image.shape}: expected [H, W, 3]")
        h, w = image.shape[:2]
        factor = min(self.image_size, round(scale * self.image_size)) / max(h, w)
        nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
        small = np.asarray(Image.fromarray(image.astype(np.uint8)).resize(
            (nw, nh), Image.BILINEAR), np.float32) / 255.0
        if flip:
            small = small[:, ::-1]
        canvas = np.zeros(self.image_shape, np.float32)
        canvas[:nh, :nw] = small
        mask = np.zeros(self.image_shape[:2], bool)
        mask[:nh, :nw] = True
        return canvas, mask

    def targets(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(boxes float32 [n, 4] cxcywh normalised to the image, labels int32 [n]) of the
        training targets: crowd and (after clipping) empty boxes dropped."""
        objects = record["objects"]
        bbox = np.clip(_column(objects, "bbox", np.float32, (4,)), 0.0, 1.0)  # ymin xmin ymax xmax
        labels = _column(objects, "label", np.int64)
        crowd = _column(objects, "is_crowd", bool)
        keep = ~crowd & (bbox[:, 2] > bbox[:, 0]) & (bbox[:, 3] > bbox[:, 1])
        y0, x0, y1, x1 = bbox[keep].T
        boxes = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1)
        return boxes.astype(np.float32).reshape(-1, 4), labels[keep].astype(np.int32)

    # -- batches ----------------------------------------------------------------------------
    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """The training augmentation of n images: (scale float64 [n] in [min_scale, 1], flip
        bool [n], all False unless `flip`, and with `crop` the crop's uniform numbers [n, 6] for
        `crop_window`), for `detection_batch(indices, drawn)` (`batcher.host_batches` calls it
        once per step). Without `crop` no numbers are drawn for it, so the other draws stay
        those of a config without the key."""
        drawn = (rng.uniform(self.min_scale, 1.0, n), (rng.random(n) < 0.5) & self.flip)
        return drawn + (rng.random((n, 6)),) if self.crop else drawn

    @property
    def augments(self) -> bool:
        return self.min_scale < 1.0 or self.flip or self.crop

    def detection_batch(self, indices: Any, drawn: tuple[np.ndarray, ...] | None = None
                        ) -> batcher.Batch:
        """{'image' [b, S, S, 3], 'pixel_mask' bool [b, S, S], 'boxes' [b, m, 4], 'labels'
        [b, m], 'box_mask' bool [b, m]} with m = max_objects; `indices` a list of ints or a
        `batcher.IndexBatch` (filler rows: empty canvases, no objects, an all-False mask);
        `drawn` (from `draw`, one row per index) crops, flips and scales the images and their
        boxes.
        An image with more objects than max_objects raises a ValueError naming it."""
        if isinstance(indices, batcher.IndexBatch):
            real, size = indices.real(), len(indices.indices)
        else:
            real = [int(i) for i in indices]
            size = len(real)
        images = np.zeros((size, *self.image_shape), np.float32)
        masks = np.zeros((size, *self.image_shape[:2]), bool)
        boxes = [np.zeros((0, 4), np.float32)] * size
        labels = [np.zeros((0,), np.int32)] * size
        for row, index in enumerate(real):
            record = self.record(index)
            scale, flip = (1.0, False) if drawn is None else (drawn[0][row], bool(drawn[1][row]))
            image = np.asarray(record["image"])
            boxes[row], labels[row] = self.targets(record)
            window = None if drawn is None or len(drawn) < 3 else crop_window(
                *image.shape[:2], drawn[2][row])
            if window is not None:
                boxes[row], labels[row] = crop_boxes(boxes[row], labels[row], image.shape[:2],
                                                     window)
                image = image[window[0]:window[2], window[1]:window[3]]
            images[row], masks[row] = self.resized(image, scale, flip)
            if flip:  # boxes are relative to the real image: cx -> 1 - cx
                boxes[row] = boxes[row] * [-1, 1, 1, 1] + [1, 0, 0, 0]
            if len(boxes[row]) > self.max_objects:
                raise ValueError(
                    f"COCO {self.split} image {index} (id {int(record['image/id'])}) has "
                    f"{len(boxes[row])} objects, more than max_objects={self.max_objects}: "
                    "raise config.data.max_objects (and num_queries with it)")
        boxes, box_mask = batcher.pad_to_count(boxes, self.max_objects, dtype=np.float32,
                                               what="boxes")
        labels, _ = batcher.pad_to_count(labels, self.max_objects, dtype=np.int32,
                                         what="labels")
        return {"image": images, "pixel_mask": masks, "boxes": boxes, "labels": labels,
                "box_mask": box_mask > 0}

    # -- the ground truth -------------------------------------------------------------------
    def coco_dict(self, max_images: int | None = None) -> dict[str, Any]:
        """The first max_images (default all) images as a COCO detection dict in original
        pixels: image ids and annotation ids, areas and crowd flags are COCO's own (tfds keeps
        them), categories COCO's ids."""
        n = len(self) if max_images is None else min(int(max_images), len(self))
        images, annotations = [], []
        for i in range(n):
            record = self.record(i)
            h, w = np.asarray(record["image"]).shape[:2]
            image_id = int(record["image/id"])
            images.append({"id": image_id, "file_name": _text(record["image/filename"]),
                           "height": int(h), "width": int(w)})
            objects = record["objects"]
            bbox = _column(objects, "bbox", np.float64, (4,))
            ids = _column(objects, "id", np.int64)
            for k, (label, area, crowd) in enumerate(zip(
                    _column(objects, "label", np.int64), _column(objects, "area", np.int64),
                    _column(objects, "is_crowd", bool))):
                y0, x0, y1, x1 = bbox[k]
                annotations.append({
                    "id": int(ids[k]) if len(ids) > k else len(annotations) + 1,
                    "image_id": image_id, "category_id": COCO_CATEGORY_IDS[int(label)],
                    "bbox": [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h],
                    "area": float(area), "iscrowd": int(crowd)})
        return {"info": {"description": f"COCO 2017 {self.split} (tfds {NAME})",
                         "version": "1.0"},
                "images": images, "annotations": annotations,
                "categories": [{"id": c, "name": name, "supercategory": ""}
                               for c, name in zip(COCO_CATEGORY_IDS, self.class_names)]}
