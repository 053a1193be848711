"""DETR's set prediction loss (Carion et al. 2020, eq. 2 and appendix A.2), on padded targets.

For one decoder layer, after the Hungarian matching (`matching.hungarian_match`):

  loss_ce   = weighted mean over all B * N queries of -log softmax(logits)[target class], the target
              class being the matched object's label or, for unmatched queries, the no-object
              class (index num_classes) with weight eos_coef = 0.1, others weight 1; i.e.
              sum_q w_q CE_q / sum_q w_q, as torch's `cross_entropy(weight=empty_weight)` in the
              official `SetCriterion.loss_labels`.
  loss_bbox = sum over matched pairs of ||box_pred - box_tgt||_1 (cxcywh) / num_boxes.
  loss_giou = sum over matched pairs of (1 - GIoU) / num_boxes.
  loss      = 1 * loss_ce + 5 * loss_bbox + 2 * loss_giou.

num_boxes = max(1, number of real boxes in the whole batch). Under jit with the batch sharded over
devices, `jnp.sum(tgt_mask)` over the global batch array is already the global count (the
official code all-reduces it), so every device normalises by the same number; likewise the CE is
one weighted mean over the global batch. (The official code takes its CE mean per GPU and averages
the GPUs, which differs slightly when GPUs hold different numbers of no-object queries.)

`set_loss_with_aux` applies the same loss, each with its own matching, to every decoder layer's
outputs (the auxiliary decoding losses, sec. 3.2) and sums them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.detection.boxes import cxcywh_to_xyxy, generalized_box_iou_elementwise
from attn_jax.detection.matching import (
    _check_shapes,
    _fill_padded_boxes,
    hungarian_match,
)
from attn_jax.detection.targets import validate_targets
from attn_jax.losses import cross_entropy_with_label_smoothing

Array = jax.Array

COMPONENTS = ("loss_ce", "loss_bbox", "loss_giou")


def _layer_losses(
    pred_logits: Array,
    pred_boxes: Array,
    tgt_labels: Array,
    tgt_boxes: Array,
    tgt_mask: Array,
    num_boxes: Array,
    image_mask: Array,
    *,
    eos_coef: float,
    cost_class: float,
    cost_bbox: float,
    cost_giou: float,
    backend: str,
) -> dict[str, Array]:
    """Unweighted loss_ce, loss_bbox, loss_giou and cardinality_error of one layer `[B, N, ...]`."""
    num_classes = pred_logits.shape[-1] - 1
    tgt_boxes = _fill_padded_boxes(tgt_boxes, tgt_mask)
    match = hungarian_match(
        pred_logits, pred_boxes, tgt_labels, tgt_boxes, tgt_mask,
        cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou, backend=backend,
    )
    n = pred_logits.shape[-2]

    def classes_of(pred_idx, valid, labels):
        # pred_idx are distinct, so the scatter has no collisions.
        return jnp.full((n,), num_classes, jnp.int32).at[pred_idx].set(
            jnp.where(valid, labels, num_classes).astype(jnp.int32)
        )

    target_classes = jax.vmap(classes_of)(match.pred_idx, match.valid, tgt_labels)  # [B, N]
    class_weight = jnp.where(target_classes == num_classes, eos_coef, 1.0)
    class_weight = class_weight * image_mask[:, None]
    loss_ce, _ = cross_entropy_with_label_smoothing(pred_logits, target_classes, class_weight)

    src = jnp.take_along_axis(pred_boxes.astype(jnp.float32), match.pred_idx[..., None], axis=-2)
    valid = match.valid.astype(jnp.float32)  # [B, M]
    l1 = jnp.sum(jnp.abs(src - tgt_boxes), axis=-1)
    giou = generalized_box_iou_elementwise(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt_boxes))
    # Cardinality error (logged only, as in the official code):
    # |#queries not predicting no-object - #objects|, averaged over images.
    card = jnp.sum(jnp.argmax(pred_logits, -1) != num_classes, -1) - jnp.sum(tgt_mask, -1)
    card = jnp.sum(jnp.abs(card).astype(jnp.float32) * image_mask) / jnp.maximum(
        jnp.sum(image_mask), 1.0)
    return {
        "loss_ce": loss_ce,
        "loss_bbox": jnp.sum(l1 * valid) / num_boxes,
        "loss_giou": jnp.sum((1.0 - giou) * valid) / num_boxes,
        "cardinality_error": card,
    }


def set_loss_with_aux(
    layer_logits: Array,
    layer_boxes: Array,
    tgt_labels: Array,
    tgt_boxes: Array,
    tgt_mask: Array,
    *,
    eos_coef: float = 0.1,
    weight_ce: float = 1.0,
    weight_bbox: float = 5.0,
    weight_giou: float = 2.0,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    backend: str = "optax",
    image_mask: Array | None = None,
) -> dict[str, Array]:
    """DETR loss summed over decoder layers, each layer matched on its own.

    Args:
      layer_logits: `[L, B, N, num_classes + 1]`, the decoder layers' class logits in order (the
        last is the final output); the last class is no-object.
      layer_boxes: `[L, B, N, 4]` cxcywh normalised (after the sigmoid).
      tgt_labels: `[B, M]` int in [0, num_classes) where tgt_mask.
      tgt_boxes: `[B, M, 4]` cxcywh normalised.
      tgt_mask: `[B, M]` bool (or 0/1), True for real objects. M <= N.
      eos_coef: the no-object class weight in the CE.
      weight_ce, weight_bbox, weight_giou: the loss weights (1, 5, 2).
      cost_class, cost_bbox, cost_giou: the matching cost weights (1, 5, 2).
      backend: the matcher, 'optax' (device) or 'scipy' (host callback).
      image_mask: optional `[B]` bool (or 0/1), False for filler images (the padding of a split's
        last batch): their queries leave the CE and the cardinality error, so the loss equals
        the loss of the real images alone. Filler images must have no objects (`tgt_mask`
        False). None: every image is real.
    Returns:
      A dict of float32 scalars: 'loss' (the weighted sum over all layers, to minimise);
      'loss_ce', 'loss_bbox', 'loss_giou', 'cardinality_error' of the last layer; the same with
      suffix '_{i}' for the auxiliary layer i = 0 .. L-2 (the official naming); 'num_boxes'.
      Components are unweighted.
    Raises:
      ValueError before compilation on inconsistent shapes or M > N; when the targets are
      concrete (outside jit) also on bad values (`targets.validate_targets`).
    """
    if layer_logits.ndim != 4:
        raise ValueError(
            f"layer_logits must be [L, B, N, num_classes + 1], got {layer_logits.shape}"
        )
    if layer_boxes.shape[:1] != layer_logits.shape[:1]:
        raise ValueError(
            f"layer_boxes {layer_boxes.shape} and layer_logits {layer_logits.shape} differ in L"
        )
    _check_shapes(
        layer_logits.shape[1:], layer_boxes.shape[1:],
        tgt_labels.shape, tgt_boxes.shape, tgt_mask.shape,
    )
    num_layers, _, n, k1 = layer_logits.shape
    if not any(isinstance(x, jax.core.Tracer) for x in (tgt_labels, tgt_boxes, tgt_mask)):
        validate_targets(
            np.asarray(tgt_boxes), np.asarray(tgt_labels), np.asarray(tgt_mask), k1 - 1, n
        )
    tgt_mask = jnp.asarray(tgt_mask).astype(bool)
    batch = tgt_mask.shape[0]
    if image_mask is None:
        image_mask = jnp.ones((batch,), jnp.float32)
    elif jnp.shape(image_mask) != (batch,):
        raise ValueError(f"image_mask must be [B] = [{batch}], got {jnp.shape(image_mask)}")
    image_mask = jnp.asarray(image_mask).astype(jnp.float32)
    num_boxes = jnp.maximum(jnp.sum(tgt_mask.astype(jnp.float32)), 1.0)
    per_layer = jax.vmap(
        lambda lg, bx: _layer_losses(
            lg, bx, tgt_labels, tgt_boxes, tgt_mask, num_boxes, image_mask,
            eos_coef=eos_coef, cost_class=cost_class, cost_bbox=cost_bbox,
            cost_giou=cost_giou, backend=backend,
        )
    )(layer_logits, layer_boxes)  # each [L]
    weighted = (
        weight_ce * per_layer["loss_ce"]
        + weight_bbox * per_layer["loss_bbox"]
        + weight_giou * per_layer["loss_giou"]
    )
    out = {"loss": jnp.sum(weighted), "num_boxes": num_boxes}
    for name, values in per_layer.items():
        out[name] = values[-1]
        for i in range(num_layers - 1):
            out[f"{name}_{i}"] = values[i]
    return out


def set_loss(
    pred_logits: Array,
    pred_boxes: Array,
    tgt_labels: Array,
    tgt_boxes: Array,
    tgt_mask: Array,
    **kwargs,
) -> dict[str, Array]:
    """DETR loss of one layer's outputs: `pred_logits [B, N, num_classes + 1]`, `pred_boxes
    [B, N, 4]`; targets, keyword arguments and returned keys as `set_loss_with_aux` (no aux keys).
    """
    if pred_logits.ndim != 3:
        raise ValueError(f"pred_logits must be [B, N, num_classes + 1], got {pred_logits.shape}")
    return set_loss_with_aux(
        pred_logits[None], pred_boxes[None], tgt_labels, tgt_boxes, tgt_mask, **kwargs
    )
