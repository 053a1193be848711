"""The repo's train steps against their peers: the same ViT and GPT-style LM in attn_jax, plain
flax.linen, PyTorch eager and torch.compile, interleaved in one run on one machine.

    python benchmarks/bench_peers.py                        # both workloads, every peer installed
    python benchmarks/bench_peers.py --workloads vit --steps 10 --reps 5
    python benchmarks/bench_peers.py --quick                # tiny sizes, 1 rep (the test's run)

Workloads (issue 18):
  vit: width 192, 6 pre-norm blocks, 3 heads, MLP 768, 4x4 patches on 28x28x1 plus a class token
       (50 tokens), learned positions, 10 classes, batch 128.
  lm:  GPT-2 layout (pre-norm, learned positions, tanh-GELU, final LayerNorm, tied output
       embedding), width 256, 4 layers, 4 heads, MLP 1024, sequence 256, vocabulary 256, batch 16
       (4096 tokens a step: about the ViT step's FLOPs).
Every implementation trains with cross-entropy, the gradient clipped to global norm 1 and AdamW
(lr 1e-3, weight decay 0.05), no dropout; the parameter counts are asserted equal.

  attn_jax      `attn_jax.models` (`ViT`, `decoder_lm`) + the trainer's `make_train_step`, as
                bench_vit.py / bench_lm.py time them (the optimizer of `make_optimizer`, which
                exempts rank-1 parameters from weight decay).
  flax.linen    the same models from `nn.Conv`, `nn.Embed`, `nn.LayerNorm`,
                `nn.MultiHeadDotProductAttention`, `nn.Dense`; a hand-written jitted step
                (`optax.adamw`), parameters and optimizer state donated.
  torch eager   `nn.TransformerEncoderLayer(norm_first=True)` (its `nn.MultiheadAttention`);
                `torch.optim.AdamW` with its defaults, `clip_grad_norm_`. Needs the `bench`
                extra (`pip install -e '.[bench]'`); without torch its rows are left out.
  torch.compile the torch model wrapped in `torch.compile` (the optimizer stays eager); left out
                with a note where it fails (it needs a C++ compiler on CPU) and under --quick.

Timing: after --warmup steps of each, --reps rounds; each round runs --steps steps of every
implementation in turn (the order rotates each round) and the table keeps each one's best round.
torch runs on as many threads as the process has cores, as XLA does. FLOPs: XLA's cost analysis
of the attn_jax step, the same count for every row, so GFLOP/s compares like with like. The
matmul rates are a jitted 2048x2048 float32 matmul (XLA) and `torch.mm` of the same, best of 5,
and XLA's rate at each workload's MLP up-projection shape ([tokens, width] @ [width, MLP]: the
step's largest matmul; on the 2-core EPYC it runs as fast as the square one, BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn_jax.models import build_model
from attn_jax.models.vit import ViT
from attn_jax.train.config import base_config
from attn_jax.train import cpu_kernels
from _common import CPU_KERNELS, header, param_count, trainer_step
from bench_lm import _RandomTokensTask
from bench_vit import _RandomTask

IMPLS = ("attn_jax", "flax.linen", "torch eager", "torch.compile")
IMPL_FLAGS = {"attn_jax": "attn_jax", "flax": "flax.linen", "torch": "torch eager",
              "torch.compile": "torch.compile"}
LR, WEIGHT_DECAY, CLIP = 1e-3, 0.05, 1.0


@dataclasses.dataclass(frozen=True)
class ViTShape:
    width: int = 192
    depth: int = 6
    heads: int = 3
    mlp: int = 768
    patch: int = 4
    image: int = 28
    channels: int = 1
    classes: int = 10
    batch: int = 128

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1

    def describe(self) -> str:
        return (f"ViT width {self.width}, {self.depth} pre-norm blocks, {self.heads} heads, MLP "
                f"{self.mlp}, {self.patch}x{self.patch} patches on {self.image}x{self.image}x"
                f"{self.channels} + class token ({self.tokens} tokens), {self.classes} classes, "
                f"batch {self.batch}")


@dataclasses.dataclass(frozen=True)
class LMShape:
    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp: int = 1024
    seq: int = 256
    vocab: int = 256
    batch: int = 16

    def describe(self) -> str:
        return (f"GPT-style LM width {self.width}, {self.depth} layers, {self.heads} heads, MLP "
                f"{self.mlp}, sequence {self.seq}, vocabulary {self.vocab}, batch {self.batch}")


WORKLOADS = {"vit": ViTShape(), "lm": LMShape()}
QUICK = {"vit": ViTShape(width=32, depth=1, heads=2, mlp=64, image=8, batch=4),
         "lm": LMShape(width=32, depth=1, heads=2, mlp=64, seq=16, vocab=32, batch=2)}


@dataclasses.dataclass
class Runner:
    """One implementation of one workload: `run(n)` trains n steps, waits for them and returns
    the last loss."""

    name: str
    n_params: int
    run: Callable[[int], float]


def _batch(shape: ViTShape | LMShape) -> dict[str, np.ndarray]:
    """A fixed random batch as NumPy arrays (every implementation sees the same numbers)."""
    rng = np.random.default_rng(0)
    if isinstance(shape, ViTShape):
        images = rng.standard_normal((shape.batch, shape.image, shape.image, shape.channels))
        return {"image": images.astype(np.float32),
                "label": rng.integers(0, shape.classes, shape.batch).astype(np.int32)}
    ids = rng.integers(0, shape.vocab, (shape.batch, shape.seq + 1)).astype(np.int32)
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


def _jax_runner(name: str, step: Callable, carry: tuple, data: Any, n_params: int) -> Runner:
    """A Runner over a compiled `step(*carry, data) -> (*carry, loss)` that donates its carry."""
    state = [carry]

    def run(n: int) -> float:
        carry = state[0]
        for _ in range(n):
            *carry, loss = step(*carry, data)
        state[0] = tuple(carry)
        return float(loss)  # waits: the last step depends on every earlier one

    return Runner(name, n_params, run)


# ------------------------------------------------------------------------------------ attn_jax
def attn_jax_step(shape: ViTShape | LMShape, batch: dict) -> tuple[Any, Any, Any, int, float]:
    """(compiled trainer step, its initial state, the batch on the device, parameter count,
    XLA's FLOPs of one step) of the repo's model on `shape`; profile_step.py profiles this."""
    data = jax.tree.map(jnp.asarray, batch)
    if isinstance(shape, ViTShape):
        model = ViT(num_classes=shape.classes, patch_size=shape.patch, hidden_size=shape.width,
                    depth=shape.depth, num_heads=shape.heads, mlp_dim=shape.mlp,
                    pool_type="token", posemb="learn")
        task = _RandomTask(model, shape.classes)
        init = lambda: model.init({"params": jax.random.PRNGKey(2)}, data["image"][:1])  # noqa: E731
    else:
        model = build_model("decoder_lm", preset="gpt2_small", vocab_size=shape.vocab,
                            emb_dim=shape.width, num_heads=shape.heads, mlp_dim=shape.mlp,
                            num_decoder_layers=shape.depth, max_len=shape.seq, dropout_rate=0.0,
                            attention_dropout_rate=0.0, scale_residual_init=False)
        task = _RandomTokensTask(model)
        init = lambda: model.init({"params": jax.random.PRNGKey(2)}, data["inputs"][:1])  # noqa: E731
    params = jax.jit(lambda: nn.unbox(init()["params"]))()
    n_params = param_count(params)
    optim = base_config().optim
    optim.update(learning_rate=LR, weight_decay=WEIGHT_DECAY, grad_clip_norm=CLIP,
                 schedule="constant")
    compiled, state, flops = trainer_step(task, params, optim, data)
    return compiled, state, data, n_params, flops


def attn_jax_runner(shape: ViTShape | LMShape, batch: dict) -> tuple[Runner, float]:
    """The repo's model and trainer step; also returns XLA's FLOPs of one step."""
    compiled, state, data, n_params, flops = attn_jax_step(shape, batch)

    def step(state, data):
        state, metrics = compiled(state, data)
        return state, metrics["loss"]

    return _jax_runner("attn_jax", step, (state,), data, n_params), flops


# ---------------------------------------------------------------------------------- flax.linen
class FlaxBlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)), then x + MLP(LN(x))."""

    heads: int
    mlp: int
    epsilon: float
    causal: bool = False

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(epsilon=self.epsilon)(x)
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2])) if self.causal else None
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, mask=mask)
        h = nn.LayerNorm(epsilon=self.epsilon)(x)
        h = nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(self.mlp)(h)))
        return x + h


class FlaxViT(nn.Module):
    shape: ViTShape

    @nn.compact
    def __call__(self, images):
        s = self.shape
        x = nn.Conv(s.width, (s.patch, s.patch), strides=(s.patch, s.patch), padding="VALID")(images)
        x = x.reshape(x.shape[0], -1, s.width)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, s.width))
        x = jnp.concatenate([jnp.tile(cls, (x.shape[0], 1, 1)), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), (1, s.tokens, s.width))
        for _ in range(s.depth):
            x = FlaxBlock(s.heads, s.mlp, 1e-6)(x)
        return nn.Dense(s.classes)(nn.LayerNorm(epsilon=1e-6)(x)[:, 0])


class FlaxLM(nn.Module):
    shape: LMShape

    @nn.compact
    def __call__(self, ids):
        s = self.shape
        embed = nn.Embed(s.vocab, s.width, embedding_init=nn.initializers.normal(0.02))
        x = embed(ids) + self.param("pos", nn.initializers.normal(0.02), (1, s.seq, s.width))
        for _ in range(s.depth):
            x = FlaxBlock(s.heads, s.mlp, 1e-5, causal=True)(x)
        return embed.attend(nn.LayerNorm(epsilon=1e-5)(x))


def flax_runner(shape: ViTShape | LMShape, batch: dict) -> Runner:
    data = jax.tree.map(jnp.asarray, batch)
    vit = isinstance(shape, ViTShape)
    model = FlaxViT(shape) if vit else FlaxLM(shape)
    x, y = (data["image"], data["label"]) if vit else (data["inputs"], data["targets"])
    params = jax.jit(model.init)(jax.random.PRNGKey(2), x[:1])["params"]
    tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adamw(LR, weight_decay=WEIGHT_DECAY))

    def step(params, opt_state, data):
        inputs, labels = (data["image"], data["label"]) if vit else (data["inputs"], data["targets"])

        def loss_fn(p):
            logits = model.apply({"params": p}, inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, data).compile()
    return _jax_runner("flax.linen", compiled, (params, opt_state), data, param_count(params))


# ------------------------------------------------------------------------------------- PyTorch
def torch_runner(shape: ViTShape | LMShape, batch: dict, compile: bool) -> Runner:
    import torch
    import torch.nn.functional as F
    from torch import nn as tnn

    torch.manual_seed(0)
    vit = isinstance(shape, ViTShape)
    gelu = lambda x: F.gelu(x, approximate="tanh")  # noqa: E731 (flax's nn.gelu, GPT-2's)
    eps = 1e-6 if vit else 1e-5
    layer = tnn.TransformerEncoderLayer(shape.width, shape.heads, shape.mlp, dropout=0.0,
                                        activation=gelu, layer_norm_eps=eps, batch_first=True,
                                        norm_first=True)
    encoder = tnn.TransformerEncoder(layer, shape.depth, norm=tnn.LayerNorm(shape.width, eps=eps),
                                     enable_nested_tensor=False)

    class TorchViT(tnn.Module):
        def __init__(self):
            super().__init__()
            s = shape
            self.embed = tnn.Conv2d(s.channels, s.width, s.patch, stride=s.patch)
            self.cls = tnn.Parameter(torch.zeros(1, 1, s.width))
            self.pos = tnn.Parameter(0.02 * torch.randn(1, s.tokens, s.width))
            self.encoder = encoder
            self.head = tnn.Linear(s.width, s.classes)

        def forward(self, images):  # [batch, channels, height, width]
            x = self.embed(images).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            return self.head(self.encoder(x)[:, 0])

    class TorchLM(tnn.Module):
        def __init__(self):
            super().__init__()
            s = shape
            self.embed = tnn.Embedding(s.vocab, s.width)
            self.pos = tnn.Parameter(0.02 * torch.randn(1, s.seq, s.width))
            self.encoder = encoder
            self.register_buffer("mask", tnn.Transformer.generate_square_subsequent_mask(s.seq))

        def forward(self, ids):
            x = self.embed(ids) + self.pos
            x = self.encoder(x, mask=self.mask, is_causal=True)
            return x @ self.embed.weight.T  # tied output embedding

    model = TorchViT() if vit else TorchLM()
    n_params = sum(p.numel() for p in model.parameters())
    if vit:
        x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
        y = torch.from_numpy(batch["label"]).long()
    else:
        x = torch.from_numpy(batch["inputs"]).long()
        y = torch.from_numpy(batch["targets"]).long()
    forward = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def run(n: int) -> float:
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            logits = forward(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            tnn.utils.clip_grad_norm_(model.parameters(), CLIP)
            opt.step()
        return loss.item()

    return Runner("torch.compile" if compile else "torch eager", n_params, run)


# ---------------------------------------------------------------------------------- matmul rate
def jax_matmul_gflops(n: int, k: int | None = None, m: int | None = None,
                      repeats: int = 5) -> float:
    """GFLOP/s of a jitted float32 [n, k] @ [k, m] matmul (default square), best of `repeats`."""
    k, m = k or n, m or n
    a = jax.random.normal(jax.random.PRNGKey(0), (n, k), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (k, m), jnp.float32)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(matmul(a, b))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n * k * m / best / 1e9


def mlp_matmul_shape(shape: ViTShape | LMShape) -> tuple[int, int, int]:
    """(tokens, width, MLP width): the forward MLP up-projection, the step's largest matmul."""
    tokens = shape.batch * (shape.tokens if isinstance(shape, ViTShape) else shape.seq)
    return tokens, shape.width, shape.mlp


def torch_matmul_gflops(n: int, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------------------------ the run
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{len(names)}-core {names[0]}" if names else platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


def build_runners(shape, impls: list[str], notes: list[str], workload: str):
    """(runners, XLA FLOPs per step) of one workload; peers that cannot run are noted."""
    batch = _batch(shape)
    first, flops = attn_jax_runner(shape, batch)
    runners = [first]
    if "flax.linen" in impls:
        runners.append(flax_runner(shape, batch))
    for compile in (False, True):
        name = "torch.compile" if compile else "torch eager"
        if name not in impls:
            continue
        try:
            runner = torch_runner(shape, batch, compile)
            runner.run(1)  # torch.compile compiles here: a failure is a note, not a crash
        except Exception as e:  # noqa: BLE001 (any failure of torch.compile's toolchain)
            notes.append(f"{workload}: {name} left out: {type(e).__name__}: {str(e)[:200]}")
            continue
        runners.append(runner)
    counts = {r.name: r.n_params for r in runners}
    if len(set(counts.values())) != 1:
        raise SystemExit(f"{workload}: the implementations' parameter counts differ: {counts}")
    return runners, flops


def measure(runners: list[Runner], steps: int, reps: int, warmup: int) -> dict[str, float]:
    """Best seconds per step of each runner over `reps` interleaved rounds of `steps` steps."""
    for runner in runners:
        loss = runner.run(warmup)
        if not math.isfinite(loss):
            raise SystemExit(f"{runner.name}: loss {loss} after warm-up")
    best = {r.name: math.inf for r in runners}
    for rep in range(reps):
        k = rep % len(runners)
        for runner in runners[k:] + runners[:k]:
            time.sleep(0.05)  # let the other runtime's worker threads go idle
            start = time.perf_counter()
            runner.run(steps)
            best[runner.name] = min(best[runner.name], (time.perf_counter() - start) / steps)
    return best


def table_rows(workload: str, n_params: int, best: dict[str, float], flops: float,
               rates: dict[str, float], peers: list[str]) -> list[str]:
    rows = []
    for name, sec in best.items():
        ratios = [f"{best[p] / sec:.2f}" if p in best else "n/a" for p in peers]
        gflops = flops / sec / 1e9
        fractions = [f"{100 * gflops / rates[k]:.3g}%" if k in rates else "n/a"
                     for k in ("xla", "torch", "xla_mlp")]
        rows.append(f"| {workload} | {name} | {n_params:,} | {sec * 1e3:.1f} | "
                    + " | ".join(ratios) + f" | {gflops:.3g} | " + " | ".join(fractions) + " |")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="vit,lm", help=f"comma list of {sorted(WORKLOADS)}")
    parser.add_argument("--impls", default=None,
                        help=f"comma list of {sorted(IMPL_FLAGS)} (attn_jax always runs); default "
                             "all of them, without torch.compile under --quick")
    parser.add_argument("--steps", type=int, default=None, help="steps a round (default 10)")
    parser.add_argument("--reps", type=int, default=None, help="rounds, best kept (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps of each first")
    parser.add_argument("--matmul-size", type=int, default=None, help="default 2048")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the process's cores)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, 1 round of 1 step, a 256 matmul: checks the script")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    quick = args.quick
    steps = args.steps or (1 if quick else 10)
    reps = args.reps or (1 if quick else 3)
    matmul_n = args.matmul_size or (256 if quick else 2048)
    impls_flag = args.impls or ("attn_jax,flax,torch" if quick else ",".join(IMPL_FLAGS))
    unknown = [i for i in impls_flag.split(",") if i not in IMPL_FLAGS]
    workloads = args.workloads.split(",")
    unknown_w = [w for w in workloads if w not in WORKLOADS]
    if unknown or unknown_w:
        raise SystemExit(f"unknown --impls {unknown} / --workloads {unknown_w}; choose from "
                         f"{sorted(IMPL_FLAGS)} / {sorted(WORKLOADS)}")
    impls = ["attn_jax"] + [IMPL_FLAGS[i] for i in impls_flag.split(",") if i != "attn_jax"]
    notes = []
    if quick and "torch.compile" not in impls:
        notes.append("torch.compile left out under --quick (it compiles for minutes on a CPU)")
    cores = len(os.sched_getaffinity(0))
    versions = f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}"
    rates = {"xla": jax_matmul_gflops(matmul_n)}
    try:
        import torch
    except ImportError:
        torch = None
        impls = [i for i in impls if not i.startswith("torch")]
        notes.append("torch is not installed (`pip install -e '.[bench]'`): no torch rows")
    if torch is not None:
        torch.set_num_threads(args.threads or cores)
        versions += f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
        rates["torch"] = torch_matmul_gflops(matmul_n)

    print(f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, backend {jax.default_backend()}, "
          f"{versions}, XLA:CPU kernels {CPU_KERNELS} (${cpu_kernels.ENV})")
    print(f"float32 {matmul_n}x{matmul_n} matmul: "
          + ", ".join(f"{k.upper() if k == 'xla' else k} {v:.1f} GFLOP/s" for k, v in rates.items()))
    print(f"best of {reps} interleaved rounds of {steps} steps after {args.warmup} warm-up step(s)")
    peers = [i for i in IMPLS if i in impls]
    results = []
    for workload in workloads:
        shape = QUICK[workload] if quick else WORKLOADS[workload]
        runners, flops = build_runners(shape, impls, notes, workload)
        best = measure(runners, steps, reps, args.warmup)
        mlp = mlp_matmul_shape(shape)
        mlp_rate = jax_matmul_gflops(*mlp)
        print(f"{workload}: {shape.describe()}; {flops / 1e9:.4g} GFLOP a step (XLA's count of "
              f"the attn_jax step); XLA matmul at the MLP's shape [{mlp[0]}, {mlp[1]}] @ "
              f"[{mlp[1]}, {mlp[2]}]: {mlp_rate:.1f} GFLOP/s", flush=True)
        results.append(table_rows(workload, runners[0].n_params, best, flops,
                                  {**rates, "xla_mlp": mlp_rate}, peers))
    print("\n'vs X': X's ms/step over the row's (above 1: the row is faster); GFLOP/s: the "
          "attn_jax step's XLA FLOPs over the row's time; % of each float32 matmul rate above (the "
          "square one, and XLA's at the workload's MLP shape)\n")
    print(header(["workload", "implementation", "params", "ms/step"] + [f"vs {p}" for p in peers]
                 + ["GFLOP/s", "% of XLA matmul", "% of torch matmul",
                    "% of XLA MLP-shape matmul"]))
    for rows in results:
        print("\n".join(rows))
    for note in notes:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
