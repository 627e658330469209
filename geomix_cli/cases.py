"""Generators of distribution pairs (`gen:NAME:key=value,...`) and, later, the golden-case library.

Every generator is deterministic given `seed` (default 0) and returns a `RawPair` that goes through
the same validation as a file. `rows=` asks for a batch: random generators draw independent rows,
deterministic ones repeat their row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from geomix_cli.core.validation import LOGITS, PROBS
from geomix_cli.errors import InputError
from geomix_cli.io import GENERATOR_PREFIX, KEY_PAIRS, RawPair


@dataclass(frozen=True)
class Generator:
    name: str
    description: str
    defaults: dict
    make: Callable[..., tuple[np.ndarray, np.ndarray, str]]


def _two_point(p, rng, rows):
    theta, target = p["theta"], p["target"]
    for key in ("theta", "target"):
        if not 0.0 <= p[key] <= 1.0:
            raise ValueError(f"{key}={p[key]} must lie in [0, 1]")
    pi_theta = np.tile([theta, 1.0 - theta], (rows, 1))
    pi_t = np.tile([target, 1.0 - target], (rows, 1))
    return pi_theta, pi_t, PROBS


def _delta_uniform(p, rng, rows):
    vocab, eps = int(p["V"]), p["eps"]
    if vocab < 2:
        raise ValueError("V must be at least 2")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps={eps} must lie in [0, 1]")
    # in log space, so that eps/(V-1) far below float64's smallest normal is still exact
    log_theta = np.full(vocab, np.log(eps) - np.log(vocab - 1) if eps > 0 else -np.inf)
    log_theta[0] = np.log1p(-eps)
    log_t = np.full(vocab, -np.log(vocab))
    return np.tile(log_theta, (rows, 1)), np.tile(log_t, (rows, 1)), LOGITS


def _dirichlet(p, rng, rows):
    vocab, conc, zeros = int(p["V"]), p["conc"], int(p["zeros"])
    if vocab < 2 or conc <= 0:
        raise ValueError("need V >= 2 and conc > 0")
    if not 0 <= zeros < vocab:
        raise ValueError("zeros must lie in [0, V)")
    pi_theta = rng.dirichlet(np.full(vocab, conc), size=rows)
    pi_t = rng.dirichlet(np.full(vocab, conc), size=rows)
    if zeros:
        # zero out `zeros` random tokens on each side (partial overlap), then renormalise
        for side in (pi_theta, pi_t):
            for r in range(rows):
                side[r, rng.choice(vocab, size=zeros, replace=False)] = 0.0
                side[r] /= side[r].sum()
    return pi_theta, pi_t, PROBS


def _llm_like(p, rng, rows):
    vocab, scale, noise = int(p["V"]), p["scale"], p["noise"]
    base = rng.normal(0.0, scale, size=(rows, vocab))
    return (base + rng.normal(0.0, noise, size=(rows, vocab)),
            base + rng.normal(0.0, noise, size=(rows, vocab)), LOGITS)


def _temperature(p, rng, rows):
    vocab, scale, tau = int(p["V"]), p["scale"], p["tau"]
    if tau <= 0:
        raise ValueError("tau must be > 0")
    logits = rng.normal(0.0, scale, size=(rows, vocab))
    return logits, logits / tau, LOGITS


def _zipf(p, rng, rows):
    vocab, s, noise = int(p["V"]), p["s"], p["noise"]
    base = -s * np.log(np.arange(1, vocab + 1, dtype=np.float64))
    theta = np.tile(base, (rows, 1))
    target = theta + rng.normal(0.0, noise, size=(rows, vocab))
    return theta, target, LOGITS


GENERATORS: dict[str, Generator] = {
    g.name: g for g in [
        Generator("two-point", "pi_theta = (theta, 1-theta), pi_t = (target, 1-target)",
                  {"theta": 0.7, "target": 0.3}, _two_point),
        Generator("delta-uniform", "pi_theta = (1-eps, eps/(V-1), ...), pi_t uniform on V tokens",
                  {"V": 1000, "eps": 1e-3}, _delta_uniform),
        Generator("dirichlet", "pi_theta, pi_t ~ Dirichlet(conc) on V tokens, optionally `zeros` "
                  "tokens zeroed on each side", {"V": 20, "conc": 1.0, "zeros": 0}, _dirichlet),
        Generator("llm-like", "logits = shared N(0, scale^2) base + independent N(0, noise^2)",
                  {"V": 1000, "scale": 3.0, "noise": 1.0}, _llm_like),
        Generator("temperature", "logits x ~ N(0, scale^2) and x / tau",
                  {"V": 1000, "scale": 3.0, "tau": 0.6}, _temperature),
        Generator("zipf", "pi_theta ∝ rank^-s, pi_t: the same logits plus N(0, noise^2)",
                  {"V": 1000, "s": 1.1, "noise": 0.5}, _zipf),
    ]
}
COMMON_DEFAULTS = {"seed": 0, "rows": 1}


def parse_generator_spec(spec: str) -> tuple[Generator, dict]:
    """'gen:NAME:key=value,...' -> (generator, parameters with defaults filled in)."""
    body = spec[len(GENERATOR_PREFIX):]
    name, _, params_text = body.partition(":")
    if name not in GENERATORS:
        raise InputError(f"unknown generator '{name}'; known: {', '.join(GENERATORS)}", file=spec)
    gen = GENERATORS[name]
    params = {**gen.defaults, **COMMON_DEFAULTS}
    for item in filter(None, (s.strip() for s in params_text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise InputError(f"parameter '{item}' is not key=value", file=spec)
        if key not in params:
            raise InputError(f"unknown parameter '{key}' for generator '{name}'; known: "
                             f"{', '.join(params)}", file=spec)
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"parameter {key}={value!r} is not a number", file=spec) from None
        if key in ("V", "rows", "seed", "zeros") and number != int(number):
            raise InputError(f"parameter {key}={value} must be a whole number", file=spec)
        params[key] = number
    if params["rows"] < 1:
        raise InputError("rows must be at least 1", file=spec)
    return gen, params


def generate(spec: str) -> RawPair:
    """Run a generator spec; deterministic given its `seed`."""
    gen, params = parse_generator_spec(spec)
    rng = np.random.default_rng(int(params["seed"]))
    try:
        theta, target, kind = gen.make(params, rng, int(params["rows"]))
    except ValueError as exc:
        raise InputError(str(exc), file=spec) from None
    if int(params["rows"]) == 1:
        theta, target = theta[0], target[0]
    return RawPair(theta, target, kind, KEY_PAIRS[kind], storage_dtype="float64")
