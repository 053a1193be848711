"""ViT on Fashion-MNIST, offline (the Debian package's IDX files), on a CPU.

    python train.py --config configs/vit_fashion_mnist.py --workdir runs/vit_fashion_mnist

Hardware, time and result: filled in from the measured run (see BENCHMARKS.md).
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
