"""DDPM on Fashion-MNIST, offline (the Debian package's IDX files), sized for a 2-core CPU.

    python train.py --config configs/ddpm_fashion_mnist.py --workdir runs/ddpm_fashion_mnist
    python sample.py --workdir runs/ddpm_fashion_mnist --num 64 --sampler ddim --steps 50
    # FID on the features of the ViT classifier of configs/vit_fashion_mnist.py, once trained:
    python sample.py --workdir runs/ddpm_fashion_mnist --num 1000 --sampler ddim --steps 50 \
        --fid --classifier-workdir runs/vit_fashion_mnist

Ho et al. 2020's recipe (linear betas 1e-4..0.02 over T = 1000, epsilon prediction, fixed
variance beta_t, L_simple, Adam, gradient clipping at 1, EMA) with a 1.1M-parameter U-Net: widths
32/64/64 at 28/14/7 pixels (28 is divisible by 4, so no padding: padding to 32x32 measured 30%
more compute per step), self-attention at 14x14 and in the 7x7 middle, no dropout (10 epochs of
60k images do not overfit 1.1M parameters). Far shorter than the paper's 800k steps, hence a
higher learning rate and a faster EMA (0.999: an average over ~1k steps).

Hardware: 2-core CPU. Time: one train step at batch 64 took 1.9 s wall / 1.86 CPU-seconds,
measured while other jobs kept the load average near 5, so an idle machine should be faster;
the full run is not yet measured. Result (sample grid, FID, bits/dim): not yet measured.
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
        sampling=dict(sampler="ddim", num_steps=50, eta=0.0, num_images=64),
        # Set classifier_workdir (e.g. runs/vit_fashion_mnist) to log FID at every eval.
        # FID against the training images, as Ho et al. do (their CIFAR-10 train set).
        fid=dict(classifier_workdir="", num_samples=1000, split="train"))
    config.model = dict(name="unet", ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                        attn_resolutions=(14,), dropout=0.0)
    config.batch_size = 64
    config.total_steps = 10_000
    config.ema_decay = 0.999
    config.optim.name = "adam"
    config.optim.learning_rate = 5e-4
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 500
    config.optim.grad_clip_norm = 1.0
    config.log_every_steps = 100
    config.eval_every_steps = 2500
    config.checkpoint.every_steps = 2500
    return config
