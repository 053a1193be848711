"""Every registered model: init, output shape, logical axis names on every parameter, and its
parameter count against a closed-form count of its architecture (the reference: the layer
shapes of the papers' equations, summed by hand below). `test_every_registered_model_has_an_entry`
fails when a family is registered without an entry here.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from attn_jax.models import MODELS, build_model


def _vit_count(d, depth, mlp, patch, channels, tokens, classes):
    block = 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    return patch * patch * channels * d + d + d + tokens * d + depth * block + 2 * d + d * classes + classes


def _transformer_block(d, mlp, cross):
    attn = 4 * (d * d + d)
    return (2 + cross) * 2 * d + (1 + cross) * attn + (d * mlp + mlp) + (mlp * d + d)


def _lstm_layer(d_in, h):
    """Gates i, f, g, o: W_x [d_in, h], W_h [h, h] and one bias [h] each (Hochreiter &
    Schmidhuber 1997, as flax and torch with b_ih + b_hh merged)."""
    return 4 * (d_in * h + h * h + h)


# name -> (kwargs, inputs (a function of the model), output shape, parameter count or None)
ENTRIES = {
    "vit": (dict(num_classes=10, patch_size=4, hidden_size=32, depth=2, num_heads=4, mlp_dim=64),
            lambda: (jnp.zeros((2, 16, 16, 3)),), (2, 10),
            _vit_count(32, 2, 64, 4, 3, 1 + 16, 10)),
    "unet": (dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=8,
                  out_channels=3),
             lambda: (jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32)), (2, 8, 8, 3), None),
    "transformer": (dict(vocab_size=50, emb_dim=32, num_heads=4, mlp_dim=64, num_encoder_layers=2,
                         num_decoder_layers=1, max_len=16),
                    lambda: (jnp.ones((2, 12), jnp.int32), jnp.ones((2, 7), jnp.int32)),
                    (2, 7, 50),
                    # shared tied embedding, sinusoidal positions, post-norm (no final norm)
                    50 * 32 + 2 * _transformer_block(32, 64, 0) + _transformer_block(32, 64, 1)),
    "decoder_lm": (dict(preset="gpt2_small", vocab_size=50, emb_dim=32, num_heads=4, mlp_dim=64,
                        num_decoder_layers=2, max_len=16),
                   lambda: (jnp.ones((2, 9), jnp.int32),), (2, 9, 50),
                   # tied embedding + learned positions + blocks + final LayerNorm
                   50 * 32 + 16 * 32 + 2 * _transformer_block(32, 64, 0) + 2 * 32),
    "lstm_lm": (dict(vocab_size=50, emb_dim=16, hidden_dim=24, num_layers=2),
                lambda: (jnp.ones((2, 9), jnp.int32),), (2, 9, 50),
                # embedding + per layer 4 gates x (input kernel + recurrent kernel + bias) + head
                50 * 16 + _lstm_layer(16, 24) + _lstm_layer(24, 24) + 24 * 50 + 50),
}


def test_every_registered_model_has_an_entry():
    assert sorted(ENTRIES) == sorted(MODELS), (
        "a model was registered in attn_jax.models.MODELS without an entry in tests/"
        "test_models.py (init, output shape, axis names, parameter count)")


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_registered_model(name):
    kwargs, inputs, shape, count = ENTRIES[name]
    model = build_model(name, **kwargs)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs())
    out = jax.eval_shape(model.apply, variables, *inputs())
    assert out.shape == shape
    leaves = jax.tree_util.tree_leaves_with_path(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{name}{where} has no axis names"
        assert len(leaf.names) == len(leaf.value.shape), f"{name}{where}: {leaf.names}"
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(variables["params"])))
    if count is not None:
        assert n == count
