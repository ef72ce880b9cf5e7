"""Training memory per device, from shapes only (nothing is allocated), and the check that
refuses a model that cannot fit before `train` initialises it.

An absurd size (`--config.model.d_model=1e6`, within the key's range) would otherwise be allocated: XLA fails deep
inside the first jitted call, or the host swaps and the kernel kills the process.

`estimate(model, tx, mesh, seq_len, micro_batch)` gives bytes per device:
- `params`, `opt_state`: exact, from the abstract train state (`train_step.abstract_state`,
  jax.eval_shape) and its sharding over `mesh` (a `jax.sharding.Mesh`, or an `AbstractMesh`
  to size hardware that is not attached);
- `grads`: one more params-sized tree (the step holds the gradients while it updates);
- `activations`: one [rows, seq_len, d_model] array in the compute dtype per layer, rows =
  this device's share of the micro-batch: the layer inputs that the backward pass keeps
  under any `model.remat` policy.
Their sum is a LOWER bound of what a train step needs (XLA's temporaries, attention scores,
the loss chunks and the batch come on top), so `check_fits` refuses only a config that
cannot run whatever XLA does: that is the margin, and no real config is refused. The
compiled number for a TPU slice is what `dllm-jax compile` reports.

Memory available (`device_memory`): on CPU the host's physical memory (psutil if installed,
else os.sysconf), which all CPU devices of the process share, so the check compares the
sum over the local CPU devices with it; on an accelerator each device's
`memory_stats()['bytes_limit']`; when a device does not report it, there is no check.
"""

from __future__ import annotations

import math
import os

import numpy as np

from dllm_jax.errors import ConfigError

GIB = 1024**3


def _leaf_bytes(leaf) -> int:
    """Bytes of one ShapeDtypeStruct on one device of its NamedSharding (ceil division:
    an uneven split pads)."""
    shape = list(leaf.shape)
    sharding = getattr(leaf, "sharding", None)
    spec = getattr(sharding, "spec", None)
    if spec is not None:
        sizes = dict(sharding.mesh.shape)
        for dim, axes in enumerate(tuple(spec)[: len(shape)]):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            shape[dim] = -(-shape[dim] // math.prod(sizes[a] for a in axes))
    return math.prod(shape) * np.dtype(leaf.dtype).itemsize


def tree_bytes(tree) -> int:
    """Bytes per device of a tree of sharded ShapeDtypeStructs."""
    import jax

    return sum(_leaf_bytes(leaf) for leaf in jax.tree.leaves(tree))


def estimate(model, tx, mesh, seq_len: int, micro_batch: int, abstract_state=None) -> dict:
    """{'params', 'opt_state', 'grads', 'activations', 'total'} in bytes per device, and
    'num_params' (see the module doc; a lower bound of the train step's memory).
    `micro_batch`: rows per gradient-accumulation step over all devices
    (train.batch_size // train.grad_accum)."""
    from dllm_jax import sharding, train_step

    if abstract_state is None:
        abstract_state = train_step.abstract_state(model, tx, mesh, seq_len)
    import jax

    cfg = model.cfg
    params = tree_bytes(abstract_state.params)
    rows = -(-int(micro_batch) // sharding.batch_shards(mesh))
    out = {
        "params": params,
        "opt_state": tree_bytes(abstract_state.opt_state),
        "grads": params,
        "activations": cfg.n_layers * rows * int(seq_len) * cfg.d_model * np.dtype(cfg.compute_dtype).itemsize,
        "num_params": sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_state.params)),
    }
    out["total"] = out["params"] + out["opt_state"] + out["grads"] + out["activations"]
    return out


def host_memory() -> int | None:
    """Physical memory of this host in bytes (psutil, else os.sysconf; None if unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - not installed, or no /proc: fall back
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def device_memory(device) -> int | None:
    """Bytes one accelerator device may use (`memory_stats()['bytes_limit']`), the host's
    memory for a CPU device; None when unknown."""
    if device.platform == "cpu":
        return host_memory()
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - not every backend reports memory
        return None
    limit = stats.get("bytes_limit")
    return int(limit) if limit else None


def _gib(n: float) -> str:
    return f"{n / GIB:.3g} GiB"


def check_fits(est: dict, devices, model_cfg=None) -> None:
    """ConfigError when even the lower bound `est` (from `estimate`) exceeds the memory of
    `devices` (this process's devices of the mesh): per device on accelerators, summed over
    the CPU devices that share the host's memory."""
    devices = list(devices)
    if not devices:
        return
    cpu = [d for d in devices if d.platform == "cpu"]
    parts = ", ".join(f"{k.replace('_', ' ')} {_gib(est[k])}" for k in ("params", "opt_state", "grads", "activations"))
    if cpu:
        have = host_memory()
        need = est["total"] * len(cpu)
        where = f"this host's {_gib(have or 0)} of memory"
        each = _gib(need)
        if len(cpu) > 1:
            where += f" (shared by its {len(cpu)} CPU devices)"
            each = f"{_gib(est['total'])} per device x {len(cpu)} devices = {_gib(need)}"
    else:
        limits = [m for m in (device_memory(d) for d in devices) if m]
        have = min(limits) if limits else None
        need = est["total"]
        where = f"the {_gib(have or 0)} of one {devices[0].device_kind} device"
        each = f"{_gib(need)} per device"
    if not have or need <= have:
        return
    shape = ""
    if model_cfg is not None:
        shape = f" (model.d_model={model_cfg.d_model}, model.n_layers={model_cfg.n_layers}, {est['num_params']:.3g} parameters)"
    raise ConfigError(
        f"the model does not fit: training it{shape} needs at least {each} ({parts}; a lower bound: XLA needs more), "
        f"more than {where}. Choose a smaller model (model.d_model, model.n_layers, model.d_ff), a smaller "
        "micro-batch (train.batch_size, or a larger train.grad_accum), or more devices to shard over (mesh.fsdp); "
        "`dllm-jax compile` reports the exact need on a TPU slice"
    )


__all__ = ["estimate", "check_fits", "tree_bytes", "host_memory", "device_memory"]
