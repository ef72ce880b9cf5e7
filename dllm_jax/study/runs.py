"""Reading a sweep: every run under a root, its validation curve, and how runs group.

A run is a workdir with `config.json` (resolved config), `run.json` (params, flops_per_token,
data stats: unique_tokens, epochs, steps_per_epoch, ...) and `metrics.jsonl`. Its curve is
its validation records (those with `val_loss`), one per step (a resumed run's later record
for a step wins), with `cloze_acc` / `cloze_acc_norm` where periodic cloze evaluation ran.

Standard errors (`Run.curve_stderr`): a cloze record carries its binomial standard errors
(`cloze_acc_stderr`, `cloze_acc_norm_stderr`) and item count `cloze_n`; for runs logged before
those keys the error is sqrt(p(1-p)/n) with n = min(eval.cloze_examples, validation rows)
(`Run.cloze_items`), and unknown (None) when n is (eval.cloze_examples = 0 and no row count
in run.json). val_loss has no standard error here.

Cloze records from rescoring files (`load_runs(root, cloze_from=...)`, decided here): by default
('train') a run's cloze values are the ones training logged in metrics.jsonl. With 'eval' they
come instead from the files `dllm-jax eval --task cloze --step all` wrote in <workdir>/eval/
(`cloze-len<K>[-both][-<C>way][-n<N>]_step<S>.json`, `dllm_jax.evaluation.cli`): every
training-time cloze value is dropped, each file's accuracy, standard errors and item count are
put on the validation record of its step (a step without one gets a record with its epoch and
tokens seen, and no val_loss), and the task is the files' (`Run.cloze_config`). Where one step
was scored with several item counts the largest wins. Not automatic: a run may hold both, and
the numbers a report shows must not change because a file appeared. The runs' files must be one
task; 'eval:<task>' (e.g. 'eval:cloze-len1-both') picks one where several were scored.

Corpus (`Run.corpus`, `Run.data_fingerprint`): the data location of the run's config
(data.store, data.paths or data.tfds_name) and the token store's content fingerprint that
training recorded in data_stats.json (None for runs without one).

Grouping (decided here): a run's *model* is its parameter count; its *budget* is its unique
tokens U; its *series* is the objective plus every setting that differs from the defaults
among the keys that vary across the sweep, other than the model shape, U, epochs and
bookkeeping keys (e.g. 'ar input_mask_rate=0.3' in the ablation grid). Within one
(model, budget) panel the AR series are compared with the MDM series. A run's *family* is its
series without the tuning keys (`TUNING_KEYS`: weight decay, MIR): the variants of a tuning
sweep form one family, whose best run at each budget is the '<family>-tuned' series
(`dllm_jax.study.series`). Ensembles (`dllm_jax.study.ensemble`): a run whose run.json lists
`ensemble` members is the series '<member 0's series>-ensemble' (a family of its own); members
other than member 0 (the smallest `train.member_seed` of runs otherwise alike; never a series key) are left out of the panels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os

from dllm_jax import paths
from dllm_jax.config import flatten, how_key
from dllm_jax.metrics import read_metrics

log = logging.getLogger("dllm_jax")

DONE_FILE = "DONE"
STDERR_KEYS = {"cloze_acc": "cloze_acc_stderr", "cloze_acc_norm": "cloze_acc_norm_stderr"}
TIMES_FILE = "sweep_times.jsonl"  # one record per `dllm-jax sweep` attempt at the point (wall seconds, machine)
PLAN_FILE = "sweep_plan.json"  # in the sweep root: the grid's points, written by `dllm-jax sweep` before it starts any
CLOZE_KEYS = ("cloze_acc", "cloze_acc_norm", "cloze_acc_stderr", "cloze_acc_norm_stderr", "cloze_n")
# keys that never name a series: the panel and model axes; besides these, the keys that do not
# change what a run learns (`dllm_jax.config.how_key`) never name one either
_NOT_SERIES = ("objective", "data.unique_tokens", "data.epochs", "train.num_steps",
               "model.d_model", "model.n_layers", "model.n_heads", "model.n_kv_heads", "model.head_dim", "model.d_ff",
               "model.num_experts", "model.experts_per_token", "model.scan_layers", "model.dtype")
# keys a tuning sweep varies (Kim, Kotha et al.: weight decay; Xu et al.: MIR): they name a series,
# but not its family (`Run.family`)
TUNING_KEYS = ("train.weight_decay", "ar.mir_weight", "ar.mir_rate", "ar.mir_rate_min", "ar.mir_prefix")
# the ensemble member key: runs that differ only in it are replicates of one series, not series
REPLICATE_KEYS = ("train.member_seed",)
ENSEMBLE_SUFFIX = "-ensemble"


@dataclasses.dataclass
class Run:
    name: str
    workdir: str
    config: dict  # flat: 'data.unique_tokens' -> value
    info: dict  # run.json
    val: list  # validation records sorted by step
    train_records: list
    done: bool
    series: str = ""
    data_stats: dict = dataclasses.field(default_factory=dict)  # data_stats.json (data_fingerprint, corpus_tokens, ...)
    cloze_config: dict | None = None  # the task of the cloze records when they come from eval files ('eval.cloze_*' keys)
    eval_cloze_tasks: list = dataclasses.field(default_factory=list)  # the cloze rescoring tasks in <workdir>/eval/
    family: str = ""  # the series without the tuning keys (TUNING_KEYS)
    # an ensemble member other than member 0: a run whose config equals another's but for
    # REPLICATE_KEYS, with a larger train.member_seed (`assign_series`); not a series of its own
    replicate: bool = False

    @property
    def ensemble(self) -> list:
        """The member runs' names when this is an ensemble's directory (`study.ensemble`), else []."""
        members = self.info.get("ensemble")
        return list(members) if isinstance(members, list) else []

    @property
    def corpus(self) -> str:
        """The data location of the run's config: data.store, data.tfds_name or data.paths."""
        c = self.config
        if c.get("data.store"):
            return f"data.store={c['data.store']!r}"
        if c.get("data.source") == "tfds":
            return f"data.tfds_name={c.get('data.tfds_name')!r}"
        return f"data.paths={c.get('data.paths')!r}"

    @property
    def data_fingerprint(self) -> str | None:
        """The content fingerprint of the token store the run trained on (data_stats.json), if recorded."""
        return self.data_stats.get("data_fingerprint")

    @property
    def objective(self) -> str:
        return self.config.get("objective", "?")

    @property
    def unique_tokens(self) -> int:
        return int(self.info.get("unique_tokens") or self.config.get("data.unique_tokens") or 0)

    @property
    def params(self) -> int:
        return int(self.info.get("params", 0))

    @property
    def epochs(self) -> float:
        """Planned passes over U (the budget / U; fractional when num_steps cuts the last epoch)."""
        steps, per_epoch = self.info.get("num_steps"), self.info.get("steps_per_epoch")
        if steps and per_epoch:
            return steps / per_epoch
        return float(self.config.get("data.epochs", 0))

    def curve(self, metric: str) -> tuple[list, list, list]:
        """(epochs, tokens_seen, values) of the validation records that have `metric`."""
        recs = [r for r in self.val if isinstance(r.get(metric), (int, float))]
        return [r["epoch"] for r in recs], [r["tokens_seen"] for r in recs], [float(r[metric]) for r in recs]

    @property
    def cloze_items(self) -> int | None:
        """Cloze items per evaluation for records without `cloze_n`: eval.cloze_examples, capped by the
        validation rows (run.json's val_sequences) as `build_cloze` caps it; None when unknown."""
        asked, rows = int(self.config.get("eval.cloze_examples") or 0), self.info.get("val_sequences")
        if asked and rows:
            return min(asked, int(rows))
        return asked or (int(rows) if rows else None)

    def curve_stderr(self, metric: str) -> list:
        """The standard error of each value of `curve(metric)` (same order), None where unknown."""
        key = STDERR_KEYS.get(metric)
        out = []
        for r in self.val:
            if not isinstance(r.get(metric), (int, float)):
                continue
            if key is None:
                out.append(None)
            elif isinstance(r.get(key), (int, float)):
                out.append(float(r[key]))
            else:
                n, p = r.get("cloze_n") or self.cloze_items, float(r[metric])
                out.append(math.sqrt(p * (1 - p) / n) if n else None)
        return out

    def wall_seconds(self) -> float | None:
        """Wall time of the sweep's attempts at this run (training, evaluation, compilation), if recorded."""
        attempts = self.attempts()
        return sum(a["seconds"] for a in attempts) if attempts else None

    def attempts(self) -> list:
        path = paths.join(self.workdir, TIMES_FILE)
        if not paths.exists(path):
            return []
        return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]

    def seconds(self) -> float | None:
        """Time of the optimiser steps alone (no compilation, evaluation or checkpoints), from the
        training records: each record's `step_seconds` times the steps since the previous record
        (records since `metrics.StepTimer`). Older records have only `tokens_per_sec`, which
        counted everything in their window (evaluation, checkpoints, compilation): their time is
        tokens / tokens_per_sec and `seconds_include_overheads` is True."""
        total, prev_step, prev_tokens, timed = 0.0, 0, 0, False
        for r in self.train_records:
            if isinstance(r.get("step_seconds"), (int, float)):
                total += r["step_seconds"] * (r["step"] - prev_step)
            elif r.get("tokens_per_sec") and "window_seconds" not in r:  # an old record
                total += (r["tokens_seen"] - prev_tokens) / r["tokens_per_sec"]
            else:  # a window that timed no step (only the compiling one): the next record's pace covers it
                continue
            prev_step, prev_tokens, timed = r["step"], r["tokens_seen"], True
        return total if timed else None

    @property
    def seconds_include_overheads(self) -> bool:
        """True when `seconds()` comes from records logged before step times were split from
        evaluation, checkpoint and compile time (their tokens/s counted those too)."""
        return any(r.get("tokens_per_sec") and "step_seconds" not in r and "window_seconds" not in r for r in self.train_records)

    def overhead_seconds(self) -> dict:
        """Cumulative compile / eval / checkpoint seconds of the run (its last training record's
        `*_seconds_total`), {} for runs logged before them."""
        for r in reversed(self.train_records):
            if "train_seconds_total" in r:
                return {k: r.get(f"{k}_seconds_total") for k in ("compile", "eval", "checkpoint")}
        return {}


def machine_info() -> dict:
    """The CPU model, core count, OS and Python of this machine (no JAX import)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def _load_json(path):
    from dllm_jax.files import read_json

    return read_json(path, "run file")


def load_run(workdir: str) -> Run | None:
    cfg_path, info_path = paths.join(workdir, "config.json"), paths.join(workdir, "run.json")
    if not paths.exists(cfg_path):
        return None
    info = _load_json(info_path) if paths.exists(info_path) else {}
    records = read_metrics(workdir)
    by_step = {}
    for r in records:
        if "val_loss" in r and isinstance(r["val_loss"], (int, float)):
            by_step[r["step"]] = r
    train = [r for r in records if "val_loss" not in r and "loss" in r]
    stats_path = paths.join(workdir, "data_stats.json")
    stats = _load_json(stats_path) if paths.exists(stats_path) else {}
    return Run(paths.basename(workdir if paths.is_url(workdir) else os.path.normpath(workdir)), workdir, flatten(_load_json(cfg_path)), info,
               [by_step[s] for s in sorted(by_step)], train, paths.exists(paths.join(workdir, DONE_FILE)),
               data_stats=stats if isinstance(stats, dict) else {})


def cloze_evals(workdir: str) -> dict:
    """{task: {step: record}} of the cloze rescoring files in <workdir>/eval/ (module docstring):
    record = {'step', 'cloze_acc', 'cloze_acc_norm', their standard errors, 'cloze_n', 'cloze':
    the file's task record, 'file'}; per (task, step) the file with the most items."""
    from dllm_jax.evaluation.cli import cloze_task_name, parse_cloze_file_name

    directory = paths.join(workdir, "eval")
    out: dict = {}
    if not paths.isdir(directory):
        return out
    for name in sorted(paths.listdir(directory)):
        parsed = parse_cloze_file_name(name)
        if parsed is None:
            continue
        res = _load_json(paths.join(directory, name))
        if not isinstance(res, dict) or res.get("task") != "cloze" or not isinstance(res.get("acc"), (int, float)):
            continue
        cloze = res.get("cloze") or {k: parsed[k] for k in ("choices", "length", "context")}
        rec = {"step": int(res.get("step", parsed["step"])), "cloze_acc": float(res["acc"]), "cloze_n": int(res.get("n") or 0) or None,
               "cloze": cloze, "file": name}
        for key, src in (("cloze_acc_norm", "acc_norm"), ("cloze_acc_stderr", "acc_stderr"), ("cloze_acc_norm_stderr", "acc_norm_stderr")):
            if isinstance(res.get(src), (int, float)):
                rec[key] = float(res[src])
        steps = out.setdefault(cloze_task_name(cloze), {})
        if rec["step"] not in steps or (rec["cloze_n"] or 0) > (steps[rec["step"]]["cloze_n"] or 0):
            steps[rec["step"]] = rec
    return out


def _parse_cloze_from(cloze_from: str) -> str | None:
    """'train' -> None (training-time records); 'eval' -> '' (any one task); 'eval:<task>' -> '<task>'."""
    from dllm_jax.errors import ConfigError

    text = str(cloze_from).strip()
    if text == "train":
        return None
    if text == "eval":
        return ""
    if text.startswith("eval:") and text[5:].startswith("cloze-len"):
        return text[5:]
    raise ConfigError(f"--cloze-from={cloze_from!r} must be 'train' (the cloze records training logged), 'eval' (the "
                      "`dllm-jax eval --task cloze --step all` files in each run's eval/ folder) or 'eval:<task>', "
                      "e.g. eval:cloze-len1-both")


def use_cloze_evals(runs, cloze_from: str = "train") -> None:
    """Set each run's cloze records from its rescoring files (module docstring); with 'train'
    only note which rescoring tasks each run has (`Run.eval_cloze_tasks`). Raises ConfigError
    when 'eval' finds no file, or files of several tasks (naming them and the runs), or
    'eval:<task>' names a task no run has."""
    from dllm_jax.errors import ConfigError

    wanted = _parse_cloze_from(cloze_from)
    if wanted is None:  # the file names say which tasks there are; the files are not read
        from dllm_jax.evaluation.cli import parse_cloze_file_name

        for r in runs:
            directory = paths.join(r.workdir, "eval")
            names = paths.listdir(directory) if paths.isdir(directory) else []
            r.eval_cloze_tasks = sorted({p["task"] for p in map(parse_cloze_file_name, names) if p})
        return
    found = {r.name: cloze_evals(r.workdir) for r in runs}
    for r in runs:
        r.eval_cloze_tasks = sorted(found[r.name])
    tasks: dict = {}
    for r in runs:
        for task in found[r.name]:
            tasks.setdefault(task, []).append(r.name)
    how = "make them with `dllm-jax eval --workdir RUN --task cloze --step all`, or drop --cloze-from"
    if not tasks:
        raise ConfigError(f"--cloze-from {cloze_from}: no run has cloze rescoring files (eval/cloze-len<K>..._step<N>.json); {how}")
    if wanted and wanted not in tasks:
        raise ConfigError(f"--cloze-from {cloze_from}: no run has {wanted} files; the runs have: {', '.join(sorted(tasks))}")
    if not wanted and len(tasks) > 1:
        listed = "; ".join(f"{t} ({', '.join(names)})" for t, names in sorted(tasks.items()))
        raise ConfigError(f"--cloze-from eval: the runs' rescoring files are of {len(tasks)} cloze tasks, whose accuracies "
                          f"cannot be compared: {listed}. Pick one with --cloze-from eval:<task>, e.g. --cloze-from eval:{min(tasks)}")
    task = wanted or next(iter(tasks))
    for r in runs:
        records = found[r.name].get(task, {})
        by_step = {v["step"]: {k: x for k, x in v.items() if k not in CLOZE_KEYS} for v in r.val}
        spe, per_step = r.info.get("steps_per_epoch"), (r.info.get("global_batch") or 0) * (r.info.get("seq_len") or 0)
        for step, rec in records.items():
            base = by_step.setdefault(step, {"step": step, **({"epoch": step / spe} if spe else {}),
                                             **({"tokens_seen": step * per_step} if per_step else {})})
            base.update({k: rec[k] for k in CLOZE_KEYS if k in rec})
        r.val = [by_step[s] for s in sorted(by_step) if "epoch" in by_step[s]]
        if records:
            c = next(iter(records.values()))["cloze"]
            r.cloze_config = {"eval.cloze_choices": c.get("choices", 4), "eval.cloze_length": c.get("length"),
                              "eval.cloze_context": c.get("context", "left"), "cloze_task": task}


def load_plan(root: str) -> dict | None:
    """The sweep's plan (ROOT/sweep_plan.json, written by `dllm-jax sweep`), or None."""
    path = paths.join(paths.expand(root), PLAN_FILE)
    return _load_json(path) if paths.exists(path) else None


def load_runs(root: str, cloze_from: str = "train") -> list:
    """Every run directly under `root` (sorted by name), with series labels assigned; cloze
    records from training ('train') or from rescoring files ('eval', 'eval:<task>'; module docstring)."""
    root = paths.expand(root)
    if not paths.isdir(root):
        from dllm_jax.errors import ConfigError

        raise ConfigError(f"--root {root!r} is not a directory; point it at the --root of a sweep")
    runs = []
    for name in paths.listdir(root):
        if paths.isdir(paths.join(root, name)):
            run = load_run(paths.join(root, name))
            if run is not None:
                runs.append(run)
    use_cloze_evals(runs, cloze_from)
    assign_series(runs)
    return runs


def assign_series(runs) -> None:
    from dllm_jax.config import default_config

    defaults = flatten(default_config().to_dict())
    keys = sorted({k for r in runs for k in r.config})

    def value(r, k):  # a key newer than the run (absent from its config.json) has its default value
        return r.config.get(k, defaults.get(k))

    varying = [k for k in keys if len({json.dumps(value(r, k), sort_keys=True, default=str) for r in runs}) > 1
               and k not in _NOT_SERIES and k not in REPLICATE_KEYS and not how_key(k)]
    groups = {}
    for r in runs:
        if not r.ensemble:
            same = json.dumps({k: value(r, k) for k in keys if k not in REPLICATE_KEYS}, sort_keys=True, default=str)
            groups.setdefault(same, []).append(r)
    for group in groups.values():  # member 0 = the smallest member_seed (a sweep-wide base seed is no replicate)
        first = min(int(r.config.get("train.member_seed") or 0) for r in group)
        for r in group:
            r.replicate = int(r.config.get("train.member_seed") or 0) != first
    for r in runs:
        differ = [k for k in varying if value(r, k) != defaults.get(k)]
        tail = ENSEMBLE_SUFFIX if r.ensemble else ""  # an ensemble is a series of its own, and a family of its own
        r.series = " ".join([r.objective] + [f"{k.split('.')[-1]}={value(r, k)}" for k in differ]) + tail
        r.family = " ".join([r.objective] + [f"{k.split('.')[-1]}={value(r, k)}" for k in differ if k not in TUNING_KEYS]) + tail


def model_label(params: int) -> str:
    return f"{params / 1e9:.2f}B params" if params >= 1e9 else f"{params / 1e6:.2f}M params"


def panels(runs) -> dict:
    """{(params, unique_tokens): {series: run}} (a later run of the same series wins, with a warning).
    Ensemble members other than member 0 (`Run.replicate`) are in no panel: their series is
    member 0's, and the ensemble's directory stands for them together."""
    out = {}
    for r in runs:
        if r.replicate:
            continue
        cell = out.setdefault((r.params, r.unique_tokens), {})
        if r.series in cell:
            log.warning("runs %s and %s are the same series %r at U=%d; using %s", cell[r.series].name, r.name, r.series, r.unique_tokens, r.name)
        cell[r.series] = r
    return dict(sorted(out.items()))
