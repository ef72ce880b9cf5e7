"""Masked-diffusion sampling: every sampler is one jitted lax.while_loop over decoding steps.

The canvas `x` [B, T] holds the (left-padded) prompt in [0, P) and the region to generate in
[P, P + N), [MASK] where a token is still unknown; `given` marks tokens the user supplied
(prompt, infill text): they are never changed. The region is cut into N / block_length
blocks decoded left to right (semi-autoregressive; one block = plain decoding). Each loop
iteration makes one step in the current block:

    logits for the block (network call, or the previous logits if the canvas has not
    changed since: MDLM's cache, which makes steps that reveal nothing free)
    -> CFG: u + (w + 1)(c - u), u = logits with every given token replaced by [MASK]
    -> draw a candidate x0 for every masked position (temperature / top-k / top-p,
       tail-exact Gumbel noise, see categorical.py)
    -> choose which masked positions to reveal (the sampler), write x0 there.

Samplers (which positions to reveal):
    'ancestral'        each masked token with prob (alpha_s - alpha_t) / (1 - alpha_t) on a
                       uniform time grid per block; the last step reveals the rest.
    'topk_confidence'  a fixed number per step (ceil(masked left / steps left), LLaDA's
    'margin'           schedule), the highest-scoring first: score = p(x0), top1 - top2
    'entropy'          probability margin, -entropy, or a uniform random score
    'random'
    'threshold'        every masked token with p(x0) >= tau, and at least the best one
                       (Fast-dLLM); steps are not fixed.
EOS handling (`eos_last`): for the scored samplers a position whose candidate is EOS ranks
after every other candidate and is never revealed by the threshold rule, so EOS is only
committed when nothing else is left (no EOS flood from confident end-of-text guesses);
the API then truncates the text at the first EOS.

Per-row progress (`per_row`, semi-autoregressive blocks without the prefix cache): each
row has its own current block and step, moves to its next block as soon as its own block is
filled (a confident row moves on; a finished row idles until the batch ends), and draws its
noise from its own key (`row_keys`, from the seed and the row's prompt: see api.py) folded
with its block and step, with RoPE positions counted from its own first token; so a prompt
gives the same tokens alone or inside any batch. Without it (one block, or the prefix
cache, which refreshes the whole batch's cache at a shared block start) rows share the
current block and the batch's noise stream.

Prefix cache (Fast-dLLM, approximate; `prefix_cache`): at a block start one full call
refreshes a KV cache for the whole canvas; the other steps of the block run only the
block's B_l tokens against it. The cache stores its slots in the order
[prefix | suffix | current block] with the true positions given to RoPE (attention is
bidirectional, so slot order does not matter), so a block query at cache_index T - B_l sees
the cached prefix and suffix plus its own fresh keys: all shapes are static and one jitted
loop serves every block. Prefix and suffix keys are stale within a block (that is the
approximation); at each block start they are exact.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dllm_jax import objectives
from dllm_jax.errors import ConfigError
from dllm_jax.models.transformer import init_cache
from dllm_jax.sampling import categorical

SCORED = ("topk_confidence", "margin", "entropy", "random")
KINDS = ("ancestral", "threshold") + SCORED


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one decoding run (part of the jit cache key)."""

    kind: str
    gen_start: int  # P
    gen_len: int  # N
    block_len: int  # B_l, divides N
    steps_per_block: int  # fixed-step samplers and ancestral; ignored by 'threshold'
    prefix_cache: bool
    guided: bool  # cfg weight != 0
    greedy: bool  # temperature == 0
    top_k: int
    use_top_p: bool
    eos_last: bool
    schedule: str  # masking schedule of the run (ancestral reveal probabilities)
    vocab_limit: int  # the tokenizer's vocab size: ids >= it are never sampled
    eos_id: int
    pad_id: int
    trace: bool  # also return the canvas after every step
    per_row: bool = False  # rows advance through their own blocks with their own keys (see module docstring)
    mask_id: int = -1  # [MASK]; -1 = vocab_limit (the extra id); a released DLM's own piece is < vocab_limit

    @property
    def mask(self) -> int:
        return self.vocab_limit if self.mask_id < 0 else self.mask_id

    @property
    def num_blocks(self) -> int:
        return self.gen_len // self.block_len

    @property
    def max_iters(self) -> int:
        if self.kind == "threshold":
            return self.gen_len
        return self.num_blocks * self.steps_per_block


def _scores(kind, probs, conf, order_u):
    if kind == "topk_confidence" or kind == "threshold":
        return conf
    if kind == "margin":
        top2 = jax.lax.top_k(probs, 2)[0]
        return top2[..., 0] - top2[..., 1]
    if kind == "entropy":
        return jnp.sum(probs * jnp.log(jnp.maximum(probs, 1e-30)), axis=-1)  # -entropy
    if kind == "random":
        return order_u
    raise ValueError(kind)


def _reveal(plan: Plan, step, masked, x0, probs, order_u, threshold):
    """Boolean [B, B_l]: which masked positions of the block to reveal at block step `step`
    (a scalar, or [B, 1] when rows are at different steps of their own blocks).
    `order_u`: uniforms [B, B_l] for 'random' order and 'ancestral' reveals."""
    if plan.kind == "ancestral":
        n = plan.steps_per_block
        t = 1.0 - step / n
        s = 1.0 - (step + 1) / n
        p_t = objectives.mask_prob(t, plan.schedule)
        p_s = objectives.mask_prob(s, plan.schedule)
        q = jnp.where(step + 1 >= n, 1.0, (p_t - p_s) / jnp.maximum(p_t, 1e-12))
        return masked & (order_u < q)
    conf = jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]
    score = _scores(plan.kind, probs, conf, order_u)
    is_eos = x0 == plan.eos_id
    if plan.eos_last:
        score = jnp.where(is_eos, score - 1e6, score)
    score = jnp.where(masked, score, -jnp.inf)
    if plan.kind == "threshold":
        best = jax.nn.one_hot(jnp.argmax(score, axis=1), masked.shape[1], dtype=bool)
        confident = conf >= threshold
        if plan.eos_last:
            confident = confident & ~is_eos
        return masked & (confident | best)
    left = masked.sum(axis=1, keepdims=True)
    steps_left = jnp.maximum(plan.steps_per_block - step, 1)
    k = (left + steps_left - 1) // steps_left
    rank = jnp.argsort(jnp.argsort(-score, axis=1), axis=1)
    return masked & (rank < k)


def slot_order(total: int, block_start, block_len: int):
    """Canvas position held by each cache slot: [prefix | suffix | current block]."""
    idx = jnp.arange(total)
    return jnp.where(idx < block_start, idx, jnp.where(idx < total - block_len, idx + block_len, idx - (total - block_len) + block_start))


def refresh_cache(model, params, x, block_start, cache, *, block_len: int):
    """Block start: the whole canvas through the model in slot order, writing every key/value.
    Returns (logits of the block [B, B_l, V], cache). Exact: equal to a plain full call."""
    total = x.shape[1]
    order = slot_order(total, block_start, block_len)
    xin = jnp.take(x, order, axis=1)
    pos = jnp.broadcast_to(order, xin.shape)
    logits, cache = model.apply({"params": params}, xin, causal=False, positions=pos, cache=cache, cache_index=0)
    return logits[:, total - block_len:], cache


def query_block(model, params, x, block_start, cache, *, block_len: int):
    """Within a block: only its B_l tokens, against the cached prefix and suffix (approximate)."""
    total = x.shape[1]
    xin = jax.lax.dynamic_slice_in_dim(x, block_start, block_len, axis=1)
    pos = jnp.broadcast_to(block_start + jnp.arange(block_len), xin.shape)
    return model.apply({"params": params}, xin, causal=False, positions=pos, cache=cache, cache_index=total - block_len)


@functools.partial(jax.jit, static_argnames=("model", "plan"))
def decode(params, canvas, given, segment_ids, key, temperature, top_p, threshold, cfg, positions=None, *, model, plan: Plan):
    """Fill every [MASK] of `canvas` in [P, P+N). `key`: a jax key, or with plan.per_row the
    rows' keys [B]; `positions` [B, T]: RoPE positions (default 0..T-1). Returns a dict: 'canvas' [B, T],
    'reveal_step' [B, T] (loop iteration that revealed each position, -1 = given/prompt),
    'nfe' (network calls; a CFG call counts 2), 'iterations', and 'history'
    [max_iters + 1, B, T] when plan.trace."""
    b, total = canvas.shape
    p0, bl, nb = plan.gen_start, plan.block_len, plan.num_blocks
    mask_id = plan.mask
    if plan.prefix_cache and model.cfg.shift_logits:
        raise ConfigError("prefix_cache cannot decode a model.shift_logits run (its shift is over canvas positions, the cache "
                          "reorders them); sample without prefix_cache")

    def net_input(x):
        if not plan.guided:
            return x
        return jnp.concatenate([x, jnp.where(given, mask_id, x)], axis=0)

    seg = None
    if segment_ids is not None:
        seg = jnp.concatenate([segment_ids] * (2 if plan.guided else 1), axis=0)
    pos = None
    if positions is not None:
        pos = jnp.concatenate([positions] * (2 if plan.guided else 1), axis=0)

    def guide(logits):
        if not plan.guided:
            return logits
        cond, uncond = logits[:b], logits[b:]
        return uncond + (cfg + 1.0) * (cond - uncond)

    def full_block_logits(x, bs):
        logits = model.apply({"params": params}, net_input(x), causal=False, segment_ids=seg, positions=pos)
        if plan.per_row:  # bs [B]: each row's own block
            idx = jnp.concatenate([bs] * (2 if plan.guided else 1))[:, None] + jnp.arange(bl)[None, :]
            return jnp.take_along_axis(logits, idx[:, :, None], axis=1)
        return jax.lax.dynamic_slice_in_dim(logits, bs, bl, axis=1)

    def network(x, bs, step, cache):
        if plan.prefix_cache:
            refresh = functools.partial(refresh_cache, model, params, block_len=bl)
            query = functools.partial(query_block, model, params, block_len=bl)
            logits, cache = jax.lax.cond(step == 0, refresh, query, net_input(x), bs, cache)
        else:
            logits = full_block_logits(x, bs)
        return guide(logits), cache

    def next_block(x, j):
        """First block index >= j that still has a [MASK] in some row (nb if none); with
        per_row, the same for each row on its own ([B])."""
        has_mask = (x[:, p0:p0 + plan.gen_len] == mask_id).reshape(b, nb, bl).any(axis=2)
        if plan.per_row:
            cand = has_mask & (jnp.arange(nb)[None, :] >= j[:, None])
            return jnp.where(cand.any(axis=1), jnp.argmax(cand, axis=1), nb).astype(jnp.int32)
        cand = has_mask.any(axis=0) & (jnp.arange(nb) >= j)
        return jnp.where(cand.any(), jnp.argmax(cand), nb).astype(jnp.int32)

    def cond_fn(state):
        return jnp.any(state["block"] < nb) & (state["iters"] < plan.max_iters)

    rows_idx = jnp.arange(b)[:, None]

    def get_block(a, bs):
        if plan.per_row:
            return jnp.take_along_axis(a, bs[:, None] + jnp.arange(bl)[None, :], axis=1)
        return jax.lax.dynamic_slice_in_dim(a, bs, bl, axis=1)

    def set_block(a, bs, v):
        if plan.per_row:
            return a.at[rows_idx, bs[:, None] + jnp.arange(bl)[None, :]].set(v)
        return jax.lax.dynamic_update_slice_in_dim(a, v, bs, axis=1)

    def body(state):
        x, j, step = state["x"], state["block"], state["step"]
        bs = p0 + jnp.minimum(j, nb - 1) * bl
        logits, cache = jax.lax.cond(
            state["dirty"],
            lambda: network(x, bs, step, state["cache"]),
            lambda: (state["logits"], state["cache"]),
        )
        nfe = state["nfe"] + jnp.where(state["dirty"], 2 if plan.guided else 1, 0)

        it = state["iters"]
        if plan.per_row:
            shape = (bl, model.cfg.vocab_size)
            words = categorical.row_words(key, j, step, (bl,), *(() if plan.greedy else (shape, shape)))
        else:
            shape = (b, bl, model.cfg.vocab_size)
            words = categorical.random_words(states[it], (b, bl), *(() if plan.greedy else (shape, shape)))
        order_u = categorical.uniform_from_bits(words[0])
        xb = get_block(x, bs)
        masked = xb == mask_id
        lg = categorical.exclude_ids(logits, plan.vocab_limit, banned=(plan.pad_id, mask_id))
        probs = jax.nn.softmax(lg, axis=-1)
        filt = categorical.filter_logits(lg, temperature=temperature, top_k=plan.top_k, use_top_p=plan.use_top_p, top_p=top_p)
        x0 = categorical.sample(filt, greedy=plan.greedy, hi=None if plan.greedy else words[1], lo=None if plan.greedy else words[2])
        reveal = _reveal(plan, step[:, None] if plan.per_row else step, masked, x0, probs, order_u, threshold)
        x = set_block(x, bs, jnp.where(reveal, x0, xb))
        rs = get_block(state["reveal_step"], bs)
        reveal_step = set_block(state["reveal_step"], bs, jnp.where(reveal, it, rs))

        nj = next_block(x, j)
        new_block = nj != j
        out = dict(
            x=x,
            block=nj,
            step=jnp.where(new_block, 0, step + 1).astype(jnp.int32),
            iters=it + 1,
            logits=logits,
            cache=cache,
            dirty=reveal.any() | new_block.any(),
            nfe=nfe,
            reveal_step=reveal_step,
        )
        if plan.trace:
            out["history"] = state["history"].at[it + 1].set(x)
        return out

    if not plan.per_row:
        states = categorical.stream_states(key, plan.max_iters)  # one generator call per step (categorical.random_words)
    rows = 2 * b if plan.guided else b
    state = dict(
        x=canvas,
        block=next_block(canvas, jnp.zeros((b,), jnp.int32) if plan.per_row else 0),
        step=jnp.zeros((b,), jnp.int32) if plan.per_row else jnp.int32(0),
        iters=jnp.int32(0),
        logits=jnp.zeros((b, bl, model.cfg.vocab_size), jnp.float32),
        cache=init_cache(model.cfg, rows, total) if plan.prefix_cache else None,
        dirty=jnp.bool_(True),
        nfe=jnp.int32(0),
        reveal_step=jnp.full((b, total), -1, jnp.int32),
    )
    if plan.trace:
        state["history"] = jnp.zeros((plan.max_iters + 1, b, total), canvas.dtype).at[0].set(canvas)
    final = jax.lax.while_loop(cond_fn, body, state)
    out = {"canvas": final["x"], "reveal_step": final["reveal_step"], "nfe": final["nfe"], "iterations": final["iters"]}
    if plan.trace:
        out["history"] = final["history"]
    return out


__all__ = ["Plan", "decode", "KINDS", "SCORED", "slot_order", "refresh_cache", "query_block"]
