"""`dllm-jax compile`: the real train step compiled for a TPU topology on this CPU host (libtpu)."""

import json

import pytest

from conftest import tiny_config

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install libtpu) : TPU ahead-of-time compilation cannot run")

from dllm_jax import aot, flops  # noqa: E402
from dllm_jax.train_step import build_model  # noqa: E402

TOPOLOGY = "v5e:2x2"  # 4 TPU v5e chips, 16 GiB HBM each


def _config(**overrides):
    # XLA attention: XLA's cost model does not see the FLOPs inside the Pallas splash kernel ('auto' on TPU)
    base = dict(model__d_model=64, model__n_layers=3, model__n_heads=4, model__d_ff=128, data__seq_len=128, mesh__data=-1,
                model__attention_impl="xla")
    return tiny_config("unused/*.txt", "", "mdm", **{**base, **overrides})


@pytest.fixture(scope="module")
def report():
    return aot.compile_report(_config(), TOPOLOGY)


def test_report_memory_flops_and_fit(report):
    cfg = _config()
    model = build_model(cfg, cfg.data.vocab_size)
    assert report["devices"] == 4 and report["device_kind"] == "TPU v5 lite"
    assert report["mesh"] == {"data": 4, "fsdp": 1, "expert": 1, "tensor": 1}
    b = report["bytes"]
    assert b["params"] == report["params"] * 4  # float32 parameters, replicated over the data axis
    assert b["opt_state"] == pytest.approx(2 * b["params"], rel=0.01)  # Adam's two moments (+ counters)
    assert b["aliased"] > 0  # the state is donated
    assert b["total"] == b["arguments"] + b["outputs"] - b["aliased"] + b["temp"] + b["code"]
    assert report["hbm_bytes"] == 16 * 1024**3 and report["fits"] is True
    tokens_per_chip = cfg.train.batch_size * cfg.data.seq_len / 4
    assert report["model_flops"] == pytest.approx(flops.train_flops_per_token(model.cfg, 128) * tokens_per_chip)
    # the scanned step counts one layer; the 2-layer probe restores a whole step's cost
    assert report["cost_extrapolated_from_layer_probe"]
    assert 0.9 < report["xla_flops"] / report["model_flops"] < 1.6
    assert report["xla_seconds"] > 0 and 0 < report["mfu"] < 1
    text = aot.format_report(report)
    assert "FITS" in text and "optimizer state" in text and "estimated MFU" in text


def test_remat_shows_in_compiled_memory_and_a_traced_mask_reports_xla_attention(report):
    """(One compile for two checks.) remat=full saves activation memory. With DiffuLLaMA's
    annealing the step's mask is random per step, so 'auto' cannot use the splash kernel on TPU:
    the model falls back to XLA attention, and the report says so and adds no kernel FLOPs."""
    anneal = dict(model__attention_impl="auto", mdm__anneal_steps=4)
    full = aot.compile_report(_config(model__remat="full", **anneal), TOPOLOGY, cost_probe=False)
    none = aot.compile_report(_config(model__remat="none", **anneal), TOPOLOGY, cost_probe=False)
    # recomputing saves activation memory (same program otherwise: the per-step anneal mask is
    # temp memory of its own, so comparing against the fixture's mask-free step would mix the two)
    assert full["bytes"]["temp"] < none["bytes"]["temp"]
    assert full["xla_flops"] is None  # no probe: one layer's count is not reported as a step's
    assert full["attention_impl"] == "xla" and full["kernel_attention_flops"] == 0


def test_auto_attention_compiles_the_splash_kernel_for_tpu_and_counts_its_flops(report):
    """On a CPU host, 'auto' still resolves to splash for TPU devices, and XLA:TPU compiles it.
    XLA's cost analysis sees no FLOPs inside the Pallas kernel, so the report adds the model
    count's attention term, exactly, and only with splash: then XLA's count is close to the
    XLA-attention program's again (without the term it falls short by about the attention work)."""
    cfg = _config(model__attention_impl="auto")
    splash = aot.compile_report(cfg, TOPOLOGY)
    assert report["attention_impl"] == "xla" and splash["attention_impl"] == "splash"
    assert splash["fits"] is True and "attention=splash" in aot.format_report(splash)
    model = build_model(cfg, cfg.data.vocab_size)
    attention = flops.train_attention_flops_per_token(model.cfg, 128) * cfg.train.batch_size * 128 / 4
    assert attention == 3 * 4 * 3 * 4 * 16 * 128 * cfg.train.batch_size * 128 / 4  # 3 x 4 L n_layers heads head_dim per token
    assert report["kernel_attention_flops"] == 0 and splash["kernel_attention_flops"] == attention
    assert splash["xla_flops"] == pytest.approx(report["xla_flops"], rel=0.1)
    assert splash["xla_flops"] - attention < 0.85 * report["xla_flops"]
    assert splash["mfu"] == pytest.approx(splash["model_flops"] / (splash["xla_seconds"] * splash["peak_flops"]))
    text = aot.format_report(splash)
    assert "attention in the Pallas kernel, counted analytically" in text and "+ the kernel's attention FLOPs at peak" in text
    assert "counted analytically" not in aot.format_report(report)


def test_impossible_sharding_and_unknown_topology_are_clear_errors():
    with pytest.raises(aot.CompileError, match=r"size 4, which is split 8 ways over mesh.tensor=8"):
        aot.compile_report(_config(mesh__data=1, mesh__tensor=8), "v5e:2x4")  # 4 heads over 8 tensor devices
    with pytest.raises(aot.CompileError, match="'v9:2x2' is not a TPU topology"):
        aot.compile_report(_config(), "v9:2x2")


def test_cli_exit_codes_and_json(report, tmp_path, monkeypatch, capsys):
    from dllm_jax.cli import main

    config_file = tmp_path / "cfg.py"
    config_file.write_text(f"from dllm_jax.config import complete\ndef get_config():\n    return complete({_config().to_dict()!r})\n")
    # over HBM: the report says so and the command exits 1 (the compile itself is the fixture's)
    over = dict(report, fits=False, hbm_bytes=report["bytes"]["total"] / 2)
    monkeypatch.setattr(aot, "compile_report", lambda *a, **k: over)
    out_json = tmp_path / "r.json"
    assert main(["compile", "--config", str(config_file), "--topology", TOPOLOGY, "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT (200%)" in out and "does not fit: Try:" in out
    assert json.loads(out_json.read_text())["fits"] is False
    monkeypatch.undo()
    # a bad topology: a one-line error and exit 2, no traceback
    assert main(["compile", "--config", str(config_file), "--topology", "v5p-128"]) == 2
    err = capsys.readouterr().err
    assert "is not a TPU topology libtpu knows" in err and "Traceback" not in err


def test_block_diffusion_step_compiles_with_its_own_flops():
    """The 2L-token block-diffusion step compiles for the topology with 'auto' attention, i.e.
    the splash kernel with BD3-LM's static 2L x 2L block mask (forward and backward Mosaic
    kernels); its model FLOPs are the objective's (2 halves through the network), and XLA's
    count plus the kernel's analytic attention (2L queries per L tokens over 2L keys) agrees."""
    cfg = _config(block_diffusion__block_size=16, model__attention_impl="auto")
    cfg.objective = "block_diffusion"
    bd = aot.compile_report(cfg, TOPOLOGY)
    model = build_model(cfg, cfg.data.vocab_size)
    tokens_per_chip = cfg.train.batch_size * cfg.data.seq_len / 4
    assert bd["objective"] == "block_diffusion" and bd["fits"] is True and bd["attention_impl"] == "splash"
    assert bd["model_flops"] == pytest.approx(flops.block_diffusion_train_flops_per_token(model.cfg, 128) * tokens_per_chip)
    assert bd["kernel_attention_flops"] == flops.train_attention_flops_per_token(model.cfg, 128, 256) * tokens_per_chip
    assert 0.9 < bd["xla_flops"] / bd["model_flops"] < 1.6
    assert (bd["xla_flops"] - bd["kernel_attention_flops"]) / bd["model_flops"] < 0.8  # what XLA alone sees


@pytest.mark.parametrize("objective", ["uniform", "gidd"])
def test_uniform_and_gidd_steps_compile_with_the_chunked_loss(objective):
    """Their loss reads the whole predicted distribution (KL over the vocabulary), here in
    chunks of 32 positions (a rematerialised scan); the step compiles for the topology, fits,
    and its model FLOPs are the MDM's (one pass of L tokens)."""
    cfg = _config(model__loss_chunk=32)
    cfg.objective = objective
    rep = aot.compile_report(cfg, TOPOLOGY, cost_probe=False)
    model = build_model(cfg, cfg.data.vocab_size)
    tokens_per_chip = cfg.train.batch_size * cfg.data.seq_len / 4
    assert rep["objective"] == objective and rep["fits"] is True
    assert rep["model_flops"] == pytest.approx(flops.train_flops_per_token(model.cfg, 128) * tokens_per_chip)
