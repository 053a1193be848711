"""Seq2seq runs side by side, from their workdirs: the comparison table and accuracy against
source length (the shape of Bahdanau et al. 2015, Fig. 2).

    python benchmarks/compare_seq2seq.py --run transformer=runs/transformer_dates \
        --run additive=runs/rnn_dates --run none=runs/rnn_dates_none \
        --plot docs/dates_accuracy_by_length.png

Each run's latest checkpoint greedily decodes every pair of `--split` (its own task, tokenizer
and data: runs on different data are not comparable, and the script refuses them). Prints one
markdown table of name, model, parameters, training time (the logged steps over their logged
steps/s: compilation and evaluation left out), exact match and sacrebleu BLEU; then exact match
per source-length bucket (UTF-8 bytes of the source) with the bucket's size; and draws the
second table as a PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def train_seconds(workdir: str) -> float:
    """Sum over the logged training rows of (steps since the last row) / steps_per_sec."""
    total, last = 0.0, 0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for row in map(json.loads, f):
            if row.get("split") == "train" and row.get("steps_per_sec"):
                total += (row["step"] - last) / row["steps_per_sec"]
                last = row["step"]
    return total


def length_buckets(lengths: Sequence[int], width: int) -> list[tuple[int, int]]:
    """[lo, hi) byte ranges of `width` covering `lengths`."""
    top = max(lengths)
    return [(lo, lo + width) for lo in range(0, top + 1, width)
            if any(lo <= n < lo + width for n in lengths)]


def by_length(lengths: Sequence[int], correct: Sequence[bool], buckets) -> list[tuple[int, float]]:
    """(examples, exact match) per bucket; NaN for an empty bucket."""
    lengths, correct = np.asarray(lengths), np.asarray(correct, bool)
    out = []
    for lo, hi in buckets:
        inside = (lengths >= lo) & (lengths < hi)
        out.append((int(inside.sum()), float(correct[inside].mean()) if inside.any() else math.nan))
    return out


def evaluate(workdir: str, split: str, max_examples: int) -> dict[str, Any]:
    """Decode `split` with the run's latest parameters: sources, references, predictions."""
    import jax

    from attn_jax.eval import text_metrics
    from attn_jax.tasks import get_task
    from attn_jax.train.restore import checkpoint_steps, load_config, load_params

    config = load_config(workdir)
    if config.task != "seq2seq":
        raise ValueError(f"{workdir} holds a {config.task!r} run, not a seq2seq run")
    step = max(checkpoint_steps(workdir))
    _, params = load_params(workdir, step)
    task = get_task("seq2seq")(config)
    task.workdir = workdir  # a SentencePiece model loads from here
    pairs = task.decode_pairs(split, max_examples)
    sources = [s for s, _ in pairs]
    references = [t for _, t in pairs]
    predictions = task.translate(jax.tree.map(np.asarray, params), sources)
    n = sum(np.size(x) for x in jax.tree.leaves(params))
    return {"config": config, "step": step, "params": n, "sources": sources,
            "references": references, "predictions": predictions,
            "exact_match": text_metrics.exact_match(predictions, references),
            "bleu": text_metrics.bleu(predictions, references),
            "train_seconds": train_seconds(workdir)}


def _data_key(config) -> str:
    return json.dumps(config.data.to_dict(), sort_keys=True, default=str)


def plot(path: str, names: Sequence[str], buckets, rows: dict[str, list], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mids = [(lo + hi - 1) / 2 for lo, hi in buckets]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        ax.plot(mids, [100 * em for _, em in rows[name]], marker="o", label=name)
    ax.set_xlabel("source length (UTF-8 bytes)")
    ax.set_ylabel("exact match (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=WORKDIR",
                        help="a seq2seq workdir of train.py, named for the table (repeatable)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-examples", type=int, default=0, help="0: the whole split")
    parser.add_argument("--bucket-bytes", type=int, default=10, help="source-length bucket width")
    parser.add_argument("--plot", default=None, help="PNG of exact match against source length")
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.run:
        name, sep, workdir = spec.partition("=")
        if not sep or not name or not workdir:
            parser.error(f"--run {spec!r}: expected NAME=WORKDIR")
        if not os.path.isfile(os.path.join(workdir, "config.json")):
            parser.error(f"--run {spec!r}: {workdir} is not a train.py workdir (no config.json)")
        runs[name] = workdir
    from attn_jax.train.restore import load_config

    keys = {name: _data_key(load_config(w)) for name, w in runs.items()}
    if len(set(keys.values())) > 1:  # before any decoding
        raise SystemExit("the runs were trained on different data (config.data differs): "
                         + ", ".join(f"{n}: {json.loads(k).get('dataset')}" for n, k in keys.items()))
    results = {name: evaluate(w, args.split, args.max_examples) for name, w in runs.items()}
    names = list(results)
    print(f"| run | model | parameters | train time (s) | step | {args.split} exact match | "
          f"{args.split} BLEU |\n|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        model = r["config"].model
        kind = "/".join(str(model.get(k)) for k in ("name", "cell", "attention") if model.get(k))
        print(f"| {name} | {kind} | {r['params']:,} | {r['train_seconds']:.0f} | {r['step']} | "
              f"{100 * r['exact_match']:.2f}% | {r['bleu']:.2f} |")
    lengths = [len(s.encode()) for s in results[names[0]]["sources"]]
    buckets = length_buckets(lengths, args.bucket_bytes)
    rows = {name: by_length(lengths, [p == t for p, t in zip(r["predictions"], r["references"])],
                            buckets) for name, r in results.items()}
    print("\n| source bytes | examples | " + " | ".join(names) + " |\n|---|---|"
          + "---|" * len(names))
    for i, (lo, hi) in enumerate(buckets):
        count = rows[names[0]][i][0]
        print(f"| {lo}-{hi - 1} | {count} | "
              + " | ".join(f"{100 * rows[n][i][1]:.1f}%" for n in names) + " |")
    if args.plot:
        dataset = results[names[0]]["config"].data.get("dataset", "?")
        plot(args.plot, names, buckets, rows,
             f"{dataset}: {args.split} exact match by source length")
        print(f"\n{args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
