"""The query span's cheaper path (issue 17) gives what the plain one gave.

* The span is made current once per phase (execute, fetch, clear), from the context that phase
  runs in: the connector's calls see the query span current *and* whatever the application made
  current for that phase (baggage, ``suppress_instrumentation()``); a call nested in a phase
  (``fetch_batch`` under ``fetchall``) sees the same.
* The tracer keeps what it worked out for a statement (span name, attributes, sanitized text)
  in a bounded, least-recently-used cache keyed by the text's hash: the same spans come out,
  and no literal of a statement is kept.
* The suppression check remembers the last context it found not suppressing: a suppressing
  context is still seen as one.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from e6data_python_connector import e6data_grpc
from opentelemetry import baggage, context, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import e6observe
from e6observe import _safe
from e6observe._otelctx import suppression_check
from e6observe.recorder import Recorder
from e6observe.sim import Simulator
from e6observe.tracing import SUMMARY_CACHE, QueryTracer

pytestmark = pytest.mark.timeout(60)
CANARY = "CANARY-lit-93b1"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    _safe.reset_for_tests()
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    yield spans
    tp.shutdown()


def _seen_by(monkeypatch: pytest.MonkeyPatch, method: str, log: list[tuple[str, Any, Any, bool]]) -> None:
    """Wrap the connector's ``Cursor.<method>`` (before instrument(), so the hook wraps the
    wrapper): each call logs the span current inside it, the baggage and the suppression flag."""
    real = e6data_grpc.Cursor.__dict__[method]

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        span = trace.get_current_span().get_span_context().span_id
        suppressed = bool(context.get_value(context._SUPPRESS_INSTRUMENTATION_KEY))
        log.append((method, span, baggage.get_baggage("phase"), suppressed))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(e6data_grpc.Cursor, method, spy)


def test_each_phase_runs_with_the_span_in_its_own_context(
    sim: Simulator,
    connect: Callable[..., Any],
    exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[tuple[str, Any, Any, bool]] = []
    for method in ("fetch_batch", "_fetch_all", "clear"):
        _seen_by(monkeypatch, method, log)
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    e6observe.instrument(otel=True, tracer_provider=tp, prometheus_port=None)
    try:
        cur = connect().cursor()
        outside = context.get_current()
        for _ in range(2):  # the second query: the same statement, from the tracer's cache
            cur.execute("SELECT 1")
            token = context.attach(baggage.set_baggage("phase", "fetch"))
            try:
                assert cur.fetchall() == [[1]]
            finally:
                context.detach(token)
            with suppress_instrumentation():
                cur.clear()
            assert context.get_current() == outside  # nothing left attached
    finally:
        e6observe.uninstrument()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["SELECT", "SELECT"]
    assert dict(spans[0].attributes) == dict(spans[1].attributes)
    for query, calls in zip(spans, (log[: len(log) // 2], log[len(log) // 2 :])):
        sid = query.context.span_id
        fetches = [c for c in calls if c[0] != "clear"]
        # fetchall, and each fetch_batch inside it: the span current, the fetch's baggage
        assert {c[0] for c in fetches} == {"_fetch_all", "fetch_batch"}, calls
        assert all(c[1:] == (sid, "fetch", False) for c in fetches), calls
        # clear inside suppress_instrumentation(): the span current, the suppression kept
        assert [c for c in calls if c[0] == "clear"] == [("clear", sid, None, True)]


def _tracer(record_query_text: bool = False) -> tuple[QueryTracer, Recorder, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    rec = Recorder()
    return QueryTracer(tp, rec, record_query_text), rec, spans


def _query(tracer: QueryTracer, sql: str) -> None:
    tracer.finish(tracer.start(sql, "127.0.0.1", 5432, "cat|db"), "blue", "ok")


def test_a_described_statement_gives_the_same_span_and_keeps_no_literal() -> None:
    tracer, rec, spans = _tracer(record_query_text=True)
    fresh, rec2, fresh_spans = _tracer(record_query_text=True)
    try:
        sql = f"SELECT a FROM orders JOIN customers ON x = '{CANARY}' WHERE n = 42"
        for _ in range(3):
            _query(tracer, sql)
        _query(fresh, sql)
        got = [(s.name, dict(s.attributes)) for s in spans.get_finished_spans()]
        assert (
            got
            == [
                (
                    fresh_spans.get_finished_spans()[0].name,
                    dict(fresh_spans.get_finished_spans()[0].attributes),
                )
            ]
            * 3
        )
        assert got[0][0] == "SELECT orders customers"
        assert got[0][1]["db.query.text"] == "SELECT a FROM orders JOIN customers ON x = ? WHERE n = ?"
        # what the tracer keeps: hashes and what the spans carry anyway; never the literal
        assert all(type(k) is int for k in tracer._statements)
        kept = repr(list(tracer._statements.values()))  # (the keys are hashes: digits by chance)
        assert CANARY not in kept and "42" not in kept
    finally:
        rec.stop()
        rec2.stop()


def test_the_statement_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    tracer, rec, spans = _tracer()
    try:
        texts = [f"SELECT * FROM t{i} WHERE secret = '{CANARY}-{i}'" for i in range(SUMMARY_CACHE)]
        for sql in texts:
            _query(tracer, sql)
        assert len(tracer._statements) == SUMMARY_CACHE
        _query(tracer, texts[0])  # used again: now the most recent
        _query(tracer, "SELECT * FROM one_more")  # full: the least recently used goes
        assert len(tracer._statements) == SUMMARY_CACHE
        assert hash(texts[0]) in tracer._statements
        assert hash(texts[1]) not in tracer._statements
        for i in range(3 * SUMMARY_CACHE):  # a stream of distinct statements stays bounded
            _query(tracer, f"SELECT {i} FROM s{i}")
        assert len(tracer._statements) <= SUMMARY_CACHE
        names = [s.name for s in spans.get_finished_spans()]
        assert names[:2] == ["SELECT t0", "SELECT t1"] and names[-1] == f"SELECT s{3 * SUMMARY_CACHE - 1}"
    finally:
        rec.stop()


def test_the_suppression_check_remembers_only_contexts_that_do_not_suppress() -> None:
    check = suppression_check()
    assert not check()  # the empty context
    token = context.attach(context.set_value("e6observe-test", 1))
    try:
        assert not check() and not check()  # remembered
        with suppress_instrumentation():
            assert check() and check()  # a suppressing context is never taken for the clear one
        assert not check()
        token2 = context.attach(context.set_value(context._SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            assert check()
        finally:
            context.detach(token2)
        assert not check()
    finally:
        context.detach(token)


def test_sanitized_text_collapses_every_whitespace_the_regex_did() -> None:
    """Whitespace runs become one space by str.split() now, not by a ``\\s+`` pass: the same
    characters, whichever kind of space separates the words."""
    import re
    import sys

    from e6observe.tracing import sanitize_query

    spaces = [chr(i) for i in range(sys.maxunicode + 1) if re.fullmatch(r"\s", chr(i))]
    assert spaces == [chr(i) for i in range(sys.maxunicode + 1) if chr(i).isspace()]
    for c in spaces:
        assert (
            sanitize_query(f"{c}SELECT{c}{c}a{c}FROM t WHERE x = 'v'{c}") == "SELECT a FROM t WHERE x = ?"
        ), hex(ord(c))
