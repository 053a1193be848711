r"""Transformer encoder-decoder: real English UI strings -> German, offline, on a CPU.

    python train.py --config configs/transformer_gettext_de.py --workdir runs/transformer_gettext_de
    python train.py --config configs/transformer_gettext_de.py:pre --workdir runs/transformer_gettext_de_pre
    python train.py --config configs/transformer_gettext_de.py --workdir /tmp/gt \
        --config.total_steps=150 --config.evals.decode_test.max_examples=256  # sanity, ~4 min

Data: the system's gettext catalogues (`attn_jax.data.datasets.gettext`: every
/usr/share/locale/de/LC_MESSAGES/*.mo), English msgid -> German msgstr, one-line strings of at
most 64 UTF-8 bytes on either side without placeholders, markup, plural forms or contexts,
accelerators stripped, one translation per English string; split by SHA-256 of the English
string (5% validation, 5% test). The counts depend on the image and are logged at start (this
image, 2026-12-02: 18010 / 977 / 1072 train / validation / test pairs from 85 catalogues;
net-tools.mo is skipped, its charset is wrong). UTF-8 bytes in and out (at most 64 + eos).

Model: post-norm Transformer (the paper's layout), d 128, 3 encoder + 3 decoder layers, 4 heads,
d_ff 512, dropout 0.1, label smoothing 0.1. Metrics: per-token loss and accuracy on validation;
greedy decoding scored by exact match and sacrebleu corpus BLEU (detokenized) on the first 256
validation strings every eval, and on the whole test split at the end.

Hardware: 2-core CPU, 1.42M parameters. Sized for ~45 min: 0.7 steps/s measured on the shared
2-core CPU (load ~6), so 1800 steps of 64 strings (~6 epochs). Sanity run (2026-12-02, 150
steps, ~4 min): train loss 3.88 -> 3.25, validation loss 2.77 nats/token, token accuracy 0.26,
BLEU 0.06 (still babbling "Sererer"): it trains and decodes. Full length (2026-12-02, 1800
steps, 37 min wall sharing the CPU with another run): test BLEU 3.72, exact match 2.33% on the
1072 test strings. That is undertrained: at this schedule the attentive RNN of
`configs/rnn_gettext_de.py` reaches 18.57 (BENCHMARKS.md). `:pre` (pre-norm, Adam 2e-3,
1,422,208 parameters, 14 min 50 s alone): test BLEU 6.14, exact match 5.60%.
"""

import os

from attn_jax.train.cli import load_config_file


def get_config(arg=None):
    # The dates Transformer (model, label smoothing, Adam with its paper's betas) on new data.
    config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "transformer_dates.py"), configs_dir="")
    config.data = dict(
        dataset="gettext", target_lang="de", locale_dir="", max_bytes=64, validation_fraction=0.05,
        test_fraction=0.05, seed=0, tokenizer="byte", max_src_len=65, max_tgt_len=65,
        eval_splits=["validation"])
    config.evals = dict(
        loss=dict(type="loss"),  # per-token loss and accuracy on data.eval_splits
        decode=dict(type="decode", splits=("validation",), max_examples=256, beam_size=1,
                    num_examples_shown=8),
        decode_test=dict(type="decode", splits=("test",), every_steps=10**9, beam_size=1,
                         num_examples_shown=8))  # every evaluator also runs at the last step
    config.model.max_len = 65
    if arg == "pre":  # pre-norm blocks + a final LayerNorm, a larger step (GPT-2's layout)
        config.model.update(norm="pre", final_norm=True)
        config.optim.update(learning_rate=2e-3, warmup_steps=200)
    elif arg:
        raise ValueError(f"configs/transformer_gettext_de.py:{arg}: the only argument is 'pre'")
    config.total_steps = 1800
    config.optim.warmup_steps = 300
    config.eval_every_steps = 900
    config.checkpoint.every_steps = 900
    return config
