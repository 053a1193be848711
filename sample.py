"""Sample from a trained diffusion run; optionally score it (bits/dim, FID).

    python sample.py --workdir runs/ddpm_fashion_mnist --num 64 --sampler ddim --steps 50 --eta 0 \
        --seed 0 [--ema | --no-ema] [--out DIR]
    python sample.py --workdir runs/ddpm_fashion_mnist --num 0 --bpd --bpd-examples 1000
    python sample.py --workdir runs/ddpm_fashion_mnist --num 10000 --sampler ddim --steps 100 \
        --fid --classifier-workdir runs/vit_fashion_mnist

Loads the run's config and parameters (the EMA parameters when the run kept them, unless
--no-ema), draws `--num` images in batches of `--batch-size` from one jitted sampler (the batch
split over all devices when it divides their number) and writes `<out>/samples.png` (a grid of
at most 256) and `<out>/samples.npz` (`images` uint8 [num, H, W, C], 0..255 = (x + 1) * 127.5, at
the model's resolution, plus the settings and scores). Unset sampler settings come from the run's
config.data.sampling. `--bpd` evaluates the full variational bound over all T steps on
`--bpd-examples` test images, in batches of at most that many (rounded up to the device count;
`bpd_rows` in the output counts the images the model ran on); `--fid` scores the samples on the
features of a classification run of this repo (see attn_jax/eval/fid.py) against the config's
reference split (`--fid-split`), and `--fid-baselines` puts them on a scale: the FID of as many
real held-out images (the floor a perfect model would score at this sample size) and of uniform
noise (the ceiling). Each phase shows its progress (see attn_jax/progress.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a train.py workdir of a diffusion run")
    parser.add_argument("--num", type=int, default=64, help="images to generate (0: none)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per sampler call (default: min(num, 256))")
    parser.add_argument("--sampler", choices=("ddpm", "ddim"), default=None,
                        help="default: the run's config.data.sampling.sampler")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: config)")
    parser.add_argument("--eta", type=float, default=None, help="DDIM eta (default: config)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                        help="EMA parameters (default: when the run kept them)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--out", default=None, help="output directory (default: WORKDIR/samples)")
    parser.add_argument("--bpd", action="store_true", help="full test-set bits/dim over all T")
    parser.add_argument("--bpd-examples", type=int, default=256, help="test images for --bpd")
    parser.add_argument("--bpd-split", default="test")
    parser.add_argument("--fid", action="store_true", help="FID of the samples (needs "
                        "--classifier-workdir or a fid evaluator in the run's config.evals)")
    parser.add_argument("--classifier-workdir", default=None)
    parser.add_argument("--fid-split", default=None, help="reference split (default: config)")
    parser.add_argument("--fid-baselines", action="store_true",
                        help="also the FID of --num real images of --fid-heldout-split (the "
                        "floor) and of --num uniform-noise images (the ceiling)")
    parser.add_argument("--fid-heldout-split", default="test",
                        help="real images for the floor; not the reference split")
    args = parser.parse_args(argv)
    if args.num < 0 or (args.batch_size is not None and args.batch_size < 1):
        parser.error(f"--num must be >= 0 and --batch-size >= 1, got {args.num}, {args.batch_size}")
    if args.bpd and args.bpd_examples < 1:
        parser.error(f"--bpd-examples must be >= 1, got {args.bpd_examples}")
    if args.fid and args.num < 2:
        parser.error(f"--fid needs --num >= 2 generated images, got {args.num}")
    if args.fid_baselines and not args.fid:
        parser.error("--fid-baselines needs --fid")
    if not (args.num or args.bpd):
        parser.error("nothing to do: --num 0 and no --bpd")
    return args


def _fail(message: str) -> None:
    sys.exit(f"sample.py: error: {message}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # Checks that need no JAX first: a wrong path fails in a second.
    config_path = os.path.join(args.workdir, "config.json")
    if not os.path.isdir(args.workdir):
        _fail(f"workdir {args.workdir!r} does not exist")
    if not os.path.exists(config_path):
        _fail(f"{config_path} does not exist: {args.workdir!r} is not a train.py workdir")
    with open(config_path) as f:
        task_name = json.load(f).get("task")
    if task_name != "diffusion":
        _fail(f"{args.workdir!r} is a {task_name!r} run, not a diffusion run")
    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        _fail(f"no checkpoints in {args.workdir!r}: has the run saved one yet?")

    import jax
    import numpy as np

    from attn_jax.eval.evaluators import bpd_batch_size
    from attn_jax.tasks.diffusion import DiffusionTask
    from attn_jax.train import sharding as shd
    from attn_jax.train.restore import checkpoint_steps, load_config, load_params
    from attn_jax.viz.grid import image_grid, save_png, to_uint8

    steps = checkpoint_steps(args.workdir)
    if not steps:
        _fail(f"no completed checkpoint in {os.path.join(args.workdir, 'checkpoints')}")
    step = steps[-1] if args.step is None else args.step
    config = load_config(args.workdir)
    ema = float(config.get("ema_decay", 0.0)) > 0 if args.ema is None else args.ema
    try:
        config, params = load_params(args.workdir, step, ema=ema)
    except (FileNotFoundError, ValueError) as e:  # a step that was not saved, no EMA kept
        _fail(str(e))
    print(f"workdir: {os.path.abspath(args.workdir)} (step {step}, "
          f"{'EMA' if ema else 'raw'} parameters); devices: "
          f"{shd.describe_devices(jax.devices())}", flush=True)
    task = DiffusionTask(config)
    # Defaults from the run's fid evaluator (config.evals.NAME with type 'fid'), if it had one.
    fid_eval = next((dict(e) for e in dict(config.get("evals") or {}).values()
                     if dict(e).get("type") == "fid"), {})
    classifier = args.classifier_workdir or fid_eval.get("classifier_workdir", "")
    fid_split = args.fid_split or fid_eval.get("split", "test")
    if args.fid and not os.path.exists(os.path.join(classifier or "", "config.json")):
        _fail(f"--fid needs a classification run's workdir: --classifier-workdir "
              f"{classifier or '(unset)'} has no config.json")
    # All devices split each batch when they divide it; otherwise one device does the work
    # (a replicated computation would repeat it on every device).
    devices = jax.device_count()
    batch = args.batch_size or min(args.num, 256) or 64
    # Each image of the bound costs T model calls: no more rows than --bpd-examples asks for
    # (rounded up to the device count, so that the batch still splits over the devices).
    bpd_batch = bpd_batch_size(args.batch_size or 64, args.bpd_examples, devices)
    mesh = None
    if devices > 1 and batch % devices == 0 and (not args.bpd or bpd_batch % devices == 0):
        mesh = shd.make_mesh({"data": -1})
    params = jax.device_put(params, shd.NamedSharding(mesh, shd.P()) if mesh else jax.devices()[0])
    settings = dict(sampler=args.sampler, num_steps=args.steps, eta=args.eta)
    settings = {k: v for k, v in settings.items() if v is not None}
    resolved = {**task.sampling_cfg, **settings}
    result: dict = {"workdir": os.path.abspath(args.workdir), "step": step, "ema": ema,
                    "seed": args.seed, "sampler": resolved["sampler"],
                    "num_steps": int(resolved["num_steps"]), "eta": float(resolved["eta"]),
                    "num": args.num, "devices": devices if mesh else 1}
    out_dir = args.out or os.path.join(args.workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)

    images = None
    if args.num:
        start = time.perf_counter()
        samples = task.generate(params, args.num, jax.random.PRNGKey(args.seed), mesh,
                                batch_size=batch, **settings)
        result["sample_seconds"] = time.perf_counter() - start
        result["batch_size"] = batch
        images = to_uint8(samples)
        save_png(os.path.join(out_dir, "samples.png"), image_grid(images[:256]))
        if args.fid:
            try:
                result["fid"] = task.fid(params, classifier_workdir=classifier,
                                         split=fid_split, samples=samples)
                if args.fid_baselines:
                    result.update(task.fid_baselines(
                        args.num, classifier_workdir=classifier, split=fid_split,
                        heldout_split=args.fid_heldout_split, seed=args.seed))
            except (FileNotFoundError, ValueError) as e:  # e.g. a non-classification run
                _fail(f"FID: {e}")
    if args.bpd:
        bpd = task.bits_per_dim(params, split=args.bpd_split, max_examples=args.bpd_examples,
                                batch_size=bpd_batch, seed=args.seed, mesh=mesh)
        names = {"num_examples": "bpd_examples", "num_rows": "bpd_rows"}
        result.update({names.get(k, f"test_{k}"): v for k, v in bpd.items()})
    np.savez(os.path.join(out_dir, "samples.npz"),
             images=images if images is not None else np.zeros((0, *task.image_shape), np.uint8),
             **{k: np.asarray(v) for k, v in result.items()})
    written = ["samples.png"] if images is not None else []
    print(f"wrote {', '.join(written + ['samples.npz'])} to {os.path.abspath(out_dir)}",
          flush=True)
    print(json.dumps(result), flush=True)  # the last line: the settings and scores
    return result


if __name__ == "__main__":
    main()
