"""The training objectives, the one place where AR, masked diffusion and block diffusion differ.

Read in this order: `common` (shared pieces: Prepared, schedules, cross-entropy), `base`
(the Objective interface every caller uses), then one file per objective:

    ar.py               'ar'               causal, shifted targets, exact likelihood (+ MIR's masked copy)
    mdm.py              'mdm'              bidirectional, one t per sequence, ELBO
    time_proposal.py    (shared)           where MDM / block diffusion draw t in training
    block_diffusion.py  'block_diffusion'  BD3-LM: one t per block, [x_t ; x_0] in one pass, NELBO
    uniform.py          'uniform'          uniform-state diffusion (UDLM/DUO): no [MASK], ELBO
    gidd.py             'gidd'             GIDD: mask + uniform noise (gidd.p_u), ELBO, self-correction
                                           (the math of both: interpolating.py)

`REGISTRY` maps each config.objective name to its class; `build(config)` makes the run's
objective. Config validation, train, eval, sampling, FLOPs and the study ask the object,
never compare names.
"""

from __future__ import annotations

from dllm_jax.objectives.ar import AutoRegressive, mir_masked_copy, prepare_ar
from dllm_jax.objectives.base import Objective
from dllm_jax.objectives.block_diffusion import BlockDiffusion, block_attention_mask, prepare_block_diffusion
from dllm_jax.objectives.common import (Prepared, TokenIds, elbo_weight, mask_prob, random_length_valid, sample_times,
                                        segment_ids_from_eos, token_cross_entropy)
from dllm_jax.objectives.gidd import GiddDiffusion
from dllm_jax.objectives.interpolating import InterpolatingDiffusion, Process, prepare_interpolating
from dllm_jax.objectives.mdm import MaskedDiffusion, anneal_mask, prepare_mdm
from dllm_jax.objectives.time_proposal import TimeProposal
from dllm_jax.objectives.uniform import UniformDiffusion

REGISTRY: dict[str, type[Objective]] = {cls.name: cls for cls in (AutoRegressive, MaskedDiffusion, BlockDiffusion, UniformDiffusion,
                                                                    GiddDiffusion)}


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> type[Objective]:
    """The class registered as `name` (ValueError naming the choices otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"objective {name!r} is not one of {list(REGISTRY)}") from None


def build(config) -> Objective:
    """The run's objective: `config.objective` with the run's settings."""
    return get(config.objective)(config)


def by_name(name: str, config=None, **overrides) -> Objective:
    """An objective from its name, on `config` (default: the default config) with dotted-key
    overrides, e.g. by_name('block_diffusion', **{'block_diffusion.block_size': 8})."""
    from dllm_jax.config import complete, default_config, set_key

    cfg = complete(config.to_dict() if hasattr(config, "to_dict") else (config or {})) if config is not None else default_config()
    for key, value in overrides.items():
        set_key(cfg, key, value)
    cfg.objective = name
    return get(name)(cfg)


# ---------------------------------------------------------------- name-based shortcuts
def prepare_fn(config, ids: TokenIds, train: bool = True):
    """`prepare(tokens, rng) -> Prepared` for the run's objective."""
    return build(config).prepare_fn(ids, train)


def metrics_from_ce(ce, prep: Prepared, objective: str | Objective) -> dict:
    return _obj(objective).metrics_from_ce(ce, prep)


def finalize(sums: dict, objective: str | Objective) -> dict:
    return _obj(objective).finalize(sums)


def is_causal(objective: str | Objective) -> bool:
    return _obj(objective).causal


def _obj(objective) -> Objective:
    return objective if isinstance(objective, Objective) else by_name(objective)


__all__ = ["REGISTRY", "Objective", "anneal_mask", "AutoRegressive", "MaskedDiffusion", "BlockDiffusion", "UniformDiffusion",
           "GiddDiffusion", "InterpolatingDiffusion", "Process", "prepare_interpolating", "Prepared", "TokenIds", "build", "by_name",
           "get", "names", "prepare_ar", "mir_masked_copy", "prepare_mdm", "prepare_block_diffusion", "block_attention_mask", "mask_prob", "elbo_weight",
           "sample_times", "segment_ids_from_eos", "random_length_valid", "token_cross_entropy", "prepare_fn", "metrics_from_ce",
           "finalize", "is_causal", "TimeProposal"]
