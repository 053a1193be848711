"""Train-step throughput (images/s) and model FLOPs utilisation of the image classifier configs
(ViT, MLP-Mixer: any config whose model the registry builds with num_classes and dtype).

    python benchmarks/bench_vit.py                    # the offline configs, ViT and Mixer, CPU
    python benchmarks/bench_vit.py --configs vit_b16_imagenet,mixer_b16_imagenet --batch 256

Times the trainer's own jitted train step (attn_jax.train.loop.make_train_step: forward,
backward, optimizer update) on random inputs of the config's image shape, on one device.
FLOPs per step come from XLA's cost analysis of the compiled step; MFU = achieved FLOP/s over the
device's peak (a table of known peaks, or --peak-tflops). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from attn_jax.models import build_model
from _common import header, load_config, mfu, param_count, time_train_step

IMAGE_SHAPES = {"digits_sklearn": (8, 8, 1, 10), "fashion_mnist_idx": (28, 28, 1, 10),
                "cifar10": (32, 32, 3, 10), "imagenet2012": (224, 224, 3, 1000)}


class _RandomTask:
    """The classification loss on a fixed random batch: the model, not the input pipeline."""

    def __init__(self, model, num_classes):
        self.model, self.num_classes = model, num_classes

    def loss(self, params, batch, rng, step):
        logits = self.model.apply({"params": params}, batch["image"], train=True,
                                  rngs={"dropout": rng}).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean(), {}


def bench(name: str, batch: int | None, dtype: str | None, iters: int, peak: float | None):
    config = load_config(name)
    h, w, c, classes = IMAGE_SHAPES[config.data.name]
    size = config.data.get("image_size") or None
    h, w = (size, size) if size else (h, w)
    batch = batch or config.batch_size
    dtype = dtype or config.dtype
    kwargs = dict(config.model)
    model = build_model(kwargs.pop("name"), num_classes=classes, dtype=jnp.dtype(dtype), **kwargs)
    images = jax.random.normal(jax.random.PRNGKey(0), (batch, h, w, c))
    labels = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, classes)
    params = jax.jit(lambda: nn.unbox(
        model.init({"params": jax.random.PRNGKey(2)}, images[:1], train=False)["params"]))()
    n_params = param_count(params)
    sec, flops, _ = time_train_step(_RandomTask(model, classes), params, config.optim,
                                    {"image": images, "label": labels}, iters)
    device = jax.devices()[0]
    achieved = flops / sec / 1e12
    mfu_text = mfu(achieved, dtype, peak)
    return (f"| {name} | {device.device_kind} | {n_params / 1e6:.2f}M | {batch} | {h}x{w} | {dtype} "
            f"| {sec * 1e3:.1f} | {batch / sec:,.0f} | {flops / batch / 1e9:.3f} | {achieved:.3f} "
            f"| {mfu_text} |")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="default,vit_fashion_mnist,mixer_fashion_mnist")
    parser.add_argument("--batch", type=int, default=None, help="default: the config's")
    parser.add_argument("--dtype", default=None, help="default: the config's")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {time.strftime('%Y-%m-%d')}")
    print(header(["config", "device", "params", "batch", "image", "dtype", "ms/step", "images/s",
                  "GFLOP/image (fwd+bwd)", "TFLOP/s", "MFU"]))
    for name in args.configs.split(","):
        print(bench(name, args.batch, args.dtype, args.iters, args.peak_tflops), flush=True)


if __name__ == "__main__":
    main()
