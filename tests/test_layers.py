"""Tests of attn_jax.layers: the one TransformerBlock and MlpBlock's axis names.

Reference for the block: the same parameters run through flax.linen's own LayerNorm,
MultiHeadDotProductAttention (separate query / key / value inputs) and Dense, composed as the
papers write the layer: pre-norm x + f(LN(x)) (ViT eq. 2-3), post-norm LN(x + f(x)) (Vaswani
et al. 2017, sec. 5.4), and DETR's decoder layer (Carion et al. 2020; facebookresearch/detr
`TransformerDecoderLayer.forward_post` / `forward_pre`: positions added to queries and keys,
never to values).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from attn_jax.layers import MlpBlock, TransformerBlock

B, T, S, D, HEADS = 2, 5, 6, 8, 2  # batch, length, memory length, width, heads


def normal(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


X = normal(0, (B, T, D))
MEMORY = normal(1, (B, S, D))
MEMORY_VALID = jnp.array([[True] * 4 + [False] * 2, [True] * 6])  # [B, S]
SELF_MASK = jnp.array([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :]  # key padding
QUERY_POS, MEMORY_POS = normal(2, (1, T, D)), normal(3, (B, S, D))


def random_params(block: TransformerBlock, *args, **kwargs) -> dict:
    """N(0, 0.3) parameters of the block's shapes (LayerNorm scales and biases matter too)."""
    shapes = nn.unbox(jax.eval_shape(block.init, jax.random.key(0), *args, **kwargs)["params"])
    rng = np.random.default_rng(7)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), s.dtype), shapes)


def reference_block(p, x, *, norm, causal, mask=None, memory=None, memory_valid=None,
                    query_pos=None, memory_pos=None):
    """The layer from flax.linen parts: LayerNorm(1e-6), MultiHeadDotProductAttention, Dense."""
    ln = nn.LayerNorm(epsilon=1e-6)
    pos = lambda h, e: h if e is None else h + e  # noqa: E731

    def attend(params, q, k, v, m):
        return nn.MultiHeadDotProductAttention(num_heads=HEADS).apply(
            {"params": params}, q, k, v, mask=m)

    def branch(x, norm_params, f):
        if norm == "pre":
            return x + f(ln.apply({"params": norm_params}, x))
        return ln.apply({"params": norm_params}, x + f(x))

    self_mask = jnp.ones((1, 1, T, T), bool) if mask is None else mask
    if causal:
        self_mask = self_mask & jnp.tril(jnp.ones((T, T), bool))
    x = branch(x, p["self_attention_norm"], lambda h: attend(
        p["self_attention"], pos(h, query_pos), pos(h, query_pos), h, self_mask))
    if memory is not None:
        cross_mask = None if memory_valid is None else memory_valid[:, None, None, :]
        x = branch(x, p["cross_attention_norm"], lambda h: attend(
            p["cross_attention"], pos(h, query_pos), pos(memory, memory_pos), memory,
            cross_mask))

    def mlp(h):
        h = nn.Dense(16).apply({"params": p["mlp"]["Dense_0"]}, h)
        return nn.Dense(D).apply({"params": p["mlp"]["Dense_1"]}, jax.nn.gelu(h))

    return branch(x, p["mlp_norm"], mlp)


CASES = {
    # name: (block fields, call keyword arguments)
    "vit_pre": (dict(norm="pre"), dict()),
    "post_causal_cross": (dict(norm="post", causal=True, cross_attention=True),
                          dict(mask=SELF_MASK, memory=MEMORY, memory_valid=MEMORY_VALID)),
    "detr_post": (dict(norm="post", cross_attention=True),
                  dict(memory=MEMORY, memory_valid=MEMORY_VALID, query_pos=QUERY_POS,
                       memory_pos=MEMORY_POS)),
    "detr_pre": (dict(norm="pre", cross_attention=True),
                 dict(memory=MEMORY, query_pos=QUERY_POS, memory_pos=MEMORY_POS)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_block_matches_flax_reference(case):
    """Pre/post-norm, causal or not, cross-attention with a [batch, src_len] memory mask, DETR
    positions: the block equals the flax.linen composition with the same parameters."""
    fields, kw = CASES[case]
    block = TransformerBlock(num_heads=HEADS, mlp_dim=16, **fields)
    call = dict(kw)
    if "memory_valid" in call:
        call["memory_mask"] = call.pop("memory_valid")
    mask = call.pop("mask", None)
    memory = call.pop("memory", None)
    memory_mask = call.pop("memory_mask", None)
    params = random_params(block, X, mask, memory, memory_mask, **call)
    out = block.apply({"params": params}, X, mask, memory, memory_mask, **call)
    want = reference_block(params, X, norm=fields["norm"], causal=fields.get("causal", False),
                           **kw)
    assert out.shape == X.shape
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_submodule_names():
    """The Transformer's names; cross-attention ones only with cross_attention=True."""
    shapes = jax.eval_shape(TransformerBlock(num_heads=HEADS, mlp_dim=16).init,
                            jax.random.key(0), X)["params"]
    assert set(shapes) == {"self_attention", "self_attention_norm", "mlp", "mlp_norm"}
    cross = TransformerBlock(num_heads=HEADS, mlp_dim=16, cross_attention=True)
    shapes = jax.eval_shape(cross.init, jax.random.key(0), X, None, MEMORY)["params"]
    assert set(shapes) == {"self_attention", "self_attention_norm", "cross_attention",
                           "cross_attention_norm", "mlp", "mlp_norm"}
    assert set(shapes["mlp"]) == {"Dense_0", "Dense_1"}


def test_cached_decoding_equals_full_causal_pass():
    """Reference: the same block without a cache over the whole sequence (causal, with
    cross-attention over a padded memory); the cached block is fed one token per call."""
    full = TransformerBlock(num_heads=HEADS, num_kv_heads=1, mlp_dim=16, causal=True,
                            cross_attention=True, norm="post")
    cached = full.clone(decode=True)
    params = random_params(full, X, None, MEMORY, MEMORY_VALID)
    want = full.apply({"params": params}, X, None, MEMORY, MEMORY_VALID)
    cache = cached.init(jax.random.key(0), X, None, MEMORY, MEMORY_VALID)["cache"]
    cache = jax.tree.map(jnp.zeros_like, cache)

    @jax.jit
    def step(cache, token):
        return cached.apply({"params": params, "cache": cache}, token, None, MEMORY,
                            MEMORY_VALID, mutable=["cache"])

    outs = []
    for t in range(T):
        out, mutated = step(cache, X[:, t:t + 1])
        cache = mutated["cache"]
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), want, rtol=1e-5, atol=1e-5)


def test_drop_path_and_dropout_act_on_every_branch_in_training_only():
    """drop_path_rate=1 drops all three residual branches (pre-norm: the block is the identity);
    evaluation ignores it. Dropout gives different outputs per rng, none when deterministic."""
    block = TransformerBlock(num_heads=HEADS, mlp_dim=16, cross_attention=True,
                             drop_path_rate=1.0)
    params = random_params(block, X, None, MEMORY)
    train = block.apply({"params": params}, X, None, MEMORY, deterministic=False,
                        rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(train, X)
    evaluated = block.apply({"params": params}, X, None, MEMORY)
    assert np.abs(np.asarray(evaluated - X)).max() > 1e-2
    np.testing.assert_array_equal(evaluated, block.clone(drop_path_rate=0.0).apply(
        {"params": params}, X, None, MEMORY))

    dropped = block.clone(drop_path_rate=0.0, dropout_rate=0.3)
    a, b = (dropped.apply({"params": params}, X, None, MEMORY, deterministic=False,
                          rngs={"dropout": jax.random.key(k)}) for k in (1, 2))
    assert np.abs(np.asarray(a - b)).max() > 1e-3
    np.testing.assert_array_equal(
        dropped.apply({"params": params}, X, None, MEMORY), evaluated)


def test_initialisers_reach_their_branches():
    """residual_kernel_init sets W_O of both attentions and the MLP output, nothing else;
    attention and MLP initialisers apply to their own kernels and biases."""
    block = TransformerBlock(
        num_heads=HEADS, mlp_dim=16, cross_attention=True,
        attention_kernel_init=nn.initializers.constant(0.5),
        attention_bias_init=nn.initializers.constant(0.25),
        mlp_kernel_init=nn.initializers.constant(-1.0),
        mlp_bias_init=nn.initializers.constant(2.0),
        residual_kernel_init=nn.initializers.zeros)
    p = nn.unbox(block.init(jax.random.key(0), X, None, MEMORY)["params"])
    for attn in ("self_attention", "cross_attention"):
        np.testing.assert_array_equal(p[attn]["out"]["kernel"], 0.0)
        for name in ("query", "key", "value"):
            np.testing.assert_array_equal(p[attn][name]["kernel"], 0.5)
        for name in ("query", "key", "value", "out"):
            np.testing.assert_array_equal(p[attn][name]["bias"], 0.25)
    np.testing.assert_array_equal(p["mlp"]["Dense_0"]["kernel"], -1.0)
    np.testing.assert_array_equal(p["mlp"]["Dense_1"]["kernel"], 0.0)
    np.testing.assert_array_equal(p["mlp"]["Dense_1"]["bias"], 2.0)
    # The defaults are ViT's: MLP biases normal(1e-6), attention biases zero.
    vit = nn.unbox(TransformerBlock(num_heads=HEADS, mlp_dim=16).init(jax.random.key(0), X))
    bias = np.asarray(vit["params"]["mlp"]["Dense_0"]["bias"])
    assert 0 < np.abs(bias).max() < 1e-5
    np.testing.assert_array_equal(vit["params"]["self_attention"]["query"]["bias"], 0.0)


def test_bad_inputs_raise():
    key = jax.random.key(0)
    block = TransformerBlock(num_heads=HEADS, mlp_dim=16)
    cross = block.clone(cross_attention=True)
    with pytest.raises(ValueError, match="norm must be 'pre' or 'post'"):
        block.clone(norm="sandwich").init(key, X)
    with pytest.raises(ValueError, match="decode=True.*causal=True"):
        block.clone(decode=True).init(key, X)
    with pytest.raises(ValueError, match="query_pos.*decode=True"):
        block.clone(decode=True, causal=True).init(key, X, query_pos=QUERY_POS)
    with pytest.raises(ValueError, match=r"x \[batch, length, features\].*\(5, 8\)"):
        block.init(key, X[0])
    with pytest.raises(ValueError, match=r"mask must be .*\(2, 5\)"):
        block.init(key, X, jnp.ones((B, T), bool))
    with pytest.raises(ValueError, match="without cross_attention"):
        block.init(key, X, None, MEMORY)
    with pytest.raises(ValueError, match="needs memory"):
        cross.init(key, X)
    with pytest.raises(ValueError, match=r"memory must be \[batch=2.*\(1, 6, 8\)"):
        cross.init(key, X, None, MEMORY[:1])
    with pytest.raises(ValueError, match=r"memory_mask \(2, 5\) must be \[batch, src_len\] = "
                                         r"\(2, 6\)"):
        cross.init(key, X, None, MEMORY, jnp.ones((B, 5), bool))
    with pytest.raises(ValueError, match="return_cross_attention=True needs"):
        block.init(key, X, return_cross_attention=True)


def test_cross_attention_weights_are_returned_without_changing_the_output():
    """return_cross_attention hands back the cross-attention's softmax weights (rows summing to
    1 over the memory positions, none on masked ones) and leaves the block's output as it is."""
    block = TransformerBlock(num_heads=HEADS, mlp_dim=16, cross_attention=True)
    memory_mask = jnp.arange(MEMORY.shape[1])[None, :] < jnp.array([[6], [4]])
    variables = block.init(jax.random.key(0), X, None, MEMORY, memory_mask)
    plain = block.apply(variables, X, None, MEMORY, memory_mask)
    out, weights = block.apply(variables, X, None, MEMORY, memory_mask,
                               return_cross_attention=True)
    np.testing.assert_allclose(out, plain, atol=1e-5)
    assert weights.shape == (B, HEADS, X.shape[1], MEMORY.shape[1])
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert not np.any(weights[1, :, :, 4:])


def test_mlp_axis_names_reach_the_parameter_boxes():
    """Reference: the names passed (MLP-Mixer's token-mixing MLP runs over the patch axis), and
    the default ('embed', 'mlp') of the channel MLP."""
    x = jnp.ones((2, 3, 7))  # [batch, channels, patches]: token mixing acts on the last axis
    mixer = MlpBlock(mlp_dim=5, axis_names=("patch", "token_mlp"))
    specs = nn.get_partition_spec(jax.eval_shape(mixer.init, jax.random.key(0), x))["params"]
    assert specs == {"Dense_0": {"kernel": P("patch", "token_mlp"), "bias": P("token_mlp")},
                     "Dense_1": {"kernel": P("token_mlp", "patch"), "bias": P("patch")}}
    shapes = jax.eval_shape(mixer.init, jax.random.key(0), x)["params"]
    assert shapes["Dense_0"]["kernel"].value.shape == (7, 5)
    specs = nn.get_partition_spec(
        jax.eval_shape(MlpBlock(mlp_dim=5).init, jax.random.key(0), x))["params"]
    assert specs["Dense_0"]["kernel"] == P("embed", "mlp")
    assert specs["Dense_1"]["bias"] == P("embed")
    with pytest.raises(ValueError, match="axis_names is .*got \\('embed',\\)"):
        MlpBlock(mlp_dim=5, axis_names=("embed",)).init(jax.random.key(0), x)
