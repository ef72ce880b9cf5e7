"""The study: FLOPs accounting, grid files, the sweep runner, crossover/R* analysis, the report,
and the paper-scale and CPU-scale experiment grids."""

import json
import logging
import os
import shlex

import numpy as np
import pytest

from dllm_jax import config as config_lib
from dllm_jax import flops
from dllm_jax.errors import ConfigError
from dllm_jax.models import ModelConfig
from dllm_jax.study import crossover, grid as grid_lib, scaling, sweep

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments")


# -- FLOPs -----------------------------------------------------------------------------

def test_flops_match_a_hand_count():
    cfg = ModelConfig(vocab_size=10, d_model=4, n_layers=1, n_heads=2, d_ff=8)
    # q, k, v, o: 4x(2x2) each = 64; SwiGLU 3 x 4 x 8 = 96; head 4 x 10 = 40
    assert flops.matmul_params(cfg) == 200
    # per query: 2 x 200 matmul + 4 x layers(1) x heads(2) x head_dim(2) x context
    assert flops.forward_flops_per_token(cfg, 5) == 400 + 16 * 5
    assert flops.train_flops_per_token(cfg, 5) == 3 * 480
    # AR, prompt = BOS, 3 new tokens: BOS and the first 2 new tokens are fed, attending 1, 2, 3 keys
    assert flops.ar_generate_flops(cfg, 3, prompt_len=1) == 3 * 400 + 16 * (1 + 2 + 3)
    assert flops.ar_generate_flops(cfg, 2, prompt_len=2) == 3 * 400 + 16 * (1 + 2 + 3)
    # MDM, canvas T = 4: every step runs 4 queries over 4 keys (464 per query)
    assert flops.mdm_generate_flops(cfg, 3, prompt_len=1) == 3 * 4 * 464
    assert flops.mdm_generate_flops(cfg, 3, prompt_len=1, tokens_per_step=2) == 2 * 4 * 464
    # T = 5 (480 per query), two blocks of 2, one token per step: a refresh call + 1 cached step per block
    assert flops.mdm_generate_flops(cfg, 4, 1, block_length=2, cache="dual") == 2 * (5 * 480 + 2 * 480)
    # prefix cache: the cached step computes the block and everything after it: 4 then 2 queries
    assert flops.mdm_generate_flops(cfg, 4, 1, block_length=2, cache="prefix") == (5 * 480 + 4 * 480) + (5 * 480 + 2 * 480)
    if "num_experts" in ModelConfig.__dataclass_fields__:
        moe = ModelConfig(vocab_size=10, d_model=4, n_layers=1, n_heads=2, d_ff=8, num_experts=4, experts_per_token=2)
        assert flops.matmul_params(moe) == 64 + 2 * 96 + 4 * 4 + 40  # active experts + router
    row = flops.generation_flops_table(cfg, lengths=(3,))[0]
    assert row["mdm_steps_eq_len_vs_ar"] == pytest.approx(3 * 4 * 464 / 1296)
    with pytest.raises(ValueError, match="tokens_per_step"):
        flops.mdm_generate_flops(cfg, 3, tokens_per_step=0.5)


# -- crossover and R* ------------------------------------------------------------------

def test_crossover_states_and_interpolation():
    e = [1, 2, 3, 4]
    # accuracy: MDM ahead for good between epoch 2 (behind by .1) and 3 (ahead by .1) -> 2.5
    c = crossover.find_crossover(e, [.5, .5, .5, .5], e, [.3, .4, .6, .7], higher=True)
    assert c.state == "crossover" and c.epoch == pytest.approx(2.5) and c.value == pytest.approx(.5)
    # an early lead that is lost again does not count: the last time AR is ahead decides
    c = crossover.find_crossover(e, [.5, .5, .5, .5], e, [.6, .4, .45, .7], higher=True)
    assert c.epoch == pytest.approx(3 + .05 / .25)
    assert crossover.find_crossover(e, [.5] * 4, e, [.6] * 4, True).state == "mdm ahead throughout"
    assert crossover.find_crossover(e, [.5] * 4, e, [.6, .6, .6, .4], True).state == "ar ahead at the end"
    # loss (lower is better), MDM evaluated on another schedule: interpolated onto the union
    c = crossover.find_crossover([0, 4], [2.0, 2.0], [0, 2, 4], [3.0, 2.5, 1.5], higher=False)
    assert c.epoch == pytest.approx(3.0)
    assert crossover.best([1, 2, 3], [2.0, 1.0, 1.0], higher=False) == (1.0, 2.0)


def test_crossover_bracket_covers_the_planted_crossover_and_narrows_with_the_noise():
    """AR = min(0.3 + e/50, 0.5), MDM = 0.25 + e/80: the crossover is at epoch 20. With SE s on
    every evaluation the lead e/80 - 0.25 (e >= 10) has SE sqrt(2) s: AR is ahead by > 2 SE up
    to e < 20 - 160 sqrt(2) s, the MDM from e > 20 + 160 sqrt(2) s (hand-computed brackets)."""
    e = np.arange(1, 41, dtype=float)
    ar, mdm = np.minimum(0.3 + e / 50, 0.5), 0.25 + e / 80
    brackets = {}
    for se, expected in ((0.02, (15.0, 25.0)), (0.005, (18.0, 22.0))):
        c = crossover.find_crossover(e, ar, e, mdm, True, ar_stderr=[se] * 40, mdm_stderr=[se] * 40)
        assert c.epoch == pytest.approx(20.0) and (c.low, c.high) == expected and c.significant
        brackets[se] = c
    assert brackets[0.005].describe_interval() == "20.0 [18.0..22.0]"
    # the bracket holds the crossover and narrows as the standard errors shrink
    assert brackets[0.02].low < brackets[0.005].low < 20 < brackets[0.005].high < brackets[0.02].high
    # values interpolated between evaluations carry the interpolation weights' variance: MDM evaluated at
    # odd epochs only, its midpoints have SE s / sqrt(2), so the lead's SE at even epochs is sqrt(1.5) s:
    # with s = 0.0095 the lead +-0.025 at epochs 18 and 22 is past 2 sqrt(1.5) s = 0.0233 (not 2 sqrt(2) s = 0.0269)
    odd = e[::2]
    c = crossover.find_crossover(e, ar, odd, 0.25 + odd / 80, True, ar_stderr=[0.0095] * 40, mdm_stderr=[0.0095] * 20)
    assert c.epoch == pytest.approx(20.0) and (c.low, c.high) == (18.0, 22.0)
    c = crossover.find_crossover(e, ar, e, mdm, True, ar_stderr=[0.0095] * 40, mdm_stderr=[0.0095] * 40)
    assert (c.low, c.high) == (17.0, 23.0)
    # noise too large for the MDM ever to be ahead by 2 SE: the bracket is open at the top
    c = crossover.find_crossover(e, ar, e, mdm, True, ar_stderr=[0.1] * 40, mdm_stderr=[0.1] * 40)
    assert (c.low, c.high) == (-np.inf, np.inf) and not c.significant
    assert c.describe_interval() == "20.0 [<1..>40] not significant"
    # without standard errors: the point estimate alone
    c = crossover.find_crossover(e, ar, e, mdm, True)
    assert c.low is None and c.describe_interval() == "20.0"
    # no crossover: how far apart the curves end
    c = crossover.find_crossover(e, ar, e, np.full(40, 0.45), True, ar_stderr=[0.01] * 40, mdm_stderr=[0.01] * 40)
    assert c.describe_interval() == "ar ahead at the end (by > 2 SE)"
    # AR ahead by 0.05 > 2 sqrt(2) 0.01 up to epoch 20, by 0.01 after it
    c = crossover.find_crossover(e, ar, e, np.repeat([0.45, 0.49], 20), True, ar_stderr=[0.01] * 40, mdm_stderr=[0.01] * 40)
    assert c.describe_interval() == "ar ahead at the end (within 2 SE after epoch 20.0)"
    c = crossover.find_crossover(e, ar, e, np.full(40, 0.49), True, ar_stderr=[0.01] * 40, mdm_stderr=[0.01] * 40)
    assert c.describe_interval() == "ar ahead at the end (within 2 SE throughout)"
    c = crossover.find_crossover(e, ar, e, ar + 0.03, True, ar_stderr=[0.01] * 40, mdm_stderr=[0.01] * 40)
    assert c.describe_interval() == "mdm ahead throughout (by > 2 SE from epoch 1.0)"


def test_crossover_bracket_covers_a_planted_crossover_under_noise():
    """24 evaluations with binomial-size noise (SE 0.01) around planted curves that cross at epoch
    (0.44 - 0.30) / 0.0022 = 63.6: the bracket holds the true crossover in >= 95% of trials (its
    ends are one-sided 2-SE statements), and the MDM is significantly ahead at the end in most."""
    e = np.linspace(3.4, 81, 24)
    ar = np.where(e > 10, 0.43 - (e - 10) * 0.001, 0.2 + e * 0.023)
    mdm = 0.30 + e * 0.0012
    truth, se, rng = 0.14 / 0.0022, [0.01] * 24, np.random.default_rng(0)
    covered = significant = 0
    for _ in range(200):
        c = crossover.find_crossover(e, ar + 0.01 * rng.standard_normal(24), e, mdm + 0.01 * rng.standard_normal(24), True,
                                     ar_stderr=se, mdm_stderr=se)
        covered += c.low <= truth <= c.high
        significant += c.significant
    assert covered / 200 >= 0.95 and significant / 200 > 0.5, (covered, significant)


def test_mdm_passes_ar_best_by_two_standard_errors():
    e = np.arange(1, 21, dtype=float)
    ar = np.concatenate([0.4 + e[:10] / 50, 0.6 - (e[10:] - 10) / 100])  # best 0.6 at epoch 10, then declining
    se = [0.01] * 20
    # the MDM overtakes the declining AR (a crossover) but never AR's best by 2 SE (0.6 + 2 sqrt(2) 0.01 = 0.628)
    mdm = 0.3 + e * 0.016  # 0.62 at the end
    assert crossover.find_crossover(e, ar, e, mdm, True).state == "crossover"
    p = crossover.passes_best(e, ar, se, e, mdm, se, True)
    assert (p.ar_best, p.ar_best_epoch, p.passes) == (pytest.approx(0.6), 10.0, False)
    assert p.max_margin == pytest.approx(0.02 / (0.01 * np.sqrt(2)), rel=1e-6) and p.describe() == "no (at most +1.4 SE)"
    # above 0.628 at epochs 11 and 12, not 13, then from 14 on
    mdm = np.array([0.4] * 10 + [0.63, 0.65, 0.62, 0.65, 0.66, 0.66, 0.67, 0.68, 0.69, 0.70])
    p = crossover.passes_best(e, ar, se, e, mdm, se, True)
    assert (p.passes, p.first_epoch, p.from_epoch) == (True, 11.0, 14.0)
    assert p.describe() == "yes, from epoch 14.0 (first at 11.0)"
    p = crossover.passes_best(e, ar, se, e, np.concatenate([mdm[:-1], [0.6]]), se, True)
    assert (p.first_epoch, p.from_epoch) == (11.0, None) and p.describe() == "yes at epoch 11.0, not at the end"
    assert crossover.passes_best(e, ar, None, e, mdm, se, True).describe() == "-"  # no standard errors: untested
    # lower is better (a loss): the sign flips
    p = crossover.passes_best(e, -ar, se, e, -mdm, se, False)
    assert (p.ar_best, p.passes, p.from_epoch) == (pytest.approx(-0.6), True, 14.0)


def test_data_ratio_interpolates_in_log_unique_tokens():
    # AR_best = 0.4, 0.6 at U = 1e4, 1e5; MDM_best(1e4) = 0.5: AR needs 10^4.5 unique tokens -> 3.16x
    assert crossover.unique_needed([1e4, 1e5], [0.4, 0.6], 0.5) == (pytest.approx(10 ** 4.5), "=")
    assert crossover.unique_needed([1e4, 1e5], [0.4, 0.6], 0.4) == (1e4, "<=")
    assert crossover.unique_needed([1e4, 1e5], [0.4, 0.6], 0.61) == (1e5, ">")
    # not monotone in U: the first budget interval that reaches the target
    assert crossover.unique_needed([1e3, 1e4, 1e5], [0.3, 0.7, 0.5], 0.5) == (pytest.approx(10 ** 3.5), "=")
    ar = {1e4: (0.4, 3.0, 0.0), 1e5: (0.6, 5.0, 0.0)}
    mdm = {1e4: (0.5, 30.0, 0.0), 1e5: (0.7, 9.0, 0.0)}
    low, high = crossover.data_ratios(ar, mdm)
    assert (low.ratio, low.bound, low.ar_needed) == (pytest.approx(10 ** 0.5), "=", pytest.approx(10 ** 4.5))
    assert (high.ratio, high.bound) == (1.0, ">")  # the MDM's 0.7 beats AR at every budget: AR needs > 1e5
    # converse: the MDM reaches AR_best(1e5) = 0.6 at 10^4.5 (1e5 / 10^4.5 = 3.16x); AR_best(1e4) already at 1e4
    assert (high.converse, high.converse_bound) == (pytest.approx(10 ** 0.5), "=")
    assert (low.converse, low.converse_bound) == (1.0, ">=")
    assert low.describe() == "3.16x (3.16..3.16)" and high.describe() == "> 1x"  # zero SE: a point; every resample beyond U_max
    # the bootstrap interval holds the ratio and narrows with the standard errors as the delta method says:
    # log10 ratio = (m - a1) / (a2 - a1) has gradient (5, -2.5, -2.5), so SD = se sqrt(37.5) and the 95%
    # interval spans a factor 10^(2 x 1.96 x SD)
    for se in (0.01, 0.002):
        r = crossover.data_ratios({u: (v, e, se) for u, (v, e, _) in ar.items()}, {u: (v, e, se) for u, (v, e, _) in mdm.items()})[0]
        assert r.low < 10 ** 0.5 < r.high
        assert r.high / r.low == pytest.approx(10 ** (2 * 1.96 * se * 37.5 ** 0.5), rel=0.1)
    assert crossover.data_ratios({u: (v, e, None) for u, (v, e, _) in ar.items()}, mdm)[0].low is None


def _planted_runs(r_star, budgets, epochs, rng, noise=1e-3):
    """One (U, tokens, final loss) point per run of a (U x epochs) grid, loss from the law with
    E=1.7, B=250, beta=0.3 and relative noise."""
    u, e = (np.array(v, dtype=float).ravel() for v in np.meshgrid(budgets, epochs))
    t = u * e
    loss = scaling.predict_loss(u, t, 1.7, 250.0, 0.3, r_star) * (1 + noise * rng.standard_normal(len(u)))
    return u, t, loss


@pytest.mark.parametrize("r_star", [4.0, 15.4, 60.0])
def test_rstar_fit_recovers_a_planted_value_from_separate_runs(r_star):
    u, t, loss = _planted_runs(r_star, [1e5, 3e5, 1e6], [1, 2, 4, 8, 16, 32, 64, 128], np.random.default_rng(1))
    fit = scaling.fit_rstar(u, t, loss, n_boot=100)
    assert fit.n == 24 and abs(fit.r_star / r_star - 1) < 0.1, fit
    assert fit.r_star_low < r_star < fit.r_star_high, fit  # the bootstrap interval covers the truth
    assert fit.r_star_high / fit.r_star_low < 2.0 and fit.r2 > 0.99 and fit.determined, fit
    assert scaling.effective_data(100, 50, r_star) == 50
    assert scaling.effective_data(100, 1e9, r_star) == pytest.approx(100 * (1 + r_star))


def test_rstar_bootstrap_interval_is_deterministic_and_widens_with_noise():
    u, t, loss = _planted_runs(15.4, [1e5, 3e5, 1e6], [1, 2, 4, 8, 16, 32], np.random.default_rng(3), noise=2e-3)
    a, b = scaling.fit_rstar(u, t, loss, n_boot=60, seed=7), scaling.fit_rstar(u, t, loss, n_boot=60, seed=7)
    assert (a.r_star_low, a.r_star_high) == (b.r_star_low, b.r_star_high)
    u2, t2, loss2 = _planted_runs(15.4, [1e5, 3e5, 1e6], [1, 2, 4, 8, 16, 32], np.random.default_rng(3), noise=2e-2)
    c = scaling.fit_rstar(u2, t2, loss2, n_boot=60, seed=7)
    assert c.r_star_high / c.r_star_low > a.r_star_high / a.r_star_low


def test_rstar_fit_says_when_it_cannot_tell():
    assert "past one epoch" in scaling.fit_rstar([1e5] * 6, np.linspace(1e4, 1e5, 6), np.linspace(3, 2, 6)).note
    assert "too few" in scaling.fit_rstar([1e5] * 3, [1e5, 2e5, 3e5], [3, 2, 1]).note
    # runs of at most 2 epochs, planted R* = 500: repetition never hurts there, so R* is unbounded
    u, t, loss = _planted_runs(500.0, [1e5, 2e5, 4e5], [0.5, 1, 1.5, 2], np.random.default_rng(2))
    fit = scaling.fit_rstar(u, t, loss, n_boot=60)
    assert not fit.determined and "not determined" in fit.note, fit


# -- synthetic sweep -> report -----------------------------------------------------------

def _fake_run(root, name, objective, unique, epochs, val, done=True, data_paths=None, data_stats=None):
    cfg = config_lib.default_config()
    cfg.objective = objective
    if data_paths is not None:
        cfg.data.paths = data_paths
    cfg.data.unique_tokens = unique
    cfg.data.epochs = epochs
    cfg.train.warmup_steps = 0
    cfg.train.batch_size, cfg.data.seq_len = 4, 16
    wd = os.path.join(root, name)
    os.makedirs(wd)
    per_step = 64
    steps_per_epoch = unique // per_step
    with open(os.path.join(wd, "config.json"), "w") as f:
        f.write(config_lib.to_json(cfg))
    model = ModelConfig.from_config(cfg.model, 1032)
    info = {"params": 123_456, "flops_per_token": flops.train_flops_per_token(model, 16), "num_steps": steps_per_epoch * epochs,
            "steps_per_epoch": steps_per_epoch, "unique_tokens": unique, "epochs": epochs, "vocab_size": 1024, "seq_len": 16, "global_batch": 4}
    with open(os.path.join(wd, "run.json"), "w") as f:
        json.dump(info, f)
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        for rec in val:
            step = round(rec["epoch"] * steps_per_epoch)
            f.write(json.dumps({"step": step, "loss": 9.0, "tokens_per_sec": 1000.0, "epoch": rec["epoch"], "tokens_seen": step * per_step}) + "\n")
            f.write(json.dumps({"step": step, "tokens_seen": step * per_step, **rec}) + "\n")
    if data_stats is not None:
        with open(os.path.join(wd, "data_stats.json"), "w") as f:
            json.dump(data_stats, f)
    if done:
        open(os.path.join(wd, "DONE"), "w").close()


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """Planted: R* = 15 (AR) and 60 (MDM) in the validation loss; at U = 6400 the MDM's cloze
    accuracy (0.25 + e/80, at most 0.9) passes AR's (min(0.3 + e/50, 0.5)) at epoch 20 exactly; at the
    larger budgets AR stays ahead."""
    root = str(tmp_path_factory.mktemp("synthetic_sweep"))
    rng = np.random.default_rng(0)
    # the three budgets of the crossover checks, plus runs at other (U, epochs) points for the R* fit
    for unique, epochs in ((6400, 64), (19200, 24), (64000, 8), (3200, 128), (12800, 4), (32000, 2)):
        for objective, r_star in (("ar", 15.0), ("mdm", 60.0)):
            grid = np.concatenate([[0.25, 0.5, 0.75], np.arange(1, epochs + 1)])
            loss = scaling.predict_loss(unique, grid * unique, 1.5 if objective == "ar" else 1.8, 400.0, 0.35, r_star)
            loss = loss * (1 + 1e-3 * rng.standard_normal(len(grid)))
            if objective == "ar":
                acc = np.minimum(0.3 + grid / 50, 0.5)
            else:
                acc = np.minimum(0.25 + grid / (80 if unique == 6400 else 400), 0.9)
            val = [{"epoch": float(e), "val_loss": float(v), "cloze_acc": float(a)} for e, v, a in zip(grid, loss, acc)]
            _fake_run(root, f"U{unique}_{objective}", objective, unique, epochs, val)
    return root


def test_report_finds_the_planted_crossover_and_rstar(synthetic_root, tmp_path):
    from dllm_jax.cli import main

    out = str(tmp_path / "report")
    assert main(["report", "--root", synthetic_root, "--out", out, "--flops-config", os.path.join(EXPERIMENTS, "paper_1b.py")]) == 0
    summary = json.load(open(os.path.join(out, "report.json")))
    rows = {r["unique_tokens"]: r for r in summary["crossovers"]["cloze_acc"]}
    assert summary["headline_metric"] == "cloze_acc"
    assert rows[6400]["crossover_epoch"] == pytest.approx(20.0)
    assert rows[6400]["ar_best"] == [0.5, 10.0] and rows[6400]["mdm_best"] == [0.9, 52.0]
    assert rows[19200]["crossover_epoch"] is None and rows[19200]["crossover"] == "ar ahead at the end"
    fits = {f["series"]: f for f in summary["fits"]}
    assert fits["ar"]["n"] == fits["mdm"]["n"] == 6 and fits["ar"]["fit_loss"] == "final"  # one point per run
    assert abs(fits["ar"]["r_star"] / 15.0 - 1) < 0.1 and abs(fits["mdm"]["r_star"] / 60.0 - 1) < 0.1
    assert fits["ar"]["r_star_low"] < 15.0 < fits["ar"]["r_star_high"]
    assert sorted(p[1] for p in fits["ar"]["points"]) == sorted(float(u * e) for u, e in
                                                              ((6400, 64), (19200, 24), (64000, 8), (3200, 128), (12800, 4), (32000, 2)))
    assert "cloze_acc_norm" not in summary["crossovers"]  # only the metrics the runs logged
    for name in ("crossover_cloze_acc_epochs.png", "crossover_cloze_acc_tokens.png", "crossover_val_loss_epochs.png", "scaling_fit.png"):
        assert os.path.getsize(os.path.join(out, name)) > 10_000, name
    md = open(os.path.join(out, "report.md")).read()
    # no logged standard errors: binomial ones from eval.cloze_examples (64 items), sqrt(.5 x .5 / 64) = 0.0625;
    # the MDM passes 0.5 + 2 sqrt(SE_mdm^2 + 0.0625^2) first at epoch 34 (0.675 > 0.6713; 0.6625 < 0.6721 at 33)
    assert ("| 0.12M params | 6,400 | 64 | ar | mdm | 0.5000 +-0.0625 (ep 10.0) | 0.9000 +-0.0375 (ep 52.0) | 20.0 [<0.25..34.0] "
            "| yes, from epoch 34.0 |") in md
    ratios = {r["unique_tokens"]: r for r in summary["data_ratios"]["cloze_acc"]}
    assert ratios[6400]["bound"] == ">" and ratios[6400]["data_ratio"].startswith("> 10x")  # 0.9 beats AR's best at every U
    assert "not** a fair" in md and "paper_1b" in md and "mdm_steps_eq_len" in md
    bad_out = tmp_path / "bad"
    assert main(["report", "--root", synthetic_root, "--out", str(bad_out), "--flops-config", str(tmp_path / "nope.py")]) == 2
    assert not bad_out.exists() or not any(bad_out.iterdir())  # nothing written before the bad path is found
    # the FLOPs rows come from dllm_jax.flops for the 1B paper model (vocab rows 50,304)
    big = [r for r in summary["flops"]["train"] if r["model"] == "paper_1b"][0]
    assert big["ar"] == big["mdm"] == pytest.approx(flops.train_flops_per_token(
        ModelConfig(vocab_size=50304, d_model=1536, n_layers=28, n_heads=12, d_ff=4608), 2048))


def test_report_states_the_crossover_bracket_and_the_data_ratio(tmp_path):
    """Two budgets whose cloze records carry their standard errors (0.005). U = 6400: AR =
    min(0.3 + e/50, 0.5), MDM = 0.25 + e/80: crossover at 20, bracket [18..22], past AR's best by
    2 SE from 22. U = 64000: AR best 0.7, MDM best 0.5. Data ratio at 6400: AR's best reaches the
    MDM's 0.65 at log U = log 6400 + (0.65 - 0.5) / (0.7 - 0.5) decades: 10^0.75 = 5.62x."""
    from dllm_jax.cli import main

    root = str(tmp_path / "runs")
    for unique, epochs, accs in ((6400, 32, {"ar": lambda e: min(0.3 + e / 50, 0.5), "mdm": lambda e: 0.25 + e / 80}),
                                 (64000, 4, {"ar": lambda e: 0.4 + e * 0.075, "mdm": lambda e: 0.3 + e * 0.05})):
        for objective, acc in accs.items():
            val = [{"epoch": float(e), "val_loss": 3.0, "cloze_acc": acc(e), "cloze_acc_stderr": 0.005, "cloze_n": 10_000}
                   for e in range(1, epochs + 1)]
            _fake_run(root, f"U{unique}_{objective}", objective, unique, epochs, val)
    out = str(tmp_path / "report")
    assert main(["report", "--root", root, "--out", out]) == 0
    summary = json.load(open(os.path.join(out, "report.json")))
    row = [r for r in summary["crossovers"]["cloze_acc"] if r["unique_tokens"] == 6400][0]
    assert row["crossover_epoch"] == pytest.approx(20.0) and (row["crossover_low"], row["crossover_high"]) == (18.0, 22.0)
    assert row["crossover_significant"] and row["passes"]["from_epoch"] == 22.0
    ratio = {r["unique_tokens"]: r for r in summary["data_ratios"]["cloze_acc"]}
    assert ratio[6400]["ratio"] == pytest.approx(10 ** 0.75) and ratio[6400]["low"] < 10 ** 0.75 < ratio[6400]["high"]
    assert (ratio[64000]["bound"], ratio[64000]["ratio"]) == ("<=", 0.1)  # AR's 0.5 at U = 6400 already matches
    assert (ratio[6400]["converse_bound"], ratio[64000]["converse_bound"]) == (">=", "<")
    md = open(os.path.join(out, "report.md")).read()
    assert "| 6,400 | 32 | ar | mdm | 0.5000 +-0.0050 (ep 10.0) | 0.6500 +-0.0050 (ep 32.0) | 20.0 [18.0..22.0] | yes, from epoch 22.0 |" in md
    assert (f"| 0.12M params | ar | mdm | 6,400 | 0.5000 +-0.0050 (ep 10.0) | 0.6500 +-0.0050 (ep 32.0) | {6400 * 10 ** 0.75:,.0f} | "
            f"5.62x ({ratio[6400]['low']:.2f}..{ratio[6400]['high']:.2f}) | >= 1x") in md
    assert "| 64,000 | 0.7000 +-0.0050 (ep 4.0) | 0.5000 +-0.0050 (ep 4.0) | <= 6,400 | <= 0.1x" in md
    for name in ("data_ratio_cloze_acc.png", "crossover_cloze_acc_epochs.png"):
        assert os.path.getsize(os.path.join(out, name)) > 10_000, name
    assert "(here the cloze task made from held-out text: 4-way choice of the last quarter of a held-out passage" in md


def test_report_marks_a_crossover_row_whose_run_is_unfinished(tmp_path):
    from dllm_jax.study.report import build_report

    root = str(tmp_path / "runs")
    for objective, last, done in (("ar", 8, True), ("mdm", 5, False)):  # the MDM run stopped after epoch 5 of 8
        val = [{"epoch": float(e), "val_loss": 3.0, "cloze_acc": 0.3 + 0.01 * e, "cloze_acc_stderr": 0.01, "cloze_n": 2500}
               for e in range(1, last + 1)]
        _fake_run(root, f"U6400_{objective}", objective, 6400, 8, val, done=done)
    summary = build_report(root, str(tmp_path / "out"))
    (row,) = summary["crossovers"]["cloze_acc"]
    assert row["unfinished"] == ["mdm at epoch 5"]
    assert "| 6,400 | 8 (unfinished: mdm at epoch 5) | ar | mdm |" in open(tmp_path / "out" / "report.md").read()
    _fake_run(root, "U12800_mdm", "mdm", 12800, 4, [], done=True)  # finished, but no record (metrics lost)
    build_report(root, str(tmp_path / "out2"))
    assert "Not compared (no cloze_acc record): U12800_mdm." in open(tmp_path / "out2" / "report.md").read()
    bare = str(tmp_path / "bare")
    _fake_run(bare, "U6400_ar", "ar", 6400, 8, [], done=False)  # killed before its first evaluation
    build_report(bare, str(tmp_path / "out3"))
    assert "No run has an evaluation record yet" in open(tmp_path / "out3" / "report.md").read()


def test_report_names_the_cloze_task_the_runs_logged():
    from types import SimpleNamespace

    from dllm_jax.study.report import cloze_task

    def run(**c):
        return [SimpleNamespace(name="run", val=[], config={"eval.cloze_choices": 4, **c})]

    assert cloze_task(run(**{"eval.cloze_length": 1})) == "4-way choice of the next token of a held-out passage given the text before it"
    assert cloze_task(run(**{"eval.cloze_length": 8})).startswith("4-way choice of the last 8 tokens")
    assert cloze_task(run(**{"eval.cloze_length": 1, "eval.cloze_context": "both"})).startswith("4-way two-sided cloze, a one-token blank")
    scored = [{"epoch": 1.0, "cloze_acc": 0.3}]
    mixed = [SimpleNamespace(name="U8000_ar", val=scored, config={"eval.cloze_length": 1, "eval.cloze_context": "both"}),
             SimpleNamespace(name="U8000_mdm", val=scored, config={"eval.cloze_length": 1}),
             SimpleNamespace(name="U8000_old", val=[{"epoch": 1.0, "val_loss": 3.0}], config={"eval.cloze_length": 5})]
    with pytest.raises(ConfigError, match=r"different cloze tasks.*two-sided.*\(U8000_ar\); .*next token.*\(U8000_mdm\)"):
        cloze_task(mixed)
    assert "two-sided" in cloze_task([mixed[0], mixed[2]])  # a run without cloze records does not count


def test_cloze_standard_errors_of_runs_logged_without_them(tmp_path):
    """Logged standard errors are read as they are; older records get sqrt(p(1-p)/n) with n the
    record's cloze_n, else eval.cloze_examples capped by the validation rows; unknown n: None."""
    from dllm_jax.study.runs import load_run

    val = [{"epoch": 1.0, "val_loss": 3.0, "cloze_acc": 0.5, "cloze_acc_stderr": 0.01},
           {"epoch": 2.0, "val_loss": 3.0, "cloze_acc": 0.5, "cloze_n": 100},
           {"epoch": 3.0, "val_loss": 3.0, "cloze_acc": 0.2}]
    _fake_run(str(tmp_path), "r", "ar", 6400, 4, val)
    run = load_run(str(tmp_path / "r"))
    assert run.curve_stderr("cloze_acc") == [0.01, 0.05, pytest.approx((0.2 * 0.8 / 64) ** 0.5)]  # eval.cloze_examples = 64
    assert run.curve_stderr("val_loss") == [None] * 3
    run.info["val_sequences"] = 16  # fewer validation rows than cloze_examples: build_cloze uses 16 items
    assert run.curve_stderr("cloze_acc")[2] == pytest.approx(0.1)
    run.info.pop("val_sequences")
    run.config["eval.cloze_examples"] = 0  # every validation row, and their count unknown
    assert run.curve_stderr("cloze_acc")[2] is None


# -- grid files and the sweep ------------------------------------------------------------

GRID_FILE = """
from conftest import tiny_config

def get_config():
    return tiny_config({paths!r}, {cache!r}, "mdm", data__epochs=2, train__eval_every=4, train__checkpoint_every=8,
                       train__log_every=4, data__val_tokens=1024, train__warmup_steps=1)

def get_grid(config, budgets="1024,2048", tokens="4096"):
    points = {{}}
    for u in budgets.split(","):
        for objective in ("ar", "mdm"):
            points[f"U{{u}}_{{objective}}"] = {{"objective": objective, "data.unique_tokens": u, "data.epochs": int(tokens) // int(float(u))}}
    return points
"""


@pytest.fixture
def grid_file(tmp_path, corpus):
    paths, cache = corpus
    path = tmp_path / "grid.py"
    path.write_text(GRID_FILE.format(paths=paths, cache=cache))
    return str(path)


def test_grid_points_and_their_command_lines(grid_file, tmp_path, capsys):
    from dllm_jax.cli import main

    g = grid_lib.load_grid(grid_file, str(tmp_path / "root"), [("train.lr", "1e-3")])
    assert [p.name for p in g.points] == ["U1024_ar", "U1024_mdm", "U2048_ar", "U2048_mdm"]
    assert g.points[1].config.objective == "mdm" and g.points[1].config.data.epochs == 4 and g.points[3].config.data.epochs == 2
    assert all(p.config.train.lr == 1e-3 for p in g.points)
    # each printed command line resolves to exactly the point's config
    assert main(["sweep", "--config", grid_file, "--root", str(tmp_path / "root"), "--print", "--config.train.lr=1e-3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for line, point in zip(lines, g.points):
        argv = shlex.split(line)
        assert argv[1:4] == ["-m", "dllm_jax", "train"] and argv[argv.index("--workdir") + 1] == point.workdir
        overrides, rest = config_lib.parse_overrides(argv[4:])
        cfg = config_lib.load_config(rest[rest.index("--config") + 1], overrides)
        assert cfg.to_dict() == point.config.to_dict()
    assert grid_lib.as_arg(1e5) == "100000" and grid_lib.as_arg(0.1) == "0.1" and grid_lib.as_arg(True) == "true"


def test_grid_errors_name_the_problem(grid_file, tmp_path):
    root = str(tmp_path / "r")
    with pytest.raises(ConfigError, match="data.unique_tokens is set by the grid"):
        grid_lib.load_grid(grid_file, root, [("data.unique_tokens", "512")])
    with pytest.raises(ConfigError, match="accepts: budgets, tokens"):
        grid_lib.load_grid(grid_file, root, params=["budget=1"])
    with pytest.raises(ConfigError, match="--index 4 is out of range.*4 points"):
        grid_lib.load_grid(grid_file, root).select(4)
    with pytest.raises(ConfigError, match="grid point 'U1.5_ar'.*unique_tokens"):
        grid_lib.load_grid(grid_file, root, params=["budgets=1.5"])
    with pytest.raises(ConfigError, match="must be NAME=VALUE"):
        grid_lib.parse_params(["budgets"])


def test_sweep_checks_the_corpus_once_before_any_point(grid_file, tmp_path, capsys):
    from dllm_jax.cli import main

    root = tmp_path / "r"
    missing = str(tmp_path / "no_such_corpus.txt")
    assert main(["sweep", "--config", grid_file, "--root", str(root), f"--config.data.paths={missing}"]) == 2
    err = capsys.readouterr().err
    assert err.count("matches no file") == 1 and "no_such_corpus.txt" in err
    assert not root.exists() or not any(root.iterdir())  # no point was started
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["sweep", "--config", grid_file, "--root", str(afile)]) == 2
    assert capsys.readouterr().err.count("error:") == 1
    for bad in (str(tmp_path), str(afile)):  # a directory, a file that is not Python: one error each
        assert main(["report", "--root", str(root), "--flops-config", bad]) == 2


@pytest.fixture
def shared_compilation_cache(tmp_path):
    """Points of one objective compile the same programs; a persistent compilation cache,
    scoped to the test, lets them (and the resumed point) share one compile."""
    from conftest import compilation_cache

    with compilation_cache(tmp_path / "xla_cache", 0.0):
        yield


def test_sweep_runs_skips_and_resumes_then_reports(grid_file, tmp_path, monkeypatch, caplog, shared_compilation_cache):
    """A 2x2 grid of tiny runs: one point is killed after its first checkpoint; rerunning the
    sweep resumes it (and only it); a third run skips everything; the report reads them all."""
    import dllm_jax.train as train_mod
    from dllm_jax.checkpoint import Checkpointer
    from dllm_jax.cli import main

    assert sweep.DONE_FILE == train_mod.DONE_FILE
    root = str(tmp_path / "sweep")
    args = ["sweep", "--config", grid_file, "--root", root, "--in-process"]
    real_save, real_train = Checkpointer.save, train_mod.train

    def save_then_die(self, step, *a, **k):
        real_save(self, step, *a, **k)
        if "U1024_mdm" in str(self.directory):
            raise RuntimeError("simulated kill after the first checkpoint")

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    assert main(args) == 1  # one point failed; the other three finished
    assert [sweep.point_status(os.path.join(root, n)) for n in ("U1024_ar", "U1024_mdm", "U2048_ar", "U2048_mdm")] == ["done", "partial", "done", "done"]
    monkeypatch.setattr(Checkpointer, "save", real_save)

    calls = []
    monkeypatch.setattr(train_mod, "train", lambda config, workdir, **k: (calls.append(os.path.basename(workdir)), real_train(config, workdir, **k))[1])
    with caplog.at_level(logging.INFO, logger="dllm_jax"):
        assert main(args) == 0
    assert calls == ["U1024_mdm"] and "resumed from step 8" in caplog.text
    steps = [r["step"] for r in train_mod._read_train_records(os.path.join(root, "U1024_mdm"))]
    assert steps == sorted(set(steps)) and steps[-1] == 16  # no step logged twice, run complete
    attempts = [json.loads(line)["outcome"] for line in open(os.path.join(root, "U1024_mdm", "sweep_times.jsonl"))]
    assert attempts == ["failed (CheckpointError)", "finished"]  # a failure while saving is a CheckpointError
    assert main(args) == 0 and calls == ["U1024_mdm"]  # everything done: nothing runs
    # a finished point whose config no longer matches the grid is not silently skipped (one error, before any point)
    assert main(args + ["--config.train.lr=1e-4"]) == 2

    out = str(tmp_path / "report")
    assert main(["report", "--root", root, "--out", out]) == 0
    summary = json.load(open(os.path.join(out, "report.json")))
    assert sorted(r["name"] for r in summary["runs"]) == ["U1024_ar", "U1024_mdm", "U2048_ar", "U2048_mdm"]
    assert all(r["done"] and r["wall_seconds"] > 0 for r in summary["runs"])
    assert {r["unique_tokens"] for r in summary["crossovers"]["val_loss"]} == {1024, 2048}
    assert os.path.exists(os.path.join(out, "crossover_val_loss_epochs.png"))
    # the report's model reconstruction gives the FLOPs per token the train loop logged
    from dllm_jax.study.report import run_model_config
    from dllm_jax.study.runs import load_runs

    for run in load_runs(root):
        assert run.info["flops_per_token"] == flops.train_flops_per_token(run_model_config(run), 32)


# -- the experiment grids ------------------------------------------------------------------

def _flat(cfg):
    from dllm_jax.study.runs import flatten

    return flatten(cfg.to_dict())


def test_cpu_grid_shape(tmp_path):
    g = grid_lib.load_grid(os.path.join(EXPERIMENTS, "cpu_grid.py"), str(tmp_path))
    by_budget = {}
    for p in g.points:
        c = p.config
        by_budget.setdefault(c.data.unique_tokens, set()).add(c.objective)
        assert 8e3 <= c.data.unique_tokens <= 1.3e5
        steps_per_epoch = c.data.unique_tokens // (c.train.batch_size * c.data.seq_len)
        assert c.data.unique_tokens == steps_per_epoch * c.train.batch_size * c.data.seq_len  # whole batches
        total = c.data.unique_tokens * c.data.epochs
        assert abs(total / 1e6 - 1) < 0.05  # one token budget for every point
        # log-spaced evaluations (each with a checkpoint), ratio sqrt(2), from epoch 1 to before the end
        at = config_lib.parse_epochs(c.eval.at_epochs)
        assert at[0] == 1 and at[-1] < c.data.epochs and all(abs(b / a - 2 ** 0.5) < 0.01 for a, b in zip(at, at[1:]))
        assert c.eval.cloze_length == 1 and c.eval.cloze_examples >= 2500  # binomial stderr <= 0.01
        assert c.data.val_tokens >= c.eval.cloze_examples * c.data.seq_len  # one held-out row per item
    # five budgets per objective: enough separate runs for the four-parameter R* fit
    assert all(objs == {"ar", "mdm"} for objs in by_budget.values()) and len(by_budget) == 5
    epochs = sorted(p.config.data.epochs for p in g.points)
    assert epochs[0] == 8 and epochs[-1] == 122
    # a fair comparison: points differ only in objective, budget and evaluation epochs
    varying = {"objective", "data.unique_tokens", "data.epochs", "eval.at_epochs"}
    flats = [_flat(p.config) for p in g.points]
    assert {k for f in flats for k in f if f[k] != flats[0][k]} <= varying
    for params, message in (({"eval_ratio": "x"}, "eval_ratio"), ({"budgets": "1e400"}, "budgets"), ({"tokens": "1e5,2e5"}, "one number"),
                            ({"budgets": "2e6"}, "not below tokens"),
                            ({"tokens": "5e3", "budgets": "4.5e3"}, r"U=4500 \(rounded up to whole batches of 2048 tokens: U=6144\) is not below"), ({"budgets": "8000,8100"}, "the same run twice"),
                            ({"objectives": ","}, "names no objective"),
                            ({"tokens": "1e30"}, "--grid tokens=1e30: U=8192 would be repeated"),
                            ({"eval_ratio": "1.001"}, "eval_ratio")):
        with pytest.raises(ConfigError, match=message):
            grid_lib.load_grid(os.path.join(EXPERIMENTS, "cpu_grid.py"), str(tmp_path), params=params)


def test_cpu_grid_evaluation_costs_scale_with_the_token_budget(tmp_path):
    """Issue 27: below 1e6 tokens (s = B / 1e6) the cloze items (x s, >= 100), the log-spaced
    evaluations (every ceil(1/s)-th, so the checkpoints too) and the warmup (x s) shrink;
    overrides are kept; at 1e6 and above nothing changes."""
    path = os.path.join(EXPERIMENTS, "cpu_grid.py")

    def point(tokens, budgets, overrides=()):
        g = grid_lib.load_grid(path, str(tmp_path), list(overrides), params={"tokens": tokens, "budgets": budgets, "objectives": "mdm"})
        return g.points[0].config

    full = point("1e6", "8e3")
    assert (full.eval.cloze_examples, full.train.warmup_steps) == (2500, 50)
    assert full.eval.at_epochs == "1,1.41,2,2.83,4,5.66,8,11.3,16,22.6,32,45.3,64,90.5"
    c = point("2.5e5", "8e3")  # s = 1/4: E = 31, every 4th of 1,1.41,...,22.6
    assert (c.eval.cloze_examples, c.train.warmup_steps, c.eval.at_epochs) == (625, 12, "1,4,16")
    c = point("1e5", "8e3")  # the smoke sweep: s = 1/10, 48 steps
    assert (c.eval.cloze_examples, c.train.warmup_steps, c.eval.at_epochs) == (250, 5, "1")
    c = point("1e4", "2048")  # s = 1/100: floors
    assert (c.eval.cloze_examples, c.train.warmup_steps) == (100, 1)
    c = point("1e5", "8e3", [("eval.cloze_examples", "300"), ("train.warmup_steps", "3")])
    assert (c.eval.cloze_examples, c.train.warmup_steps) == (300, 3)


def test_cpu_grid_eval_from_drops_the_early_evaluations(tmp_path):
    """`--grid eval_from=E`: no log-spaced evaluation before epoch E (the Monte Carlo-scored
    objectives' evaluations are costly); the end is evaluated in any case, cloze included (a
    point left with no evaluation lists its last epoch); a non-positive or non-numeric E is one
    ConfigError naming it."""
    path = os.path.join(EXPERIMENTS, "cpu_grid.py")

    def at_epochs(**params):
        g = grid_lib.load_grid(path, str(tmp_path), params={"budgets": "8e3", "objectives": "gidd", **params})
        return g.points[0].config.eval.at_epochs

    assert at_epochs(eval_from="45") == "45.3,64,90.5"
    assert at_epochs(eval_from="64") == "64,90.5"
    assert at_epochs(eval_from="1") == at_epochs() == "1,1.41,2,2.83,4,5.66,8,11.3,16,22.6,32,45.3,64,90.5"
    # none left: the last epoch alone, so that the end's evaluation scores the cloze task too
    assert at_epochs(eval_from="200") == at_epochs(eval_from="1e9") == "122"
    assert at_epochs(tokens="1e4") == "1"  # a 1-epoch point: no log-spaced evaluation before the end
    assert at_epochs(eval_from="16", tokens="2.5e5") == "16"  # after the budget's every-k-th thinning (1,4,16)
    for bad in ("0", "-3", "x", "inf", "nan"):
        with pytest.raises(ConfigError, match=f"eval_from='{bad}' must be a positive number"):
            at_epochs(eval_from=bad)


def test_ar_ablation_grid_shares_its_baselines_with_the_cpu_grid(tmp_path):
    cpu = {p.name: p for p in grid_lib.load_grid(os.path.join(EXPERIMENTS, "cpu_grid.py"), str(tmp_path)).points}
    abl = grid_lib.load_grid(os.path.join(EXPERIMENTS, "ar_ablations.py"), str(tmp_path)).points
    names = [p.name for p in abl]
    assert names[:2] == ["U8000_ar", "U8000_mdm"] and len(names) == 8
    for p in abl[:2]:
        assert p.config.to_dict() == cpu[p.name].config.to_dict()  # same workdir, same run: reused
    masks = [p.config.ar.input_mask_rate for p in abl if "mask" in p.name]
    drops = [p.config.model.dropout for p in abl if "drop" in p.name]
    assert masks == [0.1, 0.3, 0.5] and drops == [0.1, 0.3, 0.5]
    assert all(p.config.objective == "ar" for p in abl if "mask" in p.name or "drop" in p.name)


def test_paper_configs_resolve_with_the_named_sizes():
    from dllm_jax.study import paper

    for size, nominal in (("1b", 1e9), ("2b", 2e9), ("4b", 4e9), ("8b", 8e9)):
        cfg = config_lib.load_config(os.path.join(EXPERIMENTS, f"paper_{size}.py"))
        total, active = paper.param_counts(cfg)
        assert abs(total / nominal - 1) < 0.05 and active == total, (size, total)
        t = cfg.train
        assert (t.lr, t.min_lr_ratio, t.warmup_steps, t.schedule, t.b1, t.b2, t.weight_decay) == (2e-4, 0.1, 2000, "wsd", 0.9, 0.95, 0.1)
        assert (t.batch_size, cfg.data.seq_len, cfg.model.qk_norm, cfg.model.rope_base) == (256, 2048, True, 1e4)
        assert cfg.data.tokenizer.endswith(".model")  # given by path, never trained
    if "num_experts" in config_lib.default_config().model:
        cfg = config_lib.load_config(os.path.join(EXPERIMENTS, "paper_moe.py"))
        total, active = paper.param_counts(cfg)
        assert abs(total / 8e9 - 1) < 0.05 and abs(active / 1e9 - 1) < 0.05, (total, active)


def test_paper_grid_budgets(tmp_path):
    g = grid_lib.load_grid(os.path.join(EXPERIMENTS, "paper_grid.py"), str(tmp_path))
    has_moe = "num_experts" in config_lib.default_config().model
    assert len(g.points) == (5 if has_moe else 4) * 5 * 2
    uniques = set()
    for p in g.points:
        c = p.config
        per_step = c.train.batch_size * c.data.seq_len
        assert abs(c.train.num_steps * per_step / 96e9 - 1) < 1e-3  # the 96B-token budget
        assert (c.data.unique_tokens // per_step) * c.data.epochs >= c.train.num_steps  # enough epochs of data
        uniques.add(c.data.unique_tokens)
    assert uniques == {5e8, 1e9, 1.5e9, 1e10, 9.6e10}


def test_cpu_grid_takes_block_diffusion_uniform_and_gidd_as_more_objectives(tmp_path):
    g = grid_lib.load_grid(os.path.join(EXPERIMENTS, "cpu_grid.py"), str(tmp_path),
                           params={"objectives": "ar,mdm,block_diffusion,uniform,gidd"})
    by_budget = {}
    for p in g.points:
        by_budget.setdefault(p.config.data.unique_tokens, set()).add(p.config.objective)
    assert all(objs == {"ar", "mdm", "block_diffusion", "uniform", "gidd"} for objs in by_budget.values()) and len(by_budget) == 5
    bd = [p for p in g.points if p.config.objective == "block_diffusion"][0]
    assert bd.config.data.seq_len % bd.config.block_diffusion.block_size == 0


def test_report_compares_ar_with_every_diffusion_objective(tmp_path):
    """Five objectives at one budget: a crossover row for AR vs each of MDM, block diffusion,
    uniform and GIDD diffusion, each found at its planted epoch, and the figures drawn."""
    from dllm_jax.cli import main

    root = str(tmp_path / "runs")
    grid = np.arange(1, 33, dtype=float)
    planted = {"ar": np.minimum(0.3 + grid / 50, 0.5), "mdm": 0.25 + grid / 80, "block_diffusion": 0.3 + grid / 100,
               "uniform": 0.3 + grid / 100, "gidd": 0.25 + grid / 80}
    for objective, acc in planted.items():  # MDM passes AR at epoch 20, block diffusion at epoch 20 as well (0.5 = 0.3 + 20/100)
        loss = scaling.predict_loss(6400, grid * 6400, 1.5, 400.0, 0.35, 15.0)
        val = [{"epoch": float(e), "val_loss": float(v), "cloze_acc": float(a)} for e, v, a in zip(grid, loss, acc)]
        _fake_run(root, f"U6400_{objective}", objective, 6400, 32, val)
    out = str(tmp_path / "report")
    assert main(["report", "--root", root, "--out", out]) == 0
    summary = json.load(open(os.path.join(out, "report.json")))
    rows = {r["diffusion_objective"]: r for r in summary["crossovers"]["cloze_acc"]}
    assert set(rows) == {"mdm", "block_diffusion", "uniform", "gidd"} and all(r["ar_series"] == "ar" for r in rows.values())
    for objective in rows:  # a row per diffusion series, each crossing at its planted epoch
        assert rows[objective]["crossover_epoch"] == pytest.approx(20.0)
    assert os.path.getsize(os.path.join(out, "crossover_cloze_acc_epochs.png")) > 10_000


def test_workdir_files_cut_short_are_read_or_named(tmp_path):
    """A metrics.jsonl whose last record was cut short (disk full, killed) still reads; a damaged
    record elsewhere, or a truncated config.json, is a DataError naming the file and line."""
    from dllm_jax.errors import DataError
    from dllm_jax.metrics import read_metrics
    from dllm_jax.study.runs import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert read_metrics(str(run)) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(DataError, match=r"metrics\.jsonl:2: not a JSON record"):
        read_metrics(str(run))
    (run / "metrics.jsonl").write_text("")
    (run / "config.json").write_text('{"objective": "mdm", "train": {"lr"')
    with pytest.raises(DataError, match=r"config\.json:1: run file is not valid JSON .*truncated"):
        load_run(str(run))


def test_a_finished_point_with_another_lr_is_not_skipped(tmp_path):
    """train.lr may change on resume (recovery after a divergence) but a finished sweep point
    trained with another LR is another experiment; a HOW key (logging cadence) may differ."""
    import types

    from dllm_jax import config as C
    from dllm_jax.errors import ConfigError

    saved = C.default_config()
    saved.data.paths = "x/*.txt"
    (tmp_path / "config.json").write_text(C.to_json(saved))
    for key, value, refused in (("train.lr", 1e-4, True), ("train.log_every", 7, False), ("eval.mc_samples", 3, False)):
        cfg = C.from_json(C.to_json(saved))
        C.set_key(cfg, key, value)
        point = types.SimpleNamespace(name="p", workdir=str(tmp_path), config=cfg)
        if refused:
            with pytest.raises(ConfigError, match=rf"holds a finished run with a different config \({key}: "):
                sweep.check_finished_config(point)
        else:
            sweep.check_finished_config(point)


def test_report_names_a_run_workdir_and_an_empty_root(tmp_path):
    from dllm_jax.study.report import build_report

    run = tmp_path / "sweep" / "U8000_ar"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="one run's workdir.*its parent.*sweep"):
        build_report(str(run))
    with pytest.raises(ConfigError, match="--root is empty"):
        build_report("")


# -- up-front sweep checks, the plan, rescoring files and corpora in the report -----------

def test_sweep_checks_the_largest_budget_against_the_corpus_before_any_point(grid_file, tmp_path, capsys):
    """The corpus must hold every budget U before the first point starts: the check is exact (the
    pipeline itself takes U = the tokens left after validation and refuses one more), and the CLI
    gives one error naming the budget, the corpus size and the fix, with no point started."""
    from dllm_jax.cli import main
    from dllm_jax.data import index as index_lib
    from dllm_jax.data import store as store_lib
    from dllm_jax.data.pipeline import corpus_split
    from dllm_jax.errors import DataError

    root = tmp_path / "r"
    base = grid_lib.load_grid(grid_file, str(root)).points[0].config
    split = corpus_split(base)
    available = split["available_tokens"]
    assert 0 < available == split["corpus_tokens"] - split["val_tokens"]
    store = store_lib.TokenStore(split["store"])
    kw = dict(seed=base.seed, max_docs=0, val_tokens=base.data.val_tokens, seq_len=base.data.seq_len, global_batch=base.train.batch_size)
    index_lib.build_index(store, unique_tokens=available, **kw)
    with pytest.raises(DataError, match="tokens are available"):
        index_lib.build_index(store, unique_tokens=available + 1, **kw)
    grid_args = {u: ["--grid", f"budgets=1024,{u}", "--grid", f"tokens={4 * available}"] for u in (available, available + 1)}
    fits, over = (grid_lib.load_grid(grid_file, str(root), params=[a for a in grid_args[u] if a != "--grid"]).points for u in grid_args)
    sweep.check_corpus_budgets(fits)  # the largest budget is exactly what the corpus holds: no error
    with pytest.raises(DataError, match=rf"'U{available + 1}_(ar|mdm)' asks for data.unique_tokens={available + 1:,}"):
        sweep.check_corpus_budgets(over)
    sweep.check_corpus_budgets(over[:2])  # the U = 1024 points alone fit

    assert main(["sweep", "--config", grid_file, "--root", str(root), *grid_args[available + 1]]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "error:" in err.strip().splitlines()[-1]  # nothing after it
    for part in (f"data.unique_tokens={available + 1:,}", f"holds {split['corpus_tokens']:,} tokens",
                 f"{available:,} are left for training after the {split['val_tokens']:,} validation tokens",
                 f"2 of 4 points are over it (U{available + 1}_ar, U{available + 1}_mdm)", "No point was started",
                 f"Drop the budgets above {available:,}"):
        assert part in err, part
    assert not root.exists() or not any(root.iterdir())  # not even the U = 1024 points started, no plan written


def test_sweep_checks_every_finished_point_up_front_and_records_its_plan(grid_file, tmp_path, capsys):
    """Finished points (DONE) are checked all at once before anything runs: one error listing
    each differing point and key, exit 2, the plan left as it was; a key that does not change
    what a run learns may differ. The sweep records its grid in sweep_plan.json."""
    from dllm_jax.cli import main
    from dllm_jax.study.runs import PLAN_FILE

    root = tmp_path / "sweep"
    g = grid_lib.load_grid(grid_file, str(root))
    for p in g.points:  # finished without training: the saved config (another logging cadence) and DONE
        cfg = config_lib.from_json(config_lib.to_json(p.config))
        cfg.train.log_every = 7
        os.makedirs(p.workdir)
        with open(os.path.join(p.workdir, "config.json"), "w") as f:
            f.write(config_lib.to_json(cfg))
        open(os.path.join(p.workdir, sweep.DONE_FILE), "w").close()
    args = ["sweep", "--config", grid_file, "--root", str(root)]
    assert main(args) == 0 and "skipped (done)" in capsys.readouterr().out
    plan_path = root / PLAN_FILE
    plan = json.loads(plan_path.read_text())
    assert [(p["index"], p["name"]) for p in plan["points"]] == list(enumerate(["U1024_ar", "U1024_mdm", "U2048_ar", "U2048_mdm"]))
    assert plan["points"][3]["overrides"] == {"objective": "mdm", "data.unique_tokens": "2048", "data.epochs": "2"}
    assert plan["grid"] == os.path.abspath(grid_file)
    before = plan_path.read_text()

    os.remove(os.path.join(g.points[3].workdir, sweep.DONE_FILE))  # unfinished: not a finished point to check
    assert main(args + ["--config.train.lr=1e-4", "--grid", "budgets=1024,2048"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "error:" in err.strip().splitlines()[-1]
    # the unfinished point may resume with another LR (a recovery key), so it is not listed
    assert "3 point(s)" in err and "No point was started" in err and "U2048_mdm" not in err
    for name in ("U1024_ar", "U1024_mdm", "U2048_ar"):
        assert f"{name} (train.lr: 0.003 -> 0.0001)" in err, name
    assert plan_path.read_text() == before  # nothing written
    assert os.listdir(g.points[3].workdir) == ["config.json"]  # the unfinished point's folder untouched
    assert main(args + ["--config.model.d_model=64"]) == 2  # a change no resume allows: the unfinished point too
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "4 point(s)" in err and "U2048_mdm, unfinished (model.d_model: 32 -> 64)" in err
    with pytest.raises(ConfigError, match=r"U1024_ar \(train.lr: 0.003 -> 0.0001\)"):
        sweep.check_finished_configs(grid_lib.load_grid(grid_file, str(root), [("train.lr", "1e-4")]).points)


def test_report_lists_planned_points_that_never_started(grid_file, tmp_path):
    from dllm_jax.study.report import build_report

    root = tmp_path / "sweep"
    sweep.write_plan(grid_lib.load_grid(grid_file, str(root)))
    val = [{"epoch": float(e), "val_loss": 3.0} for e in (1, 2)]
    for name, objective in (("U1024_ar", "ar"), ("U1024_mdm", "mdm")):
        _fake_run(str(root), name, objective, 1024, 2, val)
    (root / "U2048_ar").mkdir()  # failed before training wrote its config: not a run
    summary = build_report(str(root), str(tmp_path / "out"))
    assert [p["name"] for p in summary["not_started"]] == ["U2048_ar", "U2048_mdm"] and summary["planned"] == 4
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("Not started: 2 of the 4 points the sweep planned (sweep_plan.json) have no run here: U2048_ar (objective=ar "
            "data.unique_tokens=2048 data.epochs=2), U2048_mdm (objective=mdm data.unique_tokens=2048 data.epochs=2).") in md
    empty = tmp_path / "empty"
    sweep.write_plan(grid_lib.load_grid(grid_file, str(empty)))
    with pytest.raises(ConfigError, match="its sweep plan has 4 points, none started"):
        build_report(str(empty))


def test_report_names_each_runs_corpus_and_refuses_different_corpora(tmp_path, capsys):
    from dllm_jax.cli import main
    from dllm_jax.study.report import build_report

    root = str(tmp_path / "runs")
    val = [{"epoch": float(e), "val_loss": 3.0} for e in (1, 2)]
    stats = {"data_fingerprint": "aaaa1111", "corpus_tokens": 123_456, "documents": 40}
    _fake_run(root, "U6400_ar", "ar", 6400, 2, val, data_paths="/data/a.txt", data_stats=stats)
    _fake_run(root, "U6400_mdm", "mdm", 6400, 2, val, data_paths="/moved/a.txt", data_stats=stats)  # same content, moved
    summary = build_report(root, str(tmp_path / "out"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert ("Corpus of all 2 runs: data.paths='/data/a.txt' and data.paths='/moved/a.txt' (token store fingerprint aaaa1111, "
            "123,456 tokens in 40 documents).") in md
    assert {r["name"]: r["data_fingerprint"] for r in summary["runs"]} == {"U6400_ar": "aaaa1111", "U6400_mdm": "aaaa1111"}
    assert summary["corpus_warnings"] == []
    # a run without data_stats.json at a path no other run used: a warning, named in the report
    _fake_run(root, "U12800_ar", "ar", 12800, 2, val, data_paths="/data/b.txt")
    summary = build_report(root, str(tmp_path / "out2"))
    (warning,) = summary["corpus_warnings"]
    assert "U12800_ar" in warning and "/data/b.txt" in warning and "cannot be checked" in warning
    assert "- data.paths='/data/b.txt' (fingerprint not recorded (no data_stats.json)): U12800_ar" in (tmp_path / "out2" / "report.md").read_text()
    # the same path with other content (the file was edited between runs): refused
    _fake_run(root, "U12800_mdm", "mdm", 12800, 2, val, data_paths="/data/a.txt", data_stats={**stats, "data_fingerprint": "bbbb2222"})
    out3 = tmp_path / "out3"
    assert main(["report", "--root", root, "--out", str(out3)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "different corpora" in err
    assert "fingerprint aaaa1111 at data.paths='/data/a.txt', data.paths='/moved/a.txt' (U6400_ar, U6400_mdm)" in err
    assert "fingerprint bbbb2222 at data.paths='/data/a.txt' (U12800_mdm)" in err and "separate --root" in err
    assert not out3.exists() or not any(out3.iterdir())


def _cloze_file(workdir, step, acc, n=10_000, se=0.005, old_name=False, cloze=None):
    from dllm_jax.evaluation.cli import cloze_file_stem

    cloze = cloze or {"choices": 4, "length": 1, "context": "both"}
    stem = cloze_file_stem(cloze, n)
    if old_name:  # before the item count was in the name
        stem = stem.rsplit("-n", 1)[0]
    os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
    with open(os.path.join(workdir, "eval", f"{stem}_step{step}.json"), "w") as f:
        json.dump({"task": "cloze", "step": step, "cloze": cloze, "n": n, "acc": acc, "acc_stderr": se,
                   "acc_norm": acc, "acc_norm_stderr": se, "items_requested": n}, f)


def test_report_reads_cloze_rescoring_files(tmp_path, capsys):
    """--cloze-from eval replaces the training-time cloze records by the `eval --step all` files
    (old and new names; the largest item count per step; steps without a validation record
    placed by their epoch). Planted: training logged AR 0.9 > MDM 0.1 throughout; the files have
    AR = min(0.3 + e/50, 0.5), MDM = 0.25 + e/80 with SE 0.005: crossover 20 [18..22]."""
    from dllm_jax.cli import main
    from dllm_jax.study.report import build_report

    root = str(tmp_path / "runs")
    planted = {"ar": lambda e: min(0.3 + e / 50, 0.5), "mdm": lambda e: 0.25 + e / 80}
    for objective, acc in planted.items():
        val = [{"epoch": float(e), "val_loss": 3.0, "cloze_acc": 0.9 if objective == "ar" else 0.1, "cloze_acc_stderr": 0.01,
                "cloze_n": 2500} for e in range(1, 32)]  # epochs 1..31 have a validation record; 32 only a rescoring file
        _fake_run(root, f"U6400_{objective}", objective, 6400, 32, val)
        wd = os.path.join(root, f"U6400_{objective}")
        for e in range(1, 33):  # 100 steps per epoch
            _cloze_file(wd, 100 * e, acc(e), old_name=e % 2 == 0)
            _cloze_file(wd, 100 * e, 0.0, n=100)  # fewer items at the same step: not used
    train = build_report(root, str(tmp_path / "train"))
    (row,) = train["crossovers"]["cloze_acc"]
    assert row["crossover"] == "ar ahead at the end" and train["cloze_from"] == "train"
    assert "Some runs also have cloze rescoring files (cloze-len1-both)" in (tmp_path / "train" / "report.md").read_text()

    assert main(["report", "--root", root, "--out", str(tmp_path / "eval"), "--cloze-from", "eval"]) == 0
    summary = json.load(open(tmp_path / "eval" / "report.json"))
    (row,) = summary["crossovers"]["cloze_acc"]
    assert row["crossover_epoch"] == pytest.approx(20.0) and (row["crossover_low"], row["crossover_high"]) == (18.0, 22.0)
    assert row["mdm_best"] == [0.65, 32.0] and row["mdm_best_stderr"] == 0.005  # epoch 32: from its file alone
    assert summary["cloze_task"].startswith("4-way two-sided cloze")
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "rescoring files in each run's eval/ folder (--cloze-from eval)" in md
    assert {r["name"]: r["final"]["val_loss"] for r in summary["runs"]} == {"U6400_ar": 3.0, "U6400_mdm": 3.0}

    # a second task in one run: refused unless one is picked
    _cloze_file(os.path.join(root, "U6400_ar"), 100, 0.3, cloze={"choices": 4, "length": 1, "context": "left"})
    assert main(["report", "--root", root, "--out", str(tmp_path / "x"), "--cloze-from", "eval"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "2 cloze tasks" in err
    assert "cloze-len1 (U6400_ar); cloze-len1-both (U6400_ar, U6400_mdm)" in err and "--cloze-from eval:cloze-len1" in err
    picked = build_report(root, str(tmp_path / "picked"), cloze_from="eval:cloze-len1-both")
    assert picked["crossovers"]["cloze_acc"][0]["crossover_epoch"] == pytest.approx(20.0)
    for bad, message in (("eval:cloze-len5", "no run has cloze-len5 files; the runs have: cloze-len1, cloze-len1-both"),
                         ("evaluation", "must be 'train'")):
        with pytest.raises(ConfigError, match=message):
            build_report(root, str(tmp_path / "bad"), cloze_from=bad)
    bare = str(tmp_path / "bare")
    _fake_run(bare, "U6400_ar", "ar", 6400, 2, [{"epoch": 1.0, "val_loss": 3.0}])
    with pytest.raises(ConfigError, match="no run has cloze rescoring files"):
        build_report(bare, str(tmp_path / "bad"), cloze_from="eval")


def test_sweep_checks_warmup_against_every_point_before_any(grid_file, tmp_path, capsys):
    """A warmup not shorter than a point's run is refused once, up front, for all such points
    (train would refuse each after preparing its data); the steps are those build_dataset derives."""
    from dllm_jax.cli import main
    from dllm_jax.data.pipeline import build_dataset

    root = tmp_path / "r"
    points = grid_lib.load_grid(grid_file, str(root)).points
    assert sweep.point_steps(points[0].config) == build_dataset(points[0].config, None).stats["num_steps"]
    steps = min(sweep.point_steps(p.config) for p in points)
    assert main(["sweep", "--config", grid_file, "--root", str(root), f"--config.train.warmup_steps={steps}"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "error:" in err.strip().splitlines()[-1]
    assert f"train.warmup_steps={steps} is not shorter than the run of" in err and "No point was started" in err
    assert not root.exists() or not any(root.iterdir())
