"""Connection-pool hook (e6observe.hooks.pool) with the connector's real pools and the simulator."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Iterator

import pytest
from helpers import PASSWORD, USER, wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from e6observe import _safe, readers
from e6observe import metrics as M
from e6observe.hooks import HookContext
from e6observe.hooks import pool as P
from e6observe.readings import ReadingsCollector, register_otel
from e6observe.recorder import Recorder

# The connector's pools (connection_pool.py) arrived in 2.3.10; on 2.3.9 there is nothing to hook.
pytest.importorskip(
    "e6data_python_connector.connection_pool",
    reason="connector 2.3.9 has no ConnectionPool (it arrived in 2.3.10)",
)


@pytest.fixture
def rec() -> Iterator[Recorder]:
    P._reset_names_for_tests()
    r = Recorder()
    P.HOOK.install(HookContext(r))
    yield r
    P.HOOK.uninstall()
    P._reset_names_for_tests()


@pytest.fixture
def make_pool(sim: Any) -> Iterator[Callable[..., Any]]:
    from e6data_python_connector.connection_pool import ConnectionPool

    pools: list[Any] = []

    def _make(**kw: Any) -> Any:
        kw.setdefault("min_size", 1)
        kw.setdefault("max_size", 2)
        kw.setdefault("max_overflow", 0)
        p = ConnectionPool(host=sim.host, port=sim.port, username=USER, password=PASSWORD, **kw)
        pools.append(p)
        return p

    yield _make
    for p in pools:
        p.close_all()


def counts(rec: Recorder, spec: M.MetricSpec) -> dict[str, int]:
    return {k[0]: h.count for k, h in rec.family(spec).items()}  # type: ignore[attr-defined]


def scrape(rec: Recorder) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What instrument() exports for the pools: their reader (``e6observe.readers``)."""
    reg = CollectorRegistry()
    reg.register(
        ReadingsCollector(readers.POOL, readers.pool_reader(rec, "hook.pool.collect"), "hook.pool.collect")
    )
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.matrix
def test_install_uninstall_restore_originals_by_identity() -> None:
    from e6data_python_connector.connection_pool import ConnectionPool

    before = {a: ConnectionPool.__dict__[a] for a in ("__init__", "get_connection", "_create_connection")}
    P.HOOK.install(HookContext(Recorder()))
    P.HOOK.install(HookContext(Recorder()))  # idempotent
    try:
        assert all(ConnectionPool.__dict__[a] is not f for a, f in before.items())
    finally:
        P.HOOK.uninstall()
    P.HOOK.uninstall()
    assert all(ConnectionPool.__dict__[a] is f for a, f in before.items())


@pytest.mark.matrix
def test_sync_pool_counts_and_timings(rec: Recorder, make_pool: Callable[..., Any]) -> None:
    pool = make_pool(min_size=2, max_size=3, max_overflow=1)
    assert P.read_pools() == {"pool-1": {"idle": 2, "used": 0, "max": 4, "pending": 0}}
    assert counts(rec, M.POOL_CREATE_TIME) == {"pool-1": 2}  # min_size, created in __init__

    conn = pool.get_connection()
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchall() == [[1]]
    cur.clear()
    s = scrape(rec)
    assert s[("e6data_pool_connections", (("pool", "pool-1"), ("state", "used")))] == 1
    assert s[("e6data_pool_connections", (("pool", "pool-1"), ("state", "idle")))] == 1
    assert s[("e6data_pool_max_connections", (("pool", "pool-1"),))] == 4
    assert s[("e6data_pool_pending_requests", (("pool", "pool-1"),))] == 0
    assert counts(rec, M.POOL_WAIT_TIME) == {"pool-1": 1}
    # The timings reach the exposition too (the dashboards' pool-wait panel reads them).
    assert s[("e6data_pool_wait_time_seconds_count", (("pool", "pool-1"),))] == 1
    assert s[("e6data_pool_create_time_seconds_count", (("pool", "pool-1"),))] == 2
    assert s[("e6data_pool_wait_time_seconds_bucket", (("le", "+Inf"), ("pool", "pool-1")))] == 1

    pool.return_connection(conn)
    assert P.read_pools()["pool-1"] == {"idle": 2, "used": 0, "max": 4, "pending": 0}
    # The connector's own view agrees on size (its created_connections can over-count).
    assert pool.get_statistics()["pool_size"] == 2


@pytest.mark.matrix
def test_waiting_caller_is_pending_until_a_connection_returns(
    rec: Recorder, make_pool: Callable[..., Any]
) -> None:
    pool = make_pool(min_size=1, max_size=1, max_overflow=0, timeout=20)
    held = pool.get_connection()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.get_connection()), daemon=True)
    waiter.start()
    try:
        assert wait_for(lambda: P.read_pools()["pool-1"]["pending"] == 1)
        assert P.read_pools()["pool-1"]["used"] == 1
    finally:
        pool.return_connection(held)
        waiter.join(20)
    assert got and P.read_pools()["pool-1"]["pending"] == 0
    assert counts(rec, M.POOL_WAIT_TIME) == {"pool-1": 2}


@pytest.mark.matrix
def test_timeout_passes_through_and_still_counts_the_wait(
    rec: Recorder, make_pool: Callable[..., Any]
) -> None:
    pool = make_pool(min_size=1, max_size=1, max_overflow=0)
    held = pool.get_connection()
    errors: list[BaseException] = []

    def other() -> None:  # another thread: the pool hands a thread its own connection again
        try:
            pool.get_connection(timeout=0.3)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(20)
    pool.return_connection(held)
    assert len(errors) == 1 and type(errors[0]) is TimeoutError
    assert "Failed to get connection within" in str(errors[0])
    assert counts(rec, M.POOL_WAIT_TIME) == {"pool-1": 2}
    assert P.read_pools()["pool-1"]["pending"] == 0


@pytest.mark.matrix
def test_pool_created_before_install_is_picked_up_when_used(make_pool: Callable[..., Any]) -> None:
    P._reset_names_for_tests()
    pool = make_pool(min_size=1)
    assert P.read_pools() == {}
    rec = Recorder()
    P.HOOK.install(HookContext(rec))
    try:
        pool.return_connection(pool.get_connection())
        assert "pool-1" in P.read_pools()
        assert counts(rec, M.POOL_WAIT_TIME) == {"pool-1": 1}
    finally:
        P.HOOK.uninstall()
        P._reset_names_for_tests()


def test_names_are_bounded_and_user_names_validated(rec: Recorder, make_pool: Callable[..., Any]) -> None:
    named = make_pool(min_size=0)
    P.name_pool(named, "orders")
    for bad in ("", "x" * 33, "has space", "a/b", 'q"uote'):
        with pytest.raises(ValueError):
            P.name_pool(named, bad)
    pools = [make_pool(min_size=0) for _ in range(P.MAX_POOL_NAMES + 3)]
    names = P.pool_names()
    assert "orders" in names and P.OTHER in names
    assert len(names) <= P.MAX_POOL_NAMES + 1
    with pytest.raises(ValueError, match="at most"):
        P.name_pool(pools[-1], "one-too-many")
    # Pools sharing pool-other are summed, not dropped.
    assert P.read_pools()[P.OTHER]["max"] == sum(
        p.max_size + p.max_overflow for p in pools[P.MAX_POOL_NAMES - 2 :]
    )


def test_uninstalled_wrappers_stop_recording(make_pool: Callable[..., Any]) -> None:
    from e6data_python_connector.connection_pool import ConnectionPool

    P._reset_names_for_tests()
    original = ConnectionPool.__dict__["get_connection"]
    rec = Recorder()
    P.HOOK.install(HookContext(rec))
    wrapped = ConnectionPool.get_connection
    P.HOOK.uninstall()
    assert ConnectionPool.__dict__["get_connection"] is original
    pool = make_pool(min_size=1)
    pool.return_connection(wrapped(pool))  # a reference kept from before uninstall
    assert counts(rec, M.POOL_WAIT_TIME) == {}
    P._reset_names_for_tests()


def test_read_failure_is_contained(rec: Recorder, make_pool: Callable[..., Any]) -> None:
    _safe.reset_for_tests()
    pool = make_pool(min_size=1)
    make_pool(min_size=1)
    kept = pool._all_connections
    del pool._all_connections  # as if a connector version renamed it
    try:
        out = P.read_pools()
    finally:
        pool._all_connections = kept
    assert list(out) == ["pool-2"] and out["pool-2"]["idle"] == 1
    assert _safe.internal_errors().get("hook.pool.read") == 1


def test_otel_pool_instruments(rec: Recorder, make_pool: Callable[..., Any]) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    make_pool(min_size=2, max_size=2)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        register_otel(
            provider.get_meter("t"),
            readers.POOL,
            readers.pool_reader(rec, "hook.pool.otel"),
            "hook.pool.otel",
        )
        data = reader.get_metrics_data()
        pts = {
            m.name: m.data.data_points
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }
        by_state = {
            p.attributes["db.client.connection.state"]: p.value for p in pts["db.client.connection.count"]
        }
        assert by_state == {"idle": 2, "used": 0}
        assert [p.value for p in pts["db.client.connection.max"]] == [2]
        assert all(
            p.attributes["db.client.connection.pool.name"] == "pool-1"
            for p in pts["db.client.connection.pending_requests"]
        )
    finally:
        provider.shutdown()


@pytest.mark.aio
def test_async_pool_counts_read_off_its_loop(rec: Recorder, sim: Any) -> None:
    from e6data_python_connector.async_connection_pool import AsyncConnectionPool

    seen: dict[str, Any] = {}

    def read_from_another_thread() -> dict[str, Any]:
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(P.read_pools()))
        t.start()
        t.join(10)
        return box[0]

    async def main() -> None:
        pool = AsyncConnectionPool(
            min_size=1,
            max_size=2,
            max_overflow=1,
            host=sim.host,
            port=sim.port,
            username=USER,
            password=PASSWORD,
        )
        await pool.open()
        try:
            seen["open"] = read_from_another_thread()
            lease = await pool.get_connection()
            cur = lease.cursor()
            await cur.execute("SELECT 1")
            seen["rows"] = await cur.fetchall()
            seen["leased"] = read_from_another_thread()
            seen["own"] = pool.get_statistics()
            await pool.return_connection(lease)
            seen["returned"] = read_from_another_thread()
        finally:
            await pool.close_all()

    asyncio.run(main())
    assert seen["rows"] == [[1]]
    assert seen["open"]["pool-1"] == {"idle": 1, "used": 0, "max": 3, "pending": 0}
    assert seen["leased"]["pool-1"]["used"] == 1 == seen["own"]["leased"]
    assert seen["returned"]["pool-1"]["idle"] == 1
    # open() acquires min_size through get_connection, then the test's own checkout.
    assert counts(rec, M.POOL_WAIT_TIME) == {"pool-1": 2}
