"""DETR's training signal (attn_jax.detection): boxes, the Hungarian matcher, the set loss.

References: IoU / GIoU by a per-pair NumPy formula written here (Rezatofighi et al. 2019, Alg. 1);
assignments by `scipy.optimize.linear_sum_assignment`; the whole loss by a NumPy + scipy
re-implementation of the official DETR `HungarianMatcher` + `SetCriterion` (below), which
matches only the real targets (no padding), so it also checks that padding changes nothing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from attn_jax import detection as det
from attn_jax.data.datasets import scenes as sc

# ----------------------------------------------------------------------------- NumPy references


def np_iou_giou(a, b):
    """IoU and GIoU of two xyxy boxes, one pair at a time; zero-area conventions as documented in
    attn_jax.detection.boxes (0 / 0 -> 0)."""
    wa, ha = max(a[2] - a[0], 0.0), max(a[3] - a[1], 0.0)
    wb, hb = max(b[2] - b[0], 0.0), max(b[3] - b[1], 0.0)
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = wa * ha + wb * hb - inter
    iou = inter / union if union > 0 else 0.0
    cw = max(a[2], b[2]) - min(a[0], b[0])
    ch = max(a[3], b[3]) - min(a[1], b[1])
    c = cw * ch
    giou = iou - (c - union) / c if c > 0 else iou
    return iou, giou, union


def np_xyxy(b):
    cx, cy, w, h = b
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_match(logits, boxes, labels, tboxes, wc=1.0, wb=5.0, wg=2.0):
    """Official HungarianMatcher on one image's real targets: (query rows, target cols)."""
    prob = np.exp(np_log_softmax(logits.astype(np.float64)))
    n, m = len(boxes), len(tboxes)
    cost = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            giou = np_iou_giou(np_xyxy(boxes[i]), np_xyxy(tboxes[j]))[1]
            l1 = np.abs(boxes[i] - tboxes[j]).sum()
            cost[i, j] = -wc * prob[i, labels[j]] + wb * l1 - wg * giou
    return scipy.optimize.linear_sum_assignment(cost), cost


def np_detr_loss(logits, boxes, labels, tboxes, mask, eos=0.1):
    """Official SetCriterion (labels + boxes) on a batch, one CE mean and one box count overall."""
    b, n, k1 = logits.shape
    k = k1 - 1
    target_classes = np.full((b, n), k)
    l1 = giou_sum = 0.0
    for i in range(b):
        real = np.flatnonzero(mask[i])
        if len(real) == 0:
            continue
        (rows, cols), _ = np_match(logits[i], boxes[i], labels[i, real], tboxes[i, real])
        target_classes[i, rows] = labels[i, real][cols]
        for r, c in zip(rows, cols):
            t = tboxes[i, real[c]]
            l1 += np.abs(boxes[i, r] - t).sum()
            giou_sum += 1.0 - np_iou_giou(np_xyxy(boxes[i, r]), np_xyxy(t))[1]
    logp = np_log_softmax(logits.astype(np.float64))
    nll = -np.take_along_axis(logp, target_classes[..., None], -1)[..., 0]
    w = np.where(target_classes == k, eos, 1.0)
    num_boxes = max(mask.sum(), 1)
    ce = (w * nll).sum() / w.sum()
    out = {"loss_ce": ce, "loss_bbox": l1 / num_boxes, "loss_giou": giou_sum / num_boxes}
    out["loss"] = out["loss_ce"] + 5 * out["loss_bbox"] + 2 * out["loss_giou"]
    return out


def random_batch(rng, counts, n=6, m=4, k=3):
    """Predictions [B, n, ...] and padded targets [B, m, ...] with the given real counts."""
    b = len(counts)
    logits = rng.normal(size=(b, n, k + 1)).astype(np.float32)
    boxes = np.concatenate(
        [rng.uniform(0.3, 0.7, (b, n, 2)), rng.uniform(0.05, 0.5, (b, n, 2))], -1
    ).astype(np.float32)
    tboxes = np.concatenate(
        [rng.uniform(0.3, 0.7, (b, m, 2)), rng.uniform(0.05, 0.5, (b, m, 2))], -1
    ).astype(np.float32)
    labels = rng.integers(0, k, (b, m)).astype(np.int32)
    mask = np.arange(m)[None, :] < np.asarray(counts)[:, None]
    # Garbage in the padded slots must not matter.
    tboxes[~mask] = np.nan
    labels[~mask] = 99
    return logits, boxes, labels, tboxes, mask


set_loss_jit = jax.jit(det.set_loss)


def assert_loss_close(got, want, rtol=2e-5, atol=2e-6):
    for name in ("loss_ce", "loss_bbox", "loss_giou", "loss"):
        np.testing.assert_allclose(float(got[name]), want[name], rtol=rtol, atol=atol, err_msg=name)


# ----------------------------------------------------------------------------- boxes


def test_box_format_round_trips():
    rng = np.random.default_rng(0)
    cxcywh = rng.uniform(0.1, 0.9, (3, 5, 4)).astype(np.float32)
    xyxy = det.cxcywh_to_xyxy(cxcywh)
    np.testing.assert_allclose(det.xyxy_to_cxcywh(xyxy), cxcywh, atol=1e-6)
    np.testing.assert_allclose(
        det.cxcywh_to_xyxy(jnp.array([0.5, 0.5, 0.2, 0.4])), [0.4, 0.3, 0.6, 0.7], atol=1e-7
    )
    coco = np.array([[10.0, 20.0, 30.0, 5.0]])
    np.testing.assert_allclose(det.coco_xywh_to_xyxy(coco), [[10, 20, 40, 25]])
    np.testing.assert_allclose(det.xyxy_to_coco_xywh(det.coco_xywh_to_xyxy(coco)), coco)
    np.testing.assert_allclose(det.box_area(jnp.array([[10.0, 20, 40, 25]])), [150.0])
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        det.cxcywh_to_xyxy(jnp.zeros((3, 5)))


SPECIAL_PAIRS = [  # (a, b) xyxy
    ([0, 0, 1, 1], [2, 0, 3, 1]),  # disjoint: IoU 0, GIoU -1/3
    ([0, 0, 4, 4], [1, 1, 2, 2]),  # nested
    ([0.1, 0.2, 0.5, 0.9], [0.1, 0.2, 0.5, 0.9]),  # identical
    ([0, 0, 2, 2], [1, 1, 3, 3]),  # overlapping
    ([0, 0, 1, 1], [1, 0, 2, 1]),  # touching edges
    ([0.3, 0.3, 0.3, 0.3], [0.3, 0.3, 0.3, 0.3]),  # identical points: zero union, zero enclosing
    ([0.2, 0.2, 0.2, 0.6], [0.2, 0.2, 0.2, 0.6]),  # identical zero-width lines
    ([0.2, 0.2, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5]),  # two distinct points: zero union
    ([0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1]),  # a point inside a box
    ([0, 0, 1, 1], [0.5, 0.0, 0.5, 1.0]),  # a zero-width box across a box
]


def test_iou_and_giou_against_numpy_including_degenerate_boxes():
    a = np.array([p[0] for p in SPECIAL_PAIRS], np.float32)
    b = np.array([p[1] for p in SPECIAL_PAIRS], np.float32)
    rng = np.random.default_rng(1)
    lo = rng.uniform(0, 0.6, (7, 2))
    rand = np.concatenate([lo, lo + rng.uniform(0, 0.4, (7, 2))], -1).astype(np.float32)
    a_all, b_all = np.concatenate([a, rand]), np.concatenate([b, rand[::-1]])
    iou, union = jax.jit(det.box_iou)(a_all, b_all)
    giou = jax.jit(det.generalized_box_iou)(a_all, b_all)
    assert iou.shape == union.shape == giou.shape == (len(a_all), len(b_all))
    want = np.array([[np_iou_giou(x, y) for y in b_all.astype(np.float64)] for x in a_all])
    for got, ref, name in ((iou, want[..., 0], "iou"), (giou, want[..., 1], "giou"),
                           (union, want[..., 2], "union")):
        assert np.isfinite(np.asarray(got)).all(), name
        np.testing.assert_allclose(got, ref, atol=2e-6, err_msg=name)
    # The diagonal of the pairwise matrices is the elementwise version.
    np.testing.assert_allclose(det.generalized_box_iou_elementwise(a_all, b_all), np.diag(giou),
                               atol=1e-7)
    # Hand values: disjoint unit boxes 1 apart -> -1/3; identical -> exactly 1.
    np.testing.assert_allclose(giou[0, 0], -1 / 3, rtol=1e-6)
    assert float(giou[2, 2]) == 1.0 and float(iou[2, 2]) == 1.0
    # Batched leading axes broadcast.
    batched = det.generalized_box_iou(np.stack([a_all, a_all]), b_all)
    np.testing.assert_allclose(batched[1], giou)


def test_giou_gradients_are_finite_on_degenerate_boxes():
    a = np.array([p[0] for p in SPECIAL_PAIRS], np.float32)
    b = np.array([p[1] for p in SPECIAL_PAIRS], np.float32)
    total = lambda x, y: det.generalized_box_iou(x, y).sum()  # noqa: E731
    grads = jax.jit(jax.grad(total, argnums=(0, 1)))(a, b)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


# ----------------------------------------------------------------------------- matching


def _scipy_cost(c):
    r, k = scipy.optimize.linear_sum_assignment(c)
    return c[r, k].sum()


assign_jit = jax.jit(det.assign)
assign_scipy_jit = jax.jit(lambda c: det.assign(c, backend="scipy"))


@pytest.mark.parametrize("n, m", [(6, 6), (8, 3)])
def test_assign_total_cost_equals_scipy(n, m):
    rng = np.random.default_rng(n * 10 + m)
    cost = rng.normal(size=(5, n, m)).astype(np.float32)
    rows = np.asarray(assign_jit(cost))
    assert rows.shape == (5, m)
    for c, r in zip(cost, rows):
        assert len(set(r.tolist())) == m  # distinct queries
        np.testing.assert_allclose(c[r, np.arange(m)].sum(), _scipy_cost(c), rtol=1e-5)
    # The host backend through pure_callback finds the same optimum.
    host = np.asarray(assign_scipy_jit(cost))
    for c, r, h in zip(cost, rows, host):
        np.testing.assert_allclose(c[h, np.arange(m)].sum(), c[r, np.arange(m)].sum(), rtol=1e-5)


def test_batched_matching_equals_one_matching_per_example():
    rng = np.random.default_rng(2)
    cost = rng.normal(size=(4, 7, 5)).astype(np.float32)
    batched = np.asarray(assign_jit(cost))
    single = np.stack([np.asarray(assign_jit(c)) for c in cost])
    np.testing.assert_array_equal(batched, single)
    # Also under an outer vmap (the pure_callback backend too).
    np.testing.assert_array_equal(np.asarray(jax.vmap(assign_jit)(cost)), batched)
    np.testing.assert_array_equal(np.asarray(jax.vmap(assign_scipy_jit)(cost)),
                                  np.asarray(assign_scipy_jit(cost)))


def test_optax_matches_scipy_with_fewer_rows_than_columns():
    # Our `assign` requires N >= M (DETR); the underlying optax call handles n < m too.
    rng = np.random.default_rng(3)
    c = rng.normal(size=(3, 7)).astype(np.float32)
    i, j = optax.assignment.hungarian_algorithm(jnp.asarray(c))
    np.testing.assert_allclose(c[np.asarray(i), np.asarray(j)].sum(), _scipy_cost(c), rtol=1e-5)
    with pytest.raises(ValueError, match=r"more target slots \(7\) than queries \(3\)"):
        det.assign(c)
    # Non-finite costs (a diverged prediction) still give a valid assignment.
    bad = c.T.copy()
    bad[0, :] = np.nan
    bad[2, 1] = np.inf
    rows = np.asarray(assign_jit(bad))
    assert len(set(rows.tolist())) == 3 and 0 not in rows and rows[1] != 2
    finite = np.nan_to_num(bad, nan=1e6, posinf=1e6)
    np.testing.assert_allclose(finite[rows, np.arange(3)].sum(), _scipy_cost(finite), rtol=1e-6)


def test_padded_targets_never_change_the_real_matching():
    rng = np.random.default_rng(4)
    logits, boxes, labels, tboxes, mask = random_batch(rng, counts=[3, 1, 4, 2], n=7, m=5)
    match = jax.jit(det.hungarian_match)(logits, boxes, labels, tboxes, mask)
    host = jax.jit(lambda *a: det.hungarian_match(*a, backend="scipy"))(
        logits, boxes, labels, tboxes, mask
    )
    np.testing.assert_array_equal(match.valid, mask)
    np.testing.assert_array_equal(match.tgt_idx, np.broadcast_to(np.arange(5), (4, 5)))
    for i in range(4):
        real = np.flatnonzero(mask[i])
        (rows, cols), cost = np_match(logits[i], boxes[i], labels[i, real], tboxes[i, real])
        pred = np.asarray(match.pred_idx[i])
        assert len(set(pred.tolist())) == 5
        # Same total over the real targets as scipy on the unpadded problem.
        np.testing.assert_allclose(cost[pred[real], np.arange(len(real))].sum(),
                                   cost[rows, cols].sum(), rtol=1e-5)
        hp = np.asarray(host.pred_idx[i])
        np.testing.assert_allclose(cost[hp[real], np.arange(len(real))].sum(),
                                   cost[rows, cols].sum(), rtol=1e-5)


def test_matcher_compiles_once_for_any_number_of_objects():
    traces = []

    @jax.jit
    def match(*args):
        traces.append(1)  # runs only while tracing
        return det.hungarian_match(*args)

    rng = np.random.default_rng(5)
    for counts in ([0, 4], [2, 1], [4, 3], [1, 0]):
        logits, boxes, labels, tboxes, mask = random_batch(rng, counts=counts, n=6, m=4)
        out = match(logits, boxes, labels, tboxes, mask)
        np.testing.assert_array_equal(out.valid, mask)  # an image without objects matches nothing
        for i, pred in enumerate(np.asarray(out.pred_idx)):
            assert len(set(pred.tolist())) == 4
    assert len(traces) == 1


def test_an_image_without_objects_matches_nothing_and_costs_the_no_object_term():
    rng = np.random.default_rng(6)
    logits, boxes, labels, tboxes, mask = random_batch(rng, counts=[0], n=6, m=4)
    out = set_loss_jit(logits, boxes, labels, tboxes, mask)
    # Every query's target is no-object (weight 0.1 everywhere, so the weighted mean is the mean).
    no_object = -np_log_softmax(logits[0].astype(np.float64))[:, -1].mean()
    np.testing.assert_allclose(float(out["loss_ce"]), no_object, rtol=1e-6)
    np.testing.assert_allclose(float(out["loss"]), no_object, rtol=1e-6)
    assert float(out["loss_bbox"]) == 0.0 and float(out["loss_giou"]) == 0.0
    assert float(out["num_boxes"]) == 1.0  # clamped at 1


# ----------------------------------------------------------------------------- set loss


def test_set_loss_against_numpy_reference_with_global_box_count():
    rng = np.random.default_rng(7)
    logits, boxes, labels, tboxes, mask = random_batch(rng, counts=[1, 3], n=6, m=4)
    out = set_loss_jit(logits, boxes, labels, tboxes, mask)
    want = np_detr_loss(logits, boxes, labels, tboxes, mask)
    assert_loss_close(out, want)
    assert float(out["num_boxes"]) == 4.0
    # Normalised by the global count (1 + 3), not per image: the per-image sums add up.
    per_image = [set_loss_jit(*(x[i : i + 1] for x in (logits, boxes, labels, tboxes, mask)))
                 for i in range(2)]
    for name in ("loss_bbox", "loss_giou"):
        summed = float(per_image[0][name]) * 1 + float(per_image[1][name]) * 3
        np.testing.assert_allclose(float(out[name]) * 4, summed, rtol=1e-5)
        mean_of_means = (float(per_image[0][name]) + float(per_image[1][name])) / 2
        assert abs(float(out[name]) - mean_of_means) > 1e-4


def test_cross_entropy_uses_the_no_object_weight():
    rng = np.random.default_rng(8)
    logits, boxes, labels, tboxes, mask = random_batch(rng, counts=[2, 3], n=6, m=4)
    got = float(set_loss_jit(logits, boxes, labels, tboxes, mask)["loss_ce"])
    weighted = np_detr_loss(logits, boxes, labels, tboxes, mask, eos=0.1)["loss_ce"]
    plain = np_detr_loss(logits, boxes, labels, tboxes, mask, eos=1.0)["loss_ce"]
    np.testing.assert_allclose(got, weighted, rtol=1e-5)
    assert abs(plain - weighted) > 1e-2  # the check above can tell the weight apart


def test_filler_images_leave_the_loss_through_the_image_mask():
    # Reference: the NumPy SetCriterion on the real images alone. Two filler images (no
    # objects, as a split's padded last batch holds) are appended; unmasked, their queries
    # enter the CE as no-object terms and change it, masked they must not.
    rng = np.random.default_rng(12)
    logits, boxes, labels, tboxes, mask = random_batch(rng, counts=[2, 3, 0, 0], n=6, m=4)
    real = slice(0, 2)
    want = np_detr_loss(logits[real], boxes[real], labels[real], tboxes[real], mask[real])
    image_mask = np.array([True, True, False, False])
    got = set_loss_jit(logits, boxes, labels, tboxes, mask, image_mask=image_mask)
    assert_loss_close(got, want)
    alone = set_loss_jit(*(x[real] for x in (logits, boxes, labels, tboxes, mask)))
    np.testing.assert_allclose(float(got["cardinality_error"]),
                               float(alone["cardinality_error"]), rtol=1e-6)
    unmasked = set_loss_jit(logits, boxes, labels, tboxes, mask)
    assert abs(float(unmasked["loss_ce"]) - want["loss_ce"]) > 1e-3  # the fillers did count
    with pytest.raises(ValueError, match=r"image_mask must be \[B\]"):
        det.set_loss(logits, boxes, labels, tboxes, mask, image_mask=image_mask[:3])


def test_set_loss_is_invariant_to_permuting_queries_and_targets():
    rng = np.random.default_rng(9)
    logits, boxes, labels, tboxes, mask = random_batch(rng, counts=[2, 4], n=6, m=4)
    base = set_loss_jit(logits, boxes, labels, tboxes, mask)
    q = rng.permutation(6)
    by_query = set_loss_jit(logits[:, q], boxes[:, q], labels, tboxes, mask)
    t = rng.permutation(4)  # moves padded slots in front of real ones too
    by_target = set_loss_jit(logits, boxes, labels[:, t], tboxes[:, t], mask[:, t])
    for name in ("loss", "loss_ce", "loss_bbox", "loss_giou"):
        np.testing.assert_allclose(float(by_query[name]), float(base[name]), rtol=1e-6)
        np.testing.assert_allclose(float(by_target[name]), float(base[name]), rtol=1e-6)


def test_box_losses_vanish_when_matched_predictions_equal_the_targets():
    rng = np.random.default_rng(10)
    logits, boxes, labels, tboxes, mask = random_batch(rng, counts=[3, 2], n=6, m=4)
    for i in range(2):
        queries = rng.permutation(6)
        for j in np.flatnonzero(mask[i]):
            boxes[i, queries[j]] = tboxes[i, j]
            logits[i, queries[j], labels[i, j]] += 8.0
    out = set_loss_jit(logits, boxes, labels, tboxes, mask)
    assert float(out["loss_bbox"]) <= 1e-6 and float(out["loss_giou"]) <= 1e-6
    assert_loss_close(out, np_detr_loss(logits, boxes, labels, tboxes, mask))


def test_aux_losses_match_each_layer_on_its_own_and_sum():
    rng = np.random.default_rng(11)
    layers = [random_batch(np.random.default_rng(20 + i), counts=[2, 3]) for i in range(3)]
    _, _, labels, tboxes, mask = random_batch(rng, counts=[2, 3])
    layer_logits = np.stack([x[0] for x in layers])
    layer_boxes = np.stack([x[1] for x in layers])
    out = jax.jit(det.set_loss_with_aux)(layer_logits, layer_boxes, labels, tboxes, mask)
    total = 0.0
    for i in range(3):
        want = np_detr_loss(layer_logits[i], layer_boxes[i], labels, tboxes, mask)
        suffix = "" if i == 2 else f"_{i}"
        got = {name: out[name + suffix] for name in det.COMPONENTS}
        got["loss"] = sum(w * got[c] for w, c in zip((1, 5, 2), det.COMPONENTS))
        assert_loss_close(got, want)
        total += want["loss"]
    np.testing.assert_allclose(float(out["loss"]), total, rtol=2e-5)
    assert "loss_ce_2" not in out and "cardinality_error_1" in out


def test_gradients_are_finite_and_skip_the_matching():
    rng = np.random.default_rng(12)
    logits, boxes, labels, tboxes, mask = random_batch(rng, counts=[0, 3], n=6, m=4)
    grads = jax.jit(jax.grad(lambda lg, bx: det.set_loss(lg, bx, labels, tboxes, mask)["loss"],
                             argnums=(0, 1)))(logits, boxes)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    assert np.abs(np.asarray(grads[1])).sum() > 0


def test_sharded_batch_gives_the_global_loss():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
    rng = np.random.default_rng(13)
    batch = random_batch(rng, counts=[1, 4], n=6, m=4)
    sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in batch]
    out = set_loss_jit(*sharded)
    assert_loss_close(out, np_detr_loss(*batch))
    assert float(out["num_boxes"]) == 5.0


# ----------------------------------------------------------------------------- bad inputs


def test_bad_targets_raise_value_errors_naming_the_problem():
    rng = np.random.default_rng(14)
    logits, boxes, labels, tboxes, mask = random_batch(rng, counts=[2, 1], n=6, m=4)
    tboxes = np.nan_to_num(tboxes, nan=0.5)
    labels = np.where(mask, labels, 0)

    too_many = [np.concatenate([x] * 2, axis=1) for x in (labels, tboxes, mask)]
    with pytest.raises(ValueError, match=r"more target slots \(8\) than queries \(6\)"):
        jax.jit(det.set_loss)(logits, boxes, *too_many)  # static shapes: raised while tracing
    with pytest.raises(ValueError, match="more objects than queries"):
        det.validate_targets(too_many[1], too_many[0], too_many[2], num_classes=3, num_queries=6)

    bad = labels.copy()
    bad[1, 0] = 3
    with pytest.raises(ValueError, match=r"class id out of range \[0, 3\).*\(1, 0\).*label 3"):
        det.set_loss(logits, boxes, bad, tboxes, mask)  # concrete targets are validated
    bad[1, 0] = -1
    with pytest.raises(ValueError, match="class id out of range"):
        det.validate_targets(tboxes, bad, mask, num_classes=3, num_queries=6)

    neg = tboxes.copy()
    neg[0, 1, 2] = -0.1
    with pytest.raises(ValueError, match=r"negative box size.*\(0, 1\)"):
        det.set_loss(logits, boxes, labels, neg, mask)
    out = tboxes.copy()
    out[0, 0] = [0.9, 0.5, 0.4, 0.2]
    with pytest.raises(ValueError, match=r"outside the normalised image \[0, 1\]"):
        det.validate_targets(out, labels, mask, num_classes=3, num_queries=6)
    # Garbage in padded slots is fine.
    pad = tboxes.copy()
    pad[~mask] = -5.0
    det.validate_targets(pad, np.where(mask, labels, 99), mask, num_classes=3, num_queries=6)

    with pytest.raises(ValueError, match=r"targets must be labels \[\.\.\., M\]"):
        det.set_loss(logits, boxes, labels[:, :3], tboxes, mask)
    with pytest.raises(ValueError, match="backend must be one of"):
        det.assign(jnp.zeros((3, 2)), backend="lapjv")


def test_scenes_detection_batches_are_valid_targets():
    # The layout the shared batcher gives (scenes.detection_batch, padded by pad_to_count) is the
    # one the loss takes: predictions equal to the targets leave only the CE term.
    scenes = sc.Scenes("validation", source="digits", num_examples=2)
    batch = sc.detection_batch(scenes, range(2))
    boxes, labels, mask = batch["boxes"], batch["labels"], batch["box_mask"]
    num_classes, n = 10, 6
    det.validate_targets(boxes, labels, mask, num_classes=num_classes, num_queries=n)
    pred_boxes = np.full((2, n, 4), 0.5, np.float32)
    logits = np.zeros((2, n, num_classes + 1), np.float32)
    pred_boxes[:, : boxes.shape[1]] = boxes
    logits[:, : boxes.shape[1]] = 9.0 * np.eye(num_classes + 1)[labels]
    out = set_loss_jit(logits, pred_boxes, labels, boxes, mask.astype(np.float32))  # 0/1 mask
    assert float(out["num_boxes"]) == mask.sum()
    assert float(out["loss_bbox"]) <= 1e-6 and float(out["loss_giou"]) <= 1e-6
    assert_loss_close(out, np_detr_loss(logits, pred_boxes, labels, boxes, mask))
