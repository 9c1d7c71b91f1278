"""Blue/green switching: the simulator's side of the protocol, and the real connector following it.

Where the connector misbehaves, the tests below pin what it does (see docs/simulator.md,
"Connector behaviour the simulator exposes"):

* an abrupt switch between ``execute`` and ``fetch`` fails that fetch and that ``clear`` with 456;
  the query id stays in ``query_strategy_map`` for good, so the same cursor's next ``execute``
  is sent under the retired colour and fails all five ``re_auth`` attempts, and the leaked id
  blocks every later graceful switch of the process;
* with back-to-back queries on several threads the connector's ``query_strategy_map`` is never
  empty, so an announced switch is never applied and the cut-over surfaces 456s to the app.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import grpc
import pytest
from e6data_python_connector import e6data_grpc
from e6data_python_connector.server import e6x_engine_pb2 as pb
from e6data_python_connector.server import e6x_engine_pb2_grpc as pb_grpc
from helpers import PASSWORD, USER

from e6observe.sim import MISMATCH_DETAILS, Simulator
from e6observe.sim.server import ENGINE_METHODS, _Engine

_SERVED = frozenset(n for n in vars(_Engine) if n in ENGINE_METHODS)

Connect = Callable[..., Any]


def cache() -> Dict[str, Any]:
    return e6data_grpc._local_strategy_cache


def one_query(cur: Any, sql: str = "SELECT 1") -> Any:
    cur.execute(sql)
    rows = cur.fetchall()
    cur.clear()
    return rows


def is_456(exc: BaseException) -> bool:
    return (
        isinstance(exc, grpc.RpcError)
        and exc.code() == grpc.StatusCode.UNKNOWN
        and exc.details() == MISMATCH_DETAILS
    )


class RawClient:
    """A bare stub on the simulator, for protocol-level checks the connector cannot make."""

    def __init__(self, sim: Simulator) -> None:
        self.channel = grpc.insecure_channel(sim.address)
        self.stub = pb_grpc.QueryEngineServiceStub(self.channel)
        self.sid = self.stub.authenticate(
            pb.AuthenticateRequest(user=USER, password=PASSWORD), timeout=5
        ).sessionId

    def call(self, method: str, header: Optional[str], **fields: Any) -> Any:
        req_cls = getattr(
            pb, pb.DESCRIPTOR.services_by_name["QueryEngineService"].methods_by_name[method].input_type.name
        )
        names = req_cls.DESCRIPTOR.fields_by_name
        if "sessionId" in names:
            fields.setdefault("sessionId", self.sid)
        md = [] if header is None else [("strategy", header)]
        return getattr(self.stub, method)(req_cls(**fields), metadata=md, timeout=5)

    def prepare(self, header: Optional[str] = "blue", sql: str = "SELECT 1") -> str:
        return self.call("prepareStatement", header, queryString=sql).queryId

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def raw(sim: Simulator) -> Any:
    c = RawClient(sim)
    yield c
    c.close()


# ---------------------------------------------------------------------------------------------
# the protocol, seen from a bare client

# Methods the simulator serves (older stubs also have RPCs it answers UNIMPLEMENTED, such as
# 2.3.9's getNextResultRow and dryRunV2).
_STAMPED = [
    m
    for m in ENGINE_METHODS
    if m in _SERVED
    and "new_strategy"
    in pb.DESCRIPTOR.services_by_name["QueryEngineService"].methods_by_name[m].output_type.fields_by_name
]


def _request_fields(raw: RawClient, method: str) -> Dict[str, Any]:
    req = pb.DESCRIPTOR.services_by_name["QueryEngineService"].methods_by_name[method].input_type
    fields: Dict[str, Any] = {}
    if method == "authenticate":
        return {"user": USER, "password": PASSWORD}
    if "queryString" in req.fields_by_name:
        fields["queryString"] = "SELECT * FROM sample"
    if "queryId" in req.fields_by_name:
        qid = raw.prepare()
        raw.call("executeStatement", "blue", queryId=qid)
        fields["queryId"] = qid
    if "table" in req.fields_by_name:
        fields["table"] = "sample"
    return fields


@pytest.mark.matrix
@pytest.mark.parametrize("method", _STAMPED)
def test_every_response_with_new_strategy_carries_it_while_announced(
    sim: Simulator, raw: RawClient, method: str
) -> None:
    fields = _request_fields(raw, method)
    assert raw.call(method, "blue", **fields).new_strategy == ""
    fields = _request_fields(raw, method)
    sim.announce("green")
    assert raw.call(method, "blue", **fields).new_strategy == "green"


def test_stamped_methods_cover_the_connectors_calls() -> None:
    assert {
        "authenticate",
        "prepareStatement",
        "executeStatement",
        "getResultMetadata",
        "getNextResultBatch",
        "clearOrCancelQuery",
        "clear",
        "cancelQuery",
        "status",
    } <= set(_STAMPED)


@pytest.mark.matrix
def test_headers_served_during_announce_and_refused_after_complete(sim: Simulator, raw: RawClient) -> None:
    sim.announce()
    assert (sim.active, sim.pending) == ("blue", "green")
    for header in ("blue", "green", None):  # both colours and no header are served while announced
        raw.prepare(header)
    assert sim.counters()["mismatches_total"] == 0
    sim.complete()
    assert (sim.active, sim.pending) == ("green", None)
    with pytest.raises(grpc.RpcError) as ei:
        raw.prepare("blue")
    assert ei.value.code() == grpc.StatusCode.UNKNOWN and ei.value.details() == "status: 456"
    raw.prepare("green")
    raw.prepare(None)
    with pytest.raises(grpc.RpcError):
        raw.prepare("purple")
    c = sim.counters()
    assert c["mismatches"] == {"prepareStatement": 2}
    assert c["mismatches_by_strategy"] == {"blue": 1, "other": 1}
    assert c["rpcs_by_strategy"]["other"] == 1 and c["rpcs_by_strategy"]["none"] == 3  # incl. auth


@pytest.mark.matrix
def test_query_open_on_the_old_colour_gets_456_after_complete(sim: Simulator, raw: RawClient) -> None:
    qid = raw.prepare("blue", "SELECT * FROM sample")
    raw.call("executeStatement", "blue", queryId=qid)
    sim.announce()
    raw.call("getResultMetadata", "blue", queryId=qid)  # still served while announced
    assert sim.complete() == 1  # one query was still open on blue at the switch
    for method in ("getNextResultBatch", "clearOrCancelQuery"):
        with pytest.raises(grpc.RpcError) as ei:
            raw.call(method, "blue", queryId=qid)
        assert ei.value.details() == "status: 456"


def test_announce_validates_and_complete_without_announce_is_abrupt(sim: Simulator) -> None:
    with pytest.raises(ValueError):
        sim.announce("blue")  # already active
    with pytest.raises(ValueError):
        sim.announce("purple")
    sim.complete()
    assert (sim.active, sim.pending) == ("green", None)
    assert sim.flip() == "blue" and sim.flip(announce=False) == "green"
    c = sim.counters()
    assert c["switches"] == 3 and c["announcements"] == 1


def test_counters_stay_bounded_under_hostile_headers(sim: Simulator) -> None:
    with grpc.insecure_channel(sim.address) as ch:
        stub = pb_grpc.QueryEngineServiceStub(ch)
        for i in range(300):
            with pytest.raises(grpc.RpcError):
                stub.authenticate(
                    pb.AuthenticateRequest(user=f"user-{i}-" + "x" * 5000, password="p"),
                    metadata=[("strategy", f"colour-{i}" * 20)],
                    timeout=5,
                )
    c = sim.counters()
    assert set(c["rpcs_by_strategy"]) == {"other"}
    assert c["mismatches_total"] == 300
    assert len(c["mismatches_by_user"]) <= 257 and c["mismatches_by_user"]["other"] >= 44
    assert max(len(k) for k in c["mismatches_by_user"]) <= 128


def test_flip_every_runs_announced_flips_until_stopped(sim: Simulator) -> None:
    sim.flip_every(0.2, announce_for=0.1)
    deadline = time.monotonic() + 10
    while sim.counters()["switches"] < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    sim.stop_schedule()
    c = sim.counters()
    assert c["switches"] >= 3
    assert c["announcements"] >= c["switches"]  # every scheduled switch was announced first
    time.sleep(0.4)
    assert sim.counters()["switches"] == c["switches"]  # the schedule really stopped
    with pytest.raises(ValueError):
        sim.flip_every(0)


# ---------------------------------------------------------------------------------------------
# the real connector following the protocol


@pytest.mark.matrix
def test_announced_flip_is_applied_by_the_connector_without_errors(sim: Simulator, connect: Connect) -> None:
    cur = connect().cursor()
    assert one_query(cur) == [[1]]
    assert cache()["active_strategy"] == "blue"
    sim.announce()
    assert one_query(cur) == [[1]]  # learns new_strategy; the last clear applies it
    assert cache()["active_strategy"] == "green" and sim.active == "blue"
    sim.complete()
    assert one_query(cur, "SELECT * FROM sample LIMIT 5")[0][0] == 1
    assert cache()["active_strategy"] == sim.active == "green"
    assert sim.counters()["mismatches_total"] == 0


@pytest.mark.matrix
def test_abrupt_flip_is_recovered_through_the_456_path(sim: Simulator, connect: Connect) -> None:
    cur = connect().cursor()
    assert one_query(cur) == [[1]]
    sim.flip(announce=False)
    # prepare under blue -> 456 -> re_auth clears the cache, re-authenticates (blue: 456, then
    # green) and replays the execute
    assert one_query(cur, "SELECT 7") == [[7]]
    assert cache()["active_strategy"] == sim.active == "green"
    assert sim.counters()["mismatches"] == {"prepareStatement": 1, "authenticate": 1}


@pytest.mark.matrix
def test_abrupt_flip_between_execute_and_fetch_breaks_that_cursor(sim: Simulator, connect: Connect) -> None:
    conn = connect()
    cur = conn.cursor()
    qid = cur.execute("SELECT * FROM sample")
    sim.flip(announce=False)
    with pytest.raises(grpc.RpcError) as ei:
        cur.fetchall()  # fetches are not retried
    assert is_456(ei.value)
    with pytest.raises(grpc.RpcError) as ei:
        cur.clear()
    assert is_456(ei.value)
    assert cache()["query_strategy_map"] == {qid: "blue"}  # leaked: cleanup never ran
    before = sim.counters()["mismatches"].get("prepareStatement", 0)
    with pytest.raises(grpc.RpcError) as ei:
        cur.execute("SELECT 1")  # still sent under the old query's colour, five times
    assert is_456(ei.value)
    assert sim.counters()["mismatches"]["prepareStatement"] - before == 5
    assert cache()["active_strategy"] == "green"
    fresh = conn.cursor()  # a new cursor works
    assert one_query(fresh) == [[1]]
    # ...but the leaked id blocks every later graceful switch of this process
    sim.announce()
    assert one_query(fresh) == [[1]]
    assert (cache()["active_strategy"], cache()["pending_strategy"]) == ("green", "blue")
    assert cache()["query_strategy_map"] == {qid: "blue"}


@pytest.mark.matrix
def test_drain_wait_holds_the_switch_until_old_queries_are_cleared(sim: Simulator, connect: Connect) -> None:
    cur = connect().cursor()
    one_query(cur)  # a session on blue first (a fresh login while announced would go green)
    sim.announce()
    cur.execute("SELECT * FROM sample")  # prepared under blue while green is announced
    result: List[int] = []
    done = threading.Event()

    def complete() -> None:
        result.append(sim.complete(drain_wait=30))
        done.set()

    t = threading.Thread(target=complete)
    t.start()
    rows = cur.fetchall()  # still served: the switch waits for this query
    assert len(rows) == 1000 and not done.is_set()
    cur.clear()
    t.join(10)
    assert done.is_set() and result == [0] and sim.active == "green"
    assert one_query(cur) == [[1]]
    assert cache()["active_strategy"] == "green" and sim.counters()["mismatches_total"] == 0


def _run_threads(
    sim: Simulator, flips: int, think: float, drain: float
) -> Tuple[int, collections.Counter[Tuple[str, bool]], List[int]]:
    """8 threads, one connection each, querying until ``flips`` announced flips are done."""
    stop = threading.Event()
    ok = [0] * 8
    errors: collections.Counter[Tuple[str, bool]] = collections.Counter()
    lock = threading.Lock()

    def worker(i: int) -> None:
        conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=f"worker-{i}", password="p")
        cur = conn.cursor()
        try:
            while not stop.is_set():
                stage = "execute"
                try:
                    cur.execute("SELECT * FROM sample LIMIT 3")
                    stage = "fetch"
                    rows = cur.fetchall()
                    assert [r[0] for r in rows] == [1, 2, 3]
                    stage = "clear"
                    cur.clear()
                    ok[i] += 1
                except Exception as exc:  # counted; the cursor is replaced as an app would
                    with lock:
                        errors[(stage, is_456(exc))] += 1
                    cur = conn.cursor()
                if think:
                    time.sleep(think)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    left: List[int] = []
    try:
        for _ in range(flips):
            time.sleep(0.15)
            sim.announce()
            time.sleep(0.15)
            left.append(sim.complete(drain_wait=drain))
        time.sleep(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    return sum(ok), errors, left


@pytest.mark.matrix
@pytest.mark.slow
def test_eight_threads_across_five_announced_flips_follow_the_cluster(sim: Simulator) -> None:
    """With a little think time between queries the connector drains and flips gracefully.

    No error reaches the application. The server may still return a few 456s to prepare or
    authenticate, all recovered by the connector's re_auth: the switch completes the moment the
    last old-colour query is cleared, and another thread can read the still-old cached colour
    between that clear's response and the connector applying its pending switch.
    """
    ok, errors, left = _run_threads(sim, flips=5, think=0.01, drain=10.0)
    c = sim.counters()
    assert c["switches"] == 5 and sim.active == "green"
    assert ok >= 8 * 5 and errors == collections.Counter()
    assert left == [0] * 5  # nothing was still open on the old colour at any switch
    assert set(c["mismatches"]) <= {"prepareStatement", "authenticate"}
    assert cache()["active_strategy"] == sim.active
    assert cache()["query_strategy_map"] == {}


@pytest.mark.matrix
@pytest.mark.slow
def test_eight_threads_back_to_back_never_drain_and_cut_over_with_456s(sim: Simulator) -> None:
    """Without think time query_strategy_map is never empty, so the connector never applies
    the announced switch; the drain wait expires, the cut-over fails in-flight queries with 456
    (surfaced to the app), and their ids stay in query_strategy_map."""
    ok, errors, left = _run_threads(sim, flips=5, think=0.0, drain=0.3)
    c = sim.counters()
    assert c["switches"] == 5 and ok > 0
    assert sum(errors.values()) > 0 and all(is456 for (_, is456) in errors)  # only 456s surface
    assert any(n > 0 for n in left)  # queries were still open on the old colour at cut-over
    assert sum(errors.values()) <= c["mismatches_total"]
    assert len(cache()["query_strategy_map"]) > 0  # leaked ids of the failed queries
    # the process still follows the cluster: a fresh connection runs on the active colour
    conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
    try:
        assert one_query(conn.cursor()) == [[1]]
    finally:
        conn.close()
    assert cache()["active_strategy"] == sim.active


@pytest.mark.matrix
def test_456s_are_counted_per_user(sim: Simulator, connect: Connect) -> None:
    alice = connect(username="alice").cursor()
    bob = connect(username="bob").cursor()
    one_query(alice)
    one_query(bob)
    sim.flip(announce=False)
    one_query(alice)  # alice's connection meets the switch: prepare 456, authenticate(blue) 456
    one_query(bob)  # the process-wide cache is already green: bob never sees a 456
    assert sim.counters()["mismatches_by_user"] == {"alice": 2}


@pytest.mark.matrix
@pytest.mark.parametrize("raw_value", ["purple", "", "x" * 10240, "\u00e9\u4e2d", "GREEN"])
def test_hostile_new_strategy_values(sim: Simulator, connect: Connect, raw_value: str) -> None:
    """The connector ignores values that are not blue/green (any case) and keeps working."""
    cur = connect().cursor()
    one_query(cur)
    sim.set_new_strategy_value(raw_value)
    sim.announce("green")
    for _ in range(3):
        assert one_query(cur, "SELECT * FROM sample LIMIT 300")[299][0] == 300
    expect = "green" if raw_value == "GREEN" else "blue"
    assert cache()["active_strategy"] == expect and cache()["pending_strategy"] is None
    sim.set_new_strategy_value(None)
    assert sim.counters()["mismatches_total"] == 0


# ---------------------------------------------------------------------------------------------
# the async API


@pytest.mark.aio
def test_async_api_runs_queries_and_follows_flips(sim: Simulator) -> None:
    import asyncio

    from e6data_python_connector import aio

    async def main() -> None:
        conn = await aio.connect(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
        try:
            cur = conn.cursor()

            async def q(sql: str) -> Any:
                await cur.execute(sql)
                rows = await cur.fetchall()
                await cur.clear()
                return rows

            assert len(await q("SELECT * FROM sample")) == 1000
            sim.announce()
            assert await q("SELECT 1") == [[1]]
            assert conn._strategy == "green"  # per-connection state, applied on the idle route
            sim.complete()
            assert await q("SELECT 2") == [[2]]
            sim.flip(announce=False)  # abrupt: recovered through the async 456 path
            assert await q("SELECT 3") == [[3]]
            assert conn._strategy == sim.active == "blue"
        finally:
            await conn.close()

    asyncio.run(main())
    assert sim.counters()["switches"] == 2


@pytest.mark.aio
def test_async_connection_pool(sim: Simulator) -> None:
    import asyncio

    from e6data_python_connector import aio

    async def main() -> None:
        pool = aio.AsyncConnectionPool(
            min_size=1,
            max_size=3,
            max_overflow=0,
            host=sim.host,
            port=sim.port,
            username=USER,
            password=PASSWORD,
        )
        await pool.open()
        try:

            async def work(n: int) -> Any:
                async with pool.get_connection_context() as conn:
                    cur = conn.cursor()
                    await cur.execute(f"SELECT {n}")
                    rows = await cur.fetchall()
                    await cur.clear()
                    return rows

            got = await asyncio.gather(*(work(n) for n in range(12)))
            assert got == [[[n]] for n in range(12)]
        finally:
            await pool.close_all()

    asyncio.run(main())
    assert sim.counters()["queries"] == 12 and sim.counters()["sessions"] <= 3


def test_restart_keeps_the_flip_schedule_and_stop_ends_it(sim: Simulator) -> None:
    sim.flip_every(0.1, announce_for=0.05)
    sim.restart()
    after = sim.counters()["switches"]
    deadline = time.monotonic() + 10
    while sim.counters()["switches"] <= after and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sim.counters()["switches"] > after and sim.running
    sim.stop()
    final = sim.counters()["switches"]
    time.sleep(0.25)
    assert sim.counters()["switches"] == final
