"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", eq. 1-4).

The parameter tree mirrors google-research/vision_transformer (`embedding`, `cls`,
`posembed_input`, `Transformer/encoderblock_{i}`, `Transformer/encoder_norm`, `pre_logits`,
`head`); inside a block the names are those of `attn_jax.layers.TransformerBlock`
(`self_attention_norm`, `self_attention`, `mlp_norm`, `mlp`; checkpoints with the earlier
`LayerNorm_0`, `MultiHeadAttention_0`, `LayerNorm_1`, `MlpBlock_0` load through
`attn_jax.train.legacy.upgrade_params`). The named variants have the published parameter
counts (ViT-B/16 at 224px, 1000 classes: 86,567,656). A learned position table fixes the token
count, so `apply` must see the image size used at `init`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.layers import ACTIVATIONS, TransformerBlock, layer_norm, stochastic_depth_rates
from attn_jax.positional import LearnedPositionEmbedding, resize_posemb, sincos_2d_positions

Array = jax.Array

# Width / depth / heads / MLP width per size; Table 1 of the ViT paper and Table 2 of Zhai et al.
# 2022 ("Scaling Vision Transformers"). 'mu' and 'pico' are small sizes for tests and smoke runs.
VIT_SIZES: dict[str, dict[str, int]] = {
    "mu": dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64),
    "pico": dict(hidden_size=64, depth=4, num_heads=4, mlp_dim=256),
    "Ti": dict(hidden_size=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_size=384, depth=12, num_heads=6, mlp_dim=1536),
    "M": dict(hidden_size=512, depth=12, num_heads=8, mlp_dim=2048),
    "B": dict(hidden_size=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_size=1024, depth=24, num_heads=16, mlp_dim=4096),
    "H": dict(hidden_size=1280, depth=32, num_heads=16, mlp_dim=5120),
}


def _resample_posemb(old: Any, shape: tuple[int, ...], options: Any) -> Any:
    return resize_posemb(old, shape, options.posemb_resize)


# `config.init` from a checkpoint at another image size (attn_jax.models.init_adapters): the
# learned position table is resampled to the new patch grid (`config.init.posemb_resize`).
INIT_ADAPTERS = ((r"(.*/)?posembed_input/pos_embedding", _resample_posemb),)


def named_variant(name: str, sizes: dict[str, dict[str, int]], family: str) -> dict[str, Any]:
    """'SIZE/PATCH' -> `sizes[SIZE]` plus patch_size (PATCH, PATCH): the naming of ViT and Mixer.

    The size alone ('B') leaves patch_size out; any integer patch suffix ('/32', '/8', '/4') works.
    """
    size, _, patch = name.partition("/")
    if size not in sizes:
        raise ValueError(f"Unknown {family} size {size!r} in {name!r}; known: {sorted(sizes)}")
    config: dict[str, Any] = dict(sizes[size])
    if patch:
        if not patch.isdigit() or int(patch) < 1:
            raise ValueError(f"{family} variant {name!r}: patch suffix must be a positive integer")
        config["patch_size"] = (int(patch), int(patch))
    return config


def vit_variant(name: str) -> dict[str, Any]:
    """Hyper-parameters of a named variant: 'B/16' -> hidden/depth/heads/mlp and patch (16, 16)."""
    return named_variant(name, VIT_SIZES, "ViT")


class Encoder(nn.Module):
    """`depth` pre-norm TransformerBlocks (`encoderblock_{i}`; ViT eq. 2-3) and a final LayerNorm
    (`encoder_norm`): `[batch, tokens, hidden]` -> the same shape.

    stochastic_depth_rate: drop-path rate of the last block; block i gets the linear-rule share
    (`stochastic_depth_rates`), the first block none.
    layer_norm_epsilon, mlp_activation: as `ViT`'s.
    """

    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.0
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    attention_implementation: str | None = None
    layer_norm_epsilon: float = 1e-6
    mlp_activation: str = "gelu_tanh"

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        drop_path_rates = stochastic_depth_rates(self.stochastic_depth_rate, self.depth)
        for i in range(self.depth):
            # TransformerBlock's defaults are ViT's: xavier kernels, normal(1e-6) MLP biases.
            x = TransformerBlock(
                num_heads=self.num_heads,
                mlp_dim=self.mlp_dim,
                norm="pre",
                dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                drop_path_rate=drop_path_rates[i],
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                attention_implementation=self.attention_implementation,
                layer_norm_epsilon=self.layer_norm_epsilon,
                activation=ACTIVATIONS[self.mlp_activation],
                name=f"encoderblock_{i}",
            )(x, deterministic=deterministic)
        return layer_norm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="encoder_norm")(x)


class ViT(nn.Module):
    """Vision Transformer classifier: `[batch, height, width, channels]` -> `[batch, classes]`.

    Implements the image-encoder contract (`attn_jax.models.protocols.ImageEncoder`): `encode`
    gives the encoder's tokens, `features` the pooled vector.

    Attributes:
      num_classes: classifier outputs; None returns the pooled (pre-logit) features instead.
      patch_size: patch height and width (an int means square patches).
      hidden_size, depth, num_heads, mlp_dim: encoder width, blocks, heads, MLP width.
      dropout_rate: dropout on the embeddings, after attention and inside the MLP.
      attention_dropout_rate: dropout on the attention weights.
      stochastic_depth_rate: drop-path rate of the last encoder block, linearly less for earlier
        ones (DeiT uses 0.1 for ViT-B); 0 turns it off.
      pool_type: 'token' (prepended class token, ViT eq. 1, 4) or 'gap' (mean over patches).
      posemb: 'learn' (a learned table over all tokens, the class token included, as in the
        original ViT) or 'sincos2d' (fixed 2-D sin-cos on the patches; the class token gets none).
      representation_size: width of the tanh pre-logits layer (used in pre-training); None: none.
      head_zero_init: zero-initialise the classifier kernel (standard for fine-tuning).
      attention_implementation: passed to `jax.nn.dot_product_attention` ('xla', 'cudnn', None).
      layer_norm_epsilon: of every LayerNorm (1e-6 as vision_transformer; Hugging Face ViT
        checkpoints use 1e-12).
      mlp_activation: 'gelu_tanh' (flax's `nn.gelu` default, as vision_transformer) or 'gelu'
        (exact erf, Hugging Face ViT's `hidden_act='gelu'`).
    """

    num_classes: int | None
    patch_size: int | tuple[int, int]
    hidden_size: int
    depth: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth_rate: float = 0.0
    pool_type: str = "token"
    posemb: str = "learn"
    representation_size: int | None = None
    head_zero_init: bool = True
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    attention_implementation: str | None = None
    layer_norm_epsilon: float = 1e-6
    mlp_activation: str = "gelu_tanh"

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> "ViT":
        """`ViT.from_variant('B/16', num_classes=1000)`; keyword overrides win over the variant."""
        return cls(**{**vit_variant(name), **overrides})

    @property
    def patch_hw(self) -> tuple[int, int]:
        p = self.patch_size
        return (p, p) if isinstance(p, int) else tuple(p)

    def encode(self, images: Array, *, train: bool = False) -> Array:
        """The image-encoder contract's tokens: `[batch, tokens, hidden]` after the final
        LayerNorm (the class token first when pool_type='token'), e.g. a captioner's memory."""
        return self(images, train=train, output="tokens")

    def features(self, images: Array, *, train: bool = False) -> Array:
        """The pooled representation `[batch, hidden or representation_size]` the head reads."""
        return self(images, train=train, output="features")

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False, output: str = "logits") -> Array:
        """`[batch, height, width, channels]` -> logits `[batch, classes]` (or, with
        output='features' / 'tokens', what `features` / `encode` return)."""
        if output not in ("logits", "features", "tokens"):
            raise ValueError(f"output must be 'logits', 'features' or 'tokens', got {output!r}")
        if self.pool_type not in ("token", "gap"):
            raise ValueError(f"pool_type must be 'token' or 'gap', got {self.pool_type!r}")
        if self.posemb not in ("learn", "sincos2d"):
            raise ValueError(f"posemb must be 'learn' or 'sincos2d', got {self.posemb!r}")
        if self.mlp_activation not in ("gelu_tanh", "gelu"):
            raise ValueError(
                f"mlp_activation must be 'gelu_tanh' or 'gelu', got {self.mlp_activation!r}")
        if images.ndim != 4:
            raise ValueError(
                f"ViT expects images [batch, height, width, channels], got shape {images.shape}"
            )
        ph, pw = self.patch_hw
        if images.shape[1] % ph or images.shape[2] % pw:
            raise ValueError(
                f"image size {images.shape[1:3]} (images of shape {images.shape}) is not "
                f"divisible by patch size {(ph, pw)}"
            )
        deterministic = not train
        # Patchify + linear projection (eq. 1) as one strided convolution: one token per patch.
        x = nn.Conv(
            self.hidden_size,
            (ph, pw),
            strides=(ph, pw),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, "conv_in", "embed")
            ),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="embedding",
        )(images)
        n, h, w, c = x.shape
        x = jnp.reshape(x, (n, h * w, c))
        if self.posemb == "sincos2d":
            x = x + sincos_2d_positions(h, w, c).astype(x.dtype)
        if self.pool_type == "token":
            cls = self.param(
                "cls",
                nn.with_logical_partitioning(nn.initializers.zeros, (None, None, "embed")),
                (1, 1, c),
                self.param_dtype,
            )
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
        if self.posemb == "learn":
            x = LearnedPositionEmbedding(
                max_length=x.shape[1],
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name="posembed_input",
            )(x)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        x = Encoder(
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            stochastic_depth_rate=self.stochastic_depth_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_implementation=self.attention_implementation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            mlp_activation=self.mlp_activation,
            name="Transformer",
        )(x, deterministic=deterministic)
        if output == "tokens":
            return x
        x = x[:, 0] if self.pool_type == "token" else jnp.mean(x, axis=1)  # [batch, hidden]

        head_in_axis = "embed"
        if self.representation_size is not None:
            x = nn.Dense(
                self.representation_size,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.lecun_normal(), ("embed", None)
                ),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                name="pre_logits",
            )(x)
            x = jnp.tanh(x)
            head_in_axis = None
        if self.num_classes is None or output == "features":
            return x
        kernel_init = (
            nn.initializers.zeros if self.head_zero_init else nn.initializers.lecun_normal()
        )
        return nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(kernel_init, (head_in_axis, "classes")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("classes",)),
            name="head",
        )(x)
