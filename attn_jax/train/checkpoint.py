"""Checkpoints with orbax: the whole training state, the data position and the config.

Saves are asynchronous and atomic: orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames it
when complete, so a save cut short by a crash is never listed, never restored, and is reported
with a warning when the manager opens the directory again.

Integrity: each step also holds `digest` (two checksums per array of the state, written inside the
step, so committed with it) and `eval` (that step's eval metrics). A restore recomputes the
checksums; a step that fails to read or verify is moved aside to `<step>.corrupt` (never deleted)
and the step before it is restored instead.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from attn_jax.train.legacy import has_legacy_names, upgrade_params
from attn_jax.train.safety import CheckpointError, NonFiniteError, all_processes

log = logging.getLogger(__name__)

_TMP_MARKER = ".orbax-checkpoint-tmp"
CLOSE_TIMEOUT_S = 600  # the longest close() waits for a save in flight
# orbax splits the writing of a replicated array across its replicas ("replica-parallel"). Each
# replica's part is cut with an eager `jax.lax.slice`, so every (shape, device) pair pays a
# compilation; for small arrays that costs far more than the write it shares out. Below this many
# bytes per replica, the first replica writes the whole array, as it does without
# replica-parallel. The files are the same either way. Measured in the DETR mesh-and-resume test
# (2x2x2 mesh): 156 slice compilations gone, 51 s down to 42 s.
REPLICA_PARALLEL_MIN_SLICE_BYTES = 1 << 20


def _small_arrays_skip_replica_parallel() -> None:
    """Sets `REPLICA_PARALLEL_MIN_SLICE_BYTES` on orbax's jax.Array handler, keeping the rest of
    orbax's defaults. Does nothing where a handler other than orbax's own is registered."""
    current = ocp.type_handlers.get_type_handler(jax.Array)
    if type(current) is not ocp.type_handlers.ArrayHandler or getattr(
            current, "_attn_jax_min_slice", False):
        return
    from orbax.checkpoint._src.metadata import array_metadata_store

    handler = ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_SLICE_BYTES)
    handler._attn_jax_min_slice = True
    absl_log = logging.getLogger("absl")  # orbax warns on every override; this one is intended

    def expected_override(record: logging.LogRecord) -> bool:
        return "overriding" not in record.getMessage()

    absl_log.addFilter(expected_override)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_log.removeFilter(expected_override)


def interrupted_saves(directory: str) -> list[str]:
    """Names of step directories whose save never completed (left by a crash)."""
    if not os.path.isdir(directory):
        return []
    return sorted(n for n in os.listdir(directory) if _TMP_MARKER in n)


class Checkpointer:
    """Thin policy layer over `ocp.CheckpointManager` for the trainer.

    Items per step: `state` (a pytree of jax arrays, restored onto any mesh), `data` (the input
    iterator's JSON state) and `config` (the run's config, for reference).
    """

    def __init__(self, directory: str, cfg: ml_collections.ConfigDict):
        self.directory = os.path.abspath(directory)
        for name in interrupted_saves(self.directory):
            log.warning("checkpoint %s/%s was interrupted while saving; it is skipped and removed",
                        self.directory, name)
        keep = [pp.LatestN(int(cfg.get("max_to_keep", 3)))]
        if cfg.get("best_metric"):
            metric, mode = cfg.best_metric, cfg.get("best_mode", "max")
            keep.append(pp.BestN(get_metric_fn=lambda m: m[metric], reverse=mode == "min",
                                 n=int(cfg.get("keep_best", 1)),
                                 keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,  # the trainer decides when to save
            preservation_policy=pp.AnyPreservationPolicy(keep),
            enable_async_checkpointing=bool(cfg.get("async_save", True)),
            cleanup_tmp_directories=True,
            create=True,
        )
        _small_arrays_skip_replica_parallel()
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._saved: int | None = None      # the newest step this run saved
        self._in_flight = False             # an asynchronous save not yet seen to finish
        self._failed: BaseException | None = None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: Any, config: dict,
             metrics: dict[str, float] | None = None) -> None:
        """Saves `step` unless its state holds NaN/Inf (then raises NonFiniteError, deleting
        nothing). A directory that cannot be written fails here (CheckpointError), not in
        orbax's background thread."""
        digest, finite = state_digest(state)
        if not finite:
            raise NonFiniteError(f"the state at step {step} holds NaN/Inf values; it was not "
                                 f"saved, the checkpoints in {self.directory} are untouched")
        self._probe_writable(step)
        self.wait()  # a failure of the previous save is reported as that step's
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state),
                                  config=ocp.args.JsonSave(config),
                                  digest=ocp.args.JsonSave({"arrays": digest}),
                                  eval=ocp.args.JsonSave(metrics or {}))
        self._saved = step
        try:
            self.manager.save(step, args=args, metrics=metrics, force=True)
        except Exception as e:
            raise self._error(e) from e
        self._in_flight = self.manager.is_saving_in_progress()

    def _probe_writable(self, step: int) -> None:
        error = None
        if jax.process_index() == 0:
            probe = os.path.join(self.directory, f".write-probe-{os.getpid()}")
            try:
                with open(probe, "wb") as f:
                    f.write(bytes(4096))
                    f.flush()
                    os.fsync(f.fileno())
                os.remove(probe)
            except OSError as e:
                error = e
        if not all_processes(error is None):
            raise CheckpointError(f"cannot write checkpoint {step} to {self.directory}: "
                                  f"{error or 'process 0 cannot write there'}")

    def _error(self, e: BaseException) -> CheckpointError:
        self._failed = e
        return CheckpointError(f"saving checkpoint {self._saved} to {self.directory} failed: "
                               f"{_one_line(e)}")

    def raise_if_failed(self) -> None:
        """Raises CheckpointError once an asynchronous save has finished and failed, so a failed
        save stops the run at the next step (is_saving_in_progress is a local read)."""
        if self._in_flight and not self.manager.is_saving_in_progress():
            self._in_flight = False
            self.wait()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
        """Restore `state` onto the shardings of `abstract_state` (leaves are
        `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`), so a different mesh works, and
        verify it against the step's digest."""
        state, data, _ = self._restore_verified(step, abstract_state)
        return state, data

    def _restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
        step_dir = os.path.join(self.directory, str(step))
        has_digest = os.path.isdir(os.path.join(step_dir, "digest"))
        items = dict(data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
        if has_digest:
            items["digest"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), **items))
            state = restored.state
        except ValueError as mismatch:
            if "tree structures do not match" not in str(mismatch):
                raise
            # Written before a rename (attn_jax.train.legacy): read as saved, rename, place.
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), **items))
            if not has_legacy_names(restored.state):
                raise mismatch from None
            state = _as_target(upgrade_params(restored.state), abstract_state)
        if has_digest:
            saved, now = restored.digest["arrays"], state_digest(state)[0]
            bad = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            if bad:
                raise CheckpointError(f"checksum mismatch in {len(bad)} array(s): "
                                      + ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else ""))
        else:
            log.warning("checkpoint %s has no digest (saved by an older version): not verified",
                        step_dir)
        return state, restored.data, restored.config

    def restore_latest(self, abstract_state: Any) -> tuple[int | None, Any]:
        """(step, (state, data)) of the newest checkpoint that reads and verifies, or (None, None)
        when there is none. A newer one that fails is named in a warning and moved aside to
        `<step>.corrupt` (never deleted). When every checkpoint fails, raises CheckpointError
        listing them and moves nothing. (Whether the checkpoint fits the config is checked
        before, read-only: `saved_run` and `attn_jax.train.safety.check_resume`.)"""
        failures: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            reason = "failed on another process"
            try:
                state, data, _ = self._restore_verified(step, abstract_state)
                ok = True
            except Exception as e:  # any read or verification error: try the step before
                ok, reason = False, _one_line(e)
            if not all_processes(ok):
                failures.append((step, reason))
                continue
            self._move_aside(failures, step)
            return step, (state, data)
        if failures:
            raise CheckpointError(f"no checkpoint in {self.directory} reads and verifies: "
                                  + "; ".join(f"step {s}: {r}" for s, r in failures))
        return None, None

    def _move_aside(self, failures: list[tuple[int, str]], good: int) -> None:
        if not failures:
            return
        if jax.process_index() == 0:
            for step, reason in failures:
                src = dst = os.path.join(self.directory, str(step))
                n = 0
                while os.path.exists(dst):
                    dst, n = f"{src}.corrupt" + (f".{n}" if n else ""), n + 1
                os.rename(src, dst)
                log.warning("checkpoint %s failed to read or verify (%s): moved to %s; resuming "
                            "from step %d", src, reason, dst, good)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("attn_jax:checkpoints_moved_aside")
        self.manager.reload()

    def eval_metrics(self, step: int) -> dict[str, float]:
        """The eval metrics saved with checkpoint `step` ({} if it holds none)."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "eval")):
            return {}
        return dict(self.manager.restore(step, args=ocp.args.Composite(
            eval=ocp.args.JsonRestore())).eval)

    def restore_state_only(self, step: int, abstract_state: Any) -> Any:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        return restored.state

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._error(e) from e

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Waits for the save in flight (at most `timeout_s`, and not at all after a failed
        save: orbax's threads can then wait 300 s for signals that never come), then closes."""
        if self._failed is not None:
            return
        if self.manager.is_saving_in_progress():
            log.info("waiting for checkpoint %s to be written to %s", self._saved, self.directory)
        errors: list[BaseException] = []

        def close():
            try:
                self.manager.close()
            except BaseException as e:  # handed to the caller's thread
                errors.append(e)

        closer = threading.Thread(target=close, name="checkpoint-close", daemon=True)
        closer.start()
        closer.join(timeout_s)
        if closer.is_alive():
            self._failed = TimeoutError(f"close() waited {timeout_s:.0f} s")
            raise CheckpointError(f"gave up after {timeout_s:.0f} s waiting for checkpoint "
                                  f"{self._saved} to be written to {self.directory}")
        if errors:
            raise self._error(errors[0]) from errors[0]


def _path(path: Any) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _as_target(tree: Any, abstract_state: Any) -> Any:
    """A tree restored without a target (plain dicts and lists) in `abstract_state`'s structure
    and shardings, matched leaf by leaf on their key paths."""
    by_path = {_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
    want, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    missing = ["/".join(_path(p)) for p, _ in want if _path(p) not in by_path]
    if missing or len(by_path) != len(want):
        raise ValueError(f"the upgraded checkpoint does not match the model: {len(by_path)} "
                         f"arrays for {len(want)}; missing {missing[:5]}")
    return jax.tree.unflatten(treedef, [jax.device_put(by_path[_path(p)], t.sharding)
                                        for p, t in want])


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings, for restoring onto a mesh."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


# ------------------------------------------------------------------------------ integrity
def state_digest(state: Any) -> tuple[dict[str, list[int]], bool]:
    """({leaf path: [sum, position-weighted sum]}, every float is finite) of a pytree of arrays,
    computed on the devices where the arrays live."""
    paths, leaves = zip(*[(_path_name(p), x)
                          for p, x in jax.tree_util.tree_leaves_with_path(state)])
    sums, finite = jax.device_get(_digest(list(leaves)))
    return {p: [int(a), int(b)] for p, (a, b) in zip(paths, sums)}, bool(finite)


def _path_name(path: tuple) -> str:
    """'params/Dense_0/kernel': the same for a dataclass, a dict or a list at any level."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


@jax.jit
def _digest(leaves: list[jax.Array]) -> tuple[list, jax.Array]:
    flags = [jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)]
    return [_checksum(x) for x in leaves], jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _checksum(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two uint32 sums of the array's bit patterns: a plain one and one weighted by a hash of each
    element's flat index (a moved value changes it). Integer sums wrap and are exact in any order,
    so the result does not depend on the mesh or the sharding the array lives on."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    bits = (x.astype(jnp.uint32) if x.dtype == jnp.bool_
            else jax.lax.bitcast_convert_type(x, _UINT[x.dtype.itemsize]).astype(jnp.uint32))
    index, stride = jnp.zeros(bits.shape, jnp.uint32), 1
    for dim in reversed(range(bits.ndim)):  # the flat index without a reshape (no resharding)
        index += jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim) * jnp.uint32(stride % 2**32)
        stride *= bits.shape[dim]
    weight = index * jnp.uint32(2654435761) + jnp.uint32(1)  # Knuth's multiplicative hash
    return jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32)


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim.learning_rate': 0.001, ...} of a config dict, values as JSON has them (tuples as
    lists), so that a config and its saved config.json compare equal."""
    out: dict[str, Any] = {}
    for k, v in json.loads(json.dumps(config, default=str)).items():
        out.update(flat_config(v, f"{prefix}{k}.") if isinstance(v, dict) and v
                   else {f"{prefix}{k}": v})
    return out


def config_diff(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, current value)} of each config key that differs (None: absent)."""
    old, new = flat_config(saved), flat_config(current)
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)}


def saved_run(directory: str) -> tuple[int, dict[str, tuple[int, ...]], dict] | None:
    """(step, {state path: shape}, config) of the newest checkpoint in `directory` whose
    metadata reads, without restoring an array or writing anything; None when there is none.
    Parameter paths of old checkpoints come renamed (`attn_jax.train.legacy`), as a restore
    would read them."""
    if not os.path.isdir(directory):
        return None
    directory = os.path.abspath(directory)  # orbax reads array metadata from absolute paths only
    handlers = dict(state=ocp.StandardCheckpointHandler(), config=ocp.JsonCheckpointHandler(),
                    data=ocp.JsonCheckpointHandler(), digest=ocp.JsonCheckpointHandler(),
                    eval=ocp.JsonCheckpointHandler())
    options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
    absl_log = logging.getLogger("absl")
    level = absl_log.level
    absl_log.setLevel(logging.ERROR)  # orbax warns that a read-only manager is read-only
    try:
        with ocp.CheckpointManager(directory, item_handlers=handlers, options=options) as manager:
            return _newest_readable(manager)
    finally:
        absl_log.setLevel(level)


def _newest_readable(manager: ocp.CheckpointManager
                     ) -> tuple[int, dict[str, tuple[int, ...]], dict] | None:
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            tree = manager.item_metadata(step)["state"]
            tree = upgrade_params({k: tree[k] for k in tree.keys()})
            shapes = {_path_name(p): tuple(leaf.shape)
                      for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
            config = dict(manager.restore(step, args=ocp.args.Composite(
                config=ocp.args.JsonRestore())).config)
        except Exception:  # unreadable (None, missing files): the restore's fallback decides
            continue
        return step, shapes, config
    return None


def state_shapes(abstract_state: Any) -> dict[str, tuple[int, ...]]:
    """{state path: shape} of a train state, in the paths `saved_run` gives."""
    return {_path_name(p): tuple(x.shape)
            for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}


def _one_line(e: BaseException) -> str:
    """The first line of an error, without tensorstore's long spec dump."""
    text = (str(e).strip().splitlines() or [""])[0]
    for noise in (" [tensorstore_spec", " See full TensorStore details"):
        text = text.split(noise)[0]
    return f"{type(e).__name__}: {text[:300]}"
