"""Tests of attn_jax.layers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from attn_jax.layers import MlpBlock


def test_mlp_axis_names_reach_the_parameter_boxes():
    """Reference: the names passed (MLP-Mixer's token-mixing MLP runs over the patch axis), and
    the default ('embed', 'mlp') of the channel MLP."""
    x = jnp.ones((2, 3, 7))  # [batch, channels, patches]: token mixing acts on the last axis
    mixer = MlpBlock(mlp_dim=5, axis_names=("patch", "token_mlp"))
    specs = nn.get_partition_spec(jax.eval_shape(mixer.init, jax.random.key(0), x))["params"]
    assert specs == {"Dense_0": {"kernel": P("patch", "token_mlp"), "bias": P("token_mlp")},
                     "Dense_1": {"kernel": P("token_mlp", "patch"), "bias": P("patch")}}
    shapes = jax.eval_shape(mixer.init, jax.random.key(0), x)["params"]
    assert shapes["Dense_0"]["kernel"].value.shape == (7, 5)
    specs = nn.get_partition_spec(
        jax.eval_shape(MlpBlock(mlp_dim=5).init, jax.random.key(0), x))["params"]
    assert specs["Dense_0"]["kernel"] == P("embed", "mlp")
    assert specs["Dense_1"]["bias"] == P("embed")
    with pytest.raises(ValueError, match="axis_names is .*got \\('embed',\\)"):
        MlpBlock(mlp_dim=5, axis_names=("embed",)).init(jax.random.key(0), x)
