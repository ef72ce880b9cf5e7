"""GIDD's self-correction: generative perplexity of a trained uniform / gidd run against the
number of sampling steps and of self-correction steps after them.

For every (steps, correction steps) pair this draws --num-samples unconditional samples with
the ancestral sampler (`dllm_jax.sampling.generate`, the same seed for every pair, so the
rows differ only by the sampler's settings) and scores them with an AR reference run
(`dllm_jax.evaluation.genppl.evaluate_generation`: exact NLL under the reference, gen-PPL =
exp(nats per reference token); unigram entropy in nats per sample, which falls when samples
degenerate into repetition). Each correction step is one network call for the batch (GIDD,
von Ruette et al. 2025, arXiv:2503.04482, gidd/eval/self_correction.py: redraw every position at
--correction-temperature and replace, per row, the most probable position whose candidate
differs), so NFE = steps + correction steps.

    # the two runs (the CPU grid's model, 1M tokens each; no cloze scoring: only the final
    # checkpoint is used)
    dllm-jax train --config experiments/cpu_grid.py --workdir runs/gidd --config.objective=gidd \\
        --config.gidd.p_u=0.2 --config.data.paths=tinyshakespeare.txt --config.data.unique_tokens=131072 \\
        --config.data.epochs=8 --config.eval.cloze_examples=0
    dllm-jax train --config experiments/cpu_grid.py --workdir runs/ar_ref --config.objective=ar \\
        --config.data.paths=tinyshakespeare.txt --config.data.unique_tokens=131072 --config.data.epochs=8 \\
        --config.eval.cloze_examples=0
    python bench/self_correction.py --workdir runs/gidd --reference-workdir runs/ar_ref \\
        --steps 8,32,128 --corrections 0,8,32 --out bench/results/self_correction_shakespeare

Writes <out>.json (every measurement), <out>.md (the table) and <out>.png (gen-PPL against
NFE, one line per number of steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise SystemExit(f"error: {flag}={text!r}: give comma-separated integers >= 0, e.g. 8,32,128")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a trained uniform or gidd run")
    p.add_argument("--reference-workdir", required=True, help="an AR run that scores the samples")
    p.add_argument("--steps", default="8,32,128", help="sampling steps (comma-separated)")
    p.add_argument("--corrections", default="0,8,32", help="self-correction steps after sampling (comma-separated)")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--correction-temperature", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="path prefix of the results (.json, .md, .png)")
    args = p.parse_args(argv)
    steps, corrections = _ints(args.steps, "--steps"), _ints(args.corrections, "--corrections")
    if min(steps) < 1:
        raise SystemExit(f"error: --steps={args.steps!r}: every number of sampling steps must be >= 1")

    from dllm_jax.checkpoint import load_run
    from dllm_jax.errors import DllmError
    from dllm_jax.evaluation.genppl import evaluate_generation

    try:
        run, reference = load_run(args.workdir), load_run(args.reference_workdir)
        rows = []
        for s in steps:
            for k in corrections:
                t0 = time.time()
                res = evaluate_generation(run, reference, num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, steps=s,
                                          temperature=args.temperature, seed=args.seed, correction_steps=k,
                                          correction_temperature=args.correction_temperature)
                res.pop("examples", None)
                rows.append({**res, "wall_s": round(time.time() - t0, 2)})
                print(f"steps {s:4d} corrections {k:4d}: gen-PPL {res['gen_ppl']:.2f} entropy {res['unigram_entropy']:.3f} "
                      f"nfe {res['nfe']} ({rows[-1]['wall_s']} s)", flush=True)
    except DllmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    meta = {"workdir": os.path.abspath(args.workdir), "objective": run.config.objective, "step": run.step,
            "reference_workdir": os.path.abspath(args.reference_workdir), "reference_step": reference.step,
            "num_samples": args.num_samples, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "correction_temperature": args.correction_temperature, "seed": args.seed,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "command": " ".join(sys.argv)}
    if run.config.objective == "gidd":
        meta["p_u"] = float(run.config.gidd.p_u)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    table = {(r["steps"], r["correction_steps"]): r for r in rows}
    lines = [f"# Self-correction: gen-PPL of `{run.config.objective}`" + (f" (p_u = {meta['p_u']})" if "p_u" in meta else ""),
             "",
             f"{args.num_samples} unconditional samples of {args.max_new_tokens} tokens per cell (ancestral sampler, temperature "
             f"{args.temperature}, corrections at temperature {args.correction_temperature}, seed {args.seed}), scored by the AR "
             f"run {meta['reference_workdir']} (step {reference.step}); the sampled run is at step {run.step}. Cells: gen-PPL "
             "(unigram entropy, nats).",
             "", "| steps | " + " | ".join(f"{k} corrections" for k in corrections) + " |",
             "|---|" + "---|" * len(corrections)]
    for s in steps:
        lines.append(f"| {s} | " + " | ".join(f"{table[s, k]['gen_ppl']:.1f} ({table[s, k]['unigram_entropy']:.2f})" for k in corrections) + " |")
    lines += ["", f"Machine: {meta['machine']}. Command: `{meta['command']}`."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in steps:
        ax.plot([table[s, k]["nfe"] for k in corrections], [table[s, k]["gen_ppl"] for k in corrections], marker="o", label=f"{s} steps")
    ax.set_xscale("log")
    ax.set_xlabel("NFE (sampling + self-correction steps)")
    ax.set_ylabel("gen-PPL (AR reference)")
    ax.legend()
    ax.set_title(f"{run.config.objective}: self-correction")
    fig.tight_layout()
    fig.savefig(args.out + ".png", dpi=120)
    print(f"wrote {args.out}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
