"""Gaussian diffusion (Ho et al. 2020, "Denoising Diffusion Probabilistic Models").

Forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (eq. 4), its posterior
q(x_{t-1} | x_t, x_0) (eqs. 6-7), the reverse model p(x_{t-1} | x_t) with epsilon / x_0 / v
parameterised means and fixed or learned variances (Nichol & Dhariwal 2021), the simple and
variational losses (eq. 5, 14) and the full variational bound in bits per dimension.

Time is 0-based: index t in [0, T) here is step t + 1 of the paper, so `alphas_cumprod[0]` is
abar_1 and `alphas_cumprod[T - 1]` is abar_T. Images are channels-last, `[batch, ..., channels]`,
scaled to [-1, 1]. A model is any callable `model_fn(x_t, t) -> output` with x_t `[batch, ...]` and
t int32 `[batch]`; it closes over its parameters (and dropout rng) so every function here stays a
pure, jittable function of arrays.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.diffusion import schedules

Array = jax.Array
ModelFn = Callable[[Array, Array], Array]

MEAN_TYPES = ("epsilon", "x0", "v")
VAR_TYPES = ("fixed_small", "fixed_large", "learned_range")
LOSS_TYPES = ("mse", "kl", "hybrid")


def mean_flat(x: Array) -> Array:
    """Mean over every axis but the first: `[batch, ...]` -> `[batch]`."""
    return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats (broadcasts)."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + jnp.exp(logvar1 - logvar2)
        + jnp.square(mean1 - mean2) * jnp.exp(-logvar2)
    )


def discretized_gaussian_log_likelihood(x: Array, means: Array, log_scales: Array) -> Array:
    """Elementwise log P(bin of x) under N(means, exp(log_scales)^2), in nats.

    Ho et al. 2020 eq. 13: data in [-1, 1] on 256 levels; the bin of x is [x - 1/255, x + 1/255],
    except that the edge bins of x = -1 and x = 1 extend to -inf and +inf. The interior bin mass
    Phi(u) - Phi(l) is taken in log space on the side of the mean where both CDFs are small, so it
    keeps its precision in the tails without the clamps of a direct difference.
    """
    centered = x - means
    inv_stdv = jnp.exp(-log_scales)
    upper = inv_stdv * (centered + 1.0 / 255.0)
    lower = inv_stdv * (centered - 1.0 / 255.0)
    log_cdf_upper = jax.scipy.special.log_ndtr(upper)
    log_sf_lower = jax.scipy.special.log_ndtr(-lower)
    # Phi(u) - Phi(l) = Phi(-l) - Phi(-u): reflect bins right of the mean into the left tail.
    flip = centered > 0
    a = jnp.where(flip, -lower, upper)
    b = jnp.where(flip, -upper, lower)
    log_a = jax.scipy.special.log_ndtr(a)
    log_b = jax.scipy.special.log_ndtr(b)
    # The cap keeps log finite (and its gradient) if the bin is far below float32 resolution.
    log_mid = log_a + jnp.log(-jnp.expm1(jnp.minimum(log_b - log_a, -1e-30)))
    return jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_sf_lower, log_mid))


class MeanVariance(NamedTuple):
    """Mean, variance and log-variance of a diagonal Gaussian, each `[batch, ...]`."""

    mean: Array
    variance: Array
    log_variance: Array


class PMeanVariance(NamedTuple):
    """The reverse step p(x_{t-1} | x_t) and the x_0 it implies, each `[batch, ...]`."""

    mean: Array
    variance: Array
    log_variance: Array
    pred_xstart: Array


def _f32(x: np.ndarray) -> Array:
    return jnp.asarray(x, dtype=jnp.float32)


@flax.struct.dataclass
class GaussianDiffusion:
    """Schedule-derived constants `[T]` (float32, computed in float64) plus the model's type.

    A frozen pytree: pass it into `jax.jit` as an argument or close over it. Build it with
    `GaussianDiffusion.create`. The string / float fields are static (not traced):

    Attributes:
      model_mean_type: what the model predicts: 'epsilon' (Ho et al.), 'x0', or 'v'.
      model_var_type: 'fixed_small' (beta-tilde_t), 'fixed_large' (beta_t), or 'learned_range'
        (the model outputs 2C channels; Nichol & Dhariwal 2021).
      loss_type: 'mse' (L_simple), 'kl' (the bound), 'hybrid' (L_simple + lambda L_vlb).
      hybrid_lambda: the lambda of 'hybrid' (Nichol & Dhariwal: 0.001).
    """

    betas: Array
    alphas: Array
    alphas_cumprod: Array
    alphas_cumprod_prev: Array
    sqrt_alphas_cumprod: Array
    sqrt_one_minus_alphas_cumprod: Array
    log_one_minus_alphas_cumprod: Array
    sqrt_recip_alphas_cumprod: Array
    sqrt_recipm1_alphas_cumprod: Array
    posterior_variance: Array
    posterior_log_variance_clipped: Array
    posterior_mean_coef1: Array
    posterior_mean_coef2: Array
    log_betas: Array
    model_mean_type: str = flax.struct.field(pytree_node=False, default="epsilon")
    model_var_type: str = flax.struct.field(pytree_node=False, default="fixed_large")
    loss_type: str = flax.struct.field(pytree_node=False, default="mse")
    hybrid_lambda: float = flax.struct.field(pytree_node=False, default=0.001)

    def __post_init__(self):
        for name, value, allowed in (
            ("model_mean_type", self.model_mean_type, MEAN_TYPES),
            ("model_var_type", self.model_var_type, VAR_TYPES),
            ("loss_type", self.loss_type, LOSS_TYPES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
        learned = self.model_var_type == "learned_range"
        if learned and self.loss_type == "mse":
            raise ValueError(
                "model_var_type='learned_range' gets no training signal from loss_type='mse'; "
                "use 'hybrid' or 'kl'"
            )
        if self.loss_type == "hybrid" and not learned:
            raise ValueError(
                f"loss_type='hybrid' trains a learned variance; model_var_type is "
                f"{self.model_var_type!r}, use 'learned_range' (or loss_type 'mse' / 'kl')"
            )

    @classmethod
    def create(
        cls,
        betas: np.ndarray | None = None,
        *,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        model_mean_type: str = "epsilon",
        model_var_type: str = "fixed_large",
        loss_type: str = "mse",
        hybrid_lambda: float = 0.001,
    ) -> "GaussianDiffusion":
        """From explicit `betas` `[T]`, else from `schedule` ('linear' | 'cosine') with T steps."""
        if betas is None:
            betas = schedules.get_beta_schedule(schedule, num_timesteps)
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.shape[0] < 2:
            raise ValueError(f"betas must be 1-D with at least 2 steps, got shape {betas.shape}")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError(f"betas must lie in (0, 1), got min {betas.min()} max {betas.max()}")
        alphas = 1.0 - betas
        abar = np.cumprod(alphas)
        abar_prev = np.append(1.0, abar[:-1])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)  # eq. 7, beta-tilde
        return cls(
            betas=_f32(betas),
            alphas=_f32(alphas),
            alphas_cumprod=_f32(abar),
            alphas_cumprod_prev=_f32(abar_prev),
            sqrt_alphas_cumprod=_f32(np.sqrt(abar)),
            sqrt_one_minus_alphas_cumprod=_f32(np.sqrt(1.0 - abar)),
            log_one_minus_alphas_cumprod=_f32(np.log(1.0 - abar)),
            sqrt_recip_alphas_cumprod=_f32(np.sqrt(1.0 / abar)),
            sqrt_recipm1_alphas_cumprod=_f32(np.sqrt(1.0 / abar - 1.0)),
            posterior_variance=_f32(post_var),
            # beta-tilde_1 = 0: clip the log at t = 0 to the value at t = 1.
            posterior_log_variance_clipped=_f32(np.log(np.append(post_var[1], post_var[1:]))),
            posterior_mean_coef1=_f32(betas * np.sqrt(abar_prev) / (1.0 - abar)),
            posterior_mean_coef2=_f32((1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)),
            log_betas=_f32(np.log(betas)),
            model_mean_type=model_mean_type,
            model_var_type=model_var_type,
            loss_type=loss_type,
            hybrid_lambda=float(hybrid_lambda),
        )

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    # ---------------------------------------------------------------- helpers

    def _at(self, coef: Array, t: Array, x: Array) -> Array:
        """coef[t] `[batch]` reshaped to broadcast against x `[batch, ...]`."""
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape [batch]={x.shape[:1]}, got {t.shape}")
        if not jnp.issubdtype(t.dtype, jnp.integer):
            raise ValueError(f"t must be an integer timestep index, got dtype {t.dtype}")
        return coef[t].reshape(t.shape + (1,) * (x.ndim - 1))

    def sample_timesteps(self, rng: Array, batch_size: int) -> Array:
        """Uniform t in [0, T): int32 `[batch_size]` (Ho et al. Algorithm 1)."""
        return jax.random.randint(rng, (batch_size,), 0, self.num_timesteps, dtype=jnp.int32)

    # ---------------------------------------------------------------- forward process q

    def q_mean_variance(self, x_start: Array, t: Array) -> MeanVariance:
        """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), eq. 4."""
        mean = self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
        # exp(log(1 - abar)) rather than 1 - abar: float32 cancels digits when abar ~ 1.
        log_var = jnp.broadcast_to(
            self._at(self.log_one_minus_alphas_cumprod, t, x_start), x_start.shape
        )
        return MeanVariance(mean, jnp.exp(log_var), log_var)

    def q_sample(self, x_start: Array, t: Array, noise: Array) -> Array:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, in closed form (eq. 4)."""
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {noise.shape} != x_start shape {x_start.shape}")
        return (
            self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
            + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start: Array, x_t: Array, t: Array) -> MeanVariance:
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde_t, beta-tilde_t I), eqs. 6-7 (log-var clipped)."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start shape {x_start.shape} != x_t shape {x_t.shape}")
        mean = (
            self._at(self.posterior_mean_coef1, t, x_t) * x_start
            + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        )
        var = jnp.broadcast_to(self._at(self.posterior_variance, t, x_t), x_t.shape)
        log_var = jnp.broadcast_to(self._at(self.posterior_log_variance_clipped, t, x_t), x_t.shape)
        return MeanVariance(mean, var, log_var)

    # ---------------------------------------------------------------- parameterisations

    def predict_xstart_from_eps(self, x_t: Array, t: Array, eps: Array) -> Array:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), eq. 4 solved for x_0."""
        return (
            self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: Array, t: Array, pred_xstart: Array) -> Array:
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)."""
        return (
            self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_xstart
        ) / self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t)

    def predict_xstart_from_v(self, x_t: Array, t: Array, v: Array) -> Array:
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v (Salimans & Ho 2022, Sec. 4)."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, x_t) * x_t
            - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v
        )

    def v_target(self, x_start: Array, noise: Array, t: Array) -> Array:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
        return (
            self._at(self.sqrt_alphas_cumprod, t, x_start) * noise
            - self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start) * x_start
        )

    def model_target(self, x_start: Array, noise: Array, t: Array) -> Array:
        """What the model's mean output should equal: eps, x_0 or v, by `model_mean_type`."""
        if self.model_mean_type == "epsilon":
            return noise
        if self.model_mean_type == "x0":
            return x_start
        return self.v_target(x_start, noise, t)

    # ---------------------------------------------------------------- reverse process p

    def split_model_output(self, model_output: Array, x_t: Array) -> tuple[Array, Array | None]:
        """Splits an output `[batch, ..., C or 2C]` into (mean part, variance part or None)."""
        channels = x_t.shape[-1]
        if self.model_var_type == "learned_range":
            want = x_t.shape[:-1] + (2 * channels,)
            if model_output.shape != want:
                raise ValueError(
                    f"learned_range needs model output {want} (2x channels of x_t {x_t.shape}), "
                    f"got {model_output.shape}"
                )
            return model_output[..., :channels], model_output[..., channels:]
        if model_output.shape != x_t.shape:
            raise ValueError(
                f"model output shape {model_output.shape} != x_t shape {x_t.shape} "
                f"(model_var_type {self.model_var_type!r})"
            )
        return model_output, None

    def p_mean_variance(
        self, model_output: Array, x_t: Array, t: Array, *, clip_denoised: bool = True
    ) -> PMeanVariance:
        """p(x_{t-1} | x_t) from the model output at (x_t, t).

        The mean is the posterior mean q(x_{t-1} | x_t, x_0 = pred_xstart) (eq. 7 with x_0
        predicted, equivalent to eq. 11 for eps-prediction), with pred_xstart clipped to [-1, 1]
        when `clip_denoised`. Variance: beta-tilde_t ('fixed_small'), beta_t ('fixed_large', with
        beta-tilde_2 at t = 0 as in the reference code) or exp(v log beta_t + (1 - v) log
        beta-tilde_t) with v = (out + 1) / 2 ('learned_range', Nichol & Dhariwal eq. 15).

        Args:
          model_output: `[batch, ..., C]`, or `[batch, ..., 2C]` for 'learned_range'.
          x_t: `[batch, ..., C]`.
          t: int `[batch]`.
        """
        mean_out, var_out = self.split_model_output(model_output, x_t)
        if self.model_var_type == "fixed_small":
            log_var = self._at(self.posterior_log_variance_clipped, t, x_t)
            var = self._at(self.posterior_variance, t, x_t)
        elif self.model_var_type == "fixed_large":
            log_var = self._at(
                self.log_betas.at[0].set(self.posterior_log_variance_clipped[0]), t, x_t
            )
            var = jnp.exp(log_var)
        else:
            frac = (var_out.astype(jnp.float32) + 1.0) / 2.0
            min_log = self._at(self.posterior_log_variance_clipped, t, x_t)
            max_log = self._at(self.log_betas, t, x_t)
            log_var = frac * max_log + (1.0 - frac) * min_log
            var = jnp.exp(log_var)
        log_var = jnp.broadcast_to(log_var, x_t.shape)
        var = jnp.broadcast_to(var, x_t.shape)

        mean_out = mean_out.astype(jnp.float32)
        if self.model_mean_type == "epsilon":
            pred_xstart = self.predict_xstart_from_eps(x_t, t, mean_out)
        elif self.model_mean_type == "x0":
            pred_xstart = mean_out
        else:
            pred_xstart = self.predict_xstart_from_v(x_t, t, mean_out)
        if clip_denoised:
            pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
        mean = self.q_posterior_mean_variance(pred_xstart, x_t, t).mean
        return PMeanVariance(mean, var, log_var, pred_xstart)

    # ---------------------------------------------------------------- losses

    def vb_terms_bpd(
        self, model_output: Array, x_start: Array, x_t: Array, t: Array
    ) -> tuple[Array, Array]:
        """One term of the variational bound, eq. 5, in bits per dimension: `[batch]`.

        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the decoder
        L_0 = -log p(x_0 | x_1) (discretised Gaussian, eq. 13) at t = 0; both averaged over
        dimensions and divided by log 2. Also returns the (unclipped) pred_xstart.
        """
        true = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true.mean, true.log_variance, out.mean, out.log_variance))
        nll = -mean_flat(
            discretized_gaussian_log_likelihood(x_start, out.mean, 0.5 * out.log_variance)
        )
        return jnp.where(t == 0, nll, kl) / math.log(2.0), out.pred_xstart

    def prior_bpd(self, x_start: Array) -> Array:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits per dimension, `[batch]`."""
        t = jnp.full((x_start.shape[0],), self.num_timesteps - 1, dtype=jnp.int32)
        q = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(q.mean, q.log_variance, 0.0, 0.0)) / math.log(2.0)

    def training_losses(
        self, model_fn: ModelFn, x_start: Array, t: Array, noise: Array
    ) -> tuple[Array, dict[str, Array]]:
        """Per-example loss `[batch]` and its terms, by `loss_type`.

        'mse':    L_simple = mean ||target - model||^2 with target eps / x_0 / v (eq. 14).
        'kl':     T * L_t in bits/dim, an unbiased estimate of sum_{t<T} L_t for uniform t.
        'hybrid': L_simple + hybrid_lambda * T * L_t where L_t sees the mean output through a
                  stop-gradient, so the bound trains only the variance (Nichol & Dhariwal eq. 16).

        Args:
          model_fn: `(x_t [batch, ...], t [batch]) -> [batch, ..., C or 2C]`.
          x_start: data `[batch, ..., C]` in [-1, 1].
          t: int `[batch]` in [0, T).
          noise: standard normal, shape of x_start.
        """
        x_t = self.q_sample(x_start, t, noise)
        model_output = model_fn(x_t, t)
        mean_out, var_out = self.split_model_output(model_output, x_t)
        terms: dict[str, Array] = {}
        if self.loss_type in ("mse", "hybrid"):
            target = self.model_target(x_start, noise, t)
            terms["mse"] = mean_flat(jnp.square(target - mean_out.astype(jnp.float32)))
        if self.loss_type in ("kl", "hybrid"):
            if self.loss_type == "hybrid":
                model_output = jnp.concatenate([jax.lax.stop_gradient(mean_out), var_out], -1)
            terms["vb"], _ = self.vb_terms_bpd(model_output, x_start, x_t, t)
        if self.loss_type == "mse":
            loss = terms["mse"]
        elif self.loss_type == "kl":
            loss = self.num_timesteps * terms["vb"]
        else:
            loss = terms["mse"] + self.hybrid_lambda * self.num_timesteps * terms["vb"]
        terms["loss"] = loss
        return loss, terms

    def bits_per_dim(self, model_fn: ModelFn, x_start: Array, rng: Array,
                     on_step: Callable[[Array], None] | None = None) -> dict[str, Array]:
        """The full variational bound L_T + sum_t L_{t-1} in bits/dim (Ho et al. Table 2, NLL).

        One `lax.scan` over all T steps; step t draws its noise from `fold_in(rng, t)`.
        `on_step(t)` is called inside it at each step (e.g. a progress ticker).

        Returns:
          'total_bpd' `[batch]`, 'prior_bpd' `[batch]`, and per step `[batch, T]` (t ascending):
          'vb' (L_{t-1}, bits/dim), 'xstart_mse' and 'mse' (eps-prediction error).
        """

        def step(carry: None, t_scalar: Array) -> tuple[None, dict[str, Array]]:
            t = jnp.full((x_start.shape[0],), t_scalar, dtype=jnp.int32)
            noise = jax.random.normal(jax.random.fold_in(rng, t_scalar), x_start.shape)
            x_t = self.q_sample(x_start, t, noise)
            vb, pred_xstart = self.vb_terms_bpd(model_fn(x_t, t), x_start, x_t, t)
            eps = self.predict_eps_from_xstart(x_t, t, pred_xstart)
            if on_step is not None:
                on_step(t_scalar)
            return carry, {
                "vb": vb,
                "xstart_mse": mean_flat(jnp.square(pred_xstart - x_start)),
                "mse": mean_flat(jnp.square(eps - noise)),
            }

        ts = jnp.arange(self.num_timesteps, dtype=jnp.int32)
        _, per_t = jax.lax.scan(step, None, ts)
        per_t = {k: v.T for k, v in per_t.items()}  # [T, batch] -> [batch, T]
        prior = self.prior_bpd(x_start)
        return {"total_bpd": per_t["vb"].sum(axis=1) + prior, "prior_bpd": prior, **per_t}
