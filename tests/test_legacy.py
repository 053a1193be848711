"""Tests of attn_jax.train.legacy: checkpoints of the earlier ViT block layout still load."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import serialization

from attn_jax.models.vit import ViT
from attn_jax.train.legacy import VIT_BLOCK_RENAMES, has_legacy_names, upgrade_params

DATA = os.path.join(os.path.dirname(__file__), "data", "vit_4128777.msgpack")
# The model tests/data/make_vit_4128777.py built at commit 4128777.
CONFIG = dict(num_classes=3, patch_size=(4, 2), hidden_size=8, depth=2, num_heads=2, mlp_dim=16,
              head_zero_init=False)


@pytest.fixture(scope="module")
def old():
    with open(DATA, "rb") as f:
        return serialization.msgpack_restore(f.read())


def _structure(tree) -> list[str]:
    return sorted(jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree))


def test_old_vit_checkpoint_gives_the_old_logits(old):
    """Reference: the logits the code at commit 4128777 computed with these parameters on this
    input, stored beside them (tests/data/vit_4128777.msgpack, written by
    tests/data/make_vit_4128777.py run at that commit). Every leaf there was perturbed, so a
    swapped LayerNorm_0 / LayerNorm_1 would change the logits."""
    params = old["params"]
    block = params["Transformer"]["encoderblock_1"]
    assert set(VIT_BLOCK_RENAMES) <= set(block)  # the file is in the old layout
    assert has_legacy_names(params) and has_legacy_names({"state": {"params": params}})
    upgraded = upgrade_params(params)
    assert not has_legacy_names(upgraded)
    model = ViT(**CONFIG)
    want = jax.eval_shape(model.init, jax.random.key(0), old["images"])["params"]
    assert _structure(upgraded) == _structure(nn.unbox(want))
    logits = model.apply({"params": upgraded}, old["images"])
    np.testing.assert_allclose(logits, old["logits"], rtol=1e-5, atol=1e-6)


def test_upgrade_is_identity_on_new_trees_and_renames_everywhere(old):
    """A new tree comes back equal; an optax state mirroring the old tree is renamed too; a tree
    mixing old and new names in one block is refused."""
    upgraded = upgrade_params(old["params"])
    again = upgrade_params(upgraded)
    assert _structure(again) == _structure(upgraded)
    assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(upgraded)))
    opt_state = optax.adam(1e-3).init(old["params"])
    new_state = upgrade_params(opt_state)
    assert type(new_state[0]).__name__ == "ScaleByAdamState"
    assert _structure(new_state[0].mu) == _structure(upgraded)
    block = dict(upgraded["Transformer"]["encoderblock_0"])
    block["LayerNorm_0"] = block["self_attention_norm"]
    with pytest.raises(ValueError, match="encoderblock_0 holds both old and new names"):
        upgrade_params({"Transformer": {"encoderblock_0": block}})
