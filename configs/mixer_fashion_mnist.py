"""MLP-Mixer on Fashion-MNIST, offline (the Debian package's IDX files), on a CPU: the recipe of
configs/vit_fashion_mnist.py with the ViT swapped for a Mixer of about its size.

    python train.py --config configs/mixer_fashion_mnist.py --workdir runs/mixer_fashion_mnist

A 0.59M-parameter Mixer (the ViT: 0.53M): 4x4 patches (49 tokens), width 128, 8 Mixer blocks
(the depth of Mixer-S) with a token-mixing MLP of 64 and a channel-mixing MLP of 256 (the ViT's
MLP width), mean pooling; random crops (pad 2) and horizontal flips, label smoothing 0.1; AdamW
1e-3 (weight decay 0.05), 500 warmup steps, cosine decay; 42 epochs at batch 128 (19,687 steps).

Hardware: the 2-core CPU this repo is developed on. Measured (2026-12-07/08, 2-core Intel Xeon,
BENCHMARKS.md): **92.36% test accuracy** at the end of the 42 epochs, against 92.14% for the
ViT's config. At the idle rate of 2.11 steps/s the run takes about 2 h 36 min (the ViT: 2 h 1
min); the measured run was stopped at step 13,592 and resumed. A 6-epoch schedule
(`--config.num_epochs=6.0`) reaches 87.82% in 22 min 34 s (the ViT: 85.46% in 18 min 1 s).
"""

import os

from attn_jax.train.cli import load_config_file


def get_config(arg=None):
    # The ViT's recipe (data, augmentation, optimiser, schedule, cadences) with the model swapped,
    # so the two families compare on exactly the same footing.
    config = load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           "vit_fashion_mnist.py"), configs_dir="")
    config.model = dict(name="mixer", patch_size=4, hidden_dim=128, num_blocks=8,
                        tokens_mlp_dim=64, channels_mlp_dim=256, dropout_rate=0.0)
    return config
