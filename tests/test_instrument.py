"""instrument() end to end: the real connector against the simulator, with a workload running.

The acceptance checks of issue 3 for the sync API: after K announced and J abrupt switches under
a multi-threaded workload, the switch counters equal the switches the client made (from, to,
cause), mismatches equal the simulator's 456 count, the active strategy is the simulator's, and
RPC and query latencies have observations under both strategies.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import helpers
import pytest
from e6data_python_connector import e6data_grpc

import e6observe
from e6observe import _safe
from e6observe import metrics as M
from e6observe.recorder import Recorder
from e6observe.sim import Simulator

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def instrument() -> Iterator[Callable[..., Recorder]]:
    """``instrument(**options)`` -> the recorder; always uninstrumented at teardown."""
    _safe.reset_for_tests()

    def _instrument(**options: Any) -> Recorder:
        options.setdefault("otel", False)
        rec = e6observe.instrument(**options)
        assert rec is not None
        return rec

    yield _instrument
    e6observe.uninstrument()


def counters(rec: Recorder, spec: M.MetricSpec) -> dict[tuple[str, ...], float]:
    """Non-zero counter children of one family."""
    return {k: c.value for k, c in rec.family(spec).items() if c.value}  # type: ignore[attr-defined]


def hist_counts(rec: Recorder, spec: M.MetricSpec) -> dict[tuple[str, ...], int]:
    return {k: h.count for k, h in rec.family(spec).items() if h.count}  # type: ignore[attr-defined]


def hook_errors() -> dict[str, int]:
    return {k: v for k, v in _safe.internal_errors().items() if k.startswith(("hook", "tracing"))}


def client_active() -> Any:
    return e6data_grpc._local_strategy_cache.get("active_strategy")


def wait_for(pred: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """helpers.wait_for, with the connector's cache in the message of a timeout."""
    if not helpers.wait_for(pred, timeout):
        cache = dict(e6data_grpc._local_strategy_cache)
        raise AssertionError(f"timed out waiting for {what}; connector cache: {cache}")


class Workload:
    """``threads`` threads, each with its own connection, running SELECT 1 / fetch / clear."""

    def __init__(self, sim: Simulator, connect: Callable[..., Any], threads: int = 4) -> None:
        self.conns = [connect() for _ in range(threads)]
        self.stop = threading.Event()
        self.ok = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self.conns]

    def _run(self, conn: Any) -> None:
        while not self.stop.is_set():
            cur = conn.cursor()
            try:
                cur.execute("SELECT 1")
                rows = cur.fetchall()
                cur.clear()
                assert rows == [[1]]
                with self._lock:
                    self.ok += 1
            except Exception:
                with self._lock:
                    self.failed += 1
            time.sleep(0.001)

    def __enter__(self) -> Workload:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(10)


@pytest.mark.matrix
def test_switches_mismatches_and_latency_match_the_simulator_under_load(
    sim: Simulator, connect: Callable[..., Any], instrument: Callable[..., Recorder]
) -> None:
    rec = instrument()
    k_announced, j_abrupt = 2, 2
    expected: list[tuple[str, str, str]] = []
    with Workload(sim, connect, threads=4) as w:
        wait_for(lambda: w.ok >= 8, what="workload warm-up")
        # Announced switches first: an abrupt one can leave uncleared queries in the
        # connector's query map (a fetch/clear failing with 456), which then blocks graceful
        # flips forever - connector behaviour, measured elsewhere.
        for _ in range(k_announced):
            frm = sim.active
            to = sim.announce()
            wait_for(lambda to=to: client_active() == to, what=f"client to apply announced {to}")
            # As a real cluster does: retire the old colour once its queries drained (a query
            # prepared under it just before the client flipped may still be open).
            sim.complete(drain_wait=10.0)
            expected.append((frm, to, "announced"))
            done = w.ok
            wait_for(lambda done=done: w.ok >= done + 8, what="queries after the switch")
        for _ in range(j_abrupt):
            frm = sim.active
            to = sim.flip(announce=False)
            wait_for(lambda to=to: client_active() == to, what=f"client to follow abrupt switch to {to}")
            expected.append((frm, to, "mismatch"))
            done = w.ok
            wait_for(lambda done=done: w.ok >= done + 8, what="queries after the switch")
    c = sim.counters()
    assert c["switches"] == k_announced + j_abrupt

    switches = counters(rec, M.SWITCHES)
    want: dict[tuple[str, ...], float] = {}
    for key in expected:
        want[key] = want.get(key, 0) + 1
    assert switches == want
    assert rec.switch_total() == k_announced + j_abrupt
    applied = [(e.from_strategy, e.to_strategy, e.cause) for e in rec.ring.snapshot() if e.kind == "applied"]
    assert applied == expected  # same switches, same order
    assert [e.kind for e in rec.ring.snapshot()].count("detected") == 1

    mismatches = counters(rec, M.MISMATCHES)
    assert sum(mismatches.values()) == c["mismatches_total"] > 0
    by_method: dict[str, float] = {}
    for (_, method), n in mismatches.items():
        by_method[method] = by_method.get(method, 0) + n
    assert by_method == c["mismatches"]

    assert rec.active == sim.active == client_active()
    assert rec.state()["pending"] is None
    rpc = hist_counts(rec, M.RPC_DURATION)
    # (RPCs sent while another thread had just cleared the cache carry no strategy: "none".)
    assert {s for (_, s, code) in rpc if code == "OK"} >= {"blue", "green"}
    queries = hist_counts(rec, M.QUERY_DURATION)
    assert {s for (s, outcome) in queries if outcome == "ok"} >= {"blue", "green"}
    assert sum(n for (_, o), n in queries.items() if o == "ok") == w.ok
    assert sum(queries.values()) == w.ok + w.failed
    assert rec.state()["in_flight"] == dict.fromkeys(M.STRATEGY_LABELS, 0)
    # every RPC the simulator served or refused was observed, once
    assert sum(rpc.values()) == c["rpcs_total"]
    assert hook_errors() == {}


@pytest.mark.matrix
def test_first_strategy_learned_is_detected_not_a_switch(
    connect: Callable[..., Any], instrument: Callable[..., Recorder]
) -> None:
    with Simulator(active="green") as green:
        rec = instrument()
        conn = connect(host=green.host, port=green.port)
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchall() == [[1]]
        cur.clear()
        kinds = [e.kind for e in rec.ring.snapshot()]
        # The connector tries blue first, gets a 456, then learns green: detection, no switch.
        assert kinds[:2] == ["mismatch", "detected"]
        assert "applied" not in kinds and "cache_cleared" not in kinds
        assert rec.switch_total() == 0
        assert rec.active == "green"
        assert counters(rec, M.MISMATCHES) == {("blue", "authenticate"): 1.0}
        assert green.counters()["mismatches_total"] == 1


@pytest.mark.matrix
def test_query_cut_by_an_abrupt_switch_is_switch_interrupted(
    sim: Simulator, connect: Callable[..., Any], instrument: Callable[..., Recorder]
) -> None:
    rec = instrument()
    conn = connect()
    cur = conn.cursor()
    cur.execute("SELECT * FROM sample")
    assert rec.state()["in_flight"]["blue"] == 1
    sim.flip(announce=False)
    with pytest.raises(Exception) as info:
        cur.fetchall()
    assert "456" in str(info.value)
    assert type(info.value).__name__ == "_InactiveRpcError"  # the connector's own error type
    q = hist_counts(rec, M.QUERY_DURATION)
    assert q == {("blue", "switch_interrupted"): 1}
    assert rec.state()["in_flight"]["blue"] == 0
    # A new cursor recovers through the connector's 456 path: one switch, cause mismatch.
    cur2 = conn.cursor()
    cur2.execute("SELECT 1")
    assert cur2.fetchall() == [[1]]
    cur2.clear()
    assert counters(rec, M.SWITCHES) == {("blue", "green", "mismatch"): 1.0}
    assert hist_counts(rec, M.QUERY_DURATION)[("green", "ok")] == 1


@pytest.mark.matrix
def test_connector_retries_are_visible_with_reason(
    sim: Simulator, connect: Callable[..., Any], instrument: Callable[..., Recorder]
) -> None:
    rec = instrument()
    conn = connect()

    def query() -> Any:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        rows = cur.fetchall()
        cur.clear()
        return rows

    assert query() == [[1]]
    sim.flip(announce=False)  # next execute: 456 at prepare -> re_auth replays it
    assert query() == [[1]]
    sim.restart()  # sessions lost: "Access denied" -> re_auth re-authenticates and replays
    assert query() == [[1]]
    retries = [(e.attempt, e.reason) for e in rec.ring.snapshot() if e.kind == "retry"]
    assert retries == [(1, "mismatch"), (1, "access_denied")]
    assert counters(rec, M.RETRIES) == {("mismatch",): 1.0, ("access_denied",): 1.0}
    assert hist_counts(rec, M.QUERY_DURATION) == {("blue", "ok"): 1, ("green", "ok"): 2}


@pytest.mark.matrix
def test_instrument_after_connection_opened_picks_it_up(
    sim: Simulator, connect: Callable[..., Any], instrument: Callable[..., Recorder]
) -> None:
    conn = connect()
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.clear()
    assert client_active() == "blue"
    rec = instrument()
    # What the connector already knew is reported at once.
    assert rec.active == "blue"
    assert [e.kind for e in rec.ring.snapshot()] == ["detected"]
    cur = conn.cursor()  # a cursor of the old connection, on its old stub
    cur.execute("SELECT 1")
    assert cur.fetchall() == [[1]]
    cur.clear()
    rpc = hist_counts(rec, M.RPC_DURATION)
    assert rpc[("prepareStatement", "blue", "OK")] == 1
    assert rpc[("clearOrCancelQuery", "blue", "OK")] == 1
    assert hist_counts(rec, M.QUERY_DURATION) == {("blue", "ok"): 1}


@pytest.mark.matrix
def test_instrument_connection_times_rpcs_before_the_next_execute(
    sim: Simulator, connect: Callable[..., Any], instrument: Callable[..., Recorder]
) -> None:
    conn = connect()
    conn.get_session_id  # noqa: B018 - authenticate now, before instrument()
    rec = instrument()
    assert e6observe.instrument_connection(conn) is True
    assert e6observe.instrument_connection(conn) is False  # already done
    conn.get_tables(catalog="c", database="d")
    assert ("getTablesV2", "blue", "OK") in hist_counts(rec, M.RPC_DURATION)


@pytest.mark.matrix
def test_the_real_stubs_take_the_hooks_positional_fast_path(
    sim: Simulator, connect: Callable[..., Any], instrument: Callable[..., Recorder]
) -> None:
    """grpc's multi-callables have the documented call signature, so the channel hook passes
    arguments on without repacking them (a grpc release that changes it gets the generic path,
    and this test says so)."""
    instrument()
    conn = connect()
    conn.get_session_id  # noqa: B018 - the stub exists once authenticated
    wrapped = {name: fn for name, fn in vars(conn._client).items() if hasattr(fn, "__wrapped__")}
    assert "prepareStatement" in wrapped and "getNextResultBatch" in wrapped
    assert {fn.__code__.co_name for fn in wrapped.values()} == {"timed"}


@pytest.mark.matrix
def test_instrument_connection_without_instrument_is_a_noop(connect: Callable[..., Any]) -> None:
    conn = connect()
    assert e6observe.instrument_connection(conn) is False
    assert not hasattr(conn._client, "_e6observe_token")


@pytest.mark.matrix
def test_failing_recorder_does_not_change_query_results(
    sim: Simulator,
    connect: Callable[..., Any],
    instrument: Callable[..., Recorder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rec = instrument()

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("recorder broken")

    for name in (
        "rpc_histogram",
        "query_started",
        "query_finished",
        "query_histogram",
        "applied",
        "mismatch",
        "cache_cleared",
        "retry",
        "detected",
        "announced",
    ):
        monkeypatch.setattr(rec, name, boom)
    conn = connect()
    cur = conn.cursor()
    cur.execute("SELECT COUNT(*) FROM sample")
    assert cur.fetchall() == [[1000]]
    cur.clear()
    sim.flip(announce=False)  # the 456 path runs every broken strategy callback
    cur = conn.cursor()
    cur.execute("SELECT 7")
    assert cur.fetchall() == [[7]]
    cur.clear()
    assert client_active() == "green"
    errors = hook_errors()
    assert errors.get("hook.channel", 0) > 0
    assert errors.get("hook.cursor", 0) > 0
    assert errors.get("hook.strategy_cache", 0) > 0


@pytest.mark.matrix
def test_rpc_errors_pass_through_as_the_connectors_own_type(
    sim: Simulator, connect: Callable[..., Any], instrument: Callable[..., Recorder]
) -> None:
    import grpc

    rec = instrument()
    conn = connect()
    sim.inject_fault("executeStatement", grpc.StatusCode.FAILED_PRECONDITION, "nope", 1)
    cur = conn.cursor()
    with pytest.raises(grpc.RpcError) as info:
        cur.execute("SELECT 1")
    exc = info.value
    assert type(exc) is grpc._channel._InactiveRpcError
    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and exc.details() == "nope"
    # Raised by grpc itself and passed through unchanged: its innermost frame is grpc's.
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    assert "grpc" in tb.tb_frame.f_code.co_filename
    assert hist_counts(rec, M.RPC_DURATION)[("executeStatement", "blue", "FAILED_PRECONDITION")] == 1
    assert hist_counts(rec, M.QUERY_DURATION) == {("blue", "error"): 1}


def test_v2_results_prefetch_futures_and_a_failed_fetch_end_the_query(
    sim: Simulator, connect: Callable[..., Any], instrument: Callable[..., Recorder]
) -> None:
    from helpers import connector_version

    if connector_version() < (3, 0, 1):
        pytest.skip("v2 results arrived in connector 3.0.1")
    rec = instrument()
    conn = connect(enable_result_batch_v2=True)
    cur = conn.cursor()
    cur.execute("SELECT * FROM sample")
    assert len(cur.fetchall()) == 1000
    cur.clear()
    rpc = hist_counts(rec, M.RPC_DURATION)
    assert rpc[("getNextResultBatchV2", "blue", "OK")] >= 1  # timed through .future as well
    sim.announce()
    cur = conn.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchall() == [[1]]
    cur.clear()  # the last query drained: the connector flips to green here
    assert client_active() == "green"
    # Connector 3.0.x quirk: the first v2 query after a graceful flip fails in fetchall with
    # "Connection is closed." before any fetch RPC; the query still ends (as an error).
    cur = conn.cursor()
    cur.execute("SELECT 2")
    try:
        rows = cur.fetchall()
        cur.clear()
    except Exception:
        rows = None
    q = hist_counts(rec, M.QUERY_DURATION)
    assert q[("blue", "ok")] == 2
    assert q.get(("green", "ok"), 0) + q.get(("green", "error"), 0) == 1
    assert (rows == [[2]]) == (("green", "ok") in q)
    assert rec.state()["in_flight"] == dict.fromkeys(M.STRATEGY_LABELS, 0)
    assert hook_errors() == {}
