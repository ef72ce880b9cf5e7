"""The study's AR regularisation ablations at CPU scale: input token masking and dropout.

The study asks whether AR's loss to the MDM under heavy repetition is just missing
regularisation: it trains AR with a fraction of input tokens replaced by [MASK]
(`ar.input_mask_rate`, targets unchanged) or with residual dropout (`model.dropout`), and
finds a small gain around 10% that saturates far below the MDM. Points, on the CPU grid's
smallest budget (U = 8k unique tokens, 122 epochs, experiments/cpu_grid.py's setup):

    U8000_ar, U8000_mdm                      the baselines (identical to cpu_grid's points)
    U8000_ar_mask0.1 .. U8000_ar_mask0.5     input masking rates
    U8000_ar_drop0.1 .. U8000_ar_drop0.5     dropout rates

Because the baselines are the same points as in cpu_grid, running this grid into the CPU
grid's root reuses them (finished points are skipped) and one report shows everything:

    dllm-jax sweep --config experiments/ar_ablations.py --root runs/cpu_grid
    dllm-jax report --root runs/cpu_grid

Grid parameters: `budget` (U), `tokens`, `mask_rates`, `dropouts`, `eval_ratio` (as cpu_grid).
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("dllm_cpu_grid", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_grid.py"))
cpu_grid = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_grid)


def get_config():
    return cpu_grid.get_config()


def _rates(text, what):
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        rates = [-1.0]
    if any(not 0.0 < r < 1.0 for r in rates):
        from dllm_jax.errors import ConfigError

        raise ConfigError(f"--grid {what}={text!r} must be comma-separated rates in (0, 1), e.g. {what}=0.1,0.3")
    return rates


def get_grid(config, budget="8e3", tokens="1e6", mask_rates="0.1,0.3,0.5", dropouts="0.1,0.3,0.5", eval_ratio="1.4142"):
    base = cpu_grid.get_grid(config, budgets=budget, tokens=tokens, objectives="ar,mdm", eval_ratio=eval_ratio)
    (ar_name, ar), (mdm_name, mdm) = list(base.items())
    points = {ar_name: ar, mdm_name: mdm}
    for rate in _rates(mask_rates, "mask_rates"):
        points[f"{ar_name}_mask{rate:g}"] = {**ar, "ar.input_mask_rate": rate}
    for rate in _rates(dropouts, "dropouts"):
        points[f"{ar_name}_drop{rate:g}"] = {**ar, "model.dropout": rate}
    return points
