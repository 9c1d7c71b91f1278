"""Shared fixtures: a running simulator, real connector connections, clean connector state; and
the suite's hooks (the quick default of bare ``pytest``, the async tests' skip). The helper
functions the tests share are in helpers.py.

The connector keeps module-level blue/green state (``e6data_grpc._local_strategy_cache``); every
test starts from an empty cache so that tests do not see each other's switches.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import pytest
from e6data_python_connector import e6data_grpc
from helpers import HAS_AIO, PASSWORD, USER, reset_connector_cache

from e6observe.recorder import Recorder
from e6observe.sim import Simulator


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
def rec() -> Iterator[Recorder]:
    """A fresh recorder, stopped at teardown (files that need another kind define their own)."""
    r = Recorder()
    yield r
    r.stop()


@pytest.fixture
def instrumented() -> Iterator[Recorder]:
    """``instrument(otel=False)`` for the test (its recorder); uninstrumented at teardown."""
    import e6observe
    from e6observe import _safe

    _safe.reset_for_tests()
    r = e6observe.instrument(otel=False)
    assert r is not None
    yield r
    e6observe.uninstrument()


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


#: Markers of the tests bare ``pytest`` leaves out (pyproject.toml describes them).
NOT_QUICK = ("slow", "live")


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--all",
        action="store_true",
        dest="e6observe_all",
        help="run the slow and live tests too (./run test and CI do); bare `pytest` "
        "leaves them out, naming tests or a -m expression selects as asked",
    )


def quick_run(config: Any) -> bool:
    """True for bare ``pytest``: no --all, no -m, no test named (the default testpaths)."""
    if config.getoption("e6observe_all") or config.option.markexpr:
        return False
    source = getattr(config, "args_source", None)
    if source is not None:
        return bool(source == pytest.Config.ArgsSource.TESTPATHS)
    return list(config.args) == list(config.getini("testpaths"))  # pragma: no cover - pytest < 7.2


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    skip_aio = pytest.mark.skip(reason="the connector's async API needs Python 3.11+ and connector 3.x")
    for item in items:
        if "aio" in item.keywords and not HAS_AIO:
            item.add_marker(skip_aio)
    if quick_run(config):
        left = [i for i in items if any(m in i.keywords for m in NOT_QUICK)]
        if left:
            config.hook.pytest_deselected(items=left)
            items[:] = [i for i in items if not any(m in i.keywords for m in NOT_QUICK)]


def pytest_report_header(config: Any) -> Optional[str]:
    if quick_run(config):
        return (
            "e6observe: the quick set - slow and live tests left out; all of them: "
            "pytest --all (./run test, CI)"
        )
    return None
