"""Block diffusion (BD3-LM): the objective against the MDM and brute force, its estimators
against exact values, block decoding with the exact KV cache, batch invariance, and the
end-to-end path (train, sample, eval) of a tiny run."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from flax import linen as nn

from dllm_jax import config as C
from dllm_jax import flops, objectives, train_step
from dllm_jax.errors import ConfigError
from dllm_jax.evaluation.likelihood import Scorer, ScoreSpec
from dllm_jax.models import ModelConfig, Transformer
from dllm_jax.objectives.block_diffusion import block_attention_mask, block_causal_mask
from dllm_jax.sampling.api import generate_tokens

IDS = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=50)


def _bd(block_size, seq_len=16, **overrides):
    return objectives.by_name("block_diffusion", **{"block_diffusion.block_size": block_size, "data.seq_len": seq_len, **overrides})


@pytest.fixture(scope="module")
def tiny():
    model = Transformer(ModelConfig(vocab_size=56, d_model=32, n_layers=2, n_heads=4, d_ff=64))
    params = nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32), causal=False)["params"])
    return model, params


def _loss(model, params, obj, prep, chunk=0):
    ce, _ = train_step.forward_ce(model, params, prep, objective=obj, vocab_limit=IDS.mask_id, loss_chunk=chunk)
    return float(jnp.sum(prep.weights * ce) / prep.denom)


# ---------------------------------------------------------------- objective
def test_one_block_is_exactly_the_mdm(tiny):
    model, params = tiny
    tokens = jnp.asarray(np.random.RandomState(0).randint(3, 50, (4, 16)))
    rng = jax.random.key(3)
    pm = objectives.prepare_mdm(tokens, rng, IDS)
    bd = _bd(16)
    pb = bd.prepare_fn(IDS)(tokens, rng)
    # the same t and masks (same key streams), the noisy half is the MDM input, the clean half x_0
    np.testing.assert_array_equal(pb.inputs[:, :16], pm.inputs)
    np.testing.assert_array_equal(pb.inputs[:, 16:], tokens)
    np.testing.assert_array_equal(pb.weights, pm.weights)
    np.testing.assert_array_equal(pb.extras["t"][:, 0], pm.extras["t"])
    mdm = objectives.by_name("mdm")
    lm, lb = _loss(model, params, mdm, pm), _loss(model, params, bd, pb)
    assert lb == pytest.approx(lm, rel=1e-6, abs=0)
    assert _loss(model, params, bd, pb, chunk=8) == pytest.approx(lm, rel=1e-6)
    sums = {k: float(v) for k, v in bd.finalize(bd.metrics_from_ce(jnp.ones((4, 16)), pb)).items()}
    assert set(sums) == set(bd.train_metrics) == {"loss", "elbo", "masked_ce", "mask_frac"}


def test_per_block_times_masks_and_weights_by_hand():
    tokens = jnp.full((64, 16), 7).at[:, 13:].set(IDS.pad_id)
    prep = _bd(4).prepare_fn(IDS)(tokens, jax.random.key(1))
    t = np.asarray(prep.extras["t"])  # [B, 4]: one t per block
    assert t.shape == (64, 4) and len(np.unique(t)) == 256  # every block its own time
    u = np.sort((t.reshape(-1) - 1e-3) / (1 - 1e-3))
    np.testing.assert_allclose(np.diff(u), 1 / 256, atol=1e-5)  # stratified over all blocks of the batch
    masked = np.asarray(prep.inputs[:, :16]) == IDS.mask_id
    np.testing.assert_array_equal(np.asarray(prep.extras["masked"]) > 0, masked)
    assert not masked[:, 13:].any()  # padding is never masked or counted
    w = np.where(masked, 1.0 / np.repeat(t, 4, axis=1), 0.0)  # linear schedule: w(t_b) = 1 / t_b
    np.testing.assert_allclose(np.asarray(prep.weights), w, rtol=1e-6)
    assert float(prep.denom) == 64 * 13
    frac = [masked[:, 4 * b:4 * b + 4].mean() for b in range(3)]
    np.testing.assert_allclose(frac, [np.repeat(t, 4, 1)[:, 4 * b:4 * b + 4].mean() for b in range(3)], atol=0.12)


def _brute_force_mask(length, bs, seg):
    n = 2 * length
    m = np.zeros((n, n), bool)
    for q in range(n):
        for k in range(n):
            qn, kn = q < length, k < length
            qb, kb = (q % length) // bs, (k % length) // bs
            if qn and kn:
                ok = qb == kb
            elif qn and not kn:
                ok = kb < qb
            elif not qn and not kn:
                ok = kb <= qb
            else:
                ok = False
            m[q, k] = ok and seg[q] == seg[k]
    return m


@pytest.mark.parametrize("bs", [1, 2, 4, 8])
def test_block_attention_mask_equals_brute_force(bs):
    seg = np.array([1, 1, 1, 2, 2, 2, 2, 0])  # two documents and a padding position
    seg2 = np.concatenate([seg, seg])
    got = np.asarray(block_attention_mask(8, bs, jnp.asarray(seg2[None])))[0, 0]
    np.testing.assert_array_equal(got, _brute_force_mask(8, bs, seg2))
    plain = np.asarray(block_attention_mask(8, bs))[0, 0]
    np.testing.assert_array_equal(plain, _brute_force_mask(8, bs, np.ones(16)))
    bc = np.asarray(block_causal_mask(8, bs))[0, 0]  # the clean half alone
    np.testing.assert_array_equal(bc, plain[8:, 8:])


def test_block_size_must_divide_seq_len():
    cfg = C.default_config()
    cfg.objective, cfg.data.seq_len, cfg.block_diffusion.block_size = "block_diffusion", 128, 48
    cfg.data.paths = "x"
    with pytest.raises(ConfigError, match="block_diffusion.block_size=48 must .*divide data.seq_len=128"):
        C.validate(cfg)
    cfg.block_diffusion.block_size = 32
    C.validate(cfg)


def test_flops_count_two_halves():
    cfg = ModelConfig(vocab_size=10, d_model=4, n_layers=1, n_heads=1, d_ff=4)
    mp = 4 * 4 * 4 + 3 * 4 * 4 + 4 * 10  # q, k, v, o + SwiGLU + head
    assert flops.matmul_params(cfg) == mp
    # 2L = 10 tokens per 5 targets: each 2 * (mp - head) FLOPs and 4 * 4 * 10 attention FLOPs; the head on 5
    assert flops.block_diffusion_train_flops_per_token(cfg, 5) == 3 * (2 * 2 * (mp - 40) + 2 * 40 + 2 * 16 * 10)
    assert _bd(4).train_flops_per_token(cfg, 5) == flops.block_diffusion_train_flops_per_token(cfg, 5)
    ratio = flops.block_diffusion_train_flops_per_token(cfg, 5) / flops.train_flops_per_token(cfg, 5)
    assert 1.5 < ratio < 2.5
    # the attention term alone (what a splash kernel does outside XLA's count): 2 queries per token over 10 keys
    assert flops.train_attention_flops_per_token(cfg, 5, 10) == 3 * 2 * 16 * 10
    assert flops.train_attention_flops_per_token(cfg, 5) == 3 * 16 * 5 == flops.train_flops_per_token(cfg, 5) - 6 * mp
    # generation with the exact cache: prompt of 2 (causal-like prefill), blocks of 2 over 3 tokens, one token per step
    dense, attn = 2 * mp, 16  # attention FLOPs per (query, key)
    prefill = 2 * dense + attn * (1 + 2)
    block1 = (2 + 1) * 2 * (dense + attn * 4)  # 2 steps + the clean pass, 2 queries over 2 + 2 keys
    block2 = (1 + 1) * 1 * (dense + attn * 5)
    assert flops.block_diffusion_generate_flops(cfg, 3, 2, block_length=2) == prefill + block1 + block2
    assert "bd_kv_cache_b16" in flops.generation_flops_table(cfg, lengths=(16,))[0]


# ---------------------------------------------------------------- estimators
V, MASK = 6, 6
LOG_PI = np.log(np.array([0.05, 0.1, 0.15, 0.2, 0.2, 0.3]))


def marginal_model(params, tokens, segment_ids):
    """True marginals at every position of the noisy half, whatever the input ([B, L, V+2])."""
    row = jnp.concatenate([jnp.asarray(LOG_PI, jnp.float32), jnp.array([4.0, 6.0])])
    return jnp.broadcast_to(row, (tokens.shape[0], tokens.shape[1] // 2, V + 2))


def _spec(bs):
    return ScoreSpec(objective="block_diffusion", vocab_limit=V, mask_id=MASK, eos_id=2, max_len=64, eps=1e-3, block_size=bs)


def test_block_nelbo_equals_exact_nll_for_true_marginals():
    rng = np.random.default_rng(0)
    seqs = rng.choice(V, size=(12, 24), p=np.exp(LOG_PI)).astype(np.int32)
    exact = -LOG_PI[seqs].sum()
    res = Scorer(marginal_model, _spec(8), batch_size=128).sequence_nll(None, seqs, mc_samples=64, seed=1)
    se_total = res["stderr_nats_per_token"] * res["tokens"]
    assert res["tokens"] == seqs.size and not res["exact"] and se_total < 0.05 * exact
    assert abs(res["nelbo_total"] - exact) < 4 * se_total, (res["nelbo_total"], exact, se_total)


def test_blockwise_answer_estimator_is_unbiased_and_one_token_blocks_are_exact():
    tokens = [5, 3, 1, 4, 0, 2, 5]  # 3 context tokens, 4 answer tokens over two blocks of 4
    exact = -LOG_PI[tokens[3:]].sum()
    scorer = Scorer(marginal_model, _spec(4), batch_size=256)
    est = scorer.loglikelihood(None, [(tokens[:3], tokens[3:])], mc_samples=1000, seed=3)[0]
    assert est.tokens == 4 and est.stderr < 0.03 * exact
    assert abs(-est.logprob - exact) < 4 * est.stderr, (-est.logprob, exact, est.stderr)
    # one answer token per block (block size 1): every draw is exact
    one = Scorer(marginal_model, _spec(1), batch_size=64).loglikelihood(None, [(tokens[:3], tokens[3:])], mc_samples=8, seed=0)[0]
    assert one.logprob == pytest.approx(-exact, rel=1e-5) and one.stderr == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- sampling
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [3], [20, 21, 22, 23]]


@pytest.mark.parametrize("sampler", ["topk_confidence", "threshold", "ancestral"])
def test_cached_equals_uncached_at_temperature_zero(tiny, sampler):
    model, params = tiny
    kw = dict(objective="block_diffusion", sampler=sampler, max_new_tokens=10, block_length=4, temperature=0.0, eos_last=False)
    cached = generate_tokens(model, params, IDS, PROMPTS, kv_cache=True, **kw)
    plain = generate_tokens(model, params, IDS, PROMPTS, kv_cache=False, **kw)
    np.testing.assert_array_equal(cached.tokens, plain.tokens)
    assert (cached.lengths == 10).all() and not cached.stopped_at_eos.any()
    # the region is filled block by block: a block's tokens are revealed before the next block's
    steps = cached.reveal_step
    for i, p in enumerate(PROMPTS):
        r = steps[i, len(p) + 1:len(p) + 11]
        blocks = (np.arange(len(p) + 1, len(p) + 11)) // 4
        for b in np.unique(blocks)[:-1]:
            assert r[blocks == b].max() < r[blocks == b + 1].min()


def test_a_prompt_decodes_the_same_alone_or_in_a_batch_of_16(tiny):
    model, params = tiny
    rng = np.random.RandomState(1)
    others = [list(rng.randint(3, 50, rng.randint(1, 12))) for _ in range(16)]
    mine = [30, 31, 32, 33, 34]
    kw = dict(objective="block_diffusion", sampler="topk_confidence", max_new_tokens=8, block_length=4, temperature=1.0, seed=7)
    alone = generate_tokens(model, params, IDS, [mine], **kw)
    batch = generate_tokens(model, params, IDS, others[:9] + [mine] + others[9:] + [mine], **kw)
    np.testing.assert_array_equal(batch.tokens[9], alone.tokens[0])
    # the second copy of a prompt has its own key (its copy index)
    assert not np.array_equal(batch.tokens[17], batch.tokens[9])


def test_mdm_semi_ar_blocks_are_batch_invariant_and_rows_advance_on_their_own(tiny):
    model, params = tiny
    params = dict(params, lm_head=params["lm_head"] * 60.0)  # confident on some positions, not on others
    rng = np.random.RandomState(2)
    others = [list(rng.randint(3, 50, rng.randint(1, 12))) for _ in range(16)]
    mine = [30, 31, 32]
    kw = dict(objective="mdm", sampler="threshold", threshold=0.5, max_new_tokens=8, block_length=4, temperature=1.0, seed=5)
    alone = generate_tokens(model, params, IDS, [mine], **kw)
    batch = generate_tokens(model, params, IDS, others[:4] + [mine] + others[4:], **kw)
    np.testing.assert_array_equal(batch.tokens[4], alone.tokens[0])
    # rows finish their first block at different iterations and start their second at once
    steps = batch.reveal_step[:, -8:]
    first_done, second_start = steps[:, :4].max(axis=1), steps[:, 4:].min(axis=1)
    np.testing.assert_array_equal(second_start, first_done + 1)
    assert len(set(first_done.tolist())) > 1
    # with a shared current block (the old baseline) rows wait for the slowest one: they finish later on average
    shared = generate_tokens(model, params, IDS, others[:4] + [mine] + others[4:], shared_blocks=True, **kw)
    finish, finish_shared = batch.reveal_step[:, -8:].max(axis=1), shared.reveal_step[:, -8:].max(axis=1)
    assert batch.nfe <= shared.nfe and finish.mean() < finish_shared.mean()


def test_rows_stop_at_eos_on_their_own(tiny):
    model, params = tiny
    eos_params = jax.tree.map(lambda x: x, params)
    eos_params["lm_head"] = params["lm_head"].at[:, IDS.eos_id].add(50.0)  # the model always says EOS
    res = generate_tokens(model, eos_params, IDS, [[5, 6, 7], [8]], objective="block_diffusion", max_new_tokens=12, block_length=4,
                          temperature=0.0)
    assert res.stopped_at_eos.all() and (res.lengths == 0).all()
    # each row stopped after its first block: nothing past it was generated
    for i, p in enumerate([[5, 6, 7], [8]]):
        first_end = (len(p) + 1) // 4 * 4 + 4
        assert (res.canvas[i, first_end:] == IDS.mask_id).all()


# ---------------------------------------------------------------- end to end
def test_train_sample_and_evaluate_a_block_diffusion_run(tmp_path, corpus, capsys):
    from dllm_jax.cli import main
    from dllm_jax.metrics import read_metrics
    from dllm_jax.train import train

    paths, cache = corpus
    cfg = tiny_config(paths, cache, "block_diffusion", block_diffusion__block_size=8, data__document_attention=True,
                      train__grad_accum=2, train__eval_every=0)
    workdir = str(tmp_path / "bd")
    summary = train(cfg, workdir)
    val = [r for r in read_metrics(workdir) if "val_loss" in r][-1]
    assert set(objectives.build(cfg).val_metrics) <= set(val) and 0 < val["val_loss"] < 2 * math.log(320)
    from dllm_jax.checkpoint import load_run

    model_cfg = load_run(workdir).model.cfg
    assert summary["flops_per_token"] == flops.block_diffusion_train_flops_per_token(model_cfg, 32)
    capsys.readouterr()  # training's output
    assert main(["sample", "--workdir", workdir, "--prompt", "the river", "--max-new-tokens", "12", "--temperature", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objective"] == "block_diffusion" and len(out["texts"]) == 1
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
    assert mc["n"] == 4 and mc["estimator"] == "block_llada_mc"
