"""What a setting costs: AR train-step variants of one bench size timed interleaved in one process.

    python bench/step_variants.py --rounds 3 --steps 2 project "project:model.qk_norm=false" \
        "project:vocab=8191" "project:model.scan_layers=false" einsum

A variant is `PROJECTION[:KEY=VALUE,...]`: PROJECTION is `project` (the model as it is:
models.transformer.project) or `einsum` (the projections as plain jnp.einsum, i.e. JAX's own
weight-gradient dots, as before the CPU fix); KEY=VALUE are config overrides, plus `vocab=N`
for the tokenizer vocabulary (8191: embedding rows 8192 = 8191 + [MASK], no padding; the
default 8192 gives 8320 rows with model.vocab_multiple=128). Every variant is compiled first,
then each round runs --steps timed steps of every variant in turn, so a shared machine's load
hits all of them alike; medians over all rounds, and each variant's speed relative to the first.
Prints a markdown table (and the load average per round).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_speed as ts  # noqa: E402

from dllm_jax.models import transformer  # noqa: E402


def _einsum(equation, x, w):
    return jnp.einsum(equation, x, w)


PROJECTIONS = {"project": transformer.project, "einsum": _einsum}


def build(spec: str, size: str, dtype: str) -> ts.StepTimer:
    name, _, rest = spec.partition(":")
    sets = [kv.split("=", 1) for kv in rest.split(",") if kv]
    for key, value in [kv for kv in sets if kv[0] == "vocab"]:
        size_v = f"{size}-vocab{value}"
        ts.SIZES[size_v] = ts.SIZES[size][:4] + (int(value),) + ts.SIZES[size][5:]
        size = size_v
    sets = [kv for kv in sets if kv[0] != "vocab"]
    transformer.project = PROJECTIONS[name]
    try:
        timer = ts.StepTimer("ar", size, dtype, "none", sets, total_steps=1000)
        timer.run(0, warmup=1)  # traces and compiles with this projection
    finally:
        transformer.project = PROJECTIONS["project"]
    return timer


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+")
    p.add_argument("--size", default="small-34m", choices=sorted(ts.SIZES))
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    timers = [(spec, build(spec, args.size, args.dtype)) for spec in args.variants]
    times = {spec: [] for spec, _ in timers}
    loads = []
    for r in range(args.rounds):
        for spec, timer in timers:
            times[spec] += timer.run(args.steps)
        loads.append("/".join(f"{x:.1f}" for x in os.getloadavg()))
        print(f"round {r + 1}: " + ", ".join(f"{s} {np.median(v):.2f} s" for s, v in times.items()) + f" (load {loads[-1]})", flush=True)
    base = float(np.median(times[args.variants[0]]))
    print(f"\n{ts.machine()}; {args.size}, {args.dtype}; {args.rounds} rounds x {args.steps} steps; load per round {', '.join(loads)}\n")
    print("| variant | rows | median step (s) | min (s) | speed vs first |\n|---|---|---|---|---|")
    for spec, timer in timers:
        v = times[spec]
        print(f"| {spec} | {timer.model.cfg.vocab_size} | {np.median(v):.2f} | {np.min(v):.2f} | {base / np.median(v):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
