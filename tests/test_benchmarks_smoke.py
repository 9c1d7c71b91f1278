"""Smoke run of the benchmark harness (``benchmarks/run.py --quick``): every phase runs end to end
on the simulator with the real connector, and the JSON result has the promised shape.

No timing is asserted here - speed is only measured (and judged against the targets) by the
benchmark itself. What is asserted: every mode ran, the figures are derived from this very run
(ratios recomputed from the per-round medians, RPCs per query counted by the simulator), the
graceful switch and the out-of-band switch both became visible on /metrics, the series count did
not move with distinct queries, and the plot was written.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODES = ("bare", "bare-ctl", "e6o-full", "e6o-prom", "otel-grpc")
# One benchmark run (--quick) for the whole file: tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--out",
            str(out / "r.json"),
            "--plot",
            str(out / "r.png"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ, PYTHONHASHSEED="0"),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r: dict[str, Any] = json.loads((out / "r.json").read_text())
    r["_png"] = out / "r.png"
    r["_stdout"] = proc.stdout
    return r


def test_every_mode_ran(result: dict[str, Any]) -> None:
    assert result["skipped_modes"] == {}
    lat = result["latency"]["modes"]
    assert set(lat) == set(MODES)
    for m in MODES:
        e = lat[m]
        assert len(e["round_median_ms"]) == result["latency"]["rounds"] == 1
        assert 0 < e["median_ms"] <= e["p99_ms"]
        assert e["thread_cpu_us_per_query"]["median"] > 0


def test_ratios_come_from_the_same_run(result: dict[str, Any]) -> None:
    lat = result["latency"]["modes"]
    base = lat["bare"]["round_median_ms"]
    for m in MODES:
        per_round = lat[m]["ratio_to_bare"]["per_round"]
        assert per_round == pytest.approx([x / b for x, b in zip(lat[m]["round_median_ms"], base)])
        assert lat[m]["added_median_pct"] == pytest.approx((lat[m]["ratio_to_bare"]["median"] - 1) * 100)
    assert lat["bare"]["ratio_to_bare"]["median"] == 1.0
    for threads in ("threads_1", "threads_4"):
        tp = result["throughput"][threads]
        for m in MODES:
            assert tp[m]["ratio_to_bare"]["per_round"] == pytest.approx(
                [x / b for x, b in zip(tp[m]["round_qps"], tp["bare"]["round_qps"])]
            )


def test_a_query_is_six_rpcs_counted_by_the_simulator(result: dict[str, Any]) -> None:
    assert result["latency"]["rpcs_per_query"] == 6


def test_switches_become_visible_on_metrics(result: dict[str, Any]) -> None:
    for m in ("e6o-full", "e6o-prom"):
        sv = result["switch_visibility"][m]
        assert sv["hooks"]["n"] == sv["hooks"]["visible"] >= 1
        assert sv["hooks"]["stale_scrapes"] == 0  # a scrape issued after the switch shows it
        assert sv["watcher"]["visible"] == sv["watcher"]["n"] >= 1


def test_series_do_not_grow_with_distinct_queries(result: dict[str, Any]) -> None:
    se = result["series"]
    assert se["distinct_queries"] > 0
    assert se["before"]["prometheus_series"] > 0
    assert se["before"] == se["after"]


def test_memory_render_watcher_and_hotpath_reported(result: dict[str, Any]) -> None:
    rss = result["rss"]["modes"]
    assert set(rss) == {"bare", "e6o-full"}
    assert all(math.isfinite(rss[m]["slope_mib_per_1m_rpcs"]) for m in rss)
    assert result["render"]["e6o-full"]["bytes"] > 0
    assert result["render"]["e6o-full"]["series"] > 0
    assert result["watcher_cpu"]["e6o-full"]["interval_s"] == 1.0
    assert result["hotpath_ns"]["rpc_wrapper"] > 0
    names = {t["target"] for t in result["targets"]}
    assert any("added median latency" in n for n in names)
    assert any("render" in n for n in names)
    assert all(t["met"] in (True, False, None) for t in result["targets"])


def test_machine_and_plot(result: dict[str, Any]) -> None:
    m = result["machine"]
    assert m["cores"] and m["python"] and m["versions"]["e6data-python-connector"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot skipped" in result["_stdout"]
    else:
        assert result["_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_path_phases_ran_with_ratios_from_their_own_rounds(result: dict[str, Any]) -> None:
    """Large results, async, pool: every variant ran on bare, bare-ctl and e6o-full, without
    errors, and each ratio is the mode's round figure over bare's of the same round."""
    lg = result["large"]
    assert set(lg["variants"]) == {"sync_fetchall", "sync_fetchmany", "async_fetchall", "async_fetchmany"}
    for v in lg["variants"].values():
        assert set(v) == {"bare", "bare-ctl", "e6o-full"}
        full, bare = v["e6o-full"], v["bare"]
        want = [x / b for x, b in zip(full["round_median_ms"], bare["round_median_ms"])]
        assert full["ratio_to_bare"]["per_round"] == pytest.approx(want)
    cc = lg["call_count"]
    # The whole fetch costs fewer e6observe calls than it has rows, all per batch: no per-row call.
    assert cc["calls_per_row"] == 0 and 0 < cc["large_fetchall"] < cc["rows"]
    for phase in ("async", "pool"):
        for v in result[phase]["variants"].values():
            for m in ("bare", "bare-ctl", "e6o-full"):
                assert v[m]["errors"] == 0 and v[m]["throughput"]["qps"] > 0


def test_startup_and_multiprocess_reported(result: dict[str, Any]) -> None:
    st = result["startup"]["configs"]
    assert set(st) == {"default", "prometheus"}
    for e in st.values():
        assert e["instrument_ms"]["n"] == result["startup"]["rounds"]
        assert e["rss_added_mib"]["median"] > 0 and e["uninstrument_ms"]["median"] > 0
    mp = result["multiproc"]
    # One state file per live worker, every one merged into the scrape.
    assert mp["state_files"] == mp["workers"] and mp["series_in_merged_scrape"] > 0
    assert mp["write_ms"]["n"] > 0
    names = [t["target"] for t in result["targets"]]
    assert any(n.startswith("multi-process: merge of") for n in names)
    assert any(n.startswith("large result: e6observe Python calls per row") for n in names)


def test_replicas_spread_a_modes_rounds_over_its_processes(tmp_path: Path) -> None:
    # --replicas 2: each mode runs in two processes, round r on replica r mod 2, so no single
    # process's luck decides a mode's figure; the ratios still pair rounds of the same replica.
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--only",
            "latency",
            "--modes",
            "bare,e6o-prom",
            "--rounds",
            "4",
            "--queries",
            "10",
            "--warmup",
            "10",
            "--replicas",
            "2",
            "--out",
            str(tmp_path / "r.json"),
            "--plot",
            "",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["replicas"] == r["latency"]["replicas"] == 2
    pids = {m: e["round_pid"] for m, e in r["latency"]["modes"].items()}
    assert set(pids) == {"bare", "e6o-prom"}
    for m, p in pids.items():
        assert len(set(p)) == 2 and p[0] == p[2] != p[1] == p[3], (m, p)
    assert not set(pids["bare"]) & set(pids["e6o-prom"])
    assert r["latency"]["rpcs_per_query"] == 6.0  # counted over both replicas' queries


def test_inprocess_ab_measures_each_state_as_intended(tmp_path: Path) -> None:
    # benchmarks/inprocess.py toggles instrument()/uninstrument() in one process: every "on" run
    # must have had the connection's stub wrapped and every "off" run must not, or its
    # figures would compare the wrong things; each mode is paired with the off runs of the
    # same blocks.
    out = tmp_path / "ip.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "inprocess.py"),
            "--modes",
            "e6o-prom,e6o-mp",
            "--blocks",
            "3",
            "--queries",
            "8",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["runs_as_intended"] == {"off": 3, "e6o-prom": 3, "e6o-mp": 3}
    off = r["runs"]["off"]
    for mode in ("e6o-prom", "e6o-mp"):
        on = r["runs"][mode]
        assert len(on) == len(off) == 3
        for j, name in ((0, "wall_us"), (1, "thread_cpu_us")):
            x = r["modes"][mode][name]
            assert all(run[j] > 0 for run in on + off)
            # the added figure is the median of on - off within each block
            pairs = sorted(a[j] - b[j] for a, b in zip(on, off))
            assert x["added"]["median"] == pytest.approx(pairs[1])
    assert "e6o-prom thread_cpu_us" in proc.stdout
