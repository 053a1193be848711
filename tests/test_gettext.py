"""The gettext dataset (`attn_jax.data.datasets.gettext`): the filters on a hand-made catalogue,
the hash split, the errors, a shape-level look at the system's catalogues, and the seq2seq task
reading it."""

from __future__ import annotations

import glob
import os
import struct

import jax
import numpy as np
import pytest

from attn_jax import tasks
from attn_jax.data.datasets import gettext as gt
from tiny_configs import set_keys, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"
SYSTEM_DE = glob.glob(os.path.join(gt.DEFAULT_LOCALE_DIR, "de", "LC_MESSAGES", "*.mo"))


def write_mo(path: str, messages: dict[str, str], header: str = HEADER,
             encoding: str = "utf-8") -> None:
    """A GNU .mo file (what msgfmt writes, without the optional hash table): magic, revision,
    count, the offsets of the two (length, offset) tables, then the NUL-terminated strings.
    Plural entries are "singular\\0plural" -> "form0\\0form1"; contexts "ctx\\x04msgid"."""
    entries = sorted({"": header, **messages}.items())
    ids = [k.encode(encoding) for k, _ in entries]
    strs = [v.encode(encoding) for _, v in entries]
    n = len(entries)
    start = 7 * 4 + 16 * n  # header, then both tables
    table, blob = [], b""
    for s in ids + strs:
        table.append((len(s), start + len(blob)))
        blob += s + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, n, 28, 28 + 8 * n, 0, 0)
    out += b"".join(struct.pack("<2I", *t) for t in table)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(out + blob)


A = {
    "Open": "Öffnen",
    "Save file": "Datei speichern",
    "Print": "Drucken",
    "apple\0apples": "Apfel\0Äpfel",                      # plural: two catalogue keys
    "menu\x04Quit": "Beenden",                            # context
    "Cannot open %s": "Kann %s nicht öffnen",             # printf
    "%(count)d items": "%(count)d Elemente",              # Python named
    "{0} selected": "{0} ausgewählt",                     # brace
    "Copy %1$s": "%1$s kopieren",                         # positional printf
    "Yesterday at %H:%M": "Gestern um %H:%M",             # strftime
    "_Cancel": "_Abbrechen",                              # accelerator: stripped
    "&File": "&Datei",                                    # accelerator: stripped
    "shared_buffers is too small": "shared_buffers ist zu klein",  # a name, not a marker
    "50% done": "50 % erledigt",                          # a bare percent is text
    "Name": "Name",                                       # identical
    "Aka": "aka",                                         # identical up to case
    "Line one\nLine two": "Zeile eins\nZeile zwei",       # multi-line
    "<b>Bold</b>": "<b>Fett</b>",                         # markup
    "Untranslated": "",                                   # untranslated
    "A message that is far too long to keep": "Eine Meldung, die viel zu lang ist",  # too long
    "--": "––",                                           # no letters
}
B = {"Print": "Drucken", "Close": "Schließen"}
C = {"Print": "Ausdrucken", "Close": "Zumachen"}  # Print: 2 votes to 1; Close: a tie

KEPT = {
    ("Open", "Öffnen"), ("Save file", "Datei speichern"), ("Cancel", "Abbrechen"),
    ("File", "Datei"), ("shared_buffers is too small", "shared_buffers ist zu klein"),
    ("50% done", "50 % erledigt"), ("Print", "Drucken"), ("Close", "Schließen"),
}


@pytest.fixture
def locale_dir(tmp_path):
    root = str(tmp_path / "locale")
    for domain, messages in (("a", A), ("b", B), ("c", C)):
        write_mo(os.path.join(root, "de", "LC_MESSAGES", f"{domain}.mo"), messages)
    write_mo(os.path.join(root, "fr", "LC_MESSAGES", "a.mo"), {"Open": "Ouvrir"})
    return root


def test_filters_keep_exactly_the_translatable_strings(locale_dir):
    """Plural forms, contexts, headers, placeholders, markup, multi-line, untranslated,
    identical, letterless and over-long entries go, each counted; accelerators are stripped;
    duplicates keep the majority translation, ties the first in sorted order."""
    data = gt.load_gettext("de", locale_dir, max_bytes=36)
    pairs = [p for split in data.splits.values() for p in split]
    assert set(pairs) == KEPT and len(pairs) == len(KEPT)
    assert data.dropped == {"header": 3, "plural": 2, "context": 1, "placeholder": 5,
                            "multi_line": 1, "markup": 1, "untranslated": 1, "identical": 2,
                            "too_long": 1, "no_letters": 1, "duplicate": 3}
    assert data.accelerators == 2 and data.entries == sum(len(m) + 1 for m in (A, B, C)) + 1
    assert [os.path.basename(p) for p in data.catalogues] == ["a.mo", "b.mo", "c.mo"]
    assert sum(data.counts().values()) == len(KEPT)
    assert "gettext en->de" in data.summary() and "placeholder 5" in data.summary()


def test_accelerator_markers_and_names():
    assert gt.clean_pair("C_onnect", "_Verbinden", 64) == ("Connect", "Verbinden")
    assert gt.clean_pair("_Reload", "再読込(_R)", 64) == ("Reload", "再読込")
    assert gt.clean_pair("Save __as _file", "Speichern __als _Datei", 64) == (
        "Save _as file", "Speichern _als Datei")
    assert gt.clean_pair("new_role", "neue_Rolle", 64) == ("new_role", "neue_Rolle")
    assert gt.clean_pair("|pinentry-label|_Yes", "_Ja", 64) == ("Yes", "Ja")
    assert gt.clean_pair("Audio & Video", "Audio und Video", 64) == ("Audio & Video",
                                                                     "Audio und Video")
    assert gt.clean_pair("Grün", "Green", 4) == "too_long"  # bytes, not characters


def test_hash_split_is_deterministic_disjoint_and_stable(locale_dir):
    """Same inputs, same splits; the splits partition the kept pairs; a string's split does not
    depend on which other catalogues are read; the fractions are honoured on many strings."""
    first = gt.load_gettext("de", locale_dir, max_bytes=36, validation_fraction=0.3,
                            test_fraction=0.3)
    again = gt.load_gettext("de", locale_dir, max_bytes=36, validation_fraction=0.3,
                            test_fraction=0.3)
    assert first.splits == again.splits
    english = [{s for s, _ in first.splits[k]} for k in gt.SPLITS]
    assert sum(map(len, english)) == len(set().union(*english)) == len(KEPT)
    one = gt.load_gettext("de", locale_dir, max_bytes=36, validation_fraction=0.3,
                          test_fraction=0.3, domains=("a",))
    for name in gt.SPLITS:
        assert {s for s, _ in one.splits[name]} <= english[gt.SPLITS.index(name)]

    words = [f"message {i}" for i in range(4000)]
    got = [gt.split_of(w, 0, 0.1, 0.2) for w in words]
    assert abs(got.count("test") / 4000 - 0.2) < 0.03
    assert abs(got.count("validation") / 4000 - 0.1) < 0.03
    assert got != [gt.split_of(w, 1, 0.1, 0.2) for w in words]  # the seed salts the hash


def test_missing_language_directory_and_bad_files(locale_dir, tmp_path):
    with pytest.raises(ValueError, match=r"'xx'.*locale/xx/LC_MESSAGES.*de, fr"):
        gt.load_gettext("xx", locale_dir)
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        gt.load_gettext("de", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"domains \['zz'\]"):
        gt.load_gettext("de", locale_dir, domains=("zz",))
    with pytest.raises(ValueError, match="leave a training split"):
        gt.load_gettext("de", locale_dir, validation_fraction=0.5, test_fraction=0.5)
    # a header that says UTF-8 over Latin-1 bytes: skipped with a warning, named
    write_mo(os.path.join(locale_dir, "de", "LC_MESSAGES", "latin.mo"), {"Green": "Grün"},
             encoding="latin-1")
    data = gt.load_gettext("de", locale_dir, max_bytes=36)
    assert [os.path.basename(p) for p in data.unreadable] == ["latin.mo"]
    assert sum(data.counts().values()) == len(KEPT)
    write_mo(os.path.join(locale_dir, "fr", "LC_MESSAGES", "a.mo"), {"Name": "Name"})
    with pytest.raises(ValueError, match="no English -> 'fr' pair survives"):
        gt.load_gettext("fr", locale_dir)


@pytest.mark.skipif(not SYSTEM_DE, reason="no German gettext catalogues on this image")
def test_system_german_catalogues():
    """Shape-level facts only: the catalogues change with the image."""
    data = gt.load_gettext("de", max_bytes=64)
    assert all(data.counts().values()) and data.counts()["train"] > 1000
    english = [{s for s, _ in data.splits[k]} for k in gt.SPLITS]
    assert sum(map(len, english)) == len(set().union(*english))
    for source, target in (p for split in data.splits.values() for p in split):
        for text in (source, target):
            assert not gt._PRINTF.search(text) and not gt._BRACE.search(text), text
            assert "\n" not in text and len(text.encode()) <= 64
        assert source.casefold() != target.casefold()


def _gettext_task(locale_dir, **changes):
    config = set_keys(tiny_config("seq2seq"), {
        "data": dict(dataset="gettext", target_lang="de", locale_dir=locale_dir, max_bytes=31,
                     validation_fraction=0.25, test_fraction=0.25, tokenizer="byte",
                     max_src_len=32, max_tgt_len=32, eval_splits=["validation"]),
        **changes})
    task = tasks.get_task("seq2seq")(config)
    task.validate()
    return task


def test_seq2seq_task_batches_gettext_pairs(locale_dir):
    """config.data.dataset='gettext' feeds the seq2seq task: byte batches of the kept pairs;
    its keys are declared (a typo is named with its fix) and checked before any compile."""
    write_mo(os.path.join(locale_dir, "de", "LC_MESSAGES", "more.mo"),
             {f"Open window {i}": f"Fenster {i} öffnen" for i in range(40)})
    task = _gettext_task(locale_dir)
    pairs = {s: t for name in gt.SPLITS for s, t in task.pairs(name)}
    assert len(pairs) == len(KEPT) + 40 and pairs["Open window 7"] == "Fenster 7 öffnen"
    batch = next(iter(task.train_iterator(seed=0, process_index=0, process_count=1)))
    assert batch["inputs"].shape == batch["targets"].shape == (16, 32)
    row = list(batch["inputs"][0])
    source = task.tokenizer.decode(row[:row.index(2)])
    assert task.tokenizer.decode_batch(batch["targets"][:1]) == [pairs[source]]
    val = sum(int(b["mask"].sum()) for b in task.eval_iterator(
        "validation", process_index=0, process_count=1))
    assert val == len(task.pairs("validation")) > 0

    with pytest.raises(ValueError, match="'target_lnag' \\(did you mean 'target_lang'"):
        _gettext_task(locale_dir, **{"data.target_lnag": "fr"})
    with pytest.raises(ValueError, match="source_lang='fr'.*from English"):
        _gettext_task(locale_dir, **{"data.source_lang": "fr"})
    with pytest.raises(ValueError, match="'xx'.*de, fr"):
        _gettext_task(locale_dir, **{"data.target_lang": "xx"})
    with pytest.raises(ValueError, match="max_bytes=40 does not fit"):
        _gettext_task(locale_dir, **{"data.max_bytes": 40})


@pytest.mark.skipif(not SYSTEM_DE, reason="no German gettext catalogues on this image")
def test_shipped_config_builds_its_task_and_model():
    """configs/transformer_gettext_de.py constructs its task, evaluators and model (shapes only;
    no catalogue is read)."""
    import importlib.util

    from attn_jax.eval.evaluators import build_evaluators

    path = os.path.join(ROOT, "configs", "transformer_gettext_de.py")
    spec = importlib.util.spec_from_file_location("transformer_gettext_de", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__ and "python train.py" in module.__doc__
    config = module.get_config()
    task = tasks.get_task(config.task)(config)
    task.validate()
    build_evaluators(config, task)
    assert not task._pairs  # validation did not read the catalogues
    params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) > 0
