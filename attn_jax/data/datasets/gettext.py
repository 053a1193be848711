"""Real offline translation pairs: the gettext message catalogues of the system (English -> X).

    data = load_gettext("de")     # reads /usr/share/locale/de/LC_MESSAGES/*.mo
    data.counts()                 # {'train': ..., 'validation': ..., 'test': ...}
    source, target = data.splits["test"][0]   # e.g. ('Cancel', 'Abbrechen')

Every installed program ships its UI strings' translations as compiled catalogues (`.mo`);
`gettext.GNUTranslations` reads one into `_catalog`, msgid (English) -> msgstr. What is kept:
one-line strings that a model can learn to translate from the string alone. Dropped, each
counted under its reason in `GettextData.dropped`:

  plural        msgid tuples `(msgid, n)`: the plural forms (their singular is kept if present)
  context       keys "ctx\\x04msgid": the same English means different things per context
  header        the empty msgid (the catalogue's metadata)
  untranslated  an empty msgstr
  multi_line    any control character (newline, tab, escape): usage text and tables
  placeholder   printf (%s, %1$d, %(name)s, %-10s), strftime (%H) and brace ({0}, {name})
                fields: the output would have to copy opaque slots the data never explains
  markup        XML/HTML tags (<b>, <value/>) and entities (&amp;)
  too_long      more than `max_bytes` UTF-8 bytes on either side
  identical     the translation equals the source up to case and surrounding spaces (names,
                codes, untranslated copies; fr writes language names lower-case: "Aka" -> "aka")
  no_letters    a source without a letter ("--", "...")
  duplicate     (counted, not lost) entries merged into an English string already kept
A catalogue the stdlib cannot decode (a charset its header misstates) is skipped with a warning
and listed in `GettextData.unreadable`.

Accelerator markers are stripped, not dropped: "_Cancel" -> "_Abbrechen" becomes
"Cancel" -> "Abbrechen", the label as the user sees it, which is often already in the data
unmarked. A marker ("_" or "&" before a letter; "__" is a literal underscore) is taken for one
only when both sides carry exactly one (or the target ends in the CJK style "(_C)") and it
does not join the parts of a name, so "shared_buffers" and "new_role" -> "neue_Rolle" are left
alone. gnupg's translator hint ("|pinentry-label|_Cancel") is stripped too.

The same English string occurs in many catalogues, sometimes translated differently: each is
kept once with its most frequent translation (ties: the first in sorted order). Splits go by
SHA-256 of "seed/english" as a uniform in [0, 1) (test below `test_fraction`, validation next),
so a string keeps its split when the image gains or loses catalogues; within a split the pairs
are in hash order, so the first n of a split are a uniform sample. The catalogues change with
the image: the counts do too (log line at load, `GettextData.counts()`).
"""

from __future__ import annotations

import collections
import dataclasses
import gettext
import glob
import hashlib
import logging
import os
import re
from collections.abc import Sequence

log = logging.getLogger(__name__)

DEFAULT_LOCALE_DIR = "/usr/share/locale"
SPLITS = ("train", "validation", "test")

# printf with flags/width/precision/length and positional "%1$s", "%(name)s", strftime "%H",
# glib "%TRUE"-style references, Qt "%1"; "%%" and a bare "%" ("Use%", "50% of") are text.
_PRINTF = re.compile(r"%(?:\d+\$|\([^)]*\))?[-+#0']*(?:\d+|\*)?(?:\.(?:\d+|\*))?[A-Za-z]|%\d")
_BRACE = re.compile(r"\{[\w.\[\]]*(?:![rsa])?(?::[^{}]*)?\}")  # {} {0} {name} {0:>4} {x!r}
_MARKUP = re.compile(r"</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>|&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CJK_MNEMONIC = re.compile(r"\s*[(（][_&][A-Za-z0-9][)）]")  # "取消(_C)"
_HINT = re.compile(r"^\|[\w-]+\|")
_LETTER = re.compile(r"[^\W\d_]")
_WORD_OPENERS = frozenset(" \u00a0([{<\"'«»“„‘|/-")


def available_languages(locale_dir: str = DEFAULT_LOCALE_DIR) -> list[str]:
    """Languages under `locale_dir` that hold at least one `LC_MESSAGES/*.mo`, sorted."""
    if not os.path.isdir(locale_dir):
        return []
    return sorted(name for name in os.listdir(locale_dir)
                  if glob.glob(os.path.join(locale_dir, name, "LC_MESSAGES", "*.mo")))


def catalogue_paths(language: str, locale_dir: str = DEFAULT_LOCALE_DIR,
                    domains: Sequence[str] = ()) -> list[str]:
    """The sorted `.mo` files of `language` (only `domains`, e.g. ('coreutils',), if given).

    Raises ValueError naming the directory and the languages it does hold when there are none.
    """
    if not os.path.isdir(locale_dir):
        raise ValueError(f"gettext locale directory {locale_dir!r} does not exist: set "
                         "config.data.locale_dir to the directory holding <lang>/LC_MESSAGES/"
                         "*.mo (on Debian /usr/share/locale)")
    messages = os.path.join(locale_dir, language, "LC_MESSAGES")
    paths = sorted(glob.glob(os.path.join(messages, "*.mo")))
    if domains:
        found = {os.path.basename(p)[:-3]: p for p in paths}
        missing = sorted(set(domains) - set(found))
        if missing:
            raise ValueError(f"{messages} has no catalogue for domains {missing}; it has "
                             f"{sorted(found)}")
        paths = [found[d] for d in sorted(set(domains))]
    if not paths:
        languages = available_languages(locale_dir)
        shown = ", ".join(languages[:60]) + (f", ... ({len(languages)} in all)"
                                              if len(languages) > 60 else "")
        raise ValueError(f"no gettext catalogues (*.mo) for language {language!r} in "
                         f"{messages}; languages with catalogues in {locale_dir}: "
                         f"{shown or 'none'}")
    return paths


def read_catalogue(path: str) -> dict:
    """The raw `_catalog` of one `.mo` file: msgid -> msgstr, plural keys `(msgid, n)`."""
    with open(path, "rb") as f:
        return dict(gettext.GNUTranslations(f)._catalog)


def _strip_accelerators(source: str, target: str) -> tuple[str, str]:
    """Both sides without their mnemonic marker when both carry one (see the module doc)."""
    cjk = _CJK_MNEMONIC.search(target)
    if cjk:
        target = target[:cjk.start()] + target[cjk.end():]
    for marker in "_&":
        m = re.escape(marker)
        lone = re.compile(rf"(?<!{m}){m}(?=[^\W_])")
        src = list(lone.finditer(source.replace(marker * 2, "\0\0")))
        tgt = list(lone.finditer(target.replace(marker * 2, "\0\0")))
        if len(src) != 1 or not (len(tgt) == 1 or (cjk and not tgt)):
            continue
        if not cjk and _is_identifier(source, src[0].start(), target, tgt[0].start()):
            continue
        source = _drop_marker(source, src[0].start(), marker)
        target = target if cjk and not tgt else _drop_marker(target, tgt[0].start(), marker)
        break
    return source, target


def _is_identifier(source: str, i: int, target: str, j: int) -> bool:
    """Whether the marker at source[i] (target[j]) joins the parts of a name: "shared_buffers"
    copied into the target (any case), or "new_role" -> "neue_Rolle", not a mnemonic ("C_ollate"
    -> "_Zusammentragen", "Be_fore:" -> "Be_vor:", "Page or_dering:" -> "_Reihenfolge:")."""
    if i == 0 or source[i - 1] in _WORD_OPENERS:
        return False   # "_Domain...": starts its word, a mnemonic even when the word is kept
    tail = re.match(r".[^\W_]*", source[i:]).group()
    if tail.casefold() in target.casefold():
        return True
    head = re.search(r"[^\W_]*$", source[:i]).group()
    return (len(head) >= 2 and (head.islower() or head.isupper())
            and j > 0 and target[j - 1] not in _WORD_OPENERS)


def _drop_marker(text: str, i: int, marker: str) -> str:
    return (text[:i].replace(marker * 2, marker) + text[i + 1:].replace(marker * 2, marker))


def clean_pair(msgid: str | tuple[str, int], msgstr: str,
               max_bytes: int) -> tuple[str, str] | str:
    """The (english, translation) to keep from one catalogue entry (accelerators stripped), or
    the reason it is dropped (one of the module doc's names)."""
    if isinstance(msgid, tuple):
        return "plural"
    if msgid == "":
        return "header"
    if "\x04" in msgid:
        return "context"
    if not msgstr:
        return "untranslated"
    # gnupg's "|pinentry-label|_Cancel": a hint for translators, which some keep, some drop
    msgid, msgstr = _HINT.sub("", msgid), _HINT.sub("", msgstr)
    for text in (msgid, msgstr):
        if _CONTROL.search(text):
            return "multi_line"
    for text in (msgid, msgstr):
        if _PRINTF.search(text) or _BRACE.search(text):
            return "placeholder"
    for text in (msgid, msgstr):
        if _MARKUP.search(text):
            return "markup"
    source, target = _strip_accelerators(msgid, msgstr)
    if max(len(source.encode("utf-8")), len(target.encode("utf-8"))) > max_bytes:
        return "too_long"
    if source.strip().casefold() == target.strip().casefold():
        return "identical"
    if not _LETTER.search(source):
        return "no_letters"
    return source, target


def split_of(english: str, seed: int = 0, validation_fraction: float = 0.05,
             test_fraction: float = 0.05) -> str:
    """'test', 'validation' or 'train' for `english`: SHA-256 of "seed/english" as a uniform
    u in [0, 1); test when u < test_fraction, validation when u < test + validation."""
    u = _uniform(english, seed)
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + validation_fraction else "train"


def check_fractions(validation_fraction: float, test_fraction: float) -> None:
    """Both >= 0 and leaving a training split (sum < 1), else ValueError."""
    if not (0 <= validation_fraction and 0 <= test_fraction
            and validation_fraction + test_fraction < 1):
        raise ValueError(f"validation_fraction={validation_fraction} and test_fraction="
                         f"{test_fraction} must be >= 0 and leave a training split (sum < 1)")


def _uniform(english: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}/{english}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclasses.dataclass(frozen=True)
class GettextData:
    """The pairs of one language, split; plus what was read and what was dropped, and why."""

    language: str
    locale_dir: str
    splits: dict[str, list[tuple[str, str]]]
    catalogues: tuple[str, ...]        # the .mo files read
    unreadable: tuple[str, ...]        # the .mo files skipped (charset the stdlib rejects)
    entries: int                       # catalogue entries seen, the header included
    accelerators: int                  # kept entries whose markers (or hint) were stripped
    dropped: dict[str, int]            # reason -> entries; 'duplicate' counts the merged ones

    def counts(self) -> dict[str, int]:
        """Pairs per split: {'train': n, 'validation': n, 'test': n}."""
        return {name: len(pairs) for name, pairs in self.splits.items()}

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items())
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items()))
        return (f"gettext en->{self.language}: {counts} pairs from {len(self.catalogues)} "
                f"catalogues in {os.path.join(self.locale_dir, self.language)} "
                f"({self.entries} entries, {self.accelerators} accelerators stripped; "
                f"dropped: {dropped}"
                + (f"; unreadable: {', '.join(map(os.path.basename, self.unreadable))}"
                   if self.unreadable else "") + ")")


def load_gettext(language: str = "de", locale_dir: str = DEFAULT_LOCALE_DIR, *,
                 max_bytes: int = 64, validation_fraction: float = 0.05,
                 test_fraction: float = 0.05, seed: int = 0,
                 domains: Sequence[str] = ()) -> GettextData:
    """English -> `language` pairs of the catalogues in `locale_dir`, filtered, deduplicated
    and split (see the module doc). Logs `GettextData.summary()`."""
    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    check_fractions(validation_fraction, test_fraction)
    locale_dir = locale_dir or DEFAULT_LOCALE_DIR
    paths = catalogue_paths(language, locale_dir, domains)
    dropped: collections.Counter = collections.Counter()
    translations: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    read, unreadable, entries, accelerators = [], [], 0, 0
    for path in paths:
        try:
            catalog = read_catalogue(path)
        except (OSError, UnicodeDecodeError, LookupError) as e:
            # e.g. a catalogue whose header declares UTF-8 but holds Latin-1 bytes
            log.warning("gettext: skipping %s: %s", path, e)
            unreadable.append(path)
            continue
        read.append(path)
        entries += len(catalog)
        for msgid, msgstr in catalog.items():
            kept = clean_pair(msgid, msgstr, max_bytes)
            if isinstance(kept, str):
                dropped[kept] += 1
            else:
                translations[kept[0]][kept[1]] += 1
                accelerators += kept[0] != msgid
    if not translations:
        raise ValueError(f"no English -> {language!r} pair survives the filters in "
                         f"{len(read)} catalogues of {os.path.join(locale_dir, language)} "
                         f"(dropped: {dict(sorted(dropped.items()))}; unreadable: "
                         f"{[os.path.basename(p) for p in unreadable]})")
    splits: dict[str, list[tuple[float, str, str]]] = {name: [] for name in SPLITS}
    for english, seen in translations.items():
        # the most frequent translation; ties: the smallest in sorted order
        target = min(seen.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        dropped["duplicate"] += sum(seen.values()) - 1
        name = split_of(english, seed, validation_fraction, test_fraction)
        splits[name].append((_uniform(english, seed), english, target))
    data = GettextData(
        language=language, locale_dir=locale_dir,
        splits={name: [(s, t) for _, s, t in sorted(rows)] for name, rows in splits.items()},
        catalogues=tuple(read), unreadable=tuple(unreadable), entries=entries,
        accelerators=accelerators, dropped=dict(dropped))
    log.info(data.summary())
    return data


def gettext_splits(language: str = "de", locale_dir: str = DEFAULT_LOCALE_DIR,
                   **kwargs) -> dict[str, list[tuple[str, str]]]:
    """`load_gettext(...).splits`: {'train', 'validation', 'test'} lists of (english, target)."""
    return load_gettext(language, locale_dir, **kwargs).splits
