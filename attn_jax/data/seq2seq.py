"""Sequence-to-sequence batches of (source, target) string pairs: dates, gettext, WMT14.

    ds = seq2seq_dataset(pairs, tok, tok, global_batch_size=64, max_src_len=48, max_tgt_len=12)
    batch = ds[0]  # {'inputs': int32 [b, 48], 'targets': int32 [b, 12], 'mask': float32 [b]}
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from attn_jax.data import batcher
from attn_jax.data.tokenizers import Tokenizer


def seq2seq_dataset(pairs: Sequence[tuple[str, str]], src_tokenizer: Tokenizer,
                    tgt_tokenizer: Tokenizer, *, global_batch_size: int, max_src_len: int,
                    max_tgt_len: int, seed: int = 0, train: bool = True,
                    process_index: int | None = None,
                    process_count: int | None = None) -> grain.MapDataset:
    """Batches {'inputs': int32 [b_local, max_src_len], 'targets': int32 [b_local, max_tgt_len],
    'mask': float32 [b_local]}; filler rows of the last eval batch are all pad (0).

    Each side is `ids + [eos]`, right-padded with 0 and cut to its length (see
    `Tokenizer.encode_batch`); the decoder's input is the task's `shift_right(targets)`.
    `pairs` is any random-access sequence: an in-memory list or `load_wmt14(...)`; only this
    host's rows are read. Train: order 'stream' of `batcher.index_batches` (seeded, endless).
    """
    def collate(batch: batcher.IndexBatch) -> batcher.Batch:
        real = [pairs[i] for i in batch.real()]  # filler rows come last
        inputs = np.zeros((len(batch.indices), max_src_len), np.int32)
        targets = np.zeros((len(batch.indices), max_tgt_len), np.int32)
        if real:
            inputs[:len(real)] = src_tokenizer.encode_batch([s for s, _ in real], max_src_len)
            targets[:len(real)] = tgt_tokenizer.encode_batch([t for _, t in real], max_tgt_len)
        return {"inputs": inputs, "targets": targets}

    return batcher.batched_dataset(len(pairs), global_batch_size, collate, train=train, seed=seed,
                                   order="stream", process_index=process_index,
                                   process_count=process_count)


def image_text_dataset(pairs: Sequence[tuple[np.ndarray, str]], tokenizer: Tokenizer, *,
                       global_batch_size: int, max_tgt_len: int, seed: int = 0,
                       train: bool = True, process_index: int | None = None,
                       process_count: int | None = None) -> grain.MapDataset:
    """Batches {'inputs': float32 [b_local, h, w, c], 'targets': int32 [b_local, max_tgt_len],
    'mask'} of (image, text) pairs (a captioning source); filler rows are zeros. Train: order
    'epochs' of `batcher.index_batches`."""
    if not len(pairs):
        raise ValueError("image_text_dataset needs at least one (image, text) pair")
    shape = np.shape(pairs[0][0])

    def collate(batch: batcher.IndexBatch) -> batcher.Batch:
        real = [pairs[i] for i in batch.real()]  # filler rows come last
        inputs = np.zeros((len(batch.indices), *shape), np.float32)
        targets = np.zeros((len(batch.indices), max_tgt_len), np.int32)
        if real:
            inputs[:len(real)] = np.stack([image for image, _ in real])
            targets[:len(real)] = tokenizer.encode_batch([t for _, t in real], max_tgt_len)
        return {"inputs": inputs, "targets": targets}

    return batcher.batched_dataset(len(pairs), global_batch_size, collate, train=train, seed=seed,
                                   order="epochs", process_index=process_index,
                                   process_count=process_count)
