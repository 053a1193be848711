"""Tiny config for the tests that run train.py as a process (resume, crash, multi-process).

    python train.py --config tests/train_config.py --workdir /tmp/t

8 steps of a one-block ViT on the digits; seconds on a CPU.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "classification"
    config.data = dict(name="digits_sklearn", data_dir="", crop_padding=0, flip=False)
    config.model = dict(name="vit", patch_size=4, hidden_size=32, depth=1, num_heads=4,
                        mlp_dim=64, dropout_rate=0.1, head_zero_init=False)
    config.batch_size = 32
    config.total_steps = 8
    config.optim.learning_rate = 1e-2
    config.optim.warmup_steps = 2
    config.log_every_steps = 1
    config.eval_every_steps = 8
    config.checkpoint.every_steps = 2
    config.checkpoint.max_to_keep = 2
    config.checkpoint.async_save = False
    return config
