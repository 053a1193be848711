"""Google's `.npz` checkpoints (vision_transformer, big_vision) <-> this repo's parameter trees.

A Google checkpoint is a flat `np.savez` of the Flax parameter tree, keys joined by '/':
'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel'. Flax's `[in, out]` kernels, HWIO
convolutions and `[in, heads, head_dim]` attention kernels are this repo's layouts too, so
reading one is a matter of names only:

- the parameters under 'opt/target/' (old flax.optim checkpoints) or 'params/' (big_vision) are
  taken, without that prefix, when the file holds them (and other state beside them);
- a scanned big_vision stack ('Transformer/encoderblock/...', leading axis = depth) is split
  into 'Transformer/encoderblock_{i}/...';
- the position table moves to the repo's 'posembed_input/pos_embedding' (vision_transformer
  keeps it at 'Transformer/posembed_input/pos_embedding', big_vision at 'pos_embedding');
- the block names become the repo's through `attn_jax.train.legacy.upgrade_params`.

Every other key is kept as it is, so a model whose names already are vision_transformer's (the
MLP-Mixer's 'stem', 'MixerBlock_{i}/token_mixing/Dense_0', 'pre_head_layer_norm', 'head')
loads with no code of its own. `save_npz` writes the inverse, in vision_transformer's layout by
default, which vision_transformer's and timm's `_load_weights` read.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from attn_jax.train.legacy import upgrade_params

LAYOUTS = ("vision_transformer", "big_vision")
_PREFIXES = ("opt/target/", "params/")
_POSEMB = "posembed_input/pos_embedding"
_GOOGLE_POSEMB = {"vision_transformer": "Transformer/posembed_input/pos_embedding",
                  "big_vision": "pos_embedding"}
# repo block name -> Google's (the inverse of legacy.GOOGLE_VIT_BLOCK_RENAMES per layout).
_EXPORT_BLOCK_NAMES = {
    "vision_transformer": {"self_attention_norm": "LayerNorm_0",
                           "self_attention": "MultiHeadDotProductAttention_1",
                           "mlp_norm": "LayerNorm_2", "mlp": "MlpBlock_3"},
    "big_vision": {"self_attention_norm": "LayerNorm_0",
                   "self_attention": "MultiHeadDotProductAttention_0",
                   "mlp_norm": "LayerNorm_1", "mlp": "MlpBlock_0"},
}
# The last name of every Flax parameter these files hold ('cls', 'probe': ViT / MAP head tokens).
LEAF_NAMES = ("kernel", "bias", "scale", "embedding", "cls", "pos_embedding", "probe")
EXAMPLE_KEY = "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"
_SCANNED = re.compile(r"(.*/)?encoderblock/(.*)")


def flatten_tree(tree: Any) -> dict[str, np.ndarray]:
    """{'a/b/c': NumPy array} of a nested parameter mapping (`nn.LogicallyPartitioned` boxes
    unboxed)."""
    import flax.linen as nn

    from attn_jax.train.init import flatten

    return {k: np.asarray(v.value if isinstance(v, nn.LogicallyPartitioned) else v)
            for k, v in flatten(tree).items()}


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """The nested dict of {'a/b/c': leaf}."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def check_layout(keys: list[str], where: str) -> None:
    """ValueError naming the keys of `where` that are not '/'-joined Flax parameter paths."""
    bad = sorted(k for k in keys if k.rsplit("/", 1)[-1] not in LEAF_NAMES)
    if bad or not keys:
        raise ValueError(
            f"{where} is not in the npz layout of vision_transformer / big_vision: format 'npz' "
            f"expects flat '/'-joined Flax parameter paths such as {EXAMPLE_KEY!r}, each ending "
            f"in one of {LEAF_NAMES}; unrecognised keys: {bad[:5] or 'none (the file is empty)'}"
            + (f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""))


def npz_to_repo(flat: dict[str, np.ndarray], where: str = "the checkpoint"
                ) -> dict[str, np.ndarray]:
    """A Google checkpoint's flat {key: array} renamed to this repo's paths (see the module
    docstring); keys the renames do not touch are kept."""
    for prefix in _PREFIXES:  # a whole train state: its parameters only
        if any(k.startswith(prefix) for k in flat):
            flat = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}
    check_layout(list(flat), where)
    out: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        scanned = _SCANNED.fullmatch(key)
        if scanned:  # big_vision's nn.scan over the blocks: one slice per block
            outer, rest = scanned.group(1) or "", scanned.group(2)
            for i, block in enumerate(np.asarray(value)):
                out[f"{outer}encoderblock_{i}/{rest}"] = block
        elif key in _GOOGLE_POSEMB.values():
            out[_POSEMB] = value
        else:
            out[key] = value
    return flatten_tree(upgrade_params(unflatten(out)))


def repo_to_npz(flat: dict[str, np.ndarray], layout: str = "vision_transformer"
                ) -> dict[str, np.ndarray]:
    """This repo's flat parameters renamed to a Google layout (the inverse of `npz_to_repo`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"npz layout must be one of {LAYOUTS}, got {layout!r}")
    names = _EXPORT_BLOCK_NAMES[layout]
    out = {}
    for key, value in flat.items():
        parts = key.split("/")
        for i in range(1, len(parts) - 1):
            if re.fullmatch(r"encoderblock_\d+", parts[i - 1]) and parts[i] in names:
                parts[i] = names[parts[i]]
        key = "/".join(parts)
        out[_GOOGLE_POSEMB[layout] if key == _POSEMB else key] = value
    return out


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The raw {key: array} of an .npz file (no renaming)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is not a file")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_npz(path: str) -> dict[str, Any]:
    """A vision_transformer / big_vision .npz as this repo's nested parameter tree (NumPy)."""
    return unflatten(npz_to_repo(read_npz(path), where=path))


def save_npz(params: Any, path: str, layout: str = "vision_transformer") -> None:
    """Write `params` (a nested tree, boxed or not) as a Google .npz in `layout`
    ('vision_transformer', the default, or 'big_vision'; unscanned)."""
    flat = repo_to_npz(flatten_tree(params), layout)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.savez would append '.npz' to a bare name
        np.savez(f, **flat)
