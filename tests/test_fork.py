"""Fork safety (e6observe._fork): real ``os.fork()`` with the real connector and the simulator.

Each test forks; the child reports what it sees as JSON through a pipe and leaves with
``os._exit`` (no pytest teardown in the child). The parent bounds every wait.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import select
import signal
import threading
import time
import traceback
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import pytest
from e6data_python_connector import e6data_grpc
from helpers import PASSWORD, USER, held_by_a_thread, wait_for

from e6observe import _fork, _forkhazards, _safe
from e6observe import metrics as M
from e6observe.recorder import Recorder, set_recorder
from e6observe.watcher import THREAD_NAME, Watcher

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(
    fn: Callable[..., Any], on_signal: Callable[[], None] | None = None, timeout: float = 60.0
) -> Any:
    """Run ``fn`` in a forked child; return its JSON-able result (or raise its failure).

    With ``on_signal``, ``fn`` gets a ``sync()`` argument: calling it in the child runs
    ``on_signal()`` in the parent (e.g. to drive the simulator) and waits until it is done.
    """
    r, w = os.pipe()
    c2p_r, c2p_w = os.pipe()
    p2c_r, p2c_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child

        def sync() -> None:
            os.write(c2p_w, b"!")
            os.read(p2c_r, 1)

        try:
            out = {"ok": True, "value": fn(sync) if on_signal is not None else fn()}
        except BaseException as exc:
            out = {"ok": False, "error": repr(exc), "tb": traceback.format_exc()}
        try:
            data = json.dumps(out, default=str).encode()
            while data:
                data = data[os.write(w, data) :]
        finally:
            os._exit(0)
    for fd in (w, c2p_w, p2c_r):
        os.close(fd)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r, c2p_r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            if c2p_r in ready and os.read(c2p_r, 1):
                if on_signal is not None:
                    on_signal()
                os.write(p2c_w, b"!")
                continue
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        for fd in (r, c2p_r, p2c_w):
            os.close(fd)
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            time.sleep(0.2)
            done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert chunks, "the child reported nothing (hung or crashed)"
    out = json.loads(b"".join(chunks))
    assert out["ok"], out.get("tb")
    return out["value"]


def query(conn: Any, sql: str = "SELECT 1", clear: bool = True) -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    cur.fetchall()
    if clear:
        cur.clear()
    return cur


def e6observe_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("e6observe") and t.is_alive())


@pytest.fixture
def instrumented() -> Iterator[tuple[Recorder, Watcher]]:
    rec = Recorder()
    set_recorder(rec)
    w = Watcher(rec, SimpleNamespace(watcher_interval=0.05)).start()
    try:
        yield rec, w
    finally:
        w.stop()
        rec.stop()
        set_recorder(None)


@pytest.mark.matrix
def test_child_gets_a_running_watcher_fresh_counts_and_sees_inherited_queries(
    sim: Any, connect: Callable[..., Any], instrumented: tuple[Recorder, Watcher]
) -> None:
    rec, w = instrumented
    _safe.reset_for_tests()
    conn = connect()
    query(conn)
    assert wait_for(lambda: rec.active == "blue")  # detected by the watcher
    rec.rpc_histogram("prepareStatement", "blue", "OK").observe(0.001)
    _safe.record_internal_error("test.parent")
    pinned = query(conn, "SELECT 2", clear=False)  # in flight at fork time

    def child(sync: Callable[[], None]) -> dict[str, Any]:
        out: dict[str, Any] = {"pid": os.getpid()}
        it0 = w.iterations
        out["watcher_runs"] = wait_for(lambda: w.iterations >= it0 + 2)
        out["threads"] = e6observe_threads()
        out["events"] = len(rec.ring)
        out["events_counted"] = sum(c.value for _, c in rec.family(M.EVENTS).items())
        out["rpc_count"] = rec.rpc_histogram("prepareStatement", "blue", "OK").count
        out["errors"] = _safe.internal_errors()
        out["active"] = rec.active
        out["inherited_before"] = w.readings()[M.QUERY_MAP_INHERITED.prom_name]
        # The child's own connection, authenticated on blue; then the cluster announces green.
        # The parent's query id in the inherited map blocks the graceful switch.
        c2 = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
        query(c2)
        sync()  # the parent announces green
        query(c2)
        cache = e6data_grpc._local_strategy_cache
        out["stuck"] = (cache["active_strategy"], cache["pending_strategy"])
        out["pending_reported"] = wait_for(lambda: rec.pending == "green")
        out["pending_age"] = w.pending_age()
        out["released"] = _forkhazards.release_inherited_queries()
        query(c2)
        out["after_release"] = cache["active_strategy"]
        out["switch_seen"] = wait_for(lambda: rec.switch_total() == 1)
        out["inherited_after"] = w.readings()[M.QUERY_MAP_INHERITED.prom_name]
        return out

    got = in_child(child, on_signal=sim.announce)
    assert got["pid"] != os.getpid()
    assert got["watcher_runs"] and THREAD_NAME in got["threads"]
    # Per-process metrics: the child starts from zero, keeps the inherited blue/green state.
    assert got["events"] == 0 and got["events_counted"] == 0 and got["rpc_count"] == 0
    assert got["errors"] == {}
    assert got["active"] == "blue"
    # The connector's fork hazard, made visible, then repaired by the explicit opt-in call.
    assert got["inherited_before"] == 1
    assert got["stuck"] == ["blue", "green"]
    assert got["pending_reported"] and got["pending_age"] > 0
    assert got["released"] == 1 and got["after_release"] == "green" and got["switch_seen"]
    assert got["inherited_after"] == 0

    # The parent is unaffected.
    assert w.running and THREAD_NAME in e6observe_threads()
    assert [e.kind for e in rec.ring] == ["detected"]
    assert rec.rpc_histogram("prepareStatement", "blue", "OK").count == 1
    assert _safe.internal_errors() == {"test.parent": 1}
    assert list(e6data_grpc._local_strategy_cache["query_strategy_map"].values()) == ["blue"]
    assert w.readings()[M.QUERY_MAP_INHERITED.prom_name] == 0
    assert _fork.fork_generation == 0
    pinned.clear()


@pytest.mark.matrix
def test_strategy_lock_held_at_fork_is_visible_and_repairable_in_the_child(
    instrumented: tuple[Recorder, Watcher],
) -> None:
    _, w = instrumented
    lock = e6data_grpc._strategy_lock

    def child() -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["flag"] = _forkhazards.lock_held_at_fork()
        out["gauge"] = w.readings()[M.STRATEGY_LOCK_HELD_AT_FORK.prom_name]
        it0 = w.iterations
        # The watcher never takes the connector's lock, so it keeps running.
        out["watcher_runs"] = wait_for(lambda: w.iterations >= it0 + 2)
        out["blocked"] = not e6data_grpc._strategy_lock.acquire(timeout=0.2)
        out["repaired"] = _forkhazards.repair_strategy_lock()
        ok = e6data_grpc._strategy_lock.acquire(timeout=1)
        out["usable"] = ok
        if ok:
            e6data_grpc._strategy_lock.release()
        out["gauge_after"] = w.readings()[M.STRATEGY_LOCK_HELD_AT_FORK.prom_name]
        return out

    with held_by_a_thread(lock):
        got = in_child(child)
    assert got == {
        "flag": True,
        "gauge": 1.0,
        "watcher_runs": True,
        "blocked": True,
        "repaired": True,
        "usable": True,
        "gauge_after": 0.0,
    }
    # The parent's lock is its own, untouched and free.
    assert e6data_grpc._strategy_lock is lock and not lock.locked()
    assert not _forkhazards.lock_held_at_fork() and _forkhazards.repair_strategy_lock() is False


def test_fork_when_not_instrumented_starts_nothing() -> None:
    _fork.install()  # the handler may be registered by now; it must stay idle

    def child() -> dict[str, Any]:
        return {"threads": e6observe_threads(), "gen": _fork.fork_generation}

    got = in_child(child)
    assert got["threads"] == [] and got["gen"] >= 1


def test_resets_run_in_phase_order_once_each_contained() -> None:
    ran: list[str] = []

    def make(tag: str) -> Callable[[], None]:
        def reset() -> None:
            ran.append(tag)

        return reset

    fns = {phase: make(phase) for phase in _fork.PHASES}

    def bad() -> None:
        raise RuntimeError("injected")

    # Registered in reverse phase order, twice each: the phase decides the order, not the call.
    for phase in reversed(_fork.PHASES):
        _fork.register(phase, fns[phase], "fork.test")
    _fork.register("stores", bad, "fork.test.bad")
    for phase in _fork.PHASES:
        _fork.register(phase, fns[phase], "fork.test")
    try:
        got = in_child(lambda: {"ran": list(ran), "errors": _safe.internal_errors()})
    finally:
        for phase in _fork.PHASES:
            _fork.unregister(phase, fns[phase])
        _fork.unregister("stores", bad)
    assert got["ran"] == list(_fork.PHASES)
    # The failing reset is counted under its component; the ones after it still ran.
    assert got["errors"].get("fork.test.bad") == 1
    assert ran == []  # not in the parent
    assert all(fns[p] not in _fork.registered(p) for p in _fork.PHASES)


def test_registry_is_idempotent_holds_methods_weakly_and_refuses_unknown_phases() -> None:
    class Component:
        def reset_after_fork(self) -> None:
            pass

    c = Component()
    before = len(_fork.registered("sinks"))
    _fork.register("sinks", c.reset_after_fork)
    _fork.register("sinks", c.reset_after_fork)  # an equal bound method: the same reset
    assert len(_fork.registered("sinks")) == before + 1
    other = Component()
    _fork.register("sinks", other.reset_after_fork)
    assert len(_fork.registered("sinks")) == before + 2
    _fork.unregister("sinks", other.reset_after_fork)
    assert len(_fork.registered("sinks")) == before + 1
    del c
    gc.collect()
    assert len(_fork.registered("sinks")) == before  # the registry kept nothing alive
    with pytest.raises(ValueError, match="unknown fork phase"):
        _fork.register("later", lambda: None)


def _lock_of(path: str) -> Any:
    """The lock (or condition) at ``path`` now: ``module:attr.attr`` or ``@name.attr.attr`` for
    an object of ``_HELD_OBJECTS``. Looked up afresh: a reset replaces the object."""
    if path.startswith("@"):
        name, *attrs = path[1:].split(".")
        obj: Any = _HELD_OBJECTS[name]
    else:
        mod, _, rest = path.partition(":")
        obj = importlib.import_module(mod)
        attrs = rest.split(".")
    for a in attrs:
        obj = getattr(obj, a)
    return obj


_HELD_OBJECTS: dict[str, Any] = {}


@pytest.mark.matrix
def test_each_component_resets_its_own_state_in_a_real_fork(
    sim: Any, connect: Callable[..., Any], tmp_path: Any
) -> None:
    """Every lock a parent thread holds at the fork is a fresh, free one in the child; stores
    start from zero, sinks re-key, the watcher runs again; the parent keeps all of its own."""
    cp = pytest.importorskip("e6data_python_connector.connection_pool")
    from helpers import sink_options

    from e6observe.hooks import HookContext
    from e6observe.hooks import pool as P
    from e6observe.sinks.prometheus import PrometheusSink

    _safe.reset_for_tests()
    rec = Recorder()
    set_recorder(rec)
    P.HOOK.install(HookContext(rec))
    sink = PrometheusSink(rec, sink_options(prometheus_port=0, multiprocess_dir=str(tmp_path)))
    sink.start()
    w = Watcher(rec, SimpleNamespace(watcher_interval=0.05)).start()
    pool = cp.ConnectionPool(
        host=sim.host,
        port=sim.port,
        username=USER,
        password=PASSWORD,
        min_size=1,
        max_size=1,
        max_overflow=0,
        timeout=20,
    )
    held_conn = pool.get_connection()
    waiter = threading.Thread(target=lambda: pool.return_connection(pool.get_connection()), daemon=True)
    hold, release = threading.Event(), threading.Event()
    holder: threading.Thread | None = None
    try:
        query(connect())
        assert wait_for(lambda: rec.active == "blue")
        rec.rpc_histogram("prepareStatement", "blue", "OK").observe(0.001)
        _safe.record_internal_error("test.parent")
        waiter.start()  # blocks in get_connection: the pool's pending count is 1 at the fork
        info = P._pools[pool]  # named pool-<n>: n counts this process's pools so far
        assert wait_for(lambda: P.read_pools()[info.name]["pending"] == 1)
        fam = rec.family(M.SWITCHES)
        _HELD_OBJECTS.update(
            rec=rec,
            watcher=w,
            sink=sink,
            info=info,
            fam=fam,
            pool_hook=P.HOOK,
            counter=fam.items()[0][1],
            hist=rec.rpc_histogram("prepareStatement", "blue", "OK"),
        )
        paths = [
            "e6observe._fork:_lock",
            "e6observe._safe:_lock",
            "e6observe.recorder:_current_lock",
            "e6observe.connections:_lock",
            "e6observe.hooks.pool:_pools_lock",
            "@pool_hook._lock",
            "@info.lock",
            "@rec._state_lock",
            "@rec._wake",
            "@rec.ring._lock",
            "@fam._lock",
            "@counter._lock",
            "@hist._lock",
            "@watcher._lock",
            "@sink._lock",
            "@sink.writer._lock",
            "@sink.collector._lock",
        ]
        locks = [_lock_of(p) for p in paths]

        def hold_all() -> None:
            # All or none, retried: never waiting while holding, so the parent's own threads
            # (watcher flush, scrape) that take some of these in another order cannot deadlock.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                got = [lk for lk in locks if lk.acquire(blocking=False)]
                if len(got) == len(locks):
                    break
                for lk in got:
                    lk.release()
                time.sleep(0.001)
            else:
                return
            hold.set()
            release.wait(30)
            for lk in reversed(locks):
                lk.release()

        holder = threading.Thread(target=hold_all, daemon=True)
        holder.start()
        assert hold.wait(10)
        parent_id = sink.writer.id

        def child() -> dict[str, Any]:
            free = {}
            for p in paths:
                lk = _lock_of(p)
                free[p] = lk.acquire(timeout=0.5)
                if free[p]:
                    lk.release()
            if not all(free.values()):
                return {"free": free}  # the rest would block on a lock that stays held
            it0 = w.iterations
            return {
                "free": free,
                "rpc_count": rec.rpc_histogram("prepareStatement", "blue", "OK").count,
                "switch_children_zero": all(c.value == 0 for _, c in fam.items()),
                "events": len(rec.ring),
                "emitted": rec.ring.emitted,
                "errors": _safe.internal_errors(),
                "active": rec.active,
                "pending": P.read_pools()[info.name]["pending"],
                "server": sink.server is not None,
                "writer": [sink.writer.pid, sink.writer.id != parent_id, os.path.exists(sink.writer.path)],
                "watcher_runs": wait_for(lambda: w.iterations >= it0 + 2),
                "threads": e6observe_threads(),
                "pid": os.getpid(),
                "generation": _fork.fork_generation,
            }

        got = in_child(child, timeout=30)  # a lock left held hangs the child's fork handler
        release.set()
        holder.join(10)
    finally:
        release.set()
        pool.return_connection(held_conn)
        waiter.join(20)
        w.stop()
        sink.close()
        pool.close_all()
        P.HOOK.uninstall()
        P._reset_names_for_tests()
        set_recorder(None)
        rec.stop()
        _HELD_OBJECTS.clear()
    assert got["free"] == {p: True for p in paths}
    # Stores start from zero; the blue/green state is kept.
    assert got["rpc_count"] == 0 and got["switch_children_zero"]
    assert got["events"] == 0 and got["emitted"] == 0 and got["errors"] == {}
    assert got["active"] == "blue"
    # Pools: the parent's waiter is not the child's.
    assert got["pending"] == 0
    # The sink dropped the parent's listening socket and writes its own state file.
    assert got["server"] is False
    assert got["writer"] == [got["pid"], True, True]
    # The watcher runs again, once.
    assert got["watcher_runs"] and got["threads"].count(THREAD_NAME) == 1
    assert got["generation"] == _fork.fork_generation + 1
    # The parent keeps its own.
    assert rec.rpc_histogram("prepareStatement", "blue", "OK").count == 1
    assert _safe.internal_errors() == {"test.parent": 1}
    assert [e.kind for e in rec.ring] == ["detected"]


_CYCLES = r"""
import json, os, sys, threading, time
calls = []
real = os.register_at_fork
def counting(**kw):
    calls.append(getattr(kw.get("after_in_child"), "__module__", None) or "")
    return real(**kw)
os.register_at_fork = counting
import e6observe
from e6observe import _fork
from e6observe.watcher import running_watchers
opts = dict(prometheus_port=0, multiprocess_dir=sys.argv[1], watcher_interval=0.05)
counts = []
for _ in range(3):
    e6observe.instrument(**opts)
    counts.append({p: len(_fork.registered(p)) for p in _fork.PHASES})
    e6observe.uninstrument()
after = {p: len(_fork.registered(p)) for p in _fork.PHASES}
e6observe.instrument(**opts)
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    ws = running_watchers()
    it0 = ws[0].iterations if ws else 0
    deadline = time.monotonic() + 10
    while ws and ws[0].iterations < it0 + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    out = {"watchers": len(ws), "runs": bool(ws) and ws[0].iterations >= it0 + 2,
           "threads": [t.name for t in threading.enumerate() if t.name.startswith("e6observe")],
           "generation": _fork.fork_generation}
    os.write(w, json.dumps(out).encode())
    os._exit(0)
os.close(w)
data = b""
while True:
    chunk = os.read(r, 65536)
    if not chunk:
        break
    data += chunk
os.waitpid(pid, 0)
e6observe.uninstrument()
print(json.dumps({"calls": calls, "counts": counts, "after": after, "child": json.loads(data)}))
"""


def test_instrument_cycles_keep_one_handler_and_one_reset_per_component(tmp_path: Any) -> None:
    """A fresh process: three instrument/uninstrument cycles register one at-fork handler for
    the package, the same resets each time, none of a stopped watcher; a fork after that
    restarts exactly one watcher."""
    import sys

    from subproc import run

    proc = run([sys.executable, "-c", _CYCLES, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [m for m in got["calls"] if m.startswith("e6observe")] == ["e6observe._fork"]
    assert got["counts"][0] == got["counts"][1] == got["counts"][2]
    assert got["counts"][0]["threads"] == 1 and got["after"]["threads"] == 0
    assert all(got["counts"][0][p] >= 1 for p in _fork.PHASES)
    child = got["child"]
    assert child["watchers"] == 1 and child["runs"] and child["generation"] == 1
    assert child["threads"].count(THREAD_NAME) == 1


def test_a_store_nobody_resets_keeps_the_parents_counts_out_of_the_childs_file(tmp_path: Any) -> None:
    """A sink over a recorder that no component resets (not the current one, no watcher): the
    child's recorder still holds the parent's counts, and the sink's own fork reset (phase
    ``sinks``) takes them as its baseline, so one scrape counts them once."""
    from helpers import sink_options
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from e6observe.sinks.prometheus import PrometheusSink

    rec = Recorder()  # never set_recorder(): only the sink knows it
    sink = PrometheusSink(rec, sink_options(multiprocess_dir=str(tmp_path)))

    def switches() -> float:
        text = generate_latest(sink.registry).decode()
        return sum(
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == M.SWITCHES.prom_name + "_total"
        )

    try:
        for frm, to in (("blue", "green"), ("green", "blue"), ("blue", "green")):
            rec.applied(frm, to, "announced")
        assert switches() == 3

        def child() -> dict[str, Any]:
            rec.applied("green", "blue", "announced")
            sink.flush()
            return {"in_store": rec.switch_total(), "baseline": sink.writer._baseline is not None}

        got = in_child(child)
        assert got == {"in_store": 4.0, "baseline": True}
        assert switches() == 4  # 3 (parent) + 1 (child), the parent's not twice
    finally:
        sink.close()
        rec.stop()


def test_a_fork_while_a_thread_is_inside_instrument_leaves_the_child_able_to_uninstrument() -> None:
    """instrument() registers a reset of its own lock: a child forked while a parent thread holds
    it (inside instrument() or uninstrument()) gets a free lock and can uninstrument, instead of
    hanging on a lock no thread of the child will ever release."""
    from prometheus_client import CollectorRegistry

    import e6observe
    from e6observe import _api

    assert e6observe.instrument(otel=False, registry=CollectorRegistry()) is not None
    try:
        with held_by_a_thread(_api._lock):

            def child() -> dict[str, Any]:
                free = _api._lock.acquire(timeout=3)
                if free:
                    _api._lock.release()
                return {"lock_free": free, "uninstrumented": e6observe.uninstrument() if free else None}

            got = in_child(child)
    finally:
        e6observe.uninstrument()
    assert got == {"lock_free": True, "uninstrumented": True}
