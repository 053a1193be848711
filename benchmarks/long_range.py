"""Long-range diagnostics of the recurrent cells (issue 12): the adding problem, and the gradient
of the loss w.r.t. each input step (vanishing gradients), for the tanh RNN, the LSTM and the GRU.

    python benchmarks/long_range.py adding                   # T=100, the three cells, PNG
    python benchmarks/long_range.py adding --lengths 100,200 --steps 6000
    python benchmarks/long_range.py gradnorm                 # T=100, at init, PNG
    python benchmarks/long_range.py adding --quick           # tiny sizes (the test's run)

The adding problem (Hochreiter & Schmidhuber 1997, sec. 5.4; the setup of Le et al. 2015,
arXiv:1504.00941, sec. 4.1): inputs `[batch, T, 2]`, channel 0 a value drawn from U(0, 1) at
every step, channel 1 a marker that is 1 at exactly two steps, one drawn uniformly in each half
of the sequence; the target is the sum of the two marked values. Predicting 1 always scores
E[(U1 + U2 - 1)^2] = Var(U1 + U2) = 2/12 = 1/6 (the best constant, since E[U1 + U2] = 1): the
baseline. A model "solves" the task when its test MSE is below 0.01 (fixed before the runs).

Model: one forward layer of `attn_jax.models.recurrent.RecurrentEncoder` (flax's cells with the
repo's initialisers: orthogonal recurrence, zero biases) and a Dense head on the last output.
Training: MSE, Adam with the gradient clipped to global norm 1, a fixed budget of steps, every
batch drawn inside the jitted step from `fold_in(seed, step)` (deterministic, no data pipeline);
the test MSE is on one fixed held-out batch. The same hyper-parameters for every cell.

gradnorm: ||d loss_i / d x_{i,t}|| (the per-example squared error of the model's final output
against its adding target, the norm over the 2 input features), averaged over a batch of adding
sequences and over several initialisations, plotted on a log axis against the distance T - t;
the table gives the ratio ||dL/dx_1|| / ||dL/dx_T||. The adding table carries the same ratio of
each trained model.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from attn_jax.models.recurrent import CELLS, RecurrentEncoder
from _common import ROOT, header, param_count

Array = jax.Array
SOLVED_MSE = 0.01
BASELINE_MSE = 1.0 / 6.0


# ------------------------------------------------------------------------------------ the task
@functools.partial(jax.jit, static_argnums=(1, 2))
def adding_batch(key: Array, batch: int, length: int) -> tuple[Array, Array]:
    """(inputs `[batch, length, 2]` float32, targets `[batch]`): values U(0, 1) in channel 0, a
    1 in channel 1 at one step of [0, length // 2) and one of [length // 2, length); the target
    is the sum of the two marked values."""
    if length < 2:
        raise ValueError(f"the adding problem needs length >= 2 (one marker per half), got "
                         f"{length}")
    k_values, k_first, k_second = jax.random.split(key, 3)
    values = jax.random.uniform(k_values, (batch, length))
    half = length // 2
    first = jax.random.randint(k_first, (batch,), 0, half)
    second = jax.random.randint(k_second, (batch,), half, length)
    steps = jnp.arange(length)[None, :]
    markers = ((steps == first[:, None]) | (steps == second[:, None])).astype(jnp.float32)
    targets = (values * markers).sum(-1)
    return jnp.stack([values, markers], -1), targets


class AddingModel(nn.Module):
    """`RecurrentEncoder` (one forward layer) + Dense on its last output:
    `[batch, T, d]` -> `[batch]`."""

    cell: str = "lstm"
    hidden: int = 128

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        lengths = jnp.full(inputs.shape[:1], inputs.shape[1], jnp.int32)
        outputs, _ = RecurrentEncoder(self.cell, self.hidden, num_layers=1, bidirectional=False,
                                      name="encoder")(inputs, lengths)
        return nn.Dense(1, name="head")(outputs[:, -1])[:, 0]


# Jitted with the model static (flax modules hash by their fields): one compilation per cell
# and shape, shared by every caller, instead of one per eager op of the cell's scan.
@functools.partial(jax.jit, static_argnums=(0, 2))
def init_params(model: AddingModel, key: Array, length: int) -> Any:
    return nn.unbox(model.init(key, jnp.zeros((1, length, 2)))["params"])


def input_grad_norms(model: AddingModel, params: Any, inputs: Array, targets: Array) -> Array:
    """`[batch, T]`: ||d (f(x_i) - y_i)^2 / d x_{i,t}||_2 over the input features, where f is
    the model's final output (each example's own loss, so no 1/batch scaling)."""
    def total_loss(x):
        return ((model.apply({"params": params}, x) - targets) ** 2).sum()

    return jnp.linalg.norm(jax.grad(total_loss)(inputs), axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def mean_input_grad_norms(model: AddingModel, params: Any, inputs: Array, targets: Array
                          ) -> Array:
    """`[T]`: `input_grad_norms` averaged over the batch."""
    return input_grad_norms(model, params, inputs, targets).mean(0)


# --------------------------------------------------------------------------------- adding
def train_adding(cell: str, length: int, args: argparse.Namespace) -> dict[str, Any]:
    """Trains one cell on the adding problem at T = `length`; returns the row's numbers and the
    test-MSE curve [(step, mse)]."""
    model = AddingModel(cell, args.hidden)
    root = jax.random.PRNGKey(args.seed)
    k_init, k_test, k_data = jax.random.split(root, 3)
    params = init_params(model, k_init, length)
    tx = optax.chain(optax.clip_by_global_norm(args.clip), optax.adam(args.lr))
    test_x, test_y = adding_batch(k_test, args.test_size, length)

    def loss_fn(p, x, y):
        return ((model.apply({"params": p}, x) - y) ** 2).mean()

    def one_step(carry, step):
        p, opt = carry
        x, y = adding_batch(jax.random.fold_in(k_data, step), args.batch, length)
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), loss

    @jax.jit
    def train_chunk(p, opt, first_step):
        # eval_every steps in one compiled loop: no Python dispatch per step.
        (p, opt), losses = jax.lax.scan(one_step, (p, opt),
                                        first_step + jnp.arange(args.eval_every))
        return p, opt, losses.mean()

    test_mse = jax.jit(lambda p: loss_fn(p, test_x, test_y))
    opt = tx.init(params)
    start = time.perf_counter()  # the training loop's wall time, compilation included
    curve = [(0, float(test_mse(params)))]
    for first in range(0, args.steps, args.eval_every):
        params, opt, _ = train_chunk(params, opt, first)
        curve.append((first + args.eval_every, float(test_mse(params))))
    wall = time.perf_counter() - start
    solved_at = next((s for s, m in curve if m < SOLVED_MSE), None)
    norms = mean_input_grad_norms(model, params, test_x[:args.grad_batch],
                                  test_y[:args.grad_batch])
    return {"cell": cell, "T": length, "steps": curve[-1][0], "params": param_count(params),
            "mse": curve[-1][1], "baseline": float(((np.asarray(test_y) - 1.0) ** 2).mean()),
            "solved_at": solved_at, "ratio": float(norms[0] / norms[-1]), "wall": wall,
            "curve": curve}


def adding(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    print(f"Adding problem: batch {args.batch}, hidden {args.hidden}, Adam lr {args.lr}, clip "
          f"{args.clip}, test MSE on {args.test_size} held-out sequences every {args.eval_every} "
          f"steps, seed {args.seed}; solved: test MSE < {SOLVED_MSE}; baseline (predict 1): "
          f"1/6 = {BASELINE_MSE:.4f}; jax {jax.__version__} on {jax.devices()[0].device_kind}\n")
    print(header(["cell", "T", "steps", "params", "test MSE", "baseline MSE", "solved",
                  "first step < 0.01", "grad ratio x_1/x_T (trained)", "wall s"]))
    for length in args.lengths:
        for cell in args.cells:
            r = train_adding(cell, length, args)
            rows.append(r)
            print(f"| {cell} | {length} | {r['steps']} | {r['params']:,} | {r['mse']:.4f} | "
                  f"{r['baseline']:.4f} | {'yes' if r['mse'] < SOLVED_MSE else 'no'} | "
                  f"{r['solved_at'] if r['solved_at'] is not None else '-'} | "
                  f"{r['ratio']:.2e} | {r['wall']:.1f} |", flush=True)
    _plot_adding(rows, args.png)
    print(f"\nwrote {args.png}")
    return rows


def _plot_adding(rows: list[dict[str, Any]], path: str) -> None:
    plt = _pyplot()
    lengths = sorted({r["T"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for r in rows:
            if r["T"] == length:
                steps, mse = zip(*r["curve"])
                ax.plot(steps, mse, label=r["cell"])
        ax.axhline(BASELINE_MSE, color="gray", ls="--", lw=1, label="baseline (predict 1)")
        ax.axhline(SOLVED_MSE, color="gray", ls=":", lw=1, label=f"solved (< {SOLVED_MSE})")
        ax.set_yscale("log")
        ax.set(xlabel="training step", ylabel="test MSE", title=f"adding problem, T = {length}")
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------- gradnorm
def gradnorm_curves(cell: str, length: int, args: argparse.Namespace) -> np.ndarray:
    """`[T]`: ||dL/dx_t|| averaged over a batch of adding sequences and `args.seeds` inits."""
    model = AddingModel(cell, args.hidden)
    x, y = adding_batch(jax.random.PRNGKey(10_000 + args.seed), args.grad_batch, length)
    return np.mean([mean_input_grad_norms(model, init_params(model, jax.random.PRNGKey(s),
                                                             length), x, y)
                    for s in range(args.seed, args.seed + args.seeds)], axis=0)


def gradnorm(args: argparse.Namespace) -> dict[str, np.ndarray]:
    print(f"Norm of dL/dx_t at initialisation: hidden {args.hidden}, mean over {args.grad_batch} "
          f"adding sequences and {args.seeds} initialisations (seeds {args.seed}.."
          f"{args.seed + args.seeds - 1}); L = (f(x) - y)^2 of the final output\n")
    print(header(["cell", "T", "grad norm at x_T", "grad norm at x_1", "ratio x_1/x_T",
                  "wall s"]))
    curves = {}
    for length in args.lengths:
        for cell in args.cells:
            start = time.perf_counter()
            c = gradnorm_curves(cell, length, args)
            curves[(cell, length)] = c
            print(f"| {cell} | {length} | {c[-1]:.3e} | {c[0]:.3e} | {c[0] / c[-1]:.2e} | "
                  f"{time.perf_counter() - start:.1f} |", flush=True)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (cell, length), c in curves.items():
        label = cell if len(args.lengths) == 1 else f"{cell}, T = {length}"
        ax.plot(np.arange(length)[::-1], c, label=label)  # x_t sits T - t steps before the end
    ax.set_yscale("log")
    ax.set(xlabel="distance T - t to the final output", ylabel="||dL / dx_t|| (mean)",
           title=f"gradient w.r.t. the input at init (hidden {args.hidden})")
    ax.legend()
    fig.tight_layout()
    _save(fig, args.png)
    print(f"\nwrote {args.png}")
    return curves


# ---------------------------------------------------------------------------------- helpers
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


QUICK = dict(lengths=[6], hidden=8, steps=20, eval_every=10, batch=8, test_size=32,
             grad_batch=8, seeds=2)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("adding", "gradnorm"))
    parser.add_argument("--cells", type=lambda s: s.split(","), default=list(CELLS))
    parser.add_argument("--lengths", type=lambda s: [int(v) for v in s.split(",")],
                        default=[100], help="sequence lengths T, comma-separated")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3000, help="adding: training steps")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip")
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--grad-batch", type=int, default=256,
                        help="sequences the gradient norms are averaged over")
    parser.add_argument("--seeds", type=int, default=5, help="gradnorm: initialisations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", default=None, help="figure path (default docs/<task>.png)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    unknown = set(args.cells) - set(CELLS)
    if unknown:
        parser.error(f"unknown cells {sorted(unknown)}; choose from {CELLS}")
    if args.steps % args.eval_every:
        parser.error(f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every}")
    name = {"adding": "adding_problem", "gradnorm": "gradient_norms"}[args.task]
    # --quick never overwrites the recorded figures in docs/.
    args.png = args.png or (os.path.join(tempfile.gettempdir(), f"{name}_quick.png") if args.quick
                            else os.path.join(ROOT, "docs", f"{name}.png"))
    return args


def main(argv: Sequence[str] | None = None):
    args = parse_args(argv)
    return adding(args) if args.task == "adding" else gradnorm(args)


if __name__ == "__main__":
    main()
