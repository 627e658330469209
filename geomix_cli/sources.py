"""Sources of pairs: a file or a generator spec, loaded and validated into a `PairSource`.

A *source* is a pair file (.npz, .json, .csv, .parquet, .safetensors, .pt; read by
`geomix_cli.io`) or a generator spec `gen:NAME:key=value,...` (made by `geomix_cli.cases`). This
module sits above both, so that imports run one way: sources -> cases -> io -> core. Every source
becomes a `PairSource` of validated float64 log-probabilities. Structural problems raise
`InputError` naming the file, key/column and row; value problems confined to one row are kept
per row so the rest of a batch still runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geomix_cli.core.validation import validate_pair
from geomix_cli.errors import InputError
from geomix_cli.io import GENERATOR_PREFIX, RawPair, read_pair_file


@dataclass
class PairSource:
    """A validated batch of pairs: rows of float64 log-probabilities (-inf where p = 0)."""

    name: str
    log_pi_theta: np.ndarray
    log_pi_t: np.ndarray
    row_errors: list[str | None]
    row_labels: np.ndarray
    kind: str
    storage_dtype: str
    meta: list[str] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_rows(self) -> int:
        return int(self.log_pi_theta.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.log_pi_theta.shape[1])

    @property
    def valid_rows(self) -> np.ndarray:
        return np.array([e is None for e in self.row_errors], dtype=bool)

    def select(self, positions) -> "PairSource":
        positions = np.asarray(positions, dtype=np.int64)
        return PairSource(name=self.name, log_pi_theta=self.log_pi_theta[positions],
                          log_pi_t=self.log_pi_t[positions],
                          row_errors=[self.row_errors[i] for i in positions],
                          row_labels=self.row_labels[positions], kind=self.kind,
                          storage_dtype=self.storage_dtype,
                          meta=None if self.meta is None else [self.meta[i] for i in positions],
                          extra=dict(self.extra))


def is_generator_spec(spec) -> bool:
    return str(spec).startswith(GENERATOR_PREFIX)


def raw_pair(spec: str, *, kind: str | None = None) -> RawPair:
    """The arrays of a source as stored (a generator's output, or a file's arrays)."""
    if is_generator_spec(spec):
        from geomix_cli.cases import generate

        return generate(spec)
    return read_pair_file(spec, kind=kind)


def load_source(spec: str, *, kind: str | None = None, renormalize: bool = False,
                rows: str | None = None) -> PairSource:
    """Load, validate and (optionally) select rows of a source.

    kind: None to decide from the key names; PROBS or LOGITS to force how values are read (for
    a file holding both kinds of keys, or log-probabilities stored under pi_* keys).
    rows: a selection like "3", "0:8", "0,2,5:7" (positions in the batch, end exclusive)."""
    spec = str(spec)
    if not spec.strip():
        raise InputError("the source is an empty name; give a pairs file or a generator spec "
                         "gen:NAME:key=value,...")
    raw = raw_pair(spec, kind=kind)
    if kind is not None and raw.kind != kind:
        raw = RawPair(raw.theta, raw.target, kind, raw.keys, raw.meta, raw.storage_dtype,
                      raw.mask)
    dtype_name = raw.storage_dtype or getattr(np.asarray(raw.theta).dtype, "name", "float64")
    theta, target, meta, extra = _positions_and_mask(raw, spec)
    log_theta, log_t, errors = validate_pair(theta, target, raw.kind, names=raw.keys,
                                             file=spec, renormalize=renormalize,
                                             storage_dtype=dtype_name)
    source = PairSource(name=spec, log_pi_theta=log_theta, log_pi_t=log_t, row_errors=errors,
                        row_labels=np.arange(log_theta.shape[0]), kind=raw.kind,
                        storage_dtype=dtype_name, meta=meta, extra=extra)
    if rows is not None:
        source = source.select(parse_row_selection(rows, source.n_rows, spec))
    return source


def _positions_and_mask(raw: RawPair, file_label: str):
    """[B, T, V] arrays become B*T rows (C order) with their (b, t) kept in
    extra["positions"][row_label]; an optional mask ([B] or [B, T], key 'mask' or
    'attention_mask', 0 = padded, 1 = real; checked by the reader) drops padded positions before
    validation (they are not errors). Returns (theta, target, meta, extra)."""
    theta, target, meta = raw.theta, raw.target, raw.meta
    extra: dict = {}
    shape = tuple(np.shape(theta))
    if len(shape) != 3 and raw.mask is None:
        return theta, target, meta, extra
    if tuple(np.shape(target)) != shape:
        return theta, target, meta, extra  # validate_pair names the mismatch
    lead = shape[:-1]
    if len(shape) == 3:
        n_b, n_t, vocab = shape
        theta = np.asarray(theta).reshape(n_b * n_t, vocab)
        target = np.asarray(target).reshape(n_b * n_t, vocab)
        positions = np.stack(np.unravel_index(np.arange(n_b * n_t), (n_b, n_t)), axis=1)
        if meta is not None and len(meta) == n_b:
            meta = [f"{meta[b]} (b={b}, t={t})" for b, t in positions]
        elif meta is None or len(meta) != n_b * n_t:
            meta = [f"b={b}, t={t}" for b, t in positions]
        extra["input_shape"] = shape
    else:
        positions = None
    if raw.mask is not None:
        mask = np.asarray(raw.mask)
        if mask.shape != lead:
            raise InputError(f"mask has shape {mask.shape}; the rows have shape {lead} "
                             "(one entry per position: 1 = real, 0 = padded)", file=file_label,
                             key="mask")
        if mask.dtype.kind not in "biuf" or (mask.dtype.kind == "f" and np.isnan(mask).any()):
            raise InputError("mask must hold 0/1 (or booleans)", file=file_label, key="mask")
        keep = np.flatnonzero(mask.reshape(-1) != 0)
        if keep.size == 0:
            raise InputError("the mask marks every position as padded: nothing to solve",
                             file=file_label, key="mask")
        extra["padded_rows_dropped"] = int(mask.size - keep.size)
        theta = np.asarray(theta).reshape(-1, shape[-1])[keep]
        target = np.asarray(target).reshape(-1, shape[-1])[keep]
        if meta is not None and len(meta) == mask.size:
            meta = [meta[i] for i in keep]
        if positions is not None:
            positions = positions[keep]
        elif len(shape) == 2:
            positions = keep[:, None]
    if positions is not None:
        extra["positions"] = positions
    return theta, target, meta, extra


def parse_row_selection(text: str, n_rows: int, file_label: str | None = None) -> np.ndarray:
    """'3' / '0:8' / '0,2,5:7' / '-1' -> positions; out-of-range indices are refused."""
    picked: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                start_s, stop_s = part.split(":", 1)
                start = int(start_s) if start_s.strip() else 0
                stop = int(stop_s) if stop_s.strip() else n_rows
                picked.extend(range(*slice(start, stop).indices(n_rows)))
                continue
            index = int(part)
        except ValueError:
            raise InputError(f"row selection '{text}' is not like 3, 0:8 or 0,2,5:7",
                             file=file_label) from None
        if not -n_rows <= index < n_rows:
            raise InputError(f"row {index} does not exist (the source has {n_rows} row"
                             f"{'s' if n_rows != 1 else ''}: 0..{n_rows - 1})", file=file_label)
        picked.append(index % n_rows)
    if not picked:
        raise InputError(f"row selection '{text}' selects no row (the source has {n_rows})",
                         file=file_label)
    return np.asarray(picked, dtype=np.int64)
