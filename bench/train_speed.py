"""Train-step speed of AR, MDM and block diffusion: tokens/s and MFU on this machine.

MFU = (model FLOPs per token from dllm_jax.flops x tokens/s) / peak, where the peak is
the best float32 matmul throughput this script measures in the same run (a jitted
2048^3 matmul on the same devices), so the number says how close the train step gets to
what this machine's matmul can do, not to a datasheet. Shared (cloud) CPUs are noisy, so
the peak is the best of 20 matmuls taken before, between and after the two objectives
(the highest peak gives the lowest, most conservative MFU), and a step's time is the
median of the timed steps.

    python bench/train_speed.py                 # the 'small-34m' model, every objective
    python bench/train_speed.py --size tiny     # a quick check
    python bench/train_speed.py --objectives ar,block_diffusion --block-size 16

Tokens/s counts training tokens (seq_len per row): block diffusion runs 2 * seq_len tokens
through the network for each row, and its FLOPs per token (objective.train_flops_per_token)
count that.

Writes bench/results/train_speed_<platform>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dllm_jax import config as config_lib  # noqa: E402
from dllm_jax import objectives, optim, sharding, train_step  # noqa: E402
from dllm_jax.study.runs import machine_info  # noqa: E402

SIZES = {
    # name: (d_model, n_layers, n_heads, d_ff, vocab, seq_len, batch)
    "tiny": (128, 2, 4, 384, 1024, 128, 16),
    "small-34m": (512, 8, 8, 1536, 8192, 256, 16),
    "base-110m": (768, 12, 12, 2048, 32768, 1024, 32),
}


def matmul_peak(n: int = 2048, repeats: int = 10, dtype=jnp.float32) -> float:
    """Best-of-`repeats` FLOP/s of a jitted n^3 matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def bench_objective(objective: str, size: str, steps: int, warmup: int, dtype: str, remat: str, overrides=()) -> dict:
    d, layers, heads, ff, vocab, seq, batch = SIZES[size]
    cfg = config_lib.default_config()
    cfg.objective = objective
    cfg.model.update(d_model=d, n_layers=layers, n_heads=heads, d_ff=ff, dtype=dtype, remat=remat)
    cfg.model.vocab_multiple = 1
    cfg.data.seq_len = seq
    cfg.train.batch_size = batch
    cfg.mdm.random_length_prob = 0.0  # fixed shapes for timing (it never changes shapes anyway)
    for key, value in overrides:
        config_lib.set_key(cfg, key, value)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    tokenizer_vocab = vocab - 1  # model rows = vocab
    model = train_step.build_model(cfg, tokenizer_vocab)
    ids = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=tokenizer_vocab)
    n_total = steps + warmup
    tx, lr = optim.make_optimizer(cfg.train, n_total), optim.lr_schedule(cfg.train, n_total)
    rng = np.random.RandomState(0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_RULES):
        shardings = train_step.state_shardings(model, tx, mesh, seq)
        state = train_step.init_state(model, tx, mesh, seq, 0)
        step = train_step.make_train_step(model, tx, cfg, ids, mesh, shardings, lr)
        batches = [sharding.global_batch(mesh, rng.randint(3, tokenizer_vocab, (batch, seq)).astype(np.int32)) for _ in range(4)]
        t0 = time.perf_counter()
        state, m = step(state, batches[0])
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        for i in range(1, warmup):
            state, m = step(state, batches[i % 4])
        jax.block_until_ready(m)
        times = []
        for i in range(steps):
            t = time.perf_counter()
            state, m = step(state, batches[i % 4])
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    step_s = float(np.median(times))
    fpt = objectives.build(cfg).train_flops_per_token(model.cfg, seq)
    return {
        "objective": objective, "size": size, "params": n_params, "seq_len": seq, "batch": batch,
        "step_seconds": step_s, "step_seconds_min": float(np.min(times)), "tokens_per_sec": batch * seq / step_s,
        "flops_per_token": fpt, "tflops_per_sec": fpt * batch * seq / step_s / 1e12, "compile_seconds": compile_s,
        "loss": float(m["loss"]),
    }


def machine() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"{machine_info()['cpu']}, {os.cpu_count()} cores, {len(jax.devices())} JAX CPU device(s)"
    return f"{dev.device_kind} x{len(jax.devices())}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small-34m", choices=sorted(SIZES))
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--dtype", default=None, help="compute dtype (default: float32 on CPU, bfloat16 on accelerators)")
    p.add_argument("--remat", default="none")
    p.add_argument("--objectives", default=",".join(objectives.names()), help="comma-separated (default: all registered)")
    p.add_argument("--block-size", type=int, default=16, help="block_diffusion.block_size")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set model.attention_impl=cudnn --set model.loss_chunk=256")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    platform_name = jax.devices()[0].platform
    dtype = args.dtype or ("float32" if platform_name == "cpu" else "bfloat16")
    peak_dtype = jnp.float32 if dtype == "float32" else jnp.bfloat16
    peak_n = 4096 if platform_name != "cpu" else 2048
    peaks = [matmul_peak(peak_n, repeats=20, dtype=peak_dtype)]
    print(f"machine: {machine()}\nmatmul peak ({jnp.dtype(peak_dtype).name}): {peaks[0] / 1e12:.3f} TFLOP/s", flush=True)
    rows = []
    sets = [("block_diffusion.block_size", str(args.block_size))] + [kv.split("=", 1) for kv in args.set]
    for objective in [o.strip() for o in args.objectives.split(",") if o.strip()]:
        rows.append(bench_objective(objective, args.size, args.steps, args.warmup, dtype, args.remat, sets))
        peaks.append(matmul_peak(peak_n, repeats=20, dtype=peak_dtype))
    peak = max(peaks)
    print("matmul peaks (before, between, after): " + ", ".join(f"{p / 1e12:.3f}" for p in peaks) + f" TFLOP/s; using {peak / 1e12:.3f}")
    for r in rows:
        r["mfu"] = r["tflops_per_sec"] * 1e12 / peak
        print(f"{r['objective']}: {r['params'] / 1e6:.1f}M params, {r['step_seconds']:.3f} s/step, {r['tokens_per_sec']:.0f} tokens/s, "
              f"MFU {100 * r['mfu']:.1f}% (compile {r['compile_seconds']:.1f}s)", flush=True)
    by_name = {r["objective"]: r for r in rows}
    ratios = {f"{o}_over_ar_step_time": by_name[o]["step_seconds"] / by_name["ar"]["step_seconds"] for o in by_name if o != "ar" and "ar" in by_name}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"machine": machine(), "platform": platform_name, "dtype": dtype, "overrides": args.set, "matmul_peak_flops": peak,
              "matmul_peaks_measured": peaks, "steps_timed": args.steps, "rows": rows,
              **ratios, "jax": jax.__version__, "commit": commit}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"train_speed_{platform_name}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"Machine: {result['machine']}; JAX {jax.__version__}; compute {dtype}; matmul peak measured in the same run: "
             f"{peak / 1e12:.3f} TFLOP/s (best of {', '.join(f'{p / 1e12:.3f}' for p in peaks)} before/between/after); "
             f"step time: median of {args.steps} steps." + (f" Overrides: {' '.join(args.set)}." if args.set else ""), "",
             "| objective | model | params | seq x batch | step (s) | tokens/s | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['objective']} | {r['size']} | {r['params'] / 1e6:.1f}M | {r['seq_len']} x {r['batch']} | {r['step_seconds']:.3f} | "
                     f"{r['tokens_per_sec']:.0f} | {r['tflops_per_sec']:.3f} | {100 * r['mfu']:.1f}% |")
    lines += [""] + [f"{k.replace('_over_ar_step_time', '')} / AR step time: {v:.3f}" for k, v in ratios.items()]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
