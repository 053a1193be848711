"""The ResNet-style CNN image encoder (`attn_jax.models.cnn`): the image-encoder contract, its
shapes and feature grid, its parameters' placement by the one sharding rule table, and training
through the classification task.

References: the contract's method list (`attn_jax.models.protocols`), the definition of
`features` (the mean of `encode`'s tokens) and of the grid (ceil(n / 2) per stride-2 stage),
and, for training, the uniform guess over 10 classes (test loss log 10).
"""

from __future__ import annotations

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from attn_jax.models import build_model
from attn_jax.models.cnn import CNN
from attn_jax.models.protocols import ImageEncoder, check_implements
from attn_jax.train.loop import train_and_evaluate
from attn_jax.train.sharding import logical_shardings, make_mesh
from tiny_configs import tiny_config

SMALL = dict(widths=(8, 16, 16), blocks_per_stage=(1, 2, 1), num_groups=4)


def _images(shape=(2, 15, 13, 3), seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


@pytest.mark.parametrize("norm, attention_stage", [("group", 1), ("layer", None)])
def test_image_encoder_contract_and_shapes(norm, attention_stage):
    model = build_model("cnn", num_classes=7, norm=norm, attention_stage=attention_stage, **SMALL)
    check_implements(model, ImageEncoder, "cnn")
    assert isinstance(model, ImageEncoder)
    x = _images()
    variables = jax.jit(model.init)(jax.random.key(0), x)
    apply = jax.jit(model.apply, static_argnames="method")
    tokens = apply(variables, x, method="encode")
    grid = model.grid_shape(x.shape[1:])
    assert grid == (4, 4)  # 15 x 13 -> 8 x 7 -> 4 x 4
    assert tokens.shape == (2, math.prod(grid), 16)
    features = apply(variables, x, method="features")
    np.testing.assert_allclose(np.asarray(features), np.asarray(tokens).mean(1), rtol=1e-5,
                               atol=1e-6)
    assert apply(variables, x).shape == (2, 7)
    assert ("attention" in variables["params"]) == (attention_stage is not None)
    # num_classes=None: the pooled features, no head
    headless = CNN(**SMALL)
    params = jax.eval_shape(headless.init, jax.random.key(0), x)["params"]
    assert "head" not in params
    assert jax.eval_shape(headless.apply, {"params": params}, x).shape == (2, 16)


def test_attention_map_of_the_chosen_stage_covers_its_grid():
    """The SAGAN block after stage 1 (a 8x7 grid of 15x13 images) sows beta [b, 56, 56] for
    overlays; negative attention_stage counts from the end."""
    model = CNN(num_classes=3, attention_stage=-2, **SMALL)
    x = _images()
    variables = model.init(jax.random.key(0), x)
    params = {**nn.unbox(variables["params"])}
    params["attention"] = {**params["attention"], "gamma": jnp.float32(0.5)}
    _, sown = model.apply({"params": params}, x, mutable=["intermediates"])
    (beta,) = sown["intermediates"]["attention"]["attention"]
    assert beta.shape == (2, 56, 56)
    np.testing.assert_allclose(np.asarray(beta).sum(-1), 1.0, atol=1e-6)


def test_bad_inputs_are_refused():
    model = CNN(num_classes=3, **SMALL)
    with pytest.raises(ValueError,
                       match=r"images \[batch, height, width, channels\].*\(15, 13, 3\)"):
        model.init(jax.random.key(0), jnp.zeros((15, 13, 3)))
    x = _images()
    with pytest.raises(ValueError, match=r"widths \(8, 12\) must be divisible by num_groups=8"):
        CNN(widths=(8, 12), num_groups=8).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"attention_stage=3 is not a stage"):
        CNN(attention_stage=3, **SMALL).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"blocks_per_stage=\(1, 2\)"):
        CNN(widths=(8, 16, 16), blocks_per_stage=(1, 2), num_groups=4).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="norm must be 'group' or 'layer', got 'batch'"):
        CNN(norm="batch", **SMALL).init(jax.random.key(0), x)


def test_parameters_are_placed_by_the_rule_table():
    """Every parameter, SAGAN's scalar gamma included, gets a sharding from its logical names;
    on a tensor-parallel mesh of 8 the conv kernels' output channels and the SAGAN projections'
    inner axis are split."""
    model = CNN(num_classes=10, widths=(16, 32), blocks_per_stage=1, attention_stage=1)
    boxed = jax.eval_shape(model.init, jax.random.key(0), _images((1, 8, 8, 1)))["params"]
    mesh = make_mesh({"tensor": 8}, jax.devices()[:8])
    shardings = logical_shardings(boxed, mesh)
    conv = shardings["stage1_block0"]["conv1"]["kernel"]
    assert conv.spec == P(None, None, None, "tensor")
    assert shardings["attention"]["value"].spec == P(None, "tensor")
    assert shardings["attention"]["gamma"].spec == P()


def test_trains_through_the_classification_task(tmp_path_factory, tmp_path):
    """40 SGD steps of a CNN with a SAGAN stage on the digits: finite losses, and the test loss
    falls clearly below the uniform guess over the 10 classes (GroupNorm + mean pooling starts
    slower than the ViT of the tiny config: at 8 steps it is still at the guess)."""
    config = tiny_config("classification", str(tmp_path_factory.mktemp("tfds")))
    config.model = dict(name="cnn", widths=(8, 16), blocks_per_stage=1, num_groups=4,
                        attention_stage=-1)
    config.optim.learning_rate = 0.2
    config.total_steps = config.eval_every_steps = config.checkpoint.every_steps = 40
    config.log_every_steps = 10
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    state, final = train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]
    assert len(losses) == 4 and np.all(np.isfinite(losses))
    assert "attention" in state.params
    assert final["test_loss"] < np.log(10) - 0.2
