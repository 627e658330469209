"""The case families every statistical claim is measured on, and small shared helpers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geomix_cli.cases import delta_uniform_log_probs
from geomix_cli.core.solvers import OK, solve_alpha


@dataclass
class Family:
    name: str
    description: str
    log_pi_theta: np.ndarray
    log_pi_t: np.ndarray
    same_support: bool = True

    @property
    def n_rows(self) -> int:
        return int(self.log_pi_theta.shape[0])

    @property
    def vocab(self) -> int:
        return int(self.log_pi_theta.shape[1])

    def head(self, n: int) -> "Family":
        return Family(self.name, self.description, self.log_pi_theta[:n], self.log_pi_t[:n],
                      self.same_support)


def real_pairs_path() -> Path | None:
    """The 12 real SmolLM2 rows (see `cases.real_sample_path`)."""
    from geomix_cli.cases import real_sample_path

    return real_sample_path()


def from_spec(name: str, description: str, spec: str) -> Family:
    from geomix_cli.sources import load_source

    src = load_source(spec)
    ok = src.valid_rows
    return Family(name, f"{description} ({spec})", src.log_pi_theta[ok], src.log_pi_t[ok])


def synthetic_families(seed: int, thorough: bool, *, scale: float = 1.0) -> list[Family]:
    """The generated families (deterministic given seed); `scale` multiplies the row counts."""
    k = (5 if thorough else 1) * scale
    v_llm = 4000 if thorough else 1000

    def rows(n):
        return max(1, int(round(n * k)))

    return [
        from_spec("two-point", "random two-token pairs",
                  f"gen:dirichlet:V=2,conc=1,rows={rows(200)},seed={seed}"),
        from_spec("dirichlet-20", "Dirichlet(1) pairs on 20 tokens",
                  f"gen:dirichlet:V=20,conc=1,rows={rows(200)},seed={seed + 1}"),
        from_spec("dirichlet-peaked", "peaked Dirichlet(0.1) pairs on 50 tokens",
                  f"gen:dirichlet:V=50,conc=0.1,rows={rows(200)},seed={seed + 2}"),
        from_spec("llm-near", "LLM-like logits, near-identical (noise 0.1)",
                  f"gen:llm-like:V={v_llm},scale=3,noise=0.1,rows={rows(60)},seed={seed + 3}"),
        from_spec("llm-like", "LLM-like logits (noise 1)",
                  f"gen:llm-like:V={v_llm},scale=3,noise=1,rows={rows(60)},seed={seed + 4}"),
        from_spec("llm-far", "LLM-like logits, far apart (noise 3)",
                  f"gen:llm-like:V={v_llm},scale=3,noise=3,rows={rows(60)},seed={seed + 5}"),
        from_spec("temperature", "logits and the same logits at temperature 0.6",
                  f"gen:temperature:V={v_llm},scale=3,tau=0.6,rows={rows(60)},seed={seed + 6}"),
        from_spec("zipf", "Zipf(1.1) and a noisy copy",
                  f"gen:zipf:V={v_llm},s=1.1,noise=0.5,rows={rows(60)},seed={seed + 7}"),
    ]


def build_families(seed: int, thorough: bool) -> list[Family]:
    """The case families every statistical claim is measured on (deterministic given seed)."""
    fams = synthetic_families(seed, thorough)
    # the derivation's Test 2 shape: a near point mass against the uniform distribution
    eps = np.array([1e-9, 1e-6, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.3])
    lt, lT = delta_uniform_log_probs(1000, eps)
    fams.append(Family("delta-uniform", "near point mass (1-eps, eps/999, ...) vs uniform on "
                       "V = 1000, eps in {1e-9, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.3}", lt, lT))
    path = real_pairs_path()
    if path is not None:
        from geomix_cli.sources import load_source

        src = load_source(str(path))
        fams.append(Family("real-smollm2", "12 real SmolLM2-135M next-token pairs (float16 "
                           "logits, V = 49152: steering system prompts and temperature 0.6)",
                           src.log_pi_theta, src.log_pi_t))
    return fams


def heldout_families(seed: int, thorough: bool) -> list[Family]:
    """Fresh pairs of the same generators with other seeds (half the rows), on which repaired
    claims read from the suite's families are checked."""
    return [Family(f.name + " (held out)", f.description, f.log_pi_theta, f.log_pi_t)
            for f in synthetic_families(seed + 1000, thorough, scale=0.5)]


def family_table(fams: list[Family]) -> list[dict]:
    return [{"family": f.name, "rows": f.n_rows, "vocab": f.vocab, "description": f.description}
            for f in fams]


def solve_ok(fam: Family):
    """Exact alpha* (Newton) and the mask of rows where it exists."""
    sol = solve_alpha(fam.log_pi_theta, fam.log_pi_t, "newton")
    return sol, sol.status == OK


def kl_scale(log_q: np.ndarray, log_p: np.ndarray) -> np.ndarray:
    """The magnitude of the terms summed in KL(q||p): sum_y q (|log q| + |log p|) + 1."""
    with np.errstate(invalid="ignore"):
        q = np.exp(log_q)
        terms = np.where(np.isfinite(log_q), q * (np.abs(log_q) + np.abs(log_p)), 0.0)
    return 1.0 + np.nansum(terms, axis=-1)


def compare_families(seed: int = 0) -> list[Family]:
    """The built-in cases of `geomix compare-alpha` without sources: the derivation's Tests 1 and
    2, a few synthetic families and the real SmolLM2 rows (when present)."""
    lt1 = np.log(np.array([[0.7, 0.3]]))
    lT1 = np.log(np.array([[0.3, 0.7]]))
    fams = [Family("test1", "the derivation's Test 1: (0.7, 0.3) vs (0.3, 0.7)", lt1, lT1)]
    lt2, lT2 = delta_uniform_log_probs(10, np.array([4e-4]))
    lt3, lT3 = delta_uniform_log_probs(1000, np.array([1e-3]))
    fams.append(Family("test2-V10", "Test 2 shape: (1-eps, eps/9, ...) vs uniform, V = 10, "
                       "eps = 4e-4 (where alpha* ~= 0.34)", lt2, lT2))
    fams.append(Family("test2-V1000", "Test 2 shape, V = 1000, eps = 1e-3 (alpha* ~= 0.5)",
                       lt3, lT3))
    fams += [
        from_spec("dirichlet-20", "Dirichlet(1) pairs on 20 tokens",
                  f"gen:dirichlet:V=20,conc=1,rows=10,seed={seed + 1}"),
        from_spec("dirichlet-peaked", "peaked Dirichlet(0.1) pairs on 50 tokens",
                  f"gen:dirichlet:V=50,conc=0.1,rows=10,seed={seed + 2}"),
        from_spec("llm-like", "LLM-like logits (noise 1)",
                  f"gen:llm-like:V=1000,scale=3,noise=1,rows=10,seed={seed + 4}"),
        from_spec("temperature", "logits and the same logits at temperature 0.6",
                  f"gen:temperature:V=1000,scale=3,tau=0.6,rows=10,seed={seed + 6}"),
    ]
    path = real_pairs_path()
    if path is not None:
        from geomix_cli.sources import load_source

        src = load_source(str(path))
        fams.append(Family("real-smollm2", "12 real SmolLM2-135M next-token pairs",
                           src.log_pi_theta, src.log_pi_t))
    return fams
