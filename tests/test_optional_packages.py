"""Optional packages missing: OpenTelemetry's SDK, its instrumentation base and its exporters are
not needed for the Prometheus side. An application without them starts, runs and is observed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import subproc

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "without_packages.py"


@pytest.mark.matrix
@pytest.mark.parametrize(
    "missing",
    [
        "opentelemetry.sdk",
        "opentelemetry.instrumentation",
        "opentelemetry.exporter",
        "opentelemetry.sdk,opentelemetry.instrumentation,opentelemetry.exporter",
    ],
)
def test_an_app_without_optional_packages_runs_and_is_observed(missing: str) -> None:
    proc = subproc.run(
        [sys.executable, str(APP), missing], capture_output=True, text=True, timeout=120, cwd=str(ROOT)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rows"] == [[[1]], [[2]]]
    assert out["switches"] == 1 and out["active"] == "green"  # the abrupt flip, on /metrics
    assert out["loaded"] == []  # really absent
    assert "Traceback" not in proc.stderr
