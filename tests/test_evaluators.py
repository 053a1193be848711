"""Evaluators on their own cadence, their config sections, and the loops living in eval/.

References: the step numbers a cadence implies (arithmetic), the config's declared keys, and
the task modules' source text (no eval loop over a data iterator in attn_jax/tasks/).
"""

from __future__ import annotations

import ast
import json
import os
import pathlib

import jax
import pytest

import attn_jax.tasks
from attn_jax.eval.evaluators import EVALUATORS, build_evaluators
from attn_jax.tasks import get_task
from attn_jax.train.config import upgrade_config
from attn_jax.train.loop import train_and_evaluate
from tiny_configs import tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_each_evaluator_runs_at_exactly_its_steps(data_dir, tmp_path):
    """Loss every 2 steps and the expensive full-bound bits/dim every 4, over 8 steps: the
    'eval' rows of metrics.jsonl hold the loss keys at 2, 4, 6, 8 and bits/dim at 4 and 8."""
    config = tiny_config("diffusion", data_dir)
    config.total_steps = 8
    config.checkpoint.every_steps = 8
    config.ema_decay = 0.0
    config.evals = dict(
        loss=dict(type="loss", every_steps=2),
        bpd=dict(type="bits_per_dim", every_steps=4, max_examples=2, batch_size=2))
    train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f if '"eval"' in line]
    loss_steps = [r["step"] for r in rows if "test_loss" in r]
    bpd_steps = [r["step"] for r in rows if "test_bpd" in r]
    assert loss_steps == [2, 4, 6, 8]
    assert bpd_steps == [4, 8]
    assert all(r["test_bpd"] > 0 for r in rows if "test_bpd" in r)


def test_unknown_keys_fail_before_compiling_with_the_known_keys_named(data_dir):
    config = tiny_config("classification", data_dir)
    config.evals = dict(eval=dict(type="loss", splitz=["test"]))
    task = get_task("classification")(config)
    with pytest.raises(ValueError, match=r"config.evals.eval has unknown key 'splitz' "
                                         r"\(did you mean 'splits'\?\); known keys: "
                                         r"\['ema', 'every_steps', 'splits', 'type'\]"):
        build_evaluators(config, task)
    config.evals = dict(eval=dict(type="los"))
    with pytest.raises(ValueError, match="type='los' is unknown"):
        build_evaluators(config, task)
    config.evals = dict(eval=dict(type="loss", splits=["dev"]))
    with pytest.raises(ValueError, match=r"splits \['dev'\]"):
        build_evaluators(config, task)


def test_every_evaluator_declares_every_key_with_a_default():
    """Each evaluator's Config is a frozen dataclass whose keys all have defaults, so a section
    naming only its type is valid, and every_steps is a key of each."""
    import dataclasses

    for name, cls in EVALUATORS.items():
        fields = {f.name: f for f in dataclasses.fields(cls.Config)}
        assert "every_steps" in fields, name
        assert all(f.default is not dataclasses.MISSING for f in fields.values()), name


def test_no_task_module_loops_over_a_data_iterator():
    """The eval loops live in attn_jax/eval/: no `for ... in ...iterator(...)` in a task."""
    root = pathlib.Path(attn_jax.tasks.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.For):
                source = ast.unparse(node.iter)
                assert "iterator" not in source and "batches" not in source, (path, source)


def test_old_configs_are_upgraded():
    """A config.json from before the evaluators (decode keys in data, init_from, freeze) reads
    in today's layout."""
    old = {"task": "seq2seq", "data": {"dataset": "dates", "beam_size": 4,
                                       "decode_splits": ["test"], "init_from": "runs/x",
                                       "freeze": ["encoder/.*"]},
           "optim": {"name": "adam"}}
    new = upgrade_config(old)
    assert new["data"] == {"dataset": "dates"}
    assert new["evals"]["decode"] == {"type": "decode", "beam_size": 4, "splits": ["test"]}
    assert new["evals"]["loss"] == {"type": "loss"}
    assert new["init"] == {"path": "runs/x", "step": -1}
    assert new["optim"]["lr_mults"] == [("encoder/.*", 0.0)]
    assert upgrade_config(new) == new


def test_spm_lm_with_num_epochs_runs(tmp_path):
    """SentencePiece + num_epochs: the trainer counts the training windows with the tokenizer,
    which it trains into the workdir first (this raised before)."""
    config = tiny_config("lm", str(tmp_path))
    config.data.update(tokenizer="sentencepiece", vocab_size=48)
    config.evals = dict(loss=dict(type="loss"))
    config.total_steps = 0
    config.num_epochs = 0.02
    state, final = train_and_evaluate(config, str(tmp_path / "run"), jax.devices()[:1])
    assert int(state.step) >= 1 and "validation_bits_per_byte" in final
    assert os.path.exists(tmp_path / "run" / "spm.model")


class _BoundSpy:
    """A task for `bits_per_dim`: a split of 100 images, each image's 'bound' its index; it
    records the batch shapes the bound was traced with and how many rows it was called on."""

    bpd_scan_steps = 1

    def __init__(self):
        self.traced, self.rows = [], 0

    def eval_iterator(self, split, *, process_index, process_count, batch_size):
        import numpy as np

        for start in range(0, 100, batch_size):
            index = np.arange(start, start + batch_size)
            self.rows += batch_size
            yield {"image": np.broadcast_to(index[:, None, None, None], (batch_size, 2, 2, 1))
                   .astype(np.float32), "mask": (index < 100).astype(np.float32)}

    def bpd_terms(self, params, x0, rng):
        self.traced.append(x0.shape[0])
        return {"bpd": x0[:, 0, 0, 0]}


@pytest.mark.parametrize("devices, rows", [(1, 3), (2, 4)])
def test_bits_per_dim_runs_the_bound_on_the_examples_asked_for_only(devices, rows):
    """max_examples=3 with batch_size=64 (sample.py --bpd-examples 3): one batch of 3 rows (4 on
    2 devices, so that it splits), not 64; the mean is over exactly images 0, 1, 2."""
    from attn_jax.eval.evaluators import bits_per_dim
    from attn_jax.train import sharding as shd

    spy = _BoundSpy()
    mesh = shd.make_mesh({"data": devices}, jax.devices()[:devices]) if devices > 1 else None
    out = bits_per_dim(spy, {}, max_examples=3, batch_size=64, mesh=mesh)
    assert spy.traced == [rows] and spy.rows == rows
    assert out == {"bpd": 1.0, "num_examples": 3, "num_rows": rows}
