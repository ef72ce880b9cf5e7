"""Sampling uniform-state and GIDD diffusion runs (objectives 'uniform', 'gidd'): one jitted
loop of `steps` reverse steps over the whole canvas, then optional self-correction steps.

The canvas `x` [B, T] holds each row's [EOS] + prompt (left-padded to a common length P; the
padding is its own segment, outside attention) and the N positions to generate; `given`
marks what the user supplied (prompt, infill text), which never changes. The region starts
at the prior (t = 1): all [MASK] for gidd, uniform real ids for uniform noise.

Steps run on a uniform grid in the run's time, t_k = 1 - k / steps, from t = 1 to s = 0
(the last step is the denoising step; the run's `Process` maps times to its q_t, see
dllm_jax.objectives.interpolating). Each step calls the network once on the whole canvas;
x_theta = softmax of its logits over the real ids ([MASK], padding rows and pad_id excluded),
after temperature / top-k / top-p (temperature 0: x_theta is the argmax, one-hot). Every
position of the region may change at every step. Samplers:

    'ancestral'  the model's reverse step p(z_s | z_t) = q(z_t|z_s) q_s(z_s|x_theta) / q_t(z_t|x_theta)
                 (GIDD's GiddSampler, DUO's ancestral update), as a two-way mixture: keep z_t
                 with probability `reverse_keep_prob`, else draw from q_s(. | x_theta) (a token
                 of x_theta with probability alpha_s, else [MASK] / a uniform id by eta_s).
    'renoise'    predictor-corrector (DUO's Psi-samplers at kappa = 0): draw a clean guess from
                 the step to s = 0, then noise it forward to s with q_s. Every step re-predicts
                 the whole sequence from the model's current guess, which makes it the few-step
                 sampler of uniform-state diffusion (e.g. steps = 4 to 16); the last step is
                 the same for both.

Self-correction (GIDD, gidd/eval/self_correction.py; `correction_steps` > 0): after the last
step, each correction step draws a candidate for every free position from x_theta at
`correction_temperature` (GIDD: 0.1) and replaces the ONE position per row whose candidate
differs from its token and has the highest probability (nothing changes in a row where every
candidate equals its token).

Randomness is per row: a row's words come from its own key (`row_keys`: the seed, its prompt,
its copy index; see api.py) folded with the step index, and its RoPE positions count from its
own first token, so a prompt gives the same tokens alone or in any batch. `nfe` = steps +
correction_steps (one call per step for the whole batch).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from dllm_jax.objectives.interpolating import Process, reverse_keep_prob
from dllm_jax.sampling import categorical

KINDS = ("ancestral", "renoise")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything static about one decoding run (part of the jit cache key)."""

    kind: str  # 'ancestral' | 'renoise'
    process: Process
    gen_start: int  # P: the region is canvas[:, P:]
    steps: int
    correction_steps: int
    greedy: bool  # temperature == 0
    top_k: int
    use_top_p: bool
    vocab_limit: int  # == mask_id == N
    pad_id: int


def _x_theta(logits, plan: Plan, temperature, top_p):
    """log x_theta [B, T, V] over the real ids (-1e30 elsewhere) after the filters."""
    lg = categorical.exclude_ids(logits, plan.vocab_limit, banned=(plan.pad_id,))
    if plan.greedy:
        best = jnp.argmax(lg, axis=-1)
        return jnp.where(jax.nn.one_hot(best, lg.shape[-1], dtype=bool), 0.0, categorical.NEG)
    lg = categorical.filter_logits(lg, temperature=temperature, top_k=plan.top_k, use_top_p=plan.use_top_p, top_p=top_p)
    return jax.nn.log_softmax(lg, axis=-1)


@functools.partial(jax.jit, static_argnames=("model", "plan"))
def decode(params, canvas, given, segment_ids, positions, row_keys, temperature, top_p, correction_temperature, *, model, plan: Plan):
    """Generate every non-given position of the region `canvas[:, P:]` (its values there are
    ignored; everything before P must be given). `segment_ids`, `positions` [B, T]: 0 on left
    padding / RoPE positions from each row's first token; `row_keys` [B] jax keys. The random
    words of a row cover the region only (shape [N, ...]), so they do not depend on the
    batch's prompt lengths. Returns {'canvas': [B, T], 'nfe': int32}."""
    b, width = canvas.shape
    p0 = plan.gen_start
    total = width - p0  # N: the region's positions
    proc, n_real, mask_id = plan.process, plan.vocab_limit, plan.vocab_limit
    v = model.cfg.vocab_size
    free = ~given[:, p0:]
    head = canvas[:, :p0]

    def words(phase, k, *shapes):
        """Per-row words of phase 0 (the prior), 1 (step k) or 2 (correction step k)."""
        return categorical.row_words(row_keys, jnp.full((b,), phase, jnp.int32), jnp.full((b,), k, jnp.int32), *shapes)

    def network(x):
        """Logits of the region [B, N, V] for the region tokens `x` [B, N] behind the prompts."""
        full = jnp.concatenate([head, x], axis=1)
        return model.apply({"params": params}, full, causal=False, segment_ids=segment_ids, positions=positions)[:, p0:]

    def draw_x0(logx, hi, lo):
        return categorical.sample(logx, greedy=False, hi=hi, lo=lo) if not plan.greedy else jnp.argmax(logx, axis=-1).astype(jnp.int32)

    def from_noise(u, noise_id, coef_s, x0):
        """A draw from q_s(. | x0-or-x_theta): x0 with prob alpha_s, else [MASK] / the uniform id by eta_s."""
        pick_mask = u < coef_s.alpha + coef_s.a_m
        return jnp.where(u < coef_s.alpha, x0, jnp.where(pick_mask, mask_id, noise_id)).astype(canvas.dtype)

    # the prior at t = 1: [MASK] with a_m(1), a uniform id with a_u(1)
    c1 = proc.coefficients(jnp.float32(1.0))
    u0, id0 = words(0, 0, (total,), (total,))
    prior = jnp.where(categorical.uniform_from_bits(u0) < c1.a_m, mask_id, (id0 % n_real).astype(canvas.dtype))
    x = jnp.where(free, prior, canvas[:, p0:]).astype(canvas.dtype)

    def step(k, x):
        t = 1.0 - k / plan.steps
        s = 1.0 - (k + 1) / plan.steps
        logx = _x_theta(network(x), plan, temperature, top_p)
        shape = (total, v)
        w = words(1, k, (total,), (total,), (total,), *(() if plan.greedy else (shape, shape)))
        u_keep, u_noise = categorical.uniform_from_bits(w[0]), categorical.uniform_from_bits(w[1])
        noise_id = (w[2] % n_real).astype(canvas.dtype)
        x0 = draw_x0(logx, *(w[3:5] if not plan.greedy else (None, None)))
        xh_z = jnp.exp(jnp.take_along_axis(logx, jnp.minimum(x, v - 1)[..., None], axis=-1)[..., 0])
        xh_z = jnp.where(x < n_real, xh_z, 0.0)
        cs = proc.coefficients(s)
        if plan.kind == "ancestral":
            q_s_z = cs.alpha * xh_z + jnp.where(x == mask_id, cs.a_m, cs.a_u / n_real)
            keep = u_keep < reverse_keep_prob(proc, t, s, x, q_s_z, mask_id, n_real)
            new = jnp.where(keep, x, from_noise(u_noise, noise_id, cs, x0))
        else:  # 'renoise': a clean guess from the step to 0, noised forward to s
            keep0 = u_keep < reverse_keep_prob(proc, t, 0.0, x, xh_z, mask_id, n_real)
            guess = jnp.where(keep0, x, x0)
            new = from_noise(u_noise, noise_id, cs, guess)
        return jnp.where(free, new, x)

    x = jax.lax.fori_loop(0, plan.steps, step, x)

    def correct(k, x):
        logits = categorical.exclude_ids(network(x), plan.vocab_limit, banned=(plan.pad_id,))
        logp = jax.nn.log_softmax(logits / jnp.maximum(correction_temperature, 1e-6), axis=-1)
        shape = (total, v)
        hi, lo = words(2, k, shape, shape)
        cand = categorical.sample(logp, greedy=False, hi=hi, lo=lo)
        p_cand = jnp.exp(jnp.take_along_axis(logp, cand[..., None], axis=-1)[..., 0])
        score = jnp.where(free & (cand != x), p_cand, -1.0)
        best = jnp.argmax(score, axis=1)
        change = jax.nn.one_hot(best, total, dtype=bool) & (jnp.max(score, axis=1, keepdims=True) > 0)
        return jnp.where(change, cand, x)

    if plan.correction_steps:
        x = jax.lax.fori_loop(0, plan.correction_steps, correct, x)
    return {"canvas": jnp.concatenate([head, x], axis=1), "nfe": jnp.int32(plan.steps + plan.correction_steps)}


__all__ = ["KINDS", "Plan", "decode"]
