"""Score multiple-choice items with a `Scorer`: acc and length-normalised acc_norm.

acc picks the choice with the highest log-likelihood; acc_norm the highest log-likelihood
per character of the choice text (lm-evaluation-harness's acc_norm; HellaSwag is
reported with it). Ties go to the lowest index. Standard errors are binomial,
sqrt(p(1-p)/n). For an MDM the choices of one item share their Monte Carlo draws (common
random numbers), so the comparison between choices is far less noisy than each choice's own
estimate.

A choice longer than the room the model's context leaves is scored on its last tokens only
(`PairScore.truncated`); acc_norm then divides by the characters of the tokens actually
scored (`TokenItem.choice_token_chars`; proportionally to the tokens when those are not
known), not by the whole choice, so that a cut choice is not favoured for its dropped part.
`truncated_items` counts the items with such a choice.

Items with a `suffix` (two-sided cloze: a one-token blank with text on both sides) are
scored by `Scorer.blank_logprobs`, log p(choice | context and suffix) renormalised over the
choices, exact for AR and MDM; all items of one call must then have a suffix.
"""

from __future__ import annotations

import math

import numpy as np

from dllm_jax.evaluation.likelihood import PairScore, Scorer
from dllm_jax.evaluation.tasks import TokenItem


def scored_chars(item: TokenItem, i: int, scored_tokens: int) -> float:
    """Characters of choice i that were scored: all of them, or those of its last
    `scored_tokens` tokens when the choice was cut to fit the context."""
    n = len(item.choices[i])
    if scored_tokens >= n:
        return float(item.choice_chars[i])
    if item.choice_token_chars:
        return float(sum(item.choice_token_chars[i][n - scored_tokens:]))
    return item.choice_chars[i] * scored_tokens / n


def score_items(scorer: Scorer, params, items: list[TokenItem], *, mc_samples: int = 16, seed: int = 0,
                cfg_scale: float = 0.0, keep_items: bool = False) -> dict:
    if not items:
        raise ValueError("no items to score")
    two_sided = [bool(it.suffix) for it in items]
    if any(two_sided):
        if not all(two_sided):
            raise ValueError("mixing two-sided (suffix) and continuation items in one call; score them separately")
        scores = _blank_scores(scorer, params, items)
    else:
        pairs = [(it.context, choice) for it in items for choice in it.choices]
        # an item's choices (one context) share their Monte Carlo draws: Scorer.loglikelihood's default groups
        scores = scorer.loglikelihood(params, pairs, mc_samples=mc_samples, seed=seed, cfg_scale=cfg_scale)
    pos = 0
    hits, hits_norm, truncated, per_item = 0, 0, 0, []
    for it in items:
        s = scores[pos:pos + len(it.choices)]
        pos += len(it.choices)
        lp = np.array([x.logprob for x in s])
        norm = lp / np.maximum(np.asarray([scored_chars(it, i, x.tokens) for i, x in enumerate(s)], np.float64), 1.0)
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
        "estimator": {"ar": "exact", "llada": "llada_mc", "block_llada": "block_llada_mc"}.get(
            scorer.objective.pair_estimator, f"{scorer.objective.pair_estimator}_mc"),
    }
    if any(two_sided) or scorer.objective.pair_estimator == "llada" and not cfg_scale and all(x.tokens == 1 for x in scores):
        out["estimator"] = "exact"  # one-token answers: the LLaDA estimate is the exact log-prob (one pass, no draws)
    elif not scorer.objective.exact_likelihood:
        out["mc_samples"] = int(mc_samples)
        out["cfg_scale"] = float(cfg_scale)
    if keep_items:
        out["items"] = per_item
    return out


def _blank_scores(scorer: Scorer, params, items: list[TokenItem]) -> list[PairScore]:
    """PairScores (one per choice, in item order) of two-sided items from Scorer.blank_logprobs."""
    for k, it in enumerate(items):
        if any(len(c) != 1 for c in it.choices):
            raise ValueError(f"item {k}: a two-sided (suffix) item needs one-token choices, got lengths {[len(c) for c in it.choices]}")
    lp = scorer.blank_logprobs(params, [it.context + [0] + it.suffix for it in items], [len(it.context) for it in items],
                               [[c[0] for c in it.choices] for it in items])
    out = []
    for it, row in zip(items, lp):
        best = int(np.argmax(row))
        out += [PairScore(float(v), 0.0, i == best, 1, False) for i, v in enumerate(row)]
    return out


__all__ = ["score_items"]
