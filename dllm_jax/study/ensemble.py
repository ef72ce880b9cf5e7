"""Ensembles in a sweep: the runs of a grid that differ only in `train.member_seed`, scored as one model.

Kim, Kotha et al. ("Pre-training under infinite compute", arXiv:2509.14786) get much of AR's
data efficiency from ensembles of K independently trained members, scored with the mean of
their probabilities. A grid makes members with `--grid members=K` (`study.grid.series_points`:
`train.member_seed` 1..K-1 on top of a point; same unique tokens, validation rows and cloze
items, another init, noise and data order). After its points, `dllm-jax sweep` evaluates every
group whose members are all finished as one model (`likelihood.Scorer.for_models`: for AR the
log of the mean next-token probability, for a diffusion objective the ELBO of the averaged
denoiser, every member under the same draws) and writes it as a run the report reads:

    ROOT/<member 0's point>_ens<K>/
        config.json   member 0's config (the report groups it with member 0's series)
        run.json      member 0's, plus "ensemble": [the members' point names]
        metrics.jsonl one validation record per step (`train.evaluate`'s val_loss / ELBO keys on
                      the same rows, draws and seed as training validated, and the cloze keys of
                      `evaluation.periodic` on the same items), step / epoch / tokens_seen as the members'
        DONE          when every step is scored

Decided here:
- A group = the points whose overrides agree except for `train.member_seed` (two or more).
- The steps scored are those where member 0 logged a validation record and every member kept a
  checkpoint (the grid files keep one per evaluation); a group with none is skipped with a warning.
- Scoring resumes: steps already in metrics.jsonl are not scored again.
- The report names the series '<series>-ensemble' (`study.runs`): AR's strongest series at a
  budget may then be the AR ensemble, the comparison Kim et al. ask for.
- `dllm-jax sweep` scores each group in a child process (`python -m dllm_jax.study.ensemble OUT
  NAME=WORKDIR ...`, `main`), as it trains each point in one: the sweep's own process never
  holds the accelerator (one process per TPU host) nor its memory; with --in-process or
  --index, in the sweep's process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from dllm_jax import paths

log = logging.getLogger("dllm_jax")

MEMBER_KEY = "train.member_seed"
SUFFIX = "_ens"


@dataclasses.dataclass
class Group:
    name: str  # ROOT/<name> is the ensemble's directory
    members: list  # the grid's Points, member 0 first
    workdir: str


def groups(grid) -> list:
    """The ensembles of a grid (module docstring), in the order of their first member."""
    by_key: dict = {}
    for p in grid.points:
        key = json.dumps({k: v for k, v in p.overrides.items() if k != MEMBER_KEY}, sort_keys=True)
        by_key.setdefault(key, []).append(p)
    out = []
    for points in by_key.values():
        if len(points) < 2:
            continue
        points = sorted(points, key=lambda p: int(p.config.train.member_seed))
        name = f"{points[0].name}{SUFFIX}{len(points)}"
        out.append(Group(name, points, paths.join(grid.root, name)))
    return out


def status(group: Group) -> str:
    """'done', 'waiting' (a member is not finished) or 'todo'."""
    from dllm_jax.study.sweep import point_status

    if paths.exists(paths.join(group.workdir, "DONE")):
        return "done"
    return "todo" if all(point_status(p.workdir) == "done" for p in group.members) else "waiting"


def _steps(group: Group) -> list:
    """The steps member 0 validated at and every member has a checkpoint of."""
    from dllm_jax.checkpoint import Checkpointer
    from dllm_jax.metrics import read_metrics

    wanted = {r["step"] for r in read_metrics(group.members[0].workdir) if isinstance(r.get("val_loss"), (int, float))}
    for p in group.members:
        wanted &= set(Checkpointer(p.workdir, read_only=True).all_steps())
    return sorted(wanted)


def evaluate_group(group: Group) -> int:
    """Score `group` at each of its steps (module docstring); returns the number of steps scored
    now. Raises what loading a member's checkpoint raises (CheckpointError)."""
    from dllm_jax.checkpoint import load_run
    from dllm_jax.data.pipeline import build_dataset
    from dllm_jax.evaluation.likelihood import Scorer
    from dllm_jax.evaluation.periodic import ClozeEvaluator
    from dllm_jax.files import read_json
    from dllm_jax.metrics import METRICS_FILE, read_metrics
    from dllm_jax import objectives
    from dllm_jax.train import evaluate

    first = group.members[0].workdir
    steps = _steps(group)
    if not steps:
        log.warning("ensemble %s: its members share no checkpoint at an evaluation step; nothing to score", group.name)
        return 0
    paths.makedirs(group.workdir)
    for name in ("config.json", "data_stats.json"):
        if paths.exists(paths.join(first, name)):
            paths.write_text(paths.join(group.workdir, name), paths.read_text(paths.join(first, name)))
    info = read_json(paths.join(first, "run.json"), "run file")
    info["ensemble"] = [p.name for p in group.members]
    paths.write_text(paths.join(group.workdir, "run.json"), json.dumps(info, indent=1))
    done = {r["step"] for r in read_metrics(group.workdir) if "val_loss" in r}
    member_records = {r["step"]: r for r in read_metrics(first) if "val_loss" in r}
    scored, scorer, cloze, dataset = 0, None, None, None
    for step in [s for s in steps if s not in done]:
        t0 = time.perf_counter()
        runs = [load_run(first, step=step)]
        runs += [load_run(p.workdir, step=step, mesh=runs[0].mesh) for p in group.members[1:]]
        config = runs[0].config
        if scorer is None:  # the members' modules do not change across steps: compile once
            names = [p.name for p in group.members]
            scorer = Scorer.for_models([r.model for r in runs], [r.config for r in runs], [r.tokenizer for r in runs],
                                       names=names, batch_size=config.eval.batch_size, mesh=runs[0].mesh)
            dataset = build_dataset(config, first)
            if int(config.eval.cloze_examples) > 0:
                cloze = ClozeEvaluator(runs[0].model, config, runs[0].tokenizer, dataset.val, scorer=scorer)
        params = tuple(r.params for r in runs)
        objective = objectives.build(config)
        rec = evaluate(scorer, params, dataset.val, int(config.train.batch_size), int(config.train.eval_batches), objective,
                       objective.val_draws(config), seed=int(config.seed))
        base = member_records.get(step, {})
        rec = {"step": step, **{k: base[k] for k in ("epoch", "tokens_seen") if k in base}, **rec}
        if cloze is not None:
            rec.update(cloze(params))
        rec["eval_seconds"] = round(time.perf_counter() - t0, 2)
        paths.append_text(paths.join(group.workdir, METRICS_FILE), json.dumps(rec) + "\n")
        shown = " ".join(f"{k} {rec[k]:.4f}" for k in ("val_loss", "cloze_acc") if isinstance(rec.get(k), float))
        log.info("ensemble %s: step %d (%d members): %s (%.1f s)", group.name, step, len(runs), shown, rec["eval_seconds"])
        scored += 1
    paths.write_text(paths.join(group.workdir, "DONE"), json.dumps({"members": [p.name for p in group.members], "steps": steps}))
    return scored


@dataclasses.dataclass
class Member:
    name: str  # the member's point name
    workdir: str


def child_command(group: Group, python: str) -> list:
    """The command line that scores `group` in a child process (`main`)."""
    # ':' parts a name from its workdir: a point's name never holds one (`grid._NAME`), while
    # names such as 'U8000_gidd+p_u=0.1' hold '=' and a workdir may hold either ('gs://...')
    return [python, "-m", "dllm_jax.study.ensemble", group.workdir] + [f"{p.name}:{p.workdir}" for p in group.members]


def main(argv=None) -> int:
    """`python -m dllm_jax.study.ensemble OUT NAME:WORKDIR [NAME:WORKDIR ...]`: score the members
    (member 0 first) as one ensemble into OUT (`evaluate_group`). Exit 0, or 2 with one error
    line for bad input (a DllmError: e.g. a damaged checkpoint)."""
    import os
    import sys

    from dllm_jax.cli import LOG_FORMAT
    from dllm_jax.errors import DllmError

    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING)
    log.setLevel(logging.INFO)
    members = [Member(*a.split(":", 1)) for a in args[1:] if ":" in a]
    if len(args) < 3 or len(members) != len(args) - 1:
        print("usage: python -m dllm_jax.study.ensemble OUT NAME:WORKDIR NAME:WORKDIR [...] (member 0 first)", file=sys.stderr)
        return 2
    from dllm_jax.distributed import prefer_cpu_without_accelerator

    prefer_cpu_without_accelerator()  # as the CLI: no libtpu initialisation noise on a host without a TPU
    try:
        evaluate_group(Group(os.path.basename(args[0].rstrip("/")), members, args[0]))
    except DllmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


__all__ = ["Group", "Member", "groups", "status", "evaluate_group", "child_command", "main", "MEMBER_KEY", "SUFFIX"]

if __name__ == "__main__":
    raise SystemExit(main())
