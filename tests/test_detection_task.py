"""The detection task (attn_jax.tasks.detection) and the coco_map evaluator: bad targets and
configs fail before compiling, the backbone trains at 0.1x lr through its parameter group, the
evaluator writes COCO JSON and reports pycocotools' AP, and a tiny DETR overfits one batch of
scenes to AP50 >= 0.9 (pycocotools is the reference for AP). The mesh-equivalence and resume
test of the 'detr' tiny config is in tests/test_train.py (TASK_KINDS)."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_jax.data.datasets import scenes
from attn_jax.eval import coco
from attn_jax.eval.evaluators import EvalContext, build_evaluators, predict_detections
from attn_jax.tasks import get_task
from attn_jax.train import sharding as shd
from attn_jax.train.optim import make_optimizer
from tiny_configs import set_keys, tiny_config


def _task(changes=None):
    config = tiny_config("detr")
    if changes:
        set_keys(config, changes)
    return get_task(config.task)(config)


@pytest.fixture(scope="module")
def task():
    return _task()


@pytest.fixture(scope="module")
def params(task):
    return jax.jit(task.init_params)(jax.random.PRNGKey(0))


def _batch(task, n=2):
    return task.source("train").detection_batch(list(range(n)))


@pytest.mark.parametrize("edit, match", [
    (lambda b: b["boxes"].__setitem__((0, 0), [0.95, 0.5, 0.2, 0.2]), "outside the normalised"),
    (lambda b: b["boxes"].__setitem__((0, 0), [0.5, 0.5, -0.1, 0.2]), "negative box size"),
    (lambda b: b["labels"].__setitem__((1, 0), 10), r"class id out of range \[0, 10\)"),
])
def test_bad_targets_raise_on_the_host(task, params, edit, match):
    batch = _batch(task)
    task.check_batch(batch)  # the real batch passes
    edit(batch)
    with pytest.raises(ValueError, match=match):
        task.check_batch(batch)
    batch["mask"] = np.ones(2, np.float32)
    with pytest.raises(ValueError, match=match):  # the loss on concrete values checks too
        task.loss(params, batch, jax.random.PRNGKey(0), 0)


def test_a_bad_batch_of_the_pipeline_raises_from_the_iterator(monkeypatch):
    """Every batch the data pipeline builds passes `check_batch` on the host, so a bad target
    surfaces as the ValueError of `validate_targets` from next(iterator), never inside a step."""
    task = _task()
    check = task.check_batch

    def corrupt(batch):
        batch["labels"][0, 0] = 42
        return check(batch)

    monkeypatch.setattr(task, "check_batch", corrupt)
    for it in (task.train_iterator(seed=0, process_index=0, process_count=1),
               task.eval_iterator("validation", process_index=0, process_count=1)):
        with pytest.raises(ValueError, match=r"class id out of range \[0, 10\).* label 42"):
            next(it)


def test_bad_configs_raise_before_compiling():
    with pytest.raises(ValueError, match=r"max_objects=9 \(targets per image\) is more than "
                                         r"config.model.num_queries=8"):
        _task({"data.max_objects": 9}).validate()
    with pytest.raises(ValueError, match="num_classes=5, but the data needs 10"):
        _task({"model.num_classes": 5})
    with pytest.raises(FileNotFoundError, match="tfds build coco/2017"):
        _task({"data.dataset": "coco", "data.data_dir": "/tmp/attn_jax_no_coco_here"})
    with pytest.raises(ValueError, match="choose one of"):
        _task({"data.dataset": "voc"})


def test_backbone_trains_at_a_tenth_of_the_lr(task, params):
    """One SGD step of the task's optimizer (config.optim, clipping included) with lr_mults
    [('backbone/.*', 0.1)] moves every backbone parameter by exactly 0.1x, and every other
    parameter by 1x, the step without it (random gradients: the optimizer path is under test;
    the tiny 'detr' runs of tests/test_train.py train through the real loss)."""
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    optim = task.config.optim
    steps = {}
    for name, mults in (("group", optim.lr_mults), ("plain", ())):
        cfg = optim.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.lr_mults = mults
        tx, _ = make_optimizer(cfg, 4)
        steps[name] = jax.jit(tx.update)(grads, tx.init(params), params)[0]
    flat = {jax.tree_util.keystr(k): v for k, v in
            jax.tree_util.tree_leaves_with_path(steps["group"])}
    plain = {jax.tree_util.keystr(k): v for k, v in
             jax.tree_util.tree_leaves_with_path(steps["plain"])}
    backbone = [k for k in flat if k.startswith("['backbone']")]
    assert backbone and len(backbone) < len(flat)
    for key, update in flat.items():
        mult = 0.1 if key in backbone else 1.0
        np.testing.assert_allclose(update, mult * plain[key], rtol=1e-6, atol=1e-12, err_msg=key)
    assert any(np.abs(plain[k]).max() > 0 for k in backbone)  # the group really moves


def test_coco_map_evaluator_writes_json_and_reports_ap(task, params, tmp_path):
    evaluators = {e.name: e for e in build_evaluators(task.config, task)}
    ctx = EvalContext(params=params, ema_params=None, step=3, workdir=str(tmp_path), writer=None,
                      mesh=shd.make_mesh({"data": 1}, jax.devices()[:1]))
    metrics = evaluators["coco_map"].run(ctx)
    for k in ("AP", "AP50", "AP75"):
        assert 0.0 <= metrics[f"validation_{k}"] <= 1.0
    gt = json.load(open(tmp_path / "coco" / "validation_gt.json"))
    predictions = json.load(open(tmp_path / "coco" / "validation_step_3.json"))
    assert len(gt["images"]) == 16 and len(predictions) == 16 * 8  # every query of every image
    # the JSON files alone give the evaluator's numbers (pycocotools re-run on them)
    again = coco.coco_map(str(tmp_path / "coco" / "validation_gt.json"),
                          str(tmp_path / "coco" / "validation_step_3.json"))
    assert again["AP"] == pytest.approx(metrics["validation_AP"])
    loss = evaluators["loss"].run(ctx)
    assert np.isfinite(loss["validation_loss"]) and loss["validation_loss"] > 0


@pytest.mark.slow
def test_overfits_one_batch_of_scenes_to_ap50():
    """A tiny DETR on 4 fixed digit scenes of 1-2 objects reaches AP50 >= 0.9 on them (AdamW,
    the set loss over aux + final layers; pycocotools scores the predictions). 2026-12-07 on
    the shared 2-core CPU: AP50 1.0 (AP 0.88) after 150 steps, 1.0 (AP 0.93) after 300; ~40 s
    at the 200 steps run here."""
    start = time.time()
    config = tiny_config("detr")
    set_keys(config, {"data.train_size": 4, "batch_size": 4})
    config.model = dict(name="detr", d_model=32, num_heads=4, num_encoder_layers=1,
                        num_decoder_layers=2, mlp_dim=64, num_queries=8, dropout_rate=0.0,
                        attention_dropout_rate=0.0,
                        backbone=dict(name="cnn", widths=(16, 32, 32), blocks_per_stage=1,
                                      num_groups=8))
    task = get_task("detection")(config)
    batch = {**task.source("train").detection_batch(range(4)),
             "mask": np.ones(4, np.float32)}
    params = jax.jit(task.init_params)(jax.random.PRNGKey(0))
    tx = optax.chain(optax.clip_by_global_norm(0.1), optax.adamw(2e-3, weight_decay=1e-4))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, i):
        (loss, _), grads = jax.value_and_grad(task.loss, has_aux=True)(
            params, batch, jax.random.PRNGKey(0), i)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for i in range(OVERFIT_STEPS):
        params, opt_state, loss = step(params, opt_state, i)
    predictions = predict_detections(task, params, "train")
    ap = coco.coco_map(task.coco_gt("train"), predictions)
    print(f"overfit: {OVERFIT_STEPS} steps, loss {float(loss):.3f}, AP50 {ap['AP50']:.3f}, "
          f"AP {ap['AP']:.3f}, {time.time() - start:.1f} s")
    assert ap["AP50"] >= 0.9, ap


OVERFIT_STEPS = int(os.environ.get("DETR_OVERFIT_STEPS", 200))


def _config_file(name):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_shipped_configs(tmp_path):
    """configs/detr_scenes.py builds its task and passes its checks (no compile);
    configs/detr_coco.py too, on the coco/2017 stand-in of tests/fake_coco.py (without the
    prepared dataset it fails at once, naming the command that prepares it)."""
    task = get_task("detection")(_config_file("detr_scenes"))
    task.validate()
    assert task.image_shape == (64, 64, 1) and task.model.grid_shape((64, 64)) == (8, 8)
    assert task.num_classes == 10 and task.model.num_queries >= task.max_objects
    config = _config_file("detr_coco")
    config.data.data_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="tfds coco/2017 is not prepared in"):
        get_task("detection")(config)
    import fake_coco

    fake_coco.build(str(tmp_path))
    coco_task = get_task("detection")(config)
    coco_task.validate()
    assert coco_task.image_shape == (config.data.canvas_size,) * 2 + (3,)
    assert coco_task.num_classes == 80 and coco_task.max_objects == 100
    assert coco_task.model.num_queries == 100
    from attn_jax.train.optim import make_optimizer

    _, schedule = make_optimizer(config.optim, 1000)  # the paper's drop: 10x after 4/5 of the run
    np.testing.assert_allclose([float(schedule(s)) for s in (0, 799, 800, 999)],
                               [1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-6)


def test_detection_pictures_are_written(task, params, tmp_path):
    """attn_jax.viz.detections: one PNG per scene (the image with boxes, then one attention
    panel per detected query); the queries drawn are those whose softmax score (checked against
    jax.nn.softmax) reaches the threshold."""
    from PIL import Image

    from attn_jax.viz import detections

    paths = detections.draw_detections(task, params, "validation", [0, 3], str(tmp_path),
                                       threshold=0.0)
    assert [os.path.basename(p) for p in paths] == ["validation_000000.png",
                                                    "validation_000003.png"]
    for path in paths:
        width, height = Image.open(path).size
        assert width > 8 * height  # 1 + 8 panels side by side at threshold 0
    logits = np.random.default_rng(0).normal(size=(8, 11)) * 3
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))[:, :-1]
    attention = np.full((2, 8, 64), 1 / 64)
    shown = detections.plot_detections(np.zeros((32, 32, 1)), logits, np.full((8, 4), 0.5),
                                       attention, (8, 8), [str(c) for c in range(10)],
                                       str(tmp_path / "one.png"), threshold=0.5)
    expected = np.argsort(-probs.max(-1), kind="stable")
    assert shown == [int(q) for q in expected if probs[q].max() >= 0.5]
    with pytest.raises(ValueError, match=r"attention \(2, 8, 63\) must be"):
        detections.plot_detections(np.zeros((32, 32, 1)), logits, np.full((8, 4), 0.5),
                                   attention[..., :63], (8, 8), [str(c) for c in range(10)],
                                   str(tmp_path / "two.png"))
