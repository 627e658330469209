"""The verify suites: every claim of the derivation, checked by computation, with a verdict derived
from the evidence computed here (never copied from notes) by one rule (`rule`).

`run_suite(name, thorough=False, seed=0, progress=None) -> SuiteResult`. Deterministic given the
seed: no timings in the results, and figures that depend on the machine's last floating-point bits
are reported as power-of-ten bounds. A claim that is a mathematical identity and fails beyond
rounding marks `identity_failed`: a bug in geomix, and `geomix verify` exits 1.

Modules: `rule` (the verdict rule and result types), `families` (the case families),
`foundations` (sections 2-3), `experiments` (Tests 1-3, four cases), `methods` (entropy formula,
solver starts, complexity, reference code), `efficiency` (learning efficiency), `suite` (the
registry and the runner). No printing and no files here (reports.py renders, io.py writes).
"""

from geomix_cli.checks.efficiency import (claim_alpha_star_best, claim_off_policy,
                                          claim_sample_efficiency)
from geomix_cli.checks.experiments import (claim_four_cases, claim_test1, claim_test2,
                                           claim_test3)
from geomix_cli.checks.families import (Family, build_families, compare_families,
                                        heldout_families, real_pairs_path)
from geomix_cli.checks.foundations import (claim_boundary, claim_chernoff, claim_delta_identity,
                                           claim_pareto, claim_root_existence, claim_unique)
from geomix_cli.checks.methods import (claim_complexity, claim_entropy, claim_entropy_start,
                                       claim_reference)
from geomix_cli.checks.rule import (CLAUSES, SCHEMA_VERSION, VERDICTS, ClaimResult, Repaired,
                                    SuiteResult)
from geomix_cli.checks.suite import (CLAIM_IDS, OPTIONAL_CLAIMS, SUITES, OptionalClaim,
                                     backend_agreement, claim_ids, register_optional,
                                     run_suite, run_verify_alpha_theory)

__all__ = [
    "CLAIM_IDS", "CLAUSES", "OPTIONAL_CLAIMS", "SCHEMA_VERSION", "SUITES", "VERDICTS",
    "ClaimResult", "Family", "OptionalClaim", "Repaired", "SuiteResult", "backend_agreement",
    "build_families", "claim_alpha_star_best", "claim_boundary", "claim_chernoff",
    "claim_complexity", "claim_delta_identity", "claim_entropy", "claim_entropy_start",
    "claim_four_cases", "claim_ids", "claim_off_policy", "claim_pareto", "claim_reference",
    "claim_root_existence", "claim_sample_efficiency", "claim_test1", "claim_test2",
    "claim_test3", "claim_unique", "compare_families", "heldout_families", "real_pairs_path",
    "register_optional", "run_suite", "run_verify_alpha_theory",
]
