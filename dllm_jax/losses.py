"""Memory-lean cross-entropy: the output head and the softmax computed a chunk of positions
at a time, so the full [batch, length, vocab] logits never exist at once.

`chunked_token_cross_entropy(hidden, head, targets, vocab_limit, chunk, mask_id)` returns the
same per-position cross-entropy [B, L] as

    objectives.token_cross_entropy(einsum(hidden, head), targets, vocab_limit, mask_id)

(the model's own head: `hidden @ head.astype(hidden.dtype)`, then float32), so every
objective's weighting and metric works unchanged on top of it. The forward pass keeps only
the log-partition [B, L]; a `jax.custom_vjp` backward recomputes each chunk's logits and
accumulates d hidden and d head, so peak memory holds one [B, chunk, V] block, not
[B, L, V]. Chunks run along the sequence axis (the batch axis stays sharded as it is),
and each chunk's logits carry the usual ('activation_batch', 'activation_length',
'activation_vocab') constraint, so with the vocabulary sharded over the tensor axis XLA
splits the head matmul and the logsumexp across it as well. A length that is not a
multiple of `chunk` is padded (the padded positions are dropped).

Cost: the backward pass recomputes the head matmul once (+1/3 of the head's training
FLOPs), the usual price of not storing logits.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import linen as nn

_NEG = -1e30
_LOGIT_AXES = ("activation_batch", "activation_length", "activation_vocab")


def _chunk_logits(h, head, vocab_limit):
    """`vocab_limit`: (limit, mask_id or None), static; columns that are no real token get _NEG."""
    from dllm_jax.objectives.common import mask_unreal

    logits = jnp.einsum("bcd,dv->bcv", h, head.astype(h.dtype)).astype(jnp.float32)
    logits = nn.with_logical_constraint(logits, _LOGIT_AXES)
    return mask_unreal(logits, *vocab_limit, fill=_NEG)


def _split(x, chunk):
    """[B, L, ...] -> [n, B, chunk, ...] (L padded to a multiple of chunk)."""
    b, length = x.shape[:2]
    n = -(-length // chunk)
    pad = n * chunk - length
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape((b, n, chunk) + x.shape[2:]), 1, 0)


def _merge(x, length):
    """[n, B, chunk, ...] -> [B, L, ...]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :length]


def _forward(hidden, head, targets, vocab_limit, chunk):
    def body(_, xs):
        h, t = xs
        logits = _chunk_logits(h, head, vocab_limit)
        log_z = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return None, (log_z - target_logit, log_z)

    _, (ce, log_z) = jax.lax.scan(body, None, (_split(hidden, chunk), _split(targets, chunk)))
    return _merge(ce, hidden.shape[1]), log_z


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _ce(hidden, head, targets, vocab_limit, chunk):
    return _forward(hidden, head, targets, vocab_limit, chunk)[0]


def _ce_fwd(hidden, head, targets, vocab_limit, chunk):
    ce, log_z = _forward(hidden, head, targets, vocab_limit, chunk)
    return ce, (hidden, head, targets, log_z)


def _ce_bwd(vocab_limit, chunk, residuals, g):
    hidden, head, targets, log_z = residuals
    length, dt = hidden.shape[1], hidden.dtype
    head_c = head.astype(dt)

    def body(d_head, xs):
        h, t, lz, gc = xs
        logits = _chunk_logits(h, head, vocab_limit)
        # d ce / d logits = softmax - onehot(target); masked columns have softmax 0
        d_logits = jnp.exp(logits - lz[..., None]) - jax.nn.one_hot(t, logits.shape[-1], dtype=jnp.float32)
        d_logits = (d_logits * gc[..., None]).astype(dt)
        d_logits = nn.with_logical_constraint(d_logits, _LOGIT_AXES)
        d_h = jnp.einsum("bcv,dv->bcd", d_logits, head_c)
        d_head = d_head + jnp.einsum("bcd,bcv->dv", h, d_logits, preferred_element_type=jnp.float32)
        return d_head, d_h

    xs = (_split(hidden, chunk), _split(targets, chunk), log_z, _split(g.astype(jnp.float32), chunk))
    d_head, d_hidden = jax.lax.scan(body, jnp.zeros(head.shape, jnp.float32), xs)
    return _merge(d_hidden, length).astype(hidden.dtype), d_head.astype(head.dtype), None


_ce.defvjp(_ce_fwd, _ce_bwd)


def chunked_token_cross_entropy(hidden, head, targets, vocab_limit: int, chunk: int, mask_id: int | None = None):
    """Per-position -log softmax(hidden @ head)[target] over the real ids (< vocab_limit, !=
    mask_id: `objectives.common.real_ids`); [B, L] float32.

    hidden [B, L, D] (compute dtype), head [D, V] (any float dtype; cast to hidden's),
    targets [B, L] int, chunk = positions per chunk (> 0)."""
    if chunk <= 0:
        raise ValueError(f"chunk={chunk} must be > 0 (model.loss_chunk=0 means: use the plain loss)")
    if hidden.ndim != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(f"hidden {hidden.shape} and targets {targets.shape} must be [B, L, D] and [B, L]")
    limits = (int(vocab_limit), None if mask_id is None else int(mask_id))
    return _ce(hidden, head, targets.astype(jnp.int32), limits, int(min(chunk, hidden.shape[1])))


def chunked_logits_map(hidden, head, fn, per_position, chunk: int):
    """`fn(logits, per_position)` computed `chunk` positions at a time, for a per-position loss
    that needs the whole predicted distribution (e.g. uniform / GIDD diffusion's KL).

    hidden [B, L, D], head [D, V], `per_position` a pytree of [B, L] arrays, `fn(logits
    [B, c, V] float32, pytree of [B, c]) -> pytree of [B, c]`. Returns the pytree of [B, L]
    that `fn(hidden @ head, per_position)` gives. A `lax.scan` over chunks whose body is
    rematerialised (`jax.checkpoint`): the backward pass recomputes a chunk's logits and
    `fn`, so peak memory holds one chunk's [B, c, V] intermediates, not [B, L, V]. The logits
    carry the same logical sharding constraint as the chunked cross-entropy's."""
    if chunk <= 0:
        raise ValueError(f"chunk={chunk} must be > 0 (model.loss_chunk=0 means: use the plain loss)")
    length = hidden.shape[1]
    chunk = int(min(chunk, length))

    @jax.checkpoint
    def body(_, xs):
        h, pp = xs
        logits = nn.with_logical_constraint(jnp.einsum("bcd,dv->bcv", h, head.astype(h.dtype)).astype(jnp.float32), _LOGIT_AXES)
        return None, fn(logits, pp)

    _, out = jax.lax.scan(body, None, (_split(hidden, chunk), jax.tree.map(lambda a: _split(a, chunk), per_position)))
    return jax.tree.map(lambda o: _merge(o, length), out)


__all__ = ["chunked_token_cross_entropy", "chunked_logits_map"]
