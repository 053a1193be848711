"""Transfer learning: the Fashion-MNIST ViT (configs/vit_fashion_mnist.py) fine-tuned on the
scikit-learn digits, upsampled from 8x8 to 28x28 (the checkpoint's size, `data.image_size`).

    python train.py --config configs/vit_fashion_mnist.py --workdir runs/vit_fashion_mnist
    python train.py --config configs/vit_finetune_digits.py --workdir runs/vit_ft_digits
    python train.py --config configs/vit_finetune_digits.py:runs/other_fmnist_run ...
    python train.py --config configs/vit_finetune_digits.py:scratch --workdir runs/vit_digits28

The argument is the pretrained run's workdir (default runs/vit_fashion_mnist; or
`--config.init.path`), or `scratch`: the same model and steps from a random init with the
pretraining recipe's optimiser (AdamW 1e-3, weight decay 0.05, label smoothing 0.1). The recipe
is configs/vit_finetune_fmnist32.py's (big_vision's transfer: SGD momentum 0.9, lr 0.03, cosine,
no weight decay, clipping at 1, a fresh zero-initialised head for the 10 digit classes; the rest
is the checkpoint's); no augmentation. 300 steps at batch 128 (27 epochs of the 1442 training
digits); test accuracy on the 355 held-out digits.

Hardware: 2-core CPU. The 300-step default (2026-12-07, 2-core Xeon, BENCHMARKS.md), from a
6-epoch run of configs/vit_fashion_mnist.py (85.46%): fine-tuned 97.75% in 2 min 11 s,
`:scratch` 98.87% in 2 min 3 s; at 100 steps 93.24% against 92.96%. Shorter checks
measured (2026-12-07, the CPU shared with other jobs, seed 0), from a 300-step Fashion-MNIST run
(configs/vit_fashion_mnist.py with total_steps 300, warmup 30: 71.7% Fashion-MNIST test accuracy;
17 min sharing the CPU), test accuracy on the digits with `--config.total_steps`:
  50 steps (warmup 5):  fine-tuned 75.5%, `:scratch` 56.3%          (1-1.5 min each)
  200 steps:            fine-tuned 91.6%, `:scratch` 98.6%; SGD from scratch with the fine-tune's
                        optimiser (lr 0.03, no smoothing) 94.9%   (3.6 min each at ~1 step/s)
The transfer helps early; by 200 steps scratch overtakes it: the source model is weak (300 steps)
and the digits are easy. Commands and wall times: BENCHMARKS.md.
"""

import importlib.util
import os


def _sibling_module(name: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    spec = importlib.util.spec_from_file_location(name[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    recipe = _sibling_module("vit_finetune_fmnist32.py")
    config = recipe._sibling("vit_fashion_mnist.py")  # the checkpoint's model, unchanged
    config.data = dict(name="digits_sklearn", image_size=28, crop_padding=0, flip=False)
    return recipe.finetune(config, arg, steps=300, lr=0.03)
