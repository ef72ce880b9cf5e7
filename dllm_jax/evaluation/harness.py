"""`python -m dllm_jax.evaluation.harness ARGS`: the lm-evaluation-harness command line with
the `dllm_jax` model registered (its own `lm_eval` command cannot know about it).

    python -m dllm_jax.evaluation.harness --model dllm_jax --model_args workdir=DIR \\
        --tasks my_task --include_path my_tasks/

Bad input of ours (a `model_args` workdir that is not a run, an ensemble `A|B` of runs that
differ in objective or tokenizer, a damaged checkpoint) is one error line and exit status 2.
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
    from dllm_jax.errors import DllmError

    try:
        cli_evaluate()
    except DllmError as e:  # bad model_args (a missing run, an ensemble of unlike runs): one line, as `dllm-jax eval`
        print(f"dllm_jax.evaluation.harness: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
