"""The hooks one by one: strategy-cache interpretation, channel timing, cursor and retry hooks.

The strategy-cache tests drive the connector's own (real, unmodified) strategy functions - the
same code paths a server's responses trigger - so each interpretation rule is checked exactly.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

import grpc
import pytest
from e6data_python_connector import e6data_grpc as g
from e6data_python_connector.server import e6x_engine_pb2 as pb
from helpers import connector_version

from e6observe import _safe
from e6observe import metrics as M
from e6observe.hooks import HookContext, Patches, channel, cursor, is_mismatch, retry_reason
from e6observe.hooks import strategy_cache as sc
from e6observe.recorder import Recorder
from e6observe.sim import Simulator

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["redirect", "swap"])
def rec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """A recorder with only the strategy-cache hook installed, in each of its two ways: the
    connector's writers redirected to a reporting view (the usual one), and the fallback that
    swaps the cache for an ObservedCache (a connector whose writers cannot be redirected)."""
    _safe.reset_for_tests()
    if request.param == "swap":
        monkeypatch.setattr(sc, "strategy_writers", lambda module: None)
    r = Recorder()
    assert sc.HOOK.install(HookContext(r))
    assert (sc.installed_cache() is None) == (request.param == "redirect")
    yield r
    sc.HOOK.uninstall()


def redirected_writers() -> list[str]:
    """The connector functions whose strategy writes go through the hook's view: its copies,
    alone or under another hook's wrapper."""
    out = []
    for name, v in list(vars(g).items()):
        while v is not None:
            code = getattr(v, "__code__", None)
            if code is not None and "_e6observe_strategy_writes" in code.co_names:
                out.append(name)
                break
            v = getattr(v, "__wrapped__", None)
    return sorted(out)


def events(r: Recorder) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for e in r.ring.snapshot():
        if e.kind == "applied":
            out.append(("applied", e.from_strategy, e.to_strategy, e.cause, e.pinned_queries))
        elif e.kind in ("detected",):
            out.append((e.kind, e.to_strategy))
        elif e.kind == "announced":
            out.append((e.kind, e.to_strategy))
        elif e.kind == "cache_cleared":
            out.append((e.kind, e.from_strategy))
        else:
            out.append((e.kind,))
    return out


def switches(r: Recorder) -> dict[tuple[str, ...], float]:
    return {k: c.value for k, c in r.family(M.SWITCHES).items() if c.value}  # type: ignore[attr-defined]


# --- strategy cache ----------------------------------------------------------------------------
@pytest.mark.matrix
def test_first_learned_is_detected_and_rewrites_are_silent(rec: Recorder) -> None:
    g._set_active_strategy("blue")
    g._set_active_strategy("blue")  # the connector re-sets it on every authentication
    g._set_active_strategy("BLUE")
    assert events(rec) == [("detected", "blue")]
    assert rec.active == "blue" and rec.switch_total() == 0


@pytest.mark.matrix
def test_announce_then_drained_apply_is_one_announced_switch(rec: Recorder) -> None:
    g._set_active_strategy("blue")
    g._register_query_strategy("q1", "blue")
    g._set_pending_strategy("green")
    g._set_pending_strategy("green")  # every response during the announcement repeats it
    assert rec.pending == "green"
    g._apply_pending_strategy()  # (forced while q1 is still pinned: counted as pinned)
    assert events(rec) == [
        ("detected", "blue"),
        ("announced", "green"),
        ("applied", "blue", "green", "announced", 1),
    ]
    assert switches(rec) == {("blue", "green", "announced"): 1.0}
    assert rec.active == "green" and rec.pending is None
    assert rec.family(M.SWITCH_DRAIN).histogram().count == 1


@pytest.mark.matrix
def test_456_path_is_one_switch_with_cause_mismatch(rec: Recorder) -> None:
    g._set_active_strategy("blue")
    g._clear_strategy_cache()  # re_auth on a 456
    assert rec.active == "blue"  # still the colour in use until the other one is learned
    g._set_active_strategy("green")  # re-authentication learned green
    assert events(rec) == [
        ("detected", "blue"),
        ("cache_cleared", "blue"),
        ("applied", "blue", "green", "mismatch", 0),
    ]
    assert switches(rec) == {("blue", "green", "mismatch"): 1.0}


@pytest.mark.matrix
def test_many_threads_clearing_and_relearning_count_one_switch(rec: Recorder) -> None:
    g._set_active_strategy("blue")
    barrier = threading.Barrier(8)

    def recover() -> None:
        barrier.wait()
        for _ in range(20):
            g._clear_strategy_cache()
            g._set_active_strategy("green")

    threads = [threading.Thread(target=recover) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert switches(rec) == {("blue", "green", "mismatch"): 1.0}
    assert rec.active == "green"


@pytest.mark.matrix
def test_clear_then_same_colour_again_is_not_a_switch(rec: Recorder) -> None:
    g._set_active_strategy("green")
    g._clear_strategy_cache()
    g._clear_strategy_cache()  # already empty: not another clear event
    g._set_active_strategy("green")
    assert events(rec) == [("detected", "green"), ("cache_cleared", "green")]
    assert rec.switch_total() == 0


@pytest.mark.skipif(connector_version() < (3, 0, 0), reason="_finish_query_cleanup is 3.0.x")
def test_inline_flip_in_finish_query_cleanup_is_seen(rec: Recorder) -> None:
    import time

    g._set_active_strategy("blue")
    g._register_query_strategy("q9", "blue")
    g._finish_query_cleanup("q9", "green", time.monotonic() + 5)
    assert events(rec) == [
        ("detected", "blue"),
        ("announced", "green"),
        ("applied", "blue", "green", "announced", 0),
    ]


@pytest.mark.matrix
def test_state_present_at_install_is_reported(sim: Simulator) -> None:
    g._set_active_strategy("green")
    g._set_pending_strategy("blue")
    r = Recorder()
    try:
        assert sc.HOOK.install(HookContext(r))
        assert events(r) == [("detected", "green"), ("announced", "blue")]
        assert r.active == "green" and r.pending == "blue"
    finally:
        sc.HOOK.uninstall()


@pytest.mark.matrix
def test_the_cache_stays_the_connectors_plain_dict_and_its_writers_are_put_back() -> None:
    original = g._local_strategy_cache
    writers = {n: getattr(g, n) for n in sc.strategy_writers(g) or ()}
    # Every version in the matrix writes the strategy keys from these module functions only.
    assert {
        "_set_active_strategy",
        "_set_pending_strategy",
        "_apply_pending_strategy",
        "_clear_strategy_cache",
    } <= set(writers)
    r = Recorder()
    assert sc.HOOK.install(HookContext(r))
    # A dict subclass would slow every query's cache reads: the connector keeps its exact dict.
    assert g._local_strategy_cache is original and type(original) is dict
    assert redirected_writers() == sorted(writers)
    copy = g._set_active_strategy
    assert copy is not writers["_set_active_strategy"] and copy.__wrapped__ is writers["_set_active_strategy"]
    g._set_active_strategy("green")
    sc.HOOK.uninstall()
    assert all(getattr(g, n) is fn for n, fn in writers.items())
    # Left behind on purpose: the name a copy calls now gives the connector's own accessor.
    assert g._e6observe_strategy_writes is g._get_shared_strategy  # type: ignore[attr-defined]
    assert g._local_strategy_cache is original and original["active_strategy"] == "green"
    g._set_active_strategy("blue")  # the original: nothing reports
    copy("green")  # a stale reference to the copy (a caller's local) no longer reports either
    assert original["active_strategy"] == "green"
    assert [e.kind for e in r.ring.snapshot()] == ["detected"]


@pytest.mark.matrix
def test_swap_fallback_puts_back_the_original_dict_with_current_contents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sc, "strategy_writers", lambda module: None)
    original = g._local_strategy_cache
    r = Recorder()
    assert sc.HOOK.install(HookContext(r))
    ours = g._local_strategy_cache
    assert ours is not original and isinstance(ours, sc.ObservedCache)
    g._set_active_strategy("green")
    sc.HOOK.uninstall()
    assert g._local_strategy_cache is original and original["active_strategy"] == "green"
    g._set_active_strategy("blue")  # a stale reference to ours no longer reports
    ours["active_strategy"] = "green"
    assert [e.kind for e in r.ring.snapshot()] == ["detected"]


@pytest.mark.matrix
def test_a_writer_wrapped_by_another_tool_makes_the_hook_swap_and_still_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import functools

    inner = g._set_pending_strategy

    @functools.wraps(inner)
    def foreign(*a: Any, **k: Any) -> Any:
        return inner(*a, **k)

    monkeypatch.setattr(g, "_set_pending_strategy", foreign)
    r = Recorder()
    assert sc.HOOK.install(HookContext(r))
    try:
        assert isinstance(sc.installed_cache(), sc.ObservedCache) and redirected_writers() == []
        g._set_active_strategy("blue")
        g._set_pending_strategy("green")  # through the foreign wrapper: still seen
        assert events(r) == [("detected", "blue"), ("announced", "green")]
    finally:
        sc.HOOK.uninstall()


def test_writers_found_in_bytecode_and_unredirectable_ones_fall_back() -> None:
    import types

    src = (
        "_cache = {}\n"
        "def _get_shared_strategy():\n    return _cache\n"
        "def set_it(s):\n    c = _get_shared_strategy()\n    c['active_strategy'] = s\n"
        "def nested(s):\n    def inner():\n"
        "        _get_shared_strategy()['pending_strategy'] = s\n    inner()\n"
        "def reads():\n    return _get_shared_strategy()['active_strategy']\n"
        "def other_key():\n    _get_shared_strategy()['query_strategy_map'] = {}\n"
    )
    m = types.ModuleType("fake_connector")
    exec(src, m.__dict__)
    assert sorted(sc.strategy_writers(m) or ()) == ["nested", "set_it"]
    # A writer that reaches the cache by another name cannot be redirected: swap instead.
    exec("def direct(s):\n    _cache['active_strategy'] = s\n", m.__dict__)
    assert sc.strategy_writers(m) is None
    # ... nor can a method that writes a strategy key.
    m2 = types.ModuleType("fake_connector2")
    exec(
        src + "class C:\n    def m(self):\n        _get_shared_strategy()['active_strategy'] = 'blue'\n",
        m2.__dict__,
    )
    assert sc.strategy_writers(m2) is None


@pytest.mark.matrix
def test_failing_callback_under_the_connector_lock_is_contained(
    rec: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("x")

    monkeypatch.setattr(rec, "detected", boom)
    g._set_active_strategy("blue")  # must neither raise nor leave the lock held
    assert g._local_strategy_cache["active_strategy"] == "blue"
    assert not g._strategy_lock.locked()
    assert _safe.internal_errors() == {"hook.strategy_cache": 1}


@pytest.mark.matrix
def test_note_observed_keeps_a_watcher_counted_switch_from_being_counted_again(rec: Recorder) -> None:
    g._set_active_strategy("blue")
    rec.applied("blue", "green", "observed")  # what the watcher does when it sees a flip
    sc.note_observed("green")
    g._set_active_strategy("green")
    assert switches(rec) == {("blue", "green", "observed"): 1.0}


# --- helpers -------------------------------------------------------------------------------------
class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.matrix
def test_error_classification() -> None:
    mism = _FakeRpcError(grpc.StatusCode.UNKNOWN, "status: 456")
    denied = _FakeRpcError(grpc.StatusCode.INTERNAL, "Access denied: unknown session")
    assert is_mismatch(mism) and not is_mismatch(denied) and not is_mismatch(ValueError())
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = mism
    assert is_mismatch(wrapped)  # the async API re-raises as OperationalError from the RpcError
    assert [retry_reason(e) for e in (mism, denied, ValueError(), None)] == [
        "mismatch",
        "access_denied",
        "other",
        "other",
    ]


@pytest.mark.matrix
def test_patches_restore_originals_and_leave_foreign_wrappers_alone() -> None:
    class A:
        def f(self) -> int:
            return 1

    class B(A):
        pass

    orig = A.__dict__["f"]
    p = Patches()
    p.replace(A, "f", lambda self: 2)
    p.replace(B, "f", lambda self: 3)  # inherited: restored by deleting
    assert B().f() == 3
    p.restore()
    assert A.__dict__["f"] is orig and "f" not in B.__dict__
    p.replace(A, "f", lambda self: 2)
    foreign = A.__dict__["f"]

    def other(self: Any) -> int:
        return foreign(self) * 10

    A.f = other  # type: ignore[method-assign]
    p.restore()
    assert A.__dict__["f"] is other  # someone wrapped over ours: left in place


# --- channel -------------------------------------------------------------------------------------
@pytest.fixture
def chan(sim: Simulator) -> Iterator[tuple[Recorder, HookContext]]:
    _safe.reset_for_tests()
    r = Recorder()
    ctx = HookContext(r)
    assert channel.HOOK.install(ctx)
    yield r, ctx
    channel.HOOK.uninstall()


def rpc_counts(r: Recorder) -> dict[tuple[str, ...], int]:
    return {k: h.count for k, h in r.family(M.RPC_DURATION).items() if h.count}  # type: ignore[attr-defined]


@pytest.mark.matrix
def test_every_new_stub_is_timed_and_unwrapped_on_uninstall(
    chan: tuple[Recorder, HookContext], connect: Callable[..., Any]
) -> None:
    r, _ = chan
    conn = connect()
    stub = conn._client
    mc = stub.authenticate.__wrapped__
    assert isinstance(mc, grpc.UnaryUnaryMultiCallable)
    conn.get_session_id  # noqa: B018
    conn.get_re_authenticate_session_id()  # builds a new stub: wrapped as well
    assert conn._client is not stub and hasattr(conn._client, channel.MARK)
    assert rpc_counts(r) == {("authenticate", "blue", "OK"): 2}
    channel.HOOK.uninstall()
    assert stub.authenticate is mc and not hasattr(stub, channel.MARK)
    assert isinstance(conn._client.authenticate, grpc.UnaryUnaryMultiCallable)


@pytest.mark.matrix
def test_future_calls_and_positional_metadata_are_timed(
    chan: tuple[Recorder, HookContext], connect: Callable[..., Any]
) -> None:
    r, _ = chan
    stub = connect()._client
    fut = stub.getCataloges.future(pb.GetCatalogesRequest(), metadata=[("strategy", "blue")])
    fut.result(timeout=10)
    stub.getCataloges(pb.GetCatalogesRequest(), None, [("strategy", "blue")])
    assert rpc_counts(r) == {("getCataloges", "blue", "OK"): 2}


def test_the_rpc_wrapper_honours_a_later_patch_of_the_multicallable_class(
    chan: tuple[Recorder, HookContext], connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wrapper calls type(mc).__call__(mc, ...) (no second interpreter loop from C), looked
    # up at each call: a tool that patches the class's __call__ after the stub was wrapped still
    # sees every call, as it would through mc(...).
    r, _ = chan
    stub = connect()._client
    cls = type(stub.getCataloges.__wrapped__)
    orig = cls.__call__
    seen: list[Any] = []

    def patched(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(request)
        return orig(self, request, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", patched)
    req = pb.GetCatalogesRequest()
    stub.getCataloges(req, metadata=[("strategy", "blue")])
    assert seen == [req]
    assert rpc_counts(r) == {("getCataloges", "blue", "OK"): 1}


def test_a_multicallable_whose_call_is_not_a_plain_function_gets_the_generic_wrapper(rec: Recorder) -> None:
    from e6observe.hooks.stubs import Timer

    class Odd:
        # grpc's documented parameters, but a staticmethod: type(mc).__call__(mc, ...) would pass
        # the object itself as the request
        @staticmethod
        def __call__(request: Any, timeout: Any = None, metadata: Any = None, credentials: Any = None,
                     wait_for_ready: Any = None, compression: Any = None) -> Any:  # fmt: skip
            return ("called with", request)

        def with_call(self, *a: Any, **k: Any) -> None: ...

        def future(self, *a: Any, **k: Any) -> None: ...

    assert not channel._documented_signature(Odd())
    w = channel._timed_call(Odd(), Timer(rec, "getCataloges"))
    assert w("req", metadata=[("strategy", "blue")]) == ("called with", "req")
    assert rpc_counts(rec) == {("getCataloges", "blue", "OK"): 1}


@pytest.mark.matrix
def test_hostile_strategy_values_stay_in_bounded_labels(
    chan: tuple[Recorder, HookContext], connect: Callable[..., Any], sim: Simulator
) -> None:
    r, _ = chan
    stub = connect()._client
    for i in range(40):
        with pytest.raises(grpc.RpcError):
            stub.getCataloges(pb.GetCatalogesRequest(), metadata=[("strategy", f"purple-{i}")])
    assert rpc_counts(r) == {("getCataloges", "invalid", "UNKNOWN"): 40}
    assert {k: c.value for k, c in r.family(M.MISMATCHES).items()} == {  # type: ignore[attr-defined]
        ("invalid", "getCataloges"): 40.0
    }
    assert sim.counters()["mismatches_total"] == 40


# --- cursor --------------------------------------------------------------------------------------
@pytest.fixture
def cur_hooks(sim: Simulator) -> Iterator[Recorder]:
    _safe.reset_for_tests()
    r = Recorder()
    ctx = HookContext(r)
    assert sc.HOOK.install(HookContext(r)) and channel.HOOK.install(ctx) and cursor.HOOK.install(ctx)
    yield r
    cursor.HOOK.uninstall()
    channel.HOOK.uninstall()
    sc.HOOK.uninstall()


def query_counts(r: Recorder) -> dict[tuple[str, ...], int]:
    return {k: h.count for k, h in r.family(M.QUERY_DURATION).items() if h.count}  # type: ignore[attr-defined]


@pytest.mark.matrix
def test_query_lifecycle_in_flight_and_reexecute_without_clear(
    cur_hooks: Recorder, connect: Callable[..., Any]
) -> None:
    r = cur_hooks
    c = connect().cursor()
    c.execute("SELECT 1")
    assert r.state()["in_flight"]["blue"] == 1
    assert c.fetchall() == [[1]]
    assert r.state()["in_flight"]["blue"] == 1  # fetched, not cleared: still pinned
    c.execute("SELECT 2")  # never cleared the first: it ends here (at its fetch end)
    assert query_counts(r) == {("blue", "ok"): 1}
    assert r.state()["in_flight"]["blue"] == 1
    c.fetchall()
    c.close()  # close clears
    assert query_counts(r) == {("blue", "ok"): 2}
    assert r.state()["in_flight"]["blue"] == 0


@pytest.mark.matrix
def test_failed_queries_and_cancel(cur_hooks: Recorder, connect: Callable[..., Any]) -> None:
    r = cur_hooks
    conn = connect()
    c = conn.cursor()
    with pytest.raises(grpc.RpcError):
        c.execute("SELECT nothing_the_simulator_knows")
    c = conn.cursor()
    with pytest.raises(grpc.RpcError):
        c.execute("SELECT fail()")  # fails in executeStatement, after admission
    c = conn.cursor()
    c.execute("SELECT 1")
    qid = c.query_id if hasattr(c, "query_id") else c._query_id
    c.cancel(qid)
    assert query_counts(r) == {("blue", "error"): 3}
    assert r.state()["in_flight"]["blue"] == 0


@pytest.mark.matrix
def test_every_call_shape_of_execute_and_clear_is_forwarded_and_counted(
    cur_hooks: Recorder, connect: Callable[..., Any]
) -> None:
    # execute(operation) and clear() - the usual calls - are forwarded as plain calls; every other
    # shape is forwarded as given, and each is still one tracked query ended by its clear.
    r = cur_hooks
    conn = connect()
    executes: list[Callable[[Any], Any]] = [
        lambda c: c.execute("SELECT 1"),
        lambda c: c.execute("SELECT 1", None),
        lambda c: c.execute(operation="SELECT 1"),
        lambda c: c.execute("SELECT 1", parameters=None),
    ]
    clears: list[Callable[[Any], Any]] = [
        lambda c: c.clear(),
        lambda c: c.clear(c._query_id),
        lambda c: c.clear(query_id=c._query_id),
        lambda c: c.clear(None),
    ]
    for i, (run, clear) in enumerate(zip(executes, clears), 1):
        c = conn.cursor()
        run(c)
        assert getattr(c, cursor.ATTR) is not None  # tracked
        assert r.state()["in_flight"]["blue"] == 1
        assert c.fetchall() == [[1]]
        clear(c)
        assert getattr(c, cursor.ATTR) is None
        assert query_counts(r) == {("blue", "ok"): i}
        assert r.state()["in_flight"]["blue"] == 0
    c = conn.cursor()
    with pytest.raises(TypeError):  # the connector's own refusal, passed through
        c.execute("SELECT 1", None, None)
    c.execute("SELECT 1")
    other = conn.cursor()
    other.execute("SELECT 1")
    c.clear(other._query_id)  # some other query's id: not this cursor's query
    assert getattr(c, cursor.ATTR) is not None
    assert query_counts(r) == {("blue", "ok"): 4, ("blue", "error"): 1}


def test_the_attribute_names_the_hot_paths_read_literally() -> None:
    # hooks/cursor.py reads these as plain attributes (a specialised load instead of getattr):
    # renaming one constant without its reads would lose every query (or re-wrap every stub).
    import inspect

    src = inspect.getsource(cursor)
    assert cursor.ATTR == "_e6observe_query" and "self._e6observe_query" in src
    assert channel.MARK == "_e6observe_token" and "conn._client._e6observe_token" in src
    from e6observe.hooks import aio

    assert '.__dict__["_client"]._e6observe_token' in inspect.getsource(aio)


@pytest.mark.matrix
def test_cursor_hooks_restore_by_identity(sim: Simulator) -> None:
    before = dict(vars(g.Cursor)), dict(vars(g.Connection))
    r = Recorder()
    ctx = HookContext(r)
    cursor.HOOK.install(ctx)
    assert g.Cursor.__dict__["execute"] is not before[0]["execute"]
    cursor.HOOK.uninstall()
    after = dict(vars(g.Cursor)), dict(vars(g.Connection))
    for b, a in zip(before, after):
        assert set(a) == set(b) and all(a[k] is b[k] for k in b)


def test_fetch_wrappers_take_the_connectors_own_signature_or_forward_everything(rec: Recorder) -> None:
    # The plain (self) form is used where the connector's method has that signature (no argument
    # packing per batch); any other signature gets the generic form, which forwards everything.
    from e6observe.hooks import HookContext
    from e6observe.hooks import cursor as C

    assert C.positional_params(g.Cursor.__dict__["fetch_batch"]) == ("self",)
    assert C.positional_params(lambda self, *rows: None) is None
    assert C.positional_params(lambda self, *, size=1: None) is None
    assert C.positional_params(len) is None  # no code object: generic

    ctx = HookContext(rec)
    plain = C._make_fetch(g.Cursor.__dict__["fetch_batch"], ctx)
    assert plain.__code__.co_argcount == 1 and not plain.__code__.co_flags & 0x0C

    seen: list[tuple[Any, ...]] = []

    def odd_fetch(self: Any, size: int = 1, *more: Any, **kw: Any) -> Any:
        seen.append((size, more, kw))
        return None  # "no more rows"

    class Cur:
        pass

    for make in (C._make_fetch, C._make_fetch_failure):
        seen.clear()
        wrapped = make(odd_fetch, ctx)
        assert wrapped.__code__.co_flags & 0x0C  # the generic form
        assert wrapped(Cur(), 5, "x", flag=True) is None
        assert seen == [(5, ("x",), {"flag": True})]
