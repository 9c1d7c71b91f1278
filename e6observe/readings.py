"""Readings: what a reader measures at collection time, keyed by the metric table's specs.

A *reader* is a function that returns :data:`Readings`: for each
:class:`~e6observe.metrics.MetricSpec` it has a value for, the rows
``(label values in spec.labels order, value)``; a value is a number, or for a histogram
``[per-bucket counts (last is +Inf), sum]``. A spec left out has nothing to report now (a
row-less spec is an empty family). Readers know nothing about exporters:

* :class:`ReadingsCollector` renders a reader's readings into Prometheus families at scrape
  time (in multi-process mode the sink publishes them in this process's state file instead);
* :func:`register_otel` creates one OpenTelemetry observable instrument per spec, of the
  spec's ``otel_kind``, whose callbacks share one reading per collection.

The readers of e6observe's per-process sources (the watcher's, the pools', the cluster
gauges') and their wiring into the sinks are ``readers.py``; the runtime reader is
``runtime.py``. The recorder's own counters, histograms and blue/green state are not readings:
the sinks render the recorder directly (``sinks/scrape.py``, ``sinks/otel.py``).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

from . import metrics as M
from ._safe import contain

#: ``(label values, value)`` rows of one metric.
Rows = list[tuple[tuple[str, ...], Any]]
#: What a reader returns.
Readings = dict[M.MetricSpec, Rows]
Reader = Callable[[], Readings]

#: The OpenTelemetry meter method that creates an observable instrument of each ``otel_kind``.
OTEL_FACTORY = {
    "counter": "create_observable_counter",
    "gauge": "create_observable_gauge",
    "updown": "create_observable_up_down_counter",
}
#: How long one reading serves the OpenTelemetry callbacks of the same collection.
SHARED_READING_SECONDS = 0.25


# -- Prometheus ---------------------------------------------------------------------------------
def family(spec: M.MetricSpec, rows: Rows) -> Any:
    """The Prometheus family of ``spec`` holding ``rows``."""
    from prometheus_client.core import GaugeMetricFamily

    from .sinks.scrape import counter_family, histogram_family

    if spec.kind == "histogram":
        return histogram_family(spec, dict(rows))
    if spec.kind == "counter":
        return counter_family(spec, dict(rows))
    fam = GaugeMetricFamily(spec.prom_name, spec.help, labels=spec.labels)
    for labels, value in rows:
        fam.add_metric(list(labels), value)
    return fam


class ReadingsCollector:
    """prometheus_client collector over one reader: ``specs`` in this order, read at scrape
    time; a failing reading is counted under ``component`` and renders nothing."""

    def __init__(self, specs: Iterable[M.MetricSpec], read: Reader, component: str) -> None:
        self.specs = tuple(specs)
        self.read = read
        self.component = component

    def describe(self) -> list[Any]:
        return []  # registering must not read anything (the connector's cache, pools)

    def collect(self) -> Iterator[Any]:
        out: list[Any] = []
        with contain(self.component):
            values = self.read()
            out = [family(spec, values[spec]) for spec in self.specs if spec in values]
        return iter(out)


# -- OpenTelemetry ------------------------------------------------------------------------------
def otel_observable(
    meter: Any,
    spec: M.MetricSpec,
    kind: Optional[str],
    callback: Callable[[], Iterable[tuple[float, dict[str, Any]]]],
    component: str,
    enabled: Callable[[], bool] = lambda: True,
) -> Any:
    """Create one observable instrument for ``spec`` of ``kind`` (None: the spec's
    ``otel_kind``) whose callback is contained.

    ``callback()`` returns ``(value, attributes)`` pairs. ``enabled()`` false makes the callback
    report nothing: OpenTelemetry has no way to remove an instrument, so a stopped component
    silences its callbacks instead.
    """
    from opentelemetry.metrics import Observation

    def _cb(options: Any) -> list[Any]:
        if not enabled():
            return []
        obs: list[Any] = []
        with contain(component):
            obs = [Observation(v, attrs) for v, attrs in callback()]
        return obs

    factory = getattr(meter, OTEL_FACTORY[kind or spec.otel_kind])
    return factory(spec.otel_name, callbacks=[_cb], unit=spec.unit, description=spec.help)


class _Shared:
    """One reading shared by the callbacks of one collection (a reading is not free: the
    connector's cache, every pool's queue)."""

    def __init__(self, read: Reader, seconds: float) -> None:
        self.read = read
        self.seconds = seconds
        self.at = -float("inf")
        self.values: Readings = {}
        self.lock = threading.Lock()

    def get(self) -> Readings:
        now = time.monotonic()
        with self.lock:
            if now - self.at > self.seconds:
                self.values = self.read()
                self.at = now
            return self.values


def register_otel(
    meter: Any,
    specs: Iterable[M.MetricSpec],
    read: Reader,
    component: str,
    enabled: Callable[[], bool] = lambda: True,
    shared_seconds: float = SHARED_READING_SECONDS,
) -> list[Any]:
    """One observable instrument per spec with an OpenTelemetry name (attributes named by
    ``spec.attribute_names``); returns the instruments. Histogram readings are Prometheus
    only (their OpenTelemetry histograms are fed from the recorder by the OTel sink)."""
    shared = _Shared(read, shared_seconds)

    def cb_for(spec: M.MetricSpec) -> Callable[[], list[tuple[float, dict[str, Any]]]]:
        names = spec.attribute_names

        def cb() -> list[tuple[float, dict[str, Any]]]:
            return [(value, dict(zip(names, labels))) for labels, value in shared.get().get(spec, ())]

        return cb

    return [
        otel_observable(meter, spec, None, cb_for(spec), component, enabled)
        for spec in specs
        if spec.otel_name and spec.kind != "histogram"
    ]


__all__ = [
    "Readings",
    "Reader",
    "Rows",
    "ReadingsCollector",
    "register_otel",
    "otel_observable",
    "family",
    "OTEL_FACTORY",
]
