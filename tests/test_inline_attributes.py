"""The hooks never turn a connector cursor's inline attributes into a dict.

On Python 3.11+ an instance keeps its attribute values inline (beside the object, keyed by the
class's shared keys) until something reads its ``__dict__``; from then on the values live in a
real dict for good and every attribute access of the connector on that object takes the slower
path. Measured with callgrind on connector 3.0.2: one ``cursor.__dict__`` read adds ~105 000
instructions (+6 %) to every later query of the bare connector - more than all of e6observe's
hooks together. The hooks read and write their per-cursor state with ``getattr``/``setattr``.

Detection: ``gc.get_referents`` of an object whose values are inline yields the values
themselves; once materialised it yields the instance dict, recognisable by holding the
connector's own attribute names.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from typing import Any

import grpc
import pytest
from e6data_python_connector.exceptions import OperationalError
from helpers import HAS_AIO, PASSWORD, USER

import e6observe
from e6observe import _safe
from e6observe.recorder import Recorder
from e6observe.sim import Simulator

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="inline attribute values exist from Python 3.11"
)


def materialised(obj: Any, marker: str = "_query_id") -> bool:
    """True if ``obj``'s attributes live in a real instance dict (one holding ``marker``)."""
    return any(type(r) is dict and marker in r for r in gc.get_referents(obj))


def test_the_detector_sees_a_materialised_dict(connect: Any) -> None:
    # Without this the other tests could not fail: a cursor whose __dict__ was read is seen.
    cur = connect().cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    assert not materialised(cur)
    cur.__dict__  # noqa: B018 - the read is the point
    assert materialised(cur)


def test_sync_queries_keep_the_cursor_inline(instrumented: Recorder, sim: Simulator, connect: Any) -> None:
    cur = connect().cursor()
    for _ in range(3):
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.clear()
    cur.execute("SELECT 1")  # never cleared: ended by the next execute
    cur.fetchmany(1)
    cur.execute("SELECT 2")
    cur.fetchone()
    cur.cancel(cur.query_id)
    sim.inject_fault("executeStatement", grpc.StatusCode.FAILED_PRECONDITION, "nope", 1)
    with pytest.raises(grpc.RpcError):
        cur.execute("SELECT 3")
    sim.inject_fault("getNextResultBatch", grpc.StatusCode.INTERNAL, "broken", 1)
    cur.execute("SELECT 4")
    with pytest.raises(grpc.RpcError):
        cur.fetchall()
    assert instrumented.family(e6observe.metrics.QUERY_DURATION).histogram("blue", "ok").count >= 3
    assert not materialised(cur)
    # (The connector's close() sets one more attribute of its own: the 31st with e6observe's,
    # past the 30 a class's shared keys hold, so a closed cursor goes to a dict. It is closed.)


def test_traced_queries_keep_the_cursor_inline(sim: Simulator, connect: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    _safe.reset_for_tests()
    assert e6observe.instrument(otel=True, tracer_provider=tp) is not None
    try:
        cur = connect(catalog="cat", database="db").cursor()
        for _ in range(2):
            cur.execute("SELECT 1")
            cur.fetchall()
            cur.clear()
        assert len(exporter.get_finished_spans()) == 2
        assert not materialised(cur)
    finally:
        e6observe.uninstrument()


@pytest.mark.aio
@pytest.mark.skipif(not HAS_AIO, reason="the connector's async API needs connector 3.x on Python 3.11+")
def test_async_queries_keep_the_cursor_inline(instrumented: Recorder, sim: Simulator) -> None:
    # AsyncCursor sets 29 attributes of its own: all the inline values 3.11 keeps for it, so
    # e6observe keeps its per-cursor state off the cursor (one attribute more materialised the
    # cursor's dict at its first query, +104 000 instructions per async query). The marker is
    # one of AsyncCursor's own attributes (it has no ``_query_id``).
    from e6data_python_connector import aio

    async def run() -> None:
        conn = await aio.connect(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
        try:
            probe = conn.cursor()
            assert not materialised(probe, "_connection")
            probe.__dict__  # noqa: B018 - the detector sees an async cursor's dict too
            assert materialised(probe, "_connection")
            await probe.close()

            cur = conn.cursor()
            for _ in range(3):
                await cur.execute("SELECT 1")
                assert not materialised(cur, "_connection")  # mid-query: the connector's accesses
                await cur.fetchall()
                await cur.clear()
            await cur.execute("SELECT 1")  # partly fetched
            await cur.fetchmany(1)
            await cur.clear()
            await cur.execute("SELECT 2")
            await cur.cancel()
            await cur.clear()
            sim.inject_fault("getNextResultBatch", grpc.StatusCode.INTERNAL, "broken", 1)
            await cur.execute("SELECT 3")
            with pytest.raises((grpc.RpcError, OperationalError)):  # 3.0.0 wraps it
                await cur.fetchall()
            assert not materialised(cur, "_connection")
            await cur.close()
            assert not materialised(cur, "_connection")
            fresh = conn.cursor()  # a cursor made after all that still starts inline
            await fresh.execute("SELECT 1")
            await fresh.fetchall()
            assert not materialised(fresh, "_connection")
            await fresh.close()
        finally:
            await conn.close()

    asyncio.run(run())
    assert instrumented.family(e6observe.metrics.QUERY_DURATION).histogram("blue", "ok").count >= 3
