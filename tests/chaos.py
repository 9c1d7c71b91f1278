"""Shared helpers for the reliability tests and the chaos soak (``tests/soak.py``).

Not a test module. Imported as ``chaos`` by the test files (pytest puts ``tests/`` on the path)
and as ``tests.chaos`` by ``python -m tests.soak``.

* :class:`ConnectorSwitchLog` - the connector's *own* account of every write of its active
  strategy, independent of e6observe (the reference the switch counts are compared with);
* :func:`outcome` / :func:`scenario` - a deterministic client script whose observable results
  (rows, exception types, gRPC codes and details) are compared between an uninstrumented and an
  instrumented run;
* :class:`SimProcess` - the simulator in a child process, driven over a pipe, so that the soak's
  RSS measures the application (connector + e6observe) and not the cluster's state;
* :func:`slope` - least-squares trend of RSS samples;
* small readers for the recorder and the Prometheus exposition.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Any, Callable, Optional

#: Loggers the connector's ``debug=True`` raises to DEBUG; put back by ConnectorSwitchLog.
_DEBUG_LOGGERS = ("e6data_python_connector", "grpc", "grpc._channel", "grpc._server")
_DEBUG_ENV = ("GRPC_PYTHON_LOG_LEVEL", "GRPC_PYTHON_LOG_STDERR")


# -- the connector's own account of its strategy writes ---------------------------------------
class ConnectorSwitchLog(logging.Handler):
    """Every value the connector writes to ``_local_strategy_cache['active_strategy']``, in order.

    The connector (3.0.x) logs each of those writes through ``_strategy_debug_log`` while any
    connection was opened with ``debug=True``, and it does so *inside* its ``_strategy_lock``,
    in the same critical section as the write: ``Setting active strategy: A -> B`` / ``Active
    strategy unchanged: B`` (``_set_active_strategy``), ``Clearing strategy cache (was: A)``
    (``_clear_strategy_cache``), ``Applying pending strategy: A -> B``
    (``_apply_pending_strategy``). So the order of these records is the order of the writes - an
    exact reference that does not go through e6observe at all (polling the cache from a thread
    could miss a value that lived for less than one poll). ``_finish_query_cleanup`` writes
    without logging, but only on the OAuth and result-batch-v2 paths, which the workloads here
    do not use; :meth:`install` refuses connectors that lack the debug log.

    The handler only appends to a list (it runs under the connector's lock: no I/O, no
    connector calls).
    """

    _SET = re.compile(r"Setting active strategy: (\S+) -> (\S+)$")
    _SAME = re.compile(r"Active strategy unchanged: (\S+)$")
    _CLEAR = re.compile(r"Clearing strategy cache \(was: (\S+)\)$")
    _APPLY = re.compile(r"Applying pending strategy: (\S+) -> (\S+)$")

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        #: Values written to active_strategy, None for a clear.
        self.values: list[Optional[str]] = []
        self._conn: Any = None
        self._saved: dict[str, Any] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "strategy" not in msg:
            return
        tail = msg.rsplit(" - ", 1)[-1]
        for pattern, group in ((self._SET, 2), (self._SAME, 1), (self._APPLY, 2)):
            m = pattern.search(tail)
            if m:
                self.values.append(m.group(group))
                return
        if self._CLEAR.search(tail):
            self.values.append(None)

    # -- set-up -----------------------------------------------------------------------------
    def install(self, host: str, port: int, username: str, password: str) -> ConnectorSwitchLog:
        """Turn the connector's strategy log on (one ``debug=True`` connection, never used for
        queries) and capture it; the connector's other debug side effects are undone."""
        from e6data_python_connector import e6data_grpc as g

        if not hasattr(g, "_strategy_debug_log") or not hasattr(g, "_debug_connections"):
            raise RuntimeError("this connector has no strategy debug log")
        self._saved = {name: logging.getLogger(name).level for name in _DEBUG_LOGGERS}
        self._saved.update({f"env:{k}": os.environ.get(k) for k in _DEBUG_ENV})
        # Our handler sits on the connector's logger before the debug connection exists, so the
        # connector does not add its own stderr handler.
        logging.getLogger("e6data_python_connector").addHandler(self)
        self._conn = g.Connection(host=host, port=port, username=username, password=password, debug=True)
        # The strategy log is at INFO; leave everything else as it was (the connector set its
        # own and grpc's loggers to DEBUG, which would log every result batch).
        for name in _DEBUG_LOGGERS:
            logging.getLogger(name).setLevel(self._saved[name])
        logging.getLogger("e6data_python_connector").setLevel(logging.INFO)
        for k in _DEBUG_ENV:
            old = self._saved[f"env:{k}"]
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
        return self

    def uninstall(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        logging.getLogger("e6data_python_connector").removeHandler(self)
        if "e6data_python_connector" in self._saved:
            logging.getLogger("e6data_python_connector").setLevel(self._saved["e6data_python_connector"])

    # -- reading ----------------------------------------------------------------------------
    def switches(self) -> list[tuple[str, str]]:
        """The switches the client went through: each change of the colour it held, ignoring
        clears (a clear followed by the same colour is not a switch; the first colour learned
        is a detection, not a switch) - the definition e6observe documents."""
        out: list[tuple[str, str]] = []
        known: Optional[str] = None
        for v in list(self.values):
            if v is None:
                continue
            if known is not None and v != known:
                out.append((known, v))
            known = v
        return out


# -- comparing a client's observable results ----------------------------------------------------
def outcome(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """What the application observes from ``fn()``: ``("ok", value)`` or ``("raised", type,
    code name, details, args)`` - comparable between runs (exception objects are not)."""
    try:
        return ("ok", fn())
    except Exception as exc:  # the application's view: whatever the connector raised
        code = details = None
        try:
            code = exc.code().name  # type: ignore[attr-defined]
            details = exc.details()  # type: ignore[attr-defined]
        except Exception:
            pass
        args = None if code is not None else tuple(str(a) for a in exc.args)
        return ("raised", type(exc), code, details, args)


def query(conn: Any, sql: str, fetch: str = "all") -> Any:
    """One query on a new cursor: execute, fetch, clear."""
    cur = conn.cursor()
    cur.execute(sql)
    if fetch == "one":
        rows = cur.fetchone()
    elif fetch == "many":
        rows = cur.fetchmany(5)
    else:
        rows = cur.fetchall()
    cur.clear()
    return rows


def scenario(sim: Any, conn: Any) -> list[tuple[Any, ...]]:
    """A deterministic single-threaded client script covering the paths the hooks sit on.

    Rows through every fetch style, a query error, an unsupported query, an injected RPC fault
    (execute and fetch), an announced switch, an abrupt switch between execute and fetch (the
    cursor's fetch and clear fail with 456), recovery through the 456 path, a fake 456 that is no
    switch, a simulator restart (sessions lost, the connector re-authenticates). Returns what
    the application saw at each step, plus the connector's strategy at the end.
    """
    import grpc
    from e6data_python_connector import e6data_grpc as g

    out: list[tuple[Any, ...]] = []
    out.append(outcome(lambda: query(conn, "SELECT 1")))
    out.append(outcome(lambda: query(conn, "SELECT * FROM sample LIMIT 300")))
    out.append(outcome(lambda: query(conn, "SELECT * FROM sample LIMIT 20", "one")))
    out.append(outcome(lambda: query(conn, "SELECT * FROM sample LIMIT 20", "many")))
    out.append(outcome(lambda: query(conn, "SELECT fail()")))
    out.append(outcome(lambda: query(conn, "SELECT name FROM nowhere WHERE x = 'y'")))
    sim.inject_fault("executeStatement", grpc.StatusCode.UNAVAILABLE, "injected", 1)
    out.append(outcome(lambda: query(conn, "SELECT 2")))
    sim.inject_fault("getNextResultBatch", grpc.StatusCode.RESOURCE_EXHAUSTED, "injected", 1)
    out.append(outcome(lambda: query(conn, "SELECT 3")))
    # announced switch: the next responses carry new_strategy; the connector applies it
    sim.announce()
    out.append(outcome(lambda: query(conn, "SELECT 4")))
    sim.complete()
    out.append(outcome(lambda: query(conn, "SELECT 5")))
    out.append(("active", g._local_strategy_cache.get("active_strategy")))
    # abrupt switch between execute and fetch: that cursor's fetch and clear fail with 456
    cur = conn.cursor()
    out.append(outcome(lambda: cur.execute("SELECT * FROM sample") and None))
    sim.flip(announce=False)
    out.append(outcome(cur.fetchall))
    out.append(outcome(cur.clear))
    # a new cursor recovers through the connector's 456 path
    out.append(outcome(lambda: query(conn, "SELECT 6")))
    out.append(("active", g._local_strategy_cache.get("active_strategy")))
    # a 456 with no switch behind it: the connector clears, re-learns the same colour
    sim.inject_fault("prepareStatement", grpc.StatusCode.UNKNOWN, "status: 456", 1)
    out.append(outcome(lambda: query(conn, "SELECT 7")))
    # the cluster restarts: sessions are lost, the connector logs in again
    sim.restart()
    out.append(outcome(lambda: query(conn, "SELECT 8")))
    out.append(outcome(lambda: query(conn, "SELECT COUNT(*) FROM sample")))
    out.append(("active", g._local_strategy_cache.get("active_strategy")))
    return out


# -- identity snapshots of what e6observe may patch -------------------------------------------------
def patchable_classes() -> list[type]:
    """Every connector class e6observe may patch (present in this connector version)."""
    import sys

    from e6data_python_connector import e6data_grpc as g

    classes: list[type] = [g.Connection, g.Cursor]
    try:
        from e6data_python_connector.connection_pool import ConnectionPool

        classes.append(ConnectionPool)
    except ImportError:
        pass
    if sys.version_info >= (3, 11):
        try:
            from e6data_python_connector.async_connection import AsyncConnection
            from e6data_python_connector.async_connection_pool import AsyncConnectionPool
            from e6data_python_connector.async_cursor import AsyncCursor

            classes += [AsyncConnection, AsyncCursor, AsyncConnectionPool]
        except ImportError:
            pass
    return classes


def identity_snapshot() -> dict[str, Any]:
    """Each patchable class's own attribute objects, and the strategy cache object."""
    from e6data_python_connector import e6data_grpc as g

    snap: dict[str, Any] = {f"{c.__module__}.{c.__qualname__}": dict(vars(c)) for c in patchable_classes()}
    snap["cache"] = g._local_strategy_cache
    return snap


def identity_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs between two snapshots (empty when every original is back, by identity)."""
    problems: list[str] = []
    if after["cache"] is not before["cache"]:
        problems.append("strategy cache object replaced")
    for name, attrs in before.items():
        if name == "cache":
            continue
        now = after[name]
        if set(now) != set(attrs):
            problems.append(f"{name}: attributes added/removed {sorted(set(now) ^ set(attrs))}")
        problems += [
            f"{name}.{k} not the original object" for k in attrs if k in now and now[k] is not attrs[k]
        ]
    return problems


# -- reading the recorder and the exposition ---------------------------------------------------------
def counter_values(rec: Any, spec: Any) -> dict[tuple[str, ...], float]:
    """Non-zero children of one counter family."""
    return {k: c.value for k, c in rec.family(spec).items() if c.value}


def histogram_counts(rec: Any, spec: Any) -> dict[tuple[str, ...], int]:
    return {k: h.count for k, h in rec.family(spec).items() if h.count}


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s")


def series(text: str, prefix: str = "") -> set[str]:
    """The distinct series (name + label set) of a text exposition, optionally by name prefix."""
    out: set[str] = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1).startswith(prefix):
            out.add(m.group(1) + (m.group(2) or ""))
    return out


def label_values(text: str, label: str) -> set[str]:
    """Every value a label takes in a text exposition."""
    return set(re.findall(label + r'="([^"]*)"', text))


def http_get(url: str, headers: Optional[dict[str, str]] = None, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of a GET (no redirects, no proxies)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def metrics_url() -> Optional[str]:
    """The /metrics URL of the live instrumentation (None without an endpoint)."""
    from e6observe import _api

    inst = _api._active
    if inst is None:
        return None
    for component, obj, _ in inst.sinks:
        if component == "sink.prometheus" and getattr(obj, "server", None) is not None:
            srv = obj.server
            if srv.running:
                return f"http://127.0.0.1:{srv.port}/metrics"
    return None


def sink(component: str) -> Any:
    """The live instrumentation's sink object for ``component`` (or None)."""
    from e6observe import _api

    inst = _api._active
    for name, obj, _ in inst.sinks if inst is not None else ():
        if name == component:
            return obj
    return None


# -- memory trend ---------------------------------------------------------------------------------
def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t, y)`` points (y units per t unit); 0 for fewer than 2."""
    n = len(points)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in points) / var


def rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


# -- the simulator in its own process -------------------------------------------------------------
def _sim_process_main(conn: Any, kwargs: dict[str, Any]) -> None:
    """Child process: host one Simulator and execute the parent's commands until ``stop``."""
    import grpc

    from e6observe.sim import Simulator

    sim = Simulator(**kwargs)
    try:
        sim.start()
        conn.send(("ok", (sim.host, sim.port)))
    except BaseException as exc:
        conn.send(("error", repr(exc)))
        return
    while True:
        try:
            name, args, kw = conn.recv()
        except EOFError:
            break
        try:
            if name == "stop":
                sim.stop()
                conn.send(("ok", None))
                break
            if name == "inject_fault":
                args = (args[0], getattr(grpc.StatusCode, args[1])) + tuple(args[2:])
            if name in ("active", "pending", "port", "running"):
                result = getattr(sim, name)  # properties
            else:
                result = getattr(sim, name)(*args, **kw)
            conn.send(("ok", result))
        except BaseException as exc:  # reported to the parent, which raises it
            conn.send(("error", repr(exc)))
    sim.stop()


class SimProcess:
    """A :class:`~e6observe.sim.Simulator` in a child process (spawned), driven over a pipe.

    Methods mirror the simulator's (``announce``, ``complete``, ``flip``, ``inject_fault`` with a
    code *name*, ``clear_faults``, ``restart``, ``counters``...). Calls are serialised.
    """

    def __init__(self, **kwargs: Any) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_sim_process_main, args=(child, kwargs), name="e6observe-sim-process", daemon=True
        )
        self._lock = threading.Lock()
        self._proc.start()
        child.close()
        if not self._conn.poll(60):
            self._proc.kill()
            raise RuntimeError("simulator process did not start within 60 s")
        status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"simulator process failed to start: {value}")
        self.host, self.port = value

    def call(self, name: str, *args: Any, timeout: float = 60.0, **kwargs: Any) -> Any:
        with self._lock:
            self._conn.send((name, args, kwargs))
            if not self._conn.poll(timeout):
                raise TimeoutError(f"simulator process: {name} took over {timeout} s")
            status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"simulator process: {name}: {value}")
        return value

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *a, **k: self.call(name, *a, **k)

    def stop(self) -> None:
        try:
            if self._proc.is_alive():
                self.call("stop", timeout=15)
        except Exception:
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


# -- instrument() with every output on ------------------------------------------------------------
class Rig:
    """``e6observe.instrument()`` with every output it has switched on and readable in memory.

    /metrics on a free loopback port with the status routes (/status, /events) mounted;
    OpenTelemetry metrics (an in-memory reader), events as log records (in-memory exporter) and
    query spans (in-memory span exporter); a fast watcher. :meth:`outputs` reads them all as
    text, for secret and containment checks. ``record_query_text=None`` leaves that option to
    e6observe's default.
    """

    def __init__(
        self, record_query_text: Optional[bool] = None, watcher_interval: float = 0.05, **extra: Any
    ) -> None:
        self.record_query_text = record_query_text
        self.watcher_interval = watcher_interval
        self.extra = extra
        self.rec: Any = None
        self.mounted: Any = None

    def start(self) -> Rig:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        import e6observe
        from e6observe import _api
        from e6observe.endpoint import status

        try:
            from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as InMemoryLogs
        except ImportError:  # older SDK name
            from opentelemetry.sdk._logs.export import InMemoryLogExporter as InMemoryLogs

        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.log_exporter = InMemoryLogs()
        self.logger_provider = LoggerProvider()
        self.logger_provider.add_log_record_processor(SimpleLogRecordProcessor(self.log_exporter))
        self.span_exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        opts: dict[str, Any] = dict(
            prometheus_port=0,
            meter_provider=self.meter_provider,
            logger_provider=self.logger_provider,
            tracer_provider=self.tracer_provider,
            watcher_interval=self.watcher_interval,
        )
        if self.record_query_text is not None:
            opts["record_query_text"] = self.record_query_text
        opts.update(self.extra)
        self.rec = e6observe.instrument(**opts)
        assert self.rec is not None
        inst = _api._active
        self.mounted = status.mount_instrumentation(inst)
        return self

    def stop(self) -> None:
        import e6observe

        if self.mounted is not None:
            self.mounted.unmount()
            self.mounted = None
        e6observe.uninstrument()
        for p in ("meter_provider", "logger_provider", "tracer_provider"):
            provider = getattr(self, p, None)
            if provider is not None:
                try:
                    provider.shutdown()
                except Exception:
                    pass

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- outputs ------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        url = metrics_url()
        assert url is not None, "no /metrics endpoint"
        return url.rsplit("/", 1)[0]

    def scrape(self, openmetrics: bool = False) -> str:
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}
        code, body = http_get(self.base + "/metrics", headers)
        assert code == 200, (code, body[:200])
        return body

    def status(self) -> str:
        code, body = http_get(self.base + "/status")
        assert code == 200, (code, body[:200])
        return body

    def events(self, timeout: float = 3.0) -> str:
        """The /events stream replayed from the start of the ring, read until it has sent every
        event emitted so far (or ``timeout``)."""
        import http.client

        want = f"id: {self.rec.ring.emitted}\n"
        conn = http.client.HTTPConnection("127.0.0.1", int(self.base.rsplit(":", 1)[1]), timeout=timeout)
        try:
            conn.request("GET", "/events?since=0")
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            buf = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and want.encode() not in buf:
                try:
                    chunk = resp.fp.read1(65536)  # type: ignore[union-attr]
                except (TimeoutError, OSError):
                    break
                if not chunk:
                    break
                buf += chunk
            return buf.decode("utf-8", "replace")
        finally:
            conn.close()

    def otel_metrics(self) -> str:
        data = self.reader.get_metrics_data()
        return data.to_json() if data is not None else ""

    def otel_logs(self) -> str:
        self.logger_provider.force_flush()
        out = []
        for item in self.log_exporter.get_finished_logs():
            lr = getattr(item, "log_record", item)
            out.append(
                repr((getattr(lr, "event_name", None), lr.body, dict(lr.attributes or {}), lr.severity_text))
            )
        return "\n".join(out)

    def spans(self) -> list[Any]:
        return list(self.span_exporter.get_finished_spans())

    def spans_text(self) -> str:
        return "\n".join(s.to_json() for s in self.spans())

    def ring_text(self) -> str:
        return "\n".join(repr(e.to_dict()) for e in self.rec.ring.snapshot())

    def outputs(self) -> dict[str, str]:
        """Every output e6observe produced, as text, by name."""
        self.rec.flush()
        return {
            "metrics": self.scrape(),
            "openmetrics": self.scrape(openmetrics=True),
            "status": self.status(),
            "events": self.events(),
            "otel_metrics": self.otel_metrics(),
            "otel_logs": self.otel_logs(),
            "spans": self.spans_text(),
            "ring": self.ring_text(),
        }
