"""Fair evaluation of AR and masked-diffusion LMs.

- likelihood.py: estimators (AR exact; MDM ELBO over t; LLaDA multiple-choice), jitted and
  batched in bucketed shapes (`Scorer`; `Scorer.for_models`: an ensemble of runs, the mean of
  their probabilities).
- tasks.py: multiple-choice files (generic JSONL, HellaSwag, MMLU) -> items -> token ids.
- multiple_choice.py: acc / acc_norm of items under a Scorer.
- cloze.py: a multiple-choice task made from a run's validation text.
- genppl.py: generative perplexity under a reference AR model, unigram entropy.
- periodic.py: cloze during training.
- cli.py: `dllm-jax eval`; lm_eval_adapter.py + harness.py: lm-evaluation-harness.
"""

from dllm_jax.evaluation.cloze import build_cloze
from dllm_jax.evaluation.likelihood import PairScore, Scorer, ScoreSpec, rolling_windows
from dllm_jax.evaluation.multiple_choice import score_items
from dllm_jax.evaluation.tasks import Item, TokenItem, read_task, tokenize_items

__all__ = ["Scorer", "ScoreSpec", "PairScore", "rolling_windows", "build_cloze", "score_items",
           "Item", "TokenItem", "read_task", "tokenize_items"]
