"""COCO 2017 for DETR (attn_jax.data.datasets.coco, the detection task's 'coco' dataset) on a
small stand-in written with tfds' own coco/2017 features (tests/fake_coco.py): resizing and
padding with a pixel mask, targets as the official DETR's (crowd and empty boxes dropped, cxcywh
relative to the real image), the ground truth in original pixels with COCO's ids, perfect
predictions scoring AP 1.0 through pycocotools (the reference), and the errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import fake_coco
from attn_jax.data.datasets import coco
from attn_jax.eval import coco as coco_eval
from attn_jax.eval.evaluators import predict_detections
from attn_jax.tasks import get_task
from tiny_configs import set_keys, tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    fake_coco.build(str(root))
    return str(root)


def _by_id(split):
    return {image_id: (h, w, objects) for image_id, h, w, objects in fake_coco.IMAGES[split]}


def _rows(ds):
    """Image id of each index of the reader (ArrayRecord keeps its own order)."""
    return [int(ds.record(i)["image/id"]) for i in range(len(ds))]


def test_batches_resize_pad_and_keep_the_official_targets(data_dir):
    ds = coco.CocoDetection("train", data_dir, image_size=96, max_objects=5)
    assert len(ds) == 3 and ds.image_shape == (96, 96, 3) and ds.num_classes == 80
    batch = ds.detection_batch(range(3))
    assert batch["image"].shape == (3, 96, 96, 3) and batch["pixel_mask"].shape == (3, 96, 96)
    truth = _by_id("train")
    for row, image_id in enumerate(_rows(ds)):
        h, w, objects = truth[image_id]
        scale = 96 / max(h, w)
        nh, nw = round(h * scale), round(w * scale)
        mask = batch["pixel_mask"][row]
        assert mask[:nh, :nw].all() and mask.sum() == nh * nw  # real part top-left, rest padding
        assert np.abs(batch["image"][row][~mask]).max(initial=0.0) == 0.0
        # the real part is the picture, resized (JPEG and bilinear resampling: loose tolerance)
        from PIL import Image
        want = np.asarray(Image.fromarray(fake_coco.image_pixels(image_id, h, w)).resize(
            (nw, nh), Image.BILINEAR), np.float32) / 255
        assert np.abs(batch["image"][row][:nh, :nw] - want).mean() < 0.03
        # targets: crowd and zero-size boxes dropped; cxcywh from (ymin, xmin, ymax, xmax)
        kept = [o for o in objects if not o[6] and o[3] > o[1] and o[4] > o[2]]
        n = int(batch["box_mask"][row].sum())
        assert n == len(kept)
        for k, (label, y0, x0, y1, x1, _, _) in enumerate(kept):
            assert batch["labels"][row, k] == label
            np.testing.assert_allclose(batch["boxes"][row, k],
                                       [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0],
                                       atol=1e-6)


def test_greyscale_images_become_three_channels(data_dir):
    ds = coco.CocoDetection("validation", data_dir, image_size=40)
    canvas, mask = ds.resized(np.full((20, 10), 128, np.uint8))
    assert canvas.shape == (40, 40, 3) and mask.sum() == 40 * 20
    np.testing.assert_allclose(canvas[:40, :20], 128 / 255, atol=1e-6)


def test_ground_truth_is_in_original_pixels_with_coco_ids(data_dir):
    ds = coco.CocoDetection("validation", data_dir, image_size=64)
    gt = ds.coco_dict()
    truth = _by_id("validation")
    assert sorted(im["id"] for im in gt["images"]) == sorted(truth)
    assert len(gt["categories"]) == 80 and gt["categories"][11]["id"] == 13
    for image in gt["images"]:
        h, w, objects = truth[image["id"]]
        assert (image["height"], image["width"]) == (h, w)
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        assert len(anns) == len(objects)  # crowd regions stay in the ground truth, flagged
        for ann, (label, y0, x0, y1, x1, area, crowd) in zip(anns, objects):
            assert ann["category_id"] == coco.COCO_CATEGORY_IDS[label]
            np.testing.assert_allclose(ann["bbox"], [x0 * w, y0 * h, (x1 - x0) * w,
                                                     (y1 - y0) * h], rtol=1e-5)
            assert ann["area"] == area and ann["iscrowd"] == int(crowd)
    assert gt["categories"][10]["id"] == 11 and coco.COCO_CATEGORY_IDS[44] == 50


def _coco_task(data_dir, **changes):
    config = tiny_config("detr")
    set_keys(config, {"data.dataset": "coco", "data.data_dir": data_dir, "data.canvas_size": 32,
                      "data.max_objects": 4, "data.eval_splits": ("validation",),
                      "batch_size": 2, **changes})
    return get_task("detection")(config)


def test_perfect_predictions_score_ap_one_through_the_task(data_dir):
    """The task's whole evaluation path (its batches, predict_detections' scaling by each
    image's original size, detections_to_coco, pycocotools) gives AP 1.0 when the 'model'
    returns the batch's own targets: the boxes' frame (relative to the real image) and the
    category ids are consistent end to end. Shifted boxes score lower."""
    task = _coco_task(data_dir)
    task.validate()
    assert task.image_shape == (32, 32, 3) and task.num_classes == 80
    batches = list(task.detection_batches("validation"))
    queue = list(batches)

    def oracle(shift):
        def predict(params, images, pixel_mask=None):
            assert pixel_mask is not None and pixel_mask.shape == images.shape[:3]
            batch = queue.pop(0)
            n = task.model.num_queries
            logits = np.full((images.shape[0], n, 81), -20.0, np.float32)
            boxes = np.full((images.shape[0], n, 4), 0.5, np.float32)
            m = batch["boxes"].shape[1]
            for b in range(images.shape[0]):
                for k in np.flatnonzero(batch["box_mask"][b]):
                    logits[b, k, batch["labels"][b, k]] = 20.0
                    boxes[b, k] = batch["boxes"][b, k] + [shift, 0, 0, 0]
            assert m <= n
            return {"logits": logits, "boxes": boxes}
        return predict

    gt = task.coco_gt("validation")
    perfect = predict_detections(task, None, "validation", gt=gt, predict=oracle(0.0))
    assert coco_eval.coco_map(gt, perfect)["AP"] == pytest.approx(1.0)
    queue[:] = batches
    shifted = predict_detections(task, None, "validation", gt=gt, predict=oracle(0.08))
    assert coco_eval.coco_map(gt, shifted)["AP"] < 0.9


def test_a_coco_train_step_runs_with_the_pixel_mask(data_dir):
    task = _coco_task(data_dir)
    batch = next(task.train_iterator(seed=0, process_index=0, process_count=1))
    assert batch["pixel_mask"].shape == (2, 32, 32)
    params = jax.jit(task.init_params)(jax.random.PRNGKey(0))
    loss, aux = jax.jit(task.loss)(params, batch, jax.random.PRNGKey(1), 0)
    assert np.isfinite(float(loss)) and float(aux["num_boxes"]) >= 1


def test_errors_name_the_problem(data_dir, tmp_path):
    with pytest.raises(coco.CocoNotPreparedError, match=r"tfds build coco/2017 "
                                                        r"--file_format=array_record"):
        coco.CocoDetection("train", str(tmp_path))
    with pytest.raises(coco.CocoNotPreparedError, match="is not prepared"):
        _coco_task(str(tmp_path))
    with pytest.raises(ValueError, match="annotated splits"):
        coco.CocoDetection("test", data_dir)
    ds = coco.CocoDetection("train", data_dir, image_size=64, max_objects=1)
    rows = _rows(ds)
    with pytest.raises(ValueError, match=r"image \d \(id 9\) has 2 objects, more than "
                                         r"max_objects=1"):
        ds.detection_batch([rows.index(9)])


def test_detection_pictures_of_padded_images(data_dir, tmp_path, monkeypatch):
    """attn_jax.viz.detections on COCO: only the real part of each padded image is drawn (its
    boxes are relative to it), with the attention over the real feature cells."""
    from PIL import Image

    from attn_jax.viz import detections

    task = _coco_task(data_dir)
    params = jax.jit(task.init_params)(jax.random.PRNGKey(0))
    ds = task.source("validation")
    row = _rows(ds).index(102)  # 60x30: the real part is the left half of the canvas
    drawn = []
    real_plot = detections.plot_detections

    def spy(image, logits, boxes, attention, grid, *args, **kwargs):
        drawn.append((image.shape, attention.shape, grid))
        return real_plot(image, logits, boxes, attention, grid, *args, **kwargs)

    monkeypatch.setattr(detections, "plot_detections", spy)
    paths = detections.draw_detections(task, params, "validation", [row], str(tmp_path),
                                       threshold=0.0)
    assert Image.open(paths[0]).size[0] > 0
    (image_shape, attention_shape, grid), = drawn
    assert image_shape == (32, 16, 3)                # the 60x30 image at a longer side of 32
    gh, gw = task.model.grid_shape((32, 32))
    assert grid == (gh, gw // 2) and attention_shape[-1] == gh * (gw // 2)


def test_training_augmentation_flips_and_scales_images_with_their_boxes(data_dir):
    """Reference: the unaugmented batch. A flip mirrors the real part of the image and maps
    each box's cx to 1 - cx (boxes are relative to the real image); a scale s makes the longer
    side round(s * S)."""
    ds = coco.CocoDetection("validation", data_dir, image_size=64, min_scale=0.5, flip=True)
    rows = _rows(ds)
    row = rows.index(101)  # 40x60
    plain = ds.detection_batch([row])
    flipped = ds.detection_batch([row], (np.array([1.0]), np.array([True])))
    m = plain["pixel_mask"][0]
    np.testing.assert_array_equal(flipped["pixel_mask"][0], m)
    h, w = int(m.any(1).sum()), int(m.any(0).sum())
    np.testing.assert_allclose(flipped["image"][0][:h, :w], plain["image"][0][:h, :w][:, ::-1])
    k = plain["box_mask"][0]
    want = plain["boxes"][0][k].copy()
    want[:, 0] = 1 - want[:, 0]
    np.testing.assert_allclose(flipped["boxes"][0][k], want, atol=1e-6)
    half = ds.detection_batch([row], (np.array([0.5]), np.array([False])))
    assert int(half["pixel_mask"][0].any(0).sum()) == 32  # the longer side (width) at 0.5 * 64
    np.testing.assert_allclose(half["boxes"][0][k], plain["boxes"][0][k])  # relative: unchanged
    scales, flips = ds.draw(np.random.default_rng(0), 1000)
    assert 0.5 <= scales.min() and scales.max() <= 1.0 and 400 < flips.sum() < 600
    assert not coco.CocoDetection("validation", data_dir).draw(
        np.random.default_rng(0), 100)[1].any()  # flip=False never flips


def test_random_size_crop_cuts_the_image_and_its_boxes(data_dir):
    """Reference: the official RandomResize + RandomSizeCrop worked out by hand for image 101
    (40x60 px): u picks a shorter side of 400 px (x10, so 400x600), a 384x492 crop at (0, 107),
    i.e. rows 0-38 and columns 11-60 of the original; the batch's image is that window of the
    picture resized (PIL), and the annotations of fake_coco.IMAGES clipped to it, relative to it."""
    from PIL import Image

    ds = coco.CocoDetection("validation", data_dir, image_size=64, crop=True)
    row = _rows(ds).index(101)
    u = np.array([[0.1, 0.0, 0.0, 0.5, 0.0, 0.99]])
    assert coco.crop_window(40, 60, u[0]) == (0, 11, 38, 60)
    batch = ds.detection_batch([row], (np.ones(1), np.zeros(1, bool), u))
    mask = batch["pixel_mask"][0]
    nh, nw = round(38 * 64 / 49), 64
    assert mask[:nh, :nw].all() and mask.sum() == nh * nw
    want = np.asarray(Image.fromarray(fake_coco.image_pixels(101, 40, 60)[0:38, 11:60]).resize(
        (nw, nh), Image.BILINEAR), np.float32) / 255
    assert np.abs(batch["image"][0][:nh, :nw] - want).mean() < 0.03
    # (ymin, xmin, ymax, xmax) * (40, 60, 40, 60) px: (4, 12, 20, 36) and (22, 6, 38, 27)
    np.testing.assert_allclose(batch["boxes"][0][batch["box_mask"][0]], [
        [13 / 49, 12 / 38, 24 / 49, 16 / 38],     # x 1-25, y 4-20 of the 49x38 window
        [8 / 49, 30 / 38, 16 / 49, 16 / 38]],     # x 0-16 (clipped at the left), y 22-38
        atol=1e-5)
    np.testing.assert_array_equal(batch["labels"][0][batch["box_mask"][0]], [3, 10])
    # u[0] >= 1/2: no crop, the plain batch
    plain = ds.detection_batch([row])
    no_crop = ds.detection_batch([row], (np.ones(1), np.zeros(1, bool),
                                         np.concatenate([[[0.7]], u[:, 1:]], 1)))
    np.testing.assert_array_equal(no_crop["image"], plain["image"])
    # a box outside the window is dropped, one across its edge clipped
    boxes, labels = coco.crop_boxes(np.array([[0.1, 0.5, 0.1, 0.2], [0.5, 0.5, 0.4, 0.4]]),
                                    np.array([1, 2]), (100, 100), (0, 40, 100, 100))
    np.testing.assert_allclose(boxes, [[(0 + 30) / 2 / 60, 0.5, 30 / 60, 0.4]], atol=1e-6)
    np.testing.assert_array_equal(labels, [2])
    # drawn windows: about half the images, always inside the image, at least 384/600 of a side
    rng = np.random.default_rng(0)
    windows = [coco.crop_window(h, w, v) for h, w in [(40, 60), (480, 640), (500, 333)]
               for v in rng.random((300, 6))]
    assert 400 < sum(w is None for w in windows) < 500
    for (h, w), window in zip([(40, 60)] * 300 + [(480, 640)] * 300 + [(500, 333)] * 300, windows):
        if window is not None:
            y0, x0, y1, x1 = window
            assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
            assert min(y1 - y0, x1 - x0) >= 0.64 * min(h, w) * 0.9, (h, w, window)
    assert len(ds.draw(rng, 5)) == 3 and len(coco.CocoDetection(
        "validation", data_dir, flip=True).draw(rng, 5)) == 2  # no crop: no numbers drawn


def test_augmented_training_batches_repeat_exactly_for_the_same_seed(data_dir):
    """The augmentation is drawn per step from the batcher's seeded generator: a fresh
    iterator (a resumed run) yields the same batches; the unaugmented config differs."""
    task = _coco_task(data_dir, **{"data.min_scale": 0.5, "data.flip": True, "data.crop": True})
    first = [next(it) for it in [task.train_iterator(seed=3, process_index=0,
                                                     process_count=1)] for _ in range(4)]
    again = [next(it) for it in [task.train_iterator(seed=3, process_index=0,
                                                     process_count=1)] for _ in range(4)]
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    plain = _coco_task(data_dir)
    base = [next(it) for it in [plain.train_iterator(seed=3, process_index=0,
                                                     process_count=1)] for _ in range(4)]
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(first, base))
    scenes_config = tiny_config("detr")
    set_keys(scenes_config, {"data.flip": True})
    with pytest.raises(ValueError, match="augment COCO only"):
        get_task("detection")(scenes_config).validate()
