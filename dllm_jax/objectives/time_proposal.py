"""Proposals over the diffusion time t: where the MDM and block diffusion draw t in training.

Today's draw (and the default, 'uniform') is t ~ U(eps, 1): u in [0, 1) i.i.d. or
stratified over the batch (`common.sample_uniforms`), t = eps + (1 - eps) u. A proposal q
replaces u by s = G(u) ~ q and sets t = eps + (1 - eps) s, so stratified u gives
stratified s (each stratum of u is a stratum of q's mass) and eps keeps its meaning.

Families (`mdm.t_proposal`):

    'uniform'       q(s) = 1 on [0, 1]: today's draw, bit for bit (no other op runs)
    'beta'          q(s) = s^(a-1) (1-s)^(b-1) / B(a, b)                 (a, b > 0)
    'logit_normal'  q(s) = exp(-(logit s - mu)^2 / (2 sigma^2)) / (sigma sqrt(2 pi) s (1-s))   (sigma > 0)

Beta(a, b) with a, b > 1 and the logit-normal are the bell-shaped time samplings of Hong et
al. 2026 ("Understanding and Accelerating the Training of Masked Diffusion Language Models",
arXiv:2605.13026: MDMs reach the same validation NLL up to ~4x faster on LM1B when training
favours intermediate mask rates); the logit-normal is also SD3's time sampling (Esser et
al. 2024, arXiv:2403.03206). The defaults here (Beta(2, 2), logit-normal(0, 1)) are generic
bell shapes, not tuned values from either paper.

Two uses (`mdm.t_proposal_mode`):

- 'recipe' (the paper's): training draws t from q and weights the loss as usual
  (w(t) = -alpha'(t) / (1 - alpha(t)) per masked token, or the realised weighting). This
  changes the training objective to E_{s~q}[ELBO integrand at t(s)]: a reweighted ELBO, not
  a bound on -log p(x).
- 'importance': t from q, and every sequence's (every block's) loss weight is multiplied by
  the density ratio p_uniform(t) / q_t(t) = 1 / q(s) (p_uniform = 1/(1-eps) on [eps, 1),
  q_t(t) = q(s) / (1 - eps)), so the training loss stays an unbiased estimator of the same
  ELBO as the uniform draw: E_{s~q}[h(t(s)) / q(s)] = E_{t~U(eps,1)}[h(t)] for any h.

Whatever the mode, the logged training `elbo` is the importance-weighted ELBO of the same
draws (an unbiased estimate of the uniform-t ELBO), and validation and `dllm-jax eval`
never read the proposal: they draw t uniformly (dllm_jax.evaluation.likelihood).

The map G (a quantile table). JAX has no inverse regularised incomplete beta function, and
the exact density ratio 1/q(s) has an infinite second moment under q for every logit-normal
and for a Beta with a >= 2 or b >= 2 (E_q[q^-2] = int_0^1 ds / q(s) diverges at the ends),
so G is the piecewise-linear interpolation of the exact quantile function F^-1 (scipy,
float64, computed once per proposal) at N = `KNOTS` equal-mass knots u_k = k / N:

    G(u) = F^-1(u_k) + N (u - u_k) D_k  on [u_k, u_k+1),   D_k = F^-1(u_k+1) - F^-1(u_k).

s = G(u) has the density q_G(s) = 1 / (N D_k) on bin k: q averaged over each of its N
equal-mass bins, so the CDF of s agrees with q's at every knot and is within 1/N of it
everywhere (a Kolmogorov-Smirnov distance <= 1/N = 2.4e-4). The importance weight is the
ratio for the density actually sampled, 1 / q_G(s) = N D_k = G'(u), which makes the
importance-weighted estimator exactly unbiased (change of variables) whatever N, and
bounds the weight by N max_k D_k (the tail bins; e.g. 37 for Beta(2, 2), 139 for the
logit-normal(0, 1)). The weights average to 1: E_u[G'(u)] = G(1) - G(0) = 1.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.objectives.common import sample_times, sample_uniforms

PROPOSALS = ("uniform", "beta", "logit_normal")
MODES = ("recipe", "importance")
KNOTS = 4096  # equal-mass bins of the quantile table (a power of two: u * KNOTS is exact in float32)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class TimeProposal:
    """A proposal over t (see the module docstring). `name` in PROPOSALS, `mode` in MODES;
    `a`, `b` are Beta's shapes, `mu`, `sigma` the logit-normal's location and scale (each
    family reads only its own). Built from a run config by `from_config`."""

    name: str = "uniform"
    mode: str = "recipe"
    a: float = 2.0
    b: float = 2.0
    mu: float = 0.0
    sigma: float = 1.0

    def __post_init__(self):
        if self.name not in PROPOSALS:
            raise ValueError(f"t proposal {self.name!r} is not one of {list(PROPOSALS)}")
        if self.mode not in MODES:
            raise ValueError(f"t proposal mode {self.mode!r} is not one of {list(MODES)}")
        if self.name == "beta" and not (np.isfinite(self.a) and np.isfinite(self.b) and self.a > 0 and self.b > 0):
            raise ValueError(f"Beta(a={self.a}, b={self.b}) needs finite a > 0 and b > 0")
        if self.name == "logit_normal" and not (np.isfinite(self.mu) and np.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"logit-normal(mu={self.mu}, sigma={self.sigma}) needs a finite mu and a finite sigma > 0")

    @classmethod
    def from_config(cls, config) -> "TimeProposal":
        """The run's proposal from its `mdm` group (mdm.t_proposal, mdm.t_proposal_mode,
        mdm.t_beta_a, mdm.t_beta_b, mdm.t_logit_mu, mdm.t_logit_sigma)."""
        m = config.mdm
        return cls(name=str(m.t_proposal), mode=str(m.t_proposal_mode), a=float(m.t_beta_a), b=float(m.t_beta_b),
                   mu=float(m.t_logit_mu), sigma=float(m.t_logit_sigma))

    @property
    def uniform(self) -> bool:
        return self.name == "uniform"

    @property
    def importance(self) -> bool:
        """The training loss carries the importance weight (mode 'importance', non-uniform q)."""
        return self.mode == "importance" and not self.uniform

    def describe(self) -> str:
        if self.name == "beta":
            return f"Beta({self.a:g}, {self.b:g}) ({self.mode})"
        if self.name == "logit_normal":
            return f"logit-normal({self.mu:g}, {self.sigma:g}) ({self.mode})"
        return "uniform"

    # ---- exact distribution (float64 numpy; the table's source and the tests' reference)
    def quantile(self, u):
        """Exact F^-1(u) of q on [0, 1] (numpy float64, u in [0, 1])."""
        from scipy import special

        u = np.asarray(u, np.float64)
        if self.name == "beta":
            return special.betaincinv(self.a, self.b, u)
        if self.name == "logit_normal":
            return special.expit(self.mu + self.sigma * special.ndtri(u))
        return u

    def cdf(self, s):
        """Exact F(s) of q (numpy float64, s in [0, 1])."""
        from scipy import special

        s = np.asarray(s, np.float64)
        if self.name == "beta":
            return special.betainc(self.a, self.b, s)
        if self.name == "logit_normal":
            with np.errstate(divide="ignore"):
                return special.ndtr((special.logit(s) - self.mu) / self.sigma)
        return np.clip(s, 0.0, 1.0)

    def pdf(self, s):
        """Exact q(s) (numpy float64, s in (0, 1))."""
        from scipy import special

        s = np.asarray(s, np.float64)
        if self.name == "beta":
            return np.exp((self.a - 1) * np.log(s) + (self.b - 1) * np.log1p(-s) - special.betaln(self.a, self.b))
        if self.name == "logit_normal":
            z = (special.logit(s) - self.mu) / self.sigma
            return np.exp(-0.5 * z * z) / (self.sigma * np.sqrt(2 * np.pi) * s * (1 - s))
        return np.ones_like(s)

    # ---- the sampler
    def table(self):
        """(knots float32 [KNOTS + 1] = F^-1(k / KNOTS), widths float32 [KNOTS] = D_k), numpy."""
        return _table(self.name, self.a, self.b, self.mu, self.sigma)

    def map(self, u):
        """u float32 [...] in [0, 1) -> (s = G(u) [...] in [0, 1], weight G'(u) = 1 / q_G(s) [...]),
        float32 (jit-able). 'uniform': (u, ones)."""
        u = jnp.asarray(u, jnp.float32)
        if self.uniform:
            return u, jnp.ones_like(u)
        knots, widths = (jnp.asarray(x) for x in self.table())
        x = u * KNOTS
        k = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, KNOTS - 1)
        d = widths[k]
        s = jnp.clip(knots[k] + d * (x - k.astype(jnp.float32)), 0.0, 1.0)
        return s, d * KNOTS

    def times(self, rng, n: int, eps: float, antithetic: bool):
        """n training times t [n] float32 in [eps, 1] and their importance weights
        p_uniform(t) / q_t(t) [n] (None for 'uniform', whose t are exactly
        `common.sample_times(rng, n, eps, antithetic)`)."""
        if self.uniform:
            return sample_times(rng, n, eps, antithetic), None
        s, weight = self.map(sample_uniforms(rng, n, antithetic))
        return eps + (1.0 - eps) * s, weight


UNIFORM = TimeProposal()


def draw_times(rng, n: int, eps: float, antithetic: bool, proposal: TimeProposal | None = None):
    """(t [n], importance weight [n] or None): `proposal.times`, uniform when None."""
    return (proposal or UNIFORM).times(rng, n, eps, antithetic)


def loss_weight(weight, proposal: TimeProposal | None):
    """The factor the training loss carries: the importance weight in mode 'importance',
    None (no factor) otherwise."""
    return weight if proposal is not None and proposal.importance else None


@functools.lru_cache(maxsize=64)
def _table(name: str, a: float, b: float, mu: float, sigma: float):
    q = TimeProposal(name=name, a=a, b=b, mu=mu, sigma=sigma)
    knots64 = q.quantile(np.arange(KNOTS + 1) / KNOTS)
    knots64[0], knots64[-1] = 0.0, 1.0  # F^-1(0) = 0 and F^-1(1) = 1 exactly (the support)
    knots = np.clip(knots64, 0.0, 1.0).astype(np.float32)
    widths = np.diff(knots.astype(np.float64)).astype(np.float32)  # the bins the float32 knots define
    knots.setflags(write=False)
    widths.setflags(write=False)
    return knots, widths


__all__ = ["PROPOSALS", "MODES", "KNOTS", "TimeProposal", "UNIFORM", "draw_times", "loss_weight"]
