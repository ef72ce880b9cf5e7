"""Masked-input regularisation (MIR, Xu et al. arXiv:2606.06888, dc_pretrain) for the AR objective:
the masked copy, the loss against a hand-computed case, rate 0 against the clean loss, the train
step (sharded, accumulated), FLOPs and config errors."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from dllm_jax import config as C
from dllm_jax import flops, objectives, optim, sharding, train_step
from dllm_jax.errors import ConfigError
from dllm_jax.models import ModelConfig

IDS = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=7)  # real vocab: ids 0..6


def _ar(**overrides):
    return objectives.by_name("ar", **overrides)


@dataclasses.dataclass
class _StubModel:
    """logits: an input real token x puts weight 6 on x + 1 (mod 7), so p(x + 1) = 1/2;
    an input [MASK] gives uniform logits, p = 1/7 for every real token."""

    cfg: ModelConfig = dataclasses.field(default_factory=lambda: ModelConfig(vocab_size=8, d_model=8, n_layers=1, n_heads=1))

    def apply(self, variables, inputs, causal=True, segment_ids=None, **kwargs):
        assert causal and inputs.ndim == 2
        nxt = jax.nn.one_hot((inputs + 1) % 7, 8) * math.log(6.0)
        return jnp.where((inputs < 7)[..., None], nxt, 0.0)


def _metrics(obj, prep, model=None, params=None, chunk=0):
    model = model or _StubModel()
    ce, _ = jax.jit(lambda p, b: train_step.forward_ce(model, p, b, objective=obj, vocab_limit=IDS.mask_id, loss_chunk=chunk))(
        params or {}, prep)
    sums = obj.metrics_from_ce(ce, prep)
    out = {k: float(v) for k, v in obj.finalize(dict(sums, denom=prep.denom)).items()}
    return out, float(sums["loss_sum"] / prep.denom)


def test_masked_copy_and_loss_by_hand():
    w = 0.4
    obj = _ar(**{"ar.mir_weight": w, "ar.mir_rate": 1.0, "ar.mir_rate_min": 1.0, "ar.mir_prefix": 2})
    assert obj.train_metrics == ("loss", "ce", "mir_loss")
    tokens = jnp.array([[1, 2, 3, 4, 5, 6], [1, 2, 3, 0, 0, 0]])  # row 1 ends in padding
    prep = obj.prepare_fn(IDS, train=True)(tokens, jax.random.key(0))
    # rate 1: every real input from position 2 on is [MASK]; padding and the prefix stay; targets unchanged
    np.testing.assert_array_equal(prep.inputs[:, 0], tokens)
    np.testing.assert_array_equal(prep.inputs[:, 1], [[1, 2, 7, 7, 7, 7], [1, 2, 7, 0, 0, 0]])
    np.testing.assert_array_equal(prep.targets[:, :6], prep.targets[:, 6:])
    np.testing.assert_array_equal(prep.targets[:, :6], [[2, 3, 4, 5, 6, 0], [2, 3, 0, 0, 0, 0]])
    out, objective_value = _metrics(obj, prep)
    # clean: all 7 targets follow x -> x + 1: -log(1/2) each. Masked copy: row 0 predicts from
    # inputs 1, 2 (log 2) then from [MASK] (log 7, three targets); row 1 from 1, 2 only
    mir = (4 * math.log(2) + 3 * math.log(7)) / 7
    assert out["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert out["ce"] == pytest.approx(math.log(2), rel=1e-6)
    assert out["mir_loss"] == pytest.approx(mir, rel=1e-6)
    assert objective_value == pytest.approx(math.log(2) + w * mir, rel=1e-6)  # dc_pretrain: ntp + w * aux, not normalised
    # evaluation never sees the copy: the clean batch of plain AR
    ev = obj.prepare_fn(IDS, train=False)(tokens, jax.random.key(0))
    plain = objectives.prepare_ar(tokens, None, IDS)
    for a, b in zip(jax.tree.leaves(ev), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(a, b)


def test_rates_are_drawn_per_row_in_the_range_and_prefix_is_never_masked():
    obj = _ar(**{"ar.mir_weight": 1.0, "ar.mir_rate": 0.5, "ar.mir_rate_min": 0.1, "ar.mir_prefix": 8})
    tokens = jnp.tile(jnp.arange(64)[None] % 6 + 1, (256, 1))
    prep = obj.prepare_fn(IDS)(tokens, jax.random.key(3))
    masked = np.asarray(prep.inputs[:, 1] == IDS.mask_id)
    assert not masked[:, :8].any()
    frac = masked[:, 8:].mean(axis=1)  # per-row realised rate: spread over [0.1, 0.5]
    assert 0.25 < frac.mean() < 0.35 and frac.min() > 0.0 and frac.max() < 0.7 and frac.std() > 0.08
    assert np.asarray(prep.extras["mir_masked"], bool).tolist() == masked.tolist()
    # the copy is independent of the clean pass's input masking (another stream of the step key)
    both = _ar(**{"ar.mir_weight": 1.0, "ar.input_mask_rate": 0.5}).prepare_fn(IDS)(tokens, jax.random.key(3))
    assert float(jnp.mean((both.inputs[:, 0] == 7) == (both.inputs[:, 1] == 7))) < 0.8


@pytest.fixture(scope="module")
def tiny():
    model = train_step.build_model(_ar(**{"model.d_model": 32, "model.n_layers": 2, "model.n_heads": 2, "model.d_ff": 64,
                                          "model.vocab_multiple": 8}).config, 7)
    params = jax.jit(lambda k: nn.meta.unbox(model.init(k, jnp.zeros((1, 12), jnp.int32), causal=False)["params"]))(jax.random.key(0))
    return model, params


def test_rate_zero_aux_equals_the_clean_loss_and_a_real_copy_is_two_separate_passes(tiny):
    model, params = tiny
    tokens = jnp.asarray(np.random.RandomState(0).randint(1, 7, (4, 12)))
    zero = _ar(**{"ar.mir_weight": 0.4, "ar.mir_rate": 0.0})
    prep = zero.prepare_fn(IDS)(tokens, jax.random.key(1))
    out, objective_value = _metrics(zero, prep, model, params)
    assert out["mir_loss"] == pytest.approx(out["loss"], rel=1e-6)
    assert objective_value == pytest.approx(1.4 * out["loss"], rel=1e-6)
    # a real rate: the copy's CE is that of the model run on the copy alone (no leak between copies)
    obj = _ar(**{"ar.mir_weight": 0.4, "ar.mir_rate": 0.6, "ar.mir_prefix": 1})
    prep = obj.prepare_fn(IDS)(tokens, jax.random.key(1))
    out, _ = _metrics(obj, prep, model, params)

    def mean_ce(inputs):
        logits = jax.jit(lambda p, x: model.apply({"params": p}, x, causal=True))(params, inputs)
        ce = objectives.token_cross_entropy(logits, prep.targets[:, :12], IDS.mask_id)
        return float(jnp.sum(ce * prep.weights) / jnp.sum(prep.weights))

    assert int(jnp.sum(prep.inputs[:, 1] == IDS.mask_id)) > 5
    assert out["loss"] == pytest.approx(mean_ce(tokens), rel=1e-5)
    assert out["mir_loss"] == pytest.approx(mean_ce(prep.inputs[:, 1]), rel=1e-5)
    assert out["mir_loss"] > out["loss"] + 0.01
    # the chunked loss (no [B, 2L, V] logits) reads the two copies the same way
    chunked, _ = _metrics(obj, prep, model, params, chunk=5)
    assert chunked["loss"] == pytest.approx(out["loss"], rel=1e-5) and chunked["mir_loss"] == pytest.approx(out["mir_loss"], rel=1e-5)


def _step_losses(mesh_sizes, accum, **overrides):
    cfg = C.default_config()
    cfg.objective = "ar"
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.d_ff = 32, 2, 4, 64
    cfg.train.batch_size, cfg.train.grad_accum, cfg.train.warmup_steps = 8, accum, 0
    cfg.data.seq_len = 16
    cfg.data.document_attention = True
    for k, v in overrides.items():
        C.set_key(cfg, k, v)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_sizes
    mesh = sharding.make_mesh(dict(cfg.mesh), jax.devices()[: int(np.prod(mesh_sizes))])
    ids = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=100)
    model = train_step.build_model(cfg, 100)
    tx, lr = optim.make_optimizer(cfg.train, 10), optim.lr_schedule(cfg.train, 10)
    tokens = np.random.RandomState(0).randint(2, 100, (8, 16)).astype(np.int32)
    out = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        shardings = train_step.state_shardings(model, tx, mesh, 16)
        state = train_step.init_state(model, tx, mesh, 16, 0)
        step = train_step.make_train_step(model, tx, cfg, ids, mesh, shardings, lr)
        for _ in range(2):
            state, m = step(state, sharding.global_batch(mesh, tokens))
            out.append((float(m["loss"]), float(m["mir_loss"])))
    return np.array(out)


def test_train_step_sharded_and_accumulated_equals_single_device():
    mir = {"ar.mir_weight": 0.5, "ar.mir_prefix": 2}
    one = _step_losses((1, 1, 1), 1, **mir)
    eight = _step_losses((2, 2, 2), 2, **mir)
    np.testing.assert_allclose(eight, one, rtol=2e-5)
    assert np.all(one[:, 1] > one[:, 0])  # the masked copy is harder than the clean rows


def test_flops_count_the_masked_copy_as_a_second_pass():
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, d_ff=64)
    plain, mir = _ar(), _ar(**{"ar.mir_weight": 0.4})
    assert plain.network_copies == 1 and mir.network_copies == 2
    assert plain.train_flops_per_token(cfg, 16) == flops.train_flops_per_token(cfg, 16)
    assert mir.train_flops_per_token(cfg, 16) == 2 * flops.train_flops_per_token(cfg, 16)
    # the attention term (what a fused kernel does outside XLA's count): two [L, L] passes, not one over 2L
    assert mir.train_attention_flops_per_token(cfg, 16) == 2 * flops.train_attention_flops_per_token(cfg, 16)
    assert mir.network_length(16) == 16
    bd = objectives.by_name("block_diffusion", **{"block_diffusion.block_size": 4, "data.seq_len": 16})
    assert bd.train_attention_flops_per_token(cfg, 16) == flops.train_attention_flops_per_token(cfg, 16, 32)


@pytest.mark.parametrize("overrides, match", [
    ({"objective": "mdm", "ar.mir_weight": 0.4}, "ar.mir_weight=0.4 is masked-input regularisation of an AR run"),
    ({"ar.mir_weight": 0.4, "ar.mir_rate": 0.2, "ar.mir_rate_min": 0.3}, "ar.mir_rate_min=0.3 is above ar.mir_rate=0.2"),
    ({"ar.mir_weight": 0.4, "data.seq_len": 8}, "ar.mir_prefix=8 leaves no position"),
    ({"ar.mir_rate": 1.5}, r"ar.mir_rate=1.5 is out of range: it must be a finite number in \[0, 1\]"),
    ({"ar.mir_weight": -1.0}, "ar.mir_weight=-1.0 is out of range"),
])
def test_config_errors(overrides, match):
    cfg = C.default_config()
    cfg.objective = "ar"
    cfg.data.paths = "x.txt"
    for k, v in overrides.items():
        C.set_key(cfg, k, v)
    with pytest.raises(ConfigError, match=match):
        C.validate(cfg)
    # a sweep that sets MIR keys but leaves it off is fine for any objective
    ok = C.default_config()
    ok.data.paths, ok.ar.mir_rate = "x.txt", 0.2
    C.validate(ok)


def test_compile_report_counts_the_masked_copy():
    """The compiled train step (XLA's own FLOP count, layers unrolled so that nothing is a loop)
    does the work of two passes, and the report's model FLOPs say so."""
    pytest.importorskip("libtpu", reason="libtpu is not installed: TPU ahead-of-time compilation cannot run")
    from conftest import tiny_config

    from dllm_jax import aot

    cfg = tiny_config("unused/*.txt", "", "ar", model__d_model=64, model__n_layers=2, model__n_heads=4, model__d_ff=128,
                      data__seq_len=128, model__attention_impl="xla", model__scan_layers=False, ar__mir_weight=0.4)
    report = aot.compile_report(cfg, "v5e:2x2", cost_probe=False)
    model = train_step.build_model(cfg, cfg.data.vocab_size)
    assert report["network_copies"] == 2
    assert report["model_flops"] == pytest.approx(2 * flops.train_flops_per_token(model.cfg, 128) * cfg.train.batch_size * 128 / 4)
    assert 0.9 < report["xla_flops"] / report["model_flops"] < 1.6
    assert "2 passes per row (MIR's masked copy)" in aot.format_report(report)
