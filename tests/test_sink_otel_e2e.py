"""The OpenTelemetry path end to end: instrument(), the real connector, the simulator's switches,
read back through the SDK's in-memory metric reader and log exporter."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import e6observe
from e6observe import metrics as M

try:
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as InMemoryLogs
except ImportError:  # SDK < 1.39
    from opentelemetry.sdk._logs.export import InMemoryLogExporter as InMemoryLogs  # type: ignore


@pytest.fixture
def otel() -> Iterator[tuple[InMemoryMetricReader, Any]]:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader])
    logs = InMemoryLogs()
    lp = LoggerProvider()
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
    e6observe.instrument(meter_provider=mp, logger_provider=lp)
    try:
        yield reader, logs
    finally:
        e6observe.uninstrument()
        mp.shutdown()
        lp.shutdown()


def metrics_by_name(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    return {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


@pytest.mark.matrix
def test_switches_mismatches_and_latency_through_opentelemetry(
    otel: tuple[InMemoryMetricReader, Any], sim: Any, connect: Callable[..., Any]
) -> None:
    reader, logs = otel
    rec = e6observe.get_recorder()
    conn = connect()

    def query() -> Any:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        rows = cur.fetchall()
        cur.clear()
        return rows

    assert query() == [[1]]  # blue detected
    sim.announce()
    assert query() == [[1]]  # learns of green, flips when the query clears
    sim.complete()
    assert query() == [[1]]
    sim.flip(announce=False)  # abrupt: back to blue, learnt from a 456
    assert query() == [[1]]
    assert query() == [[1]]

    got = metrics_by_name(reader)
    keys = M.SWITCHES.otel_labels  # e6data.strategy.from, .to, e6data.switch.cause
    switches = {
        tuple(dict(p.attributes)[k] for k in keys): p.value
        for p in got["e6data.strategy.switches"].data.data_points
        if p.value
    }
    assert switches == {("blue", "green", "announced"): 1, ("green", "blue", "mismatch"): 1}
    assert sum(switches.values()) == rec.switch_total()
    mismatches = sum(p.value for p in got["e6data.strategy.mismatches"].data.data_points)
    assert mismatches == sim.counters()["mismatches_total"] > 0
    active = {
        dict(p.attributes)["e6data.strategy"]: p.value for p in got["e6data.strategy.active"].data.data_points
    }
    assert active == {sim.active: 1, "green" if sim.active == "blue" else "blue": 0}

    db = got["db.client.operation.duration"].data.data_points
    by_strategy: dict[str, int] = {}
    for p in db:
        attrs = dict(p.attributes)
        assert attrs["db.system.name"] == "e6data"
        assert (attrs["server.address"], attrs["server.port"]) == (sim.host, sim.port)
        by_strategy[attrs["e6data.strategy"]] = by_strategy.get(attrs["e6data.strategy"], 0) + p.count
    assert set(by_strategy) == {"blue", "green"}
    recorded = sum(h.snapshot()[2] for _, h in rec.family(M.QUERY_DURATION).items())
    assert sum(by_strategy.values()) == recorded == 5

    rpc = got["rpc.client.call.duration"].data.data_points
    codes = {dict(p.attributes)[M.RPC_DURATION.otel_labels[2]] for p in rpc}
    assert {"OK", "UNKNOWN"} <= codes  # the 456 is a gRPC UNKNOWN
    assert {dict(p.attributes)["rpc.system.name"] for p in rpc} == {"grpc"}
    rpc_total = sum(h.snapshot()[2] for _, h in rec.family(M.RPC_DURATION).items())
    assert sum(p.count for p in rpc) == rpc_total

    deadline = time.monotonic() + 10  # log records are emitted on the dispatcher thread
    while len(logs.get_finished_logs()) < rec.ring.emitted and time.monotonic() < deadline:
        time.sleep(0.01)
    # (API < 1.31 has no event_name: the older convention, an ``event.name`` attribute)
    names = [
        getattr(r.log_record, "event_name", None) or r.log_record.attributes["event.name"]
        for r in logs.get_finished_logs()
    ]
    assert len(names) == rec.ring.emitted
    assert names.count("e6data.strategy.applied") == 2
    assert names[0] == "e6data.strategy.detected"
    assert names.count("e6data.strategy.mismatch") == mismatches
