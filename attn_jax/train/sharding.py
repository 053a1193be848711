"""Device mesh and the one rule table that places parameters and batches on it.

Models name the axes of their parameters (`embed`, `heads`, `mlp`, ...; see
`nn.with_logical_partitioning`); this module maps those logical names to the mesh axes
`data`, `fsdp` and `tensor` through `LOGICAL_RULES`. Sharding is data, not code in the models:

- data parallel:   mesh (n, 1, 1). Parameters replicated, batch split over `data`.
- FSDP:            mesh (1, n, 1). The batch is split over `fsdp` too, and each parameter's
                   `embed` axis is split over `fsdp`, so parameters and optimizer state are sharded.
- tensor parallel: mesh (1, 1, n). Attention heads, the MLP hidden axis and a recurrent cell's
                   state axis split over `tensor` (Megatron layout for the Transformer); the
                   batch is replicated over `tensor`. A Mixer's token-mixing MLP splits its hidden
                   axis the same way and replicates its patch axis.

A logical axis whose size the mesh axes do not divide is replicated instead (small models on big
meshes keep working), and a mesh axis is used at most once per array.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Axes not listed are replicated.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("conv_out", "tensor"),
    ("tokens", None),          # MLP-Mixer's token-mixing MLP (models/mixer.py) runs over the patch
    ("tokens_mlp", "tensor"),  # axis: patches replicated (196 at 224px: few meshes divide it), its
                               # hidden axis split over `tensor` like `mlp` (Megatron layout)
    ("rnn_hidden", None),  # an RNN's state and gates (models/recurrent*.py): split, the recurrence
                           # would gather it at every time step
)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor). One size may be -1: "all remaining devices".

    Args:
      shape: e.g. {"data": -1, "fsdp": 1, "tensor": 1}. Missing axes have size 1.
      devices: defaults to all devices of all processes.
    """
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh axes {sorted(unknown)} are unknown; the mesh axes are {MESH_AXES}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(shape.get(name, 1)) for name in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: {len(devices)} devices are not divisible "
                f"by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} are available")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                         devices=devices)


def _mesh_axes_for(name: str | None, rules: Sequence[tuple[str, Any]]) -> tuple[str, ...]:
    for logical, mesh_axes in rules:
        if logical == name:
            if mesh_axes is None:
                return ()
            return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    return ()


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> P:
    """PartitionSpec for an array of `shape` whose axes have the given logical names.

    Mesh axes of size 1 are dropped, as are those that do not divide the dimension or that an
    earlier dimension already uses.
    """
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        chosen = []
        for axis in _mesh_axes_for(name, rules):
            size = mesh.shape[axis]
            if size == 1 or axis in used or dim % (size * math.prod(mesh.shape[a] for a in chosen)):
                continue
            chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return P(*spec)


def logical_shardings(boxed_tree: Any, mesh: Mesh,
                      rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> Any:
    """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes.

    Boxed leaves are placed by their logical names; bare leaves (step counters, RNG keys) are
    replicated. The result has the structure of `nn.unbox(boxed_tree)`.
    """
    def place(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            value = leaf.value
            return NamedSharding(mesh, logical_to_spec(leaf.names, value.shape, mesh, rules))
        return NamedSharding(mesh, P())

    return jax.tree.map(place, boxed_tree,
                        is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def optimizer_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any,
                        param_shardings: Any, mesh: Mesh) -> Any:
    """Optimizer state placed like the parameters it mirrors (Adam moments, EMA...)."""
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(
        tx, lambda _, sharding: sharding, abstract_opt_state, param_shardings,
        transform_non_params=lambda _: replicated)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (batch) axis split over the data-parallel axes (`data` and `fsdp`)."""
    batch_axes = tuple(a for a in _mesh_axes_for("batch", LOGICAL_RULES) if mesh.shape[a] > 1)
    lead = None if not batch_axes else batch_axes[0] if len(batch_axes) == 1 else batch_axes
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in _mesh_axes_for("batch", LOGICAL_RULES))


def global_batch(mesh: Mesh, host_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assemble each host's slice of the batch into global arrays sharded over the batch axes.

    Every process passes its own rows (process p holds rows [p*b : (p+1)*b] of the global batch).
    """
    return {
        key: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(value)), value)
        for key, value in host_batch.items()
    }


def to_host(x: Any) -> np.ndarray:
    """A global array as NumPy on every process (all-gathered when other hosts hold rows)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def describe_devices(devices: Sequence[jax.Device]) -> str:
    """'8 x cpu' or '16 x NVIDIA H200 (gpu) over 2 processes': the devices by kind."""
    devices, kinds = list(devices), {}
    for d in devices:
        kind = d.device_kind if d.device_kind.lower() == d.platform else (
            f"{d.device_kind} ({d.platform})")
        kinds[kind] = kinds.get(kind, 0) + 1
    processes = len({d.process_index for d in devices})
    return (", ".join(f"{n} x {kind}" for kind, n in kinds.items())
            + (f" over {processes} processes" if processes > 1 else ""))
