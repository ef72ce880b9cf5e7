"""`dllm-jax VERB ...` (also `python -m dllm_jax VERB ...`).

Each verb lives in its own module exposing `add_arguments(parser)` and `run(args)`; the
table below maps verbs to modules, imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from dllm_jax.errors import DllmError

VERBS = {
    "train": ("dllm_jax.cli_train", "train (or resume) an experiment config in a workdir"),
    "config": ("dllm_jax.cli_train", "print the resolved config of an experiment file"),
    "sample": ("dllm_jax.sampling.cli", "generate text from a trained run (AR or MDM)"),
    "eval": ("dllm_jax.evaluation.cli", "evaluate a trained run (likelihoods, multiple choice, cloze, genppl)"),
    "sweep": ("dllm_jax.study.sweep", "run every point of an experiment grid"),
    "report": ("dllm_jax.study.report", "crossover plots, tables and scaling-law fits of a sweep"),
    "export": ("dllm_jax.hf.cli", "write a trained run as a Hugging Face (transformers) checkpoint"),
    "import": ("dllm_jax.hf.cli", "turn a Hugging Face checkpoint into a step-0 run (then sample, eval or train it)"),
    "compile": ("dllm_jax.aot", "compile the train step for a TPU topology ahead of time and report memory"),
    "prepare": ("dllm_jax.cli_prepare", "tokenise a corpus once into a token store (an Apache Beam pipeline)"),
}


def _setup_logging():
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("dllm_jax").setLevel(logging.INFO)
    for noisy in ("absl", "orbax", "jax._src.xla_bridge"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    parser = argparse.ArgumentParser(prog="dllm-jax", description="Pretrain, sample and evaluate AR and masked-diffusion LMs in JAX.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    available, passthrough = {}, {}
    for verb, (module_name, help_text) in VERBS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == module_name or module_name.startswith(e.name + ".")):
                continue  # verb not part of this installation
            raise
        p = sub.add_parser(verb, help=help_text, description=help_text)
        getattr(module, f"add_{verb}_arguments", getattr(module, "add_arguments", lambda _: None))(p)
        available[verb] = getattr(module, f"run_{verb}", getattr(module, "run", None))
        passthrough[verb] = getattr(module, "PASSES_UNKNOWN_ARGS", False)  # e.g. Beam pipeline options
    if not argv:
        parser.print_help()
        return 2
    # `--config.KEY=VALUE` overrides pass through untouched for the verbs that take a config
    from dllm_jax.config import parse_overrides

    try:
        overrides, rest = parse_overrides(argv)
        args, unknown = parser.parse_known_args(rest)
        args.overrides = overrides
        if args.verb is None:
            parser.print_help()
            return 2
        if unknown and not passthrough[args.verb]:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.unknown = unknown
        return int(available[args.verb](args) or 0)
    except DllmError as e:
        print(f"dllm-jax {argv[0]}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine refused a path: read-only, full, not a directory, permissions
        what = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        print(f"dllm-jax {argv[0]}: error: cannot use{what}: {e.strerror or e}; check that the path exists, is writable "
              "and has room (nothing already saved was removed)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
