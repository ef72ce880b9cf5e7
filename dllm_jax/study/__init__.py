"""The data-constrained study (AR vs MDM under repeated data) as commands and functions.

- `grid`: the grid-file format (get_config() + get_grid(config, **params)) and `load_grid`;
- `sweep`: `dllm-jax sweep`, run every point of a grid (skip finished, resume interrupted);
- `runs`: read a sweep's runs and group them (model, unique-token budget, series);
- `crossover`: best scores and the epoch where the MDM overtakes AR;
- `scaling`: the Muennighoff data-repetition law and the fit of its R*;
- `plots`, `report`: `dllm-jax report`, figures + markdown/JSON tables (FLOPs from dllm_jax.flops);
- `paper`: the study's paper-scale architectures and training setup (experiments/paper_*.py).

Heavy imports (JAX, matplotlib, scipy) happen inside the functions that need them, so the
CLI, which imports every verb module to build its help, stays fast.
"""
