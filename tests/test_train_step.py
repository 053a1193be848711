"""The jitted train step and the checkpoint policy, on a model small enough to do by hand.

Reference: the SGD / EMA update rules written out in NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from attn_jax.train.checkpoint import Checkpointer
from attn_jax.train.config import base_config
from attn_jax.train.loop import TrainState, make_train_step


class LinearTask:
    """loss = mean((x @ w - y)^2), gradient 2/n x^T (x w - y)."""

    def loss(self, params, batch, rng, step):
        err = batch["x"] @ params["w"] - batch["y"]
        return jnp.mean(err ** 2), {"mean_error": jnp.mean(err)}


def _batch(rng, n=8):
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return {"x": x, "y": rng.normal(size=(n,)).astype(np.float32)}


@pytest.mark.parametrize("ema_warmup", [False, True])
def test_sgd_step_and_ema_match_numpy(ema_warmup):
    """Reference: the SGD update and the EMA recursion in float64 NumPy; with warmup the decay
    of update t is min(decay, (1 + t) / (10 + t)) (TF's ExponentialMovingAverage)."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3,)).astype(np.float32)
    lr, decay = 0.1, 0.9
    tx = optax.sgd(lr)
    state = TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.asarray(w0)},
                       opt_state=tx.init({"w": jnp.asarray(w0)}), ema_params={"w": jnp.asarray(w0)},
                       rng=jax.random.PRNGKey(0))
    step = jax.jit(make_train_step(LinearTask(), tx, optax.constant_schedule(lr), 1, decay,
                                   ema_warmup))
    w, ema = w0.astype(np.float64), w0.astype(np.float64)
    for t in range(3):
        batch = _batch(rng)
        x, y = batch["x"].astype(np.float64), batch["y"].astype(np.float64)
        grad = 2 / len(y) * x.T @ (x @ w - y)
        expected_loss = np.mean((x @ w - y) ** 2)
        w = w - lr * grad
        d = min(decay, (1 + t) / (10 + t)) if ema_warmup else decay
        ema = d * ema + (1 - d) * w
        state, metrics = step(state, batch)
        np.testing.assert_allclose(metrics["loss"], expected_loss, rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grad), rtol=1e-5)
    np.testing.assert_allclose(state.params["w"], w, rtol=1e-5)
    np.testing.assert_allclose(state.ema_params["w"], ema, rtol=1e-5)
    assert int(state.step) == 3


def test_accumulated_step_equals_full_batch_step():
    rng = np.random.default_rng(1)
    batch = _batch(rng, n=12)
    tx = optax.adam(0.01)
    params = {"w": jnp.ones((3,))}

    def run(accum):
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=tx.init(params), ema_params=None, rng=jax.random.PRNGKey(0))
        fn = jax.jit(make_train_step(LinearTask(), tx, optax.constant_schedule(0.01), accum, 0.0))
        return fn(state, batch)

    full, m_full = run(1)
    accum, m_accum = run(3)
    np.testing.assert_allclose(accum.params["w"], full.params["w"], rtol=1e-6)
    np.testing.assert_allclose(m_accum["loss"], m_full["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_accum["mean_error"], m_full["mean_error"], rtol=1e-5, atol=1e-7)


def test_checkpointer_keeps_the_latest_and_the_best(tmp_path):
    cfg = base_config().checkpoint
    with cfg.unlocked():
        cfg.update(max_to_keep=2, best_metric="accuracy", best_mode="max", keep_best=1,
                   async_save=False)
    ckpt = Checkpointer(str(tmp_path), cfg)
    state = {"w": jnp.arange(3.0)}
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7), (5, 0.65)]:
        ckpt.save(step, jax.tree.map(lambda v: v + step, state), {"next_index": step},
                  ml_collections.ConfigDict({"a": 1}).to_dict(), {"accuracy": acc})
    ckpt.wait()
    assert sorted(ckpt.manager.all_steps()) == [2, 4, 5]  # best (0.9 @ 2) + the latest two
    restored, data = ckpt.restore(2, jax.tree.map(
        lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), state))
    np.testing.assert_array_equal(restored["w"], np.arange(3.0) + 2)
    assert data == {"next_index": 2}
    ckpt.close()


def test_small_replicated_arrays_are_saved_without_replica_parallel_slices(tmp_path, caplog):
    """orbax cuts a replicated array into one part per replica with an eager slice, compiled per
    (shape, device); below REPLICA_PARALLEL_MIN_SLICE_BYTES per replica the Checkpointer has the
    first replica write it whole, and above it orbax still splits the write. Either way the
    restore gives the saved values back. (Reference: JAX's compile log, `jax.log_compiles`.)"""
    from attn_jax.train.checkpoint import REPLICA_PARALLEL_MIN_SLICE_BYTES

    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    rows = 8 * (REPLICA_PARALLEL_MIN_SLICE_BYTES // (4 * 1031) + 1)  # a part just over it
    state = {"small": jax.device_put(jnp.arange(24.0).reshape(8, 3), replicated),
             "large": jax.device_put(jnp.ones((rows, 1031)), replicated)}
    cfg = base_config().checkpoint
    with cfg.unlocked():
        cfg.update(async_save=False)
    ckpt = Checkpointer(str(tmp_path), cfg)
    caplog.set_level("WARNING", logger="jax._src.interpreters.pxla")
    with jax.log_compiles():
        ckpt.save(1, state, {"next_index": 1}, {})
        ckpt.wait()
    sliced = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith("Compiling jit(slice)")]
    assert not [m for m in sliced if "float32[8,3]" in m], sliced  # the input: the whole shard
    assert [m for m in sliced if ",1031]" in m], "the large array is no longer split"
    abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated),
                            state)
    restored, _ = ckpt.restore(1, abstract)
    for key in state:
        np.testing.assert_array_equal(restored[key], state[key])
    ckpt.close()
