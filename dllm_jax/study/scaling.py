"""The Muennighoff et al. (2023) data-repetition law and a fit of its R* (field notes section 2).

Effective data after training on `tokens` tokens drawn from U unique tokens:

    D' = min(tokens, U) + U * R* * (1 - exp(-R_D / R*)),   R_D = max(tokens / U - 1, 0)

(the paper's D' = U + U R* (1 - exp(-R_D/R*)) with R_D = epochs - 1, extended to the first
epoch, where every token is fresh). R* is the data-reuse constant: repeated tokens are
worth fresh ones for R_D << R* and worth nothing for R_D >> R*. For one model size the loss
is L = E + B / D'^beta (the paper's A / N^alpha term is constant and folds into E).

Fitting (decided here): least squares on the loss values over every validation point of
one series (all its budgets and evaluations), parameters (E >= 0, log B, beta, log R*): a coarse
grid over (R*, beta) with E and B solved in closed form, then `scipy.optimize.least_squares`
from the best grid point. Quality: RMSE, R^2 and a one-sigma interval on R* from the
Jacobian. R* at the edge of its range (0.1 .. 1e4) means the data do not determine it
(e.g. no run went far enough past one epoch). The law is monotone in tokens, so it cannot
follow a validation loss that rises with overfitting (AR); the RMSE shows how far off it is.
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
    r_star_low: float = float("nan")  # one-sigma interval (from the Jacobian)
    r_star_high: float = float("nan")
    rmse: float = float("nan")
    r2: float = float("nan")
    note: str = ""

    @property
    def ok(self) -> bool:
        return np.isfinite(self.r_star)

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


def fit_rstar(unique, tokens, loss) -> Fit:
    """Fit (E, B, beta, R*) to loss values at (unique tokens, tokens seen) points."""
    from scipy.optimize import least_squares

    u, t, y = (np.asarray(v, dtype=float) for v in (unique, tokens, loss))
    keep = np.isfinite(y) & (t > 0) & (u > 0)
    u, t, y = u[keep], t[keep], y[keep]
    n = len(y)
    if n < 5:
        return Fit(n, note=f"too few points ({n}) for 4 parameters")
    if np.all(t <= u):
        return Fit(n, note="no point past one epoch: R* is not determined")

    best = None
    for r in np.geomspace(*R_BOUNDS, 49):
        d = effective_data(u, t, r)
        for beta in np.linspace(0.02, 2.0, 45):
            sol = _linear_eb(d ** -beta, y)
            if sol and (best is None or sol[2] < best[0]):
                best = (sol[2], sol[0], sol[1], beta, r)
    if best is None:
        return Fit(n, note="the loss does not decrease with effective data: no fit")
    _, e0, b0, beta0, r0 = best

    def residual(theta):
        e, log_b, beta, log_r = theta
        return predict_loss(u, t, e, np.exp(log_b), beta, np.exp(log_r)) - y

    lo = [0.0, -np.inf, BETA_BOUNDS[0], np.log(R_BOUNDS[0])]
    hi = [np.inf, np.inf, BETA_BOUNDS[1], np.log(R_BOUNDS[1])]
    x0 = np.clip([e0, np.log(b0), beta0, np.log(r0)], np.add(lo, 1e-9), np.subtract(hi, 1e-9))
    res = least_squares(residual, x0, bounds=(lo, hi), x_scale="jac", max_nfev=5000)
    e, log_b, beta, log_r = res.x
    sse = float(np.sum(res.fun ** 2))
    sst = float(np.sum((y - y.mean()) ** 2))
    fit = Fit(n, float(e), float(np.exp(log_b)), float(beta), float(np.exp(log_r)), rmse=float(np.sqrt(sse / n)),
              r2=1.0 - sse / sst if sst > 0 else float("nan"))
    try:
        cov = np.linalg.inv(res.jac.T @ res.jac) * sse / max(n - 4, 1)
        sigma = float(np.sqrt(max(cov[3, 3], 0.0)))
        fit.r_star_low, fit.r_star_high = float(np.exp(log_r - sigma)), float(np.exp(log_r + sigma))
    except np.linalg.LinAlgError:
        pass
    if min(abs(log_r - np.log(R_BOUNDS[0])), abs(log_r - np.log(R_BOUNDS[1]))) < 0.02:
        fit.note = f"R* at the edge of its range {R_BOUNDS}: not determined by these runs"
    elif not fit.r_star_high / fit.r_star_low < 10.0:  # also true when the interval is nan
        fit.note = "R* poorly determined (its one-sigma interval spans more than 10x): more budgets or epochs needed"
    return fit
