"""MLP-Mixer on Fashion-MNIST, offline (the Debian package's IDX files), on a CPU: the recipe of
configs/vit_fashion_mnist.py with the ViT swapped for a Mixer of about its size.

    python train.py --config configs/mixer_fashion_mnist.py --workdir runs/mixer_fashion_mnist

A 0.59M-parameter Mixer (the ViT: 0.53M): 4x4 patches (49 tokens), width 128, 8 Mixer blocks
(the depth of Mixer-S) with a token-mixing MLP of 64 and a channel-mixing MLP of 256 (the ViT's
MLP width), mean pooling; random crops (pad 2) and horizontal flips, label smoothing 0.1; AdamW
1e-3 (weight decay 0.05), 500 warmup steps, cosine decay; 42 epochs at batch 128 (19,687 steps).

Hardware: the 2-core CPU this repo is developed on. Time and result: not run yet (a 20-step
smoke run through train.py works); the ViT's recipe took 2 h 1 min there for 92.1% test accuracy.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "classification"
    config.data = dict(name="fashion_mnist_idx", crop_padding=2, flip=True)
    config.model = dict(name="mixer", patch_size=4, hidden_dim=128, num_blocks=8,
                        tokens_mlp_dim=64, channels_mlp_dim=256, dropout_rate=0.0)
    config.batch_size = 128
    config.num_epochs = 42
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 500
    config.log_every_steps = 200
    config.eval_every_steps = 1000
    config.checkpoint.every_steps = 2000
    config.label_smoothing = 0.1
    return config
