"""Figures of `geomix simulate`: learning curves. No mathematics here: the curves, bands and
targets come from `geomix_cli.simulate.SimulationResult`; these functions only draw them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_STYLE = {"on-policy": ("tab:blue", "-"), "off-policy": ("tab:orange", "-"),
          "kl-symmetry": ("tab:red", "-"), "entropy": ("tab:green", "--"),
          "half": ("tab:purple", "--"), "ess-balance": ("tab:brown", "-.")}


def learning_curves_figure(result):
    """KL vs samples per prompt (log y), one panel per objective: the median over evaluation seeds
    and a band from the 25% to the 75% seed, each sampler at its own tuned learning rate; the
    dashed line is the target KL."""
    objectives = list(result.config.objectives)
    fig, axes = plt.subplots(1, len(objectives), figsize=(6.2 * len(objectives), 4.4),
                             squeeze=False)
    for ax, objective in zip(axes[0], objectives):
        for res in (r for r in result.results if r.objective == objective):
            color, ls = _STYLE.get(res.sampler, (None, ":"))
            finite_hi = np.where(np.isfinite(res.curve_high), res.curve_high, np.nan)
            line, = ax.plot(res.samples, res.curve_median, ls, color=color,
                            label=f"{res.sampler} (lr {res.lr:g})")
            ax.fill_between(res.samples, res.curve_low, finite_hi, color=line.get_color(),
                            alpha=0.15, linewidth=0)
        ax.axhline(result.threshold[objective], color="black", ls="--", lw=0.8,
                   label=f"target {result.threshold[objective]:.3g}")
        ax.set_yscale("log")
        label = "KL(πt‖πθ)" if objective == "forward-kl" else "KL(πθ‖πt)"
        ax.set_title(f"{objective}: {label}, mean over {result.n_prompts} prompt(s)")
        ax.set_xlabel("samples per prompt")
        ax.set_ylabel(f"{label} (nats)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    cfg = result.config
    fig.suptitle(f"{result.source}: {cfg.optimizer}, N = {cfg.samples_per_step} per step, "
                 f"{cfg.seeds} seeds (median, 25-75% band)", fontsize=10)
    fig.tight_layout()
    return fig


def speedup_figure(result):
    """Speed-up vs on-policy (median ratio of samples to the target, bootstrap CI) per sampler and
    objective, log x; the shaded band is the derivation's claimed 2-5x."""
    rows = [r for r in result.results if r.sampler != "on-policy"]
    fig, ax = plt.subplots(figsize=(7, 0.45 * max(len(rows), 2) + 1.2))
    labels, ys = [], np.arange(len(rows))
    for y, r in zip(ys, rows):
        value = r.speedup_vs_on_policy
        lo, hi = r.speedup_ci
        labels.append(f"{r.objective} · {r.sampler}")
        if np.isfinite(value) and value > 0:
            ax.plot([value], [y], "o", color="tab:red")
        elif np.isinf(value) and r.speedup_lower_bound:
            ax.plot([r.speedup_lower_bound], [y], ">", color="tab:red")  # on-policy never reached
            labels[-1] += " (on-policy not reached)"
        elif value == 0 and r.speedup_upper_bound:
            ax.plot([r.speedup_upper_bound], [y], "<", color="tab:red")  # sampler never reached
            labels[-1] += " (not reached)"
        if np.isfinite(lo) and lo > 0:
            if np.isfinite(hi):
                ax.plot([lo, hi], [y, y], color="tab:red")
            else:  # unbounded above: an arrow from the lower end
                ax.annotate("", xy=(lo * 4, y), xytext=(lo, y),
                            arrowprops=dict(arrowstyle="->", color="tab:red"))
    ax.axvspan(2, 5, color="tab:green", alpha=0.15, label="claimed 2-5x")
    ax.axvline(1, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_xlabel("speed-up vs on-policy (samples to target; >1 = fewer samples)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
