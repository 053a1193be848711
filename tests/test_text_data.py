"""Tests for attn_jax.data.tokenizers and the text data re-exported by attn_jax.data.text (all
offline, small)."""

import datetime
import math
import os

import babel.dates
import numpy as np
import pytest
import sacrebleu
from babel import Locale

from attn_jax.data import text
from attn_jax.data.datasets import dates, tfds_text
from attn_jax.data.tokenizers import (BOS_ID, EOS_ID, PAD_ID, ByteTokenizer,
                                      SentencePieceTokenizer, make_tokenizer, pad_batch)

UNICODE_SAMPLES = ["", "hello", "2026年11月21日", "Grüße, ça va? ½ ÿ", "한국어 테스트", "😀 a\u0301",
                   "  two  spaces\tand tab\n", "ру́сский текст", "\x00 nul"]


@pytest.fixture(scope="module")
def date_corpus():
    return text.generate_dates(600, seed=0)


@pytest.fixture(scope="module")
def spm_dates(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("spm") / "spm")
    # Five locales keep the alphabet (87 characters) well under the small vocabulary.
    pairs = text.generate_dates(600, seed=0, locales=("en_GB", "de", "fr", "ja", "ru"))
    texts = [s for pair in pairs for s in pair]
    return SentencePieceTokenizer.train(texts, 200, prefix), texts, prefix


# --- tokenizers --------------------------------------------------------------------------------

def test_byte_tokenizer_round_trip_and_specials():
    """Reference: Python's own UTF-8 codec (str.encode / bytes.decode with errors='replace')."""
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 0, 1, 2)
    for s in UNICODE_SAMPLES:
        ids = tok.encode(s)
        assert ids == [b + 3 for b in s.encode("utf-8")]
        assert min(ids, default=3) >= 3 and max(ids, default=3) < 259
        assert tok.decode(ids) == s
        assert tok.decode([BOS_ID] + ids + [EOS_ID, PAD_ID, PAD_ID]) == s
    bad = [0xE6 + 3, 0x97 + 3, ord("x") + 3]  # a truncated 3-byte CJK sequence, then 'x'
    assert tok.decode(bad) == b"\xe6\x97x".decode("utf-8", errors="replace")
    with pytest.raises(ValueError, match="259"):
        tok.decode([5, 259])


def test_encode_batch_pads_truncates_and_decode_batch_stops_at_eos():
    """Reference: the layout [bos] + utf8 bytes + 3 + [eos] written out by hand."""
    tok = ByteTokenizer()
    batch = tok.encode_batch(["ab", "abcdef"], 5, add_bos=True)
    assert batch.dtype == np.int32 and batch.shape == (2, 5)
    a, b = ord("a") + 3, ord("b") + 3
    np.testing.assert_array_equal(batch[0], [BOS_ID, a, b, EOS_ID, PAD_ID])
    np.testing.assert_array_equal(batch[1], [BOS_ID, a, b, a + 2, a + 3])  # cut: eos dropped
    assert tok.decode_batch(np.array([[a, b, EOS_ID, a, 0], [b, 0, 0, 0, 0]])) == ["ab", "b"]
    np.testing.assert_array_equal(pad_batch([[7], []], 2), [[7, 0], [0, 0]])
    with pytest.raises(ValueError, match="length"):
        pad_batch([[1]], 0)


def test_sentencepiece_trains_round_trips_and_reloads(spm_dates):
    """Reference: the training text itself (exact round trip) and a second, independent training
    run (SentencePiece with one thread must give a byte-identical model)."""
    tok, texts, prefix = spm_dates
    assert tok.vocab_size == 200
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.id_to_piece(4) == "\n"
    assert all(tok.decode(tok.encode(s)) == s for s in texts)
    multi = texts[0] + "\n" + texts[1] + "\n"
    assert tok.decode(tok.encode(multi)) == multi
    assert os.path.exists(prefix + ".model") and os.path.exists(prefix + ".vocab")
    loaded = SentencePieceTokenizer.load(prefix + ".model")
    assert loaded.model_proto == tok.model_proto
    assert loaded.encode_many(texts[:50]) == [tok.encode(s) for s in texts[:50]]
    again = SentencePieceTokenizer.train(texts, 200, None)
    assert again.model_proto == tok.model_proto
    bpe = SentencePieceTokenizer.train(texts, 150, None, model_type="bpe")
    assert all(bpe.decode(bpe.encode(s)) == s for s in texts[:100])
    with pytest.raises(ValueError, match="vocab_size=5000"):
        SentencePieceTokenizer.train(texts[:20], 5000, None)


def test_make_tokenizer_reuses_workdir_model(tmp_path, spm_dates):
    """Reference: the model file written by the first call; the second must not read its texts."""
    _, texts, _ = spm_dates
    first = make_tokenizer("sentencepiece", str(tmp_path), texts, 120)
    assert os.path.exists(tmp_path / "spm.model")

    def must_not_be_read():
        raise AssertionError("make_tokenizer retrained instead of loading spm.model")
        yield ""

    second = make_tokenizer("sentencepiece", str(tmp_path), must_not_be_read(), 999)
    assert second.model_proto == first.model_proto and second.vocab_size == 120
    assert isinstance(make_tokenizer("byte"), ByteTokenizer)
    with pytest.raises(ValueError, match="wordpiece"):
        make_tokenizer("wordpiece", str(tmp_path))
    with pytest.raises(ValueError, match="vocab_size"):
        make_tokenizer("sentencepiece", str(tmp_path / "empty"), texts)


# --- dates -------------------------------------------------------------------------------------

def test_render_date_matches_babel():
    """Reference: babel.dates.format_date directly (CLDR data), and the examples in the issue."""
    d = datetime.date(2026, 11, 21)
    assert text.render_date(d, "de", "long") == "21. November 2026"
    assert text.render_date(d, "ja", "long") == "2026年11月21日"
    assert text.render_date(d, "en", "medium") == "Nov 21, 2026"
    for locale in ("de", "fr", "ru", "zh", "ko", "es", "hu"):
        for fmt in ("medium", "long", "full"):
            expected = babel.dates.format_date(d, fmt, locale=locale)
            assert text.render_date(d, locale, fmt) == expected
    # 2-digit years are widened; everything else is the locale's own pattern.
    assert babel.dates.format_date(d, "short", locale="de") == "21.11.26"
    assert text.render_date(d, "de", "short") == "21.11.2026"
    assert text.render_date(d, "en", "short") == "11/21/2026"
    with pytest.raises(ValueError, match="xx_YY"):
        text.render_date(d, "xx_YY", "long")
    with pytest.raises(ValueError, match="day"):
        text.date_pattern("de", "yMMM")


def test_generated_dates_are_correct(date_corpus):
    """Reference: datetime.date.fromisoformat for the target, and babel re-rendering that date in
    every (locale, pattern): the source must be one of those renderings."""
    patterns = [(babel.dates.parse_pattern(p.pattern), Locale.parse(p.locale))
                for p in text.date_patterns()]
    assert len(date_corpus) == 600
    for source, target in date_corpus[:150]:
        day = datetime.date.fromisoformat(target)
        assert target == day.isoformat() and 1900 <= day.year <= 2099
        assert str(day.year) in source  # babel writes Latin digits in all these locales
        assert source in {pat.apply(day, loc) for pat, loc in patterns}
    assert {len(s) for s, _ in date_corpus} != {len(date_corpus[0][0])}  # varied formats
    assert text.generate_dates(600, seed=0) == date_corpus
    assert text.generate_dates(600, seed=1) != date_corpus


def test_date_patterns_exclude_ambiguity_and_sources_determine_dates():
    """Reference: the task is well posed only if no source string is written for two dates;
    checked exhaustively over every day of a leap year and every pattern."""
    ps = text.date_patterns()
    assert ("en", "short", "M/d/y") not in ps
    assert len({p.locale for p in ps}) == len(text.DATE_LOCALES)
    assert not dates._is_ambiguous("d.M.y") and not dates._is_ambiguous("y/MM/dd")
    assert dates._is_ambiguous("M/d/y") and not dates._is_ambiguous("MMM d, y")
    compiled = [(babel.dates.parse_pattern(p.pattern), Locale.parse(p.locale)) for p in ps]
    seen: dict[str, datetime.date] = {}
    for k in range(366):
        day = datetime.date(2024, 1, 1) + datetime.timedelta(days=k)
        for pat, loc in compiled:
            assert seen.setdefault(pat.apply(day, loc), day) == day


def test_date_splits_disjoint_by_date_and_deterministic():
    """Reference: set intersection of the target dates; equality across calls."""
    splits = text.date_splits(800, 150, 120, seed=3, locales=("en_GB", "de", "ja", "ko"))
    assert {k: len(v) for k, v in splits.items()} == {"train": 800, "validation": 150,
                                                      "test": 120}
    dates = {k: {t for _, t in v} for k, v in splits.items()}
    assert len(dates["validation"]) == 150 and len(dates["test"]) == 120  # each held-out day once
    assert not dates["train"] & dates["validation"]
    assert not dates["train"] & dates["test"]
    assert not dates["validation"] & dates["test"]
    assert splits == text.date_splits(800, 150, 120, seed=3, locales=("en_GB", "de", "ja", "ko"))
    other = text.date_splits(10, 150, 120, seed=3, locales=("en_GB", "de", "ja", "ko"))
    assert other["test"] == splits["test"] and other["validation"] == splits["validation"]
    assert text.date_splits(10, 150, 120, seed=4)["test"] != splits["test"]
    with pytest.raises(ValueError, match="split sizes"):
        text.date_splits(1, 365, 1, start_year=2023, end_year=2023)


def test_dates_metrics_against_sacrebleu():
    """Reference: sacrebleu.corpus_bleu called directly; exact match counted by hand."""
    refs = ["2026-11-21", "1999-01-02", "2000-02-29", "1900-12-31"]
    preds = ["2026-11-21", "1999-01-03", " 2000-02-29 ", "2900-12-31"]
    m = text.dates_metrics(preds, refs)
    assert m["exact_match"] == 0.5
    np.testing.assert_allclose(m["bleu"], sacrebleu.corpus_bleu(preds, [refs]).score)
    assert 0 < m["bleu"] < 100
    np.testing.assert_allclose(text.dates_metrics(refs, refs)["bleu"], 100.0)
    hyp, ref = ["the cat sat on the mat today"], ["the cat sat on a mat today"]
    np.testing.assert_allclose(text.bleu(hyp, ref), sacrebleu.corpus_bleu(hyp, [ref]).score)
    with pytest.raises(ValueError, match="3 predictions, 4 references"):
        text.exact_match(preds[:3], refs)


def test_multi_reference_bleu_and_exact_match_against_sacrebleu():
    """Reference: sacrebleu.corpus_bleu called directly with reference streams padded by None
    (sacrebleu's convention for a variable number of references); the any-reference exact
    match counted by hand."""
    from attn_jax.eval import text_metrics

    preds = ["a bag to the left of two shirts", "there is a coat", "two boots and a dress",
             "a sandal"]
    reference_sets = [["two shirts to the right of a bag", "a bag to the left of two shirts",
                       "a bag and two shirts"],
                      ["a coat", "there is a coat"],
                      ["a dress and two boots", "there are two boots and a dress",
                       "two boots and a dress", "a dress above two boots"],
                      ["a sneaker"]]
    streams = [[r[j] if j < len(r) else None for r in reference_sets] for j in range(4)]
    expected = sacrebleu.corpus_bleu(preds, streams).score
    np.testing.assert_allclose(text_metrics.bleu(preds, reference_sets), expected)
    assert text_metrics.reference_streams(reference_sets) == streams
    # Several references raise the score over the first reference alone (the hypotheses match
    # other references), and a one-reference list per sentence is the single-reference BLEU.
    first = [r[0] for r in reference_sets]
    assert text_metrics.bleu(preds, first) < expected
    np.testing.assert_allclose(text_metrics.bleu(preds, [[r] for r in first]),
                               sacrebleu.corpus_bleu(preds, [first]).score)
    assert text_metrics.exact_match_any(preds, reference_sets) == 0.75
    assert text_metrics.exact_match(preds, first) == 0.0
    with pytest.raises(ValueError, match="non-empty list of reference strings"):
        text_metrics.bleu(preds, reference_sets[:3] + [[]])


# --- language modelling ------------------------------------------------------------------------

def test_stdlib_corpus_split_by_file():
    """Reference: the split rule `in_validation` applied file by file; set algebra on names."""
    a, b = text.stdlib_corpus(), text.stdlib_corpus()
    assert a == b
    train, val = set(a["train"].names), set(a["validation"].names)
    assert train and val and not train & val
    assert "os.py" in train | val and "json/decoder.py" in train | val
    assert not any(set(n.split("/")[:-1]) & text.STDLIB_EXCLUDED_DIRS for n in train | val)
    assert all(text.in_validation(n, 0, 0.05) for n in val)
    assert not any(text.in_validation(n, 0, 0.05) for n in train)
    assert 0.02 < len(val) / (len(train) + len(val)) < 0.1
    assert a["validation"].num_bytes > 100_000
    assert a["train"].num_bytes > 10 * a["validation"].num_bytes
    assert set(text.stdlib_corpus(seed=1)["validation"].names) != val


def test_bits_per_byte_and_lm_metrics_by_hand():
    """Reference: hand arithmetic, and a uniform model over 256 bytes, which costs exactly
    8 bits per byte, its NLL summed with NumPy over the stream's targets."""
    assert text.bits_per_byte(12 * math.log(2), 3) == pytest.approx(4.0)
    m = text.lm_metrics(total_nll_nats=20.0, num_tokens=10, num_bytes=40)
    assert m["loss"] == 2.0 and m["perplexity"] == pytest.approx(math.exp(2.0))
    assert m["bits_per_byte"] == pytest.approx(20.0 / (math.log(2) * 40))
    docs = ["x = 1\n", "print('héllo 世界')\n"]
    stream = text.token_stream(docs, ByteTokenizer())
    targets = stream[1:]
    assert len(targets) == text.lm_target_bytes(docs)  # one byte token per byte, eos counted
    nll = len(targets) * -np.log(1 / 256)
    assert text.bits_per_byte(nll, text.lm_target_bytes(docs)) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="num_bytes"):
        text.bits_per_byte(1.0, 0)


def test_stream_and_eval_windows_cover_every_byte_once(spm_dates):
    """Reference: the documents themselves: the targets of eval_windows, pad removed, are
    stream[1:], and decode back (per document) to exactly lm_target_bytes(docs) bytes."""
    _, texts, _ = spm_dates
    docs = ["\n".join(texts[i:i + 7]) + "\n" for i in range(0, 140, 7)]
    spm = SentencePieceTokenizer.train(docs, 400, None, byte_fallback=True,
                                       character_coverage=0.99)
    for tok in (ByteTokenizer(), spm):
        stream = text.token_stream(docs, tok)
        assert stream.dtype == np.int32 and stream[0] == EOS_ID
        assert (stream == EOS_ID).sum() == len(docs) + 1
        for seq_len in (7, 64):
            w = text.eval_windows(stream, seq_len)
            assert w.shape == (-(-(len(stream) - 1) // seq_len), seq_len + 1)
            np.testing.assert_array_equal(w[1:, 0], w[:-1, -1])  # windows overlap by one token
            t = w[:, 1:].reshape(-1)
            np.testing.assert_array_equal(t[t != PAD_ID], stream[1:])
        pieces = np.split(stream[1:], np.flatnonzero(stream[1:] == EOS_ID) + 1)[:-1]
        decoded = [tok.decode(p) for p in pieces]
        assert decoded == docs
        assert sum(len(d.encode()) + 1 for d in decoded) == text.lm_target_bytes(docs)


def test_random_windows_are_stream_slices_and_match_train_dataset():
    """Reference: NumPy slicing of the stream at the offsets; the dataset's global batch j must
    hold windows j*B .. j*B+B-1 of random_windows."""
    stream = np.arange(3, 1003, dtype=np.int32)
    w = text.random_windows(stream, 16, 40, seed=5)
    assert w.shape == (40, 17) and w.dtype == np.int32
    np.testing.assert_array_equal(w, w[:, :1] + np.arange(17))  # contiguous slices
    assert len(set(w[:, 0].tolist())) > 30 and w[:, 0].max() <= stream[-17]
    ds = text.lm_train_dataset(stream, seq_len=16, global_batch_size=8, seed=5,
                               process_index=0, process_count=1)
    it = text.batch_iterator(ds)
    for j in range(3):
        batch = next(it)
        np.testing.assert_array_equal(batch["inputs"], w[8 * j:8 * j + 8, :-1])
        np.testing.assert_array_equal(batch["targets"], w[8 * j:8 * j + 8, 1:])
    halves = [next(iter(text.lm_train_dataset(stream, seq_len=16, global_batch_size=8, seed=5,
                                              process_index=p, process_count=2)))
              for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["targets"] for h in halves]), w[:8, 1:])
    assert not np.array_equal(text.random_windows(stream, 16, 40, seed=6), w)
    with pytest.raises(ValueError, match="seq_len"):
        text.random_windows(stream, 1000, 1, 0)


# --- grain datasets ----------------------------------------------------------------------------

def _take(it, n):
    return [next(it) for _ in range(n)]


def test_seq2seq_iterator_state_resumes_identically():
    """Reference: the uninterrupted iterator; a fresh one restored from get_state() must yield the
    same batches (grain's checkpoint contract, used by the trainer)."""
    pairs = text.generate_dates(50, seed=1)
    tok = ByteTokenizer()
    ds = text.seq2seq_dataset(pairs, tok, tok, global_batch_size=8, max_src_len=48,
                              max_tgt_len=12, seed=2, process_index=0, process_count=1)
    it = text.batch_iterator(ds)
    _take(it, 9)  # past the first epoch (50 pairs), so the epoch reshuffle is covered
    state = it.get_state()
    expected = _take(it, 4)
    resumed = text.batch_iterator(ds, prefetch=0)
    resumed.set_state(state)
    for a, b in zip(expected, _take(resumed, 4)):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
        np.testing.assert_array_equal(a["targets"], b["targets"])
    batch = expected[0]
    assert batch["inputs"].shape == (8, 48) and batch["targets"].shape == (8, 12)
    assert batch["inputs"].dtype == np.int32 and batch["mask"].dtype == np.float32
    assert batch["mask"].all()  # training batches have no filler rows
    refs = dict((t, s) for s, t in pairs)
    for s, t in zip(tok.decode_batch(batch["inputs"]), tok.decode_batch(batch["targets"])):
        assert refs[t] == s
    assert all(EOS_ID in row for row in batch["targets"])  # eos appended, not cut at 12


def test_per_host_slices_union_is_global_batch():
    """Reference: the single-process global batch; process p must hold its rows
    [p * B/P, (p + 1) * B/P), for training (shuffled) and evaluation (padded last batch)."""
    pairs = text.generate_dates(30, seed=4)
    tok = ByteTokenizer()
    kw = dict(global_batch_size=8, max_src_len=48, max_tgt_len=12, seed=9)
    for train in (True, False):
        whole = list(text.seq2seq_dataset(pairs, tok, tok, train=train, process_index=0,
                                          process_count=1, **kw)[:4])
        parts = [list(text.seq2seq_dataset(pairs, tok, tok, train=train, process_index=p,
                                           process_count=4, **kw)[:4]) for p in range(4)]
        for j, glob in enumerate(whole):
            for key in ("inputs", "targets"):
                np.testing.assert_array_equal(
                    np.concatenate([parts[p][j][key] for p in range(4)]), glob[key])
    # Evaluation: 30 pairs in order over 4 global batches; the 2 filler rows are all pad.
    evals = np.concatenate([b["targets"] for b in whole])
    assert evals.shape == (32, 12) and not evals[30:].any()
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in whole]),
                                  np.arange(32) < 30)
    assert tok.decode_batch(evals[:30]) == [t for _, t in pairs]
    with pytest.raises(ValueError, match="global_batch_size=6"):
        text.host_rows(6, 0, 4)


def test_seq2seq_reads_only_this_process_rows():
    """Reference: a counting random-access source (as tfds.data_source is): process 1 of 4 must
    read exactly its 2 rows of each 8-row global batch, via the lazy mapping of load_wmt14."""
    pairs = text.generate_dates(16, seed=0)
    reads = []

    class Counting(list):
        def __getitem__(self, i):
            reads.append(i)
            return super().__getitem__(i)

    lazy = tfds_text._MappedSequence(Counting({"en": s, "de": t} for s, t in pairs),
                                lambda ex: (ex["en"], ex["de"]))
    tok = ByteTokenizer()
    batch = text.seq2seq_dataset(lazy, tok, tok, global_batch_size=8, max_src_len=48,
                                 max_tgt_len=12, train=False, process_index=1,
                                 process_count=4)[1]
    assert reads == [10, 11]
    assert tok.decode_batch(batch["targets"]) == [pairs[10][1], pairs[11][1]]


def test_lm_eval_and_sentence_datasets():
    """Reference: eval_windows itself, and [eos] + bytes + [eos] written by hand for a sentence."""
    stream = np.arange(3, 103, dtype=np.int32)
    w = text.eval_windows(stream, 10)
    batches = list(text.lm_eval_dataset(stream, seq_len=10, global_batch_size=4,
                                        process_index=0, process_count=1))
    assert len(batches) == 3  # 10 windows -> 4 + 4 + (2 + 2 all-pad rows)
    got = np.concatenate([b["targets"] for b in batches])
    np.testing.assert_array_equal(got[:10], w[:, 1:])
    assert not got[10:].any()
    np.testing.assert_array_equal(batches[-1]["mask"], [1, 1, 0, 0])
    tok = ByteTokenizer()
    ds = text.sentence_lm_dataset(["ab", "a much longer sentence"], tok, seq_len=5,
                                  global_batch_size=2, train=False, process_index=0,
                                  process_count=1)
    b = ds[0]
    a_, b_ = ord("a") + 3, ord("b") + 3
    np.testing.assert_array_equal(b["inputs"][0], [EOS_ID, a_, b_, EOS_ID, 0])
    np.testing.assert_array_equal(b["targets"][0], [a_, b_, EOS_ID, 0, 0])
    assert b["inputs"].shape == b["targets"].shape == (2, 5)


# --- the re-exports of attn_jax.data.text ------------------------------------------------------

# The public names of attn_jax/data/text.py before it was split (commit 0db789b).
OLD_TEXT_NAMES = {
    "DATE_LOCALES", "DATE_FORMATS", "DatePattern", "date_pattern", "date_patterns", "render_date",
    "generate_dates", "date_splits", "exact_match", "bleu", "dates_metrics",
    "STDLIB_EXCLUDED_DIRS", "TextSplit", "in_validation", "stdlib_corpus", "token_stream",
    "lm_target_bytes", "bits_per_byte", "lm_metrics", "window_offsets", "random_windows",
    "eval_windows", "Batch", "host_rows", "batch_iterator", "seq2seq_dataset",
    "lm_train_dataset", "lm_eval_dataset", "sentence_lm_dataset", "DatasetNotPreparedError",
    "tfds_source", "load_wmt14", "load_lm1b"}


def test_text_reexports_every_old_name_from_its_new_home():
    """Reference: the list of text.py's public names at 0db789b; each must be the very object
    one of the new modules holds (no copies left in text.py)."""
    from attn_jax.data import batcher, lm_windows, seq2seq
    from attn_jax.data.datasets import stdlib
    from attn_jax.eval import text_metrics

    homes = (batcher, dates, stdlib, tfds_text, lm_windows, seq2seq, text_metrics)
    assert set(text.__all__) == OLD_TEXT_NAMES
    for name in OLD_TEXT_NAMES:
        assert any(vars(m).get(name) is getattr(text, name) for m in homes), name
    assert text.exact_match is text_metrics.exact_match and text.host_rows is batcher.host_rows


# --- online sources ----------------------------------------------------------------------------

def test_online_loaders_name_missing_dataset(tmp_path):
    """Reference: the message contract: dataset name, data_dir and the preparing command."""
    with pytest.raises(text.DatasetNotPreparedError, match="wmt14_translate/de-en") as e:
        text.load_wmt14("train", data_dir=str(tmp_path))
    assert "tfds build wmt14_translate/de-en --file_format=array_record" in str(e.value)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="'lm1b'"):
        text.load_lm1b("test", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="newstest"):
        text.load_wmt14("newstest2014", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="fr"):
        text.load_wmt14("train", data_dir=str(tmp_path), source_lang="fr")
