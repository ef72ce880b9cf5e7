"""Pieces every objective shares: the prepared-batch record, token ids, masking schedules,
time draws, document segments and the cross-entropy over real tokens.

Logits of ids that are no real token are excluded from the softmax, so likelihoods are over
real tokens only (MDLM's SUBS: [MASK] is never predicted). Those ids are the ones past the
tokenizer's vocabulary (`vocab_limit`: padding rows, and [MASK] when it is the extra id
vocab_limit, our runs' rule) and the mask id itself (a released diffusion LM's [MASK] is a
piece inside its vocabulary, e.g. LLaDA's 126336, with real tokens above it): `real_ids`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What the network sees and what the loss counts. The network input may be longer than
    the targets (block diffusion feeds [x_t ; x_0], 2L tokens): the loss reads the network's
    outputs at the first targets.shape[1] positions."""

    inputs: jax.Array  # [B, L_in] tokens the network sees (L_in = L, or 2L for block diffusion), or [B, C, L]: C copies of each row run as separate sequences (AR with MIR)
    targets: jax.Array  # [B, L] tokens to predict at each output position ([B, C * L] for C copies, [B, 2L] with NBDiff's AR loss)
    weights: jax.Array  # [B, L] float32 loss weight per position (0 = not counted)
    segment_ids: jax.Array | None  # [B, L_in] (or [B, C, L], as inputs) for attention masking, or None (full attention)
    denom: jax.Array  # scalar: the loss is sum(weights * CE) / denom
    extras: dict  # objective-specific per-token arrays for metrics


jax.tree_util.register_dataclass(
    Prepared, data_fields=["inputs", "targets", "weights", "segment_ids", "denom", "extras"], meta_fields=[]
)


@dataclasses.dataclass(frozen=True)
class TokenIds:
    """Ids the objectives treat specially. `pad_id` marks positions that hold no token (not
    counted, not attended); it is never EOS, which is a real token: predicted (AR), masked
    (MDM) and counted like any other, and part of its document's segment (the tokenizer's rule,
    dllm_jax/data/tokenizer.py)."""

    pad_id: int  # padding only: a pad piece of the tokenizer, or the extra id vocab_limit + 1
    eos_id: int  # ends every document in the packed data; a real token
    mask_id: int  # [MASK]: the extra id vocab_limit (our runs), or a released DLM's own mask piece (< vocab_limit)
    vocab_limit: int = -1  # the tokenizer's vocab size: ids >= it are no token; -1 = mask_id (the extra-[MASK] rule)

    def __post_init__(self):
        if self.vocab_limit < 0:
            object.__setattr__(self, "vocab_limit", self.mask_id)
        if self.mask_id > self.vocab_limit:
            raise ValueError(f"mask_id={self.mask_id} > vocab_limit={self.vocab_limit}: [MASK] is the extra id vocab_limit or a piece below it")
        if self.pad_id == self.eos_id:
            raise ValueError(f"pad_id == eos_id == {self.eos_id}: padding needs an id of its own (EOS is a real token that is "
                             "trained and sampled); use the tokenizer's pad_id (the extra id vocab_size + 1 when it has no pad piece)")


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


def sample_uniforms(rng, batch: int, antithetic: bool):
    """u [batch] float32 in [0, 1): i.i.d., or stratified u_i = (u + i/B) mod 1 (one u)."""
    if antithetic:
        u = jax.random.uniform(rng, ())
        return jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    return jax.random.uniform(rng, (batch,))


def sample_times(rng, batch: int, eps: float, antithetic: bool):
    """t in [eps, 1): i.i.d., or stratified t_i = eps + (1-eps)((u + i/B) mod 1). A proposal
    other than uniform maps the same u (objectives.time_proposal)."""
    return eps + (1.0 - eps) * sample_uniforms(rng, batch, antithetic)


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


def vocab_limit_of(ids) -> int:
    """The vocabulary size of `ids` (objectives.TokenIds' vocab_limit, a tokenizer's vocab_size):
    ids >= it are no tokens. [MASK] is the extra id vocab_limit, or a piece below it (a
    released diffusion LM's own), never sampled either way."""
    if hasattr(ids, "vocab_limit"):
        return int(ids.vocab_limit)
    return int(getattr(ids, "vocab_size", ids.mask_id))


def real_ids(n: int, vocab_limit: int, mask_id: int | None = None):
    """bool [n]: True for the ids that are real tokens, i.e. < vocab_limit and != mask_id (None:
    no mask inside the vocabulary), the ids a softmax, a sampler or a score ranges over."""
    ids = jnp.arange(n)
    real = ids < vocab_limit
    return real if mask_id is None or mask_id >= vocab_limit else real & (ids != mask_id)


def mask_unreal(logits, vocab_limit: int, mask_id: int | None = None, fill: float = -1e30):
    """`logits` [..., V] with the columns that are no real token (`real_ids`) set to `fill`."""
    inside = mask_id is not None and mask_id < vocab_limit
    if vocab_limit >= logits.shape[-1] and not inside:
        return logits
    return jnp.where(real_ids(logits.shape[-1], vocab_limit, mask_id), logits, fill)


def token_cross_entropy(logits, targets, vocab_limit: int, mask_id: int | None = None):
    """Per-position -log softmax(logits)[target], softmax over the real ids (< vocab_limit,
    != mask_id: `real_ids`); float32."""
    logits = mask_unreal(logits.astype(jnp.float32), vocab_limit, mask_id)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit
