"""Box formats, areas, IoU and generalized IoU (Rezatofighi et al. 2019, Algorithm 1).

Formats (last axis of size 4):
  cxcywh: (center x, center y, width, height), DETR's prediction/target format, normalised to
          [0, 1] by the image size.
  xyxy:   (x0, y0, x1, y1), top-left and bottom-right corners.
  coco:   (x0, y0, width, height), the COCO annotation format (`bbox` field), in pixels.

Every function takes any leading shape. The pairwise functions take `[..., n, 4]` and
`[..., m, 4]` and return `[..., n, m]`; the `*_elementwise` ones take two broadcastable
`[..., 4]` and return `[...]` (the loss on matched pairs needs only the diagonal).

Degenerate boxes never give NaN (values or gradients): a box with x1 < x0 (or y1 < y0) counts as
zero size, IoU divides by max(union, EPS) and GIoU by max(enclosing area, EPS). So two
zero-area boxes, even identical ones, have IoU 0 and GIoU 0 (0 / EPS, and the enclosing term
(C - U) / max(C, EPS) = 0 when C == U == 0); boxes of positive area are unaffected (EPS = 1e-7 is
far below the smallest area a float32 normalised box meaningfully has, and identical boxes give
IoU exactly 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

EPS = 1e-7


def _check_last_axis(name: str, boxes: Array) -> None:
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {boxes.shape}")


def cxcywh_to_xyxy(boxes: Array) -> Array:
    """(cx, cy, w, h) -> (x0, y0, x1, y1). `[..., 4] -> [..., 4]`."""
    _check_last_axis("boxes", boxes)
    cx, cy, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def xyxy_to_cxcywh(boxes: Array) -> Array:
    """(x0, y0, x1, y1) -> (cx, cy, w, h). `[..., 4] -> [..., 4]`."""
    _check_last_axis("boxes", boxes)
    x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def coco_xywh_to_xyxy(boxes: Array) -> Array:
    """COCO (x0, y0, w, h) -> (x0, y0, x1, y1). `[..., 4] -> [..., 4]`."""
    _check_last_axis("boxes", boxes)
    x0, y0, w, h = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([x0, y0, x0 + w, y0 + h], axis=-1)


def xyxy_to_coco_xywh(boxes: Array) -> Array:
    """(x0, y0, x1, y1) -> COCO (x0, y0, w, h). `[..., 4] -> [..., 4]`."""
    _check_last_axis("boxes", boxes)
    x0, y0, x1, y1 = jnp.moveaxis(boxes, -1, 0)
    return jnp.stack([x0, y0, x1 - x0, y1 - y0], axis=-1)


def box_area(boxes: Array) -> Array:
    """Area (x1 - x0) * (y1 - y0) of xyxy boxes, `[..., 4] -> [...]`.

    As torchvision's `box_area`: an inverted box (x1 < x0 xor y1 < y0) has negative area; the IoU
    functions below clamp sides at 0 instead.
    """
    _check_last_axis("boxes", boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _clamped_area(boxes: Array) -> Array:
    w = jnp.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    h = jnp.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    return w * h


def _iou_parts(a: Array, b: Array) -> tuple[Array, Array, Array]:
    """(intersection, union, enclosing area) of broadcastable xyxy boxes `[..., 4]`."""
    area_a = _clamped_area(a)
    area_b = _clamped_area(b)
    lo = jnp.maximum(a[..., :2], b[..., :2])
    hi = jnp.minimum(a[..., 2:], b[..., 2:])
    wh = jnp.maximum(hi - lo, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a + area_b - inter
    # The enclosing box of the two (sides clamped, so an inverted box adds no area).
    lo_c = jnp.minimum(a[..., :2], b[..., :2])
    hi_c = jnp.maximum(a[..., 2:], b[..., 2:])
    wh_c = jnp.maximum(hi_c - lo_c, 0.0)
    enclosing = wh_c[..., 0] * wh_c[..., 1]
    return inter, union, enclosing


def box_iou_elementwise(a: Array, b: Array) -> tuple[Array, Array]:
    """IoU and union of matched xyxy boxes: broadcastable `[..., 4]` -> (`[...]`, `[...]`)."""
    _check_last_axis("a", a)
    _check_last_axis("b", b)
    inter, union, _ = _iou_parts(a, b)
    return inter / jnp.maximum(union, EPS), union


def generalized_box_iou_elementwise(a: Array, b: Array) -> Array:
    """GIoU = IoU - (C - U) / C of matched xyxy boxes, in [-1, 1]: `[..., 4]` -> `[...]`."""
    _check_last_axis("a", a)
    _check_last_axis("b", b)
    inter, union, enclosing = _iou_parts(a, b)
    iou = inter / jnp.maximum(union, EPS)
    return iou - (enclosing - union) / jnp.maximum(enclosing, EPS)


def _pairwise(a: Array, b: Array) -> tuple[Array, Array]:
    _check_last_axis("boxes1", a)
    _check_last_axis("boxes2", b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(
            f"pairwise boxes must be [..., n, 4] and [..., m, 4], got {a.shape}, {b.shape}"
        )
    return a[..., :, None, :], b[..., None, :, :]


def box_iou(boxes1: Array, boxes2: Array) -> tuple[Array, Array]:
    """Pairwise IoU of xyxy boxes.

    Args:
      boxes1: `[..., n, 4]` xyxy.
      boxes2: `[..., m, 4]` xyxy (leading axes broadcast with boxes1's).
    Returns:
      (iou `[..., n, m]`, union `[..., n, m]`).
    """
    return box_iou_elementwise(*_pairwise(boxes1, boxes2))


def generalized_box_iou(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise generalized IoU (Rezatofighi et al. 2019) of xyxy boxes.

    `[..., n, 4], [..., m, 4] -> [..., n, m]`, in [-1, 1].
    """
    return generalized_box_iou_elementwise(*_pairwise(boxes1, boxes2))
