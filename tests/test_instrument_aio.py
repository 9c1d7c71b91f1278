"""instrument() with the connector's async API (3.0.x ``aio``, Python 3.11+).

The async connector keeps the colour per connection; e6observe maps it onto one process-level
colour (see ``e6observe/hooks/aio.py``): a deployment counts once per process, however many
connections follow it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import pytest
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


def counters(r: Recorder, spec: M.MetricSpec) -> dict[tuple[str, ...], float]:
    return {k: c.value for k, c in r.family(spec).items() if c.value}  # type: ignore[attr-defined]


def hists(r: Recorder, spec: M.MetricSpec) -> dict[tuple[str, ...], int]:
    return {k: h.count for k, h in r.family(spec).items() if h.count}  # type: ignore[attr-defined]


async def open_conn(sim: Simulator) -> Any:
    from e6data_python_connector import aio

    return await aio.connect(host=sim.host, port=sim.port, username=USER, password=PASSWORD)


async def query(conn: Any, sql: str = "SELECT 1") -> Any:
    cur = conn.cursor()
    try:
        await cur.execute(sql)
        return await cur.fetchall()
    finally:
        try:
            await cur.close()
        except Exception:
            pass


async def wait_for(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def run(coro: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro())


def test_switches_under_async_load_count_once_per_process(sim: Simulator, rec: Recorder) -> None:
    k_announced, j_abrupt = 2, 2
    expected: list[tuple[str, str, str]] = []
    stats = {"ok": 0, "failed": 0}

    async def main() -> None:
        conns = [await open_conn(sim) for _ in range(4)]
        stop = asyncio.Event()

        async def worker(conn: Any) -> None:
            while not stop.is_set():
                try:
                    assert await query(conn) == [[1]]
                    stats["ok"] += 1
                except Exception:
                    stats["failed"] += 1
                await asyncio.sleep(0.001)

        tasks = [asyncio.create_task(worker(c)) for c in conns]

        async def settled(to: str, what: str) -> None:
            await wait_for(lambda: all(c.strategy == to for c in conns), what)
            done = stats["ok"]
            await wait_for(lambda: stats["ok"] >= done + 8, "queries after the switch")

        await wait_for(lambda: stats["ok"] >= 8, "warm-up")
        for _ in range(k_announced):
            frm = sim.active
            to = sim.announce()
            await settled(to, f"every connection to apply {to}")
            # complete() waits for the old colour's queries to drain: off the event loop.
            await asyncio.get_running_loop().run_in_executor(None, sim.complete, 10.0)
            expected.append((frm, to, "announced"))
        for _ in range(j_abrupt):
            frm = sim.active
            to = sim.flip(announce=False)
            await settled(to, f"every connection to follow {to}")
            expected.append((frm, to, "mismatch"))
        stop.set()
        await asyncio.gather(*tasks)
        for c in conns:
            await c.close()

    run(main)
    c = sim.counters()
    want: dict[tuple[str, ...], float] = {}
    for key in expected:
        want[key] = want.get(key, 0) + 1
    assert counters(rec, M.SWITCHES) == want
    assert [
        (e.from_strategy, e.to_strategy, e.cause) for e in rec.ring.snapshot() if e.kind == "applied"
    ] == expected
    assert sum(counters(rec, M.MISMATCHES).values()) == c["mismatches_total"] > 0
    assert rec.active == sim.active
    rpc = hists(rec, M.RPC_DURATION)
    assert {s for (_, s, code) in rpc if code == "OK"} == {"blue", "green"}
    assert sum(rpc.values()) == c["rpcs_total"]
    q = hists(rec, M.QUERY_DURATION)
    assert {s for (s, o) in q if o == "ok"} == {"blue", "green"}
    # Every query is observed once. (A query whose rows arrived but whose clear then got a 456
    # is switch_interrupted, although AsyncCursor.close() does not raise it to the app.)
    assert sum(q.values()) == stats["ok"] + stats["failed"]
    assert sum(n for (_, o), n in q.items() if o == "ok") <= stats["ok"]
    assert {k: v for k, v in _safe.internal_errors().items() if k.startswith("hook")} == {}


def test_several_connections_following_one_abrupt_switch_is_one_switch(sim: Simulator, rec: Recorder) -> None:
    async def main() -> None:
        conns = [await open_conn(sim) for _ in range(3)]
        for c in conns:
            assert await query(c) == [[1]]
        sim.flip(announce=False)
        for c in conns:
            assert await query(c) == [[1]]  # prepare: 456, toggle, retried once
            assert c.strategy == "green"
        for c in conns:
            await c.close()

    run(main)
    assert counters(rec, M.SWITCHES) == {("blue", "green", "mismatch"): 1.0}
    assert counters(rec, M.MISMATCHES) == {("blue", "prepareStatement"): 3.0}
    assert sim.counters()["mismatches_total"] == 3
    assert counters(rec, M.RETRIES) == {("mismatch",): 3.0}
    assert rec.active == "green"


def test_first_successful_rpc_is_the_detection(rec: Recorder) -> None:
    with Simulator(active="green") as green:

        async def main() -> None:
            conn = await open_conn(green)
            assert await query(conn) == [[1]]
            await conn.close()

        run(main)
    kinds = [e.kind for e in rec.ring.snapshot()]
    # The constructor's "blue" is a guess: its 456 and the toggle are no switch.
    assert kinds[:3] == ["mismatch", "retry", "detected"]
    assert "applied" not in kinds and rec.switch_total() == 0 and rec.active == "green"


def test_query_cut_by_a_switch_is_switch_interrupted(sim: Simulator, rec: Recorder) -> None:
    async def main() -> None:
        conn = await open_conn(sim)
        cur = conn.cursor()
        await cur.execute("SELECT * FROM sample")
        assert rec.state()["in_flight"]["blue"] == 1
        sim.flip(announce=False)
        from e6observe.hooks import is_mismatch

        # 3.0.2 raises the 456 itself. 3.0.0 raises IncompleteResultError from it in the batch
        # fetch (what the hook sees), and fetchall re-raises that object "from" itself, which
        # drops the 456 from the chain the application gets.
        with pytest.raises(Exception) as info:
            await cur.fetchall()
        assert is_mismatch(info.value) or type(info.value).__name__ == "IncompleteResultError"
        assert rec.state()["in_flight"]["blue"] == 0
        try:
            await conn.close()
        except Exception:
            pass

    run(main)
    assert hists(rec, M.QUERY_DURATION) == {("blue", "switch_interrupted"): 1}


def test_uninstrument_restores_async_classes_and_open_connections_keep_working(sim: Simulator) -> None:
    from e6data_python_connector.async_connection import AsyncConnection
    from e6data_python_connector.async_cursor import AsyncCursor

    before = [dict(vars(AsyncConnection)), dict(vars(AsyncCursor))]
    r = e6observe.instrument(otel=False)
    assert r is not None and isinstance(vars(AsyncConnection)["_strategy"], object)
    assert "_strategy" in vars(AsyncConnection)

    async def main() -> None:
        conn = await open_conn(sim)
        assert await query(conn) == [[1]]
        stub = conn._client
        assert hasattr(stub, "_e6observe_token")
        e6observe.uninstrument()
        after = [dict(vars(AsyncConnection)), dict(vars(AsyncCursor))]
        for b, a in zip(before, after):
            assert set(a) == set(b) and all(a[k] is b[k] for k in b)
        assert not hasattr(stub, "_e6observe_token")
        assert conn.strategy == "blue"  # instance state survives the descriptor's removal
        sim.flip(announce=False)
        assert await query(conn) == [[1]]
        assert conn.strategy == "green"
        await conn.close()

    run(main)
    assert hists(r, M.QUERY_DURATION) == {("blue", "ok"): 1}  # nothing after uninstrument


def test_instrument_after_async_connection_opened(sim: Simulator) -> None:
    async def main() -> Recorder:
        conn = await open_conn(sim)
        assert await query(conn) == [[1]]
        r = e6observe.instrument(otel=False)
        assert r is not None
        try:
            assert await query(conn) == [[1]]
            assert e6observe.instrument_connection(conn) is False  # the execute already did it
        finally:
            await conn.close()
        return r

    try:
        r = asyncio.run(main())
        rpc = hists(r, M.RPC_DURATION)
        assert rpc[("prepareStatement", "blue", "OK")] == 1
        assert hists(r, M.QUERY_DURATION) == {("blue", "ok"): 1}
        assert r.active == "blue"  # detected from the first RPC after instrument()
    finally:
        e6observe.uninstrument()
