"""The one table of every metric e6observe exports.

Exporters (Prometheus, OpenTelemetry), dashboards and alert rules are all built from this
table; ``tests/test_metric_contract.py`` fails when a dashboard or alert names a metric that is
not here. Names are a public contract: change them only with a CHANGELOG entry.

Each :class:`MetricSpec` carries the Prometheus name (without the ``_total`` / ``_bucket``
suffixes the exposition adds), the OpenTelemetry instrument name, unit, kind, label names and,
for histograms, bucket boundaries; and where its values come from (``source``, one of
:data:`SOURCES`) and which OpenTelemetry instrument exports it (``otel_kind``). The sinks derive
what they export from those two fields: adding a counter is one entry here (``source="recorder"``)
plus the recorder call that increments it.
"""

from __future__ import annotations

from typing import Optional

from ._colours import COLOURS

#: Every label value e6observe emits comes from a bounded set. These are the sets.
STRATEGIES = COLOURS
#: ``none``: no strategy known yet; ``invalid``: anything a server sent that is not blue/green.
STRATEGY_LABELS = STRATEGIES + ("none", "invalid")
#: Why a switch happened. ``announced``: the server sent ``new_strategy`` and the client flipped
#: once its queries drained; ``mismatch``: the client learned by a 456 error (cache cleared, other
#: colour learned); ``observed``: the watcher saw the cache change with no hook reporting it.
SWITCH_CAUSES = ("announced", "mismatch", "observed")
#: How a query ended. ``switch_interrupted``: it failed because a switch landed mid-flight (a 456
#: on a query that was already admitted under the old colour).
QUERY_OUTCOMES = ("ok", "error", "switch_interrupted", "resumed")
EVENT_KINDS = (
    "detected",
    "announced",
    "applied",
    "mismatch",
    "cache_cleared",
    "retry",
    "suspended_seen",
    "resume_started",
    "resume_finished",
    "strategy_rejected",
)
#: Event kinds about the cluster rather than the strategy: OpenTelemetry name ``e6data.cluster.*``.
CLUSTER_EVENT_KINDS = ("suspended_seen", "resume_started", "resume_finished")
#: Which cache a switch, pending strategy or cache clear happened in. ``process``: the
#: connector's process-wide cache (``e6data_grpc``; the async API's process-level view);
#: ``cluster_manager``: the separate cache of ``strategy.py`` that only the auto-resume cluster
#: manager reads and writes; ``connection``: one connection re-routed by itself (OAuth, after a
#: 456), the process cache left on the old colour.
SWITCH_SCOPES = ("process", "cluster_manager", "connection")
#: How an auto-resume ended: ``ok`` (the cluster answered active), ``failed`` (an error, a
#: ``failed`` status, a refused resume), ``timeout`` (the connector's resume timeout ran out).
RESUME_OUTCOMES = ("ok", "failed", "timeout")
#: The cluster status the connector last saw (ClusterService ``status``, or a 503 from the
#: engine: ``suspended``). ``other``: any status string outside this set.
CLUSTER_STATUSES = ("unknown", "active", "suspended", "resuming", "failed", "other")
#: Why the connector refused a strategy value a server announced (``new_strategy``), bounded:
#: ``unknown`` (not blue/green, e.g. ``purple``), ``padded`` (a colour with whitespace around
#: it), ``oversized`` (longer than 64 characters), ``not_text`` (not a string).
REJECTED_REASONS = ("unknown", "padded", "oversized", "not_text")

# Bucket boundaries. OpenTelemetry's recommended boundaries for db.client.operation.duration
# (seconds), and the same family for RPCs, with one finer low bucket because RPCs against a
# nearby engine routinely finish in well under a millisecond.
DB_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
RPC_DURATION_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
DRAIN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Auto-resume waits: a suspended cluster takes from seconds to several minutes to resume.
RESUME_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0)
POOL_TIME_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


#: Where a metric's values come from, and so which code exports it:
#:
#: - ``recorder``: counters and histograms the hooks write into the recorder; rendered by the
#:   sinks themselves (Prometheus scrape, multi-process merge, OpenTelemetry observable counters
#:   and histograms).
#: - ``state``: the recorder's blue/green state (active, pending, in flight, last switch), gauges
#:   the sinks render per process.
#: - ``internal``: e6observe's own contained failures (``_safe.internal_errors()``).
#: - ``build``: the build-info gauge (Prometheus only).
#: - ``watcher``: readings of the connector's cache and of fork state, taken at collection time.
#: - ``cluster``: the cluster hook's gauges, read from the recorder at collection time.
#: - ``pool``: connection-pool readings, and the pool timing histograms in the recorder.
#: - ``runtime``: process and interpreter statistics (``runtime.py``).
#: - ``probe``: the ``e6observe probe`` command's own metrics (its own registry and meter).
SOURCES = ("recorder", "state", "internal", "build", "watcher", "cluster", "pool", "runtime", "probe")
#: Sources whose values are read per process when a scrape or a metric reader asks (in
#: multi-process mode: published in each worker's state file, shown with a ``pid`` label).
READING_SOURCES = ("watcher", "cluster", "pool", "runtime")
#: OpenTelemetry instrument kinds: a counter, histogram or gauge exports as its own kind; a
#: gauge that counts things (connections, entries, bytes) as an up-down counter (``updown``).
OTEL_KINDS = ("counter", "histogram", "gauge", "updown")


class MetricSpec:
    """One exported metric: its names in both systems, kind, unit, labels, buckets, source.

    Immutable; equal (and hashed) by its fields. A plain class with slots rather than a frozen
    dataclass: a dataclass compiles its generated methods at import, compiler memory that
    ``instrument()`` kept in RSS (issue 17).
    """

    __slots__ = (
        "prom_name",
        "otel_name",
        "kind",
        "unit",
        "help",
        "labels",
        "buckets",
        "otel_labels",
        "source",
        "otel_kind",
    )

    prom_name: str
    otel_name: Optional[str]
    kind: str  # "counter" | "gauge" | "histogram" | "info"
    unit: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]
    otel_labels: tuple[str, ...]  # attribute names when they differ from ``labels``
    #: One of :data:`SOURCES`.
    source: str
    #: One of :data:`OTEL_KINDS`; empty: the same as ``kind``.
    otel_kind: str

    def __init__(
        self,
        prom_name: str,
        otel_name: Optional[str],
        kind: str,
        unit: str,
        help: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = (),
        otel_labels: tuple[str, ...] = (),
        source: str = "recorder",
        otel_kind: str = "",
    ) -> None:
        otel_kind = otel_kind or kind
        if source not in SOURCES or otel_kind not in OTEL_KINDS:
            raise ValueError(
                f"{prom_name}: source {source!r} / otel_kind {otel_kind!r} not in {SOURCES} / {OTEL_KINDS}"
            )
        values = (prom_name, otel_name, kind, unit, help, labels, buckets, otel_labels, source, otel_kind)
        for name, value in zip(self.__slots__, values):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"MetricSpec is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"MetricSpec is immutable: cannot delete {name!r}")

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not MetricSpec:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"MetricSpec({shown})"

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """The OpenTelemetry attribute names of ``labels``, position by position."""
        return self.otel_labels or self.labels

    @property
    def exposed_names(self) -> tuple[str, ...]:
        """Every series name the Prometheus exposition shows for this metric."""
        if self.kind == "counter":
            return (self.prom_name + "_total",)
        if self.kind == "histogram":
            return tuple(self.prom_name + s for s in ("_bucket", "_sum", "_count"))
        if self.kind == "info":
            return (self.prom_name + "_info",) if not self.prom_name.endswith("_info") else (self.prom_name,)
        return (self.prom_name,)


def _c(
    name: str,
    otel: Optional[str],
    unit: str,
    help: str,
    *labels: str,
    otel_labels: tuple[str, ...] = (),
    source: str = "recorder",
    otel_kind: str = "",
) -> MetricSpec:
    return MetricSpec(name, otel, "counter", unit, help, tuple(labels), (), otel_labels, source, otel_kind)


def _g(
    name: str,
    otel: Optional[str],
    unit: str,
    help: str,
    *labels: str,
    otel_labels: tuple[str, ...] = (),
    source: str = "recorder",
    otel_kind: str = "",
) -> MetricSpec:
    return MetricSpec(name, otel, "gauge", unit, help, tuple(labels), (), otel_labels, source, otel_kind)


def _h(
    name: str,
    otel: Optional[str],
    unit: str,
    help: str,
    buckets: tuple[float, ...],
    *labels: str,
    otel_labels: tuple[str, ...] = (),
    source: str = "recorder",
    otel_kind: str = "",
) -> MetricSpec:
    return MetricSpec(
        name, otel, "histogram", unit, help, tuple(labels), buckets, otel_labels, source, otel_kind
    )


# OpenTelemetry attribute names: namespaced (``e6data.*``, ``e6observe.*``) or the semantic
# conventions' own, never a bare ``strategy``; the same name wherever the same thing appears
# (metric attributes, span attributes, event log records).
_STRATEGY = ("e6data.strategy",)


# --- core: switches, mismatches, latency (hooks) -------------------------------------------
STRATEGY_ACTIVE = _g(
    "e6data_strategy_active",
    "e6data.strategy.active",
    "1",
    "1 for the strategy this process's connector routes new queries to, else 0.",
    "strategy",
    otel_labels=_STRATEGY,
    source="state",
)
STRATEGY_PENDING = _g(
    "e6data_strategy_pending",
    "e6data.strategy.pending",
    "1",
    "1 for a strategy the server announced and the connector has not applied yet.",
    "strategy",
    otel_labels=_STRATEGY,
    source="state",
)
SWITCHES = _c(
    "e6data_strategy_switches",
    "e6data.strategy.switches",
    "{switch}",
    "Blue/green switches this process's connector went through.",
    "from",
    "to",
    "cause",
    otel_labels=("e6data.strategy.from", "e6data.strategy.to", "e6data.switch.cause"),
)
#: Switches outside the process-wide cache (scope ``cluster_manager`` or ``connection``, see
#: SWITCH_SCOPES): kept apart so that ``e6data_strategy_switches_total`` still counts one
#: deployment once per process.
SCOPED_SWITCHES = _c(
    "e6data_strategy_scoped_switches",
    "e6data.strategy.scoped_switches",
    "{switch}",
    "Blue/green switches in the cluster manager's own cache or of "
    "single connections (OAuth re-routes), by scope.",
    "from",
    "to",
    "scope",
    otel_labels=("e6data.strategy.from", "e6data.strategy.to", "e6data.strategy.scope"),
)
CLUSTER_MANAGER_ACTIVE = _g(
    "e6data_strategy_cluster_manager_active",
    "e6data.strategy.cluster_manager.active",
    "1",
    "1 for the strategy the auto-resume cluster manager's own cache "
    "holds, else 0 (all 0 before it was used).",
    "strategy",
    otel_labels=("e6data.strategy",),
    source="cluster",
)
CACHE_SPLIT = _g(
    "e6data_strategy_cache_split",
    "e6data.strategy.cache_split",
    "1",
    "1 while the cluster manager's cache and the process cache name different colours, else 0.",
    source="cluster",
)
SWITCH_DRAIN = _h(
    "e6data_strategy_switch_drain_seconds",
    "e6data.strategy.switch.drain_time",
    "s",
    "Seconds from announcement to the applied switch (queries draining).",
    DRAIN_BUCKETS,
)
LAST_SWITCH = _g(
    "e6data_strategy_last_switch_timestamp_seconds",
    "e6data.strategy.last_switch_time",
    "s",
    "Unix time of the last applied switch (0 before the first).",
    source="state",
)
MISMATCHES = _c(
    "e6data_strategy_mismatches",
    "e6data.strategy.mismatches",
    "{error}",
    "456 strategy-mismatch errors received, by strategy sent and RPC method.",
    "strategy",
    "method",
    otel_labels=("e6data.strategy", "rpc.method"),
)
EVENTS = _c(
    "e6data_strategy_events",
    "e6data.strategy.events",
    "{event}",
    "Strategy events emitted, by kind.",
    "kind",
    otel_labels=("e6data.event.kind",),
)
RETRIES = _c(
    "e6data_retries",
    "e6data.client.retries",
    "{retry}",
    "Times the connector's retry loop replayed an operation, by reason.",
    "reason",
    otel_labels=("e6data.retry.reason",),
)
RPC_DURATION = MetricSpec(
    "e6data_rpc_duration_seconds",
    "rpc.client.call.duration",
    "histogram",
    "s",
    "Duration of each gRPC call the connector makes.",
    ("method", "strategy", "code"),
    RPC_DURATION_BUCKETS,
    ("rpc.method", "e6data.strategy", "rpc.response.status_code"),
)
QUERY_DURATION = MetricSpec(
    "e6data_query_duration_seconds",
    "db.client.operation.duration",
    "histogram",
    "s",
    "Duration of each query from execute to clear/close.",
    ("strategy", "outcome"),
    DB_DURATION_BUCKETS,
    ("e6data.strategy", "error.type"),
)
QUERIES_IN_FLIGHT = _g(
    "e6data_queries_in_flight",
    "e6data.client.queries_in_flight",
    "{query}",
    "Queries executed and not yet cleared, by the strategy they are pinned to.",
    "strategy",
    otel_labels=_STRATEGY,
    source="state",
    otel_kind="updown",
)
INTERNAL_ERRORS = _c(
    "e6observe_internal_errors",
    "e6observe.internal_errors",
    "{error}",
    "Failures inside e6observe itself, contained and not raised into the app.",
    "component",
    otel_labels=("e6observe.component",),
    source="internal",
)
EVENTS_DROPPED = _c(
    "e6observe_events_dropped",
    "e6observe.events.dropped",
    "{event}",
    "Events dropped by a bounded queue or sink, by where.",
    "sink",
    otel_labels=("e6observe.sink",),
)
BUILD_INFO = MetricSpec(
    "e6observe_build_info",
    None,
    "gauge",
    "1",
    "Always 1; labels name the e6observe and connector versions.",
    ("version", "connector_version"),
    source="build",
)

# --- auto-resume and rejected strategy values (hooks/cluster.py) ------------------------------
CLUSTER_RESUMES = _c(
    "e6data_cluster_resumes",
    "e6data.cluster.resumes",
    "{resume}",
    "Auto-resumes of a suspended cluster the connector went through, by outcome.",
    "outcome",
    otel_labels=("e6data.cluster.resume.outcome",),
)
CLUSTER_RESUME_DURATION = _h(
    "e6data_cluster_resume_duration_seconds",
    "e6data.cluster.resume.duration",
    "s",
    "Seconds from the first 503 the connector acted on to the cluster "
    "answering active (or the connector giving up).",
    RESUME_BUCKETS,
    "outcome",
    otel_labels=("e6data.cluster.resume.outcome",),
)
CLUSTER_STATUS = _g(
    "e6data_cluster_status",
    "e6data.cluster.status",
    "1",
    "1 for the cluster status the connector last saw, else 0.",
    "status",
    otel_labels=("e6data.cluster.status",),
    source="cluster",
)
STRATEGY_REJECTED = _c(
    "e6data_strategy_rejected",
    "e6data.strategy.rejected",
    "{value}",
    "Strategy values announced by the server that the connector refused, by "
    "why (each refusal; a login that keeps getting one recurses).",
    "reason",
    otel_labels=("e6data.strategy.rejected.reason",),
)

# --- watcher: cache health, heartbeat --------------------------------------------------------
WATCHER_LAST_RUN = _g(
    "e6observe_watcher_last_run_timestamp_seconds",
    "e6observe.watcher.last_run_time",
    "s",
    "Unix time the watcher thread last completed an iteration.",
    source="watcher",
)
PENDING_AGE = _g(
    "e6data_strategy_pending_age_seconds",
    "e6data.strategy.pending.age",
    "s",
    "Seconds the current pending strategy has waited to be applied (0 if none).",
    source="watcher",
)
CACHE_AGE = _g(
    "e6data_strategy_cache_age_seconds",
    "e6data.strategy.cache.age",
    "s",
    "Seconds since the connector last confirmed its cached strategy.",
    source="watcher",
)
QUERY_MAP_ENTRIES = _g(
    "e6data_strategy_query_map_entries",
    "e6data.strategy.query_map.entries",
    "{query}",
    "Entries in the connector's query-to-strategy map.",
    source="watcher",
    otel_kind="updown",
)
SESSION_INVALIDATED = _g(
    "e6data_strategy_session_invalidated",
    "e6data.strategy.session_invalidated",
    "1",
    "1 while the connector's sessions are marked invalid after a switch.",
    source="watcher",
)
CONNECTIONS_OPEN = _g(
    "e6data_connections_open",
    "e6data.client.connections.open",
    "{connection}",
    "Connector connections with an open gRPC channel.",
    source="watcher",
    otel_kind="updown",
)
QUERY_MAP_INHERITED = _g(
    "e6data_strategy_query_map_inherited_entries",
    "e6data.strategy.query_map.inherited_entries",
    "{query}",
    "Query-map entries this process inherited from its parent at fork and "
    "still holds; they block graceful switches here (0 if not forked).",
    source="watcher",
    otel_kind="updown",
)
STRATEGY_LOCK_HELD_AT_FORK = _g(
    "e6data_strategy_lock_held_at_fork",
    "e6data.strategy.lock_held_at_fork",
    "1",
    "1 if the connector's strategy lock was held by another thread "
    "when this process was forked: its queries will block.",
    source="watcher",
)

# --- runtime (psutil / gc), named after prometheus_client's process and gc collectors --------
PROCESS_RSS = _g(
    "process_resident_memory_bytes",
    "process.memory.usage",
    "By",
    "Resident memory size in bytes.",
    source="runtime",
    otel_kind="updown",
)
PROCESS_VMS = _g(
    "process_virtual_memory_bytes",
    "process.memory.virtual",
    "By",
    "Virtual memory size in bytes.",
    source="runtime",
    otel_kind="updown",
)
# USS has no semantic convention: its OpenTelemetry name is e6observe's, outside ``process.*``.
PROCESS_USS = _g(
    "process_unique_memory_bytes",
    "e6observe.process.memory.unique",
    "By",
    "Unique set size in bytes (memory freed if the process exits).",
    source="runtime",
    otel_kind="updown",
)
# OpenTelemetry splits CPU time by ``cpu.mode`` (user, system); Prometheus shows the sum.
PROCESS_CPU = _c(
    "process_cpu_seconds",
    "process.cpu.time",
    "s",
    "User and system CPU time spent, in seconds.",
    otel_labels=("cpu.mode",),
    source="runtime",
)
PROCESS_FDS = _g(
    "process_open_fds",
    "process.unix.file_descriptor.count",
    "{file_descriptor}",
    "Open file descriptors.",
    source="runtime",
    otel_kind="updown",
)
PROCESS_THREADS = _g(
    "process_threads", "process.thread.count", "{thread}", "OS threads.", source="runtime", otel_kind="updown"
)
# prometheus_client's ProcessCollector and PlatformCollector families that e6observe's registry
# exports (their collectors, in runtime.py); Prometheus only.
PROCESS_START = _g(
    "process_start_time_seconds",
    None,
    "s",
    "Start time of the process since unix epoch in seconds.",
    source="runtime",
)
PROCESS_MAX_FDS = _g(
    "process_max_fds", None, "{fd}", "Maximum number of open file descriptors.", source="runtime"
)
PYTHON_INFO = _g(
    "python_info",
    None,
    "1",
    "Python platform information",
    "implementation",
    "major",
    "minor",
    "patchlevel",
    "version",
    source="runtime",
)
_GEN = ("cpython.gc.generation",)
GC_COLLECTIONS = _c(
    "python_gc_collections",
    "cpython.gc.collections",
    "{collection}",
    "Garbage collections, by generation.",
    "generation",
    otel_labels=_GEN,
    source="runtime",
)
GC_COLLECTED = _c(
    "python_gc_objects_collected",
    "cpython.gc.collected_objects",
    "{object}",
    "Objects collected by the garbage collector, by generation.",
    "generation",
    otel_labels=_GEN,
    source="runtime",
)
GC_UNCOLLECTABLE = _c(
    "python_gc_objects_uncollectable",
    "cpython.gc.uncollectable_objects",
    "{object}",
    "Uncollectable objects found, by generation.",
    "generation",
    otel_labels=_GEN,
    source="runtime",
)


# --- connection pools (db.client.connection.* conventions) ----------------------------------
# Gauges and histograms alike carry the conventions' pool attribute name.
_POOL = "db.client.connection.pool.name"
POOL_CONNECTIONS = _g(
    "e6data_pool_connections",
    "db.client.connection.count",
    "{connection}",
    "Pooled connections by state (idle/used).",
    "pool",
    "state",
    otel_labels=(_POOL, "db.client.connection.state"),
    source="pool",
    otel_kind="updown",
)
POOL_MAX = _g(
    "e6data_pool_max_connections",
    "db.client.connection.max",
    "{connection}",
    "Configured maximum connections of a pool.",
    "pool",
    otel_labels=(_POOL,),
    source="pool",
    otel_kind="updown",
)
POOL_PENDING = _g(
    "e6data_pool_pending_requests",
    "db.client.connection.pending_requests",
    "{request}",
    "Callers waiting for a pooled connection.",
    "pool",
    otel_labels=(_POOL,),
    source="pool",
    otel_kind="updown",
)
POOL_CREATE_TIME = _h(
    "e6data_pool_create_time_seconds",
    "db.client.connection.create_time",
    "s",
    "Time to create a pooled connection.",
    POOL_TIME_BUCKETS,
    "pool",
    otel_labels=(_POOL,),
    source="pool",
)
POOL_WAIT_TIME = _h(
    "e6data_pool_wait_time_seconds",
    "db.client.connection.wait_time",
    "s",
    "Time a caller waited for a pooled connection.",
    POOL_TIME_BUCKETS,
    "pool",
    otel_labels=(_POOL,),
    source="pool",
)

# --- prober ---------------------------------------------------------------------------------
PROBE_SUCCESS = _g(
    "e6data_probe_success",
    "e6data.probe.success",
    "1",
    "1 if the last probe query succeeded, else 0.",
    source="probe",
)
PROBE_DURATION = _h(
    "e6data_probe_duration_seconds",
    "e6data.probe.duration",
    "s",
    "Duration of each probe (connect if needed, query, fetch, clear).",
    DB_DURATION_BUCKETS,
    source="probe",
)
PROBES = _c(
    "e6data_probes",
    "e6data.probes",
    "{probe}",
    "Probes run, by result.",
    "result",
    otel_labels=("e6data.probe.result",),
    source="probe",
)

ALL: tuple[MetricSpec, ...] = tuple(v for v in list(globals().values()) if isinstance(v, MetricSpec))
BY_PROM_NAME = {m.prom_name: m for m in ALL}


def of(source: str, kind: Optional[str] = None) -> tuple[MetricSpec, ...]:
    """The table's entries from ``source`` (and of ``kind``, if given), in table order."""
    return tuple(m for m in ALL if m.source == source and (kind is None or m.kind == kind))


#: The recorder's counters and histograms that the sinks render themselves (pool and probe
#: histograms are also kept in the recorder; their owners' readers render them).
COUNTERS = of("recorder", "counter")
HISTOGRAMS = of("recorder", "histogram")


def exposed_series_names() -> set[str]:
    """Every series name (with suffixes) that e6observe may expose on /metrics."""
    out: set[str] = set()
    for m in ALL:
        out.update(m.exposed_names)
    return out
