"""Where metrics go: `metrics.jsonl` in the workdir (one JSON object per line), TensorBoard
event files (tensorboardX) and a tqdm progress bar. Only process 0 writes."""

from __future__ import annotations

import json
import logging
import math

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


class MetricsWriter:
    def __init__(self, workdir: str, *, resume_step: int = 0, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        workdir = paths.expand(workdir)
        self.path = paths.join(workdir, METRICS_FILE)
        self._tb = None
        if not self.enabled:
            return
        # a resumed run drops records written after its checkpoint (they will be redone)
        kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
        paths.write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard and _tensorboard_ok(workdir):
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(paths.join(workdir, "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, record: dict, prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        paths.append_text(self.path, json.dumps(record) + "\n")
        if self._tb is not None:
            step = record.get("step", 0)
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{prefix}{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """A progress bar with loss, tokens/s and ETA (tqdm), or nothing."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, disable=not enabled or jax.process_index() != 0)

    def update(self, steps: int, **postfix) -> None:
        if postfix:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)
        self.bar.update(steps)

    def write(self, text: str) -> None:
        self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
