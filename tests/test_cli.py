"""train.py as a user meets it (issue 16): one line and status 2 for each mistake a user makes, a
dry run, every declared key settable, short runs, reruns that refuse a changed config.

Each user error runs train.py as a process and checks the exit status (2), that the one line on
stderr names the problem and the fix, that stderr holds no traceback, and that the workdir is as
it was (byte for byte, or still absent). Checks that need no process boundary (the clipping of a
short run, the resume policy, the README's key listing) run in-process. Every run is the tiny
config (tests/tiny_configs.py:process: 8 steps) and shares one persistent compilation cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import pytest

from attn_jax.train import safety
from attn_jax.train.config import fill_declared_keys, keys_reference
from attn_jax.train.loop import fit_to_length, plan_run, train_and_evaluate
from attn_jax.train.restore import checkpoint_steps, load_config
from tiny_configs import set_keys, tiny_config
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
KEYS_BEGIN, KEYS_END = "<!-- config-keys: begin -->", "<!-- config-keys: end -->"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny(data_dir, **changes) -> ml_collections.ConfigDict:
    config = tiny_config("process", data_dir)
    return set_keys(config, changes)


def hashes(path) -> dict[str, str]:
    return {os.path.relpath(os.path.join(r, f), path):
            hashlib.sha256(open(os.path.join(r, f), "rb").read()).hexdigest()
            for r, _, fs in os.walk(path) for f in fs}


def train_py(workdir, data_dir, jax_cache, *args, config="tests/tiny_configs.py:process",
             env=None):
    argv = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}"]
    if config:
        argv.append(f"--config={os.path.join(ROOT, config)}")
    if data_dir:
        argv += [f"--config.data.data_dir={data_dir}", "--config.checkpoint.max_to_keep=4"]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
        env={**os.environ, "XLA_FLAGS": xla_flags(8),
             "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": jax_cache,
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", **(env or {})})


def assert_one_line_error(result, pattern: str) -> str:
    """Status 2, no traceback, and the last stderr line `error: ...` matching `pattern`."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(pattern, last), last
    assert "\\n" not in last and "\\'" not in last, last  # no escaped message
    return last


@pytest.fixture(scope="module")
def finished(data_dir, jax_cache, tmp_path_factory):
    """A finished 8-step run (checkpoints 2, 4, 6, 8 kept) and its final metrics, in-process."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    _, final = train_and_evaluate(tiny(data_dir, **{"checkpoint.max_to_keep": 4}), str(workdir))
    return workdir, final


@pytest.fixture
def copy_of(finished, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    return workdir


# ------------------------------------------------------------------ mistakes on the command line
@pytest.mark.parametrize("args, pattern", [
    (["--config.batch_szie=3"],
     r"config has no key 'batch_szie' \(did you mean --config\.batch_size\?\); its keys: "),
    (["--config.data.flipp=True"],
     r"config\.data has no key 'flipp' \(did you mean --config\.data\.flip\?\)"),
    (["--config.batch_size=many"],
     r"--config\.batch_size=many: invalid literal .* \(config\.batch_size: int, now 32\)"),
    (["--config=configs/no_such_config.py"],
     r"config file 'configs/no_such_config\.py' does not exist .*: pass --config=PATH, e\.g\. "
     r"one of the configs in .*configs: .*default\.py"),
    (["--config=tests/tiny_configs.py:nonsense"],
     r"config file tests/tiny_configs\.py:nonsense failed to load: ValueError: tiny config "
     r"'nonsense' is unknown; choose one of"),
    (["--workdirr=/tmp/x"], r"Unknown command line flag 'workdirr'\. Did you mean: workdir"),
    (["--config.evals.eval.every_steps=4"],
     r"config\.evals is empty, so the task's default evaluators run .*: name the evaluator in "
     r"the config file"),
], ids=["typo", "data-typo", "value", "config-path", "config-arg", "flag", "default-evals"])
def test_a_command_line_mistake_is_one_line_and_status_2(args, pattern, data_dir, jax_cache,
                                                         tmp_path):
    # A config path of its own is given relative to the repository (train.py's cwd here).
    config = None if args[0].startswith("--config=") else "tests/tiny_configs.py:process"
    result = train_py(tmp_path / "run", data_dir, jax_cache, *args, config=config)
    assert_one_line_error(result, pattern)
    assert not os.path.exists(tmp_path / "run")


def test_the_traceback_comes_with_verbose(data_dir, jax_cache, tmp_path):
    result = train_py(tmp_path / "run", data_dir, jax_cache, "--config.batch_szie=3",
                      env={"ATTN_JAX_VERBOSE": "1"})
    assert result.returncode == 2 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --config.batch_szie")


@pytest.mark.parametrize("args, env, pattern", [
    (["--config.data.data_dir={tmp}/no/such/dir"], {},
     r"config\.data\.data_dir='.*/no/such/dir': neither it nor its parent is a directory: "
     r"point it at .* or set it to ''"),
    (["--config.data.source_dir={tmp}/nowhere"], {},
     r"config\.data\.source_dir='.*/nowhere' is not a directory"),
    (["--config.data.name=fashion_mnist_idx", "--config.data.data_dir={tmp}"],
     {"FASHION_MNIST_DIR": "/no/such/dir"},
     r"does not exist; install the Debian package \(`apt-get install dataset-fashion-mnist`.*"
     r"--config\.data\.source_dir=DIR"),
], ids=["data_dir", "source_dir", "missing-data"])
def test_missing_data_is_one_line_and_status_2(args, env, pattern, jax_cache, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    result = train_py(tmp_path / "run", "", jax_cache, *args, env=env)
    assert_one_line_error(result, pattern)
    assert not os.path.exists(tmp_path / "run")


def test_sigint_before_training_starts_is_one_line(data_dir, jax_cache, tmp_path):
    """Ctrl-C while train.py reads its config or imports: no KeyboardInterrupt traceback, and the
    status of a SIGINT. (Ctrl-C while training saves the step and names the resume command:
    tests/test_faults.py.)"""
    argv = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={tmp_path / 'run'}",
            f"--config={ROOT}/tests/tiny_configs.py:process", f"--config.data.data_dir={data_dir}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    time.sleep(2.0)  # Python is up; the task imports and the model trace take several seconds
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: SIGINT before training started")
    assert not os.path.exists(tmp_path / "run")


# ------------------------------------------------------------------ the workdir on a rerun
def test_a_workdir_of_another_model_names_the_first_mismatch(copy_of, data_dir, jax_cache):
    before = hashes(copy_of)
    result = train_py(copy_of, data_dir, jax_cache, "--config.model.hidden_size=16")
    assert_one_line_error(
        result, rf"workdir {copy_of} holds checkpoint 8 of another model \(first mismatch: "
                r"params/\S+ stored \([\d, ]*\b32\b[\d, ]*\), config \([\d, ]*\b16\b[\d, ]*\); "
                r"\d+ more arrays "
                r"differ\); the config differs from the saved one in model\.hidden_size 32 -> "
                rf"16: use a new --workdir, or the config saved in {copy_of}/config\.json")
    assert hashes(copy_of) == before


def test_a_changed_config_on_resume_is_refused_naming_the_keys(copy_of, data_dir, jax_cache):
    before = hashes(copy_of)
    result = train_py(copy_of, data_dir, jax_cache, "--config.optim.learning_rate=0.5",
                      "--config.total_steps=16", "--config.log_every_steps=4")
    assert_one_line_error(
        result, r"holds checkpoint 8 of a run with another config: optim\.learning_rate 0\.01 -> "
                r"0\.5; total_steps 8 -> 16\. These keys change the schedule, the model or the "
                r"data; resume anyway with --config\.allow_changes=optim\.learning_rate,"
                r"total_steps, or use a new --workdir$")  # log_every_steps is harmless
    assert hashes(copy_of) == before


def test_a_finished_run_reprints_its_final_metrics_and_writes_nothing(finished, copy_of,
                                                                      data_dir, jax_cache):
    before = hashes(copy_of)
    result = train_py(copy_of, data_dir, jax_cache, "--config.log_every_steps=4")
    assert result.returncode == 0, result.stderr[-3000:]
    final = finished[1]
    assert result.stdout.strip().splitlines()[-1] == "final: " + "  ".join(
        f"{k} {v:.4f}" for k, v in final.items())
    assert "resuming checkpoint 8 with config changes: log_every_steps 1 -> 4" in result.stdout
    assert "resumed from step" not in result.stderr
    after = hashes(copy_of)
    del before["train.lock"], after["train.lock"]  # the pid of the run that held it
    assert after == before  # no new event file, no metrics row, config.json as it was


def test_dry_run_prints_the_config_and_touches_nothing(copy_of, data_dir, jax_cache, tmp_path):
    before = hashes(copy_of)
    result = train_py(copy_of, data_dir, jax_cache, "--dry_run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == (
        "classification: 9,674 parameters, mesh {'data': 8, 'fsdp': 1, 'tensor': 1}, 8 steps; "
        f"workdir {copy_of} holds a finished run (step 8)")
    assert hashes(copy_of) == before
    fresh = tmp_path / "fresh"
    result = train_py(fresh, data_dir, jax_cache, "--print_config", "--config.total_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == ("fitted to the 2-step run: optim.warmup_steps 2 -> 0, "
                         "eval_every_steps 8 -> 2")
    assert lines[-1].endswith(f"2 steps; workdir {fresh} would start from scratch")
    shown = json.loads("\n".join(lines[:-2]))  # the effective config, every declared key in it
    assert shown["optim"]["warmup_steps"] == 0 and shown["data"]["source_dir"] == ""
    assert not os.path.exists(fresh)


def test_the_dates_config_takes_total_steps_alone(jax_cache, tmp_path):
    """The issue's case: `--config.total_steps=150` on configs/transformer_dates.py (warmup 400,
    log every 200) passes every check with the one override, and says what it fitted."""
    workdir = tmp_path / "dates"
    result = train_py(workdir, "", jax_cache, "--dry_run", "--config.total_steps=150",
                      config="configs/transformer_dates.py")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("fitted to the 150-step run: optim.warmup_steps 400 -> 15, "
                                "log_every_steps 200 -> 15"), lines[-2]
    assert re.fullmatch(r"seq2seq: [\d,]+ parameters, .*150 steps; workdir .* would start from "
                        r"scratch", lines[-1]), lines[-1]
    assert not os.path.exists(workdir)


# ------------------------------------------------------------------ in-process: the policies
def test_every_declared_key_exists_and_the_readme_lists_them_all():
    config = tiny_config("seq2seq")
    fill_declared_keys(config)
    assert config.data.data_dir == "" and config.data.eval_splits == ("validation",)
    assert config.evals.decode.beam_size == 1 and config.evals.loss.splits == ()
    config = tiny_config("diffusion")
    fill_declared_keys(config)
    assert config.data.source_dir == "" and config.data.diffusion.hybrid_lambda == 0.001
    readme = open(README).read()
    assert KEYS_BEGIN in readme and KEYS_END in readme
    listed = readme.split(KEYS_BEGIN)[1].split(KEYS_END)[0].strip()
    assert listed == keys_reference().strip(), (
        "README.md's config-keys listing is stale: replace it with `python train.py --list_keys`")


def test_fit_to_length_cuts_what_does_not_fit_and_names_it():
    config = tiny_config("seq2seq")
    config.optim.update(schedule="cosine", warmup_steps=400)
    config.update(log_every_steps=200, eval_every_steps=1500)
    config.checkpoint.every_steps = 1000
    config.evals.decode.every_steps = 3000
    fitted, note = fit_to_length(config, 150)
    assert (fitted.optim.warmup_steps, fitted.log_every_steps, fitted.eval_every_steps,
            fitted.checkpoint.every_steps, fitted.evals.decode.every_steps) == (
                15, 15, 150, 150, 150)
    assert note == ("fitted to the 150-step run: optim.warmup_steps 400 -> 15, log_every_steps "
                    "200 -> 15, eval_every_steps 1500 -> 150, checkpoint.every_steps 1000 -> 150, "
                    "evals.decode.every_steps 3000 -> 150")
    assert config.optim.warmup_steps == 400  # the config as given is left alone
    assert fit_to_length(config, 3000) == (config, "")
    config.optim.schedule = "constant"  # a constant schedule has no warmup to cut
    assert fit_to_length(config, 150)[0].optim.warmup_steps == 400


def test_total_steps_alone_makes_a_short_run(data_dir, jax_cache, tmp_path, capsys):
    """A warmup as long as the run and an eval cadence past its end, fitted; config.json keeps
    the config as given, so the same command resumes."""
    config = tiny(data_dir, total_steps=2)  # warmup_steps 2, eval_every_steps 8
    state, final = train_and_evaluate(config, str(tmp_path / "run"))
    assert int(state.step) == 2 and "test_accuracy" in final
    assert "fitted to the 2-step run: optim.warmup_steps 2 -> 0" in capsys.readouterr().out
    assert checkpoint_steps(tmp_path / "run") == [2]
    assert load_config(str(tmp_path / "run")).optim.warmup_steps == 2


def test_resume_policy_refuses_what_changes_training_unless_allowed(finished, data_dir):
    workdir = str(finished[0])

    def check(**changes):
        config = tiny(data_dir, **{"checkpoint.max_to_keep": 4, **changes})
        return safety.check_resume(workdir, config, plan_run(config, workdir).abstract)

    assert check() == (8, "")
    # train.py passes the workdir as typed (relative, as in `--workdir runs/x`): the checks see
    # the same checkpoint (orbax reads metadata from absolute paths only; this once returned None).
    config = tiny(data_dir, **{"checkpoint.max_to_keep": 4})
    relative = os.path.relpath(workdir)
    assert not os.path.isabs(relative)
    assert safety.check_resume(relative, config, plan_run(config, relative).abstract) == (8, "")
    with pytest.raises(safety.ConfigError, match="allow_changes=seed"):
        config.seed = 1
        safety.check_resume(relative, config, plan_run(config, relative).abstract)
    step, note = check(**{"log_every_steps": 4, "mesh.data": 2, "mesh.fsdp": 4,
                          "grad_accum_steps": 2, "checkpoint.max_to_keep": 2,
                          "data.eval_splits": ("train",)})
    assert step == 8 and note.startswith("resuming checkpoint 8 with config changes: ")
    for changes, refused in [({"num_epochs": 2.0, "total_steps": 0}, "num_epochs,total_steps"),
                             ({"seed": 1}, "seed"), ({"batch_size": 16}, "batch_size"),
                             ({"optim.warmup_steps": 1}, "optim.warmup_steps"),
                             ({"model.dropout_rate": 0.0}, "model.dropout_rate")]:
        with pytest.raises(safety.ConfigError, match=rf"allow_changes={re.escape(refused)}, "):
            check(**changes)
    assert check(**{"optim.warmup_steps": 1, "allow_changes": "optim"})[0] == 8  # a section
    assert "total_steps 8 -> 16" in check(total_steps=16, allow_changes="total_steps")[1]
