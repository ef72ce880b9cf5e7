"""Tokens to a validation ELBO: the MDM with uniform t against bell-shaped proposals over t.

Trains the CPU grid's model (experiments/cpu_grid.py: 4 layers, d 192, vocab 1024, seq 64,
batch 32; 2.3M parameters) on one corpus once per proposal, same data order, same seed, same
validation rows and the same validation draws (validation always draws t uniformly, so every
curve is the same estimator of the same ELBO), and reports for each proposal the training
tokens it needs to reach the validation ELBO the baseline (the first proposal, normally
'uniform') reaches at 25/50/75/100% of the budget; the speedup is the baseline's tokens over
the proposal's (Hong et al. 2026, arXiv:2605.13026, report up to ~4x on LM1B with the recipe).
A target the proposal never reaches within the budget is reported as '>budget'.

    python bench/t_proposal.py --corpus /work/shared/data/tinyshakespeare.txt \
        --proposals uniform,beta:2:2,logit_normal:0:1 --tokens 2e6 --out bench/results/t_proposal_shakespeare

A proposal is `uniform`, `beta:A:B` or `logit_normal:MU:SIGMA`, optionally followed by
`@importance` (default: `@recipe`, the paper's change of training distribution). Runs write
to <out>/runs/<name> and are reused when finished (rerun with more proposals to add them);
results go to <out>.json and <out>.md.

Choices: the learning rate is constant after the warmup by default (`--schedule constant`):
a decaying schedule (the grid's WSD) lowers every run's loss in its final phase, so tokens
to the baseline's final value would only resolve differences within that phase.
`--schedule wsd` measures with the grid's schedule instead. The corpus is repeated as
often as the budget needs (the whole corpus minus --val-tokens is the unique data).
Validation: --val-tokens held-out tokens, all of them every --eval-every steps (eval.val_draws
= 4 Monte Carlo draws per row), so the curves share their noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def parse_proposal(spec: str) -> dict:
    """'beta:2:2@importance' -> the mdm.* overrides (and a name)."""
    body, _, mode = spec.strip().partition("@")
    mode = mode or "recipe"
    parts = body.split(":")
    name, args = parts[0], parts[1:]
    try:
        values = [float(a) for a in args]
    except ValueError:
        values = None
    keys = {"uniform": (), "beta": ("mdm.t_beta_a", "mdm.t_beta_b"), "logit_normal": ("mdm.t_logit_mu", "mdm.t_logit_sigma")}
    if name not in keys or values is None or len(values) != len(keys[name]) or mode not in ("recipe", "importance"):
        raise SystemExit(f"error: proposal {spec!r}: give uniform, beta:A:B or logit_normal:MU:SIGMA, optionally @recipe or @importance")
    out = {"mdm.t_proposal": name, "mdm.t_proposal_mode": mode, **dict(zip(keys[name], values))}
    label = body.replace(":", "_") + ("" if mode == "recipe" or name == "uniform" else "_iw")
    return {"name": label, "spec": spec, "overrides": out}


def base_config(args):
    from dllm_jax.config import load_config, set_key

    cfg = load_config(os.path.join(ROOT, "experiments", "cpu_grid.py"))
    cfg.data.paths = args.corpus
    cfg.data.cache_dir = os.path.join(args.out, "cache")
    cfg.data.unique_tokens = 0  # all of the corpus but the validation tokens
    cfg.data.val_tokens = args.val_tokens
    cfg.train.eval_batches = 0  # every validation row, every time
    cfg.train.eval_every = args.eval_every
    cfg.train.log_every = args.eval_every
    cfg.train.checkpoint_every = 10**9  # one at the end (a finished run is reused)
    cfg.train.keep_last = 1
    cfg.train.schedule = args.schedule
    cfg.train.progress = False
    cfg.train.tensorboard = False
    cfg.eval.cloze_examples = 0
    cfg.eval.at_epochs = ""
    cfg.eval.at_epoch_end = False
    cfg.seed = args.seed
    for kv in args.set:
        key, _, value = kv.partition("=")
        set_key(cfg, key, value)
    return cfg


def size_budget(cfg, args) -> tuple[int, int, int]:
    """(epochs, steps, unique tokens) for --tokens training tokens on this corpus (a probe of the data)."""
    from dllm_jax.data.pipeline import build_dataset

    probe = build_dataset(cfg, os.path.join(args.out, "probe"))
    unique = probe.stats["unique_tokens"]
    per_step = cfg.train.batch_size * cfg.data.seq_len
    steps = int(args.tokens // per_step)
    return max(1, math.ceil(steps * per_step / unique)), steps, unique


def run_one(cfg, workdir: str) -> tuple[list, float]:
    """Train (or reuse a finished run); returns ([(tokens, val_loss)], seconds)."""
    from dllm_jax.metrics import read_metrics
    from dllm_jax.train import train

    from dllm_jax.config import to_json

    done = os.path.join(workdir, "bench_done.json")
    if os.path.exists(done):
        with open(done) as f:
            saved = json.load(f)
        if saved["config"] != to_json(cfg):
            raise SystemExit(f"error: {workdir} holds a finished run with other settings (budget, corpus or --set); "
                             "give another --out or delete that run")
        seconds = saved["seconds"]
    else:
        t0 = time.perf_counter()
        train(cfg, workdir)
        seconds = time.perf_counter() - t0
        with open(done, "w") as f:
            json.dump({"seconds": seconds, "config": to_json(cfg)}, f)
    val = sorted({r["tokens_seen"]: r["val_loss"] for r in read_metrics(workdir) if "val_loss" in r}.items())
    train_recs = [r for r in read_metrics(workdir) if "elbo" in r and "val_loss" not in r]
    return val, seconds, train_recs


def tokens_to_reach(curve, target: float):
    """First tokens (linear interpolation between evaluations) at which the curve is <= target; None if never."""
    prev = None
    for tokens, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(tokens)
            (t0, l0) = prev
            return t0 + (l0 - target) / (l0 - loss) * (tokens - t0)
        prev = (tokens, loss)
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="text file(s) (a glob; .gz read directly)")
    p.add_argument("--proposals", default="uniform,beta:2:2,logit_normal:0:1", help="comma-separated; the first is the baseline")
    p.add_argument("--tokens", type=float, default=2e6, help="training tokens per run")
    p.add_argument("--eval-every", type=int, default=50, help="steps between validations")
    p.add_argument("--val-tokens", type=int, default=16384, help="held-out tokens, all scored at every validation")
    p.add_argument("--schedule", default="constant", choices=["constant", "wsd", "cosine"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE config override for every run (repeatable)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "t_proposal"))
    args = p.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    proposals = [parse_proposal(s) for s in args.proposals.split(",") if s.strip()]
    os.makedirs(args.out, exist_ok=True)

    from dllm_jax.config import set_key, validate

    cfg = base_config(args)
    epochs, steps, unique = size_budget(cfg, args)
    cfg.data.epochs, cfg.train.num_steps = epochs, steps
    tokens_per_step = cfg.train.batch_size * cfg.data.seq_len
    print(f"{unique:,} unique tokens, {steps} steps x {tokens_per_step} = {steps * tokens_per_step:,} tokens "
          f"({steps * tokens_per_step / unique:.1f} epochs), validation every {args.eval_every} steps", flush=True)

    results = {}
    for prop in proposals:
        run_cfg = cfg.copy_and_resolve_references()
        for key, value in prop["overrides"].items():
            set_key(run_cfg, key, value)
        validate(run_cfg)
        curve, seconds, train_recs = run_one(run_cfg, os.path.join(args.out, "runs", prop["name"]))
        results[prop["name"]] = {"spec": prop["spec"], "overrides": prop["overrides"], "val": curve, "seconds": round(seconds, 1),
                                 "train": [{k: r[k] for k in ("step", "loss", "elbo") if k in r} for r in train_recs]}
        print(f"{prop['name']}: final val ELBO {curve[-1][1]:.4f} nats/token after {curve[-1][0]:,} tokens ({seconds / 60:.1f} min)", flush=True)

    base_name = proposals[0]["name"]
    base = results[base_name]["val"]
    total = steps * tokens_per_step
    fractions = (0.25, 0.5, 0.75, 1.0)
    targets = []
    for f in fractions:  # the baseline's best value by that point (a running minimum: noise never lowers a target later)
        seen = [loss for tokens, loss in base if tokens <= f * total + 1e-9]
        targets.append(min(seen) if seen else base[0][1])
    rows = []
    for name, res in results.items():
        reach = [tokens_to_reach(res["val"], t) for t in targets]
        base_reach = [tokens_to_reach(base, t) for t in targets]
        res["tokens_to_target"] = reach
        res["speedup"] = [None if r is None or b is None else b / r for r, b in zip(reach, base_reach)]
        rows.append((name, res, reach))

    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    header = (f"MDM, CPU grid model (2.3M parameters), {os.path.basename(args.corpus)}: {unique:,} unique tokens, "
              f"{total:,} training tokens per run ({total / unique:.1f} epochs), LR schedule {args.schedule}, seed {args.seed}; "
              f"validation: {args.val_tokens:,} held-out tokens, uniform t, 4 draws per row. {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, load {load} at the end.")
    lines = [header, "", "Tokens to reach the baseline's validation ELBO at 25/50/75/100% of the budget "
             f"(targets {', '.join(f'{t:.4f}' for t in targets)} nats/token; speedup = baseline tokens / proposal tokens):", "",
             "| proposal | final val ELBO | " + " | ".join(f"to {int(f * 100)}% target" for f in fractions) + " | wall (min) |",
             "|---|---|" + "---|" * len(fractions) + "---|"]
    for name, res, reach in rows:
        cells = []
        for r, s in zip(reach, res["speedup"]):
            cells.append(">budget" if r is None else f"{r / 1e6:.2f}M ({s:.2f}x)")
        lines.append(f"| {res['spec']} | {res['val'][-1][1]:.4f} | " + " | ".join(cells) + f" | {res['seconds'] / 60:.1f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    with open(args.out + ".md", "w") as f:
        f.write(text)
    with open(args.out + ".json", "w") as f:
        json.dump({"command": " ".join(sys.argv), "corpus": args.corpus, "unique_tokens": unique, "tokens": total, "steps": steps,
                   "schedule": args.schedule, "baseline": base_name, "targets": targets, "fractions": fractions, "load": load,
                   "runs": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
