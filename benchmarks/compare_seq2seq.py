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

A run's decoded split can be kept as a record (`--save-records DIR` writes `DIR/NAME.json`:
the model, parameter count, training time, step, the run's `config.data`, and every source,
reference and prediction) and compared later with `--record NAME=FILE.json` beside live
workdirs, so a table can be remade, or extended by one new run, after the workdirs are gone.
The records of the runs in BENCHMARKS.md are under `docs/seq2seq_records/`.
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
    return {"model": model_kind(config.model), "data": config.data.to_dict(), "split": split,
            "step": step, "params": n, "sources": sources,
            "references": references, "predictions": predictions,
            "exact_match": text_metrics.exact_match(predictions, references),
            "bleu": text_metrics.bleu(predictions, references),
            "train_seconds": train_seconds(workdir)}


def model_kind(model) -> str:
    """'rnn_seq2seq/lstm/additive'-style name of a config's model block."""
    return "/".join(str(model.get(k)) for k in ("name", "cell", "attention") if model.get(k))


def _data_key(data: dict) -> str:
    """The run's `config.data` with every key the seq2seq task declares at its default where the
    run did not write it (a run saved before a key existed compares equal to one saved after)."""
    from attn_jax.tasks.seq2seq import DataConfig
    from attn_jax.train.config import filled_section

    filled = filled_section(DataConfig, data).to_dict()
    return json.dumps(filled, sort_keys=True, default=str)


RECORD_KEYS = ("model", "data", "split", "step", "params", "sources", "references",
               "predictions", "exact_match", "bleu", "train_seconds")


def save_record(path: str, result: dict[str, Any]) -> None:
    """Write one evaluated run as JSON (the fields of RECORD_KEYS)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({k: result[k] for k in RECORD_KEYS}, f, ensure_ascii=False, default=str,
                  indent=0)
        f.write("\n")


def load_record(path: str) -> dict[str, Any]:
    """A record of save_record; a file without its fields is refused, naming them."""
    with open(path) as f:
        record = json.load(f)
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"{path} is not a compare_seq2seq record: it lacks {missing}")
    return record


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
    parser.add_argument("--run", action="append", dest="entries", metavar="NAME=WORKDIR",
                        type=lambda v: ("run", v),
                        help="a seq2seq workdir of train.py, named for the table (repeatable)")
    parser.add_argument("--record", action="append", dest="entries", metavar="NAME=FILE",
                        type=lambda v: ("record", v),
                        help="a record written by --save-records, compared as a run (repeatable)")
    parser.add_argument("--save-records", default=None, metavar="DIR",
                        help="write each workdir run's decoded split to DIR/NAME.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-examples", type=int, default=0, help="0: the whole split")
    parser.add_argument("--bucket-bytes", type=int, default=10, help="source-length bucket width")
    parser.add_argument("--plot", default=None, help="PNG of exact match against source length")
    args = parser.parse_args(argv)
    runs, records, order = {}, {}, []
    for kind, spec in args.entries or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"{spec!r}: expected NAME=PATH")
        if name in runs or name in records:
            parser.error(f"the name {name!r} is given twice")
        order.append(name)
        if kind == "record":
            if not os.path.isfile(path):
                parser.error(f"--record {spec!r}: {path} does not exist")
            records[name] = load_record(path)
        elif not os.path.isfile(os.path.join(path, "config.json")):
            parser.error(f"--run {spec!r}: {path} is not a train.py workdir (no config.json)")
        else:
            runs[name] = path
    if not runs and not records:
        parser.error("give at least one --run or --record")
    from attn_jax.train.restore import load_config

    keys = {name: _data_key(load_config(w).data.to_dict()) for name, w in runs.items()}
    keys.update({name: _data_key(r["data"]) for name, r in records.items()})
    if len(set(keys.values())) > 1:  # before any decoding
        raise SystemExit("the runs were trained on different data (config.data differs): "
                         + ", ".join(f"{n}: {json.loads(k).get('dataset')}" for n, k in keys.items()))
    results = {}
    for name in order:  # the order given
        if name in records:
            results[name] = records[name]
        else:
            results[name] = evaluate(runs[name], args.split, args.max_examples)
            if args.save_records:
                save_record(os.path.join(args.save_records, f"{name}.json"), results[name])
    first = results[next(iter(results))]
    for name, r in results.items():  # a record of another split, or of fewer examples
        if r["split"] != args.split and name in records:
            raise SystemExit(f"record {name!r} holds the {r['split']!r} split, not {args.split!r}")
        if (r["sources"], r["references"]) != (first["sources"], first["references"]):
            raise SystemExit(f"{name!r} decoded other examples than {next(iter(results))!r} "
                             "(a different --max-examples, or changed data files)")
    names = list(results)
    print(f"| run | model | parameters | train time (s) | step | {args.split} exact match | "
          f"{args.split} BLEU |\n|---|---|---|---|---|---|---|")
    for name in names:
        r = results[name]
        print(f"| {name} | {r['model']} | {r['params']:,} | {r['train_seconds']:.0f} | {r['step']} | "
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
        dataset = first["data"].get("dataset", "?")
        plot(args.plot, names, buckets, rows,
             f"{dataset}: {args.split} exact match by source length")
        print(f"\n{args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
