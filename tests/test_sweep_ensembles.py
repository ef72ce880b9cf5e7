"""Ensembles and series specs in a sweep: `train.member_seed` (another init, noise and data
order on the same unique tokens), the grids' `objectives` entries with overrides and their
`members` / `ensemble` axes, the sweep's scoring of finished ensembles, and the report's
'<series>-ensemble' series (Kim, Kotha et al. arXiv:2509.14786)."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config
from test_study import EXPERIMENTS
from test_tuned_series import _run

from dllm_jax import config as config_lib
from dllm_jax import rng
from dllm_jax.errors import ConfigError
from dllm_jax.study import ensemble
from dllm_jax.study import grid as grid_lib


def _bits(key):
    return np.asarray(jax.random.key_data(key))


def test_member_zero_is_every_earlier_run_and_other_members_draw_anew():
    # member 0's streams are the seed's own: runs made before train.member_seed existed are unchanged
    for name in (rng.INIT, rng.TRAIN):
        assert np.array_equal(_bits(rng.stream(rng.run_key(7, 0), name)), _bits(rng.stream(7, name)))
    assert not np.array_equal(_bits(rng.stream(rng.run_key(7, 1), rng.INIT)), _bits(rng.stream(7, rng.INIT)))
    assert not np.array_equal(_bits(rng.run_key(7, 1)), _bits(rng.run_key(7, 2)))
    assert rng.data_order_seed(7, 0) == 7 and len({rng.data_order_seed(7, m) for m in range(4)}) == 4


def test_members_share_the_unique_tokens_and_validation_but_not_the_order(corpus, tmp_path):
    from dllm_jax.data.pipeline import build_dataset, train_loader

    paths, cache = corpus
    sets = []
    for member in (0, 1):
        cfg = tiny_config(paths, cache, "ar", train__member_seed=member)
        ds = build_dataset(cfg, str(tmp_path / f"m{member}"))
        rows = np.stack([np.asarray(ds.train[i]) for i in range(len(ds.train))])
        loader = train_loader(ds.train, global_batch=8, epochs=1, seed=rng.data_order_seed(cfg.seed, member))
        first = np.asarray(loader[0])  # element s: global batch s
        sets.append((rows, np.asarray(ds.val), first))
    (rows0, val0, first0), (rows1, val1, first1) = sets
    assert np.array_equal(rows0, rows1) and np.array_equal(val0, val1)  # the same U tokens, the same validation rows
    assert not np.array_equal(first0, first1)  # each member its own order


def test_series_specs_and_member_points():
    base = config_lib.default_config()
    assert grid_lib.series_specs("ar, mdm+mdm.t_proposal=beta,gidd+gidd.p_u=0.1") == [
        ("ar", {}, ""), ("mdm", {"mdm.t_proposal": "beta"}, "+t_proposal=beta"), ("gidd", {"gidd.p_u": "0.1"}, "+p_u=0.1")]
    for bad, match in (("ar,xyz", "names no objective 'xyz'"), ("mdm+mdm.t_proposal", "must be KEY=VALUE"),
                       ("mdm+mdm.t_proposal=beta:2", "plain value"), ("ar,ar", "listed twice"), (" , ", "names no objective"),
                       ("mdm+objective=ar", "must be KEY=VALUE")):
        with pytest.raises(ConfigError, match=match):
            grid_lib.series_specs(bad)
    points = grid_lib.series_points(base, "ar,mdm,mdm+mdm.t_proposal=beta", weight_decays="0.1,1.0", members="3", ensemble="ar,mdm")
    names = [s for s, _ in points]
    # members only of the untuned point of the series named in `ensemble`
    assert names == ["_ar", "_ar_m1", "_ar_m2", "_ar_wd1", "_mdm", "_mdm_m1", "_mdm_m2", "_mdm+t_proposal=beta"]
    over = dict(points)
    assert over["_ar_m2"] == {"objective": "ar", "train.member_seed": 2}
    assert over["_mdm+t_proposal=beta"] == {"objective": "mdm", "mdm.t_proposal": "beta"}
    assert [s for s, _ in grid_lib.series_points(base, "ar,mdm", members="2")] == ["_ar", "_ar_m1", "_mdm", "_mdm_m1"]
    with pytest.raises(ConfigError, match="'uniform' is not a series of the grid"):
        grid_lib.series_points(base, "ar,mdm", members="2", ensemble="uniform")
    for bad in ("0", "x", "65"):
        with pytest.raises(ConfigError, match="--grid members="):
            grid_lib.series_points(base, "ar", members=bad)


def test_grids_build_the_series_and_refuse_unknown_keys(tmp_path):
    g = grid_lib.load_grid(os.path.join(EXPERIMENTS, "cpu_grid.py"), str(tmp_path),
                           params={"budgets": "8e3", "objectives": "ar,mdm+mdm.t_proposal=logit_normal", "members": "2"})
    assert [p.name for p in g.points] == ["U8000_ar", "U8000_ar_m1", "U8000_mdm+t_proposal=logit_normal",
                                          "U8000_mdm+t_proposal=logit_normal_m1"]
    assert g.points[2].config.mdm.t_proposal == "logit_normal" and g.points[3].config.train.member_seed == 1
    assert [(e.name, [p.name for p in e.members]) for e in ensemble.groups(g)] == [
        ("U8000_ar_ens2", ["U8000_ar", "U8000_ar_m1"]),
        ("U8000_mdm+t_proposal=logit_normal_ens2", ["U8000_mdm+t_proposal=logit_normal", "U8000_mdm+t_proposal=logit_normal_m1"])]
    with pytest.raises(ConfigError, match="mdm.t_proposl"):
        grid_lib.load_grid(os.path.join(EXPERIMENTS, "cpu_grid.py"), str(tmp_path), params={"objectives": "mdm+mdm.t_proposl=beta"})
    g = grid_lib.load_grid(os.path.join(EXPERIMENTS, "paper_grid.py"), str(tmp_path),
                           params={"sizes": "1b", "unique": "1e9", "objectives": "ar,mdm", "members": "2", "ensemble": "ar"})
    assert [p.name for p in g.points] == ["1b_U1e9_ar", "1b_U1e9_ar_m1", "1b_U1e9_mdm"]


def test_an_ensemble_of_copies_scores_as_the_run_at_every_step(trained_runs, tmp_path):
    """The sweep's ensemble of K copies of one run is that run: its validation records (the
    training-time estimator, rows, draws and seed) equal the ones training logged. The MDM: its
    ELBO's draws must be the training validation's too (AR copies: tests/test_ensemble.py)."""
    from dllm_jax.metrics import read_metrics

    run = trained_runs["mdm"]
    members = []
    names = ["U8_mdm+t_proposal=beta", "U8_mdm+t_proposal=beta_m1"]  # '=' and '+' in names and workdirs
    for k, name in enumerate(names):
        workdir = str(tmp_path / name)
        shutil.copytree(run, workdir)
        cfg = config_lib.complete(json.load(open(os.path.join(run, "config.json"))))
        members.append(grid_lib.Point(k, name, {"train.member_seed": str(k)}, cfg, workdir))
    group = ensemble.Group("U8_mdm+t_proposal=beta_ens2", members, str(tmp_path / "U8_mdm+t_proposal=beta_ens2"))
    assert ensemble.status(group) == "todo"
    from dllm_jax.study.sweep import _score_child

    assert _score_child(group) == "finished"  # as `dllm-jax sweep` scores it: in a child process (ensemble.main)
    assert ensemble.main([group.workdir, f"{names[0]}:{members[0].workdir}"]) == 2  # one member: the usage line, exit 2
    got = {r["step"]: r for r in read_metrics(group.workdir)}
    want = {r["step"]: r for r in read_metrics(run) if "val_loss" in r and r["step"] in got}
    assert sorted(got) == sorted(want)
    for step, rec in got.items():
        for key, value in want[step].items():
            if key.startswith(("val_", "cloze_", "elbo")) and isinstance(value, float):
                assert rec[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)
        assert rec["epoch"] == want[step]["epoch"]
    info = json.load(open(os.path.join(group.workdir, "run.json")))
    assert info["ensemble"] == names and ensemble.status(group) == "done"
    assert ensemble.evaluate_group(group) == 0  # scored steps are not scored again


def test_report_names_the_ensemble_series_and_leaves_members_out(tmp_path):
    from dllm_jax.study.report import crossover_rows
    from dllm_jax.study.runs import load_runs, panels

    root = str(tmp_path / "runs")
    e = np.arange(1, 17, dtype=float)
    _run(root, "U6400_ar", "ar", 6400, np.minimum(0.3 + e / 50, 0.5))
    _run(root, "U6400_ar_m1", "ar", 6400, np.minimum(0.3 + e / 50, 0.49), **{"train.member_seed": 1})
    _run(root, "U6400_ar_ens2", "ar", 6400, np.minimum(0.3 + e / 50, 0.56))
    info_path = os.path.join(root, "U6400_ar_ens2", "run.json")
    info = json.load(open(info_path))
    json.dump({**info, "ensemble": ["U6400_ar", "U6400_ar_m1"]}, open(info_path, "w"))
    _run(root, "U6400_mdm", "mdm", 6400, 0.25 + e / 40)
    runs = {r.name: r for r in load_runs(root)}
    assert runs["U6400_ar"].series == "ar" and runs["U6400_ar_ens2"].series == "ar-ensemble"
    assert runs["U6400_ar_m1"].replicate and not runs["U6400_ar_ens2"].replicate
    cell = panels(list(runs.values()))[(123_456, 6400)]
    assert sorted(cell) == ["ar", "ar-ensemble", "mdm"]  # member 1 is in no panel: no series collision
    (row,) = crossover_rows(panels(list(runs.values())), "cloze_acc")[0]
    assert row["ar_series"] == "ar-ensemble" and row["ar_best"][0] == pytest.approx(0.56) and row["ar_series_compared"] == 2
    # the table of every series at its best: AR's strongest marked, the ensemble's member count given
    from dllm_jax.study.report import series_best_rows

    best = {r["series"]: r for r in series_best_rows(panels(list(runs.values())), ["cloze_acc", "val_loss"])}
    assert list(best) == ["ar", "ar-ensemble", "mdm"]
    assert best["ar-ensemble"]["members"] == 2 and best["ar"]["members"] == 1
    assert best["ar-ensemble"]["strongest_ar"]["cloze_acc"] and not best["ar"]["strongest_ar"]["cloze_acc"]
    assert best["ar"]["best"]["cloze_acc"][:2] == (pytest.approx(0.5), 10.0)  # min(0.3 + e/50, 0.5) first reaches 0.5 at e = 10
    assert best["mdm"]["best"]["cloze_acc"][:2] == (pytest.approx(0.25 + 16 / 40), 16.0) and best["mdm"]["side"] == "diffusion"
    assert best["mdm"]["best"]["val_loss"][:2] == (pytest.approx(3.0 - 0.16), 16.0)


def test_member_zero_is_the_smallest_member_seed_even_with_a_sweep_wide_base():
    """A sweep run with --config.train.member_seed=5 (a second replicate of a whole study):
    its runs are series, not replicates; with members its member 0 (seed 5) is the series and
    seed 6 the replicate; a lone run with a nonzero seed is a series of its own."""
    from dllm_jax import config as C
    from dllm_jax.study import runs as R

    base = C.flatten(C.default_config().to_dict())
    def run(name, objective, seed, **kw):
        return R.Run(name, "", {**base, "objective": objective, "train.member_seed": seed, **kw}, {}, [], [], True)

    rs = [run("ar", "ar", 5), run("ar_m1", "ar", 6), run("mdm", "mdm", 5), run("mdm_wd", "mdm", 7, **{"train.weight_decay": 0.5})]
    R.assign_series(rs)
    assert [r.replicate for r in rs] == [False, True, False, False]
    assert len({r.series for r in rs if not r.replicate}) == 3


def test_a_key_newer_than_a_run_takes_its_default_in_the_series():
    """Runs of one root made by two library versions: the older run's config.json lacks a key
    added since (here data.mask_token, default ''); it takes the default, so the series of
    alike runs stay one name, not 'ar mask_token=None' beside 'ar'."""
    from dllm_jax import config as C
    from dllm_jax.study import runs as R

    base = C.flatten(C.default_config().to_dict())
    old = {k: v for k, v in base.items() if k != "data.mask_token"}
    rs = [R.Run("ar_old", "", {**old, "objective": "ar"}, {}, [], [], True),
          R.Run("gidd_new", "", {**base, "objective": "gidd", "gidd.p_u": 0.1}, {}, [], [], True),
          R.Run("ar_new", "", {**base, "objective": "ar", "train.member_seed": 1}, {}, [], [], True)]
    R.assign_series(rs)
    assert [r.series for r in rs] == ["ar", "gidd p_u=0.1", "ar"]
    assert [r.replicate for r in rs] == [False, False, True]  # the old run and its new member are one group
