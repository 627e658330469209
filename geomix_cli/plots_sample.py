"""Figures of `geomix sample`. No mathematics here: every number comes from a
`models.sampling.SampleRun` and its `sequence_statistics`; these functions only draw them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

_COLORS = {"kl-symmetry": "#D55E00", "entropy": "#009E73", "on-policy": "#0072B2",
           "off-policy": "#E69F00"}


def _plain_log_axis(ax) -> None:
    """Log scale with plain numbers (0.5, 1, 2), not 5 x 10^-1, on the y axis."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    ax.set_yscale("log")
    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(formatter)
    ax.yaxis.set_minor_formatter(NullFormatter())


def _finish(ax, ylabel: str, title: str, *, legend: dict) -> None:
    """Plain log y axis, labels, legend and grid of one ESS-vs-length panel."""
    _plain_log_axis(ax)
    ax.set_xlabel("prefix length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(**legend)
    ax.grid(True, which="both", alpha=0.3)


def _color(sampler: str, k: int) -> str:
    return _COLORS.get(sampler, ["#CC79A7", "#56B4E9", "#000000", "#777777"][k % 4])


def _quartiles(v: np.ndarray):
    """Median, 25% and 75% over axis 0, ignoring NaN (all-NaN columns give NaN, quietly)."""
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.nanmedian(v, axis=0), np.nanpercentile(v, 25, axis=0),
                np.nanpercentile(v, 75, axis=0))


def alpha_along_sequence_figure(run):
    """alpha* of the pair at each generated token (median over sequences and the 25-75% band) per
    sampler, with a few single sequences of the first sampler as thin lines."""
    fig, ax = plt.subplots(figsize=(7.5, 4.4), layout="constrained")
    steps = np.arange(1, run.tokens.shape[1] + 1)
    values = run.fields["alpha_star"]
    for k, sampler in enumerate(run.samplers):
        rows = run.row_sampler == k
        v = values[rows]
        has = np.isfinite(v).any(axis=0)
        if not has.any():
            continue
        med, lo, hi = _quartiles(v)
        color = _color(sampler, k)
        ax.plot(steps[has], med[has], color=color, label=f"{sampler}: median α* over sequences")
        ax.fill_between(steps[has], lo[has], hi[has], color=color, alpha=0.15, linewidth=0)
        if k == 0:
            for r in np.flatnonzero(rows)[:5]:
                ax.plot(steps, values[r], color=color, lw=0.6, alpha=0.5)
    ax.axhline(0.5, color="#777777", ls=":", lw=0.8, label="α = 1/2")
    ax.set_xlabel("generated token (step)")
    ax.set_ylabel("α* of (π_θ, π_t) at the step")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("α* along the sequence (band: 25–75% of sequences; thin: single sequences)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


def log_weight_figure(run):
    """Histograms of the sequence log-weights log w_theta and log w_t per sampler."""
    lw_theta, lw_t = run.log_weights()
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2), layout="constrained", sharey=True)
    for ax, lw, name in ((axes[0], lw_theta, "log w_θ = Σ log π_θ(y)/q(y)"),
                         (axes[1], lw_t, "log w_t = Σ log π_t(y)/q(y)")):
        finite = lw[np.isfinite(lw)]
        if finite.size == 0:
            continue
        span = (finite.min(), finite.max()) if finite.max() > finite.min() else (
            finite.min() - 0.5, finite.max() + 0.5)
        bins = np.linspace(span[0], span[1], 31)
        for k, sampler in enumerate(run.samplers):
            v = lw[(run.row_sampler == k) & np.isfinite(lw)]
            ax.hist(v, bins=bins, histtype="step", lw=1.4, color=_color(sampler, k),
                    label=f"{sampler} ({v.size} seq.)")
        ax.axvline(0.0, color="#777777", ls=":", lw=0.8)
        ax.set_xlabel(f"{name}  [nats]")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("sequences")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.suptitle("Sequence importance log-weights per sampler")
    return fig


def ess_vs_length_figure(statistics: dict):
    """Sequence-level ESS_theta and ESS_t (median over prompts) against the prefix length, and
    their max/min ratio with the derivation's 10% band."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3), layout="constrained")
    samplers = [s["sampler"] for s in statistics["samplers"]]
    for k, sampler in enumerate(samplers):
        rows = [r for r in statistics["along_length"] if r["sampler"] == sampler]
        if not rows:
            continue
        length = [r["length"] for r in rows]
        color = _color(sampler, k)
        axes[0].plot(length, [r["ess_theta_median"] for r in rows], "-", color=color,
                     label=f"{sampler}: ESS_θ")
        axes[0].plot(length, [r["ess_target_median"] for r in rows], "--", color=color,
                     label=f"{sampler}: ESS_t")
        axes[1].plot(length, [r["ratio_median"] for r in rows], "-", color=color,
                     label=sampler)
    band = statistics["band"]
    axes[1].axhspan(1.0, band, color="#009E73", alpha=0.12, label=f"within {band - 1:.0%}")
    _finish(axes[0], "sequence-level ESS, Kish (Σw)² / (n Σw²)  (median over prompts)",
            "ESS of the two weight sets vs length", legend={"fontsize": 7.5, "loc": "lower left"})
    _finish(axes[1], "max(ESS_θ, ESS_t) / min(...)  (median over prompts)",
            "ESS balance vs length", legend={"fontsize": 8, "loc": "upper left"})
    return fig


_CLASS_COLORS = {"within": "#009E73", "outside": "#D55E00", "undecided": "#777777"}


def sequence_balance_figure(main: dict, control: dict | None = None):
    """The verify claim `sequence-ess-balance`: per prompt, ESS_theta / ESS_t of the first k
    tokens against k (point estimates; at the full length the bootstrap interval, coloured by the
    prompt's classification), with the 10% band; and per k, how many prompts the bootstrap
    decides within / outside / undecided, next to the token-level share within the band."""
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4), layout="constrained")
    band = main["band"]
    ax = axes[0]
    length = np.arange(1, main["max_new_tokens"] + 1)
    for r in main["per_prompt"]:
        color = _CLASS_COLORS[r["classification"]]
        ax.plot(length, r["ratio_by_length"], "-", color=color, lw=1.0, alpha=0.8)
        ax.errorbar([length[-1] + 0.25], [r["ratio"]],
                    yerr=[[r["ratio"] - r["ratio_low"]], [r["ratio_high"] - r["ratio"]]],
                    fmt="o", ms=3.5, color=color, capsize=2, lw=1.0)
    if control is not None:
        med = np.median([r["ratio_by_length"] for r in control["per_prompt"]], axis=0)
        ax.plot(np.arange(1, len(med) + 1), med, ":", color="#0072B2", lw=1.6,
                label="negative control (on-policy): median over prompts")
    ax.axhspan(1.0 / band, band, color="#009E73", alpha=0.12,
               label=f"within {band - 1:.0%} (the derivation's band)")
    ax.axhline(1.0, color="#777777", lw=0.6)
    for label, color in _CLASS_COLORS.items():
        ax.plot([], [], "-", color=color, label=f"prompt {label} at {length[-1]} tokens")
    _finish(ax, "ESS_θ / ESS_t of the first k tokens (Kish)",
            f"q*-sampled sequences, {main['n']} per prompt (bars: "
            f"{main['interval']:.2%} bootstrap)",
            legend={"fontsize": 7, "ncol": 2, "loc": "upper center",
                    "bbox_to_anchor": (0.5, -0.14)})
    ax.set_title(ax.get_title(), fontsize=9.5)
    ax = axes[1]
    counts = {c: np.array([r["counts"][c] for r in main["along_length"]])
              for c in ("within", "outside", "undecided")}
    bottom = np.zeros(len(length))
    for c, values in counts.items():
        ax.bar(length, values, bottom=bottom, color=_CLASS_COLORS[c], alpha=0.8,
               label=f"prompts {c}")
        bottom = bottom + values
    ax.axhline(main["prompts"] / 2.0, color="#000000", ls="--", lw=0.8, label="half the prompts")
    ax.set_xlabel("prefix length k (tokens)")
    ax.set_ylabel("prompts (bootstrap classification)")
    ax.set_ylim(0, main["prompts"])
    twin = ax.twinx()
    share = [np.nan if r["token_fraction_within"] is None else r["token_fraction_within"]
             for r in main["along_length"]]
    twin.plot(length, share, "k-o", ms=3, lw=1.2, label="token level: share of tokens within")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("share of the step's tokens within 10% (exact)")
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7, ncol=3,
              loc="upper center", bbox_to_anchor=(0.5, -0.14))
    ax.set_title("Decided prompts by length, and the token-level balance", fontsize=9.5)
    return fig
