"""Uniform-state diffusion ('uniform'; UDLM, Schiff et al. 2024, arXiv:2412.10193; DUO, Sahoo
et al. 2025, github.com/s-sahoo/duo).

Per sequence t ~ U(eps, 1 - eps) (stratified over the batch when `mdm.antithetic`), every
token is kept with probability alpha = 1 - tau (tau = p(t) of `mdm.schedule`) and otherwise
replaced by a uniformly drawn real id (which may be the token itself):

    q_t(z | x) = (1 - tau) [z = x] + tau / N,     N = the tokenizer's vocabulary.

The network sees only real tokens, never [MASK]; at t = 1 the sequence is uniform noise, the
prior. Bidirectional attention, targets are the clean tokens at the same positions, and the
loss is the continuous-time NELBO (interpolating.py), which needs the whole predicted
distribution at every position (not only the target's log-probability):

    -log p(x) <= E_t E_z [ -alpha' / (N alpha q_t(z|x)) * (KL(q_t(.|x) || q_t(.|x_theta)) + IS(q_t(z|x) / q_t(z|x_theta))) ],

counted at EVERY position (a token that was kept still tells the model something: it may have
been noise). `loss` = `elbo` = that sum / the number of real tokens (nats per token); the CE
of the noised tokens (z != x) and their fraction are reported beside it.

Sampling (dllm_jax.sampling.interpolating): start from uniform noise and take `steps`
ancestral steps ('ancestral': the reverse posterior with x_theta in place of x; every position
may change at every step, so the model can correct itself), or 'renoise' (DUO's
predictor-corrector end of the Psi-samplers: draw a clean sequence from the posterior to
t = 0, then noise it forward to the next time), which works in few steps; optional GIDD-style
self-correction steps at the end.
"""

from __future__ import annotations

from dllm_jax.objectives.interpolating import InterpolatingDiffusion, Process


class UniformDiffusion(InterpolatingDiffusion):
    name = "uniform"
    description = "uniform-state diffusion (UDLM/DUO: tokens replaced by uniform noise, no [MASK]; ELBO)"
    linestyle = ":"
    defining_keys = ("mdm.schedule",)

    def process(self) -> Process:
        return Process("uniform", schedule=str(self.config.mdm.schedule))
