"""Dates seq2seq: a date written by CLDR (via `babel`) in one of ~30 locales -> ISO 8601.

    splits = date_splits(100_000, 1000, 1000, seed=0)   # {'train', 'validation', 'test'}
    source, target = splits['test'][0]   # e.g. ('21. November 2026', '2026-11-21')

Sources mix locales and CLDR formats ("21. November 2026", "2026年11月21日"); ambiguous
numeric orders (en-US "M/d/y") are left out so every source names one date. Splits are disjoint
by date value. Offline: nothing to download or prepare. Metrics (exact match, sacrebleu BLEU) are
in `attn_jax.eval.text_metrics`; batches come from `attn_jax.data.seq2seq.seq2seq_dataset`.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

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
