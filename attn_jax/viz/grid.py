"""Sample grids: a batch of images tiled into one uint8 picture, and PNG output (PIL).

    grid = image_grid(samples)                # samples [n, H, W, C] in [-1, 1]
    save_png("runs/ddpm/samples/step_1000.png", grid)
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Float images in `value_range` -> uint8 in [0, 255] (clipped, rounded); uint8 passes through.

    (-1, 1) maps x to round((x + 1) * 127.5), the DDPM convention; (0, 1) maps x to round(255 x).
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    scaled = (images.astype(np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, *, ncols: int | None = None, padding: int = 2,
               pad_value: int = 255, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Tiles images row-major into a grid: `[n, H, W, C]` -> uint8 `[H', W', C]`.

    Image i sits in row i // ncols, column i % ncols; cells are separated (and surrounded) by
    `padding` pixels of `pad_value`, and cells past n stay `pad_value`. So
    H' = rows * (H + padding) + padding and W' = ncols * (W + padding) + padding.

    Args:
      images: `[n, H, W, C]`, float in `value_range` (clipped) or uint8.
      ncols: images per row; default ceil(sqrt(n)).
      padding: border width in pixels (>= 0).
      pad_value: uint8 value of the border.
      value_range: (low, high) of float inputs: (-1, 1) for diffusion samples, (0, 1) otherwise.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be [n, H, W, C] with n >= 1, got shape {images.shape}")
    if padding < 0 or not 0 <= pad_value <= 255:
        raise ValueError(f"need padding >= 0 and pad_value in [0, 255], got {padding}, {pad_value}")
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, n)
    rows = math.ceil(n / ncols)
    pixels = to_uint8(images, value_range)
    grid = np.full((rows * (h + padding) + padding, ncols * (w + padding) + padding, c),
                   pad_value, np.uint8)
    for i in range(n):
        top = padding + (i // ncols) * (h + padding)
        left = padding + (i % ncols) * (w + padding)
        grid[top:top + h, left:left + w] = pixels[i]
    return grid


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes a uint8 image `[H, W]`, `[H, W, 1]` (grey), `[H, W, 3]` or `[H, W, 4]` as PNG.

    Missing parent directories are created.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"save_png needs uint8 pixels (see to_uint8), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
        raise ValueError(f"save_png needs [H, W] or [H, W, 1 | 3 | 4], got shape {image.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
