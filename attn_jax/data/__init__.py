"""Image input pipeline: tfds ArrayRecord storage (no TensorFlow needed) + grain iterators.

    info = dataset_info('fashion_mnist_idx')              # classes, shapes, sizes, mean/std
    it = make_iterator('fashion_mnist_idx', 'train', global_batch_size=128, train=True, seed=0,
                       process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)   # {'image': f32 [128 // hosts, 28, 28, 1], 'label': i32 [..], 'mask': f32 [..]}
"""

from attn_jax.data.datasets.fashion_mnist import read_idx
from attn_jax.data.pipeline import make_dataset, make_iterator
from attn_jax.data.sources import (OFFLINE_BUILDERS, ImageDatasetInfo, dataset_info, load_arrays,
                                   prepare)

__all__ = [
    "OFFLINE_BUILDERS",
    "ImageDatasetInfo",
    "dataset_info",
    "load_arrays",
    "make_dataset",
    "make_iterator",
    "prepare",
    "read_idx",
]
