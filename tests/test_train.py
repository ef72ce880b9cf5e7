"""Training: sharded == single device, exact resume, restore on another mesh, preemption,
divergence, and the bad-input errors of a run."""

import functools
import json
import os
import re
import signal
import threading
import time

import jax
import numpy as np
import pytest
from conftest import tiny_config
from flax import linen as nn

from dllm_jax import config as C
from dllm_jax import objectives, optim, sharding, train_step
from dllm_jax.checkpoint import Checkpointer, load_run
from dllm_jax.errors import CheckpointError, ConfigError, TrainingDivergedError
from dllm_jax.metrics import read_metrics
from dllm_jax.train import train

IDS = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=100)


@functools.cache  # the (2,2,2) accum=1 runs serve both the sharding and the accumulation tests
def _steps(objective, mesh_sizes, accum=1, n=3):
    cfg = C.default_config()
    cfg.objective = objective
    cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads, cfg.model.d_ff = 32, 2, 4, 64
    cfg.train.batch_size, cfg.train.grad_accum, cfg.train.warmup_steps = 8, accum, 0
    cfg.data.seq_len = 16
    cfg.block_diffusion.block_size = 4
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = mesh_sizes
    mesh = sharding.make_mesh(dict(cfg.mesh), jax.devices()[: int(np.prod(mesh_sizes))])
    model = train_step.build_model(cfg, 100)
    tx, lr = optim.make_optimizer(cfg.train, 10), optim.lr_schedule(cfg.train, 10)
    tokens = np.random.RandomState(0).randint(3, 100, (8, 16)).astype(np.int32)
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        shardings = train_step.state_shardings(model, tx, mesh, 16)
        state = train_step.init_state(model, tx, mesh, 16, 0)
        step = train_step.make_train_step(model, tx, cfg, IDS, mesh, shardings, lr)
        for _ in range(n):
            state, m = step(state, sharding.global_batch(mesh, tokens))
            losses.append(float(m["loss"]))
    return np.array(losses), jax.tree.map(np.asarray, state.params), state


def _assert_params_close(a, b):
    """Adam divides by sqrt(v): where a gradient element is ~0, reduction-order noise can move
    that one parameter by up to ~lr. A real sharding bug moves many parameters, so check both
    the worst element (bounded by lr) and the mean (tight)."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=3e-3)
        assert np.abs(x - y).mean() < 1e-6


@pytest.mark.parametrize("objective", ["ar", "mdm", "block_diffusion", "uniform", "gidd"])
def test_sharded_2x2x2_equals_single_device(objective):
    l1, p1, _ = _steps(objective, (1, 1, 1))
    l8, p8, state8 = _steps(objective, (2, 2, 2))
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    _assert_params_close(p8, p1)
    # and it really was sharded: the MLP weight is split over fsdp and tensor
    spec = state8.params["layers"]["mlp"]["w_gate"].sharding.spec
    assert tuple(spec) == (None, "fsdp", "tensor")


@pytest.mark.parametrize("objective", ["mdm", "block_diffusion", "gidd"])
def test_gradient_accumulation_gives_the_same_update(objective):
    l1, p1, _ = _steps(objective, (2, 2, 2))  # accum 1: the same call (and cached result) as the sharded test's
    l2, p2, _ = _steps(objective, (2, 2, 2), 2)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    _assert_params_close(p2, p1)


def _params(workdir, mesh=None):
    return jax.tree.map(np.asarray, load_run(workdir, mesh=mesh).params)


def _train_losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(workdir) if "loss" in r]


@pytest.mark.parametrize("objective", ["mdm", "ar", "block_diffusion", "gidd"])  # gidd: mask + uniform noise, the superset of uniform
def test_resume_is_exact(tmp_path, corpus, objective):
    paths, cache = corpus
    cfg = tiny_config(paths, cache, objective, train__log_every=1, train__eval_every=0, train__checkpoint_every=100)
    full = str(tmp_path / "full")
    s = train(cfg, full)
    n = s["num_steps"]
    assert n == 16 and s["final"]["val_loss"] > 0
    parts = str(tmp_path / "parts")
    first = train(cfg, parts, stop_after=n // 2)
    assert first["interrupted"] and not os.path.exists(os.path.join(parts, "DONE"))
    assert Checkpointer(parts, read_only=True).latest_step() == n // 2
    train(cfg, parts)
    assert os.path.exists(os.path.join(parts, "DONE"))
    assert _train_losses(parts) == _train_losses(full)
    for a, b in zip(jax.tree.leaves(_params(parts)), jax.tree.leaves(_params(full))):
        np.testing.assert_array_equal(a, b)


def test_restore_onto_other_meshes_and_resume_there(tmp_path, corpus):
    paths, cache = corpus
    workdir = str(tmp_path / "run")
    cfg = tiny_config(paths, cache, "mdm", mesh__data=2, mesh__fsdp=2, mesh__tensor=2, train__eval_every=0)
    train(cfg, workdir, stop_after=8)
    ref = _params(workdir)
    for shape, n in (((1, 2, 2), 4), ((1, 1, 1), 1)):
        mesh = sharding.make_mesh(dict(zip(sharding.MESH_AXES, shape)), jax.devices()[:n])
        run = load_run(workdir, mesh=mesh)
        assert {d.id for x in jax.tree.leaves(run.params) for d in x.sharding.device_set} <= {d.id for d in jax.devices()[:n]}
        for a, b in zip(jax.tree.leaves(jax.tree.map(np.asarray, run.params)), jax.tree.leaves(ref)):
            np.testing.assert_array_equal(a, b)
    # the mesh may change between save and resume: continue training as (8, 1, 1)
    s = train(tiny_config(paths, cache, "mdm", train__eval_every=0), workdir)
    assert s["step"] == 16 and np.isfinite(s["final"]["val_loss"])


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, corpus, monkeypatch):
    from dllm_jax import metrics

    paths, cache = corpus
    workdir = str(tmp_path / "run")
    cfg = tiny_config(paths, cache, "ar", data__epochs=200, train__log_every=1, train__eval_every=0, train__checkpoint_every=10_000)
    write = metrics.MetricsWriter.write

    def write_then_sigterm(self, record, prefix=""):  # SIGTERM arrives while step 3 logs
        write(self, record, prefix)
        if record.get("step") == 3 and "loss" in record:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(metrics.MetricsWriter, "write", write_then_sigterm)
    summary = train(cfg, workdir)
    # the signal is read at the next step boundary: step 4 is checkpointed and the run stops
    assert summary.get("interrupted") and summary["step"] == 4 and summary["num_steps"] > 4
    ckpt = Checkpointer(workdir, read_only=True)
    assert ckpt.all_steps() == [4]
    assert not os.path.exists(os.path.join(workdir, "DONE"))
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_nan_loss_stops_with_a_clear_message_and_the_advice_works(tmp_path, corpus):
    paths, cache = corpus
    workdir = str(tmp_path / "run")
    cfg = lambda **kw: tiny_config(paths, cache, "mdm", train__eval_every=0, train__log_every=1, **kw)  # noqa: E731
    train(cfg(), workdir, stop_after=8)  # a good checkpoint at step 8
    # resumed with an absurd LR (allowed: train.lr is a recovery key), it diverges
    with pytest.raises(TrainingDivergedError, match=r"diverged at step (9|10|11): loss=.*grad norm=.*last good checkpoint is step 8 .*"
                                                   r"Lower train\.lr \(now 1e\+30\) or raise train\.warmup_steps, then rerun"):
        train(cfg(train__lr=1e30, train__clip_norm=1e30), workdir)
    assert Checkpointer(workdir, read_only=True).latest_step() == 8
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(workdir)))
    # the advice: lower train.lr (and raise warmup) and rerun: it resumes from step 8 and finishes
    s = train(cfg(train__lr=1e-3, train__warmup_steps=4), workdir)
    assert s["step"] == 16 and np.isfinite(s["final"]["val_loss"])
    assert [r["step"] for r in read_metrics(workdir) if "loss" in r][-8:] == list(range(9, 17))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["train"]["lr"] == 1e-3  # the workdir records the values now in use


@pytest.mark.parametrize("key", sorted(k for k in C.flatten(C.default_config().to_dict())))
def test_resume_changeable_is_decided_once_in_the_schema(key):
    from dllm_jax.evaluation.cli import _check_overrides
    from dllm_jax.study import runs
    from dllm_jax.train import check_resume_compatible

    saved = C.default_config()
    saved.data.paths = "x/*.txt"
    new = C.default_config()
    new.data.paths = "x/*.txt"
    current = C.flatten(new.to_dict())[key]
    changed = {bool: lambda v: not v, int: lambda v: v + 1, float: lambda v: v * 0.5 + 0.25 if v != 0.5 else 0.375, str: lambda v: v + "_"}[type(current)](current)
    C.set_key(new, key, changed)
    if C.resume_changeable(key):
        check_resume_compatible(saved.to_dict(), new)
    else:
        with pytest.raises(ConfigError, match=rf"different config \({re.escape(key)}: "):
            check_resume_compatible(saved.to_dict(), new)
    if C.how_key(key):
        _check_overrides([(key, str(changed))])
    else:
        with pytest.raises(ConfigError, match="cannot change at evaluation"):
            _check_overrides([(key, str(changed))])
    r1 = runs.Run("a", "", C.flatten(saved.to_dict()), {}, [], [], True)
    r2 = runs.Run("b", "", C.flatten(new.to_dict()), {}, [], [], True)
    runs.assign_series([r1, r2])
    # the objective leads every series; ensemble members (REPLICATE_KEYS) share their series
    names_series = key == "objective" or (key not in runs._NOT_SERIES and key not in runs.REPLICATE_KEYS
                                          and not C.how_key(key))
    assert (r1.series != r2.series) == names_series


def test_mesh_that_does_not_divide_the_devices_is_a_clear_error(tmp_path, corpus):
    paths, cache = corpus
    with pytest.raises(ConfigError, match=r"mesh .* needs 9 devices but 8 are available"):
        train(tiny_config(paths, cache, "ar", mesh__data=3, mesh__fsdp=3), str(tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"does not divide the 8 available"):
        train(tiny_config(paths, cache, "ar", mesh__fsdp=3), str(tmp_path / "run2"))


def test_resume_with_a_different_experiment_is_refused(tmp_path, corpus):
    paths, cache = corpus
    workdir = str(tmp_path / "run")
    train(tiny_config(paths, cache, "mdm", train__eval_every=0), workdir, stop_after=2)
    with pytest.raises(ConfigError, match=r"different config \(objective: 'mdm' -> 'ar'"):
        train(tiny_config(paths, cache, "ar", train__eval_every=0), workdir)


def test_resume_with_another_tokenizer_is_refused(tmp_path, corpus):
    from dllm_jax.data.tokenizer import train_tokenizer

    paths, cache = corpus
    workdir = str(tmp_path / "run")
    train(tiny_config(paths, cache, "mdm", train__eval_every=0), workdir, stop_after=2)
    other = str(tmp_path / "other.model")
    train_tokenizer(["completely different text " * 50, "with other words entirely"] * 20, 300, other)
    with pytest.raises(ConfigError, match="tokenizer mismatch"):
        train(tiny_config(paths, cache, "mdm", train__eval_every=0, data__tokenizer=other), workdir)


def test_load_run_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints"):
        load_run(str(tmp_path))


def test_metrics_records_carry_the_public_fields(trained_runs):
    for objective, workdir in trained_runs.items():
        records = read_metrics(workdir)
        train_recs = [r for r in records if "loss" in r]
        val_recs = [r for r in records if "val_loss" in r]
        assert train_recs and val_recs
        assert all({"step", "loss", "tokens_per_sec", "epoch", "step_seconds", "tflops_per_chip", "compile_seconds",
                    "eval_seconds", "checkpoint_seconds", "train_seconds_total"} <= set(r) for r in train_recs)
        assert all({"step", "val_loss"} <= set(r) for r in val_recs)
        assert train_recs[-1]["epoch"] == pytest.approx(4.0)
        with open(os.path.join(workdir, "config.json")) as f:
            assert json.load(f)["objective"] == objective
        # both runs learn something: last val loss below the first
        assert val_recs[-1]["val_loss"] < val_recs[0]["val_loss"]


def _truncate_largest_state_file(step_dir):
    """Damage a checkpoint as a full disk or a killed copy does: cut its array data files
    (state/**/d/*) to half their size. Returns the largest one."""
    files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs if os.path.basename(d) == "d"]
    assert files
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    return max(files, key=os.path.getsize)


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, corpus, capsys):
    paths, cache = corpus
    workdir = str(tmp_path / "run")
    cfg = lambda: tiny_config(paths, cache, "mdm", train__eval_every=0, train__checkpoint_every=4)  # noqa: E731 - 16 steps
    train(cfg(), workdir, stop_after=12)  # keeps checkpoints 8 and 12
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert sorted(map(int, os.listdir(ckpt_dir))) == [8, 12]
    damaged = _truncate_largest_state_file(os.path.join(ckpt_dir, "12"))
    capsys.readouterr()
    s = train(cfg(), workdir)
    out = capsys.readouterr().out
    assert f"checkpoint 12 in {ckpt_dir} cannot be read" in out and "Resuming from step 8" in out
    assert s["step"] == 16 and np.isfinite(s["final"]["val_loss"])
    assert [r["step"] for r in read_metrics(workdir) if "loss" in r][-3:] == [8, 12, 16]  # 9..12 trained again
    kept = os.path.join(workdir, "checkpoints_unreadable", "12")
    assert f"kept, not deleted, in {os.path.dirname(kept)}" in out
    assert os.path.exists(damaged.replace(os.path.join(ckpt_dir, "12"), kept))  # moved aside, never deleted
    assert Checkpointer(workdir, read_only=True).all_steps() == [12, 16]  # 12 saved again by the resumed run
    # no readable checkpoint at all: say what to remove, delete nothing
    damaged = [_truncate_largest_state_file(os.path.join(ckpt_dir, str(step))) for step in (12, 16)]
    folders = " ".join(os.path.join(ckpt_dir, str(step)) for step in (16, 12))
    os.remove(os.path.join(workdir, "DONE"))  # as if stopped before its end (a finished run's rerun reads no checkpoint)
    with pytest.raises(CheckpointError, match=rf"no checkpoint in .* can be read \(step 16: .*; step 12: .*\)\. Nothing was deleted.*move or remove {folders}"):
        train(cfg(), workdir)
    assert all(os.path.exists(p) for p in damaged)


def test_disk_full_while_saving_ends_with_one_line_naming_the_last_good_checkpoint(tmp_path, corpus, monkeypatch, capsys):
    import errno

    import orbax.checkpoint as ocp

    from dllm_jax.cli import main

    paths, cache = corpus
    workdir = str(tmp_path / "run")
    real_save = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step >= 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    exp = tmp_path / "exp.py"
    cfg = tiny_config(paths, cache, "ar", train__eval_every=0, train__checkpoint_every=4)
    exp.write_text(f"import json\nfrom dllm_jax.config import complete\ndef get_config():\n    return complete(json.loads({C.to_json(cfg)!r}))\n")
    capsys.readouterr()
    assert main(["train", "--config", str(exp), "--workdir", workdir]) == 2
    err = capsys.readouterr().err
    ckpt_dir = os.path.join(workdir, "checkpoints")
    lines = [line for line in err.splitlines() if line.strip()]  # progress lines come before it on stderr
    assert lines[-1].startswith("dllm-jax train: error: ") and err.count("error:") == 1 and "Traceback" not in err, err
    assert f"saving checkpoint 8 failed (OSError: [Errno {errno.ENOSPC}] No space left on device); the last good checkpoint is step 4 in {ckpt_dir}" in err

    # saves run in the background: the write of step 4 fails unseen (no finished folder) and its
    # error surfaces when step 8 starts; the message names step 4 and says nothing was saved
    def late(self, step, *args, **kwargs):
        if step >= 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        return True  # step 4's write "started" and never finished

    monkeypatch.setattr(ocp.CheckpointManager, "save", late)
    workdir2 = str(tmp_path / "run2")
    assert main(["train", "--config", str(exp), "--workdir", workdir2]) == 2
    err = capsys.readouterr().err
    assert ("saving checkpoint 4 failed (OSError: [Errno 28] No space left on device); no checkpoint was saved before it. "
            "Fix the cause (e.g. free disk space) and rerun the same command to resume (it starts again from step 0)") in err, err


def test_resume_on_moved_data_is_accepted_and_on_other_data_refused(tmp_path, corpus):
    """data.paths may change on resume only to the same content: a copy of the corpus at
    another path resumes (reusing the run's data index); another corpus is a ConfigError."""
    import glob
    import shutil

    paths, cache = corpus
    workdir = str(tmp_path / "run")
    train(tiny_config(paths, cache, "mdm", train__eval_every=0), workdir, stop_after=4)
    json.load(open(os.path.join(workdir, "data_stats.json")))["data_fingerprint"]  # recorded by the run
    index_dirs = os.listdir(os.path.join(workdir, "data_index"))
    assert len(index_dirs) == 1
    stores = sorted(os.listdir(cache))
    train(tiny_config(paths, cache, "mdm", train__eval_every=0), workdir, stop_after=2)  # a plain resume
    assert os.listdir(os.path.join(workdir, "data_index")) == index_dirs and sorted(os.listdir(cache)) == stores
    src = os.path.dirname(paths)
    other = tmp_path / "other"
    shutil.copytree(src, other)
    victim = sorted(glob.glob(str(other / "*")))[0]
    with open(victim, "a") as f:
        f.write("\n\nA paragraph that corpus A does not have.\n")
    with pytest.raises(ConfigError, match=r"resume with other data: data.paths='.*other.*' holds other content .*"
                                          r"data.paths='.*'.*use a new workdir"):
        train(tiny_config(str(other / os.path.basename(paths)), cache, "mdm", train__eval_every=0), workdir)
    moved = tmp_path / "moved"
    shutil.copytree(src, moved)
    summary = train(tiny_config(str(moved / os.path.basename(paths)), cache, "mdm", train__eval_every=0), workdir)
    assert os.listdir(os.path.join(workdir, "data_index")) == index_dirs  # same content -> same index key
    assert summary["step"] == 16


def test_cudnn_attention_without_a_gpu_is_a_clear_error():
    import jax

    from dllm_jax.config import default_config
    from dllm_jax.errors import ConfigError
    from dllm_jax.train_step import build_model

    c = default_config()
    c.model.attention_impl = "cudnn"
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present: cuDNN is allowed")
    with pytest.raises(ConfigError, match="attention_impl='cudnn' needs a GPU.*'xla'"):
        build_model(c, 100)


def _variant(cfg, **overrides):
    """A copy of `cfg` with `overrides` (double underscores for nesting, as tiny_config)."""
    c = C.complete(cfg.to_dict())
    for key, value in overrides.items():
        C.set_key(c, key.replace("__", "."), value)
    return c


def test_extending_a_finished_run_equals_training_to_the_new_length_in_one_go(tmp_path, corpus, capsys):
    """Issue 27: a run finished at N steps (1 epoch) extended to 2 epochs continues with its
    optimiser state and the data of steps N+1..M that a 2-epoch run has; with a constant
    schedule the losses of those steps equal the one-go run's, bit for bit."""
    paths, cache = corpus
    cfg = tiny_config(paths, cache, "mdm", train__log_every=1, train__eval_every=0, train__checkpoint_every=100,
                      train__schedule="constant", eval__at_epoch_end=False)
    full = str(tmp_path / "full")
    assert train(cfg, full)["num_steps"] == 16
    ext = str(tmp_path / "ext")
    assert train(_variant(cfg, data__epochs=1), ext)["step"] == 8
    assert os.path.exists(os.path.join(ext, "DONE"))
    s = train(cfg, ext)  # data.epochs 1 -> 2: an extension
    assert s["step"] == 16 and not s.get("already_finished")
    assert _train_losses(ext) == _train_losses(full)
    for a, b in zip(jax.tree.leaves(_params(ext)), jax.tree.leaves(_params(full))):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(ext, "DONE")) as f:
        assert json.load(f)["step"] == 16
    # and train.num_steps (beyond data.epochs' steps: the loader reads on into a third epoch's shuffle)
    assert train(_variant(cfg, train__num_steps=20), ext)["step"] == 20
    assert [r["step"] for r in read_metrics(ext) if "loss" in r] == list(range(1, 21))
    # shorter than it was: refused, nothing written
    before = open(os.path.join(ext, "metrics.jsonl")).read()
    with pytest.raises(ConfigError, match=r"give this run 16 steps, fewer than the 20 it was started with .*extended on resume, not shortened"):
        train(_variant(cfg, train__num_steps=16), ext)
    assert open(os.path.join(ext, "metrics.jsonl")).read() == before


def test_rerunning_a_finished_run_does_nothing_but_say_so(tmp_path, corpus, capsys):
    import subprocess
    import sys

    paths, cache = corpus
    cfg = tiny_config(paths, cache, "ar", train__eval_every=0, data__epochs=1)
    workdir = str(tmp_path / "run")
    first = train(cfg, workdir)
    files = {f: open(os.path.join(workdir, f), "rb").read() for f in ("metrics.jsonl", "DONE", "config.json", "run.json")}
    capsys.readouterr()
    again = train(_variant(cfg, train__log_every=2, eval__cloze_every=4), workdir)  # HOW keys may differ: still the same run
    out = capsys.readouterr().out
    assert again["already_finished"] and again["step"] == first["step"] == 8
    assert out.count("\n") == 1 and re.fullmatch(
        rf"{re.escape(workdir)} already finished at step 8 \(DONE\); nothing to do\. .*--config\.train\.num_steps=M \(M > 8\) "
        r"or --config\.data\.epochs=E \(E > 1\)\n", out)
    assert {f: open(os.path.join(workdir, f), "rb").read() for f in files} == files  # nothing appended or rewritten
    # the command line: that line, exit status 0, no JSON summary
    cfg_file = tmp_path / "exp.py"
    cfg_file.write_text("import json\nfrom dllm_jax.config import complete\n"
                        f"def get_config():\n    return complete(json.loads({json.dumps(json.dumps(cfg.to_dict()))}))\n")
    r = subprocess.run([sys.executable, "-m", "dllm_jax", "train", "--config", str(cfg_file), "--workdir", workdir],
                       capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{workdir} already finished at step 8") and r.stdout.count("\n") == 1
    assert {f: open(os.path.join(workdir, f), "rb").read() for f in files} == files


def test_extension_warns_when_the_schedule_of_the_new_total_moves_the_lr(tmp_path, corpus, caplog):
    paths, cache = corpus
    cfg = tiny_config(paths, cache, "ar", train__eval_every=0, data__epochs=1, train__schedule="cosine", train__min_lr_ratio=0.1)
    workdir = str(tmp_path / "run")
    train(cfg, workdir)  # cosine decayed to ~0.1 lr at step 8
    with caplog.at_level("WARNING", logger="dllm_jax"):
        train(_variant(cfg, train__num_steps=32), workdir)
    warned = [r.getMessage() for r in caplog.records if "extending from 8 to 32 steps" in r.getMessage()]
    assert len(warned) == 1 and "'cosine' schedule of 32 steps" in warned[0]
    m = re.search(r"gives LR ([\d.e-]+) at step 9, where the run's last step used ([\d.e-]+)", warned[0])
    lr_new = float(optim.lr_schedule(cfg.train, 32)(8))
    lr_old = float(optim.lr_schedule(cfg.train, 8)(7))
    assert m and float(m.group(1)) == pytest.approx(lr_new, rel=1e-2) and float(m.group(2)) == pytest.approx(lr_old, rel=1e-2)
    assert lr_new / lr_old > 2


def test_demo_hints_name_a_real_extension_and_how_to_get_tensorboard(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("dllm_demo", os.path.join(os.path.dirname(__file__), "..", "scripts", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    cmd = demo.extend_command("experiments/tiny.py", "runs/demo/mdm", 195, ["--config.train.num_steps=195", "--config.seed=1"])
    assert cmd == (".venv/bin/dllm-jax train --config experiments/tiny.py "
                   "--workdir runs/demo/mdm --config.objective=mdm --config.seed=1 --config.train.num_steps=390")
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real_find(name, *a))
    assert demo.tensorboard_hint("/r") == "pip install -e '.[tensorboard]' (not installed), then tensorboard --logdir /r"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert demo.tensorboard_hint("/r") == "tensorboard --logdir /r"
