"""Blocks shared by the model families: the one Transformer block, its MLP, a partitioned
LayerNorm and stochastic depth."""

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
    ) -> Array:
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

        Returns:
          `[batch, length, features]`.
        """
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
            x = residual(
                x, "cross_attention_norm",
                lambda h: cross_attention(with_pos(h, query_pos), with_pos(memory, memory_pos),
                                          memory, mask=cross_mask, deterministic=deterministic),
                True,
            )
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
        return residual(x, "mlp_norm", lambda h: mlp(h, deterministic=deterministic), False)
