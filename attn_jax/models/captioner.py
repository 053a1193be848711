r"""Image captioning with attention: Show, Attend and Tell (Xu et al. 2015, arXiv:1502.03044).

`RNNCaptioner` (registered as 'rnn_captioner') is the recurrent decoder of
`attn_jax.models.recurrent.RNNSeq2Seq` (the same `DecoderStep`, alignment models, teacher-forced
scan, decode-step builder and attention capture) reading a grid of image features instead of a
source sentence: the encoder-decoder contract of `attn_jax.models.protocols`, with images as the
source, so the sequence task, greedy and beam search and the BLEU evaluator are the shared ones.

    a_1..a_L = W_m encode(image)                      (annotation vectors, L = grid positions)
    s_0 = tanh(W_init mean_i a_i)                     (Xu et al. sec. 3.1.2: the mean annotation)
    alpha_t = softmax(score(s_{t-1}, a_{1..L}))       z_t = sum_i alpha_ti a_i
    s_t = cell([E y_{t-1}; z_t], s_{t-1})             logits_t = W_y tanh(W_o [s_t; z_t; E y_{t-1}])

`backbone` names any image encoder of the registry by its contract (`encode(images) -> [b, n, d]`
tokens; e.g. {'name': 'cnn', ...} for a conv net's feature grid, {'name': 'vit', ...} for
patch tokens), built with the given fields; its parameters are the `image_encoder` subtree (a
parameter group, or a pretrained backbone loaded by `config.init`). `attention='none'` is the
no-attention baseline: the decoder sees only the pooled feature (the mean annotation).

`TransformerCaptioner` (registered as 'transformer_captioner') is the same idea with the
Transformer's decoder (`attn_jax.models.transformer.Decoder`: causal self-attention, then
multi-head cross-attention over the image tokens at every layer): the backbone's tokens, a linear
map to `emb_dim`, sinusoidal positions over the raster order of the grid, and
`num_encoder_layers` Transformer encoder layers over them (0: the projected tokens are the
memory) -- an image captioner of the encoder-decoder contract, so the same task, search and
evaluators serve it.

Doubly stochastic attention (Xu et al. eq. 14): with `doubly_stochastic > 0`, the teacher-forced
pass sows `lambda * sum_i (1 - sum_t alpha_ti)^2` (the sum over the real target tokens, averaged
over the rows that have any) into the 'losses' collection, which the sequence task adds to its
loss. It pushes the decoder to look at every position over the whole caption.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.models.recurrent import RNNSeq2Seq, _init
from attn_jax.models.transformer import (Decoder, EncoderDecoder, _block, _embedding,
                                         _final_norm)
from attn_jax.models.transformer_presets import transformer_config
from attn_jax.positional import sinusoidal_positions

Array = jax.Array


def backbone_fields(backbone: Any) -> tuple[str, dict[str, Any]]:
    """(registry name, fields) of a captioner's `backbone` dict; a ValueError otherwise."""
    if not isinstance(backbone, Mapping) or "name" not in backbone:
        raise ValueError(f"backbone={backbone!r}: give the image encoder as a dict with "
                         "its registry 'name' and fields, e.g. {'name': 'cnn', ...}")
    return backbone["name"], {k: v for k, v in backbone.items() if k != "name"}


def check_images(images: Array, image_shape: tuple[int, ...]) -> None:
    """A ValueError unless `images` is `[batch, *image_shape]` float (shapes are static, so
    this runs at trace time, before compilation; an empty `image_shape` is not checked)."""
    if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be float [batch, height, width, channels], got "
                         f"{images.shape} {images.dtype}")
    if image_shape and tuple(images.shape[1:]) != tuple(image_shape):
        raise ValueError(f"images are {tuple(images.shape[1:])} (height, width, channels) "
                         f"but the captioner was built for {tuple(image_shape)}")


class RNNCaptioner(RNNSeq2Seq):
    """Image encoder + attentive recurrent decoder (the module docstring).

    Attributes (besides `RNNSeq2Seq`'s decoder fields; its source embedding, recurrent encoder
    and `bidirectional` are not used):
      backbone: the image encoder as a registry entry, {'name': ..., **fields}.
      memory_dim: width of the annotation vectors a_i (default `hidden`; a linear map of the
        encoder's tokens, so 'dot' attention needs no equal widths upstream).
      doubly_stochastic: lambda of Xu et al.'s attention regulariser (0 = off).
      image_shape: `(height, width, channels)` the encoder was built for; images of another
        shape are refused before compilation ((): not checked).
    """

    backbone: Any = None
    memory_dim: int | None = None
    doubly_stochastic: float = 0.0
    image_shape: tuple[int, ...] = ()

    def __post_init__(self):
        backbone_fields(self.backbone)
        if self.doubly_stochastic < 0:
            raise ValueError(f"doubly_stochastic={self.doubly_stochastic} must be >= 0")
        super().__post_init__()

    @property
    def memory_features(self) -> int:
        return self.memory_dim or self.hidden

    def setup(self):
        super().setup()
        from attn_jax.models import build_model  # the registry imports this file lazily

        name, fields = backbone_fields(self.backbone)
        self.image_encoder = build_model(name, **fields)
        self.memory_projection = nn.Dense(
            self.memory_features, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=_init(nn.initializers.lecun_normal(), ("embed", "mlp")),
            bias_init=_init(nn.initializers.zeros_init(), ("mlp",)))

    def check_images(self, images: Array) -> None:
        check_images(images, self.image_shape)

    def encode(self, source: Array, *, deterministic: bool = True) -> tuple[Array, Array]:
        """images `[batch, h, w, c]` -> (annotations `[batch, positions, memory_dim]`, an
        all-True mask `[batch, positions]`)."""
        self.check_images(source)
        tokens = self.image_encoder.encode(source, train=not deterministic)
        memory = self.memory_projection(tokens)
        memory = self.dropout(memory, deterministic=deterministic)
        return memory, jnp.ones(memory.shape[:2], bool)

    def _start(self, memory: Array, memory_mask: Array):
        if memory_mask.shape != memory.shape[:2]:
            raise ValueError(f"memory {memory.shape} does not match memory_mask "
                             f"{memory_mask.shape} ([batch, positions, d] vs [batch, positions])")
        mask = memory_mask.astype(memory.dtype)[..., None]
        summary = (memory * mask).sum(1) / jnp.maximum(mask.sum(1), 1)
        return self.step.start(memory, summary)

    def _decode(self, memory, memory_mask, targets, deterministic):
        logits, weights = super()._decode(memory, memory_mask, targets, deterministic)
        if self.doubly_stochastic and self.attention != "none" and not deterministic:
            real = (targets != self.pad_id).astype(jnp.float32)           # [b, t]
            total = jnp.einsum("bt,bts->bs", real, weights)                 # sum_t alpha_ti
            rows = (real.sum(-1) > 0).astype(jnp.float32)                   # not filler rows
            per_row = ((1.0 - total) ** 2).sum(-1) * rows
            self.sow("losses", "doubly_stochastic",
                     self.doubly_stochastic * per_row.sum() / jnp.maximum(rows.sum(), 1.0))
        return logits, weights


class ImageMemory(nn.Module):
    """images `[b, h, w, c]` -> memory `[b, positions, emb_dim]`: the backbone's tokens, a linear
    map to `emb_dim`, sinusoidal positions over the raster order, dropout, then
    `config.num_encoder_layers` Transformer encoder layers (`layer_{i}`, the final LayerNorm of a
    pre-norm stack after them)."""

    config: Any
    backbone: Any

    @nn.compact
    def __call__(self, images: Array, *, deterministic: bool = True) -> Array:
        from attn_jax.models import build_model  # the registry imports this file lazily

        cfg = self.config
        name, fields = backbone_fields(self.backbone)
        tokens = build_model(name, name="image_encoder", **fields).encode(
            images, train=not deterministic)
        x = nn.Dense(cfg.emb_dim, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                     kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                              (None, "embed")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                            ("embed",)),
                     name="memory_projection")(tokens)
        x = x + sinusoidal_positions(x.shape[1], cfg.emb_dim, dtype=x.dtype)
        x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
        for i in range(cfg.num_encoder_layers):
            x = _block(cfg, decoder=False, cross_attention=False, name=f"layer_{i}")(
                x, None, deterministic=deterministic)
        return _final_norm(cfg, x) if cfg.num_encoder_layers else x


class TransformerCaptioner(EncoderDecoder):
    """Image encoder + Transformer decoder (the module docstring): `EncoderDecoder` whose
    encoder is `ImageMemory`, so decoding (`decode`, `decode_step_fn` with its KV cache) and
    `attention_weights` ('decoder/layer_i/cross_attention': `[b, heads, words, positions]`) are
    the Transformer's own.

    Attributes:
      config: the `TransformerConfig` of the decoder (and of the encoder layers over the image
        tokens: `num_encoder_layers`, 0 for none); `vocab_size` is the caption vocabulary.
      backbone: the image encoder as a registry entry, {'name': ..., **fields}; its parameters
        are the `encoder/image_encoder` subtree.
      image_shape: `(height, width, channels)` the encoder was built for (() = not checked).
    """

    backbone: Any = None
    image_shape: tuple[int, ...] = ()

    def __post_init__(self):
        backbone_fields(self.backbone)
        super().__post_init__()

    def setup(self):
        cfg = self.config
        self.encoder = ImageMemory(cfg, self.backbone)
        self.decoder = Decoder(cfg, _embedding(cfg, cfg.target_vocab_size, "target_embedding"),
                               cross_attention=True)

    def encode(self, source: Array, *, deterministic: bool = True) -> tuple[Array, Array]:
        """images `[batch, h, w, c]` -> (memory `[batch, positions, emb_dim]`, an all-True mask
        `[batch, positions]`)."""
        check_images(source, self.image_shape)
        memory = self.encoder(source, deterministic=deterministic)
        return memory, jnp.ones(memory.shape[:2], bool)


def transformer_captioner(backbone: Any = None, image_shape: tuple[int, ...] = (),
                          preset: str | None = None, **fields: Any) -> TransformerCaptioner:
    """A `TransformerCaptioner` (registered as 'transformer_captioner'): `fields` are
    `TransformerConfig`'s (`transformer_config(preset, **fields)`)."""
    return TransformerCaptioner(transformer_config(preset, **fields), backbone=backbone,
                                image_shape=tuple(image_shape))
