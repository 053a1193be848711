"""DETR-R50-like on COCO 2017 (Carion et al. 2020, arXiv:2005.12872): NOT RUNNABLE YET.

    python train.py --config configs/detr_coco.py --workdir gs://BUCKET/detr_coco --distributed

The intended recipe, after the paper (sec. 4 and A.4): 6 + 6 post-norm layers, d_model 256, 8
heads, MLP 2048, dropout 0.1, 100 object queries, 91 COCO category ids; AdamW 1e-4 (weight
decay 1e-4), the backbone at 1e-5 (`lr_mults = [('backbone/.*', 0.1)]`), gradient clipping
0.1, batch 64, 500 epochs with a 10x lr drop after 400 (the paper's 42.0 AP / 62.4 AP50 on
val2017 with a ResNet-50). The backbone here is this repo's CNN (`attn_jax.models.cnn`,
ResNet-style, randomly initialised), not an ImageNet-pretrained ResNet-50, so the paper's
numbers are not the target.

Hardware: accelerators (a TPU pod slice or 8+ GPUs) with tfds `coco/2017` prepared in data_dir.
Not run here: the detection task (`attn_jax.tasks.detection`) cannot read COCO yet. Missing: a
reader of tfds 'coco/2017' (objects/bbox and objects/label; resizing the images, padding them to
a fixed shape with a pixel mask the model takes; padding the objects to max_objects) and the
COCO ground-truth dict of a split for the coco_map evaluator. Building the task from this config
raises a ValueError that says so (`train.py` fails before compiling anything).
Time and result: not measured.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "detection"
    config.data = dict(dataset="coco", data_dir="", max_items=100, max_objects=100,
                       eval_splits=("validation",))
    config.model = dict(name="detr", d_model=256, num_heads=8, num_encoder_layers=6,
                        num_decoder_layers=6, mlp_dim=2048, num_queries=100, norm="post",
                        dropout_rate=0.1, attention_dropout_rate=0.1,
                        backbone=dict(name="cnn", widths=(64, 128, 256, 512, 512),
                                      blocks_per_stage=2, num_groups=32))
    config.dtype = "bfloat16"
    config.batch_size = 64
    config.num_epochs = 500
    config.optim.name = "adamw"
    config.optim.learning_rate = 1e-4
    config.optim.weight_decay = 1e-4
    config.optim.schedule = "constant"
    config.optim.grad_clip_norm = 0.1
    config.optim.lr_mults = (("backbone/.*", 0.1),)
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.evals = dict(loss=dict(type="loss"), coco_map=dict(type="coco_map"))
    config.checkpoint.every_steps = 5000
    return config
