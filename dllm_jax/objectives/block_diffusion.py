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
`mdm.t_proposal` draws the block times from another proposal as for the MDM
(objectives.time_proposal: the stratified u of all blocks mapped through it; mode
'importance' weights each block by its 1 / q(s), and the logged `elbo` always does).

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

AR-to-block-diffusion adaptation (NBDiff, "From Next-Token to Next-Block", arXiv:2512.06776):
start from an AR run (init.from_workdir / init.from_hf) and

- `block_diffusion.grow_steps` = N > 0: the block size grows from 1 (= AR: every noisy
  token sees only the clean tokens before it) to B' over the first N steps. The schedule
  (`growth_stages`, `block_size_at`) doubles: stages 1, 2, 4, ... (the powers of two below
  B' that divide data.seq_len), then B'; K stages, each held for N / K steps (stage
  floor(s * K / N) at step s), B' from step (K - 1) * N / K on. At every step the attention is
  BD3-LM's pattern at the current block size (causal over the finished blocks, bidirectional
  in the active block) and the loss is the per-token NELBO of that block size: the step
  picks the stage's `prepare_block_diffusion` with `lax.switch` and builds the mask from
  the traced block size, so one compiled step serves the whole schedule.
- `block_diffusion.ar_loss_weight` = w > 0: NBDiff's auxiliary AR loss, added to the
  training objective (the logged `loss` stays the NELBO; `ar_loss` is logged beside it):
  w * the mean next-token CE of the clean half's outputs. A clean query sees its whole
  block (block-causal), so the output at i predicts x_{i+1} without seeing it only where
  i + 1 starts a new block: the AR loss reads exactly those positions (every position at
  block size 1, one per block at B'). The output at i predicting x_{i+1} is what the AR
  run's head was trained for (no shifted head needed).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.errors import ConfigError
from dllm_jax.objectives.common import (Prepared, TokenIds, elbo_weight, mask_prob, mask_unreal, segment_ids_from_eos,
                                        token_cross_entropy)
from dllm_jax.objectives.mdm import MaskedDiffusion
from dllm_jax.objectives.time_proposal import TimeProposal, draw_times, loss_weight


def _pattern(q, k, length: int, block_size):
    """BD3-LM's rule for query / key indices q, k of [x_t ; x_0] (numpy or jax, broadcast)."""
    qn, kn = q < length, k < length
    qb, kb = (q % length) // block_size, (k % length) // block_size
    return (qn & kn & (qb == kb)) | (qn & ~kn & (kb < qb)) | (~qn & ~kn & (kb <= qb))


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class BlockPattern:
    """BD3-LM's static pattern for the [x_t ; x_0] input of 2 * `length` tokens as a function of
    query and key indices, `pattern(q, k) -> bool` (numpy or jax index arrays, broadcast). The
    model evaluates it with numpy for the splash kernel's block-sparse mask
    (dllm_jax.models.splash), with jax iotas for XLA attention (no [2L, 2L] constant in the
    program). A static pytree node: it passes through jit / grad / eval_shape unchanged."""

    length: int
    block_size: int

    def __call__(self, q, k):
        return _pattern(q, k, self.length, self.block_size)


def block_pattern(length: int, block_size):
    """BD3-LM's pattern for the [x_t ; x_0] input of 2 * `length` tokens: bool [2L, 2L]
    (block id = position // block_size): numpy for a Python int `block_size`, a jax array for a
    traced one (NBDiff's growing block size; only XLA attention takes it)."""
    xp = np if isinstance(block_size, (int, np.integer)) else jnp
    idx = xp.arange(2 * length)
    return _pattern(idx[:, None], idx[None, :], length, block_size)


def _with_segments(mask, segment_ids):
    """bool [2L, 2L] (or [1, 1, 2L, 2L]) pattern -> [B or 1, 1, 2L, 2L], restricted to the same
    segment when `segment_ids` [B, 2L] (0 = padding) is given."""
    mask = mask.reshape(mask.shape[-2:])
    if segment_ids is None:
        return mask[None, None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return (mask[None] & same)[:, None]


def block_attention_mask(length: int, block_size, segment_ids=None):
    """BD3-LM's mask for the [x_t ; x_0] input of 2 * `length` tokens: bool [B or 1, 1, 2L, 2L].
    `segment_ids` [B, 2L] (0 = padding) further restricts attention to the same segment."""
    return _with_segments(block_pattern(length, block_size), segment_ids)


def growth_stages(block_size: int, seq_len: int) -> tuple:
    """NBDiff's block-size growth (arXiv:2512.06776), doubling: the powers of two below
    `block_size` that divide `seq_len` (1 always does), then `block_size`."""
    stages, d = [], 1
    while d < block_size:
        if seq_len % d == 0:
            stages.append(d)
        d *= 2
    return tuple(stages) + (block_size,)


def stage_index(step, grow_steps: int, num_stages: int):
    """Stage of training step `step` (int or traced int32): floor(s * K / N), capped at K - 1."""
    s = jnp.minimum(jnp.asarray(step, jnp.int32), grow_steps)
    return jnp.minimum(s * num_stages // grow_steps, num_stages - 1)


def block_size_at(step, block_size: int, seq_len: int, grow_steps: int):
    """The block size at training step `step` (int32 scalar; traced when `step` is)."""
    if grow_steps <= 0:
        return jnp.asarray(block_size, jnp.int32)
    stages = growth_stages(block_size, seq_len)
    return jnp.asarray(stages, jnp.int32)[stage_index(step, grow_steps, len(stages))]


def ar_aux_targets(tokens, ids: TokenIds, block_size: int, *, document_attention: bool = False):
    """NBDiff's auxiliary AR loss on the clean half: (next tokens [B, L], positions read [B, L] float).
    Position i predicts x_{i+1} where i + 1 starts a new block (the clean half sees its whole
    block), both are real tokens and (with document attention) x_i is no EOS, as in `ar.prepare_ar`."""
    length = tokens.shape[1]
    nxt = jnp.concatenate([tokens[:, 1:], jnp.full_like(tokens[:, :1], ids.pad_id)], axis=1)
    pos = jnp.arange(length)
    keep = (((pos + 1) % block_size == 0) & (pos + 1 < length))[None] & (tokens != ids.pad_id) & (nxt != ids.pad_id)
    if document_attention:
        keep = keep & (tokens != ids.eos_id)
    return nxt, keep.astype(jnp.float32)


def block_causal_mask(length: int, block_size: int):
    """bool [1, 1, L, L]: position q sees k iff block(k) <= block(q) (the clean half's pattern;
    at sampling, a noisy block behind clean blocks sees exactly what training showed it)."""
    blk = jnp.arange(length) // block_size
    return (blk[None, :] <= blk[:, None])[None, None]


def vectorised_positions(batch: int, length: int):
    """RoPE positions [B, 2L] of [x_t ; x_0]: both halves at 0..L-1."""
    pos = jnp.arange(length, dtype=jnp.int32)
    return jnp.broadcast_to(jnp.concatenate([pos, pos]), (batch, 2 * length))


def block_times(rng, batch: int, num_blocks: int, eps: float, antithetic: bool, proposal: TimeProposal | None = None):
    """(t [B, num_blocks], importance weight [B, num_blocks] or None): B * num_blocks draws
    from `proposal` (None = uniform), stratified over all of them when antithetic (strata
    assigned block-major, so a row's blocks get spread-out times); with one block exactly
    `time_proposal.draw_times(rng, B, ...)`, the MDM's."""
    t, iw = draw_times(rng, batch * num_blocks, eps, antithetic, proposal)
    per_block = lambda x: x.reshape(num_blocks, batch).T  # noqa: E731
    return per_block(t), None if iw is None else per_block(iw)


def prepare_block_diffusion(tokens, rng, ids: TokenIds, *, block_size: int, schedule: str = "linear", eps: float = 1e-3,
                            antithetic: bool = True, document_attention: bool = False,
                            proposal: TimeProposal | None = None) -> Prepared:
    """One BD3-LM training batch from tokens [B, L] int32 (see the module docstring); inputs
    [B, 2L] = [x_t ; x_0]. `proposal`: where the block times are drawn (None = uniform).
    extras: 'masked' [B, L], 'elbo_weights' [B, L] (w(t_b) * importance weight on masked
    tokens), 't' [B, L / block_size]."""
    b, length = tokens.shape
    if length % block_size:
        raise ValueError(f"block_size={block_size} must divide the sequence length {length}")
    nb = length // block_size
    k_t, k_mask, _, _ = jax.random.split(rng, 4)  # the streams of prepare_mdm: times and masks apart
    valid = tokens != ids.pad_id
    t, iw = block_times(k_t, b, nb, eps, antithetic, proposal)  # [B, nb]
    t_tok = jnp.repeat(t, block_size, axis=1)  # [B, L]
    masked = (jax.random.uniform(k_mask, (b, length)) < mask_prob(t_tok, schedule)) & valid
    w = elbo_weight(t_tok, schedule).astype(jnp.float32)
    clean = jnp.where(valid, tokens, ids.pad_id)
    x_t = jnp.where(masked, ids.mask_id, clean)
    seg = segment_ids_from_eos(tokens, ids.eos_id) if document_attention else jnp.ones_like(tokens)
    seg = jnp.where(valid, seg, 0)
    weights = masked.astype(jnp.float32) * w
    elbo_weights = weights
    if iw is not None:
        iw_tok = jnp.repeat(iw, block_size, axis=1)
        elbo_weights = weights * iw_tok
        if loss_weight(iw, proposal) is not None:
            weights = elbo_weights
    denom = jnp.maximum(valid.sum().astype(jnp.float32), 1.0)
    extras = {"masked": masked.astype(jnp.float32), "elbo_weights": elbo_weights, "t": t}
    return Prepared(jnp.concatenate([x_t, clean], axis=1), tokens, weights, jnp.concatenate([seg, seg], axis=1), denom, extras)


class BlockDiffusion(MaskedDiffusion):
    ar_adaptation = False  # shifted prediction / annealing are MDM recipes; block diffusion adapts by NBDiff's growth
    name = "block_diffusion"
    description = "block diffusion (BD3-LM): masked diffusion within blocks, autoregressive over blocks"
    sampler_family = "block"
    pair_estimator = "block_llada"
    sequence_estimator = "block_elbo"
    linestyle = "-."
    defining_keys = ("mdm.schedule", "block_diffusion.block_size")

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
        proposal = self.time_proposal if train else None
        return lambda tokens, rng: prepare_block_diffusion(tokens, rng, ids, block_size=bs, schedule=m.schedule, eps=m.eps,
                                                           antithetic=m.antithetic, document_attention=doc, proposal=proposal)

    @property
    def grow_steps(self) -> int:
        return int(self.config.block_diffusion.get("grow_steps", 0))

    @property
    def ar_loss_weight(self) -> float:
        return float(self.config.block_diffusion.get("ar_loss_weight", 0.0))

    @property
    def adapting(self) -> bool:
        """NBDiff's adaptation is on (block-size growth or the auxiliary AR loss)."""
        return self.grow_steps > 0 or self.ar_loss_weight > 0

    @property
    def train_metrics(self) -> tuple:
        return MaskedDiffusion.train_metrics + (("ar_loss",) if self.ar_loss_weight > 0 else ())

    def train_prepare_fn(self, ids):
        """Adapting: the stage's `prepare_block_diffusion` (`lax.switch` on the step's stage;
        `extras['t']` per token [B, L] when the block size grows, so all stages agree in shape),
        plus the AR targets of the clean half when ar_loss_weight > 0 (targets [B, 2L])."""
        if not self.adapting:
            return super().train_prepare_fn(ids)
        m, doc, w = self.config.mdm, bool(self.config.data.document_attention), self.ar_loss_weight
        grow, proposal = self.grow_steps, self.time_proposal
        stages = growth_stages(self.block_size, int(self.config.data.seq_len)) if grow else (self.block_size,)

        def at(bs, tokens, rng):
            prep = prepare_block_diffusion(tokens, rng, ids, block_size=bs, schedule=m.schedule, eps=m.eps,
                                           antithetic=m.antithetic, document_attention=doc, proposal=proposal)
            extras = dict(prep.extras)
            if len(stages) > 1:
                extras["t"] = jnp.repeat(prep.extras["t"], bs, axis=1)
            if w > 0:
                nxt, keep = ar_aux_targets(tokens, ids, bs, document_attention=doc)
                # w * denom / count: loss_sum / denom = NELBO + w * (mean AR CE), summing exactly over micro-batches
                extras["ar_mask"] = keep
                extras["ar_weights"] = keep * (w * prep.denom / jnp.maximum(keep.sum(), 1.0))
                prep = dataclasses.replace(prep, targets=jnp.concatenate([tokens, nxt], axis=1))
            return dataclasses.replace(prep, extras=extras)

        branches = [lambda tokens, rng, bs=bs: at(bs, tokens, rng) for bs in stages]

        def prepare(tokens, rng, step):
            if len(branches) == 1:
                return branches[0](tokens, rng)
            return jax.lax.switch(stage_index(step, grow, len(stages)), branches, tokens, rng)

        return prepare

    def forward(self, model, params, inputs, segment_ids, attention_mask=None, **apply_kwargs):
        """`inputs` [B, 2L] = [x_t ; x_0], `segment_ids` [B, 2L]: outputs of the noisy half [B, L, ...].
        `attention_mask` (training while adapting: `train_attention_mask`, the pattern at the
        step's block size) replaces the pattern at block_diffusion.block_size; with it and
        ar_loss_weight > 0 the outputs cover both halves [B, 2L, ...] (the clean half feeds the AR loss)."""
        b, length = inputs.shape[0], inputs.shape[1] // 2
        if attention_mask is None:
            mask, out_length = BlockPattern(length, self.block_size), length  # static
        else:
            mask = attention_mask
            out_length = 2 * length if self.ar_loss_weight > 0 else length
        # the model ANDs the pattern with "same segment" (splash: segment ids; XLA: a dense mask)
        return model.apply({"params": params}, inputs, causal=False, positions=vectorised_positions(b, length),
                           segment_ids=segment_ids, attention_mask=mask, out_length=out_length, **apply_kwargs)

    def train_attention_mask(self, rng, step, length: int):
        """Adapting (NBDiff): the [x_t ; x_0] pattern at the step's block size (`forward` uses it in
        place of the fixed block size's); otherwise None (mdm.anneal_steps is refused). Without
        growth (only the AR loss) it is the static `BlockPattern`, so splash attention applies; a
        growing block size is traced: bool [1, 1, 2L, 2L], and that step uses XLA attention."""
        if not self.adapting:
            return None
        if self.grow_steps <= 0:
            return BlockPattern(length, self.block_size)
        bs = block_size_at(step, self.block_size, int(self.config.data.seq_len), self.grow_steps)
        return block_pattern(length, bs)[None, None]

    def metrics_from_ce(self, ce, prep: Prepared) -> dict:
        """`ce` [B, L] (the noisy half) or, with the AR loss, [B, 2L]: the noisy half gives the
        NELBO sums, the clean half the AR term (`loss_sum` is what the step differentiates,
        `nelbo_sum` what `loss` reports)."""
        length = prep.weights.shape[1]
        if ce.shape[1] == length:
            return super().metrics_from_ce(ce, prep)
        ce_noisy, ce_clean = ce[:, :length], ce[:, length:]
        out = super().metrics_from_ce(ce_noisy, prep)
        out["nelbo_sum"] = out["loss_sum"]
        out["loss_sum"] = out["loss_sum"] + jnp.sum(prep.extras["ar_weights"] * ce_clean)
        out["ar_ce_sum"] = jnp.sum(prep.extras["ar_mask"] * ce_clean)
        out["ar_count"] = jnp.sum(prep.extras["ar_mask"])
        return out

    def finalize(self, sums: dict) -> dict:
        out = super().finalize(sums)
        if "nelbo_sum" in sums:
            out["loss"] = sums["nelbo_sum"] / sums["denom"]
            out["ar_loss"] = sums["ar_ce_sum"] / jnp.maximum(sums["ar_count"], 1.0)
        return out

    def network_length(self, seq_len: int) -> int:
        return 2 * seq_len

    def train_flops_per_token(self, model_cfg, seq_len: int) -> float:
        from dllm_jax import flops

        return flops.block_diffusion_train_flops_per_token(model_cfg, seq_len, clean_head=self.ar_loss_weight > 0)

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
    ce = token_cross_entropy(logits, tokens, vocab_limit, mask_id)
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
    ce = token_cross_entropy(logits, tokens, vocab_limit, mask_id)
    scale = jnp.repeat(n_b / l_b, block_size, axis=1)
    value = jnp.sum(scale * ce * masked, axis=1)
    real = mask_unreal(logits, vocab_limit, mask_id)
    greedy = jnp.all((jnp.argmax(real, axis=-1) == tokens) | ~masked, axis=1)
    return value, greedy
