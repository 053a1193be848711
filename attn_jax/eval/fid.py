"""Fréchet distance between feature distributions (FID; Heusel et al. 2017, "GANs Trained by a
Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", eq. 6).

    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

for Gaussians N(mu_i, S_i) fitted to two sets of features. The features here come from a
classifier trained with this repo (`classifier_features(workdir)`): its pooled pre-logit
representation, so scores are comparable only between runs scored with the same classifier
checkpoint, never with published Inception-v3 FIDs. Loading Inception weights from disk is out
of scope (this machine reaches no weight hub, and no Inception port is part of the repo).

    feats = classifier_features("runs/vit_fashion_mnist")
    real = feats.dataset_features("test")                 # [n, d]
    fake = feats(pixels)                                   # pixels [m, H, W, C] in [0, pixel_max]
    fid = fid_from_features(fake, real)
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.linalg

from attn_jax import data, progress
from attn_jax.models import build_model
from attn_jax.train.restore import load_params

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ the distance
def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[d]` and unbiased covariance `[d, d]` (float64) of features `[n, d]`, n >= 2."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be [n, d] with n >= 2, got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or inf")
    return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): means `[d]`, covs `[d, d]`.

    As in the TTUR reference code: the matrix square root of sigma1 sigma2 by `scipy.linalg.sqrtm`;
    if it is not finite (singular product), eps * I is added to both covariances first; a complex
    result whose imaginary diagonal is numerically zero (<= 1e-3) keeps its real part.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, mu2 {mu2.shape}, "
                         f"sigma1 {sigma1.shape}, sigma2 {sigma2.shape}")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        log.warning("FID: sigma1 sigma2 is singular; adding %g to the diagonals", eps)
        offset = eps * np.eye(d)
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.max(np.abs(np.diagonal(covmean).imag))
        if imaginary > 1e-3:
            raise ValueError(f"FID: sqrtm(sigma1 sigma2) has an imaginary diagonal of up to "
                             f"{imaginary:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets `[n1, d]` and `[n2, d]` (Gaussians fitted to each)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


# ------------------------------------------------------------------------------ the features
@dataclasses.dataclass
class ClassifierFeatures:
    """Pooled features of a trained classifier: pixels `[n, H, W, C]` -> float32 `[n, d]`.

    Inputs are in stored pixel units ([0, pixel_max], like the dataset's uint8 images), at the
    dataset's native size or the classifier's input size; native-size inputs are resized to the
    input size (bilinear) when the two differ. Inside, the classifier's training normalisation
    (x - mean) / std with the train split's per-channel stats is applied, so generated and real
    images see exactly the same transform.
    """

    config: ml_collections.ConfigDict
    info: data.ImageDatasetInfo
    input_size: tuple[int, int]
    batch_size: int
    _apply: Callable = dataclasses.field(repr=False)
    _params: Any = dataclasses.field(repr=False)

    def __call__(self, pixels: np.ndarray, desc: str = "FID features") -> np.ndarray:
        starts = range(0, len(pixels), self.batch_size)
        with progress.Progress(f"{desc} ({len(pixels)} images)", len(starts),
                               unit="batches") as p:
            return self._features(pixels, p)

    def _features(self, pixels: np.ndarray, p: progress.Progress | None = None) -> np.ndarray:
        pixels = np.asarray(pixels, np.float32)
        h, w, c = self.info.image_shape
        if pixels.ndim != 4 or pixels.shape[3] != c or pixels.shape[1:3] not in (
                (h, w), self.input_size):
            raise ValueError(f"pixels must be [n, H, W, {c}] with H x W the dataset's {h}x{w} or "
                             f"the classifier's input {self.input_size}, got {pixels.shape}")
        out = []
        for start in range(0, len(pixels), self.batch_size):
            chunk = pixels[start:start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:  # one compiled shape: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - n, *chunk.shape[1:]),
                                                        np.float32)])
            out.append(np.asarray(self._apply(self._params, chunk))[:n])
            if p is not None:
                p.update()
        return np.concatenate(out).astype(np.float32)

    def dataset_features(self, split: str = "test", max_examples: int | None = None) -> np.ndarray:
        """Features `[n, d]` of a split of the classifier's dataset, at its native size."""
        cfg = self.config.data
        feats, seen = [], 0
        batches = data.make_iterator(cfg.name, split, global_batch_size=self.batch_size,
                                     train=False, data_dir=cfg.get("data_dir") or None,
                                     normalize="none")
        total = progress.num_items(batches)
        if max_examples is not None and total is not None:
            total = min(total, math.ceil(max_examples / self.batch_size))
        with progress.Progress(f"FID features of {split}", total, unit="batches") as p:
            for batch in batches:
                real = batch["mask"] > 0
                feats.append(self._features(batch["image"][real]))
                seen += int(real.sum())
                p.update()
                if max_examples is not None and seen >= max_examples:
                    break
        out = np.concatenate(feats)
        return out if max_examples is None else out[:max_examples]


def classifier_features(workdir: str, *, step: int | None = None, ema: bool = False,
                        batch_size: int = 256) -> ClassifierFeatures:
    """The feature extractor of a classification run of this repo (`train.py` workdir).

    The run's model is rebuilt and applied with its `features` method (the image-encoder
    contract of `attn_jax.models.protocols`: ViT's class token or mean patch embedding after the
    final norm, or the pre-logits when `representation_size` is set).

    Args:
      workdir: the classification run (config.json + checkpoints/).
      step: checkpoint step (default: the latest); ema: use the run's EMA parameters.
      batch_size: images per jitted call (one compiled shape).
    Raises:
      FileNotFoundError: no config or no completed checkpoint in `workdir`.
      ValueError: the run is not a classification run, or its model cannot return features.
    """
    config, params = load_params(workdir, step, ema=ema)
    if config.get("task") != "classification":
        raise ValueError(f"{workdir} is a {config.get('task')!r} run; FID features need a "
                         "'classification' run")
    info = data.dataset_info(config.data.name, data_dir=config.data.get("data_dir") or None)
    kwargs = dict(config.model)
    name = kwargs.pop("name")
    model = build_model(name, **{**kwargs, "num_classes": info.num_classes})
    if not hasattr(model, "features"):
        raise ValueError(f"model {name!r} has no `features` method (the image-encoder contract "
                         "of attn_jax.models.protocols), so it cannot give FID features")
    size = config.data.get("image_size")
    h, w, c = info.image_shape
    input_size = (int(size), int(size)) if size else (h, w)
    params = jax.device_put(params)
    mean = jnp.asarray(info.mean, jnp.float32)
    std = jnp.asarray(info.std, jnp.float32)

    @jax.jit
    def apply(params: Any, pixels: jax.Array) -> jax.Array:
        if pixels.shape[1:3] != input_size:
            pixels = jax.image.resize(pixels, (pixels.shape[0], *input_size, c), "bilinear")
        features = model.apply({"params": params}, (pixels - mean) / std, train=False,
                               method="features")
        if features.ndim != 2:
            raise ValueError(f"model {name!r}.features returned shape {features.shape}, not "
                             "pooled features [batch, d]")
        return features.astype(jnp.float32)

    return ClassifierFeatures(config, info, input_size, batch_size, apply, params)
