"""`cloze`: a multiple-choice task made from a run's own held-out validation text.

Each validation row (a packed `data.seq_len` window of held-out documents) is a passage.
An item keeps the first L-K tokens of a passage as the context; the choices are its true
last K tokens and the last K tokens of other passages (so every choice sits at the same
position and has the same token length, and the context + choice always fills exactly one
training-length row). Distractors never come from the passage itself, are distinct rows,
and never repeat the true continuation or each other token for token. Everything is drawn
from `numpy.random.default_rng([seed, CLOZE_STREAM])` (a stream of its own, not the one
that orders the documents), so the task is a pure function of (validation
rows, n_examples, n_choices, K, seed): the same for every checkpoint and both objectives.

This gives tiny models trained on any corpus a downstream-style accuracy, the way
HellaSwag works for large ones: a model can tell the true continuation only through the
gap between right and wrong answers' likelihoods, the quantity the study shows can keep
improving while AR validation loss rises.

`context='both'` (config `eval.cloze_context`) makes a two-sided cloze instead, the
Winogrande / fill-in-the-blank form: a one-token blank at a position drawn uniformly from
[L/4, 3L/4) of the passage, the passage's other tokens on both sides
(`TokenItem.context` before it, `TokenItem.suffix` after it), and as choices the true token
and the tokens at the same position of other passages (distinct from it and each other).
Both objectives score a choice by log p(choice | every other token of the passage), exactly
(`Scorer.blank_logprobs`: the AR through the chain rule over the whole passage, the MDM from
one [MASK] in the blank), with every softmax over the real vocabulary. Left-only continuation
is the AR's own factorisation; a blank with text on both sides (Winogrande-style tasks) needs
the context on both sides, which the MDM is trained to use and the AR reaches through the
chain rule over the rest of the passage.
"""

from __future__ import annotations

import numpy as np

from dllm_jax.errors import ConfigError, DataError
from dllm_jax.evaluation.tasks import TokenItem

CLOZE_STREAM = 0xC10E  # numpy seed-sequence word that separates the cloze draws from the data order


def continuation_length(seq_len: int, length: int = 0) -> int:
    """K: `length`, or seq_len // 4 when 0; must leave at least one context token."""
    k = int(length) or max(1, seq_len // 4)
    if not 1 <= k < seq_len:
        raise ConfigError(f"eval.cloze_length={length} must be in [1, data.seq_len - 1 = {seq_len - 1}] (0 = seq_len // 4)")
    return k


CONTEXTS = ("left", "both")


def build_cloze(val: np.ndarray, tokenizer=None, *, n_examples: int = 64, n_choices: int = 4, length: int = 0, seed: int = 0,
                context: str = "left") -> list[TokenItem]:
    """Items from validation rows `val` [M, L] (int token ids). `n_examples` = 0 uses every row
    as a passage. `tokenizer` (optional) gives choice lengths in characters for acc_norm (else
    tokens). `context`: 'left' (the choice ends the passage) or 'both' (a one-token blank inside
    it, `length` must be 1). Raises ConfigError for a bad setting, DataError for too little text."""
    val = np.asarray(val)
    if val.ndim != 2:
        raise DataError(f"cloze needs validation rows [M, L], got shape {val.shape}")
    m, seq_len = val.shape
    if n_choices < 2:
        raise ConfigError(f"eval.cloze_choices={n_choices} must be >= 2")
    if m < n_choices:
        raise DataError(
            f"the run has {m} validation sequences, too few for {n_choices}-way cloze (each choice comes from "
            "another passage); raise data.val_tokens or lower eval.cloze_choices"
        )
    k = continuation_length(seq_len, length)
    if context not in CONTEXTS:
        raise ConfigError(f"eval.cloze_context={context!r} must be one of {CONTEXTS}")
    if context == "both" and k != 1:
        raise ConfigError(f"eval.cloze_context='both' scores a one-token blank: set eval.cloze_length=1 (got {length})")
    # its own stream: `default_rng(seed)` alone also draws the document order (data/pipeline.py),
    # which would make the passage order that same permutation whenever rows == documents
    rng = np.random.default_rng([int(seed), CLOZE_STREAM])
    count = m if not n_examples else min(int(n_examples), m)
    passages = rng.permutation(m)[:count]
    items = []
    for p in passages:
        p = int(p)
        # the answer's first position: the passage's last k tokens, or a blank in its middle half
        at = seq_len - k if context == "left" else int(rng.integers(seq_len // 4, seq_len - seq_len // 4))
        tails = val[:, at:at + k]
        true = tails[p]
        sources: list[int] = []
        for c in rng.permutation(m):
            c = int(c)
            if c == p or np.array_equal(tails[c], true) or any(np.array_equal(tails[c], tails[s]) for s in sources):
                continue
            sources.append(c)
            if len(sources) == n_choices - 1:
                break
        if len(sources) < n_choices - 1:
            raise DataError(
                f"validation passage {p} has only {len(sources)} other passages with different tokens at {at}..{at + k - 1}; "
                f"{n_choices}-way cloze needs {n_choices - 1}: lower eval.cloze_choices or use more validation text"
            )
        label = int(rng.integers(n_choices))
        sources.insert(label, p)
        choices = [tails[s].astype(np.int32).tolist() for s in sources]
        chars = [len(tokenizer.decode(c)) for c in choices] if tokenizer is not None else [k] * n_choices
        items.append(TokenItem(context=val[p, :at].astype(np.int32).tolist(), choices=choices, label=label,
                               choice_chars=chars, meta={"passage": p, "sources": sources, "position": at},
                               suffix=val[p, at + k:].astype(np.int32).tolist()))
    return items


__all__ = ["CONTEXTS", "build_cloze", "continuation_length"]
