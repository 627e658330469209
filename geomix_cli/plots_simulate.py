"""Figures of `geomix simulate` and of the verify suite's efficiency claims. No mathematics here:
the curves, ratios and CIs come from `geomix_cli.simulate` results; these functions only draw
them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_STYLE = {"on-policy": ("tab:blue", "-"), "off-policy": ("tab:orange", "-"),
          "kl-symmetry": ("tab:red", "-"), "entropy": ("tab:green", "--"),
          "half": ("tab:purple", "--"), "ess-balance": ("tab:brown", "-.")}
_EST_STYLE = {"unbiased": ("tab:blue", "o"), "sn-loo": ("tab:green", "s"),
              "sn": ("tab:red", "^")}


def _label(objective: str) -> str:
    return "KL(πt‖πθ)" if objective == "forward-kl" else "KL(πθ‖πt)"


def learning_curves_figure(result):
    """KL vs samples per prompt (log y), one panel per (objective, estimator): the median over
    evaluation seeds and a band from the 25% to the 75% seed, each sampler at the learning rate
    tuned for the final KL; dashed lines: the highest and lowest targets."""
    panels = [(o, e) for o in result.config.objectives
              for e in dict.fromkeys(r.estimator for r in result.results if r.objective == o)]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, 4.0 * rows), squeeze=False)
    for ax, (objective, estimator) in zip(axes.ravel(), panels):
        for res in (r for r in result.results
                    if r.objective == objective and r.estimator == estimator):
            color, ls = _STYLE.get(res.sampler, (None, ":"))
            finite_hi = np.where(np.isfinite(res.curve_high), res.curve_high, np.nan)
            line, = ax.plot(res.samples, res.curve_median, ls, color=color,
                            label=f"{res.sampler} (lr {res.metrics['final-kl'].lr:g})")
            ax.fill_between(res.samples, res.curve_low, finite_hi, color=line.get_color(),
                            alpha=0.15, linewidth=0)
        targets = result.target_kl[objective]
        for key in (max(targets, key=targets.get), min(targets, key=targets.get)):
            ax.axhline(targets[key], color="black", ls="--", lw=0.7)
        ax.set_yscale("log")
        ax.set_title(f"{objective}, {estimator}", fontsize=9)
        ax.set_xlabel("samples per prompt")
        ax.set_ylabel(f"{_label(objective)} (nats)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    cfg = result.config
    fig.suptitle(f"{result.source}: {cfg.optimizer}, N = {cfg.samples_per_step} per step, "
                 f"{cfg.seeds} seeds (median, 25-75% band); dashed: highest and lowest target",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _ratio_panel(ax, fractions, comps, color, marker, label):
    """Speed-ups (PairedComparison per target) with CIs on a log-log panel; a run that only the
    sampler completed is drawn at its CI's lower end with an upward marker."""
    xs, ys, los, his = [], [], [], []
    for frac, c in zip(fractions, comps):
        if c is None or np.isnan(c.ratio):
            continue
        lo, hi = c.ratio_ci
        point = c.ratio if np.isfinite(c.ratio) else lo
        if not (np.isfinite(point) and point > 0):
            continue
        xs.append(frac)
        ys.append(point)
        los.append(point - lo if np.isfinite(lo) and lo > 0 else 0.0)
        his.append(hi - point if np.isfinite(hi) else 0.0)
    if xs:
        ax.errorbar(xs, ys, yerr=[los, his], color=color, marker=marker, capsize=3, lw=1,
                    label=label)


def speedup_figure(result):
    """Speed-up vs on-policy (median samples to each target, paired bootstrap CI) per sampler, one
    panel per (objective, estimator), log axes; the shaded band is the derivation's claimed 2-5x."""
    panels = [(o, e) for o in result.config.objectives
              for e in dict.fromkeys(r.estimator for r in result.results if r.objective == o)]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.8 * rows), squeeze=False)
    fractions = list(result.config.targets)
    for ax, (objective, estimator) in zip(axes.ravel(), panels):
        for res in (r for r in result.results if r.objective == objective
                    and r.estimator == estimator and r.sampler != "on-policy"):
            color, _ = _STYLE.get(res.sampler, (None, ":"))
            comps = [res.metrics[f"target={f:g}"].vs_on_policy for f in fractions]
            _ratio_panel(ax, fractions, comps, color, "o", res.sampler)
        _decorate(ax, f"{objective}, {estimator}")
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _decorate(ax, title):
    ax.axhspan(2, 5, color="tab:green", alpha=0.12, label="claimed 2-5x")
    ax.axhline(1, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("target (fraction of the initial KL)")
    ax.set_ylabel("speed-up vs on-policy (>1: fewer samples)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def efficiency_figure(study):
    """The verify suite's sample-efficiency evidence: q*'s speed-up over on-policy on the
    reverse-KL objective per target, one panel per case, one line per estimator, 95% CIs."""
    runs = study.runs
    fig, axes = plt.subplots(1, max(len(runs), 1), figsize=(5.0 * max(len(runs), 1), 4.0),
                             squeeze=False)
    for ax, run in zip(axes[0], runs):
        sim = run.judged
        fractions = list(sim.config.targets)
        for res in (r for r in sim.results if r.sampler == "kl-symmetry"):
            color, marker = _EST_STYLE.get(res.estimator, (None, "o"))
            comps = [res.metrics[f"target={f:g}"].vs_on_policy for f in fractions]
            _ratio_panel(ax, fractions, comps, color, marker, res.estimator)
        _decorate(ax, f"{run.case.name} (initial KL {sim.initial_kl['reverse-kl']:.3g})")
    fig.suptitle("q* (kl-symmetry) against on-policy, reverse KL: speed-up to each target "
                 "(a marker at a CI's lower end: on-policy never got there)", fontsize=10)
    fig.tight_layout()
    return fig
