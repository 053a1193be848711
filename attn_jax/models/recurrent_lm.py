"""A stateful multi-layer LSTM language model (Zaremba et al. 2014, "Recurrent Neural Network
Regularization": dropout on the non-recurrent connections only).

    build_model("lstm_lm", vocab_size=259, emb_dim=256, hidden_dim=256, num_layers=2)

It implements the decoder-only contract of `attn_jax.models.protocols` (`__call__(ids) ->
logits`, `prompt_step_fn` whose cache is the LSTM carry, so `attn_jax.decoding` samples from it
unchanged) and the recurrent one (`initial_carry`, `apply_with_carry`) that truncated BPTT and a
stateful LM task use (`attn_jax.tasks.tbptt`, `attn_jax.tasks.lm`).

The carry is a tuple over layers of `(c, h)`, each float32 `[batch, hidden_dim]` (flax's order,
not torch's `(h, c)`): every leaf leads with the batch rows, as `attn_jax.decoding` and the
trainer's sharding of a carried state need. `reset [batch, time]` (True where a document starts)
zeroes a row's carry just before that position's input, inside the time scan.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.models.recurrent import make_cell

Array = jax.Array
Carry = tuple[tuple[Array, Array], ...]


def lstm_cell(features: int, *, dtype: Any, param_dtype: Any) -> nn.RNNCellBase:
    """flax's fused LSTM (gates i, f, g, o) as `attn_jax.models.recurrent.make_cell` builds it for
    every recurrent model: kernels ['embed', 'rnn_hidden'], biases ['rnn_hidden']."""
    return make_cell("lstm", features, dtype=dtype, param_dtype=param_dtype)


def _reset_step(cell: nn.RNNCellBase, carry: tuple[Array, Array],
                inputs: tuple[Array, Array]) -> tuple[tuple[Array, Array], Array]:
    """One time step: zero the rows whose document starts here, then the cell. The carry stays
    float32 whatever the compute dtype (the scan needs one carry type)."""
    x, reset = inputs
    carry = jax.tree.map(lambda s: jnp.where(reset[:, None], jnp.zeros_like(s), s), carry)
    carry, y = cell(carry, x)
    return jax.tree.map(lambda s: s.astype(jnp.float32), carry), y


_scan_time = nn.scan(_reset_step, variable_broadcast="params", split_rngs={"params": False},
                     in_axes=1, out_axes=1)


class LSTMLanguageModel(nn.Module):
    """ids `[batch, time]` -> logits `[batch, time, vocab]`: embedding, `num_layers` LSTMs,
    a Dense head (or the embedding's transpose with `tie_embeddings`, which needs hidden_dim ==
    emb_dim). Dropout on the embedding, between layers and before the head."""

    vocab_size: int
    emb_dim: int = 256
    hidden_dim: int = 256
    num_layers: int = 2
    dropout_rate: float = 0.0
    tie_embeddings: bool = False
    padding_id: int = 0     # written after EOS in samples (the `pad_id` of the contract)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        if self.num_layers < 1:
            raise ValueError(f"num_layers={self.num_layers} must be >= 1")
        if self.tie_embeddings and self.hidden_dim != self.emb_dim:
            raise ValueError(f"tie_embeddings needs hidden_dim == emb_dim, got hidden_dim="
                             f"{self.hidden_dim}, emb_dim={self.emb_dim}")
        self.embedding = nn.Embed(
            self.vocab_size, self.emb_dim, dtype=self.dtype, param_dtype=self.param_dtype,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=self.emb_dim**-0.5), ("vocab", "embed")))
        self.lstm = [lstm_cell(self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype)
                     for _ in range(self.num_layers)]
        self.dropout = nn.Dropout(self.dropout_rate)
        if not self.tie_embeddings:
            self.head = nn.Dense(
                self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(),
                                                         ("embed", "vocab")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)))

    @property
    def pad_id(self) -> int:
        return self.padding_id

    @nn.nowrap
    def initial_carry(self, batch: int) -> Carry:
        """Zeros: `num_layers` x (c, h), each float32 `[batch, hidden_dim]`."""
        zeros = jnp.zeros((batch, self.hidden_dim), jnp.float32)
        return tuple((zeros, zeros) for _ in range(self.num_layers))

    def embed(self, ids: Array) -> Array:
        """ids `[batch, time]` int -> embeddings `[batch, time, emb_dim]`."""
        return self.embedding(ids.astype(jnp.int32))

    def run(self, x: Array, carry: Carry, reset: Array | None = None, *,
            deterministic: bool = True) -> tuple[Array, Carry]:
        """Embeddings `[batch, time, emb_dim]` from `carry` -> (logits float32 `[batch, time,
        vocab]`, the carry after the last step). `reset [batch, time]` bool, None = never."""
        if reset is None:
            reset = jnp.zeros(x.shape[:2], bool)
        x = self.dropout(x, deterministic=deterministic)
        new_carry = []
        for cell, layer_carry in zip(self.lstm, carry):
            layer_carry, x = _scan_time(cell, layer_carry, (x, reset))
            new_carry.append(layer_carry)
            x = self.dropout(x, deterministic=deterministic)
        logits = self.embedding.attend(x) if self.tie_embeddings else self.head(x)
        return logits.astype(jnp.float32), tuple(new_carry)

    def apply_with_carry(self, ids: Array, carry: Carry, reset: Array | None = None, *,
                         deterministic: bool = True) -> tuple[Array, Carry]:
        """ids `[batch, time]` continuing `carry` -> (logits `[batch, time, vocab]`, carry)."""
        return self.run(self.embed(ids), carry, reset, deterministic=deterministic)

    def __call__(self, ids: Array, *, deterministic: bool = True) -> Array:
        """ids `[batch, time]` from the zero carry -> logits `[batch, time, vocab]` (causal:
        `logits[:, t]` predicts `ids[:, t + 1]`)."""
        return self.apply_with_carry(ids, self.initial_carry(ids.shape[0]),
                                     deterministic=deterministic)[0]

    @nn.nowrap
    def prompt_step_fn(self, params: Any, prompt: Array, *, max_len: int
                       ) -> tuple[Callable[[Array, Any], tuple[Array, Any]], Carry, Array]:
        """The decoder-only step builder: runs the prompt's first P - 1 tokens from the zero
        carry and returns `(tokens_to_logits, carry, start_tokens [batch])`; the carry is the
        cache, so any `max_len` fits."""
        del max_len  # a recurrent state has no length limit
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be [batch, P >= 1], got shape {prompt.shape}")

        def tokens_to_logits(ids: Array, carry: Carry) -> tuple[Array, Carry]:
            logits, carry = self.apply({"params": params}, ids, carry,
                                       method=LSTMLanguageModel.apply_with_carry)
            return logits[:, -1], carry

        carry = self.initial_carry(prompt.shape[0])
        if prompt.shape[1] > 1:
            _, carry = tokens_to_logits(prompt[:, :-1].astype(jnp.int32), carry)
        return tokens_to_logits, carry, prompt[:, -1]


FIELDS = tuple(f.name for f in dataclasses.fields(LSTMLanguageModel)
               if f.name not in ("parent", "name"))


def lstm_lm(*, pad_id: int | None = None, **fields: Any) -> LSTMLanguageModel:
    """An `LSTMLanguageModel` (registered as model name 'lstm_lm').

    `pad_id` comes from the LM task (None: 0); an LSTM reads left to right, so padding that
    trails the real tokens never reaches them and pad_id only fills samples after EOS. dtype /
    param_dtype may be strings ('bfloat16'). Unknown fields raise ValueError naming the valid
    ones."""
    allowed = sorted(set(FIELDS) - {"padding_id"}) + ["pad_id"]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ValueError(f"unknown lstm_lm fields {unknown}; the fields are {sorted(allowed)}")
    for key in ("dtype", "param_dtype"):
        if key in fields:
            fields[key] = jnp.dtype(fields[key])
    return LSTMLanguageModel(padding_id=0 if pad_id is None else int(pad_id), **fields)
