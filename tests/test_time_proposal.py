"""Proposals over t (objectives.time_proposal): the quantile map against scipy, stratification
carried through it, importance-weighted losses against exact ELBOs, the uniform proposal bit
for bit today's draw, config errors, and a short CLI train with each proposal."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from scipy import special, stats

from dllm_jax import config as C
from dllm_jax import objectives
from dllm_jax.errors import ConfigError
from dllm_jax.objectives.block_diffusion import block_times
from dllm_jax.objectives.common import sample_times
from dllm_jax.objectives.time_proposal import KNOTS, PROPOSALS, TimeProposal

BELLS = [TimeProposal("beta", a=2.0, b=2.0), TimeProposal("beta", a=3.0, b=1.5), TimeProposal("logit_normal"),
         TimeProposal("logit_normal", mu=0.5, sigma=1.2)]
SKEWED = [TimeProposal("beta", a=0.5, b=3.0)]  # a < 1: density unbounded at 0 (weights -> 0 there)


def _ids(v):
    return v.describe().replace(" ", "").replace("(recipe)", "") if isinstance(v, TimeProposal) else str(v)


# ---------------------------------------------------------------- the map u -> s
@pytest.mark.parametrize("q", BELLS + SKEWED, ids=_ids)
def test_quantile_map_matches_the_distribution(q):
    u = jax.random.uniform(jax.random.key(0), (200_000,))
    s, w = (np.asarray(x, np.float64) for x in q.map(u))
    assert s.min() >= 0.0 and s.max() <= 1.0
    # Kolmogorov-Smirnov against scipy's exact CDF (the map's CDF is within 1/KNOTS of it) ...
    assert stats.kstest(s, q.cdf).pvalue > 1e-3
    # ... with power: the same draws are far from uniform
    assert stats.kstest(s, "uniform").pvalue < 1e-20
    # a histogram against scipy's bin masses (chi-square, 50 equal-mass bins)
    edges = q.quantile(np.linspace(0, 1, 51))
    counts = np.histogram(s, edges)[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    # at the knots the map is scipy's quantile (float32); its slope is the weight 1 / q_G(s)
    k = np.array([0, 1, 7, 1000, 2048, 4000, KNOTS - 1])
    s_k, w_k = (np.asarray(x, np.float64) for x in q.map(jnp.asarray(k / KNOTS, jnp.float32)))
    np.testing.assert_allclose(s_k, q.quantile(k / KNOTS), rtol=1e-6, atol=1e-12)
    # (the bins the float32 knots bound: widths to within KNOTS ulps of 1)
    np.testing.assert_allclose(w_k, KNOTS * (q.quantile((k + 1) / KNOTS) - q.quantile(k / KNOTS)), rtol=1e-4, atol=KNOTS * 2**-23)
    # inside a bin the weight approximates 1 / q(s) (the density averaged over the bin)
    mid = (q.quantile(k[2:-1] / KNOTS) + q.quantile((k[2:-1] + 1) / KNOTS)) / 2
    np.testing.assert_allclose(w_k[2:-1], 1.0 / q.pdf(mid), rtol=5e-3)
    # one u per bin: the weights average to 1 (E_u[G'(u)] = G(1) - G(0) = 1)
    _, w_all = q.map((jnp.arange(KNOTS, dtype=jnp.float32) + 0.5) / KNOTS)
    assert float(jnp.mean(w_all)) == pytest.approx(1.0, abs=1e-5)


def test_uniform_proposal_is_todays_draw_bit_for_bit():
    for antithetic in (True, False):
        for q in (TimeProposal(), TimeProposal("uniform", mode="importance", a=5.0, sigma=3.0)):
            t, w = q.times(jax.random.key(4), 16, 1e-3, antithetic)
            assert w is None
            np.testing.assert_array_equal(t, sample_times(jax.random.key(4), 16, 1e-3, antithetic))
    # today's formula, written out: t_i = eps + (1 - eps)((u + i/B) mod 1) with u from the key
    u = jax.random.uniform(jax.random.key(4), ())
    want = 1e-3 + (1.0 - 1e-3) * jnp.mod(u + jnp.arange(16, dtype=jnp.float32) / 16, 1.0)
    np.testing.assert_array_equal(TimeProposal().times(jax.random.key(4), 16, 1e-3, True)[0], want)
    assert TimeProposal.__dataclass_fields__["name"].default == "uniform" and set(PROPOSALS) == set(C.T_PROPOSALS)


@pytest.mark.parametrize("objective,extra", [("mdm", {}), ("mdm", {"mdm.weighting": "realized", "mdm.random_length_prob": 0.5}),
                                             ("block_diffusion", {"block_diffusion.block_size": 4})])
def test_uniform_proposal_batches_are_identical_to_the_default_and_bell_ones_differ(objective, extra):
    ids = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=50)
    tokens = jnp.asarray(np.random.RandomState(0).randint(1, 50, (8, 16)))
    base = {"data.seq_len": 16, **extra}

    def prep(**kw):
        o = objectives.by_name(objective, **base, **kw)
        return jax.jit(o.train_prepare_fn(ids))(tokens, jax.random.key(9), jnp.int32(0))

    default = prep()
    for kw in ({"mdm.t_proposal_mode": "importance", "mdm.t_beta_a": 7.0, "mdm.t_logit_sigma": 0.1},):
        other = prep(**kw)  # uniform with other (unused) settings: the same arrays, bit for bit
        for a, b in zip(jax.tree.leaves(default), jax.tree.leaves(other)):
            np.testing.assert_array_equal(a, b)
    bell = prep(**{"mdm.t_proposal": "beta", "mdm.t_beta_a": 4.0, "mdm.t_beta_b": 4.0})
    assert not np.array_equal(bell.extras["t"], default.extras["t"])
    np.testing.assert_array_equal(bell.targets, default.targets)


@pytest.mark.parametrize("q", BELLS[:1] + BELLS[2:3], ids=_ids)
def test_stratified_draws_stay_stratified_through_the_map(q):
    eps = 1e-3
    t, w = q.times(jax.random.key(1), 64, eps, antithetic=True)
    f = np.sort(q.cdf((np.asarray(t, np.float64) - eps) / (1 - eps)))
    np.testing.assert_allclose(np.diff(f), 1 / 64, atol=3 / KNOTS)  # one draw per 1/64 of q's mass
    # block diffusion: every block of the batch in its own stratum of q
    tb, wb = block_times(jax.random.key(1), 16, 4, eps, True, q)
    assert tb.shape == wb.shape == (16, 4)
    fb = np.sort(q.cdf((np.asarray(tb, np.float64).reshape(-1) - eps) / (1 - eps)))
    np.testing.assert_allclose(np.diff(fb), 1 / 64, atol=3 / KNOTS)
    np.testing.assert_array_equal(np.sort(np.asarray(tb).reshape(-1)), np.sort(np.asarray(t)))  # the same 64 strata


@pytest.mark.parametrize("objective", ["mdm", "block_diffusion"])
@pytest.mark.parametrize("mode", ["recipe", "importance"])
def test_loss_and_elbo_weights_by_hand(objective, mode):
    q = TimeProposal("beta", mode=mode, a=2.5, b=1.5)
    eps, bs = 0.01, 4
    o = objectives.by_name(objective, **{"data.seq_len": 16, "block_diffusion.block_size": bs, "mdm.eps": eps,
                                         "mdm.random_length_prob": 0.0, "mdm.t_proposal": "beta", "mdm.t_proposal_mode": mode,
                                         "mdm.t_beta_a": 2.5, "mdm.t_beta_b": 1.5})
    ids = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=50)
    tokens = jnp.asarray(np.random.RandomState(1).randint(1, 50, (32, 16))).at[:, 14:].set(0)
    prep = o.prepare_fn(ids)(tokens, jax.random.key(2))
    t = np.asarray(prep.extras["t"], np.float64)  # [B] or [B, blocks]
    if objective == "block_diffusion":
        assert t.shape == (32, 16 // bs)
        t = np.repeat(t, bs, axis=1)
    else:
        t = np.repeat(t[:, None], 16, axis=1)
    masked = np.asarray(prep.inputs[:, :16]) == ids.mask_id
    assert not masked[:, 14:].any()
    # the weight of the bin t falls in: KNOTS * width (the table's own knots, float32)
    knots, widths = q.table()
    s = (t - eps) / (1 - eps)
    k = np.clip(np.searchsorted(knots.astype(np.float64), s, side="right") - 1, 0, KNOTS - 1)
    iw = KNOTS * widths[k].astype(np.float64)
    elbo = np.where(masked, iw / t, 0.0)  # linear schedule: w(t) = 1/t
    np.testing.assert_allclose(np.asarray(prep.extras["elbo_weights"]), elbo, rtol=2e-5)
    np.testing.assert_allclose(np.asarray(prep.weights), elbo if mode == "importance" else np.where(masked, 1 / t, 0.0), rtol=2e-5)
    # evaluation-time batches (train=False) draw t uniformly and carry no weight
    ev = o.prepare_fn(ids, train=False)(tokens, jax.random.key(2))
    uni = objectives.by_name(objective, **{"data.seq_len": 16, "block_diffusion.block_size": bs, "mdm.eps": eps})
    np.testing.assert_array_equal(ev.extras["t"], uni.prepare_fn(ids, train=False)(tokens, jax.random.key(2)).extras["t"])


# ---------------------------------------------------------------- the estimators
# i.i.d. tokens from P and a denoiser that predicts P tilted by delta(m) on token 0, m the
# number of masked tokens in the row (MDM) or block (block diffusion): its cross-entropy
# g(m) depends on t, so the q-reweighted recipe and the ELBO differ. With t ~ U(eps, 1) and
# n tokens per row (block), int (m/t) Bin(m; n, t) dt over [eps, 1] = 1 - I_eps(m, n-m+1), so
#   ELBO per token = 1/(n (1-eps)) * sum_{m=1..n} g(m) (1 - I_eps(m, n - m + 1)).
P = np.array([0.4, 0.25, 0.15, 0.1, 0.1])
IDS = objectives.TokenIds(pad_id=6, eos_id=5, mask_id=7)
ROWS, LENGTH, EPS = 64, 32, 1e-3


def _g(m, n, tilt, target):
    """Expected CE of a masked token when m of n are masked; `target`: the tokens' distribution."""
    logits = np.log(P)[None, :] + np.outer(tilt * (1.0 - m / n) - 1.0, np.eye(5)[0])
    logq = logits - special.logsumexp(logits, axis=1, keepdims=True)
    return -(target[None, :] * logq).sum(1)


def _exact_elbo(n, tilt=3.0, target=P):
    m = np.arange(1, n + 1)
    return float((_g(m, n, tilt, target) * (1 - special.betainc(m, n - m + 1, EPS))).sum() / (n * (1 - EPS)))


def _exact_recipe(q, n, tilt=3.0, target=P):
    """E_{s ~ q_G}[per-token loss at t = eps + (1-eps) s] by quadrature over u (2^16 midpoints)."""
    u = (np.arange(1 << 16) + 0.5) / (1 << 16)
    s = np.asarray(q.map(jnp.asarray(u, jnp.float32))[0], np.float64)
    t = EPS + (1 - EPS) * s
    m = np.arange(1, n + 1)
    pmf = stats.binom.pmf(m[None, :], n, t[:, None])  # [U, n]
    per_row = (pmf * m[None, :] * _g(m, n, tilt, target)[None, :]).sum(1) / t
    return float(per_row.mean() / n)


def _losses(objective, q, antithetic, reps=384, tilt=3.0, constant=False):
    """Per replicate (recipe loss, importance-weighted loss, logged elbo of each), each replicate
    a batch of ROWS x LENGTH tokens (i.i.d. from P, or all token 0 when `constant`)."""
    block = 8 if objective == "block_diffusion" else LENGTH
    kw = {"data.seq_len": LENGTH, "block_diffusion.block_size": 8, "mdm.antithetic": antithetic, "mdm.random_length_prob": 0.0,
          "mdm.eps": EPS, "mdm.t_proposal": q.name, "mdm.t_beta_a": q.a, "mdm.t_beta_b": q.b, "mdm.t_logit_mu": q.mu,
          "mdm.t_logit_sigma": q.sigma}
    recipe = objectives.by_name(objective, **kw, **{"mdm.t_proposal_mode": "recipe"})
    iw = objectives.by_name(objective, **kw, **{"mdm.t_proposal_mode": "importance"})
    prep_r, prep_i = recipe.train_prepare_fn(IDS), iw.train_prepare_fn(IDS)
    base = jnp.concatenate([jnp.log(jnp.asarray(P, jnp.float32)), jnp.array([-1e9, -1e9, 30.0])])

    def ce_of(prep):
        m = (prep.inputs[:, :LENGTH] == IDS.mask_id).reshape(ROWS, LENGTH // block, block).sum(2).astype(jnp.float32)
        delta = jnp.repeat(tilt * (1.0 - m / block) - 1.0, block, axis=1)  # as _g, per position
        logits = jnp.broadcast_to(base, (ROWS, LENGTH, 8)).at[:, :, 0].add(delta)
        return objectives.token_cross_entropy(logits, prep.targets[:, :LENGTH], IDS.mask_id)

    def one(key):
        k_tok, k_prep = jax.random.split(key)
        tokens = jax.random.choice(k_tok, 5, (ROWS, LENGTH), p=jnp.asarray(P)) * (0 if constant else 1)
        a, b = prep_r(tokens, k_prep, jnp.int32(0)), prep_i(tokens, k_prep, jnp.int32(0))
        ra = recipe.finalize(recipe.metrics_from_ce(ce_of(a), a))
        rb = iw.finalize(iw.metrics_from_ce(ce_of(b), b))
        return ra["loss"], rb["loss"], ra["elbo"], rb["elbo"]

    out = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(0), reps))
    return [np.asarray(x, np.float64) for x in out], block


def _mean_se(x):
    return x.mean(), x.std(ddof=1) / math.sqrt(len(x))


@pytest.mark.parametrize("objective,q", [("mdm", q) for q in (TimeProposal(), BELLS[0], BELLS[2], SKEWED[0])]
                         + [("block_diffusion", q) for q in (BELLS[0], BELLS[3])], ids=_ids)
def test_importance_weighted_loss_is_the_exact_elbo_and_the_recipe_is_not(objective, q):
    (recipe, iw, elbo_r, elbo_i), n = _losses(objective, q, antithetic=True)
    exact, recipe_exact = _exact_elbo(n), _exact_recipe(q, n)
    m, se = _mean_se(iw)
    # a bell-shaped q has q(0) = 0 while the ELBO integrand does not vanish there, so the
    # weights make the estimate heavy-tailed (variance 10-100x the uniform draw's here):
    # unbiased, but noisy
    assert se < 0.05 * exact
    assert abs(m - exact) < 4 * se, (m, exact, se)
    # the logged elbo is the importance-weighted bound in both modes (the same draws: equal values)
    np.testing.assert_allclose(elbo_r, iw, rtol=1e-5)
    np.testing.assert_allclose(elbo_i, iw, rtol=1e-5)
    # the recipe's loss estimates the q-reweighted objective ...
    mr, ser = _mean_se(recipe)
    assert abs(mr - recipe_exact) < 4 * ser, (mr, recipe_exact, ser)
    if q.uniform:
        np.testing.assert_array_equal(recipe, iw)
        assert recipe_exact == pytest.approx(exact, rel=1e-3)
        assert se < 0.005 * exact
    else:  # ... which is not the ELBO: the test tells the two apart
        assert abs(mr - exact) > 6 * ser, (mr, exact, ser)


@pytest.mark.parametrize("objective", ["mdm", "block_diffusion"])
def test_stratified_draws_lower_the_recipe_variance_end_to_end(objective):
    # one token everywhere and a strongly t-dependent denoiser, so that the t draw dominates
    q = BELLS[0]
    (strat, _, _, _), _ = _losses(objective, q, antithetic=True, reps=256, tilt=8.0, constant=True)
    (iid, _, _, _), _ = _losses(objective, q, antithetic=False, reps=256, tilt=8.0, constant=True)
    assert strat.var(ddof=1) < 0.8 * iid.var(ddof=1), (strat.var(ddof=1), iid.var(ddof=1))


@pytest.mark.parametrize("q", [TimeProposal()] + BELLS + SKEWED, ids=_ids)
def test_stratified_draws_lower_the_variance_exactly(q):
    """Exact variances (quadrature over u, no sampling) of a batch's t-part: the mean over B
    rows of h(u) = weight(u) * phi(t(u)) (importance) or phi(t(u)) (recipe), phi(t) the
    expected per-row loss at t of the tilted denoiser above. The importance-weighted estimate
    is heavy-tailed, so sampled variances are too noisy to compare at test size."""
    b, n, k = 64, LENGTH, 2048
    u = ((np.arange(b)[:, None] + (np.arange(k)[None, :] + 0.5) / k) / b).astype(np.float32)  # [stratum, offset]
    s, w = (np.asarray(x, np.float64) for x in q.map(jnp.asarray(u)))
    t = EPS + (1 - EPS) * s
    m = np.arange(1, n + 1)
    phi = (stats.binom.pmf(m, n, t[..., None]) * m * _g(m, n, 3.0, P)).sum(-1) / t
    for h, most in ((phi, 0.1), (w * phi, 1.0)):
        var_iid = h.var() / b  # b i.i.d. draws
        var_strat = h.mean(axis=0).var()  # one draw per stratum, the same offset (as sample_uniforms)
        # recipe: stratification removes most of it (ratio 0.01-0.03 here); importance: the
        # weights' spikes in the end strata dominate, so it helps less (0.45-0.85), never hurts
        assert var_strat < most * var_iid, (var_strat, var_iid)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("key,value,needle", [
    ("mdm.t_beta_a", 0.0, "mdm.t_beta_a=0.0 is out of range: it must be a finite number > 0"),
    ("mdm.t_beta_b", -1.0, "mdm.t_beta_b=-1.0 is out of range: it must be a finite number > 0"),
    ("mdm.t_logit_sigma", 0.0, "mdm.t_logit_sigma=0.0 is out of range: it must be a finite number > 0"),
    ("mdm.t_logit_mu", float("nan"), "mdm.t_logit_mu=nan is out of range: it must be a finite number"),
    ("mdm.t_proposal", "gaussian", "mdm.t_proposal='gaussian' is out of range: it must be one of ['uniform', 'beta', 'logit_normal']"),
    ("mdm.t_proposal_mode", "iw", "mdm.t_proposal_mode='iw' is out of range: it must be one of ['recipe', 'importance']"),
])
def test_bad_proposal_settings_are_one_config_error(key, value, needle):
    cfg = C.default_config()
    cfg.data.paths = "x.txt"
    C.set_key(cfg, "mdm.t_proposal", "beta")
    C.set_key(cfg, key, value)
    with pytest.raises(ConfigError) as e:
        C.validate(cfg)
    assert needle in str(e.value) and f"--config.{key}=VALUE" in str(e.value)


@pytest.mark.parametrize("objective", ["ar", "uniform", "gidd"])
def test_a_proposal_is_refused_where_the_objective_would_ignore_it(objective):
    """Only the MDM and block diffusion draw t from `mdm.t_proposal`: elsewhere a non-uniform
    proposal would train a series labelled with it that does not use it."""
    cfg = C.default_config()
    cfg.data.paths = "x.txt"
    C.set_key(cfg, "mdm.t_proposal", "beta")
    for ok in ("mdm", "block_diffusion"):
        cfg.objective = ok
        C.validate(cfg)
    cfg.objective = objective
    with pytest.raises(ConfigError, match=f"mdm.t_proposal='beta' is a proposal over the masking time t .* objective='{objective}' "
                                          "does not read it"):
        C.validate(cfg)
    C.set_key(cfg, "mdm.t_proposal", "uniform")
    C.validate(cfg)  # the default is fine for any objective (a sweep may set the mode or shapes for its MDM points)


def test_bad_proposal_on_the_command_line_is_one_error_line(tmp_path, capsys, corpus):
    from dllm_jax.cli import main

    paths, cache = corpus
    exp = tmp_path / "exp.py"
    exp.write_text(f"import json\nfrom dllm_jax.config import complete\ndef get_config():\n"
                   f"    return complete(json.loads({C.to_json(tiny_config(paths, cache))!r}))\n")
    capsys.readouterr()
    assert main(["train", "--config", str(exp), "--workdir", str(tmp_path / "run"), "--config.mdm.t_proposal=beta",
                 "--config.mdm.t_beta_a=-2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: mdm.t_beta_a=-2.0 is out of range" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ---------------------------------------------------------------- end to end
@pytest.mark.slow  # two tiny runs with validation: ~35 s of CPU
def test_short_cli_train_with_each_proposal(tmp_path, capsys, corpus):
    """Each family and each mode from the CLI (the MDM with a Beta recipe, block diffusion with
    an importance-weighted logit-normal): the run trains, logs `loss` and the
    importance-weighted `elbo`, and validates with uniform t."""
    from dllm_jax.cli import main
    from dllm_jax.evaluation.likelihood import Scorer
    from dllm_jax.metrics import read_metrics

    paths, cache = corpus
    runs = [("mdm", "beta", "recipe"), ("block_diffusion", "logit_normal", "importance")]
    for objective, name, mode in runs:
        cfg = tiny_config(paths, cache, objective, data__unique_tokens=8 * 32 * 2, train__eval_every=0, train__log_every=2,
                          block_diffusion__block_size=8)
        exp = tmp_path / f"{objective}_{name}.py"
        exp.write_text(f"import json\nfrom dllm_jax.config import complete\ndef get_config():\n"
                       f"    return complete(json.loads({C.to_json(cfg)!r}))\n")
        workdir = str(tmp_path / f"{objective}_{name}_{mode}")
        assert main(["train", "--config", str(exp), "--workdir", workdir, f"--config.mdm.t_proposal={name}",
                     f"--config.mdm.t_proposal_mode={mode}", "--config.mdm.t_beta_a=3", "--config.mdm.t_beta_b=3"]) == 0
        recs = read_metrics(workdir)
        train = [r for r in recs if "elbo" in r]
        val = [r for r in recs if "val_loss" in r]
        assert train and val and all(math.isfinite(r["loss"]) and math.isfinite(r["elbo"]) for r in train)
        assert 0 < val[-1]["val_loss"] < 3 * math.log(320)
        with open(f"{workdir}/config.json") as f:
            saved = json.load(f)["mdm"]
        assert (saved["t_proposal"], saved["t_proposal_mode"]) == (name, mode)
    # validation never reads the proposal: its scorer is the uniform run's
    base = tiny_config(paths, cache)

    class Tok:
        mask_id, eos_id = 320, 2

    spec = lambda c: Scorer.for_model(None, c, Tok, batch_size=8).spec  # noqa: E731
    bell = tiny_config(paths, cache, mdm__t_proposal="beta", mdm__t_proposal_mode="importance")
    assert spec(bell) == spec(base)
