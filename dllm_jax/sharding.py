"""Device mesh and the one table that maps logical axis names onto it.

Parameters and activations name their axes logically ('embed', 'mlp', 'activation_batch',
...). `LOGICAL_RULES` maps those names onto the mesh axes (data, fsdp, expert, tensor); changing
parallelism is a change of `config.mesh`, never of model code.

The `expert` axis (size 1 unless MoE asks for it) holds a slice of the MoE experts on each
device and, like data/fsdp, splits the batch: outside MoE layers it is data parallelism.
`MESH_AXES` lists the axes in config order (older code may zip three sizes onto its first
three names); the mesh itself is laid out data, fsdp, expert, tensor, so that tensor
parallelism keeps the closest devices.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from dllm_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor", "expert")
DEVICE_ORDER = ("data", "fsdp", "expert", "tensor")  # mesh layout: the last axis varies fastest

# logical name -> mesh axis (or axes). Unlisted names are replicated.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # parameters: FSDP shards the embed dimension, tensor parallelism the rest
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
    ("experts", "expert"),
    # activations
    ("activation_batch", ("data", "fsdp", "expert")),
    ("activation_exp", "expert"),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_vocab", "tensor"),
)


def resolve_mesh_shape(axis_sizes: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """Mesh shape from config sizes; at most one -1, filled with the remaining devices.
    An axis missing from `axis_sizes` (e.g. 'expert' in an older config) has size 1."""
    sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
    fills = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
    if len(fills) > 1:
        raise ConfigError(f"only one mesh axis may be -1, got {fills}; give explicit sizes to the others")
    fixed = math.prod(s for s in sizes if s != -1)
    if fills:
        if num_devices % fixed:
            raise ConfigError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes use {fixed} devices, which does not divide "
                f"the {num_devices} available; choose sizes whose product divides {num_devices}"
            )
        sizes[sizes.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices but {num_devices} are available; "
            f"set one axis to -1 (e.g. --config.mesh.data=-1) or sizes whose product is {num_devices}"
        )
    return tuple(sizes)


def make_mesh(axis_sizes: dict[str, int], devices=None) -> jax.sharding.Mesh:
    devices = list(devices if devices is not None else jax.devices())
    sizes = dict(zip(MESH_AXES, resolve_mesh_shape(axis_sizes, len(devices))))
    shape = tuple(sizes[a] for a in DEVICE_ORDER)
    return jax.make_mesh(shape, DEVICE_ORDER, axis_types=(AxisType.Auto,) * len(DEVICE_ORDER), devices=devices)


def logical_sharding(mesh, logical_axes) -> NamedSharding:
    return nn.logical_to_mesh_sharding(P(*logical_axes), mesh, LOGICAL_RULES)


def batch_shards(mesh) -> int:
    """How many ways the batch is split: the product of the mesh axes of 'activation_batch'."""
    axes = dict(LOGICAL_RULES)["activation_batch"]
    return math.prod(mesh.shape[a] for a in axes)


def batch_sharding(mesh) -> NamedSharding:
    """Sharding of a [batch, length] token array."""
    return logical_sharding(mesh, ("activation_batch", "activation_length"))


def tree_shardings(mesh, abstract_boxed_tree):
    """NamedShardings for a tree whose leaves may be `nn.Partitioned` boxes (others replicated)."""
    specs = nn.get_partition_spec(abstract_boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def global_batch(mesh, local: np.ndarray, global_rows: int | None = None) -> jax.Array:
    """Assemble this process's rows into one global array sharded over the batch axes.
    `local` must be the rows this process's devices hold (see `distributed.data_shard`);
    pass `global_rows` when processes share rows (it cannot be inferred then)."""
    shape = None if global_rows is None else (global_rows,) + tuple(local.shape[1:])
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local, shape)


def global_batch_from_full(mesh, full: np.ndarray) -> jax.Array:
    """A global array from a batch every process holds in full (e.g. validation batches):
    each process transfers only the rows its own devices hold."""
    return jax.make_array_from_callback(full.shape, batch_sharding(mesh), lambda index: full[index])
