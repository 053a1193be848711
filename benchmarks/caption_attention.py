"""Does a scenes captioner look at what it names? Over a split, for every generated word that
names a class present in the image, the fraction of the word's attention mass
(`attn_jax.viz.attention_maps.caption_attention`: the decoder's alignment over the encoder's
grid, upsampled to the image) that falls inside that class's boxes, against chance (the
fraction of the image those boxes cover). Prints a markdown table, one row per class and 'all'.

    python benchmarks/caption_attention.py --workdir runs/caption_scenes [--split test] \
        [--max-examples 200] [--batch-size 50] [--step N]
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Sequence
from typing import Any

import numpy as np


def summarize(records: Sequence[dict[str, Any]], class_names: Sequence[str]) -> str:
    """A markdown table of `attention_in_boxes` records: per class and over all, the number of
    words, the mean attention mass inside the class's boxes, the mean box area fraction
    (chance) and their ratio."""
    if not records:
        return "no generated word named a class present in its image"
    groups: dict[str, list] = collections.defaultdict(list)
    for r in records:
        groups[class_names[r["label"]]].append(r)
    lines = ["| class | words | attention in box | box area (chance) | ratio |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, rows in sorted(groups.items()) + [("all", list(records))]:
        if not rows:
            continue
        mass = float(np.mean([r["mass"] for r in rows]))
        chance = float(np.mean([r["chance"] for r in rows]))
        lines.append(f"| {name} | {len(rows)} | {mass:.3f} | {chance:.3f} | "
                     f"{mass / max(chance, 1e-12):.2f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a scenes captioning run of train.py")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-examples", type=int, default=200, help="0 = the whole split")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--step", type=int, default=None, help="checkpoint (default latest)")
    return parser


def run(workdir: str, split: str = "test", max_examples: int = 200, batch_size: int = 50,
        step: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """The records of `attention_in_boxes` over the first max_examples scenes of `split`, and
    their table."""
    from attn_jax.tasks.seq2seq import SCENE_SOURCES
    from attn_jax.viz.attention_maps import _image_task, attention_in_boxes, caption_attention

    task, params = _image_task(workdir, step)
    if task.dataset not in SCENE_SOURCES:
        raise SystemExit(f"{workdir} is a {task.dataset!r} run: the boxes come from the scenes "
                         f"datasets {tuple(SCENE_SOURCES)}")
    task.check_splits((split,), "--split")
    scenes = task.pairs(split).scenes
    n = min(max_examples, len(scenes)) if max_examples else len(scenes)
    spec = scenes.spec
    class_words = [(s, p) for s, p in zip(spec.singular, spec.plural)]
    records = []
    for start in range(0, n, batch_size):
        batch = [scenes[i] for i in range(start, min(start + batch_size, n))]
        images = np.zeros((batch_size, *scenes.image_shape), np.float32)  # one compiled shape
        images[:len(batch)] = np.stack([s.image for s in batch])
        results = caption_attention(task, params, images)
        for scene, result in zip(batch, results):
            records += attention_in_boxes(result.maps, result.words, scene.bbox, scene.labels,
                                          class_words)
    return records, summarize(records, spec.singular)


def main(argv: Sequence[str] | None = None) -> str:
    args = build_parser().parse_args(argv)
    _, table = run(args.workdir, args.split, args.max_examples, args.batch_size, args.step)
    print(table)
    return table


if __name__ == "__main__":
    main()
