"""The Transformer encoder-decoder (Vaswani et al. 2017) and a GPT-2 style decoder-only LM.

"Attention Is All You Need" (arXiv:1706.03762): post-norm residual blocks
x = LayerNorm(x + Dropout(Sublayer(x))) (sec. 5.4), sinusoidal positions (sec. 3.5), embeddings
scaled by sqrt(d_model) and shared with the pre-softmax projection (sec. 3.4). GPT-2 (Radford et
al. 2019, sec. 2.3): pre-norm blocks x = x + Dropout(Sublayer(LayerNorm(x))), a final LayerNorm,
learned positions, GELU, tied output embedding. Both arrangements are one `TransformerConfig`.

Inputs are int token ids `[batch, length]`; outputs are float32 logits `[batch, length, vocab]`.
With `config.decode=True` the decoder self-attention keeps a KV cache in the 'cache' collection:
apply once to a full-length input to create it, then feed one token `[batch, 1]` per call with
`mutable=['cache']` (see `attn_jax.decoding`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax.attention import MultiHeadAttention
from attn_jax.layers import ACTIVATIONS, TransformerBlock, layer_norm
from attn_jax.positional import LearnedPositionEmbedding, sinusoidal_positions

Array = jax.Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = ACTIVATIONS  # "gelu_tanh" is GPT-2's "gelu"


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of `EncoderDecoder` and `DecoderOnlyLM`.

    Attributes:
      vocab_size: input vocabulary (the encoder's; the LM's only one).
      output_vocab_size: decoder vocabulary of an encoder-decoder (default: vocab_size).
      share_embeddings: one embedding table for encoder and decoder (needs equal vocabularies).
      tie_output: logits = x @ embedding^T (`nn.Embed.attend`) instead of a Dense layer.
      emb_dim: d_model. num_heads / num_kv_heads: attention heads (fewer kv heads = GQA).
      num_encoder_layers, num_decoder_layers: block counts (the LM uses num_decoder_layers).
      qkv_dim: total width of queries/keys/values (default emb_dim). mlp_dim: d_ff.
      max_len: longest sequence (rows of a learned position table; decode cache bound).
      dropout_rate: on embeddings, sublayer outputs and the MLP hidden layer.
      attention_dropout_rate: on attention weights.
      norm: 'post' (the paper) or 'pre' (GPT-2); final_norm: LayerNorm after a pre-norm stack.
      positions: 'sinusoidal' or 'learned'. scale_embeddings: multiply by sqrt(emb_dim).
      activation: 'relu' (the paper), 'gelu' (exact) or 'gelu_tanh' (GPT-2).
      layer_norm_epsilon: 1e-6 (tensor2tensor) or 1e-5 (GPT-2).
      init_std: None = xavier-uniform kernels and normal(emb_dim**-0.5) embeddings (t2t; unit
        variance after scaling); a float = normal(init_std) everywhere (GPT-2: 0.02).
      dtype / param_dtype: compute / storage dtypes. decode: cached one-token-at-a-time mode.
      attention_implementation: passed to `MultiHeadAttention` (None, 'xla', 'cudnn', ...).
      pad_id: padding token, masked as a key (None: no padding mask, e.g. GPT-2).
      bos_id: the start token the decoder input is shifted right with.
    """

    vocab_size: int
    output_vocab_size: int | None = None
    share_embeddings: bool = True
    tie_output: bool = True
    emb_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int | None = None
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    qkv_dim: int | None = None
    mlp_dim: int = 2048
    max_len: int = 256
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    norm: Literal["pre", "post"] = "post"
    final_norm: bool = True
    positions: Literal["sinusoidal", "learned"] = "sinusoidal"
    scale_embeddings: bool = True
    activation: Literal["relu", "gelu", "gelu_tanh"] = "relu"
    layer_norm_epsilon: float = 1e-6
    init_std: float | None = None
    scale_residual_init: bool = False
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    decode: bool = False
    attention_implementation: str | None = None
    pad_id: int | None = 0
    bos_id: int = 0

    def __post_init__(self):
        if self.norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got norm={self.norm!r}")
        if self.positions not in ("sinusoidal", "learned"):
            raise ValueError(
                f"positions must be 'sinusoidal' or 'learned', got positions={self.positions!r}"
            )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}"
            )
        if self.qkv_width % self.num_heads:
            raise ValueError(
                f"qkv_dim={self.qkv_width} must be divisible by num_heads={self.num_heads}"
            )
        if self.share_embeddings and self.target_vocab_size != self.vocab_size:
            raise ValueError(
                "share_embeddings needs equal vocabularies, got vocab_size="
                f"{self.vocab_size}, output_vocab_size={self.output_vocab_size}"
            )
        if self.scale_residual_init and self.init_std is None:
            raise ValueError("scale_residual_init scales normal(init_std); set init_std too")
        for name in ("vocab_size", "emb_dim", "num_heads", "mlp_dim", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")

    @property
    def target_vocab_size(self) -> int:
        return self.output_vocab_size or self.vocab_size

    @property
    def qkv_width(self) -> int:
        return self.qkv_dim or self.emb_dim

    def replace(self, **changes: Any) -> TransformerConfig:
        return dataclasses.replace(self, **changes)

    # Named configurations. Keyword arguments override any field.

    @classmethod
    def transformer_base(cls, **overrides: Any) -> TransformerConfig:
        """The paper's base model (Table 3): d 512, 6+6 layers, 8 heads, d_ff 2048, P_drop 0.1,
        a shared 37000-token BPE vocabulary (WMT'14 En-De, sec. 5.1). Attention dropout 0.1 as
        in tensor2tensor's transformer_base and the Flax wmt example."""
        kw = dict(
            vocab_size=37000, emb_dim=512, num_heads=8, num_encoder_layers=6,
            num_decoder_layers=6, mlp_dim=2048, dropout_rate=0.1, attention_dropout_rate=0.1,
            norm="post", positions="sinusoidal", scale_embeddings=True, activation="relu",
            share_embeddings=True, tie_output=True,
        )
        return cls(**{**kw, **overrides})

    @classmethod
    def transformer_big(cls, **overrides: Any) -> TransformerConfig:
        """The paper's big model (Table 3): d 1024, 16 heads, d_ff 4096, P_drop 0.3 (En-De)."""
        kw = dict(emb_dim=1024, num_heads=16, mlp_dim=4096, dropout_rate=0.3,
                  attention_dropout_rate=0.3)
        return cls.transformer_base(**{**kw, **overrides})

    @classmethod
    def gpt2_small(cls, **overrides: Any) -> TransformerConfig:
        """GPT-2 small (124M): d 768, 12 layers, 12 heads, 1024 learned positions, vocab 50257,
        pre-norm with a final LayerNorm, tanh-GELU, tied output, dropout 0.1, init N(0, 0.02).
        <|endoftext|> (50256) is its BOS; it has no padding token."""
        kw = dict(
            vocab_size=50257, emb_dim=768, num_heads=12, num_encoder_layers=0,
            num_decoder_layers=12, mlp_dim=3072, max_len=1024, dropout_rate=0.1,
            attention_dropout_rate=0.1, norm="pre", final_norm=True, positions="learned",
            scale_embeddings=False, activation="gelu_tanh", layer_norm_epsilon=1e-5,
            init_std=0.02, scale_residual_init=True, share_embeddings=True, tie_output=True,
            pad_id=None, bos_id=50256,
        )
        return cls(**{**kw, **overrides})

    @classmethod
    def gpt2_medium(cls, **overrides: Any) -> TransformerConfig:
        """GPT-2 medium (355M): d 1024, 24 layers, 16 heads, d_ff 4096."""
        kw = dict(emb_dim=1024, num_decoder_layers=24, num_heads=16, mlp_dim=4096)
        return cls.gpt2_small(**{**kw, **overrides})


# --------------------------------------------------------------------------------------------
# Pieces.
# --------------------------------------------------------------------------------------------


def _kernel_init(config: TransformerConfig) -> nn.initializers.Initializer:
    if config.init_std is None:
        return nn.initializers.xavier_uniform()
    return nn.initializers.normal(stddev=config.init_std)


def _residual_out_init(config: TransformerConfig,
                       residual_layers: int) -> nn.initializers.Initializer | None:
    """Initializer of a kernel that writes into the residual stream (None: `_kernel_init`)."""
    if not config.scale_residual_init:
        return None
    return nn.initializers.normal(stddev=config.init_std / math.sqrt(residual_layers))


def _embedding(config: TransformerConfig, num_embeddings: int, name: str) -> nn.Embed:
    std = config.init_std if config.init_std is not None else config.emb_dim**-0.5
    return nn.Embed(
        num_embeddings=num_embeddings,
        features=config.emb_dim,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(stddev=std), ("vocab", "embed")
        ),
        name=name,
    )


def shift_right(ids: Array, start_id: int) -> Array:
    """`[batch, length]` -> `[start_id, ids[:, 0], ..., ids[:, -2]]` (teacher forcing input)."""
    return jnp.pad(ids, ((0, 0), (1, 0)), constant_values=start_id)[:, :-1]


def key_padding_mask(valid: Array) -> Array:
    """`[batch, kv_len]` bool (True = real token) -> `[batch, 1, 1, kv_len]` attention mask."""
    return valid[:, None, None, :]


class Embedder(nn.Module):
    """Token embedding (scaled by sqrt(emb_dim) if configured) + positions + dropout.

    In decode mode the position of the current token comes from a counter in the 'cache'
    collection, advanced by the number of tokens embedded (created, not advanced, by the
    full-length call that initialises the cache).
    """

    config: TransformerConfig
    embedding: nn.Module
    decode: bool = False

    @nn.compact
    def __call__(self, ids: Array, *, deterministic: bool) -> Array:
        """`[batch, length]` int -> `[batch, length, emb_dim]`."""
        cfg = self.config
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"expected int token ids [batch, length], got {ids.shape} {ids.dtype}")
        length = ids.shape[1]
        start: int | Array = 0
        if self.decode:
            initialized = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            if initialized:
                start = position.value
                position.value = start + length
        if length > cfg.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={cfg.max_len}")
        x = self.embedding(ids)
        if cfg.scale_embeddings:
            x = x * jnp.sqrt(jnp.asarray(cfg.emb_dim, x.dtype))
        if cfg.positions == "learned":
            std = cfg.init_std if cfg.init_std is not None else 0.02
            x = LearnedPositionEmbedding(
                max_length=cfg.max_len,
                embedding_init=nn.initializers.normal(stddev=std),
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                name="position_embedding",
            )(x, positions=start + jnp.arange(length))
        else:
            x = x + sinusoidal_positions(length, cfg.emb_dim, start=start, dtype=x.dtype)
        return nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)


def _block(config: TransformerConfig, *, decoder: bool, cross_attention: bool,
           name: str) -> TransformerBlock:
    """An encoder layer (decoder=False), or a causal decoder layer with cross-attention over
    the encoder output if `cross_attention` (the paper's sec. 3.1; GPT-2's block without it).
    Kernels writing into the residual stream get GPT-2's scaled init when configured, scaled by
    the stack's count of residual sublayers."""
    sublayers = (3 if cross_attention else 2) if decoder else 2
    layers = config.num_decoder_layers if decoder else config.num_encoder_layers
    return TransformerBlock(
        num_heads=config.num_heads,
        num_kv_heads=config.num_kv_heads,
        mlp_dim=config.mlp_dim,
        qkv_features=config.qkv_width,
        causal=decoder,
        cross_attention=cross_attention,
        norm=config.norm,
        layer_norm_epsilon=config.layer_norm_epsilon,
        dropout_rate=config.dropout_rate,
        attention_dropout_rate=config.attention_dropout_rate,
        activation=_ACTIVATIONS[config.activation],
        attention_use_bias=config.use_bias,
        attention_kernel_init=_kernel_init(config),
        attention_bias_init=nn.initializers.zeros,
        mlp_kernel_init=_kernel_init(config),
        mlp_bias_init=nn.initializers.zeros,
        residual_kernel_init=_residual_out_init(config, sublayers * layers),
        decode=decoder and config.decode,
        attention_implementation=config.attention_implementation,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        name=name,
    )


def _final_norm(config: TransformerConfig, x: Array) -> Array:
    """The LayerNorm after a pre-norm stack (post-norm blocks already end in one)."""
    if config.norm == "pre" and config.final_norm:
        return layer_norm(epsilon=config.layer_norm_epsilon, dtype=config.dtype,
                          param_dtype=config.param_dtype, name="final_norm")(x)
    return x


def _logits(config: TransformerConfig, embedding: nn.Embed, x: Array, vocab: int) -> Array:
    """`[batch, length, emb_dim]` -> float32 `[batch, length, vocab]`."""
    if config.tie_output:
        logits = embedding.attend(x)
    else:
        logits = nn.Dense(
            vocab,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            kernel_init=nn.with_logical_partitioning(_kernel_init(config), ("embed", "vocab")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            name="logits",
        )(x)
    return logits.astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# Encoder-decoder.
# --------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Embeds source ids and applies `num_encoder_layers` encoder layers (`layer_{i}`)."""

    config: TransformerConfig
    embedding: nn.Module

    @nn.compact
    def __call__(self, inputs: Array, *, deterministic: bool = True) -> Array:
        """inputs `[batch, src_len]` int -> `[batch, src_len, emb_dim]`."""
        cfg = self.config
        mask = None if cfg.pad_id is None else key_padding_mask(inputs != cfg.pad_id)
        x = Embedder(cfg, self.embedding, decode=False, name="embedder")(
            inputs, deterministic=deterministic
        )
        for i in range(cfg.num_encoder_layers):
            x = _block(cfg, decoder=False, cross_attention=False, name=f"layer_{i}")(
                x, mask, deterministic=deterministic
            )
        return _final_norm(cfg, x)


class Decoder(nn.Module):
    """Embeds target-side ids and applies `num_decoder_layers` causal decoder layers
    (`layer_{i}`), then the output projection. With `encoded=None` and `cross_attention=False`
    it is a decoder-only LM body. In decode mode the self-attention reads and extends the KV
    cache and needs no mask."""

    config: TransformerConfig
    embedding: nn.Module
    cross_attention: bool = True

    @nn.compact
    def __call__(
        self,
        decoder_inputs: Array,
        encoded: Array | None = None,
        cross_mask: Array | None = None,
        self_mask: Array | None = None,
        *,
        deterministic: bool = True,
    ) -> Array:
        """decoder_inputs `[batch, tgt_len]` int (already shifted), encoded
        `[batch, src_len, emb_dim]`, cross_mask `[batch, 1, 1, src_len]`, self_mask
        `[batch, 1, tgt_len | 1, tgt_len]` (padding; causality is added by the blocks) ->
        logits `[batch, tgt_len, vocab]` float32."""
        cfg = self.config
        x = Embedder(cfg, self.embedding, decode=cfg.decode, name="embedder")(
            decoder_inputs, deterministic=deterministic
        )
        for i in range(cfg.num_decoder_layers):
            x = _block(cfg, decoder=True, cross_attention=self.cross_attention,
                       name=f"layer_{i}")(x, self_mask, encoded, cross_mask,
                                          deterministic=deterministic)
        x = _final_norm(cfg, x)
        return _logits(cfg, self.embedding, x, self.embedding.num_embeddings)


class EncoderDecoder(nn.Module):
    """The Transformer of Vaswani et al. (2017) for sequence-to-sequence tasks.

    `__call__(inputs, targets)` teacher-forces: the decoder reads `targets` shifted right by
    `config.bos_id`, so `logits[:, t]` predicts `targets[:, t]`. Source padding (`pad_id`) is
    masked in encoder self-attention and cross-attention, target padding in decoder
    self-attention on top of the causal mask.
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        if cfg.share_embeddings:
            shared = _embedding(cfg, cfg.vocab_size, "shared_embedding")
            src_embedding = tgt_embedding = shared
        else:
            src_embedding = _embedding(cfg, cfg.vocab_size, "source_embedding")
            tgt_embedding = _embedding(cfg, cfg.target_vocab_size, "target_embedding")
        self.encoder = Encoder(cfg, src_embedding)
        self.decoder = Decoder(cfg, tgt_embedding, cross_attention=True)

    @property
    def bos_id(self) -> int:
        """The token the decoder starts from (decoding reads it here)."""
        return self.config.bos_id

    @property
    def pad_id(self) -> int:
        return self.config.pad_id or 0

    def encode(self, inputs: Array, *, deterministic: bool = True) -> tuple[Array, Array]:
        """inputs `[batch, src_len]` int -> (memory `[batch, src_len, emb_dim]`, memory_mask
        `[batch, src_len]` bool, True at real tokens; all True when `pad_id` is None)."""
        memory = self.encoder(inputs, deterministic=deterministic)
        if self.config.pad_id is None:
            return memory, jnp.ones(inputs.shape, bool)
        return memory, inputs != self.config.pad_id

    def decode(
        self, memory: Array, memory_mask: Array, targets: Array, *, deterministic: bool = True
    ) -> Array:
        """Logits `[batch, tgt_len, vocab]` for `targets` `[batch, tgt_len]` given the encoder's
        memory `[batch, src_len, emb_dim]` and its mask `[batch, src_len]` (True = attend).

        Training mode shifts `targets` right. Decode mode (`config.decode`) feeds `targets` as
        they are: the previous token `[batch, 1]` at each step.
        """
        cfg = self.config
        if memory_mask.shape != memory.shape[:2]:
            raise ValueError(
                f"memory {memory.shape} does not match memory_mask {memory_mask.shape} "
                "([batch, src_len, emb_dim] vs [batch, src_len])"
            )
        if targets.ndim != 2 or targets.shape[0] != memory.shape[0]:
            raise ValueError(f"targets {targets.shape} must be [batch={memory.shape[0]}, length]")
        cross_mask = key_padding_mask(memory_mask.astype(bool))
        self_mask = None
        if cfg.decode:
            decoder_inputs = targets
        else:
            decoder_inputs = shift_right(targets, cfg.bos_id)
            if cfg.pad_id is not None:
                # Validity of the shifted input: position j holds targets[j - 1] (BOS at 0), so
                # computing it from the input ids would wrongly mask BOS when bos_id == pad_id.
                self_mask = key_padding_mask(shift_right(targets != cfg.pad_id, True))
        return self.decoder(
            decoder_inputs, memory, cross_mask, self_mask, deterministic=deterministic
        )

    def __call__(self, inputs: Array, targets: Array, *, deterministic: bool = True) -> Array:
        """inputs `[batch, src_len]`, targets `[batch, tgt_len]` int -> logits
        `[batch, tgt_len, vocab]` float32."""
        memory, memory_mask = self.encode(inputs, deterministic=deterministic)
        return self.decode(memory, memory_mask, targets, deterministic=deterministic)

    @nn.nowrap
    def decode_step_fn(
        self, params: Any, memory: Array, memory_mask: Array, *, max_len: int
    ) -> tuple[Callable[[Array, Any], tuple[Array, Any]], Any]:
        """The encoder-decoder contract's step builder (`attn_jax.models.protocols`): the
        callback `tokens_to_logits(ids [rows, 1], cache) -> (logits [rows, vocab], cache)` over
        `memory` / `memory_mask` (rows = their batch) and its empty KV cache for `max_len`
        decoder steps. Call it on the unbound model, inside the jitted function that decodes."""
        decoder = _decode_clone(self)
        targets = jnp.zeros((memory.shape[0], max_len), jnp.int32)
        cache = _zero_cache(
            lambda: decoder.apply(
                {"params": params}, memory, memory_mask, targets, method="decode",
                mutable=["cache"],
            )
        )

        def tokens_to_logits(ids: Array, cache: Any) -> tuple[Array, Any]:
            logits, new = decoder.apply(
                {"params": params, "cache": cache}, memory, memory_mask, ids,
                method="decode", mutable=["cache"],
            )
            return logits[:, -1], new["cache"]

        return tokens_to_logits, cache

    @nn.nowrap
    def attention_weights(self, params: Any, inputs: Array, targets: Array
                          ) -> tuple[Array, dict[str, Array]]:
        """Teacher-forced logits `[batch, tgt_len, vocab]` and the softmax weights of every
        MultiHeadAttention, keyed by module path ('encoder/layer_0/self_attention',
        'decoder/layer_0/self_attention', 'decoder/layer_0/cross_attention'), each
        `[batch, heads, q_len, kv_len]` float32 (`attn_jax.viz.attention_maps` draws them).
        Call it on the unbound model; traceable. Every attention call is intercepted
        (`nn.intercept_methods`) to return its weights, on the explicit-softmax path whatever
        kernel the model was trained with."""
        model = self.clone(config=dataclasses.replace(self.config, attention_implementation=None))
        weights: dict[str, Array] = {}

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, MultiHeadAttention) and context.method_name == "__call__":
                out, w = next_fun(*args, **{**kwargs, "return_weights": True})
                weights["/".join(context.module.path)] = w
                return out
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            logits = model.apply({"params": params}, inputs, targets)
        return logits, weights


def _decode_clone(model: nn.Module) -> nn.Module:
    """The same model with `config.decode=True` (same parameters, plus a 'cache' collection)."""
    return model.clone(config=dataclasses.replace(model.config, decode=True))


def _zero_cache(init_call: Callable[[], tuple[Any, Any]]) -> Any:
    """The 'cache' collection a full-length decode-mode call creates. Every cache variable
    (keys, values, indices) starts at zero, so only its shapes are traced, never computed."""
    shapes = jax.eval_shape(init_call)[1]["cache"]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


# --------------------------------------------------------------------------------------------
# Decoder-only language model.
# --------------------------------------------------------------------------------------------


class DecoderOnlyLM(nn.Module):
    """A GPT-style causal language model: `logits[:, t]` predicts `ids[:, t + 1]` (no shift
    inside; the task slices inputs and targets). Uses `num_decoder_layers`, `vocab_size` and
    masks `pad_id` keys on top of the causal mask when `pad_id` is not None.
    """

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.decoder = Decoder(
            cfg, _embedding(cfg, cfg.vocab_size, "embedding"), cross_attention=False
        )

    def __call__(self, ids: Array, *, deterministic: bool = True) -> Array:
        """ids `[batch, length]` int (`[batch, 1]` per step in decode mode) -> logits
        `[batch, length, vocab]` float32."""
        cfg = self.config
        mask = None
        if cfg.pad_id is not None and not cfg.decode:
            mask = key_padding_mask(ids != cfg.pad_id)
        return self.decoder(ids, self_mask=mask, deterministic=deterministic)

    @property
    def pad_id(self) -> int:
        return self.config.pad_id or 0

    @nn.nowrap
    def prompt_step_fn(
        self, params: Any, prompt: Array, *, max_len: int
    ) -> tuple[Callable[[Array, Any], tuple[Array, Any]], Any, Array]:
        """The decoder-only step builder: prefills the KV cache with `prompt` `[batch, P]`
        (P >= 1, its first P - 1 tokens in one call) and returns `(tokens_to_logits, cache,
        start_tokens [batch])`, the prompt's last token being the first decoder input; the cache
        holds P - 1 + max_len positions, which must not exceed `config.max_len`."""
        if prompt.ndim != 2 or prompt.shape[1] < 1:
            raise ValueError(f"prompt must be [batch, P >= 1], got shape {prompt.shape}")
        total = prompt.shape[1] - 1 + max_len
        if total > self.config.max_len:
            raise ValueError(
                f"prompt of shape {prompt.shape} plus max_len={max_len} new tokens needs "
                f"{total} positions; config.max_len={self.config.max_len}"
            )
        decoder = _decode_clone(self)
        cache = _zero_cache(
            lambda: decoder.apply(
                {"params": params}, jnp.zeros((prompt.shape[0], total), jnp.int32),
                mutable=["cache"],
            )
        )

        def tokens_to_logits(ids: Array, cache: Any) -> tuple[Array, Any]:
            logits, new = decoder.apply({"params": params, "cache": cache}, ids, mutable=["cache"])
            return logits[:, -1], new["cache"]

        if prompt.shape[1] > 1:
            _, cache = tokens_to_logits(prompt[:, :-1].astype(jnp.int32), cache)
        return tokens_to_logits, cache, prompt[:, -1]


def count_params(params: Any) -> int:
    """Total number of parameter elements (boxed or raw pytree)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(params)))
