"""The derivation's computing methods (sections 3.4, 5.4, 6.2 and its practical advice): the
entropy formula, the entropy formula as a solver start, the cost of the bisection, and the
reference implementation."""

from __future__ import annotations

import math

import numpy as np

from geomix_cli.checks.families import solve_ok
from geomix_cli.checks.rule import (ClaimResult, Repaired, choose_condition, q4,
                                    refuted_verdict, stats, universal_verdict)
from geomix_cli.core.family import (entropy, entropy_formula_alpha, log_ratio_on_support,
                                    tilted_moments)
from geomix_cli.core.solvers import (OK, classify_rows, hermite_start, solve_alpha,
                                     solve_bisection_reference)

APPROX = 0.05  # "approximates": |alpha_H - alpha*| <= 0.05
CLOSE_C = 0.01  # "close": Chernoff information C <= 0.01 nats
EXTREME_H = 2.0  # "extreme (very different entropies)": max(H) / min(H) >= 2
SHARE = 0.9  # a condition "holds" on a family when >= 90% of its pairs inside meet it
ENTROPY_LADDER = tuple((c, h) for c in (0.1, 0.03, 0.01, 0.003) for h in (1.3, 1.2, 1.1, 1.05))
ACCURACIES = (1e-3, 1e-6, 1e-9)
REF_TOL = 1e-6


def _entropy_rows(fam):
    sol, ok = solve_ok(fam)
    lt, lT = fam.log_pi_theta[ok], fam.log_pi_t[ok]
    a = sol.alpha[ok]
    l, log_base, _ = log_ratio_on_support(lt, lT)
    c = -tilted_moments(l, log_base, a).log_z
    h_t, h_T = entropy(lt), entropy(lT)
    with np.errstate(divide="ignore", invalid="ignore"):
        h_ratio = np.maximum(h_t, h_T) / np.minimum(h_t, h_T)
    return {"err": np.abs(entropy_formula_alpha(lt, lT) - a), "signed": entropy_formula_alpha(
        lt, lT) - a, "C": c, "H": h_ratio}


def _inside_ok(data: dict, cond) -> tuple[bool, int, float]:
    """Within APPROX for >= SHARE of the pairs inside the condition (C <= c and H-ratio <= h),
    in every family with such pairs. Returns (ok, pairs inside, share inside)."""
    c0, h0 = cond
    inside = within = 0
    ok = True
    for d in data.values():
        m = (d["C"] <= c0) & (d["H"] <= h0)
        if not m.any():
            continue
        ok &= float(np.mean(d["err"][m] <= APPROX)) >= SHARE
        inside += int(m.sum())
        within += int(np.sum(d["err"][m] <= APPROX))
    return bool(ok and inside), inside, (within / inside if inside else float("nan"))


def _stated_conditions(data: dict):
    """The derivation's conditions judged on per-family errors: (right, close-pair failures as
    (family, share, n), families within APPROX although not close, share of close pairs within,
    share of extreme pairs failing). Right: close pairs within for >= SHARE in every family, no
    family's far pairs within for >= SHARE, and >= SHARE of the extreme pairs off."""
    close_fail, far_fine = [], []
    n_close = within_close = n_ext = off_ext = 0
    for name, d in data.items():
        close, extreme = d["C"] <= CLOSE_C, d["H"] >= EXTREME_H
        if close.any():
            share = float(np.mean(d["err"][close] <= APPROX))
            if share < SHARE:
                close_fail.append((name, share, int(close.sum())))
        if (~close).any() and float(np.mean(d["err"][~close] <= APPROX)) >= SHARE:
            far_fine.append(name)
        n_close += int(close.sum())
        within_close += int(np.sum(d["err"][close] <= APPROX))
        n_ext += int(extreme.sum())
        off_ext += int(np.sum(d["err"][extreme] > APPROX))
    share_close = within_close / max(n_close, 1)
    share_ext = off_ext / max(n_ext, 1)
    right = not close_fail and not far_fine and share_ext >= SHARE
    return right, close_fail, far_fine, share_close, share_ext


def claim_entropy(fams, rng, thorough, heldout=None) -> ClaimResult:
    statement = ("Method 2: alpha_entropy = H(pi_theta) / (H(pi_theta) + H(pi_t)) approximates "
                 "alpha* only when the two distributions are close; it fails in extreme cases "
                 "(very different entropies).")
    data = {f.name: _entropy_rows(f) for f in fams}
    data = {k: v for k, v in data.items() if v["err"].size}
    rows = []
    for name, d in data.items():
        close, extreme = d["C"] <= CLOSE_C, d["H"] >= EXTREME_H
        st = stats(d["err"])
        rows.append({"family": name, "rows": int(d["err"].size), "median_abs_error": st["median"],
                     "p90_abs_error": st["p90"], "max_abs_error": st["max"],
                     "fraction_within_0.05": q4(np.mean(d["err"] <= APPROX)),
                     "close_pairs": int(close.sum()),
                     "close_within_0.05": q4(np.mean(d["err"][close] <= APPROX))
                     if close.any() else None,
                     "extreme_pairs": int(extreme.sum()),
                     "extreme_beyond_0.05": q4(np.mean(d["err"][extreme] > APPROX))
                     if extreme.any() else None})
    conditions_right, close_fail, far_fine, share_close, share_ext = _stated_conditions(data)
    n_close = sum(r["close_pairs"] for r in rows)
    n_ext = sum(r["extreme_pairs"] for r in rows)
    # control: planted errors that follow the derivation's conditions exactly (0 on close pairs,
    # 1 elsewhere; pairs both close and extreme, where the two conditions disagree, left out)
    # must give 'depends' through the same rule
    planted = {}
    for k, d in data.items():
        keep = ~((d["C"] <= CLOSE_C) & (d["H"] >= EXTREME_H))
        planted[k] = {"C": d["C"][keep], "H": d["H"][keep],
                      "err": np.where(d["C"][keep] <= CLOSE_C, 0.0, 1.0)}
    control_right = _stated_conditions(planted)[0]
    # and the reverse plant (0 off on the far pairs, 1 on the close ones) must not give 'depends'
    reverse = {k: {**d, "err": 1.0 - d["err"]} for k, d in planted.items()}
    control_wrong = not _stated_conditions(reverse)[0]
    if conditions_right:
        verdict, clause = ("depends", "D") if control_wrong else ("untested", "U")
    else:
        verdict, clause = refuted_verdict("R1", control_right)
    held = {f.name: _entropy_rows(f) for f in heldout or []}
    cond, confirmed = choose_condition(ENTROPY_LADDER, lambda c: _inside_ok(data, c)[0],
                                       lambda c: _inside_ok(held, c)[0])
    repaired = None
    if cond is not None and verdict == "refuted":
        _, n_in, s_in = _inside_ok(data, cond)
        _, n_h, s_h = _inside_ok(held, cond)
        repaired = Repaired(
            statement=(f"alpha_entropy is within {APPROX:g} of alpha* for >= {SHARE:.0%} of pairs "
                       f"that are near (C <= {cond[0]:g}) AND have similar entropies "
                       f"(max(H) / min(H) <= {cond[1]:g}) ({s_in:.0%} of {n_in} such pairs of "
                       f"the suite, real rows included); with entropies differing by >= "
                       f"{EXTREME_H:g}x it is off by more than {APPROX:g} for {share_ext:.0%} of "
                       f"pairs."),
            check=(f"{n_h} held-out pairs inside the condition: {s_h:.0%} within {APPROX:g}, every "
                   f"family >= {SHARE:.0%}: {'confirmed' if confirmed else 'NOT confirmed'}"),
            confirmed=confirmed)
    per = "; ".join(f"{r['family']}: median {r['median_abs_error']:.3g}, p90 "
                    f"{r['p90_abs_error']:.3g}" for r in rows)
    fail_txt = ", ".join(f"{name} ({share:.0%} of {n})" for name, share, n in close_fail) or "none"
    evidence = (
        f"|alpha_entropy - alpha*| per family: {per}. Close pairs (C <= {CLOSE_C:g} nats, "
        f"{n_close} of them across the families): {share_close:.0%} within {APPROX:g}; families "
        f"whose close pairs are within for fewer than {SHARE:.0%}: {fail_txt}. Pairs that are not "
        f"close but still within {APPROX:g} for >= {SHARE:.0%}: "
        f"{', '.join(far_fine) or 'none'} ('only when close' is then too "
        f"narrow). Extreme pairs (entropies differing by >= {EXTREME_H:g}x, {n_ext} of them): "
        f"{share_ext:.0%} off by more than {APPROX:g}, as the derivation says. Closeness alone "
        f"does not decide the error: the entropy ratio does, together with closeness (the "
        f"repaired claim).")
    control = (f"Planted errors that follow the derivation's conditions exactly (0 on every close "
               f"pair, 1 on every other pair of the same families; pairs both close and extreme, "
               f"where the two conditions disagree, left out) through the same rule: "
               f"{'depends, so the check can return it' if control_right else 'NOT depends'}; "
               f"the reverse plant (1 on close pairs, 0 elsewhere) gives "
               f"{'not depends, so the check can fail' if control_wrong else 'depends (!)'}. "
               f"The rule needs the close pairs of every family within {APPROX:g} for >= "
               f"{SHARE:.0%}, no family outside the condition within it, and >= {SHARE:.0%} of "
               f"extreme pairs failing.")
    headline = (f"close pairs (C <= {CLOSE_C:g}): {share_close:.0%} within {APPROX:g}, failing in "
                f"{fail_txt}; entropies >= {EXTREME_H:g}x apart: {share_ext:.0%} fail"
                + (f"; repaired: C <= {cond[0]:g} and entropy ratio <= {cond[1]:g}, "
                   f"{'confirmed' if confirmed else 'not confirmed'} held out" if repaired else ""))
    return ClaimResult(
        "entropy-formula", statement, verdict, evidence, clause=clause,
        section="section 3.4, Method 2",
        criteria=(f"approximates: |alpha_H - alpha*| <= {APPROX:g}; close: C <= {CLOSE_C:g} nats; "
                  f"extreme: max(H)/min(H) >= {EXTREME_H:g}; a condition holds on a family when "
                  f">= {SHARE:.0%} of its pairs inside meet it; repaired condition read from the "
                  f"ladder C <= {{0.1, 0.03, 0.01, 0.003}} x ratio <= {{1.3, 1.2, 1.1, 1.05}}"),
        control=control, repaired=repaired, headline=headline,
        data={"control_planted_depends": bool(control_right), "per_family": rows,
              "close_pairs": n_close, "close_share_within": q4(share_close),
              "extreme_pairs": n_ext, "extreme_share_failing": q4(share_ext),
              "repaired_condition": list(cond) if cond else None},
        would_change="Close pairs within 0.05 in every family (real rows included), and no far "
                     "pair within it, would make it depends (the stated conditions right).",
        tables={"entropy_formula": rows},
        figures={"entropy_error_hist": {k: v["signed"] for k, v in data.items()}})


# ----------------------------------------------------------------------------------------------
# passes to a true accuracy


def bisection_errors(l, log_base, alpha_star, passes: int, first=None,
                     pivot: float = 0.5) -> np.ndarray:
    """|estimate - alpha*| after each pass of float64 bisection on exact D over [0, 1] (the
    estimate is the midpoint of the bracket); `first`: the first pivot (default 1/2). `pivot`:
    where in the bracket each pass evaluates D (1/2: bisection; another fraction: a slower
    bracketing method, the planted control of `complexity`)."""
    n = alpha_star.size
    lo, hi = np.zeros(n), np.ones(n)
    errs = np.empty((n, passes))
    for k in range(passes):
        mid = (lo + pivot * (hi - lo) if (k > 0 or first is None)
               else np.asarray(first, dtype=float))
        d = tilted_moments(l, log_base, mid).mean
        lo, hi = np.where(d > 0, mid, lo), np.where(d > 0, hi, mid)
        errs[:, k] = np.abs(0.5 * (lo + hi) - alpha_star)
    return errs


def newton_errors(l, log_base, alpha_star, passes: int, start) -> np.ndarray:
    """|estimate - alpha*| after each pass of safeguarded Newton on D from `start` (the estimate
    after a pass is the next iterate; a step leaving the bracket, or creeping, bisects)."""
    n = alpha_star.size
    alpha = np.clip(np.asarray(start, dtype=float) * np.ones(n), 1e-12, 1 - 1e-12)
    lo, hi = np.zeros(n), np.ones(n)
    last, before = np.ones(n), np.ones(n)
    done = np.zeros(n, dtype=bool)  # converged: |D / D'| at rounding level
    errs = np.empty((n, passes))
    for k in range(passes):
        m = tilted_moments(l, log_base, alpha)
        lo, hi = np.where(m.mean > 0, alpha, lo), np.where(m.mean < 0, alpha, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = m.mean / m.var
            new = alpha + step
        # outside the bracket, or creeping (not below half the step before last: rtsafe's rule,
        # as in geomix's solver): bisect
        bad = (~np.isfinite(new) | (new <= lo) | (new >= hi)
               | (np.abs(step) > 0.5 * before))
        done = (m.mean == 0) | (np.abs(step) <= 1e-15) | done
        new = np.where(done, alpha, np.where(bad, 0.5 * (lo + hi), new))
        before, last = last, np.abs(new - alpha)
        alpha = new
        errs[:, k] = np.abs(alpha - alpha_star)
    return errs


def bisection_bound(accuracy: float) -> int:
    """Passes a sound bisection on [0, 1] needs for a midpoint within `accuracy` of the root:
    after k passes the bracket is 2^-k wide and its midpoint within 2^-(k+1), so
    ceil(log2(1 / accuracy)) - 1 (the derivation's log2(1/eps) counts one more)."""
    return max(math.ceil(math.log2(1.0 / accuracy)) - 1, 0)


def passes_needed(errs: np.ndarray, accuracy: float) -> np.ndarray:
    """The first pass after which the estimate stays within `accuracy` (inf if never)."""
    bad = errs > accuracy
    last_bad = np.where(bad.any(axis=1), errs.shape[1] - np.argmax(bad[:, ::-1], axis=1), 0)
    return np.where(last_bad < errs.shape[1], last_bad + 1.0, np.inf)


def _reference_errors(fam, rows, alpha_star) -> np.ndarray:
    """|estimate - alpha*| after each pass of the derivation's reference code (float32, +1e-10);
    after it stops, its last estimate stays."""
    sol = solve_bisection_reference(fam.log_pi_theta[rows], fam.log_pi_t[rows],
                                    record_iterates=True)
    its = sol.extra.get("iterates", {})
    passes = max((len(v) for v in its.values()), default=0)
    errs = np.full((rows.size, max(passes, 1)), np.inf)
    for j in range(rows.size):
        lo, hi = 0.0, 1.0
        seq = its.get(j, [])
        for k, (mid, obj) in enumerate(seq):
            lo, hi = (mid, hi) if obj > 0 else (lo, mid)
            errs[j, k] = abs(0.5 * (lo + hi) - alpha_star[j])
        if seq:
            errs[j, len(seq):] = errs[j, len(seq) - 1]
    return errs


def _method_rows(fams, thorough):
    """Per family: exact alpha*, the moments, and the entropy/Hermite starts of a few rows."""
    per = 10 if thorough else 4
    out = []
    for fam in fams:
        sol, ok = solve_ok(fam)
        idx = np.flatnonzero(ok)[:per * (3 if fam.vocab <= 5000 else 1)]
        if idx.size == 0:
            continue
        lt, lT = fam.log_pi_theta[idx], fam.log_pi_t[idx]
        l, log_base, _ = log_ratio_on_support(lt, lT)
        cls = classify_rows(lt, lT)
        herm = hermite_start(cls.d_at_0, cls.d_at_1, cls.var_at_0, cls.var_at_1)
        out.append((fam, idx, l, log_base, sol.alpha[idx], entropy_formula_alpha(lt, lT), herm))
    return out


def claim_complexity(fams, rng, thorough, method_rows=None) -> ClaimResult:
    statement = ("Method 1 (bisection or Brent) solves alpha* at cost O(V log(1/eps)): about "
                 "log2(1/eps) passes over the vocabulary per row to accuracy eps.")
    rows, over, never_ref = [], 0, []
    tight = 0  # (row, eps) cases needing exactly ceil(log2(1/eps)) - 1 passes, the sound minimum
    slow_over = 0  # the planted control: a bracket cut at 1/4 instead of 1/2 (keeps 3/4 or 1/4)
    newton_max = {a: 0 for a in ACCURACIES}
    for fam, idx, l, log_base, astar, _, herm in method_rows or _method_rows(fams, thorough):
        bis = bisection_errors(l, log_base, astar, 40)
        newt = newton_errors(l, log_base, astar, 60, herm)
        ref = _reference_errors(fam, idx, astar)
        rec = {"family": fam.name, "rows": int(idx.size)}
        slow = bisection_errors(l, log_base, astar, 120, pivot=0.25)
        for acc in ACCURACIES:
            need = passes_needed(bis, acc)
            bound = math.ceil(math.log2(1 / acc))  # the derivation's count
            over += int(np.sum(need > bound))
            tight += int(np.sum(need == bisection_bound(acc)))
            slow_over += int(np.sum(passes_needed(slow, acc) > bound))
            n_need = passes_needed(newt, acc)
            newton_max[acc] = max(newton_max[acc], float(np.max(n_need)))
            rec[f"bisection_max_passes_{acc:g}"] = float(np.max(need))
            rec[f"newton_max_passes_{acc:g}"] = float(np.max(n_need))
        r_need = passes_needed(ref, REF_TOL)
        rec["reference_code_max_passes_1e-06"] = float(np.max(r_need))
        if np.isinf(r_need).any():
            never_ref.append(f"{fam.name} ({int(np.sum(np.isinf(r_need)))} of {idx.size})")
        rec["log2_1_over_eps_1e-06"] = math.ceil(math.log2(1 / REF_TOL))
        rows.append(rec)
    total = sum(r["rows"] for r in rows)
    verdict, clause = universal_verdict(over == 0, slow_over > 0 or bool(never_ref))
    evidence = (
        f"Passes over the row (each one O(V) sum) until the estimate stays within eps of the exact "
        f"alpha* (safeguarded Newton to 1e-14), on {total} rows of every family (real rows "
        f"included), for eps = {', '.join(f'{a:g}' for a in ACCURACIES)}: float64 bisection on "
        f"exact D needed more than the derivation's ceil(log2(1/eps)) passes in {over} (row, eps) "
        f"cases; {tight} of the {total * len(ACCURACIES)} needed exactly ceil(log2(1/eps)) - 1, "
        f"the minimum of a sound bisection (after k passes the bracket is 2^-k wide and its "
        f"midpoint within 2^-(k+1) of alpha*), so the count holds with one pass to spare; the cost "
        f"is O(V log(1/eps)) as claimed. Newton on the same D (D' = -Var_q(l) from the same pass, "
        f"started where geomix starts it, from the end-point moments) needs at most "
        f"{', '.join(f'{newton_max[a]:g} (eps {a:g})' for a in ACCURACIES)} passes: quadratic "
        f"convergence, O(V log log(1/eps)) once close.")
    control = (f"Planted: a bracketing method that cuts at 1/4 of the bracket instead of 1/2 (so "
               f"its cost is not about log2(1/eps)) exceeds the bound in {slow_over} of the "
               f"{total * len(ACCURACIES)} (row, eps) cases, so the check can fail. The derivation's "
               f"reference code (float32, log(p + 1e-10), tol 1e-6) fails it too: it never gets "
               f"within 1e-6 of alpha* on {', '.join(never_ref) or 'no family'} rows, however many "
               f"passes.")
    headline = (f"bisection within ceil(log2(1/eps)) passes on all {total} rows x "
                f"{len(ACCURACIES)} accuracies ({over} over); Newton <= {newton_max[1e-9]:g} passes to "
                f"1e-9; the reference code never reaches 1e-6 on {len(never_ref)} families")
    return ClaimResult(
        "complexity", statement, verdict, evidence, clause=clause,
        section="section 3.4, Method 1, and section 5.4",
        criteria="passes to a true error <= eps at most ceil(log2(1/eps)) (the derivation's "
                 "count) for float64 bisection, eps in {1e-3, 1e-6, 1e-9}, on every row tried",
        control=control, headline=headline,
        data={"accuracies": list(ACCURACIES), "cases_over_bound": over,
              "cases_at_sound_minimum": tight,
              "control_quarter_cut_over_bound": slow_over,
              "newton_max_passes": {f"{a:g}": q4(newton_max[a]) for a in ACCURACIES},
              "reference_never_within_1e-6": never_ref, "per_family": rows},
        would_change="A row where float64 bisection needs more than ceil(log2(1/eps)) passes "
                     "(D evaluated too inaccurately to keep the bracket).",
        tables={"complexity": rows})


def _start_table(rows_in, acc):
    """Per family: mean Newton iterations to a true error <= acc from 1/2, from alpha_H and from
    geomix's Hermite start, and bisection passes without and with alpha_H as the first pivot."""
    out = []
    for fam, idx, l, log_base, astar, ah, herm in rows_in:
        ah = np.where(np.isfinite(ah), ah, 0.5)
        out.append({
            "family": fam.name, "rows": int(idx.size),
            "newton_from_half": q4(np.mean(passes_needed(
                newton_errors(l, log_base, astar, 40, 0.5), acc))),
            "newton_from_entropy": q4(np.mean(passes_needed(
                newton_errors(l, log_base, astar, 40, ah), acc))),
            "newton_from_hermite": q4(np.mean(passes_needed(
                newton_errors(l, log_base, astar, 40, herm), acc))),
            "bisection": q4(np.mean(passes_needed(bisection_errors(l, log_base, astar, 40), acc))),
            "bisection_entropy_pivot": q4(np.mean(passes_needed(
                bisection_errors(l, log_base, astar, 40, first=ah), acc))),
            "median_abs_alpha_H_error": q4(np.median(np.abs(ah - astar)))})
    return out


# The informed first pivots of bisection's positive control: k/16 but 1/2 (which is plain bisection)
_INFORMED_PIVOTS = tuple(k / 16 for k in range(1, 16) if k != 8)


def _planted_starts(rows_in, rows, acc) -> dict:
    """The entropy-start comparison with planted starts instead of alpha_H, per solver: 'informed'
    (Newton starts at alpha* itself; bisection's first pivot is, per row, the best in hindsight of
    the pivots k/16 other than 1/2 -- not alpha*, which would leave alpha* on the edge of every
    later bracket, the worst case of bisection's midpoint estimate) and 'far' (1e-3 or
    1 - 1e-3, whichever is further from alpha*). Each: the number of families on which it is
    slower, and on which it is faster, than the same solver without it (means, as the claim's
    comparison; the baselines from `_start_table`'s `rows`)."""
    out = {(solver, plant): [0, 0] for solver in ("Newton", "bisection")
           for plant in ("informed", "far")}

    def bisection(l, log_base, astar, first=None):
        return passes_needed(bisection_errors(l, log_base, astar, 40, first=first), acc)

    for (fam, idx, l, log_base, astar, _, _), row in zip(rows_in, rows):
        base = {"Newton": row["newton_from_half"], "bisection": row["bisection"]}
        far = np.where(astar < 0.5, 1.0 - 1e-3, 1e-3)
        informed = np.min([bisection(l, log_base, astar, np.full(astar.shape, pivot))
                           for pivot in _INFORMED_PIVOTS], axis=0)
        planted = {
            ("Newton", "informed"): passes_needed(newton_errors(l, log_base, astar, 40, astar),
                                                  acc),
            ("Newton", "far"): passes_needed(newton_errors(l, log_base, astar, 40, far), acc),
            ("bisection", "informed"): informed,
            ("bisection", "far"): bisection(l, log_base, astar, far)}
        for (solver, plant), passes in planted.items():
            mine, theirs = q4(np.mean(passes)), base[solver]
            out[solver, plant][0] += int(mine > theirs)
            out[solver, plant][1] += int(mine < theirs)
    return out


def claim_entropy_start(fams, rng, thorough, method_rows=None, heldout=None) -> ClaimResult:
    statement = ("Section 5.4 and the practical advice: initialising the solve with the entropy "
                 "formula speeds up convergence ('fast initialisation, fewer iterations').")
    acc = 1e-6
    rows_in = method_rows or _method_rows(fams, thorough)
    rows = _start_table(rows_in, acc)
    # controls through the same comparison: a solver's results are evidence only when a start
    # chosen knowing alpha* is never slower with it and faster somewhere (the comparison can say
    # "speeds up"); "holds" needs the far start to be slower somewhere (it can say "does not")
    planted = _planted_starts(rows_in, rows, acc)
    counted = {solver for solver in ("Newton", "bisection")
               if planted[solver, "informed"][0] == 0 and planted[solver, "informed"][1] > 0}
    slower, faster, not_counted, ties = [], [], [], []
    for r in rows:
        for solver, with_start, without in (("Newton", "newton_from_entropy", "newton_from_half"),
                                            ("bisection", "bisection_entropy_pivot", "bisection")):
            if r[with_start] > r[without]:
                (slower if solver in counted else not_counted).append(
                    f"{solver} on {r['family']} ({r[with_start]:.3g} vs {r[without]:.3g})")
            elif r[with_start] < r[without] and solver in counted:
                faster.append((solver, r["family"]))
            elif r[with_start] == r[without] and solver in counted:
                ties.append(f"{solver} on {r['family']} ({r[with_start]:.3g})")
    if slower:      # slower with a counted solver: its informed start passed the same comparison
        verdict, clause = refuted_verdict("R1", bool(counted))
    elif len(counted) < 2 or ties:  # a comparison that cannot say "speeds up" tells nothing;
        verdict, clause = "untested", "U"  # equal counts are not "fewer iterations" either
    else:
        verdict, clause = universal_verdict(
            True, all(planted[solver, "far"][0] > 0 for solver in counted))
    hermite_wins = sum(r["newton_from_hermite"] < r["newton_from_entropy"] for r in rows)
    repaired = None
    if slower:
        named = sorted({fam for _, fam in faster})
        held = [h for h in heldout or [] if h.name.replace(" (held out)", "") in named]
        held_rows = _start_table(_method_rows(held, thorough), acc) if held else []
        again = [(solver, r["family"]) for r in held_rows for solver, fam in faster
                 if r["family"].replace(" (held out)", "") == fam and (
                     (solver == "Newton" and r["newton_from_entropy"] < r["newton_from_half"])
                     or (solver == "bisection"
                         and r["bisection_entropy_pivot"] < r["bisection"]))]
        listed = ", ".join(f"{s} on {f}" for s, f in faster) or "no solver and family"
        check = (f"the same measurement on held-out pairs of those families: {len(again)} of "
                 f"{len(faster)} still faster with the entropy start" if faster
                 else "nothing to check: it was faster nowhere")
        if faster and len(again) == len(faster):
            repaired = Repaired(
                statement=(f"The entropy start reduces the iterations only for {listed}; it costs "
                           f"a pass of its own, and geomix's Hermite start (from the end-point "
                           f"moments) needs fewer Newton iterations on {hermite_wins} of "
                           f"{len(rows)} families."), check=check, confirmed=True)
        else:
            repaired = Repaired(
                statement=(f"The entropy formula is not a reliable start: it reduced the "
                           f"iterations only for {listed}, and not reproducibly; geomix's Hermite "
                           f"start (from the end-point moments) needs fewer Newton iterations on "
                           f"{hermite_wins} of {len(rows)} families."),
                check=check + (" (so the gains do not generalise)" if faster else ""),
                confirmed=len(again) < len(faster) or not faster)
    evidence = (
        f"Iterations (passes over the row) until the estimate stays within {acc:g} of the exact "
        f"alpha*, mean per family, for Newton started at alpha = 1/2 against Newton started at "
        f"alpha_H, and for bisection on [0, 1] against bisection whose first pivot is alpha_H "
        f"(the entropy formula's own pass over both rows is not counted, the generous reading). "
        f"Slower with the entropy start: {'; '.join(slower) or 'nowhere'}. Faster: "
        f"{', '.join(f'{s} on {f}' for s, f in faster) or 'nowhere'}. A start helps only as much "
        f"as it is close to alpha* for Newton (the entropy formula is far off where the entropies "
        f"differ: entropy-formula); for bisection a first pivot g saves log2(1/(2 min(g, 1 - g))) "
        f"passes only when alpha* lies on its shorter side, and a pivot at alpha* itself is its "
        f"worst case (alpha* stays on the edge of every later bracket)."
        + (f" Equal with and without it: {'; '.join(ties)} (not fewer iterations)."
           if ties else ""))
    def _plant(solver, plant):
        worse, better = planted[solver, plant]
        return f"{solver} slower on {worse} and faster on {better} of {len(rows)} families"

    control = (
        f"The same comparison with informed planted starts: Newton from alpha* itself "
        f"({_plant('Newton', 'informed')}) and bisection's first pivot the best in hindsight of "
        f"the pivots k/16 other than 1/2 per row ({_plant('bisection', 'informed')}), so the "
        f"comparison can "
        f"say 'speeds up'; and a far start or first pivot (1e-3 or 1 - 1e-3, away from alpha*): "
        f"{_plant('Newton', 'far')}, {_plant('bisection', 'far')}, so it can say 'does not'. A "
        f"solver's comparison counts only where its informed start is never slower and faster "
        f"somewhere: {', '.join(sorted(counted)) or 'neither'}"
        + (f" (not counted: {'; '.join(not_counted)})" if not_counted else "") + ".")
    headline = (f"slower with the entropy start in {len(slower)} (solver, family) cases, faster in "
                f"{len(faster)}" + (f"; {len(not_counted)} slower cases of a comparison whose "
                                    f"informed-start control fails, not counted"
                                    if not_counted else ""))
    return ClaimResult(
        "entropy-start-speedup", statement, verdict, evidence, clause=clause,
        section="section 5.4 ('fast initialisation with the entropy formula, fewer iterations') "
                "and the closing practical advice",
        criteria=f"'speeds up': fewer mean iterations to a true error {acc:g} than the same solver "
                 f"without it (Newton from 1/2; bisection pivoting at 1/2), on every family",
        control=control, repaired=repaired, headline=headline,
        data={"accuracy": acc, "slower": slower, "faster": [list(f) for f in faster],
              "slower_not_counted": not_counted, "counted_solvers": sorted(counted),
              "equal": ties,
              "informed_bisection_pivots": list(_INFORMED_PIVOTS),
              "planted_starts": {f"{solver}/{plant}": {"slower": v[0], "faster": v[1]}
                                 for (solver, plant), v in planted.items()},
              "per_family": rows},
        would_change="Fewer iterations with the entropy start on every family and for both "
                     "solvers.",
        tables={"entropy_start": rows})


def claim_reference(fams, rng, thorough) -> ClaimResult:
    statement = ("The reference implementation (bisection with log(p + 1e-10), float32 softmax, "
                 "tol 1e-6, max_iter 50) solves the KL-symmetry condition exactly ('Method 1: "
                 "exact, robust').")
    rows = []
    repaired_worst = 0.0
    early_worst = 0.0
    for fam in fams:
        sol, ok = solve_ok(fam)
        ref = solve_bisection_reference(fam.log_pi_theta, fam.log_pi_t)
        use = ok & (ref.status == OK)
        if not use.any():
            continue
        err = np.abs(ref.alpha[use] - sol.alpha[use])
        with np.errstate(divide="ignore"):
            sm_t = np.log(np.exp(fam.log_pi_theta[use]) + 1e-10)
            sm_T = np.log(np.exp(fam.log_pi_t[use]) + 1e-10)
        sm_t -= np.log(np.sum(np.exp(sm_t), axis=1, keepdims=True))
        sm_T -= np.log(np.sum(np.exp(sm_T), axis=1, keepdims=True))
        smoothed = solve_alpha(sm_t, sm_T, "newton").alpha
        # the repaired algorithm: the same bisection in float64 on exact log-probabilities
        l, log_base, _ = log_ratio_on_support(fam.log_pi_theta[use], fam.log_pi_t[use])
        errors = bisection_errors(l, log_base, sol.alpha[use], 20)
        fixed = errors[:, -1]
        repaired_worst = max(repaired_worst, float(fixed.max()))
        # the negative control: the same bisection stopped four passes early (bracket 2^-16)
        early_worst = max(early_worst, float(errors[:, 15].max()))
        rows.append({"family": fam.name, "rows": int(use.sum()),
                     "median_abs_error": q4(np.median(err)), "max_abs_error": q4(err.max()),
                     "max_error_from_smoothing": q4(np.nanmax(np.abs(smoothed - sol.alpha[use]))),
                     "max_error_from_float32_bisection": q4(np.nanmax(np.abs(ref.alpha[use]
                                                                             - smoothed))),
                     "fraction_within_tol_1e-6": q4(np.mean(err <= REF_TOL)),
                     "float64_exact_bisection_max_error": q4(fixed.max())})
    bad = [r for r in rows if r["max_abs_error"] > REF_TOL]
    good = [r["family"] for r in rows if r["max_abs_error"] <= REF_TOL]
    # refuted only if the same comparison can pass: it passes the float64 port without smoothing
    verdict, clause = (refuted_verdict("R1", repaired_worst <= REF_TOL) if bad
                       else universal_verdict(True, early_worst > REF_TOL))
    worst = max(rows, key=lambda r: r["max_abs_error"])
    real = next((r for r in rows if r["family"] == "real-smollm2"), None)
    evidence = (
        "|alpha_reference - alpha*| per family (alpha* by safeguarded Newton in float64 on exact "
        f"supports): " + "; ".join(f"{r['family']}: median {r['median_abs_error']:.2g}, max "
                                   f"{r['max_abs_error']:.2g}" for r in rows)
        + f". Within its own tolerance 1e-6 on every pair of: {', '.join(good) or 'none'}; beyond "
        f"it on {', '.join(r['family'] for r in bad) or 'none'} (worst "
        f"{worst['max_abs_error']:.2g}, {worst['family']}). Split of the error (max per family: "
        f"smoothing alone = exact root of the +1e-10-smoothed pair minus alpha*; float32 bisection "
        f"= reference minus that root) is in the table: the smoothing floors tokens with p << "
        f"1e-10 (real vocabulary-scale rows, near point masses); float32 rounding limits the "
        f"bisection where D is flat.")
    repaired = Repaired(
        statement="The reference's algorithm is exact to its tolerance once it works in float64 on "
                  "exact log-probabilities (no +1e-10, no float32): bisection on D over [0, 1] "
                  "stopped at hi - lo < 1e-6 (20 passes) is within 1e-6 of alpha*.",
        check=f"every pair of every family (real rows included): max error {repaired_worst:.2g}",
        confirmed=repaired_worst <= REF_TOL)
    control = ("The same comparison passes the reference on "
               + (", ".join(good) or "no family") + f" (within {REF_TOL:g} on every pair) and "
               f"passes its float64 port without smoothing on every family: it can pass, and "
               f"fails the shipped code only where the smoothing or float32 bites. The same port "
               f"stopped four passes early (bracket 2^-16) is off by up to {early_worst:.2g}: it "
               f"can fail.")
    headline = (f"'exact' fails on {len(bad)} of {len(rows)} families: worst "
                f"{worst['max_abs_error']:.2g} ({worst['family']})"
                + (f", real rows up to {real['max_abs_error']:.2g}" if real else "")
                + f"; float64 without smoothing: max {repaired_worst:.2g}")
    return ClaimResult(
        "reference-code-exact", statement, verdict, evidence, clause=clause,
        section="section 6.2 (and section 3.4, 'Method 1: exact')",
        criteria=f"'exact' read generously as 'within its own tolerance {REF_TOL:g}' on every "
                 f"pair",
        control=control, repaired=repaired, headline=headline,
        data={"tolerance": REF_TOL, "exact_on": good, "inexact_on": [r["family"] for r in bad],
              "float64_exact_bisection_max_error": q4(repaired_worst),
              "float64_bisection_16_passes_max_error": q4(early_worst), "per_family": rows},
        would_change="The reference within 1e-6 of alpha* on every family would make it hold.",
        tables={"reference_code": rows})
