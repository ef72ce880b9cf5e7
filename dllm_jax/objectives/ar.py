"""Autoregressive next-token prediction ('ar').

Causal attention, targets are the inputs shifted left by one, every real next token counts
with weight 1, denom = number of targets. Optional input token masking (the study's AR
regularisation ablation) replaces a fraction of *inputs* by [MASK]. Likelihoods are exact.

Masked-input regularisation (MIR; Xu et al., "Data-Constrained Language Model Pretraining:
Improved Regularization and Scaling Laws", arXiv:2606.06888, code github.com/yixinw-lab/dc_pretrain,
`dcp/train4_diffusionauxiliary_impl.py`, its README's MIR run: `--stage1-full-seq
--stage1-mask-sampling uniform_ratio`), on with `ar.mir_weight` = w > 0: every training row is
run a second time as a masked copy and the step minimises

    loss_clean + w * loss_masked,

both the mean next-token cross-entropy over the same targets (the clean row's next tokens,
unchanged, every real target counted, also those whose own input position is masked), so
the weights are not normalised (dc_pretrain: `--ntp-loss-downscale 1.0`,
`--adaptive-loss-downscale 0.4`). The masked copy: each row draws a rate
r ~ U(`ar.mir_rate_min`, `ar.mir_rate`) (dc_pretrain's uniform_ratio sampling, U(0, 0.5) in its
MIR run) and replaces each real input token at positions >= `ar.mir_prefix` (dc_pretrain's
`--ltr-length`, 8) by [MASK] independently with probability r; attention stays causal. The
masked copy is drawn from the original tokens (independently of `ar.input_mask_rate`, which
masks the clean pass's inputs). Cost: one more forward + backward pass (the two copies run
as one batch of 2B rows, `AutoRegressive.forward`), i.e. twice AR's training FLOPs
(`train_flops_per_token`). The logged `loss` / `ce` and every validation NLL stay the clean
next-token NLL; the masked copy's mean CE is logged as `mir_loss`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax import rng as rng_lib
from dllm_jax.errors import ConfigError
from dllm_jax.objectives.base import Objective, _ppl
from dllm_jax.objectives.common import Prepared, TokenIds, segment_ids_from_eos


def mir_masked_copy(tokens, rng, ids: TokenIds, *, rate: float, rate_min: float = 0.0, prefix: int = 0):
    """MIR's masked copy of `tokens` [B, L] int32: row b draws r_b ~ U(rate_min, rate) (stream
    TRAIN_MIR_RATE of `rng`), then every real token (not padding) at a position >= `prefix` is
    replaced by ids.mask_id independently with probability r_b (stream TRAIN_MIR_MASK).
    Returns (inputs [B, L] int32, masked [B, L] bool)."""
    b, length = tokens.shape
    r = rate_min + (rate - rate_min) * jax.random.uniform(rng_lib.stream(rng, rng_lib.TRAIN_MIR_RATE), (b,))
    u = jax.random.uniform(rng_lib.stream(rng, rng_lib.TRAIN_MIR_MASK), (b, length))
    masked = (u < r[:, None]) & (jnp.arange(length) >= prefix)[None] & (tokens != ids.pad_id)
    return jnp.where(masked, ids.mask_id, tokens), masked


def prepare_ar(tokens, rng, ids: TokenIds, *, input_mask_rate: float = 0.0, document_attention: bool = False,
               mir_weight: float = 0.0, mir_rate: float = 0.0, mir_rate_min: float = 0.0, mir_prefix: int = 0) -> Prepared:
    """The AR batch of `tokens` [B, L]. Without MIR (mir_weight = 0): inputs [B, L], targets,
    weights [B, L]. With MIR: inputs [B, 2, L] (copy 0 the clean input, copy 1 the masked copy,
    `mir_masked_copy`), segment_ids [B, 2, L] (or None), targets [B, 2L] (the next tokens,
    twice); weights [B, L] and denom count the clean targets, and extras['mir_weights'] [B, L] =
    mir_weight * weights, so sum(weights * ce[:, :L] + mir_weights * ce[:, L:]) / denom is MIR's
    objective (`AutoRegressive.metrics_from_ce`)."""
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
    prep = Prepared(inputs, targets, weights, segment_ids, jnp.maximum(weights.sum(), 1.0), {})
    if mir_weight > 0.0:
        copy, masked = mir_masked_copy(tokens, rng, ids, rate=mir_rate, rate_min=mir_rate_min, prefix=mir_prefix)
        extras = {"mir_weights": mir_weight * weights, "mir_masked": masked.astype(jnp.float32)}
        prep = dataclasses.replace(
            prep, inputs=jnp.stack([inputs, copy], axis=1), targets=jnp.concatenate([targets, targets], axis=1),
            segment_ids=None if segment_ids is None else jnp.stack([segment_ids, segment_ids], axis=1), extras=extras)
    return prep


class AutoRegressive(Objective):
    name = "ar"
    description = "autoregressive next-token prediction (causal attention, exact likelihood)"
    causal = True
    exact_likelihood = True
    sampler_family = "ar"
    default_sampler = "ar"
    pair_estimator = "ar"
    sequence_estimator = "ar"
    val_metrics = ("val_loss", "val_ppl")
    linestyle = "-"

    @property
    def mir_weight(self) -> float:
        """MIR's auxiliary loss weight (`ar.mir_weight`; 0 = off)."""
        return float(self.config.ar.get("mir_weight", 0.0))

    @property
    def train_metrics(self) -> tuple:
        return ("loss", "ce") + (("mir_loss",) if self.mir_weight > 0 else ())

    def validate(self, config) -> None:
        a = config.ar
        if a.mir_rate_min > a.mir_rate:
            raise ConfigError(f"ar.mir_rate_min={a.mir_rate_min} is above ar.mir_rate={a.mir_rate}: MIR draws each row's masking "
                              "rate from U(ar.mir_rate_min, ar.mir_rate); set ar.mir_rate_min <= ar.mir_rate (equal: a fixed rate)")
        if a.mir_weight > 0 and a.mir_prefix >= config.data.seq_len:
            raise ConfigError(f"ar.mir_prefix={a.mir_prefix} leaves no position of a data.seq_len={config.data.seq_len} row to mask; "
                              f"set ar.mir_prefix below {config.data.seq_len} (dc_pretrain: 8)")

    def prepare_fn(self, ids, train: bool = True):
        """Training (train=True): input masking and, with ar.mir_weight > 0, MIR's masked copy
        (`prepare_ar`); evaluation: the clean next-token batch only."""
        a, doc = self.config.ar, bool(self.config.data.document_attention)
        rate = a.input_mask_rate if train else 0.0
        mir = dict(mir_weight=self.mir_weight, mir_rate=float(a.mir_rate), mir_rate_min=float(a.mir_rate_min),
                   mir_prefix=int(a.mir_prefix)) if train and self.mir_weight > 0 else {}
        return lambda tokens, rng: prepare_ar(tokens, rng, ids, input_mask_rate=rate, document_attention=doc, **mir)

    def forward(self, model, params, inputs, segment_ids, **apply_kwargs):
        """`inputs` [B, L]: the causal call, outputs [B, L, ...]. `inputs` [B, C, L] (MIR: C = 2
        copies of each row, `prepare_ar`): the C copies run as separate sequences in one call
        of B * C rows; outputs [B, C * L, ...] (copy c at positions c * L .. (c + 1) * L - 1)."""
        if inputs.ndim == 2:
            return super().forward(model, params, inputs, segment_ids, **apply_kwargs)
        b, c, length = inputs.shape
        seg = None if segment_ids is None else segment_ids.reshape(b * c, length)
        res = super().forward(model, params, inputs.reshape(b * c, length), seg, **apply_kwargs)

        def unflat(x):
            return x.reshape((b, c * length) + x.shape[2:])

        return (unflat(res[0]),) + tuple(res[1:]) if isinstance(res, tuple) else unflat(res)

    def metrics_from_ce(self, ce, prep: Prepared) -> dict:
        """`ce` [B, L], or with MIR [B, 2L] (clean copy, then masked copy): `loss_sum` (what the
        step differentiates) adds mir_weight * the masked copy's CE; `clean_sum` is the clean NLL."""
        length = prep.weights.shape[1]
        clean = ce[:, :length]
        out = super().metrics_from_ce(clean, prep)
        out["ce_sum"] = jnp.sum(prep.weights * clean)
        out["ce_count"] = jnp.sum(prep.weights)
        if ce.shape[1] > length:
            masked = ce[:, length:]
            out["clean_sum"] = out["loss_sum"]
            out["loss_sum"] = out["loss_sum"] + jnp.sum(prep.extras["mir_weights"] * masked)
            out["mir_sum"] = jnp.sum(prep.weights * masked)
        return out

    def finalize(self, sums: dict) -> dict:
        """`loss` and `ce`: the clean next-token NLL per target (nats); `mir_loss` (MIR on): the
        masked copy's mean next-token CE over the same targets."""
        out = {"loss": sums.get("clean_sum", sums["loss_sum"]) / sums["denom"]}
        out["ce"] = sums["ce_sum"] / jnp.maximum(sums["ce_count"], 1.0)
        if "mir_sum" in sums:
            out["mir_loss"] = sums["mir_sum"] / jnp.maximum(sums["ce_count"], 1.0)
        return out

    def val_record(self, metrics: dict) -> dict:
        return {"val_loss": metrics["loss"], "val_ppl": _ppl(metrics["loss"])}

    # ---- cost ---------------------------------------------------------------------------
    @property
    def network_copies(self) -> int:
        return 2 if self.mir_weight > 0 else 1

    def train_flops_per_token(self, model_cfg, seq_len: int) -> float:
        """Forward + backward FLOPs per training token: `flops.train_flops_per_token`, twice with
        MIR (the masked copy is a second full pass: network, head, attention)."""
        from dllm_jax import flops

        return self.network_copies * flops.train_flops_per_token(model_cfg, seq_len)
