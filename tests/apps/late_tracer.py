"""A global SDK tracer provider set *after* instrument() is still picked up (within a second).

Prints one JSON line: spans exported before and after the provider was set.
"""

from __future__ import annotations

import json
import time

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import e6observe
from e6observe import _api
from e6observe.sim import Simulator

e6observe.instrument()
from e6data_python_connector import Connection  # noqa: E402


def query(conn: Connection) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.clear()


with Simulator() as sim:
    conn = Connection(host=sim.host, port=sim.port, username="app@example.com", password="pw")
    exporter = InMemorySpanExporter()
    query(conn)
    before = len(exporter.get_finished_spans())
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(tp)
    time.sleep(_api.TRACER_RECHECK_SECONDS + 0.1)
    query(conn)
    spans = exporter.get_finished_spans()
    conn.close()
e6observe.uninstrument()
print(json.dumps({"spans_before": before, "spans_after": len(spans), "names": [s.name for s in spans]}))
