"""The status page's latency history: started with the endpoint, so that the page's chart covers
the minutes before its first visit; the page itself (``status_page.py``) and the status routes
(``status.py``) are loaded at the first request (``routes.py``)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Optional

from .. import metrics as M
from .._safe import contain

#: Seconds between latency samples, and samples kept (10 minutes).
SAMPLE_SECONDS = 2.0
KEEP_SAMPLES = 300


class LatencyHistory:
    """Query latency per colour over time: every :data:`SAMPLE_SECONDS` the recorder's query
    histograms are read, and the difference to the previous reading (queries finished in that
    interval) becomes one point per colour: count, mean and p99. At most :data:`KEEP_SAMPLES`
    points are kept; one daemon thread, stopped by :meth:`stop`."""

    def __init__(self, recorder: Any, interval: float = SAMPLE_SECONDS, keep: int = KEEP_SAMPLES) -> None:
        self.recorder = recorder
        self.interval = interval
        self.started = time.time()
        self.points: deque[tuple[float, dict[str, tuple[int, float, float]]]] = deque(maxlen=keep)
        self._last: dict[str, tuple[list[int], float, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self.sample()  # the baseline
        t = threading.Thread(target=self._run, name="e6observe-status-history", daemon=True)
        self._thread = t
        t.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(self.interval + 1.0)

    def sample(self, now: Optional[float] = None) -> None:
        """Take one reading (the thread calls this; tests may too)."""
        from .._quantile import histogram_quantile, merged_histogram

        with contain("status.history"):
            now = time.time() if now is None else now
            children = self.recorder.family(M.QUERY_DURATION).items()
            point: dict[str, tuple[int, float, float]] = {}
            with self._lock:
                first = not self._last
                for strategy in M.STRATEGIES:
                    counts, total, n = merged_histogram(children, 0, strategy)
                    prev_counts, prev_total, prev_n = self._last.get(strategy, ([], 0.0, 0))
                    self._last[strategy] = (counts, total, n)
                    dn = n - prev_n
                    if first or dn <= 0:
                        continue
                    dcounts = [
                        c - (prev_counts[i] if i < len(prev_counts) else 0) for i, c in enumerate(counts)
                    ]
                    point[strategy] = (
                        dn,
                        (total - prev_total) / dn,
                        histogram_quantile(0.99, M.QUERY_DURATION.buckets, dcounts),
                    )
                if not first:
                    self.points.append((now, point))

    def snapshot(self) -> list[tuple[float, dict[str, tuple[int, float, float]]]]:
        with self._lock:
            return list(self.points)


__all__ = ["LatencyHistory", "SAMPLE_SECONDS", "KEEP_SAMPLES"]
