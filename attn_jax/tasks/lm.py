"""Causal language modelling with a GPT-style decoder (Radford et al. 2019).

`config.data.dataset`:
  * 'stdlib' (offline): the Python standard library's source split by file
    (`attn_jax.data.text.stdlib_corpus`; `root` points it at any other directory of .py files).
    Training reads random windows of seq_len + 1 tokens of the train stream; evaluation covers
    the validation stream exactly once.
  * 'lm1b' (online): tfds `lm1b` as ArrayRecord in data_dir, one sentence per row; eval 'test'.

A recurrent model (one implementing `protocols.RecurrentLM`, e.g. 'lstm_lm') trains with
truncated BPTT (`attn_jax.tasks.tbptt`): each window is processed in chunks of
`config.data.tbptt_chunk` tokens (0 = the whole window) with the state's gradient stopped between
them, and its state restarts where a document starts (each eos input). With
`config.data.stateful=True` (stdlib only) the state also crosses steps: the train stream is cut
into batch_size tracks (`lm_windows.lm_track_dataset`: row r of step s + 1 continues row r of
step s), the state of the last step is kept in the train state (`init_carry`, the loss's new
carry; checkpointed with it), and evaluation reads each split as batch_size contiguous tracks in
one batch, the state carried from chunk to chunk of seq_len tokens along each track (from zero
where each track begins), so every validation token is predicted from all the text before it
in its track, not from a window of seq_len tokens.

The loss evaluator reports per-token loss, perplexity = exp(loss) and bits per UTF-8 byte
(`text.bits_per_byte`): the summed NLL over the split divided by ln 2 times the bytes its targets
stand for (`text.lm_target_bytes`), so byte- and SentencePiece-level models compare. The
'sample_text' evaluator continues a prompt with top-k / nucleus sampling (Holtzman et al. 2020).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from attn_jax import decoding
from attn_jax.data import lm_windows, text
from attn_jax.data.tokenizers import EOS_ID, PAD_ID
from attn_jax.models.protocols import (DecoderOnlyModel, RecurrentLM, check_implements,
                                       missing_methods)
from attn_jax.losses import cross_entropy_with_label_smoothing, smoothed_cross_entropy
from attn_jax.tasks.sequence import SequenceTask, TokenizerConfig
from attn_jax.tasks.tbptt import check_chunk, truncated_bptt

DATASETS = ("stdlib", "lm1b")
EVAL_SCALE = "bits_scale"  # eval-batch key: the split's tokens / (ln 2 * bytes), per row


@dataclasses.dataclass(frozen=True)
class DataConfig(TokenizerConfig):
    """config.data of the LM task (with the tokenizer keys)."""

    dataset: str = "stdlib"
    seq_len: int = 256
    eval_splits: tuple[str, ...] = ()    # () = the dataset's held-out split
    root: str = ""                       # stdlib: another directory of .py files ('' = stdlib)
    validation_fraction: float = 0.05
    seed: int = 0
    data_dir: str = ""                   # lm1b: the tfds data dir
    stateful: bool = False               # a recurrent model's state crosses steps (stdlib)
    tbptt_chunk: int = 0                 # a recurrent model's BPTT chunk (0 = seq_len)


class LanguageModelTask(SequenceTask):
    """Batches {'inputs', 'targets': int32 [b, seq_len], 'mask': [b]}; targets = inputs + 1."""

    DataConfig = DataConfig
    EVALUATOR_TYPES = frozenset({"loss", "sample_text"})

    def __init__(self, config):
        super().__init__(config)
        self.dataset = self.data_cfg.dataset
        if self.dataset not in DATASETS:
            raise ValueError(f"config.data.dataset={self.dataset!r}: choose one of {DATASETS}")
        check_implements(self.model, DecoderOnlyModel, f"config.model.name="
                         f"{config.model.get('name')!r}")
        self.seq_len = int(self.data_cfg.seq_len)
        self.recurrent = not missing_methods(self.model, RecurrentLM)
        self.stateful = bool(self.data_cfg.stateful)
        self._texts: dict[str, Any] = {}
        self._streams: dict[str, np.ndarray] = {}
        self._scales: dict[str, float] = {}

    def _model_defaults(self) -> dict[str, Any]:
        # Padding only trails real tokens, which the causal mask already hides from them.
        return {"pad_id": None}

    def validate(self) -> None:
        super().validate()
        if self.seq_len < 1 or (self.max_len is not None and self.seq_len > self.max_len):
            raise ValueError(f"config.data.seq_len={self.seq_len} must be in [1, model.max_len="
                             f"{self.max_len}]")
        self.check_splits(self.eval_splits(), "config.data.eval_splits")
        cfg, name = self.data_cfg, self.config.model.get("name")
        if (self.stateful or cfg.tbptt_chunk) and not self.recurrent:
            check_implements(self.model, RecurrentLM,
                             f"config.data.stateful={cfg.stateful}, tbptt_chunk="
                             f"{cfg.tbptt_chunk} need a model that carries a state, but "
                             f"config.model.name={name!r}")
        check_chunk(cfg.tbptt_chunk, self.seq_len, "config.data.tbptt_chunk")
        if self.stateful:
            if self.dataset != "stdlib":
                raise ValueError(f"config.data.stateful=True reads a token stream in tracks: "
                                 f"dataset 'stdlib' has one, {self.dataset!r} has sentences")
            lm_windows.check_tracks(len(self.stream("train")), self.seq_len,
                                    int(self.config.batch_size))

    def splits(self) -> tuple[str, ...]:
        return ("train", "validation") if self.dataset == "stdlib" else ("train", "test")

    def check_sample(self, prompt: str, length: int, where: str) -> None:
        """The prompt (with its leading eos) plus `length` new tokens must fit the model."""
        ids = self._prompt_ids(prompt)
        if self.max_len is not None and len(ids) - 1 + length > self.max_len:
            raise ValueError(f"{where}: prompt ({len(ids)} tokens with the leading eos) plus "
                             f"length={length} exceeds model.max_len={self.max_len}")

    def default_evals(self) -> dict[str, dict[str, Any]]:
        return {"loss": {"type": "loss"},
                "sample": {"type": "sample_text", "length": min(200, (self.max_len or 201) - 1)}}

    # -- data -----------------------------------------------------------------------------------
    def texts(self, split: str) -> Any:
        """Documents (stdlib files) or sentences (lm1b) of `split`, read once."""
        if split not in self._texts:
            cfg = self.data_cfg
            if self.dataset == "stdlib":
                corpus = text.stdlib_corpus(float(cfg.validation_fraction), int(cfg.seed),
                                            cfg.root or None)
                self._texts.update({k: v.texts for k, v in corpus.items()})
            else:
                self._texts[split] = text.load_lm1b(split, cfg.data_dir or None)
        return self._texts[split]

    def train_size(self) -> int:
        """Examples per epoch (for config.num_epochs): stride-seq_len windows of the train
        stream (stdlib), or sentences (lm1b)."""
        if self.dataset == "stdlib":
            return (len(self.stream("train")) - 1) // self.seq_len
        return len(self.texts("train"))

    def eval_splits(self) -> tuple[str, ...]:
        default = ("validation",) if self.dataset == "stdlib" else ("test",)
        return tuple(self.data_cfg.eval_splits) or default

    def _spm_texts(self) -> Iterator[str]:
        texts = self.texts("train")
        stride = max(1, len(texts) // int(self.data_cfg.spm_max_sentences))
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
        if self.stateful:
            ds = lm_windows.lm_track_dataset(self.stream("train"), seq_len=self.seq_len,
                                             global_batch_size=batch,
                                             process_index=process_index,
                                             process_count=process_count)
        elif self.dataset == "stdlib":
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
        if self.stateful:
            ds = lm_windows.lm_track_eval_dataset(self.stream(split), seq_len=self.seq_len,
                                                  global_batch_size=batch,
                                                  process_index=process_index,
                                                  process_count=process_count)
        elif self.dataset == "stdlib":
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

    def init_carry(self) -> Any:
        """The state a stateful LM carries across steps: the model's zero carry for the global
        batch (every leaf [batch_size, ...]); None when not stateful."""
        if not self.stateful:
            return None
        return self.model.initial_carry(int(self.config.batch_size))

    def _chunk_sums(self, params, batch, carry, rng=None, label_smoothing=0.0):
        """A recurrent model over `batch` in chunks (`truncated_bptt`), from `carry` (None: the
        zero state), restarting at each eos input. Returns (carry, per-chunk sums: 'row_nll'
        [n, b], 'correct' [n], 'count' [n]); with `rng`, dropout on (a key per chunk)."""
        inputs = batch["inputs"]
        xs = {"inputs": inputs, "targets": batch["targets"], "weights": self._weights(batch)}
        if carry is None:
            carry = self.model.initial_carry(inputs.shape[0])

        def step(carry, xs_k, k):
            kwargs = {} if rng is None else dict(deterministic=False, rngs={
                "dropout": jax.random.fold_in(rng, k)})
            logits, carry = self.model.apply(
                {"params": params}, xs_k["inputs"], carry, xs_k["inputs"] == EOS_ID,
                method="apply_with_carry", **kwargs)
            w = xs_k["weights"]
            nll = smoothed_cross_entropy(logits, xs_k["targets"], label_smoothing) * w
            correct = ((logits.argmax(-1) == xs_k["targets"]) * w).sum()
            return carry, {"row_nll": nll.sum(-1), "correct": correct, "count": w.sum()}

        chunk = check_chunk(self.data_cfg.tbptt_chunk, self.seq_len) if rng is not None else (
            self.seq_len)
        return truncated_bptt(step, carry, xs, chunk)

    def loss(self, params, batch, rng, step, carry=None):
        """(mean token loss, metrics). Given `carry` (a stateful LM's state that the previous
        step left, as the trainer passes it), (mean token loss, (metrics, the new carry)); a
        recurrent model without one starts from its zero state."""
        if self.recurrent:
            new_carry, sums = self._chunk_sums(params, batch, carry, rng,
                                               float(self.config.get("label_smoothing", 0.0)))
            tokens = jnp.maximum(sums["count"].sum(), 1.0)
            metrics = {"token_accuracy": sums["correct"].sum() / tokens}
            loss = sums["row_nll"].sum() / tokens
            return (loss, metrics) if carry is None else (loss, (metrics, new_carry))
        logits = self.model.apply({"params": params}, batch["inputs"],
                                  deterministic=False, rngs={"dropout": rng})
        weights = self._weights(batch)
        loss, tokens = cross_entropy_with_label_smoothing(
            logits, batch["targets"], weights, float(self.config.get("label_smoothing", 0.0)))
        correct = ((logits.argmax(-1) == batch["targets"]) * weights).sum()
        return loss, {"token_accuracy": correct / jnp.maximum(tokens, 1.0)}

    def eval_sums(self, params, batch):
        """Sums over real target tokens; 'count' = tokens. 'bits_per_byte' sums each row's NLL
        times the split's tokens / (ln 2 * bytes), so its mean over tokens is bits per byte."""
        if self.recurrent:  # stateful: the tracks, the state carried chunk to chunk
            _, sums = self._chunk_sums(params, batch, None)
            row_nll, correct = sums["row_nll"].sum(0), sums["correct"].sum()
            return {"loss": row_nll.sum(), "token_accuracy": correct,
                    "bits_per_byte": (row_nll * batch[EVAL_SCALE]).sum(),
                    "count": sums["count"].sum()}
        logits = self.model.apply({"params": params}, batch["inputs"])
        weights = self._weights(batch)
        row_nll = (smoothed_cross_entropy(logits, batch["targets"]) * weights).sum(-1)
        correct = ((logits.argmax(-1) == batch["targets"]) * weights).sum()
        return {"loss": row_nll.sum(), "token_accuracy": correct,
                "bits_per_byte": (row_nll * batch[EVAL_SCALE]).sum(), "count": weights.sum()}

    def eval_metrics(self, split: str, means: dict[str, float]) -> dict[str, float]:
        """Adds perplexity = exp(per-token loss) to the trainer's means of `eval_sums`."""
        return {**means, "perplexity": math.exp(means["loss"])}

    # -- samples (fed to the sample_text evaluator) -------------------------------------------
    def _prompt_ids(self, prompt: str) -> list[int]:
        """eos (the start-of-document context of `token_stream`) + the prompt's ids."""
        if self.tokenizer_kind == "byte" or self._tokenizer is not None:
            return [EOS_ID] + self.tokenizer.encode(prompt)
        return [EOS_ID] + [0] * len(prompt.encode())  # upper bound before spm.model exists

    def sample(self, params: Any, step: int, cfg: Any) -> list[str]:
        """`cfg.num_samples` continuations of `cfg.prompt` (prompt text included); `cfg` is a
        `SampleTextEvaluator.Config`."""
        ids = np.tile(np.asarray(self._prompt_ids(cfg.prompt), np.int32), (cfg.num_samples, 1))
        rng = jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), step)
        out = decoding.generate(self.model, params, jnp.asarray(ids), rng,
                                max_len=int(cfg.length), eos_id=EOS_ID,
                                temperature=float(cfg.temperature),
                                top_k=int(cfg.top_k) or None, top_p=float(cfg.top_p) or None)
        tokens = np.asarray(multihost_utils.process_allgather(out, tiled=True))
        return [cfg.prompt + s for s in self.tokenizer.decode_batch(tokens)]
