"""The DDPM U-Net (Ho et al. 2020, Appendix B; the structure of the official `diffusion_tf` model).

A PixelCNN++-style U-Net: `num_res_blocks` residual blocks per resolution, each fed the timestep
embedding; self-attention at the resolutions in `attn_resolutions` and in the middle; stride-2
conv downsampling, nearest-neighbour + conv upsampling, and skip connections from every
down-path activation to the up path. Group normalisation throughout. As in the reference code,
the final conv and the second conv of each residual block are zero-initialised (each residual
block starts as the identity, the output at exactly zero); the attention output projection
keeps `MultiHeadAttention`'s single kernel_init (the reference zero-initialises it too).

Images are channels-last `[batch, height, width, channels]`; timesteps are `[batch]` (int or
float). The CIFAR-10 model (`ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
attn_resolutions=(16,), dropout=0.1`) has 35.7M parameters (Ho et al. Appendix B).
`attn_type='sagan'` swaps every attention block for SAGAN's (Zhang et al. 2019).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.attention import MultiHeadAttention
from attn_jax.layers import SelfAttention2D
from attn_jax.positional import timing_signal

Array = jax.Array

# The reference code's default_init(1.0): variance_scaling(1, 'fan_avg', 'uniform') everywhere.
default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
CONV_NAMES = (None, None, "conv_in", "conv_out")


def timestep_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """DDPM's sinusoidal timestep embedding `[batch]` -> `[batch, dim]` (float32).

    sin(t w_i) in the first half, cos(t w_i) in the second, w_i = max_period^(-i / (dim/2 - 1))
    (the reference `get_timestep_embedding`, = tensor2tensor's timing signal).
    """
    return timing_signal(t, dim, min_timescale=1.0, max_timescale=max_period)


def _conv(features: int, kernel: int, module: nn.Module, *, strides: int = 1,
          zero_init: bool = False, name: str | None = None) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding="SAME",  # stride 2 on even sizes pads (0, 1), as TF's SAME in the reference
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.zeros if zero_init else default_init, CONV_NAMES
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        name=name,
    )


def _group_norm(module: nn.Module, name: str | None = None) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=module.num_groups,
        epsilon=1e-6,  # tf.contrib.layers.group_norm's default, as in the reference
        dtype=module.dtype,
        param_dtype=module.param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv3x3 -> + Dense(swish(temb)) -> GroupNorm -> swish -> dropout ->
    conv3x3 (zero-init), plus the input (through a 1x1 conv when the width changes).

    `[batch, H, W, C]`, temb `[batch, temb_dim]` -> `[batch, H, W, out_ch]`.
    """

    out_ch: int
    dropout: float = 0.0
    num_groups: int = 32
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, temb: Array, *, deterministic: bool = True) -> Array:
        h = _conv(self.out_ch, 3, self, name="conv1")(nn.swish(_group_norm(self, "norm1")(x)))
        h = h + nn.Dense(
            self.out_ch,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(default_init, ("embed", "conv_out")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
            name="temb_proj",
        )(nn.swish(temb))[:, None, None, :]
        h = nn.swish(_group_norm(self, "norm2")(h))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        h = _conv(self.out_ch, 3, self, zero_init=True, name="conv2")(h)
        if x.shape[-1] != self.out_ch:
            x = _conv(self.out_ch, 1, self, name="nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions of a feature map: `[b, H, W, C]` -> same.

    attn_type 'mha' (DDPM): x + MultiHeadAttention(GroupNorm(x)), the output projection
    zero-initialised. 'sagan': `attn_jax.layers.SelfAttention2D` (Zhang et al. 2019) on x as
    published, without the GroupNorm: x + gamma * o(x), gamma = 0 at init. Both are the identity
    at init.
    """

    num_heads: int = 1
    num_groups: int = 32
    attn_type: str = "mha"
    attention_implementation: str | None = None
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.attn_type == "sagan":
            return SelfAttention2D(kernel_init=default_init, dtype=self.dtype,
                                   param_dtype=self.param_dtype, name="attn")(x)
        if self.attn_type != "mha":
            raise ValueError(f"attn_type must be 'mha' or 'sagan', got {self.attn_type!r}")
        b, height, width, c = x.shape
        h = _group_norm(self, "norm")(x).reshape(b, height * width, c)
        h = MultiHeadAttention(
            num_heads=self.num_heads,
            qkv_features=c,
            out_features=c,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=default_init,
            out_kernel_init=nn.initializers.zeros,  # as the official proj_out: block = identity
            implementation=self.attention_implementation,
            name="attn",
        )(h)
        return x + h.reshape(x.shape).astype(x.dtype)


class UNet(nn.Module):
    """The DDPM U-Net: `(x [b, H, W, C], t [b]) -> [b, H, W, out_channels]` (float32).

    Attributes:
      ch: base width; level i has `ch * ch_mult[i]` channels.
      ch_mult: width multipliers, one per resolution (H, H/2, ...).
      num_res_blocks: residual blocks per resolution on the way down (one more on the way up).
      attn_resolutions: spatial sizes (the height of the feature map) that get self-attention.
      dropout: dropout rate inside the residual blocks (rng collection 'dropout').
      out_channels: output channels; default the input's (use 2x for a learned variance).
      num_heads: heads of the self-attention blocks (the reference uses 1).
      attn_type: 'mha' (DDPM's GroupNorm + multi-head attention, the default) or 'sagan'
        (SAGAN's block, `attn_jax.layers.SelfAttention2D`; see `AttnBlock`).
      num_groups: GroupNorm groups.
      resamp_with_conv: conv in the down/upsampling layers (else average pool / plain nearest).
      attention_implementation: passed to `MultiHeadAttention` (None = automatic).
      dtype: compute dtype; param_dtype: storage dtype.
    """

    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    out_channels: int | None = None
    num_heads: int = 1
    num_groups: int = 32
    attn_type: str = "mha"
    resamp_with_conv: bool = True
    attention_implementation: str | None = None
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    def _check_inputs(self, x: Array, t: Array) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"UNet expects x [batch, height, width, channels], got shape {x.shape}"
            )
        if t.shape != x.shape[:1]:
            raise ValueError(f"UNet expects t [batch]={x.shape[:1]}, got shape {t.shape}")
        if self.attn_type not in ("mha", "sagan"):
            raise ValueError(f"attn_type must be 'mha' or 'sagan', got {self.attn_type!r}")
        levels = len(self.ch_mult)
        factor = 2 ** (levels - 1)
        _, height, width, _ = x.shape
        if height % factor or width % factor:
            raise ValueError(
                f"image size {height}x{width} must be divisible by 2**(len(ch_mult) - 1) = "
                f"{factor} (ch_mult={tuple(self.ch_mult)})"
            )
        widths = [self.ch * m for m in self.ch_mult]
        bad = [w for w in [self.ch, *widths] if w % self.num_groups]
        if bad:
            raise ValueError(
                f"channel widths {bad} (ch={self.ch} x ch_mult={tuple(self.ch_mult)}) are not "
                f"divisible by num_groups={self.num_groups}"
            )
        sizes = [height // 2**i for i in range(levels)]
        missing = [r for r in self.attn_resolutions if r not in sizes]
        if missing:
            raise ValueError(
                f"attn_resolutions {tuple(self.attn_resolutions)}: {missing} are not feature-map "
                f"heights of this model for {height}x{width} inputs ({sizes})"
            )

    @nn.compact
    def __call__(self, x: Array, t: Array, *, train: bool = False) -> Array:
        t = jnp.asarray(t)
        self._check_inputs(x, t)
        deterministic = not train
        levels = len(self.ch_mult)
        kw = dict(num_groups=self.num_groups, dtype=self.dtype, param_dtype=self.param_dtype)
        resblock = lambda out_ch, name: ResnetBlock(  # noqa: E731
            out_ch, dropout=self.dropout, name=name, **kw
        )
        attnblock = lambda name: AttnBlock(  # noqa: E731
            self.num_heads, attn_type=self.attn_type,
            attention_implementation=self.attention_implementation, name=name, **kw
        )

        def dense(features: int, names: tuple[str, str], name: str) -> nn.Dense:
            return nn.Dense(
                features,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(default_init, names),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
                name=name,
            )

        # Timestep embedding: sinusoid -> Dense(4 ch) -> swish -> Dense(4 ch).
        temb = timestep_embedding(t, self.ch)
        temb = dense(4 * self.ch, ("embed", "mlp"), "temb_dense0")(temb)
        temb = dense(4 * self.ch, ("mlp", "embed"), "temb_dense1")(nn.swish(temb))

        # Down path: every activation is kept for a skip connection.
        if self.dtype is not None:
            x = x.astype(self.dtype)
        hs = [_conv(self.ch, 3, self, name="conv_in")(x)]
        for i in range(levels):
            for j in range(self.num_res_blocks):
                h = resblock(self.ch * self.ch_mult[i], f"down_{i}_block_{j}")(
                    hs[-1], temb, deterministic=deterministic
                )
                if h.shape[1] in self.attn_resolutions:
                    h = attnblock(f"down_{i}_attn_{j}")(h)
                hs.append(h)
            if i != levels - 1:
                hs.append(self._downsample(hs[-1], f"down_{i}_downsample"))

        # Middle.
        h = hs[-1]
        h = resblock(h.shape[-1], "mid_block_1")(h, temb, deterministic=deterministic)
        h = attnblock("mid_attn_1")(h)
        h = resblock(h.shape[-1], "mid_block_2")(h, temb, deterministic=deterministic)

        # Up path: num_res_blocks + 1 blocks per level, each eating one skip.
        for i in reversed(range(levels)):
            for j in range(self.num_res_blocks + 1):
                h = resblock(self.ch * self.ch_mult[i], f"up_{i}_block_{j}")(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, deterministic=deterministic
                )
                if h.shape[1] in self.attn_resolutions:
                    h = attnblock(f"up_{i}_attn_{j}")(h)
            if i != 0:
                h = self._upsample(h, f"up_{i}_upsample")
        assert not hs

        h = nn.swish(_group_norm(self, "norm_out")(h))
        out_channels = self.out_channels or x.shape[-1]
        h = _conv(out_channels, 3, self, zero_init=True, name="conv_out")(h)
        return h.astype(jnp.float32)

    def _downsample(self, x: Array, name: str) -> Array:
        if self.resamp_with_conv:
            return _conv(x.shape[-1], 3, self, strides=2, name=name)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))

    def _upsample(self, x: Array, name: str) -> Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest neighbour
        if self.resamp_with_conv:
            x = _conv(x.shape[-1], 3, self, name=name)(x)
        return x

