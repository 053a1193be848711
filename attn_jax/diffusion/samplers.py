"""Samplers for a trained diffusion model: ancestral DDPM and DDIM, each one `lax.scan`.

Both are pure functions of (model_fn, rng, shape), so the caller jits them with the parameters
as an argument and may shard the batch dimension through jit's in/out shardings (`on_step`, a
progress ticker such as `attn_jax.progress.scan_ticker`, is the only host callback):

    sample = jax.jit(
        lambda params, rng: ddpm_sample(
            diffusion, lambda x, t: model.apply(params, x, t, train=False), rng, shape),
        out_shardings=NamedSharding(mesh, P('data')))

Every random draw is derived from `rng` (split, then `fold_in(t)`), so a seed fixes the samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.diffusion.gaussian_diffusion import GaussianDiffusion, ModelFn

Array = jax.Array


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"sample shape must be [batch, ..., channels], sizes >= 1; got {shape}")
    return shape


def _initial_noise(rng: Array, shape: tuple[int, ...], x_T: Array | None) -> Array:
    if x_T is None:
        return jax.random.normal(rng, shape, jnp.float32)
    if x_T.shape != shape:
        raise ValueError(f"x_T shape {x_T.shape} != sample shape {shape}")
    return x_T.astype(jnp.float32)


def ddpm_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    rng: Array,
    shape: Sequence[int],
    *,
    x_T: Array | None = None,
    clip_denoised: bool = True,
    clip_output: bool = True,
    on_step: Callable[[Array], None] | None = None,
) -> Array:
    """Ancestral sampling over all T steps (Ho et al. 2020, Algorithm 2).

    x_{t-1} = mu_theta(x_t, t) + sigma_t z, z ~ N(0, I), with no noise on the last step.

    Args:
      diffusion: the process (its model_mean_type / model_var_type say how to read the model).
      model_fn: `(x_t [batch, ...], t int32 [batch]) -> model output`.
      rng: PRNG key; split once into the key of x_T and the key whose `fold_in(t)` draws the
        noise of step t.
      shape: `[batch, ..., channels]` of the samples.
      x_T: optional starting noise `shape` (else drawn from rng).
      clip_denoised: clip each predicted x_0 to [-1, 1] before forming the mean.
      clip_output: clip the returned x_0 to [-1, 1].
      on_step: called inside the scan with the index of each step taken (0 first), e.g. a
        progress ticker.

    Returns:
      float32 samples `shape`.
    """
    shape = _check_shape(shape)
    x_rng, rng = jax.random.split(rng)
    x = _initial_noise(x_rng, shape, x_T)

    def step(x: Array, t_scalar: Array) -> tuple[Array, None]:
        t = jnp.full((shape[0],), t_scalar, dtype=jnp.int32)
        out = diffusion.p_mean_variance(model_fn(x, t), x, t, clip_denoised=clip_denoised)
        noise = jax.random.normal(jax.random.fold_in(rng, t_scalar), shape, jnp.float32)
        nonzero = (t_scalar > 0).astype(jnp.float32)  # no noise when t == 0
        if on_step is not None:
            on_step(diffusion.num_timesteps - 1 - t_scalar)
        return out.mean + nonzero * jnp.exp(0.5 * out.log_variance) * noise, None

    ts = jnp.arange(diffusion.num_timesteps - 1, -1, -1, dtype=jnp.int32)
    x, _ = jax.lax.scan(step, x, ts)
    return jnp.clip(x, -1.0, 1.0) if clip_output else x


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """`num_steps` increasing steps from 0 to T - 1, evenly spaced (rounded): int32 `[n]`."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must lie in [1, T={num_timesteps}], got {num_steps}")
    if num_steps == 1:
        return np.array([num_timesteps - 1], dtype=np.int32)
    # Spacing (T-1)/(n-1) >= 1, so rounding keeps the steps distinct.
    return np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int32)


def ddim_sample(
    diffusion: GaussianDiffusion,
    model_fn: ModelFn,
    rng: Array,
    shape: Sequence[int],
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    x_T: Array | None = None,
    clip_denoised: bool = True,
    clip_output: bool = True,
    on_step: Callable[[Array], None] | None = None,
) -> Array:
    """DDIM sampling on `num_steps` strided steps (Song et al. 2021, eq. 12 and 16).

    From step t to the previous kept step s (abar_s = 1 after the last step):
        x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z,
        sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s).
    eta = 0 is the deterministic DDIM; eta = 1 with every step is ancestral DDPM with
    beta-tilde variances. The model's variance output (if any) is ignored.

    Args:
      num_steps: strided steps, from T - 1 down to 0 (`ddim_timesteps`).
      eta: stochasticity, >= 0.
      other arguments: as `ddpm_sample` (`on_step` gets 0 .. num_steps - 1).

    Returns:
      float32 samples `shape`.
    """
    shape = _check_shape(shape)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    steps = ddim_timesteps(diffusion.num_timesteps, num_steps)
    prev = np.append(-1, steps[:-1]).astype(np.int32)  # -1: past the last step, abar = 1
    x_rng, rng = jax.random.split(rng)
    x = _initial_noise(x_rng, shape, x_T)

    def step(x: Array, ts: tuple[Array, Array, Array]) -> tuple[Array, None]:
        i, t_scalar, s_scalar = ts
        t = jnp.full((shape[0],), t_scalar, dtype=jnp.int32)
        out = diffusion.p_mean_variance(model_fn(x, t), x, t, clip_denoised=clip_denoised)
        eps = diffusion.predict_eps_from_xstart(x, t, out.pred_xstart)
        abar_t = diffusion.alphas_cumprod[t_scalar]
        abar_s = jnp.where(s_scalar >= 0, diffusion.alphas_cumprod[jnp.maximum(s_scalar, 0)], 1.0)
        sigma = eta * jnp.sqrt((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s))
        noise = jax.random.normal(jax.random.fold_in(rng, t_scalar), shape, jnp.float32)
        x = (
            jnp.sqrt(abar_s) * out.pred_xstart
            + jnp.sqrt(jnp.maximum(1.0 - abar_s - sigma**2, 0.0)) * eps
            + sigma * noise
        )
        if on_step is not None:
            on_step(i)
        return x, None

    x, _ = jax.lax.scan(step, x, (jnp.arange(len(steps), dtype=jnp.int32),
                                  jnp.asarray(steps[::-1]), jnp.asarray(prev[::-1])))
    return jnp.clip(x, -1.0, 1.0) if clip_output else x
