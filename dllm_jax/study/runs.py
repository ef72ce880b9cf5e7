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

Grouping (decided here): a run's *model* is its parameter count; its *budget* is its unique
tokens U; its *series* is the objective plus every setting that differs from the defaults
among the keys that vary across the sweep, other than the model shape, U, epochs and
bookkeeping keys (e.g. 'ar input_mask_rate=0.3' in the ablation grid). Within one
(model, budget) panel the AR series are compared with the MDM series. A run's *family* is its
series without the tuning keys (`TUNING_KEYS`: weight decay, MIR): the variants of a tuning
sweep form one family, whose best run at each budget is the '<family>-tuned' series
(`dllm_jax.study.series`).
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
# keys that never name a series: the panel and model axes; besides these, the keys that do not
# change what a run learns (`dllm_jax.config.how_key`) never name one either
_NOT_SERIES = ("objective", "data.unique_tokens", "data.epochs", "train.num_steps",
               "model.d_model", "model.n_layers", "model.n_heads", "model.n_kv_heads", "model.head_dim", "model.d_ff",
               "model.num_experts", "model.experts_per_token", "model.scan_layers", "model.dtype")
# keys a tuning sweep varies (Kim, Kotha et al.: weight decay; Xu et al.: MIR): they name a series,
# but not its family (`Run.family`)
TUNING_KEYS = ("train.weight_decay", "ar.mir_weight", "ar.mir_rate", "ar.mir_rate_min", "ar.mir_prefix")


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
    family: str = ""  # the series without the tuning keys (TUNING_KEYS)

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
        """Training wall time estimated from the logged throughput (tokens / tokens_per_sec per window)."""
        recs = [r for r in self.train_records if r.get("tokens_per_sec")]
        if not recs:
            return None
        total, prev = 0.0, 0
        for r in recs:
            total += (r["tokens_seen"] - prev) / r["tokens_per_sec"]
            prev = r["tokens_seen"]
        return total


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
    return Run(paths.basename(workdir if paths.is_url(workdir) else os.path.normpath(workdir)), workdir, flatten(_load_json(cfg_path)), info,
               [by_step[s] for s in sorted(by_step)], train, paths.exists(paths.join(workdir, DONE_FILE)))


def load_runs(root: str) -> list:
    """Every run directly under `root` (sorted by name), with series labels assigned."""
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
    assign_series(runs)
    return runs


def assign_series(runs) -> None:
    from dllm_jax.config import default_config

    defaults = flatten(default_config().to_dict())
    keys = sorted({k for r in runs for k in r.config})
    varying = [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1
               and k not in _NOT_SERIES and not how_key(k)]
    for r in runs:
        differ = [k for k in varying if r.config.get(k) != defaults.get(k)]
        r.series = " ".join([r.objective] + [f"{k.split('.')[-1]}={r.config.get(k)}" for k in differ])
        r.family = " ".join([r.objective] + [f"{k.split('.')[-1]}={r.config.get(k)}" for k in differ if k not in TUNING_KEYS])


def model_label(params: int) -> str:
    return f"{params / 1e9:.2f}B params" if params >= 1e9 else f"{params / 1e6:.2f}M params"


def panels(runs) -> dict:
    """{(params, unique_tokens): {series: run}} (a later run of the same series wins, with a warning)."""
    out = {}
    for r in runs:
        cell = out.setdefault((r.params, r.unique_tokens), {})
        if r.series in cell:
            log.warning("runs %s and %s are the same series %r at U=%d; using %s", cell[r.series].name, r.name, r.series, r.unique_tokens, r.name)
        cell[r.series] = r
    return dict(sorted(out.items()))
