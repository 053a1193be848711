"""The Scenes dataset (`attn_jax.data.datasets.scenes`): boxes, captions, determinism, splits,
batching and the COCO JSON.

References are independent of the module: boxes are checked against the canvas's own non-zero
pixels, captions are parsed back by a small parser written here and their relations re-checked
on the boxes with the rule restated here, batches are compared with the scenes they come from.
Most tests use the scikit-learn digits source (no file needed); the Fashion-MNIST path runs on
tiny fake IDX files (the real ones' shapes) and, where they are installed, on the real files.
"""

from __future__ import annotations

import collections
import json
import pathlib
import re

import jax
import ml_collections
import numpy as np
import pytest

from attn_jax.data import batcher
from attn_jax.data.datasets import fashion_mnist
from attn_jax.data.datasets import scenes as sc

FASHION_DIR = pathlib.Path(fashion_mnist.DEFAULT_FASHION_MNIST_DIR)
HAS_FASHION = (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file()
N = 120  # scenes checked per split


@pytest.fixture(scope="module")
def digits():
    return {split: sc.Scenes(split, source="digits", num_examples=N) for split in sc.SPLITS}


@pytest.fixture(scope="module")
def fake_fashion_dir(tmp_path_factory):
    """Plain (not gzipped) IDX files of Fashion-MNIST's shapes: 60000 + 10000 28x28 items, each a
    filled rectangle of random size and grey level, label i % 10."""
    folder = tmp_path_factory.mktemp("fashion")
    rng = np.random.default_rng(0)
    for stem, n in (("train", 60_000), ("t10k", 10_000)):
        r0, c0 = rng.integers(0, 10, (2, n))
        r1, c1 = r0 + rng.integers(4, 18, n), c0 + rng.integers(4, 18, n)
        ar = np.arange(28)
        rows = (ar >= r0[:, None]) & (ar < r1[:, None])
        cols = (ar >= c0[:, None]) & (ar < c1[:, None])
        images = (rows[:, :, None] & cols[:, None, :]) * rng.integers(60, 256, n)[:, None, None]
        (folder / f"{stem}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">u4").tobytes()
            + images.astype(np.uint8).tobytes())
        (folder / f"{stem}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + np.array([n], ">u4").tobytes()
            + (np.arange(n) % 10).astype(np.uint8).tobytes())
    return folder


@pytest.fixture(params=["digits", "fake_fashion", "real_fashion"])
def any_scenes(request):
    """Validation scenes of each source (the real Fashion-MNIST only where installed)."""
    if request.param == "digits":
        return sc.Scenes("validation", source="digits", num_examples=N)
    if request.param == "fake_fashion":
        return sc.Scenes("validation", num_examples=N,
                         source_dir=request.getfixturevalue("fake_fashion_dir"))
    if not HAS_FASHION:
        pytest.skip(f"Fashion-MNIST IDX files absent from {FASHION_DIR} "
                    "(apt-get install dataset-fashion-mnist)")
    return sc.Scenes("validation", num_examples=N, source_dir=FASHION_DIR)


# ----------------------------------------------------------------------------------- 1: the boxes
def test_boxes_lie_in_the_canvas_and_enclose_exactly_their_items_ink(any_scenes):
    H, W = any_scenes.canvas_hw
    counts = collections.Counter()
    for scene in any_scenes:
        image = scene.image[..., 0]
        assert scene.image.shape == (H, W, 1) and scene.image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1
        n = len(scene.labels)
        counts[n] += 1
        assert any_scenes.min_items <= n <= any_scenes.max_items
        assert scene.bbox.shape == scene.boxes.shape == (n, 4) and len(scene.captions) >= 2
        x, y, w, h = scene.bbox.T
        assert (x >= 0).all() and (y >= 0).all() and (w >= 1).all() and (h >= 1).all()
        assert (x + w <= W).all() and (y + h <= H).all()
        # Boxes keep >= 1 empty pixel between them, so the ink inside a box is its item's alone.
        for i in range(n):
            for j in range(i + 1, n):
                assert (x[i] + w[i] < x[j] or x[j] + w[j] < x[i]
                        or y[i] + h[i] < y[j] or y[j] + h[j] < y[i]), (scene.index, i, j)
        inside = np.zeros((H, W), bool)
        for xi, yi, wi, hi in scene.bbox:
            inside[yi:yi + hi, xi:xi + wi] = True
            crop = image[yi:yi + hi, xi:xi + wi] > 0
            # the tight box of the crop's ink is the whole crop: ink on all four borders
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
        assert not (image[~inside] > 0).any(), f"ink outside every box in scene {scene.index}"
        # cxcywh in [0, 1], from COCO [x, y, w, h] (DETR's box_xyxy_to_cxcywh of the pixels)
        expected = np.stack([(x + w / 2) / W, (y + h / 2) / H, w / W, h / H], 1)
        np.testing.assert_allclose(scene.boxes, expected, rtol=1e-6)
        assert scene.class_names == tuple(any_scenes.class_names[c] for c in scene.labels)
        assert list(x) == sorted(x)  # listed left to right
    assert set(counts) == set(range(any_scenes.min_items, any_scenes.max_items + 1)), counts


# -------------------------------------------------------------------------------- 2: the captions
RELATION_WORDS = ("to the left of", "to the right of", "above", "below")
COUNTS = {"a": 1, "an": 1, "two": 2, "three": 3, "four": 4}


def parse_phrase(phrase: str, spec: sc.SourceSpec) -> tuple[int, int]:
    """'two shirts' -> (label of shirt, 2); 'an eight' -> (8, 1)."""
    count_word, noun = phrase.split(" ", 1)
    count = COUNTS[count_word]
    nouns = spec.singular if count == 1 else spec.plural
    assert noun in nouns, phrase
    if count == 1:
        assert count_word == ("an" if noun == "eight" else "a"), phrase
    return nouns.index(noun), count


def parse_caption(caption: str, spec: sc.SourceSpec):
    """-> ({label: count}, relation or None, subject label, object label)."""
    m = re.fullmatch(r"there (is|are) (.*)", caption)
    if m:
        phrases = [parse_phrase(p, spec) for p in m.group(2).split(" and ")]
        assert m.group(1) == ("is" if phrases[0][1] == 1 else "are"), caption
        return dict(phrases), None, None, None
    for rel in RELATION_WORDS:
        if f" {rel} " in caption:
            subject, obj = caption.split(f" {rel} ")
            (a, na), (b, nb) = parse_phrase(subject, spec), parse_phrase(obj, spec)
            return {a: na, b: nb}, rel, a, b
    phrases = [parse_phrase(p, spec) for p in caption.split(" and ")]
    assert len({c for c, _ in phrases}) == len(phrases), caption  # each class named once
    return dict(phrases), None, None, None


def relation_holds(rel: str, a_boxes: np.ndarray, b_boxes: np.ndarray) -> bool:
    """The rule restated: A is left of B when every box of A ends at or before every box of B
    starts (x + w <= x'); above likewise in y; right of / below are the inverses."""
    def before(p, q, axis):
        return (p[:, axis] + p[:, axis + 2]).max() <= q[:, axis].min()

    return {"to the left of": before(a_boxes, b_boxes, 0),
            "to the right of": before(b_boxes, a_boxes, 0),
            "above": before(a_boxes, b_boxes, 1), "below": before(b_boxes, a_boxes, 1)}[rel]


def test_captions_name_exactly_the_classes_with_counts_and_only_true_relations(digits):
    spec, stated = sc.SOURCES["digits"], collections.Counter()
    longest = digits["train"].max_caption_bytes
    vocabulary = set(spec.singular + spec.plural) | set(COUNTS) | {
        "and", "there", "is", "are", "to", "the", "left", "right", "of", "above", "below"}
    for scene in digits["train"]:
        present = dict(collections.Counter(scene.labels.tolist()))
        assert 2 <= len(scene.captions) <= sc.MAX_REFERENCES
        assert len(set(scene.captions)) == len(scene.captions)
        for caption in scene.captions:
            assert len(caption.encode()) <= longest and set(caption.split()) <= vocabulary
            counts, rel, a, b = parse_caption(caption, spec)
            assert counts == present, (caption, scene.labels)
            if rel is not None:
                stated[rel] += 1
                assert relation_holds(rel, scene.bbox[scene.labels == a],
                                      scene.bbox[scene.labels == b]), (caption, scene.bbox)
        # With two classes, every relation that holds is stated (the relations are complete),
        # and the canonical caption is one of them.
        if len(present) == 2:
            holding = {(rel, a, b) for rel in RELATION_WORDS for a in present for b in present
                       if a != b and relation_holds(rel, scene.bbox[scene.labels == a],
                                                    scene.bbox[scene.labels == b])}
            said = {parse_caption(c, spec)[1:] for c in scene.captions} - {(None, None, None)}
            assert said == holding or (len(scene.captions) == sc.MAX_REFERENCES
                                       and said <= holding), (scene.captions, scene.bbox)
            if holding:
                assert parse_caption(scene.captions[0], spec)[1] is not None
    assert set(stated) == set(RELATION_WORDS), stated  # every relation occurs in 120 scenes


def test_caption_counts_read_the_classes_of_hand_made_captions():
    """Reference: the classes and counts written by hand for each caption; the public parser
    also agrees with this file's parser on every reference of 120 scenes."""
    fashion = [("a bag to the left of two shirts", {8: 1, 6: 2}),
               ("there are three t-shirts and a boot", {0: 3, 9: 1}),
               ("a sneaker", {7: 1}),
               ("two dresses and and a a coat", {3: 2, 4: 1}),      # malformed, still read
               ("bag shirts sneaker", {}),                          # no phrase, no class
               ("a bag and a bag", {8: 1})]
    for caption, counts in fashion:
        assert sc.caption_counts(caption, "fashion_mnist") == counts, caption
    # Digits: 'two' is a count before a plural and a noun after an article.
    assert sc.caption_counts("a two above two twos", "digits") == {2: 2}
    assert sc.caption_counts("an eight and two nines", "digits") == {8: 1, 9: 2}

    scenes = [sc.Scene(image=None, bbox=None, boxes=None, labels=np.array(labels),
                       class_names=(), captions=(), source_items=None, index=i)
              for i, labels in enumerate([[8, 6, 6], [0, 9], [7, 7], [3]])]
    predictions = ["a bag to the left of two shirts",   # classes and counts right
                   "a t-shirt and two boots",           # classes right, a count wrong
                   "a sneaker and a bag",               # a class too many
                   "there is a"]                        # no class named
    assert sc.caption_metrics(predictions, scenes, "fashion_mnist") == {
        "class_set_match": 0.5, "class_count_match": 0.25}
    with pytest.raises(ValueError, match="3 predictions for 4 scenes"):
        sc.caption_metrics(predictions[:3], scenes, "fashion_mnist")


def test_caption_counts_agree_with_the_test_parser(digits):
    spec = sc.SOURCES["digits"]
    for scene in digits["train"]:
        for caption in scene.captions:
            assert sc.caption_counts(caption, "digits") == parse_caption(caption, spec)[0]


# ---------------------------------------------------------------------------- 3: deterministic
def test_same_seed_and_index_give_the_same_scene_bit_for_bit(digits):
    again = sc.Scenes("train", source="digits", num_examples=N)
    for i in (5, 3, 77, 5):  # any order: random access
        a, b = digits["train"][i], again[i]
        for field in ("image", "bbox", "boxes", "labels", "source_items"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), field
        assert a.captions == b.captions and a.class_names == b.class_names
    images = {digits["train"][i].image.tobytes() for i in range(N)}
    assert len(images) == N  # different indices, different scenes
    reseeded = sc.Scenes("train", source="digits", num_examples=N, seed=1)
    assert not any(reseeded[i].image.tobytes() in images for i in range(20))


# ---------------------------------------------------------------------------------- 4: disjoint
def test_splits_share_no_source_item_and_no_canvas(digits, fake_fashion_dir):
    pools = {split: set(s.item_pool.tolist()) for split, s in digits.items()}
    for s1, s2 in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not pools[s1] & pools[s2], (s1, s2)
    assert sum(map(len, pools.values())) == 1797  # every sklearn digit, once
    canvases = {}
    for split, scenes in digits.items():
        used = set(np.concatenate([s.source_items for s in scenes]).tolist())
        assert used <= pools[split]
        canvases[split] = {s.image.tobytes() for s in scenes}
    assert not canvases["train"] & canvases["test"]
    assert not canvases["train"] & canvases["validation"]
    # Fashion-MNIST: train items 0..53999, validation 54000..59999 of the train file, test file.
    fashion = {split: sc.Scenes(split, num_examples=10, source_dir=fake_fashion_dir)
               for split in sc.SPLITS}
    assert fashion["train"].item_pool.tolist() == list(range(54_000))
    assert fashion["validation"].item_pool.tolist() == list(range(54_000, 60_000))
    assert fashion["test"].item_pool.tolist() == list(range(60_000, 70_000))


# -------------------------------------------------------------------------- 5, 6: the batcher
@pytest.mark.parametrize("train", [True, False])
def test_two_hosts_batches_union_to_the_global_batch(digits, train):
    scenes = sc.Scenes("test", source="digits", num_examples=21)  # eval: a short last batch
    whole = sc.detection_dataset(scenes, 8, train=train, seed=3, process_index=0,
                                 process_count=1)
    hosts = [sc.detection_dataset(scenes, 8, train=train, seed=3, process_index=p,
                                  process_count=2) for p in (0, 1)]
    if not train:
        assert len(whole) == 3
    for s in range(5 if train else 3):  # train: into the second epoch (2 batches of 8 each)
        for key, value in whole[s].items():
            joined = np.concatenate([hosts[0][s][key], hosts[1][s][key]])
            assert joined.dtype == value.dtype and joined.shape == value.shape, key
            np.testing.assert_array_equal(joined, value, err_msg=f"step {s} {key}")
    if not train:
        assert whole[2]["mask"].tolist() == [1] * 5 + [0] * 3


def test_padding_masks_count_the_objects_and_padded_rows_are_zero():
    scenes = sc.Scenes("validation", source="digits", num_examples=13)
    ds = sc.detection_dataset(scenes, 8, train=False)
    seen = 0
    for batch in ds:
        b, m = batch["box_mask"].shape
        assert m == scenes.max_items and batch["box_mask"].dtype == bool
        assert batch["image"].shape == (b, 32, 32, 1) and batch["boxes"].shape == (b, m, 4)
        assert batch["labels"].dtype == np.int32 and batch["boxes"].dtype == np.float32
        for row in range(b):
            if batch["mask"][row] == 0:  # a filler row: no objects, an empty canvas
                assert not batch["box_mask"][row].any() and not batch["image"][row].any()
                continue
            scene = scenes[seen]
            n = len(scene.labels)
            assert batch["box_mask"][row].sum() == n and batch["box_mask"][row, :n].all()
            np.testing.assert_array_equal(batch["boxes"][row, :n], scene.boxes)
            np.testing.assert_array_equal(batch["labels"][row, :n], scene.labels)
            np.testing.assert_array_equal(batch["image"][row], scene.image)
            assert not batch["boxes"][row, n:].any() and not batch["labels"][row, n:].any()
            seen += 1
    assert seen == 13
    with pytest.raises(ValueError, match="more than count=1"):
        sc.detection_batch(scenes, range(13), max_objects=1)

    # The detection task's source: the same batch through CocoDetection's interface, padded to
    # its own max_objects; scenes take no augmentation draws.
    source = sc.SceneDetection(scenes, max_objects=6)
    assert (len(source), source.image_shape, source.augments) == (13, (32, 32, 1), False)
    assert source.SPLITS == ("train", "validation", "test")
    batch = source.detection_batch(range(5))
    assert batch["box_mask"].shape == (5, 6)
    direct = sc.detection_batch(scenes, range(5), max_objects=6)
    for key in direct:
        np.testing.assert_array_equal(batch[key], direct[key])
    assert source.coco_dict(3) == sc.coco_dict(scenes, 3)
    with pytest.raises(ValueError, match="scenes are not augmented"):
        source.detection_batch(range(2), drawn=(np.ones(2), np.zeros(2, bool)))


# ------------------------------------------------------------------------------------- 7: COCO
def test_coco_json_has_consistent_ids_and_the_scenes_boxes(tmp_path, digits):
    path = tmp_path / "coco" / "validation.json"
    written = sc.write_coco_json("validation", path, source="digits", num_examples=N,
                                 max_images=40)
    coco = json.loads(path.read_text())
    assert coco == json.loads(json.dumps(written))
    assert {"images", "annotations", "categories"} <= set(coco)
    categories = {c["id"]: c["name"] for c in coco["categories"]}
    assert categories == {i + 1: name for i, name in enumerate(sc.SOURCES["digits"].singular)}
    images = {im["id"]: im for im in coco["images"]}
    assert sorted(images) == list(range(40))
    ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ids)) == len(ids)
    per_image = collections.defaultdict(list)
    for a in coco["annotations"]:
        assert a["image_id"] in images and a["category_id"] in categories and a["iscrowd"] == 0
        assert a["area"] == a["bbox"][2] * a["bbox"][3]
        per_image[a["image_id"]].append(a)
    for i, im in images.items():
        scene = digits["validation"][i]
        assert (im["height"], im["width"]) == (32, 32) and im["captions"] == list(scene.captions)
        assert [a["bbox"] for a in per_image[i]] == scene.bbox.tolist()
        assert [a["category_id"] - 1 for a in per_image[i]] == scene.labels.tolist()


# --------------------------------------------------------------------------------------- errors
def test_bad_requests_are_refused_with_their_reason(tmp_path):
    with pytest.raises(ValueError, match="at least one item"):
        sc.Scenes("train", source="digits", min_items=0)
    with pytest.raises(ValueError, match="at least one item"):
        sc.Scenes("train", source="digits", min_items=1, max_items=0)
    with pytest.raises(ValueError, match=r"canvas 20x20 is too small for max_items=4"):
        sc.Scenes("train", source="digits", canvas_size=20)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        sc.Scenes("dev", source="digits")
    with pytest.raises(ValueError, match="unknown scene source"):
        sc.Scenes("train", source="cifar")
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing / "train-images"))):
        sc.Scenes("train", source_dir=missing)
    with pytest.raises(IndexError):
        sc.Scenes("test", source="digits", num_examples=3)[3]


def test_a_crowded_canvas_still_places_every_item():
    """Four items of the largest size on the smallest canvas that holds them: random placement
    jams often here, and the grid fallback must still give disjoint boxes inside the canvas."""
    scenes = sc.Scenes("train", source="digits", num_examples=30, canvas_size=29,
                       min_items=4, max_items=4, item_size=(14, 14))
    for scene in scenes:
        x, y, w, h = scene.bbox.T
        assert len(x) == 4 and (x + w <= 29).all() and (y + h <= 29).all()
        for i in range(4):
            for j in range(i + 1, 4):
                assert (x[i] + w[i] < x[j] or x[j] + w[j] < x[i]
                        or y[i] + h[i] < y[j] or y[j] + h[j] < y[i])


# ---------------------------------------------------------------------------- the seq2seq task
def test_scenes_plug_into_the_seq2seq_task_as_an_image_source(tmp_path):
    from attn_jax import tasks
    from tests.tiny_configs import seq2seq

    config = seq2seq()
    config.data = dict(dataset="scenes_digits", tokenizer="byte", max_tgt_len=56,
                       train_size=64, validation_size=16, test_size=16,
                       references_per_scene=5, eval_splits=["validation"])
    # A nested section (the backbone) reaches the model as a plain dict: `Task.build_registered_model`
    # converts the ConfigDict, as every config file writes it.
    config.model = dict(
        name="rnn_captioner", embed_dim=8, hidden=16, image_shape=(32, 32, 1),
        backbone=dict(name="vit", num_classes=None, patch_size=8, hidden_size=16, depth=1,
                      num_heads=2, mlp_dim=32, pool_type="gap"))
    assert isinstance(config.model.backbone, ml_collections.ConfigDict)
    config.batch_size = 4
    task = tasks.get_task("seq2seq")(config)
    task.validate()
    batch = next(task.train_iterator(seed=0, process_index=0, process_count=1))
    assert batch["inputs"].shape == (4, 32, 32, 1) and batch["inputs"].dtype == np.float32
    assert batch["targets"].shape == (4, 56) and batch["mask"].shape == (4,)
    pairs = task.pairs("train")
    assert len(pairs) == 64 * 5 and task.pairs("validation")[3][1] == sc.Scenes(
        "validation", source="digits", num_examples=16)[3].captions[0]
    # every target decodes back to one of its scene's captions
    texts = task.tokenizer.decode_batch(batch["targets"])
    assert all(t in {c for s in sc.Scenes("train", source="digits", num_examples=64)
                     for c in s.captions} for t in texts)
    # The model is initialised on the scenes' canvas (traced only): the captioner refuses
    # images of any shape but its image_shape (32, 32, 1).
    jax.eval_shape(task.init_params, jax.random.key(0))
    config.data.max_tgt_len = 20
    with pytest.raises(ValueError, match="cannot hold the longest caption"):
        tasks.get_task("seq2seq")(config).validate()
    # A Transformer decoder whose positions stop short of the captions is refused before init.
    config.data.max_tgt_len = 56
    config.model = dict(name="transformer_captioner", emb_dim=16, num_heads=2, mlp_dim=32,
                        num_encoder_layers=0, num_decoder_layers=1, max_len=32,
                        image_shape=(32, 32, 1), backbone=dict(
                            name="cnn", num_classes=None, widths=(8, 16), blocks_per_stage=1,
                            num_groups=4))
    with pytest.raises(ValueError, match=r"model max_len=32 is shorter than the longest "
                                         r"sequence 56"):
        tasks.get_task("seq2seq")(config).validate()
