"""Two processes on 127.0.0.1 train exactly like one, and checkpoints move between process counts.

A 2-process run is `python -m dllm_jax train --coordinator 127.0.0.1:PORT ...` in two child
processes with 2 fake CPU devices each; a 1-process run is `train()` in this test process
(8 devices: the mesh changes too). Runs, the subprocesses overlapping the in-process ones:
  A: 2 processes, 8 steps, checkpoints at 4 and 8;  B: 1 process, the same config;
  C: A's checkpoint at step 4 resumed by 1 process;  D: B's step 4 resumed by 2 processes.
The per-step losses of A, C and D must equal B's (up to float summation order): same data
order (defined per global step), the same rows in the same batch positions (MDM masks
depend on the row), the same updates.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300
IDLE_S = 30  # no CPU used by any running process for this long: a deadlock


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, cache_dir: str) -> dict:
    env = dict(os.environ)
    # a persistent compilation cache, as pod users set one: a multi-process CPU run must turn
    # it off (distributed.no_persistent_cache_on_cpu_processes), or run D would deadlock in its
    # first step on the executables run A wrote there
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    return env


def _launch_two(config_file: str, workdir: str, log_dir: str) -> list[subprocess.Popen]:
    """Start a 2-process run (2 devices each); returns the Popen handles."""
    port = _free_port()
    env = _env(2, os.path.join(log_dir, "jax_cache"))
    env["JAX_COORDINATOR_BIND_ADDRESS"] = f"127.0.0.1:{port}"  # never listen beyond this machine
    base = [sys.executable, "-m", "dllm_jax", "train", "--config", config_file, "--workdir", workdir,
            "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = []
    for i in range(2):
        with open(os.path.join(log_dir, f"{os.path.basename(workdir)}_{i}.log"), "w") as log:
            procs.append(subprocess.Popen(base + ["--process-id", str(i)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process from /proc (None where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _tails(runs: dict[str, list[subprocess.Popen]], log_dir: str, lines: int = 12) -> str:
    out = []
    for name, procs in runs.items():
        for i, p in enumerate(procs):
            with open(os.path.join(log_dir, f"{name}_{i}.log"), errors="replace") as f:
                tail = f.read().splitlines()[-lines:]
            out.append(f"--- run {name} process {i} (exit {p.poll()}), last {len(tail)} log lines:\n" + "\n".join(tail))
    return "\n".join(out)


def _wait(runs: dict[str, list[subprocess.Popen]], log_dir: str, timeout_s: float = TIMEOUT_S, idle_s: float = IDLE_S) -> None:
    """Wait for every process of `runs`. Fails at once, with each process's last log lines,
    when one exits non-zero (its peers would wait for it) or when all that are still running
    have used no CPU for `idle_s` seconds (a deadlock: e.g. a collective one process never
    joins); at the latest after `timeout_s`. Kills whatever is left."""
    procs = [p for ps in runs.values() for p in ps]
    deadline = time.monotonic() + timeout_s
    last, idle_since = None, time.monotonic()
    try:
        while True:
            codes = [p.poll() for p in procs]
            if any(c not in (None, 0) for c in codes):
                pytest.fail("a process exited with an error:\n" + _tails(runs, log_dir))
            if all(c == 0 for c in codes):
                return
            cpu = [_cpu_seconds(p.pid) for p, c in zip(procs, codes) if c is None]
            now = time.monotonic()
            total = None if None in cpu else (len(cpu), sum(cpu))
            if total is None or last is None or total[0] != last[0] or total[1] - last[1] > 0.05:
                idle_since = now  # some process is working (or one just finished)
            last = total
            if now - idle_since > idle_s:
                pytest.fail(f"deadlock: the running processes used no CPU for {idle_s:.0f} s\n" + _tails(runs, log_dir))
            if now > deadline:
                pytest.fail(f"still running after {timeout_s:.0f} s\n" + _tails(runs, log_dir))
            time.sleep(1.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _drop_checkpoint(src: str, dst: str, step: int) -> None:
    shutil.copytree(src, dst)
    shutil.rmtree(os.path.join(dst, "checkpoints", str(step)))


def test_two_processes_match_one_and_resume_across_process_counts(tmp_path, corpus):
    from dllm_jax.data.pipeline import build_dataset
    from dllm_jax.train import train

    paths, cache = corpus
    # no validation set: nothing to evaluate, one compilation less per run
    cfg = tiny_config(paths, cache, "mdm", train__num_steps=8, train__log_every=1, train__checkpoint_every=4,
                      train__keep_last=2, train__eval_every=0, data__val_tokens=0, mesh__data=-1)
    build_dataset(cfg, None)  # tokenizer and token store built once, before the children read them
    config_file = tmp_path / "mh_config.py"
    config_file.write_text(
        "from dllm_jax.config import complete\n"
        f"def get_config():\n    return complete({cfg.to_dict()!r})\n"
    )
    logs, file = str(tmp_path), str(config_file)
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    runs = {"A": _launch_two(file, a, logs)}
    try:
        train(cfg, b)
    finally:
        _wait(runs, logs)

    ref = _losses(b)
    assert sorted(ref) == list(range(1, 9))
    two = _losses(a)
    assert sorted(two) == sorted(ref)
    for step in ref:
        assert two[step] == pytest.approx(ref[step], rel=2e-5), step
    assert len(set(ref.values())) == len(ref)  # the steps saw different data

    c, d = str(tmp_path / "C"), str(tmp_path / "D")
    _drop_checkpoint(a, c, 8)  # written by 2 processes -> resumed by 1
    _drop_checkpoint(b, d, 8)  # written by 1 process -> resumed by 2
    runs = {"D": _launch_two(file, d, logs)}
    try:
        train(cfg, c)
    finally:
        _wait(runs, logs)
    for run in (c, d):
        resumed = _losses(run)
        assert sorted(resumed) == list(range(1, 9))
        for step in range(5, 9):  # steps after the checkpoint: same data position, same state
            assert resumed[step] == pytest.approx(ref[step], rel=2e-5), (run, step)
    with open(os.path.join(c, "checkpoints", "8", "data", "process_0-of-1.json")) as f:
        assert json.load(f)["next_index"] == 8
    with open(os.path.join(logs, "D_1.log")) as f:
        assert "persistent compilation cache" in f.read()  # the guard, not luck, kept D from deadlocking


def test_wait_fails_fast_on_a_deadlock_with_the_last_log_lines(tmp_path):
    """The harness above: processes that stop using CPU are a deadlock, reported in seconds
    with their last log lines, not after the whole timeout."""
    (tmp_path / "X_0.log").write_text("step 4\nconnected to 3 peer ranks\n")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="(?s)deadlock.*run X process 0.*connected to 3 peer ranks"):
        _wait({"X": [proc]}, str(tmp_path), timeout_s=50, idle_s=2)
    assert time.monotonic() - start < 20
    assert proc.poll() is not None  # killed
