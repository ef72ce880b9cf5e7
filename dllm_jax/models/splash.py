"""Splash attention (Pallas, TPU) for the model's [batch, length, heads, head_dim] layout.

`splash_attention(q, k, v, causal=..., segment_ids=..., mask=...)` is a drop-in for
`jax.nn.dot_product_attention` (same inputs, same output, softmax scale 1/sqrt(head_dim))
computed by the block-sparse flash-attention kernel of
`jax.experimental.pallas.ops.tpu.splash_attention` (Pallas; the kernel MaxText uses). It
never materialises the [batch, heads, Lq, Lk] scores, and it skips key blocks the mask
rules out entirely (about half of them for a causal mask).

Masks (all static except the segment ids):
- `causal=True`: key index <= query index (AR); `causal=False`: full (MDM);
- `segment_ids` [B, L] int: tokens attend only within their segment (document attention;
  `data.document_attention`), combined with the above;
- `mask`: any static numpy boolean [Lq, Lk] (True = attend; or a `StaticMask` holding one),
  e.g. the block-diffusion objective's 2L x 2L pattern (`block_diffusion.BlockPattern`, which
  the Transformer evaluates with numpy and passes here); combined with `causal` if that is also set, and with the
  segment ids. Every query row must attend to something (the kernel's softmax is undefined on
  an empty row). The kernel gets it as a `NumpyMask`: at trace time it is cut into tiles, all-False
  tiles are skipped, all-True tiles computed unmasked, and only the partial tiles are stored
  (int8 [n_partial, block_q, block_kv]) and loaded by the kernel.

Grouped-query attention: k/v may have fewer heads than q (the kernel maps query head h to
key head h // (q_heads / kv_heads), as `jax.nn.dot_product_attention` does).

Backend: on TPU the compiled Mosaic kernel; on any other platform Pallas interpret mode
(the same kernel run as plain XLA ops: slow, for tests). The platform is that of the current
mesh's devices (`target_platform`), so `dllm-jax compile` on a CPU host for a TPU topology
gets the real kernel.

Sharding: under a mesh (`jax.set_mesh`) the kernel runs per shard in `jax.shard_map`, the
batch split over the axes of 'activation_batch' (data, fsdp, expert) and the heads over
those of 'activation_heads' (tensor) under the current logical rules
(`dllm_jax.sharding.LOGICAL_RULES`); every shard holds whole sequences, so no communication.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
from jax.sharding import PartitionSpec as P

from dllm_jax.errors import ConfigError

LANES = 128  # the kernel's key blocks must be multiples of the TPU lane count
BLOCK_CHOICES = (512, 256, 128)  # largest first; 512 is MaxText's default


def block_size(length: int) -> int:
    """The largest of 512/256/128 that divides `length`; ConfigError if none does."""
    for b in BLOCK_CHOICES:
        if length % b == 0:
            return b
    raise ConfigError(
        f"model.attention_impl='splash' tiles the sequence in blocks of {LANES}, but the attention length is {length}; "
        f"set data.seq_len to a multiple of {LANES} (e.g. {LANES * -(-length // LANES)}) or model.attention_impl='xla'"
    )


def block_sizes(q_len: int, kv_len: int) -> splash_kernel.BlockSizes:
    """Forward and backward (separate dq and dkv kernels) tiles of the largest size that divides the lengths."""
    bq, bkv = block_size(q_len), block_size(kv_len)
    return splash_kernel.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                                    block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)


def target_platform() -> str:
    """'tpu' / 'gpu' / 'cpu' / ...: the platform of the current mesh's devices (also inside jit,
    and for an AOT compile for TPU devices from a CPU host), else `jax.default_backend()`."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


class StaticMask:
    """A hashable wrapper of a static numpy [Lq, Lk] bool mask (a cache key; a Flax module attribute)."""

    def __init__(self, mask: np.ndarray):
        self.array = np.asarray(mask, dtype=np.bool_)
        self._key = (self.array.shape, hash(np.packbits(self.array).tobytes()))

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, StaticMask) and self._key == other._key and np.array_equal(self.array, other.array)


@functools.lru_cache(maxsize=64)
def _multi_head_mask(heads: int, q_len: int, kv_len: int, causal: bool, static: StaticMask | None):
    """The kernel's mask for `heads` query heads. The same object for the same arguments, so
    that the kernel's own cache of processed masks (numpy work at trace time) hits."""
    shape = (q_len, kv_len)
    if static is not None:  # already combined with `causal` (splash_attention)
        head_mask = splash_mask.NumpyMask(static.array)
    elif causal:
        head_mask = splash_mask.CausalMask(shape)
    else:
        head_mask = splash_mask.FullMask(shape)
    return splash_mask.MultiHeadMask([head_mask] * heads)


def _local_attention(q, k, v, segment_ids, *, causal: bool, static, interpret: bool):
    """One shard: q [b, Lq, h, D], k/v [b, Lk, kh, D], segment_ids [b, L] or None -> [b, Lq, h, D]."""
    mask = _multi_head_mask(q.shape[2], q.shape[1], k.shape[1], causal, static)
    kernel = splash_kernel.make_splash_mha(mask, block_sizes=block_sizes(q.shape[1], k.shape[1]), head_shards=1,
                                           q_seq_shards=1, interpret=interpret)
    qt, kt, vt = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))  # [b, heads, L, D]
    if segment_ids is None:
        out = jax.vmap(kernel)(qt, kt, vt)
    else:
        seg = segment_ids.astype(jnp.int32)
        out = jax.vmap(lambda a, b, c, s: kernel(a, b, c, segment_ids=splash_kernel.SegmentIds(q=s, kv=s)))(qt, kt, vt, seg)
    return jnp.swapaxes(out, 1, 2)


def _mesh_axes(logical: str, mesh, size: int) -> tuple[str, ...]:
    """The leading mesh axes of `logical` (current rules) whose product divides `size`."""
    spec = nn.logical_to_mesh_axes((logical,))
    entry = spec[0] if spec else None
    axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
    kept, prod = [], 1
    for a in axes:
        if a not in mesh.axis_names or mesh.shape[a] == 1:
            continue
        if size % (prod * mesh.shape[a]):
            break
        kept.append(a)
        prod *= mesh.shape[a]
    return tuple(kept)


def _entry(axes):
    return None if not axes else (axes[0] if len(axes) == 1 else axes)


def splash_attention(q, k, v, *, causal: bool, segment_ids=None, mask: np.ndarray | StaticMask | None = None):
    """Attention with softmax scale 1/sqrt(D).

    q [B, Lq, H, D], k/v [B, Lk, K, D] (K divides H), segment_ids [B, L] int or None (needs
    Lq == Lk), mask a static numpy bool [Lq, Lk] (or a StaticMask) or None. Returns [B, Lq, H, D] in q.dtype.
    Lq and Lk must be multiples of 128 (ConfigError otherwise)."""
    b, q_len, heads, d = q.shape
    kv_len, kv_heads = k.shape[1], k.shape[2]
    block_size(q_len), block_size(kv_len)  # a clear error before the kernel's own
    static = None
    if mask is not None:
        static = mask if isinstance(mask, StaticMask) else StaticMask(mask)
        if static.array.shape != (q_len, kv_len):
            raise ValueError(f"splash mask has shape {static.array.shape}, expected [Lq, Lk] = {(q_len, kv_len)}")
        if causal:
            static = StaticMask(static.array & np.tril(np.ones(static.array.shape, np.bool_)))
        empty = np.flatnonzero(~static.array.any(axis=1))
        if empty.size:
            raise ValueError(f"splash mask: query rows {empty[:8].tolist()} attend to no key (softmax undefined); "
                             "every row needs at least one True")
    q = (q * (1.0 / d**0.5)).astype(q.dtype)  # the kernel does not scale the logits
    interpret = target_platform() != "tpu"
    fn = functools.partial(_local_attention, causal=causal, static=static, interpret=interpret)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return fn(q, k, v, segment_ids)
    batch = _entry(_mesh_axes("activation_batch", mesh, b))
    head_axes = _mesh_axes("activation_heads", mesh, heads)
    if head_axes and _mesh_axes("activation_kv_heads", mesh, kv_heads) != head_axes:
        # the kv heads do not split like the q heads: give every query head its own copy
        k, v = (jnp.repeat(x, heads // kv_heads, axis=2) for x in (k, v))
    heads_entry = _entry(head_axes)
    qkv_spec = P(batch, None, heads_entry, None)
    seg_spec = None if segment_ids is None else P(batch, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, seg_spec), out_specs=qkv_spec,
                         check_vma=False)(q, k, v, segment_ids)


__all__ = ["splash_attention", "StaticMask", "block_size", "block_sizes", "target_platform"]
