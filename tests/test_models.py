"""Every registered model: init, output shape, logical axis names on every parameter, and its
parameter count against a closed-form count of its architecture (the reference: the layer
shapes of the papers' equations, summed by hand below). `test_every_registered_model_has_an_entry`
fails when a family is registered without an entry here.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from attn_jax.models import MODELS, build_model


def _vit_count(d, depth, mlp, patch, channels, tokens, classes):
    block = 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)
    return patch * patch * channels * d + d + d + tokens * d + depth * block + 2 * d + d * classes + classes


def _mixer_count(d, blocks, tokens_mlp, channels_mlp, patch, channels, tokens, classes):
    """Stem conv, per block two LayerNorms, the token MLP (tokens -> tokens_mlp -> tokens) and
    the channel MLP (d -> channels_mlp -> d), the pre-head LayerNorm, the head (Mixer eq. 1)."""
    block = 2 * 2 * d + (tokens * tokens_mlp + tokens_mlp + tokens_mlp * tokens + tokens) + (
        d * channels_mlp + channels_mlp + channels_mlp * d + d)
    return patch * patch * channels * d + d + blocks * block + 2 * d + d * classes + classes


def _transformer_block(d, mlp, cross):
    attn = 4 * (d * d + d)
    return (2 + cross) * 2 * d + (1 + cross) * attn + (d * mlp + mlp) + (mlp * d + d)


def _cell(kind, d, h):
    """flax's cells: tanh RNN W_i x + b + W_h h; LSTM 4 gates (x kernels, h kernels + bias);
    GRU r, z, n with input biases plus the bias of W_hn."""
    return {"rnn": d * h + h * h + h, "lstm": 4 * (d * h + h * h + h),
            "gru": 3 * (d * h + h * h + h) + h}[kind]


def _rnn_seq2seq_count(kind, vocab, e, h, enc_h, enc_layers, dirs, attn):
    d = enc_h * dirs  # memory width
    encoder = sum(dirs * _cell(kind, e if i == 0 else d, enc_h) for i in range(enc_layers))
    init = d * h * (2 if kind == "lstm" else 1) + h * (2 if kind == "lstm" else 1)
    alignment = h * attn + d * attn + attn  # additive: W, U, v
    output = (h + d + e) * h + h             # o_t = tanh(W [s; c; E y])
    return 2 * vocab * e + encoder + init + _cell(kind, e + d, h) + alignment + output + (
        h * vocab + vocab)


def _sagan_count(c, reduction=8, value_reduction=2):
    """SAGAN (Zhang et al. 2019, sec. 3): W_f, W_g [C, C/8], W_h [C, C/2], W_v [C/2, C], gamma."""
    c_k, c_v = max(1, c // reduction), max(1, c // value_reduction)
    return 2 * c * c_k + c * c_v + c_v * c + 1


def _cnn_count(channels, widths, depth, classes, attention_width=None):
    """Pre-activation ResNet: bias-free 3x3 stem; per block two norms (scale + bias), two bias-free
    3x3 convs and a 1x1 shortcut when the shape changes; final norm; linear head."""
    n, prev = 9 * channels * widths[0], widths[0]
    for s, w in enumerate(widths):
        for i in range(depth):
            n += 2 * prev + 9 * prev * w + 2 * w + 9 * w * w
            n += prev * w if (prev != w or (s > 0 and i == 0)) else 0
            prev = w
    n += _sagan_count(attention_width) if attention_width else 0
    return n + 2 * prev + prev * classes + classes


def _detr_count(d, mlp, enc, dec, queries, classes, backbone, backbone_width, norm="post"):
    """DETR (Carion et al. 2020): backbone, 1x1 input projection, Transformer layers (the decoder's
    with cross-attention), N query embeddings, the shared final decoder LayerNorm (and the
    encoder's with pre-norm), the class head (classes + no-object) and the 3-layer box MLP."""
    return (backbone + backbone_width * d + d + queries * d
            + enc * _transformer_block(d, mlp, 0) + dec * _transformer_block(d, mlp, 1)
            + 2 * d * (2 if norm == "pre" else 1)
            + d * (classes + 1) + classes + 1 + 2 * (d * d + d) + d * 4 + 4)


# name -> (kwargs, inputs (a function of the model), output shape, parameter count or None)
ENTRIES = {
    "vit": (dict(num_classes=10, patch_size=4, hidden_size=32, depth=2, num_heads=4, mlp_dim=64),
            lambda: (jnp.zeros((2, 16, 16, 3)),), (2, 10),
            _vit_count(32, 2, 64, 4, 3, 1 + 16, 10)),
    "mixer": (dict(num_classes=10, patch_size=4, hidden_dim=32, num_blocks=2, tokens_mlp_dim=24,
                   channels_mlp_dim=64),
              lambda: (jnp.zeros((2, 16, 12, 3)),), (2, 10),
              _mixer_count(32, 2, 24, 64, 4, 3, 4 * 3, 10)),
    "cnn": (dict(num_classes=10, widths=(8, 16), blocks_per_stage=2, num_groups=4,
                 attention_stage=1),
            lambda: (jnp.zeros((2, 16, 16, 3)),), (2, 10),
            _cnn_count(3, (8, 16), 2, 10, attention_width=16)),
    "unet": (dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=8,
                  out_channels=3),
             lambda: (jnp.zeros((2, 8, 8, 3)), jnp.zeros((2,), jnp.int32)), (2, 8, 8, 3), None),
    "transformer": (dict(vocab_size=50, emb_dim=32, num_heads=4, mlp_dim=64, num_encoder_layers=2,
                         num_decoder_layers=1, max_len=16),
                    lambda: (jnp.ones((2, 12), jnp.int32), jnp.ones((2, 7), jnp.int32)),
                    (2, 7, 50),
                    # shared tied embedding, sinusoidal positions, post-norm (no final norm)
                    50 * 32 + 2 * _transformer_block(32, 64, 0) + _transformer_block(32, 64, 1)),
    "decoder_lm": (dict(preset="gpt2_small", vocab_size=50, emb_dim=32, num_heads=4, mlp_dim=64,
                        num_decoder_layers=2, max_len=16),
                   lambda: (jnp.ones((2, 9), jnp.int32),), (2, 9, 50),
                   # tied embedding + learned positions + blocks + final LayerNorm
                   50 * 32 + 16 * 32 + 2 * _transformer_block(32, 64, 0) + 2 * 32),
    "rnn_seq2seq": (dict(vocab_size=50, cell="lstm", attention="additive", embed_dim=8,
                         hidden=16, encoder_layers=2, attention_dim=12),
                    lambda: (jnp.ones((2, 12), jnp.int32), jnp.ones((2, 7), jnp.int32)),
                    (2, 7, 50),
                    # separate embeddings, a 2-layer bidirectional encoder of 8 per direction
                    _rnn_seq2seq_count("lstm", 50, 8, 16, 8, 2, 2, 12)),
    "rnn_captioner": (dict(vocab_size=30, embed_dim=8, hidden=16, attention_dim=12,
                           backbone=dict(name="vit", num_classes=None, patch_size=4,
                                         hidden_size=32, depth=1, num_heads=4, mlp_dim=64,
                                         pool_type="gap")),
                      lambda: (jnp.zeros((2, 16, 16, 3)), jnp.ones((2, 7), jnp.int32)),
                      (2, 7, 30),
                      # ViT tokens (no class token, no head) -> memory projection 32 -> 16 ->
                      # the attentive LSTM decoder of rnn_seq2seq (no source side)
                      _vit_count(32, 1, 64, 4, 3, 16, 0) - 32 + (32 * 16 + 16)
                      + _rnn_seq2seq_count("lstm", 30, 8, 16, 16, 0, 1, 12) - 30 * 8),
    "transformer_captioner": (
        dict(vocab_size=30, emb_dim=16, num_heads=2, mlp_dim=32, num_encoder_layers=1,
             num_decoder_layers=1, max_len=8,
             backbone=dict(name="vit", num_classes=None, patch_size=4, hidden_size=32, depth=1,
                           num_heads=4, mlp_dim=64, pool_type="gap")),
        lambda: (jnp.zeros((2, 16, 16, 3)), jnp.ones((2, 7), jnp.int32)), (2, 7, 30),
        # the same ViT tokens -> memory projection 32 -> 16, one encoder layer over them, the
        # tied target embedding, one post-norm decoder layer with cross-attention
        _vit_count(32, 1, 64, 4, 3, 16, 0) - 32 + (32 * 16 + 16) + _transformer_block(16, 32, 0)
        + 30 * 16 + _transformer_block(16, 32, 1)),
    "detr": (dict(num_classes=3, d_model=16, num_heads=2, num_encoder_layers=1,
                  num_decoder_layers=2, mlp_dim=32, num_queries=5, norm="pre",
                  backbone=dict(name="cnn", widths=(8, 16), blocks_per_stage=1, num_groups=4)),
             lambda: (jnp.zeros((2, 16, 16, 3)),),
             {"logits": (2, 5, 4), "boxes": (2, 5, 4),
              "aux": [{"logits": (2, 5, 4), "boxes": (2, 5, 4)}]},
             # the CNN without its classifier head (a 16-channel 8x8 grid)
             _detr_count(16, 32, 1, 2, 5, 3, _cnn_count(3, (8, 16), 1, 0), 16, norm="pre")),
    "lstm_lm": (dict(vocab_size=50, emb_dim=16, hidden_dim=24, num_layers=2),
                lambda: (jnp.ones((2, 9), jnp.int32),), (2, 9, 50),
                # embedding + per layer 4 gates x (input kernel + recurrent kernel + bias) + head
                50 * 16 + _cell("lstm", 16, 24) + _cell("lstm", 24, 24) + 24 * 50 + 50),
}


def test_every_registered_model_has_an_entry():
    assert sorted(ENTRIES) == sorted(MODELS), (
        "a model was registered in attn_jax.models.MODELS without an entry in tests/"
        "test_models.py (init, output shape, axis names, parameter count)")


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_registered_model(name):
    kwargs, inputs, shape, count = ENTRIES[name]
    model = build_model(name, **kwargs)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *inputs())
    out = jax.eval_shape(model.apply, variables, *inputs())
    assert jax.tree.map(lambda x: x.shape, out) == shape  # a shape, or a tree of them (DETR)
    leaves = jax.tree_util.tree_leaves_with_path(
        variables["params"], is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), f"{name}{where} has no axis names"
        assert len(leaf.names) == len(leaf.value.shape), f"{name}{where}: {leaf.names}"
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(variables["params"])))
    if count is not None:
        assert n == count
