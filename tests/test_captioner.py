"""The attentive image captioner (`attn_jax.models.captioner`, Xu et al. 2015).

References: the teacher-forced forward pass (cached step decoding must reproduce it), Xu et
al.'s eq. 14 and sec. 3.1.2 evaluated in NumPy on the model's own attention weights and
parameters, and the no-attention baseline's definition (only the mean annotation reaches it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import decoding
from attn_jax.models import build_model

BACKBONE = dict(name="vit", num_classes=None, patch_size=4, hidden_size=16, depth=1,
                num_heads=2, mlp_dim=32, pool_type="gap")
PAD, BOS, EOS = 0, 1, 2


def captioner(**kw):
    fields = dict(vocab_size=20, embed_dim=8, hidden=16, backbone=BACKBONE, pad_id=PAD,
                  bos_id=BOS, image_shape=(16, 16, 1))
    return build_model("rnn_captioner", **{**fields, **kw})


def images(n=3, seed=0):
    return jax.random.uniform(jax.random.key(seed), (n, 16, 16, 1))


TARGETS = jnp.array([[5, 6, 7, 8, EOS], [9, EOS, PAD, PAD, PAD], [4, 4, 3, EOS, PAD]])


@pytest.mark.parametrize("attention", ["additive", "none"])  # the scores: test_recurrent
def test_cached_steps_equal_the_teacher_forced_pass(attention):
    model = captioner(attention=attention)
    x = images()
    params = model.init(jax.random.key(1), x, TARGETS)["params"]
    full = np.asarray(model.apply({"params": params}, x, TARGETS))
    fn, carry = decoding.encoder_decoder_step_fn(model, params, x, max_len=TARGETS.shape[1])
    inputs = jnp.concatenate([jnp.full((3, 1), BOS), TARGETS[:, :-1]], 1)
    stepped = []
    for t in range(TARGETS.shape[1]):
        logits, carry = fn(inputs[:, t:t + 1], carry)
        stepped.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(stepped, 1), full, atol=2e-5)


def test_initial_state_is_the_mean_annotation_through_tanh():
    """Xu et al. sec. 3.1.2: c_0, h_0 = tanh(f_init(mean_i a_i)), here one Dense split in two."""
    model = captioner()
    x = images()
    params = model.init(jax.random.key(1), x, TARGETS)["params"]
    memory, mask = model.apply({"params": params}, x, method="encode")
    assert mask.shape == memory.shape[:2] and bool(mask.all())
    carry, summary, _ = model.apply({"params": params}, memory, mask, method="_start")
    dense = params["step"]["init_0"]
    want = np.tanh(np.asarray(memory).mean(1) @ np.asarray(dense["kernel"].value)
                   + np.asarray(dense["bias"].value))
    np.testing.assert_allclose(np.asarray(summary), np.asarray(memory).mean(1), rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([np.asarray(c) for c in carry[0]], -1), want,
                               atol=1e-6)


def test_doubly_stochastic_penalty_is_eq14_of_the_attention_weights():
    """lambda sum_i (1 - sum_t alpha_ti)^2 over real target steps, averaged over the rows, in
    NumPy on the weights `attention_weights` returns; added only in training."""
    lam = 0.7
    model = captioner(doubly_stochastic=lam)
    x = images()
    params = model.init(jax.random.key(1), x, TARGETS)["params"]
    _, weights = model.attention_weights(params, x, TARGETS)
    alpha = np.asarray(weights["decoder/layer_0/cross_attention"])[:, 0]  # [b, t, positions]
    real = np.asarray(TARGETS != PAD, np.float32)
    want = lam * np.mean([((1 - (alpha[b] * real[b][:, None]).sum(0)) ** 2).sum()
                          for b in range(3)])
    _, sown = model.apply({"params": params}, x, TARGETS, deterministic=False,
                          rngs={"dropout": jax.random.key(2)}, mutable=["losses"])
    np.testing.assert_allclose(float(sown["losses"]["doubly_stochastic"][0]), want, rtol=1e-5)
    _, none = model.apply({"params": params}, x, TARGETS, mutable=["losses"])  # evaluation
    assert not none.get("losses")


def test_without_attention_only_the_mean_annotation_reaches_the_decoder():
    """Two memories with the same mean give the same logits for attention='none' (the pooled
    feature is all it sees) and different ones for the attentive decoder."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 16, 16)).astype(np.float32)
    b = a.copy()
    b[:, 0] += 1.0  # same mean: move mass from position 1 to position 0
    b[:, 1] -= 1.0
    mask = jnp.ones((3, 16), bool)
    for attention, same in (("none", True), ("additive", False)):
        model = captioner(attention=attention)
        params = model.init(jax.random.key(1), images(), TARGETS)["params"]
        la, lb = (np.asarray(model.apply({"params": params}, jnp.asarray(m), mask, TARGETS,
                                         method="decode")) for m in (a, b))
        assert np.allclose(la, lb, atol=1e-5) == same, attention


def test_bad_images_and_backbones_are_refused():
    model = captioner()
    params = model.init(jax.random.key(1), images(), TARGETS)["params"]
    with pytest.raises(ValueError, match=r"images are \(16, 16, 3\).*built for \(16, 16, 1\)"):
        model.apply({"params": params}, jnp.ones((3, 16, 16, 3)), TARGETS)
    with pytest.raises(ValueError, match="float"):
        model.apply({"params": params}, jnp.ones((3, 16, 16, 1), jnp.int32), TARGETS)
    with pytest.raises(ValueError, match="backbone"):
        captioner(backbone="vit")
    with pytest.raises(ValueError, match="model.name='nope' is unknown"):
        captioner(backbone=dict(name="nope")).init(jax.random.key(0), images(), TARGETS)


def test_cnn_backbone_gives_its_feature_grid_as_memory():
    """backbone={'name': 'cnn', ...}: the conv net's 8x8 grid (16x16 images, one stride-2 stage)
    is the memory, 64 annotation vectors; the teacher-forced logits are [batch, tgt_len, vocab]."""
    from attn_jax.models.cnn import CNN

    cnn = dict(name="cnn", widths=(8, 16), blocks_per_stage=1, num_groups=4, attention_stage=-1)
    model = captioner(backbone=cnn, memory_dim=12)
    x = images()
    params = model.init(jax.random.key(1), x, TARGETS)["params"]
    assert "head" not in params["image_encoder"] and "attention" in params["image_encoder"]
    memory, mask = model.apply({"params": params}, x, method="encode")
    grid = CNN(widths=(8, 16)).grid_shape(x.shape[1:])
    assert grid == (8, 8) and memory.shape == (3, 64, 12) and bool(mask.all())
    logits = model.apply({"params": params}, x, TARGETS)
    assert logits.shape == (3, TARGETS.shape[1], 20)
    assert np.isfinite(np.asarray(logits)).all()


# ------------------------------------------------------------- the Transformer-decoder captioner
CNN = dict(name="cnn", num_classes=None, widths=(8, 16), blocks_per_stage=1, num_groups=4)


def transformer_captioner(**kw):
    fields = dict(vocab_size=20, emb_dim=16, num_heads=2, mlp_dim=32, num_encoder_layers=1,
                  num_decoder_layers=2, max_len=8, dropout_rate=0.0, attention_dropout_rate=0.0,
                  backbone=CNN, pad_id=PAD, bos_id=BOS, image_shape=(16, 16, 1))
    return build_model("transformer_captioner", **{**fields, **kw})


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_transformer_captioner_cached_steps_equal_the_teacher_forced_pass(norm):
    """The KV-cached decoder steps (the Transformer's own decode_step_fn) reproduce the
    teacher-forced logits over the image memory (the reference)."""
    model = transformer_captioner(norm=norm)
    x = images()
    params = model.init(jax.random.key(1), x, TARGETS)["params"]
    assert set(params) == {"encoder", "decoder", "target_embedding"}
    assert {"image_encoder", "memory_projection", "layer_0"} <= set(params["encoder"])
    full = np.asarray(model.apply({"params": params}, x, TARGETS))
    assert full.shape == (3, TARGETS.shape[1], 20)
    fn, cache = decoding.encoder_decoder_step_fn(model, params, x, max_len=TARGETS.shape[1])
    inputs = jnp.concatenate([jnp.full((3, 1), BOS), TARGETS[:, :-1]], 1)
    stepped = []
    for t in range(TARGETS.shape[1]):
        logits, cache = fn(inputs[:, t:t + 1], cache)
        stepped.append(np.asarray(logits))
    # Where the decoder input holds padding, the teacher-forced pass masks those keys and the
    # cache does not (the Transformer's caveat, test_transformer): compare the real prefix.
    real = np.cumprod(np.asarray(inputs != PAD) | (np.arange(inputs.shape[1]) == 0), 1) > 0
    np.testing.assert_allclose(np.stack(stepped, 1)[real], full[real], atol=3e-5)
    assert real.sum() == 13


def test_transformer_captioner_memory_is_the_projected_grid_with_positions():
    """With no encoder layers the memory is exactly W tokens + b + the sinusoidal timing signal
    of the raster index (NumPy, t2t's formula as in test_positional), over the CNN's 8x8 grid;
    the cross-attention weights cover those 64 positions and sum to 1."""
    model = transformer_captioner(num_encoder_layers=0)
    x = images()
    params = model.init(jax.random.key(1), x, TARGETS)["params"]
    memory, mask = model.apply({"params": params}, x, method="encode")
    cnn = {k: v for k, v in CNN.items() if k != "name"}
    tokens = build_model("cnn", **cnn).apply({"params": params["encoder"]["image_encoder"]}, x,
                                      method="encode")
    proj = params["encoder"]["memory_projection"]
    n, d = 64, 16
    pos = np.arange(n)[:, None] * np.exp(-np.log(1e4) / (d // 2 - 1) * np.arange(d // 2))[None]
    want = (np.asarray(tokens) @ np.asarray(proj["kernel"].value) + np.asarray(proj["bias"].value)
            + np.concatenate([np.sin(pos), np.cos(pos)], 1))
    assert memory.shape == (3, n, d) and bool(mask.all())
    np.testing.assert_allclose(np.asarray(memory), want, atol=1e-5)
    _, weights = model.attention_weights(params, x, TARGETS)
    cross = np.asarray(weights["decoder/layer_1/cross_attention"])
    assert cross.shape == (3, 2, TARGETS.shape[1], n)
    np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)


def test_transformer_captioner_refuses_bad_images_and_backbones():
    model = transformer_captioner()
    params = model.init(jax.random.key(1), images(), TARGETS)["params"]
    with pytest.raises(ValueError, match=r"images are \(16, 16, 3\).*built for \(16, 16, 1\)"):
        model.apply({"params": params}, jnp.ones((3, 16, 16, 3)), TARGETS)
    with pytest.raises(ValueError, match="backbone"):
        transformer_captioner(backbone="cnn")
    with pytest.raises(ValueError, match="unknown Transformer fields"):
        transformer_captioner(hidden=4)
