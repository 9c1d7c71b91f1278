"""What the watcher thread costs: its own CPU, measured inside the thread (``time.thread_time``).

The watcher keeps two figures about itself (``Watcher.cpu_seconds``, ``Watcher.wall_seconds``);
these helpers turn them into the benchmark's numbers. ``worker.py`` samples the live
instrumentation's watcher; :func:`measure_cpu` runs a stand-alone one.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Optional

from e6observe.config import Options
from e6observe.recorder import Recorder
from e6observe.watcher import DEFAULT_INTERVAL, Watcher


def cpu_seconds(watchers: Iterable[Any]) -> float:
    """CPU seconds used so far by the threads of ``watchers``, as each measures itself (sample
    twice, divide by the wall time)."""
    return sum(w.cpu_seconds for w in watchers)


def measure_cpu(
    duration: float = 10.0, interval: float = DEFAULT_INTERVAL, recorder: Optional[Recorder] = None
) -> dict[str, float]:
    """Run a stand-alone watcher for ``duration`` seconds at ``interval`` and report its cost:
    ``cpu_seconds``, ``wall_seconds``, ``cpu_per_second``, ``iterations``, ``interval``.

    With no ``recorder`` a fresh one is used (nothing is reported anywhere). The watcher reads
    the connector's cache as it finds it, like the real one.
    """
    w = Watcher(
        recorder if recorder is not None else Recorder(),
        Options.resolve({"watcher_interval": interval}, environ={}),
    )
    w.start()
    try:
        time.sleep(duration)
    finally:
        w.stop()
    return {
        "cpu_seconds": w.cpu_seconds,
        "wall_seconds": w.wall_seconds,
        "cpu_per_second": w.cpu_seconds_per_second(),
        "iterations": float(w.iterations),
        "interval": w.interval,
    }
