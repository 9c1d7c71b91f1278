"""OpenTelemetry set up by the application before instrument(), after it, or never.

    python tests/apps/otel_order.py before|after|never|entry-point

``before``: the SDK's providers (in-memory readers) are set globally, then instrument().
``after``: instrument() first (the OpenTelemetry sink waits for the application's import of the
API), then the SDK is imported and its providers set. ``entry-point``: run under
``opentelemetry-instrument`` (it calls instrument() before this file runs; no distro is
installed, so the application sets the providers, as in ``after``). ``never``: nothing of
OpenTelemetry is imported by the application.

Queries run against the simulator with one announced and one abrupt switch; one JSON line
reports what reached OpenTelemetry (metric names and switch points, log records' event names,
span names) and which OpenTelemetry modules the process loaded.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

MODE = sys.argv[1]
API = ("opentelemetry.metrics", "opentelemetry._logs", "opentelemetry.trace", "opentelemetry.sdk")


def set_up_sdk() -> dict[str, Any]:
    from opentelemetry import _logs, metrics, trace
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    try:
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as InMemoryLogs
    except ImportError:  # SDK < 1.39
        from opentelemetry.sdk._logs.export import InMemoryLogExporter as InMemoryLogs  # type: ignore

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    logs = InMemoryLogs()
    lp = LoggerProvider()
    lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
    _logs.set_logger_provider(lp)
    spans = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))
    trace.set_tracer_provider(tp)
    return {"reader": reader, "logs": logs, "spans": spans}


def query(conn: Any, sql: str = "SELECT 1") -> list[Any]:
    cur = conn.cursor()
    cur.execute(sql)
    rows = cur.fetchall()
    cur.clear()
    return rows  # type: ignore[no-any-return]


def main() -> dict[str, Any]:
    import e6observe

    sdk = set_up_sdk() if MODE == "before" else None
    if MODE != "entry-point":
        e6observe.instrument(prometheus_port=0)
    from e6observe import _api

    inst = _api._active
    assert inst is not None
    out: dict[str, Any] = {"otel_sink_at_instrument": any(c == "sink.otel" for c, _, _ in inst.sinks)}
    out["watching"] = len(inst.otel_watches)
    if MODE in ("after", "entry-point"):
        sdk = set_up_sdk()
        # Behind a provider set after instrument(), the histograms start at the first
        # collection (a periodic reader's first interval): as before the sink could wait.
        sdk["reader"].get_metrics_data()
    from e6data_python_connector import Connection

    from e6observe.sim import Simulator

    with Simulator() as sim:
        conn = Connection(host=sim.host, port=sim.port, username="app@example.com", password="pw")
        rows = query(conn)
        sim.announce()
        rows += query(conn)  # learns of the announcement
        rows += query(conn)  # drained: applies green
        sim.complete()
        sim.flip(announce=False)  # abrupt back to blue
        if sdk is not None:
            time.sleep(_api.TRACER_RECHECK_SECONDS + 0.1)  # a late tracer provider is seen
        rows += query(conn, "SELECT 2")
        conn.close()
    out["rows"] = rows
    out["otel_sink"] = any(c == "sink.otel" for c, _, _ in inst.sinks)
    if sdk is not None:
        data = sdk["reader"].get_metrics_data()
        got = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        out["metric_names"] = sorted(got)
        out["switch_points"] = sorted(
            "|".join(str(v) for _, v in sorted(p.attributes.items()))
            for p in got["e6data.strategy.switches"].data.data_points
            if p.value
        )
        duration = got.get("db.client.operation.duration")
        out["query_count"] = sum(p.count for p in duration.data.data_points) if duration else 0
        records = [getattr(r, "log_record", r) for r in sdk["logs"].get_finished_logs()]
        out["log_events"] = sorted(
            {getattr(r, "event_name", None) or (r.attributes or {}).get("event.name") for r in records}
        )
        # (under the entry point, the gRPC instrumentation's RPC spans, "/Service/method", too)
        names = [s.name for s in sdk["spans"].get_finished_spans()]
        out["query_spans"] = [n for n in names if not n.startswith("/")]
    e6observe.uninstrument()
    out["watches_left"] = sum(type(f).__name__ == "_ImportWatch" for f in sys.meta_path)
    out["loaded"] = [m for m in API if m in sys.modules]
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
