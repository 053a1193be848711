"""Mesh construction and the logical-axis rule table (attn_jax.train.sharding)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from attn_jax.train import sharding as shd


def test_make_mesh_fills_the_minus_one_axis():
    mesh = shd.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert shd.data_parallel_size(mesh) == 4


@pytest.mark.parametrize("shape, match", [
    ({"data": 3, "fsdp": 1, "tensor": 1}, "needs 3 devices, but 8"),
    ({"data": -1, "fsdp": 3}, "not divisible"),
    ({"data": -1, "fsdp": -1}, "at most one"),
    ({"model": 2}, "unknown"),
])
def test_make_mesh_errors_name_the_problem(shape, match):
    with pytest.raises(ValueError, match=match):
        shd.make_mesh(shape)


def test_logical_rules_fsdp_and_tensor_layout():
    mesh = shd.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    # q kernel [embed, heads, head_dim]: embed over fsdp, heads over tensor (Megatron layout)
    assert shd.logical_to_spec(("embed", "heads", "kv"), (8, 4, 2), mesh) == P("fsdp", "tensor", None)
    # out kernel [heads, head_dim, embed]
    assert shd.logical_to_spec(("heads", "kv", "embed"), (4, 2, 8), mesh) == P("tensor", None, "fsdp")
    # a size the mesh axis does not divide is replicated instead of failing
    assert shd.logical_to_spec(("embed", "mlp"), (7, 3), mesh) == P(None, None)
    # a mesh axis is used once per array
    assert shd.logical_to_spec(("mlp", "heads"), (4, 4), mesh) == P("tensor", None)
    assert shd.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)


def test_logical_shardings_of_a_boxed_tree_and_global_batch():
    mesh = shd.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    init = nn.with_logical_partitioning(nn.initializers.ones, ("embed", "mlp"))
    boxed = {"w": init(jax.random.PRNGKey(0), (8, 6)), "step": jnp.zeros(())}
    shardings = shd.logical_shardings(boxed, mesh)
    assert shardings["w"].spec == P("fsdp", "tensor")
    assert shardings["step"].spec == P()
    host = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    batch = shd.global_batch(mesh, host)
    assert batch["x"].sharding.spec == P("fsdp", None)
    np.testing.assert_array_equal(np.asarray(batch["x"]), host["x"])
