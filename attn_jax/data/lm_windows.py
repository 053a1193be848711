"""Language-model rows: token streams, their windows, and the batches made of them.

Two layouts, one convention (eos = 2 both starts and separates documents):
  * a stream `token_stream(texts)` = eos, doc_0, eos, doc_1, eos, ... (the stdlib corpus),
    read in training as random windows of seq_len + 1 tokens (`lm_train_dataset`) and in
    evaluation as stride-seq_len windows that cover every target once (`lm_eval_dataset`);
  * one sentence per row, `[eos] + ids + [eos]` (lm1b, `sentence_lm_dataset`);
  * a stream cut into `batch` parallel tracks for a stateful LM (`lm_track_dataset`): row r of
    step s + 1 continues row r of step s, so a recurrent state carried across steps reads one
    contiguous text; evaluation reads the split as `batch` tracks in one batch
    (`lm_track_eval_dataset`), every target once.

Batches are {'inputs', 'targets': int32 [b_local, seq_len], 'mask': float32 [b_local]}, targets
= inputs shifted by one, pad 0; they come from `attn_jax.data.batcher`.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from attn_jax.data import batcher
from attn_jax.data.tokenizers import EOS_ID, PAD_ID, Tokenizer, pad_batch


def token_stream(texts: Sequence[str], tokenizer: Tokenizer) -> np.ndarray:
    """int32 [n]: eos, doc_0, eos, doc_1, eos, ...: eos both separates and ends documents."""
    parts = [np.array([EOS_ID], np.int32)]
    for ids in tokenizer.encode_many(texts):
        parts += [np.asarray(ids, np.int32), np.array([EOS_ID], np.int32)]
    return np.concatenate(parts)


def lm_target_bytes(texts: Sequence[str]) -> int:
    """Bytes the targets of `token_stream(texts, ...)` stand for: UTF-8 bytes + one per eos.

    The eos after each document counts as one byte (a separator), so the denominator of bits
    per byte is the same for every tokenizer.
    """
    return sum(len(t.encode("utf-8")) for t in texts) + len(texts)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014): a bijective 64-bit hash, vectorised."""
    x = x.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def window_offsets(indices: np.ndarray, seed: int, num_starts: int) -> np.ndarray:
    """Start of random window `indices[i]`: hash(seed, index) mod num_starts, random access."""
    with np.errstate(over="ignore"):  # the multiplications wrap modulo 2**64 by design
        key = _mix64(np.array([seed + 0x9E3779B97F4A7C15], np.uint64))
        h = _mix64(np.asarray(indices, np.uint64) ^ key)
    return (h % np.uint64(num_starts)).astype(np.int64)


def random_windows(stream: np.ndarray, seq_len: int, n: int, seed: int,
                   start: int = 0) -> np.ndarray:
    """int32 [n, seq_len + 1]: windows `start .. start + n - 1` of `lm_train_dataset`'s stream."""
    num_starts = len(stream) - seq_len
    if seq_len < 1 or num_starts < 1:
        raise ValueError(f"need 1 <= seq_len < len(stream); got seq_len={seq_len}, "
                         f"len(stream)={len(stream)}")
    return _windows_at(np.asarray(stream, np.int32),
                       window_offsets(np.arange(start, start + n), seed, num_starts), seq_len)


def _windows_at(stream: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """int32 [len(starts), seq_len + 1]: stream[s : s + seq_len + 1] for each start s."""
    return stream[starts[:, None] + np.arange(seq_len + 1)]


def eval_windows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """int32 [ceil((n - 1) / seq_len), seq_len + 1]: windows at stride seq_len, 0-padded.

    Consecutive windows share one token, so the targets `w[:, 1:]` cover stream[1:] exactly once
    (the last window's tail is pad, weight 0): the summed NLL is that of the whole text.
    """
    if seq_len < 1 or len(stream) < 2:
        raise ValueError(f"need seq_len >= 1 and len(stream) >= 2; got seq_len={seq_len}, "
                         f"len(stream)={len(stream)}")
    m = -(-(len(stream) - 1) // seq_len)
    padded = np.full(m * seq_len + 1, PAD_ID, np.int32)
    padded[:len(stream)] = stream
    return padded[np.arange(m)[:, None] * seq_len + np.arange(seq_len + 1)]


def _lm_batch(windows: np.ndarray) -> batcher.Batch:
    """windows int32 [b, seq_len + 1] -> {'inputs': [b, seq_len], 'targets': [b, seq_len]}."""
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def lm_train_dataset(stream: np.ndarray, *, seq_len: int, global_batch_size: int,
                     seed: int = 0, process_index: int | None = None,
                     process_count: int | None = None) -> grain.MapDataset:
    """Endless {'inputs', 'targets'} int32 [b_local, seq_len] (+ 'mask', all 1) from random
    windows of `stream`.

    Global row k of batch j is window j * global_batch_size + k of `random_windows`, so the
    data is a pure function of (stream, seed, step).
    """
    stream = np.asarray(stream, np.int32)
    random_windows(stream, seq_len, 0, seed)  # validates seq_len against the stream
    num_starts = len(stream) - seq_len

    def collate(batch: batcher.IndexBatch) -> batcher.Batch:
        return _lm_batch(_windows_at(stream, window_offsets(batch.indices, seed, num_starts),
                                     seq_len))

    # Window k is a pure function of (seed, k), so the index range can be (practically) endless.
    return batcher.batched_dataset(batcher.ENDLESS, global_batch_size, collate, train=True,
                                   order="sequential", process_index=process_index,
                                   process_count=process_count)


def lm_eval_dataset(stream: np.ndarray, *, seq_len: int, global_batch_size: int,
                    process_index: int | None = None,
                    process_count: int | None = None) -> grain.MapDataset:
    """One in-order pass over `eval_windows(stream, seq_len)`; the last batch is 0-padded."""
    windows = eval_windows(np.asarray(stream, np.int32), seq_len)

    def collate(batch: batcher.IndexBatch) -> batcher.Batch:
        real = (batch.mask > 0)[:, None]
        return _lm_batch(np.where(real, windows[batch.indices], np.int32(PAD_ID)))

    return batcher.batched_dataset(len(windows), global_batch_size, collate, train=False,
                                   process_index=process_index, process_count=process_count)


def track_windows(stream: np.ndarray, seq_len: int, num_tracks: int,
                  indices: np.ndarray) -> np.ndarray:
    """int32 [len(indices), seq_len + 1]: the windows of `lm_track_dataset`'s global rows.

    Global row k of step s (index s * num_tracks + k) is track k's s-th window: the stream cut
    into num_tracks tracks of T = len(stream) // num_tracks tokens, track k starting at k * T and
    reading seq_len new tokens per step, wrapping from the stream's end to its start (an eos to
    an eos, a document boundary): stream[(k * T + s * seq_len + j) mod len(stream)], j <= seq_len.
    Window s + 1 starts on the last token of window s.
    """
    n = len(stream)
    step, track = np.divmod(np.asarray(indices, np.int64), num_tracks)
    starts = (track * (n // num_tracks) + (step % n) * seq_len) % n
    return np.asarray(stream, np.int32)[(starts[:, None] + np.arange(seq_len + 1)) % n]


def check_tracks(num_stream_tokens: int, seq_len: int, num_tracks: int) -> None:
    """ValueError unless every track is longer than one window (else rows would overlap)."""
    if seq_len < 1 or num_tracks < 1 or num_stream_tokens // num_tracks <= seq_len:
        raise ValueError(f"a stream of {num_stream_tokens} tokens cannot be cut into "
                         f"{num_tracks} tracks (batch_size) of more than seq_len={seq_len} "
                         "tokens each: lower batch_size or seq_len")


def lm_track_dataset(stream: np.ndarray, *, seq_len: int, global_batch_size: int,
                     process_index: int | None = None,
                     process_count: int | None = None) -> grain.MapDataset:
    """Endless {'inputs', 'targets'} int32 [b_local, seq_len] (+ 'mask', all 1): global row k
    of step s is `track_windows` row (s, k), so row k of every step continues row k of the
    step before. A pure function of (stream, step): resuming at step s reads what a straight
    run reads; each process reads only its rows (`batcher.host_rows`)."""
    stream = np.asarray(stream, np.int32)
    check_tracks(len(stream), seq_len, global_batch_size)

    def collate(batch: batcher.IndexBatch) -> batcher.Batch:
        return _lm_batch(track_windows(stream, seq_len, global_batch_size, batch.indices))

    return batcher.batched_dataset(batcher.ENDLESS, global_batch_size, collate, train=True,
                                   order="sequential", process_index=process_index,
                                   process_count=process_count)


def eval_tracks(stream: np.ndarray, seq_len: int, num_tracks: int) -> np.ndarray:
    """int32 [num_tracks, L + 1]: the stream as num_tracks consecutive tracks, L the smallest
    multiple of seq_len with num_tracks * L >= len(stream) - 1, 0-padded. Track r's targets
    `w[r, 1:]` are stream[1 + r * L : 1 + (r + 1) * L], so all targets cover stream[1:] exactly
    once (as `eval_windows`' do) and a state carried along a track reads contiguous text."""
    if seq_len < 1 or num_tracks < 1 or len(stream) < 2:
        raise ValueError(f"need seq_len >= 1, num_tracks >= 1 and len(stream) >= 2; got "
                         f"seq_len={seq_len}, num_tracks={num_tracks}, len(stream)={len(stream)}")
    length = -(-(len(stream) - 1) // (num_tracks * seq_len)) * seq_len
    padded = np.full(num_tracks * length + 1, PAD_ID, np.int32)
    padded[:len(stream)] = stream
    return padded[np.arange(num_tracks)[:, None] * length + np.arange(length + 1)]


def lm_track_eval_dataset(stream: np.ndarray, *, seq_len: int, global_batch_size: int,
                          process_index: int | None = None,
                          process_count: int | None = None) -> grain.MapDataset:
    """One batch: `eval_tracks(stream, seq_len, global_batch_size)` as {'inputs', 'targets'}
    int32 [b_local, L], this process's rows; a stateful model scans it chunk by chunk."""
    tracks = eval_tracks(np.asarray(stream, np.int32), seq_len, global_batch_size)

    def collate(batch: batcher.IndexBatch) -> batcher.Batch:
        return _lm_batch(tracks[batch.indices])

    return batcher.batched_dataset(global_batch_size, global_batch_size, collate, train=False,
                                   process_index=process_index, process_count=process_count)


def sentence_lm_dataset(texts: Sequence[str], tokenizer: Tokenizer, *, seq_len: int,
                        global_batch_size: int, seed: int = 0, train: bool = True,
                        process_index: int | None = None,
                        process_count: int | None = None) -> grain.MapDataset:
    """One sentence per row (lm1b): `[eos] + ids + [eos]` cut/padded to seq_len + 1, shifted:
    {'inputs', 'targets': int32 [b_local, seq_len], 'mask': float32 [b_local]}.

    The leading eos is the start-of-document context of `token_stream`, so a model trained on
    either layout sees the same convention. Train: order 'stream' of `batcher.index_batches`.
    """
    def collate(batch: batcher.IndexBatch) -> batcher.Batch:
        ids = tokenizer.encode_many([texts[i] for i in batch.real()])
        seqs = [[EOS_ID] + s + [EOS_ID] for s in ids] + [[]] * (len(batch.indices) - len(ids))
        return _lm_batch(pad_batch(seqs, seq_len + 1))

    return batcher.batched_dataset(len(texts), global_batch_size, collate, train=train, seed=seed,
                                   order="stream", process_index=process_index,
                                   process_count=process_count)
