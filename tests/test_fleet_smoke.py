"""A small-scale run of the fleet benchmark (benchmarks/fleet.py; the full run is ``./run bench
--fleet``): real workers captured, a short history of a few pods backfilled with promtool into a
real Prometheus on loopback, the recording rules backfilled, every dashboard and rule query run.

It asserts what the harness must get right, not how fast anything is: the backfilled series are
all in Prometheus, the panels that read recording rules have data, every rule evaluates, and
the work directory is gone afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import subproc

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.live, pytest.mark.timeout(240)]


def test_fleet_harness_small_run(tmp_path: Path) -> None:
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.fail("prometheus/promtool not installed (apt-get install prometheus)")
    out = tmp_path / "fleet.json"
    env = dict(os.environ, TMPDIR=str(tmp_path))
    proc = subproc.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "fleet.py"),
            "--pods",
            "6",
            "--hours",
            "0.5",
            "--workers",
            "1",
            "--capture-seconds",
            "4",
            "--capture-interval",
            "0.5",
            "--ranges",
            "0.5",
            "--repeat",
            "1",
            "--compact-wait",
            "0",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=220,
        cwd=str(ROOT),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    per_process = r["capture"]["series_per_process"][0]
    assert per_process > 60  # the full exposition (the low-cardinality one is tests/test_lowcard.py)
    assert r["series_total"] >= 6 * (per_process + 1)  # every pod's series and its ``up``
    assert r["series_in_prometheus"] == r["series_total"]  # every backfilled series is queryable
    assert r["rule_backfill"]["blocks"] >= 1
    panels = {(d["panel"], d.get("ref")): d for d in r["queries"]["dashboards"]}
    for panel in (("Query rate", "A"), ("Query latency", "A"), ("RPC p95 by method", "A")):
        assert panels[panel]["result_series"] > 0, panel  # read from the recording rules
    assert len(r["queries"]["dashboards"]) >= 60
    kinds = {q["kind"] for q in r["queries"]["rules"]}
    assert kinds == {"alert", "record"}
    # The temporary work directory (TSDB, chunks, logs) was removed.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("e6o-fleet-")]


def test_fleet_harness_reuse_replaces_the_recordings(tmp_path: Path) -> None:
    # --keep then --reuse: the second pass deletes the first pass's recorded series (they were
    # compacted into the history) through the admin API before backfilling the rules again, and
    # the panels that read recordings still have data; --time-only then times the same TSDB
    # without backfilling anything.
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        pytest.fail("prometheus/promtool not installed (apt-get install prometheus)")
    keep = tmp_path / "keep"
    small = ["--pods", "3", "--hours", "0.25", "--workers", "1", "--capture-seconds", "3"]
    small += ["--capture-interval", "0.5", "--ranges", "0.25", "--repeat", "1", "--compact-wait", "0"]
    results = []
    for extra in ([], ["--reuse"], ["--reuse", "--time-only"]):
        out = tmp_path / f"fleet{len(results)}.json"
        proc = subproc.run(
            [sys.executable, str(ROOT / "benchmarks" / "fleet.py"), *small, "--keep", str(keep)]
            + extra
            + ["--json", str(out)],
            capture_output=True,
            text=True,
            timeout=200,
            cwd=str(ROOT),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results.append(json.loads(out.read_text()))
    assert "recordings_deleted_s" in results[1] and results[1]["rule_backfill"]["blocks"] >= 1
    assert "recordings_deleted_s" not in results[0] and "recordings_deleted_s" not in results[2]
    assert "rule_backfill" not in results[2]
    for r in results:
        rate = next(
            d for d in r["queries"]["dashboards"] if (d["panel"], d.get("ref")) == ("Query rate", "A")
        )
        assert rate["result_series"] > 0
