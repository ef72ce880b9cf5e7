"""Evaluation during training: the cloze task on the run's validation rows (`eval.*` keys).

Built once at the start of a run (the items and the Monte Carlo seed are fixed, so values
are comparable across steps and between AR and MDM runs on the same data); called with
the current parameters wherever the loop validates. Each record carries cloze_acc and
cloze_acc_norm, their binomial standard errors (`cloze_acc_stderr`, `cloze_acc_norm_stderr`,
sqrt(p(1-p)/n)) and the item count `cloze_n`.
"""

from __future__ import annotations

from dllm_jax.evaluation.cloze import build_cloze
from dllm_jax.evaluation.likelihood import Scorer
from dllm_jax.evaluation.multiple_choice import score_items


class ClozeEvaluator:
    def __init__(self, model, config, tokenizer, val, mesh=None, scorer=None):
        """`scorer`: score with this Scorer (e.g. an ensemble's, `Scorer.for_models`) instead of
        one built for `model`; the items still come from `config`, `tokenizer` and `val`."""
        e = config.eval
        self.items = build_cloze(val, tokenizer, n_examples=e.cloze_examples, n_choices=e.cloze_choices,
                                 length=e.cloze_length, seed=config.seed,
                                 context=e.cloze_context)
        self.scorer = scorer or Scorer.for_model(model, config, tokenizer, batch_size=e.batch_size, mesh=mesh)
        self.mc_samples = e.mc_samples
        self.seed = config.seed

    def __call__(self, params) -> dict:
        r = score_items(self.scorer, params, self.items, mc_samples=self.mc_samples, seed=self.seed)
        # binomial standard errors and the item count: the report's crossover bracket and 2-SE test need them
        return {"cloze_acc": r["acc"], "cloze_acc_norm": r["acc_norm"], "cloze_acc_stderr": r["acc_stderr"],
                "cloze_acc_norm_stderr": r["acc_norm_stderr"], "cloze_n": r["n"]}


__all__ = ["ClozeEvaluator"]
