"""A ResNet-style CNN with a SAGAN self-attention block on Fashion-MNIST, offline (the Debian
package's IDX files), on a CPU.

    python train.py --config configs/cnn_fashion_mnist.py --workdir runs/cnn_fashion_mnist

A 0.70M-parameter attn_jax.models.cnn: a 3x3 stem and three stages of pre-activation residual
blocks, widths 32/64/128 at 28/14/7 pixels, two blocks per stage, GroupNorm (8 groups), and
SAGAN's self-attention (Zhang et al. 2019) over the 14x14 grid after the second stage; mean
pooling, a linear head. Random crops (pad 2) and horizontal flips, label smoothing 0.1; AdamW
1e-3 (weight decay 0.05), 500 warmup steps, cosine decay; 10 epochs at batch 128 (4,687 steps).

Hardware: the 2-core CPU this repo is developed on. Time and result of the full run: not yet
measured. A short check (2026-12-07), with the schedule shrunk to 300 steps:

    python train.py --config configs/cnn_fashion_mnist.py --workdir /tmp/cnn300 \
        --config.total_steps=300 --config.optim.warmup_steps=50 --config.eval_every_steps=0 \
        --config.log_every_steps=50 --config.checkpoint.every_steps=0

12 min wall at 0.44 steps/s (the CPU shared with other jobs, load 3-6), 71.9% test accuracy
(test loss 0.815; train loss 1.75 / 1.37 / 1.08 at steps 50 / 100 / 300). SAGAN's gamma had
moved only to -0.0066 by then: the attention had barely entered the network yet.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "classification"
    config.data = dict(name="fashion_mnist_idx", crop_padding=2, flip=True)
    config.model = dict(name="cnn", widths=(32, 64, 128), blocks_per_stage=2, norm="group",
                        num_groups=8, attention_stage=1)
    config.batch_size = 128
    config.num_epochs = 10
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 500
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.checkpoint.every_steps = 1000
    config.label_smoothing = 0.1
    return config
