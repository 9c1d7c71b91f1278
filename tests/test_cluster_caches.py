"""The connector's other blue/green paths (issue 14): the cluster manager's own strategy cache,
connection-scoped re-routes (OAuth), and strategy values the connector refuses.
"""

from __future__ import annotations

import inspect
import json
import re
from typing import Any, Iterator

import pytest
from e6data_python_connector import e6data_grpc
from helpers import PASSWORD, USER, scrape, status_doc

import e6observe
from e6observe import _safe
from e6observe import metrics as M
from e6observe.hooks.cluster import rejected_reason
from e6observe.recorder import Recorder
from e6observe.sim import Simulator

pytestmark = pytest.mark.timeout(120)
TOKEN = "sim-token-0123456789"


@pytest.fixture
def rec() -> Iterator[Recorder]:
    _safe.reset_for_tests()
    r = e6observe.instrument(otel=False, prometheus_port=0)
    assert r is not None
    yield r
    e6observe.uninstrument()


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        m = re.match(r"([^{ ]+)(?:\{(.*)\})? (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        if dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or "")) == labels:
            return float(m.group(3))
    raise AssertionError(f"{name}{labels} not on /metrics")


def counters(r: Recorder, spec: M.MetricSpec) -> dict[tuple[str, ...], float]:
    return {k: c.value for k, c in r.family(spec).items() if c.value}  # type: ignore[attr-defined]


def query(sim: Simulator, **kw: Any) -> Any:
    """One query on a new connection (a new login: where the sync connector resumes)."""
    kw = kw or {"username": USER, "password": PASSWORD}
    conn = e6data_grpc.Connection(host=sim.host, port=sim.port, **kw)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1")
        rows = cur.fetchall()
        cur.clear()
        return rows
    finally:
        conn.close()


def events(r: Recorder, kind: str) -> list[Any]:
    r.flush()
    return [e for e in r.ring.snapshot() if e.kind == kind]


@pytest.mark.matrix
def test_cluster_manager_cache_flip_and_split_are_visible(sim: Simulator, rec: Recorder) -> None:
    from e6data_python_connector import strategy as cache_b_module

    assert query(sim) == [[1]]
    sim.suspend()
    assert query(sim) == [[1]]  # resume: the cluster manager learns blue in its own cache
    assert rec.cluster_manager_active == "blue"
    (det,) = [e for e in events(rec, "detected") if e.scope == "cluster_manager"]
    assert det.to_strategy == "blue"

    sim.flip(announce=False)  # blue -> green; the process cache follows through a 456
    assert query(sim) == [[1]]
    assert rec.active == "green" and rec.cluster_manager_active == "blue"
    text = scrape()
    assert sample(text, "e6data_strategy_cache_split") == 1
    assert sample(text, "e6data_strategy_cluster_manager_active", strategy="blue") == 1
    assert sample(text, "e6data_strategy_active", strategy="green") == 1
    doc = status_doc()
    assert doc["caches"] == {"process": "green", "cluster_manager": "blue", "split": True}

    sim.suspend()  # the next resume runs with the manager's stale blue: 456, then green
    assert query(sim) == [[1]]
    assert cache_b_module._local_strategy_cache["active_strategy"] == "green"
    scoped = [e for e in events(rec, "applied") if e.scope == "cluster_manager"]
    assert [(e.from_strategy, e.to_strategy, e.cause) for e in scoped] == [("blue", "green", "mismatch")]
    assert counters(rec, M.SCOPED_SWITCHES) == {("blue", "green", "cluster_manager"): 1}
    # the process cache's switch is counted once, in its own counter
    assert counters(rec, M.SWITCHES) == {("blue", "green", "mismatch"): 1}
    text = scrape()
    assert sample(text, "e6data_strategy_cache_split") == 0
    assert (
        sample(
            text,
            "e6data_strategy_scoped_switches_total",
            **{"from": "blue", "to": "green", "scope": "cluster_manager"},
        )
        == 1
    )
    assert status_doc()["caches"]["split"] is False
    # its ClusterService RPCs are timed like the engine's, the 456 counted as a mismatch
    rpcs = {k for k, h in rec.family(M.RPC_DURATION).items() if h.count}  # type: ignore[attr-defined]
    assert ("cluster.status", "blue", "UNKNOWN") in rpcs
    assert ("cluster.status", "green", "OK") in rpcs and ("cluster.resume", "green", "OK") in rpcs
    assert counters(rec, M.MISMATCHES)[("blue", "cluster.status")] == 1
    assert _safe.internal_errors() == {}


def test_uninstrument_gives_the_cluster_manager_its_dict_back(sim: Simulator) -> None:
    from e6data_python_connector import cluster_manager as cm
    from e6data_python_connector import strategy as sm
    from e6data_python_connector.cluster_server import cluster_pb2_grpc as cpg

    before = (
        sm._local_strategy_cache,
        cm.ClusterManager.__dict__["resume"],
        cpg.ClusterServiceStub.__dict__["__init__"],
        e6data_grpc._set_pending_strategy,
    )
    e6observe.instrument(otel=False)
    assert sm._local_strategy_cache is not before[0]
    e6observe.uninstrument()
    after = (
        sm._local_strategy_cache,
        cm.ClusterManager.__dict__["resume"],
        cpg.ClusterServiceStub.__dict__["__init__"],
        e6data_grpc._set_pending_strategy,
    )
    assert all(a is b for a, b in zip(after, before))
    assert type(sm._local_strategy_cache) is dict


def has_oauth() -> bool:
    return "access_token" in inspect.signature(e6data_grpc.Connection.__init__).parameters


@pytest.mark.skipif(not has_oauth(), reason="OAuth access tokens arrived in connector 3.0")
def test_oauth_reroute_is_one_connection_scoped_switch(rec: Recorder) -> None:
    with Simulator(port=0, access_tokens={TOKEN: USER}) as sim:
        conn = e6data_grpc.Connection(host=sim.host, port=sim.port, access_token=TOKEN)

        def run() -> Any:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            rows = cur.fetchall()
            cur.clear()
            return rows

        sim.announce()  # blue -> green, announced: the process cache learns green
        assert run() == [[1]]
        sim.complete()
        assert run() == [[1]]
        assert e6data_grpc._local_strategy_cache["active_strategy"] == "green"
        sim.flip(announce=False)  # green -> blue, abrupt: 456 at prepare, the route moves
        for _ in range(3):
            assert run() == [[1]]
        conn.close()
        assert conn._oauth_resume_strategy == "blue"
        assert e6data_grpc._local_strategy_cache["active_strategy"] == "green"  # left behind
    assert counters(rec, M.SCOPED_SWITCHES) == {("green", "blue", "connection"): 1}
    scoped = [e for e in events(rec, "applied") if e.scope == "connection"]
    assert [(e.from_strategy, e.to_strategy) for e in scoped] == [("green", "blue")]
    # the process cache's own switch none -> green was a detection; nothing else counted
    assert counters(rec, M.SWITCHES) == {}
    assert counters(rec, M.MISMATCHES) == {("green", "prepareStatement"): 1}
    assert rec.active == "green"


def test_rejected_reasons_are_bounded() -> None:
    assert rejected_reason("green") is None and rejected_reason("BLUE") is None
    assert rejected_reason(" green ") == "padded"
    assert rejected_reason("purple") == "unknown"
    assert rejected_reason("x" * 10_000) == "oversized"
    assert rejected_reason(b"green") == "not_text"


@pytest.mark.matrix
@pytest.mark.parametrize(
    "value,reason",
    [("purple", "unknown"), (" green ", "padded"), ("g" * 10_240, "oversized")],
    ids=["purple", "padded", "10kB"],
)
@pytest.mark.slow
def test_rejected_value_is_reported_before_the_connectors_recursion(
    sim: Simulator, rec: Recorder, value: str, reason: str
) -> None:
    sim.announce("green")
    sim.set_new_strategy_value(value)
    seen: list[str] = []
    rec.subscribe(lambda ev: seen.append(ev.kind))
    conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
    with pytest.raises(RecursionError):  # what the application gets, instrumented or not
        conn.cursor().execute("SELECT 1")
    got = counters(rec, M.STRATEGY_REJECTED)
    assert list(got) == [(reason,)] and got[(reason,)] >= 1
    # every refusal counted; the event at most once per reason per 5 s, however deep the
    # recursion went (a slow machine may take longer than that to reach the limit)
    evs = events(rec, "strategy_rejected")
    assert 1 <= len(evs) <= 3 and len(evs) < got[(reason,)]
    ev = evs[0]
    assert ev.reason == reason
    assert value.strip() not in json.dumps(ev.to_dict()) or value.strip() == "green"
    assert "strategy_rejected" in seen
    assert sample(scrape(), "e6data_strategy_rejected_total", reason=reason) >= 1
    assert status_doc()["strategy_rejected"][reason] >= 1
    assert _safe.internal_errors() == {}


@pytest.mark.matrix
def test_cluster_manager_cache_pending_and_clear_are_scoped_events(rec: Recorder) -> None:
    """The ClusterService responses of today's proto carry no new_strategy, so the cluster
    manager never sets a pending colour or clears its cache by itself; strategy.py's own
    functions do it here, as a future release's cluster manager would."""
    from e6data_python_connector import strategy as sm

    sm._set_active_strategy("blue")
    sm._set_pending_strategy("green")
    sm._clear_strategy_cache()
    sm._set_active_strategy("green")
    got = [
        (e.kind, e.scope, e.from_strategy, e.to_strategy)
        for e in rec.ring.snapshot()
        if e.scope == "cluster_manager"
    ]
    assert got == [
        ("detected", "cluster_manager", "", "blue"),
        ("announced", "cluster_manager", "", "green"),
        ("cache_cleared", "cluster_manager", "blue", ""),
        ("applied", "cluster_manager", "blue", "green"),
    ]
    # the process cache and its counters are not touched
    assert rec.active is None and rec.pending is None and counters(rec, M.SWITCHES) == {}
    assert counters(rec, M.SCOPED_SWITCHES) == {("blue", "green", "cluster_manager"): 1}
    assert rec.cluster_manager_active == "green"
