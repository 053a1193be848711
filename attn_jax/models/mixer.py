"""MLP-Mixer (Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture for Vision", eq. 1).

Per block, on tokens X [batch, patches, channels]:
    U = X + (W2 gelu(W1 LN(X)^T))^T   token mixing: an MLP over the patch axis, shared by channels
    Y = U + W4 gelu(W3 LN(U))         channel mixing: an MLP over channels, shared by patches
after a patch stem (one strided convolution, kernel = stride = patch), then a LayerNorm, the mean
over patches and a linear head.

The parameter tree is google-research/vision_transformer's `vit_jax/models_mixer.py`: `stem`,
`MixerBlock_{i}/{LayerNorm_0, token_mixing/{Dense_0, Dense_1}, LayerNorm_1, channel_mixing/...}`,
`pre_head_layer_norm`, `head`, so its Mixer `.npz` checkpoints map one to one. Its choices are
kept: `nn.gelu` (flax's default, the tanh approximation), LayerNorm epsilon 1e-6 (flax's default),
lecun-normal kernels and zero biases (nn.Dense's defaults), a zero-initialised head. The named
variants have vision_transformer's parameter counts (Mixer-B/16 at 224px, 1000 classes:
59,880,472).

A Mixer cannot change resolution: the token-mixing MLP's kernels are [patches, tokens_mlp_dim],
so `apply` must see as many patches as `init` did (vision_transformer#274); it says so with a
ValueError rather than a shape error from deep inside a Dense, and so does `config.init` from a
Mixer checkpoint at another resolution (`INIT_ADAPTERS`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.layers import DropPath, MlpBlock, layer_norm, stochastic_depth_rates
from attn_jax.models.vit import named_variant

Array = jax.Array

# Width / blocks / token-MLP width / channel-MLP width per size: Table 1 of the Mixer paper
# (S, B, L, H); 'mu' is a small size for tests.
MIXER_SIZES: dict[str, dict[str, int]] = {
    "mu": dict(hidden_dim=32, num_blocks=2, tokens_mlp_dim=16, channels_mlp_dim=64),
    "S": dict(hidden_dim=512, num_blocks=8, tokens_mlp_dim=256, channels_mlp_dim=2048),
    "B": dict(hidden_dim=768, num_blocks=12, tokens_mlp_dim=384, channels_mlp_dim=3072),
    "L": dict(hidden_dim=1024, num_blocks=24, tokens_mlp_dim=512, channels_mlp_dim=4096),
    "H": dict(hidden_dim=1280, num_blocks=32, tokens_mlp_dim=640, channels_mlp_dim=5120),
}

# `config.init` from a checkpoint whose token-mixing MLP has other shapes
# (attn_jax.models.init_adapters): refused, since nothing can adapt it.
INIT_ADAPTERS = ((
    r"(.*/)?MixerBlock_\d+/token_mixing/Dense_[01]/(kernel|bias)",
    "MLP-Mixer cannot change resolution (vision_transformer#274): {path} has shape {new} in the "
    "model but {old} in the checkpoint; the token-mixing MLP's kernels are [patches, "
    "tokens_mlp_dim] and [tokens_mlp_dim, patches], so the model must see the checkpoint's "
    "number of patches (and tokens_mlp_dim): fine-tune at the checkpoint's image size and patch "
    "size (config.data.image_size, model.patch_size)"),)


def mixer_variant(name: str) -> dict[str, Any]:
    """Hyper-parameters of a named variant: 'B/16' -> hidden_dim 768, num_blocks 12,
    tokens_mlp_dim 384, channels_mlp_dim 3072, patch_size (16, 16). 'B' alone: no patch_size."""
    return named_variant(name, MIXER_SIZES, "Mixer")


def _dense_inits() -> dict[str, Any]:
    # nn.Dense's defaults, which vision_transformer's Mixer uses (not ViT's xavier / normal(1e-6)).
    return dict(kernel_init=nn.initializers.lecun_normal(), bias_init=nn.initializers.zeros_init())


class MixerBlock(nn.Module):
    """One Mixer layer (eq. 1): token mixing then channel mixing, each a pre-norm residual MLP.
    `[batch, patches, channels]` -> the same shape.

    Attributes:
      tokens_mlp_dim: hidden width of the token-mixing MLP (D_S in the paper).
      channels_mlp_dim: hidden width of the channel-mixing MLP (D_C).
      dropout_rate: dropout inside both MLPs (after the activation and after the output).
      drop_path_rate: stochastic depth on both residual branches (0 = off).
    """

    tokens_mlp_dim: int
    channels_mlp_dim: int
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        if x.ndim != 3:
            raise ValueError(f"MixerBlock expects x [batch, patches, channels], got {x.shape}")
        common = dict(dropout_rate=self.dropout_rate, dtype=self.dtype,
                      param_dtype=self.param_dtype, **_dense_inits())
        y = layer_norm(dtype=self.dtype, param_dtype=self.param_dtype, name="LayerNorm_0")(x)
        y = jnp.swapaxes(y, 1, 2)  # [batch, channels, patches]: the MLP runs over the patches
        y = MlpBlock(self.tokens_mlp_dim, axis_names=("tokens", "tokens_mlp"),
                     name="token_mixing", **common)(y, deterministic=deterministic)
        y = jnp.swapaxes(y, 1, 2)
        x = x + DropPath(self.drop_path_rate)(y, deterministic=deterministic)
        y = layer_norm(dtype=self.dtype, param_dtype=self.param_dtype, name="LayerNorm_1")(x)
        y = MlpBlock(self.channels_mlp_dim, axis_names=("embed", "mlp"),
                     name="channel_mixing", **common)(y, deterministic=deterministic)
        return x + DropPath(self.drop_path_rate)(y, deterministic=deterministic)


class MlpMixer(nn.Module):
    """MLP-Mixer classifier: `[batch, height, width, channels]` -> `[batch, classes]`.

    Implements the image-encoder contract (`attn_jax.models.protocols.ImageEncoder`): `encode`
    gives the tokens after the pre-head LayerNorm, `features` their mean.

    Attributes:
      num_classes: classifier outputs; None returns the pooled features instead.
      patch_size: patch height and width (an int means square patches).
      hidden_dim, num_blocks, tokens_mlp_dim, channels_mlp_dim: width (C), blocks, token-MLP
        width (D_S), channel-MLP width (D_C); `MlpMixer.from_variant('B/16')` fills them.
      dropout_rate: dropout inside every MLP (vision_transformer's Mixer has none).
      stochastic_depth_rate: drop-path rate of the last block, linearly less for earlier ones
        (the rule the ViT here uses); 0 turns it off.
      head_zero_init: zero-initialise the classifier kernel (vision_transformer does).
    """

    num_classes: int | None
    patch_size: int | tuple[int, int]
    hidden_dim: int
    num_blocks: int
    tokens_mlp_dim: int
    channels_mlp_dim: int
    dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.0
    head_zero_init: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> "MlpMixer":
        """`MlpMixer.from_variant('B/16', num_classes=1000)`; keyword overrides win."""
        return cls(**{**mixer_variant(name), **overrides})

    @property
    def patch_hw(self) -> tuple[int, int]:
        p = self.patch_size
        return (p, p) if isinstance(p, int) else tuple(p)

    def encode(self, images: Array, *, train: bool = False) -> Array:
        """The image-encoder contract's tokens: `[batch, patches, hidden_dim]` after
        `pre_head_layer_norm` (row-major over the patch grid)."""
        return self(images, train=train, output="tokens")

    def features(self, images: Array, *, train: bool = False) -> Array:
        """The pooled representation `[batch, hidden_dim]` the head reads."""
        return self(images, train=train, output="features")

    def _check_token_count(self, images: Array, num_tokens: int) -> None:
        """The token-mixing MLP fixes the patch count: refuse images that give another."""
        if self.is_initializing() or not self.num_blocks:
            return
        kernel = (self.variables.get("params", {}).get("MixerBlock_0", {})
                  .get("token_mixing", {}).get("Dense_0", {}).get("kernel"))
        if kernel is None:
            return
        expected = getattr(kernel, "value", kernel).shape[0]
        if expected != num_tokens:
            raise ValueError(
                f"MLP-Mixer cannot change resolution: its parameters were made for {expected} "
                f"patches, but images of shape {images.shape} give {num_tokens} patches of "
                f"{self.patch_hw} (the token-mixing MLP's kernel is [patches, tokens_mlp_dim] = "
                f"{(expected, self.tokens_mlp_dim)}); resize the images to the size used at init")

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False, output: str = "logits") -> Array:
        """`[batch, height, width, channels]` -> logits `[batch, classes]` (or, with
        output='features' / 'tokens', what `features` / `encode` return)."""
        if output not in ("logits", "features", "tokens"):
            raise ValueError(f"output must be 'logits', 'features' or 'tokens', got {output!r}")
        if images.ndim != 4:
            raise ValueError(
                f"MLP-Mixer expects images [batch, height, width, channels], got shape "
                f"{images.shape}")
        ph, pw = self.patch_hw
        if images.shape[1] % ph or images.shape[2] % pw:
            raise ValueError(
                f"image size {images.shape[1:3]} (images of shape {images.shape}) is not "
                f"divisible by patch size {(ph, pw)}")
        num_tokens = (images.shape[1] // ph) * (images.shape[2] // pw)
        self._check_token_count(images, num_tokens)
        deterministic = not train
        # Per-patch fully-connected layer as one strided convolution (the paper's "stem").
        x = nn.Conv(
            self.hidden_dim, (ph, pw), strides=(ph, pw), padding="VALID",
            dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, "conv_in", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="stem",
        )(images)
        x = jnp.reshape(x, (x.shape[0], num_tokens, x.shape[-1]))  # [batch, patches, hidden]
        rates = stochastic_depth_rates(self.stochastic_depth_rate, self.num_blocks)
        for i in range(self.num_blocks):
            x = MixerBlock(self.tokens_mlp_dim, self.channels_mlp_dim,
                           dropout_rate=self.dropout_rate, drop_path_rate=rates[i],
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           name=f"MixerBlock_{i}")(x, deterministic=deterministic)
        x = layer_norm(dtype=self.dtype, param_dtype=self.param_dtype,
                       name="pre_head_layer_norm")(x)
        if output == "tokens":
            return x
        x = jnp.mean(x, axis=1)  # [batch, hidden]
        if self.num_classes is None or output == "features":
            return x
        kernel_init = (nn.initializers.zeros if self.head_zero_init
                       else nn.initializers.lecun_normal())
        return nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(kernel_init, ("embed", "classes")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)),
            name="head",
        )(x)
