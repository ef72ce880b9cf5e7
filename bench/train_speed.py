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

Against a peer (AR only): the same config through MaxText, interleaved with ours in
--rounds rounds (MaxText first, then ours, each --warmup untimed + --steps timed steps),
medians over all timed steps, the ratio = MaxText step time / ours (> 1: ours faster):

    python bench/train_speed.py --peer maxtext --peer-python /work/mtvenv/bin/python \
        --also model.qk_norm=false --peer-remat minimal_with_context,full

Writes bench/results/train_speed_<platform>_vs_maxtext.json and .md (see bench/peer_maxtext.py
for the config mapping and how to install MaxText).
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


def _usage_error(message: str) -> SystemExit:
    """Print `message` (one `error: ...` line) and exit with status 2, the library's bad-input status."""
    print(message, file=sys.stderr)
    return SystemExit(2)


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


class StepTimer:
    """One objective's compiled train step and state at a bench size, kept so that timed
    steps can be taken in several rounds (interleaved with a peer's runs).

    The model is built the way a run builds it: `vocab` (SIZES) is the tokenizer's vocabulary
    and the embedding has `train_step.model_vocab_rows` rows for the run's config (with the
    default `model.vocab_multiple`, 8192 -> 8320 when the objective needs a [MASK] row)."""

    def __init__(self, objective: str, size: str, dtype: str, remat: str, overrides=(), total_steps: int = 100):
        d, layers, heads, ff, vocab, seq, batch = SIZES[size]
        cfg = config_lib.default_config()
        cfg.objective = objective
        cfg.model.update(d_model=d, n_layers=layers, n_heads=heads, d_ff=ff, dtype=dtype, remat=remat)
        cfg.data.seq_len = seq
        cfg.train.batch_size = batch
        cfg.mdm.random_length_prob = 0.0  # fixed shapes for timing (it never changes shapes anyway)
        for key, value in overrides:
            config_lib.set_key(cfg, key, value)
        self.cfg, self.size, self.objective, self.seq, self.batch = cfg, size, objective, seq, batch
        self.mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
        self.model = train_step.build_model(cfg, vocab)
        ids = objectives.TokenIds(pad_id=0, eos_id=2, mask_id=vocab)
        tx, lr = optim.make_optimizer(cfg.train, total_steps), optim.lr_schedule(cfg.train, total_steps)
        rng = np.random.RandomState(0)
        with self._context():
            shardings = train_step.state_shardings(self.model, tx, self.mesh, seq)
            self.state = train_step.init_state(self.model, tx, self.mesh, seq, 0)
            self.step = train_step.make_train_step(self.model, tx, cfg, ids, self.mesh, shardings, lr)
            self.batches = [sharding.global_batch(self.mesh, rng.randint(3, vocab, (batch, seq)).astype(np.int32)) for _ in range(4)]
        self.calls, self.compile_s, self.times, self.metrics = 0, 0.0, [], None

    def _context(self):
        import contextlib

        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(sharding.LOGICAL_RULES))
        return stack

    def run(self, steps: int, warmup: int = 0) -> list[float]:
        """`warmup` untimed steps (the first call also compiles), then `steps` timed ones."""
        with self._context():
            for _ in range(warmup):
                t0 = time.perf_counter()
                self.state, self.metrics = self.step(self.state, self.batches[self.calls % 4])
                jax.block_until_ready(self.metrics)
                if self.calls == 0:
                    self.compile_s = time.perf_counter() - t0
                self.calls += 1
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                self.state, self.metrics = self.step(self.state, self.batches[self.calls % 4])
                jax.block_until_ready(self.metrics)
                times.append(time.perf_counter() - t)
                self.calls += 1
        self.times += times
        return times

    def result(self) -> dict:
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params))
        step_s = float(np.median(self.times))
        fpt = objectives.build(self.cfg).train_flops_per_token(self.model.cfg, self.seq)
        return {
            "objective": self.objective, "size": self.size, "params": n_params, "vocab_rows": self.model.cfg.vocab_size,
            "seq_len": self.seq, "batch": self.batch, "step_seconds": step_s, "step_seconds_min": float(np.min(self.times)),
            "step_seconds_all": self.times, "tokens_per_sec": self.batch * self.seq / step_s, "flops_per_token": fpt,
            "tflops_per_sec": fpt * self.batch * self.seq / step_s / 1e12, "compile_seconds": self.compile_s,
            "loss": float(self.metrics["loss"]),
        }


def bench_objective(objective: str, size: str, steps: int, warmup: int, dtype: str, remat: str, overrides=()) -> dict:
    timer = StepTimer(objective, size, dtype, remat, overrides, total_steps=steps + warmup)
    timer.run(steps, warmup=max(warmup, 1))
    return timer.result()


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
    p.add_argument("--peer", choices=["maxtext"], default=None,
                   help="also run this peer on the same config (AR only), interleaved with ours, and print the ratio")
    p.add_argument("--peer-python", default=None,
                   help="the Python that has the peer installed (default: this interpreter); see bench/peer_maxtext.py")
    p.add_argument("--peer-remat", default="minimal_with_context",
                   help="MaxText remat_policy, comma-separated for several peer rows (its default 'full' recomputes the "
                        "forward pass; 'minimal_with_context' saves every projection and the attention output, the "
                        "closest to our model.remat=none)")
    p.add_argument("--peer-set", action="append", default=[], metavar="KEY=VALUE", help="extra MaxText config override")
    p.add_argument("--also", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="with --peer: also time ours with these overrides (on top of --set), e.g. --also model.qk_norm=false")
    p.add_argument("--rounds", type=int, default=3, help="with --peer: interleaved rounds (peer, ours, ...) of --steps timed steps each")
    args = p.parse_args()
    platform_name = jax.devices()[0].platform
    dtype = args.dtype or ("float32" if platform_name == "cpu" else "bfloat16")
    if args.peer:
        return run_peer(args, platform_name, dtype)
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


def _loadavg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def run_peer(args, platform_name: str, dtype: str) -> int:
    """Ours (AR, plus each --also variant) and MaxText on the same config, in `--rounds`
    interleaved rounds of `--warmup` untimed + `--steps` timed steps each (MaxText restarts
    and recompiles every round; its compile is not timed); medians over all timed steps."""
    import peer_maxtext

    objective_list = [o.strip() for o in args.objectives.split(",") if o.strip()]
    if args.objectives != ",".join(objectives.names()) and objective_list != ["ar"]:
        raise _usage_error("error: --peer compares the AR train step only; drop --objectives or pass --objectives ar")
    python, package_dir, version = peer_maxtext.find(args.peer_python)
    sets = [kv.split("=", 1) for kv in args.set]
    variants = [("ours", sets)] + [
        ("ours " + also, sets + [kv.split("=", 1) for kv in also.split(",")]) for also in args.also]
    remats = [x.strip() for x in args.peer_remat.split(",") if x.strip()]
    mt_args = {remat: peer_maxtext.config_args(SIZES[args.size], dtype, len(jax.devices()), remat, args.peer_set) for remat in remats}
    peer_name = {remat: f"MaxText {version} remat_policy={remat}" for remat in remats}
    print(f"machine: {machine()}; load average {_loadavg()}\npeer: MaxText {version} ({python})", flush=True)
    timers = [(name, StepTimer("ar", args.size, dtype, args.remat, v, total_steps=1000)) for name, v in variants]
    peer_times, rounds, peer = {remat: [] for remat in remats}, [], {}

    def write_results():  # after every round, so an interrupted run keeps what it measured
        d, layers, heads, ff, vocab, seq, batch = SIZES[args.size]
        tokens = batch * seq
        mt_step = float(np.median(peer_times[remats[0]]))  # the ratio's reference: the first --peer-remat
        rows = []
        for remat in remats:
            step_s = float(np.median(peer_times[remat]))
            rows.append({"name": peer_name[remat], "step_seconds": step_s, "tokens_per_sec": tokens / step_s, "ratio": mt_step / step_s,
                         "params": peer[remat]["params"], "vocab_rows": vocab, "loss": peer[remat]["loss"],
                         "step_seconds_all": peer_times[remat]})
        for name, timer in timers:
            res = timer.result()
            rows.append({"name": name, "step_seconds": res["step_seconds"], "tokens_per_sec": res["tokens_per_sec"],
                         "ratio": mt_step / res["step_seconds"], "params": res["params"], "vocab_rows": res["vocab_rows"],
                         "loss": res["loss"], "step_seconds_all": res["step_seconds_all"], "compile_seconds": res["compile_seconds"]})
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        command = "python bench/train_speed.py " + " ".join(sys.argv[1:])
        result = {"machine": machine(), "platform": platform_name, "dtype": dtype, "size": args.size,
                  "config": dict(zip(("d_model", "n_layers", "n_heads", "d_ff", "vocab", "seq_len", "batch"), SIZES[args.size])),
                  "command": command, "peer": f"maxtext {version}", "peer_commands": {remat: " ".join(peer[remat]["command"][1:]) for remat in remats},
                  "peer_args": mt_args, "known_differences": list(peer_maxtext.KNOWN_DIFFERENCES), "steps_per_round": args.steps,
                  "warmup_per_round": args.warmup, "rounds": rounds, "rows": rows, "jax": jax.__version__, "commit": commit}
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, f"train_speed_{platform_name}_vs_maxtext")
        with open(stem + ".json", "w") as f:
            json.dump(result, f, indent=2)
        lines = [f"Machine: {result['machine']}; JAX {jax.__version__}; AR, {args.size} (d_model {d}, {layers} layers, {heads} heads, "
                 f"d_ff {ff}, vocab {vocab}, seq {seq}, batch {batch}), {dtype}; commit {commit}.",
                 f"Command: `{command}`. {len(rounds)} (of {args.rounds}) interleaved rounds (MaxText, then ours) of {args.warmup} warm-up + "
                 f"{args.steps} timed steps each; step time = median of all timed steps. Load average per round (1/5/15 min): "
                 + "; ".join(f"{x['load_before']} -> {x['load_after']}" for x in rounds) + ".", "",
                 f"| run | params | vocab rows | step (s) | tokens/s | speed vs {peer_name[remats[0]]} |", "|---|---|---|---|---|---|"]
        for row in rows:
            params = f"{row['params'] / 1e6:.1f}M" if row["name"].startswith("ours") else f"{row['params'] / 1e9:.3f}B (its log)"
            lines.append(f"| {row['name']} | {params} | {row['vocab_rows']} | {row['step_seconds']:.3f} | {row['tokens_per_sec']:.0f} | {row['ratio']:.2f}x |")
        lines += ["", "Per round (median step s): " + "; ".join(
            ", ".join(f"{k} {v:.2f}" for k, v in x.items() if isinstance(v, float)) for x in rounds),
            "", f"MaxText overrides: `{' '.join(mt_args[remats[0]])}`.", "",
            "Differences that remain: " + "; ".join(peer_maxtext.KNOWN_DIFFERENCES) + "; ours by default has QK-norm "
            "(MaxText's llama2 block has none: see the model.qk_norm=false row if timed) and a [MASK] row in the "
            "embedding and head, padded to model.vocab_multiple (the vocab rows column; the extra logits are excluded "
            "from the softmax)."]
        with open(stem + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
    for r in range(args.rounds):
        record = {"round": r, "load_before": _loadavg()}
        for remat in remats:
            peer[remat] = peer_maxtext.run(python, package_dir, mt_args[remat], args.steps, args.warmup)
            peer_times[remat] += peer[remat]["times"]
            record[peer_name[remat]] = float(np.median(peer[remat]["times"]))
        for name, timer in timers:
            record[name] = float(np.median(timer.run(args.steps, warmup=args.warmup)))
        record["load_after"] = _loadavg()
        rounds.append(record)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:.3f} s" for k, v in record.items() if isinstance(v, float))
              + f" (load {record['load_before']} -> {record['load_after']})", flush=True)
        write_results()
    return 0


if __name__ == "__main__":
    sys.exit(main())
