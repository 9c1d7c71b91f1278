"""The OpenTelemetry sink, read through the SDK's in-memory metric reader and log exporter.

The recorder is driven directly (as the hooks do); the sink must export exactly what it holds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from e6observe import metrics as M
from e6observe.recorder import Recorder
from e6observe.sinks.otel import OtelSink

try:
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as InMemoryLogs
except ImportError:  # SDK < 1.39
    from opentelemetry.sdk._logs.export import InMemoryLogExporter as InMemoryLogs  # type: ignore


pytestmark = pytest.mark.matrix


class Rig(SimpleNamespace):
    rec: Recorder
    sink: OtelSink
    reader: InMemoryMetricReader
    logs: Any
    mp: MeterProvider
    lp: LoggerProvider

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        out: dict[str, Any] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out[m.name] = m
        return out


@pytest.fixture
def rig() -> Iterator[Rig]:
    rec = Recorder()
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    logs = InMemoryLogs()
    lp = LoggerProvider()
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
    rec.server = ("db.example", 443)  # what the channel hook sets from the first connection
    sink = OtelSink(rec, SimpleNamespace(meter_provider=mp, logger_provider=lp))
    sink.start()
    r = Rig(rec=rec, sink=sink, reader=reader, logs=logs, mp=mp, lp=lp)
    try:
        yield r
    finally:
        sink.close()
        rec.stop()
        mp.shutdown()
        lp.shutdown()


def wait_handled(sink: OtelSink, n: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until the sink handled ``n`` events on the recorder's dispatcher."""
    deadline = time.monotonic() + timeout
    while sink.events_handled < n and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sink.events_handled == n


def points(metric: Any) -> dict[frozenset, Any]:
    return {frozenset(p.attributes.items()): p for p in metric.data.data_points}


def test_query_duration_follows_the_database_conventions(rig: Rig) -> None:
    rec = rig.rec
    values = {
        ("blue", "ok"): [0.0004, 0.002, 0.002, 0.03],
        ("green", "ok"): [0.7],
        ("green", "error"): [0.006],
        ("blue", "switch_interrupted"): [12.0],
    }
    for (strategy, outcome), vs in values.items():
        for v in vs:
            rec.query_started(strategy)
            rec.query_finished(strategy, outcome, v)
    m = rig.metrics()["db.client.operation.duration"]
    assert m.unit == "s"
    assert m.data.aggregation_temporality.name == "CUMULATIVE"
    # No db.operation.name: the histogram is not split by statement, and the spans' value is
    # the SQL keyword, which any constant here would contradict.
    base = {"db.system.name": "e6data", "server.address": "db.example", "server.port": 443}
    expect_error = {"ok": None, "error": "_OTHER", "switch_interrupted": "switch_interrupted"}
    pts = points(m)
    assert len(pts) == len(values)  # zero-initialised children with no values export nothing
    for strategy, outcome in values:
        attrs = {**base, "e6data.strategy": strategy}
        if expect_error[outcome]:
            attrs["error.type"] = expect_error[outcome]
        p = pts[frozenset(attrs.items())]
        assert tuple(p.explicit_bounds) == M.DB_DURATION_BUCKETS
        counts, total, n = rec.family(M.QUERY_DURATION).histogram(strategy, outcome).snapshot()
        assert list(p.bucket_counts) == counts  # the same observations, bucketed the same way
        assert (p.count, p.sum) == (n, pytest.approx(total))


def test_rpc_duration_follows_the_rpc_conventions(rig: Rig) -> None:
    rig.rec.rpc_histogram("prepareStatement", "blue", "OK").observe(0.0003)
    rig.rec.rpc_histogram("prepareStatement", "blue", "OK").observe(0.0009)
    rig.rec.rpc_histogram("other", "green", "UNKNOWN").observe(0.2)
    m = rig.metrics()["rpc.client.call.duration"]
    assert m.unit == "s"
    names = M.RPC_DURATION.otel_labels
    pts = points(m)
    ok = pts[
        frozenset(
            {
                "rpc.system.name": "grpc",
                names[0]: "QueryEngineService/prepareStatement",
                names[1]: "blue",
                names[2]: "OK",
                "server.address": "db.example",
                "server.port": 443,
            }.items()
        )
    ]
    assert tuple(ok.explicit_bounds) == M.RPC_DURATION_BUCKETS
    assert (ok.count, ok.bucket_counts[0], ok.bucket_counts[1]) == (2, 1, 1)
    other = [p for a, p in pts.items() if dict(a)[names[0]] == "_OTHER"]
    assert len(other) == 1 and dict(other[0].attributes)[names[2]] == "UNKNOWN"


def test_a_value_observed_just_before_a_collection_is_in_that_collection(rig: Rig) -> None:
    """The drain runs in an observable callback, which the SDK runs before it collects the
    synchronous histograms: nothing lags one collection behind."""
    h = rig.rec.rpc_histogram("authenticate", "blue", "OK")
    for i in range(1, 4):
        h.observe(0.001 * i)
        (p,) = points(rig.metrics()["rpc.client.call.duration"]).values()
        assert p.count == i  # cumulative, and current


def test_deltas_hold_only_values_since_the_last_collection(rig: Rig) -> None:
    h = rig.rec.rpc_histogram("clear", "green", "OK")
    for _ in range(100):
        h.observe(0.001)
    rig.metrics()
    assert h.take_otel() is None
    h.observe(0.001)
    d = h.take_otel()
    assert d is not None and d.n == 1


def test_series_are_added_to_the_sdk_in_one_step_not_replayed(rig: Rig) -> None:
    h = rig.rec.rpc_histogram("getNextResultBatch", "blue", "OK")
    values = [0.0002 * (i % 40 + 1) for i in range(10_000)]
    for v in values:
        h.observe(v)
    (p,) = points(rig.metrics()["rpc.client.call.duration"]).values()
    # One value went through Histogram.record so that the SDK created the series; the other
    # 9 999 were added in one step.
    assert (rig.sink.primed_values, rig.sink.bulk_points, rig.sink.replayed_values) == (1, 1, 0)
    counts, total, n = h.snapshot()
    assert (p.count, list(p.bucket_counts)) == (10_000, counts)
    assert p.sum == pytest.approx(sum(values))
    assert (p.min, p.max) == (min(values), max(values))
    for v in values[:10]:
        h.observe(v)
    (p,) = points(rig.metrics()["rpc.client.call.duration"]).values()
    assert p.count == 10_010 and rig.sink.bulk_points == 2  # cumulative across collections
    assert rig.sink.primed_values == 1  # the series exists now


def test_a_view_that_drops_attributes_still_gets_one_step_deltas() -> None:
    """Two e6observe series that a view folds into one SDK series (it keeps only rpc.method):
    both deltas land in that one series, in one step each."""
    from opentelemetry.sdk.metrics.view import View

    rec = Recorder()
    reader = InMemoryMetricReader()
    mp = MeterProvider(
        metric_readers=[reader],
        views=[View(instrument_name="rpc.client.call.duration", attribute_keys={"rpc.method"})],
    )
    sink = OtelSink(rec, SimpleNamespace(meter_provider=mp, logger_provider=LoggerProvider()))
    sink.start()
    try:
        for strategy, n in (("blue", 30), ("green", 12)):
            h = rec.rpc_histogram("clear", strategy, "OK")
            for _ in range(n):
                h.observe(0.002)
        data = reader.get_metrics_data()
        pts = [
            pt
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "rpc.client.call.duration"
            for pt in m.data.data_points
        ]
        assert [(dict(p.attributes), p.count) for p in pts] == [
            ({"rpc.method": "QueryEngineService/clear"}, 42)
        ]
        assert pts[0].sum == pytest.approx(42 * 0.002)
        assert sink.replayed_values == 0 and sink.bulk_points + sink.primed_values >= 2
    finally:
        sink.close()
        mp.shutdown()
        rec.stop()


def test_delta_temporality_gets_each_interval_exactly_once() -> None:
    """A delta reader discards its aggregations at each collection: every interval's values
    land in that interval's point, none twice, none lost."""
    from opentelemetry.sdk.metrics import Histogram as SdkHistogram
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    rec = Recorder()
    reader = InMemoryMetricReader(preferred_temporality={SdkHistogram: AggregationTemporality.DELTA})
    mp = MeterProvider(metric_readers=[reader])
    sink = OtelSink(rec, SimpleNamespace(meter_provider=mp, logger_provider=LoggerProvider()))
    sink.start()
    try:
        h = rec.rpc_histogram("clear", "blue", "OK")
        for n in (500, 3, 1, 0, 1200):
            for i in range(n):
                h.observe(0.0001 * (i % 30 + 1))
            data = reader.get_metrics_data()
            pts = [
                pt
                for rm in (data.resource_metrics if data else ())
                for sm in rm.scope_metrics
                for m in sm.metrics
                if m.name == "rpc.client.call.duration"
                for pt in m.data.data_points
            ]
            assert sum(p.count for p in pts) == n
        assert sink.replayed_values == 0 and sink.bulk_points >= 2
    finally:
        sink.close()
        mp.shutdown()
        rec.stop()


def test_a_view_with_other_buckets_gets_a_replay_with_exact_count_sum_min_max() -> None:
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    rec = Recorder()
    reader = InMemoryMetricReader()
    view = View(
        instrument_name="rpc.client.call.duration",
        aggregation=ExplicitBucketHistogramAggregation([0.001, 0.01]),
    )
    mp = MeterProvider(metric_readers=[reader], views=[view])
    sink = OtelSink(rec, SimpleNamespace(meter_provider=mp, logger_provider=LoggerProvider()))
    sink.start()
    try:
        h = rec.rpc_histogram("clear", "blue", "OK")
        values = [0.0003, 0.0004, 0.0031, 0.0032, 0.0033, 0.02, 0.5]
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
        assert sink.bulk_points == 0
        assert sink.primed_values + sink.replayed_values == len(values)
        assert tuple(p.explicit_bounds) == (0.001, 0.01)  # the view's buckets, not ours
        assert list(p.bucket_counts) == [2, 3, 2]
        assert p.count == 7 and p.sum == pytest.approx(sum(values))
        assert (p.min, p.max) == (0.0003, 0.5)
    finally:
        sink.close()
        mp.shutdown()
        rec.stop()


def test_mirrored_counters_and_gauges_read_the_recorder(rig: Rig) -> None:
    rec = rig.rec
    rec.detected("blue")
    rec.announced("green")
    rec.query_started("blue")
    got = rig.metrics()
    assert {
        dict(a)["e6data.strategy"]: p.value for a, p in points(got["e6data.strategy.pending"]).items()
    } == {"blue": 0, "green": 1}
    rec.applied("blue", "green", "announced", pinned_queries=1)
    rec.applied("green", "blue", "mismatch")
    rec.mismatch("green", "prepareStatement")
    rec.retry(1, "mismatch")
    got = rig.metrics()
    active = {dict(a)["e6data.strategy"]: p.value for a, p in points(got["e6data.strategy.active"]).items()}
    assert active == {"blue": 1, "green": 0}
    sw = got["e6data.strategy.switches"]
    assert sw.data.is_monotonic and sw.unit == "{switch}"
    switches = {
        tuple(
            dict(a)[k] for k in ("e6data.strategy.from", "e6data.strategy.to", "e6data.switch.cause")
        ): p.value
        for a, p in points(sw).items()
    }
    assert len(switches) == 2 * len(M.SWITCH_CAUSES)  # zero-initialised in both directions
    assert switches[("blue", "green", "announced")] == 1
    assert switches[("green", "blue", "mismatch")] == 1
    assert sum(switches.values()) == rec.switch_total() == 2
    assert {tuple(sorted(a)): p.value for a, p in points(got["e6data.strategy.mismatches"]).items()} == {
        (("e6data.strategy", "green"), ("rpc.method", "QueryEngineService/prepareStatement")): 1
    }
    events = {dict(a)["e6data.event.kind"]: p.value for a, p in points(got["e6data.strategy.events"]).items()}
    assert events == {
        "detected": 1,
        "announced": 1,
        "applied": 2,
        "mismatch": 1,
        "cache_cleared": 0,
        "retry": 1,
        "suspended_seen": 0,
        "resume_started": 0,
        "resume_finished": 0,
        "strategy_rejected": 0,
    }
    assert got["e6data.strategy.last_switch_time"].data.data_points[0].value == rec.last_switch_time
    in_flight = {
        dict(a)["e6data.strategy"]: p.value for a, p in points(got["e6data.client.queries_in_flight"]).items()
    }
    assert in_flight == {"blue": 1, "green": 0}
    assert not got["e6data.client.queries_in_flight"].data.is_monotonic
    drain = got["e6data.strategy.switch.drain_time"].data.data_points
    assert [p.count for p in drain] == [1]
    assert tuple(drain[0].explicit_bounds) == M.DRAIN_BUCKETS


def test_events_become_log_records_named_after_their_kind(rig: Rig) -> None:
    rec = rig.rec
    rec.detected("blue")
    rec.announced("green")
    rec.applied("blue", "green", "announced", pinned_queries=2)
    rec.mismatch("green", "executeStatement")
    rec.cache_cleared("green")
    rec.retry(2, "mismatch")
    wait_handled(rig.sink, 6)
    records = [r.log_record for r in rig.logs.get_finished_logs()]
    assert [r.event_name for r in records] == [
        "e6data.strategy.detected",
        "e6data.strategy.announced",
        "e6data.strategy.applied",
        "e6data.strategy.mismatch",
        "e6data.strategy.cache_cleared",
        "e6data.strategy.retry",
    ]
    by = {r.event_name.rsplit(".", 1)[1]: r for r in records}
    applied = dict(by["applied"].attributes)
    assert applied["e6data.strategy.from"] == "blue" and applied["e6data.strategy.to"] == "green"
    assert applied["e6data.switch.cause"] == "announced"
    assert applied["e6data.switch.pinned_queries"] == 2
    assert applied["e6data.switch.drain_time"] >= 0.0
    ring = {e.kind: e for e in rec.ring.snapshot()}
    assert applied["e6data.event.seq"] == ring["applied"].seq
    assert by["applied"].timestamp == int(ring["applied"].time_unix * 1e9)
    assert dict(by["mismatch"].attributes)["rpc.method"] == "QueryEngineService/executeStatement"
    assert by["mismatch"].severity_text == "WARN" and by["applied"].severity_text == "INFO"
    assert dict(by["retry"].attributes)["e6data.retry.attempt"] == 2
    assert "e6data.switch.cause" not in dict(by["detected"].attributes)


def test_the_hot_path_never_calls_opentelemetry(rig: Rig) -> None:
    """Hooks run in the application's threads; every recorder call they make must stay inside
    e6observe (the SDK is reached only at collection time and on the dispatcher thread)."""
    seen: set[str] = set()

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and "opentelemetry" in frame.f_code.co_filename:
            seen.add(frame.f_code.co_filename)

    rec = rig.rec
    h = rec.rpc_histogram("prepareStatement", "blue", "OK")
    sys.setprofile(profiler)
    try:
        for _ in range(50):
            rec.query_started("blue")
            h.observe(0.001)
            rec.query_finished("blue", "ok", 0.002)
        rec.detected("blue")
        rec.announced("green")
        rec.applied("blue", "green", "announced")
        rec.mismatch("green", "prepareStatement")
        rec.retry(1, "mismatch")
    finally:
        sys.setprofile(None)
    assert seen == set()
    wait_handled(rig.sink, 5)
    assert len(rig.logs.get_finished_logs()) == 5  # the events did reach OpenTelemetry


def test_close_then_a_new_sink_reuses_the_instruments(rig: Rig, caplog: Any) -> None:
    rig.rec.rpc_histogram("clear", "blue", "OK").observe(0.001)
    rig.sink.close()  # drains what was observed before close
    rig.rec.rpc_histogram("clear", "blue", "OK").observe(0.001)  # after close: not exported
    got = rig.metrics()
    assert [p.count for p in got["rpc.client.call.duration"].data.data_points] == [1]
    assert rig.rec.rpc_histogram("clear", "blue", "OK").otel is None
    rec2 = Recorder()
    with caplog.at_level(logging.WARNING):
        sink2 = OtelSink(rec2, SimpleNamespace(meter_provider=rig.mp, logger_provider=rig.lp))
        sink2.start()
    try:
        assert not [r for r in caplog.records if "created already" in r.getMessage()]
        rec2.applied("blue", "green", "mismatch")
        rec2.rpc_histogram("clear", "green", "OK").observe(0.002)
        got = rig.metrics()
        switches = sum(p.value for p in got["e6data.strategy.switches"].data.data_points)
        assert switches == 1  # the new recorder's count, not the closed one's
        rpc = {
            dict(p.attributes)[M.RPC_DURATION.otel_labels[1]]: p.count
            for p in got["rpc.client.call.duration"].data.data_points
        }
        assert rpc == {"blue": 1, "green": 1}
    finally:
        sink2.close()
        rec2.stop()


def test_a_noop_provider_costs_no_deltas() -> None:
    rec = Recorder()
    sink = OtelSink(
        rec, SimpleNamespace(meter_provider=NoOpMeterProvider(), logger_provider=LoggerProvider())
    )
    sink.start()
    try:
        h = rec.rpc_histogram("clear", "blue", "OK")
        h.observe(0.001)
        assert h.otel is None
    finally:
        sink.close()
        rec.stop()


def test_a_failing_callback_is_contained_and_counted(rig: Rig, monkeypatch: Any) -> None:
    from e6observe import _safe

    _safe.reset_for_tests()

    def boom(self: Any) -> Any:
        raise RuntimeError("broken state")

    monkeypatch.setattr(OtelSink, "_observe_pending", boom)
    rig.rec.rpc_histogram("clear", "blue", "OK").observe(0.001)
    got = rig.metrics()  # the other instruments still export
    assert "e6data.strategy.pending" not in got
    assert [p.count for p in got["rpc.client.call.duration"].data.data_points] == [1]
    assert _safe.internal_errors() == {"sink.otel.metrics": 1}
    errors = {
        dict(p.attributes)["e6observe.component"]: p.value
        for p in rig.metrics()["e6observe.internal_errors"].data.data_points
    }
    assert errors["sink.otel.metrics"] >= 1
    _safe.reset_for_tests()


class _StuckExporter(LogRecordExporter):
    """An exporter whose endpoint never answers: the first export blocks until released."""

    def __init__(self) -> None:
        self.received = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, batch: Any) -> Any:
        from opentelemetry.sdk._logs.export import LogRecordExportResult

        self.received += len(batch)
        self.entered.set()
        self.release.wait(30)
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_a_stuck_log_exporter_drops_with_an_exact_count() -> None:
    rec = Recorder()
    exporter = _StuckExporter()
    processor = BatchLogRecordProcessor(
        exporter, max_queue_size=16, max_export_batch_size=4, schedule_delay_millis=10
    )
    lp = LoggerProvider()
    lp.add_log_record_processor(processor)
    sink = OtelSink(rec, SimpleNamespace(meter_provider=NoOpMeterProvider(), logger_provider=lp))
    sink.start()
    try:
        for i in range(8):
            rec.retry(i + 1, "mismatch")
        wait_handled(sink, 8)
        assert exporter.entered.wait(10)  # the batch thread is now stuck in export
        for i in range(200):
            rec.retry(i + 1, "other")
        wait_handled(sink, 208)
        queue = processor._batch_processor._queue
        assert len(queue) == 16  # bounded
        dropped = rec.family(M.EVENTS_DROPPED).counter("otlp").value
        # Every record emitted is queued, handed to the exporter, or counted as dropped.
        assert dropped == 208 - len(queue) - exporter.received
        assert dropped > 0
    finally:
        exporter.release.set()
        sink.close()
        rec.stop()
        lp.shutdown()
