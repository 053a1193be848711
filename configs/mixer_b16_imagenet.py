"""Mixer-B/16 on ImageNet-1k from scratch, after big_vision's configs/mlp_mixer_i1k.py (which
reports 76.3% top-1 in 300 epochs, 2 h 11 min on a TPU v3-128): batch 4096, Adam with decoupled
weight decay 1e-4, lr 1e-3, 10k warmup steps then linear decay to 1e-5, gradient clipping at
norm 1, stochastic depth 0.1 (the same linear per-block rule), mixup Beta(0.5, 0.5). Not here:
RandAugment(2, 15) and big_vision's sigmoid cross-entropy (this task uses softmax), so expect
somewhat less.

    python train.py --config configs/mixer_b16_imagenet.py --workdir gs://BUCKET/mixer_b16 \
        --distributed --config.mesh.fsdp=-1 --config.mesh.data=1

Hardware: a TPU pod slice or GPUs (tfds `imagenet2012` prepared as ArrayRecord in data_dir); on
8 chips lower config.batch_size (e.g. 1024, as configs/vit_b16_imagenet.py). Time and result:
not measured (no accelerator pod was available).
"""

from attn_jax.models.mixer import mixer_variant
from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "classification"
    config.data = dict(name="imagenet2012", image_size=224, mixup_alpha=0.5,
                       eval_splits=("validation",))
    config.model = dict(name="mixer", **mixer_variant("B/16"), stochastic_depth_rate=0.1)
    config.dtype = "bfloat16"
    config.batch_size = 4096
    config.num_epochs = 300
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 1e-4
    config.optim.warmup_steps = 10_000
    config.optim.schedule = "linear"
    config.optim.end_fraction = 0.01
    config.optim.grad_clip_norm = 1.0
    config.log_every_steps = 100
    config.eval_every_steps = 5000
    config.checkpoint.every_steps = 2000
    config.checkpoint.best_metric = "validation_accuracy"
    return config
