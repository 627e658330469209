"""Generators of distribution pairs (`gen:NAME:key=value,...`) and the golden-case library.

Every generator is deterministic given `seed` (default 0) and returns a `RawPair` that goes through
the same validation as a file. `rows=` asks for a batch: random generators draw independent rows,
deterministic ones repeat their row.

The second half of the module is the golden-case library behind `geomix regress`: reading and
validating `cases/*.json` (`load_case`, `load_cases`), the values a case's source gives the solver
(`case_raw_pair`, `case_inputs`) and their fingerprint (`source_fingerprint`), comparing computed
rows with expected ones under per-field tolerances (`compare_records`), golden verdicts
(`load_verdicts`, `verdict_map`, `compare_verdicts`), and the pieces of `--update` (`case_to_text`,
`diff_cases`, `diff_verdicts`, `load_reference` for scripts/make_golden.py). No file is written here.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from geomix_cli.core.validation import LOGITS, PROBS
from geomix_cli.errors import InputError
from geomix_cli.io import GENERATOR_PREFIX, KEY_PAIRS, RawPair


REAL_SAMPLE = "smollm2_sample.npz"


def real_sample_path():
    """The 12 real SmolLM2 next-token pairs shipped with geomix: geomix_cli/data/ (an installed
    copy) or cases/data/ (a checkout); None if neither exists. Only a path: reading is io's job."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for candidate in (here / "data" / REAL_SAMPLE, here.parent / "cases" / "data" / REAL_SAMPLE):
        if candidate.is_file():
            return candidate
    return None


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


def delta_uniform_log_probs(vocab: int, eps) -> tuple[np.ndarray, np.ndarray]:
    """The derivation's Test 2 shape, one row per eps: log pi_theta = log(1-eps, eps/(V-1), ...)
    and log pi_t = log(1/V, ...), shapes [len(eps), V]. In log space, so that eps/(V-1) far below
    float64's smallest normal is still exact (eps = 0 gives a one-hot pi_theta)."""
    eps = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    with np.errstate(divide="ignore"):
        log_theta = np.repeat((np.log(eps) - np.log(vocab - 1))[:, None], vocab, axis=1)
    log_theta[:, 0] = np.log1p(-eps)
    return log_theta, np.full_like(log_theta, -np.log(vocab))


def _delta_uniform(p, rng, rows):
    vocab, eps = int(p["V"]), p["eps"]
    if vocab < 2:
        raise ValueError("V must be at least 2")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps={eps} must lie in [0, 1]")
    log_theta, log_t = delta_uniform_log_probs(vocab, np.full(rows, eps))
    return log_theta, log_t, LOGITS


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
                mass = side[r].sum()
                if mass > 0:  # with tiny conc the kept tokens can all underflow to 0: leave the
                    side[r] /= mass  # row empty, so validation calls it 'no mass', not NaN
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

# Parameters that count things, and the smallest value each may take (V: at least two tokens).
WHOLE_PARAMS = {"V": 2, "rows": 1, "seed": 0, "zeros": 0}
MAX_SEED = 2**63 - 1
# Bytes per generated value while a batch is made and validated: the generator's float64 draws
# (up to 3 arrays of rows x V for llm-like) plus validation's float64 log-probabilities of both
# sides and their temporaries.
GENERATOR_BYTES_PER_VALUE = 64


def parse_generator_spec(spec: str) -> tuple[Generator, dict]:
    """'gen:NAME:key=value,...' -> (generator, parameters with defaults filled in).

    Every value must be a finite number; counts (V, rows, seed, zeros) whole numbers in range;
    a parameter given twice is refused (not last-one-wins); a batch that would not fit in the
    memory available is refused with its estimated size."""
    body = spec[len(GENERATOR_PREFIX):]
    name, _, params_text = body.partition(":")
    if name not in GENERATORS:
        raise InputError(f"unknown generator '{name}'; known: {', '.join(GENERATORS)}", file=spec)
    gen = GENERATORS[name]
    params = {**gen.defaults, **COMMON_DEFAULTS}
    given: set[str] = set()
    for item in filter(None, (s.strip() for s in params_text.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise InputError(f"parameter '{item}' is not key=value", file=spec)
        if key not in params:
            raise InputError(f"unknown parameter '{key}' for generator '{name}'; known: "
                             f"{', '.join(params)}", file=spec)
        if key in given:
            raise InputError(f"parameter '{key}' is given more than once", file=spec)
        given.add(key)
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"parameter {key}={value!r} is not a number", file=spec) from None
        if not math.isfinite(number):
            raise InputError(f"parameter {key}={value.strip()} must be a finite number", file=spec)
        if key in WHOLE_PARAMS:
            if number != int(number):
                raise InputError(f"parameter {key}={value.strip()} must be a whole number",
                                 file=spec)
            if number < WHOLE_PARAMS[key]:
                raise InputError(f"parameter {key}={value.strip()}: {key} must be at least "
                                 f"{WHOLE_PARAMS[key]}", file=spec)
            if key == "seed" and number > MAX_SEED:
                raise InputError(f"parameter seed={value.strip()} must be at most 2**63 - 1",
                                 file=spec)
            number = int(number)
        params[key] = number
    _check_generator_memory(spec, params)
    return gen, params


def _check_generator_memory(spec: str, params: dict) -> None:
    from geomix_cli.io import check_memory

    rows, vocab = int(params["rows"]), int(params.get("V", 2))
    check_memory(GENERATOR_BYTES_PER_VALUE * rows * vocab,
                 what=f"{rows:,} row(s) x V = {vocab:,}", file=spec,
                 hint="ask for fewer rows or a smaller V")
def generate(spec: str) -> RawPair:
    """Run a generator spec; deterministic given its `seed`."""
    gen, params = parse_generator_spec(spec)
    rng = np.random.default_rng(params["seed"])
    try:
        # extreme parameters (tau=1e-320, s=1e308) overflow to inf: validation then names the
        # rows; numpy's overflow warnings would only repeat that
        with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
            theta, target, kind = gen.make(params, rng, params["rows"])
    except ValueError as exc:
        raise InputError(str(exc), file=spec) from None
    if params["rows"] == 1:
        theta, target = theta[0], target[0]
    return RawPair(theta, target, kind, KEY_PAIRS[kind], storage_dtype="float64")


# ==============================================================================================
# The golden-case library: `cases/*.json`, one case per file, read and compared by `geomix regress`.
#
# A case file (schema_version 1) holds:
#   id, description;
#   source: {"type": "inline", "kind": "probs"|"logits", <two keys>: row or rows}
#         | {"type": "generator", "spec": "gen:NAME:k=v,..."}
#         | {"type": "file", "path": "data/x.npz" (relative to the cases folder), "rows": [..]?,
#            "kind": ...?};
#   source_sha256: fingerprint of the stored values (`source_fingerprint`), to notice a changed source;
#   produced_by: the reference script and its settings (scripts/make_golden.py, mpmath, digits);
#   tolerances: {field: {"abs": a, "rel": r}}: |got - expected| <= a + r |expected|;
#   expected: one object per row with GOLDEN_FIELDS (null where a value is not defined);
#   conditioning (informative): the reference's per-row quantities the tolerances came from.
# ==============================================================================================

GOLDEN_SCHEMA_VERSION = 1
GOLDEN_FIELDS = ("status", "alpha", "chernoff", "kl_q_theta", "kl_q_target", "ess_theta",
                 "ess_target", "alpha_entropy")
NUMERIC_FIELDS = GOLDEN_FIELDS[1:]
CASE_KEYS = ("schema_version", "id", "description", "source", "source_sha256", "produced_by",
             "tolerances", "expected")
SOURCE_TYPES = ("inline", "generator", "file")
VERDICTS_DIR = "verdicts"
DATA_DIR = "data"


@dataclass
class GoldenCase:
    """One validated case file. `data` is the parsed JSON (kept whole so updates lose nothing)."""

    path: Path
    data: dict

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def expected(self) -> list[dict]:
        return self.data["expected"]

    @property
    def tolerances(self) -> dict:
        return self.data["tolerances"]

    @property
    def cases_dir(self) -> Path:
        return self.path.parent


@dataclass
class Mismatch:
    case: str
    method: str
    row: int | None
    field: str
    expected: object
    got: object
    tolerance: str = ""

    def line(self) -> str:
        where = f"case {self.case}" + (f", row {self.row}" if self.row is not None else "")
        return (f"{where}, field {self.field} ({self.method}): expected {_show(self.expected)}, "
                f"got {_show(self.got)}" + (f" ({self.tolerance})" if self.tolerance else ""))

    def to_json(self) -> dict:
        return {"case": self.case, "method": self.method, "row": self.row, "field": self.field,
                "expected": self.expected, "got": self.got, "tolerance": self.tolerance}


def _show(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else repr(value)
    return str(value)


# ---------------------------------------------------------------------------------------------
# reading and validating case files


def _read_json(path: Path, what: str):
    """A case or verdict file's JSON (geomix_cli.io reads it; duplicate keys are refused)."""
    from geomix_cli.io import loads_json, read_text

    return loads_json(read_text(path, what=what), file=str(path))


def _case_error(path, message, key=None, row=None) -> InputError:
    return InputError(message, file=str(path), key=key, row=row)


NEW_CASE_KEYS = ("schema_version", "id", "description", "source")


def load_case(path, *, for_update: bool = False) -> GoldenCase:
    """Read and validate one case file; any defect raises InputError naming file, key and row.

    for_update: a new case may hold only schema_version, id, description and source;
    `geomix regress --update` fills in the rest from the reference."""
    path = Path(path)
    data = _read_json(path, "case file")
    if not isinstance(data, dict):
        raise _case_error(path, "a case file holds one JSON object")
    for key in CASE_KEYS:
        if key not in data:
            if for_update and key not in NEW_CASE_KEYS:
                continue
            hint = (f" (a hand-written case starts with {{\"schema_version\": "
                    f"{GOLDEN_SCHEMA_VERSION}, \"id\": \"{path.stem}\", \"description\": "
                    "\"...\", \"source\": {...}} and is completed by geomix regress --update "
                    f"--case {path.stem}; see docs/regress.md, 'Adding your own case')"
                    if key in NEW_CASE_KEYS else
                    " (a new case? fill it in with geomix regress --update --case "
                    f"{path.stem})")
            raise _case_error(path, "missing key" + hint, key=key)
    if data["schema_version"] != GOLDEN_SCHEMA_VERSION:
        raise _case_error(path, f"schema_version {data['schema_version']!r} is not "
                                f"{GOLDEN_SCHEMA_VERSION}", key="schema_version")
    if not isinstance(data["id"], str) or not data["id"]:
        raise _case_error(path, "id must be a non-empty string", key="id")
    if data["id"] != path.stem:
        raise _case_error(path, f"id '{data['id']}' differs from the file name '{path.stem}'",
                          key="id")
    _validate_source(path, data["source"])
    if for_update and "expected" not in data:
        return GoldenCase(path=path, data=data)
    for key in CASE_KEYS:
        if key not in data:
            raise _case_error(path, "missing key", key=key)
    tolerances = data["tolerances"]
    if not isinstance(tolerances, dict):
        raise _case_error(path, "tolerances must map field -> {abs, rel}", key="tolerances")
    for field_name in NUMERIC_FIELDS:
        tol = tolerances.get(field_name)
        if not isinstance(tol, dict) or set(tol) - {"abs", "rel"}:
            raise _case_error(path, f"tolerance for '{field_name}' must be {{\"abs\": a, \"rel\": r}}",
                              key="tolerances")
        for part in ("abs", "rel"):
            value = tol.get(part, 0.0)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                raise _case_error(path, f"tolerance {field_name}.{part} = {value!r} must be a "
                                        "number in [0, 1)", key="tolerances")
    expected = data["expected"]
    if not isinstance(expected, list) or not expected:
        raise _case_error(path, "expected must be a non-empty list of rows", key="expected")
    for i, row in enumerate(expected):
        if not isinstance(row, dict):
            raise _case_error(path, "expected row is not an object", key="expected", row=i)
        if row.get("row", i) != i:
            raise _case_error(path, f"row number {row.get('row')!r} out of order (expected {i})",
                              key="expected", row=i)
        for field_name in GOLDEN_FIELDS:
            if field_name not in row:
                raise _case_error(path, f"missing field '{field_name}'", key="expected", row=i)
        if row["status"] not in _known_statuses():
            raise _case_error(path, f"unknown status {row['status']!r}", key="expected", row=i)
        for field_name in NUMERIC_FIELDS:
            value = row[field_name]
            if value is not None and not _is_number(value):
                raise _case_error(path, f"field '{field_name}' is {value!r}; expected a number or "
                                        "null", key="expected", row=i)
        if row["status"] == "ok" and row["alpha"] is None:
            raise _case_error(path, "status ok with alpha null", key="expected", row=i)
    return GoldenCase(path=path, data=data)


def _known_statuses():
    from geomix_cli.core.solvers import STATUSES

    return STATUSES


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _validate_source(path: Path, src) -> None:
    if not isinstance(src, dict):
        raise _case_error(path, "source must be an object", key="source")
    kind = src.get("type")
    if kind not in SOURCE_TYPES:
        raise _case_error(path, f"source type {kind!r} is not one of {', '.join(SOURCE_TYPES)}",
                          key="source")
    if kind == "inline":
        if src.get("kind") not in KEY_PAIRS:
            raise _case_error(path, "inline source needs kind 'probs' or 'logits'", key="source")
        for key in KEY_PAIRS[src["kind"]]:
            if key not in src:
                raise _case_error(path, "missing inline array", key=f"source.{key}")
    elif kind == "generator":
        if not isinstance(src.get("spec"), str) or not src["spec"].startswith(GENERATOR_PREFIX):
            raise _case_error(path, "generator source needs spec 'gen:NAME:k=v,...'",
                              key="source.spec")
    else:
        if not isinstance(src.get("path"), str) or not src["path"]:
            raise _case_error(path, "file source needs a path relative to the cases folder",
                              key="source.path")
        case_file_path(path.parent, src["path"], path)
        rows = src.get("rows")
        if rows is not None and (not isinstance(rows, list) or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in rows)):
            raise _case_error(path, "rows must be a list of row numbers", key="source.rows")
        if src.get("kind") not in (None, *KEY_PAIRS):
            raise _case_error(path, "kind must be 'probs' or 'logits'", key="source.kind")


def case_files(cases_dir) -> list[Path]:
    """The case files of a folder (its *.json; data/ and verdicts/ are not cases)."""
    cases_dir = Path(cases_dir)
    if not cases_dir.is_dir():
        raise InputError("no such folder of golden cases", file=str(cases_dir))
    return sorted(p for p in cases_dir.glob("*.json") if p.is_file())


def load_cases(cases_dir, only: list[str] | None = None, *,
               for_update: bool = False) -> list[GoldenCase]:
    files = case_files(cases_dir)
    if only:
        known = {p.stem for p in files}
        missing = [c for c in only if c not in known]
        if missing:
            raise InputError(f"no case named {', '.join(missing)} (known: {', '.join(sorted(known))})",
                             file=str(cases_dir))
        files = [p for p in files if p.stem in only]
    if not files:
        raise InputError("holds no case files (*.json)", file=str(cases_dir))
    return [load_case(p, for_update=for_update) for p in files]


# ---------------------------------------------------------------------------------------------
# sources


def _inline_array(value, path: str, key: str) -> np.ndarray:
    rows = value if isinstance(value, list) and value and isinstance(value[0], list) else [value]
    if not isinstance(value, list) or not value:
        raise InputError("expected a list of numbers or a list of rows", file=path, key=key)
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, list) or len(r) != len(rows[0]):
            raise InputError("ragged or non-list row", file=path, key=key, row=i)
        vals = []
        for v in r:
            if isinstance(v, str) and v.strip().lower() in ("-inf", "-infinity"):
                vals.append(-math.inf)
            elif _is_number(v):
                vals.append(float(v))
            else:
                raise InputError(f"value {v!r} is not a number (use \"-inf\" for log 0)",
                                 file=path, key=key, row=i)
        out.append(vals)
    return np.array(out, dtype=np.float64)


def case_file_path(cases_dir, relative: str, case_path) -> Path:
    """The data file a case's source names, which must lie inside the cases folder (a case file
    is shared and reviewed: it may not read arbitrary files such as ../../secret.npz)."""
    folder = Path(cases_dir).resolve()
    if Path(relative).is_absolute():
        raise _case_error(case_path, f"source path '{relative}' is absolute; give it relative to "
                                     "the cases folder", key="source.path")
    target = (folder / relative).resolve()
    if folder not in target.parents:
        raise _case_error(case_path, f"source path '{relative}' points outside the cases folder "
                                     f"{folder}", key="source.path")
    return target


def case_raw_pair(case, cases_dir=None) -> RawPair:
    """The stored values of a case's source, as geomix reads them (shape [B, V])."""
    from geomix_cli.io import read_pair_file

    data = case.data if isinstance(case, GoldenCase) else case
    path = str(case.path) if isinstance(case, GoldenCase) else str(data.get("id"))
    cases_dir = Path(cases_dir) if cases_dir is not None else case.cases_dir
    src = data["source"]
    if src["type"] == "inline":
        keys = KEY_PAIRS[src["kind"]]
        theta = _inline_array(src[keys[0]], path, f"source.{keys[0]}")
        target = _inline_array(src[keys[1]], path, f"source.{keys[1]}")
        return RawPair(theta, target, src["kind"], keys, storage_dtype="float64")
    if src["type"] == "generator":
        raw = generate(src["spec"])
    else:
        raw = read_pair_file(str(case_file_path(cases_dir, src["path"], path)),
                             kind=src.get("kind"))
        if src.get("kind") and raw.kind != src["kind"]:
            raw = RawPair(raw.theta, raw.target, src["kind"], raw.keys, raw.meta,
                          raw.storage_dtype)
    theta, target = np.atleast_2d(np.asarray(raw.theta)), np.atleast_2d(np.asarray(raw.target))
    if src.get("rows") is not None:
        n = theta.shape[0]
        for r in src["rows"]:
            if not 0 <= r < n:
                raise InputError(f"row {r} does not exist (the file has {n} rows)", file=path,
                                 key="source.rows")
        theta, target = theta[src["rows"]], target[src["rows"]]
    return RawPair(theta, target, raw.kind, raw.keys, storage_dtype=raw.storage_dtype)


def source_fingerprint(raw: RawPair) -> str:
    """sha256 of what the solver is given: kind, storage dtype, shapes and the values as float64."""
    digest = hashlib.sha256()
    digest.update(f"{raw.kind}|{raw.storage_dtype}|".encode())
    for arr in (raw.theta, raw.target):
        wide = np.ascontiguousarray(np.atleast_2d(np.asarray(arr, dtype=np.float64)))
        digest.update(f"{wide.shape}|".encode())
        digest.update(wide.astype("<f8").tobytes())
    return digest.hexdigest()


def case_inputs(case: GoldenCase):
    """(log_pi_theta, log_pi_t, row_errors, fingerprint) through geomix's own validation."""
    from geomix_cli.core.validation import validate_pair

    raw = case_raw_pair(case)
    log_theta, log_t, errors = validate_pair(raw.theta, raw.target, raw.kind, names=raw.keys,
                                             file=str(case.path), storage_dtype=raw.storage_dtype)
    if log_theta.shape[0] != len(case.expected):
        raise InputError(f"the source has {log_theta.shape[0]} rows, expected lists "
                         f"{len(case.expected)}", file=str(case.path), key="expected")
    return log_theta, log_t, errors, source_fingerprint(raw)


# ---------------------------------------------------------------------------------------------
# comparing


def compare_records(case: GoldenCase, records: list[dict], method: str):
    """Compare computed rows with the case's expected rows.

    Returns (mismatches, max_dev) where max_dev[field] is the largest |got - expected| (relative
    for fields whose tolerance is relative) over rows where both are numbers."""
    mismatches: list[Mismatch] = []
    max_dev = {f: 0.0 for f in NUMERIC_FIELDS}
    for i, (exp, got) in enumerate(zip(case.expected, records)):
        if got["status"] != exp["status"]:
            mismatches.append(Mismatch(case.id, method, i, "status", exp["status"], got["status"]))
        for f in NUMERIC_FIELDS:
            e, g = exp[f], got.get(f)
            g = None if g is None or (isinstance(g, float) and math.isnan(g)) else float(g)
            tol = case.tolerances[f]
            t_abs, t_rel = float(tol.get("abs", 0.0)), float(tol.get("rel", 0.0))
            if e is None or g is None:
                if (e is None) != (g is None):
                    why = "not defined for this row" if e is None else "missing"
                    mismatches.append(Mismatch(case.id, method, i, f, e, g, why))
                continue
            diff = abs(g - e)
            if not math.isfinite(g) or diff > t_abs + t_rel * abs(e):
                mismatches.append(Mismatch(case.id, method, i, f, e, g,
                                           f"|diff| {diff:.3g} > tolerance {_tol_text(t_abs, t_rel)}"))
            dev = diff / abs(e) if t_rel > 0 and e != 0 else diff
            if math.isfinite(dev):
                max_dev[f] = max(max_dev[f], dev)
    return mismatches, max_dev


def _tol_text(t_abs: float, t_rel: float) -> str:
    parts = []
    if t_abs and t_abs > 1e-299:
        parts.append(f"abs {t_abs:.0e}")
    if t_rel:
        parts.append(f"rel {t_rel:.0e}")
    return " + ".join(parts) or "exact"


# ---------------------------------------------------------------------------------------------
# golden verdicts (cases/verdicts/<suite>.json: {claim id: verdict})


def verdicts_path(cases_dir, suite: str) -> Path:
    return Path(cases_dir) / VERDICTS_DIR / f"{suite}.json"


# The verdicts a claim can get (as checks.VERDICTS; repeated here so that reading a verdict file
# does not import the verify suite).
VERDICT_VALUES = ("holds", "refuted", "depends", "untested")


def load_verdicts(path) -> dict[str, str]:
    """{claim id: verdict} from a golden verdict file; an unknown verdict is bad input."""
    path = Path(path)
    data = _read_json(path, "verdict file")
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError("a verdict file maps claim id -> verdict (strings)", file=str(path))
    for claim, verdict in data.items():
        if verdict not in VERDICT_VALUES:
            raise InputError(f"verdict {verdict!r} is not one of {', '.join(VERDICT_VALUES)}",
                             file=str(path), key=claim)
    return data


def verdict_map(result) -> dict[str, str]:
    """{claim id: verdict} from a SuiteResult (with .claims) or its results.json dict."""
    if isinstance(result, dict):
        claims = result.get("claims", [])
        return {str(c["id"]): str(c["verdict"]) for c in claims}
    return {str(c.id): str(c.verdict) for c in result.claims}


def compare_verdicts(golden: dict[str, str], fresh: dict[str, str], suite: str) -> list[Mismatch]:
    out = []
    for claim in sorted(set(golden) | set(fresh)):
        exp, got = golden.get(claim), fresh.get(claim)
        if exp != got:
            why = ("claim no longer reported" if got is None else
                   "new claim, not in the golden file" if exp is None else "verdict changed")
            out.append(Mismatch(f"verdicts/{suite}", "verify", None, f"claim {claim}", exp, got,
                                why))
    return out


# ---------------------------------------------------------------------------------------------
# writing and updating


def case_to_text(case: dict) -> str:
    """Stable, reviewable JSON: one expected row per line, short arrays on one line."""
    return _pretty(_jsonable(case), 0) + "\n"


def _jsonable(value):
    from geomix_cli.io import to_jsonable

    return to_jsonable(value)


def _pretty(value, level: int) -> str:
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(value, dict):
        if not value:
            return "{}"
        flat = json.dumps(value, ensure_ascii=False, allow_nan=False)
        if len(flat) <= 100 and not any(isinstance(v, (dict, list)) and v for v in value.values()):
            return flat
        items = [f"{inner}{json.dumps(k)}: {_pretty(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return json.dumps(value, ensure_ascii=False, allow_nan=False)
        if all(isinstance(v, dict) for v in value):  # rows: one object per line
            return "[\n" + ",\n".join(inner + json.dumps(v, ensure_ascii=False, allow_nan=False)
                                      for v in value) + "\n" + pad + "]"
        return "[\n" + ",\n".join(inner + _pretty(v, level + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def diff_cases(old: dict, new: dict) -> list[str]:
    """Human-readable differences in expected values, statuses and tolerances."""
    lines = []
    case_id = new.get("id", old.get("id"))
    old_rows, new_rows = old.get("expected", []), new.get("expected", [])
    if len(old_rows) != len(new_rows):
        lines.append(f"{case_id}: {len(old_rows)} -> {len(new_rows)} expected rows")
    for i, (a, b) in enumerate(zip(old_rows, new_rows)):
        for f in GOLDEN_FIELDS:
            if a.get(f) != b.get(f):
                lines.append(f"{case_id} row {i} {f}: {_show(a.get(f))} -> {_show(b.get(f))}")
    for f in NUMERIC_FIELDS:
        a = (old.get("tolerances") or {}).get(f)
        b = (new.get("tolerances") or {}).get(f)
        if a != b:
            lines.append(f"{case_id} tolerance {f}: {a} -> {b}")
    if old.get("source_sha256") != new.get("source_sha256"):
        lines.append(f"{case_id} source_sha256: {old.get('source_sha256')} -> "
                     f"{new.get('source_sha256')}")
    if (old.get("produced_by") or {}) != (new.get("produced_by") or {}):
        lines.append(f"{case_id} produced_by: {old.get('produced_by')} -> {new.get('produced_by')}")
    return lines


def diff_verdicts(old: dict[str, str], new: dict[str, str], suite: str) -> list[str]:
    return [f"verdicts/{suite} claim {c}: {_show(old.get(c))} -> {_show(new.get(c))}"
            for c in sorted(set(old) | set(new)) if old.get(c) != new.get(c)]


def default_reference_script() -> Path:
    """scripts/make_golden.py of the geomix checkout this package runs from."""
    return Path(__file__).resolve().parents[1] / "scripts" / "make_golden.py"


def load_reference(script=None):
    """Import the high-precision reference script as a module (for `regress --update`)."""
    import importlib.util

    from geomix_cli.errors import UnavailableError

    path = Path(script) if script else default_reference_script()
    if not path.is_file():
        raise UnavailableError("--update needs the reference script scripts/make_golden.py of a "
                               "geomix checkout (pass --reference PATH)", file=str(path))
    spec = importlib.util.spec_from_file_location("geomix_make_golden", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
