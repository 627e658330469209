"""The verify suite: the registry of claims (in report order), optional claims that need an
extra, and the runner."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np

from geomix_cli.checks import efficiency, experiments, foundations, methods
from geomix_cli.checks.families import (build_families, family_table, heldout_families)
from geomix_cli.checks.rule import ClaimResult, ProgressFn, SuiteResult, q6
from geomix_cli.core.solvers import OK, solve_alpha

SUITE_DESCRIPTION = ("Every claim of the optimal-sampling derivation v1.0 (Pareto front, KL "
                     "symmetry, existence and uniqueness, Tests 1-3, entropy formula, four cases, "
                     "complexity, reference code, learning efficiency), checked by computation")


@dataclass(frozen=True)
class OptionalClaim:
    """A claim whose check needs an optional extra. It runs only when the run asks for that extra
    (`extras`) and the extra's modules import; otherwise it is reported `untested` (clause U) with
    what would test it, and nothing is computed (nothing is even imported: the default report
    cannot depend on what is installed). `maker(families, rng, thorough, seed)` returns the
    ClaimResult; None means no check is registered yet.

    install: the install command(s) the check needs (default: the extra itself);
    why_optional: why the claim is not part of the default report (said in its untested text);
    cost: how long the check takes (said in the untested text and the progress line)."""

    id: str
    statement: str
    section: str
    extra: str
    modules: tuple[str, ...]
    maker: Callable[..., ClaimResult] | None = None
    install: str = ""
    why_optional: str = ""
    cost: str = ""
    own: bool = False  # geomix's own claim, counted apart from the derivation's

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    @property
    def install_command(self) -> str:
        return self.install or f"pip install -e '.[{self.extra}]'"

    @property
    def command(self) -> str:
        return f"geomix verify verify_alpha_theory --with {self.extra}"

    def untested(self, why: str, headline: str = "") -> ClaimResult:
        return ClaimResult(
            self.id, self.statement, "untested", why, clause="U", section=self.section,
            own=self.own,
            criteria="—", headline=headline or why,
            data={"extra": self.extra, "modules": list(self.modules), "command": self.command,
                  "install": self.install_command},
            would_change=f"Running it: {self.install_command}, then {self.command}"
                         + (f" ({self.cost})" if self.cost else "") + ".")


OPTIONAL_CLAIMS: dict[str, OptionalClaim] = {}


def register_optional(claim: OptionalClaim) -> None:
    """Register (or replace) an optional claim; it is reported after the built-in claims."""
    OPTIONAL_CLAIMS[claim.id] = claim


def optional_extras() -> tuple[str, ...]:
    """The extras that `--with` accepts: those of the registered optional claims."""
    return tuple(sorted({c.extra for c in OPTIONAL_CLAIMS.values()}))


def _register_sequence_claim() -> None:
    from geomix_cli.checks import sequences

    register_optional(OptionalClaim(
        sequences.CLAIM_ID, sequences.STATEMENT, sequences.SECTION, "models",
        ("torch", "transformers", "gguf"), sequences.claim_sequence_ess_balance,
        install=sequences.INSTALL, why_optional=sequences.WHY_OPTIONAL, cost=sequences.COST,
        own=sequences.OWN))


_register_sequence_claim()


def _optional_result(claim: OptionalClaim, extras, fams, rng, thorough,
                     seed: int = 0) -> ClaimResult:
    if claim.extra not in extras:
        why = (f"Not run by default: {claim.why_optional} " if claim.why_optional else "")
        return claim.untested(
            f"{why}Tested by `{claim.command}`" + (f" ({claim.cost})" if claim.cost else "")
            + f"; it needs {claim.install_command}.",
            headline=f"not in the default report: tested by `{claim.command}`")
    need = f"needs {claim.install_command}"
    if not claim.available():
        return claim.untested(f"asked for with --with {claim.extra}, but its modules "
                              f"({', '.join(claim.modules)}) are not importable here: {need}")
    if claim.maker is None:
        return claim.untested("no check for this claim is registered in this version of geomix")
    from geomix_cli.errors import GeomixError, UnavailableError

    try:
        return claim.maker(fams, rng, thorough, seed)
    except UnavailableError as exc:  # e.g. the shipped model is missing: say what to install
        return claim.untested(str(exc))
    except GeomixError as exc:  # e.g. a model that does not load: the rest of the report stands
        return claim.untested(f"its evidence could not be computed: {exc}")


CLAIM_IDS = ("theorem1-pareto", "delta-kl-identity", "boundary-values", "root-existence",
             "alpha-unique", "chernoff-identity", "test1-symmetric", "test2-extreme",
             "test3-ess-balance", "entropy-formula", "entropy-start-speedup", "four-cases",
             "complexity", "reference-code-exact", "sample-efficiency", "off-policy-unstable",
             "alpha-star-best")


def claim_ids() -> tuple[str, ...]:
    """Every claim id of the suite, in report order (optional claims last)."""
    return CLAIM_IDS + tuple(OPTIONAL_CLAIMS)


def _delta_curve_figure(fams):
    """D(alpha) on a grid with the iterates of Newton and of the reference bisection, for one real
    row (or the first llm-like row), for the report figure (a core.front.DeltaCurve)."""
    from geomix_cli.core.front import delta_curve

    fam = next((f for f in fams if f.name == "real-smollm2"), None) or next(
        f for f in fams if f.name == "llm-like")
    return {"family": fam.name, "row": 0,
            "curve": delta_curve(fam.log_pi_theta[0], fam.log_pi_t[0], n_grid=101)}


def backend_agreement(fams, device_solver: Callable, label: str) -> dict:
    """Solve every family's rows with another backend (e.g. torch on cuda) and compare with the
    numpy Newton solve: statuses must be equal and, on 'ok' rows, |alpha_backend - alpha| within
    the row's conditioning, tol = 1e-12 + 64 u (1 + max|l|) / Var_q*(l) for float64 compute
    (float32: u = 2^-23, plus 1e-6), since an error dD in D moves alpha by dD / Var."""
    from geomix_cli.core.family import log_ratio_on_support, tilted_moments

    float32 = "float32" in label
    unit = 2.0**-23 if float32 else 2.0**-52
    floor = 1e-6 if float32 else 1e-12
    rows, agrees = [], True
    for fam in fams:
        ref = solve_alpha(fam.log_pi_theta, fam.log_pi_t, "newton")
        got = device_solver(fam.log_pi_theta, fam.log_pi_t)
        same_status = ref.status == got.status
        ok = (ref.status == OK) & same_status
        err = np.abs(got.alpha[ok] - ref.alpha[ok])
        if ok.any():
            l, log_base, support = log_ratio_on_support(fam.log_pi_theta[ok], fam.log_pi_t[ok])
            var = tilted_moments(l, log_base, ref.alpha[ok]).var
            scale = np.max(np.where(support, np.abs(l), 0.0), axis=-1)
            within = err <= floor + 64 * unit * (1 + scale) / var
        else:
            within = np.zeros(0)
        fam_ok = bool(same_status.all() and within.all())
        agrees &= fam_ok
        rows.append({"family": fam.name, "rows": fam.n_rows,
                     "status_mismatches": int((~same_status).sum()),
                     "max_abs_alpha_difference": q6(err.max()) if err.size else float("nan"),
                     "rows_beyond_tolerance": int((~within).sum()) if err.size else 0,
                     "agrees": fam_ok})
    return {"backend": label, "agrees": bool(agrees), "per_family": rows}


def run_verify_alpha_theory(*, thorough: bool = False, seed: int = 0,
                            progress: ProgressFn | None = None,
                            threshold: float | None = None,
                            device_solver: Callable | None = None,
                            device_label: str | None = None,
                            extras: tuple[str, ...] = ()) -> SuiteResult:
    """Every claim (CLAIM_IDS, then the optional claims). With `device_solver` ((log_pi_theta,
    log_pi_t) -> AlphaSolution, e.g. the torch backend), also checks that backend against the
    numpy solve on every family. `extras` names the optional extras this run may use."""
    from geomix_cli.simulate.evidence import EvidenceConfig, efficiency_study, study_cells

    ids = claim_ids()
    total = len(ids) + 2

    def tick(i, label):
        if progress is not None:
            progress(label, i, total)

    tick(0, "building case families")
    fams = build_families(seed, thorough)
    held = heldout_families(seed, thorough)
    rngs = {cid: np.random.default_rng(s) for cid, s in
            zip(ids, np.random.SeedSequence(seed).spawn(len(ids)))}
    shared: dict = {}

    def method_rows():
        if "rows" not in shared:
            shared["rows"] = methods._method_rows(fams, thorough)
        return shared["rows"]

    def learning(claim_id):
        if "learning" not in shared:
            tick(ids.index(claim_id) + 1, "learning simulation (sample efficiency, off-policy, "
                                          "alpha sweep)")
            config = EvidenceConfig.thorough() if thorough else EvidenceConfig.small()
            study = efficiency_study(config)
            results = efficiency.efficiency_claims(study, study_cells(study))
            shared["learning"] = {c.id: c for c in results}
        return shared["learning"][claim_id]

    makers = {
        "theorem1-pareto": lambda r: foundations.claim_pareto(fams, r, thorough),
        "delta-kl-identity": lambda r: foundations.claim_delta_identity(fams, r, thorough),
        "boundary-values": lambda r: foundations.claim_boundary(fams, r, thorough, seed),
        "root-existence": lambda r: foundations.claim_root_existence(fams, r, thorough, seed),
        "alpha-unique": lambda r: foundations.claim_unique(fams, r, thorough),
        "chernoff-identity": lambda r: foundations.claim_chernoff(fams, r, thorough),
        "test1-symmetric": lambda r: experiments.claim_test1(fams, r, thorough),
        "test2-extreme": lambda r: experiments.claim_test2(fams, r, thorough),
        "test3-ess-balance": lambda r: experiments.claim_test3(fams, r, thorough, held),
        "entropy-formula": lambda r: methods.claim_entropy(fams, r, thorough, held),
        "entropy-start-speedup": lambda r: methods.claim_entropy_start(
            fams, r, thorough, method_rows(), held),
        "four-cases": lambda r: experiments.claim_four_cases(fams, r, thorough, threshold),
        "complexity": lambda r: methods.claim_complexity(fams, r, thorough, method_rows()),
        "reference-code-exact": lambda r: methods.claim_reference(fams, r, thorough),
        "sample-efficiency": lambda r: learning("sample-efficiency"),
        "off-policy-unstable": lambda r: learning("off-policy-unstable"),
        "alpha-star-best": lambda r: learning("alpha-star-best"),
    }
    claims = []
    for i, cid in enumerate(ids):
        optional = OPTIONAL_CLAIMS.get(cid) if cid not in makers else None
        tick(i + 1, f"{cid} ({optional.cost})" if optional is not None and optional.cost
             and optional.extra in extras else cid)
        if cid in makers:
            claims.append(makers[cid](rngs[cid]))
        else:
            claims.append(_optional_result(OPTIONAL_CLAIMS[cid], extras, fams, rngs[cid],
                                           thorough, seed))
    # the D(alpha) figure with the solvers' iterates belongs to the uniqueness claim
    for c in claims:
        if c.id == "alpha-unique":
            c.figures["delta_curve"] = _delta_curve_figure(fams)
    backend = None
    if device_solver is not None:
        tick(total - 1, f"backend agreement ({device_label})")
        backend = backend_agreement(fams, device_solver, device_label or "device")
    tick(total, "done")
    return SuiteResult("verify_alpha_theory", SUITE_DESCRIPTION, seed, thorough, claims,
                       families=family_table(fams), backend=backend,
                       extras=tuple(sorted(set(extras))))


SUITES: dict[str, tuple[str, Callable[..., SuiteResult]]] = {
    "verify_alpha_theory": (SUITE_DESCRIPTION, run_verify_alpha_theory),
}


def run_suite(name: str, *, thorough: bool = False, seed: int = 0,
              progress: ProgressFn | None = None, **options) -> SuiteResult:
    """Run a named suite (see SUITES). Raises KeyError for an unknown name."""
    if name not in SUITES:
        raise KeyError(name)
    return SUITES[name][1](thorough=thorough, seed=seed, progress=progress, **options)
