"""`dllm-jax compile --num-slices`: the train step compiled for several TPU slices joined over DCN
(libtpu's multi-slice topologies), and the collectives that cross slices, read from the HLO."""

import numpy as np
import pytest

from conftest import tiny_config

pytest.importorskip("libtpu", reason="libtpu is not installed (pip install libtpu) : TPU ahead-of-time compilation cannot run")

from dllm_jax import aot, sharding  # noqa: E402

TOPOLOGY = "v5p:2x2x1"  # 4 TPU v5p chips per slice


def _config(objective="mdm", **overrides):
    # FSDP inside each slice, data parallelism across slices (the default mesh.dcn_data=-1), as the paper configs
    base = dict(model__d_model=64, model__n_layers=3, model__n_heads=4, model__d_ff=128, data__seq_len=128,
                mesh__data=1, mesh__fsdp=-1, model__attention_impl="xla", block_diffusion__block_size=16)
    return tiny_config("unused/*.txt", "", objective, **{**base, **overrides})


@pytest.fixture(scope="module")
def reports():
    return {obj: aot.compile_report(_config(obj), TOPOLOGY, num_slices=2, cost_probe=False)
            for obj in ("ar", "mdm", "block_diffusion")}


def test_hybrid_mesh_of_a_two_slice_topology_keeps_each_slice_on_its_own_data_block():
    devices = aot.topology_devices(TOPOLOGY, 2)
    assert len(devices) == 8 and sorted({d.slice_index for d in devices}) == [0, 1]
    mesh = sharding.make_mesh(dict(_config().mesh), devices)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "expert": 1, "tensor": 1}
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slices[0] == 0).all() and (slices[1] == 1).all()
    with pytest.raises(aot.CompileError, match="--num-slices 0"):
        aot.topology_devices(TOPOLOGY, 0)


def test_a_per_slice_shape_the_physical_slice_cannot_hold_is_a_config_error(monkeypatch):
    """JAX's physical layout refuses some per-slice shapes (ValueError / NotImplementedError): one
    ConfigError naming the mesh keys, not a traceback."""
    from jax.experimental import mesh_utils

    from dllm_jax.errors import ConfigError

    def refuse(*args, **kwargs):
        raise NotImplementedError("Failed to find assignment for logical_axis_index 1 of size 4")

    monkeypatch.setattr(mesh_utils, "create_hybrid_device_mesh", refuse)
    with pytest.raises(ConfigError, match=r"per slice \(over ICI\) cannot be laid out on a slice of 4 TPU v5 chips: "
                                          r"Failed to find .* Choose other mesh.data/fsdp/expert/tensor sizes"):
        sharding.make_mesh(dict(_config().mesh), aot.topology_devices(TOPOLOGY, 2))


@pytest.mark.parametrize("objective", ["ar", "mdm", "block_diffusion"])
def test_two_slices_compile_and_only_gradient_all_reduces_cross_dcn(reports, objective):
    """Data over DCN, FSDP inside the slices: the only transfers between slices are all-reduces
    (each chip sums its float32 gradient shard with the other slice: at least the parameter
    bytes per chip, at most twice that with TPU tile padding and the loss metrics)."""
    r = reports[objective]
    assert r["objective"] == objective and r["num_slices"] == 2 and r["devices"] == 8
    assert r["mesh"] == {"data": 2, "fsdp": 4, "expert": 1, "tensor": 1} and r["dcn_axes"] == {"data": 2, "fsdp": 1}
    assert r["fits"] is True and r["hbm_bytes"] == 95 * 1024**3
    dcn = r["dcn_collectives"]
    assert set(dcn["by_type"]) == {"ALL_REDUCE"} and dcn["count"] >= dcn["ops"] > 0
    assert r["bytes"]["params"] <= dcn["bytes"] < 2 * r["bytes"]["params"]
    assert dcn["unknown_trip_counts"] == 0
    text = aot.format_report(r)
    assert text.startswith(f"2 x {TOPOLOGY} (over DCN): 8 x TPU v5")
    assert f"across slices (DCN; mesh axes data over 2 slices), per chip and step: {dcn['count']} transfers" in text
    assert "note: mesh.dcn_fsdp" not in text


def test_fsdp_across_slices_is_compiled_and_reported_with_its_all_gathers(reports):
    """mesh.dcn_fsdp=2 (the decision: reported, not refused): parameters are all-gathered over
    DCN every step, and the report names the problem."""
    r = aot.compile_report(_config(mesh__dcn_data=1, mesh__dcn_fsdp=2), TOPOLOGY, num_slices=2, cost_probe=False)
    assert r["mesh"]["fsdp"] == 8 and r["dcn_axes"] == {"data": 1, "fsdp": 2}
    dcn = r["dcn_collectives"]
    assert dcn["by_type"]["ALL_GATHER"]["count"] > 0
    assert dcn["bytes"] > reports["mdm"]["dcn_collectives"]["bytes"]
    text = aot.format_report(r)
    assert "mesh axes fsdp over 2 slices" in text and "note: mesh.dcn_fsdp > 1 puts FSDP across slices" in text


def test_v6e_and_v5e_compile_two_slices_and_refuse_replicated_scanned_parameters_clearly():
    """Other generations: v6e and v5e slices compile the same way (FSDP inside). libtpu 0.0.52 cannot
    compile a multi-slice step with replicated scanned parameters on v5e/v6e (an XLA:TPU
    UNIMPLEMENTED): a CompileError that says what to change."""
    r = aot.compile_report(_config(), "v6e:2x2", num_slices=2, cost_probe=False)
    assert r["device_kind"] == "TPU v6 lite" and r["fits"] is True
    assert set(r["dcn_collectives"]["by_type"]) == {"ALL_REDUCE"}
    v5e = aot.compile_report(_config(), "v5e:2x2", num_slices=2, cost_probe=False)
    assert v5e["device_kind"] == "TPU v5 lite" and set(v5e["dcn_collectives"]["by_type"]) == {"ALL_REDUCE"}
    with pytest.raises(aot.CompileError, match=r"v5e:2x2 x 2 slices: XLA:TPU cannot compile this multi-slice step .*"
                                               r"--config.mesh.data=1 --config.mesh.fsdp=-1"):
        aot.compile_report(_config(mesh__data=-1, mesh__fsdp=1), "v5e:2x2", num_slices=2, cost_probe=False)


def test_a_bad_dcn_mesh_is_a_config_error_before_compiling():
    from dllm_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"mesh.dcn_data=3, mesh.dcn_fsdp=1: .* must equal the number of slices, 2"):
        aot.compile_report(_config(mesh__dcn_data=3), TOPOLOGY, num_slices=2, cost_probe=False)
    with pytest.raises(ConfigError, match=r"mesh.num_slices=3 but the 8 devices form 2 slice"):
        aot.compile_report(_config(mesh__num_slices=3), TOPOLOGY, num_slices=2, cost_probe=False)


HLO = """HloModule m, is_scheduled=true

%cond (p.1: (s32[])) -> pred[] {
  %p.1 = (s32[]) parameter(0)
  %c = s32[]{:T(128)} constant(5)
  %i = s32[] get-tuple-element(%p.1), index=0
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%odd_cond (p.2: (s32[])) -> pred[] {
  %p.2 = (s32[]) parameter(0)
  %n = s32[] get-tuple-element(%p.2), index=0
  ROOT %ne = pred[] compare(%n, %n), direction=NE
}

%body (p.3: (s32[])) -> (s32[]) {
  %kernel = f32[8] custom-call(%x), custom_call_target="tpu_custom_call", backend_config={"a":
}
"}
  %send.1 = (f32[8,128]{1,0:T(8,128)}, u32[]{:S(2)}, token[]) send(%x, %t), channel_id=1, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_host_transfer_rendezvous="all-gather.1_0",_xla_megascale_transfer_type="ALL_GATHER"}
  %recv.1 = (f32[8,128]{1,0}, u32[], token[]) recv(%t), channel_id=2, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_transfer_type="ALL_GATHER"}
  ROOT %r = (s32[]) tuple(%i)
}

%body2 (p.4: (s32[])) -> (s32[]) {
  %send.3 = (s8[1000]{0}, u32[], token[]) send(%x, %t), channel_id=5, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_transfer_type="ALL_TO_ALL"}
}

ENTRY %main (a: f32[]) -> f32[] {
  %w = (s32[]) while(%t0), condition=%cond, body=%body
  %w2 = (s32[]) while(%t0), condition=%odd_cond, body=%body2
  %send.2 = (bf16[4,64]{1,0}, u32[], token[]) send(%y, %t), channel_id=3, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_transfer_type="ALL_REDUCE"}
  %all-reduce.3 = f32[10]{0} all-reduce(%z), channel_id=4, replica_groups={{0,1}}, to_apply=%add
}
"""


def test_dcn_collectives_counts_each_transfer_as_often_as_it_runs():
    """By hand: the all-gather runs in a 5-trip loop (5 x 8 x 128 x 4 bytes), the all-reduce once
    (4 x 64 x 2 bytes); a loop of unknown length counts its all-to-all once and is flagged;
    receives and ICI collectives are not DCN sends; a kernel's multi-line config stays inside
    its computation."""
    got = aot.dcn_collectives(HLO)
    assert got["by_type"] == {"ALL_GATHER": {"count": 5, "bytes": 5 * 8 * 128 * 4}, "ALL_REDUCE": {"count": 1, "bytes": 512},
                              "ALL_TO_ALL": {"count": 1, "bytes": 1000}}
    assert got["count"] == 7 and got["bytes"] == 20480 + 512 + 1000 and got["ops"] == 3 and got["unknown_trip_counts"] == 1
    assert aot.dcn_collectives("HloModule empty\n") == {"count": 0, "bytes": 0, "by_type": {}, "ops": 0, "unknown_trip_counts": 0}


def test_cli_passes_num_slices(reports, tmp_path, monkeypatch, capsys):
    from dllm_jax.cli import main

    config_file = tmp_path / "cfg.py"
    config_file.write_text(f"from dllm_jax.config import complete\ndef get_config():\n    return complete({_config().to_dict()!r})\n")
    seen = {}
    monkeypatch.setattr(aot, "compile_report", lambda cfg, topology, **kw: seen.update(kw) or reports["mdm"])
    assert main(["compile", "--config", str(config_file), "--topology", TOPOLOGY, "--num-slices", "2"]) == 0
    assert seen["num_slices"] == 2 and "across slices (DCN" in capsys.readouterr().out
    monkeypatch.undo()
    assert main(["compile", "--config", str(config_file), "--topology", TOPOLOGY, "--num-slices", "0"]) == 2
    err = capsys.readouterr().err
    assert "--num-slices 0: give a number of slices >= 1" in err and "Traceback" not in err
