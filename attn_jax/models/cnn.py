"""A small ResNet-style CNN image encoder (pre-activation residual blocks, He et al. 2016,
"Identity Mappings in Deep Residual Networks", fig. 4e), with an optional SAGAN self-attention
block (Zhang et al. 2019; `attn_jax.layers.SelfAttention2D`) after a chosen stage.

    stem: conv3x3(widths[0])
    stage s (s = 0..S-1): blocks_per_stage residual blocks of width widths[s]; the first block of
        every stage but the first has stride 2 (SAME padding: a side of n becomes ceil(n / 2))
    block: x + conv3x3(act(norm(conv3x3_stride(act(norm(x))))))   (shortcut: 1x1 conv, stride,
        when the width or the size changes)
    [SelfAttention2D after stage `attention_stage`]
    final norm + ReLU -> the feature grid [b, h', w', widths[-1]]

It implements the image-encoder contract (`attn_jax.models.protocols.ImageEncoder`): `encode`
gives the feature grid flattened row-major to tokens `[b, h'*w', widths[-1]]` (a captioner's
memory; `grid_shape` says (h', w')), `features` their mean, `__call__` a linear classifier on it.

Normalisation is GroupNorm (Wu & He 2018) or a per-position LayerNorm over the channels, never
BatchNorm: batch statistics would be mutable state (a 'batch_stats' collection the shared
trainer, tasks and checkpoints do not carry, updated outside the gradient), would couple the
examples of a batch (a cross-device mean under data parallelism, results that depend on the
batch size and on the padding rows of an evaluation batch) and differ between training and
evaluation. GroupNorm and LayerNorm are per example and stateless: the model is a pure function
of its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.layers import SelfAttention2D, layer_norm

Array = jax.Array

CONV_NAMES = (None, None, "conv_in", "conv_out")
# He et al. 2015's init for ReLU nets (as torchvision's ResNet: fan_out, normal).
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ResidualBlock(nn.Module):
    """Pre-activation residual block: `[b, h, w, c]` -> `[b, ceil(h/s), ceil(w/s), features]`.

    norm -> ReLU -> conv3x3 (stride s) -> norm -> ReLU -> conv3x3, plus the input (through a
    1x1 conv of stride s, applied to the normalised input as in He et al. 2016, when the width
    or the stride changes the shape). Convs have no biases: a norm with its own bias follows
    each one on the residual path.
    """

    features: int
    strides: int = 1
    norm: str = "group"
    num_groups: int = 8
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pre = nn.relu(_norm(self, "norm1")(x))
        h = _conv(self, self.features, 3, self.strides, "conv1")(pre)
        h = nn.relu(_norm(self, "norm2")(h))
        h = _conv(self, self.features, 3, 1, "conv2")(h)
        if x.shape[-1] != self.features or self.strides != 1:
            x = _conv(self, self.features, 1, self.strides, "shortcut")(pre)
        return x + h


def _conv(module: nn.Module, features: int, kernel: int, strides: int, name: str) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding="SAME",
                   use_bias=False, dtype=module.dtype, param_dtype=module.param_dtype,
                   kernel_init=nn.with_logical_partitioning(conv_init, CONV_NAMES), name=name)


def _norm(module: nn.Module, name: str) -> nn.Module:
    if module.norm == "layer":
        return layer_norm(dtype=module.dtype, param_dtype=module.param_dtype, name=name)
    return nn.GroupNorm(
        num_groups=module.num_groups, epsilon=1e-6, dtype=module.dtype,
        param_dtype=module.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), name=name)


class CNN(nn.Module):
    """ResNet-style classifier and image encoder (the module docstring):
    `[batch, height, width, channels]` -> logits `[batch, num_classes]`.

    Attributes:
      num_classes: classifier outputs; None: `__call__` returns the pooled features.
      widths: channels of each stage (len(widths) stages; S - 1 stride-2 downsamplings).
      blocks_per_stage: residual blocks per stage (an int: the same for every stage).
      norm: 'group' (GroupNorm of `num_groups` groups) or 'layer' (LayerNorm over the channels
        at each position).
      num_groups: GroupNorm groups; every width must be divisible by it.
      attention_stage: index of the stage after whose last block a SAGAN block is applied
        (None: none; negative counts from the end).
      attention_reduction: SAGAN's C / C_k (8 in the paper).
      head_zero_init: zero-initialise the classifier kernel.
      dtype: compute dtype; param_dtype: storage dtype.

    Parameters: `stem`, `stage{s}_block{i}/{norm1,conv1,norm2,conv2[,shortcut]}`, `attention`
    (with attention_stage), `final_norm`, `head` (with num_classes).
    """

    num_classes: int | None = None
    widths: Sequence[int] = (32, 64, 128)
    blocks_per_stage: int | Sequence[int] = 2
    norm: str = "group"
    num_groups: int = 8
    attention_stage: int | None = None
    attention_reduction: int = 8
    head_zero_init: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @property
    def stage_depths(self) -> tuple[int, ...]:
        if isinstance(self.blocks_per_stage, int):
            return (self.blocks_per_stage,) * len(self.widths)
        return tuple(self.blocks_per_stage)

    @nn.nowrap
    def grid_shape(self, image_shape: Sequence[int]) -> tuple[int, int]:
        """(h', w') of the feature grid for images `(height, width[, channels])`: each of the
        S - 1 stride-2 stages maps a side n to ceil(n / 2). `encode`'s token k is the grid cell
        (k // w', k % w')."""
        h, w = int(image_shape[0]), int(image_shape[1])
        for _ in range(len(self.widths) - 1):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return h, w

    def encode(self, images: Array, *, train: bool = False) -> Array:
        """The contract's tokens: the final feature grid `[batch, h'*w', widths[-1]]`, row-major
        (see `grid_shape`)."""
        return self(images, train=train, output="tokens")

    def features(self, images: Array, *, train: bool = False) -> Array:
        """The pooled representation `[batch, widths[-1]]`: the mean of `encode`'s tokens."""
        return self(images, train=train, output="features")

    def _check(self, images: Array) -> None:
        if images.ndim != 4:
            raise ValueError(f"CNN expects images [batch, height, width, channels], got shape "
                             f"{images.shape}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ValueError(f"CNN widths must be a non-empty list of positive ints, got "
                             f"{tuple(self.widths)}")
        depths = self.stage_depths
        if len(depths) != len(self.widths) or any(d < 1 for d in depths):
            raise ValueError(f"blocks_per_stage={self.blocks_per_stage!r} must be a positive int "
                             f"or one per stage (widths {tuple(self.widths)})")
        if self.norm not in ("group", "layer"):
            raise ValueError(f"CNN norm must be 'group' or 'layer', got {self.norm!r}")
        if self.norm == "group" and any(w % self.num_groups for w in self.widths):
            raise ValueError(f"CNN widths {tuple(self.widths)} must be divisible by num_groups="
                             f"{self.num_groups}")
        s = self.attention_stage
        if s is not None and not -len(self.widths) <= s < len(self.widths):
            raise ValueError(f"attention_stage={s} is not a stage of widths "
                             f"{tuple(self.widths)} ({len(self.widths)} stages)")

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False, output: str = "logits") -> Array:
        """`[batch, height, width, channels]` -> logits `[batch, num_classes]` (or, with
        output='features' / 'tokens', what `features` / `encode` return). `train` is accepted
        for the contract; the model has no dropout or batch statistics."""
        del train
        if output not in ("logits", "features", "tokens"):
            raise ValueError(f"output must be 'logits', 'features' or 'tokens', got {output!r}")
        self._check(images)
        x = images.astype(self.dtype) if self.dtype is not None else images
        x = _conv(self, self.widths[0], 3, 1, "stem")(x)
        attention_stage = (None if self.attention_stage is None
                           else self.attention_stage % len(self.widths))
        kw = dict(norm=self.norm, num_groups=self.num_groups, dtype=self.dtype,
                  param_dtype=self.param_dtype)
        for s, (width, depth) in enumerate(zip(self.widths, self.stage_depths)):
            for i in range(depth):
                x = ResidualBlock(width, strides=2 if s > 0 and i == 0 else 1,
                                  name=f"stage{s}_block{i}", **kw)(x)
            if s == attention_stage:
                x = SelfAttention2D(reduction=self.attention_reduction, dtype=self.dtype,
                                    param_dtype=self.param_dtype, name="attention")(x)
        x = nn.relu(_norm(self, "final_norm")(x))  # pre-activation nets end with norm + ReLU
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        if output == "tokens":
            return tokens
        pooled = tokens.mean(axis=1)
        if self.num_classes is None or output == "features":
            return pooled
        kernel_init = (nn.initializers.zeros if self.head_zero_init
                       else nn.initializers.lecun_normal())
        return nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(kernel_init, ("conv_in", "classes")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)),
            name="head",
        )(pooled)
