"""ViT-S/4 on CIFAR-10 from scratch (tfds `cifar10`; needs the dataset prepared once online).

    python train.py --config configs/vit_cifar10.py --workdir runs/vit_cifar10
    # more devices: --config.mesh.data=-1 (data parallel) or --config.mesh.fsdp=-1 (FSDP)

Hardware: one GPU or a TPU host. Time and result: not yet measured (no GPU was available
when this config was written; BENCHMARKS.md records the step throughput it was measured at).
Recipe: random crop (pad 4) + flip, mixup 0.2, label smoothing 0.1, AdamW, warmup + cosine,
bfloat16 compute with float32 parameters.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "classification"
    config.data = dict(name="cifar10", crop_padding=4, flip=True, mixup_alpha=0.2)
    config.model = dict(name="vit", patch_size=4, hidden_size=384, depth=12, num_heads=6,
                        mlp_dim=1536, pool_type="gap", posemb="sincos2d", dropout_rate=0.0)
    config.dtype = "bfloat16"
    config.batch_size = 512
    config.num_epochs = 200
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 2000
    config.optim.b2 = 0.99
    config.label_smoothing = 0.1
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.checkpoint.every_steps = 1000
    config.checkpoint.best_metric = "test_accuracy"
    return config
