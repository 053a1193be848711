"""Gaussian diffusion (DDPM): schedules, the forward / reverse process and losses, samplers."""

from attn_jax.diffusion.gaussian_diffusion import (
    LOSS_TYPES,
    MEAN_TYPES,
    VAR_TYPES,
    GaussianDiffusion,
    MeanVariance,
    PMeanVariance,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from attn_jax.diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample
from attn_jax.diffusion.schedules import (
    SCHEDULES,
    betas_from_alpha_bar,
    cosine_beta_schedule,
    get_beta_schedule,
    linear_beta_schedule,
)

__all__ = [
    "LOSS_TYPES",
    "MEAN_TYPES",
    "SCHEDULES",
    "VAR_TYPES",
    "GaussianDiffusion",
    "MeanVariance",
    "PMeanVariance",
    "betas_from_alpha_bar",
    "cosine_beta_schedule",
    "ddim_sample",
    "ddim_timesteps",
    "ddpm_sample",
    "discretized_gaussian_log_likelihood",
    "get_beta_schedule",
    "linear_beta_schedule",
    "mean_flat",
    "normal_kl",
]
