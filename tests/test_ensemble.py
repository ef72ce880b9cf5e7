"""Ensembles in evaluation (Kim, Kotha et al. arXiv:2509.14786): a Scorer over several param sets
whose distribution is the mean of the members' probabilities. Two toy members against brute
force for AR and MDM, K copies of one model against that model, member checks, the CLI and
the lm-eval adapter."""

import json
import math
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dllm_jax import config as C
from dllm_jax import objectives, rng, train_step
from dllm_jax.errors import ConfigError
from dllm_jax.evaluation import likelihood
from dllm_jax.evaluation.likelihood import Scorer, ScoreSpec, ensemble_logits_fn

V = 5  # real tokens 0..4; id 5 = [MASK]; row 6 is not a real token
MASK = V
ROWS = V + 2


def _tables():
    r = np.random.RandomState(0)
    a, b = r.randn(ROWS, ROWS).astype(np.float32) * 1.5, r.randn(ROWS, ROWS).astype(np.float32) * 1.5
    a[:, V:] = b[:, V:] = 8.0  # non-token rows get large logits: an ensemble that forgot to drop them would be far off
    return a, b


def left_bigram(params, tokens, segment_ids):
    """logits at position i = params[token at i] for AR (predicts i + 1); for the MDM, used on the
    left neighbour's input (so a masked neighbour changes the prediction)."""
    return params[tokens]


def left_neighbour(params, tokens, segment_ids):
    prev = jnp.concatenate([jnp.full_like(tokens[:, :1], MASK), tokens[:, :-1]], axis=1)
    return params[prev] + 0.5 * params[tokens][..., ::-1]  # also reads its own input ([MASK] or a token)


def _softmax_real(x):
    x = np.asarray(x, np.float64)[..., :V]
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _spec(objective, max_len=16):
    return ScoreSpec(objective=objective, vocab_limit=V, mask_id=MASK, eos_id=2, max_len=max_len)


def _ensemble(fn, objective):
    return Scorer(ensemble_logits_fn([fn, fn], V), _spec(objective), batch_size=8, members=2)


def test_two_member_ar_ensemble_is_the_log_of_the_mean_next_token_probability():
    ta, tb = _tables()
    scorer = _ensemble(left_bigram, "ar")
    seqs = np.array([[0, 3, 1, 4, 2, 2, 0, 1], [4, 4, 0, 1, 3, 2, 1, 0]])
    got = scorer.sequence_nll((ta, tb), seqs)
    nll = 0.0
    for row in seqs:
        for i in range(len(row) - 1):
            p = 0.5 * (_softmax_real(ta[row[i]]) + _softmax_real(tb[row[i]]))
            nll -= math.log(p[row[i + 1]])
    assert got["exact"] and got["tokens"] == 14
    assert got["nll_total"] == pytest.approx(nll, rel=1e-5)
    # a multi-token answer: the sum of the ensemble's log-probabilities of its tokens
    ctx, ans = [0, 3], [1, 4, 2]
    (s,) = scorer.loglikelihood((ta, tb), [(ctx, ans)])
    full = ctx + ans
    want = sum(math.log(0.5 * (_softmax_real(ta[full[i - 1]]) + _softmax_real(tb[full[i - 1]]))[full[i]]) for i in range(2, 5))
    assert s.logprob == pytest.approx(want, rel=1e-5) and s.stderr == 0.0
    # ... which is not the mean of the members' log-likelihoods (a product of mixtures, not a mixture of products)
    single = [Scorer(left_bigram, _spec("ar")).loglikelihood(t, [(ctx, ans)])[0].logprob for t in (ta, tb)]
    assert abs(s.logprob - np.mean(single)) > 1e-3


def _elbo_draws(seqs, n, seed, eps=1e-3):
    """The (t, mask) draws of Scorer.sequence_nll for rows `seqs` (its streams, recomputed)."""
    m, length = seqs.shape
    keys = jax.random.split(rng.stream(seed, rng.EVAL_TIME), m)
    times = np.asarray(jax.vmap(lambda k: objectives.sample_times(k, n, eps, True))(keys), np.float32)
    ids = jnp.arange(m * n, dtype=jnp.uint32)
    u = np.asarray(likelihood._uniforms(seed, ids, length)).reshape(m, n, length)
    return times, u < times[..., None]  # linear schedule: p(t) = t


def test_two_member_mdm_ensemble_elbo_is_the_averaged_denoisers_elbo_by_brute_force():
    ta, tb = _tables()
    scorer = _ensemble(left_neighbour, "mdm")
    seqs = np.array([[0, 3, 1, 4, 2, 2, 0, 1], [4, 4, 0, 1, 3, 2, 1, 0]])
    n, seed = 5, 3
    got = scorer.sequence_nll((ta, tb), seqs, mc_samples=n, seed=seed)
    times, masks = _elbo_draws(seqs, n, seed)
    total = 0.0
    for i, row in enumerate(seqs):
        values = []
        for j in range(n):
            x = np.where(masks[i, j], MASK, row)
            probs = 0.5 * (_softmax_real(left_neighbour(ta, jnp.asarray(x[None]), None)[0]) +
                           _softmax_real(left_neighbour(tb, jnp.asarray(x[None]), None)[0]))  # same mask for both
            ce = -np.log(probs[np.arange(len(row)), row])
            values.append(float((ce * masks[i, j]).sum()) / times[i, j])  # w(t) = 1 / t
        total += np.mean(values)
    assert masks.sum() > 10  # the check reads real masked positions
    assert got["nelbo_total"] == pytest.approx(total, rel=1e-5)
    assert got["nats_per_token"] == pytest.approx(total / seqs.size, rel=1e-5)
    # a one-token answer (LLaDA's exact case): log of the mean of the members' p at the [MASK]
    ctx, ans = [0, 3, 1], [4]
    (s,) = scorer.loglikelihood((ta, tb), [(ctx, ans)], mc_samples=8)
    x = jnp.asarray([ctx + [MASK]])
    p = 0.5 * (_softmax_real(left_neighbour(ta, x, None)[0, -1]) + _softmax_real(left_neighbour(tb, x, None)[0, -1]))
    assert s.logprob == pytest.approx(math.log(p[4]), rel=1e-5) and s.stderr == 0.0


# ---------------------------------------------------------------- real models: K copies == the model
@pytest.fixture(scope="module")
def tiny():
    cfg = C.default_config()
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.d_ff, cfg.model.vocab_multiple = 32, 2, 2, 64, 8
    cfg.data.seq_len = 16
    model = train_step.build_model(cfg, 20)
    params = jax.jit(lambda k: nn.meta.unbox(model.init(k, jnp.zeros((1, 16), jnp.int32), causal=False)["params"]))(jax.random.key(0))
    tok = types.SimpleNamespace(fingerprint="tok0", mask_id=20, eos_id=2)
    return cfg, model, params, tok


def _cfg(base, **overrides):
    cfg = C.complete(base.to_dict())
    for k, v in overrides.items():
        C.set_key(cfg, k, v)
    return cfg


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_k_copies_of_one_run_score_as_that_run(tiny, objective):
    base, model, params, tok = tiny
    cfg = _cfg(base, objective=objective)
    one = Scorer.for_model(model, cfg, tok, batch_size=8)
    three = Scorer.for_models([model] * 3, [cfg] * 3, [tok] * 3, batch_size=8)
    assert three.members == 3 and one.members == 1
    p3 = (params, params, params)
    seqs = np.random.RandomState(1).randint(3, 20, (6, 16))
    a, b = one.sequence_nll(params, seqs, mc_samples=4), three.sequence_nll(p3, seqs, mc_samples=4)
    assert a["nats_per_token"] == pytest.approx(b["nats_per_token"], rel=1e-5)
    if objective == "mdm":
        assert a["masked_ce"] == pytest.approx(b["masked_ce"], rel=1e-5)
    pairs = [([3, 4, 5, 6], [7, 8, 9]), ([10, 11], [12]), ([5, 5, 5, 5, 5], [6, 7])]
    for x, y in zip(one.loglikelihood(params, pairs, mc_samples=4, greedy=True), three.loglikelihood(p3, pairs, mc_samples=4, greedy=True)):
        assert y.logprob == pytest.approx(x.logprob, rel=1e-5, abs=1e-5) and y.greedy == x.greedy
    passages, blanks, choices = [[3, 4, 5, 6, 7, 8]], [2], [[5, 9, 10]]
    np.testing.assert_allclose(three.blank_logprobs(p3, passages, blanks, choices), one.blank_logprobs(params, passages, blanks, choices),
                               rtol=1e-5, atol=1e-6)


def test_ensemble_of_two_real_models_differs_from_each_and_is_order_free(tiny):
    base, model, params, tok = tiny
    cfg = _cfg(base, objective="ar")
    other = jax.jit(lambda k: nn.meta.unbox(model.init(k, jnp.zeros((1, 16), jnp.int32), causal=False)["params"]))(jax.random.key(1))
    two = Scorer.for_models([model, model], [cfg, cfg], [tok, tok], batch_size=8)
    seqs = np.random.RandomState(2).randint(3, 20, (4, 16))
    ab, ba = two.sequence_nll((params, other), seqs), two.sequence_nll((other, params), seqs)
    assert ab["nll_total"] == pytest.approx(ba["nll_total"], rel=1e-6)
    singles = [Scorer.for_model(model, cfg, tok).sequence_nll(p, seqs)["nll_total"] for p in (params, other)]
    # log of a mean >= mean of logs (Jensen): the ensemble's NLL is at most the members' mean NLL
    assert ab["nll_total"] < np.mean(singles) - 1e-3


@pytest.mark.parametrize("overrides, tok_fp, match", [
    ({"objective": "mdm"}, "tok0", "ensemble members must share objective: A has objective='ar', B has objective='mdm'"),
    ({"data.seq_len": 32}, "tok0", "must share data.seq_len: A has data.seq_len=16, B has data.seq_len=32"),
    ({}, "tok1", "must share their tokenizer: A has tokenizer tok0, B has tok1"),
    ({"data.document_attention": True}, "tok0", "must share data.document_attention"),
])
def test_members_must_share_tokenizer_objective_and_length(tiny, overrides, tok_fp, match):
    base, model, _, tok = tiny
    a = _cfg(base, objective="ar")
    b = _cfg(a, **overrides)
    with pytest.raises(ConfigError, match=match):
        Scorer.for_models([model, model], [a, b], [tok, types.SimpleNamespace(fingerprint=tok_fp, mask_id=20, eos_id=2)], names=["A", "B"])


def test_mdm_members_must_share_the_schedule_ar_members_need_not(tiny):
    base, model, _, tok = tiny
    mdm = _cfg(base, objective="mdm")
    with pytest.raises(ConfigError, match="must share mdm.schedule"):
        Scorer.for_models([model] * 2, [mdm, _cfg(mdm, **{"mdm.schedule": "cosine"})], [tok] * 2)
    ar = _cfg(base, objective="ar")
    assert Scorer.for_models([model] * 2, [ar, _cfg(ar, **{"mdm.schedule": "cosine"})], [tok] * 2).members == 2


def test_members_must_share_the_objectives_defining_keys(tiny):
    """GIDD members with another p_u (or gamma) are another noise process: refused, naming the key."""
    base, model, _, tok = tiny
    gidd = _cfg(base, objective="gidd", **{"gidd.p_u": 0.2})
    with pytest.raises(ConfigError, match="must share gidd.p_u: A has gidd.p_u=0.2, B has gidd.p_u=0.0"):
        Scorer.for_models([model] * 2, [gidd, _cfg(gidd, **{"gidd.p_u": 0.0})], [tok] * 2, names=["A", "B"])
    assert Scorer.for_models([model] * 2, [gidd, _cfg(gidd, **{"train.member_seed": 1})], [tok] * 2).members == 2


@pytest.mark.parametrize("objective", ["ar", "block_diffusion", "uniform", "gidd"])
def test_cfg_is_refused_where_no_estimator_uses_it(tiny, objective):
    """Classifier-free guidance in scoring is the MDM's LLaDA estimator only: elsewhere a cfg
    weight is one ConfigError (it was silently ignored for AR, a traceback for the others);
    a negative or non-finite weight is refused for the MDM too."""
    base, model, params, tok = tiny
    over = {"block_diffusion.block_size": 4} if objective == "block_diffusion" else {}
    scorer = Scorer.for_model(model, _cfg(base, objective=objective, **over), tok, batch_size=8)
    with pytest.raises(ConfigError, match=f"classifier-free guidance is implemented for the masked-diffusion .* not for objective '{objective}'"):
        scorer.loglikelihood(params, [([3, 4], [5])], cfg_scale=1.0)
    mdm = Scorer.for_model(model, _cfg(base, objective="mdm"), tok, batch_size=8)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="must be a finite number >= 0"):
            mdm.loglikelihood(params, [([3, 4], [5])], cfg_scale=bad)


# ---------------------------------------------------------------- CLI and lm-eval adapter
def test_cli_ensemble_of_copies_equals_the_run_and_refuses_what_it_cannot_do(trained_runs, tmp_path):
    from dllm_jax.cli import main

    ar, mdm = trained_runs["ar"], trained_runs["mdm"]
    single = tmp_path / "single.json"
    assert main(["eval", "--workdir", ar, "--task", "val", "--limit", "8", "--output", str(single)]) == 0
    assert main(["eval", "--workdir", ar, "--workdir", ar, "--task", "val", "--limit", "8"]) == 0
    (name,) = os.listdir(os.path.join(ar, "eval", "ensemble"))
    assert name.startswith("val-2runs-") and name.endswith(".json")
    with open(os.path.join(ar, "eval", "ensemble", name)) as f:
        ens = json.load(f)
    with open(single) as f:
        one = json.load(f)
    assert ens["nats_per_token"] == pytest.approx(one["nats_per_token"], rel=1e-5)
    assert [m["workdir"] for m in ens["ensemble"]] == [os.path.abspath(ar)] * 2 and ens["step"] == one["step"]
    assert main(["eval", "--workdir", ar, "--workdir", mdm, "--task", "val", "--limit", "8"]) == 2  # objectives differ
    assert main(["eval", "--workdir", ar, "--workdir", ar, "--task", "val", "--step", "all"]) == 2
    assert main(["eval", "--workdir", mdm, "--workdir", mdm, "--task", "genppl", "--reference-workdir", ar]) == 2


def test_lm_eval_adapter_scores_an_ensemble(trained_runs):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra: pip install 'dllm_jax[eval]'")
    from dllm_jax.evaluation.lm_eval_adapter import DllmJaxLM

    wd = trained_runs["mdm"]
    requests = [types.SimpleNamespace(args=("The river", " walks into the forest")), types.SimpleNamespace(args=("A", " small"))]
    one = DllmJaxLM(workdir=wd, mc_samples=4).loglikelihood(requests)
    lm = DllmJaxLM(workdir=f"{wd}|{wd}", mc_samples=4)
    two = lm.loglikelihood(requests)
    assert lm.scorer.members == 2
    for (a, ga), (b, gb) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5) and ga == gb
    with pytest.raises(ConfigError, match="generate_until samples from one run"):
        lm.generate_until([types.SimpleNamespace(args=("The", {"until": ["."]}))])
