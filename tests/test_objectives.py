"""Loss values of both objectives against hand-computed cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import objectives as obj

IDS = obj.TokenIds(pad_id=0, eos_id=2, mask_id=7)  # real vocab: ids 0..6 (7 tokens)
V_ROWS = 8  # model rows: 7 real + [MASK]


def _loss(prep, logits, vocab_limit=IDS.mask_id):
    ce = obj.token_cross_entropy(logits, prep.targets, vocab_limit)
    return float(jnp.sum(prep.weights * ce) / prep.denom)


def test_cross_entropy_matches_numpy_and_ignores_non_vocab_rows():
    rng = np.random.RandomState(0)
    logits = rng.randn(2, 5, V_ROWS).astype(np.float32)
    targets = rng.randint(0, 7, (2, 5))
    ce = np.asarray(obj.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 7))
    real = logits[..., :7]
    expected = np.log(np.exp(real).sum(-1)) - np.take_along_axis(real, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(ce, expected, rtol=1e-5)
    # the [MASK] row never takes probability mass, however large its logit
    logits[..., 7] = 100.0
    ce2 = np.asarray(obj.token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), 7))
    np.testing.assert_allclose(ce2, expected, rtol=1e-5)


def test_ar_loss_uniform_logits_is_log_vocab_and_skips_padding():
    tokens = jnp.array([[3, 4, 5, 6, 0, 0], [1, 3, 3, 4, 5, 6]])
    prep = obj.prepare_ar(tokens, jax.random.key(0), IDS)
    # targets are shifted inputs; last position and padding targets carry no weight
    np.testing.assert_array_equal(prep.targets[0], [4, 5, 6, 0, 0, 0])
    np.testing.assert_array_equal(prep.weights, [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    assert float(prep.denom) == 8.0
    assert _loss(prep, jnp.zeros((2, 6, V_ROWS))) == pytest.approx(math.log(7), rel=1e-6)


def test_ar_loss_hand_computed():
    # one sequence [3, 4, 5]: targets 4 (from pos 0) and 5 (from pos 1)
    tokens = jnp.array([[3, 4, 5]])
    logits = np.zeros((1, 3, V_ROWS), np.float32)
    logits[0, 0, 4] = math.log(6.0)  # p(4) = 6 / (6 + 6) = 1/2
    logits[0, 1, 5] = math.log(3.0)  # p(5) = 3 / (3 + 6) = 1/3
    prep = obj.prepare_ar(tokens, jax.random.key(0), IDS)
    expected = (math.log(2.0) + math.log(3.0)) / 2
    assert _loss(prep, jnp.asarray(logits)) == pytest.approx(expected, rel=1e-6)


def test_ar_input_masking_changes_inputs_not_targets():
    tokens = jnp.tile(jnp.arange(1, 7)[None], (64, 1))
    prep = obj.prepare_ar(tokens, jax.random.key(1), IDS, input_mask_rate=0.5)
    frac = float(jnp.mean(prep.inputs == IDS.mask_id))
    assert 0.4 < frac < 0.6
    np.testing.assert_array_equal(prep.targets[:, :-1], tokens[:, 1:])


def test_antithetic_times_are_stratified():
    t = np.sort(np.asarray(obj.sample_times(jax.random.key(3), 16, 1e-3, antithetic=True)))
    u = (t - 1e-3) / (1 - 1e-3)
    np.testing.assert_allclose(np.diff(u), 1 / 16, atol=1e-6)
    assert t.min() >= 1e-3 and t.max() < 1.0


def test_mdm_loss_matches_hand_computation_from_mask_and_t():
    rng = np.random.RandomState(0)
    tokens = jnp.asarray(rng.randint(1, 7, (4, 10)))
    logits = jnp.asarray(rng.randn(4, 10, V_ROWS).astype(np.float32))
    prep = obj.prepare_mdm(tokens, jax.random.key(5), IDS, eps=1e-3)
    masked = np.asarray(prep.inputs) == IDS.mask_id
    t = np.asarray(prep.extras["t"])
    # unmasked inputs are the clean tokens; targets are unshifted
    np.testing.assert_array_equal(np.asarray(prep.inputs)[~masked], np.asarray(tokens)[~masked])
    np.testing.assert_array_equal(prep.targets, tokens)
    real = np.asarray(logits)[..., :7]
    ce = np.log(np.exp(real).sum(-1)) - np.take_along_axis(real, np.asarray(tokens)[..., None], -1)[..., 0]
    expected = (ce * masked / t[:, None]).sum() / tokens.size  # sum over masked of CE / t, per token
    assert _loss(prep, logits) == pytest.approx(expected, rel=1e-5)


def test_mdm_uniform_model_elbo_is_log_vocab_in_expectation():
    # E_t[(1/t) * #masked] = L, so a uniform model's per-token ELBO is log V on average
    tokens = jnp.full((64, 32), 3)
    losses = [_loss(obj.prepare_mdm(tokens, jax.random.key(i), IDS), jnp.zeros((64, 32, V_ROWS))) for i in range(20)]
    assert np.mean(losses) == pytest.approx(math.log(7), rel=0.03)


def test_mdm_realized_weighting_uniform_model_is_exactly_log_vocab():
    # weight = 1 / realised masked fraction, so sum over masked of CE * L / n_masked = L log V
    tokens = jnp.full((8, 16), 4)
    prep = obj.prepare_mdm(tokens, jax.random.key(2), IDS, weighting="realized")
    assert bool(jnp.all((prep.inputs == IDS.mask_id).sum(1) >= 1))  # never zero masked tokens
    assert _loss(prep, jnp.zeros((8, 16, V_ROWS))) == pytest.approx(math.log(7), rel=1e-6)


def test_mdm_never_masks_or_counts_padding():
    tokens = jnp.array([[3, 4, 5, 0, 0, 0, 0, 0]] * 16)
    prep = obj.prepare_mdm(tokens, jax.random.key(0), IDS, weighting="realized")
    assert not bool(jnp.any(prep.inputs[:, 3:] == IDS.mask_id))
    assert not bool(jnp.any(prep.weights[:, 3:] != 0))
    assert float(prep.denom) == 16 * 3
    assert prep.segment_ids is None  # no document or length masking asked for: full attention
    # with attention masks on, padding gets segment 0 (attends to and from nothing)
    for kwargs in (dict(document_attention=True), dict(random_length_prob=1e-6)):
        seg = obj.prepare_mdm(tokens, jax.random.key(0), IDS, weighting="realized", **kwargs).segment_ids
        assert seg is not None and bool(jnp.all(seg[:, 3:] == 0)) and bool(jnp.all(seg[:, :3] > 0)), kwargs


def test_mask_rate_follows_schedule():
    tokens = jnp.full((256, 64), 3)
    for schedule in ("linear", "cosine"):
        prep = obj.prepare_mdm(tokens, jax.random.key(7), IDS, schedule=schedule)
        frac = np.asarray((prep.inputs == IDS.mask_id).mean(1))
        p = np.asarray(obj.mask_prob(prep.extras["t"], schedule))
        assert np.abs(frac - p).mean() < 0.05


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_elbo_weight_is_minus_alpha_prime_over_one_minus_alpha(schedule):
    t = jnp.linspace(0.05, 0.95, 19)
    alpha = lambda s: 1.0 - obj.mask_prob(s, schedule)  # noqa: E731
    d_alpha = jax.vmap(jax.grad(alpha))(t)
    np.testing.assert_allclose(obj.elbo_weight(t, schedule), -d_alpha / (1 - alpha(t)), rtol=1e-4)


def test_random_length_truncates_to_a_prefix():
    tokens = jnp.full((4, 32), 3)
    prep = obj.prepare_mdm(tokens, jax.random.key(11), IDS, random_length_prob=1.0)
    valid = np.asarray(prep.segment_ids) > 0
    n = valid[0].sum()
    assert 1 <= n <= 32 and (valid == (np.arange(32) < n)).all()  # same prefix for the whole batch
    assert float(prep.denom) == 4 * n
    assert not bool(jnp.any(prep.weights[:, n:] != 0))


def test_document_attention_segments_split_after_eos():
    tokens = jnp.array([[5, 6, 2, 4, 4, 2, 3, 0]])
    seg = obj.segment_ids_from_eos(tokens, IDS.eos_id)
    np.testing.assert_array_equal(seg, [[1, 1, 1, 2, 2, 2, 3, 3]])


@pytest.mark.parametrize("weighting", ["realized", "elbo"])
def test_logged_elbo_is_the_entropy_of_iid_tokens_under_true_marginals(weighting):
    # i.i.d. tokens from p, a model that outputs p: the continuous-time ELBO is tight, so the
    # logged `elbo` must equal the entropy H(p) = 1.3331 nats whatever the training weighting.
    # The forced extra mask of weighting='realized' (no token masked at small t) is outside the
    # p(t) draw; weighting it by 1/t would log 1.452 here.
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    entropy = float(-(p * np.log(p)).sum())
    assert entropy == pytest.approx(1.3331, abs=1e-4)
    ids = obj.TokenIds(pad_id=6, eos_id=5, mask_id=7)
    logits = jnp.asarray(np.concatenate([np.log(p), [-1e9, -1e9, 30.0]]), jnp.float32)

    @jax.jit
    def elbo(key):
        k_tok, k_prep = jax.random.split(key)
        tokens = jax.random.choice(k_tok, 5, (64, 32), p=jnp.asarray(p))
        prep = obj.prepare_mdm(tokens, k_prep, ids, weighting=weighting)
        ce = obj.token_cross_entropy(jnp.broadcast_to(logits, (64, 32, 8)), prep.targets, ids.mask_id)
        return obj.finalize(obj.metrics_from_ce(ce, prep, "mdm"), "mdm")["elbo"]

    vals = np.asarray(jax.vmap(elbo)(jax.random.split(jax.random.key(0), 400)), np.float64)
    se = vals.std(ddof=1) / math.sqrt(len(vals))
    assert se < 0.02  # power against the biased 1.452
    assert abs(vals.mean() - entropy) < 4 * se, (vals.mean(), entropy, se)
