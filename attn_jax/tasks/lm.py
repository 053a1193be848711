"""Causal language modelling with a GPT-style decoder (Radford et al. 2019).

`config.data.dataset`:
  * 'stdlib' (offline): the Python standard library's source split by file
    (`attn_jax.data.text.stdlib_corpus`; `root` points it at any other directory of .py files).
    Training reads random windows of seq_len + 1 tokens of the train stream; evaluation covers
    the validation stream exactly once.
  * 'lm1b' (online): tfds `lm1b` as ArrayRecord in data_dir, one sentence per row; eval 'test'.

Evaluation reports per-token loss, perplexity = exp(loss) and bits per UTF-8 byte
(`text.bits_per_byte`): the summed NLL over the split divided by ln 2 times the bytes its targets
stand for (`text.lm_target_bytes`), so byte- and SentencePiece-level models compare. The
artefact is a text sample: top-k / nucleus sampling (Holtzman et al. 2020) continuing a prompt.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from attn_jax import decoding
from attn_jax.data import text
from attn_jax.data.tokenizers import EOS_ID, PAD_ID
from attn_jax.losses import cross_entropy_with_label_smoothing, smoothed_cross_entropy
from attn_jax.tasks.sequence import SequenceTask

DATASETS = ("stdlib", "lm1b")
EVAL_SCALE = "bits_scale"  # eval-batch key: the split's tokens / (ln 2 * bytes), per row


class LanguageModelTask(SequenceTask):
    """Batches {'inputs', 'targets': int32 [b, seq_len], 'mask': [b]}; targets = inputs + 1.

    config.data keys (besides tokenizer and transfer keys, see `SequenceTask`): dataset,
    seq_len, eval_splits; stdlib: root, validation_fraction, seed; lm1b: data_dir; samples:
    sample_prompt, sample_len, num_samples, temperature, top_k, top_p, sample_seed.
    """

    DATA_KEYS = frozenset({
        "dataset", "seq_len", "eval_splits", "root", "validation_fraction", "seed", "data_dir",
        "sample_prompt", "sample_len", "num_samples", "temperature", "top_k", "top_p",
        "sample_seed"})
    MODEL_NAME = "decoder_lm"

    def __init__(self, config):
        self.dataset = config.data.get("dataset", "stdlib")
        if self.dataset not in DATASETS:
            raise ValueError(f"config.data.dataset={self.dataset!r}: choose one of {DATASETS}")
        super().__init__(config)
        self.seq_len = int(config.data.get("seq_len", 256))
        self.sample_len = int(config.data.get("sample_len", 200))
        self._texts: dict[str, Any] = {}
        self._streams: dict[str, np.ndarray] = {}
        self._scales: dict[str, float] = {}

    def _model_defaults(self) -> dict[str, Any]:
        # Padding only trails real tokens, which the causal mask already hides from them.
        return {"pad_id": None}

    def validate(self) -> None:
        super().validate()
        if self.seq_len < 1 or self.seq_len > self.max_len:
            raise ValueError(f"config.data.seq_len={self.seq_len} must be in [1, model.max_len="
                             f"{self.max_len}]")
        prompt = self._prompt_ids()
        if len(prompt) - 1 + self.sample_len > self.max_len:
            raise ValueError(f"sample_prompt ({len(prompt)} tokens with the leading eos) plus "
                             f"sample_len={self.sample_len} exceeds model.max_len={self.max_len}")
        splits = ("validation",) if self.dataset == "stdlib" else ("test",)
        bad = [s for s in self.eval_splits() if s not in splits]
        if bad:
            raise ValueError(f"eval_splits {bad}: dataset {self.dataset!r} has {splits}")

    # -- data -----------------------------------------------------------------------------------
    def texts(self, split: str) -> Any:
        """Documents (stdlib files) or sentences (lm1b) of `split`, read once."""
        if split not in self._texts:
            data = self.config.data
            if self.dataset == "stdlib":
                corpus = text.stdlib_corpus(float(data.get("validation_fraction", 0.05)),
                                            int(data.get("seed", 0)), data.get("root") or None)
                self._texts.update({k: v.texts for k, v in corpus.items()})
            else:
                self._texts[split] = text.load_lm1b(split, data.get("data_dir") or None)
        return self._texts[split]

    def train_size(self) -> int:
        """Examples per epoch (for config.num_epochs): stride-seq_len windows of the train
        stream (stdlib), or sentences (lm1b)."""
        if self.dataset == "stdlib":
            return (len(self.stream("train")) - 1) // self.seq_len
        return len(self.texts("train"))

    def eval_splits(self) -> tuple[str, ...]:
        default = ("validation",) if self.dataset == "stdlib" else ("test",)
        return tuple(self.config.data.get("eval_splits", default))

    def _spm_texts(self) -> Iterator[str]:
        texts = self.texts("train")
        stride = max(1, len(texts) // int(self.config.data.get("spm_max_sentences", 2_000_000)))
        for i in range(0, len(texts), stride):
            yield texts[i]

    def stream(self, split: str) -> np.ndarray:
        """eos, doc_0, eos, doc_1, eos, ... of a stdlib split (`text.token_stream`)."""
        if split not in self._streams:
            self._streams[split] = text.token_stream(self.texts(split), self.tokenizer)
        return self._streams[split]

    def bits_scale(self, split: str) -> float:
        """tokens / (ln 2 * bytes) of `split`'s targets: NLL sum * scale / tokens = bits/byte."""
        if split not in self._scales:
            texts = self.texts(split)
            if self.dataset == "stdlib":
                tokens, num_bytes = len(self.stream(split)) - 1, text.lm_target_bytes(texts)
            else:
                tokens, num_bytes = self._sentence_counts(texts)
            self._scales[split] = tokens / (math.log(2.0) * num_bytes)
        return self._scales[split]

    def _sentence_counts(self, texts) -> tuple[int, int]:
        """Target tokens and the bytes they stand for, one row per sentence: targets are
        ids + [eos] cut to seq_len, so a cut sentence counts the bytes of its kept ids."""
        tokens = num_bytes = 0
        for s in texts:
            ids = self.tokenizer.encode(s)
            if len(ids) + 1 <= self.seq_len:
                tokens, num_bytes = tokens + len(ids) + 1, num_bytes + len(s.encode()) + 1
            else:
                kept = ids[:self.seq_len]
                tokens += len(kept)
                num_bytes += len(self.tokenizer.decode(kept).encode())
        return tokens, num_bytes

    def train_iterator(self, *, seed, process_index, process_count):
        batch = int(self.config.batch_size)
        if self.dataset == "stdlib":
            ds = text.lm_train_dataset(self.stream("train"), seq_len=self.seq_len,
                                       global_batch_size=batch, seed=seed,
                                       process_index=process_index, process_count=process_count)
        else:
            ds = text.sentence_lm_dataset(self.texts("train"), self.tokenizer,
                                          seq_len=self.seq_len, global_batch_size=batch,
                                          seed=seed, train=True, process_index=process_index,
                                          process_count=process_count)
        return text.batch_iterator(ds)

    def eval_iterator(self, split, *, process_index, process_count):
        batch = int(self.config.batch_size)
        if self.dataset == "stdlib":
            ds = text.lm_eval_dataset(self.stream(split), seq_len=self.seq_len,
                                      global_batch_size=batch, process_index=process_index,
                                      process_count=process_count)
        else:
            ds = text.sentence_lm_dataset(self.texts(split), self.tokenizer,
                                          seq_len=self.seq_len, global_batch_size=batch,
                                          train=False, process_index=process_index,
                                          process_count=process_count)
        scale = np.float32(self.bits_scale(split))
        ds = ds.map(lambda b: {**b, EVAL_SCALE: np.full(len(b["mask"]), scale, np.float32)})
        return text.batch_iterator(ds)

    # -- model ----------------------------------------------------------------------------------
    def _init_fresh(self, rng):
        return self.model.init({"params": rng}, jnp.ones((1, self.seq_len), jnp.int32))["params"]

    def _weights(self, batch):
        return ((batch["targets"] != PAD_ID) & (batch["mask"][:, None] > 0)).astype(jnp.float32)

    def loss(self, params, batch, rng, step):
        logits = self.model.apply({"params": self.trainable(params)}, batch["inputs"],
                                  deterministic=False, rngs={"dropout": rng})
        weights = self._weights(batch)
        loss, tokens = cross_entropy_with_label_smoothing(
            logits, batch["targets"], weights, float(self.config.get("label_smoothing", 0.0)))
        correct = ((logits.argmax(-1) == batch["targets"]) * weights).sum()
        return loss, {"token_accuracy": correct / jnp.maximum(tokens, 1.0)}

    def eval_sums(self, params, batch):
        """Sums over real target tokens; 'count' = tokens. 'bits_per_byte' sums each row's NLL
        times the split's tokens / (ln 2 * bytes), so its mean over tokens is bits per byte."""
        logits = self.model.apply({"params": params}, batch["inputs"])
        weights = self._weights(batch)
        row_nll = (smoothed_cross_entropy(logits, batch["targets"]) * weights).sum(-1)
        correct = ((logits.argmax(-1) == batch["targets"]) * weights).sum()
        return {"loss": row_nll.sum(), "token_accuracy": correct,
                "bits_per_byte": (row_nll * batch[EVAL_SCALE]).sum(), "count": weights.sum()}

    def eval_metrics(self, split: str, means: dict[str, float]) -> dict[str, float]:
        """Adds perplexity = exp(per-token loss) to the trainer's means of `eval_sums`."""
        return {**means, "perplexity": math.exp(means["loss"])}

    # -- samples --------------------------------------------------------------------------------
    def _prompt_ids(self) -> list[int]:
        """eos (the start-of-document context of `token_stream`) + the prompt's ids."""
        prompt = self.config.data.get("sample_prompt", "")
        if self.tokenizer_kind == "byte" or self._tokenizer is not None:
            return [EOS_ID] + self.tokenizer.encode(prompt)
        return [EOS_ID] + [0] * len(prompt.encode())  # upper bound before spm.model exists

    def sample(self, params: Any, step: int = 0) -> list[str]:
        """`num_samples` continuations of `sample_prompt` (prompt text included)."""
        data = self.config.data
        prompt = self.config.data.get("sample_prompt", "")
        n = int(data.get("num_samples", 1))
        ids = np.tile(np.asarray(self._prompt_ids(), np.int32), (n, 1))
        rng = jax.random.fold_in(jax.random.PRNGKey(int(data.get("sample_seed", 0))), step)
        top_k = data.get("top_k") or None
        top_p = data.get("top_p") or None
        out = decoding.generate(self.model, params, jnp.asarray(ids), rng,
                                max_len=self.sample_len, eos_id=EOS_ID,
                                temperature=float(data.get("temperature", 1.0)),
                                top_k=None if top_k is None else int(top_k),
                                top_p=None if top_p is None else float(top_p))
        tokens = np.asarray(multihost_utils.process_allgather(out, tiled=True))
        return [prompt + s for s in self.tokenizer.decode_batch(tokens)]

    def artifacts(self, params, ema_params, step, workdir, writer, mesh):
        """A text sample, written to the metric writer and printed; no metrics."""
        samples = self.sample(ema_params if ema_params is not None else params, step)
        body = "\n\n---\n\n".join(samples)
        writer.text(step, "sample", body)
        if jax.process_index() == 0:
            print(f"sample @ {step}:\n{body}", flush=True)
        return {}
