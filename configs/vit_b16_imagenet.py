"""ViT-B/16 on ImageNet-1k from scratch, after big_vision's plain-ViT recipe (Beyer et al. 2022):
90 epochs, batch 1024, AdamW lr 1e-3 wd 1e-4, 10k warmup steps, cosine, global average pooling,
2-D sin-cos positions, mixup 0.2 (RandAugment is not implemented here).

    python train.py --config configs/vit_b16_imagenet.py --workdir gs://BUCKET/vit_b16 \
        --distributed --config.mesh.fsdp=-1 --config.mesh.data=1

Hardware: a TPU v3-8 / v4-8 or 8 GPUs (tfds `imagenet2012` prepared as ArrayRecord in data_dir).
Time and result: not measured (no accelerator pod was available); BENCHMARKS.md has the
measured train-step throughput of this model.
"""

from attn_jax.models.vit import vit_variant
from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "classification"
    config.data = dict(name="imagenet2012", image_size=224, mixup_alpha=0.2,
                       eval_splits=("validation",))
    model = vit_variant("B/16")
    config.model = dict(name="vit", **model, pool_type="gap", posemb="sincos2d",
                        dropout_rate=0.0)
    config.dtype = "bfloat16"
    config.batch_size = 1024
    config.num_epochs = 90
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 1e-4
    config.optim.warmup_steps = 10_000
    config.optim.b2 = 0.999
    config.log_every_steps = 100
    config.eval_every_steps = 5000
    config.checkpoint.every_steps = 2000
    config.checkpoint.best_metric = "validation_accuracy"
    return config
