"""plots.py (figure contents through their data, not pixels) and the plot-pareto / plot commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import log_softmax, logsumexp

from geomix_cli import plots, plots_diagnostics
from geomix_cli.cli import app
from geomix_cli.core.front import (DeltaCurve, delta_curve, four_case_summary, pareto_front)
from geomix_cli.io import write_pairs_npz

SAMPLE = "cases/data/smollm2_sample.npz"


def _line(ax, label):
    found = [ln for ln in ax.lines if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.lines]
    return found[0]


def _collection(ax, label_start):
    found = [c for c in ax.collections if str(c.get_label()).startswith(label_start)]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0]


def _all_text(fig) -> str:
    texts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        texts += [t.get_text() for t in ax.texts]
        if ax.get_legend() is not None:
            texts += [t.get_text() for t in ax.get_legend().get_texts()]
    for leg in fig.legends:
        texts += [t.get_text() for t in leg.get_texts()]
    if fig._suptitle is not None:
        texts.append(fig._suptitle.get_text())
    return "\n".join(texts)


@pytest.fixture(scope="module")
def small_front():
    rng = np.random.default_rng(2)
    lt = log_softmax(rng.normal(0, 2, 50))
    lT = log_softmax(rng.normal(0, 2, 50))
    return pareto_front(lt, lT, cloud_size=90)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# --------------------------------------------------------------------------------------------
# Pareto front figures


def test_pareto_figure_draws_the_front_marks_and_cloud(small_front):
    fig = plots.figure_pareto_front(small_front)
    ax = fig.axes[0]
    v = small_front.values
    assert_array_equal(_line(ax, plots.FRONT_LABEL).get_xydata(),
                       np.column_stack([v.kl_q_theta, v.kl_q_target]))
    diag = _line(ax, plots.DIAGONAL_LABEL).get_xydata()
    assert_allclose(diag[:, 0], diag[:, 1], rtol=0, atol=0)
    for key, mark in small_front.marks.items():
        pts = _collection(ax, mark.label).get_offsets()
        assert_allclose(pts, [[mark.kl_q_theta, mark.kl_q_target]], rtol=0, atol=0)
    cloud = small_front.cloud
    total = 0
    for kind in set(cloud.kind.tolist()):
        pts = np.asarray(_collection(ax, f"other q: {kind}").get_offsets())
        sel = cloud.kind == kind
        assert_array_equal(pts, np.column_stack([cloud.kl_q_theta[sel], cloud.kl_q_target[sel]]))
        total += len(pts)
    assert total == len(cloud)
    assert "nats" in ax.get_xlabel() and "nats" in ax.get_ylabel()
    assert "π_θ" in ax.get_xlabel() and "π_t" in ax.get_ylabel()
    text = _all_text(fig)
    assert "Pareto front" in text and "q* (α* =" in text
    # the legend is outside the data area: a figure legend below the axes
    assert len(fig.legends) == 1 and ax.get_legend() is None
    # the close-up panel shows the dense zoom curve around q*
    zoom = fig.axes[1]
    assert_array_equal(_line(zoom, plots.FRONT_LABEL).get_xydata(),
                       np.column_stack([small_front.zoom.kl_q_theta,
                                        small_front.zoom.kl_q_target]))
    star = small_front.marks["q_star"]
    x0, x1 = zoom.get_xlim()
    y0, y1 = zoom.get_ylim()
    assert x0 < star.kl_q_theta < x1 and y0 < star.kl_q_target < y1
    # the main axes span the curve
    assert ax.get_xlim()[1] >= v.kl_q_theta.max() and ax.get_ylim()[1] >= v.kl_q_target.max()


def test_pareto_figure_log_axes_and_existing_axes(small_front):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    out = plots.figure_pareto_front(small_front, ax=ax, title="my title", log=True)
    assert out is fig and ax.get_title() == "my title"
    assert ax.get_xscale() == "symlog" and ax.get_yscale() == "symlog"
    assert ax.get_legend() is not None  # legend=True by default on given axes


def test_pareto_figure_without_close_up_when_the_marks_are_far_apart():
    # sharp temperature pair: alpha_H ~ 1 sits at pi_theta, far from q*; nothing to zoom on
    from geomix_cli.sources import load_source

    pairs = load_source("gen:temperature:V=500,scale=5,tau=0.05")
    front = pareto_front(pairs.log_pi_theta[0], pairs.log_pi_t[0], cloud=False)
    assert front.alpha_entropy > 0.999 and abs(front.alpha_star - 0.8988) < 1e-4
    assert front.zoom is None
    fig = plots.figure_pareto_front(front)
    assert len(fig.axes) == 1 and len(fig.legends) == 1
    assert_array_equal(_line(fig.axes[0], plots.FRONT_LABEL).get_xdata(),
                       front.values.kl_q_theta)


def test_pareto_figure_for_a_row_without_front_is_a_labelled_panel():
    front = pareto_front(np.log([0.2, 0.8]), np.log([0.2, 0.8]))
    fig = plots.figure_pareto_front(front)
    assert not fig.axes[0].lines and "degenerate" in _all_text(fig)


def test_pareto_grid_has_one_panel_per_row_with_titles(small_front):
    disjoint = pareto_front(np.array([0.0, -np.inf]), np.array([-np.inf, 0.0]))
    fig = plots.figure_pareto_grid([small_front, disjoint, small_front], ["a", "b", "c"])
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes]
    assert titles[:3] == ["a", "b", "c"]
    assert_array_equal(_line(fig.axes[0], plots.FRONT_LABEL).get_xydata()[:, 0],
                       small_front.values.kl_q_theta)
    assert "disjoint-support" in "\n".join(t.get_text() for t in fig.axes[1].texts)
    assert len(fig.legends) == 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert plots.FRONT_LABEL in legend and "q*" in legend


# --------------------------------------------------------------------------------------------
# the rest of the figure set


def test_delta_figure_shows_curve_iterates_and_root(smollm2_log_probs):
    lt, lT = smollm2_log_probs
    curve = delta_curve(lt[3], lT[3], n_grid=51)
    fig = plots.figure_delta_with_iterates(curve)
    ax, ax2 = fig.axes[:2]
    assert_array_equal(_line(ax, "D(α) (exact)").get_xydata(),
                       np.column_stack([curve.alpha, curve.delta]))
    for method in ("newton", "bisection"):
        pts = np.asarray(_collection(ax, f"{method}:").get_offsets())
        assert_array_equal(pts, curve.iterates[method])
        err = _line(ax2, method).get_xydata()
        assert_array_equal(err[:, 0], np.arange(1, len(curve.iterates[method]) + 1))
    root = [ln for ln in ax.lines if ln.get_label().startswith("α* =")][0]
    assert_allclose(root.get_xdata(), [curve.alpha_star] * 2)
    zero = _line(ax, "D = 0")
    assert_array_equal(zero.get_ydata(), [0, 0])
    assert "nats" in ax.get_ylabel()
    # Newton's iterates are drawn on top of the bisection cluster, larger, and a close-up
    # around alpha* shows them apart (x axis: alpha - alpha*, scaled)
    newton, bisection = _collection(ax, "newton:"), _collection(ax, "bisection:")
    assert newton.get_zorder() > bisection.get_zorder()
    assert newton.get_sizes()[0] > bisection.get_sizes()[0]
    (inset,) = ax.child_axes
    unit = float(inset.get_xlabel().split("/ ")[1].split()[0])
    pts = np.asarray(_collection(inset, "newton:").get_offsets())
    assert_allclose(pts[:, 0] * unit, curve.iterates["newton"][:, 0] - curve.alpha_star,
                    rtol=1e-12, atol=1e-18)
    lo, hi = inset.get_xlim()
    far = np.abs(curve.iterates["newton"][:, 0] - curve.alpha_star)
    assert hi * unit >= far[far < 0.05].max()  # every Newton iterate near alpha* is in view


def test_delta_figure_for_a_curve_without_points():
    curve = DeltaCurve(status="disjoint-support", message="no q", alpha=np.empty(0),
                       delta=np.empty(0), alpha_star=np.nan, d_at_0=np.nan, d_at_1=np.nan)
    fig = plots.figure_delta_with_iterates(curve)
    assert "disjoint-support" in _all_text(fig)


def test_alpha_sweep_heatmap_and_contours():
    vocab = np.array([10, 100, 1000, 10000])
    eps = np.array([1e-4, 1e-3, 1e-2])
    alpha = np.array([[0.2, 0.3, 0.4, 0.6], [0.3, 0.35, 0.5, 0.7], [0.4, 0.45, 0.55, 0.8]])
    fig = plots.figure_alpha_sweep(vocab, eps, alpha, reported=(0.34, "seed: α* ≈ 0.34"))
    ax = fig.axes[0]
    mesh = [c for c in ax.collections if hasattr(c, "get_array") and c.get_array() is not None
            and np.size(c.get_array()) == alpha.size][0]
    assert_array_equal(np.asarray(mesh.get_array()).reshape(alpha.shape), alpha)
    levels = sorted(float(level) for cs in ax.collections if hasattr(cs, "levels")
                    for level in cs.levels)
    assert levels == [0.34, 0.5]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["α* = 0.5", "seed: α* ≈ 0.34"]
    with pytest.raises(ValueError, match="expected"):
        plots.figure_alpha_sweep(vocab, eps, alpha.T)


def _band_ratios(ax):
    verts = _collection(ax, "±10% band").get_paths()[0].vertices
    inner = verts[(verts[:, 0] > 0)]
    return np.sort(np.unique(np.round(inner[:, 1] / inner[:, 0], 12)))


def test_ess_scatter_one_panel_per_family_each_with_its_visible_band():
    ess_t = np.array([0.9, 0.8, 0.5, 0.95, 1e-12, 1e-3, 0.993, 0.995])
    ess_p = np.array([0.85, 0.81, 0.2, 0.96, 1e-3, 1e-9, 0.994, 0.995])
    fams = ["a", "a", "b", "a", "peaked", "peaked", "near", "near"]
    fig = plots_diagnostics.figure_ess_scatter(ess_t, ess_p, fams)
    panels = {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"a", "b", "peaked", "near"}
    assert_array_equal(_collection(panels["a"], "a (3)").get_offsets(),
                       [[0.9, 0.85], [0.8, 0.81], [0.95, 0.96]])
    assert_array_equal(_collection(panels["b"], "b (1)").get_offsets(), [[0.5, 0.2]])
    for name, ax in panels.items():
        # the band where points count as within: max/min <= 1.1, i.e. 1/1.1 x .. 1.1 x
        assert_allclose(_band_ratios(ax), [1 / 1.1, 1.1])
        diagonal = _line(ax, "ESS_θ = ESS_t")
        assert_array_equal(diagonal.get_xdata(), diagonal.get_ydata())
    # each panel on its own scale: the near-identical family (all ~0.99) is not squashed by
    # the peaked one (1e-12 .. 1e-3): its axis spans a few times the band, not 12 decades
    lo, hi = panels["near"].get_xlim()
    assert panels["near"].get_xscale() == "linear" and 0.5 < lo < 0.99 < hi < 1.5
    assert panels["peaked"].get_xscale() == "log"
    assert "within 10%: 100%" in "\n".join(t.get_text() for t in panels["near"].texts)


def test_ess_scatter_counts_rows_with_an_ess_of_zero():
    fig = plots_diagnostics.figure_ess_scatter([0.5, 0.0, 0.6], [0.55, 0.3, 0.6], ["x", "x", "x"])
    assert "1 with an ESS of 0 not drawn" in fig.axes[0].get_title()
    assert len(_collection(fig.axes[0], "x (3)").get_offsets()) == 2


def test_principles_figure_keeps_every_principle_visible():
    """kl-symmetry / bisection and ess-balance / max-min-ess land on (almost) the same points:
    each has its own marker, the larger ones drawn first and hollow, so none hides another."""
    principles = ["kl-symmetry", "bisection", "ess-balance", "max-min-ess", "entropy", "half"]
    x = np.array([0.5, 0.5, 0.6, 0.6, 0.4, 0.45])
    y = np.array([0.4, 0.4, 0.6, 0.6, 0.5, 0.42])
    fig = plots_diagnostics.figure_principles_ess(x, y, principles)
    ax, ax2 = fig.axes[:2]
    drawn = {str(c.get_label()).split(" (")[0]: c for c in ax.collections
             if str(c.get_label()).split(" (")[0] in principles}
    assert set(drawn) == set(principles)
    markers = {p: plots_diagnostics.PRINCIPLE_STYLE[p]["marker"] for p in principles}
    assert len(set(markers.values())) == len(principles)
    for big, small in (("kl-symmetry", "bisection"), ("ess-balance", "max-min-ess")):
        assert drawn[big].get_sizes()[0] > drawn[small].get_sizes()[0]
        assert drawn[big].get_zorder() < drawn[small].get_zorder()  # small on top
        assert len(drawn[big].get_facecolors()) == 0 or drawn[big].get_facecolors()[0][3] == 0
    assert "each principle's α" in ax.get_xlabel() and "q*" not in ax.get_xlabel() + ax.get_ylabel()
    assert [t.get_text() for t in ax2.get_xticklabels()] == principles


def test_four_cases_bars_match_the_summary():
    lt = np.log(np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]]))
    lT = np.log(np.array([[0.1, 0.2, 0.7], [0.2, 0.3, 0.5]]))
    s = four_case_summary(lt, lT, np.array([0.5, 0.5]))
    fig = plots_diagnostics.figure_four_cases(s.labels, s.counts, s.mass_q, s.fraction_meeting)
    counts_ax, mass_ax, frac_ax = fig.axes[:3]
    assert_array_equal([p.get_height() for p in counts_ax.patches], s.counts)
    assert_allclose([p.get_height() for p in mass_ax.patches], s.mass_q, rtol=0, atol=0)
    expected = np.where(np.isfinite(s.fraction_meeting), s.fraction_meeting, 0.0)
    assert_allclose([p.get_height() for p in frac_ax.patches], expected, rtol=0, atol=0)
    annotations = [t.get_text() for t in frac_ax.texts]
    assert annotations.count("n/a") == int(np.isnan(s.fraction_meeting).sum())
    # tick labels are the case labels, wrapped onto several lines
    assert [t.get_text().replace("\n", " ") for t in counts_ax.get_xticklabels()] == \
        list(s.labels)


def test_four_cases_count_axis_has_no_stray_zero_tick():
    counts = np.array([22652, 0, 14014, 856953])
    fig = plots_diagnostics.figure_four_cases(
        ["1", "2", "3", "4"], counts, [0.5, 0.0, 0.2, 0.3],
        [0.8, np.nan, 0.9, 1.0])
    counts_ax = fig.axes[0]
    fig.canvas.draw()
    ticks = [t.get_text() for t in counts_ax.get_yticklabels() if t.get_text()]
    lo, hi = counts_ax.get_ylim()
    shown = [v for v in counts_ax.get_yticks() if lo <= v <= hi]
    assert counts_ax.get_yscale() == "log" and 0 < lo < 1 and min(shown) >= 1
    assert "0" not in ticks and "$\\mathdefault{0}$" not in ticks
    assert "0" in [t.get_text() for t in counts_ax.texts]  # the empty case says 0
    assert "seed" not in _all_text(fig).lower()


def test_entropy_error_histogram_counts_every_finite_value():
    errors = {"real": np.array([0.1, -0.05, 0.02, np.nan]), "peaked": np.array([0.3, 0.31])}
    fig = plots_diagnostics.figure_entropy_error_hist(errors)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:2] == ["real (n = 3)", "peaked (n = 2)"]
    assert "α_H − α*" in ax.get_xlabel()
    zero = _line(ax, "α_H = α*")
    assert_array_equal(zero.get_xdata(), [0, 0])


def test_alpha_per_row_points_and_gaps():
    pos = np.arange(5)
    a = np.array([0.4, 0.5, np.nan, 0.6, 0.45])
    h = np.array([0.3, 0.5, 0.2, 0.9, 0.4])
    fig = plots_diagnostics.figure_alpha_along_sequence(pos, a, h, labels=list("abcde"))
    ax = fig.axes[0]
    assert_array_equal(_line(ax, "α* (exact root)").get_xydata(), np.column_stack([pos, a]))
    # independent pairs: points, not a line through them, and no 'position in the sequence'
    assert _line(ax, "α* (exact root)").get_linestyle() == "None"
    assert _line(ax, "α_H (entropy formula)").get_linestyle() == "None"
    assert "row" in ax.get_xlabel() and "sequence" not in ax.get_xlabel()
    custom = plots_diagnostics.figure_alpha_along_sequence(
        pos, a, xlabel="position t in the sequence")
    assert custom.axes[0].get_xlabel() == "position t in the sequence"
    assert_array_equal(_line(ax, "α_H (entropy formula)").get_ydata(), h)
    assert_array_equal(_collection(ax, "no α*").get_offsets(), [[2, 0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcde")


# --------------------------------------------------------------------------------------------
# CLI


@pytest.fixture()
def mixed_source(tmp_path):
    theta = np.array([[0.5, 0.3, 0.1, 0.1], [0.6, 0.4, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25],
                      [1.0, 0.0, 0.0, 0.0]])
    target = np.array([[0.05, 0.05, 0.1, 0.8], [0.1, 0.2, 0.7, 0.0], [0.25, 0.25, 0.25, 0.25],
                       [0.0, 0.0, 0.5, 0.5]])
    path = tmp_path / "mixed.npz"
    write_pairs_npz(path, theta=theta, target=target, kind="probs",
                    meta=["ok", "no-root", "degenerate", "disjoint"])
    return path


def test_plot_pareto_writes_png_and_exact_data(runner, tmp_path, smollm2_log_probs):
    out, data = tmp_path / "f.png", tmp_path / "f.csv"
    result = runner.invoke(app, ["plot-pareto", SAMPLE, "--row", "5", "--out", str(out),
                                 "--data", str(data), "--no-cloud"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.split() == [str(out), str(data)]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width = matplotlib.image.imread(out).shape[:2]
    assert width >= 1000  # 150 dpi on a figure several inches wide
    frame = pd.read_csv(data)
    assert list(frame.columns) == ["row", "alpha", "kl_q_theta", "kl_q_target", "log_z", "delta",
                                   "ess_theta", "ess_target"]
    assert (frame["row"] == 5).all() and len(frame) >= 40
    # the CSV is the exact front: direct sums at the same alphas, from this test's own
    # log-probabilities (CSV keeps 17 significant digits)
    lt, lT = smollm2_log_probs[0][5], smollm2_log_probs[1][5]
    alpha = frame["alpha"].to_numpy()
    s = alpha[:, None] * lt[None, :] + (1 - alpha[:, None]) * lT[None, :]
    log_q = s - logsumexp(s, axis=1, keepdims=True)
    q = np.exp(log_q)
    tol = 1e-13  # V = 49152 terms of size <= ~30 nats: ~1e-15 rounding, far below
    assert_allclose(frame["kl_q_theta"], np.sum(q * (log_q - lt), axis=1), rtol=0, atol=tol)
    assert_allclose(frame["kl_q_target"], np.sum(q * (log_q - lT), axis=1), rtol=0, atol=tol)
    ess_theta = 1.0 / np.sum(np.exp(2 * lt - log_q), axis=1)
    assert_allclose(frame["ess_theta"], ess_theta, rtol=1e-11)


def test_plot_pareto_formats_by_extension_and_json(runner, tmp_path, mixed_source):
    svg, pdf = tmp_path / "f.svg", tmp_path / "f.pdf"
    r1 = runner.invoke(app, ["plot-pareto", str(mixed_source), "--row", "0", "--out", str(svg),
                             "--no-cloud"])
    assert r1.exit_code == 0, r1.stderr
    assert b"<svg" in svg.read_bytes()[:500]
    r2 = runner.invoke(app, ["plot-pareto", str(mixed_source), "--row", "0", "--out", str(pdf),
                             "--json", "--no-cloud"])
    assert r2.exit_code == 0, r2.stderr
    assert pdf.read_bytes()[:5] == b"%PDF-"
    payload = json.loads(r2.stdout)
    assert payload["figure"] == str(pdf) and payload["rows"][0]["status"] == "ok"
    assert 0 < payload["rows"][0]["alpha_star"] < 1


def test_plot_pareto_default_output_under_outputs(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["plot-pareto", "gen:dirichlet:V=12,seed=1", "--dpi", "72"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "outputs/pareto.png"
    assert (tmp_path / "outputs" / "pareto.png").stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [
    (["--row", "9"], "row 9 does not exist"),
    (["--row", "2"], "status 'degenerate'"),
    (["--row", "3"], "status 'disjoint-support'"),
    (["--row", "0", "--out", "{tmp}/f.jpg"], "unknown figure extension '.jpg'"),
])
def test_plot_pareto_refusals_are_one_line_exit_2(runner, tmp_path, mixed_source, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    out = ["--out", str(tmp_path / "x.png")] if "--out" not in args else []
    result = runner.invoke(app, ["plot-pareto", str(mixed_source), *args, *out])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geomix: error: ") and message in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_plot_pareto_several_rows_makes_labelled_small_multiples(runner, tmp_path, mixed_source):
    out, data = tmp_path / "grid.png", tmp_path / "grid.csv"
    result = runner.invoke(app, ["plot-pareto", str(mixed_source), "--out", str(out),
                                 "--data", str(data), "--dpi", "72"])
    assert result.exit_code == 0, result.stderr
    assert out.exists()
    # one warning line per row without q*
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("geomix: warning:")]
    assert len(warnings) == 3 and "row 1: status 'no-root'" in warnings[0]
    frame = pd.read_csv(data)
    assert sorted(set(frame["row"])) == [0, 1]  # the rows that have a curve


def test_plot_pareto_no_root_row_is_drawn_with_a_warning(runner, tmp_path, mixed_source):
    result = runner.invoke(app, ["plot-pareto", str(mixed_source), "--row", "1", "--out",
                                 str(tmp_path / "n.png"), "--dpi", "72"])
    assert result.exit_code == 0
    assert "no-root" in result.stderr and "drawing the front without q*" in result.stderr


@pytest.mark.parametrize("kind", ["pareto", "delta", "ess", "four-cases", "entropy-error",
                                  "alpha-sequence"])
def test_plot_kinds_write_their_figure(runner, tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    result = runner.invoke(app, ["plot", kind, "gen:dirichlet:V=16,rows=3,seed=3", "--out",
                                 str(out), "--json", "--dpi", "72"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["kind"] == kind and payload["figure"] == str(out)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_four_cases_json_matches_core(runner, tmp_path):
    spec = "gen:dirichlet:V=16,rows=4,seed=8"
    result = runner.invoke(app, ["plot", "four-cases", spec, "--out", str(tmp_path / "c.svg"),
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    from geomix_cli.core import solve_alpha
    from geomix_cli.sources import load_source

    pairs = load_source(spec)
    alpha = solve_alpha(pairs.log_pi_theta, pairs.log_pi_t).alpha
    s = four_case_summary(pairs.log_pi_theta, pairs.log_pi_t, alpha)
    assert payload["counts"] == s.counts.tolist() and sum(payload["counts"]) == 4 * 16


def test_plot_ess_colours_rows_by_meta_family(runner, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    seen = {}
    original = plots_diagnostics.figure_ess_scatter

    def spy(ess_theta, ess_target, families, **kw):
        seen["families"] = list(families)
        return original(ess_theta, ess_target, families, **kw)

    monkeypatch.setattr(plots_diagnostics, "figure_ess_scatter", spy)
    result = runner.invoke(app, ["plot", "ess", SAMPLE, "--out", str(tmp_path / "e.png"),
                                 "--dpi", "72"])
    assert result.exit_code == 0, result.stderr
    assert seen["families"] == ["steer"] * 9 + ["temp0.6"] * 3
    plt.close("all")


def test_plot_refuses_unknown_kind_and_rows_without_alpha(runner, tmp_path, mixed_source):
    bad = runner.invoke(app, ["plot", "histogramme", SAMPLE])
    assert bad.exit_code == 2 and "unknown plot kind 'histogramme'" in bad.stderr
    none = runner.invoke(app, ["plot", "ess", str(mixed_source), "--rows", "1:4", "--out",
                               str(tmp_path / "e.png")])
    assert none.exit_code == 2 and "no row has alpha*" in none.stderr
    assert none.stderr.strip().splitlines()[-1].startswith("geomix: error:")


def test_plot_pareto_batch_with_an_invalid_row_exits_3(runner, tmp_path):
    path = tmp_path / "inv.npz"
    write_pairs_npz(path, theta=np.array([[0.5, 0.3, 0.1, 0.1], [0.6, 0.4, 0.1, 0.0]]),
                    target=np.array([[0.05, 0.05, 0.1, 0.8], [0.1, 0.2, 0.7, 0.0]]), kind="probs")
    result = runner.invoke(app, ["plot-pareto", str(path), "--out", str(tmp_path / "g.png"),
                                 "--dpi", "72", "--no-cloud"])
    assert result.exit_code == 3
    assert (tmp_path / "g.png").exists()
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 1 and "row 1" in warnings[0] and "sum to 1.1" in warnings[0]
