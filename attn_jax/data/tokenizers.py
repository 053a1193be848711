"""Tokenizers for the sequence tasks: UTF-8 bytes and SentencePiece, with one id convention.

Every tokenizer reserves the same special ids, so batches, losses and decoders never ask which
tokenizer made them:

  pad = 0   (loss weight 0; also what `jnp.zeros` fills, and what flax's `shift_right` inserts)
  bos = 1
  eos = 2

`ByteTokenizer` maps byte b to id b + 3 (vocab 259) and needs no training. `SentencePieceTokenizer`
trains a unigram or BPE model (Kudo 2018, arXiv:1804.10959; Sennrich et al. 2016) on the task's
own text with the same pad/bos/eos ids plus unk = 3, and stores it as `<prefix>.model`.
`make_tokenizer` loads the model a workdir already holds, so a resumed run keeps its vocabulary.
"""

from __future__ import annotations

import abc
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
SPM_UNK_ID = 3  # SentencePiece needs an unk id; bytes never do.
SPM_MODEL_NAME = "spm"  # make_tokenizer saves `<workdir>/spm.model` (+ spm.vocab for reading).


class Tokenizer(abc.ABC):
    """Text <-> ids with pad=0, bos=1, eos=2 and fixed-length int32 batch helpers."""

    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, specials included: every id lies in [0, vocab_size)."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without bos/eos."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad, bos and eos are dropped wherever they occur."""

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over a list (SentencePiece overrides it with its batched C++ call)."""
        return [self.encode(t) for t in texts]

    def encode_batch(self, texts: Sequence[str], length: int, *, add_bos: bool = False,
                     add_eos: bool = True) -> np.ndarray:
        """int32 [len(texts), length]: `[bos] + ids + [eos]`, right-padded with 0.

        A sequence longer than `length` is cut to its first `length` ids, so it loses its eos:
        a truncated target then never teaches the model to stop early.
        """
        prefix = [self.bos_id] if add_bos else []
        suffix = [self.eos_id] if add_eos else []
        return pad_batch([prefix + ids + suffix for ids in self.encode_many(texts)], length,
                         self.pad_id)

    def decode_batch(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Decodes each row of `ids` [batch, length] up to (excluding) its first eos."""
        out = []
        for row in ids:
            row = [int(i) for i in row]
            if self.eos_id in row:
                row = row[:row.index(self.eos_id)]
            out.append(self.decode(row))
        return out


def pad_batch(seqs: Sequence[Sequence[int]], length: int, pad_id: int = PAD_ID) -> np.ndarray:
    """int32 [len(seqs), length]: each sequence truncated to `length` and right-padded."""
    if length < 1:
        raise ValueError(f"pad_batch: length must be >= 1, got {length}")
    out = np.full((len(seqs), length), pad_id, dtype=np.int32)
    for i, s in enumerate(seqs):
        s = s[:length]
        out[i, :len(s)] = s
    return out


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: id = byte + 3, vocab 259. No training, no unknown characters."""

    offset = 3  # ids 0, 1, 2 are pad, bos, eos

    @property
    def vocab_size(self) -> int:
        return 256 + self.offset

    def encode(self, text: str) -> list[int]:
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        return (data.astype(np.int32) + self.offset).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        ids = np.asarray(list(ids), dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise ValueError(f"ByteTokenizer.decode: ids {bad[:8].tolist()} outside "
                             f"[0, {self.vocab_size})")
        data = (ids[ids >= self.offset] - self.offset).astype(np.uint8).tobytes()
        # A model may emit a byte sequence that is not UTF-8; show it as U+FFFD, don't fail.
        return data.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model with pad=0, bos=1, eos=2, unk=3.

    Text is not normalised (`identity` rule) and runs of spaces are kept, so code and
    pre-formatted text round-trip exactly when every character is in the vocabulary or
    `byte_fallback` was on at training time; an unknown character otherwise decodes as ' ⁇ '.
    """

    unk_id: int = SPM_UNK_ID

    def __init__(self, model_proto: bytes, path: str | None = None):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        ids = (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.unk_id())
        if ids != (PAD_ID, BOS_ID, EOS_ID, SPM_UNK_ID):
            raise ValueError(f"SentencePiece model {path or ''} has (pad, bos, eos, unk) = {ids}; "
                             f"attn_jax needs {(PAD_ID, BOS_ID, EOS_ID, SPM_UNK_ID)}")
        self.model_proto = model_proto
        self.path = path

    @classmethod
    def load(cls, path: str) -> SentencePieceTokenizer:
        """Loads `path` (a `.model` file written by `train`)."""
        with open(path, "rb") as f:
            return cls(f.read(), path=path)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_prefix: str | None, *,
              model_type: str = "unigram", character_coverage: float = 1.0,
              byte_fallback: bool = False, max_sentences: int = 2_000_000,
              max_sentence_length: int = 8192, seed: int = 0, num_threads: int = 1,
              user_defined_symbols: Sequence[str] = ()) -> SentencePieceTokenizer:
        """Trains on `texts` and writes `<model_prefix>.model` and `.vocab` (None: keep in memory).

        Each text is split into lines, the unit SentencePiece learns from; "\\n" is a reserved
        piece so multi-line text (source code) encodes and decodes whole. Lines longer than
        `max_sentence_length` bytes are skipped by SentencePiece. Past `max_sentences` lines a
        seeded uniform sample is kept. With `num_threads=1` (the default) training is
        deterministic: equal inputs and seed give a byte-identical model; more threads are faster
        but reorder floating-point sums and may change a few pieces.
        """
        import sentencepiece as spm

        if model_type not in ("unigram", "bpe"):
            raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
        if vocab_size <= SPM_UNK_ID + 1 + len(user_defined_symbols):
            raise ValueError(f"vocab_size={vocab_size} leaves no room beyond the special pieces")
        if byte_fallback and vocab_size < 256 + SPM_UNK_ID + 2:
            raise ValueError(f"byte_fallback needs vocab_size >= 261 (256 byte pieces + "
                             f"specials), got {vocab_size}")
        writer = io.BytesIO()
        spm.set_random_generator_seed(seed)  # the input sample and EM start depend on it
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_lines(texts), model_writer=writer, vocab_size=vocab_size,
                model_type=model_type, character_coverage=character_coverage,
                byte_fallback=byte_fallback, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                unk_id=SPM_UNK_ID, user_defined_symbols=["\n", *user_defined_symbols],
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True, input_sentence_size=max_sentences,
                shuffle_input_sentence=True, max_sentence_length=max_sentence_length,
                num_threads=num_threads, minloglevel=2)
        except RuntimeError as e:  # e.g. "Vocabulary size too high (500). ... <= 123."
            raise ValueError(f"SentencePiece training with vocab_size={vocab_size}, "
                             f"model_type={model_type!r} failed: {e}") from e
        tok = cls(writer.getvalue())
        if model_prefix is not None:
            tok.save(model_prefix)
        return tok

    def save(self, model_prefix: str) -> None:
        """Writes `<model_prefix>.model` (and a readable `.vocab`), each atomically."""
        self.path = model_prefix + ".model"
        vocab = "".join(f"{self._sp.id_to_piece(i)!r}\t{self._sp.get_score(i)}\n"
                        for i in range(self.vocab_size))
        _atomic_write(model_prefix + ".vocab", vocab.encode("utf-8"))
        _atomic_write(self.path, self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"SentencePieceTokenizer.decode: ids {bad[:8]} outside "
                             f"[0, {self.vocab_size})")
        return self._sp.decode([i for i in ids if i > EOS_ID])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(i)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size}, path={self.path!r})"


def make_tokenizer(kind: str, workdir: str | None = None, train_texts: Iterable[str] = (),
                   vocab_size: int | None = None, **train_kwargs) -> Tokenizer:
    """The tokenizer of a run: 'byte', or 'sentencepiece' kept in `<workdir>/spm.model`.

    For 'sentencepiece' an existing `<workdir>/spm.model` is loaded and `train_texts` is not
    read (pass a generator to skip building it); otherwise a model is trained with
    `vocab_size` and `train_kwargs` (see `SentencePieceTokenizer.train`) and saved there. Writes
    are atomic, so processes that train the same model at once leave one valid file.
    """
    if kind == "byte":
        return ByteTokenizer()
    if kind not in ("sentencepiece", "spm"):
        raise ValueError(f"tokenizer kind must be 'byte' or 'sentencepiece', got {kind!r}")
    if workdir is None:
        raise ValueError("make_tokenizer('sentencepiece') needs a workdir to keep spm.model in")
    prefix = os.path.join(workdir, SPM_MODEL_NAME)
    if os.path.exists(prefix + ".model"):
        return SentencePieceTokenizer.load(prefix + ".model")
    if vocab_size is None:
        raise ValueError(f"no {prefix}.model to load, and no vocab_size to train one with")
    os.makedirs(workdir, exist_ok=True)
    return SentencePieceTokenizer.train(train_texts, vocab_size, prefix, **train_kwargs)


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.split("\n"):
            if line:
                yield line


def _atomic_write(path: str, data: bytes) -> None:
    # Write beside the target and rename: a reader (or a racing writer) never sees half a file.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
