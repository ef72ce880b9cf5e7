"""`dllm-jax train` and `dllm-jax config`."""

from __future__ import annotations

import json
import os

from dllm_jax import config as config_lib


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="experiment file with get_config(), e.g. experiments/tiny.py")
    if parser.prog.endswith("train"):
        parser.add_argument("--workdir", required=True, help="run directory: checkpoints, metrics.jsonl, config.json; reused to resume")
    parser.epilog = "Override any key with --config.KEY=VALUE, e.g. --config.train.lr=1e-3 --config.objective=ar"


def run_config(args) -> int:
    cfg = config_lib.load_config(args.config, args.overrides)
    print(config_lib.to_json(cfg))
    return 0


def run_train(args) -> int:
    from dllm_jax.train import train

    cfg = config_lib.load_config(args.config, args.overrides)
    summary = train(cfg, args.workdir)
    if summary.get("interrupted"):
        return 0
    final = summary.get("final", {})
    print(json.dumps({"workdir": os.path.abspath(args.workdir), "objective": cfg.objective, "step": summary["step"], **final}, indent=2))
    return 0
