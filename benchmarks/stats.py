"""Small, dependency-free statistics for the benchmark (so the JSON does not depend on numpy)."""

from __future__ import annotations

import math
from typing import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    if len(s) == 1:
        return float(s[0])
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles and extremes of a list of per-round figures."""
    return {
        "median": median(values),
        "q1": percentile(values, 25.0),
        "q3": percentile(values, 75.0),
        "min": float(min(values)) if values else float("nan"),
        "max": float(max(values)) if values else float("nan"),
        "n": len(values),
    }


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (NaN with fewer than two distinct xs)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def distribution(values: Sequence[float]) -> dict[str, float]:
    """A compact summary of a distribution (percentiles), for the JSON result."""
    return {f"p{q:g}": percentile(values, q) for q in (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9)}
