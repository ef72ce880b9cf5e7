"""Interpolating discrete diffusion: the forward process, the continuous-time ELBO and the
reverse step shared by 'uniform' (uniform-state diffusion, UDLM / DUO) and 'gidd' (GIDD's
mask / uniform hybrid). The objectives themselves are in uniform.py and gidd.py; this file
is the math, in one place.

Forward process (GIDD, von Rütte et al. 2025, arXiv:2503.04482, Sec. 3; code
github.com/dvruette/gidd, diffusion_process.py). Every token x (one of the N real ids
0..N-1, N = the tokenizer's vocabulary = the [MASK] id m) is noised independently to

    q_t(z | x) = alpha [z = x] + a_m [z = m] + nu [z real],   nu = a_u / N,   alpha + a_m + a_u = 1,

i.e. kept with probability alpha, masked with a_m, replaced by a uniformly drawn real id with
a_u (which may draw x itself). The coefficients are functions of tau = p(t), the masking
probability of the run's `mdm.schedule` ('linear': tau = t; 'cosine': tau = cos(pi/2 (1 - t))),
so the schedule is a time warp with d tau / dt in every weight:

    process   alpha          a_m        a_u        (C = 1 + c, c = B (tau (1 - tau))^(gamma/2),
    uniform   1 - tau        0          tau         B = 2^gamma p_u / (1 - p_u): GIDD's mixing)
    gidd      (1 - tau) / C  tau / C    c / C
    (mdm      1 - tau        tau        0: the absorbing process, = gidd with p_u = 0)

GIDD's a_u peaks at tau = 1/2 with the value p_u; at tau = 1 every process is at its prior
(uniform: uniform over the N real ids; gidd: all [MASK]).

ELBO (GIDD, Thm. 3.6). With q_t(. | x_theta) the same marginal with the network's distribution
x_theta over the N real ids in place of the one-hot x (the reverse model of the reference
code), and eta_t = a_m [. = m] + nu [. real] the noise part,

    -log p(x) <= E_{t ~ U(0,1)} E_{z ~ q_t(.|x)} [ w_t(z, x) * ( KL(q_t(.|x) || q_t(.|x_theta))
                                                              + IS(q_t(z|x) / q_t(z|x_theta)) ) ],

    w_t(z, x) = ( eta_t'(z) - (alpha_t' / alpha_t) eta_t(z) ) / q_t(z | x),   IS(r) = r - log r - 1,

(' = d/dt) plus a prior term that is 0 when q_1 is the prior. In closed form, with
g_m = a_m' - (alpha'/alpha) a_m and g_u = a_u' - (alpha'/alpha) a_u (per d tau; times d tau / dt):

    z = m:           w = g_m / a_m
    z real (x or not): w = (g_u / N) / (alpha [z = x] + nu)
    uniform: g_u = 1 / (1 - tau)                   (so w = -alpha' / (N alpha q_t(z|x)), UDLM)
    gidd:    g_m = 1 / (C (1 - tau)),  g_u = (c + (1 - tau) c') / (C (1 - tau))

(the reference code's `get_weights` in gidd/loss.py). For the uniform process this is UDLM's
continuous-time NELBO (Schiff et al. 2024, arXiv:2412.10193, Eq. 9; DUO's `nll_per_token`,
github.com/s-sahoo/duo algo.py) rewritten with x_bar = N q_t(. | x):
tests/test_noise.py checks the two against each other in float64. For gidd with p_u = 0 it is
the MDM's ELBO, w(t) * CE on the masked tokens, exactly: z = x gets weight 0 and on a masked
token KL = alpha * CE, IS = 0.

Numerics (float32). Near t = 1 the uniform weights grow like 1 / alpha while the divergences
shrink like alpha^2, so the divergences are computed term by term in a form without
cancellation: KL = sum_j p_j phi(d_j), IS = d_z - log1p(d_z), with d_j = q_j / p_j - 1 =
alpha ([j = x] - x_theta_j) / p_j (exact, no difference of nearly equal logs) and
phi(d) = (1 + d) log1p(d) - d >= 0; for |d| < 1e-2 both use their Taylor series. Where d is
not small the terms use log p_j = logaddexp(log alpha + log x_theta_j, log nu) from the
log-softmax, so a pure-mask process reproduces -log x_theta_x to the last bit of the MDM's
cross-entropy. Times are t = eps + (1 - 2 eps) u (GIDD's range: both ends are singular).

Time draws for gidd with p_u > 0. GIDD's c' grows like t^(-1/2) at t = 0, and so does the ELBO's
integrand (the weight of a uniformly noised token is ~ 1 / (2 t) while a_u ~ B sqrt(t)): the
mass below a cut-off eps is ~ B sqrt(eps) * CE, 1.6% of the bound at eps = 1e-3 and p_u = 0.2,
and a bound truncated there is no longer a bound (on i.i.d. tokens of a 7-id vocabulary with
the exact model it comes out 4% BELOW the entropy at p_u = 0.2; GIDD's code draws t uniformly
with eps = 1e-4). So that process runs its schedule at t^2
(`Process.squared_time`: tau = p(t^2), d tau / dt = 2 t p'(t^2)): in t the integrand is bounded,
the cut-off costs O(eps) as for the MDM, and the ELBO is unchanged (a change of variable). The
uniform process (bounded integrand) and gidd with p_u = 0 (the MDM) keep tau = p(t).

Reverse step (ancestral sampling; GIDD's `GiddSampler`, DUO's `_ancestral_update`). From t
to s < t the model's step is p(z_s | z_t) = q(z_t | z_s) q_s(z_s | x_theta) / q_t(z_t | x_theta)
with q(z_t = i | z_s = j) = a_ts [i = j] + k_i, a_ts = alpha_t / alpha_s,
k_i = eta_t(i) - a_ts eta_s(i) >= 0. It is a two-way mixture, which `reverse_keep_prob` and
the samplers use: keep z_t = i with probability a_ts q_s(i|x_theta) / (a_ts q_s(i|x_theta) + k_i),
otherwise draw z_s ~ q_s(. | x_theta) = alpha_s x_theta + eta_s (a token of x_theta with
probability alpha_s, else [MASK] or a uniform real id). s = 0 (alpha = 1, eta = 0) is the
final denoising step.

The network is not told t (neither is the library's MDM): x_theta is a function of z_t alone,
for which the bound holds as well; the noise level of a sequence of L tokens is visible in it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from dllm_jax.errors import ConfigError
from dllm_jax.objectives.base import Objective, _ppl
from dllm_jax.objectives.common import Prepared, TokenIds, random_length_valid, sample_times, segment_ids_from_eos

_SMALL = 1e-2  # |d| below which phi and IS use their Taylor series
_TINY = 1e-30  # floor of probabilities inside logs and divisions (keeps gradients finite)


# ---------------------------------------------------------------- processes
@dataclasses.dataclass(frozen=True)
class Coefficients:
    """q_t(. | x) at a batch of times: every field has the shape of t (float32)."""

    alpha: jax.Array  # P(z = x kept)
    a_m: jax.Array  # P(z = [MASK])
    a_u: jax.Array  # P(z = a uniform real id)
    g_m: jax.Array  # (a_m' - (alpha'/alpha) a_m), per unit of t (time warp included)
    g_u: jax.Array  # (a_u' - (alpha'/alpha) a_u), per unit of t


jax.tree_util.register_dataclass(Coefficients, data_fields=["alpha", "a_m", "a_u", "g_m", "g_u"], meta_fields=[])


@dataclasses.dataclass(frozen=True)
class Process:
    """An interpolating process: 'uniform' or 'gidd' (p_u, gamma); `schedule` is the time warp
    tau = p(t) of `mdm.schedule`. Hashable (a static argument of jitted samplers)."""

    kind: str  # 'uniform' | 'gidd'
    schedule: str = "linear"
    p_u: float = 0.0  # gidd: the uniform share at tau = 1/2
    gamma: float = 1.0  # gidd: the mixing exponent

    @property
    def squared_time(self) -> bool:
        """gidd with p_u > 0 runs its schedule at t^2 (see the module docstring: c' ~ t^(-1/2))."""
        return self.kind == "gidd" and self.p_u > 0.0

    def tau(self, t):
        """(tau, d tau / dt) of the time warp: tau = p(t) of the schedule, at t^2 for `squared_time`."""
        t = jnp.asarray(t, jnp.float32)
        inner, d_inner = (t * t, 2.0 * t) if self.squared_time else (t, jnp.ones_like(t))
        if self.schedule == "linear":
            return inner, d_inner
        if self.schedule == "cosine":
            a = 0.5 * math.pi * (1.0 - inner)
            return jnp.cos(a), 0.5 * math.pi * jnp.sin(a) * d_inner
        raise ValueError(f"unknown schedule {self.schedule!r}")

    def coefficients(self, t) -> Coefficients:
        tau, dtau = self.tau(t)
        one_m = 1.0 - tau
        if self.kind == "uniform":
            zero = jnp.zeros_like(tau)
            return Coefficients(alpha=one_m, a_m=zero, a_u=tau, g_m=zero, g_u=dtau / one_m)
        if self.kind != "gidd":
            raise ValueError(f"unknown process {self.kind!r}")
        if self.p_u > 0.0:
            b = 2.0 ** self.gamma * self.p_u / (1.0 - self.p_u)
            base = jnp.maximum(tau * one_m, _TINY)
            c = b * base ** (0.5 * self.gamma)
            dc = b * 0.5 * self.gamma * (1.0 - 2.0 * tau) * base ** (0.5 * self.gamma - 1.0)
        else:
            c = dc = jnp.zeros_like(tau)
        big_c = 1.0 + c
        return Coefficients(alpha=one_m / big_c, a_m=tau / big_c, a_u=c / big_c, g_m=dtau / (big_c * one_m),
                            g_u=dtau * (c + one_m * dc) / (big_c * one_m))


def draw_times(rng, batch: int, eps: float, antithetic: bool):
    """t in [eps, 1 - eps]: t = eps + (1 - 2 eps) u, u ~ U[0, 1) i.i.d. or stratified over the batch."""
    return eps + (1.0 - 2.0 * eps) * sample_times(rng, batch, 0.0, antithetic)


def elbo_weights(coef: Coefficients, z, x, mask_id: int, n_real: int):
    """w_t(z, x) per position: float32 of z's shape (`coef` fields broadcast against it)."""
    is_mask = z == mask_id
    q_real = coef.alpha * (z == x) + coef.a_u / n_real
    w_mask = coef.g_m / jnp.maximum(coef.a_m, _TINY)
    w_real = (coef.g_u / n_real) / jnp.maximum(q_real, _TINY)
    return jnp.where(is_mask, w_mask, w_real).astype(jnp.float32)


def corrupt(tokens, u, noise_ids, coef: Coefficients, mask_id: int):
    """z ~ q_t(. | x) from uniforms `u` [B, L] and uniform real ids `noise_ids` [B, L]:
    [MASK] where u < a_m, the noise id where a_m <= u < a_m + a_u, x elsewhere (so with
    a_u = 0 the masked set is the MDM's, `u < p(t)`, for the same uniforms)."""
    a_m, a_u = coef.a_m, coef.a_u
    return jnp.where(u < a_m, mask_id, jnp.where(u < a_m + a_u, noise_ids, tokens)).astype(tokens.dtype)


# ---------------------------------------------------------------- the divergences
def _phi_series(d):
    return d * d * (0.5 - d * (1.0 / 6.0 - d * (1.0 / 12.0 - d / 20.0)))


def _is_series(d):
    return d * d * (0.5 - d * (1.0 / 3.0 - d * (0.25 - d / 5.0)))


def divergences(logits, x, z, alpha, nu, vocab_limit: int):
    """Per position: (KL(q_t(.|x) || q_t(.|x_theta)) + IS(q_t(z|x) / q_t(z|x_theta)), CE).

    logits [B, L, V] (any float dtype; columns >= vocab_limit are not real ids and are
    ignored), x, z [B, L] int (clean and noisy token), alpha, nu [B, L] float32 (q_t's keep
    probability and uniform mass per real id). The [MASK] column cancels (q and q_theta give
    it the same a_m), so [MASK] needs no input. CE = -log x_theta(x) (nats) is returned for
    metrics. Both [B, L] float32."""
    lg = logits.astype(jnp.float32)
    v = lg.shape[-1]
    real = jnp.arange(v) < vocab_limit
    lg = jnp.where(real, lg, -1e30)
    logp = jax.nn.log_softmax(lg, axis=-1)  # log x_theta
    xh = jnp.exp(logp)
    onehot = jax.nn.one_hot(x, v, dtype=jnp.float32)
    a, n = alpha[..., None], nu[..., None]
    log_a = jnp.log(jnp.maximum(a, _TINY))
    log_nu = jnp.log(jnp.maximum(n, _TINY))
    p = a * xh + n  # q_t(j | x_theta)
    q = a * onehot + n  # q_t(j | x)
    log_p = jnp.logaddexp(log_a + logp, log_nu)
    log_q = jnp.where(onehot > 0, jnp.log(jnp.maximum(a + n, _TINY)), log_nu)
    d = a * (onehot - xh) / jnp.maximum(p, _TINY)  # q / p - 1
    small = jnp.abs(d) < _SMALL
    series = p * _phi_series(jnp.where(small, d, 0.0))
    direct = jnp.where(q > 0, q * (log_q - log_p), 0.0) - q + p
    kl = jnp.sum(jnp.where(real, jnp.where(small, series, direct), 0.0), axis=-1)

    def at(arr, idx):
        return jnp.take_along_axis(arr, idx[..., None], axis=-1)[..., 0]

    zc = jnp.minimum(z, v - 1)  # [MASK] may be the last column; its IS is 0 below
    d_z = jnp.maximum(at(d, zc), -1.0 + 1e-6)
    small_z = jnp.abs(d_z) < _SMALL
    is_div = jnp.where(small_z, _is_series(jnp.where(small_z, d_z, 0.0)), d_z - jnp.log1p(jnp.where(small_z, 0.0, d_z)))
    is_div = jnp.where(z < vocab_limit, is_div, 0.0)
    ce = -at(logp, x)
    return kl + is_div, ce


# ---------------------------------------------------------------- the prepared batch
def require_extra_mask(vocab_limit: int, mask_id: int) -> None:
    """ConfigError unless [MASK] is the extra id vocab_limit (these processes treat every id below
    it as a real token, and draw uniform noise over them)."""
    if mask_id != vocab_limit:
        from dllm_jax.errors import ConfigError

        raise ConfigError(f"the uniform / gidd objectives need [MASK] to be the extra id past the vocabulary ({vocab_limit}), but "
                          f"it is the piece {mask_id} inside it (data.mask_token, a released diffusion LM's mask): use "
                          "objective='mdm' or 'block_diffusion' for such a checkpoint, or set data.mask_token=''")


def prepare_interpolating(tokens, rng, ids: TokenIds, process: Process, *, eps: float = 1e-3, antithetic: bool = True,
                          random_length_prob: float = 0.0, document_attention: bool = False, train_weight=None) -> Prepared:
    """The batch of one step: one t per sequence (`draw_times`), z ~ q_t(. | x) per token.

    Returns Prepared with inputs = z [B, L] (padding stays padding), targets = x, weights = the
    training weight per position (`train_weight(tau [B, 1], coef, z, x, elbo_w, mask_id) -> [B, L]`, tau = the
    process's own time; None = the ELBO
    weight), denom = number of real tokens, and extras: 'elbo_weights' (w_t(z, x), 0 on padding),
    'alpha', 'nu' ([B, L] float32: what `divergences` needs), 'noised' (z != x), 't' [B].

    ConfigError when [MASK] is a piece inside the vocabulary (a released DLM's mask token,
    ids.mask_id < ids.vocab_limit): the uniform part of these processes draws over the ids
    below the mask id, which is then not the real vocabulary."""
    require_extra_mask(ids.vocab_limit, ids.mask_id)
    k_t, k_mask, k_len, k_noise = jax.random.split(rng, 4)  # the first two as prepare_mdm's: times, then masks
    b, length = tokens.shape
    valid = tokens != ids.pad_id
    if random_length_prob > 0.0:
        valid = valid & random_length_valid(k_len, tokens, random_length_prob)
    t = draw_times(k_t, b, eps, antithetic)
    coef = jax.tree.map(lambda c: c[:, None], process.coefficients(t))
    u = jax.random.uniform(k_mask, (b, length))
    noise_ids = jax.random.randint(k_noise, (b, length), 0, ids.mask_id, dtype=tokens.dtype)
    z = corrupt(tokens, u, noise_ids, coef, ids.mask_id)
    inputs = jnp.where(valid, z, ids.pad_id)
    validf = valid.astype(jnp.float32)
    elbo_w = elbo_weights(coef, z, tokens, ids.mask_id, ids.mask_id) * validf
    weights = elbo_w if train_weight is None else train_weight(process.tau(t)[0][:, None], coef, z, tokens, elbo_w, ids.mask_id) * validf
    segment_ids = None
    if document_attention or random_length_prob > 0.0:
        seg = segment_ids_from_eos(tokens, ids.eos_id) if document_attention else jnp.ones_like(tokens)
        segment_ids = jnp.where(valid, seg, 0)
    denom = jnp.maximum(validf.sum(), 1.0)
    shape = (b, length)
    extras = {"elbo_weights": elbo_w, "alpha": jnp.broadcast_to(coef.alpha, shape).astype(jnp.float32),
              "nu": jnp.broadcast_to(coef.a_u / ids.mask_id, shape).astype(jnp.float32),
              "noised": ((z != tokens) & valid).astype(jnp.float32), "t": t}
    return Prepared(inputs, jnp.where(valid, tokens, ids.pad_id), weights, segment_ids, denom, extras)


# ---------------------------------------------------------------- the reverse step
def reverse_keep_prob(process: Process, t, s, z, q_s_z, mask_id: int, n_real: int):
    """P(keep z_t = z | z_t) of the ancestral step from t to s < t (see the module docstring).
    `q_s_z` = q_s(z | x_theta) per position; t, s broadcast against z. s = 0 is the final step."""
    ct, cs = process.coefficients(t), process.coefficients(s)
    a_ts = ct.alpha / jnp.maximum(cs.alpha, _TINY)
    is_mask = z == mask_id
    k = jnp.where(is_mask, ct.a_m - a_ts * cs.a_m, (ct.a_u - a_ts * cs.a_u) / n_real)
    keep = a_ts * q_s_z
    return keep / jnp.maximum(keep + jnp.maximum(k, 0.0), _TINY)


# ---------------------------------------------------------------- scoring (jittable, per batch)
def elbo_rows(logits_fn, params, tokens, segment_ids, region, u, seed, sample_ids, *, process: Process, eps: float, vocab_limit: int):
    """One ELBO draw per row of `tokens` [B, L] over the `region` positions ([B, L] bool; the
    other positions stay clean and are not counted): t = eps + (1 - 2 eps) u (u [B]), each
    region token noised by q_t (uniforms from stream EVAL_MASK, noise ids from EVAL_NOISE of
    `seed`, one key per sample id, so pairs sharing a sample id share their draws). Returns
    (value [B] = sum over the region of w * (KL + IS), noised count [B], CE sum over the
    noised positions [B], every region position's argmax is its token [B])."""
    from dllm_jax import rng

    b, length = tokens.shape
    t = eps + (1.0 - 2.0 * eps) * u
    coef = jax.tree.map(lambda c: c[:, None], process.coefficients(t))
    m_base, n_base = rng.stream(seed, rng.EVAL_MASK), rng.stream(seed, rng.EVAL_NOISE)
    uu = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(m_base, i), (length,)))(sample_ids)
    noise = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(n_base, i), (length,), 0, vocab_limit, tokens.dtype))(sample_ids)
    counted = (segment_ids > 0) & region
    z = jnp.where(counted, corrupt(tokens, uu, noise, coef, vocab_limit), tokens)
    logits = logits_fn(params, z, segment_ids)
    shape = tokens.shape
    div, ce = divergences(logits, tokens, z, jnp.broadcast_to(coef.alpha, shape), jnp.broadcast_to(coef.a_u / vocab_limit, shape),
                          vocab_limit)
    w = elbo_weights(coef, z, tokens, vocab_limit, vocab_limit) * counted
    noised = (z != tokens) & counted
    real = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -1e30)
    greedy = jnp.all((jnp.argmax(real, axis=-1) == tokens) | ~counted, axis=1)
    return jnp.sum(w * div, axis=1), noised.sum(axis=1), jnp.sum(ce * noised, axis=1), greedy


# ---------------------------------------------------------------- the objectives' shared class
class InterpolatingDiffusion(Objective):
    """What 'uniform' and 'gidd' share: the batch (`prepare_interpolating`), the per-position
    loss from the whole predicted distribution (`divergences`, plain or chunked), the metrics,
    the estimators and the sampler family. A subclass gives `process()` and may give
    `train_weight`. Time draws and schedule come from the mdm group (mdm.schedule, mdm.eps,
    mdm.antithetic, mdm.random_length_prob), as for block diffusion."""

    causal = False
    exact_likelihood = False
    sampler_family = "interpolating"
    default_sampler = "ancestral"
    pair_estimator = "interpolating_pair"  # ELBO of the answer tokens, context clean (elbo_rows)
    sequence_estimator = "interpolating_elbo"
    single_token_exact = False  # a one-token answer is a Monte Carlo bound as well
    train_metrics = ("loss", "elbo", "noised_ce", "noise_frac")
    val_metrics = ("val_loss", "val_noised_ce", "val_ppl_bound")
    linestyle = ":"

    def process(self) -> Process:
        raise NotImplementedError

    def train_weight(self):
        """`(tau [B, 1], coef, z, x, elbo_w, mask_id) -> [B, L]` training weight per position (tau: the
        process's own time, GIDD's t), or None (the ELBO's)."""
        return None

    def validate(self, config) -> None:
        if config.mdm.weighting != "elbo":
            raise ConfigError(f"mdm.weighting={config.mdm.weighting!r} is the MDM's realised-mask weighting; objective="
                              f"{config.objective!r} weights by its own ELBO: set --config.mdm.weighting=elbo")

    def prepare_fn(self, ids, train: bool = True):
        m, doc, proc = self.config.mdm, bool(self.config.data.document_attention), self.process()
        weight = self.train_weight() if train else None
        return lambda tokens, rng: prepare_interpolating(
            tokens, rng, ids, proc, eps=m.eps, antithetic=m.antithetic, random_length_prob=m.random_length_prob if train else 0.0,
            document_attention=doc, train_weight=weight)

    def token_loss(self, out, prep: Prepared, vocab_limit: int, head=None, chunk: int = 0):
        """{'div': KL + IS [B, L], 'ce': -log x_theta(x) [B, L]} from the whole predicted
        distribution (`divergences`); with `chunk` > 0 a chunk of positions at a time
        (`losses.chunked_logits_map`: no [B, L, V] logits)."""
        from dllm_jax import losses

        per = {"x": prep.targets, "z": prep.inputs, "alpha": prep.extras["alpha"], "nu": prep.extras["nu"]}

        def fn(logits, pp):
            div, ce = divergences(logits, pp["x"], pp["z"], pp["alpha"], pp["nu"], vocab_limit)
            return {"div": div, "ce": ce}

        if chunk:
            return losses.chunked_logits_map(out, head, fn, per, chunk)
        return fn(out, per)

    def metrics_from_ce(self, ce, prep: Prepared) -> dict:
        """`ce`: `token_loss`'s dict. Sums: training loss, ELBO, CE of the noised tokens."""
        noised = prep.extras["noised"]
        return {"loss_sum": jnp.sum(prep.weights * ce["div"]), "denom": prep.denom,
                "elbo_sum": jnp.sum(prep.extras["elbo_weights"] * ce["div"]),
                "ce_sum": jnp.sum(noised * ce["ce"]), "ce_count": jnp.sum(noised)}

    def finalize(self, sums: dict) -> dict:
        denom = sums["denom"]
        return {"loss": sums["loss_sum"] / denom, "elbo": sums["elbo_sum"] / denom,
                "noised_ce": sums["ce_sum"] / jnp.maximum(sums["ce_count"], 1.0), "noise_frac": sums["ce_count"] / denom}

    def val_draws(self, config) -> int:
        return int(config.eval.val_draws)

    def val_record(self, metrics: dict) -> dict:
        return {"val_loss": metrics["loss"], "val_noised_ce": metrics.get("masked_ce"), "val_ppl_bound": _ppl(metrics["loss"])}

    def score_fn(self, kind: str, logits_fn, spec):
        """The Scorer's per-batch functions for this objective's estimators (see
        `Objective.score_fn`): the sequence ELBO (row times t = eps + (1 - eps) u from the
        Scorer, mapped to this objective's range) and the answer-only ELBO of a pair (u given)."""
        proc = dataclasses.replace(self.process(), schedule=spec.schedule)
        eps, limit = float(spec.eps), int(spec.vocab_limit)
        require_extra_mask(limit, int(spec.mask_id))
        if kind == self.sequence_estimator:
            def seq(p, tok, seg, aux, sc, seed, ids):
                u = (sc - eps) / (1.0 - eps)
                value, n, ce, _ = elbo_rows(logits_fn, p, tok, seg, aux, u, seed, ids, process=proc, eps=eps, vocab_limit=limit)
                return value, n, ce
            return seq
        if kind == self.pair_estimator:
            def pair(p, tok, seg, aux, sc, seed, ids):
                value, _, _, greedy = elbo_rows(logits_fn, p, tok, seg, aux, sc, seed, ids, process=proc, eps=eps, vocab_limit=limit)
                return value, greedy
            return pair
        return None

    def sample_defaults(self, config) -> dict:
        return {"schedule": config.mdm.schedule, "process": self.process()}


__all__ = ["Coefficients", "Process", "draw_times", "elbo_weights", "corrupt", "divergences", "prepare_interpolating",
           "reverse_keep_prob", "elbo_rows", "InterpolatingDiffusion"]
