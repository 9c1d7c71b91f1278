"""OpenTelemetry export: metrics read from the recorder at collection time, events as log records.

Nothing here runs on the application's hot path. Hooks write to the recorder only; this sink
reads it when a metric reader collects:

- Latency histograms (``db.client.operation.duration``, ``rpc.client.call.duration``,
  ``e6data.strategy.switch.drain_time``, ...) are SDK histograms fed from the recorder: while
  ``Recorder.enable_otel(True)`` is on, each histogram child also keeps a fixed-size delta (per
  bucket count and sum, min, max) of what it observed since the last collection. An observable
  callback takes those deltas: the SDK runs every observable callback of a meter provider before
  it collects the synchronous instruments (``SynchronousMeasurementConsumer.collect`` in SDK
  1.45), so a value observed before a collection is in that collection. Each observation is
  therefore recorded once on the hot path and read by both Prometheus and OpenTelemetry.

  A delta is added to the SDK's explicit-bucket aggregations in one step per series (no value is
  replayed), when every view of every reader aggregates that series as an explicit-bucket
  histogram with e6observe's boundaries (the default: they are the instrument's advisory
  boundaries) - ``sinks/_otel_sdk.py`` checks this through SDK internals and says no to
  anything it does not recognise. A series the SDK has not seen yet gets its first
  value through ``Histogram.record`` (the SDK creates its aggregations then). Otherwise (a view
  with other buckets, an exponential histogram, an SDK whose internals differ) the delta is
  replayed through the public ``Histogram.record``: count, sum, min and max exact, and every
  other value recorded at its bucket's mean, so it lands in the same e6observe bucket. Nothing
  is dropped however long the export interval.
- Everything else mirrors the Prometheus set with observable instruments that read the
  recorder's counters and state: ``e6data.strategy.switches``, ``.active``, ``.pending``, ...
- Strategy events become log records named ``e6data.strategy.<kind>``, emitted on the
  recorder's dispatcher thread. When the logger provider's batch processor queue is full, the
  SDK drops its oldest record; each such drop is counted in
  ``e6observe_events_dropped_total{sink="otlp"}`` (seen by looking at the SDK batch queue just
  before each emit: none is missed, and a batch the export thread takes in between can make
  one look stale, so the count may exceed the true drops by at most one per exported batch).

An unreachable or slow OTLP endpoint therefore costs the application nothing: the metric
exporter blocks its own reader thread (the deltas are fixed-size meanwhile), the log exporter its
batch thread (its queue is bounded), and the recorder's dispatch queue is bounded too.

OpenTelemetry instruments cannot be unregistered, and the SDK ignores a second registration of
the same instrument (and its callbacks). So the instruments of a meter provider are created once
per process and bound to the sink currently started on that provider; ``close()`` unbinds it
and a later sink (after ``uninstrument(); instrument()``) binds to the same instruments.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Iterable, Iterator, Optional

from .. import metrics as M
from .._otelattrs import ERROR_TYPES as _error_types
from .._otelattrs import error_type, event_attributes, rpc_method_names
from .._otelctx import meter as _meter
from .._safe import contain
from ..config import Options
from ..events import Event
from ..readings import OTEL_FACTORY
from . import _otel_sdk as _sdk

SCOPE = "e6observe"
DB_SYSTEM = "e6data"
# ``db.operation.name`` and ``db.namespace`` are left off db.client.operation.duration: the
# conventions make them conditional on being readily available, and the recorder's query
# histogram is not split by statement or database (no query text reaches it); the query spans
# carry both.
#: ``error.type`` per query outcome - the mapping the query spans use too.
ERROR_TYPES = _error_types

_SEVERITY = {"mismatch": "WARN", "retry": "WARN", "suspended_seen": "WARN", "strategy_rejected": "WARN"}


# -- the instruments of one meter provider --------------------------------------------------
#: The sink's method observing each ``source="state"`` entry of the metric table.
STATE_OBSERVERS = {
    M.STRATEGY_ACTIVE: "_observe_active",
    M.STRATEGY_PENDING: "_observe_pending",
    M.LAST_SWITCH: "_observe_last_switch",
    M.QUERIES_IN_FLIGHT: "_observe_in_flight",
}
#: Counters this sink observes: the recorder's (the probe's too: it has its own recorder) and
#: e6observe's internal errors. Runtime counters are the runtime reader's.
_COUNTER_SOURCES = ("recorder", "internal", "probe")


def _observable(meter: Any, spec: M.MetricSpec, callback: Any) -> Any:
    """An observable instrument of ``spec``'s ``otel_kind``."""
    return getattr(meter, OTEL_FACTORY[spec.otel_kind])(
        spec.otel_name, callbacks=[callback], unit=spec.unit, description=spec.help
    )


class _Binding:
    """The instruments created on one meter provider, and the sink that currently feeds them."""

    def __init__(self, meter: Any) -> None:
        self.sink: Optional[OtelSink] = None
        self.lock = threading.Lock()
        self.histograms: dict[str, Any] = {}
        # Registered first, so its callback (which drains the histogram buffers) runs before
        # the other callbacks and, above all, before the synchronous histograms are collected.
        _observable(meter, M.STRATEGY_ACTIVE, self._cb(STATE_OBSERVERS[M.STRATEGY_ACTIVE]))
        for spec in M.ALL:  # every histogram is kept in the recorder (recorder, pool, probe)
            if spec.kind == "histogram" and spec.otel_name:
                self.histograms[spec.prom_name] = meter.create_histogram(
                    spec.otel_name,
                    unit=spec.unit,
                    description=spec.help,
                    explicit_bucket_boundaries_advisory=list(spec.buckets),
                )
        # (e6data.strategy.pending.age and the other cache-health gauges are the watcher's.)
        for spec in M.of("state"):
            if spec is not M.STRATEGY_ACTIVE and spec.otel_name:
                _observable(meter, spec, self._cb(STATE_OBSERVERS[spec]))
        for spec in M.ALL:
            if spec.kind == "counter" and spec.otel_name and spec.source in _COUNTER_SOURCES:
                _observable(meter, spec, self._cb("_observe_counter", spec))

    def _cb(self, method: str, *args: Any) -> Callable[[Any], Iterator[Any]]:
        # The method is looked up on the bound sink at each collection: the instrument outlives
        # any one sink, and a fault injected into the sink's class is seen.
        def callback(options: Any) -> Iterator[Any]:
            sink = self.sink
            if sink is None:
                return iter(())
            with contain("sink.otel.metrics"):
                return iter(list(getattr(sink, method)(*args)))
            return iter(())

        return callback


_bindings: weakref.WeakKeyDictionary[Any, _Binding] = weakref.WeakKeyDictionary()
_bindings_lock = threading.Lock()


def _binding_for(provider: Any) -> _Binding:
    with _bindings_lock:
        b = _bindings.get(provider)
        if b is None:
            b = _Binding(_meter(provider))
            _bindings[provider] = b
        return b


def _is_noop_or_proxy(provider: Any) -> tuple[bool, bool]:
    """(no-op, proxy): a no-op provider never collects; the API's proxy (no global provider
    set yet) may be replaced by a real one later."""
    from opentelemetry import metrics as api

    noop = isinstance(provider, api.NoOpMeterProvider)
    proxy = type(provider).__name__ == "_ProxyMeterProvider"
    return noop, proxy


# -- the sink ----------------------------------------------------------------------------------
class OtelSink:
    """Exports a :class:`~e6observe.recorder.Recorder` through OpenTelemetry.

    ``options``: the validated :class:`~e6observe.config.Options` (None: the defaults); the sink
    reads ``meter_provider`` and ``logger_provider`` (None: the global ones). The ``server.*``
    attributes of ``db.client.operation.duration`` come from ``recorder.server`` (the cluster
    endpoint a hook saw first). One sink per recorder.
    """

    def __init__(self, recorder: Any, options: Optional[Options] = None) -> None:
        self.recorder = recorder
        self.options = options if options is not None else Options()
        self._meter_provider = self.options.meter_provider
        self._logger_provider = self.options.logger_provider
        self._binding: Optional[_Binding] = None
        self._logger: Any = None
        self._log_provider_used: Any = None
        self._deltas_on = False
        self._started = False
        self._drain_lock = threading.Lock()
        #: Deltas added to the SDK in one step / values replayed through ``record`` / first
        #: values recorded to make the SDK create a series (tests, benchmarks).
        self.bulk_points = 0
        self.replayed_values = 0
        self.primed_values = 0
        self._rpc_names = rpc_method_names()
        #: Events this sink has handled (emitted as log records, or failed and counted).
        self.events_handled = 0

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Bind the instruments, start buffering raw values, subscribe to events. Idempotent."""
        if self._started:
            return
        self._started = True
        with contain("sink.otel.metrics"):
            from opentelemetry import metrics as api

            provider = self._meter_provider or api.get_meter_provider()
            noop, proxy = _is_noop_or_proxy(provider)
            if not noop:
                binding = _binding_for(provider)
                with binding.lock:
                    binding.sink = self
                self._binding = binding
                # Behind the proxy no reader may ever collect; start the deltas at the first
                # collection instead, so an unconfigured SDK costs nothing.
                if not proxy:
                    self._enable_deltas()
        with contain("sink.otel.logs"):
            from opentelemetry import _logs

            lp = self._logger_provider or _logs.get_logger_provider()
            self._log_provider_used = lp
            self._logger = _logger(lp)
            self.recorder.subscribe(self._on_event)

    def close(self) -> None:
        """Stop exporting: last drain into the SDK histograms, unsubscribe, unbind."""
        if not self._started:
            return
        self._started = False
        with contain("sink.otel.logs"):
            self.recorder.unsubscribe(self._on_event)
        with contain("sink.otel.metrics"):
            if self._deltas_on:
                self._drain()  # what was observed before close still reaches the exporter
                self.recorder.enable_otel(False)
                self._deltas_on = False
            b = self._binding
            if b is not None:
                with b.lock:
                    if b.sink is self:
                        b.sink = None
            self._binding = None

    def _enable_deltas(self) -> None:
        if not self._deltas_on:
            self._deltas_on = True
            self.recorder.enable_otel(True)

    # -- metrics: histograms ----------------------------------------------------------------
    def _server_attrs(self) -> dict[str, Any]:
        host = port = None
        server = getattr(self.recorder, "server", None)
        if isinstance(server, tuple) and len(server) == 2:
            host, port = server
        out: dict[str, Any] = {}
        if isinstance(host, str) and host:
            out["server.address"] = host
            if isinstance(port, int) and port > 0:
                out["server.port"] = port
        return out

    def _attributes(
        self, spec: M.MetricSpec, labels: tuple[str, ...], server: dict[str, Any]
    ) -> dict[str, Any]:
        if spec is M.QUERY_DURATION:
            strategy, outcome = labels
            attrs = {"db.system.name": DB_SYSTEM, "e6data.strategy": strategy, **server}
            etype = error_type(outcome)
            if etype is not None:
                attrs["error.type"] = etype
            elif outcome == "resumed":  # ok, after waiting for the connector's auto-resume
                attrs["e6data.query.outcome"] = outcome
            return attrs
        if spec is M.RPC_DURATION:
            method, strategy, code = labels
            names = spec.otel_labels  # rpc.method, e6data.strategy, rpc.response.status_code
            attrs = {
                "rpc.system.name": "grpc",
                names[0]: self._rpc_names.get(method, "_OTHER"),
                names[1]: strategy,
                names[2]: code,
                **server,
            }
            if code != "OK":  # a failed call: its status is its error type (as for spans)
                attrs["error.type"] = code
            return attrs
        return dict(zip(spec.otel_labels or spec.labels, labels))

    def _drain(self) -> None:
        """Hand every histogram child's delta to its SDK histogram (collection time only)."""
        b = self._binding
        if b is None:
            return
        with self._drain_lock:
            server = self._server_attrs()
            for prom_name, instrument in b.histograms.items():
                fam = self.recorder.families.get(prom_name)
                if fam is None:
                    continue
                for labels, child in fam.items():
                    delta = child.take_otel()
                    if delta is None:
                        continue
                    attrs = self._attributes(fam.spec, labels, server)
                    self._hand_over(instrument, attrs, delta, child.bounds)

    def _hand_over(
        self, instrument: Any, attrs: dict[str, Any], delta: Any, bounds: tuple[float, ...]
    ) -> None:
        """One series' delta into the SDK: in one step when the SDK's aggregations are ours to
        add to, else value by value through ``Histogram.record``."""
        matches = _sdk.view_matches(instrument, attrs)
        primed = False
        if matches is not None and _sdk.missing_aggregation(matches):
            # The SDK creates a series' aggregations on its first measurement: record one real
            # value (the minimum) through the public API so they exist.
            instrument.record(delta.min, attrs)
            self.primed_values += 1
            primed = True
            _sdk.without_min(delta, bounds)
            if not delta.n:
                return
        if matches is not None and _sdk.add_delta(matches, delta, bounds):
            self.bulk_points += 1
            return
        self.replayed_values += _sdk.replay(instrument.record, attrs, delta, bounds, with_min=not primed)

    # -- metrics: observable callbacks ------------------------------------------------------
    def _observe_active(self) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        if not self._deltas_on:
            self._enable_deltas()  # first collection behind a (formerly) proxy provider
        else:
            self._drain()
        active = self.recorder.state()["active"]
        key = M.STRATEGY_ACTIVE.otel_labels[0]
        return [Observation(1 if s == active else 0, {key: s}) for s in M.STRATEGIES]

    def _observe_pending(self) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        pending = self.recorder.state()["pending"]
        key = M.STRATEGY_PENDING.otel_labels[0]
        return [Observation(1 if s == pending else 0, {key: s}) for s in M.STRATEGIES]

    def _observe_last_switch(self) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(float(self.recorder.state()["last_switch_time"] or 0.0))]

    def _observe_in_flight(self) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        in_flight = self.recorder.state()["in_flight"]
        key = M.QUERIES_IN_FLIGHT.otel_labels[0]
        return [Observation(n, {key: s}) for s, n in sorted(in_flight.items()) if n or s in M.STRATEGIES]

    def _observe_counter(self, spec: M.MetricSpec) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        names = spec.otel_labels or spec.labels
        if spec is M.INTERNAL_ERRORS:
            from .._safe import internal_errors

            return [Observation(n, {names[0]: c}) for c, n in sorted(internal_errors().items())]
        fam = self.recorder.families.get(spec.prom_name)
        if fam is None:
            return []
        if spec is M.MISMATCHES:  # rpc.method is the fully-qualified name, as on the RPC metric
            return [
                Observation(
                    child.value, {names[0]: labels[0], names[1]: self._rpc_names.get(labels[1], "_OTHER")}
                )
                for labels, child in fam.items()
            ]
        return [Observation(child.value, dict(zip(names, labels))) for labels, child in fam.items()]

    # -- events as log records ------------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        try:
            with contain("sink.otel.logs"):
                logger = self._logger
                if logger is None:
                    return
                record = _log_record(ev, self._rpc_names)
                # Best effort: a batch thread may take a batch between this look and the emit
                # (then a drop is counted that did not happen); the window is kept small.
                full = _sdk.full_batch_queues(self._log_provider_used)
                logger.emit(record)
                if full:
                    self.recorder.family(M.EVENTS_DROPPED).counter("otlp").inc(full)
        finally:
            self.events_handled += 1  # only the dispatcher thread writes it


def _logger(provider: Any) -> Any:
    from .._otelctx import SCHEMA_URL
    from .._version import __version__

    try:
        return provider.get_logger(SCOPE, __version__, schema_url=SCHEMA_URL)
    except TypeError:  # pragma: no cover - a provider without schema_url
        return provider.get_logger(SCOPE, __version__)


def _body(ev: Event) -> str:
    if ev.kind == "applied":
        drain = f", drained {ev.drain_seconds:.3f} s" if ev.drain_seconds is not None else ""
        return (
            f"strategy switch {ev.from_strategy} -> {ev.to_strategy} ({ev.cause}{drain}, "
            f"{ev.pinned_queries} pinned)"
        )
    if ev.kind == "announced":
        return f"strategy {ev.to_strategy} announced (active {ev.from_strategy})"
    if ev.kind == "detected":
        return f"strategy {ev.to_strategy} detected"
    if ev.kind == "mismatch":
        return f"strategy mismatch (456) on {ev.method} with {ev.strategy}"
    if ev.kind == "cache_cleared":
        return f"strategy cache cleared (was {ev.from_strategy})"
    if ev.kind == "suspended_seen":
        return f"cluster suspended (503 on {ev.method or 'ClusterService/status'})"
    if ev.kind == "resume_started":
        return f"cluster resume started (status {ev.cluster_status})"
    if ev.kind == "resume_finished":
        took = f" after {ev.duration_seconds:.3f} s" if ev.duration_seconds is not None else ""
        return f"cluster resume {ev.outcome}{took}"
    if ev.kind == "strategy_rejected":
        return f"strategy value refused by the connector ({ev.reason})"
    return f"retry attempt {ev.attempt} ({ev.reason})"


def _log_record(ev: Event, rpc_names: dict[str, str]) -> Any:
    from opentelemetry._logs import LogRecord, SeverityNumber

    severity = _SEVERITY.get(ev.kind, "INFO")
    if ev.kind == "resume_finished" and ev.outcome != "ok":
        severity = "WARN"
    attrs = event_attributes(ev, rpc_names)
    kwargs: dict[str, Any] = dict(
        timestamp=int(ev.time_unix * 1e9),
        severity_text=severity,
        severity_number=SeverityNumber.WARN if severity == "WARN" else SeverityNumber.INFO,
        body=_body(ev),
        attributes=attrs,
    )
    try:
        return LogRecord(event_name=ev.name, **kwargs)
    except TypeError:  # API < 1.31: no event_name; the older convention is an attribute
        kwargs["attributes"] = {**attrs, "event.name": ev.name}
        return LogRecord(**kwargs)


__all__ = ["OtelSink"]
