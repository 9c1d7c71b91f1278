"""The status routes as instrument() mounts them (endpoint/routes.py): stand-ins that load the
real apps at the first request (issue 17, start-up RSS).

The served behaviour of the real apps is tests/test_status.py's; here: the first requests,
however many at once, load them once and are answered by them; the latency history runs from
the start; unmounting before or after the load takes every route off and stops the history.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest
from helpers import held_by_a_thread
from prometheus_client import CollectorRegistry
from test_fork import in_child

from e6observe import _fork
from e6observe.endpoint import routes, status
from e6observe.endpoint.server import MetricsServer
from e6observe.recorder import Recorder


@pytest.fixture
def served() -> Iterator[tuple[MetricsServer, Recorder, list[Any]]]:
    rec = Recorder()
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    loads: list[Any] = []
    try:
        yield srv, rec, loads
    finally:
        srv.close()
        rec.stop()


def _lazy(srv: MetricsServer, rec: Recorder, loads: list[Any]) -> routes.LazyMount:
    def load(history: Any) -> Any:
        loads.append(history)
        return status.mount(srv, rec, history=history)

    return routes.mount_lazily(srv, rec, load)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_concurrent_first_requests_load_the_apps_once(served: Any) -> None:
    srv, rec, loads = served
    mounted = _lazy(srv, rec, loads)
    assert mounted.history._thread is not None  # the chart's history runs before any visit
    results: list[tuple[int, bytes]] = []
    start = threading.Barrier(8)

    def first() -> None:
        start.wait(10)
        results.append(_get(srv.url + "/status"))

    threads = [threading.Thread(target=first) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [code for code, _ in results] == [200] * 8
    assert all("recent_events" in json.loads(body) for _, body in results)
    assert loads == [mounted.history]  # once, with the history started at mount
    assert mounted.loaded
    code, page = _get(srv.url + "/")
    assert code == 200 and b"<html" in page.lower()
    mounted.unmount()
    assert mounted.paths == [] and mounted.history._thread is None
    assert _get(srv.url + "/status")[0] == 404


def test_unmount_before_any_request_takes_the_routes_off_and_stops_the_history(served: Any) -> None:
    srv, rec, loads = served
    mounted = _lazy(srv, rec, loads)
    assert sorted(mounted.paths) == sorted(routes.PATHS)
    mounted.unmount()
    mounted.unmount()  # idempotent
    assert mounted.paths == [] and mounted.history._thread is None
    for path in routes.PATHS:
        assert _get(srv.url + path)[0] == 404, path
    assert loads == [] and not mounted.loaded


def test_the_stand_ins_cover_every_route_the_real_mount_serves(served: Any) -> None:
    srv, rec, _loads = served
    real = status.mount(srv, rec)
    try:
        assert list(real.apps) == list(routes.PATHS)
    finally:
        real.unmount()


def test_a_child_forked_while_a_thread_loads_the_apps_can_unmount(served: Any) -> None:
    """The load holds the mount's lock; a child forked meanwhile gets a fresh lock (registered
    with the fork registry while mounted) and can unmount instead of hanging."""
    srv, rec, loads = served
    mounted = _lazy(srv, rec, loads)
    assert mounted._reset_after_fork in _fork.registered("locks")
    with held_by_a_thread(mounted._lock):

        def child() -> dict[str, Any]:
            free = mounted._lock.acquire(timeout=3)
            if free:
                mounted._lock.release()
                mounted.unmount()
            return {"lock_free": free, "paths": mounted.paths}

        got = in_child(child, timeout=30)
    assert got == {"lock_free": True, "paths": []}
    mounted.unmount()
    assert mounted._reset_after_fork not in _fork.registered("locks")


def test_a_child_forked_while_a_thread_holds_the_mount_lock_can_unmount(served: Any) -> None:
    """status.mount() registers a reset of its module lock (taken by mount and unmount): a
    child forked while a parent thread mounts can still unmount what it inherited."""
    srv, rec, _loads = served
    mounted = status.mount(srv, rec)
    try:
        with held_by_a_thread(status._MOUNT_LOCK):

            def child() -> dict[str, Any]:
                free = status._MOUNT_LOCK.acquire(timeout=3)
                if free:
                    status._MOUNT_LOCK.release()
                    mounted.unmount()
                return {"lock_free": free, "paths": mounted.paths}

            got = in_child(child, timeout=30)
    finally:
        mounted.unmount()
    assert got == {"lock_free": True, "paths": []}
