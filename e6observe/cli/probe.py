"""``e6observe probe``: the blackbox exporter of e6data.

An idle cluster sends no traffic, so nobody learns that it flipped (or is stuck mid-switch)
until the morning's first query hits a 456. The prober is a tiny application of its own: it
keeps one connection, runs ``SELECT 1`` every ``--interval`` with the real connector, and is
instrumented with e6observe like any application. Its own connector's switches are therefore
the events and strategy metrics it exports (``e6data_strategy_switches_total``,
``e6data_strategy_active``...), on ``--metrics-port`` with the status page, ``/status`` and
``/events``, plus the probe's own series:

* ``e6data_probe_success`` — 1 if the last probe succeeded, else 0;
* ``e6data_probe_duration_seconds`` — each probe (connect if needed, query, fetch, clear);
* ``e6data_probes_total{result}`` — ``success``, ``failure`` or ``timeout``.

A flip of the cluster shows within one interval: the next probe's first RPC sees the announced
strategy or a 456, and the connector switches. Each probe runs on a worker thread with a deadline
(``--timeout``), so a hung cluster is a ``timeout`` result, not a stuck prober. After a failed
or timed-out probe the connection is closed and the next probe reconnects.

Credentials as for ``e6observe check``: ``E6DATA_USERNAME`` / ``E6DATA_PASSWORD`` or
``--credentials-file``, never on the command line, never logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional

from .. import metrics as M
from .._safe import contain
from ..endpoint.failure import EXIT_STATUS as ENDPOINT_EXIT
from ..endpoint.failure import catch_endpoint_failure
from . import _argtypes as A
from ._connopts import (
    ConnectionOptions,
    DeadlineExceeded,
    UsageError,
    add_connection_arguments,
    call_with_deadline,
    describe_error,
    first_scalar,
    options_from_args,
)

log = logging.getLogger("e6observe.probe")

PROBE_QUERY = "SELECT 1"
RESULTS = ("success", "failure", "timeout")
DEFAULT_INTERVAL = 15.0
DEFAULT_METRICS_PORT = 9464
#: How often a failing prober repeats its log line (the first failure and recovery always log).
LOG_REPEAT_SECONDS = 60.0


class ProbeResult:
    """The outcome of one probe."""

    __slots__ = ("result", "seconds", "reason")

    def __init__(self, result: str, seconds: float, reason: str = "") -> None:
        self.result = result
        self.seconds = seconds
        self.reason = reason

    @property
    def ok(self) -> bool:
        return self.result == "success"

    def __repr__(self) -> str:
        return f"ProbeResult({self.result!r}, {self.seconds:.4f}, {self.reason!r})"


class Prober:
    """Runs ``SELECT 1`` against a cluster on a schedule and records the outcome.

    ``recorder`` is the e6observe recorder the results go to (``e6data_probe_duration_seconds``
    and ``e6data_probes_total``); :attr:`last_success` feeds ``e6data_probe_success``.
    """

    def __init__(
        self,
        opts: ConnectionOptions,
        recorder: Any,
        interval: float = DEFAULT_INTERVAL,
        timeout: Optional[float] = None,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0")
        self.opts = opts
        self.recorder = recorder
        self.interval = float(interval)
        self.timeout = float(timeout) if timeout else min(self.interval, 10.0)
        #: 1.0 / 0.0 after the first probe; None before.
        self.last_success: Optional[float] = None
        self.last: Optional[ProbeResult] = None
        self.probes = 0
        self._conn: Any = None
        self._busy = threading.Event()  # a probe's worker is still running
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._failing_since: Optional[float] = None
        self._last_log = 0.0
        for r in RESULTS:  # zero series from the start, so rate() works on the first scrape
            recorder.family(M.PROBES).counter(r)
        recorder.family(M.PROBE_DURATION).histogram()

    # -- one probe --------------------------------------------------------------------------
    def _query(self) -> None:
        try:
            if self._conn is None:
                from e6data_python_connector import e6data_grpc

                self._conn = e6data_grpc.Connection(**self.opts.connection_kwargs())
            cur = self._conn.cursor()
            cur.execute(PROBE_QUERY)
            rows = cur.fetchall()
            # Always clear: an uncleared query id would pin this process's connector to the
            # old strategy and hold up the very flip the prober is there to see.
            cur.clear()
            value = first_scalar(rows)
            if value != 1:
                raise RuntimeError(f"{PROBE_QUERY} returned {value!r}, expected 1")
        finally:
            self._busy.clear()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:  # closing the channel also cancels an RPC a timed-out probe is stuck in
            call_with_deadline(conn.close, 2.0, "e6observe-probe-close")
        except Exception:
            pass

    def probe_once(self) -> ProbeResult:
        """Run one probe now, record it, return its result. Never raises."""
        t0 = time.perf_counter()
        if self._busy.is_set():
            # The previous probe's worker is still stuck (its connection was closed): do not
            # pile up threads behind a hung cluster.
            res = ProbeResult("timeout", 0.0, "previous probe still running")
        else:
            self._busy.set()
            try:
                call_with_deadline(self._query, self.timeout, "e6observe-probe")
                res = ProbeResult("success", time.perf_counter() - t0)
            except DeadlineExceeded as exc:
                res = ProbeResult("timeout", time.perf_counter() - t0, f"no answer: {exc}")
                self._drop_connection()
            except Exception as exc:
                res = ProbeResult(
                    "failure", time.perf_counter() - t0, describe_error(exc, self.opts.credentials)
                )
                self._drop_connection()
        self._record(res)
        return res

    def _record(self, res: ProbeResult) -> None:
        with contain("probe"):
            self.recorder.family(M.PROBES).counter(res.result).inc()
            if res.seconds > 0:
                self.recorder.family(M.PROBE_DURATION).histogram().observe(res.seconds)
        self.last = res
        self.last_success = 1.0 if res.ok else 0.0
        self.probes += 1
        now = time.monotonic()
        if res.ok:
            if self._failing_since is not None:
                log.warning("probe of %s recovered after %.0f s", self.opts.target, now - self._failing_since)
                self._failing_since = None
        else:
            first = self._failing_since is None
            if first:
                self._failing_since = now
            if first or now - self._last_log >= LOG_REPEAT_SECONDS:
                self._last_log = now
                log.warning("probe of %s: %s (%s)", self.opts.target, res.result, res.reason)

    # -- schedule -----------------------------------------------------------------------------
    def run(self, stop: Optional[threading.Event] = None) -> None:
        """Probe every :attr:`interval` until ``stop`` (or :meth:`stop`) is set."""
        stop = stop or self._stop
        next_t = time.monotonic()
        while not stop.is_set() and not self._stop.is_set():
            self.probe_once()
            next_t += self.interval
            now = time.monotonic()
            if next_t <= now:  # a slow probe: skip the ticks it overran, keep the phase
                next_t += ((now - next_t) // self.interval + 1) * self.interval
            if stop.wait(next_t - now):
                break
        self._drop_connection()

    def start(self) -> Prober:
        """Probe on a background thread."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name="e6observe-prober", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the background thread and close the connection."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._thread = None
        self._drop_connection()


class ProbeCollector:
    """Prometheus collector: probe success, duration and counts, read at scrape time."""

    def __init__(self, prober: Prober) -> None:
        self.prober = prober

    def describe(self) -> list[Any]:
        return []  # families are known only at collection; nothing to pre-declare

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from ..sinks.prometheus import counter_family, histogram_family

        out: list[Any] = []
        with contain("probe.collector"):
            rec = self.prober.recorder
            g = GaugeMetricFamily(M.PROBE_SUCCESS.prom_name, M.PROBE_SUCCESS.help)
            if self.prober.last_success is not None:
                g.add_metric([], self.prober.last_success)
            out.append(g)
            out.append(
                histogram_family(
                    M.PROBE_DURATION,
                    {labels: list(h.snapshot()[:2]) for labels, h in rec.family(M.PROBE_DURATION).items()},
                )
            )
            out.append(
                counter_family(M.PROBES, {labels: c.value for labels, c in rec.family(M.PROBES).items()})
            )
        return out


def register_otel(prober: Prober, meter: Any, enabled: Callable[[], bool] = lambda: True) -> list[Any]:
    """``e6data.probe.success`` as an OpenTelemetry observable gauge on ``meter`` (no point
    before the first probe). Duration and counts reach OpenTelemetry through the recorder."""
    from ..runtime import otel_observable

    def cb() -> list[tuple[float, dict[str, Any]]]:
        v = prober.last_success
        return [] if v is None else [(float(v), {})]

    return [otel_observable(meter, M.PROBE_SUCCESS, "gauge", cb, "probe.otel", enabled)]


# -- command line ---------------------------------------------------------------------------------
_SECONDS = A.number(0.05, 3600, what="a number of seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``e6observe probe``."""
    add_connection_arguments(parser)
    g = parser.add_argument_group("probing")
    g.add_argument(
        "--interval",
        type=_SECONDS,
        default=DEFAULT_INTERVAL,
        help=f"seconds between probes (default: {DEFAULT_INTERVAL:g})",
    )
    g.add_argument(
        "--timeout",
        type=_SECONDS,
        default=None,
        help="deadline of one probe in seconds (default: the interval, at most 10)",
    )
    m = parser.add_argument_group(
        "metrics endpoint",
        "Basic auth for the endpoint comes from $E6OBSERVE_BASIC_AUTH (user:password); other "
        "E6OBSERVE_* variables apply as for instrument().",
    )
    m.add_argument(
        "--metrics-port",
        type=A.port,
        default=DEFAULT_METRICS_PORT,
        help=f"port of /metrics, the status page, /status and /events "
        f"(default: {DEFAULT_METRICS_PORT}; 0: any free port)",
    )
    m.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1; 0.0.0.0 in a container)",
    )
    m.add_argument(
        "--metrics-tls-cert",
        metavar="PATH",
        default=None,
        help="serve the endpoint over TLS with this certificate (PEM)",
    )
    m.add_argument("--metrics-tls-key", metavar="PATH", default=None, help="... and this key")
    m.add_argument(
        "--metrics-client-ca",
        metavar="PATH",
        default=None,
        help="require client certificates signed by this CA",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="(default: INFO)"
    )


class _LogFormat(logging.Formatter):
    """``time LEVEL logger: message``, the logger's name left out when the message already
    starts with it (e6observe's own lines say ``e6observe: ...``: no doubled prefix)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        top = record.name.split(".")[0]
        if not record.message.startswith(top + ":"):
            record.message = f"{record.name}: {record.message}"
        return super().formatMessage(record)


def run(args: argparse.Namespace) -> int:
    """Probe until SIGTERM/SIGINT; 0 on a clean stop, 1 if the endpoint cannot start (one line), 2 usage."""
    logging.basicConfig(level=getattr(logging, args.log_level))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_LogFormat())
    try:
        opts = options_from_args(args)
    except UsageError as exc:
        sys.stderr.write(f"e6observe probe: error: {exc}\n")
        return 2
    try:
        instr, url = start_instrumentation(args)
    except EndpointFailed as exc:  # a taken port, unreadable TLS files
        sys.stderr.write(f"e6observe probe: {exc}\n")
        return ENDPOINT_EXIT
    except Exception as exc:  # bad E6OBSERVE_* values
        sys.stderr.write(f"e6observe probe: error: {exc}\n")
        return 1
    prober = Prober(opts, instr.recorder, args.interval, args.timeout)
    instr.attach(prober)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info(
        "probing %s every %g s; metrics, status page and events on %s", opts.target, prober.interval, url
    )
    try:
        prober.run(stop)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        instr.close()
    log.info("stopped")
    return 0


class EndpointFailed(RuntimeError):
    """The prober's metrics endpoint did not start; the message is the one line to show."""


class _Instrumentation:
    """The prober process's own e6observe: recorder, endpoint, the probe collector on it."""

    def __init__(self, recorder: Any, registry: Any, mounted: Any, options: Any = None) -> None:
        self.recorder = recorder
        self.registry = registry
        self.mounted = mounted
        self.options = options
        self._collector: Optional[ProbeCollector] = None

    def attach(self, prober: Prober, meter_provider: Any = None) -> None:
        self._collector = ProbeCollector(prober)
        self.registry.register(self._collector)
        if self.options is not None and getattr(self.options, "otel", False):
            with contain("probe.otel"):
                from opentelemetry import metrics as otel_metrics

                from .._version import __version__

                provider = (
                    meter_provider
                    or getattr(self.options, "meter_provider", None)
                    or otel_metrics.get_meter_provider()
                )
                register_otel(
                    prober,
                    provider.get_meter("e6observe", __version__),
                    enabled=lambda: self._collector is not None,
                )

    def close(self) -> None:
        from .. import _api

        with contain("probe"):
            if self._collector is not None:
                self.registry.unregister(self._collector)
        with contain("probe"):
            if self.mounted is not None:
                self.mounted.unmount()
        _api.uninstrument()


def start_instrumentation(args: argparse.Namespace) -> tuple[_Instrumentation, str]:
    """``e6observe.instrument()`` this process with the endpoint the arguments ask for, and the
    status routes on it. Raises :class:`EndpointFailed` when the endpoint did not start."""
    from .. import _api
    from ..endpoint import status

    # The prober's telemetry is about the cluster, not about an application: name it so
    # (OpenTelemetry resource, the status page's source) unless the deployment did.
    os.environ.setdefault("OTEL_SERVICE_NAME", "e6observe-probe")
    kw: dict[str, Any] = {"prometheus_port": args.metrics_port, "prometheus_addr": args.metrics_addr}
    if args.metrics_tls_cert:
        kw["tls_certfile"] = args.metrics_tls_cert
    if args.metrics_tls_key:
        kw["tls_keyfile"] = args.metrics_tls_key
    if args.metrics_client_ca:
        kw["tls_client_cafile"] = args.metrics_client_ca
    with catch_endpoint_failure() as caught:
        recorder = _api.instrument(**kw)
    inst = _api._active
    sink = next(
        (obj for component, obj, _ in getattr(inst, "sinks", ()) if component == "sink.prometheus"), None
    )
    server = getattr(sink, "server", None)
    if recorder is None or sink is None or server is None or not server.running:
        _api.uninstrument()
        what = caught.message or (f"cannot serve /metrics on {args.metrics_addr}:{args.metrics_port}")
        fix = (
            "check --metrics-tls-cert / --metrics-tls-key / --metrics-client-ca"
            if args.metrics_tls_cert or args.metrics_client_ca
            else "choose another --metrics-port (0 = any free port)"
        )
        raise EndpointFailed(f"{what}; {fix}")
    # instrument() may mount the status routes itself; mount() is a no-op if it did.
    mounted = status.mount_instrumentation(inst)
    return _Instrumentation(recorder, sink.registry, mounted, getattr(inst, "options", None)), server.url
