"""Test doubles of the encoder-decoder contract (`attn_jax.models.protocols`), built from real
modules, that the sequence task, the decode evaluator and `attn_jax.decoding` must serve with no
change to any of them:

  GruSeq2Seq       a recurrent encoder-decoder (Cho et al. 2014's fixed context vector): the
                   decode cache is the GRU's carry, not a KV cache;
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


class GruSeq2Seq(nn.Module):
    """Embedding + GRU encoder; the masked mean of its outputs is the context vector, which
    starts the decoder GRU's carry and is fed with every input token."""

    vocab_size: int
    pad_id: int = 0
    bos_id: int = 1
    hidden: int = 32
    dtype: Any = jnp.float32

    def setup(self):
        self.embed = nn.Embed(self.vocab_size, self.hidden)
        self.encoder = nn.RNN(nn.GRUCell(self.hidden))
        self.init_carry = nn.Dense(self.hidden)
        self.cell = nn.GRUCell(self.hidden)
        self.out = nn.Dense(self.vocab_size)

    def encode(self, source, *, deterministic: bool = True):
        mask = source != self.pad_id
        memory = self.encoder(self.embed(source), seq_lengths=mask.sum(-1))
        return memory * mask[..., None], mask

    def _context(self, memory, memory_mask):
        weights = memory_mask.astype(memory.dtype)[..., None]
        return (memory * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)

    def _step(self, carry, ids, context):
        carry, y = self.cell(carry, jnp.concatenate([self.embed(ids), context], -1))
        return carry, self.out(y)

    def decode(self, memory, memory_mask, targets, *, deterministic: bool = True):
        context = self._context(memory, memory_mask)
        carry = jnp.tanh(self.init_carry(context))
        inputs = shift_right(targets, self.bos_id)
        logits = []
        for t in range(targets.shape[1]):  # short sequences: a Python loop is fine here
            carry, out = self._step(carry, inputs[:, t], context)
            logits.append(out)
        return jnp.stack(logits, 1).astype(jnp.float32)

    def __call__(self, source, targets, *, deterministic: bool = True):
        return self.decode(*self.encode(source), targets)

    def _start(self, memory, memory_mask):
        context = self._context(memory, memory_mask)
        return jnp.tanh(self.init_carry(context)), context

    def _apply_step(self, carry, ids, context):
        return self._step(carry, ids, context)

    @nn.nowrap
    def decode_step_fn(self, params, memory, memory_mask, *, max_len: int):
        del max_len  # the carry does not grow
        carry, context = self.apply({"params": params}, memory, memory_mask,
                                    method=GruSeq2Seq._start)

        def tokens_to_logits(ids, carry):
            carry, logits = self.apply({"params": params}, carry, ids[:, 0], context,
                                       method=GruSeq2Seq._apply_step)
            return logits.astype(jnp.float32), carry

        return tokens_to_logits, carry


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
