"""The instrumentation modes the benchmark compares, each set up in its own worker process.

* ``bare``       - the connector alone (the baseline);
* ``bare-ctl``   - the connector alone again, in a second process: an A/A control whose ratio to
  ``bare`` shows the harness's own noise floor (how far two identical processes differ);
* ``e6o-full``   - e6observe with everything a production set-up would switch on: the Prometheus
  endpoint, OpenTelemetry metrics into an SDK ``MeterProvider`` (periodic reader, 1 s interval,
  exporter that drops the batch), strategy events as OpenTelemetry log records (SDK
  ``LoggerProvider``, processor that drops them) and the watcher thread;
* ``e6o-prom``   - e6observe with the Prometheus endpoint only (``otel=False``), watcher on;
* ``otel-grpc``  - opentelemetry-instrumentation-grpc's ``GrpcInstrumentorClient`` with an SDK
  ``TracerProvider`` whose only span processor counts ended spans and exports nothing;
* ``e6o-otlp``   - e6observe with OTLP on (issue 17): the SDK with the real OTLP/gRPC exporters
  (metrics every second through a ``PeriodicExportingMetricReader``, spans through a
  ``BatchSpanProcessor``, logs through a ``BatchLogRecordProcessor``) sending to the local OTLP
  receiver the runner starts (``otlprecv.py``), plus the Prometheus endpoint and the watcher;
* ``e6o-otlp-deferred`` - ``e6o-otlp`` with ``query_spans="deferred"``: the query span is
  recorded by the querying thread and built by e6observe's span thread (not current during the
  query's RPCs);
* ``e6o-otlp-nospan`` - the same without a tracer provider (OTLP metrics and logs, no query
  span): what the span costs, read against ``e6o-otlp``;
* ``otel-otlp``  - ``GrpcInstrumentorClient`` with the same span exporter and processor: the
  reference for "OTLP on";
* ``bare-sdk``   - the connector alone in a process that carries what ``e6o-full``'s does besides
  the hooks: the same OpenTelemetry SDK set-up (its reader thread at the same interval) and
  e6observe's modules imported, nothing installed: read against ``bare`` and ``e6o-full``, it
  separates what a heavier process costs the connector's own code from what the hooks add
  (a diagnostic; not one of the issue's targets);
* ``e6o-mp``     - e6observe in multi-process mode (``multiprocess_dir``, a fresh directory per
  worker; ``otel=False``): what a gunicorn worker pays per query, its state file written at
  every watcher flush.

The OTLP modes read the receiver's address from ``E6O_BENCH_OTLP`` (``127.0.0.1:port``).

The OpenTelemetry reference is given its cheapest sensible configuration (no exporter, no
batching thread), so "e6observe adds less than a fifth of what OpenTelemetry adds" is measured
against the lowest bar that configuration can set. The e6observe OpenTelemetry reader runs 60
times more often than the SDK's 60 s default, which can only make e6observe look slower.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

MODES = (
    "bare",
    "bare-ctl",
    "e6o-full",
    "e6o-prom",
    "otel-grpc",
    "e6o-otlp",
    "e6o-otlp-nospan",
    "otel-otlp",
    "e6o-mp",
    "e6o-otlp-deferred",
    "bare-sdk",
)
#: The modes a run takes unless ``--modes`` says otherwise (the OTLP ones need ``--otlp``-style
#: opt-in: ``--modes bare,bare-ctl,e6o-otlp,otel-otlp``).
DEFAULT_MODES = ("bare", "bare-ctl", "e6o-full", "e6o-prom", "otel-grpc")
#: Modes that run e6observe (and so have a /metrics endpoint and a watcher).
E6O_MODES = ("e6o-full", "e6o-prom", "e6o-otlp", "e6o-otlp-nospan", "e6o-mp", "e6o-otlp-deferred")
#: Modes exporting over OTLP to the runner's receiver.
OTLP_MODES = ("e6o-otlp", "e6o-otlp-nospan", "otel-otlp", "e6o-otlp-deferred")
#: OpenTelemetry metric reader interval used by ``e6o-full`` (ms).
OTEL_EXPORT_INTERVAL_MS = 1000
#: Watcher interval used by the e6observe modes (s); the out-of-band switch test expects it.
WATCHER_INTERVAL_S = 1.0


def e6observe_available() -> Optional[str]:
    """None when ``e6observe.instrument`` exists, else why the e6observe modes cannot run."""
    try:
        mod = importlib.import_module("e6observe")
    except Exception as exc:  # pragma: no cover - the package itself is broken
        return f"import e6observe failed: {type(exc).__name__}: {exc}"
    try:
        fn = getattr(mod, "instrument", None)
    except Exception as exc:  # the package resolves it lazily from a module not there yet
        return f"e6observe.instrument unavailable: {type(exc).__name__}: {exc}"
    if not callable(fn):
        return "e6observe.instrument() does not exist yet"
    return None


class _DropMetrics:
    """Build lazily: a MetricExporter that drops each batch but remembers its size."""

    @staticmethod
    def make() -> Any:
        from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

        class DropMetricExporter(MetricExporter):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.exports = 0
                self.last_points = 0

            def export(self, metrics_data: Any, timeout_millis: float = 10_000, **kw: Any) -> Any:
                points = 0
                for rm in metrics_data.resource_metrics:
                    for sm in rm.scope_metrics:
                        for m in sm.metrics:
                            points += len(m.data.data_points)
                self.exports += 1
                self.last_points = points
                return MetricExportResult.SUCCESS

            def force_flush(self, timeout_millis: float = 10_000) -> bool:
                return True

            def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
                return None

        return DropMetricExporter()


def _counting_span_processor() -> Any:
    from opentelemetry.sdk.trace import SpanProcessor

    class CountingSpanProcessor(SpanProcessor):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ended = 0

        def on_end(self, span: Any) -> None:
            self.ended += 1

    return CountingSpanProcessor()


def _counting_log_processor() -> Any:
    from opentelemetry.sdk._logs import LogRecordProcessor

    class CountingLogProcessor(LogRecordProcessor):  # type: ignore[misc]
        def __init__(self) -> None:
            self.emitted = 0

        def on_emit(self, log_record: Any) -> None:
            self.emitted += 1

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            return True

    return CountingLogProcessor()


class Mode:
    """One mode's live set-up in a worker: what it installed and how to read it back."""

    def __init__(self, name: str) -> None:
        if name not in MODES:
            raise ValueError(f"unknown mode {name!r}; choose from {MODES}")
        self.name = name
        self.prometheus_port: Optional[int] = None
        self.metric_exporter: Any = None
        self.span_processor: Any = None
        self.log_processor: Any = None
        #: RSS after the application's own OpenTelemetry SDK set-up, before the agent (bytes).
        self.rss_before_agent: Optional[int] = None
        self._teardown: list[Callable[[], None]] = []

    def install(self) -> None:
        """Install the mode's instrumentation. Must run before the first connection is made."""
        if self.name in OTLP_MODES:
            self._install_otlp()
        elif self.name == "bare-sdk":
            self._install_bare_sdk()
        elif self.name == "otel-grpc":
            from opentelemetry import trace
            from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient
            from opentelemetry.sdk.trace import TracerProvider

            tp = TracerProvider()
            self.span_processor = _counting_span_processor()
            tp.add_span_processor(self.span_processor)
            # GrpcInstrumentorClient ignores instrument(tracer_provider=...): its channel
            # wrapper reads ``tracer_provider`` from the kwargs of each grpc.*_channel() call,
            # so the interceptor falls back to the global provider (a no-op one unless set) and
            # records nothing. This worker is its own process: set the global provider.
            trace.set_tracer_provider(tp)
            inst = GrpcInstrumentorClient()
            inst.instrument(tracer_provider=tp)
            self._teardown.append(inst.uninstrument)
        elif self.name in E6O_MODES:
            kwargs: dict[str, Any] = {"prometheus_port": 0, "watcher_interval": WATCHER_INTERVAL_S}
            if self.name == "e6o-mp":
                import shutil
                import tempfile

                d = tempfile.mkdtemp(prefix="e6o-bench-mp-")
                kwargs.update(otel=False, multiprocess_dir=d)
                self._teardown.append(lambda: shutil.rmtree(d, ignore_errors=True))
            elif self.name == "e6o-full":
                mp, lp = self._full_sdk()
                kwargs.update(otel=True, meter_provider=mp, logger_provider=lp)
            else:
                kwargs.update(otel=False)
            import psutil

            # Before anything of e6observe is imported: the agent's import is its cost too.
            self.rss_before_agent = psutil.Process().memory_info().rss
            why = e6observe_available()
            if why:
                raise RuntimeError(why)
            import e6observe

            e6observe.instrument(**kwargs)
            self._teardown.insert(0, e6observe.uninstrument)
            self.prometheus_port = _find_prometheus_port()

    def _full_sdk(self) -> tuple[Any, Any]:
        """``e6o-full``'s OpenTelemetry SDK set-up: a MeterProvider whose periodic reader (1 s)
        drops each batch, a LoggerProvider whose processor counts records."""
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        self.metric_exporter = _DropMetrics.make()
        reader = PeriodicExportingMetricReader(
            self.metric_exporter, export_interval_millis=OTEL_EXPORT_INTERVAL_MS
        )
        mp = MeterProvider(metric_readers=[reader])
        lp = LoggerProvider()
        self.log_processor = _counting_log_processor()
        lp.add_log_record_processor(self.log_processor)
        self._teardown.append(mp.shutdown)
        return mp, lp

    def _install_bare_sdk(self) -> None:
        """``bare-sdk``: e6o-full's SDK set-up and e6observe's modules, nothing installed."""
        self._full_sdk()
        for name in (
            "e6observe._api",
            "e6observe.hooks.channel",
            "e6observe.hooks.cursor",
            "e6observe.hooks.strategy_cache",
            "e6observe.hooks.cluster",
            "e6observe.hooks.pool",
            "e6observe.sinks.prometheus",
            "e6observe.sinks.otel",
            "e6observe.watcher",
            "e6observe.endpoint.server",
        ):
            importlib.import_module(name)

    def _install_otlp(self) -> None:
        import os

        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        ep = os.environ.get("E6O_BENCH_OTLP")
        if not ep:
            raise RuntimeError("E6O_BENCH_OTLP is not set (the runner starts the receiver)")
        tp = TracerProvider()
        tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=ep, insecure=True)))
        self.span_processor = _counting_span_processor()
        tp.add_span_processor(self.span_processor)
        self._teardown.append(tp.shutdown)
        if self.name == "otel-otlp":
            from opentelemetry import trace
            from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient

            trace.set_tracer_provider(tp)  # the interceptor reads the global provider
            inst = GrpcInstrumentorClient()
            inst.instrument(tracer_provider=tp)
            self._teardown.insert(0, inst.uninstrument)
            return
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=ep, insecure=True), export_interval_millis=OTEL_EXPORT_INTERVAL_MS
        )
        mp = MeterProvider(metric_readers=[reader])
        lp = LoggerProvider()
        lp.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=ep, insecure=True)))
        self._teardown += [mp.shutdown, lp.shutdown]
        import psutil

        self.rss_before_agent = psutil.Process().memory_info().rss
        import e6observe

        e6observe.instrument(
            prometheus_port=0,
            watcher_interval=WATCHER_INTERVAL_S,
            otel=True,
            meter_provider=mp,
            tracer_provider=None if self.name == "e6o-otlp-nospan" else tp,
            logger_provider=lp,
            query_spans="deferred" if self.name == "e6o-otlp-deferred" else "current",
        )
        self._teardown.insert(0, e6observe.uninstrument)
        self.prometheus_port = _find_prometheus_port()

    def uninstall(self) -> None:
        for fn in self._teardown:
            try:
                fn()
            except Exception:
                pass
        self._teardown.clear()

    def counts(self) -> dict[str, Any]:
        """What the mode's own sinks saw (spans ended, metric points exported, log records)."""
        out: dict[str, Any] = {}
        if self.span_processor is not None:
            out["spans_ended"] = self.span_processor.ended
        if self.metric_exporter is not None:
            out["otel_exports"] = self.metric_exporter.exports
            out["otel_points_last_export"] = self.metric_exporter.last_points
        if self.log_processor is not None:
            out["otel_log_records"] = self.log_processor.emitted
        return out


def live_sink(component: str) -> Any:
    """The live instrumentation's sink object named ``component`` (e.g. ``sink.prometheus``).

    Reads ``e6observe._api``'s private state: the benchmark needs the sink objects themselves
    (bound port, registry, watcher) and there is no public accessor for them.
    """
    from e6observe import _api

    inst = _api._active
    if inst is None:
        return None
    for name, obj, _stop in inst.sinks:
        if name == component:
            return obj
    return None


def _find_prometheus_port() -> Optional[int]:
    """The port e6observe's /metrics endpoint bound (it was asked for port 0)."""
    sink = live_sink("sink.prometheus")
    server = getattr(sink, "server", None)
    return int(server.port) if server is not None and server.running else None
