"""Best scores and the AR -> MDM crossover of two validation curves.

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
"""

from __future__ import annotations

import dataclasses

import numpy as np

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

    def describe(self) -> str:
        return f"{self.epoch:.1f}" if self.epoch is not None else self.state


def find_crossover(ar_epochs, ar_values, mdm_epochs, mdm_values, higher: bool) -> Crossover:
    ar_e, ar_v = _sorted(ar_epochs, ar_values)
    md_e, md_v = _sorted(mdm_epochs, mdm_values)
    if len(ar_e) == 0 or len(md_e) == 0:
        return Crossover(None, "no overlap")
    lo, hi = max(ar_e[0], md_e[0]), min(ar_e[-1], md_e[-1])
    grid = np.union1d(ar_e, md_e)
    grid = grid[(grid >= lo - 1e-9) & (grid <= hi + 1e-9)]
    if len(grid) == 0:
        return Crossover(None, "no overlap")
    a, m = np.interp(grid, ar_e, ar_v), np.interp(grid, md_e, md_v)
    lead = (m - a) if higher else (a - m)  # > 0: the MDM is ahead
    behind = np.nonzero(lead <= 0)[0]
    if len(behind) == 0:
        return Crossover(None, "mdm ahead throughout")
    last = int(behind[-1])
    if last == len(grid) - 1:
        return Crossover(None, "ar ahead at the end")
    d0, d1 = lead[last], lead[last + 1]
    frac = -d0 / (d1 - d0)  # d0 <= 0 < d1
    epoch = grid[last] + frac * (grid[last + 1] - grid[last])
    value = a[last] + frac * (a[last + 1] - a[last])
    return Crossover(float(epoch), "crossover", float(value))


def _sorted(epochs, values):
    e, v = np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(e, kind="stable")
    return e[order], v[order]
