"""`dllm-jax train` and `dllm-jax config`."""

from __future__ import annotations

import json

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
    return 0


def run_train(args) -> int:
    from dllm_jax import distributed, hf
    from dllm_jax.checkpoint import checkpoint_dir
    from dllm_jax.train import train

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)  # before any device use
    cfg = config_lib.load_config(args.config, args.overrides)
    if not paths.isdir(checkpoint_dir(args.workdir)):  # a new run: an override that contradicts init.* is an error
        hf.resolve_init(cfg, explicit={key for key, _ in args.overrides})
    summary = train(cfg, args.workdir)
    if summary.get("interrupted"):
        return 0
    final = summary.get("final", {})
    print(json.dumps({"workdir": paths.absolute(args.workdir), "objective": cfg.objective, "step": summary["step"], **final}, indent=2))
    return 0
