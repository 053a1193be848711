"""Noise schedules beta_1..beta_T for Gaussian diffusion, computed in float64 NumPy.

Schedules are host-side constants: they are built once, in float64, and only the derived
quantities handed to the device are cast to float32 (see `gaussian_diffusion.GaussianDiffusion`).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

SCHEDULES = ("linear", "cosine")


def linear_beta_schedule(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
    """Betas rising linearly from `beta_start` to `beta_end` (Ho et al. 2020, Sec. 4).

    Returns:
      float64 array `[num_timesteps]`.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def betas_from_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Betas whose cumulative product of (1 - beta) follows `alpha_bar(t)`, t in [0, 1].

    beta_t = min(1 - alpha_bar(t / T) / alpha_bar((t - 1) / T), max_beta); the clip keeps
    beta away from 1 near t = T where alpha_bar -> 0 (Nichol & Dhariwal 2021, Sec. 3.2).

    Returns:
      float64 array `[num_timesteps]`.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    t = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    abar = np.array([alpha_bar(float(s)) for s in t], dtype=np.float64)
    return np.minimum(1.0 - abar[1:] / abar[:-1], max_beta)


def cosine_beta_schedule(
    num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> np.ndarray:
    """Cosine schedule alpha_bar(t) = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) * pi/2)^2.

    Nichol & Dhariwal 2021, eq. 17; betas clipped at `max_beta`.

    Returns:
      float64 array `[num_timesteps]`.
    """
    if s <= 0.0:
        raise ValueError(f"cosine schedule offset s must be > 0, got {s}")
    f = lambda u: math.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2  # noqa: E731
    return betas_from_alpha_bar(num_timesteps, f, max_beta)


def get_beta_schedule(name: str, num_timesteps: int = 1000) -> np.ndarray:
    """Betas `[num_timesteps]` (float64) of the schedule called `name` ('linear' or 'cosine').

    'linear' keeps the paper's endpoints 1e-4 .. 0.02 whatever T is, as Ho et al. do.
    """
    if name == "linear":
        return linear_beta_schedule(num_timesteps)
    if name == "cosine":
        return cosine_beta_schedule(num_timesteps)
    raise ValueError(f"unknown beta schedule {name!r}; expected one of {SCHEDULES}")
