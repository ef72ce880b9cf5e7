"""Several processes, one run: start-up of the JAX distributed system and each process's data share.

`initialize(coordinator, num_processes, process_id)` must run before anything touches
devices. It picks, in this order:

1. explicit arguments (`dllm-jax train --coordinator HOST:PORT --num-processes N --process-id I`);
2. the environment: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID;
3. a Cloud TPU VM (TPU chips visible): `jax.distributed.initialize()` detects the slice;
4. otherwise one process, nothing to do.

A partial setting (e.g. a coordinator without a process id) is a ConfigError naming what is
missing. Calling it again, or after JAX already started, is a no-op (with a warning when it
was asked to connect and could not any more).

`data_shard(mesh, global_batch)` says which contiguous block of every global batch this
process's devices hold, so the loader reads only those rows (`train_loader(process_index=,
process_count=)`) and `sharding.global_batch` places them where the mesh wants them.
"""

from __future__ import annotations

import glob
import logging
import os

import jax

from dllm_jax.errors import ConfigError

log = logging.getLogger("dllm_jax")

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def on_tpu_vm() -> bool:
    """True when TPU chips are attached to this host."""
    try:
        from jax._src import hardware_utils

        return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:  # private module moved: fall back to the device files
        return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return xla_bridge.backends_are_initialized()
    except Exception:
        return False


def _int(name: str, value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def settings(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> dict | None:
    """The explicit multi-process settings from arguments, else the environment; None if
    none are given. Raises ConfigError for an incomplete or inconsistent set."""
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    source = "--coordinator/--num-processes/--process-id"
    if all(v is None for v in given.values()):
        given = {"coordinator": os.environ.get(ENV_COORDINATOR), "num_processes": os.environ.get(ENV_NUM_PROCESSES),
                 "process_id": os.environ.get(ENV_PROCESS_ID)}
        source = f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}"
        if all(v is None for v in given.values()):
            return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ConfigError(f"multi-process run: {source} must all be given; missing {', '.join(missing)}")
    n, i = _int("num_processes", given["num_processes"]), _int("process_id", given["process_id"])
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"process_id={i} must be in [0, num_processes={n}); number the processes 0..{n - 1}")
    if ":" not in str(given["coordinator"]):
        raise ConfigError(f"coordinator={given['coordinator']!r} must be HOST:PORT of process 0, e.g. 10.0.0.1:1234")
    return {"coordinator_address": str(given["coordinator"]), "num_processes": n, "process_id": i}


def prefer_cpu_without_accelerator() -> None:
    """With libtpu installed (for `dllm-jax compile`) but no TPU and no GPU plugin, JAX would
    load libtpu on its first device use, and libtpu prints TPU initialisation errors ("could
    not determine TPU accelerator type", "unexpected worker hostname") to stderr: use the CPU
    unless the user chose (JAX_PLATFORMS set) or JAX already started. The `dllm-jax` program
    calls this before any verb runs, and `initialize` (hence `train`) calls it too; the TPU
    topologies of `dllm-jax compile` come from libtpu directly and do not need the backend."""
    if os.environ.get("JAX_PLATFORMS") or on_tpu_vm() or _backend_started():
        return
    import importlib.util

    if any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")):
        return
    jax.config.update("jax_platforms", "cpu")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               timeout_s: int = 300) -> None:
    """Start the JAX distributed system if this run has several processes (see module doc)."""
    if jax.distributed.is_initialized():
        return
    explicit = settings(coordinator, num_processes, process_id)
    if explicit is None and not on_tpu_vm():
        prefer_cpu_without_accelerator()
        return
    if _backend_started():
        log.warning("JAX already started in this process; call distributed.initialize() before using devices "
                    "(running as process %d of %d)", jax.process_index(), jax.process_count())
        return
    if explicit is None:
        jax.distributed.initialize()  # Cloud TPU: the slice describes itself
    else:
        if explicit["num_processes"] == 1:
            return
        jax.distributed.initialize(**explicit, initialization_timeout=timeout_s)
    no_persistent_cache_on_cpu_processes()
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def no_persistent_cache_on_cpu_processes() -> bool:
    """Turn JAX's persistent compilation cache off in a multi-process run on CPU devices.

    Observed with jax/jaxlib 0.12.1 (tests/test_multihost.py): when the processes of a
    multi-process CPU run (collectives over Gloo) load their train step from a persistent
    cache (JAX_COMPILATION_CACHE_DIR / jax_compilation_cache_dir) that an earlier
    multi-process run wrote, both deadlock in the step's first collective: no error, no
    progress, idle CPUs. JAX writes the cache from process 0 only and every process reads
    that entry, so a process other than 0 runs process 0's CPU executable. The same run
    without the cache completes. TPU and GPU executables are meant to be shared this way
    (JAX's multi-host cache documentation) and are left alone. Must run before the first
    compilation (JAX decides once per process whether the cache is used). Returns True when
    it turned the cache off."""
    if jax.process_count() < 2 or not jax.config.jax_enable_compilation_cache or not jax.config.jax_compilation_cache_dir:
        return False
    if jax.default_backend() != "cpu":
        return False
    jax.config.update("jax_enable_compilation_cache", False)
    log.warning("persistent compilation cache %s turned off: processes of a multi-process CPU run deadlock on executables "
                "loaded from it (each process compiles its own)", jax.config.jax_compilation_cache_dir)
    return True


def data_shard(mesh, global_batch: int) -> tuple[int, int]:
    """(index, count): this process holds rows [index*b, (index+1)*b) of every global batch,
    b = global_batch // count. count < process_count when processes hold the same rows
    (batch not split across them)."""
    from dllm_jax import sharding

    index_map = sharding.batch_sharding(mesh).addressable_devices_indices_map((global_batch, 1))
    spans = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop) for s in index_map.values()})
    start, stop = spans[0][0], spans[-1][1]
    covered = start
    for a, b in spans:
        if a > covered:
            break
        covered = max(covered, b)
    rows = stop - start
    if covered != stop or global_batch % rows or start % rows:
        raise ConfigError(
            f"this process's devices hold batch rows {spans} of {global_batch}: not one aligned block. "
            "Order the mesh so each process's devices are contiguous along the batch axes (data, fsdp, expert)"
            " (several slices: mesh.dcn_fsdp > 1 with mesh.data > 1 interleaves the slices' rows; put the slices on"
            " mesh.dcn_data instead)."
        )
    return start // rows, global_batch // rows


__all__ = ["initialize", "settings", "data_shard", "on_tpu_vm", "prefer_cpu_without_accelerator"]
