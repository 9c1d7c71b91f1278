"""Acceptance: a real gunicorn app, 4 forked workers, a blue/green flip, one scrape.

gunicorn ``--preload`` imports tests/apps/gunicorn_app.py in the master, which calls
``e6observe.instrument()`` in multi-process mode (``PROMETHEUS_MULTIPROC_DIR``) and runs one query,
then forks 4 workers. Each worker queries the simulator through the real connector; the cluster
flips; every worker follows. One scrape of the /metrics endpoint must then show every worker on
the new strategy, a switch total equal to the sum of what the workers counted themselves, and a
watcher heartbeat per worker that advances.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
from helpers import free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

APPS = Path(__file__).parent / "apps"
WORKERS = 4
INTERVAL = 0.2

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn forks"),
    pytest.mark.timeout(180),
]
import gunicorn  # noqa: E402, F401  (a test dependency: missing, this module fails, never skips)


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class App:
    def __init__(self, proc: subprocess.Popen[bytes], app_port: int, metrics_port: int, log: Path) -> None:
        self.proc = proc
        self.base = f"http://127.0.0.1:{app_port}"
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        self.log = log

    def query_round(self, n: int = 2 * WORKERS, hold: float = 0.3) -> list[dict[str, Any]]:
        """``n`` concurrent requests, each holding its worker ``hold`` s, so all workers serve."""

        def one(_: int) -> Optional[dict[str, Any]]:
            try:
                status, body = get(f"{self.base}/query?hold={hold}")
            except OSError:
                return None
            doc = json.loads(body)
            return doc if status == 200 else None

        with ThreadPoolExecutor(n) as ex:
            return [d for d in ex.map(one, range(n)) if d is not None]

    def scrape(self) -> dict[str, list[Any]]:
        status, body = get(self.metrics)
        assert status == 200, body[:200]
        out: dict[str, list[Any]] = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out.setdefault(s.name, []).append(s)
        return out


@pytest.fixture
def app(sim: Any, tmp_path: Path) -> Iterator[App]:
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    app_port, metrics_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        {
            "E6_SIM_HOST": sim.host,
            "E6_SIM_PORT": str(sim.port),
            "PROMETHEUS_MULTIPROC_DIR": str(mp_dir),
            "E6OBSERVE_PROMETHEUS_PORT": str(metrics_port),
            "E6OBSERVE_WATCHER_INTERVAL": str(INTERVAL),
            "PYTHONPATH": os.pathsep.join(
                [str(APPS), str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")]
            ),
        }
    )
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--preload",
                "-w",
                str(WORKERS),
                "-b",
                f"127.0.0.1:{app_port}",
                "--graceful-timeout",
                "5",
                "--timeout",
                "60",
                "gunicorn_app:app",
            ],
            env=env,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=str(APPS),
        )
    a = App(proc, app_port, metrics_port, log)
    try:
        up = wait_for(lambda: proc.poll() is not None or _answers(a), timeout=60, interval=0.05)
        assert up and proc.poll() is None, log.read_text()[-3000:]
        yield a
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _answers(a: App) -> bool:
    try:
        return get(f"{a.base}/query", timeout=2)[0] == 200
    except OSError:
        return False


def rounds_until(
    a: App, done: Callable[[dict[int, dict[str, Any]]], bool], timeout: float = 60.0
) -> dict[int, dict[str, Any]]:
    """Query rounds until ``done(latest answer per worker pid)``; returns that map."""
    latest: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for doc in a.query_round():
            latest[doc["pid"]] = doc
        if done(latest):
            return latest
    raise AssertionError(f"not reached in {timeout}s: {latest}\n{a.log.read_text()[-3000:]}")


def by_pid(samples: list[Any], **labels: str) -> dict[int, float]:
    return {
        int(s.labels["pid"]): s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())
    }


@pytest.mark.slow
def test_four_gunicorn_workers_one_scrape(app: App, sim: Any) -> None:
    master = app.proc.pid
    # Every worker serves queries on blue.
    before = rounds_until(app, lambda m: len(m) >= WORKERS and all(d["active"] == "blue" for d in m.values()))
    workers = set(before)
    assert len(workers) == WORKERS and master not in workers

    sim.flip(announce=True)
    after = rounds_until(app, lambda m: workers <= set(m) and all(m[p]["active"] == "green" for p in workers))
    assert set(after) == workers  # no worker was replaced
    own_counts = {p: after[p]["switches"] for p in workers}
    assert all(n >= 1 for n in own_counts.values()), own_counts

    # One scrape (served by the master, which holds the port; workers publish their state files
    # on each switch and once per watcher interval).
    def scraped_total() -> float:
        s = app.scrape()
        return sum(x.value for x in s.get("e6data_strategy_switches_total", []))

    expected = sum(own_counts.values())
    assert wait_for(lambda: scraped_total() == expected, timeout=10, interval=0.05), (
        scraped_total(),
        own_counts,
    )
    s1 = app.scrape()
    assert sum(x.value for x in s1["e6data_strategy_switches_total"]) == expected
    # Every worker, by pid, is on green: the switches came from every one of them.
    green = {p for p, v in by_pid(s1["e6data_strategy_active"], strategy="green").items() if v}
    assert green >= workers
    # The preloading master learned blue before the fork and never queried again: its own
    # per-process gauge still says blue, and it counted no switch.
    assert by_pid(s1["e6data_strategy_active"], strategy="blue").get(master) == 1
    # Memory stats stay per process.
    rss = by_pid(s1["process_resident_memory_bytes"])
    assert workers <= set(rss) and all(rss[p] > 0 for p in workers)

    beats1 = by_pid(s1["e6observe_watcher_last_run_timestamp_seconds"])
    assert workers <= set(beats1) and all(beats1[p] > 0 for p in workers)

    def advanced() -> bool:
        beats = by_pid(app.scrape()["e6observe_watcher_last_run_timestamp_seconds"])
        return all(beats.get(p, 0) > beats1[p] for p in workers)

    assert wait_for(advanced, timeout=10 * INTERVAL + 5, interval=0.05)
    print(
        f"workers={sorted(workers)} own switches={own_counts} scraped total={expected} "
        f"master={master} green={sorted(green)}"
    )
    # The master counted no switch of its own: the workers' counts are theirs alone.
    assert scraped_total() == expected
