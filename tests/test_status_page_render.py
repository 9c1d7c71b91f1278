"""The status page as served: its first state is in the HTML (no JavaScript needed), the
timeline has a time axis, latency per colour over time comes from a bounded history, and the
process is named by OTEL_SERVICE_NAME or else by the program's name."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from typing import Any

import pytest

from e6observe import metrics as M
from e6observe.endpoint import status, status_page
from e6observe.events import Event
from e6observe.recorder import Recorder
from e6observe.v1.convert import program_name, source_info

T0 = 1_800_000_000.0  # a fixed clock for the rendering


def _event(seq: int, kind: str, t: float, **kw: Any) -> dict[str, Any]:
    return status.event_json(Event(seq, kind, time_unix=t, pid=1, **kw))


def _doc(**over: Any) -> dict[str, Any]:
    rec = Recorder()
    doc = status.build_status(rec)
    doc.update(time_unix=T0 + 60, active="green", switch_count=2, mismatch_count=7)
    doc["recent_events"] = [
        _event(1, "detected", T0, to_strategy="blue"),
        _event(
            2,
            "applied",
            T0 + 20,
            from_strategy="blue",
            to_strategy="green",
            cause="announced",
            drain_seconds=0.012,
            pinned_queries=0,
        ),
        _event(
            3,
            "applied",
            T0 + 40,
            from_strategy="green",
            to_strategy="blue",
            cause="mismatch",
            pinned_queries=3,
        ),
        _event(
            4,
            "applied",
            T0 + 50,
            from_strategy="blue",
            to_strategy="green",
            cause="mismatch",
            pinned_queries=1,
        ),
    ]
    doc["switch_count"] = 3
    doc.update(over)
    return doc


def test_the_served_html_carries_the_state() -> None:
    page = status_page.render(_doc(), since=T0)
    assert 'id="active" class="strategy big" data-strategy="green">green<' in page
    assert 'id="switch-count" class="big">3<' in page
    assert 'id="mismatch-count" class="big">7<' in page
    assert page.count('<tr class="switch"') == 3
    assert "connecting" not in page and "never" not in page
    # no inline style (the page's CSP allows none) and no third-party origin
    assert "style=" not in page and "http://" not in page and "https://" not in page


def test_the_timeline_has_a_time_axis_and_a_bar_per_colour() -> None:
    page = status_page.render(_doc(), since=T0)
    svg = re.search(r'<svg id="timeline-chart".*?</svg>', page).group(0)
    labels = re.findall(r'class="tick-label"[^>]*>(\d\d:\d\d:\d\d)<', svg)
    assert len(labels) >= 3
    assert (
        labels
        == [time.strftime("%H:%M:%S", time.localtime(t)) for t in status_page._ticks(T0, T0 + 60)][
            : len(labels)
        ]
    )
    segs = re.findall(r'<rect class="seg s-(\w+)"', svg)
    assert segs == ["blue", "green", "blue", "green"]
    assert svg.count('class="switch-mark"') == 4


def test_cluster_and_caches_tiles_are_served_and_scoped_switches_stay_off_the_timeline() -> None:
    """Issue 14's tiles and events in the server-rendered page: the cluster (auto-resume) and
    strategy-caches lines, the new event kinds described, and a switch of the cluster manager's
    own cache listed as an event with its scope but kept out of the timeline, the switch table
    and the switch count."""
    doc = _doc()
    doc["cluster"] = {
        "status": "active",
        "resuming": True,
        "resumes": {"ok": 2, "failed": 1},
        "last_resume_outcome": "ok",
        "last_resume_seconds": 0.6,
    }
    doc["caches"] = {"process": "green", "cluster_manager": "blue", "split": True}
    doc["recent_events"] += [
        _event(5, "suspended_seen", T0 + 52, method="cluster.status", cluster_status="suspended"),
        _event(6, "resume_started", T0 + 53),
        _event(7, "resume_finished", T0 + 54, outcome="ok", duration_seconds=0.6),
        _event(
            8,
            "applied",
            T0 + 55,
            from_strategy="green",
            to_strategy="blue",
            cause="mismatch",
            scope="cluster_manager",
        ),
        _event(9, "detected", T0 + 56, to_strategy="blue", strategy="blue", scope="connection"),
        _event(10, "strategy_rejected", T0 + 57, reason="padded"),
    ]
    page = status_page.render(doc, since=T0)
    assert (
        '<dd id="cluster">active, resuming; resumes ok 2, failed 1, timeout 0; last ok in 600.0 ms</dd>'
    ) in page
    assert '<dd id="caches" data-split="yes">process green, cluster manager blue (split)</dd>' in page
    # the scoped switch and detection: listed with their scope, nowhere else
    assert "green → blue (mismatch) [cluster_manager]</span>" in page
    assert "detected blue [connection]</span>" in page
    svg = re.search(r'<svg id="timeline-chart".*?</svg>', page).group(0)
    assert re.findall(r'<rect class="seg s-(\w+)"', svg) == ["blue", "green", "blue", "green"]
    assert svg.count('class="switch-mark"') == 4
    assert page.count('<tr class="switch"') == 3
    assert 'data-seq="8"><td>' not in page  # no switch-table row for the scoped switch
    assert 'id="switch-count" class="big">3<' in page
    # the auto-resume and refusal events are described, not only named
    for text in (
        "cluster suspended (503 on cluster.status)",
        "cluster resume started",
        "cluster resume ok after 600.0 ms",
        "strategy value refused (padded)",
    ):
        assert f'<span class="d">{text}</span>' in page, text
    # before any resume or cache: the tiles say so rather than staying empty
    page = status_page.render(_doc(cluster={}, caches={}), since=T0)
    assert '<dd id="cluster">unknown; resumes ok 0, failed 0, timeout 0</dd>' in page
    assert '<dd id="caches" data-split="no">process none, cluster manager none</dd>' in page


def test_values_are_escaped() -> None:
    doc = _doc()
    doc["source"]["service_name"] = "<script>x</script>"
    page = status_page.render(doc, since=T0)
    assert "<script>x" not in page and "&lt;script&gt;x" in page


def test_latency_history_is_per_colour_per_interval_and_bounded() -> None:
    rec = Recorder()
    hist = status_page.LatencyHistory(rec, keep=5)
    hist.sample(now=T0)  # baseline
    blue = rec.family(M.QUERY_DURATION).histogram("blue", "ok")
    for i in range(8):
        blue.observe(0.010 * (i + 1))
        hist.sample(now=T0 + 2 * (i + 1))
    pts = hist.snapshot()
    assert len(pts) == 5  # bounded
    t, point = pts[-1]
    assert t == T0 + 16
    n, mean, p99 = point["blue"]
    assert n == 1 and mean == pytest.approx(0.080)
    assert "green" not in point
    svg = status_page.latency_svg(pts, T0, T0 + 16)
    assert 'class="lat mean s-blue"' in svg and 'class="lat p99 s-blue"' in svg


def test_process_is_named_by_otel_service_name_or_the_program(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout-api")
    assert source_info().service_name == "checkout-api"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setattr(sys, "argv", ["/srv/app/worker.py"])
    assert source_info().service_name == "worker"
    assert (
        source_info(resource_attributes={"service.name": "unknown_service:python"}).service_name == "worker"
    )
    monkeypatch.setattr(sys, "argv", ["/x/.venv/lib/python3.11/site-packages/e6observe/__main__.py"])
    assert program_name() == "e6observe"
    monkeypatch.setattr(sys, "argv", ["-c"])
    assert program_name() == "python"


def test_a_script_without_otel_service_name_is_named_after_itself(tmp_path: Any) -> None:
    app = tmp_path / "billing_job.py"
    app.write_text("from e6observe.v1.convert import source_info\nprint(source_info().service_name)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "OTEL_SERVICE_NAME"}
    r = subprocess.run([sys.executable, str(app)], capture_output=True, text=True, env=env, timeout=60)
    assert r.stdout.strip() == "billing_job", r.stderr
