"""Blocks shared by the model families: the one Transformer block, its MLP, a partitioned
LayerNorm, stochastic depth, and SAGAN's self-attention block for feature maps."""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.attention import MultiHeadAttention

Array = jax.Array
Initializer = Callable[..., Array]

# MLP nonlinearities by config name. Flax's `nn.gelu` defaults to the tanh approximation (ViT,
# GPT-2's "gelu_new"); PyTorch's and Hugging Face ViT's "gelu" is the exact erf form.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
}


def layer_norm(
    *,
    epsilon: float = 1e-6,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    name: str | None = None,
) -> nn.LayerNorm:
    """`nn.LayerNorm` whose scale and bias carry the logical axis name 'norm'.

    epsilon=1e-6 as in ViT / the Flax examples (the PyTorch default is 1e-5).
    """
    return nn.LayerNorm(
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


class MlpBlock(nn.Module):
    """Transformer feed-forward block (Vaswani et al. 2017, eq. 2; ViT eq. 3).

    Dense(mlp_dim) -> activation -> dropout -> Dense(out_dim) -> dropout over the last axis,
    `[..., features]` -> `[..., out_dim]`. Initialisation follows ViT: xavier_uniform kernels,
    normal(1e-6) biases; `out_kernel_init` overrides the output layer's kernel init (GPT-2 scales
    it down by 1/sqrt(residual layers)).

    Attributes:
      mlp_dim: hidden width.
      out_dim: output width (default: the input width).
      dropout_rate: dropout after the activation and after the output projection.
      activation: elementwise nonlinearity (default `nn.gelu`, the tanh approximation, as in ViT).
      dtype: compute dtype; param_dtype: storage dtype.
      kernel_init, bias_init, out_kernel_init: initializers (see above).
      axis_names: logical names (input/output axis, hidden axis) of the parameters: kernels
        (in, hidden) and (hidden, in), biases (hidden,) and (in,). ("embed", "mlp") for a
        Transformer's channel MLP; MLP-Mixer's token-mixing MLP runs over the patch axis.
    """

    mlp_dim: int
    out_dim: int | None = None
    dropout_rate: float = 0.0
    activation: Callable[[Array], Array] = nn.gelu
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    bias_init: Initializer = nn.initializers.normal(stddev=1e-6)
    out_kernel_init: Initializer | None = None
    axis_names: tuple[str | None, str | None] = ("embed", "mlp")

    @nn.compact
    def __call__(self, inputs: Array, *, deterministic: bool = True) -> Array:
        """`[..., features]` -> `[..., out_dim or features]`."""
        if len(self.axis_names) != 2:
            raise ValueError(
                "MlpBlock.axis_names is (input/output axis, hidden axis), e.g. ('embed', 'mlp'); "
                f"got {self.axis_names!r}"
            )
        io_axis, hidden_axis = self.axis_names
        out_dim = self.out_dim or inputs.shape[-1]
        x = nn.Dense(
            self.mlp_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(self.kernel_init, (io_axis, hidden_axis)),
            bias_init=nn.with_logical_partitioning(self.bias_init, (hidden_axis,)),
        )(inputs)
        x = self.activation(x)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        x = nn.Dense(
            out_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(
                self.out_kernel_init or self.kernel_init, (hidden_axis, io_axis)),
            bias_init=nn.with_logical_partitioning(self.bias_init, (io_axis,)),
        )(x)
        return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drops a residual branch for whole examples.

    In training each example's branch output is zeroed with probability `rate` and otherwise
    scaled by 1 / (1 - rate), so its expectation is unchanged (the "drop path" of DeiT / timm).
    It is `nn.Dropout` broadcast over every axis but the batch axis, drawing from the 'dropout'
    RNG stream.
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"DropPath rate must lie in [0, 1], got {self.rate}")
        return nn.Dropout(rate=self.rate, broadcast_dims=tuple(range(1, x.ndim)))(
            x, deterministic=deterministic)


def stochastic_depth_rates(rate: float, depth: int) -> list[float]:
    """Per-block drop rates of the linear decay rule (Huang et al. 2016, eq. 4; DeiT, timm).

    Block i of `depth` drops with rate * i / (depth - 1): the first block is never dropped, the
    last with `rate`.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"stochastic_depth_rate must lie in [0, 1), got {rate}")
    if depth < 2:
        return [0.0] * depth
    return [rate * i / (depth - 1) for i in range(depth)]


class TransformerBlock(nn.Module):
    """One Transformer layer: self-attention, optional cross-attention over a memory, an MLP.

    Each sublayer f is a residual branch, pre-norm (ViT eq. 2-3, GPT-2)
    x = x + DropPath(Dropout(f(LN(x)))) or post-norm (Vaswani et al. 2017, sec. 5.4)
    x = LN(x + DropPath(Dropout(f(x)))); the MLP applies its own output dropout, so its branch
    skips the outer Dropout. `[batch, length, features]` -> the same shape.

    The one block of ViT's encoder, the Transformer's encoder and decoder layers, GPT-2 and
    DETR's query decoder (not causal; positions added to queries and keys but not values, as
    `query_pos` / `memory_pos`). Submodules: `self_attention`, `self_attention_norm`,
    `cross_attention`, `cross_attention_norm` (with `cross_attention=True`), `mlp`, `mlp_norm`.

    Attributes:
      num_heads: attention heads. num_kv_heads: key/value heads (fewer = GQA; default num_heads).
      mlp_dim: hidden width of the MLP.
      qkv_features: total query width of both attentions (default: the input width).
      causal: query i of the self-attention sees keys j <= i (a decoder; DETR's is not causal).
      cross_attention: a cross-attention sublayer over `memory` between the other two.
      norm: 'pre' or 'post' (see above). layer_norm_epsilon: of the three LayerNorms.
      dropout_rate: on each branch output and inside the MLP (after the activation).
      attention_dropout_rate: on the attention weights (forces the reference attention path).
      drop_path_rate: stochastic depth (Huang et al. 2016) on every residual branch.
      activation: the MLP's nonlinearity (default `nn.gelu`, the tanh approximation, as ViT).
      attention_use_bias: biases on the attention projections (the MLP always has biases).
      attention_kernel_init, attention_bias_init: of the q/k/v/out projections.
      mlp_kernel_init, mlp_bias_init: of the MLP's two Dense layers.
      residual_kernel_init: of the kernels that write into the residual stream (attention W_O,
        the MLP output); None keeps the branch's kernel init. GPT-2 uses
        normal(0.02 / sqrt(residual layers)) (Radford et al. 2019, sec. 2.3).
      decode: the self-attention keeps a KV cache (see `MultiHeadAttention`); needs causal.
      attention_implementation: passed to `dot_product_attention` (None = automatic).
      dtype: compute dtype; param_dtype: storage dtype.

    The defaults are ViT's choices: pre-norm, epsilon 1e-6, xavier-uniform kernels, zero
    attention biases, normal(1e-6) MLP biases, tanh-GELU.
    """

    num_heads: int
    mlp_dim: int
    num_kv_heads: int | None = None
    qkv_features: int | None = None
    causal: bool = False
    cross_attention: bool = False
    norm: str = "pre"
    layer_norm_epsilon: float = 1e-6
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    activation: Callable[[Array], Array] = nn.gelu
    attention_use_bias: bool = True
    attention_kernel_init: Initializer = nn.initializers.xavier_uniform()
    attention_bias_init: Initializer = nn.initializers.zeros_init()
    mlp_kernel_init: Initializer = nn.initializers.xavier_uniform()
    mlp_bias_init: Initializer = nn.initializers.normal(stddev=1e-6)
    residual_kernel_init: Initializer | None = None
    decode: bool = False
    attention_implementation: str | None = None
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    def _attention(self, name: str, decode: bool) -> MultiHeadAttention:
        return MultiHeadAttention(
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            qkv_features=self.qkv_features,
            dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            use_bias=self.attention_use_bias,
            kernel_init=self.attention_kernel_init,
            bias_init=self.attention_bias_init,
            out_kernel_init=self.residual_kernel_init,
            decode=decode,
            implementation=self.attention_implementation,
            name=name,
        )

    def _check(self, x: Array, mask: Array | None, memory: Array | None,
               memory_mask: Array | None, query_pos: Array | None) -> Array | None:
        """Validates the inputs; returns memory_mask as an attention mask (or None)."""
        if self.norm not in ("pre", "post"):
            raise ValueError(f"TransformerBlock norm must be 'pre' or 'post', got {self.norm!r}")
        if x.ndim != 3:
            raise ValueError(f"TransformerBlock expects x [batch, length, features], got {x.shape}")
        if self.decode and not self.causal:
            raise ValueError("decode=True caches a causal self-attention; set causal=True")
        if self.decode and query_pos is not None:
            raise ValueError("query_pos gives the self-attention separate keys, which decode=True "
                             "(a cache of the block's own keys) does not take")
        if mask is not None and jnp.ndim(mask) != 4:
            raise ValueError(f"mask must be [batch | 1, heads | 1, q_len | 1, kv_len] bool, got "
                             f"shape {jnp.shape(mask)}")
        if not self.cross_attention:
            if memory is not None or memory_mask is not None:
                raise ValueError("memory / memory_mask given to a TransformerBlock without "
                                 "cross_attention")
            return None
        if memory is None:
            raise ValueError("TransformerBlock(cross_attention=True) needs memory [batch, "
                             "src_len, features]")
        if memory.ndim != 3 or memory.shape[0] != x.shape[0]:
            raise ValueError(f"memory must be [batch={x.shape[0]}, src_len, features], got "
                             f"{memory.shape}")
        if memory_mask is None or jnp.ndim(memory_mask) == 4:
            return memory_mask
        if jnp.shape(memory_mask) != memory.shape[:2]:
            raise ValueError(
                f"memory_mask {jnp.shape(memory_mask)} must be [batch, src_len] = "
                f"{memory.shape[:2]} (True = attend) or a [batch, heads, q_len, src_len] mask"
            )
        return jnp.asarray(memory_mask, bool)[:, None, None, :]

    @nn.compact
    def __call__(
        self,
        x: Array,
        mask: Array | None = None,
        memory: Array | None = None,
        memory_mask: Array | None = None,
        *,
        query_pos: Array | None = None,
        memory_pos: Array | None = None,
        deterministic: bool = True,
        return_cross_attention: bool = False,
    ) -> Array | tuple[Array, Array]:
        """Applies the block.

        Args:
          x: `[batch, length, features]`.
          mask: self-attention mask, bool `[batch | 1, heads | 1, length | 1, length]`
            (True = attend); causality is added by `causal`.
          memory: `[batch, src_len, mem_features]`, what cross-attention reads.
          memory_mask: `[batch, src_len]` bool (True = a real position), or a cross-attention
            mask `[batch | 1, heads | 1, length | 1, src_len]`.
          query_pos: `[batch | 1, length, features]` added to the self-attention's queries and
            keys (not its values) and to the cross-attention's queries (DETR).
          memory_pos: `[batch | 1, src_len, mem_features]` added to the cross-attention's keys.
          deterministic: no dropout / drop-path (evaluation).
          return_cross_attention: also return the cross-attention weights `[batch, heads,
            length, src_len]` (float32, before dropout; runs that attention's reference path).

        Returns:
          `[batch, length, features]`, or (that, the weights) with `return_cross_attention`.
        """
        if return_cross_attention and not self.cross_attention:
            raise ValueError("return_cross_attention=True needs a TransformerBlock with "
                             "cross_attention=True")
        cross_mask = self._check(x, mask, memory, memory_mask, query_pos)
        dropout = nn.Dropout(rate=self.dropout_rate)
        pre = self.norm == "pre"
        with_pos = lambda h, pos: h if pos is None else h + pos.astype(h.dtype)  # noqa: E731

        def residual(x: Array, norm_name: str, sublayer: Callable[[Array], Array],
                     drop_output: bool) -> Array:
            norm = layer_norm(epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                              param_dtype=self.param_dtype, name=norm_name)
            h = sublayer(norm(x) if pre else x)
            if drop_output:
                h = dropout(h, deterministic=deterministic)
            x = x + DropPath(self.drop_path_rate)(h, deterministic=deterministic)
            return x if pre else norm(x)

        self_attention = self._attention("self_attention", self.decode)

        def attend_self(h: Array) -> Array:
            # While decoding the attention replaces is_causal by a mask over its cache.
            keys = None if query_pos is None else with_pos(h, query_pos)
            return self_attention(with_pos(h, query_pos), keys, None if keys is None else h,
                                  mask=mask, is_causal=self.causal, deterministic=deterministic)

        x = residual(x, "self_attention_norm", attend_self, True)
        if self.cross_attention:
            cross_attention = self._attention("cross_attention", False)

            def attend_memory(h: Array) -> Array:
                out = cross_attention(with_pos(h, query_pos), with_pos(memory, memory_pos),
                                      memory, mask=cross_mask, deterministic=deterministic,
                                      return_weights=return_cross_attention)
                if return_cross_attention:
                    out, cross_weights[0] = out
                return out

            cross_weights = [None]
            x = residual(x, "cross_attention_norm", attend_memory, True)
        mlp = MlpBlock(
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            activation=self.activation,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.mlp_kernel_init,
            bias_init=self.mlp_bias_init,
            out_kernel_init=self.residual_kernel_init,
            name="mlp",
        )
        x = residual(x, "mlp_norm", lambda h: mlp(h, deterministic=deterministic), False)
        return (x, cross_weights[0]) if return_cross_attention else x


class SelfAttention2D(nn.Module):
    """SAGAN self-attention over the positions of a feature map (Zhang et al. 2019, "Self-Attention
    Generative Adversarial Networks", sec. 3): `[batch, h, w, C]` -> the same shape.

    With x_i the C channels at position i (positions flattened row-major, i = row * w + col):

        f(x_i) = W_f x_i, g(x_j) = W_g x_j      query / key, C_k = max(1, C // reduction) channels
        h(x_j) = W_h x_j                         value, C_v = max(1, C // value_reduction) channels
        beta_ij = softmax_j(f(x_i)^T g(x_j))     over ALL h*w key positions, no 1/sqrt(d) scale
        o_i = W_v sum_j beta_ij h(x_j)           back to C channels
        y_i = x_i + gamma * o_i                  gamma a learned scalar, 0 at init

    The 1x1 convolutions are matrices over the channel axis, without biases, as in the paper and
    the official code. The value width follows the official code (C/2, then the output
    projection W_v back to C; the paper's W_h, W_v have the same shapes); unlike the official code
    the keys and values are not max-pooled, so every position attends to every position. Since
    gamma starts at 0 the block is exactly the identity at init.

    Parameters (logical axes from `axis_names` = (channel axis, inner axis), as `MlpBlock`: the
    projections into the block are split on the inner axis and the output projection on its
    input, the Megatron layout): `query` [C, C_k], `key` [C, C_k], `value` [C, C_v], `output`
    [C_v, C] (glorot-uniform, the official code's init) and `gamma` [] (axes ()).

    The attention map beta `[batch, h*w (queries), h*w (keys)]` (float32) is sown into the
    'intermediates' collection as 'attention' and returned with `return_attention=True`.

    Attributes:
      reduction: C / C_k for the query and key (8 in the paper).
      value_reduction: C / C_v for the value (2 in the official code).
      axis_names: logical names (channel axis, inner axis) of the kernels.
      kernel_init: of the four kernels.
      dtype: compute dtype (the softmax is taken in float32); param_dtype: storage dtype.
    """

    reduction: int = 8
    value_reduction: int = 2
    axis_names: tuple[str | None, str | None] = ("embed", "mlp")
    kernel_init: Initializer = nn.initializers.xavier_uniform()
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    def widths(self, channels: int) -> tuple[int, int]:
        """(C_k, C_v): the query/key and value widths for `channels` input channels."""
        return max(1, channels // self.reduction), max(1, channels // self.value_reduction)

    def _check(self, x: Array) -> None:
        if self.reduction < 1 or self.value_reduction < 1:
            raise ValueError(f"SelfAttention2D reduction={self.reduction} and value_reduction="
                             f"{self.value_reduction} must be positive integers")
        if len(self.axis_names) != 2:
            raise ValueError("SelfAttention2D.axis_names is (channel axis, inner axis), e.g. "
                             f"('embed', 'mlp'); got {self.axis_names!r}")
        if x.ndim != 4:
            raise ValueError(f"SelfAttention2D expects x [batch, height, width, channels], got "
                             f"shape {x.shape}")
        if self.has_variable("params", "query"):
            built = jnp.shape(nn.unbox(self.get_variable("params", "query")))
            if built[0] != x.shape[-1]:
                raise ValueError(f"SelfAttention2D: x has {x.shape[-1]} channels (shape "
                                 f"{x.shape}) but its parameters were built for {built[0]} "
                                 f"(query kernel {built})")

    @nn.compact
    def __call__(self, x: Array, *, return_attention: bool = False
                 ) -> Array | tuple[Array, Array]:
        """`x [batch, h, w, C]` -> y of the same shape and dtype (and beta `[batch, h*w, h*w]`
        float32 with `return_attention=True`)."""
        self._check(x)
        b, height, width, c = x.shape
        c_k, c_v = self.widths(c)
        io_axis, inner_axis = self.axis_names

        def kernel(name: str, shape: tuple[int, int], names: tuple) -> Array:
            w = self.param(name, nn.with_logical_partitioning(self.kernel_init, names), shape,
                           self.param_dtype)
            return w.astype(self.dtype or x.dtype)

        w_f = kernel("query", (c, c_k), (io_axis, inner_axis))
        w_g = kernel("key", (c, c_k), (io_axis, inner_axis))
        w_h = kernel("value", (c, c_v), (io_axis, inner_axis))
        w_v = kernel("output", (c_v, c), (inner_axis, io_axis))
        gamma = self.param("gamma", nn.with_logical_partitioning(nn.initializers.zeros, ()), (),
                           self.param_dtype)

        tokens = x.reshape(b, height * width, c).astype(self.dtype or x.dtype)
        f = tokens @ w_f                                            # [b, n, C_k]
        g = tokens @ w_g                                            # [b, n, C_k]
        h = tokens @ w_h                                            # [b, n, C_v]
        s = jnp.einsum("bik,bjk->bij", f, g,                        # [b, n (queries), n (keys)]
                       preferred_element_type=jnp.float32)
        beta = jax.nn.softmax(s, axis=-1)
        self.sow("intermediates", "attention", beta)
        o = jnp.einsum("bij,bjv->biv", beta.astype(h.dtype), h) @ w_v   # [b, n, C]
        y = x + (gamma.astype(o.dtype) * o).reshape(x.shape).astype(x.dtype)
        return (y, beta) if return_attention else y
