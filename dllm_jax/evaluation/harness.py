"""`python -m dllm_jax.evaluation.harness ARGS`: the lm-evaluation-harness command line with
the `dllm_jax` model registered (its own `lm_eval` command cannot know about it).

    python -m dllm_jax.evaluation.harness --model dllm_jax --model_args workdir=DIR \\
        --tasks my_task --include_path my_tasks/
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from dllm_jax.evaluation import lm_eval_adapter

    if not lm_eval_adapter.HAVE_LM_EVAL:
        sys.exit("lm-evaluation-harness is not installed; install the extra: pip install 'dllm_jax[eval]'")
    from lm_eval.__main__ import cli_evaluate

    from dllm_jax.distributed import prefer_cpu_without_accelerator

    prefer_cpu_without_accelerator()  # no TPU initialisation noise from libtpu on a host without one

    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    cli_evaluate()


if __name__ == "__main__":
    main()
