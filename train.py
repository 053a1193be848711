"""Train any attn_jax model from a config file.

    python train.py                                         # configs/default.py, offline
    python train.py --config configs/vit_fashion_mnist.py --workdir runs/vit_fmnist
    python train.py --config configs/vit_cifar10.py --config.batch_size=256 --config.mesh.fsdp=4
    python train.py --config configs/transformer_dates.py --config.total_steps=150  # a short run
    python train.py --config configs/default.py --dry_run   # the resolved config, the parameter
                                                            # count; touches nothing
    python train.py --list_keys                             # every config key, with its default

Any config key is `--config.KEY=VALUE`, including every key a task declares for `config.data`
and each evaluator for `config.evals.NAME` (README.md, "Config keys"). A run shorter than its
config's warmup or cadences gets them cut to fit, with a line saying so.

Running again on a workdir that holds a checkpoint resumes from it (a finished run prints its
final metrics again). A resume whose config differs from the saved one in a key that changes the
schedule, the model or the data is refused with the keys named, unless they are listed in
`--config.allow_changes=KEY,KEY`; a workdir holding another model's checkpoint is refused with
the first mismatching parameter named. Several processes (a TPU pod, or
`--num_processes`/`--process_id`/`--coordinator` by hand) each run this same command.

Exit status: 0 done, 2 the command line, the config or the workdir does not fit (one line on
stderr names the problem and the fix, nothing is written; `--verbose` or ATTN_JAX_VERBOSE=1 adds
the traceback), 3 NaN/Inf, 4 checkpoint error, 5 workdir in use, 75 preempted by SIGTERM/SIGINT
with the step saved (rerun to resume), 130 SIGINT before training started (nothing written); see
attn_jax/train/safety.py.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shlex
import sys
import tempfile

from attn_jax.train import cli  # noqa: I001 (first: Ctrl-C from here on is one line)

cli.stop_at_once_on_sigint()

from absl import app, flags  # noqa: E402

from attn_jax.train import safety  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "default.py")
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and artefacts go here "
                    "(default: runs/<config name>).")
flags.DEFINE_bool("dry_run", False, "Print the resolved config, the parameter count and what "
                  "the run would do with the workdir, run every check, and exit; writes nothing.")
flags.DEFINE_alias("print_config", "dry_run")
flags.DEFINE_bool("list_keys", False, "Print every config key (the trainer's, each task's "
                  "config.data, each evaluator type's) with its default, and exit.")
flags.DEFINE_bool("verbose", False, f"Print the traceback of a user error too (or set "
                  f"{cli.VERBOSE_ENV}=1).")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("jit_cache", True, "Keep compiled programs in JAX's persistent compilation "
                  "cache, so that reruns and resumes skip compiling (attn_jax/train/jit_cache.py).")
flags.DEFINE_string("jit_cache_dir", None, "The cache's directory (default: "
                    "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/attn_jax/jit).")
flags.DEFINE_enum("cpu_kernels", None, ["eigen", "ynnpack"], "Who runs XLA:CPU's matrix "
                  "multiplications (attn_jax/train/cpu_kernels.py): eigen (default, or "
                  "$ATTN_JAX_CPU_KERNELS: XLA's own dot kernels, measured faster here) or "
                  "ynnpack (XLA's default). CPU runs only.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with its "
                  "auto-detection (Cloud TPU pods, SLURM).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        cli.fail(ValueError(f"unexpected arguments {argv[1:]}: flags are --name=value, "
                            "config keys --config.KEY=VALUE"))
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" chatter
    if FLAGS.list_keys:
        from attn_jax.train.config import keys_reference
        print(keys_reference(), end="")
        return
    sys.unraisablehook = safety.drop_event_loop_closed(sys.unraisablehook)
    config = FLAGS.config
    name = os.path.splitext(os.path.basename(cli.config_path()))[0]
    workdir = FLAGS.workdir or os.path.join("runs", name)
    _run(config, workdir)


def _run(config, workdir: str) -> None:
    if not (FLAGS.coordinator or FLAGS.num_processes or FLAGS.distributed):
        try:  # a run that holds the workdir: say so now, before the slow imports
            safety.WorkdirLock(workdir, probe=True)
        except safety.WorkdirLocked as e:
            cli.fail(e)

    import jax  # after flag parsing: XLA_FLAGS/JAX_PLATFORMS from the environment are in place
    import tensorflow_datasets as tfds

    from attn_jax.train import cpu_kernels, jit_cache

    cpu_kernels.configure(FLAGS.cpu_kernels, strict=True)  # before any backend starts
    jit_cache.configure(FLAGS.jit_cache, FLAGS.jit_cache_dir)  # before anything compiles

    tfds.disable_progress_bar()

    if FLAGS.coordinator or FLAGS.num_processes:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()

    from attn_jax.train import loop

    try:
        if FLAGS.dry_run:
            _dry_run(config, workdir, loop)
            return
        _, final = loop.train_and_evaluate(config, workdir)
    except safety.Preempted as e:
        if jax.process_index() == 0:
            print(f"preempted by {e}; resume with: {shlex.join(['python', *sys.argv])}",
                  flush=True)
        sys.exit(e.exit_code)
    except safety.TrainingError as e:
        cli.fail(e)
    if jax.process_index() == 0:
        print("final: " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()), flush=True)


def _dry_run(config, workdir: str, loop) -> None:
    """Every check a run makes, read-only: the config as the run would use it, then one line."""
    with tempfile.TemporaryDirectory() as scratch:  # a SentencePiece vocabulary goes here
        plan = loop.plan_run(config, scratch)
    step, note = safety.check_resume(workdir, config, plan.abstract)
    print(json.dumps(plan.config.to_dict(), indent=2, default=str))
    for line in (plan.note, note):
        if line:
            print(line)
    where = os.path.abspath(workdir)
    action = ("would start from scratch" if step is None else
              f"holds a finished run (step {step})" if step >= plan.steps else
              f"would resume at step {step}")
    print(f"{config.task}: {plan.n_params:,} parameters, mesh {dict(plan.mesh.shape)}, "
          f"{plan.steps} steps; workdir {where} {action}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=functools.partial(cli.parse_flags, default_config=DEFAULT_CONFIG,
                                                 configs_dir=os.path.join(ROOT, "configs")))
