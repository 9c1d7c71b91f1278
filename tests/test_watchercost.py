"""The benchmark's watcher-cost helpers (``benchmarks/watchercost.py``): the watcher thread's
own CPU, measured inside the thread."""

from __future__ import annotations

import os
import sys

import pytest
from helpers import wait_for

from e6observe.config import Options
from e6observe.recorder import Recorder
from e6observe.watcher import Watcher

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from watchercost import cpu_seconds, measure_cpu  # noqa: E402


def test_benchmark_helpers_measure_the_watchers_own_cpu() -> None:
    res = measure_cpu(duration=0.3, interval=0.01)
    assert res["interval"] == 0.01 and res["iterations"] >= 5
    assert res["wall_seconds"] > 0 and 0 <= res["cpu_per_second"] <= 1.0
    assert res["cpu_seconds"] == pytest.approx(res["cpu_per_second"] * res["wall_seconds"])
    assert cpu_seconds([]) == 0.0
    w = Watcher(Recorder(), Options(watcher_interval=0.01)).start()
    try:
        assert wait_for(lambda: w.iterations >= 5)
        first = cpu_seconds([w])
        assert 0 <= first <= w.cpu_seconds  # the thread's own, monotonic figure
        assert w.wall_seconds > 0
    finally:
        w.stop()
