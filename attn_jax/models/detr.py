r"""DETR: End-to-End Object Detection with Transformers (Carion et al. 2020, arXiv:2005.12872).

    tokens = backbone.encode(images)                       [b, h'*w', c]  (any image encoder)
    src = input_proj(tokens)                               [b, h'*w', d]  (the paper's 1x1 conv)
    pos = detr_sine_positions(h', w', d)                   [h'*w', d]     (fixed, sec. 3.2)
          (with a pixel_mask for padded images: the masked encoding, and padded cells
           masked out of every attention's keys)
    memory = encoder(src)       every layer: q = k = x + pos, v = x        (sec. 3.2, fig. 10)
    x_0 = 0;  x_l = decoder_l(x_{l-1}, memory)
        self-attention  q = k = x + query_pos, v = x
        cross-attention q = x + query_pos, k = memory + pos, v = memory
    per decoder layer l: y_l = decoder_norm(x_l) (one shared LayerNorm, as the official code),
        logits_l = class_head(y_l)   [b, N, num_classes + 1]  (the last class is "no object")
        boxes_l = sigmoid(box_head(y_l))  [b, N, 4]  normalised (cx, cy, w, h), box_head a
        3-layer ReLU MLP (sec. 3.1, "prediction feed-forward networks")

The heads are shared by every decoder layer; the earlier layers' predictions are the auxiliary
decoding losses' inputs (sec. 3.2, "Auxiliary decoding losses"). `query_pos` holds the N learned
object queries ("output positional encodings"); the decoder's input starts at zeros.

The encoder and decoder layers are `attn_jax.layers.TransformerBlock`s (post-norm by default as
the paper, pre-norm with norm='pre', which adds a final encoder LayerNorm as the official code
does), with the paper's ReLU MLP and PyTorch's LayerNorm epsilon 1e-5.

`backbone` names any registered image encoder with its fields (the image-encoder contract of
`attn_jax.models.protocols`: `encode(images) -> [b, n, c]`); its parameters are the `backbone`
subtree, so `config.optim.lr_mults = [('backbone/.*', 0.1)]` trains it at the paper's 0.1x lr.
The feature grid (h', w') comes from the backbone's `grid_shape` (the CNN of models/cnn.py), or
from its `patch_size` (a ViT or Mixer without a class token).

Parameters: `backbone/...`, `input_proj`, `encoder_layer{i}/...`, `encoder_norm` (pre-norm),
`query_pos` [N, d], `decoder_layer{i}/...`, `decoder_norm`, `class_head`, `box_head/layer{0,1,2}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import errors as flax_errors

from attn_jax.layers import TransformerBlock, layer_norm
from attn_jax.positional import detr_sine_positions, detr_sine_positions_masked

Array = jax.Array

DEFAULT_BACKBONE = {"name": "cnn"}


def _dense(module: nn.Module, features: int, names: tuple[str | None, str | None], name: str,
           kernel_init=nn.initializers.xavier_uniform()) -> nn.Dense:
    return nn.Dense(features, dtype=module.dtype, param_dtype=module.param_dtype,
                    kernel_init=nn.with_logical_partitioning(kernel_init, names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, names[1:]),
                    name=name)


class DETR(nn.Module):
    """The DETR detector (the module docstring): images `[batch, height, width, channels]` ->
    `{'logits': [b, N, num_classes + 1], 'boxes': [b, N, 4], 'aux': [...]}`.

    Attributes:
      num_classes: object classes; the class head has num_classes + 1 outputs, the last being
        "no object" (91 = COCO's largest category id, as the official code).
      backbone: the image encoder as a registry entry, {'name': ..., **fields} (None: the
        default 'cnn').
      d_model: Transformer width (256 in the paper).
      num_heads: attention heads (8).
      num_encoder_layers, num_decoder_layers: 6 and 6 in the paper.
      mlp_dim: the Transformer MLPs' hidden width (2048).
      num_queries: N, the number of object queries (100).
      norm: 'post' (the paper) or 'pre'.
      dropout_rate: on every residual branch and inside the MLPs (0.1).
      attention_dropout_rate: on the attention weights (0.1, as torch's MultiheadAttention in the
        official code; > 0 runs the reference attention path while training).
      temperature: of the sine position encoding (10000).
      dtype: compute dtype; param_dtype: storage dtype.
    """

    num_classes: int = 91
    backbone: Any = None
    d_model: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    mlp_dim: int = 2048
    num_queries: int = 100
    norm: str = "post"
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    temperature: float = 10_000.0
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    # -- the backbone ---------------------------------------------------------------------------

    @nn.nowrap
    def backbone_spec(self) -> dict[str, Any]:
        spec = DEFAULT_BACKBONE if self.backbone is None else self.backbone
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"DETR backbone={self.backbone!r}: give the image encoder as a dict "
                             "with its registry 'name' and fields, e.g. {'name': 'cnn', ...}")
        return dict(spec)

    @nn.nowrap
    def backbone_module(self) -> nn.Module:
        """The backbone as an unbound module (no parent): its plain methods (`grid_shape`) are
        usable outside `apply`."""
        from attn_jax.models import build_model  # the registry imports this file lazily

        spec = self.backbone_spec()
        return build_model(spec.pop("name"), parent=None, **spec)

    @nn.nowrap
    def grid_shape(self, image_shape: Sequence[int]) -> tuple[int, int]:
        """(h', w') of the backbone's feature grid for images `(height, width[, channels])`:
        the encoder's and the cross-attention maps' positions are its cells, row-major."""
        backbone = self.backbone_module()
        if hasattr(backbone, "grid_shape"):
            return tuple(backbone.grid_shape(image_shape))
        patch = getattr(backbone, "patch_size", None)
        if patch is None:
            raise ValueError(f"DETR backbone {self.backbone_spec()['name']!r} has neither "
                             "grid_shape nor patch_size: its token grid is unknown")
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        return int(image_shape[0]) // ph, int(image_shape[1]) // pw

    # -- checks ---------------------------------------------------------------------------------

    def _check(self, images: Array) -> None:
        if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"DETR expects float images [batch, height, width, channels], got "
                             f"shape {images.shape} {images.dtype}")
        if self.norm not in ("pre", "post"):
            raise ValueError(f"DETR norm must be 'pre' or 'post', got {self.norm!r}")
        if self.d_model % self.num_heads or self.d_model % 4:
            raise ValueError(f"DETR d_model={self.d_model} must be divisible by num_heads="
                             f"{self.num_heads} and by 4 (the sine position encoding)")
        if self.num_queries < 1 or self.num_decoder_layers < 1 or self.num_encoder_layers < 0:
            raise ValueError(f"DETR needs num_queries >= 1, num_decoder_layers >= 1 and "
                             f"num_encoder_layers >= 0; got {self.num_queries}, "
                             f"{self.num_decoder_layers}, {self.num_encoder_layers}")
        if self.num_classes < 1:
            raise ValueError(f"DETR num_classes={self.num_classes} must be >= 1")

    # -- the model ------------------------------------------------------------------------------

    def _block(self, name: str, cross: bool) -> TransformerBlock:
        return TransformerBlock(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, cross_attention=cross,
            norm=self.norm, layer_norm_epsilon=1e-5, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate, activation=nn.relu,
            mlp_bias_init=nn.initializers.zeros, dtype=self.dtype, param_dtype=self.param_dtype,
            name=name)

    @staticmethod
    def _heads(y: Array, class_head: nn.Module, box_layers: Sequence[nn.Module]
               ) -> dict[str, Array]:
        h = nn.relu(box_layers[0](y))
        h = nn.relu(box_layers[1](h))
        boxes = jax.nn.sigmoid(box_layers[2](h).astype(jnp.float32))
        return {"logits": class_head(y), "boxes": boxes}

    @nn.nowrap
    def grid_mask(self, pixel_mask: Array) -> Array:
        """The feature grid's mask `[b, h', w']` of a pixel mask `[b, H, W]` (True = a real
        pixel): nearest-neighbour downsampling, cell (i, j) reading pixel (floor(i H / h'),
        floor(j W / w')), as the official code's `F.interpolate(mask, size)`."""
        gh, gw = self.grid_shape(pixel_mask.shape[1:3])
        rows = (jnp.arange(gh) * pixel_mask.shape[1]) // gh
        cols = (jnp.arange(gw) * pixel_mask.shape[2]) // gw
        return pixel_mask.astype(bool)[:, rows][:, :, cols]

    @nn.compact
    def _forward(self, images: Array, pixel_mask: Array | None, train: bool,
                 cross_attention: bool):
        self._check(images)
        if pixel_mask is not None and tuple(pixel_mask.shape) != tuple(images.shape[:3]):
            raise ValueError(f"DETR pixel_mask must be [batch, height, width] = "
                             f"{tuple(images.shape[:3])} (True = a real pixel), got "
                             f"{tuple(pixel_mask.shape)}")
        deterministic = not train
        backbone = self.backbone_module().clone(parent=self, name="backbone")
        try:
            tokens = backbone.encode(images, train=train)
        except flax_errors.ScopeParamShapeError as e:
            raise ValueError(f"DETR: images of shape {images.shape} do not fit the backbone's "
                             f"parameters (another channel count than at init?): {e}") from None
        gh, gw = self.grid_shape(images.shape[1:3])
        if tokens.ndim != 3 or tokens.shape[1] != gh * gw:
            raise ValueError(f"DETR: the backbone gave tokens of shape {tokens.shape} for images "
                             f"{images.shape}, not [batch, {gh}*{gw}, channels] for its "
                             f"{gh}x{gw} grid (a ViT needs pool_type='gap': no class token)")
        dtype = self.dtype or tokens.dtype
        src = _dense(self, self.d_model, ("conv_out", "embed"), "input_proj")(tokens)
        if pixel_mask is None:
            key_mask = None
            pos = detr_sine_positions(gh, gw, self.d_model, self.temperature, dtype=dtype)[None]
        else:
            # Padded cells are never attended to (encoder keys, decoder cross-attention keys),
            # and the positions span each image's real extent (the official masked encoding).
            cells = self.grid_mask(pixel_mask)                     # [b, h', w']
            key_mask = cells.reshape(cells.shape[0], gh * gw)
            pos = detr_sine_positions_masked(cells, self.d_model, self.temperature, dtype=dtype)

        x = src
        for i in range(self.num_encoder_layers):
            self_mask = None if key_mask is None else key_mask[:, None, None, :]
            x = self._block(f"encoder_layer{i}", False)(x, self_mask, query_pos=pos,
                                                        deterministic=deterministic)
        if self.norm == "pre":
            x = layer_norm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                           name="encoder_norm")(x)
        memory = x

        # torch's nn.Embedding init N(0, 1), as the official code's query_embed.
        query_pos = self.param("query_pos", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), (None, "embed")), (self.num_queries, self.d_model),
            self.param_dtype).astype(dtype)[None]
        decoder_norm = layer_norm(epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                                  name="decoder_norm")
        class_head = _dense(self, self.num_classes + 1, ("embed", "classes"), "class_head")
        box_layers = [
            _dense(self, self.d_model, ("embed", "mlp"), "box_head_layer0"),
            _dense(self, self.d_model, ("mlp", "embed"), "box_head_layer1"),
            _dense(self, 4, ("embed", None), "box_head_layer2")]

        y = jnp.zeros((images.shape[0], self.num_queries, self.d_model), dtype)
        per_layer, weights = [], None
        for i in range(self.num_decoder_layers):
            last = i == self.num_decoder_layers - 1
            out = self._block(f"decoder_layer{i}", True)(
                y, memory=memory, memory_mask=key_mask, query_pos=query_pos, memory_pos=pos,
                deterministic=deterministic, return_cross_attention=cross_attention and last)
            y, weights = out if (cross_attention and last) else (out, None)
            per_layer.append(self._heads(decoder_norm(y), class_head, box_layers))
        outputs = dict(per_layer[-1], aux=per_layer[:-1])
        return (outputs, weights) if cross_attention else outputs

    def __call__(self, images: Array, *, pixel_mask: Array | None = None,
                 train: bool = False) -> dict[str, Any]:
        """images `[batch, height, width, channels]` ->

            {'logits': [batch, N, num_classes + 1] (the last class = no object),
             'boxes':  [batch, N, 4] normalised (cx, cy, w, h) in (0, 1),
             'aux':    [{'logits', 'boxes'} of decoder layers 0 .. L-2] (a list, first layer
                       first; empty with one decoder layer)}

        `pixel_mask` `[batch, height, width]` bool (True = a real pixel; None = all real) is for
        images padded to one shape (COCO's): the padded feature cells are masked out of the
        encoder's and the cross-attention's keys, and the sine positions follow each image's
        real extent (`detr_sine_positions_masked`). Padding must be at the bottom and right.
        `train` enables dropout (rng 'dropout') in the Transformer and is passed to the backbone.
        """
        return self._forward(images, pixel_mask, train, False)

    def cross_attention_map(self, images: Array, pixel_mask: Array | None = None
                            ) -> tuple[dict[str, Any], Array]:
        """(`__call__`'s outputs, the last decoder layer's cross-attention weights
        `[batch, heads, N, h'*w']` float32): query n's attention over the feature grid cells
        (row-major; `grid_shape(images.shape[1:3])` gives (h', w')), each row summing to 1.
        The paper's fig. 6 pictures reshape it to `[..., h', w']`. Deterministic (no dropout)."""
        return self._forward(images, pixel_mask, False, True)
