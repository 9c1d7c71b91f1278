"""Auto-resume telemetry (issue 14): the real connector resumes the simulator's suspended cluster.

The simulator's resume takes ``RESUME_S`` seconds (``Simulator.set_resume``); the connector's
auto-resume is on by default. Each acceptance test suspends the cluster twice while an
instrumented application runs queries, then reads ``/metrics``, ``/events`` (through the
recorder's ring, which is what ``/events`` streams), ``/status`` and the spans.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any, Callable, Iterator

import grpc
import pytest
from e6data_python_connector import e6data_grpc
from helpers import (
    PASSWORD,
    USER,
    endpoint,
    login_errors_surface,
    resumes_inside_the_login_loop,
    scrape,
    status_doc,
    wait_for,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import e6observe
from e6observe import _safe
from e6observe import metrics as M
from e6observe.recorder import Recorder
from e6observe.sim import Simulator

pytestmark = pytest.mark.timeout(120)

#: How long the simulated resume takes.
RESUME_S = 0.6


@pytest.fixture
def traced() -> Iterator[tuple[Recorder, InMemorySpanExporter]]:
    _safe.reset_for_tests()
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    rec = e6observe.instrument(otel=True, tracer_provider=tp, prometheus_port=0)
    assert rec is not None
    yield rec, exporter
    e6observe.uninstrument()


@pytest.fixture
def plain() -> Iterator[Recorder]:
    _safe.reset_for_tests()
    rec = e6observe.instrument(otel=False, prometheus_port=0)
    assert rec is not None
    yield rec
    e6observe.uninstrument()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series on /metrics (labels matched exactly, in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"([^{ ]+)(?:\{(.*)\})? (\S+)", line)
        assert m is not None
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    raise AssertionError(f"{name}{labels} not on /metrics")


def counters(rec: Recorder, spec: M.MetricSpec) -> dict[tuple[str, ...], float]:
    return {k: c.value for k, c in rec.family(spec).items() if c.value}  # type: ignore[attr-defined]


def hists(rec: Recorder, spec: M.MetricSpec) -> dict[tuple[str, ...], int]:
    return {k: h.count for k, h in rec.family(spec).items() if h.count}  # type: ignore[attr-defined]


class App:
    """An application: ``threads`` threads running queries, each reconnecting after an error
    (a session opened before a suspension gets the 503 itself: only a new login resumes)."""

    def __init__(self, sim: Simulator, threads: int = 3) -> None:
        self.sim = sim
        self.stop = threading.Event()
        self.ok = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _connect(self) -> Any:
        return e6data_grpc.Connection(
            host=self.sim.host, port=self.sim.port, username=USER, password=PASSWORD, auto_resume=True
        )

    def _run(self) -> None:
        conn = self._connect()
        while not self.stop.is_set():
            try:
                cur = conn.cursor()
                cur.execute("SELECT 1")
                assert cur.fetchall() == [[1]]
                cur.clear()
                with self._lock:
                    self.ok += 1
            except Exception:
                with self._lock:
                    self.errors += 1
                try:
                    conn.close()
                except Exception:
                    pass
                conn = self._connect()
            time.sleep(0.002)
        conn.close()

    def __enter__(self) -> App:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(15)


def suspend_and_wait(sim: Simulator, ok_before: Callable[[], int], n: int) -> None:
    """Suspend; wait until the simulator counted the n-th resume, is active, and queries run."""
    sim.suspend()
    wait_for(lambda: sim.counters()["resumes"] == n and not sim.suspended, 20, what=f"resume {n}")
    done = ok_before()
    wait_for(lambda: ok_before() > done + 5, 20, what=f"queries after resume {n}")


def check_two_resumes(rec: Recorder) -> None:
    """/metrics, the event ring (/events), /status after two resumes of RESUME_S each."""
    text = scrape()
    assert sample(text, "e6data_cluster_resumes_total", outcome="ok") == 2
    assert sample(text, "e6data_cluster_resumes_total", outcome="failed") == 0
    assert sample(text, "e6data_cluster_resume_duration_seconds_count", outcome="ok") == 2
    total = sample(text, "e6data_cluster_resume_duration_seconds_sum", outcome="ok")
    assert 2 * RESUME_S <= total < 2 * RESUME_S + 1.0, total
    assert sample(text, "e6data_cluster_status", status="active") == 1
    assert sample(text, "e6data_cluster_status", status="suspended") == 0
    assert sample(text, "e6data_retries_total", reason="resume") >= 2
    rec.flush()
    kinds = [e.kind for e in rec.ring.snapshot()]
    assert kinds.count("suspended_seen") == 2
    assert kinds.count("resume_started") == 2
    finished = [e for e in rec.ring.snapshot() if e.kind == "resume_finished"]
    assert [e.outcome for e in finished] == ["ok", "ok"]
    for e in finished:
        assert e.duration_seconds is not None and RESUME_S <= e.duration_seconds < RESUME_S + 0.5
    # each suspension: seen, then started, then finished
    seq = [k for k in kinds if k in ("suspended_seen", "resume_started", "resume_finished")]
    assert seq == ["suspended_seen", "resume_started", "resume_finished"] * 2
    doc = status_doc()
    assert doc["cluster"]["status"] == "active" and doc["cluster"]["resumes"]["ok"] == 2
    assert doc["cluster"]["last_resume_outcome"] == "ok"
    assert RESUME_S <= doc["cluster"]["last_resume_seconds"] < RESUME_S + 0.5
    recent = [e["kind"] for e in doc["recent_events"]]
    assert recent.count("EVENT_KIND_RESUME_FINISHED") == 2
    # /events replays the ring as server-sent events, with the resume fields
    from test_status import SSEReader

    port = int(endpoint().rsplit(":", 1)[1])
    reader = SSEReader(type("Srv", (), {"port": port})(), "/events?since=0")  # type: ignore[arg-type]
    try:
        streamed = [reader.next_event()[1] for _ in range(len(rec.ring))]
    finally:
        reader.close()
    done = [e for e in streamed if e["kind"] == "EVENT_KIND_RESUME_FINISHED"]
    assert [e["outcome"] for e in done] == ["ok", "ok"]
    assert all(RESUME_S <= e["duration_seconds"] < RESUME_S + 0.5 for e in done)
    assert sum(e["kind"] == "EVENT_KIND_SUSPENDED_SEEN" for e in streamed) == 2


@pytest.mark.matrix
def test_two_suspensions_under_load_are_two_resumes(sim: Simulator, plain: Recorder) -> None:
    sim.set_resume(RESUME_S)
    with App(sim) as app:
        wait_for(lambda: app.ok > 10, 20, what="queries")
        for n in (1, 2):
            suspend_and_wait(sim, lambda: app.ok, n)
    check_two_resumes(plain)
    resumed = hists(plain, M.QUERY_DURATION).get(("blue", "resumed"), 0)
    assert resumed >= 2  # the first query of each reconnecting thread waited
    assert _safe.internal_errors() == {}


@pytest.mark.aio
def test_two_suspensions_under_async_load_are_two_resumes(
    sim: Simulator, traced: tuple[Recorder, InMemorySpanExporter]
) -> None:
    rec, exporter = traced
    sim.set_resume(RESUME_S)
    from e6data_python_connector import aio

    async def query(conn: Any) -> Any:
        cur = conn.cursor()
        try:
            await cur.execute("SELECT 1")
            return await cur.fetchall()
        finally:
            await cur.close()

    async def main() -> None:
        conns = [
            await aio.connect(
                host=sim.host, port=sim.port, username=USER, password=PASSWORD, auto_resume=True
            )
            for _ in range(3)
        ]
        for c in conns:  # logged in: the async API resumes at prepare, not at login
            assert await query(c) == [[1]]
        for _ in range(2):
            sim.suspend()
            got = await asyncio.gather(*[query(c) for c in conns for _ in range(2)])
            assert got == [[[1]]] * 6
        for c in conns:
            await c.close()

    asyncio.run(main())
    check_two_resumes(rec)
    assert hists(rec, M.QUERY_DURATION)[("blue", "resumed")] == 12
    spans = exporter.get_finished_spans()
    resume_spans = [s for s in spans if s.name == "e6data.cluster.resume"]
    query_spans = {s.context.span_id: s for s in spans if s.name == "SELECT"}
    assert len(resume_spans) == 12  # every waiting query has its wait, under its own span
    for s in resume_spans:
        assert s.parent is not None and s.parent.span_id in query_spans
        assert s.attributes["e6data.cluster.resume.outcome"] == "ok"
        parent = query_spans[s.parent.span_id]
        assert parent.attributes["e6data.query.outcome"] == "resumed"
        assert not parent.status.status_code.name == "ERROR"
    longest = max((s.end_time - s.start_time) / 1e9 for s in resume_spans)
    assert RESUME_S <= longest < RESUME_S + 0.5


@pytest.mark.matrix
def test_query_that_waited_has_a_resume_span_and_outcome(
    sim: Simulator, traced: tuple[Recorder, InMemorySpanExporter]
) -> None:
    rec, exporter = traced
    sim.set_resume(RESUME_S)
    sim.suspend()
    conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
    cur = conn.cursor()
    cur.execute("SELECT 1")  # login -> 503 -> resume -> login again -> query
    assert cur.fetchall() == [[1]]
    cur.clear()
    conn.close()
    spans = exporter.get_finished_spans()
    (wait,) = [s for s in spans if s.name == "e6data.cluster.resume"]
    (query,) = [s for s in spans if s.name == "SELECT"]
    assert wait.parent is not None and wait.parent.span_id == query.context.span_id
    assert query.attributes["e6data.query.outcome"] == "resumed"
    assert RESUME_S <= (wait.end_time - wait.start_time) / 1e9 < RESUME_S + 0.5
    assert hists(rec, M.QUERY_DURATION) == {("blue", "resumed"): 1}
    if not resumes_inside_the_login_loop():  # 2.3.9/2.3.10: one resume, then a fresh login
        assert counters(rec, M.RETRIES) == {("resume",): 1}
    elif login_errors_surface():
        # 3.x: with nothing cached, the login loop goes on to "green" after the resume (a 456),
        # and the execute retry then logs in again: both retries are reported.
        assert counters(rec, M.RETRIES) == {("resume",): 1, ("mismatch",): 1}
    else:
        # 2.3.11-2.3.15 swallow that 456 (an empty session id), the engine refuses the session
        # and the execute retry logs in again.
        assert counters(rec, M.RETRIES) == {("resume",): 1, ("access_denied",): 1}


@pytest.mark.matrix
def test_refused_resume_is_failed_and_the_error_reaches_the_app(sim: Simulator, plain: Recorder) -> None:
    sim.set_resume(0.0, fails=True)
    sim.suspend()
    conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
    with pytest.raises(grpc.RpcError) as ei:
        conn.cursor().execute("SELECT 1")
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE  # the connector's own 503
    # 2.3.11+ try twice (the inner login handler, then the outer one), 2.3.9/2.3.10 once: one
    # counted attempt per ClusterService status call answered "failed".
    attempts = 2 if resumes_inside_the_login_loop() else 1
    assert sim.counters()["rpcs"]["cluster.status"] == attempts
    assert counters(plain, M.CLUSTER_RESUMES) == {("failed",): attempts}
    # 3.x and 2.3.10 raise the login's 503; 2.3.11-2.3.15 swallow it and the prepare that
    # follows gets a 503 again: the last status seen is that one.
    assert plain.cluster_status == ("failed" if login_errors_surface() else "suspended")
    assert hists(plain, M.QUERY_DURATION) == {("none", "error"): 1}  # never logged in
    plain.flush()
    finished = [e for e in plain.ring.snapshot() if e.kind == "resume_finished"]
    assert [(e.outcome, e.cluster_status) for e in finished] == [("failed", "failed")] * attempts


@pytest.mark.aio
def test_async_resume_past_its_deadline_is_a_timeout(sim: Simulator, plain: Recorder) -> None:
    sim.set_resume(5.0)
    from e6data_python_connector import aio
    from e6data_python_connector.exceptions import OperationalError

    async def main() -> None:
        conn = await aio.connect(
            host=sim.host, port=sim.port, username=USER, password=PASSWORD, auto_resume_timeout=0.5
        )
        cur = conn.cursor()
        await cur.execute("SELECT 1")
        await cur.fetchall()
        await cur.close()
        sim.suspend()
        cur = conn.cursor()
        with pytest.raises(OperationalError):
            await cur.execute("SELECT 1")
        await conn.close()

    asyncio.run(main())
    assert counters(plain, M.CLUSTER_RESUMES) == {("timeout",): 1}
    (h,) = [h for k, h in plain.family(M.CLUSTER_RESUME_DURATION).items() if h.count]
    assert 0.4 <= h.snapshot()[1] < 1.5
    sim.resume()


@pytest.mark.matrix
def test_resume_reaches_opentelemetry_as_metrics_and_log_records(sim: Simulator) -> None:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    try:
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as InMemoryLogs
    except ImportError:  # SDK < 1.39
        from opentelemetry.sdk._logs.export import InMemoryLogExporter as InMemoryLogs  # type: ignore

    _safe.reset_for_tests()
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    logs = InMemoryLogs()
    lp = LoggerProvider()
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
    rec = e6observe.instrument(meter_provider=mp, logger_provider=lp)
    assert rec is not None
    try:
        sim.set_resume(RESUME_S)
        sim.suspend()
        conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
        cur = conn.cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.clear()
        conn.close()
        rec.flush()
        deadline = time.monotonic() + 10
        while len(logs.get_finished_logs()) < rec.ring.emitted and time.monotonic() < deadline:
            time.sleep(0.01)
        records = {r.log_record.event_name: r.log_record for r in logs.get_finished_logs()}
        assert {
            "e6data.cluster.suspended_seen",
            "e6data.cluster.resume_started",
            "e6data.cluster.resume_finished",
        } <= set(records)
        fin = dict(records["e6data.cluster.resume_finished"].attributes or {})
        assert fin["e6data.cluster.resume.outcome"] == "ok"
        assert RESUME_S <= fin["e6data.cluster.resume.duration"] < RESUME_S + 0.5
        seen = dict(records["e6data.cluster.suspended_seen"].attributes or {})
        assert seen["rpc.method"].endswith("/authenticate")
        data = reader.get_metrics_data()
        got = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        resumes = {
            dict(p.attributes)["e6data.cluster.resume.outcome"]: p.value
            for p in got["e6data.cluster.resumes"].data.data_points
        }
        assert resumes == {"ok": 1, "failed": 0, "timeout": 0}
        (dur,) = [p for p in got["e6data.cluster.resume.duration"].data.data_points]
        assert dur.count == 1 and RESUME_S <= dur.sum < RESUME_S + 0.5
        rpc = {dict(p.attributes)["rpc.method"] for p in got["rpc.client.call.duration"].data.data_points}
        assert {"ClusterService/status", "ClusterService/resume"} <= rpc
        status = {
            dict(p.attributes)["e6data.cluster.status"]: p.value
            for p in got["e6data.cluster.status"].data.data_points
        }
        assert status["active"] == 1 and status["suspended"] == 0
        waited = [
            dict(p.attributes)
            for p in got["db.client.operation.duration"].data.data_points
            if dict(p.attributes).get("e6data.query.outcome") == "resumed"
        ]
        assert len(waited) == 1 and "error.type" not in waited[0]
        cm = {
            dict(p.attributes)["e6data.strategy"]: p.value
            for p in got["e6data.strategy.cluster_manager.active"].data.data_points
        }
        assert cm == {"blue": 1, "green": 0}
    finally:
        e6observe.uninstrument()
        mp.shutdown()
        lp.shutdown()
