"""Acceptance: ``e6observe probe`` (a real process) reports a flip of an otherwise idle cluster
within one probe interval, on /metrics, /status and through ``e6observe tail``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest
import subproc
from helpers import PASSWORD, USER
from prometheus_client.parser import text_string_to_metric_families

from e6observe.sim import Simulator

REPO = Path(__file__).resolve().parent.parent
INTERVAL = 1.0
#: Scheduling slack on a loaded 2-core CI machine, on top of the one interval the spec allows.
MARGIN = 2.0


# Python 3.9 and connector 2.3.15 too (the legacy run of ./run test).
pytestmark = pytest.mark.matrix


class ProbeProcess:
    """``python -m e6observe probe`` against a simulator, its endpoint URL read from its log."""

    def __init__(self, sim: Simulator, *extra: str) -> None:
        env = dict(os.environ, E6DATA_USERNAME=USER, E6DATA_PASSWORD=PASSWORD)
        env.pop("E6OBSERVE_PROMETHEUS_PORT", None)
        env.pop("OTEL_SERVICE_NAME", None)
        self.proc = subproc.popen(
            [
                sys.executable,
                "-m",
                "e6observe",
                "probe",
                "--host",
                sim.host,
                "--port",
                str(sim.port),
                "--interval",
                str(INTERVAL),
                "--metrics-port",
                "0",
                *extra,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[str] = []
        self.url: Optional[str] = None
        found = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"events on (https?://\S+)", line)
                if m and self.url is None:
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60) or self.url is None:
            self.stop()
            pytest.fail("probe did not start: " + "".join(self.log))

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        assert PASSWORD not in text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


@pytest.fixture
def probe(sim: Simulator) -> Iterator[ProbeProcess]:
    p = ProbeProcess(sim)
    try:
        yield p
    finally:
        p.stop()


def switches(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(v for (name, _), v in m.items() if name == "e6data_strategy_switches_total")


def active(m: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> Optional[str]:
    on = [
        dict(labels)["strategy"]
        for (name, labels), v in m.items()
        if name == "e6data_strategy_active" and v == 1
    ]
    return on[0] if len(on) == 1 else None


def wait_metrics(p: ProbeProcess, cond, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        m = p.metrics()
        if cond(m):
            return m
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def test_prober_reports_a_flip_within_one_interval(sim: Simulator, probe: ProbeProcess) -> None:
    first = wait_metrics(
        probe,
        lambda m: m.get(("e6data_probes_total", (("result", "success"),)), 0) >= 1 and active(m) == "blue",
        30,
    )
    assert first is not None, "no successful probe: " + "".join(probe.log)
    assert first[("e6data_probe_success", ())] == 1
    assert switches(first) == 0

    sim.flip()  # nobody else uses the cluster: only the prober can notice
    flipped_at = time.monotonic()
    after = wait_metrics(probe, lambda m: switches(m) >= 1, INTERVAL + MARGIN)
    seen_after = time.monotonic() - flipped_at
    assert after is not None, f"switch not reported within {INTERVAL + MARGIN} s of the flip"
    assert active(after) == "green"
    assert after[("e6data_probe_success", ())] == 1
    print(f"switch seen {seen_after:.2f} s after the flip")
    assert seen_after <= INTERVAL + MARGIN

    with urllib.request.urlopen(probe.url + "/status", timeout=10) as r:
        body = r.read().decode()
    assert PASSWORD not in body
    doc = json.loads(body)
    assert doc["active"] == "green" and doc["switch_count"] >= 1
    assert doc["source"]["service_name"] == "e6observe-probe"
    applied = [e for e in doc["recent_events"] if e["kind"] == "EVENT_KIND_APPLIED"]
    assert applied and applied[-1]["from_strategy"] == "blue" and applied[-1]["to_strategy"] == "green"

    # e6observe tail, a separate process, prints that switch (replayed from the ring)
    tail = subproc.run(
        [sys.executable, "-m", "e6observe", "tail", "--url", probe.url, "--since", "0", "--count", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tail.returncode == 0, tail.stderr
    assert re.search(r" applied +blue → green  cause=\w+", tail.stdout), tail.stdout

    assert probe.stop() == 0  # SIGTERM: a clean stop
    assert PASSWORD not in "".join(probe.log)


def test_prober_process_exits_1_on_a_taken_port(sim: Simulator) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = dict(os.environ, E6DATA_USERNAME=USER, E6DATA_PASSWORD=PASSWORD)
        proc = subproc.run(
            [
                sys.executable,
                "-m",
                "e6observe",
                "probe",
                "--host",
                sim.host,
                "--port",
                str(sim.port),
                "--metrics-port",
                str(port),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [  # one line, the demo's words (tests/test_cli_messages.py)
        f"e6observe probe: cannot serve /metrics on 127.0.0.1:{port}: port already in use; "
        "choose another --metrics-port (0 = any free port)"
    ]
