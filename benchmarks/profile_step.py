"""Where the time of a train step goes: a per-op profile of the repo's ViT and LM steps (the
workloads of bench_peers.py) from a `jax.profiler` trace, grouped by what each kernel does.

    python benchmarks/profile_step.py                      # both workloads, 5 traced steps each
    python benchmarks/profile_step.py --workloads vit --steps 10 --top 25
    python benchmarks/profile_step.py --quick              # tiny sizes (the test's run)

How: the step is the trainer's own compiled `make_train_step` (bench_peers.attn_jax_step). After
--warmup steps it runs --steps steps under `jax.profiler.trace(create_perfetto_trace=True)`; XLA's
CPU runtime records one event per kernel ("thunk"), named after the instruction of the compiled
module's entry computation. Each instruction is classified from its HLO: the `op_name` metadata
JAX attaches (the module path, `jvp(...)` for the forward pass, `transpose(jvp(...))` for the
backward pass, neither for the optimizer update) and its opcode. Kernels can run concurrently on
the CPU's threads, so the kernel times add up to more than the wall time; the table gives both.

Categories: q/k/v projections; output projection W_O; attention einsums (QK^T and the weighted
sum of V); softmax (with scale and mask); layer norm; MLP matmuls; GELU and bias (the MLP's
elementwise work); embedding (patches or tokens, positions); head and loss; optimizer update
(AdamW, the global-norm clip, the parameter update); split reductions (reductions XLA split
into a windowed and a final part, which lose their op_name: in these steps the bias gradients'
sums over batch and time); copies, transposes and broadcasts (layout work XLA could not fuse
into a neighbour); other. A fusion is classified by its root's opcode.

With train.py's default CPU kernels (`eigen`, attn_jax/train/cpu_kernels.py) XLA runs large dots
asynchronously on Eigen's threads and their trace events cover only the dispatch, so the matmul
rows come out too small; `ATTN_JAX_CPU_KERNELS=ynnpack` profiles XLA's default, where every
kernel is timed whole. The script says which it ran.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import CPU_KERNELS  # noqa: E402  (sets XLA_FLAGS before jax starts)
from bench_peers import QUICK, WORKLOADS, _batch, attn_jax_step, cpu_name  # noqa: E402

CATEGORIES = ("q/k/v projections", "output projection", "attention einsums", "softmax",
              "layer norm", "MLP matmuls", "GELU and bias", "embedding", "head and loss",
              "optimizer update", "split reductions", "copies, transposes, broadcasts", "other")
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = .*? ([a-z][a-z0-9-]*)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([^\s,]+)")
_COMPUTATION = re.compile(r"^%(\S+) \(")
_LAYOUT_OPS = {"copy", "transpose", "broadcast", "bitcast", "reshape", "slice", "concatenate",
               "pad", "dynamic-slice", "dynamic-update-slice"}


def entry_instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (opcode, op_name)} of the entry computation of an HLO module's text.
    A fusion takes its root's opcode; one without an op_name (XLA's split reductions: the
    metadata stays on the parts it replaced) gets 'reduce-window' or 'reduce' as op_name when
    that is what its root does."""
    roots, out, entry, current = {}, {}, [], None
    for line in hlo_text.splitlines():
        if line.startswith("ENTRY"):
            current = "ENTRY"
            continue
        m = _COMPUTATION.match(line)
        if m:
            current = m.group(1)
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if not m or current is None:
            continue
        if line.lstrip().startswith("ROOT "):
            roots[current] = m.group(2)
        if current == "ENTRY":
            entry.append((m.group(1), m.group(2), line))
    for name, opcode, line in entry:
        op = _OP_NAME.search(line)
        calls = _CALLS.search(line)
        root = roots.get(calls.group(1), opcode) if calls and opcode == "fusion" else opcode
        op_name = op.group(1) if op else ""
        if not op_name and root in ("reduce-window", "reduce"):
            op_name = root
        out[name] = (root if opcode == "fusion" else opcode, op_name)
    return out


def classify(name: str, opcode: str, op_name: str) -> tuple[str, str]:
    """(category, phase) of one entry instruction; phase is fwd, bwd or update."""
    if op_name in ("reduce-window", "reduce"):  # see entry_instructions: no module path
        return "split reductions", "bwd"
    phase = ("bwd" if "transpose(jvp(" in op_name else "fwd" if "jvp(" in op_name
             else "update")
    path = op_name.lower()
    last = path.rsplit("/", 1)[-1]
    layout = (opcode in _LAYOUT_OPS or last in ("transpose", "copy", "broadcast_in_dim")
              or name.startswith(("copy", "transpose", "wrapped_broadcast", "wrapped_transpose")))
    matmul = "dot_general" in last or opcode in ("dot", "convolution") or name.startswith(
        ("ynn_fusion", "xnn_fusion", "onednn"))
    if phase == "update":
        return ("copies, transposes, broadcasts" if opcode in ("copy", "transpose")
                else "optimizer update"), phase
    if layout and not matmul:
        return "copies, transposes, broadcasts", phase
    if re.search(r"/(query|key|value|qkv|kv)/", path):
        return "q/k/v projections", phase
    if re.search(r"attention[^/]*/out/", path):
        return "output projection", phase
    if "attention" in path and "norm" not in path.rsplit("/", 2)[-2]:
        return ("attention einsums" if matmul else "softmax"), phase
    if "norm" in path:
        return "layer norm", phase
    if "mlp" in path:
        return ("MLP matmuls" if matmul else "GELU and bias"), phase
    if "embed" in path or "posemb" in path or "pos_embedding" in path or "wpe" in path:
        return "embedding", phase
    if any(k in path for k in ("head", "logits", "take_along_axis", "log_softmax", "_take",
                               "logsumexp", "attend", "cross_entropy")):
        return "head and loss", phase
    return "other", phase


def kernel_times(trace_dir: str, names: set[str]) -> dict[str, float]:
    """Total microseconds of the trace's kernel events whose name is an entry instruction."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not files:
        raise SystemExit(f"no perfetto trace under {trace_dir}: jax.profiler wrote none")
    trace = json.load(gzip.open(files[-1]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and e.get("name") in names:
            totals[e["name"]] += float(e.get("dur", 0))
    if not totals:
        raise SystemExit("the trace holds no kernel events named after the step's instructions")
    return totals


def profile(workload: str, shape, steps: int, warmup: int, top: int) -> str:
    compiled, state, data, n_params, flops = attn_jax_step(shape, _batch(shape))
    instrs = entry_instructions(compiled.as_text())
    for _ in range(warmup):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics["loss"])
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = compiled(state, data)
            jax.block_until_ready(metrics["loss"])
        wall = (time.perf_counter() - start) / steps  # includes the profiler's own overhead
        totals = kernel_times(tmp, set(instrs))
    per = {k: v / steps / 1e3 for k, v in totals.items()}  # ms per step
    kernel_ms = sum(per.values())
    table = {c: {"fwd": 0.0, "bwd": 0.0, "update": 0.0, "n": 0} for c in CATEGORIES}
    for name, ms in per.items():
        cat, phase = classify(name, *instrs[name])
        table[cat][phase] += ms
        table[cat]["n"] += 1
    lines = [f"{workload}: {shape.describe()}; {n_params:,} parameters, {flops / 1e9:.4g} GFLOP a "
             f"step; {steps} traced steps: {wall * 1e3:.1f} ms/step wall under the profiler, "
             f"{kernel_ms:.1f} ms/step of kernel time ({kernel_ms / (wall * 1e3):.2f} kernels "
             f"running at once on average), {len(per)} kernels a step", "",
             "| category | kernels | fwd ms | bwd ms | update ms | total ms | % of kernel time |",
             "|---|---|---|---|---|---|---|"]
    for cat, row in sorted(table.items(), key=lambda kv: -(kv[1]["fwd"] + kv[1]["bwd"]
                                                               + kv[1]["update"])):
        total = row["fwd"] + row["bwd"] + row["update"]
        if row["n"]:
            lines.append(f"| {cat} | {row['n']} | {row['fwd']:.1f} | {row['bwd']:.1f} | "
                         f"{row['update']:.1f} | {total:.1f} | {100 * total / kernel_ms:.1f}% |")
    if top:
        lines += ["", f"top {top} kernels:", "", "| kernel | opcode | op_name | ms | category |",
                  "|---|---|---|---|---|"]
        for name, ms in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
            opcode, op_name = instrs[name]
            lines.append(f"| {name} | {opcode} | {op_name.removeprefix('jit(train_step)/')} | "
                         f"{ms:.2f} | {classify(name, opcode, op_name)[0]} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="vit,lm", help=f"comma list of {sorted(WORKLOADS)}")
    parser.add_argument("--steps", type=int, default=None, help="traced steps (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untraced steps first")
    parser.add_argument("--top", type=int, default=15, help="list the N slowest kernels (0: none)")
    parser.add_argument("--quick", action="store_true", help="tiny models, 1 traced step")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    workloads = args.workloads.split(",")
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"unknown --workloads {unknown}; choose from {sorted(WORKLOADS)}")
    steps = args.steps or (1 if args.quick else 5)
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_name()}, backend {jax.default_backend()}, "
          f"jax {jax.__version__}, XLA:CPU kernels {CPU_KERNELS}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    flags = os.environ.get("XLA_FLAGS", "")
    ynn = re.search(r"--xla_cpu_experimental_ynn_fusion_type=(\S*)", flags)
    if ynn and "dot" not in ynn.group(1) and jax.default_backend() == "cpu":  # dots off YNNPACK
        print("note: XLA's own dot kernels (no YNNPACK) run asynchronously and are traced only "
              "while dispatched: the matmul rows are too small (ATTN_JAX_CPU_KERNELS=ynnpack "
              "times them whole)")
    for workload in workloads:
        shape = (QUICK if args.quick else WORKLOADS)[workload]
        print("\n" + profile(workload, shape, steps, args.warmup, args.top), flush=True)


if __name__ == "__main__":
    main()
