"""The per-token figures of the verification: ESS balance (Test 3) per family and per principle,
the four behaviour cases, the entropy formula's error, alpha along a sequence. Split from
`geomix_cli.plots` (which holds the Pareto front, D with its iterates, the alpha sweep, and the
shared style); the same rules: no mathematics, nothing saved, matplotlib on the Agg backend.

    figure_ess_scatter(ess_theta, ess_target, families, *, title=None, point="q*")
    figure_principles_ess(ess_theta, ess_target, principles, *, title=None)
    figure_four_cases(case_labels, counts, mass_q, fraction_meeting, *, title=None)
    figure_entropy_error_hist(errors_by_family, *, title=None)
    figure_alpha_along_sequence(positions, alpha_star, alpha_entropy=None, labels=None, *,
                                title=None, xlabel=None)
"""

from __future__ import annotations

import math

import numpy as np

from geomix_cli.core.principles import ESS_BAND  # the derivation's "within 10%"
from geomix_cli.plots import C_DIAG, C_ENTROPY, C_FRONT, C_HALF, C_STAR, C_TARGET, new_figure, plt


# ----------------------------------------------------------------------------------------------
# ESS balance (Test 3)


def _ess_limits(x: np.ndarray, y: np.ndarray) -> tuple[bool, float, float]:
    """(log axes?, low, high) for one panel: the panel's own data range, padded so that the
    +-10% band stays visible even when every point sits near one value; log axes when the values
    span more than a factor 5."""
    lo = float(min(x.min(), y.min()))
    hi = float(max(x.max(), y.max()))
    if lo > 0 and hi / lo > 5.0:
        return True, lo / 1.6, min(1.0, hi) * 1.6
    pad = max(0.25 * (hi - lo), 0.15 * hi, 1e-12)
    return False, max(0.0, lo - pad), hi + pad


def _ess_panel(ax, lo: float, hi: float, use_log: bool) -> None:
    """The +-10% band, the diagonal, the scales and equal limits of an ESS_theta-vs-ESS_t panel."""
    grid = np.geomspace(lo, hi, 200) if use_log else np.linspace(lo, hi, 200)
    # the band the points are counted in: max/min <= 1 + ESS_BAND, so from grid / 1.1 to 1.1 grid
    ax.fill_between(grid, grid / (1 + ESS_BAND), (1 + ESS_BAND) * grid, color="#DDDDDD",
                    label="±10% band", zorder=0)
    ax.plot(grid, grid, color=C_DIAG, linestyle="--", linewidth=1.0, label="ESS_θ = ESS_t",
            zorder=1)
    if use_log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    ax.grid(True, which="both", linewidth=0.4, alpha=0.5)


def figure_ess_scatter(ess_theta, ess_target, families, *, title=None, point: str = "q*"):
    """ESS_theta against ESS_t, one panel per family label (small multiples, each on its own
    scale so that the 10% band, max/min <= 1.1 (ESS_t within 1/1.1 .. 1.1 x ESS_theta), is
    visible for every family), with the diagonal, the band, and the share of the panel's rows inside the band.
    Log axes in a panel whose values span more than a factor 5. Rows with an ESS of 0 (a
    distribution with mass where q has none) cannot be drawn on such axes and are counted in
    the panel's title instead. `point` names the distribution in the axis labels ("q*", or
    e.g. "q at each principle's α")."""
    x = np.asarray(ess_theta, dtype=np.float64)
    y = np.asarray(ess_target, dtype=np.float64)
    fam = np.asarray(families, dtype=object)
    names = list(dict.fromkeys(fam.tolist())) or ["(no rows)"]
    n = len(names)
    ncols = 1 if n == 1 else min(4, n)
    nrows = math.ceil(n / ncols)
    size = 5.4 if n == 1 else 3.2
    fig = plt.figure(figsize=(size * ncols + 1.4, size * nrows + 1.2), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    palette = plt.get_cmap("tab10")
    for i, (ax, name) in enumerate(zip(axes, names)):
        sel = (fam == name) & np.isfinite(x) & np.isfinite(y)
        drawable = sel & (x > 0) & (y > 0)
        zeros = int(sel.sum() - drawable.sum())
        label = f"{name} ({int(sel.sum())})"
        if not drawable.any():
            ax.set_axis_off()
            ax.set_title(label, fontsize=9.5)
            ax.text(0.5, 0.5, "no row with both ESS > 0", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8.5)
            continue
        xs, ys = x[drawable], y[drawable]
        use_log, lo, hi = _ess_limits(xs, ys)
        _ess_panel(ax, lo, hi, use_log)
        ax.scatter(xs, ys, s=16 if n > 1 else 22, alpha=0.8, color=palette(i % 10),
                   label=label, zorder=3, linewidths=0)
        ratio = np.maximum(xs, ys) / np.minimum(xs, ys)
        ax.text(0.03, 0.97, f"within 10%: {np.mean(ratio <= 1 + ESS_BAND):.0%}\n"
                            f"max/min up to {ratio.max():.3g}",
                transform=ax.transAxes, ha="left", va="top", fontsize=8,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85,
                      "edgecolor": "#BBBBBB"})
        ax.set_title(label + (f"; {zeros} with an ESS of 0 not drawn" if zeros else ""),
                     fontsize=9.5 if n > 1 else 11)
        ax.tick_params(labelsize=8 if n > 1 else 10)
    for ax in axes[n:]:
        ax.set_axis_off()
    xlabel = f"ESS_θ({point}) = 1 / Σ π_θ²/q  (fraction of samples)"
    ylabel = f"ESS_t({point}) = 1 / Σ π_t²/q  (fraction of samples)"
    if n == 1:
        axes[0].set_xlabel(xlabel)
        axes[0].set_ylabel(ylabel)
    else:
        fig.supxlabel(xlabel, fontsize=10)
        fig.supylabel(ylabel, fontsize=10)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color="#DDDDDD", label="±10% band:\nESS_t within 1/1.1–1.1 × ESS_θ"),
               Line2D([], [], color=C_DIAG, linestyle="--", label="ESS_θ = ESS_t")]
    if n == 1:
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    elif n < len(axes):  # an empty panel slot holds the legend
        axes[n].legend(handles=handles, loc="center", frameon=False, fontsize=9)
    else:  # supxlabel below, suptitle above: the legend goes to the right
        fig.legend(handles=handles, loc="outside right upper", frameon=False)
    fig.suptitle(title or f"Effective sample sizes at {point}: does ESS_θ ≈ ESS_t?"
                 + (" (one panel per family, each on its own scale)" if n > 1 else ""))
    return fig


# principle -> marker style: drawn in this order, larger first, so that principles whose
# points coincide (kl-symmetry and bisection; ess-balance and max-min-ess) nest visibly
PRINCIPLE_STYLE = {
    "kl-symmetry": dict(marker="o", s=130, facecolors="none", edgecolors=C_STAR, linewidths=1.6),
    "ess-balance": dict(marker="s", s=120, facecolors="none", edgecolors=C_FRONT, linewidths=1.6),
    "half": dict(marker="^", s=70, facecolors="none", edgecolors=C_HALF, linewidths=1.3),
    "entropy": dict(marker="D", s=55, facecolors="none", edgecolors=C_ENTROPY, linewidths=1.3),
    "bisection": dict(marker="+", s=55, color="#000000", linewidths=1.2),
    "max-min-ess": dict(marker="x", s=40, color=C_TARGET, linewidths=1.4),
}


def figure_principles_ess(ess_theta, ess_target, principles, *, title=None):
    """compare-alpha: q at each principle's alpha. Left: ESS_theta(q) against ESS_t(q), one
    marker style per principle (PRINCIPLE_STYLE: hollow large markers drawn first, small
    crosses last, so coinciding principles stay visible inside one another), the diagonal and
    the +-10% band. Right: ESS_theta / ESS_t per principle (a strip per principle, log scale,
    rows jittered deterministically) with the band [1/1.1, 1.1]. Rows with an ESS of 0 are
    left out (counted in the legend)."""
    x = np.asarray(ess_theta, dtype=np.float64)
    y = np.asarray(ess_target, dtype=np.float64)
    pr = np.asarray(principles, dtype=object)
    names = list(dict.fromkeys(pr.tolist()))
    order = [p for p in PRINCIPLE_STYLE if p in names] + [p for p in names
                                                          if p not in PRINCIPLE_STYLE]
    fig = plt.figure(figsize=(13.0, 5.8), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.15, 1.0]})
    good = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if not good.any():
        for a in (ax, ax2):
            a.set_axis_off()
        ax.text(0.5, 0.5, "no row with both ESS > 0", ha="center", va="center",
                transform=ax.transAxes)
        return fig
    use_log, lo, hi = _ess_limits(x[good], y[good])
    _ess_panel(ax, lo, hi, use_log)
    for k, name in enumerate(order):
        sel = (pr == name) & good
        style = PRINCIPLE_STYLE.get(name, dict(marker="o", s=30, color="gray"))
        left = int(np.sum((pr == name) & ~good))
        label = f"{name} ({int(sel.sum())}" + (f"; {left} with ESS 0" if left else "") + ")"
        ax.scatter(x[sel], y[sel], label=label, zorder=2 + k, **style)
        ratio = y[sel] / x[sel]
        jitter = (((np.arange(ratio.size) * 0.6180339887) % 1.0) - 0.5) * 0.5
        ax2.scatter(np.full(ratio.size, names.index(name)) + jitter, ratio, zorder=3, **{
            **style, "s": style["s"] * 0.45})
    ax.set_xlabel("ESS_θ(q) at each principle's α  (fraction of samples)")
    ax.set_ylabel("ESS_t(q) at each principle's α  (fraction of samples)")
    ax.set_title("ESS_θ vs ESS_t, q at each principle's α")
    ax2.axhspan(1 / (1 + ESS_BAND), 1 + ESS_BAND, color="#DDDDDD", zorder=0,
                label="within 10%")
    ax2.axhline(1.0, color=C_DIAG, linestyle="--", linewidth=1.0)
    ratios = y[good] / x[good]
    r_lo, r_hi = float(ratios.min()), float(ratios.max())
    ax2.set_yscale("log")
    ax2.set_ylim(min(r_lo, 1 / 1.25) / 1.3, max(r_hi, 1.25) * 1.3)
    ax2.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax2.set_xlim(-0.6, len(names) - 0.4)
    ax2.set_ylabel("ESS_t(q) / ESS_θ(q)  (log scale; 1 = balanced)")
    ax2.set_title("ESS ratio per principle and row")
    ax2.grid(True, axis="y", which="both", linewidth=0.4, alpha=0.5)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
               ncols=min(4, len(order) + 2), frameon=False)
    fig.suptitle(title or "Effective sample sizes of q at each principle's α")
    return fig


# ----------------------------------------------------------------------------------------------
# four behaviour cases


def figure_four_cases(case_labels, counts, mass_q, fraction_meeting, *, title=None):
    """Three bar panels per behaviour case: token counts (log scale from 0.5, so an empty case
    has no bar and is labelled 0), q* mass, and the fraction of tokens meeting the case's
    expectation (NaN = empty case, drawn as 'n/a')."""
    labels = [str(c) for c in case_labels]
    counts = np.asarray(counts, dtype=np.float64)
    mass = np.asarray(mass_q, dtype=np.float64)
    frac = np.asarray(fraction_meeting, dtype=np.float64)
    fig = plt.figure(figsize=(13.0, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    pos = np.arange(len(labels))
    colors = [C_FRONT, C_ENTROPY, C_STAR, C_DIAG][: len(labels)] + \
        [C_DIAG] * max(0, len(labels) - 4)
    import textwrap

    short = ["\n".join(textwrap.wrap(lab, 12)) for lab in labels]
    panels = [(axes[0], counts, "tokens (count)", "tokens per case", "{:.0f}"),
              (axes[1], mass, "mass under q*  (probability)", "q* mass per case", "{:.3g}"),
              (axes[2], frac, "fraction of tokens (0–1)", "fraction meeting the expectation",
               "{:.1%}")]
    for ax, vals, ylabel, sub, fmt in panels:
        shown = np.where(np.isfinite(vals), vals, 0.0)
        bars = ax.bar(pos, shown, color=colors, edgecolor="black", linewidth=0.5)
        for bar, val in zip(bars, vals):
            text = fmt.format(val) if np.isfinite(val) else "n/a"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
        ax.set_xticks(pos, short, fontsize=7.5)
        ax.set_ylabel(ylabel)
        ax.set_title(sub)
        ax.grid(True, axis="y", linewidth=0.4, alpha=0.5)
    if np.all(counts[np.isfinite(counts)] >= 0) and np.nanmax(counts) > 0:
        # log scale from 0.5 (an empty case has no bar, its label says 0); a symlog axis
        # starting at 0 printed a stray '0' tick below 10^0
        axes[0].set_yscale("log")
        axes[0].set_ylim(0.5, np.nanmax(counts) * 4)
    axes[1].set_ylim(0, max(1e-12, float(np.nanmax(np.where(np.isfinite(mass), mass, 0)))) * 1.15)
    axes[2].set_ylim(0, 1.12)
    axes[2].axhline(1.0, color=C_DIAG, linestyle="--", linewidth=0.9)
    fig.suptitle(title or "The derivation's four behaviour cases under q*")
    return fig


# ----------------------------------------------------------------------------------------------
# entropy-formula error


def figure_entropy_error_hist(errors_by_family, *, title=None):
    """Histogram of alpha_H - alpha* per family (dict label -> 1-D array; NaNs dropped), with
    the zero line. Step histograms on common bins so families overlap legibly."""
    fig, ax = new_figure(7.6, 4.8)
    data = {k: np.asarray(v, dtype=np.float64) for k, v in errors_by_family.items()}
    data = {k: v[np.isfinite(v)] for k, v in data.items()}
    everything = np.concatenate([v for v in data.values()] or [np.zeros(0)])
    if everything.size:
        lo, hi = float(everything.min()), float(everything.max())
        if hi - lo < 1e-12:
            lo, hi = lo - 0.01, hi + 0.01
        bins = np.linspace(lo, hi, 41)
        palette = plt.get_cmap("tab10")
        for i, (name, vals) in enumerate(data.items()):
            if vals.size:
                ax.hist(vals, bins=bins, histtype="step", linewidth=1.6, color=palette(i % 10),
                        label=f"{name} (n = {vals.size})")
    else:
        ax.text(0.5, 0.5, "no rows with both α* and α_H", ha="center", va="center",
                transform=ax.transAxes)
    ax.axvline(0.0, color="black", linewidth=1.0, linestyle="--", label="α_H = α*")
    ax.set_xlabel("α_H − α*  (entropy formula minus exact root; dimensionless)")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("rows (count)")
    ax.set_title(title or "Error of the entropy formula α_H = H(π_θ)/(H(π_θ)+H(π_t))")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig


# ----------------------------------------------------------------------------------------------
# alpha* along a sequence


def figure_alpha_along_sequence(positions, alpha_star, alpha_entropy=None, labels=None, *,
                                title=None, xlabel=None):
    """alpha* per row (the rows of a batch: independent pairs, so the points are not joined),
    with alpha_H when given, and the alpha = 0.5 reference line. NaN alpha* (rows without a
    root) are marked with an 'x' on the axis. labels: per-row tick labels (e.g. tokens), used
    when there are at most 40 rows. xlabel: the axis label (default: the row of the batch; say
    'position t in the sequence' when the rows are one sequence's positions)."""
    pos = np.asarray(positions, dtype=np.float64)
    a = np.asarray(alpha_star, dtype=np.float64)
    fig, ax = new_figure(max(7.0, min(14.0, 0.25 * pos.size + 4.0)), 4.4)
    ax.axhline(0.5, color=C_DIAG, linestyle="--", linewidth=0.9, label="α = 0.5")
    ax.plot(pos, a, color=C_STAR, marker="o", markersize=5, linestyle="none",
            label="α* (exact root)", zorder=4)
    if alpha_entropy is not None:
        ax.plot(pos, np.asarray(alpha_entropy, dtype=np.float64), color=C_ENTROPY, marker="D",
                markersize=4, linestyle="none", markerfacecolor="none",
                label="α_H (entropy formula)", zorder=3)
    missing = ~np.isfinite(a)
    if missing.any():
        ax.scatter(pos[missing], np.zeros(int(missing.sum())), marker="x", color="black",
                   clip_on=False, zorder=5, label="no α* (status not ok)")
    if labels is not None and len(labels) == pos.size and pos.size <= 40:
        ax.set_xticks(pos, [str(s) for s in labels], rotation=60, ha="right", fontsize=7.5)
    elif pos.size <= 40:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel(xlabel or "row of the batch (independent pairs: the order means nothing)")
    ax.set_ylabel("α  (weight on π_θ; dimensionless)")
    ax.set_title(title or "α* per row")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    return fig
