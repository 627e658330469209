"""The figure set: functions that take computed results and return matplotlib Figures.

No mathematics here: every number drawn comes from the arguments (results computed in
`geomix_cli.core`). Nothing is saved here either: save with `io.save_figure_atomic(fig, path,
dpi=150)` (the format follows the extension: .png, .svg, .pdf). matplotlib is imported with the
Agg backend when this module is imported; import it lazily (inside commands / report code).

Stable API (the verify report calls these):
    figure_pareto_front(front, *, ax=None, title=None, log=False, legend=True)
    figure_pareto_grid(fronts, titles, *, log=False)
    figure_delta_with_iterates(curve, *, title=None)
    figure_alpha_sweep(vocab_sizes, eps_values, alpha_star, *, reported=None, title=None)
The per-token figures (ESS, the four cases, the entropy formula's error, alpha along a sequence)
are in `geomix_cli.plots_diagnostics`, on this module's style (colours, `new_figure`).

Every figure has a title, axis labels with units (KL in nats; alpha, ESS dimensionless) and a
legend placed outside the data area (or in a corner the data cannot reach).
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DEFAULT_DPI = 150

# colours (colour-blind safe, Okabe-Ito)
C_FRONT = "#0072B2"
C_STAR = "#D55E00"
C_ENTROPY = "#009E73"
C_HALF = "#CC79A7"
C_THETA = "#000000"
C_TARGET = "#E69F00"
C_DIAG = "#777777"
C_CLOUD = {"arithmetic mixture": "#3DA5E0", "perturbed front point": "#8C8C8C",
           "Dirichlet draw near the front": "#B89B5E"}
M_CLOUD = {"arithmetic mixture": "^", "perturbed front point": "o",
           "Dirichlet draw near the front": "s"}

FRONT_LABEL = "Pareto front {q_α : α ∈ [0, 1]}"
DIAGONAL_LABEL = "x = y (equal KLs)"
X_LABEL_KL = "KL(q ‖ π_θ)  [nats]"
Y_LABEL_KL = "KL(q ‖ π_t)  [nats]"

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
                     "legend.fontsize": 8.5, "figure.dpi": 100, "savefig.dpi": DEFAULT_DPI})


def new_figure(width: float = 7.0, height: float = 5.0) -> tuple[Figure, object]:
    fig = plt.figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    return fig, ax


# ----------------------------------------------------------------------------------------------
# Pareto front


def _front_limits(front) -> tuple[float, float]:
    """Axis extents from the curve and the finite end points (the cloud is not allowed to set
    the scale)."""
    xs = [float(np.max(front.values.kl_q_theta))]
    ys = [float(np.max(front.values.kl_q_target))]
    for mark in front.marks.values():
        if mark.finite:
            xs.append(mark.kl_q_theta)
            ys.append(mark.kl_q_target)
    return max(max(xs), 1e-300), max(max(ys), 1e-300)


def _status_panel(ax, front, title) -> None:
    ax.set_axis_off()
    text = f"no front drawn: status '{front.status}'"
    if front.message:
        import textwrap

        text += "\n" + "\n".join(textwrap.wrap(front.message, 48))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes,
            bbox={"boxstyle": "round", "facecolor": "#FFF3E0", "edgecolor": C_STAR})
    if title:
        ax.set_title(title)


_MARK_STYLES = {
    "pi_theta": dict(marker="o", s=70, color=C_THETA),
    "pi_t": dict(marker="o", s=70, color=C_TARGET, edgecolors="black", linewidths=0.6),
    "half": dict(marker="s", s=42, color=C_HALF, edgecolors="black", linewidths=0.5),
    "entropy": dict(marker="D", s=42, color=C_ENTROPY, edgecolors="black", linewidths=0.5),
    "q_star": dict(marker="*", s=220, color=C_STAR, edgecolors="black", linewidths=0.6),
}
_MARK_ORDER = ("pi_theta", "pi_t", "half", "entropy", "q_star")


def _draw_front(ax, front, curve, xlim, ylim, *, cloud_size: float = 12.0,
                mark_scale: float = 1.0) -> int:
    """Cloud, diagonal, curve and marks on `ax` within the given limits; returns the number of
    cloud points outside them."""
    off_scale = 0
    if front.cloud is not None and len(front.cloud):
        cloud = front.cloud
        inside = ((cloud.kl_q_theta >= xlim[0]) & (cloud.kl_q_theta <= xlim[1])
                  & (cloud.kl_q_target >= ylim[0]) & (cloud.kl_q_target <= ylim[1]))
        off_scale = int(np.size(inside) - np.count_nonzero(inside))
        for kind in dict.fromkeys(cloud.kind.tolist()):
            sel = cloud.kind == kind
            ax.scatter(cloud.kl_q_theta[sel], cloud.kl_q_target[sel], s=cloud_size, alpha=0.7,
                       marker=M_CLOUD.get(kind, "o"), color=C_CLOUD.get(kind, "#999999"),
                       linewidths=0, label=f"other q: {kind}", zorder=1)
    lo, hi = min(xlim[0], ylim[0]), max(xlim[1], ylim[1])
    ax.plot([lo, hi], [lo, hi], linestyle="--", linewidth=1.0, color=C_DIAG,
            label=DIAGONAL_LABEL, zorder=2)
    ax.plot(curve.kl_q_theta, curve.kl_q_target, color=C_FRONT, linewidth=2.2,
            label=FRONT_LABEL, zorder=3)
    for key in _MARK_ORDER:
        mark = front.marks.get(key)
        if mark is None or not mark.finite:
            continue
        style = dict(_MARK_STYLES[key])
        style["s"] = style["s"] * mark_scale
        ax.scatter([mark.kl_q_theta], [mark.kl_q_target], label=mark.label, zorder=5,
                   clip_on=False, **style)
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    return off_scale


def _front_notes(front, off_scale: int, *, short: bool = False) -> list[str]:
    notes = []
    for key in _MARK_ORDER:
        mark = front.marks.get(key)
        if mark is not None and not mark.finite:
            name = mark.label.split(" (")[0]
            notes.append(f"{name} at infinite KL" if short
                         else f"{name}: at infinite KL, not drawn")
    if "q_star" not in front.marks:
        notes.append(f"{front.status}: no q*" if short
                     else f"status '{front.status}': no α equalises the two KLs")
    if not front.same_support:
        notes.append("supports differ" if short
                     else "supports differ: the curve's ends are the limits α → 0+, 1−")
    if off_scale:
        notes.append(f"{off_scale} cloud pts off-axes" if short
                     else f"{off_scale} cloud point(s) beyond the axes")
    return notes


def figure_pareto_front(front, *, ax=None, title=None, log: bool = False, legend: bool = True):
    """The Pareto front of one row (a `core.front.ParetoFront`).

    Draws: the cloud of other distributions (one scatter per kind, labelled 'other q: KIND'),
    the front as a line through `front.values` (in alpha order, pi_theta -> pi_t; label
    FRONT_LABEL), the diagonal x = y (DIAGONAL_LABEL), the end points pi_theta (alpha = 1) and
    pi_t (alpha = 0), q* (when the row has one), the entropy-formula point and alpha = 0.5 (each
    a one-point scatter labelled with its mark's label). The axes span the curve and the finite
    end points; cloud points beyond them are counted in a legend note. Notes (no q*, infinite
    end points, differing supports) go into the legend, never over the data.

    ax=None: a new Figure whose first Axes is the front; when `front.zoom` is set (q* with
    marks close to it) and log is False, a second Axes shows a close-up of the curve around q*
    (from `front.zoom`); the legend sits below the axes. ax given: draw into it only (legend with
    the notes on the axes' right if `legend`, else the notes are appended to the title, as in
    small multiples).
    A row with nothing to draw (front.drawable False) becomes a labelled panel that says why.
    log=True: symmetric-log axes (linear near 0 so the end points at KL = 0 stay visible), for
    fronts spanning several orders of magnitude. Returns the Figure."""
    standalone = ax is None
    zoom_ax = None
    if standalone:
        # no close-up on log axes: they already spread out the region near 0
        has_zoom = front.drawable and getattr(front, "zoom", None) is not None and not log
        if has_zoom:
            fig = plt.figure(figsize=(11.5, 6.2), layout="constrained")
            ax, zoom_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.45, 1.0]})
        else:
            fig, ax = new_figure(8.0, 7.4)
    fig = ax.figure
    if title is None:
        title = "Pareto front of (KL(q‖π_θ), KL(q‖π_t)) over the geometric-mean family"
    if not front.drawable:
        _status_panel(ax, front, title)
        return fig
    xmax, ymax = _front_limits(front)
    xlim, ylim = (-0.015 * xmax, 1.08 * xmax), (-0.015 * ymax, 1.08 * ymax)
    off_scale = _draw_front(ax, front, front.values, xlim, ylim,
                            mark_scale=1.0 if standalone else 0.6,
                            cloud_size=12.0 if standalone else 8.0)
    if log:
        # linear within 1e-3 of each axis' range (so KL = 0 stays on the axes), log beyond
        ax.set_xscale("symlog", linthresh=1e-3 * xmax)
        ax.set_yscale("symlog", linthresh=1e-3 * ymax)
        ax.set_xlim(0.0, xlim[1])
        ax.set_ylim(0.0, ylim[1])
    elif standalone and 0.2 <= xlim[1] / ylim[1] <= 5:
        ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(X_LABEL_KL)
    ax.set_ylabel(Y_LABEL_KL)
    notes = _front_notes(front, off_scale, short=not standalone)
    if zoom_ax is not None:
        z = front.zoom
        zx = (float(np.min(z.kl_q_theta)), float(np.max(z.kl_q_theta)))
        zy = (float(np.min(z.kl_q_target)), float(np.max(z.kl_q_target)))
        span = max(zx[1] - zx[0], zy[1] - zy[0], 1e-300)
        cx, cy = 0.5 * (zx[0] + zx[1]), 0.5 * (zy[0] + zy[1])
        zxlim = (cx - 0.55 * span, cx + 0.55 * span)
        zylim = (cy - 0.55 * span, cy + 0.55 * span)
        _draw_front(zoom_ax, front, z, zxlim, zylim, cloud_size=18.0)
        zoom_ax.set_aspect("equal", adjustable="box")
        zoom_ax.set_xlabel(X_LABEL_KL)
        zoom_ax.set_ylabel(Y_LABEL_KL)
        zoom_ax.set_title("close-up around q*", fontsize=10)
        ax.indicate_inset([zxlim[0], zylim[0], zxlim[1] - zxlim[0], zylim[1] - zylim[0]],
                          inset_ax=None, edgecolor="black", alpha=0.8)
        ax.set_title("whole front", fontsize=10)
        fig.suptitle(title)
    else:
        if standalone or legend or not notes:
            ax.set_title(title)
        else:
            import textwrap

            ax.set_title(title + "\n" + "\n".join(textwrap.wrap("(" + "; ".join(notes) + ")",
                                                               44)))
    if standalone:
        handles, labels = ax.get_legend_handles_labels()
        from matplotlib.lines import Line2D

        for note in notes:
            handles.append(Line2D([], [], linestyle="none"))
            labels.append(f"note: {note}")
        fig.legend(handles, labels, loc="outside lower center",
                   ncols=3 if zoom_ax is not None else 2, frameon=False)
    elif legend:
        from matplotlib.lines import Line2D

        handles, labels = ax.get_legend_handles_labels()
        for note in notes:
            handles.append(Line2D([], [], linestyle="none"))
            labels.append(f"note: {note}")
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0, frameon=False)
    return fig


def figure_pareto_grid(fronts, titles, *, log: bool = False):
    """Small multiples: one panel per ParetoFront (same order as `titles`), one shared legend
    below. Rows without a front (degenerate, disjoint, invalid) become labelled panels."""
    fronts = list(fronts)
    titles = list(titles)
    n = max(len(fronts), 1)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig = plt.figure(figsize=(3.6 * ncols + 0.4, 3.4 * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, front, title in zip(axes, fronts, titles):
        figure_pareto_front(front, ax=ax, title=title, log=log, legend=False)
        ax.title.set_fontsize(9.5)
    for ax in axes[len(fronts):]:
        ax.set_axis_off()
    handles, labels = {}, {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            # per-row numbers (alpha*, alpha_H) differ: keep one generic entry per kind
            key = lab.split(" (")[0]
            if key not in handles:
                handles[key] = h
                labels[key] = key
    if handles:
        fig.legend(list(handles.values()), list(labels.values()), loc="outside lower center",
                   ncols=min(5, len(handles)), frameon=False)
    fig.suptitle("Pareto fronts of (KL(q‖π_θ), KL(q‖π_t)), one panel per row  [nats]")
    return fig


# ----------------------------------------------------------------------------------------------
# D(alpha) with solver iterates

# Newton is drawn last and largest (hollow, thick edge) so that its few points, which all land
# next to alpha*, stay visible on top of the bisection cluster there; a close-up around alpha*
# separates them.
ITER_STYLE = {"bisection": dict(marker="x", color=C_FRONT, s=26, zorder=4),
              "halley": dict(marker="v", color="#CC79A7", s=70, zorder=5),
              "newton": dict(marker="o", color=C_STAR, s=110, zorder=6)}
ITER_ORDER = ("bisection", "halley", "newton")


def _iterate_window(curve) -> float:
    """Half-width of the close-up around alpha*: three times the farthest Newton (or Halley)
    iterate within 0.05 of alpha*, at least 1e-9; None when there is nothing to zoom into."""
    if not np.isfinite(curve.alpha_star):
        return None
    errs = []
    for method in ("newton", "halley"):
        pts = curve.iterates.get(method)
        if pts is not None and len(pts):
            e = np.abs(np.asarray(pts)[:, 0] - curve.alpha_star)
            errs += [float(v) for v in e if 0 < v < 0.05]
    return max(3.0 * max(errs), 1e-9) if errs else None


def _draw_iterates(ax, curve, *, offset: float = 0.0, numbers: bool = True, size: float = 1.0,
                   scale: float = 1.0):
    """Scatter each solver's iterates ((alpha_k - offset) / scale, D_k), labelled per method."""
    methods = [m for m in ITER_ORDER if m in curve.iterates] + \
        [m for m in curve.iterates if m not in ITER_ORDER]
    for method in methods:
        pts = np.asarray(curve.iterates[method])
        if len(pts) == 0:
            continue
        style = dict(ITER_STYLE.get(method, dict(marker="+", color="gray", s=30, zorder=4)))
        color = style.pop("color")
        area = style.pop("s") * size
        what = "float32 objective" if method == "bisection" else "D"
        paint = ({"facecolors": "none", "edgecolors": color, "linewidths": 1.8}
                 if style["marker"] in ("o", "v") else {"color": color})
        ax.scatter((pts[:, 0] - offset) / scale, pts[:, 1], s=area, clip_on=True, **style, **paint,
                   label=f"{method}: {len(pts)} evaluations ({what})")
        if numbers:
            for k, (a_k, d_k) in enumerate(pts[:4]):
                # number the first iterates, except those sitting on top of the root
                if not np.isfinite(curve.alpha_star) or abs(a_k - curve.alpha_star) > 0.03:
                    ax.annotate(str(k + 1), (a_k - offset, d_k), textcoords="offset points",
                                xytext=(5, 5), fontsize=7.5, color=color)


def _number_close_iterates(ax, curve, alpha_star: float, half: float, unit: float) -> None:
    """Number Newton's (and Halley's) iterates in the close-up; iterates closer together than
    2% of the window share one label ('2, 3')."""
    for method in ("newton", "halley"):
        pts = curve.iterates.get(method)
        if pts is None or not len(pts):
            continue
        groups: list[list[int]] = []
        for k, (a_k, _) in enumerate(np.asarray(pts)):
            if abs(a_k - alpha_star) > half:
                continue
            if groups and abs(a_k - pts[groups[-1][-1]][0]) < 0.02 * half:
                groups[-1].append(k)
            else:
                groups.append([k])
        for g in groups:
            a_k, d_k = pts[g[0]]
            ax.annotate(", ".join(str(k + 1) for k in g), ((a_k - alpha_star) / unit, d_k),
                        textcoords="offset points", xytext=(6, 4), fontsize=7,
                        color=ITER_STYLE[method]["color"])


def figure_delta_with_iterates(curve, *, title=None):
    """Left: D(alpha) = KL(q||pi_theta) - KL(q||pi_t) on the grid of a `core.front.DeltaCurve`,
    the zero line, alpha* (vertical line) and each solver's iterates (alpha_k, D_k), the first
    ones numbered; Newton's iterates are drawn last and largest, and an inset shows a close-up
    around alpha* (x axis alpha - alpha*) where Newton's and the bisection's last iterates sit.
    Right: |alpha_k - alpha*| per iteration (log scale), Newton vs bisection, so the convergence
    rates can be read off. A row without a root gets a labelled panel."""
    fig = plt.figure(figsize=(11.0, 4.6), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.35, 1.0]})
    fig.suptitle(title or "D(α) = KL(q_α‖π_θ) − KL(q_α‖π_t) and the solvers' iterates")
    if curve.alpha.size == 0:
        _status_panel(ax, curve, None)
        ax2.set_axis_off()
        return fig
    ax.plot(curve.alpha, curve.delta, color="black", linewidth=1.8, label="D(α) (exact)")
    ax.axhline(0.0, color=C_DIAG, linewidth=0.9, linestyle="--", label="D = 0")
    if np.isfinite(curve.alpha_star):
        ax.axvline(curve.alpha_star, color=C_STAR, linewidth=1.0, linestyle=":",
                   label=f"α* = {curve.alpha_star:.6g}")
    _draw_iterates(ax, curve)
    exact_notes = []
    for method in [m for m in ITER_ORDER if m in curve.iterates]:
        pts = np.asarray(curve.iterates[method])
        if len(pts) == 0 or not np.isfinite(curve.alpha_star):
            continue
        style = ITER_STYLE[method]
        err = np.abs(pts[:, 0] - curve.alpha_star)
        ax2.semilogy(np.arange(1, len(pts) + 1), np.where(err > 0, err, np.nan),
                     marker=style["marker"], color=style["color"], linewidth=1.0,
                     markersize=7 if method != "bisection" else 6, label=method,
                     markerfacecolor="none" if style["marker"] in ("o", "v") else None,
                     zorder=style["zorder"])
        exact = np.flatnonzero(err == 0)
        if exact.size:
            exact_notes.append(f"{method}: iterate {exact[0] + 1} is α* itself\n"
                               "(error 0, off the log scale)")
    half = _iterate_window(curve)
    if half is not None:
        # close-up in the empty upper-right quadrant (D > 0 left of alpha*, < 0 right of it)
        inset = ax.inset_axes([0.6, 0.56, 0.38, 0.4])
        a0 = curve.alpha_star
        near = (curve.alpha >= a0 - 4 * half) & (curve.alpha <= a0 + 4 * half)
        idx = np.flatnonzero(near)
        lo_i = max(int(idx[0]) - 1, 0) if idx.size else int(np.searchsorted(curve.alpha, a0)) - 1
        hi_i = min(int(idx[-1]) + 2, curve.alpha.size) if idx.size else lo_i + 2
        lo_i = max(lo_i, 0)
        unit = 10.0 ** math.floor(math.log10(half))
        inset.plot((curve.alpha[lo_i:hi_i] - a0) / unit, curve.delta[lo_i:hi_i], color="black",
                   linewidth=1.2)
        inset.axhline(0.0, color=C_DIAG, linewidth=0.8, linestyle="--")
        inset.axvline(0.0, color=C_STAR, linewidth=0.8, linestyle=":")
        _draw_iterates(inset, curve, offset=a0, numbers=False, size=0.7, scale=unit)
        ys = [np.asarray(curve.iterates[m])[:, 1] for m in curve.iterates
              if len(curve.iterates[m])]
        ys = np.concatenate(ys) if ys else np.zeros(1)
        xs = np.concatenate([np.asarray(curve.iterates[m])[:, 0] for m in curve.iterates
                             if len(curve.iterates[m])] or [np.zeros(1)]) - a0
        in_window = np.abs(xs) <= half
        yspan = float(np.max(np.abs(ys[in_window]))) if in_window.any() else 1e-12
        inset.set_xlim(-half / unit, half / unit)
        inset.set_ylim(-1.3 * max(yspan, 1e-300), 1.3 * max(yspan, 1e-300))
        inset.set_xlabel(f"(α − α*) / {unit:.0e}   (close-up around α*)", fontsize=7,
                         labelpad=1)
        _number_close_iterates(inset, curve, a0, half, unit)
        inset.tick_params(labelsize=6.5)
        inset.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        inset.yaxis.get_offset_text().set_fontsize(6.5)
        inset.grid(True, linewidth=0.3, alpha=0.5)
    if curve.status != "ok":
        ax.text(0.02, 0.04, f"status '{curve.status}': no root in (0, 1)", transform=ax.transAxes,
                fontsize=8)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("α  (weight on π_θ; dimensionless)")
    ax.set_ylabel("D(α)  [nats]")
    ax.set_title("D(α) over [0, 1]")
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.legend(loc="lower left", frameon=True, framealpha=0.9, fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.set_xlabel("iteration k")
    ax2.set_ylabel("|α_k − α*|  (dimensionless)")
    ax2.set_title("distance to α* (exact Newton root)")
    ax2.grid(True, which="both", linewidth=0.4, alpha=0.5)
    if ax2.lines:
        from matplotlib.lines import Line2D

        handles, labels = ax2.get_legend_handles_labels()
        for note in exact_notes:
            handles.append(Line2D([], [], linestyle="none"))
            labels.append(note)
        ax2.legend(handles, labels, loc="best", framealpha=0.9)
    else:
        ax2.set_axis_off()
        ax2.text(0.5, 0.5, f"status '{curve.status}': no root in (0, 1),\nno solver iterates",
                 ha="center", va="center", transform=ax2.transAxes)
    return fig


# ----------------------------------------------------------------------------------------------
# the alpha* sweep of the delta-vs-uniform family (Test 2)


def figure_alpha_sweep(vocab_sizes, eps_values, alpha_star, *, reported=None, title=None):
    """Heatmap of alpha*(V, eps) for pi_theta = (1-eps, eps/(V-1), ...), pi_t uniform.

    vocab_sizes: [nV]; eps_values: [nE]; alpha_star: [nE, nV] (NaN cells left blank). A
    diverging colour map centred on 0.5 (blue: q* leans to pi_t, red: to pi_theta), log axes,
    the alpha* = 0.5 contour (solid), and, when reported = (value, label), the contour
    alpha* = value (dashed) labelled in the legend."""
    vocab_sizes = np.asarray(vocab_sizes, dtype=np.float64)
    eps_values = np.asarray(eps_values, dtype=np.float64)
    alpha_star = np.asarray(alpha_star, dtype=np.float64)
    if alpha_star.shape != (eps_values.size, vocab_sizes.size):
        raise ValueError(f"alpha_star has shape {alpha_star.shape}, expected "
                         f"({eps_values.size}, {vocab_sizes.size}) = (len(eps), len(V))")
    fig, ax = new_figure(7.4, 5.2)
    from matplotlib.colors import TwoSlopeNorm

    # diverging around 0.5: blue = alpha* < 0.5 (q* leans to pi_t), red = above (leans to pi_theta)
    finite = alpha_star[np.isfinite(alpha_star)]
    low = min(float(finite.min()) if finite.size else 0.0, 0.49)
    high = max(float(finite.max()) if finite.size else 1.0, 0.51)
    mesh = ax.pcolormesh(vocab_sizes, eps_values, np.ma.masked_invalid(alpha_star),
                         shading="nearest", cmap="RdBu_r",
                         norm=TwoSlopeNorm(vmin=low, vcenter=0.5, vmax=high))
    cbar = fig.colorbar(mesh, ax=ax)
    cbar.set_label("α*  (weight on π_θ; dimensionless)")
    from matplotlib import patheffects
    from matplotlib.lines import Line2D

    # white lines with a black halo stay visible on every colour of the map
    halo = [patheffects.Stroke(linewidth=3.6, foreground="black"), patheffects.Normal()]
    handles = []
    if vocab_sizes.size >= 2 and eps_values.size >= 2:
        cs = ax.contour(vocab_sizes, eps_values, alpha_star, levels=[0.5], colors="white",
                        linewidths=2.0)
        cs.set(path_effects=halo)
        handles.append(Line2D([], [], color="white", linewidth=2.0, path_effects=halo,
                              label="α* = 0.5"))
        if reported is not None:
            value, label = reported
            cs = ax.contour(vocab_sizes, eps_values, alpha_star, levels=[float(value)],
                            colors=C_TARGET, linewidths=2.0, linestyles="--")
            cs.set(path_effects=halo)
            handles.append(Line2D([], [], color=C_TARGET, linewidth=2.0, linestyle="--",
                                  path_effects=halo, label=label))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("vocabulary size V  (tokens)")
    ax.set_ylabel("ε = 1 − π_θ(top token)  (probability)")
    ax.set_title(title or "α* for π_θ = (1−ε, ε/(V−1), …) vs uniform π_t")
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.13),
                  ncols=len(handles), frameon=False)
    return fig
