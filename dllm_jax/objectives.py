"""The two training objectives, the only place where AR and MDM training differ.

An objective turns clean packed tokens into what the network sees and what the loss
counts:

    inputs, targets, weights, denom, causal = prepare(tokens, rng)
    logits = model(inputs, causal=causal)
    loss = sum(weights * CE(logits, targets)) / denom

AR ('ar'): causal attention, targets are the inputs shifted left by one, every real next
token counts with weight 1, denom = number of targets. Optional input token masking (the
study's AR regularisation ablation) replaces a fraction of *inputs* by [MASK].

Masked diffusion ('mdm', absorbing state): per sequence t ~ U(eps, 1) (stratified over the
batch when `antithetic`), each token is replaced by [MASK] independently with probability
p(t) = 1 - alpha(t); bidirectional attention; targets are the clean tokens at the same
position (no shift). The continuous-time ELBO (md4 / MDLM) is

    -log p(x) <= E_t [ w(t) * sum_{masked i} -log p_theta(x_i | x_t) ],  w(t) = -alpha'(t) / (1 - alpha(t)),

and `loss` = that sum divided by the number of real tokens: a per-token ELBO in nats.
For the linear schedule alpha(t) = 1 - t, p = t and w = 1/t. With weighting='realized'
(the study's released code) w = 1 / (realised masked fraction of the sequence) and a
sequence with no masked token gets one. The masked-token cross-entropy (mean CE over
masked positions) is reported beside it.

Logits of ids past the tokenizer's vocabulary ([MASK] and padding rows) are excluded
from the softmax, so likelihoods are over real tokens only (MDLM's SUBS: [MASK] is never
predicted).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Prepared:
    inputs: jax.Array  # [B, L] tokens the network sees
    targets: jax.Array  # [B, L] tokens to predict at each position
    weights: jax.Array  # [B, L] float32 loss weight per position (0 = not counted)
    segment_ids: jax.Array | None  # [B, L] for attention masking, or None (full attention)
    denom: jax.Array  # scalar: the loss is sum(weights * CE) / denom
    extras: dict  # objective-specific per-token arrays for metrics


jax.tree_util.register_dataclass(
    Prepared, data_fields=["inputs", "targets", "weights", "segment_ids", "denom", "extras"], meta_fields=[]
)


@dataclasses.dataclass(frozen=True)
class TokenIds:
    pad_id: int
    eos_id: int
    mask_id: int  # == tokenizer vocab size; ids >= mask_id are not real tokens


# ---------------------------------------------------------------- masking schedules
def mask_prob(t, schedule: str):
    """p(t) = 1 - alpha(t): probability that a token is masked at time t."""
    if schedule == "linear":
        return t
    if schedule == "cosine":
        return jnp.cos(0.5 * math.pi * (1.0 - t))
    raise ValueError(f"unknown masking schedule {schedule!r}")


def elbo_weight(t, schedule: str):
    """w(t) = -alpha'(t) / (1 - alpha(t)), the continuous-time ELBO weight."""
    if schedule == "linear":
        return 1.0 / t
    if schedule == "cosine":
        return 0.5 * math.pi * jnp.tan(0.5 * math.pi * (1.0 - t))
    raise ValueError(f"unknown masking schedule {schedule!r}")


def sample_times(rng, batch: int, eps: float, antithetic: bool):
    """t in [eps, 1): i.i.d., or stratified t_i = eps + (1-eps)((u + i/B) mod 1)."""
    if antithetic:
        u = jax.random.uniform(rng, ())
        u = jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    else:
        u = jax.random.uniform(rng, (batch,))
    return eps + (1.0 - eps) * u


# ---------------------------------------------------------------- shared pieces
def segment_ids_from_eos(tokens, eos_id: int):
    """1-based document index per position; a document ends with (and includes) its EOS."""
    starts = jnp.concatenate([jnp.zeros_like(tokens[:, :1]), (tokens[:, :-1] == eos_id).astype(tokens.dtype)], axis=1)
    return jnp.cumsum(starts, axis=1) + 1


def random_length_valid(rng, tokens, prob: float):
    """With probability `prob` (per batch) keep only a random prefix length in [1, L]."""
    length = tokens.shape[1]
    k_use, k_len = jax.random.split(rng)
    use = jax.random.uniform(k_use, ()) < prob
    cut = jax.random.randint(k_len, (), 1, length + 1)
    keep = jnp.where(use, cut, length)
    return jnp.arange(length)[None, :] < keep


def token_cross_entropy(logits, targets, vocab_limit: int):
    """Per-position -log softmax(logits)[target], softmax over ids < vocab_limit; float32."""
    logits = logits.astype(jnp.float32)
    if vocab_limit < logits.shape[-1]:
        real = jnp.arange(logits.shape[-1]) < vocab_limit
        logits = jnp.where(real, logits, -1e30)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit


# ---------------------------------------------------------------- objectives
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
) -> Prepared:
    k_t, k_mask, k_len, k_force = jax.random.split(rng, 4)
    b, length = tokens.shape
    valid = tokens != ids.pad_id
    if random_length_prob > 0.0:
        valid = valid & random_length_valid(k_len, tokens, random_length_prob)
    t = sample_times(k_t, b, eps, antithetic)  # [B]
    p = mask_prob(t, schedule)
    masked = (jax.random.uniform(k_mask, (b, length)) < p[:, None]) & valid
    n_valid = valid.sum(axis=1)
    elbo_w = elbo_weight(t, schedule)
    if weighting == "realized":
        # the study's code: if no token is masked, mask one (a random valid position)
        none = (masked.sum(axis=1) == 0) & (n_valid > 0)
        scores = jnp.where(valid, jax.random.uniform(k_force, (b, length)), -1.0)
        forced = jax.nn.one_hot(jnp.argmax(scores, axis=1), length, dtype=jnp.bool_)
        masked = masked | (none[:, None] & forced)
        seq_w = n_valid / jnp.maximum(masked.sum(axis=1), 1)
    else:
        seq_w = elbo_w
    inputs = jnp.where(masked, ids.mask_id, jnp.where(valid, tokens, ids.pad_id))
    weights = masked.astype(jnp.float32) * seq_w[:, None].astype(jnp.float32)
    segment_ids = None
    if document_attention or random_length_prob > 0.0:
        seg = segment_ids_from_eos(tokens, ids.eos_id) if document_attention else jnp.ones_like(tokens)
        segment_ids = jnp.where(valid, seg, 0)
    denom = jnp.maximum(valid.sum().astype(jnp.float32), 1.0)
    extras = {"masked": masked.astype(jnp.float32), "elbo_weights": masked * elbo_w[:, None].astype(jnp.float32), "t": t}
    return Prepared(inputs, tokens, weights, segment_ids, denom, extras)


def metrics_from_ce(ce, prep: Prepared, objective: str) -> dict:
    """Sums (not means) so that micro-batches and hosts add up exactly; see `finalize`."""
    out = {"loss_sum": jnp.sum(prep.weights * ce), "denom": prep.denom}
    if objective == "ar":
        out["ce_sum"] = jnp.sum(prep.weights * ce)
        out["ce_count"] = jnp.sum(prep.weights)
    else:
        masked = prep.extras["masked"]
        out["elbo_sum"] = jnp.sum(prep.extras["elbo_weights"] * ce)
        out["ce_sum"] = jnp.sum(masked * ce)
        out["ce_count"] = jnp.sum(masked)
        out["mask_frac_sum"] = jnp.sum(masked)
    return out


def finalize(sums: dict, objective: str) -> dict:
    """Per-token metrics from summed statistics."""
    denom = sums["denom"]
    out = {"loss": sums["loss_sum"] / denom}
    if objective == "ar":
        out["ce"] = sums["ce_sum"] / jnp.maximum(sums["ce_count"], 1.0)
    else:
        out["elbo"] = sums["elbo_sum"] / denom
        out["masked_ce"] = sums["ce_sum"] / jnp.maximum(sums["ce_count"], 1.0)
        out["mask_frac"] = sums["mask_frac_sum"] / denom
    return out


def prepare_fn(config, ids: TokenIds, train: bool = True):
    """`prepare(tokens, rng) -> Prepared` for the run's objective; eval turns off random length."""
    if config.objective == "ar":
        rate = config.ar.input_mask_rate if train else 0.0
        return lambda tokens, rng: prepare_ar(tokens, rng, ids, input_mask_rate=rate, document_attention=config.data.document_attention)
    m = config.mdm
    return lambda tokens, rng: prepare_mdm(
        tokens,
        rng,
        ids,
        schedule=m.schedule,
        eps=m.eps,
        antithetic=m.antithetic,
        weighting=m.weighting if train else "elbo",
        random_length_prob=m.random_length_prob if train else 0.0,
        document_attention=config.data.document_attention,
    )


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


def is_causal(objective: str) -> bool:
    return objective == "ar"
