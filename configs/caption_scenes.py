r"""Image captioning with attention (Show, Attend and Tell, Xu et al. 2015) on the Fashion-MNIST
scenes (`attn_jax.data.datasets.scenes`: 64x64 canvases of 1-3 items, captions from a grammar
over classes, counts and left/right/above/below), offline, on a CPU.

    python train.py --config configs/caption_scenes.py --workdir runs/caption_scenes
    python train.py --config configs/caption_scenes.py:none --workdir runs/caption_scenes_none
    python train.py --config configs/caption_scenes.py:additive,ds=0.01 \
        --workdir runs/caption_scenes_ds
    python train.py --config configs/caption_scenes.py:transformer \
        --workdir runs/caption_scenes_transformer
    python -m attn_jax.viz.attention_maps --workdir runs/caption_scenes --image-index 7
    python benchmarks/caption_attention.py --workdir runs/caption_scenes --split test

The argument is `ATTENTION[,ds=LAMBDA]`: the decoder's alignment 'additive' (default, Bahdanau
as in the paper), 'dot' or 'general', or 'none' (the baseline: the decoder sees only the pooled
image feature, the mean annotation); `ds=LAMBDA` adds the doubly stochastic regulariser
(Xu et al. eq. 14) with weight LAMBDA (default 0: off; the task's loss is a per-token mean, the
penalty a per-caption sum over the 64 grid cells, so LAMBDA ~ 0.01 keeps it near the loss's
size, where the paper's 1 went with a summed loss). `:transformer` swaps the recurrent decoder
for the Transformer-decoder captioner (`transformer_captioner`: the same CNN's 64 grid tokens
projected to 128 with sinusoidal positions, one pre-norm encoder layer over them, two pre-norm
decoder layers of 4 heads with cross-attention over the grid, MLP 512, tied byte embeddings).

Model (`rnn_captioner`): a ResNet-style CNN (`attn_jax.models.cnn`, widths 16/32/64/64 at
64/32/16/8 pixels, one pre-activation block per stage, GroupNorm, a SAGAN self-attention block
(Zhang et al. 2019) over the 16x16 grid) whose 8x8x64 grid is the memory (64 annotation
vectors of 256 after a linear map); an LSTM decoder of 256 over byte embeddings of 64, additive
attention of width 256, dropout 0.1. Data: 20,000 training scenes with all of their 2-5
references (100,000 pairs), 1000 validation and 1000 test scenes; UTF-8 byte captions (the
tokenizers offer bytes or SentencePiece, no word-level one), at most 48 bytes + eos. Adam 2e-3,
300 warmup steps, cosine decay, gradient clip 1, label smoothing 0.1, batch 32, 2000 steps
(64,000 pairs: 0.64 epochs of the pairs, every scene seen about 3 times).
Evaluators: validation loss / token accuracy, and greedy decoding of 500 validation and all
1000 test scenes: exact match (the canonical caption, and any reference), BLEU against all
references, class_set_match / class_count_match (does the caption name the right classes).

Measured (2026-12-07, 2-core AMD EPYC, idle; BENCHMARKS.md), test set of 1000 scenes:
  additive      63.55 BLEU, 28.7% exact match (42.9% any reference), class set 55.3%, 10 min 51 s
                (a first run with XLA's default CPU kernels: 64.10 BLEU, class set 54.4%)
  :transformer  62.23 BLEU, 27.1% (40.6%), class set 48.7%, 7 min 30 s
  :none         58.28 BLEU, 26.9% (37.4%), class set 45.4%, 7 min 15 s
A class word's attention inside its item's box, against chance (benchmarks/caption_attention.py):
1.39-1.46x for the additive decoder, 1.86x for the Transformer's cross-attention.
"""

from attn_jax.train.config import base_config

ATTENTIONS = ("additive", "dot", "general", "none", "transformer")


def _parse(arg):
    attention, *options = (arg or "additive").split(",")
    ds = 0.0
    for option in options:
        key, _, value = option.partition("=")
        if key != "ds" or not value:
            raise ValueError(f"configs/caption_scenes.py:{arg}: options are ds=LAMBDA")
        ds = float(value)
    if attention not in ATTENTIONS:
        raise ValueError(f"configs/caption_scenes.py:{arg}: the argument is ATTENTION[,ds=LAMBDA] "
                         f"with ATTENTION in {ATTENTIONS}")
    if ds and attention in ("none", "transformer"):
        raise ValueError(f"configs/caption_scenes.py:{arg}: the doubly stochastic regulariser "
                         "needs the recurrent decoder's attention")
    return attention, ds


def get_config(arg=None):
    attention, ds = _parse(arg)
    config = base_config()
    config.task = "seq2seq"
    config.data = dict(
        dataset="scenes", train_size=20_000, validation_size=1000, test_size=1000, seed=0,
        min_items=1, max_items=3, references_per_scene=5, tokenizer="byte", max_tgt_len=49,
        eval_splits=["validation"])
    config.evals = dict(
        loss=dict(type="loss"),
        decode=dict(type="decode", splits=("validation",), max_examples=500,
                    num_examples_shown=8),
        decode_test=dict(type="decode", splits=("test",), every_steps=2000,
                         num_examples_shown=0))
    config.model = dict(
        name="rnn_captioner", cell="lstm", attention=attention, embed_dim=64, hidden=256,
        attention_dim=256, memory_dim=256, dropout_rate=0.1, doubly_stochastic=ds,
        image_shape=(64, 64, 1),
        backbone=dict(name="cnn", num_classes=None, widths=(16, 32, 64, 64),
                      blocks_per_stage=1, norm="group", num_groups=8, attention_stage=2))
    if attention == "transformer":
        config.model = dict(
            name="transformer_captioner", emb_dim=128, num_heads=4, mlp_dim=512,
            num_encoder_layers=1, num_decoder_layers=2, max_len=64, norm="pre",
            dropout_rate=0.1, attention_dropout_rate=0.0, image_shape=(64, 64, 1),
            backbone=config.model.backbone)
    config.batch_size = 32
    config.total_steps = 2000
    config.label_smoothing = 0.1
    config.optim.update(name="adam", learning_rate=2e-3, warmup_steps=300, schedule="cosine",
                        end_fraction=0.05, grad_clip_norm=1.0)
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.checkpoint.every_steps = 1000
    return config
