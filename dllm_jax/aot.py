"""`dllm-jax compile`: compile the real train step for a TPU slice on this host, before paying for it.

    dllm-jax compile --config experiments/paper_1b.py --topology v5p:2x2x4 [--config.KEY=VALUE ...]

libtpu describes any TPU topology it knows ('v5p:4x4x4', 'v5e:2x2', 'v4:2x2x1', 'v6e:4x4',
...) without a TPU present; the train step (`train_step.make_train_step`: the same function
`dllm-jax train` runs) is lowered with the config's mesh over those devices and compiled by
XLA:TPU. The report gives, per device (a chip, or a core where libtpu exposes cores):

- memory: parameters, optimiser state (both from the shardings), the batch, XLA's
  temporaries (activations kept for the backward pass, gradients, the logits: whatever
  the program needs beyond its inputs and outputs), and the total
  argument + output - aliased (the donated state) + temporaries + code, against the chip's HBM;
- compute: model FLOPs (6N + attention, `Objective.train_flops_per_token`: `dllm_jax.flops`;
  active parameters for an MoE; twice for AR with MIR, whose step runs a masked copy of every row),
  XLA's own FLOP count (its cost analysis; on TPU it can come out below the model count,
  so it misses some work: treat it, the step time and the MFU as rough), XLA's estimated step time
  (`optimal_seconds` of its cost model) and hence an estimated MFU and tokens/s. XLA's cost
  analysis sees a Pallas kernel as an opaque custom call with no FLOPs, so with splash attention
  ('auto' on TPU) it counts no attention at all: the report then adds the attention term of the
  model count (`Objective.train_attention_flops_per_token`, forward + backward) to XLA's FLOPs and
  that work at the chip's peak to its step time (`kernel_attention_flops`, and the text says so).

Several slices (`--num-slices N`, docs/pods.md): libtpu describes N copies of the topology
joined over the data-center network (DCN), each device with its `slice_index`; the mesh is the
hybrid mesh of `sharding.make_mesh` (mesh.* sizes per slice, mesh.dcn_data / mesh.dcn_fsdp
across slices). XLA:TPU lowers every collective that crosses slices to "megascale" host
transfers (send/recv with `_xla_megascale_transfer_type` ALL_REDUCE, ALL_GATHER, ...), which
`dcn_collectives` counts in the compiled HLO: per step (a transfer inside the scanned-layer loop
counts once per layer) and in bytes per chip (the payload each chip sends). With the default
mesh.dcn_data only gradient all-reduces cross DCN; a mesh.dcn_fsdp > 1 is compiled and reported
(its parameter all-gathers then cross DCN every step, and the report says so), not refused.
Measured with libtpu 0.0.52: v5p multi-slice steps compile with any mesh; on v5e and v6e,
XLA:TPU refuses a multi-slice step whose scanned parameters are replicated within a slice
(mesh.fsdp=1: "UNIMPLEMENTED: AllReduceScatterFusion not implemented for 2nd-minor
compaction"), which is a CompileError advising FSDP inside the slices (mesh.fsdp=-1, what the
paper configs use) or model.scan_layers=False.

Decisions where the task was silent: the model is sized from `data.vocab_size` (no
tokenizer is loaded); HBM and peak bf16 FLOP/s per chip come from the table below
(published figures; override with --hbm-gib / --peak-tflops); a config that compiles but
exceeds HBM by this estimate exits 1, an impossible sharding or a compile that XLA rejects
for memory is a clean error (exit 2). `--json FILE` writes the report as JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
import time

from dllm_jax import config as config_lib
from dllm_jax.errors import DllmError
from dllm_jax.flops import TPU_PEAK_FLOPS

GIB = 1024**3
# device_kind -> (HBM bytes per chip, peak dense bf16 FLOP/s per chip: dllm_jax.flops.TPU_PEAK_FLOPS)
CHIPS = {kind: (hbm * GIB, TPU_PEAK_FLOPS[kind]) for kind, hbm in (
    ("TPU v2", 16), ("TPU v3", 32), ("TPU v4", 32),
    ("TPU v5 lite", 16),  # v5e
    ("TPU v5", 95),  # v5p
    ("TPU v6 lite", 32),  # v6e (Trillium)
)}
EXAMPLES = "v5e:2x2, v5e:4x4, v5p:2x2x1, v5p:4x4x4, v4:2x2x1, v6e:4x4"


class CompileError(DllmError):
    """The config cannot be compiled for the topology as asked."""


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment file with get_config(), e.g. experiments/paper_1b.py")
    parser.add_argument("--topology", required=True, help=f"TPU topology name libtpu knows, e.g. {EXAMPLES}")
    parser.add_argument("--num-slices", type=int, default=1,
                        help="slices of --topology joined over DCN (multi-slice); mesh.dcn_data / mesh.dcn_fsdp spread the "
                             "data / fsdp axis over them (default: data)")
    parser.add_argument("--hbm-gib", type=float, default=None, help="HBM per chip in GiB (default: from the chip kind)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s per chip (default: from the chip kind)")
    parser.add_argument("--json", default=None, help="also write the report to this JSON file")
    parser.add_argument("--no-cost-probe", action="store_true",
                        help="skip the second compile (2 unrolled layers) that turns XLA's one-layer count of a scanned "
                             "model into a step's FLOPs and time; memory is reported either way")
    parser.epilog = "Override any key with --config.KEY=VALUE, e.g. --config.model.remat=dots --config.mesh.fsdp=-1"


def _quiet_libtpu() -> None:
    """On a host without TPUs libtpu looks for TPU VM metadata and prints warnings; give it
    harmless values (they do not change the topology it describes), let several processes
    load it (its lockfile guards TPU chips, and there are none) and keep JAX on the CPU.
    Must run before libtpu is first loaded in the process."""
    from dllm_jax.distributed import on_tpu_vm

    if not on_tpu_vm():
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        os.environ.setdefault("JAX_PLATFORMS", "cpu")


def topology_devices(name: str, num_slices: int = 1):
    """The devices of a TPU topology, from libtpu (`num_slices` copies of it joined over DCN, each
    device with its `slice_index`); CompileError if unknown or libtpu is missing."""
    _quiet_libtpu()
    from jax.experimental import topologies

    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise CompileError("compiling for a TPU topology needs libtpu: pip install libtpu (about 0.5 GB)") from None
    try:
        if num_slices < 1:
            raise CompileError(f"--num-slices {num_slices}: give a number of slices >= 1")
        kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
        return topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices
    except Exception as e:  # libtpu reports bad names as runtime errors
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "INVALID_ARGUMENT" in detail:
            raise CompileError(f"--topology {name!r} is not a TPU topology libtpu knows ({detail}); "
                               f"write GENERATION:CHIPS, e.g. {EXAMPLES}") from None
        raise CompileError(f"libtpu could not describe --topology {name!r}: {detail}") from None


def _chips_in(name: str) -> int | None:
    m = re.search(r"[:=_]([0-9x]+)", name)
    return math.prod(int(v) for v in m.group(1).split("x")) if m else None


def _check_divisible(abstract_state, batch_shape, batch_sharding) -> None:
    """A clear error for a dimension that its mesh axes do not divide (before XLA sees it)."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(abstract_state)[0] + [(("batch",), jax.ShapeDtypeStruct(batch_shape, "int32", sharding=batch_sharding))]
    for path, leaf in leaves:
        spec, mesh = leaf.sharding.spec, leaf.sharding.mesh
        for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(spec) + (None,) * (len(leaf.shape) - len(spec)))):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            ways = math.prod(mesh.shape[a] for a in axes)
            if size % ways:
                where = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
                sizes = ", ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
                raise CompileError(
                    f"{where}: dimension {dim} has size {size}, which is split {ways} ways over {sizes}; "
                    f"not divisible. Pick mesh sizes that divide {size} (or change the model/batch size)."
                )


def _device_bytes(tree) -> int:
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
    return total


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def _compile(config, devices, topology: str):
    """Lower and compile `config`'s train step over `devices`. Returns (compiled, abstract state, model, mesh, seconds)."""
    import jax
    import jax.numpy as jnp
    from flax import linen as nn

    from dllm_jax import objectives, optim, sharding, train_step

    mesh = sharding.make_mesh(dict(config.mesh), devices=devices)
    vocab = int(config.data.vocab_size)
    model = train_step.build_model(config, vocab)
    num_steps = config.train.num_steps or 1000
    tx = optim.make_optimizer(config.train, num_steps)
    lr_fn = optim.lr_schedule(config.train, num_steps)
    ids = objectives.TokenIds(pad_id=0, eos_id=1, mask_id=vocab)  # ids change no shapes
    batch, seq_len = config.train.batch_size, config.data.seq_len
    if batch % sharding.batch_shards(mesh):
        raise CompileError(f"train.batch_size={batch} is not divisible by the batch axes data*fsdp*expert="
                           f"{sharding.batch_shards(mesh)} of mesh {dict(mesh.shape)}; change one of them")

    # eager set-up (random keys) runs on this host: only the lowering sees the TPU mesh
    with nn.logical_axis_rules(sharding.LOGICAL_RULES):
        abstract = train_step.abstract_state(model, tx, mesh, seq_len)
        shardings = train_step.state_shardings(model, tx, mesh, seq_len)
        batch_sharding = sharding.batch_sharding(mesh)
        _check_divisible(abstract, (batch, seq_len), batch_sharding)
        step = train_step.make_train_step(model, tx, config, ids, mesh, shardings, lr_fn)
        tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=batch_sharding)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        t0 = time.perf_counter()
        try:
            compiled = step.lower(abstract, tokens).compile()
        except Exception as e:  # XLA:TPU rejects programs that cannot fit
            text = str(e)
            if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text:
                first = next((line for line in text.splitlines() if "memory" in line.lower()), text.splitlines()[0])
                raise CompileError(f"{topology}: the train step does not fit in HBM ({first.strip()}). " + _advice(config)) from None
            slices = len({getattr(d, "slice_index", 0) for d in devices})
            if slices > 1 and "2nd-minor compaction" in text:
                raise CompileError(
                    f"{topology} x {slices} slices: XLA:TPU cannot compile this multi-slice step ({text.splitlines()[0].strip()}); "
                    f"libtpu does so on {devices[0].device_kind} when the scanned parameters are replicated within a slice "
                    f"(mesh.fsdp={mesh.shape['fsdp']}). Shard them inside each slice (--config.mesh.data=1 --config.mesh.fsdp=-1) "
                    "or unroll the layers (--config.model.scan_layers=false)") from None
            raise
    return compiled, abstract, model, mesh, time.perf_counter() - t0


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$")
_CALLEE = re.compile(r"\b(condition|body|calls|to_apply|true_computation|false_computation)=%([^\s,)}]+)")
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")
_ATTR = re.compile(r'(_xla_megascale_transfer_type|_xla_host_transfer_rendezvous)="([^"]*)"')


def _array_bytes(text: str) -> int:
    """Bytes of the first array shape in `text` (e.g. 'f32[8,128]{1,0:T(8,128)}' -> 4096)."""
    m = _ARRAY.search(text)
    if not m or m.group(1) not in _DTYPE_BYTES:
        return 0
    return int(math.prod(int(v) for v in m.group(2).split(",") if v) * _DTYPE_BYTES[m.group(1)])


def _trip_count(cond_lines: list[str]) -> int | None:
    """Trips of a while loop from its condition `counter < constant` (how scans are lowered); None if not that form."""
    consts = {}
    for line in cond_lines:
        m = re.match(r"\s*%(\S+) = s32\[\]\S* constant\((-?\d+)\)", line)
        if m:
            consts[m.group(1)] = int(m.group(2))
    root = next((line for line in cond_lines if line.lstrip().startswith("ROOT")), "")
    m = re.search(r"compare\(%(\S+), %(\S+)\), direction=LT", root)
    if m and m.group(2) in consts:
        return consts[m.group(2)]
    return None


def dcn_collectives(hlo_text: str) -> dict:
    """The collectives of a compiled XLA:TPU program that cross slices (DCN), per step.

    XLA:TPU lowers them to host transfers to the megascale runtime (`send` instructions with
    `_xla_host_transfer_handler_name="xla_megascale_runtime"` and a `_xla_megascale_transfer_type`:
    ALL_REDUCE, ALL_GATHER, REDUCE_SCATTER, ALL_TO_ALL, ...). Each is counted as often as it runs
    in one step: a transfer inside a while loop (the scan over layers) once per trip, the trip
    count read from the loop condition (`i < N`; `unknown_trip_counts` counts loops of another
    form, whose transfers are counted once). Bytes are what one chip sends (the payload shape).

    Returns {'count': int, 'bytes': int, 'by_type': {TYPE: {'count', 'bytes'}}, 'ops': distinct
    transfers in the program, 'unknown_trip_counts': int}."""
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():  # a computation: a header at column 0, its instructions indented
        m = _HEADER.match(line) if line[:1] in ("%", "E") else None
        if m:
            current = m.group(2)
            comps[current] = []
            entry = current if m.group(1) else entry
        elif current is not None and line.startswith("  "):  # (a kernel's multi-line config may hold a '}' line)
            comps[current].append(line)
    callers: dict[str, list[tuple[str, int]]] = {}
    unknown = 0
    for name, lines in comps.items():
        for line in lines:
            callees = dict((k, v) for k, v in _CALLEE.findall(line))
            trips = 1
            if "body" in callees:
                trips = _trip_count(comps.get(callees.get("condition", ""), []))
                if trips is None:
                    unknown, trips = unknown + 1, 1
            for kind, callee in _CALLEE.findall(line):
                callers.setdefault(callee, []).append((name, trips if kind == "body" else 1))
            for group in _BRANCHES.findall(line):
                for callee in re.findall(r"%([^\s,}]+)", group):
                    callers.setdefault(callee, []).append((name, 1))
    memo: dict[str, int] = {}

    def runs(name: str, depth: int = 0) -> int:
        if name == entry:
            return 1
        if name not in memo:
            memo[name] = 0 if depth > 200 else sum(runs(c, depth + 1) * f for c, f in callers.get(name, []))
        return memo[name]

    by_type: dict[str, dict[str, int]] = {}
    ops = 0
    for name, lines in comps.items():
        for line in lines:
            if "xla_megascale_runtime" not in line or " send(" not in line:
                continue
            attrs = dict(_ATTR.findall(line))
            kind = attrs.get("_xla_megascale_transfer_type", "UNKNOWN")
            n = runs(name)
            entry_ = by_type.setdefault(kind, {"count": 0, "bytes": 0})
            entry_["count"] += n
            entry_["bytes"] += n * _array_bytes(line.split(" send(")[0].split("=", 1)[1])
            ops += 1
    return {"count": sum(v["count"] for v in by_type.values()), "bytes": sum(v["bytes"] for v in by_type.values()),
            "by_type": by_type, "ops": ops, "unknown_trip_counts": unknown}


def _layer_probe(config):
    """The same config with 2 unrolled layers (see `compile_report`)."""
    import ml_collections

    probe = ml_collections.ConfigDict(config.to_dict())
    probe.model.n_layers = 2
    probe.model.scan_layers = False
    return probe


def compile_report(config, topology: str, *, hbm_gib: float | None = None, peak_tflops: float | None = None,
                   cost_probe: bool = True, num_slices: int = 1) -> dict:
    """Compile `config`'s train step for `topology` and return the report (see module doc).

    XLA's cost model counts the body of a loop once, so with `scan_layers` it sees one layer.
    `cost_probe` compiles the same step once more with 2 unrolled layers and extrapolates:
    cost = cost(scanned) + (n_layers - 1) * (cost(2 unrolled) - cost(scanned)). Other loops
    (loss chunks, gradient accumulation) are still counted once (flagged in the report).
    `num_slices` > 1 compiles for that many copies of `topology` joined over DCN and adds
    'dcn_collectives' (`dcn_collectives`) and 'dcn_axes' (how many slices each mesh axis spans)."""
    import jax

    config_lib.validate(config)
    devices = topology_devices(topology, num_slices)
    kind = devices[0].device_kind
    chips = (_chips_in(topology) or len(devices) // num_slices) * num_slices
    per_chip = max(len(devices) // chips, 1)
    hbm_chip, peak_chip = CHIPS.get(kind, (None, None))
    if hbm_gib:
        hbm_chip = hbm_gib * GIB
    if peak_tflops:
        peak_chip = peak_tflops * 1e12
    hbm = hbm_chip / per_chip if hbm_chip else None
    peak = peak_chip / per_chip if peak_chip else None

    compiled, abstract, model, mesh, compile_s = _compile(config, devices, topology)
    from dllm_jax import objectives
    from dllm_jax.models.transformer import resolve_attention_impl

    objective = objectives.build(config)
    with jax.set_mesh(mesh):  # the kernel 'auto' resolved to for these devices (block diffusion: over 2L tokens)
        attention = resolve_attention_impl(model.cfg, objective.network_length(config.data.seq_len), decoding=False)
    if attention == "splash" and "tpu_custom_call" not in compiled.as_text():
        attention = "xla"  # the step's mask is not static (NBDiff's growing blocks, MDM annealing): the model fell back
    mem = compiled.memory_analysis()
    cost = _cost(compiled)
    xla_flops, seconds = cost.get("flops"), cost.get("optimal_seconds")
    n_layers = config.model.n_layers
    extrapolated = False
    if cost_probe and config.model.scan_layers and n_layers > 1 and xla_flops is not None:
        try:
            probe_cost = _cost(_compile(_layer_probe(config), devices, topology)[0])
        except CompileError:
            probe_cost = {}
        if "flops" in probe_cost:
            xla_flops = xla_flops + (n_layers - 1) * (probe_cost["flops"] - xla_flops)
            extrapolated = True
            if seconds is not None and probe_cost.get("optimal_seconds") is not None:
                seconds = seconds + (n_layers - 1) * (probe_cost["optimal_seconds"] - seconds)
            else:
                seconds = None
        else:
            xla_flops = seconds = None
    elif config.model.scan_layers and n_layers > 1:
        xla_flops = seconds = None  # one layer's worth: not a step's cost
    if seconds is not None and seconds <= 0:
        seconds = None  # the cost model gives up on some loops (negative times)
    other_loops = [name for name, on in (("loss chunks", config.model.loss_chunk and config.model.loss_chunk < config.data.seq_len),
                                         ("gradient accumulation", config.train.grad_accum > 1)) if on]

    n_dev = len(devices)
    batch, seq_len = config.train.batch_size, config.data.seq_len
    total = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes
    n_params = sum(int(math.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    model_flops = objective.train_flops_per_token(model.cfg, seq_len) * batch * seq_len / n_dev
    # the Pallas kernel's work, which XLA's cost analysis does not see (a custom call): the model count's attention term
    kernel_flops = 0.0
    if attention == "splash":
        kernel_flops = objective.train_attention_flops_per_token(model.cfg, seq_len) * batch * seq_len / n_dev
        if xla_flops is not None:
            xla_flops = xla_flops + kernel_flops
        if seconds is not None:
            seconds = seconds + kernel_flops / peak if peak else None  # the kernel at the chip's peak: optimistic
    from dllm_jax import sharding

    slices = sharding.device_slices(devices, config.mesh.get("num_slices", 0))
    dcn_axes = sharding.resolve_dcn_shape(dict(config.mesh), len(slices))
    report = {
        "topology": topology,
        "num_slices": num_slices,
        "dcn_axes": dcn_axes,
        "dcn_collectives": dcn_collectives(compiled.as_text()) if num_slices > 1 else None,
        "device_kind": kind,
        "devices": n_dev,
        "devices_per_chip": per_chip,
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "objective": config.objective,
        "params": n_params,
        "n_layers": n_layers,
        "global_batch": batch,
        "seq_len": seq_len,
        "dtype": config.model.dtype,
        "remat": config.model.remat,
        "scan_layers": bool(config.model.scan_layers),
        "loss_chunk": int(config.model.loss_chunk),
        "attention_impl": attention,
        "num_experts": int(config.model.num_experts),
        "network_copies": objective.network_copies,  # sequences run per training row (AR with MIR: 2; in model_flops)
        "bytes": {
            "params": _device_bytes(abstract.params),
            "opt_state": _device_bytes(abstract.opt_state),
            "arguments": mem.argument_size_in_bytes,
            "outputs": mem.output_size_in_bytes,
            "aliased": mem.alias_size_in_bytes,
            "temp": mem.temp_size_in_bytes,
            "code": mem.generated_code_size_in_bytes,
            "total": total,
        },
        "hbm_bytes": hbm,
        "fits": None if hbm is None else bool(total <= hbm),
        "model_flops": model_flops,
        "xla_flops": xla_flops,
        "kernel_attention_flops": kernel_flops,
        "xla_seconds": seconds,
        "cost_extrapolated_from_layer_probe": extrapolated,
        "loops_counted_once": other_loops,
        "peak_flops": peak,
        "mfu": model_flops / (seconds * peak) if seconds and peak else None,
        "tokens_per_sec": batch * seq_len / seconds if seconds else None,
        "compile_seconds": round(compile_s, 1),
    }
    return report


def _advice(config) -> str:
    m = config.model
    tips = []
    if m.remat != "full":
        tips.append("--config.model.remat=full")
    if not m.loss_chunk:
        tips.append("--config.model.loss_chunk=512 (no [B, L, vocab] logits)")
    tips.append("more devices on mesh.fsdp (e.g. --config.mesh.fsdp=-1)")
    tips.append("train.grad_accum > 1 (smaller micro-batches)")
    tips.append("a topology with more or larger chips")
    return "Try: " + "; ".join(tips) + "."


def _gib(b) -> str:
    if b is None:
        return "n/a"
    return f"{b / GIB:8.2f} GiB" if abs(b) >= GIB / 4 else f"{b / 1024**2:8.2f} MiB"


def _count(n) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _flop(x) -> str:
    return f"{x / 1e12:10.2f} TFLOP" if x >= 1e10 else f"{x / 1e9:10.3f} GFLOP"


def format_report(r: dict) -> str:
    b = r["bytes"]
    kernel = r.get("kernel_attention_flops") or 0.0
    mesh = " ".join(f"{k}={v}" for k, v in r["mesh"].items())
    unit = "chip" if r["devices_per_chip"] == 1 else f"core (1/{r['devices_per_chip']} chip)"
    slices = r.get("num_slices", 1)
    where = r["topology"] if slices == 1 else f"{slices} x {r['topology']} (over DCN)"
    lines = [
        f"{where}: {r['devices']} x {r['device_kind']}, mesh {mesh}; compiled in {r['compile_seconds']} s",
        f"model: {_count(r['params'])} params, {r['objective']}, batch {r['global_batch']} x {r['seq_len']}, "
        f"{r['dtype']}, remat={r['remat']}, scan_layers={r['scan_layers']}, loss_chunk={r['loss_chunk']}, "
        f"attention={r.get('attention_impl', '?')}"
        + (f", {r['num_experts']} experts" if r["num_experts"] else "")
        + (f", {r['network_copies']} passes per row (MIR's masked copy)" if r.get("network_copies", 1) > 1 else ""),
        f"memory per {unit}:",
        f"  parameters          {_gib(b['params'])}",
        f"  optimizer state     {_gib(b['opt_state'])}",
        f"  batch and step      {_gib(b['arguments'] - b['params'] - b['opt_state'])}",
        f"  activations + temp  {_gib(b['temp'])}   (XLA temporaries: saved activations, gradients, logits)",
        f"  outputs not aliased {_gib(b['outputs'] - b['aliased'])}",
        f"  code                {_gib(b['code'])}",
        f"  total               {_gib(b['total'])}   of {_gib(r['hbm_bytes']).strip()} HBM: "
        + ("unknown chip, pass --hbm-gib" if r["fits"] is None else
           (f"FITS ({100 * b['total'] / r['hbm_bytes']:.0f}%)" if r["fits"] else
            f"DOES NOT FIT ({100 * b['total'] / r['hbm_bytes']:.0f}%)")),
        f"compute per {unit} and step:",
        f"  model FLOPs         {_flop(r['model_flops'])} (6N + attention)",
        "  XLA FLOPs           " + ("n/a (run with the cost probe)" if r["xla_flops"] is None else f"{_flop(r['xla_flops'])} " + (
            f"(XLA cost analysis + {_flop(kernel).strip()} attention in the Pallas kernel, counted analytically: "
            "XLA does not see inside it)" if kernel else "(XLA cost analysis)")),
        "  XLA step time       " + ("n/a" if r["xla_seconds"] is None else f"{r['xla_seconds'] * 1e3:10.2f} ms " + (
            "(cost model estimate + the kernel's attention FLOPs at peak)" if kernel else "(cost model estimate)")),
        "  estimated MFU       " + ("n/a" if r["mfu"] is None else f"{100 * r['mfu']:9.1f} %  (model FLOPs / (step time x peak))"),
        ("  tokens/s (slice)    " if slices == 1 else "  tokens/s (slices)   ") + ("n/a" if r["tokens_per_sec"] is None else f"{r['tokens_per_sec']:12,.0f}"),
    ]
    dcn = r.get("dcn_collectives")
    if dcn is not None:
        spans = ", ".join(f"{a} over {n}" for a, n in r["dcn_axes"].items() if n > 1)
        kinds = "; ".join(f"{k.lower().replace('_', '-')} {v['count']} ({_gib(v['bytes']).strip()})" for k, v in sorted(dcn["by_type"].items()))
        lines.append(f"across slices (DCN; mesh axes {spans} slices), per chip and step: {dcn['count']} transfers, "
                     f"{_gib(dcn['bytes']).strip()}" + (f": {kinds}" if kinds else ""))
        if r["dcn_axes"].get("fsdp", 1) > 1:
            lines.append("  note: mesh.dcn_fsdp > 1 puts FSDP across slices: parameters are all-gathered over DCN every step "
                         "(slow); prefer mesh.dcn_data (data parallelism across slices, FSDP inside each)")
        if dcn["unknown_trip_counts"]:
            lines.append(f"  ({dcn['unknown_trip_counts']} loop(s) of unknown length: their transfers are counted once)")
    if r["cost_extrapolated_from_layer_probe"]:
        lines.append(f"  (XLA counts a loop body once: cost = scanned step + {r['n_layers'] - 1} x the extra layer of a 2-layer unrolled probe)")
    if r["loops_counted_once"]:
        lines.append(f"  (XLA counts these loops once, so its FLOPs and time are low: {', '.join(r['loops_counted_once'])})")
    return "\n".join(lines)


def run(args) -> int:
    _quiet_libtpu()
    cfg = config_lib.load_config(args.config, args.overrides)
    report = compile_report(cfg, args.topology, hbm_gib=args.hbm_gib, peak_tflops=args.peak_tflops, cost_probe=not args.no_cost_probe,
                            num_slices=args.num_slices)
    print(format_report(report))
    if args.json:
        from dllm_jax import paths

        paths.write_text(args.json, json.dumps(report, indent=2))
    if report["fits"] is False:
        print(f"does not fit: {_advice(cfg)}")
        return 1
    return 0


__all__ = ["compile_report", "format_report", "topology_devices", "dcn_collectives", "CHIPS", "CompileError"]
