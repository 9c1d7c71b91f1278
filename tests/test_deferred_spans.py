"""``query_spans="deferred"``: the query span recorded by the querying thread, built by a thread.

* The exported spans are those of ``current`` mode: name, kind, attributes (in order), status,
  span events, the auto-resume child, the parent (the application's span), timestamps that
  cover the query - only ids differ, and nothing nests under a deferred span.
* The latency histogram's exemplar is the built span's ids.
* The queue is bounded: a full queue drops the query's span and counts it
  (``e6observe_events_dropped_total{sink="query_spans"}``); the querying thread never waits.
* A span the thread fails to build is contained and counted; the application sees nothing.
* ``uninstrument()`` builds what is queued and stops the thread; a forked child drops the
  parent's queue and builds its own spans on a new thread.
* ``query_spans`` is an option (keyword, environment); a bad value is a clear ConfigError;
  ``off`` starts no span even with a tracer provider.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import grpc
import pytest
from helpers import reset_connector_cache
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import e6observe
from e6observe import _api, _fork, _safe, deferred_spans
from e6observe import metrics as M
from e6observe.config import ConfigError, Options
from e6observe.sim import Simulator

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def traced() -> Iterator[Callable[..., tuple[Any, InMemorySpanExporter, TracerProvider]]]:
    _safe.reset_for_tests()

    def _start(**options: Any) -> tuple[Any, InMemorySpanExporter, TracerProvider]:
        exporter = InMemorySpanExporter()
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(exporter))
        rec = e6observe.instrument(otel=True, tracer_provider=tp, prometheus_port=None, **options)
        assert rec is not None
        return rec, exporter, tp

    yield _start
    e6observe.uninstrument()


def _tracer() -> Any:
    return _api._current_tracer()


def _scenario(sim: Simulator, connect: Callable[..., Any], tp: TracerProvider, rec: Any) -> int:
    """Queries under an application span: ok, failed at execute, cut by a switch (with span
    events), ok on the new colour. Returns the application span's id."""
    app = tp.get_tracer("app")
    with app.start_as_current_span("request") as parent:
        conn = connect()
        cur = conn.cursor()
        cur.execute("SELECT * FROM sample")
        cur.fetchall()
        cur.clear()
        with pytest.raises(grpc.RpcError):
            conn.cursor().execute("SELECT fail()")
        long_running = connect().cursor()
        long_running.execute("SELECT * FROM sample")  # in flight, pinned to blue
        sim.flip(announce=False)
        other = connect().cursor()
        other.execute("SELECT 1")  # another connection goes through the 456 path
        assert rec.flush()  # its events reach both queries in flight (delivered by a thread)
        other.fetchall()
        other.clear()
        with pytest.raises(grpc.RpcError):
            long_running.fetchall()
    return int(parent.get_span_context().span_id)


def _comparable(spans: Any, parent_id: int) -> list[Any]:
    out = []
    for s in spans:
        if s.name == "request":
            continue
        assert s.start_time < s.end_time
        out.append(
            (
                s.name,
                s.kind,
                [(k, "port" if k == "server.port" else v) for k, v in s.attributes.items()],  # in order
                s.status.status_code,
                [(e.name, dict(e.attributes)) for e in s.events],
                s.parent is not None and s.parent.span_id == parent_id,
            )
        )
    return sorted(out, key=repr)


def _run_mode(mode: str, traced: Any) -> list[Any]:
    reset_connector_cache()  # each mode starts from blue, as its fresh simulator does
    with Simulator() as sim:
        rec, exporter, tp = traced(query_spans=mode)

        def connect_here(**kw: Any) -> Any:
            from e6data_python_connector import Connection

            return Connection(host=sim.host, port=sim.port, username="app@example.com", password="pw", **kw)

        parent_id = _scenario(sim, connect_here, tp, rec)
        tracer = _tracer()
        if mode == "deferred":
            assert type(tracer).__name__ == "DeferredQueryTracer"
            assert tracer.flush()
        spans = exporter.get_finished_spans()
        e6observe.uninstrument()
    return _comparable(spans, parent_id)


def test_deferred_spans_equal_current_ones_but_for_ids(traced: Any) -> None:
    current = _run_mode("current", traced)
    deferred = _run_mode("deferred", traced)
    assert len(current) == 4
    outcomes = sorted(dict(a)["e6data.query.outcome"] for _, _, a, _, _, _ in current)
    assert outcomes == ["error", "ok", "ok", "switch_interrupted"]
    assert any(events for *_, events, _ in current)  # the switch's span events are compared too
    assert all(under_parent for *_, under_parent in current)
    assert deferred == current


def test_the_parent_and_the_times_are_the_querys_and_nothing_is_made_current(
    sim: Simulator, connect: Callable[..., Any], traced: Any
) -> None:
    from opentelemetry import trace

    rec, exporter, tp = traced(query_spans="deferred")
    seen: list[Any] = []
    cur = connect().cursor()
    with tp.get_tracer("app").start_as_current_span("request") as parent:
        t0 = time.time_ns()
        cur.execute("SELECT 1")
        seen.append(trace.get_current_span())  # between the calls: still the application's
        cur.fetchall()
        cur.clear()
        t1 = time.time_ns()
    assert seen == [parent]
    assert _tracer().flush()
    (span,) = [s for s in exporter.get_finished_spans() if s.name != "request"]
    assert span.kind is SpanKind.CLIENT
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent.span_id == parent.get_span_context().span_id
    assert t0 <= span.start_time < span.end_time <= t1
    # The exemplar of the query's latency is the built span's.
    h = rec.family(M.QUERY_DURATION).histogram("blue", "ok")
    (trace_id, span_id, value, _) = next(iter(h.exemplars.values()))
    ids = (format(span.context.trace_id, "032x"), format(span.context.span_id, "016x"))
    assert (trace_id, span_id) == ids
    assert value == pytest.approx(h.sum)


def _hold_the_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The span thread sleeps through the test (it is woken only by a full WAKE_AT batch)."""
    monkeypatch.setattr(deferred_spans, "INTERVAL", 3600.0)
    monkeypatch.setattr(deferred_spans, "WAKE_AT", 10**9)


def _dropped(rec: Any) -> float:
    return float(rec.family(M.EVENTS_DROPPED).counter("query_spans").value)


def test_a_full_queue_drops_and_counts_without_blocking(
    sim: Simulator, connect: Callable[..., Any], traced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_the_thread(monkeypatch)
    monkeypatch.setattr(deferred_spans, "CAPACITY", 3)
    rec, exporter, _ = traced(query_spans="deferred")
    cur = connect().cursor()
    for _ in range(5):
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.clear()
    tracer = _tracer()
    assert tracer.queued() == 3 and tracer.dropped == 2
    assert _dropped(rec) == 2
    assert exporter.get_finished_spans() == ()  # nothing built on the querying thread
    assert tracer.flush()
    assert len(exporter.get_finished_spans()) == 3 and tracer.queued() == 0
    assert rec.family(M.QUERY_DURATION).histogram("blue", "ok").count == 5  # metrics: all five


def test_a_span_that_fails_to_build_is_contained_and_counted(
    sim: Simulator, connect: Callable[..., Any], traced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_the_thread(monkeypatch)
    rec, exporter, _ = traced(query_spans="deferred")
    cur = connect().cursor()
    for _ in range(2):
        cur.execute("SELECT 1")
        assert cur.fetchall() == [[1]]
        cur.clear()
    tracer = _tracer()
    real = tracer._tracer.start_span
    calls = []

    def broken(*a: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real(*a, **kw)

    monkeypatch.setattr(tracer._tracer, "start_span", broken)
    assert tracer.flush()
    assert len(exporter.get_finished_spans()) == 1  # the second one still built
    assert _safe.internal_errors().get("tracing.deferred") == 1


def test_uninstrument_builds_what_is_queued_and_stops_the_thread(
    sim: Simulator, connect: Callable[..., Any], traced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hold_the_thread(monkeypatch)
    rec, exporter, _ = traced(query_spans="deferred")
    cur = connect().cursor()
    for _ in range(3):
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.clear()
    tracer = _tracer()
    assert tracer.queued() == 3 and exporter.get_finished_spans() == ()
    e6observe.uninstrument()
    assert len(exporter.get_finished_spans()) == 3
    assert deferred_spans.THREAD_NAME not in [t.name for t in threading.enumerate()]
    assert tracer._drop_queue_after_fork not in _fork.registered("stores")
    assert tracer._restart_after_fork not in _fork.registered("threads")
    # A query that ends after the tracer closed (a straggler) is dropped, counted.
    tracer.finish(tracer.start("SELECT 1"), "blue", "ok")
    assert tracer.queued() == 0 and tracer.dropped == 1


def test_the_thread_builds_spans_by_itself(sim: Simulator, connect: Callable[..., Any], traced: Any) -> None:
    rec, exporter, _ = traced(query_spans="deferred")
    cur = connect().cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.clear()
    deadline = time.monotonic() + 10
    while not exporter.get_finished_spans() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [s.name for s in exporter.get_finished_spans()] == ["SELECT"]
    assert deferred_spans.THREAD_NAME in [t.name for t in threading.enumerate()]


def test_a_forked_child_drops_the_parents_queue_and_builds_its_own(
    sim: Simulator, connect: Callable[..., Any], traced: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    if not hasattr(os, "fork"):  # pragma: no cover
        pytest.skip("needs os.fork")
    from test_fork import in_child

    rec, exporter, _ = traced(query_spans="deferred")
    tracer = _tracer()
    cur = connect().cursor()
    with tracer._lock:  # held by "the dispatcher" at the fork: the child gets a new lock
        tracer._queue.append(tracer.start("SELECT 'parent'"))  # queued in the parent

        def child() -> Any:
            threads = [t.name for t in threading.enumerate()]
            queued_at_fork = tracer.queued()
            from e6data_python_connector import Connection

            conn = Connection(host=sim.host, port=sim.port, username="app@example.com", password="pw")
            c = conn.cursor()
            c.execute("SELECT 2")
            c.fetchall()
            c.clear()
            deadline = time.monotonic() + 10
            while not exporter.get_finished_spans() and time.monotonic() < deadline:
                time.sleep(0.02)
            return {
                "threads": threads,
                "queued_at_fork": queued_at_fork,
                "names": [s.name for s in exporter.get_finished_spans()],
            }

        out = in_child(child)
    assert out["threads"].count(deferred_spans.THREAD_NAME) == 1  # started again, once
    assert out["queued_at_fork"] == 0
    assert out["names"] == ["SELECT"]
    cur.execute("SELECT 1")
    cur.close()


def test_off_starts_no_span_and_the_option_is_checked(
    sim: Simulator, connect: Callable[..., Any], traced: Any
) -> None:
    _, exporter, _ = traced(query_spans="off")
    cur = connect().cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.clear()
    assert _tracer() is None and exporter.get_finished_spans() == ()
    assert Options.resolve({}, {}).query_spans == "current"
    assert Options.resolve({}, {"E6OBSERVE_QUERY_SPANS": " Deferred "}).query_spans == "deferred"
    assert Options.resolve({"query_spans": "off"}, {"E6OBSERVE_QUERY_SPANS": "deferred"}).query_spans == "off"
    with pytest.raises(ConfigError, match=r"query_spans must be one of current, deferred, off, got 'later'"):
        Options.resolve({"query_spans": "later"}, {})
    with pytest.raises(ConfigError, match=r"E6OBSERVE_QUERY_SPANS must be one of"):
        Options.resolve({}, {"E6OBSERVE_QUERY_SPANS": "1"})
    with pytest.raises(ConfigError, match=r"query_spans must be one of"):
        Options.resolve({"query_spans": True}, {})


def test_a_pending_span_is_never_made_current() -> None:
    from e6observe._otelctx import PendingSpan, attach_span, detach

    token = attach_span(PendingSpan(None, None, None, None, None))
    assert token is None
    detach(token)


def test_failed_status_and_error_type_on_a_deferred_span(
    sim: Simulator, connect: Callable[..., Any], traced: Any
) -> None:
    _, exporter, _ = traced(query_spans="deferred")
    with pytest.raises(grpc.RpcError):
        connect().cursor().execute("SELECT fail()")
    assert _tracer().flush()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "_OTHER"
    assert span.attributes["db.response.status_code"] == "INTERNAL"


@pytest.mark.aio
def test_async_queries_get_the_same_spans_deferred(sim: Simulator, traced: Any) -> None:
    import asyncio

    from helpers import HAS_AIO, PASSWORD, USER

    if not HAS_AIO:  # pragma: no cover - the async API needs Python 3.11+
        pytest.skip("the connector's async API needs Python 3.11+")

    def run_async(mode: str) -> tuple[list[Any], int]:
        rec, exporter, tp = traced(query_spans=mode)

        async def main() -> int:
            from e6data_python_connector import aio

            with tp.get_tracer("app").start_as_current_span("request") as parent:
                conn = await aio.connect(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
                cur = conn.cursor()
                await cur.execute("SELECT * FROM sample")
                await cur.fetchall()
                await cur.close()
                await conn.close()
            return int(parent.get_span_context().span_id)

        parent_id = asyncio.run(main())
        if mode == "deferred":
            assert _tracer().flush()
        spans = exporter.get_finished_spans()
        e6observe.uninstrument()
        return _comparable(spans, parent_id), len(spans)

    current, n = run_async("current")
    deferred, m = run_async("deferred")
    assert n == m == 2 and len(current) == 1
    assert current[0][-1] is True  # under the application's span
    assert deferred == current


def test_the_resume_wait_is_a_child_of_the_deferred_query_span(traced: Any) -> None:
    from e6data_python_connector import Connection
    from helpers import PASSWORD, USER

    def run(mode: str) -> tuple[Any, Any]:
        reset_connector_cache()
        with Simulator() as sim:
            _, exporter, _ = traced(query_spans=mode)
            sim.set_resume(0.3)
            sim.suspend()
            cur = Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD).cursor()
            cur.execute("SELECT 1")  # login -> 503 -> resume -> login again -> query
            assert cur.fetchall() == [[1]]
            cur.clear()
            if mode == "deferred":
                assert _tracer().flush()
            spans = exporter.get_finished_spans()
            e6observe.uninstrument()
        (wait,) = [s for s in spans if s.name == "e6data.cluster.resume"]
        (query,) = [s for s in spans if s.name == "SELECT"]
        assert wait.parent is not None and wait.parent.span_id == query.context.span_id
        assert wait.context.trace_id == query.context.trace_id
        assert query.start_time <= wait.start_time < wait.end_time <= query.end_time
        assert 0.3 <= (wait.end_time - wait.start_time) / 1e9 < 0.8
        return (
            (wait.kind, dict(wait.attributes), wait.status.status_code),
            (dict(query.attributes, **{"server.port": 0}), query.status.status_code),
        )

    current = run("current")
    assert current[1][0]["e6data.query.outcome"] == "resumed"
    assert run("deferred") == current
