"""What the text-output tasks (seq2seq, lm) share: the tokenizer and the model contract.

`config.data.tokenizer` is 'byte' (UTF-8 bytes, vocab 259) or 'sentencepiece' (trained on the
task's training text with `config.data.vocab_size` pieces and kept as `<workdir>/spm.model`, so a
resumed run, the sampler and the attention-map tool all read the same vocabulary; a run started
from another with `config.init.path` reads that run's vocabulary). The trainer sets `task.workdir`
before it asks for data; a SentencePiece task refuses to run without it.

The model is any registered one implementing the contract of `attn_jax.models.protocols`
(`config.model.name`); the task fixes the fields its data decides: `vocab_size` and, for
encoder-decoders, `pad_id` and `bos_id`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from attn_jax.data.tokenizers import (SPM_MODEL_NAME, ByteTokenizer, SentencePieceTokenizer,
                                      Tokenizer, make_tokenizer)
from attn_jax.pretrained import is_pretrained_file
from attn_jax.tasks.base import Task
from attn_jax.train.config import parse_section


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """The tokenizer keys of a text task's config.data."""

    tokenizer: str = "byte"              # 'byte' or 'sentencepiece'
    vocab_size: int | None = None        # SentencePiece pieces (e.g. 32000)
    spm_model_type: str = "unigram"      # SentencePiece model type ('unigram', 'bpe')
    spm_max_sentences: int = 2_000_000   # sentences SentencePiece trains on


class SequenceTask(Task):
    """Base of `Seq2SeqTask` and `LanguageModelTask`.

    Subclasses set DataConfig (a `TokenizerConfig` subclass declaring their config.data keys)
    and implement `_model_defaults`, `_init_fresh` and `_spm_texts`.
    """

    DataConfig: type = TokenizerConfig

    def __init__(self, config):
        super().__init__(config)
        self.data_cfg = parse_section(self.DataConfig, config.data, "config.data")
        self.check_data_dirs(self.data_cfg)
        self.tokenizer_kind = self.data_cfg.tokenizer
        if self.tokenizer_kind not in ("byte", "sentencepiece"):
            raise ValueError(f"config.data.tokenizer={self.tokenizer_kind!r}: choose 'byte' or "
                             "'sentencepiece'")
        self.dtype = jnp.dtype(config.get("dtype", "float32"))
        init = config.get("init") or {}
        # Only a workdir of this repo has a vocabulary to share and check; a pretrained file's
        # (config.init.format 'npz' / 'hf') is the user's to match.
        self.init_path = init.get("path") or None
        if self.init_path and is_pretrained_file(self.init_path, init.get("format", "auto")):
            self.init_path = None
        self._tokenizer: Tokenizer | None = None
        self.model = self.build_model()

    # -- tokenizer ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        if self.tokenizer_kind == "byte":
            return ByteTokenizer().vocab_size
        size = self.data_cfg.vocab_size
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
        if not os.path.exists(prefix + ".model") and self.init_path:
            # Fine-tuning reads text with the vocabulary the checkpoint was trained on.
            source = os.path.join(self.init_path, SPM_MODEL_NAME + ".model")
            if not os.path.exists(source):
                raise FileNotFoundError(f"config.init.path={self.init_path!r} has no "
                                        f"{SPM_MODEL_NAME}.model to share its vocabulary")
            os.makedirs(self.workdir, exist_ok=True)
            SentencePieceTokenizer.load(source).save(prefix)
        tok = make_tokenizer(
            "sentencepiece", self.workdir, self._spm_texts(), vocab_size=self.vocab_size,
            model_type=self.data_cfg.spm_model_type,
            max_sentences=int(self.data_cfg.spm_max_sentences), seed=int(self.config.seed))
        if tok.vocab_size != self.vocab_size:
            raise ValueError(f"{prefix}.model has {tok.vocab_size} pieces but "
                             f"config.data.vocab_size={self.vocab_size}")
        return tok

    def _spm_texts(self) -> Iterator[str]:
        """The training text SentencePiece learns from (read only when it trains)."""
        raise NotImplementedError

    def detokenize(self, tokens) -> list[str]:
        """Strings of token rows `[n, length]` (up to each row's eos)."""
        return self.tokenizer.decode_batch(tokens)

    # -- model --------------------------------------------------------------------------------
    def _model_defaults(self) -> dict[str, Any]:
        """Fields the task fixes from its data (pad/bos ids...); the config may not differ."""
        return {}

    def build_model(self) -> nn.Module:
        if "dtype" not in self.config.model:
            return self.build_registered_model(vocab_size=self.vocab_size, dtype=self.dtype,
                                               **self._model_defaults())
        return self.build_registered_model(vocab_size=self.vocab_size, **self._model_defaults())

    @property
    def max_len(self) -> int | None:
        """The longest sequence the model takes (None: no limit), from its `max_len`."""
        config = getattr(self.model, "config", None)
        return getattr(config, "max_len", getattr(self.model, "max_len", None))

    def validate(self) -> None:
        if self.init_path:
            from attn_jax.train.restore import load_config

            old = load_config(self.init_path).get("data", {})
            old_kind = old.get("tokenizer", "byte")
            if old_kind != self.tokenizer_kind or (
                    old_kind == "sentencepiece" and old.get("vocab_size") != self.vocab_size):
                raise ValueError(
                    f"config.init.path={self.init_path!r} was trained with tokenizer "
                    f"{old_kind!r} (vocab_size {old.get('vocab_size')}); this run uses "
                    f"{self.tokenizer_kind!r} (vocab_size {self.vocab_size}): its embeddings "
                    "would read the wrong tokens")

    def _init_fresh(self, rng) -> Any:
        raise NotImplementedError

    def init_params(self, rng):
        return self._init_fresh(rng)
