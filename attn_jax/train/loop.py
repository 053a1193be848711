"""The shared trainer: one loop for every task, on any mesh, single- or multi-host.

Reads top to bottom: config checks -> mesh -> task, evaluators and abstract state (fresh, or
`config.init` from another run) -> shardings (`plan_run`: what `train.py --dry_run` prints) ->
the workdir's checkpoint checked against them -> workdir, checkpoint restore or init -> jitted
step -> loop (train, log, evaluators on their own cadence, checkpoint).
Nothing touches the workdir before every check has passed and the state has been traced, so a bad
config, or a workdir of another model or config, never damages an existing run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attn_jax import progress as progress_lib
from attn_jax.attention import attention_platform
from attn_jax.eval.evaluators import EvalContext, build_evaluators, run_due
from attn_jax.tasks import get_task
from attn_jax.train import safety
from attn_jax.train import sharding as shd
from attn_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from attn_jax.train.init import Initializer
from attn_jax.train.metric_writer import MetricWriter, TrainProgress
from attn_jax.train.optim import ParamGroups, make_optimizer

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position (saved next to it)."""
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any  # None when config.ema_decay == 0
    rng: jax.Array   # raw uint32 key; step keys are fold_in(rng, step), so no RNG state to carry


@flax.struct.dataclass
class CarryState(TrainState):
    """A TrainState that also holds what the task carries from one step to the next
    (`task.init_carry()`, not None: a stateful LM's recurrent state), every leaf leading with
    the global batch and sharded like a batch. A subclass rather than a field that is None for
    the other tasks: orbax refuses to restore a checkpoint into a tree with a key it lacks, so
    every run saved before stays restorable."""
    carry: Any


def _split_rows(x: jax.Array, accum: int) -> jax.Array:
    """[b, ...] -> [accum, b / accum, ...]: micro-batch k takes rows k, k + accum, ..."""
    return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)


def _merge_rows(x: jax.Array) -> jax.Array:
    """The inverse of `_split_rows`."""
    return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


# ------------------------------------------------------------------------------------ checks
def total_steps(config: ml_collections.ConfigDict, task: Any) -> int:
    if config.get("total_steps"):
        return int(config.total_steps)
    epochs = config.get("num_epochs")
    if not epochs:
        raise ValueError("set config.total_steps or config.num_epochs")
    return max(1, int(epochs * task.train_size() // config.batch_size))


def validate(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """Config errors that would otherwise surface mid-compile, or mid-run."""
    batch, dp = int(config.batch_size), shd.data_parallel_size(mesh)
    accum = int(config.get("grad_accum_steps", 1))
    if batch % dp:
        raise ValueError(f"batch_size={batch} is not divisible by the data-parallel size {dp} "
                         f"(mesh data*fsdp = {dict(mesh.shape)})")
    if batch % jax.process_count():
        raise ValueError(f"batch_size={batch} is not divisible by the {jax.process_count()} "
                         "processes")
    if accum < 1 or batch % accum or (batch // accum) % dp:
        raise ValueError(f"grad_accum_steps={accum}: batch_size={batch} must split into {accum} "
                         f"micro-batches each divisible by the data-parallel size {dp}")
    if config.get("dtype", "float32") not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={config.dtype!r}: choose float32, bfloat16 or float16")
    if not 0.0 <= float(config.get("ema_decay", 0.0)) < 1.0:
        raise ValueError(f"ema_decay={config.ema_decay} must be in [0, 1)")


def fit_to_length(config: ml_collections.ConfigDict, steps: int
                  ) -> tuple[ml_collections.ConfigDict, str]:
    """`config` with what cannot fit in a run of `steps` steps cut to fit (a warmup as long as
    the run: a tenth of it; log, eval and checkpoint cadences longer than the run: a log line
    every tenth, evaluations and the checkpoint at the end), and a one-line note naming each
    change ('' when nothing changed). So `--config.total_steps=N` alone makes a short run."""
    fitted = config.copy_and_resolve_references()
    changes: list[tuple[str, int, int]] = []

    def fit(node: ml_collections.ConfigDict, key: str, where: str, value: int) -> None:
        changes.append((where, int(node[key]), value))
        node[key] = value

    with fitted.unlocked():
        optim = fitted.optim
        warmup = int(optim.get("warmup_steps", 0))
        if optim.get("schedule", "cosine") != "constant" and warmup >= steps:
            fit(optim, "warmup_steps", "optim.warmup_steps", steps // 10)
        if int(fitted.get("log_every_steps", 50)) > steps:
            fit(fitted, "log_every_steps", "log_every_steps", max(1, steps // 10))
        if int(fitted.get("eval_every_steps", 0)) > steps:
            fit(fitted, "eval_every_steps", "eval_every_steps", steps)
        if int(fitted.checkpoint.get("every_steps", 0)) > steps:
            fit(fitted.checkpoint, "every_steps", "checkpoint.every_steps", steps)
        for name, section in (fitted.get("evals") or {}).items():
            if int(section.get("every_steps", 0)) > steps:
                fit(section, "every_steps", f"evals.{name}.every_steps", steps)
    if not changes:
        return config, ""
    return fitted, (f"fitted to the {steps}-step run: " + ", ".join(
        f"{where} {old} -> {new}" for where, old, new in changes))


# ------------------------------------------------------------------------------------ steps
def make_train_step(task: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    accum: int, ema_decay: float, ema_warmup: bool = False,
                    groups: ParamGroups | None = None) -> Callable:
    """(state, batch) -> (state, metrics). Gradient accumulation scans over micro-batches.

    A `CarryState` passes its carry to the task's loss (`task.loss(..., carry=carry)`, whose
    aux is then (metrics, new carry)) and keeps the new one; no gradient crosses steps.

    The EMA of the parameters starts from the initial ones. With `ema_warmup`, update t (from 0)
    uses decay min(ema_decay, (1 + t) / (10 + t)) (TensorFlow's ExponentialMovingAverage with
    num_updates), so the initialisation fades within the first steps instead of lingering
    (plain 0.999 still keeps 0.999**3000 = 5% of it after 3000 steps)."""

    def loss_of(params, batch, rng, step, carry):
        if groups:  # frozen groups: no gradient computed for them at all
            params = groups.stop_frozen(params)
        if carry is None:
            loss, metrics = task.loss(params, batch, rng, step)
            return loss, (metrics, None)
        return task.loss(params, batch, rng, step, carry=carry)

    def grads_of(params, batch, rng, step, carry):
        (loss, (metrics, carry)), grads = jax.value_and_grad(loss_of, has_aux=True)(
            params, batch, rng, step, carry)
        return ((loss, metrics), grads), carry

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        rng = jax.random.fold_in(state.rng, state.step)
        carry = getattr(state, "carry", None)
        if accum == 1:
            ((loss, metrics), grads), carry = grads_of(state.params, batch, rng, state.step,
                                                       carry)
        else:
            # Micro-batch k takes rows k, k+accum, ...: each device keeps its own rows (no
            # resharding), and the mean of equal-size micro-batch means is the full-batch mean.
            # A carry is split into the same rows and put back together after.
            micro = jax.tree.map(lambda x: _split_rows(x, accum), (batch, carry))

            def body(total, inputs):
                k, (mb, mc) = inputs
                out, mc = grads_of(state.params, mb, jax.random.fold_in(rng, k), state.step, mc)
                return jax.tree.map(jnp.add, total, out), mc

            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                grads_of, state.params, first[0], rng, state.step, first[1])[0])
            total, carries = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
            (loss, metrics), grads = jax.tree.map(lambda x: x / accum, total)
            carry = jax.tree.map(_merge_rows, carries)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if ema is not None:
            decay = jnp.asarray(ema_decay, jnp.float32)
            if ema_warmup:
                t = state.step.astype(jnp.float32)
                decay = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
            ema = optax.incremental_update(params, ema, 1.0 - decay)
        metrics = {**metrics, "loss": loss, "learning_rate": schedule(state.step),
                   "grad_norm": optax.tree.norm(grads)}
        new = dict(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        if isinstance(state, CarryState):
            new["carry"] = carry
        return state.replace(**new), metrics

    return train_step


# ------------------------------------------------------------------------------------ plan
@dataclasses.dataclass
class Plan:
    """What the checks build before anything is written: the run as `train.py --dry_run` shows
    it. `config` is the effective config (`fit_to_length` applied); `note` says what that
    changed ('' if nothing)."""

    config: ml_collections.ConfigDict
    note: str
    mesh: jax.sharding.Mesh
    task: Any
    evaluators: list
    steps: int
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    groups: ParamGroups
    init_state: Callable[[jax.Array], TrainState]
    abstract: TrainState       # ShapeDtypeStructs with the target shardings
    state_sh: TrainState
    param_sh: Any
    n_params: int


def plan_run(config: ml_collections.ConfigDict, workdir: str,
             devices: list[jax.Device] | None = None) -> Plan:
    """Every check of `config` (ranges, mesh, task, data, evaluators, the model traced to its
    abstract state), writing nothing but a SentencePiece task's vocabulary into `workdir`.

    Raises:
      safety.ConfigError: whatever the config gets wrong (a ValueError or OSError of a check,
        with it as the cause), as one line naming the problem.
    """
    safety.check_config(config)
    try:
        return _plan(config, workdir, devices)
    except safety.TrainingError:
        raise
    except (ValueError, OSError) as e:  # the config's fault: bad values, missing data
        raise safety.ConfigError(" ".join(str(e).split()) or type(e).__name__) from e


def _plan(config: ml_collections.ConfigDict, workdir: str, devices: list[jax.Device] | None
          ) -> Plan:
    # -- checks and mesh (nothing written yet) --
    mesh = shd.make_mesh(dict(config.mesh), devices)
    attention_platform(mesh)  # the attention kernel is chosen for the mesh's devices
    validate(config, mesh)
    task = get_task(config.task)(config)
    # A SentencePiece task trains its vocabulary into the workdir when it first needs it (to
    # count its training examples for num_epochs, or for the first batch): the only file that
    # may be written before the state is traced.
    task.workdir = workdir
    task.validate()
    steps = total_steps(config, task)
    config, note = fit_to_length(config, steps)
    evaluators = build_evaluators(config, task)  # every section checked before any compile
    ema_decay = float(config.get("ema_decay", 0.0))

    # -- abstract state and its shardings --
    tx, schedule = make_optimizer(config.optim, steps)
    groups = ParamGroups(config.optim.get("lr_mults", ()))
    initializer = Initializer.from_config(config)

    init_carry = getattr(task, "init_carry", lambda: None)
    carrying = jax.eval_shape(init_carry) is not None

    def init_state(rng: jax.Array) -> TrainState:
        """Parameters keep their logical-axis boxes here; `nn.unbox` strips them."""
        params = initializer.apply(task.init_params(jax.random.fold_in(rng, 0)))
        fields = dict(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(nn.unbox(params)),
                      ema_params=params if ema_decay else None, rng=rng)
        return CarryState(**fields, carry=init_carry()) if carrying else TrainState(**fields)

    # Traced, not compiled: a model's shape errors surface here, before anything is written.
    abstract_boxed = jax.eval_shape(lambda: init_state(jax.random.PRNGKey(int(config.seed))))
    param_sh = shd.logical_shardings(abstract_boxed.params, mesh)
    fields_sh = dict(
        step=shd.NamedSharding(mesh, shd.P()), params=param_sh,
        opt_state=shd.optimizer_shardings(tx, abstract_boxed.opt_state, param_sh, mesh),
        ema_params=param_sh if ema_decay else None, rng=shd.NamedSharding(mesh, shd.P()))
    state_sh = TrainState(**fields_sh) if not carrying else CarryState(
        **fields_sh, carry=jax.tree.map(lambda x: shd.batch_sharding(mesh, x.ndim),
                                        abstract_boxed.carry))  # split like the batch
    abstract = abstract_with_shardings(nn.unbox(abstract_boxed), state_sh)
    groups.check(abstract.params)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    return Plan(config, note, mesh, task, evaluators, steps, tx, schedule, groups, init_state,
                abstract, state_sh, param_sh, n_params)


# Below this many parameters a CPU compiles the init program unoptimised.
SMALL_INIT_PARAMS = 20_000_000


def init_compiler_options(mesh: jax.sharding.Mesh, n_params: int) -> dict[str, Any]:
    """XLA options for the program that draws the initial state.

    That program is one threefry draw per parameter array, which XLA's CPU backend spends
    seconds optimising, and it runs once: at -O0 the offline configs compile and run it 1.7-2.7x
    faster (ddpm_fashion_mnist: 3.4 s against 8.8 s). Unoptimised it costs about 0.07 us per
    parameter (ViT-B/16 with AdamW: 6.0 s to compile plus 5.8 s to run at -O0, against 7.2 s plus
    1.0 s), so only CPU runs of models under SMALL_INIT_PARAMS compile it at -O0
    (benchmarks/bench_init.py, BENCHMARKS.md). The draws are the same up to float rounding (a
    few normal draws of the tiny ViT land 1 ulp apart; tests/test_train.py checks it); a given
    config on a given platform always draws the same bits."""
    on_cpu = all(d.platform == "cpu" for d in mesh.devices.flat)
    return {"xla_backend_optimization_level": 0} if on_cpu and n_params < SMALL_INIT_PARAMS else {}


# ------------------------------------------------------------------------------------ main
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: list[jax.Device] | None = None) -> tuple[TrainState, dict[str, float]]:
    """Train `config.task` as configured, resuming from `workdir` if it holds a checkpoint.

    Args:
      devices: the devices of the mesh (default: all devices of all processes).
    Returns:
      The final train state (sharded on the mesh) and the last evaluation's metrics.
    Raises:
      safety.TrainingError: a handled fault (see attn_jax/train/safety.py for each exit code);
        safety.ConfigError when the config, or the workdir's checkpoint, does not fit (nothing
        is written then).
    """
    safety.lock_workdir(workdir, probe=True)  # a live run there: fail now, not after tracing
    plan = plan_run(config, workdir, devices)
    _, resume_note = safety.check_resume(workdir, config, plan.abstract)  # read-only
    primary = jax.process_index() == 0
    if primary:
        for note in (plan.note, resume_note):
            if note:
                print(note, flush=True)
    with safety.RunGuard() as guard:  # lock, signal handlers: released however the run ends
        return _train_and_evaluate(config, workdir, plan, guard)


def _train_and_evaluate(user_config: ml_collections.ConfigDict, workdir: str, plan: Plan,
                        guard: safety.RunGuard) -> tuple[TrainState, dict[str, float]]:
    config, task, mesh, steps = plan.config, plan.task, plan.mesh, plan.steps
    state_sh, param_sh, evaluators = plan.state_sh, plan.param_sh, plan.evaluators
    accum = int(config.get("grad_accum_steps", 1))
    ema_decay = float(config.get("ema_decay", 0.0))
    primary = jax.process_index() == 0
    seed = int(config.seed)

    # -- workdir: writer, checkpoints, data --
    os.makedirs(workdir, exist_ok=True)
    guard.lock(workdir)  # one train.py per workdir, before anything in it is touched
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint)
    train_iter = task.train_iterator(seed=seed, process_index=jax.process_index(),
                                     process_count=jax.process_count())
    start, restored = ckpt.restore_latest(plan.abstract)  # the newest that verifies
    if start is not None:
        state, data_state = restored
        train_iter.set_state(data_state)
    else:
        state = jax.jit(lambda: nn.unbox(plan.init_state(jax.random.PRNGKey(seed))),
                        out_shardings=state_sh,
                        compiler_options=init_compiler_options(mesh, plan.n_params))()
    if primary:
        print(f"workdir: {os.path.abspath(workdir)}", flush=True)
        print(f"devices: {shd.describe_devices(mesh.devices.flat)}", flush=True)
        begin = ("resuming at step " + str(start) if start is not None
                 else f"from the parameters of {config.init.path}" if config.init.get("path")
                 else "from scratch")
        print(f"{config.task}: {plan.n_params:,} parameters, mesh {dict(mesh.shape)}, "
              f"{jax.process_count()} process(es), {steps} steps, {begin}", flush=True)
    # A finished run only reports: no event file, no metrics row.
    writer = MetricWriter(workdir, enabled=primary and (start or 0) < steps)

    # -- jitted steps --
    train_step = make_train_step(task, plan.tx, plan.schedule, accum, ema_decay,
                                 bool(config.get("ema_warmup", True)), plan.groups)
    jit_train = None  # built on the first batch, when the batch's structure is known

    def save(step: int, metrics: dict[str, float] | None = None) -> None:
        guard.flush(ckpt)  # a NaN/Inf state is never saved
        # The config as given (not as fitted to the run's length): a rerun compares against it.
        ckpt.save(step, state, train_iter.get_state(), user_config.to_dict(), metrics)
        safety.write_config_json(workdir, user_config)  # describes the newest checkpoint

    # -- loop --
    step = int(jax.device_get(state.step))
    progress = TrainProgress(steps, step, enabled=primary)
    log_every = int(config.get("log_every_steps", 50))
    ckpt_every = int(config.checkpoint.get("every_steps", 0)) or steps
    debug = config.get("debug", ml_collections.ConfigDict())
    final: dict[str, float] = ckpt.eval_metrics(step) if step >= steps else {}  # a finished run
    try:
        while step < steps:
            host_batch = next(train_iter)
            batch = shd.global_batch(mesh, host_batch)
            if jit_train is None:
                batch_sh = jax.tree.map(lambda x: shd.batch_sharding(mesh, x.ndim), batch)
                jit_train = jax.jit(train_step, in_shardings=(state_sh, batch_sh),
                                    out_shardings=(state_sh, None), donate_argnums=0)
            state, metrics = jit_train(state, batch)
            step += 1
            guard.check_step(step, metrics, ckpt)  # NaN/Inf loss or grad norm, failed saves
            log_now = step % log_every == 0 or step == steps
            progress.update_to(step, quiet=log_now)  # a line at a steady rhythm between logs
            if debug.get("log_batches"):  # lets tests compare the batches two runs saw
                _log_batch(workdir, step, host_batch, jax.process_index())
            if log_now:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                rate = progress.report(step, metrics)
                writer.scalars(step, "train", {**metrics, **(
                    {"steps_per_sec": rate} if rate is not None else {})})
            eval_metrics = run_due(evaluators, EvalContext(
                state.params, state.ema_params, step, workdir, writer, mesh, param_sh), steps)
            if eval_metrics is not None:
                writer.scalars(step, "eval", eval_metrics)
                if primary:
                    progress_lib.echo(f"eval @ {step}: " + "  ".join(
                        f"{k} {v:.4f}" for k, v in eval_metrics.items()))
                final = {**final, **eval_metrics}
            if step % ckpt_every == 0 or step == steps:
                save(step, eval_metrics)
                if debug.get("kill_after_save_step") == step:
                    os.kill(os.getpid(), signal.SIGKILL)  # a crash while the save is in flight
                if debug.get("kill_after_step") == step:
                    ckpt.wait()
                    os.kill(os.getpid(), signal.SIGKILL)  # a crash between steps
            guard.preempt_if_requested(step, ckpt, save)  # SIGTERM/SIGINT: save, exit 75
    finally:
        progress.close(finished=step >= steps)
        ckpt.close()  # waits for an in-flight save: an exception never loses a checkpoint
        writer.close()
    return state, final


def _log_batch(workdir: str, step: int, batch: Mapping[str, np.ndarray], process: int) -> None:
    digest = {k: hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest()
              for k, v in batch.items()}
    with open(os.path.join(workdir, f"batches.p{process}.jsonl"), "a") as f:
        f.write(json.dumps({"step": step, **digest}) + "\n")
