r"""Attention heatmaps of a trained encoder-decoder, one PNG per layer and attention kind.

    python -m attn_jax.viz.attention_maps --workdir runs/transformer_dates \
        --text "21. November 2026" [--out DIR] [--step N]

The model greedily translates the text; the translation is then fed back teacher-forced, which
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


def main(argv: Sequence[str] | None = None) -> AttentionMaps:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a seq2seq run of train.py")
    parser.add_argument("--text", required=True, help="source text to translate")
    parser.add_argument("--out", default=None,
                        help="output folder (default WORKDIR/attention_maps)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    args = parser.parse_args(argv)
    maps = attention_maps(args.workdir, args.text, args.out, args.step)
    print(f"{args.text!r} -> {maps.translation!r}")
    for path in maps.paths:
        print(path)
    return maps


if __name__ == "__main__":
    main()
