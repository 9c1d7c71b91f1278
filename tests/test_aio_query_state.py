"""Where the async hook keeps a cursor's query: a map by ``id(cursor)``, never the cursor.

``AsyncCursor`` (connector 3.0.x) sets 29 attributes, all the inline values Python 3.11 keeps
for it, so one attribute more would turn every instrumented cursor's values into a dict (see
``test_inline_attributes.py``). The map must not grow with the cursors an application makes:
an entry goes when its query ends, and with its cursor if that is collected first.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import grpc
import pytest
from e6data_python_connector.exceptions import OperationalError
from helpers import PASSWORD, USER

import e6observe
from e6observe import _safe
from e6observe import metrics as M
from e6observe.recorder import Recorder
from e6observe.sim import Simulator

pytestmark = [pytest.mark.aio, pytest.mark.timeout(120)]


@pytest.fixture
def rec(instrumented: Recorder) -> Recorder:
    return instrumented


def tracked() -> dict[int, Any]:
    from e6observe.hooks import aio

    return aio._queries


async def _connect(sim: Simulator) -> Any:
    from e6data_python_connector import aio

    return await aio.connect(host=sim.host, port=sim.port, username=USER, password=PASSWORD)


def test_an_entry_lives_from_execute_to_the_end_of_its_query(sim: Simulator, rec: Recorder) -> None:
    async def run() -> None:
        conn = await _connect(sim)
        try:
            base = set(tracked())
            for _ in range(20):
                cur = conn.cursor()
                await cur.execute("SELECT 1")
                assert id(cur) in tracked()
                await cur.fetchall()
                assert id(cur) in tracked()  # fetched, not yet cleared
                await cur.close()
                assert id(cur) not in tracked()
            cur = conn.cursor()
            await cur.execute("SELECT 1")
            await cur.cancel()
            assert id(cur) not in tracked()
            sim.inject_fault("getNextResultBatch", grpc.StatusCode.INTERNAL, "broken", 1)
            await cur.clear()
            await cur.execute("SELECT 2")
            with pytest.raises((grpc.RpcError, OperationalError)):  # 3.0.0 wraps it
                await cur.fetchall()
            assert id(cur) not in tracked()  # ended by the failed fetch
            await cur.close()
            assert set(tracked()) == base
        finally:
            await conn.close()

    asyncio.run(run())
    ok = rec.family(M.QUERY_DURATION).histogram("blue", "ok").count
    assert ok == 20


def test_a_collected_cursor_takes_its_entry_along(sim: Simulator, rec: Recorder) -> None:
    # An application that drops a connection and its cursor mid-query, never closing them: the
    # entry goes when the cursor is collected; the query stays in flight, as a dropped sync
    # cursor's does (documented in hooks/cursor.py).
    async def run() -> int:
        conn = await _connect(sim)
        cur = conn.cursor()
        await cur.execute("SELECT 1")
        key = id(cur)
        assert key in tracked()
        channel = conn._channel  # closed below so that only the Python objects are left
        conn._cursors.clear()  # the connection's own strong references to its cursors
        del cur, conn
        gc.collect()
        await channel.close()
        return key

    key = asyncio.run(run())
    gc.collect()
    assert key not in tracked()
    assert rec.in_flight_tokens["blue"], "the dropped query stays in flight"


def test_uninstrument_forgets_every_entry(sim: Simulator) -> None:
    _safe.reset_for_tests()
    assert e6observe.instrument(otel=False) is not None

    async def run() -> Any:
        conn = await _connect(sim)
        cur = conn.cursor()
        await cur.execute("SELECT 1")
        assert id(cur) in tracked()
        e6observe.uninstrument()
        assert id(cur) not in tracked()
        await cur.fetchall()
        await cur.close()
        await conn.close()

    try:
        asyncio.run(run())
    finally:
        e6observe.uninstrument()
    assert not tracked()


def test_the_next_batch_wrapper_fits_the_connectors_signature() -> None:
    # Connector 3.0.x's _next_batch(self, deadline) gets a wrapper with that one parameter (no
    # argument tuple and dict per batch); any other signature the generic one, forwarding all.
    from types import SimpleNamespace

    from e6observe.hooks import aio as hook

    seen: list[Any] = []

    async def one(self: Any, deadline: Any) -> Any:
        seen.append(deadline)
        return ["row"]

    async def other(self: Any, deadline: Any, size: int = 1) -> Any:
        seen.append((deadline, size))
        return None

    ctx: Any = SimpleNamespace(live=True)
    w1 = hook._make_next_batch(one, ctx)
    w2 = hook._make_next_batch(other, ctx)
    assert w1.__code__.co_varnames[:2] == ("self", "deadline") and not w1.__code__.co_flags & 0x0C
    assert w2.__code__.co_flags & 0x0C == 0x0C  # *args and **kwargs
    assert w1.__wrapped__ is one and w2.__wrapped__ is other  # type: ignore[attr-defined]
    me = object()
    assert asyncio.run(w1(me, 5.0)) == ["row"]
    assert asyncio.run(w1(me, deadline=6.0)) == ["row"]
    assert asyncio.run(w2(me, 7.0, size=3)) is None
    assert seen == [5.0, 6.0, (7.0, 3)]
