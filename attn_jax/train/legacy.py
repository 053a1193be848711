"""Upgrades parameter trees saved by earlier versions of the models to today's names.

ViT blocks (`.../encoderblock_{i}/...`) were their own `EncoderBlock` until the shared
`attn_jax.layers.TransformerBlock` replaced it (after commit 4128777); the block's parameters
are the same arrays under new names:

    LayerNorm_0           -> self_attention_norm
    MultiHeadAttention_0  -> self_attention
    LayerNorm_1           -> mlp_norm
    MlpBlock_0            -> mlp          (its Dense_0 / Dense_1 keep their names)

Google's released ViT checkpoints carry the same arrays under Flax's auto-names of their own
block, which map the same way (`attn_jax.train.pretrained` reads their .npz files):

    vision_transformer: LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3
    big_vision:         LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0

The Transformer's trees did not change. `upgrade_params` is the identity on trees that are
already new, so restore code can call it on every checkpoint it reads; `has_legacy_names` says
whether a tree (or a checkpoint's metadata tree) needs it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Old name -> new name inside a ViT encoder block: this repo's old block, then Google's.
VIT_BLOCK_RENAMES: dict[str, str] = {
    "LayerNorm_0": "self_attention_norm",
    "MultiHeadAttention_0": "self_attention",
    "LayerNorm_1": "mlp_norm",
    "MlpBlock_0": "mlp",
}
GOOGLE_VIT_BLOCK_RENAMES: dict[str, str] = {
    "LayerNorm_0": "self_attention_norm",
    "MultiHeadDotProductAttention_1": "self_attention",  # vision_transformer
    "LayerNorm_2": "mlp_norm",
    "MlpBlock_3": "mlp",
    "MultiHeadDotProductAttention_0": "self_attention",  # big_vision (LayerNorm_1, MlpBlock_0)
}
_RENAMES = {**VIT_BLOCK_RENAMES, **GOOGLE_VIT_BLOCK_RENAMES}
_VIT_BLOCK = re.compile(r"encoderblock_\d+")


def _upgrade_block(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    clash = [(old, new) for old, new in _RENAMES.items() if old in block and new in block]
    targets = [_RENAMES[name] for name in block if name in _RENAMES]
    if clash or len(targets) != len(set(targets)):
        raise ValueError(
            f"{where} holds both old and new names {clash or sorted(block)}: a mixed tree, not "
            "an old checkpoint"
        )
    return {_RENAMES.get(name, name): value for name, value in block.items()}


def upgrade_params(tree: Any) -> Any:
    """`tree` with every old ViT block renamed (see the module docstring); other keys as they are.

    Works on any nesting of mappings, lists and tuples, so the same call upgrades a parameter
    tree, EMA parameters, or optimizer state that mirrors the parameters (optax's `mu`, `nu`);
    leaves (arrays, `nn.Partitioned` boxes, ShapeDtypeStructs) are passed through unchanged.
    Mappings come back as plain dicts. Identity on trees already in today's layout.
    """

    def walk(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, Mapping):
            if path and _VIT_BLOCK.fullmatch(path[-1]):
                node = _upgrade_block(node, "/".join(path))
            return {k: walk(v, path + (str(k),)) for k, v in node.items()}
        if isinstance(node, (list, tuple)) and not hasattr(node, "_fields"):
            return type(node)(walk(v, path + (str(i),)) for i, v in enumerate(node))
        if isinstance(node, tuple):  # a NamedTuple (optax states): rebuild field by field
            return type(node)(*(walk(v, path + (f,)) for f, v in zip(node._fields, node)))
        return node

    return walk(tree, ())


def has_legacy_names(tree: Any) -> bool:
    """Whether `upgrade_params` would rename anything in `tree` (parameters, a whole train
    state, or the metadata tree of a checkpoint: anything with the same nesting), e.g. to pick
    an untargeted restore for an old checkpoint before its names change."""
    found = False

    def walk(node: Any, parent: str) -> None:
        nonlocal found
        if isinstance(node, Mapping):
            if _VIT_BLOCK.fullmatch(parent) and any(name in node for name in _RENAMES):
                found = True
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, "")

    walk(tree, "")
    return found
