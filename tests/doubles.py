"""A test double of the encoder-decoder contract (`attn_jax.models.protocols`), built from real
modules, that the sequence task, the decode evaluator and `attn_jax.decoding` must serve with no
change to any of them (the recurrent seq2seq, whose cache is a carry, is the real registered
'rnn_seq2seq' model):

  ViTCaptioner     ViT tokens (`ViT.encode`) as the memory of the Transformer's decoder: a
                   captioning-shaped model over an image source.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.models.transformer import Decoder, TransformerConfig, _embedding, shift_right
from attn_jax.models.vit import ViT


class ViTCaptioner(nn.Module):
    """`ViT.encode` tokens -> the Transformer's `Decoder` (cross-attention over them)."""

    vocab_size: int
    pad_id: int = 0
    bos_id: int = 1
    max_len: int = 16
    dtype: Any = jnp.float32

    @property
    def config(self) -> TransformerConfig:
        return TransformerConfig(vocab_size=self.vocab_size, emb_dim=32, num_heads=4, mlp_dim=64,
                                 num_encoder_layers=0, num_decoder_layers=1, max_len=self.max_len,
                                 dropout_rate=0.0, attention_dropout_rate=0.0, pad_id=self.pad_id,
                                 bos_id=self.bos_id)

    def setup(self):
        self.vit = ViT(num_classes=None, patch_size=2, hidden_size=32, depth=1, num_heads=4,
                       mlp_dim=64, pool_type="gap", posemb="sincos2d")
        cfg = self.config
        self.decoder = Decoder(cfg, _embedding(cfg, cfg.vocab_size, "embedding"))

    def encode(self, images, *, deterministic: bool = True):
        tokens = self.vit.encode(images)
        return tokens, jnp.ones(tokens.shape[:2], bool)

    def decode(self, memory, memory_mask, targets, *, deterministic: bool = True):
        cross = memory_mask[:, None, None, :]
        inputs = targets if self.config.decode else shift_right(targets, self.bos_id)
        self_mask = None
        if not self.config.decode:
            self_mask = shift_right(targets != self.pad_id, True)[:, None, None, :]
        return self.decoder(inputs, memory, cross, self_mask, deterministic=deterministic)

    def __call__(self, images, targets, *, deterministic: bool = True):
        return self.decode(*self.encode(images), targets)

    @nn.nowrap
    def decode_step_fn(self, params, memory, memory_mask, *, max_len: int):
        # The Transformer decoder's KV cache: the decoder in decode mode, cache built by a
        # full-length call (as EncoderDecoder.decode_step_fn does).
        decoder = _DecodeMode(dataclasses.replace(self.config, decode=True))
        targets = jnp.zeros((memory.shape[0], max_len), jnp.int32)
        shapes = jax.eval_shape(lambda: decoder.apply(
            {"params": params}, memory, memory_mask, targets, mutable=["cache"]))[1]["cache"]
        cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def tokens_to_logits(ids, cache):
            logits, new = decoder.apply({"params": params, "cache": cache}, memory, memory_mask,
                                        ids, mutable=["cache"])
            return logits[:, -1], new["cache"]

        return tokens_to_logits, cache


class _DecodeMode(nn.Module):
    """The captioner's decoder with `decode=True` under the same parameter names."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.decoder = Decoder(cfg, _embedding(cfg, cfg.vocab_size, "embedding"))

    def __call__(self, memory, memory_mask, ids):
        return self.decoder(ids, memory, memory_mask[:, None, None, :], None)
