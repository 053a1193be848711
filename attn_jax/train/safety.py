"""Fault handling for the trainer: config ranges, one writer per workdir, NaN/Inf guard, SIGTERM.

`RunGuard` holds what a run must release however it ends (the workdir lock, the signal handlers,
the log filters); the loop calls it at a few points. Faults end the run with a `TrainingError`,
whose `exit_code` train.py exits with after printing the message as one line:

    2   ConfigError      the user's mistake, caught before anything is written: a bad config key
                         or value, a config file that does not load, missing data, a workdir
                         holding a checkpoint of another model, or a resume with a config that
                         changes the schedule, the model or the data
    3   NonFiniteError   a NaN/Inf loss or gradient norm; that state is never saved
    4   CheckpointError  a save failed, or no checkpoint in the workdir reads and verifies
    5   WorkdirLocked    another train.py holds the workdir
    75  Preempted        SIGTERM/SIGINT: the step reached is saved; rerun the command to resume

A second SIGTERM/SIGINT kills the process at once (status 143/130). Before the guard is entered
(while train.py reads its config and the checks run) SIGINT exits at once with one line and
status 130, having written nothing (attn_jax.train.cli).

jax is imported inside the functions that use it, so that train.py can probe the workdir lock
before it pays for importing jax.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"


class TrainingError(RuntimeError):
    exit_code = 1


class ConfigError(TrainingError, ValueError):
    exit_code = 2


class NonFiniteError(TrainingError):
    exit_code = 3


class CheckpointError(TrainingError):
    exit_code = 4


class WorkdirLocked(TrainingError):
    exit_code = 5


class Preempted(TrainingError):
    exit_code = 75  # EX_TEMPFAIL: schedulers read it as "run me again", which resumes

    def __init__(self, signame: str, step: int, directory: str):
        super().__init__(f"{signame} at step {step}: checkpoint {step} is written to {directory}")
        self.step = step


# ------------------------------------------------------------------------------ config ranges
def _at_least(low: float, note: str = "") -> tuple[Callable[[float], bool], str]:
    return (lambda v: v >= low), f"must be >= {low:g}{note}"


_UNIT = ((lambda v: 0 <= v < 1), "must be in [0, 1)")
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "batch_size": _at_least(1),
    "total_steps": _at_least(0, " (0 = use num_epochs)"),
    "num_epochs": _at_least(0),
    "grad_accum_steps": _at_least(1),
    "log_every_steps": _at_least(1),
    "eval_every_steps": _at_least(0, " (0 = only at the end)"),
    "label_smoothing": _UNIT,
    "ema_decay": _UNIT,
    "optim.learning_rate": _at_least(0),
    "optim.warmup_steps": _at_least(0),
    "optim.end_fraction": _at_least(0),
    "optim.weight_decay": _at_least(0),
    "optim.grad_clip_norm": _at_least(0, " (0 = no clipping)"),
    "optim.eps": ((lambda v: v > 0), "must be > 0"),
    "optim.b1": _UNIT,
    "optim.b2": _UNIT,
    "optim.momentum": _UNIT,
    "checkpoint.every_steps": _at_least(0, " (0 = only at the end)"),
    "checkpoint.max_to_keep": _at_least(1),
    "checkpoint.keep_best": _at_least(1),
}


def check_config(config: ml_collections.ConfigDict) -> None:
    """Range-checks the trainer's numeric keys, before anything is written; names every bad key."""
    errors = []
    for key, (ok, requirement) in RANGES.items():
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if node is None:
            continue
        if isinstance(node, bool) or not isinstance(node, (int, float)):
            errors.append(f"{key}={node!r}: must be a number")
        elif not math.isfinite(node) or not ok(node):
            errors.append(f"{key}={node!r}: {requirement}")
    mode = config.get("checkpoint", {}).get("best_mode", "max")
    if mode not in ("max", "min"):
        errors.append(f"checkpoint.best_mode={mode!r}: choose 'max' or 'min'")
    if errors:
        raise ConfigError("; ".join(errors))


# ------------------------------------------------------------------------------ resuming
# Keys that may differ from the saved config on resume without changing what is trained:
# cadences, the checkpoint policy, the mesh (a resume reshards), evaluation, where the data lie
# on this machine, the gradient-accumulation split of the same batch, the transfer source
# (read only by a fresh start) and test hooks. 'SECTION.*' covers a whole section.
RESUME_HARMLESS = ("log_every_steps", "eval_every_steps", "checkpoint.*", "evals.*", "mesh.*",
                   "init.*", "debug.*", "allow_changes", "grad_accum_steps", "data.data_dir",
                   "data.source_dir", "data.eval_splits", "data.sampling.*")


def _covered(key: str, patterns: list[str] | tuple[str, ...]) -> bool:
    """Whether `key` is one of `patterns` ('a.b', or 'a' / 'a.*' for all of section a)."""
    return any(key == p or key.startswith(p.removesuffix(".*") + ".") for p in patterns if p)


def _filled(config: dict) -> dict:
    """A config dict with the trainer's keys, and the declared data and evals keys, at their
    defaults where it lacks them: a config saved before a key existed compares equal to
    today's with that key at its default."""
    import ml_collections

    from attn_jax.train.config import base_config, fill_declared_keys, upgrade_config

    def merged(base: dict, given: dict) -> dict:
        return {**base, **{k: merged(base[k], v) if isinstance(v, dict) and isinstance(
            base.get(k), dict) else v for k, v in given.items()}}

    config = merged(base_config().to_dict(), upgrade_config(config))
    try:
        return fill_declared_keys(ml_collections.ConfigDict(config)).to_dict()
    except (ValueError, KeyError, TypeError, AttributeError):  # an unknown task: as it is
        return config


def _shape(shape: tuple[int, ...] | None) -> str:
    return "nothing" if shape is None else str(tuple(shape))


def check_resume(workdir: str, config: ml_collections.ConfigDict, abstract_state: Any
                 ) -> tuple[int | None, str]:
    """Read-only checks of the checkpoint a run would resume from (the newest that reads), before
    anything is written. Returns its step (None: no checkpoint) and a one-line note of the config
    changes that pass ('' if none).

    Raises ConfigError when the checkpoint holds another model (its first mismatching array is
    named: 'params/.../kernel stored (4, 16), config (4, 8)'), or when the config differs from
    the saved one in a key that changes the schedule, the model or the data and is not named in
    `config.allow_changes` (see RESUME_HARMLESS for the keys that always pass).
    """
    from attn_jax.train.checkpoint import config_diff, saved_run, state_shapes

    directory = os.path.join(workdir, "checkpoints")
    saved = saved_run(directory)
    if saved is None:
        return None, ""
    step, stored, saved_config = saved
    diff = config_diff(_filled(saved_config), _filled(config.to_dict()))
    diff.pop("allow_changes", None)
    changes = "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items())
    wanted = state_shapes(abstract_state)
    order = [k for k in wanted if k.startswith("params/")] + [k for k in wanted] + list(stored)
    bad = list(dict.fromkeys(k for k in order if stored.get(k) != wanted.get(k)))
    if bad:
        first = bad[0]
        raise ConfigError(
            f"workdir {workdir} holds checkpoint {step} of another model (first mismatch: "
            f"{first} stored {_shape(stored.get(first))}, config {_shape(wanted.get(first))}"
            + (f"; {len(bad) - 1} more arrays differ" if len(bad) > 1 else "") + ")"
            + (f"; the config differs from the saved one in {changes}" if changes else "")
            + f": use a new --workdir, or the config saved in {workdir}/config.json")
    allowed = [k.strip() for k in str(config.get("allow_changes", "")).split(",")]
    refused = [k for k in diff if not _covered(k, RESUME_HARMLESS) and not _covered(k, allowed)]
    if refused:
        shown = "; ".join(f"{k} {diff[k][0]!r} -> {diff[k][1]!r}" for k in refused)
        raise ConfigError(
            f"workdir {workdir} holds checkpoint {step} of a run with another config: {shown}. "
            "These keys change the schedule, the model or the data; resume anyway with "
            f"--config.allow_changes={','.join(refused)}, or use a new --workdir")
    return step, (f"resuming checkpoint {step} with config changes: {changes}" if changes else "")


def write_config_json(workdir: str, config: ml_collections.ConfigDict) -> None:
    """`config.json` describes the run's newest checkpoint, so it is written with each save
    (never by a run that is refused or stops before saving), atomically."""
    import jax
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "config.json")
    with open(path + ".tmp", "w") as f:
        json.dump(config.to_dict(), f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def all_processes(ok: bool) -> bool:
    """True on every process iff `ok` on every process, so all of them take the same branch."""
    import jax
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


# ------------------------------------------------------------------------------ workdir lock
class WorkdirLock:
    """An advisory `flock` on WORKDIR/train.lock, held for the run. The kernel drops it when the
    process dies, however it dies, so a killed run leaves no stale lock (the file stays)."""

    def __init__(self, workdir: str, *, probe: bool = False):
        """probe=True: only fail if a live run holds the lock; writes nothing."""
        self.path, self._fd = os.path.join(workdir, LOCK_FILE), None
        if probe and not os.path.exists(self.path):
            return
        fd = os.open(self.path, os.O_RDONLY if probe else os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if probe else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            raise WorkdirLocked(f"workdir {workdir} is in use by another train.py ({holder}; "
                                f"lock file {self.path})") from None
        if probe:
            os.close(fd)
            return
        self._fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_workdir(workdir: str, *, probe: bool = False) -> WorkdirLock | None:
    """Process 0 takes the lock (or probes it); every process raises WorkdirLocked if it is
    taken, so none of them goes on alone."""
    import jax
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir, probe=probe)
        except WorkdirLocked as e:
            error = e
    if not all_processes(error is None):
        raise error or WorkdirLocked(f"workdir {workdir} is in use by another train.py "
                                     "(process 0 names it)")
    return lock


# ------------------------------------------------------------------------------ log noise
class _OneLine(logging.Filter):
    """Drops the tracebacks that orbax and asyncio log for failures the trainer reports itself
    (a failed save logs the same traceback from four threads, asyncio adds "Task exception was
    never retrieved" for each array); their message lines stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "asyncio" or f"{os.sep}orbax{os.sep}" in record.pathname:
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def drop_event_loop_closed(hook: Callable) -> Callable:
    """`hook` (a sys.unraisablehook) minus the "Event loop is closed" errors of tensorstore
    callbacks into the event loop of an aborted restore; they can come until the process ends."""
    def unraisable(info):
        if not (isinstance(info.exc_value, RuntimeError) and "Event loop is closed" in
                str(info.exc_value)):
            hook(info)
    return unraisable


# ------------------------------------------------------------------------------ the guard
class RunGuard:
    """What one run holds: the workdir lock, SIGTERM/SIGINT handlers, the NaN/Inf check."""

    def __init__(self):
        import jax
        self._lock: WorkdirLock | None = None
        self._pending: tuple[int, Any, Any] | None = None  # the step whose metrics are unchecked
        self.signame: str | None = None
        self._handlers: dict[int, Any] = {}
        # jax.distributed runs get SIGTERM from JAX's preemption service, which agrees on one
        # step for every process; a Python handler would replace its C++ one.
        self._service = (jax.process_count() > 1
                         and bool(jax.config.jax_enable_preemption_service))
        self._filter, self._hook = _OneLine(), sys.unraisablehook

    def __enter__(self) -> RunGuard:
        for name in ("absl", "asyncio"):
            logging.getLogger(name).addFilter(self._filter)
        sys.unraisablehook = drop_event_loop_closed(self._hook)
        if threading.current_thread() is threading.main_thread():  # signal.signal needs it
            signums = [signal.SIGINT] + ([] if self._service else [signal.SIGTERM])
            self._handlers = {s: signal.signal(s, self._on_signal) for s in signums}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        sys.unraisablehook = self._hook
        for name in ("absl", "asyncio"):
            logging.getLogger(name).removeFilter(self._filter)
        if self._lock is not None:
            self._lock.release()

    def lock(self, workdir: str) -> None:
        """One train.py per workdir, held until the run ends."""
        self._lock = lock_workdir(workdir)

    # -- NaN/Inf guard --
    def check_step(self, step: int, metrics: dict[str, Any], ckpt: Any) -> None:
        """After each step: checks the previous step's loss and gradient norm (ready by now, so
        the device never waits for the host) and surfaces a failed background save."""
        previous, self._pending = self._pending, (step, metrics["loss"], metrics["grad_norm"])
        if previous is not None:
            _check_finite(*previous, ckpt)
        ckpt.raise_if_failed()

    def flush(self, ckpt: Any) -> None:
        """Checks the newest step too; called before a save, so no NaN state is ever saved."""
        if self._pending is not None:
            _check_finite(*self._pending, ckpt)

    # -- preemption --
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.signame is not None:  # a second one that came before the first was handled
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signame = signal.Signals(signum).name
        for s in self._handlers:  # from now on the kernel's default action: exit at once
            signal.signal(s, signal.SIG_DFL)
        # os.write, not print: a handler that prints can interrupt a print to the same stream
        os.write(2, f"{self.signame} received: finishing the step, saving a checkpoint, then "
                    "exiting (send it again to exit at once)\n".encode())
        if self._service:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's service tells every process

    def preempt_if_requested(self, step: int, ckpt: Any, save: Callable[[int], None]) -> None:
        """At the end of each step: after SIGTERM/SIGINT, writes this step's checkpoint (unless
        the step just saved one), waits for it and raises `Preempted`."""
        if self._service:
            from jax.experimental import multihost_utils
            if not multihost_utils.reached_preemption_sync_point(step):
                return
            self.signame = self.signame or "SIGTERM"
        elif self.signame is None:
            return
        if ckpt.latest_step() != step:
            save(step)
        ckpt.wait()
        raise Preempted(self.signame, step, ckpt.directory)


def _check_finite(step: int, loss: Any, grad_norm: Any, ckpt: Any) -> None:
    loss, grad_norm = float(loss), float(grad_norm)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        newest = ckpt.latest_step()
        raise NonFiniteError(f"loss {loss}, grad_norm {grad_norm} at step {step}: stopped without "
                             f"saving; the checkpoints in {ckpt.directory} are untouched (newest: "
                             + (f"step {newest})" if newest is not None else "none)"))
