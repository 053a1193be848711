r"""Recurrent seq2seq on real English UI strings -> German (the gettext catalogues), offline, on a
CPU: the data, evaluators and schedule of `configs/transformer_gettext_de.py`, the model and
optimiser of `configs/rnn_dates.py`, so the two families and the attention settings compare on
the same data.

    python train.py --config configs/rnn_gettext_de.py --workdir runs/rnn_gettext_de
    python train.py --config configs/rnn_gettext_de.py:none --workdir runs/rnn_gettext_de_none
    python benchmarks/compare_seq2seq.py --run transformer=runs/transformer_gettext_de \
        --run additive=runs/rnn_gettext_de --run none=runs/rnn_gettext_de_none \
        --plot docs/gettext_accuracy_by_length.png

The argument is rnn_dates.py's `ATTENTION[,CELL]`. Measured (2026-12-02, 2-core CPU, 1800 steps):
additive attention, 1,298,819 parameters, 35 min wall sharing the CPU: test BLEU 18.57, exact
match 13.99% on the 1072 test strings; `:none`, 7 min alone: BLEU 4.91, 2.24%. The Transformer
config at the same schedule: BLEU 3.72. `:dot` (2026-12-07, 54 min wall on the shared CPU): BLEU
15.88, exact match 12.41%. Tables and the by-length plot: BENCHMARKS.md.
"""

import os

from attn_jax.train.cli import load_config_file


def _sibling(name: str):
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), name),
                            configs_dir="")


def get_config(arg=None):
    config = _sibling("transformer_gettext_de.py")
    rnn = _sibling("rnn_dates.py" + (f":{arg}" if arg else ""))
    config.model = rnn.model
    config.optim = rnn.optim
    return config
