"""`dllm-jax report --root DIR`: crossover plots and tables, R* fits and FLOPs tables of a sweep.

Reads every run under DIR (see `dllm_jax.study.runs`) and writes, in DIR (or --out):

- `crossover_<metric>_epochs.png`, `crossover_<metric>_tokens.png`: each metric the runs
  logged (cloze_acc, cloze_acc_norm, val_loss) against epochs and tokens seen, AR vs MDM,
  one panel per unique-token budget, the crossover marked;
- `report.md`: the runs, a crossover table per metric (per budget: best AR and best MDM
  score, the epoch of each, the crossover epoch), the R* fits with their quality, training
  FLOPs per token and inference FLOPs for generating 16..4096 tokens (`dllm_jax.flops`,
  the module the train loop uses for MFU), and the machine the report was made on;
- `scaling_fit.png`: each series' validation loss with its fitted Muennighoff curve;
- `report.json`: the same numbers, machine-readable.

Fits use the validation points after warmup (`train.warmup_steps`): before it the loss
reflects the learning-rate ramp, not the data.
"""

from __future__ import annotations

import datetime
import json
import os

from dllm_jax import paths
from dllm_jax.errors import ConfigError

# the headline is the first of these a run logged: cloze choices all have the same token
# length, so the plain accuracy is the fair one (acc_norm divides by characters, as HellaSwag does)
DOWNSTREAM = ("cloze_acc", "cloze_acc_norm")
METRICS = DOWNSTREAM + ("val_loss",)


def add_arguments(parser) -> None:
    parser.add_argument("--root", required=True, help="the --root of a sweep (one workdir per run)")
    parser.add_argument("--out", default=None, help="where to write the report (default: --root)")
    parser.add_argument("--flops-config", action="append", default=[], metavar="PATH",
                        help="also tabulate FLOPs for the model of this experiment file (e.g. experiments/paper_1b.py); repeatable")
    parser.add_argument("--prompt-len", type=int, default=1, help="prompt tokens before generation in the inference FLOPs table (default 1: BOS)")
    parser.add_argument("--fit-loss", default="final", choices=FIT_LOSSES,
                        help="which validation loss of each run the R* fit uses: its final one (default, as Muennighoff et al.) or its best")


def run(args) -> int:
    summary = build_report(args.root, args.out, flops_configs=args.flops_config, prompt_len=args.prompt_len, fit_loss=args.fit_loss)
    out = args.out or args.root
    print(f"report: {paths.join(out, 'report.md')} ({len(summary['runs'])} runs, figures: {', '.join(summary['figures']) or 'none'})")
    for row in summary["crossovers"].get(summary["headline_metric"], []):
        print(f"  U={row['unique_tokens']:,} {row['ar_series']} vs {row['mdm_series']}: crossover {row['crossover']}")
    return 0


# -- pieces ----------------------------------------------------------------------------

def machine() -> dict:
    from dllm_jax.study.runs import machine_info

    info = machine_info()
    try:
        import jax

        info.update({"jax": jax.__version__, "backend": jax.default_backend(), "devices": jax.device_count()})
    except Exception:  # noqa: BLE001 - the report does not need JAX to run
        pass
    return info


def crossover_rows(panel_map, metric: str) -> tuple[list, dict]:
    """One row per (model, budget, AR series, diffusion series); also {(params, U, ar, mdm): Crossover}.
    AR = an exact-likelihood objective; the diffusion side is every other objective (MDM and
    block diffusion: 'mdm_series' names it and 'diffusion_objective' says which)."""
    from dllm_jax import objectives

    from dllm_jax.study.crossover import HIGHER_IS_BETTER, best, find_crossover

    higher = HIGHER_IS_BETTER[metric]
    rows, marks = [], {}
    for (params, unique), series in panel_map.items():
        known = {s: r for s, r in series.items() if r.objective in objectives.REGISTRY}
        ars = {s: r for s, r in known.items() if objectives.get(r.objective).exact_likelihood}
        mdms = {s: r for s, r in known.items() if s not in ars}
        for a_name, a in ars.items():
            for m_name, m in mdms.items():
                ae, _, av = a.curve(metric)
                me, _, mv = m.curve(metric)
                if not av or not mv:
                    continue
                cross = find_crossover(ae, av, me, mv, higher)
                marks[(params, unique, a_name, m_name)] = cross
                rows.append({"params": params, "unique_tokens": unique, "epochs": max(a.epochs, m.epochs),
                             "ar_series": a_name, "mdm_series": m_name, "diffusion_objective": m.objective, "ar_best": best(ae, av, higher), "mdm_best": best(me, mv, higher),
                             "crossover_epoch": cross.epoch, "crossover": cross.describe(), "ar_final": av[-1], "mdm_final": mv[-1]})
    return rows, marks


FIT_LOSSES = ("final", "best")


def fit_groups(runs, fit_loss: str = "final") -> list:
    """[(title, series, params, curves, points, Fit)] for every (model, series).

    curves: [(U, tokens[], loss[])] every validation record after warmup (for the plot);
    points: [(U, tokens, loss)] ONE per run, its final (or, fit_loss='best', lowest) validation
    loss at the tokens it had seen then: what the Muennighoff fit uses (see study.scaling).
    """
    from dllm_jax.study.runs import model_label
    from dllm_jax.study.scaling import fit_rstar

    if fit_loss not in FIT_LOSSES:
        raise ConfigError(f"--fit-loss={fit_loss!r} is unknown; use one of {', '.join(FIT_LOSSES)}")
    groups = {}
    for r in runs:
        warmup = r.config.get("train.warmup_steps", 0)
        recs = [v for v in r.val if v["step"] > warmup and v.get("tokens_seen")]
        if not recs:
            continue
        pick = recs[-1] if fit_loss == "final" else min(recs, key=lambda v: v["val_loss"])
        curve = (r.unique_tokens, [v["tokens_seen"] for v in recs], [v["val_loss"] for v in recs])
        g = groups.setdefault((r.params, r.series), ([], []))
        g[0].append(curve)
        g[1].append((r.unique_tokens, pick["tokens_seen"], pick["val_loss"]))
    out = []
    for (params, series), (curves, points) in sorted(groups.items()):
        u, t, y = zip(*points)
        out.append((f"{series} ({model_label(params)})", series, params, curves, points, fit_rstar(u, t, y)))
    return out


def run_model_config(run):
    """The ModelConfig a run trained (vocab rows from its tokenizer's size, as train.py builds it)."""
    from dllm_jax.models import ModelConfig
    from dllm_jax.train_step import model_vocab_rows

    model = {k[len("model."):]: v for k, v in run.config.items() if k.startswith("model.")}
    vocab = int(run.info.get("vocab_size") or run.config.get("data.vocab_size"))
    return ModelConfig.from_config(model, model_vocab_rows(vocab, int(model.get("vocab_multiple", 1))))


def config_model(path: str):
    """(label, ModelConfig, seq_len) of an experiment file; the vocab is data.vocab_size (its
    tokenizer's size when data.tokenizer is a file, which this does not open)."""
    from dllm_jax.config import load_config
    from dllm_jax.models import ModelConfig
    from dllm_jax.train_step import model_vocab_rows

    cfg = load_config(path)
    rows = model_vocab_rows(cfg.data.vocab_size, cfg.model.vocab_multiple)
    return os.path.splitext(os.path.basename(path))[0], ModelConfig.from_config(cfg.model, rows), cfg.data.seq_len


def flops_section(models: list, prompt_len: int) -> tuple[list, dict]:
    """models: [(label, ModelConfig, seq_len)] -> (markdown lines, json)."""
    from dllm_jax import flops

    lines = ["## FLOPs", "",
             "From `dllm_jax.flops` (the module the train loop uses for MFU). Training: forward + backward model FLOPs per "
             "token, full [L, L] attention counted; AR and MDM run the same network on the same shapes, so they cost the same per "
             "token: what differs is how many tokens each needs to use the data (see the crossover tables).", "",
             "Block diffusion runs 2L tokens ([x_t ; x_0]) through the network per L training tokens.", "",
             "| model | matmul params (active) | seq len | AR train FLOPs/token | MDM train FLOPs/token | block diffusion train FLOPs/token |",
             "|---|---|---|---|---|---|"]
    out = {"train": [], "inference": {}}
    for label, cfg, seq_len in models:
        per_token = flops.train_flops_per_token(cfg, seq_len)
        bd = flops.block_diffusion_train_flops_per_token(cfg, seq_len)
        lines.append(f"| {label} | {flops.matmul_params(cfg):,} | {seq_len} | {per_token:.4g} | {per_token:.4g} | {bd:.4g} |")
        out["train"].append({"model": label, "matmul_params": flops.matmul_params(cfg), "seq_len": seq_len, "ar": per_token, "mdm": per_token,
                             "block_diffusion": bd})
    names = list(flops.INFERENCE_METHODS)
    lines += ["", f"Inference: forward FLOPs to generate N tokens after a {prompt_len}-token prompt, and each MDM method's "
              "multiple of AR. " + " ".join(f"`{n}`: {d}." for n, (d, _) in flops.INFERENCE_METHODS.items()) +
              " The tokens per step of the fast samplers are assumptions; the generated length may exceed the trained "
              "sequence length (the count is what such a generation would cost).", ""]
    for label, cfg, _ in models:
        table = flops.generation_flops_table(cfg, prompt_len=prompt_len)
        out["inference"][label] = table
        lines += [f"**{label}**", "", "| N | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for row in table:
            cells = [f"{row[names[0]]:.3g}"] + [f"{row[n]:.3g} ({row[n + '_vs_ar']:.3g}x)" for n in names[1:]]
            lines.append(f"| {row['gen_len']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines, out


# -- the report ------------------------------------------------------------------------

def _fmt_best(b, metric):
    if b is None:
        return "-"
    return f"{b[0]:.4f} (ep {b[1]:.1f})"


def build_report(root: str, out: str | None = None, *, flops_configs=(), prompt_len: int = 1, fit_loss: str = "final") -> dict:
    from dllm_jax.study import plots
    from dllm_jax.study.crossover import HIGHER_IS_BETTER, METRIC_TITLES
    from dllm_jax.study.runs import load_runs, model_label, panels

    runs = sorted(load_runs(root), key=lambda r: (r.params, r.unique_tokens, r.series))
    if not runs:
        raise ConfigError(f"no runs under {root!r} (a run is a directory with config.json); run `dllm-jax sweep` first")
    out = paths.expand(out or root)
    paths.makedirs(out)
    panel_map = panels(runs)
    metrics = [m for m in METRICS if any(r.curve(m)[2] for r in runs)]
    headline = next((m for m in metrics if m in DOWNSTREAM), "val_loss")
    mach = machine()

    md = [f"# Data-constrained study: `{paths.absolute(root)}`", "",
          f"Report made {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {mach['cpu']} ({mach['cores']} cores), "
          f"{mach['platform']}, Python {mach['python']}" + (f", JAX {mach['jax']} ({mach['backend']})" if "jax" in mach else "") + "."]
    hosts = sorted({f"{a.get('cpu')} ({a.get('cores')} cores)" for r in runs for a in r.attempts()})
    if hosts:
        md.append(f"Runs made on: {'; '.join(hosts)}.")
    total_wall = sum(r.wall_seconds() or 0 for r in runs)
    md += ["", "## Runs", "",
           "Wall time: every `dllm-jax sweep` attempt at the run (data, compilation, training, evaluation); training "
           "time and tokens/s: the optimiser steps alone, from the logged throughput." + (f" Total wall time: {total_wall / 3600:.2f} h." if total_wall else ""), "",
           "| run | series | params | U (unique tokens) | epochs | tokens | train FLOPs | wall time (s) | train time (s) | tokens/s | done | final val_loss |" +
           (" final " + headline + " |" if headline != "val_loss" else ""), "|---" * (12 + (headline != "val_loss")) + "|"]
    run_rows = []
    for r in runs:
        tokens = (r.info.get("num_steps") or 0) * r.info.get("global_batch", 0) * r.info.get("seq_len", 0)
        secs, wall = r.seconds(), r.wall_seconds()
        final = r.val[-1] if r.val else {}
        row = {"name": r.name, "series": r.series, "objective": r.objective, "params": r.params, "unique_tokens": r.unique_tokens,
               "epochs": r.epochs, "tokens": tokens, "train_flops": tokens * r.info.get("flops_per_token", 0), "wall_seconds": wall,
               "train_seconds": secs, "tokens_per_sec": tokens / secs if secs else None, "done": r.done, "final": final}
        run_rows.append(row)
        md.append(f"| {r.name} | {r.series} | {model_label(r.params)} | {r.unique_tokens:,} | {r.epochs:.3g} | {tokens:.3g} | {row['train_flops']:.3g} | "
                  f"{'-' if wall is None else f'{wall:.0f}'} | {secs or 0:.0f} | {row['tokens_per_sec'] or 0:.0f} | {'yes' if r.done else 'no'} | "
                  f"{final.get('val_loss', float('nan')):.4f} |" + (f" {final.get(headline, float('nan')):.4f} |" if headline != "val_loss" else ""))

    md += ["", "## Crossover", "",
           "The MDM's crossover epoch is where it goes ahead of AR for good (linear interpolation between evaluations; "
           "see `dllm_jax.study.crossover`). The study's crossover metric is a downstream accuracy (here the cloze task "
           "made from held-out text). Validation loss is **not** a fair AR-vs-MDM comparison: AR reports an exact NLL, the "
           "MDM an ELBO (an upper bound on its NLL), and AR validation loss can rise with repetition while its downstream "
           "accuracy still improves. Its table is given for completeness.", ""]
    if headline == "val_loss":
        md += ["No run logged a downstream metric (cloze_acc): the crossover below is on validation loss only. Enable "
               "periodic cloze evaluation (the `eval` config group) for the study's metric.", ""]
    crossovers, figures = {}, []
    for metric in metrics:
        rows, marks = crossover_rows(panel_map, metric)
        crossovers[metric] = rows
        arrow = "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"
        md += [f"### {METRIC_TITLES[metric]} ({arrow})", "", "| model | U | epochs | AR series | MDM / block-diffusion series | best AR (epoch) | best diffusion (epoch) | crossover epoch |",
               "|---|---|---|---|---|---|---|---|"]
        for row in rows:
            md.append(f"| {model_label(row['params'])} | {row['unique_tokens']:,} | {row['epochs']:.3g} | {row['ar_series']} | {row['mdm_series']} | "
                      f"{_fmt_best(row['ar_best'], metric)} | {_fmt_best(row['mdm_best'], metric)} | {row['crossover']} |")
        md.append("")
        for xaxis in ("epochs", "tokens"):
            name = f"crossover_{metric}_{xaxis}.png"
            if plots.plot_crossover(panel_map, metric, xaxis, paths.join(out, name), marks):
                figures.append(name)
                md += [f"![{metric} vs {xaxis}]({name})", ""]

    groups = fit_groups(runs, fit_loss)
    md += ["## Data-reuse constant R* (Muennighoff et al. form)", "",
           "L = E + B / D'^beta with D' = min(tokens, U) + U R* (1 - exp(-(tokens/U - 1)/R*)), fitted per series to the "
           f"**{fit_loss}** validation loss of each run (one point per run, each run with its own completed schedule; "
           "see `dllm_jax.study.scaling`); 95% interval of R* by bootstrap over runs. The form is monotone in tokens: it "
           "cannot follow a validation loss that rises with overfitting, so a poor AR fit is expected past its minimum.", "",
           "| series | model | runs | R* (95% bootstrap) | E | B | beta | RMSE | R^2 | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    fits = []
    for title, series, params, curves, points, fit in groups:
        fits.append({"series": series, "params": params, "fit_loss": fit_loss, "points": points, **fit.as_dict()})
        rstar = f"{fit.r_star:.3g} ({fit.r_star_low:.3g}..{fit.r_star_high:.3g})" if fit.determined else "not determined"
        md.append(f"| {series} | {model_label(params)} | {fit.n} | {rstar} | {fit.e:.4g} | {fit.b:.4g} | {fit.beta:.3g} | {fit.rmse:.3g} | {fit.r2:.4f} | {fit.note} |")
    if plots.plot_fits([(g[0], g[3], g[4], g[5]) for g in groups], paths.join(out, "scaling_fit.png")):
        figures.append("scaling_fit.png")
        md += ["", "![R* fits](scaling_fit.png)"]

    models, seen = [], set()
    for r in runs:
        if r.params not in seen and r.info.get("vocab_size"):
            seen.add(r.params)
            models.append((model_label(r.params), run_model_config(r), int(r.info.get("seq_len") or r.config.get("data.seq_len"))))
    for path in flops_configs:
        models.append(config_model(path))
    flops_lines, flops_json = flops_section(models, prompt_len)
    md += [""] + flops_lines

    summary = {"root": paths.absolute(root), "machine": mach, "runs": run_rows, "headline_metric": headline,
               "crossovers": crossovers, "fits": fits, "flops": flops_json, "figures": figures}
    paths.write_text(paths.join(out, "report.md"), "\n".join(md) + "\n")
    paths.write_text(paths.join(out, "report.json"), json.dumps(summary, indent=1, default=str))
    return summary
