"""The one home of the tiny test configs: every task's shipped layout, shrunk to seconds.

In-process tests call `tiny_config(kind, data_dir)`; subprocess tests run train.py on this file:

    python train.py --config tests/tiny_configs.py:process --workdir /tmp/t

Kinds:
  classification  a one-block ViT on the digits, every axis divisible by 8 devices (mesh tests)
  mixer           the same with a one-block MLP-Mixer
  process         8 steps of a one-block ViT on the digits (resume, crash, multi-process tests)
  classifier      a one-block GAP ViT for FID features
  diffusion       a one-level U-Net on the 8x8 digits, T = 50
  seq2seq         dates (3 locales) -> ISO with a 1+1-layer byte Transformer, 8 heads
  rnn_seq2seq     the same dates with the recurrent seq2seq (bidirectional LSTM, additive
                  attention; widths divisible by 8 devices)
  captioner       Show, Attend and Tell on the digits scenes (32x32 canvases, 1-2 items): the
                  recurrent captioner over a two-stage CNN with a SAGAN block, byte captions
  detr            DETR on the digits scenes (1-2 items, 8 queries, a CNN backbone at 0.1x lr)
  lm              a 1-layer byte GPT on `tiny_corpus(data_dir)`
  lstm_lm         a 2-layer byte LSTM, stateful, truncated BPTT in chunks of 8 (same corpus)

SGD (+momentum), not Adam, wherever runs on different meshes are compared: Adam divides by
sqrt(v) and blows the float noise of zero-gradient parameters (attention key biases, the
parameters behind a zero-initialised output conv) up to full-size updates.
"""

from __future__ import annotations

import os

import ml_collections

from attn_jax.train.config import base_config


def _sgd(config: ml_collections.ConfigDict, lr: float, steps: int = 4) -> None:
    config.optim.name = "sgd"
    config.optim.learning_rate = lr
    config.optim.schedule = "constant"
    config.total_steps = steps
    config.log_every_steps = 1
    config.eval_every_steps = steps
    config.checkpoint.async_save = False


def _digits_vit(data_dir: str, **model) -> ml_collections.ConfigDict:
    """A ViT classifier on the digits (4x4 patches, width 32 unless given)."""
    config = base_config()
    config.task = "classification"
    config.data = dict(name="digits_sklearn", data_dir=data_dir, crop_padding=0, flip=False)
    config.model = dict(dict(name="vit", patch_size=4, hidden_size=32, depth=1, mlp_dim=64,
                             head_zero_init=False), **model)
    config.batch_size = 32
    config.checkpoint.async_save = False
    return config


def classification(data_dir: str = "") -> ml_collections.ConfigDict:
    config = _digits_vit(data_dir, num_heads=8, pool_type="token", posemb="learn")
    _sgd(config, 0.1)
    config.checkpoint.every_steps = 2
    return config


def mixer(data_dir: str = "") -> ml_collections.ConfigDict:
    """The classification layout with a one-block MLP-Mixer (2x2 patches: 16 tokens; widths
    divisible by 8 devices)."""
    config = classification(data_dir)
    config.model = dict(name="mixer", patch_size=2, hidden_dim=32, num_blocks=1,
                        tokens_mlp_dim=16, channels_mlp_dim=64, head_zero_init=False)
    return config


def process(data_dir: str = "") -> ml_collections.ConfigDict:
    config = _digits_vit(data_dir, num_heads=4, dropout_rate=0.1)
    config.total_steps = 8
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 2
    config.log_every_steps = 1
    config.eval_every_steps = 8
    config.checkpoint.every_steps = 2
    config.checkpoint.max_to_keep = 2
    return config


def classifier(data_dir: str = "") -> ml_collections.ConfigDict:
    config = _digits_vit(data_dir, hidden_size=16, num_heads=2, mlp_dim=32, pool_type="gap",
                         posemb="sincos2d")
    config.total_steps = 2
    config.eval_every_steps = 2
    return config


def diffusion(data_dir: str = "") -> ml_collections.ConfigDict:
    """Widths divide 8 devices; init, train, eval and sampling compile in ~15 s on 2 cores."""
    config = base_config()
    config.task = "diffusion"
    config.data = dict(
        name="digits_sklearn", data_dir=data_dir, flip=False,
        # A short linear schedule that still ends near pure noise: abar_T ~ exp(-5).
        diffusion=dict(schedule="linear", num_timesteps=50, beta_start=1e-3, beta_end=0.2),
        sampling=dict(sampler="ddim", num_steps=4, eta=0.0, num_images=8))
    config.model = dict(name="unet", ch=16, ch_mult=(1,), num_res_blocks=1,
                        attn_resolutions=(), dropout=0.0, num_groups=8)
    config.batch_size = 32
    config.ema_decay = 0.5
    _sgd(config, 0.1)
    config.checkpoint.every_steps = 4
    return config


def seq2seq(data_dir: str = "") -> ml_collections.ConfigDict:
    del data_dir  # the dates are generated
    config = base_config()
    config.task = "seq2seq"
    config.data = dict(dataset="dates", train_size=256, validation_size=32, test_size=32,
                       locales=["en_GB", "de", "fr"], tokenizer="byte", max_src_len=32,
                       max_tgt_len=12, eval_splits=["validation"])
    config.evals = dict(loss=dict(type="loss"),
                        decode=dict(type="decode", splits=["test"], num_examples_shown=3))
    config.model = dict(name="transformer", emb_dim=32, num_heads=8, mlp_dim=64,
                        num_encoder_layers=1, num_decoder_layers=1, max_len=32,
                        dropout_rate=0.0, attention_dropout_rate=0.0)
    config.batch_size = 16
    _sgd(config, 0.1)
    config.checkpoint.every_steps = 2
    return config


def rnn_seq2seq(data_dir: str = "") -> ml_collections.ConfigDict:
    config = seq2seq(data_dir)
    config.model = dict(name="rnn_seq2seq", cell="lstm", attention="additive", embed_dim=16,
                        hidden=16, attention_dim=16, dropout_rate=0.0)
    return config


def captioner(data_dir: str = "") -> ml_collections.ConfigDict:
    config = seq2seq(data_dir)
    config.data = dict(dataset="scenes_digits", tokenizer="byte", max_tgt_len=40, max_items=2,
                       train_size=64, validation_size=16, test_size=16, references_per_scene=2,
                       eval_splits=["validation"])
    config.evals.decode.update(num_examples_shown=1)
    config.model = dict(name="rnn_captioner", cell="lstm", attention="additive", embed_dim=16,
                        hidden=16, attention_dim=16, image_shape=(32, 32, 1), dropout_rate=0.0,
                        backbone=dict(name="cnn", num_classes=None, widths=(8, 16),
                                      blocks_per_stage=1, num_groups=4, attention_stage=1))
    return config


def detr(data_dir: str = "") -> ml_collections.ConfigDict:
    """DETR on the digits scenes (32x32 canvases, 1-2 items, 8 queries): a 3-stage CNN
    backbone (8x8 grid) at 0.1x lr through `lr_mults`, 1+2 layers of width 16 with 8 heads."""
    del data_dir  # the scenes are generated
    config = base_config()
    config.task = "detection"
    config.data = dict(dataset="scenes_digits", max_items=2, train_size=64, validation_size=16,
                       test_size=16, eval_splits=["validation"])
    config.evals = dict(loss=dict(type="loss"), coco_map=dict(type="coco_map", max_images=16))
    config.model = dict(name="detr", d_model=16, num_heads=8, num_encoder_layers=1,
                        num_decoder_layers=2, mlp_dim=32, num_queries=8, dropout_rate=0.0,
                        attention_dropout_rate=0.0,
                        backbone=dict(name="cnn", widths=(8, 16, 16), blocks_per_stage=1,
                                      num_groups=4))
    config.batch_size = 16
    _sgd(config, 0.05)
    config.optim.lr_mults = (("backbone/.*", 0.1),)
    config.checkpoint.every_steps = 2
    return config


def tiny_corpus(data_dir: str) -> str:
    """Eight small generated .py files under `data_dir` (written once)."""
    root = os.path.join(data_dir, "tiny_py_corpus")
    os.makedirs(root, exist_ok=True)
    for i in range(8):
        path = os.path.join(root, f"mod_{i}.py")
        if not os.path.exists(path):
            with open(path, "w") as f:
                f.write("".join(f"def f{j}(x):\n    return x * {j} + {i}\n\n" for j in range(30)))
    return root


def lm(data_dir: str) -> ml_collections.ConfigDict:
    """A 1-layer byte-level GPT (pre-norm, learned positions)."""
    config = base_config()
    config.task = "lm"
    config.data = dict(dataset="stdlib", root=tiny_corpus(data_dir), validation_fraction=0.25,
                       tokenizer="byte", seq_len=32)
    config.evals = dict(loss=dict(type="loss"),
                        sample=dict(type="sample_text", prompt="def ", length=16, num_samples=2,
                                    temperature=0.8, top_k=20))
    config.model = dict(name="decoder_lm", preset="gpt2_small", emb_dim=32, num_heads=8,
                        mlp_dim=64, num_decoder_layers=1, max_len=48, dropout_rate=0.0,
                        attention_dropout_rate=0.0)
    config.batch_size = 16
    _sgd(config, 0.3)
    config.checkpoint.every_steps = 2
    return config


def lstm_lm(data_dir: str) -> ml_collections.ConfigDict:
    """The lm config with a stateful 2-layer byte LSTM (configs/lstm_stdlib.py's layout)."""
    config = lm(data_dir)
    config.data.update(stateful=True, tbptt_chunk=8)
    config.model = dict(name="lstm_lm", emb_dim=16, hidden_dim=16, num_layers=2,
                        dropout_rate=0.1)
    return config


KINDS = {"classification": classification, "mixer": mixer, "process": process, "classifier": classifier,
         "diffusion": diffusion, "seq2seq": seq2seq, "rnn_seq2seq": rnn_seq2seq,
         "captioner": captioner, "detr": detr, "lm": lm,
         "lstm_lm": lstm_lm}
# One per registered task, plus the Mixer, the recurrent seq2seq, the captioner (images in, text
# out) and the stateful LSTM LM: model families
# whose state is a carry (the LM's crosses steps in the train state), through the same mesh and
# resume checks.
TASK_KINDS = ("classification", "mixer", "diffusion", "seq2seq", "rnn_seq2seq", "captioner", "detr",
              "lm", "lstm_lm")


def set_keys(config: ml_collections.ConfigDict, changes: dict) -> ml_collections.ConfigDict:
    """`config` with each dotted key of `changes` ('checkpoint.max_to_keep': 4) set."""
    with config.unlocked():
        for key, value in changes.items():
            *parents, leaf = key.split(".")
            node = config
            for p in parents:
                node = node[p]
            node[leaf] = value
    return config


def tiny_config(kind: str, data_dir: str = "") -> ml_collections.ConfigDict:
    if kind not in KINDS:
        raise ValueError(f"tiny config {kind!r} is unknown; choose one of {sorted(KINDS)}")
    return KINDS[kind](data_dir)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """For train.py: `--config tests/tiny_configs.py[:kind]` (default 'process')."""
    return tiny_config(arg or "process", os.environ.get("ATTN_JAX_TINY_DATA_DIR", ""))
