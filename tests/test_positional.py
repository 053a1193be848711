"""Tests for attn_jax.positional against independent NumPy evaluations of the published formulas."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import positional


def _np_timing_signal(positions: np.ndarray, dim: int, min_ts: float, max_ts: float) -> np.ndarray:
    """tensor2tensor get_timing_signal_1d, written out channel by channel in float64."""
    half = dim // 2
    out = np.zeros((len(positions), dim))
    for i in range(half):
        inv = min_ts * math.exp(-i * math.log(max_ts / min_ts) / max(half - 1, 1))
        out[:, i] = np.sin(positions * inv)
        out[:, half + i] = np.cos(positions * inv)
    return out  # an odd dim leaves the last channel at zero


@pytest.mark.parametrize("dim", [8, 9, 2, 33])
@pytest.mark.parametrize("start", [0, 5])
def test_sinusoidal_matches_t2t_closed_form(dim, start):
    """Reference: t2t get_timing_signal_1d closed form in NumPy float64 (even/odd dim, offset)."""
    got = positional.sinusoidal_positions(12, dim, 1.0, 1.0e4, start=start)
    want = _np_timing_signal(np.arange(12) + start, dim, 1.0, 1.0e4)
    assert got.shape == (12, dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    if dim % 2:
        np.testing.assert_array_equal(got[:, -1], 0.0)


def test_sinusoidal_custom_timescales_and_explicit_positions():
    """Reference: the same NumPy closed form with min_timescale=2, max_timescale=500."""
    got = positional.sinusoidal_positions(7, 10, min_timescale=2.0, max_timescale=500.0)
    np.testing.assert_allclose(got, _np_timing_signal(np.arange(7), 10, 2.0, 500.0), atol=2e-5)
    # timing_signal on explicit (e.g. decoding) positions equals the rows of the table.
    pos = jnp.array([[3, 0], [6, 1]])
    sig = positional.timing_signal(pos, 10, 2.0, 500.0)
    assert sig.shape == (2, 2, 10)
    np.testing.assert_allclose(sig, np.asarray(got)[np.asarray(pos)], atol=1e-6)


def test_sinusoidal_traced_start_under_jit():
    """Reference: the eager table; a traced `start` (decoding step) gives the same rows."""
    f = jax.jit(lambda s: positional.sinusoidal_positions(3, 16, start=s))
    np.testing.assert_allclose(f(4), positional.sinusoidal_positions(8, 16)[4:7], atol=1e-6)


def test_sinusoidal_rejects_bad_dim():
    with pytest.raises(ValueError, match="dim=1"):
        positional.sinusoidal_positions(4, 1)


def _np_sincos_2d(h: int, w: int, dim: int, temperature: float) -> np.ndarray:
    """MoCo v3 / big_vision posemb_sincos_2d: [sin x, cos x, sin y, cos y], rows in (y, x) order."""
    q = dim // 4
    omega = temperature ** (-np.arange(q) / (q - 1))
    rows = []
    for y in range(h):
        for x in range(w):
            rows.append(np.concatenate(
                [np.sin(x * omega), np.cos(x * omega), np.sin(y * omega), np.cos(y * omega)]))
    return np.stack(rows)


@pytest.mark.parametrize("h,w,dim", [(3, 5, 16), (4, 4, 8), (2, 7, 32)])
def test_sincos_2d_matches_numpy(h, w, dim):
    """Reference: per-position NumPy evaluation of big_vision's posemb_sincos_2d."""
    got = positional.sincos_2d_positions(h, w, dim)
    assert got.shape == (h * w, dim)
    np.testing.assert_allclose(got, _np_sincos_2d(h, w, dim, 10_000.0), atol=2e-5)


def test_sincos_2d_rejects_dim_not_multiple_of_4():
    with pytest.raises(ValueError, match="dim=18"):
        positional.sincos_2d_positions(2, 2, 18)


def test_rope_frequencies_formula():
    """Reference: RoFormer eq. 15, theta_i = 10000^(-2i/d), in NumPy."""
    np.testing.assert_allclose(
        positional.rope_frequencies(8), 10000.0 ** (-2 * np.arange(4) / 8), rtol=1e-6)


def _rope_np(x: np.ndarray, pos: np.ndarray, base: float = 10_000.0) -> np.ndarray:
    """Rotate-half RoPE written as explicit 2x2 rotations of pairs (i, i + d/2), float64."""
    d = x.shape[-1]
    out = np.empty_like(x, dtype=np.float64)
    for i in range(d // 2):
        theta = pos[:, :, None] * base ** (-2 * i / d)  # [b, l, 1]
        a, b = x[..., i], x[..., i + d // 2]
        out[..., i] = a * np.cos(theta) - b * np.sin(theta)
        out[..., i + d // 2] = a * np.sin(theta) + b * np.cos(theta)
    return out


def test_rope_matches_pairwise_rotation_and_preserves_norm():
    """Reference: explicit NumPy 2x2 rotations; rotations preserve every vector's norm."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    pos = rng.integers(0, 1000, size=(2, 5))
    got = np.asarray(positional.apply_rope(jnp.asarray(x), jnp.asarray(pos)))
    np.testing.assert_allclose(got, _rope_np(x, pos), atol=2e-4)
    np.testing.assert_allclose(
        np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    """Reference: RoFormer eq. 16, <R_m q, R_n k> = <q, R_{n-m} k>; compare across shifts."""
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(1, 1, 2, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 2, 16)), jnp.float32)

    def score(m: int, n: int) -> np.ndarray:
        rq = positional.apply_rope(q, jnp.array([m]))
        rk = positional.apply_rope(k, jnp.array([n]))
        return np.asarray(jnp.sum(rq * rk, axis=-1))

    for m, n in [(0, 3), (2, 5), (10, 13), (97, 100)]:  # all with n - m = 3
        np.testing.assert_allclose(score(m, n), score(0, 3), atol=1e-4)
    for m, n in [(7, 2), (50, 45)]:  # n - m = -5
        np.testing.assert_allclose(score(m, n), score(5, 0), atol=1e-4)
    # A different offset gives a different score (the test above could not pass trivially).
    assert np.abs(score(0, 3) - score(0, 4)).max() > 1e-3


def test_rope_dtype_and_broadcast_positions():
    """Reference: the float32 result on [batch, length] positions; [length] broadcasts."""
    x = jax.random.normal(jax.random.key(0), (2, 4, 1, 6), jnp.bfloat16)
    out = positional.apply_rope(x, jnp.arange(4))
    assert out.dtype == jnp.bfloat16
    full = positional.apply_rope(x.astype(jnp.float32), jnp.tile(jnp.arange(4), (2, 1)))
    np.testing.assert_allclose(out.astype(jnp.float32), full, atol=2e-2)


def test_rope_rejects_bad_inputs():
    with pytest.raises(ValueError, match="head_dim=5"):
        positional.apply_rope(jnp.ones((1, 2, 1, 5)), jnp.arange(2))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        positional.apply_rope(jnp.ones((1, 2, 1, 4)), jnp.arange(3))


def test_learned_embedding_shape_axes_and_gather():
    """Reference: the stored table itself (output - input == table rows at the positions)."""
    mod = positional.LearnedPositionEmbedding(max_length=6)
    x = jnp.zeros((2, 6, 4))
    variables = mod.init(jax.random.key(0), x)
    boxed = variables["params"]["pos_embedding"]
    assert isinstance(boxed, nn.LogicallyPartitioned)
    assert boxed.names == (None, None, "embed")
    table = np.asarray(nn.unbox(boxed))
    assert table.shape == (1, 6, 4)
    assert 0.01 < table.std() < 0.04  # normal(stddev=0.02) init
    np.testing.assert_allclose(
        mod.apply(variables, x + 1.0), np.broadcast_to(table + 1.0, (2, 6, 4)), rtol=1e-6)
    # Decoding: a length-2 slice at offsets 3, 4 (shared) and per-example positions.
    out = mod.apply(variables, jnp.zeros((2, 2, 4)), positions=jnp.array([3, 4]))
    np.testing.assert_allclose(out, np.broadcast_to(table[:, 3:5], (2, 2, 4)))
    out = mod.apply(variables, jnp.zeros((2, 1, 4)), positions=jnp.array([[1], [5]]))
    np.testing.assert_allclose(out[:, 0], table[0, [1, 5]])


def test_learned_embedding_length_mismatch():
    mod = positional.LearnedPositionEmbedding(max_length=6)
    variables = mod.init(jax.random.key(0), jnp.zeros((1, 6, 4)))
    with pytest.raises(ValueError, match=r"\(1, 5, 4\).*\(1, 6, 4\)"):
        mod.apply(variables, jnp.zeros((1, 5, 4)))
    with pytest.raises(ValueError, match=r"positions of shape \(3,\)"):
        mod.apply(variables, jnp.zeros((1, 2, 4)), positions=jnp.arange(3))
