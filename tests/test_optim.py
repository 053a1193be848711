"""Optimizer and schedule construction (attn_jax.train.optim)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from attn_jax.train.config import base_config
from attn_jax.train.optim import make_optimizer


def _optim(**kw):
    cfg = base_config().optim
    cfg.update(kw)
    return cfg


def test_warmup_cosine_schedule_matches_formula():
    """Reference: linear warmup 0->peak, then peak * (1 + cos(pi * t / T)) / 2."""
    _, schedule = make_optimizer(_optim(learning_rate=0.1, warmup_steps=10, schedule="cosine"), 110)
    for step in [0, 5, 10, 35, 60, 110]:
        if step < 10:
            expected = 0.1 * step / 10
        else:
            expected = 0.1 * 0.5 * (1 + np.cos(np.pi * (step - 10) / 100))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-7)


def test_step_schedule_matches_formula():
    """Reference: linear warmup 0->peak over 10 steps, then peak * 0.1**(number of drops passed),
    the drops at round(f * 200) for f in decay_at (DETR's lr drop)."""
    _, schedule = make_optimizer(_optim(learning_rate=0.1, warmup_steps=10, schedule="step",
                                        decay_at=(0.5, 0.75), decay_factor=0.1), 200)
    for step in [0, 5, 10, 99, 100, 101, 149, 150, 151, 199, 200]:
        expected = 0.1 * step / 10 if step < 10 else 0.1 * 0.1 ** ((step >= 100) + (step >= 150))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9,
                                   err_msg=f"step {step}")


@pytest.mark.parametrize("kw, match", [
    ({}, "needs optim.decay_at"),
    ({"decay_at": (0.8, 0.5)}, "increasing fractions"),
    ({"decay_at": (1.0,)}, "increasing fractions"),
    ({"decay_at": (0.01,)}, r"steps \[2\] of 200: each must be a different step after warmup"),
    ({"decay_at": (0.5,), "decay_factor": 0.0}, "decay_factor=0.0 must be > 0")])
def test_bad_step_schedule(kw, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(_optim(schedule="step", warmup_steps=10, **kw), 200)


def test_weight_decay_skips_biases_and_norms():
    """AdamW decoupled decay on a zero gradient: kernels shrink by lr*wd*w, vectors stay put."""
    tx, _ = make_optimizer(_optim(learning_rate=0.1, weight_decay=0.5, schedule="constant",
                                  grad_clip_norm=None), 10)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,)), "scale": jnp.ones((2,))}
    grads = {k: jnp.zeros_like(v) for k, v in params.items()}
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["kernel"], 1 - 0.1 * 0.5)
    np.testing.assert_allclose(new["bias"], 1.0)
    np.testing.assert_allclose(new["scale"], 1.0)


def test_gradient_clipping_bounds_the_update():
    """SGD without momentum: the update is lr * clipped gradient, global norm <= clip."""
    tx, _ = make_optimizer(_optim(name="sgd", learning_rate=1.0, momentum=0.0, schedule="constant",
                                  grad_clip_norm=1.0), 10)
    params = {"w": jnp.zeros((4,))}
    grads = {"w": jnp.full((4,), 10.0)}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kw, match", [({"name": "adamx"}, "optim.name"),
                                       ({"schedule": "cosin"}, "optim.schedule"),
                                       ({"warmup_steps": 50}, "warmup_steps")])
def test_bad_optimizer_config(kw, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(_optim(**kw), 20)


def test_base_config_rejects_unknown_keys():
    config = base_config()
    with pytest.raises(AttributeError, match="learning_rat"):
        config.optim.learning_rat = 0.1
    assert isinstance(config.model, ml_collections.ConfigDict)
