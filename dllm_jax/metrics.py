"""Where metrics go: `metrics.jsonl` in the workdir (one JSON object per line), the trackers
(`Tracker`: TensorBoard event files via tensorboardX, Weights & Biases) and progress on stdout: a tqdm bar on a terminal, plain lines
elsewhere. Only process 0 writes. `StepTimer` splits the wall time of training into the
optimiser steps and the rest (compilation, evaluation, checkpoints) for the records."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import uuid

import jax
from tqdm.auto import tqdm

from dllm_jax import paths

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str) -> list[dict]:
    path = paths.join(paths.expand(workdir), METRICS_FILE)
    if not paths.exists(path):
        return []
    from dllm_jax.errors import DataError

    lines = [(n, line) for n, line in enumerate(paths.read_bytes(path).decode("utf-8", errors="replace").splitlines(), 1)
             if line.strip()]
    out = []
    for i, (n, line) in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # a record cut short (killed mid-write, disk full): skip it
                logging.getLogger("dllm_jax").warning("%s:%d: incomplete last record skipped", path, n)
                continue
            raise DataError(f"{path}:{n}: not a JSON record ({e.msg}); the metrics file is damaged: "
                            "remove that line (or the file) and rerun") from None
    return out


def _tensorboard_ok(workdir: str) -> bool:
    """tensorboardX writes to local directories, gs:// (needs google-cloud-storage) and s3://
    (needs boto3); elsewhere TensorBoard is skipped with a warning (metrics.jsonl is kept)."""
    if not paths.is_url(workdir):
        return True
    import importlib.util  # pylint: disable=import-outside-toplevel

    needs = {"gs": ("google.cloud.storage", "google-cloud-storage"), "s3": ("boto3", "boto3")}.get(workdir.split("://", 1)[0])
    if needs is not None:
        try:
            if importlib.util.find_spec(needs[0]) is not None:
                return True
        except ModuleNotFoundError:
            pass
    why = f"install {needs[1]}" if needs else "tensorboardX writes only to local paths, gs:// and s3://"
    logging.getLogger("dllm_jax").warning("TensorBoard events are not written to %s (%s); metrics go to %s", workdir, why, METRICS_FILE)
    return False


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


def _scalars(record: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """Where a run's records go besides metrics.jsonl: `write(record, prefix)` each record
    (its 'step' is the x axis; the numeric fields are the scalars, named prefix + key),
    `close()` at the end. `MetricsWriter` builds the trackers the config asks for."""

    def write(self, record: dict, prefix: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """TensorBoard event files in <workdir>/tensorboard (tensorboardX; train.tensorboard). A
    resumed run purges the events after the step it resumed from."""

    def __init__(self, workdir: str, resume_step: int = 0):
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(paths.join(workdir, "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict, prefix: str) -> None:
        for key, value in _scalars(record, prefix).items():
            self._tb.add_scalar(key, value, record.get("step", 0))

    def close(self) -> None:
        self._tb.close()


WANDB_ID_FILE = "wandb_run_id"


def require_wandb(project: str):
    """The wandb module; ConfigError naming train.wandb_project and the fix when it is not installed."""
    try:
        import wandb
    except ImportError:
        from dllm_jax.errors import ConfigError

        raise ConfigError(f"train.wandb_project={project!r} needs Weights & Biases: pip install 'dllm_jax[wandb]' "
                          "(or set --config.train.wandb_project='' to log to metrics.jsonl and TensorBoard only)") from None
    return wandb


class WandbTracker(Tracker):
    """Weights & Biases (train.wandb_project; `pip install 'dllm_jax[wandb]'`). The run id is
    kept in <workdir>/wandb_run_id so that a resumed run logs into the same W&B run; W&B keeps
    the steps it already has (it ignores a resumed run's repeats of steps it logged before the
    checkpoint). Its local files go to <workdir>/wandb (a temporary directory for remote
    workdirs). WANDB_MODE=offline and the other WANDB_* variables apply as usual."""

    def __init__(self, workdir: str, project: str, config: dict | None = None):
        wandb = require_wandb(project)
        id_path = paths.join(workdir, WANDB_ID_FILE)
        run_id = paths.read_text(id_path).strip() if paths.exists(id_path) else uuid.uuid4().hex[:12]
        if not paths.exists(id_path):
            paths.write_text(id_path, run_id + "\n")
        if paths.is_url(workdir):
            import tempfile

            local = tempfile.mkdtemp(prefix="dllm_jax_wandb_")
        else:
            local = workdir  # W&B writes into its wandb/ subdirectory
        self._run = wandb.init(project=project, id=run_id, resume="allow", dir=local, config=config,
                               name=paths.basename(workdir.rstrip("/")))

    def write(self, record: dict, prefix: str) -> None:
        self._run.log(_scalars(record, prefix), step=int(record.get("step", 0)))

    def close(self) -> None:
        self._run.finish()


class MetricsWriter:
    """metrics.jsonl plus the trackers asked for: TensorBoard (`tensorboard`) and W&B
    (`wandb_project`, with `run_config` as its run config). Only process 0 writes."""

    def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True, wandb_project: str = "",
                 run_config: dict | None = None):
        self.enabled = jax.process_index() == 0
        workdir = paths.expand(workdir)
        self.path = paths.join(workdir, METRICS_FILE)
        self.trackers: list[Tracker] = []
        if not self.enabled:
            return
        if wandb_project:
            self.trackers.append(WandbTracker(workdir, wandb_project, run_config))
        if tensorboard and _tensorboard_ok(workdir):
            self.trackers.append(TensorBoardTracker(workdir, resume_step))
        # a resumed run drops records written after its checkpoint (they will be redone)
        kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
        paths.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict, prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        paths.append_text(self.path, json.dumps(record) + "\n")
        for tracker in self.trackers:
            tracker.write(record, prefix)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


# ---------------------------------------------------------------- timing
PAUSE_KINDS = ("compile", "eval", "checkpoint")  # what a training record times apart from the steps


class _Pause:
    def __init__(self, timer: "StepTimer", kind: str):
        self.timer, self.kind, self.seconds = timer, kind, 0.0

    def __enter__(self):
        self.t0 = self.timer.clock()
        return self

    def __exit__(self, *exc):
        self.seconds = self.timer.clock() - self.t0
        self.timer._paused[self.kind] += self.seconds
        self.timer._process_paused[self.kind] += self.seconds
        return False


class StepTimer:
    """Splits the wall time of a training loop into optimiser steps and everything else.

    The loop runs what is not an optimiser step inside `pause(kind)` (kind: 'compile',
    'eval', 'checkpoint', or one of `extra_kinds`), counts each step with `count_step`, and
    calls `window()` at each log record: the window's wall time minus its pauses is the time
    of its timed steps (data loading included). A process's first step compiles the train
    step: the loop times it (batch, compilation, execution) as 'compile' and counts it with
    `timed=False`, so it is in no step time. Async dispatch: the caller waits for the
    outstanding steps before entering a pause (or their device time lands in the pause) and
    for the window's last step before `window()` (device_get of its metrics), so each
    window's step time is the device time of its steps.

    `clock`: seconds as a float (default `time.perf_counter`); tests inject a fake one.
    `totals`: the cumulative `*_seconds_total` of a resumed run (`resume_totals`)."""

    def __init__(self, clock=time.perf_counter, totals: dict | None = None, extra_kinds=()):
        self.clock = clock
        self.kinds = PAUSE_KINDS + tuple(extra_kinds)
        self.totals = {k: 0.0 for k in self.total_keys()}
        self.totals.update({k: float(v) for k, v in (totals or {}).items() if k in self.totals})
        self.started = self._window_start = clock()
        self._paused = dict.fromkeys(self.kinds, 0.0)
        self._process_paused = dict.fromkeys(self.kinds, 0.0)
        self._timed = self._process_timed = 0

    def total_keys(self) -> list:
        return ["train_seconds_total", "wall_seconds_total"] + [f"{k}_seconds_total" for k in self.kinds]

    def pause(self, kind: str) -> _Pause:
        """A context manager timing `kind` (its `.seconds` are set on exit)."""
        if kind not in self._paused:
            raise ValueError(f"unknown pause kind {kind!r}; one of {self.kinds}")
        return _Pause(self, kind)

    def count_step(self, timed: bool = True) -> None:
        self._timed += int(timed)
        self._process_timed += int(timed)

    def window(self) -> dict:
        """The record of the window since the previous call, and the new running totals:
        `step_seconds` (mean per timed step; absent when the window timed none, e.g. only
        the compiling step), `window_seconds` (its wall time), `{kind}_seconds` (time in
        each pause kind) and the `*_seconds_total` (whole run, resumes included)."""
        now = self.clock()
        wall = now - self._window_start
        paused = sum(self._paused.values())
        steps_time = max(wall - paused, 0.0)
        self.totals["train_seconds_total"] += steps_time
        self.totals["wall_seconds_total"] += wall
        for kind, secs in self._paused.items():
            self.totals[f"{kind}_seconds_total"] += secs
        rec = {"step_seconds": steps_time / self._timed} if self._timed else {}
        rec["window_seconds"] = wall
        rec.update({f"{kind}_seconds": secs for kind, secs in self._paused.items()})
        rec.update(self.totals)
        self._window_start, self._timed = now, 0
        self._paused = dict.fromkeys(self.kinds, 0.0)
        return rec

    def elapsed(self) -> float:
        """Wall seconds since this process's loop started."""
        return self.clock() - self.started

    def eta(self, steps_left: int) -> float | None:
        """Seconds to run `steps_left` more steps at this process's pace so far: its wall time
        less compilation, per timed step (evaluation and checkpoints included pro rata)."""
        if not self._process_timed:
            return None
        busy = self.elapsed() - self._process_paused["compile"]
        return max(busy, 0.0) / self._process_timed * steps_left


def resume_totals(records) -> dict:
    """The `*_seconds_total` of the last training record that has them (a resumed run carries
    them on; time after that record and before the checkpoint resumed from is not counted)."""
    for r in reversed(records):
        if "train_seconds_total" in r:
            return {k: v for k, v in r.items() if k.endswith("_seconds_total") and isinstance(v, (int, float))}
    return {}


def _clock_text(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


class Progress:
    """Training progress of process 0 on stdout.

    On a terminal (`enabled`, i.e. train.progress, and both stdout and stderr TTYs) a tqdm bar
    with loss, tokens/s, MFU and epoch, and the evaluation lines above it. Anywhere else (stdout
    piped or in a file, a sweep's log, train.progress=false) one plain line per log record
    (`update`) and one per evaluation (`write`), each prefixed with `desc`; never a bar's
    carriage-return updates."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str):
        self.total, self.desc = total, desc
        self.active = jax.process_index() == 0
        self.bar = None
        if self.active and enabled and _isatty(sys.stdout) and _isatty(sys.stderr):
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, steps: int, *, step: int, loss: float, tokens_per_sec=None, mfu=None, lr=None, epoch=None,
               elapsed=None, eta=None) -> None:
        """`steps` more steps done, now at `step`; the rest are the window's values."""
        if self.bar is not None:
            postfix = {"loss": f"{loss:.4g}"}
            if tokens_per_sec is not None:
                postfix["tok_s"] = f"{tokens_per_sec:,.0f}"
            if mfu is not None:
                postfix["mfu"] = f"{100 * mfu:.1f}%"
            if epoch is not None:
                postfix["epoch"] = f"{epoch:.2f}"
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(steps)
            return
        parts = [f"step {step}/{self.total}", f"loss {loss:.4f}"]
        if tokens_per_sec is not None:
            parts.append(f"tokens/s {tokens_per_sec:,.0f}")
        if mfu is not None:
            parts.append(f"MFU {100 * mfu:.1f}%")
        if lr is not None:
            parts.append(f"lr {lr:.3g}")
        if epoch is not None:
            parts.append(f"epoch {epoch:.2f}")
        if elapsed is not None:
            parts.append(f"elapsed {_clock_text(elapsed)}")
        parts.append(f"ETA {_clock_text(eta)}")
        self.write(" ".join(parts))

    def write(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(f"[{self.desc}] {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
