"""Transfer learning: the stdlib GPT (configs/lm_stdlib.py) adapted to Flax's source, on a CPU.

    python train.py --config configs/lm_stdlib.py --workdir runs/lm_stdlib   # first
    python train.py --config configs/lm_stdlib_finetune.py --workdir runs/lm_stdlib_finetune

`config.init.path` copies every parameter of runs/lm_stdlib whose path and shape match (here
all: the model below is lm_stdlib's); `optim.lr_mults` multiplier 0 holds the byte embedding and
the two lower blocks fixed (bit-identical, weight decay included), so only the top block and the
final norm adapt. The new corpus is the installed `flax`
package's .py files (tests excluded), split by file like the stdlib. Compare its validation bits
per byte with the pretrained model's before fine-tuning (step 0 eval) and with lm_stdlib's
architecture trained on Flax from scratch.

Hardware: 2-core CPU. Time: not yet measured. Result: not yet measured.
"""

import os

from attn_jax.train.config import base_config


def get_config(arg=None):
    import flax

    config = base_config()
    config.task = "lm"
    config.data = dict(
        dataset="stdlib", root=os.path.dirname(flax.__file__), validation_fraction=0.1, seed=0,
        tokenizer="byte", seq_len=128)
    config.init.path = "runs/lm_stdlib"
    config.evals = dict(
        loss=dict(type="loss"),
        sample=dict(type="sample_text", prompt="class ", length=120, num_samples=2,
                    temperature=0.8, top_p=0.95))
    # Must equal lm_stdlib's model for every parameter to load.
    config.model = dict(
        name="decoder_lm", preset="gpt2_small", emb_dim=192, num_heads=4, mlp_dim=768,
        num_decoder_layers=3, max_len=128, dropout_rate=0.1, attention_dropout_rate=0.0,
        scale_residual_init=False)
    config.batch_size = 32
    config.total_steps = 2000
    config.optim.update(name="adam", learning_rate=3e-4, b2=0.99, weight_decay=0.0,
                        warmup_steps=100, schedule="cosine", end_fraction=0.1)
    config.optim.lr_mults = (("embedding/embedding", 0.0), ("decoder/embedder/.*", 0.0),
                             ("decoder/layer_[01]/.*", 0.0))
    config.log_every_steps = 100
    config.eval_every_steps = 500
    config.checkpoint.every_steps = 500
    return config
