"""Masked (absorbing-state) diffusion ('mdm').

Per sequence t ~ U(eps, 1) (stratified over the batch when `antithetic`), each token is
replaced by [MASK] independently with probability p(t) = 1 - alpha(t); bidirectional
attention; targets are the clean tokens at the same position (no shift). The
continuous-time ELBO (md4 / MDLM) is

    -log p(x) <= E_t [ w(t) * sum_{masked i} -log p_theta(x_i | x_t) ],  w(t) = -alpha'(t) / (1 - alpha(t)),

and `loss` = that sum divided by the number of real tokens: a per-token ELBO in nats.
For the linear schedule alpha(t) = 1 - t, p = t and w = 1/t. With weighting='realized'
(the study's released code) w = 1 / (realised masked fraction of the sequence) and a
sequence with no masked token gets one; that forced token is not part of the p(t) draw, so
the logged `elbo` (always the w(t)-weighted bound) gives it weight 0 and stays a valid ELBO.
The masked-token cross-entropy (mean CE over masked positions) is reported beside it. Likelihoods are bounds (Monte Carlo ELBO).

Training may draw t from another proposal q (`mdm.t_proposal`, objectives.time_proposal):
t = eps + (1 - eps) s, s ~ q, stratified like the uniform draw. Mode 'recipe' keeps the
weighting above (the loss becomes a q-reweighted ELBO); mode 'importance' multiplies each
sequence's weight by 1 / q(s) (the loss stays an unbiased ELBO estimate). The logged `elbo`
is always the importance-weighted w(t)-bound of the same draws (an unbiased estimate of the
uniform-t ELBO); validation and evaluation draw t uniformly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_jax.objectives.base import Objective, _ppl
from dllm_jax.objectives.common import Prepared, TokenIds, elbo_weight, mask_prob, random_length_valid, segment_ids_from_eos
from dllm_jax.objectives.time_proposal import TimeProposal, draw_times, loss_weight


def prepare_mdm(
    tokens,
    rng,
    ids: TokenIds,
    *,
    schedule: str = "linear",
    eps: float = 1e-3,
    antithetic: bool = True,
    weighting: str = "elbo",
    random_length_prob: float = 0.0,
    document_attention: bool = False,
    proposal: TimeProposal | None = None,
) -> Prepared:
    """One MDM training batch from tokens [B, L] int32 (see the module docstring). `proposal`:
    where t is drawn (None = uniform, today's draw bit for bit). extras: 'masked' [B, L],
    'elbo_weights' [B, L] (the logged ELBO's weights: w(t) * importance weight on masked
    tokens), 't' [B]."""
    k_t, k_mask, k_len, k_force = jax.random.split(rng, 4)
    b, length = tokens.shape
    valid = tokens != ids.pad_id
    if random_length_prob > 0.0:
        valid = valid & random_length_valid(k_len, tokens, random_length_prob)
    t, iw = draw_times(k_t, b, eps, antithetic, proposal)  # [B]; iw: p_uniform(t) / q_t(t), None when uniform
    p = mask_prob(t, schedule)
    masked = (jax.random.uniform(k_mask, (b, length)) < p[:, None]) & valid
    n_valid = valid.sum(axis=1)
    elbo_w = elbo_weight(t, schedule)
    # the ELBO counts only the i.i.d. p(t) mask; a forced extra mask (below) is a training
    # device outside that draw, so it gets ELBO weight 0 (a draw with no masked token adds 0)
    elbo_weights = masked * (elbo_w if iw is None else elbo_w * iw)[:, None].astype(jnp.float32)
    if weighting == "realized":
        # the study's code: if no token is masked, mask one (a random valid position)
        none = (masked.sum(axis=1) == 0) & (n_valid > 0)
        scores = jnp.where(valid, jax.random.uniform(k_force, (b, length)), -1.0)
        forced = jax.nn.one_hot(jnp.argmax(scores, axis=1), length, dtype=jnp.bool_)
        masked = masked | (none[:, None] & forced)
        seq_w = n_valid / jnp.maximum(masked.sum(axis=1), 1)
    else:
        seq_w = elbo_w
    train_iw = loss_weight(iw, proposal)
    if train_iw is not None:
        seq_w = seq_w * train_iw
    inputs = jnp.where(masked, ids.mask_id, jnp.where(valid, tokens, ids.pad_id))
    weights = masked.astype(jnp.float32) * seq_w[:, None].astype(jnp.float32)
    segment_ids = None
    if document_attention or random_length_prob > 0.0:
        seg = segment_ids_from_eos(tokens, ids.eos_id) if document_attention else jnp.ones_like(tokens)
        segment_ids = jnp.where(valid, seg, 0)
    denom = jnp.maximum(valid.sum().astype(jnp.float32), 1.0)
    extras = {"masked": masked.astype(jnp.float32), "elbo_weights": elbo_weights, "t": t}
    return Prepared(inputs, tokens, weights, segment_ids, denom, extras)


def anneal_mask(rng, step, length: int, anneal_steps: int):
    """DiffuLLaMA's attention-mask annealing (Gong et al. 2024, arXiv:2410.17891, Sec. 3.2):
    at training step s the causal mask is kept and each future (query, key) pair is opened
    independently with probability r = min(1, (s + 1) / anneal_steps), one draw per step
    shared by the batch, so attention goes from causal (r ~ 0) to bidirectional (r = 1) over
    `anneal_steps` steps. Returns a boolean mask [1, 1, L, L] (True = may attend)."""
    ratio = jnp.minimum(1.0, (step + 1).astype(jnp.float32) / anneal_steps)
    causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
    opened = jax.random.uniform(rng, (length, length)) < ratio
    return (causal | opened)[None, None]


class MaskedDiffusion(Objective):
    name = "mdm"
    description = "absorbing-state masked diffusion (bidirectional attention, ELBO)"
    causal = False
    exact_likelihood = False
    sampler_family = "mdm"
    default_sampler = "topk_confidence"
    pair_estimator = "llada"
    sequence_estimator = "elbo"
    train_metrics = ("loss", "elbo", "masked_ce", "mask_frac")
    val_metrics = ("val_loss", "val_masked_ce", "val_ppl_bound")
    linestyle = "--"
    ar_adaptation = True
    mask_input = True
    time_proposals = True  # block diffusion inherits it: its block times are drawn the same way
    defining_keys = ("mdm.schedule",)

    @property
    def time_proposal(self) -> TimeProposal:
        """Where training draws t (mdm.t_proposal*; evaluation always draws uniformly)."""
        return TimeProposal.from_config(self.config)

    def prepare_fn(self, ids, train: bool = True):
        m, doc = self.config.mdm, bool(self.config.data.document_attention)
        proposal = self.time_proposal if train else None
        return lambda tokens, rng: prepare_mdm(
            tokens, rng, ids, schedule=m.schedule, eps=m.eps, antithetic=m.antithetic,
            weighting=m.weighting if train else "elbo", random_length_prob=m.random_length_prob if train else 0.0,
            document_attention=doc, proposal=proposal)

    def train_attention_mask(self, rng, step, length: int):
        """mdm.anneal_steps > 0: causal -> bidirectional over that many steps (AR-to-MDM
        adaptation, DiffuLLaMA); evaluation and sampling stay bidirectional."""
        steps = int(self.config.mdm.get("anneal_steps", 0))
        return anneal_mask(rng, step, length, steps) if steps > 0 else None

    def metrics_from_ce(self, ce, prep: Prepared) -> dict:
        out = super().metrics_from_ce(ce, prep)
        masked = prep.extras["masked"]
        out["elbo_sum"] = jnp.sum(prep.extras["elbo_weights"] * ce)
        out["ce_sum"] = jnp.sum(masked * ce)
        out["ce_count"] = jnp.sum(masked)
        out["mask_frac_sum"] = jnp.sum(masked)
        return out

    def finalize(self, sums: dict) -> dict:
        out = super().finalize(sums)
        denom = sums["denom"]
        out["elbo"] = sums["elbo_sum"] / denom
        out["masked_ce"] = sums["ce_sum"] / jnp.maximum(sums["ce_count"], 1.0)
        out["mask_frac"] = sums["mask_frac_sum"] / denom
        return out

    def val_draws(self, config) -> int:
        return int(config.eval.val_draws)

    def val_record(self, metrics: dict) -> dict:
        return {"val_loss": metrics["loss"], "val_masked_ce": metrics["masked_ce"], "val_ppl_bound": _ppl(metrics["loss"])}

    def sample_defaults(self, config) -> dict:
        return {"schedule": config.mdm.schedule}
