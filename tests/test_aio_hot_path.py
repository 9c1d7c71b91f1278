"""What the cheaper async hot path (issue 17) must keep doing.

The async cursor wrappers forward the connector's usual calls (``execute(operation)``,
``_clear(deadline)``) as plain calls and every other call shape as given; a query's state is
one object made in C (a weak reference to the cursor with the query's fields); the end of the
fetch phase is marked on the query read before the fetch; the RPC done-callback is a closure;
the async pool's record is found by ``id(pool)`` and forgotten with the pool.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from helpers import PASSWORD, USER

from e6observe import metrics as M
from e6observe.recorder import Recorder, norm_strategy
from e6observe.sim import Simulator

pytestmark = [pytest.mark.aio, pytest.mark.timeout(120)]


async def _connect(sim: Simulator) -> Any:
    from e6data_python_connector import aio

    return await aio.connect(host=sim.host, port=sim.port, username=USER, password=PASSWORD)


def _ok(rec: Recorder) -> Any:
    return rec.family(M.QUERY_DURATION).histogram("blue", "ok")


def test_every_call_shape_of_execute_is_forwarded_and_counted(sim: Simulator, instrumented: Recorder) -> None:
    from e6observe.hooks import aio as hook

    async def run() -> list[Any]:
        conn = await _connect(sim)
        got = []
        try:
            for call in (
                lambda c: c.execute("SELECT 1"),
                lambda c: c.execute("SELECT 1", None),
                lambda c: c.execute("SELECT 1", timeout=30),
                lambda c: c.execute(operation="SELECT 1"),
                lambda c: c.execute("SELECT 1", parameters=None, timeout=30),
            ):
                cur = conn.cursor()
                await call(cur)
                assert id(cur) in hook._queries
                got.append(await cur.fetchall())
                await cur.close()
                assert id(cur) not in hook._queries
            with pytest.raises(TypeError):  # the connector's own refusal, passed through
                await conn.cursor().execute("SELECT 1", None, None)
        finally:
            await conn.close()
        return got

    assert asyncio.run(run()) == [[[1]]] * 5
    assert _ok(instrumented).count == 5
    assert not instrumented.in_flight_tokens["blue"]
    # the refused call is a failed query, under the connection's colour (it was never admitted)
    assert instrumented.family(M.QUERY_DURATION).histogram("blue", "error").count == 1


def test_a_query_ended_by_the_next_execute_ends_where_its_fetch_ended(
    sim: Simulator, instrumented: Recorder
) -> None:
    from e6data_python_connector.exceptions import ProgrammingError

    async def run() -> None:
        conn = await _connect(sim)
        try:
            cur = conn.cursor()
            await cur.execute("SELECT 1")
            assert await cur.fetchall() == [[1]]  # its last _next_batch returns None
            await asyncio.sleep(0.3)
            # The hook ends the tracked query first (ok, at its fetch end); the connector then
            # refuses an execute before a clear.
            with pytest.raises(ProgrammingError):
                await cur.execute("SELECT 1")
            await cur.close()
        finally:
            await conn.close()

    asyncio.run(run())
    h = _ok(instrumented)
    assert h.count == 1
    assert h.sum < 0.25, "the query's duration ran to the next execute, not to its fetch end"


def test_a_route_strategy_that_is_not_a_colour_gets_norm_strategys_label(instrumented: Recorder) -> None:
    # The inlined label: a colour is its own label; anything else (unhashable, not a str, an
    # odd spelling) gets exactly what norm_strategy gives the sync hook for it.
    from e6observe.hooks import aio as hook

    ctx = hook.HOOK.ctx
    assert ctx is not None

    class Route:
        def __init__(self, strategy: Any) -> None:
            self.strategy = strategy
            self.query_id = "q-1"

    class Conn:
        pass  # no _client: nothing to wrap

    class Cursor:
        def __init__(self, strategy: Any) -> None:
            self._connection = Conn()
            self._route: Any = None
            self.strategy = strategy

    async def orig(self: Cursor, operation: str) -> str:
        self._route = Route(self.strategy)
        return operation

    execute = hook._make_execute(orig, ctx)
    values: list[Any] = ["green", "blue", ["not", "hashable"], None, "GREEN ", 7, "purple"]
    labels = []

    async def run() -> None:
        for v in values:
            cur = Cursor(v)
            assert await execute(cur, "SELECT 1") == "SELECT 1"
            q = hook._queries.pop(id(cur))
            assert (q.query_id, q.span, q.resumed, q.fetch_end, q.key) == ("q-1", None, False, None, id(cur))
            assert q() is cur  # the entry is the weak reference to its cursor
            labels.append(q.strategy)

    asyncio.run(run())
    expected = [norm_strategy(v if isinstance(v, str) else None) for v in values]
    assert labels == expected
    assert expected[:4] == ["green", "blue", "none", "none"]


def test_the_async_pool_record_is_found_by_id_and_goes_with_the_pool(
    sim: Simulator, instrumented: Recorder
) -> None:
    from e6data_python_connector.async_connection_pool import AsyncConnectionPool

    from e6observe.hooks import pool as P

    P._reset_names_for_tests()

    async def run() -> int:
        pool = AsyncConnectionPool(
            min_size=1,
            max_size=1,
            max_overflow=0,
            host=sim.host,
            port=sim.port,
            username=USER,
            password=PASSWORD,
        )
        await pool.open()
        try:
            for _ in range(3):
                lease = await pool.get_connection()
                cur = lease.cursor()
                await cur.execute("SELECT 1")
                await cur.fetchall()
                await cur.close()
                await pool.return_connection(lease)
            lease = await pool.get_connection(timeout=5)  # a keyword: forwarded as given
            await pool.return_connection(lease)
            key = id(pool)
            info, ref = P._aio_infos[key]
            assert info is P._pools[pool] and ref() is pool
            assert info.pending == 0
        finally:
            await pool.close_all()
        del pool
        return key

    key = asyncio.run(run())
    gc.collect()
    assert key not in P._aio_infos, "the entry outlived its pool"
    # open() takes min_size through get_connection, then four checkouts
    assert instrumented.family(M.POOL_WAIT_TIME).histogram("pool-1").count == 5


def test_the_rpc_wrapper_honours_a_later_patch_of_the_multicallable_class(
    sim: Simulator, instrumented: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The async RPC wrapper calls type(mc).__call__(mc, ...) (no second interpreter loop from
    # C), looked up at each call: a tool that patches grpc.aio's multi-callable class after the
    # stub was wrapped still sees every call, and every RPC is still timed.
    from e6observe.hooks.stubs import plain_call

    seen: list[Any] = []

    async def run() -> Any:
        conn = await _connect(sim)
        try:
            mc = conn.__dict__["_client"].prepareStatementV2.__wrapped__
            assert plain_call(mc)
            cls = type(mc)
            orig = cls.__call__

            def patched(self: Any, request: Any, **kwargs: Any) -> Any:
                seen.append(type(request).__name__)
                return orig(self, request, **kwargs)

            monkeypatch.setattr(cls, "__call__", patched)
            cur = conn.cursor()
            await cur.execute("SELECT 1")
            rows = await cur.fetchall()
            await cur.close()
            return rows
        finally:
            await conn.close()

    assert asyncio.run(run()) == [[1]]
    assert "PrepareStatementRequest" in seen or "PrepareStatementV2Request" in seen
    rpcs = {k: h.count for k, h in instrumented.family(M.RPC_DURATION).items() if h.count}
    assert sum(rpcs.values()) >= len(seen) > 0
    assert _ok(instrumented).count == 1
