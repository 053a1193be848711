"""COCO-style detection mAP through `pycocotools` (Lin et al. 2014, "Microsoft COCO", and the
COCO detection evaluation: AP averaged over IoU thresholds 0.50:0.05:0.95, 101 recall points,
at most 100 detections per image).

    coco_map(gt, predictions) -> {'AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large',
                                  'AR1', 'AR10', 'AR100', 'AR_small', 'AR_medium', 'AR_large'}

`gt` is a COCO detection dict (or a path to its JSON), e.g. `attn_jax.data.datasets.scenes.
coco_dict`; `predictions` a list of {'image_id', 'category_id', 'bbox' [x, y, w, h] pixels,
'score'} (or a path to their JSON). pycocotools' printed summary is captured, not printed
(`coco_evaluate` returns it). A value of -1 is pycocotools' "no ground truth in this area range".

`detections_to_coco` turns a detector's outputs (class logits with a last "no object" class and
normalised (cx, cy, w, h) boxes, as DETR's) into such predictions, as the official DETR
`PostProcess`: score = the largest softmax probability over the real classes, label its argmax,
boxes scaled to the image's pixels; all queries, or each image's `top_k` best.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def _load(obj: Any) -> Any:
    if isinstance(obj, (str, os.PathLike)):
        return json.loads(pathlib.Path(obj).read_text())
    return obj


def _check_gt(gt: Any) -> dict[str, Any]:
    if not isinstance(gt, dict) or not all(k in gt for k in ("images", "annotations",
                                                               "categories")):
        raise ValueError("gt must be a COCO detection dict with 'images', 'annotations' and "
                         f"'categories', got {type(gt).__name__} with keys "
                         f"{sorted(gt) if isinstance(gt, dict) else None}")
    gt = copy.deepcopy(gt)
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    for i, ann in enumerate(gt["annotations"]):  # the fields COCOeval reads, with COCO defaults
        if len(ann.get("bbox", ())) != 4:
            raise ValueError(f"gt annotation {i} has no bbox [x, y, w, h]: {ann}")
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    return gt


def _check_predictions(predictions: Any, gt: dict[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(predictions, (list, tuple)):
        raise ValueError(f"predictions must be a list of dicts, got {type(predictions).__name__}")
    image_ids = {img["id"] for img in gt["images"]}
    out = []
    for i, p in enumerate(predictions):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in p]
        if missing or len(p["bbox"]) != 4:
            raise ValueError(f"prediction {i} needs image_id, category_id, bbox [x, y, w, h] "
                             f"and score; got {p}")
        if p["image_id"] not in image_ids:
            raise ValueError(f"prediction {i} has image_id {p['image_id']!r}, not an image of gt")
        out.append({"image_id": p["image_id"], "category_id": int(p["category_id"]),
                    "bbox": [float(v) for v in p["bbox"]], "score": float(p["score"])})
    return out


def coco_evaluate(gt: dict[str, Any] | str | os.PathLike,
                  predictions: Sequence[dict[str, Any]] | str | os.PathLike,
                  *, image_ids: Sequence[int] | None = None
                  ) -> tuple[dict[str, float], str]:
    """COCOeval('bbox') of `predictions` against `gt` over `image_ids` (default: every image of
    gt): (the 12 summary numbers by `STAT_NAMES`, pycocotools' printed summary)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _check_gt(_load(gt))
    predictions = _check_predictions(_load(predictions), gt)
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if predictions:
            coco_dt = coco_gt.loadRes(predictions)
        else:  # loadRes refuses an empty list; no detections is a valid (zero) result
            coco_dt = COCO()
            coco_dt.dataset = {**gt, "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(STAT_NAMES, map(float, evaluator.stats))), log.getvalue()


def coco_map(gt: dict[str, Any] | str | os.PathLike,
             predictions: Sequence[dict[str, Any]] | str | os.PathLike,
             *, image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """The COCO summary numbers (`STAT_NAMES`: AP, AP50, AP75, AP by area, AR@1/10/100, AR by
    area) of `predictions` against `gt` (dicts or JSON paths); nothing is printed."""
    return coco_evaluate(gt, predictions, image_ids=image_ids)[0]


def cxcywh_to_xywh(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Normalised (cx, cy, w, h) `[..., 4]` -> COCO pixel boxes (x_min, y_min, w, h)."""
    boxes = np.asarray(boxes, np.float64)
    scale = np.array([width, height, width, height])
    cx, cy, w, h = np.moveaxis(boxes * scale, -1, 0)
    return np.stack([cx - w / 2, cy - h / 2, w, h], axis=-1)


def detections_to_coco(logits: Any, boxes: Any, image_ids: Sequence[int],
                       image_sizes: Sequence[Sequence[float]], *, top_k: int | None = None,
                       from_logits: bool = True,
                       category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """A detector's outputs as COCO predictions (the official DETR `PostProcess`).

    Args:
      logits: `[batch, queries, classes + 1]`, the last class being "no object"; class
        probabilities instead with `from_logits=False`.
      boxes: `[batch, queries, 4]` normalised (cx, cy, w, h).
      image_ids: `[batch]` COCO image ids.
      image_sizes: `[batch, 2]` (height, width) in pixels of each image.
      top_k: keep each image's k highest-scoring queries (None: all queries, as DETR).
      category_ids: COCO category id of each class index (default: index + 1, the scenes
        dataset's `category_id = label + 1`).

    Returns:
      [{'image_id', 'category_id', 'bbox' [x, y, w, h] pixels, 'score'}] with score the largest
      real-class probability of a query and category its argmax.
    """
    scores = np.asarray(logits, np.float64)
    boxes = np.asarray(boxes, np.float64)
    if scores.ndim != 3 or scores.shape[-1] < 2 or boxes.shape != scores.shape[:2] + (4,):
        raise ValueError(f"logits must be [batch, queries, classes + 1] and boxes [batch, "
                         f"queries, 4]; got {scores.shape} and {boxes.shape}")
    sizes = np.asarray(image_sizes, np.float64)
    if len(image_ids) != scores.shape[0] or sizes.shape != (scores.shape[0], 2):
        raise ValueError(f"image_ids ({len(image_ids)}) and image_sizes {sizes.shape} must give "
                         f"one id and one (height, width) per image of the batch "
                         f"({scores.shape[0]})")
    num_classes = scores.shape[-1] - 1
    if category_ids is not None and len(category_ids) != num_classes:
        raise ValueError(f"category_ids has {len(category_ids)} entries for {num_classes} "
                         "classes")
    if from_logits:
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores = scores / scores.sum(-1, keepdims=True)
    labels = scores[..., :-1].argmax(-1)
    best = scores[..., :-1].max(-1)
    out = []
    for b, image_id in enumerate(image_ids):
        xywh = cxcywh_to_xywh(boxes[b], sizes[b, 0], sizes[b, 1])
        order = np.argsort(-best[b], kind="stable")
        for q in order[:top_k]:
            label = int(labels[b, q])
            out.append({"image_id": int(image_id),
                        "category_id": int(category_ids[label]) if category_ids is not None
                        else label + 1,
                        "bbox": [float(v) for v in xywh[q]], "score": float(best[b, q])})
    return out


def write_coco_json(path: str | os.PathLike, obj: dict[str, Any] | Sequence[dict[str, Any]]
                    ) -> pathlib.Path:
    """Writes a COCO GT dict or a predictions list as JSON (what pycocotools' `COCO(path)` and
    `loadRes(path)` read) and returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj if isinstance(obj, dict) else list(obj)))
    return path
