"""attn_jax.eval.coco: pycocotools' mAP on hand-made cases whose values follow by hand from the
COCO definition (IoU thresholds 0.50:0.05:0.95, a detection matches a ground truth box when their
IoU >= the threshold, precision made monotone and read at 101 recall points 0, 0.01, ..., 1), and
the DETR post-processing against a NumPy loop over the formula."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attn_jax.eval.coco import (coco_evaluate, coco_map, cxcywh_to_xywh, detections_to_coco,
                                write_coco_json)


def _gt(boxes_per_image, categories=(1, 2)):
    images, anns = [], []
    for image_id, boxes in enumerate(boxes_per_image):
        images.append({"id": image_id, "height": 100, "width": 100})
        for category, box in boxes:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": category,
                         "bbox": list(box), "area": box[2] * box[3], "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": f"c{c}"} for c in categories]}


def _iou_xywh(a, b):
    """IoU of two [x, y, w, h] boxes (the test's own formula)."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


GT_BOX = (10.0, 10.0, 20.0, 20.0)   # area 400 < 32^2: a "small" object


def test_perfect_predictions_give_ap_one():
    gt = _gt([[(1, GT_BOX), (2, (50.0, 40.0, 30.0, 20.0))], [(1, (5.0, 60.0, 40.0, 35.0))]])
    preds = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
              "score": 0.9} for a in gt["annotations"]]
    metrics, summary = coco_evaluate(gt, preds)
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert metrics[key] == pytest.approx(1.0), key
    assert "Average Precision" in summary  # captured, not printed


def test_no_output_is_printed(capsys):
    gt = _gt([[(1, GT_BOX)]])
    coco_map(gt, [{"image_id": 0, "category_id": 1, "bbox": list(GT_BOX), "score": 1.0}])
    assert capsys.readouterr().out == ""


def test_a_miss_below_iou_half_scores_zero_at_every_threshold():
    shifted = (18.0, 10.0, 20.0, 20.0)
    assert _iou_xywh(GT_BOX, shifted) < 0.5          # 240 / 560 = 0.43
    metrics = coco_map(_gt([[(1, GT_BOX)]]),
                       [{"image_id": 0, "category_id": 1, "bbox": shifted, "score": 0.9}])
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AP75"] == 0.0
    # the object is small: no ground truth in the other area ranges (pycocotools' -1)
    assert metrics["AP_small"] == 0.0 and metrics["AP_medium"] == -1.0


def test_iou_between_060_and_065_matches_three_of_ten_thresholds():
    shifted = (14.7, 10.0, 20.0, 20.0)
    iou = _iou_xywh(GT_BOX, shifted)                 # 306 / 494 = 0.619
    assert 0.60 < iou < 0.65
    metrics = coco_map(_gt([[(1, GT_BOX)]]),
                       [{"image_id": 0, "category_id": 1, "bbox": shifted, "score": 0.9}])
    # matched (precision 1 at every recall) at thresholds 0.50, 0.55, 0.60; missed at 0.65..0.95
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == 0.0
    assert metrics["AP"] == pytest.approx(3 / 10)


def _two_objects_three_detections(scores):
    """Image 0 has two category-1 objects; detections: a hit, a false positive, a hit."""
    gt = _gt([[(1, GT_BOX), (1, (60.0, 60.0, 30.0, 30.0))]])
    boxes = [GT_BOX, (40.0, 0.0, 10.0, 10.0), (60.0, 60.0, 30.0, 30.0)]
    preds = [{"image_id": 0, "category_id": 1, "bbox": list(b), "score": s}
             for b, s in zip(boxes, scores)]
    return gt, preds


def test_precision_envelope_value_by_hand():
    # Ranked hit (recall 1/2, precision 1), miss, hit (recall 1, precision 2/3): the monotone
    # precision is 1 at the 51 recall points 0..0.50 and 2/3 at the 50 points 0.51..1.
    gt, preds = _two_objects_three_detections([0.9, 0.8, 0.7])
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    metrics = coco_map(gt, preds)
    assert metrics["AP"] == pytest.approx(expected)
    assert metrics["AP50"] == pytest.approx(expected)
    # the false positive ranked first: precision 2/3 at every recall point
    gt, preds = _two_objects_three_detections([0.7, 0.9, 0.8])
    assert coco_map(gt, preds)["AP"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("transform", [lambda s: 0.25 * s, lambda s: s ** 3,
                                       lambda s: 1 / (1 + np.exp(-10 * (s - 0.5)))])
def test_scores_only_rank(transform):
    rng = np.random.default_rng(0)
    gt = _gt([[(1, GT_BOX), (2, (50.0, 40.0, 30.0, 20.0))], [(1, (5.0, 60.0, 40.0, 35.0))],
              [(2, (30.0, 30.0, 50.0, 50.0)), (1, (0.0, 0.0, 8.0, 8.0))]])
    preds = []
    for a in gt["annotations"]:  # jittered hits and some false positives, random scores
        x, y, w, h = a["bbox"]
        preds.append({"image_id": a["image_id"], "category_id": a["category_id"],
                      "bbox": [x + rng.uniform(-3, 3), y + rng.uniform(-3, 3), w, h],
                      "score": float(rng.uniform(0.05, 0.95))})
        preds.append({"image_id": a["image_id"], "category_id": 3 - a["category_id"],
                      "bbox": [x, y, w, h], "score": float(rng.uniform(0.05, 0.95))})
    base = coco_map(gt, preds)
    moved = coco_map(gt, [{**p, "score": float(transform(p["score"]))} for p in preds])
    assert 0.0 < base["AP"] < 1.0
    assert moved == pytest.approx(base)
    # the ranking does matter: reversing it changes AP
    reversed_ = coco_map(gt, [{**p, "score": 1.0 - p["score"]} for p in preds])
    assert reversed_["AP"] != pytest.approx(base["AP"])


def test_no_predictions_give_zero():
    assert coco_map(_gt([[(1, GT_BOX)]]), [])["AP"] == 0.0


def test_json_round_trip(tmp_path):
    gt = _gt([[(1, GT_BOX)]])
    preds = [{"image_id": 0, "category_id": 1, "bbox": [14.7, 10.0, 20.0, 20.0],
              "score": np.float32(0.5)}]
    gt_path = write_coco_json(tmp_path / "gt.json", gt)
    pred_path = write_coco_json(tmp_path / "sub" / "pred.json",
                                [{**p, "score": float(p["score"])} for p in preds])
    assert json.loads(gt_path.read_text()) == gt
    assert coco_map(gt_path, pred_path) == coco_map(gt, preds)


def test_bad_inputs_raise():
    gt = _gt([[(1, GT_BOX)]])
    with pytest.raises(ValueError, match="COCO detection dict"):
        coco_map({"images": []}, [])
    with pytest.raises(ValueError, match="image_id"):
        coco_map(gt, [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="bbox"):
        coco_map(gt, [{"image_id": 0, "category_id": 1, "bbox": [0, 0, 1], "score": 1.0}])
    with pytest.raises(ValueError, match="logits"):
        detections_to_coco(np.zeros((2, 5)), np.zeros((2, 5, 4)), [0, 1], [(10, 10)] * 2)
    with pytest.raises(ValueError, match="image_sizes"):
        detections_to_coco(np.zeros((2, 5, 3)), np.zeros((2, 5, 4)), [0, 1], [(10, 10)])


def _post_process_reference(logits, boxes, image_ids, sizes, top_k):
    """The DETR PostProcess formula, one query at a time in NumPy loops."""
    out = []
    for b in range(logits.shape[0]):
        rows = []
        for q in range(logits.shape[1]):
            e = np.exp(logits[b, q] - logits[b, q].max())
            p = e / e.sum()
            label = int(np.argmax(p[:-1]))
            cx, cy, w, h = boxes[b, q]
            H, W = sizes[b]
            rows.append((float(p[label]), label + 1,
                         [(cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H]))
        rows.sort(key=lambda r: -r[0])
        out += [{"image_id": image_ids[b], "category_id": c, "bbox": bb, "score": s}
                for s, c, bb in rows[:top_k]]
    return out


@pytest.mark.parametrize("top_k", [None, 3])
def test_post_processing_against_numpy(top_k):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 4)) * 2
    boxes = rng.uniform(0.1, 0.5, size=(2, 6, 4))
    sizes = [(40, 60), (100, 30)]
    got = detections_to_coco(logits, boxes, [3, 9], sizes, top_k=top_k)
    want = _post_process_reference(logits, boxes, [3, 9], sizes, top_k)
    assert len(got) == len(want) == 2 * (top_k or 6)
    for g, w in zip(got, want):
        assert g["image_id"] == w["image_id"] and g["category_id"] == w["category_id"]
        np.testing.assert_allclose(g["bbox"], w["bbox"], rtol=1e-9)
        assert g["score"] == pytest.approx(w["score"])
    # probabilities in, the same predictions out; and a custom category map
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)
    again = detections_to_coco(probs, boxes, [3, 9], sizes, top_k=top_k, from_logits=False,
                               category_ids=[10, 20, 30])
    assert [a["category_id"] for a in again] == [10 * g["category_id"] for g in got]
    assert [a["score"] for a in again] == pytest.approx([g["score"] for g in got])


def test_post_processed_predictions_score_one_on_their_own_boxes():
    """End to end: confident queries whose boxes are the ground truth score AP 1 after the
    post-processing (normalised cxcywh -> pixels)."""
    gt = _gt([[(2, (20.0, 30.0, 40.0, 20.0))]])
    box = np.array([[[40 / 100, 40 / 100, 40 / 100, 20 / 100]]])      # cx, cy, w, h / 100 px
    np.testing.assert_allclose(cxcywh_to_xywh(box[0], 100, 100)[0], [20, 30, 40, 20])
    logits = np.array([[[0.0, 8.0, 0.0]]])                              # class index 1 -> id 2
    preds = detections_to_coco(logits, box, [0], [(100, 100)])
    assert coco_map(gt, preds)["AP"] == pytest.approx(1.0)


def test_scenes_ground_truth_against_its_own_boxes():
    """The scenes dataset's COCO dict (category_id = label + 1) is accepted as is: its own boxes
    score AP 1, and the same boxes with the wrong categories score 0."""
    from attn_jax.data.datasets import scenes as sc

    gt = sc.coco_dict(sc.Scenes("validation", source="digits", num_examples=6))
    assert gt["annotations"]
    hits = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "score": 1.0} for a in gt["annotations"]]
    assert coco_map(gt, hits)["AP"] == pytest.approx(1.0)
    ids = [c["id"] for c in gt["categories"]]
    wrong = [{**h, "category_id": ids[(ids.index(h["category_id"]) + 1) % len(ids)]}
             for h in hits]
    assert coco_map(gt, wrong)["AP"] == 0.0
