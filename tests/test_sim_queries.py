"""The real connector runs queries against the simulator: rows, fetch styles, pool, faults.

Connector quirks these tests pin (documented in docs/simulator.md, not hidden):

* ``fetchone()`` returns ``[[row]]`` (a one-row list), so iterating a cursor yields ``[row]``;
* ``fetchall()`` after ``fetchmany()`` drops the rows ``fetchmany`` had buffered but not returned.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any, Callable, List

import grpc
import pytest
from e6data_python_connector.server import e6x_engine_pb2 as pb
from e6data_python_connector.server import e6x_engine_pb2_grpc as pb_grpc
from helpers import PASSWORD, USER, connector_version, login_errors_surface

from e6observe.sim import SAMPLE_ROWS, Simulator, sample_row
from e6observe.sim.results import wide_row

Connect = Callable[..., Any]


def as_connector(v: object) -> object:
    """The connector's decoded form of a sample value (ISO strings for time types)."""
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%dT%H:%M:%S") + f".{v.microsecond // 1000:03d}+00:00"
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def expected(n: int = SAMPLE_ROWS) -> List[List[object]]:
    return [[as_connector(v) for v in sample_row(i)] for i in range(n)]


def rpc_error(exc_info: Any) -> grpc.RpcError:
    err = exc_info.value
    assert isinstance(err, grpc.RpcError), repr(err)
    return err


# ---------------------------------------------------------------------------------------------
# rows through every fetch style


@pytest.mark.matrix
def test_select_1_scalar(connect: Connect) -> None:
    cur = connect().cursor()
    cur.execute("SELECT 1")
    assert cur.fetchall() == [[1]]
    cur.clear()


@pytest.mark.matrix
def test_fetchall_returns_the_whole_sample_across_batches(sim: Simulator, connect: Connect) -> None:
    cur = connect().cursor()
    cur.execute("SELECT * FROM sample")
    assert cur.fetchall() == expected()
    cur.clear()
    # 1000 rows in batches of 256: four batches, then the empty batch that ends the result
    assert sim.counters()["rpcs"]["getNextResultBatch"] == 5
    assert sim.counters()["open_queries"] == 0


@pytest.mark.matrix
def test_description_names_the_columns(connect: Connect) -> None:
    cur = connect().cursor()
    cur.execute("SELECT * FROM sample LIMIT 3")
    cur.fetchall()
    assert [d[0] for d in cur.description] == [
        "id",
        "name",
        "qty",
        "price",
        "created_at",
        "day",
        "active",
        "note",
    ]
    cur.clear()


@pytest.mark.matrix
def test_limit_and_count(connect: Connect) -> None:
    cur = connect().cursor()
    cur.execute("select * from sample limit 300;")
    assert cur.fetchall() == expected(300)
    cur.clear()
    cur.execute("SELECT COUNT(*) FROM sample")
    assert cur.fetchall() == [[1000]]
    cur.clear()


@pytest.mark.matrix
def test_fetchmany_in_steps_returns_every_row_once(connect: Connect) -> None:
    cur = connect().cursor()
    cur.execute("SELECT * FROM sample")
    got: List[Any] = []
    while True:
        part = cur.fetchmany(97)
        if not part:
            break
        assert len(part) <= 97
        got.extend(part)
    assert got == expected()
    cur.clear()


@pytest.mark.matrix
def test_fetchone_returns_a_one_row_list(connect: Connect) -> None:
    """Quirk: fetchone() is fetchmany(1), so it returns [[row]], not row."""
    cur = connect().cursor()
    cur.execute("SELECT * FROM sample LIMIT 3")
    assert cur.fetchone() == [expected(1)[0]]
    assert cur.fetchone() == [expected(2)[1]]
    assert cur.fetchone() == [expected(3)[2]]
    assert cur.fetchone() is None
    cur.clear()


@pytest.mark.matrix
def test_iteration_yields_one_row_lists_covering_all_rows(connect: Connect) -> None:
    cur = connect().cursor()
    cur.execute("SELECT * FROM sample")
    items = list(cur)
    assert all(len(item) == 1 for item in items)
    assert [item[0] for item in items] == expected()
    cur.clear()


@pytest.mark.matrix
def test_fetchall_after_fetchmany_loses_the_buffered_rows(connect: Connect) -> None:
    """Quirk: fetchmany(10) buffers the whole first batch (256 rows) and returns 10; a following
    fetchall() starts from an empty buffer, so rows 10..255 are never returned."""
    cur = connect().cursor()
    cur.execute("SELECT * FROM sample")
    first = cur.fetchmany(10)
    rest = cur.fetchall()
    assert first == expected(10)
    assert rest == expected()[256:]
    cur.clear()


@pytest.mark.matrix
def test_result_batch_size_follows_batch_rows() -> None:
    from e6data_python_connector import e6data_grpc

    with Simulator(port=0, batch_rows=1000) as sim:
        conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
        try:
            cur = conn.cursor()
            cur.execute("SELECT * FROM sample")
            assert cur.fetchall() == expected()
            cur.clear()
            assert sim.counters()["rpcs"]["getNextResultBatch"] == 2
        finally:
            conn.close()


@pytest.mark.skipif(connector_version() < (3, 0, 1), reason="getNextResultBatchV2 arrived in 3.0.1")
def test_result_batch_v2_path(sim: Simulator, connect: Connect) -> None:
    cur = connect(enable_result_batch_v2=True).cursor()
    cur.execute("SELECT * FROM sample")
    assert cur.fetchall() == expected()
    cur.clear()
    assert sim.counters()["rpcs"].get("getNextResultBatchV2", 0) >= 1
    assert "getNextResultBatch" not in sim.counters()["rpcs"]


# ---------------------------------------------------------------------------------------------
# status, cancel, catalog calls, errors


@pytest.mark.matrix
def test_status_and_cancel(sim: Simulator, connect: Connect) -> None:
    cur = connect().cursor()
    qid = cur.execute("SELECT * FROM sample LIMIT 10")
    st = cur.status(qid)
    assert st.status is True and st.rowCount == 10
    assert sim.open_queries() == 1
    cur.cancel(qid)
    assert sim.open_queries() == 0
    assert sim.counters()["rpcs"]["cancelQuery"] == 1


@pytest.mark.matrix
def test_catalog_calls(connect: Connect) -> None:
    conn = connect()
    assert "sample" in conn.get_tables("sim", "default")
    assert "default" in conn.get_schema_names("sim")
    cols = conn.get_columns("sim", "default", "sample")
    names = [c["fieldName"] if isinstance(c, dict) else c.fieldName for c in cols]
    assert names[:3] == ["id", "name", "qty"]


@pytest.mark.matrix
def test_unsupported_query_fails_with_invalid_argument(sim: Simulator, connect: Connect) -> None:
    cur = connect().cursor()
    with pytest.raises(grpc.RpcError) as ei:
        cur.execute("SELECT name FROM customers")
    assert rpc_error(ei).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sim.counters()["queries"] == 0


@pytest.mark.matrix
def test_fail_query_fails_in_execute(connect: Connect) -> None:
    cur = connect().cursor()
    with pytest.raises(grpc.RpcError) as ei:
        cur.execute("SELECT fail()")
    assert rpc_error(ei).code() == grpc.StatusCode.INTERNAL
    assert rpc_error(ei).details() == "simulated query failure"


# ---------------------------------------------------------------------------------------------
# sessions, faults, latency, restart, suspend


@pytest.mark.matrix
def test_users_dict_restricts_logins() -> None:
    from e6data_python_connector import e6data_grpc

    with Simulator(port=0, users={"alice": "s3cret"}) as sim:
        good = e6data_grpc.Connection(host=sim.host, port=sim.port, username="alice", password="s3cret")
        bad = e6data_grpc.Connection(host=sim.host, port=sim.port, username="alice", password="wrong")
        try:
            cur = good.cursor()
            cur.execute("SELECT 1")
            assert cur.fetchall() == [[1]]
            with pytest.raises(grpc.RpcError) as ei:
                bad.cursor().execute("SELECT 1")
            assert "Access denied" in rpc_error(ei).details()
            assert sim.counters()["refused_logins"] >= 1
        finally:
            good.close()
            bad.close()


@pytest.mark.matrix
def test_refuse_sessions_blocks_new_logins_only(sim: Simulator, connect: Connect) -> None:
    """3.x, 2.3.9 and 2.3.10 surface the refused login; 2.3.11-2.3.15 swallow the authenticate
    error, send an empty session id, and surface the engine's answer to that instead."""
    old = connect().cursor()
    old.execute("SELECT 1")
    old.fetchall()
    sim.refuse_sessions(True)
    with pytest.raises(grpc.RpcError) as ei:
        connect().cursor().execute("SELECT 1")
    want = "login refused" if login_errors_surface() else "unknown session"
    assert rpc_error(ei).details() == "Access denied: " + want
    assert sim.counters()["refused_logins"] >= 1
    old.execute("SELECT 2")  # an existing session keeps working
    assert old.fetchall() == [[2]]
    sim.refuse_sessions(False)
    cur = connect().cursor()
    cur.execute("SELECT 3")
    assert cur.fetchall() == [[3]]


@pytest.mark.matrix
def test_inject_fault_fails_exactly_the_next_n_calls(sim: Simulator, connect: Connect) -> None:
    cur = connect().cursor()
    sim.inject_fault("executeStatement", grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", count=2)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as ei:
            cur.execute("SELECT 1")
        assert rpc_error(ei).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert rpc_error(ei).details() == "queue full"
    cur.execute("SELECT 1")
    assert cur.fetchall() == [[1]]
    assert sim.counters()["faults_injected"] == 2


def test_fault_and_latency_arguments_are_validated(sim: Simulator) -> None:
    with pytest.raises(ValueError):
        sim.inject_fault("noSuchMethod")
    with pytest.raises(ValueError):
        sim.inject_fault("executeStatement", grpc.StatusCode.OK)
    with pytest.raises(ValueError):
        sim.inject_fault("executeStatement", count=0)
    with pytest.raises(ValueError):
        sim.set_latency(-1)
    with pytest.raises(ValueError):
        sim.set_latency(float("nan"))
    with pytest.raises(ValueError):
        sim.set_latency(5, method="bogus")


@pytest.mark.matrix
def test_method_latency_trips_a_client_deadline(sim: Simulator) -> None:
    """Latency is real server time: a 1 s delay on one method exceeds a 0.2 s client deadline,
    while other methods stay unaffected."""
    sim.set_latency(1000, method="getTables")
    with grpc.insecure_channel(sim.address) as ch:
        stub = pb_grpc.QueryEngineServiceStub(ch)
        sid = stub.authenticate(pb.AuthenticateRequest(user=USER, password=PASSWORD), timeout=5).sessionId
        with pytest.raises(grpc.RpcError) as ei:
            stub.getTables(pb.GetTablesRequest(sessionId=sid), timeout=0.2)
        assert rpc_error(ei).code() == grpc.StatusCode.DEADLINE_EXCEEDED
        schemas = stub.getSchemaNames(pb.GetSchemaNamesRequest(sessionId=sid), timeout=5).schemas
        assert list(schemas) == ["default"]


@pytest.mark.matrix
def test_restart_loses_sessions_and_the_connector_reauthenticates(sim: Simulator, connect: Connect) -> None:
    conn = connect()
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    port = sim.port
    sim.restart()
    assert sim.port == port and sim.counters()["sessions_open"] == 0
    cur.execute("SELECT 2")  # "Access denied: unknown session" -> the connector's re_auth path
    assert cur.fetchall() == [[2]]
    c = sim.counters()
    assert c["restarts"] == 1 and c["sessions"] == 2


@pytest.mark.matrix
def test_suspended_cluster_is_resumed_by_the_connectors_auto_resume(sim: Simulator, connect: Connect) -> None:
    sim.suspend()
    cur = connect().cursor()  # a new connection: authenticate -> 503 -> ClusterService.resume
    cur.execute("SELECT 1")
    assert cur.fetchall() == [[1]]
    assert not sim.suspended
    assert sim.counters()["rpcs"]["cluster.resume"] == 1


@pytest.mark.matrix
def test_suspend_surfaces_503_to_an_existing_session(sim: Simulator, connect: Connect) -> None:
    """Auto-resume runs only when authenticating: a session opened before the suspension gets
    the 503 from prepareStatement."""
    cur = connect().cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    sim.suspend()
    with pytest.raises(grpc.RpcError) as ei:
        cur.execute("SELECT 1")
    assert rpc_error(ei).code() == grpc.StatusCode.UNAVAILABLE
    assert rpc_error(ei).details() == "status: 503, cluster is suspended"
    assert sim.suspended and "cluster.resume" not in sim.counters()["rpcs"]


@pytest.mark.matrix
def test_unknown_session_is_access_denied(sim: Simulator) -> None:
    with grpc.insecure_channel(sim.address) as ch:
        stub = pb_grpc.QueryEngineServiceStub(ch)
        with pytest.raises(grpc.RpcError) as ei:
            req = pb.PrepareStatementRequest(sessionId="nope", queryString="SELECT 1")
            stub.prepareStatement(req, timeout=5)
        assert rpc_error(ei).code() == grpc.StatusCode.INTERNAL
        assert rpc_error(ei).details() == "Access denied: unknown session"


# ---------------------------------------------------------------------------------------------
# lifecycle, pool, threads


def test_start_stop_are_idempotent_and_a_taken_port_is_an_oserror() -> None:
    sim = Simulator(port=0)
    sim.start()
    sim.start()
    assert sim.running and sim.port > 0
    with pytest.raises(OSError, match="cannot listen"):
        Simulator(port=sim.port).start()
    sim.stop()
    sim.stop()
    assert not sim.running


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError):
        Simulator(port=70000)
    with pytest.raises(ValueError):
        Simulator(active="purple")
    with pytest.raises(ValueError):
        Simulator(batch_rows=0)


@pytest.mark.matrix
@pytest.mark.skipif(connector_version() < (2, 3, 10), reason="ConnectionPool arrived in 2.3.10")
def test_connection_pool_under_threads(sim: Simulator) -> None:
    from e6data_python_connector.connection_pool import ConnectionPool

    pool = ConnectionPool(
        min_size=2, max_size=4, host=sim.host, port=sim.port, username=USER, password=PASSWORD
    )
    errors: List[BaseException] = []

    def work() -> None:
        try:
            for _ in range(15):
                with pool.get_connection_context() as pc:
                    cur = pc.cursor()
                    cur.execute("SELECT * FROM sample LIMIT 300")
                    assert cur.fetchall() == expected(300)
                    cur.clear()
        except BaseException as exc:  # noqa: B036 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    pool.close_all()
    assert errors == []
    c = sim.counters()
    assert c["queries"] == 90 and c["open_queries"] == 0
    assert c["sessions"] <= 4 + 5  # max_size plus overflow: sessions are reused, not per query


def test_32_concurrent_clients(sim: Simulator, connect: Connect) -> None:
    """The thread pool serves 32 clients at once (each query holds a server thread 50 ms)."""
    barrier = threading.Barrier(32)
    errors: List[BaseException] = []
    conns = [connect() for _ in range(32)]

    def work(conn: Any) -> None:
        try:
            cur = conn.cursor()
            barrier.wait(30)
            cur.execute("SELECT sleep(0.05)")
            assert cur.fetchall() == [[1]]
            cur.clear()
        except BaseException as exc:  # noqa: B036
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sim.counters()["queries"] == 32


def test_stop_interrupts_a_sleeping_query() -> None:
    from e6data_python_connector import e6data_grpc

    sim = Simulator(port=0).start()
    conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
    failed: List[BaseException] = []

    def run() -> None:
        try:
            conn.cursor().execute("SELECT sleep(30)")
        except BaseException as exc:  # noqa: B036
            failed.append(exc)

    t = threading.Thread(target=run)
    t.start()
    while sim.counters()["rpcs"].get("executeStatement", 0) == 0:
        threading.Event().wait(0.01)
    sim.stop()
    t.join(10)
    assert not t.is_alive()  # the query did not hold the server for 30 s
    conn.close()


def test_wide_rows_reach_the_connector_decoded(connect: Callable[..., Any]) -> None:
    cur = connect().cursor()
    cur.execute("SELECT * FROM wide LIMIT 600")
    rows = cur.fetchall()
    cur.clear()
    assert len(rows) == 600 and len(rows[0]) == 10
    assert rows[0][0] == 1 and rows[599][0] == 600
    assert rows[99][2] is None and rows[98][2] == wide_row(98)[2]
    assert rows[5][3] == "label-005" and rows[5][5] is False and rows[6][5] is True
