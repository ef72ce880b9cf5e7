"""Uniform-state ('uniform') and GIDD ('gidd') diffusion: the ELBO against the entropy of
i.i.d. tokens (tight with the exact model), against UDLM's and GIDD's own formulas in
float64, GIDD with p_u = 0 against the MDM, the forward marginals against their closed form,
the chunked loss, the estimators, the samplers and the bad-input errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dllm_jax import objectives, train_step
from dllm_jax.config import default_config, validate
from dllm_jax.errors import ConfigError
from dllm_jax.evaluation.likelihood import Scorer, ScoreSpec
from dllm_jax.models import ModelConfig, Transformer
from dllm_jax.objectives.interpolating import Process, corrupt, divergences, elbo_weights

# i.i.d. tokens from P over ids 0..4; ids 5 (EOS) and 6 (padding) are real ids the uniform noise
# can draw, 7 is [MASK]: N = 7 real ids
P = np.array([0.5, 0.2, 0.15, 0.1, 0.05, 0.0, 0.0])
ENTROPY = float(-(P[:5] * np.log(P[:5])).sum())
IDS = objectives.TokenIds(pad_id=6, eos_id=5, mask_id=7)
N = 7


def _obj(name, **overrides):
    return objectives.by_name(name, **overrides)


def _model_logits(shape, log_row):
    """Logits [*shape, 8] that give every position the distribution exp(log_row) over the 7 real
    ids, and a large logit to the [MASK] column (which every softmax must exclude)."""
    row = jnp.concatenate([jnp.asarray(log_row, jnp.float32), jnp.array([30.0])])
    return jnp.broadcast_to(row, tuple(shape) + (8,))


LOG_P = np.where(P > 0, np.log(np.maximum(P, 1e-300)), -1e30)


def _elbo_draws(obj, logits_fn, draws=200, batch=64, length=32):
    prepare = obj.prepare_fn(IDS)

    @jax.jit
    def one(key):
        k_tok, k_prep = jax.random.split(key)
        tokens = jax.random.choice(k_tok, N, (batch, length), p=jnp.asarray(P))
        prep = prepare(tokens, k_prep)
        stats = obj.token_loss(logits_fn(prep), prep, IDS.mask_id)
        return obj.finalize(obj.metrics_from_ce(stats, prep))["elbo"]

    return np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(0), draws)), np.float64)


# ---------------------------------------------------------------- the ELBO is tight with the exact model
@pytest.mark.parametrize("name,overrides", [
    ("uniform", {}),
    ("uniform", {"mdm.schedule": "cosine"}),
    ("gidd", {"gidd.p_u": 0.0}),
    ("gidd", {"gidd.p_u": 0.2}),
    ("gidd", {"gidd.p_u": 0.5}),
    ("gidd", {"gidd.p_u": 0.2, "mdm.schedule": "cosine"}),
])
def test_elbo_of_iid_tokens_with_the_exact_model_is_the_entropy(name, overrides):
    # For i.i.d. tokens the true reverse step is q(z_s | z_t) = q(z_t|z_s) q_s(z_s | P) / q_t(z_t | P)
    # (sum over x of p(x|z_t) q(z_s|z_t,x)), i.e. the model's step with x_theta = P: a model that
    # outputs P makes every reverse step exact, so the continuous-time bound equals H(P) = 1.3331.
    # gidd at p_u = 0.2 WITHOUT its t^2 time draw comes out at 1.275 here (the mass below eps
    # is lost): 5 standard errors away.
    assert ENTROPY == pytest.approx(1.3331, abs=1e-4)
    obj = _obj(name, **overrides)
    vals = _elbo_draws(obj, lambda prep: _model_logits(prep.inputs.shape, LOG_P))
    se = vals.std(ddof=1) / math.sqrt(len(vals))
    assert se < 0.015
    assert abs(vals.mean() - ENTROPY) < 4 * se, (vals.mean(), ENTROPY, se)


def test_plugging_in_the_posterior_instead_of_the_marginal_is_a_loose_bound():
    # x_theta = p(x | z_t), the per-token posterior, is NOT the exact model of this
    # parameterisation (see above): the bound is far above the entropy.
    obj = _obj("uniform")

    def posterior(prep):
        lik = prep.extras["alpha"][..., None] * jax.nn.one_hot(prep.inputs, N) + prep.extras["nu"][..., None]
        return _model_logits(prep.inputs.shape, np.zeros(N)) + jnp.concatenate(
            [jnp.asarray(LOG_P, jnp.float32) + jnp.log(lik), jnp.zeros(prep.inputs.shape + (1,))], -1)

    vals = _elbo_draws(obj, posterior, draws=40)
    assert vals.mean() > ENTROPY + 0.3


# ---------------------------------------------------------------- against the papers' own formulas (float64)
def _udlm_nelbo(xtheta, x, z, alpha, dalpha):
    """UDLM's continuous-time NELBO integrand (Schiff et al. 2024, Eq. 9) for one token, float64:
    -alpha'/(N alpha) [N / xbar_z - N / xbar_theta_z - sum_j xbar_j / xbar_z log(xbar_theta_z xbar_j / (xbar_theta_j xbar_z))],
    xbar = N alpha x + 1 - alpha, written with its sign so that it is >= 0."""
    n = len(xtheta)
    xbar = n * alpha * np.eye(n)[x] + 1 - alpha
    xbt = n * alpha * xtheta + 1 - alpha
    s = sum(xbar[j] / xbar[z] * np.log(xbt[z] * xbar[j] / (xbt[j] * xbar[z])) for j in range(n))
    return dalpha / (n * alpha) * (n / xbar[z] - n / xbt[z] - s)


@pytest.mark.parametrize("t", [0.01, 0.3, 0.7, 0.99, 0.9999])
def test_uniform_elbo_equals_udlms_formula(t):
    rng = np.random.default_rng(int(t * 1e4))
    logits = rng.normal(size=(3, 4, N)) * 2.0
    x = rng.integers(0, N, (3, 4))
    z = np.where(rng.random((3, 4)) < 0.5, x, rng.integers(0, N, (3, 4)))
    proc = Process("uniform")
    coef = proc.coefficients(jnp.full((3, 4), t))
    lg = jnp.concatenate([jnp.asarray(logits, jnp.float32), jnp.full((3, 4, 1), 9.0)], -1)
    div, ce = divergences(lg, jnp.asarray(x), jnp.asarray(z), coef.alpha, coef.a_u / N, N)
    ours = np.asarray(elbo_weights(coef, jnp.asarray(z), jnp.asarray(x), N, N) * div, np.float64)
    xt = np.exp(logits - logits.max(-1, keepdims=True))
    xt /= xt.sum(-1, keepdims=True)
    ref = np.array([[_udlm_nelbo(xt[b, i], x[b, i], z[b, i], 1 - t, -1.0) for i in range(4)] for b in range(3)])
    np.testing.assert_allclose(ours, ref, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ce), -np.log(np.take_along_axis(xt, x[..., None], -1)[..., 0]), rtol=1e-5)


def _gidd_reference(xtheta, x, z, t, p_u, gamma=1.0):
    """GIDD's ELBO for one token as its reference code computes it (gidd/loss.py get_weights and
    GiddLoss.loss, diffusion_process.py HybridDiffusion), in float64; z = N is [MASK]."""
    n = len(xtheta)
    b = 2 ** gamma * p_u / (1 - p_u)
    c = (t ** gamma) ** 0.5 * ((1 - t) ** gamma) ** 0.5 * b
    dc = (gamma / 2) * (1 - 2 * t) / (t * (1 - t)) * c
    w_x = (c + (1 - t) * dc) / n / ((1 - t) * (1 - t + c / n))
    w_u = (c + (1 - t) * dc) / ((1 - t) * c) if c > 0 else 0.0
    w_m = 1 / ((1 - t) * t)
    w = w_m if z == n else (w_x if z == x else w_u)
    big_c = 1 + c
    noise = np.concatenate([np.full(n, c / n), [t]]) / big_c
    q = (1 - t) / big_c * np.eye(n + 1)[x] + noise
    p = (1 - t) / big_c * np.concatenate([xtheta, [0.0]]) + noise
    kl = sum(q[j] * np.log(q[j] / p[j]) for j in range(n + 1) if q[j] > 0)
    r = q[z] / p[z]
    return w * (kl + r - np.log(r) - 1)


@pytest.mark.parametrize("p_u", [0.05, 0.2, 0.6])
def test_gidd_elbo_equals_the_reference_codes_formula(p_u):
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(4, 5, N)) * 2.0
    x = rng.integers(0, N, (4, 5))
    kind = rng.integers(0, 3, (4, 5))  # 0: kept, 1: masked, 2: a uniform id
    z = np.where(kind == 0, x, np.where(kind == 1, N, rng.integers(0, N, (4, 5))))
    t = np.array([0.02, 0.3, 0.5, 0.97])[:, None] * np.ones((1, 5))
    proc = Process("gidd", p_u=p_u)
    u = np.sqrt(t)  # gidd with p_u > 0 runs its schedule at u^2: GIDD's own time t
    coef = proc.coefficients(jnp.asarray(u, jnp.float32))
    np.testing.assert_allclose(np.asarray(proc.tau(jnp.asarray(u, jnp.float32))[0]), t, rtol=1e-6)
    lg = jnp.concatenate([jnp.asarray(logits, jnp.float32), jnp.full((4, 5, 1), 9.0)], -1)
    div, _ = divergences(lg, jnp.asarray(x), jnp.asarray(z), coef.alpha, coef.a_u / N, N)
    ours = np.asarray(elbo_weights(coef, jnp.asarray(z), jnp.asarray(x), N, N) * div, np.float64)
    ours = ours / (2 * u)  # per unit of GIDD's t, not of u
    xt = np.exp(logits - logits.max(-1, keepdims=True))
    xt /= xt.sum(-1, keepdims=True)
    ref = np.array([[_gidd_reference(xt[b, i], x[b, i], z[b, i], t[b, i], p_u) for i in range(5)] for b in range(4)])
    np.testing.assert_allclose(ours, ref, rtol=3e-4, atol=1e-6)


# ---------------------------------------------------------------- p_u = 0 is the MDM
def test_gidd_with_no_uniform_noise_is_exactly_the_mdm():
    obj = _obj("gidd", **{"gidd.p_u": 0.0})
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 5, (4, 16)))
    rng = jax.random.key(3)
    prep = obj.prepare_fn(IDS)(tokens, rng)
    t = prep.extras["t"]
    # the MDM's masks from the same uniforms: u < p(t), nothing else changed
    u = jax.random.uniform(jax.random.split(rng, 4)[1], tokens.shape)
    masked = u < t[:, None]
    np.testing.assert_array_equal(prep.inputs, jnp.where(masked, IDS.mask_id, tokens))
    logits = jax.random.normal(jax.random.key(1), (4, 16, 8)) * 3.0
    ce = objectives.token_cross_entropy(logits, tokens, IDS.mask_id)
    mdm_elbo = float(jnp.sum(masked * ce / t[:, None]) / prep.denom)
    m = obj.finalize(obj.metrics_from_ce(obj.token_loss(logits, prep, IDS.mask_id), prep))
    assert float(m["elbo"]) == pytest.approx(mdm_elbo, rel=1e-6)
    assert float(m["loss"]) == pytest.approx(mdm_elbo, rel=1e-6)
    np.testing.assert_array_equal(prep.extras["elbo_weights"] > 0, masked)


def test_gidd_p_u_zero_and_mdm_give_the_same_validation_elbo():
    # the same draws (stream EVAL_MASK uniforms, u < p(t)) and the same times (eps = 0 maps the
    # Scorer's t to the same t in both): the sequence estimators agree to float precision
    def lf(params, tokens, segment_ids):  # predictions that depend on the noised input: how many masks, the left neighbour
        prev = jnp.concatenate([jnp.full(tokens[:, :1].shape, IDS.mask_id), tokens[:, :-1]], axis=1)
        n_masked = (tokens == IDS.mask_id).sum(axis=1).astype(jnp.float32)[:, None, None]
        logits = jnp.asarray(LOG_P.clip(-5), jnp.float32) + 0.3 * n_masked * jax.nn.one_hot(0, N) + jax.nn.one_hot(prev, N)
        return jnp.concatenate([logits, jnp.full(tokens.shape + (1,), 9.0)], axis=-1)

    params = None
    seqs = np.random.RandomState(1).randint(0, 7, (6, 16))
    out = {}
    for name, cfg in (("mdm", ()), ("gidd", (("gidd.p_u", 0.0),))):
        spec = ScoreSpec(objective=name, vocab_limit=7, mask_id=7, eos_id=5, max_len=16, eps=0.0, objective_config=cfg)
        out[name] = Scorer(lf, spec, batch_size=8).sequence_nll(params, seqs, mc_samples=8, seed=2)
    assert out["gidd"]["nats_per_token"] == pytest.approx(out["mdm"]["nats_per_token"], rel=1e-5)
    assert out["gidd"]["masked_ce"] == pytest.approx(out["mdm"]["masked_ce"], rel=1e-5)


# ---------------------------------------------------------------- the forward process
@pytest.mark.parametrize("proc", [Process("uniform"), Process("gidd", p_u=0.3), Process("gidd", "cosine", p_u=0.6, gamma=2.0)])
def test_forward_marginals_match_the_closed_form(proc):
    draws = 200_000
    x = 3
    for t in (0.15, 0.5, 0.85):
        coef = proc.coefficients(jnp.float32(t))
        k1, k2 = jax.random.split(jax.random.key(int(t * 100)))
        z = corrupt(jnp.full((draws,), x), jax.random.uniform(k1, (draws,)), jax.random.randint(k2, (draws,), 0, N), coef, N)
        counts = np.bincount(np.asarray(z), minlength=N + 1).astype(np.float64)
        alpha, a_m, nu = float(coef.alpha), float(coef.a_m), float(coef.a_u) / N
        expected = np.full(N + 1, nu) * draws
        expected[x] += alpha * draws
        expected[N] = a_m * draws
        assert expected.sum() == pytest.approx(draws, rel=1e-5)
        seen = expected > 0
        assert np.all(counts[~seen] == 0)
        chi2 = float(((counts[seen] - expected[seen]) ** 2 / expected[seen]).sum())
        dof = int(seen.sum()) - 1
        assert chi2 < dof + 6 * math.sqrt(2 * dof), (t, chi2, counts, expected)


def test_prepared_batch_follows_the_marginals_at_its_own_times():
    obj = _obj("gidd", **{"gidd.p_u": 0.4})
    tokens = jnp.asarray(np.random.RandomState(2).randint(0, 5, (256, 64)))
    prep = obj.prepare_fn(IDS)(tokens, jax.random.key(5))
    coef = obj.process().coefficients(prep.extras["t"])
    z = np.asarray(prep.inputs)
    kept, masked = (z == np.asarray(tokens)).sum(1), (z == IDS.mask_id).sum(1)
    for got, prob in ((kept, np.asarray(coef.alpha + coef.a_u / N)), (masked, np.asarray(coef.a_m))):
        mean, var = (64 * prob).sum(), (64 * prob * (1 - prob)).sum()
        assert abs(got.sum() - mean) < 5 * math.sqrt(var)
    t = np.asarray(prep.extras["t"])
    assert t.min() >= 1e-3 and t.max() <= 1 - 1e-3
    assert np.all(np.diff(np.sort(t)) < 2.0 / 256)  # stratified over the batch


# ---------------------------------------------------------------- losses, weights, errors
@pytest.mark.parametrize("name", ["uniform", "gidd"])
def test_chunked_loss_equals_the_plain_loss_in_value_and_gradient(name):
    obj = _obj(name)
    model = Transformer(ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, scan_layers=False))
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 10), jnp.int32), causal=False)["params"])
    ids = objectives.TokenIds(pad_id=0, eos_id=1, mask_id=12)
    tokens = jnp.asarray(np.random.RandomState(0).randint(1, 12, (3, 10)))
    prep = obj.prepare_fn(ids)(tokens, jax.random.key(2))

    def loss(p, chunk):
        stats, _ = train_step.forward_ce(model, p, prep, objective=obj, vocab_limit=12, loss_chunk=chunk)
        sums = obj.metrics_from_ce(stats, prep)
        return sums["loss_sum"] / sums["denom"]

    both = jax.jit(lambda p: (jax.value_and_grad(loss)(p, 0), jax.value_and_grad(loss)(p, 4)))
    (v0, g0), (v1, g1) = both(params)
    assert float(v0) > 0
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)


def test_gidd_training_weightings():
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, 5, (8, 32)))
    key = jax.random.key(4)
    base = _obj("gidd", **{"gidd.p_u": 0.3}).prepare_fn(IDS)(tokens, key)
    w = np.asarray(base.extras["elbo_weights"])
    np.testing.assert_array_equal(base.weights, w)  # 'elbo' (the default)
    clip = _obj("gidd", **{"gidd.p_u": 0.3, "gidd.weighting": "clip", "gidd.min_weight": 0.5, "gidd.max_weight": 3.0})
    np.testing.assert_allclose(clip.prepare_fn(IDS)(tokens, key).weights, np.clip(w, 0.5, 3.0))
    dyn = _obj("gidd", **{"gidd.p_u": 0.3, "gidd.weighting": "dynamic", "gidd.max_weight": 1.5}).prepare_fn(IDS)(tokens, key)
    z, t = np.asarray(base.inputs), np.asarray(base.extras["t"])[:, None] ** 2  # GIDD's own time (p_u > 0: t^2)
    b = 2.0 * 0.3 / 0.7
    x_scale = b / 8 * np.exp(0.5 / (1 + np.exp(t)))  # B / len(tokenizer) * exp(gamma/2 * sigmoid(-t)), as the reference
    want = np.where(z == np.asarray(tokens), x_scale, np.where(z == IDS.mask_id, 1.5, 1.0))  # 2 on [MASK], clipped to 1.5
    np.testing.assert_allclose(dyn.weights, want, rtol=1e-6)
    # the validation ELBO ignores the training weighting
    np.testing.assert_array_equal(dyn.extras["elbo_weights"], w)


@pytest.mark.parametrize("overrides,match", [
    ({"objective": "uniform", "mdm.weighting": "realized"}, "mdm.weighting='realized'"),
    ({"objective": "gidd", "gidd.gamma": 3.0}, "gidd.gamma=3.0"),
    ({"objective": "gidd", "gidd.p_u": 1.0}, "gidd.p_u=1.0"),
    ({"objective": "gidd", "gidd.min_weight": 3.0}, "gidd.min_weight=3.0"),
    ({"objective": "gidd", "model.shift_logits": True}, "shift_logits"),
])
def test_bad_settings_are_clear_errors(overrides, match):
    c = default_config()
    c.data.paths = "x"
    for key, value in overrides.items():
        node = c
        *parts, last = key.split(".")
        for part in parts:
            node = node[part]
        node[last] = value
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")):
        validate(c)


# ---------------------------------------------------------------- sampling
import dataclasses  # noqa: E402

from dllm_jax.sampling.api import generate_tokens  # noqa: E402


@dataclasses.dataclass(frozen=True)
class _Cfg:
    vocab_size: int


@dataclasses.dataclass(frozen=True)
class _FixedModel:
    """Predicts the same distribution exp(log_row) everywhere, whatever the input: for i.i.d.
    tokens that is the exact model, whose every reverse step is exact."""

    log_row: tuple
    cfg: _Cfg = _Cfg(8)

    def apply(self, variables, x, **kwargs):
        return jnp.broadcast_to(jnp.asarray(self.log_row, jnp.float32), x.shape + (len(self.log_row),))


_PARAMS = {"w": jnp.zeros((1,))}
_FIXED = _FixedModel(tuple(float(v) for v in np.concatenate([LOG_P, [30.0]])))


@pytest.mark.parametrize("proc,sampler", [(Process("uniform"), "ancestral"), (Process("uniform"), "renoise"),
                                          (Process("gidd", p_u=0.3), "ancestral"), (Process("gidd", "cosine", p_u=0.3), "renoise")])
def test_samplers_with_the_exact_model_draw_the_data_distribution(proc, sampler):
    # exact reverse steps (see the ELBO test): whatever the number of steps, the generated
    # tokens are i.i.d. P; no [MASK], padding or EOS survives the last step
    name = proc.kind
    res = generate_tokens(_FIXED, _PARAMS, IDS, [[]] * 96, objective=name, sampler=sampler, max_new_tokens=24, steps=5, seed=1,
                          process=proc)
    region = res.canvas[:, -24:]
    counts = np.bincount(region.ravel(), minlength=N + 1)
    assert counts[5:].sum() == 0
    expected = P[:5] * region.size
    chi2 = float(((counts[:5] - expected) ** 2 / expected).sum())
    assert chi2 < 4 + 6 * math.sqrt(8), (counts, expected)
    assert res.nfe == 5


@pytest.mark.parametrize("name,sampler", [("uniform", "ancestral"), ("gidd", "renoise")])
def test_a_prompt_samples_the_same_alone_or_in_a_batch(name, sampler):
    model = Transformer(ModelConfig(vocab_size=56, d_model=32, n_layers=2, n_heads=4, d_ff=64))
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32), causal=False)["params"])
    ids = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=50)
    rng = np.random.RandomState(1)
    others = [list(rng.randint(3, 50, rng.randint(1, 12))) for _ in range(9)]
    mine = [30, 31, 32, 33, 34]
    kw = dict(objective=name, sampler=sampler, max_new_tokens=8, steps=4, correction_steps=2, temperature=1.0, seed=7)
    alone = generate_tokens(model, params, ids, [mine], **kw)
    batch = generate_tokens(model, params, ids, others[:4] + [mine] + others[4:] + [mine], **kw)
    np.testing.assert_array_equal(batch.canvas[4, -8:], alone.canvas[0, -8:])
    assert not np.array_equal(batch.canvas[10, -8:], batch.canvas[4, -8:])  # the second copy has its own key
    for i, p in enumerate(others[:4] + [mine] + others[4:]):  # prompts untouched, just before the region
        assert list(batch.canvas[i, -8 - len(p) - 1:-8]) == [ids.eos_id] + p
    assert np.all(batch.canvas[:, -8:] < ids.mask_id) and np.all(batch.canvas[:, -8:] != ids.pad_id)
    assert batch.nfe == 4 + 2


def test_self_correction_replaces_one_position_per_step_by_the_models_choice():
    # the fixed model's favourite is token 0 (P = 0.5; at temperature 0.01 every candidate is 0):
    # each correction step turns exactly one non-0 free token per row into 0, the rest of the
    # sample (same seed, same steps) is unchanged, and given tokens never change
    kw = dict(objective="gidd", max_new_tokens=16, steps=4, seed=3, process=Process("gidd", p_u=0.3), correction_temperature=0.01)
    prompts = [[1, 2, 3], [4]] * 4
    template = [IDS.mask_id] * 6 + [4, 4] + [IDS.mask_id] * 8
    base = generate_tokens(_FIXED, _PARAMS, IDS, prompts, infill_tokens=template, **kw)
    fixed = generate_tokens(_FIXED, _PARAMS, IDS, prompts, infill_tokens=template, correction_steps=3, **kw)
    a, b = base.canvas[:, -16:], fixed.canvas[:, -16:]
    changed = a != b
    nonzero_free = ((a != 0) & (np.array(template) == IDS.mask_id)).sum(axis=1)
    np.testing.assert_array_equal(changed.sum(axis=1), np.minimum(3, nonzero_free))
    assert np.all(b[changed] == 0)
    assert np.all(b[:, 6:8] == 4) and np.all(base.canvas[:, :-16] == fixed.canvas[:, :-16])
    assert fixed.nfe == 4 + 3


@pytest.mark.parametrize("kw,match", [
    (dict(objective="uniform", block_length=4), "block_length=4 does not apply"),
    (dict(objective="gidd", sampler="topk_confidence"), "not a sampler of objective='gidd'"),
    (dict(objective="mdm", sampler="renoise"), "samples uniform-state"),
    (dict(objective="mdm", correction_steps=2), "correction_steps=2 is the self-correction"),
    (dict(objective="gidd", correction_steps=-1), "correction_steps=-1"),
    (dict(objective="uniform", cfg=1.0), "guidance is not implemented"),
])
def test_bad_sampling_arguments_are_clear_errors(kw, match):
    from dllm_jax.sampling.options import resolve

    with pytest.raises(ConfigError, match=match):
        resolve(max_new_tokens=8, **kw)


# ---------------------------------------------------------------- end to end
def test_train_sample_evaluate_export_and_import_a_gidd_run(tmp_path, corpus, trained_runs, capsys):
    import json
    import os

    from conftest import tiny_config

    from dllm_jax import flops
    from dllm_jax.checkpoint import load_run
    from dllm_jax.cli import main
    from dllm_jax.metrics import read_metrics
    from dllm_jax.train import train

    paths, cache = corpus
    cfg = tiny_config(paths, cache, "gidd", gidd__p_u=0.3, data__document_attention=True, train__grad_accum=2, train__eval_every=0,
                      model__loss_chunk=8, eval__cloze_every=8, eval__cloze_examples=8)
    workdir = str(tmp_path / "gidd")
    summary = train(cfg, workdir)
    records = read_metrics(workdir)
    val = [r for r in records if "val_loss" in r][-1]
    assert set(objectives.build(cfg).val_metrics) <= set(val) and 0 < val["val_loss"] < 2 * math.log(320)
    assert "cloze_acc" in val
    train_rec = [r for r in records if "elbo" in r][-1]
    assert set(objectives.build(cfg).train_metrics) <= set(train_rec) and 0 < train_rec["noise_frac"] < 1
    run = load_run(workdir)
    assert summary["flops_per_token"] == flops.train_flops_per_token(run.model.cfg, 32)  # the MDM's: one pass of L tokens
    capsys.readouterr()
    assert main(["sample", "--workdir", workdir, "--prompt", "the river", "--max-new-tokens", "12", "--steps", "4",
                 "--correction-steps", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objective"] == "gidd" and out["sampler"] == "ancestral" and out["nfe"] == 6
    # gen-PPL with self-correction: the passes count in the NFE and the result records them
    gp_path = str(tmp_path / "genppl.json")
    assert main(["eval", "--workdir", workdir, "--task", "genppl", "--reference-workdir", trained_runs["ar"], "--num-samples", "2",
                 "--max-new-tokens", "12", "--steps", "4", "--correction-steps", "2", "--output", gp_path]) == 0
    with open(gp_path) as f:
        gp = json.load(f)
    assert (gp["steps"], gp["correction_steps"], gp["correction_temperature"], gp["nfe"]) == (4, 2, 0.1, 6) and gp["gen_ppl"] > 1
    assert main(["eval", "--workdir", trained_runs["mdm"], "--task", "genppl", "--reference-workdir", trained_runs["ar"],
                 "--correction-steps", "2"]) == 2  # the MDM has no self-correction: one clear error
    assert "correction_steps=2 is the self-correction" in capsys.readouterr().err
    res_path = str(tmp_path / "val.json")
    assert main(["eval", "--workdir", workdir, "--task", "val", "--limit", "8", "--mc-samples", "4", "--output", res_path]) == 0
    with open(res_path) as f:
        res = json.load(f)
    assert not res["exact"] and 0 < res["stderr_nats_per_token"] < res["nats_per_token"]
    mc_path = str(tmp_path / "mc.json")
    data = os.path.join(os.path.dirname(__file__), "data", "mc_toy.jsonl")
    assert main(["eval", "--workdir", workdir, "--task", "jsonl", "--data", data, "--mc-samples", "4", "--output", mc_path]) == 0
    with open(mc_path) as f:
        mc = json.load(f)
    assert mc["n"] == 4 and mc["estimator"] == "interpolating_pair_mc" and mc["mc_samples"] == 4
    # export names the objective and p_u; import restores them with the parameters
    out_dir = str(tmp_path / "export")
    assert main(["export", "--workdir", workdir, "--output", out_dir]) == 0
    entry = json.load(open(os.path.join(out_dir, "config.json")))["dllm_jax"]
    assert entry["objective"] == "gidd" and entry["objective_config"] == {"gidd.p_u": 0.3, "gidd.gamma": 1.0, "mdm.schedule": "linear"}
    assert json.load(open(os.path.join(out_dir, "tokenizer_config.json")))["mask_token_id"] == run.tokenizer.mask_id
    imported = str(tmp_path / "imported")
    assert main(["import", "--hf", out_dir, "--workdir", imported]) == 0
    back = load_run(imported)
    assert back.config.objective == "gidd" and back.config.gidd.p_u == 0.3
    for x, y in zip(jax.tree.leaves(run.params), jax.tree.leaves(back.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
