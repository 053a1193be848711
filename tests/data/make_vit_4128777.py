"""Writes vit_4128777.msgpack: a tiny ViT's parameters in the layout of commit 4128777 (ViT blocks
with `LayerNorm_0`, `MultiHeadAttention_0`, `LayerNorm_1`, `MlpBlock_0`), a fixed input and the
logits that code computed on it. tests/test_legacy.py loads it. Run against that commit:

    git archive 4128777 attn_jax | tar -x -C /tmp/old && \\
        PYTHONPATH=/tmp/old python tests/data/make_vit_4128777.py
"""

import os

import flax.linen as nn
import jax
import numpy as np
from flax import serialization

from attn_jax.models.vit import ViT

# The model tests/test_legacy.py rebuilds (keep the two in step).
CONFIG = dict(num_classes=3, patch_size=(4, 2), hidden_size=8, depth=2, num_heads=2, mlp_dim=16,
              head_zero_init=False)


def main() -> None:
    model = ViT(**CONFIG)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    params = nn.unbox(model.init(jax.random.key(0), images)["params"])
    block = params["Transformer"]["encoderblock_0"]
    if not {"LayerNorm_0", "MultiHeadAttention_0", "LayerNorm_1", "MlpBlock_0"} <= set(block):
        raise SystemExit(f"not the old layout (block keys {sorted(block)}): run at commit 4128777")
    # Perturb every leaf (LayerNorm scales of 1, zero biases) so that a mixed-up rename shows.
    params = jax.tree.map(
        lambda p: np.asarray(p + 0.3 * rng.standard_normal(p.shape), np.float32), params)
    logits = np.asarray(model.apply({"params": params}, images), np.float32)
    blob = serialization.msgpack_serialize({
        "params": params, "images": images, "logits": logits,
        "commit": "4128777", "jax": jax.__version__})
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vit_4128777.msgpack")
    with open(path, "wb") as f:
        f.write(blob)
    print(f"wrote {path}: {len(blob)} bytes; logits {logits.tolist()}")


if __name__ == "__main__":
    main()
