"""Per-call cost of one solve with diagnostics, for whichever geomix is importable (this tree or a
baseline on PYTHONPATH), against dit's chernoff_information_pmf on the same probability rows.

    python scripts/bench_small_calls.py [--json] [--rounds 5]

"geomix full": the call a user makes for alpha*, C, both KLs, both ESS and alpha_H from
probabilities -- `geomix_cli.api.solve(p, q, kind="probs")` where the API exists, else the core
pipeline it replaced (validate_pair + solve_alpha + diagnose). "geomix alpha*+C":
`api.solve(..., diagnostics=False)` (the baseline has no cheaper call: its full one). Wall clock,
the three functions interleaved round after round, best round. Self-contained on purpose: it runs
unchanged against any version of geomix (scripts/bench_side_by_side.sh).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np

SIZES = ((1, 10), (1, 100), (1, 1_000), (1, 49_152), (512, 100), (64, 151_936))


def rows(n_rows: int, vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_rows, vocab)) * 3.0
    out = []
    for _ in range(2):
        x = base + rng.standard_normal((n_rows, vocab))
        w = np.exp(x - x.max(axis=-1, keepdims=True))
        out.append(w / w.sum(axis=-1, keepdims=True))
    return out


def geomix_calls(p, q):
    try:
        from geomix_cli import api as gx
    except ImportError:
        gx = None
    if gx is not None:
        return ({"full": lambda: gx.solve(p, q, kind="probs"),
                 "alpha_c": lambda: gx.solve(p, q, kind="probs", diagnostics=False)},
                lambda: np.atleast_1d(np.asarray(gx.solve(p, q, kind="probs").chernoff)),
                "geomix_cli.api.solve")
    from geomix_cli.core import diagnose, solve_alpha, validate_pair

    def full():
        log_p, log_q, errors = validate_pair(p, q, "probs")
        return diagnose(log_p, log_q, solve_alpha(log_p, log_q, row_errors=errors))

    return ({"full": full, "alpha_c": full}, lambda: np.atleast_1d(full().chernoff),
            "validate_pair + solve_alpha + diagnose")


def best_interleaved(functions: dict, rounds: int) -> dict:
    """geomix_cli/timing.py of *this* tree, loaded by path (PYTHONPATH may point at a baseline)."""
    spec = importlib.util.spec_from_file_location(
        "geomix_timing", Path(__file__).resolve().parents[1] / "geomix_cli" / "timing.py")
    timing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timing)
    return timing.best_interleaved(functions, rounds=rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    try:
        from dit.divergences.variational_distance import chernoff_information_pmf as dit
    except ImportError:
        dit = None
    results = []
    for n_rows, vocab in SIZES:
        p, q = rows(n_rows, vocab, seed=vocab)
        gp, gq = (p[0], q[0]) if n_rows == 1 else (p, q)
        calls, chernoff, label = geomix_calls(gp, gq)
        functions = {"geomix_full": calls["full"], "geomix_alpha_c": calls["alpha_c"]}
        if dit is not None:
            functions["dit"] = lambda: [dit(p[i], q[i]) for i in range(n_rows)]
        best = best_interleaved(functions, rounds=args.rounds if n_rows * vocab < 1e6 else 3)
        rec = {"rows": n_rows, "vocab": vocab, "geomix_call": label, **best}
        if dit is not None:
            c_dit = np.array(functions["dit"]()) * np.log(2.0)
            rec["max_abs_chernoff_difference_nats"] = float(np.max(np.abs(c_dit - chernoff())))
        results.append(rec)
        if not args.json:
            print(f"{n_rows} x {vocab}: " + ", ".join(f"{k} {v * 1e6:.0f} us" for k, v in best.items()))
    if args.json:
        print(json.dumps({"sizes": results}, indent=1))


if __name__ == "__main__":
    main()
