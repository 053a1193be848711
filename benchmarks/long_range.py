"""Long-range diagnostics of the recurrent cells (issue 12): the adding problem, and the gradient
of the loss w.r.t. each input step (vanishing gradients), for the tanh RNN, the LSTM and the GRU.

    python benchmarks/long_range.py adding          # T=100, the three cells: table, PNG, JSON
    python benchmarks/long_range.py gradnorm --trained docs/adding_problem.json  # init + trained
    python benchmarks/long_range.py adding --lengths 100,200 --steps 8000
    python benchmarks/long_range.py adding --quick  # tiny sizes, seconds (the test's run)

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
the table gives the ratio ||dL/dx_1|| / ||dL/dx_T||. Rows: each cell at initialisation, the LSTM
at initialisation with its forget-gate bias set to 1 (Gers et al. 2000; Jozefowicz et al. 2015:
the repo's zero bias starts the forget gate at 1/2, which halves the cell memory each step), and,
with --trained, each model the adding run trained (its JSON holds their gradient norms).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
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
COLORS = {"rnn": "C0", "lstm": "C1", "gru": "C2", "lstm, forget bias": "C3"}
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
        if curve[-1][0] % 1000 == 0:  # progress on stderr; the table goes to stdout
            print(f"  {cell} T={length} step {curve[-1][0]}: test MSE {curve[-1][1]:.4f} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    solved_at = next((s for s, m in curve if m < SOLVED_MSE), None)
    norms = mean_input_grad_norms(model, params, test_x[:args.grad_batch],
                                  test_y[:args.grad_batch])
    return {"cell": cell, "T": length, "steps": curve[-1][0], "params": param_count(params),
            "mse": curve[-1][1], "baseline": float(((np.asarray(test_y) - 1.0) ** 2).mean()),
            "solved_at": solved_at, "ratio": float(norms[0] / norms[-1]), "wall": wall,
            "curve": curve, "grad_norms": np.asarray(norms).tolist()}


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
    with open(args.json, "w") as f:  # the curves, and the trained models' gradient norms
        json.dump({"args": {k: v for k, v in vars(args).items() if k not in ("png", "json")},
                   "rows": rows}, f, indent=1)
    print(f"\nwrote {args.png} and {args.json}")
    return rows


def _plot_adding(rows: list[dict[str, Any]], path: str) -> None:
    plt = _pyplot()
    lengths = sorted({r["T"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for r in rows:
            if r["T"] == length:
                steps, mse = zip(*r["curve"])
                ax.plot(steps, mse, label=r["cell"], color=COLORS[r["cell"]])
        ax.axhline(BASELINE_MSE, color="gray", ls="--", lw=1, label="baseline (predict 1)")
        # Remembering only the later marker (predict U2 + 1/2) leaves Var(U1) = 1/12.
        ax.axhline(1 / 12, color="gray", ls="-.", lw=1, label="later marker only (1/12)")
        ax.axhline(SOLVED_MSE, color="gray", ls=":", lw=1, label=f"solved (< {SOLVED_MSE})")
        ax.set_yscale("log")
        ax.set(xlabel="training step", ylabel="test MSE", title=f"adding problem, T = {length}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------- gradnorm
def with_forget_bias(params: Any, bias: float) -> Any:
    """LSTM parameters with the forget gate's bias set to `bias` (flax's OptimizedLSTMCell keeps
    it on the recurrent kernel 'hf'; the repo initialises it to 0, so f = sigmoid(0) = 1/2)."""
    cell = dict(params["encoder"]["layer_0"]["cell"])
    cell["hf"] = {**cell["hf"], "bias": jnp.full_like(cell["hf"]["bias"], bias)}
    return {**params, "encoder": {"layer_0": {"cell": cell}}}


def gradnorm_curve(cell: str, length: int, args: argparse.Namespace,
                   forget_bias: float | None = None) -> np.ndarray:
    """`[T]`: ||dL/dx_t|| at initialisation, averaged over a batch of adding sequences and
    `args.seeds` initialisations (the LSTM's forget bias set to `forget_bias` if given)."""
    model = AddingModel(cell, args.hidden)
    x, y = adding_batch(jax.random.PRNGKey(10_000 + args.seed), args.grad_batch, length)
    curves = []
    for seed in range(args.seed, args.seed + args.seeds):
        params = init_params(model, jax.random.PRNGKey(seed), length)
        if forget_bias is not None:
            params = with_forget_bias(params, forget_bias)
        curves.append(mean_input_grad_norms(model, params, x, y))
    return np.mean(curves, axis=0)


def gradnorm(args: argparse.Namespace) -> dict[tuple[str, str, int], np.ndarray]:
    trained = None
    if args.trained:
        with open(args.trained) as f:
            trained = json.load(f)
    print(f"Norm of dL/dx_t, L = (f(x) - y)^2 of the final output on adding sequences; at "
          f"initialisation: hidden {args.hidden}, mean over {args.grad_batch} sequences and "
          f"{args.seeds} initialisations (seeds {args.seed}..{args.seed + args.seeds - 1})"
          + (f"; trained: the models of {args.trained} on {trained['args']['grad_batch']} of "
             "its test sequences" if trained else "") + "\n")
    print(header(["cell", "state", "T", "grad norm at x_T", "grad norm at x_1", "ratio x_1/x_T",
                  "wall s"]))
    runs = [(cell, "init", None) for cell in args.cells]
    if args.forget_bias is not None and "lstm" in args.cells:
        runs.append(("lstm", f"init, forget bias {args.forget_bias:g}", args.forget_bias))
    curves = {}
    for length in args.lengths:
        for cell, state, bias in runs:
            start = time.perf_counter()
            curves[(cell, state, length)] = gradnorm_curve(cell, length, args, bias)
            _gradnorm_row(cell, state, length, curves[(cell, state, length)],
                          time.perf_counter() - start)
    if trained:
        steps = trained["args"]["steps"]
        for r in trained["rows"]:
            if r["T"] in args.lengths and r["cell"] in args.cells:
                state = f"trained ({steps} steps, test MSE {r['mse']:.2g})"
                curves[(r["cell"], state, r["T"])] = np.asarray(r["grad_norms"])
                _gradnorm_row(r["cell"], state, r["T"], curves[(r["cell"], state, r["T"])])
    _plot_gradnorm(curves, args)
    print(f"\nwrote {args.png}")
    return curves


def _gradnorm_row(cell: str, state: str, length: int, c: np.ndarray, wall: float | None = None):
    print(f"| {cell} | {state} | {length} | {c[-1]:.3e} | {c[0]:.3e} | {c[0] / c[-1]:.2e} | "
          f"{'-' if wall is None else f'{wall:.1f}'} |", flush=True)


def _plot_gradnorm(curves: dict[tuple[str, str, int], np.ndarray], args) -> None:
    plt = _pyplot()
    panels = ["init"] + (["trained"] if args.trained else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False,
                             sharey=True)
    for ax, panel in zip(axes[0], panels):
        for (cell, state, length), c in curves.items():
            if state.startswith(panel):
                # "init, forget bias 1" -> "lstm, forget bias 1"; "trained (...)" -> "rnn (...)"
                label = cell + state[len(panel):]
                label += "" if len(args.lengths) == 1 else f", T = {length}"
                # x_t sits T - t steps before the output: x_T at distance 0, x_1 at T - 1.
                ax.plot(np.arange(length)[::-1], c, label=label,
                        color=COLORS["lstm, forget bias"] if "forget" in state else COLORS[cell],
                        ls=["-", "--", ":", "-."][sorted(args.lengths).index(length) % 4])
        ax.set_yscale("log")
        ax.set(xlabel="distance T - t to the final output", ylabel="||dL / dx_t|| (mean)",
               title={"init": f"at initialisation (hidden {args.hidden})",
                      "trained": "after training on the adding problem"}[panel])
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, args.png)


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
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5000, help="adding: training steps")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip")
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--grad-batch", type=int, default=256,
                        help="sequences the gradient norms are averaged over")
    parser.add_argument("--seeds", type=int, default=5, help="gradnorm: initialisations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--forget-bias", type=float, default=1.0,
                        help="gradnorm: also the LSTM at init with this forget-gate bias")
    parser.add_argument("--trained", default=None,
                        help="gradnorm: the JSON an adding run wrote; adds its trained models")
    parser.add_argument("--png", default=None,
                        help="figure path (default docs/adding_problem.png, "
                             "docs/gradient_norms.png)")
    parser.add_argument("--json", default=None,
                        help="adding: curves and gradient norms (default: the PNG's path, .json)")
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
    args.json = args.json or os.path.splitext(args.png)[0] + ".json"
    return args


def main(argv: Sequence[str] | None = None):
    args = parse_args(argv)
    return adding(args) if args.task == "adding" else gradnorm(args)


if __name__ == "__main__":
    main()
