"""Image generation with Gaussian diffusion (DDPM; Ho et al. 2020) and a U-Net.

config.model is the denoiser (`name='unet'` + the U-Net's fields); config.data holds the data and,
since the trainer's own sections are locked, the diffusion settings as plain sub-dicts:

    config.data = dict(
        name='fashion_mnist_idx', image_size=32, resize='pad', flip=False,
        diffusion=dict(schedule='linear', num_timesteps=1000, model_mean_type='epsilon',
                       model_var_type='fixed_large', loss_type='mse'),
        sampling=dict(sampler='ddim', num_steps=50, eta=0.0, num_images=64))
    config.evals = dict(loss=dict(type='loss'), samples=dict(type='samples'),
                        fid=dict(type='fid', classifier_workdir='runs/vit_fashion_mnist',
                                 every_steps=5000))

Training: uniform t and Gaussian noise per example, `GaussianDiffusion.training_losses`, mean over
the batch (Algorithm 1). Eval: the same loss on the test set at fixed per-example (t, noise), plus
a one-sample estimate of the variational bound in bits/dim, L_T + T * L_t at a random t (unbiased
for the full bound of eq. 5). The task feeds the evaluators `samples` (a grid from the EMA
parameters), `fid` (on the features of a classifier trained with this repo) and `bits_per_dim`
(the exact bound over all T steps, also sample.py --bpd).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from attn_jax import data, progress
from attn_jax.data.batcher import CountedBatches
from attn_jax.diffusion import (LOSS_TYPES, MEAN_TYPES, SCHEDULES, VAR_TYPES, GaussianDiffusion,
                                ddim_sample, ddpm_sample, linear_beta_schedule)
from attn_jax.eval import fid as fid_lib
from attn_jax.models import build_model
from attn_jax.tasks.base import Task
from attn_jax.train import sharding as shd
from attn_jax.train.config import parse_section

log = logging.getLogger(__name__)

SAMPLERS = ("ddpm", "ddim")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """config.data.diffusion: the forward process and the loss (`GaussianDiffusion.create`)."""

    schedule: str = "linear"
    num_timesteps: int = 1000
    beta_start: float | None = None      # the linear schedule's endpoints (None: 1e-4, 0.02)
    beta_end: float | None = None
    model_mean_type: str = "epsilon"
    model_var_type: str = "fixed_large"
    loss_type: str = "mse"
    hybrid_lambda: float = 0.001


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """config.data.sampling: the defaults of `DiffusionTask.sample` (and of sample.py)."""

    sampler: str = "ddpm"                # 'ddpm' or 'ddim'
    num_steps: int = 50                  # DDIM steps
    eta: float = 0.0                     # DDIM eta (0 = deterministic)
    num_images: int = 64                 # the default `samples` evaluator's grid (0 = none)
    seed: int = 0
    clip_denoised: bool = True


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """config.data of the diffusion task."""

    name: str                            # fashion_mnist_idx, digits_sklearn, or a tfds dataset
    data_dir: str = ""                   # tfds data dir ('' = $TFDS_DATA_DIR)
    source_dir: str = ""                 # offline builds: the source files ('' = their default)
    train_split: str = "train"
    image_size: int | None = None        # pad or resize to this square size (None = as stored)
    resize: str = "bilinear"             # 'bilinear' or 'pad' (pixels kept exact)
    flip: bool = False                   # random horizontal flips in training
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)


class DiffusionTask(Task):
    """DDPM on an image dataset (`config.data.name`: fashion_mnist_idx, digits_sklearn, cifar10...).

    Images are scaled to [-1, 1]; `image_size` pads (`resize='pad'`, pixels kept exact) or
    resizes (bilinear) them, e.g. 28 -> 32 so that a 4-level U-Net divides the size.
    """

    DataConfig = DataConfig

    def __init__(self, config):
        super().__init__(config)
        cfg = self.data_cfg = parse_section(DataConfig, config.data, "config.data")
        if not cfg.name:
            raise ValueError("config.data.name is required (e.g. 'fashion_mnist_idx')")
        self.diffusion_cfg = dataclasses.asdict(cfg.diffusion)
        self.sampling_cfg = dataclasses.asdict(cfg.sampling)
        self.resize = cfg.resize or "bilinear"
        if self.resize not in ("bilinear", "pad"):
            raise ValueError(f"config.data.resize={self.resize!r}: choose 'bilinear' or 'pad'")
        self._check_sampling(self.sampling_cfg)
        # Fails here, before any compile, when the dataset is missing (the error says what to do).
        self.info = self.image_dataset_info(cfg)
        if not self.info.fixed_size:
            raise ValueError(f"{cfg.name} images vary in size {self.info.image_shape}; diffusion "
                             "needs fixed-size images")
        h, w, c = self.info.image_shape
        size = cfg.image_size
        self.image_shape = (int(size), int(size), c) if size else (h, w, c)
        self.diffusion = self._make_diffusion(self.diffusion_cfg)
        self.dtype = jnp.dtype(config.get("dtype", "float32"))
        self.model = self.build_model()
        self._samplers: dict[Any, Any] = {}   # (mesh, batch, settings) -> jitted sampler
        self._fid_reference: tuple | None = None  # (key, mu, sigma, ClassifierFeatures)

    EVALUATOR_TYPES = frozenset({"loss", "samples", "fid", "bits_per_dim"})

    def default_evals(self) -> dict[str, dict[str, Any]]:
        evals = {"loss": {"type": "loss"}}
        if int(self.sampling_cfg["num_images"]):
            evals["samples"] = {"type": "samples", "num_images": self.sampling_cfg["num_images"],
                                "seed": self.sampling_cfg["seed"]}
        return evals

    # -- checks and model --
    @staticmethod
    def _check_sampling(s: dict[str, Any]) -> None:
        if s["sampler"] not in SAMPLERS:
            raise ValueError(f"config.data.sampling.sampler={s['sampler']!r}: choose {SAMPLERS}")
        if int(s["num_images"]) < 0 or int(s["num_steps"]) < 1 or float(s["eta"]) < 0:
            raise ValueError(f"config.data.sampling needs num_images >= 0, num_steps >= 1 and "
                             f"eta >= 0; got {s}")

    @staticmethod
    def _make_diffusion(d: dict[str, Any]) -> GaussianDiffusion:
        for key, allowed in (("schedule", SCHEDULES), ("model_mean_type", MEAN_TYPES),
                             ("model_var_type", VAR_TYPES), ("loss_type", LOSS_TYPES)):
            if d[key] not in allowed:
                raise ValueError(f"config.data.diffusion.{key}={d[key]!r}: choose one of {allowed}")
        betas = None
        if d["beta_start"] is not None or d["beta_end"] is not None:
            if d["schedule"] != "linear":
                raise ValueError("config.data.diffusion.beta_start / beta_end set the linear "
                                 f"schedule's endpoints; schedule is {d['schedule']!r}")
            betas = linear_beta_schedule(int(d["num_timesteps"]), float(d["beta_start"] or 1e-4),
                                         float(d["beta_end"] or 0.02))
        return GaussianDiffusion.create(
            betas, schedule=d["schedule"], num_timesteps=int(d["num_timesteps"]),
            model_mean_type=d["model_mean_type"], model_var_type=d["model_var_type"],
            loss_type=d["loss_type"], hybrid_lambda=float(d["hybrid_lambda"]))

    def build_model(self) -> nn.Module:
        kwargs = dict(self.config.model)
        name = kwargs.pop("name", None)
        if name is None:
            raise ValueError("config.model.name is required (e.g. 'unet')")
        channels = self.image_shape[-1]
        want = 2 * channels if self.diffusion.model_var_type == "learned_range" else channels
        if kwargs.get("out_channels") not in (None, want):
            raise ValueError(f"config.model.out_channels={kwargs['out_channels']}, but "
                             f"model_var_type={self.diffusion.model_var_type!r} on {channels}-"
                             f"channel images needs {want}")
        kwargs["out_channels"] = want
        return build_model(name, dtype=self.dtype, **kwargs)

    def init_params(self, rng: jax.Array) -> Any:
        x = jnp.zeros((1, *self.image_shape), jnp.float32)
        t = jnp.zeros((1,), jnp.int32)
        return self.model.init({"params": rng}, x, t, train=False)["params"]

    def train_size(self) -> int:
        return self.info.num_examples[self.data_cfg.train_split]

    # -- data --
    def _iterator(self, split: str, train: bool, seed: int, process_index: int,
                  process_count: int, batch_size: int | None = None):
        cfg = self.data_cfg
        return data.make_iterator(
            cfg.name, split, global_batch_size=batch_size or int(self.config.batch_size),
            train=train, seed=seed, process_index=process_index, process_count=process_count,
            data_dir=cfg.data_dir or None, image_size=cfg.image_size,
            resize=self.resize, crop_padding=0,  # a shifted crop would teach black borders
            flip=bool(cfg.flip) if train else False, normalize="minus_one_one")

    def train_iterator(self, *, seed, process_index, process_count):
        return self._iterator(self.data_cfg.train_split, True, seed,
                              process_index, process_count)

    def eval_iterator(self, split, *, process_index, process_count,
                      batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Batches plus 'index' int32: each example's position in the split, which keys its
        evaluation noise (so eval results depend on neither the batch size nor the mesh)."""
        batch = batch_size or int(self.config.batch_size)
        local = batch // process_count
        it = self._iterator(split, False, 0, process_index, process_count, batch)

        def indexed():
            for step, host_batch in enumerate(it):
                start = step * batch + process_index * local
                yield {**host_batch, "index": np.arange(start, start + local, dtype=np.int32)}

        return CountedBatches(indexed(), getattr(it, "num_batches", None))

    # -- losses --
    def _apply(self, params: Any, x: jax.Array, t: jax.Array, rng: jax.Array | None = None):
        if rng is None:
            return self.model.apply({"params": params}, x, t, train=False)
        return self.model.apply({"params": params}, x, t, train=True, rngs={"dropout": rng})

    def loss(self, params, batch, rng, step):
        x0 = batch["image"]
        t_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
        t = self.diffusion.sample_timesteps(t_rng, x0.shape[0])
        noise = jax.random.normal(noise_rng, x0.shape, jnp.float32)
        losses, terms = self.diffusion.training_losses(
            lambda x, s: self._apply(params, x, s, dropout_rng), x0, t, noise)
        return losses.mean(), {k: v.mean() for k, v in terms.items() if k != "loss"}

    def _eval_draws(self, index: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """Per-example t `[b]` and noise `[b, ...]` keyed by the example's index in the split."""
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(index)
        t = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 0), (), 0,
                                                  self.diffusion.num_timesteps))(keys)
        noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), shape[1:]))(keys)
        return t.astype(jnp.int32), noise

    def eval_sums(self, params, batch):
        x0, mask = batch["image"], batch["mask"].astype(jnp.float32)
        t, noise = self._eval_draws(batch["index"], x0.shape)
        x_t = self.diffusion.q_sample(x0, t, noise)
        out = self._apply(params, x_t, t)
        # training_losses re-forms the same x_t from (x0, t, noise): reuse the output computed once.
        _, terms = self.diffusion.training_losses(lambda *_: out, x0, t, noise)
        vb, _ = self.diffusion.vb_terms_bpd(out, x0, x_t, t)
        # L_T + T * L_t with t uniform: an unbiased one-sample estimate of the bound (eq. 5).
        terms["vlb_bpd"] = self.diffusion.num_timesteps * vb + self.diffusion.prior_bpd(x0)
        sums = {k: (v * mask).sum() for k, v in terms.items()}
        return {**sums, "count": mask.sum()}

    # -- sampling --
    def sampler(self, batch_size: int, mesh: Mesh | None = None, *, sampler: str | None = None,
                num_steps: int | None = None, eta: float | None = None):
        """A jitted `(params, rng) -> samples float32 [batch_size, H, W, C]` in [-1, 1].

        Settings default to config.data.sampling. On a mesh whose data-parallel size divides
        batch_size, the batch (and all the sampling work) is split over the data axes;
        otherwise every device computes the whole batch. Built once per (mesh, batch, settings)
        and cached on the task.
        """
        given = dict(sampler=sampler, num_steps=num_steps, eta=eta)
        s = {**self.sampling_cfg, **{k: v for k, v in given.items() if v is not None}}
        self._check_sampling(s)
        cache_key = (mesh, batch_size, s["sampler"], int(s["num_steps"]), float(s["eta"]))
        if cache_key in self._samplers:
            return self._samplers[cache_key]
        shape = (batch_size, *self.image_shape)
        clip = bool(s["clip_denoised"])
        tick = progress.scan_ticker(self.sampler_steps(s["sampler"], s["num_steps"]))

        def sample(params: Any, rng: jax.Array) -> jax.Array:
            model_fn = lambda x, t: self._apply(params, x, t)  # noqa: E731
            if s["sampler"] == "ddpm":
                return ddpm_sample(self.diffusion, model_fn, rng, shape, clip_denoised=clip,
                                   on_step=tick)
            return ddim_sample(self.diffusion, model_fn, rng, shape, num_steps=int(s["num_steps"]),
                               eta=float(s["eta"]), clip_denoised=clip, on_step=tick)

        if mesh is None:
            fn = jax.jit(sample)
        else:
            split = batch_size % shd.data_parallel_size(mesh) == 0
            out = shd.batch_sharding(mesh, 4) if split else NamedSharding(mesh, P())
            fn = jax.jit(sample, out_shardings=out)
        self._samplers[cache_key] = fn
        return fn

    def sampler_steps(self, sampler: str | None = None, num_steps: int | None = None) -> int:
        """Model calls per sample: T for DDPM, num_steps for DDIM (defaults: the config)."""
        sampler = sampler or self.sampling_cfg["sampler"]
        if sampler == "ddpm":
            return self.diffusion.num_timesteps
        return int(num_steps or self.sampling_cfg["num_steps"])

    def generate(self, params: Any, num: int, rng: jax.Array, mesh: Mesh | None = None,
                 batch_size: int | None = None, desc: str = "sampling", **settings: Any
                 ) -> np.ndarray:
        """`num` samples float32 `[num, H, W, C]` in [-1, 1], in batches of `batch_size` (default
        num_images) from one jitted sampler; batch i uses `fold_in(rng, i)`. Progress (`desc`)
        counts sampler steps over all batches."""
        batch_size = batch_size or int(self.sampling_cfg["num_images"]) or num
        fn = self.sampler(batch_size, mesh, **settings)
        steps = self.sampler_steps(settings.get("sampler"), settings.get("num_steps"))
        calls = math.ceil(num / batch_size)
        out = []
        with progress.Progress(f"{desc} ({num} images)", calls * steps, unit="steps") as p:
            for i in range(calls):
                with p.scan(offset=i * steps):
                    out.append(shd.to_host(fn(params, jax.random.fold_in(rng, i))))
                p.update_to((i + 1) * steps)
        return np.concatenate(out)[:num]

    def to_pixels(self, samples: np.ndarray) -> np.ndarray:
        """[-1, 1] samples at the model's size -> the dataset's geometry and pixel units:
        float32 `[n, h, w, c]`, rounded to the stored levels {0, ..., pixel_max}. Padding is
        cropped away ('pad'); a bilinear resize is undone by resizing back."""
        h, w, c = self.info.image_shape
        x = np.asarray(samples, np.float32)
        if x.shape[1:3] != (h, w):
            if self.resize == "pad":
                top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
                x = x[:, top:top + h, left:left + w]
            else:
                x = np.asarray(jax.image.resize(x, (x.shape[0], h, w, c), "bilinear"))
        pixel_max = self.info.pixel_max
        return np.round((np.clip(x, -1.0, 1.0) + 1.0) * (pixel_max / 2.0)).astype(np.float32)

    # -- evaluation beyond eval_sums --
    def _fid_reference_stats(self, classifier_workdir: str | None, split: str,
                             batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, Any]:
        """(mu, sigma, feature extractor) of the reference split on the classifier's features,
        cached per (classifier run, split)."""
        workdir = classifier_workdir
        if not workdir:
            raise ValueError("FID needs a classifier: pass classifier_workdir (the fid "
                             "evaluator's config.evals.NAME.classifier_workdir) to a "
                             "classification run's workdir")
        key = (os.path.abspath(workdir), split)
        if self._fid_reference is None or self._fid_reference[0] != key:
            features = fid_lib.classifier_features(workdir, batch_size=batch_size)
            if features.info.image_shape != self.info.image_shape:
                raise ValueError(f"the classifier in {workdir} was trained on "
                                 f"{features.info.name} {features.info.image_shape} images; this "
                                 f"run generates {self.info.name} {self.info.image_shape}")
            if features.info.name != self.info.name:
                log.warning("FID: classifier trained on %s, samples of %s", features.info.name,
                            self.info.name)
            mu, sigma = fid_lib.feature_statistics(features.dataset_features(split))
            self._fid_reference = (key, mu, sigma, features)
        _, mu, sigma, features = self._fid_reference
        return mu, sigma, features

    def fid(self, params: Any, mesh: Mesh | None = None, *, classifier_workdir: str | None = None,
            num_samples: int = 1000, split: str = "test", feature_batch_size: int = 256,
            samples: np.ndarray | None = None, rng: jax.Array | None = None,
            **settings: Any) -> float:
        """FID of generated images against `split` on the features of a classification run of
        this repo (see attn_jax.eval.fid). Uses `samples` ([-1, 1]) when given, else draws
        `num_samples` with the configured sampler. The reference statistics are cached."""
        mu, sigma, features = self._fid_reference_stats(classifier_workdir, split,
                                                        feature_batch_size)
        if samples is None:
            num = int(num_samples)
            rng = jax.random.PRNGKey(int(self.sampling_cfg["seed"]) + 1) if rng is None else rng
            samples = self.generate(params, num, rng, mesh, desc="FID sampling", **settings)
        generated = features(self.to_pixels(samples), desc="FID features of the samples")
        return fid_lib.frechet_distance(*fid_lib.feature_statistics(generated), mu, sigma)

    def fid_baselines(self, num: int, *, classifier_workdir: str | None = None,
                      split: str = "test", heldout_split: str = "train", seed: int = 0
                      ) -> dict[str, float]:
        """The two ends of the FID scale for `num` images, on the same features and reference
        as `fid`: 'fid_real' for the first `num` real images of `heldout_split` (what a perfect
        generator scores at this sample size: the floor) and 'fid_noise' for `num` images of
        uniform noise over the pixel levels (the ceiling)."""
        if heldout_split == split:
            raise ValueError(f"the held-out images must come from another split than the FID "
                             f"reference ({split!r}); e.g. reference 'train', held out 'test'")
        if num < 2:
            raise ValueError(f"FID baselines need num >= 2 images, got {num}")
        mu, sigma, features = self._fid_reference_stats(classifier_workdir, split)
        real = features.dataset_features(heldout_split, max_examples=num)
        if len(real) < num:
            raise ValueError(f"split {heldout_split!r} has {len(real)} images, fewer than {num}")
        noise = np.random.default_rng(seed).integers(
            0, self.info.pixel_max + 1, size=(num, *self.info.image_shape)).astype(np.float32)
        noise_features = features(noise, desc="FID features of uniform noise")
        return {name: fid_lib.frechet_distance(*fid_lib.feature_statistics(f), mu, sigma)
                for name, f in (("fid_real", real), ("fid_noise", noise_features))}

    @property
    def bpd_scan_steps(self) -> int:
        """Model calls per batch of `bpd_terms` (its progress ticks): all T steps."""
        return self.diffusion.num_timesteps

    def bpd_terms(self, params: Any, x0: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        """Per-example full variational bound (eq. 5) over all T steps, in bits/dim: 'bpd'
        (total), 'prior_bpd' (L_T), 'decoder_bpd' (L_0), each `[batch]`. The discretised
        decoder assumes 256 levels (eq. 13), so for data with fewer levels (the sklearn digits:
        17) the number is not a true code length."""
        out = self.diffusion.bits_per_dim(lambda x, t: self._apply(params, x, t), x0, rng,
                                          on_step=progress.scan_ticker(self.bpd_scan_steps))
        return {"bpd": out["total_bpd"], "prior_bpd": out["prior_bpd"],
                "decoder_bpd": out["vb"][:, 0]}

    def bits_per_dim(self, params: Any, *, split: str = "test", max_examples: int | None = None,
                     batch_size: int = 64, seed: int = 0, mesh: Mesh | None = None
                     ) -> dict[str, float]:
        """`bpd_terms` averaged over the first `max_examples` (default all) images of `split`
        (the bits_per_dim evaluator's loop): 'bpd', 'prior_bpd', 'decoder_bpd', 'num_examples'."""
        from attn_jax.eval.evaluators import bits_per_dim

        return bits_per_dim(self, params, split=split, max_examples=max_examples,
                            batch_size=batch_size, seed=seed, mesh=mesh)
