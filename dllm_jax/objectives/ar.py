"""Autoregressive next-token prediction ('ar').

Causal attention, targets are the inputs shifted left by one, every real next token counts
with weight 1, denom = number of targets. Optional input token masking (the study's AR
regularisation ablation) replaces a fraction of *inputs* by [MASK]. Likelihoods are exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_jax.objectives.base import Objective, _ppl
from dllm_jax.objectives.common import Prepared, TokenIds, segment_ids_from_eos


def prepare_ar(tokens, rng, ids: TokenIds, *, input_mask_rate: float = 0.0, document_attention: bool = False) -> Prepared:
    valid = tokens != ids.pad_id
    targets = jnp.concatenate([tokens[:, 1:], jnp.full_like(tokens[:, :1], ids.pad_id)], axis=1)
    weights = ((targets != ids.pad_id) & valid).astype(jnp.float32)
    inputs = tokens
    if input_mask_rate > 0.0:
        drop = jax.random.uniform(rng, tokens.shape) < input_mask_rate
        inputs = jnp.where(drop & valid, ids.mask_id, tokens)
    segment_ids = None
    if document_attention:
        segment_ids = jnp.where(valid, segment_ids_from_eos(tokens, ids.eos_id), 0)
        # a target in the next document is not predictable from this one
        weights = weights * (tokens != ids.eos_id)
    return Prepared(inputs, targets, weights, segment_ids, jnp.maximum(weights.sum(), 1.0), {})


class AutoRegressive(Objective):
    name = "ar"
    description = "autoregressive next-token prediction (causal attention, exact likelihood)"
    causal = True
    exact_likelihood = True
    sampler_family = "ar"
    default_sampler = "ar"
    pair_estimator = "ar"
    sequence_estimator = "ar"
    train_metrics = ("loss", "ce")
    val_metrics = ("val_loss", "val_ppl")
    linestyle = "-"

    def prepare_fn(self, ids, train: bool = True):
        rate = self.config.ar.input_mask_rate if train else 0.0
        doc = bool(self.config.data.document_attention)
        return lambda tokens, rng: prepare_ar(tokens, rng, ids, input_mask_rate=rate, document_attention=doc)

    def metrics_from_ce(self, ce, prep: Prepared) -> dict:
        out = super().metrics_from_ce(ce, prep)
        out["ce_sum"] = jnp.sum(prep.weights * ce)
        out["ce_count"] = jnp.sum(prep.weights)
        return out

    def finalize(self, sums: dict) -> dict:
        out = super().finalize(sums)
        out["ce"] = sums["ce_sum"] / jnp.maximum(sums["ce_count"], 1.0)
        return out

    def val_record(self, metrics: dict) -> dict:
        return {"val_loss": metrics["loss"], "val_ppl": _ppl(metrics["loss"])}
