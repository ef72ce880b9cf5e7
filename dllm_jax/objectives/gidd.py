"""GIDD's hybrid mask / uniform diffusion ('gidd'; von Rütte et al. 2025, arXiv:2503.04482,
code github.com/dvruette/gidd: diffusion_process.py `HybridDiffusion`, loss.py `GiddLoss`).

Per sequence t ~ U(eps, 1 - eps), tau = p(t) of `mdm.schedule`, every token is independently

    kept with alpha = (1 - tau) / C,  masked with tau / C,  replaced by a uniform real id with c / C,
    c = B (tau (1 - tau))^(gamma / 2),  C = 1 + c,  B = 2^gamma p_u / (1 - p_u),

so the uniform share c / C is 0 at both ends and peaks at p_u (`gidd.p_u`) at tau = 1/2, and
t = 1 is all [MASK] (the prior). p_u = 0 is the MDM: the same masks from the same uniforms,
and the ELBO below equals the MDM's w(t) * CE on masked tokens exactly (tests/test_noise.py).

Loss: GIDD's ELBO (interpolating.py), w_t(z, x) * (KL(q_t(.|x) || q_t(.|x_theta)) +
IS(q_t(z|x) / q_t(z|x_theta))) at every position, with the ELBO weight per kind of z_t:

    z = [MASK]: 1 / (tau (1 - tau)),   z = a noise id: (c + (1 - tau) c') / ((1 - tau) c),
    z = x:      (c + (1 - tau) c') / (N (1 - tau) (1 - tau + c / N))          (times d tau / dt).

`gidd.weighting` picks the TRAINING weight (the logged `elbo`, validation and every
estimator always use the ELBO weight):
    'elbo'     the ELBO weight (the default here, as the MDM's 'elbo': `loss` is the NELBO);
    'clip'     the ELBO weight clipped to [gidd.min_weight, gidd.max_weight];
    'dynamic'  GIDD's reference weighting (its configs' default): 2 on [MASK], 1 on a noise
               id, (B / (N + 1)) exp(gamma / 2 * sigmoid(-t)) on a kept token (t: GIDD's own time
               tau; the reference code's stand-in for the log-SNR, reproduced as written), clipped to
               [gidd.min_weight, gidd.max_weight] (GIDD: 0 and 2).

Sampling (dllm_jax.sampling.interpolating): GIDD's ancestral sampler from all-[MASK], then
optionally GIDD's self-correction: `correction_steps` passes that each resample the one
position whose fresh draw (at `correction_temperature`) differs from it and is most probable.
The network is not told t (see interpolating.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_jax.errors import ConfigError
from dllm_jax.objectives.interpolating import InterpolatingDiffusion, Process

WEIGHTINGS = ("elbo", "clip", "dynamic")


class GiddDiffusion(InterpolatingDiffusion):
    name = "gidd"
    description = "GIDD hybrid noise (mask + uniform with proportion gidd.p_u; self-correcting; ELBO)"
    linestyle = (0, (3, 1, 1, 1, 1, 1))  # dash-dot-dot
    mask_input = True
    defining_keys = ("gidd.p_u", "gidd.gamma", "mdm.schedule")

    def process(self) -> Process:
        g = self.config.gidd
        return Process("gidd", schedule=str(self.config.mdm.schedule), p_u=float(g.p_u), gamma=float(g.gamma))

    def validate(self, config) -> None:
        super().validate(config)
        g = config.gidd
        if g.min_weight > g.max_weight:
            raise ConfigError(f"gidd.min_weight={g.min_weight} is above gidd.max_weight={g.max_weight}: the clip range of "
                              "gidd.weighting='clip'/'dynamic' must have min <= max")

    def train_weight(self):
        g = self.config.gidd
        kind, lo, hi = str(g.weighting), float(g.min_weight), float(g.max_weight)
        if kind == "elbo":
            return None
        if kind == "clip":
            return lambda t, coef, z, x, elbo_w, mask_id: jnp.clip(elbo_w, lo, hi)
        if kind != "dynamic":
            raise ValueError(f"gidd.weighting={kind!r} is not one of {WEIGHTINGS}")
        p_u, gamma = float(g.p_u), float(g.gamma)
        b = 2.0 ** gamma * p_u / (1.0 - p_u)

        def dynamic(tau, coef, z, x, elbo_w, mask_id):  # tau: GIDD's own time
            x_scale = b / (mask_id + 1) * jnp.exp(0.5 * gamma * jax.nn.sigmoid(-tau))  # mask_id + 1: the reference's len(tokenizer)
            is_mask, is_x = z == mask_id, z == x
            w = jnp.where(is_x, x_scale, jnp.where(is_mask, 2.0, 1.0))
            return jnp.clip(w, lo, hi)

        return dynamic
