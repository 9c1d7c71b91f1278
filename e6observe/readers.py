"""The per-process readers and their wiring into the sinks.

Each reader returns :data:`~e6observe.readings.Readings` (rows keyed by the metric table's
specs) when a scrape or an OpenTelemetry reader asks; :mod:`e6observe.readings` renders them:

* the watcher's (``source="watcher"``): heartbeat, connector-cache health, open connections,
  fork state - :meth:`e6observe.watcher.Watcher.readings`;
* the connection pools' (``source="pool"``): connections by state, maximum, waiting callers,
  and the wait/create histograms the pool hook records into the recorder;
* the cluster gauges (``source="cluster"``), read from the recorder;
* the runtime's (``source="runtime"``), which keeps its own collector and instruments
  (prometheus_client's process, platform and GC collectors serve most of its families):
  ``runtime.py``.

:func:`prometheus_collectors` and :func:`register_otel` hand all of them to the Prometheus sink
(``PrometheusSink.add_process_collector``) and to an OpenTelemetry meter; ``instrument()`` calls
both once the watcher has started. The OpenTelemetry callbacks report nothing while the watcher
is stopped (an instrument cannot be removed).
"""

from __future__ import annotations

from typing import Any

from . import metrics as M
from ._safe import contain
from .readings import Reader, Readings, ReadingsCollector
from .readings import register_otel as _register

#: The watcher's gauges, in exposition order.
WATCHER = M.of("watcher")
#: The cluster hook's gauges.
CLUSTER = M.of("cluster")
#: Pool gauges, then the pool timing histograms (kept in the recorder).
POOL = M.of("pool", "gauge") + M.of("pool", "histogram")


def watcher_reader(watcher: Any) -> Reader:
    """The watcher's readings (``Watcher.readings()``, which leaves out what it cannot read)."""

    def read() -> Readings:
        return {M.BY_PROM_NAME[name]: [((), value)] for name, value in watcher.readings().items()}

    return read


def cluster_reader(recorder: Any) -> Reader:
    """The cluster gauges, read from ``recorder`` (every family, always)."""

    def read() -> Readings:
        from .hooks.cluster import gauge_values

        values = gauge_values(recorder)
        return {
            spec: [(tuple(labels[n] for n in spec.labels), value) for value, labels in values[spec.prom_name]]
            for spec in CLUSTER
        }

    return read


def pool_reader(recorder: Any, component: str) -> Reader:
    """Every pool's connections (idle/used), maximum and waiting callers by pool name (none while
    no pool exists), and the wait/create histograms the pool hook records into ``recorder`` (none
    before it has seen a pool). The two parts fail apart, each counted under ``component``."""

    def read() -> Readings:
        from .hooks import pool

        out: Readings = {}
        with contain(component):
            pools = pool.read_pools()
            if pools:
                names = sorted(pools)
                out[M.POOL_CONNECTIONS] = [
                    ((n, state), pools[n][state]) for n in names for state in ("idle", "used")
                ]
                out[M.POOL_MAX] = [((n,), pools[n]["max"]) for n in names]
                out[M.POOL_PENDING] = [((n,), pools[n]["pending"]) for n in names]
        with contain(component):
            for spec in (M.POOL_WAIT_TIME, M.POOL_CREATE_TIME):
                rows = [(labels, list(h.snapshot()[:2])) for labels, h in recorder.family(spec).items()]
                if rows:  # the pool hook binds a pool's series when it first sees the pool
                    out[spec] = rows
        return out

    return read


class WatcherCollector(ReadingsCollector):
    """Prometheus collector for the watcher's heartbeat and the connector cache's health."""

    def __init__(self, watcher: Any) -> None:
        super().__init__(WATCHER, watcher_reader(watcher), "watcher.collect")
        self.watcher = watcher


def prometheus_collectors(watcher: Any, runtime_metrics: Any = True) -> list[Any]:
    """Prometheus collectors of every per-process reader: watcher, process runtime (unless
    ``runtime_metrics`` is False), connection pools, the cluster."""
    from .runtime import RuntimeCollector

    rec = watcher.recorder
    runtime = [RuntimeCollector()] if runtime_metrics is not False else []
    return [
        WatcherCollector(watcher),
        *runtime,
        ReadingsCollector(POOL, pool_reader(rec, "hook.pool.collect"), "hook.pool.collect"),
        ReadingsCollector(CLUSTER, cluster_reader(rec), "hook.cluster.collect"),
    ]


def register_otel(meter: Any, watcher: Any, runtime_metrics: Any = True) -> list[Any]:
    """Observable instruments of every per-process reader on ``meter``, silent while ``watcher``
    is stopped. ``runtime_metrics``: True, False (no runtime instruments) or "auto" (silent
    while OpenTelemetry's system-metrics instrumentation is active)."""
    from . import runtime

    rec, enabled = watcher.recorder, watcher.exporting
    rt: list[Any] = []
    if runtime_metrics is not False:
        rt = runtime.register_otel(
            meter, enabled=runtime.runtime_enabled(enabled, auto=runtime_metrics == "auto")
        )
    return (
        _register(meter, WATCHER, watcher_reader(watcher), "watcher.otel", enabled)
        + rt
        + _register(meter, POOL, pool_reader(rec, "hook.pool.otel"), "hook.pool.otel", enabled, 0.0)
        + _register(meter, CLUSTER, cluster_reader(rec), "hook.cluster.otel", enabled, 0.0)
    )


__all__ = [
    "WatcherCollector",
    "prometheus_collectors",
    "register_otel",
    "watcher_reader",
    "pool_reader",
    "cluster_reader",
    "WATCHER",
    "POOL",
    "CLUSTER",
]
