"""Series of a sweep beyond one run per label: tuned series and AR's strongest series.

Kim, Kotha et al. ("Pre-training under infinite compute", arXiv:2509.14786) compare against
AR *tuned*: at each data budget the best of a weight-decay sweep (their regularised recipe
uses ~30x the usual weight decay). A sweep with a tuning axis (`dllm_jax.study.grid.tuning_variants`:
`train.weight_decay`, and MIR's `ar.mir_*` on top) trains several runs of one series that
differ only in those keys. Here (decided):

- a run's *family* (`Run.family`, set by `runs.assign_series`) is its series label without the
  tuning keys (`runs.TUNING_KEYS`): 'ar weight_decay=0.8 mir_weight=0.4' is of family 'ar';
- where a family has two or more series at a (model, budget), the panel gains the series
  '<family>-tuned': the run of that family with the best score on the metric at hand (its best
  evaluation: highest accuracy / lowest loss; the first series by name on a tie), chosen per
  budget and per metric, so the tuned series may be a different weight decay at each U;
- AR's *strongest series* at a budget is the AR series (tuned series included) with the best
  score there; the report compares every diffusion series with it and names it (for a tuned
  series, with the variant it picked). With one AR series per panel nothing changes.

Selecting the best of several runs on the metric that is then compared favours the tuned
side slightly (the maximum of noisy scores is biased up); that is the protocol of Kim et al.
(tuned on the validation loss they report) and errs in AR's favour, against the claim tested.
"""

from __future__ import annotations

TUNED_SUFFIX = "-tuned"


def run_score(run, metric: str, higher: bool):
    """The run's best value of `metric` over its evaluations, or None when it logged none."""
    from dllm_jax.study.crossover import best

    epochs, _, values = run.curve(metric)
    b = best(epochs, values, higher) if values else None
    return None if b is None else b[0]


def _better(a, b, higher: bool) -> bool:
    return a > b if higher else a < b


def with_tuned(panel_map: dict, metric: str, higher: bool) -> tuple[dict, dict]:
    """({(params, U): {series: run}} with '<family>-tuned' added where a family has >= 2 series
    with a `metric` record in the panel, {(params, U, tuned series): the series it picked})."""
    out, picks = {}, {}
    for key, series in panel_map.items():
        cell, families = dict(series), {}
        for name in sorted(series):
            run = series[name]
            if run_score(run, metric, higher) is not None:
                families.setdefault(getattr(run, "family", "") or name, []).append(name)
        for family, names in families.items():
            if len(names) < 2:
                continue
            best = names[0]
            for name in names[1:]:
                if _better(run_score(series[name], metric, higher), run_score(series[best], metric, higher), higher):
                    best = name
            cell[family + TUNED_SUFFIX] = series[best]
            picks[key + (family + TUNED_SUFFIX,)] = best
        out[key] = cell
    return out, picks


def represented(cell: dict, picks_of_cell: dict) -> dict:
    """`cell` without the series a tuned series stands for (its family's variants): the tuned
    series plus the series of families with one member."""
    tuned_families = {name[: -len(TUNED_SUFFIX)] for name in picks_of_cell}
    return {name: run for name, run in cell.items()
            if name in picks_of_cell or (getattr(run, "family", "") or name) not in tuned_families}


def strongest(cell: dict, metric: str, higher: bool) -> str | None:
    """The series of `cell` ({series: run}) with the best `metric` score; on a tie a tuned
    series wins (it names its pick), then the first by name. None when none has a score."""
    best_name, best_score = None, None
    for name in sorted(cell, key=lambda n: (not n.endswith(TUNED_SUFFIX), n)):
        score = run_score(cell[name], metric, higher)
        if score is not None and (best_score is None or _better(score, best_score, higher)):
            best_name, best_score = name, score
    return best_name


def describe(name: str, pick: str | None) -> str:
    """'ar-tuned (ar weight_decay=0.8)' for a tuned series, else the name."""
    return f"{name} ({pick})" if pick else name


__all__ = ["TUNED_SUFFIX", "run_score", "with_tuned", "represented", "strongest", "describe"]
