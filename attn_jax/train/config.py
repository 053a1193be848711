"""The trainer's config keys, with defaults. Config files start from `base_config()`.

The returned config is locked: assigning a key the trainer does not know (a typo) raises at once.
`model` and `data` are open sections that belong to the task; the task validates them.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "classification"
    c.seed = 0
    c.model = ml_collections.ConfigDict()   # model.name + the model's fields
    c.data = ml_collections.ConfigDict()    # task-specific: dataset name, augmentation, ...
    c.batch_size = 128                      # global, over all devices and processes
    c.total_steps = 0                       # or num_epochs (total_steps wins when > 0)
    c.num_epochs = 0.0
    c.grad_accum_steps = 1
    c.dtype = "float32"                     # compute dtype; parameters stay float32
    c.ema_decay = 0.0                       # 0 = no EMA of parameters
    c.ema_warmup = True                     # decay min(ema_decay, (1+t)/(10+t)) at update t
    c.label_smoothing = 0.0

    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, schedule="cosine", warmup_steps=0, end_fraction=0.0,
        weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, nesterov=False,
        grad_clip_norm=1.0))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=0, max_to_keep=3, best_metric="", best_mode="max", keep_best=1,
        async_save=True))

    c.log_every_steps = 50
    c.eval_every_steps = 0                  # 0 = only at the end

    # Test hooks: simulate crashes, record the batches seen.
    c.debug = ml_collections.ConfigDict(dict(log_batches=False, kill_after_step=-1,
                                             kill_after_save_step=-1))
    c.lock()
    return c
