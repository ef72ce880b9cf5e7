"""The Objective interface: everything that differs between AR, MDM and block diffusion.

An objective is one object (built from a run config by `objectives.build`). Training,
evaluation, sampling, FLOPs accounting and the study ask it; they never compare names.

    obj = objectives.build(config)
    prepare = obj.prepare_fn(ids, train=True)           # (tokens [B, L], rng) -> Prepared
    out = obj.forward(model, params, prep.inputs, prep.segment_ids)  # the attention pattern it needs
    ce = token_cross_entropy(out, prep.targets, vocab_limit)
    sums = obj.metrics_from_ce(ce, prep); metrics = obj.finalize(sums)

Class attributes describe the rest: whether likelihoods are exact, which sampler family
decodes it, which estimator the multiple-choice and sequence scorers use, and the names of
its training and validation metrics (what reports and plots show).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from dllm_jax.objectives.common import Prepared


class Objective:
    name: str = ""
    description: str = ""
    causal: bool = False  # plain causal attention (AR); otherwise see `forward`
    exact_likelihood: bool = False  # log-likelihoods are exact (a reference model for genppl)
    sampler_family: str = ""  # 'ar' | 'mdm' | 'block' (dllm_jax.sampling dispatches on it)
    default_sampler: str = ""  # what sampler='auto' means ('threshold' instead when a threshold is given, diffusion only)
    pair_estimator: str = ""  # Scorer kind for log p(answer | context): 'ar' | 'llada' | 'block_llada' | one of `score_fn`'s
    sequence_estimator: str = ""  # Scorer kind for sequence NLL: 'ar' | 'elbo' | 'block_elbo' | one of `score_fn`'s
    single_token_exact: bool = True  # the pair estimator is exact for a one-token answer (one draw suffices)
    train_metrics: tuple = ("loss",)  # keys of `finalize`
    val_metrics: tuple = ("val_loss",)  # keys of `val_record`
    linestyle: str = "-"  # how the study's plots draw its runs
    block_size: int = 0  # block diffusion's block; 0 = none (scorers pad rows to whole blocks)
    ar_adaptation: bool = False  # accepts model.shift_logits / mdm.anneal_steps (AR-to-diffusion adaptation)
    mask_input: bool = False  # the network reads [MASK] tokens (an export's tokenizer_config names the mask id)
    time_proposals: bool = False  # training draws t from `mdm.t_proposal` (objectives.time_proposal); elsewhere it is refused
    defining_keys: tuple = ()  # config keys (besides `objective`) that define what the network learns to predict:
    #                            recorded in an export's `dllm_jax` entry (restored on import) and carried into Scorers

    def __init__(self, config=None):
        """`config`: a run config (ConfigDict); None = the defaults (`dllm_jax.config.default_config`)."""
        if config is None:
            from dllm_jax.config import default_config

            config = default_config()
        self.config = config

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"

    # ---- config -----------------------------------------------------------------------
    def validate(self, config) -> None:
        """Objective-specific config checks (ConfigError naming the key and the fix)."""

    # ---- training -----------------------------------------------------------------------
    def prepare_fn(self, ids, train: bool = True):
        """`prepare(tokens [B, L] int32, rng) -> Prepared`; eval (train=False) turns off
        training-only randomness (input masking, random lengths, realised weighting)."""
        raise NotImplementedError

    def train_prepare_fn(self, ids):
        """`prepare(tokens [B, L] int32, rng, step) -> Prepared` for the training step at `step`
        (int32, traced); the default ignores the step: `prepare_fn(ids, train=True)`."""
        prepare = self.prepare_fn(ids, train=True)
        return lambda tokens, rng, step: prepare(tokens, rng)

    def forward(self, model, params, inputs, segment_ids, **apply_kwargs):
        """The network call with this objective's attention pattern: logits (or hidden states
        with return_hidden=True) for the positions the loss reads."""
        return model.apply({"params": params}, inputs, causal=self.causal, segment_ids=segment_ids, **apply_kwargs)

    def train_attention_mask(self, rng, step, length: int):
        """An extra attention restriction for the training step at `step` (bool [1, 1, L, L],
        ANDed with `forward`'s pattern; block diffusion: its whole pattern at the step's block
        size, [1, 1, 2L, 2L]), or None (the default: none)."""
        return None

    def token_loss(self, out, prep: Prepared, vocab_limit: int, head=None, chunk: int = 0, mask_id: int | None = None):
        """The per-position statistics `metrics_from_ce` reads, from the network's output `out`:
        logits [B, L, V], or with `chunk` > 0 hidden states [B, L, D] and the output `head`
        [D, V] (the loss is then computed `chunk` positions at a time, no [B, L, V] logits).
        Default: the cross-entropy of `prep.targets` over the real ids (< vocab_limit, != mask_id:
        `common.real_ids`), [B, L] float32
        (`dllm_jax.losses.chunked_token_cross_entropy` when chunked). An objective whose loss
        needs the whole predicted distribution returns what its `metrics_from_ce` takes."""
        from dllm_jax import losses
        from dllm_jax.objectives.common import token_cross_entropy

        if chunk:
            return losses.chunked_token_cross_entropy(out, head, prep.targets, vocab_limit, chunk, mask_id)
        return token_cross_entropy(out, prep.targets, vocab_limit, mask_id)

    def metrics_from_ce(self, ce, prep: Prepared) -> dict:
        """Sums (not means) so that micro-batches and hosts add up exactly; see `finalize`.
        `ce`: what `token_loss` returned."""
        return {"loss_sum": jnp.sum(prep.weights * ce), "denom": prep.denom}

    def finalize(self, sums: dict) -> dict:
        """Per-token metrics (keys `train_metrics`) from summed statistics."""
        return {"loss": sums["loss_sum"] / sums["denom"]}

    # ---- validation ---------------------------------------------------------------------
    def val_draws(self, config) -> int:
        """Random (t, mask) draws per validation row (1 for a deterministic objective)."""
        return 1

    def val_record(self, metrics: dict) -> dict:
        """Validation record (keys `val_metrics`) from `finalize`d validation sums."""
        return {"val_loss": metrics["loss"]}

    def score_fn(self, kind: str, logits_fn, spec):
        """A per-batch scoring function for the estimator `kind` (one of `pair_estimator`,
        `sequence_estimator`) when this objective supplies its own, else None (the Scorer's
        built-in 'ar' / 'elbo' / 'llada' / 'block_*'). Signature and outputs: those of
        `dllm_jax.evaluation.likelihood.Scorer._fn` (`(params, tokens, segment_ids, aux, scalar,
        seed, sample_ids) -> tuple`): (value, count, CE sum) for a sequence estimator,
        (value, greedy) for a pair estimator."""
        return None


    # ---- cost ---------------------------------------------------------------------------
    network_copies: int = 1  # sequences the network runs per training row (AR with MIR: 2, the clean row and its masked copy)

    def network_length(self, seq_len: int) -> int:
        """Tokens in each sequence the network processes for a training row of `seq_len` tokens
        (block diffusion: 2 * seq_len, [x_t ; x_0]); there are `network_copies` such sequences."""
        return seq_len

    def train_attention_flops_per_token(self, model_cfg, seq_len: int) -> float:
        """The attention part of `train_flops_per_token` (forward + backward): each of the
        `network_copies` sequences of `network_length` tokens attends over all its tokens
        (`flops.train_attention_flops_per_token`); what a fused kernel does outside XLA's cost
        analysis (dllm_jax.aot)."""
        from dllm_jax import flops

        return self.network_copies * flops.train_attention_flops_per_token(model_cfg, seq_len, self.network_length(seq_len))

    def train_flops_per_token(self, model_cfg, seq_len: int) -> float:
        """Model FLOPs (forward + backward) per training token (dllm_jax.flops)."""
        from dllm_jax import flops

        return flops.train_flops_per_token(model_cfg, seq_len)

    # ---- sampling -----------------------------------------------------------------------
    def sample_defaults(self, config) -> dict:
        """Keyword defaults for `dllm_jax.sampling.generate` that come from the run's config."""
        return {}


def _ppl(loss: float) -> float:
    return float(math.exp(min(float(loss), 50.0)))
