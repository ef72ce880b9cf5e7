"""Weight decay (and MIR) as a study axis: the grids' tuning variants, and the report's tuned
series ('ar-tuned' = the best variant at each budget, Kim, Kotha et al. arXiv:2509.14786) with
every diffusion series compared against AR's strongest series, named."""

import json
import os

import numpy as np
import pytest
from test_study import EXPERIMENTS, _fake_run

from dllm_jax.errors import ConfigError
from dllm_jax.study import grid as grid_lib


def test_cpu_grid_weight_decay_and_mir_axis(tmp_path):
    path = os.path.join(EXPERIMENTS, "cpu_grid.py")
    plain = {p.name: p for p in grid_lib.load_grid(path, str(tmp_path), params={"budgets": "8e3,1.6e4"}).points}
    g = grid_lib.load_grid(path, str(tmp_path), params={"budgets": "8e3,1.6e4", "weight_decays": "0.1,0.8", "mir_weights": "0,0.4"})
    points = {p.name: p for p in g.points}
    assert list(points) == ["U8000_ar", "U8000_ar_mir0.4", "U8000_ar_wd0.8", "U8000_ar_wd0.8_mir0.4", "U8000_mdm",
                            "U1.6e4_ar", "U1.6e4_ar_mir0.4", "U1.6e4_ar_wd0.8", "U1.6e4_ar_wd0.8_mir0.4", "U1.6e4_mdm"]
    # the untuned points are the plain grid's (same name, same config: a sweep into one root reuses them)
    for name in ("U8000_ar", "U8000_mdm", "U1.6e4_ar"):
        assert points[name].config.to_dict() == plain[name].config.to_dict()
        assert "train.weight_decay" not in points[name].overrides
    c = points["U8000_ar_wd0.8_mir0.4"].config
    assert (c.train.weight_decay, c.ar.mir_weight, c.objective) == (0.8, 0.4, "ar")
    assert points["U8000_ar_wd0.8_mir0.4"].overrides["train.weight_decay"] == "0.8"
    # tune=ar,mdm sweeps the MDM's weight decay too; MIR stays AR's
    both = [p.name for p in grid_lib.load_grid(path, str(tmp_path), params={"budgets": "8e3", "weight_decays": "0.1,3.2",
                                                                             "mir_weights": "0,0.4", "tune": "ar,mdm"}).points]
    assert both == ["U8000_ar", "U8000_ar_mir0.4", "U8000_ar_wd3.2", "U8000_ar_wd3.2_mir0.4", "U8000_mdm", "U8000_mdm_wd3.2"]
    for params, message in (({"weight_decays": "0.1,x"}, "weight_decays='0.1,x' must be distinct comma-separated numbers"),
                            ({"weight_decays": "0.1,0.1"}, "must be distinct"), ({"mir_weights": "-1"}, "mir_weights"),
                            ({"tune": "ar,gpt"}, "'gpt' is not an objective")):
        with pytest.raises(ConfigError, match=message):
            grid_lib.load_grid(path, str(tmp_path), params={"budgets": "8e3", **params})


def test_paper_grid_takes_the_axis(tmp_path):
    g = grid_lib.load_grid(os.path.join(EXPERIMENTS, "paper_grid.py"), str(tmp_path),
                           params={"sizes": "1b", "unique": "1e9", "weight_decays": "0.1,1.0"})
    assert [p.name for p in g.points] == ["1b_U1e9_ar", "1b_U1e9_ar_wd1", "1b_U1e9_mdm"]
    assert g.points[1].config.train.weight_decay == 1.0


def _run(root, name, objective, unique, acc, **config):
    grid = np.arange(1, len(acc) + 1, dtype=float)
    val = [{"epoch": float(e), "val_loss": 3.0 - 0.01 * e, "cloze_acc": float(a)} for e, a in zip(grid, acc)]
    _fake_run(root, name, objective, unique, len(acc), val)
    path = os.path.join(root, name, "config.json")
    cfg = json.load(open(path))
    for key, value in config.items():
        group, leaf = key.split(".")
        cfg[group][leaf] = value
    json.dump(cfg, open(path, "w"))


def test_report_compares_the_mdm_with_ar_tuned_at_each_budget(tmp_path):
    from dllm_jax.cli import main

    root = str(tmp_path / "runs")
    e = np.arange(1, 25, dtype=float)
    # U = 6400: wd 0.8 is AR's best (peak 0.55 from epoch 13); U = 12800: wd 3.2 (peak 0.6 from epoch 15). The MDM
    # (0.205 + e/40) passes 0.55 at epoch 13.8 and 0.6 at 15.8 (the untuned AR's 0.5 already at 11.8)
    planted = {
        6400: {"ar": np.minimum(0.3 + e / 50, 0.5), "ar_wd0.8": np.minimum(0.3 + e / 50, 0.55), "ar_wd3.2": np.minimum(0.2 + e / 50, 0.45)},
        12800: {"ar": np.minimum(0.3 + e / 50, 0.5), "ar_wd0.8": np.minimum(0.3 + e / 50, 0.52), "ar_wd3.2": np.minimum(0.3 + e / 50, 0.6)},
    }
    for unique, curves in planted.items():
        for name, acc in curves.items():
            wd = {"ar": 0.1, "ar_wd0.8": 0.8, "ar_wd3.2": 3.2}[name]
            _run(root, f"U{unique}_{name}", "ar", unique, acc, **{"train.weight_decay": wd})
        _run(root, f"U{unique}_mdm", "mdm", unique, 0.205 + e / 40)
    out = str(tmp_path / "report")
    assert main(["report", "--root", root, "--out", out]) == 0
    summary = json.load(open(os.path.join(out, "report.json")))
    rows = {r["unique_tokens"]: r for r in summary["crossovers"]["cloze_acc"]}
    assert len(summary["crossovers"]["cloze_acc"]) == 2  # one row per (budget, diffusion series): against AR's strongest
    assert rows[6400]["ar_series"] == rows[12800]["ar_series"] == "ar-tuned"
    assert rows[6400]["ar_pick"] == "ar weight_decay=0.8" and rows[12800]["ar_pick"] == "ar weight_decay=3.2"
    assert rows[6400]["ar_series_compared"] == 3
    assert rows[6400]["ar_best"] == [0.55, 13.0] and rows[12800]["ar_best"] == [0.6, 15.0]
    assert rows[6400]["crossover_epoch"] == pytest.approx(13.8) and rows[12800]["crossover_epoch"] == pytest.approx(15.8)
    md = open(os.path.join(out, "report.md")).read()
    assert "| ar-tuned (ar weight_decay=0.8; strongest of 3) | mdm |" in md
    # the data ratio reads AR through its tuned series only (one AR series per model)
    assert {r["ar_series"] for r in summary["data_ratios"]["cloze_acc"]} == {"ar-tuned"}
    # the R* fits stay per series (each weight decay its own curve family)
    assert {f["series"] for f in summary["fits"]} == {"ar", "ar weight_decay=0.8", "ar weight_decay=3.2", "mdm"}


def test_strongest_ar_series_may_be_another_family_and_a_lone_series_is_unchanged(tmp_path):
    from dllm_jax.study.report import crossover_rows
    from dllm_jax.study.runs import load_runs, panels

    root = str(tmp_path / "runs")
    e = np.arange(1, 17, dtype=float)
    _run(root, "U6400_ar", "ar", 6400, np.minimum(0.3 + e / 50, 0.5))
    _run(root, "U6400_ar_wd0.8", "ar", 6400, np.minimum(0.3 + e / 50, 0.52), **{"train.weight_decay": 0.8})
    _run(root, "U6400_ar_mask0.1", "ar", 6400, np.minimum(0.3 + e / 50, 0.58), **{"ar.input_mask_rate": 0.1})
    _run(root, "U6400_mdm", "mdm", 6400, 0.25 + e / 40)
    _run(root, "U12800_ar", "ar", 12800, np.minimum(0.3 + e / 50, 0.5))
    _run(root, "U12800_mdm", "mdm", 12800, 0.25 + e / 40)
    runs = load_runs(root)
    assert {r.name: r.family for r in runs}["U6400_ar_wd0.8"] == "ar"
    assert {r.name: r.family for r in runs}["U6400_ar_mask0.1"] == "ar input_mask_rate=0.1"
    rows = {r["unique_tokens"]: r for r in crossover_rows(panels(runs), "cloze_acc")[0]}
    # the input-masking series beats the tuned weight decay: it is AR's strongest, named as itself
    assert rows[6400]["ar_series"] == "ar input_mask_rate=0.1" and rows[6400]["ar_pick"] is None
    assert rows[6400]["ar_series_compared"] == 3
    # one AR series: compared as before
    assert rows[12800]["ar_series"] == "ar" and rows[12800]["ar_series_compared"] == 1 and rows[12800]["ar_pick"] is None
