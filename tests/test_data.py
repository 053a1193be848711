"""Tests of attn_jax.data: offline tfds builders, the catalog, transforms and grain pipelines.

Pipeline behaviour is checked on a small synthetic tfds dataset whose images encode their own
example index, so every batch can be traced back to the examples it holds.
"""

import gzip
import io
import os
import pathlib
import re
import struct
import subprocess
import sys

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from attn_jax import data
from attn_jax.data import transforms
from attn_jax.data.datasets import fashion_mnist
from attn_jax.data.datasets.digits import digits_test_mask

FASHION_DIR = pathlib.Path(fashion_mnist.DEFAULT_FASHION_MNIST_DIR)
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST IDX files absent from {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
tfds.disable_progress_bar()


# --- synthetic stock-style tfds datasets (registered, so they take the `tfds.builder` path) ---

INDEXED_SIZES = {"train": 1000, "test": 250}


class AttnJaxIndexed(tfds.core.GeneratorBasedBuilder):
    """8x8x3 images; pixel (0, 0) holds the example index (channel 0: low byte, 1: high byte)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8, encoding="bytes"),
            "label": tfds.features.ClassLabel(num_classes=10)}), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split) for split in INDEXED_SIZES}

    def _generate_examples(self, split):
        for i, image in enumerate(indexed_images(split)):
            yield i, {"image": image, "label": i % 10}


def indexed_images(split: str) -> np.ndarray:
    n = INDEXED_SIZES[split]
    images = np.random.default_rng(len(split)).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    return images


def example_ids(batch: dict) -> np.ndarray:
    """Indices encoded in pixel (0, 0) of a batch made with normalize='none' and no augmentation."""
    pixel = batch["image"][:, 0, 0].astype(np.int64)
    return pixel[:, 0] + 256 * pixel[:, 1]


VARSIZE_SHAPES = [(32, 40), (48, 32), (32, 32), (36, 64), (40, 34)]


class AttnJaxVarsize(tfds.core.GeneratorBasedBuilder):
    """RGB PNG images of varying size (an ImageNet stand-in)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=5)}), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
        for i, image in enumerate(varsize_images()):
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")
            yield i, {"image": png.getvalue(), "label": i}


def varsize_images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in VARSIZE_SHAPES]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    """A data_dir holding the synthetic datasets and the offline sources (built on first use)."""
    root = tmp_path_factory.mktemp("tfds")
    config = tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP)
    for name in ("attn_jax_indexed", "attn_jax_varsize"):
        tfds.builder(name, data_dir=str(root), file_format="array_record").download_and_prepare(
            download_config=config)
    return str(root)


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def indexed(data_dir, split="train", **kwargs):
    kwargs = {"global_batch_size": 96, "train": True, "seed": 0, "normalize": "none",
              "crop_padding": 0, "flip": False, **kwargs}
    return data.make_iterator("attn_jax_indexed", split, data_dir=data_dir, **kwargs)


# --- Fashion-MNIST from IDX ---

def raw_idx(name: str, header_format: str) -> tuple[tuple[int, ...], np.ndarray]:
    """Independent reader: gunzip, unpack the header with struct, the rest with frombuffer."""
    raw = gzip.open(FASHION_DIR / name).read()
    size = struct.calcsize(header_format)
    return struct.unpack(header_format, raw[:size]), np.frombuffer(raw, np.uint8, offset=size)


@needs_fashion
def test_fashion_mnist_idx_matches_raw_bytes(data_dir):
    """read_idx and the built tfds dataset vs struct/frombuffer on the gunzipped files; the IDX
    magic numbers are 2051 (images) and 2049 (labels); 6000 train / 1000 test per class."""
    for split, prefix, count in (("train", "train", 60000), ("test", "t10k", 10000)):
        (magic, n, rows, cols), pixels = raw_idx(f"{prefix}-images-idx3-ubyte.gz", ">IIII")
        (label_magic, label_n), labels = raw_idx(f"{prefix}-labels-idx1-ubyte.gz", ">II")
        assert (magic, n, rows, cols, label_magic, label_n) == (2051, count, 28, 28, 2049, count)
        pixels = pixels.reshape(count, 28, 28, 1)
        labels_file = FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"
        np.testing.assert_array_equal(fashion_mnist.read_idx(labels_file), labels)
        np.testing.assert_array_equal(np.bincount(labels), np.full(10, count // 10))
        images, stored_labels = data.load_arrays("fashion_mnist_idx", split, data_dir)
        np.testing.assert_array_equal(images, pixels)  # stored in file order
        np.testing.assert_array_equal(stored_labels, labels)
    info = data.dataset_info("fashion_mnist_idx", data_dir)
    assert info.num_examples == {"train": 60000, "test": 10000}
    assert (info.image_shape, info.num_classes) == ((28, 28, 1), 10)


@needs_fashion
def test_fashion_mnist_normalisation(data_dir):
    """Stored stats vs numpy on the raw train pixels and the commonly published 0.2860 / 0.3530;
    one eval pass over the train split then has mean 0 and variance 1 (the definition)."""
    _, pixels = raw_idx("train-images-idx3-ubyte.gz", ">IIII")
    info = data.dataset_info("fashion_mnist_idx", data_dir)
    np.testing.assert_allclose(info.mean, [pixels.mean()], rtol=1e-9)
    np.testing.assert_allclose(info.std, [pixels.std()], rtol=1e-9)
    published = [0.2860, 0.3530]  # Fashion-MNIST mean/std of [0, 1] pixels, as commonly quoted
    np.testing.assert_allclose([info.mean[0] / 255, info.std[0] / 255], published, atol=5e-5)
    total = total_sq = count = 0.0
    for batch in data.make_iterator("fashion_mnist_idx", "train", global_batch_size=1000, train=False,
                                    data_dir=data_dir):
        x = batch["image"].astype(np.float64)
        total, total_sq, count = total + x.sum(), total_sq + np.square(x).sum(), count + batch["mask"].sum()
        assert x.shape == (1000, 28, 28, 1)
    assert count == 60000
    mean = total / (count * 28 * 28)
    np.testing.assert_allclose([mean, total_sq / (count * 28 * 28) - mean**2], [0.0, 1.0], atol=1e-5)


def test_a_failed_build_leaves_no_folder_and_a_retry_no_warning(tmp_path, caplog, capsys):
    """A build whose source files are missing removes what it created, so the next attempt
    meets no half-made folder ("Variant folder ... has no dataset_info.json"), and neither
    attempt prints tfds' download messages (nothing is downloaded)."""
    tfds_dir = tmp_path / "tfds"
    for _ in range(2):
        with caplog.at_level("WARNING"), pytest.raises(FileNotFoundError):
            data.prepare("fashion_mnist_idx", tfds_dir, source_dir=tmp_path / "nowhere")
        assert sorted(os.listdir(tfds_dir)) == [".fashion_mnist_idx.lock"]
    printed = capsys.readouterr().out
    assert "Variant folder" not in caplog.text and "dataset_info.json" not in caplog.text
    assert "building dataset fashion_mnist_idx" in printed and "Downloading" not in printed


def test_read_idx_rejects_missing_and_corrupt_files(tmp_path):
    """Missing files name the path and the Debian package; corrupt ones raise ValueError."""
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist.*source_dir"):
        data.prepare("fashion_mnist_idx", tmp_path / "tfds", source_dir=tmp_path / "nowhere")
    good = struct.pack(">BBBBI", 0, 0, 8, 1, 3) + bytes([1, 2, 3])
    (tmp_path / "ok.gz").write_bytes(gzip.compress(good))
    np.testing.assert_array_equal(fashion_mnist.read_idx(tmp_path / "ok.gz"), [1, 2, 3])
    corrupt = {"short.gz": gzip.compress(good[:-1]), "magic.gz": gzip.compress(b"\x01" + good[1:]),
               "notgzip.gz": good, "truncated.gz": gzip.compress(good)[:-6]}
    for name, content in corrupt.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=str(tmp_path / name)):
            fashion_mnist.read_idx(tmp_path / name)


# --- scikit-learn digits ---

def test_digits_split(data_dir):
    """Stored splits vs sklearn.load_digits: train and test partition the 1797 images in file
    order, and each class puts floor(count / 5) examples in test."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    test = digits_test_mask(digits.target)
    np.testing.assert_array_equal(np.bincount(digits.target[test]), np.bincount(digits.target) // 5)
    for split, rows in (("train", ~test), ("test", test)):
        images, labels = data.load_arrays("digits_sklearn", split, data_dir)
        np.testing.assert_array_equal(images[..., 0], digits.images[rows])
        np.testing.assert_array_equal(labels, digits.target[rows])
    info = data.dataset_info("digits_sklearn", data_dir)
    assert info.num_examples == {"train": 1442, "test": 355} and info.pixel_max == 16
    np.testing.assert_allclose(info.mean, [digits.images[~test].mean()], rtol=1e-9)
    batch = next(data.make_iterator("digits_sklearn", "test", global_batch_size=355, train=False,
                                    data_dir=data_dir, normalize="minus_one_one"))
    np.testing.assert_allclose(batch["image"][..., 0], digits.images[test] / 8.0 - 1.0, atol=1e-6)


@pytest.mark.slow  # two fresh interpreters: ~5 s
def test_concurrent_builds_build_once(tmp_path):
    """Two processes preparing the same offline dataset at once: both succeed, one builds."""
    code = ("import sys, tensorflow_datasets as tfds; tfds.disable_progress_bar(); "
            "from attn_jax.data import prepare; prepare('digits_sklearn', sys.argv[1])")
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("built dataset digits_sklearn" in out for out in outputs) == 1, outputs
    assert not any("Downloading" in out or "downloaded" in out for out in outputs), outputs
    assert data.dataset_info("digits_sklearn", tmp_path).num_examples == {"train": 1442, "test": 355}


# --- catalog errors ---

def test_missing_stock_dataset_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"tfds build cifar10 --data_dir={tmp_path}")):
        data.dataset_info("cifar10", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset'"):
        data.dataset_info("no_such_dataset", tmp_path)


def test_batch_must_divide_by_process_count(data_dir):
    with pytest.raises(ValueError, match=r"global_batch_size=10 .* process_count=4"):
        indexed(data_dir, global_batch_size=10, process_count=4)
    with pytest.raises(ValueError, match=r"process_index=2 .* process_count=2"):
        indexed(data_dir, process_index=2, process_count=2)


# --- training and evaluation iterators ---

def test_train_order_is_seeded_and_reshuffled_each_epoch(data_dir):
    """1000 examples, batch 96: each epoch is 10 batches of distinct examples (40 dropped) in a
    new order; the same seed repeats the stream exactly, another seed does not."""
    ids = np.stack([example_ids(b) for b in take(indexed(data_dir), 30)]).reshape(3, 960)
    assert all(len(np.unique(epoch)) == 960 and epoch.max() < 1000 for epoch in ids)
    assert not np.array_equal(ids[0], ids[1]) and not np.array_equal(ids[1], ids[2])
    again = np.stack([example_ids(b) for b in take(indexed(data_dir), 30)]).reshape(3, 960)
    np.testing.assert_array_equal(again, ids)
    other = np.concatenate([example_ids(b) for b in take(indexed(data_dir, seed=1), 10)])
    assert not np.array_equal(other, ids[0])
    batch = next(indexed(data_dir))
    np.testing.assert_array_equal(batch["label"], example_ids(batch) % 10)
    assert batch["label"].dtype == np.int32 and batch["image"].dtype == np.float32
    np.testing.assert_array_equal(batch["mask"], np.ones(96, np.float32))


def test_hosts_split_the_global_batch(data_dir):
    """Host p's batch is rows [p*b, (p+1)*b) of the single-process global batch, augmentation
    included, for training and for padded evaluation."""
    for kwargs in ({"train": True, "crop_padding": 2, "flip": True, "normalize": True},
                   {"train": False, "split": "test"}):
        whole = take(indexed(data_dir, **kwargs), 3)
        hosts = [take(indexed(data_dir, process_index=p, process_count=4, **kwargs), 3) for p in range(4)]
        for step, batch in enumerate(whole):
            for key in ("image", "label", "mask"):
                host_rows = [h[step][key] for h in hosts]
                assert host_rows[0].shape[0] == 24
                np.testing.assert_array_equal(np.concatenate(host_rows), batch[key])


def test_eval_is_one_padded_pass_in_order(data_dir):
    """250 test examples, batch 96, 2 hosts: 3 steps, masks sum to 250, real rows in record order."""
    hosts = [list(indexed(data_dir, "test", train=False, process_index=p, process_count=2)) for p in range(2)]
    assert [len(h) for h in hosts] == [3, 3]
    masks = np.concatenate([np.concatenate([h[s]["mask"] for h in hosts]) for s in range(3)])
    ids = np.concatenate([np.concatenate([example_ids(h[s]) for h in hosts]) for s in range(3)])
    assert masks.sum() == 250 and masks.shape == (288,)
    stored, _ = data.load_arrays("attn_jax_indexed", "test", data_dir)  # record order of the split
    np.testing.assert_array_equal(ids[masks > 0], example_ids({"image": stored}))
    np.testing.assert_array_equal(np.sort(ids[masks > 0]), np.arange(250))
    np.testing.assert_array_equal(masks, np.arange(288) < 250)


def test_resume_from_state_and_orbax(data_dir, tmp_path):
    """After get_state -> set_state (and after an orbax save/restore of the iterator through
    grain.checkpoint) a fresh iterator yields exactly the batches the original yields next."""
    import orbax.checkpoint as ocp

    iterator = indexed(data_dir, crop_padding=2, flip=True)
    take(iterator, 13)  # crosses into the second epoch
    state = iterator.get_state()
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    manager.save(13, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
    manager.wait_until_finished()
    expected = take(iterator, 4)
    resumed = indexed(data_dir, crop_padding=2, flip=True)
    resumed.set_state(state)
    restored = indexed(data_dir, crop_padding=2, flip=True)
    manager.restore(13, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    for got in (take(resumed, 4), take(restored, 4)):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])


def test_crop_flip_in_pipeline_matches_reference(data_dir):
    """Augmented train batches vs the un-augmented images of the same examples: every image is
    a padded crop, possibly mirrored, of its source (checked by searching all 25 x 2 variants)."""
    source = indexed_images("train")
    batch = next(indexed(data_dir, crop_padding=2, flip=True))
    plain = next(indexed(data_dir))
    np.testing.assert_array_equal(batch["label"], plain["label"])
    flips = 0
    for image, i in zip(batch["image"], example_ids(plain)):
        padded = np.pad(source[i], ((2, 2), (2, 2), (0, 0))).astype(np.float32)
        variants = [(f, c[:, ::-1] if f else c) for dy in range(5) for dx in range(5) for f in (0, 1)
                    for c in [padded[dy:dy + 8, dx:dx + 8]]]
        matches = [f for f, v in variants if np.array_equal(v, image)]
        assert matches, "augmented image is not a padded crop of its source"
        flips += matches[0]
    assert 20 < flips < 76  # about half of 96 mirrored


def test_streamed_batches_equal_in_memory_batches(data_dir, monkeypatch):
    """A split too large for memory is read from the data source per batch; the batches (with
    crop/flip and resizing) must equal those of the in-memory path."""
    kwargs = {"crop_padding": 2, "flip": True, "image_size": 12}
    def batches():
        return take(indexed(data_dir, **kwargs), 3) + list(
            indexed(data_dir, "test", train=False, image_size=12))

    in_memory = batches()
    monkeypatch.setattr(data.sources, "MAX_IN_MEMORY_BYTES", 0)
    assert not data.sources.fits_in_memory(data.dataset_info("attn_jax_indexed", data_dir), "train")
    streamed = batches()
    assert len(streamed) == 6
    for a, b in zip(streamed, in_memory):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(a[key], b[key])


def test_image_size_pad_and_resize(data_dir):
    """resize='pad' centres the 8x8 digits in zeros; bilinear resizing matches PIL's."""
    images, _ = data.load_arrays("digits_sklearn", "test", data_dir)
    padded = next(data.make_iterator("digits_sklearn", "test", global_batch_size=8, train=False,
                                     data_dir=data_dir, image_size=12, resize="pad", normalize="none"))
    np.testing.assert_array_equal(padded["image"], np.pad(images[:8], ((0, 0), (2, 2), (2, 2), (0, 0))))
    resized = next(data.make_iterator("digits_sklearn", "test", global_batch_size=8, train=False,
                                      data_dir=data_dir, image_size=16, normalize="none"))
    reference = [np.asarray(Image.fromarray(x[..., 0]).resize((16, 16), Image.BILINEAR)) for x in images[:8]]
    np.testing.assert_array_equal(resized["image"][..., 0], np.stack(reference))


def test_variable_size_images(data_dir):
    """Streamed PNGs of varying size: stats vs numpy over all pixels; eval is the centre crop
    (0.875 of the shorter side 32 = 28: an exact slice at image_size=28); train batches are
    [b, 28, 28, 3] with labels of the examples drawn."""
    images = varsize_images()
    info = data.dataset_info("attn_jax_varsize", data_dir)
    assert info.image_shape == (None, None, 3)
    pixels = np.concatenate([x.reshape(-1, 3) for x in images])
    np.testing.assert_allclose(info.mean, pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(info.std, pixels.std(0), rtol=1e-9)
    with pytest.raises(ValueError, match="pass image_size"):
        data.make_iterator("attn_jax_varsize", "test", global_batch_size=4, train=False, data_dir=data_dir)
    batches = list(data.make_iterator("attn_jax_varsize", "test", global_batch_size=4, train=False,
                                      data_dir=data_dir, image_size=28, normalize="none"))
    assert [b["mask"].sum() for b in batches] == [4, 1]
    got = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    for i, x in enumerate(images):
        if min(x.shape[:2]) == 32:
            top, left = (x.shape[0] - 28) // 2, (x.shape[1] - 28) // 2
            np.testing.assert_array_equal(got[labels == i][0], x[top:top + 28, left:left + 28])
    train = next(data.make_iterator("attn_jax_varsize", "train", global_batch_size=4, train=True,
                                    data_dir=data_dir, image_size=28))
    assert train["image"].shape == (4, 28, 28, 3) and len(set(train["label"].tolist())) == 4


# --- transforms on synthetic arrays ---

def test_random_crop_flip_matches_gather():
    """Per-example crops vs one fancy-indexed gather: out[i, y, x] = padded[i, top_i + y,
    left_i + x'] with x' = w - 1 - x for flipped examples."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 6, 5, 3), dtype=np.uint8)
    offsets, flips = rng.integers(0, 7, (16, 2)), rng.random(16) < 0.5
    padded = np.zeros((16, 12, 11, 3), np.uint8)
    padded[:, 3:9, 3:8] = images
    cols = np.where(flips[:, None], np.arange(5)[::-1], np.arange(5)) + offsets[:, 1:]
    rows = np.arange(6) + offsets[:, :1]
    expected = padded[np.arange(16)[:, None, None], rows[:, :, None], cols[:, None, :]]
    np.testing.assert_array_equal(transforms.random_crop_flip(images, offsets, flips, 3), expected)
    with pytest.raises(ValueError, match="offsets"):
        transforms.random_crop_flip(images, offsets + 1, flips, 3)


def test_random_resized_crop_box():
    """Hand-computed boxes (area 0.08 + 0.5 * 0.92 of 100x100 = 5400 -> 73x73; fallback for a
    20:1 image -> 10x13 centred) and range checks over random proposals."""
    assert transforms.random_resized_crop_box(100, 100, np.array([[0.5, 0.5, 0.0, 0.999]])) == (0, 27, 73, 73)
    assert transforms.random_resized_crop_box(10, 200, np.ones((10, 4)) * 0.999) == (0, 93, 10, 13)
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(8, 300, 2)
        top, left, ch, cw = transforms.random_resized_crop_box(h, w, rng.random((10, 4)))
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0


def test_crop_resize_samples_a_linear_ramp():
    """Bilinear resampling reproduces a linear image: output pixel (i, j) of box (top, left, bh,
    bw) at size s equals the ramp at (top + (i + .5) bh / s - .5, left + (j + .5) bw / s - .5)."""
    y, x = np.mgrid[0:30, 0:40]
    image = np.repeat((3 * y + 2 * x)[..., None], 3, -1).astype(np.uint8)
    for box, size in (((5, 7, 14, 20), 10), ((9.5, 11.0, 6.0, 8.0), 16)):
        top, left, bh, bw = box
        i = np.arange(size)[:, None]
        j = np.arange(size)[None, :]
        ramp = 3 * (top + (i + 0.5) * bh / size - 0.5) + 2 * (left + (j + 0.5) * bw / size - 0.5)
        got = transforms.crop_resize(image, box, size)
        assert got.shape == (size, size, 3)
        np.testing.assert_allclose(got[..., 1], ramp, atol=1.0)
    gray = image[..., :1]
    np.testing.assert_array_equal(transforms.crop_resize(gray, (2, 6, 28, 28), 28), gray[2:30, 6:34])
    np.testing.assert_allclose(transforms.center_crop_box(32, 40), (2.0, 6.0, 28.0, 28.0))
