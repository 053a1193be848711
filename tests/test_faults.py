"""Faults around resume (issue 17): damaged checkpoints, NaN/Inf, unwritable checkpoint
directories, two runs on one workdir, out-of-range config values, SIGTERM/SIGINT.

After each fault the good checkpoints are still there byte for byte, the run stops with one line
and its documented status (or recovers with a warning), and a rerun ends with exactly the
parameters of a straight run. Faults that need no process boundary run in-process; exit
statuses, signals, locks and log noise run train.py as a process. Every run is the tiny config
(tests/tiny_configs.py:process) and shares one persistent compilation cache, so that nothing compiles
twice (the trainer rebuilds its jitted closures on every call).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from attn_jax.train import safety
from attn_jax.train.loop import train_and_evaluate
from attn_jax.train.restore import checkpoint_steps, load_params
from tiny_configs import set_keys, tiny_config
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG = ("--config.total_steps=150", "--config.checkpoint.every_steps=100")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny(data_dir, **changes):
    """tests/tiny_configs.py:process (8 steps, a checkpoint every 2), keeping all four checkpoints."""
    config = tiny_config("process")
    config.data.data_dir = data_dir
    config.checkpoint.max_to_keep = 4
    return set_keys(config, changes)


def run(config, workdir):
    """In-process, on the 8 devices train.py gets below: same compilations, same numbers."""
    return train_and_evaluate(config, str(workdir))


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def hashes(path) -> dict[str, str]:
    """sha256 of every file below `path` (or of the file `path`)."""
    files = [path] if os.path.isfile(path) else [
        os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    return {os.path.relpath(f, path): hashlib.sha256(open(f, "rb").read()).hexdigest()
            for f in files}


@pytest.fixture(scope="module")
def straight(data_dir, jax_cache, tmp_path_factory):
    """The reference: 8 steps straight through; checkpoints 2, 4, 6 and 8 kept."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    state, final = run(tiny(data_dir), workdir)
    return workdir, flat(state.params), final


def resumable(straight, tmp_path):
    """A copy of the straight run as it stood after step 4 (checkpoints 2 and 4)."""
    workdir = tmp_path / "run"
    shutil.copytree(straight[0], workdir)
    for step in (6, 8):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    return workdir


def good_files(workdir) -> dict[str, dict[str, str]]:
    """Hashes of the step directories and config.json: what a fault must leave alone."""
    ckpts = workdir / "checkpoints"
    return {name: hashes(ckpts / name) for name in os.listdir(ckpts) if name.isdigit()} | {
        "config.json": hashes(workdir / "config.json")}


# ------------------------------------------------------------------ damaged checkpoints
# OCDBT leaves data files in a step that its manifest no longer references (which ones varies
# from run to run: of one step's eight, six could be deleted and the state still restored). Damage
# to one of those changes nothing that is read, and the checksums rightly pass it. So each probe
# hits every array data file of the step: whichever the manifest reads is damaged.
def data_files(step_dir) -> list[str]:
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
             if os.path.basename(r) == "d" for f in fs]
    assert files, f"no OCDBT data files under {step_dir}/state"
    return files


def _flip(step_dir):
    """64 bytes inverted, a quarter into each array data file."""
    for path in data_files(step_dir):
        data = bytearray(open(path, "rb").read())
        at = len(data) // 4
        data[at:at + 64] = bytes(b ^ 0xFF for b in data[at:at + 64])
        open(path, "wb").write(bytes(data))


def _truncate(step_dir):
    for path in data_files(step_dir):
        os.truncate(path, os.path.getsize(path) // 4)


def _delete(step_dir):
    for path in data_files(step_dir):
        os.remove(path)


def _empty(step_dir):
    shutil.rmtree(step_dir)
    os.mkdir(step_dir)


DAMAGE = {
    "flipped_bytes": _flip,
    "truncated_file": _truncate,
    "deleted_file": _delete,
    "deleted_manifest": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "deleted_metadata": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "empty_step_dir": _empty,
    # The arrays read back fine but are not the ones the saved checksums describe.
    "wrong_digest": lambda d: shutil.copytree(os.path.join(os.path.dirname(d), "2", "digest"),
                                              os.path.join(d, "digest"), dirs_exist_ok=True),
}


@pytest.mark.parametrize("damages", [
    # newest first; each run walks back over three damaged steps to step 2
    {8: "flipped_bytes", 6: "truncated_file", 4: "deleted_file"},
    {8: "deleted_manifest", 6: "deleted_metadata", 4: "empty_step_dir"},
    {8: "wrong_digest"},
], ids=lambda d: "+".join(d.values()))
def test_damaged_newest_checkpoints_are_moved_aside_and_the_previous_good_one_resumes(
        damages, data_dir, straight, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(straight[0], workdir)
    ckpts, good = workdir / "checkpoints", min(damages) - 2
    before = {step: hashes(ckpts / str(step)) for step in range(2, good + 1, 2)}
    damaged = {}
    for step, damage in damages.items():
        DAMAGE[damage](str(ckpts / str(step)))
        damaged[step] = hashes(ckpts / str(step))
    with caplog.at_level(logging.WARNING):
        state, final = run(tiny(data_dir), workdir)
    # Each detected on restore, named in one line, moved aside byte for byte (never deleted).
    lines = [m for m in caplog.messages if "failed to read or verify" in m]
    assert len(lines) == len(damages), lines
    for line, step in zip(lines, sorted(damages, reverse=True)):
        assert line.startswith(f"checkpoint {ckpts / str(step)} failed to read or verify (")
        assert line.endswith(f"moved to {ckpts / str(step)}.corrupt; resuming from step {good}")
        assert hashes(f"{ckpts / str(step)}.corrupt") == damaged[step]
    if "wrong_digest" in damages.values():
        assert "checksum mismatch" in lines[0]
    assert {step: hashes(ckpts / str(step)) for step in before} == before
    train = [json.loads(r) for r in open(workdir / "metrics.jsonl")]
    assert all(np.isfinite(r["loss"]) for r in train if r["split"] == "train")  # no NaN later
    assert_same(flat(state.params), straight[1])
    assert final == straight[2] and checkpoint_steps(workdir) == [2, 4, 6, 8]


def test_when_no_checkpoint_verifies_one_line_names_them_all_and_nothing_moves(
        data_dir, jax_cache, straight, tmp_path):
    workdir = resumable(straight, tmp_path)
    DAMAGE["deleted_manifest"](str(workdir / "checkpoints" / "4"))
    DAMAGE["deleted_file"](str(workdir / "checkpoints" / "2"))
    before = good_files(workdir)
    result = train_py(workdir, data_dir, jax_cache, check=False)
    assert result.returncode == 4, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: no checkpoint in {workdir}/checkpoints reads and verifies: "
                        r"step 4: .+; step 2: .+", last), last
    for noise in ("Event loop is closed", "Traceback", "never retrieved"):
        assert noise not in result.stderr
    assert good_files(workdir) == before  # nothing moved, config.json untouched


# ------------------------------------------------------------------ NaN / Inf
def test_nan_after_resuming_stops_without_saving_and_keeps_every_checkpoint(
        data_dir, straight, tmp_path, capsys):
    workdir = resumable(straight, tmp_path)
    before = good_files(workdir)
    with pytest.raises(safety.NonFiniteError) as e:
        run(tiny(data_dir, **{"optim.learning_rate": 1e12,
                              "allow_changes": "optim.learning_rate"}), workdir)
    assert re.fullmatch(r"loss (nan|inf), grad_norm (nan|inf) at step \d+: stopped without "
                        rf"saving; the checkpoints in {workdir}/checkpoints are untouched "
                        r"\(newest: step 4\)", str(e.value)), str(e.value)
    assert ("resuming checkpoint 4 with config changes: optim.learning_rate 0.01 -> "
            "1000000000000.0" in capsys.readouterr().out)
    assert good_files(workdir) == before  # no checkpoint rotated out, config.json not rewritten
    state, _ = run(tiny(data_dir), workdir)
    assert_same(flat(state.params), straight[1])


def test_nan_in_a_fresh_run_exits_3_and_leaves_only_finite_checkpoints(data_dir, jax_cache,
                                                                        tmp_path):
    workdir = tmp_path / "run"
    result = train_py(workdir, data_dir, jax_cache, "--config.optim.learning_rate=1e12",
                      check=False)
    assert result.returncode == 3, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: loss (nan|inf), grad_norm (nan|inf) at step \d+: stopped "
                        r"without saving; .*", last), last
    assert "final:" not in result.stdout
    for step in checkpoint_steps(workdir):
        _, params = load_params(workdir, step)
        assert all(np.isfinite(v).all() for v in jax.tree.leaves(params)), step


# ------------------------------------------------------------------ unwritable checkpoints
def make_read_only(path):
    os.chmod(path, 0o555)
    if os.geteuid() == 0:  # root ignores modes; an immutable directory stops root too
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            os.chmod(path, 0o755)
            pytest.skip("running as root on a file system without chattr +i")


def make_writable(path):
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    os.chmod(path, 0o755)


def test_read_only_checkpoints_fail_at_the_save_and_the_rerun_resumes(data_dir, straight,
                                                                      tmp_path):
    workdir = resumable(straight, tmp_path)
    before = good_files(workdir)
    make_read_only(workdir / "checkpoints")
    try:
        started = time.monotonic()
        with pytest.raises(safety.CheckpointError, match=r"cannot write checkpoint 6 to "):
            run(tiny(data_dir, **{"checkpoint.async_save": True}), workdir)
        assert time.monotonic() - started < 120  # the run waited 300 s at exit
    finally:
        make_writable(workdir / "checkpoints")
    assert good_files(workdir) == before
    state, _ = run(tiny(data_dir), workdir)
    assert_same(flat(state.params), straight[1])


def test_a_full_disk_stops_the_run_at_the_failed_asynchronous_save(data_dir, jax_cache, straight,
                                                                   tmp_path):
    """Checkpoints on a tmpfs (in a private mount namespace) holding checkpoint 2 with 8 KiB to
    spare: the trainer's write probe (4 KiB) passes, and the asynchronous save of step 4 fails in
    orbax's background threads (its JSON items, shardings and arrays all fail there).

    The spare room is measured on the tmpfs after the copy. Sizing it from checkpoint 2's file
    sizes (1.5x) left a margin that depended on how tensorstore happened to split the arrays into
    data files (300 to 700 KiB for the same state), and once let checkpoint 4 fit."""
    workdir = resumable(straight, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "4")
    shutil.move(workdir / "checkpoints", workdir / "saved")
    os.mkdir(workdir / "checkpoints")
    ckpts = f"{workdir}/checkpoints"
    script = (f"mount -t tmpfs -o size=64m tmpfs {ckpts} || exit 99; "
              f"cp -a {workdir}/saved/2 {ckpts}/ && "
              f"used=$(df -k --output=used {ckpts} | tail -1) && "
              f"mount -o remount,size=$((used + 8))k {ckpts} && "
              + shlex.join(train_py_args(workdir, data_dir, "--config.checkpoint.async_save=True"))
              + f"; rc=$?; cp -a {workdir}/checkpoints {workdir}/after; exit $rc")
    started = time.monotonic()
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], env=train_env(jax_cache),
                            capture_output=True, text=True, timeout=300)
    if result.returncode == 99 or "unshare failed" in result.stderr:
        pytest.skip("no private tmpfs mount here (needs root)")
    assert result.returncode == 4, result.stderr[-3000:]
    assert time.monotonic() - started < 120
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: saving checkpoint 4 to {workdir}/checkpoints failed: .*"
                        r"(RESOURCE_EXHAUSTED|No space left).*", last), last
    assert "Traceback" not in result.stderr
    assert hashes(workdir / "after" / "2") == hashes(workdir / "saved" / "2")
    shutil.rmtree(workdir / "checkpoints")
    shutil.move(workdir / "after", workdir / "checkpoints")  # the disk has room again
    train_py(workdir, data_dir, jax_cache)
    assert_same(flat(load_params(workdir)[1]), straight[1])


# ------------------------------------------------------------------ config values
@pytest.mark.parametrize("key, value", [
    ("checkpoint.max_to_keep", 0), ("log_every_steps", 0), ("batch_size", 0),
    ("total_steps", -1), ("optim.learning_rate", float("nan")), ("checkpoint.every_steps", -2),
    ("optim.warmup_steps", -1), ("label_smoothing", 1.0), ("eval_every_steps", -1)])
def test_out_of_range_values_are_refused_before_the_workdir_exists(key, value, data_dir, tmp_path):
    with pytest.raises(safety.ConfigError, match=rf"^{re.escape(key)}={value!r}: must be"):
        run(tiny(data_dir, **{key: value}), tmp_path / "run")
    assert not os.path.exists(tmp_path / "run")


def test_a_bad_value_on_the_command_line_exits_2_with_one_line(data_dir, jax_cache, tmp_path):
    result = train_py(tmp_path / "run", data_dir, jax_cache, "--config.checkpoint.max_to_keep=0",
                      "--config.log_every_steps=0", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: log_every_steps=0: must be >= 1; checkpoint.max_to_keep=0: must be >= 1")
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "run")


def test_a_finished_run_reports_its_final_metrics_again(data_dir, straight, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(straight[0], workdir)
    before = good_files(workdir)
    state, final = run(tiny(data_dir), workdir)
    assert final == straight[2] and good_files(workdir) == before


# ------------------------------------------------------------------ train.py as a process
def train_env(jax_cache):
    return {**os.environ, "XLA_FLAGS": xla_flags(8),
            "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": jax_cache,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def train_py_args(workdir, data_dir, *overrides):
    return [sys.executable, os.path.join(ROOT, "train.py"),
            f"--config={os.path.join(ROOT, 'tests', 'tiny_configs.py')}", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", "--config.checkpoint.max_to_keep=4", *overrides]


def train_py(workdir, data_dir, jax_cache, *overrides, check=True):
    result = subprocess.run(train_py_args(workdir, data_dir, *overrides), env=train_env(jax_cache),
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


class Run:
    """train.py in the background, its output in files (no pipe to fill up)."""

    def __init__(self, workdir, data_dir, jax_cache, *overrides, name="run", env=None):
        self.out, self.err = f"{workdir}.{name}.out", f"{workdir}.{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(train_py_args(workdir, data_dir, *overrides),
                                         env={**train_env(jax_cache), **(env or {})},
                                         stdout=out, stderr=err)

    def wait_for(self, pattern: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while pattern not in open(self.out).read():
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.stderr[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} after {timeout} s"
            time.sleep(0.05)

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout)

    @property
    def stdout(self) -> str:
        return open(self.out).read()

    @property
    def stderr(self) -> str:
        return open(self.err).read()


@pytest.fixture(scope="module")
def long_run(data_dir, jax_cache, tmp_path_factory):
    """150 steps with a checkpoint every 100 and, while it runs, a second train.py on its
    workdir: (workdir, the first run, the second's result, the second's seconds)."""
    workdir = tmp_path_factory.mktemp("long") / "run"
    first = Run(workdir, data_dir, jax_cache, *LONG)
    first.wait_for("from scratch")  # holds the lock from before this line on
    started = time.monotonic()
    second = train_py(workdir, data_dir, jax_cache, *LONG, check=False)
    seconds = time.monotonic() - started
    first.wait()
    return workdir, first, second, seconds


def test_a_second_train_py_on_a_workdir_fails_at_once_naming_the_first(long_run):
    workdir, first, second, seconds = long_run
    assert second.returncode == 5 and seconds < 20
    assert "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: workdir {workdir} is in use by another train.py (pid {first.proc.pid} on host "
        f"{socket.gethostname()}; lock file {workdir}/train.lock)")
    assert first.proc.returncode == 0 and "final: test_accuracy" in first.stdout
    assert checkpoint_steps(workdir) == [100, 150]


def test_the_lock_of_a_killed_run_does_not_block(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from attn_jax.train.safety import WorkdirLock; "
        f"WorkdirLock({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(safety.WorkdirLocked, match=f"pid {holder.pid} on host"):
        safety.WorkdirLock(str(tmp_path))
    holder.kill()
    holder.wait()
    safety.WorkdirLock(str(tmp_path)).release()  # the file is still there; the lock is not


def test_sigterm_then_sigint_save_the_step_reached_and_resume_bit_identically(
        long_run, data_dir, jax_cache, tmp_path):
    workdir, stops = tmp_path / "run", []
    for sig in (signal.SIGTERM, signal.SIGINT):
        run_ = Run(workdir, data_dir, jax_cache, *LONG, name=sig.name)
        run_.wait_for(f"step {stops[-1] + 20 if stops else 30}/")
        run_.proc.send_signal(sig)
        assert run_.wait(120) == safety.Preempted.exit_code, run_.stderr[-3000:]
        match = re.search(rf"^preempted by {sig.name} at step (\d+): checkpoint \1 is written to "
                          rf"{workdir}/checkpoints; resume with: python \S*train.py .*"
                          rf"--workdir={workdir}", run_.stdout, re.M)
        assert match, run_.stdout[-2000:]
        stops.append(int(match.group(1)))
        assert stops[-1] in checkpoint_steps(workdir) and stops[-1] % 100  # an extra save
        assert "Traceback" not in run_.stderr and "KeyboardInterrupt" not in run_.stderr
    assert stops[0] < stops[1]
    result = train_py(workdir, data_dir, jax_cache, *LONG)
    assert f"resuming at step {stops[1]}" in result.stdout
    assert_same(flat(load_params(workdir)[1]), flat(load_params(long_run[0])[1]))


def test_a_second_signal_is_the_default_action():
    """After the first SIGTERM both signals are back to the kernel's default (exit at once),
    so a second one never waits for the save; leaving the guard restores pytest's handlers."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with safety.RunGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the Python-level handler runs between bytecodes
        assert guard.signame == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_save_the_same_step_when_one_gets_sigterm(data_dir, jax_cache, tmp_path):
    """jax.distributed: SIGTERM to process 1 only; JAX's preemption service makes both save the
    same step and exit 75."""
    workdir, port = tmp_path / "run", _free_port()
    runs = [Run(workdir, data_dir, jax_cache, *LONG, f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2", f"--process_id={i}", name=f"p{i}",
                env={"XLA_FLAGS": xla_flags(1)}) for i in range(2)]
    runs[0].wait_for("step 10/")
    runs[1].proc.send_signal(signal.SIGTERM)
    assert [r.wait(240) for r in runs] == [75, 75], runs[1].stderr[-3000:]
    [step] = re.findall(r"^preempted by SIGTERM at step (\d+): ", runs[0].stdout, re.M)
    for r in runs:  # orbax logs the agreed step on each process
        assert f"Reached preemption sync point, step={step}" in r.stderr
    assert int(step) in checkpoint_steps(workdir)
