"""Block-diffusion sampling (BD3-LM): blocks left to right, masked diffusion within each block,
an exact KV cache of the finished blocks, and per-row progress. One jitted lax.while_loop.

Layout: `canvas` [B, T] holds each row's [EOS] + prompt from position 0 (no left padding,
like ar.py), then [MASK] for the generation region [P_r, P_r + N) and beyond (T is a
multiple of the block size B'). Blocks are B' positions aligned to the row start, as in
training; the block holding P_r is partly given (its prompt tokens are never changed) and
the last block may run past P_r + N (those positions are filled and dropped).

Each row r has its own current block j_r and step s_r. One loop iteration makes one step
for every active row in ITS block (rows advance independently: a confident row moves on, a
finished row idles; the loop ends when every row is done):

    logits of block j_r given the clean blocks < j_r
    -> any MDM within-block sampler (`diffusion._reveal`: ancestral, topk_confidence,
       margin, entropy, random, threshold; `eos_last` as for MDM)
    -> when block j_r has no [MASK] left it is finished: with the cache, one call runs the
       clean block through the model and writes its keys/values at slots [j_r B', (j_r+1) B')
       (computed once, exact: the clean block sees the clean blocks before it and itself,
       which is the clean half of the training mask); the row moves to block j_r + 1
    -> a row stops after the block holding its last region position, or at the first
       finished block whose region holds an EOS (the API cuts the text there).

Exact cache (kv_cache=True): a prefill call over the canvas with the block-causal mask
writes the prompt blocks; a block query runs only the B' tokens of each row's block at
cache_index j_r B' (per row) and attends to the cached slots < j_r B' and to itself.
Without the cache (kv_cache=False) every step runs the whole canvas with the block-causal
mask (block(k) <= block(q)) and reads each row's block: the same attention pattern, so at
temperature 0 both give the same tokens (tested).

Batch invariance: a row's noise comes from its own key (`row_keys`, derived by the API
from the seed and the row's prompt, not its batch position) folded with its block and step
index, and everything else a row computes depends only on its own tokens; so a prompt gives
the same tokens alone or inside any batch (up to floating-point differences of batched
matmuls, which did not change any token in the tests).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dllm_jax.models.transformer import init_cache
from dllm_jax.objectives.block_diffusion import block_causal_mask
from dllm_jax.sampling import categorical
from dllm_jax.sampling.diffusion import _reveal


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Static settings of one decoding run (part of the jit cache key). Field names shared
    with diffusion.Plan are what `diffusion._reveal` reads."""

    kind: str
    block_len: int  # B'
    gen_len: int  # N
    steps_per_block: int  # fixed-step samplers and ancestral; ignored by 'threshold'
    kv_cache: bool
    greedy: bool
    top_k: int
    use_top_p: bool
    eos_last: bool
    schedule: str
    vocab_limit: int  # the tokenizer's vocab size: ids >= it are never sampled
    eos_id: int
    pad_id: int
    mask_id: int = -1  # [MASK]; -1 = vocab_limit (the extra id); a released DLM's own piece is < vocab_limit

    @property
    def mask(self) -> int:
        return self.vocab_limit if self.mask_id < 0 else self.mask_id

    @property
    def max_blocks(self) -> int:
        """Most blocks a row visits: its region may start inside a block."""
        return -(-self.gen_len // self.block_len) + 1

    @property
    def max_iters(self) -> int:
        per_block = self.block_len if self.kind == "threshold" else max(self.steps_per_block, 1)
        return self.max_blocks * per_block


@functools.partial(jax.jit, static_argnames=("model", "plan"))
def decode(params, canvas, row_len, row_keys, temperature, top_p, threshold, *, model, plan: BlockPlan):
    """Fill each row's region [row_len, row_len + N) of `canvas` [B, T]. Returns a dict:
    'canvas' [B, T], 'reveal_step' [B, T] (iteration that revealed each position, -1 =
    given / not generated), 'nfe' (network calls for the batch), 'iterations', 'done' [B]."""
    b, total = canvas.shape
    bl, mask_id = plan.block_len, plan.mask
    n_blocks = total // bl
    rows = jnp.arange(b)[:, None]
    offs = jnp.arange(bl)[None, :]
    gen_end = row_len + plan.gen_len
    pattern = block_causal_mask(total, bl)

    def block_index(blk):
        return jnp.minimum(blk, n_blocks - 1)[:, None] * bl + offs  # [B, B'] canvas positions

    def query(x, blk, cache):
        idx = block_index(blk)
        if plan.kv_cache:
            xb = jnp.take_along_axis(x, idx, axis=1)
            logits, _ = model.apply({"params": params}, xb, causal=False, positions=idx, cache=cache, cache_index=idx[:, 0])
            return logits
        logits = model.apply({"params": params}, x, causal=False, attention_mask=pattern)
        return jnp.take_along_axis(logits, idx[:, :, None], axis=1)

    def commit(xb, idx, cache):
        _, cache = model.apply({"params": params}, xb, causal=False, positions=idx, cache=cache, cache_index=idx[:, 0])
        return cache

    def cond_fn(state):
        return (state["iters"] < plan.max_iters) & ~jnp.all(state["done"])

    def body(state):
        x, blk, step, done, cache = state["x"], state["blk"], state["step"], state["done"], state["cache"]
        idx = block_index(blk)
        logits = jax.lax.cond(state["dirty"], lambda: query(x, blk, cache), lambda: state["logits"])
        nfe = state["nfe"] + state["dirty"].astype(jnp.int32)

        shape = (bl, model.cfg.vocab_size)
        words = categorical.row_words(row_keys, blk, step, (bl,), *(() if plan.greedy else (shape, shape)))
        order_u = categorical.uniform_from_bits(words[0])
        xb = jnp.take_along_axis(x, idx, axis=1)
        masked = (xb == mask_id) & ~done[:, None]
        lg = categorical.exclude_ids(logits, plan.vocab_limit, banned=(plan.pad_id, mask_id))
        probs = jax.nn.softmax(lg, axis=-1)
        filt = categorical.filter_logits(lg, temperature=temperature, top_k=plan.top_k, use_top_p=plan.use_top_p, top_p=top_p)
        x0 = categorical.sample(filt, greedy=plan.greedy, hi=None if plan.greedy else words[1], lo=None if plan.greedy else words[2])
        reveal = _reveal(plan, step[:, None], masked, x0, probs, order_u, threshold)
        xb = jnp.where(reveal, x0, xb)
        x = x.at[rows, idx].set(xb)
        rs = jnp.take_along_axis(state["reveal_step"], idx, axis=1)
        reveal_step = state["reveal_step"].at[rows, idx].set(jnp.where(reveal, state["iters"], rs))

        finished = ~done & ~jnp.any(xb == mask_id, axis=1)
        if plan.kv_cache:
            cache = jax.lax.cond(finished.any(), lambda c: commit(xb, idx, c), lambda c: c, cache)
            nfe = nfe + finished.any().astype(jnp.int32)
        in_region = (idx >= row_len[:, None]) & (idx < gen_end[:, None])
        eos = jnp.any((xb == plan.eos_id) & in_region, axis=1)
        new_blk = jnp.where(finished, jnp.minimum(blk, n_blocks - 1) + 1, blk)
        done = done | (finished & (eos | (new_blk * bl >= gen_end)))
        return dict(x=x, blk=new_blk, step=jnp.where(finished, 0, step + 1).astype(jnp.int32), done=done, cache=cache,
                    logits=logits, dirty=reveal.any() | finished.any(), nfe=nfe, iters=state["iters"] + 1, reveal_step=reveal_step)

    cache, nfe = None, jnp.int32(0)
    if plan.kv_cache:  # prefill: the prompt's clean blocks (slots past a row's first block are rewritten before use)
        _, cache = model.apply({"params": params}, canvas, causal=False, attention_mask=pattern, cache=init_cache(model.cfg, b, total),
                               cache_index=0)
        nfe = jnp.int32(1)
    state = dict(
        x=canvas,
        blk=(row_len // bl).astype(jnp.int32),
        step=jnp.zeros((b,), jnp.int32),
        done=jnp.zeros((b,), bool),
        cache=cache,
        logits=jnp.zeros((b, bl, model.cfg.vocab_size), jnp.float32),
        dirty=jnp.bool_(True),
        nfe=nfe,
        iters=jnp.int32(0),
        reveal_step=jnp.full((b, total), -1, jnp.int32),
    )
    final = jax.lax.while_loop(cond_fn, body, state)
    return {"canvas": final["x"], "reveal_step": final["reveal_step"], "nfe": final["nfe"], "iterations": final["iters"],
            "done": final["done"]}


__all__ = ["BlockPlan", "decode"]
