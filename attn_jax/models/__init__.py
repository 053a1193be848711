"""Model families by name: the one place a config's `model.name` is resolved.

Each family lives in its own file and imports on its own; this table imports it lazily.
A family's module may declare `INIT_ADAPTERS`, how `config.init` (attn_jax.train.init) treats
its parameters when a checkpoint's shape differs: a tuple of (regex fully matching the parameter
path, rule), a rule being fn(old array, new shape, options) -> the array at the new shape, or a
str, why that parameter cannot change shape (formatted with {path}, {new}, {old}; the trainer
raises a ValueError with it).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import flax.linen as nn

MODELS = {
    "vit": "attn_jax.models.vit:ViT",
    "mixer": "attn_jax.models.mixer:MlpMixer",
    "cnn": "attn_jax.models.cnn:CNN",
    "unet": "attn_jax.models.unet:UNet",
    "transformer": "attn_jax.models.transformer_presets:encoder_decoder",
    "decoder_lm": "attn_jax.models.transformer_presets:decoder_lm",
    "rnn_seq2seq": "attn_jax.models.recurrent:RNNSeq2Seq",
    "lstm_lm": "attn_jax.models.recurrent_lm:lstm_lm",
    "rnn_captioner": "attn_jax.models.captioner:RNNCaptioner",
    "transformer_captioner": "attn_jax.models.captioner:transformer_captioner",
    "detr": "attn_jax.models.detr:DETR",
}


def build_model(name: str, /, **kwargs: Any) -> nn.Module:
    """Instantiate the model registered under `name` with `kwargs` as its fields (a module's
    own `name=` among them, for a submodule built inside another model)."""
    if name not in MODELS:
        raise ValueError(f"model.name={name!r} is unknown; choose one of {sorted(MODELS)}")
    module, cls = MODELS[name].split(":")
    model_cls = getattr(importlib.import_module(module), cls)
    try:
        return model_cls(**kwargs)
    except TypeError as e:  # a misspelt field: name it
        fields = sorted(getattr(model_cls, "__dataclass_fields__", {}))
        raise ValueError(f"model {name!r}: {e}; its fields are {fields}") from None


@functools.cache
def init_adapters() -> tuple[tuple[str, Any], ...]:
    """Every registered family's `INIT_ADAPTERS`, in `MODELS` order (imports each module)."""
    rules, seen = [], set()
    for target in MODELS.values():
        module = target.split(":")[0]
        if module not in seen:
            seen.add(module)
            rules += getattr(importlib.import_module(module), "INIT_ADAPTERS", ())
    return tuple(rules)
