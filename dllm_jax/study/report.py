"""`dllm-jax report --root DIR`: crossover plots and tables, R* fits and FLOPs tables of a sweep.

Reads every run under DIR (see `dllm_jax.study.runs`) and writes, in DIR (or --out):

- `crossover_<metric>_epochs.png`, `crossover_<metric>_tokens.png`: each metric the runs
  logged (cloze_acc, cloze_acc_norm, val_loss) against epochs and tokens seen, AR vs MDM,
  one panel per unique-token budget, +-2 standard-error bands where logged, the crossover
  and its 2-SE bracket marked;
- `data_ratio_<metric>.png`: each objective's best downstream score against U (log x) with
  +-2 SE bars, and the unique data AR needs to match each MDM point (the data ratio);
- `report.md`: the runs, a crossover table per metric (per budget: best AR and best MDM
  score, the epoch of each, the crossover epoch with its 2-SE bracket, and whether
  the MDM passes AR's best by more than 2 standard errors), the data-ratio table per
  downstream metric (the study's "> 3x"; definitions in `dllm_jax.study.crossover`), the R*
  fits with their quality, training
  FLOPs per token and inference FLOPs for generating 16..4096 tokens (`dllm_jax.flops`,
  the module the train loop uses for MFU), and the machine the report was made on;
- `scaling_fit.png`: each series' validation loss with its fitted Muennighoff curve;
- `report.json`: the same numbers, machine-readable.

Fits use the validation points after warmup (`train.warmup_steps`): before it the loss
reflects the learning-rate ramp, not the data.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os

from dllm_jax import paths
from dllm_jax.errors import ConfigError

# the headline is the first of these a run logged: cloze choices all have the same token
# length, so the plain accuracy is the fair one (acc_norm divides by characters, as HellaSwag does)
DOWNSTREAM = ("cloze_acc", "cloze_acc_norm")
METRICS = DOWNSTREAM + ("val_loss",)


def _describe_cloze(c: dict) -> str:
    k, n_choices = int(c.get("eval.cloze_length") or 0), c.get("eval.cloze_choices", 4)
    if c.get("eval.cloze_context") == "both":
        return (f"{n_choices}-way two-sided cloze, a one-token blank inside a held-out passage with text on both sides, "
                "scored by log p(choice | the rest of the passage), exact for both objectives")
    what = "the next token" if k == 1 else (f"the last {k} tokens" if k else "the last quarter")
    return f"{n_choices}-way choice of {what} of a held-out passage given the text before it"


def cloze_task(runs) -> str:
    """The cloze task the runs logged, in words, from their `eval.cloze_*` config. Raises
    ConfigError when runs that logged cloze accuracy were scored on different tasks (their
    accuracies cannot be compared)."""
    scored = [r for r in runs if any("cloze_acc" in v for v in r.val)]
    if not scored:
        return _describe_cloze(runs[0].config)
    tasks: dict[str, list[str]] = {}
    for r in scored:
        tasks.setdefault(_describe_cloze(r.config), []).append(r.name)
    if len(tasks) > 1:
        listed = "; ".join(f"{task} ({', '.join(names)})" for task, names in tasks.items())
        raise ConfigError(f"the runs were scored on different cloze tasks, whose accuracies cannot be compared: {listed}. "
                          "Report them from separate --root folders, or rescore the checkpoints on one task with "
                          "`dllm-jax eval --task cloze --step all --config.eval.cloze_*=...`")
    return next(iter(tasks))


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
        print(f"  U={row['unique_tokens']:,} {row['ar_series']} vs {row['mdm_series']}: crossover {row['crossover']}"
              + (f", 2-SE bracket {row['crossover_interval']}; passes AR's best by > 2 SE: {row['passes_ar_best']}" if row["crossover_low"] is not None else ""))
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


def _split(series: dict) -> tuple[dict, dict]:
    """{series: run} -> (AR series, diffusion series): AR = an exact-likelihood objective; the
    diffusion side is every other known objective (MDM and block diffusion)."""
    from dllm_jax import objectives

    known = {s: r for s, r in series.items() if r.objective in objectives.REGISTRY}
    ars = {s: r for s, r in known.items() if objectives.get(r.objective).exact_likelihood}
    return ars, {s: r for s, r in known.items() if s not in ars}


def _json_float(x):
    """A float for report.json: +-inf (an open interval end) as the strings 'inf' / '-inf'."""
    return x if x is None or math.isfinite(x) else ("inf" if x > 0 else "-inf")


def crossover_rows(panel_map, metric: str) -> tuple[list, dict]:
    """One row per (model, budget, AR series, diffusion series); also {(params, U, ar, mdm): Crossover}.
    'mdm_series' names the diffusion side and 'diffusion_objective' says which objective it is.
    With standard errors (cloze): the crossover's 2-SE bracket and the 2-SE test
    against AR's best (`dllm_jax.study.crossover`)."""
    from dllm_jax.study.crossover import HIGHER_IS_BETTER, best_point, find_crossover, passes_best

    higher = HIGHER_IS_BETTER[metric]
    rows, marks = [], {}
    for (params, unique), series in panel_map.items():
        ars, mdms = _split(series)
        for a_name, a in ars.items():
            for m_name, m in mdms.items():
                ae, _, av = a.curve(metric)
                me, _, mv = m.curve(metric)
                if not av or not mv:
                    continue
                a_se, m_se = a.curve_stderr(metric), m.curve_stderr(metric)
                cross = find_crossover(ae, av, me, mv, higher, ar_stderr=a_se, mdm_stderr=m_se)
                passes = passes_best(ae, av, a_se, me, mv, m_se, higher)
                marks[(params, unique, a_name, m_name)] = cross
                a_best, m_best = best_point(ae, av, a_se, higher), best_point(me, mv, m_se, higher)
                # a run still training (or stopped) is compared up to its last evaluation: say so
                unfinished = [f"{r.series} at epoch {e[-1]:.3g}" for r, e in ((a, ae), (m, me)) if not r.done]
                rows.append({"params": params, "unique_tokens": unique, "epochs": max(a.epochs, m.epochs), "unfinished": unfinished,
                             "ar_series": a_name, "mdm_series": m_name, "diffusion_objective": m.objective,
                             "ar_best": a_best[:2], "mdm_best": m_best[:2], "ar_best_stderr": a_best[2], "mdm_best_stderr": m_best[2],
                             "crossover_epoch": cross.epoch, "crossover": cross.describe(), "ar_final": av[-1], "mdm_final": mv[-1],
                             "crossover_low": _json_float(cross.low), "crossover_high": _json_float(cross.high),
                             "crossover_significant": cross.significant,
                             "crossover_interval": cross.describe_interval(), "passes_ar_best": passes.describe(),
                             "passes": {k: _json_float(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(passes).items()}})
    return rows, marks


def ratio_groups(panel_map, metric: str, n_boot: int | None = None) -> list:
    """The data ratio (`dllm_jax.study.crossover.data_ratios`) of every (model, AR series,
    diffusion series) across budgets: [(params, ar_series, mdm_series, ar_bests, mdm_bests,
    [DataRatio])], bests = {U: (value, epoch, stderr)}."""
    from dllm_jax.study.crossover import HIGHER_IS_BETTER, N_BOOT, best_per_budget, data_ratios

    higher, n_boot = HIGHER_IS_BETTER[metric], n_boot or N_BOOT
    curves = {}  # (params, 'ar' | 'mdm', series) -> {U: (epochs, values, stderr)}
    for (params, unique), series in panel_map.items():
        for side, runs in zip(("ar", "mdm"), _split(series)):
            for name, r in runs.items():
                e, _, v = r.curve(metric)
                if v:
                    curves.setdefault((params, side, name), {})[unique] = (e, v, r.curve_stderr(metric))
    out = []
    for (params, side, a_name), a_curves in sorted(curves.items()):
        if side != "ar":
            continue
        for (p, m_side, m_name), m_curves in sorted(curves.items()):
            if p == params and m_side == "mdm":
                ar_bests, mdm_bests = best_per_budget(a_curves, higher), best_per_budget(m_curves, higher)
                out.append((params, a_name, m_name, ar_bests, mdm_bests, data_ratios(ar_bests, mdm_bests, higher, n_boot=n_boot)))
    return out


def ratio_section(groups: list, metric: str, n_boot: int) -> tuple[list, list]:
    """Markdown lines and JSON rows of the data-ratio table of one downstream metric."""
    from dllm_jax.study.crossover import METRIC_TITLES
    from dllm_jax.study.runs import model_label

    lines = [f"### Data ratio: {METRIC_TITLES[metric]}", "",
             "The study's \"> 3x data potential\" (a DLM on 0.5B unique tokens matches an AR on 1.5B). At each budget U: the "
             "unique tokens AR needs for its best score to reach the MDM's best at U (AR's best per budget, linear in log U "
             "between its budgets), divided by U; a bound (> or <=) when that lies outside AR's budgets. Converse: U divided by "
             f"the unique tokens the MDM needs to reach AR's best at U. 95% intervals: a parametric bootstrap ({n_boot} "
             "resamples; each run's best redrawn from N(best, SE^2), the ratios recomputed). See `dllm_jax.study.crossover`.", "",
             "| model | AR series | MDM series | U | best AR at U (+-SE) | best MDM at U (+-SE) | AR's unique tokens to match the MDM | data ratio (95%) | converse ratio (95%) |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for params, a_name, m_name, ar_bests, mdm_bests, ratios in groups:
        for r in ratios:
            ab, mb = ar_bests.get(r.unique_tokens), mdm_bests[r.unique_tokens]
            needed = f"{r.ar_needed:,.0f}" if r.bound == "=" else f"{r.bound} {r.ar_needed:,.0f}"
            lines.append(f"| {model_label(params)} | {a_name} | {m_name} | {r.unique_tokens:,} | {_fmt_se(ab)} | {_fmt_se(mb)} | {needed} | "
                         f"{r.describe()} | {r.describe_converse()} |")
            rows.append({"params": params, "ar_series": a_name, "mdm_series": m_name, "data_ratio": r.describe(),
                         "converse_ratio": r.describe_converse(),
                         **{k: _json_float(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(r).items()}})
    return lines + [""], rows


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
             "token: what differs is how many tokens each needs to use the data (see the crossover tables). Uniform-state and "
             "GIDD diffusion cost what the MDM costs (their KL over the vocabulary adds elementwise work, no matmuls).", "",
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

def _fmt_best(b, metric, stderr=None):
    if b is None:
        return "-"
    return f"{b[0]:.4f}" + (f" +-{stderr:.4f}" if stderr is not None else "") + f" (ep {b[1]:.1f})"


def _fmt_se(point):
    """(value, epoch, stderr) -> '0.4264 +-0.0226 (ep 10.0)'."""
    return "-" if point is None else _fmt_best(point[:2], None, point[2])


def build_report(root: str, out: str | None = None, *, flops_configs=(), prompt_len: int = 1, fit_loss: str = "final",
                 n_boot: int | None = None) -> dict:
    """Write the report (module docstring); n_boot: bootstrap resamples (default crossover.N_BOOT)."""
    from dllm_jax.study import plots
    from dllm_jax.study.crossover import HIGHER_IS_BETTER, METRIC_TITLES, N_BOOT
    from dllm_jax.study.runs import load_runs, model_label, panels

    if not str(root).strip():
        raise ConfigError("--root is empty: give the sweep directory (the --root of `dllm-jax sweep`)")
    runs = sorted(load_runs(root), key=lambda r: (r.params, r.unique_tokens, r.series))
    if not runs:
        if paths.exists(paths.join(root, "config.json")):
            raise ConfigError(f"{root!r} is one run's workdir; --root takes the sweep directory that holds the runs "
                              f"(here its parent, {paths.dirname(paths.absolute(root))!r})")
        raise ConfigError(f"no runs under {root!r} (a run is a directory with config.json); run `dllm-jax sweep` first")
    extra_models = [config_model(path) for path in flops_configs]  # a bad --flops-config fails before anything is written
    task = cloze_task(runs)  # and so do runs scored on different cloze tasks
    out = paths.expand(out or root)
    paths.makedirs(out)
    panel_map = panels(runs)
    n_boot = n_boot or N_BOOT
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
           f"made from held-out text: {task}). Validation loss is **not** a fair AR-vs-MDM comparison: AR reports an exact NLL, the "
           "MDM an ELBO (an upper bound on its NLL), and AR validation loss can rise with repetition while its downstream "
           "accuracy still improves. Its table is given for completeness.", "",
           "Uncertainty (downstream metrics, from each evaluation's binomial standard error SE): the crossover's 2-SE "
           "bracket [a..b]: a = the last epoch at which AR is ahead by more than 2 SE of the difference "
           "(sqrt(SE_ar^2 + SE_mdm^2)), b = the epoch from which the MDM is ahead by more than 2 SE at every later "
           "evaluation; '<first' / '>last' = open (never); a crossover whose bracket is open at the top is \"not "
           "significant\". \"MDM > AR's best + 2 SE\": the MDM's score at an evaluation exceeds the best AR evaluation "
           "of the whole AR run by more than 2 sqrt(SE_mdm^2 + SE_ar^2); 'from epoch X': at every evaluation from X on. "
           "Why these and their caveats: `dllm_jax.study.crossover`.", ""]
    if not any(r.val for r in runs):
        md += ["No run has an evaluation record yet (stopped before its first evaluation, or still before it): "
               "nothing to compare. Rerun the sweep command to continue them.", ""]
    elif headline == "val_loss":
        md += ["No run logged a downstream metric (cloze_acc): the crossover below is on validation loss only. Enable "
               "periodic cloze evaluation (the `eval` config group) for the study's metric.", ""]
    crossovers, ratios, figures = {}, {}, []
    for metric in metrics:
        rows, marks = crossover_rows(panel_map, metric)
        crossovers[metric] = rows
        arrow = "higher is better" if HIGHER_IS_BETTER[metric] else "lower is better"
        md += [f"### {METRIC_TITLES[metric]} ({arrow})", "",
               "| model | U | epochs | AR series | MDM / block-diffusion series | best AR +-SE (epoch) | best diffusion +-SE (epoch) "
               "| crossover epoch [2-SE bracket] | MDM > AR's best + 2 SE |",
               "|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            epochs = f"{row['epochs']:.3g}" + (f" (unfinished: {', '.join(row['unfinished'])})" if row["unfinished"] else "")
            md.append(f"| {model_label(row['params'])} | {row['unique_tokens']:,} | {epochs} | {row['ar_series']} | {row['mdm_series']} | "
                      f"{_fmt_best(row['ar_best'], metric, row['ar_best_stderr'])} | {_fmt_best(row['mdm_best'], metric, row['mdm_best_stderr'])} | "
                      f"{row['crossover_interval']} | {row['passes_ar_best']} |")
        missing = [r.name for r in runs if not r.curve(metric)[2]]
        if missing:
            md.append(f"Not compared (no {metric} record): {', '.join(missing)}.")
        md.append("")
        for xaxis in ("epochs", "tokens"):
            name = f"crossover_{metric}_{xaxis}.png"
            if plots.plot_crossover(panel_map, metric, xaxis, paths.join(out, name), marks):
                figures.append(name)
                md += [f"![{metric} vs {xaxis}]({name})", ""]
        if metric in DOWNSTREAM:
            groups = ratio_groups(panel_map, metric, n_boot)
            if any(g[5] for g in groups):
                lines, ratios[metric] = ratio_section(groups, metric, n_boot)
                md += lines
                name = f"data_ratio_{metric}.png"
                if plots.plot_data_ratio(groups, metric, paths.join(out, name)):
                    figures.append(name)
                    md += [f"![best {metric} vs unique tokens]({name})", ""]

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
    models += extra_models
    flops_lines, flops_json = flops_section(models, prompt_len)
    md += [""] + flops_lines

    summary = {"root": paths.absolute(root), "machine": mach, "runs": run_rows, "headline_metric": headline,
               "crossovers": crossovers, "data_ratios": ratios, "fits": fits, "flops": flops_json, "figures": figures}
    paths.write_text(paths.join(out, "report.md"), "\n".join(md) + "\n")
    paths.write_text(paths.join(out, "report.json"), json.dumps(summary, indent=1, default=str))
    return summary
