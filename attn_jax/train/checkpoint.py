"""Checkpoints with orbax: the whole training state, the data position and the config.

Saves are asynchronous and atomic: orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames it
when complete, so a save cut short by a crash is never listed, never restored, and is reported
with a warning when the manager opens the directory again.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from attn_jax.train.legacy import has_legacy_names, upgrade_params

log = logging.getLogger(__name__)

_TMP_MARKER = ".orbax-checkpoint-tmp"


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
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_state: Any, config: dict,
             metrics: dict[str, float] | None = None) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state),
                                  config=ocp.args.JsonSave(config))
        self.manager.save(step, args=args, metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
        """Restore `state` onto the shardings of `abstract_state` (leaves are
        `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`), so a different mesh works."""
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
            return restored.state, restored.data
        except ValueError as e:
            if "tree structures do not match" not in str(e):
                raise
            mismatch = e
        # Written before a rename (attn_jax.train.legacy): read as saved, rename, place.
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), data=ocp.args.JsonRestore()))
        if not has_legacy_names(restored.state):
            raise mismatch
        return _as_target(upgrade_params(restored.state), abstract_state), restored.data

    def restore_state_only(self, step: int, abstract_state: Any) -> Any:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        return restored.state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


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
