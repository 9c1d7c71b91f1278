"""The OpenTelemetry sink waits for the application's import of the API (issue 17, start-up RSS).

``instrument()`` starts the OpenTelemetry sink at once when the application uses OpenTelemetry
(a provider passed, an API signal module imported, an ``OTEL_PYTHON_*_PROVIDER`` variable);
otherwise it watches for the import and starts the sink right after it. Real subprocesses
(tests/apps/otel_order.py) check the three orders an application can take and one that never
uses OpenTelemetry; in-process tests check the watch itself with stand-in module names (the test
process has the real API loaded): the start waits for an outer API module still running its
code, ``uninstrument()`` ends the wait, and a fork while a thread holds the start's lock leaves
the child able to start it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import subproc
from helpers import held_by_a_thread
from prometheus_client import CollectorRegistry
from test_fork import in_child

import e6observe
from e6observe import _api, _fork

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "otel_order.py"
OTEL_INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
SWITCHES = ["blue|green|announced", "green|blue|mismatch"]
API = ["opentelemetry.metrics", "opentelemetry._logs", "opentelemetry.trace", "opentelemetry.sdk"]


def run_app(mode: str) -> dict[str, Any]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("E6OBSERVE_", "OTEL_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, str(APP), mode]
    if mode == "entry-point":
        env["E6OBSERVE_PROMETHEUS_PORT"] = "0"
        cmd.insert(0, str(OTEL_INSTRUMENT))
    proc = subproc.run(cmd, capture_output=True, text=True, timeout=90, env=env, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "contained" not in proc.stderr, proc.stderr[-4000:]  # no failure of e6observe's own
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_an_application_that_never_imports_opentelemetry_gets_none_of_it() -> None:
    out = run_app("never")
    assert out["rows"] == [[1], [1], [1], [2]]
    assert out["otel_sink_at_instrument"] is False and out["watching"] == 3
    assert out["otel_sink"] is False  # four queries and two switches later: still waiting
    assert out["loaded"] == []  # no API signal module, no SDK, at any point
    assert out["watches_left"] == 0  # uninstrument() removed the import watches


@pytest.mark.parametrize("mode", ["before", "after", "entry-point"])
def test_metrics_logs_and_spans_whichever_comes_first(mode: str) -> None:
    out = run_app(mode)
    assert out["rows"] == [[1], [1], [1], [2]]
    # Set up before instrument() (and under the entry point, which imports the API before the
    # application runs): started at once. After: started at the application's import.
    assert out["otel_sink_at_instrument"] is (mode != "after")
    assert out["watching"] == (3 if mode == "after" else 0)
    assert out["otel_sink"] is True
    assert out["switch_points"] == SWITCHES
    assert out["query_count"] == 4  # db.client.operation.duration: the four queries
    assert {"e6data.strategy.applied", "e6data.strategy.mismatch"} <= set(out["log_events"])
    assert out["query_spans"] == ["SELECT"] * 4
    assert "rpc.client.call.duration" in out["metric_names"]
    assert out["watches_left"] == 0


# -- the watch, in process, with stand-in module names ----------------------------------------
@pytest.fixture
def fake_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Two importable stand-ins for the API's signal modules; ``outer`` imports ``inner`` from
    its own code (as ``opentelemetry._logs`` imports ``opentelemetry.trace``)."""
    (tmp_path / "e6o_fake_inner.py").write_text("VALUE = 1\n")
    (tmp_path / "e6o_fake_outer.py").write_text(
        "import e6o_fake_inner\n"
        "from e6observe import _api\n"
        "STARTED_WHILE_OUTER_RAN = any(c == 'sink.otel' for c, _, _ in _api._active.sinks)\n"
        "COMPLETE = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_api, "OTEL_API_MODULES", ("e6o_fake_outer", "e6o_fake_inner"))
    e6observe.uninstrument()
    yield tmp_path
    e6observe.uninstrument()
    for name in ("e6o_fake_inner", "e6o_fake_outer"):
        sys.modules.pop(name, None)


def _instrument() -> Any:
    assert e6observe.instrument(registry=CollectorRegistry()) is not None
    inst = _api._active
    assert inst is not None
    return inst


def _components(inst: Any) -> list[str]:
    return [c for c, _, _ in inst.sinks]


def _watches() -> int:
    """Import watches for the stand-ins in ``sys.meta_path`` (the hooks keep their own)."""
    return sum(getattr(f, "name", None) in _api.OTEL_API_MODULES for f in sys.meta_path)


def test_the_sink_starts_once_the_outer_module_is_complete(fake_api: Path) -> None:
    inst = _instrument()
    assert "sink.otel" not in _components(inst)
    assert len(inst.otel_watches) == 2 and _watches() == 2
    assert inst._reset_otel_lock in _fork.registered("locks")
    import e6o_fake_outer  # type: ignore[import-not-found]

    # The inner module's import (from the outer one's code) did not start it half-way.
    assert e6o_fake_outer.STARTED_WHILE_OUTER_RAN is False
    assert _components(inst).count("sink.otel") == 1
    assert inst.otel_watches == [] and _watches() == 0
    e6observe.uninstrument()
    assert inst._reset_otel_lock not in _fork.registered("locks")


def test_uninstrument_ends_the_wait(fake_api: Path) -> None:
    inst = _instrument()
    assert _watches() == 2
    e6observe.uninstrument()
    assert _watches() == 0 and inst.otel_watches == []
    assert inst._reset_otel_lock not in _fork.registered("locks")
    import e6o_fake_inner  # type: ignore[import-not-found]  # noqa: F401

    assert inst.sinks == []  # nothing started by an import after uninstrument()


def test_a_late_start_after_stop_does_nothing(fake_api: Path) -> None:
    """A watch that fires while uninstrument() runs (it took the watch list first) starts
    nothing."""
    inst = _instrument()
    watches = list(inst.otel_watches)
    e6observe.uninstrument()
    watches[0].fire()  # as if the import had been found before the watch was removed
    assert inst.sinks == []


def test_a_fork_while_a_thread_holds_the_start_lock_leaves_the_child_able_to_start(
    fake_api: Path,
) -> None:
    inst = _instrument()
    with held_by_a_thread(inst._otel_lock):

        def child() -> dict[str, Any]:
            free = inst._otel_lock.acquire(timeout=3)
            if not free:
                return {"lock_free": False}
            inst._otel_lock.release()
            import e6o_fake_inner  # noqa: F401

            return {"lock_free": True, "otel_sink": "sink.otel" in _components(inst)}

        got = in_child(child, timeout=30)
    assert got == {"lock_free": True, "otel_sink": True}
    assert "sink.otel" not in _components(inst)  # the parent still waits for its own import


def test_an_import_never_waits_for_the_start_lock(fake_api: Path) -> None:
    """The thread holding the lock is starting the sink (or stopping it, or setting the
    watches, and then looks again): an import elsewhere must not wait for it, since that thread
    may be importing an API module whose import lock the waiting thread holds (a deadlock
    Python's import system cannot see)."""
    inst = _instrument()
    importer = threading.Thread(target=lambda: __import__("e6o_fake_inner"), daemon=True)
    with held_by_a_thread(inst._otel_lock):
        importer.start()
        importer.join(10)
        assert not importer.is_alive()
        assert "e6o_fake_inner" in sys.modules
