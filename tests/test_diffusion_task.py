"""The diffusion task end to end: training through the shared trainer, sample grids, sample.py,
FID and the grid helper. (The sharded run against one device, EMA and sample grid included, is
tests/test_train.py's shared mesh test.)

References: NumPy re-evaluations of the loss
and bound (eq. 4, 5, 7, 13 of Ho et al. 2020 in float64), closed-form Fréchet distances between
Gaussians, the classifier's own logits (for its features), and NumPy slicing (for grid layout).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.stats
from PIL import Image

from attn_jax import data
from attn_jax.eval.fid import (classifier_features, feature_statistics, fid_from_features,
                               frechet_distance)
from attn_jax.eval.evaluators import build_evaluators
from attn_jax.tasks.diffusion import DiffusionTask
from tiny_configs import tiny_config
from attn_jax.train.loop import train_and_evaluate
from attn_jax.train.restore import load_params
from attn_jax.viz.grid import image_grid, save_png, to_uint8
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_diffusion_config(data_dir: str) -> ml_collections.ConfigDict:
    return tiny_config("diffusion", data_dir)


def tiny_classifier_config(data_dir: str) -> ml_collections.ConfigDict:
    return tiny_config("classifier", data_dir)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> pathlib.Path:
    """A directory all pytest-xdist workers see (their base temps share a parent): the tiny runs
    below train once per session, not once per worker."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    return root


def _once(path: pathlib.Path, build) -> str:
    """`build(path)` once across processes (an exclusive lock, then a marker file)."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (path / "DONE").exists():
                shutil.rmtree(path, ignore_errors=True)
                build(str(path))
                (path / "DONE").touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return str(path)


@pytest.fixture(scope="module")
def data_dir(shared):
    return str(shared / "diffusion_task_tfds")  # tfds builds the digits once, under its own lock


@pytest.fixture(scope="module")
def run(data_dir, shared):
    """The tiny run on one device: (workdir, final params and EMA, final eval metrics)."""
    workdir = _once(shared / "diffusion_task_ddpm", lambda w: train_and_evaluate(
        tiny_diffusion_config(data_dir), w, jax.devices()[:1]))
    params = {"params": load_params(workdir)[1], "ema": load_params(workdir, ema=True)[1]}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    final = {k: v for k, v in evals[-1].items() if k not in ("step", "split")}
    return workdir, params, final


@pytest.fixture(scope="module")
def classifier_run(data_dir, shared):
    def build(workdir: str) -> None:
        config = tiny_classifier_config(data_dir)
        config.mesh = dict(data=1, fsdp=1, tensor=1)
        train_and_evaluate(config, workdir, jax.devices()[:1])

    return _once(shared / "diffusion_task_classifier", build)


# ------------------------------------------------------------------ training
def test_eval_metrics_match_a_numpy_reference(run, data_dir):
    """The run's test_mse and one-sample bound L_T + T L_t over the whole test set (355 images:
    the last batch is padded) against eq. 4, 5, 7, 13 in float64 NumPy on the stored pixels,
    given the model's output at the task's per-example (t, noise) draws."""
    workdir, ref, final = run
    assert set(final) == {f"{p}test_{k}" for p in ("", "ema_") for k in ("loss", "mse", "vlb_bpd")}
    losses = [r["loss"] for r in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))
              if r["split"] == "train"]
    assert len(losses) == 4 and losses[-1] < losses[0]
    task = DiffusionTask(tiny_diffusion_config(data_dir))
    params = ref["params"]
    stored, _ = data.load_arrays("digits_sklearn", "test", data_dir)
    x0 = stored.astype(np.float64) / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    draws = jax.jit(task._eval_draws, static_argnums=1)
    t, noise = map(np.asarray, draws(jnp.arange(len(x0), dtype=jnp.int32), x0.shape))
    assert len(set(t.tolist())) > 40  # the draws vary across examples
    betas = np.linspace(1e-3, 0.2, 50)
    abar = np.cumprod(1 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    b = (slice(None),) + (None,) * 3
    x_t = np.sqrt(abar[t])[b] * x0 + np.sqrt(1 - abar[t])[b] * noise
    eps = np.asarray(jax.jit(task.model.apply)({"params": params}, jnp.float32(x_t),
                                               jnp.asarray(t)), np.float64)
    mse = ((eps - noise) ** 2).mean(axis=(1, 2, 3))
    x0_hat = (x_t - np.sqrt(1 - abar[t])[b] * eps) / np.sqrt(abar[t])[b]  # unclipped
    coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
    coef2 = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)
    post_var = betas * (1 - abar_prev) / (1 - abar)
    true_mean = coef1[t][b] * x0 + coef2[t][b] * x_t
    model_mean = coef1[t][b] * x0_hat + coef2[t][b] * x_t
    var_p = np.where(t == 0, post_var[1], betas[t])[b]  # fixed_large, beta-tilde_2 at t = 0
    var_q = np.where(t == 0, post_var[1], post_var[t])[b]  # log-variance clipped at t = 0
    kl = 0.5 * (np.log(var_p / var_q) + var_q / var_p + (true_mean - model_mean) ** 2 / var_p - 1)
    std = np.sqrt(var_p)
    upper = np.where(x0 > 0.999, 1.0, scipy.stats.norm.cdf((x0 + 1 / 255 - model_mean) / std))
    lower = np.where(x0 < -0.999, 0.0, scipy.stats.norm.cdf((x0 - 1 / 255 - model_mean) / std))
    with np.errstate(divide="ignore"):  # far tails underflow in rows where t > 0 (unused)
        nll = -np.log(upper - lower)
    term = np.where(t == 0, nll.mean(axis=(1, 2, 3)), kl.mean(axis=(1, 2, 3))) / math.log(2)
    prior_var = 1 - abar[-1]
    prior_mean = np.sqrt(abar[-1]) * x0
    prior = (0.5 * (-np.log(prior_var) + prior_var + prior_mean ** 2 - 1)).mean(axis=(1, 2, 3))
    bound = 50 * term + prior / math.log(2)
    np.testing.assert_allclose(final["test_mse"], mse.mean(), rtol=1e-4)
    np.testing.assert_allclose(final["test_loss"], mse.mean(), rtol=1e-4)
    np.testing.assert_allclose(final["test_vlb_bpd"], bound.mean(), rtol=1e-3)


def test_bad_config_fails_before_compiling(data_dir):
    config = tiny_diffusion_config(data_dir)
    for section, change, match in [
        (None, dict(flipp=True), "unknown key 'flipp' \\(did you mean 'flip'"),
        ("diffusion", dict(num_timestep=10), "num_timestep"),
        ("sampling", dict(sampler="euler"), "euler"),
        ("diffusion", dict(schedule="cosine", beta_end=0.2), "linear schedule"),
        ("diffusion", dict(model_mean_type="score"), "model_mean_type"),
        ("diffusion", dict(model_var_type="learned_range"), "no training signal"),
    ]:
        bad = ml_collections.ConfigDict(config.to_dict())
        if section is not None and section not in bad.data:
            bad.data[section] = {}
        target = bad.data if section is None else bad.data[section]
        target.update(change)
        with pytest.raises(ValueError, match=match):
            DiffusionTask(bad).validate()
    # Evaluator sections are checked before compiling too.
    for evals, match in [
        (dict(fid=dict(type="fid", classifier_workdir="/no/such/run")), "has no config.json"),
        (dict(grid=dict(type="samples", num_imagse=4)), "num_imagse' \\(did you mean"),
        (dict(x=dict(type="decode")), "cannot feed a 'decode' evaluator"),
    ]:
        bad = ml_collections.ConfigDict(config.to_dict())
        bad.evals = evals
        with pytest.raises(ValueError, match=match):
            build_evaluators(bad, DiffusionTask(bad))


@pytest.mark.parametrize("name, shape, params", [("ddpm_fashion_mnist", (28, 28, 1), None),
                                                  ("ddpm_cifar10", (32, 32, 3), 35_746_307)])
def test_shipped_configs_build(name, shape, params, monkeypatch):
    """The configs pass the task's checks and the U-Net's shape checks (traced, not compiled);
    the CIFAR-10 model has the official code's 35,746,307 parameters (Ho et al. App. B)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs",
                                                                     f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    fake = data.ImageDatasetInfo(name=config.data.name, num_classes=10, image_shape=shape,
                                 num_examples={"train": 50_000, "test": 10_000},
                                 mean=(0.0,) * shape[2], std=(1.0,) * shape[2], pixel_max=255,
                                 class_names=tuple("abcdefghij"))
    monkeypatch.setattr(data, "dataset_info", lambda *a, **k: fake)  # no dataset needed
    task = DiffusionTask(config)
    task.validate()
    shapes = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes)))
    assert params is None or n == params
    assert task.diffusion.num_timesteps == 1000


def test_pad_geometry_round_trips_to_exact_pixels(data_dir):
    """image_size=12 with resize='pad': the model sees centred 12x12 images in [-1, 1], and
    to_pixels recovers the stored 8x8 uint8 pixels exactly."""
    config = tiny_diffusion_config(data_dir)
    config.data.image_size, config.data.resize = 12, "pad"
    task = DiffusionTask(config)
    batch = next(iter(task.eval_iterator("test", process_index=0, process_count=1)))
    stored, _ = data.load_arrays("digits_sklearn", "test", data_dir)
    assert batch["image"].shape == (32, 12, 12, 1)
    np.testing.assert_array_equal(batch["image"][:, :2], -1.0)  # the padding is black
    np.testing.assert_array_equal(task.to_pixels(batch["image"]), stored[:32])


# ------------------------------------------------------------------ the samples evaluator and sample.py
def test_samples_evaluator_grid_is_the_ema_sample_grid(run, data_dir):
    """samples/step_4.png: 8 images of 8x8 in a 3x3 grid with 2-px borders (32x32 grey), equal
    to the grid of the EMA parameters' samples from the configured seed."""
    workdir, params, _ = run
    png = np.asarray(Image.open(os.path.join(workdir, "samples", "step_4.png")))
    assert png.shape == (32, 32) and png.dtype == np.uint8
    task = DiffusionTask(tiny_diffusion_config(data_dir))
    samples = task.generate(params["ema"], 8, jax.random.PRNGKey(0), batch_size=8)
    np.testing.assert_allclose(png, image_grid(samples)[..., 0], atol=1)
    assert any(name.startswith("events") for name in os.listdir(os.path.join(workdir,
                                                                             "tensorboard")))


def _sample_py(*args: str, devices: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(devices)}
    return subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_sample_py_end_to_end(run, classifier_run, data_dir, tmp_path):
    """sample.py on 2 devices (batches split over them): files, shapes, the EMA parameters by
    default, bits/dim and FID. Its first batch of 8 (key fold_in(seed 0, 0), DDIM 4 steps)
    equals the grid the trainer drew on one device at the end of the run."""
    workdir, _, _ = run
    out = str(tmp_path / "out")
    result = _sample_py("--workdir", workdir, "--num", "12", "--batch-size", "8", "--sampler",
                        "ddim", "--steps", "4", "--seed", "0", "--out", out, "--bpd",
                        "--bpd-examples", "5", "--fid", "--classifier-workdir", classifier_run,
                        "--fid-split", "train", "--fid-baselines", devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["devices"] == 2 and summary["ema"] is True and summary["step"] == 4
    assert summary["bpd_examples"] == 5 and np.isfinite(summary["test_bpd"])
    assert summary["bpd_rows"] == 6  # 5 images asked for, rounded up to split over 2 devices
    assert "read only" not in result.stderr  # the workdir is read without a CheckpointManager
    assert summary["fid"] > 0
    # Real held-out test images sit far closer to the train statistics than uniform noise.
    assert 0 < summary["fid_real"] < summary["fid_noise"]
    npz = np.load(os.path.join(out, "samples.npz"))
    images = npz["images"]
    assert images.shape == (12, 8, 8, 1) and images.dtype == np.uint8
    assert str(npz["sampler"]) == "ddim" and int(npz["num_steps"]) == 4 and int(npz["seed"]) == 0
    png = np.asarray(Image.open(os.path.join(out, "samples.png")))
    assert png.shape == (2 + 3 * 10, 2 + 4 * 10)  # 12 images: 4 per row, 3 rows
    trainer_grid = np.asarray(Image.open(os.path.join(workdir, "samples", "step_4.png")))
    np.testing.assert_allclose(image_grid(images[:8])[..., 0], trainer_grid, atol=1)
    assert not np.array_equal(images[:4], images[8:])  # the second batch has a new key
    task = DiffusionTask(tiny_diffusion_config(data_dir))
    # The prior term L_T = KL(N(sqrt(abar_T) x0, 1 - abar_T) || N(0, 1)) needs no model: NumPy.
    abar_T = np.prod(1 - np.linspace(1e-3, 0.2, 50))
    x0 = np.concatenate([b["image"] for b in task.eval_iterator(
        "test", process_index=0, process_count=1)])[:5].astype(np.float64)
    prior = 0.5 * (-np.log(1 - abar_T) + (1 - abar_T) + abar_T * x0 ** 2 - 1)
    np.testing.assert_allclose(summary["test_prior_bpd"], prior.mean() / math.log(2), rtol=1e-4)
    # The bound adds non-negative KL terms to the prior and decoder terms.
    assert summary["test_bpd"] > summary["test_prior_bpd"] + summary["test_decoder_bpd"]


def test_sample_py_errors(run, classifier_run, tmp_path):
    workdir, _, _ = run
    cases = [
        (["--workdir", str(tmp_path / "missing")], "does not exist"),
        (["--workdir", classifier_run], "'classification' run, not a diffusion run"),
        (["--workdir", str(tmp_path)], "config.json does not exist"),
        (["--workdir", workdir, "--num", "0"], "nothing to do"),
    ]
    for args, match in cases:
        result = _sample_py(*args)
        assert result.returncode != 0 and match in result.stderr, (args, result.stderr[-2000:])
    (tmp_path / "config.json").write_text(json.dumps({"task": "diffusion"}))
    result = _sample_py("--workdir", str(tmp_path))
    assert result.returncode != 0 and "no checkpoints" in result.stderr


# ------------------------------------------------------------------ FID
def test_frechet_distance_closed_forms():
    """Diagonal covariances: ||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)); S2 = c^2 S1 (any
    SPD S1): ||mu1 - mu2||^2 + (1 - c)^2 tr(S1); one dimension: (m1 - m2)^2 + (sd1 - sd2)^2."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    np.testing.assert_allclose(frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)), want,
                               rtol=1e-10)
    a = rng.normal(size=(5, 5))
    spd = a @ a.T + 0.1 * np.eye(5)
    np.testing.assert_allclose(frechet_distance(mu1, spd, mu2, 2.25 * spd),
                               np.sum((mu1 - mu2) ** 2) + 0.25 * np.trace(spd), rtol=1e-8)
    np.testing.assert_allclose(frechet_distance([1.0], [[4.0]], [-0.5], [[0.25]]),
                               1.5 ** 2 + 1.5 ** 2, rtol=1e-12)
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu1, np.eye(5), mu2[:4], np.eye(4))


def test_fid_of_samples():
    """Large samples of two diagonal Gaussians approach the closed form; FID(x, x) = 0."""
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
    s1, s2 = np.array([1.0, 0.5, 2.0]), np.array([0.3, 0.5, 1.0])
    x = mu1 + np.sqrt(s1) * rng.normal(size=(200_000, 3))
    y = mu2 + np.sqrt(s2) * rng.normal(size=(200_000, 3))
    want = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    np.testing.assert_allclose(fid_from_features(x, y), want, atol=0.02)
    assert abs(fid_from_features(x, x)) < 1e-8
    mu, sigma = feature_statistics(x[:10])
    assert mu.shape == (3,) and sigma.shape == (3, 3)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        feature_statistics(x[:1])


def test_classifier_features_are_the_pre_logits(classifier_run, data_dir):
    """features @ head + bias == the trained classifier's logits on the pipeline's normalised
    test images; so the features are the pooled representation under the training transform."""
    feats = classifier_features(classifier_run, batch_size=16)
    test = feats.dataset_features("test", max_examples=40)
    assert test.shape == (40, 16)
    config, params = load_params(classifier_run)
    batch = next(iter(data.make_iterator("digits_sklearn", "test", global_batch_size=40,
                                         train=False, data_dir=data_dir)))  # mean/std normalised
    from attn_jax.models import build_model
    model = build_model("vit", num_classes=10, **{k: v for k, v in config.model.items()
                                                  if k != "name"})
    logits = jax.jit(model.apply)({"params": params}, batch["image"])
    head = params["head"]
    np.testing.assert_allclose(test @ head["kernel"] + head["bias"], logits, rtol=1e-4,
                               atol=1e-4)
    with pytest.raises(ValueError, match="pixels must be"):
        feats(np.zeros((2, 12, 12, 1)))


def test_task_fid_of_the_test_set_against_itself_is_zero(classifier_run, data_dir):
    """Real test images through the task's sample path ([-1, 1] -> pixels -> features) give the
    reference statistics back: FID ~ 0. A broken normalisation or rounding would not."""
    task = DiffusionTask(tiny_diffusion_config(data_dir))
    images = np.concatenate([b["image"][b["mask"] > 0] for b in task.eval_iterator(
        "test", process_index=0, process_count=1)])
    fid = task.fid(None, classifier_workdir=classifier_run, samples=images)
    assert abs(fid) < 1e-3
    assert task.fid(None, classifier_workdir=classifier_run, samples=images[::-1] * 0.5) > 0.1


def test_fid_baselines_floor_and_ceiling(classifier_run, data_dir):
    """The floor is the FID of real held-out images, computed through the generated-sample path
    too (the reference check); noise scores far worse; the held-out split must not be the
    reference."""
    task = DiffusionTask(tiny_diffusion_config(data_dir))
    with pytest.raises(ValueError, match="another split"):
        task.fid_baselines(8, classifier_workdir=classifier_run, split="test",
                           heldout_split="test")
    out = task.fid_baselines(16, classifier_workdir=classifier_run, split="test",
                             heldout_split="train")
    train = np.concatenate([b["image"][b["mask"] > 0] for b in task.eval_iterator(
        "train", process_index=0, process_count=1)])[:16]
    want = task.fid(None, classifier_workdir=classifier_run, split="test", samples=train)
    np.testing.assert_allclose(out["fid_real"], want, rtol=1e-4)
    assert 0 < out["fid_real"] < out["fid_noise"]


# ------------------------------------------------------------------ grid
def test_image_grid_layout_and_values(tmp_path):
    """Cell (r, c) holds image r * ncols + c; borders and empty cells hold pad_value."""
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (5, 3, 4, 3))
    grid = image_grid(images, ncols=3, padding=1, pad_value=7)
    assert grid.shape == (2 * 4 + 1, 3 * 5 + 1, 3) and grid.dtype == np.uint8
    pixels = np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)
    for i in range(6):
        r, c = divmod(i, 3)
        cell = grid[1 + r * 4:1 + r * 4 + 3, 1 + c * 5:1 + c * 5 + 4]
        np.testing.assert_array_equal(cell, pixels[i] if i < 5 else np.full((3, 4, 3), 7))
    border = np.ones(grid.shape[:2], bool)
    border[1:, 1:] = (np.arange(1, grid.shape[0]) % 4 == 0)[:, None] | (
        np.arange(1, grid.shape[1]) % 5 == 0)[None, :]
    np.testing.assert_array_equal(grid[border], 7)
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 0.0, 1.0, 2.0])), [0, 128, 255, 255])
    np.testing.assert_array_equal(to_uint8(np.array([0.0, 0.5, 1.0]), (0, 1)), [0, 128, 255])
    save_png(tmp_path / "sub" / "g.png", grid)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "sub" / "g.png")), grid)
    grey = image_grid(images[..., :1])
    save_png(tmp_path / "grey.png", grey)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grey.png")), grey[..., 0])
    with pytest.raises(ValueError, match="shape"):
        image_grid(images[0])
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "x.png", images[0])
