"""`dllm-jax train` and `dllm-jax config`."""

from __future__ import annotations

import json
import sys

from dllm_jax import config as config_lib
from dllm_jax import paths


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment file with get_config(), e.g. experiments/tiny.py")
    if parser.prog.endswith("train"):
        parser.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics.jsonl, config.json; reused to resume")
        group = parser.add_argument_group("multi-process (not needed on a Cloud TPU VM, which sets itself up)")
        group.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (else $JAX_COORDINATOR_ADDRESS)")
        group.add_argument("--num-processes", type=int, default=None, help="number of processes (else $JAX_NUM_PROCESSES)")
        group.add_argument("--process-id", type=int, default=None, help="this process, 0..N-1 (else $JAX_PROCESS_ID)")
    parser.epilog = "Override any key with --config.KEY=VALUE, e.g. --config.train.lr=1e-3 --config.objective=ar"


def run_config(args) -> int:
    from dllm_jax import hf

    cfg = config_lib.load_config(args.config, args.overrides)
    hf.resolve_init(cfg, explicit={key for key, _ in args.overrides})  # show the model.* that init.* sets
    print(config_lib.to_json(cfg))
    print(derived_text(cfg), file=sys.stderr)  # stdout stays the config's JSON
    return 0


def derived_values(cfg) -> dict:
    """What a run of `cfg` derives from it before reading any data (tokens per step, U after
    rounding down to whole global batches, train.num_steps, the warmup the schedule uses).
    With data.unique_tokens = 0 (all the data) U and the steps are known only once the data is
    prepared: None here. Data with fewer tokens than U is an error at `train`."""
    from dllm_jax import optim

    per_step = cfg.train.batch_size * cfg.data.seq_len
    unique = cfg.data.unique_tokens // per_step * per_step if cfg.data.unique_tokens else None
    steps = cfg.train.num_steps or (unique // per_step * cfg.data.epochs if unique is not None else None)
    return {"tokens_per_step": per_step, "unique_tokens": unique, "num_steps": steps,
            "warmup_steps": optim.warmup_steps(cfg.train, steps) if steps is not None else None}


def derived_text(cfg) -> str:
    d = derived_values(cfg)
    lines = ["# derived (before reading the data):",
             f"#   tokens per step = train.batch_size x data.seq_len = {cfg.train.batch_size} x {cfg.data.seq_len} = {d['tokens_per_step']:,}"]
    if d["unique_tokens"] is None:
        lines.append("#   U = all the training tokens the data has, rounded down to whole steps (known once the data is prepared)")
    else:
        lines.append(f"#   U = data.unique_tokens={cfg.data.unique_tokens:,} rounded down to whole steps = {d['unique_tokens']:,}"
                     + (" (no whole step: train will refuse it)" if not d["unique_tokens"] else ""))
    if d["num_steps"] is None:
        lines.append(f"#   train.num_steps = U x data.epochs / tokens per step (known once U is; data.epochs={cfg.data.epochs})")
    else:
        how = "as set" if cfg.train.num_steps else f"U x data.epochs / tokens per step, data.epochs={cfg.data.epochs}"
        lines.append(f"#   train.num_steps = {d['num_steps']:,} ({how})")
        if cfg.train.warmup_steps and cfg.train.warmup_steps >= d["num_steps"]:
            lines.append(f"#   warmup: train.warmup_steps={cfg.train.warmup_steps} is not shorter than the run's "
                         f"{d['num_steps']:,} steps: train will refuse it (the schedule would never decay)")
        else:
            lines.append(f"#   warmup = {d['warmup_steps']:,} steps (train.warmup_steps={cfg.train.warmup_steps})")
    return "\n".join(lines)


def run_train(args) -> int:
    from dllm_jax import distributed, hf
    from dllm_jax.checkpoint import checkpoint_dir
    from dllm_jax.train import train

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any device use
    cfg = config_lib.load_config(args.config, args.overrides)
    if not paths.isdir(checkpoint_dir(args.workdir)):  # a new run: an override that contradicts init.* is an error
        hf.resolve_init(cfg, explicit={key for key, _ in args.overrides})
    summary = train(cfg, args.workdir)
    if summary.get("interrupted") or summary.get("already_finished"):  # their one line is printed already
        return 0
    final = summary.get("final", {})
    print(json.dumps({"workdir": paths.absolute(args.workdir), "objective": cfg.objective, "step": summary["step"], **final}, indent=2))
    return 0
