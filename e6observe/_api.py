"""The public API: ``instrument()``, ``uninstrument()``, ``instrument_connection()``.

``instrument(**options)`` wires e6observe into this process, in this order, each step contained
(a failing step is counted in ``e6observe_internal_errors_total`` and logged once; the others
still run):

1. validate the options (:class:`e6observe.config.Options`; a bad value raises ``ConfigError``);
2. create the :class:`~e6observe.recorder.Recorder` and make it the live one;
3. query spans, if a tracer provider is given or a recording one is set globally;
4. hooks on the connector: strategy cache, channel, cursor, async API;
5. sinks: Prometheus, OpenTelemetry; then the watcher thread.

OpenTelemetry is set up only for an application that uses it: when a provider is passed, when
the application has imported one of the API's signal modules (``opentelemetry.metrics``,
``._logs``, ``.trace``) or when an ``OTEL_PYTHON_*_PROVIDER`` variable asks the API to build
one. Otherwise the OpenTelemetry sink waits for that import (:func:`e6observe.hooks.when_imported`,
as the async hooks wait for the connector's async API) and starts right after it, in the
importing thread; e6observe itself never imports the OpenTelemetry API into such a process
(about 0.6 MiB of start-up RSS, BENCHMARKS.md). ``uninstrument()`` ends the wait.

It imports the connector (a declared dependency) itself, so it is correct whether it runs
before or after the application imports the connector. Connections opened earlier are covered
too: the strategy-cache and cursor hooks are process- and class-level, and a connection's stub
is instrumented for RPC timing at its next ``execute`` (or at once with
:func:`instrument_connection`).

A second ``instrument()`` while instrumented logs a warning and changes nothing (no second
registration, options not re-read). ``uninstrument()`` stops every e6observe thread and puts
back every attribute it replaced (the very objects found at install time). Both are safe to call
from several threads.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import threading
import time
from typing import Any, Optional

from . import _fork
from ._safe import contain, record_internal_error
from .config import ConfigError, Options
from .recorder import Recorder, get_recorder, set_recorder

logger = logging.getLogger("e6observe")

__all__ = [
    "instrument",
    "uninstrument",
    "instrument_connection",
    "is_instrumented",
    "get_recorder",
    "current_options",
    "ConfigError",
]

#: Serialises instrument/uninstrument (re-entrant: a sink may call is_instrumented()).
_lock = threading.RLock()
_active: Optional[_Instrumentation] = None
#: Seconds between looks for a global tracer provider set after instrument().
TRACER_RECHECK_SECONDS = 1.0
#: The OpenTelemetry API modules through which an application sets or reads a provider: once
#: one is imported, the application uses OpenTelemetry and the OpenTelemetry sink starts.
OTEL_API_MODULES = ("opentelemetry.metrics", "opentelemetry._logs", "opentelemetry.trace")
#: The API's variables naming a provider it builds by itself on first use (no import by the
#: application needed): when one is set, the sink starts at once, as before the wait existed.
OTEL_PROVIDER_VARIABLES = {
    "opentelemetry.metrics": "OTEL_PYTHON_METER_PROVIDER",
    "opentelemetry._logs": "OTEL_PYTHON_LOGGER_PROVIDER",
    "opentelemetry.trace": "OTEL_PYTHON_TRACER_PROVIDER",
}


def _otel_api_initializing(but: Optional[str]) -> bool:
    """True while an OpenTelemetry API module other than ``but`` is still running its own code
    (imported, not yet complete: the import system's flag on its spec)."""
    for name in OTEL_API_MODULES:
        spec = getattr(sys.modules.get(name), "__spec__", None)
        if name != but and getattr(spec, "_initializing", False):
            return True
    return False


def _otel_api_in_use(*modules: str) -> bool:
    """True if the application has imported one of the API ``modules`` (default: all of
    :data:`OTEL_API_MODULES`) or set the provider variable of one."""
    env = os.environ
    return any(
        m in sys.modules or env.get(OTEL_PROVIDER_VARIABLES.get(m, "")) for m in modules or OTEL_API_MODULES
    )


#: The connector module the async hooks patch (``hooks.aio.ASYNC_MODULE``): their module is
#: imported once it is, not by instrument() (an application may never use the async API).
ASYNC_API = "e6data_python_connector.async_connection"


#: The async hooks' stand-in (one per process, as every hook object).
_aio_hook: Any = None


def _hooks() -> list[Any]:
    """Every hook, in install order (uninstall runs it backwards)."""
    global _aio_hook
    from .hooks import ImportedLater, channel, cluster, cursor, pool, strategy_cache

    if _aio_hook is None:
        _aio_hook = ImportedLater("aio", "e6observe.hooks.aio", ASYNC_API)
    return [strategy_cache.HOOK, channel.HOOK, cursor.HOOK, _aio_hook, cluster.HOOK, pool.HOOK]


class _Instrumentation:
    """Everything one ``instrument()`` call set up, so that ``uninstrument()`` can undo it."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.recorder = Recorder(event_capacity=options.event_capacity)
        self.ctx: Any = None
        self.tracer: Any = None
        self.hooks: list[Any] = []
        self.sinks: list[tuple[str, Any, str]] = []  # (component, object, stop method)
        self.status: Any = None  # the status routes mounted on the metrics endpoint
        self._next_trace_check = 0.0
        self._trace_lock = threading.Lock()
        #: While the OpenTelemetry sink waits for the application's import of the API: the
        #: watches (see _defer_otel). ``_otel_lock`` orders the late start against stop().
        self.otel_watches: list[Any] = []
        self._otel_lock = threading.RLock()  # re-entrant: a watch may fire while being set
        self._stopped = False

    # -- start --------------------------------------------------------------------------------
    def start(self) -> None:
        from .hooks import HookContext

        rec = self.recorder
        set_recorder(rec)
        self.tracer = self._make_tracer()
        self.ctx = ctx = HookContext(rec, self.options, self.tracer)
        if (
            self.tracer is None
            and self.options.otel
            and self.options.tracer_provider is None
            and self.options.query_spans != "off"
        ):
            ctx.retrace = self._retrace
        for hook in _hooks():
            with contain(f"hook.install.{hook.name}"):
                if hook.install(ctx):
                    self.hooks.append(hook)
                else:
                    logger.debug("e6observe: hook %s not applicable to this connector/Python", hook.name)
        self._start_sinks()

    def _make_tracer(self) -> Any:
        if not self.options.otel or self.options.query_spans == "off":
            return None
        if self.options.tracer_provider is None and not _otel_api_in_use("opentelemetry.trace"):
            return None  # no global provider can be set without that import: nothing loaded
        with contain("tracing"):
            from .tracing import QueryTracer, resolve_tracer_provider

            tp = resolve_tracer_provider(self.options.tracer_provider)
            if tp is not None:
                if self.options.query_spans == "deferred":
                    from .deferred_spans import DeferredQueryTracer

                    return DeferredQueryTracer(tp, self.recorder, self.options.record_query_text)
                return QueryTracer(tp, self.recorder, self.options.record_query_text)
        return None

    def _retrace(self) -> Any:
        """Called by the query hooks while no tracer exists: pick up a global provider that was
        set after instrument(), looking at most once per TRACER_RECHECK_SECONDS."""
        now = time.monotonic()
        if now < self._next_trace_check or not self._trace_lock.acquire(blocking=False):
            return None
        try:
            self._next_trace_check = now + TRACER_RECHECK_SECONDS
            if self.tracer is None:
                self.tracer = self._make_tracer()
                if self.tracer is not None:
                    self.ctx.tracer = self.tracer
            return self.tracer
        finally:
            self._trace_lock.release()

    def _start_sinks(self) -> None:
        opts = self.options
        given = (opts.meter_provider, opts.logger_provider, opts.tracer_provider)
        otel_now = opts.otel and (any(p is not None for p in given) or _otel_api_in_use())
        self._start_component(
            "sink.prometheus", "e6observe.sinks.prometheus", "PrometheusSink", "start", "close"
        )
        if otel_now:
            self._start_component("sink.otel", "e6observe.sinks.otel", "OtelSink", "start", "close")
        self._start_component("watcher", "e6observe.watcher", "Watcher", "start", "stop")
        self._wire_watcher()
        if opts.otel and not otel_now:
            with contain("sink.otel"):
                self._defer_otel()
        self._mount_status()

    def _start_component(self, component: str, module: str, cls_name: str, start: str, stop: str) -> None:
        opts = self.options
        cls = _optional_class(module, cls_name, component)
        if cls is None:
            return
        obj = None
        try:
            obj = cls(self.recorder, opts)
            getattr(obj, start)()
        except OSError as exc:
            if component == "sink.prometheus":
                _port_taken(opts, exc)
            else:
                record_internal_error(component, exc)
        except Exception as exc:
            record_internal_error(component, exc)
        if obj is not None:
            # Even a sink whose start failed part-way is closed on uninstrument.
            self.sinks.append((component, obj, stop))

    def _defer_otel(self) -> None:
        """Start the OpenTelemetry sink once the application imports the API (one watch per
        signal module; the first import starts it and ends the others)."""
        from .hooks import when_imported

        with self._otel_lock:
            for module in OTEL_API_MODULES:
                watch = when_imported(module, functools.partial(self._otel_imported, module))
                if watch is None:  # imported meanwhile (another thread): started just now
                    break
                self.otel_watches.append(watch)
        # In a forked child, a parent thread may have held the lock (inside an import of the
        # API): the child's next import of it would hang.
        _fork.register("locks", self._reset_otel_lock, "fork.otel.deferred")
        # An import that another thread completed while the watches were being set found the
        # lock taken and left the start to this thread.
        if _otel_api_in_use():
            self._otel_imported(None)

    def _otel_imported(self, fired_by: Optional[str]) -> None:
        """The application imported an OpenTelemetry API module: start the sink, as
        ``instrument()`` would have. Runs in the importing thread, right after the code of the
        module ``fired_by`` (contained by its watch); None: called directly.

        Never waits for the lock: another thread that holds it is starting the sink (or
        stopping, or setting the watches, and then looks again). Waiting could deadlock: that
        thread may be importing an API module whose import lock this thread holds."""
        if not self._otel_lock.acquire(blocking=False):
            return
        try:
            if _otel_api_initializing(but=fired_by):
                # E.g. opentelemetry.trace, imported by opentelemetry._logs's own code: the
                # sink needs both whole. The watch of the outer one fires once it is.
                return
            watches, self.otel_watches = self.otel_watches, []
            for watch in watches:
                watch.cancel()
            if self._stopped or any(c == "sink.otel" for c, _, _ in self.sinks):
                return
            self._start_component("sink.otel", "e6observe.sinks.otel", "OtelSink", "start", "close")
            self._wire_otel_readers({component: obj for component, obj, _ in self.sinks})
        finally:
            self._otel_lock.release()

    def _reset_otel_lock(self) -> None:
        self._otel_lock = threading.RLock()

    def _mount_status(self) -> None:
        """The live status page, ``/status`` and ``/events`` beside ``/metrics`` (same address,
        TLS and auth), when the endpoint runs: loaded at their first request
        (``endpoint/routes.py``), the page's latency history started now."""
        with contain("status"):
            from .endpoint import routes

            server, _watcher = routes.endpoint_of(self)
            if server is None:
                return

            def load(history: Any) -> Any:
                from .endpoint import status

                return status.mount_instrumentation(self, history=history)

            self.status = routes.mount_lazily(server, self.recorder, load)

    def _wire_watcher(self) -> None:
        """Export the per-process readers (watcher, runtime, pools, cluster) through both sinks;
        the watcher publishes the multi-process state once per interval."""
        from . import readers

        by_name = {component: obj for component, obj, _ in self.sinks}
        watcher = by_name.get("watcher")
        if watcher is None:
            return
        prom = by_name.get("sink.prometheus")
        if prom is not None:
            with contain("watcher.export.prometheus"):
                for collector in readers.prometheus_collectors(watcher, self.options.runtime_metrics):
                    prom.add_process_collector(collector)
                if prom.multiprocess:
                    watcher.add_flush(prom.flush)
        self._wire_otel_readers(by_name)

    def _wire_otel_readers(self, by_name: dict[str, Any]) -> None:
        """The per-process readers through OpenTelemetry, when its sink runs on a meter
        provider that collects (not the no-op one, not the API's proxy)."""
        watcher = by_name.get("watcher")
        if watcher is not None and "sink.otel" in by_name:
            with contain("watcher.export.otel"):
                from opentelemetry import metrics as otel_metrics

                from . import readers

                provider = self.options.meter_provider or otel_metrics.get_meter_provider()
                no_op: tuple[type, ...] = (otel_metrics.NoOpMeterProvider,)
                try:
                    from opentelemetry.metrics._internal import _ProxyMeterProvider

                    no_op += (_ProxyMeterProvider,)
                except ImportError:  # pragma: no cover - layout of other API versions
                    pass
                if not isinstance(provider, no_op):
                    from ._otelctx import meter

                    readers.register_otel(meter(provider), watcher, self.options.runtime_metrics)

    # -- stop ---------------------------------------------------------------------------------
    def stop(self) -> None:
        with self._otel_lock:  # a late OpenTelemetry start is over, or will not happen
            self._stopped = True
            watches, self.otel_watches = self.otel_watches, []
        for watch in watches:
            watch.cancel()
        _fork.unregister("locks", self._reset_otel_lock)
        if self.status is not None:
            with contain("status"):
                self.status.unmount()  # ends open /events streams before the server closes
            self.status = None
        for component, obj, stop in reversed(self.sinks):
            with contain(component):
                getattr(obj, stop)()
        self.sinks.clear()
        if self.tracer is not None:
            with contain("tracing"):
                self.tracer.close()
        for hook in reversed(self.hooks):
            with contain("hook.uninstall." + hook.name):
                hook.uninstall()
        if self.ctx is not None:
            with contain("hooks"):
                self.ctx.close()
        self.hooks.clear()
        with contain("recorder"):
            self.recorder.stop()
        if get_recorder() is self.recorder:
            set_recorder(None)


def _optional_class(module: str, cls_name: str, component: str) -> Optional[type]:
    """The class; an import error (e.g. an optional exporter package missing) is counted."""
    try:
        mod = importlib.import_module(module)
        cls = getattr(mod, cls_name)
    except Exception as exc:  # e.g. an optional exporter package missing
        record_internal_error(component, exc)
        return None
    return cls if isinstance(cls, type) else None


def _port_taken(opts: Options, exc: OSError) -> None:
    """One clear message for a /metrics port that cannot be bound; counted; nothing raised.
    The wording is :mod:`e6observe.endpoint.failure`'s, which the commands share."""
    from .endpoint.failure import RECORD_ATTR, cannot_serve
    from .endpoint.server import MetricsServerTLSError

    component = "sink.prometheus"
    fix = (
        "check tls_certfile / tls_keyfile / tls_client_cafile (E6OBSERVE_TLS_*)"
        if isinstance(exc, MetricsServerTLSError)
        else "choose another prometheus_port / E6OBSERVE_PROMETHEUS_PORT"
    )
    what = cannot_serve(opts.prometheus_addr, opts.prometheus_port, exc)
    logger.warning(
        "e6observe: %s; instrumentation continues without it (metrics are still collected); %s",
        what,
        fix,
        extra={RECORD_ATTR: what},
    )
    record_internal_error(component, exc, reported=True)


def _in_decode_worker() -> bool:
    try:
        from e6data_python_connector.result_decode_worker import is_decode_worker
    except Exception:
        return False
    try:
        return bool(is_decode_worker())
    except Exception:
        return False


# --- public API ------------------------------------------------------------------------------
def instrument(**options: Any) -> Optional[Recorder]:
    """Instrument the e6data connector in this process; returns the live :class:`Recorder`.

    Options are keyword arguments, each also settable as ``E6OBSERVE_<NAME>`` (keyword >
    environment > default); see :mod:`e6observe.config`. Raises
    :class:`~e6observe.config.ConfigError` on a bad option. Idempotent: while instrumented, a
    further call logs a warning, changes nothing and returns the live recorder. In the
    connector's result-decode worker processes it does nothing and returns None.
    """
    global _active
    opts = Options.resolve(options)
    _fork.register("locks", _reset_after_fork, "fork.api")
    with _lock:
        if _active is not None:
            logger.warning(
                "e6observe.instrument() called while already instrumented: ignored "
                "(options unchanged; call e6observe.uninstrument() first to change them)"
            )
            return _active.recorder
        if _in_decode_worker():
            return None
        inst = _Instrumentation(opts)
        try:
            inst.start()
        except BaseException:
            # Every step is contained; this is a last resort so a half-installed state never
            # outlives the call.
            inst.stop()
            raise
        _active = inst
        return inst.recorder


def _reset_after_fork() -> None:
    """A fresh lock in a forked child: a thread of the parent may have been inside
    ``instrument()`` or ``uninstrument()`` at the fork, and the child's would then hang."""
    global _lock
    _lock = threading.RLock()


def uninstrument() -> bool:
    """Undo :func:`instrument`: stop every e6observe thread and restore every patched attribute.

    Returns False (and does nothing) when not instrumented.
    """
    global _active
    with _lock:
        inst, _active = _active, None
        if inst is None:
            return False
        inst.stop()
        return True


def instrument_connection(conn: Any) -> bool:
    """Instrument one connection opened before :func:`instrument` right now.

    Not required - such a connection is picked up at its next ``execute`` - but makes the RPCs it
    issues before that (``get_tables``, a session refresh ...) timed too. Works for
    ``e6data_python_connector.Connection`` and ``aio.AsyncConnection``. Returns True if the
    connection's stub was instrumented by this call, False if it already was or e6observe is
    not instrumented.
    """
    with _lock:
        if _active is None:
            logger.warning("e6observe.instrument_connection(): call e6observe.instrument() first")
            return False
    from .hooks import aio, channel

    if type(conn).__name__ == "AsyncConnection":
        return aio.HOOK.wrap_connection(conn)
    return channel.HOOK.wrap_connection(conn)


def is_instrumented() -> bool:
    """True between :func:`instrument` and :func:`uninstrument`."""
    return _active is not None


def current_options() -> Optional[Options]:
    """The options of the live instrumentation (None when not instrumented)."""
    inst = _active
    return inst.options if inst is not None else None


def _current_tracer() -> Any:
    inst = _active
    return inst.tracer if inst is not None else None
