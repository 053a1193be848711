"""Compile and run time of the trainer's init program (the initial train state: one random draw
per parameter array, the optimizer's zeros) at XLA's -O0 and its default -O3, on CPU.

    python benchmarks/bench_init.py                       # the offline configs and ViT-B/16
    python benchmarks/bench_init.py --configs detr_scenes --no-vit-b16

The trainer compiles this program at -O0 on CPU for models under
`attn_jax.train.loop.SMALL_INIT_PARAMS` parameters (`init_compiler_options`): it runs once, and
its optimised build costs seconds of compile per model for nothing. This prints, per config, the
parameter count, the number of arrays, both compile and run times, and the option the trainer
picks. Configs are built through the trainer's own plan (`attn_jax.train.loop._plan`), so their
data must be offline; ViT-B/16 (ImageNet-size, 86M parameters) is built directly, with AdamW's
state, to show the large-model side of the trade. Each compile starts cold (no persistent
cache). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from attn_jax.models import build_model
from attn_jax.models.vit import vit_variant
from attn_jax.train.loop import _plan, init_compiler_options
from _common import header, load_config

O0 = {"xla_backend_optimization_level": 0}
O3 = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}


def _times(lowered) -> list[float]:
    """[compile, run] seconds at -O0, then at -O3 (the run: the second call, after a warm-up)."""
    out = []
    for options in (O0, O3):
        start = time.perf_counter()
        compiled = lowered.compile(options)
        out.append(time.perf_counter() - start)
        jax.block_until_ready(compiled())
        start = time.perf_counter()
        jax.block_until_ready(compiled())
        out.append(time.perf_counter() - start)
    return out


def _row(name: str, state, lowered, n_params: int, mesh) -> str:
    arrays = len(jax.tree.leaves(state))
    c0, r0, c3, r3 = _times(lowered)
    chosen = "-O0" if init_compiler_options(mesh, n_params) else "-O3"
    return (f"| {name} | {n_params / 1e6:.2f}M | {arrays} | {c0:.2f} | {r0:.3f} | {c3:.2f} | "
            f"{r3:.3f} | {(c3 + r3) / (c0 + r0):.1f}x | {chosen} |")


def bench_config(name: str) -> str:
    config = load_config(name)
    with tempfile.TemporaryDirectory() as workdir:
        plan = _plan(config, workdir, jax.devices()[:1])
        lowered = jax.jit(lambda: nn.unbox(plan.init_state(jax.random.PRNGKey(0))),
                          out_shardings=plan.state_sh).lower()
        return _row(name, plan.abstract, lowered, plan.n_params, plan.mesh)


def bench_vit_b16() -> str:
    model = build_model("vit", num_classes=1000, **vit_variant("B/16"))
    tx = optax.adamw(1e-3)

    def init():
        params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                     train=False)["params"])
        return params, tx.init(params)

    lowered = jax.jit(init).lower()
    shapes = jax.eval_shape(init)
    n_params = sum(x.size for x in jax.tree.leaves(shapes[0]))
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    return _row("ViT-B/16 (+ AdamW state)", shapes, lowered, n_params, mesh)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs",
                        default="vit_fashion_mnist,mixer_fashion_mnist,detr_scenes,"
                                "ddpm_fashion_mnist,caption_scenes")
    parser.add_argument("--no-vit-b16", dest="vit_b16", action="store_false")
    args = parser.parse_args(argv)
    if jax.default_backend() != "cpu":
        raise SystemExit("bench_init measures the CPU choice; run it with JAX_PLATFORMS=cpu")
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    jax.config.update("jax_enable_compilation_cache", False)
    print(header(["config", "params", "arrays", "-O0 compile s", "-O0 run s", "-O3 compile s",
                  "-O3 run s", "-O3 / -O0 total", "trainer picks"]))
    for name in [c for c in args.configs.split(",") if c]:
        print(bench_config(name), flush=True)
    if args.vit_b16:
        print(bench_vit_b16(), flush=True)


if __name__ == "__main__":
    main()
