"""An OTLP endpoint that refuses or never answers costs the application nothing.

Real OTLP/gRPC exporters point at a closed loopback port while the real connector runs queries
against the simulator and the recorder takes observations and events as hooks would: every
query returns its rows, the application thread never enters OpenTelemetry code, the export
queues stay at their bounds, and what the log queue drops is counted.
"""

from __future__ import annotations

import gc
import socket
import sys
import time
import tracemalloc
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest

pytest.importorskip("opentelemetry.exporter.otlp.proto.grpc")

from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter  # noqa: E402
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter  # noqa: E402
from opentelemetry.sdk._logs import LoggerProvider  # noqa: E402
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: E402

from e6observe import _safe  # noqa: E402
from e6observe import metrics as M  # noqa: E402
from e6observe.recorder import FOLD_AT, Recorder  # noqa: E402
from e6observe.sinks.otel import OtelSink  # noqa: E402

pytestmark = pytest.mark.matrix

QUEUE = 64
BATCH = 16


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens here now: connections are refused
    return int(port)


def wait_handled(sink: OtelSink, n: int, timeout: float = 30.0) -> None:
    """Wait (bounded) until the sink has handled ``n`` events on the dispatcher thread."""
    deadline = time.monotonic() + timeout
    while sink.events_handled < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.events_handled == n


class CountingLogExporter(OTLPLogExporter):
    """The real OTLP log exporter, counting the records handed to it."""

    received = 0
    calls = 0

    def export(self, batch: Any) -> Any:
        type(self).received += len(batch)
        type(self).calls += 1
        return super().export(batch)


@pytest.fixture(params=["refused", "silent"])
def endpoint(request: Any) -> Iterator[str]:
    """``refused``: nothing listens (connections are refused at once). ``silent``: a socket
    that completes TCP handshakes in the kernel and never says a word (every export waits out
    its timeout), as a hung collector would."""
    if request.param == "refused":
        yield f"http://127.0.0.1:{closed_port()}"
        return
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)  # never accepted, never answered
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        s.close()


@pytest.mark.slow
def test_unreachable_otlp_endpoint(endpoint: str, sim: Any, connect: Callable[..., Any]) -> None:
    _safe.reset_for_tests()
    CountingLogExporter.received = CountingLogExporter.calls = 0
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=0.5),
        export_interval_millis=100,
        export_timeout_millis=500,
    )
    mp = MeterProvider(metric_readers=[reader])
    lp = LoggerProvider()
    processor = BatchLogRecordProcessor(
        CountingLogExporter(endpoint=endpoint, insecure=True, timeout=0.5),
        max_queue_size=QUEUE,
        max_export_batch_size=BATCH,
        schedule_delay_millis=50,
    )
    lp.add_log_record_processor(processor)
    rec = Recorder()
    sink = OtelSink(rec, SimpleNamespace(meter_provider=mp, logger_provider=lp))
    sink.start()
    queue = processor._batch_processor._queue
    cur = connect().cursor()
    emitted = 0
    otel_frames: set[str] = set()

    def profiler(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and "/opentelemetry/" in frame.f_code.co_filename:
            otel_frames.add(frame.f_code.co_filename)

    def app_round(queries: int, events_per_query: int) -> None:
        nonlocal emitted
        h = rec.rpc_histogram("executeStatement", "blue", "OK")
        for _ in range(queries):
            rec.query_started("blue")
            cur.execute("SELECT 1")
            rows = cur.fetchall()
            cur.clear()
            assert rows == [[1]]
            h.observe(0.001)
            rec.query_finished("blue", "ok", 0.002)
            for i in range(events_per_query):
                rec.retry(i + 1, "other")
            emitted += events_per_query
            assert len(queue) <= QUEUE

    try:
        sys.setprofile(profiler)
        try:
            app_round(40, 20)
        finally:
            sys.setprofile(None)
        assert otel_frames == set()  # the app thread never ran OpenTelemetry code
        wait_handled(sink, emitted)

        # Memory: a second, bigger round retains (almost) nothing more than the first.
        tracemalloc.start()
        try:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            app_round(40, 250)  # 10,000 more events, all through the stuck log pipeline
            wait_handled(sink, emitted)
            gc.collect()
            growth = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert growth < 2_000_000, f"retained {growth} bytes for 10,000 events"

        assert len(queue) <= QUEUE
        dropped = rec.family(M.EVENTS_DROPPED).counter("otlp").value
        assert dropped > 0
        # Every event is in the queue, handed to the exporter, or counted as dropped; at most
        # one batch can be between the queue and the exporter when we look.
        accounted = dropped + len(queue) + CountingLogExporter.received
        assert accounted >= emitted - BATCH  # no drop goes uncounted
        # The count is taken by looking at the queue just before each emit; a batch taken by
        # the export thread in between can make one look stale, so it may over-count by at
        # most one per batch.
        assert accounted <= emitted + CountingLogExporter.calls
        assert rec.family(M.EVENTS_DROPPED).counter("dispatch").value == 0
        # The metric reader keeps collecting (and failing to export): what a histogram holds
        # for it stays fixed-size (a delta of its buckets) and its pending list bounded.
        for fam in rec.families.values():
            for _, child in fam.items():
                if hasattr(child, "bounds"):
                    assert len(child.pending) < FOLD_AT + 8
                    o = child.otel
                    assert o is None or len(o.counts) == len(child.bounds) + 1
        assert not [c for c in _safe.internal_errors() if c.startswith("sink.otel")]
    finally:
        sink.close()
        rec.stop()
        mp.shutdown(timeout_millis=2000)
        lp.shutdown()
        _safe.reset_for_tests()
