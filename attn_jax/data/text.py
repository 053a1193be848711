"""Text data for the sequence tasks: dates seq2seq, a stdlib LM corpus, WMT14 and lm1b.

Offline (no download, nothing to prepare):
  * Dates: a date written by CLDR (via `babel`) in one of ~30 locales and several formats
    ("21. November 2026", "2026年11月21日", "sábado, 21 de noviembre de 2026") -> "2026-11-21".
    Splits are disjoint by date value. Metrics: exact match and sacrebleu corpus BLEU.
  * Language modelling on the Python standard library's own source, split by file.
    Metrics: loss, perplexity and bits per UTF-8 byte (comparable across tokenizers).
Online (prepared once with `tfds build`, read as ArrayRecord through `tfds.data_source`):
  * `wmt14_translate/de-en` and `lm1b`.

Batches are dicts of NumPy arrays, `{'inputs': int32 [b, len_in], 'targets': int32 [b, len_out],
'mask': float32 [b]}`, pad = 0 (tokenizers.PAD_ID) and mask 0 on the rows that fill the last
evaluation batch (the image pipeline's convention). They come from grain `MapDataset`s:
`batch_iterator(ds)` is deterministic and `get_state()`/`set_state()` checkpoint it. Each process
keeps rows [p * b_local, (p + 1) * b_local) of the global batch, b_local = global_batch_size /
process_count, the rule of the image pipeline.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import math
import os
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import grain
import numpy as np

from attn_jax.data.tokenizers import EOS_ID, PAD_ID, Tokenizer, pad_batch

# ----------------------------------------------------------------------------------------------
# Dates: CLDR-formatted dates -> ISO 8601.
# ----------------------------------------------------------------------------------------------

# Locales whose CLDR Gregorian formats are what people write (no Buddhist/Persian calendars, no
# bidi control marks). babel prints Latin digits for all of them.
DATE_LOCALES: tuple[str, ...] = (
    "en", "en_GB", "de", "fr", "fr_CA", "es", "it", "pt", "nl", "ru", "uk", "pl", "cs", "sk",
    "sv", "da", "nb", "fi", "hu", "ro", "tr", "el", "ja", "zh", "zh_Hant", "ko", "vi", "id",
    "ca", "lt", "hi")
# CLDR's four standard lengths, plus skeletons resolved through each locale's availableFormats.
DATE_FORMATS: tuple[str, ...] = ("short", "medium", "long", "full", "yMd", "yMMMd", "yMMMEd")
_STANDARD_FORMATS = ("short", "medium", "long", "full")


class DatePattern(NamedTuple):
    locale: str   # e.g. "de"
    format: str   # the requested format, e.g. "long" or the skeleton "yMMMd"
    pattern: str  # the CLDR pattern used, year widened, e.g. "d. MMMM y"


def date_pattern(locale: str, fmt: str) -> str:
    """The CLDR pattern babel uses for `fmt` in `locale`, with a 2-digit year widened to 4.

    "yy" (in e.g. en "M/d/yy") would make 1926 and 2026 the same string; every other field is
    kept, so the order, separators and month names stay the locale's.
    """
    from babel import Locale, UnknownLocaleError
    from babel.dates import (get_date_format, match_skeleton, tokenize_pattern,
                             untokenize_pattern)

    try:
        loc = Locale.parse(locale)
    except (UnknownLocaleError, ValueError) as e:
        raise ValueError(f"unknown CLDR locale {locale!r}") from e
    if fmt in _STANDARD_FORMATS:
        pattern = get_date_format(fmt, loc).pattern
    else:
        key = match_skeleton(fmt, loc.datetime_skeletons)
        if key is None:
            raise ValueError(f"date format {fmt!r} is neither one of {_STANDARD_FORMATS} nor a "
                             f"CLDR skeleton that locale {locale!r} can match")
        pattern = loc.datetime_skeletons[key].pattern
    tokens = [("field", ("y", 1)) if tok == ("field", ("y", 2)) else tok
              for tok in tokenize_pattern(pattern)]
    pattern = untokenize_pattern(tokens)
    fields = [val[0] for kind, val in tokenize_pattern(pattern) if kind == "field"]
    if not {"y", "d"} <= set(fields) or not {"M", "L"} & set(fields):
        raise ValueError(f"date format {fmt!r} in locale {locale!r} resolves to {pattern!r}, "
                         f"which lacks a year (y), month (M/L) or day (d) field")
    return pattern


def _is_ambiguous(pattern: str) -> bool:
    """True for numeric-month patterns ordered other than y-M-d or d-M-y (en-US "M/d/y").

    Mixed with the d/M/y of most locales, "3/4/2026" would have two correct answers.
    """
    from babel.dates import tokenize_pattern

    fields = [("M" if val[0] == "L" else val[0], val[1])
              for kind, val in tokenize_pattern(pattern) if kind == "field" and val[0] in "yMLd"]
    numeric_month = any(c == "M" and n <= 2 for c, n in fields)
    return numeric_month and [c for c, _ in fields] not in (["y", "M", "d"], ["d", "M", "y"])


def date_patterns(locales: Sequence[str] = DATE_LOCALES,
                  formats: Sequence[str] = DATE_FORMATS) -> list[DatePattern]:
    """The distinct (locale, pattern) pairs the generator draws from, ambiguous ones left out."""
    out, seen = [], set()
    for locale in locales:
        for fmt in formats:
            pattern = date_pattern(locale, fmt)
            if (locale, pattern) not in seen and not _is_ambiguous(pattern):
                seen.add((locale, pattern))
                out.append(DatePattern(locale, fmt, pattern))
    if not out:
        raise ValueError(f"no usable date pattern for locales={list(locales)}, "
                         f"formats={list(formats)}")
    return out


def render_date(date: datetime.date, locale: str, fmt: str) -> str:
    """`date` written in `locale` with format `fmt` (see `date_pattern`)."""
    from babel.dates import format_date

    return format_date(date, date_pattern(locale, fmt), locale=locale)


def _day_range(start_year: int, end_year: int) -> np.ndarray:
    if not 1 <= start_year <= end_year <= 9999:
        raise ValueError(f"need 1 <= start_year <= end_year <= 9999, got {start_year}, {end_year}")
    first = datetime.date(start_year, 1, 1).toordinal()
    return np.arange(first, datetime.date(end_year, 12, 31).toordinal() + 1)


def _render(days: np.ndarray, rng: np.random.Generator,
            patterns: Sequence[DatePattern]) -> list[tuple[str, str]]:
    """One (source, ISO target) per proleptic-Gregorian ordinal, each with a random pattern."""
    from babel import Locale
    from babel.dates import parse_pattern

    compiled = [(parse_pattern(p.pattern), Locale.parse(p.locale)) for p in patterns]
    out = []
    for day, k in zip(days.tolist(), rng.integers(0, len(compiled), size=len(days)).tolist()):
        date = datetime.date.fromordinal(day)
        pattern, locale = compiled[k]
        out.append((pattern.apply(date, locale), date.isoformat()))
    return out


def generate_dates(n: int, seed: int, *, locales: Sequence[str] = DATE_LOCALES,
                   formats: Sequence[str] = DATE_FORMATS, start_year: int = 1900,
                   end_year: int = 2099) -> list[tuple[str, str]]:
    """`n` (source, "YYYY-MM-DD") pairs: days uniform in [start_year, end_year], pattern uniform
    over `date_patterns(locales, formats)`. Deterministic in `seed`. No split: see `date_splits`.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    days = rng.choice(_day_range(start_year, end_year), size=n)
    return _render(days, rng, date_patterns(locales, formats))


def date_splits(n_train: int, n_validation: int, n_test: int, seed: int = 0, *,
                locales: Sequence[str] = DATE_LOCALES, formats: Sequence[str] = DATE_FORMATS,
                start_year: int = 1900, end_year: int = 2099) -> dict[str, list[tuple[str, str]]]:
    """Train/validation/test pairs whose dates never overlap, in any format.

    A seeded permutation of every day in the range gives the test days (its first `n_test`),
    then the validation days (the next `n_validation`); each held-out day appears once. Train
    draws `n_train` days with replacement from the remaining days. Each split has its own stream
    of random numbers, so the test set depends only on (seed, n_test, range, locales, formats).
    """
    days = _day_range(start_year, end_year)
    if min(n_train, n_validation, n_test) < 0 or n_validation + n_test >= len(days):
        raise ValueError(f"split sizes (train={n_train}, validation={n_validation}, "
                         f"test={n_test}) must be >= 0 and leave training days among the "
                         f"{len(days)} days of {start_year}-{end_year}")
    patterns = date_patterns(locales, formats)
    perm = np.random.default_rng([seed, 0]).permutation(days)
    held = {"test": perm[:n_test], "validation": perm[n_test:n_test + n_validation]}
    train_days = np.random.default_rng([seed, 1]).choice(perm[n_test + n_validation:],
                                                         size=n_train)
    return {
        "train": _render(train_days, np.random.default_rng([seed, 2]), patterns),
        "validation": _render(held["validation"], np.random.default_rng([seed, 3]), patterns),
        "test": _render(held["test"], np.random.default_rng([seed, 4]), patterns),
    }


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after stripping outer whitespace."""
    _check_corpus(predictions, references)
    return float(np.mean([p.strip() == r.strip() for p, r in zip(predictions, references)]))


def bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU (Papineni et al. 2002) in [0, 100], one reference per sentence."""
    import sacrebleu

    _check_corpus(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)],
                                       tokenize=tokenize).score)


def dates_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{'exact_match': fraction in [0, 1], 'bleu': sacrebleu corpus BLEU in [0, 100]}."""
    return {"exact_match": exact_match(predictions, references),
            "bleu": bleu(predictions, references)}


def _check_corpus(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need as many predictions as references, at least one: got "
                         f"{len(predictions)} predictions, {len(references)} references")


# ----------------------------------------------------------------------------------------------
# Language modelling on the Python standard library.
# ----------------------------------------------------------------------------------------------

# Tests, installed packages, caches, and pydoc_data (generated: one 750 KB string of docs that
# would be half of any split it fell into).
STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                                  "__pycache__", "pydoc_data"})


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """Documents of one split: `names[i]` is the file `texts[i]` was read from."""

    names: tuple[str, ...]
    texts: tuple[str, ...]

    @property
    def num_bytes(self) -> int:
        """UTF-8 bytes of all texts."""
        return sum(len(t.encode("utf-8")) for t in self.texts)


def in_validation(name: str, seed: int, fraction: float) -> bool:
    """Whether file `name` goes to validation: SHA-256 of "seed/name" as a uniform in [0, 1)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def stdlib_corpus(validation_fraction: float = 0.05, seed: int = 0,
                  root: str | None = None) -> dict[str, TextSplit]:
    """{'train', 'validation'}: the `*.py` files under the stdlib (or `root`), split by file.

    Test directories, site-packages and caches are skipped (`STDLIB_EXCLUDED_DIRS`). Names are
    POSIX paths relative to `root`, sorted; `in_validation` assigns each file, so a file's split
    does not depend on which other files exist. The text (and so every size) depends on the
    Python version: CPython 3.11.7 gives 694 train files (10,746,991 bytes) and 38 validation
    files (614,639 bytes) with the defaults.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    root = root or sysconfig.get_paths()["stdlib"]
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS]
        rel = os.path.relpath(dirpath, root)
        names += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
                  for f in filenames if f.endswith(".py")]
    names.sort()
    splits: dict[str, tuple[list[str], list[str]]] = {"train": ([], []), "validation": ([], [])}
    for name in names:
        with open(os.path.join(root, name), "rb") as f:
            text = f.read().decode("utf-8")  # PEP 3120: stdlib sources are UTF-8
        split = "validation" if in_validation(name, seed, validation_fraction) else "train"
        splits[split][0].append(name)
        splits[split][1].append(text)
    for split, (split_names, _) in splits.items():
        if not split_names:
            raise ValueError(f"stdlib_corpus: {split} split is empty ({len(names)} files under "
                             f"{root!r}, validation_fraction={validation_fraction})")
    return {k: TextSplit(tuple(n), tuple(t)) for k, (n, t) in splits.items()}


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


def bits_per_byte(total_nll_nats: float, num_bytes: int) -> float:
    """Summed next-token NLL (nats) over a text -> bits per UTF-8 byte: nll / (ln 2 * bytes)."""
    if num_bytes <= 0:
        raise ValueError(f"num_bytes must be > 0, got {num_bytes}")
    return float(total_nll_nats) / (math.log(2.0) * num_bytes)


def lm_metrics(total_nll_nats: float, num_tokens: int, num_bytes: int) -> dict[str, float]:
    """{'loss': nats/token, 'perplexity': exp(loss), 'bits_per_byte'} from summed NLL."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
    loss = float(total_nll_nats) / num_tokens
    return {"loss": loss, "perplexity": math.exp(loss),
            "bits_per_byte": bits_per_byte(total_nll_nats, num_bytes)}


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
    offsets = window_offsets(np.arange(start, start + n), seed, num_starts)
    return np.asarray(stream, np.int32)[offsets[:, None] + np.arange(seq_len + 1)]


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


# ----------------------------------------------------------------------------------------------
# grain datasets: shuffle, repeat, global batch, this process's rows.
# ----------------------------------------------------------------------------------------------

Batch = dict[str, np.ndarray]


def host_rows(global_batch_size: int, process_index: int | None = None,
              process_count: int | None = None) -> slice:
    """Rows of each global batch this process keeps: [p * b_local, (p + 1) * b_local)."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple "
                         f"of process_count={process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} not in [0, {process_count})")
    b_local = global_batch_size // process_count
    return slice(process_index * b_local, (process_index + 1) * b_local)


def batch_iterator(ds: grain.MapDataset, prefetch: int = 8) -> grain.DatasetIterator:
    """A checkpointable iterator over `ds` (`get_state()` / `set_state(state)`).

    One prefetch thread: batches are tokenized in Python, so more threads only contend for the
    GIL, and grain's default (16 threads, 500 batches ahead) is sized for file reads.
    """
    read = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(read))


def _batched(num_examples: int, global_batch_size: int,
             collate: Callable[[list[int | None]], Batch], *, train: bool, seed: int,
             process_index: int | None, process_count: int | None) -> grain.MapDataset:
    """Global batches of example indices, cut to this process's rows, then `collate`d.

    Train: a fresh seeded permutation of range(num_examples) every epoch, endless, full
    batches. Eval: in order, once; the short final batch is filled with None, which `collate`
    turns into all-pad rows, so every process gets b_local rows. Only this process's rows are
    read. 'mask' float32 [b_local] is 1 for real rows and 0 for filler (the image pipeline's).
    """
    rows = host_rows(global_batch_size, process_index, process_count)
    ds = grain.MapDataset.range(num_examples)
    if train:
        ds = ds.shuffle(seed=seed).repeat(None)

    def batch_fn(indices: Sequence[int]) -> Batch:
        local = ([int(i) for i in indices] + [None] * (global_batch_size - len(indices)))[rows]
        return {**collate(local), "mask": np.array([i is not None for i in local], np.float32)}

    return ds.batch(global_batch_size, drop_remainder=train, batch_fn=batch_fn)


def seq2seq_dataset(pairs: Sequence[tuple[str, str]], src_tokenizer: Tokenizer,
                    tgt_tokenizer: Tokenizer, *, global_batch_size: int, max_src_len: int,
                    max_tgt_len: int, seed: int = 0, train: bool = True,
                    process_index: int | None = None,
                    process_count: int | None = None) -> grain.MapDataset:
    """Batches {'inputs': int32 [b_local, max_src_len], 'targets': int32 [b_local, max_tgt_len],
    'mask': float32 [b_local]}.

    Each side is `ids + [eos]`, right-padded with 0 and cut to its length (see
    `Tokenizer.encode_batch`); the decoder's input is the task's `shift_right(targets)`.
    `pairs` is any random-access sequence: an in-memory list or `load_wmt14(...)`.
    """
    def collate(indices: list[int | None]) -> Batch:
        real = [pairs[i] for i in indices if i is not None]  # filler rows come last
        inputs = np.zeros((len(indices), max_src_len), np.int32)
        targets = np.zeros((len(indices), max_tgt_len), np.int32)
        if real:
            inputs[:len(real)] = src_tokenizer.encode_batch([s for s, _ in real], max_src_len)
            targets[:len(real)] = tgt_tokenizer.encode_batch([t for _, t in real], max_tgt_len)
        return {"inputs": inputs, "targets": targets}

    return _batched(len(pairs), global_batch_size, collate, train=train, seed=seed,
                    process_index=process_index, process_count=process_count)


def _lm_batch(windows: np.ndarray) -> Batch:
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

    rows = host_rows(global_batch_size, process_index, process_count)

    def batch_fn(indices: np.ndarray) -> Batch:
        offsets = window_offsets(np.asarray(indices)[rows], seed, len(stream) - seq_len)
        windows = stream[offsets[:, None] + np.arange(seq_len + 1)]
        return {**_lm_batch(windows), "mask": np.ones(len(windows), np.float32)}

    # Window k is a pure function of (seed, k), so the index range can be (practically) endless.
    return grain.MapDataset.range(2**62).batch(global_batch_size, batch_fn=batch_fn)


def lm_eval_dataset(stream: np.ndarray, *, seq_len: int, global_batch_size: int,
                    process_index: int | None = None,
                    process_count: int | None = None) -> grain.MapDataset:
    """One in-order pass over `eval_windows(stream, seq_len)`; the last batch is 0-padded."""
    windows = eval_windows(np.asarray(stream, np.int32), seq_len)

    def collate(indices: list[int | None]) -> Batch:
        return _lm_batch(np.stack([np.zeros(seq_len + 1, np.int32) if i is None else windows[i]
                                   for i in indices]))

    return _batched(len(windows), global_batch_size, collate, train=False, seed=0,
                    process_index=process_index, process_count=process_count)


def sentence_lm_dataset(texts: Sequence[str], tokenizer: Tokenizer, *, seq_len: int,
                        global_batch_size: int, seed: int = 0, train: bool = True,
                        process_index: int | None = None,
                        process_count: int | None = None) -> grain.MapDataset:
    """One sentence per row (lm1b): `[eos] + ids + [eos]` cut/padded to seq_len + 1, shifted.

    The leading eos is the start-of-document context of `token_stream`, so a model trained on
    either layout sees the same convention.
    """
    def collate(indices: list[int | None]) -> Batch:
        ids = tokenizer.encode_many([texts[i] for i in indices if i is not None])
        seqs = [[EOS_ID] + s + [EOS_ID] for s in ids] + [[]] * (len(indices) - len(ids))
        return _lm_batch(pad_batch(seqs, seq_len + 1))

    return _batched(len(texts), global_batch_size, collate, train=train, seed=seed,
                    process_index=process_index, process_count=process_count)


# ----------------------------------------------------------------------------------------------
# Online: tfds ArrayRecord sources (prepared once, read without TensorFlow).
# ----------------------------------------------------------------------------------------------

class DatasetNotPreparedError(FileNotFoundError):
    """A tfds dataset is not in `data_dir` as ArrayRecord."""


class _MappedSequence(Sequence):
    """`fn` applied lazily to each record of a random-access source (what grain reads)."""

    def __init__(self, source: Sequence[Any], fn: Callable[[Any], Any]):
        self._source, self._fn = source, fn

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        return self._fn(self._source[i])


def _text(x: Any) -> str:
    # tfds decodes Text features to bytes (NumPy object or Python bytes).
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def tfds_source(name: str, split: str, data_dir: str | None = None) -> Sequence[Mapping]:
    """`tfds.data_source(name, split)` from `data_dir`, never downloading.

    Raises DatasetNotPreparedError naming the dataset and the command that prepares it.
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises DatasetNotFoundError, AssertionError, NotImplementedError
        where = data_dir or "~/tensorflow_datasets"
        raise DatasetNotPreparedError(
            f"tfds dataset {name!r} (split {split!r}) is not prepared as ArrayRecord in "
            f"{where}. Prepare it once on a machine with network access (its builder needs "
            f"tensorflow): `tfds build {name} --file_format=array_record --data_dir={where}`, "
            f"then copy the directory here and pass data_dir. "
            f"tfds said: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def _check_split(name: str, split: str, allowed: Sequence[str]) -> None:
    if split.split("[")[0] not in allowed:
        raise ValueError(f"{name} has splits {list(allowed)} (optionally sliced, e.g. "
                         f"'train[:1%]'), got {split!r}")


def load_wmt14(split: str, data_dir: str | None = None, *, source_lang: str = "en",
               target_lang: str = "de") -> Sequence[tuple[str, str]]:
    """WMT14 En-De (Bojar et al. 2014) as lazy (source, target) pairs; 'validation' is
    newstest2013, 'test' newstest2014."""
    _check_split("wmt14_translate/de-en", split, ("train", "validation", "test"))
    if {source_lang, target_lang} != {"en", "de"}:
        raise ValueError(f"wmt14_translate/de-en has languages en and de, got "
                         f"{source_lang}->{target_lang}")
    source = tfds_source("wmt14_translate/de-en", split, data_dir)
    return _MappedSequence(source, lambda ex: (_text(ex[source_lang]), _text(ex[target_lang])))


def load_lm1b(split: str, data_dir: str | None = None) -> Sequence[str]:
    """The One Billion Word benchmark (Chelba et al. 2013) as lazy sentences."""
    _check_split("lm1b", split, ("train", "test"))
    return _MappedSequence(tfds_source("lm1b", split, data_dir), lambda ex: _text(ex["text"]))
