"""Transfer learning: the Fashion-MNIST ViT (configs/vit_fashion_mnist.py) fine-tuned at 32x32.

    python train.py --config configs/vit_fashion_mnist.py --workdir runs/vit_fashion_mnist
    python train.py --config configs/vit_finetune_fmnist32.py --workdir runs/vit_ft_fmnist32
    python train.py --config configs/vit_finetune_fmnist32.py:runs/other_fmnist_run ...
    python train.py --config configs/vit_finetune_fmnist32.py:scratch --workdir runs/vit_fmnist32

The argument is the pretrained run's workdir (default runs/vit_fashion_mnist; or
`--config.init.path`), or `scratch`: the same model and steps from a random init with the
pretraining recipe's optimiser (AdamW 1e-3, weight decay 0.05, label smoothing 0.1), the
baseline the fine-tune must beat.

The images are upsampled to 32x32 (bilinear, `data.image_size`): 4x4 patches give an 8x8 grid
instead of 7x7. The source model's positions are 2-D sin-cos, computed for whatever grid the
images give, so nothing needs resampling; a checkpoint with learned positions (`posemb='learn'`)
has its table resampled to the new grid by `config.init` (`posemb_resize`, linear as
vision_transformer). big_vision's transfer recipe: SGD with momentum 0.9, lr 0.03, cosine decay
after a short warmup, no weight decay, gradient clipping at norm 1, and a fresh zero-initialised
head (`init.dont_load` keeps the checkpoint's head out although the 10 classes match); every
other parameter is the checkpoint's. 500 steps at batch 128 (1.07 epochs).

Hardware: 2-core CPU. The 500-step default (2026-12-07, 2-core Xeon, BENCHMARKS.md), from a
6-epoch run of configs/vit_fashion_mnist.py (85.46% at 28px): fine-tuned 85.42% in 4 min 45 s,
`:scratch` 77.20% in 4 min 39 s. A 100-step check
(2026-12-07, the CPU shared with other jobs, `--config.total_steps=100
--config.optim.warmup_steps=10`) from a 300-step run of configs/vit_fashion_mnist.py (total_steps
300, warmup 30; 71.7% test accuracy at 28px): fine-tuned at 32px 74.1% test accuracy (3.0 min
wall), `:scratch` 54.4% (3.4 min). The source saw the same data for 300 steps, so this checks
the path at a new resolution, not transfer (configs/vit_finetune_digits.py is the transfer).
"""

import os

from attn_jax.train.cli import load_config_file

DEFAULT_INIT = "runs/vit_fashion_mnist"


def _sibling(name: str):
    return load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), name),
                            configs_dir="")


def finetune(config, arg, steps: int, lr: float):
    """Turn `config` (the pretraining config with the new data) into the fine-tune (arg: the
    pretrained workdir, '' for DEFAULT_INIT) or, for arg 'scratch', the from-scratch baseline;
    `steps` at learning rate `lr` either way (the baseline keeps the pretraining optimiser)."""
    config.total_steps = steps
    config.num_epochs = 0
    config.model.head_zero_init = True
    config.log_every_steps = max(steps // 10, 1)
    config.eval_every_steps = steps
    config.checkpoint.every_steps = steps
    if arg == "scratch":
        config.optim.warmup_steps = steps // 10
        return config
    config.init.path = arg or DEFAULT_INIT
    config.init.dont_load = ("head/.*",)
    config.label_smoothing = 0.0
    config.optim.update(name="sgd", learning_rate=lr, momentum=0.9, nesterov=False,
                        weight_decay=0.0, grad_clip_norm=1.0, schedule="cosine",
                        warmup_steps=steps // 10, end_fraction=0.0)
    return config


def get_config(arg=None):
    config = _sibling("vit_fashion_mnist.py")  # the checkpoint's model, unchanged
    config.data.image_size = 32
    return finetune(config, arg, steps=500, lr=0.03)
