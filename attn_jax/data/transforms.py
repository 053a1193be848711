"""NumPy/PIL image transforms of the input pipeline; random parameters are drawn by the caller.

Drawing parameters outside the transforms lets the pipeline draw them for a whole global batch and
hand each host its rows, so augmentation does not depend on the number of hosts.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def random_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray, padding: int) -> np.ndarray:
    """Pad-and-crop plus horizontal flip (the CIFAR augmentation of He et al. 2016, Sec. 4.2).

    images [batch, h, w, c] are zero-padded by `padding` on each side; example i keeps the h x w
    window whose top-left corner is offsets[i] = (row, col) in [0, 2 * padding], then is mirrored
    left-right where flips[i].
    """
    b, h, w, _ = images.shape
    if offsets.shape != (b, 2) or flips.shape != (b,):
        raise ValueError(f"offsets {offsets.shape} / flips {flips.shape} do not match batch {b}")
    if offsets.min(initial=0) < 0 or offsets.max(initial=0) > 2 * padding:
        raise ValueError(f"offsets must lie in [0, {2 * padding}] for padding {padding}")
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = np.empty_like(images)
    # One strided block copy per example: 3x faster than a single fancy-indexed gather of
    # [b, h, w] pixels, whose cost is per pixel.
    for i, ((top, left), flip) in enumerate(zip(offsets, flips)):
        crop = padded[i, top:top + h, left:left + w]
        out[i] = crop[:, ::-1] if flip else crop
    return out


def crop_resize(image: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Resamples the region box = (top, left, height, width) of image [h, w, c] to [size, size, c].

    Bilinear (antialiased when shrinking, PIL); pixels just outside the box feed the filter, as
    they would in a resize of the whole image followed by a crop.
    """
    top, left, height, width = box
    pil_box = (left, top, left + width, top + height)
    if image.shape[-1] in _PIL_MODES:
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image, _PIL_MODES[image.shape[-1]])
        out = np.asarray(pil.resize((size, size), Image.BILINEAR, box=pil_box))
        return out.reshape(size, size, image.shape[-1])
    return np.stack([crop_resize(image[..., c:c + 1], box, size)[..., 0] for c in range(image.shape[-1])], -1)


def resize_images(images: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """images [n, h, w, c] -> [n, size, size, c] by bilinear resizing or centred zero padding."""
    n, h, w, c = images.shape
    if method == "pad":
        if size < max(h, w):
            raise ValueError(f"cannot pad images of {h}x{w} to the smaller size {size}")
        top, left = (size - h) // 2, (size - w) // 2
        return np.pad(images, ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0)))
    if method != "bilinear":
        raise ValueError(f"resize method must be 'bilinear' or 'pad', got {method!r}")
    out = np.empty((n, size, size, c), images.dtype)
    for i, image in enumerate(images):
        out[i] = crop_resize(image, (0, 0, h, w), size)
    return out


def random_resized_crop_box(height: int, width: int, uniforms: np.ndarray,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """The Inception crop (Szegedy et al. 2015, "Going deeper with convolutions", Sec. 6).

    Each row of uniforms [attempts, 4] (values in [0, 1)) proposes a box of area fraction in
    `scale` and log-uniform aspect ratio (width / height) in `ratio`, at a uniform position; the
    first that fits is returned as (top, left, height, width). If none fits, the largest centred
    box with a ratio in range (torchvision's fallback).
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio, u_top, u_left in uniforms:
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int,
                    crop_fraction: float = 0.875) -> tuple[float, float, float, float]:
    """Centred square of side crop_fraction * min(height, width) as (top, left, side, side).

    Resampling it to `size` equals the usual eval transform: resize the shorter side to
    size / crop_fraction (256 for 224), then take the central size x size crop.
    """
    side = crop_fraction * min(height, width)
    return (height - side) / 2, (width - side) / 2, side, side
