"""Autoregressive decoding: one jitted lax.while_loop, with or without a KV cache.

Layout: `buf` [B, T] holds each row's prompt from position 0 (no padding in front), then
room for `max_new` tokens; `row_len` [B] is each prompt's length. Rows with longer prompts
are handled by *forcing*: decoding starts after the shortest prompt, and at a position
still inside a row's prompt the row takes its prompt token instead of a sample. Every row
therefore sees exactly its own tokens at its own positions (no pad tokens to mask), which
is what makes greedy decoding with the cache equal to decoding without it.

With the cache: one prefill call over the common prompt prefix [0, P0), then one call per
position that feeds a single token. Without it: every step runs the whole buffer through
the causal model and reads the logits at the current position (the O(T^2) baseline).
A row stops after `max_new` tokens or at its first EOS; the loop stops when all have.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dllm_jax.models.transformer import init_cache
from dllm_jax.sampling import categorical


@functools.partial(
    jax.jit,
    static_argnames=("model", "max_new", "p0", "use_cache", "greedy", "top_k", "use_top_p", "vocab_limit", "eos_id", "pad_id", "mask_id"),
)
def decode(params, buf, row_len, key, temperature, top_p, *, model, max_new: int, p0: int, use_cache: bool, greedy: bool,
           top_k: int, use_top_p: bool, vocab_limit: int, eos_id: int, pad_id: int, mask_id: int = -1):
    """Returns (buf with the continuations written in, generated count per row [B] (EOS
    included), number of network calls). `p0` = min(row_len) >= 1, static. Never drawn: ids >=
    vocab_limit, pad_id and mask_id (-1: none inside the vocabulary)."""
    b, total = buf.shape

    states = categorical.stream_states(key, total)  # position p draws from states[p], with or without the cache

    def choose(logits, pos, buf, done):
        """Token for position `pos` of each row: its prompt token if still in the prompt, else a draw."""
        logits = categorical.exclude_ids(logits, vocab_limit, banned=(pad_id, mask_id))
        logits = categorical.filter_logits(logits, temperature=temperature, top_k=top_k, use_top_p=use_top_p, top_p=top_p)
        drawn = categorical.draw_from_state(states[pos], logits, greedy=greedy)
        col = jax.lax.dynamic_index_in_dim(buf, pos, axis=1, keepdims=False)
        in_prompt = pos < row_len
        token = jnp.where(in_prompt, col, jnp.where(done, pad_id, drawn))
        generated = (~in_prompt) & (~done)
        n_gen = pos - row_len + 1  # tokens generated so far, counting this one
        done = done | (generated & ((token == eos_id) | (n_gen >= max_new)))
        buf = jax.lax.dynamic_update_index_in_dim(buf, token, pos, axis=1)
        return buf, done

    def full_logits(buf, pos):
        logits = model.apply({"params": params}, buf, causal=True)
        return jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1, keepdims=False)

    # prefill: logits for position p0
    if use_cache:
        cache = init_cache(model.cfg, b, total)
        logits, cache = model.apply({"params": params}, buf[:, :p0], causal=True, cache=cache, cache_index=0)
        logits = logits[:, -1]
    else:
        cache = None
        logits = full_logits(buf, p0)
    done = jnp.zeros((b,), bool)
    buf, done = choose(logits, p0, buf, done)

    def cond(state):
        _, pos, done, _, _ = state
        return (pos + 1 < total) & ~jnp.all(done)

    def body(state):
        buf, pos, done, cache, nfe = state
        if use_cache:
            token = jax.lax.dynamic_slice_in_dim(buf, pos, 1, axis=1)
            logits, cache = model.apply({"params": params}, token, causal=True, cache=cache, cache_index=pos)
            logits = logits[:, 0]
        else:
            logits = full_logits(buf, pos + 1)
        buf, done = choose(logits, pos + 1, buf, done)
        return buf, pos + 1, done, cache, nfe + 1

    state = (buf, jnp.int32(p0), done, cache, jnp.int32(1))
    buf, pos, done, _, nfe = jax.lax.while_loop(cond, body, state)
    generated = jnp.clip(pos - row_len + 1, 0, max_new)
    # rows that stopped at EOS generated fewer: count up to and including the first EOS
    span = jnp.arange(total)[None, :]
    gen_region = (span >= row_len[:, None]) & (span < (row_len + max_new)[:, None])
    is_eos = gen_region & (buf == eos_id)
    first_eos = jnp.where(is_eos.any(axis=1), jnp.argmax(is_eos, axis=1) - row_len + 1, max_new)
    return buf, jnp.minimum(generated, first_eos), nfe


__all__ = ["decode"]
