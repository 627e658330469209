"""The verdict rule and the result types of the verify suites.

One rule decides every verdict; each claim names the clause that applied:

- **H — holds**: verified on every case tried, and the check could have failed: a negative
  control (a planted wrong answer run through the same check) is shown failing it.
- **R1 — refuted**: the derivation states it without conditions ("exact", "unique", "all",
  "exists", a number for a whole setting) — or within the conditions it states — and the evidence
  contradicts it, and the check could have passed: a positive control (planted data on which the
  claim is true, run through the same check) is shown passing it. A repaired claim is given and
  checked on data it was not read from.
- **R2 — refuted**: a "most cases" statement met by at most half of the pairs (overall, or in at
  most half of the case families). A repaired claim is given and checked.
- **D — depends**: only where the derivation itself states the conditions; the evidence shows the
  claim holding inside them and failing outside them (with numbers).
- **U — untested**: no evidence can be computed here (what would test it is said), the
  evidence is inconclusive at the stated confidence (neither verified nor contradicted), or a
  planted control shows that the check could not have given the other verdict.

No printing and no files here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SCHEMA_VERSION = 2
VERDICTS = ("holds", "refuted", "depends", "untested")
CLAUSES = {
    "H": ("holds", "verified on every case tried, and a negative control shows the check can "
                   "fail"),
    "R1": ("refuted", "stated without conditions (or inside conditions the derivation states) "
                      "and contradicted by the evidence, and a positive control shows the check "
                      "can pass; a repaired claim is given and checked"),
    "R2": ("refuted", "a 'most cases' statement met by at most half of the pairs (overall or in "
                      "at most half of the families); a repaired claim is given and checked"),
    "D": ("depends", "the derivation states the conditions, and the evidence shows the claim "
                     "holding inside them and failing outside them"),
    "U": ("untested", "no evidence can be computed here, the evidence is inconclusive at the "
                      "stated confidence, or a planted control shows the check could not have "
                      "given the other verdict"),
}
MOST = 0.5  # "most": more than half
EPS64 = float(np.finfo(np.float64).eps)

ProgressFn = Callable[[str, int, int], None]


def verdict_of(clause: str) -> str:
    return CLAUSES[clause][0]


def universal_verdict(supported: bool, control_failed: bool) -> tuple[str, str]:
    """(verdict, clause) for a claim stated without conditions: R1 when the evidence contradicts
    it; H when it is supported AND the negative control (a planted wrong answer) failed the same
    check; U when it is supported but the control passed too, since a check that cannot fail is
    not evidence either way."""
    if not supported:
        return "refuted", "R1"
    return ("holds", "H") if control_failed else ("untested", "U")


def refuted_verdict(clause: str, control_passed: bool) -> tuple[str, str]:
    """(verdict, clause) for a claim the evidence contradicts: refuted under `clause` (R1, R2)
    when the positive control (planted data on which the claim is true) passed the same check, so
    that the check could have returned the other verdict; U when even the planted data fail it (a
    check that cannot pass is no evidence either)."""
    return ("refuted", clause) if control_passed else ("untested", "U")


@dataclass
class Repaired:
    """A repaired claim for a refuted one, and the check it passed (or failed) on data it was not
    read from."""

    statement: str
    check: str
    confirmed: bool

    def to_json(self) -> dict:
        return {"statement": self.statement, "check": self.check, "confirmed": self.confirmed}


@dataclass
class ClaimResult:
    """One claim: its id, the derivation's statement (English), the verdict with the clause of the
    rule that gave it, the evidence, and how the check could have failed.

    section: where the derivation states it; criteria: the numeric thresholds this claim is judged
    by; control: the controls (planted data run through the same check: a wrong answer it must
    reject, and for a refuted claim data on which the claim is true, which it must pass);
    repaired: for a refuted claim, the repaired claim and its check; data: the numbers
    (JSON-ready); tables: name -> list of row dicts (CSV); figures: name -> what a figure needs
    (not in results.json); identity_failed: a mathematical identity failed (a bug in geomix);
    own: geomix's own claim, not the derivation's (counted apart)."""

    id: str
    claim: str
    verdict: str
    evidence: str
    clause: str = ""
    section: str = ""
    criteria: str = ""
    control: str = ""
    repaired: Repaired | None = None
    data: dict = field(default_factory=dict)
    would_change: str = ""
    tables: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    identity_failed: bool = False
    headline: str = ""
    own: bool = False

    def __post_init__(self):
        if self.clause and verdict_of(self.clause) != self.verdict:
            raise ValueError(f"{self.id}: clause {self.clause} gives "
                             f"'{verdict_of(self.clause)}', not '{self.verdict}'")

    def to_json(self) -> dict:
        return rounded({"id": self.id, "claim": self.claim, "section": self.section,
                "verdict": self.verdict, "clause": self.clause, "own": self.own,
                "headline": self.headline, "criteria": self.criteria,
                "evidence": self.evidence, "control": self.control,
                "repaired": self.repaired.to_json() if self.repaired else None,
                "data": self.data, "would_change": self.would_change,
                "identity_failed": self.identity_failed})


def rounded(obj, digits: int = 6):
    """Every float in a JSON-ready structure at `digits` significant digits: results.json carries
    no digits that would differ between machines (computed values agree to ~1e-14)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float) or isinstance(obj, np.floating):
        x = float(obj)
        return float(f"{x:.{digits}g}") if math.isfinite(x) else x
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return [rounded(v, digits) for v in obj.tolist()]
    return obj


@dataclass
class SuiteResult:
    suite: str
    description: str
    seed: int
    thorough: bool
    claims: list[ClaimResult]
    families: list[dict] = field(default_factory=list)
    backend: dict | None = None  # --device: the backend's agreement with the numpy solve
    extras: tuple = ()  # --with: the optional extras this run used (their claims ran)

    @property
    def identity_failures(self) -> list[str]:
        failed = [c.id for c in self.claims if c.identity_failed]
        if self.backend is not None and not self.backend["agrees"]:
            failed.append("backend-agreement")
        return failed

    def verdict_counts(self, *, own: bool | None = None) -> dict:
        claims = [c for c in self.claims if own is None or c.own == own]
        return {v: sum(c.verdict == v for c in claims) for v in VERDICTS}

    def clause_counts(self, *, own: bool | None = None) -> dict:
        claims = [c for c in self.claims if own is None or c.own == own]
        return {k: sum(c.clause == k for c in claims) for k in CLAUSES}

    def summary_line(self) -> str:
        """'Derivation's claims (n): a holds (H), b refuted (R1 x, R2 y), ...; geomix's own: ...'"""
        def part(own: bool) -> str:
            clauses = self.clause_counts(own=own)
            bits = []
            for verdict in VERDICTS:
                named = [f"{k} {n}" for k, n in clauses.items() if n and verdict_of(k) == verdict]
                total = sum(n for k, n in clauses.items() if verdict_of(k) == verdict)
                if total:
                    bits.append(f"{total} {verdict} ({', '.join(named)})")
            return ", ".join(bits) or "none"

        theirs = [c for c in self.claims if not c.own]
        ours = [c for c in self.claims if c.own]
        line = f"the derivation's {len(theirs)} claims: {part(False)}"
        if ours:
            line += (f"; geomix's own {'claim' if len(ours) == 1 else 'claims'} ("
                     f"{', '.join(c.id for c in ours)}): {part(True)}")
        return line

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "suite": self.suite,
                "description": self.description, "seed": self.seed, "thorough": self.thorough,
                "summary": self.summary_line(),
                "verdict_counts": self.verdict_counts(own=False),
                "own_verdict_counts": self.verdict_counts(own=True),
                "clause_counts": self.clause_counts(), "clauses": {
                    k: {"verdict": v, "meaning": m} for k, (v, m) in CLAUSES.items()},
                "case_families": self.families,
                "claims": [c.to_json() for c in self.claims],
                **({"backend": self.backend} if self.backend is not None else {}),
                **({"extras": list(self.extras)} if self.extras else {})}

    def claim(self, claim_id: str) -> ClaimResult:
        return next(c for c in self.claims if c.id == claim_id)


# ----------------------------------------------------------------------------------------------
# numbers in the evidence: stable on every machine


def q6(x) -> float:
    """Round for the evidence text and JSON (6 significant digits)."""
    if x is None or not np.isfinite(x):
        return float("nan")
    return float(f"{float(x):.6g}")


def q4(x) -> float:
    """4 significant digits: for quantities computed through many floating-point steps."""
    if x is None or not np.isfinite(x):
        return float("nan")
    return float(f"{float(x):.4g}")


def fmt(x, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


def decade_bound(x: float, floor: float = 0.0) -> float:
    """The smallest power of ten >= 3 x, and at least `floor`: how rounding-level figures are
    printed. Their last digits depend on the CPU's vectorised exp/log and on BLAS, so a raw value
    would differ between machines; the bound does not (the factor 3 is a margin, and the floor
    collapses everything at rounding level into one bucket)."""
    x = float(abs(x))
    if not math.isfinite(x):
        return x
    if x == 0.0:
        return float(floor)
    return float(max(floor, 10.0 ** math.ceil(math.log10(3.0 * x) - 1e-12)))


def below(x: float, floor: float = 0.0) -> str:
    """'< 1e-08' style text for decade_bound(x, floor)."""
    b = decade_bound(x, floor)
    return "0" if b == 0.0 else f"< {b:.0e}"


def stats(values: np.ndarray) -> dict:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "median": float("nan"), "p90": float("nan"), "max": float("nan")}
    return {"n": int(v.size), "median": q6(np.median(v)), "p90": q6(np.quantile(v, 0.9)),
            "max": q6(v.max())}


def most_rule(fractions: dict[str, float], counts: dict[str, int]) -> tuple[bool, float, int]:
    """The 'most cases' rule: (met, overall fraction, families with more than half) for
    per-family fractions and pair counts. Met when more than half of all pairs meet it AND more
    than half of the families have more than half of their pairs meeting it."""
    total = sum(counts.values())
    overall = sum(fractions[k] * counts[k] for k in fractions) / max(total, 1)
    fams = sum(f > MOST for f in fractions.values())
    return (overall > MOST and fams > len(fractions) * MOST), overall, fams


def snap(x: float, tol: float = 1e-12) -> float:
    """0.0 for |x| < tol (rounding noise, whose digits differ between machines), else 4 digits."""
    return 0.0 if abs(float(x)) < tol else q4(x)


def choose_condition(candidates, suite_ok, heldout_ok):
    """The repaired condition: the first of `candidates` (ordered from the broadest to the
    narrowest) under which `suite_ok(c)` holds on the suite's families; then checked with
    `heldout_ok(c)` on pairs it was not read from. Returns (condition or None, confirmed)."""
    for cand in candidates:
        if suite_ok(cand):
            return cand, bool(heldout_ok(cand))
    return None, False
