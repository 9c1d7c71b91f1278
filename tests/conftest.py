"""Shared fixtures: a running simulator, real connector connections, clean connector state.

The connector keeps module-level blue/green state (``e6data_grpc._local_strategy_cache``); every
test starts from an empty cache so that tests do not see each other's switches.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any, Callable, Iterator

import pytest
from e6data_python_connector import e6data_grpc

from e6observe.sim import Simulator

USER = "tester@example.com"
PASSWORD = "sim-password"


def connector_version() -> tuple[int, ...]:
    from e6observe._version import connector_version_info

    return connector_version_info()


HAS_AIO = sys.version_info >= (3, 11) and connector_version() >= (3, 0, 0)


def login_errors_surface() -> bool:
    """True where a failed login reaches the caller: 2.3.9, 2.3.10 and 3.x. Releases 2.3.11 to
    2.3.15 swallow it in ``get_session_id`` (an empty session id follows)."""
    v = connector_version()
    return v >= (3, 0, 0) or v < (2, 3, 11)


def resumes_inside_the_login_loop() -> bool:
    """True where ``get_session_id`` resumes inside its strategy loop (2.3.11+): after the
    resume it goes on to the next colour, and a refused resume is tried again by the outer
    handler. 2.3.9 and 2.3.10 resume once, in the outer handler, and log in again from scratch."""
    return connector_version() >= (2, 3, 11)


def reset_connector_cache() -> None:
    cache = e6data_grpc._local_strategy_cache
    with e6data_grpc._strategy_lock:
        cache["active_strategy"] = None
        cache["pending_strategy"] = None
        cache["query_strategy_map"] = {}
        cache["last_check_time"] = 0
        cache["last_transition_time"] = 0
        cache["session_invalidated"] = False
    # The cluster manager's own cache (strategy.py, written by auto-resume) - a plain dict
    # from 2.3.9 on; a Manager proxy before.
    try:
        from e6data_python_connector import strategy as cache_b
    except ImportError:  # pragma: no cover - connector without blue/green
        return
    b = getattr(cache_b, "_local_strategy_cache", None)
    if isinstance(b, dict):
        for key in ("active_strategy", "pending_strategy"):
            dict.__setitem__(b, key, None)


@pytest.fixture(autouse=True)
def _clean_connector_state() -> Iterator[None]:
    reset_connector_cache()
    yield
    reset_connector_cache()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A started simulator on a free loopback port, blue active, no latency."""
    s = Simulator(port=0)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def connect(sim: Simulator) -> Iterator[Callable[..., Any]]:
    """``connect(**kw)`` -> a real connector Connection to the simulator; closed at teardown."""
    opened: list[Any] = []

    def _connect(**kw: Any) -> Any:
        kw.setdefault("host", sim.host)
        kw.setdefault("port", sim.port)
        kw.setdefault("username", USER)
        kw.setdefault("password", PASSWORD)
        conn = e6data_grpc.Connection(**kw)
        opened.append(conn)
        return conn

    yield _connect
    for c in opened:
        try:
            c.close()
        except Exception:
            pass


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    skip_aio = pytest.mark.skip(reason="the connector's async API needs Python 3.11+ and connector 3.x")
    for item in items:
        if "aio" in item.keywords and not HAS_AIO:
            item.add_marker(skip_aio)


def openssl(*args: str, cwd: Any) -> None:
    """Run the openssl CLI (test certificates); a failure keeps openssl's own stderr in the
    message. Started through tests/subproc.py: openssl run from this process (which runs gRPC)
    by a plain fork() on Python 3.9 could die with SIGABRT before it started (grpcio's fork
    handlers; see tests/subproc.py)."""
    import subproc

    proc = subproc.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args[:2])} exited {proc.returncode}: "
                             f"{proc.stderr.strip()[-2000:]}")


def sink_options(**kw: Any) -> Any:
    """The options a PrometheusSink reads, at their defaults, with ``kw`` on top."""
    from types import SimpleNamespace

    base = dict(prometheus_port=None, prometheus_addr="127.0.0.1", registry=None,
                tls_certfile=None, tls_keyfile=None, tls_client_cafile=None, basic_auth=None,
                multiprocess_dir=None)
    base.update(kw)
    return SimpleNamespace(**base)


def endpoint() -> str:
    """The URL of the running ``instrument(prometheus_port=...)`` endpoint."""
    from e6observe import _api

    active = _api._active
    assert active is not None
    for component, obj, _ in active.sinks:
        if component == "sink.prometheus":
            return str(obj.server.url)
    raise AssertionError("no metrics endpoint")


def scrape() -> str:
    """``/metrics`` of the running endpoint, as text."""
    with urllib.request.urlopen(endpoint() + "/metrics", timeout=10) as r:
        return str(r.read().decode())


def status_doc() -> Any:
    """``/status`` of the running endpoint, parsed."""
    with urllib.request.urlopen(endpoint() + "/status", timeout=10) as r:
        return json.loads(r.read().decode())
