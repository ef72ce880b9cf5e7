"""Score multiple-choice items with a `Scorer`: acc and length-normalised acc_norm.

acc picks the choice with the highest log-likelihood; acc_norm the highest log-likelihood
per character of the choice text (lm-evaluation-harness's acc_norm; HellaSwag is
reported with it). Ties go to the lowest index. Standard errors are binomial,
sqrt(p(1-p)/n).
"""

from __future__ import annotations

import math

import numpy as np

from dllm_jax.evaluation.likelihood import Scorer
from dllm_jax.evaluation.tasks import TokenItem


def score_items(scorer: Scorer, params, items: list[TokenItem], *, mc_samples: int = 16, seed: int = 0,
                cfg_scale: float = 0.0, keep_items: bool = False) -> dict:
    if not items:
        raise ValueError("no items to score")
    pairs, owner = [], []
    for k, it in enumerate(items):
        for choice in it.choices:
            pairs.append((it.context, choice))
            owner.append(k)
    scores = scorer.loglikelihood(params, pairs, mc_samples=mc_samples, seed=seed, cfg_scale=cfg_scale)
    pos = 0
    hits, hits_norm, truncated, per_item = 0, 0, 0, []
    for it in items:
        s = scores[pos:pos + len(it.choices)]
        pos += len(it.choices)
        lp = np.array([x.logprob for x in s])
        norm = lp / np.maximum(np.asarray(it.choice_chars, np.float64), 1.0)
        pred, pred_norm = int(np.argmax(lp)), int(np.argmax(norm))
        hits += pred == it.label
        hits_norm += pred_norm == it.label
        truncated += any(x.truncated for x in s)
        if keep_items:
            per_item.append({"label": it.label, "pred": pred, "pred_norm": pred_norm, "logprobs": [round(float(v), 4) for v in lp],
                             "stderr": [round(x.stderr, 4) for x in s], **({"source": it.meta["source"]} if it.meta.get("source") else {})})
    n = len(items)
    acc, acc_norm = hits / n, hits_norm / n
    out = {
        "n": n,
        "acc": acc,
        "acc_stderr": math.sqrt(acc * (1 - acc) / n),
        "acc_norm": acc_norm,
        "acc_norm_stderr": math.sqrt(acc_norm * (1 - acc_norm) / n),
        "chance": float(np.mean([1.0 / len(it.choices) for it in items])),
        "truncated_items": truncated,
        "estimator": {"ar": "exact", "llada": "llada_mc", "block_llada": "block_llada_mc"}[scorer.objective.pair_estimator],
    }
    if not scorer.objective.exact_likelihood:
        out["mc_samples"] = int(mc_samples)
        out["cfg_scale"] = float(cfg_scale)
    if keep_items:
        out["items"] = per_item
    return out


__all__ = ["score_items"]
