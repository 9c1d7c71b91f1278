"""Hostile or broken server data: whatever the server sends, e6observe stays bounded and silent.

Through the simulator the real connector receives ``new_strategy`` values that are empty,
unknown, 10 kB long, homoglyphs, control characters (the field is a proto3 ``string``: bytes that
are not UTF-8 cannot be sent through it - the property tests below feed them to the hooks
directly), and error details that almost match ``status: 456``. For each, the application must
see exactly what it sees without e6observe (same rows, exception types, codes, details and
strategy cache), nothing may escape from e6observe (``e6observe_internal_errors_total``
unchanged), and every label value must stay in its bounded set (``metrics.STRATEGY_LABELS``...).

The property tests feed fuzzed strategy values, error codes and details and query-map contents
into the hook entry points where server data enters: the strategy-cache hook's writes, the
channel hook's RPC wrapper, the error classification the cursor hook uses, the async hook's
interpreter.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

import grpc
import pytest
from chaos import Rig, counter_values, outcome, query
from e6data_python_connector import e6data_grpc
from helpers import PASSWORD, USER, reset_connector_cache
from hypothesis import example, given, settings
from hypothesis import strategies as st

from e6observe import _safe
from e6observe import metrics as M
from e6observe.hooks import channel, cursor, is_mismatch, retry_reason, strategy_cache, stubs
from e6observe.recorder import (
    CLUSTER_RPC_METHODS,
    GRPC_CODES,
    RETRY_REASONS,
    RPC_METHODS,
    Recorder,
)
from e6observe.sim import Simulator

pytestmark = pytest.mark.timeout(300)

#: Label name -> every value it may take, whatever a server sends.
ALLOWED: dict[str, frozenset[str]] = {
    "strategy": frozenset(M.STRATEGY_LABELS),
    "from": frozenset(M.STRATEGY_LABELS),
    "to": frozenset(M.STRATEGY_LABELS),
    "method": RPC_METHODS | CLUSTER_RPC_METHODS | {"other"},
    "code": GRPC_CODES,
    "cause": frozenset(M.SWITCH_CAUSES),
    "kind": frozenset(M.EVENT_KINDS),
    "outcome": frozenset(M.QUERY_OUTCOMES + M.RESUME_OUTCOMES),
    "reason": RETRY_REASONS | frozenset(M.REJECTED_REASONS),
    "scope": frozenset(M.SWITCH_SCOPES),
    "status": frozenset(M.CLUSTER_STATUSES),
}
_EVENT_STRATEGY_FIELDS = ("from_strategy", "to_strategy", "strategy")


def unbounded(rec: Recorder) -> list[tuple[str, str, str]]:
    """(metric, label, value) of every recorded label value outside its bounded set, plus the
    recorder's state and events."""
    bad = []
    for fam in rec.families.values():
        for labels, _ in fam.items():
            for name, value in zip(fam.spec.labels, labels):
                if name in ALLOWED and value not in ALLOWED[name]:
                    bad.append((fam.spec.prom_name, name, value))
    state: dict[str, Any] = rec.state()
    for key in ("active", "pending"):
        if state[key] is not None and state[key] not in M.STRATEGY_LABELS:
            bad.append(("state", key, state[key]))
    bad += [("state", "in_flight", k) for k in state["in_flight"] if k not in M.STRATEGY_LABELS]
    for ev in rec.ring.snapshot():
        for f in _EVENT_STRATEGY_FIELDS:
            v = getattr(ev, f)
            if v and v not in M.STRATEGY_LABELS:
                bad.append(("event", f, v))
        for f in ("cause", "reason", "method"):
            v = getattr(ev, f)
            if v and v not in ALLOWED[f]:
                bad.append(("event", f, v))
    return bad


def unbounded_exposition(text: str) -> dict[str, set[str]]:
    """Label name -> values outside its bounded set, in a Prometheus text exposition."""
    out: dict[str, set[str]] = {}
    for name, allowed in ALLOWED.items():
        values = set(re.findall(r"[{,]" + name + r'="([^"]*)"', text))
        if values - allowed:
            out[name] = values - allowed
    return out


def _normal(o: tuple[Any, ...]) -> tuple[Any, ...]:
    # A RecursionError's message says where the interpreter ran out of stack; the application
    # sees the type in both runs.
    if o[0] == "raised" and o[1] is RecursionError:
        return ("raised", RecursionError)
    return o


def cache_state() -> tuple[str, Any, Any]:
    c = e6data_grpc._local_strategy_cache
    return ("cache", c.get("active_strategy"), c.get("pending_strategy"))


def run_twice(
    script: Callable[[Simulator], list[tuple[Any, ...]]],
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], Rig, dict[str, str], dict[str, int]]:
    """``script`` on a fresh simulator without e6observe, then with every output on.
    Returns (bare view, instrumented view, rig, outputs, internal errors)."""
    reset_connector_cache()
    with Simulator(port=0) as sim:
        bare = [_normal(o) for o in script(sim)]
    reset_connector_cache()
    _safe.reset_for_tests()
    with Simulator(port=0) as sim, Rig() as rig:
        seen = [_normal(o) for o in script(sim)]
        outputs = rig.outputs()
        errors = _safe.internal_errors()
    return bare, seen, rig, outputs, errors


def connect(sim: Simulator) -> Any:
    return e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)


# -- new_strategy values --------------------------------------------------------------------------
HOSTILE_STRATEGIES = {
    "empty": "",  # proto3: the same as not sending the field
    "unknown": "purple",
    "10kB": "x" * 10240,
    "upper": "GREEN",  # the connector lower-cases it: a real announcement
    "padded": " green ",  # the connector does not strip: ignored
    "homoglyph": "gr\u0435en",  # Cyrillic e
    "control": "green\x00\r\nx-injected: 1",
    "non-ascii": "\u00e9\u4e2d\U0001f600",
}


def new_strategy_script(raw: str) -> Callable[[Simulator], list[tuple[Any, ...]]]:
    def script(sim: Simulator) -> list[tuple[Any, ...]]:
        conn = connect(sim)
        out = [outcome(lambda: query(conn, "SELECT 1"))]
        sim.set_new_strategy_value(raw)
        sim.announce("green")
        out.append(outcome(lambda: query(conn, "SELECT * FROM sample LIMIT 300")))
        out.append(outcome(lambda: query(conn, "SELECT * FROM sample LIMIT 20", "one")))
        out.append(outcome(lambda: query(conn, "SELECT * FROM sample LIMIT 20", "many")))
        out.append(outcome(lambda: conn.get_schema_names("sim")))
        out.append(outcome(lambda: conn.get_tables("sim", "default")))
        out.append(cache_state())
        # A connection that logs in during the announcement reads new_strategy on authenticate.
        fresh = connect(sim)
        try:
            out.append(outcome(lambda: query(fresh, "SELECT 2")))
        finally:
            fresh.close()
        sim.complete()
        out.append(outcome(lambda: query(conn, "SELECT 3")))
        sim.set_new_strategy_value(None)
        out.append(outcome(lambda: query(conn, "SELECT 4")))
        out.append(cache_state())
        conn.close()
        return out

    return script


@pytest.mark.matrix
@pytest.mark.parametrize("raw", list(HOSTILE_STRATEGIES.values()), ids=list(HOSTILE_STRATEGIES))
@pytest.mark.slow
def test_hostile_new_strategy(raw: str) -> None:
    bare, seen, rig, outputs, errors = run_twice(new_strategy_script(raw))
    assert seen == bare  # the application's view, step by step, and the connector's cache
    # A login during an announcement of a value the connector rejects makes the connector recurse
    # until RecursionError (its get_session_id retries forever) - with or without e6observe.
    assert seen[7] in (("ok", [[2]]), ("raised", RecursionError))
    assert errors == {}  # nothing failed inside e6observe, even at the recursion limit
    assert unbounded(rig.rec) == []
    for name in ("metrics", "openmetrics"):
        assert unbounded_exposition(outputs[name]) == {}, name
    accepted = raw.lower() in M.STRATEGIES
    if raw.strip().lower() not in M.STRATEGIES and raw.strip():  # the value itself is nowhere
        assert [n for n, text in outputs.items() if raw[:64] in text] == []
    # e6observe tells what the connector did with it: an announced switch, or none until the
    # 456 after the cut-over.
    switches = counter_values(rig.rec, M.SWITCHES)
    assert switches == {("blue", "green", "announced" if accepted else "mismatch"): 1.0}
    announced = [e.to_strategy for e in rig.rec.ring.snapshot() if e.kind == "announced"]
    assert announced == (["green"] if accepted else [])


@pytest.mark.matrix
def test_non_utf8_new_strategy_cannot_be_sent() -> None:
    """Why the end-to-end cases stop at valid UTF-8: ``new_strategy`` is a proto3 string."""
    from e6data_python_connector.server import e6x_engine_pb2 as pb

    for cls in (pb.PrepareStatementResponse, pb.ClearOrCancelQueryResponse, pb.StatusResponse):
        assert cls.DESCRIPTOR.fields_by_name["new_strategy"].type == 9  # TYPE_STRING
        with pytest.raises(ValueError):
            cls(new_strategy=b"\xff\xfe")


# -- error details that almost say 456 ----------------------------------------------------------
UNKNOWN, INTERNAL = grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL
#: Long, but under gRPC's 8 kB soft limit on received metadata (beyond it gRPC itself rejects
#: a random share of such responses with RESOURCE_EXHAUSTED, which no comparison survives).
LONG_456 = "status: 456\n" + "x" * 6000
NEAR_MISSES: list[tuple[str, grpc.StatusCode, str]] = [
    ("prepareStatement", UNKNOWN, "status: 4567"),
    ("prepareStatement", UNKNOWN, "status:456"),
    ("prepareStatement", UNKNOWN, " status: 456 "),
    ("prepareStatement", UNKNOWN, LONG_456),
    ("prepareStatement", UNKNOWN, "STATUS: 456"),
    ("prepareStatement", INTERNAL, "status: 456"),
    ("prepareStatement", INTERNAL, "Access denied; status: 456"),
    ("prepareStatement", grpc.StatusCode.UNAVAILABLE, "status: 456 \u00e9\u4e2d"),
    ("executeStatement", INTERNAL, "status: 456"),
    ("authenticate", UNKNOWN, "status: 4567"),
    ("authenticate", UNKNOWN, "status:456"),
    ("getNextResultBatch", UNKNOWN, " status: 456 "),
    ("getNextResultBatch", UNKNOWN, "status: 4567"),
    ("clearOrCancelQuery", UNKNOWN, LONG_456),
]


def reauth_branch(code: grpc.StatusCode, details: str) -> Optional[str]:
    """The branch the connector's ``re_auth`` takes for an error (None: it re-raises)."""
    if code == grpc.StatusCode.INTERNAL and "Access denied" in details:
        return "access_denied"
    if "status: 456" in details:
        return "mismatch"
    return None


def details_script(
    method: str, code: grpc.StatusCode, details: str
) -> Callable[[Simulator], list[tuple[Any, ...]]]:
    def script(sim: Simulator) -> list[tuple[Any, ...]]:
        conn = connect(sim)
        out = []
        if method != "authenticate":
            out.append(outcome(lambda: query(conn, "SELECT 1")))
        sim.inject_fault(method, code, details, 1)
        out.append(outcome(lambda: query(conn, "SELECT * FROM sample LIMIT 300")))
        out.append(outcome(lambda: query(conn, "SELECT 2")))
        out.append(cache_state())
        out.append(("real 456s", sim.counters()["mismatches_total"]))
        conn.close()
        return out

    return script


@pytest.mark.matrix
@pytest.mark.parametrize(
    "method,code,details", NEAR_MISSES, ids=[f"{m}-{c.name}-{d[:14]!r}" for m, c, d in NEAR_MISSES]
)
@pytest.mark.slow
def test_error_details_that_almost_say_456(method: str, code: grpc.StatusCode, details: str) -> None:
    bare, seen, rig, outputs, errors = run_twice(details_script(method, code, details))
    assert seen == bare
    assert errors == {}
    assert unbounded(rig.rec) == []
    for name in ("metrics", "openmetrics"):
        assert unbounded_exposition(outputs[name]) == {}, name
    assert "x" * 100 not in "".join(outputs.values())  # the 10 kB detail is nowhere
    # A mismatch is counted for exactly the errors the connector's password path takes for one
    # (UNKNOWN with "status: 456" in the details), plus the real 456s the simulator sent.
    injected = int(code == UNKNOWN and "status: 456" in details)
    mismatches = sum(counter_values(rig.rec, M.MISMATCHES).values())
    assert mismatches == injected + seen[-1][1]
    if method in ("prepareStatement", "executeStatement"):  # replayed by re_auth, or not
        branch = reauth_branch(code, details)
        want = {} if branch is None else {(branch,): 1.0}
        assert counter_values(rig.rec, M.RETRIES) == want


# -- property tests at the hook boundary ----------------------------------------------------------
_NEAR = [
    "",
    "blue",
    "green",
    "BLUE",
    "Green",
    " green ",
    "green\n",
    "purple",
    "gr\u0435en",
    "blue\x00",
    "none",
    "invalid",
    "status: 456",
    "status: 4567",
    "status:456",
    " status: 456 ",
    "status: 456\n...",
    "Access denied",
    "Access denied: status: 456",
    "\udcff",
]
_TEXT = st.one_of(
    st.sampled_from(_NEAR),
    st.text(max_size=40),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(1000, 12000)),
)
_VALUE = st.one_of(st.none(), _TEXT, st.binary(max_size=24), st.integers(), st.booleans(), st.floats())


class _Named:
    def __init__(self, name: Any) -> None:
        self.name = name


_CODE = st.one_of(st.sampled_from(list(grpc.StatusCode)), st.none(), _TEXT, st.builds(_Named, _VALUE))


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    """An RPC error as the connector sees one, with server-chosen code and details."""

    def __init__(self, code: Any, details: Any, broken: bool = False) -> None:
        super().__init__("fake")
        self._code, self._details, self._broken = code, details, broken

    def code(self) -> Any:
        if self._broken:
            raise RuntimeError("code() failed")
        return self._code

    def details(self) -> Any:
        if self._broken:
            raise RuntimeError("details() failed")
        return self._details


@pytest.mark.matrix
@settings(max_examples=200, deadline=None)
@given(
    writes=st.lists(
        st.tuples(
            st.sampled_from(["active_strategy", "pending_strategy", "query_strategy_map", "last_check_time"]),
            _VALUE,
        ),
        max_size=12,
    )
)
def test_fuzzed_strategy_cache_writes(writes: list[tuple[str, Any]]) -> None:
    _safe.reset_for_tests()
    rec = Recorder()
    cache = strategy_cache.ObservedCache(
        {"active_strategy": None, "pending_strategy": None, "query_strategy_map": {}}
    )
    cache._e6observe = strategy_cache._Interpreter(rec)  # type: ignore[attr-defined]
    for key, value in writes:
        if key == "query_strategy_map":
            value = {f"q-{i}": value for i in range(3)}
        cache[key] = value  # must never raise into the connector
        assert dict.get(cache, key) is value
    assert unbounded(rec) == []
    assert _safe.internal_errors() == {}


@pytest.mark.matrix
@settings(max_examples=200, deadline=None)
@given(
    code=_CODE,
    details=st.one_of(_TEXT, st.none(), st.binary(max_size=16)),
    header=_VALUE,
    fail=st.booleans(),
    broken=st.booleans(),
    documented=st.booleans(),
    odd_metadata=st.sampled_from([None, 7, [("strategy",)], "strategy", [1, 2]]),
)
def test_fuzzed_rpc_results_through_the_channel_wrapper(
    code: Any, details: Any, header: Any, fail: bool, broken: bool, documented: bool, odd_metadata: Any
) -> None:
    """Both call paths of the channel hook: grpc's documented signature (passed on
    positionally) and any other (passed on as given); odd metadata never breaks either."""
    _safe.reset_for_tests()
    rec = Recorder()
    exc = FakeRpcError(code, details, broken)
    response = object()

    class Documented:
        def __call__(
            self,
            request: Any,
            timeout: Any = None,
            metadata: Any = None,
            credentials: Any = None,
            wait_for_ready: Any = None,
            compression: Any = None,
        ) -> Any:
            if fail:
                raise exc
            return response

        with_call = __call__

    def other(request: Any, *args: Any, **kwargs: Any) -> Any:
        if fail:
            raise exc
        return response

    other.with_call = other  # type: ignore[attr-defined]
    mc: Any = Documented() if documented else other
    timed = channel._timed_call(mc, stubs.Timer(rec, "prepareStatement"))
    assert timed.__code__.co_name == ("timed" if documented else "timed_any")
    md = [("plannerip", "127.0.0.1"), ("strategy", header)]
    if odd_metadata is not None and not fail:
        assert timed(object(), metadata=odd_metadata) is response
        assert timed(object(), 1.0, odd_metadata) is response
        assert _safe.internal_errors() == {}
        rec = Recorder()
        timed = channel._timed_call(mc, stubs.Timer(rec, "prepareStatement"))
    if fail:
        with pytest.raises(FakeRpcError) as ei:
            timed(object(), metadata=md)
        assert ei.value is exc  # the very same object, for the connector's except clauses
    else:
        assert timed(object(), metadata=md) is response
    assert unbounded(rec) == []
    assert _safe.internal_errors() == {}
    mism = sum(counter_values(rec, M.MISMATCHES).values())
    if isinstance(code, grpc.StatusCode) and isinstance(details, str) and fail and not broken:
        assert mism == int(code == UNKNOWN and "status: 456" in details)
    assert sum(h.count for _, h in rec.family(M.RPC_DURATION).items()) == 1  # type: ignore[attr-defined]


@pytest.mark.matrix
@settings(max_examples=300, deadline=None)
@example(code=INTERNAL, details="status: 456", broken=False, depth=0, cycle=False)
@example(code=grpc.StatusCode.UNAVAILABLE, details="status: 456", broken=False, depth=1, cycle=False)
@example(code=INTERNAL, details="Access denied: status: 456", broken=False, depth=0, cycle=True)
@example(code=UNKNOWN, details="status: 4567", broken=False, depth=2, cycle=True)
@example(code=UNKNOWN, details="status:456", broken=True, depth=0, cycle=False)
@given(
    code=_CODE,
    details=st.one_of(_TEXT, st.none(), st.binary(max_size=16)),
    broken=st.booleans(),
    depth=st.integers(0, 6),
    cycle=st.booleans(),
)
def test_fuzzed_error_classification(code: Any, details: Any, broken: bool, depth: int, cycle: bool) -> None:
    exc = FakeRpcError(code, details, broken)
    outer: BaseException = exc
    for i in range(depth):  # the async API raises OperationalError from the RpcError
        wrapper = RuntimeError(f"wrapped {i}")
        wrapper.__cause__ = outer
        outer = wrapper
    if cycle:
        exc.__context__ = outer
    assert is_mismatch(outer) in (True, False)
    assert retry_reason(exc) in RETRY_REASONS and retry_reason(outer) in RETRY_REASONS
    assert cursor.outcome_of(outer) in M.QUERY_OUTCOMES
    if isinstance(code, grpc.StatusCode) and isinstance(details, str) and not broken:
        assert is_mismatch(exc) == (code == UNKNOWN and "status: 456" in details)
        # the reason names the branch the connector's retry loop took
        assert retry_reason(exc) == (reauth_branch(code, details) or "other")


@pytest.mark.matrix
@settings(max_examples=150, deadline=None)
@given(active=_VALUE, pinned=_VALUE, query_id=_TEXT, other_id=_TEXT)
def test_fuzzed_query_map_for_the_pinned_strategy(
    active: Any, pinned: Any, query_id: str, other_id: str
) -> None:
    c = e6data_grpc._local_strategy_cache
    with e6data_grpc._strategy_lock:
        c["active_strategy"] = active
        c["query_strategy_map"] = {query_id: pinned}
    try:
        for qid in (query_id, other_id, None, ""):
            assert cursor._pinned_strategy(qid) in M.STRATEGY_LABELS
    finally:
        reset_connector_cache()


@pytest.mark.matrix
@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["strategy", "pending", "confirmed"]), _VALUE, _VALUE), max_size=10
    )
)
def test_fuzzed_async_connection_writes(steps: list[tuple[str, Any, Any]]) -> None:
    from e6observe.hooks import aio

    _safe.reset_for_tests()
    rec = Recorder()
    interp = aio._AioInterpreter(rec)

    class Conn:
        pass

    conn = Conn()
    conn.__dict__.update(_strategy="blue", _pending_strategy=None, _routes={})
    for kind, old, new in steps:
        if kind == "strategy":
            interp.on_strategy(conn, old, new)
        elif kind == "pending":
            conn.__dict__["_pending_strategy"] = new
            interp.on_pending(conn, old, new)
        else:
            interp.confirmed(new)
    assert unbounded(rec) == []
    assert _safe.internal_errors() == {}
