"""The watcher thread (e6observe.watcher) with the real connector against the simulator.

"Behind the hooks' back" means a write to the connector's cache A that no hook sees: the
watcher running without the strategy-cache hook, or with the hook installed and a write that
bypasses its ``__setitem__`` (``dict.__setitem__`` on the cache object).
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest
from e6data_python_connector import e6data_grpc
from helpers import wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from e6observe import _safe, readers
from e6observe import metrics as M
from e6observe.config import ConfigError, Options
from e6observe.connections import track_connection
from e6observe.readers import WatcherCollector
from e6observe.recorder import Recorder
from e6observe.watcher import THREAD_NAME, Watcher

FAST = 0.05


def opts(interval: float = FAST) -> Any:
    return SimpleNamespace(watcher_interval=interval)


@pytest.fixture
def make_watcher() -> Iterator[Callable[..., Watcher]]:
    made: list[Watcher] = []

    def _make(rec: Recorder, interval: float = FAST) -> Watcher:
        w = Watcher(rec, opts(interval))
        made.append(w)
        return w

    yield _make
    for w in made:
        w.stop()


@pytest.fixture
def hooks() -> Iterator[Callable[[Recorder], None]]:
    """Install the strategy-cache hook (the hooks engineer's) for one test."""
    from e6observe.hooks import HookContext, strategy_cache

    def _install(rec: Recorder) -> None:
        assert strategy_cache.HOOK.install(HookContext(rec))

    yield _install
    strategy_cache.HOOK.uninstall()


def query(conn: Any, sql: str = "SELECT 1", clear: bool = True) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    cur.fetchall()
    if clear:
        cur.clear()
    return cur


def bypass_write(key: str, value: Any) -> None:
    """Write cache A the way no hook can see (under the connector's own lock)."""
    with e6data_grpc._strategy_lock:
        dict.__setitem__(e6data_grpc._local_strategy_cache, key, value)


def switches(rec: Recorder) -> dict[tuple[str, ...], float]:
    return {k: c.value for k, c in rec.family(M.SWITCHES).items() if c.value}  # type: ignore[attr-defined]


def watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t.is_alive()]


def scrape(*collectors: Any) -> dict[str, float]:
    reg = CollectorRegistry()
    for c in collectors:
        reg.register(c)
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[s.name] = s.value
    return out


# -- lifecycle -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "soon", None, 86401])
def test_bad_interval_is_a_clear_error(bad: Any) -> None:
    # Validated once, by the options every component takes.
    with pytest.raises(ConfigError, match="watcher_interval"):
        Options.resolve({"watcher_interval": bad}, environ={})


def test_defaults_to_one_second() -> None:
    assert Watcher(Recorder()).interval == 1.0
    assert Watcher(Recorder(), Options()).interval == 1.0
    assert Watcher(Recorder(), Options.resolve({}, environ={})).interval == 1.0


@pytest.mark.matrix
def test_start_stop_idempotent_in_any_order(make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(Recorder())
    w.stop()  # before start: nothing to do
    w.stop()
    assert w.start() is w
    w.start()
    threads = watcher_threads()
    assert len(threads) == 1 and threads[0].daemon
    assert wait_for(lambda: w.iterations >= 2)
    w.stop()
    w.stop()
    assert not w.running and watcher_threads() == []
    w.start()  # restartable
    assert wait_for(lambda: w.running and w.iterations >= 3)
    w.stop()
    assert watcher_threads() == []


def test_stop_wakes_the_thread_at_once(make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(Recorder(), interval=3600.0)
    w.start()
    assert wait_for(lambda: w.iterations == 1)
    w.stop(timeout=10.0)
    # The only sleep is the event wait: stop() ends it, no hour-long join.
    assert watcher_threads() == []


class _Flaky(Watcher):
    failures = 3

    def run_once(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("injected watcher failure")
        super().run_once()


def test_failing_iterations_are_contained_and_the_thread_lives_on() -> None:
    _safe.reset_for_tests()
    w = _Flaky(Recorder(), opts(0.01))
    w.start()
    try:
        assert wait_for(lambda: w.iterations >= 2)
        assert w.running
        assert _safe.internal_errors().get("watcher") == 3
        assert w.last_run > 0
    finally:
        w.stop()


def test_flush_runs_once_per_iteration_and_its_failure_is_contained() -> None:
    _safe.reset_for_tests()
    w = Watcher(Recorder(), opts())
    calls: list[int] = []
    w.add_flush(lambda: calls.append(1))
    w.add_flush(lambda: 1 / 0)
    for _ in range(3):
        w.run_once()
    assert len(calls) == 3 and w.iterations == 3
    assert _safe.internal_errors().get("watcher.multiprocess") == 3


# -- out-of-band switch detection ------------------------------------------------------------


@pytest.mark.matrix
def test_switch_without_hooks_is_reported_as_observed_within_two_iterations(
    sim: Any, connect: Callable[..., Any]
) -> None:
    rec = Recorder()
    w = Watcher(rec, opts())
    conn = connect()
    query(conn)
    w.run_once()
    w.run_once()
    assert rec.active == "blue" and [e.kind for e in rec.ring] == ["detected"]

    sim.flip(announce=False)  # abrupt: the connector learns green through a 456
    query(conn)
    assert e6data_grpc._local_strategy_cache["active_strategy"] == "green"
    w.run_once()  # first sighting: a hook may be reporting right now, so wait one more
    assert switches(rec) == {}
    w.run_once()
    assert switches(rec) == {("blue", "green", "observed"): 1.0}
    assert rec.active == "green"
    for _ in range(5):
        w.run_once()
    assert rec.switch_total() == 1


@pytest.mark.matrix
def test_bypassed_hook_switch_is_observed_within_two_intervals_and_counted_once(
    sim: Any,
    connect: Callable[..., Any],
    hooks: Callable[[Recorder], None],
    make_watcher: Callable[..., Watcher],
) -> None:
    rec = Recorder()
    hooks(rec)
    conn = connect()
    query(conn)
    assert rec.active == "blue"  # reported by the hook
    w = make_watcher(rec, interval=0.1).start()
    assert wait_for(lambda: w.iterations >= 2)

    it0 = w.iterations
    bypass_write("active_strategy", "green")  # the hook cannot see this write
    assert wait_for(lambda: rec.switch_total() == 1)
    report = [r for r in w.reports if r[1] == "applied"]
    assert report and report[-1][2:] == ("blue", "green")
    # Iteration it0+1 may have read the cache before the write; it0+2 sees it; it0+3 confirms:
    # at most two intervals after the change.
    assert report[-1][0] <= it0 + 3
    assert switches(rec) == {("blue", "green", "observed"): 1.0}

    # The cluster is still blue: the next query gets a 456 and the connector goes back to blue
    # through the hook. The hook must compare with green (what the watcher reported), so this
    # is one green -> blue switch with cause mismatch, and the watcher adds nothing.
    assert sim.active == "blue"
    query(conn)
    it1 = w.iterations
    assert wait_for(lambda: w.iterations >= it1 + 3)
    assert switches(rec) == {("blue", "green", "observed"): 1.0, ("green", "blue", "mismatch"): 1.0}
    assert rec.active == "blue"


@pytest.mark.matrix
def test_switches_the_hooks_report_are_counted_once(
    sim: Any,
    connect: Callable[..., Any],
    hooks: Callable[[Recorder], None],
    make_watcher: Callable[..., Watcher],
) -> None:
    rec = Recorder()
    hooks(rec)
    w = make_watcher(rec, interval=0.01).start()
    conn = connect()
    query(conn)
    flips = 4
    for _ in range(flips):
        sim.flip(announce=True)
        for _ in range(3):  # announcement, then the 456 path or the drained flip
            try:
                query(conn)
            except Exception:
                pass
        it = w.iterations
        assert wait_for(lambda it=it: w.iterations >= it + 3)  # type: ignore[misc]
    assert rec.active == sim.active
    assert rec.switch_total() == flips
    assert not any(cause == "observed" for (_, _, cause) in switches(rec))
    assert [r for r in w.reports if r[1] == "applied"] == []


def test_a_hook_reporting_a_moment_late_is_not_double_counted() -> None:
    # The hook stores the value first and reports it just after; a watcher iteration can fall in
    # between. It must wait for a second sighting, by which time the recorder agrees.
    rec = Recorder()
    w = Watcher(rec, opts())
    bypass_write("active_strategy", "blue")
    rec.detected("blue")
    w.run_once()
    bypass_write("active_strategy", "green")
    w.run_once()  # sees green, recorder still blue: suspect only
    rec.applied("blue", "green", "announced")  # the hook's report lands
    w.run_once()
    w.run_once()
    assert switches(rec) == {("blue", "green", "announced"): 1.0}


def test_a_cleared_cache_is_not_a_switch() -> None:
    rec = Recorder()
    w = Watcher(rec, opts())
    bypass_write("active_strategy", "blue")
    w.run_once()
    w.run_once()
    bypass_write("active_strategy", None)  # the 456 path clears before re-learning
    for _ in range(3):
        w.run_once()
    bypass_write("active_strategy", "blue")
    for _ in range(3):
        w.run_once()
    assert rec.switch_total() == 0 and rec.active == "blue"


def test_a_different_view_held_by_the_recorder_is_not_invented_into_a_switch() -> None:
    # The async API keeps per-connection state that can differ from cache A; when the cache has
    # not moved, the watcher has nothing to report.
    rec = Recorder()
    rec.detected("green")
    w = Watcher(rec, opts())
    bypass_write("active_strategy", "blue")
    for _ in range(4):
        w.run_once()
    assert rec.switch_total() == 0 and rec.active == "green"


# -- pending, query map, cache health ----------------------------------------------------------


@pytest.mark.matrix
def test_pending_switch_held_by_an_uncleared_query_ages_then_resolves(
    sim: Any, connect: Callable[..., Any]
) -> None:
    rec = Recorder()
    w = Watcher(rec, opts())
    conn = connect()
    query(conn)
    pinned = query(conn, "SELECT 2", clear=False)  # sync v1 execute does not clear: pins blue
    sim.announce()
    query(conn)  # the response carries new_strategy=green; the pinned query blocks the flip
    cache = e6data_grpc._local_strategy_cache
    assert cache["pending_strategy"] == "green" and cache["active_strategy"] == "blue"
    w.run_once()
    w.run_once()
    assert rec.pending == "green"  # reported as announced (no hook saw it)
    age1 = w.readings()[M.PENDING_AGE.prom_name]
    time.sleep(0.05)
    w.run_once()
    age2 = w.readings()[M.PENDING_AGE.prom_name]
    assert 0 < age1 < age2
    assert w.readings()[M.QUERY_MAP_ENTRIES.prom_name] == 1

    pinned.clear()  # the last pinned query leaves: the connector applies the pending switch
    sim.complete()
    query(conn)
    w.run_once()
    w.run_once()
    r = w.readings()
    assert r[M.PENDING_AGE.prom_name] == 0
    assert r[M.QUERY_MAP_ENTRIES.prom_name] == 0
    assert rec.active == "green" and rec.pending is None
    assert rec.switch_total() == 1


@pytest.mark.matrix
def test_pending_age_uses_the_hooks_announcement_time(
    sim: Any, connect: Callable[..., Any], hooks: Callable[[Recorder], None]
) -> None:
    rec = Recorder()
    hooks(rec)
    w = Watcher(rec, opts())
    conn = connect()
    pinned = query(conn, clear=False)
    sim.announce()
    query(conn)
    assert rec.pending == "green" and rec.pending_since is not None
    now = time.time()
    assert w.pending_age(now=now) == pytest.approx(now - rec.pending_since)
    pinned.clear()
    assert rec.active == "green"  # the hook reported the drained flip
    assert w.pending_age() == 0
    w.run_once()
    w.run_once()
    assert switches(rec) == {("blue", "green", "announced"): 1.0}


@pytest.mark.matrix
def test_query_map_gauge_rises_with_open_queries_and_returns_to_zero(
    sim: Any, connect: Callable[..., Any]
) -> None:
    w = Watcher(Recorder(), opts())
    col = WatcherCollector(w)
    conn = connect()
    assert scrape(col)[M.QUERY_MAP_ENTRIES.prom_name] == 0
    open_ = [query(conn, f"SELECT {i}", clear=False) for i in range(3)]
    assert scrape(col)[M.QUERY_MAP_ENTRIES.prom_name] == 3
    for cur in open_:
        cur.clear()
    assert scrape(col)[M.QUERY_MAP_ENTRIES.prom_name] == 0


def test_collector_exposes_every_watcher_gauge_and_the_heartbeat_advances(
    sim: Any, connect: Callable[..., Any]
) -> None:
    w = Watcher(Recorder(), opts())
    col = WatcherCollector(w)
    first = scrape(col)
    assert first[M.WATCHER_LAST_RUN.prom_name] == 0  # no iteration yet
    assert M.CACHE_AGE.prom_name not in first  # nothing cached: no age to report
    query(connect())
    w.run_once()
    beat1 = scrape(col)[M.WATCHER_LAST_RUN.prom_name]
    time.sleep(0.01)
    w.run_once()
    s = scrape(col)
    assert s[M.WATCHER_LAST_RUN.prom_name] > beat1 > 0
    names = {
        spec.prom_name
        for spec in (
            M.WATCHER_LAST_RUN,
            M.PENDING_AGE,
            M.CACHE_AGE,
            M.QUERY_MAP_ENTRIES,
            M.SESSION_INVALIDATED,
            M.CONNECTIONS_OPEN,
            M.QUERY_MAP_INHERITED,
            M.STRATEGY_LOCK_HELD_AT_FORK,
        )
    }
    assert names <= set(s)
    assert 0 <= s[M.CACHE_AGE.prom_name] < 60


def test_session_invalidated_gauge_follows_the_cache() -> None:
    col = WatcherCollector(Watcher(Recorder(), opts()))
    assert scrape(col)[M.SESSION_INVALIDATED.prom_name] == 0
    bypass_write("session_invalidated", True)
    assert scrape(col)[M.SESSION_INVALIDATED.prom_name] == 1


@pytest.mark.matrix
def test_open_connections_counts_tracked_connections_with_a_channel(
    sim: Any, connect: Callable[..., Any]
) -> None:
    col = WatcherCollector(Watcher(Recorder(), opts()))
    base = scrape(col)[M.CONNECTIONS_OPEN.prom_name]
    conns = [connect() for _ in range(2)]
    for c in conns:
        query(c)
        track_connection(c)
        track_connection(c)  # idempotent
    assert scrape(col)[M.CONNECTIONS_OPEN.prom_name] == base + 2
    conns[0].close()
    assert scrape(col)[M.CONNECTIONS_OPEN.prom_name] == base + 1


def test_collect_failure_is_contained() -> None:
    _safe.reset_for_tests()

    class Broken(Watcher):
        def readings(self) -> dict[str, float]:
            raise RuntimeError("injected")

    assert scrape(WatcherCollector(Broken(Recorder(), opts()))) == {}
    assert _safe.internal_errors().get("watcher.collect") == 1


# -- export and cost ----------------------------------------------------------------------------


def test_collectors_and_otel_registration(make_watcher: Callable[..., Watcher]) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    w = make_watcher(Recorder())
    reg = CollectorRegistry()
    for c in readers.prometheus_collectors(w):
        reg.register(c)
    text = generate_latest(reg).decode()
    assert "e6observe_watcher_last_run_timestamp_seconds" in text
    assert "process_resident_memory_bytes" in text

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        readers.register_otel(provider.get_meter("e6observe"), w)

        def names() -> set[str]:
            data = reader.get_metrics_data()
            if data is None:
                return set()
            return {
                m.name
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
                if m.data.data_points
            }

        assert names() == set()  # not started: callbacks are silent
        w.start()
        assert wait_for(lambda: w.iterations >= 1)
        got = names()
        for spec in (M.WATCHER_LAST_RUN, M.QUERY_MAP_ENTRIES, M.PROCESS_RSS, M.GC_COLLECTIONS):
            assert spec.otel_name in got
        w.stop()
        assert not any(n.startswith(("e6observe.", "process.", "e6data.strategy")) for n in names())
    finally:
        provider.shutdown()


def test_cpu_cost_is_measured_inside_the_thread(make_watcher: Callable[..., Watcher]) -> None:
    w = make_watcher(Recorder(), interval=0.01)
    assert w.cpu_seconds_per_second() == 0.0
    w.start()
    assert wait_for(lambda: w.iterations >= 20)
    w.stop()
    per_second = w.cpu_seconds_per_second()
    assert w.cpu_seconds >= 0 and 0 <= per_second <= 1.0
    assert w._run_seconds > 0


# -- through instrument() ----------------------------------------------------------------------


def test_instrument_runs_the_watcher_and_uninstrument_leaves_no_thread(
    sim: Any, connect: Callable[..., Any]
) -> None:
    import e6observe

    rec = e6observe.instrument(watcher_interval=FAST)
    try:
        assert rec is not None
        assert wait_for(lambda: len(watcher_threads()) == 1)
        conn = connect()
        query(conn)
        bypass_write("active_strategy", "green")  # behind the installed hooks' back
        assert wait_for(lambda: rec.switch_total() == 1)
        assert switches(rec) == {("blue", "green", "observed"): 1.0}
    finally:
        e6observe.uninstrument()
    # The simulator's own server threads (e6observe-sim*) are the test's cluster, not the agent.
    alive = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("e6observe") and not t.name.startswith("e6observe-sim") and t.is_alive()
    ]
    assert alive == []
