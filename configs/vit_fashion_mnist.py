"""ViT on Fashion-MNIST, offline (the Debian package's IDX files), on a CPU.

    python train.py --config configs/vit_fashion_mnist.py --workdir runs/vit_fashion_mnist

A 0.53M-parameter ViT: 4x4 patches (49 tokens), width 128, 4 pre-norm blocks of 4 heads, MLP
256, global average pooling, 2-D sin-cos positions; random crops (pad 2) and horizontal flips,
label smoothing 0.1; AdamW 1e-3 (weight decay 0.05), 500 warmup steps, cosine decay; 34 epochs
at batch 128 (15,937 steps).

Hardware: the 2-core CPU this repo is developed on (shared with a test suite for ~16 min).
Time: 1 h 59 min wall (2026-11-22, run E in BENCHMARKS.md). Result: 91.9% test accuracy (91.91%;
test accuracy every 1000 steps: 77.6, 81.4, 84.2, 84.5, 86.1, 88.6, 88.3, 89.5, 90.4, 90.9, 90.9,
91.3, 91.7, 91.8, 91.8, final 91.9). This is 0.1 point (9 test images) short of the 92% the
project targets for this config. The earlier runs (best: 90.4% in 16 epochs with flips only) are
in BENCHMARKS.md.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "classification"
    config.data = dict(name="fashion_mnist_idx", crop_padding=2, flip=True)
    config.model = dict(name="vit", patch_size=4, hidden_size=128, depth=4, num_heads=4,
                        mlp_dim=256, pool_type="gap", posemb="sincos2d", dropout_rate=0.0)
    config.batch_size = 128
    config.num_epochs = 34
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 500
    config.log_every_steps = 200
    config.eval_every_steps = 1000
    config.checkpoint.every_steps = 2000
    config.label_smoothing = 0.1
    return config
