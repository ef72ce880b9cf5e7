"""`dllm-jax export` and `dllm-jax import`."""

from __future__ import annotations

import json

from dllm_jax import config as config_lib
from dllm_jax.hf.export import export_run
from dllm_jax.hf.init import import_run

def add_export_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="a trained dllm-jax run directory")
    parser.add_argument("--output", required=True, help="directory to write the Hugging Face checkpoint into")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


def add_import_arguments(parser) -> None:
    parser.add_argument("--hf", required=True, help="local Hugging Face checkpoint directory (Llama / Mistral / Qwen2 / Qwen3, "
                        "or a released diffusion LM: LLaDA / Dream / SDAR)")
    parser.add_argument("--workdir", required=True, help="new run directory to write the step-0 checkpoint into")
    parser.add_argument("--config", default=None, help="optional experiment file (default: the library defaults)")
    parser.epilog = "Override keys with --config.KEY=VALUE (e.g. --config.objective=mdm --config.model.shift_logits=true)"


def run_import(args) -> int:
    config = config_lib.load_config(args.config, []) if args.config else config_lib.default_config()
    for key, value in args.overrides:
        config_lib.set_key(config, key, value)
    print(json.dumps(import_run(args.hf, args.workdir, config, explicit={k for k, _ in args.overrides}), indent=2))
    return 0


def run_export(args) -> int:
    info = export_run(args.workdir, args.output, args.step)
    print(json.dumps(info, indent=2))
    return 0
