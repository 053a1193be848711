"""Truncated BPTT and the stateful LM (attn_jax/tasks/tbptt.py, the lm task with
`config.data.stateful`, `lm_windows.lm_track_dataset`, the trainer's `CarryState`).

References: the gradient's zeros against the same computation without truncation (where they
are not zero); carries and logits against one untruncated forward pass over the whole sequence;
a reset against a forward pass over the document alone; the track data against the stream sliced
by hand; a killed and resumed run against the same run straight through.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from attn_jax.data import lm_windows
from attn_jax.data.tokenizers import EOS_ID, PAD_ID
from attn_jax.models import build_model
from attn_jax.tasks.lm import LanguageModelTask
from attn_jax.tasks.tbptt import truncated_bptt
from attn_jax.train.loop import CarryState, make_train_step, plan_run
from attn_jax.train.restore import checkpoint_steps
from tiny_configs import tiny_config
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, T, CHUNK, V = 2, 12, 4, 11


@pytest.fixture(scope="module")
def lstm():
    model = build_model("lstm_lm", vocab_size=V, emb_dim=8, hidden_dim=8, num_layers=2)
    ids = jax.random.randint(jax.random.PRNGKey(0), (B, T), 3, V)
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x,
                          model.init(jax.random.PRNGKey(1), ids)["params"],
                          is_leaf=lambda x: hasattr(x, "names"))
    return model, params, ids


def _run(model, params, x, carry, reset, chunk):
    """Logits [T / chunk, B, chunk, V] and the final carry of `model.run` under truncated BPTT."""
    def step(carry, xs, k):
        logits, carry = model.apply({"params": params}, xs["x"], carry, xs["reset"],
                                    method="run")
        return carry, logits

    carry, logits = truncated_bptt(step, carry, {"x": x, "reset": reset}, chunk)
    return logits, carry


def _close(a, b, what):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7,
                                   err_msg=what)


# ------------------------------------------------------------------ (a) gradients stop
def test_the_last_chunks_loss_has_exactly_zero_gradient_in_earlier_chunks(lstm):
    model, params, ids = lstm
    x = model.apply({"params": params}, ids, method="embed")
    weights = jax.random.normal(jax.random.PRNGKey(2), (B, CHUNK, V))
    no_reset = jnp.zeros((B, T), bool)

    def last_chunk_loss(x, chunk):
        logits, _ = _run(model, params, x, model.initial_carry(B), no_reset, chunk)
        last = logits.swapaxes(0, 1).reshape(B, T, V)[:, -CHUNK:]  # the last CHUNK steps
        return jnp.sum(last * weights)

    grad = np.asarray(jax.grad(last_chunk_loss)(x, CHUNK))
    per_step = np.abs(grad).sum(-1)  # [B, T]
    assert np.all(per_step[:, :T - CHUNK] == 0.0), per_step  # earlier chunks: exactly zero
    assert np.all(per_step[:, T - CHUNK:] > 0.0), per_step   # within the chunk: not
    untruncated = np.abs(np.asarray(jax.grad(last_chunk_loss)(x, T))).sum(-1)
    assert np.all(untruncated[:, :T - CHUNK] > 0.0)  # the zeros are the truncation's doing
    np.testing.assert_allclose(untruncated[:, T - CHUNK:], per_step[:, T - CHUNK:], rtol=1e-5)


# ------------------------------------------------------------------ (b) the carried state
def test_chunk_by_chunk_equals_one_untruncated_pass(lstm):
    model, params, ids = lstm
    zero = model.initial_carry(B)
    logits, carry = model.apply({"params": params}, ids, zero, method="apply_with_carry")
    # Chunk by chunk from Python, the carry handed on by hand...
    c, pieces = zero, []
    for k in range(0, T, CHUNK):
        out, c = model.apply({"params": params}, ids[:, k:k + CHUNK], c,
                             method="apply_with_carry")
        pieces.append(out)
    _close(c, carry, "carry, chunk by chunk")
    _close(jnp.concatenate(pieces, 1), logits, "logits, chunk by chunk")
    # ... and under truncated_bptt's scan (the stop_gradient changes no value).
    x = model.apply({"params": params}, ids, method="embed")
    scanned, c = jax.jit(lambda x: _run(model, params, x, zero, jnp.zeros((B, T), bool),
                                        CHUNK))(x)
    _close(c, carry, "carry, truncated_bptt")
    _close(scanned.swapaxes(0, 1).reshape(B, T, V), logits, "logits, truncated_bptt")
    assert jax.tree.structure(carry) == jax.tree.structure(zero)
    assert all(leaf.shape == (B, 8) and leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(c))


def _task(data_dir, **data):
    config = tiny_config("lstm_lm", data_dir)
    config.model.dropout_rate = 0.0
    config.data.update(data)
    task = LanguageModelTask(config)
    task.validate()
    return config, task


def test_the_carry_across_train_steps_is_one_pass_over_each_track(tmp_path):
    """Two steps of the task's loss, the carry handed from the first to the second, end in the
    state of one untruncated pass (with the eos resets) over each row's 2 * seq_len tokens."""
    config, task = _task(str(tmp_path))
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x,
                          task.init_params(jax.random.PRNGKey(0)),
                          is_leaf=lambda x: hasattr(x, "names"))
    it = task.train_iterator(seed=0, process_index=0, process_count=1)
    batches = [next(it) for _ in range(2)]
    loss = jax.jit(task.loss)
    carry = task.init_carry()
    for step, batch in enumerate(batches):
        _, (metrics, carry) = loss(params, batch, jax.random.PRNGKey(3), step, carry=carry)
    ids = np.concatenate([b["inputs"] for b in batches], 1)
    assert (ids == EOS_ID).any()  # a document starts inside: the resets are exercised
    _, want = task.model.apply({"params": params}, ids, task.model.initial_carry(len(ids)),
                               ids == EOS_ID, method="apply_with_carry")
    _close(carry, want, "carry after two steps")


# ------------------------------------------------------------------ (c) resets
def test_reset_zeroes_the_carry_exactly_where_a_document_starts(lstm):
    model, params, _ = lstm
    doc_a, doc_b = [5, 6, 7, 8, 9], [4, 10, 3, 5, 6, 7]
    ids = jnp.asarray([[EOS_ID, *doc_a, EOS_ID, *doc_b]] * B)
    start = 1 + len(doc_a)  # the eos that starts doc b
    reset = ids == EOS_ID

    def apply(ids, reset):
        return model.apply({"params": params}, ids, model.initial_carry(B), reset,
                           method="apply_with_carry")

    logits, carry = apply(ids, reset)
    alone, alone_carry = apply(ids[:, start:], None)  # doc b by itself, from the zero state
    _close(logits[:, start:], alone, "logits from the reset on")
    _close(carry, alone_carry, "final carry")
    kept, _ = apply(ids, None)
    _close(logits[:, :start], kept[:, :start], "logits before the reset")
    assert np.abs(np.asarray(kept[:, start:] - alone)).max() > 1e-3  # control: no reset differs


# ------------------------------------------------------------------ (d) the track data
def _stream(n):
    return (3 + np.arange(n) % 250).astype(np.int32)


def test_track_rows_continue_the_same_rows_of_the_step_before():
    stream, batch, seq_len = _stream(47), 4, 5
    length = len(stream) // batch
    ds = lm_windows.lm_track_dataset(stream, seq_len=seq_len, global_batch_size=batch,
                                     process_index=0, process_count=1)
    cycled = np.concatenate([stream] * 4)  # the stream read round and round
    steps = [ds[s] for s in range(12)]  # 12 * 5 tokens: more than one pass of each track
    for s, b in enumerate(steps):
        for r in range(batch):
            start = r * length + s * seq_len
            np.testing.assert_array_equal(b["inputs"][r], cycled[start:start + seq_len])
            np.testing.assert_array_equal(b["targets"][r], cycled[start + 1:start + seq_len + 1])
        if s:
            np.testing.assert_array_equal(b["inputs"][:, 0], steps[s - 1]["targets"][:, -1])
            np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    hosts = [lm_windows.lm_track_dataset(stream, seq_len=seq_len, global_batch_size=batch,
                                         process_index=p, process_count=2) for p in range(2)]
    for s in (0, 7, 11):
        for key in ("inputs", "targets"):
            np.testing.assert_array_equal(
                np.concatenate([h[s][key] for h in hosts]), steps[s][key])
    np.testing.assert_array_equal(hosts[1][3]["inputs"], steps[3]["inputs"][2:])


def test_eval_tracks_cover_every_target_once_and_each_host_reads_its_rows():
    stream, batch, seq_len = _stream(50), 4, 3
    tracks = lm_windows.eval_tracks(stream, seq_len, batch)
    assert tracks.shape[1] - 1 == 15  # 13 targets per track rounded up to 5 chunks of 3
    targets = tracks[:, 1:].reshape(-1)
    np.testing.assert_array_equal(targets[targets != PAD_ID], stream[1:])
    np.testing.assert_array_equal(tracks[1:, 0], tracks[:-1, -1])  # consecutive tracks
    hosts = [lm_windows.lm_track_eval_dataset(stream, seq_len=seq_len, global_batch_size=batch,
                                              process_index=p, process_count=2) for p in range(2)]
    assert len(hosts[0]) == 1
    np.testing.assert_array_equal(np.concatenate([h[0]["inputs"] for h in hosts]),
                                  tracks[:, :-1])


# ------------------------------------------------------------------ the trainer's carry
class RunningSumTask:
    """A carry of per-row running sums of x, and loss = mean((x @ w - y)^2) plus a term
    that reads the carry (so a carry handed to the wrong row changes the loss)."""

    def loss(self, params, batch, rng, step, carry=None):
        err = batch["x"] @ params["w"] - batch["y"]
        loss = jnp.mean(err ** 2) + jnp.mean(carry * batch["y"])
        return loss, ({"carry_mean": jnp.mean(carry)}, carry + batch["x"].sum(-1))


@pytest.mark.parametrize("accum", [1, 3])
def test_the_trainer_hands_each_rows_carry_on_to_the_same_row(accum):
    """Reference: the running sums and the SGD update in NumPy; with gradient accumulation the
    carry is split into micro-batches of rows k, k + 3, ... and put back in row order."""
    rng = np.random.default_rng(0)
    tx, w = optax.sgd(0.1), np.ones(3, np.float32)
    state = CarryState(step=jnp.zeros((), jnp.int32), params={"w": jnp.asarray(w)},
                       opt_state=tx.init({"w": jnp.asarray(w)}), ema_params=None,
                       rng=jax.random.PRNGKey(0), carry=jnp.zeros(12))
    fn = jax.jit(make_train_step(RunningSumTask(), tx, optax.constant_schedule(0.1), accum, 0.0))
    total = np.zeros(12)
    for _ in range(2):
        batch = {"x": rng.normal(size=(12, 3)).astype(np.float32),
                 "y": rng.normal(size=12).astype(np.float32)}
        want_loss = np.mean((batch["x"] @ w - batch["y"]) ** 2) + np.mean(total * batch["y"])
        w = w - 0.1 * 2 / 12 * batch["x"].T @ (batch["x"] @ w - batch["y"])
        total = total + batch["x"].sum(-1)
        state, metrics = fn(state, batch)
        np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5)
        np.testing.assert_allclose(state.carry, total, rtol=1e-5)
    np.testing.assert_allclose(state.params["w"], w, rtol=1e-5)
    assert isinstance(state, CarryState) and int(state.step) == 2


# ------------------------------------------------------------------ (e) kill and resume
def _train_py(workdir, data_dir, *overrides):
    env = {**os.environ, "XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu",
           "ATTN_JAX_TINY_DATA_DIR": data_dir}
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"),
         f"--config={os.path.join(ROOT, 'tests', 'tiny_configs.py')}:lstm_lm",
         f"--workdir={workdir}", "--config.debug.log_batches=True", *overrides],
        env=env, capture_output=True, text=True, timeout=300)


def _saved_state(workdir):
    step = max(checkpoint_steps(workdir))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        state = checkpointer.restore(
            os.path.join(workdir, "checkpoints", str(step)),
            args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
    return step, {jax.tree_util.keystr(k): np.asarray(v)
                  for k, v in jax.tree_util.tree_leaves_with_path(state)}


def test_kill_and_resume_of_the_stateful_lm_equals_a_straight_run(tmp_path):
    """Killed (SIGKILL) after its step-2 checkpoint and resumed: the same batches, bit-identical
    parameters, optimizer state and carry at step 4 as a straight run."""
    data_dir, straight, resumed = str(tmp_path / "data"), str(tmp_path / "a"), str(tmp_path / "b")
    result = _train_py(straight, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    killed = _train_py(resumed, data_dir, "--config.debug.kill_after_step=2")
    assert killed.returncode == -9, killed.stderr[-3000:]
    result = _train_py(resumed, data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming at step 2" in result.stdout
    assert open(os.path.join(resumed, "batches.p0.jsonl")).read() == open(
        os.path.join(straight, "batches.p0.jsonl")).read()
    (step_a, a), (step_b, b) = _saved_state(straight), _saved_state(resumed)
    assert step_a == step_b == 4 and a.keys() == b.keys()
    carry = [k for k in a if k.startswith("['carry']")]
    assert len(carry) == 4 and all(a[k].shape == (16, 16) for k in carry)  # 2 layers x (c, h)
    assert all(np.abs(a[k]).max() > 0 for k in carry)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ------------------------------------------------------------------ (f) bad input
@pytest.mark.parametrize("change, match", [
    (dict(tbptt_chunk=5), r"config.data.tbptt_chunk=5 must be >= 1 and divide the sequence "
                          r"length 32"),
    (dict(tbptt_chunks=8), r"unknown key 'tbptt_chunks' \(did you mean 'tbptt_chunk'\?\)"),
    ("gpt", r"stateful=True.*config.model.name='decoder_lm'.*RecurrentLM.*'initial_carry'"),
    (dict(batch_size=512), r"cannot be cut into 512 tracks"),
])
def test_bad_stateful_configs_fail_before_compiling(change, match, tmp_path):
    config = tiny_config("lstm_lm", str(tmp_path))
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    with config.unlocked():
        if change == "gpt":
            config.model = tiny_config("lm", str(tmp_path)).model
        elif "batch_size" in change:
            config.batch_size = change["batch_size"]
        else:
            config.data.update(change)
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *_, **__: events.append(name) if "backend_compile" in name else None)
    with pytest.raises(ValueError, match=match):
        plan_run(config, str(tmp_path / "run"), jax.devices()[:1])
    assert not events
    assert not os.path.exists(tmp_path / "run")
