"""Prometheus: a collector over the recorder, in e6observe's own registry, and its endpoint.

Nothing here sits on the hot path and nothing is kept in prometheus_client metric objects a
thread would have to refresh: every scrape reads the recorder (bucket counts, counters, the
blue/green state, ``_safe.internal_errors()``) and builds ``prometheus_client.core`` metric
families from it. Names, labels, help texts and buckets come only from ``e6observe.metrics``.

The collector renders a :class:`View` — the state of one process, or (multi-process mode, see
``sinks/multiprocess.py``) the merge of every worker's state — so both modes share one renderer
and expose the same families; multi-process mode adds a ``pid`` label to the live per-process
gauges.

Failures are contained per family (``sink.prometheus``): a bug renders what it can and counts
itself in ``e6observe_internal_errors_total`` instead of failing the scrape.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Iterable, Optional

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from .. import metrics as M
from .._safe import contain, internal_errors

#: Recorder families rendered by this sink (pool, probe and runtime metrics belong to the
#: collectors their owners register into ``PrometheusSink.registry``).
COUNTERS: tuple[M.MetricSpec, ...] = (M.SWITCHES, M.MISMATCHES, M.EVENTS, M.RETRIES,
                                      M.EVENTS_DROPPED, M.SCOPED_SWITCHES, M.CLUSTER_RESUMES,
                                      M.STRATEGY_REJECTED)
HISTOGRAMS: tuple[M.MetricSpec, ...] = (M.SWITCH_DRAIN, M.RPC_DURATION, M.QUERY_DURATION,
                                        M.CLUSTER_RESUME_DURATION)
#: Every family name this collector renders itself (per-process collectors may not reuse them).
CORE_NAMES = frozenset(s.prom_name for s in COUNTERS + HISTOGRAMS + (
    M.STRATEGY_ACTIVE, M.STRATEGY_PENDING, M.QUERIES_IN_FLIGHT, M.LAST_SWITCH, M.INTERNAL_ERRORS,
    M.BUILD_INFO))

Labels = tuple[str, ...]
#: bucket index -> (trace_id, span_id, value, unix time)
ExemplarMap = dict[int, tuple[str, str, float, float]]

_log = logging.getLogger("e6observe")


class ProcessState:
    """The live blue/green gauges of one process."""

    __slots__ = ("pid", "active", "pending", "in_flight")

    def __init__(self, pid: Optional[int], active: Optional[str], pending: Optional[str],
                 in_flight: dict[str, int]) -> None:
        self.pid = pid
        self.active = active
        self.pending = pending
        self.in_flight = in_flight


class View:
    """What one scrape renders: counters and histograms (summed), gauges per live process."""

    __slots__ = ("counters", "histograms", "exemplars", "internal_errors", "last_switch_time",
                 "processes", "per_pid", "families")

    def __init__(self, per_pid: bool = False) -> None:
        self.counters: dict[str, dict[Labels, float]] = {s.prom_name: {} for s in COUNTERS}
        #: name -> labels -> [per-bucket counts (last is +Inf), sum]
        self.histograms: dict[str, dict[Labels, list[Any]]] = {s.prom_name: {}
                                                               for s in HISTOGRAMS}
        self.exemplars: dict[str, dict[Labels, ExemplarMap]] = {}
        self.internal_errors: dict[str, float] = {}
        self.last_switch_time = 0.0
        self.processes: list[ProcessState] = []
        self.per_pid = per_pid
        #: Multi-process only: families of per-process collectors (runtime, watcher, pools) by
        #: name -> (type, help, [(pid, sample name, labels, value)]), rendered with ``pid``.
        self.families: dict[str, tuple[str, str, list[tuple[int, str, dict[str, str], float]]]] = {}


def view_of(recorder: Any) -> View:
    """The View of one recorder (this process), read now; a part that fails is left out."""
    v = View()
    fams = recorder.families
    for spec in COUNTERS:
        with contain("sink.prometheus"):
            fam = fams.get(spec.prom_name)
            if fam is not None:
                v.counters[spec.prom_name] = {labels: c.value for labels, c in fam.items()}
    for spec in HISTOGRAMS:
        with contain("sink.prometheus"):
            fam = fams.get(spec.prom_name)
            if fam is not None:
                v.histograms[spec.prom_name], ex = _histogram_rows(fam)
                if ex:
                    v.exemplars[spec.prom_name] = ex
    with contain("sink.prometheus"):
        st = recorder.state()
        v.last_switch_time = float(st.get("last_switch_time") or 0.0)
        v.processes.append(ProcessState(None, st.get("active"), st.get("pending"),
                                        dict(st.get("in_flight") or {})))
    return v


def _histogram_rows(fam: Any) -> tuple[dict[Labels, list[Any]], dict[Labels, ExemplarMap]]:
    rows: dict[Labels, list[Any]] = {}
    exemplars: dict[Labels, ExemplarMap] = {}
    for labels, h in fam.items():
        counts, total, _ = h.snapshot()
        rows[labels] = [counts, total]
        if h.exemplars:
            exemplars[labels] = dict(h.exemplars)
    return rows, exemplars


# -- rendering ------------------------------------------------------------------------------
_LE: dict[tuple[float, ...], list[str]] = {}


def _le(bounds: tuple[float, ...]) -> list[str]:
    le = _LE.get(bounds)
    if le is None:
        le = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        le.append("+Inf")
        _LE[bounds] = le
    return le


def histogram_family(spec: M.MetricSpec, rows: dict[Labels, list[Any]],
                     exemplars: Optional[dict[Labels, ExemplarMap]] = None) -> Metric:
    """A HistogramMetricFamily from per-bucket counts: rendered cumulative, exemplars attached."""
    fam = HistogramMetricFamily(spec.prom_name, spec.help, labels=spec.labels, unit="")
    le = _le(spec.buckets)
    for labels, (counts, total) in sorted(rows.items()):
        ex = exemplars.get(labels) if exemplars else None
        buckets: list[Any] = []
        acc = 0
        for i, n in enumerate(counts):
            acc += n
            e = ex.get(i) if ex else None
            if e is not None:
                buckets.append((le[i], acc, Exemplar({"trace_id": e[0], "span_id": e[1]},
                                                     e[2], e[3])))
            else:
                buckets.append((le[i], acc))
        fam.add_metric(list(labels), buckets, total)
    return fam


def counter_family(spec: M.MetricSpec, rows: dict[Labels, float]) -> Metric:
    fam = CounterMetricFamily(spec.prom_name, spec.help, labels=spec.labels)
    for labels, value in sorted(rows.items()):
        fam.add_metric(list(labels), value)
    return fam


def _strategies(active: Optional[str]) -> tuple[str, ...]:
    # blue and green always; a non-blue/green value (``invalid``, ``none``) only while it holds,
    # and only from the bounded label set.
    if active and active not in M.STRATEGIES and active in M.STRATEGY_LABELS:
        return M.STRATEGIES + (active,)
    return M.STRATEGIES


def _gauge(spec: M.MetricSpec, per_pid: bool, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    labels = spec.labels + extra + (("pid",) if per_pid else ())
    return GaugeMetricFamily(spec.prom_name, spec.help, labels=labels)


def _pid(p: ProcessState, per_pid: bool) -> list[str]:
    return [str(p.pid)] if per_pid else []


def _active(v: View) -> Metric:
    fam = _gauge(M.STRATEGY_ACTIVE, v.per_pid)
    for p in v.processes:
        for s in _strategies(p.active):
            fam.add_metric([s] + _pid(p, v.per_pid), 1.0 if p.active == s else 0.0)
    return fam


def _pending(v: View) -> Metric:
    fam = _gauge(M.STRATEGY_PENDING, v.per_pid)
    for p in v.processes:
        for s in _strategies(p.pending):
            fam.add_metric([s] + _pid(p, v.per_pid), 1.0 if p.pending == s else 0.0)
    return fam


def _in_flight(v: View) -> Metric:
    fam = _gauge(M.QUERIES_IN_FLIGHT, v.per_pid)
    for p in v.processes:
        for s in M.STRATEGY_LABELS:
            fam.add_metric([s] + _pid(p, v.per_pid), float(p.in_flight.get(s, 0)))
    return fam


def _last_switch(v: View) -> Metric:
    fam = GaugeMetricFamily(M.LAST_SWITCH.prom_name, M.LAST_SWITCH.help)
    fam.add_metric([], v.last_switch_time)
    return fam


def _internal(v: View) -> Metric:
    fam = CounterMetricFamily(M.INTERNAL_ERRORS.prom_name, M.INTERNAL_ERRORS.help,
                              labels=M.INTERNAL_ERRORS.labels)
    for component, n in sorted(v.internal_errors.items()):
        fam.add_metric([component], n)
    return fam


_BUILD: Optional[tuple[str, str]] = None


def build_labels() -> tuple[str, str]:
    """(e6observe version, installed connector version), read once."""
    global _BUILD
    if _BUILD is None:
        from .._version import __version__, connector_version

        _BUILD = (__version__, (connector_version() or "unknown")[:32])
    return _BUILD


def _build_info(_v: View) -> Metric:
    fam = GaugeMetricFamily(M.BUILD_INFO.prom_name, M.BUILD_INFO.help, labels=M.BUILD_INFO.labels)
    fam.add_metric(list(build_labels()), 1.0)
    return fam


def _names_taken(registry: Any, collector: Any) -> frozenset[str]:
    """Family names ``collector`` yields that another collector of ``registry`` already has."""
    if registry is None:
        return frozenset()
    # Collected, not read from the registry's name index: collectors without describe() are
    # indexed only when the registry auto-describes. Once, at instrument() time.
    existing = {f.name for f in registry.collect()}
    return frozenset(f.name for f in collector.collect() if f.name in existing)


class _Without:
    """A collector minus some families (see :meth:`PrometheusSink.add_process_collector`)."""

    def __init__(self, inner: Any, names: frozenset[str]) -> None:
        self.inner = inner
        self.names = names

    def collect(self) -> Iterable[Metric]:
        return [f for f in self.inner.collect() if f.name not in self.names]


def _per_process_families(v: View) -> Iterable[Metric]:
    for name, (typ, doc, samples) in sorted(v.families.items()):
        fam = Metric(name, doc, typ)
        for pid, sname, labels, value in samples:
            fam.add_sample(sname, dict(labels, pid=str(pid)), value)
        yield fam


def render(v: View, component: str = "sink.prometheus") -> list[Metric]:
    """Every family of the View; a family that fails to render is counted and left out."""
    out: list[Metric] = []
    for spec in COUNTERS:
        with contain(component):
            out.append(counter_family(spec, v.counters.get(spec.prom_name, {})))
    for spec in HISTOGRAMS:
        with contain(component):
            out.append(histogram_family(spec, v.histograms.get(spec.prom_name, {}),
                                        v.exemplars.get(spec.prom_name)))
    for fn in (_active, _pending, _in_flight, _last_switch, _build_info):
        with contain(component):
            out.append(fn(v))
    if v.per_pid:
        with contain(component):
            out.extend(_per_process_families(v))
    # Last, so that errors counted while rendering this very scrape are already in it (the
    # merged multi-process view carries its own, summed, counts).
    with contain(component):
        if not v.per_pid:
            v.internal_errors = dict(internal_errors())
        out.append(_internal(v))
    return out


def describe_families(per_pid: bool = False) -> list[Metric]:
    """Empty families naming everything the collector exposes (for duplicate detection)."""
    v = View(per_pid=per_pid)
    return render(v)


class RecorderCollector:
    """prometheus_client collector over one process's recorder, computed at scrape time."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def describe(self) -> list[Metric]:
        return describe_families()

    def collect(self) -> list[Metric]:
        return render(view_of(self.recorder))


def _opt(options: Any, name: str, default: Any = None) -> Any:
    return getattr(options, name, default) if options is not None else default


class PrometheusSink:
    """The Prometheus side of e6observe: own registry, collector, optional HTTP endpoint.

    ``options`` is an ``e6observe.config.Options`` (any object with the attributes
    ``prometheus_port``, ``prometheus_addr``, ``registry``, ``tls_certfile``, ``tls_keyfile``,
    ``tls_client_cafile``, ``basic_auth``, ``multiprocess_dir``; missing ones take defaults).
    Other components register their own collectors into :attr:`registry`.
    """

    def __init__(self, recorder: Any, options: Any = None) -> None:
        self.recorder = recorder
        self.options = options
        reg = _opt(options, "registry")
        #: The registry /metrics serves. Never prometheus_client's global REGISTRY unless the
        #: user passed it explicitly.
        self.registry: CollectorRegistry = reg if reg is not None else CollectorRegistry()
        if options is not None and hasattr(options, "multiprocess_dir"):
            mp_dir = options.multiprocess_dir
        else:
            mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.multiprocess_dir: Optional[str] = mp_dir or None
        self.writer: Any = None
        if self.multiprocess_dir:
            from .multiprocess import (
                MultiProcessCollector,
                ProcessStateWriter,
                UnusableDirectory,
                report_unusable,
            )

            try:
                self.writer = ProcessStateWriter(self.multiprocess_dir, recorder)
            except UnusableDirectory as exc:
                report_unusable(exc)  # one warning; this process's own metrics are served
                self.multiprocess_dir = None
        if self.writer is not None:
            self.collector: Any = MultiProcessCollector(self.multiprocess_dir or "", own=self.writer)
        else:
            self.collector = RecorderCollector(recorder)
        try:
            self.registry.register(self.collector)
        except Exception:
            if self.writer is not None:
                self.writer.close()
            raise
        self.server: Any = None
        self._lock = threading.Lock()
        self._bind_failed_logged = False
        self._registered: list[Any] = []
        _track(self)

    @property
    def multiprocess(self) -> bool:
        """True when scrapes merge every worker's state from ``multiprocess_dir``."""
        return self.writer is not None

    def add_process_collector(self, collector: Any) -> None:
        """Export a collector of this process's own readings (runtime, watcher, pools).

        Single-process: it is registered into :attr:`registry` (and unregistered by
        :meth:`close`). Multi-process: it is *not* registered; its samples go into this
        process's state file at every :meth:`flush`, and one scrape shows every live process's
        samples with a ``pid`` label — each worker's memory and watcher heartbeat, not just
        those of the process that happens to serve /metrics. Family names must come from the
        metric table and not be one of this sink's own.
        """
        if self.writer is not None:
            self.writer.add_process_collector(collector)
            return
        if getattr(collector, "registry", False) is None:
            collector.registry = self.registry  # (the runtime collector defers to others there)
        taken = _names_taken(self.registry, collector)
        if taken:
            # A shared registry (often prometheus_client.REGISTRY) that already exports
            # process_* / python_gc_*: a second family of the same name makes the whole
            # exposition invalid, so those readings are theirs and ours are left out.
            _log.info("e6observe: the registry already exports %s; e6observe leaves its own "
                      "out", ", ".join(sorted(taken)))
            collector = _Without(collector, taken)
        self.registry.register(collector)
        self._registered.append(collector)

    def start(self) -> PrometheusSink:
        """Start the HTTP endpoint if ``prometheus_port`` is set.

        Raises ``e6observe.server.MetricsServerError`` (an ``OSError`` naming the address) when
        the port cannot be bound; ``instrument()`` turns that into one log line and a count. In
        multi-process mode a taken port is the normal case for all workers but one: it is not
        an error, and :meth:`flush` retries so another worker takes over when the serving one
        exits.
        """
        port = _opt(self.options, "prometheus_port")
        if port is None:
            return self
        from ..server import MetricsServer, MetricsServerError

        with self._lock:
            if self.server is not None and self.server.running:
                return self
            served: Any = self.registry
            if _opt(self.options, "prometheus_low_cardinality"):
                from ..lowcard import LowCardinalityRegistry

                served = LowCardinalityRegistry(self.registry)  # the one seam (e6observe/lowcard.py)
            srv = MetricsServer(
                served, addr=_opt(self.options, "prometheus_addr") or "127.0.0.1",
                port=int(port), certfile=_opt(self.options, "tls_certfile"),
                keyfile=_opt(self.options, "tls_keyfile"),
                client_cafile=_opt(self.options, "tls_client_cafile"),
                basic_auth=_opt(self.options, "basic_auth"),
                **{k: v for k, v in (
                    ("max_head_bytes", _opt(self.options, "http_max_head_bytes")),
                    ("head_timeout", _opt(self.options, "http_head_timeout")),
                    ("write_timeout", _opt(self.options, "http_write_timeout"))) if v is not None})
            self.server = srv
            try:
                srv.start()
            except MetricsServerError:
                if not self.multiprocess:
                    raise
                if not self._bind_failed_logged:
                    self._bind_failed_logged = True
                    _log.info("e6observe: %s is served by another process (multi-process mode);"
                              " this process will take over if it goes away", srv.url)
        return self

    def flush(self) -> None:
        """Publish this process's state (multi-process mode); called once per watcher interval.

        Also retries binding the endpoint in multi-process mode when another worker held it.
        Never raises.
        """
        with contain("sink.multiprocess"):
            if self.writer is not None:
                self.writer.flush()
                srv = self.server
                if srv is not None and not srv.running:
                    try:
                        srv.start()
                    except OSError:
                        pass

    def set_recorder(self, recorder: Any) -> None:
        """Read from another recorder from now on (e.g. a fresh one in a forked child)."""
        self.recorder = recorder
        if self.writer is not None:
            self.writer.set_recorder(recorder)
        else:
            self.collector.recorder = recorder

    def after_fork_in_child(self) -> None:
        """In a forked child: drop the parent's listening socket copy, re-key the state file."""
        with contain("sink.prometheus"):
            srv = self.server
            if srv is not None:
                srv.abandon()
                self.server = None
            if self.writer is not None:
                self.writer.after_fork_in_child()
                # The collector's cache and lock were the parent's; start clean.
                self.collector.reset_after_fork()
        # Another thread may have held this lock at fork time; the child's copy would stay held.
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop the endpoint, unregister the collector, publish the final state. Idempotent."""
        _LIVE.discard(self)
        with contain("sink.prometheus"):
            srv, self.server = self.server, None
            if srv is not None:
                srv.close()
        for c in [self.collector] + self._registered:
            with contain("sink.prometheus"):
                try:
                    self.registry.unregister(c)
                except KeyError:
                    pass
        self._registered.clear()
        if self.writer is not None:
            with contain("sink.multiprocess"):
                self.writer.close()


# Sinks alive in this process, for the fork handler. A plain set: close() removes a sink, and a
# sink that is never closed is the instrumentation's own (it lives as long as the process).
_LIVE: set[PrometheusSink] = set()
_fork_hook_installed = False


def _after_fork_in_child() -> None:
    for sink in list(_LIVE):
        sink.after_fork_in_child()


def _track(sink: PrometheusSink) -> None:
    global _fork_hook_installed
    _LIVE.add(sink)
    # Registered on first use rather than at import (nothing happens at import); fork handlers
    # cannot be unregistered, so it is registered once and iterates the live sinks.
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_installed = True

__all__ = ["PrometheusSink", "RecorderCollector", "View", "ProcessState", "view_of", "render",
           "histogram_family", "counter_family", "COUNTERS", "HISTOGRAMS"]
