"""Sequence-to-sequence with the Transformer encoder-decoder (Vaswani et al. 2017).

`config.data.dataset`:
  * 'dates' (offline): CLDR-written dates in ~30 locales -> ISO 8601 (`attn_jax.data.text`),
    generated from (train_size, validation_size, test_size, seed, locales, formats,
    start_year, end_year); held-out splits share no date with train.
  * 'wmt14_de_en' (online): tfds `wmt14_translate/de-en` prepared as ArrayRecord in data_dir;
    source_lang / target_lang pick the direction (default en -> de, the paper's headline).

Training minimises label-smoothed cross entropy (Szegedy et al. 2016; eps = config.label_smoothing)
over target tokens. Evaluation reports per-token loss and accuracy; the artefacts decode
`decode_splits` (greedy, or beam search with the GNMT length penalty when beam_size > 1, the
paper's sec. 6.1) and report exact match and sacrebleu BLEU, with a few example translations.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from attn_jax import decoding
from attn_jax.data import text
from attn_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from attn_jax.losses import cross_entropy_with_label_smoothing
from attn_jax.tasks.sequence import SequenceTask
from attn_jax.train import sharding as shd

DATASETS = ("dates", "wmt14_de_en")


class Seq2SeqTask(SequenceTask):
    """Batches {'inputs' [b, max_src_len], 'targets' [b, max_tgt_len], 'mask' [b]}, pad 0.

    config.data keys (besides tokenizer and transfer keys, see `SequenceTask`):
      dataset, max_src_len, max_tgt_len, eval_splits, decode_splits, decode_max_examples
      (0 = all), beam_size (1 = greedy), length_penalty (alpha), max_decode_len (default
      max_tgt_len), num_examples_shown; dates: train_size, validation_size, test_size, seed,
      locales, formats, start_year, end_year; wmt: data_dir, source_lang, target_lang,
      train_split, spm_train_pairs (pairs read to train SentencePiece).
    """

    DATA_KEYS = frozenset({
        "dataset", "max_src_len", "max_tgt_len", "eval_splits", "decode_splits",
        "decode_max_examples", "beam_size", "length_penalty", "max_decode_len",
        "num_examples_shown", "train_size", "validation_size", "test_size", "seed", "locales",
        "formats", "start_year", "end_year", "data_dir", "source_lang", "target_lang",
        "train_split", "spm_train_pairs"})
    MODEL_NAME = "transformer"

    def __init__(self, config):
        data = config.data
        self.dataset = data.get("dataset", "dates")
        if self.dataset not in DATASETS:
            raise ValueError(f"config.data.dataset={self.dataset!r}: choose one of {DATASETS}")
        super().__init__(config)
        self.max_src_len = int(data.get("max_src_len", 64))
        self.max_tgt_len = int(data.get("max_tgt_len", 64))
        self.max_decode_len = int(data.get("max_decode_len", 0)) or self.max_tgt_len
        self.beam_size = int(data.get("beam_size", 1))
        self.alpha = float(data.get("length_penalty", 0.6))
        self._pairs: dict[str, Sequence[tuple[str, str]]] = {}
        self._decode_fn: Any = None

    def _model_defaults(self) -> dict[str, Any]:
        # One tokenizer for both sides; its pad is masked and its bos starts the decoder.
        return {"pad_id": PAD_ID, "bos_id": BOS_ID, "output_vocab_size": None}

    def validate(self) -> None:
        super().validate()
        longest = max(self.max_src_len, self.max_tgt_len, self.max_decode_len)
        if min(self.max_src_len, self.max_tgt_len, self.max_decode_len) < 2:
            raise ValueError(f"max_src_len={self.max_src_len}, max_tgt_len={self.max_tgt_len}, "
                             f"max_decode_len={self.max_decode_len} must be >= 2 (text + eos)")
        if longest > self.max_len:
            raise ValueError(f"model.max_len={self.max_len} is shorter than the longest sequence "
                             f"{longest} (max_src_len / max_tgt_len / max_decode_len)")
        if self.beam_size < 1:
            raise ValueError(f"config.data.beam_size={self.beam_size} must be >= 1")
        splits = ("train", "validation", "test")
        bad = [s for s in (*self.eval_splits(), *self.decode_splits()) if s not in splits]
        if bad:
            raise ValueError(f"eval_splits / decode_splits {bad}: choose among {splits}")

    # -- data -----------------------------------------------------------------------------------
    def pairs(self, split: str) -> Sequence[tuple[str, str]]:
        """(source, target) strings of `split`, built or opened once."""
        if split not in self._pairs:
            data = self.config.data
            if self.dataset == "dates":
                kw = {k: tuple(data[k]) for k in ("locales", "formats") if data.get(k)}
                kw |= {k: int(data[k]) for k in ("start_year", "end_year") if data.get(k)}
                self._pairs.update(text.date_splits(
                    int(data.get("train_size", 100_000)), int(data.get("validation_size", 1000)),
                    int(data.get("test_size", 1000)), int(data.get("seed", 0)), **kw))
            else:
                name = data.get("train_split", "train") if split == "train" else split
                self._pairs[split] = text.load_wmt14(
                    name, data.get("data_dir") or None,
                    source_lang=data.get("source_lang", "en"),
                    target_lang=data.get("target_lang", "de"))
        return self._pairs[split]

    def train_size(self) -> int:
        return len(self.pairs("train"))

    def eval_splits(self) -> tuple[str, ...]:
        return tuple(self.config.data.get("eval_splits", ("validation",)))

    def decode_splits(self) -> tuple[str, ...]:
        return tuple(self.config.data.get("decode_splits", self.eval_splits()))

    def _spm_texts(self) -> Iterator[str]:
        pairs = self.pairs("train")
        limit = int(self.config.data.get("spm_train_pairs", 1_000_000))
        stride = max(1, len(pairs) // limit)  # evenly spread over the corpus, not its head
        for i in range(0, len(pairs), stride):
            source, target = pairs[i]
            yield source
            yield target

    def _dataset(self, pairs, train: bool, seed: int, process_index: int, process_count: int):
        return text.seq2seq_dataset(
            pairs, self.tokenizer, self.tokenizer, global_batch_size=int(self.config.batch_size),
            max_src_len=self.max_src_len, max_tgt_len=self.max_tgt_len, seed=seed, train=train,
            process_index=process_index, process_count=process_count)

    def train_iterator(self, *, seed, process_index, process_count):
        return text.batch_iterator(self._dataset(self.pairs("train"), True, seed, process_index,
                                                 process_count))

    def eval_iterator(self, split, *, process_index, process_count):
        return text.batch_iterator(self._dataset(self.pairs(split), False, 0, process_index,
                                                 process_count))

    # -- model ----------------------------------------------------------------------------------
    def _init_fresh(self, rng):
        inputs = jnp.ones((1, self.max_src_len), jnp.int32)
        targets = jnp.ones((1, self.max_tgt_len), jnp.int32)
        return self.model.init({"params": rng}, inputs, targets)["params"]

    def _token_stats(self, logits, batch):
        weights = (batch["targets"] != PAD_ID) & (batch["mask"][:, None] > 0)
        correct = (logits.argmax(-1) == batch["targets"]) & weights
        return weights.astype(jnp.float32), correct.astype(jnp.float32).sum()

    def loss(self, params, batch, rng, step):
        logits = self.model.apply({"params": self.trainable(params)}, batch["inputs"],
                                  batch["targets"], deterministic=False, rngs={"dropout": rng})
        weights, correct = self._token_stats(logits, batch)
        loss, tokens = cross_entropy_with_label_smoothing(
            logits, batch["targets"], weights, float(self.config.get("label_smoothing", 0.0)))
        return loss, {"token_accuracy": correct / jnp.maximum(tokens, 1.0)}

    def eval_sums(self, params, batch):
        """Sums over real target tokens: 'loss' (NLL, no smoothing) and 'token_accuracy';
        'count' is the number of tokens, so the trainer reports per-token means."""
        logits = self.model.apply({"params": params}, batch["inputs"], batch["targets"])
        weights, correct = self._token_stats(logits, batch)
        nll = cross_entropy_with_label_smoothing(logits, batch["targets"], weights)[0]
        tokens = weights.sum()
        return {"loss": nll * tokens, "token_accuracy": correct, "count": tokens}

    # -- decoding -------------------------------------------------------------------------------
    def _decoder(self) -> Any:
        """(params, inputs [b, max_src_len]) -> tokens [b, max_decode_len], jitted once."""
        if self._decode_fn is None:
            fn = functools.partial(decoding.decode, self.model, max_len=self.max_decode_len,
                                   eos_id=EOS_ID, beam_size=self.beam_size, alpha=self.alpha)
            self._decode_fn = jax.jit(fn)
        return self._decode_fn

    def translate(self, params: Any, sources: Sequence[str], mesh: jax.sharding.Mesh | None = None
                  ) -> list[str]:
        """Decoded target strings for `sources` (every process passes the same list)."""
        pairs = [(s, "") for s in sources]
        return self._decode_pairs(params, pairs, mesh)

    def _decode_pairs(self, params, pairs, mesh) -> list[str]:
        if mesh is None:
            mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
        decode = self._decoder()
        rows = []
        for batch in self._dataset(pairs, False, 0, jax.process_index(), jax.process_count()):
            inputs = shd.global_batch(mesh, {"inputs": batch["inputs"]})["inputs"]
            out = multihost_utils.process_allgather(decode(params, inputs), tiled=True)
            rows.append(np.asarray(out))
        tokens = np.concatenate(rows)[:len(pairs)]  # filler rows come last
        return self.tokenizer.decode_batch(tokens)

    def artifacts(self, params, ema_params, step, workdir, writer, mesh):
        """Decode `decode_splits`: exact match and BLEU (+ 'ema_' ones), example translations."""
        data = self.config.data
        limit = int(data.get("decode_max_examples", 0))
        shown = int(data.get("num_examples_shown", 5))
        variants = [("", params)] + ([("ema_", ema_params)] if ema_params is not None else [])
        metrics = {}
        for split in self.decode_splits():
            source = self.pairs(split)
            pairs = [source[i] for i in range(min(limit, len(source)) if limit else len(source))]
            references = [t for _, t in pairs]
            for prefix, p in variants:
                predictions = self._decode_pairs(p, pairs, mesh)
                metrics[f"{prefix}{split}_exact_match"] = text.exact_match(predictions,
                                                                           references)
                metrics[f"{prefix}{split}_bleu"] = text.bleu(predictions, references)
                if prefix == "" and shown:
                    table = _examples_table(pairs[:shown], predictions[:shown])
                    writer.text(step, f"{split}_translations", table)
                    if jax.process_index() == 0:
                        print(f"{split} translations @ {step}:\n{table}", flush=True)
        return metrics


def _examples_table(pairs: Sequence[tuple[str, str]], predictions: Sequence[str]) -> str:
    """A markdown table (TensorBoard renders it): source | reference | prediction."""
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| source | reference | prediction |", "| --- | --- | --- |"]
    lines += [f"| {cell(s)} | {cell(t)} | {cell(p)} |" for (s, t), p in zip(pairs, predictions)]
    return "\n".join(lines)
