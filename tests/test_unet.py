"""Tests for attn_jax.models.unet: the DDPM U-Net.

References: the published parameter count of the DDPM CIFAR-10 model (35.7M, Ho et al. 2020;
35,746,307 in the official diffusion_tf code), the reference `get_timestep_embedding` and
`attn_block` re-written in NumPy, and exact identities of the zero-initialised layers.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.models.unet import AttnBlock, ResnetBlock, UNet, timestep_embedding

TINY = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.1)


def _key(seed: int) -> jax.Array:
    """An 'rbg' PRNG key: XLA compiles its initialisers several times faster than threefry's."""
    return jax.random.key(seed, impl="rbg")


def _num_params(params) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(nn.unbox(params)))


@pytest.fixture(scope="module")
def tiny():
    """A tiny U-Net for 16x16x3 images with a learned-variance (6-channel) output, its initial
    params, inputs, and one jitted apply shared by the tests (compiled once per `train`)."""
    model = UNet(**TINY, out_channels=6)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    t = np.array([3, 801], np.int32)
    params = jax.jit(model.init)(_key(0), x, t)["params"]
    apply = jax.jit(
        lambda p, t, rng, train: model.apply(
            {"params": p}, x, t, train=train, rngs={"dropout": rng}
        ),
        static_argnames="train",
    )
    return model, params, x, t, apply


def _randomise_zero_inits(params, seed=1):
    """Replaces every all-zero parameter (biases, zero-init convs) by small random values."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: p if np.any(np.asarray(p)) else 0.05 * rng.standard_normal(p.shape, np.float32),
        nn.unbox(params),
    )


def test_cifar10_model_has_35_7m_parameters():
    """Ho et al. 2020 (Table 1, App. B): 35.7M parameters; the official code has 35,746,307."""
    model = UNet(
        ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1
    )
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,), jnp.int32)
    )
    n = _num_params(shapes["params"])
    print(f"DDPM CIFAR-10 U-Net parameters: {n:,}")
    assert abs(n - 35.7e6) < 0.1e6
    assert n == 35_746_307


def test_timestep_embedding_matches_reference_formula():
    """The official `get_timestep_embedding` in NumPy: sin half then cos half, denominator
    half_dim - 1, float timesteps allowed."""
    t = np.array([0, 1, 17, 999, 2.5])
    dim = 64
    half = dim // 2
    freqs = np.exp(-math.log(10_000) / (half - 1) * np.arange(half))
    want = np.concatenate([np.sin(t[:, None] * freqs), np.cos(t[:, None] * freqs)], axis=1)
    np.testing.assert_allclose(timestep_embedding(jnp.asarray(t), dim), want, atol=2e-4)


def test_tiny_unet_forward_shapes_and_zero_output_at_init(tiny):
    """Output `[b, H, W, out_channels]` float32; the zero-init conv_out makes it exactly 0 at init,
    and non-zero once the zero-initialised weights are perturbed."""
    _, params, _, t, apply = tiny
    out = apply(params, t, _key(0), train=False)
    assert out.shape == (2, 16, 16, 6) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, 0.0)
    out = apply(_randomise_zero_inits(params), t, _key(0), train=False)
    assert float(jnp.abs(out).mean()) > 1e-3


def test_unet_depends_on_timestep_and_dropout(tiny):
    """With perturbed weights: different t -> different outputs; train=True applies dropout
    (depends on the 'dropout' rng), train=False is deterministic."""
    _, params, _, t, apply = tiny
    params = _randomise_zero_inits(params)
    e1, e2 = apply(params, t, _key(0), train=False), apply(params, t, _key(1), train=False)
    e3 = apply(params, t + 100, _key(0), train=False)
    d1, d2 = apply(params, t, _key(0), train=True), apply(params, t, _key(1), train=True)
    np.testing.assert_array_equal(e1, e2)
    assert float(jnp.abs(d1 - d2).max()) > 1e-4
    assert float(jnp.abs(e1 - e3).max()) > 1e-4


def test_param_structure_and_logical_axis_names(tiny):
    """Every parameter is boxed with logical names; attention blocks are MultiHeadAttention with
    one head over C channels (query kernel [C, 1, C]), at 8x8 and in the middle only."""
    params = tiny[1]
    flat = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned)
    )[0]
    names = {jax.tree_util.keystr(path): leaf for path, leaf in flat}
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in names.values())
    assert names["['conv_in']['kernel']"].names == (None, None, "conv_in", "conv_out")
    assert names["['down_0_block_0']['norm1']['scale']"].names == ("norm",)
    assert names["['temb_dense0']['kernel']"].names == ("embed", "mlp")
    q = names["['mid_attn_1']['attn']['query']['kernel']"]
    assert q.names == ("embed", "heads", "kv") and q.value.shape == (64, 1, 64)
    assert names["['mid_attn_1']['attn']['out']['kernel']"].names == ("heads", "kv", "embed")
    attn = sorted({p.split("]")[0][2:-1] for p in names if "attn" in p})
    # 16x16 (level 0) has none; 8x8 (level 1) has one per down block, two up blocks, mid.
    assert attn == ["down_1_attn_0", "mid_attn_1", "up_1_attn_0", "up_1_attn_1"]
    # 1x1 shortcut only where the width changes (32 -> 64 at level 1; concatenated skips).
    assert "nin_shortcut" not in params["down_0_block_0"]
    assert "nin_shortcut" in params["down_1_block_0"]


def _group_norm_np(x, groups, scale, bias, eps=1e-6):
    b, h, w, c = x.shape
    g = x.reshape(b, h * w, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def test_attn_block_matches_reference_attn_block():
    """AttnBlock vs the official `attn_block` in NumPy: GroupNorm, 1x1 q/k/v, softmax over all
    H*W positions with scale C^-1/2, 1x1 proj_out, residual."""
    c, groups = 16, 4
    block = AttnBlock(num_heads=1, num_groups=groups)
    x = np.random.default_rng(0).standard_normal((2, 4, 3, c)).astype(np.float32)
    rng = np.random.default_rng(1)
    params = jax.tree.map(  # random values everywhere, so no zero-init hides a term
        lambda p: 0.3 * rng.standard_normal(p.shape, np.float32),
        nn.unbox(jax.jit(block.init)(_key(0), x)["params"]),
    )
    got = jax.jit(block.apply)({"params": params}, x)

    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    h = _group_norm_np(x.astype(np.float64), groups, p["norm"]["scale"], p["norm"]["bias"])
    a = p["attn"]
    q, k, v = (h @ a[n]["kernel"][:, 0, :] + a[n]["bias"][0] for n in ("query", "key", "value"))
    b = x.shape[0]
    q, k, v = (m.reshape(b, -1, c) for m in (q, k, v))
    w = np.einsum("bic,bjc->bij", q, k) * c**-0.5
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bij,bjc->bic", w, v) @ a["out"]["kernel"][0] + a["out"]["bias"]
    np.testing.assert_allclose(got, x + o.reshape(x.shape), rtol=1e-4, atol=1e-4)


def test_attn_block_at_init_is_identity():
    """proj_out is zero-initialised (reference init_scale=0), so the block starts as x."""
    x = np.random.default_rng(2).standard_normal((1, 4, 4, 8)).astype(np.float32)
    block = AttnBlock(num_heads=1, num_groups=4)
    variables = jax.jit(block.init)(_key(0), x)
    np.testing.assert_array_equal(jax.jit(block.apply)(variables, x), x)


def test_resnet_block_at_init_is_identity_or_shortcut():
    """conv2 is zero-initialised (reference init_scale=0): at init the block returns x when the
    width is unchanged, and the 1x1 `nin_shortcut` of x when it changes."""
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 8)).astype(np.float32)
    temb = np.ones((2, 12), np.float32)
    same = ResnetBlock(out_ch=8, num_groups=4)
    out = jax.jit(same.apply)(jax.jit(same.init)(_key(0), x, temb), x, temb)
    np.testing.assert_allclose(out, x, atol=1e-6)
    wider = ResnetBlock(out_ch=16, num_groups=4)
    variables = jax.jit(wider.init)(_key(0), x, temb)
    sc = nn.unbox(variables["params"]["nin_shortcut"])
    want = np.einsum("bhwc,cd->bhwd", x, np.asarray(sc["kernel"][0, 0])) + np.asarray(sc["bias"])
    got = jax.jit(wider.apply)(variables, x, temb)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_returns_float32(tiny):
    """dtype=bfloat16 computes in bf16 with float32 params; the output is float32 and close to
    the float32 model's."""
    _, params, x, t, apply = tiny
    params = _randomise_zero_inits(params)
    bf16 = UNet(**TINY, out_channels=6, dtype=jnp.bfloat16)
    out16 = jax.jit(lambda p: bf16.apply({"params": p}, x, t))(params)
    out32 = apply(params, t, _key(0), train=False)
    assert out16.dtype == jnp.float32
    scale = float(jnp.abs(out32).max())
    np.testing.assert_allclose(out16, out32, atol=0.05 * scale)


def test_bad_shapes_raise_value_error():
    x, t = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,), jnp.int32)
    init = lambda m, x, t: jax.eval_shape(m.init, jax.random.key(0), x, t)  # noqa: E731
    with pytest.raises(ValueError, match=r"divisible by 2\*\*\(len\(ch_mult\) - 1\) = 4"):
        init(UNet(ch=32, ch_mult=(1, 2, 2), attn_resolutions=()), jnp.zeros((2, 18, 16, 3)), t)
    with pytest.raises(ValueError, match="not divisible by num_groups=32"):
        init(UNet(ch=48, ch_mult=(1, 2), attn_resolutions=()), x, t)
    with pytest.raises(ValueError, match=r"attn_resolutions \(7,\)"):
        init(UNet(ch=32, ch_mult=(1, 2), attn_resolutions=(7,)), x, t)
    with pytest.raises(ValueError, match=r"t \[batch\]"):
        init(UNet(**TINY), x, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"x \[batch, height, width, channels\]"):
        init(UNet(**TINY), jnp.zeros((2, 16, 16)), t)
