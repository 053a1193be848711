"""Checkpoints written before the contracts change still load and resume.

`tests/data/vit_run_0db789b` is a workdir written by train.py at commit 0db789b (before the
evaluators, config.init, the model contracts and the shared TransformerBlock, so its ViT blocks
hold the old names `LayerNorm_0`, `MultiHeadAttention_0`, `LayerNorm_1`, `MlpBlock_0`):
`tests/train_config.py` of that commit (now `tiny_configs.py:process`), killed right after its
step-4 checkpoint. Reference: the checkpoint's own arrays, read back as saved with orbax.
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from attn_jax.train.legacy import has_legacy_names, upgrade_params
from attn_jax.train.loop import train_and_evaluate
from attn_jax.train.restore import load_params
from tiny_configs import tiny_config

OLD_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "vit_run_0db789b")


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _saved_state(workdir: str, step: int):
    """The step's state as orbax wrote it (no target: the old names)."""
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                               options=ocp.CheckpointManagerOptions(read_only=True)) as m:
        return m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state


def test_old_checkpoint_loads_and_resumes(tmp_path, monkeypatch):
    old = str(tmp_path / "old")
    shutil.copytree(OLD_RUN, old)
    saved = _saved_state(old, 4)
    assert has_legacy_names(saved["params"])
    want = _flat(upgrade_params(saved["params"]))

    # load_params (sampling, FID features, config.init) reads it in today's names.
    config_then, params = load_params(old)
    assert _flat(params).keys() == want.keys()
    for key, value in _flat(params).items():
        np.testing.assert_array_equal(value, want[key], err_msg=key)

    # The trainer restores the whole state (optimizer moments renamed too) and runs on.
    config = tiny_config("process", str(tmp_path / "tfds"))
    assert config_then.model.to_dict() == config.model.to_dict()
    restored = {}
    from attn_jax.train import checkpoint

    original = checkpoint.Checkpointer._restore_verified

    def spy(self, step, abstract):
        state, *rest = original(self, step, abstract)
        restored["state"] = jax.device_get(state)  # the train step donates the arrays
        return (state, *rest)

    monkeypatch.setattr(checkpoint.Checkpointer, "_restore_verified", spy)
    state, final = train_and_evaluate(config, old, jax.devices()[:1])
    assert int(state.step) == 8 and np.isfinite(final["test_loss"])
    for key, value in _flat(restored["state"].params).items():
        np.testing.assert_array_equal(value, want[key], err_msg=key)
    assert int(restored["state"].step) == 4
    moments = _flat(upgrade_params(saved["opt_state"]))
    assert len(moments) == len(_flat(restored["state"].opt_state))
