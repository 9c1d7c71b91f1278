"""Quantiles and merged snapshots from the recorder's histogram bucket counts.

A leaf module (standard library only): the status page's latency history samples these at
``instrument()`` and every 2 s, and importing them from ``e6observe.v1.convert`` would load
protobuf's ``json_format`` and the generated messages (about 0.35 MiB) into every instrumented
process whether or not anyone opens ``/status``. ``e6observe.v1.convert`` re-exports both.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float:
    """Estimate the ``q`` quantile (0..1) from per-bucket counts.

    ``counts`` has one entry per bound plus the +Inf bucket last (as
    :class:`e6observe.recorder.Histogram` keeps them). Linear interpolation inside the bucket
    the rank falls in, with 0 as the lower edge of the first bucket; a rank in the +Inf bucket
    returns the highest finite bound (the estimate cannot be better). 0.0 when empty.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError("quantile must be within [0, 1]")
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = q * total
    cum = 0
    for i, n in enumerate(counts):
        if n and cum + n >= rank:
            if i >= len(bounds):
                return float(bounds[-1]) if bounds else 0.0
            lower = float(bounds[i - 1]) if i > 0 else 0.0
            upper = float(bounds[i])
            return lower + (upper - lower) * max(0.0, rank - cum) / n
        cum += n
    return float(bounds[-1]) if bounds else 0.0


def merged_histogram(
    children: Iterable[tuple[tuple[str, ...], Any]], label_index: int, value: str
) -> tuple[list[int], float, int]:
    """Sum the snapshots of the histogram children whose label ``label_index`` is ``value``."""
    counts: list[int] = []
    total_sum, total_count = 0.0, 0
    for labels, hist in children:
        if labels[label_index] != value:
            continue
        c, s, n = hist.snapshot()
        if not counts:
            counts = [0] * len(c)
        for i, x in enumerate(c):
            counts[i] += x
        total_sum += s
        total_count += n
    return counts, total_sum, total_count
