"""Mergeable statistics over rows: exact counts and sums, and quantiles from a fixed-bin histogram.

A sharded run computes a `Summary` per piece (a slice of one shard) and merges them. Everything
here merges *exactly* and in any order, so a cluster run, a single-process run and a resumed run
give the same numbers:

- counts (per status, per case) and integer sums are integers;
- min and max are exact;
- a float sum is kept as the exactly rounded `math.fsum` of each piece; the total is the
  `math.fsum` of those piece sums, exactly rounded again and so independent of the merge order;
- quantiles come from `BitHistogram`, a histogram whose bins are fixed once and for all by the
  float64 bit pattern (sign, exponent and the top `MANTISSA_BITS` bits of the mantissa), so two
  histograms merge by adding counts (no t-digest-style re-compression whose result depends on
  the merge order).

Quantile method and error bound. The q-quantile is the nearest-rank order statistic
x_(k), k = max(1, ceil(q n)) of the n non-NaN values (numpy's `method="inverted_cdf"`). The
histogram finds the bin that holds x_(k) exactly (its rank is exact). A bin holds the numbers
that share sign, exponent e and the top 16 mantissa bits, an interval of width 2^(e-16) <=
2^-16 |x|; it also keeps the exact smallest and largest value that fell in it (min and max merge
exactly), and reports the middle of those two. So every reported quantile is within half a bin,
2^-17 |x_(k)| (a relative 7.6e-6), of the exact nearest-rank quantile, for normal floats
(subnormal values: within 2^-1039 absolute); and it is exact whenever the bin holds a single
distinct value (integers such as iteration counts, repeated values, 0, infinities).
NaN (a row without the value, e.g. alpha* of a `no-root` row) is not counted, only tallied as
missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MANTISSA_BITS = 16
_SHIFT = 52 - MANTISSA_BITS
QUANTILE_RELATIVE_ERROR = 2.0 ** -(MANTISSA_BITS + 1)


def _bin_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving int64 bin key of each (non-NaN) float64 value."""
    x = np.asarray(values, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    magnitude = np.abs(x).view(np.int64) >> _SHIFT
    return np.where(x < 0, -magnitude - 1, magnitude)


@dataclass
class BitHistogram:
    """Sparse counts over fixed float64 bins, with each bin's exact min and max (see the module
    doc for the bins and the error bound)."""

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    highs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    missing: int = 0

    @classmethod
    def of(cls, values) -> "BitHistogram":
        values = np.asarray(values, dtype=np.float64).ravel()
        nan = np.isnan(values)
        values = values[~nan] + 0.0  # -0.0 -> 0.0
        keys, inverse, counts = np.unique(_bin_keys(values), return_inverse=True,
                                          return_counts=True)
        return cls(keys.astype(np.int64), counts.astype(np.int64),
                   *_bin_extremes(keys.size, inverse, values), int(nan.sum()))

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def merge(self, other: "BitHistogram") -> "BitHistogram":
        keys, inverse = np.unique(np.concatenate([self.keys, other.keys]), return_inverse=True)
        counts = np.zeros(keys.size, dtype=np.int64)
        np.add.at(counts, inverse, np.concatenate([self.counts, other.counts]))
        lows, _ = _bin_extremes(keys.size, inverse, np.concatenate([self.lows, other.lows]))
        _, highs = _bin_extremes(keys.size, inverse, np.concatenate([self.highs, other.highs]))
        return BitHistogram(keys, counts, lows, highs, self.missing + other.missing)

    def quantile(self, q: float) -> float:
        """Nearest-rank q-quantile within 2^-17 relative (NaN when there is no value)."""
        n = self.n
        if n == 0:
            return math.nan
        rank = max(1, math.ceil(q * n))
        index = int(np.searchsorted(np.cumsum(self.counts), rank, side="left"))
        low, high = float(self.lows[index]), float(self.highs[index])
        return low if low == high else low + (high - low) / 2.0


def _bin_extremes(n_bins: int, inverse: np.ndarray, values: np.ndarray):
    lows = np.full(n_bins, np.inf)
    highs = np.full(n_bins, -np.inf)
    np.minimum.at(lows, inverse, values)
    np.maximum.at(highs, inverse, values)
    return lows, highs


@dataclass
class ColumnSummary:
    """n, missing (NaN), exact min / max, the sum (per-piece fsums) and the histogram of one
    float column."""

    n: int = 0
    missing: int = 0
    minimum: float = math.nan
    maximum: float = math.nan
    piece_sums: tuple = ()
    histogram: BitHistogram = field(default_factory=BitHistogram)

    @classmethod
    def of(cls, values) -> "ColumnSummary":
        values = np.asarray(values, dtype=np.float64).ravel()
        finite = values[~np.isnan(values)]
        return cls(n=int(finite.size), missing=int(values.size - finite.size),
                   minimum=float(finite.min()) if finite.size else math.nan,
                   maximum=float(finite.max()) if finite.size else math.nan,
                   piece_sums=(exact_sum(finite),) if finite.size else (),
                   histogram=BitHistogram.of(values))

    def merge(self, other: "ColumnSummary") -> "ColumnSummary":
        return ColumnSummary(n=self.n + other.n, missing=self.missing + other.missing,
                             minimum=_nanmin(self.minimum, other.minimum),
                             maximum=_nanmax(self.maximum, other.maximum),
                             piece_sums=self.piece_sums + other.piece_sums,
                             histogram=self.histogram.merge(other.histogram))

    @property
    def total(self) -> float:
        return exact_sum(self.piece_sums)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    def quantile(self, q: float) -> float:
        return self.histogram.quantile(q)

    def describe(self, quantiles=(0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)) -> dict:
        """JSON-ready: n, missing, min, quantiles, max, mean (NaN where there is no value)."""
        out = {"n": self.n, "missing": self.missing, "min": self.minimum}
        for q in quantiles:
            out[f"q{q:g}"] = self.quantile(q)
        out.update({"max": self.maximum, "mean": self.mean})
        return out


def exact_sum(values) -> float:
    """math.fsum (exactly rounded, so independent of the order), with IEEE results where fsum
    refuses: +-inf when the sum overflows or holds an infinity, NaN for inf - inf."""
    values = [float(v) for v in values]
    try:
        return math.fsum(values)
    except OverflowError:  # finite values whose exact sum is beyond float64
        return math.copysign(math.inf, sum(math.copysign(1.0, v) * min(abs(v), 1e300)
                                           for v in values))
    except ValueError:  # inf + -inf
        return math.nan


def _nanmin(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else min(a, b)


def _nanmax(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)


@dataclass
class Summary:
    """Mergeable summary of a table of per-row results: integer counters (e.g. rows per status,
    tokens per case) and float column summaries. Merge is exact and associative."""

    counters: dict = field(default_factory=dict)  # name -> int
    columns: dict = field(default_factory=dict)   # name -> ColumnSummary
    examples: dict = field(default_factory=dict)  # piece index -> a few rows worth showing

    def merge(self, other: "Summary") -> "Summary":
        counters = dict(self.counters)
        for key, value in other.counters.items():
            counters[key] = counters.get(key, 0) + int(value)
        columns = dict(self.columns)
        for key, value in other.columns.items():
            columns[key] = columns[key].merge(value) if key in columns else value
        return Summary(counters, columns, {**self.examples, **other.examples})

    def first_examples(self, limit: int) -> list:
        """The examples in piece order, at most `limit` (the same whatever the merge order)."""
        out = []
        for index in sorted(self.examples):
            out.extend(self.examples[index][:limit - len(out)])
            if len(out) >= limit:
                break
        return out

    @staticmethod
    def merge_all(parts) -> "Summary":
        total = Summary()
        for part in parts:
            total = total.merge(part)
        return total
