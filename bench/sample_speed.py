"""Sampling speed and quality: AR (with / without KV cache) vs masked-diffusion samplers.

For one small AR run and one small MDM run of the same family (same config, data and
tokenizer; only the objective differs), decode the same prompts with each method and
report tokens/s, network calls (NFE) and sample quality:
- generative perplexity: exp(mean NLL) of the generated tokens (cut at EOS) under the AR
  model, conditioned on EOS + prompt;
- unigram entropy: entropy (nats) of each sample's own token frequencies, averaged.
The target of the issue: MDM threshold decoding + blocks + prefix cache at least 5x the
tokens/s of MDM at steps = length, with both quality numbers within 10%. It is checked
against two steps = length baselines: without blocks (one token per step anywhere in the
region) and with the same blocks (LLaDA's semi-autoregressive decoding: the exact sampler
that threshold decoding and the prefix cache approximate, so its quality difference is
what those two cost).

    python bench/sample_speed.py                          # trains the two runs (experiments/sample_bench.py)
    python bench/sample_speed.py --text data.txt          # ...on a text file (split into paragraphs)
    python bench/sample_speed.py --ar-workdir A --mdm-workdir M   # existing runs
    python bench/sample_speed.py --block-diffusion        # also a block-diffusion run of the family
    python bench/sample_speed.py --ar-workdir A --mdm-workdir M --bd-workdir D

With a block-diffusion run, its decoding with the exact KV cache of finished blocks (and
without it) is measured beside AR's KV cache and MDM's blocks + prefix (dual) cache, at the
same generation length. MDM semi-AR blocks advance every row through its own blocks; the
'shared blocks' rows are the batch-wide current block of before (batch throughput of
per-row progress against it). Block diffusion advances every row through its own blocks (no
shared-block baseline exists for it); steps per row say what batch-1 decoding would cost.

Writes bench/results/sampling.json and bench/results/sampling.md. Timings exclude
compilation (compiled ahead of time and timed apart); the runs of all methods are interleaved and
the fastest of --repeats is reported (the machine may be shared), with the median beside it
in the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dllm_jax import config as config_lib  # noqa: E402
from dllm_jax import objectives  # noqa: E402
from dllm_jax.checkpoint import checkpoint_dir, load_run  # noqa: E402
from dllm_jax.objectives import token_cross_entropy  # noqa: E402
from dllm_jax.sampling import generate_tokens  # noqa: E402
from dllm_jax.study.runs import machine_info  # noqa: E402


def methods(n: int, block: int, thresholds: list[float], block_diffusion: bool = False) -> list[tuple[str, str, dict]]:
    """(label, objective, generate_tokens kwargs) for each measured method (block diffusion
    decodes in its run's own block size)."""
    out = [
        ("AR, KV cache", "ar", dict(kv_cache=True)),
        ("AR, no cache", "ar", dict(kv_cache=False)),
        (f"MDM steps={n} (topk_confidence)", "mdm", dict(sampler="topk_confidence", steps=n)),
        (f"MDM steps={n}, blocks of {block}", "mdm", dict(sampler="topk_confidence", steps=n, block_length=block)),
        (f"MDM steps={n}, blocks of {block} + prefix cache", "mdm", dict(sampler="topk_confidence", steps=n, block_length=block, prefix_cache=True)),
        (f"MDM ancestral steps={n}", "mdm", dict(sampler="ancestral", steps=n)),
    ]
    for tau in thresholds:
        out += [
            (f"MDM threshold {tau}", "mdm", dict(sampler="threshold", threshold=tau)),
            (f"MDM threshold {tau}, blocks of {block}", "mdm", dict(sampler="threshold", threshold=tau, block_length=block)),
            (f"MDM threshold {tau}, blocks of {block}, shared blocks (baseline of per-row progress)", "mdm",
             dict(sampler="threshold", threshold=tau, block_length=block, shared_blocks=True)),
            (f"MDM threshold {tau}, blocks of {block} + prefix cache", "mdm",
             dict(sampler="threshold", threshold=tau, block_length=block, prefix_cache=True)),
        ]
    if block_diffusion:
        bd = "block_diffusion"
        out += [(f"BD steps={n}, exact KV cache", bd, dict(sampler="topk_confidence", steps=n, kv_cache=True)),
                (f"BD steps={n}, no cache", bd, dict(sampler="topk_confidence", steps=n, kv_cache=False))]
        out += [(f"BD threshold {tau}, exact KV cache", bd, dict(sampler="threshold", threshold=tau, kv_cache=True)) for tau in thresholds]
    return out


def is_baseline(kw: dict) -> bool:
    """MDM at steps = length (one token per step), exact: without blocks, or with the target's blocks."""
    return kw.get("sampler") == "topk_confidence" and not kw.get("prefix_cache", False) and "kv_cache" not in kw


def is_target(kw: dict) -> bool:
    """The issue's fast configuration: threshold decoding with blocks and the prefix cache."""
    return kw.get("sampler") == "threshold" and kw.get("prefix_cache", False) and "block_length" in kw


def target_check(base: dict, fast: dict) -> dict:
    out = {
        "method": fast["method"],
        "baseline": base["method"],
        "speedup": fast["tokens_per_sec"] / base["tokens_per_sec"],
        "speedup_cpu": fast["tokens_per_cpu_sec"] / base["tokens_per_cpu_sec"],
        "gen_ppl_change": fast["gen_ppl"] / base["gen_ppl"] - 1.0,
        "entropy_change": fast["unigram_entropy"] / base["unigram_entropy"] - 1.0,
    }
    out["met"] = min(out["speedup"], out["speedup_cpu"]) >= 5.0 and abs(out["gen_ppl_change"]) <= 0.1 and abs(out["entropy_change"]) <= 0.1
    return out


def train_runs(args) -> dict:
    """Train (or reuse) the AR and MDM runs of args.config in args.train_dir."""
    from dllm_jax.train import train

    out = {}
    for objective in ("ar", "mdm") + (("block_diffusion",) if args.block_diffusion else ()):
        workdir = os.path.join(args.train_dir, objective)
        overrides = [("objective", objective), ("train.progress", "false"), ("train.tensorboard", "false")]
        if args.text:
            overrides += [("data.paths", os.path.abspath(args.text)), ("data.text_split", "paragraph")]
        if args.train_epochs:
            overrides.append(("data.epochs", str(args.train_epochs)))
        if not os.path.isdir(checkpoint_dir(workdir)):
            cfg = config_lib.load_config(args.config, overrides)
            t0 = time.perf_counter()
            summary = train(cfg, workdir)
            print(f"trained {objective} in {time.perf_counter() - t0:.0f} s: {summary.get('final', {})}", flush=True)
        out[objective] = workdir
    return out


def make_scorer(ar_run):
    """jitted (tokens [B, L], weights [B, L]) -> (sum NLL, count) of the weighted next tokens."""
    model, vocab = ar_run.model, ar_run.tokenizer.mask_id

    @jax.jit
    def score(params, tokens, weights):
        logits = model.apply({"params": params}, tokens[:, :-1], causal=True)
        ce = token_cross_entropy(logits, tokens[:, 1:], vocab)
        return jnp.sum(ce * weights[:, 1:]), jnp.sum(weights[:, 1:])

    return score


def quality(score, params, eos_id: int, prompts: list, tokens: np.ndarray, lengths: np.ndarray) -> dict:
    """Generative perplexity under the AR model and mean per-sample unigram entropy."""
    b, n = tokens.shape
    p = max(len(x) for x in prompts)
    seq = np.zeros((b, 1 + p + n), np.int32)
    w = np.zeros_like(seq, dtype=np.float32)
    entropies = []
    for i, (prompt, row, k) in enumerate(zip(prompts, tokens, lengths)):
        ids = [eos_id] + list(prompt) + list(row[:k])
        seq[i, :len(ids)] = ids
        w[i, 1 + len(prompt):len(ids)] = 1.0
        if k:
            counts = np.unique(row[:k], return_counts=True)[1] / k
            entropies.append(float(-(counts * np.log(counts)).sum()))
    nll, count = score(params, jnp.asarray(seq), jnp.asarray(w))
    return {"nll_sum": float(nll), "tokens": float(count), "entropies": entropies}


def run_once(run, objective, kw, prompts, args, seed: int, scorer, ar_params, eos_id) -> dict:
    """One decoding of all prompts: its time, NFE, steps per row and quality sums."""
    kw = {**objectives.build(run.config).sample_defaults(run.config), **kw}  # the run's schedule and block size
    res = generate_tokens(run.model, run.params, run.tokenizer, prompts, objective=objective, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, seed=seed, **kw)
    if res.reveal_step is not None:  # diffusion: steps each row needed on its own (an MDM batch waits for the slowest)
        row_steps = [len(np.unique(row[row >= 0])) for row in res.reveal_step]
    else:  # AR: one step per generated token
        row_steps = [int(n) for n in res.lengths]
    return {"seconds": res.seconds, "cpu_seconds": res.cpu_seconds, "compile": res.compile_seconds, "nfe": res.nfe, "decoded": res.decoded_positions,
            "row_steps": row_steps, "lengths": [int(x) for x in res.lengths],
            "quality": quality(scorer, ar_params, eos_id, prompts, res.tokens, res.lengths),
            "example": run.tokenizer.decode(res.tokens[0, :res.lengths[0]])}


def summarise(label, objective, kw, runs: list) -> dict:
    """Speed from the fastest run (the CPU is shared: the minimum is the least disturbed), NFE
    median, quality pooled over all runs."""
    best = min(runs, key=lambda r: r["seconds"])
    nll = sum(r["quality"]["nll_sum"] for r in runs)
    count = sum(r["quality"]["tokens"] for r in runs)
    entropies = [e for r in runs for e in r["quality"]["entropies"]]
    out = {
        "method": label, "objective": objective, "kwargs": kw,
        "seconds_best": best["seconds"], "seconds_all": [r["seconds"] for r in runs],
        "tokens_per_sec": best["decoded"] / best["seconds"],
        "tokens_per_sec_median": statistics.median(r["decoded"] / r["seconds"] for r in runs),
        "tokens_per_cpu_sec": statistics.median(r["decoded"] / r["cpu_seconds"] for r in runs),
        "nfe": statistics.median(r["nfe"] for r in runs),
        "steps_per_row": float(np.mean([s for r in runs for s in r["row_steps"]])),
        "gen_ppl": math.exp(nll / max(count, 1.0)),
        "unigram_entropy": float(np.mean(entropies)) if entropies else 0.0,
        "mean_length": float(np.mean([n for r in runs for n in r["lengths"]])),
        "compile_seconds": sum(r["compile"] for r in runs),
        "example": runs[0]["example"],
    }
    print(f"{label:55s} {out['tokens_per_sec']:9.1f} tok/s (median {out['tokens_per_sec_median']:7.1f}, "
          f"{out['tokens_per_cpu_sec']:7.1f}/CPU s)  NFE {out['nfe']:5.1f} "
          f"({out['steps_per_row']:5.1f}/row)  genPPL {out['gen_ppl']:8.2f}  H {out['unigram_entropy']:.3f}  len {out['mean_length']:.1f}",
          flush=True)
    return out


def reference_quality(ar_run, scorer, prompts_and_refs, eos_id) -> dict:
    prompts = [p for p, _ in prompts_and_refs]
    refs = np.array([r for _, r in prompts_and_refs])
    q = quality(scorer, ar_run.params, eos_id, prompts, refs, np.full((len(refs),), refs.shape[1]))
    return {"gen_ppl": math.exp(q["nll_sum"] / q["tokens"]), "unigram_entropy": float(np.mean(q["entropies"]))}


def prompts_from_validation(run, workdir, count: int, prompt_len: int, cont_len: int):
    """(prompt ids, true continuation ids) from the run's held-out validation rows."""
    from dllm_jax.data.pipeline import build_dataset

    val = build_dataset(run.config, workdir).val
    if len(val) < count:
        raise SystemExit(f"validation split has {len(val)} rows, fewer than --num-samples={count}")
    rows = val[np.linspace(0, len(val) - 1, count).astype(int)]
    return [(list(map(int, r[:prompt_len])), list(map(int, r[prompt_len:prompt_len + cont_len]))) for r in rows]


def describe_run(run, workdir) -> dict:
    """What a reader needs to know about a run: size, data, steps, final validation loss."""
    from dllm_jax.metrics import read_metrics

    c = run.config
    val = [r for r in read_metrics(workdir) if "val_loss" in r]
    return {
        "objective": c.objective, "step": int(run.step), "params": int(sum(x.size for x in jax.tree.leaves(run.params))),
        "d_model": c.model.d_model, "n_layers": c.model.n_layers, "seq_len": c.data.seq_len, "batch_size": c.train.batch_size,
        "unique_tokens": c.data.unique_tokens, "epochs": c.data.epochs, "tokenizer_vocab": run.tokenizer.vocab_size,
        "final_val_loss": val[-1]["val_loss"] if val else None,
    }


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Sampling speed and quality",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores (load average {m['load']} at the end of the run), "
        f"JAX {m['jax']} on {m['backend']}. AR and MDM runs of the same family (same model, data and tokenizer; "
        f"{report['corpus']}); {report['num_samples']} prompts of {report['prompt_tokens']} "
        f"held-out tokens, {report['max_new_tokens']} new tokens, temperature {report['temperature']}, "
        f"speed: the fastest of {report['repeats']} interleaved runs (compilation excluded; the median is in the JSON), "
        "quality: pooled over all runs.",
        "",
        *([report["note"], ""] if report.get("note") else []),
        *[f"- {k.upper()} run: {r['params'] / 1e6:.2f}M parameters (d_model {r['d_model']}, {r['n_layers']} layers), "
          f"{r['step']} steps of {r['batch_size']} x {r['seq_len']} tokens ({r['epochs']} epochs, unique tokens "
          f"{r['unique_tokens'] or 'all'}), final validation loss {r['final_val_loss']:.3f} nats/token"
          f"{' (ELBO bound)' if k != 'ar' else ''}." for k, r in report["runs"].items()],
        "",
        "Generative perplexity: of the samples (cut at EOS) under the AR model; unigram entropy: of each sample's "
        "own tokens (nats), averaged. tokens/s counts decoded positions of the whole batch. NFE: network calls of the "
        "batch (it decodes until its slowest row is done); steps per row: decoding steps each row needed (what "
        "batch-1 decoding would cost). tokens per CPU-second: decoded positions over the CPU time of all threads "
        "(median), a measure of work that other jobs on the machine disturb less than wall time.",
        "",
        "| method | tokens/s | tokens per CPU-s | NFE (batch) | steps per row | speed vs MDM steps=length (wall / CPU) | gen. PPL (AR) | unigram entropy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next(r for r in report["results"] if is_baseline(r["kwargs"]))  # the one without blocks comes first
    for r in report["results"]:
        lines.append(f"| {r['method']} | {r['tokens_per_sec']:.0f} | {r['tokens_per_cpu_sec']:.0f} | {r['nfe']:.0f} | {r['steps_per_row']:.1f} | "
                     f"{r['tokens_per_sec'] / base['tokens_per_sec']:.2f}x / {r['tokens_per_cpu_sec'] / base['tokens_per_cpu_sec']:.2f}x | "
                     f"{r['gen_ppl']:.2f} | {r['unigram_entropy']:.3f} |")
    ref = report["reference"]
    lines.append(f"| held-out text (reference) | | | | | | {ref['gen_ppl']:.2f} | {ref['unigram_entropy']:.3f} |")
    lines += ["", "Target (issue 4): threshold + blocks + prefix cache >= 5x the tokens/s of steps = length (wall and CPU time) "
              "with generative perplexity and unigram entropy within 10%, against steps = length without blocks and with "
              "the same blocks (the exact decoding that threshold + cache approximate):", ""]
    for t in report["target"]:
        lines.append(f"- {t['method']} vs {t['baseline']}: {t['speedup']:.2f}x wall, {t['speedup_cpu']:.2f}x CPU time, "
                     f"generative perplexity {t['gen_ppl_change'] * 100:+.1f}%, "
                     f"unigram entropy {t['entropy_change'] * 100:+.1f}% -> {'met' if t['met'] else 'not met'}")
    lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ar-workdir")
    parser.add_argument("--mdm-workdir")
    parser.add_argument("--bd-workdir", help="a block-diffusion run of the same family (adds its exact-cache decoding)")
    parser.add_argument("--block-diffusion", action="store_true", help="also train (or reuse) a block-diffusion run in --train-dir")
    parser.add_argument("--train-dir", default="/tmp/dllm_jax_sample_bench", help="where to train the runs when no workdirs are given")
    parser.add_argument("--config", default=os.path.join(ROOT, "experiments", "sample_bench.py"), help="experiment config of the runs to train")
    parser.add_argument("--text", help="train on this text file instead of the stdlib corpus")
    parser.add_argument("--train-epochs", type=int, default=0, help="data.epochs override for training (0 = the config's)")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=112)
    parser.add_argument("--block-length", type=int, default=16)
    parser.add_argument("--thresholds", default="0.9,0.5", help="comma-separated confidence thresholds to measure")
    parser.add_argument("--name", default="sampling", help="output files: <out>/<name>.json and .md")
    parser.add_argument("--note", default="", help="a sentence for the report, e.g. how the given runs were trained")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)

    if args.ar_workdir and args.mdm_workdir:
        workdirs = {"ar": args.ar_workdir, "mdm": args.mdm_workdir}
        if args.bd_workdir:
            workdirs["block_diffusion"] = args.bd_workdir
    else:
        workdirs = train_runs(args)
    runs = {k: load_run(v) for k, v in workdirs.items()}
    if len({r.tokenizer.fingerprint for r in runs.values()}) > 1:
        raise SystemExit("the AR and MDM runs use different tokenizers; pass two runs of the same family")
    ar_run = runs["ar"]
    ar_params = jax.device_put(ar_run.params, jax.devices()[0])
    eos_id = ar_run.tokenizer.eos_id
    pairs = prompts_from_validation(ar_run, workdirs["ar"], args.num_samples, args.prompt_tokens, args.max_new_tokens)
    prompts = [p for p, _ in pairs]
    scorer = make_scorer(ar_run)

    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    todo = methods(args.max_new_tokens, args.block_length, thresholds, block_diffusion="block_diffusion" in runs)
    per_method = [[] for _ in todo]
    # compilation is timed apart by generate_tokens (ahead of time), so no warm-up run is needed;
    # the runs are interleaved so that load changes hit every method alike
    for rep in range(args.repeats):
        for i, (label, objective, kw) in enumerate(todo):
            per_method[i].append(run_once(runs[objective], objective, kw, prompts, args, rep, scorer, ar_params, eos_id))
    results = [summarise(label, objective, kw, r) for (label, objective, kw), r in zip(todo, per_method)]
    ref = reference_quality(ar_run, scorer, pairs, eos_id)
    print(f"{'held-out text':55s} genPPL {ref['gen_ppl']:8.2f}  H {ref['unigram_entropy']:.3f}")

    target = [target_check(b, r) for b in results if is_baseline(b["kwargs"]) for r in results if is_target(r["kwargs"])]
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    report = {
        "machine": {"cpu": machine_info()["cpu"], "cores": os.cpu_count(), "load": load, "jax": jax.__version__,
                    "backend": f"{jax.default_backend()} ({jax.device_count()} device(s))"},
        "corpus": runs["ar"].config.data.paths,
        "params": int(sum(x.size for x in jax.tree.leaves(ar_run.params))),
        "num_samples": args.num_samples, "prompt_tokens": args.prompt_tokens, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "repeats": args.repeats, "block_length": args.block_length, "thresholds": thresholds,
        "note": args.note, "workdirs": workdirs, "runs": {k: describe_run(runs[k], workdirs[k]) for k in runs}, "results": results, "reference": ref, "target": target,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out, f"{args.name}.md"), "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
