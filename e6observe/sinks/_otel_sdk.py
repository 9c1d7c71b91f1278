"""OpenTelemetry SDK internals the OTel sink relies on, kept apart from the sink.

Two things the SDK's public API cannot do are done here by reading its internals, only for the
SDK versions in :data:`SDK_INTERNALS_TESTED`, and always with a public-API fallback:

* adding a histogram child's per-bucket delta to the SDK's explicit-bucket aggregations in one
  step (:func:`view_matches`, :func:`missing_aggregation`, :func:`add_delta`); when they say
  no, :func:`replay` records the delta value by value through ``Histogram.record`` (count, sum,
  min, max and e6observe's buckets exact);
* seeing that a logger provider's batch queue is full (:func:`full_batch_queues`), so the
  record the SDK is about to drop is counted.

A wrong guess about the internals cannot corrupt anything: a key that is not there is not
found, a layout that differs makes these functions return None / False / 0, and the sink
takes the public path.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from typing import Any, Callable, Optional

#: The SDK versions whose internals the one-step hand-off was tested against (the minimum and
#: newest of ``./run test``). Outside this range the sink uses the public API only (replay).
SDK_INTERNALS_TESTED = ((1, 30), (1, 45))
_sdk_ok: Optional[bool] = None


def sdk_internals_usable() -> bool:
    """True if the installed SDK's ``major.minor`` is within :data:`SDK_INTERNALS_TESTED`."""
    global _sdk_ok
    if _sdk_ok is None:
        try:
            from importlib.metadata import version

            parts = tuple(int(p) for p in version("opentelemetry-sdk").split(".")[:2])
            lo, hi = SDK_INTERNALS_TESTED
            _sdk_ok = lo <= parts <= hi
        except Exception:
            _sdk_ok = False
    return _sdk_ok


def view_matches(instrument: Any, attrs: dict[str, Any]) -> Optional[list[tuple[Any, Any]]]:
    """``(view match, attribute key)`` for every place the SDK aggregates ``attrs`` of
    ``instrument`` (one per view per reader), or None if the SDK's layout is not recognised.

    Reads SDK internals (``opentelemetry.sdk.metrics._internal``; only for the SDK versions in
    :data:`SDK_INTERNALS_TESTED`): the
    reader storages of the instrument's measurement consumer, their view matches, and the key a
    match files an attribute set under (``_hash_attributes`` where it exists, else the older
    ``frozenset`` of the items). A wrong guess cannot corrupt anything: a key that is not there
    is simply not found, and the caller replays through the public API instead.
    """
    if not sdk_internals_usable():
        return None
    try:
        from opentelemetry.sdk.metrics._internal import _view_instrument_match as vim

        key_of = getattr(vim, "_hash_attributes", None)
        sdk_instrument = getattr(instrument, "_real_instrument", None) or instrument
        storages = list(sdk_instrument._measurement_consumer._reader_storages.values())
        out: list[tuple[Any, Any]] = []
        for storage in storages:
            for match in storage._get_or_init_view_instrument_match(sdk_instrument):
                keys = match._view._attribute_keys
                a = dict(attrs) if keys is None else {k: v for k, v in attrs.items() if k in keys}
                key = key_of(a) if key_of is not None else frozenset(a.items())
                match._lock, match._attributes_aggregation  # noqa: B018 - present, or None
                out.append((match, key))
        return out
    except Exception:
        return None


def missing_aggregation(matches: list[tuple[Any, Any]]) -> bool:
    """True if some match has no aggregation for its key yet."""
    for match, key in matches:
        with match._lock:
            if match._attributes_aggregation.get(key) is None:
                return True
    return False


def add_delta(matches: list[tuple[Any, Any]], delta: Any, bounds: tuple[float, ...]) -> bool:
    """Add ``delta`` to the aggregation of every match in one step, if each is an explicit-bucket
    histogram with ``bounds``; else change nothing and return False.

    Every match's lock is held from the look-up to the addition: a collection that discards
    its aggregations (delta temporality) takes that lock too, so nothing is added to an
    aggregation that has already been collected. The SDK takes a match's lock before its
    aggregation's, and never holds two match locks at once; this keeps the same order.
    """
    from opentelemetry.sdk.metrics._internal.aggregation import (
        _ExplicitBucketHistogramAggregation as Explicit,
    )

    locks = [match._lock for match, _ in matches]
    for lock in locks:
        lock.acquire()
    try:
        aggs = [match._attributes_aggregation.get(key) for match, key in matches]
        n = len(bounds) + 1
        for agg in aggs:
            if (
                type(agg) is not Explicit
                or tuple(agg._boundaries) != tuple(bounds)
                or not isinstance(getattr(agg, "_sum", None), (int, float))
                or (agg._value is not None and len(agg._value) != n)
            ):
                return False
        total = math.fsum(delta.sums)
        for agg in aggs:
            with agg._lock:
                value = agg._value
                if value is None:
                    value = agg._value = [0] * n
                for i, c in enumerate(delta.counts):
                    if c:
                        value[i] += c
                agg._sum += total
                if getattr(agg, "_record_min_max", True):
                    agg._min = min(agg._min, delta.min)
                    agg._max = max(agg._max, delta.max)
        return True
    finally:
        for lock in reversed(locks):
            lock.release()


def without_min(delta: Any, bounds: tuple[float, ...]) -> None:
    """Take one value, the minimum, out of ``delta`` (it was recorded on its own)."""
    i = bisect_left(bounds, delta.min)
    delta.counts[i] -= 1
    delta.sums[i] -= delta.min
    delta.n -= 1


def replay(
    record: Callable[..., Any],
    attrs: dict[str, Any],
    delta: Any,
    bounds: tuple[float, ...],
    with_min: bool = True,
) -> int:
    """Record a delta value by value: the true min and max, and each bucket's other values at
    that bucket's mean (so count, sum, min, max and the e6observe buckets are exact). Returns
    how many values were recorded. ``with_min=False``: the minimum was recorded already and
    is no longer in the delta."""
    lo_i = bisect_left(bounds, delta.min) if with_min else -1
    hi_i = bisect_left(bounds, delta.max)
    recorded = 0
    for i, n in enumerate(delta.counts):
        if not n:
            continue
        picks = []
        if i == lo_i:
            picks.append(delta.min)
        if i == hi_i and len(picks) < n:
            picks.append(delta.max)
        for v in picks:
            record(v, attrs)
        rest = n - len(picks)
        if rest:
            mean = (delta.sums[i] - sum(picks)) / rest
            if i < len(bounds) and mean > bounds[i]:  # rounding: keep it in its bucket
                mean = bounds[i]
            if i > 0 and mean <= bounds[i - 1]:
                mean = math.nextafter(bounds[i - 1], math.inf)
            for _ in range(rest):
                record(mean, attrs)
        recorded += n
    return recorded


def full_batch_queues(provider: Any) -> int:
    """How many of ``provider``'s batch processors have a full queue (their next emit drops
    the oldest record). Reads SDK internals; 0 when they are not there."""
    try:
        multi = getattr(provider, "_multi_log_record_processor", None)
        n = 0
        for proc in getattr(multi, "_log_record_processors", ()):
            batch = getattr(proc, "_batch_processor", None)
            q = getattr(batch, "_queue", None)
            if isinstance(q, deque) and q.maxlen is not None and len(q) >= q.maxlen:
                n += 1
        return n
    except Exception:
        return 0
