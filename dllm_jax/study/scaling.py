"""The Muennighoff et al. (2023) data-repetition law and a fit of its R* (field notes section 2).

Effective data after training on `tokens` tokens drawn from U unique tokens:

    D' = min(tokens, U) + U * R* * (1 - exp(-R_D / R*)),   R_D = max(tokens / U - 1, 0)

(the paper's D' = U + U R* (1 - exp(-R_D/R*)) with R_D = epochs - 1, extended to the first
epoch, where every token is fresh). R* is the data-reuse constant: repeated tokens are
worth fresh ones for R_D << R* and worth nothing for R_D >> R*. For one model size the loss
is L = E + B / D'^beta (the paper's A / N^alpha term is constant and folds into E).

Fitting, as Muennighoff et al. do it: ONE point per run, the final (or best) loss of a
run that completed its own learning-rate schedule at its (U, epochs), never the mid-run
evaluations of one run (their loss still carries the undecayed schedule, which biases R*).
Least squares over those points, parameters (E >= 0, log B, beta, log R*): a coarse grid over
(R*, beta) with E and B solved in closed form, then `scipy.optimize.least_squares` from the
best grid point. Uncertainty: a percentile bootstrap over runs (resample the runs with
replacement, refit; 95% interval of R*). R* is "not determined" when the point estimate or
the interval reaches the edge of its range (0.1 .. 1e4), or many resamples cannot be fitted
(e.g. no run went far enough past one epoch). The law is monotone in tokens, so it cannot
follow an AR loss that rises with overfitting; the RMSE shows how far off it is.
"""

from __future__ import annotations

import dataclasses

import numpy as np

R_BOUNDS = (0.1, 1e4)
BETA_BOUNDS = (1e-3, 5.0)


def effective_data(unique, tokens, r_star):
    unique, tokens = np.asarray(unique, dtype=float), np.asarray(tokens, dtype=float)
    repetitions = np.maximum(tokens / unique - 1.0, 0.0)
    return np.minimum(tokens, unique) - unique * r_star * np.expm1(-repetitions / r_star)


def predict_loss(unique, tokens, e, b, beta, r_star):
    return e + b * effective_data(unique, tokens, r_star) ** -beta


@dataclasses.dataclass
class Fit:
    n: int
    e: float = float("nan")
    b: float = float("nan")
    beta: float = float("nan")
    r_star: float = float("nan")
    r_star_low: float = float("nan")  # 95% percentile-bootstrap interval over runs
    r_star_high: float = float("nan")
    rmse: float = float("nan")
    r2: float = float("nan")
    note: str = ""

    @property
    def ok(self) -> bool:
        return np.isfinite(self.r_star)

    @property
    def determined(self) -> bool:
        """R* has a bounded interval inside its range."""
        return self.ok and not self.note

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _linear_eb(x, y):
    """E >= 0, B > 0 minimising |E + B x - y|^2, and the SSE (None if B would be <= 0)."""
    a = np.stack([np.ones_like(x), x], axis=1)
    (e, b), *_ = np.linalg.lstsq(a, y, rcond=None)
    if e < 0:  # the loss floor cannot be negative: fit B alone
        e, b = 0.0, float(x @ y / (x @ x))
    if b <= 0:
        return None
    return e, b, float(np.sum((e + b * x - y) ** 2))


def _grid_start(u, t, y):
    best = None
    for r in np.geomspace(*R_BOUNDS, 49):
        d = effective_data(u, t, r)
        for beta in np.linspace(0.02, 2.0, 45):
            sol = _linear_eb(d ** -beta, y)
            if sol and (best is None or sol[2] < best[0]):
                best = (sol[2], sol[0], sol[1], beta, r)
    return best


_LO = [0.0, -np.inf, BETA_BOUNDS[0], np.log(R_BOUNDS[0])]
_HI = [np.inf, np.inf, BETA_BOUNDS[1], np.log(R_BOUNDS[1])]


def _least_squares(u, t, y, x0):
    """(E, log B, beta, log R*) minimising the squared residuals, from x0."""
    from scipy.optimize import least_squares

    def residual(theta):
        e, log_b, beta, log_r = theta
        return predict_loss(u, t, e, np.exp(log_b), beta, np.exp(log_r)) - y

    x0 = np.clip(x0, np.add(_LO, 1e-9), np.subtract(_HI, 1e-9))
    return least_squares(residual, x0, bounds=(_LO, _HI), x_scale="jac", max_nfev=5000)


def _at_edge(log_r: float) -> bool:
    return min(abs(log_r - np.log(R_BOUNDS[0])), abs(log_r - np.log(R_BOUNDS[1]))) < 0.02


def fit_rstar(unique, tokens, loss, n_boot: int = 200, seed: int = 0) -> Fit:
    """Fit (E, B, beta, R*) to one (unique tokens, tokens seen, loss) point per run.

    Args:
      unique, tokens, loss: 1-D sequences, one entry per run: U (tokens), the tokens the run
        trained on (U * epochs) and its final (or best) validation loss (nats/token).
      n_boot: bootstrap resamples of the runs for the 95% interval of R* (0 = none).
      seed: the bootstrap's seed (the fit is deterministic).
    Returns:
      a Fit; ``note`` says why R* is not determined when it is not.
    """
    u, t, y = (np.asarray(v, dtype=float) for v in (unique, tokens, loss))
    keep = np.isfinite(y) & (t > 0) & (u > 0)
    u, t, y = u[keep], t[keep], y[keep]
    n = len(y)
    if n < 5:
        return Fit(n, note=f"too few runs ({n}) for 4 parameters: add (U, epochs) points")
    if np.all(t <= u):
        return Fit(n, note="no run past one epoch: R* is not determined")

    best = _grid_start(u, t, y)
    if best is None:
        return Fit(n, note="the loss does not decrease with effective data: no fit")
    _, e0, b0, beta0, r0 = best
    res = _least_squares(u, t, y, [e0, np.log(b0), beta0, np.log(r0)])
    e, log_b, beta, log_r = res.x
    sse = float(np.sum(res.fun ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    fit = Fit(n, float(e), float(np.exp(log_b)), float(beta), float(np.exp(log_r)), rmse=float(np.sqrt(sse / n)),
              r2=1.0 - sse / sst if sst > 0 else float("nan"))
    if _at_edge(log_r):
        fit.note = f"R* at the edge of its range {R_BOUNDS}: not determined by these runs"
        return fit
    if n_boot <= 0:
        return fit
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        if len(np.unique(idx)) < 5 or np.all(t[idx] <= u[idx]):
            boot.append(np.nan)  # a resample that cannot determine 4 parameters
            continue
        boot.append(_least_squares(u[idx], t[idx], y[idx], res.x).x[3])
    boot = np.asarray(boot)
    failed = float(np.mean(~np.isfinite(boot)))
    lo, hi = np.nanpercentile(boot, [2.5, 97.5]) if np.isfinite(boot).any() else (np.nan, np.nan)
    fit.r_star_low, fit.r_star_high = float(np.exp(lo)), float(np.exp(hi))
    if failed > 0.2:
        fit.note = f"R* not determined: {failed:.0%} of bootstrap resamples of the runs cannot be fitted; add runs"
    elif _at_edge(lo) or _at_edge(hi) or not np.isfinite(lo + hi):
        fit.note = f"R* not determined: its 95% interval reaches the edge of its range {R_BOUNDS}; add runs further past one epoch"
    return fit
