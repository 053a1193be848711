"""Tests for attn_jax.models.vit (and attn_jax.layers' TransformerBlock and MlpBlock through it)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import positional
from attn_jax.layers import DropPath, stochastic_depth_rates
from attn_jax.models.vit import ViT, vit_variant

# Published parameter counts: google-research/vision_transformer vit_jax/models_test.py
# (1000 classes, 224x224 RGB, no pre-logits layer; '-gap' = global average pooling, no cls token).
PUBLISHED_COUNTS = {
    "Ti/16": 5_717_416,
    "S/16": 22_050_664,
    "B/16": 86_567_656,
    "B/32": 88_224_232,
    "B/8": 86_576_872,
    "L/16": 304_326_632,
    "H/14": 632_045_800,
    "S/16-gap": 22_049_896,
    "B/16-gap": 86_566_120,
}


def _count(model: ViT, image_size: int = 224) -> int:
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_parameter_counts_match_published(name):
    """Reference: vision_transformer's models_test.py counts (no real allocation: eval_shape)."""
    variant, _, pool = name.partition("-")
    model = ViT.from_variant(variant, num_classes=1000, pool_type=pool or "token")
    assert _count(model) == PUBLISHED_COUNTS[name]


def test_variants():
    """Reference: ViT paper Table 1 (B/L/H) and Steiner et al. 2021 (Ti/S)."""
    assert vit_variant("L/16") == dict(
        hidden_size=1024, depth=24, num_heads=16, mlp_dim=4096, patch_size=(16, 16))
    assert vit_variant("Ti/4")["patch_size"] == (4, 4)
    assert "patch_size" not in vit_variant("S")
    with pytest.raises(ValueError, match="'X'"):
        vit_variant("X/16")
    with pytest.raises(ValueError, match="'B/p'"):
        vit_variant("B/p")


PATCH = (2, 4)  # non-square, so a height/width mix-up cannot pass


def _tiny(**kw) -> ViT:
    return ViT.from_variant("mu", **{"num_classes": 5, "patch_size": PATCH, **kw})


@pytest.fixture(scope="module")
def tiny():
    """One tiny ViT (2 blocks, width 32, 4x2 patches of 8x8 images) shared to keep compiles few.

    Returns (model, images, variables with a random head, variables as initialised).
    """
    model = _tiny()
    images = np.asarray(jax.random.normal(jax.random.key(2), (2, 8, 8, 3)))
    initial = jax.jit(model.init)(jax.random.key(3), images)
    k1, k2 = jax.random.split(jax.random.key(4))
    head = initial["params"]["head"]  # zero-initialised; randomise it so logits are informative
    params = {**initial["params"], "head": {
        "kernel": head["kernel"].replace_boxed(jax.random.normal(k1, (32, 5))),
        "bias": head["bias"].replace_boxed(jax.random.normal(k2, (5,))),
    }}
    return model, images, {"params": params}, initial


@pytest.mark.parametrize("pool_type,posemb", [("token", "learn"), ("gap", "learn"),
                                              ("token", "sincos2d"), ("gap", "sincos2d")])
def test_forward_shapes_and_param_tree(pool_type, posemb):
    """Reference: the architecture itself (token count, which parameters exist); eval_shape only."""
    model = _tiny(pool_type=pool_type, posemb=posemb)
    images = jax.ShapeDtypeStruct((2, 16, 12, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    params = nn.unbox(variables["params"])
    assert ("cls" in params) == (pool_type == "token")
    assert ("posembed_input" in params) == (posemb == "learn")
    if posemb == "learn":  # 8x3 patches, plus the class token
        n_tokens = 24 + (pool_type == "token")
        assert params["posembed_input"]["pos_embedding"].shape == (1, n_tokens, 32)
    logits = jax.eval_shape(model.apply, variables, images)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32


def test_patch_embedding_equals_numpy_patchify_matmul(tiny):
    """Reference: explicit NumPy patchify ([ph, pw, C] flattening) + matmul with the conv kernel."""
    model, images, variables, _ = tiny
    (ph, pw), (n, hh, ww, c) = PATCH, images.shape
    _, state = model.apply(
        variables, images, capture_intermediates=lambda mdl, _: mdl.name == "embedding")
    stem = np.asarray(state["intermediates"]["embedding"]["__call__"][0])
    kernel = np.asarray(nn.unbox(variables["params"]["embedding"]["kernel"]))
    bias = np.asarray(nn.unbox(variables["params"]["embedding"]["bias"]))
    assert kernel.shape == (ph, pw, c, 32)
    h, w = hh // ph, ww // pw
    patches = images.reshape(n, h, ph, w, pw, c).transpose(0, 1, 3, 2, 4, 5)
    want = patches.reshape(n, h, w, ph * pw * c) @ kernel.reshape(ph * pw * c, 32) + bias
    assert stem.shape == (n, h, w, 32)
    np.testing.assert_allclose(stem, want, rtol=1e-5, atol=1e-5)


def _reference_forward(params, images: np.ndarray, heads: int, pool_type: str, posemb: str):
    """ViT eq. 1-4 assembled from flax's own LayerNorm / MultiHeadDotProductAttention / Dense."""
    p = nn.unbox(params)
    (ph, pw), (n, hh, ww, c) = PATCH, images.shape
    k = p["embedding"]["kernel"]
    x = images.reshape(n, hh // ph, ph, ww // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, -1, ph * pw * c) @ k.reshape(-1, k.shape[-1]) + p["embedding"]["bias"]
    if posemb == "sincos2d":  # itself checked against NumPy in test_positional.py
        x = x + positional.sincos_2d_positions(hh // ph, ww // pw, x.shape[-1])
    if pool_type == "token":
        x = jnp.concatenate([jnp.tile(p["cls"], (n, 1, 1)), x], axis=1)
    if posemb == "learn":
        x = x + p["posembed_input"]["pos_embedding"]
    ln = nn.LayerNorm(epsilon=1e-6)
    for i in range(len([key for key in p["Transformer"] if key.startswith("encoderblock_")])):
        blk = p["Transformer"][f"encoderblock_{i}"]
        y = ln.apply({"params": blk["self_attention_norm"]}, x)
        y = nn.MultiHeadDotProductAttention(num_heads=heads).apply(
            {"params": blk["self_attention"]}, y, y)
        x = x + y
        y = ln.apply({"params": blk["mlp_norm"]}, x)
        mlp = blk["mlp"]
        y = nn.Dense(mlp["Dense_0"]["kernel"].shape[1]).apply({"params": mlp["Dense_0"]}, y)
        y = jax.nn.gelu(y, approximate=True)
        x = x + nn.Dense(x.shape[-1]).apply({"params": mlp["Dense_1"]}, y)
    x = ln.apply({"params": p["Transformer"]["encoder_norm"]}, x)
    x = x[:, 0] if pool_type == "token" else x.mean(axis=1)
    return x @ p["head"]["kernel"] + p["head"]["bias"]


def test_forward_matches_flax_reference(tiny):
    """Reference: the same parameters run through flax.linen's MultiHeadDotProductAttention."""
    model, images, variables, _ = tiny
    want = _reference_forward(variables["params"], images, 2, "token", "learn")
    np.testing.assert_allclose(model.apply(variables, images), want, rtol=1e-4, atol=1e-5)
    # Mean pooling and sin-cos positions: the same tree minus `cls` and `posembed_input`.
    gap = _tiny(pool_type="gap", posemb="sincos2d")
    params = {k: v for k, v in variables["params"].items() if k not in ("cls", "posembed_input")}
    want = _reference_forward(params, images, 2, "gap", "sincos2d")
    np.testing.assert_allclose(gap.apply({"params": params}, images), want, rtol=1e-4, atol=1e-5)


def test_head_zero_init_and_features(tiny):
    """Reference: zero head kernel and bias give zero logits; num_classes=None gives features."""
    model, images, variables, initial = tiny
    np.testing.assert_array_equal(model.apply(initial, images), np.zeros((2, 5)))
    feats = _tiny(num_classes=None, representation_size=16)
    shapes = jax.eval_shape(feats.init, jax.random.key(0), images)["params"]
    assert "head" not in shapes and shapes["pre_logits"]["kernel"].names == ("embed", None)
    assert shapes["pre_logits"]["kernel"].value.shape == (32, 16)
    pre = {"kernel": 3.0 * jax.random.normal(jax.random.key(5), (32, 16)), "bias": jnp.zeros(16)}
    params = {k: v for k, v in nn.unbox(variables["params"]).items() if k != "head"}
    out = feats.apply({"params": {**params, "pre_logits": pre}}, images)
    encoded = _tiny(num_classes=32).apply(  # class-token output of encoder_norm: identity head
        {"params": {**params, "head": {"kernel": jnp.eye(32), "bias": jnp.zeros(32)}}}, images)
    assert out.shape == (2, 16)
    np.testing.assert_allclose(out, np.tanh(encoded @ pre["kernel"]), rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(9, 8\).*\(2, 4\)"):
        _tiny().init(jax.random.key(0), jnp.ones((1, 9, 8, 3)))
    with pytest.raises(ValueError, match=r"\(8, 6\).*\(2, 4\)"):
        _tiny().init(jax.random.key(0), jnp.ones((1, 8, 6, 3)))
    with pytest.raises(ValueError, match="'map'"):
        _tiny(pool_type="map").init(jax.random.key(0), jnp.ones((1, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"\(8, 8, 3\)"):
        _tiny().init(jax.random.key(0), jnp.ones((8, 8, 3)))


def test_dropout_only_in_training(tiny):
    """Reference: eval is deterministic and rng-free; train differs across dropout keys."""
    model, images, variables, _ = tiny
    ev = model.apply(variables, images)
    # With both rates zero, train=True equals eval (dropout is the only train/eval difference).
    np.testing.assert_allclose(
        model.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)}), ev,
        rtol=1e-6)
    for dropout, attn_dropout in [(0.3, 0.0), (0.0, 0.5)]:
        drop = _tiny(dropout_rate=dropout, attention_dropout_rate=attn_dropout)
        np.testing.assert_array_equal(drop.apply(variables, images, train=False), ev)
        tr1 = drop.apply(variables, images, train=True, rngs={"dropout": jax.random.key(2)})
        tr2 = drop.apply(variables, images, train=True, rngs={"dropout": jax.random.key(3)})
        assert np.abs(np.asarray(tr1 - tr2)).max() > 1e-4
        assert np.abs(np.asarray(tr1 - ev)).max() > 1e-4


def test_drop_path_drops_whole_examples():
    """Reference: stochastic depth (Huang et al. 2016) as timm's drop_path: each example's branch
    is zeroed with probability rate, else scaled by 1 / (1 - rate); eval is the identity."""
    x = np.asarray(jax.random.normal(jax.random.key(0), (4000, 3, 5))) + 3.0  # no zero entries
    rate = 0.25
    out = np.asarray(DropPath(rate).apply({}, x, deterministic=False,
                                          rngs={"dropout": jax.random.key(1)}))
    kept = np.all(np.isclose(out, x / (1 - rate), rtol=1e-6), axis=(1, 2))
    dropped = np.all(out == 0, axis=(1, 2))
    assert np.all(kept ^ dropped)  # every example is wholly kept or wholly dropped
    # kept fraction ~ Binomial(4000, 0.75) / 4000: 5 standard deviations = 0.034
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / len(x))
    np.testing.assert_array_equal(DropPath(rate).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(DropPath(0.0).apply({}, x, deterministic=False), x)
    with pytest.raises(ValueError, match="rate"):
        DropPath(1.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(1)})


def test_stochastic_depth_rates_linear_rule():
    """Reference: DeiT / timm, torch.linspace(0, drop_path_rate, depth), here np.linspace."""
    np.testing.assert_allclose(stochastic_depth_rates(0.1, 12), np.linspace(0, 0.1, 12))
    np.testing.assert_allclose(stochastic_depth_rates(0.3, 4), np.linspace(0, 0.3, 4))
    assert stochastic_depth_rates(0.5, 1) == [0.0]
    with pytest.raises(ValueError, match="stochastic_depth_rate"):
        stochastic_depth_rates(1.0, 4)


def test_stochastic_depth_in_vit(tiny):
    """Same parameters and eval output as without it; training outputs vary with the dropout key;
    a one-block ViT (whose only block gets rate 0) trains unchanged."""
    model, images, variables, _ = tiny
    ev = model.apply(variables, images)
    sd = _tiny(stochastic_depth_rate=0.5)  # 2 blocks: rates 0 and 0.5
    shapes = lambda m: jax.tree.map(np.shape, jax.eval_shape(m.init, jax.random.key(0), images))
    assert shapes(sd) == shapes(model)
    np.testing.assert_array_equal(sd.apply(variables, images), ev)
    trains = [np.asarray(sd.apply(variables, images, train=True,
                                  rngs={"dropout": jax.random.key(k)})) for k in range(6)]
    assert max(np.abs(t - trains[0]).max() for t in trains[1:]) > 1e-4
    one = _tiny(depth=1, stochastic_depth_rate=0.5, num_classes=None)  # features: no zero head
    v1 = one.init(jax.random.key(5), images)
    assert np.abs(np.asarray(one.apply(v1, images))).max() > 1e-2
    np.testing.assert_allclose(
        one.apply(v1, images, train=True, rngs={"dropout": jax.random.key(6)}),
        one.apply(v1, images), rtol=1e-6)


def test_logical_axes_on_all_params(tiny):
    """Reference: the shared axis-name conventions (HELPERS_COMMON.md)."""
    params = tiny[3]["params"]
    leaves = jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for path, leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
    p = params
    assert p["embedding"]["kernel"].names == (None, None, "conv_in", "embed")
    assert p["cls"].names == (None, None, "embed")
    assert p["posembed_input"]["pos_embedding"].names == (None, None, "embed")
    assert p["head"]["kernel"].names == ("embed", "classes")
    assert p["head"]["bias"].names == ("classes",)
    mlp = p["Transformer"]["encoderblock_0"]["mlp"]
    assert mlp["Dense_0"]["kernel"].names == ("embed", "mlp")
    assert mlp["Dense_1"]["kernel"].names == ("mlp", "embed")
    assert p["Transformer"]["encoder_norm"]["scale"].names == ("norm",)


def test_bfloat16_compute(tiny):
    """Reference: the float32 model; bf16 compute keeps float32 params and stays close."""
    model, images, variables, _ = tiny
    low = _tiny(head_zero_init=False, dtype=jnp.bfloat16).apply(variables, images)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(low, np.float32), model.apply(variables, images), atol=0.15, rtol=0.1)
