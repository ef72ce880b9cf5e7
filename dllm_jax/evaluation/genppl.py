"""Generation quality: generative perplexity under a reference AR model, and unigram entropy.

Samples come from `dllm_jax.sampling.generate` (unconditional by default: empty prompts,
i.e. "a new document"). Each sample's text is re-encoded with the reference run's
tokenizer and scored exactly by the reference AR model, from an EOS start, in rolling
windows if it is longer than the reference's `data.seq_len`.
gen_ppl = exp(total NLL / total reference tokens) over all non-empty samples.

Unigram entropy (nats) is computed per sample over the sampled token ids (the sampled
model's tokenizer) and averaged: a degenerate, repetitive sample has low entropy even when
its generative perplexity looks good.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.evaluation.likelihood import Scorer, rolling_windows


def unigram_entropy(samples: Sequence[Sequence[int]]) -> float:
    """Mean over samples of the entropy (nats) of each sample's token frequencies; empty
    samples are skipped (nan if all are empty)."""
    values = []
    for s in samples:
        s = np.asarray(s).reshape(-1)
        if s.size == 0:
            continue
        _, counts = np.unique(s, return_counts=True)
        p = counts / counts.sum()
        values.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(values)) if values else float("nan")


def generative_perplexity(scorer: Scorer, params, tokenizer, texts: Sequence[str]) -> dict:
    """Exact NLL of `texts` under an AR `scorer` (the reference model)."""
    if not scorer.objective.exact_likelihood:
        raise ConfigError("generative perplexity needs an exact-likelihood reference model (objective 'ar'); pass an AR run as --reference-workdir")
    pairs, owner = [], []
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)
        for pair in rolling_windows(ids, scorer.spec.max_len, scorer.spec.eos_id):
            pairs.append(pair)
            owner.append(i)
    scores = scorer.loglikelihood(params, pairs)
    nll = -sum(s.logprob for s in scores)
    tokens = sum(s.tokens for s in scores)
    per_sample = np.zeros(len(texts))
    for o, s in zip(owner, scores):
        per_sample[o] -= s.logprob
    per = nll / tokens if tokens else float("nan")
    return {"gen_ppl": float(math.exp(min(per, 50.0))) if tokens else float("nan"), "nll_per_token": per,
            "reference_tokens": int(tokens), "scored_samples": len(set(owner)), "sample_nll": per_sample.tolist()}


def evaluate_generation(run, reference, *, num_samples: int = 16, prompt: str = "", max_new_tokens: int = 64,
                        sampler: str = "auto", steps: int | None = None, block_length: int | None = None,
                        threshold: float | None = None, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                        seed: int = 0, batch_size: int = 64, correction_steps: int = 0, correction_temperature: float = 0.1) -> dict:
    """Sample `num_samples` texts from `run` (a LoadedRun) and score them with `reference`
    (a LoadedRun of an AR model). correction_steps / correction_temperature: GIDD's
    self-correction after sampling (uniform / gidd runs; `dllm_jax.sampling.generate` refuses
    them elsewhere); the result records both and the NFE including the correction passes.

    Raises ConfigError: a reference that is not AR, num_samples < 1, or sampling options the
    run's objective does not take."""
    from dllm_jax import objectives
    from dllm_jax.sampling import generate

    if not objectives.build(reference.config).exact_likelihood:
        raise ConfigError(f"--reference-workdir must be an AR run; it is a {reference.config.objective!r} run")
    if num_samples < 1:
        raise ConfigError(f"--num-samples={num_samples} must be >= 1")
    defaults = objectives.build(run.config).sample_defaults(run.config)
    res = generate(run.model, run.params, run.tokenizer, [prompt] * num_samples, objective=run.config.objective,
                   sampler=sampler, max_new_tokens=max_new_tokens, steps=steps, block_length=block_length or defaults.get("block_length"),
                   threshold=threshold, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                   context_length=int(run.config.data.seq_len), process=defaults.get("process"),
                   correction_steps=correction_steps, correction_temperature=correction_temperature)
    lengths = np.asarray(res.lengths)
    samples = [np.asarray(row)[:n] for row, n in zip(res.tokens, lengths)]
    ref_scorer = Scorer.for_model(reference.model, reference.config, reference.tokenizer, batch_size=batch_size, mesh=reference.mesh)
    scored = generative_perplexity(ref_scorer, reference.params, reference.tokenizer, res.texts)
    scored.pop("sample_nll")
    return {
        **scored,
        "unigram_entropy": unigram_entropy(samples),
        "num_samples": num_samples,
        "empty_samples": int((lengths == 0).sum()),
        "mean_length": float(lengths.mean()),
        "sampler": getattr(res, "sampler", sampler) or sampler,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "steps": getattr(res.options, "steps", steps),  # the resolved number (the default: max_new_tokens)
        "correction_steps": correction_steps,
        "correction_temperature": correction_temperature,
        "nfe": int(res.nfe),
        "tokens_per_sec": float(res.tokens_per_sec),
        "reference_step": reference.step,
        "examples": res.texts[:3],
    }


__all__ = ["unigram_entropy", "generative_perplexity", "evaluate_generation"]
