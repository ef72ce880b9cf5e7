"""Sampling: tail-exact categorical draws, AR cache exactness, MDM sampler invariants, errors, CLI."""
import decimal
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.checkpoint import load_run
from dllm_jax.cli import main
from dllm_jax.errors import CheckpointError, ConfigError
from dllm_jax.models.transformer import init_cache
from dllm_jax.sampling import categorical, diffusion, generate, generate_tokens, parse_infill
from dllm_jax.sampling.api import _finish
from dllm_jax.sampling.options import resolve


@pytest.fixture(scope="module")
def runs(trained_runs):
    return {k: load_run(v) for k, v in trained_runs.items()}


# ---------------------------------------------------------------- categorical draws
def _gumbel_reference(hi: int, lo: int) -> float:
    """-ln(-ln(1 - U)), U = (hi 2^32 + lo + 1/2) / 2^64, in 60-digit decimal arithmetic."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        u = (decimal.Decimal(hi * 2**32 + lo) + decimal.Decimal("0.5")) / decimal.Decimal(2**64)
        return float(-(-(1 - u).ln()).ln())


def test_gumbel_noise_matches_high_precision_reference_including_extreme_tail():
    rng = np.random.default_rng(0)
    hi = rng.integers(0, 2**32, 400, dtype=np.uint64)
    lo = rng.integers(0, 2**32, 400, dtype=np.uint64)
    extremes = [(0, 0), (0, 1), (0, 2**32 - 1), (1, 0), (2**31 - 1, 2**32 - 1), (2**31, 0), (2**32 - 1, 2**32 - 1), (2**32 - 1, 0)]
    hi = np.concatenate([hi, [e[0] for e in extremes]]).astype(np.uint32)
    lo = np.concatenate([lo, [e[1] for e in extremes]]).astype(np.uint32)
    got = np.asarray(jax.jit(categorical.gumbel_from_bits)(hi, lo), np.float64)
    want = np.array([_gumbel_reference(int(h), int(l)) for h, l in zip(hi, lo)])
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    # the upper tail reaches ~45 (P(G > 45) ~ 2^-65), where 23-bit float32 uniforms stop at ~16.6
    assert got[-8] == pytest.approx(45.05, abs=0.01)
    naive_cap = -math.log(-math.log(float(np.nextafter(np.float32(1), np.float32(0)))))
    assert naive_cap < 17.0 < got[-8]


def test_categorical_frequencies_follow_temperature_top_k_and_top_p():
    logits = jnp.log(jnp.array([0.5, 0.25, 0.15, 0.07, 0.03]))
    n = 40_000
    keys = jax.random.split(jax.random.key(1), 1)[0]

    @jax.jit
    def draw(key, temperature, top_p):
        lg = categorical.filter_logits(jnp.broadcast_to(logits, (n, 5)), temperature=temperature, top_k=0, use_top_p=True, top_p=top_p)
        return categorical.draw(key, lg, greedy=False)

    def freq(temperature, top_p):
        return np.bincount(np.asarray(draw(keys, temperature, top_p)), minlength=5) / n

    p = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
    for temperature in (1.0, 0.5):
        q = p ** (1 / temperature) / np.sum(p ** (1 / temperature))
        f = freq(temperature, 1.0)
        assert np.all(np.abs(f - q) <= 4 * np.sqrt(q * (1 - q) / n) + 1e-3), (temperature, f, q)
    # top_p = 0.8: keep the smallest set with mass >= 0.8 -> {0.5, 0.25, 0.15}
    f = freq(1.0, 0.8)
    np.testing.assert_allclose(f, np.array([0.5, 0.25, 0.15, 0, 0]) / 0.9, atol=0.01)
    lg = categorical.filter_logits(logits[None], temperature=1.0, top_k=2, use_top_p=False, top_p=1.0)
    assert np.sum(np.asarray(lg) > -1e29) == 2
    # excluded ids ([MASK] and beyond, pad) are never drawn even when they dominate
    lg = categorical.exclude_ids(jnp.array([[5.0, 0.0, 0.0, 50.0, 50.0]]), vocab_limit=3, banned=(0,))
    draws = categorical.draw(jax.random.key(2), jnp.broadcast_to(lg, (1000, 5)), greedy=False)
    assert set(np.unique(np.asarray(draws))) <= {1, 2}


# ---------------------------------------------------------------- AR
AR_PROMPTS = ["The river", "Quiet old window near the", ""]  # ragged on purpose


def test_ar_greedy_with_kv_cache_equals_no_cache_and_stops_at_eos(runs):
    r = runs["ar"]
    prompts = AR_PROMPTS
    kw = dict(objective="ar", max_new_tokens=12, temperature=0.0)
    cached = generate(r.model, r.params, r.tokenizer, prompts, **kw)
    plain = generate(r.model, r.params, r.tokenizer, prompts, kv_cache=False, **kw)
    np.testing.assert_array_equal(cached.tokens, plain.tokens)
    np.testing.assert_array_equal(cached.lengths, plain.lengths)
    assert cached.texts == plain.texts and any(cached.texts)
    assert cached.nfe == plain.nfe >= 12
    # rows are independent: decoding in chunks of 2 (the last one padded) gives the same greedy tokens
    chunked = generate(r.model, r.params, r.tokenizer, prompts, batch_size=2, **kw)
    np.testing.assert_array_equal(chunked.tokens, cached.tokens)
    assert chunked.texts == cached.texts
    # the cache decodes the longest prompt's forced tokens too: NFE = 1 prefill + one per later position
    n_prompt = [len(r.tokenizer.encode(p)) + 1 for p in prompts]
    assert cached.nfe <= 1 + (max(n_prompt) - min(n_prompt)) + 12
    for row, n, stopped in zip(cached.tokens, cached.lengths, cached.stopped_at_eos):
        assert np.all(row[n:] == r.tokenizer.pad_id)
        assert r.tokenizer.eos_id not in row[:n]
        assert stopped or n == 12
    # greedy decoding of the prompt + continuation reproduces the continuation token by token
    row = [r.tokenizer.eos_id] + r.tokenizer.encode(prompts[0]) + list(cached.tokens[0, :cached.lengths[0]])
    logits = r.model.apply({"params": r.params}, jnp.array([row]), causal=True)
    real = np.asarray(categorical.exclude_ids(logits, r.tokenizer.mask_id, banned=(r.tokenizer.pad_id,)))
    start = 1 + len(r.tokenizer.encode(prompts[0]))
    np.testing.assert_array_equal(real[0, start - 1:len(row) - 1].argmax(-1), row[start:])


# ---------------------------------------------------------------- MDM invariants
def _check_history(res, mask_id):
    hist, given = res.history, res.given
    assert hist.shape[0] >= 2
    final = hist[-1]
    assert not np.any(final == mask_id)
    np.testing.assert_array_equal(final, res.canvas)
    # given tokens (prompt, infill text, padding) never change
    assert np.all(hist[:, given] == hist[0][given])
    # every other position changes exactly once, from [MASK] to a real token, and stays
    changes = (hist[1:] != hist[:-1]).sum(axis=0)
    free = hist[0] == mask_id
    np.testing.assert_array_equal(changes[free], 1)
    np.testing.assert_array_equal(changes[~free], 0)
    assert np.all(final[free] < mask_id)
    # reveal_step says when: the first history entry without [MASK] there is step + 1
    first_real = np.argmax(hist != mask_id, axis=0)
    np.testing.assert_array_equal(first_real[free], res.reveal_step[free] + 1)
    assert np.all(res.reveal_step[~free] == -1)


@pytest.mark.parametrize(
    "sampler,kw",
    [
        ("ancestral", dict(steps=12, block_length=4)),
        ("topk_confidence", dict(block_length=4, prefix_cache=True, cfg=1.5)),
        ("random", dict(steps=6, block_length=4)),
        ("margin", dict(block_length=6)),
        ("entropy", dict(steps=4)),
        ("threshold", dict(block_length=4, threshold=0.3, prefix_cache=True)),  # + decoding by prompt-length groups
    ],
)
def test_every_mdm_sampler_reveals_each_position_once_and_keeps_given_tokens(runs, sampler, kw):
    r = runs["mdm"]
    tok = r.tokenizer
    short, long = tok.encode("The old"), tok.encode("A river finds the quiet")
    prompts = [short, long, short[::-1]]  # two prompt lengths: left padding (or groups with the prefix cache)
    if sampler == "topk_confidence":
        prompts = [long, long[::-1], long[1:] + long[:1]]  # one length: a single compilation
    a, b, c = tok.encode("the city and")[:3]
    m = tok.mask_id
    template = [m, m, m, a, m, m, m, m, b, c, m, m]  # 12 positions, 3 given
    res = generate_tokens(r.model, r.params, tok, prompts, objective="mdm", sampler=sampler, infill_tokens=template, trace=True,
                          seed=3, **kw)
    n = len(template)
    assert res.tokens.shape == (3, n) and list(res.lengths) == [n] * 3
    _check_history(res, tok.mask_id)
    region = res.canvas[:, -n:]
    fixed = np.array(template) != tok.mask_id
    assert np.all(region[:, fixed] == np.array(template)[fixed])
    for i, p in enumerate(prompts):  # prompts sit right before the region, untouched
        ids = [tok.eos_id] + p
        assert list(res.canvas[i, -n - len(ids):-n]) == ids
    assert res.nfe >= 1 and res.seconds > 0
    if sampler in ("topk_confidence", "margin", "entropy"):
        # fixed-step samplers: at most `steps` network calls (x2 with CFG), per group of equal prompt
        # lengths when the prefix cache has to decode those apart
        groups = len({len(p) for p in prompts}) if kw.get("prefix_cache") else 1
        assert res.nfe <= kw.get("steps", n) * (2 if kw.get("cfg") else 1) * groups


MDM_KW = dict(objective="mdm", sampler="topk_confidence", max_new_tokens=8, seed=11)
MDM_PROMPTS = ["The", "A"]


def test_mdm_same_seed_same_sample_and_seed_matters(runs):
    r = runs["mdm"]
    a = generate(r.model, r.params, r.tokenizer, MDM_PROMPTS, **MDM_KW)
    b = generate(r.model, r.params, r.tokenizer, MDM_PROMPTS, **MDM_KW)
    c = generate(r.model, r.params, r.tokenizer, MDM_PROMPTS, **{**MDM_KW, "seed": 12})
    np.testing.assert_array_equal(a.canvas, b.canvas)
    assert a.texts == b.texts
    assert not np.array_equal(a.canvas, c.canvas)
    assert a.compile_seconds > 0 and b.compile_seconds == 0  # compiled once, reused


def test_prefix_cache_refresh_is_exact_and_block_queries_use_the_cached_prefix_and_suffix(runs):
    r = runs["mdm"]
    model, params, mask = r.model, jax.device_put(r.params, jax.devices()[0]), r.tokenizer.mask_id
    x = np.random.default_rng(0).integers(3, 300, (2, 16)).astype(np.int32)
    x[:, 9:] = mask
    x[:, 14] = 5  # an infill token in the suffix
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x, causal=False))
    refresh = jax.jit(diffusion.refresh_cache, static_argnums=0, static_argnames="block_len")
    query_block = jax.jit(diffusion.query_block, static_argnums=0, static_argnames="block_len")
    full = np.asarray(apply(params, x))
    bs, bl = 8, 4
    block, cache = refresh(model, params, x, bs, init_cache(model.cfg, 2, 16), block_len=bl)
    np.testing.assert_allclose(np.asarray(block), full[:, bs:bs + bl], atol=2e-5)  # block start: exact
    query, _ = query_block(model, params, x, bs, cache, block_len=bl)
    np.testing.assert_allclose(np.asarray(query), full[:, bs:bs + bl], atol=2e-5)  # unchanged canvas: still exact
    # the query sees the suffix through the cache: it is stale (a later suffix edit is not seen) but present
    # (a canvas without the suffix token gives other logits)
    edited = x.copy()
    edited[:, 14] = 6
    stale, _ = query_block(model, params, edited, bs, cache, block_len=bl)
    np.testing.assert_allclose(np.asarray(stale), np.asarray(query), atol=1e-6)
    other = np.asarray(apply(params, edited))[:, bs:bs + bl]
    assert np.abs(other - full[:, bs:bs + bl]).max() > 1e-3
    # a token revealed inside the block is seen at once
    edited = x.copy()
    edited[:, 9] = 7
    fresh, _ = query_block(model, params, edited, bs, cache, block_len=bl)
    assert np.abs(np.asarray(fresh) - np.asarray(query)).max() > 1e-3


def test_cfg_weight_zero_is_no_guidance(runs):
    r = runs["mdm"]
    plain = generate(r.model, r.params, r.tokenizer, MDM_PROMPTS, **MDM_KW)
    assert generate(r.model, r.params, r.tokenizer, MDM_PROMPTS, cfg=0.0, **MDM_KW).texts == plain.texts
    # the guided path with a vanishing weight computes u + (1 + w)(c - u) ~= c: the same draws
    # (same seed), twice the network evaluations (a swapped conditional/unconditional pair gives u)
    tiny = generate(r.model, r.params, r.tokenizer, MDM_PROMPTS, cfg=1e-7, **MDM_KW)
    np.testing.assert_array_equal(tiny.canvas, plain.canvas)
    assert tiny.nfe == 2 * plain.nfe


def test_eos_is_committed_last_and_output_is_cut_at_first_eos():
    eos, mask = 2, 9
    plan = diffusion.Plan(kind="topk_confidence", gen_start=0, gen_len=4, block_len=4, steps_per_block=4, prefix_cache=False,
                          guided=False, greedy=True, top_k=0, use_top_p=False, eos_last=True, schedule="linear",
                          vocab_limit=mask, eos_id=eos, pad_id=0, trace=False)
    x0 = jnp.array([[eos, 5, 6, eos]])
    probs = jax.nn.one_hot(x0, 10) * jnp.array([[0.99, 0.6, 0.5, 0.98]])[..., None]
    masked = jnp.ones((1, 4), bool)
    key = jnp.zeros((1, 4))  # order uniforms: unused by these samplers
    first = diffusion._reveal(plan, 0, masked, x0, probs, key, 0.0)
    assert np.asarray(first).tolist() == [[False, True, False, False]]  # the confident EOS waits
    thr = dict(plan.__dict__, kind="threshold")
    got = diffusion._reveal(diffusion.Plan(**thr), 0, masked, x0, probs, key, 0.4)
    assert np.asarray(got).tolist() == [[False, True, True, False]]  # threshold never reveals EOS early
    only_eos = diffusion._reveal(diffusion.Plan(**thr), 0, masked & (x0 == eos), x0, probs, key, 0.999)
    assert np.asarray(only_eos).sum() == 1  # ...but at least one token per step
    opts = resolve(objective="mdm", max_new_tokens=5)
    ids = type("Ids", (), dict(pad_id=0, eos_id=eos, mask_id=mask))
    res = _finish(np.array([[4, 5, eos, 6, eos], [4, 5, 6, 7, 8]]), np.array([5, 5]), 5, (1.0, 0.0, 1.0), 10, opts, ids, cut_at_eos=True)
    assert res.lengths.tolist() == [2, 5] and res.stopped_at_eos.tolist() == [True, False]
    assert res.tokens.tolist() == [[4, 5, 0, 0, 0], [4, 5, 6, 7, 8]]


# ---------------------------------------------------------------- errors and CLI
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(objective="mdm", steps=0), "steps=0 must be an integer >= 1"),
        (dict(objective="mdm", max_new_tokens=10, block_length=4), "block_length=4 does not divide .* 10"),
        (dict(objective="mdm", max_new_tokens=8, block_length=4, steps=3), "steps=3 must be a multiple of the number of blocks"),
        (dict(objective="mdm", sampler="gready"), "unknown sampler 'gready'; choose one of: ar, ancestral, threshold, topk_confidence"),
        (dict(objective="ar", sampler="threshold"), "masked-diffusion sampler but this run is autoregressive"),
        (dict(objective="mdm", sampler="ar"), "use one of: ancestral"),
        (dict(objective="mdm", sampler="margin", threshold=0.9), "threshold=0.9 applies to sampler 'threshold' only"),
        (dict(objective="mdm", sampler="threshold", threshold=1.5), r"threshold=1.5 must be in \(0, 1\]"),
        (dict(objective="ar", cfg=1.0), "cfg=1.0"),
        (dict(objective="mdm", top_p=0.0), "top_p=0.0"),
        (dict(objective="mdm", temperature=-1.0), "temperature=-1.0"),
    ],
)
def test_bad_sampling_arguments_give_clear_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        resolve(**kw)


def test_infill_template_parsing(runs):
    tok = runs["mdm"].tokenizer
    ids = parse_infill("a[MASK] b[MASK:3]", tok)
    assert ids.count(tok.mask_id) == 4 and ids[:len(tok.encode("a"))] == tok.encode("a")
    with pytest.raises(ConfigError, match="no span to fill"):
        parse_infill("no gaps here", tok)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        generate_tokens(runs["mdm"].model, runs["mdm"].params, tok, [[tok.mask_id]], objective="mdm")


def test_cli_sample_prints_text_and_speed(trained_runs, tmp_path, capsys):
    args = [a for p in AR_PROMPTS for a in ("--prompt", p)]  # the shapes of the AR test: compiled already
    code = main(["sample", "--workdir", trained_runs["ar"], *args, "--max-new-tokens", "12", "--temperature", "0"])
    assert code == 0
    out, err = capsys.readouterr()
    assert out.count("--- sample") == 3 and out.count("The river") == 1
    assert "NFE" in err and "tokens/s" in err and "sampler ar" in err
    assert main(["sample", "--workdir", str(tmp_path), "--prompt", "x"]) == 2
    assert "no checkpoints/ folder" in capsys.readouterr().err
    assert main(["sample", "--workdir", trained_runs["mdm"], "--sampler", "nope"]) == 2
    assert "unknown sampler 'nope'" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        load_run(str(tmp_path))


def test_prompt_longer_than_the_trained_context_warns_with_both_numbers(runs, caplog):
    from dllm_jax.sampling import generate_tokens

    run = runs["ar"]
    ctx = run.config.data.seq_len  # 32 in the test runs
    prompt = list(range(3, 3 + ctx))  # [EOS] + 32 prompt tokens + 4 new = 37 positions
    with caplog.at_level("WARNING", logger="dllm_jax"):
        generate_tokens(run.model, run.params, run.tokenizer, [prompt], objective="ar", max_new_tokens=4,
                        temperature=0.0, context_length=ctx)
    msgs = [r.getMessage() for r in caplog.records if "trained on" in r.getMessage()]
    assert len(msgs) == 1 and f"(33 tokens) + 4 new tokens = 37 positions, longer than the {ctx} the model was trained on" in msgs[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="dllm_jax"):  # fits: no warning
        generate_tokens(run.model, run.params, run.tokenizer, [prompt[: ctx - 5]], objective="ar", max_new_tokens=4,
                        temperature=0.0, context_length=ctx)
    assert not [r for r in caplog.records if "trained on" in r.getMessage()]
