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

Its uncertainty (decided here; `find_crossover` with standard errors): a 2-SE bracket by
test inversion. On the same grid, the lead d(t) = MDM - AR has standard error
s(t) = sqrt(s_ar(t)^2 + s_mdm(t)^2) (errors independent across runs; interpolated values
carry the interpolation weights' variance). The crossover cannot be before the last epoch at
which AR is ahead by more than `Z_PASS` s(t) (`low`), nor after the epoch from which the MDM is
ahead by more than `Z_PASS` s(t) at every later evaluation (`high`); an open end is
"before the first / after the last common evaluation" (-inf / +inf), and a crossover whose
bracket is open at the top is not significant (the MDM is never ahead for good by more
than the noise). Each end is a one-sided pointwise 2-SE statement (~97.7%), not corrected for
the many evaluations. Why not a parametric bootstrap of the crossover epoch (redraw every
evaluation from N(value, SE^2), recompute, take percentiles): "ahead for good" is a
last-crossing statistic, which redrawn noise moves later, so its percentile interval leans
late; in a simulation (24 evaluations, a planted crossover at epoch 63.6, SE 0.01-0.02) it
covered the truth in only 84% / 71% of trials, the bracket in 97% (its coverage is a test in
tests/test_study.py). Notes: the standard errors
are the cloze task's binomial ones (item sampling; the MDM's Monte Carlo likelihood noise is
not in them); AR and MDM runs on the same data are scored on the same items, so their errors
are positively correlated and treating them as independent overstates the noise of the
difference (conservative).

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
at which MDM_best reaches AR_best(U), as the ratio U / U_MDM. 95% intervals: a parametric
bootstrap (`N_BOOT` resamples, seeded): each run's best score redrawn from N(best, SE_best^2),
independently across runs, the ratios recomputed, the 2.5 and 97.5 percentiles taken, with
ratios beyond the budgets counted as +-inf (an open end: "> U_max / U" or "<= U_min / U"). The
checkpoint at which each run is best is taken as given; the best of many noisy evaluations on
a plateau (AR's) is biased up, which the interval does not include: in a simulation (AR
plateaus of 12 evaluations, SE 0.01) it covered the true ratio in ~88% of trials.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

N_BOOT = 2000  # bootstrap resamples of the data ratio
BOOT_SEED = 0
Z_PASS = 2.0  # standard errors for "ahead by more than the noise" (the crossover bracket, the test against AR's best)
LEVEL = (2.5, 97.5)  # the percentile interval (95%)

HIGHER_IS_BETTER = {"cloze_acc": True, "cloze_acc_norm": True, "val_loss": False}
METRIC_TITLES = {
    "cloze_acc_norm": "cloze accuracy (length-normalised)",
    "cloze_acc": "cloze accuracy",
    "val_loss": "validation loss (AR: NLL, MDM: ELBO)",
}


def best(epochs, values, higher: bool) -> tuple[float, float] | None:
    """(best value, epoch at it); the first best if tied."""
    return best_point(epochs, values, None, higher)[:2] if len(values) else None


@dataclasses.dataclass
class Crossover:
    epoch: float | None  # None: no crossover (see `state`)
    state: str  # 'crossover' | 'mdm ahead throughout' | 'ar ahead at the end' | 'no overlap'
    value: float | None = None  # metric value where the curves cross (interpolated)
    # the 2-SE bracket (module docstring), when both curves have standard errors: the last epoch AR
    # is ahead by > 2 SE (-inf: never) and the epoch from which the MDM is ahead by > 2 SE at every
    # later evaluation (+inf: not at the last); None without standard errors
    low: float | None = None
    high: float | None = None
    first_epoch: float | None = None  # the common epoch range, for describing open ends
    last_epoch: float | None = None

    @property
    def significant(self) -> bool:
        """The MDM is ahead for good by more than the noise (the bracket is closed at the top)."""
        return self.high is not None and math.isfinite(self.high)

    def describe(self) -> str:
        return f"{self.epoch:.1f}" if self.epoch is not None else self.state

    def describe_interval(self) -> str:
        """The crossover with its bracket, e.g. '20.0 [18.0..24.0]', '76.0 [62.0..>81] not significant';
        without a crossover how far apart the curves end, e.g. 'ar ahead at the end (by > 2 SE)';
        `describe()` without standard errors."""
        if self.low is None:
            return self.describe()
        if self.state == "ar ahead at the end":
            if self.low == self.last_epoch:
                return f"{self.state} (by > {Z_PASS:g} SE)"
            return f"{self.state} (within {Z_PASS:g} SE" + (f" after epoch {self.low:.1f})" if self.low > -np.inf else " throughout)")
        if self.state == "mdm ahead throughout":
            return f"{self.state} (" + (f"by > {Z_PASS:g} SE from epoch {self.high:.1f})" if self.significant else f"within {Z_PASS:g} SE at the end)")
        if self.epoch is None:
            return self.describe()
        lo = f"<{self.first_epoch:.3g}" if self.low == -np.inf else f"{self.low:.1f}"
        hi = f">{self.last_epoch:.3g}" if self.high == np.inf else f"{self.high:.1f}"
        return f"{self.describe()} [{lo}..{hi}]" + ("" if self.significant else " not significant")


def find_crossover(ar_epochs, ar_values, mdm_epochs, mdm_values, higher: bool, *, ar_stderr=None, mdm_stderr=None,
                   z: float = Z_PASS) -> Crossover:
    """The crossover (module docstring); with `ar_stderr` and `mdm_stderr` (one per value, all
    known) also its z-SE bracket. Epochs in passes over U; values in the metric's unit."""
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
    a, m = w_ar @ ar_v, w_md @ md_v
    lead = (m - a) if higher else (a - m)  # > 0: the MDM is ahead
    behind = np.nonzero(lead <= 0)[0]
    if len(behind) == 0:
        cross = Crossover(None, "mdm ahead throughout")
    elif behind[-1] == len(grid) - 1:
        cross = Crossover(None, "ar ahead at the end")
    else:
        last = int(behind[-1])
        d0, d1 = lead[last], lead[last + 1]
        frac = -d0 / (d1 - d0)  # d0 <= 0 < d1
        cross = Crossover(float(grid[last] + frac * (grid[last + 1] - grid[last])), "crossover",
                          float(a[last] + frac * (a[last + 1] - a[last])))
    if ar_s is None or md_s is None:
        return cross
    se = np.sqrt(w_ar ** 2 @ ar_s ** 2 + w_md ** 2 @ md_s ** 2)
    ar_sig, md_sig = lead < -z * se, lead > z * se
    cross.low = float(grid[np.nonzero(ar_sig)[0][-1]]) if ar_sig.any() else -np.inf
    if not md_sig[-1]:
        cross.high = np.inf
    else:
        not_sig = np.nonzero(~md_sig)[0]
        cross.high = float(grid[not_sig[-1] + 1] if len(not_sig) else grid[0])
    cross.first_epoch, cross.last_epoch = float(grid[0]), float(grid[-1])
    return cross


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
    b, b_epoch, b_se = best_point(ar_epochs, ar_values, ar_stderr, higher)
    out = PassesBest(b, b_epoch, b_se, None)
    if b_se is None or md_s is None:
        return out
    margin, se = sign * (md_v - b), np.sqrt(md_s ** 2 + b_se ** 2)
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
        return _describe_ratio(self.ratio, self.bound, self.low, self.high, f"<={self.ar_budgets[0] / self.unique_tokens:.3g}",
                               f">{self.ar_budgets[1] / self.unique_tokens:.3g}")

    def describe_converse(self) -> str:
        if self.converse is None:
            return "-"
        return _describe_ratio(self.converse, self.converse_bound, self.converse_low, self.converse_high,
                               f"<{self.unique_tokens / self.mdm_budgets[1]:.3g}", f">={self.unique_tokens / self.mdm_budgets[0]:.3g}")


def _describe_ratio(value, bound, low, high, below: str, above: str) -> str:
    """below / above: how an interval end at -inf / +inf (beyond the budgets) reads."""
    text = f"{value:.2f}x" if bound == "=" else f"{bound} {value:.3g}x"
    if low is None or (low == high and not math.isfinite(low)):  # no interval, or every resample beyond the same edge
        return text

    def end(x):
        return below if x == -np.inf else above if x == np.inf else f"{x:.2f}"

    return f"{text} ({end(low)}..{end(high)})"


def best_point(epochs, values, stderr, higher: bool) -> tuple[float, float, float | None]:
    """(best value, its epoch, its standard error or None); the first best if tied."""
    e, v, s = _sorted(epochs, values, stderr)
    k = int(np.argmax(v if higher else -v))
    return float(v[k]), float(e[k]), None if s is None else float(s[k])


def best_per_budget(curves: dict, higher: bool = True) -> dict:
    """{U: (epochs, values, stderr)} -> {U: best_point}, ascending U."""
    return {u: best_point(*curves[u], higher) for u in sorted(curves)}


def data_ratios(ar_bests: dict, mdm_bests: dict, higher: bool = True, *, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> list:
    """ar_bests, mdm_bests: {U: (best value, epoch, stderr or None)} of one AR and one MDM
    series (`best_per_budget`) -> [DataRatio] per MDM budget (module docstring); intervals when
    every best has a standard error."""
    if not ar_bests or not mdm_bests:
        return []
    sign = 1.0 if higher else -1.0  # the interpolation works on "higher is better" scores
    ar_u, md_u = sorted(ar_bests), sorted(mdm_bests)
    ar_b, md_b = [sign * ar_bests[u][0] for u in ar_u], [sign * mdm_bests[u][0] for u in md_u]
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
    ar_se, md_se = [ar_bests[u][2] for u in ar_u], [mdm_bests[u][2] for u in md_u]
    if any(x is None for x in ar_se + md_se):
        return rows
    rng = np.random.default_rng(seed)
    draws_ar = np.asarray(ar_b) + np.asarray(ar_se) * rng.standard_normal((n_boot, len(ar_u)))
    draws_md = np.asarray(md_b) + np.asarray(md_se) * rng.standard_normal((n_boot, len(md_u)))
    censored = {"<=": -np.inf, ">": np.inf}  # beyond the budgets
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
