"""SAGAN's self-attention block (`attn_jax.layers.SelfAttention2D`, Zhang et al. 2019, sec. 3)
and the U-Net's `attn_type='sagan'`.

References: the block's formula evaluated in NumPy (float64) from the block's own parameters,
written here independently of the module; exact identities (gamma = 0 is the identity); and the
receptive field of a stack of 3x3 convolutions (a change cannot travel farther than one pixel per
layer), against which the attention's reach over the whole map is shown.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.layers import SelfAttention2D
from attn_jax.models.unet import UNet


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _init(block, x, gamma=None):
    params = nn.unbox(block.init(jax.random.key(1), x)["params"])
    if gamma is not None:
        params = {**params, "gamma": jnp.asarray(gamma, jnp.float32)}
    return params


def _numpy_sagan(x, p):
    """Zhang et al. sec. 3 in NumPy: s_ij = f(x_i)^T g(x_j), beta_ij = softmax_j s_ij,
    o_i = W_v sum_j beta_ij h(x_j), y = x + gamma o. Returns (y, beta)."""
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    out = np.empty_like(x)
    betas = []
    for n in range(b):
        tokens = x[n].reshape(h * w, c)
        f, g, v = tokens @ p["query"], tokens @ p["key"], tokens @ p["value"]
        s = f @ g.T
        e = np.exp(s - s.max(axis=1, keepdims=True))
        beta = e / e.sum(axis=1, keepdims=True)
        o = (beta @ v) @ p["output"]
        out[n] = x[n] + p["gamma"] * o.reshape(h, w, c)
        betas.append(beta)
    return out, np.stack(betas)


def test_identity_at_init_bit_for_bit():
    block = SelfAttention2D()
    x = _x((2, 5, 6, 16))
    variables = block.init(jax.random.key(1), x)
    assert float(nn.unbox(variables["params"]["gamma"])) == 0.0
    y, beta = block.apply(variables, x, return_attention=True)
    assert y.dtype == x.dtype and np.array_equal(np.asarray(y), x)
    # ... and not because the attention output is zero: with gamma != 0 the block moves x.
    y1 = block.apply({"params": _init(block, x, gamma=0.5)}, x)
    assert not np.allclose(np.asarray(y1), x)


@pytest.mark.parametrize("channels", [16, 4])  # 4 // 8 = 0: the query/key keep one channel
def test_matches_numpy_formula_with_nonzero_gamma(channels):
    block = SelfAttention2D()
    x = _x((2, 4, 5, channels), seed=channels)
    params = _init(block, x, gamma=0.7)
    c_k, c_v = max(1, channels // 8), channels // 2
    assert params["query"].shape == params["key"].shape == (channels, c_k)
    assert params["value"].shape == (channels, c_v) and params["output"].shape == (c_v, channels)
    y, beta = block.apply({"params": params}, x, return_attention=True)
    want_y, want_beta = _numpy_sagan(x, params)
    np.testing.assert_allclose(np.asarray(beta), want_beta, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-5, atol=1e-5)


def test_attention_is_a_softmax_over_all_key_positions():
    block = SelfAttention2D(reduction=2)
    x = _x((2, 4, 6, 8), seed=3)
    params = _init(block, x, gamma=1.0)
    y, sown = block.apply({"params": params}, x, mutable=["intermediates"])
    beta = np.asarray(sown["intermediates"]["attention"][0], np.float64)
    assert beta.shape == (2, 24, 24)  # [batch, queries, keys], all h*w positions as keys
    assert (beta >= 0).all() and (beta.max(-1) < 1).all()  # spread over several keys
    np.testing.assert_allclose(beta.sum(-1), 1.0, atol=1e-6)
    _, returned = block.apply({"params": params}, x, return_attention=True)
    np.testing.assert_array_equal(np.asarray(returned), beta.astype(np.float32))


def test_reach_of_attention_against_a_conv_stack_of_the_same_depth():
    """A change at pixel (0, 0) reaches the opposite corner (7, 7) through one SAGAN block; two
    3x3 convolutions (the block's depth: projections in, projection out) see 5x5 pixels, so the
    far output stays exactly the same while the near one moves."""
    x = _x((1, 8, 8, 8), seed=4)
    moved = x.copy()
    moved[0, 0, 0] += 1.0
    block = SelfAttention2D()
    params = _init(block, x, gamma=1.0)
    far = lambda y: np.asarray(y)[0, 7, 7]  # noqa: E731
    assert not np.array_equal(far(block.apply({"params": params}, x)),
                              far(block.apply({"params": params}, moved)))

    convs = nn.Sequential([nn.Conv(8, (3, 3), padding="SAME"), jnp.tanh,
                           nn.Conv(8, (3, 3), padding="SAME")])
    conv_params = convs.init(jax.random.key(2), x)
    a, b = np.asarray(convs.apply(conv_params, x)), np.asarray(convs.apply(conv_params, moved))
    assert np.array_equal(a[0, 7, 7], b[0, 7, 7])
    assert np.array_equal(a[0, 3:, 3:], b[0, 3:, 3:])   # nothing outside the 5x5 window moves
    assert not np.array_equal(a[0, 2, 2], b[0, 2, 2])   # the edge of the window does


def test_bad_inputs_are_refused():
    block = SelfAttention2D()
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\].*\(2, 16, 8\)"):
        block.init(jax.random.key(0), jnp.zeros((2, 16, 8)))
    params = block.init(jax.random.key(0), jnp.zeros((1, 4, 4, 16)))["params"]
    with pytest.raises(ValueError, match=r"8 channels.*\(1, 4, 4, 8\).*built for 16"):
        block.apply({"params": params}, jnp.zeros((1, 4, 4, 8)))
    with pytest.raises(ValueError, match="reduction=0"):
        SelfAttention2D(reduction=0).init(jax.random.key(0), jnp.zeros((1, 4, 4, 16)))


def test_parameters_carry_logical_axis_names():
    variables = SelfAttention2D().init(jax.random.key(0), jnp.zeros((1, 2, 2, 16)))
    names = {k: v.names for k, v in variables["params"].items()}
    assert names == {"query": ("embed", "mlp"), "key": ("embed", "mlp"),
                     "value": ("embed", "mlp"), "output": ("mlp", "embed"), "gamma": ()}


UNET = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=8,
            dropout=0.0)


def test_unet_with_sagan_blocks():
    x = _x((2, 8, 8, 3), seed=5)
    t = jnp.array([3, 40])
    model = UNet(**UNET, attn_type="sagan")
    params = jax.jit(model.init)(jax.random.key(0), x, t)["params"]
    attention_blocks = sorted(k for k in params if "attn" in k)
    assert attention_blocks == ["down_1_attn_0", "mid_attn_1", "up_1_attn_0", "up_1_attn_1"]
    for k in attention_blocks:
        assert sorted(params[k]) == ["attn"]                                 # no GroupNorm
        assert sorted(params[k]["attn"]) == ["gamma", "key", "output", "query", "value"]
    assert model.apply({"params": params}, x, t).shape == (2, 8, 8, 3)
    # The default is unchanged: DDPM's GroupNorm + multi-head attention.
    assert UNet().attn_type == "mha"
    default = jax.eval_shape(UNet(**UNET).init, jax.random.key(0), x, t)["params"]
    assert sorted(default["mid_attn_1"]) == ["attn", "norm"]
    assert sorted(default["mid_attn_1"]["attn"]) == ["key", "out", "query", "value"]
    with pytest.raises(ValueError, match="attn_type must be 'mha' or 'sagan', got 'sa'"):
        UNet(**UNET, attn_type="sa").init(jax.random.key(0), x, t)


def test_bfloat16_compute_keeps_the_input_dtype_and_a_float32_softmax():
    block = SelfAttention2D(dtype=jnp.bfloat16)
    x = _x((1, 4, 4, 16), seed=6)
    params = _init(block, x)
    y = block.apply({"params": params}, x)
    assert y.dtype == jnp.float32 and np.array_equal(np.asarray(y), x)  # gamma = 0
    params = {**params, "gamma": jnp.float32(0.7)}
    y, beta = block.apply({"params": params}, x, return_attention=True)
    assert beta.dtype == jnp.float32
    want_y, want_beta = _numpy_sagan(x, params)
    np.testing.assert_allclose(np.asarray(beta), want_beta, atol=3e-2)  # bfloat16 projections
    np.testing.assert_allclose(np.asarray(y), want_y, atol=5e-2)
