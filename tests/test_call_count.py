"""A regression guard for the hot path that is not a timing: e6observe's Python-level calls.

``sys.setprofile`` (``benchmarks/callcount.py``) counts every Python function e6observe enters
(the simulator's own code is left out) on the querying thread while the real connector runs one
query, and the tests fail when a
count grows beyond the figure recorded here (and in BENCHMARKS.md, "Call counts"). A count that
grows is a hot-path change that needs a reason; lower the figure when a change removes calls.

* per sync query: ``execute("SELECT 1")``, ``fetchall()``, ``clear()`` - six RPCs - in three
  configurations (Prometheus only; OpenTelemetry metrics; OpenTelemetry metrics and spans);
* per fetched batch: a 1 000-row result in ten batches against a 100-row one in one batch;
* per row: zero - 10 rows and 100 rows (one batch each) cost the same calls;
* per ``fetchmany`` call: one (the wrapper that ends a query whose fetch fails);
* the async API (``e6data_python_connector.aio``): per query and per batch. A coroutine counts
  once however often it is resumed (each resumption is a profiler "call" event too).

A query's count is the most common one over many queries: now and then a query also folds the
pending histogram observations (every 256) or meets the connector's periodic strategy check,
which are not per-query costs.
"""

from __future__ import annotations

import asyncio
import collections
import os
import statistics
import sys
from typing import Any, Callable, Iterator

import pytest
from helpers import HAS_AIO, PASSWORD, USER

import e6observe
from e6observe.sim import Simulator

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from callcount import CallCounter  # noqa: E402

#: Today's counts (BENCHMARKS.md, "Call counts"). A test fails when a count exceeds its figure.
#: 11 / 12 / 28 / 16 since an untraced query's state is made without running
#: ``QueryState.__init__`` (issue 17, 2026-12-04's third session; the traced state still runs it).
#: 12 / 13 / 28 since the strategy-cache hook stopped swapping the connector's cache for a dict
#: subclass (its ``__setitem__`` ran for the connector's two query-map writes per query).
#: otel-deferred (query_spans="deferred", issue 17): 17 - otel-metrics' calls, the span's record
#: (start, PendingSpan, finish) and the traced end; nothing made current, no SDK call.
#: otel-traced: 30 since issue 17 (the span made current once per phase with bound context
#: functions, the statement's name and attributes cached, the traced end inlined); 52 after
#: issue 15 made it current around execute, fetch and clear (attach/detach, call_in_span, the
#: suppression check with a non-empty context, the db.query.summary span name); 25 before that.
CALLS_PER_QUERY = {"prometheus": 11, "otel-metrics": 12, "otel-traced": 28, "otel-deferred": 16}
CALLS_PER_BATCH = 2  # the channel's timed RPC wrapper and the fetch_batch wrapper
CALLS_PER_ROW = 0
CALLS_PER_FETCHMANY = 1
#: async: 16 since the query state is made in C (issue 17: no ``QueryState.__init__`` frame); 17
#: since clear ends an untraced query inline (no ``finish`` call); 18 before that.
AIO_CALLS_PER_QUERY = 16
AIO_CALLS_PER_BATCH = 3

BATCH_ROWS = 100
WARMUP = 20
SAMPLES = 40


def typical(run: Callable[[], Any], n: int = SAMPLES) -> tuple[int, collections.Counter[str]]:
    """The most common call count of ``n`` runs of ``run`` and one run's calls by function."""
    counter = CallCounter()
    totals = []
    by_total: dict[int, collections.Counter[str]] = {}
    for _ in range(n):
        with counter:
            run()
        t = counter.total()
        totals.append(t)
        by_total.setdefault(t, collections.Counter(counter.calls))
    mode = statistics.mode(totals)
    assert totals.count(mode) * 2 > n, f"no typical count: {collections.Counter(totals)}"
    return mode, by_total[mode]


@pytest.fixture
def sim100() -> Iterator[Simulator]:
    s = Simulator(port=0, batch_rows=BATCH_ROWS)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def instrumented() -> Iterator[Callable[..., None]]:
    def _instrument(config: str) -> None:
        if config == "bare":
            return
        opts: dict[str, Any] = {"otel": False}
        if config != "prometheus":
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import InMemoryMetricReader

            opts = {"otel": True, "meter_provider": MeterProvider(metric_readers=[InMemoryMetricReader()])}
            if config in ("otel-traced", "otel-deferred"):
                from opentelemetry.sdk.trace import TracerProvider

                opts["tracer_provider"] = TracerProvider()
                if config == "otel-deferred":
                    opts["query_spans"] = "deferred"
        e6observe.instrument(**opts)

    yield _instrument
    e6observe.uninstrument()


def _sync_query(sim: Simulator) -> tuple[Callable[..., None], Any]:
    from e6data_python_connector import e6data_grpc

    conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
    cur = conn.cursor()

    def q(sql: str = "SELECT 1") -> None:
        cur.execute(sql)
        cur.fetchall()
        cur.clear()

    for _ in range(WARMUP):
        q()
    return q, cur


def _explain(what: str, got: int, limit: int, calls: collections.Counter[str]) -> str:
    rows = "\n".join(f"  {n:4d}  {name}" for name, n in calls.most_common())
    return (
        f"{what}: {got} e6observe calls, more than the recorded {limit} (BENCHMARKS.md, "
        f"'Call counts'). A hot-path change added calls; by function:\n{rows}"
    )


def test_the_counter_sees_nothing_of_a_bare_connector(sim100: Simulator) -> None:
    q, _ = _sync_query(sim100)
    got, _ = typical(q, n=5)
    assert got == 0


@pytest.mark.parametrize("config", sorted(CALLS_PER_QUERY))
def test_calls_per_sync_query_do_not_grow(
    sim100: Simulator, instrumented: Callable[..., None], config: str
) -> None:
    instrumented(config)
    q, _ = _sync_query(sim100)
    got, calls = typical(q)
    assert got > 0, "no e6observe call seen: the counter or the hooks are not working"
    assert calls["hooks/cursor.py:execute"] == 1 and calls["hooks/cursor.py:clear"] == 1
    assert got <= CALLS_PER_QUERY[config], _explain(
        f"one sync query ({config})", got, CALLS_PER_QUERY[config], calls
    )


def test_calls_per_batch_and_per_row_do_not_grow(
    sim100: Simulator, instrumented: Callable[..., None]
) -> None:
    instrumented("prometheus")
    q, _ = _sync_query(sim100)
    rows10, _ = typical(lambda: q("SELECT * FROM wide LIMIT 10"), n=10)
    rows100, calls100 = typical(lambda: q("SELECT * FROM wide LIMIT 100"), n=10)
    rows1000, calls1000 = typical(lambda: q("SELECT * FROM wide LIMIT 1000"), n=10)
    per_row = (rows100 - rows10) / 90
    per_batch = (rows1000 - rows100) / (1000 // BATCH_ROWS - 1)
    assert per_row <= CALLS_PER_ROW, _explain("90 more rows in the same batch", rows100 - rows10, 0, calls100)
    assert 0 < per_batch <= CALLS_PER_BATCH, _explain(
        "one more fetched batch", int(per_batch), CALLS_PER_BATCH, calls1000 - calls100
    )


def test_calls_per_fetchmany_call_do_not_grow(sim100: Simulator, instrumented: Callable[..., None]) -> None:
    instrumented("prometheus")
    q, cur = _sync_query(sim100)
    whole, _ = typical(lambda: q("SELECT * FROM wide LIMIT 1000"), n=10)

    def many() -> None:
        cur.execute("SELECT * FROM wide LIMIT 1000")
        while cur.fetchmany(50):
            pass
        cur.clear()

    got, calls = typical(many, n=10)
    per_call = (got - whole) / (1000 // 50 + 1)  # 20 calls with rows, one empty
    assert 0 < per_call <= CALLS_PER_FETCHMANY, _explain(
        "one fetchmany call", int(per_call), CALLS_PER_FETCHMANY, calls
    )


@pytest.mark.aio
def test_calls_per_async_query_and_batch_do_not_grow(
    sim100: Simulator, instrumented: Callable[..., None]
) -> None:
    if not HAS_AIO:  # pragma: no cover - the collection hook skips it already
        pytest.skip("async API unavailable")
    instrumented("prometheus")
    from e6data_python_connector import aio

    async def main() -> tuple[int, float, collections.Counter[str], collections.Counter[str]]:
        conn = await aio.connect(host=sim100.host, port=sim100.port, username=USER, password=PASSWORD)

        async def q(sql: str = "SELECT 1") -> None:
            cur = conn.cursor()
            await cur.execute(sql)
            await cur.fetchall()
            await cur.close()

        async def typical_async(sql: str, n: int) -> tuple[int, collections.Counter[str]]:
            counter = CallCounter()
            totals = []
            by: dict[int, collections.Counter[str]] = {}
            for _ in range(n):
                with counter:
                    await q(sql)
                totals.append(counter.total())
                by.setdefault(totals[-1], collections.Counter(counter.calls))
            mode = statistics.mode(totals)
            assert totals.count(mode) * 2 > n, f"no typical count: {collections.Counter(totals)}"
            return mode, by[mode]

        try:
            for _ in range(WARMUP):
                await q()
            one, calls = await typical_async("SELECT 1", SAMPLES)
            r100, _ = await typical_async("SELECT * FROM wide LIMIT 100", 10)
            r1000, calls1000 = await typical_async("SELECT * FROM wide LIMIT 1000", 10)
        finally:
            await conn.close()
        return one, (r1000 - r100) / (1000 // BATCH_ROWS - 1), calls, calls1000

    one, per_batch, calls, calls1000 = asyncio.run(main())
    assert one > 0, "no e6observe call seen in an async query"
    assert one <= AIO_CALLS_PER_QUERY, _explain("one async query", one, AIO_CALLS_PER_QUERY, calls)
    assert 0 < per_batch <= AIO_CALLS_PER_BATCH, _explain(
        "one more fetched batch (async)", int(per_batch), AIO_CALLS_PER_BATCH, calls1000
    )
