"""Regression pins: SHA-1 digests of batches of every input pipeline, from before the one batcher.

The values in DIGESTS and STATES were produced by the pre-refactor implementation at commit
0db789b (two batchers: `_index_batches` / `_FixedSizeBatcher` / `_VariableSizeBatcher` in
attn_jax/data/pipeline.py, `_batched` / `lm_train_dataset` in attn_jax/data/text.py), by running
this file as a script on that commit:

    PYTHONPATH=. python tests/test_batch_digests.py  # prints DIGESTS, STATES, STDLIB_DIGESTS

It only calls the public API that both implementations have (`data.make_dataset`,
`data.make_iterator`, `text.seq2seq_dataset`, ... through `from attn_jax.data import text`). A batch
digest is SHA-1 over its keys in sorted order, each key's name, dtype, shape and C-order bytes
(`batch_digest`); a case's digest is SHA-1 over the digests of its batches at the listed steps, for
each process layout (process_index, process_count). Resume cases advance an iterator, pin its
`get_state()` and the digests of the next batches of a fresh iterator given that state. On the
same cases, host batches concatenated over 4 processes must equal the single-process batch.
The values hold for the environment they were measured in (NumPy 2.4.6, Pillow 13.0.0, babel
2.19.0, grain 0.2.18, CPython 3.11.7): a new NumPy bit generator, PIL resampler or CLDR release
changes them without any change here; recompute them then on the commit before a data change.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pathlib
import platform
import tempfile
from collections.abc import Callable

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attn_jax import data
from attn_jax.data import text
from attn_jax.data.tokenizers import ByteTokenizer

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
HAS_FASHION = (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()
LAYOUTS = ((0, 1), (1, 2), (3, 4))  # (process_index, process_count)
# Fixed documents for a corpus that does not depend on the Python version (the real stdlib does).
CORPUS_FILES = {f"pkg{i % 3}/mod{i}.py": "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}  # é\n"
                                                  for j in range(3 + i % 5)) for i in range(24)}
# CPython 3.11.7's stdlib with the defaults of stdlib_corpus (its docstring gives these sizes).
STDLIB_3_11_7 = {"train": 10_746_991, "validation": 614_639}

tfds.disable_progress_bar()


def batch_digest(batch: dict[str, np.ndarray]) -> str:
    """SHA-1 of a batch: for each key in sorted order, its name, dtype, shape and bytes."""
    h = hashlib.sha1()
    for key in sorted(batch):
        value = np.ascontiguousarray(batch[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def steps_digest(batches) -> str:
    return hashlib.sha1("".join(batch_digest(b) for b in batches).encode()).hexdigest()


# --- the pipelines -----------------------------------------------------------------------------

def _dates():
    return text.date_splits(200, 40, 30, seed=0, locales=("en_GB", "de", "ja", "ru"))


@functools.lru_cache(maxsize=2)
def _corpus_stream(split: str) -> np.ndarray:
    """Byte-token stream of a split of stdlib_corpus over the files CORPUS_FILES."""
    with tempfile.TemporaryDirectory() as root:
        for name, body in CORPUS_FILES.items():
            path = pathlib.Path(root, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body, encoding="utf-8")
        corpus = text.stdlib_corpus(validation_fraction=0.25, seed=0, root=root)
    return text.token_stream(corpus[split].texts, ByteTokenizer())


def _sentences() -> list[str]:
    return [s for s, _ in text.generate_dates(44, seed=5)]


def _streamed(**kwargs):
    """make_dataset(**kwargs) as if the split did not fit in memory: read per batch."""
    saved, data.sources.MAX_IN_MEMORY_BYTES = data.sources.MAX_IN_MEMORY_BYTES, 0
    try:
        return data.make_dataset(**kwargs)
    finally:
        data.sources.MAX_IN_MEMORY_BYTES = saved


def _varsize(data_dir: str, **kwargs):
    """test_data's PNG images of varying size (5 per split), built on first use."""
    import test_data  # registers the tfds builder attn_jax_varsize

    builder = tfds.builder("attn_jax_varsize", data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
    assert test_data.VARSIZE_SHAPES
    return data.make_dataset("attn_jax_varsize", data_dir=data_dir, **kwargs)


def cases(data_dir: str) -> dict[str, tuple[Callable[[int, int], object], list[int]]]:
    """name -> (dataset(process_index, process_count), steps whose batches are digested)."""
    tok = ByteTokenizer()
    images = dict(data_dir=data_dir)
    out = {
        "digits_train_augmented_streamed": (lambda p, n: _streamed(
            name="digits_sklearn", split="train", global_batch_size=96, train=True, seed=3,
            crop_padding=2, flip=True, image_size=10, process_index=p, process_count=n,
            **images), [0, 15]),
        "digits_eval_streamed": (lambda p, n: _streamed(
            name="digits_sklearn", split="test", global_batch_size=96, train=False,
            process_index=p, process_count=n, **images), [3]),
        # Inception crop + flip (train), centre crop (eval); 5 images, batch 4.
        "varsize_train": (lambda p, n: _varsize(
            data_dir, split="train", global_batch_size=4, train=True, seed=2, image_size=16,
            process_index=p, process_count=n), [0, 1, 2]),
        "varsize_eval": (lambda p, n: _varsize(
            data_dir, split="test", global_batch_size=4, train=False, image_size=16,
            process_index=p, process_count=n), None),
        # 1442 train digits, batch 96: 15 steps per epoch (steps 14 | 15 cross an epoch).
        "digits_train": (lambda p, n: data.make_dataset(
            "digits_sklearn", "train", global_batch_size=96, train=True, seed=3, process_index=p,
            process_count=n, **images), [0, 1, 14, 15, 31]),
        "digits_train_augmented": (lambda p, n: data.make_dataset(
            "digits_sklearn", "train", global_batch_size=96, train=True, seed=3, crop_padding=2,
            flip=True, process_index=p, process_count=n, **images), [0, 1, 14, 15, 31]),
        "digits_train_resized_minus_one_one": (lambda p, n: data.make_dataset(
            "digits_sklearn", "train", global_batch_size=96, train=True, seed=1, image_size=12,
            crop_padding=1, flip=True, normalize="minus_one_one", process_index=p,
            process_count=n, **images), [0, 16]),
        # 355 test digits: 4 steps, the last with 67 real rows.
        "digits_eval": (lambda p, n: data.make_dataset(
            "digits_sklearn", "test", global_batch_size=96, train=False, process_index=p,
            process_count=n, **images), [0, 1, 2, 3]),
        # 200 train pairs, batch 16: 12.5 steps per epoch (step 12 straddles two epochs).
        "dates_train": (lambda p, n: text.seq2seq_dataset(
            _dates()["train"], tok, tok, global_batch_size=16, max_src_len=48, max_tgt_len=12,
            seed=2, train=True, process_index=p, process_count=n), [0, 1, 12, 13, 25]),
        "dates_eval": (lambda p, n: text.seq2seq_dataset(
            _dates()["validation"], tok, tok, global_batch_size=16, max_src_len=48,
            max_tgt_len=12, train=False, process_index=p, process_count=n), [0, 1, 2]),
        "corpus_lm_train": (lambda p, n: text.lm_train_dataset(
            _corpus_stream("train"), seq_len=32, global_batch_size=8, seed=1, process_index=p,
            process_count=n), [0, 1, 1000]),
        "corpus_lm_eval": (lambda p, n: text.lm_eval_dataset(
            _corpus_stream("validation"), seq_len=32, global_batch_size=8, process_index=p,
            process_count=n), None),
        # 44 sentences, batch 8: 5.5 steps per epoch.
        "sentence_lm_train": (lambda p, n: text.sentence_lm_dataset(
            _sentences(), tok, seq_len=16, global_batch_size=8, seed=4, train=True,
            process_index=p, process_count=n), [0, 5, 6, 11]),
        "sentence_lm_eval": (lambda p, n: text.sentence_lm_dataset(
            _sentences(), tok, seq_len=16, global_batch_size=8, train=False, process_index=p,
            process_count=n), None),
    }
    if HAS_FASHION:
        # 60000 train images, batch 128: 468 steps per epoch; 10000 test: 79 steps.
        out |= {
            "fashion_train": (lambda p, n: data.make_dataset(
                "fashion_mnist_idx", "train", global_batch_size=128, train=True, seed=0,
                process_index=p, process_count=n, **images), [0, 1, 467, 468]),
            "fashion_train_augmented": (lambda p, n: data.make_dataset(
                "fashion_mnist_idx", "train", global_batch_size=128, train=True, seed=0,
                crop_padding=2, flip=True, process_index=p, process_count=n, **images),
                [0, 1, 467, 468]),
            "fashion_eval": (lambda p, n: data.make_dataset(
                "fashion_mnist_idx", "test", global_batch_size=128, train=False,
                process_index=p, process_count=n, **images), [0, 1, 78]),
        }
    return out


def case_digests(data_dir: str, name: str) -> dict[str, str]:
    """'p/n' -> digest of case `name`'s batches at its steps (all steps when None)."""
    make, steps = cases(data_dir)[name]
    out = {}
    for p, n in LAYOUTS:
        ds = make(p, n)
        out[f"{p}/{n}"] = steps_digest(ds[s] for s in (range(len(ds)) if steps is None else steps))
    return out


def resume_cases(data_dir: str) -> dict[str, tuple[Callable[[], object], int]]:
    """name -> (fresh checkpointable iterator, steps taken before get_state)."""
    tok = ByteTokenizer()
    return {
        "digits_train_augmented": (lambda: data.make_iterator(
            "digits_sklearn", "train", global_batch_size=96, train=True, seed=3, crop_padding=2,
            flip=True, process_index=1, process_count=2, data_dir=data_dir), 17),
        "dates_train": (lambda: text.batch_iterator(text.seq2seq_dataset(
            _dates()["train"], tok, tok, global_batch_size=16, max_src_len=48, max_tgt_len=12,
            seed=2, train=True, process_index=1, process_count=2)), 14),
        "corpus_lm_train": (lambda: text.batch_iterator(text.lm_train_dataset(
            _corpus_stream("train"), seq_len=32, global_batch_size=8, seed=1, process_index=0,
            process_count=2)), 5),
        "sentence_lm_eval": (lambda: text.batch_iterator(text.sentence_lm_dataset(
            _sentences(), tok, seq_len=16, global_batch_size=8, train=False, process_index=3,
            process_count=4)), 2),
    }


def resume_digest(data_dir: str, name: str) -> tuple[str, str]:
    """(json of get_state() after the case's steps, digest of the next 3 batches after
    set_state on a fresh iterator)."""
    make, k = resume_cases(data_dir)[name]
    it = make()
    for _ in range(k):
        next(it)
    state = it.get_state()
    resumed = make()
    resumed.set_state(state)
    following = []
    for _ in range(3):
        try:
            following.append(next(resumed))
        except StopIteration:
            break
    return json.dumps(state, sort_keys=True), steps_digest(following)


# --- the pinned values (commit 0db789b) --------------------------------------------------------

DIGESTS: dict[str, dict[str, str]] = {
    "corpus_lm_eval": {
        "0/1": "52ab2408cb2456fd61b9df9a14e9a0be14c948fc",
        "1/2": "951ff3dec807cf046d605962d9b5b1de46e610da",
        "3/4": "11a0d50d860380cd3683fce5a3634c553c2194f0",
    },
    "corpus_lm_train": {
        "0/1": "83498c2ba46b6722dc9a26f41f31deedfa3c79fe",
        "1/2": "9fb2d172138ddcd93463ef71ffcbe137077a9687",
        "3/4": "f7033932abd71813e5d03e3b542b7c9f67b3feed",
    },
    "dates_eval": {
        "0/1": "02c1271eeb1d4e9d93fedbd2ffc08dbe2937f024",
        "1/2": "b76847870601fe3a21fecdf8fffc727f84da2fe9",
        "3/4": "d853980870ba97e5255fc570686b003118cf767f",
    },
    "dates_train": {
        "0/1": "cad4e11a7d755019c4eb0120dab441c4349739df",
        "1/2": "218519ec60527450844c0259f801aaf4ca8b05fc",
        "3/4": "e47df83276438645ba3c13e30a4161875cd8c057",
    },
    "digits_eval": {
        "0/1": "a484032256f5f8db917c7e8c98e45258c48b114b",
        "1/2": "177e435a6eb047afa74bf8a57a8f65193b52e709",
        "3/4": "61e2934f9fe897b93c14f924ea45102259e3284e",
    },
    "digits_eval_streamed": {
        "0/1": "cac7b1e2d567c6b36fb1508c5917a9bfb6da216b",
        "1/2": "11a6f44c9fd688204b505ea844ff39cef9b508d9",
        "3/4": "aabcf1495d7b10d1129c67350024e634c626d729",
    },
    "digits_train": {
        "0/1": "5599e5c71e21a312541c26e0294fa95f0512765c",
        "1/2": "f9f0013180b1c7bfc6e3a5e01b96a3e707637bae",
        "3/4": "d000b392760d0a2f9f45869c069e3cbc8f2bec32",
    },
    "digits_train_augmented": {
        "0/1": "be768385f5c81274d495f505d345eb7034f4af6f",
        "1/2": "8c2d36b5fc28bed0b81e2b315838b0c2d092f8f6",
        "3/4": "46af158434c0d6153bd2ddffdf892bcbf2727c8f",
    },
    "digits_train_augmented_streamed": {
        "0/1": "1f7f79714cec2c7842a142329071bb81aa7ad92b",
        "1/2": "5e23795b52f86365ab2cf418254a31cf18c1ca33",
        "3/4": "6adba7feea2d5fa69f800ddbee01a9595a248eb1",
    },
    "digits_train_resized_minus_one_one": {
        "0/1": "b670d5044805554445ca657010a6bc084d81d2c2",
        "1/2": "7cc6969e268001528a0bec2e7a5c286d85f968c6",
        "3/4": "60bf65ea3fdbb892b0e1063419ddaaaef9be1b41",
    },
    "fashion_eval": {
        "0/1": "1c91fe013a29a7764f5d5bd63d93db42d1a34408",
        "1/2": "434f974e06e35fd09a57dcd7831dfcd2b298ec93",
        "3/4": "fb9c792e04f3865efcd3690c44d972653b2bf797",
    },
    "fashion_train": {
        "0/1": "c4c16c1b6a664d0041660f5c5dcc4fa31a7184a6",
        "1/2": "d3fbf82ccca4cc1b0893e2d321a12ce779aeffc9",
        "3/4": "bc8c9140274eb52faee9c2e301c178604273ab59",
    },
    "fashion_train_augmented": {
        "0/1": "9bb78d22920d160f6d4413d699f9d9d2ce54e3c6",
        "1/2": "eccbc42e210f3f84cc5e7dbfa8c25569cdf59154",
        "3/4": "b0ac8ff3bb6d6efec06ac2ca549702ce21af2328",
    },
    "sentence_lm_eval": {
        "0/1": "c6cb32cdcdeec0d8e42af12187d9b36b4b85e8f4",
        "1/2": "b1e381923cf39b1668c19206f1ab0724f09e9a27",
        "3/4": "28f00d541f11e1c31fde0249554e4c50737fe869",
    },
    "sentence_lm_train": {
        "0/1": "7e3b38966c12cbc8aed3c30227320beef41d3f8f",
        "1/2": "b8a5fd0af0bc1f387d5371b705a5542e957675b0",
        "3/4": "adcd5900da8f4baca1b9ba34839b29f20b762eb5",
    },
    "varsize_eval": {
        "0/1": "c7cdcf2f1cdaf23241c83dbad62e9bfd48ba2bd1",
        "1/2": "2bb4d4ed379f957e1d9314ddebf84839e8895bc9",
        "3/4": "79744035a832394feef574f25126c6df460d6429",
    },
    "varsize_train": {
        "0/1": "66297f582dd1661ed8df9cbc660e8d7f3f1e17fe",
        "1/2": "226d74bf715eb9dc9e24de353f49a29b19b15538",
        "3/4": "d8fa658d85806cadaa0b0008ffbe6473bb5548e7",
    },
}
STATES: dict[str, tuple[str, str]] = {
    "corpus_lm_train": ('{"next_index": 5}', "b3a0b78050028721af9ad13e29dfd28f51c69545"),
    "dates_train": ('{"next_index": 14}', "3121856f9f328e33ddf15806d9d7a73ca5390364"),
    "digits_train_augmented": ('{"next_index": 17}', "3213d373e9a8b265e068d07a927d0d6fb2fce30f"),
    "sentence_lm_eval": ('{"next_index": 2}', "fb2ca3bf668831adde943527be05bf844f311c26"),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("name", sorted(n for n in DIGESTS if not n.startswith("fashion")))
def test_batches_match_pre_refactor_digests(data_dir, name):
    """Reference: the digests of the implementation at commit 0db789b (see the module doc)."""
    assert case_digests(data_dir, name) == DIGESTS[name]


@pytest.mark.skipif(not HAS_FASHION, reason=f"Fashion-MNIST IDX files absent from {FASHION_DIR}")
@pytest.mark.parametrize("name", sorted(n for n in DIGESTS if n.startswith("fashion")))
def test_fashion_batches_match_pre_refactor_digests(data_dir, name):
    """Reference: as above, on Fashion-MNIST (train with and without crops + flips, test)."""
    assert case_digests(data_dir, name) == DIGESTS[name]


@pytest.mark.parametrize("name", sorted(STATES))
def test_resume_matches_pre_refactor(data_dir, name):
    """Reference: the pre-refactor iterator state after k steps (so old checkpoints restore) and
    the batches a fresh iterator yields after set_state(state)."""
    assert resume_digest(data_dir, name) == STATES[name]


@pytest.mark.parametrize("name", sorted(n for n in DIGESTS if HAS_FASHION or "fashion" not in n))
def test_host_batches_concatenate_to_the_single_process_batch(data_dir, name):
    """Reference: the single-process batch of each case; hosts 0..3 of 4 concatenated must equal
    it key by key at the case's steps (augmentation, filler rows and masks included)."""
    make, steps = cases(data_dir)[name]
    whole, hosts = make(0, 1), [make(p, 4) for p in range(4)]
    for s in (range(len(whole)) if steps is None else steps):
        for key, value in whole[s].items():
            np.testing.assert_array_equal(np.concatenate([h[s][key] for h in hosts]), value)


def test_real_stdlib_lm_windows_match_pre_refactor(data_dir):
    """Reference: digests of the LM windows of the real stdlib corpus (configs/lm_stdlib.py's
    data) at commit 0db789b; skipped where the stdlib is not CPython 3.11.7's."""
    corpus = text.stdlib_corpus()
    if {k: v.num_bytes for k, v in corpus.items()} != STDLIB_3_11_7:
        pytest.skip(f"stdlib of Python {platform.python_version()} differs from 3.11.7's")
    assert stdlib_digests(corpus) == STDLIB_DIGESTS


def stdlib_digests(corpus) -> dict[str, str]:
    tok = ByteTokenizer()
    train = text.token_stream(corpus["train"].texts, tok)
    val = text.token_stream(corpus["validation"].texts, tok)
    out = {}
    for p, n in ((0, 1), (1, 2)):
        tr = text.lm_train_dataset(train, seq_len=256, global_batch_size=32, seed=0,
                                   process_index=p, process_count=n)
        ev = text.lm_eval_dataset(val, seq_len=256, global_batch_size=32, process_index=p,
                                  process_count=n)
        out[f"train {p}/{n}"] = steps_digest(tr[s] for s in (0, 1, 1999))
        out[f"eval {p}/{n}"] = steps_digest(ev[s] for s in (0, 1, len(ev) - 1))
    return out


STDLIB_DIGESTS: dict[str, str] = {
    "train 0/1": "83799a335008eb1c1e0fe0078f4c4dd140a3540e",
    "eval 0/1": "9297c12ce35099aac9293445d4d9ee2fa73205a8",
    "train 1/2": "040e519e248cd48e56438a05c12ffc346ac84a4d",
    "eval 1/2": "063224de4fd330f151f9c60f93add039e815209d",
}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as root:
        digests = {name: case_digests(root, name) for name in cases(root)}
        states = {name: resume_digest(root, name) for name in resume_cases(root)}
    print("DIGESTS = " + json.dumps(digests, indent=4, sort_keys=True))
    print("STATES = " + json.dumps(states, indent=4, sort_keys=True))
    print("STDLIB_DIGESTS = " + json.dumps(stdlib_digests(text.stdlib_corpus()), indent=4))
