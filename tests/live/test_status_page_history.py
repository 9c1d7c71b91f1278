"""The status page of a running demo in headless Chromium: its first paint (JavaScript off: only
what the server rendered), the page after a run with flips (timeline with a time axis, latency
per colour over time), and the page after the demo has ended (offline, tiles that agree with the
timeline). Screenshots are kept in ``artifacts/`` (``status-first-paint.png``,
``status-after-flips.png``, ``status-offline.png``).

``E6OBSERVE_SCREENS_SECONDS`` sets how long the demo runs before the second screenshot (default
16; the closing note's screenshots were taken with 60).
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from test_status_page import ARTIFACTS, REPO, Chromium, wait_js

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]

RUN_SECONDS = float(os.environ.get("E6OBSERVE_SCREENS_SECONDS", "16"))


def full_page(c: Chromium, name: str) -> None:
    """A screenshot of the whole page (not only the window), kept in ``artifacts/``."""
    size = c.call("Page.getLayoutMetrics", session=c.session)["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    data = c.call(
        "Page.captureScreenshot",
        {"format": "png", "clip": clip, "captureBeyondViewport": True},
        session=c.session,
    )["data"]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / name).write_bytes(base64.b64decode(data))


@pytest.fixture
def chromium() -> Iterator[Chromium]:
    c = Chromium()
    try:
        yield c
    finally:
        c.close()


class DemoProcess:
    def __init__(self, seconds: float) -> None:
        env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "e6observe",
                "demo",
                "--duration",
                f"{seconds:g}",
                "--flip-every",
                "4",
                "--threads",
                "2",
                "--metrics-port",
                "0",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.base: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.match(r"status page: (http://127\.0\.0\.1:\d+)/$", line.strip())
            if m:
                self.base.append(m.group(1))
                self.ready.set()
        self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def test_status_page_first_paint_history_and_offline(chromium: Chromium) -> None:
    demo = DemoProcess(RUN_SECONDS + 6)
    try:
        assert demo.ready.wait(60) and demo.base, "".join(demo.lines)
        base = demo.base[0]
        time.sleep(3)  # a few latency samples and the first detection

        # 1. First paint, JavaScript off: the served HTML alone shows the state.
        chromium.open("about:blank")
        chromium.call("Emulation.setScriptExecutionDisabled", {"value": True}, session=chromium.session)
        chromium.call("Page.navigate", {"url": base + "/"}, session=chromium.session)
        assert wait_js(chromium, "document.getElementById('active').textContent === 'blue'", 20)
        full_page(chromium, "status-first-paint.png")
        text = chromium.js("document.body.innerText")
        assert "connecting" not in text
        assert re.search(r"e6observe-demo · pid \d+", text), text[:300]
        assert chromium.js("document.querySelectorAll('#timeline-chart .tick-label').length") >= 2
        assert re.fullmatch(
            r"\d\d:\d\d:\d\d",
            chromium.js("document.querySelector('#timeline-chart .tick-label').textContent"),
        )
        assert chromium.js("document.querySelectorAll('#latency-chart .lat').length") >= 1
        assert chromium.js("document.getElementById('latency').tBodies[0].rows.length") >= 1

        # 2. Live, after flips: the timeline and the latency chart cover the run.
        chromium.call("Emulation.setScriptExecutionDisabled", {"value": False}, session=chromium.session)
        chromium.call("Page.navigate", {"url": base + "/"}, session=chromium.session)
        assert wait_js(chromium, "document.getElementById('conn').dataset.state === 'live'", 20)
        time.sleep(max(0.0, RUN_SECONDS - 3))
        assert wait_js(chromium, "document.querySelectorAll('#switches tbody tr.switch').length >= 2", 20)
        # the charts were refreshed from the server while the page was open
        assert wait_js(chromium, "document.querySelectorAll('#timeline-chart .switch-mark').length >= 2", 10)
        lines = chromium.js("document.querySelectorAll('#latency-chart polyline.lat').length")
        assert lines >= 2, "latency over time: a line per colour"
        colours = chromium.js(
            "Array.from(new Set(Array.from(document.querySelectorAll("
            "'#latency-chart .lat')).map(e => e.classList.contains('s-blue') "
            "? 'blue' : 'green')))"
        )
        assert sorted(colours) == ["blue", "green"]
        full_page(chromium, "status-after-flips.png")
        assert chromium.page_errors() == []

        # 3. The demo ends: the page says offline, and its tiles agree with its timeline.
        demo.stop()
        assert wait_js(chromium, "document.getElementById('conn').dataset.state === 'offline'", 20)
        time.sleep(1.0)
        conn = chromium.js("document.getElementById('conn').textContent")
        assert re.match(r"offline since \d\d:\d\d:\d\d; figures as of \d\d:\d\d:\d\d", conn), conn
        rows = chromium.js("document.querySelectorAll('#switches tbody tr.switch').length")
        tile = int(chromium.js("document.getElementById('switch-count').textContent"))
        assert tile == rows, (tile, rows)
        last = chromium.js("document.querySelector('#switches tbody tr.switch td:nth-child(2)').textContent")
        active = chromium.js("document.getElementById('active').textContent")
        assert last.endswith(active), (last, active)
        full_page(chromium, "status-offline.png")
        for name in ("status-first-paint.png", "status-after-flips.png", "status-offline.png"):
            assert (ARTIFACTS / name).stat().st_size > 10_000
    finally:
        demo.stop()
