r"""Pictures of a trained DETR: predicted boxes with labels and scores, and each detected
query's cross-attention over the image (the paper's fig. 6, Carion et al. 2020).

    python -m attn_jax.viz.detections --workdir runs/detr_scenes [--split test] \
        [--num_images 4] [--threshold 0.5] [--out DIR] [--step N]

One PNG per image, `<out>/{split}_{index:06d}.png` (default out: `<workdir>/detections`): the
first panel is the image with the ground-truth boxes (dashed, white) and the detections whose
score (the largest real-class probability of a query) is at least `threshold` (solid, one colour
per query, 'class score'); then one panel per detection: the last decoder layer's
cross-attention of that query (`DETR.cross_attention_map`, mean over heads), reshaped to the
backbone's feature grid and stretched over the image, with the query's box.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax.viz.attention_maps import _pyplot


def query_scores(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, class) per query of logits `[..., N, C + 1]` (last = no object): the softmax's
    largest real-class probability and its index (the official DETR `PostProcess`)."""
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    return p[..., :-1].max(-1), p[..., :-1].argmax(-1)


def plot_detections(image: np.ndarray, logits: np.ndarray, boxes: np.ndarray,
                    attention: np.ndarray, grid: tuple[int, int], class_names: Sequence[str],
                    path: str, *, threshold: float = 0.5, gt_boxes: np.ndarray | None = None,
                    title: str = "") -> list[int]:
    """Writes the picture of one image and returns the queries drawn.

    image `[H, W, 1 or 3]` in [0, 1]; logits `[N, C + 1]`; boxes `[N, 4]` normalised cxcywh;
    attention `[heads, N, h' * w']` (rows sum to 1); grid (h', w'); gt_boxes `[M, 4]` cxcywh.
    """
    plt = _pyplot()
    from matplotlib import patches

    image = np.asarray(image, np.float32)
    h, w = image.shape[:2]
    attention = np.asarray(attention, np.float32)
    if attention.ndim != 3 or attention.shape[1] != logits.shape[0] or (
            attention.shape[2] != grid[0] * grid[1]):
        raise ValueError(f"attention {attention.shape} must be [heads, N={logits.shape[0]}, "
                         f"h'*w'={grid[0] * grid[1]}]")
    scores, labels = query_scores(logits)
    shown = [int(q) for q in np.argsort(-scores, kind="stable") if scores[q] >= threshold]
    colours = plt.get_cmap("tab10")
    ncols = 1 + len(shown)
    fig, axes = plt.subplots(1, ncols, figsize=(3 * ncols, 3.3), squeeze=False)
    grey = image[..., 0] if image.shape[-1] == 1 else image

    def rect(ax, box, colour, style="-"):
        cx, cy, bw, bh = np.asarray(box, np.float64) * [w, h, w, h]
        ax.add_patch(patches.Rectangle((cx - bw / 2 - 0.5, cy - bh / 2 - 0.5), bw, bh, fill=False,
                                       edgecolor=colour, linewidth=1.5, linestyle=style))
        return cx - bw / 2 - 0.5, cy - bh / 2 - 0.5

    ax = axes[0, 0]
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
    for box in [] if gt_boxes is None else gt_boxes:
        rect(ax, box, "white", "--")
    for i, q in enumerate(shown):
        x, y = rect(ax, boxes[q], colours(i % 10))
        ax.text(x, y - 1, f"{class_names[labels[q]]} {scores[q]:.2f}", color=colours(i % 10),
                fontsize=7, va="bottom")
    ax.set_title(title or "detections", fontsize=8)
    for i, q in enumerate(shown):
        ax = axes[0, i + 1]
        heat = attention[:, q].mean(0).reshape(grid)
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
        ax.imshow(heat, cmap="inferno", alpha=0.6, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                  interpolation="bilinear")
        rect(ax, boxes[q], colours(i % 10))
        ax.set_title(f"query {q}: {class_names[labels[q]]} {scores[q]:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return shown


def draw_detections(task: Any, params: Any, split: str, indices: Sequence[int], out: str, *,
                    threshold: float = 0.5) -> list[str]:
    """Pictures (`plot_detections`) of the scenes `indices` of `split` under the detection
    task's DETR with `params`; returns the PNG paths."""
    batch = task.batch(split, list(indices))
    pixel_mask = batch.get("pixel_mask")
    outputs, weights = jax.jit(lambda p, x, m: task.model.apply(
        {"params": p}, x, m, method="cross_attention_map"))(
            params, jnp.asarray(batch["image"]), None if pixel_mask is None else
            jnp.asarray(pixel_mask))
    grid = task.model.grid_shape(task.image_shape)
    paths = []
    for row, index in enumerate(indices):
        path = os.path.join(out, f"{split}_{int(index):06d}.png")
        gt = batch["boxes"][row][batch["box_mask"][row]]
        image, attention, image_grid = batch["image"][row], np.asarray(weights[row]), grid
        if pixel_mask is not None:
            # A padded image (COCO): boxes are relative to its real part, so draw only that,
            # with the attention over the real feature cells.
            h, w = int(pixel_mask[row].any(1).sum()), int(pixel_mask[row].any(0).sum())
            cells = np.asarray(task.model.grid_mask(jnp.asarray(pixel_mask[row:row + 1])))[0]
            gh, gw = int(cells.any(1).sum()), int(cells.any(0).sum())
            image = image[:h, :w]
            attention = attention.reshape(*attention.shape[:2], *grid)[..., :gh, :gw]
            attention = attention.reshape(*attention.shape[:2], gh * gw)
            image_grid = (gh, gw)
        plot_detections(image, np.asarray(outputs["logits"][row]),
                        np.asarray(outputs["boxes"][row]), attention, image_grid,
                        task.class_names, path, threshold=threshold, gt_boxes=gt,
                        title=f"{split} {int(index)}")
        paths.append(path)
    return paths


def detection_pictures(workdir: str, split: str = "test", num_images: int = 4,
                       out: str | None = None, step: int | None = None,
                       threshold: float = 0.5) -> list[str]:
    """`draw_detections` of the first `num_images` scenes of `split` with the run in `workdir`
    (a 'detection' run of train.py) at `step` (default latest)."""
    from attn_jax.tasks import get_task
    from attn_jax.train.restore import load_params

    _pyplot()  # a missing matplotlib fails before the slow part
    config, params = load_params(workdir, step)
    if config.task != "detection":
        raise ValueError(f"{workdir} holds a {config.task!r} run; detection pictures need a "
                         "'detection' run")
    task = get_task("detection")(config)
    n = min(int(num_images), len(task.source(split)))
    if n < 1:
        raise ValueError(f"num_images={num_images}: the {split} split has "
                         f"{len(task.source(split))} images; ask for at least one")
    params = jax.tree.map(jnp.asarray, params)
    return draw_detections(task, params, split, range(n), out or os.path.join(workdir,
                                                                              "detections"),
                           threshold=threshold)


def main(argv: Sequence[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a detection run of train.py")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="least score of a detection drawn")
    parser.add_argument("--out", default=None, help="output folder (default WORKDIR/detections)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    args = parser.parse_args(argv)
    paths = detection_pictures(args.workdir, args.split, args.num_images, args.out, args.step,
                               args.threshold)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
