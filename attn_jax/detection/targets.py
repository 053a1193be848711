"""Host-side (NumPy) checks of a padded detection batch before it reaches a compiled step.

Padded layout (what `matching` and `set_loss` take): labels `[B, M]` int, boxes `[B, M, 4]` cxcywh
normalised to [0, 1], mask `[B, M]` bool or 0/1 (True = a real object); values in padded slots
are ignored everywhere. `attn_jax.data.batcher.pad_to_count` pads per-image objects to this layout
(`attn_jax.data.datasets.scenes.detection_batch` is an example: 'boxes', 'labels', 'box_mask').
"""

from __future__ import annotations

import numpy as np

# Normalised coordinates computed in float32 can land a rounding error outside [0, 1].
_RANGE_TOL = 1e-5


def validate_targets(
    boxes: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    num_classes: int,
    num_queries: int,
) -> None:
    """Raises ValueError, naming the problem, image and slot, unless a padded batch is valid.

    Checks shapes (boxes `[..., M, 4]`, labels and mask `[..., M]`), M <= num_queries, and for the
    real (masked) objects: class ids in [0, num_classes), finite cxcywh boxes with width and height
    >= 0 (zero is allowed: degenerate boxes are handled) and corners inside [0, 1] (normalised).
    Runs on host NumPy values; call it in the input pipeline (set_loss calls it when its targets
    are concrete, i.e. outside jit).
    """
    boxes, labels, mask = np.asarray(boxes), np.asarray(labels), np.asarray(mask)
    if labels.ndim < 1 or mask.shape != labels.shape or boxes.shape != labels.shape + (4,):
        raise ValueError(
            f"targets must be boxes [..., M, 4], labels [..., M], mask [..., M]; got boxes "
            f"{boxes.shape}, labels {labels.shape}, mask {mask.shape}"
        )
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ValueError(f"mask must be boolean (or 0/1), got values {np.unique(mask)[:8]}")
    mask = mask.astype(bool)
    m = labels.shape[-1]
    counts = mask.sum(-1)
    if m > num_queries:
        raise ValueError(
            f"more objects than queries: targets are padded to M={m} slots (largest real "
            f"count {int(counts.max()) if counts.size else 0}) but the model has "
            f"num_queries={num_queries}; M must be <= num_queries"
        )

    def where(bad):
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        return f"{int(bad.sum())} object(s), first at index {first} (batch..., slot)"

    bad = mask & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        first = tuple(np.argwhere(bad)[0])
        raise ValueError(
            f"class id out of range [0, {num_classes}): {where(bad)} has label {labels[first]}"
        )
    bad = mask & ~np.isfinite(boxes).all(-1)
    if bad.any():
        raise ValueError(f"non-finite box: {where(bad)}")
    bad = mask & ((boxes[..., 2] < 0) | (boxes[..., 3] < 0))
    if bad.any():
        first = tuple(np.argwhere(bad)[0])
        raise ValueError(
            f"negative box size (cxcywh width/height): {where(bad)} is {boxes[first].tolist()}"
        )
    cx, cy, w, h = np.moveaxis(boxes.astype(np.float64), -1, 0)
    corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    bad = mask & ((corners < -_RANGE_TOL) | (corners > 1 + _RANGE_TOL)).any(-1)
    if bad.any():
        first = tuple(np.argwhere(bad)[0])
        raise ValueError(
            f"box outside the normalised image [0, 1] (cxcywh, divide by the image size): "
            f"{where(bad)} is {boxes[first].tolist()}, corners {corners[first].tolist()}"
        )
