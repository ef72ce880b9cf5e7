"""Categorical draws that keep the tail of the distribution, and the logit filters all samplers share.

Why not `jax.random.categorical` in float32: Gumbel-max draws argmax(logits + G) with
G = -log(E), E = -log(U) ~ Exp(1). With the usual 23-bit float32 uniform U, E >= 2**-24, so
G <= ~16.6 and the top of its tail is coarsely discretised: a token more than ~16 nats
below the best can never be drawn, and with a large vocabulary the winner's G usually sits
in the discretised region. The effect is a lower effective temperature and less diverse
samples (Zheng et al. 2024 showed it inflates masked-diffusion generative perplexity
comparisons); LLaDA, Fast-dLLM and BD3-LM fall back to float64, which TPUs only emulate.

What this module does instead (all float32, so it runs at full speed on any backend):
U is the centre of a cell of a 64-bit fixed-point grid, U = (hi * 2**32 + lo + 1/2) / 2**64,
from two 32-bit random words, so 0 < U < 1 and U >= 2**-65. E is computed from whichever
of U and 1 - U is small, each exact from the integers:

    E = -log1p(-U)   if U < 1/2     (U tiny: E ~= U, with float32 *relative* precision)
    E = -log(1 - U)  if U >= 1/2    (1 - U is the same formula on the complemented words)

so E keeps float32 relative precision over its whole range [2**-65, 45.1] and
G = -log(E) is within ~1e-6 of the float64 value from the same 64 random bits, for
G in [-3.8, 45.1]: the same tail a float64 uniform gives (tested against a float64
reference, including the extreme bit patterns).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

NEG = -1e30  # logit of an excluded token (finite: keeps softmax, entropy and argmax NaN-free)


def _fixed_point_to_float(hi, lo):
    """(hi * 2**32 + lo + 1/2) / 2**64 in float32, from uint32 words."""
    return (hi.astype(jnp.float32) + (lo.astype(jnp.float32) + 0.5) * 2.0**-32) * 2.0**-32


def gumbel_from_bits(hi, lo):
    """Gumbel(0, 1) noise from two uint32 words per value (see the module docstring)."""
    small = hi < jnp.uint32(1 << 31)
    u = _fixed_point_to_float(hi, lo)  # accurate where U < 1/2
    one_minus_u = _fixed_point_to_float(~hi, ~lo)  # 1 - U exactly: accurate where U >= 1/2
    expo = jnp.where(small, -jnp.log1p(-u), -jnp.log(one_minus_u))
    return -jnp.log(expo)


def gumbel(key, shape):
    """float32 Gumbel noise with a float64-grade upper tail, from a jax PRNG key."""
    hi, lo = random_words(stream_states(key, 1)[0], shape, shape)
    return gumbel_from_bits(hi, lo)


def uniform_from_bits(words):
    """Uniform [0, 1) float32 from uint32 words (24 bits: exact in float32)."""
    return (words >> 8).astype(jnp.float32) * 2.0**-24


def stream_states(key, n: int):
    """n independent 128-bit generator states [n, 4] uint32 from a jax PRNG key (one per step)."""
    return jax.random.bits(key, (n, 4), jnp.uint32)


def random_words(state, *shapes):
    """One uint32 array per shape, all from one XLA RngBitGenerator (ThreeFry) call on `state`.

    Why not `jax.random.bits` inside decoding loops: on CPU this call is 5x faster than jax's
    threefry bits and ~10x faster than its 'rbg' (Philox) bits for the [B, L, V] noise of
    a diffusion step, and a loop with one such call compiles in a fraction of the time
    (jax's threefry hash is inlined at every call site). Each state comes from
    `stream_states`: a random key and a random counter start, so streams do not overlap."""
    sizes = [math.prod(s) for s in shapes]
    _, flat = jax.lax.rng_bit_generator(state, (sum(sizes),), dtype=jnp.uint32, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(flat[start:start + size].reshape(shape))
        start += size
    return out


def row_words(row_keys, block, step, *shapes):
    """Per-row uint32 words [B, *shape] for each shape, from each row's own key folded with
    its block and step index (block samplers with per-row progress). jax.random.bits under
    vmap: a row's words depend on its own key only (XLA's RngBitGenerator, used by
    `random_words` for speed, does not batch row by row)."""

    def one(key, j, s):
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(key, j), s), len(shapes))
        return [jax.random.bits(k, shape, jnp.uint32) for k, shape in zip(keys, shapes)]

    return jax.vmap(one)(row_keys, block, step)


def exclude_ids(logits, vocab_limit: int, banned=()):
    """Logits with ids >= vocab_limit (the extra [MASK], padding rows) and `banned` ids (pad, an
    in-vocabulary [MASK]; negative ids ban nothing) set to NEG."""
    ids = jnp.arange(logits.shape[-1])
    drop = ids >= vocab_limit
    for b in banned:
        drop = drop | (ids == b)
    return jnp.where(drop, NEG, logits.astype(jnp.float32))


def filter_logits(logits, *, temperature, top_k: int, use_top_p: bool, top_p):
    """Temperature, then top-k (static k, 0 = off), then nucleus top-p (smallest set of tokens
    whose mass reaches top_p; the most probable token is always kept)."""
    logits = logits / jnp.maximum(temperature, 1e-6)
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG, logits)
    if use_top_p:
        srt = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(srt, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep = mass_before < top_p
        cutoff = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, NEG, logits)
    return logits


def sample(logits, *, greedy: bool, hi=None, lo=None):
    """One id per row of `logits` [..., V]: argmax if greedy, else a Gumbel-max draw with the
    noise made from the uint32 words `hi`, `lo` (shape of logits)."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # the barrier materialises the perturbed logits: fused into argmax's reduction, XLA:CPU
    # runs the noise computation ~8x slower
    perturbed = jax.lax.optimization_barrier(logits + gumbel_from_bits(hi, lo))
    return jnp.argmax(perturbed, axis=-1).astype(jnp.int32)


def draw_from_state(state, logits, *, greedy: bool):
    """`sample` with its own noise from a generator state (one row of `stream_states`)."""
    if greedy:
        return sample(logits, greedy=True)
    hi, lo = random_words(state, logits.shape, logits.shape)
    return sample(logits, greedy=False, hi=hi, lo=lo)


def draw(key, logits, *, greedy: bool):
    """`sample` with its own noise from a jax PRNG key."""
    return draw_from_state(stream_states(key, 1)[0], logits, greedy=greedy)


__all__ = ["NEG", "gumbel", "gumbel_from_bits", "uniform_from_bits", "stream_states", "random_words", "row_words", "exclude_ids", "filter_logits", "sample", "draw_from_state", "draw"]
