"""DETR on COCO 2017 (Carion et al. 2020, arXiv:2005.12872), for accelerators; not run here.

    python train.py --config configs/detr_coco.py --workdir gs://BUCKET/detr_coco --distributed \
        --config.data.data_dir=/path/to/tensorflow_datasets

Data: tfds `coco/2017`, prepared once as ArrayRecord where TensorFlow and the network are
(`tfds build coco/2017 --file_format=array_record --data_dir=DIR`); the run reads it without
TensorFlow (`attn_jax.data.datasets.coco`). Each image is resized to a longer side of 800 px
and padded to 800x800 with a pixel mask that the model's attention respects; targets follow
the official code (crowd and empty boxes dropped), padded to 100 slots; 80 classes (tfds'
labels, mapped back to COCO's category ids for the evaluation). Training augmentation: the
official random size crop half the time (`crop`: shorter side to 400-600 px, a 384-600 px
window), flips half the time, and a longer side random in 480-800 px (`min_scale` 0.6). The
paper resizes the shorter side to 480-800 px (the longer up to 1333), so this is a
smaller-image variant.

Model, after the paper (sec. 4 and A.4): 6 + 6 post-norm layers, d_model 256, 8 heads, MLP
2048, dropout 0.1, 100 object queries; AdamW 1e-4 (weight decay 1e-4), the backbone at 1e-5
(`lr_mults = [('backbone/.*', 0.1)]`), gradient clipping 0.1, batch 64, 500 epochs with the
rate dropped 10x after 400 (`optim.schedule='step'`, `decay_at=(0.8,)`). The backbone is this
repo's CNN (`attn_jax.models.cnn`, ResNet-style, randomly initialised), not an
ImageNet-pretrained ResNet-50, so the paper's 42.0 AP on val2017 is not the target.
Evaluators: the set loss and COCO AP (pycocotools) on the first 5000 validation images (all of
val2017) every 10k steps.

Hardware: accelerators (a TPU pod slice or 8+ GPUs). Not run: this machine has neither COCO
nor an accelerator. The path is tested on a stand-in with tfds' coco/2017 features
(tests/fake_coco.py, tests/test_coco_data.py); time and result: not measured.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "detection"
    config.data = dict(dataset="coco", data_dir="", canvas_size=800, max_objects=100,
                       min_scale=0.6, flip=True, crop=True, eval_splits=("validation",))
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
    config.optim.schedule = "step"
    config.optim.decay_at = (0.8,)  # 10x lower after epoch 400 of 500
    config.optim.decay_factor = 0.1
    config.optim.grad_clip_norm = 0.1
    config.optim.lr_mults = (("backbone/.*", 0.1),)
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.evals = dict(loss=dict(type="loss"), coco_map=dict(type="coco_map"))
    config.checkpoint.every_steps = 5000
    return config
