"""The report's figures (matplotlib, Agg backend, PNG).

- `plot_crossover`: one panel per unique-token budget (one row per model size), a metric
  against epochs or tokens seen, every series of the panel (AR solid, MDM dashed) with a
  shaded +-2 standard-error band where the runs logged standard errors, and the crossover
  (where the MDM goes ahead for good) marked with a star and a dotted line, its 2-SE
  bracket shaded grey.
- `plot_data_ratio`: each objective's best downstream score against the unique-token budget
  U (log x) with +-2 SE bars, and for each MDM point an arrow to the U at which AR's best
  reaches it, labelled with the data ratio.
- `plot_fits`: validation loss against tokens seen for every budget of a series, with the
  fitted Muennighoff curve through them.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dllm_jax import paths  # noqa: E402
from dllm_jax.study.crossover import METRIC_TITLES  # noqa: E402
from dllm_jax.study.runs import model_label  # noqa: E402



def _save_png(fig, path: str) -> None:
    fig.tight_layout()
    with paths.open_file(path, "wb") as f:  # local or a URL (gs://...)
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)

def _fmt_tokens(n: float) -> str:
    return f"{n / 1e9:.3g}B" if n >= 1e9 else f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k"


def _style(series: str, objective: str, i: int) -> dict:
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    from dllm_jax import objectives

    style = objectives.get(objective).linestyle if objective in objectives.REGISTRY else "-"
    return {"color": colors[i % len(colors)], "linestyle": style, "marker": ".", "markersize": 3, "label": series}


def plot_crossover(panel_map: dict, metric: str, xaxis: str, path: str, crossovers: dict) -> bool:
    """panel_map: {(params, U): {series: Run}}; crossovers: {(params, U, ar_series, mdm_series): Crossover}.
    xaxis: 'epochs' or 'tokens'. Returns False (and writes nothing) if no run has the metric."""
    cells = {k: v for k, v in panel_map.items() if any(r.curve(metric)[2] for r in v.values())}
    if not cells:
        return False
    models = sorted({p for p, _ in cells})
    budgets = sorted({u for _, u in cells})
    series_order = sorted({s for v in cells.values() for s in v}, key=lambda s: (not s.startswith("ar"), s))
    fig, axes = plt.subplots(len(models), len(budgets), figsize=(max(3.6 * len(budgets), 7.5), 3.0 * len(models) + 0.8), squeeze=False)
    for i, params in enumerate(models):
        for j, unique in enumerate(budgets):
            ax = axes[i][j]
            runs = cells.get((params, unique))
            if not runs:
                ax.axis("off")
                continue
            for series, run in sorted(runs.items(), key=lambda kv: series_order.index(kv[0])):
                epochs, tokens, values = run.curve(metric)
                if values:
                    style = _style(series, run.objective, series_order.index(series))
                    x = epochs if xaxis == "epochs" else tokens
                    ax.plot(x, values, **style)
                    stderr = run.curve_stderr(metric)
                    if all(se is not None for se in stderr):
                        v, se = np.asarray(values), np.asarray(stderr)
                        ax.fill_between(x, v - 2 * se, v + 2 * se, color=style["color"], alpha=0.15, linewidth=0)
            for (p, u, _, _), cross in crossovers.items():
                scale = 1 if xaxis == "epochs" else unique
                if (p, u) == (params, unique) and cross.epoch is not None and cross.low is not None:
                    lo, hi = max(cross.low, cross.first_epoch), min(cross.high, cross.last_epoch)
                    ax.axvspan(lo * scale, hi * scale, color="gray", alpha=0.15, linewidth=0)
                if (p, u) == (params, unique) and cross.epoch is not None:
                    x = cross.epoch * scale
                    ax.axvline(x, color="gray", linestyle=":", linewidth=1)
                    ax.plot([x], [cross.value], marker="*", color="black", markersize=11, linestyle="none")
            ax.set_title(f"U = {_fmt_tokens(unique)} unique tokens" + (f"\n{model_label(params)}" if len(models) > 1 else ""), fontsize=9)
            ax.set_xlabel("epochs" if xaxis == "epochs" else "tokens seen", fontsize=8)
            if xaxis == "tokens":
                ax.set_xscale("log")
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel(metric, fontsize=8)
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels] + [plt.Line2D([], [], marker="*", color="black", linestyle="none")],
               labels + ["crossover (MDM ahead for good; grey: its 2-SE bracket)"], loc="lower center", ncol=min(len(labels) + 1, 5), fontsize=8)
    fig.suptitle(f"{METRIC_TITLES.get(metric, metric)}, AR vs MDM, against {'epochs' if xaxis == 'epochs' else 'tokens seen'}", fontsize=10)
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(labels) > 4), 1, 0.93))
    with paths.open_file(path, "wb") as f:  # local or a URL (gs://...)
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return True


def plot_fits(groups: list, path: str) -> bool:
    """groups: [(title, [(U, tokens[], loss[])...], [(U, tokens, loss) per run], Fit)]: each run's
    validation curve (small dots), the point the fit used (circle) and the fitted law per U."""
    from dllm_jax.study.scaling import predict_loss

    groups = [g for g in groups if g[1]]
    if not groups:
        return False
    fig, axes = plt.subplots(1, len(groups), figsize=(max(4.2 * len(groups), 5.0), 3.6), squeeze=False)
    for ax, (title, curves, points, fit) in zip(axes[0], groups):
        budgets = sorted({c[0] for c in curves})
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for unique, tokens, loss in curves:
            ax.plot(tokens, loss, ".", color=colors[budgets.index(unique) % 10], markersize=2, alpha=0.5)
        for k, unique in enumerate(budgets):
            color = colors[k % 10]
            pts = [(t, y) for u, t, y in points if u == unique]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=color, markersize=5, label=f"U = {_fmt_tokens(unique)}")
            if fit.ok:
                lo = min(min(c[1]) for c in curves if c[0] == unique)
                hi = max(max(c[1]) for c in curves if c[0] == unique)
                t = np.geomspace(lo, hi, 100)
                ax.plot(t, predict_loss(unique, t, fit.e, fit.b, fit.beta, fit.r_star), "-", color=color, linewidth=1)
        r = (f"R* = {fit.r_star:.3g} ({fit.r_star_low:.3g}..{fit.r_star_high:.3g})" if fit.determined
             else f"R* not determined (fit {fit.r_star:.3g})" if fit.ok else "R* not determined")
        ax.set_title(f"{title}\n{r}", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("tokens seen", fontsize=8)
        ax.set_ylabel("validation loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save_png(fig, path)
    return True


def plot_data_ratio(groups: list, metric: str, path: str) -> bool:
    """groups: [(params, ar_series, mdm_series, ar_bests, mdm_bests, [DataRatio])] with bests =
    {U: (value, epoch, stderr)} (`report.ratio_groups`): one panel per group."""
    groups = [g for g in groups if g[5]]
    if not groups:
        return False
    fig, axes = plt.subplots(1, len(groups), figsize=(max(4.6 * len(groups), 5.2), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (params, a_name, m_name, ar_bests, mdm_bests, ratios) in zip(axes[0], groups):
        for k, (name, bests, style) in enumerate(((a_name, ar_bests, "-"), (m_name, mdm_bests, "--"))):
            u = sorted(bests)
            v = [bests[x][0] for x in u]
            err = [2 * bests[x][2] if bests[x][2] is not None else 0.0 for x in u]
            ax.errorbar(u, v, yerr=err, color=colors[k], linestyle=style, marker="o", markersize=4, capsize=3, label=f"{name}: best (+-2 SE)")
        for r in ratios:
            ax.annotate("", xy=(r.ar_needed, r.mdm_best), xytext=(r.unique_tokens, r.mdm_best),
                        arrowprops={"arrowstyle": "->", "color": "gray", "linestyle": ":"})
            text = f"{r.ratio:.2g}x" if r.bound == "=" else f"{r.bound}{r.ratio:.2g}x"
            ax.annotate(text, xy=(r.unique_tokens, r.mdm_best), xytext=(4, 4), textcoords="offset points", fontsize=7, color="gray")
        ax.set_xscale("log")
        ax.set_xlabel("unique tokens U", fontsize=8)
        ax.set_ylabel(f"best {metric}", fontsize=8)
        ax.set_title(f"{model_label(params)}: unique data AR needs to match the MDM\n(arrow: U -> AR's U; label: data ratio)", fontsize=9)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save_png(fig, path)
    return True
