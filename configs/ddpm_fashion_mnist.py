"""DDPM on Fashion-MNIST, offline (the Debian package's IDX files), sized for a 2-core CPU.

    python train.py --config configs/ddpm_fashion_mnist.py --workdir runs/ddpm_fashion_mnist
    python sample.py --workdir runs/ddpm_fashion_mnist --num 64 --sampler ddim --steps 50
    # FID on the features of the ViT classifier of configs/vit_fashion_mnist.py, once trained:
    python sample.py --workdir runs/ddpm_fashion_mnist --num 1000 --sampler ddim --steps 50 \
        --fid --fid-baselines --classifier-workdir runs/vit_fashion_mnist
    python sample.py --workdir runs/ddpm_fashion_mnist --num 0 --bpd --bpd-examples 64

Ho et al. 2020's recipe (linear betas 1e-4..0.02 over T = 1000, epsilon prediction, fixed
variance, L_simple, Adam, gradient clipping at 1) with a 1.1M-parameter U-Net: widths
32/64/64 at 28/14/7 pixels (28 is divisible by 4, so no padding: padding to 32x32 measured 30%
more compute per step), self-attention at 14x14 and in the 7x7 middle, no dropout. Far shorter
than the paper's 800k steps: 3000 steps at batch 32 (1.6 epochs), Adam 5e-4 after 200 warmup
steps, and no EMA of the parameters: the measured run kept one (decay 0.999, started from the
initialisation, before the trainer had `ema_warmup`) and at step 3000 it still held 5% of the
random init, so its samples were noise; the numbers below are the raw parameters, which the
EMA never feeds back into, i.e. exactly what this config trains.

Hardware: the 2-core CPU this repo is developed on. Time: 73 min wall for the 3000 steps
(2026-11-21), with two or three other jobs sharing the CPU for most of it; alone it ran 1.2
steps/s, so about 45 min. Result at step 3000, 1000 DDIM-50 samples:
FID 18.6 on the features of the ViT of configs/vit_fashion_mnist.py (run C, 90.4% accuracy)
against the 60k training images, where 1000 real test images score 0.49 (floor) and 1000
uniform-noise images 167.4 (ceiling); test bits/dim 3.82 (the full bound over all 1000
steps on the first 64 test images; 1.58 of it is L_0). About two thirds of the
samples are clean, recognisable garments (shirts, trousers, dresses, sneakers, sandals, boots,
bags); the rest are noisy textures. docs/ddpm_fashion_mnist_samples.png shows 64;
BENCHMARKS.md has the details.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "diffusion"
    config.data = dict(
        name="fashion_mnist_idx",
        flip=False,  # every shoe in Fashion-MNIST faces left: flips would add unseen images
        diffusion=dict(schedule="linear", num_timesteps=1000, model_mean_type="epsilon",
                       model_var_type="fixed_large", loss_type="mse"),
        sampling=dict(sampler="ddim", num_steps=50, eta=0.0, num_images=64))
    config.evals = dict(
        loss=dict(type="loss"),          # test loss and a one-sample bound, every eval
        samples=dict(type="samples", num_images=64))
    # For FID during training (against the training images, as Ho et al. do with CIFAR-10's),
    # add an evaluator with its own, rarer cadence:
    #   config.evals.fid = dict(type="fid", classifier_workdir="runs/vit_fashion_mnist",
    #                           num_samples=1000, split="train", every_steps=3000)
    config.model = dict(name="unet", ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                        attn_resolutions=(14,), dropout=0.0)
    config.batch_size = 32
    config.total_steps = 3000
    # No EMA: the measured run's results are its raw parameters (see the docstring). For longer
    # runs, keep an EMA as the paper does (0.9999 over 800k steps; a shorter horizon such as
    # 0.999 for short runs), with the trainer's default ema_warmup.
    config.ema_decay = 0.0
    config.optim.name = "adam"
    config.optim.learning_rate = 5e-4
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 200
    config.optim.grad_clip_norm = 1.0
    config.log_every_steps = 100
    config.eval_every_steps = 1500
    config.checkpoint.every_steps = 1000
    return config
