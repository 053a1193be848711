"""Online text datasets read through `tfds.data_source` (prepared once with `tfds build`).

    pairs = load_wmt14('validation', data_dir)   # lazy (English, German) pairs, newstest2013
    sentences = load_lm1b('test', data_dir)      # lazy sentences of the One Billion Word benchmark

Both are random-access sequences that read (and decode) a record only when indexed, so a host
reads only its rows of each batch. No TensorFlow is needed to read ArrayRecord files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any


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
