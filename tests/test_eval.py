"""Evaluation: estimators checked against exact values, task files, cloze, CLI, training hook,
lm-evaluation-harness adapter and generative perplexity."""

import bz2
import codecs
import dataclasses
import gzip
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from dllm_jax.errors import ConfigError, DataError
from dllm_jax.evaluation import cloze, genppl, likelihood, multiple_choice, tasks
from dllm_jax.evaluation.likelihood import Scorer, ScoreSpec

DATA = os.path.join(os.path.dirname(__file__), "data")

# ---------------------------------------------------------------- toy models
V = 6  # real tokens 0..5; id 6 = [MASK]; rows 6, 7 are not real tokens
MASK = V
LOG_PI = np.log(np.array([0.05, 0.1, 0.15, 0.2, 0.2, 0.3]))


def marginal_model(params, tokens, segment_ids):
    """Outputs the true marginals everywhere, whatever the input. Non-token rows get large
    logits: an estimator that forgot to exclude them would be far off."""
    row = jnp.concatenate([jnp.asarray(LOG_PI, jnp.float32), jnp.array([4.0, 6.0])])
    return jnp.broadcast_to(row, tokens.shape + (V + 2,))


def context_model(params, tokens, segment_ids):
    """Predictions depend on the masking pattern: how many tokens are masked, whether the
    left neighbour is masked, and the left neighbour's value."""
    b, n = tokens.shape
    n_masked = (tokens == MASK).sum(axis=1).astype(jnp.float32)
    prev = jnp.concatenate([jnp.full((b, 1), MASK), tokens[:, :-1]], axis=1)
    logits = jnp.broadcast_to(jnp.asarray(LOG_PI, jnp.float32), (b, n, V))
    logits = logits + 0.7 * n_masked[:, None, None] * jax.nn.one_hot(0, V)
    logits = logits + 1.5 * (prev == MASK)[..., None] * jax.nn.one_hot(1, V)
    logits = logits + 0.9 * jax.nn.one_hot(jnp.clip(prev, 0, V - 1), V) * (prev < V)[..., None]
    return jnp.concatenate([logits, jnp.full((b, n, 2), 5.0)], axis=-1)


def toy_spec(objective="mdm", schedule="linear", max_len=64):
    return ScoreSpec(objective=objective, vocab_limit=V, mask_id=MASK, eos_id=2, max_len=max_len, schedule=schedule, eps=1e-3)


def log_softmax_real(logits, limit):
    x = np.asarray(logits, np.float64)[..., :limit]
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


@pytest.fixture(scope="module")
def loaded(trained_runs):
    """The session's tiny trained runs, loaded once for this module."""
    from dllm_jax.checkpoint import load_run

    return {k: load_run(v) for k, v in trained_runs.items()}


# ---------------------------------------------------------------- MDM ELBO
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_elbo_equals_exact_nll_for_true_marginals(schedule):
    rng = np.random.default_rng(0)
    seqs = rng.choice(V, size=(12, 24), p=np.exp(LOG_PI)).astype(np.int32)
    exact = -LOG_PI[seqs].sum()
    scorer = Scorer(marginal_model, toy_spec(schedule=schedule), batch_size=128)
    res = scorer.sequence_nll(None, seqs, mc_samples=64, seed=1)
    se_total = res["stderr_nats_per_token"] * res["tokens"]
    assert res["tokens"] == seqs.size and not res["exact"]
    assert se_total < 0.05 * exact  # the check below has power
    assert abs(res["nelbo_total"] - exact) < 4 * se_total, (res["nelbo_total"], exact, se_total)
    assert res["bits_per_token"] == pytest.approx(res["nats_per_token"] / math.log(2))
    assert res["perplexity_bound"] == pytest.approx(math.exp(res["nats_per_token"]))


def test_elbo_draws_are_weighted_masked_ce_of_a_trained_mdm(loaded):
    """Each ELBO draw of the trained MDM is w(t) * (sum of CE over the masked tokens),
    recomputed here by hand from the masked input; the ELBO is >= the unweighted masked CE
    (w >= 1) and the realised masking rate follows p(t)."""
    run = loaded["mdm"]
    scorer = Scorer.for_model(run.model, run.config, run.tokenizer)
    seen = {}

    def recording_logits(params, tokens, segment_ids):
        seen["inputs"] = np.asarray(tokens)
        return scorer.logits_fn(params, tokens, segment_ids)

    rng = np.random.default_rng(0)
    tokens = rng.integers(3, run.tokenizer.vocab_size, size=(64, 32)).astype(np.int32)
    t = np.linspace(0.05, 0.95, 64).astype(np.float32)
    seg = np.ones_like(tokens)
    value, n_masked, _ = likelihood.mdm_elbo_batch(recording_logits, run.params, jnp.asarray(tokens), jnp.asarray(seg), jnp.asarray(t),
                                               3, jnp.arange(64, dtype=jnp.uint32), scorer.spec)
    masked = seen["inputs"] == run.tokenizer.mask_id
    assert np.array_equal(masked.sum(1), np.asarray(n_masked))
    assert np.array_equal(np.where(masked, tokens, seen["inputs"]), tokens)  # only [MASK] substitutions
    logits = np.asarray(scorer.logits_fn(run.params, jnp.asarray(seen["inputs"]), jnp.asarray(seg)))
    lp = log_softmax_real(logits, run.tokenizer.mask_id)
    ce = -np.take_along_axis(lp, tokens[..., None], -1)[..., 0]
    hand = (ce * masked).sum(1) / t
    np.testing.assert_allclose(np.asarray(value), hand, rtol=2e-4)
    assert np.all(np.asarray(value) >= (ce * masked).sum(1) - 1e-4)
    assert abs(masked.mean() - t.mean()) < 0.03  # masking rate ~ p(t) = t
    assert np.corrcoef(masked.mean(1), t)[0, 1] > 0.9


# ---------------------------------------------------------------- AR exact likelihood
def hand_ar_logprob(run, ctx, ans):
    """log p(ans | ctx) from one unpadded causal forward pass, summed in float64."""
    full = np.asarray((list(ctx) or [run.tokenizer.eos_id]) + list(ans), np.int32)[-run.config.data.seq_len:]
    if not hasattr(run, "_hand"):  # one jitted apply on one device, parameters on the host
        run._hand = (jax.jit(run.model.apply, static_argnames="causal"), jax.device_get(run.params))
    apply, params = run._hand
    logits = apply({"params": params}, full[None], causal=True)[0]
    lp = log_softmax_real(logits, run.tokenizer.mask_id)
    first = len(full) - min(len(ans), len(full) - 1)
    total = sum(lp[i - 1, full[i]] for i in range(first, len(full)))
    greedy = all(np.argmax(lp[i - 1]) == full[i] for i in range(first, len(full)))
    return total, greedy


def test_ar_choice_loglikelihood_is_sum_of_token_logprobs(loaded):
    run = loaded["ar"]
    tok = run.tokenizer
    ctx = tok.encode("The river walks into the old")
    pairs = [(ctx, tok.encode(" forest.")), (ctx[:2], tok.encode(" quiet house")), ([], tok.encode("Morning finds the road")),
             (ctx * 5, tok.encode(" city")),  # context longer than seq_len: cut on the left
             (ctx, list(range(3, 3 + 40)))]  # answer longer than seq_len: truncated
    scorer = Scorer.for_model(run.model, run.config, tok, batch_size=8, mesh=run.mesh)
    scores = scorer.loglikelihood(run.params, pairs)
    for (c, a), s in zip(pairs, scores):
        lp, greedy = hand_ar_logprob(run, c, a)
        assert s.logprob == pytest.approx(lp, rel=1e-4, abs=1e-3)
        assert s.greedy == greedy and s.stderr == 0.0
    assert [s.truncated for s in scores] == [False, False, False, True, True]
    assert scores[4].tokens == run.config.data.seq_len - 1


# ---------------------------------------------------------------- LLaDA estimator
def exact_llada_expectation(logits_fn, tokens, n_answer):
    """E over l ~ U{1..L} and a uniform l-subset S of the answer of (L/l) * sum_S CE."""
    n = len(tokens)
    answer = list(range(n - n_answer, n))
    total = 0.0
    for l in range(1, n_answer + 1):
        subsets = list(itertools.combinations(answer, l))
        acc = 0.0
        for s in subsets:
            x = np.array(tokens)
            x[list(s)] = MASK
            lp = log_softmax_real(logits_fn(None, jnp.asarray(x[None]), jnp.ones((1, n), jnp.int32))[0], V)
            acc += n_answer / l * -sum(lp[i, tokens[i]] for i in s)
        total += acc / len(subsets)
    return total / n_answer


@pytest.mark.parametrize("model", [marginal_model, context_model], ids=["marginals", "context"])
def test_llada_estimator_is_unbiased(model):
    tokens = [5, 3, 1, 4, 0, 2, 5]  # 3 context tokens, 4 answer tokens
    exact = exact_llada_expectation(model, tokens, 4)
    if model is marginal_model:  # independent tokens: the bound is the exact NLL
        assert exact == pytest.approx(-LOG_PI[tokens[3:]].sum(), rel=1e-5)
    scorer = Scorer(model, toy_spec(), batch_size=512)
    est = scorer.loglikelihood(None, [(tokens[:3], tokens[3:])], mc_samples=2000, seed=3)[0]
    assert est.stderr < 0.02 * exact
    assert abs(-est.logprob - exact) < 4 * est.stderr, (-est.logprob, exact, est.stderr)
    assert est.tokens == 4 and not est.truncated


def test_llada_masks_exactly_l_answer_tokens_never_the_context():
    answer = jnp.array([[False, False, True, True, True, True, False]] * 50)
    n_mask = jnp.array([1 + i % 4 for i in range(50)])
    m = np.asarray(likelihood.exact_l_mask(answer, n_mask, 0, jnp.arange(50, dtype=jnp.uint32)))
    assert np.array_equal(m.sum(1), np.asarray(n_mask))
    assert not m[:, [0, 1, 6]].any()
    assert len({tuple(r) for r in m[n_mask == 2]}) > 3  # positions vary between draws


def test_single_token_answer_and_cfg_are_exact():
    ctx, ans = [5, 3, 1], [4]
    scorer = Scorer(context_model, toy_spec(), batch_size=8)
    x = np.array([ctx + [MASK]])
    cond = np.asarray(context_model(None, jnp.asarray(x), None))[0, -1]
    uncond = np.asarray(context_model(None, jnp.asarray(np.array([[MASK] * 3 + [MASK]])), None))[0, -1]
    for w in (0.0, 1.5):
        s = scorer.loglikelihood(None, [(ctx, ans)], mc_samples=16, cfg_scale=w)[0]
        mixed = uncond + (w + 1) * (cond - uncond)
        assert s.stderr == 0.0  # one token: the estimator is deterministic
        assert s.logprob == pytest.approx(log_softmax_real(mixed[None], V)[0, 4], rel=1e-5)


def test_scoring_compiles_once_per_length_bucket():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, V, n).tolist(), rng.integers(0, V, 1 + n % 5).tolist()) for n in range(1, 50)]
    for objective, kind in (("ar", "ar"), ("mdm", "llada")):
        scorer = Scorer(marginal_model, toy_spec(objective), batch_size=16)
        scores = scorer.loglikelihood(None, pairs, mc_samples=3)
        for (_, ans), s in zip(pairs, scores):
            if objective == "ar" or len(ans) == 1:  # exact here: independent tokens / a 1-token answer
                assert s.logprob == pytest.approx(LOG_PI[ans].sum(), rel=1e-4)
            else:
                assert abs(s.logprob - LOG_PI[ans].sum()) <= 8 * s.stderr + 1e-4
        assert scorer._fn(kind)._cache_size() == len({likelihood.bucket_length(len(c) + len(a), 64) for c, a in pairs}) == 4


# ---------------------------------------------------------------- rolling windows
def test_rolling_windows_partition_the_text_with_maximal_context():
    tokens = list(range(10, 33))
    windows = likelihood.rolling_windows(tokens, 8, prefix_id=2)
    assert sum((c for _, c in windows), []) == tokens
    assert windows[0][0] == [2]
    history = [2] + tokens
    pos = 0
    for ctx, cont in windows:
        assert 1 <= len(ctx) and len(ctx) + len(cont) <= 8
        assert history[pos + 1 - len(ctx):pos + 1] == ctx  # the tokens right before the continuation
        pos += len(cont)
    assert len(windows[-1][0]) + len(windows[-1][1]) == 8  # the last window is filled with context


# ---------------------------------------------------------------- cloze
def test_cloze_distractors_come_from_other_passages():
    rng = np.random.default_rng(0)
    val = rng.integers(3, 50, size=(12, 16)).astype(np.int32)
    val[5, 12:] = val[7, 12:]  # two passages share an ending: neither may be the other's distractor
    items = cloze.build_cloze(val, n_examples=0, n_choices=4, length=4, seed=1)
    assert len(items) == 12
    labels = set()
    for it in items:
        p, sources = it.meta["passage"], it.meta["sources"]
        assert sources[it.label] == p and sources.count(p) == 1
        assert len(set(sources)) == 4
        assert it.context == val[p, :12].tolist()
        assert it.choices[it.label] == val[p, 12:].tolist()
        tails = {tuple(c) for c in it.choices}
        assert len(tails) == 4  # no choice repeats another, nor the true one
        labels.add(it.label)
    assert len(labels) > 1
    again = cloze.build_cloze(val, n_examples=0, n_choices=4, length=4, seed=1)
    assert [(a.label, a.meta) for a in again] == [(a.label, a.meta) for a in items]
    other = cloze.build_cloze(val, n_examples=0, n_choices=4, length=4, seed=2)
    assert [a.meta for a in other] != [a.meta for a in items]
    with pytest.raises(DataError, match="too few"):
        cloze.build_cloze(val[:3], n_choices=4, length=4)
    with pytest.raises(ConfigError, match="cloze_length"):
        cloze.build_cloze(val, n_choices=4, length=16)


def segment_model(params, tokens, segment_ids):
    """Predictions that depend on the segment id (the document) of each position and on the
    token to the left: scoring with the wrong segment ids gives other values."""
    prev = jnp.concatenate([jnp.full((tokens.shape[0], 1), MASK), tokens[:, :-1]], axis=1)
    logits = jnp.asarray(LOG_PI, jnp.float32) + 1.3 * jax.nn.one_hot(segment_ids % V, V)
    logits = logits + 0.8 * jax.nn.one_hot(jnp.clip(prev, 0, V - 1), V) * (prev < V)[..., None]
    return jnp.concatenate([logits, jnp.full(tokens.shape + (2,), 5.0)], axis=-1)


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_runs_with_document_attention_are_scored_within_documents(objective):
    from dllm_jax.objectives import segment_ids_from_eos

    spec = dataclasses.replace(toy_spec(objective), document_attention=True)  # eos_id = 2
    scorer = Scorer(segment_model, spec, batch_size=4)
    passage, blank, choices = [5, 2, 4, 1, 0, 2, 3, 1], 3, [1, 0, 4]
    raw = []
    for c in choices:
        y = list(passage)
        y[blank] = c if objective == "ar" else MASK
        seg = segment_ids_from_eos(jnp.asarray([y]), 2)
        lp = log_softmax_real(segment_model(None, jnp.asarray([y]), seg)[0], V)
        raw.append(sum(lp[j - 1, y[j]] for j in range(1, len(y))) if objective == "ar" else lp[blank, c])
    raw = np.array(raw)
    np.testing.assert_allclose(scorer.blank_logprobs(None, [passage], [blank], [choices])[0], raw - np.log(np.exp(raw).sum()), rtol=1e-5)
    (one,) = scorer.loglikelihood(None, [(passage[:blank], [choices[0]])])  # the left-only path too
    y = passage[:blank] + [choices[0] if objective == "ar" else MASK]
    lp = log_softmax_real(segment_model(None, jnp.asarray([y]), segment_ids_from_eos(jnp.asarray([y]), 2))[0], V)
    assert one.logprob == pytest.approx(lp[-2 if objective == "ar" else -1, choices[0]], rel=1e-5)


def test_two_sided_cloze_blanks_one_token_inside_the_passage():
    rng = np.random.default_rng(0)
    val = rng.integers(3, 40, size=(30, 16)).astype(np.int32)
    items = cloze.build_cloze(val, n_examples=0, n_choices=4, length=1, seed=3, context="both")
    positions = set()
    for it in items:
        p, at, sources = it.meta["passage"], it.meta["position"], it.meta["sources"]
        assert 4 <= at < 12  # the middle half: a quarter of the passage at least on each side
        positions.add(at)
        assert it.context == val[p, :at].tolist() and it.suffix == val[p, at + 1:].tolist()
        assert it.choices == [[int(val[s, at])] for s in sources] and sources[it.label] == p
        assert len({c[0] for c in it.choices}) == 4 and p not in sources[:it.label] + sources[it.label + 1:]
    assert len(positions) > 3
    again = cloze.build_cloze(val, n_examples=0, n_choices=4, length=1, seed=3, context="both")
    assert [(a.meta, a.label) for a in again] == [(a.meta, a.label) for a in items]
    left = cloze.build_cloze(val, n_examples=0, n_choices=4, length=1, seed=3)
    assert all(not it.suffix and len(it.context) == 15 for it in left)
    with pytest.raises(ConfigError, match="cloze_length=1"):
        cloze.build_cloze(val, n_choices=4, length=2, context="both")
    with pytest.raises(ConfigError, match="cloze_context"):
        cloze.build_cloze(val, n_choices=4, length=1, context="right")


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_blank_logprobs_are_the_conditional_given_both_sides(objective):
    # brute force: AR, log p(x with c) by the chain rule over the whole row; MDM, the log-prob at a
    # [MASK] in the blank; then each renormalised over the item's choices
    passages = [[5, 3, 1, 0, 4, 2], [0, 2, 2, 5, 1, 3, 3, 4], [4, 4, 1, 3]]
    blanks, choices = [2, 5, 1], [[1, 0, 4], [3, 5, 2], [4, 0, 1]]
    scorer = Scorer(context_model, toy_spec(objective), batch_size=4)
    got = scorer.blank_logprobs(None, passages, blanks, choices)
    for i, (x, b, cs) in enumerate(zip(passages, blanks, choices)):
        raw = []
        for c in cs:
            if objective == "ar":
                y = list(x)
                y[b] = c
                lp = log_softmax_real(context_model(None, jnp.asarray([y]), None)[0], V)
                raw.append(sum(lp[j - 1, y[j]] for j in range(1, len(y))))
            else:
                y = list(x)
                y[b] = MASK
                raw.append(log_softmax_real(context_model(None, jnp.asarray([y]), None)[0], V)[b, c])
        raw = np.array(raw)
        want = raw - np.log(np.exp(raw).sum())
        np.testing.assert_allclose(got[i], want, rtol=1e-5)
    items = [tasks.TokenItem(context=x[:b], choices=[[c] for c in cs], label=0, choice_chars=[1] * 3, suffix=x[b + 1:])
             for x, b, cs in zip(passages, blanks, choices)]
    r = multiple_choice.score_items(scorer, None, items, keep_items=True)
    assert r["estimator"] == "exact" and [it["logprobs"] for it in r["items"]] == [[round(float(v), 4) for v in row] for row in got]
    assert r["acc"] == np.mean(np.argmax(got, axis=1) == 0)
    with pytest.raises(ValueError, match="mixing"):
        multiple_choice.score_items(scorer, None, items + [tasks.TokenItem([1], [[2], [3]], 0, [1, 1])])
    with pytest.raises(ValueError, match="blank 0"):
        scorer.blank_logprobs(None, [[1, 2, 3]], [0], [[1, 2]])
    with pytest.raises(ValueError, match="real token ids"):
        scorer.blank_logprobs(None, [[1, 2, 3]], [1], [[1, MASK]])


# ---------------------------------------------------------------- task files
def test_task_readers_parse_the_sample_files():
    items = tasks.read_jsonl(os.path.join(DATA, "mc_toy.jsonl"))
    assert [len(i.choices) for i in items] == [2, 2, 2, 3] and items[3].label == 2
    assert items[2].context == "" and items[1].source.endswith("mc_toy.jsonl:2")
    assert items[2].source.endswith(":4")  # blank line 3 skipped, line numbers kept
    hs = tasks.read_hellaswag(os.path.join(DATA, "hellaswag_sample.jsonl"))
    assert hs[0].context == "Making a sandwich: A man puts two slices of bread on a plate. He"
    assert hs[0].choices[1] == " spreads butter on one slice." and hs[0].label == 1
    assert hs[1].context == "Home and Garden: How to water a plant. Fill a can with water." and hs[1].label == 0
    assert hs[1].choices[0] == " Pour it slowly onto the soil."
    mm = tasks.read_mmlu(DATA)  # the directory: every *.csv
    assert len(mm) == 2 and mm[0].label == 1 and mm[1].label == 2
    assert mm[0].choices == [" A", " B", " C", " D"]
    assert mm[0].context.startswith("The following are multiple choice questions (with answers) about elementary mathematics.")
    assert mm[1].context.endswith("C. green\nD. ten\nAnswer:")


@pytest.mark.parametrize("fmt,lines,message", [
    ("jsonl", ['{"context": "a", "choices": [" b", " c"], "label": 0}', "", '{"context": "a", "choices": [" b"'], "' line 3 is not valid JSON"),
    ("jsonl", ['{"context": "a", "choices": [" b", " c"], "label": 0}', '{"context": "a", "choices": [" b", " c"]}'], ":2: missing field(s) ['label']"),
    ("jsonl", ['{"context": "a", "choices": [" b", " c"], "label": 2}'], ":1: 'label' is 2 but there are 2 choices"),
    ("jsonl", ['{"context": "a", "choices": " b", "label": 0}'], ":1: 'choices' must be a list of strings"),
    ("jsonl", ['{"context": "a", "choices": [" b", "  "], "label": 0}'], ":1: choice 1 is empty"),
    ("jsonl", ['[1, 2]'], "' line 1 is a JSON list, not an object"),
    ("hellaswag", ['{"ctx_a": "x", "ctx_b": "y", "label": 0}'], ":1: missing HellaSwag field(s) ['endings']"),
    ("hellaswag", ['{"ctx_a": "x", "ctx_b": "y", "endings": ["a", "b"], "label": ""}'], ":1: 'label' is empty"),
    ("mmlu", ["q,a,b,c,d,A", "q,a,b,c,d"], ":2: expected 6 CSV columns"),
    ("mmlu", ["q,a,b,c,d,E"], ":1: answer is 'E'"),
])
def test_bad_task_files_name_the_line(tmp_path, fmt, lines, message):
    path = tmp_path / ("bad.csv" if fmt == "mmlu" else "bad.jsonl")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        tasks.read_task(str(path), fmt)
    assert str(path) + message in str(e.value)


def test_missing_task_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        tasks.read_jsonl(str(tmp_path / "nope.jsonl"))


def test_encode_pair_moves_trailing_space_to_the_choice(loaded):
    tok = loaded["ar"].tokenizer
    ctx, cont = tasks.encode_pair(tok, "The river walks ", "into the forest")
    assert tok.decode(ctx) == "The river walks" and tok.decode(cont) == " into the forest"
    assert ctx + cont == tok.encode("The river walks into the forest")


# ---------------------------------------------------------------- CLI
def _eval(workdir, *argv):
    from dllm_jax.cli import main

    out = os.path.join(workdir, "eval", "test_" + "_".join(a.strip("-") for a in argv[:2]) + ".json")
    assert main(["eval", "--workdir", workdir, *argv, "--output", out]) == 0
    with open(out) as f:
        return json.load(f)


def test_cli_val_matches_training_validation(trained_runs):
    from dllm_jax.metrics import read_metrics

    ar = _eval(trained_runs["ar"], "--task", "val", "--limit", "16")  # the 2 validation batches of 8 training used
    last = [r for r in read_metrics(trained_runs["ar"]) if "val_loss" in r][-1]
    assert ar["exact"] and ar["sequences"] == 16 and ar["tokens"] == 16 * 31
    assert ar["nats_per_token"] == pytest.approx(last["val_loss"], rel=1e-5)
    assert ar["perplexity"] == pytest.approx(last["val_ppl"], rel=1e-4)
    # MDM: one estimator. With training's draws (eval.val_draws per row, the run's seed, which
    # is the CLI's default) the CLI gives the logged val_loss and val_masked_ce exactly
    cfg = json.load(open(os.path.join(trained_runs["mdm"], "config.json")))
    draws = str(cfg["eval"]["val_draws"])
    mdm = _eval(trained_runs["mdm"], "--task", "val", "--limit", "16", "--mc-samples", draws)
    last = [r for r in read_metrics(trained_runs["mdm"]) if "val_loss" in r][-1]
    assert not mdm["exact"] and mdm["tokens"] == 16 * 32 and mdm["mc_samples"] == int(draws)
    assert mdm["nats_per_token"] == pytest.approx(last["val_loss"], rel=1e-6)
    assert mdm["masked_ce"] == pytest.approx(last["val_masked_ce"], rel=1e-6)
    assert mdm["perplexity_bound"] == pytest.approx(last["val_ppl_bound"], rel=1e-6)
    other = _eval(trained_runs["mdm"], "--task", "val", "--limit", "16", "--mc-samples", draws, "--seed", "7")
    assert other["nats_per_token"] != mdm["nats_per_token"]  # the seed picks the draws
    assert 0 < mdm["stderr_nats_per_token"] < 0.15 * mdm["nats_per_token"]
    assert mdm["nats_per_token"] > math.log(2)  # far from a degenerate (all-zero) estimate


def test_cli_multiple_choice_and_cloze(trained_runs, tmp_path):
    for objective in ("ar", "mdm"):
        res = _eval(trained_runs[objective], "--task", "jsonl", "--data", os.path.join(DATA, "mc_toy.jsonl"), "--items", "--mc-samples", "4")
        assert res["n"] == 4 and res["estimator"] == ("exact" if objective == "ar" else "llada_mc")
        assert [it["label"] for it in res["items"]] == [0, 0, 0, 2]
        assert [it["pred"] for it in res["items"]] == [int(np.argmax(it["logprobs"])) for it in res["items"]]
        assert res["acc"] == np.mean([it["pred"] == it["label"] for it in res["items"]])
        assert res["acc_norm"] == np.mean([it["pred_norm"] == it["label"] for it in res["items"]])
        assert all(len(it["stderr"]) == len(it["logprobs"]) for it in res["items"])
    from dllm_jax.cli import main

    cz = _eval(trained_runs["mdm"], "--task", "cloze", "--limit", "8", "--mc-samples", "4")
    assert cz["n"] == 8 and cz["chance"] == 0.25 and cz["cloze"] == {"choices": 4, "length": 8, "context": "left"}
    for objective in ("ar", "mdm"):  # two-sided: a one-token blank, exact for both, its own file name
        out = os.path.join(trained_runs[objective], "eval")
        assert main(["eval", "--workdir", trained_runs[objective], "--task", "cloze", "--limit", "8",
                     "--config.eval.cloze_context=both", "--config.eval.cloze_length=1"]) == 0
        (name,) = [n for n in os.listdir(out) if n.startswith("cloze-len1-both-n8_step")]
        with open(os.path.join(out, name)) as f:
            both = json.load(f)
        assert both["n"] == 8 and both["estimator"] == "exact" and both["cloze"]["context"] == "both"
    assert main(["eval", "--workdir", trained_runs["ar"], "--task", "cloze", "--config.eval.cloze_context=both"]) == 2  # length 0


def test_cli_step_all_scores_every_saved_checkpoint(trained_runs, tmp_path):
    from dllm_jax.checkpoint import Checkpointer
    from dllm_jax.cli import main

    wd = trained_runs["mdm"]
    steps = sorted(Checkpointer(wd, read_only=True).all_steps())
    assert len(steps) >= 2
    argv = ["eval", "--workdir", wd, "--task", "cloze", "--limit", "8", "--config.eval.cloze_length=3"]
    assert main(argv + ["--step", "all"]) == 0
    for step in steps:
        with open(os.path.join(wd, "eval", f"cloze-len3-n8_step{step}.json")) as f:
            got = json.load(f)
        one = _eval(wd, "--task", "cloze", "--limit", "8", "--config.eval.cloze_length=3", "--step", str(step))
        assert got["step"] == step and got["acc"] == one["acc"] and got["n"] == 8
    assert main(argv + ["--step", "all", "--output", str(tmp_path / "x.json")]) == 2  # one file cannot hold them all
    assert main(argv + ["--step", "last"]) == 2
    assert main(["eval", "--workdir", str(tmp_path), "--task", "cloze", "--step", "all"]) == 2  # no checkpoints
    from dllm_jax.cli import main

    assert main(["eval", "--workdir", trained_runs["ar"], "--task", "hellaswag"]) == 2  # needs --data
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "x", "choices": [" a", " b"], "label": 5}\n')
    assert main(["eval", "--workdir", trained_runs["ar"], "--task", "jsonl", "--data", str(bad)]) == 2
    assert main(["eval", "--workdir", trained_runs["ar"], "--task", "val", "--config.model.d_model=64"]) == 2


def test_cloze_file_names_carry_the_task_and_item_count():
    from dllm_jax.evaluation.cli import cloze_file_stem, parse_cloze_file_name

    both = {"choices": 4, "length": 1, "context": "both"}
    assert cloze_file_stem(both, 2500) == "cloze-len1-both-n2500"
    assert cloze_file_stem({"choices": 8, "length": 3, "context": "left"}, 64) == "cloze-len3-8way-n64"
    assert parse_cloze_file_name("cloze-len1-both-n2500_step16.json") == {
        "task": "cloze-len1-both", "length": 1, "context": "both", "choices": 4, "n": 2500, "step": 16}
    assert parse_cloze_file_name("cloze-len3-8way-n64_step7.json") == {
        "task": "cloze-len3-8way", "length": 3, "context": "left", "choices": 8, "n": 64, "step": 7}
    # names from before the item count was in them are still read
    assert parse_cloze_file_name("cloze-len1-both_step16.json") == {
        "task": "cloze-len1-both", "length": 1, "context": "both", "choices": 4, "n": None, "step": 16}
    for other in ("val_step3.json", "cloze-len1_step3.json.tmp", "cloze-lenx_step3.json", "jsonl-cloze-len1_step3.json"):
        assert parse_cloze_file_name(other) is None, other


def test_cloze_asking_for_more_items_than_rows_warns_and_names_the_count(trained_runs, caplog):
    """eval.cloze_examples (or --limit) above the validation rows scores every row, with a warning
    giving both numbers; the item count is in the file name, so a rerun with another count
    does not overwrite the first."""
    import logging

    from dllm_jax.cli import main

    wd = trained_runs["ar"]
    with open(os.path.join(wd, "data_stats.json")) as f:
        rows = json.load(f)["val_sequences"]
    assert 8 < rows < 100_000
    argv = ["eval", "--workdir", wd, "--task", "cloze", "--config.eval.cloze_length=1"]
    with caplog.at_level(logging.WARNING, logger="dllm_jax"):
        assert main(argv + ["--config.eval.cloze_examples=100000"]) == 0
    assert f"eval.cloze_examples=100000 asks for 100000 items but the run has {rows} validation rows" in caplog.text
    assert f"scoring {rows} items" in caplog.text
    (big,) = [n for n in os.listdir(os.path.join(wd, "eval")) if n.startswith(f"cloze-len1-n{rows}_step")]
    with open(os.path.join(wd, "eval", big)) as f:
        res = json.load(f)
    assert (res["n"], res["items_requested"]) == (rows, 100_000)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dllm_jax"):
        assert main(argv + ["--limit", "8"]) == 0
        assert main(argv + ["--limit", str(rows + 1)]) == 0
    assert f"--limit {rows + 1} asks for {rows + 1} items but the run has {rows} validation rows" in caplog.text
    assert caplog.text.count("asks for") == 1  # --limit 8 fits: no warning
    step = res["step"]
    assert os.path.exists(os.path.join(wd, "eval", f"cloze-len1-n8_step{step}.json"))
    assert os.path.exists(os.path.join(wd, "eval", big))  # the first count's file is kept


# ---------------------------------------------------------------- training hook
def test_training_logs_cloze_every_k_steps_and_each_epoch(corpus, tmp_path):
    from dllm_jax.metrics import read_metrics
    from dllm_jax.train import train

    paths, cache = corpus
    cfg = tiny_config(paths, cache, "mdm", data__unique_tokens=4 * 8 * 32, train__eval_every=0, eval__cloze_every=3,
                      eval__cloze_examples=8, eval__mc_samples=2, train__checkpoint_every=100, train__eval_batches=1)
    train(cfg, str(tmp_path))  # 4 steps per epoch, 2 epochs
    val = [r for r in read_metrics(str(tmp_path)) if "val_loss" in r]
    assert [r["step"] for r in val] == [3, 4, 6, 8]  # every 3 steps, each epoch's end, the end
    # the logged cloze accuracy at the end is what `dllm-jax eval --task cloze` gives for the
    # final checkpoint (the same items, seed and Monte Carlo samples)
    cz = _eval(str(tmp_path), "--task", "cloze")
    assert cz["n"] == 8 and (val[-1]["cloze_acc"], val[-1]["cloze_acc_norm"]) == (cz["acc"], cz["acc_norm"])
    # with their binomial standard errors and item count (the report's crossover bracket needs them)
    assert (val[-1]["cloze_acc_stderr"], val[-1]["cloze_acc_norm_stderr"], val[-1]["cloze_n"]) == (cz["acc_stderr"], cz["acc_norm_stderr"], 8)
    with pytest.raises(ConfigError, match="eval.cloze_choices"):
        from dllm_jax.config import validate

        validate(tiny_config(paths, cache, "mdm", eval__cloze_choices=1))


# ---------------------------------------------------------------- generation quality
def test_unigram_entropy_by_hand():
    assert genppl.unigram_entropy([[1, 1, 2, 2], [7, 7, 7]]) == pytest.approx((math.log(2) + 0.0) / 2)
    assert genppl.unigram_entropy([[1, 2, 3, 4], []]) == pytest.approx(math.log(4))


def test_generative_perplexity_scores_texts_exactly(loaded):
    ref = loaded["ar"]
    scorer = Scorer.for_model(ref.model, ref.config, ref.tokenizer, batch_size=8)
    texts = ["The quiet road finds the city.", "Light, " * 16]  # the second is longer than seq_len: windows
    res = genppl.generative_perplexity(scorer, ref.params, ref.tokenizer, texts)
    nll, count = 0.0, 0
    for text in texts:
        for ctx, cont in likelihood.rolling_windows(ref.tokenizer.encode(text), ref.config.data.seq_len, ref.tokenizer.eos_id):
            nll -= hand_ar_logprob(ref, ctx, cont)[0]
            count += len(cont)
    assert res["reference_tokens"] == count > ref.config.data.seq_len
    assert res["nll_per_token"] == pytest.approx(nll / count, rel=1e-4)
    assert res["gen_ppl"] == pytest.approx(math.exp(nll / count), rel=1e-3)


def test_genppl_end_to_end(trained_runs):
    pytest.importorskip("dllm_jax.sampling")
    res = _eval(trained_runs["mdm"], "--task", "genppl", "--reference-workdir", trained_runs["ar"], "--num-samples", "4",
                "--max-new-tokens", "16", "--steps", "8")
    assert res["num_samples"] == 4 and res["reference_workdir"] == os.path.abspath(trained_runs["ar"])
    assert res["reference_tokens"] > 0 and 1.0 < res["gen_ppl"] < 1e6
    assert 0.0 < res["unigram_entropy"] <= math.log(16)


# ---------------------------------------------------------------- lm-evaluation-harness
TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
{body}
"""
MC_BODY = """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm"""
ROLLING_BODY = """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity"""
GEN_BODY = """output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{choices[label]}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 8
metric_list:
  - metric: exact_match"""


def test_lm_eval_adapter_end_to_end(trained_runs, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra: pip install 'dllm_jax[eval]'")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from dllm_jax.evaluation import lm_eval_adapter

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    texts = tmp_path / "texts.jsonl"
    texts.write_text('{"text": "The river walks into the forest."}\n{"text": "' + "Small light " * 20 + '"}\n')
    mc = os.path.join(DATA, "mc_toy.jsonl")
    for name, data, body in (("dllm_mc", mc, MC_BODY), ("dllm_rolling", texts, ROLLING_BODY), ("dllm_gen", mc, GEN_BODY)):
        (tmp_path / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data, body=body))
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    from lm_eval.api.registry import get_model

    assert get_model("dllm_jax") is lm_eval_adapter.DllmJaxLM  # importing the module registers the name

    ar = lm_eval.simple_evaluate(model="dllm_jax", model_args=f"workdir={trained_runs['ar']}", tasks=["dllm_mc", "dllm_rolling"],
                                 task_manager=manager, log_samples=False)["results"]
    ours = _eval(trained_runs["ar"], "--task", "jsonl", "--data", mc)
    assert ar["dllm_mc"]["acc,none"] == pytest.approx(ours["acc"])  # the same exact scores
    assert ar["dllm_mc"]["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    assert math.isfinite(ar["dllm_rolling"]["word_perplexity,none"]) and ar["dllm_rolling"]["word_perplexity,none"] > 1
    out = lm_eval.simple_evaluate(model="dllm_jax", model_args=f"workdir={trained_runs['mdm']},mc_samples=4,steps=8",
                                  tasks=["dllm_mc", "dllm_gen"], task_manager=manager, log_samples=True)
    mdm, samples = out["results"], out["samples"]
    # the harness sends the choices in item order: the same pairs, hence the same Monte Carlo
    # draws, as `dllm-jax eval --task jsonl` with the same seed and samples
    ours = _eval(trained_runs["mdm"], "--task", "jsonl", "--data", mc, "--mc-samples", "4", "--seed", "0", "--items")
    theirs = [[float(r[0]) for r in s["filtered_resps"]] for s in sorted(samples["dllm_mc"], key=lambda s: s["doc_id"])]
    assert len(theirs) == len(ours["items"]) == 4
    for t, o in zip(theirs, ours["items"]):
        np.testing.assert_allclose(t, o["logprobs"], atol=1e-4)
    assert mdm["dllm_mc"]["acc,none"] == pytest.approx(ours["acc"])
    # generation: exact match recomputed from the texts the model generated
    gen = samples["dllm_gen"]
    hits = [float(s["filtered_resps"][0].strip() == s["target"].strip()) for s in gen]
    assert len(gen) == 4 and mdm["dllm_gen"]["exact_match,none"] == pytest.approx(np.mean(hits))


def test_lm_eval_harness_command_gives_one_error_line_for_bad_model_args(trained_runs, tmp_path, monkeypatch, capsys):
    """`python -m dllm_jax.evaluation.harness`: a workdir that is not a run, or an ensemble of
    an AR and an MDM run, is one error line naming it and exit status 2, not a traceback."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra: pip install 'dllm_jax[eval]'")
    import sys

    from dllm_jax.evaluation import harness

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # harness.main sets sys.argv for lm-eval's parser: restored after
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    (tmp_path / "dllm_mc.yaml").write_text(TASK_YAML.format(name="dllm_mc", data=os.path.join(DATA, "mc_toy.jsonl"), body=MC_BODY))
    missing = str(tmp_path / "no_such_run")
    for workdirs, named in ((missing, "no_such_run"), (f"{trained_runs['ar']}|{trained_runs['mdm']}", "objective")):
        with pytest.raises(SystemExit) as exit_info:
            harness.main(["--model", "dllm_jax", "--model_args", f"workdir={workdirs}", "--tasks", "dllm_mc",
                          "--include_path", str(tmp_path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "dllm_jax.evaluation.harness: error:" in err and named in err and "Traceback" not in err


def test_adapter_imports_without_lm_eval_and_fails_only_when_used(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.setitem(sys.modules, "lm_eval.api", None)
    monkeypatch.setitem(sys.modules, "lm_eval.api.model", None)
    monkeypatch.setitem(sys.modules, "lm_eval.api.registry", None)
    import dllm_jax.evaluation as package

    monkeypatch.delattr(package, "lm_eval_adapter", raising=False)
    monkeypatch.delitem(sys.modules, "dllm_jax.evaluation.lm_eval_adapter", raising=False)
    mod = importlib.import_module("dllm_jax.evaluation.lm_eval_adapter")  # monkeypatch restores the real one after
    assert not mod.HAVE_LM_EVAL
    with pytest.raises(ImportError, match=r"pip install 'dllm_jax\[eval\]'"):
        mod.DllmJaxLM(workdir="x")


# ---------------------------------------------------------------- key streams (issue 12, B9)
P4 = np.array([0.7, 0.1, 0.1, 0.1])


def p4_model(params, tokens, segment_ids):
    """Input-independent: p = [0.7, 0.1, 0.1, 0.1] at every position ([MASK] row 4 excluded)."""
    row = jnp.concatenate([jnp.log(jnp.asarray(P4, jnp.float32)), jnp.array([3.0])])
    return jnp.broadcast_to(row, tokens.shape + (5,))


def _mean_within_mc_error(values, exact):
    """|mean - exact| < 4 standard errors, the standard error from the sample std."""
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - exact) < 4 * se, (values.mean(), exact, se)
    return se


@pytest.mark.parametrize("mc_samples,seeds", [(1, 400), (4, 1000)])
def test_sequence_elbo_time_and_mask_draws_are_independent(mc_samples, seeds):
    # independent tokens and a model giving their true law: the ELBO equals the NLL exactly,
    # -(log .1 + 7 log .7) / 8 = 0.5999 nats/token. A mask drawn from the time draw's key
    # masks position 0 (the rare token) whenever t is small: mean 2.61 (1 draw), 1.10 (4).
    seq = np.array([[1, 0, 0, 0, 0, 0, 0, 0]], np.int32)
    exact = -(math.log(0.1) + 7 * math.log(0.7)) / 8
    assert exact == pytest.approx(0.5999, abs=1e-4)
    spec = ScoreSpec(objective="mdm", vocab_limit=4, mask_id=4, eos_id=3, max_len=8)
    scorer = Scorer(p4_model, spec, batch_size=8)
    vals = [scorer.sequence_nll(None, seq, mc_samples=mc_samples, seed=s)["nats_per_token"] for s in range(seeds)]
    se = _mean_within_mc_error(vals, exact)
    assert se < 0.1  # the check has power against the biased 1.10


def test_llada_length_and_mask_draws_are_independent():
    # one draw per seed: l (masked answer tokens) and which positions are masked use separate
    # streams, so the mean over seeds is the exact log-likelihood of the answer
    ctx, ans = [3], [1, 0, 0, 0]
    exact = -(math.log(0.1) + 3 * math.log(0.7))
    spec = ScoreSpec(objective="mdm", vocab_limit=4, mask_id=4, eos_id=3, max_len=8)
    scorer = Scorer(p4_model, spec, batch_size=8)
    vals = [-scorer.loglikelihood(None, [(ctx, ans)], mc_samples=1, seed=s)[0].logprob for s in range(300)]
    _mean_within_mc_error(vals, exact)


# ---------------------------------------------------------------- task file encodings (issue 12, A3)
RECORD = '{"context": "Caf\u00e9 at the", "choices": [" river.", " moon."], "label": 0}\n'


@pytest.mark.parametrize("fmt,encode,name", [
    ("jsonl", lambda t: gzip.compress(t.encode("utf-8")), "t.jsonl.gz"),
    ("jsonl", lambda t: bz2.compress(t.encode("utf-8")), "t.jsonl.bz2"),
    ("jsonl", lambda t: codecs.BOM_UTF8 + t.replace("\n", "\r\n").encode("utf-8"), "t.jsonl"),
    ("mmlu", lambda t: gzip.compress(t.encode("utf-8")), "anatomy_test.csv.gz"),
])
def test_compressed_and_bom_task_files_are_read(tmp_path, fmt, encode, name):
    text = RECORD * 2 if fmt == "jsonl" else 'Caf\u00e9?,a,b,c,d,B\r\n' * 2
    path = tmp_path / name
    path.write_bytes(encode(text))
    items = tasks.read_task(str(path), fmt)
    assert len(items) == 2 and items[1].source == f"{path}:2"
    if fmt == "jsonl":
        assert items[0].context == "Caf\u00e9 at the" and items[0].choices == [" river.", " moon."]
    else:
        assert "about anatomy" in items[0].context and "Caf\u00e9?\nA. a" in items[0].context and items[0].label == 1


@pytest.mark.parametrize("encoding,message", [
    ("latin-1", r"t\.jsonl' is not valid UTF-8: line 2, byte offset \d+ \(bytes e9 .*iconv -f LATIN1 -t UTF-8"),
    ("utf-16", r"t\.jsonl' looks like UTF-16LE, not UTF-8 \(it starts with its byte-order mark\).*iconv -f UTF-16 -t UTF-8"),
    ("utf-16-le", r"t\.jsonl' looks like UTF-16LE, not UTF-8 \(it has \d+% NUL bytes\).*iconv -f UTF-16LE -t UTF-8"),
])
def test_task_files_in_other_encodings_name_file_line_and_fix(tmp_path, encoding, message):
    path = tmp_path / "t.jsonl"
    path.write_bytes(('{"context": "x", "choices": [" a", " b"], "label": 0}\n' + RECORD).encode(encoding))
    with pytest.raises(DataError, match=message) as e:
        tasks.read_task(str(path), "jsonl")
    assert str(path) in str(e.value)


def test_cli_reports_a_latin1_task_file_in_one_line(tmp_path, capsys):
    from dllm_jax.cli import main

    path = tmp_path / "t.jsonl"
    path.write_bytes(RECORD.encode("latin-1"))
    assert main(["eval", "--workdir", str(tmp_path), "--task", "jsonl", "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: '{path}' is not valid UTF-8: line 1" in err and "Traceback" not in err


def test_damaged_gzip_task_file_is_a_clear_error(tmp_path):
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(gzip.compress(RECORD.encode())[:-12])
    with pytest.raises(DataError, match="damaged or truncated gzip file"):
        tasks.read_task(str(path), "jsonl")


def test_acc_norm_divides_a_cut_choice_by_the_characters_scored():
    # max_len 8: choice B (12 tokens, 1 char each) keeps its last 7 tokens. Per scored
    # character A = 3 log .3 / 3 = -1.204 beats B = (6 log .3 + log .2) / 7 = -1.262; dividing
    # B by all 12 characters (-0.736) would pick B
    from dllm_jax.evaluation.multiple_choice import score_items

    a, b = [5, 5, 5], [0] * 5 + [5] * 6 + [4]
    item = tasks.TokenItem(context=[2], choices=[a, b], label=0, choice_chars=[3, 12], choice_token_chars=[[1] * 3, [1] * 12])
    scorer = Scorer(marginal_model, toy_spec("ar", max_len=8), batch_size=8)
    res = score_items(scorer, None, [item], keep_items=True)
    lp = res["items"][0]["logprobs"]
    assert lp[1] == pytest.approx(6 * LOG_PI[5] + LOG_PI[4], abs=1e-4)  # only the last 7 tokens were scored
    assert res["truncated_items"] == 1 and res["items"][0]["pred_norm"] == 0 and res["acc_norm"] == 1.0
    # without per-token characters: proportional to the tokens scored (12 * 7 / 12 = 7 here)
    item.choice_token_chars = []
    assert score_items(scorer, None, [item])["acc_norm"] == 1.0


def test_token_chars_add_up_to_the_choice_text(loaded):
    tok = loaded["ar"].tokenizer
    for ctx, choice in (("The river walks into the", " forest."), ("Old", " quiet house near the road")):
        _, ids = tasks.encode_pair(tok, ctx, choice)
        assert sum(tasks.token_chars(tok, ids)) == len(choice)


def test_cloze_passages_are_not_the_document_order_permutation():
    # with as many validation rows as documents, a cloze drawn from default_rng(seed) would list
    # its passages in exactly the order that default_rng(seed) gave the documents
    from dllm_jax.data.index import document_order

    val = np.random.default_rng(5).integers(3, 50, size=(40, 16)).astype(np.int32)
    for seed in range(5):
        items = cloze.build_cloze(val, n_examples=0, n_choices=2, length=4, seed=seed)
        assert [it.meta["passage"] for it in items] != document_order(40, seed).tolist()


def test_choices_of_one_item_share_their_monte_carlo_draws():
    # common random numbers (Scorer.loglikelihood's groups; by default the pairs of one context):
    # identical choices get identical scores, each choice's estimate keeps its distribution
    # (the mean over seeds is still the exact LLaDA expectation), and the difference between
    # two choices, which decides the prediction, has much less Monte Carlo variance
    ctx, a, b = [5, 3, 1], [4, 0, 2, 5], [4, 1, 2, 5]
    scorer = Scorer(context_model, toy_spec(), batch_size=64)
    same = scorer.loglikelihood(None, [(ctx, a), (ctx, a)], mc_samples=3, seed=1)  # one context: one group by default
    assert same[0].logprob == same[1].logprob
    apart = scorer.loglikelihood(None, [(ctx, a), (ctx, a)], mc_samples=3, seed=1, groups=[0, 1])
    assert apart[0].logprob != apart[1].logprob
    # the default groups do not depend on how the pairs are batched: a pair alone, or after another context
    alone = scorer.loglikelihood(None, [(ctx, b)], mc_samples=3, seed=1)[0].logprob
    assert scorer.loglikelihood(None, [(ctx, b), ([0, 2], a)], mc_samples=3, seed=1)[0].logprob == alone
    shared, separate, first = [], [], []
    for s in range(150):
        x, y = scorer.loglikelihood(None, [(ctx, a), (ctx, b)], mc_samples=2, seed=s)
        shared.append(x.logprob - y.logprob)
        first.append(-x.logprob)
        x, y = scorer.loglikelihood(None, [(ctx, a), (ctx, b)], mc_samples=2, seed=s, groups=[0, 1])
        separate.append(x.logprob - y.logprob)
    _mean_within_mc_error(first, exact_llada_expectation(context_model, ctx + a, 4))
    assert np.var(shared) < 0.5 * np.var(separate), (np.var(shared), np.var(separate))


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_one_token_choices_are_read_from_one_pass_per_context(objective):
    # every one-token answer after the same context comes from one distribution: one row per
    # distinct context (not per choice), each value the exact log-prob computed by hand
    contexts = [[5, 3, 1], [0, 2], [4, 4, 4, 1]]
    pairs = [(c, [a]) for c in contexts for a in (0, 2, 3, 5)] + [([5, 3, 1], [2, 4])]
    scorer = Scorer(context_model, toy_spec(objective), batch_size=8)
    calls = []
    run = scorer._run
    scorer._run = lambda kind, params, rows, **kw: calls.append((kind, len(rows))) or run(kind, params, rows, **kw)
    scores = scorer.loglikelihood(None, pairs, mc_samples=4)
    one_pass = "next_ar" if objective == "ar" else "next_llada"
    rest = 1 if objective == "ar" else 4  # the 2-token pair: exact (AR) or 4 Monte Carlo draws (MDM)
    assert sorted(calls) == sorted([(one_pass, 3), ("ar" if objective == "ar" else "llada", rest)])
    for (ctx, ans), s in zip(pairs[:-1], scores[:-1]):
        x = np.array([ctx + ([MASK] if objective == "mdm" else ans)])
        lp = log_softmax_real(context_model(None, jnp.asarray(x), None)[0], V)
        want = lp[-1, ans[0]] if objective == "mdm" else lp[-2, ans[0]]
        assert s.logprob == pytest.approx(want, rel=1e-5) and s.stderr == 0.0 and s.tokens == 1
        assert s.greedy == (int(np.argmax(lp[-1 if objective == "mdm" else -2])) == ans[0])


def test_eval_at_epochs_validates_scores_cloze_and_checkpoints_there(corpus, tmp_path):
    from dllm_jax.checkpoint import Checkpointer
    from dllm_jax.config import validate
    from dllm_jax.metrics import read_metrics
    from dllm_jax.train import train

    paths, cache = corpus
    # 4 steps per epoch, 3 epochs: epochs 0.5, 1.25 and 2 end at steps 2, 5 and 8; 0.3 (step 1.2) waits
    # for step 2, never earlier; 9 (> 3 epochs) is dropped
    cfg = tiny_config(paths, cache, "ar", data__unique_tokens=4 * 8 * 32, data__epochs=3, train__eval_every=0,
                      eval__at_epoch_end=False, eval__at_epochs="2, 0.5,1.25,9,0.3", eval__cloze_examples=8,
                      train__checkpoint_every=100, train__keep_last=10, train__eval_batches=1)
    train(cfg, str(tmp_path))
    val = [r for r in read_metrics(str(tmp_path)) if "val_loss" in r]
    assert [r["step"] for r in val] == [2, 5, 8, 12]  # the listed epochs and the end
    assert all("cloze_acc" in r for r in val)
    assert Checkpointer(str(tmp_path), read_only=True).all_steps() == [2, 5, 8, 12]
    for bad in ("1,x", "-1", "nan", "0", "1,,2", "1,2,"):
        with pytest.raises(ConfigError, match="eval.at_epochs"):
            validate(tiny_config(paths, cache, "ar", eval__at_epochs=bad))


def test_one_token_mdm_items_report_the_exact_estimator():
    from dllm_jax.evaluation.tasks import TokenItem

    scorer = Scorer(context_model, toy_spec("mdm"), batch_size=8)
    one = [TokenItem(context=[5, 3, 1], choices=[[0], [2], [4]], label=1, choice_chars=[1, 1, 1])]
    r = multiple_choice.score_items(scorer, None, one, mc_samples=4)
    assert r["estimator"] == "exact" and "mc_samples" not in r
    two = [TokenItem(context=[5, 3, 1], choices=[[0, 1], [2, 2]], label=0, choice_chars=[2, 2])]
    r = multiple_choice.score_items(scorer, None, two, mc_samples=4)
    assert r["estimator"] == "llada_mc" and r["mc_samples"] == 4


# ---------------------------------------------------------------- lm-eval requests fit the context (issue 25)
def test_lm_eval_requests_never_exceed_the_trained_context(trained_runs, monkeypatch):
    """Long contexts are cut on token ids: [EOS] + context + max_gen_toks is exactly the trained
    context (data.seq_len = 32 here), never more, also when the cut falls inside a multi-byte
    character (decode -> re-encode turned it into U+FFFD and more tokens than the room); the
    rows the scorer runs for loglikelihood and loglikelihood_rolling are at most seq_len long."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is an optional extra: pip install 'dllm_jax[eval]'")
    from types import SimpleNamespace

    from dllm_jax.evaluation import lm_eval_adapter
    from dllm_jax.sampling import api

    lm = lm_eval_adapter.DllmJaxLM(workdir=trained_runs["ar"])
    tok, seq_len = lm.run.tokenizer, lm.max_length
    assert seq_len == 32
    context = "日本語の文章。" * 8  # characters the tiny vocabulary lacks: 3 UTF-8 byte pieces each
    ids = tok.encode(context)
    assert len(ids) > 3 * seq_len
    # the premise of the old bug: cutting inside a character and re-encoding the text gives more tokens
    assert len(tok.encode(tok.decode(ids[-17:]))) > 17

    calls = []
    real = api.generate_tokens

    def spy(model, params, token_ids, prompts, **kw):
        calls.append((list(prompts[0]), kw["max_new_tokens"], kw["context_length"]))
        return real(model, params, token_ids, prompts, **kw)

    monkeypatch.setattr(api, "generate_tokens", spy)
    asks = [14, 16, 31, 100]
    texts = lm.generate_until([SimpleNamespace(args=(context, {"until": ["\n\n"], "max_gen_toks": n})) for n in asks])
    assert len(texts) == len(asks) and all(isinstance(t, str) for t in texts)
    for (prompt, new, ctx_len), ask in zip(calls, asks):
        assert new == min(ask, seq_len - 1) and ctx_len == seq_len
        assert 1 + len(prompt) + new == seq_len  # all of the room, not one position more
        assert prompt == ids[len(ids) - len(prompt):]  # the context's last ids, cut on ids

    lengths = []
    real_run = Scorer._run

    def run_spy(self, kind, params, rows, *args, **kw):
        lengths.extend(len(r.tokens) for r in rows)
        return real_run(self, kind, params, rows, *args, **kw)

    monkeypatch.setattr(Scorer, "_run", run_spy)
    lm.loglikelihood([SimpleNamespace(args=(context, " the river")), SimpleNamespace(args=("A", " river" * 40))])
    lm.loglikelihood_rolling([SimpleNamespace(args=(context,))])
    assert lengths and max(lengths) <= seq_len
