r"""Attention heatmaps of a trained encoder-decoder, one PNG per layer and attention kind, and
per-word attention overlays of an image captioner.

    python -m attn_jax.viz.attention_maps --workdir runs/transformer_dates \
        --text "21. November 2026" [--out DIR] [--step N]
    python -m attn_jax.viz.attention_maps --workdir runs/caption_scenes \
        --image-index 7 [--split test] [--out file.png] [--step N]

Images (`--image-index`, a run with an image source): the captioner greedily captions the
image, and each generated word gets a panel: the image with the decoder's attention over the
encoder's feature grid (`caption_attention`: the alignment of the steps that spell the word,
upsampled bilinearly to the image and normalised to sum to 1) laid over it. Text (`--text`):
the model greedily translates the text; the translation is then fed back teacher-forced, which
reproduces the decoder's computation step by step (causal masks, deterministic), and the model's
`attention_weights(params, source, targets)` returns its weights `[batch, heads, q_len, kv_len]` by
name (the Transformer intercepts every `MultiHeadAttention`; the recurrent seq2seq returns its
alignment, one head, as 'decoder/layer_0/cross_attention'). Files:
`encoder_layer{i}_self_attention.png`, `decoder_layer{i}_self_attention.png` and
`decoder_layer{i}_cross_attention.png`, each a grid of the heads plus their mean. Rows are queries:
source tokens in the encoder, and in the decoder the output token each position predicts; columns
are keys: source tokens, or the decoder's inputs (<s> then the output shifted right).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import shutil
import textwrap
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from attn_jax import decoding
from attn_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID, ByteTokenizer, Tokenizer

Array = jax.Array


def capture_attention(model: Any, params: Any, inputs: Array, targets: Array
                      ) -> tuple[Array, dict[str, Array]]:
    """Teacher-forced logits `[batch, tgt_len, vocab]` and the model's attention weights, keyed
    by 'stack/layer_i/kind' ('decoder/layer_0/cross_attention'), each `[batch, heads, q_len,
    kv_len]` float32: what the model's `attention_weights(params, inputs, targets)` returns
    (the Transformer's every MultiHeadAttention; a recurrent seq2seq's alignment, one head).
    Traceable (jit it for long inputs)."""
    _check_has_attention(model)
    return model.attention_weights(params, inputs, targets)


def _check_has_attention(model: Any) -> None:
    if not hasattr(type(model), "attention_weights"):
        raise ValueError(f"{type(model).__name__} has no attention_weights(params, source, "
                         "targets) method: it cannot show its attention")


def token_labels(tokenizer: Tokenizer, ids: Sequence[int]) -> list[str]:
    """One printable label per id: specials as <pad>/<s>/</s>; bytes as their character on the
    lead byte of a UTF-8 sequence and '·' on continuation bytes (scripts beyond Cyrillic, which
    the default font lacks, as U+XXXX); SentencePiece pieces as they are."""
    special = {PAD_ID: "<pad>", BOS_ID: "<s>", EOS_ID: "</s>"}
    if not isinstance(tokenizer, ByteTokenizer):
        return [special.get(i) or tokenizer.id_to_piece(i) for i in ids]
    raw = bytes(i - ByteTokenizer.offset for i in ids if i not in special)
    labels, pos = [], 0
    for i in ids:
        if i in special:
            labels.append(special[i])
            continue
        b = i - ByteTokenizer.offset
        if b < 0x80:
            labels.append("␣" if b == 0x20 else chr(b) if 0x20 < b < 0x7F else f"\\x{b:02x}")
        elif b >= 0xC0:  # lead byte: decode the whole character
            width = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            char = raw[pos:pos + width].decode("utf-8", errors="replace")
            labels.append(char if len(char) == 1 and ord(char) < 0x530 else
                          f"U+{ord(char[0]):04X}")
        else:
            labels.append("·")
        pos += 1
    return labels


def _pyplot():
    try:
        import matplotlib
    except ImportError:  # a core dependency; an environment may still lack it
        raise ImportError("attention heatmaps need matplotlib: pip install matplotlib (or "
                          "reinstall attn_jax: pip install -e .)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heads(weights: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
               title: str, path: str) -> None:
    """A PNG of `weights` `[heads, q_len, kv_len]`: one heatmap per head and their mean (one
    panel when there is one head)."""
    plt = _pyplot()

    heads, rows, cols = weights.shape
    panels = [(f"head {h}", weights[h]) for h in range(heads)] + [("mean", weights.mean(0))]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    width, height = max(3.0, 0.18 * cols + 1.2), max(2.5, 0.18 * rows + 1.2)
    if heads == 1:  # one panel (a recurrent alignment), titled with the wrapped title
        panels, ncols, nrows = [(textwrap.fill(title, int(width * 100 / 8)), weights[0])], 1, 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * width, nrows * height + 0.6),
                             squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, w) in zip(axes.flat, panels):
        image = ax.imshow(w, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
                          interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(cols), col_labels, fontsize=7, rotation=90)
        ax.set_yticks(range(rows), row_labels, fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
    if heads > 1:
        fig.suptitle(title)
    with warnings.catch_warnings():  # a glyph the font lacks is drawn as a box, not an error
        warnings.simplefilter("ignore")
        fig.savefig(path, dpi=100, bbox_inches="tight")  # the whole title, whatever its length
    plt.close(fig)


@dataclasses.dataclass
class AttentionMaps:
    """What `attention_maps` computed and wrote."""

    translation: str
    source_ids: list[int]         # the text's ids + eos
    output_ids: list[int]         # greedy output up to and including eos
    logits: np.ndarray            # teacher-forced [1, len(output_ids), vocab]
    weights: dict[str, np.ndarray]  # module path -> [1, heads, q_len, kv_len]
    paths: list[str]              # the PNG files


def attention_maps(workdir: str, text: str, out: str | None = None, step: int | None = None
                   ) -> AttentionMaps:
    """Translates `text` with the run in `workdir` and writes its attention maps to `out`
    (default `<workdir>/attention_maps`). A failure leaves no new folder behind."""
    from attn_jax.tasks import get_task
    from attn_jax.train.restore import load_params

    _pyplot()  # before the slow part: a missing matplotlib fails in a second

    config, params = load_params(workdir, step)
    if config.task != "seq2seq":
        raise ValueError(f"{workdir} holds a {config.task!r} run; attention maps need seq2seq")
    task = get_task("seq2seq")(config)
    task.workdir = workdir  # SentencePiece models load from here
    tokenizer, model = task.tokenizer, task.model
    src = tokenizer.encode(text) + [EOS_ID]
    if task.max_len is not None and len(src) > task.max_len:
        raise ValueError(f"{text!r} is {len(src)} tokens; the model takes at most "
                         f"{task.max_len}")
    _check_has_attention(model)
    inputs = jnp.asarray([src], jnp.int32)
    params = jax.tree.map(jnp.asarray, params)
    greedy = functools.partial(decoding.decode, model, max_len=task.max_tgt_len, eos_id=EOS_ID)
    out_ids = np.asarray(jax.jit(greedy)(params, inputs))[0].tolist()
    length = out_ids.index(EOS_ID) + 1 if EOS_ID in out_ids else len(out_ids)
    targets = jnp.asarray([out_ids[:length]], jnp.int32)
    logits, weights = jax.jit(capture_attention, static_argnums=0)(model, params, inputs, targets)
    if not weights:
        raise ValueError(f"the model in {workdir} has no attention to show (a fixed-context "
                         "seq2seq: attention='none')")

    out = out or os.path.join(workdir, "attention_maps")
    src_labels = token_labels(tokenizer, src)
    tgt_labels = token_labels(tokenizer, out_ids[:length])
    dec_inputs = token_labels(tokenizer, [BOS_ID] + out_ids[:length - 1])
    translation = tokenizer.decode(out_ids[:length])
    paths = []
    made = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    try:
        for name, w in sorted(weights.items()):
            stack, layer, kind = name.split("/")
            rows, cols = {("encoder", "self_attention"): (src_labels, src_labels),
                          ("decoder", "self_attention"): (tgt_labels, dec_inputs),
                          ("decoder", "cross_attention"): (tgt_labels, src_labels)}[stack, kind]
            path = os.path.join(out, f"{stack}_{layer.replace('_', '')}_{kind}.png")
            plot_heads(np.asarray(w[0]), rows, cols,
                       f"{stack} {layer} {kind.replace('_', '-')}: {text!r} -> {translation!r}",
                       path)
            paths.append(path)
    except BaseException:
        if made:  # a folder this call created holds nothing useful: remove it
            shutil.rmtree(out, ignore_errors=True)
        raise
    return AttentionMaps(translation, src, out_ids[:length], np.asarray(logits),
                         {k: np.asarray(v) for k, v in weights.items()}, paths)


# ------------------------------------------------------------------------------ image captioners
def word_spans(tokenizer: Tokenizer, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
    """The words (whitespace-separated) of decode(ids) (no eos in ids) and the positions of the
    tokens that spell each: token k spells the characters decode(ids[:k+1]) adds to
    decode(ids[:k]), and belongs to every word those characters overlap. Works for any
    tokenizer whose prefixes decode to prefixes (a byte per ASCII character, SentencePiece)."""
    ends = [len(tokenizer.decode(list(ids[:k]))) for k in range(len(ids) + 1)]
    text = tokenizer.decode(list(ids))
    spans = []
    for match in re.finditer(r"\S+", text):
        positions = [k for k in range(len(ids))
                     if ends[k] < match.end() and ends[k + 1] > match.start()]
        spans.append((match.group(), positions))
    return [(w, p) for w, p in spans if p]


def image_grid_shape(model: Any, image_shape: Sequence[int], positions: int
                     ) -> tuple[int, int]:
    """(h', w') of a captioner's memory grid for images `(H, W, C)`: its backbone's
    `grid_shape` when it has one (the CNN), else a square grid when `positions` is a square
    and the image square (a ViT's patch tokens). Raises ValueError otherwise."""
    from attn_jax.models import build_model

    backbone = dict(getattr(model, "backbone", None) or {})
    if backbone:
        encoder = build_model(backbone.pop("name"), **backbone)
        if hasattr(encoder, "grid_shape"):
            grid = tuple(encoder.grid_shape(image_shape))
            if grid[0] * grid[1] != positions:
                raise ValueError(f"the backbone's grid {grid} for images {tuple(image_shape)} "
                                 f"has {grid[0] * grid[1]} cells, the attention {positions}")
            return grid
    side = math.isqrt(positions)
    if side * side == positions and image_shape[0] == image_shape[1]:
        return side, side
    raise ValueError(f"cannot lay {positions} attention positions over images "
                     f"{tuple(image_shape)}: the image encoder has no grid_shape(image_shape)")


def upsample_maps(weights: np.ndarray, grid: tuple[int, int], image_hw: tuple[int, int]
                  ) -> np.ndarray:
    """Attention over grid positions `[n, h'*w']` (row-major cells) -> `[n, H, W]` maps on the
    image: reshaped to the grid, resized bilinearly (`jax.image.resize`; half-pixel centres,
    so cell (i, j) covers pixels [i*H/h', (i+1)*H/h')), clipped at 0 and renormalised to sum
    to 1 per map (the resize keeps the mean, not the sum)."""
    weights = np.asarray(weights, np.float32)
    if weights.ndim != 2 or weights.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"weights {weights.shape} must be [n, h'*w'] = [n, "
                         f"{grid[0] * grid[1]}] for the grid {grid}")
    maps = jax.image.resize(jnp.asarray(weights.reshape(-1, *grid)),
                            (weights.shape[0], *image_hw), "bilinear")
    maps = np.clip(np.asarray(maps, np.float64), 0.0, None)
    return maps / np.maximum(maps.sum((1, 2), keepdims=True), 1e-30)


@dataclasses.dataclass
class CaptionAttention:
    """One image's greedy caption and where the decoder looked for each word."""

    caption: str
    words: list[str]
    image: np.ndarray          # [H, W, C] as fed to the model
    maps: np.ndarray           # [words, H, W]; each sums to 1 (mean of its tokens' maps)
    token_ids: list[int]       # the caption's ids, eos excluded
    token_maps: np.ndarray     # [tokens, H, W]; each sums to 1
    grid: tuple[int, int]      # (h', w') of the attention


def caption_attention(task: Any, params: Any, images: np.ndarray) -> list[CaptionAttention]:
    """Greedy captions of `images` `[b, H, W, C]` and, per generated word, the decoder's
    attention on the image: the alignment of every step that emits one of the word's tokens
    (row t of `attention_weights` predicts token t), laid on the encoder's grid
    (`image_grid_shape`), upsampled to the image (`upsample_maps`) and averaged over the
    word's tokens. `task` is a seq2seq task with an image source and an attentive model."""
    model, tokenizer = task.model, task.tokenizer
    _check_has_attention(model)
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [batch, height, width, channels], got {images.shape}")
    params = jax.tree.map(jnp.asarray, params)
    greedy = functools.partial(decoding.decode, model, max_len=task.max_tgt_len, eos_id=EOS_ID)
    out = np.asarray(jax.jit(greedy)(params, jnp.asarray(images)))
    # Teacher-force the outputs (pad after eos: those rows are not read) to get the alignment.
    # A closure, not a static argument: a captioner (its backbone dict) does not hash.
    _, weights = jax.jit(functools.partial(capture_attention, model))(
        params, jnp.asarray(images), jnp.asarray(out))
    if not weights:
        raise ValueError("the captioner has no attention to show (attention='none')")
    # The top decoder layer's cross-attention, averaged over its heads (a recurrent decoder's
    # alignment is one layer with one head; a Transformer decoder's last layer has several).
    top = max((k for k in weights if k.startswith("decoder/") and k.endswith("/cross_attention")),
              key=lambda k: int(k.split("/")[1].rpartition("_")[2]))
    alignment = np.asarray(weights[top]).mean(1)  # [b, T, L]
    grid = image_grid_shape(model, images.shape[1:], alignment.shape[-1])
    results = []
    for row, ids, image in zip(alignment, out.tolist(), images):
        ids = ids[:ids.index(EOS_ID)] if EOS_ID in ids else ids
        token_maps = upsample_maps(row[:len(ids)], grid, image.shape[:2])
        spans = word_spans(tokenizer, ids)
        maps = np.stack([token_maps[p].mean(0) for _, p in spans]) if spans else np.zeros(
            (0, *image.shape[:2]))
        results.append(CaptionAttention(tokenizer.decode(ids), [w for w, _ in spans], image,
                                        maps, ids, token_maps, grid))
    return results


def attention_in_boxes(maps: np.ndarray, words: Sequence[str], bbox: np.ndarray,
                       labels: np.ndarray, class_words: Sequence[Sequence[str]]
                       ) -> list[dict[str, Any]]:
    """For every word that names a class present in the image: the attention mass its map puts
    inside the boxes of that class, and the chance level (the fraction of the image those
    boxes cover; a uniform map scores it).

    maps: `[words, H, W]`, each summing to 1; bbox: `[n, 4]` COCO [x, y, w, h] pixels (end
    exclusive); labels: `[n]`; class_words[c]: the words that name class c (its singular and
    plural nouns). Returns [{'word', 'label', 'mass', 'chance'}] in word order.
    """
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3 or len(maps) != len(words):
        raise ValueError(f"maps {maps.shape} must be [words={len(words)}, H, W]")
    bbox, labels = np.asarray(bbox).reshape(-1, 4), np.asarray(labels).reshape(-1)
    if len(bbox) != len(labels):
        raise ValueError(f"bbox {bbox.shape} and labels {labels.shape} differ in objects")
    named = {w: c for c, ws in enumerate(class_words) for w in ws}
    out = []
    for word, m in zip(words, maps):
        label = named.get(word)
        if label is None or label not in labels:
            continue
        inside = np.zeros(m.shape, bool)
        for x, y, w, h in bbox[labels == label]:
            inside[y:y + h, x:x + w] = True
        out.append({"word": word, "label": int(label), "mass": float(m[inside].sum()),
                    "chance": float(inside.mean())})
    return out


def plot_word_overlays(result: CaptionAttention, path: str, title: str = "",
                       ncols: int = 4) -> int:
    """A PNG at `path`: one panel per word of `result.caption`, the image in grey with the
    word's attention map over it (one colour scale for all panels, 0 to the largest value of
    any map, so a flat map looks flat); returns the number of panels."""
    plt = _pyplot()

    n = len(result.words)
    if n == 0:
        raise ValueError(f"the caption {result.caption!r} has no word to show")
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows + 0.5),
                             squeeze=False)
    image = result.image[..., 0] if result.image.shape[-1] == 1 else result.image
    for ax in axes.flat[n:]:
        ax.remove()
    vmax = max(float(result.maps.max()), 1e-12)
    for ax, word, m in zip(axes.flat, result.words, result.maps):
        ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.imshow(m, cmap="jet", alpha=0.5, vmin=0.0, vmax=vmax, interpolation="bilinear")
        ax.set_title(word, fontsize=10)
        ax.axis("off")
    fig.suptitle(textwrap.fill(title or repr(result.caption), 60), fontsize=10)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():  # an untrained model's odd bytes: boxes, not errors
        warnings.simplefilter("ignore")
        fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return n


def _image_task(workdir: str, step: int | None):
    from attn_jax.tasks import get_task
    from attn_jax.train.restore import load_params

    config, params = load_params(workdir, step)
    if config.task != "seq2seq":
        raise ValueError(f"{workdir} holds a {config.task!r} run; attention maps need seq2seq")
    task = get_task("seq2seq")(config)
    task.workdir = workdir  # SentencePiece models load from here
    if not task.image_source:
        raise ValueError(f"{workdir} translates text ({task.dataset!r}): pass --text, not "
                         "--image-index")
    return task, params


def image_attention_maps(workdir: str, image_index: int, split: str = "test",
                         out: str | None = None, step: int | None = None
                         ) -> tuple[CaptionAttention, str]:
    """Captions image `image_index` of `split` with the run in `workdir` and writes its
    per-word attention overlays to `out` (default
    `<workdir>/attention_maps/{split}_{image_index}.png`)."""
    _pyplot()
    task, params = _image_task(workdir, step)
    task.check_splits((split,), "--split")
    pairs = task.pairs(split)
    if not 0 <= image_index < len(pairs):
        raise ValueError(f"--image-index {image_index} is out of range for the {len(pairs)} "
                         f"{split} examples")
    image, reference = pairs[image_index]
    result = caption_attention(task, params, np.asarray(image)[None])[0]
    out = out or os.path.join(workdir, "attention_maps", f"{split}_{image_index}.png")
    plot_word_overlays(result, out, f"{split} #{image_index}: {result.caption!r} "
                                    f"(reference {reference!r})")
    return result, out


def main(argv: Sequence[str] | None = None) -> AttentionMaps | CaptionAttention:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a seq2seq run of train.py")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="source text to translate (a text source)")
    source.add_argument("--image-index", type=int,
                        help="caption this image of --split (an image source)")
    parser.add_argument("--split", default="test", help="the split of --image-index")
    parser.add_argument("--out", default=None,
                        help="output folder for --text (default WORKDIR/attention_maps), PNG "
                             "file for --image-index (default WORKDIR/attention_maps/"
                             "SPLIT_INDEX.png)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    args = parser.parse_args(argv)
    if args.image_index is not None:
        result, path = image_attention_maps(args.workdir, args.image_index, args.split,
                                            args.out, args.step)
        print(f"{args.split} #{args.image_index} -> {result.caption!r}")
        print(path)
        return result
    maps = attention_maps(args.workdir, args.text, args.out, args.step)
    print(f"{args.text!r} -> {maps.translation!r}")
    for path in maps.paths:
        print(path)
    return maps


if __name__ == "__main__":
    main()
