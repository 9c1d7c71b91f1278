"""``opentelemetry-instrument python app.py`` instruments the connector with no code change.

Real subprocess runs of tests/apps/otel_workload.py, an application that never calls
e6observe.instrument(): the ``opentelemetry_instrumentor`` entry point does it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import subproc
from helpers import free_port

pytestmark = [pytest.mark.matrix, pytest.mark.timeout(120)]
ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "otel_workload.py"
OTEL_INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")


def run_app(**env_extra: str) -> dict[str, Any]:
    if not OTEL_INSTRUMENT.exists():
        pytest.fail(f"{OTEL_INSTRUMENT} missing: the test extra installs opentelemetry-instrumentation")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("E6OBSERVE_", "OTEL_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(PYTHONPATH=str(ROOT), **env_extra)
    proc = subproc.run(
        [str(OTEL_INSTRUMENT), sys.executable, str(APP)],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr
    return out


def samples(exposition: str, name: str) -> dict[str, float]:
    out = {}
    for line in exposition.splitlines():
        if line.startswith(name + "{"):
            labels, value = line.rsplit(" ", 1)
            out[labels[len(name) :]] = float(value)
    return out


def test_entry_point_instruments_with_no_code_change() -> None:
    port = free_port()
    out = run_app(E6OBSERVE_PROMETHEUS_PORT=str(port))
    assert out["rows"] == [[1], [1], [1], [2]]
    assert out["instrumented"] is True
    assert out["switches"] == {"blue|green|announced": 1.0, "green|blue|mismatch": 1.0}
    assert out["mismatches"] == out["sim_mismatches"] == 1
    assert out["active"] == out["sim_active"] == "blue"
    assert out["rpc_strategies"] == ["blue", "green"]
    switches = samples(out["metrics"], "e6data_strategy_switches_total")
    assert switches['{cause="announced",from="blue",to="green"}'] == 1.0
    assert switches['{cause="mismatch",from="green",to="blue"}'] == 1.0
    assert sum(switches.values()) == 2.0
    active = samples(out["metrics"], "e6data_strategy_active")
    assert active == {'{strategy="blue"}': 1.0, '{strategy="green"}': 0.0}
    assert "Traceback" not in out["stderr"]


def test_coexists_with_the_grpc_instrumentation_or_without_it() -> None:
    # Default run above has OpenTelemetry's gRPC client instrumentation active as well; here it
    # is disabled, and e6observe alone must see the same.
    out = run_app(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="grpc_client,grpc_aio_client")
    assert out["instrumented"] is True
    assert out["switches"] == {"blue|green|announced": 1.0, "green|blue|mismatch": 1.0}


def test_disabling_the_e6data_instrumentation_leaves_the_app_untouched() -> None:
    out = run_app(OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="e6data")
    assert out["rows"] == [[1], [1], [1], [2]]
    assert out["instrumented"] is False and "switches" not in out


def test_instrumentor_declares_the_supported_connector_versions() -> None:
    from e6observe.instrumentor import E6dataInstrumentor

    assert list(E6dataInstrumentor().instrumentation_dependencies()) == [
        "e6data-python-connector >= 2.3.10, < 3.1"
    ]
    from importlib.metadata import entry_points

    eps = entry_points()
    group = (
        eps.select(group="opentelemetry_instrumentor")
        if hasattr(eps, "select")
        else eps.get("opentelemetry_instrumentor", [])
    )
    # (a set: Python 3.9 lists an editable install's entry points once per metadata copy)
    assert {e.value for e in group if e.name == "e6data"} == {"e6observe.instrumentor:E6dataInstrumentor"}


def test_instrumentor_api_passes_options_and_uninstruments() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    import e6observe
    from e6observe import _api
    from e6observe.instrumentor import E6dataInstrumentor

    inst = E6dataInstrumentor()
    tp = TracerProvider()
    try:
        inst.instrument(tracer_provider=tp, event_capacity=17, otel=True)
        assert e6observe.is_instrumented()
        opts = _api.current_options()
        assert opts is not None and opts.event_capacity == 17 and opts.tracer_provider is tp
    finally:
        inst.uninstrument()
    assert not e6observe.is_instrumented()


@pytest.mark.skipif(sys.version_info < (3, 10), reason="helper processes are told apart by sys.orig_argv")
def test_decode_workers_and_multiprocessing_helpers_stay_inert() -> None:
    from helpers import connector_version

    if connector_version() < (3, 0, 1):
        pytest.skip("v2 results (decode worker processes) arrived in connector 3.0.1")
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("E6OBSERVE_", "OTEL_")) and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(PYTHONPATH=str(ROOT), E6OBSERVE_PROMETHEUS_PORT=str(port))
    proc = subproc.run(
        [str(OTEL_INSTRUMENT), sys.executable, str(ROOT / "tests" / "apps" / "spawn_children.py")],
        capture_output=True,
        text=True,
        timeout=110,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"parent_instrumented": True, "rows": [[1000]], "child_instrumented": True, "v2_rpcs": 1}
    # Only the application's own spawned child instruments itself (and, the parent holding the
    # port, says so once). Two decode workers and the resource tracker would add three more.
    assert proc.stderr.count("cannot serve /metrics") == 1, proc.stderr


@pytest.mark.matrix
def test_a_bad_option_leaves_the_app_running_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """opentelemetry-instrument would stop loading the instrumentors after one that raises."""
    import e6observe
    from e6observe.instrumentor import E6dataInstrumentor

    inst = E6dataInstrumentor()
    try:
        with caplog.at_level("ERROR", logger="e6observe"):
            inst.instrument(watcher_interval=-1)
        assert not e6observe.is_instrumented()
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert errors == [
            "e6observe: not instrumenting: watcher_interval must be > 0 and <= 86400 seconds, got -1.0"
        ]
    finally:
        inst.uninstrument()
