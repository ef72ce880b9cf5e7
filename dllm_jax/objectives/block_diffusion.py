"""Block diffusion ('block_diffusion'; BD3-LM, Arriola et al. 2025, kuleshov-group/bd3lms).

The sequence of L tokens is cut into L / B' blocks of B' = `block_diffusion.block_size`
tokens. Blocks are generated left to right; within a block tokens are masked diffusion
conditioned on the clean preceding blocks. The NELBO is the sum over blocks of the
masked-diffusion ELBO of each block given the clean blocks before it:

    -log p(x) <= sum_b E_{t_b} [ w(t_b) * sum_{masked i in block b} -log p_theta(x_i | x_t^b, x^{<b}) ],

with one t per block (t ~ U(eps, 1), stratified over all the batch's blocks when
`mdm.antithetic`), each token of block b masked with p(t_b) (`mdm.schedule`), and
`loss` = that sum divided by the number of real tokens (per-token NELBO, nats), reported
with the masked CE and mask fraction like the MDM's. B' = L is the MDM; B' = 1 is AR.

Training runs every block in ONE forward pass of 2L tokens (BD3-LM's vectorised input):
inputs = [x_t ; x_0] (noisy half, then clean half), RoPE positions 0..L-1 for both halves,
and the attention mask (`block_attention_mask`)

    noisy query, block b  ->  noisy keys of block b (block-diagonal)
                              clean keys of blocks < b (offset block-causal)
    clean query, block b  ->  clean keys of blocks <= b (block-causal)

intersected with "same document" when data.document_attention (and padding is its own
segment). The loss reads the noisy half only (`out_length=L`: the output head runs on L
positions). Cost: 2L tokens through every layer with 2L keys each, about 2x the MDM's
matmul FLOPs per token and 4x its attention FLOPs (flops.block_diffusion_train_flops_per_token).

Randomness: one key stream per random quantity (the times from one split of the step key,
the masks from another), split exactly as `prepare_mdm` does, so with B' = L the times, the
masks and the loss are the MDM's.

Scoring (dllm_jax.evaluation.likelihood): the sequence NELBO draws a t per block, stratified
over the Monte Carlo draws of a sequence; the conditional log-likelihood of an answer sums,
over the blocks holding answer tokens, LLaDA's exact-l estimator within the block (l of the
block's n answer tokens masked, value (n / l) * sum of their CE), all blocks in one pass.
Sampling is block by block with an exact KV cache (dllm_jax.sampling.block).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_jax.errors import ConfigError
from dllm_jax.objectives.common import (Prepared, TokenIds, elbo_weight, mask_prob, sample_times, segment_ids_from_eos,
                                        token_cross_entropy)
from dllm_jax.objectives.mdm import MaskedDiffusion


def block_attention_mask(length: int, block_size: int, segment_ids=None):
    """BD3-LM's mask for the [x_t ; x_0] input of 2 * `length` tokens: bool [B or 1, 1, 2L, 2L].
    `segment_ids` [B, 2L] (0 = padding) further restricts attention to the same segment."""
    idx = jnp.arange(2 * length)
    noisy = idx < length
    blk = (idx % length) // block_size
    qn, kn = noisy[:, None], noisy[None, :]
    qb, kb = blk[:, None], blk[None, :]
    mask = (qn & kn & (qb == kb)) | (qn & ~kn & (kb < qb)) | (~qn & ~kn & (kb <= qb))
    if segment_ids is None:
        return mask[None, None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (mask[None] & same)[:, None]


def block_causal_mask(length: int, block_size: int):
    """bool [1, 1, L, L]: position q sees k iff block(k) <= block(q) (the clean half's pattern;
    at sampling, a noisy block behind clean blocks sees exactly what training showed it)."""
    blk = jnp.arange(length) // block_size
    return (blk[None, :] <= blk[:, None])[None, None]


def vectorised_positions(batch: int, length: int):
    """RoPE positions [B, 2L] of [x_t ; x_0]: both halves at 0..L-1."""
    pos = jnp.arange(length, dtype=jnp.int32)
    return jnp.broadcast_to(jnp.concatenate([pos, pos]), (batch, 2 * length))


def block_times(rng, batch: int, num_blocks: int, eps: float, antithetic: bool):
    """t [B, num_blocks]: B * num_blocks draws, stratified over all of them when antithetic
    (strata assigned block-major, so a row's blocks get spread-out times); with one block
    exactly `sample_times(rng, B, ...)`."""
    t = sample_times(rng, batch * num_blocks, eps, antithetic)
    return t.reshape(num_blocks, batch).T


def prepare_block_diffusion(tokens, rng, ids: TokenIds, *, block_size: int, schedule: str = "linear", eps: float = 1e-3,
                            antithetic: bool = True, document_attention: bool = False) -> Prepared:
    b, length = tokens.shape
    if length % block_size:
        raise ValueError(f"block_size={block_size} must divide the sequence length {length}")
    nb = length // block_size
    k_t, k_mask, _, _ = jax.random.split(rng, 4)  # the streams of prepare_mdm: times and masks apart
    valid = tokens != ids.pad_id
    t = block_times(k_t, b, nb, eps, antithetic)  # [B, nb]
    t_tok = jnp.repeat(t, block_size, axis=1)  # [B, L]
    masked = (jax.random.uniform(k_mask, (b, length)) < mask_prob(t_tok, schedule)) & valid
    w = elbo_weight(t_tok, schedule).astype(jnp.float32)
    clean = jnp.where(valid, tokens, ids.pad_id)
    x_t = jnp.where(masked, ids.mask_id, clean)
    seg = segment_ids_from_eos(tokens, ids.eos_id) if document_attention else jnp.ones_like(tokens)
    seg = jnp.where(valid, seg, 0)
    weights = masked.astype(jnp.float32) * w
    denom = jnp.maximum(valid.sum().astype(jnp.float32), 1.0)
    extras = {"masked": masked.astype(jnp.float32), "elbo_weights": weights, "t": t}
    return Prepared(jnp.concatenate([x_t, clean], axis=1), tokens, weights, jnp.concatenate([seg, seg], axis=1), denom, extras)


class BlockDiffusion(MaskedDiffusion):
    ar_adaptation = False  # shifted prediction / annealing are MDM recipes; NBDiff's path is not built yet
    name = "block_diffusion"
    description = "block diffusion (BD3-LM): masked diffusion within blocks, autoregressive over blocks"
    sampler_family = "block"
    pair_estimator = "block_llada"
    sequence_estimator = "block_elbo"
    linestyle = "-."

    @property
    def block_size(self) -> int:
        return int(self.config.block_diffusion.block_size)

    def validate(self, config) -> None:
        bs, seq_len = config.block_diffusion.block_size, config.data.seq_len
        if bs < 1 or seq_len % bs:
            raise ConfigError(f"block_diffusion.block_size={bs} must be >= 1 and divide data.seq_len={seq_len}; "
                              f"pick a divisor of {seq_len} (e.g. {max(d for d in (1, 2, 4, 8, 16, 32) if seq_len % d == 0)})")

    def prepare_fn(self, ids, train: bool = True):
        m, doc, bs = self.config.mdm, bool(self.config.data.document_attention), self.block_size
        return lambda tokens, rng: prepare_block_diffusion(tokens, rng, ids, block_size=bs, schedule=m.schedule, eps=m.eps,
                                                           antithetic=m.antithetic, document_attention=doc)

    def forward(self, model, params, inputs, segment_ids, **apply_kwargs):
        """`inputs` [B, 2L] = [x_t ; x_0], `segment_ids` [B, 2L]: outputs of the noisy half [B, L, ...]."""
        b, length = inputs.shape[0], inputs.shape[1] // 2
        mask = block_attention_mask(length, self.block_size, segment_ids)
        return model.apply({"params": params}, inputs, causal=False, positions=vectorised_positions(b, length),
                           attention_mask=mask, out_length=length, **apply_kwargs)

    def train_attention_mask(self, rng, step, length: int):
        return None  # the block pattern is the whole story (mdm.anneal_steps is refused in validate)

    def network_length(self, seq_len: int) -> int:
        return 2 * seq_len

    def train_flops_per_token(self, model_cfg, seq_len: int) -> float:
        from dllm_jax import flops

        return flops.block_diffusion_train_flops_per_token(model_cfg, seq_len)

    def sample_defaults(self, config) -> dict:
        return {"schedule": config.mdm.schedule, "block_length": int(config.block_diffusion.block_size)}


# ---------------------------------------------------------------- scoring (jittable, per batch)
def _row_keys(seed, sample_ids):
    """Per-row (block-time key, mask key), each from its own named stream of `seed`
    (dllm_jax.rng), then the sample id: no two random quantities share bits."""
    from dllm_jax import rng

    t_base, m_base = rng.stream(seed, rng.EVAL_BLOCK_TIME), rng.stream(seed, rng.EVAL_MASK)
    return (jax.vmap(lambda i: jax.random.fold_in(t_base, i))(sample_ids),
            jax.vmap(lambda i: jax.random.fold_in(m_base, i))(sample_ids))


def block_elbo_batch(logits_fn, params, tokens, segment_ids, u, seed, sample_ids, *, block_size: int, schedule: str, eps: float,
                     mask_id: int, vocab_limit: int):
    """One NELBO draw per row of [B, L] `tokens` (L a multiple of block_size, segment 0 =
    padding): t_b = eps + (1 - eps) * ((u + v_b) mod 1) per block, u [B] the row's
    stratified uniform, v_b a uniform shift per block; each real token of block b masked
    with p(t_b); value = sum_b w(t_b) * sum over masked of CE. Returns (value [B], masked count [B],
    unweighted CE sum over the masked tokens [B])."""
    b, length = tokens.shape
    nb = length // block_size
    k_time, k_mask = _row_keys(seed, sample_ids)
    shift = jax.vmap(lambda k: jax.random.uniform(k, (nb,)))(k_time)
    t = eps + (1.0 - eps) * jnp.mod(u[:, None] + shift, 1.0)
    t_tok = jnp.repeat(t, block_size, axis=1)
    valid = segment_ids > 0
    masked = (jax.vmap(lambda k: jax.random.uniform(k, (length,)))(k_mask) < mask_prob(t_tok, schedule)) & valid
    x_t = jnp.where(masked, mask_id, tokens)
    logits = logits_fn(params, jnp.concatenate([x_t, tokens], axis=1), jnp.concatenate([segment_ids, segment_ids], axis=1))
    ce = token_cross_entropy(logits, tokens, vocab_limit)
    value = jnp.sum(elbo_weight(t_tok, schedule) * ce * masked, axis=1)
    return value, masked.sum(axis=1), jnp.sum(ce * masked, axis=1)


def block_llada_batch(logits_fn, params, tokens, segment_ids, answer, u, seed, sample_ids, *, block_size: int, mask_id: int,
                      vocab_limit: int):
    """One block-wise LLaDA draw per row: in every block b with n_b > 0 answer tokens, mask
    exactly l_b = min(1 + floor(u * n_b), n_b) of them (u [B] stratified over the draws;
    u -> 1 masks them all); value = sum_b (n_b / l_b) * sum over masked of CE. Returns
    (value [B], all masked predictions are the argmax [B])."""
    b, length = tokens.shape
    nb = length // block_size
    _, k_mask = _row_keys(seed, sample_ids)
    scores = jnp.where(answer, jax.vmap(lambda k: jax.random.uniform(k, (length,)))(k_mask), 2.0).reshape(b, nb, block_size)
    rank = jnp.argsort(jnp.argsort(scores, axis=2), axis=2)
    n_b = answer.reshape(b, nb, block_size).sum(axis=2)
    l_b = jnp.clip(1 + jnp.floor(u[:, None] * n_b).astype(jnp.int32), 1, jnp.maximum(n_b, 1))
    masked = (answer.reshape(b, nb, block_size) & (rank < l_b[:, :, None])).reshape(b, length)
    x_t = jnp.where(masked, mask_id, tokens)
    logits = logits_fn(params, jnp.concatenate([x_t, tokens], axis=1), jnp.concatenate([segment_ids, segment_ids], axis=1))
    ce = token_cross_entropy(logits, tokens, vocab_limit)
    scale = jnp.repeat(n_b / l_b, block_size, axis=1)
    value = jnp.sum(scale * ce * masked, axis=1)
    real = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -1e30)
    greedy = jnp.all((jnp.argmax(real, axis=-1) == tokens) | ~masked, axis=1)
    return value, greedy
