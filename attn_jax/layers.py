"""Small blocks shared by the model families: the Transformer MLP and a partitioned LayerNorm."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]


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
