"""A small stand-in for tfds `coco/2017`, written as ArrayRecord in a temporary data_dir.

Its features are tfds' own for coco/2017 (tensorflow_datasets/object_detection/coco.py, `_info`
without panoptic: 'image' JPEG, 'image/filename', 'image/id', 'objects' with 'id', 'area',
'bbox' (ymin, xmin, ymax, xmax normalised), 'label' ClassLabel(80), 'is_crowd'), and it lands
where `tfds build coco/2017` puts it (data_dir/coco/2017/<version>), so the reader opens it the
way it opens the real one. Building needs no TensorFlow (the images go in as JPEG bytes).

IMAGES holds each split's images: (image id, height, width, [(label, ymin, xmin, ymax, xmax,
area, is_crowd), ...]).
"""

from __future__ import annotations

import io
import os

import numpy as np

IMAGES = {
    "train": [
        (9, 48, 64, [(0, 0.1, 0.2, 0.5, 0.6, 300, False), (11, 0.5, 0.5, 0.9, 0.9, 250, False),
                     (3, 0.0, 0.0, 1.0, 1.0, 900, True),          # a crowd region: dropped
                     (5, 0.3, 0.4, 0.3, 0.7, 0, False)]),         # zero height: dropped
        (7, 64, 40, [(79, 0.25, 0.25, 0.75, 0.5, 120, False)]),
        (3, 32, 32, []),
    ],
    "validation": [
        (101, 40, 60, [(3, 0.1, 0.2, 0.5, 0.6, 100, False), (10, 0.55, 0.1, 0.95, 0.45, 80,
                                                              False)]),
        (102, 60, 30, [(44, 0.2, 0.1, 0.7, 0.9, 200, False), (0, 0.0, 0.0, 0.3, 0.3, 40, True)]),
        (103, 50, 50, [(1, 0.3, 0.3, 0.6, 0.6, 90, False)]),
    ],
}


def image_pixels(image_id: int, height: int, width: int) -> np.ndarray:
    """The (smooth, so JPEG keeps it close) uint8 [height, width, 3] picture of an image id."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = [(y * 3 + image_id) % 256, (x * 5 + 2 * image_id) % 256, ((x + y) * 2) % 256]
    return np.stack(rgb, -1).astype(np.uint8)


def build(data_dir: str) -> str:
    """Writes the fake coco/2017 under data_dir; returns its version directory."""
    import tensorflow_datasets as tfds
    from PIL import Image

    def examples(split):
        for image_id, h, w, objects in IMAGES[split]:
            buf = io.BytesIO()
            Image.fromarray(image_pixels(image_id, h, w)).save(buf, format="JPEG", quality=95)
            yield f"{image_id:012d}.jpg", {
                "image": buf.getvalue(), "image/filename": f"{image_id:012d}.jpg",
                "image/id": image_id,
                "objects": [{"id": 1000 * image_id + k, "area": area,
                             "bbox": tfds.features.BBox(ymin, xmin, ymax, xmax),
                             "label": label, "is_crowd": crowd}
                            for k, (label, ymin, xmin, ymax, xmax, area, crowd)
                            in enumerate(objects)]}

    class Coco(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.1.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2017")]

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "image/filename": tfds.features.Text(),
                "image/id": np.int64,
                "objects": tfds.features.Sequence({
                    "id": np.int64, "area": np.int64, "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(num_classes=80), "is_crowd": np.bool_}),
            }))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in IMAGES}

        def _generate_examples(self, split):
            yield from examples(split)

    builder = Coco(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return os.path.join(data_dir, "coco", "2017", "1.1.0")
