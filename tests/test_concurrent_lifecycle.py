"""instrument() / uninstrument() cycling while 16 threads run queries.

``test_instrument_lifecycle.py::test_concurrent_instrument_and_uninstrument`` races the two
calls against each other with no query in flight; here the application is busy: 16 threads,
one connection each, run queries in a loop while the main thread instruments and uninstruments
ten times (half the cycles uninstrument as soon as instrument() returns, so that threads are
caught half-way through wrapping their connection). No query may fail, nothing may hang (every
wait has a deadline), and after the last uninstrument() the connector is exactly the original:
patched class attributes and the strategy cache by identity, every connection's stub carrying
the original gRPC multi-callables, no e6observe thread, and the same rows as before.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import grpc
import pytest
from chaos import identity_changes, identity_snapshot, query
from helpers import HAS_AIO, e6observe_threads, wait_for

import e6observe
from e6observe import _safe
from e6observe import metrics as M
from e6observe.hooks import channel
from e6observe.sim import Simulator

pytestmark = pytest.mark.timeout(300)

THREADS = 16
CYCLES = 10
#: Deadline for each wait below; a stall beyond it is a deadlock, not slowness.
DEADLINE_S = 60.0


@pytest.fixture(autouse=True)
def _always_uninstrument() -> Iterator[None]:
    _safe.reset_for_tests()
    yield
    e6observe.uninstrument()


def stub_problems(conn: Any) -> list[str]:
    """What is left of e6observe on a connection's stub (empty when it is the original)."""
    stub = conn._client
    out = []
    if hasattr(stub, channel.MARK):
        out.append("marked")
    for name, value in vars(stub).items():
        if (
            callable(value)
            and not isinstance(value, grpc.UnaryUnaryMultiCallable)
            and getattr(value, "__wrapped__", None) is not None
        ):
            out.append(f"{name} wrapped")
    return out


def the_queries(i: int) -> list[str]:
    return [f"SELECT {i}", "SELECT * FROM sample LIMIT 40", "SELECT COUNT(*) FROM sample"]


@pytest.mark.matrix
@pytest.mark.slow
def test_queries_in_16_threads_while_instrument_and_uninstrument_cycle(
    sim: Simulator, connect: Callable[..., Any]
) -> None:
    original = identity_snapshot()
    conns = [connect() for _ in range(THREADS)]
    expected = {i: [query(conns[i], sql) for sql in the_queries(i)] for i in range(THREADS)}
    assert expected[3][0] == [[3]] and len(expected[3][1]) == 40

    stop = threading.Event()
    failures: list[tuple[int, str]] = []
    wrong_rows: list[tuple[int, str]] = []
    done = [0] * THREADS

    def worker(i: int) -> None:
        conn, sqls = conns[i], the_queries(i)
        while not stop.is_set():
            for k, sql in enumerate(sqls):
                try:
                    rows = query(conn, sql)
                except BaseException as exc:  # any exception is a finding
                    failures.append((i, f"{sql}: {type(exc).__name__}: {exc}"))
                    continue
                if rows != expected[i][k]:
                    wrong_rows.append((i, sql))
            done[i] += 1

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"query-{i}", daemon=True) for i in range(THREADS)
    ]
    for t in threads:
        t.start()

    def progress() -> bool:
        """Every thread finishes at least one more round from now on (within the deadline)."""
        mark = list(done)
        return wait_for(lambda: all(d > m for d, m in zip(done, mark)) or bool(failures), DEADLINE_S)

    from opentelemetry.sdk.trace import TracerProvider

    recorders = []
    try:
        assert progress(), "queries made no progress before instrumenting"
        for cycle in range(CYCLES):
            rec = e6observe.instrument(
                prometheus_port=0, tracer_provider=TracerProvider(), watcher_interval=0.05
            )
            assert rec is not None and e6observe.is_instrumented()
            recorders.append(rec)
            if cycle % 2 == 0:
                assert progress(), f"cycle {cycle}: no progress while instrumented (deadlock?)"
            assert e6observe.uninstrument() is True
            assert progress(), f"cycle {cycle}: no progress after uninstrument (deadlock?)"
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE_S)
    assert [t.name for t in threads if t.is_alive()] == [], "query threads did not end"

    assert failures == []
    assert wrong_rows == []
    assert identity_changes(original, identity_snapshot()) == []
    assert {i: stub_problems(c) for i, c in enumerate(conns) if stub_problems(c)} == {}
    assert e6observe_threads() == []
    # the instrumented cycles did see the queries (the test exercised the hooks)
    assert all(sum(h.count for _, h in r.family(M.QUERY_DURATION).items()) > 0 for r in recorders[::2])
    assert _safe.internal_errors() == {}
    # and the connector works as before, rows and all
    assert {i: [query(conns[i], sql) for sql in the_queries(i)] for i in range(THREADS)} == expected


@pytest.mark.matrix
@pytest.mark.parametrize("path", ["execute", "reconnect"])
def test_uninstrument_while_a_thread_is_wrapping_its_stub(
    sim: Simulator, connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The interleaving the loop above can hit by chance, made certain: a query thread is
    half-way through instrumenting its connection's stub (the cursor hook's lazy wrap at
    ``execute``, or the channel hook after ``_create_client``) when uninstrument() runs. The
    stub must not stay wrapped afterwards (it would keep timing into a dead recorder, and a
    later instrument() would not re-wrap it)."""
    original = identity_snapshot()
    conn = connect()
    assert query(conn, "SELECT 1") == [[1]]  # opened and logged in before instrument()
    entered, release = threading.Event(), threading.Event()
    real = channel._timed_call

    def paused(mc: Any, timer: Any) -> Any:
        if not entered.is_set():
            entered.set()
            assert release.wait(DEADLINE_S)
        return real(mc, timer)

    e6observe.instrument(otel=False)
    monkeypatch.setattr(channel, "_timed_call", paused)
    result: list[Any] = []

    def run() -> None:
        try:
            if path == "reconnect":
                conn.get_re_authenticate_session_id()  # _create_client: a new stub
            result.append(query(conn, "SELECT 2"))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=run, name="query-wrapping", daemon=True)
    t.start()
    try:
        assert entered.wait(DEADLINE_S), "the thread never started wrapping its stub"
        assert e6observe.uninstrument() is True
    finally:
        release.set()
        t.join(DEADLINE_S)
    assert not t.is_alive()
    assert result == [[[2]]]
    assert stub_problems(conn) == []
    assert identity_changes(original, identity_snapshot()) == []
    # instrumented again, the connection is timed by the new installation only
    rec = e6observe.instrument(otel=False)
    assert rec is not None and query(conn, "SELECT 3") == [[3]]
    assert sum(h.count for _, h in rec.family(M.RPC_DURATION).items()) >= 4


@pytest.mark.aio
@pytest.mark.skipif(not HAS_AIO, reason="the connector's async API needs Python 3.11+ and 3.x")
def test_async_stub_wrapped_while_uninstrument_runs_is_left_unwrapped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The async hook's stub wrapping has the same window: uninstrument() landing between the
    wrap and its registration must not leave the stub wrapped."""
    import asyncio

    from e6data_python_connector.server import e6x_engine_pb2_grpc

    from e6observe.hooks import aio

    e6observe.instrument(otel=False)
    ctx, interp = aio.HOOK.ctx, aio.HOOK.interp
    assert ctx is not None and interp is not None
    real = aio._timed_aio_call
    calls: list[bool] = []

    def uninstrument_meanwhile(mc: Any, timer: Any, it: Any) -> Any:
        if not calls:
            calls.append(e6observe.uninstrument())  # as if another thread ran it right now
        return real(mc, timer, it)

    monkeypatch.setattr(aio, "_timed_aio_call", uninstrument_meanwhile)

    async def wrap() -> tuple[bool, list[str]]:
        async with grpc.aio.insecure_channel("127.0.0.1:9") as ch:
            stub = e6x_engine_pb2_grpc.QueryEngineServiceStub(ch)
            wrapped = aio.HOOK.wrap_stub(stub, ctx, interp)
            left = [n for n, v in vars(stub).items() if getattr(v, "__wrapped__", None) is not None] + (
                ["marked"] if hasattr(stub, channel.MARK) else []
            )
            return wrapped, left

    wrapped, left = asyncio.run(wrap())
    assert calls == [True]
    assert wrapped is False and left == []
