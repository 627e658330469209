#!/usr/bin/env python
"""The independent high-precision reference behind the golden cases in `cases/`.

This script is NOT the code under test. It re-implements, in mpmath at 50 significant digits,
everything `geomix regress` compares:

- normalisation of the stored values (log-softmax of logits / log of probabilities over their sum),
  exactly, from the stored numbers widened without rounding (float16/bfloat16 are exact in mpmath);
- the support rules and statuses of docs/derivation.md (disjoint-support, degenerate, no-root, ok),
  decided exactly on the common support S;
- alpha*: the root of D(alpha) = E_{q_alpha}[l] on (0, 1), by bisection on the bracket
  [0, 1] (D(0+) > 0 > D(1-)) safeguarding Newton steps (D' = -Var_q(l)), iterated until the step is
  below 10^-(dps - 5);
- at alpha*: log Z, C = -log Z, KL(q*||pi_theta) and KL(q*||pi_t) summed directly (not through the
  D-identity), ESS_pi(q*) = 1 / sum pi^2 / q (0 when pi has mass where q has none), and the entropy
  heuristic alpha_H = H(pi_theta) / (H(pi_theta) + H(pi_t)).

File sources (.npz, .safetensors) are read by this script's own small readers (bfloat16 is decoded
here bit by bit); generator sources (`gen:...`) take their raw arrays from geomix's generators,
which only produce inputs. The case file's `source_sha256` fingerprint is computed with
`geomix_cli.cases.source_fingerprint`, so that `geomix regress` can tell when a source changed.

Tolerances are derived per case from the conditioning of each row at 50 digits (see
`derive_tolerances`), not tuned to what geomix happens to return.

Usage (from the repository root; it is not run in CI, the real rows take about a minute):
    python scripts/make_golden.py                 # (re)write every case file in cases/
    python scripts/make_golden.py --only ID ...   # some cases
    python scripts/make_golden.py --write-data    # (re)create the small float16/bfloat16 files
    python scripts/make_golden.py --check         # recompute, report differences, write nothing
`geomix regress --update` uses `reference_for_case` from this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import struct
import sys
import time
from pathlib import Path

import mpmath
import numpy as np
from mpmath import mp, mpf

SCRIPT = "scripts/make_golden.py"
REFERENCE_VERSION = 1
DEFAULT_DPS = 50
FIELDS = ("status", "alpha", "chernoff", "kl_q_theta", "kl_q_target", "ess_theta", "ess_target",
          "alpha_entropy")
U64 = 2.0**-52  # float64 machine epsilon
ALPHA_CONTRACT = 1e-13  # the exact solvers' accuracy in alpha (floor of the alpha tolerance)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# reading the stored values (own readers, independent of geomix's io.py)


def _read_safetensors_own(path: Path) -> dict[str, np.ndarray]:
    blob = path.read_bytes()
    (size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + size])
    data = blob[8 + size:]
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, stop = info["data_offsets"]
        raw = data[start:stop]
        if info["dtype"] == "BF16":
            u16 = np.frombuffer(raw, dtype="<u2")
            vals = []
            for bits in u16.tolist():  # decode each bfloat16 by its bits: sign, exponent, mantissa
                sign = -1.0 if bits & 0x8000 else 1.0
                exp = (bits >> 7) & 0xFF
                man = bits & 0x7F
                if exp == 0xFF:
                    vals.append(sign * math.inf if man == 0 else math.nan)
                elif exp == 0:
                    vals.append(sign * math.ldexp(man, -133))
                else:
                    vals.append(sign * math.ldexp(128 + man, exp - 134))
            out[key] = np.array(vals, dtype=np.float64).reshape(info["shape"])
        else:
            dt = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}[info["dtype"]]
            out[key] = np.frombuffer(raw, dtype=dt).reshape(info["shape"]).astype(np.float64)
    return out


def stored_values(case: dict, cases_dir: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(theta [B, V], target [B, V], kind) as float64 holding the stored values exactly."""
    src = case["source"]
    kind = src.get("kind")
    if src["type"] == "inline":
        keys = ("pi_theta", "pi_t") if kind == "probs" else ("logits_theta", "logits_t")
        theta = np.atleast_2d(np.array([[_num(v) for v in r] for r in _rows_of(src[keys[0]])]))
        target = np.atleast_2d(np.array([[_num(v) for v in r] for r in _rows_of(src[keys[1]])]))
        return theta, target, kind
    if src["type"] == "generator":
        from geomix_cli.cases import generate  # inputs only: the generator is not under test

        raw = generate(src["spec"])
        return (np.atleast_2d(np.asarray(raw.theta, dtype=np.float64)),
                np.atleast_2d(np.asarray(raw.target, dtype=np.float64)), raw.kind)
    path = cases_dir / src["path"]
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    elif path.suffix == ".safetensors":
        arrays = _read_safetensors_own(path)
    else:
        raise SystemExit(f"{path}: the reference reads .npz and .safetensors only")
    if kind is None:
        kind = "probs" if "pi_theta" in arrays else "logits"
    keys = ("pi_theta", "pi_t") if kind == "probs" else ("logits_theta", "logits_t")
    theta = np.atleast_2d(np.asarray(arrays[keys[0]]).astype(np.float64))
    target = np.atleast_2d(np.asarray(arrays[keys[1]]).astype(np.float64))
    if src.get("rows") is not None:
        idx = [int(i) for i in src["rows"]]
        theta, target = theta[idx], target[idx]
    return theta, target, kind


def _rows_of(value):
    return value if value and isinstance(value[0], list) else [value]


def _num(v):
    if isinstance(v, str):
        return float(v.replace("infinity", "inf"))
    return float(v)


# ----------------------------------------------------------------------------------------------
# the mathematics, in mpmath


def _log_probs(values: np.ndarray, kind: str) -> list:
    """Exact-input log-probabilities at the working precision; None where the probability is 0."""
    xs = [None if (kind == "logits" and v == -math.inf) or (kind == "probs" and v == 0.0)
          else mpf(float(v)) for v in values.tolist()]
    finite = [x for x in xs if x is not None]
    if kind == "probs":
        log_total = mpmath.log(mpmath.fsum(finite))
        return [None if x is None else mpmath.log(x) - log_total for x in xs]
    top = max(finite)
    lse = top + mpmath.log(mpmath.fsum(mpmath.exp(x - top) for x in finite))
    return [None if x is None else x - lse for x in xs]


def _entropy(logp: list):
    return -mpmath.fsum(mpmath.exp(x) * x for x in logp if x is not None)


class _Row:
    """One pair on its common support: l = log pi_t - log pi_theta, base = log pi_t."""

    def __init__(self, lt: list, lth: list):
        self.lt, self.lth = lt, lth
        self.S = [i for i in range(len(lt)) if lt[i] is not None and lth[i] is not None]
        self.l = [lt[i] - lth[i] for i in self.S]
        self.base = [lt[i] for i in self.S]

    def moments(self, alpha):
        """(log Z, D = E_q[l], Var_q(l)) at alpha, in one pass."""
        e = [mpmath.exp(b - alpha * li) for b, li in zip(self.base, self.l)]
        z = mpmath.fsum(e)
        m1 = mpmath.fsum(ei * li for ei, li in zip(e, self.l)) / z
        m2 = mpmath.fsum(ei * (li - m1) ** 2 for ei, li in zip(e, self.l)) / z
        return mpmath.log(z), m1, m2

    def log_q(self, alpha):
        s = [b - alpha * li for b, li in zip(self.base, self.l)]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in s))
        return [x - lse for x in s], -lse  # log q on S, and -log Z


def _root(row: _Row, d0, d1, dps: int):
    """Bracketed Newton on D: keep D(lo) > 0 > D(hi); bisect whenever Newton leaves the bracket."""
    lo, hi = mpf(0), mpf(1)
    alpha = d0 / (d0 - d1)
    tol = mpf(10) ** (-(dps - 5))
    for it in range(1, 400):
        _, d, var = row.moments(alpha)
        if d > 0:
            lo = alpha
        elif d < 0:
            hi = alpha
        else:
            return alpha, it
        step = d / var
        cand = alpha + step
        if abs(step) < tol or hi - lo < tol:
            return alpha, it
        alpha = cand if lo < cand < hi else (lo + hi) / 2
    raise RuntimeError("reference root finding did not converge")


def reference_row(theta: np.ndarray, target: np.ndarray, kind: str, dps: int = DEFAULT_DPS) -> dict:
    """Expected values and conditioning of one row (plain floats; None for 'not defined')."""
    with mp.workdps(dps):
        lth = _log_probs(theta, kind)
        lt = _log_probs(target, kind)
        row = _Row(lt, lth)
        h_theta, h_t = _entropy(lth), _entropy(lt)
        alpha_h = h_theta / (h_theta + h_t) if h_theta + h_t > 0 else None
        out = {f: None for f in FIELDS}
        out["alpha_entropy"] = alpha_h
        vocab = sum(1 for a, b in zip(lt, lth) if a is not None or b is not None)
        # scale_max = max_y |log p| over the row: the rounding of a float64 log-softmax of inputs
        info = {"V": vocab, "support": len(row.S), "h_sum": h_theta + h_t,
                "scale_max": max(abs(x) for x in lth + lt if x is not None)}
        if not row.S:
            out["status"] = "disjoint-support"
            return _finish(out, info)
        spread = max(row.l) - min(row.l)
        scale = max(abs(lt[i]) + abs(lth[i]) for i in row.S) + 1
        tiny = mpf(10) ** (-(dps - 8)) * scale
        _, d0, _ = row.moments(mpf(0))
        _, d1, _ = row.moments(mpf(1))
        info.update(d_at_0=d0, d_at_1=d1)
        if spread <= tiny:
            if max(abs(x) for x in row.l) <= tiny:
                out["status"] = "degenerate"
                alpha = mpf("0.5")  # any alpha gives the same q
            else:
                out["status"] = "no-root"
                return _finish(out, info)
        elif not (d0 > 0 > d1):
            out["status"] = "no-root"
            return _finish(out, info)
        else:
            out["status"] = "ok"
            alpha, iters = _root(row, d0, d1, dps)
            out["alpha"] = alpha
            info["iterations"] = iters
        log_q, neg_log_z = row.log_q(alpha)
        q = [mpmath.exp(x) for x in log_q]
        out["chernoff"] = neg_log_z
        out["kl_q_theta"] = mpmath.fsum(qi * (lq - lth[i]) for qi, lq, i in zip(q, log_q, row.S))
        out["kl_q_target"] = mpmath.fsum(qi * (lq - lt[i]) for qi, lq, i in zip(q, log_q, row.S))
        in_s = set(row.S)
        pos = {i: k for k, i in enumerate(row.S)}
        for name, lp in (("ess_theta", lth), ("ess_target", lt)):
            if any(lp[i] is not None and i not in in_s for i in range(len(lp))):
                out[name] = mpf(0)  # pi has mass where q has none: chi2 infinite
            else:
                out[name] = 1 / mpmath.fsum(mpmath.exp(2 * lp[i] - log_q[pos[i]]) for i in row.S)
        _, d_star, var = row.moments(alpha)
        info.update(
            residual=d_star, var=var,
            # E_q[|log pi_theta| + |log pi_t|]: the size of the numbers a float64 solver rounds
            scale_q=mpmath.fsum(qi * (abs(lth[i]) + abs(lt[i])) for qi, i in zip(q, row.S)),
            max_dev=max(abs(li - d_star) for li in row.l),
        )
        return _finish(out, info)


def _finish(out: dict, info: dict) -> dict:
    values = {k: (v if isinstance(v, (str, type(None))) else float(v)) for k, v in out.items()}
    meta = {k: (float(v) if not isinstance(v, int) else v) for k, v in info.items()}
    return {"values": values, "info": meta}


def _pow10_ceil(x: float) -> float:
    return float(f"1e{math.ceil(math.log10(x)) if x > 0 else -300}")


def derive_tolerances(rows: list[dict]) -> tuple[dict, str]:
    """Per-field tolerances for a case: the worst row's float64 error bound, times a safety factor
    of 16, rounded up to a power of ten.

    float64 evaluates D and log Z from numbers of size E_q[|log pi_theta| + |log pi_t|] (the
    rounded log-probabilities and the exponents), plus a summation over V terms:
        e = 16 u (scale_q + log2 V + 1),    u = 2^-52
    alpha:        |d alpha| <= max(e / Var_q*(l), 1e-13)   (error in D divided by |D'|; the floor
                  is the solvers' contract: Newton stops once its correction |D/D'| is below
                  1e-14 and returns the last evaluated alpha, so alpha carries up to that step)
    chernoff:     |d C| <= e                          (log Z is stationary at alpha*)
    kl_q_*:       |d KL| <= e + |d alpha| Var_q*(l)   (dKL/dalpha = -(1-alpha) Var or alpha Var,
                  with |d alpha| including the floor: rows with Var ~ 6e4 move KL by 6e-10 per
                  1e-14 of alpha)
    ess_*:        relative, e + |d alpha| max_S |l - D|  (d log q / d alpha = -(l - D))
    alpha_entropy: 16 u (1 / (H(pi_theta) + H(pi_t)) + log2 V + 1) (absolute rounding of log p
                   ~ u, relative to the entropies; large for nearly deterministic pairs)
    Degenerate rows carry no alpha; their C/KL/ESS get the e bound."""
    tol = {"alpha": ALPHA_CONTRACT, "chernoff": 1e-15, "kl_q_theta": 1e-15, "kl_q_target": 1e-15,
           "ess_theta": 1e-14, "ess_target": 1e-14, "alpha_entropy": 1e-15}
    for r in rows:
        info, vals = r["info"], r["values"]
        log_v = math.log2(max(info["V"], 2)) + 1
        if vals["alpha_entropy"] is not None:
            # float64 H = -sum p log p: log p carries the absolute rounding of the log-sum-exp
            # (about u, even when log p_top ~ -1e-14) plus u |log p| per token, so |dH| is about
            # u (1 + H log2 V); alpha_H moves by that over H(pi_theta) + H(pi_t)
            tol["alpha_entropy"] = max(tol["alpha_entropy"],
                                       16 * U64 * (1.0 / info["h_sum"] + 1.0 + log_v))
        if "var" not in info:
            continue
        e = 16 * U64 * (info["scale_q"] + log_v)
        d_alpha = max(e / info["var"], ALPHA_CONTRACT) if vals["status"] == "ok" else 0.0
        tol["alpha"] = max(tol["alpha"], d_alpha)
        tol["chernoff"] = max(tol["chernoff"], e)
        for f in ("kl_q_theta", "kl_q_target"):
            tol[f] = max(tol[f], e + d_alpha * info["var"])
        for f in ("ess_theta", "ess_target"):
            tol[f] = max(tol[f], e + d_alpha * info["max_dev"])
    out = {}
    for f, v in tol.items():
        t = _pow10_ceil(v)
        out[f] = {"abs": 0.0, "rel": t} if f in ("ess_theta", "ess_target") else {"abs": t, "rel": 0.0}
    basis = ("derive_tolerances in scripts/make_golden.py: 16 u (E_q*[|log pi_theta|+|log pi_t|] "
             "+ log2 V + 1) for D and log Z; alpha: that over Var_q*(l); KL: plus |d alpha| Var; "
             "ESS (relative): plus |d alpha| max|l - D|; alpha_entropy: 16 u (1/(H(pi_theta) + "
             "H(pi_t)) + log2 V + 1) (16: a safety factor); worst row of the case, rounded up to a "
             "power of ten")
    return out, basis


def reference_for_case(case: dict, cases_dir: Path, dps: int | None = None) -> dict:
    """Recompute `expected`, `tolerances`, `produced_by` and `source_sha256` of a case dict.

    Returns a new dict (the input is not modified); the other keys are kept as they were."""
    from geomix_cli.cases import case_raw_pair, source_fingerprint

    dps = int(dps or (case.get("produced_by") or {}).get("dps") or DEFAULT_DPS)
    theta, target, kind = stored_values(case, cases_dir)
    raw = case_raw_pair(case, cases_dir)
    # cross-check: geomix's reader must hand the solver exactly the numbers the reference used
    if not (np.array_equal(np.atleast_2d(np.asarray(raw.theta, dtype=np.float64)), theta,
                           equal_nan=True)
            and np.array_equal(np.atleast_2d(np.asarray(raw.target, dtype=np.float64)), target,
                               equal_nan=True)):
        raise RuntimeError(f"case {case.get('id')}: geomix's reader and the reference's reader "
                           "disagree on the stored values")
    started = time.time()
    rows = [reference_row(theta[b], target[b], kind, dps) for b in range(theta.shape[0])]
    tolerances, basis = derive_tolerances(rows)
    new = dict(case)
    new["source_sha256"] = source_fingerprint(raw)
    new["produced_by"] = {
        "script": SCRIPT, "reference_version": REFERENCE_VERSION,
        "library": f"mpmath {mpmath.__version__}", "dps": dps,
        "root": f"bracketed Newton on D(alpha), |step| < 1e-{dps - 5}",
        "note": "independent of geomix's solvers; never edit expected values by hand",
    }
    new["tolerances"] = tolerances
    new["tolerance_basis"] = basis
    new["expected"] = [{"row": b, **r["values"]} for b, r in enumerate(rows)]
    new["conditioning"] = [{"row": b, **{k: _short(v) for k, v in r["info"].items()}}
                           for b, r in enumerate(rows)]
    new["_seconds"] = round(time.time() - started, 1)
    return new


def _short(v):
    return v if isinstance(v, int) else float(f"{v:.6g}")


# ----------------------------------------------------------------------------------------------
# the case definitions (sources, descriptions); expected values come from the reference above


def _inline(kind, theta, target):
    keys = ("pi_theta", "pi_t") if kind == "probs" else ("logits_theta", "logits_t")
    return {"type": "inline", "kind": kind, keys[0]: theta, keys[1]: target}


def _gen(spec):
    return {"type": "generator", "spec": spec}


def _file(path, rows=None, kind=None):
    src = {"type": "file", "path": path}
    if kind:
        src["kind"] = kind
    if rows is not None:
        src["rows"] = rows
    return src


def _extreme_logits():
    rng = np.random.default_rng(5)
    a = np.round(rng.uniform(-1000.0, 0.0, size=32), 3)
    b = np.round(rng.uniform(-1000.0, 0.0, size=32), 3)
    a[0], b[0] = 0.0, -3.0
    b[1], a[1] = 0.0, -2.5  # the two tops differ; everything else is hundreds of nats below
    c = np.round(np.linspace(0.0, -1000.0, 32), 3)
    d = c[::-1].copy()
    return [a.tolist(), c.tolist()], [b.tolist(), d.tolist()]


def _dirichlet_rows():
    rng = np.random.default_rng(11)
    theta = np.round(rng.dirichlet(np.ones(6), size=3), 6)
    target = np.round(rng.dirichlet(np.ones(6), size=3), 6)
    theta[:, -1] = 1.0 - theta[:, :-1].sum(axis=1)  # sums to 1 to the printed digits
    target[:, -1] = 1.0 - target[:, :-1].sum(axis=1)
    return np.round(theta, 12).tolist(), np.round(target, 12).tolist()


def case_definitions() -> list[dict]:
    ext_theta, ext_t = _extreme_logits()
    dir_theta, dir_t = _dirichlet_rows()
    same = [0.1, 0.2, 0.3, 0.4]
    return [
        dict(id="derivation-test1-two-point",
             description="The derivation's Test 1: pi_theta = (0.7, 0.3), pi_t = (0.3, 0.7). Claimed alpha* = "
                         "0.5, q* = (0.5, 0.5), w = 0.6; symmetric, so ESS_theta = ESS_t (Test 3 "
                         "holds here).",
             source=_inline("probs", [0.7, 0.3], [0.3, 0.7])),
        dict(id="v2-asymmetric",
             description="V = 2, not symmetric: pi_theta = (0.9, 0.1), pi_t = (0.2, 0.8); and a "
                         "nearly-deterministic pair (0.999, 0.001) vs (0.5, 0.5).",
             source=_inline("probs", [[0.9, 0.1], [0.999, 0.001]], [[0.2, 0.8], [0.5, 0.5]])),
        dict(id="derivation-test2-reproduced",
             description="The derivation's Test 2 with parameters that reproduce BOTH reported numbers: "
                         "pi_theta = (1-eps, eps/(V-1), ...) with V = 10, eps = 4e-4, pi_t uniform: "
                         "alpha* ~= 0.340 and entropy formula ~= 0.0019 (the derivation: 0.34 and 0.002). "
                         "The derivation states neither V nor eps.",
             source=_gen("gen:delta-uniform:V=10,eps=0.0004")),
        dict(id="derivation-test2-not-reproduced-above-half",
             description="The derivation's Test 2 setting (delta vs uniform) where its reading fails: "
                         "V = 1000, eps = 1e-2 gives alpha* ~= 0.565 > 0.5 (leans on pi_theta).",
             source=_gen("gen:delta-uniform:V=1000,eps=0.01")),
        dict(id="derivation-test2-not-reproduced-big-vocab",
             description="Delta vs uniform at V = 10000, eps = 1e-3: alpha* ~= 0.554 > 0.5, "
                         "entropy formula ~= 0.0019 (matches the derivation's 0.002 while alpha* does not).",
             source=_gen("gen:delta-uniform:V=10000,eps=0.001")),
        dict(id="delta-uniform-half",
             description="Delta vs uniform with eps = 1/V (V = 1000, eps = 1e-3): alpha* = 1/2 "
                         "exactly (at alpha = 1/2, q* puts mass 1/2 on the top token, where l = "
                         "-log(V-1), and 1/2 on the rest, where l = +log(V-1), so D = 0).",
             source=_gen("gen:delta-uniform:V=1000,eps=0.001")),
        dict(id="delta-uniform-below-half",
             description="Delta vs uniform with alpha* < 0.5: V = 1000, eps = 1e-6 (alpha* ~= "
                         "0.367; the entropy formula gives ~ 3e-6).",
             source=_gen("gen:delta-uniform:V=1000,eps=1e-06")),
        dict(id="delta-uniform-below-half-v2",
             description="Delta vs uniform, V = 2, eps = 1e-10: alpha* ~= 0.151; pi_theta(1) = "
                         "1e-10 is 23 nats below its top.",
             source=_gen("gen:delta-uniform:V=2,eps=1e-10")),
        dict(id="dirichlet-v6",
             description="Three generic full-support pairs on 6 tokens (Dirichlet(1), printed to "
                         "6 decimals): well-conditioned rows.",
             source=_inline("probs", dir_theta, dir_t)),
        dict(id="identical-degenerate",
             description="pi_theta == pi_t (row 0), and identical logits shifted by +7 on one side "
                         "(row 1): l = 0 on S, every alpha gives the same q; status degenerate, C = 0.",
             source=_inline("logits", [[0.5, -1.0, 2.0, 0.0, -3.0], [0.5, -1.0, 2.0, 0.0, -3.0]],
                            [[0.5, -1.0, 2.0, 0.0, -3.0], [7.5, 6.0, 9.0, 7.0, 4.0]])),
        dict(id="disjoint-support",
             description="No common token: pi_theta = (0.5, 0.5, 0, 0), pi_t = (0, 0, 0.25, 0.75). "
                         "Z = 0, there is no q: status disjoint-support.",
             source=_inline("probs", [0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.25, 0.75])),
        dict(id="partial-overlap",
             description="Zeros on both sides. Row 0: pi_theta = (0.4, 0.2, 0.4, 0), pi_t = "
                         "(0, 0.5, 0.2, 0.3): D changes sign on S = {1, 2}, a root exists; ESS = 0 "
                         "on both sides (each pi has mass outside S). Row 1: the no-root example of "
                         "docs/derivation.md (0.6, 0.4, 0) vs (0.1, 0.2, 0.7): l < 0 on S. Row 2: l constant "
                         "and non-zero on S: (0.5, 0.5, 0) vs (0.25, 0.25, 0.5): no-root.",
             source=_inline("probs", [[0.4, 0.2, 0.4, 0.0], [0.6, 0.4, 0.0, 0.0],
                                      [0.5, 0.5, 0.0, 0.0]],
                            [[0.0, 0.5, 0.2, 0.3], [0.1, 0.2, 0.7, 0.0],
                             [0.25, 0.25, 0.5, 0.0]])),
        dict(id="one-hot",
             description="One-hot rows. Row 0: one-hot vs a full row (S has one token, l constant "
                         "non-zero: no-root). Row 1: the same one-hot on both sides (degenerate). "
                         "Row 2: one-hots on different tokens (disjoint-support; entropy formula "
                         "undefined, 0/0). Row 3: near-one-hot logits (40 nats of margin) vs a "
                         "flat row: an ordinary root.",
             source=_inline("logits",
                            [[0.0, "-inf", "-inf", "-inf"], [0.0, "-inf", "-inf", "-inf"],
                             [0.0, "-inf", "-inf", "-inf"], [40.0, 0.0, 0.0, 0.0]],
                            [[1.0, 0.5, -0.5, 0.0], [3.0, "-inf", "-inf", "-inf"],
                             ["-inf", 0.0, "-inf", "-inf"], [0.3, 0.0, 0.1, -0.2]])),
        dict(id="extreme-logit-range",
             description="Logits spread over 1e3 nats on 32 tokens: row 0 random in [-1000, 0] "
                         "with different tops; row 1 a linear ramp 0..-1000 against its reverse "
                         "(by symmetry alpha* = 0.5).",
             source=_inline("logits", ext_theta, ext_t)),
        dict(id="near-identical",
             description="Near-identical pairs (Chernoff information ~ 1e-8): a shared N(0, 9) "
                         "logit base on 1000 tokens plus independent N(0, (2e-4)^2) on each side. "
                         "Test 3 (ESS balance) holds here.",
             source=_gen("gen:llm-like:V=1000,scale=3,noise=0.0002,rows=2,seed=3")),
        dict(id="float16-logits",
             description="Logits stored as float16 (cases/data/fp16_logits.npz, 2 rows x 256); "
                         "expected values from the widened stored values.",
             source=_file("data/fp16_logits.npz")),
        dict(id="bfloat16-logits",
             description="Logits stored as bfloat16 in safetensors (cases/data/bf16_logits."
                         "safetensors, 2 rows x 256); expected values from the widened stored "
                         "values (decoded bit by bit by the reference).",
             source=_file("data/bf16_logits.safetensors")),
        dict(id="smollm2-real-rows",
             description="Real SmolLM2-135M-Instruct next-token pairs (V = 49152, float16 logits) "
                         "from cases/data/smollm2_sample.npz, positions 0, 1, 8 (source row 47: "
                         "ESS_theta/ESS_t differ by a factor ~3.3, Test 3 fails) and 9 (a "
                         "temperature-0.6 row).",
             source=_file("data/smollm2_sample.npz", rows=[0, 1, 8, 9])),
    ]


def write_data(cases_dir: Path) -> None:
    """Create the small float16 / bfloat16 input files (deterministic)."""
    data = cases_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    base = rng.normal(0.0, 3.0, size=(2, 256))
    theta = (base + rng.normal(0.0, 1.0, size=base.shape)).astype(np.float16)
    target = (base + rng.normal(0.0, 1.0, size=base.shape)).astype(np.float16)
    np.savez_compressed(data / "fp16_logits.npz", logits_theta=theta, logits_t=target)
    # bfloat16: round-to-nearest-even of float32 to its upper 16 bits, written as safetensors
    rng = np.random.default_rng(2025)
    base = rng.normal(0.0, 4.0, size=(2, 256))
    arrays = {"logits_theta": base + rng.normal(0.0, 1.0, size=base.shape),
              "logits_t": base / 0.7 + rng.normal(0.0, 0.5, size=base.shape)}
    header, chunks, offset = {}, [], 0
    for key, value in arrays.items():
        bits = value.astype(np.float32).view(np.uint32).astype(np.uint64)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
        raw = rounded.tobytes()
        header[key] = {"dtype": "BF16", "shape": list(value.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    (data / "bf16_logits.safetensors").write_bytes(struct.pack("<Q", len(head)) + head
                                                   + b"".join(chunks))


def build_case(definition: dict, cases_dir: Path, dps: int = DEFAULT_DPS) -> dict:
    case = {"schema_version": 1, "id": definition["id"],
            "description": definition["description"], "source": definition["source"]}
    return reference_for_case(case, cases_dir, dps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=str(REPO / "cases"))
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--dps", type=int, default=DEFAULT_DPS)
    parser.add_argument("--write-data", action="store_true")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from geomix_cli.cases import case_to_text

    cases_dir = Path(args.cases)
    if args.write_data:
        write_data(cases_dir)
    status = 0
    for definition in case_definitions():
        if args.only and definition["id"] not in args.only:
            continue
        case = build_case(definition, cases_dir, args.dps)
        seconds = case.pop("_seconds")
        path = cases_dir / f"{case['id']}.json"
        text = case_to_text(case)
        old = path.read_text() if path.exists() else None
        changed = old != text
        print(f"{case['id']}: {len(case['expected'])} row(s), {seconds} s, "
              f"{'changed' if changed else 'unchanged'}", file=sys.stderr)
        if changed and args.check:
            status = 1
        elif changed:
            path.write_text(text)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
