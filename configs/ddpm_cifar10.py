"""DDPM on CIFAR-10: the setup of Ho et al. 2020 (Sec. 4, Appendix B), for an accelerator.

    python train.py --config configs/ddpm_cifar10.py --workdir runs/ddpm_cifar10
    python sample.py --workdir runs/ddpm_cifar10 --num 50000 --batch-size 1000 --sampler ddpm

The 35.7M-parameter U-Net (ch 128, multipliers 1/2/2/2, 2 residual blocks per level, attention
at 16x16, dropout 0.1), linear betas 1e-4..0.02 over T = 1000, epsilon prediction, fixed
variance beta_t, L_simple; Adam at 2e-4 with 5000 warmup steps, batch 128, 800k steps, gradient
clipping at 1, EMA 0.9999, random horizontal flips. The paper reports FID 3.17 and NLL <= 3.75
bits/dim (Inception FID; this repo's FID uses a classifier of its own, see attn_jax/eval/fid.py).

Data: tfds `cifar10`, prepared in ArrayRecord format (see attn_jax/data/sources.py `prepare`).
Hardware, time and result: not yet measured.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "diffusion"
    config.data = dict(
        name="cifar10", flip=True,
        diffusion=dict(schedule="linear", num_timesteps=1000, model_mean_type="epsilon",
                       model_var_type="fixed_large", loss_type="mse"),
        sampling=dict(sampler="ddim", num_steps=100, eta=0.0, num_images=64))
    config.evals = dict(loss=dict(type="loss"), samples=dict(type="samples", num_images=64))
    # FID on a classifier of this repo, rarely (10k samples):
    #   config.evals.fid = dict(type="fid", classifier_workdir="runs/vit_cifar10",
    #                           num_samples=10_000, every_steps=100_000)
    config.model = dict(name="unet", ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                        attn_resolutions=(16,), dropout=0.1)
    config.batch_size = 128
    config.total_steps = 800_000
    config.ema_decay = 0.9999
    config.optim.name = "adam"
    config.optim.learning_rate = 2e-4
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 5000
    config.optim.grad_clip_norm = 1.0
    config.log_every_steps = 500
    config.eval_every_steps = 50_000
    config.checkpoint.every_steps = 10_000
    return config
