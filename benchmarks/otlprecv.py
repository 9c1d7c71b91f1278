"""A local OTLP/gRPC receiver for the benchmark, built from opentelemetry-proto's service stubs
(no collector binary is available here). It accepts metrics, traces and logs, counts what
arrives, and drops it. Runs in its own process, controlled by JSON lines on stdin like the
simulator (``simproc.py``): it prints ``{"port": N}``, then answers ``counts`` and ``quit``.
"""

from __future__ import annotations

import json
import sys
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as lpb
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc as lgrpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

_lock = threading.Lock()
COUNTS = {
    "metric_requests": 0,
    "metric_points": 0,
    "span_requests": 0,
    "spans": 0,
    "log_requests": 0,
    "log_records": 0,
    "bytes": 0,
}


def _bump(**kw: int) -> None:
    with _lock:
        for k, v in kw.items():
            COUNTS[k] += v


class Metrics(mgrpc.MetricsServiceServicer):  # type: ignore[misc]
    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - the proto's name
        points = 0
        for rm in request.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points += len(getattr(m, kind).data_points) if kind else 0
        _bump(metric_requests=1, metric_points=points, bytes=request.ByteSize())
        return mpb.ExportMetricsServiceResponse()


class Traces(tgrpc.TraceServiceServicer):  # type: ignore[misc]
    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        _bump(span_requests=1, spans=n, bytes=request.ByteSize())
        return tpb.ExportTraceServiceResponse()


class Logs(lgrpc.LogsServiceServicer):  # type: ignore[misc]
    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        n = sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
        _bump(log_requests=1, log_records=n, bytes=request.ByteSize())
        return lpb.ExportLogsServiceResponse()


def main() -> int:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    mgrpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    tgrpc.add_TraceServiceServicer_to_server(Traces(), server)
    lgrpc.add_LogsServiceServicer_to_server(Logs(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    out = sys.stdout
    out.write(json.dumps({"port": port}) + "\n")
    out.flush()
    try:
        for line in sys.stdin:
            cmd = json.loads(line).get("cmd")
            if cmd == "quit":
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                break
            with _lock:
                reply = (
                    {"ok": True, "result": dict(COUNTS)}
                    if cmd == "counts"
                    else {"ok": False, "error": f"unknown command {cmd!r}"}
                )
            out.write(json.dumps(reply) + "\n")
            out.flush()
    finally:
        server.stop(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
