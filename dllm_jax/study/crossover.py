"""Best scores, the AR -> MDM crossover of two validation curves, its uncertainty, and the
study's data ratio.

Metrics and their direction: `cloze_acc`, `cloze_acc_norm` (higher is better; the
downstream-style metric the study's crossover is about) and `val_loss` (lower is better).
For val_loss AR reports an exact NLL and MDM an ELBO (an upper bound on its NLL), so the
two are not the same quantity: an MDM ELBO below the AR NLL does imply a lower MDM NLL, but
AR validation loss can rise with repetition while its downstream accuracy still improves,
so the crossover the study reports is on the downstream metric.

Crossover (decided here): the two curves are compared on the epochs where both were
evaluated (linear interpolation of each onto the union of their evaluation epochs, within
the range both cover). The crossover epoch is where the MDM goes ahead *for good*: after
the last evaluation at which AR is at least as good, linearly interpolated to where the
difference crosses zero. If the MDM is ahead at every evaluation there is no crossover
('mdm ahead throughout'); if AR is ahead (or equal) at the last evaluation there is none
either ('ar ahead at the end').

Its uncertainty (decided here): a parametric bootstrap. Every evaluation of both curves is
redrawn from N(value, stderr^2), independently across evaluations and runs, and the
crossover epoch recomputed (`N_BOOT` resamples, seeded: the report is deterministic). A
resample whose MDM is ahead throughout counts as a crossover before the first common
evaluation (-inf), one with AR ahead at the end as a crossover after the last (+inf); the
95% interval is the 2.5 and 97.5 percentiles of all resamples, so an open end reads "before
the first / after the last evaluation". The crossover is "not determined" when fewer than
`MIN_FRACTION` of the resamples cross inside the run. Notes: the standard errors are the
cloze task's binomial ones (item sampling; the MDM's Monte Carlo likelihood noise is not in
them); AR and MDM runs on the same data are scored on the same items, so their errors are
positively correlated and treating them as independent overstates the noise of the
difference (a conservative, wider interval); and "for good" is a last-crossing statistic,
which noise moves later, so the interval leans late.

Significance (the issue's test, `passes_best`): the MDM passes AR's best, the best AR
evaluation over the whole AR run (value b, standard error s_b), by more than `Z_PASS`
standard errors at evaluation i when m_i - b > 2 sqrt(s_i^2 + s_b^2); reported: whether it
does at some evaluation, the first such epoch, and the epoch from which every later
evaluation does. AR's best is the maximum of noisy evaluations (biased up: conservative),
and many MDM evaluations are tried (not corrected for: anti-conservative).

Data ratio (decided here; the study's "> 3x data potential": a DLM on 0.5B unique tokens
matches an AR on 1.5B): AR_best(U) and MDM_best(U) are the best downstream score of each
objective's run at budget U. For an MDM budget U, `unique_needed` finds the unique tokens U_AR
at which AR_best, linearly interpolated in log U between the AR budgets, first reaches
MDM_best(U); the ratio is U_AR / U (e.g. AR_best = 0.4, 0.6 at U = 1e4, 1e5 and
MDM_best(1e4) = 0.5: U_AR = 10^4.5, ratio 3.16). When AR_best at every budget is below
MDM_best(U) the ratio is a lower bound "> U_max / U"; when AR's smallest budget already
reaches it, an upper bound "<= U_min / U". The converse is given too: the unique tokens U_MDM
at which MDM_best reaches AR_best(U), as the ratio U / U_MDM. The 95% intervals come from the
same parametric bootstrap (every evaluation of every run redrawn, each run's best retaken,
censored ratios counted as +-inf as for the crossover).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

N_BOOT = 2000  # bootstrap resamples
BOOT_SEED = 0
MIN_FRACTION = 0.5  # a crossover interval is given when at least this share of resamples cross inside the run
Z_PASS = 2.0  # "passes AR's best by more than Z_PASS standard errors"
LEVEL = (2.5, 97.5)  # the percentile interval (95%)

HIGHER_IS_BETTER = {"cloze_acc": True, "cloze_acc_norm": True, "val_loss": False}
METRIC_TITLES = {
    "cloze_acc_norm": "cloze accuracy (length-normalised)",
    "cloze_acc": "cloze accuracy",
    "val_loss": "validation loss (AR: NLL, MDM: ELBO)",
}


def best(epochs, values, higher: bool) -> tuple[float, float] | None:
    """(best value, epoch at it); the first best if tied."""
    if not values:
        return None
    values = np.asarray(values, dtype=float)
    i = int(np.argmax(values) if higher else np.argmin(values))
    return float(values[i]), float(epochs[i])


@dataclasses.dataclass
class Crossover:
    epoch: float | None  # None: no crossover (see `state`)
    state: str  # 'crossover' | 'mdm ahead throughout' | 'ar ahead at the end' | 'no overlap'
    value: float | None = None  # metric value where the curves cross (interpolated)
    # uncertainty (when both curves have standard errors): the 95% percentile interval of the
    # bootstrap (-inf: before the first common evaluation, +inf: after the last) and the share of
    # resamples that cross inside the run; None without standard errors
    low: float | None = None
    high: float | None = None
    fraction: float | None = None
    first_epoch: float | None = None  # the common epoch range, for describing open interval ends
    last_epoch: float | None = None

    @property
    def determined(self) -> bool:
        return self.fraction is not None and self.fraction >= MIN_FRACTION

    def describe(self) -> str:
        return f"{self.epoch:.1f}" if self.epoch is not None else self.state

    def describe_interval(self) -> str:
        """e.g. '20.0 (18.2..23.5; 97% of resamples cross)', '76.0 (61.3..>81; 64% ...)',
        'not determined (76.0 in the data; 31% of resamples cross)'; '-' without standard errors."""
        if self.fraction is None:
            return "-"
        share = f"{self.fraction:.0%} of resamples cross"
        if not self.determined:
            return f"not determined ({self.describe()} in the data; {share})"
        lo = f"<{self.first_epoch:.3g}" if self.low == -np.inf else f"{self.low:.1f}"
        hi = f">{self.last_epoch:.3g}" if self.high == np.inf else f"{self.high:.1f}"
        return f"{self.describe()} ({lo}..{hi}; {share})"


def find_crossover(ar_epochs, ar_values, mdm_epochs, mdm_values, higher: bool, *, ar_stderr=None, mdm_stderr=None,
                   n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> Crossover:
    """The crossover (module docstring); with `ar_stderr` and `mdm_stderr` (one per value, all
    known) also its bootstrap interval. Epochs in passes over U; values in the metric's unit."""
    ar_e, ar_v, ar_s = _sorted(ar_epochs, ar_values, ar_stderr)
    md_e, md_v, md_s = _sorted(mdm_epochs, mdm_values, mdm_stderr)
    if len(ar_e) == 0 or len(md_e) == 0:
        return Crossover(None, "no overlap")
    lo, hi = max(ar_e[0], md_e[0]), min(ar_e[-1], md_e[-1])
    grid = np.union1d(ar_e, md_e)
    grid = grid[(grid >= lo - 1e-9) & (grid <= hi + 1e-9)]
    if len(grid) == 0:
        return Crossover(None, "no overlap")
    w_ar, w_md = _interp_matrix(grid, ar_e), _interp_matrix(grid, md_e)  # [G, n]: values on the grid = w @ values
    sign = 1.0 if higher else -1.0  # lead > 0: the MDM is ahead
    a = w_ar @ ar_v
    epoch, state, frac, last = _crossings(grid, (sign * (w_md @ md_v - a))[None])
    if state[0] != _CROSS:
        cross = Crossover(None, _STATES[state[0]])
    else:
        i = last[0]
        cross = Crossover(float(epoch[0]), "crossover", float(a[i] + frac[0] * (a[i + 1] - a[i])))
    if ar_s is None or md_s is None:
        return cross
    rng = np.random.default_rng(seed)
    ar_draw = ar_v + ar_s * rng.standard_normal((n_boot, len(ar_v)))
    md_draw = md_v + md_s * rng.standard_normal((n_boot, len(md_v)))
    epochs, states, _, _ = _crossings(grid, sign * (md_draw @ w_md.T - ar_draw @ w_ar.T))
    x = np.where(states == _CROSS, epochs, np.where(states == _AHEAD, -np.inf, np.inf))
    cross.low, cross.high = (float(q) for q in np.percentile(x, LEVEL, method="inverted_cdf"))
    cross.fraction = float(np.mean(states == _CROSS))
    cross.first_epoch, cross.last_epoch = float(grid[0]), float(grid[-1])
    return cross


_CROSS, _AHEAD, _BEHIND = 0, 1, 2
_STATES = {_AHEAD: "mdm ahead throughout", _BEHIND: "ar ahead at the end"}


def _crossings(grid, lead):
    """Crossover of every row of `lead` [S, G] (> 0: the MDM ahead at grid epoch g) ->
    (epoch [S] (nan without one), state [S] (_CROSS/_AHEAD/_BEHIND), frac [S], last [S]):
    `last` is the last grid index where AR is at least as good, `frac` the zero of the lead
    between it and the next one."""
    s, g = lead.shape
    behind = lead <= 0
    any_behind = behind.any(axis=1)
    last = g - 1 - np.argmax(behind[:, ::-1], axis=1)
    state = np.where(~any_behind, _AHEAD, np.where(last == g - 1, _BEHIND, _CROSS))
    if g == 1:
        return np.full(s, np.nan), state, np.full(s, np.nan), last
    i = np.minimum(last, g - 2)
    rows = np.arange(s)
    d0, d1 = lead[rows, i], lead[rows, i + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(state == _CROSS, -d0 / (d1 - d0), np.nan)  # d0 <= 0 < d1
    return grid[i] + frac * (grid[i + 1] - grid[i]), state, frac, last


def _interp_matrix(grid, epochs):
    """W [G, n] with W @ values == np.interp(grid, epochs, values) for every `values` [n]."""
    return np.stack([np.interp(grid, epochs, col) for col in np.eye(len(epochs))], axis=1)


def _sorted(epochs, values, stderr=None):
    e, v = np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(e, kind="stable")
    s = None
    if stderr is not None and len(stderr) == len(v) and all(x is not None for x in stderr):
        s = np.asarray(stderr, dtype=float)[order]
    return e[order], v[order], s


# -- does the MDM pass AR's best? -----------------------------------------------------------

@dataclasses.dataclass
class PassesBest:
    ar_best: float  # AR's best value over its whole run, its epoch and standard error
    ar_best_epoch: float
    ar_best_stderr: float | None
    passes: bool | None  # None: no standard errors
    first_epoch: float | None = None  # the first MDM evaluation more than Z_PASS standard errors past AR's best
    from_epoch: float | None = None  # the evaluation from which every later one is (None: not at the last)
    max_margin: float | None = None  # the largest (m_i - b) / sqrt(s_i^2 + s_b^2), in standard errors

    def describe(self) -> str:
        if self.passes is None:
            return "-"
        if not self.passes:
            return f"no (at most {self.max_margin:+.1f} SE)"
        if self.from_epoch is not None:
            return f"yes, from epoch {self.from_epoch:.1f}" + (f" (first at {self.first_epoch:.1f})" if self.first_epoch != self.from_epoch else "")
        return f"yes at epoch {self.first_epoch:.1f}, not at the end"


def passes_best(ar_epochs, ar_values, ar_stderr, mdm_epochs, mdm_values, mdm_stderr, higher: bool, z: float = Z_PASS) -> PassesBest | None:
    """Whether the MDM's metric passes AR's best (over the whole AR run) by more than z
    combined standard errors sqrt(s_mdm^2 + s_ar_best^2), and from which epoch on."""
    ar_e, ar_v, ar_s = _sorted(ar_epochs, ar_values, ar_stderr)
    md_e, md_v, md_s = _sorted(mdm_epochs, mdm_values, mdm_stderr)
    if len(ar_v) == 0 or len(md_v) == 0:
        return None
    sign = 1.0 if higher else -1.0
    k = int(np.argmax(sign * ar_v))
    out = PassesBest(float(ar_v[k]), float(ar_e[k]), None if ar_s is None else float(ar_s[k]), None)
    if ar_s is None or md_s is None:
        return out
    margin, se = sign * (md_v - ar_v[k]), np.sqrt(md_s ** 2 + ar_s[k] ** 2)
    ok = margin > z * se
    with np.errstate(divide="ignore", invalid="ignore"):
        out.max_margin = float(np.max(np.where(se > 0, margin / se, np.sign(margin) * np.inf)))
    out.passes = bool(ok.any())
    if out.passes:
        out.first_epoch = float(md_e[np.argmax(ok)])
        if ok[-1]:
            out.from_epoch = float(md_e[len(ok) - np.argmax(~ok[::-1])] if not ok.all() else md_e[0])
    return out


# -- the data ratio --------------------------------------------------------------------------

def unique_needed(budgets, bests, target: float) -> tuple[float, str]:
    """The unique tokens at which `bests` (one objective's best score at each budget in
    `budgets`, ascending; higher is better), linear in log U between budgets, first reaches
    `target`: (U, '='); (budgets[0], '<=') when the smallest budget already does; (budgets[-1],
    '>') when no budget does."""
    if bests[0] >= target:
        return float(budgets[0]), "<="
    for k in range(1, len(budgets)):
        if bests[k] >= target:
            t = (target - bests[k - 1]) / (bests[k] - bests[k - 1])
            lo, hi = math.log(budgets[k - 1]), math.log(budgets[k])
            return math.exp(lo + t * (hi - lo)), "="
    return float(budgets[-1]), ">"


@dataclasses.dataclass
class DataRatio:
    """At one MDM budget U: the unique tokens AR needs to match MDM_best(U) (ratio = that / U),
    and the converse (the unique tokens the MDM needs to match AR_best(U); ratio U / that).
    bound: '=' (interpolated), '>' / '<=' (beyond the budgets: a bound, see `unique_needed`);
    the converse's bound is that of the ratio U / U_MDM. low/high: 95% bootstrap interval
    (+-inf: beyond the budgets), None without standard errors."""
    unique_tokens: float
    mdm_best: float
    ar_best: float | None  # at the same U (None: no AR run there)
    ar_needed: float
    bound: str
    ratio: float
    low: float | None = None
    high: float | None = None
    mdm_needed: float | None = None
    converse_bound: str | None = None
    converse: float | None = None
    converse_low: float | None = None
    converse_high: float | None = None
    ar_budgets: tuple = ()  # (smallest, largest) budget of each series: where the ratios are censored
    mdm_budgets: tuple = ()

    def describe(self) -> str:
        """e.g. '3.16x (1.80..>10)': the ratio, then its 95% interval."""
        return _describe_ratio(self.ratio, self.bound, self.low, self.high, self.ar_budgets[0] / self.unique_tokens,
                               self.ar_budgets[1] / self.unique_tokens)

    def describe_converse(self) -> str:
        if self.converse is None:
            return "-"
        return _describe_ratio(self.converse, self.converse_bound, self.converse_low, self.converse_high,
                               self.unique_tokens / self.mdm_budgets[1], self.unique_tokens / self.mdm_budgets[0])


def _describe_ratio(value, bound, low, high, floor, ceiling) -> str:
    text = f"{value:.2f}x" if bound == "=" else f"{bound} {value:.3g}x"
    if low is None:
        return text
    def end(x):
        return f"<={floor:.3g}" if x == -np.inf else f">{ceiling:.3g}" if x == np.inf else f"{x:.2f}"

    return f"{text} ({end(low)}..{end(high)})"


def best_per_budget(curves: dict, higher: bool = True) -> dict:
    """{U: (epochs, values, stderr)} -> {U: (best value, epoch, its stderr or None)}."""
    out = {}
    for u, (e, v, s) in curves.items():
        e, v, s = _sorted(e, v, s)
        k = int(np.argmax(v if higher else -v))
        out[u] = (float(v[k]), float(e[k]), None if s is None else float(s[k]))
    return dict(sorted(out.items()))


def data_ratios(ar_curves: dict, mdm_curves: dict, higher: bool = True, *, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> list:
    """ar_curves, mdm_curves: {U: (epochs, values, stderr)} of one AR and one MDM series (one
    run per budget) -> [DataRatio] per MDM budget (module docstring). Intervals when every
    evaluation of every run has a standard error."""
    if not ar_curves or not mdm_curves:
        return []
    sign = 1.0 if higher else -1.0  # the interpolation works on "higher is better" scores
    ar_u, md_u = sorted(ar_curves), sorted(mdm_curves)
    ar_b = [sign * best_per_budget(ar_curves, higher)[u][0] for u in ar_u]
    md_b = [sign * best_per_budget(mdm_curves, higher)[u][0] for u in md_u]
    rows = []
    for j, u in enumerate(md_u):
        needed, bound = unique_needed(ar_u, ar_b, md_b[j])
        row = DataRatio(u, sign * md_b[j], sign * ar_b[ar_u.index(u)] if u in ar_u else None, needed, bound, needed / u,
                        ar_budgets=(ar_u[0], ar_u[-1]), mdm_budgets=(md_u[0], md_u[-1]))
        if u in ar_u:
            m_needed, m_bound = unique_needed(md_u, md_b, ar_b[ar_u.index(u)])
            row.mdm_needed, row.converse = m_needed, u / m_needed
            row.converse_bound = {"=": "=", "<=": ">=", ">": "<"}[m_bound]
        rows.append(row)
    draws_ar, draws_md = _draw_bests(ar_curves, ar_u, sign, n_boot, seed), _draw_bests(mdm_curves, md_u, sign, n_boot, seed + 1)
    if draws_ar is None or draws_md is None:
        return rows
    censored = {"=": None, "<=": -np.inf, ">": np.inf}
    for j, row in enumerate(rows):
        x, y = np.empty(n_boot), np.empty(n_boot)
        for b in range(n_boot):
            needed, bound = unique_needed(ar_u, draws_ar[b], draws_md[b, j])
            x[b] = needed / row.unique_tokens if bound == "=" else censored[bound]
            if row.converse is not None:
                m_needed, m_bound = unique_needed(md_u, draws_md[b], draws_ar[b, ar_u.index(row.unique_tokens)])
                y[b] = row.unique_tokens / m_needed if m_bound == "=" else -censored[m_bound]
        row.low, row.high = (float(q) for q in np.percentile(x, LEVEL, method="inverted_cdf"))
        if row.converse is not None:
            row.converse_low, row.converse_high = (float(q) for q in np.percentile(y, LEVEL, method="inverted_cdf"))
    return rows


def _draw_bests(curves: dict, budgets: list, sign: float, n_boot: int, seed: int):
    """[n_boot, len(budgets)]: each run's best (sign-adjusted) after redrawing every evaluation
    from N(value, stderr^2); None when some evaluation has no standard error."""
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(budgets)))
    for k, u in enumerate(budgets):
        _, v, s = _sorted(*curves[u])
        if s is None:
            return None
        out[:, k] = np.max(sign * (v + s * rng.standard_normal((n_boot, len(v)))), axis=1)
    return out
