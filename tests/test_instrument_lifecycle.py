"""instrument() / uninstrument(): idempotent, reversible by identity, thread-safe, contained."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import subproc
from e6data_python_connector import e6data_grpc
from helpers import HAS_AIO, e6observe_threads
from prometheus_client import CollectorRegistry

import e6observe
from e6observe import _api, _safe
from e6observe import metrics as M
from e6observe.config import ConfigError
from e6observe.sim import Simulator

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _always_uninstrument() -> Iterator[None]:
    _safe.reset_for_tests()
    yield
    e6observe.uninstrument()


def patched_classes() -> list[type]:
    """Every connector class e6observe may patch (present in this connector version)."""
    classes: list[type] = [e6data_grpc.Connection, e6data_grpc.Cursor]
    try:
        from e6data_python_connector.connection_pool import ConnectionPool

        classes.append(ConnectionPool)
    except ImportError:
        pass
    if HAS_AIO:
        from e6data_python_connector.async_connection import AsyncConnection
        from e6data_python_connector.async_connection_pool import AsyncConnectionPool
        from e6data_python_connector.async_cursor import AsyncCursor

        classes += [AsyncConnection, AsyncCursor, AsyncConnectionPool]
    return classes


def snapshot() -> dict[str, Any]:
    """Identity snapshot: each patchable class's own attributes, and the strategy cache."""
    snap: dict[str, Any] = {f"{c.__module__}.{c.__qualname__}": dict(vars(c)) for c in patched_classes()}
    snap["cache"] = e6data_grpc._local_strategy_cache
    # The connector's strategy writers (module functions), which the strategy-cache hook redirects.
    snap["writers"] = {n: getattr(e6data_grpc, n) for n in WRITERS if hasattr(e6data_grpc, n)}
    return snap


WRITERS = (
    "_set_active_strategy",
    "_set_pending_strategy",
    "_apply_pending_strategy",
    "_clear_strategy_cache",
)


def assert_identical(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["cache"] is before["cache"]
    assert after["writers"] == before["writers"]
    assert all(after["writers"][n] is fn for n, fn in before["writers"].items())
    for name, attrs in before.items():
        if name in ("cache", "writers"):
            continue
        now = after[name]
        assert set(now) == set(attrs), f"{name}: attributes added/removed: {set(now) ^ set(attrs)}"
        changed = [k for k in attrs if now[k] is not attrs[k]]
        assert not changed, f"{name}: not restored by identity: {changed}"


def query(conn: Any, sql: str = "SELECT 1") -> Any:
    cur = conn.cursor()
    cur.execute(sql)
    rows = cur.fetchall()
    cur.clear()
    return rows


@pytest.mark.matrix
def test_twice_uninstrument_again_restores_originals_by_identity(
    sim: Simulator, connect: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    original = snapshot()
    registry = CollectorRegistry()
    rec = e6observe.instrument(otel=False, registry=registry)
    assert e6observe.is_instrumented()
    patched = snapshot()
    # The cache stays the connector's own dict; its strategy writers are the hook's copies.
    assert patched["cache"] is original["cache"] and type(patched["cache"]) is dict
    assert all(patched["writers"][n] is not fn for n, fn in original["writers"].items())
    assert (
        patched["e6data_python_connector.e6data_grpc.Cursor"]["execute"]
        is not original["e6data_python_connector.e6data_grpc.Cursor"]["execute"]
    )
    collectors = len(registry._collector_to_names)
    assert collectors > 0

    with caplog.at_level(logging.WARNING, logger="e6observe"):
        again = e6observe.instrument(otel=False, registry=registry, event_capacity=5)
    assert again is rec
    assert any("already instrumented" in r.getMessage() for r in caplog.records)
    assert_identical(patched, snapshot())  # nothing re-patched
    assert len(registry._collector_to_names) == collectors  # nothing registered twice
    assert rec.ring.capacity == 1024  # the second call's options were not applied

    conn = connect()
    assert query(conn) == [[1]]
    stub = conn._client
    assert hasattr(stub, "_e6observe_token")

    assert e6observe.uninstrument() is True
    assert e6observe.uninstrument() is False
    assert not e6observe.is_instrumented()
    assert e6observe.get_recorder() is None
    assert_identical(original, snapshot())
    assert not hasattr(stub, "_e6observe_token")  # the open connection's stub is unwrapped
    import grpc

    assert isinstance(stub.prepareStatement, grpc.UnaryUnaryMultiCallable)
    assert len(registry._collector_to_names) == 0
    assert e6observe_threads() == []
    assert query(conn) == [[1]]  # the connector works uninstrumented

    rec2 = e6observe.instrument(otel=False, registry=registry)
    assert rec2 is not rec
    assert len(registry._collector_to_names) == collectors
    assert query(conn) == [[1]]
    assert sum(h.count for _, h in rec2.family(M.QUERY_DURATION).items()) == 1
    assert sum(h.count for _, h in rec.family(M.QUERY_DURATION).items()) == 1  # old one untouched
    e6observe.uninstrument()
    assert_identical(original, snapshot())
    assert {k: v for k, v in _safe.internal_errors().items() if k.startswith("sink")} == {}


@pytest.mark.matrix
def test_cache_contents_survive_install_and_uninstall(sim: Simulator, connect: Callable[..., Any]) -> None:
    conn = connect()
    assert query(conn) == [[1]]
    original = e6data_grpc._local_strategy_cache
    e6observe.instrument(otel=False)
    sim.flip(announce=False)
    assert query(conn) == [[1]]
    assert e6data_grpc._local_strategy_cache["active_strategy"] == "green"
    e6observe.uninstrument()
    assert e6data_grpc._local_strategy_cache is original
    assert original["active_strategy"] == "green"  # learned while instrumented, kept
    assert type(original) is dict


@pytest.mark.matrix
def test_uninstrument_stops_every_e6observe_thread(sim: Simulator, connect: Callable[..., Any]) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    e6observe.instrument(prometheus_port=0, tracer_provider=TracerProvider(), watcher_interval=0.05)
    assert query(connect()) == [[1]]
    assert e6observe_threads() != []  # watcher, dispatcher, metrics server
    e6observe.uninstrument()
    assert e6observe_threads() == []


@pytest.mark.matrix
def test_concurrent_instrument_and_uninstrument(sim: Simulator) -> None:
    original = snapshot()
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def call(fn: Callable[[], Any]) -> None:
        barrier.wait()
        results.append(fn())

    threads = [
        threading.Thread(target=call, args=(lambda: e6observe.instrument(otel=False),)) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len({id(r) for r in results}) == 1
    execute = e6data_grpc.Cursor.__dict__["execute"]
    assert execute.__wrapped__ is original["e6data_python_connector.e6data_grpc.Cursor"]["execute"]
    results.clear()
    barrier.reset()
    threads = [threading.Thread(target=call, args=(e6observe.uninstrument,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert_identical(original, snapshot())


@pytest.mark.matrix
def test_taken_port_logs_once_counts_and_the_rest_works(
    sim: Simulator, connect: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.INFO, logger="e6observe"):
            rec = e6observe.instrument(otel=False, prometheus_port=port)
        assert rec is not None and e6observe.is_instrumented()
        mine = [r for r in caplog.records if r.name == "e6observe" and r.levelno >= logging.WARNING]
        assert len(mine) == 1
        assert str(port) in mine[0].getMessage() and "/metrics" in mine[0].getMessage()
        assert _safe.internal_errors().get("sink.prometheus") == 1
        assert query(connect()) == [[1]]
        assert sum(h.count for _, h in rec.family(M.QUERY_DURATION).items()) == 1


@pytest.mark.matrix
def test_bad_option_raises_and_installs_nothing() -> None:
    original = snapshot()
    with pytest.raises(ConfigError, match="watcher_interval"):
        e6observe.instrument(watcher_interval=0)
    with pytest.raises(ConfigError, match="prometheus_prot"):
        e6observe.instrument(prometheus_prot=9464)
    assert not e6observe.is_instrumented()
    assert_identical(original, snapshot())


@pytest.mark.matrix
def test_options_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E6OBSERVE_EVENT_CAPACITY", "7")
    monkeypatch.setenv("E6OBSERVE_OTEL", "false")
    rec = e6observe.instrument()
    assert rec is not None and rec.ring.capacity == 7
    opts = _api.current_options()
    assert opts is not None and opts.otel is False
    e6observe.uninstrument()
    rec = e6observe.instrument(event_capacity=9)  # keyword beats environment
    assert rec is not None and rec.ring.capacity == 9


@pytest.mark.matrix
def test_instrument_before_the_connector_is_imported() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subproc.run(
        [sys.executable, str(ROOT / "tests" / "apps" / "before_import.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rows"] == [[1], [2]]
    assert out["switches"] == {"blue|green|mismatch": 1.0}
    # prepareStatement with blue, then the re-authentication tries blue first: two 456s
    assert out["mismatches"] == out["mismatches_sim"] == 2
    assert out["rpc_ok"] > 0
    assert out["queries"] == {"blue|ok": 1, "green|ok": 1}


def _run_app(name: str, *args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subproc.run(
        [sys.executable, str(ROOT / "tests" / "apps" / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.matrix
def test_a_sync_application_never_loads_the_async_api() -> None:
    out = _run_app("async_later.py")
    assert out["async_after_instrument"] == [] and out["async_after_sync_query"] == []
    assert out["queries"] == {"blue|ok": 1}
    assert out["watches_left"] == []  # uninstrument() stopped waiting for the import


@pytest.mark.skipif(not HAS_AIO, reason="the connector's async API needs Python 3.11+ and 3.0+")
def test_importing_the_async_api_after_instrument_installs_its_hooks() -> None:
    out = _run_app("async_later.py", "--use-async")
    assert out["async_after_instrument"] == []
    assert out["async_rows"] == [[2]]
    assert out["aio_pool_patched"] is True
    assert out["queries"] == {"blue|ok": 2}  # the sync query and the async one
    assert out["watches_left"] == []


@pytest.mark.matrix
def test_unloadable_tls_files_say_so_not_the_port(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    with caplog.at_level(logging.INFO, logger="e6observe"):
        rec = e6observe.instrument(
            otel=False, prometheus_port=0, tls_certfile=str(cert), tls_keyfile=str(key)
        )
    assert rec is not None and e6observe.is_instrumented()  # the app goes on, unserved
    mine = [r.getMessage() for r in caplog.records if r.name == "e6observe" and r.levelno >= logging.WARNING]
    assert len(mine) == 1
    assert "cannot load TLS certificate" in mine[0] and "tls_certfile" in mine[0]
    assert "prometheus_port" not in mine[0]
    assert _safe.internal_errors().get("sink.prometheus") == 1
