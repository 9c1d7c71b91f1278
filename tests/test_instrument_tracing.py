"""Query spans: one CLIENT span per query (database conventions), switch events, exemplars."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
import subproc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import e6observe
from e6observe import _api, _safe
from e6observe import metrics as M
from e6observe.recorder import Recorder
from e6observe.sim import Simulator
from e6observe.tracing import operation_name, sanitize_query

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(60)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def traced() -> Iterator[Callable[..., tuple[Recorder, InMemorySpanExporter]]]:
    _safe.reset_for_tests()

    def _start(**options: Any) -> tuple[Recorder, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(exporter))
        rec = e6observe.instrument(otel=True, tracer_provider=tp, **options)
        assert rec is not None
        return rec, exporter

    yield _start
    e6observe.uninstrument()


def run(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    rows = cur.fetchall()
    cur.clear()
    return rows


def test_one_client_span_per_query_with_database_attributes(
    sim: Simulator, connect: Callable[..., Any], traced: Any
) -> None:
    rec, exporter = traced(record_query_text=True)
    conn = connect()
    assert run(conn, "SELECT 1") == [[1]]
    with pytest.raises(grpc.RpcError):  # (the simulator has no WHERE: fails at prepare)
        run(conn, "select * from sample where name = 'p@ssw0rd' LIMIT 3")
    spans = exporter.get_finished_spans()
    assert len(spans) == 2
    s = spans[0]
    assert s.name == "SELECT" and s.kind is SpanKind.CLIENT
    assert dict(s.attributes) == {
        "db.system.name": "e6data",
        "db.operation.name": "SELECT",
        "db.query.summary": "SELECT",
        "server.address": sim.host,
        "server.port": sim.port,
        "db.query.text": "SELECT ?",
        "e6data.strategy": "blue",
        "e6data.query.outcome": "ok",
    }
    text = spans[1].attributes["db.query.text"]
    assert text == "select * from sample where name = ? LIMIT ?"
    assert "p@ssw0rd" not in json.dumps([dict(x.attributes) for x in spans])
    assert s.status.status_code is StatusCode.UNSET


def test_query_text_only_when_opted_in(sim: Simulator, connect: Callable[..., Any], traced: Any) -> None:
    _, exporter = traced()
    run(connect(), "SELECT 42")
    (span,) = exporter.get_finished_spans()
    assert "db.query.text" not in span.attributes


def test_failed_query_span_has_error_type(sim: Simulator, connect: Callable[..., Any], traced: Any) -> None:
    _, exporter = traced()
    cur = connect().cursor()
    with pytest.raises(grpc.RpcError):
        cur.execute("SELECT fail()")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    # The error.type db.client.operation.duration carries too; the gRPC status beside it.
    assert span.attributes["error.type"] == "_OTHER"
    assert span.attributes["db.response.status_code"] == "INTERNAL"
    assert span.attributes["e6data.query.outcome"] == "error"
    assert not span.status.description  # no server-provided text on the span


def test_switch_events_land_on_spans_in_flight(
    sim: Simulator, connect: Callable[..., Any], traced: Any
) -> None:
    rec, exporter = traced()
    long_running = connect().cursor()
    long_running.execute("SELECT * FROM sample")  # in flight, pinned to blue
    sim.flip(announce=False)
    assert run(connect(), "SELECT 1") == [[1]]  # another connection goes through the 456 path
    assert rec.flush()
    with pytest.raises(grpc.RpcError):
        long_running.fetchall()
    spans = {s.attributes["e6data.query.outcome"]: s for s in exporter.get_finished_spans()}
    cut = spans["switch_interrupted"]
    names = [e.name for e in cut.events]
    assert "e6data.strategy.mismatch" in names and "e6data.strategy.applied" in names
    applied = next(e for e in cut.events if e.name == "e6data.strategy.applied")
    assert applied.attributes["e6data.strategy.from"] == "blue"
    assert applied.attributes["e6data.strategy.to"] == "green"
    assert applied.attributes["e6data.switch.cause"] == "mismatch"
    assert cut.attributes["error.type"] == "switch_interrupted"
    assert cut.attributes["db.response.status_code"] == "UNKNOWN"
    assert spans["ok"].attributes["e6data.strategy"] == "green"


def test_trace_ids_become_exemplars(sim: Simulator, connect: Callable[..., Any], traced: Any) -> None:
    rec, exporter = traced()
    run(connect(), "SELECT 1")
    (span,) = exporter.get_finished_spans()
    h = rec.family(M.QUERY_DURATION).histogram("blue", "ok")
    (trace_id, span_id, value, _) = next(iter(h.exemplars.values()))
    assert trace_id == format(span.context.trace_id, "032x")
    assert span_id == format(span.context.span_id, "016x")
    assert value == pytest.approx(h.sum)


def test_no_spans_without_a_provider_or_with_otel_off(sim: Simulator, connect: Callable[..., Any]) -> None:
    try:
        e6observe.instrument(otel=False, tracer_provider=TracerProvider())
        assert _api._current_tracer() is None
        e6observe.uninstrument()
        e6observe.instrument()  # no provider given and no global SDK provider in this process
        assert _api._current_tracer() is None
        run(connect(), "SELECT 1")
        assert _api._current_tracer() is None
    finally:
        e6observe.uninstrument()


def test_global_provider_set_after_instrument_is_picked_up() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subproc.run(
        [sys.executable, str(ROOT / "tests" / "apps" / "late_tracer.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["spans_before"] == 0
    assert out["spans_after"] == 1 and out["names"] == ["SELECT"]


@pytest.mark.parametrize(
    "sql,expected",
    [
        ("SELECT 1", "SELECT ?"),
        (
            "select a from t where b = 'x''y' and c = \"z\" -- token=abc\n and d = 1.5e3",
            "select a from t where b = ? and c = ? and d = ?",
        ),
        (
            "/* password: hunter2 */ SELECT col2 FROM t2 WHERE x IN (1, 2, -3)",
            "SELECT col2 FROM t2 WHERE x IN (?, ?, -?)",
        ),
        ("SELECT 'unterminated secret", "SELECT ?"),
        ("SELECT $$dollar$$, 0xFF, .5", "SELECT ?, ?, ?"),
        (None, None),
    ],
)
def test_sanitize_query(sql: Any, expected: Any) -> None:
    assert sanitize_query(sql) == expected


def test_sanitize_query_bounds_its_output() -> None:
    out = sanitize_query("SELECT " + ", ".join(f"c{i}" for i in range(5000)))
    assert out is not None and len(out) <= 1024 and out.endswith("...")


@pytest.mark.parametrize(
    "sql,op",
    [
        ("  (select 1)", "SELECT"),
        ("WITH x AS (...) SELECT", "WITH"),
        ("-- c\nINSERT INTO t", "INSERT"),
        ("frobnicate", None),
        ("", None),
    ],
)
def test_operation_name(sql: str, op: Any) -> None:
    assert operation_name(sql) == op
