"""Optimiser and learning-rate schedules (optax)."""

from __future__ import annotations

import jax
import optax


def warmup_steps(train_cfg, num_steps: int) -> int:
    """The warmup the schedule uses: train.warmup_steps, capped at num_steps - 1."""
    return min(train_cfg.warmup_steps, max(num_steps - 1, 0))


def lr_schedule(train_cfg, num_steps: int) -> optax.Schedule:
    """'cosine': linear warmup then cosine to min_lr; 'wsd': warmup, constant, linear decay over the
    last `decay_fraction` of steps; 'constant': warmup then constant."""
    peak, warmup = train_cfg.lr, warmup_steps(train_cfg, num_steps)
    floor = peak * train_cfg.min_lr_ratio
    warm = optax.linear_schedule(0.0 if warmup else peak, peak, max(warmup, 1))
    rest = max(num_steps - warmup, 1)
    if train_cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=train_cfg.min_lr_ratio)
    elif train_cfg.schedule == "wsd":
        decay = max(int(round(rest * train_cfg.decay_fraction)), 1)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), optax.linear_schedule(peak, floor, decay)], [rest - decay]
        )
    elif train_cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"unknown schedule {train_cfg.schedule!r}")
    return optax.join_schedules([warm, after], [warmup])


def _decay_mask(params):
    """Weight decay on weight matrices and embeddings, not on norm scales (which may be
    stacked to 2-D by scan-over-layers, so this goes by name, not by rank)."""

    def decays(path, _):
        return not any(getattr(k, "key", None) == "scale" for k in path)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(train_cfg, num_steps: int) -> optax.GradientTransformation:
    schedule = lr_schedule(train_cfg, num_steps)
    return optax.chain(
        optax.clip_by_global_norm(train_cfg.clip_norm),
        optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, weight_decay=train_cfg.weight_decay, mask=_decay_mask),
    )
