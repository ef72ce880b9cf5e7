"""`dllm-jax sweep --config GRID.py --root DIR`: run every point of a grid, one workdir each.

    dllm-jax sweep --config experiments/cpu_grid.py --root runs/cpu_grid          # run all
    dllm-jax sweep --config experiments/cpu_grid.py --root runs/cpu_grid --list   # status
    dllm-jax sweep --config experiments/cpu_grid.py --root runs/cpu_grid --print  # command lines
    dllm-jax sweep --config experiments/paper_grid.py --root gs://... --index $TASK_ID

(grid files: see `dllm_jax.study.grid`). A point whose workdir has the DONE file that
`train` writes at the end is skipped (after checking that its saved config is the point's
config); any other point is trained with `dllm_jax.train.train`, which resumes from the
workdir's latest checkpoint if there is one, so rerunning the same command after a kill
continues where it stopped.

Decisions: without --index each point runs in a child process (`python -m dllm_jax
train ...`, exactly the `--print` line), so a crash or out-of-memory in one point does not
end the sweep and its memory is freed; the sweep goes on with the next point and exits 1 at
the end if any point failed. A point that stops without finishing (SIGINT/SIGTERM: train
saves a checkpoint first) stops the sweep. With --index K, or --in-process, points run in
this process (what a job array wants: one point per task, no second interpreter).

Checked before any point starts (each a single `error:`, exit 2, nothing started or written):
- every finished point's saved config against the point's config now, and every unfinished
  one's as a resume would check it (`check_finished_configs`: all differing points listed at once);
- train.warmup_steps is shorter than each point still to run (`check_warmups`);
- each corpus the points still to run use: its files exist (`check_corpus_paths`) and it holds
  their largest unique-token budget U (`check_corpus_budgets`: the corpus is tokenised into
  the store the points will use, in data.cache_dir, and split as they split it; costs what one
  point's data setup costs, once per corpus).
Then the sweep records its grid in ROOT/sweep_plan.json (`write_plan`; `dllm-jax report` lists
the planned points that never started).

Ensembles (`dllm_jax.study.ensemble`): the sweep scores each group of points that differ
only in `train.member_seed` (`--grid members=K`) as soon as all of them are finished (after
the point that finished last, or a skipped finished point of a group not yet scored), into
ROOT/<member 0>_ens<K>/, in a child process each (as the points; with --in-process in this one);
with --index, the groups of that point, in this process. `--list` shows them too.

Output: each point's training prints its progress prefixed with `point i/N NAME` (i counts
the points of this invocation; `train` reads the label from $DLLM_JAX_RUN_LABEL): plain lines
(step, loss, tokens/s, MFU, lr, elapsed, ETA) when the sweep's output is not a terminal, a
progress bar when it is; after each point the sweep prints one summary line (outcome, wall
time, steps, final loss, tokens/s of the steps alone, MFU where known). `--print` writes
command lines for this Python interpreter (sys.executable).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time

from dllm_jax import config as config_lib
from dllm_jax import paths
from dllm_jax.errors import ConfigError, DataError, DllmError
from dllm_jax.study.grid import load_grid, point_command
from dllm_jax.study.runs import PLAN_FILE

log = logging.getLogger("dllm_jax")

DONE_FILE = "DONE"  # written by dllm_jax.train at the end of a run


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="grid file with get_config() and get_grid(), e.g. experiments/cpu_grid.py")
    parser.add_argument("--root", required=True, help="sweep directory: one workdir per point, ROOT/NAME")
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=VALUE", help="a parameter of the grid file's get_grid(), e.g. --grid budgets=1e5,3e5 (repeatable)")
    parser.add_argument("--index", type=int, default=None, help="run only point K (0-based, see --list), in this process: one task of a job array")
    parser.add_argument("--print", dest="print_only", action="store_true", help="print the `dllm-jax train` command line of each point and exit")
    parser.add_argument("--list", action="store_true", help="list the points with their status (done / partial / new) and exit")
    parser.add_argument("--in-process", action="store_true", help="run the points in this process instead of one child process each")
    parser.epilog = "Override a key of every point with --config.KEY=VALUE, e.g. --config.data.paths='corpus/*.txt'"


def point_status(workdir: str) -> str:
    """'done' (DONE file), 'partial' (a checkpoint or metrics, no DONE) or 'new'."""
    if paths.exists(paths.join(workdir, DONE_FILE)):
        return "done"
    if paths.isdir(workdir) and paths.listdir(workdir):
        return "partial"
    return "new"


def check_corpus_paths(points) -> None:
    """Resolve each distinct `data.paths` of the points still to run once, before any is started:
    a missing or unreadable corpus is one DataError here, not the same error from every point's
    child process (and an empty workdir per point)."""
    from dllm_jax.data.sources import resolve_files

    seen = set()
    for p in points:
        d = p.config.data
        if d.source in ("text", "jsonl", "parquet", "array_record") and d.paths and not d.store and d.paths not in seen:
            seen.add(d.paths)
            resolve_files(d.paths)


def corpus_location(data) -> str:
    """How a run's config names its corpus: data.store, data.paths or data.tfds_name."""
    if data.store:
        return f"data.store={data.store!r}"
    if data.source == "tfds":
        return f"data.tfds_name={data.tfds_name!r}"
    return f"data.paths={data.paths!r}"


def check_corpus_budgets(points) -> None:
    """Before any point starts: the corpus of each point still to run holds its unique-token
    budget U (data.unique_tokens; 0 = all, not checked). Points that read the same corpus with
    the same split (data keys other than U and epochs, seed, batch size) share one look at it
    (`dllm_jax.data.pipeline.corpus_split`: the store they will train from). Raises one
    DataError naming the largest budget, the points over it, the corpus size in tokens and the fix."""
    from dllm_jax.data.pipeline import corpus_split

    groups: dict = {}
    for p in points:
        if int(p.config.data.unique_tokens or 0) <= 0:
            continue
        data = {k: v for k, v in p.config.data.to_dict().items() if k not in ("unique_tokens", "epochs")}
        key = json.dumps([data, p.config.seed, p.config.train.batch_size], sort_keys=True, default=str)
        groups.setdefault(key, []).append(p)
    for group in groups.values():
        cfg = group[0].config
        split = corpus_split(cfg)
        available = split["available_tokens"]
        over = sorted((p for p in group if int(p.config.data.unique_tokens) > available), key=lambda p: -int(p.config.data.unique_tokens))
        if not over:
            continue
        largest = over[0]
        names = ", ".join(p.name for p in over[:8]) + (f" and {len(over) - 8} more" if len(over) > 8 else "")
        raise DataError(
            f"grid point {largest.name!r} asks for data.unique_tokens={int(largest.config.data.unique_tokens):,} but the corpus "
            f"{corpus_location(cfg.data)} holds {split['corpus_tokens']:,} tokens ({split['documents']:,} documents), of which "
            f"{available:,} are left for training after the {split['val_tokens']:,} validation tokens "
            f"(data.val_tokens={int(cfg.data.val_tokens):,}); {len(over)} of {len(group)} points are over it ({names}). "
            f"No point was started. Drop the budgets above {available:,} from the grid (its --grid parameters), "
            "lower data.val_tokens, or use a larger corpus."
        )


def point_steps(config) -> int | None:
    """The optimiser steps a point will run, as `dllm-jax config` derives them before reading
    data (`cli_train.derived_values`: train.num_steps, else U rounded down to whole batches x
    data.epochs); None when U is 0 (all of the corpus: known only once it is tokenised)."""
    from dllm_jax.cli_train import derived_values

    return derived_values(config)["num_steps"] or None


def check_warmups(points) -> None:
    """Before any point starts: train.warmup_steps is shorter than every point's run (as
    `train` checks it, point by point, after preparing its data). One ConfigError listing the
    points whose warmup is not shorter, with their steps, and the fix."""
    bad = []
    for p in points:
        steps, warmup = point_steps(p.config), int(p.config.train.warmup_steps)
        if steps is not None and warmup and warmup >= steps:
            bad.append((p, steps))
    if bad:
        listed = ", ".join(f"{p.name} ({steps} steps)" for p, steps in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        shortest = min(steps for _, steps in bad)
        raise ConfigError(
            f"train.warmup_steps={int(bad[0][0].config.train.warmup_steps)} is not shorter than the run of {len(bad)} point(s): "
            f"{listed}; train would refuse each of them. No point was started. Set --config.train.warmup_steps below "
            f"{shortest} (e.g. {max(shortest // 10, 1) if shortest > 1 else 0}), or give the grid more tokens."
        )


def finished_config_differences(point, changeable=config_lib.how_key) -> list:
    """[(key, saved value, value now)] where a point's saved config.json differs from the point's
    config, other than the keys `changeable` allows: for a finished point those that do not
    change what a run learns (`dllm_jax.config.how_key`: a finished run trained with another LR
    is another point); for an unfinished one what may change on resume
    (`dllm_jax.config.resume_changeable`, as `train` checks it). [] without a config.json."""
    from dllm_jax.files import read_json
    from dllm_jax.train import config_differences

    path = paths.join(point.workdir, "config.json")
    if not paths.exists(path):
        return []
    return config_differences(read_json(path, "run config"), point.config, changeable=changeable)


def _show_differences(diffs, limit: int = 4) -> str:
    shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:limit])
    return shown + (f", and {len(diffs) - limit} more keys" if len(diffs) > limit else "")


def check_finished_config(point) -> None:
    """A finished workdir must hold this point's config, or the sweep would skip a point it never ran."""
    diffs = finished_config_differences(point)
    if diffs:
        raise ConfigError(
            f"point {point.name!r}: {point.workdir} holds a finished run with a different config ({_show_differences(diffs)}); "
            "use a new --root, or delete that workdir to rerun the point"
        )


def check_finished_configs(points) -> None:
    """Every point with a saved config at once, before any point starts: one ConfigError
    listing each finished point whose saved config differs from the grid's (it would be
    skipped though never run), and each unfinished one that could not resume (`train` would
    refuse it, point by point), with the differing keys."""
    bad = []
    for p in points:
        status = point_status(p.workdir)
        if status == "new":
            continue
        diffs = finished_config_differences(p, config_lib.how_key if status == "done" else config_lib.resume_changeable)
        if diffs:
            bad.append((p, status, diffs))
    if not bad:
        return
    listed = "; ".join(f"{p.name}{'' if status == 'done' else ', unfinished'} ({_show_differences(d)})" for p, status, d in bad[:10])
    listed += f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    raise ConfigError(
        f"{len(bad)} point(s) hold runs with a different config than the grid gives them now (saved -> now): {listed}. "
        "No point was started. Use a new --root for the changed grid, rerun with the saved values (config.json in "
        "each workdir), or delete those workdirs to rerun the points."
    )


def write_plan(grid) -> None:
    """ROOT/sweep_plan.json: the grid file, the sweep-wide overrides and every point (index,
    name, overrides) of the grid, whichever points this invocation runs (`--index`); the last
    sweep of a root wins. `dllm-jax report` lists the planned points that have no run."""
    record = {"grid": grid.path, "overrides": [[k, v] for k, v in grid.overrides], "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "points": [{"index": p.index, "name": p.name, "overrides": p.overrides} for p in grid.points]}
    paths.makedirs(grid.root)
    paths.write_text(paths.join(grid.root, PLAN_FILE), json.dumps(record, indent=1))


@contextlib.contextmanager
def _label(text: str):
    """$DLLM_JAX_RUN_LABEL set to `text` while a point runs (in this process or its child)."""
    from dllm_jax.train import RUN_LABEL_ENV

    old = os.environ.get(RUN_LABEL_ENV)
    os.environ[RUN_LABEL_ENV] = text
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(RUN_LABEL_ENV, None)
        else:
            os.environ[RUN_LABEL_ENV] = old


def _run_in_process(point) -> str:
    from dllm_jax.train import train

    summary = train(point.config, point.workdir)
    return "interrupted" if summary.get("interrupted") else "finished"


class _Forward:
    """While a child runs, SIGTERM to the sweep is passed on (train checkpoints and exits)."""

    def __init__(self, child):
        self.child, self.received, self._old = child, False, None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.received = True
        self.child.send_signal(signum)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _run_child(grid, point) -> str:
    cmd = point_command(grid, point, python=sys.executable)
    child = subprocess.Popen(cmd)
    with _Forward(child) as fwd:
        try:
            rc = child.wait()
        except KeyboardInterrupt:  # the terminal sent SIGINT to the child too; let it checkpoint
            rc = child.wait()
            fwd.received = True
    if point_status(point.workdir) == "done":
        return "finished"
    if fwd.received or rc in (0, -signal.SIGINT, -signal.SIGTERM):
        return "interrupted"
    return f"failed (exit code {rc})"


def point_summary(workdir: str) -> str:
    """What a point's workdir says of its training: steps done, final losses, tokens/s of the
    steps alone and MFU of its last training record ('' when it has none)."""
    from dllm_jax.metrics import read_metrics

    try:
        records = read_metrics(workdir)
    except DllmError:
        return ""
    train_recs = [r for r in records if "loss" in r and "val_loss" not in r]
    vals = [r for r in records if isinstance(r.get("val_loss"), (int, float))]
    parts = []
    if train_recs:
        last = train_recs[-1]
        parts.append(f"step {last['step']}, loss {last['loss']:.4f}")
    if vals:
        parts.append(f"val_loss {vals[-1]['val_loss']:.4f}")
    speed = [r for r in train_recs if isinstance(r.get("tokens_per_sec"), (int, float))]
    if speed:
        parts.append(f"{speed[-1]['tokens_per_sec']:,.0f} tokens/s" + (" (steps alone)" if "step_seconds" in speed[-1] else ""))
        if isinstance(speed[-1].get("mfu"), (int, float)):
            parts.append(f"MFU {100 * speed[-1]['mfu']:.1f}%")
    return ", ".join(parts)


def run_points(grid, points, in_process: bool) -> list[dict]:
    """Run (or skip) each point, and score each ensemble once its members are finished; returns one
    {'index', 'name', 'status', 'seconds'} per point and per ensemble scored (index '-')."""
    results = []
    for i, point in enumerate(points, 1):
        label = f"point {i}/{len(points)} {point.name}"
        status = point_status(point.workdir)
        t0 = time.perf_counter()
        if status == "done":
            try:
                check_finished_config(point)
                outcome = "skipped (done)"
            except ConfigError as e:
                log.error("%s", e)
                outcome = "failed (config differs)"
        else:
            print(f"[sweep] {label} (grid index {point.index}): {'resuming' if status == 'partial' else 'starting'} in {point.workdir}", flush=True)
            try:
                with _label(label):
                    outcome = _run_in_process(point) if in_process else _run_child(grid, point)
            except (KeyboardInterrupt, SystemExit):
                raise
            except DllmError as e:
                log.error("point %s failed: %s", point.name, e)
                outcome = f"failed ({type(e).__name__})"
            except Exception:  # noqa: BLE001 - one point's bug must not lose the others
                log.exception("point %s failed", point.name)
                outcome = "failed (exception)"
        seconds = round(time.perf_counter() - t0, 1)
        if status != "done":
            _record_attempt(point.workdir, outcome, seconds)
            detail = point_summary(point.workdir)
            print(f"[sweep] {label}: {outcome} in {seconds:.1f} s" + (f"; {detail}" if detail else ""), flush=True)
        results.append({"index": point.index, "name": point.name, "status": outcome, "seconds": seconds})
        if outcome == "finished" or outcome.startswith("skipped"):  # an ensemble whose last member this was
            scored = run_ensembles(grid, [point], in_process)
            results += scored
            if any(r["status"] == "interrupted" for r in scored):
                print("[sweep] ensemble scoring was interrupted; stopping. Rerun the same command to resume.", flush=True)
                break
        if outcome == "interrupted":
            print(f"[sweep] point {point.name} was interrupted (checkpoint saved); stopping. Rerun the same command to resume.", flush=True)
            break
    return results


def _record_attempt(workdir: str, outcome: str, seconds: float) -> None:
    """Append this attempt's wall time and machine to the workdir (the report sums them)."""
    from dllm_jax.study.runs import TIMES_FILE, machine_info

    if not paths.isdir(workdir):
        return
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "outcome": outcome, "seconds": seconds, **machine_info()}
    paths.append_text(paths.join(workdir, TIMES_FILE), json.dumps(record) + "\n")


def _print_list(grid) -> None:
    from dllm_jax.study import ensemble

    for p in grid.points:
        sets = " ".join(f"{k}={v}" for k, v in p.overrides.items())
        print(f"{p.index:3d}  {point_status(p.workdir):8s} {p.name:24s} {sets}")
    for g in ensemble.groups(grid):
        print(f"  -  {ensemble.status(g):8s} {g.name:24s} ensemble of {', '.join(p.name for p in g.members)}")


def _scored_steps(workdir: str) -> int:
    from dllm_jax.metrics import read_metrics

    try:
        return sum(1 for r in read_metrics(workdir) if "val_loss" in r)
    except DllmError:
        return 0


def _score_child(group) -> str:
    """Score `group` in a child process (`ensemble.main`); its outcome as `_run_child`'s."""
    from dllm_jax.study import ensemble

    child = subprocess.Popen(ensemble.child_command(group, sys.executable))
    with _Forward(child) as fwd:
        try:
            rc = child.wait()
        except KeyboardInterrupt:
            rc = child.wait()
            fwd.received = True
    if rc == 0:
        return "finished"
    return "interrupted" if fwd.received or rc in (-signal.SIGINT, -signal.SIGTERM) else f"failed (exit code {rc})"


def run_ensembles(grid, points, in_process: bool = False) -> list[dict]:
    """Score every ensemble (`dllm_jax.study.ensemble`) that has a member among `points` and
    whose members are all finished, in a child process each (`in_process`: in this one); one
    result per ensemble scored."""
    from dllm_jax.study import ensemble

    selected, results = {p.name for p in points}, []
    for g in ensemble.groups(grid):
        if not selected & {p.name for p in g.members} or ensemble.status(g) != "todo":
            continue
        print(f"[sweep] ensemble {g.name}: scoring {len(g.members)} members at their shared evaluation steps", flush=True)
        t0, before = time.perf_counter(), _scored_steps(g.workdir)
        try:
            if in_process:
                ensemble.evaluate_group(g)
                outcome = "finished"
            else:
                outcome = _score_child(g)
        except (KeyboardInterrupt, SystemExit):
            raise
        except DllmError as e:
            log.error("ensemble %s failed: %s", g.name, e)
            outcome = f"failed ({type(e).__name__})"
        n = _scored_steps(g.workdir) - before
        seconds = round(time.perf_counter() - t0, 1)
        _record_attempt(g.workdir, outcome, seconds)
        print(f"[sweep] ensemble {g.name}: {outcome} in {seconds:.1f} s ({n} steps scored)", flush=True)
        results.append({"index": "-", "name": g.name, "status": outcome, "seconds": seconds})
    return results


def run(args) -> int:
    grid = load_grid(args.config, args.root, args.overrides, args.grid)
    points = grid.select(args.index)
    if args.print_only:
        for p in points:
            print(shlex.join(point_command(grid, p, python=sys.executable)))
        return 0
    if args.list:
        _print_list(grid)
        return 0
    if paths.exists(grid.root) and not paths.isdir(grid.root):
        raise ConfigError(f"--root {grid.root!r} is a file; give a directory for the runs (it is created if missing)")
    check_finished_configs(points)
    todo = [p for p in points if point_status(p.workdir) != "done"]
    check_corpus_paths(todo)
    check_warmups(todo)
    check_corpus_budgets(todo)
    write_plan(grid)
    results = run_points(grid, points, in_process=args.in_process or args.index is not None)
    print("[sweep] summary:")
    for r in results:
        print(f"  {r['index']:>3} {r['name']:24s} {r['status']:24s} {r['seconds']:9.1f}s")
    bad = [r for r in results if not (r["status"] == "finished" or r["status"].startswith("skipped"))]
    started = [r for r in results if r["index"] != "-"]
    if len(started) < len(points):
        print(f"[sweep] {len(points) - len(started)} point(s) not started")
    return 1 if bad or len(started) < len(points) else 0
