"""MaxText (AI-Hypercomputer/maxtext, pip package `maxtext`, tested with 0.2.5) as a speed peer
for bench/train_speed.py --peer maxtext.

MaxText runs in a subprocess with its own Python (a separate virtual environment: its pins
are not ours), on its synthetic data (`dataset_type=synthetic`), with the bench size mapped
onto its config keys. Its step times are what its training loop logs per step
("completed step: N, seconds: S": wall time between the ends of consecutive loop
iterations; the loop dispatches asynchronously and waits for the previous step's metrics,
so in steady state that is one step's time). Install:

    PYENV_VERSION=3.12.1 python3.12 -m venv /work/mtvenv   # any Python >= 3.12
    /work/mtvenv/bin/pip install maxtext==0.2.5 --no-deps
    /work/mtvenv/bin/pip install jax==<ours> flax optax orbax-checkpoint absl-py omegaconf pydantic \\
        ml-collections grain tensorboardx sentencepiece tiktoken aqtp chex jaxtyping transformers \\
        tensorboard-plugin-profile jsonlines pillow datasets qwix drjax einshape tokamax pathwaysutils \\
        ml-goodput-measurement cloud-accelerator-diagnostics google-cloud-monitoring \\
        google-api-python-client gcsfs google-cloud-mldiagnostics jinja2 sympy

(`--no-deps` then the runtime imports: the package's own requirement lists pull in TPU/GPU
and Google Cloud wheels that a CPU comparison does not need.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

MODULE = "maxtext.trainers.pre_train.train"
INSTALL_HINT = ("install MaxText into a separate virtual environment (not this one: its pins differ), e.g. "
                "`python3.12 -m venv /work/mtvenv && /work/mtvenv/bin/pip install maxtext==0.2.5 --no-deps` plus its runtime "
                "imports (see bench/peer_maxtext.py), then pass --peer-python /work/mtvenv/bin/python")
_STEP = re.compile(r"completed step: (\d+), seconds: ([0-9.]+).*?loss: ([0-9.naninf]+)")

# How the two configs differ, whatever the bench does (MaxText behaviour, not settings).
KNOWN_DIFFERENCES = (
    "MaxText's synthetic batches carry segment ids (all 1) and its dot-product attention ANDs a segment mask "
    "with the causal mask; ours is plain causal",
    "MaxText always wraps each layer in jax.checkpoint; remat_policy=minimal_with_context saves every projection "
    "and the attention output, so only elementwise ops and the attention scores/softmax are recomputed in the "
    "backward pass (ours: model.remat=none, nothing recomputed)",
)


def _usage_error(message: str) -> SystemExit:
    """Print `message` (one `error: ...` line) and exit with status 2, the library's bad-input status."""
    print(message, file=sys.stderr)
    return SystemExit(2)


def find(peer_python: str | None) -> tuple[str, str, str]:
    """(python, maxtext package directory, maxtext version) for `peer_python` (None: this
    interpreter); SystemExit with the install hint when MaxText does not import there."""
    python = peer_python or sys.executable
    probe = ("import os, importlib.metadata as m, maxtext; "
             "print(os.path.dirname(maxtext.__file__)); print(m.version('maxtext'))")
    try:
        r = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=300)
    except OSError as e:
        raise _usage_error(f"error: --peer-python {python!r} cannot run ({e}); {INSTALL_HINT}")
    if r.returncode != 0:
        where = "this interpreter" if peer_python is None else f"--peer-python {python!r}"
        raise _usage_error(f"error: MaxText does not import in {where} ({r.stderr.strip().splitlines()[-1:]}); {INSTALL_HINT}")
    package_dir, version = r.stdout.strip().splitlines()[-2:]
    return python, package_dir, version


def config_args(size: tuple, dtype: str, n_devices: int, remat_policy: str, extra=()) -> list[str]:
    """MaxText `key=value` overrides for a bench size (d, layers, heads, ff, vocab, seq, batch):
    a Llama-2-style decoder (RMSNorm, RoPE, SwiGLU, no biases, untied output head) like ours,
    float32 weights, `dtype` activations, plain dot-product attention, no checkpoints, no
    TensorBoard."""
    d, layers, heads, ff, vocab, seq, batch = size
    per_device = batch / n_devices
    return [
        "decoder_block=llama2", f"base_emb_dim={d}", f"base_num_decoder_layers={layers}", f"base_num_query_heads={heads}",
        f"base_num_kv_heads={heads}", f"head_dim={d // heads}", f"base_mlp_dim={ff}", f"vocab_size={vocab}",
        f"max_target_length={seq}", f"per_device_batch_size={per_device:g}", f"dtype={dtype}", "weight_dtype=float32",
        "logits_via_embedding=false", "normalization_layer_epsilon=1e-6", "attention=dot_product", "scan_layers=true",
        f"remat_policy={remat_policy}", "dataset_type=synthetic", "enable_checkpointing=false", "enable_tensorboard=false",
        "gradient_clipping_threshold=1.0", "adam_b1=0.9", "adam_b2=0.95", "adam_weight_decay=0.1", *extra,
    ]


def run(python: str, package_dir: str, args: list[str], steps: int, warmup: int, log_path: str | None = None) -> dict:
    """Run MaxText for warmup + steps + 1 steps; the step times of steps warmup .. warmup+steps-1
    (the last iteration only dispatches its step, so its logged time is not a step time)."""
    total = warmup + steps + 1
    env = dict(os.environ, DECOUPLE_GCLOUD="TRUE")  # no Google Cloud clients / monitoring
    with tempfile.TemporaryDirectory(prefix="maxtext_peer_") as out:
        cmd = [python, "-m", MODULE, os.path.join(package_dir, "configs", "base.yml"), "run_name=dllm_jax_peer",
               f"base_output_directory={out}", f"steps={total}", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log = r.stdout + r.stderr
    if log_path:
        with open(log_path, "w") as f:
            f.write(" ".join(cmd) + "\n" + log)
    steps_seen = {int(m.group(1)): (float(m.group(2)), m.group(3)) for m in _STEP.finditer(log)}
    wanted = list(range(warmup, warmup + steps))
    if r.returncode != 0 or any(s not in steps_seen for s in wanted):
        tail = "\n".join(log.strip().splitlines()[-15:])
        raise _usage_error(f"error: MaxText run failed (exit {r.returncode}); command: {' '.join(cmd)}\n{tail}")
    params = re.search(r"number parameters: ([0-9.]+) billion", log)
    return {"times": [steps_seen[s][0] for s in wanted], "loss": float(steps_seen[wanted[-1]][1]),
            "params": float(params.group(1)) * 1e9 if params else None, "command": cmd}
