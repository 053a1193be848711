"""The contracts between model families and tasks: what a model must offer to be trained by a
task, decoded by `attn_jax.decoding`, or used as another model's encoder.

They are structural (`typing.Protocol`): a flax module implements one by having the methods, no
base class needed. Tasks and decoding code are written against these, never against a model
class, so a new family plugs into the existing tasks, evaluators and search code.

Image encoder (ViT, MLP-Mixer; later CNNs), applied with `model.apply(variables, x, method=...)`:
  `__call__(images [b, h, w, c], train) -> logits [b, classes]`
  `features(images) -> [b, d]`         pooled representation (FID features, linear probes)
  `encode(images) -> [b, n, d]`        tokens (a captioning encoder, a detection backbone)
  Optional, for attention overlays: `grid_shape(image_shape) -> (h', w')`, a plain (`nn.nowrap`)
      method: `encode`'s tokens are that grid's cells, row-major (the CNN of models/cnn.py)

Encoder-decoder (the Transformer, the recurrent seq2seq; later the captioners):
  `encode(source, deterministic) -> (memory [b, s, d], memory_mask [b, s] bool)`
  `decode(memory, memory_mask, targets [b, t], deterministic) -> logits [b, t, vocab]`
      (teacher forcing: the model shifts `targets` right by its `bos_id` itself)
  `__call__(source, targets, deterministic) = decode(*encode(source), targets)`
  `decode_step_fn(params, memory, memory_mask, *, max_len) -> (tokens_to_logits, cache)`
      a plain (`nn.nowrap`) method called on the unbound model: the step callback
      `tokens_to_logits(ids [rows, 1], cache) -> (logits [rows, vocab], cache)` and its initial
      cache (a KV cache, or an RNN's carry), every array leaf leading with the rows
  `bos_id`, `pad_id`: the start token and the id written after EOS.
  Optional, for `attn_jax.viz.attention_maps`: `attention_weights(params, source, targets) ->
      (logits, {'stack/layer_i/kind': weights [b, heads, q_len, kv_len]})`, a plain (`nn.nowrap`)
      method like `decode_step_fn`; kinds 'self_attention' / 'cross_attention'.
The source may be token ids or images: the sequence task never looks inside it.

Decoder-only LM:
  `__call__(ids [b, t], deterministic) -> logits [b, t, vocab]` (causal; no shift inside)
  `prompt_step_fn(params, prompt [b, P], *, max_len) -> (tokens_to_logits, cache, start [b])`
  `pad_id`.

Recurrent LM (a decoder-only LM that can carry its state across calls: truncated BPTT, a
stateful LM task):
  `initial_carry(batch) -> carry`      a plain (`nn.nowrap`) method: the zero state, every array
      leaf leading with the batch rows
  `apply_with_carry(ids [b, t], carry, reset [b, t] bool or None, deterministic)
      -> (logits [b, t, vocab], carry)`  continues `carry`; `reset` zeroes a row's state just
      before the positions where it is True (a document starts there)

Set-prediction detector (DETR, models/detr.py):
  `__call__(images [b, h, w, c], train) -> {'logits': [b, N, classes + 1] (the last class = no
      object), 'boxes': [b, N, 4] normalised (cx, cy, w, h), 'aux': [the same dict per earlier
      decoder layer]}`
  `cross_attention_map(images) -> (outputs, [b, heads, N, h'*w'] last decoder layer's weights)`
  `grid_shape(image_shape) -> (h', w')`, a plain (`nn.nowrap`) method

Constructor fields a text model takes from the task (its data fixes them): `vocab_size`, and for
encoder-decoders `pad_id` and `bos_id`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import jax

Array = jax.Array
TokensToLogits = Callable[[Array, Any], tuple[Array, Any]]


@runtime_checkable
class ImageEncoder(Protocol):
    def __call__(self, images: Array, *, train: bool = False) -> Array: ...

    def features(self, images: Array, *, train: bool = False) -> Array: ...

    def encode(self, images: Array, *, train: bool = False) -> Array: ...


@runtime_checkable
class EncoderDecoderModel(Protocol):
    @property
    def bos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, source: Array, *, deterministic: bool = True) -> tuple[Array, Array]: ...

    def decode(self, memory: Array, memory_mask: Array, targets: Array, *,
               deterministic: bool = True) -> Array: ...

    def decode_step_fn(self, params: Any, memory: Array, memory_mask: Array, *, max_len: int
                       ) -> tuple[TokensToLogits, Any]: ...


@runtime_checkable
class DecoderOnlyModel(Protocol):
    @property
    def pad_id(self) -> int: ...

    def prompt_step_fn(self, params: Any, prompt: Array, *, max_len: int
                       ) -> tuple[TokensToLogits, Any, Array]: ...


@runtime_checkable
class RecurrentLM(Protocol):
    def initial_carry(self, batch: int) -> Any: ...

    def apply_with_carry(self, ids: Array, carry: Any, reset: Array | None = None, *,
                         deterministic: bool = True) -> tuple[Array, Any]: ...


REQUIRED = {
    ImageEncoder: ("__call__", "features", "encode"),
    EncoderDecoderModel: ("encode", "decode", "decode_step_fn", "bos_id", "pad_id"),
    DecoderOnlyModel: ("__call__", "prompt_step_fn", "pad_id"),
    RecurrentLM: ("initial_carry", "apply_with_carry"),
}


def missing_methods(model: Any, protocol: type) -> list[str]:
    """The names of `protocol`'s required methods that `model`'s class lacks."""
    return [n for n in REQUIRED[protocol] if not hasattr(type(model), n)]


def check_implements(model: Any, protocol: type, what: str) -> None:
    """ValueError naming the missing methods when `model` does not implement `protocol`."""
    missing = missing_methods(model, protocol)
    if missing:
        raise ValueError(f"{what}: {type(model).__name__} does not implement the "
                         f"{protocol.__name__} contract (attn_jax.models.protocols); missing "
                         f"{missing}")
