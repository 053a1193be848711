"""Text data for the sequence tasks, by the names callers know (`text.date_splits(...)`).

A thin module: every name is re-exported from its home.
  * `attn_jax.data.datasets.dates`: CLDR dates -> ISO 8601 (offline).
  * `attn_jax.data.datasets.stdlib`: the Python standard library's source, split by file.
  * `attn_jax.data.datasets.tfds_text`: WMT14 En-De and lm1b through `tfds.data_source`.
  * `attn_jax.data.seq2seq`, `attn_jax.data.lm_windows`: their batches, token streams, windows.
  * `attn_jax.data.batcher`: the one batcher (host rows, masks, checkpointable iterator).
  * `attn_jax.eval.text_metrics`: exact match, BLEU, bits per byte.

Batches are dicts of NumPy arrays, `{'inputs': int32 [b, len_in], 'targets': int32 [b, len_out],
'mask': float32 [b]}`, pad = 0 and mask 0 on the rows that fill the last evaluation batch.
"""

from attn_jax.data.batcher import Batch, batch_iterator, host_rows
from attn_jax.data.datasets.dates import (DATE_FORMATS, DATE_LOCALES, DatePattern, date_pattern,
                                          date_patterns, date_splits, generate_dates, render_date)
from attn_jax.data.datasets.stdlib import (STDLIB_EXCLUDED_DIRS, TextSplit, in_validation,
                                           stdlib_corpus)
from attn_jax.data.datasets.tfds_text import (DatasetNotPreparedError, load_lm1b, load_wmt14,
                                              tfds_source)
from attn_jax.data.lm_windows import (eval_windows, lm_eval_dataset, lm_target_bytes,
                                      lm_train_dataset, random_windows, sentence_lm_dataset,
                                      token_stream, window_offsets)
from attn_jax.data.seq2seq import seq2seq_dataset
from attn_jax.eval.text_metrics import bits_per_byte, bleu, dates_metrics, exact_match, lm_metrics

__all__ = [
    "DATE_FORMATS", "DATE_LOCALES", "STDLIB_EXCLUDED_DIRS", "Batch", "DatasetNotPreparedError",
    "DatePattern", "TextSplit", "batch_iterator", "bits_per_byte", "bleu", "date_pattern",
    "date_patterns", "date_splits", "dates_metrics", "eval_windows", "exact_match",
    "generate_dates", "host_rows", "in_validation", "lm_eval_dataset", "lm_metrics",
    "lm_target_bytes", "lm_train_dataset", "load_lm1b", "load_wmt14", "random_windows",
    "render_date", "sentence_lm_dataset", "seq2seq_dataset", "stdlib_corpus", "tfds_source",
    "token_stream", "window_offsets",
]
