"""The status page in headless Chromium (Debian's ``chromium``), served by a real prober.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no WebSocket client or driver
download is needed. A screenshot of the page after the flip is kept in ``artifacts/``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import pytest
from helpers import PASSWORD, USER, need_binary

from e6observe.sim import Simulator

pytestmark = pytest.mark.live

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
INTERVAL = 1.0
#: "Within seconds": one probe interval, plus the page's reaction, plus slack for a loaded CI.
SHOW_WITHIN = INTERVAL + 4.0


class Chromium:
    """Headless Chromium with a DevTools-protocol connection over a pipe."""

    FLAGS = (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-default-apps",
        "--remote-debugging-pipe",
        "--window-size=1280,1100",
    )

    def __init__(self) -> None:
        exe = need_binary(
            "chromium", "chromium-browser", install="apt-get install chromium (./run test does this as root)"
        )
        self.profile = tempfile.mkdtemp(prefix="e6observe-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # in the child: the protocol wants our pipe ends at fd 3 and 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [exe, *self.FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            preexec_fn=fds,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.session: Optional[str] = None

    def call(
        self,
        method: str,
        params: Optional[dict[str, Any]] = None,
        session: Optional[str] = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})  # type: ignore[no-any-return]
                if "method" in reply:
                    self.events.append(reply)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"chromium did not answer {method}")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise EOFError("chromium exited")
                self._buf += chunk

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.call(domain, session=self.session)
        self.call("Page.navigate", {"url": url}, session=self.session)

    def js(self, expression: str) -> Any:
        r = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=self.session
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def page_errors(self) -> list[str]:
        out = []
        for ev in self.events:
            if ev.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(ev["params"]["exceptionDetails"])[:500])
            elif ev.get("method") == "Log.entryAdded" and ev["params"]["entry"]["level"] == "error":
                out.append(ev["params"]["entry"].get("text", "")[:500])
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def chromium() -> Iterator[Chromium]:
    c = Chromium()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def prober_url(sim: Simulator) -> Iterator[str]:
    yield from _prober(sim)


@pytest.fixture
def resuming_prober_url(sim: Simulator) -> Iterator[str]:
    yield from _prober(sim, "--auto-resume")


def _prober(sim: Simulator, *extra: str) -> Iterator[str]:
    env = dict(os.environ, E6DATA_USERNAME=USER, E6DATA_PASSWORD=PASSWORD)
    env.pop("OTEL_SERVICE_NAME", None)
    proc = subprocess.Popen(
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
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            m = re.search(r"events on (https?://\S+)", line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(60) and found, "prober did not start"
        yield found[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_js(c: Chromium, expression: str, timeout: float) -> bool:
    """Poll ``expression`` until true; false while the page (or its elements) is not there yet."""
    guarded = f"(() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }})()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.js(guarded):
            return True
        time.sleep(0.1)
    return False


def test_page_renders_and_shows_a_flip(sim: Simulator, prober_url: str, chromium: Chromium) -> None:
    chromium.open(prober_url + "/")
    assert wait_js(
        chromium,
        "document.getElementById('active').dataset.strategy === 'blue' && "
        "document.getElementById('conn').dataset.state === 'live'",
        30,
    ), "page never showed the blue strategy over a live stream"
    assert chromium.js("document.title") == "e6observe status"
    assert chromium.js("document.getElementById('switch-count').textContent") == "0"
    src = chromium.js("document.getElementById('source').textContent")
    assert "e6observe-probe" in src and "connector" in src and "pid" in src
    assert chromium.js("document.getElementById('watcher').dataset.health") == "ok"
    assert chromium.js("document.getElementById('latency').tBodies[0].rows.length") >= 1
    chromium.screenshot(ARTIFACTS / "status-page-before-flip.png")

    sim.flip()
    flipped = time.monotonic()
    shown = wait_js(
        chromium,
        "document.getElementById('active').dataset.strategy === 'green' && "
        "document.querySelectorAll('#switches tbody tr.switch').length === 1",
        SHOW_WITHIN,
    )
    took = time.monotonic() - flipped
    assert shown, f"the page did not show the switch within {SHOW_WITHIN} s"
    print(f"page showed the switch {took:.2f} s after the flip")

    row = chromium.js(
        "Array.from(document.querySelectorAll('#switches tbody tr.switch td')).map(td => td.textContent)"
    )
    assert row[1] == "blue → green"
    assert row[2] in ("announced", "mismatch", "observed")
    # the snapshot the event triggered brings the counters along
    assert wait_js(chromium, "document.getElementById('switch-count').textContent === '1'", 10)
    chromium.screenshot(ARTIFACTS / "status-page-after-flip.png")
    text = chromium.js("document.body.innerText")
    assert PASSWORD not in text
    assert chromium.page_errors() == []
    assert (ARTIFACTS / "status-page-after-flip.png").stat().st_size > 10_000


def test_page_shows_an_auto_resume(sim: Simulator, resuming_prober_url: str, chromium: Chromium) -> None:
    """Issue 14: the prober's connector (``--auto-resume``) resumes the suspended cluster; the
    page shows it."""
    chromium.open(resuming_prober_url + "/")
    assert wait_js(chromium, "document.getElementById('active').dataset.strategy === 'blue'", 30)
    sim.set_resume(0.3)
    sim.suspend()
    assert wait_js(chromium, "document.getElementById('cluster').textContent.includes('ok 1')", 30)
    text = chromium.js("document.getElementById('cluster').textContent")
    assert text.startswith("active;") and "failed 0" in text and "last ok in" in text, text
    assert wait_js(
        chromium,
        "Array.from(document.querySelectorAll('#events li .k'))"
        ".some((n) => n.textContent === 'resume_finished')",
        10,
    )
    kinds = chromium.js("Array.from(document.querySelectorAll('#events li .k')).map((n) => n.textContent)")
    assert {"suspended_seen", "resume_started", "resume_finished"} <= set(kinds)
    assert chromium.js("document.getElementById('caches').textContent").startswith(
        "process blue, cluster manager blue"
    )
    # the cluster manager's own detection stays out of the colour timeline
    assert chromium.js("document.getElementById('switches').tBodies[0].rows.length") == 0
