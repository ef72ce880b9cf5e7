"""`dllm-jax report --root DIR`: crossover plots and tables, R* fits and FLOPs tables of a sweep.

Reads every run under DIR (see `dllm_jax.study.runs`) and writes, in DIR (or --out):

- `crossover_<metric>_epochs.png`, `crossover_<metric>_tokens.png`: each metric the runs
  logged (cloze_acc, cloze_acc_norm, val_loss) against epochs and tokens seen, AR vs MDM,
  one panel per unique-token budget, +-2 standard-error bands where logged, the crossover
  and its 2-SE bracket marked;
- `data_ratio_<metric>.png`: each objective's best downstream score against U (log x) with
  +-2 SE bars, and the unique data AR needs to match each MDM point (the data ratio);
- `report.md`: the runs, a crossover table per metric (per budget and diffusion series,
  against AR's strongest series there, 'ar-tuned' for a weight-decay / MIR sweep
  (`dllm_jax.study.series`): best AR and best MDM score, the epoch of each, the crossover
  epoch with its 2-SE bracket, and whether
  the MDM passes AR's best by more than 2 standard errors), the data-ratio table per
  downstream metric (the study's "> 3x"; definitions in `dllm_jax.study.crossover`), the R*
  fits with their quality, training
  FLOPs per token and inference FLOPs for generating 16..4096 tokens (`dllm_jax.flops`,
  the module the train loop uses for MFU), and the machine the report was made on;
- `scaling_fit.png`: each series' validation loss with its fitted Muennighoff curve;
- `report.json`: the same numbers, machine-readable.

Fits use the validation points after warmup (`train.warmup_steps`): before it the loss
reflects the learning-rate ramp, not the data.

Also stated (decided here): the cloze task and where its numbers come from (`--cloze-from
train`, the default: the records training logged; `--cloze-from eval[:<task>]`: the files of
`dllm-jax eval --task cloze --step all`, see `dllm_jax.study.runs`); runs scored on different
cloze tasks are refused either way. The corpus of every run (`corpora`): its data location and
the content fingerprint of its token store (data_stats.json); runs whose fingerprints differ
are refused (a crossover row pairs runs of one budget, so it would compare objectives across
corpora), runs without a recorded fingerprint at another location are a warning (they cannot
be checked). The grid points of the sweep's plan (sweep_plan.json) that have no run are
listed as not started.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os

from dllm_jax import paths
from dllm_jax.errors import ConfigError
from dllm_jax.study.runs import PLAN_FILE as PLAN_NAME

log = logging.getLogger("dllm_jax")

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
    def task_config(r):  # the task of its cloze records: rescoring files' (--cloze-from eval) or its config's
        return getattr(r, "cloze_config", None) or r.config

    scored = [r for r in runs if any("cloze_acc" in v for v in r.val)]
    if not scored:
        return _describe_cloze(task_config(runs[0]))
    tasks: dict[str, list[str]] = {}
    for r in scored:
        tasks.setdefault(_describe_cloze(task_config(r)), []).append(r.name)
    if len(tasks) > 1:
        listed = "; ".join(f"{task} ({', '.join(names)})" for task, names in tasks.items())
        raise ConfigError(f"the runs were scored on different cloze tasks, whose accuracies cannot be compared: {listed}. "
                          "Report them from separate --root folders, or rescore the checkpoints on one task with "
                          "`dllm-jax eval --task cloze --step all --config.eval.cloze_*=...` and report those with "
                          "`dllm-jax report --cloze-from eval`")
    return next(iter(tasks))


def corpora(runs) -> tuple[list, list]:
    """([{'fingerprint', 'locations', 'corpus_tokens', 'documents', 'runs'}] one per corpus, [warning]):
    runs grouped by their token store's content fingerprint (data_stats.json), runs without one
    by their data location. Raises ConfigError when runs have different fingerprints (naming
    each corpus and its runs); a run without a fingerprint at a location no fingerprinted run
    used is a warning (the same corpus cannot be told from another)."""
    groups: dict = {}
    for r in runs:
        key = ("fingerprint", r.data_fingerprint) if r.data_fingerprint else ("location", r.corpus)
        g = groups.setdefault(key, {"fingerprint": r.data_fingerprint, "locations": [], "corpus_tokens": r.data_stats.get("corpus_tokens"),
                                    "documents": r.data_stats.get("documents"), "runs": []})
        if r.corpus not in g["locations"]:
            g["locations"].append(r.corpus)
        g["runs"].append(r.name)
    known = [g for k, g in groups.items() if k[0] == "fingerprint"]
    if len(known) > 1:
        listed = "; ".join(f"fingerprint {g['fingerprint']} at {', '.join(g['locations'])} ({', '.join(g['runs'])})" for g in known)
        raise ConfigError(f"the runs were trained on different corpora (token store content fingerprints in their "
                          f"data_stats.json): {listed}. A crossover pairs the runs of one budget, so it would compare "
                          "objectives across corpora: report them from separate --root folders")
    known_locations = {loc for g in known for loc in g["locations"]}
    unknown = [g for k, g in groups.items() if k[0] == "location"]
    warnings = []
    if unknown and (known or len(unknown) > 1):
        for g in unknown:
            if g["locations"][0] not in known_locations:
                warnings.append(f"runs {', '.join(g['runs'])} have no data fingerprint (no data_stats.json) and used "
                                f"{g['locations'][0]}, which no other run names: whether they trained on the same corpus "
                                "cannot be checked")
    return list(groups.values()), warnings


def _describe_corpus(g: dict) -> str:
    size = (f", {g['corpus_tokens']:,} tokens" + (f" in {g['documents']:,} documents" if g.get("documents") else "")) if g.get("corpus_tokens") else ""
    fp = f"token store fingerprint {g['fingerprint']}" if g["fingerprint"] else "fingerprint not recorded (no data_stats.json)"
    return f"{' and '.join(g['locations'])} ({fp}{size})"


def not_started(root: str, runs) -> tuple[list, int]:
    """([planned point {'index', 'name', 'overrides'}] without a run under `root`, number planned), from
    the sweep's plan (ROOT/sweep_plan.json); ([], 0) without a plan."""
    from dllm_jax.study.runs import load_plan

    plan = load_plan(root)
    points = plan.get("points", []) if isinstance(plan, dict) else []
    have = {r.name for r in runs}
    return [p for p in points if p.get("name") not in have], len(points)


def add_arguments(parser) -> None:
    parser.add_argument("--root", required=True, help="the --root of a sweep (one workdir per run)")
    parser.add_argument("--out", default=None, help="where to write the report (default: --root)")
    parser.add_argument("--flops-config", action="append", default=[], metavar="PATH",
                        help="also tabulate FLOPs for the model of this experiment file (e.g. experiments/paper_1b.py); repeatable")
    parser.add_argument("--prompt-len", type=int, default=1, help="prompt tokens before generation in the inference FLOPs table (default 1: BOS)")
    parser.add_argument("--fit-loss", default="final", choices=FIT_LOSSES,
                        help="which validation loss of each run the R* fit uses: its final one (default, as Muennighoff et al.) or its best")
    parser.add_argument("--cloze-from", default="train", metavar="train|eval|eval:TASK",
                        help="where the cloze accuracies come from: 'train' (default: the records training logged), 'eval' (each run's "
                             "eval/cloze-*_step<N>.json files from `dllm-jax eval --task cloze --step all`), or 'eval:TASK' to pick "
                             "one task where several were scored, e.g. eval:cloze-len1-both")


def run(args) -> int:
    summary = build_report(args.root, args.out, flops_configs=args.flops_config, prompt_len=args.prompt_len, fit_loss=args.fit_loss,
                           cloze_from=args.cloze_from)
    out = args.out or args.root
    print(f"report: {paths.join(out, 'report.md')} ({len(summary['runs'])} runs, figures: {', '.join(summary['figures']) or 'none'})")
    if summary["not_started"]:
        print(f"  not started: {len(summary['not_started'])} of the sweep's {summary['planned']} planned points "
              f"({', '.join(p['name'] for p in summary['not_started'])})")
    for row in summary["crossovers"].get(summary["headline_metric"], []):
        print(f"  U={row['unique_tokens']:,} {_series_cell(row, 'ar')} vs {_series_cell(row, 'mdm')}: crossover {row['crossover']}"
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


def _series_panels(panel_map, metric: str) -> tuple[dict, dict]:
    """Each panel's series as compared (`dllm_jax.study.series`): a tuning family's variants
    replaced by '<family>-tuned' (the best at that budget), and the AR side reduced to AR's
    strongest series there. Returns ({(params, U): (ars, diffusion)}, {(params, U, series): pick})."""
    from dllm_jax.study import series as series_lib
    from dllm_jax.study.crossover import HIGHER_IS_BETTER

    higher = HIGHER_IS_BETTER[metric]
    tuned, picks = series_lib.with_tuned(panel_map, metric, higher)
    out = {}
    for key, cell in tuned.items():
        cell = series_lib.represented(cell, {k[2]: v for k, v in picks.items() if k[:2] == key})
        ars, mdms = _split(cell)
        best = series_lib.strongest(ars, metric, higher) if len(ars) > 1 else None
        out[key] = ({best: ars[best]} if best else ars, mdms)
    return out, picks


def crossover_rows(panel_map, metric: str) -> tuple[list, dict]:
    """One row per (model, budget, diffusion series), against AR's strongest series at that
    budget (`_series_panels`: with a tuning sweep, 'ar-tuned', and 'ar_pick' names the run's
    series it picked; 'ar_series_compared' counts the AR series it was chosen from); also
    {(params, U, ar, mdm): Crossover}. 'mdm_series' names the diffusion side and
    'diffusion_objective' says which objective it is. With standard errors (cloze): the
    crossover's 2-SE bracket and the 2-SE test against AR's best (`dllm_jax.study.crossover`)."""
    from dllm_jax.study.crossover import HIGHER_IS_BETTER, best_point, find_crossover, passes_best

    higher = HIGHER_IS_BETTER[metric]
    rows, marks = [], {}
    compared, picks = _series_panels(panel_map, metric)
    for (params, unique), series in panel_map.items():
        ars, mdms = compared[(params, unique)]
        n_ar = len(_split(series)[0])
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
                             "ar_series": a_name, "ar_pick": picks.get((params, unique, a_name)), "ar_series_compared": n_ar,
                             "mdm_series": m_name, "mdm_pick": picks.get((params, unique, m_name)), "diffusion_objective": m.objective,
                             "ar_best": a_best[:2], "mdm_best": m_best[:2], "ar_best_stderr": a_best[2], "mdm_best_stderr": m_best[2],
                             "crossover_epoch": cross.epoch, "crossover": cross.describe(), "ar_final": av[-1], "mdm_final": mv[-1],
                             "crossover_low": _json_float(cross.low), "crossover_high": _json_float(cross.high),
                             "crossover_significant": cross.significant,
                             "crossover_interval": cross.describe_interval(), "passes_ar_best": passes.describe(),
                             "passes": {k: _json_float(v) if isinstance(v, float) else v for k, v in dataclasses.asdict(passes).items()}})
    return rows, marks


def series_best_rows(panel_map, metrics) -> list:
    """Each series of each panel at its best: one row per (model, budget, series), the series
    including '<family>-tuned' (picked per metric) and ensembles, with {metric: (value, epoch,
    stderr) or None} for each of `metrics`, 'picks' {metric: the variant a tuned series
    picked}, 'members' (the runs an ensemble averages, else 1), 'side' ('ar' / 'diffusion') and
    'strongest_ar' {metric: bool}: whether it is AR's strongest series there on that metric
    (`dllm_jax.study.series.strongest`, as the crossover tables use it)."""
    from dllm_jax.study import series as series_lib
    from dllm_jax.study.crossover import HIGHER_IS_BETTER, best_point

    cells = {m: series_lib.with_tuned(panel_map, m, HIGHER_IS_BETTER[m]) for m in metrics}
    rows = []
    for key in panel_map:
        names = sorted({n for m in metrics for n in cells[m][0][key]})
        ars = {m: _split(cells[m][0][key])[0] for m in metrics}
        strongest = {m: series_lib.strongest(ars[m], m, HIGHER_IS_BETTER[m]) for m in metrics}
        ar_names = {n for m in metrics for n in ars[m]}
        for name in sorted(names, key=lambda n: (n not in ar_names, n)):
            row = {"params": key[0], "unique_tokens": key[1], "series": name, "side": "ar" if name in ar_names else "diffusion",
                   "best": {}, "picks": {}, "strongest_ar": {}, "members": 1}
            for m in metrics:
                run = cells[m][0][key].get(name)
                if run is None:
                    row["best"][m] = None
                    continue
                row["members"] = max(1, len(run.ensemble))
                e, _, v = run.curve(m)
                row["best"][m] = best_point(e, v, run.curve_stderr(m), HIGHER_IS_BETTER[m]) if v else None
                row["picks"][m] = cells[m][1].get(key + (name,))
                row["strongest_ar"][m] = name == strongest[m]
            rows.append(row)
    return rows


def series_best_section(panel_map, metrics) -> tuple[list, list]:
    """(markdown lines, rows) of the table of every series at its best (`series_best_rows`)."""
    from dllm_jax.study.crossover import METRIC_TITLES
    from dllm_jax.study.runs import model_label
    from dllm_jax.study.series import describe

    rows = series_best_rows(panel_map, metrics)
    if not rows:
        return [], rows
    md = ["## Each series at its best", "",
          "Every series at each budget with its best evaluation (value +-SE, epoch); '-tuned' series are the best variant "
          "of their family on that metric (the variant in brackets), '-ensemble' series average K members' "
          "probabilities. **AR's strongest** series on a metric (the one the crossover tables compare with) is in bold.", "",
          "| model | U | series | runs averaged | " + " | ".join(f"best {METRIC_TITLES[m]}" for m in metrics) + " |",
          "|---" * (4 + len(metrics)) + "|"]
    for row in rows:
        cells = []
        for m in metrics:
            b = row["best"][m]
            text = "-" if b is None else _fmt_se(b)
            if row["picks"].get(m):
                text += f" [{row['picks'][m]}]"
            cells.append(f"**{text}**" if row["strongest_ar"].get(m) and b is not None else text)
        md.append(f"| {model_label(row['params'])} | {row['unique_tokens']:,} | {describe(row['series'], None)} | {row['members']} | "
                  + " | ".join(cells) + " |")
    return md + [""], rows


def ratio_groups(panel_map, metric: str, n_boot: int | None = None) -> list:
    """The data ratio (`dllm_jax.study.crossover.data_ratios`) of every (model, AR series,
    diffusion series) across budgets: [(params, ar_series, mdm_series, ar_bests, mdm_bests,
    [DataRatio])], bests = {U: (value, epoch, stderr)}. A tuning family counts once, as its
    '<family>-tuned' series (`dllm_jax.study.series`)."""
    from dllm_jax.study import series as series_lib
    from dllm_jax.study.crossover import HIGHER_IS_BETTER, N_BOOT, best_per_budget, data_ratios

    higher, n_boot = HIGHER_IS_BETTER[metric], n_boot or N_BOOT
    curves = {}  # (params, 'ar' | 'mdm', series) -> {U: (epochs, values, stderr)}
    tuned, picks = series_lib.with_tuned(panel_map, metric, higher)
    for (params, unique), series in tuned.items():
        # a tuning family counts as its tuned series (the best variant at each U)
        series = series_lib.represented(series, {k[2]: v for k, v in picks.items() if k[:2] == (params, unique)})
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
        recs = [v for v in r.val if v["step"] > warmup and v.get("tokens_seen") and isinstance(v.get("val_loss"), (int, float))]
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


def _series_cell(row: dict, side: str) -> str:
    """A crossover row's series, with the variant a tuned series picked and, for AR, how many
    series the strongest was chosen from: 'ar-tuned (ar weight_decay=0.8; strongest of 4)'."""
    from dllm_jax.study.series import describe

    text = describe(row[f"{side}_series"], row.get(f"{side}_pick"))
    n = row.get("ar_series_compared", 1) if side == "ar" else 1
    if n > 1:
        text = text[:-1] + f"; strongest of {n})" if text.endswith(")") else f"{text} (strongest of {n})"
    return text


def _fmt_se(point):
    """(value, epoch, stderr) -> '0.4264 +-0.0226 (ep 10.0)'."""
    return "-" if point is None else _fmt_best(point[:2], None, point[2])


def build_report(root: str, out: str | None = None, *, flops_configs=(), prompt_len: int = 1, fit_loss: str = "final",
                 n_boot: int | None = None, cloze_from: str = "train") -> dict:
    """Write the report (module docstring); n_boot: bootstrap resamples (default crossover.N_BOOT);
    cloze_from: 'train', 'eval' or 'eval:<task>' (`dllm_jax.study.runs.use_cloze_evals`)."""
    from dllm_jax.study import plots
    from dllm_jax.study.crossover import HIGHER_IS_BETTER, METRIC_TITLES, N_BOOT
    from dllm_jax.study.runs import load_runs, model_label, panels

    if not str(root).strip():
        raise ConfigError("--root is empty: give the sweep directory (the --root of `dllm-jax sweep`)")
    runs = sorted(load_runs(root, cloze_from), key=lambda r: (r.params, r.unique_tokens, r.series))
    if not runs:
        if paths.exists(paths.join(root, "config.json")):
            raise ConfigError(f"{root!r} is one run's workdir; --root takes the sweep directory that holds the runs "
                              f"(here its parent, {paths.dirname(paths.absolute(root))!r})")
        planned = not_started(root, runs)[1]
        raise ConfigError(f"no runs under {root!r} (a run is a directory with config.json)"
                          + (f"; its sweep plan has {planned} points, none started" if planned else "") + "; run `dllm-jax sweep` first")
    extra_models = [config_model(path) for path in flops_configs]  # a bad --flops-config fails before anything is written
    task = cloze_task(runs)  # and so do runs scored on different cloze tasks
    corpus_groups, corpus_warnings = corpora(runs)  # and runs trained on different corpora
    for w in corpus_warnings:
        log.warning("%s", w)
    missing_points, planned = not_started(root, runs)
    from_eval = cloze_from != "train"
    rescored = sorted({t for r in runs for t in r.eval_cloze_tasks})
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
    if len(corpus_groups) == 1:
        md += ["", f"Corpus of all {len(runs)} runs: {_describe_corpus(corpus_groups[0])}."]
    else:
        md += ["", "Corpora:"] + [f"- {_describe_corpus(g)}: {', '.join(g['runs'])}" for g in corpus_groups]
    md += [f"Warning: {w}." for w in corpus_warnings]
    total_wall = sum(r.wall_seconds() or 0 for r in runs)
    md += ["", "## Runs", "",
           "Wall time: every `dllm-jax sweep` attempt at the run (data, compilation, training, evaluation); training "
           "time and tokens/s: the optimiser steps alone, from the training records' step times; compile / eval / "
           "checkpoint: the seconds the training loop spent compiling (each process's first step), evaluating and "
           "saving. A train time marked * comes from records logged before step times were split off: it also counts "
           "the evaluation, checkpoint and compile time of its windows." + (f" Total wall time: {total_wall / 3600:.2f} h." if total_wall else ""), "",
           "| run | series | params | U (unique tokens) | epochs | tokens | train FLOPs | wall time (s) | train time (s) | tokens/s | "
           "compile / eval / checkpoint (s) | done | final val_loss |" +
           (" final " + headline + " |" if headline != "val_loss" else ""), "|---" * (13 + (headline != "val_loss")) + "|"]
    run_rows = []
    for r in runs:
        tokens = (r.info.get("num_steps") or 0) * r.info.get("global_batch", 0) * r.info.get("seq_len", 0)
        secs, wall, overheads = r.seconds(), r.wall_seconds(), r.overhead_seconds()
        # the last value of each metric (a rescored step may have no validation record, and the reverse)
        final = {k: v for rec in r.val for k, v in rec.items()} if r.val else {}
        row = {"name": r.name, "series": r.series, "objective": r.objective, "params": r.params, "unique_tokens": r.unique_tokens,
               "epochs": r.epochs, "tokens": tokens, "train_flops": tokens * r.info.get("flops_per_token", 0), "wall_seconds": wall,
               "train_seconds": secs, "tokens_per_sec": tokens / secs if secs else None,
               "train_seconds_include_overheads": r.seconds_include_overheads, **{f"{k}_seconds": v for k, v in overheads.items()},
               "done": r.done, "final": final, "corpus": r.corpus, "data_fingerprint": r.data_fingerprint}
        run_rows.append(row)
        split = " / ".join("-" if v is None else f"{v:.0f}" for v in overheads.values()) if overheads else "-"
        md.append(f"| {r.name} | {r.series} | {model_label(r.params)} | {r.unique_tokens:,} | {r.epochs:.3g} | {tokens:.3g} | {row['train_flops']:.3g} | "
                  f"{'-' if wall is None else f'{wall:.0f}'} | {secs or 0:.0f}{'*' if r.seconds_include_overheads else ''} | "
                  f"{row['tokens_per_sec'] or 0:.0f} | {split} | {'yes' if r.done else 'no'} | "
                  f"{final.get('val_loss', float('nan')):.4f} |" + (f" {final.get(headline, float('nan')):.4f} |" if headline != "val_loss" else ""))

    if missing_points:
        md += ["", f"Not started: {len(missing_points)} of the {planned} points the sweep planned ({PLAN_NAME}) have no run here: "
               + ", ".join(f"{p['name']} ({' '.join(f'{k}={v}' for k, v in p.get('overrides', {}).items())})" for p in missing_points) + "."]
    best_lines, best_rows = series_best_section(panel_map, metrics)
    md += [""] + best_lines if best_lines else []
    source = (f"accuracies from the `dllm-jax eval --task cloze --step all` rescoring files in each run's eval/ folder "
              f"(--cloze-from {cloze_from})" if from_eval else "accuracies logged during training")
    md += ["", "## Crossover", "",
           "The MDM's crossover epoch is where it goes ahead of AR for good (linear interpolation between evaluations; "
           "see `dllm_jax.study.crossover`). The study's crossover metric is a downstream accuracy (here the cloze task "
           f"made from held-out text: {task}; {source}). Validation loss is **not** a fair AR-vs-MDM comparison: AR reports an exact NLL, the "
           "MDM an ELBO (an upper bound on its NLL), and AR validation loss can rise with repetition while its downstream "
           "accuracy still improves. Its table is given for completeness.", "",
           "Series: a sweep's variants of one series over the tuning keys (weight decay, MIR: `--grid weight_decays=...`) "
           "form a family, and '<family>-tuned' is the best of them at each budget (Kim, Kotha et al.'s \"AR tuned\"); "
           "where a budget has several AR series, each diffusion series is compared with AR's strongest series there, "
           "named with the variant it picked and the number of AR series it was chosen from (`dllm_jax.study.series`).", "",
           "Uncertainty (downstream metrics, from each evaluation's binomial standard error SE): the crossover's 2-SE "
           "bracket [a..b]: a = the last epoch at which AR is ahead by more than 2 SE of the difference "
           "(sqrt(SE_ar^2 + SE_mdm^2)), b = the epoch from which the MDM is ahead by more than 2 SE at every later "
           "evaluation; '<first' / '>last' = open (never); a crossover whose bracket is open at the top is \"not "
           "significant\". \"MDM > AR's best + 2 SE\": the MDM's score at an evaluation exceeds the best AR evaluation "
           "of the whole AR run by more than 2 sqrt(SE_mdm^2 + SE_ar^2); 'from epoch X': at every evaluation from X on. "
           "Why these and their caveats: `dllm_jax.study.crossover`.", ""]
    if rescored and not from_eval:
        md += [f"Some runs also have cloze rescoring files ({', '.join(rescored)}); `dllm-jax report --cloze-from eval` "
               "(or eval:<task>) reports those instead.", ""]
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
               "| model | U | epochs | AR series | diffusion series | best AR +-SE (epoch) | best diffusion +-SE (epoch) "
               "| crossover epoch [2-SE bracket] | MDM > AR's best + 2 SE |",
               "|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            epochs = f"{row['epochs']:.3g}" + (f" (unfinished: {', '.join(row['unfinished'])})" if row["unfinished"] else "")
            md.append(f"| {model_label(row['params'])} | {row['unique_tokens']:,} | {epochs} | {_series_cell(row, 'ar')} | {_series_cell(row, 'mdm')} | "
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
               "cloze_task": task, "cloze_from": cloze_from, "corpora": corpus_groups, "corpus_warnings": corpus_warnings,
               "planned": planned, "not_started": missing_points,
               "series_best": best_rows, "crossovers": crossovers, "data_ratios": ratios, "fits": fits, "flops": flops_json, "figures": figures}
    paths.write_text(paths.join(out, "report.md"), "\n".join(md) + "\n")
    paths.write_text(paths.join(out, "report.json"), json.dumps(summary, indent=1, default=str))
    return summary
