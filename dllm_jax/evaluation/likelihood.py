"""Likelihood estimators for AR and masked-diffusion LMs, jitted and batched (uniform and
GIDD diffusion supply their own per-batch estimator through `Objective.score_fn`:
dllm_jax.objectives.interpolating.elbo_rows; the orchestration below serves them unchanged).

Three estimators (field notes section 5), all over real tokens only (ids >= the tokenizer's
vocabulary, i.e. [MASK] and padding rows, are excluded from every softmax):

* AR, exact: log p(answer | context) = sum of next-token log-probs of the answer tokens.
* MDM sequence ELBO (validation): -log p(x) <= E_t[w(t) * sum_{masked} CE], t drawn N times
  per sequence, stratified over the N draws (`objectives.sample_times` with antithetic=True),
  each token masked independently with prob p(t) (`objectives.mask_prob`), weight
  `objectives.elbo_weight`, the run's own schedule and eps.
* MDM conditional likelihood (LLaDA): mask exactly l of the L answer tokens (never the
  context), l stratified over the N draws in 1..L, the l positions uniform at random;
  -log p(answer | context) ~= E[(L / l) * sum_{masked} CE]. Optional classifier-free
  guidance: unconditional logits from the input with the context replaced by [MASK],
  logits = u + (w + 1)(c - u).

Both MDM estimators are unbiased estimates of an upper bound on the NLL (an ELBO), not of
the NLL itself; the standard error reported is the Monte Carlo one for fixed data, from the
i.i.d. formula (std / sqrt(N)), which over-states the error of stratified draws slightly
(stratification only lowers variance), so it is conservative.

A run trained with `data.document_attention` is scored the same way: every estimator gives
attention within the EOS-delimited documents of a row (segment ids from EOS), so a packed
validation passage is read as in training.

Shapes: rows are padded to bucketed lengths (powers of two from 8, capped at the run's
`data.seq_len`) and cut into batches of a fixed number of rows, so one shape compiles
per bucket, not per example. Padding is kept out of attention by segment ids (real tokens
1, padding 0). Decisions where the task is silent:
- A context longer than the room left by the answer loses its left part (like the
  harness); an answer longer than the model's length keeps its last tokens, and the
  pair is counted as `truncated`.
- An empty context becomes [EOS] (the token that precedes every document in training);
  it is done for both objectives so that they score the same token sequences.
- AR validation predicts tokens 1..L-1 of each row from their prefix (as in training, the
  first token of a row has no context); MDM validation bounds all L tokens.

Ensembles (`Scorer.for_models`, `dllm-jax eval --workdir A --workdir B ...`): K runs scored as
one model whose predictive distribution at every position is the mean of the members'
probabilities over the real tokens (Kim, Kotha et al., "Pre-training under infinite compute",
arXiv:2509.14786, ensemble by averaging the members' probabilities):
    log p_ens(. | input) = log (1/K) sum_k softmax(logits_k(input)),
computed in log space (`ensemble_logits_fn`) and handed to the same estimators as a model's
logits. For AR that is the log of the mean of the members' next-token probabilities, so the
sequence score is exact for the ensemble's (per-token mixture) distribution. For an MDM the
mean of K denoisers is again a denoiser (a distribution over each masked token given the
partially masked input), so its ELBO and LLaDA estimates are those of a well-defined model:
every member sees the same masks and times (the draws are made once, before the network
calls), the probabilities are averaged at the masked positions, then the estimator weights
the log of the mean as usual. Members must share the tokenizer, objective and sequence length
and the settings that define the estimators (masking schedule and eps, document attention,
block size): a ConfigError names the first that differs. Params of an ensemble are the tuple
of the members' params, in member order.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from dllm_jax import objectives, rng
from dllm_jax.errors import ConfigError
from dllm_jax.objectives import block_diffusion

# logits_fn(params, tokens[B, L] int32, segment_ids[B, L] int32) -> logits[B, L, V] float32
LogitsFn = Callable[[object, jax.Array, jax.Array], jax.Array]

MIN_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
    """What the estimators need to know about a run."""

    objective: str  # a name in dllm_jax.objectives.REGISTRY ('ar' | 'mdm' | 'block_diffusion')
    vocab_limit: int  # the tokenizer's vocab size: ids >= this are not real tokens
    mask_id: int  # [MASK]: == vocab_limit (our runs), or a released DLM's own piece below it (never a real token either)
    eos_id: int
    max_len: int  # longest row the model is asked to score (the run's data.seq_len)
    schedule: str = "linear"  # MDM masking schedule (the run's mdm.schedule)
    eps: float = 1e-3  # MDM t ~ U(eps, 1) (the run's mdm.eps)
    document_attention: bool = False  # every estimator: attention within EOS-delimited documents (segment ids from EOS), as in training
    block_size: int = 0  # block diffusion: rows are padded to a multiple of it (the run's block_diffusion.block_size)
    objective_config: tuple = ()  # ((dotted key, value), ...): the run's values of the objective's `defining_keys` (e.g. gidd.p_u)


@dataclasses.dataclass
class PairScore:
    """Score of one (context, answer) pair."""

    logprob: float  # log p(answer | context) for AR; minus the MC estimate of the bound for MDM
    stderr: float  # Monte Carlo standard error of `logprob` (0 for AR or a 1-token MDM answer)
    greedy: bool  # AR: every answer token is the argmax; MDM: the same with the whole answer masked
    tokens: int  # answer tokens scored
    truncated: bool  # the pair did not fit in max_len


def bucket_length(n: int, max_len: int) -> int:
    """Smallest power of two >= n (at least MIN_BUCKET), capped at max_len."""
    b = MIN_BUCKET
    while b < n:
        b *= 2
    return min(b, max(max_len, n))


# ---------------------------------------------------------------- per-batch math (jittable)
def _real_logits(logits, vocab_limit, mask_id=None):
    return objectives.common.mask_unreal(logits, vocab_limit, mask_id)


def ar_batch(logits_fn: LogitsFn, params, tokens, segment_ids, weights, vocab_limit: int, mask_id: int | None = None):
    """Exact AR scores. `weights[b, i]` (0/1) says whether the prediction made at position i
    (of token i+1) counts, as in `objectives.prepare_ar`. Returns (sum log-prob [B],
    all counted predictions are the argmax [B])."""
    logits = logits_fn(params, tokens, segment_ids)[:, :-1]
    targets = tokens[:, 1:]
    w = weights[:, :-1]
    ce = objectives.token_cross_entropy(logits, targets, vocab_limit, mask_id)
    argmax = jnp.argmax(_real_logits(logits, vocab_limit, mask_id), axis=-1)
    greedy = jnp.all((argmax == targets) | (w == 0), axis=1)
    return -jnp.sum(ce * w, axis=1), greedy


def _uniforms(seed, sample_ids, length):
    """Mask uniforms [B, length] of each draw: stream EVAL_MASK of `seed`, one key per sample id
    (the time / length draws use their own streams, so neither is correlated with the mask)."""
    base = rng.stream(seed, rng.EVAL_MASK)
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(base, i), (length,)))(sample_ids)


def mdm_elbo_batch(logits_fn: LogitsFn, params, tokens, segment_ids, t, seed, sample_ids, spec: ScoreSpec):
    """One continuous-time ELBO draw per row: w(t) * sum over masked real tokens of CE, each
    real token masked with prob p(t). Returns (value [B], masked count [B], unweighted CE sum
    over the masked tokens [B])."""
    valid = segment_ids > 0
    u = _uniforms(seed, sample_ids, tokens.shape[1])
    masked = (u < objectives.mask_prob(t, spec.schedule)[:, None]) & valid
    inputs = jnp.where(masked, spec.mask_id, tokens)
    ce = objectives.token_cross_entropy(logits_fn(params, inputs, segment_ids), tokens, spec.vocab_limit, spec.mask_id)
    ce_sum = jnp.sum(ce * masked, axis=1)
    return objectives.elbo_weight(t, spec.schedule) * ce_sum, masked.sum(axis=1), ce_sum


def exact_l_mask(answer, n_mask, seed, sample_ids):
    """Mask exactly n_mask[b] of the positions where answer[b] is True, uniformly at random."""
    u = _uniforms(seed, sample_ids, answer.shape[1])
    scores = jnp.where(answer, u, 2.0)  # answer positions sort first
    rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)
    return answer & (rank < n_mask[:, None])


def llada_batch(logits_fn: LogitsFn, params, tokens, segment_ids, answer, n_mask, seed, sample_ids, spec: ScoreSpec, cfg_scale: float = 0.0):
    """One LLaDA draw per row: mask exactly n_mask of the answer tokens (never the context);
    value = (L / l) * sum over masked of CE. Returns (value [B], all masked predictions are
    the argmax [B])."""
    masked = exact_l_mask(answer, n_mask, seed, sample_ids)
    inputs = jnp.where(masked, spec.mask_id, tokens)
    logits = logits_fn(params, inputs, segment_ids)
    if cfg_scale:
        context = (segment_ids > 0) & ~answer
        uncond = logits_fn(params, jnp.where(context, spec.mask_id, inputs), segment_ids)
        logits = uncond + (cfg_scale + 1.0) * (logits - uncond)
    ce = objectives.token_cross_entropy(logits, tokens, spec.vocab_limit, spec.mask_id)
    n_answer = answer.sum(axis=1)
    value = n_answer / jnp.maximum(n_mask, 1) * jnp.sum(ce * masked, axis=1)
    argmax = jnp.argmax(_real_logits(logits, spec.vocab_limit, spec.mask_id), axis=-1)
    greedy = jnp.all((argmax == tokens) | ~masked, axis=1)
    return value, greedy


def next_token_batch(logits_fn: LogitsFn, params, tokens, segment_ids, slot, spec: ScoreSpec, masked: bool):
    """log p(token at the slot | the tokens before it) over the real vocabulary, [B, vocab_limit]
    float32: the one distribution every one-token answer after the same context is read from.
    `slot` [B] bool marks one position per row (the answer's). AR: the prediction made one
    position earlier (exact). MDM (`masked`): the slot is replaced by [MASK] and predicted
    there, which is the LLaDA estimate for a one-token answer, exact as well."""
    pos = jnp.argmax(slot, axis=1)
    inputs = jnp.where(slot, spec.mask_id, tokens) if masked else tokens
    logits = logits_fn(params, inputs, segment_ids)
    at = pos if masked else pos - 1
    row = jnp.take_along_axis(logits, at[:, None, None], axis=1)[:, 0, :spec.vocab_limit]
    row = _real_logits(row.astype(jnp.float32), spec.vocab_limit, spec.mask_id)  # an in-vocabulary [MASK]: never an answer
    return (jax.nn.log_softmax(row, axis=-1),)


def ensemble_logits_fn(member_fns: Sequence[LogitsFn], vocab_limit: int, mask_id: int | None = None) -> LogitsFn:
    """A LogitsFn for the ensemble of K members: `fn(params, tokens, segment_ids)` with `params`
    the tuple of the K members' params returns float32 [B, L, vocab_limit + 1], the log of the
    mean of the members' softmax over the real ids (< vocab_limit), computed with logaddexp
    (no probability underflows), and -1e30 in the last column (the extra [MASK] id, never
    predicted) and in the column of an in-vocabulary `mask_id`.
    These log-probabilities are valid logits: every estimator's softmax over the real ids
    returns the ensemble's probabilities. Members may have different output widths (model
    vocab rows); each is read on its real ids only. K copies of one member give that member's
    log-softmax (to float rounding)."""
    fns = tuple(member_fns)
    if not fns:
        raise ValueError("an ensemble needs at least one member")
    log_k = math.log(len(fns))

    def fn(params, tokens, segment_ids):
        if len(params) != len(fns):
            raise ValueError(f"the ensemble has {len(fns)} members but {len(params)} parameter sets were given")
        acc = None
        for f, p in zip(fns, params):
            logits = _real_logits(f(p, tokens, segment_ids)[..., :vocab_limit].astype(jnp.float32), vocab_limit, mask_id)
            lp = jax.nn.log_softmax(logits, axis=-1)
            acc = lp if acc is None else jnp.logaddexp(acc, lp)
        never = jnp.full(acc.shape[:-1] + (1,), -1e30, jnp.float32)
        return jnp.concatenate([acc - log_k, never], axis=-1)

    return fn


# ---------------------------------------------------------------- host-side orchestration
@dataclasses.dataclass
class _Row:
    tokens: np.ndarray  # int32 [n]
    aux: np.ndarray  # [n]: AR weights (float) or MDM answer mask (bool)
    scalar: float = 0.0  # t (ELBO) or l (LLaDA)
    sample_id: int = 0


class Scorer:
    """Batched, jitted estimators for one model, or for an ensemble of K models (`for_models`,
    whose `params` are the tuple of the members' params; `members` = K). Methods take
    `params` so that one Scorer serves a whole training run."""

    def __init__(self, logits_fn: LogitsFn, spec: ScoreSpec, *, batch_size: int = 64, mesh=None, members: int = 1):
        overrides = {"block_diffusion.block_size": spec.block_size} if spec.block_size else {}
        self.objective = objectives.by_name(spec.objective, **{**dict(spec.objective_config), **overrides})  # ValueError for an unknown name
        if self.objective.block_size and not spec.block_size:  # rows are scored in whole blocks of the objective's size
            spec = dataclasses.replace(spec, block_size=self.objective.block_size)
        self.logits_fn = logits_fn
        self.spec = spec
        self.mesh = mesh
        shards = int(mesh.devices.size) if mesh is not None else 1
        self.batch_size = -(-max(int(batch_size), 1) // shards) * shards
        self.members = int(members)
        self._jitted: dict = {}

    @staticmethod
    def _model_parts(model, config, tokenizer):
        """(logits_fn, ScoreSpec) of a dllm_jax Transformer and its run config."""
        objective = objectives.build(config)

        def logits_fn(params, tokens, segment_ids):
            return objective.forward(model, params, tokens, segment_ids)

        spec = ScoreSpec(
            objective=config.objective, vocab_limit=objectives.common.vocab_limit_of(tokenizer), mask_id=tokenizer.mask_id,
            eos_id=tokenizer.eos_id, max_len=int(config.data.seq_len), schedule=config.mdm.schedule,
            eps=float(config.mdm.eps), document_attention=bool(config.data.document_attention),
            block_size=objective.block_size,
            objective_config=tuple((key, _get(config, key)) for key in objective.defining_keys),
        )
        return logits_fn, spec

    @classmethod
    def for_model(cls, model, config, tokenizer, *, batch_size: int = 64, mesh=None) -> "Scorer":
        """A Scorer for a dllm_jax Transformer and its run config."""
        logits_fn, spec = cls._model_parts(model, config, tokenizer)
        return cls(logits_fn, spec, batch_size=batch_size, mesh=mesh)

    # what the members of an ensemble must share: ScoreSpec field -> the config key that sets it
    _SHARED = {"objective": "objective", "max_len": "data.seq_len", "schedule": "mdm.schedule", "eps": "mdm.eps",
               "document_attention": "data.document_attention", "block_size": "block_diffusion.block_size"}

    @classmethod
    def for_models(cls, models, configs, tokenizers, *, names=None, batch_size: int = 64, mesh=None) -> "Scorer":
        """A Scorer for the ensemble of K dllm_jax Transformers with their run configs and
        tokenizers (module docstring: the mean of the members' probabilities); call its methods
        with `params` = the tuple of the K members' params. One member: `for_model`. `names`
        (e.g. the workdirs) label the members in errors. Raises ConfigError when a member's
        tokenizer (fingerprint), objective, the objective's defining keys (`Objective.defining_keys`,
        e.g. gidd.p_u), data.seq_len or estimator setting differs from the first member's."""
        models, configs, tokenizers = list(models), list(configs), list(tokenizers)
        if not models or not len(models) == len(configs) == len(tokenizers):
            raise ValueError(f"{len(models)} models, {len(configs)} configs and {len(tokenizers)} tokenizers: one of each per member")
        if len(models) == 1:
            return cls.for_model(models[0], configs[0], tokenizers[0], batch_size=batch_size, mesh=mesh)
        names = list(names) if names is not None else [f"member {i}" for i in range(len(models))]
        from dllm_jax.errors import ConfigError

        fns, spec = [], None
        for i, (model, config, tok) in enumerate(zip(models, configs, tokenizers)):
            fn, sp = cls._model_parts(model, config, tok)
            fns.append(fn)
            if spec is None:
                spec, first_tok = sp, tok
                continue
            if tok.fingerprint != first_tok.fingerprint:
                raise ConfigError(f"ensemble members must share their tokenizer: {names[0]} has tokenizer {first_tok.fingerprint}, "
                                  f"{names[i]} has {tok.fingerprint}; ensemble runs trained with the same data.tokenizer")
            for field, key in cls._SHARED.items():
                a, b = getattr(spec, field), getattr(sp, field)
                if field in ("schedule", "eps") and objectives.get(spec.objective).exact_likelihood:
                    continue  # the masking schedule is not read by an exact (AR) estimator
                if a != b:
                    raise ConfigError(f"ensemble members must share {key}: {names[0]} has {key}={a!r}, {names[i]} has {key}={b!r}; "
                                      "ensemble runs of one objective, sequence length and estimator settings")
            theirs = dict(sp.objective_config)
            for key, a in spec.objective_config:  # the objective's own defining keys (e.g. gidd.p_u, gidd.gamma)
                if a != theirs.get(key):
                    raise ConfigError(f"ensemble members must share {key}: {names[0]} has {key}={a!r}, {names[i]} has "
                                      f"{key}={theirs.get(key)!r}; ensemble runs of one noise process (the denoiser is the members' mean)")
        return cls(ensemble_logits_fn(fns, spec.vocab_limit, spec.mask_id), spec, batch_size=batch_size, mesh=mesh, members=len(models))

    # -- jit plumbing -----------------------------------------------------------------
    def _fn(self, kind: str, cfg_scale: float = 0.0):
        key = (kind, float(cfg_scale))
        if key not in self._jitted:
            spec, lf = self.spec, self.logits_fn
            own = self.objective.score_fn(kind, lf, spec)  # an objective's own estimator (uniform, gidd)
            if own is not None:  # (a cfg weight never gets here: `loglikelihood` refuses it for every estimator but 'llada')
                fn = own
            elif kind == "ar":
                fn = lambda p, tok, seg, aux, sc, seed, ids: ar_batch(lf, p, tok, seg, aux, spec.vocab_limit, spec.mask_id)
            elif kind in ("next_ar", "next_llada"):
                fn = lambda p, tok, seg, aux, sc, seed, ids: next_token_batch(lf, p, tok, seg, aux, spec, kind == "next_llada")
            elif kind == "elbo":
                fn = lambda p, tok, seg, aux, sc, seed, ids: mdm_elbo_batch(lf, p, tok, seg, sc, seed, ids, spec)
            elif kind == "block_elbo":
                fn = lambda p, tok, seg, aux, sc, seed, ids: block_diffusion.block_elbo_batch(
                    lf, p, tok, seg, sc, seed, ids, block_size=spec.block_size, schedule=spec.schedule, eps=spec.eps,
                    mask_id=spec.mask_id, vocab_limit=spec.vocab_limit)
            elif kind == "block_llada":
                fn = lambda p, tok, seg, aux, sc, seed, ids: block_diffusion.block_llada_batch(
                    lf, p, tok, seg, aux, sc, seed, ids, block_size=spec.block_size, mask_id=spec.mask_id, vocab_limit=spec.vocab_limit)
            else:
                fn = lambda p, tok, seg, aux, sc, seed, ids: llada_batch(
                    lf, p, tok, seg, aux, sc.astype(jnp.int32), seed, ids, spec, cfg_scale)
            # outputs replicated, so that every process can read them
            out = None if self.mesh is None else jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
            self._jitted[key] = jax.jit(fn, out_shardings=out)
        return self._jitted[key]

    def _put(self, x: np.ndarray):
        """A global array split over the batch axes of the mesh (every process holds `x`)."""
        from dllm_jax import sharding

        batch_axes = sharding.batch_sharding(self.mesh).spec[0]
        sh = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(batch_axes, *([None] * (x.ndim - 1))))
        return jax.make_array_from_callback(x.shape, sh, lambda index: x[index])

    def _call(self, fn, params, arrays):
        if self.mesh is None:
            return fn(params, *arrays)
        from dllm_jax import sharding

        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
            return fn(params, *[self._put(a) if isinstance(a, np.ndarray) and a.ndim else a for a in arrays])

    def _run(self, kind: str, params, rows: list[_Row], seed: int = 0, cfg_scale: float = 0.0, doc_segments: bool = False):
        """Evaluate `rows` (any lengths) in bucketed fixed-size batches; outputs in row order."""
        fn = self._fn(kind, cfg_scale)
        outs = None  # one float64 [len(rows), ...] array per output of the estimator
        by_bucket: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            length = bucket_length(len(r.tokens), self.spec.max_len)
            if self.spec.block_size:  # whole blocks, aligned to the row start as in training
                length = -(-length // self.spec.block_size) * self.spec.block_size
            by_bucket.setdefault(length, []).append(i)
        bsz = self.batch_size
        aux_dtype = np.float32 if kind == "ar" else bool
        for length, idx in sorted(by_bucket.items()):
            for start in range(0, len(idx), bsz):
                chunk = idx[start:start + bsz]
                tok = np.zeros((bsz, length), np.int32)
                seg = np.zeros((bsz, length), np.int32)
                aux = np.zeros((bsz, length), aux_dtype)
                sc = np.ones((bsz,), np.float32)
                ids = np.zeros((bsz,), np.uint32)
                for j, i in enumerate(chunk):
                    r = rows[i]
                    n = len(r.tokens)
                    tok[j, :n] = r.tokens
                    seg[j, :n] = 1
                    aux[j, :n] = r.aux
                    sc[j] = r.scalar
                    ids[j] = r.sample_id
                if doc_segments:
                    seg = np.asarray(np.where(seg > 0, objectives.segment_ids_from_eos(jnp.asarray(tok), self.spec.eos_id), 0), np.int32)
                res = [np.asarray(x, np.float64) for x in jax.device_get(self._call(fn, params, (tok, seg, aux, sc, np.int32(seed), ids)))]
                if outs is None:
                    outs = [np.zeros((len(rows),) + x.shape[1:], np.float64) for x in res]
                for o, x in zip(outs, res):
                    o[chunk] = x[:len(chunk)]
        return tuple(outs)

    # -- public estimators --------------------------------------------------------------
    def _fit(self, context: Sequence[int], answer: Sequence[int]):
        """(tokens, number of answer tokens kept, truncated) for one pair."""
        context = list(context) or [self.spec.eos_id]
        answer = list(answer)
        full = context + answer
        room = self.spec.max_len
        truncated = len(full) > room
        full = full[-room:]
        keep = min(len(answer), len(full) - 1)  # AR needs one context token; MDM gets the same rows
        return np.asarray(full, np.int32), keep, truncated or keep < len(answer)

    def loglikelihood(self, params, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, mc_samples: int = 16,
                      seed: int = 0, cfg_scale: float = 0.0, greedy: bool = False,
                      groups: Sequence[int] | None = None) -> list[PairScore]:
        """log p(answer | context) per (context ids, answer ids) pair: exact for AR, the LLaDA
        estimate with `mc_samples` draws for MDM (one draw for a one-token answer, where the
        estimator is exact). `greedy=True` (MDM) adds one pass with the whole answer masked to
        report whether the answer is the argmax; AR always reports it.

        `groups` (one int per pair): pairs of one group share their Monte Carlo draws (common
        random numbers: the same stratified l values and the same mask uniforms, so answers of
        equal length at the same positions get the same masked positions). Default: the pairs
        with the same context form a group, i.e. the choices of a multiple-choice item, however
        the caller batches them (`dllm-jax eval` and the lm-eval adapter give the same values).
        Each pair's estimate has the same distribution either way; what sharing changes is that
        the difference between two choices, which decides a multiple-choice prediction, loses
        most of its Monte Carlo variance (identical choices get identical scores)."""
        if cfg_scale:
            if not (math.isfinite(cfg_scale) and cfg_scale > 0):
                raise ConfigError(f"cfg={cfg_scale!r} must be a finite number >= 0 (0 = no classifier-free guidance)")
            if self.objective.pair_estimator != "llada":
                raise ConfigError(f"cfg={cfg_scale!r}: classifier-free guidance is implemented for the masked-diffusion (mdm) "
                                  f"likelihood only, not for objective {self.spec.objective!r}; use cfg=0 (drop --cfg)")
        if not pairs:
            return []
        if groups is not None and len(groups) != len(pairs):
            raise ValueError(f"groups has {len(groups)} entries for {len(pairs)} pairs")
        fitted = []
        for k, (ctx, ans) in enumerate(pairs):
            if len(ans) == 0:
                raise ValueError(f"pair {k}: the answer has no tokens; every choice must encode to at least one token")
            fitted.append(self._fit(ctx, ans))
        out: list[PairScore | None] = [None] * len(fitted)
        if self.objective.pair_estimator in ("ar", "llada") and not cfg_scale:
            self._one_token_answers(params, fitted, out)
        todo = [k for k in range(len(fitted)) if out[k] is None]
        if not todo:
            return out
        if self.objective.exact_likelihood:
            rows = []
            for k in todo:
                tokens, keep, _ = fitted[k]
                w = np.zeros(len(tokens), np.float32)
                w[len(tokens) - keep - 1:len(tokens) - 1] = 1.0  # predictions of the last `keep` tokens
                rows.append(_Row(tokens, w))
            lp, gr = self._run("ar", params, rows, doc_segments=self.spec.document_attention)
            for i, k in enumerate(todo):
                out[k] = PairScore(float(lp[i]), 0.0, bool(gr[i]), fitted[k][1], fitted[k][2])
            return out

        kind = self.objective.pair_estimator  # 'llada', or 'block_llada' (takes the stratified u itself, not l)
        n = max(int(mc_samples), 1)
        rows, owner = [], []
        key = rng.stream(seed, rng.EVAL_LENGTH)
        if groups is None:  # one group per distinct context, numbered in order of appearance
            first: dict[bytes, int] = {}
            group_of = [first.setdefault(t[:len(t) - keep].tobytes(), len(first)) for t, keep, _ in fitted]
        else:
            group_of = [int(g) for g in groups]
        for k in todo:
            tokens, keep, _ = fitted[k]
            ans = np.zeros(len(tokens), bool)
            ans[len(tokens) - keep:] = True
            draws = 1 if keep == 1 and self.objective.single_token_exact else n
            g = group_of[k]
            # l stratified over the draws: u_j = (u + j/N) mod 1 -> l = 1 + floor(u_j * L)
            u = np.asarray(objectives.sample_times(jax.random.fold_in(key, g), draws, 0.0, True), np.float64)
            for j in range(draws):
                l = min(1 + int(u[j] * keep), keep)
                owner.append(k)
                # the mask uniforms' key: (group, draw), so a group's pairs share it
                rows.append(_Row(tokens, ans, float(l) if kind == "llada" else float(u[j]), sample_id=g * n + j))
        vals, _ = self._run(kind, params, rows, seed=seed, cfg_scale=cfg_scale, doc_segments=self.spec.document_attention)
        owner = np.asarray(owner)
        greedy_flags = np.zeros(len(fitted), bool)
        if greedy:
            grows = []
            for k in todo:
                tokens, keep, _ = fitted[k]
                ans = np.zeros(len(tokens), bool)
                ans[len(tokens) - keep:] = True
                grows.append(_Row(tokens, ans, float(keep) if kind == "llada" else 1.0))  # u = 1: everything masked
            _, g = self._run(kind, params, grows, seed=seed, cfg_scale=cfg_scale, doc_segments=self.spec.document_attention)
            greedy_flags[todo] = g > 0.5
        for k in todo:
            _, keep, trunc = fitted[k]
            v = vals[owner == k]
            se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
            out[k] = PairScore(-float(v.mean()), se, bool(greedy_flags[k]), keep, trunc)
        return out

    def _one_token_answers(self, params, fitted, out) -> None:
        """Score every pair whose (fitted) answer is one token from one forward pass per distinct
        context, filling `out`: the answer token does not enter its own prediction (AR predicts
        it from the position before, the MDM from [MASK] in its place), so all the one-token
        choices of a multiple-choice item are read from one distribution. Same values as the
        per-pair path (exact for both objectives), a fraction of its cost."""
        by_context: dict[bytes, list[int]] = {}
        for k, (tokens, keep, _) in enumerate(fitted):
            if keep == 1:
                by_context.setdefault(tokens[:-1].tobytes(), []).append(k)
        if not by_context:
            return
        rows = []
        for ks in by_context.values():
            tokens = fitted[ks[0]][0]
            slot = np.zeros(len(tokens), bool)
            slot[-1] = True
            rows.append(_Row(tokens, slot))
        (logp,) = self._run("next_ar" if self.objective.exact_likelihood else "next_llada", params, rows,
                            doc_segments=self.spec.document_attention)
        for r, ks in enumerate(by_context.values()):
            best = int(np.argmax(logp[r]))
            for k in ks:
                tokens, keep, trunc = fitted[k]
                answer = int(tokens[-1])
                out[k] = PairScore(float(logp[r, answer]), 0.0, best == answer, keep, trunc)

    def blank_logprobs(self, params, passages: Sequence[Sequence[int]], blanks: Sequence[int],
                       choices: Sequence[Sequence[int]]) -> np.ndarray:
        """Two-sided cloze scores: log p(choice | every other token of the passage) for a one-token
        blank, renormalised over each item's choices, float64 [N, C] (nats; each row's exp sums to 1).

        `passages[i]` (token ids, at most the run's `data.seq_len`) has its blank at index
        `blanks[i]`, whose own token is ignored; `choices[i]` are C candidate token ids. Exact for
        both objectives: AR through the chain rule, log p(x with c) = const + sum over positions
        j >= blank of log p(x_j | x_<j) (one pass per choice; the prefix term is the same for every
        choice and cancels in the renormalisation); MDM from one pass with [MASK] in the blank
        (the model's p(x_blank | x_rest), LLaDA's exact one-token case). Renormalising over the
        choices gives both the same quantity, p(c | rest, c in choices). Raises ValueError for
        block diffusion (its [x_t ; x_0] layout has no single-[MASK] conditional here), a passage
        longer than `max_len`, a blank at index 0 or outside the passage, or a choice that is not a
        real token id."""
        if not (len(passages) == len(blanks) == len(choices)):
            raise ValueError(f"{len(passages)} passages, {len(blanks)} blanks and {len(choices)} choice lists: one of each per item")
        if self.objective.pair_estimator not in ("ar", "llada"):
            raise ValueError(f"two-sided cloze scores AR and MDM runs, not objective={self.spec.objective!r}")
        rows, lengths = [], {len(c) for c in choices}
        if len(lengths) != 1:
            raise ValueError(f"every item needs the same number of choices, got {sorted(lengths)}")
        n_choices = lengths.pop()
        for i, (tokens, b) in enumerate(zip(passages, blanks)):
            tokens = np.asarray(tokens, np.int32)
            if len(tokens) > self.spec.max_len or not 1 <= int(b) < len(tokens):
                raise ValueError(f"item {i}: blank {b} of a {len(tokens)}-token passage (at most {self.spec.max_len} tokens; "
                                 "the blank after the first token, which has no prediction of its own for AR)")
            if not all(0 <= int(c) < self.spec.vocab_limit and int(c) != self.spec.mask_id for c in choices[i]):
                raise ValueError(f"item {i}: choices {list(choices[i])} must be real token ids in [0, {self.spec.vocab_limit}), "
                                 f"not the mask id {self.spec.mask_id}")
            if self.objective.exact_likelihood:
                w = np.zeros(len(tokens), np.float32)
                w[max(int(b) - 1, 0):len(tokens) - 1] = 1.0  # predictions of tokens blank..end
                for c in choices[i]:
                    x = tokens.copy()
                    x[int(b)] = int(c)
                    rows.append(_Row(x, w))
            else:
                slot = np.zeros(len(tokens), bool)
                slot[int(b)] = True
                rows.append(_Row(tokens, slot))
        docs = self.spec.document_attention  # attention within EOS-delimited documents, as in training
        if self.objective.exact_likelihood:
            lp, _ = self._run("ar", params, rows, doc_segments=docs)
            lp = lp.reshape(len(passages), n_choices)
        else:
            (logp,) = self._run("next_llada", params, rows, doc_segments=docs)
            lp = np.take_along_axis(logp, np.asarray(choices, np.int64), axis=1)
        top = lp.max(axis=1, keepdims=True)
        return lp - top - np.log(np.exp(lp - top).sum(axis=1, keepdims=True))

    def sequence_nll(self, params, sequences: np.ndarray, *, mc_samples: int = 16, seed: int = 0) -> dict:
        """Per-token NLL of fixed-length sequences [M, L] (e.g. validation rows): exact for AR
        (tokens 1..L-1 given their prefix, as training counts them), the continuous-time ELBO
        with `mc_samples` stratified draws per sequence for MDM. Returns totals and
        per-token values in nats and bits, a perplexity (AR) or perplexity upper bound (MDM),
        and for MDM the Monte Carlo standard error and `masked_ce` (mean CE of the masked
        tokens). Training-time validation calls this too (`train.evaluate`): one estimator.
        Draw j of row i uses stream keys of `seed` indexed by row and sample id i * N + j, so a
        row's value does not depend on the batch size."""
        seqs = np.asarray(sequences, np.int32)
        if seqs.ndim != 2 or seqs.shape[0] == 0:
            raise ValueError(f"sequences must be a non-empty [M, L] array, got shape {seqs.shape}")
        m, length = seqs.shape
        if self.objective.exact_likelihood:
            ids = objectives.TokenIds(pad_id=-1, eos_id=self.spec.eos_id, mask_id=self.spec.mask_id, vocab_limit=self.spec.vocab_limit)
            prep = objectives.prepare_ar(jnp.asarray(seqs), None, ids, document_attention=self.spec.document_attention)
            weights = np.asarray(prep.weights)
            rows = [_Row(seqs[i], weights[i]) for i in range(m)]
            lp, _ = self._run("ar", params, rows, doc_segments=self.spec.document_attention)
            count = float(weights.sum())
            nll = -float(lp.sum())
            out = {"exact": True, "sequences": m, "tokens": int(count), "nll_total": nll}
            per = nll / max(count, 1.0)
            out.update(nats_per_token=per, bits_per_token=per / math.log(2), perplexity=float(np.exp(min(per, 50.0))))
            return out
        n = max(int(mc_samples), 1)
        keys = jax.random.split(rng.stream(seed, rng.EVAL_TIME), m)
        times = np.asarray(jax.vmap(lambda k: objectives.sample_times(k, n, self.spec.eps, True))(keys), np.float32)
        if self.objective.sequence_estimator == "block_elbo":  # the stratified u; each block shifts it (block_elbo_batch)
            times = (times - self.spec.eps) / (1.0 - self.spec.eps)
        rows = [_Row(seqs[i], np.ones(length, bool), float(times[i, j]), sample_id=i * n + j) for i in range(m) for j in range(n)]
        kind = self.objective.sequence_estimator
        vals, n_masked, ce_sums = self._run(kind, params, rows, seed=seed, doc_segments=self.spec.document_attention)
        vals = vals.reshape(m, n)
        tokens = m * length
        total = float(vals.mean(axis=1).sum())
        var = float((vals.var(axis=1, ddof=1) / n).sum()) if n > 1 else float("nan")
        per = total / tokens
        out = {"exact": False, "sequences": m, "tokens": tokens, "mc_samples": n, "nelbo_total": total,
               "nats_per_token": per, "bits_per_token": per / math.log(2),
               "stderr_nats_per_token": math.sqrt(var) / tokens if n > 1 else None,
               "perplexity_bound": float(np.exp(min(per, 50.0))),
               "masked_ce": float(ce_sums.sum() / max(n_masked.sum(), 1.0))}
        return out


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def rolling_windows(tokens: Sequence[int], max_len: int, prefix_id: int) -> list[tuple[list[int], list[int]]]:
    """(context, continuation) pairs whose continuations partition `tokens` in order, each
    pair at most `max_len` long and each continuation seeing as much preceding text as fits
    (the first one sees only `prefix_id`). Summing their log-likelihoods gives the
    log-likelihood of a text of any length."""
    tokens = list(tokens)
    if max_len < 2:
        raise ValueError(f"max_len={max_len} must be >= 2")
    step = max_len - 1
    history = [prefix_id] + tokens
    out = []
    for start in range(0, len(tokens), step):
        cont = tokens[start:start + step]
        ctx_room = max_len - len(cont)
        ctx = history[max(0, start + 1 - ctx_room):start + 1]
        out.append((ctx, cont))
    return out


__all__ = ["ScoreSpec", "PairScore", "Scorer", "bucket_length", "ar_batch", "mdm_elbo_batch", "llada_batch",
           "exact_l_mask", "rolling_windows", "ensemble_logits_fn"]
