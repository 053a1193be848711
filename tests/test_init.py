"""Trainer-level initialisation (`config.init`) and parameter groups (`config.optim.lr_mults`).

References: `scipy.ndimage.zoom` order 1 on the patch grid (vision_transformer's resampling of
the position embedding, evaluated here directly), a freshly initialised model (for the new
head), and plain SGD arithmetic p - lr * m * g in NumPy (for the multipliers).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage

from attn_jax.models.vit import ViT
from attn_jax.train.init import Initializer, flatten, resize_posemb
from attn_jax.train.loop import train_and_evaluate
from attn_jax.train.optim import with_lr_mults
from attn_jax.train.restore import load_params
from tiny_configs import tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def vit_8px(data_dir, tmp_path_factory):
    """A ViT with learned positions and a class token trained on the 8x8 digits: 2x2 patches
    of 4 pixels + 1 token = 5 position rows."""
    config = tiny_config("classification", data_dir)
    workdir = str(tmp_path_factory.mktemp("vit8"))
    train_and_evaluate(config, workdir, jax.devices()[:1])
    return workdir


def test_finetune_a_vit_at_another_image_size(vit_8px, data_dir, tmp_path):
    """config.init from the 8px run into a 16px run (4x4 grid): the position table is the
    zoomed old one, every other parameter is the checkpoint's, and the run trains."""
    _, old = load_params(vit_8px)
    config = tiny_config("classification", data_dir)
    config.data.image_size = 16
    config.init.path = vit_8px
    config.total_steps = 2
    state, final = train_and_evaluate(config, str(tmp_path / "ft"), jax.devices()[:1])
    assert "test_accuracy" in final

    # The initial state: rebuild it the way the trainer does, without the steps.
    vit = ViT(num_classes=10, patch_size=4, hidden_size=32, depth=1, num_heads=8, mlp_dim=64,
              pool_type="token", posemb="learn", head_zero_init=False)
    init = Initializer.from_config(config)
    fresh = vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))["params"]
    params = flatten(nn.unbox(init.apply(fresh)))
    old_flat = flatten(old)
    pos = old_flat["posembed_input/pos_embedding"]            # [1, 1 + 4, 32]
    grid = pos[0, 1:].reshape(2, 2, 32)
    want = np.concatenate([pos[:, :1], scipy.ndimage.zoom(grid, (2, 2, 1), order=1)
                           .reshape(1, 16, 32)], axis=1)
    np.testing.assert_allclose(params["posembed_input/pos_embedding"], want, rtol=1e-6)
    assert [p for p, _, _ in init.report.adapted] == ["posembed_input/pos_embedding"]
    for path, value in old_flat.items():
        if path != "posembed_input/pos_embedding":
            np.testing.assert_array_equal(params[path], value, err_msg=path)


def test_a_new_head_is_fresh(vit_8px):
    """Another number of classes: the head keeps its fresh initialisation, the report says so,
    the body is loaded."""
    vit = ViT(num_classes=3, patch_size=4, hidden_size=32, depth=1, num_heads=8, mlp_dim=64,
              pool_type="token", posemb="learn", head_zero_init=False)
    fresh = flatten(nn.unbox(vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"]))
    init = Initializer(vit_8px)
    params = flatten(nn.unbox(init.apply(
        vit.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))["params"])))
    np.testing.assert_array_equal(params["head/kernel"], fresh["head/kernel"])
    assert {p for p, _, _ in init.report.mismatched} == {"head/kernel", "head/bias"}
    _, old = load_params(vit_8px)
    np.testing.assert_array_equal(params["cls"], flatten(old)["cls"])


def test_resize_posemb_errors():
    with pytest.raises(ValueError, match="class token differs"):
        resize_posemb(np.zeros((1, 5, 4)), (1, 16, 4))
    with pytest.raises(ValueError, match="square grid"):
        resize_posemb(np.zeros((1, 7, 4)), (1, 17, 4))


def test_lr_mults_zero_freezes_and_point_one_scales_exactly():
    """Under SGD (lr 0.5, no momentum) group 'a' (x0) is bit-identical after 3 steps, group
    'b' (x0.1) moves by exactly 0.1 of the plain SGD step each step, 'c' by the full step:
    reference p_{t+1} = p_t - lr * m * g(p_t) in NumPy float64."""
    params = {"a": {"w": jnp.array([1.0, -2.0])}, "b": {"w": jnp.array([3.0, 0.5])},
              "c": jnp.array([0.25, 2.0])}
    target = {"a": {"w": np.array([0.0, 0.0])}, "b": {"w": np.array([1.0, 1.0])},
              "c": np.array([-1.0, 0.0])}
    lr = 0.5
    tx = with_lr_mults(optax.sgd(lr), (("a/.*", 0.0), ("b/w", 0.1)))
    state = tx.init(params)
    loss = lambda p: sum(jnp.sum((x - t) ** 2) for x, t in zip(jax.tree.leaves(p),  # noqa
                                                                jax.tree.leaves(target)))
    ref = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    mults = {"a": {"w": 0.0}, "b": {"w": 0.1}, "c": 1.0}
    for _ in range(3):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        ref = jax.tree.map(lambda p, t, m: p - lr * m * 2 * (p - t), ref, target, mults)
    np.testing.assert_array_equal(params["a"]["w"], np.array([1.0, -2.0], np.float32))
    np.testing.assert_allclose(params["b"]["w"], ref["b"]["w"], rtol=1e-6)
    np.testing.assert_allclose(params["c"], ref["c"], rtol=1e-6)
    assert not np.allclose(params["b"]["w"], [3.0, 0.5])


def test_lr_mults_errors():
    with pytest.raises(ValueError, match="not a regex"):
        with_lr_mults(optax.sgd(0.1), (("(", 0.0),))
    with pytest.raises(ValueError, match=">= 0"):
        with_lr_mults(optax.sgd(0.1), (("a", -1.0),))
