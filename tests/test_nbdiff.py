"""AR-to-block-diffusion adaptation (NBDiff, arXiv:2512.06776): the block-size schedule, the
pattern at block size 1 against the AR pattern (brute force), the growing step's batch against
the static block size's, the auxiliary AR loss against a hand-computed next-token CE, and an
AR run continued as block diffusion with growth that resumes exactly."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from test_block_diffusion import IDS, _bd, tiny  # noqa: F401 - the same ids, objective helper and tiny-model fixture

from dllm_jax import train_step
from dllm_jax.objectives.block_diffusion import (block_attention_mask, block_size_at, growth_stages,
                                                 prepare_block_diffusion)


def test_block_size_schedule_doubles_in_equal_phases():
    assert growth_stages(8, 16) == (1, 2, 4, 8)
    assert growth_stages(12, 36) == (1, 2, 4, 12)  # 8 does not divide 36: skipped
    assert growth_stages(1, 16) == (1,)
    # B'=8 over N=8 steps: four stages of 2 steps each, then B' for good
    want = [1, 1, 2, 2, 4, 4, 8, 8, 8, 8]
    got = [int(block_size_at(s, 8, 16, 8)) for s in range(len(want))]
    assert got == want
    traced = jax.jit(lambda s: block_size_at(s, 8, 16, 8))
    assert [int(traced(jnp.int32(s))) for s in range(len(want))] == want
    # N=6 with K=4 stages: stage floor(4 s / 6)
    assert [int(block_size_at(s, 8, 16, 6)) for s in range(8)] == [1, 1, 2, 4, 4, 8, 8, 8]
    assert int(block_size_at(2**30, 8, 16, 6)) == 8  # no int32 overflow late in a run
    assert all(int(block_size_at(s, 8, 16, 0)) == 8 for s in (0, 5, 100))  # grow_steps=0: off


def test_block_size_one_is_the_ar_causal_pattern():
    """At block size 1 (the first stage), brute force: a noisy token sees itself and the clean
    tokens strictly before it (x_i predicted from x_<i: AR), the clean half is causal."""
    length = 8
    bd = _bd(4, length, **{"block_diffusion.grow_steps": 6})
    mask = np.asarray(jax.jit(lambda s: bd.train_attention_mask(None, s, length))(jnp.int32(0)))[0, 0]
    for q in range(2 * length):
        for k in range(2 * length):
            qi, ki = q % length, k % length
            if q < length:  # noisy query
                want = (qi == ki) if k < length else (ki < qi)
            else:  # clean query
                want = k >= length and ki <= qi
            assert mask[q, k] == want, (q, k)
    # later stages are BD3-LM's pattern at the stage's block size
    for step, bs in ((2, 2), (5, 4), (9, 4)):
        np.testing.assert_array_equal(np.asarray(bd.train_attention_mask(None, jnp.int32(step), length)),
                                      np.asarray(block_attention_mask(length, bs)))


def test_growing_batch_is_the_static_block_size_batch_and_grow_steps_zero_changes_nothing():
    tokens = jnp.asarray(np.random.RandomState(0).randint(3, 50, (4, 16)))
    rng = jax.random.key(5)
    grow = _bd(8, **{"block_diffusion.grow_steps": 8})
    prepare = jax.jit(grow.train_prepare_fn(IDS))
    for step, bs in ((0, 1), (3, 2), (5, 4), (7, 8), (40, 8)):
        got = prepare(tokens, rng, jnp.int32(step))
        want = jax.jit(lambda t, r, bs=bs: prepare_block_diffusion(t, r, IDS, block_size=bs))(tokens, rng)  # jit vs jit: same ulps
        for name in ("inputs", "targets", "weights", "segment_ids", "denom"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=f"step {step}: {name}")
        np.testing.assert_array_equal(got.extras["t"], jnp.repeat(want.extras["t"], bs, axis=1))
        np.testing.assert_array_equal(got.extras["masked"], want.extras["masked"])
    off = _bd(8)
    assert not off.adapting and off.train_attention_mask(None, jnp.int32(0), 16) is None
    a, b = off.train_prepare_fn(IDS)(tokens, rng, jnp.int32(3)), off.prepare_fn(IDS)(tokens, rng)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_auxiliary_ar_loss_is_the_next_token_ce_of_the_clean_half_by_hand(tiny):
    model, params = tiny
    length, bs, w = 8, 2, 0.5
    tokens = np.random.RandomState(1).randint(3, 50, (2, length))
    tokens[1, 6:] = IDS.pad_id  # padding: no target there, no prediction of it
    tokens = jnp.asarray(tokens)
    bd = _bd(bs, length, **{"block_diffusion.ar_loss_weight": w})
    assert bd.train_metrics[-1] == "ar_loss"
    prep = bd.train_prepare_fn(IDS)(tokens, jax.random.key(2), jnp.int32(0))
    mask = bd.train_attention_mask(None, jnp.int32(0), length)
    ce, _ = train_step.forward_ce(model, params, prep, objective=bd, vocab_limit=IDS.mask_id, attention_mask=mask)
    sums = bd.metrics_from_ce(ce, prep)
    out = {k: float(v) for k, v in bd.finalize(dict(sums, denom=prep.denom)).items()}
    # by hand: all 2L outputs under BD3-LM's mask, log-softmax over the real ids, the clean
    # output at i scored on x_{i+1} where i + 1 starts a block (i = 1, 3, 5), both real
    full = model.apply({"params": params}, prep.inputs, causal=False, positions=jnp.tile(jnp.arange(length), 2)[None].repeat(2, 0),
                       attention_mask=block_attention_mask(length, bs, prep.segment_ids))
    logp = np.asarray(jax.nn.log_softmax(np.asarray(full, np.float64)[..., :IDS.mask_id], axis=-1))
    terms = [-logp[r, length + i, int(tokens[r, i + 1])] for r in range(2) for i in (1, 3, 5)
             if tokens[r, i + 1] != IDS.pad_id]
    assert len(terms) == 5
    assert out["ar_loss"] == pytest.approx(np.mean(terms), rel=1e-5)
    # the reported loss stays the NELBO (the same batch without the AR term); the step's objective adds w * ar_loss
    nelbo = float(jnp.sum(prep.weights * ce[:, :length]) / prep.denom)
    assert out["loss"] == pytest.approx(nelbo, rel=1e-6)
    assert float(sums["loss_sum"] / prep.denom) == pytest.approx(nelbo + w * np.mean(terms), rel=1e-5)
    # no leak: the clean output at a read position does not change with the token it predicts
    changed = prep.inputs.at[0, length + 2].set(7 if int(tokens[0, 2]) != 7 else 8)
    again = model.apply({"params": params}, changed, causal=False, positions=jnp.tile(jnp.arange(length), 2)[None].repeat(2, 0),
                        attention_mask=block_attention_mask(length, bs, prep.segment_ids))
    np.testing.assert_allclose(np.asarray(again[0, length + 1]), np.asarray(full[0, length + 1]), atol=1e-6)
    assert not np.allclose(np.asarray(again[0, length + 2]), np.asarray(full[0, length + 2]))
    # FLOPs: the output head also runs on the clean half (forward + backward)
    extra = bd.train_flops_per_token(model.cfg, length) - _bd(bs, length).train_flops_per_token(model.cfg, length)
    assert extra == 3 * 2 * model.cfg.d_model * model.cfg.vocab_size


def test_ar_run_continued_as_block_diffusion_with_growth_resumes_exactly(tmp_path, corpus, trained_runs):
    from dllm_jax.checkpoint import Checkpointer, load_run
    from dllm_jax.metrics import read_metrics
    from dllm_jax.train import train

    paths, cache = corpus
    cfg = tiny_config(paths, cache, "block_diffusion", init__from_workdir=trained_runs["ar"], block_diffusion__block_size=8,
                      block_diffusion__grow_steps=8, block_diffusion__ar_loss_weight=0.5, train__grad_accum=2, data__epochs=1,
                      train__log_every=1, train__eval_every=0, train__checkpoint_every=100)
    full = str(tmp_path / "full")
    s = train(cfg, full)
    n = s["num_steps"]
    records = [r for r in read_metrics(full) if "loss" in r]
    assert n == 8 and len(records) == n and all(np.isfinite(r["loss"]) and r["ar_loss"] > 0 for r in records)
    parts = str(tmp_path / "parts")
    assert train(cfg, parts, stop_after=n // 2)["interrupted"]
    assert Checkpointer(parts, read_only=True).latest_step() == n // 2
    train(cfg, parts)
    assert os.path.exists(os.path.join(parts, "DONE"))
    losses = lambda w: [(r["step"], r["loss"], r["ar_loss"]) for r in read_metrics(w) if "loss" in r]  # noqa: E731
    assert losses(parts) == losses(full)
    for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, load_run(parts).params)),
                    jax.tree.leaves(jax.tree.map(np.asarray, load_run(full).params))):
        np.testing.assert_array_equal(a, b)
