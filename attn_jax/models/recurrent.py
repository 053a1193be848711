r"""Recurrent models: a multi-layer, optionally bidirectional encoder on flax's cells, and the
RNN encoder-decoder with and without attention that the Transformer grew out of.

  * `RecurrentEncoder`: `[batch, time, features]` + lengths -> outputs `[batch, time, h or 2h]`
    (zero at padded steps) and each layer's final states, on `nn.RNN` / `nn.Bidirectional` over
    `nn.SimpleCell` (tanh RNN), `nn.OptimizedLSTMCell` or `nn.GRUCell`.
  * `RNNSeq2Seq`: the encoder-decoder contract of `attn_jax.models.protocols`, registered as
    'rnn_seq2seq'. `attention='none'` is the fixed-context model of Cho et al. (2014,
    arXiv:1406.1078, sec. 2.2) and Sutskever et al. (2014): the decoder sees one context vector,
    the encoder's final state. `'additive'` is Bahdanau et al. (2015, arXiv:1409.0473, eq. 5-6 and
    app. A.1.2): e_tj = v^T tanh(W s_{t-1} + U h_j); `'dot'` (e_tj = s_{t-1}^T h_j) and
    `'general'` (e_tj = s_{t-1}^T W h_j) are Luong et al.'s (2015, arXiv:1508.04025, eq. 8) scores.

The decoder step (Bahdanau's order, so the cache is the recurrent carry alone):

    a_t = masked_softmax(score(s_{t-1}, h_{1..S}))      c_t = sum_j a_tj h_j   (or c fixed)
    s_t = cell([E y_{t-1}; c_t], s_{t-1})                o_t = tanh(W_o [s_t; c_t; E y_{t-1}])
    logits_t = W_y dropout(o_t)

with s_{t-1} the top decoder layer's hidden state, and s_0 = tanh(W_init c) per layer (Bahdanau's
s_0 = tanh(W_s h<-_1), Cho's h'_0 = tanh(V' c); an LSTM gets its (c_0, h_0) as the two halves)
where c is the encoder's final state read off its outputs: [h->_{len}; h<-_1] of the top layer (an
LSTM encoder's cell memory is not part of the memory the contract passes on). The teacher-forced
pass runs this step under `nn.scan`, and `decode_step_fn` calls the same step once per token, so
the two agree.

Lengths: sources are right-padded with `pad_id`; a row's length is its count of non-pad tokens.
Padded steps neither change a state nor reach an output. `RecurrentEncoder` refuses lengths
above the sequence length, and zero lengths, with a ValueError whenever they are concrete (an
eager call; under `jit` values cannot be seen). `RNNSeq2Seq` does accept all-pad source rows,
because the shared batcher fills the last evaluation batch with them (mask 0): such a row is
defined as every final state the zero initial carry, every output zero, attention weights all
zero (context vector 0), never NaN; its logits are computed and ignored by the task's masks.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.models.transformer import shift_right

Array = jax.Array
Carry = Any

CELLS = ("rnn", "lstm", "gru")
ATTENTIONS = ("none", "additive", "dot", "general")

# Logical axis names: a kernel [in, out] reads a representation ('embed', FSDP-sharded like the
# Transformer's d_model) and writes gates/state ('rnn_hidden', see attn_jax.train.sharding).
_IN, _HIDDEN = "embed", "rnn_hidden"


def _init(init: nn.initializers.Initializer, names: tuple[str | None, ...]):
    return nn.with_logical_partitioning(init, names)


def make_cell(kind: str, features: int, dtype: Any = jnp.float32,
              param_dtype: Any = jnp.float32, **kw: Any) -> nn.RNNCellBase:
    """flax's cell for `kind` ('rnn': tanh `SimpleCell`, 'lstm': `OptimizedLSTMCell`, 'gru':
    `GRUCell`) with logical axis names on its kernels [in, features] and biases [features].
    Default initialisers as flax's: lecun-normal inputs, orthogonal recurrence, zero biases."""
    if kind not in CELLS:
        raise ValueError(f"cell={kind!r} is unknown; choose one of {CELLS}")
    cls = {"rnn": nn.SimpleCell, "lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}[kind]
    return cls(features=features, dtype=dtype, param_dtype=param_dtype, **kw,
               kernel_init=_init(nn.initializers.lecun_normal(), (_IN, _HIDDEN)),
               recurrent_kernel_init=_init(nn.initializers.orthogonal(), (_IN, _HIDDEN)),
               bias_init=_init(nn.initializers.zeros_init(), (_HIDDEN,)))


def _concrete(x: Any) -> np.ndarray | None:
    """`x` as NumPy when its values are known now (not a tracer), else None."""
    if isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


def check_lengths(lengths: Array, batch: int, time: int, allow_empty: bool = False) -> None:
    """ValueError for lengths that are not `[batch]` ints in [1, time] ([0, time] with
    `allow_empty`); values are checked only when concrete (under jit they are unknown)."""
    if jnp.shape(lengths) != (batch,) or not jnp.issubdtype(jnp.result_type(lengths),
                                                            jnp.integer):
        raise ValueError(f"lengths must be int [batch={batch}], got shape {jnp.shape(lengths)} "
                         f"{jnp.result_type(lengths)}")
    values = _concrete(lengths)
    if values is None:
        return
    if (values > time).any():
        raise ValueError(f"lengths {values.tolist()} exceed the sequence length {time}")
    if (values < 0).any() or (not allow_empty and (values < 1).any()):
        raise ValueError(f"lengths {values.tolist()} include {int(values.min())}: every sequence "
                         "needs at least one step (an empty source has no final state to "
                         "encode; give it an eos token)")


def _where_valid(valid: Array, tree: Any) -> Any:
    """Leaves `[batch, ...]` where `valid` `[batch]`, else zero."""
    return jax.tree.map(lambda x: jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0),
                        tree)


class RecurrentEncoder(nn.Module):
    """A stack of `num_layers` recurrent layers (`layer_{i}`), each forward-only or
    bidirectional (`nn.Bidirectional`: the backward RNN runs over each row's valid prefix
    reversed, its outputs flipped back into place), dropout between layers.

    Attributes:
      cell: 'rnn', 'lstm' or 'gru'. hidden: state width per direction.
      allow_empty: accept zero lengths (such a row's states stay zero, its outputs zero).
    """

    cell: str = "lstm"
    hidden: int = 256
    num_layers: int = 1
    bidirectional: bool = True
    dropout_rate: float = 0.0
    allow_empty: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell={self.cell!r} is unknown; choose one of {CELLS}")
        if self.num_layers < 1 or self.hidden < 1:
            raise ValueError(f"num_layers={self.num_layers} and hidden={self.hidden} must be >= 1")
        super().__post_init__()

    @property
    def features(self) -> int:
        """Width of the outputs: hidden, or 2 * hidden when bidirectional."""
        return self.hidden * (2 if self.bidirectional else 1)

    @nn.compact
    def __call__(self, inputs: Array, lengths: Array, *, deterministic: bool = True
                 ) -> tuple[Array, tuple[Any, ...]]:
        """inputs `[batch, time, d]`, lengths `[batch]` int in [1, time] ([0, time] with
        `allow_empty`) -> (outputs `[batch, time, features]`, zero at t >= length; final
        states, one per layer: the cell's carry (LSTM: `(c, h)`), or `(forward, backward)`
        carries when bidirectional)."""
        if inputs.ndim != 3:
            raise ValueError(f"inputs must be [batch, time, features], got shape {inputs.shape}")
        batch, time = inputs.shape[:2]
        check_lengths(lengths, batch, time, self.allow_empty)
        valid = jnp.arange(time)[None, :] < lengths[:, None]  # [batch, time]

        def rnn(**kw):
            # parent=None: built here, adopted (and named) by the layer that holds them.
            return nn.RNN(make_cell(self.cell, self.hidden, self.dtype, self.param_dtype,
                                    parent=None), **kw)

        x, finals = inputs, []
        for i in range(self.num_layers):
            if i:
                x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
            if self.bidirectional:
                layer = nn.Bidirectional(rnn(parent=None), rnn(parent=None), return_carry=True,
                                         name=f"layer_{i}")
            else:
                layer = rnn(return_carry=True, name=f"layer_{i}")
            carry, x = layer(x, seq_lengths=lengths)
            # nn.RNN leaves garbage at padded steps, and a zero length selects carry[-1].
            x = jnp.where(valid[..., None], x, 0)
            finals.append(_where_valid(lengths > 0, carry))
        return x, tuple(finals)


def final_state(outputs: Array, lengths: Array, bidirectional: bool) -> Array:
    """The top layer's final hidden state read off its outputs `[batch, time, features]`:
    forward half at t = length - 1 (and the backward half at t = 0) -> `[batch, features]`."""
    last = jnp.clip(lengths - 1, 0, outputs.shape[1] - 1)
    at_end = jnp.take_along_axis(outputs, last[:, None, None], axis=1)[:, 0]
    if not bidirectional:
        return at_end
    half = outputs.shape[-1] // 2
    return jnp.concatenate([at_end[:, :half], outputs[:, 0, half:]], -1)


def masked_softmax(scores: Array, mask: Array) -> Array:
    """softmax over the last axis restricted to `mask`; all-masked rows give zeros."""
    scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(scores, axis=-1) * mask


class Alignment(nn.Module):
    """The alignment model: scores of a query against every encoder state, as weights and a
    context vector. `keys(memory)` is the query-independent part, computed once per source
    (Bahdanau's U h_j; the memory itself for dot and general).

    Parameters: additive `query` W [q, a], `key` U [d, a], `v` [a, 1] (no biases: the paper's
    a(s, h) = v^T tanh(W s + U h)); general `query` W [q, d] (s^T W h); dot none."""

    kind: str = "additive"
    attention_dim: int = 256
    memory_features: int = 256
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        def dense(features, names):
            return nn.Dense(features, use_bias=False, dtype=self.dtype,
                            param_dtype=self.param_dtype,
                            kernel_init=_init(nn.initializers.lecun_normal(), names))

        if self.kind == "additive":
            self.query = dense(self.attention_dim, (_IN, "mlp"))
            self.key = dense(self.attention_dim, (_IN, "mlp"))
            self.v = self.param("v", _init(nn.initializers.lecun_normal(), ("mlp", None)),
                                (self.attention_dim, 1), self.param_dtype)
        elif self.kind == "general":
            self.query = dense(self.memory_features, (_IN, _IN))

    def keys(self, memory: Array) -> Array:
        """memory `[batch, src, d]` -> keys `[batch, src, attention_dim or d]`."""
        return self.key(memory) if self.kind == "additive" else memory

    def __call__(self, query: Array, keys: Array, memory: Array, mask: Array
                 ) -> tuple[Array, Array]:
        """query `[batch, q]`, keys, memory `[batch, src, d]`, mask `[batch, src]` ->
        (context `[batch, d]`, weights `[batch, src]`)."""
        if self.kind == "additive":  # v^T tanh(W s + U h)
            hidden = jnp.tanh(self.query(query)[:, None, :] + keys)
            scores = (hidden @ jnp.asarray(self.v, hidden.dtype))[..., 0]
        else:  # dot: s^T h; general: (s^T W) h
            if self.kind == "general":
                query = self.query(query)
            scores = jnp.einsum("bd,bsd->bs", query, keys)
        weights = masked_softmax(scores, mask)
        context = jnp.einsum("bs,bsd->bd", weights.astype(memory.dtype), memory)
        return context, weights


class DecoderStep(nn.Module):
    """One decoder step of `RNNSeq2Seq` (the module docstring's equations): what `nn.scan` runs
    over the target in the teacher-forced pass and `decode_step_fn` runs once per token."""

    cell: str
    hidden: int
    num_layers: int
    attention: str
    attention_dim: int
    memory_features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.cells = [make_cell(self.cell, self.hidden, self.dtype, self.param_dtype,
                                name=f"layer_{i}") for i in range(self.num_layers)]
        self.init_state = [nn.Dense(
            self.hidden * (2 if self.cell == "lstm" else 1), dtype=self.dtype,
            param_dtype=self.param_dtype, name=f"init_{i}",
            kernel_init=_init(nn.initializers.lecun_normal(), (_IN, _HIDDEN)),
            bias_init=_init(nn.initializers.zeros_init(), (_HIDDEN,)))
            for i in range(self.num_layers)]
        if self.attention != "none":
            self.alignment = Alignment(self.attention, self.attention_dim,
                                       self.memory_features, self.dtype, self.param_dtype)
        self.output = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                               kernel_init=_init(nn.initializers.lecun_normal(), (_IN, "mlp")),
                               bias_init=_init(nn.initializers.zeros_init(), ("mlp",)))

    def start(self, memory: Array, summary: Array) -> tuple[Carry, Array, Array]:
        """(initial carry, the summary c `[batch, d]` it was built from, keys) of a source: c is
        the encoder's final state (`RNNSeq2Seq`) or the mean annotation (a captioner)."""
        carry = []
        for dense in self.init_state:
            s0 = jnp.tanh(dense(summary))
            carry.append(tuple(jnp.split(s0, 2, -1)) if self.cell == "lstm" else s0)
        keys = self.alignment.keys(memory) if self.attention != "none" else memory
        return tuple(carry), summary, keys

    def __call__(self, carry: Carry, embedded: Array, memory: Array, keys: Array,
                 memory_mask: Array, summary: Array) -> tuple[Carry, tuple[Array, Array]]:
        """carry, embedded previous token `[batch, e]` -> (carry, (o_t `[batch, hidden]`,
        attention weights `[batch, src]`; for 'none' all zero))."""
        if self.attention == "none":
            context = summary
            weights = jnp.zeros(memory_mask.shape, jnp.float32)
        else:
            top = carry[-1][1] if self.cell == "lstm" else carry[-1]
            context, weights = self.alignment(top, keys, memory, memory_mask)
        x, new = jnp.concatenate([embedded, context.astype(embedded.dtype)], -1), []
        for cell, state in zip(self.cells, carry):
            state, x = cell(state, x)
            new.append(state)
        out = jnp.tanh(self.output(jnp.concatenate([x, context, embedded], -1)))
        return tuple(new), (out, weights)


class RNNSeq2Seq(nn.Module):
    """The recurrent encoder-decoder (see the module docstring), contract
    `attn_jax.models.protocols.EncoderDecoderModel`.

    Attributes:
      vocab_size: tokens of source and target (one tokenizer; separate embedding tables).
      cell: 'rnn' | 'lstm' | 'gru' (encoder and decoder).
      attention: 'none' | 'additive' | 'dot' | 'general'.
      embed_dim: token embedding width.
      hidden: decoder state width (and the attentional output o_t's).
      encoder_hidden: encoder state width per direction; default hidden // directions, so the
        memory is `hidden` wide ('dot' needs memory width == hidden).
      encoder_layers, decoder_layers: stacked cells; bidirectional: the encoder's (a decoder
        generates left to right: decoder_bidirectional=True is refused).
      attention_dim: width of the additive score's tanh layer (default hidden).
      dropout_rate: on embeddings, between encoder layers and on o_t.
    """

    vocab_size: int
    pad_id: int = 0
    bos_id: int = 1
    cell: str = "lstm"
    attention: str = "additive"
    embed_dim: int = 64
    hidden: int = 256
    encoder_hidden: int | None = None
    encoder_layers: int = 1
    decoder_layers: int = 1
    bidirectional: bool = True
    decoder_bidirectional: bool = False
    attention_dim: int | None = None
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"cell={self.cell!r} is unknown; choose one of {CELLS}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention={self.attention!r} is unknown; choose one of "
                             f"{ATTENTIONS}")
        if self.decoder_bidirectional:
            raise ValueError("decoder_bidirectional=True: a decoder generates one token after "
                             "another and cannot read the tokens it has not produced; only the "
                             "encoder can be bidirectional (bidirectional=True)")
        for name in ("vocab_size", "embed_dim", "hidden", "encoder_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.bidirectional and self.encoder_hidden is None and self.hidden % 2:
            raise ValueError(f"hidden={self.hidden} is odd: a bidirectional encoder splits it "
                             "over two directions; set encoder_hidden")
        if self.attention == "dot" and self.memory_features != self.hidden:
            raise ValueError(f"attention='dot' scores s^T h: the decoder state (hidden="
                             f"{self.hidden}) and the memory ({self.memory_features} = "
                             "encoder_hidden x directions) must be equally wide")
        super().__post_init__()

    @property
    def encoder_width(self) -> int:
        return self.encoder_hidden or self.hidden // (2 if self.bidirectional else 1)

    @property
    def memory_features(self) -> int:
        return self.encoder_width * (2 if self.bidirectional else 1)

    def setup(self):
        def embed(name):
            return nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                            param_dtype=self.param_dtype, name=name,
                            embedding_init=_init(nn.initializers.normal(1.0), ("vocab", "embed")))

        self.source_embedding, self.target_embedding = embed("source_embedding"), embed(
            "target_embedding")
        # allow_empty: the batcher's filler rows (mask 0) are all pad.
        self.encoder = RecurrentEncoder(self.cell, self.encoder_width, self.encoder_layers,
                                        self.bidirectional, self.dropout_rate, True,
                                        self.dtype, self.param_dtype)
        self.step = DecoderStep(self.cell, self.hidden, self.decoder_layers, self.attention,
                                self.attention_dim or self.hidden, self.memory_features,
                                self.dtype, self.param_dtype)
        self.logits = nn.Dense(self.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
                               kernel_init=_init(nn.initializers.lecun_normal(), ("mlp", "vocab")),
                               bias_init=_init(nn.initializers.zeros_init(), ("vocab",)))
        self.dropout = nn.Dropout(self.dropout_rate)

    # -- the contract -------------------------------------------------------------------------
    def encode(self, source: Array, *, deterministic: bool = True) -> tuple[Array, Array]:
        """source `[batch, src]` int, right-padded -> (memory `[batch, src, memory_features]`,
        zero at padding; memory_mask `[batch, src]` bool)."""
        if source.ndim != 2 or not jnp.issubdtype(source.dtype, jnp.integer):
            raise ValueError(f"source must be int token ids [batch, length], got "
                             f"{source.shape} {source.dtype}")
        mask = source != self.pad_id
        x = self.dropout(self.source_embedding(source), deterministic=deterministic)
        memory, _ = self.encoder(x, mask.sum(-1).astype(jnp.int32), deterministic=deterministic)
        return memory, mask

    def _start(self, memory: Array, memory_mask: Array):
        if memory_mask.shape != memory.shape[:2]:
            raise ValueError(f"memory {memory.shape} does not match memory_mask "
                             f"{memory_mask.shape} ([batch, src, d] vs [batch, src])")
        summary = final_state(memory, memory_mask.astype(jnp.int32).sum(-1), self.bidirectional)
        return self.step.start(memory, summary)

    def _decode(self, memory, memory_mask, targets, deterministic):
        if targets.ndim != 2 or targets.shape[0] != memory.shape[0]:
            raise ValueError(f"targets {targets.shape} must be [batch={memory.shape[0]}, length]")
        carry, summary, keys = self._start(memory, memory_mask)
        embedded = self.dropout(self.target_embedding(shift_right(targets, self.bos_id)),
                                deterministic=deterministic)
        mask = memory_mask.astype(bool)
        scan = nn.scan(lambda step, c, e: step(c, e, memory, keys, mask, summary),
                       variable_broadcast="params", split_rngs={"params": False},
                       in_axes=1, out_axes=1)
        _, (out, weights) = scan(self.step, carry, embedded)
        logits = self.logits(self.dropout(out, deterministic=deterministic))
        return logits.astype(jnp.float32), weights

    def decode(self, memory: Array, memory_mask: Array, targets: Array, *,
               deterministic: bool = True) -> Array:
        """Teacher forcing: logits `[batch, tgt, vocab]` float32 for `targets` `[batch, tgt]`,
        the decoder reading them shifted right by `bos_id`."""
        return self._decode(memory, memory_mask, targets, deterministic)[0]

    def __call__(self, source: Array, targets: Array, *, deterministic: bool = True) -> Array:
        return self.decode(*self.encode(source, deterministic=deterministic), targets,
                           deterministic=deterministic)

    def _one_step(self, carry, ids, memory, keys, memory_mask, summary):
        carry, (out, weights) = self.step(carry, self.target_embedding(ids), memory, keys,
                                          memory_mask.astype(bool), summary)
        return self.logits(out).astype(jnp.float32), carry

    @nn.nowrap
    def decode_step_fn(self, params: Any, memory: Array, memory_mask: Array, *, max_len: int):
        """`tokens_to_logits(ids [rows, 1], carry) -> (logits [rows, vocab], carry)` and the
        initial carry (a tuple per decoder layer; LSTM `(c, h)`, leaves `[rows, hidden]`). The
        carry does not grow, so `max_len` is not needed. Call it inside the jitted decoder."""
        del max_len
        variables = {"params": params}
        carry, summary, keys = self.apply(variables, memory, memory_mask, method="_start")

        def tokens_to_logits(ids: Array, carry: Carry) -> tuple[Array, Carry]:
            return self.apply(variables, carry, ids[:, 0], memory, keys, memory_mask, summary,
                              method="_one_step")

        return tokens_to_logits, carry

    def _attention_weights(self, source, targets):
        memory, mask = self.encode(source)
        return self._decode(memory, mask, targets, True)

    @nn.nowrap
    def attention_weights(self, params: Any, source: Array, targets: Array
                          ) -> tuple[Array, dict[str, Array]]:
        """Teacher-forced logits `[batch, tgt, vocab]` and the decoder's alignment weights as
        {'decoder/layer_0/cross_attention': `[batch, 1, tgt, src]`} (one head; rows: the token
        each step predicts, columns: source tokens); {} for attention='none'. Traceable."""
        logits, weights = self.apply({"params": params}, source, targets,
                                     method="_attention_weights")
        if self.attention == "none":
            return logits, {}
        return logits, {"decoder/layer_0/cross_attention": weights[:, None]}
