"""Train any attn_jax model from a config file.

    python train.py                                         # configs/default.py, offline
    python train.py --config configs/vit_fashion_mnist.py --workdir runs/vit_fmnist
    python train.py --config configs/vit_cifar10.py --config.batch_size=256 --config.mesh.fsdp=4

Running again on a workdir that holds a checkpoint resumes from it. Several processes (a TPU pod,
or `--num_processes`/`--process_id`/`--coordinator` by hand) each run this same command.

Exit status: 0 done, 2 bad config, 3 NaN/Inf, 4 checkpoint error, 5 workdir in use, 75 preempted
by SIGTERM/SIGINT with the step saved (rerun to resume); see attn_jax/train/safety.py.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "default.py"),
                                "Config file (configs/*.py), optionally `path:arg`.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and artefacts go here "
                    "(default: runs/<config name>).")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("jit_cache", True, "Keep compiled programs in JAX's persistent compilation "
                  "cache, so that reruns and resumes skip compiling (attn_jax/train/jit_cache.py).")
flags.DEFINE_string("jit_cache_dir", None, "The cache's directory (default: "
                    "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/attn_jax/jit).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with its "
                  "auto-detection (Cloud TPU pods, SLURM).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" chatter
    from attn_jax.train import safety

    sys.unraisablehook = safety.drop_event_loop_closed(sys.unraisablehook)
    config = FLAGS.config
    name = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = FLAGS.workdir or os.path.join("runs", name)
    if not (FLAGS.coordinator or FLAGS.num_processes or FLAGS.distributed):
        try:  # a run that holds the workdir: say so now, before the slow imports
            safety.WorkdirLock(workdir, probe=True)
        except safety.WorkdirLocked as e:
            _fail(e)

    import jax  # after flag parsing: XLA_FLAGS/JAX_PLATFORMS from the environment are in place
    import tensorflow_datasets as tfds

    from attn_jax.train import jit_cache

    jit_cache.configure(FLAGS.jit_cache, FLAGS.jit_cache_dir)  # before anything compiles

    tfds.disable_progress_bar()

    if FLAGS.coordinator or FLAGS.num_processes:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()

    from attn_jax.train.loop import train_and_evaluate

    try:
        _, final = train_and_evaluate(config, workdir)
    except safety.Preempted as e:
        if jax.process_index() == 0:
            print(f"preempted by {e}; resume with: {shlex.join(['python', *sys.argv])}",
                  flush=True)
        sys.exit(e.exit_code)
    except safety.TrainingError as e:
        _fail(e)
    if jax.process_index() == 0:
        print("final: " + "  ".join(f"{k} {v:.4f}" for k, v in final.items()), flush=True)


def _fail(e) -> None:
    """A fault the trainer handled: its message as one line, and its exit status."""
    from attn_jax.train import safety

    print(f"error: {e}", file=sys.stderr, flush=True)
    if isinstance(e, safety.CheckpointError):
        sys.stdout.flush()
        os._exit(e.exit_code)  # orbax threads of a failed save would hold the exit for 300 s
    sys.exit(e.exit_code)


if __name__ == "__main__":
    app.run(main)
