"""Tests for attn_jax.models.mixer (MLP-Mixer, Tolstikhin et al. 2021)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.models.mixer import MixerBlock, MlpMixer, mixer_variant
from attn_jax.train import sharding as shd
from tiny_configs import tiny_config

# Reference: google-research/vision_transformer vit_jax/models_test.py (224x224 RGB, 1000 classes).
PUBLISHED_COUNTS = {"B/16": 59_880_472, "B/32": 60_293_428, "L/16": 208_196_168}


@pytest.mark.parametrize("name", sorted(PUBLISHED_COUNTS))
def test_parameter_counts_match_published(name):
    """eval_shape only: no 200M-parameter allocation."""
    model = MlpMixer.from_variant(name, num_classes=1000)
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == PUBLISHED_COUNTS[name]


def test_variants():
    """Reference: Table 1 of the Mixer paper (S: 512 / 8 / 256 / 2048; L: 1024 / 24 / 512 /
    4096)."""
    assert mixer_variant("L/16") == dict(hidden_dim=1024, num_blocks=24, tokens_mlp_dim=512,
                                         channels_mlp_dim=4096, patch_size=(16, 16))
    assert mixer_variant("S/32") == dict(hidden_dim=512, num_blocks=8, tokens_mlp_dim=256,
                                         channels_mlp_dim=2048, patch_size=(32, 32))
    assert "patch_size" not in mixer_variant("B")
    with pytest.raises(ValueError, match="Unknown Mixer size 'X'"):
        mixer_variant("X/16")
    with pytest.raises(ValueError, match="'B/p'"):
        mixer_variant("B/p")


# ----------------------------------------------------------------------- NumPy reference (eq. 1)
def _np_layer_norm(x, p):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _np_gelu_tanh(x):  # flax's nn.gelu default (approximate=True), which vision_transformer uses
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_mlp(x, p):
    h = _np_gelu_tanh(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def _np_block(x, p):
    """U = X + (MLP_tokens(LN(X)^T))^T, Y = U + MLP_channels(LN(U)), in float64."""
    u = x + _np_mlp(_np_layer_norm(x, p["LayerNorm_0"]).transpose(0, 2, 1),
                    p["token_mixing"]).transpose(0, 2, 1)
    return u + _np_mlp(_np_layer_norm(u, p["LayerNorm_1"]), p["channel_mixing"])


def _np_mixer(images, p, patch):
    """Patchify ([ph, pw, C] flattening, row-major over the grid) @ stem kernel, blocks,
    pre-head LN, mean over patches, head."""
    (ph, pw), (n, hh, ww, c) = patch, images.shape
    k = p["stem"]["kernel"]
    x = images.reshape(n, hh // ph, ph, ww // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, -1, ph * pw * c) @ k.reshape(-1, k.shape[-1]) + p["stem"]["bias"]
    for i in range(len([key for key in p if key.startswith("MixerBlock_")])):
        x = _np_block(x, p[f"MixerBlock_{i}"])
    tokens = _np_layer_norm(x, p["pre_head_layer_norm"])
    features = tokens.mean(1)
    return tokens, features, features @ p["head"]["kernel"] + p["head"]["bias"]


def _randomise(variables, seed):
    """Every parameter (LayerNorm scales and biases, the zero head included) drawn at random."""
    leaves, tree = jax.tree.flatten(nn.unbox(variables))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [0.5 * jax.random.normal(k, x.shape) + (x.ndim == 1) * 0.1
                                     for k, x in zip(keys, leaves)])


def _f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


PATCH = (2, 4)  # non-square, so a height/width mix-up cannot pass


def _tiny(**kw) -> MlpMixer:
    return MlpMixer.from_variant("mu", **{"num_classes": 5, "patch_size": PATCH, **kw})


@pytest.fixture(scope="module")
def tiny():
    """`mu` (2 blocks, width 32, token MLP 16) on 8x16 images: a 4x4 grid of 2x4 patches.
    Returns (model, images, random variables, variables as initialised)."""
    model = _tiny()
    images = np.asarray(jax.random.normal(jax.random.key(2), (2, 8, 16, 3)))
    initial = jax.jit(model.init)(jax.random.key(3), images)
    return model, images, _randomise(initial, 4), initial


def test_block_matches_numpy():
    """Reference: eq. 1 in float64 NumPy, on random parameters; tokens != channels != MLP widths
    so a transposition mistake cannot pass."""
    block = MixerBlock(tokens_mlp_dim=5, channels_mlp_dim=12)
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 6, 8)))
    variables = _randomise(block.init(jax.random.key(1), x), 2)
    p = variables["params"]
    assert p["token_mixing"]["Dense_0"]["kernel"].shape == (6, 5)
    assert p["channel_mixing"]["Dense_0"]["kernel"].shape == (8, 12)
    want = _np_block(x.astype(np.float64), _f64(p))
    np.testing.assert_allclose(block.apply(variables, x), want, rtol=1e-4, atol=1e-5)


def test_model_matches_numpy(tiny):
    """Reference: the stem as NumPy patchify + matmul, eq. 1 per block, LN, mean, head."""
    model, images, variables, _ = tiny
    tokens, features, logits = _np_mixer(images.astype(np.float64), _f64(variables["params"]),
                                         PATCH)
    np.testing.assert_allclose(model.apply(variables, images), logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.apply(variables, images, method="features"), features,
                               rtol=1e-4, atol=1e-5)
    enc = model.apply(variables, images, method="encode")
    assert enc.shape == (2, 16, 32)
    np.testing.assert_allclose(enc, tokens, rtol=1e-4, atol=1e-5)


def test_head_zero_init_and_no_head(tiny):
    """vision_transformer's Mixer zero-initialises the head: logits are exactly 0 at init;
    num_classes=None has no head and returns the features."""
    model, images, variables, initial = tiny
    np.testing.assert_array_equal(model.apply(initial, images), np.zeros((2, 5)))
    headless = _tiny(num_classes=None)
    params = {k: v for k, v in variables["params"].items() if k != "head"}
    assert "head" not in jax.eval_shape(headless.init, jax.random.key(0), images)["params"]
    np.testing.assert_allclose(headless.apply({"params": params}, images),
                               model.apply(variables, images, method="features"), atol=1e-6)


def test_token_mixing_mixes_across_patches_and_channel_mixing_does_not():
    """Changing one token changes every token after one block; with the token-mixing branch
    zeroed (its output layer set to 0) the block is per-token, so only that token changes and
    the block commutes with a permutation of the tokens; with it, it does not."""
    block = MixerBlock(tokens_mlp_dim=5, channels_mlp_dim=12)
    x = np.asarray(jax.random.normal(jax.random.key(0), (1, 6, 8)))
    variables = _randomise(block.init(jax.random.key(1), x), 2)
    x2 = x.copy()
    x2[:, 3] += np.linspace(-1, 2, 8)  # not a constant: LayerNorm would remove that
    delta = np.abs(np.asarray(block.apply(variables, x2) - block.apply(variables, x))).max(-1)[0]
    assert np.all(delta > 1e-3), delta

    p = variables["params"]
    out = p["token_mixing"]["Dense_1"]
    channel_only = {"params": {**p, "token_mixing": {**p["token_mixing"], "Dense_1": {
        "kernel": jnp.zeros_like(out["kernel"]), "bias": jnp.zeros_like(out["bias"])}}}}
    delta = np.abs(np.asarray(block.apply(channel_only, x2) - block.apply(channel_only, x)))
    delta = delta.max(-1)[0]
    assert delta[3] > 1e-3 and np.all(np.delete(delta, 3) == 0), delta

    perm = np.array([2, 0, 5, 1, 4, 3])
    np.testing.assert_allclose(block.apply(channel_only, x[:, perm]),
                               block.apply(channel_only, x)[:, perm], rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(block.apply(variables, x[:, perm])
                             - block.apply(variables, x)[:, perm])).max() > 1e-2


def test_resolution_change_and_bad_shapes_raise(tiny):
    """vision_transformer#274: a Mixer's token-mixing kernels fix the patch count."""
    model, images, variables, initial = tiny
    for size in [(16, 16), (4, 16)]:  # 32 and 8 patches instead of 16
        for params in (variables, initial):  # plain arrays and LogicallyPartitioned boxes
            for method in ("__call__", "encode", "features"):
                with pytest.raises(ValueError, match=r"cannot change resolution.*16 patches.*"
                                   rf"\(2, {size[0]}, {size[1]}, 3\)"):
                    model.apply(params, jnp.ones((2, *size, 3)), method=method)
    with pytest.raises(ValueError, match=r"\(9, 16\).*\(2, 4\)"):
        model.init(jax.random.key(0), jnp.ones((1, 9, 16, 3)))
    with pytest.raises(ValueError, match=r"\(8, 6\).*\(2, 4\)"):
        model.apply(variables, jnp.ones((1, 8, 6, 3)))
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\].*\(8, 16, 3\)"):
        model.init(jax.random.key(0), jnp.ones((8, 16, 3)))
    with pytest.raises(ValueError, match=r"MixerBlock expects.*\(6, 8\)"):
        MixerBlock(4, 8).init(jax.random.key(0), jnp.ones((6, 8)))
    with pytest.raises(ValueError, match="'pooled'"):
        model.apply(variables, images, output="pooled")


def test_logical_axes_and_their_placement(tiny):
    """Every parameter is named; on a 2x2x2 mesh the channel MLP is Megatron + FSDP, the
    token-mixing MLP splits its hidden axis over `tensor` and replicates the patch axis."""
    params = tiny[3]["params"]
    leaves = jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for path, leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
        assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
    block = params["MixerBlock_0"]
    assert block["token_mixing"]["Dense_0"]["kernel"].names == ("tokens", "tokens_mlp")
    assert block["token_mixing"]["Dense_1"]["kernel"].names == ("tokens_mlp", "tokens")
    assert block["token_mixing"]["Dense_1"]["bias"].names == ("tokens",)
    assert block["channel_mixing"]["Dense_0"]["kernel"].names == ("embed", "mlp")
    assert block["LayerNorm_0"]["scale"].names == ("norm",)
    assert params["stem"]["kernel"].names == (None, None, "conv_in", "embed")
    assert params["head"]["kernel"].names == ("embed", "classes")

    specs = jax.tree.map(lambda s: s.spec, shd.logical_shardings(
        params, shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})))
    P = jax.sharding.PartitionSpec
    assert specs["MixerBlock_0"]["token_mixing"]["Dense_0"]["kernel"] == P(None, "tensor")
    assert specs["MixerBlock_0"]["token_mixing"]["Dense_1"]["kernel"] == P("tensor", None)
    assert specs["MixerBlock_0"]["token_mixing"]["Dense_1"]["bias"] == P(None)
    assert specs["MixerBlock_0"]["channel_mixing"]["Dense_0"]["kernel"] == P("fsdp", "tensor")
    assert specs["stem"]["kernel"] == P(None, None, None, "fsdp")


def test_dropout_and_stochastic_depth_only_in_training(tiny):
    """Eval is deterministic and the same as without them; training outputs vary with the key;
    the parameter tree does not change."""
    model, images, variables, _ = tiny
    ev = model.apply(variables, images)
    for kw in (dict(dropout_rate=0.3), dict(stochastic_depth_rate=0.5)):
        drop = _tiny(**kw)
        shapes = lambda m: jax.tree.map(np.shape, jax.eval_shape(m.init, jax.random.key(0), images))
        assert shapes(drop) == shapes(model)
        np.testing.assert_array_equal(drop.apply(variables, images), ev)
        trains = [np.asarray(drop.apply(variables, images, train=True,
                                        rngs={"dropout": jax.random.key(k)})) for k in range(4)]
        assert max(np.abs(t - trains[0]).max() for t in trains[1:]) > 1e-4, kw


def test_trains_through_the_classification_task(tmp_path):
    """The tiny 'mixer' config (tests/tiny_configs.py) through the shared trainer on the digits,
    2-way data parallel: 8 SGD steps take the test set (355 images) from a loss of 2.40 at init
    to below the uniform guess over 10 classes (ln 10) by 0.1 nats, and its accuracy above
    chance (0.10; 0.15 is 3 binomial standard deviations above it)."""
    from attn_jax.train.loop import train_and_evaluate

    config = tiny_config("mixer", str(tmp_path / "tfds"))
    config.mesh = dict(data=2, fsdp=1, tensor=1)
    config.total_steps = config.eval_every_steps = 8
    state, final = train_and_evaluate(config, str(tmp_path / "run"), jax.devices()[:2])
    assert int(state.step) == 8
    assert "token_mixing" in state.params["MixerBlock_0"]
    assert final["test_loss"] < np.log(10) - 0.1, final
    assert final["test_accuracy"] > 0.15, final


@pytest.mark.parametrize("name, shape, classes, count", [
    # Reference: the closed-form count of tests/test_models.py (49 tokens of 4x4x1 patches).
    ("mixer_fashion_mnist", (28, 28, 1), 10, None),
    # Reference: vision_transformer's Mixer-B/16 count (224px, 1000 classes).
    ("mixer_b16_imagenet", (224, 224, 3), 1000, 59_880_472),
])
def test_configs_load_and_build(name, shape, classes, count):
    """The shipped configs load as train.py loads them, declare only known data keys, and give
    the model they describe (eval_shape; the data itself is not needed)."""
    import os

    from attn_jax.models import build_model
    from attn_jax.tasks.classification import DataConfig
    from attn_jax.train.cli import load_config_file
    from attn_jax.train.config import fill_declared_keys, parse_section
    from attn_jax.train.optim import make_optimizer
    from test_models import _mixer_count

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    config = fill_declared_keys(load_config_file(os.path.join(root, f"{name}.py"), root))
    parse_section(DataConfig, config.data, "config.data")
    make_optimizer(config.optim, 100_000)
    kwargs = dict(config.model)
    assert kwargs.pop("name") == "mixer"
    model = build_model("mixer", num_classes=classes, **kwargs)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))
    if count is None:
        m = config.model
        count = _mixer_count(m.hidden_dim, m.num_blocks, m.tokens_mlp_dim, m.channels_mlp_dim,
                             m.patch_size, shape[2], (shape[0] // m.patch_size) ** 2, classes)
        assert 0.5e6 < count < 0.6e6  # about the 0.53M of configs/vit_fashion_mnist.py
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == count
