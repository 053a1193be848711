"""Scaled dot-product attention, boolean masks, and a Flax `MultiHeadAttention` with a KV cache.

Attention is softmax(Q K^T * scale + bias) V (Vaswani et al. 2017, eq. 1), scale = 1/sqrt(head_dim)
by default. Four implementations compute it and agree numerically:

  "reference"  explicit einsums; the only path that returns the weights or applies dropout.
  "xla"        `jax.nn.dot_product_attention(implementation="xla")`.
  "cudnn"      `jax.nn.dot_product_attention(implementation="cudnn")`: fused flash attention on
               NVIDIA GPUs (sm80+, float16/bfloat16, head_dim <= 128 and a multiple of 8).
  "pallas"     Pallas flash attention (Dao et al. 2022): the Triton kernel on GPU (run with
               `interpret=True` on CPU, for testing only) and the TPU kernel on TPU. Takes
               `is_causal`, `scale` and grouped-query attention; `mask` and (on GPU) `bias` raise.
  None         picks one: "reference" when weights or dropout are asked for, "cudnn" on a GPU
               when dtype and shapes allow it, else "xla".

The platform is the one the computation runs on: `attention_platform(mesh)` (the trainer sets
it from its mesh's devices; it is also a context manager), else `jax.default_backend()`. When
the automatic choice passes over a faster path (dropout forces "reference", float32 or the head
size refuse "cudnn", the platform is not a GPU, ...) it logs one line per trace on the
`attn_jax.attention` logger saying what ran and why (WARNING on a GPU, INFO elsewhere).

Masks are boolean, True = may attend, broadcastable to `[batch, heads, q_len, kv_len]`. A query row
whose keys are all masked gives an output of exact zeros (and zero weights) in every path.
"""

from __future__ import annotations

import functools
import logging
import math
import weakref
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

IMPLEMENTATIONS = ("reference", "xla", "cudnn", "pallas")

logger = logging.getLogger(__name__)

# Large finite negative logit for masked keys: exp() underflows to 0 without the NaNs of -inf.
_MASKED_LOGIT = -0.7 * float(np.finfo(np.float32).max)


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def padding_mask(lengths: Array, max_len: int) -> Array:
    """`[batch, max_len]` bool, True at positions `< lengths[b]` (the valid tokens)."""
    lengths = jnp.asarray(lengths)
    if lengths.ndim != 1:
        raise ValueError(f"padding_mask expects lengths [batch], got shape {lengths.shape}")
    return jnp.arange(max_len)[None, :] < lengths[:, None]


def padding_mask_from_ids(ids: Array, pad_id: int = 0) -> Array:
    """`[batch, length]` bool, True where `ids != pad_id`."""
    return jnp.asarray(ids) != pad_id


def attention_mask_from_padding(q_valid: Array, kv_valid: Array | None = None) -> Array:
    """Attention mask `[batch, 1, q_len, kv_len]` from per-token validity.

    Query i may attend key j when both are valid, so padded query rows are fully masked (their
    outputs are zeros). `kv_valid=None` means self-attention (`kv_valid = q_valid`).

    Args:
      q_valid: `[batch, q_len]` bool.
      kv_valid: `[batch, kv_len]` bool, or None.
    """
    kv_valid = q_valid if kv_valid is None else kv_valid
    q_valid, kv_valid = jnp.asarray(q_valid, bool), jnp.asarray(kv_valid, bool)
    if q_valid.ndim != 2 or kv_valid.ndim != 2 or q_valid.shape[0] != kv_valid.shape[0]:
        raise ValueError(
            "attention_mask_from_padding expects q_valid [batch, q_len] and kv_valid "
            f"[batch, kv_len], got shapes {q_valid.shape} and {kv_valid.shape}"
        )
    return q_valid[:, None, :, None] & kv_valid[:, None, None, :]


def causal_mask(q_len: int, kv_len: int | None = None, offset: int = 0) -> Array:
    """`[1, 1, q_len, kv_len]` bool: query i may attend key j iff `j <= i + offset`.

    `offset=0` aligns the first query with the first key (as `is_causal=True` does);
    `offset=kv_len - q_len` aligns the last query with the last key (queries that continue a
    cached prefix).
    """
    kv_len = q_len if kv_len is None else kv_len
    q_pos = jnp.arange(q_len)[:, None] + offset
    return (jnp.arange(kv_len)[None, :] <= q_pos)[None, None]


def combine_masks(*masks: Array | None) -> Array | None:
    """Logical AND of boolean masks (None entries ignored); None when all are None.

    The result has the broadcast shape of the inputs; shapes that do not broadcast raise.
    """
    masks = [jnp.asarray(m) for m in masks if m is not None]
    if not masks:
        return None
    for m in masks:
        if m.dtype != jnp.bool_:
            raise ValueError(f"combine_masks expects boolean masks, got dtype {m.dtype}")
    try:
        np.broadcast_shapes(*(m.shape for m in masks))
    except ValueError:
        shapes = ", ".join(str(m.shape) for m in masks)
        raise ValueError(f"combine_masks: mask shapes {shapes} do not broadcast") from None
    return functools.reduce(jnp.logical_and, masks)


# ----------------------------------------------------------------------------------------------
# dot_product_attention
# ----------------------------------------------------------------------------------------------


def _to_4d(name: str, x: Array | None, target: tuple[int, int, int, int]) -> Array | None:
    """Checks that `x` broadcasts to `target` = (batch, heads, q_len, kv_len); pads rank to 4."""
    if x is None:
        return None
    x = jnp.asarray(x)
    ok = x.ndim <= 4 and all(d in (1, t) for d, t in zip(x.shape[::-1], target[::-1]))
    if not ok:
        raise ValueError(
            f"{name} of shape {x.shape} does not broadcast to [batch, heads, q_len, kv_len] = "
            f"{target}"
        )
    return x.reshape((1,) * (4 - x.ndim) + x.shape)


def _check_qkv(query: Array, key: Array, value: Array) -> None:
    shapes = f"query {query.shape}, key {key.shape}, value {value.shape}"
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            "query [batch, q_len, heads, head_dim] and key/value [batch, kv_len, kv_heads, "
            f"head_dim] must have rank 4, got {shapes}"
        )
    if key.shape != value.shape:
        raise ValueError(f"key and value shapes differ: {shapes}")
    if query.shape[0] != key.shape[0]:
        raise ValueError(f"batch sizes differ: {shapes}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"head_dim of query ({query.shape[-1]}) and key/value ({key.shape[-1]}) differ: "
            f"{shapes}"
        )
    if query.shape[2] % key.shape[2]:
        raise ValueError(
            f"query heads ({query.shape[2]}) not divisible by kv_heads ({key.shape[2]}): {shapes}"
        )


# ----------------------------------------------------------------------------------------------
# The platform attention runs on, and the automatic choice
# ----------------------------------------------------------------------------------------------

_GPU_PLATFORMS = ("gpu", "cuda", "rocm")
# Devices (or, for a platform this process has no devices of, its name) kernels are chosen for;
# None: those of jax.default_backend().
_platform_devices: tuple[Any, ...] | None = None


def _platform_name(device: Any) -> str:
    name = (device if isinstance(device, str) else device.platform).lower()
    return "gpu" if name in _GPU_PLATFORMS else name


def _devices_of(platform_or_mesh: Any) -> tuple[Any, ...] | None:
    if platform_or_mesh is None:
        return None
    if isinstance(platform_or_mesh, str):
        name = _platform_name(platform_or_mesh)
        try:
            return tuple(jax.devices(name))
        except RuntimeError:  # no such backend in this process: keep the name only
            return (name,)
    if isinstance(platform_or_mesh, jax.sharding.Mesh):
        return tuple(platform_or_mesh.devices.flat)
    if hasattr(platform_or_mesh, "platform"):  # a jax.Device
        return (platform_or_mesh,)
    if (isinstance(platform_or_mesh, Sequence) and platform_or_mesh
            and all(hasattr(d, "platform") for d in platform_or_mesh)):
        return tuple(platform_or_mesh)
    raise ValueError(
        "attention_platform expects a platform name ('cpu', 'gpu', 'tpu'), a jax.sharding.Mesh, "
        f"a jax.Device, a sequence of Devices or None; got {platform_or_mesh!r}"
    )


class attention_platform:  # noqa: N801  (called like a function, as torch.set_grad_enabled)
    """Sets the platform `dot_product_attention` chooses kernels for; also a context manager.

    `attention_platform(mesh)` takes effect at once and lasts until the next call;
    `with attention_platform(mesh): ...` restores the previous setting on exit. None goes back
    to `jax.default_backend()`. The choice is made while tracing, so set it before the jitted
    functions are traced.

    Args:
      platform_or_mesh: 'cpu' | 'gpu' (or 'cuda', 'rocm') | 'tpu', a `jax.sharding.Mesh` (its
        devices), a `jax.Device`, a sequence of devices, or None.
    """

    def __init__(self, platform_or_mesh: Any):
        global _platform_devices
        devices = _devices_of(platform_or_mesh)
        if devices is not None and len({_platform_name(d) for d in devices}) > 1:
            raise ValueError(
                "attention_platform: the devices span several platforms "
                f"{sorted({_platform_name(d) for d in devices})}"
            )
        self._previous, _platform_devices = _platform_devices, devices

    def __enter__(self) -> "attention_platform":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        global _platform_devices
        _platform_devices = self._previous


def _current_devices() -> tuple[Any, ...]:
    return _platform_devices if _platform_devices is not None else tuple(jax.devices())


def current_attention_platform() -> str:
    """'cpu', 'gpu', 'tpu', ...: the platform kernels are chosen for (see `attention_platform`)."""
    return _platform_name(_current_devices()[0])


def _cudnn_refusal(query: Array, key: Array, has_mask_or_bias: bool) -> str | None:
    """Why cuDNN's fused kernel would refuse these inputs on the current platform (None: it
    takes them). Conservative: jax checks the same and raises otherwise."""
    device = _current_devices()[0]
    platform = _platform_name(device)
    if platform != "gpu":
        return f"the platform is {platform}, not an NVIDIA GPU"
    if isinstance(device, str):
        return "this process sees no GPU device"
    try:  # CUDA devices report e.g. "9.0"; ROCm devices do not, and fall back to XLA
        capability = float(device.compute_capability)
    except (AttributeError, TypeError, ValueError):
        return f"{device.device_kind} reports no CUDA compute capability"
    if capability < 8.0:
        return f"compute capability {capability} < 8.0"
    head_dim, q_len, kv_len = query.shape[-1], query.shape[1], key.shape[1]
    if query.dtype not in (jnp.bfloat16, jnp.float16):
        return f"dtype {query.dtype} (cuDNN takes bfloat16 or float16)"
    if head_dim > 128 or head_dim % 8:
        return f"head_dim {head_dim} (cuDNN needs <= 128 and a multiple of 8)"
    if has_mask_or_bias and (q_len % 2 or kv_len % 2):
        # cuDNN's backward with a bias (masks become biases) needs even lengths.
        return f"a mask or bias with an odd length (q_len {q_len}, kv_len {kv_len})"
    return None


# Lines already logged, per live jax trace (weak keys: an entry goes with its trace).
_logged: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_logged_untraced: set[str] = set()


def _log_once_per_trace(level: int, message: str) -> None:
    """Logs `message` once per jax trace, so a model's identical layers give one line."""
    try:  # the innermost trace being built (jax has no public handle on it)
        from jax._src import core as jax_core

        seen = _logged.setdefault(jax_core.trace_ctx.trace, set())
    except (ImportError, AttributeError, TypeError):
        seen = _logged_untraced
    if message not in seen:
        seen.add(message)
        logger.log(level, message)


def _log_choice(impl: str, reason: str, query: Array, key: Array, *, asked: bool = False) -> None:
    """One line on what ran and why; WARNING when a GPU loses a fused kernel to something the
    caller did not ask for (`asked`: return_weights), INFO otherwise."""
    platform = current_attention_platform()
    _log_once_per_trace(
        logging.WARNING if platform == "gpu" and not asked else logging.INFO,
        f"dot_product_attention ran {impl!r} (implementation=None on {platform}): {reason}; "
        f"query {list(query.shape)} {query.dtype}, key {list(key.shape)}",
    )


def _resolve_implementation(
    implementation: str | None,
    needs_reference: str | None,
    query: Array,
    key: Array,
    has_mask_or_bias: bool,
) -> str:
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown implementation {implementation!r}; expected one of {IMPLEMENTATIONS} or None"
        )
    if needs_reference:
        if implementation not in (None, "reference"):
            raise ValueError(
                f"{needs_reference} needs implementation='reference' (or None), got "
                f"{implementation!r}"
            )
        if implementation is None:
            _log_choice("reference", f"{needs_reference} needs the einsum path", query, key,
                        asked=needs_reference.startswith("return_weights"))
        return "reference"
    if implementation is None:
        refusal = _cudnn_refusal(query, key, has_mask_or_bias)
        if refusal is None:
            return "cudnn"
        _log_choice("xla", f"'cudnn' refused: {refusal}", query, key)
        return "xla"
    return implementation


def _reference_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None,
    bias: Array | None,
    scale: float,
    dropout_rate: float,
    dropout_rng: Array | None,
) -> tuple[Array, Array]:
    """Explicit einsum attention; returns (output `[b, q, h, d]`, weights `[b, h, q, kv]` f32)."""
    batch, q_len, heads, head_dim = query.shape
    kv_len, kv_heads = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # Query head n uses kv head n // groups, as in jax.nn.dot_product_attention.
    q = query.reshape(batch, q_len, kv_heads, groups, head_dim)
    logits = jnp.einsum(
        "btkgd,bskd->bkgts", q, key,
        preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST,
    ).reshape(batch, heads, q_len, kv_len) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, _MASKED_LOGIT)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:  # fully masked rows would otherwise be uniform
        weights = jnp.where(mask, weights, 0.0)
    probs = weights
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        probs = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum(
        "bkgts,bskd->btkgd",
        probs.reshape(batch, kv_heads, groups, q_len, kv_len), value.astype(jnp.float32),
        precision=jax.lax.Precision.HIGHEST,
    )
    return out.reshape(query.shape).astype(query.dtype), weights


def _pallas_attention(
    query: Array, key: Array, value: Array, bias: Array | None, is_causal: bool, scale: float
) -> Array:
    """Pallas flash attention: TPU kernel on TPU, Triton kernel elsewhere (interpreted on CPU)."""
    groups = query.shape[2] // key.shape[2]
    if groups > 1:  # the kernels want as many kv heads as query heads
        key, value = jnp.repeat(key, groups, axis=2), jnp.repeat(value, groups, axis=2)
    backend = current_attention_platform()
    if backend == "tpu":
        from jax.experimental.pallas.ops.tpu import flash_attention as tpu_attention

        to_bhtd = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731
        ab = None
        if bias is not None:
            batch, q_len, heads, _ = query.shape
            ab = jnp.broadcast_to(bias, (batch, heads, q_len, key.shape[1])).astype(query.dtype)
        out = tpu_attention.flash_attention(
            to_bhtd(query), to_bhtd(key), to_bhtd(value), ab, causal=is_causal, sm_scale=scale
        )
        return to_bhtd(out)

    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    if bias is not None:
        raise ValueError("implementation='pallas' does not support bias on GPU/CPU; use 'xla'")
    if is_causal and query.shape[1] != key.shape[1]:
        raise ValueError(
            "implementation='pallas' with is_causal needs q_len == kv_len, got query "
            f"{query.shape} and key {key.shape}"
        )
    block = gpu_attention.BlockSizes.get_default().block_q
    for name, length in (("q_len", query.shape[1]), ("kv_len", key.shape[1])):
        if length > block and length % block:
            raise ValueError(
                f"implementation='pallas' needs {name} <= {block} or a multiple of {block}, got "
                f"{name}={length} (query {query.shape}, key {key.shape})"
            )
    return gpu_attention.mha(
        query, key, value, None, sm_scale=scale, causal=is_causal, interpret=backend == "cpu"
    )


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    mask: Array | None = None,
    bias: Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: Array | None = None,
    implementation: str | None = None,
    return_weights: bool = False,
) -> Array | tuple[Array, Array]:
    """softmax(Q K^T * scale + bias) V (Vaswani et al. 2017, eq. 1), with grouped-query attention.

    The logits and softmax are float32 whatever the input dtype; the output has the inputs'
    (promoted) dtype. Query rows with no key to attend (all masked) return zeros, with finite
    gradients.

    Args:
      query: `[batch, q_len, heads, head_dim]`.
      key, value: `[batch, kv_len, kv_heads, head_dim]`; `kv_heads` must divide `heads`
        (grouped-query attention, Ainslie et al. 2023; kv_heads=1 is multi-query attention).
      mask: bool, True = may attend, broadcastable to `[batch, heads, q_len, kv_len]`.
      bias: additive logits bias, broadcastable to `[batch, heads, q_len, kv_len]`.
      is_causal: query i attends keys j <= i (first query aligned with first key; for another
        alignment pass `causal_mask(q_len, kv_len, offset)` as `mask`).
      scale: logit multiplier (inverse softmax temperature); default `1 / sqrt(head_dim)`.
      dropout_rate: dropout on the attention weights; "reference" path only, needs `dropout_rng`.
      dropout_rng: PRNG key for the dropout.
      implementation: "reference", "xla", "cudnn", "pallas" or None (see the module docstring).
      return_weights: also return the float32 softmax weights (before dropout)
        `[batch, heads, q_len, kv_len]` ("reference" path only).

    Returns:
      `[batch, q_len, heads, head_dim]`, or (output, weights) when `return_weights`.
    """
    query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
    _check_qkv(query, key, value)
    dtype = jnp.result_type(query, key, value)
    query, key, value = query.astype(dtype), key.astype(dtype), value.astype(dtype)
    batch, q_len, heads, head_dim = query.shape
    target = (batch, heads, q_len, key.shape[1])
    mask, bias = _to_4d("mask", mask, target), _to_4d("bias", bias, target)
    if mask is not None and mask.dtype != jnp.bool_:
        raise ValueError(
            f"mask must be boolean (True = may attend), got dtype {mask.dtype} with shape "
            f"{mask.shape}; pass additive masks as `bias`"
        )
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if dropout_rate > 0.0 and dropout_rng is None:
        raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng")
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    needs_reference = (
        "return_weights=True" if return_weights
        else f"dropout_rate={dropout_rate}" if dropout_rate > 0.0 else None
    )
    impl = _resolve_implementation(
        implementation, needs_reference, query, key, mask is not None or bias is not None
    )

    if impl == "reference":
        if is_causal:
            mask = combine_masks(mask, causal_mask(q_len, key.shape[1]))
        out, weights = _reference_attention(
            query, key, value, mask, bias, scale, dropout_rate, dropout_rng
        )
        return (out, weights) if return_weights else out

    if impl == "pallas":
        if mask is not None:
            raise ValueError(
                f"implementation='pallas' does not support mask (got shape {mask.shape}); use "
                "is_causal for causal attention, or implementation='xla'"
            )
        return _pallas_attention(query, key, value, bias, is_causal, scale)

    if impl == "cudnn":
        if current_attention_platform() != "gpu":
            raise ValueError(
                "implementation='cudnn' needs an NVIDIA GPU; the attention platform is "
                f"{current_attention_platform()} (see attention_platform)"
            )
        # cuDNN adds masks as biases and wants them [.., q_len, kv_len] in the query dtype
        full = lambda x: None if x is None else jnp.broadcast_to(  # noqa: E731
            x, x.shape[:2] + target[2:]
        )
        mask = full(mask)
        bias = None if bias is None else full(bias).astype(dtype)
    out = jax.nn.dot_product_attention(
        query, key, value, bias=bias, mask=mask, scale=scale, is_causal=is_causal,
        implementation=impl,
    )
    if mask is not None:  # jax averages all values on fully masked rows: zero them instead
        allowed = mask & causal_mask(q_len, key.shape[1]) if is_causal else mask
        row_valid = jnp.any(allowed, axis=-1)  # [b|1, h|1, q_len]
        out = jnp.where(jnp.swapaxes(row_valid, 1, 2)[..., None], out, jnp.zeros((), out.dtype))
    return out


# ----------------------------------------------------------------------------------------------
# MultiHeadAttention
# ----------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, sec. 3.2.2) with GQA, RoPE and a KV cache.

    Parameters are laid out exactly as in `flax.linen.MultiHeadDotProductAttention` (submodules
    `query`, `key`, `value`, `out`, and `query_ln`/`key_ln` with `normalize_qk`), so weights port
    both ways when `num_kv_heads == num_heads`. Logical axis names: q kernel
    ('embed', 'heads', 'kv'), k/v kernels ('embed', 'kv_heads', 'kv'), out kernel
    ('heads', 'kv', 'embed'), biases likewise, qk-norm scales ('norm',).

    Decoding (`decode=True`, self-attention only): `init` with a full-length input creates the
    'cache' collection (`cached_key`/`cached_value` `[batch, max_len, kv_heads, head_dim]`,
    `cache_index`); each later `apply(..., mutable=['cache'])` with `[batch, n, features]`
    (usually n=1) writes its keys/values at `cache_index` and attends to cached positions up to
    its own; RoPE positions default to `cache_index + arange(n)`. A `mask` passed while decoding
    must broadcast to `[batch, heads, n, max_len]`. Writing past `max_len` is not detected
    (the index is traced).

    Attributes:
      num_heads: query heads.
      num_kv_heads: key/value heads (divides num_heads; 1 = multi-query); default num_heads.
      qkv_features: total query width `heads * head_dim`; default the width of `inputs_q`.
      out_features: output width; default the width of `inputs_q`.
      dropout_rate: dropout on the attention weights (rng 'dropout'; uses the reference path).
      dtype: compute dtype; param_dtype: storage dtype.
      use_bias: biases on the four projections.
      kernel_init, bias_init: initializers of the projections (flax's defaults).
      out_kernel_init: initializer of W_O if it differs (zeros for DDPM's attention block,
        1/sqrt(2 * layers) scaling for GPT-2); default `kernel_init`.
      decode: keep a key/value cache for autoregressive decoding.
      use_rope: rotary embeddings on queries and keys (Su et al. 2021; self-attention only).
      rope_max_wavelength: RoPE base.
      implementation: passed to `dot_product_attention`.
      normalize_qk: LayerNorm (no bias) on each head's queries and keys (ViT-22B, Dehghani et
        al. 2023).
    """

    num_heads: int
    num_kv_heads: int | None = None
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    out_kernel_init: Initializer | None = None
    decode: bool = False
    use_rope: bool = False
    rope_max_wavelength: float = 10_000.0
    implementation: str | None = None
    normalize_qk: bool = False

    def _dense(self, features, axis, names: tuple[str, ...], name: str,
               kernel_init: Initializer | None = None) -> nn.DenseGeneral:
        n_in = 1 if isinstance(axis, int) else len(axis)
        return nn.DenseGeneral(
            features=features,
            axis=axis,
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(kernel_init or self.kernel_init, names),
            bias_init=nn.with_logical_partitioning(self.bias_init, names[n_in:]),
            name=name,
        )

    def _qk_norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
            name=name,
        )

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_k: Array | None = None,
        inputs_v: Array | None = None,
        *,
        inputs_kv: Array | None = None,
        mask: Array | None = None,
        bias: Array | None = None,
        is_causal: bool = False,
        deterministic: bool = True,
        return_weights: bool = False,
        positions: Array | None = None,
    ) -> Array | tuple[Array, Array]:
        """Self-attention when `inputs_k` is None, else attention over `inputs_k` / `inputs_v`.

        As `flax.linen.MultiHeadDotProductAttention`: `mha(x)` is self-attention, `mha(x, kv)`
        cross-attention with keys and values from `kv`, and `mha(x, k, v)` takes them from two
        inputs (DETR adds positions to the keys only).

        Args:
          inputs_q: `[batch, q_len, features]`.
          inputs_k: `[batch, kv_len, k_features]` or None (= inputs_q).
          inputs_v: `[batch, kv_len, v_features]` or None (= inputs_k).
          inputs_kv: keyword alias of `inputs_k` with `inputs_v` None (keys and values).
          mask, bias, is_causal: as in `dot_product_attention` (keyword only).
          deterministic: disables dropout.
          return_weights: also return the weights `[batch, heads, q_len, kv_len]`.
          positions: RoPE positions `[batch, q_len]` or `[q_len]`; default `arange(q_len)`
            (`cache_index + arange(q_len)` when decoding).

        Returns:
          `[batch, q_len, out_features]`, or (output, weights) when `return_weights`.
        """
        if inputs_kv is not None:
            if inputs_k is not None or inputs_v is not None:
                raise ValueError("pass keys and values as inputs_k / inputs_v or as inputs_kv, "
                                 "not both")
            inputs_k = inputs_kv
        if inputs_k is None and inputs_v is not None:
            raise ValueError(
                f"inputs_v of shape {jnp.shape(inputs_v)} needs inputs_k (keys) as well"
            )
        self_attention = inputs_k is None
        inputs_k = inputs_q if self_attention else inputs_k
        inputs_v = inputs_k if inputs_v is None else inputs_v
        if inputs_q.ndim != 3 or inputs_k.ndim != 3 or inputs_v.ndim != 3:
            raise ValueError(
                "MultiHeadAttention expects inputs [batch, length, features], got inputs_q "
                f"{inputs_q.shape}, inputs_k {inputs_k.shape} and inputs_v {inputs_v.shape} "
                "(mask, bias and the rest are keyword arguments)"
            )
        if inputs_k.shape[:2] != inputs_v.shape[:2] or inputs_k.shape[0] != inputs_q.shape[0]:
            raise ValueError(
                "inputs_k and inputs_v need the same [batch, kv_len], and the batch of inputs_q; "
                f"got inputs_q {inputs_q.shape}, inputs_k {inputs_k.shape}, inputs_v "
                f"{inputs_v.shape}"
            )
        if (self.decode or self.use_rope) and not self_attention:
            raise ValueError(
                "decode and use_rope apply to self-attention only; got inputs_k of shape "
                f"{inputs_k.shape} (cross-attention keys need neither a cache nor positions: "
                "compute them once from the encoder output)"
            )
        kv_heads = self.num_kv_heads or self.num_heads
        qkv_features = self.qkv_features or inputs_q.shape[-1]
        if qkv_features % self.num_heads:
            raise ValueError(
                f"qkv_features={qkv_features} is not divisible by num_heads={self.num_heads}"
            )
        if self.num_heads % kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads={kv_heads}"
            )
        head_dim = qkv_features // self.num_heads

        query = self._dense((self.num_heads, head_dim), -1, ("embed", "heads", "kv"), "query")(
            inputs_q
        )
        key = self._dense((kv_heads, head_dim), -1, ("embed", "kv_heads", "kv"), "key")(inputs_k)
        value = self._dense((kv_heads, head_dim), -1, ("embed", "kv_heads", "kv"), "value")(
            inputs_v
        )
        if self.normalize_qk:
            query, key = self._qk_norm("query_ln")(query), self._qk_norm("key_ln")(key)

        decoding = self.decode and self.has_variable("cache", "cached_key")
        if self.decode:
            cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
            cached_value = self.variable(
                "cache", "cached_value", jnp.zeros, value.shape, value.dtype
            )
            cache_index = self.variable(
                "cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32)
            )

        if self.use_rope:
            from attn_jax.positional import apply_rope

            if positions is None:
                start = cache_index.value if decoding else 0
                positions = start + jnp.arange(query.shape[1])
            query = apply_rope(query, positions, self.rope_max_wavelength)
            key = apply_rope(key, positions, self.rope_max_wavelength)

        if decoding:
            cache_shape = cached_key.value.shape
            if key.shape[0] != cache_shape[0] or key.shape[2:] != cache_shape[2:]:
                raise ValueError(
                    f"decode: new keys of shape {key.shape} do not fit the cache of shape "
                    f"{cache_shape} ([batch, max_len, kv_heads, head_dim])"
                )
            index = cache_index.value
            start = (0, index, 0, 0)
            key = jax.lax.dynamic_update_slice(cached_key.value, key, start)
            value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
            cached_key.value, cached_value.value = key, value
            cache_index.value = index + query.shape[1]
            # new token i sits at position index + i and sees cached positions up to it
            mask = combine_masks(mask, causal_mask(query.shape[1], cache_shape[1], offset=index))
            is_causal = False

        dropout_rng = None
        dropout_rate = 0.0 if deterministic else self.dropout_rate
        if dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        result = dot_product_attention(
            query, key, value,
            mask=mask, bias=bias, is_causal=is_causal,
            dropout_rate=dropout_rate, dropout_rng=dropout_rng,
            implementation=self.implementation, return_weights=return_weights,
        )
        x, weights = result if return_weights else (result, None)
        out = self._dense(
            self.out_features or inputs_q.shape[-1], (-2, -1), ("heads", "kv", "embed"), "out",
            kernel_init=self.out_kernel_init,
        )(x)
        return (out, weights) if return_weights else out
