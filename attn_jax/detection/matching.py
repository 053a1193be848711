"""DETR's bipartite matching between queries and padded targets (Carion et al. 2020, sec. 3.1).

Each image has N queries (predictions) and M target slots, of which those with `tgt_mask` True
are real objects; M is fixed (the padded count), so nothing recompiles when the number of objects
changes. The matching cost of query i and target j is, as in the paper and the official code's
`HungarianMatcher`,

    C[i, j] = cost_class * -softmax(logits_i)[label_j]
              + cost_bbox * ||box_i - box_j||_1          (cxcywh, normalised)
              + cost_giou * -GIoU(box_i, box_j)          (xyxy)

with weights 1, 5, 2 by default. Padded columns get the same cost (0) in every row: whatever
queries the padded columns take, they add a constant to the total, so the optimum restricted to the
real columns is the optimum of the real [N, M_real] problem (the padded slots take leftover
queries, which exist since N >= M). They are flagged `valid=False` and never used by the loss.

Convention (per image; any leading batch axes in front): `Matching(pred_idx [M], tgt_idx [M],
valid [M])`, sorted by target slot: target slot `tgt_idx[j] == j` is matched to query
`pred_idx[j]`; the `pred_idx` are distinct; `valid == tgt_mask`. Matched pairs are the j with
`valid[j]`.

Backends: 'optax' runs `optax.assignment.hungarian_algorithm` on the device (jit/vmap-able);
'scipy' runs `scipy.optimize.linear_sum_assignment` on the host through `jax.pure_callback` (as
scenic's matchers do), also jit/vmap-able but synchronising with the host every step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from attn_jax.detection.boxes import cxcywh_to_xyxy, generalized_box_iou

Array = jax.Array

BACKENDS = ("optax", "scipy")

# Replaces NaN/inf costs (e.g. from a diverged prediction) so that the assignment stays defined:
# scipy rejects non-finite costs, and the device algorithm relies on finite reduced costs.
_NONFINITE_COST = 1e6


class Matching(NamedTuple):
    """Per target slot j: query `pred_idx[j]` is matched to target `tgt_idx[j] (== j)`.

    All three are `[..., M]`; `valid` is the targets' mask (padded slots are False).
    """

    pred_idx: Array
    tgt_idx: Array
    valid: Array


def check_num_queries(num_queries: int, num_targets: int) -> None:
    """ValueError unless num_queries >= num_targets (the padded target count M)."""
    if num_targets > num_queries:
        raise ValueError(
            f"more target slots ({num_targets}) than queries ({num_queries}): DETR matches each "
            f"object to a distinct query, so pad targets to at most num_queries={num_queries} "
            f"(and use at least as many queries as the most objects in an image)"
        )


def matching_cost(
    pred_logits: Array,
    pred_boxes: Array,
    tgt_labels: Array,
    tgt_boxes: Array,
    tgt_mask: Array,
    *,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
) -> Array:
    """The DETR matching cost (module docstring), padded columns set to 0.

    Args:
      pred_logits: `[..., N, num_classes + 1]` (the last class is no-object).
      pred_boxes: `[..., N, 4]` cxcywh, normalised.
      tgt_labels: `[..., M]` int in [0, num_classes) where tgt_mask (anything elsewhere).
      tgt_boxes: `[..., M, 4]` cxcywh, normalised (anything where not tgt_mask).
      tgt_mask: `[..., M]` bool (or 0/1), True for real objects.
    Returns:
      `[..., N, M]` float32 cost (non-finite only where the predictions are).
    """
    _check_shapes(
        pred_logits.shape, pred_boxes.shape, tgt_labels.shape, tgt_boxes.shape, tgt_mask.shape
    )
    num_classes = pred_logits.shape[-1] - 1
    tgt_mask = jnp.asarray(tgt_mask).astype(bool)
    prob = jax.nn.softmax(pred_logits.astype(jnp.float32), axis=-1)  # [..., N, K+1]
    labels = jnp.clip(tgt_labels, 0, num_classes)
    # prob[..., i, labels[..., j]] -> [..., N, M]
    index = jnp.broadcast_to(labels[..., None, :], prob.shape[:-1] + labels.shape[-1:])
    class_cost = -jnp.take_along_axis(prob, index, axis=-1)
    pb = pred_boxes.astype(jnp.float32)
    tb = _fill_padded_boxes(tgt_boxes, tgt_mask)
    bbox_cost = jnp.sum(jnp.abs(pb[..., :, None, :] - tb[..., None, :, :]), axis=-1)
    giou_cost = -generalized_box_iou(cxcywh_to_xyxy(pb), cxcywh_to_xyxy(tb))
    cost = cost_class * class_cost + cost_bbox * bbox_cost + cost_giou * giou_cost
    return jnp.where(tgt_mask[..., None, :], cost, 0.0)


def assign(cost: Array, *, backend: str = "optax") -> Array:
    """Minimum-cost assignment of every column to a distinct row.

    Args:
      cost: `[..., N, M]` with N >= M (rows are queries, columns target slots); NaN and +-inf
        entries are replaced by +-1e6 so that the assignment stays defined.
      backend: 'optax' (on device) or 'scipy' (host, via `jax.pure_callback`).
    Returns:
      `[..., M]` int32: the row assigned to each column.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if cost.ndim < 2:
        raise ValueError(f"cost must be [..., N, M], got {cost.shape}")
    n, m = cost.shape[-2:]
    check_num_queries(n, m)
    cost = jax.lax.stop_gradient(jnp.asarray(cost, jnp.float32))
    big = _NONFINITE_COST
    cost = jnp.nan_to_num(cost, nan=big, posinf=big, neginf=-big)
    if m == 0:
        return jnp.zeros(cost.shape[:-2] + (0,), jnp.int32)
    if backend == "scipy":
        out = jax.ShapeDtypeStruct(cost.shape[:-2] + (m,), jnp.int32)
        return jax.pure_callback(_scipy_assign, out, cost, vmap_method="expand_dims")
    lead = cost.shape[:-2]
    flat = cost.reshape((-1, n, m))
    rows = jax.vmap(_optax_assign_one)(flat)
    return rows.reshape(lead + (m,))


def _optax_assign_one(cost: Array) -> Array:
    # hungarian_algorithm returns min(N, M) = M pairs (rows i[k], columns j[k]), in no fixed order.
    i, j = optax.assignment.hungarian_algorithm(cost)
    return jnp.zeros(cost.shape[1], jnp.int32).at[j].set(i.astype(jnp.int32))


def _scipy_assign(cost: np.ndarray) -> np.ndarray:
    cost = np.asarray(cost, np.float64)
    n, m = cost.shape[-2:]
    flat = cost.reshape((-1, n, m))
    out = np.zeros((flat.shape[0], m), np.int32)
    for b, c in enumerate(flat):
        rows, cols = scipy.optimize.linear_sum_assignment(c)
        out[b, cols] = rows
    return out.reshape(cost.shape[:-2] + (m,))


def hungarian_match(
    pred_logits: Array,
    pred_boxes: Array,
    tgt_labels: Array,
    tgt_boxes: Array,
    tgt_mask: Array,
    *,
    cost_class: float = 1.0,
    cost_bbox: float = 5.0,
    cost_giou: float = 2.0,
    backend: str = "optax",
) -> Matching:
    """DETR's Hungarian matcher on padded targets (shapes as in `matching_cost`).

    Gradients do not flow through the matching (the official matcher runs under no_grad).
    Raises ValueError (at trace time) when M > N.
    Returns:
      `Matching` with `[..., M]` fields (module docstring).
    """
    n, m = pred_boxes.shape[-2], tgt_boxes.shape[-2]
    check_num_queries(n, m)
    cost = matching_cost(
        jax.lax.stop_gradient(pred_logits),
        jax.lax.stop_gradient(pred_boxes),
        tgt_labels,
        tgt_boxes,
        tgt_mask,
        cost_class=cost_class,
        cost_bbox=cost_bbox,
        cost_giou=cost_giou,
    )
    pred_idx = assign(cost, backend=backend)
    tgt_idx = jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), pred_idx.shape)
    return Matching(pred_idx, tgt_idx, jnp.asarray(tgt_mask).astype(bool))


def _fill_padded_boxes(tgt_boxes: Array, tgt_mask: Array) -> Array:
    """Padded slots -> the unit box, so that garbage (even NaN) there cannot reach any value or
    gradient."""
    unit = jnp.asarray([0.5, 0.5, 1.0, 1.0], jnp.float32)
    return jnp.where(jnp.asarray(tgt_mask).astype(bool)[..., None], tgt_boxes.astype(jnp.float32), unit)


def _check_shapes(logits_shape, boxes_shape, labels_shape, tgt_boxes_shape, mask_shape) -> None:
    """ValueError naming the shapes unless they are pred_logits [..., N, K + 1], pred_boxes
    [..., N, 4], tgt_labels [..., M], tgt_boxes [..., M, 4], tgt_mask [..., M], M <= N."""
    logits_shape, boxes_shape = tuple(logits_shape), tuple(boxes_shape)
    labels_shape, tgt_boxes_shape, mask_shape = (
        tuple(labels_shape), tuple(tgt_boxes_shape), tuple(mask_shape)
    )
    if len(logits_shape) < 2 or logits_shape[-1] < 2:
        raise ValueError(
            f"pred_logits must be [..., N, num_classes + 1] with num_classes >= 1, "
            f"got {logits_shape}"
        )
    if boxes_shape != logits_shape[:-1] + (4,):
        raise ValueError(
            f"pred_boxes {boxes_shape} must be [..., N, 4] over pred_logits {logits_shape}"
        )
    lead = logits_shape[:-2]
    if (
        len(labels_shape) != len(lead) + 1
        or labels_shape[:-1] != lead
        or mask_shape != labels_shape
        or tgt_boxes_shape != labels_shape + (4,)
    ):
        raise ValueError(
            f"targets must be labels [..., M], boxes [..., M, 4], mask [..., M] with the leading "
            f"axes {lead} of the predictions; got labels {labels_shape}, boxes "
            f"{tgt_boxes_shape}, mask {mask_shape}"
        )
    check_num_queries(logits_shape[-2], labels_shape[-1])
