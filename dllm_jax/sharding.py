"""Device mesh and the one table that maps logical axis names onto it.

Parameters and activations name their axes logically ('embed', 'mlp', 'activation_batch',
...). `LOGICAL_RULES` maps those names onto the mesh axes (data, fsdp, expert, tensor); changing
parallelism is a change of `config.mesh`, never of model code.

The `expert` axis (size 1 unless MoE asks for it) holds a slice of the MoE experts on each
device and, like data/fsdp, splits the batch: outside MoE layers it is data parallelism.
`MESH_AXES` lists the axes in config order (older code may zip three sizes onto its first
three names); the mesh itself is laid out data, fsdp, expert, tensor, so that tensor
parallelism keeps the closest devices.

Several slices (TPU pods joined over the data-center network, DCN): `mesh.data`, `mesh.fsdp`,
`mesh.expert` and `mesh.tensor` are sizes WITHIN one slice (over ICI; -1 fills the slice), and
`mesh.dcn_data` / `mesh.dcn_fsdp` say how many slices the data / fsdp axis spans (their product is
the number of slices; the default dcn_data=-1 puts every slice on the data axis, so only gradient
all-reduces cross DCN). A mesh axis is then dcn x ici long, slice-major: slice s holds the data
indices [s * data, (s + 1) * data), hence a contiguous block of every global batch. Tensor and
expert axes never span slices (there are no DCN keys for them). The slices are read from the
TPU devices' `slice_index` (`jax.experimental.mesh_utils.create_hybrid_device_mesh` lays the
mesh out); other devices (CPU, GPU) are one slice, unless `mesh.num_slices=N` groups them
into N contiguous blocks of `jax.devices()` (simulated slices: how the tests run a 2-slice mesh on
8 CPU devices). One slice (the default everywhere but a multi-slice TPU job) is the plain
`jax.make_mesh` of before.
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
DCN_AXES = ("data", "fsdp")  # the mesh axes that may span slices (config keys mesh.dcn_data, mesh.dcn_fsdp)

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


def resolve_mesh_shape(axis_sizes: dict[str, int], num_devices: int, num_slices: int = 1) -> tuple[int, ...]:
    """Mesh shape (in MESH_AXES order) of ONE slice from config sizes; at most one -1, filled
    with the remaining devices. An axis missing from `axis_sizes` (e.g. 'expert' in an older
    config) has size 1. `num_devices` is the devices of one slice; `num_slices` only words the
    error. ConfigError naming the keys when the sizes do not multiply out."""
    sizes = [int(axis_sizes.get(a, 1)) for a in MESH_AXES]
    fills = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
    if len(fills) > 1:
        raise ConfigError(f"only one mesh axis may be -1, got {fills}; give explicit sizes to the others")
    fixed = math.prod(s for s in sizes if s != -1)
    where = (f"the {num_devices} available" if num_slices == 1 else
             f"the {num_devices} of each of the {num_slices} slices (mesh.data/fsdp/expert/tensor are sizes within one slice, "
             "over ICI; tensor and expert never span slices: spread data or FSDP over slices with mesh.dcn_data / mesh.dcn_fsdp)")
    if fills:
        if num_devices % fixed:
            raise ConfigError(
                f"mesh {dict(zip(MESH_AXES, sizes))}: the fixed axes use {fixed} devices, which does not divide "
                f"{where}; choose sizes whose product divides {num_devices}"
            )
        sizes[sizes.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
        avail = f"{num_devices} are available" if num_slices == 1 else f"each of the {num_slices} slices has {num_devices}"
        raise ConfigError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices but {avail}; "
            f"set one axis to -1 (e.g. --config.mesh.data=-1) or sizes whose product is {num_devices}"
            + ("" if num_slices == 1 else f" ({where})")
        )
    return tuple(sizes)


def _tpu_slices(devices) -> bool:
    """Whether the slices come from the devices: TPU devices carry their slice_index (other
    platforms' devices are grouped only by mesh.num_slices)."""
    return all(getattr(d, "platform", "tpu") == "tpu" and hasattr(d, "slice_index") for d in devices)


def device_slices(devices, num_slices: int = 0) -> list[list]:
    """The devices grouped into slices, in slice order.

    TPU devices are grouped by their `slice_index`; `num_slices` > 0 must then match.
    Devices without one (CPU, GPU) are one slice, or with `num_slices=N` (config key
    mesh.num_slices) N contiguous blocks of `devices` (simulated slices, for tests and
    experiments). ConfigError when the count does not fit the devices."""
    devices = list(devices)
    num_slices = int(num_slices or 0)
    if num_slices < 0:
        raise ConfigError(f"mesh.num_slices={num_slices} must be 0 (read the slices from the devices) or a positive count")
    if _tpu_slices(devices):
        groups: dict[int, list] = {}
        for d in devices:
            groups.setdefault(int(d.slice_index), []).append(d)
        slices = [groups[k] for k in sorted(groups)]
        if num_slices and num_slices != len(slices):
            raise ConfigError(f"mesh.num_slices={num_slices} but the {len(devices)} devices form {len(slices)} slice(s) "
                              f"(their slice_index); set mesh.num_slices=0 (read from the devices) or {len(slices)}")
    elif num_slices <= 1:
        slices = [devices]
    else:
        if len(devices) % num_slices:
            raise ConfigError(f"mesh.num_slices={num_slices} does not divide the {len(devices)} devices into equal slices; "
                              f"pick a divisor of {len(devices)} (or 0 for one slice)")
        n = len(devices) // num_slices
        slices = [devices[i * n:(i + 1) * n] for i in range(num_slices)]
    if len({len(s) for s in slices}) > 1:
        raise ConfigError(f"the slices have different device counts {[len(s) for s in slices]}; a multi-slice mesh "
                          "needs equal slices")
    return slices


def resolve_dcn_shape(axis_sizes: dict[str, int], num_slices: int) -> dict[str, int]:
    """How many slices each DCN axis spans ({'data': .., 'fsdp': ..}) from mesh.dcn_data /
    mesh.dcn_fsdp (default -1 / 1: every slice on the data axis); their product must be
    `num_slices`. ConfigError naming the keys otherwise."""
    sizes = {a: int(axis_sizes.get(f"dcn_{a}", -1 if a == "data" else 1)) for a in DCN_AXES}
    keys = " * ".join(f"mesh.dcn_{a}" for a in DCN_AXES)
    bad = [f"mesh.dcn_{a}={v}" for a, v in sizes.items() if v == 0 or v < -1]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: a DCN axis size is a positive number of slices or -1 (fill with the slices)")
    fills = [a for a, v in sizes.items() if v == -1]
    if len(fills) > 1:
        raise ConfigError("mesh.dcn_data and mesh.dcn_fsdp are both -1; give one of them an explicit number of slices")
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if fills and num_slices % fixed == 0:
        sizes[fills[0]] = num_slices // fixed
    elif fills or fixed != num_slices:
        given = ", ".join(f"mesh.dcn_{a}={v}" for a, v in sizes.items())
        raise ConfigError(f"{given}: {keys} must equal the number of slices, {num_slices} "
                          f"(the devices' slice_index, or mesh.num_slices on CPU/GPU); e.g. --config.mesh.dcn_data=-1")
    return sizes


def make_mesh(axis_sizes: dict[str, int], devices=None) -> jax.sharding.Mesh:
    """The device mesh (axes DEVICE_ORDER) for config sizes `axis_sizes` (config.mesh) over
    `devices` (default: all). One slice: `jax.make_mesh`. Several: the slice-major hybrid
    mesh of the module doc (`create_hybrid_device_mesh` for devices with a slice_index,
    the same block layout for simulated slices). ConfigError for sizes that do not fit."""
    devices = list(devices if devices is not None else jax.devices())
    slices = device_slices(devices, axis_sizes.get("num_slices", 0))
    dcn = resolve_dcn_shape(axis_sizes, len(slices))
    ici = dict(zip(MESH_AXES, resolve_mesh_shape(axis_sizes, len(slices[0]), len(slices))))
    axis_types = (AxisType.Auto,) * len(DEVICE_ORDER)
    if len(slices) == 1:
        return jax.make_mesh(tuple(ici[a] for a in DEVICE_ORDER), DEVICE_ORDER, axis_types=axis_types, devices=devices)
    from jax.experimental import mesh_utils

    ici_shape = tuple(ici[a] for a in DEVICE_ORDER)
    dcn_shape = tuple(dcn.get(a, 1) for a in DEVICE_ORDER)
    split = devices[0].device_kind in ("TPU v5 lite", "TPU v5e")  # as jax.make_mesh decides it
    if _tpu_slices(devices):
        try:
            grid = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, allow_split_physical_axes=split)
        except (ValueError, NotImplementedError) as e:  # a per-slice shape the slice's physical topology cannot hold
            raise ConfigError(f"mesh {ici} per slice (over ICI) cannot be laid out on a slice of {len(slices[0])} "
                              f"{devices[0].device_kind} chips: {e}. Choose other mesh.data/fsdp/expert/tensor sizes "
                              "(e.g. --config.mesh.data=1 --config.mesh.fsdp=-1)") from None
    else:  # simulated slices: each block laid out as one slice, blocks slice-major
        per_slice = [mesh_utils.create_device_mesh(ici_shape, s, allow_split_physical_axes=split) for s in slices]
        blocks = np.empty(dcn_shape, dtype=object)
        for i, idx in enumerate(np.ndindex(*dcn_shape)):
            blocks[idx] = per_slice[i]
        grid = np.block(blocks.tolist())
    return jax.sharding.Mesh(grid, DEVICE_ORDER, axis_types=axis_types)


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
