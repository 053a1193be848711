"""A small byte-level GPT on the Python standard library's source, offline, on a CPU.

    python train.py --config configs/lm_stdlib.py --workdir runs/lm_stdlib

Data: `attn_jax.data.text.stdlib_corpus` (the stdlib's .py files, 5% of the files held out for
validation; 10.7 MB of training text on CPython 3.11), UTF-8 bytes, random windows of 128.
Model: GPT-2 layout (`preset='gpt2_small'`: pre-norm, learned positions, tanh-GELU, tied
embedding) shrunk to d 192, 3 layers, 4 heads, d_ff 768. Metrics: validation loss, perplexity
and bits per byte; a sample continues "def " every evaluation.

Hardware: the 2-core CPU this repo is developed on, shared with two other trainings during the
run. Time: 48 min wall for 2000 steps (2026-11-21; 8.2M training tokens, under one epoch of the
10.7 MB). Result: validation bits per byte 2.286 at step 1000 and **1.985** at step 2000
(perplexity 3.96 per byte, next-byte accuracy 62.7%). For scale, on the same validation bytes:
gzip -9 1.85, bzip2 -9 1.62, xz -9e 1.60 bits per byte (they see whole files; the model sees
128-byte windows). BENCHMARKS.md has the curve and a generated sample.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "lm"
    config.data = dict(
        dataset="stdlib", validation_fraction=0.05, seed=0, tokenizer="byte", seq_len=128)
    config.evals = dict(
        loss=dict(type="loss"),  # validation loss, perplexity, bits per byte
        sample=dict(type="sample_text", prompt="def ", length=120, num_samples=2,
                    temperature=0.8, top_p=0.95))
    config.model = dict(
        name="decoder_lm", preset="gpt2_small", emb_dim=192, num_heads=4, mlp_dim=768,
        num_decoder_layers=3, max_len=128, dropout_rate=0.1,
        attention_dropout_rate=0.0,  # 0: keeps the fused attention path
        scale_residual_init=False)  # the measured run used plain N(0, 0.02) everywhere
    config.batch_size = 32
    config.total_steps = 2000
    config.optim.update(name="adamw", learning_rate=1e-3, b2=0.99, weight_decay=0.1,
                        warmup_steps=300, schedule="cosine", end_fraction=0.1)
    config.log_every_steps = 200
    config.eval_every_steps = 1000
    config.checkpoint.every_steps = 1000
    return config
