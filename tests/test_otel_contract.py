"""The OpenTelemetry contract, point by point (issue 15), as contrib and the conventions have it.

Runs in the main suite (newest SDK) and in ``./run test``'s minimum-versions run (the lowest
OpenTelemetry the package declares): it uses only API that both have.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import e6observe
from e6observe import _safe
from e6observe import metrics as M
from e6observe._otelctx import SCHEMA_URL
from e6observe.sim import Simulator
from e6observe.tracing import query_summary

pytestmark = [pytest.mark.timeout(60), pytest.mark.minversions]

#: ``process.*`` metric names the semantic conventions define (and e6observe uses).
SEMCONV_PROCESS = {
    "process.memory.usage",
    "process.memory.virtual",
    "process.cpu.time",
    "process.unix.file_descriptor.count",
    "process.thread.count",
}


class Rig:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tp = TracerProvider()
        self.tp.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.mp = MeterProvider(metric_readers=[self.reader])

    def start(self, **options: Any) -> Any:
        rec = e6observe.instrument(
            tracer_provider=self.tp, meter_provider=self.mp, logger_provider=None, **options
        )
        assert rec is not None
        return rec

    def metrics(self) -> dict[str, tuple[Any, Any]]:
        """name -> (metric, scope) of the last collection."""
        out: dict[str, tuple[Any, Any]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out[m.name] = (m, sm)
        return out


@pytest.fixture
def rig() -> Iterator[Rig]:
    _safe.reset_for_tests()
    r = Rig()
    yield r
    e6observe.uninstrument()
    r.mp.shutdown()


def run(conn: Any, sql: str) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    rows = cur.fetchall()
    cur.clear()
    return rows


def points(metric: Any) -> list[Any]:
    return list(metric.data.data_points)


def test_suppress_instrumentation_skips_spans_and_metrics(
    rig: Rig, sim: Simulator, connect: Callable[..., Any]
) -> None:
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    rig.start()
    conn = connect()
    with suppress_instrumentation():
        assert run(conn, "SELECT 1") == [[1]]
    got = rig.metrics()
    assert rig.spans.get_finished_spans() == ()
    assert "db.client.operation.duration" not in got
    assert "rpc.client.call.duration" not in got
    assert run(conn, "SELECT 2") == [[2]]  # outside it: one span, one query point
    assert len(rig.spans.get_finished_spans()) == 1
    got = rig.metrics()
    assert sum(p.count for p in points(got["db.client.operation.duration"][0])) == 1


def test_meters_and_tracers_carry_the_schema_url(
    rig: Rig, sim: Simulator, connect: Callable[..., Any]
) -> None:
    rig.start()
    run(connect(), "SELECT 1")
    (span,) = rig.spans.get_finished_spans()
    assert span.instrumentation_scope.schema_url == SCHEMA_URL
    scopes = {sm.scope.schema_url for _, sm in rig.metrics().values()}
    assert scopes == {SCHEMA_URL}  # every instrument: sink, watcher, runtime, pools


def test_query_span_is_the_parent_of_grpc_instrumentation_client_spans(
    rig: Rig, sim: Simulator, connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient

    # The gRPC client instrumentation takes its tracer from the global provider (its
    # instrument(tracer_provider=) does not reach the interceptor); the global one is set
    # once per process, so it is stood in for here.
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: rig.tp)
    grpc_inst = GrpcInstrumentorClient()
    grpc_inst.instrument(tracer_provider=rig.tp)
    try:
        rig.start()
        run(connect(), "SELECT 1")
    finally:
        grpc_inst.uninstrument()
    spans = rig.spans.get_finished_spans()
    (query,) = [s for s in spans if s.instrumentation_scope.name == "e6observe"]
    rpcs = [s for s in spans if s.instrumentation_scope.name != "e6observe" and s.kind is SpanKind.CLIENT]
    names = {s.name for s in rpcs}
    # execute, fetch and clear: each call of the query is a child of the query's span.
    in_query = {s.name: s for s in rpcs if s.start_time >= query.start_time and s.end_time <= query.end_time}
    assert {
        "/QueryEngineService/prepareStatement",
        "/QueryEngineService/executeStatement",
        "/QueryEngineService/getNextResultBatch",
        "/QueryEngineService/clearOrCancelQuery",
    } <= set(in_query), names
    in_query = list(in_query.values())
    assert all(s.parent is not None and s.parent.span_id == query.context.span_id for s in in_query)
    assert all(s.context.trace_id == query.context.trace_id for s in in_query)


def test_the_query_span_is_current_only_while_the_query_runs(
    rig: Rig, sim: Simulator, connect: Callable[..., Any]
) -> None:
    """The span is made current around execute, fetch and clear, and the caller's context is
    restored after each: nothing of e6observe stays attached (a leaked span would parent the
    application's next spans and turn every later RPC's suppression check into a full one)."""
    from opentelemetry import context, trace

    rig.start()
    before = dict(context.get_current())
    conn = connect()
    cur = conn.cursor()
    for _ in range(2):
        cur.execute("SELECT 1")
        assert dict(context.get_current()) == before
        cur.fetchall()
        assert dict(context.get_current()) == before
        cur.clear()
        assert dict(context.get_current()) == before
    assert not trace.get_current_span().get_span_context().is_valid
    assert len(rig.spans.get_finished_spans()) == 2


def test_span_name_is_the_low_cardinality_summary_never_the_text(
    rig: Rig, sim: Simulator, connect: Callable[..., Any]
) -> None:
    rig.start()
    conn = connect(database="sales", catalog="hive")
    run(conn, "SELECT * FROM sample LIMIT 2")
    with pytest.raises(grpc.RpcError):
        run(conn, "select 'p@ss' from sample where x = 'secret-1'")
    ok, failed = rig.spans.get_finished_spans()
    assert ok.name == "SELECT sample" == ok.attributes["db.query.summary"]
    assert ok.attributes["db.operation.name"] == "SELECT"
    assert ok.attributes["db.namespace"] == "hive|sales"
    assert failed.name == "SELECT sample"
    assert "secret" not in repr(dict(failed.attributes)) + failed.name
    # Literals never reach a summary, and its length is bounded.
    assert query_summary("SELECT 'x' FROM t1 JOIN t2 ON a = 'b'") == "SELECT t1 t2"
    long = "SELECT * FROM " + ", ".join(f"t{i}" for i in range(100)) + " JOIN " + "x" * 500
    assert len(query_summary(long) or "") <= 128
    assert query_summary("'; DROP") is None


def test_one_error_type_on_span_and_metrics_and_on_failed_rpc_points(
    rig: Rig, sim: Simulator, connect: Callable[..., Any]
) -> None:
    rig.start()
    with pytest.raises(grpc.RpcError):
        connect().cursor().execute("SELECT fail()")
    (span,) = rig.spans.get_finished_spans()
    got = rig.metrics()
    (query_point,) = [
        p for p in points(got["db.client.operation.duration"][0]) if "error.type" in p.attributes
    ]
    assert span.attributes["error.type"] == query_point.attributes["error.type"] == "_OTHER"
    failed_rpcs = [
        p
        for p in points(got["rpc.client.call.duration"][0])
        if p.attributes["rpc.response.status_code"] != "OK"
    ]
    assert failed_rpcs
    for p in failed_rpcs:
        assert p.attributes["error.type"] == p.attributes["rpc.response.status_code"]
    ok_rpcs = [
        p
        for p in points(got["rpc.client.call.duration"][0])
        if p.attributes["rpc.response.status_code"] == "OK"
    ]
    assert ok_rpcs and all("error.type" not in p.attributes for p in ok_rpcs)


def test_every_metric_attribute_is_namespaced_and_consistent(
    rig: Rig, sim: Simulator, connect: Callable[..., Any]
) -> None:
    rec = rig.start()
    run(connect(), "SELECT 1")
    rec.applied("blue", "green", "announced")
    rec.retry(1, "mismatch")
    got = rig.metrics()
    keys = {k for m, _ in got.values() for p in points(m) for k in p.attributes}
    assert keys, got
    assert all("." in k for k in keys), sorted(k for k in keys if "." not in k)
    strategy_keys = {
        k for m, _ in got.values() for p in points(m) for k in p.attributes if k.endswith("strategy")
    }
    assert strategy_keys == {"e6data.strategy"}
    # Histograms and gauges of a pool use one attribute name (the conventions').
    assert M.POOL_WAIT_TIME.otel_labels == M.POOL_MAX.otel_labels == ("db.client.connection.pool.name",)
    switches = points(got["e6data.strategy.switches"][0])
    assert {tuple(sorted(p.attributes)) for p in switches} == {
        ("e6data.strategy.from", "e6data.strategy.to", "e6data.switch.cause")
    }


def test_process_metric_names_are_the_conventions_current_ones(
    rig: Rig, sim: Simulator, connect: Callable[..., Any]
) -> None:
    rig.start(runtime_metrics=True)
    got = rig.metrics()
    assert "process.unix.file_descriptor.count" in got
    assert "process.open_file_descriptor.count" not in got
    assert {n for n in got if n.startswith("process.")} <= SEMCONV_PROCESS
    assert "e6observe.process.memory.unique" in got  # no convention: e6observe's own name
    assert all(
        s.otel_name is None or not s.otel_name.startswith("process.") or s.otel_name in SEMCONV_PROCESS
        for s in M.ALL
    )


def test_runtime_metrics_can_be_turned_off(rig: Rig) -> None:
    rig.start(runtime_metrics=False)
    got = rig.metrics()
    assert "e6data.strategy.active" in got
    assert not [n for n in got if n.startswith(("process.", "cpython.", "e6observe.process."))]


def test_runtime_metrics_default_off_while_system_metrics_is_instrumented(rig: Rig) -> None:
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    rig.start()  # runtime_metrics="auto"
    assert "process.cpu.time" in rig.metrics()
    inst = SystemMetricsInstrumentor(config={"process.runtime.memory": ["rss"]})
    inst.instrument(meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]))
    try:
        got = rig.metrics()
        assert not [n for n in got if n.startswith(("process.", "cpython."))]
    finally:
        inst.uninstrument()
    assert "process.cpu.time" in rig.metrics()


@pytest.mark.parametrize("sdk", ["tested", "newer"])
def test_histogram_hand_off_exact_with_and_without_sdk_internals(
    sdk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Within the tested SDK range the delta goes into the SDK's aggregation in one step; above
    # it (or with internals that differ) every value is replayed through the public API.
    # Either way count, sum, min, max and the buckets are exact.
    from types import SimpleNamespace

    from opentelemetry.sdk._logs import LoggerProvider

    from e6observe.recorder import Recorder
    from e6observe.sinks import _otel_sdk, otel

    monkeypatch.setattr(_otel_sdk, "_sdk_ok", None if sdk == "tested" else False)
    rec = Recorder()
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    sink = otel.OtelSink(rec, SimpleNamespace(meter_provider=mp, logger_provider=LoggerProvider()))
    sink.start()
    try:
        h = rec.rpc_histogram("clear", "blue", "OK")
        values = [0.0003, 0.0004, 0.0031, 0.02, 0.5]
        for v in values:
            h.observe(v)
        reader.get_metrics_data()  # primes the series
        for v in values:
            h.observe(v)
        data = reader.get_metrics_data()
        (p,) = [
            pt
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "rpc.client.call.duration"
            for pt in m.data.data_points
        ]
        assert p.count == 10 and p.sum == pytest.approx(2 * sum(values))
        assert (p.min, p.max) == (0.0003, 0.5)
        assert sum(p.bucket_counts) == 10
        if sdk == "tested":
            assert _otel_sdk.sdk_internals_usable() and sink.bulk_points >= 1
        else:
            assert sink.bulk_points == 0 and sink.replayed_values >= 5
    finally:
        sink.close()
        mp.shutdown()
        rec.stop()


# -- the async API (connector 3.x, Python 3.11+) -------------------------------------------------
def _has_aio() -> bool:
    from helpers import HAS_AIO

    return bool(HAS_AIO)


async def _aio_query(sim: Simulator, sql: str, catalog: str | None = None) -> Any:
    from e6data_python_connector import aio
    from helpers import PASSWORD, USER

    conn = await aio.connect(
        host=sim.host,
        port=sim.port,
        username=USER,
        password=PASSWORD,
        catalog=catalog,
        database="sales" if catalog else None,
    )
    try:
        cur = conn.cursor()
        await cur.execute(sql)
        rows = await cur.fetchall()
        await cur.close()
        return rows
    finally:
        await conn.close()


@pytest.mark.skipif(not _has_aio(), reason="needs the connector's async API (3.x, Python 3.11+)")
def test_async_queries_follow_the_same_contract(
    rig: Rig, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from opentelemetry import trace
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: rig.tp)
    rig.start()
    with suppress_instrumentation():
        assert asyncio.run(_aio_query(sim, "SELECT 1")) == [[1]]
    assert rig.spans.get_finished_spans() == ()
    assert "db.client.operation.duration" not in rig.metrics()
    grpc_inst = GrpcAioInstrumentorClient()
    grpc_inst.instrument(tracer_provider=rig.tp)
    try:
        assert asyncio.run(_aio_query(sim, "SELECT * FROM sample", catalog="hive")) is not None
    finally:
        grpc_inst.uninstrument()
    spans = rig.spans.get_finished_spans()
    (query,) = [s for s in spans if s.instrumentation_scope.name == "e6observe"]
    assert query.name == "SELECT sample" and query.attributes["db.namespace"] == "hive|sales"
    children = [s for s in spans if s.parent is not None and s.parent.span_id == query.context.span_id]
    names = {s.name for s in children}
    assert any("executeStatement" in n for n in names), {s.name for s in spans}
