"""Position encodings: sinusoidal (1-D), learned, 2-D sin-cos and rotary (RoPE).

All functions are pure and jit-friendly; shapes are static Python ints unless a docstring says
otherwise. `LearnedPositionEmbedding` is the only module (it owns a parameter); `resize_posemb`
resamples a trained table to another patch grid (NumPy, for loading checkpoints).
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage

Array = jax.Array
Initializer = Callable[..., Array]


def timing_signal(
    positions: Array,
    dim: int,
    min_timescale: float = 1.0,
    max_timescale: float = 1.0e4,
    dtype: jnp.dtype = jnp.float32,
) -> Array:
    """Sinusoidal encoding of arbitrary (possibly traced) positions.

    The tensor2tensor `get_timing_signal_1d` closed form (Vaswani et al. 2017, sec. 3.5, with
    sines in the first half of the channels and cosines in the second):
        inc = log(max_timescale / min_timescale) / max(dim // 2 - 1, 1)
        signal[p, i]           = sin(p * min_timescale * exp(-i * inc)),  i < dim // 2
        signal[p, dim//2 + i]  = cos(p * min_timescale * exp(-i * inc))
    An odd `dim` gets one trailing zero channel.

    Args:
      positions: any shape `[...]`, integer or float positions.
      dim: number of channels (>= 2).
    Returns:
      `[..., dim]` in `dtype`.
    """
    if dim < 2:
        raise ValueError(f"timing_signal needs dim >= 2, got dim={dim}")
    if min_timescale <= 0 or max_timescale < min_timescale:
        raise ValueError(
            "timing_signal needs 0 < min_timescale <= max_timescale, got "
            f"min_timescale={min_timescale}, max_timescale={max_timescale}"
        )
    num_timescales = dim // 2
    increment = math.log(max_timescale / min_timescale) / max(num_timescales - 1, 1)
    inv_timescales = min_timescale * jnp.exp(
        jnp.arange(num_timescales, dtype=jnp.float32) * -increment
    )
    scaled = jnp.asarray(positions, jnp.float32)[..., None] * inv_timescales
    signal = jnp.concatenate([jnp.sin(scaled), jnp.cos(scaled)], axis=-1)
    if dim % 2:
        signal = jnp.pad(signal, [(0, 0)] * (signal.ndim - 1) + [(0, 1)])
    return signal.astype(dtype)


def sinusoidal_positions(
    length: int,
    dim: int,
    min_timescale: float = 1.0,
    max_timescale: float = 1.0e4,
    dtype: jnp.dtype = jnp.float32,
    *,
    start: int | Array = 0,
) -> Array:
    """Sinusoidal table for positions `start, ..., start + length - 1`: `[length, dim]`.

    Equal to tensor2tensor's `get_timing_signal_1d(length, dim, min_timescale, max_timescale,
    start_index=start)[0]`; see `timing_signal` for the formula. `start` may be traced (decoding).
    """
    if length < 0:
        raise ValueError(f"sinusoidal_positions needs length >= 0, got length={length}")
    return timing_signal(
        jnp.arange(length) + start, dim, min_timescale, max_timescale, dtype=dtype
    )


class LearnedPositionEmbedding(nn.Module):
    """Adds a learned table `pos_embedding` `[1, max_length, dim]` to `[batch, length, dim]`.

    As in ViT (Dosovitskiy et al. 2021, eq. 1) and BERT. Without `positions` the input length must
    equal `max_length` (a mismatch usually means a changed image size or sequence length and is
    an error, not a silent truncation). With `positions` (`[length]` or `[batch, length]` ints,
    e.g. `offset + arange(length)` while decoding) the table is gathered at those positions.

    Attributes:
      max_length: rows of the table.
      embedding_init: initializer of the table (ViT: normal(stddev=0.02)).
      dtype: compute dtype of the output (default: promote inputs with the table).
      param_dtype: storage dtype of the table.
    """

    max_length: int
    embedding_init: Initializer = nn.initializers.normal(stddev=0.02)
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, inputs: Array, *, positions: Array | None = None) -> Array:
        if inputs.ndim != 3:
            raise ValueError(
                f"LearnedPositionEmbedding expects inputs [batch, length, dim], got shape "
                f"{inputs.shape}"
            )
        length, dim = inputs.shape[1], inputs.shape[2]
        table = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(self.embedding_init, (None, None, "embed")),
            (1, self.max_length, dim),
            self.param_dtype,
        )
        if positions is None:
            if length != self.max_length:
                raise ValueError(
                    f"LearnedPositionEmbedding: inputs of shape {inputs.shape} have length "
                    f"{length} but pos_embedding has shape {(1, self.max_length, dim)}; pass "
                    "`positions` to embed a shorter or offset sequence"
                )
            pos = table
        else:
            positions = jnp.asarray(positions)
            if positions.ndim not in (1, 2) or positions.shape[-1] != length:
                raise ValueError(
                    f"LearnedPositionEmbedding: positions of shape {positions.shape} do not "
                    f"match inputs of shape {inputs.shape}; expected [length] or "
                    "[batch, length]"
                )
            pos = jnp.take(table[0], positions, axis=0)  # [length, dim] or [batch, length, dim]
        dtype = self.dtype or jnp.result_type(inputs.dtype, self.param_dtype)
        return inputs.astype(dtype) + pos.astype(dtype)


def sincos_2d_positions(
    height: int,
    width: int,
    dim: int,
    temperature: float = 10_000.0,
    dtype: jnp.dtype = jnp.float32,
) -> Array:
    """Fixed 2-D sin-cos embedding of a `height x width` grid: `[height * width, dim]`.

    MoCo v3 (Chen et al. 2021, sec. 4) / big_vision `posemb_sincos_2d`: a quarter of the channels
    each for sin(x), cos(x), sin(y), cos(y) (this channel order is big_vision's), with
    omega_i = temperature ** (-i / (dim / 4 - 1)). Rows are the grid in row-major (y, x) order,
    matching a flattened `[batch, height, width, dim]` patch grid.
    """
    if dim % 4 != 0 or dim < 8:
        raise ValueError(
            f"sincos_2d_positions needs dim divisible by 4 and >= 8, got dim={dim}"
        )
    quarter = dim // 4
    omega = 1.0 / temperature ** (jnp.arange(quarter, dtype=jnp.float32) / (quarter - 1))
    y, x = jnp.mgrid[:height, :width]
    y = y.reshape(-1, 1).astype(jnp.float32) * omega  # [height * width, dim / 4]
    x = x.reshape(-1, 1).astype(jnp.float32) * omega
    pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
    return pe.astype(dtype)


def detr_sine_positions(
    height: int,
    width: int,
    dim: int,
    temperature: float = 10_000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    dtype: jnp.dtype = jnp.float32,
) -> Array:
    """DETR's 2-D sine encoding of a `height x width` feature grid: `[height * width, dim]`.

    The `PositionEmbeddingSine` of the official DETR code (Carion et al. 2020, sec. 3.2 and
    appendix A.4), for an unpadded grid. With F = dim / 2 channels per axis, the 1-based
    coordinates y = row + 1, x = col + 1, normalised (normalize=True) to
    y * scale / (height + 1e-6) (so the last row sits at ~scale = 2 pi), and
    dim_t[k] = temperature ** (2 * (k // 2) / F):

        channel k < F       (y):  sin(y / dim_t[k]) for even k, cos(y / dim_t[k]) for odd k
        channel F + k       (x):  the same with x

    Rows are the grid row-major (k = row * width + col), matching a flattened feature map.
    Unlike `sincos_2d_positions` (MoCo v3 / big_vision) the sines and cosines interleave, y
    comes first and the coordinates are normalised, so the encoding does not depend on the
    grid's size.
    """
    if height < 1 or width < 1:
        raise ValueError(f"detr_sine_positions needs a non-empty grid, got {height}x{width}")
    # An unpadded grid is the masked encoding of an all-True mask (cumulative counts 1..n).
    return detr_sine_positions_masked(jnp.ones((1, height, width), bool), dim, temperature,
                                      normalize, scale, dtype)[0]


def detr_sine_positions_masked(
    mask: Array,
    dim: int,
    temperature: float = 10_000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    dtype: jnp.dtype = jnp.float32,
) -> Array:
    """`detr_sine_positions` of padded images: `mask [batch, height, width]` (True = a real
    cell, False = padding at the bottom or right) -> `[batch, height * width, dim]`.

    The official `PositionEmbeddingSine` with its mask: the coordinates are the cumulative
    counts of real cells along each axis (y = cumsum over rows, x = cumsum over columns), and
    normalize divides by the last count, so each image's real extent spans (0, scale] whatever
    its padding. `detr_sine_positions` is this with an all-True mask.
    """
    if dim % 4 != 0 or dim < 4:
        raise ValueError(f"detr_sine_positions needs dim divisible by 4, got dim={dim}")
    if mask.ndim != 3:
        raise ValueError(f"detr_sine_positions_masked needs mask [batch, height, width], got "
                         f"shape {mask.shape}")
    b, h, w = mask.shape
    feats = dim // 2
    k = jnp.arange(feats)
    dim_t = temperature ** (2.0 * (k // 2).astype(jnp.float32) / feats)  # [F]
    real = mask.astype(jnp.float32)
    y, x = jnp.cumsum(real, axis=1), jnp.cumsum(real, axis=2)
    if normalize:
        y = y / (y[:, -1:, :] + 1e-6) * scale
        x = x / (x[:, :, -1:] + 1e-6) * scale

    def encode(coord: Array) -> Array:
        angle = coord[..., None] / dim_t                                 # [b, h, w, F]
        return jnp.where(k % 2 == 0, jnp.sin(angle), jnp.cos(angle))

    pe = jnp.concatenate([encode(y), encode(x)], axis=-1)
    return pe.reshape(b, h * w, dim).astype(dtype)


def rope_frequencies(head_dim: int, max_wavelength: float = 10_000.0) -> Array:
    """RoPE angular frequencies theta_i = max_wavelength ** (-2i / head_dim): `[head_dim // 2]`.

    Su et al. 2021 (RoFormer), eq. 15. float32.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got head_dim={head_dim}")
    exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    return 1.0 / (max_wavelength**exponent)


def apply_rope(
    x: Array, positions: Array, max_wavelength: float = 10_000.0
) -> Array:
    """Rotary position embedding (Su et al. 2021, eq. 34), rotate-half convention.

    Channel i is paired with channel i + head_dim/2 and the pair is rotated by the angle
    positions * theta_i, so <apply_rope(q, m), apply_rope(k, n)> depends only on m - n.
    Computed in float32 and returned in `x.dtype`.

    Args:
      x: `[batch, length, heads, head_dim]` queries or keys.
      positions: integer positions `[batch, length]` or `[length]` (shared by the batch).
      max_wavelength: the base of the frequencies (10_000 in the paper).
    Returns:
      `[batch, length, heads, head_dim]`, dtype of `x`.
    """
    if x.ndim != 4:
        raise ValueError(
            f"apply_rope expects x [batch, length, heads, head_dim], got shape {x.shape}"
        )
    batch, length, _, head_dim = x.shape
    given = jnp.asarray(positions)
    positions = given[None, :] if given.ndim == 1 else given
    if (
        positions.ndim != 2
        or positions.shape[1] != length
        or positions.shape[0] not in (1, batch)
    ):
        raise ValueError(
            f"apply_rope: positions of shape {given.shape} do not match x of shape "
            f"{x.shape}; expected [length] or [batch, length]"
        )
    freqs = rope_frequencies(head_dim, max_wavelength)
    angles = positions.astype(jnp.float32)[:, :, None, None] * freqs  # [b, l, 1, d/2]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ------------------------------------------------------------------ resampling a learned table
def _grid_and_token(n: int) -> tuple[int, int]:
    """(side of the square patch grid, class tokens) for n position rows."""
    for tokens in (0, 1):
        side = math.isqrt(n - tokens)
        if side * side == n - tokens:
            return side, tokens
    raise ValueError(f"{n} position rows are neither a square grid nor a square grid + 1 token")


POSEMB_RESIZE = ("linear", "bicubic")


def _cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """`[n_out, n_in]` weights of 1-D cubic convolution (Keys 1981, a = -0.75) with half-pixel
    centres and edge clamping: `torch.nn.functional.interpolate(mode='bicubic',
    align_corners=False)` along one axis, in float64."""

    def kernel(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        near = ((a + 2) * x - (a + 3)) * x * x + 1
        far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return np.where(x <= 1, near, np.where(x < 2, far, 0.0))

    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src).astype(int)
    weights = np.zeros((n_out, n_in))
    for tap in range(-1, 3):
        np.add.at(weights, (np.arange(n_out), np.clip(base + tap, 0, n_in - 1)),
                  kernel(src - (base + tap)))
    return weights


def resize_posemb(old: np.ndarray, new_shape: tuple[int, ...], method: str = "linear"
                  ) -> np.ndarray:
    """A learned position table `[1, tokens + g*g, d]` resampled to `new_shape`
    `[1, tokens + G*G, d]`, the class token's row kept as it is.

    method: 'linear' (the default; `scipy.ndimage.zoom` order 1 on the grid, as
    vision_transformer and big_vision do) or 'bicubic' (as timm and Hugging Face's
    `interpolate_pos_encoding`: torch's bicubic, a = -0.75, half-pixel centres, no antialiasing).
    """
    if method not in POSEMB_RESIZE:
        raise ValueError(f"posemb_resize must be one of {POSEMB_RESIZE}, got {method!r}")
    if len(old.shape) != 3 or len(new_shape) != 3 or old.shape[2] != new_shape[2]:
        raise ValueError(f"cannot resize a position embedding {old.shape} to {new_shape}")
    g_old, t_old = _grid_and_token(old.shape[1])
    g_new, t_new = _grid_and_token(new_shape[1])
    if t_old != t_new:
        raise ValueError(f"position embedding {old.shape} -> {new_shape}: the class token "
                         "differs (pool_type changed)")
    token, grid = old[:, :t_old], old[0, t_old:].reshape(g_old, g_old, -1)
    if method == "linear":
        zoomed = scipy.ndimage.zoom(grid, (g_new / g_old, g_new / g_old, 1), order=1)
    else:
        m = _cubic_matrix(g_old, g_new)
        zoomed = np.einsum("Hh,Ww,hwd->HWd", m, m, grid.astype(np.float64)).astype(grid.dtype)
    return np.concatenate([token, zoomed.reshape(1, g_new * g_new, -1)], axis=1)
