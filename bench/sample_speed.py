"""Sampling speed and quality: AR (with / without KV cache) vs masked-diffusion samplers.

For one small AR run and one small MDM run of the same family (same config, data and
tokenizer; only the objective differs), decode the same prompts with each method and
report tokens/s, network calls (NFE) and sample quality:
- generative perplexity: exp(mean NLL) of the generated tokens (cut at EOS) under the AR
  model, conditioned on EOS + prompt;
- unigram entropy: entropy (nats) of each sample's own token frequencies, averaged.
The target of the issue: MDM threshold decoding + blocks + prefix cache at least 5x the
tokens/s of MDM at steps = length, with both quality numbers within 10%.

    python bench/sample_speed.py                          # trains the two runs (tiny.py, stdlib corpus)
    python bench/sample_speed.py --text data.txt          # ...on a text file (split into paragraphs)
    python bench/sample_speed.py --ar-workdir A --mdm-workdir M   # existing runs

Writes bench/results/sampling.json and bench/results/sampling.md. Timings exclude
compilation (each method is compiled first); the median of --repeats runs is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dllm_jax import config as config_lib  # noqa: E402
from dllm_jax.checkpoint import checkpoint_dir, load_run  # noqa: E402
from dllm_jax.objectives import token_cross_entropy  # noqa: E402
from dllm_jax.sampling import generate_tokens  # noqa: E402


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def methods(n: int, block: int, threshold: float) -> list[tuple[str, str, dict]]:
    """(label, objective, generate_tokens kwargs) for each measured method."""
    return [
        ("AR, KV cache", "ar", dict(kv_cache=True)),
        ("AR, no cache", "ar", dict(kv_cache=False)),
        (f"MDM steps={n} (topk_confidence)", "mdm", dict(sampler="topk_confidence", steps=n)),
        (f"MDM steps={n}, blocks of {block}", "mdm", dict(sampler="topk_confidence", steps=n, block_length=block)),
        (f"MDM steps={n}, blocks of {block} + prefix cache", "mdm", dict(sampler="topk_confidence", steps=n, block_length=block, prefix_cache=True)),
        (f"MDM threshold {threshold}", "mdm", dict(sampler="threshold", threshold=threshold)),
        (f"MDM threshold {threshold}, blocks of {block}", "mdm", dict(sampler="threshold", threshold=threshold, block_length=block)),
        (f"MDM threshold {threshold}, blocks of {block} + prefix cache", "mdm",
         dict(sampler="threshold", threshold=threshold, block_length=block, prefix_cache=True)),
        (f"MDM ancestral steps={n}", "mdm", dict(sampler="ancestral", steps=n)),
    ]


BASELINE = 2  # index of 'MDM steps = length' in methods()
TARGET = 7  # index of 'threshold + blocks + prefix cache'


def train_runs(args) -> dict:
    """Train (or reuse) the AR and MDM runs of experiments/tiny.py in args.train_dir."""
    from dllm_jax.train import train

    out = {}
    for objective in ("ar", "mdm"):
        workdir = os.path.join(args.train_dir, objective)
        overrides = [("objective", objective), ("train.progress", "false"), ("train.tensorboard", "false")]
        if args.text:
            overrides += [("data.paths", os.path.abspath(args.text)), ("data.text_split", "paragraph")]
        if args.train_epochs:
            overrides.append(("data.epochs", str(args.train_epochs)))
        if not os.path.isdir(checkpoint_dir(workdir)):
            cfg = config_lib.load_config(os.path.join(ROOT, "experiments", "tiny.py"), overrides)
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


def run_method(run, label, objective, kw, prompts, args, scorer, ar_params, eos_id) -> dict:
    times, nfes, decoded, qual = [], [], [], {"nll_sum": 0.0, "tokens": 0.0, "entropies": []}
    lengths_all, compile_s = [], 0.0
    res = None
    for r in range(args.repeats):
        res = generate_tokens(run.model, run.params, run.tokenizer, prompts, objective=objective, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, seed=r, schedule=run.config.mdm.schedule if objective == "mdm" else "linear", **kw)
        times.append(res.seconds)
        compile_s += res.compile_seconds
        nfes.append(res.nfe)
        decoded.append(res.decoded_positions)
        q = quality(scorer, ar_params, eos_id, prompts, res.tokens, res.lengths)
        qual["nll_sum"] += q["nll_sum"]
        qual["tokens"] += q["tokens"]
        qual["entropies"] += q["entropies"]
        lengths_all += [int(x) for x in res.lengths]
    sec = statistics.median(times)
    out = {
        "method": label,
        "objective": objective,
        "kwargs": kw,
        "seconds_median": sec,
        "seconds_all": times,
        "tokens_per_sec": statistics.median(decoded) / sec,
        "nfe": statistics.median(nfes),
        "gen_ppl": math.exp(qual["nll_sum"] / max(qual["tokens"], 1.0)),
        "unigram_entropy": float(np.mean(qual["entropies"])) if qual["entropies"] else 0.0,
        "mean_length": float(np.mean(lengths_all)),
        "compile_seconds": compile_s,
        "example": run.tokenizer.decode(res.tokens[0, :res.lengths[0]]),
    }
    print(f"{label:55s} {out['tokens_per_sec']:9.1f} tok/s  NFE {out['nfe']:6.1f}  genPPL {out['gen_ppl']:8.2f}  "
          f"H {out['unigram_entropy']:.3f}  len {out['mean_length']:.1f}", flush=True)
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


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Sampling speed and quality",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores shared with other jobs (load average {m['load']} at the end of the run), "
        f"JAX {m['jax']} on {m['backend']}. Model: experiments/tiny.py ({report['params'] / 1e6:.2f}M parameters), "
        f"AR and MDM trained on the same data ({report['corpus']}); {report['num_samples']} prompts of {report['prompt_tokens']} "
        f"held-out tokens, {report['max_new_tokens']} new tokens, temperature {report['temperature']}, "
        f"median of {report['repeats']} runs (compilation excluded).",
        "",
        "Generative perplexity: of the samples (cut at EOS) under the AR model; unigram entropy: of each sample's "
        "own tokens (nats), averaged. tokens/s counts decoded positions of the whole batch.",
        "",
        "| method | tokens/s | NFE | speed vs MDM steps=length | gen. PPL (AR) | unigram entropy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = report["results"][BASELINE]["tokens_per_sec"]
    for r in report["results"]:
        lines.append(f"| {r['method']} | {r['tokens_per_sec']:.0f} | {r['nfe']:.0f} | {r['tokens_per_sec'] / base:.2f}x | "
                     f"{r['gen_ppl']:.2f} | {r['unigram_entropy']:.3f} |")
    ref = report["reference"]
    lines.append(f"| held-out text (reference) | | | | {ref['gen_ppl']:.2f} | {ref['unigram_entropy']:.3f} |")
    t = report["target"]
    lines += [
        "",
        f"Target (issue 4): threshold + blocks + prefix cache >= 5x the tokens/s of steps = length with quality within 10%. "
        f"Measured: {t['speedup']:.2f}x, generative perplexity {t['gen_ppl_change'] * 100:+.1f}%, "
        f"unigram entropy {t['entropy_change'] * 100:+.1f}% -> {'met' if t['met'] else 'NOT met'}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ar-workdir")
    parser.add_argument("--mdm-workdir")
    parser.add_argument("--train-dir", default="/tmp/dllm_jax_sample_bench", help="where to train the runs when no workdirs are given")
    parser.add_argument("--text", help="train on this text file instead of the stdlib corpus")
    parser.add_argument("--train-epochs", type=int, default=0, help="data.epochs override for training (0 = tiny.py's)")
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=16)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    args = parser.parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)

    if args.ar_workdir and args.mdm_workdir:
        workdirs = {"ar": args.ar_workdir, "mdm": args.mdm_workdir}
    else:
        workdirs = train_runs(args)
    runs = {k: load_run(v) for k, v in workdirs.items()}
    if runs["ar"].tokenizer.fingerprint != runs["mdm"].tokenizer.fingerprint:
        raise SystemExit("the AR and MDM runs use different tokenizers; pass two runs of the same family")
    ar_run = runs["ar"]
    ar_params = jax.device_put(ar_run.params, jax.devices()[0])
    eos_id = ar_run.tokenizer.eos_id
    pairs = prompts_from_validation(ar_run, workdirs["ar"], args.num_samples, args.prompt_tokens, args.max_new_tokens)
    prompts = [p for p, _ in pairs]
    scorer = make_scorer(ar_run)

    results = []
    for label, objective, kw in methods(args.max_new_tokens, args.block_length, args.threshold):
        results.append(run_method(runs[objective], label, objective, kw, prompts, args, scorer, ar_params, eos_id))
    ref = reference_quality(ar_run, scorer, pairs, eos_id)
    print(f"{'held-out text':55s} genPPL {ref['gen_ppl']:8.2f}  H {ref['unigram_entropy']:.3f}")

    base, fast = results[BASELINE], results[TARGET]
    target = {
        "speedup": fast["tokens_per_sec"] / base["tokens_per_sec"],
        "gen_ppl_change": fast["gen_ppl"] / base["gen_ppl"] - 1.0,
        "entropy_change": fast["unigram_entropy"] / base["unigram_entropy"] - 1.0,
    }
    target["met"] = target["speedup"] >= 5.0 and abs(target["gen_ppl_change"]) <= 0.1 and abs(target["entropy_change"]) <= 0.1
    load = ""
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    report = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load": load, "jax": jax.__version__,
                    "backend": f"{jax.default_backend()} ({jax.device_count()} device(s))"},
        "corpus": os.path.basename(args.text) if args.text else "Python stdlib *.py",
        "params": int(sum(x.size for x in jax.tree.leaves(ar_run.params))),
        "num_samples": args.num_samples, "prompt_tokens": args.prompt_tokens, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "repeats": args.repeats, "block_length": args.block_length, "threshold": args.threshold,
        "workdirs": workdirs, "results": results, "reference": ref, "target": target,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sampling.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out, "sampling.md"), "w") as f:
        f.write(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
