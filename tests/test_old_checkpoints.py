"""Checkpoints written before the contracts change still load and resume exactly.

`tests/data/vit_run_0db789b` is a workdir written by train.py at commit 0db789b (before the
evaluators, config.init and the model contracts): `tests/train_config.py` of that commit (now
`tiny_configs.py:process`), killed right after its step-4 checkpoint. Reference: a straight
8-step run of today's code; resuming the old checkpoint must reach bit-identical parameters.
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np

from attn_jax.train.loop import train_and_evaluate
from attn_jax.train.restore import load_config, load_params
from tiny_configs import tiny_config

OLD_RUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "vit_run_0db789b")


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_old_checkpoint_resumes_to_the_same_parameters_as_a_straight_run(tmp_path):
    data_dir = str(tmp_path / "tfds")
    old = str(tmp_path / "old")
    shutil.copytree(OLD_RUN, old)
    config = tiny_config("process", data_dir)
    assert load_config(old).model.to_dict() == config.model.to_dict()
    _, old_params = load_params(old)  # the old layout reads as it is
    resumed, _ = train_and_evaluate(config, old, jax.devices()[:1])
    straight, _ = train_and_evaluate(config, str(tmp_path / "new"), jax.devices()[:1])
    assert int(resumed.step) == int(straight.step) == 8
    a, b = _flat(resumed.params), _flat(straight.params)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert _flat(old_params).keys() == a.keys()
