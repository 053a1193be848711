"""Tests of attn_jax.models.transformer and attn_jax.losses."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attn_jax import decoding
from attn_jax.losses import cross_entropy_with_label_smoothing, smoothed_cross_entropy
from attn_jax.models.transformer import (
    DecoderOnlyLM,
    EncoderDecoder,
    TransformerConfig,
    count_params,
)

PAD, BOS = 0, 1


def tiny(**overrides) -> TransformerConfig:
    kw = dict(
        vocab_size=13, emb_dim=16, num_heads=2, num_kv_heads=1, num_encoder_layers=1,
        num_decoder_layers=2, mlp_dim=32, max_len=16, dropout_rate=0.0,
        attention_dropout_rate=0.0, pad_id=PAD, bos_id=BOS,
    )
    return TransformerConfig(**{**kw, **overrides})


def random_params(model: nn.Module, *args, std: float = 0.2, seed: int = 0) -> dict:
    """N(0, std) parameters of the shapes `model.init` would make (no compile, unlike init;
    random LayerNorm scales and biases also exercise more of the computation)."""
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), shapes)


def abstract_params(model: nn.Module, *shapes) -> dict:
    args = [jnp.ones(s, jnp.int32) for s in shapes]
    return jax.eval_shape(model.init, jax.random.key(0), *args)["params"]


# --------------------------------------------------------------------------------------------
# Parameter counts.
# --------------------------------------------------------------------------------------------


def _attention_params(d: int) -> int:
    return 4 * (d * d + d)  # q, k, v, out projections with biases


def _mlp_params(d: int, ff: int) -> int:
    return d * ff + ff + ff * d + d


def test_gpt2_small_parameter_count():
    """Reference: the published GPT-2 small size, 124,439,808 (HF `gpt2`: tied wte, 1024 wpe),
    and the formula V*d + P*d + L*(attn + mlp + 2 LN) + final LN from the layer sizes."""
    cfg = TransformerConfig.gpt2_small()
    n = count_params(abstract_params(DecoderOnlyLM(cfg), (1, 8)))
    d, ff, layers = 768, 3072, 12
    formula = 50257 * d + 1024 * d + layers * (_attention_params(d) + _mlp_params(d, ff) + 4 * d)
    formula += 2 * d
    assert formula == 124_439_808
    assert n == 124_439_808


def test_gpt2_medium_parameter_count():
    """Reference: the same formula with d 1024, 24 layers, d_ff 4096 (HF `gpt2-medium`: 354.8M)."""
    n = count_params(abstract_params(DecoderOnlyLM(TransformerConfig.gpt2_medium()), (1, 8)))
    d, ff, layers = 1024, 4096, 24
    formula = 50257 * d + 1024 * d + layers * (_attention_params(d) + _mlp_params(d, ff) + 4 * d)
    assert n == formula + 2 * d == 354_823_168


@pytest.mark.parametrize(
    "name, d, ff, expected",
    [("transformer_base", 512, 2048, 63_082_496), ("transformer_big", 1024, 4096, 214_245_376)],
)
def test_encoder_decoder_parameter_count(name, d, ff, expected):
    """Reference: shared 37000 x d embedding (also the output projection; sinusoidal positions
    have no parameters) + 6 encoder layers (attn + mlp + 2 LN) + 6 decoder layers
    (2 attn + mlp + 3 LN). The paper's Table 3 quotes 65M and 213M."""
    cfg = getattr(TransformerConfig, name)()
    n = count_params(abstract_params(EncoderDecoder(cfg), (1, 8), (1, 8)))
    enc = _attention_params(d) + _mlp_params(d, ff) + 2 * 2 * d
    dec = 2 * _attention_params(d) + _mlp_params(d, ff) + 3 * 2 * d
    formula = 37000 * d + 6 * enc + 6 * dec
    assert n == formula == expected


def test_untied_unshared_and_pre_norm_parameters():
    """Reference: the formula gains a second table, an output Dense and two final LayerNorms."""
    cfg = tiny(vocab_size=11, output_vocab_size=7, share_embeddings=False, tie_output=False,
               norm="pre", num_kv_heads=None)
    params = abstract_params(EncoderDecoder(cfg), (1, 4), (1, 5))
    d, ff = 16, 32
    enc = _attention_params(d) + _mlp_params(d, ff) + 4 * d
    dec = 2 * _attention_params(d) + _mlp_params(d, ff) + 6 * d
    formula = 11 * d + 7 * d + (d * 7 + 7) + 1 * enc + 2 * dec + 2 * 2 * d  # 1 + 2 layers
    assert count_params(params) == formula


def test_every_parameter_has_logical_axis_names():
    """Every leaf is boxed with one known logical name (or None) per dimension."""
    allowed = {"vocab", "embed", "heads", "kv_heads", "kv", "mlp", "norm", None}
    for model, shapes in [
        (EncoderDecoder(tiny(share_embeddings=False, tie_output=False, positions="learned")),
         [(1, 4), (1, 5)]),
        (DecoderOnlyLM(tiny(norm="pre", positions="learned")), [(1, 4)]),
    ]:
        params = abstract_params(model, *shapes)
        leaves = jax.tree_util.tree_leaves_with_path(
            params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
        )
        assert leaves
        for path, leaf in leaves:
            where = jax.tree_util.keystr(path)
            assert isinstance(leaf, nn.LogicallyPartitioned), where
            assert len(leaf.names) == leaf.value.ndim, where
            assert set(leaf.names) <= allowed, where


def _kernel_stds(stack: dict, sublayers: tuple[str, ...]) -> dict[str, float]:
    """Sample std of each kind of kernel in a stack's parameters, pooled over its layers."""
    layers = [v for k, v in stack.items() if k.startswith("layer_")]
    kinds = {f"{sub}/{name}": [np.asarray(layer[sub][name]["kernel"]).ravel() for layer in layers]
             for sub in sublayers for name in ("query", "key", "value", "out")}
    for name in ("Dense_0", "Dense_1"):
        kinds[f"mlp/{name}"] = [np.asarray(layer["mlp"][name]["kernel"]).ravel() for layer in layers]
    return {kind: float(np.concatenate(v).std()) for kind, v in kinds.items()}


def test_gpt2_scaled_residual_init():
    """Reference: GPT-2 (Radford et al. 2019, sec. 2.3) and nanoGPT: the residual projections
    (W_O, the MLP output) are N(0, 0.02 / sqrt(2 * n_layer)), every other kernel N(0, 0.02).
    Sample stds over >= 24k draws are within 5% (their standard error is ~0.5%)."""
    cfg = TransformerConfig.gpt2_small(vocab_size=50, emb_dim=64, num_heads=4, mlp_dim=256,
                                       num_decoder_layers=6, max_len=16)
    params = nn.unbox(DecoderOnlyLM(cfg).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    stds = _kernel_stds(params["decoder"], ("self_attention",))
    scaled = 0.02 / np.sqrt(2 * 6)
    for kind, std in stds.items():
        expected = scaled if kind in ("self_attention/out", "mlp/Dense_1") else 0.02
        assert abs(std / expected - 1) < 0.05, (kind, std, expected)
    assert abs(np.asarray(params["embedding"]["embedding"]).std() / 0.02 - 1) < 0.05

    # Without the flag every kernel is N(0, 0.02); an encoder-decoder scales each stack by its
    # own count of residual sublayers (2 per encoder layer, 3 per decoder layer).
    plain = nn.unbox(DecoderOnlyLM(cfg.replace(scale_residual_init=False)).init(
        jax.random.key(0), jnp.ones((1, 4), jnp.int32))["params"])
    for kind, std in _kernel_stds(plain["decoder"], ("self_attention",)).items():
        assert abs(std / 0.02 - 1) < 0.05, (kind, std)
    ed = tiny(emb_dim=64, num_heads=4, num_kv_heads=None, mlp_dim=256, num_encoder_layers=4,
              num_decoder_layers=4, init_std=0.02, scale_residual_init=True)
    ed_params = nn.unbox(EncoderDecoder(ed).init(
        jax.random.key(1), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), jnp.int32))["params"])
    for stack, sublayers, n in [("encoder", ("self_attention",), 8),
                                ("decoder", ("self_attention", "cross_attention"), 12)]:
        for kind, std in _kernel_stds(ed_params[stack], sublayers).items():
            expected = 0.02 / np.sqrt(n) if kind.endswith(("/out", "Dense_1")) else 0.02
            assert abs(std / expected - 1) < 0.05, (stack, kind, std, expected)
    with pytest.raises(ValueError, match="init_std"):
        tiny(scale_residual_init=True)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="norm"):
        tiny(norm="middle")
    with pytest.raises(ValueError, match="share_embeddings"):
        tiny(output_vocab_size=7)
    with pytest.raises(ValueError, match="divisible"):
        tiny(num_heads=3)
    with pytest.raises(ValueError, match="activation"):
        tiny(activation="swish")


# --------------------------------------------------------------------------------------------
# Masking.
# --------------------------------------------------------------------------------------------


SRC = jnp.array([[3, 4, 5, 6, PAD, PAD], [7, 8, 9, 10, 11, 12]])
TGT = jnp.array([[3, 4, 5, 6, 2, PAD, PAD], [9, 9, 3, 4, 5, 6, 2]])


@pytest.fixture(scope="module")
def encdec():
    model = EncoderDecoder(tiny())
    return model, random_params(model, SRC, TGT)


@pytest.fixture(scope="module")
def lm():
    model = DecoderOnlyLM(tiny(norm="pre", positions="learned", pad_id=None))
    return model, random_params(model, TGT)


def test_encoder_decoder_is_causal(encdec):
    """Changing target k changes logits only at positions > k (logits[t] predicts target t)."""
    model, params = encdec
    k = 3
    both = jax.jit(model.apply)(
        {"params": params}, jnp.concatenate([SRC, SRC]),
        jnp.concatenate([TGT, TGT.at[:, k].set(12)]),
    )
    base, changed = both[:2], both[2:]
    np.testing.assert_allclose(changed[:, : k + 1], base[:, : k + 1], atol=1e-6)
    assert np.abs(changed[:, k + 1] - base[:, k + 1]).max() > 1e-3


def test_decoder_only_is_causal(lm):
    """Changing token k changes logits only at positions >= k."""
    model, params = lm
    k = 4
    both = jax.jit(model.apply)({"params": params}, jnp.concatenate([TGT, TGT.at[:, k].set(12)]))
    base, changed = both[:2], both[2:]
    np.testing.assert_allclose(changed[:, :k], base[:, :k], atol=1e-6)
    assert np.abs(changed[:, k] - base[:, k]).max() > 1e-3


def test_source_padding_does_not_change_decoder_outputs(encdec):
    """Three checks against the unpadded computation: more trailing source padding leaves the
    logits unchanged; garbage in the encoder output at padded positions leaves them unchanged
    (cross-attention mask); changing a real source token does change them."""
    model, params = encdec
    changed_src = SRC.at[0, 1].set(9)  # a real token
    longer_src = jnp.pad(SRC, ((0, 0), (0, 3)), constant_values=PAD)
    shape = (2, SRC.shape[1], model.config.emb_dim)
    noise = np.random.default_rng(1).normal(0, 100, shape).astype(np.float32)

    @jax.jit
    def run(variables):
        encode = functools.partial(model.apply, variables, method=EncoderDecoder.encode)
        decode = functools.partial(model.apply, variables, method=EncoderDecoder.decode)
        memory, mask = encode(jnp.concatenate([SRC, changed_src]))
        encoded, changed = jnp.split(memory, 2)
        src_mask, changed_mask = jnp.split(mask, 2)
        garbage = jnp.where((SRC == PAD)[..., None], noise, encoded)
        logits = decode(
            jnp.concatenate([encoded, garbage, changed]),
            jnp.concatenate([src_mask, src_mask, changed_mask]),
            jnp.concatenate([TGT, TGT, TGT]),
        )
        longer = decode(*encode(longer_src), TGT)
        return logits[:2], longer, logits[2:4], logits[4:], src_mask

    base, longer, garbage, changed, src_mask = run({"params": params})
    np.testing.assert_array_equal(src_mask, SRC != PAD)  # the contract's memory_mask
    np.testing.assert_allclose(longer, base, atol=1e-5)
    np.testing.assert_allclose(garbage, base, atol=1e-5)
    assert np.abs(changed - base)[0].max() > 1e-3


# --------------------------------------------------------------------------------------------
# Cached decoding.
# --------------------------------------------------------------------------------------------


def _feed(fn, cache, tokens):
    """Feeds `tokens` `[batch, n]` one per call through a step callback (a lax.scan, so the
    test compiles once); returns the logits `[batch, n, vocab]`."""

    def step(cache, ids):
        logits, cache = fn(ids[:, None], cache)
        return cache, logits

    return jnp.swapaxes(jax.lax.scan(step, cache, tokens.T)[1], 0, 1)


def test_encoder_decoder_cached_logits_equal_full_forward():
    """Reference: the full teacher-forced forward pass (post-norm, sinusoidal positions whose
    decode-time offset comes from the cache); the cached decoder is fed the same
    shifted targets one token per call. Positions whose input is padding are masked as keys in
    the full pass only, so they are skipped (their loss weight is 0 anyway)."""
    model = EncoderDecoder(tiny(positions="sinusoidal", norm="post"))
    params = random_params(model, SRC, TGT)

    @jax.jit
    def run(params):
        full = model.apply({"params": params}, SRC, TGT)
        fn, cache = decoding.encoder_decoder_step_fn(model, params, SRC, max_len=TGT.shape[1])
        inputs = jnp.concatenate([jnp.full((2, 1), BOS), TGT[:, :-1]], axis=1)
        return full, _feed(fn, cache, inputs)

    full, cached = run(params)
    valid = np.array(TGT != PAD)  # input t + 1 is target t; the input at 0 is BOS
    valid = np.concatenate([np.ones((2, 1), bool), valid[:, :-1]], axis=1)
    np.testing.assert_allclose(cached[valid], full[valid], atol=1e-5)


def test_decoder_only_cached_logits_equal_full_forward(lm):
    """Reference: the full forward pass (pre-norm, learned positions gathered at the cache
    position). The prompt (3 tokens) is prefilled in one multi-token
    call, then the rest is fed one token at a time."""
    model, params = lm  # learned positions, pre-norm
    prompt_len = 3

    @jax.jit
    def run(params):
        full = model.apply({"params": params}, TGT)
        fn, cache, start = decoding.decoder_only_step_fn(
            model, params, TGT[:, :prompt_len], max_len=TGT.shape[1] - prompt_len + 1
        )
        return full, start, _feed(fn, cache, TGT[:, prompt_len - 1 :])

    full, start, cached = run(params)
    np.testing.assert_array_equal(start, TGT[:, prompt_len - 1])
    np.testing.assert_allclose(cached, full[:, prompt_len - 1 :], atol=1e-5)


# --------------------------------------------------------------------------------------------
# Dropout, dtypes.
# --------------------------------------------------------------------------------------------


def test_dropout_is_active_only_when_not_deterministic():
    """With dropout (embeddings, residuals, MLP and attention weights), two rngs give different
    logits, and deterministic=True ignores the rng and equals the dropout-free model."""
    model = DecoderOnlyLM(tiny(num_decoder_layers=1, pad_id=None))
    params = random_params(model, TGT)
    dropped = DecoderOnlyLM(model.config.replace(dropout_rate=0.3, attention_dropout_rate=0.3))

    @jax.jit
    def run(params):
        def apply(key, deterministic):
            return dropped.apply({"params": params}, TGT, deterministic=deterministic,
                                 rngs={"dropout": key})

        # rbg keys: threefry dropout masks cost several times more to compile on CPU
        keys = jax.random.split(jax.random.key(1, impl="rbg"))
        a, b = jax.vmap(lambda key: apply(key, False))(keys)
        return a, b, apply(keys[0], True), model.apply({"params": params}, TGT)

    a, b, det, plain = run(params)
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(det, plain)


def test_bfloat16_compute_gives_float32_logits_and_params(lm):
    """Reference: the float32 model with the same parameters (bf16 tolerance)."""
    model, params = lm
    half = DecoderOnlyLM(model.config.replace(dtype=jnp.bfloat16))

    @jax.jit
    def run(params):
        return half.apply({"params": params}, TGT), model.apply({"params": params}, TGT)

    logits, reference = run(params)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 7, 13)
    np.testing.assert_allclose(logits, reference, atol=0.1)
    fresh = jax.eval_shape(half.init, jax.random.key(0), TGT)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(fresh)))


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_decoder_learns_to_reverse(norm):
    """Reference: chance level. A 1+1 layer model trained 200 adam steps on reversing random
    6-token strings must bring the label-smoothed loss (KL form, 0 at the smoothed optimum)
    from chance (~2.5) to below a tenth of it. Dropout is off to keep the compile small."""
    cfg = tiny(norm=norm, num_encoder_layers=1, num_decoder_layers=1, emb_dim=32, mlp_dim=64,
               num_heads=4, num_kv_heads=None)
    model = EncoderDecoder(cfg)
    data = jnp.asarray(np.random.default_rng(0).integers(3, 13, size=(200, 32, 6)))
    tx = optax.adam(3e-3)

    def loss_fn(params, src):
        tgt = src[:, ::-1]
        logits = model.apply({"params": params}, src, tgt)
        return cross_entropy_with_label_smoothing(logits, tgt, tgt != PAD, 0.1,
                                                  subtract_entropy=True)[0]

    @jax.jit
    def train(data):
        params = model.init(jax.random.key(0), data[0], data[0])["params"]

        def step(carry, src):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, src)
            updates, opt_state = tx.update(grads, opt_state)
            return (optax.apply_updates(params, updates), opt_state), loss

        return jax.lax.scan(step, (params, tx.init(params)), data)[1]

    losses = np.asarray(train(data))
    start, end = losses[:5].mean(), losses[-10:].mean()
    assert start > 1.5, losses[:5]
    assert end < 0.1 * start, (start, end)


# --------------------------------------------------------------------------------------------
# Loss.
# --------------------------------------------------------------------------------------------


def _numpy_smoothed_ce(logits, targets, eps):
    logits = logits.astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    vocab = logits.shape[-1]
    q = np.full(logits.shape, eps / vocab)
    np.put_along_axis(q, targets[..., None], 1 - eps + eps / vocab, axis=-1)
    entropy = -(q * np.log(q)).sum(-1) if eps > 0 else np.zeros(targets.shape)
    return -(q * logp).sum(-1), entropy


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_label_smoothed_loss_matches_numpy(eps):
    """Reference: -sum_k q'_k log softmax(logits)_k in float64 NumPy with
    q' = (1 - eps) one_hot + eps / vocab, weighted mean over tokens."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(3, 5))
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    ce, entropy = _numpy_smoothed_ce(logits, targets, eps)
    loss, total = cross_entropy_with_label_smoothing(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), eps
    )
    np.testing.assert_allclose(total, weights.sum())
    np.testing.assert_allclose(loss, (ce * weights).sum() / weights.sum(), rtol=1e-5)
    kl, _ = cross_entropy_with_label_smoothing(
        jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights), eps,
        subtract_entropy=True,
    )
    np.testing.assert_allclose(kl, ((ce - entropy) * weights).sum() / weights.sum(), rtol=1e-5)


def test_label_smoothed_loss_of_perfect_prediction_is_zero_after_normalising():
    """Predicting q' exactly gives KL(q' || q') = 0 with subtract_entropy."""
    eps, vocab = 0.1, 9
    targets = jnp.array([[0, 3, 8]])
    q = jax.nn.one_hot(targets, vocab) * (1 - eps) + eps / vocab
    loss = smoothed_cross_entropy(jnp.log(q), targets, eps, subtract_entropy=True)
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="targets"):
        smoothed_cross_entropy(jnp.zeros((2, 3, 9)), targets, eps)
    with pytest.raises(ValueError, match="label_smoothing"):
        smoothed_cross_entropy(jnp.log(q), targets, 1.0)
