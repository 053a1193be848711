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

Hardware: 2-core CPU. Time: not yet measured. Result: not yet measured.
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
