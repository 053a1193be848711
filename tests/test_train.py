"""The shared trainer (attn_jax.train.loop): sharding equivalence, resume, multi-process, errors.

The reference for every sharded or resumed run is the same run on one device, straight through.
Tasks other than classification reuse these checks through `TASK_CONFIGS`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from attn_jax.train.loop import train_and_evaluate
from attn_jax.train.restore import checkpoint_steps, load_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


from tiny_configs import TASK_KINDS, tiny_config  # noqa: E402
from xla_env import xla_flags

TASK_CONFIGS = {kind: (lambda d, k=kind: tiny_config(k, d)) for kind in TASK_KINDS}


def _losses(workdir: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["loss"] for r in rows if r["split"] == "train"]


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_same_run(workdir, state, final, ref_dir, ref_state, ref_eval, name, after=0):
    """Losses (of the steps after `after`), parameters, EMA parameters, eval metrics and the
    final sample grids (the diffusion task's PNGs) equal the reference's."""
    np.testing.assert_allclose(_losses(workdir)[after:], _losses(ref_dir)[after:], rtol=2e-5,
                               err_msg=name)
    trees = [("params", state.params, ref_state.params)]
    if ref_state.ema_params is not None:
        trees.append(("ema", state.ema_params, ref_state.ema_params))
    for what, tree, ref_tree in trees:
        ref_flat = _flat(ref_tree)
        for key, value in _flat(tree).items():
            np.testing.assert_allclose(value, ref_flat[key], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{name}: {what}{key}")
    for key in ref_eval:
        np.testing.assert_allclose(final[key], ref_eval[key], rtol=1e-4, err_msg=name)
    grids = os.path.join(ref_dir, "samples", f"step_{int(ref_state.step)}.png")
    if os.path.exists(grids):
        from PIL import Image

        got = np.asarray(Image.open(grids.replace(ref_dir, workdir)), np.int16)
        np.testing.assert_allclose(got, np.asarray(Image.open(grids), np.int16), atol=1,
                                   err_msg=f"{name}: sample grid")  # float noise may move a level


@pytest.mark.parametrize("task", sorted(TASK_CONFIGS))
def test_every_mesh_and_a_resume_onto_another_mesh_equal_one_device(task, data_dir, tmp_path):
    """For every task, a step-2 checkpoint resumed on a 2x2x2 mesh (data, FSDP and tensor
    parallel at once) continues where it stopped and ends where the straight 1-device run ends,
    with its parameters really split. The checkpoint comes from the 1-device run itself, except
    for the ViT, which first checks data, FSDP and tensor parallelism alone on 8 devices against
    1 device and resumes the 8-way data-parallel run's checkpoint: resharding on restore is the
    trainer's, the same for every family, so the other families skip those three compilations."""
    config = TASK_CONFIGS[task](data_dir)
    config.checkpoint.every_steps = 2
    config.checkpoint.max_to_keep = 4
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    ref_dir = str(tmp_path / "one")
    ref_state, ref_eval = train_and_evaluate(config, ref_dir, jax.devices()[:1])
    ref_losses = _losses(ref_dir)
    assert len(ref_losses) == config.total_steps == 4 and np.all(np.isfinite(ref_losses))
    if task == "classification":  # 4 noisy batches: judge learning on the test set, against
        assert ref_eval["test_loss"] < np.log(10)  # the uniform guess over 10 classes
    else:
        assert ref_losses[-1] < ref_losses[0]
    meshes = dict(dp=(8, 1, 1), fsdp=(1, 8, 1), tp=(1, 1, 8)) if task == "classification" else {}
    for name, mesh in meshes.items():
        config.mesh = dict(zip(("data", "fsdp", "tensor"), mesh))
        state, final = train_and_evaluate(config, str(tmp_path / name))
        _assert_same_run(str(tmp_path / name), state, final, ref_dir, ref_state, ref_eval, name)
        if task != "classification":
            continue
        if name == "fsdp":  # parameters really are split 8 ways
            kernel = state.params["Transformer"]["encoderblock_0"]["mlp"]["Dense_0"]["kernel"]
            assert kernel.sharding.shard_shape(kernel.shape)[0] == kernel.shape[0] // 8
        if name == "tp":
            kernel = state.params["Transformer"]["encoderblock_0"]["self_attention"]["query"]["kernel"]
            assert kernel.sharding.shard_shape(kernel.shape)[1] == 1  # 8 heads over 8 devices

    # The data-parallel (ViT) or 1-device run as it stood after step 2: later checkpoints and
    # metrics gone.
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / ("dp" if meshes else "one"), moved)
    for step in checkpoint_steps(str(moved)):
        if step > 2:
            shutil.rmtree(moved / "checkpoints" / str(step))
    rows = [json.loads(line) for line in open(moved / "metrics.jsonl")]
    with open(moved / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= 2)
    config.mesh = dict(data=2, fsdp=2, tensor=2)
    state, final = train_and_evaluate(config, str(moved))
    assert int(state.step) == 4
    assert [r["step"] for r in map(json.loads, open(moved / "metrics.jsonl"))
            if r["split"] == "train"] == [1, 2, 3, 4]
    if task == "classification":
        kernel = state.params["Transformer"]["encoderblock_0"]["mlp"]["Dense_0"]["kernel"]
        assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    split = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(state.params)
             if "fsdp" in jax.tree.leaves(tuple(v.sharding.spec))
             and v.sharding.shard_shape(v.shape) != v.shape]
    assert split, f"{task}: no parameter is split over the fsdp axis"
    _assert_same_run(str(moved), state, final, ref_dir, ref_state, ref_eval, "resumed", after=2)


def test_gradient_accumulation_equals_the_full_batch(data_dir, tmp_path):
    """4 micro-batches of 8 give the full-batch-32 update (no dropout, so exactly the same maths)."""
    config = tiny_config("classification", data_dir)
    config.total_steps = 2
    config.mesh = dict(data=2, fsdp=1, tensor=1)
    full, _ = train_and_evaluate(config, str(tmp_path / "full"), jax.devices()[:2])
    config.grad_accum_steps = 4
    accum, _ = train_and_evaluate(config, str(tmp_path / "accum"), jax.devices()[:2])
    np.testing.assert_allclose(_losses(str(tmp_path / "accum")), _losses(str(tmp_path / "full")),
                               rtol=1e-5)
    for key, value in _flat(accum.params).items():
        np.testing.assert_allclose(value, _flat(full.params)[key], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ train.py as a process
def _train_py(workdir, data_dir, *overrides, env=None, processes=None, check=True):
    args = [sys.executable, os.path.join(ROOT, "train.py"),
            f"--config={os.path.join(ROOT, 'tests', 'tiny_configs.py')}",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *overrides]
    full_env = {**os.environ, "XLA_FLAGS": xla_flags(2),
                "JAX_PLATFORMS": "cpu", **(env or {})}
    return subprocess.run(args, env=full_env, capture_output=True, text=True, timeout=300,
                          check=False) if not check else _checked(args, full_env)


def _checked(args, env):
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _batches(workdir, process=0):
    with open(os.path.join(workdir, f"batches.p{process}.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final_params(workdir):
    _, params = load_params(workdir)
    return max(checkpoint_steps(workdir)), _flat(params)


@pytest.mark.slow
def test_kill_and_resume_equals_a_straight_run(data_dir, tmp_path):
    """2N steps straight vs N steps, SIGKILL, resume N more: same parameters, same batches."""
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    _train_py(straight, data_dir, "--config.debug.log_batches=True")
    killed = _train_py(resumed, data_dir, "--config.debug.log_batches=True",
                       "--config.debug.kill_after_step=4", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]  # really killed, not a clean exit
    assert [b["step"] for b in _batches(resumed)] == [1, 2, 3, 4]
    # A save that a crash interrupted (no commit, tmp name) must be skipped with a warning.
    partial = os.path.join(resumed, "checkpoints", "6.orbax-checkpoint-tmp-1234567")
    os.makedirs(os.path.join(partial, "state"))
    result = _train_py(resumed, data_dir, "--config.debug.log_batches=True")
    assert "resuming at step 4" in result.stdout
    assert "interrupted while saving" in result.stderr
    assert _batches(resumed) == _batches(straight)  # steps 5..8 saw exactly the same data
    step_a, params_a = _final_params(straight)
    step_b, params_b = _final_params(resumed)
    assert step_a == step_b == 8
    for key in params_a:
        np.testing.assert_array_equal(params_a[key], params_b[key], err_msg=key)


@pytest.mark.slow
def test_crash_during_an_async_save_resumes_from_the_previous_checkpoint(data_dir, tmp_path):
    """SIGKILL right after an asynchronous save was issued: the run resumes and finishes."""
    workdir = str(tmp_path / "run")
    killed = _train_py(workdir, data_dir, "--config.checkpoint.async_save=True",
                       "--config.debug.kill_after_save_step=4", check=False)
    assert killed.returncode == -9
    result = _train_py(workdir, data_dir, "--config.checkpoint.async_save=True")
    assert "resuming at step 2" in result.stdout or "resuming at step 4" in result.stdout
    assert _final_params(workdir)[0] == 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_process(data_dir, tmp_path):
    """jax.distributed over localhost (CPU collectives), 1 device each, same global batch, as one
    process with 2 devices: same losses; each host read its own half of every batch."""
    single = str(tmp_path / "single")
    _train_py(single, data_dir, "--config.debug.log_batches=True")
    multi = str(tmp_path / "multi")
    port = _free_port()
    env = {"XLA_FLAGS": xla_flags(1)}
    procs = [subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "train.py"),
         f"--config={os.path.join(ROOT, 'tests', 'tiny_configs.py')}", f"--workdir={multi}",
         f"--config.data.data_dir={data_dir}", "--config.debug.log_batches=True",
         f"--coordinator=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert "2 process(es)" in outs[0][0]
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
    hosts = [_batches(multi, 0), _batches(multi, 1)]
    assert all(a["label"] != b["label"] for a, b in zip(*hosts))  # disjoint halves


# ------------------------------------------------------------------ bad configs
def _compile_events():
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *_, **__: events.append(name) if "compile" in name else None)
    return events


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update(batch_size=30), "batch_size=30 is not divisible by the data-parallel size 8"),
    (lambda c: c.model.update(patch_size=3), "patch"),
    (lambda c: c.data.update(name="fashion_mnist_idx"), "dataset-fashion-mnist"),
    (lambda c: c.data.update(flipp=True), "unknown key .flipp. \\(did you mean .flip."),
    (lambda c: c.optim.update(schedule="cosin"), "optim.schedule"),
    (lambda c: c.model.update(hidden_sise=3), "hidden_sise"),
])
def test_bad_config_fails_before_compiling_and_leaves_the_workdir_alone(change, match, data_dir,
                                                                         tmp_path, monkeypatch):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("precious")
    before = sorted(os.listdir(workdir))
    config = tiny_config("classification", data_dir)
    config.mesh = dict(data=8, fsdp=1, tensor=1)
    with config.unlocked():
        change(config)
    if "fashion" in match:  # an empty data_dir, and no IDX files where the builder looks
        config.data.data_dir = str(tmp_path / "empty_tfds")
        monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "no-such-dir"))
    events = _compile_events()
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train_and_evaluate(config, str(workdir))
    assert not [e for e in events if "backend_compile" in e], events
    jax.jit(lambda x: x + 1)(np.float32(len(match)))  # control: a compile is seen by the listener
    assert [e for e in events if "backend_compile" in e]
    assert sorted(os.listdir(workdir)) == before
    assert (workdir / "keep.txt").read_text() == "precious"


def test_unknown_config_key_on_the_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={tmp_path}",
         "--config.optim.learning_rat=0.1"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "learning_rat" in result.stderr and "learning_rate" in result.stderr
    assert os.listdir(tmp_path) == []


def test_training_features_and_determinism(data_dir, tmp_path):
    """bfloat16 compute, mixup, label smoothing, dropout and EMA together: a run is a function of
    its seed (two runs agree bit for bit, another seed differs), and logs reach every sink."""
    config = tiny_config("classification", data_dir)
    config.mesh = dict(data=2, fsdp=1, tensor=1)
    config.dtype = "bfloat16"
    config.ema_decay = 0.5
    config.label_smoothing = 0.1
    config.data.mixup_alpha = 0.4
    config.model.dropout_rate = 0.2
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        config.seed = seed
        state, final = train_and_evaluate(config, str(tmp_path / name), jax.devices()[:2])
        runs[name] = (_losses(str(tmp_path / name)), _flat(state.params), final)
    assert runs["a"][0] == runs["b"][0]
    assert runs["a"][0] != runs["c"][0]
    assert all(np.isfinite(runs["a"][0]))
    leaf = next(iter(runs["a"][1].values()))
    assert leaf.dtype == np.float32  # parameters stay float32 under bfloat16 compute
    assert {"test_accuracy", "ema_test_accuracy", "test_loss"} <= set(runs["a"][2])
    events = os.listdir(tmp_path / "a" / "tensorboard")
    assert events and all(os.path.getsize(tmp_path / "a" / "tensorboard" / e) > 0 for e in events)


def test_small_cpu_inits_compile_unoptimised_and_draw_the_same_numbers(data_dir, tmp_path):
    """The initial state compiled at -O0 (what a small model on a CPU gets) equals the state from
    XLA's default optimised (-O3) compilation of the same program, the reference, to float
    rounding (integer leaves bit for bit).
    Large models and other platforms keep the default."""
    import flax.linen as nn

    from attn_jax.train.loop import SMALL_INIT_PARAMS, _plan, init_compiler_options

    config = tiny_config("classification", data_dir)  # uniform, normal and truncated-normal draws
    config.mesh = dict(data=2, fsdp=1, tensor=1)
    plan = _plan(config, str(tmp_path), jax.devices()[:2])
    options = init_compiler_options(plan.mesh, plan.n_params)
    assert options == {"xla_backend_optimization_level": 0}
    assert init_compiler_options(plan.mesh, SMALL_INIT_PARAMS) == {}
    lowered = jax.jit(lambda: nn.unbox(plan.init_state(jax.random.PRNGKey(3))),
                      out_shardings=plan.state_sh).lower()
    # XLA's defaults spelled out: the test processes default to -O0 (tests/xla_env.py).
    optimised = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}
    fast, optimised = (jax.device_get(lowered.compile(o)()) for o in (options, optimised))
    pairs = zip(jax.tree_util.tree_leaves_with_path(fast), jax.tree.leaves(optimised))
    for (path, a), b in pairs:  # the same draws; -O3 rounds some normals' arithmetic 1 ulp apart
        a, b, name = np.asarray(a), np.asarray(b), jax.tree_util.keystr(path)
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert not os.listdir(tmp_path)  # planning writes nothing
