"""The run log: step timing apart from compilation, evaluation and checkpoints (injected clock),
MFU / TFLOP/s per chip, plain progress lines off a terminal, the profiler switch, and what
the sweep and its report read from it."""

import glob
import json
import os
import shlex
import sys

import pytest
from conftest import tiny_config

from dllm_jax import config as C
from dllm_jax import flops
from dllm_jax.errors import ConfigError
from dllm_jax.metrics import StepTimer, read_metrics, resume_totals


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_step_timer_splits_steps_from_pauses():
    clock = FakeClock()
    t = StepTimer(clock)
    with t.pause("compile"):  # the first step: compiled and run
        clock.advance(30.0)
    t.count_step(timed=False)
    for _ in range(3):
        clock.advance(0.25)
        t.count_step()
    rec = t.window()
    assert rec["step_seconds"] == 0.25 and rec["window_seconds"] == 30.75 and rec["compile_seconds"] == 30.0
    assert rec["train_seconds_total"] == 0.75 and rec["eval_seconds"] == 0.0
    for _ in range(4):
        clock.advance(0.25)
        t.count_step()
    with t.pause("eval") as took:
        clock.advance(100.0)
    with t.pause("checkpoint"):
        clock.advance(7.0)
    assert took.seconds == 100.0
    rec = t.window()
    assert rec["step_seconds"] == 0.25  # evaluation and checkpoint do not slow the steps down
    assert (rec["eval_seconds"], rec["checkpoint_seconds"], rec["compile_seconds"]) == (100.0, 7.0, 0.0)
    assert rec["train_seconds_total"] == 1.75 and rec["eval_seconds_total"] == 100.0 and rec["compile_seconds_total"] == 30.0
    assert rec["wall_seconds_total"] == 30.75 + 108.0
    # ETA: this process's wall time less compilation per timed step (7 steps in 108.75 s + 1.75 s)
    assert t.eta(10) == pytest.approx((138.75 - 30.0) / 7 * 10)
    # a window with only the compiling step has no step time; a resumed timer carries the totals on
    t2 = StepTimer(clock, totals=resume_totals([{"step": 8, "loss": 1.0, **rec}, {"step": 8, "val_loss": 2.0}]))
    with t2.pause("compile"):
        clock.advance(20.0)
    t2.count_step(timed=False)
    rec2 = t2.window()
    assert "step_seconds" not in rec2 and rec2["compile_seconds_total"] == 50.0 and rec2["train_seconds_total"] == 1.75
    with pytest.raises(ValueError, match="unknown pause kind"):
        t.pause("profile")


def test_peak_table_and_mfu():
    assert flops.peak_flops_per_chip("TPU v5 lite") == 197e12 and flops.peak_flops_per_chip("TPU v5") == 459e12
    assert flops.peak_flops_per_chip("TPU v6 lite") == 918e12 and flops.peak_flops_per_chip("TPU v4") == 275e12
    assert flops.peak_flops_per_chip("NVIDIA H100 80GB HBM3") == 989.5e12
    assert flops.peak_flops_per_chip("NVIDIA H100 PCIe") == 756.5e12
    assert flops.peak_flops_per_chip("NVIDIA H200") == 989.5e12
    assert flops.peak_flops_per_chip("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops_per_chip("cpu") is None and flops.peak_flops_per_chip("NVIDIA L4") is None
    # 1e9 FLOPs/token x 2e5 tokens/s over 8 v4 chips: 25 TFLOP/s per chip = 25/275 of the peak
    u = flops.utilisation(1e9, 2e5, "TPU v4", 8)
    assert u["tflops_per_chip"] == pytest.approx(25.0) and u["mfu"] == pytest.approx(25 / 275)
    # v3 exposes 2 cores per chip: 8 devices are 4 chips
    assert flops.utilisation(1e9, 2e5, "TPU v3", 8)["mfu"] == pytest.approx(50 / 123)
    assert flops.utilisation(1e9, 2e5, "cpu", 8) == {"tflops_per_chip": pytest.approx(25.0)}  # no MFU on CPUs


def _timed_run(monkeypatch, clock):
    """Every step takes 0.5 s of the fake clock (charged where the loop builds its batch),
    every evaluation 100 s and every checkpoint save 50 s."""
    from dllm_jax import sharding
    from dllm_jax import train as train_mod
    from dllm_jax.checkpoint import Checkpointer

    global_batch, evaluate, save = sharding.global_batch, train_mod.evaluate, Checkpointer.save

    def slow_batch(*a, **k):
        clock.advance(0.5)
        return global_batch(*a, **k)

    def slow_eval(*a, **k):
        clock.advance(100.0)
        return evaluate(*a, **k)

    def slow_save(self, *a, **k):
        clock.advance(50.0)
        return save(self, *a, **k)

    monkeypatch.setattr(sharding, "global_batch", slow_batch)
    monkeypatch.setattr(train_mod, "evaluate", slow_eval)
    monkeypatch.setattr(Checkpointer, "save", slow_save)


def test_evaluation_and_checkpoints_do_not_change_tokens_per_sec(tmp_path, corpus, monkeypatch, capsys):
    from dllm_jax.train import train

    paths, cache = corpus
    clock = FakeClock()
    _timed_run(monkeypatch, clock)
    monkeypatch.setenv("DLLM_JAX_RUN_LABEL", "point 2/5 U1024_mdm")
    workdir = str(tmp_path / "run")
    # 16 steps; log every 4, evaluate and checkpoint at 8 and at the end; stopped at 12 and resumed.
    # The progress bar is asked for, but pytest's stdout is no terminal: plain lines
    cfg = tiny_config(paths, cache, "mdm", train__progress=True)
    train(cfg, workdir, stop_after=12, clock=clock)
    summary = train(cfg, workdir, clock=clock)  # resumed: compiles again
    recs = [r for r in read_metrics(workdir) if "loss" in r]
    assert [r["step"] for r in recs] == [4, 8, 12, 16]
    tokens_per_step = 8 * 32
    for r in recs:  # the same pace in every window, whatever else the window held
        assert r["step_seconds"] == 0.5 and r["tokens_per_sec"] == tokens_per_step / 0.5
    # where the time went: step 4's window holds the compiling step 1, step 12's the evaluation and
    # checkpoint at step 8, step 16's the resumed process's compiling step 13
    assert [r["compile_seconds"] for r in recs] == [0.5, 0.0, 0.0, 0.5]
    assert [(r["eval_seconds"], r["checkpoint_seconds"]) for r in recs] == [(0, 0), (0, 0), (100.0, 50.0), (0, 0)]
    assert [r["window_seconds"] for r in recs] == [2.0, 2.0, 152.0, 2.0]
    assert recs[-1]["train_seconds_total"] == 14 * 0.5 and recs[-1]["compile_seconds_total"] == 1.0
    assert recs[-1]["wall_seconds_total"] == 158.0
    # the run's totals, with the final evaluation and checkpoint (the checkpoint of the stop at step 12
    # came after the first process's last record: not counted)
    t = summary["timing"]
    assert (t["train_seconds_total"], t["compile_seconds_total"], t["eval_seconds_total"], t["checkpoint_seconds_total"]) == (7.0, 1.0, 200.0, 100.0)
    with open(os.path.join(workdir, "DONE")) as f:
        assert json.load(f)["timing"] == t
    # model TFLOP/s per chip from run.json's flops_per_token; no MFU on CPU
    with open(os.path.join(workdir, "run.json")) as f:
        fpt = json.load(f)["flops_per_token"]
    assert recs[0]["tflops_per_chip"] == pytest.approx(fpt * 512 / 8 / 1e12) and "mfu" not in recs[0]
    val = [r for r in read_metrics(workdir) if "val_loss" in r]
    assert [v["eval_seconds"] for v in val] == [100.0, 100.0]

    out, err = capsys.readouterr()
    assert "\r" not in out and "\r" not in err
    lines = [line for line in out.splitlines() if line.startswith("[point 2/5 U1024_mdm] ")]
    train_lines = [line for line in lines if " loss " in line]
    assert len(train_lines) == 4 and len([line for line in lines if "val_loss" in line]) == 2
    assert train_lines[0].startswith("[point 2/5 U1024_mdm] step 4/16 loss ")
    assert "tokens/s 512 " in train_lines[0] and "MFU" not in train_lines[0]
    assert " lr " in train_lines[0] and " elapsed " in train_lines[0] and " ETA " in train_lines[0]
    assert train_lines[-1].endswith("ETA 0:00:00")


def test_report_train_time_uses_step_times_and_reads_old_records():
    from dllm_jax.study.runs import Run

    new = [{"step": 4, "loss": 1.0, "tokens_seen": 1024, "tokens_per_sec": 512.0, "step_seconds": 0.5, "window_seconds": 2.0,
            "train_seconds_total": 1.5, "compile_seconds_total": 30.0, "eval_seconds_total": 0.0, "checkpoint_seconds_total": 0.0},
           {"step": 8, "loss": 1.0, "tokens_seen": 2048, "tokens_per_sec": 256.0, "step_seconds": 1.0, "window_seconds": 104.0,
            "train_seconds_total": 5.5, "compile_seconds_total": 30.0, "eval_seconds_total": 100.0, "checkpoint_seconds_total": 0.0}]
    run = Run("a", "", {}, {}, [], new, True)
    assert run.seconds() == 4 * 0.5 + 4 * 1.0 and not run.seconds_include_overheads
    assert run.overhead_seconds() == {"compile": 30.0, "eval": 100.0, "checkpoint": 0.0}
    # a window that timed no step (log_every=1: the compiling step alone) is covered by the next one's pace
    only_compile = {"step": 1, "loss": 1.0, "tokens_seen": 256, "window_seconds": 30.0, "compile_seconds": 30.0}
    assert Run("b", "", {}, {}, [], [only_compile] + new, True).seconds() == 6.0
    old = [{"step": 4, "loss": 1.0, "tokens_seen": 1024, "tokens_per_sec": 512.0},
           {"step": 8, "loss": 1.0, "tokens_seen": 2048, "tokens_per_sec": 256.0}]
    old_run = Run("c", "", {}, {}, [], old, True)
    assert old_run.seconds() == 2.0 + 4.0 and old_run.seconds_include_overheads and old_run.overhead_seconds() == {}
    assert Run("d", "", {}, {}, [], [], True).seconds() is None


def test_profile_steps_writes_a_trace_and_training_goes_on(tmp_path, corpus):
    from dllm_jax.train import train

    paths, cache = corpus
    workdir = str(tmp_path / "run")
    s = train(tiny_config(paths, cache, "ar", data__epochs=1, train__eval_every=0, train__profile_steps="2,3"), workdir)
    assert s["step"] == 8 and os.path.exists(os.path.join(workdir, "DONE"))
    traces = glob.glob(os.path.join(workdir, "profile", "**", "*.xplane.pb"), recursive=True)
    assert traces and all(os.path.getsize(p) > 0 for p in traces)
    recs = [r for r in read_metrics(workdir) if "loss" in r]
    assert all("profile_seconds" in r for r in recs) and recs[-1]["profile_seconds_total"] > 0


@pytest.mark.parametrize("text,expected", [("", None), ("10,15", (10, 15)), (" 12 ", (12, 12)), ("3, 3", (3, 3))])
def test_profile_steps_parse(text, expected):
    assert C.parse_profile_steps(text) == expected


@pytest.mark.parametrize("text", ["0,3", "5,2", "a,b", "1,2,3", "-1", "1.5,2", ","])
def test_profile_steps_refuses_what_is_not_a_step_range(text):
    cfg = C.default_config()
    cfg.data.paths = "x.txt"
    cfg.train.profile_steps = text
    with pytest.raises(ConfigError, match=r"train\.profile_steps=.*'10,15'"):
        C.validate(cfg)


def test_sweep_print_names_this_interpreter_and_sweep_summarises_points(tmp_path, capsys):
    from dllm_jax.cli import main
    from dllm_jax.study.sweep import point_summary

    grid = tmp_path / "grid.py"
    grid.write_text("from dllm_jax.config import default_config\n"
                    "def get_config():\n    c = default_config()\n    c.data.paths = 'x/*.txt'\n    return c\n"
                    "def get_grid(config):\n    return {'a': {'objective': 'ar'}}\n")
    assert main(["sweep", "--config", str(grid), "--root", str(tmp_path / "root"), "--print"]) == 0
    argv = shlex.split(capsys.readouterr().out.strip().splitlines()[0])
    assert argv[0] == sys.executable and argv[1:4] == ["-m", "dllm_jax", "train"]
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text(
        json.dumps({"step": 8, "loss": 3.25, "tokens_per_sec": 1234.4, "step_seconds": 0.2, "mfu": 0.4321}) + "\n"
        + json.dumps({"step": 8, "val_loss": 3.5}) + "\n")
    assert point_summary(str(workdir)) == "step 8, loss 3.2500, val_loss 3.5000, 1,234 tokens/s (steps alone), MFU 43.2%"
    assert point_summary(str(tmp_path / "missing")) == ""


def test_wandb_without_the_package_is_one_clear_error_before_any_work(tmp_path, corpus, monkeypatch):
    from dllm_jax.train import train

    paths, cache = corpus
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"train\.wandb_project='proj' needs Weights & Biases: pip install 'dllm_jax\[wandb\]'"):
        train(tiny_config(paths, cache, "ar", train__wandb_project="proj"), str(workdir))
    assert not workdir.exists() or not os.listdir(workdir)


def test_wandb_tracker_logs_offline_and_a_resumed_run_keeps_its_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from dllm_jax.metrics import WANDB_ID_FILE, MetricsWriter

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    w = MetricsWriter(workdir, tensorboard=False, wandb_project="dllm-test", run_config={"objective": "ar"})
    w.write({"step": 4, "loss": 2.5, "tokens_per_sec": 100.0, "note": "text"}, prefix="train/")
    w.close()
    run_id = open(os.path.join(workdir, WANDB_ID_FILE)).read().strip()
    assert run_id and glob.glob(os.path.join(workdir, "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb"))
    assert b"tokens_per_sec" in open(glob.glob(os.path.join(workdir, "wandb", f"offline-run-*-{run_id}", f"run-{run_id}.wandb"))[0], "rb").read()
    w = MetricsWriter(workdir, resume_step=4, tensorboard=False, wandb_project="dllm-test")
    w.write({"step": 8, "loss": 2.0}, prefix="train/")
    w.close()
    assert open(os.path.join(workdir, WANDB_ID_FILE)).read().strip() == run_id
    assert [r["step"] for r in read_metrics(workdir)] == [4, 8]


def test_config_verb_prints_derived_values_on_stderr(tmp_path, capsys):
    from dllm_jax.cli import main

    exp = tmp_path / "exp.py"
    exp.write_text("from dllm_jax.config import default_config\n"
                   "def get_config():\n    c = default_config()\n    c.data.paths = 'x/*.txt'\n    return c\n")
    # 32 x 128 = 4,096 tokens per step: U = 100,000 -> 98,304 = 24 steps per epoch, x 3 epochs = 72 steps
    assert main(["config", "--config", str(exp), "--config.data.unique_tokens=100000", "--config.data.epochs=3",
                 "--config.train.warmup_steps=100"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["data"]["unique_tokens"] == 100000  # stdout stays the config's JSON
    assert "tokens per step = train.batch_size x data.seq_len = 32 x 128 = 4,096" in err
    assert "rounded down to whole steps = 98,304" in err and "train.num_steps = 72 (" in err
    assert "warmup = 71 steps (train.warmup_steps=100" in err  # capped at num_steps - 1, as the schedule does
    assert main(["config", "--config", str(exp)]) == 0
    assert "known once the data is prepared" in capsys.readouterr().err
