"""DETR's training signal (Carion et al. 2020): box geometry, the Hungarian matcher on padded
targets, and the set loss with auxiliary decoder losses. Pure functions; the model lives in
`attn_jax.models.detr`."""

from attn_jax.detection.boxes import (
    EPS,
    box_area,
    box_iou,
    box_iou_elementwise,
    coco_xywh_to_xyxy,
    cxcywh_to_xyxy,
    generalized_box_iou,
    generalized_box_iou_elementwise,
    xyxy_to_coco_xywh,
    xyxy_to_cxcywh,
)
from attn_jax.detection.matching import (
    BACKENDS,
    Matching,
    assign,
    check_num_queries,
    hungarian_match,
    matching_cost,
)
from attn_jax.detection.set_loss import COMPONENTS, set_loss, set_loss_with_aux
from attn_jax.detection.targets import validate_targets

__all__ = [
    "BACKENDS",
    "COMPONENTS",
    "EPS",
    "Matching",
    "assign",
    "box_area",
    "box_iou",
    "box_iou_elementwise",
    "check_num_queries",
    "coco_xywh_to_xyxy",
    "cxcywh_to_xyxy",
    "generalized_box_iou",
    "generalized_box_iou_elementwise",
    "hungarian_match",
    "matching_cost",
    "set_loss",
    "set_loss_with_aux",
    "validate_targets",
    "xyxy_to_coco_xywh",
    "xyxy_to_cxcywh",
]
