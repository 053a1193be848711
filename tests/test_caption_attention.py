"""Captioning on the scenes: the decode evaluator's multi-reference metrics, the per-word
attention overlays (`attn_jax.viz.attention_maps --image-index`) and the attention-in-box check
(`benchmarks/caption_attention.py`).

References: sacrebleu called directly on the decoded captions; `scenes.caption_counts` checked
by hand in tests/test_scenes.py; attention maps summed with NumPy; the in-box mass of hand-made
maps whose answer is known in closed form.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
import sacrebleu

from attn_jax.data.tokenizers import ByteTokenizer
from attn_jax.train import loop
from attn_jax.viz import attention_maps as am
from tiny_configs import tiny_config

BENCH_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


def _benchmark():
    sys.path.insert(0, BENCH_DIR)
    try:
        return importlib.import_module("caption_attention")
    finally:
        sys.path.remove(BENCH_DIR)


# ------------------------------------------------------------------------------ pure functions
def test_word_spans_group_the_tokens_of_each_word():
    tok = ByteTokenizer()
    ids = tok.encode("a bag  to the left")
    assert am.word_spans(tok, ids) == [("a", [0]), ("bag", [2, 3, 4]), ("to", [7, 8]),
                                       ("the", [10, 11, 12]), ("left", [14, 15, 16, 17])]
    assert am.word_spans(tok, []) == []


def test_upsampled_maps_sum_to_one_and_keep_the_attended_cell():
    """Reference: a uniform grid map upsamples to the uniform 1/(H*W); a one-hot cell keeps
    most of its mass in the pixels that cell covers (bilinear spreads it only to neighbours)."""
    grid = (2, 3)
    weights = np.zeros((2, 6), np.float32)
    weights[0] = 1 / 6
    weights[1, 4] = 1.0                        # cell (1, 1): rows 8..15, columns 8..15
    maps = am.upsample_maps(weights, grid, (16, 24))
    assert maps.shape == (2, 16, 24)
    np.testing.assert_allclose(maps.sum((1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(maps[0], 1 / (16 * 24), rtol=1e-5)
    assert maps[1, 8:, 8:16].sum() > 0.5 and maps[1].argmax() // 24 >= 8
    with pytest.raises(ValueError, match=r"\[n, h'\*w'\] = \[n, 6\]"):
        am.upsample_maps(np.ones((2, 5)), grid, (16, 24))


def test_attention_in_boxes_on_a_hand_made_map():
    """Known answer: 0.6 of the mass spread evenly over the bag's box, 0.4 over the rest of
    the image; the two shirts' boxes hold none of the word 'shirts''s mass but 1/4 of it."""
    H = W = 20
    bbox = np.array([[2, 3, 5, 4], [10, 10, 4, 4], [15, 2, 3, 3]])   # bag, shirt, shirt
    labels = np.array([8, 6, 6])
    bag = np.zeros((H, W), bool)
    bag[3:7, 2:7] = True
    m_bag = np.where(bag, 0.6 / bag.sum(), 0.4 / (~bag).sum())
    shirts = np.zeros((H, W), bool)
    shirts[10:14, 10:14] = shirts[2:5, 15:18] = True
    m_shirts = np.where(shirts, 0.0, 1.0 / (~shirts).sum())
    m_shirts[10, 10] = 0.25                                   # one pixel inside a shirt box
    m_shirts /= m_shirts.sum()
    uniform = np.full((H, W), 1 / (H * W))
    class_words = [("t-shirt", "t-shirts"), ("trouser", "trousers")] + [
        (f"c{c}", f"c{c}s") for c in range(2, 6)] + [("shirt", "shirts"), ("sneaker", "sneakers"),
                                                     ("bag", "bags"), ("boot", "boots")]
    words = ["a", "bag", "and", "two", "shirts", "a", "boot"]  # 'boot' is not in the image
    maps = np.stack([uniform, m_bag, uniform, uniform, m_shirts, uniform, uniform])
    records = am.attention_in_boxes(maps, words, bbox, labels, class_words)
    assert [(r["word"], r["label"]) for r in records] == [("bag", 8), ("shirts", 6)]
    np.testing.assert_allclose(records[0]["mass"], 0.6)
    np.testing.assert_allclose(records[0]["chance"], 20 / 400)
    np.testing.assert_allclose(records[1]["mass"], m_shirts[shirts].sum())
    np.testing.assert_allclose(records[1]["chance"], 25 / 400)
    table = _benchmark().summarize(records, [c[0] for c in class_words])
    assert "| bag | 1 | 0.600 | 0.050 | 12.00 |" in table
    assert f"| all | 2 | {(0.6 + m_shirts[shirts].sum()) / 2:.3f} | 0.056 |" in table
    assert "no generated word" in _benchmark().summarize([], [])
    with pytest.raises(ValueError, match=r"must be \[words=7, H, W\]"):
        am.attention_in_boxes(maps[:3], words, bbox, labels, class_words)


# ------------------------------------------------------------------------- a tiny trained run
@pytest.fixture(scope="module")
def captioner_run(tmp_path_factory):
    """One SGD step of the tiny scenes captioner (CNN + SAGAN backbone, LSTM, additive
    attention), its final evaluation and a checkpoint."""
    workdir = str(tmp_path_factory.mktemp("captioner"))
    config = tiny_config("captioner")
    config.total_steps = config.eval_every_steps = config.checkpoint.every_steps = 1
    config.evals = dict(decode=dict(type="decode", splits=["test"], num_examples_shown=0))
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    state, final = loop.train_and_evaluate(config, workdir, jax.devices()[:1])
    return config, workdir, jax.device_get(state.params), final


def test_decode_evaluator_scores_every_reference_and_the_class_set(captioner_run):
    from attn_jax import tasks
    from attn_jax.data.datasets import scenes as sc

    config, _, params, final = captioner_run
    task = tasks.get_task("seq2seq")(config)
    n = len(task.pairs("test"))
    predictions = task.translate(params, [s for s, _ in task.decode_pairs("test")])
    scenes = [task.pairs("test").scenes[i] for i in range(n)]
    refs = [list(s.captions) for s in scenes]
    assert task.reference_sets("test") == refs
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(max(map(len, refs)))]
    np.testing.assert_allclose(final["test_bleu"],
                               sacrebleu.corpus_bleu(predictions, streams).score, atol=1e-6)
    np.testing.assert_allclose(final["test_exact_match"],
                               np.mean([p == r[0] for p, r in zip(predictions, refs)]))
    np.testing.assert_allclose(final["test_exact_match_any"],
                               np.mean([p in r for p, r in zip(predictions, refs)]))
    named = [set(sc.caption_counts(p, "digits")) for p in predictions]
    np.testing.assert_allclose(final["test_class_set_match"],
                               np.mean([a == set(s.labels.tolist())
                                        for a, s in zip(named, scenes)]))
    assert 0 <= final["test_class_count_match"] <= final["test_class_set_match"]


def test_word_overlays_of_a_captioner(captioner_run, tmp_path):
    from PIL import Image

    _, workdir, _, _ = captioner_run
    out = str(tmp_path / "overlay.png")
    result = am.main(["--workdir", workdir, "--image-index", "3", "--split", "validation",
                      "--out", out])
    assert result.grid == (16, 16)                 # the CNN's grid for 32x32 (one stride-2)
    assert result.maps.shape == (len(result.words), 32, 32)
    assert result.token_maps.shape == (len(result.token_ids), 32, 32)
    np.testing.assert_allclose(result.maps.sum((1, 2)), 1.0, rtol=1e-6)
    assert (result.maps >= 0).all()
    assert result.words == result.caption.split()
    assert result.words and Image.open(out).size[0] > 100   # a PNG of the word panels
    # The panels: one per word (a fake result with 5 words -> 5 panels, in a 4-column grid).
    fake = am.CaptionAttention("a b c d e", list("abcde"), np.zeros((32, 32, 1)),
                               np.full((5, 32, 32), 1 / 1024), [], np.zeros((0, 32, 32)), (4, 4))
    assert am.plot_word_overlays(fake, str(tmp_path / "five.png")) == 5
    wide, tall = Image.open(tmp_path / "five.png").size
    assert wide > tall  # 4 columns, 2 rows
    # A text run is refused before any decoding (the run's config says dates, not images).
    text_run = tmp_path / "text"
    shutil.copytree(workdir, text_run)
    config = json.loads((text_run / "config.json").read_text())
    config["data"]["dataset"] = "dates"
    (text_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="translates text"):
        am.main(["--workdir", str(text_run), "--image-index", "0"])
    with pytest.raises(ValueError, match="out of range for the 16 validation"):
        am.main(["--workdir", workdir, "--image-index", "16", "--split", "validation"])


def test_attention_in_boxes_over_a_split(captioner_run):
    _, workdir, _, _ = captioner_run
    records, table = _benchmark().run(workdir, "validation", max_examples=6, batch_size=4)
    assert table.splitlines()[0].startswith("| class | words |" if records else "no generated")
    for r in records:
        assert 0.0 <= r["mass"] <= 1.0 + 1e-9 and 0.0 < r["chance"] < 1.0


def test_the_caption_scenes_config_builds_each_variant():
    """configs/caption_scenes.py[:ATTENTION[,ds=LAMBDA]] constructs its task and model (the
    field and data checks run; nothing compiles); bad arguments name the choices."""
    import importlib.util

    from attn_jax import tasks

    path = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "caption_scenes.py")
    spec = importlib.util.spec_from_file_location("caption_scenes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg, attention, ds in [(None, "additive", 0.0), ("none", "none", 0.0),
                               ("additive,ds=0.01", "additive", 0.01), ("dot", "dot", 0.0)]:
        config = module.get_config(arg)
        config.data.source_dir = ""
        task = tasks.get_task("seq2seq")(config)
        model = task.model
        assert (model.attention, model.doubly_stochastic) == (attention, ds)
        assert dict(model.backbone)["name"] == "cnn"
        if arg is None:
            task.validate()   # the byte target length holds the longest caption
            shapes = jax.eval_shape(task.init_params, jax.random.key(0))
            assert shapes is not None
    config = module.get_config("transformer")
    task = tasks.get_task("seq2seq")(config)
    assert type(task.model).__name__ == "TransformerCaptioner"
    assert dict(task.model.backbone)["name"] == "cnn" and task.model.image_shape == (64, 64, 1)
    task.validate()
    for bad, match in [("luong", "ATTENTION"), ("additive,lambda=1", "ds=LAMBDA"),
                       ("none,ds=0.1", "needs the recurrent"),
                       ("transformer,ds=0.1", "needs the recurrent")]:
        with pytest.raises(ValueError, match=match):
            module.get_config(bad)


def test_reference_sets_and_decode_metrics_follow_the_pairs_to_their_scenes():
    """Train pairs cycle through references_per_scene=2 captions of each scene: pair k is scene
    k // 2, so its references and class metrics are that scene's (reference: the Scenes)."""
    from attn_jax import tasks
    from attn_jax.data.datasets import scenes as sc

    task = tasks.get_task("seq2seq")(tiny_config("captioner"))
    scenes = sc.Scenes("train", source="digits", num_examples=64, max_items=2)
    refs = task.reference_sets("train", 6)
    assert refs == [list(scenes[k // 2].captions) for k in range(6)]
    assert [t for _, t in task.decode_pairs("train", 6)] == [
        scenes[k // 2].captions[k % 2] for k in range(6)]
    # Any reference names the scene's classes with their counts; the pair's own target too.
    targets = [t for _, t in task.decode_pairs("train", 6)]
    assert task.decode_metrics("train", targets) == {"class_set_match": 1.0,
                                                     "class_count_match": 1.0}
    wrong = ["a " + sc.SOURCES["digits"].singular[(scenes[k // 2].labels[0] + 1) % 10]
             for k in range(6)]
    assert task.decode_metrics("train", wrong)["class_set_match"] == 0.0
    # A text dataset: one reference each, no extra metrics.
    text_task = tasks.get_task("seq2seq")(tiny_config("seq2seq"))
    assert text_task.reference_sets("test", 3) == [[t] for _, t in
                                                   text_task.decode_pairs("test", 3)]
    assert text_task.decode_metrics("test", ["x"] * 3) == {}


def test_word_overlays_of_a_transformer_captioner():
    """The overlay path serves the Transformer-decoder captioner too: its top decoder layer's
    cross-attention, averaged over the heads, laid on the CNN's grid (initialised parameters:
    the maps' shapes and normalisation, not what they look at)."""
    from attn_jax import tasks

    config = tiny_config("captioner")
    backbone = dict(config.model.backbone)
    config.model = dict(name="transformer_captioner", emb_dim=16, num_heads=2, mlp_dim=32,
                        num_encoder_layers=0, num_decoder_layers=2, max_len=48,
                        image_shape=(32, 32, 1), backbone=backbone)
    task = tasks.get_task("seq2seq")(config)
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x,
                          task.init_params(jax.random.key(0)),
                          is_leaf=lambda x: hasattr(x, "value"))
    images = np.stack([task.pairs("validation")[i][0] for i in range(2)])
    results = am.caption_attention(task, params, images)
    assert len(results) == 2 and all(r.words for r in results)  # maps to check
    for r in results:
        assert r.grid == (16, 16) and r.maps.shape == (len(r.words), 32, 32)
        np.testing.assert_allclose(r.maps.sum((1, 2)), 1.0, rtol=1e-5)
