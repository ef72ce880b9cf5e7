"""Sampler names and argument checks: every bad value is a ConfigError naming it and the fix."""

from __future__ import annotations

import dataclasses
import math

from dllm_jax.errors import ConfigError
from dllm_jax.sampling.diffusion import KINDS as MDM_SAMPLERS
from dllm_jax.sampling.interpolating import KINDS as INTERP_SAMPLERS

AR_SAMPLERS = ("ar",)
SAMPLERS = AR_SAMPLERS + MDM_SAMPLERS + tuple(k for k in INTERP_SAMPLERS if k not in MDM_SAMPLERS)


@dataclasses.dataclass(frozen=True)
class Options:
    """Checked, resolved sampling options (see `generate` for the meaning of each)."""

    objective: str
    sampler: str
    max_new_tokens: int
    steps: int  # total over all blocks; 0 for 'ar' and 'threshold'
    block_length: int
    threshold: float
    cfg: float
    temperature: float
    top_k: int
    top_p: float
    seed: int
    kv_cache: bool
    prefix_cache: bool
    eos_last: bool
    schedule: str
    shared_blocks: bool = False  # MDM semi-AR: rows share the current block (the pre-per-row baseline; benchmarks)
    correction_steps: int = 0  # uniform / gidd: self-correction steps after the last step (GIDD)
    correction_temperature: float = 0.1  # uniform / gidd: temperature of the self-correction draws (GIDD: 0.1)
    process: object = None  # uniform / gidd: the run's noise process (objectives.interpolating.Process; set by generate_tokens)


def resolve(*, objective, sampler="auto", max_new_tokens=64, steps=None, block_length=None, threshold=None, cfg=0.0,
            temperature=1.0, top_k=0, top_p=1.0, seed=0, kv_cache=True, prefix_cache=False, eos_last=True,
            schedule="linear", infill=False, correction_steps=0, correction_temperature=0.1) -> Options:
    """Validate the user's arguments and fill the defaults:
    sampler 'auto' -> 'ar' for AR runs; for diffusion runs (MDM, block diffusion)
    'threshold' if a threshold is given, else 'topk_confidence'. steps defaults to
    max_new_tokens (one token per step); block_length to max_new_tokens (one block) for
    MDM, and must be given (the run's block size) for block diffusion, where it need not
    divide max_new_tokens (blocks are aligned to the row start, as in training);
    threshold to 0.9 for 'threshold'. Uniform / gidd runs (sampler family 'interpolating'):
    'ancestral' (auto) or 'renoise', `steps` (default max_new_tokens) over the whole region,
    no blocks, threshold, guidance or prefix cache; `correction_steps` >= 0 self-correction
    steps at `correction_temperature` >= 0 (those two apply to these runs only)."""
    from dllm_jax import objectives

    if objective not in objectives.names():
        raise ConfigError(f"objective={objective!r} is not one of {', '.join(map(repr, objectives.names()))} "
                          "(it comes from the run's config.objective)")
    obj = objectives.get(objective)
    family = obj.sampler_family
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 1")
    if sampler == "auto":
        sampler = "threshold" if threshold is not None and family != "ar" else obj.default_sampler
    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)} (or 'auto')")
    if not isinstance(correction_steps, int) or isinstance(correction_steps, bool) or correction_steps < 0:
        raise ConfigError(f"correction_steps={correction_steps!r} must be an integer >= 0 (0 = no self-correction)")
    if correction_temperature is None or not math.isfinite(correction_temperature) or correction_temperature < 0:
        raise ConfigError(f"correction_temperature={correction_temperature!r} must be a finite number >= 0 (0 = greedy)")
    if family == "interpolating" and sampler not in INTERP_SAMPLERS:
        raise ConfigError(f"sampler {sampler!r} is not a sampler of objective={objective!r}; use one of: {', '.join(INTERP_SAMPLERS)}")
    if family != "interpolating" and sampler in INTERP_SAMPLERS and sampler not in MDM_SAMPLERS:
        raise ConfigError(f"sampler {sampler!r} samples uniform-state / GIDD runs, not objective={objective!r}; "
                          f"use one of: {', '.join(AR_SAMPLERS if family == 'ar' else MDM_SAMPLERS)}")
    if correction_steps and family != "interpolating":
        raise ConfigError(f"correction_steps={correction_steps} is the self-correction of uniform / gidd runs; "
                          f"a run with objective={objective!r} cannot revise committed tokens: drop it")
    if family == "ar" and sampler != "ar":
        raise ConfigError(f"sampler {sampler!r} is a masked-diffusion sampler but this run is autoregressive (objective={objective!r}); use sampler='ar'")
    if family not in ("ar", "interpolating") and sampler == "ar":
        raise ConfigError(f"sampler 'ar' needs an autoregressive run but this run is a diffusion run (objective={objective!r}); "
                          f"use one of: {', '.join(MDM_SAMPLERS)}")
    if temperature is None or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy)")
    if not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"top_k={top_k!r} must be an integer >= 0 (0 = off)")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p={top_p!r} must be in (0, 1] (1 = off)")
    if cfg is None or not math.isfinite(cfg) or cfg < 0:
        raise ConfigError(f"cfg={cfg!r} must be a finite number >= 0 (0 = no classifier-free guidance)")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ConfigError(f"steps={steps!r} must be an integer >= 1")
    if block_length is not None and (not isinstance(block_length, int) or block_length < 1):
        raise ConfigError(f"block_length={block_length!r} must be an integer >= 1")

    if family == "interpolating":
        return _resolve_interpolating(objective, sampler, max_new_tokens, steps, block_length, threshold, cfg, temperature, top_k,
                                      top_p, seed, prefix_cache, schedule, correction_steps, correction_temperature)
    if family == "ar":
        for name, value, off in (("steps", steps, None), ("block_length", block_length, None), ("threshold", threshold, None)):
            if value is not off:
                raise ConfigError(f"{name}={value!r} applies to masked-diffusion samplers only; drop it for an AR run")
        if cfg:
            raise ConfigError(f"cfg={cfg!r}: classifier-free guidance is implemented for masked-diffusion runs only; use cfg=0")
        if prefix_cache:
            raise ConfigError("prefix_cache is for masked-diffusion block decoding; an AR run uses kv_cache")
        if infill:
            raise ConfigError("infilling needs a masked-diffusion run (objective='mdm'); an AR model only continues a prompt")
        return Options(objective, sampler, max_new_tokens, 0, 0, 0.0, 0.0, float(temperature), top_k, float(top_p), int(seed),
                       bool(kv_cache), False, False, schedule)

    if family == "block":
        return _resolve_block(objective, sampler, max_new_tokens, steps, block_length, threshold, cfg, temperature, top_k, top_p, seed,
                              kv_cache, prefix_cache, eos_last, schedule, infill)
    if block_length is None:
        block_length = max_new_tokens
    if max_new_tokens % block_length:
        raise ConfigError(f"block_length={block_length} does not divide the generation length {max_new_tokens}; "
                          f"choose a divisor of {max_new_tokens} (e.g. {_divisor_near(max_new_tokens, block_length)})")
    num_blocks = max_new_tokens // block_length
    steps, threshold = _steps_and_threshold(sampler, steps, threshold, max_new_tokens)
    if steps % num_blocks:
        raise ConfigError(f"steps={steps} must be a multiple of the number of blocks ({max_new_tokens} tokens / "
                          f"block_length {block_length} = {num_blocks}); e.g. steps={num_blocks * max(1, round(steps / num_blocks))}")
    if schedule not in ("linear", "cosine"):
        raise ConfigError(f"schedule={schedule!r} must be 'linear' or 'cosine' (the run's mdm.schedule)")
    return Options(objective, sampler, max_new_tokens, steps, block_length, float(threshold), float(cfg), float(temperature),
                   top_k, float(top_p), int(seed), False, bool(prefix_cache), bool(eos_last), schedule)


def _steps_and_threshold(sampler, steps, threshold, max_new_tokens) -> tuple[int, float]:
    """(steps, threshold) of a diffusion sampler: 'threshold' takes no step count (0) and
    tau (default 0.9, in (0, 1]); the fixed-step samplers take steps (default: one token per
    step) and no threshold (0.0)."""
    if sampler == "threshold":
        if steps is not None:
            raise ConfigError(f"steps={steps} does not apply to sampler 'threshold' (it takes as many steps as the "
                              "threshold allows, at least one token each); drop steps or pick a fixed-step sampler")
        threshold = 0.9 if threshold is None else threshold
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"threshold={threshold!r} must be in (0, 1]")
        return 0, float(threshold)
    if threshold is not None:
        raise ConfigError(f"threshold={threshold!r} applies to sampler 'threshold' only, not {sampler!r}")
    return (max_new_tokens if steps is None else steps), 0.0


def _resolve_block(objective, sampler, max_new_tokens, steps, block_length, threshold, cfg, temperature, top_k, top_p, seed, kv_cache,
                   prefix_cache, eos_last, schedule, infill) -> Options:
    """Block diffusion: blocks of `block_length` from the row start; `steps` over the whole
    region as for MDM, i.e. steps_per_block = ceil(steps / ceil(max_new_tokens / block_length))."""
    if block_length is None:
        raise ConfigError("a block-diffusion run decodes in blocks of its training block size: pass block_length="
                          "config.block_diffusion.block_size (the sample CLI does this for you)")
    if cfg:
        raise ConfigError(f"cfg={cfg!r}: classifier-free guidance is not implemented for block diffusion; use cfg=0")
    if prefix_cache:
        raise ConfigError("prefix_cache is MDM's approximate cache; block diffusion always uses its exact KV cache (kv_cache)")
    if infill:
        raise ConfigError("infilling needs a masked-diffusion run (objective='mdm'); block diffusion generates left to right")
    steps, threshold = _steps_and_threshold(sampler, steps, threshold, max_new_tokens)
    if schedule not in ("linear", "cosine"):
        raise ConfigError(f"schedule={schedule!r} must be 'linear' or 'cosine' (the run's mdm.schedule)")
    return Options(objective, sampler, max_new_tokens, steps, block_length, float(threshold), 0.0, float(temperature), top_k,
                   float(top_p), int(seed), bool(kv_cache), False, bool(eos_last), schedule)


def _resolve_interpolating(objective, sampler, max_new_tokens, steps, block_length, threshold, cfg, temperature, top_k, top_p, seed,
                           prefix_cache, schedule, correction_steps, correction_temperature) -> Options:
    for name, value in (("block_length", block_length), ("threshold", threshold)):
        if value is not None:
            raise ConfigError(f"{name}={value!r} does not apply to objective={objective!r}: every step updates the whole region; drop it")
    if cfg:
        raise ConfigError(f"cfg={cfg!r}: classifier-free guidance is not implemented for objective={objective!r}; use cfg=0")
    if prefix_cache:
        raise ConfigError(f"prefix_cache is the MDM's block cache; objective={objective!r} calls the network on the whole canvas")
    return Options(objective, sampler, max_new_tokens, max_new_tokens if steps is None else steps, max_new_tokens, 0.0, 0.0,
                   float(temperature), top_k, float(top_p), int(seed), False, False, False, schedule,
                   correction_steps=int(correction_steps), correction_temperature=float(correction_temperature))


def _divisor_near(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), d))


__all__ = ["Options", "resolve", "SAMPLERS", "AR_SAMPLERS", "MDM_SAMPLERS", "INTERP_SAMPLERS"]
