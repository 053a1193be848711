"""Build the Transformer models of `attn_jax.models.transformer` from a plain config dict.

The model registry (`attn_jax.models.build_model`) calls `MODELS[name](**config.model)`; the
Transformer classes take one `TransformerConfig`, so these factories turn keyword fields (and an
optional named preset) into that config:

    build_model("transformer", preset="base", vocab_size=32000, dropout_rate=0.3)
    build_model("decoder_lm", vocab_size=259, emb_dim=256, num_decoder_layers=4, num_heads=4)

Presets are the paper's base/big models (Vaswani et al. 2017, Table 3) and GPT-2 small/medium
(Radford et al. 2019); every other keyword overrides a `TransformerConfig` field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax.numpy as jnp

from attn_jax.models.transformer import DecoderOnlyLM, EncoderDecoder, TransformerConfig

PRESETS: dict[str, Callable[..., TransformerConfig]] = {
    "base": TransformerConfig.transformer_base,
    "big": TransformerConfig.transformer_big,
    "gpt2_small": TransformerConfig.gpt2_small,
    "gpt2_medium": TransformerConfig.gpt2_medium,
}
FIELDS = tuple(f.name for f in dataclasses.fields(TransformerConfig))


def transformer_config(preset: str | None = None, **fields: Any) -> TransformerConfig:
    """A `TransformerConfig` from `PRESETS[preset]` (or the dataclass defaults) plus `fields`.

    dtype / param_dtype may be strings ('bfloat16'). Unknown fields and presets raise ValueError
    naming the valid ones.
    """
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown Transformer fields {unknown}; the fields are {list(FIELDS)}")
    if "decode" in fields:
        raise ValueError("decode is set by attn_jax.decoding, not by the config")
    for key in ("dtype", "param_dtype"):
        if key in fields:
            fields[key] = jnp.dtype(fields[key])
    if preset is None:
        if "vocab_size" not in fields:
            raise ValueError("a Transformer needs vocab_size (or a preset that sets it)")
        return TransformerConfig(**fields)
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is unknown; choose one of {sorted(PRESETS)}")
    return PRESETS[preset](**fields)


def encoder_decoder(preset: str | None = None, **fields: Any) -> EncoderDecoder:
    """An `EncoderDecoder` (registered as model name 'transformer')."""
    return EncoderDecoder(transformer_config(preset, **fields))


def decoder_lm(preset: str | None = None, **fields: Any) -> DecoderOnlyLM:
    """A `DecoderOnlyLM` (registered as model name 'decoder_lm')."""
    return DecoderOnlyLM(transformer_config(preset, **fields))
