"""ViT on Fashion-MNIST, offline (the Debian package's IDX files), on a CPU.

    python train.py --config configs/vit_fashion_mnist.py --workdir runs/vit_fashion_mnist

A 0.53M-parameter ViT: 4x4 patches (49 tokens), width 128, 4 pre-norm blocks of 4 heads, MLP
256, global average pooling, 2-D sin-cos positions; AdamW 2e-3, 800 warmup steps, cosine decay,
horizontal flips; 16 epochs at batch 128 (7,500 steps).

Hardware: the 2-core CPU this repo is developed on, shared with other jobs during the run.
Time: 52 min wall (2026-11-21). Result: 90.4% test accuracy (test accuracy every 1000 steps:
80.5, 83.1, 85.5, 86.8, 88.9, 90.0, 90.5, final 90.4). This is short of the 92% the project
targets for this config. Without flips and with 24 epochs (2 h) the same model overfits and ends
at 89.8%; BENCHMARKS.md records the four runs tried so far.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "classification"
    config.data = dict(name="fashion_mnist_idx", crop_padding=0, flip=True)
    config.model = dict(name="vit", patch_size=4, hidden_size=128, depth=4, num_heads=4,
                        mlp_dim=256, pool_type="gap", posemb="sincos2d", dropout_rate=0.0)
    config.batch_size = 128
    config.num_epochs = 16
    config.optim.learning_rate = 2e-3
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 800
    config.log_every_steps = 200
    config.eval_every_steps = 1000
    config.checkpoint.every_steps = 1000
    return config
