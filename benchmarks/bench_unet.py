"""Throughput of the DDPM U-Net: training images/s and sampling images/s (DDPM and DDIM).

    python benchmarks/bench_unet.py                      # GPU: both configs, full step counts
    python benchmarks/bench_unet.py --steps-scale 0.02   # CPU: 20 DDPM / 1 DDIM steps

Training: one jitted step = eps-prediction loss (`GaussianDiffusion.training_losses`, uniform t,
dropout on) + grad + optax.adam update, parameters donated. Sampling: `ddpm_sample` over all T
steps and `ddim_sample` with 50 steps, each one jitted `lax.scan`. `--steps-scale` runs a
shortened chain (T' = scale * 1000 DDPM steps, scale * 50 DDIM steps): a step costs the same
whatever T is, so the table also gives images/s extrapolated to the full step counts. Compile
time is excluded from every rate and printed separately. Train TFLOP/s counts XLA's cost
analysis of the compiled step; MFU is that over the device's peak (`_common.PEAKS`, or
--peak-tflops; n/a where neither knows it).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from attn_jax.diffusion import GaussianDiffusion, ddim_sample, ddpm_sample
from attn_jax.models.unet import UNet
from _common import compiled_flops, mfu, timed_call


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    name: str
    image_shape: tuple[int, int, int]
    model: dict
    train_batch: int
    sample_batch: int


CONFIGS = {
    # A Fashion-MNIST-size model: 28 -> 14 -> 7, attention at 14x14.
    "fmnist-small": BenchConfig(
        "fmnist-small", (28, 28, 1),
        dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(14,), dropout=0.1),
        train_batch=32, sample_batch=32,
    ),
    # The smallest U-Net with every part (attention included): gpu_suite.sh --cpu-run.
    "tiny": BenchConfig(
        "tiny", (8, 8, 1),
        dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
             num_groups=4),
        train_batch=2, sample_batch=2,
    ),
    # Ho et al. 2020's CIFAR-10 model (35.7M parameters); the paper trains at batch 128.
    "cifar10": BenchConfig(
        "cifar10", (32, 32, 3),
        dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
        train_batch=128, sample_batch=256,
    ),
}


def bench(cfg: BenchConfig, args: argparse.Namespace) -> dict:
    dtype = jnp.bfloat16 if args.dtype == "bfloat16" else None
    model = UNet(**cfg.model, dtype=dtype)
    train_batch = args.train_batch or cfg.train_batch
    sample_batch = args.sample_batch or cfg.sample_batch
    x = jnp.zeros((train_batch, *cfg.image_shape), jnp.float32)
    t = jnp.zeros((train_batch,), jnp.int32)
    # 'rbg' keys compile the initialisers much faster than threefry on CPU.
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, t)["params"])
    num_params = sum(p.size for p in jax.tree.leaves(params))
    optimizer = optax.adam(2e-4)
    opt_state = optimizer.init(params)
    diffusion = GaussianDiffusion.create(num_timesteps=1000)

    def train_step(params, opt_state, batch, rng):
        t_rng, n_rng, d_rng = jax.random.split(rng, 3)
        t = diffusion.sample_timesteps(t_rng, batch.shape[0])
        noise = jax.random.normal(n_rng, batch.shape)

        def loss_fn(p):
            model_fn = lambda x, t: model.apply(  # noqa: E731
                {"params": p}, x, t, train=True, rngs={"dropout": d_rng}
            )
            return diffusion.training_losses(model_fn, batch, t, noise)[0].mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(train_step, donate_argnums=(0, 1))
    batch = jax.random.uniform(jax.random.key(1), x.shape, minval=-1.0, maxval=1.0)
    rng = jax.random.key(2)
    start = time.perf_counter()
    compiled = step.lower(params, opt_state, batch, rng).compile()
    train_compile = time.perf_counter() - start
    train_flops = compiled_flops(compiled)  # XLA's count of one step
    params, opt_state, loss = compiled(params, opt_state, batch, rng)  # warm-up
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(args.train_steps):
        params, opt_state, loss = compiled(params, opt_state, batch, jax.random.fold_in(rng, i))
    jax.block_until_ready(loss)
    train_sec = time.perf_counter() - start
    train_ips = train_batch * args.train_steps / train_sec
    train_tflops = train_flops * args.train_steps / train_sec / 1e12

    ddpm_steps = max(1, round(1000 * args.steps_scale))
    ddim_steps = max(1, round(50 * args.steps_scale))
    short = GaussianDiffusion.create(num_timesteps=max(ddpm_steps, 2))
    shape = (sample_batch, *cfg.image_shape)
    model_fn_of = lambda p: lambda x, t: model.apply({"params": p}, x, t)  # noqa: E731
    ddpm = jax.jit(lambda p, r: ddpm_sample(short, model_fn_of(p), r, shape))
    ddim = jax.jit(
        lambda p, r: ddim_sample(diffusion, model_fn_of(p), r, shape, num_steps=ddim_steps)
    )
    ddpm_compile, ddpm_s = timed_call(ddpm, params, rng, repeats=args.repeats)
    ddim_compile, ddim_s = timed_call(ddim, params, rng, repeats=args.repeats)
    return {
        "config": cfg.name,
        "params": num_params,
        "train_batch": train_batch,
        "train_ips": train_ips,
        "train_compile": train_compile,
        "train_tflops": train_tflops,
        "train_mfu": mfu(train_tflops, args.dtype, args.peak_tflops),
        "sample_batch": sample_batch,
        "ddpm_steps": short.num_timesteps,
        "ddpm_ips": sample_batch / ddpm_s,
        "ddpm_ips_full": sample_batch / ddpm_s * short.num_timesteps / 1000,
        "ddim_steps": ddim_steps,
        "ddim_ips": sample_batch / ddim_s,
        "ddim_ips_full": sample_batch / ddim_s * ddim_steps / 50,
        "sample_compile": ddpm_compile + ddim_compile,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=None,
                        help=f"comma-separated subset of {sorted(CONFIGS)}; default: "
                             "fmnist-small on CPU, both on an accelerator")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="run scale*1000 DDPM and scale*50 DDIM steps (CPU: 0.02)")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--train-batch", type=int, default=None, help="override per config")
    parser.add_argument("--sample-batch", type=int, default=None, help="override per config")
    parser.add_argument("--repeats", type=int, default=2, help="timed sampling calls (best of)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (parameters stay float32)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for the train MFU column (default: _common.PEAKS)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.steps_scale <= 1:
        parser.error(f"--steps-scale must lie in (0, 1], got {args.steps_scale}")
    on_cpu = jax.default_backend() == "cpu"
    names = args.configs.split(",") if args.configs else (
        ["fmnist-small"] if on_cpu else ["fmnist-small", "cifar10"])
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")

    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} (x{jax.device_count()}, one used), "
          f"jax {jax.__version__}, compute dtype {args.dtype}, {args.train_steps} timed train "
          f"steps, steps-scale {args.steps_scale}")
    rows = [bench(CONFIGS[n], args) for n in names]
    header = ("| config | params | train batch | train img/s | train TFLOP/s | train MFU "
              "| sample batch | DDPM steps run "
              "| DDPM img/s (run) | DDPM img/s @1000 | DDIM steps run | DDIM img/s (run) "
              "| DDIM img/s @50 | compile s (train / sample) |")
    print(header)
    print("|" + "---|" * header.count(" | ") + "---|")
    for r in rows:
        print(f"| {r['config']} | {r['params'] / 1e6:.2f}M | {r['train_batch']} "
              f"| {r['train_ips']:.1f} | {r['train_tflops']:.3f} | {r['train_mfu']} "
              f"| {r['sample_batch']} | {r['ddpm_steps']} "
              f"| {r['ddpm_ips']:.2f} | {r['ddpm_ips_full']:.3f} | {r['ddim_steps']} "
              f"| {r['ddim_ips']:.2f} | {r['ddim_ips_full']:.2f} "
              f"| {r['train_compile']:.1f} / {r['sample_compile']:.1f} |")


if __name__ == "__main__":
    main()
