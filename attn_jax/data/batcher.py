"""The one batcher: global step -> global batch of example indices -> this host's rows -> batch.

    rows = host_rows(global_batch_size, process_index, process_count)
    steps = index_batches(num_examples, global_batch_size, train=True, seed=0)
    ds = host_batches(steps, collate, rows)   # element s: {**collate(rows of step s), 'mask'}
    it = batch_iterator(ds)                   # checkpointable: get_state() / set_state(state)
    # or, the three steps in one: batched_dataset(num_examples, global_batch_size, collate, ...)

Every host builds the same global batch of indices for step s and keeps rows
[p * b, (p + 1) * b), b = global_batch_size / process_count; random parameters (augmentation)
are drawn for the whole global batch before the cut. Host batches concatenated over processes
are therefore exactly the single-process batch: a run does not depend on how many hosts feed
it. Only the host's rows are read. Each batch carries 'mask' float32 [b]: 1 for real examples,
0 for the filler rows of the last evaluation batch (whose indices are 0).

Training visits examples in one of three orders (`index_batches`): 'epochs' (the images),
'stream' (the text pairs and sentences) and 'sequential' (the LM's hashed windows). The images
and the text datasets had different orders before they shared this batcher; both are kept so
that every measured run reproduces batch for batch. New datasets should take 'epochs'.

Targets of varying size (boxes per image, tokens per caption) are padded to a fixed count by
`pad_to_count`, with a mask, so the shapes, and so the compiled step, never change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

Batch = dict[str, np.ndarray]
ORDERS = ("epochs", "stream", "sequential")
ENDLESS = 2**62  # examples of a `sequential` source whose example k is a pure function of k


class IndexBatch(NamedTuple):
    """The example indices of one step's batch (global, or one host's rows of it).

    indices: int64 [b], 0 on filler rows; mask: float32 [b], 1 = real example, 0 = filler.
    """

    indices: np.ndarray
    mask: np.ndarray

    def rows(self, rows: slice) -> IndexBatch:
        """The rows `rows` of this batch (a host's part of the global batch)."""
        return IndexBatch(self.indices[rows], self.mask[rows])

    def real(self) -> list[int]:
        """Indices of the real rows as Python ints, in row order (filler rows come last)."""
        return [int(i) for i in self.indices[self.mask > 0]]


def host_rows(global_batch_size: int, process_index: int | None = None,
              process_count: int | None = None) -> slice:
    """Rows of each global batch this process keeps: [p * b_local, (p + 1) * b_local),
    b_local = global_batch_size / process_count; None: jax.process_index() / process_count()."""
    if process_index is None or process_count is None:
        import jax  # pylint: disable=import-outside-toplevel

        process_index, process_count = jax.process_index(), jax.process_count()
    if process_count < 1 or global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple "
                         f"of process_count={process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count="
                         f"{process_count})")
    b_local = global_batch_size // process_count
    return slice(process_index * b_local, (process_index + 1) * b_local)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: computed once per epoch, vectorised (grain's per-index
    shuffle costs ~40 us per example in Python, a whole second per Fashion-MNIST epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    order.flags.writeable = False
    return order


def _epoch_batch(step: int, _: int, *, num_examples: int, batch_size: int, seed: int) -> IndexBatch:
    epoch, i = divmod(step, num_examples // batch_size)
    indices = _epoch_permutation(num_examples, seed, epoch)[i * batch_size:(i + 1) * batch_size]
    return IndexBatch(indices, np.ones(batch_size, np.float32))


def _stream_batch(indices: Sequence[int]) -> IndexBatch:
    return IndexBatch(np.asarray(indices, np.int64), np.ones(len(indices), np.float32))


def _eval_batch(step: int, *, num_examples: int, batch_size: int) -> IndexBatch:
    indices = np.arange(step * batch_size, (step + 1) * batch_size)
    mask = (indices < num_examples).astype(np.float32)
    return IndexBatch(np.where(mask > 0, indices, 0), mask)


def index_batches(num_examples: int, global_batch_size: int, *, train: bool, seed: int = 0,
                  order: str = "epochs") -> grain.MapDataset:
    """Random-access dataset whose element s is the IndexBatch [global_batch_size] of step s.

    Eval (train=False): one pass in order; the short last batch is filled with index 0, mask 0.
    Train: endless, every row real, in one of three orders:
      'epochs': each epoch a fresh permutation (NumPy, seeded by (seed, epoch)) cut into full
        batches; the remainder of each epoch is dropped (the image pipeline).
      'stream': epochs of grain's `index_shuffle` permutation (seed + epoch) laid end to end,
        then cut: nothing dropped, a batch may straddle two epochs (the text datasets).
      'sequential': 0, 1, 2, ... wrapping at num_examples, for sources whose example k is
        itself a pure function of k (the LM's random windows, with num_examples=ENDLESS).
    """
    if order not in ORDERS:
        raise ValueError(f"order={order!r} must be one of {ORDERS}")
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size={global_batch_size} must be >= 1")
    if num_examples < (1 if train else 0):
        raise ValueError(f"num_examples={num_examples} must be >= {1 if train else 0} "
                         f"(train={train})")
    if not train:
        fn = functools.partial(_eval_batch, num_examples=num_examples, batch_size=global_batch_size)
        return grain.MapDataset.range(-(-num_examples // global_batch_size)).map(fn)
    if order == "epochs":
        if num_examples < global_batch_size:
            raise ValueError(f"num_examples={num_examples} is fewer than one global batch of "
                             f"global_batch_size={global_batch_size} (order='epochs' drops the "
                             f"remainder of each epoch)")
        fn = functools.partial(_epoch_batch, num_examples=num_examples,
                               batch_size=global_batch_size, seed=seed)
        return grain.MapDataset.range(num_examples // global_batch_size).repeat().map_with_index(fn)
    ds = grain.MapDataset.range(num_examples)
    if order == "stream":
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed={seed} must lie in [0, 2**32) for order='stream'")
        ds = ds.shuffle(seed=seed)
    return ds.repeat(None).batch(global_batch_size, drop_remainder=True, batch_fn=_stream_batch)


def host_batches(steps: grain.MapDataset, collate: Callable[..., Batch], rows: slice, *,
                 draw: Callable[[np.random.Generator, int], tuple[np.ndarray, ...]] | None = None,
                 seed: int | None = None) -> grain.MapDataset:
    """This host's batches: element s is {**collate(batch), 'mask': float32 [b]}.

    `batch` is the IndexBatch [b] of rows `rows` (see `host_rows`) of `steps[s]`; collate reads
    only those examples and returns arrays with leading axis b. With `draw`, the random
    parameters `draw(rng, global_batch_size)` (arrays [global_batch_size, ...]) are drawn for
    the whole global batch from grain's per-step generator (a function of `seed` and s), cut to
    `rows`, and passed on: collate(batch, drawn).
    """
    if draw is None:
        return steps.map(lambda step: _finish(collate(step.rows(rows)), step.mask[rows]))
    if seed is None:
        raise ValueError("host_batches: draw needs a seed")

    def fn(step: IndexBatch, rng: np.random.Generator) -> Batch:
        drawn = tuple(x[rows] for x in draw(rng, len(step.indices)))
        return _finish(collate(step.rows(rows), drawn), step.mask[rows])

    return steps.random_map(fn, seed=seed)


def batched_dataset(num_examples: int, global_batch_size: int, collate: Callable[..., Batch], *,
                    train: bool, seed: int = 0, order: str = "epochs",
                    process_index: int | None = None, process_count: int | None = None,
                    draw: Callable[[np.random.Generator, int], tuple[np.ndarray, ...]] | None
                    = None) -> grain.MapDataset:
    """The whole batcher in one call: host_batches(index_batches(...), collate, host_rows(...)).

    Element s is this host's batch of step s, {**collate(IndexBatch [b_local]), 'mask' [b_local]}.
    With `draw` (training only), collate also gets the step's random augmentation parameters
    (`host_batches`), drawn from a seed derived from `seed` (the order's seed stays `seed`).
    """
    rows = host_rows(global_batch_size, process_index, process_count)
    steps = index_batches(num_examples, global_batch_size, train=train, seed=seed, order=order)
    if draw is None or not train:
        return host_batches(steps, collate, rows)
    augment_seed = int(np.random.SeedSequence([seed, 0xA06]).generate_state(1)[0])
    return host_batches(steps, collate, rows, draw=draw, seed=augment_seed)


def _finish(batch: Batch, mask: np.ndarray) -> Batch:
    return {**batch, "mask": mask}


def batch_iterator(ds: grain.MapDataset, prefetch: int = 8,
                   num_threads: int | None = None) -> grain.DatasetIterator:
    """A checkpointable iterator over `ds` (`get_state()` / `set_state(state)`, a small
    JSON-able dict; with orbax via `grain.checkpoint.CheckpointSave(iterator)` /
    `CheckpointRestore(iterator)`) preparing up to `prefetch` batches ahead on `num_threads`
    threads (default one, none when prefetch=0: batches built in Python only contend for the
    GIL with more, and grain's default of 16 threads is sized for file reads).
    """
    if prefetch < 0:
        raise ValueError(f"prefetch={prefetch} must be >= 0")
    if num_threads is None:
        num_threads = 1 if prefetch else 0
    if num_threads < 0:
        raise ValueError(f"num_threads={num_threads} must be >= 0")
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    it = iter(ds.to_iter_dataset(read))
    it.num_batches = len(ds)  # one pass, for progress bars (`attn_jax.progress.num_items`)
    return it


class CountedBatches(Iterator):
    """An iterator of batches that says how many one pass yields (`num_batches`), for
    progress bars: wraps a generator built over a `batch_iterator`."""

    def __init__(self, batches: Iterator[Batch], num_batches: int | None):
        self._batches, self.num_batches = batches, num_batches

    def __next__(self) -> Batch:
        return next(self._batches)


def pad_to_count(items: Sequence[Any], count: int, fill: Any = 0, *, dtype: Any = None,
                 what: str = "items") -> tuple[np.ndarray, np.ndarray]:
    """Pads per-example arrays of varying length to a fixed count, with a mask.

    items: b arrays [n_i, ...] (the same trailing shape; n_i may be 0, as on filler rows).
    Returns (array [b, count, ...] with item i in rows [:n_i] of example i and `fill` after,
    mask float32 [b, count], 1 on the n_i real rows). Raises ValueError naming the example
    (and `what` it holds, e.g. 'boxes') when n_i > count, or when trailing shapes differ.
    """
    if count < 0:
        raise ValueError(f"count={count} must be >= 0")
    arrays = [np.asarray(x) for x in items]
    if not arrays:
        raise ValueError(f"pad_to_count needs at least one example of {what}, got none")
    for i, x in enumerate(arrays):
        if x.ndim == 0 or x.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(f"example {i} has {what} of shape {x.shape}; every example needs "
                             f"[n, *{list(arrays[0].shape[1:])}] like example 0")
        if len(x) > count:
            raise ValueError(f"example {i} has {len(x)} {what}, more than count={count}; "
                             f"raise the count or drop {what} before batching")
    dtype = np.result_type(*arrays) if dtype is None else dtype
    out = np.full((len(arrays), count, *arrays[0].shape[1:]), fill, dtype)
    mask = np.zeros((len(arrays), count), np.float32)
    for i, x in enumerate(arrays):
        out[i, :len(x)] = x
        mask[i, :len(x)] = 1.0
    return out, mask
