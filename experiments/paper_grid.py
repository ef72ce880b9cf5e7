"""The data-constrained study at paper scale, for TPU pods (field notes section 1).

Points: model size x unique tokens U x objective, every run a 96B-token budget:
U in {0.5, 1, 1.5, 10, 96}B -> 192, 96, 64, 9.6 and 1 epochs; sizes 1B, 2B, 4B, 8B dense
and the 8B-total / 1B-active MoE (when this installation has MoE). 50 points. Architecture,
optimiser and WSD schedule: dllm_jax.study.paper.

    dllm-jax sweep --config experiments/paper_grid.py --root $RUNS --list
    dllm-jax sweep --config experiments/paper_grid.py --root $RUNS --index $TASK_ID   # one point per job
    dllm-jax sweep --config experiments/paper_grid.py --root $RUNS --print            # command lines

Grid parameters (--grid NAME=VALUE): `sizes` (e.g. 1b,8b; also 1.7b, the study's script
example), `unique` (tokens, comma-separated), `objectives`, `tokens` (the budget), and the
tuning axis and ensembles as in experiments/cpu_grid.py: `weight_decays`, `mir_weights`, `tune`
(`dllm_jax.study.grid.tuning_variants`; e.g. weight_decays=0.1,0.8,3.2 for "AR tuned"), `members`,
`ensemble` (`dllm_jax.study.grid.series_points`); `objectives` entries may carry overrides
(e.g. mdm+mdm.t_proposal=beta).
"""

from dllm_jax.config import default_config
from dllm_jax.study import paper
from dllm_jax.study.grid import parse_numbers, series_points, short_number


def get_config():
    return paper.paper_config("1b", "mdm", unique_tokens=1_000_000_000)


def _default_sizes() -> str:
    sizes = ["1b", "2b", "4b", "8b"]
    if "num_experts" in default_config().model:
        sizes.append("moe_8b_a1b")
    return ",".join(sizes)


def get_grid(config, sizes=None, unique="0.5e9,1e9,1.5e9,10e9,96e9", objectives="ar,mdm", tokens="96e9",
             weight_decays="", mir_weights="", tune="ar", members="1", ensemble=""):
    total = parse_numbers(tokens, "tokens")[0]
    points = {}
    for size in (sizes or _default_sizes()).split(","):
        model = paper.model_overrides(size.strip())
        for u in parse_numbers(unique, "unique"):
            budget = paper.budget_overrides(u, total)
            for suffix, overrides in series_points(config, objectives, weight_decays, mir_weights, tune, members, ensemble):
                points[f"{size.strip()}_U{short_number(u)}{suffix}"] = {**model, **budget, **overrides}
    return points
