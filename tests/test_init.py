"""Trainer-level initialisation (`config.init`) and parameter groups (`config.optim.lr_mults`).

References: `scipy.ndimage.zoom` order 1 on the patch grid (vision_transformer's resampling of
the position embedding, evaluated here directly), a freshly initialised model (for the new
head), and plain SGD arithmetic p - lr * m * g in NumPy (for the multipliers). The Mixer's
refusal to change resolution is vision_transformer#274 (its token-mixing kernels are
[patches, tokens_mlp_dim]).
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.ndimage

from attn_jax.models.mixer import MlpMixer
from attn_jax.models.vit import ViT
from attn_jax.pretrained import save_npz
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


def test_finetune_a_vit_at_another_image_size(vit_8px, data_dir, tmp_path, capsys):
    """The transfer path end to end (configs/vit_finetune_*.py at tiny scale): config.init from
    the 8px run into a 16px run (4x4 grid) with a fresh head (`dont_load`): the position table is
    the zoomed old one, the head the fresh initialisation, every other parameter the
    checkpoint's, the printed report says so, and the run trains. (Mechanics only: at this
    scale a fine-tune beating scratch is not reliably true.)"""
    _, old = load_params(vit_8px)
    config = tiny_config("classification", data_dir)
    config.data.image_size = 16
    config.init.path = vit_8px
    config.init.dont_load = ("head/.*",)
    config.total_steps = 2
    state, final = train_and_evaluate(config, str(tmp_path / "ft"), jax.devices()[:1])
    assert "test_accuracy" in final
    printed = capsys.readouterr().out
    assert "adapted (1, 5, 32) -> (1, 17, 32): posembed_input/pos_embedding" in printed
    assert "dont_load: head/kernel" in printed and "dont_load: head/bias" in printed
    assert f"2 steps, from the parameters of {vit_8px}" in printed

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
    assert sorted(init.report.skipped) == ["head/bias", "head/kernel"]
    fresh = flatten(nn.unbox(fresh))
    for path, value in old_flat.items():
        if path.startswith("head/"):
            np.testing.assert_array_equal(params[path], fresh[path], err_msg=path)
            assert not np.array_equal(params[path], value)
        elif path != "posembed_input/pos_embedding":
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


def _mixer(**kw):
    return MlpMixer(**dict(dict(num_classes=10, patch_size=4, hidden_dim=32, num_blocks=1,
                                tokens_mlp_dim=16, channels_mlp_dim=64, head_zero_init=False),
                           **kw))


def _params(model, size):
    return model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)))["params"]


def test_a_mixer_cannot_change_resolution(data_dir, tmp_path):
    """A Mixer checkpoint made at 28px (7x7 = 49 patches) into a 32px Mixer (64 patches): the
    trainer refuses with a ValueError naming the problem and both shapes while it traces the
    initial state, before anything is compiled or written; at 28px every parameter loads."""
    path = str(tmp_path / "mixer28.npz")
    save_npz(nn.unbox(_params(_mixer(), 28)), path)
    config = tiny_config("mixer", data_dir)
    config.model.patch_size = 4
    config.data.image_size = 32
    config.init.path = path
    workdir = str(tmp_path / "ft")
    with pytest.raises(ValueError, match=r"MLP-Mixer cannot change resolution .*"
                       r"MixerBlock_0/token_mixing/Dense_0/kernel has shape \(64, 16\) in the "
                       r"model but \(49, 16\) in the checkpoint"):
        train_and_evaluate(config, workdir, jax.devices()[:1])
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))

    init = Initializer(path)
    init.apply(_params(_mixer(), 28))
    assert not init.report.mismatched and not init.report.initialised and not init.report.unused


def test_a_vit_checkpoint_at_28px_adapts_to_32px(tmp_path):
    """The same change of resolution for a ViT with learned positions (7x7 + 1 -> 8x8 + 1
    rows) adapts: the report names only the position table, resampled as `resize_posemb`."""
    vit = ViT(num_classes=10, patch_size=4, hidden_size=32, depth=1, num_heads=4, mlp_dim=64,
              pool_type="token", posemb="learn", head_zero_init=False)
    old = flatten(nn.unbox(_params(vit, 28)))
    path = str(tmp_path / "vit28.npz")
    save_npz(nn.unbox(_params(vit, 28)), path)
    init = Initializer(path)
    params = flatten(nn.unbox(init.apply(_params(vit, 32))))
    assert init.report.adapted == [("posembed_input/pos_embedding", (1, 65, 32), (1, 50, 32))]
    assert not init.report.mismatched and not init.report.initialised
    np.testing.assert_allclose(params["posembed_input/pos_embedding"],
                               resize_posemb(old["posembed_input/pos_embedding"], (1, 65, 32)),
                               rtol=1e-6)


def test_dont_load_keeps_the_head_fresh_and_needs_a_path(vit_8px):
    """`dont_load` keeps matching parameters at their fresh values even where the checkpoint
    has the same shape; without a path it is an error that says what to pass."""
    vit = ViT(num_classes=10, patch_size=4, hidden_size=32, depth=1, num_heads=8, mlp_dim=64,
              pool_type="token", posemb="learn", head_zero_init=True)
    init = Initializer(vit_8px, dont_load=("head/.*",))
    params = flatten(nn.unbox(init.apply(_params(vit, 8))))
    assert sorted(init.report.skipped) == ["head/bias", "head/kernel"]
    assert not init.report.unused and not init.report.mismatched
    np.testing.assert_array_equal(params["head/kernel"], np.zeros((32, 10)))
    assert "dont_load: head/kernel" in init.report.summary()
    with pytest.raises(ValueError, match="dont_load is set but config.init.path is empty: "
                       "pass .* --config.init.path=PATH"):
        Initializer("", dont_load=("head/.*",))
    with pytest.raises(ValueError, match="tuple of regexes"):
        Initializer(vit_8px, dont_load="head/.*")


@pytest.mark.parametrize("name, size", [("vit_finetune_digits", 28),
                                        ("vit_finetune_fmnist32", 32)])
def test_finetune_configs(name, size, tmp_path):
    """The fine-tune configs load as train.py loads them: big_vision's transfer recipe over the
    checkpoint's model (configs/vit_fashion_mnist.py's, with a zero-initialised head kept out of
    the load); `:scratch` is the same model and steps without `config.init`; `:WORKDIR` names
    the run to start from."""
    from attn_jax.tasks.classification import DataConfig
    from attn_jax.train.cli import load_config_file
    from attn_jax.train.config import fill_declared_keys, parse_section
    from attn_jax.train.optim import make_optimizer

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    load = lambda spec: fill_declared_keys(load_config_file(os.path.join(root, spec), root))  # noqa
    source, ft, scratch = (load("vit_fashion_mnist.py"), load(f"{name}.py"),
                           load(f"{name}.py:scratch"))
    assert load(f"{name}.py:{tmp_path}").init.path == str(tmp_path)
    assert ft.init.path == "runs/vit_fashion_mnist" and ft.init.dont_load == ("head/.*",)
    assert dict(ft.model) == dict(source.model, head_zero_init=True) == dict(scratch.model)
    assert parse_section(DataConfig, ft.data, "config.data").image_size == size
    assert ft.data == scratch.data and ft.total_steps == scratch.total_steps > 0
    assert (ft.optim.name, ft.optim.momentum, ft.optim.weight_decay, ft.optim.grad_clip_norm,
            ft.optim.schedule) == ("sgd", 0.9, 0.0, 1.0, "cosine")
    assert 0.01 <= ft.optim.learning_rate <= 0.03
    assert scratch.init.path == "" and scratch.init.dont_load == ()
    assert scratch.optim.name == source.optim.name == "adamw"
    make_optimizer(ft.optim, ft.total_steps)
    make_optimizer(scratch.optim, scratch.total_steps)


def test_digits_resize_to_the_checkpoint_size(data_dir):
    """`data.image_size` upsamples the 8x8 digits for the 28px checkpoint (bilinear)."""
    from attn_jax import data

    it = data.make_iterator("digits_sklearn", "test", global_batch_size=8, train=False,
                            data_dir=data_dir, image_size=28)
    assert next(it)["image"].shape == (8, 28, 28, 1)
