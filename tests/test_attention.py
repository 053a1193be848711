"""Tests for attn_jax.attention.

References: an independent NumPy float64 evaluation of softmax(Q K^T * scale + bias) V and of its
analytic gradient (below), and flax.linen.MultiHeadDotProductAttention for the module. "pallas"
runs the GPU Triton kernel with interpret=True on CPU; "cudnn" needs an NVIDIA GPU and is skipped
elsewhere.
"""

from __future__ import annotations

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from attn_jax.attention import (
    MultiHeadAttention,
    attention_mask_from_padding,
    attention_platform,
    causal_mask,
    combine_masks,
    current_attention_platform,
    dot_product_attention,
    padding_mask,
    padding_mask_from_ids,
)

IMPLS = ["reference", "xla", "cudnn", "pallas"]
MASK_IMPLS = ["reference", "xla", "cudnn"]  # the Pallas kernels take no boolean mask
B, T, N, H = 2, 8, 4, 8  # batch, length, heads, head_dim


def require(impl: str) -> None:
    if impl == "cudnn" and jax.default_backend() != "gpu":
        pytest.skip(f"cuDNN attention needs an NVIDIA GPU; backend is {jax.default_backend()}")


def input_dtype(impl: str):
    return jnp.bfloat16 if impl == "cudnn" else jnp.float32  # cuDNN has no float32 kernel


def tol(dtype) -> dict:
    return dict(atol=2e-2, rtol=2e-2) if dtype == jnp.bfloat16 else dict(atol=1e-5, rtol=1e-5)


def normal(seed: int, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Test data from NumPy's generator (jax.random would compile a kernel per shape)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def make_qkv(seed=0, q_len=T, kv_len=T, heads=N, kv_heads=N, head_dim=H, dtype=jnp.float32):
    q = normal(seed, (B, q_len, heads, head_dim), dtype)
    k = normal(seed + 100, (B, kv_len, kv_heads, head_dim), dtype)
    v = normal(seed + 200, (B, kv_len, kv_heads, head_dim), dtype)
    return q, k, v


def f64(x) -> np.ndarray:
    return np.asarray(jnp.asarray(x).astype(jnp.float32), np.float64)


def np_attention(q, k, v, mask=None, bias=None, is_causal=False, scale=None):
    """NumPy float64 softmax(Q K^T * scale + bias) V; kv heads repeated for GQA.

    Returns (output [b, t, n, d], weights [b, n, t, s], repeated k, repeated v, scale).
    """
    q, k, v = f64(q), f64(k), f64(v)
    b, t, n, d = q.shape
    s, groups = k.shape[1], n // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    logits = np.einsum("btnd,bsnd->bnts", q, k) * scale
    if bias is not None:
        logits = logits + f64(bias)
    allowed = np.ones(logits.shape, bool)
    if mask is not None:
        allowed &= np.broadcast_to(np.asarray(mask), logits.shape)
    if is_causal:
        allowed &= np.tril(np.ones((t, s), bool))
    logits = np.where(allowed, logits, -np.inf)
    row_max = logits.max(-1, keepdims=True)
    e = np.where(allowed, np.exp(logits - np.where(np.isfinite(row_max), row_max, 0.0)), 0.0)
    denom = e.sum(-1, keepdims=True)
    w = np.divide(e, denom, out=np.zeros_like(e), where=denom > 0)
    return np.einsum("bnts,bsnd->btnd", w, v), w, k, v, scale


def np_attention_grads(q, k, v, cotangent, **kwargs):
    """Analytic float64 gradients of sum(cotangent * attention(q, k, v)) w.r.t. q, k, v.

    dV = W^T G, dW = G V^T, dS = W * (dW - rowsum(dW * W)), dQ = s dS K, dK = s dS^T Q;
    gradients of repeated kv heads are summed back per group.
    """
    kv_heads = k.shape[2]
    _, w, k_rep, v_rep, scale = np_attention(q, k, v, **kwargs)
    g, q = f64(cotangent), f64(q)
    dv = np.einsum("bnts,btnd->bsnd", w, g)
    dw = np.einsum("btnd,bsnd->bnts", g, v_rep)
    ds = w * (dw - (dw * w).sum(-1, keepdims=True))
    dq = np.einsum("bnts,bsnd->btnd", ds, k_rep) * scale
    dk = np.einsum("bnts,btnd->bsnd", ds, q) * scale
    fold = lambda x: x.reshape(x.shape[:2] + (kv_heads, -1, x.shape[-1])).sum(3)  # noqa: E731
    return dq, fold(dk), fold(dv)


KV_VALID = padding_mask(jnp.array([5, 8]), T)  # [B, T]: example 0 has 3 padded keys
CASES = {
    "plain": dict(),
    "padding": dict(mask=KV_VALID[:, None, None, :]),
    "causal": dict(is_causal=True),
    "gqa": dict(kv_heads=2, is_causal=True),
    "mqa": dict(kv_heads=1),
    "bias": dict(bias=True),
    "scale": dict(scale=0.37),
    "cross": dict(kv_len=16),
}
PALLAS_UNSUPPORTED = {"padding": "mask", "bias": "bias"}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_numpy(impl, case):
    """Every path equals NumPy float64 softmax(QK^T * scale + bias)V (GQA via repeated heads)."""
    require(impl)
    opts = dict(CASES[case])
    dtype = input_dtype(impl)
    q, k, v = make_qkv(
        kv_heads=opts.pop("kv_heads", N), kv_len=opts.pop("kv_len", T), dtype=dtype
    )
    if opts.pop("bias", False):
        opts["bias"] = normal(7, (1, N, T, T))
    if impl == "pallas" and case in PALLAS_UNSUPPORTED:
        with pytest.raises(ValueError, match=f"pallas.*support {PALLAS_UNSUPPORTED[case]}"):
            dot_product_attention(q, k, v, implementation=impl, **opts)
        return
    out = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, implementation=impl, **opts))(
        q, k, v
    )
    assert out.shape == q.shape and out.dtype == dtype
    np.testing.assert_allclose(f64(out), np_attention(q, k, v, **opts)[0], **tol(dtype))


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_softmax_runs_in_float32(impl):
    """bf16 inputs: output is bf16 and matches NumPy float64 on the bf16-rounded inputs.

    The logits share a large offset (~150) that softmax cancels; rounding the logits to bf16
    (spacing 1.0 there) would move the output by > 0.1, which the float32 softmax must not.
    """
    require(impl)
    shape = (B, T, 2, 16)
    q = (6.0 + 0.5 * normal(1, shape)).astype(jnp.bfloat16)
    k = (6.0 + 0.5 * normal(2, shape)).astype(jnp.bfloat16)
    v = normal(3, shape, jnp.bfloat16)
    expected, _, _, _, scale = np_attention(q, k, v)

    logits = np.einsum("btnd,bsnd->bnts", f64(q), f64(k)) * scale
    rounded = logits.astype(ml_dtypes.bfloat16).astype(np.float64)
    w = np.exp(rounded - rounded.max(-1, keepdims=True))
    bf16_softmax = np.einsum("bnts,bsnd->btnd", w / w.sum(-1, keepdims=True), f64(v))
    assert np.abs(bf16_softmax - expected).max() > 0.1  # the test can tell the two apart

    out = dot_product_attention(q, k, v, implementation=impl)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(f64(out), expected, atol=2e-2, rtol=2e-2)


def test_return_weights_match_numpy():
    """Weights from the reference path (also chosen by implementation=None) equal NumPy's,
    including the exact-zero row of a query with every key masked."""
    q, k, v = make_qkv(kv_heads=2)
    mask = attention_mask_from_padding(padding_mask(jnp.array([6, 8]), T))
    expected_out, expected_w, *_ = np_attention(q, k, v, mask=mask, is_causal=True)
    for impl in ("reference", None):
        out, w = dot_product_attention(
            q, k, v, mask=mask, is_causal=True, implementation=impl, return_weights=True
        )
        assert w.shape == (B, N, T, T) and w.dtype == jnp.float32
        np.testing.assert_allclose(f64(w), expected_w, atol=1e-6)
        np.testing.assert_allclose(f64(out), expected_out, atol=1e-5)
    assert np.all(np.asarray(w)[0, :, 6:] == 0.0)
    with pytest.raises(ValueError, match="return_weights=True needs implementation='reference'"):
        dot_product_attention(q, k, v, implementation="xla", return_weights=True)


# --- masks by behaviour --------------------------------------------------------------------------


@pytest.mark.parametrize("impl", MASK_IMPLS)
def test_padded_keys_do_not_change_outputs(impl):
    """Replacing padded keys/values by noise leaves every output unchanged."""
    require(impl)
    q, k, v = make_qkv(dtype=input_dtype(impl))
    mask = KV_VALID[:, None, None, :]
    pad = ~KV_VALID[:, :, None, None]
    k2 = jnp.where(pad, 100.0, k).astype(k.dtype)
    v2 = jnp.where(pad, -50.0, v).astype(v.dtype)
    attend = jax.jit(lambda k, v: dot_product_attention(q, k, v, mask=mask, implementation=impl))
    assert not np.allclose(f64(k2), f64(k))
    np.testing.assert_allclose(f64(attend(k2, v2)), f64(attend(k, v)), atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_future_tokens_do_not_change_earlier_outputs(impl):
    """Under is_causal, changing q/k/v at positions >= 5 leaves outputs at positions < 5 equal."""
    require(impl)
    q, k, v = make_qkv(dtype=input_dtype(impl))
    q2, k2, v2 = make_qkv(seed=1, dtype=input_dtype(impl))
    future = (jnp.arange(T) >= 5)[None, :, None, None]
    q2, k2, v2 = (jnp.where(future, b, a) for a, b in ((q, q2), (k, k2), (v, v2)))
    attend = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, is_causal=True,
                                                           implementation=impl))
    out, out2 = f64(attend(q, k, v)), f64(attend(q2, k2, v2))
    np.testing.assert_allclose(out2[:, :5], out[:, :5], atol=1e-6)
    assert not np.allclose(out2[:, 5:], out[:, 5:])


@pytest.mark.parametrize("impl", MASK_IMPLS)
def test_fully_masked_rows_are_exact_zeros(impl):
    """A query whose keys are all masked outputs exact zeros (jax.nn alone gives the mean of v)."""
    require(impl)
    q, k, v = make_qkv(dtype=input_dtype(impl))
    mask = attention_mask_from_padding(padding_mask(jnp.array([3, 8]), T))  # rows 3.. of b=0
    out = np.asarray(f64(dot_product_attention(q, k, v, mask=mask, implementation=impl)))
    assert np.all(out[0, 3:] == 0.0)
    assert np.all(np.abs(out[0, :3]).sum(-1) > 0) and np.all(np.abs(out[1]).sum(-1) > 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_numpy_and_are_finite(impl):
    """d/d(q,k,v) of sum(g * attention) equals the NumPy float64 analytic gradient, with GQA and
    (for the masked paths) fully masked rows, whose gradients must be finite zeros."""
    require(impl)
    dtype = input_dtype(impl)
    q, k, v = make_qkv(kv_heads=2, dtype=dtype)
    g = normal(5, q.shape)
    opts = dict(is_causal=True)
    if impl != "pallas":
        opts["mask"] = attention_mask_from_padding(padding_mask(jnp.array([4, 8]), T))

    def loss(q, k, v):
        out = dot_product_attention(q, k, v, implementation=impl, **opts)
        return jnp.sum(out.astype(jnp.float32) * g)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    expected = np_attention_grads(q, k, v, g, **opts)
    tolerance = dict(atol=5e-2, rtol=5e-2) if dtype == jnp.bfloat16 else tol(dtype)
    for got, want in zip(grads, expected):
        assert np.all(np.isfinite(f64(got)))
        np.testing.assert_allclose(f64(got), want, **tolerance)


def test_dropout_is_reference_only_and_unbiased():
    """Weight dropout: differs per rng, averages (over 2000 rngs) to the dropout-free output
    (inverted-dropout scaling), and the implementations other than "reference" refuse it."""
    q, k, v = make_qkv(kv_heads=2)
    exact = dot_product_attention(q, k, v)

    def dropped(rng):
        return dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=rng)

    outs = jax.jit(jax.vmap(dropped))(jax.random.split(jax.random.key(0), 2000))
    assert not np.allclose(np.asarray(outs[0]), np.asarray(exact), atol=1e-2)
    assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]), atol=1e-2)
    np.testing.assert_allclose(np.asarray(outs.mean(0)), np.asarray(exact), atol=0.1)
    with pytest.raises(ValueError, match="dropout_rate=0.5 needs implementation='reference'"):
        dot_product_attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0),
                              implementation="xla")
    with pytest.raises(ValueError, match="needs a dropout_rng"):
        dot_product_attention(q, k, v, dropout_rate=0.5)


# --- mask helpers --------------------------------------------------------------------------------


def test_mask_helpers_match_numpy():
    """Mask helpers against NumPy comparisons / np.tril."""
    lengths = np.array([2, 5, 0])
    np.testing.assert_array_equal(padding_mask(lengths, 5), np.arange(5)[None] < lengths[:, None])
    ids = np.array([[3, 7, 0, 0], [1, 0, 2, 0]])
    np.testing.assert_array_equal(padding_mask_from_ids(ids), ids != 0)
    np.testing.assert_array_equal(padding_mask_from_ids(ids, pad_id=2), ids != 2)
    q_valid, kv_valid = ids != 0, np.array([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1]], bool)
    cross = attention_mask_from_padding(q_valid, kv_valid)
    assert cross.shape == (2, 1, 4, 6)
    np.testing.assert_array_equal(cross[:, 0], q_valid[:, :, None] & kv_valid[:, None, :])
    np.testing.assert_array_equal(
        attention_mask_from_padding(q_valid)[:, 0], q_valid[:, :, None] & q_valid[:, None, :]
    )
    assert causal_mask(4).shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(causal_mask(4)[0, 0], np.tril(np.ones((4, 4), bool)))
    np.testing.assert_array_equal(causal_mask(3, 6, offset=3)[0, 0],
                                  np.tril(np.ones((3, 6), bool), k=3))
    assert combine_masks(None, None) is None
    combined = combine_masks(causal_mask(4), None, padding_mask(np.array([3]), 4)[:, None, None])
    np.testing.assert_array_equal(
        combined, np.tril(np.ones((4, 4), bool))[None, None] & (np.arange(4) < 3)
    )
    with pytest.raises(ValueError, match=r"\(1, 1, 4, 4\), \(1, 1, 1, 3\) do not broadcast"):
        combine_masks(causal_mask(4), causal_mask(1, 3))


# --- MultiHeadAttention --------------------------------------------------------------------------


X = normal(0, (B, 7, 16))  # module input [batch, length, features] shared by the tests below
FLAX_CONFIGS = {
    "self": dict(num_heads=4, out_features=10, normalize_qk=True),
    "cross": dict(num_heads=4, qkv_features=8),
}


@pytest.mark.parametrize("config", list(FLAX_CONFIGS))
def test_params_port_both_ways_with_flax(config):
    """Same param dict in our module and flax.linen.MultiHeadDotProductAttention: outputs agree
    within 1e-5 (float32), whichever module initialised the params, with a mask. Biases and
    LayerNorm scales are perturbed so that they matter."""
    cfg = FLAX_CONFIGS[config]
    if config == "cross":
        context = normal(1, (B, 5, 6))
        mask = attention_mask_from_padding(jnp.ones((B, 7), bool),
                                           padding_mask(jnp.array([3, 5]), 5))
    else:  # causal and key padding; no query row is fully masked (flax would average there)
        context = None
        mask = combine_masks(causal_mask(7), padding_mask(jnp.array([4, 7]), 7)[:, None, None])
    ours = MultiHeadAttention(**cfg)
    theirs = nn.MultiHeadDotProductAttention(**cfg)
    flax_params = theirs.init(jax.random.key(1), X, context, mask=mask)["params"]
    our_params = nn.unbox(ours.init(jax.random.key(2), X, context, mask=mask))["params"]
    assert jax.tree.map(jnp.shape, flax_params) == jax.tree.map(jnp.shape, our_params)
    for seed, params in enumerate((flax_params, our_params)):
        leaves, tree = jax.tree.flatten(params)
        params = tree.unflatten([p + 0.1 * normal(seed + i, p.shape) for i, p in enumerate(leaves)])
        out = ours.apply({"params": params}, X, context, mask=mask)
        assert out.shape == (B, 7, cfg.get("out_features", 16))
        expected = theirs.apply({"params": params}, X, context, mask=mask)
        np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


DECODE_CONFIGS = {
    "plain": dict(num_heads=4),
    "gqa_rope": dict(num_heads=4, num_kv_heads=2, use_rope=True, normalize_qk=True),
    "mqa_rope_prefill": dict(num_heads=4, num_kv_heads=1, use_rope=True),
}


@pytest.mark.parametrize("config", list(DECODE_CONFIGS))
def test_decode_one_token_at_a_time_equals_causal(config):
    """Cached decoding (one token per apply; '_prefill' feeds 3 tokens first) equals the
    full-sequence causal computation with the same params (RoPE positions from the cache)."""
    cfg = DECODE_CONFIGS[config]
    length = X.shape[1]
    decoder = MultiHeadAttention(decode=True, **cfg)
    variables = decoder.init(jax.random.key(1), X, is_causal=True)
    params, cache = variables["params"], variables["cache"]
    assert cache["cached_key"].shape == (B, length, cfg.get("num_kv_heads", 4), 4)
    full = MultiHeadAttention(**cfg).apply({"params": params}, X, is_causal=True)

    @jax.jit
    def step(cache, tokens):
        return decoder.apply({"params": params, "cache": cache}, tokens, mutable=["cache"])

    first = 3 if config.endswith("_prefill") else 1
    outs = []
    for start, stop in [(0, first)] + [(t, t + 1) for t in range(first, length)]:
        out, mutated = step(cache, X[:, start:stop])
        cache = mutated["cache"]
        outs.append(out)
    assert int(cache["cache_index"]) == length
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_module_dropout_and_weights():
    """Dropout acts only when deterministic=False (rng 'dropout'); returned weights are
    [batch, heads, q_len, kv_len] rows summing to 1."""
    model = MultiHeadAttention(num_heads=4, dropout_rate=0.5)
    params = model.init(jax.random.key(1), X)["params"]
    det = model.apply({"params": params}, X)
    np.testing.assert_allclose(det, MultiHeadAttention(num_heads=4).apply({"params": params}, X))
    dropped = model.apply({"params": params}, X, deterministic=False,
                          rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(dropped, det)
    out, weights = model.apply({"params": params}, X, return_weights=True)
    np.testing.assert_allclose(out, det, atol=1e-6)
    assert weights.shape == (B, 4, 7, 7)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)


def test_logical_axis_names():
    """Every parameter carries the shared logical axis names (nn.get_partition_spec)."""
    model = MultiHeadAttention(num_heads=4, num_kv_heads=2, normalize_qk=True)
    variables = jax.eval_shape(model.init, jax.random.key(0), X)  # boxes, no computation
    specs = nn.get_partition_spec(variables)["params"]
    assert specs["query"] == {"kernel": P("embed", "heads", "kv"), "bias": P("heads", "kv")}
    for name in ("key", "value"):
        assert specs[name] == {"kernel": P("embed", "kv_heads", "kv"), "bias": P("kv_heads", "kv")}
    assert specs["out"] == {"kernel": P("heads", "kv", "embed"), "bias": P("embed")}
    assert specs["query_ln"] == specs["key_ln"] == {"scale": P("norm")}


# --- errors --------------------------------------------------------------------------------------


def test_errors_name_the_shapes():
    """Bad inputs raise ValueError messages that name the offending shapes / numbers."""
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match=r"head_dim of query \(8\) and key/value \(6\).*"
                                         r"key \(2, 8, 4, 6\)"):
        dot_product_attention(q, k[..., :6], v[..., :6])
    with pytest.raises(ValueError, match=r"query heads \(4\) not divisible by kv_heads \(3\)"):
        dot_product_attention(q, k[:, :, :3], v[:, :, :3])
    with pytest.raises(ValueError, match=r"mask of shape \(2, 1, 1, 5\) does not broadcast to "
                                         r"\[batch, heads, q_len, kv_len\] = \(2, 4, 8, 8\)"):
        dot_product_attention(q, k, v, mask=jnp.ones((2, 1, 1, 5), bool))
    with pytest.raises(ValueError, match=r"bias of shape \(3, 8, 8\) does not broadcast"):
        dot_product_attention(q, k, v, bias=jnp.ones((3, 8, 8)))
    with pytest.raises(ValueError, match=r"batch sizes differ.*key \(1, 8, 4, 8\)"):
        dot_product_attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match=r"rank 4.*query \(8, 4, 8\)"):
        dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match="mask must be boolean.*float32"):
        dot_product_attention(q, k, v, mask=jnp.ones((1, 1, 8, 8)))
    with pytest.raises(ValueError, match="unknown implementation 'flash'"):
        dot_product_attention(q, k, v, implementation="flash")
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match="implementation='cudnn' needs an NVIDIA GPU"):
            dot_product_attention(q, k, v, implementation="cudnn")
    x = jnp.ones((1, 3, 10))
    with pytest.raises(ValueError, match="qkv_features=10 is not divisible by num_heads=4"):
        MultiHeadAttention(num_heads=4).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="num_heads=4 is not divisible by num_kv_heads=3"):
        MultiHeadAttention(num_heads=4, num_kv_heads=3, qkv_features=8).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"self-attention only.*\(1, 2, 10\)"):
        MultiHeadAttention(num_heads=2, decode=True).init(
            jax.random.key(0), x, jnp.ones((1, 2, 10))
        )


def test_out_kernel_init_applies_to_w_o_only():
    """DDPM zero-initialises the attention output projection; the other three keep kernel_init."""
    x = jnp.ones((1, 4, 8))
    mha = MultiHeadAttention(num_heads=2, out_kernel_init=nn.initializers.zeros)
    params = nn.unbox(mha.init(jax.random.PRNGKey(0), x)["params"])
    assert not np.any(np.asarray(params["out"]["kernel"]))
    assert np.all(np.abs(np.asarray(params["query"]["kernel"])).sum() > 0)
    np.testing.assert_array_equal(mha.apply({"params": params}, x), 0.0)


def test_separate_keys_and_values_match_flax():
    """Reference: flax.linen.MultiHeadDotProductAttention(inputs_q, inputs_k, inputs_v) with the
    same parameters (keys and values of different widths, as DETR's keys = memory + positions).
    `mha(x, kv)`, `mha(x, kv, kv)` and `mha(x, inputs_kv=kv)` agree."""
    keys, values = normal(1, (B, 5, 6)), normal(2, (B, 5, 3))
    mask = attention_mask_from_padding(jnp.ones((B, 7), bool), padding_mask(jnp.array([3, 5]), 5))
    ours = MultiHeadAttention(num_heads=4, qkv_features=8)
    params = nn.unbox(ours.init(jax.random.key(0), X, keys, values, mask=mask))["params"]
    assert params["key"]["kernel"].shape == (6, 4, 2)
    assert params["value"]["kernel"].shape == (3, 4, 2)
    leaves, tree = jax.tree.flatten(params)
    params = tree.unflatten([p + 0.1 * normal(i, p.shape) for i, p in enumerate(leaves)])
    out = ours.apply({"params": params}, X, keys, values, mask=mask)
    theirs = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=8)
    expected = theirs.apply({"params": params}, X, keys, values, mask=mask)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)

    kv = normal(3, (B, 5, 6))
    p2 = nn.unbox(ours.init(jax.random.key(0), X, kv))["params"]
    one = ours.apply({"params": p2}, X, kv)
    np.testing.assert_array_equal(ours.apply({"params": p2}, X, kv, kv), one)
    np.testing.assert_array_equal(ours.apply({"params": p2}, X, inputs_kv=kv), one)
    with pytest.raises(ValueError, match=r"inputs_v of shape \(2, 5, 3\) needs inputs_k"):
        ours.apply({"params": params}, X, None, values)
    with pytest.raises(ValueError, match="not both"):
        ours.apply({"params": p2}, X, kv, inputs_kv=kv)
    with pytest.raises(ValueError, match=r"same \[batch, kv_len\].*inputs_v \(2, 4, 3\)"):
        ours.apply({"params": params}, X, keys, values[:, :4])
    with pytest.raises(ValueError, match="mask, bias and the rest are keyword arguments"):
        ours.apply({"params": p2}, X, kv, mask)  # the old positional mask is refused


# --- which implementation ran, and why -------------------------------------------------------


def _records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "attn_jax.attention"]


def test_automatic_choice_logs_the_refused_fast_path(caplog):
    """implementation=None says in one line per trace what ran and why: dropout forces the
    reference path; 'cudnn' is refused on a CPU platform (bfloat16, head_dim 8: it fits
    otherwise); a GPU platform without GPU devices refuses it too. Repeated identical calls in
    one trace (a model's layers) log once; a new trace logs again; explicit choices log
    nothing."""
    q, k, v = make_qkv(dtype=jnp.bfloat16)
    caplog.set_level(logging.INFO, logger="attn_jax.attention")

    def dropped(q, k, v):
        rng = jax.random.key(0)
        for _ in range(3):  # three "layers": one line
            q = dot_product_attention(q, k, v, dropout_rate=0.1, dropout_rng=rng)
        return q

    with attention_platform("cpu"):
        jax.jit(dropped).lower(q, k, v)
        lines = _records(caplog)
        assert len(lines) == 1, lines
        assert "ran 'reference'" in lines[0] and "dropout_rate=0.1" in lines[0]
        assert "on cpu" in lines[0] and "[2, 8, 4, 8] bfloat16" in lines[0]
        caplog.clear()
        jax.jit(lambda q, k, v: dot_product_attention(q, k, v)).lower(q, k, v)
        (line,) = _records(caplog)
        assert "ran 'xla'" in line and "'cudnn' refused: the platform is cpu" in line
        caplog.clear()
        jax.jit(lambda q, k, v: dot_product_attention(q, k, v, implementation="xla")).lower(
            q, k, v)
        assert _records(caplog) == []
    if jax.devices()[0].platform != "gpu":
        with attention_platform("gpu"):
            assert current_attention_platform() == "gpu"
            jax.jit(lambda q, k, v: dot_product_attention(q, k, v)).lower(q, k, v)
            (line,) = _records(caplog)
            assert "'cudnn' refused: this process sees no GPU device" in line
            assert caplog.records[-1].levelno == logging.WARNING  # a GPU run losing cudnn


def test_attention_platform_setter_and_context():
    """The platform comes from the argument (a name, a mesh's devices, a device), the context
    restores the previous one, None goes back to jax.default_backend()."""
    default = jax.default_backend()
    assert current_attention_platform() == default
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with attention_platform("tpu"):
        assert current_attention_platform() == "tpu"
        with attention_platform(mesh):
            assert current_attention_platform() == mesh.devices.flat[0].platform
        assert current_attention_platform() == "tpu"
    assert current_attention_platform() == default
    attention_platform("cuda")
    try:
        assert current_attention_platform() == "gpu"
    finally:
        attention_platform(None)
    assert current_attention_platform() == default
    with attention_platform(jax.devices()[0]):
        assert current_attention_platform() == jax.devices()[0].platform
    with pytest.raises(ValueError, match="attention_platform expects a platform name"):
        attention_platform(3)
