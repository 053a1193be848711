"""Tests of attn_jax.data.batcher: host rows, index batches, collate, masks, resume, padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.data import batcher
from attn_jax.data.batcher import IndexBatch


def _take(it, n):
    return [next(it) for _ in range(n)]


def _identity_collate(batch: IndexBatch) -> batcher.Batch:
    return {"index": batch.indices.copy()}


# --- host rows ---------------------------------------------------------------------------------

@pytest.mark.parametrize("global_batch_size,process_count", [(1, 1), (8, 1), (8, 2), (12, 4),
                                                             (64, 8), (7, 7)])
def test_host_rows_partition_the_global_batch(global_batch_size, process_count):
    """Reference: range(global_batch_size) cut into process_count equal, ordered blocks."""
    rows = [batcher.host_rows(global_batch_size, p, process_count) for p in range(process_count)]
    b = global_batch_size // process_count
    assert [(r.start, r.stop) for r in rows] == [(p * b, (p + 1) * b) for p in range(process_count)]
    covered = np.concatenate([np.arange(global_batch_size)[r] for r in rows])
    np.testing.assert_array_equal(covered, np.arange(global_batch_size))  # disjoint, complete


def test_host_rows_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"global_batch_size=6 .* process_count=4"):
        batcher.host_rows(6, 0, 4)
    with pytest.raises(ValueError, match=r"global_batch_size=0 "):
        batcher.host_rows(0, 0, 1)
    with pytest.raises(ValueError, match=r"process_count=0"):
        batcher.host_rows(8, 0, 0)
    with pytest.raises(ValueError, match=r"process_index=2 .* process_count=2"):
        batcher.host_rows(8, 2, 2)
    with pytest.raises(ValueError, match=r"process_index=-1"):
        batcher.host_rows(8, -1, 2)
    assert batcher.host_rows(8) == slice(0, 8)  # one process: jax.process_index/count


# --- index batches -----------------------------------------------------------------------------

def test_eval_is_one_pass_in_order_with_masked_filler():
    """Reference: arange(n) written out; the last batch is filled with index 0, mask 0."""
    ds = batcher.index_batches(10, 4, train=False)
    assert len(ds) == 3
    indices = np.concatenate([ds[s].indices for s in range(3)])
    mask = np.concatenate([ds[s].mask for s in range(3)])
    np.testing.assert_array_equal(indices, list(range(10)) + [0, 0])
    np.testing.assert_array_equal(mask, [1] * 10 + [0, 0])
    assert indices.dtype == np.int64 and mask.dtype == np.float32
    assert len(batcher.index_batches(8, 4, train=False)) == 2  # no filler batch when it divides
    assert len(batcher.index_batches(0, 4, train=False)) == 0


def test_epochs_order_drops_each_epochs_remainder_and_reshuffles():
    """Reference: set algebra per epoch; 10 examples, batch 4: 2 batches (8 distinct) per epoch."""
    ds = batcher.index_batches(10, 4, train=True, seed=7, order="epochs")
    epochs = [np.concatenate([ds[2 * e + i].indices for i in range(2)]) for e in range(5)]
    for epoch in epochs:
        assert len(set(epoch.tolist())) == 8 and epoch.max() < 10
    assert len({tuple(e) for e in epochs}) > 1  # a fresh permutation each epoch
    np.testing.assert_array_equal(ds[3].indices, batcher.index_batches(
        10, 4, train=True, seed=7, order="epochs")[3].indices)
    assert not np.array_equal(batcher.index_batches(10, 4, train=True, seed=8)[0].indices,
                              ds[0].indices)
    assert all(ds[s].mask.all() for s in range(10))
    assert len(ds) > 2**40  # endless


def test_stream_order_lays_epochs_end_to_end():
    """Reference: 10 examples, batch 4: the first 5 batches are epochs 0 and 1 back to back,
    each a permutation of range(10); batch 2 straddles them."""
    ds = batcher.index_batches(10, 4, train=True, seed=3, order="stream")
    stream = np.concatenate([ds[s].indices for s in range(5)])
    for epoch in (stream[:10], stream[10:]):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(10))
    assert not np.array_equal(stream[:10], stream[10:])
    small = batcher.index_batches(3, 4, train=True, seed=0, order="stream")  # n < batch is fine
    np.testing.assert_array_equal(np.sort(small[0].indices[:3]), [0, 1, 2])


def test_sequential_order_counts_up():
    ds = batcher.index_batches(batcher.ENDLESS, 4, train=True, order="sequential")
    np.testing.assert_array_equal(ds[0].indices, [0, 1, 2, 3])
    np.testing.assert_array_equal(ds[10**9].indices, 4 * 10**9 + np.arange(4))
    wrap = batcher.index_batches(6, 4, train=True, order="sequential")
    np.testing.assert_array_equal(wrap[1].indices, [4, 5, 0, 1])


def test_index_batches_errors_name_the_argument():
    with pytest.raises(ValueError, match="order='random'"):
        batcher.index_batches(10, 4, train=True, order="random")
    with pytest.raises(ValueError, match="global_batch_size=0"):
        batcher.index_batches(10, 0, train=False)
    with pytest.raises(ValueError, match="num_examples=0"):
        batcher.index_batches(0, 4, train=True)
    with pytest.raises(ValueError, match=r"num_examples=3 .* global_batch_size=4"):
        batcher.index_batches(3, 4, train=True, order="epochs")
    with pytest.raises(ValueError, match=r"seed=-1"):
        batcher.index_batches(10, 4, train=True, seed=-1, order="stream")


# --- collate on this host's rows ---------------------------------------------------------------

def test_collate_reads_only_host_rows_and_masks_filler():
    """Reference: a counting source; host 1 of 2 of the last eval batch (10 examples, batch 8)
    reads nothing but gets 4 filler rows with mask 0."""
    reads = []

    def collate(batch: IndexBatch) -> batcher.Batch:
        reads.extend(batch.real())
        return {"index": batch.indices}

    steps = batcher.index_batches(10, 8, train=False)
    first = [batcher.host_batches(steps, collate, batcher.host_rows(8, p, 2))[0] for p in range(2)]
    assert reads == list(range(8))
    np.testing.assert_array_equal(first[1]["index"], [4, 5, 6, 7])
    reads.clear()
    last = [batcher.host_batches(steps, collate, batcher.host_rows(8, p, 2))[1] for p in range(2)]
    assert reads == [8, 9]
    np.testing.assert_array_equal(last[0]["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(last[1]["mask"], [0, 0, 0, 0])
    np.testing.assert_array_equal(last[1]["index"], [0, 0, 0, 0])


def test_drawn_parameters_are_per_global_batch():
    """Reference: the single-process batch; with `draw`, each host's draws are its rows of the
    global draw, so hosts concatenated equal one process, and steps draw differently."""
    def draw(rng, n):
        return (rng.random(n), rng.integers(0, 100, (n, 2)))

    def collate(batch, drawn):
        return {"index": batch.indices, "u": drawn[0], "k": drawn[1]}

    steps = batcher.index_batches(20, 8, train=True, seed=1)
    whole = batcher.host_batches(steps, collate, batcher.host_rows(8, 0, 1), draw=draw, seed=5)
    hosts = [batcher.host_batches(steps, collate, batcher.host_rows(8, p, 4), draw=draw, seed=5)
             for p in range(4)]
    for s in (0, 1, 7):
        for key in ("index", "u", "k", "mask"):
            np.testing.assert_array_equal(np.concatenate([h[s][key] for h in hosts]),
                                          whole[s][key])
    assert not np.array_equal(whole[0]["u"], whole[1]["u"])
    with pytest.raises(ValueError, match="seed"):
        batcher.host_batches(steps, collate, slice(0, 8), draw=draw)


def test_batched_dataset_concatenates_over_hosts():
    """Reference: the single-process batch, for train (stream) and eval (filled) batches."""
    for train in (True, False):
        kw = dict(train=train, seed=2, order="stream")
        whole = batcher.batched_dataset(13, 8, _identity_collate, process_index=0,
                                        process_count=1, **kw)
        hosts = [batcher.batched_dataset(13, 8, _identity_collate, process_index=p,
                                         process_count=4, **kw) for p in range(4)]
        for s in range(2):
            for key in ("index", "mask"):
                np.testing.assert_array_equal(np.concatenate([h[s][key] for h in hosts]),
                                              whole[s][key])


# --- the iterator ------------------------------------------------------------------------------

@pytest.mark.parametrize("prefetch", [0, 3])
def test_batch_iterator_resumes_from_state(prefetch):
    """Reference: the uninterrupted iterator (and random access into the dataset): a fresh
    iterator given get_state() after k steps continues with batch k."""
    ds = batcher.batched_dataset(11, 4, _identity_collate, train=True, seed=4, order="epochs",
                                 process_index=1, process_count=2)
    it = batcher.batch_iterator(ds, prefetch=prefetch)
    _take(it, 6)
    state = it.get_state()
    assert state == {"next_index": 6}
    expected = _take(it, 3)
    resumed = batcher.batch_iterator(ds, prefetch=prefetch)
    resumed.set_state(state)
    for s, (a, b) in enumerate(zip(expected, _take(resumed, 3))):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["index"], ds[6 + s]["index"])
    with pytest.raises(ValueError, match="prefetch=-1"):
        batcher.batch_iterator(ds, prefetch=-1)
    with pytest.raises(ValueError, match="num_threads=-2"):
        batcher.batch_iterator(ds, num_threads=-2)


# --- variable-size targets ---------------------------------------------------------------------

def test_pad_to_count_shapes_mask_and_fill():
    """Reference: the padded array written out by hand."""
    boxes = [np.array([[0.1, 0.2, 0.3, 0.4]]), np.zeros((0, 4)),
             np.array([[1, 2, 3, 4], [5, 6, 7, 8.0]])]
    padded, mask = batcher.pad_to_count(boxes, 3, fill=-1.0, what="boxes")
    assert padded.shape == (3, 3, 4) and mask.shape == (3, 3)
    assert padded.dtype == np.float64 and mask.dtype == np.float32
    np.testing.assert_array_equal(mask, [[1, 0, 0], [0, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(padded[0], [[0.1, 0.2, 0.3, 0.4], [-1] * 4, [-1] * 4])
    np.testing.assert_array_equal(padded[1], np.full((3, 4), -1.0))
    np.testing.assert_array_equal(padded[2, :2], boxes[2])
    labels, label_mask = batcher.pad_to_count([[3, 1], [], [7]], 2, dtype=np.int32)
    np.testing.assert_array_equal(labels, [[3, 1], [0, 0], [7, 0]])
    np.testing.assert_array_equal(label_mask, [[1, 1], [0, 0], [1, 0]])
    assert labels.dtype == np.int32
    empty, empty_mask = batcher.pad_to_count([np.zeros((0, 4))], 0)
    assert empty.shape == (1, 0, 4) and empty_mask.shape == (1, 0)


def test_pad_to_count_errors_name_the_example():
    boxes = [np.zeros((2, 4)), np.zeros((5, 4))]
    with pytest.raises(ValueError, match=r"example 1 has 5 boxes, more than count=4"):
        batcher.pad_to_count(boxes, 4, what="boxes")
    with pytest.raises(ValueError, match=r"example 1 has items of shape \(3, 5\)"):
        batcher.pad_to_count([np.zeros((2, 4)), np.zeros((3, 5))], 8)
    with pytest.raises(ValueError, match=r"example 0 has items of shape \(\)"):
        batcher.pad_to_count([np.float32(1.0)], 8)
    with pytest.raises(ValueError, match="count=-1"):
        batcher.pad_to_count(boxes, -1)
    with pytest.raises(ValueError, match="at least one example"):
        batcher.pad_to_count([], 4)


def test_variable_size_targets_through_the_batcher_compile_once():
    """A toy detection set (an image and 0..5 boxes per example) through batched_dataset with
    pad_to_count: fixed shapes for every step, filler rows masked, one compilation of a jitted
    step over batches whose box counts all differ."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, 23)
    boxes = [rng.random((int(n), 4)).astype(np.float32) for n in counts]
    images = rng.random((23, 4, 4, 1)).astype(np.float32)

    def collate(batch: IndexBatch) -> batcher.Batch:
        padded, box_mask = batcher.pad_to_count(
            [boxes[i] if m else np.zeros((0, 4), np.float32) for i, m in zip(*batch)], 5,
            what="boxes")
        return {"image": images[batch.indices], "boxes": padded, "box_mask": box_mask}

    ds = batcher.batched_dataset(23, 8, collate, train=False, process_index=0, process_count=1)
    step = jax.jit(lambda b: (b["boxes"].sum(-1) * b["box_mask"] * b["mask"][:, None]).sum())
    totals = [float(step(jax.tree.map(jnp.asarray, b))) for b in ds]
    assert step._cache_size() == 1  # pylint: disable=protected-access
    assert all(b["boxes"].shape == (8, 5, 4) and b["box_mask"].shape == (8, 5) for b in ds)
    np.testing.assert_array_equal(np.concatenate([b["box_mask"].sum(1) for b in ds]),
                                  np.concatenate([counts, [0]]))
    np.testing.assert_allclose(sum(totals), sum(float(b.sum()) for b in boxes), rtol=1e-5)
