"""Several slices over DCN on simulated devices: the hybrid mesh of mesh.dcn_data / mesh.dcn_fsdp
(8 CPU devices as slices through mesh.num_slices), its errors, each slice's rows of the batch,
and a run saved on 2 slices that resumes on 1 with the losses of an uninterrupted run."""

import os
import types

import jax
import numpy as np
import pytest
from conftest import tiny_config

from dllm_jax import config as C
from dllm_jax import sharding
from dllm_jax.errors import ConfigError
from dllm_jax.metrics import read_metrics
from dllm_jax.train import train


def _ids(mesh):
    return np.vectorize(lambda d: d.id)(mesh.devices)


def _sizes(**kw):
    return {"data": -1, "fsdp": 1, "tensor": 1, "expert": 1, **kw}


def test_one_slice_is_the_plain_mesh_of_before():
    """The defaults (dcn_data=-1, num_slices=0) on devices without slice_index: one slice, the
    same device grid as jax.make_mesh."""
    cfg = C.default_config()
    cfg.mesh.fsdp = 2
    mesh = sharding.make_mesh(dict(cfg.mesh))
    ref = jax.make_mesh((4, 2, 1, 1), sharding.DEVICE_ORDER, devices=jax.devices())
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "expert": 1, "tensor": 1}
    np.testing.assert_array_equal(_ids(mesh), _ids(ref))


def test_dcn_data_puts_whole_slices_on_the_data_axis_and_a_contiguous_block_of_rows_on_each():
    """2 simulated slices of 4 (devices 0-3, 4-7), ICI data=2 x fsdp=2, dcn_data=2: the data axis
    is 4 long, slice-major; slice s holds batch rows [4s, 4s + 4) of 8, so a process of a slice
    reads one block (distributed.data_shard)."""
    mesh = sharding.make_mesh(_sizes(data=2, fsdp=2, dcn_data=2, num_slices=2))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "expert": 1, "tensor": 1}
    ids = _ids(mesh)[:, :, 0, 0]
    np.testing.assert_array_equal(ids, [[0, 1], [2, 3], [4, 5], [6, 7]])
    rows = sharding.batch_sharding(mesh).devices_indices_map((8, 16))
    for d, index in rows.items():
        slice_of = d.id // 4
        assert slice_of * 4 <= index[0].start < index[0].stop <= (slice_of + 1) * 4


def test_dcn_fsdp_spans_slices_along_the_fsdp_axis():
    """dcn_fsdp=2 (dcn_data=1): the fsdp axis is 2 x 2, slice-major: its first half in slice 0."""
    mesh = sharding.make_mesh(_sizes(data=2, fsdp=2, dcn_data=1, dcn_fsdp=2, num_slices=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "expert": 1, "tensor": 1}
    np.testing.assert_array_equal(_ids(mesh)[:, :, 0, 0], [[0, 1, 4, 5], [2, 3, 6, 7]])
    # -1 on dcn_fsdp fills with the slices left by dcn_data
    assert sharding.resolve_dcn_shape({"dcn_data": 1, "dcn_fsdp": -1}, 4) == {"data": 1, "fsdp": 4}
    assert sharding.resolve_dcn_shape({"dcn_data": 2, "dcn_fsdp": -1}, 4) == {"data": 2, "fsdp": 2}
    assert sharding.resolve_dcn_shape({}, 3) == {"data": 3, "fsdp": 1}


@pytest.mark.parametrize("sizes, message", [
    # a tensor (or expert) axis bigger than a slice would cross DCN: refused, naming the per-slice keys
    (_sizes(tensor=8, num_slices=2), r"the fixed axes use 8 devices, which does not divide the 4 of each of the 2 slices "
                                     r"\(mesh.data/fsdp/expert/tensor are sizes within one slice.*tensor and expert never span slices"),
    (_sizes(data=1, expert=8, num_slices=2), r"needs 8 devices but each of the 2 slices has 4"),
    # DCN sizes that do not multiply out to the slice count
    (_sizes(dcn_data=1, num_slices=2), r"mesh.dcn_data=1, mesh.dcn_fsdp=1: mesh.dcn_data \* mesh.dcn_fsdp must equal the number of slices, 2"),
    (_sizes(dcn_data=2), r"mesh.dcn_data=2, mesh.dcn_fsdp=1: .* must equal the number of slices, 1"),
    (_sizes(dcn_data=-1, dcn_fsdp=3, num_slices=2), r"mesh.dcn_data=-1, mesh.dcn_fsdp=3: .* must equal the number of slices, 2"),
    (_sizes(dcn_data=-1, dcn_fsdp=-1, num_slices=2), r"mesh.dcn_data and mesh.dcn_fsdp are both -1"),
    # a slice count that does not fit the devices
    (_sizes(num_slices=3), r"mesh.num_slices=3 does not divide the 8 devices into equal slices"),
])
def test_bad_multislice_meshes_are_one_clear_error(sizes, message):
    with pytest.raises(ConfigError, match=message):
        sharding.make_mesh(sizes)


def test_slices_come_from_slice_index_where_devices_have_one():
    """TPU devices carry slice_index: they are grouped by it (in slice order, whatever the device
    order), and a mesh.num_slices that disagrees is an error."""
    dev = [types.SimpleNamespace(id=i, slice_index=s) for i, s in enumerate([1, 0, 1, 0])]
    groups = sharding.device_slices(dev)
    assert [[d.id for d in g] for g in groups] == [[1, 3], [0, 2]]
    assert len(sharding.device_slices(dev, 2)) == 2
    with pytest.raises(ConfigError, match=r"mesh.num_slices=4 but the 4 devices form 2 slice\(s\) \(their slice_index\)"):
        sharding.device_slices(dev, 4)
    uneven = [types.SimpleNamespace(id=i, slice_index=s) for i, s in enumerate([0, 0, 0, 1])]
    with pytest.raises(ConfigError, match=r"different device counts \[3, 1\]"):
        sharding.device_slices(uneven)


def test_config_ranges_of_the_new_keys():
    for key, value, fix in (("mesh.num_slices", -1, "an integer in"), ("mesh.dcn_data", 0, "a positive integer or -1"),
                            ("mesh.dcn_fsdp", -2, "a positive integer or -1")):
        cfg = C.default_config()
        C.set_key(cfg, key, value)
        with pytest.raises(ConfigError, match=f"{key}.*{fix}"):
            C.validate(cfg)
    assert C.resume_changeable("mesh.num_slices") and C.resume_changeable("mesh.dcn_data")


def _losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(workdir) if "loss" in r]


@pytest.mark.slow  # three tiny runs: ~40 s of CPU
def test_run_on_two_slices_resumes_on_one_with_the_losses_of_an_uninterrupted_run(tmp_path, corpus, monkeypatch):
    """8 CPU devices as 2 slices of 4 (ICI data 2 x fsdp 2, DCN data 2), stopped at step 4 of 8 and
    checkpointed; resumed as 1 slice of 8 (data 4 x fsdp 2) at the same global batch: every
    logged loss and the final parameters equal those of a run on 2 slices throughout."""
    from dllm_jax.checkpoint import load_run

    paths, cache = corpus
    two = dict(mesh__data=2, mesh__fsdp=2, mesh__dcn_data=2, mesh__num_slices=2)
    one = dict(mesh__data=-1, mesh__fsdp=2)
    common = dict(train__log_every=1, train__eval_every=0, train__checkpoint_every=100, data__epochs=1, data__val_tokens=0)
    built = []
    make_mesh = sharding.make_mesh
    monkeypatch.setattr(sharding, "make_mesh", lambda sizes, devices=None: built.append(dict(sizes)) or make_mesh(sizes, devices))
    full = str(tmp_path / "full")
    s = train(tiny_config(paths, cache, "mdm", **two, **common), full)
    assert s["num_steps"] == 8 and built[-1]["num_slices"] == 2
    parts = str(tmp_path / "parts")
    train(tiny_config(paths, cache, "mdm", **two, **common), parts, stop_after=4)
    train(tiny_config(paths, cache, "mdm", **one, **common), parts)
    assert built[-1]["num_slices"] == 0 and built[-1]["dcn_data"] == -1
    assert len(_losses(full)) == 8 and _losses(parts) == _losses(full)
    for a, b in zip(jax.tree.leaves(load_run(parts).params), jax.tree.leaves(load_run(full).params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow  # a 2-process run: ~30 s of CPU
def test_two_processes_as_two_slices_each_read_their_half_of_every_batch(tmp_path, corpus):
    """2 processes of 2 CPU devices, each process one simulated slice (mesh.num_slices=2: the
    blocks of jax.devices(), which JAX orders by process), FSDP over a slice's 2 devices, data
    across the slices: each process loads only its half of every global batch (its data
    position is saved as shard i of 2), and the losses equal one process's on 8 devices."""
    from test_multihost import _launch_two, _losses as mh_losses, _wait

    from dllm_jax.data.pipeline import build_dataset

    paths, cache = corpus
    common = dict(train__num_steps=4, train__log_every=1, train__checkpoint_every=4, train__eval_every=0, data__val_tokens=0)
    cfg = tiny_config(paths, cache, "mdm", mesh__data=1, mesh__fsdp=2, mesh__dcn_data=2, mesh__num_slices=2, **common)
    build_dataset(cfg, None)  # tokenizer and token store built once, before the children read them
    config_file = tmp_path / "ms_config.py"
    config_file.write_text(f"from dllm_jax.config import complete\ndef get_config():\n    return complete({cfg.to_dict()!r})\n")
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    runs = {"two": _launch_two(str(config_file), two, str(tmp_path))}
    try:
        train(tiny_config(paths, cache, "mdm", mesh__data=-1, mesh__fsdp=2, **common), one)
    finally:
        _wait(runs, str(tmp_path))
    ref, got = mh_losses(one), mh_losses(two)
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4]
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=2e-5), step
    data_dir = os.path.join(two, "checkpoints", "4", "data")
    assert sorted(f for f in os.listdir(data_dir) if f.endswith(".json")) == ["process_0-of-2.json", "process_1-of-2.json"]
