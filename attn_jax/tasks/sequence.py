"""What the text tasks (seq2seq, lm) share: tokenizer, Transformer model, transfer learning.

`config.data.tokenizer` is 'byte' (UTF-8 bytes, vocab 259) or 'sentencepiece' (trained on the
task's training text with `config.data.vocab_size` pieces and kept as `<workdir>/spm.model`, so a
resumed run, the sampler and the attention-map tool all read the same vocabulary). The trainer
sets `task.workdir` before it asks for data; a SentencePiece task refuses to run without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from attn_jax.data.tokenizers import (SPM_MODEL_NAME, ByteTokenizer, SentencePieceTokenizer,
                                      Tokenizer, make_tokenizer)
from attn_jax.models import build_model
from attn_jax.tasks.base import Task
from attn_jax.tasks.transfer import freeze_optimizer, transfer_from_config

TOKENIZER_KEYS = {"tokenizer", "vocab_size", "spm_model_type", "spm_max_sentences"}
TRANSFER_KEYS = {"init_from", "init_step", "init_rename", "freeze"}


class SequenceTask(Task):
    """Base of `Seq2SeqTask` and `LanguageModelTask`.

    Subclasses set DATA_KEYS (their own `config.data` keys) and MODEL_NAME (the registry name of
    the model they train), and implement `_model_defaults`, `_init_fresh` and `_spm_texts`.
    """

    DATA_KEYS: frozenset[str] = frozenset()
    MODEL_NAME: str = ""
    workdir: str | None = None  # set by the trainer before any iterator is asked for

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        known = self.DATA_KEYS | TOKENIZER_KEYS | TRANSFER_KEYS
        unknown = set(config.data) - known
        if unknown:
            raise ValueError(f"config.data has unknown keys {sorted(unknown)}; task "
                             f"{config.task!r} knows {sorted(known)}")
        self.tokenizer_kind = config.data.get("tokenizer", "byte")
        if self.tokenizer_kind not in ("byte", "sentencepiece"):
            raise ValueError(f"config.data.tokenizer={self.tokenizer_kind!r}: choose 'byte' or "
                             "'sentencepiece'")
        self.dtype = jnp.dtype(config.get("dtype", "float32"))
        self.transfer = transfer_from_config(config.data)
        self._tokenizer: Tokenizer | None = None
        self.model = self.build_model()

    # -- tokenizer ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        if self.tokenizer_kind == "byte":
            return ByteTokenizer().vocab_size
        size = self.config.data.get("vocab_size")
        if not isinstance(size, int) or size < 8:
            raise ValueError(f"config.data.vocab_size={size!r}: a SentencePiece tokenizer needs "
                             "an int vocabulary size (e.g. 32000)")
        return size

    @property
    def tokenizer(self) -> Tokenizer:
        """Built on first use: SentencePiece is loaded from, or trained into, the workdir."""
        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        return self._tokenizer

    def _make_tokenizer(self) -> Tokenizer:
        if self.tokenizer_kind == "byte":
            return ByteTokenizer()
        if self.workdir is None:
            raise ValueError("a SentencePiece task keeps spm.model in its workdir: set "
                             "task.workdir before asking for data (train_and_evaluate does)")
        prefix = os.path.join(self.workdir, SPM_MODEL_NAME)
        if not os.path.exists(prefix + ".model") and self.transfer.init_from:
            # Fine-tuning reads text with the vocabulary the checkpoint was trained on.
            source = os.path.join(self.transfer.init_from, SPM_MODEL_NAME + ".model")
            if not os.path.exists(source):
                raise FileNotFoundError(f"init_from={self.transfer.init_from!r} has no "
                                        f"{SPM_MODEL_NAME}.model to share its vocabulary")
            os.makedirs(self.workdir, exist_ok=True)
            SentencePieceTokenizer.load(source).save(prefix)
        data = self.config.data
        tok = make_tokenizer(
            "sentencepiece", self.workdir, self._spm_texts(), vocab_size=self.vocab_size,
            model_type=data.get("spm_model_type", "unigram"),
            max_sentences=int(data.get("spm_max_sentences", 2_000_000)),
            seed=int(self.config.seed))
        if tok.vocab_size != self.vocab_size:
            raise ValueError(f"{prefix}.model has {tok.vocab_size} pieces but "
                             f"config.data.vocab_size={self.vocab_size}")
        return tok

    def _spm_texts(self) -> Iterator[str]:
        """The training text SentencePiece learns from (read only when it trains)."""
        raise NotImplementedError

    # -- model --------------------------------------------------------------------------------
    def _model_defaults(self) -> dict[str, Any]:
        """Fields the task fixes from its data (pad/bos ids...); the config may not differ."""
        return {}

    def build_model(self) -> nn.Module:
        kwargs = dict(self.config.model)
        name = kwargs.pop("name", self.MODEL_NAME)
        if name != self.MODEL_NAME:
            raise ValueError(f"task {self.config.task!r} trains model.name={self.MODEL_NAME!r}, "
                             f"got {name!r}")
        fixed = {"vocab_size": self.vocab_size, **self._model_defaults()}
        for key, value in fixed.items():
            if key in kwargs and kwargs[key] != value:
                raise ValueError(f"config.model.{key}={kwargs[key]!r}, but the data needs "
                                 f"{value!r} (tokenizer {self.tokenizer_kind!r})")
        kwargs.update(fixed)
        kwargs.setdefault("dtype", self.dtype)
        return build_model(name, **kwargs)

    @property
    def max_len(self) -> int:
        return int(self.model.config.max_len)

    def validate(self) -> None:
        if self.transfer.init_from:
            from attn_jax.train.restore import load_config

            old = load_config(self.transfer.init_from).get("data", {})
            old_kind = old.get("tokenizer", "byte")
            if old_kind != self.tokenizer_kind or (
                    old_kind == "sentencepiece" and old.get("vocab_size") != self.vocab_size):
                raise ValueError(
                    f"init_from={self.transfer.init_from!r} was trained with tokenizer "
                    f"{old_kind!r} (vocab_size {old.get('vocab_size')}); this run uses "
                    f"{self.tokenizer_kind!r} (vocab_size {self.vocab_size}): its embeddings "
                    "would read the wrong tokens")

    # -- parameters and freezing --------------------------------------------------------------
    def _init_fresh(self, rng: jax.Array) -> Any:
        raise NotImplementedError

    def init_params(self, rng: jax.Array) -> Any:
        params = self.transfer.apply(self._init_fresh(rng))
        if self.transfer.freeze:
            self.transfer.check_freeze(params)
            decay = float(self.config.optim.get("weight_decay", 0.0))
            if decay and not self.transfer.uses_optimizer:
                raise ValueError(
                    f"config.data.freeze with optim.weight_decay={decay}: weight decay would "
                    "still move frozen parameters; this trainer does not route the optimizer "
                    "through task.wrap_optimizer, so set optim.weight_decay=0")
        return params

    def param_labels(self, params: Any) -> Any:
        """'frozen' / 'trainable' for each leaf of `params` (see `freeze_optimizer`)."""
        return self.transfer.labels(params)

    def wrap_optimizer(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
        """The trainer's optimizer with frozen parameters held fixed (identity if none are)."""
        if not self.transfer.freeze:
            return tx
        self.transfer.uses_optimizer = True
        return freeze_optimizer(tx, self.param_labels)

    def trainable(self, params: Any) -> Any:
        """`params` with gradients stopped at the frozen leaves (used inside `loss`)."""
        return self.transfer.stop_gradients(params)
