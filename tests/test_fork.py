"""Fork safety (e6observe._fork): real ``os.fork()`` with the real connector and the simulator.

Each test forks; the child reports what it sees as JSON through a pipe and leaves with
``os._exit`` (no pytest teardown in the child). The parent bounds every wait.
"""

from __future__ import annotations

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
from helpers import PASSWORD, USER, wait_for

from e6observe import _fork, _safe
from e6observe import metrics as M
from e6observe.recorder import Recorder, set_recorder
from e6observe.watcher import THREAD_NAME, Watcher

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(fn: Callable[..., Any], on_signal: Callable[[], None] | None = None,
             timeout: float = 60.0) -> Any:
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
                data = data[os.write(w, data):]
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
    return sorted(t.name for t in threading.enumerate()
                  if t.name.startswith("e6observe") and t.is_alive())


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
        sim: Any, connect: Callable[..., Any], instrumented: tuple[Recorder, Watcher]) -> None:
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
        c2 = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER,
                                    password=PASSWORD)
        query(c2)
        sync()  # the parent announces green
        query(c2)
        cache = e6data_grpc._local_strategy_cache
        out["stuck"] = (cache["active_strategy"], cache["pending_strategy"])
        out["pending_reported"] = wait_for(lambda: rec.pending == "green")
        out["pending_age"] = w.pending_age()
        out["released"] = _fork.release_inherited_queries()
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
        instrumented: tuple[Recorder, Watcher]) -> None:
    _, w = instrumented
    lock = e6data_grpc._strategy_lock
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    assert held.wait(10)

    def child() -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["flag"] = _fork.lock_held_at_fork()
        out["gauge"] = w.readings()[M.STRATEGY_LOCK_HELD_AT_FORK.prom_name]
        it0 = w.iterations
        # The watcher never takes the connector's lock, so it keeps running.
        out["watcher_runs"] = wait_for(lambda: w.iterations >= it0 + 2)
        out["blocked"] = not e6data_grpc._strategy_lock.acquire(timeout=0.2)
        out["repaired"] = _fork.repair_strategy_lock()
        ok = e6data_grpc._strategy_lock.acquire(timeout=1)
        out["usable"] = ok
        if ok:
            e6data_grpc._strategy_lock.release()
        out["gauge_after"] = w.readings()[M.STRATEGY_LOCK_HELD_AT_FORK.prom_name]
        return out

    try:
        got = in_child(child)
    finally:
        release.set()
        t.join(10)
    assert got == {"flag": True, "gauge": 1.0, "watcher_runs": True, "blocked": True,
                   "repaired": True, "usable": True, "gauge_after": 0.0}
    # The parent's lock is its own, untouched and free.
    assert e6data_grpc._strategy_lock is lock and not lock.locked()
    assert not _fork.lock_held_at_fork() and _fork.repair_strategy_lock() is False


def test_fork_when_not_instrumented_starts_nothing() -> None:
    _fork.install()  # the handler may be registered by now; it must stay idle

    def child() -> dict[str, Any]:
        return {"threads": e6observe_threads(), "gen": _fork.fork_generation}

    got = in_child(child)
    assert got["threads"] == [] and got["gen"] >= 1


def test_child_callbacks_run_contained(instrumented: tuple[Recorder, Watcher]) -> None:
    seen: list[int] = []

    def good() -> None:
        seen.append(os.getpid())

    def bad() -> None:
        raise RuntimeError("injected")

    _fork.on_fork_child(bad)
    _fork.on_fork_child(good)
    _fork.on_fork_child(good)  # once only
    try:
        got = in_child(lambda: {"seen": len(seen), "errors": _safe.internal_errors(),
                                "watcher": THREAD_NAME in e6observe_threads()})
    finally:
        _fork.remove_fork_child(bad)
        _fork.remove_fork_child(good)
    assert got["seen"] == 1 and got["errors"].get("fork.callback") == 1 and got["watcher"]
    assert seen == []  # not in the parent
